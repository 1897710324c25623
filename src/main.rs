//! The `scratchnet` command line.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use scratchnet::data::{DataSource, HeldOut};
use scratchnet::device::Device;
use scratchnet::device::host_memory::{Activity, set_activity};
use scratchnet::models;
use scratchnet::ops::ExecOptions;
use scratchnet::output;
use scratchnet::report::MetricsLog;
use scratchnet::train::{Progress, Schedule, TrainOptions, train};
use scratchnet::{Error, Graph, Result, Tensor, Var};

/// Out of memory anywhere ends the process with a one-line error and exit code 2, not an
/// abort (see `scratchnet::device::host_memory`).
#[global_allocator]
static ALLOCATOR: scratchnet::device::host_memory::GuardedAllocator = scratchnet::device::host_memory::GuardedAllocator;

/// `println!`, but a closed stdout (`scratchnet summary | head`) ends the output quietly
/// instead of panicking.
macro_rules! out {
    ($($t:tt)*) => {{
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}

/// `eprintln!` that cannot panic either.
macro_rules! err {
    ($($t:tt)*) => {{
        let _ = writeln!(std::io::stderr(), $($t)*);
    }};
}

#[derive(Parser)]
#[command(
    name = "scratchnet",
    version,
    about = "A deep-learning engine written from scratch, for the classic vision networks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a model (defaults: ResNet-20 on the built-in synthetic shapes).
    Train(TrainArgs),
    /// Eval-mode logits of a trained model for a batch of images in a .npy file.
    Infer(InferArgs),
    /// The layers of a model: output shapes, parameters, multiply-adds.
    Summary(SummaryArgs),
    /// What is usable on this machine, and why not.
    Devices,
    /// Every op and its gradient on a device against the CPU reference.
    Selftest(SelftestArgs),
    /// Time each op at the networks' layer shapes against the device's roofline; or compare
    /// two bench files (--compare).
    Bench(BenchArgs),
    /// One op at one shape, every kernel variant: error against the reference, time,
    /// roofline, and ptxas's registers, shared memory, spills and occupancy.
    Kernel(KernelCmdArgs),
    /// Where a training step spends its time and memory, layer by layer.
    Profile(ProfileArgs),
}

#[derive(Args)]
struct ProfileArgs {
    #[arg(long, default_value = "resnet20")]
    model: String,
    /// auto (cuda:0 if usable, else cpu), cpu, emu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// H or HxW (default: the size the model was designed for).
    #[arg(long)]
    input_size: Option<String>,
    /// Classifier outputs (default: 10 for the CIFAR nets, else 1000).
    #[arg(long)]
    num_classes: Option<usize>,
    /// Profiled steps, after 2 warm-up steps; each figure is the median.
    #[arg(long, default_value_t = 3)]
    steps: usize,
    /// Write the last profiled step as a Chrome trace (open it in Perfetto) here.
    #[arg(long)]
    trace: Option<PathBuf>,
    /// DenseNets: recompute each bottleneck's front in backward instead of keeping it.
    #[arg(long)]
    memory_efficient: bool,
    #[command(flatten)]
    kernels: KernelArgs,
}

/// How the GPU kernels are chosen (train, infer, bench, profile).
#[derive(Args)]
struct KernelArgs {
    /// Convolution kernels on cuda/emu: auto (time each shape once and keep the fastest),
    /// direct, implicit-gemm (64×64 tiles) or implicit-gemm-128 (128×128 tiles).
    #[arg(long, default_value = "auto")]
    conv_algo: String,
    /// Run BN+ReLU, BN+add+ReLU and bias+ReLU as separate ops instead of fused kernels.
    #[arg(long)]
    no_fuse: bool,
    /// Run each group of a grouped convolution (AlexNet's conv2, conv4, conv5) on its own
    /// CUDA stream, as the paper's two towers.
    #[arg(long)]
    towers: bool,
}

impl KernelArgs {
    /// The choices as the value the command's graphs carry.
    fn exec_options(&self) -> Result<ExecOptions> {
        Ok(ExecOptions { conv_algo: self.conv_algo.parse()?, towers: self.towers, fuse: !self.no_fuse })
    }
}

#[derive(Args)]
struct TrainArgs {
    /// alexnet, resnet18/34/50/101/152, resnet20/32/44/56/110, densenet121/169/201/161, densenet_bc100.
    #[arg(long, default_value = "resnet20")]
    model: String,
    /// synthetic, cifar10:DIR, npy:X.npy,Y.npy or folder:DIR.
    #[arg(long, default_value = "synthetic")]
    data: String,
    /// Evaluate on the held-out images of this source instead (npy:X.npy,Y.npy: all of them;
    /// cifar10:DIR: its test batch; folder:DIR: its val/; synthetic: its held-out set).
    #[arg(long, conflicts_with = "holdout")]
    val_data: Option<String>,
    /// Hold out this fraction of the training source for evaluation (0: train on everything,
    /// evaluate nothing). Default: the source's own held-out images (the last tenth of npy).
    #[arg(long, allow_negative_numbers = true)]
    holdout: Option<f64>,
    /// auto (cuda:0 if usable, else cpu), cpu, emu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Passes over the training split.
    #[arg(long, default_value_t = 4)]
    epochs: usize,
    /// Run exactly this many optimizer steps instead of whole epochs.
    #[arg(long)]
    steps: Option<usize>,
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 0.1, allow_negative_numbers = true)]
    lr: f64,
    /// cosine, constant, or step:EPOCHS:GAMMA (e.g. step:30:0.1).
    #[arg(long, default_value = "cosine")]
    lr_schedule: String,
    /// Linear warm-up length in epochs (at most a tenth of the run).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    warmup_epochs: f64,
    #[arg(long, default_value_t = 0.9, allow_negative_numbers = true)]
    momentum: f64,
    #[arg(long, default_value_t = 5e-4, allow_negative_numbers = true)]
    weight_decay: f64,
    /// Dropout probability of every dropout layer (0 turns dropout off; default: the model's).
    #[arg(long, allow_negative_numbers = true)]
    dropout: Option<f64>,
    /// Turn off random crops, flips and lighting noise.
    #[arg(long)]
    no_augment: bool,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Classifier outputs (default: 10 for the CIFAR nets and the built-in data, else 1000).
    #[arg(long)]
    num_classes: Option<usize>,
    /// Start from these weights (safetensors, torchvision names).
    #[arg(long)]
    init: Option<PathBuf>,
    /// Save the weights here at the end (safetensors, written atomically).
    #[arg(long)]
    save: Option<PathBuf>,
    /// Write one CSV row per step and per evaluation here, and the curves to the same name .svg.
    #[arg(long)]
    log: Option<PathBuf>,
    /// DenseNets: recompute each bottleneck's concatenation and batch norm in backward
    /// instead of keeping them (activation memory linear in depth).
    #[arg(long)]
    memory_efficient: bool,
    /// Capture the training step once as a CUDA graph and replay it (cuda, or emu to try it).
    #[arg(long)]
    cuda_graph: bool,
    #[command(flatten)]
    kernels: KernelArgs,
}

