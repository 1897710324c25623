// 2-D convolution: forward, data gradient, filter gradient, bias gradient.
// Reference: src/ops/conv2d/reference.rs (the definition as plain loops) and
// src/ops/conv2d/mod.rs (im2col + GEMM); the math is written out in docs/conv2d.md.
//
// Variants, in reading order (the names `scratchnet kernel conv2d --variants all` prints):
//   v1 direct             one thread per output value (per input value for the data gradient,
//                         per weight for the filter gradient), a loop nest over the definition,
//                         operands straight from global memory: the kernels to check the others by
//   v2 implicit-gemm      each pass as a matrix product on the 64×64 tile engine
//                         (tile_gemm.cuh): operands staged in shared memory, 4×4 outputs per
//                         thread, im2col computed on the fly by the B operand, indices stepped
//                         without division (conv_index.cuh); the filter gradient split along K
//   v3 implicit-gemm-128  the same operands on the 128×128 engine: 8×8 outputs per thread,
//                         16 FMAs per shared load instead of 8
// Beside them, for every variant: the bias gradient (conv2d_bwd_bias_f32) and the sum of the
// split filter gradient's slices (conv2d_bwd_filter_reduce_f32). Read common.cuh first, then
// this file's direct kernels; before the implicit-GEMM half, tile_gemm.cuh and conv_index.cuh.
// Layouts are PyTorch's: x is NCHW, w is OIHW with I = C/groups, y is N×O×OH×OW.
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
// of the rows of the CPU path's im2col matrix. `bias` may be null.
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

// ---------------------------------------------------------------------------------------
// v2 and v3, implicit GEMM: the same three products as the CPU's im2col + GEMM, computed by
// a tile engine of tile_gemm.cuh without ever writing the im2col matrix to memory:
// the B operand computes, for each element it fetches, which input pixel (or output gradient)
// it stands for. One launch covers all groups (grid z), or one group alone when the groups
// run as towers on separate streams (src/ops/conv2d/gpu.rs): the host then passes pointers
// that start at that group's channels and launches a grid one group deep, so g = 0 here
// stands for the group the pointers start at, and the strides (C, O) stay the layer's own.
//
// The operands walk their rows with a cursor (tile_gemm.cuh): a thread's rows come a fixed
// step apart, so the coordinates a row stands for, (c, ky, kx) or (image, oy, ox), are kept as
// digits and stepped by adding with carries (RowDigits3 and RowDigits2, conv_index.cuh)
// instead of being divided out of k for every element.

#include "conv_index.cuh"
#include "tile_gemm.cuh"

// Each product runs on either engine of tile_gemm.cuh: the 64×64 tile (Tile64, 4×4 outputs
// per thread), or the 128×128 one (Tile128, 8×8 per thread, 16 FMAs per shared load instead
// of 8, for the large layers; it wastes more on the edges of small ones). The 128×128 entry
// points ask for two blocks per SM (__launch_bounds__(256, 2), at most 128 registers): left
// free, ptxas gives them 134–137 registers on sm_90, and one block per SM. The kernels are
// written once over the tile shape, with one extern "C" entry point per engine:
// `…_implicit_gemm_f32` (Tile64) and `…_implicit_gemm128_f32` (Tile128).

// The sizes every convolution kernel takes, unpacked once per block.
struct ConvSizes {
    int N, C, H, W, O, KH, KW, OH, OW, sh, sw, ph, pw, dh, dw, groups;
    __device__ int cg() const { return C / groups; }
    __device__ int og() const { return O / groups; }
    __device__ int taps() const { return KH * KW; }
};

// Forward, A: the weights of one group, row-major [O/G × K] with K = C/G·KH·KW.
struct FwdWeights {
    const float* w;
    int K;
    int k = 0, step = 0;  // the row: a plain index, nothing to take apart
    __device__ void seek(int k0, int k_step) {
        k = k0;
        step = k_step;
    }
    __device__ void advance() { k += step; }
    __device__ float load(int m) const { return w[(long long)m * K + k]; }
};

