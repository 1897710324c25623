//! Data-parallel training (`--data-parallel --devices …`, or one process per device with
//! `--rank`/`--world-size`): the model replicated on every device, each batch split between
//! them, the gradients summed across devices, and the same SGD step on every replica.
//!
//! A step, on each device at once (one thread per device, as PyTorch's DDP has a process
//! per GPU):
//!
//! 1. the replica runs forward on its part of the batch: `n_r` of the batch's `n` images
//!    (the parts differ by one image at most), and takes the mean loss over them;
//! 2. the backward pass starts from `n_r / n` instead of 1, so that the sum over the
//!    replicas of their gradients is the gradient of the mean loss over the whole batch:
//!    without batch norm, exactly the step one device makes on the whole batch;
//! 3. the gradients are summed by buckets while the backward pass goes on ([`Buckets`]):
//!    each parameter's gradient is final once the walk back has passed its first use, and
//!    as soon as a bucket's worth (`--bucket-mb`, 25 MiB by default as in DDP) is final, its
//!    all-reduce is queued on the device's communication stream and the backward pass goes
//!    on on the main stream. The main stream waits for the communication stream only before
//!    the optimizer step;
//! 4. every replica makes the same SGD step from the same summed gradients, so the weights
//!    stay the same bits everywhere (the sums are the same bits on every rank).
//!
//! Batch norm: each replica normalises with its own part's statistics, as DDP does by
//! default, which makes the step differ from one device's on the whole batch (the statistics
//! of `n_r` images, not `n`): the step is that of accumulating the gradients of the parts,
//! each normalised on its own. After each step the replicas take rank 0's running
//! statistics (DDP's `broadcast_buffers`). `--sync-bn` takes the statistics of the whole
//! batch instead ([`crate::autograd::SyncBn`]), which gives one device's step again.
//!
//! A replica that fails aborts the collective, so that the others stop waiting for it and
//! the step returns the first error.

use std::collections::HashMap;
use std::sync::Arc;

use crate::autograd::{Graph, ParamId, SyncBn, Var};
use crate::device::collective::{Collective, HostSum};
use crate::device::{Device, GpuDevice};
use crate::error::{Error, Result};
use crate::models::Model;
use crate::nn::Sgd;
use crate::ops::loss::argmax_rows;
use crate::ops::{ExecOptions, elementwise};
use crate::tensor::Tensor;

/// The devices of a data-parallel run in this process, and how they sum.
pub struct DataParallel {
    /// This process's ranks, in the order of their devices: global rank and device.
    pub ranks: Vec<(usize, Device)>,
    pub world_size: usize,
    pub collective: Arc<dyn Collective>,
    pub sync_bn: bool,
    pub bucket_bytes: usize,
}

impl DataParallel {
    /// Several devices of this process: NCCL between CUDA GPUs, the host-side sum between
    /// emulated devices.
    pub fn in_process(devices: &[Device], sync_bn: bool, bucket_bytes: usize) -> Result<DataParallel> {
        let gpus = devices
            .iter()
            .map(|d| {
                d.gpu()?.ok_or_else(|| Error::Device(format!("{d}: data parallelism runs on cuda or emu devices")))
            })
            .collect::<Result<Vec<Arc<GpuDevice>>>>()?;
        let collective: Arc<dyn Collective> = if devices.iter().all(Device::is_emu) {
            Arc::new(HostSum::new(devices.len()))
        } else {
            Arc::new(crate::device::nccl::Nccl::in_process(&gpus)?)
        };
        let ranks = devices.iter().copied().enumerate().collect();
        Ok(DataParallel { ranks, world_size: devices.len(), collective, sync_bn, bucket_bytes })
    }

    /// This process as rank `group.rank` of `group.world_size` processes, one device each,
    /// summing through NCCL: rank 0 draws the communicators' id and hands it over through
    /// `--nccl-id` (or the launcher sets `SCRATCHNET_NCCL_ID`); the id's file is removed
    /// once every rank has joined, so that a later run cannot read a stale one.
    pub fn one_rank(
        device: Device,
        group: &super::ProcessGroup,
        sync_bn: bool,
        bucket_bytes: usize,
    ) -> Result<DataParallel> {
        let gpu = device.gpu()?.ok_or_else(|| Error::Device(format!("{device}: NCCL runs on cuda:N")))?;
        let id = crate::device::nccl::unique_id(
            group.rank,
            group.nccl_id.as_deref(),
            crate::device::nccl::RENDEZVOUS_TIMEOUT,
        )?;
        let nccl = crate::device::nccl::Nccl::one_rank(gpu, group.rank, group.world_size, id)?;
        if group.rank == 0
            && let Some(file) = &group.nccl_id
        {
            let _ = std::fs::remove_file(file);
        }
        Ok(DataParallel {
            ranks: vec![(group.rank, device)],
            world_size: group.world_size,
            collective: Arc::new(nccl),
            sync_bn,
            bucket_bytes,
        })
    }

