//! Layers, built on the autograd tape.
//!
//! A layer implements [`Module`]: `forward` reads its parameters into a [`Graph`] and records
//! the ops. Layers with parameters ([`Conv2d`], [`Linear`], [`BatchNorm2d`]) own them as
//! [`Param`]s with their full dotted names (`layer1.0.conv1.weight`, as in a torchvision
//! `state_dict`); the layers without ([`MaxPool2d`], [`AvgPool2d`], [`GlobalAvgPool`],
//! [`LocalResponseNorm`], [`Dropout`]) are modules too, so they have names in a summary.
//! A network is a tree of modules: a composite lists its children, and the parameters and
//! buffers of the whole tree are gathered from the leaves.
//!
//! Train or eval is a property of the graph a forward pass runs in: [`Graph::new`] trains
//! (batch statistics, dropout on), [`Graph::eval`] evaluates (running statistics, dropout off).

mod batchnorm;
mod conv;
mod conv_bn;
pub mod init;
mod layers;
mod linear;
mod optim;

pub use batchnorm::BatchNorm2d;
pub use conv::Conv2d;
pub use conv_bn::conv_batch_norm;
pub use layers::{AvgPool2d, Dropout, GlobalAvgPool, LocalResponseNorm, MaxPool2d};
pub use linear::Linear;
pub use optim::Sgd;

use crate::autograd::{Graph, Param, Var};
use crate::device::Device;
use crate::error::Result;
use crate::tensor::Tensor;

pub trait Module {
    fn forward(&mut self, g: &mut Graph, x: &Var) -> Result<Var>;

    /// The direct sub-modules, in a fixed order (empty for a leaf layer).
    fn children(&self) -> Vec<&dyn Module> {
        Vec::new()
    }

    fn children_mut(&mut self) -> Vec<&mut dyn Module> {
        Vec::new()
    }

    /// Every parameter of the tree, in a fixed order. Leaf layers with parameters override
    /// this; composites get it from their children.
    fn params(&self) -> Vec<&Param> {
        self.children().into_iter().flat_map(|c| c.params()).collect()
    }

    fn params_mut(&mut self) -> Vec<&mut Param> {
        self.children_mut().into_iter().flat_map(|c| c.params_mut()).collect()
    }

    /// State that is saved and moved with the model but not trained (batch norm's running
    /// statistics and step counter), with its state_dict name.
    fn buffers(&self) -> Vec<(String, &Tensor)> {
        self.children().into_iter().flat_map(|c| c.buffers()).collect()
    }

    fn buffers_mut(&mut self) -> Vec<(String, &mut Tensor)> {
        self.children_mut().into_iter().flat_map(|c| c.buffers_mut()).collect()
    }

    /// Sets the probability of every dropout layer; returns how many there are.
    fn set_dropout(&mut self, p: f64) -> usize {
        self.children_mut().into_iter().map(|c| c.set_dropout(p)).sum()
    }

    /// Dropout layers whose probability is above zero.
    fn active_dropout(&self) -> usize {
        self.children().into_iter().map(|c| c.active_dropout()).sum()
    }

    /// Gets ready for the training step to be captured as a graph on `device`: layers whose
    /// step takes a value from the host each time (dropout's seed) move it to device memory.
    fn prepare_capture(&mut self, device: Device) -> Result<()> {
        for c in self.children_mut() {
            c.prepare_capture(device)?;
        }
        Ok(())
    }

    /// Before each step once [`Module::prepare_capture`] has run: writes the values the
    /// step will read from device memory (each dropout layer's next seed, drawn from its
    /// generator as an ordinary step would).
    fn prepare_replay(&mut self) -> Result<()> {
        for c in self.children_mut() {
            c.prepare_replay()?;
        }
        Ok(())
    }

    /// Counts a training step that ran as a replay of a captured graph, which does not run
    /// the host-side bookkeeping of the layers (batch norm's `num_batches_tracked`).
    fn count_replayed_step(&mut self) {
        for c in self.children_mut() {
            c.count_replayed_step();
        }
    }

    /// Turns memory-efficient training (recomputing instead of keeping some activations) on
    /// or off in every layer that has it; returns how many do (DenseNet's dense layers).
    fn set_memory_efficient(&mut self, on: bool) -> usize {
        self.children_mut().into_iter().map(|c| c.set_memory_efficient(on)).sum()
    }

    /// Moves every parameter and floating-point buffer to `device` (integer counters stay
    /// on the host, where they are updated).
    fn to_device(&mut self, device: Device) -> Result<()> {
        for p in self.params_mut() {
            p.value = p.value.to_device(device)?;
            p.grad = None;
        }
        for (_, b) in self.buffers_mut() {
            if b.dtype().is_float() {
                *b = b.to_device(device)?;
            }
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
