//! `scratchnet profile`: where one training step of a model spends its time and its memory,
//! layer by layer; with `--eval`, where its inference (an eval forward pass) spends its time.
//!
//! A few warm-up steps run first (the autotuner picks its kernels, the allocator fills its
//! cache); then each profiled step runs on a profiled graph ([`Graph::start_profile`]), which
//! marks the end of every layer's forward and backward in the device's queue. Per layer and
//! direction the median over the profiled steps is reported with its share of the step, the
//! GFLOP/s and GB/s it reached (work counted as `scratchnet bench` counts it), what bounds it
//! on this device's measured roofline, and the memory it keeps alive for backward; then the
//! same grouped by op, the step's totals and its peak device memory. `--trace` writes the last
//! profiled step as a Chrome trace (Perfetto, chrome://tracing).
//!
//! What a profiled graph records, and how, is [`crate::autograd::profile`]; this module runs
//! the steps and makes the report from their records.

use std::path::Path;
use std::sync::Arc;

use serde_json::{Value, json};

use crate::autograd::profile::{Stamp, StepProfile, nvtx, stream_regions};
use crate::autograd::{Graph, LayerOp, LayerRecord, Var};
use crate::bench::{self, BenchOptions, Ceilings, Problem};
use crate::device::cpu::on_cpu_workers;
use crate::device::{Device, GpuDevice};
use crate::error::{Error, Result};
use crate::models;
use crate::nn::Sgd;
use crate::ops::ExecOptions;
use crate::tensor::{Shape, Tensor};

#[derive(Clone, Debug)]
pub struct ProfileOptions {
    pub model: String,
    pub device: Device,
    /// AlexNet's towers on these two devices (`--towers --devices A,B`), the first being
    /// `device`; empty for one device.
    pub devices: Vec<Device>,
    pub batch: usize,
    /// `[C, H, W]`; the model's own size when `None`.
    pub input: Option<[usize; 3]>,
    pub num_classes: usize,
    /// Profiled steps (the median of each figure is reported).
    pub steps: usize,
    pub warmup: usize,
    /// DenseNet's memory-efficient mode.
    pub memory_efficient: bool,
    /// The kernels the profiled graphs run.
    pub exec: ExecOptions,
    /// Profile the forward pass in eval mode (running statistics, weights kept packed, no
    /// loss, backward or optimizer) instead of a training step.
    pub eval: bool,
}

/// One layer in one direction.
#[derive(Clone, Debug)]
pub struct LayerRow {
    pub name: String,
    pub kind: &'static str,
    pub backward: bool,
    pub ms: f64,
    pub flops: f64,
    pub bytes: f64,
    /// Memory kept alive for backward (on the forward row).
    pub kept_bytes: usize,
}

