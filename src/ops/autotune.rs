//! Choosing among kernel variants by timing them, like cuDNN's benchmark mode.
//!
//! The first time a problem (an op, a direction, its shapes) runs on a GPU, each candidate
//! variant runs once to warm up and then a few times against the clock; the fastest wins. The
//! choice is remembered for the process and written to a cache file, so the next run on the
//! same GPU starts with it: `$SCRATCHNET_AUTOTUNE_CACHE`, or
//! `~/.cache/scratchnet/autotune.tsv`, one line per problem: GPU name, problem, variant.
//!
//! On the emulator nothing is timed (its timings say nothing about a GPU): the last candidate,
//! by convention the fastest variant on paper, is taken.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use crate::device::{Device, GpuDevice};
use crate::error::Result;

/// Runs of each candidate that are timed (after one warm-up run).
const TIMED_RUNS: usize = 3;

fn cache_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SCRATCHNET_AUTOTUNE_CACHE") {
        return Some(PathBuf::from(p));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache").join("scratchnet").join("autotune.tsv"))
}

/// Choices made so far: "gpu\tproblem" → variant name.
fn choices() -> &'static Mutex<HashMap<String, String>> {
    static CHOICES: OnceLock<Mutex<HashMap<String, String>>> = OnceLock::new();
    CHOICES.get_or_init(|| {
        let mut map = HashMap::new();
        if let Some(text) = cache_path().and_then(|p| std::fs::read_to_string(p).ok()) {
            for line in text.lines() {
                let mut parts = line.splitn(3, '\t');
                if let (Some(gpu), Some(problem), Some(variant)) = (parts.next(), parts.next(), parts.next()) {
                    map.insert(format!("{gpu}\t{problem}"), variant.to_string());
                }
            }
        }
        Mutex::new(map)
    })
}

fn remember(key: &str, variant: &str) {
    let Some(path) = cache_path() else { return };
    // The cache is an optimisation: failing to write it only costs a re-tune next time.
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(&path) {
        let _ = writeln!(f, "{key}\t{variant}");
    }
}

/// The variant to use for `problem` on `gpu`: from memory or the cache file, or by timing
/// `run` on each of `candidates` (named by `name`). `run` must compute the op's full output,
/// so timing a candidate has no other effect than leaving that output written.
pub fn pick<V: Copy>(
    gpu: &GpuDevice,
    problem: &str,
    candidates: &[V],
    name: impl Fn(V) -> &'static str,
    run: impl Fn(V) -> Result<()>,
) -> Result<V> {
    let last = *candidates.last().expect("at least one candidate");
    if gpu.device() == Device::Emu || candidates.len() == 1 {
        return Ok(last);
    }
    let key = format!("{}\t{problem}", gpu.name());
    let known = choices().lock().unwrap_or_else(|p| p.into_inner()).get(&key).cloned();
    if let Some(&v) = known.and_then(|k| candidates.iter().find(|&&v| name(v) == k)) {
        return Ok(v);
    }
    let mut best = (f64::INFINITY, last);
    for &v in candidates {
        run(v)?;
        gpu.synchronize()?;
        let start = Instant::now();
        for _ in 0..TIMED_RUNS {
            run(v)?;
        }
        gpu.synchronize()?;
        let t = start.elapsed().as_secs_f64();
        if t < best.0 {
            best = (t, v);
        }
    }
    choices().lock().unwrap_or_else(|p| p.into_inner()).insert(key.clone(), name(best.1).to_string());
    remember(&key, name(best.1));
    Ok(best.1)
}
