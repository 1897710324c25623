// The engine under the fast convolution and matrix-product kernels: one block computes a
// 64×64 tile of C = A·B, where A is M×K and B is K×N and neither needs to exist in memory.
// Each kernel passes "operand" objects that say how to fetch A(m, k) and B(k, n) from its
// tensors, and an "epilogue" that says where C(m, n) goes:
//
//   convolution, forward:  A = weights [O/G × C/G·KH·KW], B = the im2col of x (computed on the
//                          fly: "implicit GEMM"), C = y with pixels as columns
//   data gradient:         A = weights transposed, B = dy gathered through the taps, C = dx
//   filter gradient:       A = dy, B = the im2col of x transposed, C = dW
//   matrix product:        A and B strided views, C row-major
//
// How the block works (256 threads, 64×64 tile of C, steps of 8 along K):
//
//   - Register blocking: thread (ty, tx) of a 16×16 grid owns the 4×4 outputs at rows
//     4ty..4ty+3 and columns 4tx..4tx+3, held in 16 registers. Per step of K it reads 4 values
//     of A and 4 of B from shared memory and does 16 fused multiply-adds: 8 shared loads for 16
//     FMAs, where one output per thread would need 2 loads per FMA.
//   - Shared-memory tiling: each step, the block stages an 8×64 slice of A and of B in shared
//     memory (2 values of each per thread), so every value fetched from global memory is used
//     64 times.
//   - Double buffering: the slices live in two buffers. While the threads multiply from one,
//     the global loads for the next step are already in flight into registers, and are
//     written to the other buffer afterwards; one barrier per step suffices, because a buffer
//     is only overwritten one step after everybody has finished reading it.
//   - 16-byte shared loads: the 4 values of A (and of B) a thread needs are contiguous and
//     16-byte aligned, so they come in one 128-bit load (float4).
//   - Bank conflicts: A is stored transposed (k-major) with 4 floats of padding per row, so
//     the 32 stores of a warp land in 32 different banks.
//
// The operands handle the edges: a load outside the matrix returns 0, and the epilogue skips
// outputs outside C, so M, N and K need not be multiples of the tile.
//
// Operands are walked, not indexed: every thread fetches its rows k in order, a fixed step
// apart, so an operand keeps a cursor on the row instead of being handed k. That lets a
// convolution's operand step its (channel, ky, kx) by adding, where taking an arbitrary k
// apart would cost divisions (conv_index.cuh). The interface:
//   A: `void seek(int k, int step)` (the first row, and the distance between rows),
//      `float load(int m)` (A(m, row)), `void advance()` (row += step);
//   B: `void set_column(long long n)` (called once: each thread always loads from the same
//      column), then `seek`, `float load()` (B(row, column)) and `advance` likewise.
// The engine advances the cursors whether or not a row is loaded (rows past k_end are not),
// so a cursor may run a few rows past the end; it must not read there.
#pragma once
#include "common.cuh"

#define TILE_M 64
#define TILE_N 64
#define TILE_K 8
#define TILE_THREADS 256

