// The engine under the fast convolution and matrix-product kernels: one block of 256 threads
// computes a tile of C = A·B, where A is M×K and B is K×N and neither needs to exist in
// memory. Each kernel passes "operand" objects that say how to fetch A(m, k) and B(k, n) from
// its tensors, and an "epilogue" that says where C(m, n) goes:
//
//   convolution, forward:  A = weights [O/G × C/G·KH·KW], B = the im2col of x (computed on the
//                          fly: "implicit GEMM"), C = y with pixels as columns
//   data gradient:         A = weights transposed, B = dy gathered through the taps, C = dx
//   filter gradient:       A = dy, B = the im2col of x transposed, C = dW
//   matrix product:        A and B strided views, C row-major
//
// Reading order: this comment; TileShape (the constants of the two engines); tile_gemm_loop,
// the one main loop (its own scalar loader, the double-buffered pipeline, the register-blocked
// product, the epilogue); ScalarLoader (the same scalar loader as an object); tile_gemm, the
// entry point the kernels call. gemm.cu's Vec4Loader128 is a third loader for the same loop.
//
// There are two engines, and they differ only in their constants and their loaders: a 64×64
// tile with 4×4 outputs per thread (Tile64) and a 128×128 tile with 8×8 outputs per thread
// (Tile128). How the block works, the same for both (256 threads, steps of 8 along K):
//
//   - Register blocking: thread (ty, tx) of a 16×16 grid owns 4×4 outputs per "strip", at rows
//     64s + 4ty..4ty+3 and columns 64s' + 4tx..4tx+3 for each strip s, s' (one strip per side
//     in the 64×64 tile, two in the 128×128 one: 16 or 64 accumulators in registers). Per step
//     of K it reads 4 values of A and 4 of B per strip from shared memory and does all their
//     products as FMAs: 8 values (2 float4 loads) for 16 FMAs in the 64×64 tile, 16 values
//     (4 float4 loads) for 64 FMAs in the 128×128 one, where one output per thread would
//     need 2 values per FMA. The larger tile is
//     what lets a GEMM approach the FMA rate rather than the shared-memory bandwidth; its cost
//     is 64 accumulators per thread (about 128 registers, so at most two blocks per SM) and
//     more work wasted on the edges of small matrices, so the autotuner chooses per shape.
//   - Strips 64 apart, not 8 adjacent rows: the 4 values of a strip are one float4, and the
//     16 lanes of a quarter-warp read 16 consecutive float4 (no bank conflicts); a strip of 8
//     adjacent values per thread would make the lanes of a warp collide.
//   - Shared-memory tiling: each step, the block stages an 8×TILE slice of A and of B in
//     shared memory, so every value fetched from global memory is used TILE times (64 or 128).
//   - Double buffering: the slices live in two buffers. While the threads multiply from one,
//     the global loads for the next step are already in flight into registers (the loader's
//     fetch), and are written to the other buffer afterwards (its stage); one barrier per step
//     suffices, because a buffer is only overwritten one step after everybody has finished
//     reading it.
//   - 16-byte shared loads: the 4 values of a strip of A (and of B) are contiguous and 16-byte
//     aligned, so they come in one 128-bit load (float4).
//   - Bank conflicts: A is stored transposed (k-major) with 4 floats of padding per row, so
//     that stores walking down a column put the 32 lanes of a warp in 32 different banks. B's
//     rows are padded in the 128×128 tile only: its scalar loader stores along a row, but
//     gemm.cu's 16-byte loader stores a transposed B down a column (the 64×64 tile has no such
//     loader, and its B rows keep 64 floats, 8,448 bytes of shared memory in all).
//
// The loaders handle the edges: a load outside the matrix returns 0, and the epilogue skips
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
// The loader advances the cursors whether or not a row is loaded (rows past k_end are not),
// so a cursor may run a few rows past the end; it must not read there.
#pragma once
#include <type_traits>
#include <utility>

#include "common.cuh"

#define TILE_K 8
#define TILE_THREADS 256

