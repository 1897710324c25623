//! The command line as a user meets it: short training runs on tiny data, inference,
//! summaries, checkpoints that round-trip, and bad input that gets a one-line error, exit
//! code 2 and no half-written file.

mod common;

use common::*;
use scratchnet::data::npy;

#[test]
fn bad_flags_exit_2_with_a_one_line_error() {
    assert_bad_input(&["train", "--precision", "fp8"], "'fp8' is not fp32, tf32, bf16 or fp16");
    assert_bad_input(&["bench", "--precision", "half"], "'half' is not fp32, tf32, bf16 or fp16");
    assert_bad_input(
        &["train", "--precision", "fp16", "--cuda-graph", "--device", "emu"],
        "--cuda-graph cannot be combined with --precision fp16",
    );
    assert_bad_input(&["train", "--model", "resnet19"], "unknown model 'resnet19'");
    assert_bad_input(&["train", "--data", "imagenet"], "unknown data source 'imagenet'");
    assert_bad_input(&["train", "--device", "tpu"], "unknown device 'tpu'");
    assert_bad_input(&["train", "--batch-size", "0"], "--batch-size must be at least 1");
    assert_bad_input(&["train", "--lr", "-1"], "--lr must be a non-negative number");
    assert_bad_input(&["train", "--dropout", "1.5"], "--dropout must be in [0, 1)");
    assert_bad_input(&["train", "--lr-schedule", "linear"], "is not cosine, constant or step");
    assert_bad_input(&["train", "--lr-schedule", "step:NaN:0.1"], "is not cosine, constant or step");
    assert_bad_input(&["train", "--dropout", "0.3"], "resnet20 has no dropout layers");
    assert_bad_input(&["train", "--model", "resnet020"], "unknown model 'resnet020'");
    assert_bad_input(&["train", "--log", "curves.svg"], "the log is a CSV file");
    assert_bad_input(&["train", "--save", "/no/such/dir/w.safetensors"], "its directory does not exist");
    assert_bad_input(&["summary", "--model", "resnet18", "--input-size", "100000"], "larger than 4096×4096");
    assert_bad_input(&["train", "--num-classes", "3"], "outside the model's 3 classes");
    assert_bad_input(&["train", "--epochs", "18446744073709551615"], "is too many");
    assert_bad_input(&["train", "--num-classes", "100000000000"], "number of classes must be between 2 and 100000");
    assert_bad_input(&["train", "--model", "alexnet"], "3×227×227 for alexnet");
    assert_bad_input(&["summary", "--model", "resnet50", "--input-size", "big"], "is not H or HxW");
    assert_bad_input(&["train", "--no-such-flag"], "unexpected argument");
    assert_bad_input(&["frobnicate"], "unrecognized subcommand");
    assert_bad_input(
        &["train", "--conv-algo", "winograd"],
        "'winograd' is not direct, implicit-gemm, implicit-gemm-128, tensor-core, tensor-core-64, tensor-core-128 or auto",
    );
}

