//! `scratchnet bench`: every op at the layer shapes of the real networks, timed on one device,
//! each against the roofline the device itself measures.
//!
//! A run has three steps:
//! 1. **Ceilings.** A large device-to-device copy gives the memory bandwidth; the engine's own
//!    SGEMM on a large square matrix gives the compute rate. Datasheet figures would flatter
//!    or insult the kernels; these are what this device does for this engine.
//! 2. **Problems.** The network suites run one image through the model on the CPU with layer
//!    tracing on, and turn each layer into the problems a training step runs (a convolution
//!    into forward, data gradient and filter gradient), at the bench's batch size. Layers of
//!    the same shape are timed once and counted. The `memory` and `gemm` suites are large
//!    synthetic problems: tensors of hundreds of megabytes, a 4096³ product.
//! 3. **Timing.** Each problem runs a few times to warm up (the autotuner chooses its kernels
//!    then), then at least `repeats` times and at least a few milliseconds in all; the median
//!    counts. On a GPU the device's own events time the queue; on the CPU, the host clock.
//!
//! Each row reports the median, GFLOP/s, GB/s and the fraction of the roofline: the time the
//! ceilings allow (the larger of flops over the GEMM rate and bytes over the copy bandwidth)
//! over the time measured. `--json` writes the rows with a machine-readable spec of each
//! problem, as JSON lines, each as soon as it is measured ([`jsonl`]);
//! `scripts/torch_baseline.py` reads them to time the same problems in PyTorch, and
//! [`compare`] sets the two side by side.

pub mod compare;
pub mod jsonl;
pub mod kernel;
pub mod problems;
pub mod roofline;

use std::time::Instant;

use serde_json::{Value, json};

use crate::autograd::{Graph, LayerOp, LayerRecord, Var};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::models;
use crate::ops::ExecOptions;
use crate::ops::pool::Pool2dParams;
use crate::tensor::{DType, Shape, Tensor};
pub use problems::{Pass, Problem, TrainStep, Variant};

/// A group of problems, named on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Suite {
    AlexNet,
    ResNet18,
    ResNet50,
    DenseNet121,
    /// The memory-bound ops on large tensors.
    Memory,
    /// Large square SGEMM and the fully connected layers' products.
    Gemm,
}

impl Suite {
    pub const ALL: [Suite; 6] =
        [Suite::AlexNet, Suite::ResNet18, Suite::ResNet50, Suite::DenseNet121, Suite::Memory, Suite::Gemm];

    pub fn name(self) -> &'static str {
        match self {
            Suite::AlexNet => "alexnet",
            Suite::ResNet18 => "resnet18",
            Suite::ResNet50 => "resnet50",
            Suite::DenseNet121 => "densenet121",
            Suite::Memory => "memory",
            Suite::Gemm => "gemm",
        }
    }

    /// Parses a comma-separated list (`all` for every suite).
    pub fn parse_list(text: &str) -> Result<Vec<Suite>> {
        if text == "all" {
            return Ok(Suite::ALL.to_vec());
        }
        let mut suites = Vec::new();
        for name in text.split(',').map(str::trim) {
            let suite = Suite::ALL.into_iter().find(|s| s.name() == name).ok_or_else(|| {
                let names: Vec<&str> = Suite::ALL.iter().map(|s| s.name()).collect();
                Error::argument("bench", format!("unknown suite '{name}' (expected all or {})", names.join(", ")))
            })?;
            if !suites.contains(&suite) {
                suites.push(suite);
            }
        }
        Ok(suites)
    }
}