pub struct ProfileReport {
    pub model: String,
    /// An eval forward pass rather than a training step.
    pub eval: bool,
    pub device: Device,
    /// The precision of the convolutions and linear layers (`--precision`).
    pub precision: crate::ops::Precision,
    pub batch: usize,
    pub input: [usize; 3],
    pub rows: Vec<LayerRow>,
    pub loss_ms: f64,
    pub loss_kept_bytes: usize,
    pub optimizer_ms: f64,
    pub step_ms: f64,
    /// Peak device memory during a profiled step (GPU devices).
    pub peak_bytes: Option<usize>,
    pub ceilings: Ceilings,
    /// The last profiled step, for the trace.
    pub last: StepProfile,
    pub last_optimizer: (f64, f64),
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

const MIB: f64 = (1u64 << 20) as f64;

/// Runs the warm-up and profiled steps and makes the report: the median of each figure over
/// the profiled steps, against the device's measured ceilings.
pub fn profile(o: &ProfileOptions) -> Result<ProfileReport> {
    check_options(o)?;
    let Setup { mut model, input, x, y } = prepare(o)?;
    let gpu = o.device.gpu()?;
    let (mut steps, peak) = run_steps(model.as_mut(), o, (&x, &y), gpu.as_ref())?;
    let Some(last) = steps.pop() else {
        return Err(Error::argument("profile", "no step was profiled"));
    };
    // The medians over every profiled step, the last one included.
    let all: Vec<&ProfiledStep> = steps.iter().chain(std::iter::once(&last)).collect();
    let rows = layer_rows(&all, &last.profile, o.batch, o.eval);
    let loss_ms = median(all.iter().map(|s| s.profile.loss_forward_ms + s.profile.loss_backward_ms).collect());
    let optimizer_ms = median(all.iter().map(|s| s.optimizer_ms).collect());
    let step_ms = median(
        all.iter().map(|s| s.profile.forward_total_ms() + s.profile.backward_total_ms() + s.optimizer_ms).collect(),
    );
    let mut bench_opts = BenchOptions::new(o.device);
    bench_opts.repeats = Some(3);
    let ceilings = bench::measure_ceilings(&bench_opts)?;
    Ok(ProfileReport {
        model: o.model.clone(),
        eval: o.eval,
        device: o.device,
        precision: o.exec.precision,
        batch: o.batch,
        input,
        rows,
        loss_ms,
        loss_kept_bytes: last.profile.loss_kept_bytes,
        optimizer_ms,
        step_ms,
        peak_bytes: gpu.is_some().then_some(peak),
        ceilings,
        last_optimizer: (last.optimizer_start_ms, last.optimizer_ms),
        last: last.profile,
    })
}

/// Refuses a model, step count or batch size the command cannot run, before building anything.
fn check_options(o: &ProfileOptions) -> Result<()> {
    models::check_name(&o.model)?;
    if !o.devices.is_empty() && (!o.exec.towers || o.devices.len() != 2) {
        return Err(Error::argument(
            "profile",
            "--devices profiles AlexNet's towers on two devices: --model alexnet --towers --devices A,B",
        ));
    }
    if o.steps == 0 || o.steps > 1000 {
        return Err(Error::argument("profile", format!("--steps must be between 1 and 1000, got {}", o.steps)));
    }
    if o.batch < 2 || o.batch > 4096 {
        return Err(Error::argument(
            "profile",
            format!(
                "--batch-size must be between 2 and 4096 (batch norm trains on more than one image), got {}",
                o.batch
            ),
        ));
    }
    Ok(())
}

/// What the steps run: the model on the device, its input size `[C, H, W]`, and one batch of
/// images `x` and labels `y`.
struct Setup {
    model: Box<dyn models::Model>,
    input: [usize; 3],
    x: Tensor,
    y: Tensor,
}

/// Builds the model and the batch.
fn prepare(o: &ProfileOptions) -> Result<Setup> {
    let mut model = models::build(&o.model, o.num_classes, 0)?;
    crate::train::set_memory_efficient(model.as_mut(), o.memory_efficient)?;
    let input = o.input.unwrap_or(model.input_size());
    let [c, h, w] = input;
    model.check_input(&[o.batch, c, h, w].into())?;
    model.to_device(o.device)?;
    if let [a, b] = o.devices[..] {
        model = model.split_towers([a, b])?;
    }
    let x = bench::problems::pattern(Shape::new([o.batch, c, h, w]), 1, o.device)?;
    let labels: Vec<i64> = (0..o.batch).map(|i| (i % o.num_classes) as i64).collect();
    let y = Tensor::from_vec([o.batch], labels)?.to_device(o.device)?;
    Ok(Setup { model, input, x, y })
}

/// One profiled step: what its graph recorded, and the optimizer's time and start (ms from
/// the step's start).
struct ProfiledStep {
    profile: StepProfile,
    optimizer_ms: f64,
    optimizer_start_ms: f64,
}

/// The warm-up steps, then the profiled ones; returns the profiled steps in order and the
/// highest device memory seen at the end of any step, warm-up included (GPU devices; 0 on the
/// CPU).
fn run_steps(
    model: &mut dyn models::Model,
    o: &ProfileOptions,
    batch: (&Tensor, &Tensor),
    gpu: Option<&Arc<GpuDevice>>,
) -> Result<(Vec<ProfiledStep>, usize)> {
    let mut opt = Sgd::new(1e-4, 0.9, 5e-4);
    let mut steps = Vec::new();
    let mut peak = 0usize;
    for i in 0..o.warmup + o.steps {
        let profiled = i >= o.warmup;
        steps.extend(run_step(model, &mut opt, o, batch, gpu, profiled, &mut peak)?);
    }
    Ok((steps, peak))
}

/// One training step, on a profiled graph when `profiled` (`None` for a warm-up step); raises
/// `peak` to the device memory it reached.
fn run_step(
    model: &mut dyn models::Model,
    opt: &mut Sgd,
    o: &ProfileOptions,
    (x, y): (&Tensor, &Tensor),
    gpu: Option<&Arc<GpuDevice>>,
    profiled: bool,
    peak: &mut usize,
) -> Result<Option<ProfiledStep>> {
    if let (true, Some(gpu)) = (profiled, gpu) {
        gpu.synchronize()?;
        gpu.reset_peak();
    }
    let mut g = if o.eval { Graph::eval() } else { Graph::new() }.with_options(o.exec);
    if profiled {
        g.start_profile(o.device)?;
    }
    if o.eval {
        // As `infer` and the inference bench run it (see `on_cpu_workers`).
        on_cpu_workers(o.device, || model.forward(&mut g, &Var::constant(x.clone())))?;
        let profile = g.finish_profile()?;
        if let Some(gpu) = gpu {
            gpu.synchronize()?;
            *peak = (*peak).max(gpu.memory_stats().peak);
        }
        return Ok(profile.map(|profile| ProfiledStep { profile, optimizer_ms: 0.0, optimizer_start_ms: 0.0 }));
    }
    let logits = model.forward(&mut g, &Var::constant(x.clone()))?;
    let loss = g.cross_entropy(&logits, y)?;
    let mut grads = g.backward(&loss)?;
    let step_profile = grads.take_profile();
    let before_opt = Stamp::now(gpu)?;
    if profiled {
        nvtx::push("optimizer");
    }
    grads.accumulate_into(model.params_mut())?;
    opt.step(model.params_mut())?;
    let after_opt = Stamp::now(gpu)?;
    if profiled {
        nvtx::pop();
    }
    if let Some(gpu) = gpu {
        gpu.synchronize()?;
        *peak = (*peak).max(gpu.memory_stats().peak);
    }
    let Some(profile) = step_profile else {
        return Ok(None);
    };
    let optimizer_ms = after_opt.ms_since(&before_opt)?;
    let optimizer_start_ms = profile.forward_total_ms() + profile.backward_total_ms();
    Ok(Some(ProfiledStep { profile, optimizer_ms, optimizer_start_ms }))
}

/// A forward and a backward row per layer of `last`: the median time over `all` steps, and
/// the work `scratchnet bench` counts for the layer.
fn layer_rows(all: &[&ProfiledStep], last: &StepProfile, batch: usize, eval: bool) -> Vec<LayerRow> {
    let mut rows = Vec::new();
    for (k, layer) in last.layers.iter().enumerate() {
        let problems = bench::problems_of_layer(layer, batch, k == 0);
        let (fwd, bwd): (Vec<&Problem>, Vec<&Problem>) =
            problems.iter().partition(|p| p.spec()["pass"].as_str() == Some("forward"));
        // A batch norm folded into its convolution does its work in the convolution's row.
        let folded = matches!(layer.op, LayerOp::BatchNorm { folded: true, .. });
        // A copy between devices reads the activation on one device and writes it on the other
        // (its gradient the same way back): its bytes, no arithmetic.
        let copied = matches!(layer.op, LayerOp::Exchange { .. }).then(|| 2.0 * 4.0 * layer.output.numel() as f64);
        let work = |ps: &[&Problem]| match (folded, copied) {
            (_, Some(bytes)) => (0.0, bytes),
            (true, None) => (0.0, 0.0),
            (false, None) => (ps.iter().map(|p| p.flops()).sum(), ps.iter().map(|p| p.bytes()).sum()),
        };
        let passes = if eval { vec![(false, fwd)] } else { vec![(false, fwd), (true, bwd)] };
        for (backward, ps) in passes {
            let profiles = all.iter().map(|s| &s.profile);
            let times = profiles.filter_map(|s| if backward { s.backward_ms.get(k) } else { s.forward_ms.get(k) });
            let (flops, bytes) = work(&ps);
            rows.push(LayerRow {
                name: layer.name.clone(),
                kind: layer.kind,
                backward,
                ms: median(times.copied().collect()),
                flops,
                bytes,
                kept_bytes: if backward { 0 } else { last.kept_bytes[k] },
            });
        }
    }
    rows
}

impl ProfileReport {
    /// Milliseconds per op kind and direction, largest first.
    pub fn by_op(&self) -> Vec<(String, usize, f64)> {
        let mut groups: Vec<(String, usize, f64)> = Vec::new();
        for r in &self.rows {
            let key = format!("{} {}", r.kind, if r.backward { "backward" } else { "forward" });
            match groups.iter_mut().find(|g| g.0 == key) {
                Some(g) => {
                    g.1 += 1;
                    g.2 += r.ms;
                }
                None => groups.push((key, 1, r.ms)),
            }
        }
        groups.sort_by(|a, b| b.2.total_cmp(&a.2));
        groups
    }