// The 64×64 tile of C at block (blockIdx.y, blockIdx.x), summed over k in [k_begin, k_end).
// `A` and `B` are operands as above (copied: their cursors move); `out` provides
// `void store(int m, long long n, float v)`.
template <class AOperand, class BOperand, class Epilogue>
__device__ __forceinline__ void tile_gemm_64x64(AOperand A, BOperand B, const Epilogue& out, int M, long long N,
                                                int k_begin, int k_end) {
    __shared__ __align__(16) float a_tile[2][TILE_K][TILE_M + 4];
    __shared__ __align__(16) float b_tile[2][TILE_K][TILE_N];
    const int tid = threadIdx.x;
    const int tx = tid % 16, ty = tid / 16;
    const int m0 = blockIdx.y * TILE_M;
    const long long n0 = (long long)blockIdx.x * TILE_N;

    // The elements this thread fetches at every step: A(m0 + a_m + 32i, k0 + a_k) and
    // B(k0 + b_k + 4i, n0 + b_n), for i = 0, 1. Consecutive threads fetch consecutive k of A
    // (contiguous in a row-major weight tensor) and consecutive columns of B (neighbouring
    // pixels), so the global loads coalesce. So A's rows are TILE_K apart (one per step) and
    // B's are 4 apart (two per step).
    const int a_k = tid % 8, a_m = tid / 8;
    const int b_n = tid % 64, b_k = tid / 64;
    B.set_column(n0 + b_n);
    A.seek(k_begin + a_k, TILE_K);
    B.seek(k_begin + b_k, 4);
    float a_next[2], b_next[2];

    auto fetch = [&](int k0) {
        for (int i = 0; i < 2; ++i) {
            const int m = m0 + a_m + 32 * i, ka = k0 + a_k, kb = k0 + b_k + 4 * i;
            a_next[i] = (m < M && ka < k_end) ? A.load(m) : 0.f;
            b_next[i] = (kb < k_end) ? B.load() : 0.f;
            B.advance();
        }
        A.advance();
    };
    auto stage = [&](int buf) {
        for (int i = 0; i < 2; ++i) {
            a_tile[buf][a_k][a_m + 32 * i] = a_next[i];
            b_tile[buf][b_k + 4 * i][b_n] = b_next[i];
        }
    };

    float acc[4][4];
    for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 4; ++j) acc[i][j] = 0.f;

    fetch(k_begin);
    stage(0);
    __syncthreads();
    int buf = 0;
    for (int k0 = k_begin; k0 < k_end; k0 += TILE_K) {
        const bool more = k0 + TILE_K < k_end;
        if (more) fetch(k0 + TILE_K);  // in flight while this step computes
        for (int kk = 0; kk < TILE_K; ++kk) {
            const float4 a = *reinterpret_cast<const float4*>(&a_tile[buf][kk][ty * 4]);
            const float4 b = *reinterpret_cast<const float4*>(&b_tile[buf][kk][tx * 4]);
            const float av[4] = {a.x, a.y, a.z, a.w};
            const float bv[4] = {b.x, b.y, b.z, b.w};
            for (int i = 0; i < 4; ++i)
                for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
        }
        if (more) stage(buf ^ 1);
        __syncthreads();
        buf ^= 1;
    }

    for (int i = 0; i < 4; ++i) {
        const int m = m0 + ty * 4 + i;
        if (m >= M) continue;
        for (int j = 0; j < 4; ++j) {
            const long long n = n0 + tx * 4 + j;
            if (n < N) out.store(m, n, acc[i][j]);
        }
    }
}

// The same engine with a 128×128 tile and 8×8 outputs per thread, for large products (the
// fully connected layers, square matrices). Per step of K a thread now reads 4 float4 from
// shared memory (two of A, two of B) for 64 FMAs: 16 FMAs per shared load instead of 4, which
// is what lets a GEMM approach the FMA rate rather than the shared-memory bandwidth. The cost
// is 64 accumulators per thread (about 128 registers, so at most two blocks per SM) and tiles
// that waste more work on the edges of small matrices, so the autotuner chooses between the
// two sizes per shape.
//
// Thread (ty, tx) of the 16×16 grid owns rows 4ty..4ty+3 and 64+4ty..64+4ty+3, and the same
// pattern of columns: two float4 per operand per k, each read by a quarter-warp from 16
// consecutive float4 (no bank conflicts), rather than one strip of 8 that would make the
// lanes of a warp collide.
#define TILE2_M 128
#define TILE2_N 128

// One step's slices of the 128×128 engine in shared memory: A transposed (k-major, m along a
// row) and B as it lies (k-major, n along a row). Rows are padded by 4 floats so that stores
// that walk down a column (A's scalar fetch, both operands' k-contiguous float4 fetches) put
// the 32 lanes of a warp in 32 different banks; 132 floats keep every row 16-byte aligned.
typedef float Tile128Rows[TILE_K][TILE2_M + 4];

