//! Judging the weights a run makes: loss and accuracy on held-out images in eval mode
//! ([`evaluate`]), after every epoch; weights that went NaN or infinite ([`first_non_finite`]),
//! which end the run; and the check that final weights give a finite loss before they replace
//! a file. A diverged model must never be saved over a good one.

use super::epoch::EpochTally;
use super::{EpochReport, TrainOptions};
use crate::autograd::{Graph, Var};
use crate::checkpoint;
use crate::data::{self, Dataset, Split};
use crate::device::Device;
use crate::device::host_memory::{Activity, set_activity};
use crate::error::{Error, Result};
use crate::models::Model;
use crate::ops::ExecOptions;
use crate::ops::loss::argmax_rows;
use crate::tensor::Tensor;

/// Loss and accuracy of `model` on `data`, in eval mode, in batches of `batch_size`, on a
/// graph that runs the kernels `exec` chooses.
pub fn evaluate(
    model: &mut dyn Model,
    data: &dyn Dataset,
    batch_size: usize,
    device: Device,
    exec: ExecOptions,
) -> Result<(f64, f64)> {
    let indices: Vec<usize> = (0..data.len()).collect();
    evaluate_on(model, data, &indices, batch_size, device, exec)
}

/// [`evaluate`] on the images of `data` at `indices`.
pub fn evaluate_on(
    model: &mut dyn Model,
    data: &dyn Dataset,
    indices: &[usize],
    batch_size: usize,
    device: Device,
    exec: ExecOptions,
) -> Result<(f64, f64)> {
    let mut loss_sum = 0.0;
    let mut correct = 0;
    for chunk in indices.chunks(batch_size.max(1)) {
        let (x, y) = data::batch(data, chunk, None)?;
        let labels = y.to_vec::<i64>()?;
        let (x, y) = (x.to_device(device)?, y.to_device(device)?);
        let mut g = Graph::eval().with_options(exec);
        let logits = model.forward(&mut g, &Var::constant(x)).map_err(|e| {
            e.in_context(|| {
                let layer = g.current_layer().map(|l| format!(" ({l})")).unwrap_or_default();
                format!(" evaluating{layer} at batch {}; try a smaller --batch-size", chunk.len())
            })
        })?;
        loss_sum += g.cross_entropy(&logits, &y)?.value().item()? * chunk.len() as f64;
        correct += argmax_rows(logits.value())?.iter().zip(&labels).filter(|(p, l)| **p as i64 == **l).count();
    }
    let n = indices.len().max(1) as f64;
    Ok((loss_sum / n, correct as f64 / n))
}

/// The first parameter or floating-point buffer of `model` that holds NaN or infinity, by
/// name: a diverged model, which must not be saved over a good one.
pub fn first_non_finite(model: &dyn Model) -> Result<Option<String>> {
    let finite = |t: &Tensor| -> Result<bool> {
        if !t.dtype().is_float() {
            return Ok(true);
        }
        Ok(match t.as_slice::<f32>() {
            Ok(values) => values.iter().all(|v| v.is_finite()),
            Err(_) => t.to_dtype(crate::tensor::DType::F32)?.to_vec::<f32>()?.iter().all(|v| v.is_finite()),
        })
    };
    for p in model.params() {
        if !finite(&p.value)? {
            return Ok(Some(p.name().to_string()));
        }
    }
    for (name, t) in model.buffers() {
        if !finite(t)? {
            return Ok(Some(name));
        }
    }
    Ok(None)
}

/// The report of an epoch whose steps made `tally`: the weights checked for NaN and infinity,
/// then evaluated on the held-out images, if any. Either going bad ends the run with an error
/// (nothing is saved).
pub(super) fn end_of_epoch(
    o: &TrainOptions,
    model: &mut dyn Model,
    split: &Split,
    epoch: usize,
    step: usize,
    tally: EpochTally,
) -> Result<EpochReport> {
    if let Some(name) = first_non_finite(model)? {
        return Err(Error::argument(
            "train",
            format!(
                "the weights became NaN or infinite by step {step} (first in {name}); nothing was saved; try a smaller --lr"
            ),
        ));
    }
    let (test_loss, test_accuracy) = if split.test.is_empty() {
        (None, None)
    } else {
        set_activity(Activity::Evaluating);
        let (loss, accuracy) = evaluate(model, split.test.as_ref(), o.batch_size, o.device, o.exec)?;
        if !loss.is_finite() {
            // Finite but enormous weights overflow: as diverged as NaN weights.
            return Err(Error::argument(
                "train",
                format!(
                    "the held-out loss became {loss} by step {step}: the model diverged; nothing was saved; try a smaller --lr"
                ),
            ));
        }
        (Some(loss), Some(accuracy))
    };
    Ok(EpochReport {
        epoch,
        step,
        train_loss: tally.loss_sum / tally.seen as f64,
        train_accuracy: tally.correct as f64 / tally.seen as f64,
        test_loss,
        test_accuracy,
        images_per_sec: tally.images_per_sec,
        loss_scale: tally.loss_scale,
    })
}

/// Saves the weights where `--save` says, if it does: when nothing is held out, only after one
/// eval-mode batch of training images gives a finite loss.
pub(super) fn save(o: &TrainOptions, model: &mut dyn Model, split: &Split) -> Result<()> {
    if let Some(path) = &o.save
        && split.test.is_empty()
    {
        // Nothing held out, so no evaluation has seen the final weights: a finite but
        // enormous update (a huge --lr) would go unnoticed. One eval-mode batch of training
        // images must give a finite loss before the weights replace a file.
        let first: Vec<usize> = (0..split.train.len().min(o.batch_size)).collect();
        let (loss, _) = evaluate_on(model, split.train.as_ref(), &first, o.batch_size, o.device, o.exec)?;
        if !loss.is_finite() {
            return Err(Error::argument(
                "train",
                format!(
                    "the loss of the final weights on a training batch is {loss}: the model diverged; nothing was saved to {}; try a smaller --lr",
                    path.display()
                ),
            ));
        }
    }
    if let Some(path) = &o.save {
        set_activity(Activity::Saving);
        checkpoint::save(model, path)?;
    }
    Ok(())
}
