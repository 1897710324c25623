// Local response normalisation across channels (AlexNet). Reference: src/ops/lrn/reference.rs,
// whose comment derives the gradient.
//
//   s[c] = k + α/size · Σ_{c' ∈ W(c)} x[c']²,   W(c) = [c − ⌊size/2⌋, c + ⌊(size−1)/2⌋] ∩ [0, C)
//   y[c] = x[c] · s[c]^−β
//   dx[i] = dy[i] · s[i]^−β − (2αβ/size) · x[i] · Σ_{j : i ∈ W(j)} dy[j] · y[j] / s[j]
//
// One variant (`scratchnet kernel lrn` runs it as "default"): v1, one thread per element,
// the backward recomputing s rather than keeping it. Read common.cuh first (index_loop).
//
// `alpha_over_size` is α/size. One thread per element (n, c, pixel) of an N×C×HW tensor;
// neighbouring threads are neighbouring pixels of one channel, so every read of a channel
// window coalesces. Each value is read `size` times, from cache after the first.
#include "common.cuh"

// s[c] at one pixel: `x` points at channel 0 of that pixel, channels HW apart.
__device__ __forceinline__ float lrn_scale(const float* x, long long HW, int C, int c, int size, float alpha_over_size, float k) {
    const int lo = max(c - size / 2, 0), hi = min(c + (size - 1) / 2, C - 1);
    float sum = 0.f;
    for (int j = lo; j <= hi; ++j) {
        const float v = x[j * HW];
        sum += v * v;
    }
    return k + alpha_over_size * sum;
}

extern "C" __global__ void lrn_fwd_f32(float* __restrict__ y, const float* __restrict__ x, int N, int C, long long HW,
                                       int size, float alpha_over_size, float beta, float k) {
    const long long total = (long long)N * C * HW;
    grid_stride_loop(total, [&](auto idx) {
        using I = decltype(idx);
        const I plane = idx / (I)HW, n = plane / (I)C;  // plane = n·C + c
        const long long p = idx - plane * (I)HW;
        const int c = (int)(plane - n * (I)C);
        const float* pixel = x + (long long)n * C * HW + p;
        y[idx] = x[idx] * powf(lrn_scale(pixel, HW, C, c, size, alpha_over_size, k), -beta);
    });
}

extern "C" __global__ void lrn_bwd_f32(float* __restrict__ dx, const float* __restrict__ dy, const float* __restrict__ x,
                                       const float* __restrict__ y, int N, int C, long long HW, int size,
                                       float alpha_over_size, float beta, float k) {
    const long long total = (long long)N * C * HW;
    const float coef = 2.f * alpha_over_size * beta;  // 2αβ/size
    grid_stride_loop(total, [&](auto idx) {
        using I = decltype(idx);
        const I plane = idx / (I)HW, n = plane / (I)C;
        const int i = (int)(plane - n * (I)C);
        const long long base = (long long)n * C * HW + (idx - plane * (I)HW);  // channel 0 of this pixel
        // Channels j whose window contains i: [i − ⌊(size−1)/2⌋, i + ⌊size/2⌋].
        const int lo = max(i - (size - 1) / 2, 0), hi = min(i + size / 2, C - 1);
        float cross = 0.f;
        for (int j = lo; j <= hi; ++j) {
            const float s_j = lrn_scale(x + base, HW, C, j, size, alpha_over_size, k);
            cross += dy[base + j * HW] * y[base + j * HW] / s_j;
        }
        const float s_i = lrn_scale(x + base, HW, C, i, size, alpha_over_size, k);
        dx[idx] = dy[idx] * powf(s_i, -beta) - coef * x[idx] * cross;
    });
}
