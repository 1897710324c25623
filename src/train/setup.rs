//! Everything a run settles before its first step: the model built as asked (dropout,
//! memory-efficient mode), the data loaded and checked against the model's classes, and the
//! batches an epoch makes, with the batches that cannot work (too small for batch norm, too
//! large for the device's memory) refused now rather than after hours of training.

use super::graph_step::check_graph_capturable;
use super::{TrainOptions, num_classes};
use crate::autograd::LayerRecord;
use crate::checkpoint;
use crate::data::{self, DataSource, HeldOut, Split};
use crate::device::Device;
use crate::device::host_memory::{Activity, set_activity};
use crate::error::{Error, Result};
use crate::models::{self, Model};

/// A run ready for its first step.
pub(super) struct Prepared {
    /// On its device, with the `--init` weights if given.
    pub(super) model: Box<dyn Model>,
    pub(super) split: Split,
    /// The fewest images a step trains on (2 where a batch norm sees 1×1 maps).
    pub(super) min_batch: usize,
    pub(super) steps_per_epoch: usize,
}

/// Builds the model, loads the data and plans the batches, refusing what cannot work before
/// anything slower runs (an unwritable `--save` before the data is loaded).
pub(super) fn prepare(o: &TrainOptions) -> Result<Prepared> {
    let mut model = build_model(o)?;
    if o.cuda_graph {
        check_graph_capturable(o.device)?;
    }
    if let Some(path) = &o.save {
        // Find out now, not after hours of training, that the weights cannot be written.
        crate::output::check_writable(path)?;
    }
    let split = load_data(o)?;
    let (min_batch, steps_per_epoch) = plan_batches(o, model.as_mut(), &split)?;
    model.to_device(o.device)?;
    if let Some(path) = &o.init {
        checkpoint::load(model.as_mut(), path)?;
    }
    Ok(Prepared { model, split, min_batch, steps_per_epoch })
}

/// The model of `--model`, with `--dropout` and `--memory-efficient` applied.
pub(super) fn build_model(o: &TrainOptions) -> Result<Box<dyn Model>> {
    models::check_name(&o.model)?;
    set_activity(Activity::BuildingModel);
    let mut model = models::build(&o.model, num_classes(o), o.seed)?;
    if let Some(p) = o.dropout
        && model.set_dropout(p) == 0
        && p > 0.0
    {
        return Err(Error::argument("train", format!("{} has no dropout layers for --dropout {p} to set", o.model)));
    }
    set_memory_efficient(model.as_mut(), o.memory_efficient)?;
    Ok(model)
}

/// Turns a model's memory-efficient mode on when asked; an error for models without one.
pub fn set_memory_efficient(model: &mut dyn Model, on: bool) -> Result<()> {
    if on && model.set_memory_efficient(true) == 0 {
        return Err(Error::argument(
            "--memory-efficient",
            format!("{} has no memory-efficient mode (the DenseNets have one)", model.name()),
        ));
    }
    Ok(())
}

/// The training and held-out images, refused if there is nothing to train on or a label lies
/// outside the model's classes.
fn load_data(o: &TrainOptions) -> Result<Split> {
    let classes = num_classes(o);
    let crop = if o.model == "alexnet" { 227 } else { 224 };
    set_activity(Activity::LoadingData);
    let split = data::load(&o.data, &o.held_out, crop, o.synthetic_size, o.seed)?;
    set_activity(Activity::BuildingModel);
    if split.train.is_empty() {
        return Err(Error::argument("train", "the training split is empty"));
    }
    for (part, data) in [("the data", &split.train), ("the held-out data", &split.test)] {
        if data.num_classes() > classes {
            return Err(Error::argument(
                "train",
                format!(
                    "{part} has labels up to {}, outside the model's {classes} classes (set --num-classes)",
                    data.num_classes() - 1
                ),
            ));
        }
    }
    Ok(split)
}

