//! The command line as a user meets it: exit codes, one-line errors, and a short run.

use std::process::{Command, Output};

fn scratchnet(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_scratchnet")).args(args).output().expect("the binary runs")
}

fn assert_bad_input(args: &[&str], needle: &str) {
    let out = scratchnet(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
    assert!(stderr.contains(needle), "{args:?}: wanted '{needle}' in: {stderr}");
    assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
}

#[test]
fn bad_input_exits_2_with_a_one_line_error() {
    assert_bad_input(&["train", "--model", "resnet19"], "unknown model 'resnet19'");
    assert_bad_input(&["train", "--data", "imagenet"], "unknown data source 'imagenet'");
    assert_bad_input(&["train", "--device", "tpu"], "unknown device 'tpu'");
    assert_bad_input(&["train", "--batch-size", "0"], "--batch-size must be at least 1");
    assert_bad_input(&["train", "--lr", "-1"], "--lr must be a non-negative number");
    assert_bad_input(&["train", "--num-classes", "3"], "outside the model's 3 classes");
    assert_bad_input(&["train", "--no-such-flag"], "unexpected argument");
    assert_bad_input(&["frobnicate"], "unrecognized subcommand");
    assert_bad_input(&["train", "--epochs", "18446744073709551615"], "is too many");
    assert_bad_input(&["train", "--num-classes", "100000000000"], "number of classes must be between 1 and 100000");
    let out = scratchnet(&["train", "--model", "resnet19"]);
    assert_eq!(String::from_utf8_lossy(&out.stderr).lines().count(), 1);
}

#[test]
fn a_short_training_run_reports_its_progress_and_accuracy() {
    let out = scratchnet(&["train", "--steps", "2", "--batch-size", "8", "--device", "cpu"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("training resnet20 (272474 parameters) on cpu"), "{stdout}");
    assert!(stdout.contains("epoch 1: train loss"), "{stdout}");
    let last = stdout.lines().last().unwrap_or_default();
    assert!(last.starts_with("final held-out accuracy: "), "{stdout}");
}
