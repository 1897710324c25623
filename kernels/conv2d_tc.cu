// 2-D convolution on the tensor cores: forward, data gradient and filter gradient as
// implicit GEMMs on the tensor-core tile engine (tc_gemm.cuh), in TF32, BF16 or FP16 with
// FP32 accumulators. The same three products as conv2d.cu's implicit-GEMM variants (same
// matrices, same grid: x over column tiles, y over row tiles, z over groups), with operands
// that hand the engine addresses for cp.async instead of values.
// Reference: src/ops/conv2d/reference.rs on operands rounded by Precision::round
// (src/ops/precision.rs); the FP32 variants are in conv2d.cu. Read tc_gemm.cuh first, and
// conv2d.cu's implicit-GEMM half for the operands' index walks (conv_index.cuh).
//
// Kernels: conv2d_{fwd,bwd_data,bwd_filter}_tc{64,128}_{tf32,bf16,fp16}: one per direction,
// tile configuration and precision, plus conv2d_bwd_filter_reduce_tc (the split filter
// gradient's sum, then the output rounding). Groups run as one launch (grid z), or as the
// towers of src/ops/conv2d/gpu.rs: one launch per group, one group deep, with pointers at
// that group's channels (g = 0 then stands for the group the pointers start at).
//
// Semantics (src/ops/precision.rs): operands rounded to the precision as they are built into
// fragments, products exact, sums in FP32; for BF16/FP16 each output rounded to the 16-bit
// type, then (forward) the bias added and the ReLU applied in FP32.
//
// ptxas -v (nvcc 13.0, -O3): registers per thread on sm_80 / sm_90 (sm_86 and sm_89 as
// sm_80), static shared memory per block; no kernel has a stack frame, spills or local
// memory on any of them. BF16 and FP16 compile alike.
//                          tf32       bf16/fp16   shared
//   conv2d_fwd_tc64        91 / 93    79 / 78     24 KiB (3 stages × (64 + 64) × 16 floats)
//   conv2d_fwd_tc128      120 / 126  118 / 127    36 KiB (3 stages × (128 + 64) × 16 floats)
//   conv2d_bwd_data_tc64  100 / 97    73 / 74     24 KiB
//   conv2d_bwd_data_tc128 121 / 128  109 / 121    36 KiB
//   conv2d_bwd_filter_tc64 73 / 96    64 / 79     24 KiB
//   conv2d_bwd_filter_tc128 118 / 123 112 / 122   36 KiB
//   conv2d_bwd_filter_reduce_tc: 32 / 32, no shared memory.
// The 128×64 kernels are held to 128 registers (__launch_bounds__(256, 2)): two blocks, 16
// warps, per SM; the 64×64 ones fit two to three blocks.
#include "conv_index.cuh"
#include "tc_gemm.cuh"