/// What to run and how long.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    pub device: Device,
    pub suites: Vec<Suite>,
    /// Images per batch of the network suites (default: 64 on cuda, 2 on cpu, 1 on emu).
    pub batch: Option<usize>,
    /// Megabytes per tensor of the memory suite and of the copy ceiling (default: 256 on
    /// cuda, 64 on cpu, 1 on emu).
    pub size_mb: Option<usize>,
    /// Side of the square SGEMM (default: 4096 on cuda, 1024 on cpu, 64 on emu).
    pub gemm_size: Option<usize>,
    /// Keep only problems whose label contains this text.
    pub filter: Option<String>,
    /// Time every kernel variant, not only the engine's default.
    pub all_variants: bool,
    /// Timed runs at least (default: 10 on cuda, 3 elsewhere).
    pub repeats: Option<usize>,
    /// Time a whole training step of each network suite.
    pub train_steps: bool,
    /// The kernels the default variant runs (`--conv-algo`, `--towers`, `--no-fuse`).
    pub exec: ExecOptions,
}

impl BenchOptions {
    pub fn new(device: Device) -> BenchOptions {
        BenchOptions {
            device,
            suites: Suite::ALL.to_vec(),
            batch: None,
            size_mb: None,
            gemm_size: None,
            filter: None,
            all_variants: false,
            repeats: None,
            train_steps: true,
            exec: ExecOptions::default(),
        }
    }

    fn by_device<T>(&self, cuda: T, cpu: T, emu: T) -> T {
        match self.device {
            Device::Cuda(_) => cuda,
            Device::Cpu => cpu,
            Device::Emu => emu,
        }
    }

    pub fn batch(&self) -> usize {
        self.batch.unwrap_or(self.by_device(64, 2, 1))
    }

    fn size_bytes(&self) -> usize {
        self.size_mb.unwrap_or(self.by_device(256, 64, 1)) << 20
    }

    fn gemm_size(&self) -> usize {
        self.gemm_size.unwrap_or(self.by_device(4096, 1024, 64))
    }

    fn repeats(&self) -> usize {
        self.repeats.unwrap_or(self.by_device(10, 3, 1))
    }

    fn check(&self) -> Result<()> {
        let bad = |what: String| Err(Error::argument("bench", what));
        if self.batch == Some(0) || self.batch.is_some_and(|b| b > 4096) {
            return bad(format!("--batch must be between 1 and 4096, got {}", self.batch.unwrap_or(0)));
        }
        if self.size_mb == Some(0) || self.size_mb.is_some_and(|s| s > 16384) {
            return bad(format!("--size-mb must be between 1 and 16384, got {}", self.size_mb.unwrap_or(0)));
        }
        if self.gemm_size == Some(0) || self.gemm_size.is_some_and(|s| s > 32768) {
            return bad(format!("--gemm-size must be between 1 and 32768, got {}", self.gemm_size.unwrap_or(0)));
        }
        if self.repeats == Some(0) || self.repeats.is_some_and(|r| r > 100_000) {
            return bad(format!("--repeats must be between 1 and 100000, got {}", self.repeats.unwrap_or(0)));
        }
        if self.suites.is_empty() {
            return bad("no suite to run".into());
        }
        Ok(())
    }
}

/// The device's measured ceilings.
#[derive(Clone, Copy, Debug)]
pub struct Ceilings {
    /// Bytes read plus bytes written per second by a large device-to-device copy, in GB/s.
    pub copy_gbs: f64,
    /// The engine's own SGEMM on a square matrix, in GFLOP/s.
    pub gemm_gflops: f64,
    pub copy_bytes: usize,
    pub gemm_size: usize,
}

impl Ceilings {
    /// The fraction of the roofline a time reaches, and what bounds the problem.
    pub fn roofline(&self, flops: f64, bytes: f64, seconds: f64) -> (f64, &'static str) {
        let compute = flops / (self.gemm_gflops * 1e9);
        let memory = bytes / (self.copy_gbs * 1e9);
        let floor = compute.max(memory);
        (if seconds > 0.0 { floor / seconds } else { 0.0 }, if compute > memory { "compute" } else { "memory" })
    }
}

/// One timed problem and variant.
#[derive(Clone, Debug)]
pub struct Row {
    pub suite: &'static str,
    pub problem: Problem,
    pub variant: &'static str,
    /// Whether this is the variant the engine runs by default (the one compared with PyTorch).
    pub primary: bool,
    /// Layers of the network that have this problem.
    pub layers: usize,
    pub runs: usize,
    pub median_ms: f64,
    pub min_ms: f64,
    /// Peak device memory during one run (train steps on a GPU).
    pub peak_bytes: Option<usize>,
}

