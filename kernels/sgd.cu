// The SGD update with momentum and weight decay, in place. Reference: src/ops/sgd/reference.rs.
//   g ← grad + weight_decay·θ;  v ← momentum·v + g;  θ ← θ − lr·v
// A pure streaming kernel (read θ, v, grad; write θ, v): groups of 4 parameters per thread
// with 16-byte accesses, grid-stride, the n % 4 leftovers one by one (see elementwise.cu).
//
// One variant (`scratchnet kernel sgd` runs it as "default"): v1 sgd_step_f32, and
// sgd_step_lr_f32, the same update for captured CUDA graphs. Read elementwise.cu first.
#include "common.cuh"

__device__ __forceinline__ void sgd_one(float& p, float& v, float g, float lr, float momentum, float weight_decay) {
    g += weight_decay * p;
    v = momentum * v + g;
    p -= lr * v;
}

__device__ __forceinline__ void sgd_all(float* __restrict__ param, float* __restrict__ velocity,
                                        const float* __restrict__ grad, long long n, float lr, float momentum,
                                        float weight_decay) {
    const long long groups = n / 4;
    for (long long i = global_thread_index(); i < groups; i += grid_stride()) {
        float4 p = reinterpret_cast<float4*>(param)[i], v = reinterpret_cast<float4*>(velocity)[i];
        const float4 g = reinterpret_cast<const float4*>(grad)[i];
        sgd_one(p.x, v.x, g.x, lr, momentum, weight_decay);
        sgd_one(p.y, v.y, g.y, lr, momentum, weight_decay);
        sgd_one(p.z, v.z, g.z, lr, momentum, weight_decay);
        sgd_one(p.w, v.w, g.w, lr, momentum, weight_decay);
        reinterpret_cast<float4*>(param)[i] = p;
        reinterpret_cast<float4*>(velocity)[i] = v;
    }
    for (long long j = 4 * groups + global_thread_index(); j < n; j += grid_stride())
        sgd_one(param[j], velocity[j], grad[j], lr, momentum, weight_decay);
}

extern "C" __global__ void sgd_step_f32(float* __restrict__ param, float* __restrict__ velocity,
                                        const float* __restrict__ grad, long long n, float lr, float momentum,
                                        float weight_decay) {
    sgd_all(param, velocity, grad, n, lr, momentum, weight_decay);
}

// The same, with the learning rate read from device memory: a training step captured as a
// CUDA graph keeps its kernels' arguments, so a schedule that changes the rate each step
// writes it here between replays instead.
extern "C" __global__ void sgd_step_lr_f32(float* __restrict__ param, float* __restrict__ velocity,
                                           const float* __restrict__ grad, long long n, const float* __restrict__ lr,
                                           float momentum, float weight_decay) {
    sgd_all(param, velocity, grad, n, *lr, momentum, weight_decay);
}
