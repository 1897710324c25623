// cuda_emu.h — just enough of CUDA to compile the kernels in kernels/*.cu as plain C++
// (g++ -std=c++20) and run them on a CPU: "the emulator" (`--device emu`).
//
// How the emulator works
// ----------------------
// A CUDA launch is a grid of blocks; each block is a group of threads that share
// `__shared__` memory and can wait for each other at barriers (__syncthreads, and the
// warp-level __syncwarp and *_sync intrinsics). The emulator runs
//
//   * the blocks of a grid one after another, on the OS thread that called
//     scratchnet_emu_launch (see runtime.cpp), and
//   * the threads of a block as *fibers* on that same OS thread. A fiber is a function
//     call with its own stack that can pause in the middle (at a barrier) and be resumed
//     later. The scheduler in runtime.cpp resumes every runnable fiber in turn, in a
//     fixed order (thread 0, 1, 2, ...); a fiber runs until it returns from the kernel or
//     reaches a barrier, where it switches back to the scheduler. When all live threads
//     of the block wait at __syncthreads (or all live lanes of a warp at a warp barrier),
//     the scheduler releases them and the next round begins.
//
// Why fibers and not one OS thread per CUDA thread? A block has up to 1024 threads and
// a kernel may pass hundreds of barriers; waking 256 OS threads at a barrier costs about
// a millisecond, while switching fibers is a few nanoseconds (save 7 registers, swap the
// stack pointer). Running everything on one OS thread in a fixed order also makes every
// run bit-for-bit identical, even for kernels with atomics.
//
// What the CUDA names become here
// -------------------------------
//   * threadIdx / blockIdx / blockDim / gridDim read the context of the running fiber
//     through a thread-local pointer (scratchnet_emu::tls_thread) that the scheduler sets
//     before every switch.
//   * `__shared__` is `static thread_local`. All fibers of a block run on one OS thread,
//     and the blocks of a launch run one after another on that thread, so one copy per
//     OS thread is exactly "one copy per block". (Launches made at the same time from
//     other OS threads get their own copies.) The copy keeps its contents from the
//     previous block, where a GPU would give undefined values; it is zero at the first use.
//   * Dynamic shared memory (sized at launch) is declared with
//     SCRATCHNET_DYNAMIC_SHARED(T, name) instead of `extern __shared__ T name[]`; it is
//     filled with 0xFF bytes before each block, so a read of a value nobody wrote gives
//     NaN (float) or -1 (int), and under AddressSanitizer it is a heap buffer of exactly
//     the launch's size, so reading past its end is reported.
//   * Warp intrinsics (__shfl_*_sync, __ballot_sync, __any_sync, ...) are built on one
//     primitive, warp_barrier(): each lane deposits a 64-bit value and waits; when every
//     live lane named in the mask has arrived, the scheduler takes a snapshot of the
//     deposited values and releases them; each lane then reads what it needs from the
//     snapshot. So a shuffle costs one barrier, and lanes exchange values only at that
//     point, never by running "in lockstep".
//   * Atomics use std::atomic_ref (relaxed, as on the GPU), math maps to <cmath>.
//
// What is NOT emulated (a kernel that relies on these will not compile, or will give
// results that differ from the GPU):
//   * inline PTX (`asm("...")`), `extern __shared__` (use SCRATCHNET_DYNAMIC_SHARED),
//     cooperative groups, dynamic parallelism (launching from a kernel), textures and
//     surfaces, wmma and raw mma/ldmatrix PTX (the functions of kernels/mma.cuh are
//     emulated, by emu/mma_emu.h), `__constant__` set from the host,
//     the pre-CUDA-9 warp functions without _sync (__shfl, __ballot, __any, __all),
//     clock()/clock64(), and __CUDA_ARCH__ (not defined here; SCRATCHNET_EMU is).
//   * Implicit warp-synchronous programming: code that exchanges data between lanes of
//     a warp through shared memory *without* __syncwarp (the pre-Volta "volatile
//     shared memory" reductions) reads stale values here, because a fiber runs until
//     its next barrier before the next fiber starts. Put a __syncwarp() between the
//     write and the read, as the CUDA programming guide requires since Volta.
//   * __activemask() returns the lanes of the warp that have not returned yet; the
//     emulator does not track which lanes are in the current branch. A mask taken this
//     way inside a divergent branch therefore names lanes that never arrive, and the
//     launch fails with a deadlock message.
//   * Reading, in a shuffle, the value of a lane that did not take part (not in the
//     mask, returned, or past the end of a partial warp) is undefined on the GPU; here
//     it returns all-ones bits (NaN for float, -1 for int) so the bug is visible.
//   * Spin-waiting hangs. A fiber only gives up the CPU at a barrier, so a thread that
//     loops until another thread of its block sets a flag or releases a lock (in shared
//     or global memory, with atomics or volatile) never lets that thread run; the same
//     for waiting on another block (a grid-wide flag or lock), because blocks run one
//     after another. Threads of a block may only wait for each other at barriers.
//   * Static `__shared__` memory is not poisoned (it keeps the previous block's values)
//     and not checked by AddressSanitizer (thread_local storage has no red zones); the
//     dynamic shared memory is both.
//   * Each emulated thread has a 64 KiB stack (512 KiB under ASan; the environment
//     variable SCRATCHNET_EMU_STACK_KIB changes it); big local arrays overflow it and the
//     process dies with SIGSEGV on the guard page.
//   * Precision: __expf, rsqrtf, __fdividef and friends are the exact <cmath> functions
//     (the GPU's are approximate), and the GPU fuses a*b+c into one fma where the CPU
//     build does not (compile with -ffp-contract=off to be sure), so compare against
//     GPU results with a tolerance. Float rounding modes other than nearest (_rz, _ru,
//     _rd suffixes) exist only for the integer conversions below.
//   * The Rust side launches; there is no cudaMalloc/cudaMemcpy here: device pointers
//     are ordinary host pointers.
//
// Everything that runs the fibers (scheduler, context switch, launch checks) is in
// runtime.cpp; this header only declares what kernel code sees.
#pragma once

#ifndef __cplusplus
#error "cuda_emu.h is C++ (g++ -std=c++20)"
#endif
#if defined(__CUDACC__)
#error "cuda_emu.h is for the CPU emulator; nvcc must not include it"
#endif

// Standard headers first: <memory> spells __attribute__((__noinline__)), which the
// __noinline__ macro below would break if it were included afterwards. Other standard
// headers may be included after common.cuh, except the few that spell __noinline__
// themselves (<stacktrace>, <experimental/simd>): include those before it.
#include <algorithm>
#include <atomic>
#include <bit>
#include <cassert>
#include <climits>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <type_traits>
#include <utility>
#include <math.h>  // after <cmath>: libstdc++'s math.h puts the float overloads (std::exp(float), ...) in the global namespace, as CUDA has them

// Lets a kernel tell the two builds apart: #ifdef SCRATCHNET_EMU ... #endif.
#define SCRATCHNET_EMU 1