// The loop of the 128×128 engine, with what it fetches from global memory left to `loader`:
// `fetch(k0, k_end)` issues this thread's loads for the step at k0 into registers (zero
// outside the matrices), and `stage(a_rows, b_rows)` writes them into one buffer's slices.
// Register blocking, double buffering and the epilogue are the same for every loader.
template <class Loader, class Epilogue>
__device__ __forceinline__ void tile_gemm_128x128_with(Loader& loader, const Epilogue& out, int M, long long N,
                                                       int k_begin, int k_end) {
    __shared__ __align__(16) float a_tile[2][TILE_K][TILE2_M + 4];
    __shared__ __align__(16) float b_tile[2][TILE_K][TILE2_N + 4];
    const int tid = threadIdx.x;
    const int tx = tid % 16, ty = tid / 16;
    const int m0 = blockIdx.y * TILE2_M;
    const long long n0 = (long long)blockIdx.x * TILE2_N;

    float acc[8][8];
    SCRATCHNET_UNROLL
    for (int i = 0; i < 8; ++i)
        SCRATCHNET_UNROLL
        for (int j = 0; j < 8; ++j) acc[i][j] = 0.f;

    loader.fetch(k_begin, k_end);
    loader.stage(a_tile[0], b_tile[0]);
    __syncthreads();
    int buf = 0;
    for (int k0 = k_begin; k0 < k_end; k0 += TILE_K) {
        const bool more = k0 + TILE_K < k_end;
        if (more) loader.fetch(k0 + TILE_K, k_end);  // in flight while this step computes
        for (int kk = 0; kk < TILE_K; ++kk) {
            const float4 a0 = *reinterpret_cast<const float4*>(&a_tile[buf][kk][ty * 4]);
            const float4 a1 = *reinterpret_cast<const float4*>(&a_tile[buf][kk][64 + ty * 4]);
            const float4 b0 = *reinterpret_cast<const float4*>(&b_tile[buf][kk][tx * 4]);
            const float4 b1 = *reinterpret_cast<const float4*>(&b_tile[buf][kk][64 + tx * 4]);
            const float av[8] = {a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w};
            const float bv[8] = {b0.x, b0.y, b0.z, b0.w, b1.x, b1.y, b1.z, b1.w};
            for (int i = 0; i < 8; ++i)
                for (int j = 0; j < 8; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
        }
        if (more) loader.stage(a_tile[buf ^ 1], b_tile[buf ^ 1]);
        __syncthreads();
        buf ^= 1;
    }

    // Unrolled: `continue` and a large epilogue (a convolution's store) can otherwise stop
    // the compiler from unrolling, and acc would be indexed at run time, from local memory.
    SCRATCHNET_UNROLL
    for (int i = 0; i < 8; ++i) {
        const int m = m0 + (i < 4 ? ty * 4 + i : 64 + ty * 4 + i - 4);
        if (m >= M) continue;
        SCRATCHNET_UNROLL
        for (int j = 0; j < 8; ++j) {
            const long long n = n0 + (j < 4 ? tx * 4 + j : 64 + tx * 4 + j - 4);
            if (n < N) out.store(m, n, acc[i][j]);
        }
    }
}

// The scalar loader: each thread fetches 4 values of A and 4 of B per step, one float each,
// through the operand objects, so it serves any operand (strided views, im2col gathers).
// Thread t fetches A(m0 + t/8 + 32i, k0 + t%8) and B(k0 + t/128 + 2i, n0 + t%128), i = 0..3:
// A's rows TILE_K apart, B's 2 apart.
// The loader keeps its own copies of the operands (not references to the caller's), so
// that they can live in registers: a referenced operand must have an address, which puts it
// in local memory.
template <class AOperand, class BOperand>
struct ScalarLoader128 {
    AOperand A;
    BOperand B;
    int M, m0, a_k, a_m, b_n, b_k;
    float a_next[4], b_next[4];
    // (fetch must then be called for k_begin, k_begin + TILE_K, … in order: the cursors
    // move by one step per call.)
    __device__ ScalarLoader128(const AOperand& a, const BOperand& b, int M_, int k_begin) : A(a), B(b), M(M_) {
        const int tid = threadIdx.x;
        m0 = blockIdx.y * TILE2_M;
        a_k = tid % 8;
        a_m = tid / 8;
        b_n = tid % 128;
        b_k = tid / 128;
        B.set_column((long long)blockIdx.x * TILE2_N + b_n);
        A.seek(k_begin + a_k, TILE_K);
        B.seek(k_begin + b_k, 2);
    }
    __device__ void fetch(int k0, int k_end) {
        for (int i = 0; i < 4; ++i) {
            const int m = m0 + a_m + 32 * i, ka = k0 + a_k, kb = k0 + b_k + 2 * i;
            a_next[i] = (m < M && ka < k_end) ? A.load(m) : 0.f;
            b_next[i] = (kb < k_end) ? B.load() : 0.f;
            B.advance();
        }
        A.advance();
    }
    __device__ void stage(Tile128Rows& a_rows, Tile128Rows& b_rows) const {
        for (int i = 0; i < 4; ++i) {
            a_rows[a_k][a_m + 32 * i] = a_next[i];
            b_rows[b_k + 2 * i][b_n] = b_next[i];
        }
    }
};

template <class AOperand, class BOperand, class Epilogue>
__device__ __forceinline__ void tile_gemm_128x128(const AOperand& A, const BOperand& B, const Epilogue& out, int M,
                                                  long long N, int k_begin, int k_end) {
    ScalarLoader128<AOperand, BOperand> loader(A, B, M, k_begin);
    tile_gemm_128x128_with(loader, out, M, N, k_begin, k_end);
}