#[derive(Args)]
struct InferArgs {
    #[arg(long)]
    model: String,
    /// Trained weights (safetensors).
    #[arg(long)]
    weights: PathBuf,
    /// float32 images N×C×H×W, normalised as the model was trained.
    #[arg(long)]
    input: PathBuf,
    /// Where to write the float32 logits N×K.
    #[arg(long)]
    output: PathBuf,
    #[arg(long, default_value = "auto")]
    device: String,
    /// Classifier outputs (default: 10 for the CIFAR nets, else 1000); must match the weights.
    #[arg(long)]
    num_classes: Option<usize>,
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    #[command(flatten)]
    kernels: KernelArgs,
}

#[derive(Args)]
struct SummaryArgs {
    #[arg(long)]
    model: String,
    /// H or HxW (default: the size the model was designed for).
    #[arg(long)]
    input_size: Option<String>,
    #[arg(long)]
    num_classes: Option<usize>,
}

#[derive(Args)]
struct SelftestArgs {
    /// Device to test: cpu, emu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
}

#[derive(Args)]
struct KernelCmdArgs {
    /// conv2d, gemm, batchnorm, lrn, pool, concat, elementwise or sgd.
    op: String,
    /// auto (cuda:0 if usable, else cpu), cpu, emu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
    /// NxCxHxW (conv2d, batchnorm, lrn, pool, concat) or a number of elements (elementwise,
    /// sgd); default: a shape of the networks on cuda, a smaller one on cpu and emu.
    #[arg(long)]
    input: Option<String>,
    /// conv2d: OxIxKHxKW with I = C/groups (default: C→C 3×3).
    #[arg(long)]
    weight: Option<String>,
    #[arg(long, default_value_t = 1)]
    stride: usize,
    #[arg(long, default_value_t = 1)]
    padding: usize,
    #[arg(long, default_value_t = 1)]
    dilation: usize,
    #[arg(long, default_value_t = 1)]
    groups: usize,
    /// gemm: MxNxK.
    #[arg(long)]
    gemm: Option<String>,
    /// fwd, dgrad, wgrad (conv2d), bwd (both gradients, or the op's backward) or all.
    #[arg(long, default_value = "all")]
    pass: String,
    /// default (what the engine runs) or all (every kernel variant).
    #[arg(long, default_value = "all")]
    variants: String,
    /// Timed runs at least (default: 10 on cuda, 3 on cpu, 1 on emu).
    #[arg(long)]
    repeats: Option<usize>,
    /// Also write each row as JSON lines here.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Args)]
struct BenchArgs {
    /// auto (cuda:0 if usable, else cpu), cpu, emu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Comma-separated: alexnet, resnet18, resnet50, densenet121, memory, gemm; or all.
    #[arg(long, default_value = "all")]
    suite: String,
    /// Images per batch of the network suites (default: 64 on cuda, 2 on cpu, 1 on emu).
    #[arg(long)]
    batch: Option<usize>,
    /// Megabytes per tensor of the memory suite and the copy ceiling (default: 256 on cuda, 64 on cpu, 1 on emu).
    #[arg(long)]
    size_mb: Option<usize>,
    /// Side of the square SGEMM ceiling (default: 4096 on cuda, 1024 on cpu, 64 on emu).
    #[arg(long)]
    gemm_size: Option<usize>,
    /// Only problems whose label contains this text (e.g. "conv fwd", "bn").
    #[arg(long)]
    filter: Option<String>,
    /// default (what the engine runs) or all (every kernel variant as well).
    #[arg(long, default_value = "default")]
    variants: String,
    /// Timed runs per problem, at least (default: 10 on cuda, 3 on cpu, 1 on emu).
    #[arg(long)]
    repeats: Option<usize>,
    /// Leave out the whole training step of each network.
    #[arg(long)]
    no_train_step: bool,
    /// Write every row, with each problem's spec, here as JSON lines, each as it is measured (for scripts/torch_baseline.py).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Draw every problem on the measured roofline, as SVG, here.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Instead of timing, compare two bench files: scratchnet's JSON and a baseline's.
    #[arg(long, num_args = 2, value_names = ["OURS", "BASELINE"])]
    compare: Option<Vec<PathBuf>>,
    #[command(flatten)]
    kernels: KernelArgs,
}

fn main() -> ExitCode {
    scratchnet::device::cpu::keep_freed_host_memory();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                let _ = e.print();
                return ExitCode::from(2);
            }
            // clap's message, on one line like every other error.
            let text = e.render().to_string();
            let first = text.lines().next().unwrap_or("error: bad arguments").trim_end();
            err!("{first} (see scratchnet --help)");
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Command::Train(args) => run_train(args).map(|()| ExitCode::SUCCESS),
        Command::Infer(args) => run_infer(args).map(|()| ExitCode::SUCCESS),
        Command::Summary(args) => run_summary(args).map(|()| ExitCode::SUCCESS),
        Command::Devices => run_devices().map(|()| ExitCode::SUCCESS),
        Command::Selftest(args) => run_selftest(args),
        Command::Bench(args) => run_bench(args).map(|()| ExitCode::SUCCESS),
        Command::Kernel(args) => run_kernel(args),
        Command::Profile(args) => run_profile(args).map(|()| ExitCode::SUCCESS),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            // One line, whatever a file name or a library's message holds.
            let text: String = e.to_string().chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
            err!("error: {text}");
            ExitCode::from(2)
        }
    }
}

