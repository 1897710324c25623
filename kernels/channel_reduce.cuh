// Per-channel sums over an N×C×HW tensor, spread over many blocks.
//
// Batch norm's statistics and gradients, and a bias gradient, are sums over the N·HW values
// of each channel. One block per channel (the plain kernels in batchnorm.cu) leaves a large
// GPU mostly idle when the channels are few and large: ResNet-50's first batch norm at batch
// 64 has 64 channels of 802,816 values, so 64 blocks for 132 SMs. Here each channel's values
// are cut into S slices of `chunk` consecutive values (in n, then pixel order), and block
// (s, c) of a (S, C) grid sums slice s of channel c into `partial[(c·S + s)·K + k]`, K sums
// per slice. A second, tiny kernel adds the S partial sums of each channel, in slice order,
// so the result does not depend on scheduling.
//
// A slice crosses plane boundaries (a plane is one image's HW values of one channel), so the
// walk goes plane segment by plane segment. When HW is a multiple of 4 and `chunk` too (the
// host makes it so), every segment starts 16-byte aligned and holds whole groups of 4, and
// the visitor gets 4 values at a time (one 128-bit load per tensor).
#pragma once
#include "common.cuh"

// Calls visit(offset, count) for every value of slice [begin, end) of channel c, where
// `offset` is the index into the N×C×HW tensor and count is 4 (offset..offset+3, aligned) or
// 1. Each thread of the block visits its share; together they visit each value once.
//
// Two walks. Planes at least as long as the block's reach (256 values, or 256 groups of 4)
// go plane segment by plane segment, the threads on neighbouring values, with no division
// per value. Shorter planes (7×7 maps, or 1×1 after a fully connected layer) would leave
// most threads idle that way (49 of 256 at 7×7), so the threads take the slice's values in
// turn across plane boundaries instead, each finding its plane with a division. Both are
// deterministic; the block's sum then combines the threads in a fixed order.
template <class Visit>
__device__ __forceinline__ void for_channel_slice(long long begin, long long end, int c, int C, long long HW,
                                                  Visit visit) {
    const bool vec4 = (HW % 4 == 0) && (begin % 4 == 0);
    const int step = vec4 ? 4 : 1;  // a group of 4 never crosses a plane: HW and begin are multiples of 4
    if (HW < (long long)step * blockDim.x) {
        if (end < (1LL << 30)) {
            // 32-bit division, several times cheaper than 64-bit on a GPU (and far from
            // overflowing when i steps past the end).
            const int hw = (int)HW;
            for (int i = (int)begin + step * (int)threadIdx.x; i < (int)end; i += step * (int)blockDim.x)
                visit(((long long)(i / hw) * C + c) * HW + i % hw, step);
        } else {
            for (long long i = begin + step * (long long)threadIdx.x; i < end; i += step * (long long)blockDim.x)
                visit((i / HW * C + c) * HW + i % HW, step);
        }
        return;
    }
    long long i = begin;
    while (i < end) {
        const long long n = i / HW, p = i % HW;
        const long long seg = (end - i < HW - p) ? end - i : HW - p;
        const long long base = (n * C + c) * HW + p;
        if (vec4 && seg % 4 == 0) {
            for (long long j = 4 * (long long)threadIdx.x; j < seg; j += 4 * (long long)blockDim.x) visit(base + j, 4);
        } else {
            for (long long j = threadIdx.x; j < seg; j += blockDim.x) visit(base + j, 1);
        }
        i += seg;
    }
}

// Sum of a double over a block of SCRATCHNET_BLOCK threads; thread 0 gets the total. Fixed
// order, like block_sum in common.cuh.
__device__ __forceinline__ double block_sum_double(double v, double* scratch /* SCRATCHNET_BLOCK/32 */) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = (threadIdx.x < SCRATCHNET_BLOCK / 32) ? scratch[lane] : 0.0;
    if (warp == 0)
        for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    return v;
}

// The slice [begin, end) that block (blockIdx.x, blockIdx.y) covers, for channels of M values.
__device__ __forceinline__ void channel_slice(long long M, long long chunk, long long* begin, long long* end) {
    *begin = (long long)blockIdx.x * chunk;
    *end = (*begin + chunk < M) ? *begin + chunk : M;
}

// Four consecutive floats from 16-byte aligned memory, or one (count == 1) in v[0].
__device__ __forceinline__ void load_values(const float* __restrict__ p, long long at, int count, float v[4]) {
    if (count == 4) {
        const float4 q = *reinterpret_cast<const float4*>(p + at);
        v[0] = q.x, v[1] = q.y, v[2] = q.z, v[3] = q.w;
    } else {
        v[0] = p[at];
    }
}

__device__ __forceinline__ void store_values(float* __restrict__ p, long long at, int count, const float v[4]) {
    if (count == 4) {
        *reinterpret_cast<float4*>(p + at) = make_float4(v[0], v[1], v[2], v[3]);
    } else {
        p[at] = v[0];
    }
}
