//! The steps of training: an epoch draws the training images in a new order and trains on them
//! batch by batch; a step sets the learning rate, loads and augments its batch, and runs
//! forward, loss, backward and the SGD update, either eagerly on a fresh graph or as a replay
//! of the captured step (`--cuda-graph`). What can go wrong in a step (running out of memory,
//! a loss that is no longer finite) is reported with the step and the advice that fits.

use std::time::Instant;

use super::data_parallel::{DataParallel, ReplicaStep, broadcast_buffers};
use super::graph_step::{GRAPH_WARMUP_STEPS, GraphStep};
use super::loss_scale::{LossScaler, ScaledStep};
use super::{Progress, StepReport, TrainOptions, learning_rate};
use crate::autograd::{Graph, Var};
use crate::data::{self, Dataset};
use crate::device::host_memory::{Activity, set_activity};
use crate::error::{Error, Result};
use crate::models::Model;
use crate::nn::Sgd;
use crate::ops::Precision;
use crate::ops::loss::argmax_rows;
use crate::rng::Rng;
use crate::tensor::Tensor;

/// How many steps the run makes and how its batches and learning rate go.
#[derive(Clone, Copy, Debug)]
pub(super) struct Plan {
    pub(super) total_steps: usize,
    /// Steps of linear warm-up.
    pub(super) warmup: usize,
    pub(super) steps_per_epoch: usize,
    /// A last batch with fewer images is left out.
    pub(super) min_batch: usize,
}

/// The training figures of one epoch's steps.
#[derive(Clone, Copy, Debug)]
pub(super) struct EpochTally {
    /// The sum over the steps of the batch's mean loss times its images.
    pub(super) loss_sum: f64,
    /// Images the model classified right, before each step's update.
    pub(super) correct: usize,
    /// Images trained on.
    pub(super) seen: usize,
    /// Over the epoch's steps, evaluation left out.
    pub(super) images_per_sec: f64,
    /// The loss scale and the steps skipped so far (`--precision fp16`).
    pub(super) loss_scale: Option<(f64, usize)>,
}

/// What training carries from step to step and epoch to epoch.
pub(super) struct Trainer<'a> {
    // The fields drop in this order: the captured step first, then the optimizer, whose
    // momentum and device learning rate the captured step reads, then the model.
    /// The captured step, once there is one (`--cuda-graph`).
    captured: Option<GraphStep>,
    opt: Sgd,
    pub(super) model: Box<dyn Model>,
    o: &'a TrainOptions,
    /// Draws each epoch's order and each batch's augmentation.
    rng: Rng,
    plan: Plan,
    /// Steps taken so far.
    pub(super) step: usize,
    /// The loss scaler of an FP16 run (see `loss_scale`).
    scaler: Option<LossScaler>,
    /// In data-parallel training, the devices and the other replicas (rank 0's model and
    /// optimizer are `model` and `opt`).
    parallel: Option<Replicas>,
}

/// The replicas of a data-parallel run besides the first, with their optimizers.
pub(super) struct Replicas {
    pub(super) dp: DataParallel,
    pub(super) others: Vec<(Box<dyn Model>, Sgd)>,
}

