// Softmax cross-entropy, averaged over the batch. Reference: src/ops/loss/reference.rs.
//   p[n, k] = exp(z[n, k] − m_n) / Σ_j exp(z[n, j] − m_n),  m_n = max_j z[n, j]
//   loss    = −(1/N) Σ_n log p[n, label_n],   dz = (p − onehot(label)) / N · dloss
// One variant (not among `scratchnet kernel`'s families): v1, one block per example for the
// forward (block_max, block_sum), one thread per logit for the backward. Read common.cuh
// first.
//
// Labels are int64 (torch.long). Labels that come from the host are checked there; labels
// already on the device are not read back (that would wait for the device at every step and
// rule out capturing the step as a graph), so a label outside [0, K) gives a NaN loss instead
// of an out-of-bounds read.
#include "common.cuh"

// One block per row n: the block finds the row maximum, then Σ exp(z − m) (both block
// reductions), then writes the K probabilities and the row's loss −log p[label].
extern "C" __global__ void __launch_bounds__(SCRATCHNET_BLOCK)
softmax_xent_fwd_f32(float* __restrict__ row_loss, float* __restrict__ probs, const float* __restrict__ logits,
                     const long long* __restrict__ labels, int N, int K) {
    __shared__ float scratch[SCRATCHNET_BLOCK / 32 + 1];
    __shared__ float log_sum_shared;
    const int n = blockIdx.x;
    const float* z = logits + (long long)n * K;
    float m = -INFINITY;
    for (int k = threadIdx.x; k < K; k += blockDim.x) m = (z[k] > m || z[k] != z[k]) ? z[k] : m;
    m = block_max(m, scratch);
    float s = 0.f;
    for (int k = threadIdx.x; k < K; k += blockDim.x) s += expf(z[k] - m);
    s = block_sum(s, scratch);
    if (threadIdx.x == 0) log_sum_shared = logf(s);
    __syncthreads();
    const float log_sum = log_sum_shared;
    for (int k = threadIdx.x; k < K; k += blockDim.x) probs[(long long)n * K + k] = expf(z[k] - m - log_sum);
    if (threadIdx.x == 0) {
        const long long label = labels[n];
        row_loss[n] = (label >= 0 && label < K) ? -(z[label] - m - log_sum) : NAN;
    }
}

// out[0] = mean of x[0..n): one block, fixed-order reduction.
extern "C" __global__ void __launch_bounds__(SCRATCHNET_BLOCK)
mean_f32(float* __restrict__ out, const float* __restrict__ x, long long n) {
    __shared__ float scratch[SCRATCHNET_BLOCK / 32];
    double acc = 0.0;
    for (long long i = threadIdx.x; i < n; i += blockDim.x) acc += x[i];
    const float total = block_sum((float)acc, scratch);
    if (threadIdx.x == 0) out[0] = total / (float)n;
}

// dz[n, k] = (p[n, k] − [k = label_n]) · dloss / N: one thread per element.
extern "C" __global__ void softmax_xent_bwd_f32(float* __restrict__ dlogits, const float* __restrict__ probs,
                                                const long long* __restrict__ labels, const float* __restrict__ dloss,
                                                int N, int K) {
    const float scale = dloss[0] / (float)N;
    grid_stride_loop((long long)N * K, [&](auto i) {
        using I = decltype(i);
        const I n = i / (I)K;
        const int k = (int)(i - n * (I)K);
        dlogits[i] = (probs[i] - (k == labels[n] ? 1.f : 0.f)) * scale;
    });
}
