//! `scratchnet train`: the flags turned into [`TrainOptions`] (with the files a run reads and
//! writes checked against each other first), the run, and how it is shown as it goes (a
//! progress bar on a terminal, a line every 25 steps otherwise, a line per epoch, and the
//! `--log` file). Apart from `main.rs` because it is the one command with state of its own
//! while it runs.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};

use super::args::{MultiDeviceArgs, TrainArgs};
use scratchnet::data::{DataSource, HeldOut};
use scratchnet::device::Device;
use scratchnet::ops::ExecOptions;
use scratchnet::output;
use scratchnet::report::MetricsLog;
use scratchnet::train::{EpochReport, MultiDevice, ProcessGroup, Progress, Schedule, StepReport, TrainOptions, train};
use scratchnet::{Error, Result};

pub fn run_train(a: TrainArgs) -> Result<()> {
    let exec = a.kernels.exec_options()?;
    let data = a.data.parse::<DataSource>()?;
    let held_out = held_out(&a)?;
    refuse_overlaps(&a, &data, &held_out)?;
    let options = train_options(&a, data, held_out, exec)?;
    let log = a.log.as_deref().map(MetricsLog::create).transpose()?;
    let mut shown = Shown {
        device: match (&options.multi.devices[..], &options.multi.process_group) {
            ([], None) => options.device.to_string(),
            ([], Some(g)) => format!("{} (rank {} of {}, data-parallel)", options.device, g.rank, g.world_size),
            (devices, _) => {
                let names: Vec<String> = devices.iter().map(Device::to_string).collect();
                let how = match (options.multi.data_parallel, options.multi.sync_bn) {
                    (false, _) => "AlexNet's towers",
                    (true, false) => "data-parallel",
                    (true, true) => "data-parallel, sync-bn",
                };
                format!("{} ({how})", names.join(","))
            }
        },
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

/// How the flags spread the run over devices: `--devices` (whose first is then the device),
/// `--data-parallel`, `--sync-bn`, `--bucket-mb`, and `--rank`/`--world-size` (or torchrun's
/// `RANK` and `WORLD_SIZE`).
fn multi_device(a: &MultiDeviceArgs) -> Result<MultiDevice> {
    let devices = a.devices.as_deref().map(Device::parse_list).transpose()?.unwrap_or_default();
    let from_env = |flag: Option<usize>, var: &str| -> Result<Option<usize>> {
        match (flag, std::env::var(var)) {
            (Some(v), _) => Ok(Some(v)),
            (None, Ok(text)) => text
                .trim()
                .parse::<usize>()
                .map(Some)
                .map_err(|_| Error::argument("train", format!("${var} is '{text}', not a number"))),
            (None, Err(_)) => Ok(None),
        }
    };
    let process_group = match (from_env(a.rank, "RANK")?, from_env(a.world_size, "WORLD_SIZE")?) {
        (Some(rank), Some(world_size)) if world_size > 1 || a.rank.is_some() || a.world_size.is_some() => {
            let nccl_id = a.nccl_id.clone().or_else(|| std::env::var_os("SCRATCHNET_NCCL_ID_FILE").map(PathBuf::from));
            Some(ProcessGroup { rank, world_size, nccl_id })
        }
        (Some(_), None) if a.rank.is_some() => {
            return Err(Error::argument("train", "--rank needs --world-size (or $WORLD_SIZE)"));
        }
        (None, Some(_)) if a.world_size.is_some() => {
            return Err(Error::argument("train", "--world-size needs --rank (or $RANK)"));
        }
        _ => None,
    };
    if !(a.bucket_mb.is_finite() && a.bucket_mb > 0.0) {
        return Err(Error::argument("train", format!("--bucket-mb must be above 0, got {}", a.bucket_mb)));
    }
    let bucket_bytes = ((a.bucket_mb * (1 << 20) as f64) as usize).max(1);
    Ok(MultiDevice { devices, data_parallel: a.data_parallel, sync_bn: a.sync_bn, bucket_bytes, process_group })
}

/// The run the flags ask for.
fn train_options(a: &TrainArgs, data: DataSource, held_out: HeldOut, exec: ExecOptions) -> Result<TrainOptions> {
    let multi = multi_device(&a.multi)?;
    let device = match multi.devices.first() {
        Some(&first) => first,
        None => a.device.parse::<Device>()?,
    };
    Ok(TrainOptions {
        model: a.model.clone(),
        data,
        held_out,
        device,
        multi,
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
    /// The device, or the devices, as the first line names them.
    device: String,
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
