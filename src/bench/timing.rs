//! How one problem is timed: warm-up runs (the autotuner chooses its kernels then), then
//! timed runs until there are enough of them and they last long enough; the median counts.
//! On a GPU the device's own events time the queue, recorded for a whole batch of runs before
//! any is read; on the CPU, the host clock.

use std::time::Instant;

use crate::device::Device;
use crate::error::Result;

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
