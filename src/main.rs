//! The `scratchnet` command line.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

use scratchnet::device::Device;
use scratchnet::device::cpu::on_cpu_workers;
use scratchnet::device::host_memory::{Activity, set_activity};
use scratchnet::models;
use scratchnet::output;
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

// After the macros, which its modules use.
mod cli;

use cli::args::{Cli, Command, InferArgs, ProfileArgs, SelftestArgs, SummaryArgs};
use cli::bench::{run_bench, run_kernel};
use cli::train::run_train;

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
        let y = on_cpu_workers(device, || {
            let mut g = Graph::eval().with_options(exec);
            model.forward(&mut g, &Var::constant(batch)).map_err(|e| {
                e.in_context(|| {
                    let layer = g.current_layer().map(|l| format!(" ({l})")).unwrap_or_default();
                    format!(" in the forward pass{layer} at batch {}; try a smaller --batch-size", end - start)
                })
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
    let devices = a.devices.as_deref().map(Device::parse_list).transpose()?.unwrap_or_default();
    let options = scratchnet::profile_report::ProfileOptions {
        model: a.model,
        device: match devices.first() {
            Some(&first) => first,
            None => a.device.parse::<Device>()?,
        },
        devices,
        batch: a.batch_size,
        input: Some(parse_input_size("profile", a.input_size.as_deref(), own)?),
        num_classes,
        steps: a.steps,
        warmup: 2,
        memory_efficient: a.memory_efficient,
        exec,
        eval: a.eval,
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
    let usable: Vec<usize> = cuda::probe()
        .map(|info| info.gpus.iter().map(|g| g.ordinal).filter(|&n| cuda::check(n).is_ok()).collect())
        .unwrap_or_default();
    for (i, &a) in usable.iter().enumerate() {
        for &b in &usable[i + 1..] {
            let peer = match (Device::Cuda(a).gpu(), Device::Cuda(b).gpu()) {
                (Ok(Some(x)), Ok(Some(y))) => match x.can_access_peer(&y) {
                    Ok(true) => "direct (peer access)".to_string(),
                    Ok(false) => "staged through the host (no peer access)".to_string(),
                    Err(e) => format!("unknown: {e}"),
                },
                _ => "unknown: a device did not open".to_string(),
            };
            out!("peer     cuda:{a} <-> cuda:{b}: copies {peer}");
        }
    }
    match scratchnet::device::nccl::probe() {
        Ok(version) if usable.len() >= 2 => {
            out!("nccl     usable: NCCL {version}, for --data-parallel over {} GPUs", usable.len())
        }
        Ok(version) => out!(
            "nccl     NCCL {version} found; data parallelism needs two GPUs here ({} usable), or one per process with --rank/--world-size",
            usable.len()
        ),
        Err(why) => out!("nccl     not usable: {why}"),
    }
    out!(
        "emu:N    emu:0 to emu:{} are independent emulated devices (--devices emu:0,emu:1), summing on the host",
        scratchnet::device::MAX_EMU_DEVICES - 1
    );
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
    out!("selftest on {device}: each op against its plain reference in f64 (relative L2 error)");
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
