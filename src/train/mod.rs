//! The training loop that `scratchnet train` runs.
//!
//! Each step: draw a batch (shuffled each epoch, augmented unless told not to), run the
//! model forward on a fresh training graph, take the mean cross-entropy, walk the tape
//! backward, and let SGD update the parameters. After each epoch the model is evaluated on
//! the held-out split in eval mode (running statistics, no dropout).
//!
//! Learning-rate schedules ([`Schedule`]): a linear warm-up (Goyal et al., 2017: it keeps the
//! first steps of a freshly initialised network from diverging at a large rate), then a cosine
//! to zero (Loshchilov & Hutter, 2017), steps of ×γ every few epochs (the schedule of the
//! AlexNet and ResNet papers), or a constant rate.
//!
//! The files, one idea each: `options` ([`TrainOptions`]) and `schedule` say what to run;
//! `setup` builds the model, loads the data and plans the batches; `epoch` makes the steps,
//! eagerly or as replays of the step `graph_step` captures (`--cuda-graph`); `evaluate` judges
//! the weights after each epoch and before they are saved; `progress` is what the loop
//! reports. This file holds [`train`], which runs them in order.

mod data_parallel;
mod epoch;
mod evaluate;
mod graph_step;
mod loss_scale;
mod options;
mod progress;
mod schedule;
mod setup;

use crate::error::{Error, Result};
use crate::models::Model;
use crate::nn::Sgd;
use epoch::{Plan, Replicas, Trainer};
use setup::Prepared;

pub use data_parallel::{
    DataParallel, ReplicaStep, StepOutcome, broadcast_buffers, replicate, step as data_parallel_step,
};
pub use epoch::out_of_memory_advice;
pub use evaluate::{evaluate, evaluate_on, first_non_finite};
pub use graph_step::{GraphStep, check_graph_capturable};
pub use loss_scale::{LossScaler, ScaledStep, backward_scaled};
pub use options::{MultiDevice, ProcessGroup, TrainOptions, num_classes};
pub use progress::{EpochReport, Progress, StepReport};
pub use schedule::{Schedule, learning_rate};
pub use setup::{set_memory_efficient, steps_per_epoch};

/// Trains a model as the options say and returns it with the report of each epoch.
pub fn train(o: &TrainOptions, mut on_progress: impl FnMut(&Progress)) -> Result<(Box<dyn Model>, Vec<EpochReport>)> {
    options::check(o)?;
    let Prepared { mut model, split, min_batch, steps_per_epoch } = setup::prepare(o)?;
    if let ([a, b], true) = (&o.multi.devices[..], o.exec.towers) {
        model = model.split_towers([*a, *b])?;
    }
    let (parallel, min_batch, steps_per_epoch) =
        data_parallel_replicas(o, model.as_ref(), &split, min_batch, steps_per_epoch)?;
    let mut opt = Sgd::new(o.lr, o.momentum, o.weight_decay);
    if o.cuda_graph {
        opt.keep_lr_on(o.device)?;
    }
    let total_steps = match o.steps {
        Some(steps) => steps,
        None => o
            .epochs
            .checked_mul(steps_per_epoch)
            .ok_or_else(|| Error::argument("train", format!("--epochs {} is too many", o.epochs)))?,
    };
    let warmup = ((o.warmup_epochs * steps_per_epoch as f64) as usize).min(total_steps / 10);
    on_progress(&Progress::Start {
        model: o.model.clone(),
        params: model.num_params(),
        train_images: split.train.len(),
        test_images: split.test.len(),
        total_steps,
        steps_per_epoch,
    });

    let mut trainer = Trainer::new(o, model, opt, Plan { total_steps, warmup, steps_per_epoch, min_batch }, parallel);
    let mut reports = Vec::new();
    let mut epoch = 0;
    while trainer.step < total_steps {
        epoch += 1;
        let tally = trainer.epoch(epoch, split.train.as_ref(), &mut on_progress)?;
        let report = evaluate::end_of_epoch(o, trainer.model.as_mut(), &split, epoch, trainer.step, tally)?;
        on_progress(&Progress::Epoch(report.clone()));
        reports.push(report);
    }
    // In a run of several processes, rank 0 saves (every rank holds the same weights).
    if o.multi.process_group.as_ref().is_none_or(|g| g.rank == 0) {
        evaluate::save(o, trainer.model.as_mut(), &split)?;
    }
    Ok((trainer.into_model(), reports))
}

/// The replicas of a data-parallel run (none otherwise), and the fewest images a step and
/// the steps an epoch make, now that every rank needs its own share of a batch.
fn data_parallel_replicas(
    o: &TrainOptions,
    model: &dyn Model,
    split: &crate::data::Split,
    min_batch: usize,
    steps: usize,
) -> Result<(Option<Replicas>, usize, usize)> {
    let m = &o.multi;
    let dp = match &m.process_group {
        Some(g) => DataParallel::one_rank(o.device, g, m.sync_bn, m.bucket_bytes)?,
        None if m.data_parallel => DataParallel::in_process(&m.devices, m.sync_bn, m.bucket_bytes)?,
        None => return Ok((None, min_batch, steps)),
    };
    let world = dp.world_size;
    let min_batch = min_batch * world;
    if o.batch_size < min_batch {
        return Err(Error::argument(
            "train",
            format!(
                "--batch-size {} is too small for {world} devices: each needs at least {} images",
                o.batch_size,
                min_batch / world
            ),
        ));
    }
    let steps = steps_per_epoch(split.train.len(), o.batch_size, min_batch);
    if steps == 0 {
        return Err(Error::argument(
            "train",
            format!("{} training images make no batch of {min_batch} or more for {world} devices", split.train.len()),
        ));
    }
    let mut others = Vec::new();
    for &device in &m.devices[1.min(m.devices.len())..] {
        let replica = replicate(model, setup::build_model(o)?, device)?;
        others.push((replica, Sgd::new(o.lr, o.momentum, o.weight_decay)));
    }
    Ok((Some(Replicas { dp, others }), min_batch, steps))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_of(o: &TrainOptions) -> String {
        match train(o, |_| {}) {
            Ok(_) => panic!("expected an error for {o:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn bad_options_are_errors() {
        assert!(error_of(&TrainOptions { batch_size: 0, ..Default::default() }).contains("--batch-size"));
        assert!(error_of(&TrainOptions { lr: f64::NAN, ..Default::default() }).contains("--lr"));
        assert!(error_of(&TrainOptions { dropout: Some(1.0), ..Default::default() }).contains("--dropout"));
        let e = error_of(&TrainOptions { num_classes: Some(5), synthetic_size: (20, 10), ..Default::default() });
        assert!(e.contains("outside the model's 5 classes"), "{e}");
        let e = error_of(&TrainOptions { model: "alexnet".into(), synthetic_size: (20, 10), ..Default::default() });
        assert!(e.contains("3×227×227 for alexnet"), "{e}");
    }
}