fn run_train(a: TrainArgs) -> Result<()> {
    let exec = a.kernels.exec_options()?;
    let data = a.data.parse::<DataSource>()?;
    let held_out = match (&a.val_data, a.holdout) {
        (Some(spec), _) => HeldOut::Data(spec.parse::<DataSource>()?),
        (None, Some(f)) => HeldOut::Fraction(f),
        (None, None) => HeldOut::Default,
    };
    if let HeldOut::Fraction(f) = held_out
        && !(0.0..1.0).contains(&f)
    {
        return Err(Error::argument("train", format!("--holdout must be a fraction in [0, 1), got {f}")));
    }
    // Every file the run writes must be none of the files it reads (--save may replace the
    // --init it starts from: that file is read whole before training).
    // (A --log named .svg is refused by the log itself, with its own reason.)
    let svg = a.log.as_ref().map(|l| l.with_extension("svg")).filter(|svg| Some(svg) != a.log.as_ref());
    let mut inputs: Vec<(&str, &std::path::Path)> = Vec::new();
    for (flag, source) in
        [("--data", Some(&data)), ("--val-data", if let HeldOut::Data(d) = &held_out { Some(d) } else { None })]
    {
        if let Some(DataSource::Npy(x, y)) = source {
            inputs.extend([(flag, x.as_path()), (flag, y.as_path())]);
        }
    }
    let outputs: Vec<(&str, &std::path::Path)> = [("--save", &a.save), ("--log", &a.log), ("--log's curves", &svg)]
        .into_iter()
        .filter_map(|(flag, p)| Some((flag, p.as_deref()?)))
        .collect();
    output::refuse_overlap(&outputs, &inputs)?;
    if let Some(init) = &a.init {
        output::refuse_overlap(&outputs[usize::from(a.save.is_some())..], &[("--init", init)])?;
    }
    let options = TrainOptions {
        model: a.model,
        data,
        held_out,
        device: a.device.parse::<Device>()?,
        epochs: a.epochs,
        steps: a.steps,
        batch_size: a.batch_size,
        lr: a.lr,
        schedule: a.lr_schedule.parse::<Schedule>()?,
        warmup_epochs: a.warmup_epochs,
        momentum: a.momentum,
        weight_decay: a.weight_decay,
        dropout: a.dropout,
        augment: !a.no_augment,
        seed: a.seed,
        num_classes: a.num_classes,
        init: a.init,
        save: a.save.clone(),
        memory_efficient: a.memory_efficient,
        cuda_graph: a.cuda_graph,
        exec,
        ..TrainOptions::default()
    };
    let mut log = a.log.as_deref().map(MetricsLog::create).transpose()?;
    let live = std::io::stderr().is_terminal();
    let bar = ProgressBar::hidden();
    let mut last_test_accuracy = None;
    let mut log_error: Option<Error> = None;
    train(&options, |p| match p {
        Progress::Start { model, params, train_images, test_images, total_steps, .. } => {
            let plural = |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
            let images = if *test_images == 0 {
                format!(
                    "{} and none held out (no evaluation)",
                    plural(*train_images, "training image", "training images")
                )
            } else {
                format!("{train_images} training and {}", plural(*test_images, "held-out image", "held-out images"))
            };
            out!(
                "training {model} ({params} parameters) on {} with {images}, {} of {}",
                options.device,
                plural(*total_steps, "step", "steps"),
                options.batch_size
            );
            if live {
                bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
                bar.set_length(*total_steps as u64);
                bar.set_style(
                    ProgressStyle::with_template("epoch {prefix} [{bar:28}] {pos}/{len} {msg} ({eta} left)")
                        .unwrap_or_else(|_| ProgressStyle::default_bar())
                        .progress_chars("=> "),
                );
            }
        }
        Progress::Step(r) => {
            let lr = if r.lr == 0.0 || (1e-4..1e4).contains(&r.lr) {
                format!("{:.4}", r.lr)
            } else {
                format!("{:.3e}", r.lr)
            };
            let line =
                format!("loss {:.4}  acc {:.1}%  lr {lr}  {:.0} img/s", r.loss, r.accuracy * 100.0, r.images_per_sec);
            if live {
                bar.set_prefix(r.epoch.to_string());
                bar.set_position(r.step as u64);
                bar.set_message(line);
            } else if r.step % 25 == 0 || r.step == r.total_steps {
                err!("epoch {} step {}/{}  {line}", r.epoch, r.step, r.total_steps);
            }
            if let Some(l) = &mut log
                && let Err(e) = l.step(r)
            {
                log_error.get_or_insert(e);
            }
        }
        Progress::Epoch(r) => {
            let held_out = match (r.test_loss, r.test_accuracy) {
                (Some(loss), Some(acc)) => format!("held-out loss {loss:.4} acc {:.1}%", acc * 100.0),
                _ => "nothing held out".to_string(),
            };
            bar.suspend(|| {
                out!(
                    "epoch {}: train loss {:.4} acc {:.1}% | {held_out} | {:.0} img/s",
                    r.epoch,
                    r.train_loss,
                    r.train_accuracy * 100.0,
                    r.images_per_sec
                )
            });
            last_test_accuracy = r.test_accuracy;
            if let Some(l) = &mut log
                && let Err(e) = l.epoch(r)
            {
                log_error.get_or_insert(e);
            }
        }
    })?;
    bar.finish_and_clear();
    if let Some(e) = log_error {
        return Err(e);
    }
    if let Some(acc) = last_test_accuracy {
        out!("final held-out accuracy: {:.1}%", acc * 100.0);
    }
    if let Some(path) = &a.save {
        out!("weights saved to {}", path.display());
    }
    if let Some(l) = log {
        let svg = l.finish()?;
        out!("log written to {} and {}", a.log.unwrap_or_default().display(), svg.display());
    }
    Ok(())
}

