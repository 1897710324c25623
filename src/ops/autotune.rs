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

use crate::device::GpuDevice;
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
    if gpu.device().is_emu() || candidates.len() == 1 {
        return Ok(last);
    }
    let key = format!("{}\t{problem}", gpu.name());
    let known = choices().lock().unwrap_or_else(|p| p.into_inner()).get(&key).cloned();
    if let Some(&v) = known.and_then(|k| candidates.iter().find(|&&v| name(v) == k)) {
        return Ok(v);
    }
    let clock = |v: V, runs: usize| -> Result<f64> {
        gpu.synchronize()?;
        let start = Instant::now();
        for _ in 0..runs {
            run(v)?;
        }
        gpu.synchronize()?;
        Ok(start.elapsed().as_secs_f64() / runs as f64)
    };
    let best = fastest(candidates, |v| clock(v, 1), |v| clock(v, TIMED_RUNS))?;
    choices().lock().unwrap_or_else(|p| p.into_inner()).insert(key.clone(), name(best).to_string());
    remember(&key, name(best));
    Ok(best)
}

/// The candidate with the shortest time per run. `warm_up(v)` runs `v` once and returns the
/// seconds it took; `timed(v)` returns seconds per run over [`TIMED_RUNS`] more. Candidates
/// are tried from the last (the fastest on paper) back, and one whose warm-up run alone is
/// already slower than the best time per run so far is not timed further: on large shapes a
/// plain direct kernel takes seconds per run, and timing it three more times only to reject
/// it would make the first training step take minutes.
fn fastest<V: Copy>(
    candidates: &[V],
    mut warm_up: impl FnMut(V) -> Result<f64>,
    mut timed: impl FnMut(V) -> Result<f64>,
) -> Result<V> {
    let mut best: Option<(f64, V)> = None;
    for &v in candidates.iter().rev() {
        let first = warm_up(v)?;
        if best.is_some_and(|(t, _)| first > t) {
            continue;
        }
        let t = timed(v)?;
        if best.is_none_or(|(b, _)| t < b) {
            best = Some((t, v));
        }
    }
    best.map(|(_, v)| v).ok_or_else(|| crate::error::Error::Device("autotune: no candidate kernel".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_candidate_slower_on_its_first_run_than_the_best_is_not_timed_further() {
        // Seconds per run of candidates 0..4; the warm-up run costs the same as a timed one.
        let speed = [5.0, 0.2, 0.5, 0.3];
        let timed_calls = std::cell::RefCell::new(Vec::new());
        let best = fastest(
            &[0, 1, 2, 3],
            |v: usize| Ok(speed[v]),
            |v| {
                timed_calls.borrow_mut().push(v);
                Ok(speed[v])
            },
        )
        .unwrap();
        assert_eq!(best, 1);
        // Tried from the last: 3 (0.3 s) is timed, 2 (0.5 s > 0.3) is skipped, 1 (0.2) is
        // timed and wins, 0 (5 s) is skipped after one run.
        assert_eq!(*timed_calls.borrow(), vec![3, 1]);
        // A warm-up that errs (a kernel that fails to launch) is the caller's error.
        let e = fastest(&[0, 1], |_: usize| Err(crate::error::Error::Device("boom".into())), |_| Ok(1.0));
        assert!(e.is_err());
    }
}