// Forward, B: column n = (image, oy, ox), row k = (c, ky, kx) → x[image, g·C/G + c, iy, ix]
// with iy = oy·sh − ph + ky·dh, ix = ox·sw − pw + kx·dw.
struct FwdIm2col {
    const float* x;  // channel g·C/G of image 0
    ConvSizes s;
    long long cols;
    int img = 0, iy0 = 0, ix0 = 0;  // the image, and the input pixel of tap (0, 0)
    RowDigits3 row;                  // (img·C + c, ky, kx): the channel counted from image 0
    __device__ void set_column(long long n) {
        // A column past the end gets a pixel far above the image: every tap reads padding.
        iy0 = -(1 << 30);
        if (n >= cols) return;
        const int ox = (int)(n % s.OW), oy = (int)((n / s.OW) % s.OH);
        img = (int)(n / ((long long)s.OW * s.OH));
        iy0 = oy * s.sh - s.ph;
        ix0 = ox * s.sw - s.pw;
    }
    __device__ void seek(int k, int step) {
        row.start(k, step, s.KH, s.KW);
        row.outer += img * s.C;  // the outer digit has no radix: an offset rides along
    }
    __device__ void advance() { row.advance(); }
    __device__ float load() const {
        const int iy = iy0 + row.mid * s.dh, ix = ix0 + row.inner * s.dw;
        if (iy < 0 || iy >= s.H || ix < 0 || ix >= s.W) return 0.f;
        return x[((long long)row.outer * s.H + iy) * s.W + ix];
    }
};

// Forward, C: output channel g·O/G + m of pixel n, plus the bias, then the ReLU if the layer
// fuses one (bias_act.cu explains the fusion): the activation is applied before the value
// ever reaches memory.
struct FwdStore {
    float* y;
    const float* bias;
    int O, first_o;
    long long pix;
    int relu;
    __device__ void store(int m, long long n, float v) const {
        const int o = first_o + m;
        const long long img = narrow_div(n, pix), p = n - img * pix;
        if (bias) v += bias[o];
        if (relu && !(v > 0.f || v != v)) v = 0.f;
        y[(img * O + o) * pix + p] = v;
    }
};

// y = conv(x, w) + bias (then ReLU when `relu` is set) as a GEMM per group:
// [O/G × K] · [K × N·OH·OW]. Grid: x over tiles of output pixels (all images), y over tiles
// of output channels, z over groups; 256 threads.
template <class Tile>
__device__ __forceinline__ void conv_fwd_implicit_gemm(float* y, const float* x, const float* w, const float* bias,
                                                       const ConvSizes& s, int relu) {
    const int g = blockIdx.z, K = s.cg() * s.taps();
    const FwdWeights A{w + (long long)g * s.og() * K, K};
    const FwdIm2col B{x + (long long)g * s.cg() * s.H * s.W, s, (long long)s.N * s.OH * s.OW};
    const FwdStore out{y, bias, s.O, g * s.og(), (long long)s.OH * s.OW, relu};
    tile_gemm<Tile>(A, B, out, s.og(), B.cols, 0, K);
}

extern "C" __global__ void __launch_bounds__(TILE_THREADS)
conv2d_fwd_implicit_gemm_f32(float* __restrict__ y, const float* __restrict__ x, const float* __restrict__ w,
                             const float* __restrict__ bias, int N, int C, int H, int W, int O, int KH, int KW, int OH,
                             int OW, int sh, int sw, int ph, int pw, int dh, int dw, int groups, int relu) {
    const ConvSizes s{N, C, H, W, O, KH, KW, OH, OW, sh, sw, ph, pw, dh, dw, groups};
    conv_fwd_implicit_gemm<Tile64>(y, x, w, bias, s, relu);
}

