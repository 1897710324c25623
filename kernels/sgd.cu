// The SGD update with momentum and weight decay, in place. CPU reference: src/ops/sgd.rs.
//   g ← grad + weight_decay·θ;  v ← momentum·v + g;  θ ← θ − lr·v
// One thread per parameter, grid-stride: a pure streaming kernel (read θ, v, grad; write θ, v).
#include "common.cuh"

extern "C" __global__ void sgd_step_f32(float* __restrict__ param, float* __restrict__ velocity,
                                        const float* __restrict__ grad, long long n, float lr, float momentum,
                                        float weight_decay) {
    for (long long i = global_thread_index(); i < n; i += grid_stride()) {
        const float g = grad[i] + weight_decay * param[i];
        const float v = momentum * velocity[i] + g;
        velocity[i] = v;
        param[i] -= lr * v;
    }
}