/// The fewest images a step trains on and the steps of an epoch, or an error for a batch the
/// model cannot train on (batch norm needs two values per channel), the memory cannot hold,
/// or a split too small for a single step.
fn plan_batches(o: &TrainOptions, model: &mut dyn Model, split: &Split) -> Result<(usize, usize)> {
    let [c, h, w] = split.train.image_shape();
    model.check_input(&[o.batch_size, c, h, w].into())?;
    let layers = models::trace_layers(model, [c, h, w])?;
    let (min_batch, why) = models::min_train_batch(&layers);
    let why = why
        .map(|layer| format!("batch norm {layer} sees 1×1 maps of {c}×{h}×{w} images and needs at least 2 per batch"));
    if o.batch_size < min_batch {
        return Err(Error::argument(
            "train",
            format!("--batch-size {} is too small for {}: {}", o.batch_size, o.model, why.unwrap_or_default()),
        ));
    }
    check_memory(o, o.batch_size.min(split.train.len()), &layers, [c, h, w])?;
    let steps_per_epoch = steps_per_epoch(split.train.len(), o.batch_size, min_batch);
    if steps_per_epoch == 0 {
        // Only a batch norm's need for two images can leave a non-empty split without a step.
        let held_from_training = !split.test.is_empty()
            && matches!((&o.held_out, &o.data), (HeldOut::Fraction(_), _) | (HeldOut::Default, DataSource::Npy(..)));
        let fix = if held_from_training {
            format!("give more images, or --holdout 0 to train on all {}", split.train.len() + split.test.len())
        } else {
            "give more images".to_string()
        };
        return Err(Error::argument(
            "train",
            format!(
                "the training split has {} image, too few for one step: {}; {fix}",
                split.train.len(),
                why.unwrap_or_default()
            ),
        ));
    }
    Ok((min_batch, steps_per_epoch))
}

/// The steps of an epoch over `len` images in batches of `batch`: the full batches, and the
/// last, short one unless it has fewer than `min_batch` images (then it is left out, as
/// PyTorch's `drop_last` would, so that batch norm never trains on a single value).
pub fn steps_per_epoch(len: usize, batch: usize, min_batch: usize) -> usize {
    len / batch + usize::from(len % batch >= min_batch.max(1))
}

/// `None` when `batch` images of `per_image` bytes fit in `total`; else the most that fit.
fn batch_that_fits(per_image: usize, batch: usize, total: usize) -> Option<usize> {
    (per_image > 0 && per_image.saturating_mul(batch) > total).then(|| total / per_image)
}

/// Refuses a batch whose convolution outputs alone exceed the memory of the device it
/// trains on. On Linux a request the machine cannot back is often granted (overcommit) and
/// the process killed later without a word; this catches the plainly impossible batches first.
fn check_memory(o: &TrainOptions, batch: usize, layers: &[LayerRecord], [c, h, w]: [usize; 3]) -> Result<()> {
    use crate::device::host_memory::{human_bytes, total_host_memory};
    let (total, what) = match o.device {
        Device::Cuda(n) => {
            let gpu = crate::device::cuda::probe().ok().and_then(|i| i.gpus.into_iter().find(|g| g.ordinal == n));
            (gpu.map(|g| g.memory_bytes), format!("the memory of {}", o.device))
        }
        Device::Cpu | Device::Emu(_) => (total_host_memory(), "the machine's memory and swap".to_string()),
    };
    let per_image = models::kept_bytes_lower_bound(layers);
    let Some(total) = total else { return Ok(()) };
    let Some(fits) = batch_that_fits(per_image, batch, total) else { return Ok(()) };
    let needed = per_image.saturating_mul(batch);
    Err(Error::argument(
        "train",
        format!(
            "{} at batch {batch} of {c}×{h}×{w} images keeps at least {} of convolution outputs for the backward pass, more than {what} ({}); try a --batch-size well below {fits}",
            o.model,
            human_bytes(needed),
            human_bytes(total)
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_beyond_memory_are_found_from_the_convolution_outputs() {
        assert_eq!(batch_that_fits(100, 10, 1000), None);
        assert_eq!(batch_that_fits(100, 11, 1000), Some(10));
        assert_eq!(batch_that_fits(0, 1 << 40, 1), None);
        assert_eq!(batch_that_fits(usize::MAX / 2, 4, 1 << 40), Some(0));
        // ResNet-20 on 32×32: seven convolutions at 16×32×32, seven at 32×16×16 (with the
        // projection), seven at 64×8×8, in f32.
        let mut m = models::build("resnet20", 10, 0).unwrap();
        let layers = models::trace_layers(m.as_mut(), [3, 32, 32]).unwrap();
        assert_eq!(models::kept_bytes_lower_bound(&layers), 7 * (16 * 1024 + 32 * 256 + 64 * 64) * 4);
    }
}