extern "C" __global__ void __launch_bounds__(TILE_THREADS, 2)
conv2d_fwd_implicit_gemm128_f32(float* __restrict__ y, const float* __restrict__ x, const float* __restrict__ w,
                                const float* __restrict__ bias, int N, int C, int H, int W, int O, int KH, int KW,
                                int OH, int OW, int sh, int sw, int ph, int pw, int dh, int dw, int groups, int relu) {
    const ConvSizes s{N, C, H, W, O, KH, KW, OH, OW, sh, sw, ph, pw, dh, dw, groups};
    conv_fwd_implicit_gemm<Tile128>(y, x, w, bias, s, relu);
}

// Data gradient, A: the weights seen as [C/G × O/G·KH·KW]: A(c, (o, ky, kx)) = w[o, c, ky, kx].
struct DgradWeights {
    const float* w;  // output channel g·O/G
    int cg, taps;
    RowDigits2 row;  // (o, tap)
    __device__ void seek(int k, int step) { row.start(k, step, taps); }
    __device__ void advance() { row.advance(); }
    __device__ float load(int m) const { return w[((long long)row.outer * cg + m) * taps + row.inner]; }
};

// Data gradient, B: column n = (image, iy, ix), row k = (o, ky, kx) → the output gradient at
// the output pixel whose tap (ky, kx) read (iy, ix), or 0 if no output pixel did. That pixel
// is oy = ty / sh with ty = iy + ph − ky·dh, if ty >= 0 and sh divides it exactly (and the
// same for x); the divisions by the strides go through FastDiv (conv_index.cuh).
struct DgradGather {
    const float* dy;  // channel g·O/G of image 0
    ConvSizes s;
    long long cols;
    FastDiv by_sh, by_sw;
    int img = 0, ty0 = 0, tx0 = 0;  // the image, and ty, tx of tap (0, 0): iy + ph, ix + pw
    RowDigits3 row;                  // (img·O + o, ky, kx): the channel counted from image 0
    __device__ DgradGather(const float* dy_, const ConvSizes& s_, long long cols_)
        : dy(dy_), s(s_), cols(cols_), by_sh(s_.sh), by_sw(s_.sw) {}
    __device__ void set_column(long long n) {
        // A column past the end gets a negative ty for every tap: no output pixel, all zeros.
        ty0 = -(1 << 30);
        if (n >= cols) return;
        const int ix = (int)(n % s.W), iy = (int)((n / s.W) % s.H);
        img = (int)(n / ((long long)s.W * s.H));
        ty0 = iy + s.ph;
        tx0 = ix + s.pw;
    }
    __device__ void seek(int k, int step) {
        row.start(k, step, s.KH, s.KW);
        row.outer += img * s.O;
    }
    __device__ void advance() { row.advance(); }
    __device__ float load() const {
        const int ty = ty0 - row.mid * s.dh, tx = tx0 - row.inner * s.dw;
        if (ty < 0 || tx < 0) return 0.f;
        const int oy = by_sh.div(ty), ox = by_sw.div(tx);
        if (oy * s.sh != ty || ox * s.sw != tx || oy >= s.OH || ox >= s.OW) return 0.f;
        return dy[((long long)row.outer * s.OH + oy) * s.OW + ox];
    }
};

struct DgradStore {
    float* dx;
    int C, first_c;
    long long hw;
    __device__ void store(int m, long long n, float v) const {
        const long long img = narrow_div(n, hw), p = n - img * hw;
        dx[(img * C + first_c + m) * hw + p] = v;
    }
};