// ---------------------------------------------------------------------------------------
// Qualifiers
// ---------------------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __managed__
#define __grid_constant__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __constant__ static
// One copy per OS thread = one copy per block (see the comment at the top).
#define __shared__ static thread_local
// __restrict__ is understood by g++ itself.

// ---------------------------------------------------------------------------------------
// Vector types (float4, int2, uint3, ...) with CUDA's alignment, and dim3
// ---------------------------------------------------------------------------------------
#define SCRATCHNET_EMU_VEC1(T, name, align)                                                 \
    struct alignas(align) name { T x; };                                                   \
    inline constexpr name make_##name(T x) { return name{x}; }
#define SCRATCHNET_EMU_VEC2(T, name, align)                                                 \
    struct alignas(align) name { T x, y; };                                                \
    inline constexpr name make_##name(T x, T y) { return name{x, y}; }
#define SCRATCHNET_EMU_VEC3(T, name, align)                                                 \
    struct alignas(align) name { T x, y, z; };                                             \
    inline constexpr name make_##name(T x, T y, T z) { return name{x, y, z}; }
#define SCRATCHNET_EMU_VEC4(T, name, align)                                                 \
    struct alignas(align) name { T x, y, z, w; };                                          \
    inline constexpr name make_##name(T x, T y, T z, T w) { return name{x, y, z, w}; }

SCRATCHNET_EMU_VEC1(signed char, char1, 1)
SCRATCHNET_EMU_VEC2(signed char, char2, 2)
SCRATCHNET_EMU_VEC4(signed char, char4, 4)
SCRATCHNET_EMU_VEC1(unsigned char, uchar1, 1)
SCRATCHNET_EMU_VEC2(unsigned char, uchar2, 2)
SCRATCHNET_EMU_VEC4(unsigned char, uchar4, 4)
SCRATCHNET_EMU_VEC2(short, short2, 4)
SCRATCHNET_EMU_VEC4(short, short4, 8)
SCRATCHNET_EMU_VEC2(unsigned short, ushort2, 4)
SCRATCHNET_EMU_VEC4(unsigned short, ushort4, 8)
SCRATCHNET_EMU_VEC1(int, int1, 4)
SCRATCHNET_EMU_VEC2(int, int2, 8)
SCRATCHNET_EMU_VEC3(int, int3, 4)
SCRATCHNET_EMU_VEC4(int, int4, 16)
SCRATCHNET_EMU_VEC1(unsigned int, uint1, 4)
SCRATCHNET_EMU_VEC2(unsigned int, uint2, 8)
SCRATCHNET_EMU_VEC3(unsigned int, uint3, 4)
SCRATCHNET_EMU_VEC4(unsigned int, uint4, 16)
SCRATCHNET_EMU_VEC1(long long, longlong1, 8)
SCRATCHNET_EMU_VEC2(long long, longlong2, 16)
SCRATCHNET_EMU_VEC1(unsigned long long, ulonglong1, 8)
SCRATCHNET_EMU_VEC2(unsigned long long, ulonglong2, 16)
SCRATCHNET_EMU_VEC1(float, float1, 4)
SCRATCHNET_EMU_VEC2(float, float2, 8)
SCRATCHNET_EMU_VEC3(float, float3, 4)
SCRATCHNET_EMU_VEC4(float, float4, 16)
SCRATCHNET_EMU_VEC1(double, double1, 8)
SCRATCHNET_EMU_VEC2(double, double2, 16)
SCRATCHNET_EMU_VEC3(double, double3, 8)
SCRATCHNET_EMU_VEC4(double, double4, 16)

#undef SCRATCHNET_EMU_VEC1
#undef SCRATCHNET_EMU_VEC2
#undef SCRATCHNET_EMU_VEC3
#undef SCRATCHNET_EMU_VEC4

// The type of gridDim and blockDim; unspecified components are 1, as in CUDA.
struct dim3 {
    unsigned int x, y, z;
    constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1) : x(vx), y(vy), z(vz) {}
    constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
    constexpr operator uint3() const { return uint3{x, y, z}; }
};

// ---------------------------------------------------------------------------------------
// The C ABI of runtime.cpp (the Rust side calls it; generated wrappers use the typedef)
// ---------------------------------------------------------------------------------------
extern "C" {
// A generated wrapper: args[i] points at the value of the kernel's i-th parameter
// (the layout of cuLaunchKernel's kernelParams); it calls the kernel with them.
typedef void (*scratchnet_emu_kernel_fn)(void** args);

// Runs a whole grid; 0 on success, otherwise nonzero with a one-line message in err.
int scratchnet_emu_launch(scratchnet_emu_kernel_fn fn,
                          unsigned grid_x, unsigned grid_y, unsigned grid_z,
                          unsigned block_x, unsigned block_y, unsigned block_z,
                          unsigned long long dynamic_shared_bytes,
                          void** args, char* err, unsigned long long err_len);
}

