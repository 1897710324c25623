//! `scratchnet train`: the flags turned into [`TrainOptions`] (with the files a run reads and
//! writes checked against each other first), the run, and how it is shown as it goes (a
//! progress bar on a terminal, a line every 25 steps otherwise, a line per epoch, and the
//! `--log` file). Apart from `main.rs` because it is the one command with state of its own
//! while it runs.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};

use super::args::TrainArgs;
use scratchnet::data::{DataSource, HeldOut};
use scratchnet::device::Device;
use scratchnet::ops::ExecOptions;
use scratchnet::output;
use scratchnet::report::MetricsLog;
use scratchnet::train::{EpochReport, Progress, Schedule, StepReport, TrainOptions, train};
use scratchnet::{Error, Result};

pub fn run_train(a: TrainArgs) -> Result<()> {
    let exec = a.kernels.exec_options()?;
    let data = a.data.parse::<DataSource>()?;
    let held_out = held_out(&a)?;
    refuse_overlaps(&a, &data, &held_out)?;
    let options = train_options(&a, data, held_out, exec)?;
    let log = a.log.as_deref().map(MetricsLog::create).transpose()?;
    let mut shown = Shown {
        device: options.device,
        batch_size: options.batch_size,
        live: std::io::stderr().is_terminal(),
        bar: ProgressBar::hidden(),
        log,
        last_test_accuracy: None,
        log_error: None,
    };
    train(&options, |p| shown.progress(p))?;
    shown.finish(a.save.as_deref(), a.log)
}

/// Where the held-out images come from: `--val-data`, a `--holdout` fraction in [0, 1), or
/// the source's own.
fn held_out(a: &TrainArgs) -> Result<HeldOut> {
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
    Ok(held_out)
}

/// Every file the run writes must be none of the files it reads (--save may replace the
/// --init it starts from: that file is read whole before training).
fn refuse_overlaps(a: &TrainArgs, data: &DataSource, held_out: &HeldOut) -> Result<()> {
    // (A --log named .svg is refused by the log itself, with its own reason.)
    let svg = a.log.as_ref().map(|l| l.with_extension("svg")).filter(|svg| Some(svg) != a.log.as_ref());
    let mut inputs: Vec<(&str, &Path)> = Vec::new();
    for (flag, source) in
        [("--data", Some(data)), ("--val-data", if let HeldOut::Data(d) = held_out { Some(d) } else { None })]
    {
        if let Some(DataSource::Npy(x, y)) = source {
            inputs.extend([(flag, x.as_path()), (flag, y.as_path())]);
        }
    }
    let outputs: Vec<(&str, &Path)> = [("--save", &a.save), ("--log", &a.log), ("--log's curves", &svg)]
        .into_iter()
        .filter_map(|(flag, p)| Some((flag, p.as_deref()?)))
        .collect();
    output::refuse_overlap(&outputs, &inputs)?;
    if let Some(init) = &a.init {
        output::refuse_overlap(&outputs[usize::from(a.save.is_some())..], &[("--init", init)])?;
    }
    Ok(())
}

/// The run the flags ask for.
fn train_options(a: &TrainArgs, data: DataSource, held_out: HeldOut, exec: ExecOptions) -> Result<TrainOptions> {
    Ok(TrainOptions {
        model: a.model.clone(),
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
        init: a.init.clone(),
        save: a.save.clone(),
        memory_efficient: a.memory_efficient,
        cuda_graph: a.cuda_graph,
        exec,
        ..TrainOptions::default()
    })
}

/// How a run is shown as it goes, and what it keeps for the lines at the end.
struct Shown {
    device: Device,
    batch_size: usize,
    /// Whether stderr is a terminal, which gets the progress bar.
    live: bool,
    bar: ProgressBar,
    log: Option<MetricsLog>,
    last_test_accuracy: Option<f64>,
    /// The first error writing the log: training goes on, and the command fails at the end.
    log_error: Option<Error>,
}

impl Shown {
    fn progress(&mut self, p: &Progress) {
        match p {
            Progress::Start { model, params, train_images, test_images, total_steps, .. } => {
                self.start(model, *params, *train_images, *test_images, *total_steps)
            }
            Progress::Step(r) => self.step(r),
            Progress::Epoch(r) => self.epoch(r),
        }
    }

    fn start(&mut self, model: &str, params: usize, train_images: usize, test_images: usize, total_steps: usize) {
        let plural = |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
        let images = if test_images == 0 {
            format!("{} and none held out (no evaluation)", plural(train_images, "training image", "training images"))
        } else {
            format!("{train_images} training and {}", plural(test_images, "held-out image", "held-out images"))
        };
        out!(
            "training {model} ({params} parameters) on {} with {images}, {} of {}",
            self.device,
            plural(total_steps, "step", "steps"),
            self.batch_size
        );
        if self.live {
            self.bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
            self.bar.set_length(total_steps as u64);
            self.bar.set_style(
                ProgressStyle::with_template("epoch {prefix} [{bar:28}] {pos}/{len} {msg} ({eta} left)")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
        }
    }

    fn step(&mut self, r: &StepReport) {
        let lr =
            if r.lr == 0.0 || (1e-4..1e4).contains(&r.lr) { format!("{:.4}", r.lr) } else { format!("{:.3e}", r.lr) };
        let line =
            format!("loss {:.4}  acc {:.1}%  lr {lr}  {:.0} img/s", r.loss, r.accuracy * 100.0, r.images_per_sec);
        if self.live {
            self.bar.set_prefix(r.epoch.to_string());
            self.bar.set_position(r.step as u64);
            self.bar.set_message(line);
        } else if r.step.is_multiple_of(25) || r.step == r.total_steps {
            err!("epoch {} step {}/{}  {line}", r.epoch, r.step, r.total_steps);
        }
        if let Some(l) = &mut self.log
            && let Err(e) = l.step(r)
        {
            self.log_error.get_or_insert(e);
        }
    }

    fn epoch(&mut self, r: &EpochReport) {
        let held_out = match (r.test_loss, r.test_accuracy) {
            (Some(loss), Some(acc)) => format!("held-out loss {loss:.4} acc {:.1}%", acc * 100.0),
            _ => "nothing held out".to_string(),
        };
        let scaling = match r.loss_scale {
            Some((scale, skipped)) => format!(" | loss scale {scale} ({skipped} steps skipped)"),
            None => String::new(),
        };
        self.bar.suspend(|| {
            out!(
                "epoch {}: train loss {:.4} acc {:.1}% | {held_out} | {:.0} img/s{scaling}",
                r.epoch,
                r.train_loss,
                r.train_accuracy * 100.0,
                r.images_per_sec
            )
        });
        self.last_test_accuracy = r.test_accuracy;
        if let Some(l) = &mut self.log
            && let Err(e) = l.epoch(r)
        {
            self.log_error.get_or_insert(e);
        }
    }

    /// After a run that went through: the bar cleared, then the final accuracy and where the
    /// weights and the log went (`save` and `log` as the flags gave them).
    fn finish(self, save: Option<&Path>, log: Option<PathBuf>) -> Result<()> {
        self.bar.finish_and_clear();
        if let Some(e) = self.log_error {
            return Err(e);
        }
        if let Some(acc) = self.last_test_accuracy {
            out!("final held-out accuracy: {:.1}%", acc * 100.0);
        }
        if let Some(path) = save {
            out!("weights saved to {}", path.display());
        }
        if let Some(l) = self.log {
            let svg = l.finish()?;
            out!("log written to {} and {}", log.unwrap_or_default().display(), svg.display());
        }
        Ok(())
    }
}
