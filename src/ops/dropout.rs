//! Inverted dropout (Srivastava et al., 2014, in the form every framework uses).
//!
//! In training each element is kept with probability `1 − p` and scaled by `1/(1 − p)`, so
//! the expected output equals the input and nothing changes at eval time. The mask is stored
//! as a tensor of `0` and `1/(1 − p)`, and the backward pass is `dx = dy ⊙ mask`.
//!
//! Element `i` is dropped when `u(seed, i) < p`, where `u` is the counter-based generator of
//! [`crate::rng::counter_uniform_f32`]: a GPU kernel can compute any element's draw on its own
//! and reproduce the CPU's mask bit for bit. The draw has 24 random bits and `p` is compared
//! as an f32, so the drop rate is `p` rounded to a multiple of 2⁻²⁴ while the scale uses `p`
//! itself: the expected output differs from the input by at most one part in 16 million.

use super::{gpu_f32, host, with_float_type};
use crate::device::gpu::{KernelCall, to_i64};
use crate::error::{Error, Result};
use crate::rng::counter_uniform_f32;
use crate::tensor::{Element, Float, Tensor};

const OP: &str = "dropout";

pub fn check_probability(p: f64) -> Result<()> {
    if (0.0..=1.0).contains(&p) {
        Ok(())
    } else {
        Err(Error::argument(OP, format!("probability must be in [0, 1], got {p}")))
    }
}

/// The output and the mask that produced it.
pub fn forward(x: &Tensor, p: f64, seed: u64) -> Result<(Tensor, Tensor)> {
    check_probability(p)?;
    // p = 1 drops everything (PyTorch returns zeros rather than dividing by zero).
    let scale = if p < 1.0 { 1.0 / (1.0 - p) } else { 0.0 };
    if let Some(gpu) = gpu_f32(OP, x.dtype(), x.device())? {
        let n = x.numel();
        let y = gpu.alloc(x.dtype(), n)?;
        let mask = gpu.alloc(x.dtype(), n)?;
        gpu.launch(
            KernelCall::elementwise("dropout_fwd_f32", n)
                .buf(&y)
                .buf(&mask)
                .buf(x.gpu_buffer()?)
                .i64(to_i64(n))
                .u64(seed)
                .f32(p as f32)
                .f32(scale as f32),
        )?;
        return Ok((Tensor::from_gpu(x.shape().clone(), y), Tensor::from_gpu(x.shape().clone(), mask)));
    }
    with_float_type!(x.dtype(), OP, |T| {
        let xs = host::<T>(x)?;
        let keep_scale = T::from_f64(scale);
        let threshold = p as f32;
        let mask: Vec<T> = (0..xs.len())
            .map(|i| if counter_uniform_f32(seed, i as u64) < threshold { T::ZERO } else { keep_scale })
            .collect();
        let y: Vec<T> = xs.iter().zip(&mask).map(|(&x, &m)| x * m).collect();
        Ok((Tensor::from_cpu(x.shape().clone(), y), Tensor::from_cpu(x.shape().clone(), mask)))
    })
}

/// `dx = dy ⊙ mask`.
pub fn backward(dy: &Tensor, mask: &Tensor) -> Result<Tensor> {
    super::elementwise::mul(dy, mask)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_about_one_minus_p_and_scales() {
        let x = Tensor::full([10_000], 1.0, crate::DType::F32);
        let (y, mask) = forward(&x, 0.3, 11).unwrap();
        let ys = y.to_vec::<f32>().unwrap();
        let kept = ys.iter().filter(|&&v| v != 0.0).count();
        assert!((6700..7300).contains(&kept), "kept {kept}");
        assert!(ys.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.7).abs() < 1e-6));
        assert_eq!(ys, mask.to_vec::<f32>().unwrap());
        // The same seed gives the same mask; another seed another one.
        let (_, mask2) = forward(&x, 0.3, 11).unwrap();
        let (_, mask3) = forward(&x, 0.3, 12).unwrap();
        assert_eq!(mask.to_vec::<f32>().unwrap(), mask2.to_vec::<f32>().unwrap());
        assert_ne!(mask.to_vec::<f32>().unwrap(), mask3.to_vec::<f32>().unwrap());
    }

    #[test]
    fn extremes() {
        let x = Tensor::full([100], 2.0, crate::DType::F64);
        assert_eq!(forward(&x, 0.0, 1).unwrap().0.to_vec::<f64>().unwrap(), vec![2.0; 100]);
        assert_eq!(forward(&x, 1.0, 1).unwrap().0.to_vec::<f64>().unwrap(), vec![0.0; 100]);
        assert!(forward(&x, 1.5, 1).is_err());
        assert!(forward(&x, f64::NAN, 1).is_err());
    }
}