// The constants of one engine: a TILE×TILE tile of C; STRIPS strips of 4 outputs per thread
// along each side, 64 apart; B's shared rows padded by B_PAD floats (A's always by 4).
template <int TILE, int B_PAD>
struct TileShape {
    static constexpr int M = TILE, N = TILE;
    static constexpr int STRIPS = TILE / 64;
    static constexpr int OUT = 4 * STRIPS;  // outputs per thread along each side
    // One step's slice of A in shared memory, transposed (k-major, m along a row), and of B
    // as it lies (k-major, n along a row). Rows of TILE + 4 floats stay 16-byte aligned.
    typedef float ARows[TILE_K][TILE + 4];
    typedef float BRows[TILE_K][TILE + B_PAD];
};
typedef TileShape<64, 0> Tile64;
typedef TileShape<128, 4> Tile128;

// The strips of one row (one k) of a shared slice that thread coordinate t reads: the float4
// at row[64s + 4t] into q[s], for each strip s; then spread_strips copies them into 4·S
// scalars. Written as fold expressions over s, not as loops: nvcc turns a loop here, unrolled,
// into the same arithmetic in another instruction order and register assignment, and this
// form gives both engines the SASS that the figures in docs/perf.md were measured with.
template <int... s>
__device__ __forceinline__ void load_strips(float4* q, const float* row, int t, std::integer_sequence<int, s...>) {
    ((q[s] = *reinterpret_cast<const float4*>(&row[64 * s + t * 4])), ...);
}
template <int... s>
__device__ __forceinline__ void spread_strips(float* v, const float4* q, std::integer_sequence<int, s...>) {
    ((v[4 * s] = q[s].x, v[4 * s + 1] = q[s].y, v[4 * s + 2] = q[s].z, v[4 * s + 3] = q[s].w), ...);
}

// What tile_gemm_loop is given in place of a loader when it uses its own (below), and in
// place of the operands when it is given a loader.
struct OwnLoader {};
struct NoOperand {};

