//! The `scratchnet` command line.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use scratchnet::data::DataSource;
use scratchnet::device::Device;
use scratchnet::train::{Progress, TrainOptions, train};

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
    /// What is usable on this machine, and why not.
    Devices,
    /// Every op and its gradient on a device against the CPU reference.
    Selftest(SelftestArgs),
}

#[derive(Args)]
struct SelftestArgs {
    /// Device to test: cpu, emu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
}

#[derive(Args)]
struct TrainArgs {
    /// Model name: resnet20, resnet32, resnet44, resnet56, resnet110.
    #[arg(long, default_value = "resnet20")]
    model: String,
    /// Data source: synthetic.
    #[arg(long, default_value = "synthetic")]
    data: String,
    /// Device: auto (cuda:0 if usable, else cpu), cpu, emu, cuda or cuda:N.
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
    /// Peak learning rate (linear warm-up, then cosine decay to zero).
    #[arg(long, default_value_t = 0.1, allow_negative_numbers = true)]
    lr: f64,
    #[arg(long, default_value_t = 0.9, allow_negative_numbers = true)]
    momentum: f64,
    #[arg(long, default_value_t = 5e-4, allow_negative_numbers = true)]
    weight_decay: f64,
    /// Turn off random crops and flips.
    #[arg(long)]
    no_augment: bool,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Classifier outputs (default: the data set's number of classes).
    #[arg(long)]
    num_classes: Option<usize>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Train(args) => run_train(args).map(|()| ExitCode::SUCCESS),
        Command::Devices => run_devices().map(|()| ExitCode::SUCCESS),
        Command::Selftest(args) => run_selftest(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

fn run_devices() -> scratchnet::Result<()> {
    use scratchnet::device::{cuda, emu, kernels};
    println!(
        "cpu      usable: {} threads, f32 GEMM micro-kernel {}",
        rayon::current_num_threads(),
        scratchnet::ops::gemm::cpu_kernel_name()
    );
    let gpu_kernels = kernels::KERNELS.iter().filter(|k| !k.emu_only).count();
    println!(
        "emu      usable: {gpu_kernels} kernels of kernels/*.cu compiled as C++ (+{} emulator self-tests), run on the CPU",
        emu::kernel_count() - gpu_kernels
    );
    match cuda::probe() {
        Err(why) => println!("cuda     not usable: {why}"),
        Ok(info) => {
            println!("driver   CUDA {}.{}", info.driver_version.0, info.driver_version.1);
            if info.gpus.is_empty() {
                println!("cuda     not usable: the driver sees no GPU");
            }
            for g in &info.gpus {
                let (major, minor) = g.compute_capability;
                let state = match cuda::check(g.ordinal) {
                    Ok(_) => "usable".to_string(),
                    Err(why) => format!("not usable: {why}"),
                };
                println!(
                    "cuda:{}   {state}: {}, compute capability {major}.{minor}, {:.1} GiB",
                    g.ordinal,
                    g.name,
                    g.memory_bytes as f64 / (1u64 << 30) as f64
                );
            }
        }
    }
    if kernels::CUDA_ARCHS.is_empty() {
        println!("kernels  not compiled for the GPU: nvcc was not found at build time (scripts/setup-cuda.sh)");
    } else {
        let newest = kernels::CUDA_ARCHS.iter().max_by_key(|a| a.parse::<u32>().unwrap_or(0)).copied().unwrap_or("");
        println!(
            "kernels  {gpu_kernels} kernels, SASS for sm_{}, PTX for compute_{newest} ({:.1} MB fatbin)",
            kernels::CUDA_ARCHS.join(", sm_"),
            kernels::FATBIN.len() as f64 / 1e6
        );
    }
    Ok(())
}

fn run_selftest(a: SelftestArgs) -> scratchnet::Result<ExitCode> {
    let device = a.device.parse::<Device>()?;
    println!("selftest on {device}: each op against the CPU reference in f64 (relative L2 error)");
    println!("{:<38} {:<58} {:>10} {:>8}  result", "op", "case", "error", "limit");
    let checks = scratchnet::selftest::run(device, |c| {
        println!(
            "{:<38} {:<58} {:>10.2e} {:>8.0e}  {}",
            c.op,
            c.case,
            c.rel_err,
            c.tol,
            if c.passed() { "ok" } else { "FAIL" }
        );
    })?;
    let failed = checks.iter().filter(|c| !c.passed()).count();
    println!("{} checks on {device}: {} passed, {failed} failed", checks.len(), checks.len() - failed);
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn run_train(a: TrainArgs) -> scratchnet::Result<()> {
    let options = TrainOptions {
        model: a.model,
        data: a.data.parse::<DataSource>()?,
        device: a.device.parse::<Device>()?,
        epochs: a.epochs,
        steps: a.steps,
        batch_size: a.batch_size,
        lr: a.lr,
        momentum: a.momentum,
        weight_decay: a.weight_decay,
        augment: !a.no_augment,
        seed: a.seed,
        num_classes: a.num_classes,
        ..TrainOptions::default()
    };
    let live = std::io::stderr().is_terminal();
    let mut last_test_accuracy = None;
    train(&options, |p| match p {
        Progress::Start { model, params, train_images, test_images, total_steps } => {
            println!(
                "training {model} ({params} parameters) on {} with {train_images} training and {test_images} held-out images, {total_steps} steps of {}",
                options.device, options.batch_size
            );
        }
        Progress::Step { step, total_steps, epoch, loss, accuracy, lr, images_per_sec } => {
            let line = format!(
                "epoch {epoch} step {step}/{total_steps}  loss {loss:.4}  acc {:.1}%  lr {lr:.4}  {images_per_sec:.0} img/s",
                accuracy * 100.0
            );
            if live {
                eprint!("\r{line}   ");
                let _ = std::io::stderr().flush();
            } else if step % 25 == 0 || step == total_steps {
                eprintln!("{line}");
            }
        }
        Progress::Epoch(r) => {
            if live {
                eprintln!();
            }
            println!(
                "epoch {}: train loss {:.4} acc {:.1}% | held-out loss {:.4} acc {:.1}% | {:.0} img/s",
                r.epoch,
                r.train_loss,
                r.train_accuracy * 100.0,
                r.test_loss,
                r.test_accuracy * 100.0,
                r.images_per_sec
            );
            last_test_accuracy = Some(r.test_accuracy);
        }
    })?;
    if let Some(acc) = last_test_accuracy {
        println!("final held-out accuracy: {:.1}%", acc * 100.0);
    }
    Ok(())
}
