//! The command line's arguments as clap reads them: the commands ([`Command`]) and one struct
//! of flags per command, whose doc comments are the `--help` text. Apart from what the commands
//! do so that the whole command line can be read, and its help text checked, in one place.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use scratchnet::Result;
use scratchnet::ops::ExecOptions;

#[derive(Parser)]
#[command(
    name = "scratchnet",
    version,
    about = "A deep-learning engine written from scratch, for the classic vision networks"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Train a model (defaults: ResNet-20 on the built-in synthetic shapes).
    Train(TrainArgs),
    /// Eval-mode logits of a trained model for a batch of images in a .npy file.
    Infer(InferArgs),
    /// The layers of a model: output shapes, parameters, multiply-adds.
    Summary(SummaryArgs),
    /// What is usable on this machine, and why not.
    Devices,
    /// Every op and its gradient on a device against its plain reference.
    Selftest(SelftestArgs),
    /// Time each op at the networks' layer shapes against the device's roofline; or compare
    /// two bench files (--compare).
    Bench(BenchArgs),
    /// One op at one shape, every kernel variant: error against the reference, time,
    /// roofline, and ptxas's registers, shared memory, spills and occupancy.
    Kernel(KernelCmdArgs),
    /// Where a training step (or, with --eval, inference) spends its time and memory, layer by layer.
    Profile(ProfileArgs),
}

#[derive(Args)]
pub struct ProfileArgs {
    #[arg(long, default_value = "resnet20")]
    pub model: String,
    /// auto (cuda:0 if usable, else cpu), cpu, emu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// H or HxW (default: the size the model was designed for).
    #[arg(long)]
    pub input_size: Option<String>,
    /// Classifier outputs (default: 10 for the CIFAR nets, else 1000).
    #[arg(long)]
    pub num_classes: Option<usize>,
    /// Profiled steps, after 2 warm-up steps; each figure is the median.
    #[arg(long, default_value_t = 3)]
    pub steps: usize,
    /// Write the last profiled step as a Chrome trace (open it in Perfetto) here.
    #[arg(long)]
    pub trace: Option<PathBuf>,
    /// DenseNets: recompute each bottleneck's front in backward instead of keeping it.
    #[arg(long)]
    pub memory_efficient: bool,
    /// Profile inference instead: the forward pass in eval mode (running statistics, no loss,
    /// backward or optimizer), as `infer` and `bench --suite inference` run it.
    #[arg(long)]
    pub eval: bool,
    /// With --towers and --model alexnet: a tower on each of these two devices (emu:0,emu:1,
    /// cuda:0,cuda:1); the copies between them are rows of their own. Replaces --device.
    #[arg(long)]
    pub devices: Option<String>,
    #[command(flatten)]
    pub kernels: KernelArgs,
}

/// How the GPU kernels are chosen (train, infer, bench, profile).
#[derive(Args)]
pub struct KernelArgs {
    /// Convolution kernels on cuda/emu: auto (time each shape once and keep the fastest; with
    /// --precision tf32/bf16/fp16 the tensor-core kernels), direct, implicit-gemm (64×64
    /// tiles) or implicit-gemm-128 (128×128 tiles), which run a low precision on rounded
    /// operands, or tensor-core, tensor-core-64, tensor-core-128 (needs a low precision).
    #[arg(long, default_value = "auto")]
    pub conv_algo: String,
    /// Precision of the convolutions and linear layers: fp32, tf32 (operands rounded to
    /// TF32), bf16 or fp16 (mixed precision as torch.autocast: 16-bit operands and results,
    /// FP32 weights, batch norm and loss; fp16 scales the loss). On cuda the tensor cores.
    #[arg(long, default_value = "fp32")]
    pub precision: String,
    /// Run BN+ReLU, BN+add+ReLU and bias+ReLU as separate ops instead of fused kernels.
    #[arg(long)]
    pub no_fuse: bool,
    /// Run each group of a grouped convolution (AlexNet's conv2, conv4, conv5) on its own
    /// CUDA stream, as the paper's two towers.
    #[arg(long)]
    pub towers: bool,
}

impl KernelArgs {
    /// The choices as the value the command's graphs carry.
    pub fn exec_options(&self) -> Result<ExecOptions> {
        Ok(ExecOptions {
            conv_algo: self.conv_algo.parse()?,
            precision: self.precision.parse()?,
            towers: self.towers,
            fuse: !self.no_fuse,
            ..ExecOptions::default()
        })
    }
}