    /// The `[start, end)` of rank `rank`'s part of a batch of `n` images.
    pub fn part(&self, rank: usize, n: usize) -> (usize, usize) {
        let (base, extra) = (n / self.world_size, n % self.world_size);
        let start = rank * base + rank.min(extra);
        (start, start + base + usize::from(rank < extra))
    }
}

/// One replica's share of a step: its model, optimizer and part of the batch.
pub struct ReplicaStep<'a> {
    pub model: &'a mut dyn Model,
    pub opt: &'a mut Sgd,
    pub images: Tensor,
    pub labels: Tensor,
}

/// What a step gives back: the mean loss over the whole batch (this process's parts) and
/// the predicted class of every image, in the batch's order.
pub struct StepOutcome {
    pub loss: f64,
    pub predictions: Vec<usize>,
}

/// One data-parallel step: every replica of this process runs forward and backward on its
/// part of the batch (`batch` images in all, every rank's together) on a thread of its own,
/// the gradients are summed by buckets during the backward pass, and each replica makes the
/// SGD step. (The caller then gives every replica the first one's running statistics,
/// [`broadcast_buffers`].)
pub fn step(dp: &DataParallel, replicas: Vec<ReplicaStep<'_>>, batch: usize, exec: ExecOptions) -> Result<StepOutcome> {
    if replicas.len() != dp.ranks.len() {
        return Err(Error::Device(format!("{} replicas for {} devices", replicas.len(), dp.ranks.len())));
    }
    let results: Vec<Result<(f64, usize, Vec<usize>)>> = std::thread::scope(|s| {
        let handles: Vec<_> = replicas
            .into_iter()
            .enumerate()
            .map(|(local, r)| {
                let (global, device) = dp.ranks[local];
                s.spawn(move || {
                    let abort = AbortOnDrop { collective: dp.collective.as_ref(), armed: true, rank: global };
                    let out = replica_step(dp, local, device, r, batch, exec);
                    if out.is_ok() {
                        abort.disarm();
                    }
                    out
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(Error::Device("a replica's thread panicked".into()))))
            .collect()
    });
    let (mut loss, mut predictions, mut errors) = (0.0, Vec::with_capacity(batch), Vec::new());
    for r in results {
        match r {
            Ok((l, images, p)) => {
                loss += l * images as f64;
                predictions.extend(p);
            }
            Err(e) => errors.push(e),
        }
    }
    // The replica that failed first says why; the others' errors are the aborts it caused.
    if !errors.is_empty() {
        let i = errors.iter().position(|e| !e.to_string().contains("abandoned")).unwrap_or(0);
        return Err(errors.swap_remove(i));
    }
    Ok(StepOutcome { loss: loss / predictions.len().max(1) as f64, predictions })
}

/// Ends the other ranks' waits if this one stops without finishing its step (an error, a panic).
struct AbortOnDrop<'a> {
    collective: &'a dyn Collective,
    armed: bool,
    rank: usize,
}

impl AbortOnDrop<'_> {
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for AbortOnDrop<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.collective.abort(&format!("rank {} failed", self.rank));
        }
    }
}

