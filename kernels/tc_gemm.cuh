// The tensor-core tile engine: one block of 256 threads (8 warps) computes a tile of
// C = A·B on mma.sync (kernels/mma.cuh), in TF32 (m16n8k8) or BF16/FP16 (m16n8k16) with
// FP32 accumulators. It is tile_gemm.cuh's engine with the FMAs replaced by warp-wide matrix
// instructions; the kernels of conv2d_tc.cu and gemm_tc.cu pass it operand objects (how to
// find A(m, k) and B(k, n) in their tensors) and an epilogue (where C(m, n) goes).
//
// Reading order: this comment; tc_word (the shared-memory layout); the precisions TcTf32 and
// Tc16 (how a fragment is built and rounded); TcStager (the cp.async loads of one operand);
// tc_gemm (the pipeline, the warp tiles, the epilogue). docs/kernels.md (the section "tc_gemm.cuh,
// conv2d_tc.cu, gemm_tc.cu") walks one kernel through the same steps.
//
// The tiling, for a block tile of BM×BN (two configurations: TcTile128, 128×64, and
// TcTile64, 64×64):
//
//   block tile   BM×BN of C, summed over k in slices of TC_BK = 16.
//   warp tile    the 8 warps stand in a WARPS_M × WARPS_N grid: warp w computes rows
//                (w / WARPS_N)·WM … +WM−1 and columns (w % WARPS_N)·WN … +WN−1 of the block
//                tile. 128×64: 4×2 warps of 32×32; 64×64: 2×4 warps of 32×16.
//   mma tiles    a warp tile is MI×NI mma tiles of 16×8 (MI = WM/16, NI = WN/8: 2×4 or 2×2);
//                per k-step (8 for TF32, 16 for 16-bit) the warp builds MI A fragments and NI
//                B fragments from shared memory and issues MI·NI mma.sync, each A fragment
//                used NI times and each B fragment MI times.
//   accumulators MI·NI·4 floats per thread (32 or 16), in registers for the whole K loop.
// (A 128×128 tile, 64 accumulators per thread, sits at the 128 registers that two blocks per
// SM allow, and ptxas spilled a few bytes in some of its kernels on sm_80 or sm_90; 128×64
// has headroom: 108–128 registers, no spills.)
//
// Shared memory holds FP32, as the tensors are: cp.async copies bytes and cannot convert, so
// the rounding to the precision (to_tf32, pack_bf16, pack_f16) happens when a fragment is
// built from shared memory. That is also why ldmatrix is not used: it moves 16-bit elements,
// and our tiles hold 32-bit ones. Both operands are stored "k-contiguous": A as BM rows of
// 16 k, B as BN rows (one per column n of C) of 16 k, which is the row.col layout mma.sync
// reads (A row-major, B column-major), so a thread's fragment elements of one row are
// neighbours.
//
// The pipeline: TC_STAGES = 3 buffers of (A slice, B slice). While the warps multiply slice t,
// the copies of slices t+1 and t+2 are in flight (cp.async groups, one per slice): the loads
// from global memory never stall the math unless memory falls two slices behind. One
// __syncthreads per slice.
//
// Edges: a copy outside the matrix (row ≥ M or N, k ≥ k_end, or a convolution's padding) is
// a zero-fill copy, so M, N and K need not be multiples of anything; the epilogue skips the
// outputs outside C. Every lane of every warp takes part in every mma (mma.sync is
// collective): a warp whose rows lie past M multiplies zeros and stores nothing.
#pragma once

#include "mma.cuh"

#define TC_THREADS 256
#define TC_BK 16
#define TC_STAGES 3

// ---- Shared-memory layout ---------------------------------------------------------------
// A slice of one operand is ROWS rows of TC_BK = 16 floats (64 bytes, four 16-byte chunks),
// no padding. The word of (row, k) XORs the chunk index k/4 with a function of the row:
//
//   word(row, k) = 16·row + 4·((k/4) ^ s(row)) + k%4,   s(row) = 2·(row/2 % 2) + row/4 % 2
//
// Why: in a fragment load, lane (g, t) = (lane/4, lane%4) reads row r+g (r a multiple of 8)
// at column k0+t (TF32) or k0+2t (16-bit): eight rows at once. Rows 16 floats apart fall in
// two bank halves (even rows in banks 0–15, odd rows in 16–31), so without the swizzle rows
// r, r+2, r+4, r+6 would hit the same four banks: 4-way conflicts. s gives those four rows the chunk permutations 0, 2, 1, 3, so
//   - a TF32 fragment (32 lanes, one float each: rows r+g, columns k0+t, t < 4) touches
//     banks 16·(g%2) + 4·(chunk ^ s(g)) + t: 32 different banks;
//   - a 16-bit fragment (one float2 per lane, columns k0+2t, k0+2t+1: served per half-warp)
//     touches, in each half-warp, rows g and g+2 (same bank half) in chunk pairs {c, c+1}
//     and {c^2, (c+1)^2}: disjoint, so 16 lanes × 8 bytes in 32 different banks.
// Padding rows to 20 floats would fix the TF32 case but not the float2 one (that needs 24
// floats, 50% more memory); the swizzle costs none: three stages of the 128×64 tile take
// 3 × (128 + 64) × 16 × 4 = 36 KiB, of the 64×64 tile 24 KiB, within the 48 KiB of static
// shared memory a block may have.
// A 16-byte cp.async writes one whole chunk, so the swizzle never splits a copy.
__device__ __forceinline__ int tc_word(int row, int k) {
    const int s = ((row >> 1) & 1) << 1 | ((row >> 2) & 1);
    return row * TC_BK + ((((k >> 2) ^ s)) << 2) + (k & 3);
}

