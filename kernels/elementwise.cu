// Element-wise kernels: ReLU and its gradient, addition, in-place accumulation, product, fill,
// scaling in place, and the count of values that are not finite (FP16 loss scaling).
// Reference: src/ops/elementwise/reference.rs.
//
// One variant of each (`scratchnet kernel elementwise` runs ReLU and add as "default"): v1,
// a grid-stride loop over groups of 4 with 16-byte accesses, as below. Read common.cuh first.
//
// These kernels are bound by memory bandwidth: each element is read once and written once,
// and their speed is bytes moved divided by time. Two things get them close to the copy
// bandwidth:
//   - Coalescing: a 1-D grid of SCRATCHNET_BLOCK-thread blocks and a grid-stride loop, so
//     consecutive threads touch consecutive addresses and each warp's accesses combine into
//     full 128-byte transactions.
//   - 16-byte accesses: thread t handles the group of 4 floats 4t..4t+3 with one float4 load
//     per input and one float4 store, a quarter of the memory instructions of one float per
//     thread. Buffers start 256-byte aligned (the allocator's blocks), so every group is
//     aligned; the n % 4 elements after the last whole group are done one by one.
#include "common.cuh"

__device__ __forceinline__ float relu_value(float v) { return (v > 0.f || v != v) ? v : 0.f; }
__device__ __forceinline__ float relu_grad(float dy, float y) { return (y > 0.f || y != y) ? dy : 0.f; }

// Runs body(i) for each whole group i of 4 (elements 4i..4i+3) with a grid-stride loop, then
// tail(j) for each leftover element j in [4·(n/4), n).
template <class Body, class Tail>
__device__ __forceinline__ void vec4_loop(long long n, Body body, Tail tail) {
    const long long groups = n / 4;
    for (long long i = global_thread_index(); i < groups; i += grid_stride()) body(i);
    for (long long j = 4 * groups + global_thread_index(); j < n; j += grid_stride()) tail(j);
}

// y[i] = max(x[i], 0); NaN passes through, as torch.relu.
extern "C" __global__ void relu_fwd_f32(float* __restrict__ y, const float* __restrict__ x, long long n) {
    vec4_loop(
        n,
        [&](long long i) {
            const float4 v = reinterpret_cast<const float4*>(x)[i];
            reinterpret_cast<float4*>(y)[i] = make_float4(relu_value(v.x), relu_value(v.y), relu_value(v.z), relu_value(v.w));
        },
        [&](long long j) { y[j] = relu_value(x[j]); });
}

// dx[i] = dy[i] where the output y[i] was positive (or NaN), else 0.
extern "C" __global__ void relu_bwd_f32(float* __restrict__ dx, const float* __restrict__ dy,
                                        const float* __restrict__ y, long long n) {
    vec4_loop(
        n,
        [&](long long i) {
            const float4 d = reinterpret_cast<const float4*>(dy)[i], v = reinterpret_cast<const float4*>(y)[i];
            reinterpret_cast<float4*>(dx)[i] =
                make_float4(relu_grad(d.x, v.x), relu_grad(d.y, v.y), relu_grad(d.z, v.z), relu_grad(d.w, v.w));
        },
        [&](long long j) { dx[j] = relu_grad(dy[j], y[j]); });
}

// y = a + b.
extern "C" __global__ void add_f32(float* __restrict__ y, const float* __restrict__ a,
                                   const float* __restrict__ b, long long n) {
    vec4_loop(
        n,
        [&](long long i) {
            const float4 p = reinterpret_cast<const float4*>(a)[i], q = reinterpret_cast<const float4*>(b)[i];
            reinterpret_cast<float4*>(y)[i] = make_float4(p.x + q.x, p.y + q.y, p.z + q.z, p.w + q.w);
        },
        [&](long long j) { y[j] = a[j] + b[j]; });
}

// acc += x (how the autograd tape sums the gradients of a value used more than once).
extern "C" __global__ void add_assign_f32(float* __restrict__ acc, const float* __restrict__ x, long long n) {
    vec4_loop(
        n,
        [&](long long i) {
            float4 p = reinterpret_cast<float4*>(acc)[i];
            const float4 q = reinterpret_cast<const float4*>(x)[i];
            p.x += q.x, p.y += q.y, p.z += q.z, p.w += q.w;
            reinterpret_cast<float4*>(acc)[i] = p;
        },
        [&](long long j) { acc[j] += x[j]; });
}

// y = a * b, element by element (dropout's backward: dy times the mask).
extern "C" __global__ void mul_f32(float* __restrict__ y, const float* __restrict__ a,
                                   const float* __restrict__ b, long long n) {
    vec4_loop(
        n,
        [&](long long i) {
            const float4 p = reinterpret_cast<const float4*>(a)[i], q = reinterpret_cast<const float4*>(b)[i];
            reinterpret_cast<float4*>(y)[i] = make_float4(p.x * q.x, p.y * q.y, p.z * q.z, p.w * q.w);
        },
        [&](long long j) { y[j] = a[j] * b[j]; });
}

// y[i] = value.
extern "C" __global__ void fill_f32(float* __restrict__ y, float value, long long n) {
    vec4_loop(
        n, [&](long long i) { reinterpret_cast<float4*>(y)[i] = make_float4(value, value, value, value); },
        [&](long long j) { y[j] = value; });
}

// y *= s, in place (unscaling the gradients of an FP16 step: src/train/loss_scale.rs).
extern "C" __global__ void scale_f32(float* __restrict__ y, float s, long long n) {
    vec4_loop(
        n,
        [&](long long i) {
            float4 p = reinterpret_cast<float4*>(y)[i];
            p.x *= s, p.y *= s, p.z *= s, p.w *= s;
            reinterpret_cast<float4*>(y)[i] = p;
        },
        [&](long long j) { y[j] *= s; });
}

// *count += the number of x[i] that are NaN or infinite. Each thread counts its own values and
// adds its count with one atomic, only if it found any: a finite tensor (the common case)
// costs no atomics at all. Called once per gradient into one counter, read once per step.
extern "C" __global__ void count_non_finite_f32(unsigned* __restrict__ count, const float* __restrict__ x, long long n) {
    unsigned bad = 0;
    for (long long i = global_thread_index(); i < n; i += grid_stride()) bad += !isfinite(x[i]);
    if (bad) atomicAdd(count, bad);
}
