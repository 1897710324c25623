//! Checkpoints survive anything: a process killed (SIGKILL) at any moment of a save leaves the
//! old file whole or the new file whole, the temporary files it leaves are removed by the next
//! save, and two processes saving to one path at once leave one whole file.
//!
//! The saving processes are this test binary run again on its ignored helper test
//! (`saver_process`), which saves large files in a loop through the engine's own
//! `output::write_atomically`, so that kills land in every part of a save; and the
//! `scratchnet` binary itself, killed during `train --save`.

#![cfg(unix)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use scratchnet::output::write_atomically;
use scratchnet::rng::Rng;

const MAGIC: &[u8; 8] = b"SNKILLv1";
/// Large enough that writing and syncing take a few milliseconds.
const PAYLOAD: usize = 4 << 20;

fn fnv64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3))
}

/// A file that says which generation wrote it and whose last 8 bytes check all the others.
fn payload(generation: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(PAYLOAD + 24);
    v.extend_from_slice(MAGIC);
    v.extend_from_slice(&generation.to_le_bytes());
    let mut rng = Rng::new(generation);
    while v.len() < PAYLOAD {
        v.extend_from_slice(&rng.next_u64().to_le_bytes());
    }
    let sum = fnv64(&v);
    v.extend_from_slice(&sum.to_le_bytes());
    v
}

/// The generation of a whole file; a torn, mixed or truncated one fails.
fn check_whole(path: &Path) -> u64 {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(bytes.len(), PAYLOAD + 8, "{}: a file of the wrong length", path.display());
    assert_eq!(&bytes[..8], MAGIC);
    let (body, sum) = bytes.split_at(PAYLOAD);
    assert_eq!(fnv64(body).to_le_bytes(), sum, "{}: torn file", path.display());
    u64::from_le_bytes(bytes[8..16].try_into().unwrap_or_default())
}

/// The generation of the file at `path` if it is whole now, else 0 (polled while a child saves:
/// a rename may be under way).
fn generation_of(path: &Path) -> u64 {
    match std::fs::read(path) {
        Ok(bytes) if bytes.len() == PAYLOAD + 8 => u64::from_le_bytes(bytes[8..16].try_into().unwrap_or_default()),
        _ => 0,
    }
}

fn temp_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| n.ends_with(".tmp")).collect()
        })
        .unwrap_or_default()
}

fn workdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("scratchnet-kill-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

/// Starts this binary's helper test, saving generations `first..` to `target` in a loop.
fn spawn_saver(target: &Path, first: u64, count: u64) -> Child {
    Command::new(std::env::current_exe().expect("the test binary"))
        .args(["--ignored", "--exact", "saver_process", "--nocapture", "--test-threads", "1"])
        .env("SCRATCHNET_KILL_TEST_TARGET", target)
        .env("SCRATCHNET_KILL_TEST_FIRST", first.to_string())
        .env("SCRATCHNET_KILL_TEST_COUNT", count.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the test binary runs again")
}

#[test]
#[ignore = "a helper process of the tests below, started by them"]
fn saver_process() {
    let target = PathBuf::from(std::env::var("SCRATCHNET_KILL_TEST_TARGET").expect("run by the kill tests"));
    let number = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let first = number("SCRATCHNET_KILL_TEST_FIRST");
    for generation in first..first + number("SCRATCHNET_KILL_TEST_COUNT") {
        write_atomically(&target, &payload(generation)).expect("save");
    }
}

#[test]
fn killing_a_save_at_any_moment_leaves_a_whole_file() {
    let dir = workdir("loop");
    let target = dir.join("w.bin");
    write_atomically(&target, &payload(0)).unwrap();
    let mut rng = Rng::new(7);
    for round in 0..24u64 {
        let first = 1000 * (round + 1);
        let mut child = spawn_saver(&target, first, 1000);
        // Once the child has finished a save (so that the kill lands among its later ones,
        // however slow the machine), a random moment within the next few saves.
        let started = Instant::now();
        while generation_of(&target) < first {
            assert!(started.elapsed() < Duration::from_secs(60), "the saver never finished a save");
            assert!(child.try_wait().ok().flatten().is_none(), "the saver stopped early");
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_micros(rng.below(40_000) as u64));
        child.kill().expect("SIGKILL");
        child.wait().expect("reaped");
        let generation = check_whole(&target);
        assert!(generation >= first, "generation {generation} after round {round}");
    }
    // The next save removes what the killed processes left.
    write_atomically(&target, &payload(1)).unwrap();
    assert_eq!(check_whole(&target), 1);
    assert_eq!(temp_files(&dir), Vec::<String>::new());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn two_processes_saving_at_once_leave_one_whole_file() {
    let dir = workdir("race");
    let target = dir.join("w.bin");
    let started = Instant::now();
    let mut a = spawn_saver(&target, 100, 12);
    let mut b = spawn_saver(&target, 200, 12);
    assert!(a.wait().unwrap().success() && b.wait().unwrap().success());
    let generation = check_whole(&target);
    assert!(generation == 111 || generation == 211, "the last save of one of them: {generation}");
    assert_eq!(temp_files(&dir), Vec::<String>::new(), "after {:?}", started.elapsed());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn killing_train_during_its_save_leaves_a_loadable_checkpoint() {
    use scratchnet::data::npy;
    let dir = workdir("train");
    let (x, y) = (dir.join("x.npy"), dir.join("y.npy"));
    let mut rng = Rng::new(3);
    let images: Vec<f32> = (0..8 * 3 * 8 * 8).map(|_| rng.normal() as f32).collect();
    std::fs::write(&x, npy::encode_f32(&[8, 3, 8, 8], &images)).unwrap();
    std::fs::write(&y, npy::encode_i64(&[8], &[0, 1, 2, 3, 0, 1, 2, 3])).unwrap();
    let w = dir.join("w.safetensors");
    let args = |seed: u64| {
        let data = format!("npy:{},{}", x.display(), y.display());
        let w = w.display().to_string();
        let list = ["train", "--device", "cpu", "--data", &data, "--holdout", "0", "--batch-size", "4", "--steps", "2"];
        let mut v: Vec<String> = list.iter().map(|s| s.to_string()).collect();
        v.extend(["--num-classes".into(), "4".into(), "--seed".into(), seed.to_string(), "--save".into(), w]);
        v
    };
    let run = |seed: u64| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_scratchnet"));
        c.args(args(seed)).stdout(Stdio::null()).stderr(Stdio::null());
        c
    };
    // A first whole checkpoint, and how long a run takes.
    let t = Instant::now();
    assert!(run(0).status().unwrap().success());
    let whole = t.elapsed();
    let loads = |path: &Path| {
        let mut model = scratchnet::models::build("resnet20", 4, 0).unwrap();
        scratchnet::checkpoint::load(model.as_mut(), path)
    };
    loads(&w).unwrap();
    for round in 1..=8u64 {
        let mut child = run(round).spawn().unwrap();
        // Spread over the run, the last ones near its end, where the save is.
        std::thread::sleep(whole.mul_f64(0.6 + 0.05 * round as f64));
        let _ = child.kill();
        let _ = child.wait();
        loads(&w).unwrap_or_else(|e| panic!("round {round}: the checkpoint is not whole: {e}"));
    }
    assert!(run(99).status().unwrap().success());
    assert_eq!(temp_files(&dir), Vec::<String>::new());
    std::fs::remove_dir_all(&dir).unwrap();
}