namespace scratchnet_emu {

// What kernel code can see of the block being run. One per launch, updated per block.
struct BlockContext {
    uint3 block_idx;
    dim3 block_dim;
    dim3 grid_dim;
    void* dynamic_shared;  // this block's dynamic shared memory (SCRATCHNET_DYNAMIC_SHARED)
};

// What kernel code can see of the emulated thread (fiber) that is running.
struct ThreadContext {
    uint3 thread_idx;
    unsigned linear_tid;  // threadIdx.x + threadIdx.y*blockDim.x + threadIdx.z*blockDim.x*blockDim.y
    unsigned lane;        // linear_tid % 32
    unsigned warp;        // linear_tid / 32
    const BlockContext* block;
};

// The running fiber's context, or nullptr outside a kernel. `__thread` (not
// thread_local) so that reading it is one load, with no C++ initialisation wrapper.
// Set by the scheduler before every switch into a fiber.
extern __thread ThreadContext* tls_thread;

// Aborts with a message: a CUDA built-in was used outside a running kernel.
[[noreturn]] void outside_kernel(const char* what);

inline const ThreadContext& current_thread() {
    ThreadContext* t = tls_thread;
    if (__builtin_expect(t == nullptr, 0)) outside_kernel("threadIdx/blockIdx/blockDim/gridDim");
    return *t;
}

// ---- barriers; defined in runtime.cpp, deliberately not inline ----------------------
// The compiler cannot see into these calls, so it must assume they change any memory:
// after a barrier, values written by other threads (shared memory) are read again, as
// CUDA's memory model requires. (Caching threadIdx across a barrier would be harmless:
// a fiber's own context never changes while it runs, and tls_thread points to it
// whenever it runs. The shared memory is what must be reloaded.)

// How the predicates of __syncthreads_count/_and/_or are combined.
enum class BlockReduction : int { none = 0, count = 1, all = 2, any = 3 };

// __syncthreads and friends: waits until every live thread of the block is here, then
// returns the reduction of the predicates (0 for BlockReduction::none).
int block_barrier(BlockReduction how, int predicate);

// The warp barrier: deposits `value`, waits until every live lane named in `mask` (the
// caller is always included) waits at a warp barrier with the same mask, and returns
// the snapshot of the 32 deposited values. *group receives the lanes released together
// (mask & live lanes | caller); only their entries of the snapshot are meaningful. The
// snapshot stays valid until the caller's next barrier.
const unsigned long long* warp_barrier(unsigned mask, unsigned long long value, unsigned* group);

// Lanes of the caller's warp that exist and have not returned (for __activemask).
unsigned live_lanes();

// Deposited by __syncwarp, and returned for lanes that did not take part in a shuffle.
inline constexpr unsigned long long poison_bits = ~0ull;

// A value that fits in one 64-bit warp slot.
template <class T>
concept WarpValue = std::is_trivially_copyable_v<T> && sizeof(T) <= 8;

template <WarpValue T>
inline unsigned long long to_slot(T v) {
    unsigned long long bits = 0;
    std::memcpy(&bits, &v, sizeof v);
    return bits;
}
template <WarpValue T>
inline T from_slot(unsigned long long bits) {
    T v;
    std::memcpy(&v, &bits, sizeof v);
    return v;
}

// Which lane a shuffle reads, exactly as PTX's shfl.sync defines it: the warp is cut into
// segments of `width` lanes; a source outside the caller's segment (or, for up/down,
// past its ends) means "keep your own value". Only the low 5 bits of b count.
enum class ShuffleMode { index, up, down, bfly };
inline unsigned shuffle_source(ShuffleMode mode, unsigned lane, unsigned b, int width) {
    const unsigned segment_mask = (32u - static_cast<unsigned>(width)) & 31u;  // high lane bits that select the segment
    const unsigned min_lane = lane & segment_mask;
    const unsigned max_lane = min_lane | (31u & ~segment_mask);
    b &= 31u;
    int j = 0;
    bool in_range = false;
    switch (mode) {
        case ShuffleMode::index: j = static_cast<int>(min_lane | (b & ~segment_mask)); in_range = j <= static_cast<int>(max_lane); break;
        case ShuffleMode::up: j = static_cast<int>(lane) - static_cast<int>(b); in_range = j >= static_cast<int>(min_lane); break;
        case ShuffleMode::down: j = static_cast<int>(lane + b); in_range = j <= static_cast<int>(max_lane); break;
        case ShuffleMode::bfly: j = static_cast<int>(lane ^ b); in_range = j <= static_cast<int>(max_lane); break;
    }
    return in_range ? static_cast<unsigned>(j) : lane;
}

template <WarpValue T>
inline T shuffle(unsigned mask, T var, ShuffleMode mode, unsigned b, int width) {
    const unsigned lane = current_thread().lane;
    const unsigned src = shuffle_source(mode, lane, b, width);
    unsigned group = 0;
    const unsigned long long* values = warp_barrier(mask, to_slot(var), &group);
    if (src == lane) return var;
    if (((group >> src) & 1u) == 0) return from_slot<T>(poison_bits);  // undefined on the GPU
    return from_slot<T>(values[src]);
}

// The lanes of `group` whose deposited value is nonzero.
inline unsigned ballot_of(const unsigned long long* values, unsigned group) {
    unsigned bits = 0;
    for (unsigned l = 0; l < 32; ++l)
        if (((group >> l) & 1u) && values[l] != 0) bits |= 1u << l;
    return bits;
}

// Round to nearest even from m * 2^e (m < 2^63) to a binary format with `mant_bits`
// stored mantissa bits and normal exponents in [emin, emax]; returns the bit pattern
// without sign. Used for float/double -> half and -> bfloat16.
inline unsigned round_to_small_float(unsigned long long m, int e, int mant_bits, int emin, int emax) {
    if (m == 0) return 0;
    const int top = 63 - __builtin_clzll(m);  // value is in [2^(top+e), 2^(top+e+1))
    const int exponent = top + e;
    if (exponent > emax) return static_cast<unsigned>(emax - emin + 2) << mant_bits;  // infinity
    // Quantum (weight of the last mantissa bit) of the result: normal or subnormal.
    const int quantum = (exponent >= emin ? exponent : emin) - mant_bits;
    const int shift = quantum - e;
    unsigned long long q;
    if (shift <= 0) {
        q = m << -shift;  // exact
    } else if (shift >= 64) {
        q = 0;  // far below half the smallest subnormal
    } else {
        q = m >> shift;
        const unsigned long long rest = m & ((1ull << shift) - 1);
        const unsigned long long half = 1ull << (shift - 1);
        if (rest > half || (rest == half && (q & 1))) ++q;  // ties to even
    }
    if (exponent < emin) return static_cast<unsigned>(q);  // subnormal; q == 2^mant_bits is the smallest normal
    // q in [2^mant_bits, 2^(mant_bits+1)]; the implicit bit carries into the exponent field,
    // and a round-up to 2^(mant_bits+1) carries once more (possibly into infinity).
    return (static_cast<unsigned>(exponent - emin) << mant_bits) + static_cast<unsigned>(q);
}

// float / double -> (sign, m, e) with value = m * 2^e; false for inf/NaN.
inline bool decompose(float f, unsigned& sign, unsigned long long& m, int& e, bool& nan) {
    const unsigned bits = std::bit_cast<unsigned>(f);
    sign = bits >> 31;
    const unsigned exp_field = (bits >> 23) & 0xff, mant = bits & 0x7fffff;
    nan = exp_field == 0xff && mant != 0;
    if (exp_field == 0xff) return false;
    m = exp_field ? (mant | 0x800000u) : mant;
    e = (exp_field ? static_cast<int>(exp_field) : 1) - 150;
    return true;
}
inline bool decompose(double d, unsigned& sign, unsigned long long& m, int& e, bool& nan) {
    const unsigned long long bits = std::bit_cast<unsigned long long>(d);
    sign = static_cast<unsigned>(bits >> 63);
    const unsigned exp_field = static_cast<unsigned>(bits >> 52) & 0x7ff;
    const unsigned long long mant = bits & 0xfffffffffffffull;
    nan = exp_field == 0x7ff && mant != 0;
    if (exp_field == 0x7ff) return false;
    m = exp_field ? (mant | (1ull << 52)) : mant;
    e = (exp_field ? static_cast<int>(exp_field) : 1) - 1075;
    return true;
}

template <class F>
inline unsigned short to_half_bits(F x) {  // IEEE binary16: 5 exponent bits, 10 mantissa bits
    unsigned sign = 0; unsigned long long m = 0; int e = 0; bool nan = false;
    if (!decompose(x, sign, m, e, nan)) return nan ? 0x7fff : static_cast<unsigned short>((sign << 15) | 0x7c00);
    return static_cast<unsigned short>((sign << 15) | round_to_small_float(m, e, 10, -14, 15));
}
template <class F>
inline unsigned short to_bfloat16_bits(F x) {  // bfloat16: 8 exponent bits, 7 mantissa bits
    unsigned sign = 0; unsigned long long m = 0; int e = 0; bool nan = false;
    if (!decompose(x, sign, m, e, nan)) return nan ? 0x7fff : static_cast<unsigned short>((sign << 15) | 0x7f80);
    return static_cast<unsigned short>((sign << 15) | round_to_small_float(m, e, 7, -126, 127));
}
inline float half_bits_to_float(unsigned short h) {  // exact
    const unsigned sign = (h & 0x8000u) << 16, exp_field = (h >> 10) & 0x1f, mant = h & 0x3ffu;
    if (exp_field == 0) {  // zero or subnormal: mant * 2^-24, exact in float
        const float v = static_cast<float>(mant) * 0x1p-24f;
        return sign ? -v : v;
    }
    if (exp_field == 31) return std::bit_cast<float>(sign | 0x7f800000u | (mant << 13));  // inf / NaN
    return std::bit_cast<float>(sign | ((exp_field + 112) << 23) | (mant << 13));
}
inline float bfloat16_bits_to_float(unsigned short b) { return std::bit_cast<float>(static_cast<unsigned>(b) << 16); }

// a*b + c for half or bfloat16 inputs, rounded once in the end: the product of two such
// numbers is exact in double, and the sum is rounded to odd (the error term of the double
// addition decides the last bit), which makes the final rounding to 11 or 8 bits correct.
inline double fma_round_to_odd(float a, float b, float c) {
    const double p = static_cast<double>(a) * b;
    const double s = p + c;
    const double c_part = s - p;
    const double err = (p - (s - c_part)) + (c - c_part);  // exact error of s (TwoSum)
    if (err != 0 && std::isfinite(s) && (std::bit_cast<unsigned long long>(s) & 1) == 0)
        return std::nextafter(s, err > 0 ? HUGE_VAL : -HUGE_VAL);
    return s;
}

// Integer conversions with CUDA's saturation: NaN -> 0, out of range -> the nearest limit.
template <class I>
inline I saturate_to(double rounded) {
    if (std::isnan(rounded)) return 0;
    if (rounded <= static_cast<double>(std::numeric_limits<I>::min())) return std::numeric_limits<I>::min();
    if (rounded >= static_cast<double>(std::numeric_limits<I>::max())) return std::numeric_limits<I>::max();
    return static_cast<I>(rounded);
}

// Read-modify-write with a compare-and-swap loop (atomicMax, atomicInc, ...).
template <class T, class F>
inline T atomic_update(T* address, F next) {
    std::atomic_ref<T> a(*address);
    T old = a.load(std::memory_order_relaxed);
    while (!a.compare_exchange_weak(old, next(old), std::memory_order_relaxed)) {
    }
    return old;
}

}  // namespace scratchnet_emu