#[derive(Args)]
pub struct TrainArgs {
    /// alexnet, resnet18/34/50/101/152, resnet20/32/44/56/110, densenet121/169/201/161, densenet_bc100.
    #[arg(long, default_value = "resnet20")]
    pub model: String,
    /// synthetic, cifar10:DIR, npy:X.npy,Y.npy or folder:DIR.
    #[arg(long, default_value = "synthetic")]
    pub data: String,
    /// Evaluate on the held-out images of this source instead (npy:X.npy,Y.npy: all of them;
    /// cifar10:DIR: its test batch; folder:DIR: its val/; synthetic: its held-out set).
    #[arg(long, conflicts_with = "holdout")]
    pub val_data: Option<String>,
    /// Hold out this fraction of the training source for evaluation (0: train on everything,
    /// evaluate nothing). Default: the source's own held-out images (the last tenth of npy).
    #[arg(long, allow_negative_numbers = true)]
    pub holdout: Option<f64>,
    /// auto (cuda:0 if usable, else cpu), cpu, emu, emu:N, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Passes over the training split.
    #[arg(long, default_value_t = 4)]
    pub epochs: usize,
    /// Run exactly this many optimizer steps instead of whole epochs.
    #[arg(long)]
    pub steps: Option<usize>,
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 0.1, allow_negative_numbers = true)]
    pub lr: f64,
    /// cosine, constant, or step:EPOCHS:GAMMA (e.g. step:30:0.1).
    #[arg(long, default_value = "cosine")]
    pub lr_schedule: String,
    /// Linear warm-up length in epochs (at most a tenth of the run).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub warmup_epochs: f64,
    #[arg(long, default_value_t = 0.9, allow_negative_numbers = true)]
    pub momentum: f64,
    #[arg(long, default_value_t = 5e-4, allow_negative_numbers = true)]
    pub weight_decay: f64,
    /// Dropout probability of every dropout layer (0 turns dropout off; default: the model's).
    #[arg(long, allow_negative_numbers = true)]
    pub dropout: Option<f64>,
    /// Turn off random crops, flips and lighting noise.
    #[arg(long)]
    pub no_augment: bool,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Classifier outputs (default: 10 for the CIFAR nets and the built-in data, else 1000).
    #[arg(long)]
    pub num_classes: Option<usize>,
    /// Start from these weights (safetensors, torchvision names).
    #[arg(long)]
    pub init: Option<PathBuf>,
    /// Save the weights here at the end (safetensors, written atomically).
    #[arg(long)]
    pub save: Option<PathBuf>,
    /// Write one CSV row per step and per evaluation here, and the curves to the same name .svg.
    #[arg(long)]
    pub log: Option<PathBuf>,
    /// DenseNets: recompute each bottleneck's concatenation and batch norm in backward
    /// instead of keeping them (activation memory linear in depth).
    #[arg(long)]
    pub memory_efficient: bool,
    /// Capture the training step once as a CUDA graph and replay it (cuda, or emu to try it).
    #[arg(long)]
    pub cuda_graph: bool,
    #[command(flatten)]
    pub kernels: KernelArgs,
    #[command(flatten)]
    pub multi: MultiDeviceArgs,
}

/// Several devices: in one process (`--devices`) or one process per device (`--rank`).
#[derive(Args)]
pub struct MultiDeviceArgs {
    /// Several devices of this process, comma-separated: cuda:0,cuda:1 or emu:0,emu:1 (with
    /// --data-parallel, or --towers for AlexNet). Replaces --device.
    #[arg(long)]
    pub devices: Option<String>,
    /// A replica of the model per device, each batch split between them, gradients summed
    /// (NCCL on cuda, a host-side sum on emu).
    #[arg(long)]
    pub data_parallel: bool,
    /// Batch norm takes the statistics of the whole batch, every device's part (default:
    /// each device's own part, as PyTorch's DDP).
    #[arg(long)]
    pub sync_bn: bool,
    /// Megabytes of gradients per all-reduce, which overlaps the rest of the backward pass.
    #[arg(long, default_value_t = 25.0)]
    pub bucket_mb: f64,
    /// This process's rank among --world-size processes, one GPU each (default: $RANK).
    #[arg(long)]
    pub rank: Option<usize>,
    /// How many processes train together (default: $WORLD_SIZE).
    #[arg(long)]
    pub world_size: Option<usize>,
    /// The file through which rank 0 hands the NCCL id to the other ranks (a file system every
    /// rank reads; default: $SCRATCHNET_NCCL_ID_FILE; or give the id in $SCRATCHNET_NCCL_ID).
    #[arg(long)]
    pub nccl_id: Option<PathBuf>,
}

