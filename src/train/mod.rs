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

use std::path::PathBuf;
use std::time::Instant;

use crate::autograd::{Graph, Var};
use crate::checkpoint;
use crate::data::{self, DataSource, Dataset, HeldOut};
use crate::device::Device;
use crate::device::host_memory::{Activity, set_activity};
use crate::error::{Error, Result};
use crate::models::{self, Model};
use crate::nn::{Module, Sgd};
use crate::ops::ExecOptions;
use crate::ops::loss::argmax_rows;
use crate::rng::Rng;
use crate::tensor::Tensor;

/// How the learning rate moves after the warm-up.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Schedule {
    /// Half a cosine from the peak towards zero, which it would reach one step after the last.
    Cosine,
    /// Multiplied by `gamma` every `every_epochs` epochs.
    Step {
        every_epochs: f64,
        gamma: f64,
    },
    Constant,
}

impl std::str::FromStr for Schedule {
    type Err = Error;
    /// `cosine`, `constant`, or `step:EPOCHS:GAMMA` (e.g. `step:30:0.1`, the ResNet paper's).
    fn from_str(s: &str) -> Result<Schedule> {
        let bad = || {
            Error::argument(
                "--lr-schedule",
                format!("'{s}' is not cosine, constant or step:EPOCHS:GAMMA (e.g. step:30:0.1)"),
            )
        };
        match s {
            "cosine" => Ok(Schedule::Cosine),
            "constant" => Ok(Schedule::Constant),
            _ => {
                let mut parts = s.strip_prefix("step:").ok_or_else(bad)?.split(':');
                let every: f64 = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
                let gamma: f64 = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
                if parts.next().is_some() || !(every > 0.0 && every.is_finite()) || !(gamma > 0.0 && gamma.is_finite())
                {
                    return Err(bad());
                }
                Ok(Schedule::Step { every_epochs: every, gamma })
            }
        }
    }
}

/// The learning rate at `step` of `total`: a linear warm-up over `warmup` steps, then
/// `schedule` (whose epochs are `steps_per_epoch` steps long).
pub fn learning_rate(
    peak: f64,
    schedule: Schedule,
    step: usize,
    total: usize,
    warmup: usize,
    steps_per_epoch: usize,
) -> f64 {
    if step < warmup {
        return peak * (step + 1) as f64 / warmup as f64;
    }
    match schedule {
        Schedule::Constant => peak,
        Schedule::Cosine => {
            let span = total.saturating_sub(warmup).max(1) as f64;
            let t = (step - warmup) as f64 / span;
            0.5 * peak * (1.0 + (std::f64::consts::PI * t).cos())
        }
        Schedule::Step { every_epochs, gamma } => {
            let epoch = step as f64 / steps_per_epoch.max(1) as f64;
            peak * gamma.powi((epoch / every_epochs).floor() as i32)
        }
    }
}

#[derive(Clone, Debug)]
pub struct TrainOptions {
    pub model: String,
    pub data: DataSource,
    /// Where the held-out images come from (`--val-data`, `--holdout`).
    pub held_out: HeldOut,
    pub device: Device,
    pub epochs: usize,
    /// Stop after exactly this many optimizer steps (overrides `epochs`).
    pub steps: Option<usize>,
    pub batch_size: usize,
    pub lr: f64,
    pub schedule: Schedule,
    /// Length of the linear warm-up, in epochs (capped at a tenth of the run).
    pub warmup_epochs: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    /// Dropout probability for every dropout layer (the model's own default if `None`).
    pub dropout: Option<f64>,
    pub augment: bool,
    pub seed: u64,
    pub num_classes: Option<usize>,
    /// Weights to start from.
    pub init: Option<PathBuf>,
    /// Where to save the weights at the end.
    pub save: Option<PathBuf>,
    /// Size of the synthetic training and held-out splits.
    pub synthetic_size: (usize, usize),
    /// Recompute instead of keep where the model can (DenseNet's bottlenecks).
    pub memory_efficient: bool,
    /// Capture the training step once as a CUDA graph and replay it (cuda and emu).
    pub cuda_graph: bool,
    /// The kernels the graphs run (`--conv-algo`, `--towers`, `--no-fuse`).
    pub exec: ExecOptions,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            model: "resnet20".into(),
            data: DataSource::Synthetic,
            held_out: HeldOut::Default,
            device: Device::Cpu,
            epochs: 4,
            steps: None,
            batch_size: 64,
            lr: 0.1,
            schedule: Schedule::Cosine,
            warmup_epochs: 1.0,
            momentum: 0.9,
            weight_decay: 5e-4,
            dropout: None,
            augment: true,
            seed: 0,
            num_classes: None,
            init: None,
            save: None,
            synthetic_size: (6000, 1000),
            memory_efficient: false,
            cuda_graph: false,
            exec: ExecOptions::default(),
        }
    }
}

