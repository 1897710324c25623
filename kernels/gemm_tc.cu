// Matrix multiply on the tensor cores, C = A·B for any strides of A and B, in TF32, BF16 or
// FP16 with FP32 accumulators: the products of the linear layers (x·Wᵀ forward, dy·W and
// dyᵀ·x backward) when --precision is not fp32. gemm.cu's operand conventions: A is M×K with
// (i, p) at A[i·a_rs + p·a_cs], B is K×N with (p, j) at B[p·b_rs + j·b_cs], C row-major.
// Reference: src/ops/gemm/reference.rs on operands rounded by Precision::round; for BF16 and
// FP16 every output rounded to the 16-bit type. Read tc_gemm.cuh first.
//
// Kernels: gemm_tc{64,128}_{tf32,bf16,fp16}, one per tile configuration and precision. An
// operand whose k is contiguous (a row-major A, a transposed B: x and W in x·Wᵀ) with rows
// that are a multiple of 4 floats is copied 16 bytes at a time; the others (dy·W's W, dyᵀ·x's
// dy and x) are gathered 4 bytes at a time, a warp's lanes along m or n, which is the
// contiguous direction there, so the reads still coalesce.
//
// ptxas -v (nvcc 13.0, -O3), registers on sm_80 / sm_90 (sm_86 and sm_89 as sm_80), static
// shared memory; no stack frame, spills or local memory anywhere:
//   gemm_tc64_tf32   80 / 80     gemm_tc64_{bf16,fp16}   78 / 80     24 KiB
//   gemm_tc128_tf32 116 / 120    gemm_tc128_{bf16,fp16} 108 / 115    36 KiB
#include "tc_gemm.cuh"

namespace tc_gemm_ops {

// One operand seen as rows of k: element (row, k) at p[row·rs + k·ks]. A is (rs, ks) =
// (a_rs, a_cs) with rows m; B is (b_cs, b_rs) with rows n.
struct Strided {
    const float* p;
    long long rs, ks;
    const float* row_start = nullptr;
    int k = 0, step = 0;
    __device__ const float* base() const { return p; }
    __device__ bool vec_ok() const { return ks == 1 && rs % 4 == 0 && ((unsigned long long)p & 15) == 0; }
    __device__ const float* row_ptr(long long r) const { return p + r * rs; }
    __device__ void set_row(long long r) { row_start = p + r * rs; }
    __device__ void seek(int k0, int k_step) {
        k = k0;
        step = k_step;
    }
    __device__ void advance() { k += step; }
    __device__ const float* ptr() const { return row_start + k * ks; }
};

struct RowMajorC {
    float* c;
    long long cols;
    __device__ void store(int m, long long n, float v) const { c[m * cols + n] = v; }
};

template <class P, class Tile>
__device__ __forceinline__ void gemm(float* C, const float* A, const float* B, int M, int N, int K, long long a_rs,
                                     long long a_cs, long long b_rs, long long b_cs) {
    const Strided a{A, a_rs, a_cs};
    const Strided b{B, b_cs, b_rs};
    const RowMajorC out{C, N};
    tc_gemm<P, Tile>(a, b, out, M, N, 0, K, true);
}

}  // namespace tc_gemm_ops

// C = A·B: grid x over column tiles of C, y over row tiles; 256 threads.
extern "C" __global__ void __launch_bounds__(TC_THREADS)
gemm_tc64_tf32(float* __restrict__ C, const float* __restrict__ A, const float* __restrict__ B, int M, int N, int K,
               long long a_rs, long long a_cs, long long b_rs, long long b_cs) {
    tc_gemm_ops::gemm<TcTf32, TcTile64>(C, A, B, M, N, K, a_rs, a_cs, b_rs, b_cs);
}
extern "C" __global__ void __launch_bounds__(TC_THREADS)
gemm_tc64_bf16(float* __restrict__ C, const float* __restrict__ A, const float* __restrict__ B, int M, int N, int K,
               long long a_rs, long long a_cs, long long b_rs, long long b_cs) {
    tc_gemm_ops::gemm<TcBf16, TcTile64>(C, A, B, M, N, K, a_rs, a_cs, b_rs, b_cs);
}
extern "C" __global__ void __launch_bounds__(TC_THREADS)
gemm_tc64_fp16(float* __restrict__ C, const float* __restrict__ A, const float* __restrict__ B, int M, int N, int K,
               long long a_rs, long long a_cs, long long b_rs, long long b_cs) {
    tc_gemm_ops::gemm<TcFp16, TcTile64>(C, A, B, M, N, K, a_rs, a_cs, b_rs, b_cs);
}
extern "C" __global__ void __launch_bounds__(TC_THREADS, 2)
gemm_tc128_tf32(float* __restrict__ C, const float* __restrict__ A, const float* __restrict__ B, int M, int N, int K,
                long long a_rs, long long a_cs, long long b_rs, long long b_cs) {
    tc_gemm_ops::gemm<TcTf32, TcTile128>(C, A, B, M, N, K, a_rs, a_cs, b_rs, b_cs);
}
extern "C" __global__ void __launch_bounds__(TC_THREADS, 2)
gemm_tc128_bf16(float* __restrict__ C, const float* __restrict__ A, const float* __restrict__ B, int M, int N, int K,
                long long a_rs, long long a_cs, long long b_rs, long long b_cs) {
    tc_gemm_ops::gemm<TcBf16, TcTile128>(C, A, B, M, N, K, a_rs, a_cs, b_rs, b_cs);
}
extern "C" __global__ void __launch_bounds__(TC_THREADS, 2)
gemm_tc128_fp16(float* __restrict__ C, const float* __restrict__ A, const float* __restrict__ B, int M, int N, int K,
                long long a_rs, long long a_cs, long long b_rs, long long b_cs) {
    tc_gemm_ops::gemm<TcFp16, TcTile128>(C, A, B, M, N, K, a_rs, a_cs, b_rs, b_cs);
}
