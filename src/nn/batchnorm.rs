use super::{Module, join};
use crate::autograd::{BnEpilogue, BnStats, Graph, LayerOp, Param, Var};
use crate::error::Result;
use crate::ops::batchnorm::update_running_stats;
use crate::tensor::{DType, Tensor};

/// `nn.BatchNorm2d`: γ = 1 and β = 0 at the start, running mean 0 and variance 1,
/// momentum 0.1, ε = 1e-5 (PyTorch's defaults).
pub struct BatchNorm2d {
    pub weight: Param,
    pub bias: Param,
    pub running_mean: Tensor,
    pub running_var: Tensor,
    /// Training steps taken: PyTorch's `num_batches_tracked`, an i64 scalar kept on the host.
    pub num_batches_tracked: Tensor,
    pub eps: f64,
    pub momentum: f64,
    name: String,
}

impl BatchNorm2d {
    pub fn new(name: &str, channels: usize) -> BatchNorm2d {
        BatchNorm2d {
            weight: Param::new(join(name, "weight"), Tensor::full([channels], 1.0, DType::F32)),
            bias: Param::new(join(name, "bias"), Tensor::zeros([channels], DType::F32)),
            running_mean: Tensor::zeros([channels], DType::F32),
            running_var: Tensor::full([channels], 1.0, DType::F32),
            num_batches_tracked: Tensor::scalar(0i64),
            eps: 1e-5,
            momentum: 0.1,
            name: name.to_string(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Steps taken in training mode.
    pub fn batches_tracked(&self) -> i64 {
        self.num_batches_tracked.as_slice::<i64>().ok().and_then(|s| s.first().copied()).unwrap_or(0)
    }
}

impl BatchNorm2d {
    /// Moves the running statistics towards the batch statistics of a training step, taken
    /// over `count` values per channel, and counts the step.
    pub fn track(&mut self, count: usize, mean: &Tensor, var: &Tensor) -> Result<()> {
        update_running_stats(&mut self.running_mean, &mut self.running_var, mean, var, count, self.momentum)?;
        let steps = self.batches_tracked() + 1;
        self.num_batches_tracked = Tensor::scalar(steps);
        Ok(())
    }

    /// `relu(BN(x))`: fused into one kernel when the graph fuses.
    pub fn forward_relu(&mut self, g: &mut Graph, x: &Var) -> Result<Var> {
        self.forward_act(g, x, None, true)
    }

    /// `relu(BN(x) + residual)`, the end of a residual block: fused when the graph fuses.
    pub fn forward_add_relu(&mut self, g: &mut Graph, x: &Var, residual: &Var) -> Result<Var> {
        self.forward_act(g, x, Some(residual), true)
    }

    /// `act(BN(x) + residual)`. In a training graph the batch statistics normalise and the
    /// running statistics move towards them; in an eval graph the running statistics
    /// normalise. The graph fuses the epilogue into the kernel or runs it op by op
    /// ([`Graph::batch_norm`]).
    pub(crate) fn forward_act(&mut self, g: &mut Graph, x: &Var, residual: Option<&Var>, relu: bool) -> Result<Var> {
        g.begin_layer(&self.name);
        let gamma = g.param(&self.weight);
        let beta = g.param(&self.bias);
        let stats = match g.is_training() {
            true => BnStats::Batch,
            false => BnStats::Running { mean: &self.running_mean, var: &self.running_var },
        };
        let out = g.batch_norm(x, (&gamma, &beta), stats, BnEpilogue { residual, relu }, self.eps)?;
        if let Some((mean, var, count)) = &out.batch_stats {
            self.track(*count, mean, var)?;
        }
        let y = out.y;
        g.record_layer(
            &self.name,
            x,
            &y,
            self.num_params(),
            LayerOp::BatchNorm { residual: residual.is_some(), relu, folded: false },
        );
        Ok(y)
    }
}

impl Module for BatchNorm2d {
    fn forward(&mut self, g: &mut Graph, x: &Var) -> Result<Var> {
        self.forward_act(g, x, None, false)
    }

    fn count_replayed_step(&mut self) {
        self.num_batches_tracked = Tensor::scalar(self.batches_tracked() + 1);
    }

    fn params(&self) -> Vec<&Param> {
        vec![&self.weight, &self.bias]
    }

    fn params_mut(&mut self) -> Vec<&mut Param> {
        vec![&mut self.weight, &mut self.bias]
    }

    fn buffers(&self) -> Vec<(String, &Tensor)> {
        vec![
            (join(&self.name, "running_mean"), &self.running_mean),
            (join(&self.name, "running_var"), &self.running_var),
            (join(&self.name, "num_batches_tracked"), &self.num_batches_tracked),
        ]
    }

    fn buffers_mut(&mut self) -> Vec<(String, &mut Tensor)> {
        vec![
            (join(&self.name, "running_mean"), &mut self.running_mean),
            (join(&self.name, "running_var"), &mut self.running_var),
            (join(&self.name, "num_batches_tracked"), &mut self.num_batches_tracked),
        ]
    }
}
