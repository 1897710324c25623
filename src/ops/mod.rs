//! The ops: one module per op family.
//!
//! Each op lives in `src/ops/<op>/`. Its `reference.rs` is the op's definition: plain loops
//! over slices with the sizes passed explicitly, one loop per index of each sum, no packing,
//! no intrinsics, no threads, generic over [`Float`], under a comment with the math and above
//! tests worked by hand. It is the oracle every variant is held to, in f64: `scratchnet
//! selftest` (and through it the emulator and GPU parity tests), `scratchnet kernel`, and the
//! tests of the CPU path (tests/ops_reference.rs, tests/conv2d_reference.rs).
//!
//! The op's `mod.rs` holds its shape rules, its parameters and its public functions, which
//! take and return [`Tensor`]s, check their inputs (returning [`Error`]s that name the op and
//! the shapes), and dispatch on the device and the element type. On `cpu` they run the CPU
//! path, written to be fast (threads, sums in f64 lanes, folded multiply-adds, packed GEMMs)
//! and generic over [`Float`] too, so the same lines run in f32 for training and in f64 for the
//! gradient checks; it is one more variant held to the reference. On `cuda` and `emu` an op
//! launches the kernels of `kernels/<op>.cu` (f32 only) through the shared launch path of
//! [`crate::device::gpu`]; the launch code sits in the op's `mod.rs`, under the CPU path.

pub mod autotune;
pub mod batchnorm;
pub mod batchnorm_fused;
pub mod bias_act;
pub(crate) mod channel_reduce;
pub mod concat;
pub mod conv2d;
pub(crate) mod conv2d_tc;
pub mod dropout;
pub mod elementwise;
pub mod exec;
pub mod gemm;
pub(crate) mod gemm_tc;
pub mod linear;
pub mod loss;
pub mod lrn;
pub mod pool;
pub mod precision;
pub mod sgd;
pub mod tensor_cores;
pub(crate) mod weight_cache;

pub use exec::ExecOptions;
pub use precision::Precision;

use std::sync::Arc;

use crate::device::{Device, GpuDevice};
use crate::error::{Error, Result};
use crate::tensor::{DType, Float, Tensor};

/// Runs `$body` with `$T` bound to the Rust type of a floating-point dtype, or returns a
/// dtype error naming `$op`. The CPU paths are written once, generic over [`Float`].
macro_rules! with_float_type {
    ($dtype:expr, $op:expr, |$T:ident| $body:expr) => {
        match $dtype {
            $crate::tensor::DType::F32 => {
                type $T = f32;
                $body
            }
            $crate::tensor::DType::F64 => {
                type $T = f64;
                $body
            }
            other => Err($crate::error::Error::DType { op: $op, actual: other, supported: "f32, f64" }),
        }
    };
}
pub(crate) use with_float_type;

/// Checks that all inputs share one dtype and one device; returns them.
pub(crate) fn common_dtype(op: &'static str, inputs: &[(&str, &Tensor)]) -> Result<(DType, Device)> {
    let (first_name, first) = inputs[0];
    for (name, t) in &inputs[1..] {
        if t.dtype() != first.dtype() {
            return Err(Error::Mismatch {
                op,
                detail: format!("{first_name} is {} but {name} is {}", first.dtype(), t.dtype()),
            });
        }
        if t.device() != first.device() {
            return Err(Error::Mismatch {
                op,
                detail: format!("{first_name} is on {} but {name} is on {}", first.device(), t.device()),
            });
        }
    }
    Ok((first.dtype(), first.device()))
}

/// The GPU device to run on if `device` is `cuda` or `emu` (where the kernels are f32), or
/// `None` for the CPU path.
pub(crate) fn gpu_f32(op: &'static str, dtype: DType, device: Device) -> Result<Option<Arc<GpuDevice>>> {
    let Some(gpu) = device.gpu()? else {
        return Ok(None);
    };
    if dtype != DType::F32 {
        return Err(Error::DType { op, actual: dtype, supported: "f32 on cuda and emu" });
    }
    Ok(Some(gpu))
}

/// Checks that a tensor has exactly the expected shape.
pub(crate) fn expect_shape(op: &'static str, what: &str, t: &Tensor, want: &[usize]) -> Result<()> {
    if t.dims() != want {
        return Err(Error::shape_of(
            op,
            format!("{what} of shape {}", crate::tensor::Shape::from(want)),
            what,
            t.shape(),
        ));
    }
    Ok(())
}

