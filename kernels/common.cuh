// Shared by every kernel file: the one place that differs between nvcc and the emulator,
// and the small device helpers several op families use. Read it first; each .cu file then
// lists its variants in reading order and what to read before it, and docs/kernels.md
// ("Reading order") orders the files.
//
// Every kernel in kernels/*.cu is compiled twice:
//   - by nvcc, into the fatbin the CUDA device loads (build.rs);
//   - as plain C++ against kernels/emu/cuda_emu.h, for the emulator (--device emu).
// So a kernel may only use what the emulator provides (see the top of emu/cuda_emu.h):
// no inline PTX, no `extern __shared__` (use SCRATCHNET_DYNAMIC_SHARED), no templates on
// __global__ functions. Kernels are `extern "C"` so the host finds them by name, and their
// parameters are pointers, int, unsigned, long long, unsigned long long, float or double:
// build.rs reads each signature to generate the emulator's launch wrappers and the table the
// host checks its arguments against.
#pragma once

#if defined(__CUDACC__)
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#define SCRATCHNET_DYNAMIC_SHARED(T, name) extern __shared__ T name[]
// Unrolls the loop that follows completely. Where a loop indexes a register array (a tile's
// accumulators), an index the compiler cannot resolve puts the whole array in local memory.
#define SCRATCHNET_UNROLL _Pragma("unroll")
#else
#include "emu/cuda_emu.h"
#define SCRATCHNET_UNROLL
#endif

// Threads per block for the simple element-wise kernels: a multiple of the warp size that
// keeps enough warps resident per SM and that every GPU since Kepler accepts.
#define SCRATCHNET_BLOCK 256

// Index of this thread across the whole grid (1-D launches), in 64 bits: tensors can have
// more than 2^31 elements.
__device__ __forceinline__ long long global_thread_index() {
    return (long long)blockIdx.x * blockDim.x + threadIdx.x;
}

// Stride of a grid-stride loop: the number of threads in the grid.
__device__ __forceinline__ long long grid_stride() {
    return (long long)gridDim.x * blockDim.x;
}

// Index loops whose arithmetic is 32-bit when the sizes allow it.
//
// Taking a flat index apart (image = i / HW, channel = i / HW % C) in 64 bits costs, for each
// / and each %, a test of whether both operands fit in 32 bits, then nvcc's inline 32-bit
// division or a call to its 64-bit division subroutine (some 70 instructions). With an
// `unsigned` index it is one inline sequence of about ten instructions (no sign fix-ups),
// shared by a quotient and its remainder (r = i − q·d).
//
// index_loop(first, end, step, narrow, body) runs body(i) for i = first, first + step, … < end,
// with i an `unsigned` when `narrow`, else a `long long`. The body is a generic lambda
// (`[&](auto i)`), written once for both, that does its divisions in decltype(i) and its
// address arithmetic in long long. `narrow` must guarantee that end + step and every quotient
// the body takes stay below 2^31, so that i never wraps; it depends on sizes only, so every
// thread of a launch takes the same path.
template <class Body>
__device__ __forceinline__ void index_loop(long long first, long long end, long long step, bool narrow, Body body) {
    if (narrow) {
        for (unsigned i = (unsigned)first; i < (unsigned)end; i += (unsigned)step) body(i);
    } else {
        for (long long i = first; i < end; i += step) body(i);
    }
}

// Below 2^31: what index_loop's `narrow` asks of its bounds.
__device__ __forceinline__ bool fits_int32(long long n) { return n <= 0x7fffffffLL; }

// The grid-stride loop over [0, total), on a 32-bit index when total + the grid fits.
template <class Body>
__device__ __forceinline__ void grid_stride_loop(long long total, Body body) {
    index_loop(global_thread_index(), total, grid_stride(), fits_int32(total + grid_stride()), body);
}

// a / b for 0 <= a and 0 < b, in 32 bits when both fit (a tensor of fewer than 2^31 elements),
// else in 64. A 64-bit division is a call to a subroutine of some 70 instructions in the SASS;
// a 32-bit one is about ten inline instructions. The branch is the same for every thread of a
// launch (it depends on the sizes, and on indices that stay below the tensor's size).
__device__ __forceinline__ long long narrow_div(long long a, long long b) {
    if (((unsigned long long)a | (unsigned long long)b) <= 0x7fffffffull) return (unsigned)a / (unsigned)b;
    return a / b;
}

// Sum of `v` over the 32 lanes of a warp, by halving: after the step with offset o, lane i
// holds the sum of lanes i..i+2o-1. Lane 0 ends with the total.
__device__ __forceinline__ float warp_sum(float v) {
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
    return v;
}

// Maximum of `v` over the 32 lanes of a warp (lane 0 ends with it), NaN-propagating.
__device__ __forceinline__ float warp_max(float v) {
    for (int offset = 16; offset > 0; offset >>= 1) {
        const float o = __shfl_down_sync(0xffffffffu, v, offset);
        v = (o > v || o != o) ? o : v;
    }
    return v;
}

// Sum of `v` over a block of SCRATCHNET_BLOCK threads: each warp reduces its 32 values
// with shuffles, warp leaders write the 8 partial sums to shared memory, and the first warp
// reduces those. Thread 0 returns the total (the other threads' return value is
// meaningless). The order of the additions is fixed, so the result is deterministic. Every
// thread of the block must call it (it contains __syncthreads), with blockDim.x ==
// SCRATCHNET_BLOCK.
__device__ __forceinline__ float block_sum(float v, float* scratch /* SCRATCHNET_BLOCK/32 floats */) {
    const int lane = threadIdx.x % 32;
    const int warp = threadIdx.x / 32;
    v = warp_sum(v);
    __syncthreads();  // scratch may still be read by a previous call
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = (threadIdx.x < SCRATCHNET_BLOCK / 32) ? scratch[lane] : 0.f;
    if (warp == 0) v = warp_sum(v);
    return v;
}

// Maximum of `v` over a block of SCRATCHNET_BLOCK threads, as block_sum; every thread gets the
// result (it is broadcast through shared memory).
__device__ __forceinline__ float block_max(float v, float* scratch /* SCRATCHNET_BLOCK/32 + 1 floats */) {
    const int lane = threadIdx.x % 32;
    const int warp = threadIdx.x / 32;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    if (warp == 0) {
        v = (lane < SCRATCHNET_BLOCK / 32) ? scratch[lane] : scratch[0];
        v = warp_max(v);
        if (lane == 0) scratch[SCRATCHNET_BLOCK / 32] = v;
    }
    __syncthreads();
    return scratch[SCRATCHNET_BLOCK / 32];
}
