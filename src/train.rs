//! The training loop that `scratchnet train` runs.
//!
//! Each step: draw a batch (shuffled each epoch, augmented unless told not to), run the
//! model forward on a fresh training graph, take the mean cross-entropy, walk the tape
//! backward, and let SGD update the parameters. The learning rate rises linearly to its peak
//! over at most one epoch (a gradual warm-up as in Goyal et al., 2017, which keeps the first
//! steps of a freshly initialised network from diverging), then follows a cosine to zero
//! (Loshchilov & Hutter, 2017: no step points to tune).
//! After each epoch the model is evaluated on the held-out split in eval mode.

use std::time::Instant;

use crate::autograd::{Graph, Var};
use crate::data::{DataSource, Dataset, Split, synthetic};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::models;
use crate::nn::{Module, Sgd};
use crate::ops::loss::argmax_rows;
use crate::rng::Rng;

#[derive(Clone, Debug)]
pub struct TrainOptions {
    pub model: String,
    pub data: DataSource,
    pub device: Device,
    pub epochs: usize,
    /// Stop after exactly this many optimizer steps (overrides `epochs`).
    pub steps: Option<usize>,
    pub batch_size: usize,
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    pub augment: bool,
    pub seed: u64,
    pub num_classes: Option<usize>,
    /// Size of the synthetic training and held-out splits.
    pub synthetic_size: (usize, usize),
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            model: "resnet20".into(),
            data: DataSource::Synthetic,
            device: Device::Cpu,
            epochs: 4,
            steps: None,
            batch_size: 64,
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 5e-4,
            augment: true,
            seed: 0,
            num_classes: None,
            synthetic_size: (6000, 1000),
        }
    }
}

/// What the loop reports as it goes.
#[derive(Clone, Debug)]
pub enum Progress {
    Start { model: String, params: usize, train_images: usize, test_images: usize, total_steps: usize },
    Step { step: usize, total_steps: usize, epoch: usize, loss: f64, accuracy: f64, lr: f64, images_per_sec: f64 },
    Epoch(EpochReport),
}

#[derive(Clone, Debug)]
pub struct EpochReport {
    pub epoch: usize,
    pub train_loss: f64,
    pub train_accuracy: f64,
    pub test_loss: f64,
    pub test_accuracy: f64,
    pub images_per_sec: f64,
}

/// Learning rate at `step` of `total`: linear warm-up over `warmup` steps, then a cosine to 0.
pub fn learning_rate(peak: f64, step: usize, total: usize, warmup: usize) -> f64 {
    if step < warmup {
        return peak * (step + 1) as f64 / warmup as f64;
    }
    let span = total.saturating_sub(warmup).max(1) as f64;
    let t = (step - warmup) as f64 / span;
    0.5 * peak * (1.0 + (std::f64::consts::PI * t).cos())
}

fn check(o: &TrainOptions) -> Result<()> {
    let bad = |msg: String| Err(Error::argument("train", msg));
    if o.batch_size == 0 {
        return bad("--batch-size must be at least 1".into());
    }
    if o.epochs == 0 && o.steps.is_none() {
        return bad("--epochs must be at least 1".into());
    }
    if o.steps == Some(0) {
        return bad("--steps must be at least 1".into());
    }
    for (name, v) in [("--lr", o.lr), ("--momentum", o.momentum), ("--weight-decay", o.weight_decay)] {
        if !v.is_finite() || v < 0.0 {
            return bad(format!("{name} must be a non-negative number, got {v}"));
        }
    }
    Ok(())
}

fn load(o: &TrainOptions) -> Split {
    match o.data {
        DataSource::Synthetic => synthetic::generate(o.synthetic_size.0, o.synthetic_size.1, o.seed),
    }
}

/// Loss and accuracy of `model` on `data`, in eval mode.
pub fn evaluate(model: &mut dyn Module, data: &Dataset, batch_size: usize, device: Device) -> Result<(f64, f64)> {
    let mut loss_sum = 0.0;
    let mut correct = 0;
    let indices: Vec<usize> = (0..data.len()).collect();
    for chunk in indices.chunks(batch_size.max(1)) {
        let (x, y) = data.batch(chunk, None)?;
        let (x, y) = (x.to_device(device)?, y.to_device(device)?);
        let mut g = Graph::eval();
        let logits = model.forward(&mut g, &Var::constant(x))?;
        loss_sum += g.cross_entropy(&logits, &y)?.value().item()? * chunk.len() as f64;
        let labels = y.to_vec::<i64>()?;
        correct += argmax_rows(logits.value())?.iter().zip(&labels).filter(|(p, l)| **p as i64 == **l).count();
    }
    let n = data.len().max(1) as f64;
    Ok((loss_sum / n, correct as f64 / n))
}

