// Rounding a tensor to the precision of the tensor cores: what --precision does to the
// operands and results of a convolution or matrix product when the kernel that runs is an
// FP32 one (the direct kernels, a forced FP32 tile engine), so that every kernel of a given
// precision computes the same products. The tensor-core kernels round as they load instead.
// Reference: Precision::round in src/ops/precision.rs, to the bit.
//
// One variant: v1, one thread per element, grid-stride. Read common.cuh and mma.cuh first.
#include "mma.cuh"

// y[i] = x[i] rounded to `precision` (1 TF32, 2 BF16, 3 FP16; the order of Precision::ALL).
// y may be x.
extern "C" __global__ void round_precision_f32(float* y, const float* x, long long n, int precision) {
    grid_stride_loop(n, [&](auto i) {
        const float v = x[i];
        float r = v;
        if (precision == 1) {
            r = __uint_as_float(to_tf32(v));
        } else if (precision == 2) {
            r = __uint_as_float(pack_bf16(v, 0.f) << 16);
        } else if (precision == 3) {
            r = __half2float(__ushort_as_half((unsigned short)(pack_f16(v, 0.f) & 0xffffu)));
        }
        y[i] = r;
    });
}
