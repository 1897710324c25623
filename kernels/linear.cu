// The bias parts of the fully connected layer (the products are GEMMs, kernels/gemm.cu).
// Reference: src/ops/linear/reference.rs.
//
// One variant of each (not among `scratchnet kernel`'s families): v1, one thread per element
// for the bias, one per column for its gradient. With a fused ReLU, bias_act.cu replaces both.
// Read common.cuh first.
#include "common.cuh"

// y[r, c] += b[c] for a rows×cols matrix: one thread per element, grid-stride.
extern "C" __global__ void bias_add_rows_f32(float* __restrict__ y, const float* __restrict__ b, long long rows, int cols) {
    for (long long i = global_thread_index(); i < rows * cols; i += grid_stride()) y[i] += b[i % cols];
}

// out[c] = Σ_r x[r, c]: one thread per column, each walking down its column. Neighbouring
// threads read neighbouring addresses of the same row at each step, so the reads coalesce;
// each column is summed in row order, deterministically.
extern "C" __global__ void sum_rows_f32(float* __restrict__ out, const float* __restrict__ x, long long rows, int cols) {
    for (long long c = global_thread_index(); c < cols; c += grid_stride()) {
        double acc = 0.0;  // a serial sum over the batch
        for (long long r = 0; r < rows; ++r) acc += x[r * cols + c];
        out[c] = (float)acc;
    }
}
