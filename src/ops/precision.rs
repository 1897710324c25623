//! The arithmetic precision of the convolutions and matrix products: `--precision
//! fp32|tf32|bf16|fp16`.
//!
//! The tensors that flow between ops stay FP32 whatever the precision; what changes is what
//! the tensor cores (or, on the CPU, the same arithmetic done by hand) see of them:
//!
//! - **fp32**: the FP32 kernels, every operand as it is.
//! - **tf32**: each operand of a product rounded to TF32 (8 exponent bits like FP32, 10
//!   mantissa bits: round to nearest, ties away from zero, as `cvt.rna.tf32.f32` does),
//!   multiplied exactly, summed in FP32. The output stays FP32. What PyTorch does with
//!   `torch.backends.cudnn.allow_tf32`, its default for convolutions.
//! - **bf16** / **fp16**: each operand rounded to the 16-bit type (round to nearest even),
//!   multiplied exactly, summed in FP32, and the result rounded to the 16-bit type again,
//!   because under `torch.autocast` a convolution or linear layer returns a 16-bit tensor.
//!   BF16 keeps FP32's range (8 exponent bits, 7 mantissa bits); FP16 has 5 exponent bits, so
//!   values beyond 65504 become infinite, which is why FP16 training scales its loss
//!   ([`crate::train::LossScaler`]).
//!
//! Mixed precision as autocast does it follows: the convolutions and linear layers (the ops
//! that take a [`Precision`] through [`super::ExecOptions`]) run in the low precision, forward
//! and backward; batch norm, softmax, the loss and the optimizer stay in FP32, and the
//! weights the optimizer updates are FP32 ("master weights"). What a BF16 or FP16 graph keeps
//! for its backward pass is kept in the 16-bit type ([`narrow`], [`widen`];
//! `src/autograd/keep.rs` says which tensors and what that changes).
//!
//! A product of two rounded operands is exact in FP32 (11 + 11 significant bits for TF32 and
//! FP16, 8 + 8 for BF16, all within FP32's 24), so the only FP32 rounding left is that of the
//! sums, and every device computes the same products: the CPU rounds its operands with
//! [`Precision::round`], the kernels with `to_tf32`/`pack_bf16`/`pack_f16` of
//! kernels/mma.cuh, and the two agree to the bit on every operand.

use rayon::prelude::*;

use super::gpu_f32;
use crate::device::gpu::{KernelCall, to_i64};
use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Precision {
    #[default]
    Fp32,
    Tf32,
    Bf16,
    Fp16,
}

impl Precision {
    pub const ALL: [Precision; 4] = [Precision::Fp32, Precision::Tf32, Precision::Bf16, Precision::Fp16];

    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Tf32 => "tf32",
            Precision::Bf16 => "bf16",
            Precision::Fp16 => "fp16",
        }
    }

    /// `x` as the tensor cores of this precision see it (the identity for FP32).
    pub fn round(self, x: f32) -> f32 {
        match self {
            Precision::Fp32 => x,
            Precision::Tf32 => round_tf32(x),
            Precision::Bf16 => round_bf16(x),
            Precision::Fp16 => round_f16(x),
        }
    }

    /// Whether the result of a product is rounded to this precision too (the 16-bit types,
    /// whose autocast outputs are 16-bit tensors); TF32's outputs stay FP32.
    pub fn rounds_output(self) -> bool {
        matches!(self, Precision::Bf16 | Precision::Fp16)
    }

    /// `xs` with every value rounded by [`Precision::round`].
    pub fn round_all(self, xs: &[f32]) -> Vec<f32> {
        xs.iter().map(|&x| self.round(x)).collect()
    }

    /// Rounds the result of a product in place where [`Precision::rounds_output`] says so.
    pub fn round_output(self, ys: &mut [f32]) {
        if self.rounds_output() {
            for y in ys {
                *y = self.round(*y);
            }
        }
    }

    /// A reference's f64 operands as this precision rounds them (through f32), for the
    /// references the low-precision kernels are held to; FP32 leaves them as they are.
    pub fn round_operands(self, values: &[f64]) -> Vec<f64> {
        if self == Precision::Fp32 {
            return values.to_vec();
        }
        values.iter().map(|&v| f64::from(self.round(v as f32))).collect()
    }

    /// A reference's f64 result as this precision rounds a product's result (the 16-bit
    /// types; TF32 and FP32 leave it).
    pub fn round_result(self, values: Vec<f64>) -> Vec<f64> {
        if self.rounds_output() { self.round_operands(&values) } else { values }
    }

    /// The relative error allowed a product in this precision against its rounded reference:
    /// `fp32_tol` for the FP32 sums, plus, for a 16-bit result, one unit in its last place
    /// (2^-8 for BF16, 2^-11 for FP16), since a sum and the reference's may round to
    /// neighbours.
    pub fn result_tolerance(self, fp32_tol: f64) -> f64 {
        fp32_tol
            + match self {
                Precision::Bf16 => 2f64.powi(-8),
                Precision::Fp16 => 2f64.powi(-11),
                Precision::Fp32 | Precision::Tf32 => 0.0,
            }
    }

    /// Whether a product in this precision runs on the tensor cores on a GPU.
    pub fn uses_tensor_cores(self) -> bool {
        self != Precision::Fp32
    }

    /// The 16-bit element type that holds this precision's values: BF16 or FP16; `None` for
    /// FP32, and for TF32, a format of the tensor cores' registers with no type in memory.
    pub fn half_dtype(self) -> Option<DType> {
        match self {
            Precision::Bf16 => Some(DType::BF16),
            Precision::Fp16 => Some(DType::F16),
            Precision::Fp32 | Precision::Tf32 => None,
        }
    }
}