fn run_infer(a: InferArgs) -> Result<()> {
    let exec = a.kernels.exec_options()?;
    set_activity(Activity::Inference);
    let device = a.device.parse::<Device>()?;
    if a.batch_size == 0 {
        return Err(Error::argument("infer", "--batch-size must be at least 1"));
    }
    output::refuse_overlap(&[("--output", &a.output)], &[("--weights", &a.weights), ("--input", &a.input)])?;
    output::check_writable(&a.output)?;
    let classes = a.num_classes.unwrap_or_else(|| models::default_num_classes(&a.model));
    let mut model = models::build(&a.model, classes, 0)?;
    model.to_device(device)?;
    scratchnet::checkpoint::load(model.as_mut(), &a.weights)?;
    let x = scratchnet::data::npy::read(&a.input)?;
    if !x.dtype().is_float() {
        return Err(Error::file(&a.input, format!("expected float32 images, got {}", x.dtype())));
    }
    model.check_input(x.shape()).map_err(|e| Error::file(&a.input, e))?;
    let (n, c, h, w) = x.shape().dims4().ok_or_else(|| Error::file(&a.input, "expected N×C×H×W images"))?;
    let values = x.to_vec::<f32>()?;
    let per = c * h * w;
    scratchnet::data::check_finite(&a.input, &values, per)?;
    let mut logits = Vec::with_capacity(n * classes);
    for start in (0..n).step_by(a.batch_size) {
        let end = (start + a.batch_size).min(n);
        let batch =
            Tensor::from_vec([end - start, c, h, w], values[start * per..end * per].to_vec())?.to_device(device)?;
        let mut g = Graph::eval().with_options(exec);
        let y = model.forward(&mut g, &Var::constant(batch)).map_err(|e| {
            e.in_context(|| {
                let layer = g.current_layer().map(|l| format!(" ({l})")).unwrap_or_default();
                format!(" in the forward pass{layer} at batch {}; try a smaller --batch-size", end - start)
            })
        })?;
        logits.extend(y.value().to_vec::<f32>()?);
    }
    let out = Tensor::from_vec([n, classes], logits)?;
    scratchnet::data::npy::write_f32(&a.output, &out)?;
    out!("wrote {n}×{classes} logits to {}", a.output.display());
    Ok(())
}

