//! What `scratchnet train` is asked to do ([`TrainOptions`]), with its defaults, the checks on
//! the numbers given, and the number of classes a run trains with. Apart from the loop so that
//! every knob of a run can be read in one place.

use std::path::PathBuf;

use super::Schedule;
use crate::data::{DataSource, HeldOut};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::models;
use crate::ops::ExecOptions;

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
    /// How the run spreads over several devices (`--devices`, `--data-parallel`, `--rank`).
    pub multi: MultiDevice,
}

/// How a run spreads over several devices.
#[derive(Clone, Debug, PartialEq)]
pub struct MultiDevice {
    /// `--devices`: every device this process drives, the first being `device`; empty for one.
    pub devices: Vec<Device>,
    /// `--data-parallel`: a replica of the model per device (per rank), each batch split
    /// between them, the gradients summed.
    pub data_parallel: bool,
    /// `--sync-bn`: batch norm takes the statistics of the whole batch, every device's part.
    pub sync_bn: bool,
    /// How many bytes of gradients one all-reduce sums (`--bucket-mb`; PyTorch's DDP: 25 MiB).
    pub bucket_bytes: usize,
    /// `--rank R --world-size W`: this process is rank R of W, one device each, summing
    /// through NCCL with the processes of the other ranks.
    pub process_group: Option<ProcessGroup>,
}

impl Default for MultiDevice {
    fn default() -> Self {
        MultiDevice {
            devices: Vec::new(),
            data_parallel: false,
            sync_bn: false,
            bucket_bytes: 25 << 20,
            process_group: None,
        }
    }
}

/// This process's place among the processes of a data-parallel run.
#[derive(Clone, Debug, PartialEq)]
pub struct ProcessGroup {
    pub rank: usize,
    pub world_size: usize,
    /// The file through which rank 0 hands the NCCL id to the others (`--nccl-id`).
    pub nccl_id: Option<PathBuf>,
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
            multi: MultiDevice::default(),
        }
    }
}

pub(super) fn check(o: &TrainOptions) -> Result<()> {
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
    if o.cuda_graph && o.exec.precision == crate::ops::Precision::Fp16 {
        // A replayed step cannot skip its update: the loss scaler decides on the host.
        return bad("--cuda-graph cannot be combined with --precision fp16 (the loss scaler decides each step)".into());
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
    check_multi_device(o)
}

/// The combinations of `--devices`, `--data-parallel`, `--sync-bn`, `--towers` and
/// `--rank`/`--world-size` that make a run.
fn check_multi_device(o: &TrainOptions) -> Result<()> {
    let bad = |msg: &str| Err(Error::argument("train", msg.to_string()));
    let m = &o.multi;
    let several = !m.devices.is_empty();
    if let Some(g) = &m.process_group {
        if g.world_size < 2 || g.rank >= g.world_size {
            return bad(&format!(
                "--rank {} --world-size {}: a world of 2 or more, ranks 0 to world − 1",
                g.rank, g.world_size
            ));
        }
        if several {
            return bad("--rank/--world-size run one device per process: give it --device, not --devices");
        }
        if !matches!(o.device, Device::Cuda(_)) {
            return bad("--rank/--world-size sum gradients through NCCL, across processes: the device must be cuda:N");
        }
    }
    let data_parallel = m.data_parallel || m.process_group.is_some();
    if several && !data_parallel && !o.exec.towers {
        return bad("--devices says where, not how: add --data-parallel (a replica per device) or --towers (AlexNet)");
    }
    if m.data_parallel && !several && m.process_group.is_none() {
        return bad(
            "--data-parallel needs several devices: --devices cuda:0,cuda:1 (or emu:0,emu:1), or --rank/--world-size",
        );
    }
    if m.sync_bn && !data_parallel {
        return bad("--sync-bn synchronises the batch norms of data-parallel replicas: add --data-parallel");
    }
    if m.sync_bn && o.memory_efficient {
        return bad(
            "--sync-bn cannot be combined with --memory-efficient (the recomputed batch norms are not synchronised)",
        );
    }
    if data_parallel && o.exec.towers && several {
        return bad("--towers on several devices and --data-parallel are two ways to use the devices: choose one");
    }
    if several && o.exec.towers {
        if o.model != "alexnet" {
            return bad("--towers on several devices splits AlexNet (--model alexnet)");
        }
        if m.devices.len() != 2 {
            return bad("--towers splits AlexNet over exactly two devices, as the paper's two GPUs");
        }
    }
    if (several || m.process_group.is_some()) && o.cuda_graph {
        return bad("--cuda-graph captures one device's step: it cannot be combined with several devices");
    }
    if data_parallel && o.exec.precision == crate::ops::Precision::Fp16 {
        return bad("--precision fp16 scales the loss on one device: use bf16 with --data-parallel");
    }
    if m.bucket_bytes == 0 {
        return bad("--bucket-mb must be above 0");
    }
    Ok(())
}

/// The number of classes a run trains with: `--num-classes`, else 10 for the CIFAR nets and
/// the built-in data sets, else 1000.
pub fn num_classes(o: &TrainOptions) -> usize {
    o.num_classes.unwrap_or(match o.data {
        DataSource::Synthetic | DataSource::Cifar10(_) => 10,
        _ => models::default_num_classes(&o.model),
    })
}