// dx as a GEMM per group: [C/G × O/G·KH·KW] · [O/G·KH·KW × N·H·W]. Every element of dx is one
// output of the product, written once: no atomics.
template <class Tile>
__device__ __forceinline__ void conv_bwd_data_implicit_gemm(float* dx, const float* dy, const float* w,
                                                            const ConvSizes& s) {
    const int g = blockIdx.z;
    const DgradWeights A{w + (long long)g * s.og() * s.cg() * s.taps(), s.cg(), s.taps()};
    const DgradGather B(dy + (long long)g * s.og() * s.OH * s.OW, s, (long long)s.N * s.H * s.W);
    const DgradStore out{dx, s.C, g * s.cg(), (long long)s.H * s.W};
    tile_gemm<Tile>(A, B, out, s.cg(), B.cols, 0, s.og() * s.taps());
}

extern "C" __global__ void __launch_bounds__(TILE_THREADS)
conv2d_bwd_data_implicit_gemm_f32(float* __restrict__ dx, const float* __restrict__ dy, const float* __restrict__ w,
                                  int N, int C, int H, int W, int O, int KH, int KW, int OH, int OW, int sh, int sw,
                                  int ph, int pw, int dh, int dw, int groups) {
    const ConvSizes s{N, C, H, W, O, KH, KW, OH, OW, sh, sw, ph, pw, dh, dw, groups};
    conv_bwd_data_implicit_gemm<Tile64>(dx, dy, w, s);
}

extern "C" __global__ void __launch_bounds__(TILE_THREADS, 2)
conv2d_bwd_data_implicit_gemm128_f32(float* __restrict__ dx, const float* __restrict__ dy, const float* __restrict__ w,
                                     int N, int C, int H, int W, int O, int KH, int KW, int OH, int OW, int sh, int sw,
                                     int ph, int pw, int dh, int dw, int groups) {
    const ConvSizes s{N, C, H, W, O, KH, KW, OH, OW, sh, sw, ph, pw, dh, dw, groups};
    conv_bwd_data_implicit_gemm<Tile128>(dx, dy, w, s);
}

// Filter gradient, A: the output gradient as [O/G × N·OH·OW]: A(o, (image, p)) = dy[image, o, p].
struct WgradDy {
    const float* dy;  // channel g·O/G of image 0
    int O;
    int pix;
    RowDigits2 row;  // (image, p)
    __device__ void seek(int k, int step) { row.start(k, step, pix); }
    __device__ void advance() { row.advance(); }
    __device__ float load(int m) const { return dy[((long long)row.outer * O + m) * pix + row.inner]; }
};

// Filter gradient, B: the im2col of x transposed, [N·OH·OW × C/G·KH·KW]: column n = (c, ky, kx)
// is fixed per thread, row k = (image, oy, ox) → x[image, g·C/G + c, oy·sh − ph + ky·dh,
// ox·sw − pw + kx·dw].
struct WgradIm2colT {
    const float* x;  // channel g·C/G of image 0
    ConvSizes s;
    const float* plane = nullptr;  // x at channel c of image 0
    int iy0 = 0, ix0 = 0;          // the input pixel that output pixel (0, 0) reads through this tap
    RowDigits3 row;                 // (image, oy, ox)
    __device__ void set_column(long long n) {
        // A column past the end gets a pixel far above the image: every row reads padding.
        iy0 = -(1 << 30);
        if (n >= (long long)s.cg() * s.taps()) return;
        const int c = (int)(n / s.taps()), r = (int)(n % s.taps());
        plane = x + (long long)c * s.H * s.W;
        iy0 = r / s.KW * s.dh - s.ph;
        ix0 = r % s.KW * s.dw - s.pw;
    }
    __device__ void seek(int k, int step) { row.start(k, step, s.OH, s.OW); }
    __device__ void advance() { row.advance(); }
    __device__ float load() const {
        const int iy = iy0 + row.mid * s.sh, ix = ix0 + row.inner * s.sw;
        if (iy < 0 || iy >= s.H || ix < 0 || ix >= s.W) return 0.f;
        return plane[((long long)row.outer * s.C * s.H + iy) * s.W + ix];
    }
};

