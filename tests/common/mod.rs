//! What the command-line tests share: running the binary, checking its answers, and small
//! data sets written as `.npy` files.
#![allow(dead_code)] // each test file uses a part

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use scratchnet::data::npy;
use scratchnet::rng::Rng;

/// The longest any command of these tests may take: a run that has not ended by then is
/// taken to be looping, killed, and fails the test.
pub const LIMIT: Duration = Duration::from_secs(120);

/// Runs `scratchnet` with `args`; one that does not end within [`LIMIT`] fails the test.
pub fn scratchnet(args: &[&str]) -> Output {
    scratchnet_in(Command::new(env!("CARGO_BIN_EXE_scratchnet")).args(args), args)
}

/// Runs a prepared command (a `sh -c` around the binary, say) under the same limit.
pub fn scratchnet_in(command: &mut Command, args: &[&str]) -> Output {
    let mut child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("the binary runs");
    let started = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if started.elapsed() > LIMIT => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{args:?} did not end within {LIMIT:?}");
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("{args:?}: {e}"),
        }
    }
    child.wait_with_output().expect("its output")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn assert_ok(args: &[&str]) -> String {
    let out = scratchnet(args);
    assert!(out.status.success(), "{args:?} failed:\n{}{}", stdout(&out), stderr(&out));
    stdout(&out)
}

/// Exit code 2, `needle` in the error, one line, no panic.
pub fn assert_refused(out: &Output, args: &[&str], needle: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
    assert!(err.contains(needle), "{args:?}: wanted '{needle}' in: {err}");
    assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: the error should be one line: {err}");
}

pub fn assert_bad_input(args: &[&str], needle: &str) {
    assert_refused(&scratchnet(args), args, needle);
}

/// A fresh directory for one test.
pub fn workdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("scratchnet-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

pub fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 temp path")
}

/// A tiny learnable data set: `n` images of 3×`side`×`side`, where class k (of 4) has a
/// bright k-th quarter, as `NAME_x.npy` and `NAME_y.npy`.
pub fn write_npy(dir: &Path, name: &str, n: usize, side: usize) -> (PathBuf, PathBuf) {
    let (c, h, w) = (3, side, side);
    let mut rng = Rng::new(4);
    let mut x = Vec::with_capacity(n * c * h * w);
    let mut y = Vec::with_capacity(n);
    for i in 0..n {
        let label = (i % 4) as i64;
        for _ in 0..c {
            for row in 0..h {
                for col in 0..w {
                    let quarter = (row * 2 / h) * 2 + col * 2 / w;
                    let bright = if quarter as i64 == label { 1.5 } else { 0.0 };
                    x.push(bright + 0.2 * rng.normal() as f32);
                }
            }
        }
        y.push(label);
    }
    let (xp, yp) = (dir.join(format!("{name}x.npy")), dir.join(format!("{name}y.npy")));
    std::fs::write(&xp, npy::encode_f32(&[n, c, h, w], &x)).expect("write x");
    std::fs::write(&yp, npy::encode_i64(&[n], &y)).expect("write y");
    (xp, yp)
}

/// The 12×12 set of the command-line tests, as `x.npy` and `y.npy`.
pub fn write_tiny_npy(dir: &Path, n: usize) -> (PathBuf, PathBuf) {
    write_npy(dir, "", n, 12)
}

pub fn read_logits(path: &Path) -> Vec<f32> {
    npy::read(path).expect("logits").to_vec::<f32>().expect("f32 logits")
}