    pub fn kept_total(&self) -> usize {
        self.rows.iter().map(|r| r.kept_bytes).sum::<usize>() + self.loss_kept_bytes
    }

    /// The last profiled step as a Chrome trace: one complete event per layer and direction.
    pub fn chrome_trace(&self) -> Value {
        let p = &self.last;
        let mut events = vec![
            json!({"ph": "M", "pid": 1, "name": "process_name",
                   "args": {"name": format!("scratchnet {} on {}, batch {}", self.model, self.device, self.batch)}}),
            json!({"ph": "M", "pid": 1, "tid": 1, "name": "thread_name", "args": {"name": format!("{} queue", self.device)}}),
        ];
        let us = |ms: f64| (ms * 1e3 * 1000.0).round() / 1000.0;
        let mut push = |name: &str, cat: &str, start: f64, dur: f64, tid: usize, args: Value| {
            let event = if cat == "meta" {
                json!({"ph": "M", "pid": 1, "tid": tid, "name": "thread_name", "args": {"name": name}})
            } else {
                json!({"name": name, "cat": cat, "ph": "X", "pid": 1, "tid": tid,
                       "ts": us(start), "dur": us(dur), "args": args})
            };
            events.push(event);
        };
        // Each layer on the track of the device its output lives on: the first device's queue
        // (tid 1), then one track per other device (AlexNet's towers on two devices, where
        // each copy between them sits on the receiving device's track).
        let mut device_tracks: Vec<Device> = vec![self.device];
        for (k, l) in p.layers.iter().enumerate() {
            let tid = match device_tracks.iter().position(|d| *d == l.device) {
                Some(0) => 1,
                Some(i) => 10 + i,
                None => {
                    device_tracks.push(l.device);
                    let tid = 10 + device_tracks.len() - 1;
                    // A track's name is a metadata event ("meta" to `push`).
                    push(&format!("{} queue", l.device), "meta", 0.0, 0.0, tid, Value::Null);
                    tid
                }
            };
            let args = json!({"op": l.kind, "input": l.input.to_string(), "output": l.output.to_string(),
                              "kept_mib": p.kept_bytes[k] as f64 / MIB, "device": l.device.to_string()});
            push(&l.name, "forward", p.forward_start_ms[k], p.forward_ms[k], tid, args.clone());
            if !self.eval {
                let (start, ms) = (p.backward_start_ms[k], p.backward_ms[k]);
                push(&format!("{} (backward)", l.name), "backward", start, ms, tid, args);
            }
        }
        if self.eval {
            return json!({"traceEvents": events, "displayTimeUnit": "ms"});
        }
        let loss_start = p.forward_ms.iter().sum::<f64>();
        push("loss", "forward", loss_start, p.loss_forward_ms, 1, json!({}));
        push("loss (backward)", "backward", p.loss_backward_start_ms, p.loss_backward_ms, 1, json!({}));
        let (opt_start, opt_ms) = self.last_optimizer;
        push("optimizer", "optimizer", opt_start, opt_ms, 1, json!({}));
        // Side streams (towers) on tracks of their own, below the main queue.
        let mut named = std::collections::BTreeSet::new();
        for span in &p.streams {
            let tid = 1 + span.stream;
            if named.insert(tid) {
                events.push(json!({"ph": "M", "pid": 1, "tid": tid, "name": "thread_name",
                                   "args": {"name": format!("side stream {}", span.stream)}}));
            }
            events.push(json!({"name": format!("{} · tower {}", span.label, span.stream - 1), "cat": "tower",
                               "ph": "X", "pid": 1, "tid": tid, "ts": us(span.start_ms), "dur": us(span.ms),
                               "args": {"stream": span.stream}}));
        }
        json!({"traceEvents": events, "displayTimeUnit": "ms"})
    }

