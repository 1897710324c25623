// Rounding a tensor to the precision of the tensor cores: what --precision does to the
// operands and results of a convolution or matrix product when the kernel that runs is an
// FP32 one (the direct kernels, a forced FP32 tile engine), so that every kernel of a given
// precision computes the same products. The tensor-core kernels round as they load instead.
// Reference: Precision::round in src/ops/precision.rs, to the bit.
//
// Also the 16-bit storage of the activations a BF16 or FP16 graph keeps for its backward
// pass (src/autograd/keep.rs): narrow_f32 stores an FP32 tensor as BF16 or FP16 bits (round
// to nearest even, the bits pack_bf16/pack_f16 give an operand), widen_16 reads them back as
// FP32, exactly. References: precision::narrow and precision::widen, the half crate's
// conversions, to the bit.
//
// One variant each: v1, one thread per element, grid-stride. A conversion moves 6 bytes per
// element and does no arithmetic worth counting, so it runs at memory speed however its
// threads are arranged. Read common.cuh and mma.cuh first.
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

// y[i] = the 16-bit bits of x[i] rounded to `precision` (2 BF16, 3 FP16).
extern "C" __global__ void narrow_f32(unsigned short* y, const float* x, long long n, int precision) {
    grid_stride_loop(n, [&](auto i) {
        const unsigned packed = precision == 2 ? pack_bf16(x[i], 0.f) : pack_f16(x[i], 0.f);
        y[i] = (unsigned short)(packed & 0xffffu);
    });
}

// y[i] = the FP32 value of the 16-bit x[i] of `precision` (2 BF16, 3 FP16); exact, since
// every BF16 and FP16 value is an FP32 one.
extern "C" __global__ void widen_16(float* y, const unsigned short* x, long long n, int precision) {
    grid_stride_loop(n, [&](auto i) {
        const unsigned short bits = x[i];
        y[i] = precision == 2 ? __uint_as_float((unsigned)bits << 16) : __half2float(__ushort_as_half(bits));
    });
}
