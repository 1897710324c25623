//! `scratchnet bench` and `scratchnet kernel`: the flags turned into the bench's and the kernel
//! check's options, and their rows printed (and written as JSON lines) as each is measured.
//! Apart from `main.rs` because both are long and share the way rows reach the results file.

use std::io::Write;
use std::process::ExitCode;

use super::args::{BenchArgs, KernelCmdArgs};
use scratchnet::device::Device;
use scratchnet::device::host_memory::{Activity, set_activity};
use scratchnet::output;
use scratchnet::{Error, Result};

pub fn run_bench(a: BenchArgs) -> Result<()> {
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
    if opts.device.is_emu() {
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

pub fn run_kernel(a: KernelCmdArgs) -> Result<ExitCode> {
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
        precision: a.precision.parse()?,
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
            if opts.device.is_emu() {
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