/// Trains a model as the options say and returns it with the report of each epoch.
pub fn train(
    o: &TrainOptions,
    mut on_progress: impl FnMut(&Progress),
) -> Result<(Box<dyn Module + Send>, Vec<EpochReport>)> {
    check(o)?;
    models::check_name(&o.model)?;
    let split = load(o);
    let classes = o.num_classes.unwrap_or(split.train.num_classes);
    if let Some(&bad) = split.train.labels.iter().chain(&split.test.labels).find(|&&l| l < 0 || l as usize >= classes) {
        return Err(Error::argument(
            "train",
            format!("the data has label {bad}, outside the model's {classes} classes"),
        ));
    }
    let mut model = models::build(&o.model, classes, o.seed)?;
    model.to_device(o.device)?;
    let mut opt = Sgd::new(o.lr, o.momentum, o.weight_decay);
    let steps_per_epoch = split.train.len().div_ceil(o.batch_size);
    if steps_per_epoch == 0 {
        return Err(Error::argument("train", "the training split is empty"));
    }
    let total_steps = match o.steps {
        Some(steps) => steps,
        None => o
            .epochs
            .checked_mul(steps_per_epoch)
            .ok_or_else(|| Error::argument("train", format!("--epochs {} is too many", o.epochs)))?,
    };
    let warmup = (steps_per_epoch.min(total_steps / 10)).max(1);
    on_progress(&Progress::Start {
        model: o.model.clone(),
        params: model.num_params(),
        train_images: split.train.len(),
        test_images: split.test.len(),
        total_steps,
    });

    let mut rng = Rng::new(o.seed ^ 0xDA7A);
    let mut reports = Vec::new();
    let mut step = 0;
    let mut epoch = 0;
    while step < total_steps {
        epoch += 1;
        let mut order: Vec<usize> = (0..split.train.len()).collect();
        rng.shuffle(&mut order);
        let (mut loss_sum, mut correct, mut seen) = (0.0, 0usize, 0usize);
        let started = Instant::now();
        for chunk in order.chunks(o.batch_size) {
            if step >= total_steps {
                break;
            }
            let lr = learning_rate(o.lr, step, total_steps, warmup);
            opt.hyper.lr = lr;
            let (x, y) = split.train.batch(chunk, o.augment.then_some(&mut rng))?;
            let labels = y.as_slice::<i64>()?.to_vec();
            let (x, y) = (x.to_device(o.device)?, y.to_device(o.device)?);
            let mut g = Graph::new();
            let logits = model.forward(&mut g, &Var::constant(x))?;
            let loss = g.cross_entropy(&logits, &y)?;
            let loss_value = loss.value().item()?;
            if !loss_value.is_finite() {
                return Err(Error::argument(
                    "train",
                    format!("the loss became {loss_value} at step {step}; try a smaller --lr"),
                ));
            }
            let predictions = argmax_rows(logits.value())?;
            g.backward(&loss)?.accumulate_into(model.params_mut())?;
            opt.step(model.params_mut())?;

            correct += predictions.iter().zip(&labels).filter(|(p, l)| **p as i64 == **l).count();
            loss_sum += loss_value * chunk.len() as f64;
            seen += chunk.len();
            step += 1;
            on_progress(&Progress::Step {
                step,
                total_steps,
                epoch,
                loss: loss_value,
                accuracy: correct as f64 / seen as f64,
                lr,
                images_per_sec: seen as f64 / started.elapsed().as_secs_f64(),
            });
        }
        let images_per_sec = seen as f64 / started.elapsed().as_secs_f64();
        let (test_loss, test_accuracy) = evaluate(model.as_mut(), &split.test, 256, o.device)?;
        let report = EpochReport {
            epoch,
            train_loss: loss_sum / seen.max(1) as f64,
            train_accuracy: correct as f64 / seen.max(1) as f64,
            test_loss,
            test_accuracy,
            images_per_sec,
        };
        on_progress(&Progress::Epoch(report.clone()));
        reports.push(report);
    }
    Ok((model, reports))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_then_decays_to_zero() {
        assert!((learning_rate(0.1, 0, 100, 10) - 0.01).abs() < 1e-12);
        assert!((learning_rate(0.1, 9, 100, 10) - 0.1).abs() < 1e-12);
        assert!((learning_rate(0.1, 10, 100, 10) - 0.1).abs() < 1e-12);
        assert!((learning_rate(0.1, 55, 100, 10) - 0.05).abs() < 1e-12);
        assert!(learning_rate(0.1, 99, 100, 10) < 1e-3);
    }

    fn error_of(o: &TrainOptions) -> String {
        match train(o, |_| {}) {
            Ok(_) => panic!("expected an error for {o:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn bad_options_are_errors() {
        let o = TrainOptions { batch_size: 0, ..Default::default() };
        assert!(error_of(&o).contains("--batch-size"));
        let o = TrainOptions { lr: f64::NAN, ..Default::default() };
        assert!(error_of(&o).contains("--lr"));
        let o = TrainOptions { num_classes: Some(5), synthetic_size: (20, 10), ..Default::default() };
        let e = error_of(&o);
        assert!(e.contains("outside the model's 5 classes"), "{e}");
    }
}
