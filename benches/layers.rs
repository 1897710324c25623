//! Every op of AlexNet, ResNet-50 and DenseNet-121, forward and backward, at the networks' own
//! layer shapes, and one training step of each network: on the CPU (batch 1, so a run ends in
//! reasonable time on two cores) and on cuda:0 (batch 64) when a GPU is usable. Without one,
//! the cuda benches say they were skipped and why.
//!
//! The problems are the same as `scratchnet bench` times (src/bench): each network is traced
//! once on the CPU and each layer turned into its forward and backward problems; layers of
//! the same shape are benched once. On the GPU, criterion's clock is the device's events
//! around each batch of iterations, so host time spent queueing kernels is not counted
//! unless the device waits for it.
//!
//! `cargo bench --bench layers` runs everything (long); criterion's filter picks a part:
//! `cargo bench --bench layers -- cpu/resnet50/conv`. SCRATCHNET_BENCH_BATCH overrides the
//! batch sizes.

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use scratchnet::bench::{BenchOptions, Problem, Suite, Variant, suite_problems};
use scratchnet::device::Device;

fn suites(c: &mut Criterion, device: Device, batch: usize) {
    let mut opts = BenchOptions::new(device);
    opts.batch = Some(std::env::var("SCRATCHNET_BENCH_BATCH").ok().and_then(|b| b.parse().ok()).unwrap_or(batch));
    let gpu = device.gpu().ok().flatten();
    for suite in [Suite::AlexNet, Suite::ResNet50, Suite::DenseNet121] {
        let problems = match suite_problems(suite, &opts) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("{device}/{}: cannot list the problems: {e}", suite.name());
                continue;
            }
        };
        let mut group = c.benchmark_group(format!("{device}/{}", suite.name()));
        group.sample_size(10).warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(1));
        for (problem, _) in problems {
            let name = format!("{}/{}", problem.category(), problem.label());
            if matches!(problem, Problem::TrainStep(_)) {
                group.measurement_time(Duration::from_secs(5));
            }
            // Set up inside the closure, which criterion calls only for benches its filter keeps.
            group.bench_function(name.clone(), |b| {
                let mut run = match problem.prepare(device, Variant::Default, &Default::default()) {
                    Ok(run) => run,
                    Err(e) => {
                        eprintln!("{name}: cannot set up: {e}");
                        return;
                    }
                };
                match &gpu {
                    Some(gpu) => b.iter_custom(|iters| {
                        let start = gpu.record_event().expect("event");
                        for _ in 0..iters {
                            run().expect("the op runs");
                        }
                        let end = gpu.record_event().expect("event");
                        gpu.synchronize().expect("synchronize");
                        Duration::from_secs_f64(start.elapsed_ms(&end).expect("elapsed") / 1e3)
                    }),
                    None => b.iter(|| run().expect("the op runs")),
                }
            });
        }
        group.finish();
    }
}

fn cpu(c: &mut Criterion) {
    suites(c, Device::Cpu, 1);
}

fn cuda(c: &mut Criterion) {
    match scratchnet::device::cuda::check(0) {
        Ok(_) => suites(c, Device::Cuda(0), 64),
        Err(why) => eprintln!("cuda benches skipped: {why}"),
    }
}

criterion_group!(benches, cpu, cuda);
criterion_main!(benches);