// The main loop of both engines: the tile of C at block (blockIdx.y, blockIdx.x), summed over
// k in [k_begin, k_end). `out` provides `void store(int m, long long n, float v)`. Every
// output is one chain of fmaf over k in order, whatever the tile and the loader.
//
// What each thread fetches from global memory per step is a loader's business:
// `fetch(k0, k_end)` issues this thread's loads for the step at k0 into registers (zero
// outside the matrices), and `stage(a_rows, b_rows)` writes them into one buffer's slices.
// With `loader` null (type OwnLoader*), the loop uses its own scalar loader on the operands
// A and B: each thread fetches PER values of A and PER of B per step (2 + 2 on the 64×64
// tile, 4 + 4 on the 128×128 one), one float each, through the operand objects, so it serves
// any operand (strided views, im2col gathers). Thread t fetches A(m0 + t/8 + 32i, k0 + t%8)
// and B(k0 + t/N + (256/N)·i, n0 + t%N), i < PER: consecutive threads fetch consecutive k of
// A (contiguous in a row-major weight tensor) and consecutive columns of B (neighbouring
// pixels), so the global loads coalesce. A's rows are TILE_K apart (one per step), B's 256/N
// apart (4 on the 64×64 tile, 2 on the 128×128 one). Otherwise `loader` is an object with
// fetch and stage (A and B are then NoOperand): ScalarLoader below, gemm.cu's Vec4Loader128.
template <class Shape, class AOperand, class BOperand, class Loader, class Epilogue>
__device__ __forceinline__ void tile_gemm_loop(AOperand A, BOperand B, Loader* loader, const Epilogue& out, int M,
                                               long long N, int k_begin, int k_end) {
    __shared__ __align__(16) typename Shape::ARows a_tile[2];
    __shared__ __align__(16) typename Shape::BRows b_tile[2];
    const int tid = threadIdx.x;
    const int tx = tid % 16, ty = tid / 16;
    const int m0 = blockIdx.y * Shape::M;
    const long long n0 = (long long)blockIdx.x * Shape::N;
    constexpr int S = Shape::STRIPS, R = Shape::OUT;
    const std::make_integer_sequence<int, S> strips{};

    // The loop's own loader, written here rather than as an object (see ScalarLoader); with a
    // loader object, the lines under `own` drop out and the rest is unused.
    constexpr bool own = std::is_same<Loader, OwnLoader>::value;
    constexpr int PER = TILE_K * Shape::M / TILE_THREADS;
    constexpr int B_K_STEP = TILE_THREADS / Shape::N;
    static_assert(Shape::M == Shape::N, "one loop fetches A and B: square tiles");
    const int a_k = tid % 8, a_m = tid / 8;
    const int b_n = tid % Shape::N, b_k = tid / Shape::N;
    if constexpr (own) {
        B.set_column(n0 + b_n);
        A.seek(k_begin + a_k, TILE_K);
        B.seek(k_begin + b_k, B_K_STEP);
    }
    float a_next[PER], b_next[PER];

    auto fetch = [&](int k0, int k_end) {
        if constexpr (own) {
            for (int i = 0; i < PER; ++i) {
                const int m = m0 + a_m + 32 * i, ka = k0 + a_k, kb = k0 + b_k + B_K_STEP * i;
                a_next[i] = (m < M && ka < k_end) ? A.load(m) : 0.f;
                b_next[i] = (kb < k_end) ? B.load() : 0.f;
                B.advance();
            }
            A.advance();
        } else {
            loader->fetch(k0, k_end);
        }
    };
    auto stage = [&](typename Shape::ARows& a_rows, typename Shape::BRows& b_rows) {
        if constexpr (own) {
            for (int i = 0; i < PER; ++i) {
                a_rows[a_k][a_m + 32 * i] = a_next[i];
                b_rows[b_k + B_K_STEP * i][b_n] = b_next[i];
            }
        } else {
            loader->stage(a_rows, b_rows);
        }
    };

    float acc[R][R];
    SCRATCHNET_UNROLL
    for (int i = 0; i < R; ++i)
        SCRATCHNET_UNROLL
        for (int j = 0; j < R; ++j) acc[i][j] = 0.f;

    fetch(k_begin, k_end);
    stage(a_tile[0], b_tile[0]);
    __syncthreads();
    int buf = 0;
    for (int k0 = k_begin; k0 < k_end; k0 += TILE_K) {
        const bool more = k0 + TILE_K < k_end;
        if (more) fetch(k0 + TILE_K, k_end);  // in flight while this step computes
        for (int kk = 0; kk < TILE_K; ++kk) {
            float4 a4[S], b4[S];
            load_strips(a4, a_tile[buf][kk], ty, strips);
            load_strips(b4, b_tile[buf][kk], tx, strips);
            float av[R], bv[R];
            spread_strips(av, a4, strips);
            spread_strips(bv, b4, strips);
            for (int i = 0; i < R; ++i)
                for (int j = 0; j < R; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
        }
        if (more) stage(a_tile[buf ^ 1], b_tile[buf ^ 1]);
        __syncthreads();
        buf ^= 1;
    }

    // Unrolled: `continue` and a large epilogue (a convolution's store) can otherwise stop
    // the compiler from unrolling, and acc would be indexed at run time, from local memory.
    // Output i of a side is value i%4 of strip i/4. (The 64×64 tile has one strip and keeps
    // the index it always had, ty·4 + i; the two forms give the same rows, but not the same
    // SASS.)
    SCRATCHNET_UNROLL
    for (int i = 0; i < R; ++i) {
        const int m = S == 1 ? m0 + ty * 4 + i : m0 + (i < 4 ? ty * 4 + i : 64 + ty * 4 + i - 4);
        if (m >= M) continue;
        SCRATCHNET_UNROLL
        for (int j = 0; j < R; ++j) {
            const long long n = S == 1 ? n0 + tx * 4 + j : n0 + (j < 4 ? tx * 4 + j : 64 + tx * 4 + j - 4);
            if (n < N) out.store(m, n, acc[i][j]);
        }
    }
}

// The loop's own scalar loader as an object: the same fetches, from the same threads, in the
// same order, so the same values in the same registers of the same FMAs. Why two forms of one
// loader: nvcc 13.0 compiles them to different machine code, and each engine uses the form
// whose SASS docs/perf.md measured, the 128×128 engine this one, the 64×64 engine the loop's
// own. (Swapped, sm_80/sm_90: the 64×64 convolutions get up to 16 more registers or up to 16
// bytes of spills; the 128×128 ones up to 7 fewer registers and sm_80's filter gradient
// loses its 8-byte spill, while the 128×128 SGEMM gets 2 more; unmeasured on a GPU.) The
// loader keeps its own copies of the operands (not references to the caller's), so that they
// can live in registers: a referenced operand must have an address, which puts it in local
// memory.
template <class Shape, class AOperand, class BOperand>
struct ScalarLoader {
    static constexpr int PER = TILE_K * Shape::M / TILE_THREADS;
    static constexpr int B_K_STEP = TILE_THREADS / Shape::N;
    AOperand A;
    BOperand B;
    int M, m0, a_k, a_m, b_n, b_k;
    float a_next[PER], b_next[PER];
    // (fetch must then be called for k_begin, k_begin + TILE_K, … in order: the cursors
    // move by one step per call.)
    __device__ ScalarLoader(const AOperand& a, const BOperand& b, int M_, int k_begin) : A(a), B(b), M(M_) {
        const int tid = threadIdx.x;
        m0 = blockIdx.y * Shape::M;
        a_k = tid % 8;
        a_m = tid / 8;
        b_n = tid % Shape::N;
        b_k = tid / Shape::N;
        B.set_column((long long)blockIdx.x * Shape::N + b_n);
        A.seek(k_begin + a_k, TILE_K);
        B.seek(k_begin + b_k, B_K_STEP);
    }
    __device__ void fetch(int k0, int k_end) {
        for (int i = 0; i < PER; ++i) {
            const int m = m0 + a_m + 32 * i, ka = k0 + a_k, kb = k0 + b_k + B_K_STEP * i;
            a_next[i] = (m < M && ka < k_end) ? A.load(m) : 0.f;
            b_next[i] = (kb < k_end) ? B.load() : 0.f;
            B.advance();
        }
        A.advance();
    }
    __device__ void stage(typename Shape::ARows& a_rows, typename Shape::BRows& b_rows) const {
        for (int i = 0; i < PER; ++i) {
            a_rows[a_k][a_m + 32 * i] = a_next[i];
            b_rows[b_k + B_K_STEP * i][b_n] = b_next[i];
        }
    }
};

// The main loop with a loader object (ScalarLoader, gemm.cu's Vec4Loader128).
template <class Shape, class Loader, class Epilogue>
__device__ __forceinline__ void tile_gemm_with(Loader& loader, const Epilogue& out, int M, long long N, int k_begin,
                                               int k_end) {
    tile_gemm_loop<Shape>(NoOperand{}, NoOperand{}, &loader, out, M, N, k_begin, k_end);
}

// The tile of C at block (blockIdx.y, blockIdx.x) on the engine `Shape` (Tile64 or Tile128),
// summed over k in [k_begin, k_end), from operands as described at the top; `out` provides
// `void store(int m, long long n, float v)`. Launch with TILE_THREADS threads and a grid of
// ⌈N/Shape::N⌉ × ⌈M/Shape::M⌉ blocks.
template <class Shape, class AOperand, class BOperand, class Epilogue>
__device__ __forceinline__ void tile_gemm(const AOperand& A, const BOperand& B, const Epilogue& out, int M, long long N,
                                          int k_begin, int k_end) {
    if constexpr (Shape::STRIPS == 1) {
        tile_gemm_loop<Shape>(A, B, (OwnLoader*)nullptr, out, M, N, k_begin, k_end);
    } else {
        ScalarLoader<Shape, AOperand, BOperand> loader(A, B, M, k_begin);
        tile_gemm_with<Shape>(loader, out, M, N, k_begin, k_end);
    }
}
