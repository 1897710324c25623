//! What each tape entry keeps for its backward pass, and the backward pass itself.
//!
//! Every arm of [`Saved::backward`] maps the gradient of the op's output to gradients of
//! its inputs, in the order the op took them, by calling the op's backward functions in
//! [`crate::ops`]. `needs[i]` says whether input `i` wants a gradient: the gradient of a
//! network's first convolution with respect to the image, say, is never computed.
//!
//! The activations an entry keeps (inputs, outputs kept as masks) are 16-bit copies in a
//! BF16 or FP16 graph (`keep.rs`); each arm widens them back to FP32 ([`widened`]) before it
//! calls the FP32 backward. Parameters and batch statistics are always kept as they are.

use crate::error::Result;
use crate::ops::{self, ExecOptions, conv2d::Conv2dParams, lrn::LrnParams, pool::Pool2dParams};
use crate::tensor::{Shape, Tensor};

use super::ParamId;
use super::keep::widened;
use super::recompute::Segment;

pub(super) enum Saved {
    /// A leaf created by `Graph::leaf`.
    Input,
    /// A leaf created by `Graph::param`.
    Param(ParamId),
    /// Inputs: x, w, and b if present.
    Conv2d {
        x: Tensor,
        w: Tensor,
        p: Conv2dParams,
    },
    /// `relu(conv(x, w) + b)`; inputs x, w, and b if present. `y` is the output (the mask).
    Conv2dRelu {
        x: Tensor,
        w: Tensor,
        p: Conv2dParams,
        y: Tensor,
    },
    /// `relu(x·Wᵀ + b)`; inputs x, w, and b if present.
    LinearRelu {
        x: Tensor,
        w: Tensor,
        y: Tensor,
    },
    /// Inputs: x, w, and b if present.
    Linear {
        x: Tensor,
        w: Tensor,
    },
    MaxPool2d {
        x: Tensor,
        p: Pool2dParams,
    },
    AvgPool2d {
        x_shape: Shape,
        p: Pool2dParams,
    },
    GlobalAvgPool {
        x_shape: Shape,
    },
    Lrn {
        x: Tensor,
        y: Tensor,
        p: LrnParams,
    },
    /// Inputs: x, γ, β. `mean` and `var` are the batch statistics in training mode, the
    /// running statistics in eval mode.
    BatchNorm {
        x: Tensor,
        gamma: Tensor,
        mean: Tensor,
        var: Tensor,
        eps: f64,
        batch_stats: bool,
    },
    /// `act(BN(x) + r)`; inputs x, γ, β, and the residual r if one was added. `y` is the
    /// output when the ReLU was applied (its mask).
    BatchNormAct {
        x: Tensor,
        gamma: Tensor,
        mean: Tensor,
        var: Tensor,
        eps: f64,
        batch_stats: bool,
        y: Option<Tensor>,
    },
    /// Synchronised batch norm (inputs x, γ, β): `mean` and `var` are the statistics of all
    /// devices' `count` values per channel.
    SyncBatchNorm {
        x: Tensor,
        gamma: Tensor,
        mean: Tensor,
        var: Tensor,
        eps: f64,
        count: f64,
        sync: super::SyncBn,
    },
    Relu {
        y: Tensor,
    },
    /// A copy from `device` (the gradient goes back there).
    CopyFrom {
        device: crate::device::Device,
    },
    /// Channels `start .. start + len` of an input with `channels` channels.
    NarrowChannels {
        start: usize,
        len: usize,
        channels: usize,
    },
    Add,
    Concat {
        channels: Vec<usize>,
    },
    /// The mask is drawn again from the seed in backward, not kept.
    Dropout {
        p: f64,
        seed: ops::dropout::Seed,
    },
    Reshape {
        from: Shape,
    },
    CrossEntropy {
        probs: Tensor,
        labels: Tensor,
    },
    /// A segment recomputed in backward ([`super::Graph::recompute`]): only its inputs are
    /// kept.
    Recompute {
        inputs: Vec<Tensor>,
        segment: Box<dyn Segment>,
    },
}

/// `Some(f())` if the input wants a gradient.
fn when<T>(need: bool, f: impl FnOnce() -> Result<T>) -> Result<Option<T>> {
    if need { f().map(Some) } else { Ok(None) }
}

