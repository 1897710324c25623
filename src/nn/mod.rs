//! Layers with parameters, built on the autograd tape.
//!
//! A layer owns its [`Param`]s (and, for batch norm, its running statistics) and implements
//! [`Module`]: `forward` reads the parameters into a [`Graph`] and records the ops; `params`
//! lists them, with their full dotted names, for the optimizer and for checkpoints. Layers
//! without parameters (ReLU, pooling) are plain calls on the graph.

mod batchnorm;
mod conv;
pub mod init;
mod linear;
mod optim;

pub use batchnorm::BatchNorm2d;
pub use conv::Conv2d;
pub use linear::Linear;
pub use optim::Sgd;

use crate::autograd::{Graph, Param, Var};
use crate::device::Device;
use crate::error::Result;
use crate::tensor::Tensor;

pub trait Module {
    fn forward(&mut self, g: &mut Graph, x: &Var) -> Result<Var>;

    /// Every parameter, in a fixed order.
    fn params(&self) -> Vec<&Param>;

    fn params_mut(&mut self) -> Vec<&mut Param>;

    /// State that is not trained but is saved and moved with the model (batch norm's
    /// running statistics).
    fn buffers_mut(&mut self) -> Vec<&mut Tensor> {
        Vec::new()
    }

    /// Moves every parameter and buffer to `device`.
    fn to_device(&mut self, device: Device) -> Result<()> {
        for p in self.params_mut() {
            p.value = p.value.to_device(device)?;
            p.grad = None;
        }
        for b in self.buffers_mut() {
            *b = b.to_device(device)?;
        }
        Ok(())
    }

    /// The total number of trainable values.
    fn num_params(&self) -> usize {
        self.params().iter().map(|p| p.numel()).sum()
    }
}

/// The dotted name of a child: `join("layer1.0", "conv1")` is `layer1.0.conv1`.
pub fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() { name.to_string() } else { format!("{prefix}.{name}") }
}
