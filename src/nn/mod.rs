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
use crate::error::Result;

pub trait Module {
    fn forward(&mut self, g: &mut Graph, x: &Var) -> Result<Var>;

    /// Every parameter, in a fixed order.
    fn params(&self) -> Vec<&Param>;

    fn params_mut(&mut self) -> Vec<&mut Param>;

    /// The total number of trainable values.
    fn num_params(&self) -> usize {
        self.params().iter().map(|p| p.numel()).sum()
    }
}

/// The dotted name of a child: `join("layer1.0", "conv1")` is `layer1.0.conv1`.
pub fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}