// ---------------------------------------------------------------------------------------
// Built-in variables
// ---------------------------------------------------------------------------------------
#define threadIdx (::scratchnet_emu::current_thread().thread_idx)
#define blockIdx (::scratchnet_emu::current_thread().block->block_idx)
#define blockDim (::scratchnet_emu::current_thread().block->block_dim)
#define gridDim (::scratchnet_emu::current_thread().block->grid_dim)
inline constexpr int warpSize = 32;

// `T* name` pointing at this block's dynamic shared memory (size given at launch).
// Use it inside the kernel body. On the GPU, common.cuh maps it to `extern __shared__ T name[]`.
#define SCRATCHNET_DYNAMIC_SHARED(T, name) \
    T* const name = static_cast<T*>(::scratchnet_emu::current_thread().block->dynamic_shared)

// ---------------------------------------------------------------------------------------
// Block barriers
// ---------------------------------------------------------------------------------------
inline void __syncthreads() { ::scratchnet_emu::block_barrier(::scratchnet_emu::BlockReduction::none, 0); }
inline int __syncthreads_count(int predicate) { return ::scratchnet_emu::block_barrier(::scratchnet_emu::BlockReduction::count, predicate); }
inline int __syncthreads_and(int predicate) { return ::scratchnet_emu::block_barrier(::scratchnet_emu::BlockReduction::all, predicate); }
inline int __syncthreads_or(int predicate) { return ::scratchnet_emu::block_barrier(::scratchnet_emu::BlockReduction::any, predicate); }

// ---------------------------------------------------------------------------------------
// Warp barrier and warp intrinsics (all built on scratchnet_emu::warp_barrier)
// ---------------------------------------------------------------------------------------
inline void __syncwarp(unsigned mask = 0xffffffffu) {
    unsigned group;
    ::scratchnet_emu::warp_barrier(mask, ::scratchnet_emu::poison_bits, &group);
}

// T: int, unsigned, long long, unsigned long long, float, double, __half, ... (any
// trivially copyable type of at most 8 bytes).
template <::scratchnet_emu::WarpValue T>
inline T __shfl_sync(unsigned mask, T var, int srcLane, int width = warpSize) {
    return ::scratchnet_emu::shuffle(mask, var, ::scratchnet_emu::ShuffleMode::index, static_cast<unsigned>(srcLane), width);
}
template <::scratchnet_emu::WarpValue T>
inline T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = warpSize) {
    return ::scratchnet_emu::shuffle(mask, var, ::scratchnet_emu::ShuffleMode::up, delta, width);
}
template <::scratchnet_emu::WarpValue T>
inline T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = warpSize) {
    return ::scratchnet_emu::shuffle(mask, var, ::scratchnet_emu::ShuffleMode::down, delta, width);
}
template <::scratchnet_emu::WarpValue T>
inline T __shfl_xor_sync(unsigned mask, T var, int laneMask, int width = warpSize) {
    return ::scratchnet_emu::shuffle(mask, var, ::scratchnet_emu::ShuffleMode::bfly, static_cast<unsigned>(laneMask), width);
}

// Bit N is set when lane N takes part (named in mask, not returned) and its predicate is nonzero.
inline unsigned __ballot_sync(unsigned mask, int predicate) {
    unsigned group;
    const unsigned long long* v = ::scratchnet_emu::warp_barrier(mask, predicate != 0, &group);
    return ::scratchnet_emu::ballot_of(v, group);
}
inline int __any_sync(unsigned mask, int predicate) {
    unsigned group;
    const unsigned long long* v = ::scratchnet_emu::warp_barrier(mask, predicate != 0, &group);
    return ::scratchnet_emu::ballot_of(v, group) != 0;
}
inline int __all_sync(unsigned mask, int predicate) {
    unsigned group;
    const unsigned long long* v = ::scratchnet_emu::warp_barrier(mask, predicate != 0, &group);
    return ::scratchnet_emu::ballot_of(v, group) == group;
}
inline unsigned __activemask() { return ::scratchnet_emu::live_lanes(); }