/// A copy of `t` with every value rounded as `p` rounds an operand, on `t`'s device: the
/// CPU with [`Precision::round`], cuda and emu with the kernel `round_precision_f32`
/// (kernels/precision.cu), which gives the same bits. FP32 returns `t` itself (shared).
pub fn round_tensor(t: &Tensor, p: Precision) -> Result<Tensor> {
    let mut r = t.clone();
    round_in_place(&mut r, p)?;
    Ok(r)
}

/// Rounds the result of a product in place, where [`Precision::rounds_output`] says so.
pub fn round_output(t: &mut Tensor, p: Precision) -> Result<()> {
    if p.rounds_output() { round_in_place(t, p) } else { Ok(()) }
}

fn round_in_place(t: &mut Tensor, p: Precision) -> Result<()> {
    const OP: &str = "round to precision";
    if p == Precision::Fp32 {
        return Ok(());
    }
    if t.dtype() != DType::F32 {
        return Err(Error::DType { op: OP, actual: t.dtype(), supported: "f32 (--precision rounds FP32 tensors)" });
    }
    if let Some(gpu) = gpu_f32(OP, t.dtype(), t.device())? {
        let n = t.numel();
        let buf = t.gpu_buffer_mut()?;
        let code = super::tensor_cores::precision_code(p);
        return gpu
            .launch(KernelCall::elementwise("round_precision_f32", n).buf(buf).buf(buf).i64(to_i64(n)).i32(code));
    }
    t.as_mut_slice::<f32>()?.par_chunks_mut(1 << 14).for_each(|chunk| {
        for v in chunk {
            *v = p.round(*v);
        }
    });
    Ok(())
}

/// An FP32 tensor stored in `p`'s 16-bit type ([`Precision::half_dtype`]), each value rounded
/// to nearest even, on `t`'s device: half the memory, and the values [`Precision::round`]
/// gives. The CPU converts with the `half` crate, cuda and emu with the kernel `narrow_f32`
/// (kernels/precision.cu); the two give the same bits. A precision without a 16-bit type
/// returns `t` itself (shared).
pub fn narrow(t: &Tensor, p: Precision) -> Result<Tensor> {
    const OP: &str = "narrow to 16 bits";
    let Some(dtype) = p.half_dtype() else {
        return Ok(t.clone());
    };
    if let Some(gpu) = gpu_f32(OP, t.dtype(), t.device())? {
        let n = t.numel();
        let y = gpu.alloc(dtype, n)?;
        let code = super::tensor_cores::precision_code(p);
        gpu.launch(KernelCall::elementwise("narrow_f32", n).buf(&y).buf(t.gpu_buffer()?).i64(to_i64(n)).i32(code))?;
        return Ok(Tensor::from_gpu(t.shape().clone(), y));
    }
    let xs = t.as_slice::<f32>().map_err(|_| Error::DType { op: OP, actual: t.dtype(), supported: "f32" })?;
    Ok(match p {
        Precision::Fp16 => Tensor::from_cpu(t.shape().clone(), convert(xs, half::f16::from_f32)),
        _ => Tensor::from_cpu(t.shape().clone(), convert(xs, half::bf16::from_f32)),
    })
}