impl Row {
    pub fn gflops(&self) -> f64 {
        self.problem.flops() / (self.median_ms * 1e6)
    }

    pub fn gbs(&self) -> f64 {
        self.problem.bytes() / (self.median_ms * 1e6)
    }

    pub fn to_json(&self, ceilings: &Ceilings) -> Value {
        let (fraction, bound) = ceilings.roofline(self.problem.flops(), self.problem.bytes(), self.median_ms / 1e3);
        let mut row = json!({
            "suite": self.suite,
            "key": self.problem.key(),
            "spec": self.problem.spec(),
            "label": self.problem.label(),
            "category": self.problem.category(),
            "variant": self.variant,
            "primary": self.primary,
            "layers": self.layers,
            "runs": self.runs,
            "median_ms": self.median_ms,
            "min_ms": self.min_ms,
            "flops": self.problem.flops(),
            "bytes": self.problem.bytes(),
            "gflops": self.gflops(),
            "gbs": self.gbs(),
            "roofline": fraction,
            "bound": bound,
        });
        if let Problem::TrainStep(t) = &self.problem {
            row["images_per_s"] = json!(t.batch as f64 / (self.median_ms / 1e3));
        }
        if let Some(peak) = self.peak_bytes {
            row["peak_mb"] = json!(peak as f64 / (1u64 << 20) as f64);
        }
        row
    }
}

/// Everything one run measured.
pub struct Report {
    pub device: Device,
    pub device_name: String,
    pub batch: usize,
    pub ceilings: Ceilings,
    pub rows: Vec<Row>,
}

/// What a run is measured on, known once the ceilings are: the first line of its results file.
pub struct Header<'a> {
    pub device: Device,
    pub device_name: &'a str,
    pub batch: usize,
    pub ceilings: &'a Ceilings,
}

impl Header<'_> {
    pub fn to_json(&self) -> Value {
        json!({
            "tool": "scratchnet bench",
            "version": env!("CARGO_PKG_VERSION"),
            "device": self.device.to_string(),
            "device_name": self.device_name,
            "batch": self.batch,
            "ceilings": {
                "copy_gbs": self.ceilings.copy_gbs,
                "gemm_gflops": self.ceilings.gemm_gflops,
                "copy_bytes": self.ceilings.copy_bytes,
                "gemm_size": self.ceilings.gemm_size,
            },
        })
    }
}

impl Report {
    /// The table's header line.
    pub fn header() -> String {
        format!(
            "{:<12} {:<52} {:<14} {:>4} {:>10} {:>9} {:>8} {:>6}  {}",
            "suite", "problem", "variant", "n", "median ms", "GFLOP/s", "GB/s", "roof", "bound"
        )
    }

    /// One row of the table.
    pub fn line(&self, row: &Row) -> String {
        line(row, &self.ceilings)
    }
}

/// One row of the table, against the given ceilings.
pub fn line(row: &Row, ceilings: &Ceilings) -> String {
    if let Problem::TrainStep(t) = &row.problem {
        let images = t.batch as f64 / (row.median_ms / 1e3);
        let peak =
            row.peak_bytes.map(|p| format!(", peak {:.0} MiB", p as f64 / (1u64 << 20) as f64)).unwrap_or_default();
        return format!(
            "{:<12} {:<52} {:<14} {:>4} {:>10.3}  {images:.1} images/s{peak}",
            row.suite,
            row.problem.label(),
            row.variant,
            row.layers,
            row.median_ms
        );
    }
    let (fraction, bound) = ceilings.roofline(row.problem.flops(), row.problem.bytes(), row.median_ms / 1e3);
    format!(
        "{:<12} {:<52} {:<14} {:>4} {:>10.3} {:>9.1} {:>8.1} {:>5.0}%  {bound}",
        row.suite,
        row.problem.label(),
        row.variant,
        row.layers,
        row.median_ms,
        row.gflops(),
        row.gbs(),
        100.0 * fraction
    )
}

