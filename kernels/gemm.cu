// Single-precision matrix multiply, C = A·B (or C += A·B), for any strides of A and B.
// Reference: src/ops/gemm/reference.rs (the triple loop). Used by the fully
// connected layers (src/ops/linear/mod.rs).
//
// A is M×K with element (i, p) at A[i·a_rs + p·a_cs]; B is K×N with (p, j) at
// B[p·b_rs + j·b_cs]; C is M×N, row-major. Passing the strides of a transposed view is how
// the backward passes multiply by Aᵀ or Bᵀ without copying.
//
// Variants, in reading order (the order of GemmKernel::ALL; `scratchnet kernel gemm
// --variants all` prints them as "v1 gemm_naive_f32" … "v5 gemm_128x128_vec4_f32"):
//   v1 naive    gemm_naive_f32: one thread per output, a dot product from global memory
//   v2 tiled    gemm_tiled_f32: 16×16 tiles of A and B staged in shared memory, each value
//               loaded once per block and used 16 times
//   v3 64×64    gemm_64x64_f32: the register-blocked, double-buffered tile engine
//               (tile_gemm.cuh), 4×4 outputs per thread from float4 shared loads
//   v4 128×128  gemm_128x128_f32: the same engine with a 128×128 tile, 8×8 outputs per thread
//   v5 vec4     gemm_128x128_vec4_f32: v4 with 16-byte global loads (Vec4Loader128), for
//               dense operands whose contiguous dimension is a multiple of 4
// Read common.cuh first; before v3, tile_gemm.cuh.
#include "common.cuh"

// v1. The plain version: one thread per element of C, a 2-D grid of 16×16 blocks (x along the
// columns of C, y along its rows), each thread a dot product of length K read straight from
// global memory. Every element of A is read N times and every element of B M times.
extern "C" __global__ void gemm_naive_f32(float* __restrict__ C, const float* __restrict__ A, const float* __restrict__ B,
                                          int M, int N, int K, long long a_rs, long long a_cs, long long b_rs,
                                          long long b_cs, int accumulate) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    const int i = blockIdx.y * blockDim.y + threadIdx.y;
    if (i >= M || j >= N) return;
    float acc = 0.f;
    for (int p = 0; p < K; ++p) acc += A[i * a_rs + p * a_cs] * B[p * b_rs + j * b_cs];
    const long long c = (long long)i * N + j;
    C[c] = accumulate ? C[c] + acc : acc;
}

#define GEMM_TILE 16

// v2. Shared-memory tiling: each 16×16 block computes a 16×16 tile of C. It walks along K in
// steps of 16; at each step its 256 threads load one 16×16 tile of A and one of B into
// shared memory (one element each, zero outside the matrices), wait at a barrier, and each
// thread adds the 16 products of its row of the A tile and column of the B tile. Every
// element loaded from global memory is used 16 times, so global traffic falls 16-fold
// against the naive kernel. The second barrier keeps a fast thread from overwriting a tile
// that a slow one is still reading.
extern "C" __global__ void __launch_bounds__(GEMM_TILE * GEMM_TILE)
gemm_tiled_f32(float* __restrict__ C, const float* __restrict__ A, const float* __restrict__ B,
               int M, int N, int K, long long a_rs, long long a_cs, long long b_rs, long long b_cs, int accumulate) {
    __shared__ float a_tile[GEMM_TILE][GEMM_TILE];
    __shared__ float b_tile[GEMM_TILE][GEMM_TILE + 1];  // +1: no bank conflicts when read by column
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int i = blockIdx.y * GEMM_TILE + ty;  // row of C this thread computes
    const int j = blockIdx.x * GEMM_TILE + tx;  // column of C
    float acc = 0.f;
    for (int p0 = 0; p0 < K; p0 += GEMM_TILE) {
        const int pa = p0 + tx, pb = p0 + ty;
        a_tile[ty][tx] = (i < M && pa < K) ? A[i * a_rs + pa * a_cs] : 0.f;
        b_tile[ty][tx] = (pb < K && j < N) ? B[pb * b_rs + j * b_cs] : 0.f;
        __syncthreads();
        for (int p = 0; p < GEMM_TILE; ++p) acc += a_tile[ty][p] * b_tile[p][tx];
        __syncthreads();
    }
    if (i < M && j < N) {
        const long long c = (long long)i * N + j;
        C[c] = accumulate ? C[c] + acc : acc;
    }
}

