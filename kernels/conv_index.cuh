// Index arithmetic for the implicit-GEMM convolution operands (conv2d.cu), without a division
// per element.
//
// A row k of the convolution's implicit matrices stands for three coordinates: (c, ky, kx) with
// k = (c·KH + ky)·KW + kx for the forward im2col, (o, ky, kx) for the data gradient, (image, oy,
// ox) for the filter gradient. Taking k apart with / and % costs two 32-bit divisions and two
// remainders by run-time values per element fetched. A GPU has no integer divider: nvcc emits
// about ten instructions per division (a float reciprocal, a multiply-high, fix-ups), all on
// the integer pipe, which on Hopper issues at half the rate of the FMA pipe. In the tile loop
// that would be more integer work than the FMAs it feeds (docs/kernels.md counts both).
//
// The way out: each thread of the tile engine fetches the rows k, k + step, k + 2·step, … in
// order (tile_gemm.cuh: step 4 or 2 for B, 8 for A), so the division is done once, and every
// later row is reached by adding. Write k and the step as "digits" in the mixed radix
// (outer, mid < mid_n, inner < inner_n), and add them the way one adds numbers by hand: add
// the inner digits; if the sum reached inner_n, subtract inner_n and carry 1 into mid; the
// same for mid into outer. Every digit of the step is below its radix, so a digit plus a step
// digit plus a carry is below twice the radix: one compare and one subtraction per digit,
// however many channels one step crosses.
//
//   3×3 kernel (mid_n = inner_n = 3), step 8 = (0, 2, 2):
//     k = 7 = (0, 2, 1) → inner 1 + 2 = 3 → 0, carry 1 → mid 2 + 2 + 1 = 5 → 2, carry 1
//                       → outer 0 + 0 + 1 = 1: (1, 2, 0) = 15 = 7 + 8
//   1×1 kernel (mid_n = inner_n = 1), step 8 = (8, 0, 0): every step moves 8 channels on.
//
// The digits decide only how an element's address is found, not which elements are summed
// or in which order (that is the engine's), so a loader that divides gives the same bits.
#pragma once
#include "common.cuh"

// Row k as three digits (outer, mid < mid_n, inner < inner_n): k = (outer·mid_n + mid)·inner_n + inner.
struct RowDigits3 {
    int outer = 0, mid = 0, inner = 0;
    int d_outer = 0, d_mid = 0, d_inner = 0;  // the step, in the same digits
    int mid_n = 1, inner_n = 1;

    // Row k, and the step that each advance() adds. k is divided once; the step is a few
    // rows (at most TILE_K), so its digits come from a few subtractions, the same in every
    // thread, and the compiler can keep them in uniform registers.
    __device__ void start(int k, int step, int mid_radix, int inner_radix) {
        mid_n = mid_radix;
        inner_n = inner_radix;
        const int per_outer = mid_n * inner_n;
        outer = k / per_outer;
        mid = k % per_outer / inner_n;
        inner = k % inner_n;
        d_outer = 0;
        while (step >= per_outer) step -= per_outer, ++d_outer;
        d_mid = 0;
        while (step >= inner_n) step -= inner_n, ++d_mid;
        d_inner = step;
    }

    // k += step, by adding digits with carries.
    __device__ void advance() {
        inner += d_inner;
        const int carry_inner = inner >= inner_n;
        if (carry_inner) inner -= inner_n;
        mid += d_mid + carry_inner;
        const int carry_mid = mid >= mid_n;
        if (carry_mid) mid -= mid_n;
        outer += d_outer + carry_mid;
    }
};

// Row k as two digits (outer, inner < inner_n): k = outer·inner_n + inner. The same walk,
// for rows that stand for two coordinates: (o, tap) or (image, pixel).
struct RowDigits2 {
    int outer = 0, inner = 0;
    int d_outer = 0, d_inner = 0;
    int inner_n = 1;

    __device__ void start(int k, int step, int inner_radix) {
        inner_n = inner_radix;
        outer = k / inner_n;
        inner = k % inner_n;
        d_outer = 0;
        while (step >= inner_n) step -= inner_n, ++d_outer;
        d_inner = step;
    }

    __device__ void advance() {
        inner += d_inner;
        const int carry = inner >= inner_n;
        if (carry) inner -= inner_n;
        outer += d_outer + carry;
    }
};

// n / d for 0 <= n < 2^31 and a divisor d >= 1 that stays the same for the whole kernel (a
// stride), by a multiply-high and a shift instead of a division (Granlund and Montgomery,
// 1994; CUTLASS's FastDivmod): with l = ⌈log2 d⌉ and m = ⌊2^32·(2^l − d) / d⌋ + 1,
//   n / d = (umulhi(m, n) + n) >> l,
// where umulhi(m, n) = ⌊m·n / 2^32⌋ < n, so the sum fits in 32 bits. The constructor divides
// once; d = 1 gives m = 1, l = 0 and n itself.
struct FastDiv {
    unsigned m = 1;
    int l = 0;
    __device__ explicit FastDiv(int d) {
        while ((1u << l) < (unsigned)d) ++l;
        m = (unsigned)(((1ull << 32) * ((1ull << l) - (unsigned)d)) / (unsigned)d + 1);
    }
    __device__ int div(int n) const { return (int)((__umulhi(m, (unsigned)n) + (unsigned)n) >> l); }
};
