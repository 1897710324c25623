// The warp-level matrix-multiply primitive under every tensor-core kernel: mma.sync, the
// operand rounding the tensor cores apply, ldmatrix and cp.async.
//
// One header, two builds, one #if: under nvcc each function is one or two PTX instructions
// (inline asm, the only inline PTX in kernels/); under the emulator (SCRATCHNET_EMU) the same
// function is a warp-collective operation of kernels/emu/cuda_emu.h that gives the hardware's
// numerics exactly (operands rounded as below, products and sums in FP32). We write mma.sync
// rather than use nvcuda::wmma because wmma's fragment layouts are unspecified ("opaque"): a
// kernel could not build its fragments straight from an implicit-GEMM gather, and an emulator
// of wmma could not prove a layout, since any self-consistent layout would pass. mma.sync's
// layouts are fixed by the PTX ISA, drawn in docs/kernels.md ("Tensor cores"), and tested.
//
// The shapes (M×N×K per warp instruction, FP32 accumulators):
//   TF32       m16n8k8:  A 16×8 row-major (4 regs), B 8×8 column-major (2 regs), C 16×8 (4)
//   BF16/FP16  m16n8k16: A 16×16 (4 regs of 2 halves), B 16×8 (2 regs of 2 halves), C 16×8
//
// Fragment layouts, with g = lane / 4 ("group") and t = lane % 4 ("thread in group"):
//   C (both shapes):  c[0] = C(g, 2t)   c[1] = C(g, 2t+1)   c[2] = C(g+8, 2t)   c[3] = C(g+8, 2t+1)
//   TF32 A:           a[0] = A(g, t)    a[1] = A(g+8, t)    a[2] = A(g, t+4)    a[3] = A(g+8, t+4)
//   TF32 B:           b[0] = B(t, g)    b[1] = B(t+4, g)
//   16-bit A:         a[0] = A(g, 2t..2t+1)    a[1] = A(g+8, 2t..2t+1)
//                     a[2] = A(g, 2t+8..2t+9)  a[3] = A(g+8, 2t+8..2t+9)
//   16-bit B:         b[0] = B(2t..2t+1, g)    b[1] = B(2t+8..2t+9, g)
// (a pair "2t..2t+1" is one 32-bit register, the lower index in the low half).
//
// Rounding, as the hardware and cuDNN do it: to_tf32 is cvt.rna.tf32.f32 (round to nearest,
// ties away from zero, to 10 mantissa bits; the low 13 bits become 0), pack_bf16 and pack_f16
// are cvt.rn (round to nearest even). The mma then multiplies the rounded values exactly and
// adds in FP32. A value not rounded by to_tf32 would be truncated by the tensor core instead,
// so kernels always round explicitly: the CPU's --precision tf32 rounds the same way
// (src/ops/precision.rs), and the two agree to the bit on every operand.
//
// Tensor-core instructions need sm_80 or newer for TF32 and BF16. The fatbin also holds
// sm_75; there the functions trap, and the host never launches a tensor-core kernel on a GPU
// older than 8.0 (src/ops/precision.rs says so in one line instead).
#pragma once

#include "common.cuh"
#if defined(SCRATCHNET_EMU)
#include "emu/mma_emu.h"
#endif

#if defined(__CUDACC__) && defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#define SCRATCHNET_MMA_UNSUPPORTED 1
#endif

// ---- Rounding --------------------------------------------------------------------------

// x rounded to TF32 (1 sign, 8 exponent, 10 mantissa bits), returned as the bits of a float.
__device__ __forceinline__ unsigned to_tf32(float x) {
#if defined(SCRATCHNET_EMU)
    return scratchnet_emu::round_tf32_bits(x);
#elif defined(SCRATCHNET_MMA_UNSUPPORTED)
    __trap();
    return 0u;
#else
    unsigned r;
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
    return r;
#endif
}

// lo and hi rounded to BF16 and packed into one register, lo in the low half.
__device__ __forceinline__ unsigned pack_bf16(float lo, float hi) {
#if defined(SCRATCHNET_EMU)
    return scratchnet_emu::pack_bf16_rn(lo, hi);
#else
    const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<const unsigned*>(&v);
#endif
}

// lo and hi rounded to FP16 and packed into one register, lo in the low half.
__device__ __forceinline__ unsigned pack_f16(float lo, float hi) {
#if defined(SCRATCHNET_EMU)
    return scratchnet_emu::pack_f16_rn(lo, hi);
#else
    const __half2 v = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<const unsigned*>(&v);
#endif
}

// ---- mma.sync ----------------------------------------------------------------------------
// c += a·b for the warp's 16×8 tile; every lane of the warp must call it (it is collective).

__device__ __forceinline__ void mma_tf32_m16n8k8(float c[4], const unsigned a[4], const unsigned b[2]) {
#if defined(SCRATCHNET_EMU)
    scratchnet_emu::mma_tf32_m16n8k8(c, a, b);
#elif defined(SCRATCHNET_MMA_UNSUPPORTED)
    __trap();
#else
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}

