//! Inverted dropout (Srivastava et al., 2014, in the form every framework uses).
//!
//! In training each element is kept with probability `1 − p` and scaled by `1/(1 − p)`, so
//! the expected output equals the input and nothing changes at eval time. The backward pass is
//! `dx = dy ⊙ mask`, with the mask (`0` or `1/(1 − p)` per element) drawn again from the
//! forward pass's seed rather than stored: a layer keeps nothing for backward, and each pass
//! moves only its input and its output (PyTorch keeps a one-byte mask per element).
//!
//! Element `i` is dropped when `u(seed, i) < p`, where `u` is the counter-based generator of
//! [`crate::rng::counter_uniform_f32`]: a GPU kernel can compute any element's draw on its own
//! and reproduce the CPU's mask bit for bit. The draw has 24 random bits and `p` is compared
//! as an f32, so the drop rate is `p` rounded to a multiple of 2⁻²⁴ while the scale uses `p`
//! itself: the expected output differs from the input by at most one part in 16 million.

pub mod reference;

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

/// The multiplier of every element: `0` where dropped, else `1/(1 − p)` (`0` everywhere for
/// p = 1, where PyTorch returns zeros rather than dividing by zero).
fn scale_of(p: f64) -> f64 {
    if p < 1.0 { 1.0 / (1.0 - p) } else { 0.0 }
}

/// Where a mask's seed comes from: the host (a launch argument), or a one-element i64 tensor
/// on the device, which a captured graph reads afresh at every replay.
#[derive(Clone, Debug)]
pub enum Seed {
    Host(u64),
    Device(Tensor),
}

/// `y = x ⊙ mask(p, seed)`.
pub fn forward(x: &Tensor, p: f64, seed: u64) -> Result<Tensor> {
    apply(x, p, &Seed::Host(seed), false)
}

/// `dx = dy ⊙ mask(p, seed)`, with the seed and probability of the forward pass.
pub fn backward(dy: &Tensor, p: f64, seed: u64) -> Result<Tensor> {
    apply(dy, p, &Seed::Host(seed), true)
}

/// [`forward`] with the seed given as a [`Seed`].
pub fn forward_seeded(x: &Tensor, p: f64, seed: &Seed) -> Result<Tensor> {
    apply(x, p, seed, false)
}

/// [`backward`] with the seed given as a [`Seed`].
pub fn backward_seeded(dy: &Tensor, p: f64, seed: &Seed) -> Result<Tensor> {
    apply(dy, p, seed, true)
}

/// The mask itself, `[0 or 1/(1 − p)]` per element (for tests and inspection).
pub fn mask(shape: impl Into<crate::tensor::Shape>, p: f64, seed: u64) -> Result<Tensor> {
    forward(&Tensor::full(shape, 1.0, crate::tensor::DType::F32), p, seed)
}

fn apply(x: &Tensor, p: f64, seed: &Seed, backward: bool) -> Result<Tensor> {
    check_probability(p)?;
    let scale = scale_of(p);
    if let Some(gpu) = gpu_f32(OP, x.dtype(), x.device())? {
        let n = x.numel();
        let y = gpu.alloc(x.dtype(), n)?;
        let call = match (seed, backward) {
            (Seed::Host(s), false) => {
                KernelCall::elementwise("dropout_fwd_f32", n).buf(&y).buf(x.gpu_buffer()?).i64(to_i64(n)).u64(*s)
            }
            (Seed::Host(s), true) => {
                KernelCall::elementwise("dropout_bwd_f32", n).buf(&y).buf(x.gpu_buffer()?).i64(to_i64(n)).u64(*s)
            }
            (Seed::Device(t), false) => KernelCall::elementwise("dropout_fwd_seed_f32", n)
                .buf(&y)
                .buf(x.gpu_buffer()?)
                .i64(to_i64(n))
                .buf(t.gpu_buffer()?),
            (Seed::Device(t), true) => KernelCall::elementwise("dropout_bwd_seed_f32", n)
                .buf(&y)
                .buf(x.gpu_buffer()?)
                .i64(to_i64(n))
                .buf(t.gpu_buffer()?),
        };
        gpu.launch(call.f32(p as f32).f32(scale as f32))?;
        return Ok(Tensor::from_gpu(x.shape().clone(), y));
    }
    let seed = match seed {
        Seed::Host(s) => *s,
        Seed::Device(t) => t.to_vec::<i64>()?.first().copied().unwrap_or(0) as u64,
    };
    with_float_type!(x.dtype(), OP, |T| {
        let xs = host::<T>(x)?;
        let keep_scale = T::from_f64(scale);
        let threshold = p as f32;
        let kept = |(i, &v): (usize, &T)| {
            if counter_uniform_f32(seed, i as u64) < threshold { T::ZERO } else { v * keep_scale }
        };
        let y: Vec<T> = crate::device::host_memory::collect_exact(xs.len(), xs.iter().enumerate().map(kept))?;
        Ok(Tensor::from_cpu(x.shape().clone(), y))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_about_one_minus_p_and_scales() {
        let x = Tensor::full([10_000], 1.0, crate::DType::F32);
        let y = forward(&x, 0.3, 11).unwrap();
        let ys = y.to_vec::<f32>().unwrap();
        let kept = ys.iter().filter(|&&v| v != 0.0).count();
        assert!((6700..7300).contains(&kept), "kept {kept}");
        assert!(ys.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.7).abs() < 1e-6));
        let m = mask([10_000], 0.3, 11).unwrap().to_vec::<f32>().unwrap();
        assert_eq!(ys, m);
        // The backward pass draws the same mask again from the seed; another seed another one.
        let dy = Tensor::full([10_000], 2.0, crate::DType::F32);
        let dx = backward(&dy, 0.3, 11).unwrap().to_vec::<f32>().unwrap();
        assert!(dx.iter().zip(&m).all(|(&g, &k)| g == 2.0 * k));
        assert_ne!(m, mask([10_000], 0.3, 12).unwrap().to_vec::<f32>().unwrap());
    }

    #[test]
    fn extremes() {
        let x = Tensor::full([100], 2.0, crate::DType::F64);
        assert_eq!(forward(&x, 0.0, 1).unwrap().to_vec::<f64>().unwrap(), vec![2.0; 100]);
        assert_eq!(forward(&x, 1.0, 1).unwrap().to_vec::<f64>().unwrap(), vec![0.0; 100]);
        assert!(forward(&x, 1.5, 1).is_err());
        assert!(forward(&x, f64::NAN, 1).is_err());
    }
}
