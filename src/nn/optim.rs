//! The optimizer: SGD with momentum and weight decay (see [`crate::ops::sgd`] for the update).

use std::collections::HashMap;

use crate::autograd::{Param, ParamId};
use crate::error::Result;
use crate::ops::sgd::{SgdParams, step, step_with_device_lr};
use crate::tensor::Tensor;

pub struct Sgd {
    pub hyper: SgdParams,
    velocity: HashMap<ParamId, Tensor>,
    /// The learning rate in device memory, when a captured graph reads it from there.
    device_lr: Option<Tensor>,
}

impl Sgd {
    pub fn new(lr: f64, momentum: f64, weight_decay: f64) -> Sgd {
        Sgd { hyper: SgdParams { lr, momentum, weight_decay }, velocity: HashMap::new(), device_lr: None }
    }

    /// Keeps the learning rate in a one-element tensor on `device`, read by the update kernel,
    /// so that a training step captured as a CUDA graph follows [`Sgd::set_lr`].
    pub fn keep_lr_on(&mut self, device: crate::device::Device) -> Result<()> {
        let lr = Tensor::full([1], self.hyper.lr, crate::tensor::DType::F32).to_device(device)?;
        self.device_lr = Some(lr);
        Ok(())
    }

    /// Sets the learning rate (written to the device when it is kept there; not allowed
    /// while a graph is being captured).
    pub fn set_lr(&mut self, lr: f64) -> Result<()> {
        self.hyper.lr = lr;
        if let Some(t) = &mut self.device_lr {
            match t.device().gpu()? {
                Some(gpu) => gpu.write(t.gpu_buffer()?, bytemuck::bytes_of(&(lr as f32)))?,
                None => *t = Tensor::full([1], lr, crate::tensor::DType::F32),
            }
        }
        Ok(())
    }

    /// Updates every parameter that has a gradient, then clears the gradients.
    pub fn step<'a>(&mut self, params: impl IntoIterator<Item = &'a mut Param>) -> Result<()> {
        for p in params {
            let Some(grad) = p.grad.take() else { continue };
            let v = match self.velocity.entry(p.id()) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(Tensor::zeros_on(p.value.shape().clone(), p.value.dtype(), p.value.device())?)
                }
            };
            match &self.device_lr {
                Some(lr) => step_with_device_lr(&mut p.value, &grad, v, self.hyper, lr)?,
                None => step(&mut p.value, &grad, v, self.hyper)?,
            }
        }
        Ok(())
    }
}
