// The fast batch norm: statistics in one pass over many blocks, and the normalisation fused
// with what follows it in a network — ReLU (y = max(BN(x), 0)), or a residual addition and
// ReLU (y = max(BN(x) + r, 0), the end of every ResNet block). Reference:
// src/ops/batchnorm/reference.rs (forward_fused, backward_fused); the launches are in
// src/ops/batchnorm_fused.rs; the plain kernels in batchnorm.cu.
//
// What fusing saves, per element of a ResNet block's last BN + add + ReLU (forward):
//   separate:  BN reads x, writes t; add reads t, r, writes u; ReLU reads u, writes y: 7 accesses
//   fused:     reads x, r, writes y: 3 accesses
// and the backward reads dy, y (for the ReLU mask) and x, and writes dx and the residual's
// gradient, instead of three kernels' worth of traffic. The tape keeps x and y; the
// intermediate sums are never stored.
//
// Variants, in reading order: v1 plain is batchnorm.cu; this file is v2 fused (not among
// `scratchnet kernel`'s variants: `kernel batchnorm` runs v1). Read common.cuh,
// channel_reduce.cuh and batchnorm.cu first.
//
// Statistics: one pass computing, per slice of a channel (channel_reduce.cuh), the sums of
// d = x − K and d² in double, where K is the channel's first value. Shifting by K keeps the
// single-pass formula var = E[d²] − E[d]² accurate when the mean is large compared with the
// spread (the cancellation the two-pass plain kernel avoids by reading x twice), because
// the d are then of the order of the spread.
#include "channel_reduce.cuh"

// Channel of element i of an N×C×HW tensor, in the width of i: the element-wise passes below
// loop on a 32-bit index when the tensor has fewer than 2^31 elements (index_loop,
// common.cuh), 64-bit otherwise.
template <class I>
__device__ __forceinline__ int channel_of(I i, long long HW, int C) {
    return (int)(i / (I)HW % (I)C);
}

// Pass 1 of the statistics: block (s, c) writes partial[(c·S + s)·2 + {0, 1}] = Σ d, Σ d²
// over slice s of channel c, d = x − x[channel c's first value].
extern "C" __global__ void __launch_bounds__(SCRATCHNET_BLOCK)
bn_stats_partial_f32(double* __restrict__ partial, const float* __restrict__ x, int N, int C, long long HW,
                     long long chunk) {
    __shared__ double scratch[SCRATCHNET_BLOCK / 32];
    const int c = blockIdx.y, S = gridDim.x;
    long long begin, end;
    channel_slice((long long)N * HW, chunk, &begin, &end);
    const float shift = x[(long long)c * HW];
    double s1 = 0.0, s2 = 0.0;
    for_channel_slice(begin, end, c, C, HW, [&](long long at, int count) {
        float v[4];
        load_values(x, at, count, v);
        for (int k = 0; k < count; ++k) {
            const double d = (double)v[k] - shift;
            s1 += d;
            s2 += d * d;
        }
    });
    s1 = block_sum_double(s1, scratch);
    s2 = block_sum_double(s2, scratch);
    if (threadIdx.x == 0) {
        partial[((long long)c * S + blockIdx.x) * 2] = s1;
        partial[((long long)c * S + blockIdx.x) * 2 + 1] = s2;
    }
}

// Pass 2: mean[c] and the biased var[c] from channel c's S partial sums, one thread per channel.
extern "C" __global__ void bn_stats_finalize_f32(float* __restrict__ mean, float* __restrict__ var,
                                                 const double* __restrict__ partial, const float* __restrict__ x, int N,
                                                 int C, long long HW, int S) {
    for (long long c = global_thread_index(); c < C; c += grid_stride()) {
        double s1 = 0.0, s2 = 0.0;
        for (int s = 0; s < S; ++s) {
            s1 += partial[(c * S + s) * 2];
            s2 += partial[(c * S + s) * 2 + 1];
        }
        const double m = (double)N * HW;
        const double mean_d = s1 / m;
        const double v = s2 / m - mean_d * mean_d;
        mean[c] = (float)(x[c * HW] + mean_d);
        var[c] = (float)(v > 0.0 ? v : 0.0);
    }
}

// y = act(x·a + b + r): a = γ/√(σ² + ε), b = β − μ·a, r the residual (or nothing when
// `residual` is null), act ReLU when `relu` is set (NaN passes through, as torch.relu).
// Grid-stride over groups of 4 elements when HW is a multiple of 4 (a group then lies in one
// channel), else over single elements.
extern "C" __global__ void bn_act_fwd_f32(float* __restrict__ y, const float* __restrict__ x,
                                          const float* __restrict__ residual, const float* __restrict__ mean,
                                          const float* __restrict__ var, const float* __restrict__ gamma,
                                          const float* __restrict__ beta, float eps, int relu, int N, int C,
                                          long long HW) {
    const long long total = (long long)N * C * HW;
    const int width = (HW % 4 == 0) ? 4 : 1;
    const long long groups = total / width;
    // Narrow when every element index, and the loop's index past its end, fit in 31 bits.
    const bool narrow = fits_int32(total + width * grid_stride());
    index_loop(global_thread_index(), groups, grid_stride(), narrow, [&](auto g) {
        const auto at = g * width;
        const int c = channel_of(at, HW, C);
        const float a = gamma[c] / sqrtf(var[c] + eps);
        const float b = beta[c] - mean[c] * a;
        // All four lanes are computed whatever the width (the unused ones are zeros and are
        // not stored): a loop bounded by `width` indexes the arrays at run time, which puts
        // them in local memory (ptxas: 32 bytes of stack per thread).
        float v[4] = {0.f, 0.f, 0.f, 0.f}, r[4] = {0.f, 0.f, 0.f, 0.f};
        load_values(x, at, width, v);
        if (residual) load_values(residual, at, width, r);
        SCRATCHNET_UNROLL
        for (int k = 0; k < 4; ++k) {
            const float t = v[k] * a + b + r[k];
            v[k] = (!relu || t > 0.f || t != t) ? t : 0.f;
        }
        store_values(y, at, width, v);
    });
}

