// Inverted dropout. Reference: src/ops/dropout/reference.rs.
//
// Element i is dropped when u(seed, i) < p, where u is the counter-based SplitMix64 of
// src/rng.rs: output number i of the stream started at `seed`, computed directly from
// (seed, i). Every thread computes its own elements' draws, and the CPU computes the same
// bits, so the mask is identical on every device.
//
// One variant (not among `scratchnet kernel`'s families): v1, one thread per element,
// grid-stride, and its siblings with the seed in device memory (…_seed_f32) for captured
// CUDA graphs. Read common.cuh first.
#include "common.cuh"

// The SplitMix64 finaliser (mix64 in src/rng.rs).
__device__ __forceinline__ unsigned long long splitmix64_mix(unsigned long long z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// A uniform float in [0, 1) with 24 random bits: counter_uniform_f32 in src/rng.rs.
__device__ __forceinline__ float counter_uniform(unsigned long long seed, unsigned long long i) {
    const unsigned long long z = splitmix64_mix(seed + (i + 1) * 0x9E3779B97F4A7C15ull);
    return (float)(z >> 40) * (1.f / 16777216.f);
}

// The multiplier of element i: 0 if dropped, else scale (= 1/(1 − p)).
__device__ __forceinline__ float dropout_keep(unsigned long long seed, long long i, float p, float scale) {
    return counter_uniform(seed, (unsigned long long)i) < p ? 0.f : scale;
}

// y[i] = x[i]·keep(i). No mask is stored: the backward pass draws the same numbers again from
// the seed, so neither pass reads or writes more than its input and its output.
extern "C" __global__ void dropout_fwd_f32(float* __restrict__ y, const float* __restrict__ x, long long n,
                                           unsigned long long seed, float p, float scale) {
    for (long long i = global_thread_index(); i < n; i += grid_stride()) y[i] = x[i] * dropout_keep(seed, i, p, scale);
}

// dx[i] = dy[i]·keep(i), with the forward pass's seed.
extern "C" __global__ void dropout_bwd_f32(float* __restrict__ dx, const float* __restrict__ dy, long long n,
                                           unsigned long long seed, float p, float scale) {
    for (long long i = global_thread_index(); i < n; i += grid_stride()) dx[i] = dy[i] * dropout_keep(seed, i, p, scale);
}

// The same two, with the seed read from device memory: a training step captured as a CUDA
// graph keeps its launches' arguments, so each layer's seed for the next replay is written
// there instead (see Module::prepare_replay).
extern "C" __global__ void dropout_fwd_seed_f32(float* __restrict__ y, const float* __restrict__ x, long long n,
                                                const unsigned long long* __restrict__ seed, float p, float scale) {
    const unsigned long long s = *seed;
    for (long long i = global_thread_index(); i < n; i += grid_stride()) y[i] = x[i] * dropout_keep(s, i, p, scale);
}

extern "C" __global__ void dropout_bwd_seed_f32(float* __restrict__ dx, const float* __restrict__ dy, long long n,
                                                const unsigned long long* __restrict__ seed, float p, float scale) {
    const unsigned long long s = *seed;
    for (long long i = global_thread_index(); i < n; i += grid_stride()) dx[i] = dy[i] * dropout_keep(s, i, p, scale);
}