/// Median and minimum of a run's timings.
pub(crate) struct Timing {
    pub median_ms: f64,
    pub min_ms: f64,
    pub runs: usize,
}

/// The shortest time a problem is timed for, in all, once it has run `repeats` times.
const MIN_TOTAL_MS: f64 = 20.0;
/// Timed runs at most, however quick the problem.
const MAX_RUNS: usize = 1000;

/// Times `run` on `device`: warm-up runs, then timed ones until there are `repeats` of them
/// and they add up to [`MIN_TOTAL_MS`].
pub(crate) fn time(
    device: Device,
    repeats: usize,
    warmup: usize,
    run: &mut dyn FnMut() -> Result<()>,
) -> Result<Timing> {
    let gpu = device.gpu()?;
    for _ in 0..warmup {
        run()?;
    }
    if let Some(gpu) = &gpu {
        gpu.synchronize()?;
    }
    let mut times = Vec::new();
    while times.len() < repeats || (times.iter().sum::<f64>() < MIN_TOTAL_MS && times.len() < MAX_RUNS) {
        let batch = repeats.max(1).min(MAX_RUNS - times.len());
        match &gpu {
            Some(gpu) => {
                // All the batch's events are recorded before any is read, so the host never
                // waits for the device between runs.
                let mut events = Vec::with_capacity(batch);
                for _ in 0..batch {
                    let start = gpu.record_event()?;
                    run()?;
                    events.push((start, gpu.record_event()?));
                }
                gpu.synchronize()?;
                for (start, end) in &events {
                    times.push(start.elapsed_ms(end)?);
                }
            }
            None => {
                for _ in 0..batch {
                    let start = Instant::now();
                    run()?;
                    times.push(start.elapsed().as_secs_f64() * 1e3);
                }
            }
        }
    }
    times.sort_by(f64::total_cmp);
    Ok(Timing { median_ms: times[times.len() / 2], min_ms: times[0], runs: times.len() })
}

/// The layers of `model` as it runs one `input`-sized image, in order.
fn trace(model: &str) -> Result<(Vec<LayerRecord>, [usize; 3], usize)> {
    let mut m = models::build(model, 1000, 0)?;
    let input = m.input_size();
    let [c, h, w] = input;
    let mut g = Graph::eval();
    g.start_trace();
    m.forward(&mut g, &Var::constant(Tensor::zeros([1, c, h, w], DType::F32)))?;
    Ok((g.take_trace(), input, m.num_classes()))
}

/// A shape with its batch dimension replaced.
fn with_batch(s: &Shape, batch: usize) -> Shape {
    let mut d = s.dims().to_vec();
    if let Some(first) = d.first_mut() {
        *first = batch;
    }
    Shape::new(d)
}

/// The problems one training step of a traced network runs, layer by layer.
pub fn layer_problems(layers: &[LayerRecord], batch: usize) -> Vec<Problem> {
    layers.iter().enumerate().flat_map(|(i, l)| problems_of_layer(l, batch, i == 0)).collect()
}