/// Checks that a tensor is 4-D (NCHW) and returns its dimensions.
pub(crate) fn expect_nchw(op: &'static str, what: &str, t: &Tensor) -> Result<(usize, usize, usize, usize)> {
    t.shape().dims4().ok_or_else(|| Error::shape_of(op, format!("a 4-D {what} (N, C, H, W)"), what, t.shape()))
}

/// Checks that an NCHW shape has at least one channel, row and column (a batch of zero
/// images is fine). The ops split their work by planes and images, which an empty plane
/// would turn into chunks of length zero.
pub(crate) fn expect_nonempty_image(op: &'static str, what: &str, s: &crate::tensor::Shape) -> Result<()> {
    match s.dims4() {
        Some((_, c, h, w)) if c > 0 && h > 0 && w > 0 => Ok(()),
        _ => Err(Error::shape_of(
            op,
            format!("a 4-D {what} (N, C, H, W) with at least one channel, row and column"),
            what,
            s,
        )),
    }
}

/// Typed host slice of a tensor already checked to hold `T`.
pub(crate) fn host<T: Float>(t: &Tensor) -> Result<&[T]> {
    t.as_slice::<T>()
}

/// Lanes of the host reductions below.
const LANES: usize = 8;

/// `Σ f(x)` in f64, with [`LANES`] independent partial sums. One accumulator makes every
/// addition wait for the one before it (four cycles or so each); eight let the compiler keep
/// them in one vector register and add eight values at a time. The order of the additions
/// depends on the length alone, so the result is as reproducible as a plain loop's.
pub(crate) fn sum_f64<T: Float>(xs: &[T], f: impl Fn(f64) -> f64) -> f64 {
    let mut acc = [0.0f64; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for (a, &v) in acc.iter_mut().zip(chunk) {
            *a += f(v.to_f64());
        }
    }
    acc.iter().sum::<f64>() + tail.iter().map(|&v| f(v.to_f64())).sum::<f64>()
}

/// `(Σ f(a, b).0, Σ f(a, b).1)` over two slices of one length, in f64, as [`sum_f64`].
pub(crate) fn sum2_f64<T: Float>(a: &[T], b: &[T], f: impl Fn(f64, f64) -> (f64, f64)) -> (f64, f64) {
    let (mut s0, mut s1) = ([0.0f64; LANES], [0.0f64; LANES]);
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ta, tb) = (ca.remainder(), cb.remainder());
    for (xa, xb) in ca.zip(cb) {
        for i in 0..LANES {
            let (u, v) = f(xa[i].to_f64(), xb[i].to_f64());
            s0[i] += u;
            s1[i] += v;
        }
    }
    let (mut t0, mut t1) = (s0.iter().sum::<f64>(), s1.iter().sum::<f64>());
    for (&x, &y) in ta.iter().zip(tb) {
        let (u, v) = f(x.to_f64(), y.to_f64());
        t0 += u;
        t1 += v;
    }
    (t0, t1)
}

#[cfg(test)]
mod reduction_tests {
    use super::*;

    #[test]
    fn lane_sums_match_plain_sums() {
        for len in [0, 1, 7, 8, 9, 100, 1001] {
            let xs: Vec<f32> = (0..len).map(|i| (i as f32 * 0.37).sin()).collect();
            let plain: f64 = xs.iter().map(|&v| v as f64 * 2.0).sum();
            assert!((sum_f64(&xs, |v| v * 2.0) - plain).abs() < 1e-12, "{len}");
            let ys: Vec<f32> = xs.iter().map(|v| v * 3.0 + 1.0).collect();
            let (a, b) = sum2_f64(&xs, &ys, |x, y| (x * y, y));
            let want_a: f64 = xs.iter().zip(&ys).map(|(&x, &y)| x as f64 * y as f64).sum();
            let want_b: f64 = ys.iter().map(|&y| y as f64).sum();
            // Different orders of addition: equal to rounding, about 1e-16 of the magnitudes.
            let tol = 1e-13 * (1.0 + len as f64 * 4.0);
            assert!((a - want_a).abs() < tol && (b - want_b).abs() < tol, "{len}: {a} {want_a} {b} {want_b}");
        }
    }
}
