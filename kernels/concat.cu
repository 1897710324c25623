// Channel concatenation and its backward, the split. Reference: src/ops/concat/reference.rs.
//
// One variant (`scratchnet kernel concat` runs it as "default"): v1, a grid-stride copy of one
// float per thread. Read common.cuh first (grid_stride_loop).
//
// An input of `piece` = C_i·inner values per image sits in the output at `offset` within
// each image's `total` = ΣC_i·inner values. The host launches one copy per input (or per
// gradient piece); one thread per element, grid-stride, reads and writes both coalesced.
#include "common.cuh"

// y[img·total + offset + j] = x[img·piece + j]
// (grid_stride_loop, common.cuh: the division runs in 32 bits when x has fewer than 2^31
// elements; the output index, larger, is computed in 64.)
extern "C" __global__ void concat_copy_f32(float* __restrict__ y, const float* __restrict__ x, long long images,
                                           long long piece, long long total, long long offset) {
    grid_stride_loop(images * piece, [&](auto i) {
        using I = decltype(i);
        const I img = i / (I)piece, j = i - img * (I)piece;
        y[(long long)img * total + offset + j] = x[i];
    });
}

// dx[img·piece + j] = dy[img·total + offset + j]
extern "C" __global__ void split_copy_f32(float* __restrict__ dx, const float* __restrict__ dy, long long images,
                                          long long piece, long long total, long long offset) {
    grid_stride_loop(images * piece, [&](auto i) {
        using I = decltype(i);
        const I img = i / (I)piece, j = i - img * (I)piece;
        dx[i] = dy[(long long)img * total + offset + j];
    });
}