// v3 and v4: the register-blocked, double-buffered tile engines of tile_gemm.cuh, reading A
// and B through their strides. On the 64×64 tile each thread computes a 4×4 block of C from
// 4+4 values per step of K, on the 128×128 tile an 8×8 block from 8+8, against 2 loads per
// multiply-add for the naive kernel.
#include "tile_gemm.cuh"

// (A strided view reaches any row k directly, so its cursor is just k.)
struct StridedA {
    const float* a;
    long long rs, cs;
    int k = 0, step = 0;
    __device__ void seek(int k0, int k_step) {
        k = k0;
        step = k_step;
    }
    __device__ void advance() { k += step; }
    __device__ float load(int m) const { return a[m * rs + k * cs]; }
};

struct StridedB {
    const float* b;
    long long rs, cs, cols;
    long long n = 0;
    bool valid = false;
    int k = 0, step = 0;
    __device__ void set_column(long long col) {
        n = col;
        valid = col < cols;
    }
    __device__ void seek(int k0, int k_step) {
        k = k0;
        step = k_step;
    }
    __device__ void advance() { k += step; }
    __device__ float load() const { return valid ? b[k * rs + n * cs] : 0.f; }
};

struct RowMajorC {
    float* c;
    long long cols;
    int accumulate;
    __device__ void store(int m, long long n, float v) const {
        const long long at = m * cols + n;
        c[at] = accumulate ? c[at] + v : v;
    }
};

// C = A·B (or C += A·B): grid x over 64-column tiles of C, y over 64-row tiles; 256 threads.
extern "C" __global__ void __launch_bounds__(TILE_THREADS)
gemm_64x64_f32(float* __restrict__ C, const float* __restrict__ A, const float* __restrict__ B, int M, int N, int K,
               long long a_rs, long long a_cs, long long b_rs, long long b_cs, int accumulate) {
    const StridedA a{A, a_rs, a_cs};
    StridedB b{B, b_rs, b_cs, N};
    const RowMajorC out{C, N, accumulate};
    tile_gemm<Tile64>(a, b, out, M, N, 0, K);
}

extern "C" __global__ void __launch_bounds__(TILE_THREADS)
gemm_128x128_f32(float* __restrict__ C, const float* __restrict__ A, const float* __restrict__ B, int M, int N, int K,
                 long long a_rs, long long a_cs, long long b_rs, long long b_cs, int accumulate) {
    const StridedA a{A, a_rs, a_cs};
    StridedB b{B, b_rs, b_cs, N};
    const RowMajorC out{C, N, accumulate};
    tile_gemm<Tile128>(a, b, out, M, N, 0, K);
}

// v5. The 128×128 engine with 16-byte global loads, for products whose operands are dense
// matrices (the fully connected layers, square SGEMMs), where the scalar loader's one float
// per load leaves most of each memory transaction's width unused. Each thread fetches one
// float4 of A and one of B per step of K (the 8×128 slices are 256 float4 each), along
// whichever dimension is contiguous in memory:
//
//   A with k contiguous (a_cs = 1, a row-major A):   thread t reads A(m0 + t/2, k0 + 4(t%2) … +3)
//   A with m contiguous (a_rs = 1, a transposed A):  thread t reads A(m0 + 4(t%32) … +3, k0 + t/32)
//   B with n contiguous (b_cs = 1, a row-major B):   thread t reads B(k0 + t/32, n0 + 4(t%32) … +3)
//   B with k contiguous (b_rs = 1, a transposed B):  thread t reads B(k0 + 4(t%2) … +3, n0 + t/2)
//
// The host launches it only where every float4 is 16-byte aligned and lies wholly inside or
// wholly outside its matrix: the contiguous dimension a multiple of 4 (so is the other
// stride, the row length), and buffers from the allocator (256-byte aligned). A float4 along
// m or n is stored to shared memory as one float4; one along k goes down a column of the
// k-major slice as 4 scalar stores, which the rows' padding spreads over 32 banks. The layout
// is a flag rather than a template parameter: the whole block takes the same branch, and one
// instantiation keeps one set of shared buffers (four would not fit in 48 KB).
struct Vec4Loader128 {
    const float* a;
    const float* b;
    long long a_stride, b_stride;  // the stride that is not 1
    bool a_k_contiguous, b_n_contiguous;
    int M;
    long long N;
    int m, k_a, k_b, a_col, b_col;  // this thread's row of A, k offsets, columns in the slices
    long long n;                    // its column of B (the first of 4 when n is contiguous)
    float4 a_next, b_next;

