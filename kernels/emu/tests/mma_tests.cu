// mma_tests.cu — kernels that test the tensor-core primitive of kernels/mma.cuh through the
// emulator (kernels/emu/mma_emu.h): mma.sync with the fragment layouts written at the top of
// mma.cuh, ldmatrix, cp.async. Compiled only for the emulator, never by nvcc; launched by
// tests/mma_primitive.rs, which holds the references. Each kernel runs one block; the comment
// above it says with how many threads.
#include "mma.cuh"

// One warp (blockDim.x = 32) computes C_out = C_in + A·B with one mma.sync:
//   precision 1: TF32 m16n8k8 (K = 8), 2: BF16 m16n8k16 (K = 16), 3: FP16 m16n8k16 (K = 16);
//   A is 16×K, B is K×8, C is 16×8, all FP32 and row-major in global memory.
// Each lane gathers its fragments from global memory by the layout of mma.cuh (g = lane/4,
// t = lane%4) and rounds them as a tensor-core kernel does (to_tf32, pack_bf16, pack_f16).
// layout_variant 0 is that layout; the others are plausible mistakes, which the test must
// tell apart from it:
//   1: a[1] and a[2] swapped (rows g+8 and columns t+4 / 2t+8 confused)
//   2: B read as if row-major, B(g, ·) instead of B(·, g) (TF32: b = B(g, t), B(g, t+4);
//      16-bit: b = B(g, 2t..2t+1), B(g+8, 2t..2t+1), the pattern of A)
//   3: C rows g and g+8 swapped, when loading and when storing
//   4: b[0] and b[1] swapped
//   5: (16-bit only) A's pairs packed the wrong way round, the higher k in the low half
//      (the same mistake in B as well would only renumber k, which C + A·B cannot see)
// absent_lane (−1 for none) returns before anything else, so it never reaches the mma: the
// emulator gives NaN in every result that depends on its registers (and it writes nothing).
extern "C" __global__ void emu_test_mma(float* __restrict__ c_out, const float* __restrict__ a,
                                        const float* __restrict__ b, const float* __restrict__ c_in, int precision,
                                        int layout_variant, int absent_lane) {
    const int lane = threadIdx.x & 31;
    if (lane == absent_lane) return;
    const int g = lane / 4, t = lane % 4;
    const int k_len = precision == 1 ? 8 : 16;
    auto A = [&](int r, int k) { return a[r * k_len + k]; };
    auto B = [&](int k, int n) { return b[k * 8 + n]; };

    const int row0 = layout_variant == 3 ? g + 8 : g, row1 = layout_variant == 3 ? g : g + 8;
    float c[4] = {c_in[row0 * 8 + 2 * t], c_in[row0 * 8 + 2 * t + 1], c_in[row1 * 8 + 2 * t],
                  c_in[row1 * 8 + 2 * t + 1]};

    unsigned af[4], bf[2];
    if (precision == 1) {
        af[0] = to_tf32(A(g, t));
        af[1] = to_tf32(A(g + 8, t));
        af[2] = to_tf32(A(g, t + 4));
        af[3] = to_tf32(A(g + 8, t + 4));
        if (layout_variant == 2) {
            bf[0] = to_tf32(B(g, t));
            bf[1] = to_tf32(B(g, t + 4));
        } else {
            bf[0] = to_tf32(B(t, g));
            bf[1] = to_tf32(B(t + 4, g));
        }
    } else {
        auto pack = [&](float lo, float hi) { return precision == 2 ? pack_bf16(lo, hi) : pack_f16(lo, hi); };
        auto pack_a = [&](float lo, float hi) { return layout_variant == 5 ? pack(hi, lo) : pack(lo, hi); };
        af[0] = pack_a(A(g, 2 * t), A(g, 2 * t + 1));
        af[1] = pack_a(A(g + 8, 2 * t), A(g + 8, 2 * t + 1));
        af[2] = pack_a(A(g, 2 * t + 8), A(g, 2 * t + 9));
        af[3] = pack_a(A(g + 8, 2 * t + 8), A(g + 8, 2 * t + 9));
        if (layout_variant == 2) {
            bf[0] = pack(B(g, 2 * t), B(g, 2 * t + 1));
            bf[1] = pack(B(g + 8, 2 * t), B(g + 8, 2 * t + 1));
        } else {
            bf[0] = pack(B(2 * t, g), B(2 * t + 1, g));
            bf[1] = pack(B(2 * t + 8, g), B(2 * t + 9, g));
        }
    }
    if (layout_variant == 1) {
        const unsigned s = af[1];
        af[1] = af[2];
        af[2] = s;
    }
    if (layout_variant == 4) {
        const unsigned s = bf[0];
        bf[0] = bf[1];
        bf[1] = s;
    }

    if (precision == 1) {
        mma_tf32_m16n8k8(c, af, bf);
    } else if (precision == 2) {
        mma_bf16_m16n8k16(c, af, bf);
    } else {
        mma_f16_m16n8k16(c, af, bf);
    }

    c_out[row0 * 8 + 2 * t] = c[0];
    c_out[row0 * 8 + 2 * t + 1] = c[1];
    c_out[row1 * 8 + 2 * t] = c[2];
    c_out[row1 * 8 + 2 * t + 1] = c[3];
}