/// What the loop reports as it goes.
#[derive(Clone, Debug)]
pub enum Progress {
    Start {
        model: String,
        params: usize,
        train_images: usize,
        test_images: usize,
        total_steps: usize,
        steps_per_epoch: usize,
    },
    Step(StepReport),
    Epoch(EpochReport),
}

#[derive(Clone, Debug)]
pub struct StepReport {
    pub step: usize,
    pub total_steps: usize,
    pub epoch: usize,
    /// The loss of this step's batch.
    pub loss: f64,
    /// Training accuracy over the epoch so far.
    pub accuracy: f64,
    pub lr: f64,
    /// Over the epoch so far.
    pub images_per_sec: f64,
}

#[derive(Clone, Debug)]
pub struct EpochReport {
    pub epoch: usize,
    /// The step count at the end of the epoch.
    pub step: usize,
    pub train_loss: f64,
    pub train_accuracy: f64,
    /// On the held-out images; `None` when none are held out.
    pub test_loss: Option<f64>,
    pub test_accuracy: Option<f64>,
    pub images_per_sec: f64,
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
    for (name, v) in [
        ("--lr", o.lr),
        ("--momentum", o.momentum),
        ("--weight-decay", o.weight_decay),
        ("--warmup-epochs", o.warmup_epochs),
    ] {
        if !v.is_finite() || v < 0.0 {
            return bad(format!("{name} must be a non-negative number, got {v}"));
        }
    }
    if let Some(p) = o.dropout
        && !(0.0..1.0).contains(&p)
    {
        return bad(format!("--dropout must be in [0, 1), got {p}"));
    }
    Ok(())
}

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

/// The number of classes a run trains with: `--num-classes`, else 10 for the CIFAR nets and
/// the built-in data sets, else 1000.
pub fn num_classes(o: &TrainOptions) -> usize {
    o.num_classes.unwrap_or(match o.data {
        DataSource::Synthetic | DataSource::Cifar10(_) => 10,
        _ => models::default_num_classes(&o.model),
    })
}

/// Trains a model as the options say and returns it with the report of each epoch.
/// Steps run as usual before the step is captured (`--cuda-graph`).
const GRAPH_WARMUP_STEPS: usize = 2;

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

