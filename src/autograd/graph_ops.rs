//! The graph's ops: each runs its forward kernel on the values of its inputs and records on
//! the tape what its backward pass will need (a `Saved`, through `Graph::record`, which
//! records nothing when no input needs a gradient or the graph does not record). The
//! backward of each is in `backward.rs`; batch normalisation, with its modes and epilogues,
//! is in `batch_norm.rs`.

use super::backward::Saved;
use super::{Graph, Var};
use crate::error::{Error, Result};
use crate::ops::{self, conv2d::Conv2dParams, lrn::LrnParams, pool::Pool2dParams};
use crate::tensor::{Shape, Tensor};

impl Graph {
    pub fn conv2d(&mut self, x: &Var, w: &Var, b: Option<&Var>, p: Conv2dParams) -> Result<Var> {
        let y = ops::conv2d::forward(&x.value, &w.value, b.map(|b| &b.value), p, &self.op_options())?;
        let mut inputs = vec![x, w];
        inputs.extend(b);
        self.record(y, &inputs, |k| Ok(Saved::Conv2d { x: k.activation(&x.value)?, w: w.value.clone(), p }))
    }

    /// `relu(conv(x, w) + b)`, fused: one pass over the output, and only the output kept
    /// for the ReLU's backward.
    pub fn conv2d_relu(&mut self, x: &Var, w: &Var, b: Option<&Var>, p: Conv2dParams) -> Result<Var> {
        let y = ops::conv2d::forward_relu(&x.value, &w.value, b.map(|b| &b.value), p, &self.op_options())?;
        let y_saved = y.clone();
        let mut inputs = vec![x, w];
        inputs.extend(b);
        self.record(y, &inputs, |k| {
            Ok(Saved::Conv2dRelu { x: k.activation(&x.value)?, w: w.value.clone(), p, y: k.activation(&y_saved)? })
        })
    }

    /// `relu(x·Wᵀ + b)`, fused.
    pub fn linear_relu(&mut self, x: &Var, w: &Var, b: Option<&Var>) -> Result<Var> {
        let y = ops::linear::forward_relu(&x.value, &w.value, b.map(|b| &b.value), &self.op_options())?;
        let y_saved = y.clone();
        let mut inputs = vec![x, w];
        inputs.extend(b);
        self.record(y, &inputs, |k| {
            Ok(Saved::LinearRelu { x: k.activation(&x.value)?, w: w.value.clone(), y: k.activation(&y_saved)? })
        })
    }

    pub fn linear(&mut self, x: &Var, w: &Var, b: Option<&Var>) -> Result<Var> {
        let y = ops::linear::forward(&x.value, &w.value, b.map(|b| &b.value), &self.op_options())?;
        let mut inputs = vec![x, w];
        inputs.extend(b);
        self.record(y, &inputs, |k| Ok(Saved::Linear { x: k.activation(&x.value)?, w: w.value.clone() }))
    }

    pub fn max_pool2d(&mut self, x: &Var, p: Pool2dParams) -> Result<Var> {
        let y = ops::pool::max_pool2d_forward(&x.value, p)?;
        self.record(y, &[x], |k| Ok(Saved::MaxPool2d { x: k.activation(&x.value)?, p }))
    }

    pub fn avg_pool2d(&mut self, x: &Var, p: Pool2dParams) -> Result<Var> {
        let y = ops::pool::avg_pool2d_forward(&x.value, p)?;
        self.record(y, &[x], |_| Ok(Saved::AvgPool2d { x_shape: x.shape().clone(), p }))
    }

    /// `[N, C, H, W] → [N, C, 1, 1]`.
    pub fn global_avg_pool(&mut self, x: &Var) -> Result<Var> {
        let y = ops::pool::global_avg_pool_forward(&x.value)?;
        self.record(y, &[x], |_| Ok(Saved::GlobalAvgPool { x_shape: x.shape().clone() }))
    }

    pub fn lrn(&mut self, x: &Var, p: LrnParams) -> Result<Var> {
        let y = ops::lrn::forward(&x.value, p)?;
        let y_saved = y.clone();
        self.record(y, &[x], |k| Ok(Saved::Lrn { x: k.activation(&x.value)?, y: k.activation(&y_saved)?, p }))
    }