namespace tc_conv {

// The sizes every convolution kernel takes.
struct Sizes {
    int N, C, H, W, O, KH, KW, OH, OW, sh, sw, ph, pw, dh, dw, groups;
    __device__ int cg() const { return C / groups; }
    __device__ int og() const { return O / groups; }
    __device__ int taps() const { return KH * KW; }
};

// Forward, A: the weights of one group, row m = output channel, k = (c, ky, kx) contiguous:
// copied 16 bytes at a time when K is a multiple of 4.
struct FwdWeights {
    const float* w;  // the group's first weight
    int K;
    const float* p = nullptr;
    int k = 0, step = 0;
    __device__ const float* base() const { return w; }
    __device__ bool vec_ok() const { return K % 4 == 0 && ((unsigned long long)w & 15) == 0; }
    __device__ const float* row_ptr(long long m) const { return w + m * K; }
    __device__ void set_row(long long m) { p = w + m * K; }
    __device__ void seek(int k0, int k_step) {
        k = k0;
        step = k_step;
    }
    __device__ void advance() { k += step; }
    __device__ const float* ptr() const { return p + k; }
};

// Forward, B: row n = output pixel (image, oy, ox), k = (c, ky, kx) → x[image, g·C/G + c,
// oy·sh − ph + ky·dh, ox·sw − pw + kx·dw], null in the padding.
struct FwdIm2col {
    const float* x;  // channel g·C/G of image 0
    Sizes s;
    int iy0 = 0, ix0 = 0, img = 0;
    RowDigits3 row;  // (img·C + c, ky, kx)
    __device__ const float* base() const { return x; }
    __device__ bool vec_ok() const { return false; }
    __device__ const float* row_ptr(long long) const { return x; }
    __device__ void set_row(long long n) {
        const int ox = (int)(n % s.OW), oy = (int)((n / s.OW) % s.OH);
        img = (int)(n / ((long long)s.OW * s.OH));
        iy0 = oy * s.sh - s.ph;
        ix0 = ox * s.sw - s.pw;
    }
    __device__ void seek(int k, int step) {
        row.start(k, step, s.KH, s.KW);
        row.outer += img * s.C;
    }
    __device__ void advance() { row.advance(); }
    __device__ const float* ptr() const {
        const int iy = iy0 + row.mid * s.dh, ix = ix0 + row.inner * s.dw;
        if (iy < 0 || iy >= s.H || ix < 0 || ix >= s.W) return nullptr;
        return x + ((long long)row.outer * s.H + iy) * s.W + ix;
    }
};

// Forward, C: y[image, g·O/G + m, p] = the output rounded by the engine, + bias, then ReLU.
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

template <class P, class Tile>
__device__ __forceinline__ void forward(float* y, const float* x, const float* w, const float* bias, const Sizes& s,
                                        int relu) {
    const int g = blockIdx.z, K = s.cg() * s.taps();
    const FwdWeights A{w + (long long)g * s.og() * K, K};
    const FwdIm2col B{x + (long long)g * s.cg() * s.H * s.W, s};
    const FwdStore out{y, bias, s.O, g * s.og(), (long long)s.OH * s.OW, relu};
    tc_gemm<P, Tile>(A, B, out, s.og(), (long long)s.N * s.OH * s.OW, 0, K, true);
}

// Data gradient, A: row m = input channel c of the group, k = (o, ky, kx) →
// w[o, c, ky, kx] (a gather: k is not contiguous).
struct DgradWeights {
    const float* w;  // output channel g·O/G
    int cg, taps;
    const float* p = nullptr;
    RowDigits2 row;  // (o, tap)
    __device__ const float* base() const { return w; }
    __device__ bool vec_ok() const { return false; }
    __device__ const float* row_ptr(long long) const { return w; }
    __device__ void set_row(long long c) { p = w + c * taps; }
    __device__ void seek(int k, int step) { row.start(k, step, taps); }
    __device__ void advance() { row.advance(); }
    __device__ const float* ptr() const { return p + (long long)row.outer * cg * taps + row.inner; }
};

// Data gradient, B: row n = input pixel (image, iy, ix), k = (o, ky, kx) → the output
// gradient at the pixel whose tap (ky, kx) read (iy, ix), or null if none did (conv2d.cu's
// DgradGather).
struct DgradGather {
    const float* dy;  // channel g·O/G of image 0
    Sizes s;
    FastDiv by_sh, by_sw;
    int img = 0, ty0 = 0, tx0 = 0;
    RowDigits3 row;  // (img·O + o, ky, kx)
    __device__ DgradGather(const float* dy_, const Sizes& s_) : dy(dy_), s(s_), by_sh(s_.sh), by_sw(s_.sw) {}
    __device__ const float* base() const { return dy; }
    __device__ bool vec_ok() const { return false; }
    __device__ const float* row_ptr(long long) const { return dy; }
    __device__ void set_row(long long n) {
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
    __device__ const float* ptr() const {
        const int ty = ty0 - row.mid * s.dh, tx = tx0 - row.inner * s.dw;
        if (ty < 0 || tx < 0) return nullptr;
        const int oy = by_sh.div(ty), ox = by_sw.div(tx);
        if (oy * s.sh != ty || ox * s.sw != tx || oy >= s.OH || ox >= s.OW) return nullptr;
        return dy + ((long long)row.outer * s.OH + oy) * s.OW + ox;
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

template <class P, class Tile>
__device__ __forceinline__ void backward_data(float* dx, const float* dy, const float* w, const Sizes& s) {
    const int g = blockIdx.z;
    const DgradWeights A{w + (long long)g * s.og() * s.cg() * s.taps(), s.cg(), s.taps()};
    const DgradGather B(dy + (long long)g * s.og() * s.OH * s.OW, s);
    const DgradStore out{dx, s.C, g * s.cg(), (long long)s.H * s.W};
    tc_gemm<P, Tile>(A, B, out, s.cg(), (long long)s.N * s.H * s.W, 0, s.og() * s.taps(), true);
}

// Filter gradient, A: row m = output channel o of the group, k = (image, p) →
// dy[image, g·O/G + o, p]. Gathered, though contiguous within an image: a 16-byte path
// beside the gather (chosen per launch, where OH·OW is a multiple of 4) puts both in the
// loop, about 700 SASS instructions per slice instead of 500 on sm_90, and the 128×64 kernels
// at their 128-register limit.
struct WgradDy {
    const float* dy;  // channel g·O/G of image 0
    int O, pix;
    const float* p = nullptr;
    RowDigits2 row;  // (image, p)
    __device__ const float* base() const { return dy; }
    __device__ bool vec_ok() const { return false; }
    __device__ const float* row_ptr(long long) const { return dy; }
    __device__ void set_row(long long o) { p = dy + o * pix; }
    __device__ void seek(int k, int step) { row.start(k, step, pix); }
    __device__ void advance() { row.advance(); }
    __device__ const float* ptr() const { return p + (long long)row.outer * O * pix + row.inner; }
};

// Filter gradient, B: row n = weight (c, ky, kx), k = (image, oy, ox) →
// x[image, g·C/G + c, oy·sh − ph + ky·dh, ox·sw − pw + kx·dw], null in the padding.
struct WgradIm2colT {
    const float* x;  // channel g·C/G of image 0
    int H, W, sh, sw, KW, taps, OH, OW, ph, pw, dh, dw;
    long long image;  // C·H·W: from one image to the next
    const float* plane = nullptr;
    int iy0 = 0, ix0 = 0;
    RowDigits3 row;  // (image, oy, ox)
    __device__ WgradIm2colT(const float* x_, const Sizes& s)
        : x(x_), H(s.H), W(s.W), sh(s.sh), sw(s.sw), KW(s.KW), taps(s.taps()), OH(s.OH), OW(s.OW), ph(s.ph),
          pw(s.pw), dh(s.dh), dw(s.dw), image((long long)s.C * s.H * s.W) {}
    __device__ const float* base() const { return x; }
    __device__ bool vec_ok() const { return false; }
    __device__ const float* row_ptr(long long) const { return x; }
    __device__ void set_row(long long n) {
        const int c = (int)(n / taps), r = (int)(n % taps);
        plane = x + (long long)c * H * W;
        iy0 = r / KW * dh - ph;
        ix0 = r % KW * dw - pw;
    }
    __device__ void seek(int k, int step) { row.start(k, step, OH, OW); }
    __device__ void advance() { row.advance(); }
    __device__ const float* ptr() const {
        const int iy = iy0 + row.mid * sh, ix = ix0 + row.inner * sw;
        if (iy < 0 || iy >= H || ix < 0 || ix >= W) return nullptr;
        return plane + row.outer * image + (long long)iy * W + ix;
    }
};

struct WgradStore {
    float* out;  // this group's (and slice's) [O/G × C/G·KH·KW] block
    int cols;
    __device__ void store(int m, long long n, float v) const { out[(long long)m * cols + n] = v; }
};

// dW per group, its shared dimension N·OH·OW cut into slices of k_chunk (a multiple of 16)
// as conv2d.cu's filter gradient: grid z = splits × launch_groups; with one slice the
// rounded result goes to dw, otherwise slice s writes FP32 partial sums to workspace block
// s·groups + g and conv2d_bwd_filter_reduce_tc sums and rounds them.
template <class P, class Tile>
__device__ __forceinline__ void backward_filter(float* out, const float* dy, const float* x, const Sizes& s,
                                                int k_chunk, int launch_groups) {
    const int g = blockIdx.z % launch_groups, split = blockIdx.z / launch_groups;
    const int splits = gridDim.z / launch_groups;
    const int cols = s.cg() * s.taps(), K = s.N * s.OH * s.OW;
    const WgradDy A{dy + (long long)g * s.og() * s.OH * s.OW, s.O, s.OH * s.OW};
    const WgradIm2colT B(x + (long long)g * s.cg() * s.H * s.W, s);
    const WgradStore store{out + ((long long)split * s.groups + g) * s.og() * cols, cols};
    const int k_begin = split * k_chunk, k_end = min(K, k_begin + k_chunk);
    tc_gemm<P, Tile>(A, B, store, s.og(), cols, k_begin, k_end, splits == 1);
}

}  // namespace tc_conv

// The entry points. Argument order as conv2d.cu's implicit-GEMM kernels; the 128×128 ones
// ask for two blocks per SM (at most 128 registers: 64 accumulators, 24 fragment registers).
#define TC_CONV_SIZES \
    const tc_conv::Sizes s { N, C, H, W, O, KH, KW, OH, OW, sh, sw, ph, pw, dh, dw, groups }

extern "C" __global__ void __launch_bounds__(TC_THREADS)
conv2d_fwd_tc64_tf32(float* __restrict__ y, const float* __restrict__ x, const float* __restrict__ w,
                     const float* __restrict__ bias, int N, int C, int H, int W, int O, int KH, int KW, int OH, int OW,
                     int sh, int sw, int ph, int pw, int dh, int dw, int groups, int relu) {
    TC_CONV_SIZES;
    tc_conv::forward<TcTf32, TcTile64>(y, x, w, bias, s, relu);
}
extern "C" __global__ void __launch_bounds__(TC_THREADS)
conv2d_fwd_tc64_bf16(float* __restrict__ y, const float* __restrict__ x, const float* __restrict__ w,
                     const float* __restrict__ bias, int N, int C, int H, int W, int O, int KH, int KW, int OH, int OW,
                     int sh, int sw, int ph, int pw, int dh, int dw, int groups, int relu) {
    TC_CONV_SIZES;
    tc_conv::forward<TcBf16, TcTile64>(y, x, w, bias, s, relu);
}
extern "C" __global__ void __launch_bounds__(TC_THREADS)
conv2d_fwd_tc64_fp16(float* __restrict__ y, const float* __restrict__ x, const float* __restrict__ w,
                     const float* __restrict__ bias, int N, int C, int H, int W, int O, int KH, int KW, int OH, int OW,
                     int sh, int sw, int ph, int pw, int dh, int dw, int groups, int relu) {
    TC_CONV_SIZES;
    tc_conv::forward<TcFp16, TcTile64>(y, x, w, bias, s, relu);
}
extern "C" __global__ void __launch_bounds__(TC_THREADS, 2)
conv2d_fwd_tc128_tf32(float* __restrict__ y, const float* __restrict__ x, const float* __restrict__ w,
                      const float* __restrict__ bias, int N, int C, int H, int W, int O, int KH, int KW, int OH, int OW,
                      int sh, int sw, int ph, int pw, int dh, int dw, int groups, int relu) {
    TC_CONV_SIZES;
    tc_conv::forward<TcTf32, TcTile128>(y, x, w, bias, s, relu);
}
extern "C" __global__ void __launch_bounds__(TC_THREADS, 2)
conv2d_fwd_tc128_bf16(float* __restrict__ y, const float* __restrict__ x, const float* __restrict__ w,
                      const float* __restrict__ bias, int N, int C, int H, int W, int O, int KH, int KW, int OH, int OW,
                      int sh, int sw, int ph, int pw, int dh, int dw, int groups, int relu) {
    TC_CONV_SIZES;
    tc_conv::forward<TcBf16, TcTile128>(y, x, w, bias, s, relu);
}
extern "C" __global__ void __launch_bounds__(TC_THREADS, 2)
conv2d_fwd_tc128_fp16(float* __restrict__ y, const float* __restrict__ x, const float* __restrict__ w,
                      const float* __restrict__ bias, int N, int C, int H, int W, int O, int KH, int KW, int OH, int OW,
                      int sh, int sw, int ph, int pw, int dh, int dw, int groups, int relu) {
    TC_CONV_SIZES;
    tc_conv::forward<TcFp16, TcTile128>(y, x, w, bias, s, relu);
}

extern "C" __global__ void __launch_bounds__(TC_THREADS)
conv2d_bwd_data_tc64_tf32(float* __restrict__ dx, const float* __restrict__ dy, const float* __restrict__ w, int N,
                          int C, int H, int W, int O, int KH, int KW, int OH, int OW, int sh, int sw, int ph, int pw,
                          int dh, int dw, int groups) {
    TC_CONV_SIZES;
    tc_conv::backward_data<TcTf32, TcTile64>(dx, dy, w, s);
}
extern "C" __global__ void __launch_bounds__(TC_THREADS)
conv2d_bwd_data_tc64_bf16(float* __restrict__ dx, const float* __restrict__ dy, const float* __restrict__ w, int N,
                          int C, int H, int W, int O, int KH, int KW, int OH, int OW, int sh, int sw, int ph, int pw,
                          int dh, int dw, int groups) {
    TC_CONV_SIZES;
    tc_conv::backward_data<TcBf16, TcTile64>(dx, dy, w, s);
}
extern "C" __global__ void __launch_bounds__(TC_THREADS)
conv2d_bwd_data_tc64_fp16(float* __restrict__ dx, const float* __restrict__ dy, const float* __restrict__ w, int N,
                          int C, int H, int W, int O, int KH, int KW, int OH, int OW, int sh, int sw, int ph, int pw,
                          int dh, int dw, int groups) {
    TC_CONV_SIZES;
    tc_conv::backward_data<TcFp16, TcTile64>(dx, dy, w, s);
}
extern "C" __global__ void __launch_bounds__(TC_THREADS, 2)
conv2d_bwd_data_tc128_tf32(float* __restrict__ dx, const float* __restrict__ dy, const float* __restrict__ w, int N,
                           int C, int H, int W, int O, int KH, int KW, int OH, int OW, int sh, int sw, int ph, int pw,
                           int dh, int dw, int groups) {
    TC_CONV_SIZES;
    tc_conv::backward_data<TcTf32, TcTile128>(dx, dy, w, s);
}
extern "C" __global__ void __launch_bounds__(TC_THREADS, 2)
conv2d_bwd_data_tc128_bf16(float* __restrict__ dx, const float* __restrict__ dy, const float* __restrict__ w, int N,
                           int C, int H, int W, int O, int KH, int KW, int OH, int OW, int sh, int sw, int ph, int pw,
                           int dh, int dw, int groups) {
    TC_CONV_SIZES;
    tc_conv::backward_data<TcBf16, TcTile128>(dx, dy, w, s);
}
extern "C" __global__ void __launch_bounds__(TC_THREADS, 2)
conv2d_bwd_data_tc128_fp16(float* __restrict__ dx, const float* __restrict__ dy, const float* __restrict__ w, int N,
                           int C, int H, int W, int O, int KH, int KW, int OH, int OW, int sh, int sw, int ph, int pw,
                           int dh, int dw, int groups) {
    TC_CONV_SIZES;
    tc_conv::backward_data<TcFp16, TcTile128>(dx, dy, w, s);
}

extern "C" __global__ void __launch_bounds__(TC_THREADS)
conv2d_bwd_filter_tc64_tf32(float* __restrict__ out, const float* __restrict__ dy, const float* __restrict__ x, int N,
                            int C, int H, int W, int O, int KH, int KW, int OH, int OW, int sh, int sw, int ph, int pw,
                            int dh, int dw, int groups, int k_chunk, int launch_groups) {
    TC_CONV_SIZES;
    tc_conv::backward_filter<TcTf32, TcTile64>(out, dy, x, s, k_chunk, launch_groups);
}
extern "C" __global__ void __launch_bounds__(TC_THREADS)
conv2d_bwd_filter_tc64_bf16(float* __restrict__ out, const float* __restrict__ dy, const float* __restrict__ x, int N,
                            int C, int H, int W, int O, int KH, int KW, int OH, int OW, int sh, int sw, int ph, int pw,
                            int dh, int dw, int groups, int k_chunk, int launch_groups) {
    TC_CONV_SIZES;
    tc_conv::backward_filter<TcBf16, TcTile64>(out, dy, x, s, k_chunk, launch_groups);
}
extern "C" __global__ void __launch_bounds__(TC_THREADS)
conv2d_bwd_filter_tc64_fp16(float* __restrict__ out, const float* __restrict__ dy, const float* __restrict__ x, int N,
                            int C, int H, int W, int O, int KH, int KW, int OH, int OW, int sh, int sw, int ph, int pw,
                            int dh, int dw, int groups, int k_chunk, int launch_groups) {
    TC_CONV_SIZES;
    tc_conv::backward_filter<TcFp16, TcTile64>(out, dy, x, s, k_chunk, launch_groups);
}
extern "C" __global__ void __launch_bounds__(TC_THREADS, 2)
conv2d_bwd_filter_tc128_tf32(float* __restrict__ out, const float* __restrict__ dy, const float* __restrict__ x, int N,
                             int C, int H, int W, int O, int KH, int KW, int OH, int OW, int sh, int sw, int ph,
                             int pw, int dh, int dw, int groups, int k_chunk, int launch_groups) {
    TC_CONV_SIZES;
    tc_conv::backward_filter<TcTf32, TcTile128>(out, dy, x, s, k_chunk, launch_groups);
}
extern "C" __global__ void __launch_bounds__(TC_THREADS, 2)
conv2d_bwd_filter_tc128_bf16(float* __restrict__ out, const float* __restrict__ dy, const float* __restrict__ x, int N,
                             int C, int H, int W, int O, int KH, int KW, int OH, int OW, int sh, int sw, int ph,
                             int pw, int dh, int dw, int groups, int k_chunk, int launch_groups) {
    TC_CONV_SIZES;
    tc_conv::backward_filter<TcBf16, TcTile128>(out, dy, x, s, k_chunk, launch_groups);
}
extern "C" __global__ void __launch_bounds__(TC_THREADS, 2)
conv2d_bwd_filter_tc128_fp16(float* __restrict__ out, const float* __restrict__ dy, const float* __restrict__ x, int N,
                             int C, int H, int W, int O, int KH, int KW, int OH, int OW, int sh, int sw, int ph,
                             int pw, int dh, int dw, int groups, int k_chunk, int launch_groups) {
    TC_CONV_SIZES;
    tc_conv::backward_filter<TcFp16, TcTile128>(out, dy, x, s, k_chunk, launch_groups);
}

// dw[i] = the slices' partial sums Σ_s workspace[s·stride + i], in the order s = 0, 1, …,
// rounded as an output of `precision` (1 TF32, 2 BF16, 3 FP16). One thread per weight.
extern "C" __global__ void conv2d_bwd_filter_reduce_tc(float* __restrict__ dweight,
                                                       const float* __restrict__ workspace, long long count,
                                                       long long stride, int splits, int precision) {
    for (long long i = global_thread_index(); i < count; i += grid_stride()) {
        float acc = 0.f;
        for (int s = 0; s < splits; ++s) acc += workspace[s * stride + i];
        dweight[i] = tc_round_output(acc, precision);
    }
}
