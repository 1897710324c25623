//! A model's whole inference as a bench problem: the eval-mode forward pass of a batch
//! (running statistics, no dropout), the number an inference engine is judged by. On the CPU
//! `scripts/cpu_baseline.py` times the same problem in ONNX Runtime, with the same weights'
//! shapes, so `scratchnet bench --compare` sets the two side by side.

use super::prepare::pattern;
use crate::autograd::{Graph, Var};
use crate::device::Device;
use crate::device::cpu::on_cpu_workers;
use crate::error::Result;
use crate::models;
use crate::ops::ExecOptions;
use crate::tensor::Shape;

/// The forward pass of a model in eval mode on one batch.
#[derive(Clone, Debug, PartialEq)]
pub struct Inference {
    pub model: String,
    pub batch: usize,
    /// One image's channels, height and width.
    pub input: [usize; 3],
    pub num_classes: usize,
    /// Multiply-adds of the convolutions and linear layers for the whole batch (for GFLOP/s;
    /// not part of the problem's spec).
    pub macs: u64,
}

impl Inference {
    /// The inference of `model` (with its default number of classes) on `batch` images of
    /// `input`, its multiply-adds not counted yet ([`Inference::counted`]).
    pub fn new(model: &str, batch: usize, input: [usize; 3]) -> Inference {
        let num_classes = models::default_num_classes(model);
        Inference { model: model.to_string(), batch, input, num_classes, macs: 0 }
    }

    /// The same, its multiply-adds counted by tracing one image through the model (which
    /// builds it: a bench counts only the problems it keeps).
    pub fn counted(self) -> Result<Inference> {
        let mut m = models::build(&self.model, self.num_classes, 0)?;
        let per_image: u64 = models::trace_layers(m.as_mut(), self.input)?.iter().map(|l| l.macs).sum();
        Ok(Inference { macs: per_image * self.batch as u64, ..self })
    }
}

/// One eval-mode forward pass of the model (seed 0's weights) on a fixed batch; the logits
/// are dropped.
pub(super) fn prepare_inference(
    inf: &Inference,
    device: Device,
    exec: ExecOptions,
) -> Result<Box<dyn FnMut() -> Result<()>>> {
    let mut model = models::build(&inf.model, inf.num_classes, 0)?;
    let [c, h, w] = inf.input;
    model.check_input(&[inf.batch, c, h, w].into())?;
    model.to_device(device)?;
    let x = pattern(Shape::new([inf.batch, c, h, w]), 1, device)?;
    Ok(Box::new(move || {
        on_cpu_workers(device, || {
            let mut g = Graph::eval().with_options(exec);
            model.forward(&mut g, &Var::constant(x.clone())).map(drop)
        })
    }))
}