// One warp (blockDim.x = 32). Shared memory holds four 8×8 matrices of 16-bit values,
// element (m, r, c) = m·64 + r·8 + c, each row 16 bytes, but the rows scattered: row r of
// matrix m sits in slot (5·(8m + r)) mod 32, so that a load only comes out right if every
// lane's own row address is used. Lane l passes the address of row l%8 of matrix l/8 to all
// three loads (so lanes 16..31 point into matrices 2 and 3, which the .x2 forms must not
// read) and writes out[8l + 0..3] = ldmatrix_x4, out[8l + 4..5] = ldmatrix_x2,
// out[8l + 6..7] = ldmatrix_x2_trans.
extern "C" __global__ void emu_test_ldmatrix(unsigned* __restrict__ out) {
    __shared__ __align__(16) unsigned short slots[32][8];
    const int lane = threadIdx.x & 31;
    // Lane l fills slot (5l) mod 32 with row l%8 of matrix l/8.
    const int m = lane / 8, r = lane % 8;
    for (int c = 0; c < 8; ++c) slots[(5 * lane) % 32][c] = (unsigned short)(m * 64 + r * 8 + c);
    __syncwarp();
    const unsigned short* row = slots[(5 * lane) % 32];
    unsigned x4[4], x2[2], x2t[2];
    ldmatrix_x4(x4, row);
    ldmatrix_x2(x2, row);
    ldmatrix_x2_trans(x2t, row);
    for (int i = 0; i < 4; ++i) out[8 * lane + i] = x4[i];
    for (int i = 0; i < 2; ++i) out[8 * lane + 4 + i] = x2[i];
    for (int i = 0; i < 2; ++i) out[8 * lane + 6 + i] = x2t[i];
}

// 64 threads (two warps). Thread i copies 16 bytes, src16[4i..4i+4) → shared, valid when
// 4i < n16 and i % 7 != 3, and 4 bytes, src4[i] → shared, valid when i < n4 and i % 5 != 2;
// an invalid copy writes zeros and must not read its source, whose address (passed all the
// same) lies past the end of the buffer for i beyond n16/4 or n4 (AddressSanitizer would
// report a read). The copies form two groups, waited for with cp_async_wait<0>, then a
// __syncthreads; thread i then writes out what thread 63 − i copied (out16[4j..4j+4) and
// out4[j] for j = 63 − i), which only the barrier makes visible to it. Shared memory is set
// to −1 first, so a copy that wrote nothing shows.
extern "C" __global__ void emu_test_cp_async(float* __restrict__ out16, float* __restrict__ out4,
                                             const float* __restrict__ src16, const float* __restrict__ src4, int n16,
                                             int n4) {
    __shared__ __align__(16) float s16[64 * 4];
    __shared__ float s4[64];
    const int i = threadIdx.x;
    for (int j = 0; j < 4; ++j) s16[4 * i + j] = -1.f;
    s4[i] = -1.f;
    __syncthreads();
    cp_async_16(&s16[4 * i], src16 + 4 * i, 4 * i < n16 && i % 7 != 3);
    cp_async_commit();
    cp_async_4(&s4[i], src4 + i, i < n4 && i % 5 != 2);
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();
    const int from = 63 - i;
    for (int j = 0; j < 4; ++j) out16[4 * from + j] = s16[4 * from + j];
    out4[from] = s4[from];
}