    __device__ Vec4Loader128(const float* a_, const float* b_, long long a_rs, long long a_cs, long long b_rs,
                             long long b_cs, int M_, long long N_)
        : a(a_), b(b_), a_k_contiguous(a_cs == 1), b_n_contiguous(b_cs == 1), M(M_), N(N_) {
        a_stride = a_k_contiguous ? a_rs : a_cs;
        b_stride = b_n_contiguous ? b_rs : b_cs;
        const int tid = threadIdx.x;
        a_col = a_k_contiguous ? tid / 2 : 4 * (tid % 32);
        k_a = a_k_contiguous ? 4 * (tid % 2) : tid / 32;
        b_col = b_n_contiguous ? 4 * (tid % 32) : tid / 2;
        k_b = b_n_contiguous ? tid / 32 : 4 * (tid % 2);
        m = blockIdx.y * Tile128::M + a_col;
        n = (long long)blockIdx.x * Tile128::N + b_col;
    }
    __device__ void fetch(int k0, int k_end) {
        const float4 zero = make_float4(0.f, 0.f, 0.f, 0.f);
        const int ka = k0 + k_a, kb = k0 + k_b;
        if (m < M && ka < k_end) {
            const float* p = a_k_contiguous ? a + m * a_stride + ka : a + m + ka * a_stride;
            a_next = *reinterpret_cast<const float4*>(p);
        } else {
            a_next = zero;
        }
        if (n < N && kb < k_end) {
            const float* p = b_n_contiguous ? b + kb * b_stride + n : b + kb + n * b_stride;
            b_next = *reinterpret_cast<const float4*>(p);
        } else {
            b_next = zero;
        }
    }
    __device__ void stage(Tile128::ARows& a_rows, Tile128::BRows& b_rows) const {
        if (a_k_contiguous) {
            a_rows[k_a + 0][a_col] = a_next.x;
            a_rows[k_a + 1][a_col] = a_next.y;
            a_rows[k_a + 2][a_col] = a_next.z;
            a_rows[k_a + 3][a_col] = a_next.w;
        } else {
            *reinterpret_cast<float4*>(&a_rows[k_a][a_col]) = a_next;
        }
        if (b_n_contiguous) {
            *reinterpret_cast<float4*>(&b_rows[k_b][b_col]) = b_next;
        } else {
            b_rows[k_b + 0][b_col] = b_next.x;
            b_rows[k_b + 1][b_col] = b_next.y;
            b_rows[k_b + 2][b_col] = b_next.z;
            b_rows[k_b + 3][b_col] = b_next.w;
        }
    }
};

// C = A·B (or C += A·B) with 16-byte loads; the same arguments as gemm_128x128_f32.
extern "C" __global__ void __launch_bounds__(TILE_THREADS)
gemm_128x128_vec4_f32(float* __restrict__ C, const float* __restrict__ A, const float* __restrict__ B, int M, int N,
                      int K, long long a_rs, long long a_cs, long long b_rs, long long b_cs, int accumulate) {
    Vec4Loader128 loader(A, B, a_rs, a_cs, b_rs, b_cs, M, N);
    const RowMajorC out{C, N, accumulate};
    tile_gemm_with<Tile128>(loader, out, M, N, 0, K);
}