struct WgradStore {
    float* out;  // this group's (and split's) [O/G × C/G·KH·KW] block
    int cols;
    __device__ void store(int m, long long n, float v) const { out[(long long)m * cols + n] = v; }
};

// dW as a GEMM per group, [O/G × N·OH·OW] · [N·OH·OW × C/G·KH·KW], its long shared dimension
// split into `splits` slices of `k_chunk` (a multiple of 8) so that layers with few weights
// and large images still occupy the whole GPU. Grid z = splits × launch_groups, where
// launch_groups is the number of groups this launch covers (all of them, or one tower's).
// With one split the result goes straight to dw; otherwise slice s writes its partial sums
// to workspace block s·groups + g, and conv2d_bwd_filter_reduce_f32 adds the slices in order:
// deterministic, unlike atomically accumulating the slices.
template <class Tile>
__device__ __forceinline__ void conv_bwd_filter_implicit_gemm(float* out, const float* dy, const float* x,
                                                              const ConvSizes& s, int k_chunk, int launch_groups) {
    const int g = blockIdx.z % launch_groups, split = blockIdx.z / launch_groups;
    const int cols = s.cg() * s.taps(), K = s.N * s.OH * s.OW;
    const WgradDy A{dy + (long long)g * s.og() * s.OH * s.OW, s.O, s.OH * s.OW};
    const WgradIm2colT B{x + (long long)g * s.cg() * s.H * s.W, s};
    const WgradStore store{out + ((long long)split * s.groups + g) * s.og() * cols, cols};
    const int k_begin = split * k_chunk, k_end = min(K, k_begin + k_chunk);
    tile_gemm<Tile>(A, B, store, s.og(), cols, k_begin, k_end);
}

// (At least 3 blocks per SM: without the hint ptxas holds the kernel to 64 registers and
// spills; with it, 80 registers and 3 blocks.)
extern "C" __global__ void __launch_bounds__(TILE_THREADS, 3)
conv2d_bwd_filter_implicit_gemm_f32(float* __restrict__ out, const float* __restrict__ dy, const float* __restrict__ x,
                                    int N, int C, int H, int W, int O, int KH, int KW, int OH, int OW, int sh, int sw,
                                    int ph, int pw, int dh, int dw, int groups, int k_chunk, int launch_groups) {
    const ConvSizes s{N, C, H, W, O, KH, KW, OH, OW, sh, sw, ph, pw, dh, dw, groups};
    conv_bwd_filter_implicit_gemm<Tile64>(out, dy, x, s, k_chunk, launch_groups);
}

extern "C" __global__ void __launch_bounds__(TILE_THREADS, 2)
conv2d_bwd_filter_implicit_gemm128_f32(float* __restrict__ out, const float* __restrict__ dy,
                                       const float* __restrict__ x, int N, int C, int H, int W, int O, int KH, int KW,
                                       int OH, int OW, int sh, int sw, int ph, int pw, int dh, int dw, int groups,
                                       int k_chunk, int launch_groups) {
    const ConvSizes s{N, C, H, W, O, KH, KW, OH, OW, sh, sw, ph, pw, dh, dw, groups};
    conv_bwd_filter_implicit_gemm<Tile128>(out, dy, x, s, k_chunk, launch_groups);
}

// dw[i] = Σ_s workspace[s·stride + i] for i < count, in the order s = 0, 1, … (one thread
// per weight). The stride is the layer's whole weight count; count is that too, or one
// tower's share of the weights when the pointers start at its group.
extern "C" __global__ void conv2d_bwd_filter_reduce_f32(float* __restrict__ dweight, const float* __restrict__ workspace,
                                                        long long count, long long stride, int splits) {
    for (long long i = global_thread_index(); i < count; i += grid_stride()) {
        float acc = 0.f;
        for (int s = 0; s < splits; ++s) acc += workspace[s * stride + i];
        dweight[i] = acc;
    }
}
