// Batch normalisation over the channels of an N×C×HW tensor. Reference:
// src/ops/batchnorm/reference.rs; src/ops/batchnorm/mod.rs gives the math. Per channel c, over its M = N·HW values:
//   training: μ = mean(x), σ² = mean((x − μ)²) (biased), then y = γ(x − μ)/√(σ² + ε) + β
//   eval:     the same with the running statistics
//
// Variants, in reading order (`scratchnet kernel batchnorm` runs v1, printed as "default"):
//   v1 plain (this file): one block per channel for each reduction, the variance in a second
//      pass over x, one thread per element for the normalisation; what a network runs for a
//      batch norm followed by neither ReLU nor addition, and for every one with --no-fuse
//   v2 fused (batchnorm_fused.cu): statistics sliced over many blocks in one pass, the
//      normalisation fused with the ReLU and the residual addition, 16-byte accesses
// Read common.cuh first (block_sum, index_loop).
//
// The per-channel reductions run one block per channel: the block's 256 threads stride over
// the channel's N planes of HW values, each summing its share in double (a share is 12,500
// values for ResNet-50's first layer at batch 256, too many for a float to add without
// losing digits), and block_sum (common.cuh) combines their 256 partial sums in a fixed
// order. The variance takes a second pass over (x − μ)², which stays accurate when the mean
// is large compared with the spread (E[x²] − μ² would cancel). The element-wise kernels use
// one thread per element, grid-stride.
#include "common.cuh"

// Value i (0 ≤ i < N·HW) of channel c: image i / HW, pixel i % HW; i is a 32- or 64-bit index
// (index_loop, common.cuh), and so is the division.
template <class I>
__device__ __forceinline__ long long bn_index(I i, int c, int C, long long HW) {
    const I n = i / (I)HW;
    return ((long long)n * C + c) * HW + (i - n * (I)HW);
}

// Channel of element idx of an N×C×HW tensor, in the index's width.
template <class I>
__device__ __forceinline__ int bn_channel(I idx, int C, long long HW) {
    return (int)(idx / (I)HW % (I)C);
}

// mean[c] and biased var[c], one block per channel.
extern "C" __global__ void __launch_bounds__(SCRATCHNET_BLOCK)
bn_stats_f32(float* __restrict__ mean, float* __restrict__ var, const float* __restrict__ x, int N, int C, long long HW) {
    __shared__ float scratch[SCRATCHNET_BLOCK / 32];
    __shared__ float mu_shared;
    const int c = blockIdx.x;
    const long long M = (long long)N * HW;
    const bool narrow = fits_int32(M + blockDim.x);
    double acc = 0.0;
    index_loop(threadIdx.x, M, blockDim.x, narrow, [&](auto i) { acc += x[bn_index(i, c, C, HW)]; });
    const float sum = block_sum((float)acc, scratch);
    if (threadIdx.x == 0) mu_shared = sum / (float)M;
    __syncthreads();
    const float mu = mu_shared;
    acc = 0.0;
    index_loop(threadIdx.x, M, blockDim.x, narrow, [&](auto i) {
        const float d = x[bn_index(i, c, C, HW)] - mu;
        acc += (double)d * d;
    });
    const float sq = block_sum((float)acc, scratch);
    if (threadIdx.x == 0) {
        mean[c] = mu;
        var[c] = sq / (float)M;
    }
}

// y = x·a + b with a = γ/√(σ² + ε), b = β − μ·a (training and eval alike; the caller passes
// batch or running statistics).
extern "C" __global__ void bn_fwd_f32(float* __restrict__ y, const float* __restrict__ x, const float* __restrict__ mean,
                                      const float* __restrict__ var, const float* __restrict__ gamma,
                                      const float* __restrict__ beta, float eps, int N, int C, long long HW) {
    grid_stride_loop((long long)N * C * HW, [&](auto idx) {
        const int c = bn_channel(idx, C, HW);
        const float a = gamma[c] / sqrtf(var[c] + eps);
        y[idx] = x[idx] * a + (beta[c] - mean[c] * a);
    });
}

// dβ[c] = Σ dy and dγ[c] = Σ dy·x̂, one block per channel.
extern "C" __global__ void __launch_bounds__(SCRATCHNET_BLOCK)
bn_bwd_reduce_f32(float* __restrict__ dgamma, float* __restrict__ dbeta, const float* __restrict__ dy,
                  const float* __restrict__ x, const float* __restrict__ mean, const float* __restrict__ var, float eps,
                  int N, int C, long long HW) {
    __shared__ float scratch[SCRATCHNET_BLOCK / 32];
    const int c = blockIdx.x;
    const long long M = (long long)N * HW;
    const float mu = mean[c], invstd = 1.f / sqrtf(var[c] + eps);
    double sum_dy = 0.0, sum_dy_xhat = 0.0;
    index_loop(threadIdx.x, M, blockDim.x, fits_int32(M + blockDim.x), [&](auto i) {
        const long long at = bn_index(i, c, C, HW);
        sum_dy += dy[at];
        sum_dy_xhat += (double)dy[at] * ((x[at] - mu) * invstd);
    });
    const float total_dy = block_sum((float)sum_dy, scratch);
    const float total_dy_xhat = block_sum((float)sum_dy_xhat, scratch);
    if (threadIdx.x == 0) {
        dbeta[c] = total_dy;
        dgamma[c] = total_dy_xhat;
    }
}

// dx. With batch statistics (training), μ and σ² depend on every x of the channel:
//   dx = γ/√(σ² + ε) · (dy − dβ/M − x̂·dγ/M)
// with fixed statistics (eval), dx = γ/√(σ² + ε) · dy.
extern "C" __global__ void bn_bwd_data_f32(float* __restrict__ dx, const float* __restrict__ dy, const float* __restrict__ x,
                                           const float* __restrict__ mean, const float* __restrict__ var,
                                           const float* __restrict__ gamma, const float* __restrict__ dgamma,
                                           const float* __restrict__ dbeta, float eps, int N, int C, long long HW,
                                           int batch_stats) {
    const float inv_m = 1.f / (float)((long long)N * HW);
    grid_stride_loop((long long)N * C * HW, [&](auto idx) {
        const int c = bn_channel(idx, C, HW);
        const float invstd = 1.f / sqrtf(var[c] + eps);
        const float scale = gamma[c] * invstd;
        if (batch_stats) {
            const float xhat = (x[idx] - mean[c]) * invstd;
            dx[idx] = scale * (dy[idx] - dbeta[c] * inv_m - xhat * dgamma[c] * inv_m);
        } else {
            dx[idx] = scale * dy[idx];
        }
    });
}

// running ← (1 − momentum)·running + momentum·batch, with the unbiased variance
// (var · M/(M − 1); `unbias` is that factor).
extern "C" __global__ void bn_update_running_f32(float* __restrict__ running_mean, float* __restrict__ running_var,
                                                 const float* __restrict__ mean, const float* __restrict__ var, int C,
                                                 float momentum, float unbias) {
    for (long long c = global_thread_index(); c < C; c += grid_stride()) {
        running_mean[c] = (1.f - momentum) * running_mean[c] + momentum * mean[c];
        running_var[c] = (1.f - momentum) * running_var[c] + momentum * var[c] * unbias;
    }
}