/// The problems of one layer in a training step at `batch` images: forward first. The
/// network's `first` layer computes no input gradient (frameworks skip it).
pub fn problems_of_layer(l: &LayerRecord, batch: usize, first: bool) -> Vec<Problem> {
    let mut out = Vec::new();
    {
        let x = with_batch(&l.input, batch);
        let y = with_batch(&l.output, batch);
        let fwd_bwd = |make: &dyn Fn(Pass) -> Problem| [make(Pass::Forward), make(Pass::Backward)];
        match &l.op {
            LayerOp::Conv2d { weight, params, bias, relu } => {
                let conv = |pass| Problem::Conv {
                    x: x.clone(),
                    w: weight.clone(),
                    params: *params,
                    bias: *bias,
                    relu: *relu,
                    pass,
                };
                out.push(conv(Pass::Forward));
                if !first {
                    out.push(conv(Pass::BackwardData));
                }
                out.push(conv(Pass::BackwardFilter));
            }
            LayerOp::Linear { weight, bias, relu } => {
                let (outputs, inputs) = (weight.dims()[0], weight.dims()[1]);
                for pass in [Pass::Forward, Pass::BackwardData, Pass::BackwardFilter] {
                    out.push(Problem::Linear { n: batch, inputs, outputs, bias: *bias, relu: *relu, pass });
                }
            }
            LayerOp::BatchNorm { residual, relu } => {
                out.extend(fwd_bwd(&|pass| Problem::BatchNorm { x: y.clone(), residual: *residual, relu: *relu, pass }))
            }
            LayerOp::MaxPool2d(p) => out.extend(fwd_bwd(&|pass| Problem::MaxPool { x: x.clone(), p: *p, pass })),
            LayerOp::AvgPool2d(p) => out.extend(fwd_bwd(&|pass| Problem::AvgPool { x: x.clone(), p: *p, pass })),
            LayerOp::GlobalAvgPool => out.extend(fwd_bwd(&|pass| Problem::GlobalAvgPool { x: x.clone(), pass })),
            LayerOp::Lrn(p) => out.extend(fwd_bwd(&|pass| Problem::Lrn { x: x.clone(), p: *p, pass })),
            LayerOp::Dropout(p) if *p > 0.0 => {
                out.extend(fwd_bwd(&|pass| Problem::Dropout { x: x.clone(), p: *p, pass }))
            }
            LayerOp::Dropout(_) => {}
            LayerOp::Concat { channels } => {
                let (h, w) = (y.dims()[2], y.dims()[3]);
                out.extend(fwd_bwd(&|pass| Problem::Concat { n: batch, h, w, channels: channels.clone(), pass }))
            }
        }
    }
    out
}

/// Problems with the number of layers that share each, in order of first appearance.
fn dedupe(problems: Vec<Problem>) -> Vec<(Problem, usize)> {
    let mut out: Vec<(Problem, usize)> = Vec::new();
    let mut index: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for p in problems {
        let key = p.key();
        match index.get(&key) {
            Some(&i) => out[i].1 += 1,
            None => {
                index.insert(key, out.len());
                out.push((p, 1));
            }
        }
    }
    out
}

/// The memory suite's problems on tensors of about `bytes` bytes: activations shaped like a
/// ResNet stage, `[N, 64, 28, 28]`.
fn memory_problems(bytes: usize) -> Vec<Problem> {
    let per_image = 64 * 28 * 28;
    let n = (bytes / 4 / per_image).max(1);
    let x = Shape::new([n, 64, 28, 28]);
    let numel = x.numel();
    let both = |make: &dyn Fn(Pass) -> Problem| [make(Pass::Forward), make(Pass::Backward)];
    let mut p = vec![Problem::Copy { numel }];
    p.extend(both(&|pass| Problem::Relu { numel, pass }));
    p.push(Problem::Add { numel });
    p.push(Problem::AddAssign { numel });
    for (residual, relu) in [(false, false), (false, true), (true, true)] {
        p.extend(both(&|pass| Problem::BatchNorm { x: x.clone(), residual, relu, pass }));
    }
    p.extend(both(&|pass| Problem::MaxPool { x: x.clone(), p: Pool2dParams::new(3, 2).padding(1), pass }));
    p.extend(both(&|pass| Problem::AvgPool { x: x.clone(), p: Pool2dParams::new(2, 2), pass }));
    p.extend(both(&|pass| Problem::GlobalAvgPool { x: x.clone(), pass }));
    p.extend(both(&|pass| Problem::Concat { n, h: 28, w: 28, channels: vec![32, 32], pass }));
    p.extend(both(&|pass| Problem::Lrn { x: x.clone(), p: crate::ops::lrn::LrnParams::alexnet(), pass }));
    p.extend(both(&|pass| Problem::Dropout { x: x.clone(), p: 0.5, pass }));
    p.push(Problem::Sgd { numel });
    p
}

