//! Batch normalisation on the graph: one entry point, [`Graph::batch_norm`], for training and
//! eval and for what follows the normalisation (nothing, a ReLU, a residual addition and a
//! ReLU).
//!
//! The statistics say which mode runs: the batch's own mean and variance (training; they are
//! returned so the layer can move its running statistics), or fixed running statistics
//! (eval). The epilogue is applied in the same kernel when the graph fuses
//! ([`crate::ops::ExecOptions::fuse`], on by default), which saves a pass over the
//! activations for the addition and one for the ReLU, forward and backward; otherwise the
//! graph records the normalisation, the addition and the ReLU as three ops, as written in the
//! papers. Both give the same values to rounding (`tests/models.rs` trains networks both
//! ways).

use super::backward::Saved;
use super::{Graph, Var};
use crate::error::{Error, Result};
use crate::ops::conv2d::{BatchNormEval, Conv2dParams};
use crate::ops::{self, batchnorm_fused::Epilogue};
use crate::tensor::Tensor;

/// Which statistics normalise.
#[derive(Clone, Copy, Debug)]
pub enum BnStats<'a> {
    /// The batch's mean and biased variance (training mode).
    Batch,
    /// Fixed statistics, the running ones a layer has accumulated (eval mode).
    Running { mean: &'a Tensor, var: &'a Tensor },
}

/// What follows the normalisation: `act(BN(x) + residual)`.
#[derive(Clone, Copy, Debug)]
pub struct BnEpilogue<'a> {
    /// Added after the normalisation (a residual block's shortcut).
    pub residual: Option<&'a Var>,
    /// A ReLU last.
    pub relu: bool,
}

impl<'a> BnEpilogue<'a> {
    /// Batch norm alone.
    pub const NONE: BnEpilogue<'static> = BnEpilogue { residual: None, relu: false };
    /// `relu(BN(x))`.
    pub const RELU: BnEpilogue<'static> = BnEpilogue { residual: None, relu: true };

    /// `relu(BN(x) + residual)`, the end of a residual block.
    pub fn add_relu(residual: &'a Var) -> BnEpilogue<'a> {
        BnEpilogue { residual: Some(residual), relu: true }
    }

    fn is_none(&self) -> bool {
        self.residual.is_none() && !self.relu
    }
}

/// What [`Graph::batch_norm`] returns: the output, and under [`BnStats::Batch`] the batch
/// mean and biased variance (from which a layer updates its running statistics) with the
/// number of values per channel they were taken over (this device's, or every device's
/// under synchronised batch norm).
pub struct BatchNormOutput {
    pub y: Var,
    pub batch_stats: Option<BatchStats>,
}

/// A batch's mean and biased variance per channel, and how many values each was taken over.
pub type BatchStats = (Tensor, Tensor, usize);

/// Values per channel of an `[N, C, H, W]` tensor: N·H·W.
fn per_channel(x: &Var) -> usize {
    x.dims().first().copied().unwrap_or(0) * x.dims().iter().skip(2).product::<usize>()
}

impl Graph {
    /// `act(BN(x) + residual)` with the scale `gamma` and shift `beta`: the epilogue in the
    /// batch norm's kernel when the graph fuses, else as separate ops.
    pub fn batch_norm(
        &mut self,
        x: &Var,
        (gamma, beta): (&Var, &Var),
        stats: BnStats,
        epilogue: BnEpilogue,
        eps: f64,
    ) -> Result<BatchNormOutput> {
        if let (Some(sync), BnStats::Batch) = (self.sync_bn.clone(), stats) {
            return self.batch_norm_synced(x, gamma, beta, epilogue, eps, sync);
        }
        if self.fuses() && !epilogue.is_none() {
            return self.batch_norm_fused(x, gamma, beta, stats, epilogue, eps);
        }
        let (y, batch_stats) = self.batch_norm_plain(x, gamma, beta, stats, eps)?;
        let y = match epilogue.residual {
            Some(r) => self.add(&y, r)?,
            None => y,
        };
        let y = if epilogue.relu { self.relu(&y)? } else { y };
        Ok(BatchNormOutput { y, batch_stats })
    }