// Lanes of the group whose value equals the caller's.
template <::scratchnet_emu::WarpValue T>
inline unsigned __match_any_sync(unsigned mask, T value) {
    unsigned group;
    const unsigned long long mine = ::scratchnet_emu::to_slot(value);
    const unsigned long long* v = ::scratchnet_emu::warp_barrier(mask, mine, &group);
    unsigned bits = 0;
    for (unsigned l = 0; l < 32; ++l)
        if (((group >> l) & 1u) && v[l] == mine) bits |= 1u << l;
    return bits;
}
// The group if every lane of it holds the same value (*pred = 1), else 0 (*pred = 0).
template <::scratchnet_emu::WarpValue T>
inline unsigned __match_all_sync(unsigned mask, T value, int* pred) {
    unsigned group;
    const unsigned long long mine = ::scratchnet_emu::to_slot(value);
    const unsigned long long* v = ::scratchnet_emu::warp_barrier(mask, mine, &group);
    for (unsigned l = 0; l < 32; ++l) {
        if (((group >> l) & 1u) && v[l] != mine) {
            *pred = 0;
            return 0u;
        }
    }
    *pred = 1;
    return group;
}

// sm_80 warp reductions over the lanes of the group.
namespace scratchnet_emu {
template <class T, class F>
inline T warp_reduce(unsigned mask, T value, F combine) {
    unsigned group;
    const unsigned long long* v = warp_barrier(mask, to_slot(value), &group);
    T acc = value;
    for (unsigned l = 0; l < 32; ++l)
        if (((group >> l) & 1u) && l != current_thread().lane) acc = combine(acc, from_slot<T>(v[l]));
    return acc;
}
}  // namespace scratchnet_emu
inline unsigned __reduce_add_sync(unsigned mask, unsigned v) { return ::scratchnet_emu::warp_reduce(mask, v, [](unsigned a, unsigned b) { return a + b; }); }
inline int __reduce_add_sync(unsigned mask, int v) { return static_cast<int>(__reduce_add_sync(mask, static_cast<unsigned>(v))); }
inline unsigned __reduce_min_sync(unsigned mask, unsigned v) { return ::scratchnet_emu::warp_reduce(mask, v, [](unsigned a, unsigned b) { return a < b ? a : b; }); }
inline int __reduce_min_sync(unsigned mask, int v) { return ::scratchnet_emu::warp_reduce(mask, v, [](int a, int b) { return a < b ? a : b; }); }
inline unsigned __reduce_max_sync(unsigned mask, unsigned v) { return ::scratchnet_emu::warp_reduce(mask, v, [](unsigned a, unsigned b) { return a > b ? a : b; }); }
inline int __reduce_max_sync(unsigned mask, int v) { return ::scratchnet_emu::warp_reduce(mask, v, [](int a, int b) { return a > b ? a : b; }); }
inline unsigned __reduce_and_sync(unsigned mask, unsigned v) { return ::scratchnet_emu::warp_reduce(mask, v, [](unsigned a, unsigned b) { return a & b; }); }
inline unsigned __reduce_or_sync(unsigned mask, unsigned v) { return ::scratchnet_emu::warp_reduce(mask, v, [](unsigned a, unsigned b) { return a | b; }); }
inline unsigned __reduce_xor_sync(unsigned mask, unsigned v) { return ::scratchnet_emu::warp_reduce(mask, v, [](unsigned a, unsigned b) { return a ^ b; }); }

// Not CUDA API (PTX's %lanemask_* registers); emulator extras.
inline unsigned __lanemask_lt() { return (1u << ::scratchnet_emu::current_thread().lane) - 1u; }
inline unsigned __lanemask_le() { return (2u << ::scratchnet_emu::current_thread().lane) - 1u; }
inline unsigned __lanemask_eq() { return 1u << ::scratchnet_emu::current_thread().lane; }
inline unsigned __lanemask_gt() { return ~__lanemask_le(); }
inline unsigned __lanemask_ge() { return ~__lanemask_lt(); }

// ---------------------------------------------------------------------------------------
// Atomics: return the old value; relaxed ordering, as CUDA's. std::atomic_ref keeps them
// correct even if blocks ran on several OS threads.
// ---------------------------------------------------------------------------------------
#define SCRATCHNET_EMU_FETCH(name, T, op)                                                     \
    inline T name(T* address, T val) { return std::atomic_ref<T>(*address).op(val, std::memory_order_relaxed); }
SCRATCHNET_EMU_FETCH(atomicAdd, int, fetch_add)
SCRATCHNET_EMU_FETCH(atomicAdd, unsigned int, fetch_add)
SCRATCHNET_EMU_FETCH(atomicAdd, unsigned long long, fetch_add)
SCRATCHNET_EMU_FETCH(atomicAdd, float, fetch_add)
SCRATCHNET_EMU_FETCH(atomicAdd, double, fetch_add)
SCRATCHNET_EMU_FETCH(atomicSub, int, fetch_sub)
SCRATCHNET_EMU_FETCH(atomicSub, unsigned int, fetch_sub)
SCRATCHNET_EMU_FETCH(atomicExch, int, exchange)
SCRATCHNET_EMU_FETCH(atomicExch, unsigned int, exchange)
SCRATCHNET_EMU_FETCH(atomicExch, unsigned long long, exchange)
SCRATCHNET_EMU_FETCH(atomicExch, float, exchange)
SCRATCHNET_EMU_FETCH(atomicAnd, int, fetch_and)
SCRATCHNET_EMU_FETCH(atomicAnd, unsigned int, fetch_and)
SCRATCHNET_EMU_FETCH(atomicAnd, unsigned long long, fetch_and)
SCRATCHNET_EMU_FETCH(atomicOr, int, fetch_or)
SCRATCHNET_EMU_FETCH(atomicOr, unsigned int, fetch_or)
SCRATCHNET_EMU_FETCH(atomicOr, unsigned long long, fetch_or)
SCRATCHNET_EMU_FETCH(atomicXor, int, fetch_xor)
SCRATCHNET_EMU_FETCH(atomicXor, unsigned int, fetch_xor)
SCRATCHNET_EMU_FETCH(atomicXor, unsigned long long, fetch_xor)
#undef SCRATCHNET_EMU_FETCH

#define SCRATCHNET_EMU_ATOMIC_MINMAX(T)                                                                        \
    inline T atomicMax(T* address, T val) {                                                             \
        return ::scratchnet_emu::atomic_update(address, [val](T old) { return old < val ? val : old; }); \
    }                                                                                                   \
    inline T atomicMin(T* address, T val) {                                                             \
        return ::scratchnet_emu::atomic_update(address, [val](T old) { return val < old ? val : old; }); \
    }
SCRATCHNET_EMU_ATOMIC_MINMAX(int)
SCRATCHNET_EMU_ATOMIC_MINMAX(unsigned int)
SCRATCHNET_EMU_ATOMIC_MINMAX(long long)
SCRATCHNET_EMU_ATOMIC_MINMAX(unsigned long long)
#undef SCRATCHNET_EMU_ATOMIC_MINMAX

#define SCRATCHNET_EMU_CAS(T)                                                         \
    inline T atomicCAS(T* address, T compare, T val) {                                \
        std::atomic_ref<T>(*address).compare_exchange_strong(compare, val, std::memory_order_relaxed); \
        return compare; /* the old value, whether or not it was replaced */           \
    }