    pub fn write_trace(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string(&self.chrome_trace())
            .map_err(|e| Error::argument("profile", format!("cannot write the trace: {e}")))?;
        crate::output::write_atomically(path, text.as_bytes())
    }
}

impl std::fmt::Display for ProfileReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let [c, h, w] = self.input;
        writeln!(
            f,
            "{} on {} in {}, batch {} of {c}×{h}×{w}: {} {:.3} ms ({:.1} images/s); ceilings: copy {:.1} GB/s, SGEMM {:.1} GFLOP/s",
            self.model,
            self.device,
            self.precision,
            self.batch,
            if self.eval { "eval forward" } else { "step" },
            self.step_ms,
            self.batch as f64 / (self.step_ms / 1e3),
            self.ceilings.copy_gbs,
            self.ceilings.gemm_gflops
        )?;
        let width = self.rows.iter().map(|r| r.name.len()).max().unwrap_or(5).max(5);
        writeln!(
            f,
            "{:<width$}  {:<18} {:<4} {:>9} {:>6} {:>9} {:>8} {:>6}  {:<7} {:>9}",
            "layer", "op", "pass", "ms", "share", "GFLOP/s", "GB/s", "roof", "bound", "kept MiB"
        )?;
        let share = |ms: f64| 100.0 * ms / self.step_ms;
        for r in &self.rows {
            let (fraction, bound) = self.ceilings.roofline(r.flops, r.bytes, r.ms / 1e3);
            let rate = |work: f64| if r.ms > 0.0 { work / (r.ms * 1e6) } else { 0.0 };
            let kept =
                if r.backward || self.eval { String::new() } else { format!("{:.1}", r.kept_bytes as f64 / MIB) };
            writeln!(
                f,
                "{:<width$}  {:<18} {:<4} {:>9.3} {:>5.1}% {:>9.1} {:>8.1} {:>5.0}%  {:<7} {:>9}",
                r.name,
                r.kind,
                if r.backward { "bwd" } else { "fwd" },
                r.ms,
                share(r.ms),
                rate(r.flops),
                rate(r.bytes),
                100.0 * fraction,
                bound,
                kept
            )?;
        }
        if self.eval {
            writeln!(f, "by op:")?;
            for (op, n, ms) in self.by_op() {
                writeln!(f, "  {op:<30} {n:>4} layers {ms:>10.3} ms {:>5.1}%", share(ms))?;
            }
            return Ok(());
        }
        writeln!(
            f,
            "{:<width$}  {:<18} {:<4} {:>9.3} {:>5.1}%",
            "loss",
            "CrossEntropy",
            "both",
            self.loss_ms,
            share(self.loss_ms)
        )?;
        writeln!(
            f,
            "{:<width$}  {:<18} {:<4} {:>9.3} {:>5.1}%",
            "optimizer",
            "SGD",
            "",
            self.optimizer_ms,
            share(self.optimizer_ms)
        )?;
        writeln!(f, "by op:")?;
        for (op, n, ms) in self.by_op() {
            writeln!(f, "  {op:<30} {n:>4} layers {ms:>10.3} ms {:>5.1}%", share(ms))?;
        }
        write!(f, "memory kept for backward: {:.1} MiB", self.kept_total() as f64 / MIB)?;
        match self.peak_bytes {
            Some(peak) => writeln!(
                f,
                "; step peak {:.1} MiB of device memory (parameters, gradients and optimizer state included)",
                peak as f64 / MIB
            ),
            None => writeln!(f, " (the CPU's peak is not tracked)"),
        }?;
        let regions = stream_regions(&self.last.streams);
        if !regions.is_empty() {
            writeln!(f, "side streams (towers) in the last step, each stream's time and the whole's:")?;
        }
        for (label, busy, wall) in regions {
            let each: Vec<String> = busy.iter().map(|ms| format!("{ms:.3}")).collect();
            let side_by_side = (busy.iter().sum::<f64>() - wall).max(0.0);
            writeln!(f, "  {label:<30} {} ms in {wall:.3} ms: {side_by_side:.3} ms side by side", each.join(" + "))?;
        }
        if !nvtx::available() {
            writeln!(f, "(NVTX ranges off: no libnvtx3interop.so.1 or libnvToolsExt.so.1 found)")?;
        }
        Ok(())
    }
}

/// The layers a profiled step recorded (for tests).
pub fn layers(report: &ProfileReport) -> &[LayerRecord] {
    &report.last.layers
}