/// `--input-size H` or `HxW` over the model's own `[C, H, W]`.
fn parse_input_size(command: &'static str, size: Option<&str>, [c, h, w]: [usize; 3]) -> Result<[usize; 3]> {
    let Some(size) = size else { return Ok([c, h, w]) };
    let bad = || Error::argument(command, format!("--input-size '{size}' is not H or HxW (e.g. 224 or 224x160)"));
    let (hs, ws) = size.split_once(['x', 'X']).unwrap_or((size, size));
    let (h, w): (usize, usize) = (hs.trim().parse().map_err(|_| bad())?, ws.trim().parse().map_err(|_| bad())?);
    if h == 0 || w == 0 {
        return Err(Error::argument(
            command,
            format!("--input-size '{size}' is empty: an image has at least 1×1 pixels"),
        ));
    }
    Ok([c, h, w])
}

fn run_profile(a: ProfileArgs) -> Result<()> {
    let exec = a.kernels.exec_options()?;
    set_activity(Activity::Profiling);
    if let Some(path) = &a.trace {
        output::check_writable(path)?;
    }
    models::check_name(&a.model)?;
    let num_classes = a.num_classes.unwrap_or_else(|| models::default_num_classes(&a.model));
    let own = models::build(&a.model, num_classes, 0)?.input_size();
    let options = scratchnet::profile_report::ProfileOptions {
        model: a.model,
        device: a.device.parse::<Device>()?,
        batch: a.batch_size,
        input: Some(parse_input_size("profile", a.input_size.as_deref(), own)?),
        num_classes,
        steps: a.steps,
        warmup: 2,
        memory_efficient: a.memory_efficient,
        exec,
    };
    let batch = options.batch;
    let report = scratchnet::profile_report::profile(&options)
        .map_err(|e| e.in_context(|| format!(" at batch {batch}; try a smaller --batch-size")))?;
    let _ = write!(std::io::stdout(), "{report}");
    if let Some(path) = &a.trace {
        report.write_trace(path)?;
        out!("wrote {} (open it in https://ui.perfetto.dev or chrome://tracing)", path.display());
    }
    Ok(())
}