SCRATCHNET_EMU_CAS(int)
SCRATCHNET_EMU_CAS(unsigned int)
SCRATCHNET_EMU_CAS(unsigned long long)
#undef SCRATCHNET_EMU_CAS

// ((old >= val) ? 0 : old + 1) and (((old == 0) || (old > val)) ? val : old - 1), as in CUDA.
inline unsigned atomicInc(unsigned* address, unsigned val) {
    return ::scratchnet_emu::atomic_update(address, [val](unsigned old) { return old >= val ? 0u : old + 1u; });
}
inline unsigned atomicDec(unsigned* address, unsigned val) {
    return ::scratchnet_emu::atomic_update(address, [val](unsigned old) { return (old == 0 || old > val) ? val : old - 1u; });
}

// ---------------------------------------------------------------------------------------
// Fences. All threads of a block share one OS thread, so a compiler barrier is enough
// inside a block; across blocks use a real fence.
// ---------------------------------------------------------------------------------------
inline void __threadfence_block() { std::atomic_signal_fence(std::memory_order_seq_cst); }
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence_system() { std::atomic_thread_fence(std::memory_order_seq_cst); }

// ---------------------------------------------------------------------------------------
// Misc device functions
// ---------------------------------------------------------------------------------------
[[noreturn]] inline void __trap() { std::fprintf(stderr, "scratchnet emulator: __trap() called\n"); std::abort(); }
inline void __nanosleep(unsigned) {}

// Cached / streaming loads and stores: plain memory accesses here.
template <class T> inline T __ldg(const T* p) { return *p; }
template <class T> inline T __ldcg(const T* p) { return *p; }
template <class T> inline T __ldca(const T* p) { return *p; }
template <class T> inline T __ldcs(const T* p) { return *p; }
template <class T> inline T __ldlu(const T* p) { return *p; }
template <class T> inline T __ldcv(const T* p) { return *p; }
template <class T> inline void __stwb(T* p, T v) { *p = v; }
template <class T> inline void __stcg(T* p, T v) { *p = v; }
template <class T> inline void __stcs(T* p, T v) { *p = v; }
template <class T> inline void __stwt(T* p, T v) { *p = v; }