    /// `act(BN(conv(x, w) + b) + residual)` with batch norm in eval mode (running statistics
    /// `mean`, `var`), in one op ([`ops::conv2d::forward_batch_norm`]): on the CPU, batch
    /// norm is folded into the convolution's write-back. Only an eval graph, which records
    /// nothing for backward, runs it.
    #[allow(clippy::too_many_arguments)]
    pub fn conv2d_batch_norm_eval(
        &mut self,
        x: &Var,
        (w, b, p): (&Var, Option<&Var>, Conv2dParams),
        (gamma, beta): (&Var, &Var),
        (mean, var): (&Tensor, &Tensor),
        epilogue: BnEpilogue,
        eps: f64,
    ) -> Result<Var> {
        if self.is_recording() {
            return Err(Error::Autograd(
                "batch norm folds into a convolution only in an eval graph, which records nothing for backward".into(),
            ));
        }
        let bn = BatchNormEval { gamma: &gamma.value, beta: &beta.value, running_mean: mean, running_var: var, eps };
        let e = Epilogue { residual: epilogue.residual.map(|r| &r.value), relu: epilogue.relu };
        let y = ops::conv2d::forward_batch_norm(&x.value, &w.value, b.map(|b| &b.value), p, bn, e, &self.op_options())?;
        Ok(Var::constant(y))
    }

    /// The normalisation on its own (`ops::batchnorm`).
    fn batch_norm_plain(
        &mut self,
        x: &Var,
        gamma: &Var,
        beta: &Var,
        stats: BnStats,
        eps: f64,
    ) -> Result<(Var, Option<BatchStats>)> {
        let (y, mean, var, batch_stats) = match stats {
            BnStats::Batch => {
                let out = ops::batchnorm::forward_train(&x.value, &gamma.value, &beta.value, eps)?;
                (out.y, out.mean, out.var, true)
            }
            BnStats::Running { mean, var } => {
                let y = ops::batchnorm::forward_eval(&x.value, &gamma.value, &beta.value, mean, var, eps)?;
                (y, mean.clone(), var.clone(), false)
            }
        };
        let returned = batch_stats.then(|| (mean.clone(), var.clone(), per_channel(x)));
        let y = self.record(y, &[x, gamma, beta], |k| {
            Ok(Saved::BatchNorm { x: k.activation(&x.value)?, gamma: gamma.value.clone(), mean, var, eps, batch_stats })
        })?;
        Ok((y, returned))
    }

    /// The normalisation and its epilogue in one kernel (`ops::batchnorm_fused`); only the
    /// output is kept for the ReLU's backward.
    fn batch_norm_fused(
        &mut self,
        x: &Var,
        gamma: &Var,
        beta: &Var,
        stats: BnStats,
        epilogue: BnEpilogue,
        eps: f64,
    ) -> Result<BatchNormOutput> {
        let e = Epilogue { residual: epilogue.residual.map(|r| &r.value), relu: epilogue.relu };
        let (y, mean, var, batch_stats) = match stats {
            BnStats::Batch => {
                let out = ops::batchnorm_fused::forward_train_fused(&x.value, &gamma.value, &beta.value, e, eps)?;
                (out.y, out.mean, out.var, true)
            }
            BnStats::Running { mean, var } => {
                let y =
                    ops::batchnorm_fused::forward_eval_fused(&x.value, &gamma.value, &beta.value, mean, var, e, eps)?;
                (y, mean.clone(), var.clone(), false)
            }
        };
        let returned = batch_stats.then(|| (mean.clone(), var.clone(), per_channel(x)));
        let y_saved = epilogue.relu.then(|| y.clone());
        let mut inputs = vec![x, gamma, beta];
        inputs.extend(epilogue.residual);
        let y = self.record(y, &inputs, |k| {
            Ok(Saved::BatchNormAct {
                x: k.activation(&x.value)?,
                gamma: gamma.value.clone(),
                mean,
                var,
                eps,
                batch_stats,
                y: y_saved.map(|y| k.activation(&y)).transpose()?,
            })
        })?;
        Ok(BatchNormOutput { y, batch_stats: returned })
    }

