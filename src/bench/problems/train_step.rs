//! A model's whole training step as a bench problem: what it is ([`TrainStep`]) and how one
//! is set up on a fixed batch, eagerly or captured once as a CUDA graph and replayed. Apart
//! from the single ops because it builds a model and an optimizer, and borrows the training
//! loop's graph capture.

use super::prepare::pattern;
use crate::autograd::{Graph, Var};
use crate::device::Device;
use crate::error::Result;
use crate::models::{self, Model};
use crate::nn::Sgd;
use crate::ops::ExecOptions;
use crate::tensor::{Shape, Tensor};

/// A model's training step, as a problem: forward, loss, backward and the SGD update.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainStep {
    pub model: String,
    pub batch: usize,
    pub input: [usize; 3],
    pub num_classes: usize,
    /// DenseNet's memory-efficient mode (torchvision's `memory_efficient=True`).
    pub memory_efficient: bool,
}

/// One training step of a model on a fixed batch: forward, cross-entropy, backward, SGD.
pub(super) fn prepare_train_step(
    step: &TrainStep,
    device: Device,
    graph: bool,
    exec: ExecOptions,
) -> Result<Box<dyn FnMut() -> Result<()>>> {
    let mut model = models::build(&step.model, step.num_classes, 0)?;
    crate::train::set_memory_efficient(model.as_mut(), step.memory_efficient)?;
    let [c, h, w] = step.input;
    model.check_input(&[step.batch, c, h, w].into())?;
    model.to_device(device)?;
    let x = pattern(Shape::new([step.batch, c, h, w]), 1, device)?;
    let labels: Vec<i64> = (0..step.batch).map(|i| (i % step.num_classes) as i64).collect();
    let y = Tensor::from_vec([step.batch], labels)?.to_device(device)?;
    // A learning rate small enough that repeated steps on one batch stay finite.
    let mut opt = Sgd::new(1e-4, 0.9, 5e-4);
    if graph {
        crate::train::check_graph_capturable(device)?;
        opt.keep_lr_on(device)?;
        // Two ordinary steps first: the autotuner's timings and the allocator's cache.
        for _ in 0..2 {
            eager_step(model.as_mut(), &mut opt, &x, &y, exec)?;
        }
        model.prepare_capture(device)?;
        model.prepare_replay()?;
        let captured = crate::train::GraphStep::capture(model.as_mut(), &mut opt, x, y, exec)?;
        // Every replay reads and writes the optimizer's momentum and device learning rate:
        // the optimizer lives as long as the graph (the graph refuses to replay otherwise).
        return Ok(Box::new(move || {
            let _optimizer_state = &opt;
            model.prepare_replay()?;
            captured.replay()
        }));
    }
    Ok(Box::new(move || eager_step(model.as_mut(), &mut opt, &x, &y, exec)))
}

/// One step as the graph records it: forward, cross-entropy, backward, SGD.
fn eager_step(model: &mut dyn Model, opt: &mut Sgd, x: &Tensor, y: &Tensor, exec: ExecOptions) -> Result<()> {
    let mut g = Graph::new().with_options(exec);
    let logits = model.forward(&mut g, &Var::constant(x.clone()))?;
    let loss = g.cross_entropy(&logits, y)?;
    g.backward(&loss)?.accumulate_into(model.params_mut())?;
    opt.step(model.params_mut())
}