// ---- Precisions ---------------------------------------------------------------------------
// Each builds the fragments of mma.cuh's layouts (g = lane/4, t = lane%4) from a slice: the
// A fragment of the 16 rows at `r` and the B fragment of the 8 columns at `c`, for the
// k-step at `k` within the slice; and rounds a finished output (code: the order of
// Precision::ALL in src/ops/precision.rs).

struct TcTf32 {
    static constexpr int K = 8;  // k per mma
    static constexpr int CODE = 1;
    __device__ static void load_a(unsigned a[4], const float* tile, int r, int k) {
        const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
        a[0] = to_tf32(tile[tc_word(r + g, k + t)]);
        a[1] = to_tf32(tile[tc_word(r + g + 8, k + t)]);
        a[2] = to_tf32(tile[tc_word(r + g, k + t + 4)]);
        a[3] = to_tf32(tile[tc_word(r + g + 8, k + t + 4)]);
    }
    __device__ static void load_b(unsigned b[2], const float* tile, int c, int k) {
        const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
        b[0] = to_tf32(tile[tc_word(c + g, k + t)]);
        b[1] = to_tf32(tile[tc_word(c + g, k + t + 4)]);
    }
    __device__ static void mma(float c[4], const unsigned a[4], const unsigned b[2]) { mma_tf32_m16n8k8(c, a, b); }
};

// BF16 (BF = true) or FP16: two neighbouring k of one row are one float2 in shared memory
// (k even: both in one chunk) and one register of two halves in the fragment.
template <bool BF>
struct Tc16 {
    static constexpr int K = 16;
    static constexpr int CODE = BF ? 2 : 3;
    __device__ static unsigned pair(const float* tile, int row, int k) {
        const float2 v = *reinterpret_cast<const float2*>(&tile[tc_word(row, k)]);
        return BF ? pack_bf16(v.x, v.y) : pack_f16(v.x, v.y);
    }
    __device__ static void load_a(unsigned a[4], const float* tile, int r, int k) {
        const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
        a[0] = pair(tile, r + g, k + 2 * t);
        a[1] = pair(tile, r + g + 8, k + 2 * t);
        a[2] = pair(tile, r + g, k + 2 * t + 8);
        a[3] = pair(tile, r + g + 8, k + 2 * t + 8);
    }
    __device__ static void load_b(unsigned b[2], const float* tile, int c, int k) {
        const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
        b[0] = pair(tile, c + g, k + 2 * t);
        b[1] = pair(tile, c + g, k + 2 * t + 8);
    }
    __device__ static void mma(float c[4], const unsigned a[4], const unsigned b[2]) {
        if constexpr (BF) {
            mma_bf16_m16n8k16(c, a, b);
        } else {
            mma_f16_m16n8k16(c, a, b);
        }
    }
};
typedef Tc16<true> TcBf16;
typedef Tc16<false> TcFp16;

// v rounded as an output of `precision` (1 TF32, 2 BF16, 3 FP16): the 16-bit types round
// to nearest even, TF32 outputs stay FP32 (src/ops/precision.rs).
__device__ __forceinline__ float tc_round_output(float v, int precision) {
    if (precision == 2) return __uint_as_float(pack_bf16(v, 0.f) << 16);
    if (precision == 3) return __half2float(__ushort_as_half((unsigned short)(pack_f16(v, 0.f) & 0xffffu)));
    return v;
}