/// Every problem of one suite, with its layer counts.
pub fn suite_problems(suite: Suite, opts: &BenchOptions) -> Result<Vec<(Problem, usize)>> {
    let batch = opts.batch();
    let network = |model: &str| -> Result<Vec<(Problem, usize)>> {
        let (layers, input, num_classes) = trace(model)?;
        let mut problems = dedupe(layer_problems(&layers, batch));
        if opts.train_steps {
            let step =
                |memory_efficient| TrainStep { model: model.into(), batch, input, num_classes, memory_efficient };
            problems.push((Problem::TrainStep(step(false)), 1));
            if model.starts_with("densenet") {
                problems.push((Problem::TrainStep(step(true)), 1));
            }
        }
        Ok(problems)
    };
    let problems = match suite {
        Suite::AlexNet => network("alexnet")?,
        Suite::ResNet18 => network("resnet18")?,
        Suite::ResNet50 => network("resnet50")?,
        Suite::DenseNet121 => network("densenet121")?,
        Suite::Memory => memory_problems(opts.size_bytes()).into_iter().map(|p| (p, 1)).collect(),
        Suite::Gemm => {
            let s = opts.gemm_size();
            let mut p = vec![(Problem::Matmul { m: s, n: s, k: s }, 1)];
            // AlexNet's classifier: 9216 → 4096 → 4096 → 1000.
            for (inputs, outputs) in [(9216, 4096), (4096, 4096), (4096, 1000)] {
                for pass in [Pass::Forward, Pass::BackwardData, Pass::BackwardFilter] {
                    let relu = outputs == 4096;
                    p.push((Problem::Linear { n: batch, inputs, outputs, bias: true, relu, pass }, 1));
                }
            }
            p
        }
    };
    Ok(match &opts.filter {
        Some(f) => problems.into_iter().filter(|(p, _)| p.label().contains(f.as_str())).collect(),
        None => problems,
    })
}

/// Measures the device's ceilings: a large copy and a large square SGEMM.
pub fn measure_ceilings(opts: &BenchOptions) -> Result<Ceilings> {
    let device = opts.device;
    let numel = opts.size_bytes() / 4;
    let copy = Problem::Copy { numel };
    let t = time(device, opts.repeats(), 2, &mut *copy.prepare(device, Variant::Default, &opts.exec)?)?;
    let copy_gbs = copy.bytes() / (t.median_ms * 1e6);
    let s = opts.gemm_size();
    let gemm = Problem::Matmul { m: s, n: s, k: s };
    let t = time(device, opts.repeats(), 2, &mut *gemm.prepare(device, Variant::Default, &opts.exec)?)?;
    Ok(Ceilings { copy_gbs, gemm_gflops: gemm.flops() / (t.median_ms * 1e6), copy_bytes: numel * 4, gemm_size: s })
}

