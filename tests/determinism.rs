//! A run is a function of its seed: two runs with the same seed write byte-identical
//! checkpoints, on the CPU and on the emulator, whether rayon has one thread or two.
//!
//! On the CPU every parallel reduction is split into a fixed number of chunks (never one per
//! thread), so the order of the additions, and with it every rounding, does not depend on
//! the number of threads. Checkpoints write their metadata and tensors in sorted order.

mod common;

use common::*;

/// Trains `steps` steps and returns the bytes of the checkpoint.
fn checkpoint(dir: &std::path::Path, data: &str, device: &str, threads: usize, tag: &str) -> Vec<u8> {
    let w = dir.join(format!("w-{device}-{threads}-{tag}.safetensors"));
    let args = [
        "train",
        "--device",
        device,
        "--data",
        data,
        "--num-classes",
        "4",
        "--batch-size",
        "4",
        "--steps",
        "3",
        "--seed",
        "11",
        "--save",
        p(&w),
    ];
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_scratchnet"));
    command.args(args).env("RAYON_NUM_THREADS", threads.to_string());
    let out = scratchnet_in(&mut command, &args);
    assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    std::fs::read(&w).expect("the checkpoint")
}

#[test]
fn same_seed_same_bytes_on_cpu_and_emu_with_one_thread_or_two() {
    let dir = workdir("determinism");
    let (x, y) = write_npy(&dir, "", 12, 8);
    let data = format!("npy:{},{}", p(&x), p(&y));
    for device in ["cpu", "emu"] {
        let first = checkpoint(&dir, &data, device, 1, "a");
        for (threads, tag) in [(1, "b"), (2, "a"), (2, "b")] {
            let again = checkpoint(&dir, &data, device, threads, tag);
            assert!(first == again, "{device}: the checkpoint of a run on {threads} threads differs");
        }
    }
    // A different seed must give other bytes, or the comparison above proves nothing.
    let w = dir.join("other.safetensors");
    let args = ["train", "--device", "cpu", "--data", &data, "--num-classes", "4", "--batch-size", "4", "--steps", "3"];
    let mut args = args.to_vec();
    args.extend(["--seed", "12", "--save", p(&w)]);
    assert_ok(&args);
    assert!(std::fs::read(&w).unwrap() != checkpoint(&dir, &data, "cpu", 1, "c"));
    std::fs::remove_dir_all(&dir).unwrap();
}