fn run_summary(a: SummaryArgs) -> Result<()> {
    let classes = a.num_classes.unwrap_or_else(|| models::default_num_classes(&a.model));
    let mut model = models::build(&a.model, classes, 0)?;
    let [c, h, w] = parse_input_size("summary", a.input_size.as_deref(), model.input_size())?;
    let summary = scratchnet::summary::summarize(model.as_mut(), [c, h, w])?;
    let _ = write!(std::io::stdout(), "{summary}");
    Ok(())
}

fn run_bench(a: BenchArgs) -> Result<()> {
    use scratchnet::bench::{self, BenchOptions, Report, Suite};
    if let Some(files) = &a.compare {
        let comparison = bench::compare::compare(&files[0], &files[1])?;
        let _ = write!(std::io::stdout(), "{comparison}");
        return Ok(());
    }
    let exec = a.kernels.exec_options()?;
    set_activity(Activity::Benchmarking);
    let outputs: Vec<(&str, &std::path::Path)> =
        [("--json", &a.json), ("--plot", &a.plot)].into_iter().filter_map(|(f, p)| Some((f, p.as_deref()?))).collect();
    output::refuse_overlap(&outputs, &[])?;
    for (_, path) in &outputs {
        output::check_writable(path)?;
    }
    let mut opts = BenchOptions::new(a.device.parse::<Device>()?);
    opts.suites = Suite::parse_list(&a.suite)?;
    opts.exec = exec;
    opts.batch = a.batch;
    opts.size_mb = a.size_mb;
    opts.gemm_size = a.gemm_size;
    opts.filter = a.filter;
    opts.repeats = a.repeats;
    opts.train_steps = !a.no_train_step;
    opts.all_variants = match a.variants.as_str() {
        "default" => false,
        "all" => true,
        other => return Err(Error::argument("bench", format!("--variants must be default or all, got '{other}'"))),
    };
    if opts.device == Device::Emu {
        err!("note: the emulator runs kernels on the CPU; its timings say nothing about a GPU");
    }
    // The results file is written as the run goes, a line per row (bench::jsonl), so that a
    // run stopped by a deadline keeps every row measured before it.
    let results = std::cell::RefCell::new(a.json.as_deref().map(bench::jsonl::JsonLines::create).transpose()?);
    let report = bench::run(
        &opts,
        |h| {
            let c = h.ceilings;
            out!(
                "ceilings on {}: copy {:.1} GB/s ({} MiB), SGEMM {:.1} GFLOP/s ({n}³)",
                opts.device,
                c.copy_gbs,
                c.copy_bytes >> 20,
                c.gemm_gflops,
                n = c.gemm_size
            );
            out!("{}", Report::header());
            results.borrow_mut().as_mut().map_or(Ok(()), |f| f.write(&h.to_json()))
        },
        |row, c| {
            out!("{}", bench::line(row, c));
            results.borrow_mut().as_mut().map_or(Ok(()), |f| f.write(&row.to_json(c)))
        },
    )?;
    if let Some(path) = &a.json {
        out!("wrote {} ({} rows)", path.display(), report.rows.len());
    }
    if let Some(path) = &a.plot {
        let title = format!("scratchnet on {} ({}), batch {}", report.device_name, report.device, report.batch);
        let svg = bench::roofline::render(&report.rows, &report.ceilings, &title);
        output::write_atomically(path, svg.as_bytes())?;
        out!("wrote {}", path.display());
    }
    Ok(())
}