    /// Synchronised batch norm (`--sync-bn`, PyTorch's `SyncBatchNorm`): the statistics of
    /// the whole batch, all devices together. Each device takes the mean and variance of its
    /// own part (from the training kernel, whose normalised output is dropped: no op gives
    /// the statistics alone); one all-reduce sums, per channel, the count, the count times the mean, and
    /// the count times the mean square (variance plus squared mean), in f64 so that the
    /// difference `E[x²] − E[x]²` loses nothing; every device then normalises with the same
    /// statistics (the eval kernel, with those as fixed statistics) and runs the epilogue as
    /// separate ops. The backward pass makes one more all-reduce ([`super::backward`]).
    fn batch_norm_synced(
        &mut self,
        x: &Var,
        gamma: &Var,
        beta: &Var,
        epilogue: BnEpilogue,
        eps: f64,
        sync: SyncBn,
    ) -> Result<BatchNormOutput> {
        let local = ops::batchnorm::forward_train(&x.value, &gamma.value, &beta.value, eps)?;
        let (mean, var) = (local.mean.to_f64_vec()?, local.var.to_f64_vec()?);
        let (c, n) = (mean.len(), per_channel(x) as f64);
        let mut sums = Vec::with_capacity(1 + 2 * c);
        sums.push(n);
        sums.extend(mean.iter().map(|m| n * m));
        sums.extend(mean.iter().zip(&var).map(|(m, v)| n * (v + m * m)));
        let mut parts = [Tensor::from_vec([1 + 2 * c], sums)?.to_device(x.value.device())?];
        sync.collective.all_reduce_sum(sync.rank, &mut parts)?;
        let total = parts[0].to_f64_vec()?;
        let count = total[0];
        let mean: Vec<f64> = total[1..=c].iter().map(|s| s / count).collect();
        let var: Vec<f64> = total[1 + c..].iter().zip(&mean).map(|(s, m)| (s / count - m * m).max(0.0)).collect();
        let to_stat = |v: Vec<f64>| -> Result<Tensor> {
            Tensor::from_vec([c], v)?.to_dtype(local.mean.dtype())?.to_device(x.value.device())
        };
        let (mean, var) = (to_stat(mean)?, to_stat(var)?);
        let y = ops::batchnorm::forward_eval(&x.value, &gamma.value, &beta.value, &mean, &var, eps)?;
        let (kept_mean, kept_var) = (mean.clone(), var.clone());
        let y = self.record(y, &[x, gamma, beta], |k| {
            Ok(Saved::SyncBatchNorm {
                x: k.activation(&x.value)?,
                gamma: gamma.value.clone(),
                mean: kept_mean,
                var: kept_var,
                eps,
                count,
                sync,
            })
        })?;
        let y = match epilogue.residual {
            Some(r) => self.add(&y, r)?,
            None => y,
        };
        let y = if epilogue.relu { self.relu(&y)? } else { y };
        Ok(BatchNormOutput { y, batch_stats: Some((mean, var, count as usize)) })
    }
}

/// What synchronised batch norm needs to sum its statistics across devices: the collective
/// and this device's rank in it. A training graph of a data-parallel replica carries it
/// ([`Graph::with_sync_bn`]) when the run asks for `--sync-bn`.
#[derive(Clone)]
pub struct SyncBn {
    pub collective: std::sync::Arc<dyn crate::device::collective::Collective>,
    pub rank: usize,
}
