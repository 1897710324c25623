// 2-D convolution: forward, data gradient, filter gradient, bias gradient.
// CPU reference: src/ops/conv2d.rs (im2col + GEMM); the math is written out in docs/conv2d.md.
//
// These are the plain "direct" variants: each computes the definition with one loop nest
// per output value, reading its operands straight from global memory. They are the ones to
// read first, and the ones the fast variants are compared with. Layouts are PyTorch's:
// x is NCHW, w is OIHW with I = C/groups, y is N×O×OH×OW.
//
// The shape arguments are the same for all four kernels:
//   N, C, H, W      input batch, channels, height, width
//   O, KH, KW       output channels and kernel size
//   OH, OW          output height and width
//   sh, sw          stride        ph, pw   padding       dh, dw   dilation
//   groups          channel groups: output channel o reads input channels
//                   [g·C/G, (g+1)·C/G) where g = o / (O/G)
#include "common.cuh"

// One thread per output value y[n, o, oy, ox] (grid-stride over all N·O·OH·OW of them):
//   y = bias[o] + Σ_{c, ky, kx} w[o, c, ky, kx] · x[n, g·C/G + c, oy·sh − ph + ky·dh, ox·sw − pw + kx·dw]
// Taps that fall in the padding are skipped. The sum runs in the order c, ky, kx: the order
// of the rows of the CPU reference's im2col matrix. `bias` may be null.
// Memory traffic: each thread reads C/G·KH·KW weights and as many input values; neighbouring
// threads (neighbouring ox) read neighbouring inputs and the same weights, so the caches do
// most of the work. The fast variants (implicit GEMM) stage both in shared memory instead.
extern "C" __global__ void conv2d_fwd_direct_f32(float* __restrict__ y, const float* __restrict__ x,
                                                 const float* __restrict__ w, const float* __restrict__ bias,
                                                 int N, int C, int H, int W, int O, int KH, int KW, int OH, int OW,
                                                 int sh, int sw, int ph, int pw, int dh, int dw, int groups) {
    const int Cg = C / groups, Og = O / groups;
    const long long total = (long long)N * O * OH * OW;
    for (long long idx = global_thread_index(); idx < total; idx += grid_stride()) {
        const int ox = (int)(idx % OW);
        const int oy = (int)((idx / OW) % OH);
        const int o = (int)((idx / ((long long)OW * OH)) % O);
        const int n = (int)(idx / ((long long)OW * OH * O));
        const int c0 = (o / Og) * Cg;  // first input channel of this output's group
        float acc = 0.f;
        for (int c = 0; c < Cg; ++c) {
            const float* x_plane = x + ((long long)n * C + c0 + c) * H * W;
            const float* w_taps = w + ((long long)o * Cg + c) * KH * KW;
            for (int ky = 0; ky < KH; ++ky) {
                const int iy = oy * sh - ph + ky * dh;
                if (iy < 0 || iy >= H) continue;
                for (int kx = 0; kx < KW; ++kx) {
                    const int ix = ox * sw - pw + kx * dw;
                    if (ix < 0 || ix >= W) continue;
                    acc += w_taps[ky * KW + kx] * x_plane[(long long)iy * W + ix];
                }
            }
        }
        y[idx] = bias ? acc + bias[o] : acc;
    }
}