impl Saved {
    /// The tensors kept for the backward pass (with the parameters among them, which the
    /// caller tells apart by their storage).
    pub(super) fn tensors(&self) -> Vec<&Tensor> {
        match self {
            Saved::Input | Saved::Param(_) | Saved::AvgPool2d { .. } | Saved::GlobalAvgPool { .. } => vec![],
            Saved::Add | Saved::Concat { .. } | Saved::Reshape { .. } => vec![],
            Saved::CopyFrom { .. } | Saved::NarrowChannels { .. } => vec![],
            Saved::Conv2d { x, w, .. } | Saved::Linear { x, w } => vec![x, w],
            Saved::Conv2dRelu { x, w, y, .. } | Saved::LinearRelu { x, w, y } => vec![x, w, y],
            Saved::MaxPool2d { x, .. } => vec![x],
            Saved::Lrn { x, y, .. } => vec![x, y],
            Saved::BatchNorm { x, gamma, mean, var, .. } => vec![x, gamma, mean, var],
            Saved::BatchNormAct { x, gamma, mean, var, y, .. } => {
                let mut v = vec![x, gamma, mean, var];
                v.extend(y);
                v
            }
            Saved::SyncBatchNorm { x, gamma, mean, var, .. } => vec![x, gamma, mean, var],
            Saved::Relu { y } => vec![y],
            Saved::Dropout { seed: ops::dropout::Seed::Device(t), .. } => vec![t],
            Saved::Dropout { .. } => vec![],
            Saved::CrossEntropy { probs, labels } => vec![probs, labels],
            Saved::Recompute { inputs, .. } => inputs.iter().collect(),
        }
    }

    pub(super) fn backward(self, dy: &Tensor, needs: &[bool], exec: &ExecOptions) -> Result<Vec<Option<Tensor>>> {
        let need = |i: usize| needs.get(i).copied().unwrap_or(false);
        Ok(match self {
            Saved::Input | Saved::Param(_) => Vec::new(),
            Saved::Conv2d { x, w, p } => {
                let x = widened(x)?;
                let (dx, dw) = ops::conv2d::backward_data_and_filter(dy, &x, &w, p, (need(0), need(1)), exec)?;
                let db = when(need(2), || ops::conv2d::backward_bias(dy))?;
                vec![dx, dw, db]
            }
            Saved::Conv2dRelu { x, w, p, y } => {
                let (dz, db) = ops::bias_act::relu_backward_with_bias(dy, &widened(y)?, need(2))?;
                let x = widened(x)?;
                let (dx, dw) = ops::conv2d::backward_data_and_filter(&dz, &x, &w, p, (need(0), need(1)), exec)?;
                vec![dx, dw, db]
            }
            Saved::LinearRelu { x, w, y } => {
                let (dz, db) = ops::bias_act::relu_backward_with_bias(dy, &widened(y)?, need(2))?;
                let x = widened(x)?;
                let dx = when(need(0), || ops::linear::backward_data(&dz, &w, exec.precision))?;
                let dw = when(need(1), || ops::linear::backward_weight(&dz, &x, exec.precision))?;
                vec![dx, dw, db]
            }
            Saved::BatchNormAct { x, gamma, mean, var, eps, batch_stats, y } => {
                let (x, y) = (widened(x)?, y.map(widened).transpose()?);
                let g = ops::batchnorm_fused::backward_fused(
                    dy,
                    &x,
                    y.as_ref(),
                    &gamma,
                    &mean,
                    &var,
                    eps,
                    batch_stats,
                    need(3),
                )?;
                vec![Some(g.dx), Some(g.dgamma), Some(g.dbeta), g.dresidual]
            }
            Saved::Linear { x, w } => {
                let x = widened(x)?;
                let dx = when(need(0), || ops::linear::backward_data(dy, &w, exec.precision))?;
                let dw = when(need(1), || ops::linear::backward_weight(dy, &x, exec.precision))?;
                let db = when(need(2), || ops::linear::backward_bias(dy))?;
                vec![dx, dw, db]
            }
            Saved::MaxPool2d { x, p } => vec![Some(ops::pool::max_pool2d_backward(dy, &widened(x)?, p)?)],
            Saved::AvgPool2d { x_shape, p } => {
                vec![Some(ops::pool::avg_pool2d_backward(dy, &x_shape, p)?)]
            }
            Saved::GlobalAvgPool { x_shape } => {
                vec![Some(ops::pool::global_avg_pool_backward(dy, &x_shape)?)]
            }
            Saved::Lrn { x, y, p } => vec![Some(ops::lrn::backward(dy, &widened(x)?, &widened(y)?, p)?)],
            Saved::BatchNorm { x, gamma, mean, var, eps, batch_stats } => {
                let x = widened(x)?;
                let g = if batch_stats {
                    ops::batchnorm::backward_train(dy, &x, &gamma, &mean, &var, eps)?
                } else {
                    ops::batchnorm::backward_eval(dy, &x, &gamma, &mean, &var, eps)?
                };
                vec![Some(g.dx), Some(g.dgamma), Some(g.dbeta)]
            }
            Saved::SyncBatchNorm { x, gamma, mean, var, eps, count, sync } => {
                sync_batch_norm_backward(dy, &widened(x)?, &gamma, (&mean, &var), eps, count, &sync)?
            }
            Saved::Relu { y } => vec![Some(ops::elementwise::relu_backward(dy, &widened(y)?)?)],
            Saved::CopyFrom { device } => vec![Some(dy.to_device(device)?)],
            Saved::NarrowChannels { start, len, channels } => {
                let zeros = |c: usize| -> Result<Tensor> {
                    let mut dims = dy.dims().to_vec();
                    dims[1] = c;
                    Tensor::zeros_on(dims, dy.dtype(), dy.device())
                };
                let (before, after) = (zeros(start)?, zeros(channels - start - len)?);
                let pieces: Vec<&Tensor> = [(&before, start), (dy, len), (&after, channels - start - len)]
                    .into_iter()
                    .filter(|(_, c)| *c > 0)
                    .map(|(t, _)| t)
                    .collect();
                vec![Some(ops::concat::forward(&pieces)?)]
            }
            // The gradient of a sum is passed unchanged to both terms (the tensor is shared,
            // not copied; accumulating into it later copies on write).
            Saved::Add => vec![Some(dy.clone()), Some(dy.clone())],
            Saved::Concat { channels } => ops::concat::backward(dy, &channels)?.into_iter().map(Some).collect(),
            Saved::Dropout { p, seed } => vec![Some(ops::dropout::backward_seeded(dy, p, &seed)?)],
            Saved::Reshape { from } => vec![Some(dy.reshape(from)?)],
            Saved::CrossEntropy { probs, labels } => {
                vec![Some(ops::loss::backward(&probs, &labels, dy)?)]
            }
            Saved::Recompute { inputs, segment } => {
                let inputs = inputs.into_iter().map(widened).collect::<Result<Vec<_>>>()?;
                segment.recompute_backward(inputs, dy, needs, exec)?
            }
        })
    }
}

