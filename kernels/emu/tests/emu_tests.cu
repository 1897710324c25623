// emu_tests.cu — kernels that test the CPU emulator itself (kernels/emu/). They are compiled
// only for the emulator, never by nvcc. Each one exercises one part of cuda_emu.h /
// runtime.cpp; the comment above each kernel says how to launch it and what to expect.
// Some test emulator-only behaviour (poisoned values, the deadlock message) and would
// not give the same results on a GPU.
//
// What the emulator does, in short: the blocks of a grid run one after another on one OS
// thread, the threads of a block run as fibers that switch at barriers (__syncthreads,
// __syncwarp and the *_sync warp intrinsics), `__shared__` is `static thread_local`, and
// warp intrinsics exchange values through a per-warp barrier. See cuda_emu.h.
#include "common.cuh"

// Sum of x[0..n) into *out (which starts at 0): grid-stride loop, shared-memory tree
// reduction, one atomicAdd per block. Launch with blockDim.x = 256 (a power of two <= 256).
extern "C" __global__ void __launch_bounds__(256) emu_test_block_sum_f32(float* __restrict__ out, const float* __restrict__ x, long long n) {
    __shared__ float partial[256];
    float s = 0.f;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) s += x[i];
    partial[threadIdx.x] = s;
    __syncthreads();
    for (unsigned stride = blockDim.x / 2; stride > 0; stride >>= 1) {
        if (threadIdx.x < stride) partial[threadIdx.x] += partial[threadIdx.x + stride];
        __syncthreads();
    }
    if (threadIdx.x == 0) atomicAdd(out, partial[0]);
}

// The same with a 2-D or 3-D block (for example 16x8x1 or 8x4x2, at most 256 threads in
// all, a power of two): threads are numbered tid = x + y*bx + z*bx*by. Block b sums
// x[b*T .. b*T+T) (T = threads per block, n >= gridDim.x*T) into out[b].
extern "C" __global__ void emu_test_block_sum_2d(float* out, const float* x, long long n) {
    __shared__ float partial[256];
    const unsigned threads = blockDim.x * blockDim.y * blockDim.z;
    const unsigned tid = threadIdx.x + threadIdx.y * blockDim.x + threadIdx.z * blockDim.x * blockDim.y;
    const long long i = (long long)blockIdx.x * threads + tid;
    partial[tid] = i < n ? x[i] : 0.f;
    __syncthreads();
    for (unsigned stride = threads / 2; stride > 0; stride >>= 1) {
        if (tid < stride) partial[tid] += partial[tid + stride];
        __syncthreads();
    }
    if (tid == 0) out[blockIdx.x] = partial[0];
}

