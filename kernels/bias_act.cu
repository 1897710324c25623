// A bias and ReLU fused after a convolution or a fully connected layer (AlexNet's every
// layer), and the backward of the pair. Reference: src/ops/bias_act/reference.rs.
//
// The forward runs in place on the product's output, so "+ bias, then ReLU" costs one read
// and one write instead of two of each. (The implicit-GEMM convolution does better still: it
// applies both in its epilogue, before the output ever reaches memory; see tile_gemm.cuh.)
// The backward turns dy into dz = dy where y > 0, which the data and weight gradients need,
// and sums dz per channel for the bias gradient in the same pass (channel_reduce.cuh).
//
// Variants, in reading order (`scratchnet kernel` has no bias + ReLU family):
//   v1 separate passes (not in this file; what a network runs with fusion off, --no-fuse):
//      the bias (linear.cu's bias_add_rows_f32, or the direct convolution's own), then
//      relu_fwd_f32 (elementwise.cu); backward relu_bwd_f32, then the bias gradient
//      (linear.cu's sum_rows_f32, conv2d.cu's conv2d_bwd_bias_f32)
//   v2 fused (this file): bias_act_f32 forward; relu_bwd_bias_partial_f32 then
//      channel_partials_finalize_f32 (batchnorm_fused.cu) backward
// Read common.cuh and channel_reduce.cuh first.
#include "channel_reduce.cuh"

// y = act(y + b[c]) in place, for y of shape N×C×HW (a fully connected layer's N×C output
// is the case HW = 1); `bias` may be null.
extern "C" __global__ void bias_act_f32(float* __restrict__ y, const float* __restrict__ bias, int relu, int N, int C,
                                        long long HW) {
    const long long total = (long long)N * C * HW;
    for (long long i = global_thread_index(); i < total; i += grid_stride()) {
        float v = y[i];
        if (bias) v += bias[(i / HW) % C];
        y[i] = (!relu || v > 0.f || v != v) ? v : 0.f;
    }
}

// dz = dy where y > 0 (or NaN) else 0, written out; block (s, c) also writes
// partial[c·S + s] = Σ dz over slice s of channel c (the bias gradient, before
// channel_partials_finalize_f32 adds the slices).
extern "C" __global__ void __launch_bounds__(SCRATCHNET_BLOCK)
relu_bwd_bias_partial_f32(float* __restrict__ dz, double* __restrict__ partial, const float* __restrict__ dy,
                          const float* __restrict__ y, int N, int C, long long HW, long long chunk) {
    __shared__ double scratch[SCRATCHNET_BLOCK / 32];
    const int c = blockIdx.y, S = gridDim.x;
    long long begin, end;
    channel_slice((long long)N * HW, chunk, &begin, &end);
    double sum = 0.0;
    for_channel_slice(begin, end, c, C, HW, [&](long long at, int count) {
        float d[4], m[4];
        load_values(dy, at, count, d);
        load_values(y, at, count, m);
        for (int k = 0; k < count; ++k) {
            d[k] = (m[k] > 0.f || m[k] != m[k]) ? d[k] : 0.f;
            sum += d[k];
        }
        store_values(dz, at, count, d);
    });
    sum = block_sum_double(sum, scratch);
    if (threadIdx.x == 0) partial[(long long)c * S + blockIdx.x] = sum;
}
