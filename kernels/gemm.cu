// Single-precision matrix multiply, C = A·B (or C += A·B), for any strides of A and B.
// CPU reference: src/ops/gemm.rs. Used by the fully connected layers (src/ops/linear.rs).
//
// A is M×K with element (i, p) at A[i·a_rs + p·a_cs]; B is K×N with (p, j) at
// B[p·b_rs + j·b_cs]; C is M×N, row-major. Passing the strides of a transposed view is how
// the backward passes multiply by Aᵀ or Bᵀ without copying.
#include "common.cuh"

// The plain version: one thread per element of C, a 2-D grid of 16×16 blocks (x along the
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

// Shared-memory tiling: each 16×16 block computes a 16×16 tile of C. It walks along K in
// steps of 16; at each step its 256 threads load one 16×16 tile of A and one of B into
// shared memory (one element each, zero outside the matrices), wait at a barrier, and each
// thread adds the 16 products of its row of the A tile and column of the B tile. Every
// element loaded from global memory is now used 16 times, so global traffic falls 16-fold
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

// The fast variant: the 64×64 register-blocked, double-buffered tile engine of
// tile_gemm.cuh, reading A and B through their strides. Each thread computes a 4×4 block of C
// from 4+4 values per step of K, against 2 loads per multiply-add for the naive kernel.
#include "tile_gemm.cuh"

struct StridedA {
    const float* a;
    long long rs, cs;
    __device__ float load(int m, int k) const { return a[m * rs + k * cs]; }
};

struct StridedB {
    const float* b;
    long long rs, cs, cols;
    long long n = 0;
    bool valid = false;
    __device__ void set_column(long long col) {
        n = col;
        valid = col < cols;
    }
    __device__ float load(int k) const { return valid ? b[k * rs + n * cs] : 0.f; }
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
    tile_gemm_64x64(a, b, out, M, N, 0, K);
}

extern "C" __global__ void __launch_bounds__(TILE_THREADS)
gemm_128x128_f32(float* __restrict__ C, const float* __restrict__ A, const float* __restrict__ B, int M, int N, int K,
                 long long a_rs, long long a_cs, long long b_rs, long long b_cs, int accumulate) {
    const StridedA a{A, a_rs, a_cs};
    StridedB b{B, b_rs, b_cs, N};
    const RowMajorC out{C, N, accumulate};
    tile_gemm_128x128(a, b, out, M, N, 0, K);
}