// ---------------------------------------------------------------------------------------
// Integer intrinsics
// ---------------------------------------------------------------------------------------
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(static_cast<unsigned>(x)); }
inline int __clzll(long long x) { return x == 0 ? 64 : __builtin_clzll(static_cast<unsigned long long>(x)); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline unsigned __brev(unsigned x) {
    unsigned r = 0;
    for (int i = 0; i < 32; ++i) r |= ((x >> i) & 1u) << (31 - i);
    return r;
}
inline unsigned long long __brevll(unsigned long long x) {
    return (static_cast<unsigned long long>(__brev(static_cast<unsigned>(x))) << 32) | __brev(static_cast<unsigned>(x >> 32));
}
inline unsigned __byte_perm(unsigned x, unsigned y, unsigned s) {
    const unsigned long long bytes = (static_cast<unsigned long long>(y) << 32) | x;
    unsigned r = 0;
    for (int i = 0; i < 4; ++i) r |= static_cast<unsigned>((bytes >> (8 * ((s >> (4 * i)) & 7))) & 0xff) << (8 * i);
    return r;
}
inline unsigned __umulhi(unsigned a, unsigned b) { return static_cast<unsigned>((static_cast<unsigned long long>(a) * b) >> 32); }
inline int __mulhi(int a, int b) { return static_cast<int>((static_cast<long long>(a) * b) >> 32); }
inline unsigned long long __umul64hi(unsigned long long a, unsigned long long b) {
    return static_cast<unsigned long long>((static_cast<unsigned __int128>(a) * b) >> 64);
}
inline long long __mul64hi(long long a, long long b) { return static_cast<long long>((static_cast<__int128>(a) * b) >> 64); }
// Products of the low 24 bits (sign-extended for __mul24).
inline int __mul24(int a, int b) {
    const int a24 = static_cast<int>(static_cast<unsigned>(a) << 8) >> 8, b24 = static_cast<int>(static_cast<unsigned>(b) << 8) >> 8;
    return static_cast<int>(static_cast<unsigned>(static_cast<long long>(a24) * b24));
}
inline unsigned __umul24(unsigned a, unsigned b) { return (a & 0xffffffu) * (b & 0xffffffu); }

// CUDA's min/max, in the global namespace as in CUDA, with CUDA's set of overloads (so
// that code compiling here also compiles with nvcc). std::min/std::max are unaffected.
#define SCRATCHNET_EMU_MINMAX(R, A, B)                                                        \
    inline R min(A a, B b) { return static_cast<R>(a) < static_cast<R>(b) ? static_cast<R>(a) : static_cast<R>(b); } \
    inline R max(A a, B b) { return static_cast<R>(a) > static_cast<R>(b) ? static_cast<R>(a) : static_cast<R>(b); }
SCRATCHNET_EMU_MINMAX(int, int, int)
SCRATCHNET_EMU_MINMAX(unsigned int, unsigned int, unsigned int)
SCRATCHNET_EMU_MINMAX(unsigned int, int, unsigned int)
SCRATCHNET_EMU_MINMAX(unsigned int, unsigned int, int)
SCRATCHNET_EMU_MINMAX(long, long, long)
SCRATCHNET_EMU_MINMAX(unsigned long, unsigned long, unsigned long)
SCRATCHNET_EMU_MINMAX(unsigned long, long, unsigned long)
SCRATCHNET_EMU_MINMAX(unsigned long, unsigned long, long)
SCRATCHNET_EMU_MINMAX(long long, long long, long long)
SCRATCHNET_EMU_MINMAX(unsigned long long, unsigned long long, unsigned long long)
SCRATCHNET_EMU_MINMAX(unsigned long long, long long, unsigned long long)
SCRATCHNET_EMU_MINMAX(unsigned long long, unsigned long long, long long)
#undef SCRATCHNET_EMU_MINMAX
inline unsigned umin(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned umax(unsigned a, unsigned b) { return a > b ? a : b; }
inline long long llmin(long long a, long long b) { return a < b ? a : b; }
inline long long llmax(long long a, long long b) { return a > b ? a : b; }
inline unsigned long long ullmin(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
inline unsigned long long ullmax(unsigned long long a, unsigned long long b) { return a > b ? a : b; }
// Floating point: like fminf/fmaxf (a NaN argument loses to a number).
inline float min(float a, float b) { return std::fmin(a, b); }
inline float max(float a, float b) { return std::fmax(a, b); }
inline double min(double a, double b) { return std::fmin(a, b); }
inline double max(double a, double b) { return std::fmax(a, b); }
inline double min(float a, double b) { return std::fmin(static_cast<double>(a), b); }
inline double max(float a, double b) { return std::fmax(static_cast<double>(a), b); }
inline double min(double a, float b) { return std::fmin(a, static_cast<double>(b)); }
inline double max(double a, float b) { return std::fmax(a, static_cast<double>(b)); }

// ---------------------------------------------------------------------------------------
// Float intrinsics. <cmath>'s float functions (expf, logf, sqrtf, powf, fmaxf, tanhf,
// erff, ...) are available as they are. The fast-math ones are exact here.
// ---------------------------------------------------------------------------------------
// glibc's <math.h> declares (but does not export) __expf, __logf, ... so these must be
// macros rather than functions.
#define __expf(x) (::expf(x))
#define __exp10f(x) (::exp10f(x))
#define __logf(x) (::logf(x))
#define __log2f(x) (::log2f(x))
#define __log10f(x) (::log10f(x))
#define __powf(x, y) (::powf((x), (y)))
#define __sinf(x) (::sinf(x))
#define __cosf(x) (::cosf(x))
#define __tanf(x) (::tanf(x))
#define __sincosf(x, s, c) (::sincosf((x), (s), (c)))

inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
inline float rcbrtf(float x) { return 1.0f / std::cbrt(x); }
inline float fdividef(float a, float b) { return a / b; }
inline float __fdividef(float a, float b) { return a / b; }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __fsqrt_rn(float x) { return std::sqrt(x); }
inline float __frsqrt_rn(float x) { return 1.0f / std::sqrt(x); }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline double __fma_rn(double a, double b, double c) { return std::fma(a, b, c); }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dsub_rn(double a, double b) { return a - b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __ddiv_rn(double a, double b) { return a / b; }
inline double __drcp_rn(double x) { return 1.0 / x; }
inline double __dsqrt_rn(double x) { return std::sqrt(x); }
// Clamp to [0, 1]; NaN gives 0.
inline float __saturatef(float x) { return x >= 1.0f ? 1.0f : (x > 0.0f ? x : 0.0f); }
// Standard normal CDF, and its double version.
inline float normcdff(float x) { return 0.5f * std::erfc(-x * 0.70710678118654752f); }
inline double normcdf(double x) { return 0.5 * std::erfc(-x * 0.70710678118654752440); }

// Bit casts.
inline float __int_as_float(int x) { return std::bit_cast<float>(x); }
inline int __float_as_int(float x) { return std::bit_cast<int>(x); }
inline float __uint_as_float(unsigned x) { return std::bit_cast<float>(x); }
inline unsigned __float_as_uint(float x) { return std::bit_cast<unsigned>(x); }
inline double __longlong_as_double(long long x) { return std::bit_cast<double>(x); }
inline long long __double_as_longlong(double x) { return std::bit_cast<long long>(x); }
inline int __double2hiint(double x) { return static_cast<int>(std::bit_cast<unsigned long long>(x) >> 32); }
inline int __double2loint(double x) { return static_cast<int>(std::bit_cast<unsigned long long>(x)); }
inline double __hiloint2double(int hi, int lo) {
    return std::bit_cast<double>((static_cast<unsigned long long>(static_cast<unsigned>(hi)) << 32) | static_cast<unsigned>(lo));
}

// Conversions: _rn nearest even, _rz toward zero, _rd down, _ru up; saturating, NaN -> 0.
inline int __float2int_rn(float x) { return ::scratchnet_emu::saturate_to<int>(std::nearbyint(static_cast<double>(x))); }
inline int __float2int_rz(float x) { return ::scratchnet_emu::saturate_to<int>(std::trunc(static_cast<double>(x))); }
inline int __float2int_rd(float x) { return ::scratchnet_emu::saturate_to<int>(std::floor(static_cast<double>(x))); }
inline int __float2int_ru(float x) { return ::scratchnet_emu::saturate_to<int>(std::ceil(static_cast<double>(x))); }
inline unsigned __float2uint_rn(float x) { return ::scratchnet_emu::saturate_to<unsigned>(std::nearbyint(static_cast<double>(x))); }
inline unsigned __float2uint_rz(float x) { return ::scratchnet_emu::saturate_to<unsigned>(std::trunc(static_cast<double>(x))); }
inline unsigned __float2uint_rd(float x) { return ::scratchnet_emu::saturate_to<unsigned>(std::floor(static_cast<double>(x))); }
inline unsigned __float2uint_ru(float x) { return ::scratchnet_emu::saturate_to<unsigned>(std::ceil(static_cast<double>(x))); }
inline long long __float2ll_rn(float x) { return ::scratchnet_emu::saturate_to<long long>(std::nearbyint(static_cast<double>(x))); }
inline long long __float2ll_rz(float x) { return ::scratchnet_emu::saturate_to<long long>(std::trunc(static_cast<double>(x))); }
inline int __double2int_rn(double x) { return ::scratchnet_emu::saturate_to<int>(std::nearbyint(x)); }
inline int __double2int_rz(double x) { return ::scratchnet_emu::saturate_to<int>(std::trunc(x)); }
inline float __int2float_rn(int x) { return static_cast<float>(x); }
inline float __uint2float_rn(unsigned x) { return static_cast<float>(x); }
inline float __ll2float_rn(long long x) { return static_cast<float>(x); }
inline float __ull2float_rn(unsigned long long x) { return static_cast<float>(x); }
inline double __int2double_rn(int x) { return static_cast<double>(x); }
inline float __double2float_rn(double x) { return static_cast<float>(x); }

// ---------------------------------------------------------------------------------------
// Half precision (IEEE binary16) and bfloat16: 2-byte storage types; arithmetic goes
// through float and rounds back to nearest even (for + - * / this gives the correctly
// rounded result, as native half arithmetic does). As in CUDA, mixing __half and float
// in one operator is ambiguous: convert explicitly.
// ---------------------------------------------------------------------------------------
struct alignas(2) __half {
    unsigned short __x;  // the bit pattern
    __half() = default;
    __half(float f) : __x(::scratchnet_emu::to_half_bits(f)) {}
    __half(double d) : __x(::scratchnet_emu::to_half_bits(d)) {}
    // Integers convert by value (round to nearest even), one constructor per type so that
    // `__half h = 0;` is not ambiguous.
    __half(short i) : __half(static_cast<double>(i)) {}
    __half(unsigned short i) : __half(static_cast<double>(i)) {}
    __half(int i) : __half(static_cast<double>(i)) {}
    __half(unsigned i) : __half(static_cast<double>(i)) {}
    __half(long i) : __half(static_cast<double>(i)) {}
    __half(unsigned long i) : __half(static_cast<double>(i)) {}
    __half(long long i) : __half(static_cast<double>(i)) {}
    __half(unsigned long long i) : __half(static_cast<double>(i)) {}
    operator float() const { return ::scratchnet_emu::half_bits_to_float(__x); }
};
struct alignas(2) __nv_bfloat16 {
    unsigned short __x;
    __nv_bfloat16() = default;
    __nv_bfloat16(float f) : __x(::scratchnet_emu::to_bfloat16_bits(f)) {}
    __nv_bfloat16(double d) : __x(::scratchnet_emu::to_bfloat16_bits(d)) {}
    __nv_bfloat16(short i) : __nv_bfloat16(static_cast<double>(i)) {}
    __nv_bfloat16(unsigned short i) : __nv_bfloat16(static_cast<double>(i)) {}
    __nv_bfloat16(int i) : __nv_bfloat16(static_cast<double>(i)) {}
    __nv_bfloat16(unsigned i) : __nv_bfloat16(static_cast<double>(i)) {}
    __nv_bfloat16(long i) : __nv_bfloat16(static_cast<double>(i)) {}
    __nv_bfloat16(unsigned long i) : __nv_bfloat16(static_cast<double>(i)) {}
    __nv_bfloat16(long long i) : __nv_bfloat16(static_cast<double>(i)) {}
    __nv_bfloat16(unsigned long long i) : __nv_bfloat16(static_cast<double>(i)) {}
    operator float() const { return ::scratchnet_emu::bfloat16_bits_to_float(__x); }
};
typedef __half half;
typedef __nv_bfloat16 nv_bfloat16;

inline __half __float2half(float f) { return __half(f); }
inline __half __float2half_rn(float f) { return __half(f); }
inline __half __double2half(double d) { return __half(d); }
inline float __half2float(__half h) { return static_cast<float>(h); }
inline unsigned short __half_as_ushort(__half h) { return h.__x; }
inline short __half_as_short(__half h) { return static_cast<short>(h.__x); }
inline __half __ushort_as_half(unsigned short b) { __half h; h.__x = b; return h; }
inline __half __short_as_half(short b) { __half h; h.__x = static_cast<unsigned short>(b); return h; }
inline __nv_bfloat16 __float2bfloat16(float f) { return __nv_bfloat16(f); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __nv_bfloat16(f); }
inline __nv_bfloat16 __double2bfloat16(double d) { return __nv_bfloat16(d); }
inline float __bfloat162float(__nv_bfloat16 b) { return static_cast<float>(b); }
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 b) { return b.__x; }
inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short x) { __nv_bfloat16 b; b.__x = x; return b; }

#define SCRATCHNET_EMU_SMALL_FLOAT_OPS(H, P)                                                   \
    inline H operator+(H a, H b) { return H(static_cast<float>(a) + static_cast<float>(b)); }  \
    inline H operator-(H a, H b) { return H(static_cast<float>(a) - static_cast<float>(b)); }  \
    inline H operator*(H a, H b) { return H(static_cast<float>(a) * static_cast<float>(b)); }  \
    inline H operator/(H a, H b) { return H(static_cast<float>(a) / static_cast<float>(b)); }  \
    inline H operator-(H a) { H r = a; r.__x ^= 0x8000u; return r; }                            \
    inline H operator+(H a) { return a; }                                                       \
    inline H& operator+=(H& a, H b) { return a = a + b; }                                       \
    inline H& operator-=(H& a, H b) { return a = a - b; }                                       \
    inline H& operator*=(H& a, H b) { return a = a * b; }                                       \
    inline H& operator/=(H& a, H b) { return a = a / b; }                                       \
    inline bool operator==(H a, H b) { return static_cast<float>(a) == static_cast<float>(b); } \
    inline bool operator!=(H a, H b) { return static_cast<float>(a) != static_cast<float>(b); } \
    inline bool operator<(H a, H b) { return static_cast<float>(a) < static_cast<float>(b); }   \
    inline bool operator<=(H a, H b) { return static_cast<float>(a) <= static_cast<float>(b); } \
    inline bool operator>(H a, H b) { return static_cast<float>(a) > static_cast<float>(b); }   \
    inline bool operator>=(H a, H b) { return static_cast<float>(a) >= static_cast<float>(b); } \
    inline H P##add(H a, H b) { return a + b; }                                                 \
    inline H P##sub(H a, H b) { return a - b; }                                                 \
    inline H P##mul(H a, H b) { return a * b; }                                                 \
    inline H P##div(H a, H b) { return a / b; }                                                 \
    inline H P##neg(H a) { return -a; }                                                         \
    inline H P##abs(H a) { H r = a; r.__x &= 0x7fffu; return r; }                               \
    inline H P##fma(H a, H b, H c) { return H(::scratchnet_emu::fma_round_to_odd(a, b, c)); } \
    inline bool P##eq(H a, H b) { return a == b; }                                              \
    inline bool P##ne(H a, H b) { return a != b; }                                              \
    inline bool P##lt(H a, H b) { return a < b; }                                               \
    inline bool P##le(H a, H b) { return a <= b; }                                              \
    inline bool P##gt(H a, H b) { return a > b; }                                               \
    inline bool P##ge(H a, H b) { return a >= b; }                                              \
    inline bool P##isnan(H a) { return std::isnan(static_cast<float>(a)); }                     \
    inline int P##isinf(H a) { const float f = static_cast<float>(a); return std::isinf(f) ? (f > 0 ? 1 : -1) : 0; } \
    inline H P##max(H a, H b) { return H(std::fmax(static_cast<float>(a), static_cast<float>(b))); } \
    inline H P##min(H a, H b) { return H(std::fmin(static_cast<float>(a), static_cast<float>(b))); }
SCRATCHNET_EMU_SMALL_FLOAT_OPS(__half, __h)
SCRATCHNET_EMU_SMALL_FLOAT_OPS(__nv_bfloat16, __h)
#undef SCRATCHNET_EMU_SMALL_FLOAT_OPS

// A pair of halves (4 bytes), the basic conversions and lane-wise arithmetic.
struct alignas(4) __half2 {
    __half x, y;
};
typedef __half2 half2;
inline __half2 __halves2half2(__half a, __half b) { return __half2{a, b}; }
inline __half2 __floats2half2_rn(float a, float b) { return __half2{__half(a), __half(b)}; }
inline __half2 __float2half2_rn(float a) { return __half2{__half(a), __half(a)}; }
inline __half2 __float22half2_rn(float2 f) { return __half2{__half(f.x), __half(f.y)}; }
inline float2 __half22float2(__half2 h) { return float2{static_cast<float>(h.x), static_cast<float>(h.y)}; }
inline float __low2float(__half2 h) { return static_cast<float>(h.x); }
inline float __high2float(__half2 h) { return static_cast<float>(h.y); }
inline __half __low2half(__half2 h) { return h.x; }
inline __half __high2half(__half2 h) { return h.y; }
inline __half2 __hadd2(__half2 a, __half2 b) { return __half2{a.x + b.x, a.y + b.y}; }
inline __half2 __hsub2(__half2 a, __half2 b) { return __half2{a.x - b.x, a.y - b.y}; }
inline __half2 __hmul2(__half2 a, __half2 b) { return __half2{a.x * b.x, a.y * b.y}; }
inline __half2 __hfma2(__half2 a, __half2 b, __half2 c) { return __half2{__hfma(a.x, b.x, c.x), __hfma(a.y, b.y, c.y)}; }