/// The backward pass of synchronised batch norm. With x̂ = (x − μ)/σ over all devices'
/// `count` values per channel, a batch norm's data gradient is
///
/// ```text
/// dx = γ/σ · (dy − Σdy/count − x̂ · Σ(dy·x̂)/count)
/// ```
///
/// where the sums run over every device's values. Each device's own sums are its gradients
/// of β (Σdy) and γ (Σdy·x̂), which the eval backward gives; one all-reduce makes them the
/// sums over all devices. The bracket is then `dy + t`, with `t = −Σ(dy·x̂)/count · x̂ −
/// Σdy/count`: a batch norm in eval form of x (scale −Σ(dy·x̂)/count, shift −Σdy/count), and
/// `γ/σ · (dy + t)` is the eval backward's data gradient of `dy + t`. The parameters'
/// gradients stay this device's own: data-parallel training sums them with the others.
fn sync_batch_norm_backward(
    dy: &Tensor,
    x: &Tensor,
    gamma: &Tensor,
    (mean, var): (&Tensor, &Tensor),
    eps: f64,
    count: f64,
    sync: &super::SyncBn,
) -> Result<Vec<Option<Tensor>>> {
    let own = ops::batchnorm::backward_eval(dy, x, gamma, mean, var, eps)?;
    let mut sums = [own.dbeta.to_dtype(crate::tensor::DType::F64)?, own.dgamma.to_dtype(crate::tensor::DType::F64)?];
    sync.collective.all_reduce_sum(sync.rank, &mut sums)?;
    let scale_shift = |t: &Tensor| -> Result<Tensor> {
        let v: Vec<f64> = t.to_f64_vec()?.iter().map(|s| -s / count).collect();
        Tensor::from_vec([v.len()], v)?.to_dtype(gamma.dtype())?.to_device(gamma.device())
    };
    let (shift, scale) = (scale_shift(&sums[0])?, scale_shift(&sums[1])?);
    let t = ops::batchnorm::forward_eval(x, &scale, &shift, mean, var, eps)?;
    let bracket = ops::elementwise::add(dy, &t)?;
    let dx = ops::batchnorm::backward_eval(&bracket, x, gamma, mean, var, eps)?.dx;
    Ok(vec![Some(dx), Some(own.dgamma), Some(own.dbeta)])
}
