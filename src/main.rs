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
    /// Train a model (defaults: ResNet-20 on the built-in synthetic shapes, on the CPU).
    Train(TrainArgs),
}

#[derive(Args)]
struct TrainArgs {
    /// Model name: resnet20, resnet32, resnet44, resnet56, resnet110.
    #[arg(long, default_value = "resnet20")]
    model: String,
    /// Data source: synthetic.
    #[arg(long, default_value = "synthetic")]
    data: String,
    /// Device: auto or cpu.
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
        Command::Train(args) => run_train(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
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
        Progress::Start {
            model,
            params,
            train_images,
            test_images,
            total_steps,
        } => {
            println!(
                "training {model} ({params} parameters) on {} with {train_images} training and {test_images} held-out images, {total_steps} steps of {}",
                options.device, options.batch_size
            );
        }
        Progress::Step {
            step,
            total_steps,
            epoch,
            loss,
            accuracy,
            lr,
            images_per_sec,
        } => {
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