impl<'a> Trainer<'a> {
    pub(super) fn new(
        o: &'a TrainOptions,
        model: Box<dyn Model>,
        opt: Sgd,
        plan: Plan,
        parallel: Option<Replicas>,
    ) -> Trainer<'a> {
        let scaler = (o.exec.precision == Precision::Fp16).then(LossScaler::default);
        Trainer { captured: None, opt, model, o, rng: Rng::new(o.seed ^ 0xDA7A), plan, step: 0, scaler, parallel }
    }

    /// The trained model, once the captured step and then the optimizer are dropped.
    pub(super) fn into_model(self) -> Box<dyn Model> {
        let Trainer { captured, opt, model, .. } = self;
        drop(captured);
        drop(opt);
        model
    }

    /// Trains on the images of `train` in a new order, a step per batch, until the epoch or
    /// the run's steps end; reports each step.
    pub(super) fn epoch(
        &mut self,
        epoch: usize,
        train: &dyn Dataset,
        on_progress: &mut dyn FnMut(&Progress),
    ) -> Result<EpochTally> {
        let mut order: Vec<usize> = (0..train.len()).collect();
        self.rng.shuffle(&mut order);
        let (mut loss_sum, mut correct, mut seen) = (0.0, 0usize, 0usize);
        let started = Instant::now();
        for chunk in order.chunks(self.o.batch_size) {
            if self.step >= self.plan.total_steps || chunk.len() < self.plan.min_batch {
                break;
            }
            set_activity(Activity::TrainingStep);
            let Plan { total_steps, warmup, steps_per_epoch, .. } = self.plan;
            let lr = learning_rate(self.o.lr, self.o.schedule, self.step, total_steps, warmup, steps_per_epoch);
            self.opt.set_lr(lr)?;
            let (loss_value, predictions, labels) = if let Some(parallel) = &mut self.parallel {
                for (_, opt) in &mut parallel.others {
                    opt.set_lr(lr)?;
                }
                self.parallel_step(train, chunk)?
            } else {
                self.train_step(train, chunk)?
            };
            if !loss_value.is_finite() {
                return Err(Error::argument(
                    "train",
                    format!("the loss became {loss_value} at step {}; try a smaller --lr", self.step + 1),
                ));
            }

            // A process of a multi-process run sees its own part of each batch.
            correct += predictions.iter().zip(&labels).filter(|(p, l)| **p as i64 == **l).count();
            loss_sum += loss_value * labels.len() as f64;
            seen += labels.len();
            self.step += 1;
            on_progress(&Progress::Step(StepReport {
                step: self.step,
                total_steps,
                epoch,
                loss: loss_value,
                accuracy: correct as f64 / seen as f64,
                lr,
                images_per_sec: seen as f64 / started.elapsed().as_secs_f64(),
            }));
        }
        if seen == 0 {
            // The plan makes a step every epoch; an epoch without one would loop forever.
            return Err(Error::argument("train", format!("epoch {epoch} made no step; nothing to train on")));
        }
        let images_per_sec = seen as f64 / started.elapsed().as_secs_f64();
        let loss_scale = self.scaler.as_ref().map(|s| (s.scale(), s.skipped()));
        Ok(EpochTally { loss_sum, correct, seen, images_per_sec, loss_scale })
    }

    /// One step on the images of `train` at `chunk`, at the learning rate already set: the
    /// batch's mean loss, the predicted classes and the labels.
    fn train_step(&mut self, train: &dyn Dataset, chunk: &[usize]) -> Result<(f64, Vec<usize>, Vec<i64>)> {
        let (o, step) = (self.o, self.step);
        let augment_seed = o.augment.then(|| self.rng.next_u64());
        let (x_host, y_host) = data::batch(train, chunk, augment_seed).map_err(|e| {
            e.in_context(|| {
                let advice = out_of_memory_advice(&o.model, o.memory_efficient);
                format!(" for the images of step {} at batch {}; {advice}", step + 1, chunk.len())
            })
        })?;
        let labels = y_host.as_slice::<i64>()?.to_vec();
        // With --cuda-graph: two steps run as usual (the autotuner times its kernels, the
        // allocator fills its cache), the third is captured, and every full batch after
        // that is a replay. A shorter last batch has other shapes and runs as usual.
        let graph_step = o.cuda_graph && step >= GRAPH_WARMUP_STEPS && chunk.len() == o.batch_size;
        if graph_step && self.captured.is_none() {
            self.model.prepare_capture(o.device)?;
            self.model.prepare_replay()?;
            let (x, y) = (x_host.to_device(o.device)?, y_host.to_device(o.device)?);
            self.captured = Some(GraphStep::capture(self.model.as_mut(), &mut self.opt, x, y, o.exec)?);
        } else if self.captured.is_some() {
            // Dropout layers read their seeds from device memory from now on.
            self.model.prepare_replay()?;
        }
        let (loss_value, predictions) = match &self.captured {
            Some(graph) if graph_step => {
                graph.run(&x_host, &y_host)?;
                self.model.count_replayed_step();
                (graph.loss().item()?, argmax_rows(graph.logits())?)
            }
            _ => {
                let batch = (&x_host, &y_host);
                eager_step(o, self.model.as_mut(), &mut self.opt, self.scaler.as_mut(), step, batch, chunk.len())?
            }
        };
        Ok((loss_value, predictions, labels))
    }
}