/// The steps of an epoch over `len` images in batches of `batch`: the full batches, and the
/// last, short one unless it has fewer than `min_batch` images (then it is left out, as
/// PyTorch's `drop_last` would, so that batch norm never trains on a single value).
pub fn steps_per_epoch(len: usize, batch: usize, min_batch: usize) -> usize {
    len / batch + usize::from(len % batch >= min_batch.max(1))
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

/// `None` when `batch` images of `per_image` bytes fit in `total`; else the most that fit.
fn batch_that_fits(per_image: usize, batch: usize, total: usize) -> Option<usize> {
    (per_image > 0 && per_image.saturating_mul(batch) > total).then(|| total / per_image)
}

/// Refuses a batch whose convolution outputs alone exceed the memory of the device it
/// trains on. On Linux a request the machine cannot back is often granted (overcommit) and
/// the process killed later without a word; this catches the plainly impossible batches first.
fn check_memory(
    o: &TrainOptions,
    batch: usize,
    layers: &[crate::autograd::LayerRecord],
    [c, h, w]: [usize; 3],
) -> Result<()> {
    use crate::device::host_memory::{human_bytes, total_host_memory};
    let (total, what) = match o.device {
        Device::Cuda(n) => {
            let gpu = crate::device::cuda::probe().ok().and_then(|i| i.gpus.into_iter().find(|g| g.ordinal == n));
            (gpu.map(|g| g.memory_bytes), format!("the memory of {}", o.device))
        }
        Device::Cpu | Device::Emu => (total_host_memory(), "the machine's memory and swap".to_string()),
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

/// What to try when a training step runs out of memory.
pub fn out_of_memory_advice(model: &str, memory_efficient: bool) -> String {
    let densenet = model.starts_with("densenet");
    if densenet && !memory_efficient {
        "try a smaller --batch-size, or --memory-efficient".to_string()
    } else {
        "try a smaller --batch-size".to_string()
    }
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

pub fn train(o: &TrainOptions, mut on_progress: impl FnMut(&Progress)) -> Result<(Box<dyn Model>, Vec<EpochReport>)> {
    check(o)?;
    models::check_name(&o.model)?;
    set_activity(Activity::BuildingModel);
    let classes = num_classes(o);
    let mut model = models::build(&o.model, classes, o.seed)?;
    if let Some(p) = o.dropout
        && model.set_dropout(p) == 0
        && p > 0.0
    {
        return Err(Error::argument("train", format!("{} has no dropout layers for --dropout {p} to set", o.model)));
    }
    set_memory_efficient(model.as_mut(), o.memory_efficient)?;
    if o.cuda_graph {
        check_graph_capturable(o.device)?;
    }
    if let Some(path) = &o.save {
        // Find out now, not after hours of training, that the weights cannot be written.
        crate::output::check_writable(path)?;
    }
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
    let [c, h, w] = split.train.image_shape();
    model.check_input(&[o.batch_size, c, h, w].into())?;
    let layers = models::trace_layers(model.as_mut(), [c, h, w])?;
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
    model.to_device(o.device)?;
    if let Some(path) = &o.init {
        checkpoint::load(model.as_mut(), path)?;
    }

    let mut opt = Sgd::new(o.lr, o.momentum, o.weight_decay);
    if o.cuda_graph {
        opt.keep_lr_on(o.device)?;
    }
    let mut captured: Option<GraphStep> = None;
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

    let model_name = o.model.as_str();
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
            if step >= total_steps || chunk.len() < min_batch {
                break;
            }
            set_activity(Activity::TrainingStep);
            let lr = learning_rate(o.lr, o.schedule, step, total_steps, warmup, steps_per_epoch);
            opt.set_lr(lr)?;
            let augment_seed = o.augment.then(|| rng.next_u64());
            let (x_host, y_host) = data::batch(split.train.as_ref(), chunk, augment_seed).map_err(|e| {
                e.in_context(|| {
                    let advice = out_of_memory_advice(model_name, o.memory_efficient);
                    format!(" for the images of step {} at batch {}; {advice}", step + 1, chunk.len())
                })
            })?;
            let labels = y_host.as_slice::<i64>()?.to_vec();
            // With --cuda-graph: two steps run as usual (the autotuner times its kernels, the
            // allocator fills its cache), the third is captured, and every full batch after
            // that is a replay. A shorter last batch has other shapes and runs as usual.
            let graph_step = o.cuda_graph && step >= GRAPH_WARMUP_STEPS && chunk.len() == o.batch_size;
            if graph_step && captured.is_none() {
                model.prepare_capture(o.device)?;
                model.prepare_replay()?;
                let (x, y) = (x_host.to_device(o.device)?, y_host.to_device(o.device)?);
                captured = Some(GraphStep::capture(model.as_mut(), &mut opt, x, y, o.exec)?);
            } else if captured.is_some() {
                // Dropout layers read their seeds from device memory from now on.
                model.prepare_replay()?;
            }
            let (loss_value, predictions) = match &captured {
                Some(graph) if graph_step => {
                    graph.run(&x_host, &y_host)?;
                    model.count_replayed_step();
                    (graph.loss.item()?, argmax_rows(&graph.logits)?)
                }
                _ => {
                    let mut g = Graph::new().with_options(o.exec);
                    let advice = || out_of_memory_advice(model_name, o.memory_efficient);
                    let at = |phase: &str, layer: Option<&str>| {
                        let layer = layer.map(|l| format!(" ({l})")).unwrap_or_default();
                        format!(" in the {phase}{layer} of step {} at batch {}; {}", step + 1, chunk.len(), advice())
                    };
                    let forward = (|| {
                        let (x, y) = (x_host.to_device(o.device)?, y_host.to_device(o.device)?);
                        let logits = model.forward(&mut g, &Var::constant(x))?;
                        let loss = g.cross_entropy(&logits, &y)?;
                        Ok((loss.value().item()?, argmax_rows(logits.value())?, loss))
                    })();
                    let (loss_value, predictions, loss) =
                        forward.map_err(|e: Error| e.in_context(|| at("forward pass", g.current_layer())))?;
                    g.backward(&loss)
                        .and_then(|grads| grads.accumulate_into(model.params_mut()))
                        .and_then(|()| opt.step(model.params_mut()))
                        .map_err(|e| e.in_context(|| at("backward pass", None)))?;
                    (loss_value, predictions)
                }
            };
            if !loss_value.is_finite() {
                return Err(Error::argument(
                    "train",
                    format!("the loss became {loss_value} at step {}; try a smaller --lr", step + 1),
                ));
            }

            correct += predictions.iter().zip(&labels).filter(|(p, l)| **p as i64 == **l).count();
            loss_sum += loss_value * chunk.len() as f64;
            seen += chunk.len();
            step += 1;
            on_progress(&Progress::Step(StepReport {
                step,
                total_steps,
                epoch,
                loss: loss_value,
                accuracy: correct as f64 / seen as f64,
                lr,
                images_per_sec: seen as f64 / started.elapsed().as_secs_f64(),
            }));
        }
        if seen == 0 {
            // The plan above makes a step every epoch; an epoch without one would loop forever.
            return Err(Error::argument("train", format!("epoch {epoch} made no step; nothing to train on")));
        }
        let images_per_sec = seen as f64 / started.elapsed().as_secs_f64();
        if let Some(name) = first_non_finite(model.as_ref())? {
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
            let (loss, accuracy) = evaluate(model.as_mut(), split.test.as_ref(), o.batch_size, o.device, o.exec)?;
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
        let report = EpochReport {
            epoch,
            step,
            train_loss: loss_sum / seen as f64,
            train_accuracy: correct as f64 / seen as f64,
            test_loss,
            test_accuracy,
            images_per_sec,
        };
        on_progress(&Progress::Epoch(report.clone()));
        reports.push(report);
    }
    if let Some(path) = &o.save
        && split.test.is_empty()
    {
        // Nothing held out, so no evaluation has seen the final weights: a finite but
        // enormous update (a huge --lr) would go unnoticed. One eval-mode batch of training
        // images must give a finite loss before the weights replace a file.
        let first: Vec<usize> = (0..split.train.len().min(o.batch_size)).collect();
        let (loss, _) = evaluate_on(model.as_mut(), split.train.as_ref(), &first, o.batch_size, o.device, o.exec)?;
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
        checkpoint::save(model.as_ref(), path)?;
    }
    Ok((model, reports))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_warm_up_then_follow_their_shape() {
        let cos = |s| learning_rate(0.1, Schedule::Cosine, s, 100, 10, 10);
        assert!((cos(0) - 0.01).abs() < 1e-12);
        assert!((cos(9) - 0.1).abs() < 1e-12);
        assert!((cos(10) - 0.1).abs() < 1e-12);
        assert!((cos(55) - 0.05).abs() < 1e-12);
        assert!(cos(99) < 1e-3);
        let step = Schedule::Step { every_epochs: 3.0, gamma: 0.1 };
        assert!((learning_rate(0.1, step, 29, 100, 0, 10) - 0.1).abs() < 1e-12);
        assert!((learning_rate(0.1, step, 30, 100, 0, 10) - 0.01).abs() < 1e-12);
        assert!((learning_rate(0.1, step, 65, 100, 0, 10) - 0.001).abs() < 1e-12);
        assert_eq!(learning_rate(0.1, Schedule::Constant, 70, 100, 5, 10), 0.1);
        assert_eq!("step:30:0.1".parse::<Schedule>().unwrap(), Schedule::Step { every_epochs: 30.0, gamma: 0.1 });
        assert!("step:30".parse::<Schedule>().is_err());
        assert!("linear".parse::<Schedule>().is_err());
    }

    fn error_of(o: &TrainOptions) -> String {
        match train(o, |_| {}) {
            Ok(_) => panic!("expected an error for {o:?}"),
            Err(e) => e.to_string(),
        }
    }

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