/// A BF16 or FP16 tensor read back as FP32, exactly (every 16-bit value is an FP32 one), on
/// its device: the CPU with the `half` crate, cuda and emu with the kernel `widen_16`. An FP32
/// tensor is returned itself (shared).
pub fn widen(t: &Tensor) -> Result<Tensor> {
    const OP: &str = "widen to FP32";
    let precision = match t.dtype() {
        DType::F32 => return Ok(t.clone()),
        DType::BF16 => Precision::Bf16,
        DType::F16 => Precision::Fp16,
        actual => return Err(Error::DType { op: OP, actual, supported: "f32, bf16 or f16" }),
    };
    if let Some(gpu) = t.device().gpu()? {
        let n = t.numel();
        let y = gpu.alloc(DType::F32, n)?;
        let code = super::tensor_cores::precision_code(precision);
        gpu.launch(KernelCall::elementwise("widen_16", n).buf(&y).buf(t.gpu_buffer()?).i64(to_i64(n)).i32(code))?;
        return Ok(Tensor::from_gpu(t.shape().clone(), y));
    }
    Ok(match precision {
        Precision::Fp16 => Tensor::from_cpu(t.shape().clone(), convert(t.as_slice::<half::f16>()?, half::f16::to_f32)),
        _ => Tensor::from_cpu(t.shape().clone(), convert(t.as_slice::<half::bf16>()?, half::bf16::to_f32)),
    })
}

/// `f` applied to every element, in parallel chunks.
fn convert<A: Copy + Sync, B: Copy + Default + Send>(xs: &[A], f: impl Fn(A) -> B + Sync) -> Vec<B> {
    let mut out = vec![B::default(); xs.len()];
    out.par_chunks_mut(1 << 14).zip(xs.par_chunks(1 << 14)).for_each(|(o, x)| {
        for (o, &x) in o.iter_mut().zip(x) {
            *o = f(x);
        }
    });
    out
}

/// Round to nearest even to BF16's 7 mantissa bits, as the `half` crate's `bf16::from_f32`
/// and CUDA's `__float2bfloat16_rn` do, but in a few integer operations that the compiler
/// vectorises: add 0x7fff plus the lowest kept bit (so that a tie rounds to the even neighbour)
/// and clear the 16 dropped bits. NaN passes unchanged (the addition could carry it into an
/// infinity), and a value that rounds past the largest finite one becomes infinite.
pub fn round_bf16(x: f32) -> f32 {
    if x.is_nan() {
        return x;
    }
    let bits = x.to_bits();
    let lsb = (bits >> 16) & 1;
    f32::from_bits(bits.wrapping_add(0x7fff + lsb) & 0xffff_0000)
}

/// Round to nearest even to FP16 (5 exponent bits, 10 mantissa bits), as the `half` crate's
/// `f16::from_f32` and CUDA's `__float2half_rn` do, without leaving f32: normal results as
/// [`round_bf16`] does with 13 dropped bits; results below FP16's smallest normal value
/// (2^-14) on FP16's subnormal grid of 2^-24, by scaling, rounding to an integer and scaling
/// back (all exact in f32); from 65520, halfway between the largest finite value 65504 and
/// 2^16, infinity. NaN passes unchanged.
pub fn round_f16(x: f32) -> f32 {
    let abs = x.abs();
    if x.is_nan() || abs == f32::INFINITY {
        return x;
    }
    let rounded = if abs >= 65520.0 {
        f32::INFINITY
    } else if abs < 2f32.powi(-14) {
        (abs * 2f32.powi(24)).round_ties_even() * 2f32.powi(-24)
    } else {
        let bits = abs.to_bits();
        f32::from_bits(bits.wrapping_add(0x0fff + ((bits >> 13) & 1)) & 0xffff_e000)
    };
    rounded.copysign(x)
}