impl Trainer<'_> {
    /// One data-parallel step on the images of `train` at `chunk`: each of this process's
    /// ranks loads its part of the batch, and the replicas step together
    /// ([`super::data_parallel::step`]); then they take rank 0's running statistics.
    fn parallel_step(&mut self, train: &dyn Dataset, chunk: &[usize]) -> Result<(f64, Vec<usize>, Vec<i64>)> {
        let (o, step) = (self.o, self.step);
        let augment_seed = o.augment.then(|| self.rng.next_u64());
        let Some(parallel) = self.parallel.as_mut() else {
            return Err(Error::argument("train", "a data-parallel step without replicas"));
        };
        let at = |phase: &str| {
            let advice = out_of_memory_advice(&o.model, o.memory_efficient);
            format!(" in the {phase} of step {} at batch {}; {advice}", step + 1, chunk.len())
        };
        let mut parts = Vec::with_capacity(parallel.dp.ranks.len());
        let mut labels = Vec::new();
        for &(rank, _) in &parallel.dp.ranks {
            let (start, end) = parallel.dp.part(rank, chunk.len());
            // Each part is augmented as the images of one batch would be, from its own seed.
            let seed = augment_seed.map(|s| s ^ (rank as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let (x, y) = data::batch(train, &chunk[start..end], seed).map_err(|e| e.in_context(|| at("images")))?;
            labels.extend_from_slice(y.as_slice::<i64>()?);
            parts.push((x, y));
        }
        let mut replicas = Vec::with_capacity(parts.len());
        let mut parts = parts.into_iter();
        if let Some((images, labels)) = parts.next() {
            replicas.push(ReplicaStep { model: self.model.as_mut(), opt: &mut self.opt, images, labels });
        }
        for ((model, opt), (images, labels)) in parallel.others.iter_mut().zip(parts) {
            replicas.push(ReplicaStep { model: model.as_mut(), opt, images, labels });
        }
        let outcome = super::data_parallel::step(&parallel.dp, replicas, chunk.len(), o.exec)
            .map_err(|e| e.in_context(|| at("data-parallel step")))?;
        for (other, _) in &mut parallel.others {
            broadcast_buffers(self.model.as_ref(), other.as_mut())?;
        }
        Ok((outcome.loss, outcome.predictions, labels))
    }
}

/// Step `step` (counted from 0) on a fresh training graph, on the host batch of `images`
/// images: forward, loss, backward, SGD (with a `scaler`, the backward of the scaled loss,
/// and SGD only if the scaler accepts the gradients). An error says in which pass, which
/// layer and at what batch size it happened.
fn eager_step(
    o: &TrainOptions,
    model: &mut dyn Model,
    opt: &mut Sgd,
    scaler: Option<&mut LossScaler>,
    step: usize,
    (x_host, y_host): (&Tensor, &Tensor),
    images: usize,
) -> Result<(f64, Vec<usize>)> {
    let mut g = Graph::new().with_options(o.exec);
    let advice = || out_of_memory_advice(&o.model, o.memory_efficient);
    let at = |phase: &str, layer: Option<&str>| {
        let layer = layer.map(|l| format!(" ({l})")).unwrap_or_default();
        format!(" in the {phase}{layer} of step {} at batch {}; {}", step + 1, images, advice())
    };
    let forward = (|| {
        let (x, y) = (x_host.to_device(o.device)?, y_host.to_device(o.device)?);
        let logits = model.forward(&mut g, &Var::constant(x))?;
        let loss = g.cross_entropy(&logits, &y)?;
        Ok((loss.value().item()?, argmax_rows(logits.value())?, loss))
    })();
    let (loss_value, predictions, loss) =
        forward.map_err(|e: Error| e.in_context(|| at("forward pass", g.current_layer())))?;
    let update = match scaler {
        None => g.backward(&loss).and_then(|grads| grads.accumulate_into(model.params_mut())).map(|()| true),
        Some(scaler) => super::loss_scale::backward_scaled(g, &loss, model.params_mut(), scaler)
            .map(|verdict| verdict == ScaledStep::Apply),
    };
    update
        .and_then(|apply| if apply { opt.step(model.params_mut()) } else { Ok(()) })
        .map_err(|e| e.in_context(|| at("backward pass", None)))?;
    Ok((loss_value, predictions))
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