// One thread per input value dx[n, c, iy, ix]: the sum of dy[n, o, oy, ox] · w[o, c', ky, kx]
// over every (o, ky, kx) whose tap reads this pixel. Tap (ky, kx) of output (oy, ox) reads
// row oy·sh − ph + ky·dh, so for a given ky the output row is oy = (iy + ph − ky·dh) / sh, which
// must divide exactly and land in [0, OH). Gathering (each thread writes only its own dx)
// rather than scattering (each output adds into the inputs it read) needs no atomics, so the
// result does not depend on thread scheduling.
extern "C" __global__ void conv2d_bwd_data_direct_f32(float* __restrict__ dx, const float* __restrict__ dy,
                                                      const float* __restrict__ w,
                                                      int N, int C, int H, int W, int O, int KH, int KW, int OH, int OW,
                                                      int sh, int sw, int ph, int pw, int dh, int dw, int groups) {
    const int Cg = C / groups, Og = O / groups;
    const long long total = (long long)N * C * H * W;
    for (long long idx = global_thread_index(); idx < total; idx += grid_stride()) {
        const int ix = (int)(idx % W);
        const int iy = (int)((idx / W) % H);
        const int c = (int)((idx / ((long long)W * H)) % C);
        const int n = (int)(idx / ((long long)W * H * C));
        const int g = c / Cg, ci = c - g * Cg;
        float acc = 0.f;
        for (int o = g * Og; o < (g + 1) * Og; ++o) {
            const float* dy_plane = dy + ((long long)n * O + o) * OH * OW;
            const float* w_taps = w + ((long long)o * Cg + ci) * KH * KW;
            for (int ky = 0; ky < KH; ++ky) {
                const int ty = iy + ph - ky * dh;
                if (ty < 0 || ty % sh != 0) continue;
                const int oy = ty / sh;
                if (oy >= OH) continue;
                for (int kx = 0; kx < KW; ++kx) {
                    const int tx = ix + pw - kx * dw;
                    if (tx < 0 || tx % sw != 0) continue;
                    const int ox = tx / sw;
                    if (ox >= OW) continue;
                    acc += dy_plane[(long long)oy * OW + ox] * w_taps[ky * KW + kx];
                }
            }
        }
        dx[idx] = acc;
    }
}

// One thread per weight value dweight[o, c, ky, kx] (grid-stride over all of them): the sum
// over the N·OH·OW output positions of dy[n, o, oy, ox] · x[n, g·C/G + c, oy·sh − ph + ky·dh,
// ox·sw − pw + kx·dw], in the order n, oy, ox. Each thread owns its sum, so no atomics and a
// result that is the same on every run. It is the simplest mapping, not a fast one: a layer
// has few weights next to its N·OH·OW positions, so few threads each do a long loop.
// (The implicit-GEMM variant turns this sum into tiles of a matrix product.)
extern "C" __global__ void conv2d_bwd_filter_direct_f32(float* __restrict__ dweight, const float* __restrict__ dy,
                                                        const float* __restrict__ x,
                                                        int N, int C, int H, int W, int O, int KH, int KW, int OH, int OW,
                                                        int sh, int sw, int ph, int pw, int dh, int dw, int groups) {
    const int Cg = C / groups, Og = O / groups;
    const long long total = (long long)O * Cg * KH * KW;
    for (long long widx = global_thread_index(); widx < total; widx += grid_stride()) {
        const int kx = (int)(widx % KW);
        const int ky = (int)((widx / KW) % KH);
        const int ci = (int)((widx / ((long long)KW * KH)) % Cg);
        const int o = (int)(widx / ((long long)KW * KH * Cg));
        const int c = (o / Og) * Cg + ci;
        double acc = 0.0;  // a serial sum of N·OH·OW terms (3 million for ResNet-50's conv1 at batch 256)
        for (int n = 0; n < N; ++n) {
            const float* dy_plane = dy + ((long long)n * O + o) * OH * OW;
            const float* x_plane = x + ((long long)n * C + c) * H * W;
            for (int oy = 0; oy < OH; ++oy) {
                const int iy = oy * sh - ph + ky * dh;
                if (iy < 0 || iy >= H) continue;
                for (int ox = 0; ox < OW; ++ox) {
                    const int ix = ox * sw - pw + kx * dw;
                    if (ix < 0 || ix >= W) continue;
                    acc += dy_plane[(long long)oy * OW + ox] * x_plane[(long long)iy * W + ix];
                }
            }
        }
        dweight[widx] = (float)acc;
    }
}

// One block per output channel o: db[o] = Σ_{n, p} dy[n, o, p] over the HW pixels p of
// each of the N images: each thread sums its share in double, then block_sum combines the
// 256 partial sums in a fixed order.
extern "C" __global__ void __launch_bounds__(SCRATCHNET_BLOCK)
conv2d_bwd_bias_f32(float* __restrict__ db, const float* __restrict__ dy, int N, int O, long long HW) {
    __shared__ float scratch[SCRATCHNET_BLOCK / 32];
    const int o = blockIdx.x;
    double acc = 0.0;  // each thread's share can be thousands of terms at real sizes
    for (long long p = threadIdx.x; p < (long long)N * HW; p += blockDim.x) {
        const long long n = p / HW, q = p % HW;
        acc += dy[(n * O + o) * HW + q];
    }
    const float total = block_sum((float)acc, scratch);
    if (threadIdx.x == 0) db[o] = total;
}