/// `AxBxC…` as sizes, or an error naming the flag.
fn parse_dims(flag: &str, text: &str) -> Result<Vec<usize>> {
    text.split(['x', 'X'])
        .map(|d| d.trim().parse::<usize>())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|_| Error::argument("kernel", format!("{flag} '{text}' is not sizes joined by x (e.g. 64x256x14x14)")))
}

fn run_kernel(a: KernelCmdArgs) -> Result<ExitCode> {
    use scratchnet::bench::kernel::{self, KernelOptions};
    set_activity(Activity::Benchmarking);
    if let Some(path) = &a.json {
        output::check_writable(path)?;
    }
    let gemm = match a.gemm.as_deref().map(|g| parse_dims("--gemm", g)).transpose()? {
        Some(d) => match d[..] {
            [m, n, k] => Some([m, n, k]),
            _ => return Err(Error::argument("kernel", format!("--gemm takes MxNxK, got {} sizes", d.len()))),
        },
        None => None,
    };
    let opts = KernelOptions {
        device: a.device.parse::<Device>()?,
        family: a.op.clone(),
        input: a.input.as_deref().map(|t| parse_dims("--input", t)).transpose()?,
        weight: a.weight.as_deref().map(|t| parse_dims("--weight", t)).transpose()?,
        conv: scratchnet::ops::conv2d::Conv2dParams::default()
            .stride(a.stride)
            .padding(a.padding)
            .dilation(a.dilation)
            .groups(a.groups),
        gemm,
        pass: a.pass.clone(),
        all_variants: match a.variants.as_str() {
            "default" => false,
            "all" => true,
            other => {
                return Err(Error::argument("kernel", format!("--variants must be default or all, got '{other}'")));
            }
        },
        repeats: a.repeats,
    };
    let mut results = a.json.as_deref().map(scratchnet::bench::jsonl::JsonLines::create).transpose()?;
    let mut write_error = None;
    let mut first = true;
    let (_, rows) = kernel::run(&opts, |row, c| {
        if first {
            if opts.device == Device::Emu {
                err!("note: the emulator runs kernels on the CPU; its times say nothing about a GPU");
            }
            out!(
                "{} on {}: ceilings copy {:.1} GB/s, SGEMM {:.1} GFLOP/s",
                opts.family,
                opts.device,
                c.copy_gbs,
                c.gemm_gflops
            );
            out!("{}", kernel::header());
            first = false;
        }
        for line in kernel::lines(opts.device, row, c) {
            out!("{line}");
        }
        if let Some(f) = results.as_mut()
            && let Err(e) = f.write(&kernel::to_json(row))
        {
            write_error.get_or_insert(e);
        }
    })?;
    if let Some(e) = write_error {
        return Err(e);
    }
    let failed = rows.iter().filter(|r| !r.passed()).count();
    out!("{} variants: {} within tolerance, {failed} not", rows.len(), rows.len() - failed);
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn run_devices() -> Result<()> {
    use scratchnet::device::{cuda, emu, kernels};
    out!(
        "cpu      usable: {} threads, f32 GEMM micro-kernel {}",
        rayon::current_num_threads(),
        scratchnet::ops::gemm::cpu_kernel_name()
    );
    let gpu_kernels = kernels::KERNELS.iter().filter(|k| !k.emu_only).count();
    out!(
        "emu      usable: {gpu_kernels} kernels of kernels/*.cu compiled as C++ (+{} emulator self-tests), run on the CPU",
        emu::kernel_count() - gpu_kernels
    );
    match cuda::probe() {
        Err(why) => out!("cuda     not usable: {why}"),
        Ok(info) => {
            out!("driver   CUDA {}.{}", info.driver_version.0, info.driver_version.1);
            if info.gpus.is_empty() {
                out!("cuda     not usable: the driver sees no GPU");
            }
            for g in &info.gpus {
                let (major, minor) = g.compute_capability;
                let state = match cuda::check(g.ordinal) {
                    Ok(_) => "usable".to_string(),
                    Err(why) => format!("not usable: {why}"),
                };
                out!(
                    "cuda:{}   {state}: {}, compute capability {major}.{minor}, {:.1} GiB",
                    g.ordinal,
                    g.name,
                    g.memory_bytes as f64 / (1u64 << 30) as f64
                );
            }
        }
    }
    if kernels::CUDA_ARCHS.is_empty() {
        out!("kernels  not compiled for the GPU: nvcc was not found at build time (scripts/setup-cuda.sh)");
    } else {
        let newest = kernels::CUDA_ARCHS.iter().max_by_key(|a| a.parse::<u32>().unwrap_or(0)).copied().unwrap_or("");
        out!(
            "kernels  {gpu_kernels} kernels, SASS for sm_{}, PTX for compute_{newest} ({:.1} MB fatbin)",
            kernels::CUDA_ARCHS.join(", sm_"),
            kernels::FATBIN.len() as f64 / 1e6
        );
    }
    Ok(())
}

fn run_selftest(a: SelftestArgs) -> Result<ExitCode> {
    let device = a.device.parse::<Device>()?;
    out!("selftest on {device}: each op against the CPU reference in f64 (relative L2 error)");
    out!("{:<38} {:<58} {:>10} {:>8}  result", "op", "case", "error", "limit");
    let checks = scratchnet::selftest::run(device, |c| {
        out!(
            "{:<38} {:<58} {:>10.2e} {:>8.0e}  {}",
            c.op,
            c.case,
            c.rel_err,
            c.tol,
            if c.passed() { "ok" } else { "FAIL" }
        );
    })?;
    let failed = checks.iter().filter(|c| !c.passed()).count();
    out!("{} checks on {device}: {} passed, {failed} failed", checks.len(), checks.len() - failed);
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
