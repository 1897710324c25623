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
//!
//! The files, one idea each: `options` ([`BenchOptions`]) and `suites` ([`Suite`]) say what to
//! run; `layers` turns a traced network into problems; [`problems`] says what each problem is,
//! how much work it is and how one run of it is set up; `ceilings` and `timing` measure;
//! `report` shows the rows. This file holds [`run`], which strings them together.

pub mod compare;
pub mod jsonl;
pub mod kernel;
pub mod problems;
pub mod roofline;

mod ceilings;
mod layers;
mod options;
mod report;
mod suites;
mod timing;

use crate::device::GpuDevice;
use crate::error::Result;

pub use ceilings::{Ceilings, measure_ceilings};
pub use layers::{layer_problems, problems_of_layer};
pub use options::BenchOptions;
pub use problems::{Inference, Pass, Problem, TrainStep, Variant};
pub use report::{Header, Report, Row, line};
pub use suites::{Suite, suite_problems};
pub(crate) use timing::time;

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
    on_start(&Header {
        device: opts.device,
        device_name: &device_name,
        batch: opts.batch(),
        precision: opts.exec.precision,
        ceilings: &ceilings,
    })?;
    let gpu = opts.device.gpu()?;
    let mut rows = Vec::new();
    for (suite, problem, layers) in work {
        for variant in problem.variants(opts.all_variants, opts.exec.precision) {
            let row = time_row(opts, gpu.as_deref(), suite, &problem, layers, variant)?;
            on_row(&row, &ceilings)?;
            rows.push(row);
        }
    }
    Ok(Report { device: opts.device, device_name, batch: opts.batch(), ceilings, rows })
}

/// Times one variant of one problem into its row; a training step also reports the peak
/// device memory of its runs, on a GPU.
fn time_row(
    opts: &BenchOptions,
    gpu: Option<&GpuDevice>,
    suite: Suite,
    problem: &Problem,
    layers: usize,
    variant: Variant,
) -> Result<Row> {
    let mut run = problem.prepare(opts.device, variant, &opts.exec)?;
    let is_step = matches!(problem, Problem::TrainStep(_));
    if let Some(gpu) = gpu {
        gpu.synchronize()?;
        gpu.reset_peak();
    }
    let t = time(opts.device, if is_step { opts.repeats().min(5) } else { opts.repeats() }, 2, &mut *run)?;
    let peak_bytes = match (gpu, is_step) {
        (Some(gpu), true) => Some(gpu.memory_stats().peak),
        _ => None,
    };
    drop(run);
    Ok(Row {
        suite: suite.name(),
        problem: problem.clone(),
        variant: variant.name(),
        primary: variant == Variant::Default,
        layers,
        runs: t.runs,
        median_ms: t.median_ms,
        min_ms: t.min_ms,
        peak_bytes,
    })
}
