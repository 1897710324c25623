//! The optimizer: SGD with momentum and weight decay (see [`crate::ops::sgd`] for the update).

use std::collections::HashMap;

use crate::autograd::{Param, ParamId};
use crate::error::Result;
use crate::ops::sgd::{SgdParams, step};
use crate::tensor::Tensor;

pub struct Sgd {
    pub hyper: SgdParams,
    velocity: HashMap<ParamId, Tensor>,
}

impl Sgd {
    pub fn new(lr: f64, momentum: f64, weight_decay: f64) -> Sgd {
        Sgd { hyper: SgdParams { lr, momentum, weight_decay }, velocity: HashMap::new() }
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
            step(&mut p.value, &grad, v, self.hyper)?;
        }
        Ok(())
    }
}