__device__ __forceinline__ void mma_bf16_m16n8k16(float c[4], const unsigned a[4], const unsigned b[2]) {
#if defined(SCRATCHNET_EMU)
    scratchnet_emu::mma_bf16_m16n8k16(c, a, b);
#elif defined(SCRATCHNET_MMA_UNSUPPORTED)
    __trap();
#else
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}

__device__ __forceinline__ void mma_f16_m16n8k16(float c[4], const unsigned a[4], const unsigned b[2]) {
#if defined(SCRATCHNET_EMU)
    scratchnet_emu::mma_f16_m16n8k16(c, a, b);
#elif defined(SCRATCHNET_MMA_UNSUPPORTED)
    __trap();
#else
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}

// ---- ldmatrix ----------------------------------------------------------------------------
// Loads 8×8 matrices of 16-bit values from shared memory into fragments, collectively: for
// .x4, lanes 8i..8i+7 pass the addresses of the 8 rows (16 bytes each, 16-byte aligned) of
// matrix i, and lane l receives r[i] = row l/4, columns 2(l%4)..2(l%4)+1 of matrix i; .x2
// reads the addresses of lanes 0..15. The .trans forms deliver the transpose (r[i] = column
// l/4, rows 2(l%4)..2(l%4)+1), which turns a row-major B tile into the column-major
// fragment mma wants.

__device__ __forceinline__ void ldmatrix_x4(unsigned r[4], const void* row) {
#if defined(SCRATCHNET_EMU)
    scratchnet_emu::ldmatrix(r, 4, row, false);
#elif defined(SCRATCHNET_MMA_UNSUPPORTED)
    __trap();
#else
    const unsigned s = (unsigned)__cvta_generic_to_shared(row);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(s));
#endif
}

__device__ __forceinline__ void ldmatrix_x2(unsigned r[2], const void* row) {
#if defined(SCRATCHNET_EMU)
    scratchnet_emu::ldmatrix(r, 2, row, false);
#elif defined(SCRATCHNET_MMA_UNSUPPORTED)
    __trap();
#else
    const unsigned s = (unsigned)__cvta_generic_to_shared(row);
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];" : "=r"(r[0]), "=r"(r[1]) : "r"(s));
#endif
}

__device__ __forceinline__ void ldmatrix_x2_trans(unsigned r[2], const void* row) {
#if defined(SCRATCHNET_EMU)
    scratchnet_emu::ldmatrix(r, 2, row, true);
#elif defined(SCRATCHNET_MMA_UNSUPPORTED)
    __trap();
#else
    const unsigned s = (unsigned)__cvta_generic_to_shared(row);
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];" : "=r"(r[0]), "=r"(r[1]) : "r"(s));
#endif
}

// ---- cp.async ----------------------------------------------------------------------------
// Copies global → shared without passing through registers, asynchronously: the copies a
// thread issues are grouped by cp_async_commit(), and cp_async_wait<N>() waits until at most
// N of the thread's groups are still in flight (then a __syncthreads makes every thread's
// copies visible to the block). That is what lets a kernel keep several stages of its tiles
// in flight. `valid` false writes zeros instead of reading (the "src-size 0" form), which is
// how a loader pads the edges of a matrix without a branch around the copy.
// The emulator copies at once and its waits return at once: it runs the threads of a block
// one after another, so a copy can never be observed in flight.

// 4 bytes (one float).
__device__ __forceinline__ void cp_async_4(void* smem, const void* gmem, bool valid) {
#if defined(SCRATCHNET_EMU) || defined(SCRATCHNET_MMA_UNSUPPORTED)
    *static_cast<unsigned*>(smem) = valid ? *static_cast<const unsigned*>(gmem) : 0u;
#else
    const unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;" ::"r"(s), "l"(gmem), "r"(valid ? 4 : 0));
#endif
}

// 16 bytes (four floats); both addresses 16-byte aligned. Bypasses L1 (.cg): a tile is read
// once per block.
__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem, bool valid) {
#if defined(SCRATCHNET_EMU) || defined(SCRATCHNET_MMA_UNSUPPORTED)
    float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
    if (valid) v = *static_cast<const float4*>(gmem);
    *static_cast<float4*>(smem) = v;
#else
    const unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(s), "l"(gmem), "r"(valid ? 16 : 0));
#endif
}

__device__ __forceinline__ void cp_async_commit() {
#if !defined(SCRATCHNET_EMU) && !defined(SCRATCHNET_MMA_UNSUPPORTED)
    asm volatile("cp.async.commit_group;" ::);
#endif
}

template <int N>
__device__ __forceinline__ void cp_async_wait() {
#if !defined(SCRATCHNET_EMU) && !defined(SCRATCHNET_MMA_UNSUPPORTED)
    asm volatile("cp.async.wait_group %0;" ::"n"(N));
#endif
}