// ---- Tile configurations ------------------------------------------------------------------
// A BM×BN block tile, its 8 warps in a WARPS_M × (8 / WARPS_M) grid.
template <int BM_, int BN_, int WARPS_M>
struct TcTile {
    static constexpr int BM = BM_, BN = BN_;
    static constexpr int WM = BM / WARPS_M, WN = BN / (8 / WARPS_M);  // the warp tile
    static constexpr int MI = WM / 16, NI = WN / 8;                    // mma tiles per warp tile
};
typedef TcTile<128, 64, 4> TcTile128;  // warp tiles 32×32: 2×4 mmas, 32 accumulators
typedef TcTile<64, 64, 2> TcTile64;    // warp tiles 32×16: 2×2 mmas, 16 accumulators

// ---- Loading one operand ------------------------------------------------------------------
// An operand is seen as ROWS-row slices of 16 k (A: rows m, B: rows n). Its object provides
//   `const float* base()`         any valid address (the source of zero-fill copies);
//   `bool vec_ok()`               whether k is contiguous in memory with every row 16-byte
//                                 aligned (the same answer for every thread), and then
//   `const float* row_ptr(r)`     the address of element (r, 0);
//   otherwise the walk of tile_gemm.cuh: `set_row(r)` once (each thread stays on one row),
//   `seek(k, step)`, `advance()` (k += step) and `const float* ptr()`, the address of
//   element (row, k), or null where it is a convolution's padding (a zero).
//
// Two ways to copy a slice, chosen once per launch by vec_ok:
//   - 16-byte: thread t copies chunk t%4 (4 consecutive k) of row t/4 (+64, … for 128
//     rows) with one cp_async_16; a chunk that straddles k_end falls back to 4-byte copies.
//   - 4-byte gather (im2col, transposed operands): thread t stays on row t % ROWS and copies
//     k = t / ROWS + K_STEP·j, j < PER, one cp_async_4 each, so a warp's 32 lanes read 32
//     neighbouring rows at one k (neighbouring pixels, coalesced) and every thread's k
//     advances by the same step, which the conv operands walk by adding (conv_index.cuh).
//     Its shared-memory stores cost 4-way bank conflicts (32 rows at one k land in 8
//     banks); the fragment loads, which run MI or NI times as often, have none.
template <int ROWS, class Op>
struct TcStager {
    static constexpr int K_STEP = TC_THREADS / ROWS;   // 2 (128 rows) or 4 (64 rows)
    static constexpr int PER = TC_BK / K_STEP;          // 4-byte copies per thread per slice
    static constexpr int CHUNKS = ROWS * TC_BK / 4 / TC_THREADS;  // 16-byte copies per thread
    Op op;
    long long rows, first;  // the operand's rows, and this block's first
    bool vec, row_ok;
    int row, k_off;  // the gather's row and first k in the slice

    __device__ TcStager(const Op& o, long long rows_, long long first_, int k_begin)
        : op(o), rows(rows_), first(first_) {
        vec = op.vec_ok();
        row = threadIdx.x % ROWS;
        k_off = threadIdx.x / ROWS;
        row_ok = first + row < rows;
        if (!vec) {
            if (row_ok) op.set_row(first + row);
            op.seek(k_begin + k_off, K_STEP);
        }
    }

    // Issues this thread's copies of the slice k0 … k0+15 into `tile` (slices in order).
    __device__ void stage(float* tile, int k0, int k_end) {
        if (vec) {
            SCRATCHNET_UNROLL
            for (int i = 0; i < CHUNKS; ++i) {
                const int chunk = threadIdx.x + TC_THREADS * i, r = chunk / 4, kc = 4 * (chunk % 4);
                const long long rr = first + r;
                const int k = k0 + kc;
                float* dst = tile + tc_word(r, kc);
                const bool ok = rr < rows;
                const float* src = ok ? op.row_ptr(rr) + k : op.base();
                if (!ok || k + 4 <= k_end) {
                    cp_async_16(dst, src, ok && k < k_end);
                } else {
                    for (int e = 0; e < 4; ++e) {
                        const bool v = k + e < k_end;
                        cp_async_4(dst + e, v ? src + e : op.base(), v);
                    }
                }
            }
        } else {
            SCRATCHNET_UNROLL
            for (int j = 0; j < PER; ++j) {
                const int kk = k_off + K_STEP * j;
                const float* p = row_ok && k0 + kk < k_end ? op.ptr() : nullptr;
                cp_async_4(tile + tc_word(row, kk), p ? p : op.base(), p != nullptr);
                op.advance();
            }
        }
    }
};