#[test]
fn missing_and_malformed_files_are_named() {
    let dir = workdir("files");
    let out = dir.join("out.npy");
    let (x, y) = write_tiny_npy(&dir, 8);
    let bogus = dir.join("bogus.bin");
    std::fs::write(&bogus, b"this is not what it claims to be").unwrap();
    let missing = dir.join("missing.npy");

    assert_bad_input(&["train", "--data", &format!("npy:{},{}", p(&missing), p(&y))], "missing.npy: cannot read");
    assert_bad_input(&["train", "--data", &format!("npy:{},{}", p(&bogus), p(&y))], "bogus.bin: not a .npy file");
    assert_bad_input(&["train", "--data", &format!("npy:{},{}", p(&y), p(&y))], "expected float images N×C×H×W");
    assert_bad_input(&["train", "--data", &format!("npy:{},{}", p(&x), p(&x))], "expected 8 integer labels");
    assert_bad_input(&["train", "--data", &format!("cifar10:{}", p(&dir))], "no CIFAR-10 files here");
    assert_bad_input(&["train", "--data", &format!("folder:{}", p(&dir))], "an image folder needs train/CLASS/*.jpg");
    assert_bad_input(
        &["infer", "--model", "resnet20", "--weights", p(&bogus), "--input", p(&x), "--output", p(&out)],
        "not a safetensors file",
    );
    assert_bad_input(
        &["infer", "--model", "resnet20", "--weights", p(&missing), "--input", p(&x), "--output", p(&out)],
        "cannot read",
    );
    // Labels outside the model's classes.
    std::fs::write(&y, npy::encode_i64(&[8], &[0, 1, 2, 3, 0, 1, 2, 12])).unwrap();
    assert_bad_input(
        &["train", "--data", &format!("npy:{},{}", p(&x), p(&y)), "--steps", "1"],
        "labels up to 12, outside the model's 10 classes",
    );
    // An unreadable image in a folder data set.
    for split in ["train", "val"] {
        std::fs::create_dir_all(dir.join("imgs").join(split).join("a")).unwrap();
    }
    std::fs::write(dir.join("imgs/train/a/broken.jpg"), b"\xff\xd8 not really").unwrap();
    assert_bad_input(
        &[
            "train",
            "--model",
            "resnet18",
            "--data",
            &format!("folder:{}", p(&dir.join("imgs"))),
            "--steps",
            "1",
            "--batch-size",
            "1",
        ],
        "broken.jpg: cannot decode the image",
    );
    assert!(!out.exists(), "no output may be left behind by a failed command");
    // A failed run leaves no log behind either, and an existing one untouched.
    let log = dir.join("metrics.csv");
    std::fs::write(&log, "an older run's log\n").unwrap();
    assert_bad_input(&["train", "--data", &format!("npy:{},{}", p(&missing), p(&y)), "--log", p(&log)], "cannot read");
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "an older run's log\n");
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn train_save_infer_and_resume() {
    let dir = workdir("train");
    let (x, y) = write_tiny_npy(&dir, 40);
    let data = format!("npy:{},{}", p(&x), p(&y));
    let (w1, log) = (dir.join("w1.safetensors"), dir.join("metrics.csv"));
    let common = [
        "train",
        "--model",
        "resnet20",
        "--data",
        &data,
        "--device",
        "cpu",
        "--batch-size",
        "12",
        "--num-classes",
        "4",
    ];
    let mut args = common.to_vec();
    args.extend(["--steps", "12", "--lr", "0.05", "--save", p(&w1), "--log", p(&log)]);
    let first = assert_ok(&args);
    // 272,474 for 10 classes, less 6 × 65 for the 6 classes fewer.
    assert!(
        first.contains("training resnet20 (272084 parameters) on cpu with 36 training and 4 held-out images"),
        "{first}"
    );
    assert!(first.contains("weights saved to"), "{first}");
    let csv = std::fs::read_to_string(&log).unwrap();
    assert_eq!(csv.lines().filter(|l| l.contains(",train,")).count(), 12);
    assert!(csv.lines().any(|l| l.contains(",held-out,")));
    assert!(std::fs::read_to_string(log.with_extension("svg")).unwrap().contains("<polyline"));

    // Inference twice from the same weights gives the same logits, on cpu and on emu.
    let (y1, y2, y3) = (dir.join("y1.npy"), dir.join("y2.npy"), dir.join("y3.npy"));
    for (out, device) in [(&y1, "cpu"), (&y2, "cpu"), (&y3, "emu")] {
        let msg = assert_ok(&[
            "infer",
            "--model",
            "resnet20",
            "--num-classes",
            "4",
            "--weights",
            p(&w1),
            "--input",
            p(&x),
            "--output",
            p(out),
            "--device",
            device,
        ]);
        assert!(msg.contains("wrote 40×4 logits"), "{msg}");
    }
    let (l1, l2, l3) = (read_logits(&y1), read_logits(&y2), read_logits(&y3));
    assert_eq!(l1.len(), 160);
    assert_eq!(l1, l2, "the same weights must give the same logits");
    let diff: f32 = l1.iter().zip(&l3).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    assert!(diff < 1e-3, "cpu and emu logits differ by {diff}");

    // Save → load → save again gives the same file contents.
    let w2 = dir.join("w2.safetensors");
    let mut resume = common.to_vec();
    resume.extend(["--steps", "12", "--lr", "0.05", "--init", p(&w1), "--save", p(&w2)]);
    let second = assert_ok(&resume);
    let loss = |text: &str| -> f64 {
        let line = text.lines().find(|l| l.starts_with("epoch 1: train loss")).unwrap_or_default();
        line.split_whitespace().nth(4).and_then(|v| v.parse().ok()).unwrap_or(f64::NAN)
    };
    assert!(
        loss(&second) < loss(&first),
        "resuming continues from the saved weights: {} then {}",
        loss(&first),
        loss(&second)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn weights_that_do_not_fit_the_model_are_refused() {
    let dir = workdir("weights");
    let (x, y) = write_tiny_npy(&dir, 8);
    let w = dir.join("w.safetensors");
    let data = format!("npy:{},{}", p(&x), p(&y));
    assert_ok(&["train", "--data", &data, "--num-classes", "4", "--steps", "1", "--batch-size", "4", "--save", p(&w)]);
    let out = dir.join("logits.npy");
    let infer = |model: &str, classes: &str| {
        vec![
            "infer".to_string(),
            "--model".into(),
            model.into(),
            "--num-classes".into(),
            classes.into(),
            "--weights".into(),
            p(&w).into(),
            "--input".into(),
            p(&x).into(),
            "--output".into(),
            p(&out).into(),
        ]
    };
    let run = |args: Vec<String>| args;
    let args = run(infer("resnet20", "10"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_bad_input(&args, "fc.weight has shape [4, 64] in the file but resnet20 needs [10, 64]");
    let args = run(infer("resnet32", "4"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_bad_input(&args, "has no tensor layer1.3.conv1.weight");
    let args = run(infer("densenet_bc100", "4"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_bad_input(&args, "has no tensor features.conv0.weight");
    // An input of the wrong size for the model: one channel where it needs three.
    std::fs::write(&x, npy::encode_f32(&[2, 1, 12, 12], &[0.5; 288])).unwrap();
    let args = run(infer("resnet20", "4"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_bad_input(&args, "expected a batch [N, C, H, W] of images of 3 channels");
    assert!(!out.exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn summary_totals_match_the_published_counts() {
    let out = assert_ok(&["summary", "--model", "resnet50"]);
    assert!(out.starts_with("resnet50 on a 3×224×224 image"), "{out}");
    assert!(out.contains("total: 25,557,032 parameters, 4,089,184,256 multiply-adds per image"), "{out}");
    // A bottleneck block at 256 channels: 1×1 (256→64), 3×3 (64→64), 1×1 (64→256).
    let params = |name: &str| -> u64 {
        let line = out.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap_or_default();
        // The columns are name, type, output shape (with spaces), params, multiply-adds.
        line.split_whitespace().rev().nth(1).map(|v| v.replace(',', "")).and_then(|v| v.parse().ok()).unwrap_or(0)
    };
    let bottleneck = params("layer1.1.conv1") + params("layer1.1.conv2") + params("layer1.1.conv3");
    let two_3x3_at_256 = 2 * 256 * 256 * 9;
    assert_eq!(bottleneck, 69_632);
    assert!((16..18).contains(&(two_3x3_at_256 / bottleneck)), "about 17× fewer weights");
    let out = assert_ok(&["summary", "--model", "densenet_bc100", "--input-size", "40x48"]);
    assert!(out.starts_with("densenet_bc100 on a 3×40×48 image"), "{out}");
    assert!(out.contains("total: 769,162 parameters"), "{out}");
    assert!(out.contains("features.denseblock3.denselayer16.conv2"), "{out}");
}

#[test]
fn the_default_run_reports_progress_and_accuracy() {
    let out = assert_ok(&["train", "--steps", "2", "--batch-size", "8", "--device", "cpu"]);
    assert!(out.contains("training resnet20 (272474 parameters) on cpu"), "{out}");
    assert!(out.contains("epoch 1: train loss"), "{out}");
    assert!(out.lines().last().unwrap_or_default().starts_with("final held-out accuracy: "), "{out}");
}

#[test]
fn bench_times_problems_writes_json_and_compares_two_runs() {
    let dir = workdir("bench");
    let (json, svg) = (dir.join("bench.json"), dir.join("roofline.svg"));
    let text = assert_ok(&[
        "bench",
        "--device",
        "cpu",
        "--suite",
        "memory",
        "--size-mb",
        "1",
        "--gemm-size",
        "48",
        "--repeats",
        "1",
        "--filter",
        "MiB",
        "--json",
        p(&json),
        "--plot",
        p(&svg),
    ]);
    assert!(text.starts_with("ceilings on cpu: copy "), "{text}");
    // The flat problems of the memory suite: copy, ReLU both ways, add, add_assign, SGD.
    assert!(text.contains("relu fwd 1 MiB") && text.contains("relu bwd 1 MiB"), "{text}");
    // JSON lines: the header (device, ceilings), then one row per line.
    let lines: Vec<serde_json::Value> =
        std::fs::read_to_string(&json).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let (doc, rows) = (&lines[0], &lines[1..]);
    assert_eq!(doc["tool"], "scratchnet bench");
    assert_eq!(rows.len(), 6, "{text}");
    for row in rows {
        assert!(row["median_ms"].as_f64().unwrap() > 0.0);
        assert!(row["gbs"].as_f64().unwrap() > 0.0);
        assert!(row["spec"]["op"].is_string() && row["key"].is_string());
    }
    let relu = rows.iter().find(|r| r["spec"]["op"] == "relu" && r["spec"]["pass"] == "forward").unwrap();
    // About 1 MiB (whole [N, 64, 28, 28] images), read once and written once.
    let numel = relu["spec"]["numel"].as_u64().unwrap();
    assert!((200_000..=262_144).contains(&numel), "{numel}");
    assert_eq!(relu["bytes"].as_f64(), Some(8.0 * numel as f64));
    assert!(doc["ceilings"]["copy_gbs"].as_f64().unwrap() > 0.0);
    assert!(std::fs::read_to_string(&svg).unwrap().contains("<circle"));

    // A run compared with itself is at parity, row by row and on average.
    let table = assert_ok(&["bench", "--compare", p(&json), p(&json)]);
    assert!(table.contains("geometric means:") && table.contains("1.00"), "{table}");
    assert!(!table.contains("0.99") && !table.contains("1.01"), "{table}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The inference suite times whole networks in eval mode; each row carries the spec that
/// `scripts/cpu_baseline.py` builds the same network from, its throughput and its GFLOP/s
/// (twice the multiply-adds `summary` counts, per image, times the batch).
#[test]
fn bench_times_whole_network_inference() {
    let dir = workdir("bench-inference");
    let json = dir.join("bench.jsonl");
    let args = ["bench", "--device", "cpu", "--suite", "inference", "--filter", "resnet20", "--batch", "3"];
    let text = assert_ok(
        &[&args[..], &["--repeats", "1", "--gemm-size", "48", "--size-mb", "1", "--json", p(&json)]].concat(),
    );
    assert!(text.contains("inference resnet20 b3 32x32"), "{text}");
    let lines: Vec<serde_json::Value> =
        std::fs::read_to_string(&json).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2, "the header and one row: {text}");
    let row = &lines[1];
    let spec = serde_json::json!({"op": "inference", "model": "resnet20", "batch": 3, "input": [3, 32, 32], "num_classes": 10});
    assert_eq!(row["spec"], spec);
    assert_eq!((row["suite"].as_str(), row["category"].as_str()), (Some("inference"), Some("inference")));
    // ResNet-20 does 40.8 million multiply-adds per 32×32 image, as `scratchnet summary` counts.
    let macs = row["flops"].as_f64().unwrap() / 2.0 / 3.0;
    assert!((40.0e6..41.0e6).contains(&macs), "{macs}");
    let ms = row["median_ms"].as_f64().unwrap();
    assert!((row["images_per_s"].as_f64().unwrap() * ms / 1e3 - 3.0).abs() < 1e-9);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bench_on_the_emulator_times_kernels_with_device_events() {
    let text = assert_ok(&[
        "bench",
        "--device",
        "emu",
        "--suite",
        "gemm",
        "--size-mb",
        "1",
        "--gemm-size",
        "32",
        "--filter",
        "sgemm",
        "--repeats",
        "1",
    ]);
    assert!(text.contains("sgemm 32x32x32"), "{text}");
}

#[test]
fn bench_refuses_bad_options_before_timing_anything() {
    let dir = workdir("bench-bad");
    let missing = dir.join("no/such/dir/out.json");
    assert_bad_input(&["bench", "--device", "cpu", "--suite", "resnet51"], "unknown suite 'resnet51'");
    assert_bad_input(&["bench", "--device", "cpu", "--variants", "some"], "--variants must be default or all");
    assert_bad_input(&["bench", "--device", "cpu", "--batch", "0"], "--batch must be between 1 and 4096");
    assert_bad_input(&["bench", "--device", "cpu", "--json", p(&missing)], "its directory does not exist");
    assert_bad_input(&["bench", "--compare", p(&missing), p(&missing)], "cannot read");
    let junk = dir.join("junk.json");
    std::fs::write(&junk, "{\"rows\": 3}").unwrap();
    assert_bad_input(
        &["bench", "--compare", p(&junk), p(&junk)],
        "is not a bench results file: its first line is not a header",
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn profile_times_every_layer_both_ways_and_writes_a_trace() {
    let dir = workdir("profile");
    let trace = dir.join("step.json");
    let text = assert_ok(&[
        "profile",
        "--device",
        "emu",
        "--model",
        "resnet20",
        "--batch-size",
        "2",
        "--input-size",
        "8",
        "--steps",
        "1",
        "--trace",
        p(&trace),
    ]);
    assert!(text.starts_with("resnet20 on emu in fp32, batch 2 of 3×8×8: step "), "{text}");
    assert!(text.contains("Conv2d backward") && text.contains("BatchNorm2d forward"), "{text}");
    assert!(text.contains("step peak"), "the emulator's allocator tracks the peak: {text}");
    let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&trace).unwrap()).unwrap();
    let events = doc["traceEvents"].as_array().unwrap();
    let spans: Vec<&serde_json::Value> = events.iter().filter(|e| e["ph"] == "X").collect();
    // ResNet-20 with its two projection shortcuts: 21 convolutions, 21 batch norms, the pool
    // and the classifier, each forward and backward; then the loss both ways and the optimizer.
    assert_eq!(spans.len(), 2 * 44 + 3);
    let forward: Vec<_> = spans.iter().filter(|e| e["cat"] == "forward").collect();
    for pair in forward.windows(2) {
        let end = pair[0]["ts"].as_f64().unwrap() + pair[0]["dur"].as_f64().unwrap();
        assert!(pair[1]["ts"].as_f64().unwrap() + 1e-3 >= end, "forward spans follow each other: {pair:?}");
    }
    // The first convolution keeps its input, the 2×3×8×8 images, for its filter gradient.
    let conv1 = forward.iter().find(|e| e["name"] == "conv1").unwrap();
    assert_eq!(conv1["args"]["kept_mib"].as_f64().unwrap() * (1 << 20) as f64, (2 * 3 * 8 * 8 * 4) as f64);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn profile_eval_times_the_inference_forward_pass_only() {
    let dir = workdir("profile-eval");
    let trace = dir.join("eval.json");
    let args = ["profile", "--device", "cpu", "--model", "resnet20", "--batch-size", "2", "--input-size", "8"];
    let text = assert_ok(&[&args[..], &["--steps", "2", "--eval", "--trace", p(&trace)]].concat());
    assert!(text.starts_with("resnet20 on cpu in fp32, batch 2 of 3×8×8: eval forward "), "{text}");
    // 21 convolutions, 21 batch norms, the pool and the classifier, forward only, and no
    // loss, optimizer or memory kept for backward.
    let rows: Vec<&str> = text.lines().filter(|l| l.contains(" fwd ") || l.contains(" bwd ")).collect();
    assert_eq!(rows.len(), 44, "{text}");
    assert!(rows.iter().all(|l| l.contains(" fwd ")), "{text}");
    for absent in ["backward", "loss", "optimizer", "kept for backward"] {
        assert!(!text.contains(absent), "{absent}: {text}");
    }
    // The figures are measured: every convolution took time and did its multiply-adds.
    let convs: Vec<&&str> = rows.iter().filter(|l| l.contains("Conv2d")).collect();
    assert_eq!(convs.len(), 21);
    for row in convs {
        let cols: Vec<&str> = row.split_whitespace().collect();
        let (ms, gflops): (f64, f64) = (cols[3].parse().unwrap(), cols[5].parse().unwrap());
        assert!(ms > 0.0 && gflops > 0.0, "{row}");
    }
    let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&trace).unwrap()).unwrap();
    let spans = doc["traceEvents"].as_array().unwrap().iter().filter(|e| e["ph"] == "X").count();
    assert_eq!(spans, 44, "one span per layer's forward");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn profile_refuses_bad_options() {
    let dir = workdir("profile-bad");
    let missing = dir.join("no/dir/t.json");
    assert_bad_input(&["profile", "--device", "cpu", "--steps", "0"], "--steps must be between 1 and 1000");
    assert_bad_input(&["profile", "--device", "cpu", "--batch-size", "1"], "--batch-size must be between 2 and 4096");
    assert_bad_input(&["profile", "--device", "cpu", "--model", "resnet21"], "resnet21");
    assert_bad_input(&["profile", "--device", "cpu", "--trace", p(&missing)], "its directory does not exist");
    assert_bad_input(&["profile", "--device", "cpu", "--input-size", "big"], "--input-size 'big' is not H or HxW");
    assert_bad_input(&["profile", "--device", "cpu", "--memory-efficient"], "resnet20 has no memory-efficient mode");
    assert_bad_input(&["train", "--model", "alexnet", "--memory-efficient"], "alexnet has no memory-efficient mode");
    assert_bad_input(&["train", "--device", "cpu", "--cuda-graph"], "--cuda-graph: needs a GPU device");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `scratchnet kernel`: every op family, every variant, on the emulator at its small default
/// shape. Each row is held to the op's reference with NaN-poisoned outputs; the table names
/// the kernels each variant launched with ptxas's figures for them (when nvcc built them).
#[test]
fn kernel_runs_every_variant_of_every_op_family_on_the_emulator() {
    let variants = |table: &str| table.lines().filter(|l| l.ends_with(" -") && !l.starts_with(' ')).count();
    for (op, rows) in [
        ("conv2d", 9),
        ("gemm", 5),
        ("batchnorm", 4),
        ("lrn", 2),
        ("pool", 2),
        ("concat", 2),
        ("elementwise", 3),
        ("sgd", 1),
    ] {
        let table = assert_ok(&["kernel", op, "--device", "emu", "--repeats", "1"]);
        assert!(table.starts_with(&format!("{op} on emu: ceilings copy ")), "{table}");
        assert_eq!(variants(&table), rows, "{table}");
        assert!(table.contains(&format!("{rows} variants: {rows} within tolerance, 0 not")), "{table}");
        if scratchnet::device::kernels::CUDA_ARCHS.is_empty() {
            assert!(table.contains("no ptxas figures"), "{table}");
        } else {
            assert!(table.contains(" regs, ") && table.contains("occupancy "), "{table}");
        }
    }
    // The three convolution kernels of each pass, by name.
    let table = assert_ok(&["kernel", "conv2d", "--device", "emu", "--pass", "wgrad", "--input", "2x4x6x6"]);
    for k in [
        "conv2d_bwd_filter_direct_f32",
        "conv2d_bwd_filter_implicit_gemm_f32",
        "conv2d_bwd_filter_implicit_gemm128_f32",
    ] {
        assert!(table.contains(k), "{table}");
    }
    assert!(!table.contains("fwd") && !table.contains("dgrad"), "{table}");
    // In BF16 the FP32 kernels run on rounded operands and the two tensor-core tiles join
    // them, all held to the reference on rounded operands.
    let table = assert_ok(&["kernel", "conv2d", "--device", "emu", "--precision", "bf16", "--input", "2x8x7x7"]);
    assert!(table.contains("15 variants: 15 within tolerance, 0 not"), "{table}");
    for k in
        ["round_precision_f32", "conv2d_fwd_tc64_bf16", "conv2d_bwd_data_tc128_bf16", "conv2d_bwd_filter_tc64_bf16"]
    {
        assert!(table.contains(k), "{table}");
    }
    let table = assert_ok(&["kernel", "gemm", "--device", "emu", "--precision", "tf32"]);
    assert!(table.contains("v7 tensor-core-128") && table.contains("7 variants: 7 within tolerance"), "{table}");
}

#[test]
fn kernel_refuses_bad_ops_shapes_and_passes() {
    assert_bad_input(&["kernel", "conv3d", "--device", "cpu"], "unknown op 'conv3d'");
    assert_bad_input(&["kernel", "conv2d", "--device", "cpu", "--input", "2x3"], "--input must be NxCxHxW");
    assert_bad_input(&["kernel", "conv2d", "--device", "cpu", "--input", "2xax3x3"], "is not sizes joined by x");
    assert_bad_input(&["kernel", "gemm", "--device", "cpu", "--gemm", "4x4"], "--gemm takes MxNxK");
    assert_bad_input(&["kernel", "pool", "--device", "cpu", "--pass", "dgrad"], "pool has no pass 'dgrad'");
    assert_bad_input(&["kernel", "lrn", "--device", "cpu", "--variants", "some"], "--variants must be default or all");
    assert_bad_input(&["kernel", "conv2d", "--device", "cpu", "--input", "1x4x5x5", "--weight", "3x3x3x3"], "conv2d");
}