/// Round to nearest, ties away from zero, to TF32's 10 mantissa bits (`cvt.rna.tf32.f32`):
/// add half of the last kept place (bit 12) to the magnitude and clear the 13 dropped bits.
/// A carry out of the mantissa moves the exponent up by one, which is the correct rounding,
/// and a value that rounds past the largest finite one becomes infinite, as on the GPU. NaN
/// and infinity pass unchanged.
pub fn round_tf32(x: f32) -> f32 {
    if !x.is_finite() {
        return x;
    }
    let bits = x.to_bits();
    f32::from_bits(bits.wrapping_add(0x1000) & 0xffff_e000)
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Precision {
    type Err = Error;
    fn from_str(s: &str) -> Result<Precision> {
        Precision::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| Error::argument("--precision", format!("'{s}' is not fp32, tf32, bf16 or fp16")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tf32_rounds_to_nearest_with_ties_away_from_zero() {
        // 1 + 2^-11 lies halfway between 1 and 1 + 2^-10: the tie goes away from zero.
        assert_eq!(round_tf32(1.0 + 2f32.powi(-11)), 1.0 + 2f32.powi(-10));
        assert_eq!(round_tf32(-(1.0 + 2f32.powi(-11))), -(1.0 + 2f32.powi(-10)));
        // Just below the tie rounds down; a representable value is unchanged.
        assert_eq!(round_tf32(1.0 + 2f32.powi(-11) - 2f32.powi(-23)), 1.0);
        assert_eq!(round_tf32(1.5), 1.5);
        // The carry out of the mantissa: 2 - 2^-12 rounds up to 2.
        assert_eq!(round_tf32(2.0 - 2f32.powi(-12)), 2.0);
        assert_eq!(round_tf32(f32::MAX), f32::INFINITY);
        assert!(round_tf32(f32::NAN).is_nan());
        assert_eq!(round_tf32(f32::NEG_INFINITY), f32::NEG_INFINITY);
        // Every result has its 13 low bits clear.
        for i in 0..10_000u32 {
            let x = f32::from_bits(0x3f80_0000u32.wrapping_add(i.wrapping_mul(2_654_435_761) >> 9));
            assert_eq!(round_tf32(x).to_bits() & 0x1fff, 0, "{x}");
            assert!((round_tf32(x) - x).abs() <= x.abs() * 2f32.powi(-11));
        }
    }

    #[test]
    fn bf16_rounding_matches_the_half_crate_bit_for_bit() {
        let mut x = 0x9e37_79b9u32;
        let specials = [0.0f32, -0.0, 1.0, f32::MAX, f32::MIN_POSITIVE, 1e-40, f32::INFINITY, f32::NEG_INFINITY];
        let randoms = (0..200_000).map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            f32::from_bits(x)
        });
        for v in specials.into_iter().chain(randoms).filter(|v| !v.is_nan()) {
            assert_eq!(round_bf16(v).to_bits(), half::bf16::from_f32(v).to_f32().to_bits(), "{v:e}");
        }
        assert!(round_bf16(f32::NAN).is_nan());
    }

    #[test]
    fn fp16_rounding_matches_the_half_crate_bit_for_bit() {
        let mut x = 0x2545_f491u32;
        let specials = [
            0.0f32,
            -0.0,
            65504.0,
            65519.99,
            65520.0,
            -65520.0,
            2f32.powi(-14),
            2f32.powi(-24),
            2f32.powi(-25),
            3.0 * 2f32.powi(-25),
            1e-40,
            f32::MAX,
            f32::INFINITY,
            f32::NEG_INFINITY,
        ];
        // Random bit patterns cover every exponent; most are far outside FP16's range, so
        // also values scattered over it (subnormals included).
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x
        };
        let values: Vec<f32> =
            (0..200_000)
                .map(|i| {
                    if i % 2 == 0 { f32::from_bits(next()) } else { f32::from_bits(0x3300_0000 + next() % 0x1500_0000) }
                })
                .collect();
        for v in specials.into_iter().chain(values).filter(|v| !v.is_nan()) {
            assert_eq!(round_f16(v).to_bits(), half::f16::from_f32(v).to_f32().to_bits(), "{v:e}");
        }
        assert!(round_f16(f32::NAN).is_nan());
    }

    #[test]
    fn sixteen_bit_types_round_to_nearest_even_and_fp16_overflows() {
        // 1 + 2^-8 is halfway between two BF16 values: to even (1.0).
        assert_eq!(Precision::Bf16.round(1.0 + 2f32.powi(-8)), 1.0);
        assert_eq!(Precision::Bf16.round(1.0 + 3.0 * 2f32.powi(-8)), 1.0 + 2f32.powi(-6));
        assert_eq!(Precision::Fp16.round(1.0 + 2f32.powi(-11)), 1.0);
        assert_eq!(Precision::Fp16.round(70_000.0), f32::INFINITY);
        assert_eq!(Precision::Bf16.round(70_000.0), 70_144.0);
        assert_eq!(Precision::Fp32.round(0.1), 0.1);
        assert!(Precision::Bf16.rounds_output() && !Precision::Tf32.rounds_output());
    }

    #[test]
    fn parses_the_four_names_and_rejects_others() {
        for p in Precision::ALL {
            assert_eq!(p.name().parse::<Precision>().unwrap(), p);
        }
        let err = "fp8".parse::<Precision>().unwrap_err().to_string();
        assert!(err.contains("fp8") && err.contains("bf16"), "{err}");
    }
}