#[derive(Args)]
pub struct InferArgs {
    #[arg(long)]
    pub model: String,
    /// Trained weights (safetensors).
    #[arg(long)]
    pub weights: PathBuf,
    /// float32 images N×C×H×W, normalised as the model was trained.
    #[arg(long)]
    pub input: PathBuf,
    /// Where to write the float32 logits N×K.
    #[arg(long)]
    pub output: PathBuf,
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Classifier outputs (default: 10 for the CIFAR nets, else 1000); must match the weights.
    #[arg(long)]
    pub num_classes: Option<usize>,
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    #[command(flatten)]
    pub kernels: KernelArgs,
}

#[derive(Args)]
pub struct SummaryArgs {
    #[arg(long)]
    pub model: String,
    /// H or HxW (default: the size the model was designed for).
    #[arg(long)]
    pub input_size: Option<String>,
    #[arg(long)]
    pub num_classes: Option<usize>,
}

#[derive(Args)]
pub struct SelftestArgs {
    /// Device to test: cpu, emu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
}

#[derive(Args)]
pub struct KernelCmdArgs {
    /// conv2d, gemm, batchnorm, lrn, pool, concat, elementwise or sgd.
    pub op: String,
    /// auto (cuda:0 if usable, else cpu), cpu, emu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// NxCxHxW (conv2d, batchnorm, lrn, pool, concat) or a number of elements (elementwise,
    /// sgd); default: a shape of the networks on cuda, a smaller one on cpu and emu.
    #[arg(long)]
    pub input: Option<String>,
    /// conv2d: OxIxKHxKW with I = C/groups (default: C→C 3×3).
    #[arg(long)]
    pub weight: Option<String>,
    #[arg(long, default_value_t = 1)]
    pub stride: usize,
    #[arg(long, default_value_t = 1)]
    pub padding: usize,
    #[arg(long, default_value_t = 1)]
    pub dilation: usize,
    #[arg(long, default_value_t = 1)]
    pub groups: usize,
    /// gemm: MxNxK.
    #[arg(long)]
    pub gemm: Option<String>,
    /// fwd, dgrad, wgrad (conv2d), bwd (both gradients, or the op's backward) or all.
    #[arg(long, default_value = "all")]
    pub pass: String,
    /// conv2d and gemm: fp32, or tf32, bf16, fp16 (the tensor-core kernels, and the FP32
    /// ones on rounded operands, against the reference on rounded operands).
    #[arg(long, default_value = "fp32")]
    pub precision: String,
    /// default (what the engine runs) or all (every kernel variant).
    #[arg(long, default_value = "all")]
    pub variants: String,
    /// Timed runs at least (default: 10 on cuda, 3 on cpu, 1 on emu).
    #[arg(long)]
    pub repeats: Option<usize>,
    /// Also write each row as JSON lines here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Args)]
pub struct BenchArgs {
    /// auto (cuda:0 if usable, else cpu), cpu, emu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Comma-separated: alexnet, resnet18, resnet50, densenet121, memory, gemm, inference; or all.
    #[arg(long, default_value = "all")]
    pub suite: String,
    /// Images per batch of the network suites (default: 64 on cuda, 2 on cpu, 1 on emu; the
    /// inference suite: 8, and 32 for resnet20, except 1 on emu).
    #[arg(long)]
    pub batch: Option<usize>,
    /// Megabytes per tensor of the memory suite and the copy ceiling (default: 256 on cuda, 64 on cpu, 1 on emu).
    #[arg(long)]
    pub size_mb: Option<usize>,
    /// Side of the square SGEMM ceiling (default: 4096 on cuda, 1024 on cpu, 64 on emu).
    #[arg(long)]
    pub gemm_size: Option<usize>,
    /// Only problems whose label contains this text (e.g. "conv fwd", "bn").
    #[arg(long)]
    pub filter: Option<String>,
    /// default (what the engine runs) or all (every kernel variant as well).
    #[arg(long, default_value = "default")]
    pub variants: String,
    /// Timed runs per problem, at least (default: 10 on cuda, 3 on cpu, 1 on emu).
    #[arg(long)]
    pub repeats: Option<usize>,
    /// Leave out the whole training step of each network.
    #[arg(long)]
    pub no_train_step: bool,
    /// Write every row, with each problem's spec, here as JSON lines, each as it is measured (for scripts/torch_baseline.py).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Draw every problem on the measured roofline, as SVG, here.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Instead of timing, compare two bench files: scratchnet's JSON and a baseline's.
    #[arg(long, num_args = 2, value_names = ["OURS", "BASELINE"])]
    pub compare: Option<Vec<PathBuf>>,
    #[command(flatten)]
    pub kernels: KernelArgs,
}
