//! Stochastic gradient descent with momentum and weight decay, in PyTorch's form
//! (`torch.optim.SGD` with dampening 0, not Nesterov):
//!
//! ```text
//! g ← grad + weight_decay · θ
//! v ← momentum · v + g          (v starts at zero, so the first step sets v = g)
//! θ ← θ − lr · v
//! ```
//!
//! Note that the learning rate multiplies the velocity, not the gradient (Sutskever et al.
//! write it the other way); the two agree at a constant learning rate but differ when it
//! changes.

pub mod reference;

use rayon::prelude::*;

use super::{common_dtype, gpu_f32, host, with_float_type};
use crate::device::gpu::{KernelCall, to_i64};
use crate::error::{Error, Result};
use crate::tensor::{Element, Tensor};

const OP: &str = "sgd";

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SgdParams {
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
}

/// One update of `param` (and its `velocity`) from `grad`, in place.
pub fn step(param: &mut Tensor, grad: &Tensor, velocity: &mut Tensor, h: SgdParams) -> Result<()> {
    step_lr(param, grad, velocity, h, None)
}

/// [`step`] with the learning rate read from a one-element f32 tensor on the parameter's GPU
/// instead of `h.lr` (what a training step captured as a CUDA graph needs: the value can
/// change between replays). On the CPU the tensor's value is read on the host.
pub fn step_with_device_lr(
    param: &mut Tensor,
    grad: &Tensor,
    velocity: &mut Tensor,
    h: SgdParams,
    lr: &Tensor,
) -> Result<()> {
    if lr.numel() != 1 {
        return Err(Error::shape(OP, "a one-element learning rate", lr.shape().to_string()));
    }
    step_lr(param, grad, velocity, h, Some(lr))
}

fn step_lr(param: &mut Tensor, grad: &Tensor, velocity: &mut Tensor, h: SgdParams, lr: Option<&Tensor>) -> Result<()> {
    for (name, t) in [("gradient", grad), ("velocity", &*velocity)] {
        if t.shape() != param.shape() {
            return Err(Error::shape(
                OP,
                format!("{name} of the parameter's shape {}", param.shape()),
                format!("{name} of shape {}", t.shape()),
            ));
        }
    }
    let (dtype, device) = common_dtype(OP, &[("parameter", param), ("gradient", grad), ("velocity", velocity)])?;
    if let Some(gpu) = gpu_f32(OP, dtype, device)? {
        let n = param.numel();
        let g = grad.gpu_buffer()?;
        let v = velocity.gpu_buffer_mut()?;
        let p = param.gpu_buffer_mut()?;
        let call = match lr {
            Some(lr) => {
                KernelCall::vec4("sgd_step_lr_f32", n).buf(p).buf(v).buf(g).i64(to_i64(n)).buf(lr.gpu_buffer()?)
            }
            None => KernelCall::vec4("sgd_step_f32", n).buf(p).buf(v).buf(g).i64(to_i64(n)).f32(h.lr as f32),
        };
        return gpu.launch(call.f32(h.momentum as f32).f32(h.weight_decay as f32));
    }
    let host_lr = match lr {
        Some(t) => t.item()?,
        None => h.lr,
    };
    with_float_type!(dtype, OP, |T| {
        let g = host::<T>(grad)?;
        let (lr, mom, wd) = (T::from_f64(host_lr), T::from_f64(h.momentum), T::from_f64(h.weight_decay));
        let v = velocity.as_mut_slice::<T>()?;
        let p = param.as_mut_slice::<T>()?;
        const CHUNK: usize = 1 << 14;
        p.par_chunks_mut(CHUNK).zip(v.par_chunks_mut(CHUNK).zip(g.par_chunks(CHUNK))).for_each(|(p, (v, g))| {
            for ((p, v), &g) in p.iter_mut().zip(v.iter_mut()).zip(g) {
                let d = g + wd * *p;
                *v = mom * *v + d;
                *p -= lr * *v;
            }
        });
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_steps_by_hand() {
        let h = SgdParams { lr: 0.1, momentum: 0.9, weight_decay: 0.01 };
        let mut p = Tensor::from_vec([1], vec![1.0f64]).unwrap();
        let mut v = Tensor::zeros([1], crate::DType::F64);
        let g = Tensor::from_vec([1], vec![0.5f64]).unwrap();
        step(&mut p, &g, &mut v, h).unwrap();
        // d = 0.5 + 0.01·1 = 0.51; v = 0.51; p = 1 − 0.051 = 0.949
        assert!((v.item().unwrap() - 0.51).abs() < 1e-15);
        assert!((p.item().unwrap() - 0.949).abs() < 1e-15);
        step(&mut p, &g, &mut v, h).unwrap();
        // d = 0.5 + 0.00949 = 0.50949; v = 0.9·0.51 + 0.50949 = 0.96849; p = 0.949 − 0.096849
        assert!((v.item().unwrap() - 0.96849).abs() < 1e-15);
        assert!((p.item().unwrap() - 0.852151).abs() < 1e-15);
    }

    #[test]
    fn shape_mismatch_is_an_error() {
        let mut p = Tensor::zeros([3], crate::DType::F32);
        let mut v = Tensor::zeros([3], crate::DType::F32);
        let g = Tensor::zeros([4], crate::DType::F32);
        let h = SgdParams { lr: 0.1, momentum: 0.0, weight_decay: 0.0 };
        assert!(step(&mut p, &g, &mut v, h).unwrap_err().to_string().contains("gradient of the parameter's shape [3]"));
    }
}