// ---- The engine ---------------------------------------------------------------------------
// The tile of C at block (blockIdx.y, blockIdx.x) of configuration Tile in precision P,
// summed over k in [k_begin, k_end) (k_begin a multiple of 4); `out` provides
// `void store(int m, long long n, float v)`. With `round_output`, a 16-bit precision rounds
// each output to its type first (a filter gradient split along k rounds after summing its
// slices instead). Launch with TC_THREADS threads and ⌈N/BN⌉ × ⌈M/BM⌉ blocks.
template <class P, class Tile, class AOp, class BOp, class Epilogue>
__device__ __forceinline__ void tc_gemm(const AOp& A, const BOp& B, const Epilogue& out, int M, long long N,
                                        int k_begin, int k_end, bool round_output) {
    constexpr int BM = Tile::BM, BN = Tile::BN, MI = Tile::MI, NI = Tile::NI;
    __shared__ __align__(16) float a_tiles[TC_STAGES][BM * TC_BK];
    __shared__ __align__(16) float b_tiles[TC_STAGES][BN * TC_BK];

    const int m0 = blockIdx.y * BM;
    const long long n0 = (long long)blockIdx.x * BN;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int wm = (warp / (BN / Tile::WN)) * Tile::WM, wn = (warp % (BN / Tile::WN)) * Tile::WN;  // the warp tile in the block tile

    TcStager<BM, AOp> sa(A, M, m0, k_begin);
    TcStager<BN, BOp> sb(B, N, n0, k_begin);

    float acc[MI][NI][4];
    SCRATCHNET_UNROLL
    for (int i = 0; i < MI; ++i)
        SCRATCHNET_UNROLL
        for (int j = 0; j < NI; ++j)
            SCRATCHNET_UNROLL
            for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.f;

    // Prologue: slices 0 and 1 in flight, one cp.async group each (a group may be empty).
    const int slices = k_end > k_begin ? (k_end - k_begin + TC_BK - 1) / TC_BK : 0;
    SCRATCHNET_UNROLL
    for (int s = 0; s < TC_STAGES - 1; ++s) {
        if (s < slices) {
            sa.stage(a_tiles[s], k_begin + s * TC_BK, k_end);
            sb.stage(b_tiles[s], k_begin + s * TC_BK, k_end);
        }
        cp_async_commit();
    }

    for (int t = 0; t < slices; ++t) {
        // Slice t has landed (at most one younger group, slice t+1's, still in flight), and
        // the barrier makes every thread's copies visible and tells everyone that slice t−1
        // is no longer being read: its buffer, (t+2) % 3, can be refilled.
        cp_async_wait<TC_STAGES - 2>();
        __syncthreads();
        const int next = t + TC_STAGES - 1;
        if (next < slices) {
            sa.stage(a_tiles[next % TC_STAGES], k_begin + next * TC_BK, k_end);
            sb.stage(b_tiles[next % TC_STAGES], k_begin + next * TC_BK, k_end);
        }
        cp_async_commit();

        const float* a_tile = a_tiles[t % TC_STAGES];
        const float* b_tile = b_tiles[t % TC_STAGES];
        SCRATCHNET_UNROLL
        for (int kk = 0; kk < TC_BK; kk += P::K) {
            // The MI A fragments stay in registers while the B fragments come one at a time
            // (each used by MI mmas): 4·MI + 2 fragment registers instead of 4·MI + 2·NI, which
            // keeps the 128×128 tile within 128 registers.
            unsigned af[MI][4];
            SCRATCHNET_UNROLL
            for (int i = 0; i < MI; ++i) P::load_a(af[i], a_tile, wm + 16 * i, kk);
            SCRATCHNET_UNROLL
            for (int j = 0; j < NI; ++j) {
                unsigned bf[2];
                P::load_b(bf, b_tile, wn + 8 * j, kk);
                SCRATCHNET_UNROLL
                for (int i = 0; i < MI; ++i) P::mma(acc[i][j], af[i], bf);
            }
        }
    }
    cp_async_wait<0>();  // nothing may be in flight when the block exits (only empty groups are)

    // Epilogue: accumulator e of mma tile (i, j) is C(row g + 8·(e/2), column 2t + e%2) of
    // that 16×8 tile.
    const int g = lane / 4, tq = lane % 4;
    SCRATCHNET_UNROLL
    for (int i = 0; i < MI; ++i) {
        SCRATCHNET_UNROLL
        for (int e2 = 0; e2 < 2; ++e2) {
            const int m = m0 + wm + 16 * i + g + 8 * e2;
            if (m >= M) continue;
            SCRATCHNET_UNROLL
            for (int j = 0; j < NI; ++j) {
                SCRATCHNET_UNROLL
                for (int e1 = 0; e1 < 2; ++e1) {
                    const long long n = n0 + wn + 8 * j + 2 * tq + e1;
                    const float v = acc[i][j][2 * e2 + e1];
                    if (n < N) out.store(m, n, round_output ? tc_round_output(v, P::CODE) : v);
                }
            }
        }
    }
}