// Backward pass 1: block (s, c) writes partial[(c·S + s)·2 + {0, 1}] = Σ dz, Σ dz·x̂ over slice s.
extern "C" __global__ void __launch_bounds__(SCRATCHNET_BLOCK)
bn_act_bwd_partial_f32(double* __restrict__ partial, const float* __restrict__ dy, const float* __restrict__ y,
                       const float* __restrict__ x, const float* __restrict__ mean, const float* __restrict__ var,
                       float eps, int N, int C, long long HW, long long chunk) {
    __shared__ double scratch[SCRATCHNET_BLOCK / 32];
    const int c = blockIdx.y, S = gridDim.x;
    long long begin, end;
    channel_slice((long long)N * HW, chunk, &begin, &end);
    const float mu = mean[c], invstd = 1.f / sqrtf(var[c] + eps);
    double sum_dz = 0.0, sum_dz_xhat = 0.0;
    for_channel_slice(begin, end, c, C, HW, [&](long long at, int count) {
        float d[4], v[4], m[4] = {1.f, 1.f, 1.f, 1.f};
        load_values(dy, at, count, d);
        load_values(x, at, count, v);
        if (y) load_values(y, at, count, m);
        for (int k = 0; k < count; ++k) {
            const float dz = (m[k] > 0.f || m[k] != m[k]) ? d[k] : 0.f;
            sum_dz += dz;
            sum_dz_xhat += (double)dz * ((v[k] - mu) * invstd);
        }
    });
    sum_dz = block_sum_double(sum_dz, scratch);
    sum_dz_xhat = block_sum_double(sum_dz_xhat, scratch);
    if (threadIdx.x == 0) {
        partial[((long long)c * S + blockIdx.x) * 2] = sum_dz;
        partial[((long long)c * S + blockIdx.x) * 2 + 1] = sum_dz_xhat;
    }
}

// Adds each channel's S partial sums (K per slice), in slice order: out0[c] = Σ_s sum 0 and,
// when out1 is not null, out1[c] = Σ_s sum 1. One thread per channel.
extern "C" __global__ void channel_partials_finalize_f32(float* __restrict__ out0, float* __restrict__ out1,
                                                         const double* __restrict__ partial, int C, int S, int K) {
    for (long long c = global_thread_index(); c < C; c += grid_stride()) {
        double a = 0.0, b = 0.0;
        for (int s = 0; s < S; ++s) {
            a += partial[(c * S + s) * K];
            if (out1) b += partial[(c * S + s) * K + 1];
        }
        out0[c] = (float)a;
        if (out1) out1[c] = (float)b;
    }
}

// Backward pass 2: dx, and the residual's gradient dz when `dresidual` is not null.
//   batch statistics:  dx = γ/√(σ² + ε) · (dz − dβ/M − x̂·dγ/M)
//   fixed statistics:  dx = γ/√(σ² + ε) · dz
extern "C" __global__ void bn_act_bwd_data_f32(float* __restrict__ dx, float* __restrict__ dresidual,
                                               const float* __restrict__ dy, const float* __restrict__ y,
                                               const float* __restrict__ x, const float* __restrict__ mean,
                                               const float* __restrict__ var, const float* __restrict__ gamma,
                                               const float* __restrict__ dgamma, const float* __restrict__ dbeta,
                                               float eps, int batch_stats, int N, int C, long long HW) {
    const long long total = (long long)N * C * HW;
    const int width = (HW % 4 == 0) ? 4 : 1;
    const long long groups = total / width;
    const float inv_m = 1.f / (float)((long long)N * HW);
    const bool narrow = fits_int32(total + width * grid_stride());
    index_loop(global_thread_index(), groups, grid_stride(), narrow, [&](auto g) {
        const auto at = g * width;
        const int c = channel_of(at, HW, C);
        const float invstd = 1.f / sqrtf(var[c] + eps);
        const float scale = gamma[c] * invstd, mu = mean[c];
        const float mean_dz = dbeta[c] * inv_m, mean_dz_xhat = dgamma[c] * inv_m;
        // Four lanes whatever the width, as in bn_act_fwd_f32: no run-time array indices.
        float d[4] = {0.f, 0.f, 0.f, 0.f}, v[4] = {0.f, 0.f, 0.f, 0.f}, m[4] = {1.f, 1.f, 1.f, 1.f}, out[4];
        load_values(dy, at, width, d);
        load_values(x, at, width, v);
        if (y) load_values(y, at, width, m);
        SCRATCHNET_UNROLL
        for (int k = 0; k < 4; ++k) {
            d[k] = (m[k] > 0.f || m[k] != m[k]) ? d[k] : 0.f;
            out[k] = batch_stats ? scale * (d[k] - mean_dz - (v[k] - mu) * invstd * mean_dz_xhat) : scale * d[k];
        }
        store_values(dx, at, width, out);
        if (dresidual) store_values(dresidual, at, width, d);
    });
}