/// Runs the bench; `on_start` sees the header once the ceilings are measured, and `on_row`
/// each row as soon as it is timed (an error from either stops the run).
pub fn run(
    opts: &BenchOptions,
    mut on_start: impl FnMut(&Header) -> Result<()>,
    mut on_row: impl FnMut(&Row, &Ceilings) -> Result<()>,
) -> Result<Report> {
    opts.check()?;
    let device_name = match opts.device.gpu()? {
        Some(gpu) => gpu.name(),
        None => format!("CPU ({} threads)", rayon::current_num_threads()),
    };
    // Collect every problem first, so that a bad suite fails before minutes of timing.
    let mut work = Vec::new();
    for &suite in &opts.suites {
        for (problem, layers) in suite_problems(suite, opts)? {
            work.push((suite, problem, layers));
        }
    }
    let ceilings = measure_ceilings(opts)?;
    on_start(&Header { device: opts.device, device_name: &device_name, batch: opts.batch(), ceilings: &ceilings })?;
    let gpu = opts.device.gpu()?;
    let mut rows = Vec::new();
    for (suite, problem, layers) in work {
        for variant in problem.variants(opts.all_variants) {
            let mut run = problem.prepare(opts.device, variant, &opts.exec)?;
            let is_step = matches!(problem, Problem::TrainStep(_));
            if let Some(gpu) = &gpu {
                gpu.synchronize()?;
                gpu.reset_peak();
            }
            let t = time(opts.device, if is_step { opts.repeats().min(5) } else { opts.repeats() }, 2, &mut *run)?;
            let peak_bytes = match (&gpu, is_step) {
                (Some(gpu), true) => Some(gpu.memory_stats().peak),
                _ => None,
            };
            drop(run);
            let row = Row {
                suite: suite.name(),
                problem: problem.clone(),
                variant: variant.name(),
                primary: variant == Variant::Default,
                layers,
                runs: t.runs,
                median_ms: t.median_ms,
                min_ms: t.min_ms,
                peak_bytes,
            };
            on_row(&row, &ceilings)?;
            rows.push(row);
        }
    }
    Ok(Report { device: opts.device, device_name, batch: opts.batch(), ceilings, rows })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resnet50_layers_become_the_problems_of_a_training_step() {
        let (layers, input, classes) = trace("resnet50").unwrap();
        assert_eq!(input, [3, 224, 224]);
        assert_eq!(classes, 1000);
        let problems = layer_problems(&layers, 8);
        let convs = layers.iter().filter(|l| matches!(l.op, LayerOp::Conv2d { .. })).count();
        assert_eq!(convs, 53, "ResNet-50 has 53 convolutions (with the 4 projection shortcuts)");
        let count = |pass| problems.iter().filter(|p| matches!(p, Problem::Conv { pass: q, .. } if *q == pass)).count();
        assert_eq!(count(Pass::Forward), 53);
        assert_eq!(count(Pass::BackwardData), 52, "no data gradient for the stem");
        assert_eq!(count(Pass::BackwardFilter), 53);
        // The stem at batch 8: 8×3×224×224 through 64 7×7 filters, stride 2.
        let Problem::Conv { x, w, params, .. } = &problems[0] else { panic!("{:?}", problems[0]) };
        assert_eq!((x.dims(), w.dims(), params.stride), (&[8, 3, 224, 224][..], &[64, 3, 7, 7][..], (2, 2)));
        let deduped = dedupe(problems.clone());
        assert!(deduped.len() < problems.len());
        assert_eq!(deduped.iter().map(|(_, n)| n).sum::<usize>(), problems.len());
        // The classifier: 2048 → 1000 at batch 8.
        assert!(problems.contains(&Problem::Linear {
            n: 8,
            inputs: 2048,
            outputs: 1000,
            bias: true,
            relu: false,
            pass: Pass::BackwardFilter
        }));
    }

    #[test]
    fn densenet_concatenations_are_problems_too() {
        let (layers, _, _) = trace("densenet121").unwrap();
        let problems = layer_problems(&layers, 2);
        // Every dense layer but the first of each block reads a concatenation: 58 − 4.
        let concats = problems.iter().filter(|p| matches!(p, Problem::Concat { pass: Pass::Forward, .. })).count();
        assert_eq!(concats, 54);
    }

    #[test]
    fn suites_parse_and_bad_names_are_refused() {
        assert_eq!(Suite::parse_list("memory,gemm,memory").unwrap(), vec![Suite::Memory, Suite::Gemm]);
        assert_eq!(Suite::parse_list("all").unwrap().len(), 6);
        let e = Suite::parse_list("resnet51").unwrap_err().to_string();
        assert!(e.contains("unknown suite 'resnet51'"), "{e}");
    }

    #[test]
    fn roofline_fraction_is_the_floor_over_the_time() {
        let c = Ceilings { copy_gbs: 100.0, gemm_gflops: 1000.0, copy_bytes: 0, gemm_size: 0 };
        // 1 GB at 100 GB/s takes 10 ms at best; 20 ms measured is half the roofline.
        let (fraction, bound) = c.roofline(1e6, 1e9, 0.02);
        assert!((fraction - 0.5).abs() < 1e-12);
        assert_eq!(bound, "memory");
        assert_eq!(c.roofline(1e12, 1e6, 2.0).1, "compute");
    }
}