    pub fn relu(&mut self, x: &Var) -> Result<Var> {
        let y = ops::elementwise::relu_forward(&x.value)?;
        let y_saved = y.clone();
        self.record(y, &[x], |k| Ok(Saved::Relu { y: k.activation(&y_saved)? }))
    }

    pub fn add(&mut self, a: &Var, b: &Var) -> Result<Var> {
        let y = ops::elementwise::add(&a.value, &b.value)?;
        self.record(y, &[a, b], |_| Ok(Saved::Add))
    }

    /// Concatenation along dimension 1 (channels).
    pub fn concat(&mut self, xs: &[&Var]) -> Result<Var> {
        let values: Vec<&Tensor> = xs.iter().map(|v| &v.value).collect();
        let y = ops::concat::forward(&values)?;
        self.record(y, xs, |_| Ok(Saved::Concat { channels: xs.iter().map(|v| v.dims()[1]).collect() }))
    }

    /// Inverted dropout with probability `p`, mask drawn from `seed`. In an eval graph it
    /// passes `x` through unchanged, as PyTorch's `F.dropout(training=False)`.
    pub fn dropout(&mut self, x: &Var, p: f64, seed: u64) -> Result<Var> {
        if !self.mode.training {
            ops::dropout::check_probability(p)?;
            return Ok(x.clone());
        }
        self.dropout_seeded(x, p, ops::dropout::Seed::Host(seed))
    }

    /// [`Graph::dropout`] with the seed on the host or in device memory.
    pub fn dropout_seeded(&mut self, x: &Var, p: f64, seed: ops::dropout::Seed) -> Result<Var> {
        if !self.mode.training {
            ops::dropout::check_probability(p)?;
            return Ok(x.clone());
        }
        let y = ops::dropout::forward_seeded(&x.value, p, &seed)?;
        self.record(y, &[x], |_| Ok(Saved::Dropout { p, seed }))
    }

    pub fn reshape(&mut self, x: &Var, shape: impl Into<Shape>) -> Result<Var> {
        let y = x.value.reshape(shape)?;
        self.record(y, &[x], |_| Ok(Saved::Reshape { from: x.shape().clone() }))
    }

    /// `[N, …] → [N, product of the rest]`, in C, H, W order as `torch.flatten(x, 1)`.
    pub fn flatten(&mut self, x: &Var) -> Result<Var> {
        let n = x
            .dims()
            .first()
            .copied()
            .ok_or_else(|| Error::shape_of("flatten", "a tensor of rank at least 1", "input", x.shape()))?;
        let rest: usize = x.dims()[1..].iter().product();
        self.reshape(x, [n, rest])
    }

    /// Mean softmax cross-entropy of `logits` `[N, K]` against i64 `labels` `[N]`.
    pub fn cross_entropy(&mut self, logits: &Var, labels: &Tensor) -> Result<Var> {
        let (loss, probs) = ops::loss::forward(&logits.value, labels)?;
        self.record(loss, &[logits], |_| Ok(Saved::CrossEntropy { probs, labels: labels.clone() }))
    }

    /// `x` copied to `device` (from the device it is on): the gradient is copied back. How
    /// AlexNet's towers on two devices exchange activations ([`crate::device::gpu`]'s peer
    /// copies, ordered by events on both devices).
    pub fn copy_to(&mut self, x: &Var, device: crate::device::Device) -> Result<Var> {
        let from = x.value.device();
        let y = x.value.to_device(device)?;
        self.record(y, &[x], |_| Ok(Saved::CopyFrom { device: from }))
    }

    /// Channels `start .. start + len` of `x` `[N, C, …]`; the gradient is that of the slice,
    /// with zeros for the other channels.
    pub fn narrow_channels(&mut self, x: &Var, start: usize, len: usize) -> Result<Var> {
        let channels = x.dims().get(1).copied().unwrap_or(0);
        if len == 0 || start + len > channels || x.dims().len() < 2 {
            return Err(Error::shape_of(
                "narrow_channels",
                format!("a tensor [N, C, …] with C ≥ {} (channels {start} to {})", start + len, start + len),
                "input",
                x.shape(),
            ));
        }
        let pieces: Vec<usize> = [start, len, channels - start - len].into_iter().filter(|&c| c > 0).collect();
        let at = usize::from(start > 0);
        let y = ops::concat::backward(&x.value, &pieces)?.swap_remove(at);
        self.record(y, &[x], |_| Ok(Saved::NarrowChannels { start, len, channels }))
    }
}
