// Element-wise kernels: ReLU and its gradient, addition, in-place accumulation, product, fill.
// CPU reference: src/ops/elementwise.rs.
//
// Thread mapping (all of them): a 1-D grid of SCRATCHNET_BLOCK-thread blocks and a
// grid-stride loop, so thread t handles elements t, t + T, t + 2T, ... where T is the number
// of threads in the grid. Consecutive threads touch consecutive elements, so each warp's loads
// and stores are coalesced into full 128-byte transactions. Each element is read once and
// written once: these kernels are bound by memory bandwidth, and their speed is bytes moved
// divided by time.
#include "common.cuh"

// y[i] = max(x[i], 0); NaN passes through, as torch.relu.
extern "C" __global__ void relu_fwd_f32(float* __restrict__ y, const float* __restrict__ x, long long n) {
    for (long long i = global_thread_index(); i < n; i += grid_stride()) {
        const float v = x[i];
        y[i] = (v > 0.f || v != v) ? v : 0.f;
    }
}

// dx[i] = dy[i] where the output y[i] was positive (or NaN), else 0.
extern "C" __global__ void relu_bwd_f32(float* __restrict__ dx, const float* __restrict__ dy,
                                        const float* __restrict__ y, long long n) {
    for (long long i = global_thread_index(); i < n; i += grid_stride()) {
        const float v = y[i];
        dx[i] = (v > 0.f || v != v) ? dy[i] : 0.f;
    }
}

// y = a + b.
extern "C" __global__ void add_f32(float* __restrict__ y, const float* __restrict__ a,
                                   const float* __restrict__ b, long long n) {
    for (long long i = global_thread_index(); i < n; i += grid_stride()) y[i] = a[i] + b[i];
}

// acc += x (how the autograd tape sums the gradients of a value used more than once).
extern "C" __global__ void add_assign_f32(float* __restrict__ acc, const float* __restrict__ x, long long n) {
    for (long long i = global_thread_index(); i < n; i += grid_stride()) acc[i] += x[i];
}

// y = a * b, element by element (dropout's backward: dy times the mask).
extern "C" __global__ void mul_f32(float* __restrict__ y, const float* __restrict__ a,
                                   const float* __restrict__ b, long long n) {
    for (long long i = global_thread_index(); i < n; i += grid_stride()) y[i] = a[i] * b[i];
}

// y[i] = value.
extern "C" __global__ void fill_f32(float* __restrict__ y, float value, long long n) {
    for (long long i = global_thread_index(); i < n; i += grid_stride()) y[i] = value;
}