/// Forward, backward with the bucketed all-reduce, and the SGD step of one replica: its mean
/// loss, its images, and their predicted classes.
fn replica_step(
    dp: &DataParallel,
    local: usize,
    device: Device,
    r: ReplicaStep<'_>,
    batch: usize,
    exec: ExecOptions,
) -> Result<(f64, usize, Vec<usize>)> {
    let ReplicaStep { model, opt, images, labels } = r;
    let n = images.dims().first().copied().unwrap_or(0);
    let mut g = Graph::new().with_options(exec);
    if dp.sync_bn {
        g = g.with_sync_bn(SyncBn { collective: Arc::clone(&dp.collective), rank: local });
    }
    let (x, y) = (images.to_device(device)?, labels.to_device(device)?);
    let logits = model.forward(&mut g, &Var::constant(x))?;
    let loss = g.cross_entropy(&logits, &y)?;
    let (loss_value, predictions) = (loss.value().item()?, argmax_rows(logits.value())?);
    let weight = n as f64 / batch as f64;
    let seed = elementwise::full(loss.shape().clone(), weight, loss.value().dtype(), device)?;
    let gpu = device.gpu()?.ok_or_else(|| Error::Device(format!("{device}: data parallelism needs cuda or emu")))?;
    let index: HashMap<ParamId, usize> = model.params().iter().enumerate().map(|(i, p)| (p.id(), i)).collect();
    let mut buckets = Buckets { dp, local, gpu: &gpu, index: &index, pending: Vec::new(), bytes: 0, done: Vec::new() };
    g.backward_hooked(&loss, seed, Some(&mut |id, grad| buckets.ready(id, grad)))?;
    let summed = buckets.finish()?;
    let mut params = model.params_mut();
    for (i, grad) in summed {
        params[i].grad = Some(grad);
    }
    opt.step(params)?;
    Ok((loss_value, n, predictions))
}

/// The gradients of one replica's backward pass, summed across devices a bucket at a time.
struct Buckets<'a> {
    dp: &'a DataParallel,
    local: usize,
    gpu: &'a Arc<GpuDevice>,
    /// Each parameter's place in the model's list (the same on every replica).
    index: &'a HashMap<ParamId, usize>,
    pending: Vec<(usize, Tensor)>,
    bytes: usize,
    done: Vec<(usize, Tensor)>,
}

impl Buckets<'_> {
    /// A parameter's final gradient; a full bucket's all-reduce is queued now.
    fn ready(&mut self, id: ParamId, grad: Tensor) -> Result<()> {
        let i = *self
            .index
            .get(&id)
            .ok_or_else(|| Error::Autograd("a gradient for a parameter not in the model".into()))?;
        self.bytes += grad.numel() * grad.dtype().size_in_bytes();
        self.pending.push((i, grad));
        if self.bytes >= self.dp.bucket_bytes { self.flush() } else { Ok(()) }
    }

    /// Queues the all-reduce of the pending gradients on the communication stream. Every
    /// replica's walk back reaches the parameters in the same order, so the buckets match.
    fn flush(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let (places, mut grads): (Vec<usize>, Vec<Tensor>) = std::mem::take(&mut self.pending).into_iter().unzip();
        let (collective, local) = (&self.dp.collective, self.local);
        self.gpu.on_comm_stream(|| collective.all_reduce_sum(local, &mut grads))?;
        self.done.extend(places.into_iter().zip(grads));
        self.bytes = 0;
        Ok(())
    }

    /// The last bucket, then the main stream waits for every sum: the summed gradients.
    fn finish(mut self) -> Result<Vec<(usize, Tensor)>> {
        let flushed = self.flush();
        let joined = self.gpu.join_comm_stream();
        flushed.and(joined)?;
        Ok(self.done)
    }
}

/// Makes another replica's batch norm running statistics (and other buffers) those of the
/// first, as DDP broadcasts rank 0's buffers.
pub fn broadcast_buffers(first: &dyn Model, other: &mut dyn Model) -> Result<()> {
    for ((_, b), (_, s)) in other.buffers_mut().into_iter().zip(first.buffers()) {
        *b = s.to_device(b.device())?;
    }
    Ok(())
}

/// A replica of `first` on `device`: `other`, the same network freshly built, holding
/// `first`'s parameters and buffers.
pub fn replicate(first: &dyn Model, mut other: Box<dyn Model>, device: Device) -> Result<Box<dyn Model>> {
    other.to_device(device)?;
    let values: Vec<Tensor> = first.params().iter().map(|p| p.value.clone()).collect();
    let params = other.params_mut();
    if params.len() != values.len() {
        return Err(Error::Device("a replica with other parameters than the model's".into()));
    }
    for (p, v) in params.into_iter().zip(values) {
        p.value = v.to_device(device)?;
    }
    broadcast_buffers(first, other.as_mut())?;
    Ok(other)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parts_of_a_batch_cover_it_and_differ_by_one_image_at_most() {
        let dp = DataParallel::in_process(&[Device::Emu(0), Device::Emu(1), Device::Emu(2)], false, 1).unwrap();
        assert_eq!((0..3).map(|r| dp.part(r, 10)).collect::<Vec<_>>(), vec![(0, 4), (4, 7), (7, 10)]);
        assert_eq!((0..3).map(|r| dp.part(r, 6)).collect::<Vec<_>>(), vec![(0, 2), (2, 4), (4, 6)]);
    }
}
