//! A training step captured once as a CUDA graph and replayed (`--cuda-graph`): whether a
//! device can, how many ordinary steps come first, and [`GraphStep`], which owns the graph and
//! the buffers its batch goes into. Apart from the loop because it is the one part of training
//! that writes to device memory behind the tape's back.

use crate::autograd::{Graph, Var};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::nn::{Module, Sgd};
use crate::ops::ExecOptions;
use crate::tensor::Tensor;

/// Steps run as usual before the step is captured (`--cuda-graph`): the autotuner times its
/// kernels and the allocator fills its cache.
pub(super) const GRAPH_WARMUP_STEPS: usize = 2;

/// Whether a training step can be captured as a graph on `device`: any model's can (dropout's
/// seeds move to device memory), on a GPU or the emulator.
pub fn check_graph_capturable(device: Device) -> Result<()> {
    if device.is_cpu() {
        return Err(Error::argument("--cuda-graph", "needs a GPU device (cuda, or emu to try it on the CPU)"));
    }
    Ok(())
}

/// A training step captured as a CUDA graph (`--cuda-graph`): forward, loss, backward and the
/// SGD update, replayed with one launch. The batch goes into the same input buffers before
/// each replay; the loss and logits are read from the tensors the captured step produced,
/// which every replay overwrites. The learning rate lives in device memory (see
/// [`Sgd::keep_lr_on`]), so the schedule still applies.
pub struct GraphStep {
    graph: crate::device::CapturedGraph,
    x: Tensor,
    y: Tensor,
    loss: Tensor,
    logits: Tensor,
}

impl GraphStep {
    /// Captures one step on the batch `x`, `y` (already on the device), which become the
    /// graph's input buffers. Nothing runs until [`GraphStep::run`].
    /// Layers with dropout must have had [`Module::prepare_capture`] and, before each step,
    /// [`Module::prepare_replay`].
    pub fn capture(
        model: &mut dyn Module,
        opt: &mut Sgd,
        x: Tensor,
        y: Tensor,
        exec: ExecOptions,
    ) -> Result<GraphStep> {
        let gpu = x.device().gpu()?.ok_or_else(|| Error::argument("--cuda-graph", "needs a GPU device"))?;
        let (graph, (loss, logits)) = gpu.capture(|| {
            let mut g = Graph::new().with_options(exec);
            let logits = model.forward(&mut g, &Var::constant(x.clone()))?;
            let loss = g.cross_entropy(&logits, &y)?;
            let (loss_value, logits_value) = (loss.value().clone(), logits.value().clone());
            g.backward(&loss)?.accumulate_into(model.params_mut())?;
            opt.step(model.params_mut())?;
            Ok((loss_value, logits_value))
        })?;
        Ok(GraphStep { graph, x, y, loss, logits })
    }

    /// The loss of the last replay (a device tensor the graph overwrites).
    pub fn loss(&self) -> &Tensor {
        &self.loss
    }

    /// The logits of the last replay, likewise.
    pub(super) fn logits(&self) -> &Tensor {
        &self.logits
    }

    /// Replays the step on whatever the input buffers hold.
    pub fn replay(&self) -> Result<()> {
        self.graph.replay()
    }

    /// Writes a batch (host tensors of the captured shapes) into the inputs and replays.
    pub fn run(&self, x: &Tensor, y: &Tensor) -> Result<()> {
        for (dst, src) in [(&self.x, x), (&self.y, y)] {
            if dst.shape() != src.shape() || dst.dtype() != src.dtype() {
                return Err(Error::argument(
                    "--cuda-graph",
                    format!("a batch of shape {} after capturing {}", src.shape(), dst.shape()),
                ));
            }
            let gpu = dst.device().gpu()?.ok_or_else(|| Error::argument("--cuda-graph", "needs a GPU device"))?;
            let host = src.to_device(Device::Cpu)?;
            let crate::device::Storage::Cpu(bytes) = host.storage() else {
                return Err(Error::argument("--cuda-graph", "the batch did not reach the host"));
            };
            gpu.write(dst.gpu_buffer()?, bytes.as_bytes())?;
        }
        self.graph.replay()
    }
}
