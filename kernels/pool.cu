// Pooling: max, average (count_include_pad), and global average.
// Reference: src/ops/pool/reference.rs.
//
// One variant of each (`scratchnet kernel pool` runs the max pool as "default"): v1, one
// thread per output for the forward passes and one per input pixel, gathering, for the
// backward ones; global average pooling one block per plane. Read common.cuh first.
//
// Shape arguments: `planes` = N·C independent H×W planes, pooled with a kh×kw window at
// stride (sh, sw) and padding (ph, pw) into OH×OW outputs. The window of output (oy, ox)
// covers rows [oy·sh − ph, oy·sh − ph + kh) and columns likewise, clipped to the plane.
#include "common.cuh"

// Flat index (within the plane) of the first maximum of window (oy, ox), scanning rows then
// columns; a NaN wins at once. This is exactly the reference's rule, so both pick the same
// input, and the backward pass can find the winner again instead of storing its index.
__device__ __forceinline__ int window_argmax(const float* plane, int H, int W, int oy, int ox,
                                             int kh, int kw, int sh, int sw, int ph, int pw) {
    const int y0 = oy * sh - ph, x0 = ox * sw - pw;
    const int y1 = min(y0 + kh, H), x1 = min(x0 + kw, W);
    int best_at = -1;
    float best = 0.f;
    for (int iy = max(y0, 0); iy < y1; ++iy) {
        for (int ix = max(x0, 0); ix < x1; ++ix) {
            const float v = plane[iy * W + ix];
            if (best_at < 0 || v > best || v != v) {
                best = v;
                best_at = iy * W + ix;
                if (v != v) return best_at;
            }
        }
    }
    return best_at;
}

// One thread per output: the maximum of its window.
extern "C" __global__ void max_pool2d_fwd_f32(float* __restrict__ y, const float* __restrict__ x, long long planes,
                                              int H, int W, int OH, int OW, int kh, int kw, int sh, int sw, int ph, int pw) {
    grid_stride_loop(planes * OH * OW, [&](auto idx) {
        using I = decltype(idx);
        const I row = idx / (I)OW, plane_index = row / (I)OH;  // row = plane·OH + oy
        const int ox = (int)(idx - row * (I)OW), oy = (int)(row - plane_index * (I)OH);
        const float* plane = x + (long long)plane_index * H * W;
        y[idx] = plane[window_argmax(plane, H, W, oy, ox, kh, kw, sh, sw, ph, pw)];
    });
}

// First output row (or column) whose window contains input index i: the smallest o with
// o·s − p + k > i, i.e. o > (i + p − k) / s.
__device__ __forceinline__ int first_window(int i, int s, int p, int k) {
    const int t = i + p - k;
    return t < 0 ? 0 : t / s + 1;
}

// One thread per input pixel: the sum of the output gradients of every window that this
// pixel won. Overlapping windows (AlexNet's 3×3 stride 2) can share a winner, which then
// collects several gradients; gathering them here, rather than having each output add into
// its winner, needs no atomics and gives the same sum on every run.
extern "C" __global__ void max_pool2d_bwd_f32(float* __restrict__ dx, const float* __restrict__ dy,
                                              const float* __restrict__ x, long long planes, int H, int W, int OH, int OW,
                                              int kh, int kw, int sh, int sw, int ph, int pw) {
    grid_stride_loop(planes * H * W, [&](auto idx) {
        using I = decltype(idx);
        const I row = idx / (I)W, plane_index = row / (I)H;  // row = plane·H + iy
        const int ix = (int)(idx - row * (I)W), iy = (int)(row - plane_index * (I)H);
        const float* plane = x + (long long)plane_index * H * W;
        const float* dplane = dy + (long long)plane_index * OH * OW;
        const int me = iy * W + ix;
        float acc = 0.f;
        // Windows containing row iy: o·sh − ph <= iy < o·sh − ph + kh.
        const int oy_last = min((iy + ph) / sh, OH - 1), ox_last = min((ix + pw) / sw, OW - 1);
        for (int oy = first_window(iy, sh, ph, kh); oy <= oy_last; ++oy) {
            for (int ox = first_window(ix, sw, pw, kw); ox <= ox_last; ++ox) {
                if (window_argmax(plane, H, W, oy, ox, kh, kw, sh, sw, ph, pw) == me) acc += dplane[oy * OW + ox];
            }
        }
        dx[idx] = acc;
    });
}

// One thread per output: the window's sum over kh·kw (padding counts in the divisor).
extern "C" __global__ void avg_pool2d_fwd_f32(float* __restrict__ y, const float* __restrict__ x, long long planes,
                                              int H, int W, int OH, int OW, int kh, int kw, int sh, int sw, int ph, int pw) {
    const float inv_area = 1.f / (float)(kh * kw);
    grid_stride_loop(planes * OH * OW, [&](auto idx) {
        using I = decltype(idx);
        const I row = idx / (I)OW, plane_index = row / (I)OH;
        const int ox = (int)(idx - row * (I)OW), oy = (int)(row - plane_index * (I)OH);
        const float* plane = x + (long long)plane_index * H * W;
        const int y0 = oy * sh - ph, x0 = ox * sw - pw;
        float s = 0.f;
        for (int iy = max(y0, 0); iy < min(y0 + kh, H); ++iy)
            for (int ix = max(x0, 0); ix < min(x0 + kw, W); ++ix) s += plane[iy * W + ix];
        y[idx] = s * inv_area;
    });
}

// One thread per input pixel: Σ dy / (kh·kw) over the windows that contain it.
extern "C" __global__ void avg_pool2d_bwd_f32(float* __restrict__ dx, const float* __restrict__ dy, long long planes,
                                              int H, int W, int OH, int OW, int kh, int kw, int sh, int sw, int ph, int pw) {
    const float inv_area = 1.f / (float)(kh * kw);
    grid_stride_loop(planes * H * W, [&](auto idx) {
        using I = decltype(idx);
        const I row = idx / (I)W, plane_index = row / (I)H;
        const int ix = (int)(idx - row * (I)W), iy = (int)(row - plane_index * (I)H);
        const float* dplane = dy + (long long)plane_index * OH * OW;
        const int oy_last = min((iy + ph) / sh, OH - 1), ox_last = min((ix + pw) / sw, OW - 1);
        float acc = 0.f;
        for (int oy = first_window(iy, sh, ph, kh); oy <= oy_last; ++oy)
            for (int ox = first_window(ix, sw, pw, kw); ox <= ox_last; ++ox) acc += dplane[oy * OW + ox] * inv_area;
        dx[idx] = acc;
    });
}

// One block per plane: the mean of its HW values (a block reduction, fixed order).
extern "C" __global__ void __launch_bounds__(SCRATCHNET_BLOCK)
global_avg_pool_fwd_f32(float* __restrict__ y, const float* __restrict__ x, long long HW) {
    __shared__ float scratch[SCRATCHNET_BLOCK / 32];
    const float* plane = x + blockIdx.x * HW;
    double acc = 0.0;
    for (long long i = threadIdx.x; i < HW; i += blockDim.x) acc += plane[i];
    const float total = block_sum((float)acc, scratch);
    if (threadIdx.x == 0) y[blockIdx.x] = total / (float)HW;
}

// dx[plane, i] = dy[plane] / HW: one thread per input element.
extern "C" __global__ void global_avg_pool_bwd_f32(float* __restrict__ dx, const float* __restrict__ dy, long long planes,
                                                   long long HW) {
    const float inv = 1.f / (float)HW;
    grid_stride_loop(planes * HW, [&](auto idx) { dx[idx] = dy[idx / (decltype(idx))HW] * inv; });
}