__device__ __forceinline__ float emu_test_warp_sum_down(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float emu_test_warp_sum_xor(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// Warp sums of x (0 past n). Lane 0 of each warp writes its __shfl_down_sync sum to
// down_out[global warp index]; every thread writes its __shfl_xor_sync sum (the same in
// all lanes of a warp) to xor_out[global thread index]. blockDim.x: a multiple of 32.
extern "C" __global__ void emu_test_warp_sums(float* down_out, float* xor_out, const float* x, int n) {
    const int gid = blockIdx.x * blockDim.x + threadIdx.x;
    const float v = gid < n ? x[gid] : 0.f;
    const float down = emu_test_warp_sum_down(v);
    const float butterfly = emu_test_warp_sum_xor(v);
    if ((threadIdx.x & 31) == 0) down_out[gid / 32] = down;
    xor_out[gid] = butterfly;
}

// Every shuffle flavour with a given width (1, 2, 4, 8, 16 or 32). Thread t (global id)
// shuffles the value 1000 + t and writes out[5t + k]:
//   k=0 __shfl_sync(src = 7*lane + 3)   k=1 __shfl_up_sync(3)   k=2 __shfl_down_sync(5)
//   k=3 __shfl_xor_sync(6)              k=4 __shfl_sync(src = -1)
// and dout[t] = __shfl_down_sync((double)t + 0.5, 1) and llout[t] = __shfl_xor_sync((long long)t << 33, 1).
// blockDim.x: a multiple of 32.
extern "C" __global__ void emu_test_shuffles(int* out, double* dout, long long* llout, int width) {
    const int t = blockIdx.x * blockDim.x + threadIdx.x;
    const int lane = threadIdx.x & 31;
    const int v = 1000 + t;
    out[5 * t + 0] = __shfl_sync(0xffffffffu, v, 7 * lane + 3, width);
    out[5 * t + 1] = __shfl_up_sync(0xffffffffu, v, 3, width);
    out[5 * t + 2] = __shfl_down_sync(0xffffffffu, v, 5, width);
    out[5 * t + 3] = __shfl_xor_sync(0xffffffffu, v, 6, width);
    out[5 * t + 4] = __shfl_sync(0xffffffffu, v, -1, width);
    dout[t] = __shfl_down_sync(0xffffffffu, (double)t + 0.5, 1, width);
    llout[t] = __shfl_xor_sync(0xffffffffu, (long long)t << 33, 1, width);
}

// Votes on pred[t] (global thread t): ballot_out[t], any_out[t], all_out[t], and the same
// with the mask 0x0000ffff from lanes 0..15 only (lanes 16..31 write 0): ballot16_out[t].
extern "C" __global__ void emu_test_votes(unsigned* ballot_out, int* any_out, int* all_out, unsigned* ballot16_out, const int* pred) {
    const int t = blockIdx.x * blockDim.x + threadIdx.x;
    const int p = pred[t];
    ballot_out[t] = __ballot_sync(0xffffffffu, p);
    any_out[t] = __any_sync(0xffffffffu, p);
    all_out[t] = __all_sync(0xffffffffu, p);
    unsigned b16 = 0;
    if ((threadIdx.x & 31) < 16) b16 = __ballot_sync(0x0000ffffu, p);
    ballot16_out[t] = b16;
}

// Atomics from many blocks over x[0..n): *fsum += x[i] (float), *dsum += x[i] (double),
// *icount += 1 and *ucount += 2 per element, *imax / *imin = max / min of (int)(x[i]*1000),
// *cas_count += 1 per element through an atomicCAS loop, *sub_count -= 1 per element.
extern "C" __global__ void emu_test_atomics(float* fsum, double* dsum, int* icount, unsigned long long* ucount, int* imax, int* imin, unsigned* cas_count, int* sub_count, const float* x, long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        atomicAdd(fsum, x[i]);
        atomicAdd(dsum, (double)x[i]);
        atomicAdd(icount, 1);
        atomicAdd(ucount, 2ull);
        const int q = (int)(x[i] * 1000.f);
        atomicMax(imax, q);
        atomicMin(imin, q);
        unsigned old = *cas_count, assumed;
        do {
            assumed = old;
            old = atomicCAS(cas_count, assumed, assumed + 1u);
        } while (old != assumed);
        atomicSub(sub_count, 1);
    }
}

// A block of 40 threads: warp 0 has 32 lanes, warp 1 only 8. Per thread t (global id):
// ballot_out[t] = __ballot_sync(full, 1) and active_out[t] = __activemask() (0xffffffff in
// warp 0, 0x000000ff in warp 1); poison_out[t] = __shfl_down_sync(full, x, 4): in warp 1,
// lanes 4..7 would read lanes 8..11, which do not exist -> NaN in the emulator (undefined
// on a GPU). sum_out[block] = sum of the block's 40 values of x, by a warp reduction that
// guards the missing lanes, then shared memory.
extern "C" __global__ void emu_test_partial_warp(float* sum_out, unsigned* ballot_out, unsigned* active_out, float* poison_out, const float* x) {
    __shared__ float warp_sums[32];
    const unsigned t = blockIdx.x * blockDim.x + threadIdx.x;
    const unsigned lane = threadIdx.x & 31, warp = threadIdx.x / 32;
    const unsigned lanes_here = min(32u, blockDim.x - warp * 32);
    float v = x[t];
    ballot_out[t] = __ballot_sync(0xffffffffu, 1);
    active_out[t] = __activemask();
    poison_out[t] = __shfl_down_sync(0xffffffffu, v, 4);
    for (unsigned o = 16; o > 0; o >>= 1) {
        const float other = __shfl_down_sync(0xffffffffu, v, o);
        if (lane + o < lanes_here) v += other;
    }
    if (lane == 0) warp_sums[warp] = v;
    __syncthreads();
    if (threadIdx.x == 0) {
        float s = 0.f;
        for (unsigned w = 0; w < (blockDim.x + 31) / 32; ++w) s += warp_sums[w];
        sum_out[blockIdx.x] = s;
    }
}

// Dynamic shared memory: launch with (blockDim.x + 1) * sizeof(float) bytes. Block b
// reverses its slice of x into out; poison_out[b] = the extra element, which no thread
// wrote in this block -> NaN (0xFF bytes), although the previous block wrote 123 there.
extern "C" __global__ void emu_test_dynamic_shared(float* out, float* poison_out, const float* x) {
    SCRATCHNET_DYNAMIC_SHARED(float, buf);
    const unsigned t = blockIdx.x * blockDim.x + threadIdx.x;
    buf[threadIdx.x] = x[t];
    __syncthreads();
    out[t] = buf[blockDim.x - 1 - threadIdx.x];
    if (threadIdx.x == 0) {
        poison_out[blockIdx.x] = buf[blockDim.x];
        buf[blockDim.x] = 123.f;
    }
}

// Early return: threads with threadIdx.x >= active return at once; the others pass
// several __syncthreads (returned threads count as arrived). Per block b:
//   out[4b+0] = sum of (tid+1) over tid < active (tree reduction over 256 slots)
//   out[4b+1] = __syncthreads_count(tid % 3 == 0) over the active threads
//   out[4b+2] = __syncthreads_and(tid < active)   (1)
//   out[4b+3] = __syncthreads_or(tid == active-1) (1)
// blockDim.x = 256.
extern "C" __global__ void emu_test_early_return(int* out, int active) {
    __shared__ int s[256];
    const unsigned tid = threadIdx.x;
    if ((int)tid >= active) return;
    s[tid] = (int)tid + 1;
    for (unsigned i = active; i < 256; i += active) {  // fill the slots of the returned threads with 0
        if (tid + i < 256) s[tid + i] = 0;
    }
    __syncthreads();
    for (unsigned stride = 128; stride > 0; stride >>= 1) {
        if (tid < stride) s[tid] += s[tid + stride];
        __syncthreads();
    }
    const int count = __syncthreads_count(tid % 3 == 0);
    const int all = __syncthreads_and((int)tid < active);
    const int any = __syncthreads_or((int)tid == active - 1);
    if (tid == 0) {
        out[4 * blockIdx.x + 0] = s[0];
        out[4 * blockIdx.x + 1] = count;
        out[4 * blockIdx.x + 2] = all;
        out[4 * blockIdx.x + 3] = any;
    }
}

// A deliberately broken barrier: in block 3, thread 5 waits at __syncwarp while the 31
// other threads wait at __syncthreads. Launch with 32 threads and at least 4 blocks: the
// launch must fail with "__syncthreads() reached by 31 of 32 live threads of block
// (3,0,0)...", not hang. out[block*32 + thread] = 1 for every thread that got past.
extern "C" __global__ void emu_test_divergent_barrier(int* out) {
    if (blockIdx.x == 3 && threadIdx.x == 5)
        __syncwarp();
    else
        __syncthreads();
    out[blockIdx.x * blockDim.x + threadIdx.x] = 1;
}

// Exchange through shared memory inside a warp, with __syncwarp between writes and reads,
// and the two half-warps in different branches with their own masks. Thread t writes
// out[t] = the value written by its neighbour (lane ^ 1) plus, for lanes 16..31, the
// value of lane (lane ^ 16) through a full-warp __syncwarp afterwards. blockDim.x = 64.
extern "C" __global__ void emu_test_syncwarp_masks(int* out) {
    __shared__ int v[64];
    const unsigned tid = threadIdx.x, lane = tid & 31, base = tid - lane;
    v[tid] = 10 * (int)tid;
    int got;
    if (lane < 16) {
        __syncwarp(0x0000ffffu);
        got = v[base + (lane ^ 1)];
        __syncwarp(0x0000ffffu);
    } else {
        __syncwarp(0xffff0000u);
        got = v[base + (lane ^ 1)];
        __syncwarp(0xffff0000u);
    }
    v[tid] = got;
    __syncwarp();
    out[blockIdx.x * blockDim.x + tid] = got + (lane >= 16 ? v[base + (lane ^ 16)] : 0);
}

// Half / bfloat16 conversions and arithmetic, one element per thread:
// h[i] = bits of __float2half(x[i]), b[i] = bits of __float2bfloat16(x[i]),
// back[i] = __half2float(h) + __bfloat162float(b), hsum[i] = bits of (h + h) * h.
extern "C" __global__ void emu_test_half(unsigned short* h, unsigned short* b, float* back, unsigned short* hsum, const float* x, long long n) {
    const long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (i >= n) return;
    const __half hv = __float2half(x[i]);
    const __nv_bfloat16 bv = __float2bfloat16(x[i]);
    h[i] = __half_as_ushort(hv);
    b[i] = __bfloat16_as_ushort(bv);
    back[i] = __half2float(hv) + __bfloat162float(bv);
    hsum[i] = __half_as_ushort((hv + hv) * hv);
}

// For timing: one store per thread, out[global id] = global id.
extern "C" __global__ void emu_test_trivial(float* out) {
    const unsigned t = blockIdx.x * blockDim.x + threadIdx.x;
    out[t] = (float)t;
}

// For timing: two __syncthreads per block. out[t] = 2 * x[block start + (tid + 1) % blockDim.x]. blockDim.x <= 256.
extern "C" __global__ void emu_test_two_barriers(float* out, const float* x) {
    __shared__ float s[256];
    const unsigned tid = threadIdx.x, t = blockIdx.x * blockDim.x + tid;
    s[tid] = x[t];
    __syncthreads();
    const float next = s[(tid + 1) % blockDim.x];
    __syncthreads();
    s[tid] = 2.f * next;
    out[t] = s[tid];
}

// Deliberately out of bounds: thread 0 of block 0 reads x[n], one past the end of a
// buffer of n floats. Only for checking that a build with -fsanitize=address reports a
// heap-buffer-overflow; do not launch it in a normal test.
extern "C" __global__ void emu_test_read_past_end(float* out, const float* x, long long n) {
    if (blockIdx.x == 0 && threadIdx.x == 0) out[0] = x[n];
}
