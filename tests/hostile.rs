//! Hostile and unlucky input at the command line: every run either makes progress or is
//! refused before training with one line and exit code 2; output files never replace what is
//! not ours, never overwrite an input, and never end up half-written or diverged; running out
//! of memory is an error, not an abort.

mod common;

use std::path::Path;

use common::*;
use scratchnet::data::npy;

fn train_args<'a>(data: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["train", "--device", "cpu", "--data", data, "--num-classes", "4"];
    args.extend_from_slice(extra);
    args
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// `infer` of ResNet-20 with 4 classes.
fn infer_args<'a>(w: &'a Path, x: &'a Path, out: &'a Path) -> [&'a str; 11] {
    ["infer", "--model", "resnet20", "--num-classes", "4", "--weights", p(w), "--input", p(x), "--output", p(out)]
}

fn npy_spec(x: &Path, y: &Path) -> String {
    format!("npy:{},{}", p(x), p(y))
}

/// The "N steps of B" of the first line.
fn planned_steps(out: &str) -> usize {
    let line = out.lines().next().unwrap_or_default();
    let before = line.rsplit_once(" step").map_or("", |(b, _)| b);
    before.rsplit(' ').next().and_then(|n| n.parse().ok()).unwrap_or(usize::MAX)
}

#[test]
fn every_split_either_trains_or_is_refused_before_training() {
    let dir = workdir("loop");
    // ResNet-20 on 4×4 images ends in 1×1 maps: its last batch norms need two images a batch.
    let (x2, y2) = write_npy(&dir, "two", 2, 4);
    let two = npy_spec(&x2, &y2);
    // Two images, the last tenth held out (one), a batch of one left: the loop that never
    // made a step now never starts.
    let args = train_args(&two, &["--batch-size", "2", "--steps", "1"]);
    assert_bad_input(&args, "the training split has 1 image, too few for one step: batch norm layer3.0.bn1");
    assert_bad_input(&args, "or --holdout 0 to train on all 2");
    let args = train_args(&two, &["--batch-size", "2", "--epochs", "1"]);
    assert_bad_input(&args, "too few for one step");
    // Holding out nothing trains on both.
    let out = assert_ok(&train_args(&two, &["--batch-size", "2", "--steps", "1", "--holdout", "0"]));
    assert!(out.contains("with 2 training images and none held out (no evaluation), 1 step of 2"), "{out}");
    // A batch of one where two are needed.
    let args = train_args(&two, &["--batch-size", "1", "--holdout", "0"]);
    assert_bad_input(&args, "--batch-size 1 is too small for resnet20: batch norm layer3.0.bn1 sees 1×1 maps");
    // One image in all: nothing can be held out, and there is nothing to fix but the data.
    let (x1, y1) = write_npy(&dir, "one", 1, 4);
    let one = npy_spec(&x1, &y1);
    let args = train_args(&one, &["--batch-size", "2"]);
    assert_bad_input(&args, "the training split has 1 image, too few for one step");
    let out = scratchnet(&args);
    assert!(!stderr(&out).contains("--holdout"), "{}", stderr(&out));

    // A batch larger than the split: one short batch per epoch.
    let (x5, y5) = write_npy(&dir, "five", 5, 4);
    let out = assert_ok(&train_args(&npy_spec(&x5, &y5), &["--batch-size", "64", "--epochs", "2", "--holdout", "0"]));
    assert_eq!(planned_steps(&out), 2, "{out}");
    assert_eq!(out.lines().filter(|l| l.starts_with("epoch ")).count(), 2, "{out}");
    // A last batch of one is left out where batch norm needs two (9 = 4 + 4 + 1) ...
    let (x9, y9) = write_npy(&dir, "nine", 9, 4);
    let out = assert_ok(&train_args(&npy_spec(&x9, &y9), &["--batch-size", "4", "--epochs", "1", "--holdout", "0"]));
    assert_eq!(planned_steps(&out), 2, "{out}");
    // ... and kept where it is not (8×8 images leave 2×2 maps).
    let (x9, y9) = write_npy(&dir, "nine8", 9, 8);
    let out = assert_ok(&train_args(&npy_spec(&x9, &y9), &["--batch-size", "4", "--epochs", "1", "--holdout", "0"]));
    assert_eq!(planned_steps(&out), 3, "{out}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn held_out_images_are_chosen_by_the_user() {
    let dir = workdir("heldout");
    let (x, y) = write_npy(&dir, "train", 8, 8);
    let data = npy_spec(&x, &y);
    let out = assert_ok(&train_args(&data, &["--batch-size", "4", "--steps", "2", "--holdout", "0.5"]));
    assert!(out.contains("with 4 training and 4 held-out images"), "{out}");
    assert!(out.contains("held-out loss"), "{out}");
    let out = assert_ok(&train_args(&data, &["--batch-size", "4", "--steps", "2", "--holdout", "0"]));
    assert!(out.contains("with 8 training images and none held out (no evaluation)"), "{out}");
    assert!(out.contains("| nothing held out |") && !out.contains("final held-out accuracy"), "{out}");
    // Another source's images, all of them.
    let (vx, vy) = write_npy(&dir, "val", 3, 8);
    let val = npy_spec(&vx, &vy);
    let out = assert_ok(&train_args(&data, &["--batch-size", "4", "--steps", "2", "--val-data", &val]));
    assert!(out.contains("with 8 training and 3 held-out images"), "{out}");
    assert!(out.contains("final held-out accuracy"), "{out}");
    // ... which must fit the training images and the model's classes.
    let (bx, by) = write_npy(&dir, "big", 3, 12);
    let big = npy_spec(&bx, &by);
    let args = train_args(&data, &["--steps", "1", "--val-data", &big]);
    assert_bad_input(&args, "--val-data: its images are 3×12×12, the training images 3×8×8");
    std::fs::write(&vy, npy::encode_i64(&[3], &[0, 1, 9])).unwrap();
    let args = train_args(&data, &["--steps", "1", "--val-data", &val]);
    assert_bad_input(&args, "the held-out data has labels up to 9, outside the model's 4 classes");
    for bad in ["1", "-0.1", "nan", "1.5"] {
        assert_bad_input(&train_args(&data, &["--holdout", bad]), "--holdout must be a fraction in [0, 1)");
    }
    assert_bad_input(&train_args(&data, &["--holdout", "0.1", "--val-data", &val]), "cannot be used with");
    assert_bad_input(&train_args(&data, &["--val-data", "imagenet"]), "unknown data source 'imagenet'");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn flags_out_of_range_are_refused() {
    for (extra, needle) in [
        (&["--batch-size", "0"][..], "--batch-size must be at least 1"),
        (&["--lr", "nan"], "--lr must be a non-negative number"),
        (&["--lr", "-0.1"], "--lr must be a non-negative number"),
        (&["--momentum", "-1"], "--momentum must be a non-negative number"),
        (&["--warmup-epochs", "inf"], "--warmup-epochs must be a non-negative number"),
        (&["--epochs", "0"], "--epochs must be at least 1"),
        (&["--steps", "0"], "--steps must be at least 1"),
        (&["--num-classes", "0"], "the number of classes must be between 2 and 100000, got 0"),
        (&["--num-classes", "1"], "the number of classes must be between 2 and 100000, got 1"),
        (&["--device", "cuda:999"], "cuda"),
        (&["--device", "cuda:-1"], "cuda"),
    ] {
        let mut args = vec!["train"];
        args.extend_from_slice(extra);
        assert_bad_input(&args, needle);
    }
    for command in ["summary", "profile"] {
        for size in ["0x0", "0", "32x0"] {
            assert_bad_input(&[command, "--model", "resnet20", "--input-size", size], "is empty");
        }
    }
    assert_bad_input(
        &["infer", "--model", "resnet20", "--weights", "w", "--input", "x", "--output", "y", "--batch-size", "0"],
        "--batch-size must be at least 1",
    );
}

#[test]
fn inputs_too_small_for_the_model_name_the_layer() {
    let e = stderr(&scratchnet(&["summary", "--model", "densenet121", "--input-size", "28"]));
    assert!(e.contains("at least 29×29") && e.contains("features.transition3.pool would be empty"), "{e}");
    assert_bad_input(&["summary", "--model", "densenet_bc100", "--input-size", "3"], "features.transition2.pool");
    assert_bad_input(&["summary", "--model", "alexnet", "--input-size", "64"], "fc6 reads exactly 256×6×6 values");
    // Small, but not too small: every layer keeps at least one pixel.
    let out = assert_ok(&["summary", "--model", "resnet18", "--input-size", "1"]);
    assert!(out.contains("layer4.1.bn2"), "{out}");
}

#[test]
fn images_with_nan_or_infinity_are_refused() {
    let dir = workdir("nan");
    let (x, y) = write_npy(&dir, "", 4, 8);
    let mut values = npy::read(&x).unwrap().to_vec::<f32>().unwrap();
    values[2 * 192 + 5] = f32::NAN;
    std::fs::write(&x, npy::encode_f32(&[4, 3, 8, 8], &values)).unwrap();
    let data = npy_spec(&x, &y);
    assert_bad_input(&train_args(&data, &["--steps", "1"]), "image 2 holds NaN (value 5 of it)");
    values[2 * 192 + 5] = f32::INFINITY;
    std::fs::write(&x, npy::encode_f32(&[4, 3, 8, 8], &values)).unwrap();
    assert_bad_input(&train_args(&data, &["--steps", "1"]), "image 2 holds inf");
    let (w, out) = (dir.join("w.safetensors"), dir.join("logits.npy"));
    let (gx, gy) = write_npy(&dir, "good", 4, 8);
    assert_ok(&train_args(&npy_spec(&gx, &gy), &["--steps", "1", "--holdout", "0", "--save", p(&w)]));
    let args = infer_args(&w, &x, &out);
    assert_bad_input(&args, "image 2 holds inf");
    assert!(!out.exists());
    // Float or negative labels.
    std::fs::write(&gy, npy::encode_f32(&[4], &[0.0, 1.0, 2.0, 3.0])).unwrap();
    assert_bad_input(&train_args(&npy_spec(&gx, &gy), &["--steps", "1"]), "integer labels");
    std::fs::write(&gy, npy::encode_i64(&[4], &[0, -1, 2, 3])).unwrap();
    assert_bad_input(&train_args(&npy_spec(&gx, &gy), &["--steps", "1"]), "label -1 at position 1 is negative");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn outputs_never_replace_what_is_not_ours() {
    let dir = workdir("outputs");
    let (x, y) = write_npy(&dir, "", 4, 8);
    let data = npy_spec(&x, &y);
    let save = |path: &str| -> Vec<String> {
        train_args(&data, &["--steps", "1", "--holdout", "0", "--save", path]).into_iter().map(String::from).collect()
    };
    let refused_before_training = |path: &str, needle: &str| {
        let args = save(path);
        let args = strs(&args);
        let out = scratchnet(&args);
        assert_refused(&out, &args, needle);
        assert!(!stdout(&out).contains("training"), "refused only after training: {}", stdout(&out));
    };
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::fs::FileTypeExt;
        refused_before_training("/dev/null", "/dev/null: is a character device; only a regular file is replaced");
        assert!(std::fs::metadata("/dev/null").unwrap().file_type().is_char_device());
        // A FIFO, made with mkfifo(3).
        let fifo = dir.join("pipe");
        let c_path = std::ffi::CString::new(p(&fifo)).unwrap();
        unsafe extern "C" {
            fn mkfifo(path: *const std::ffi::c_char, mode: u32) -> i32;
        }
        // SAFETY: a valid C string; mkfifo only creates the node.
        assert_eq!(unsafe { mkfifo(c_path.as_ptr(), 0o600) }, 0);
        refused_before_training(p(&fifo), "is a FIFO");
        assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());
        // A symbolic link is followed: the link stays, its target gets the new weights.
        std::fs::create_dir_all(dir.join("run1")).unwrap();
        std::fs::write(dir.join("run1/w.safetensors"), b"stale").unwrap();
        std::os::unix::fs::symlink("run1/w.safetensors", dir.join("latest.safetensors")).unwrap();
        assert_ok(&strs(&save(p(&dir.join("latest.safetensors")))));
        assert!(std::fs::symlink_metadata(dir.join("latest.safetensors")).unwrap().file_type().is_symlink());
        let mut model = scratchnet::models::build("resnet20", 4, 0).unwrap();
        scratchnet::checkpoint::load(model.as_mut(), &dir.join("run1/w.safetensors")).unwrap();
    }
    refused_before_training(p(&dir), "is a directory; only a regular file is replaced");
    refused_before_training(p(&dir.join("missing/w.safetensors")), "its directory does not exist");
    // A directory no file can be created in (/proc refuses even root).
    if Path::new("/proc/self").exists() {
        refused_before_training("/proc/w.safetensors", "/proc/w.safetensors: cannot be written");
    }
    // Temporary files left by processes that no longer exist are removed by the next save.
    let stale = dir.join(".w.safetensors.2000000000.3.tmp");
    std::fs::write(&stale, vec![0u8; 1 << 16]).unwrap();
    let w = dir.join("w.safetensors");
    assert_ok(&strs(&save(p(&w))));
    assert!(!stale.exists(), "the stale temporary file is still there");

    // An output that is one of the inputs.
    let logits = dir.join("logits.npy");
    let infer = |output: &Path| infer_args(&w, &x, output).map(String::from);
    let weights_before = std::fs::read(&w).unwrap();
    for (output, flag) in [(&w, "--weights"), (&x, "--input")] {
        let args = infer(output);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_bad_input(&args, &format!("--output would overwrite the {flag} file it reads"));
    }
    assert_eq!(std::fs::read(&w).unwrap(), weights_before);
    let args = infer(&logits);
    assert_ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_bad_input(&strs(&save(p(&x))), "--save would overwrite the --data file it reads");
    let log = dir.join("metrics.csv");
    let mut args = save(p(&log));
    args.extend(["--log".to_string(), p(&log).to_string()]);
    assert_bad_input(&strs(&args), "--log and --save name the same file");
    assert_bad_input(
        &["bench", "--device", "cpu", "--json", p(&log), "--plot", p(&log)],
        "--plot and --json name the same file",
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_diverged_model_is_not_saved_over_a_good_one() {
    let dir = workdir("diverged");
    let (x, y) = write_npy(&dir, "", 4, 8);
    let data = npy_spec(&x, &y);
    let w = dir.join("w.safetensors");
    assert_ok(&train_args(&data, &["--steps", "1", "--save", p(&w)]));
    let good = std::fs::read(&w).unwrap();
    let args = train_args(&data, &["--lr", "1e38", "--momentum", "0", "--steps", "1", "--save", p(&w)]);
    // The step's progress line comes first on stderr; the error is the last line.
    let out = scratchnet(&args);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{err}");
    assert!(errors[0].contains("nothing was saved") && errors[0].contains("try a smaller --lr"), "{err}");
    assert_eq!(std::fs::read(&w).unwrap(), good, "the good weights were replaced");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Runs the binary with its address space limited to `kib` KiB, as `ulimit -v` does (Linux
/// enforces it), with two threads and two malloc arenas, so that what the limit leaves for
/// tensors does not depend on the machine's core count.
#[cfg(target_os = "linux")]
fn with_memory_limit(kib: usize, args: &[&str]) -> std::process::Output {
    let mut command = std::process::Command::new("sh");
    command.env("RAYON_NUM_THREADS", "2").env("MALLOC_ARENA_MAX", "2");
    command.arg("-c").arg(format!("ulimit -v {kib} && exec \"$0\" \"$@\"")).arg(env!("CARGO_BIN_EXE_scratchnet"));
    command.args(args);
    scratchnet_in(&mut command, args)
}

#[cfg(target_os = "linux")]
#[test]
fn running_out_of_memory_is_an_error_not_an_abort() {
    let dir = workdir("oom");
    // Sixteen ImageNet-sized images: ResNet-50's activations at batch 16 need gigabytes.
    let (x, y) = write_npy(&dir, "", 16, 224);
    let data = npy_spec(&x, &y);
    let w = dir.join("w.safetensors");
    std::fs::write(&w, b"an older checkpoint").unwrap();
    for (model, needle) in [
        ("resnet50", "; try a smaller --batch-size"),
        ("densenet121", "; try a smaller --batch-size, or --memory-efficient"),
    ] {
        let args = train_args(&data, &["--model", model, "--batch-size", "16", "--steps", "1", "--holdout", "0"]);
        let mut args = args.to_vec();
        args.extend(["--save", p(&w)]);
        let out = with_memory_limit(400_000, &args);
        assert_refused(&out, &args, "error: out of memory on cpu: ");
        let err = stderr(&out);
        assert!(err.contains("of step 1 at batch 16") && err.contains(needle), "{err}");
        assert_eq!(std::fs::read(&w).unwrap(), b"an older checkpoint");
    }
    // Where no error can be returned (here, building AlexNet's 61 million weights), the
    // guard still ends the run with one line and exit code 2.
    let args = ["summary", "--model", "alexnet"];
    let out = with_memory_limit(150_000, &args);
    assert_refused(&out, &args, "error: out of memory: ");
    assert!(stderr(&out).contains("MB of host memory could not be allocated"), "{}", stderr(&out));
    assert_eq!(temp_count(&dir), 0);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[cfg(target_os = "linux")]
fn temp_count(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|d| d.flatten().filter(|e| e.file_name().to_string_lossy().ends_with(".tmp")).count())
        .unwrap_or(0)
}

#[test]
fn hostile_files_end_the_command_with_one_line() {
    let dir = workdir("files");
    let (x, y) = write_npy(&dir, "", 4, 8);
    // An .npy header that claims 10¹² images in a file of a few hundred bytes.
    let liar = dir.join("liar.npy");
    let mut bytes = npy::encode_f32(&[1, 3, 8, 8], &[0.0; 192]);
    let at = bytes.windows(12).position(|w| w == b"(1, 3, 8, 8)").unwrap();
    bytes.splice(at..at + 12, b"(1000000000000, 3, 8, 8)".iter().copied());
    bytes.truncate(400);
    std::fs::write(&liar, &bytes).unwrap();
    let data = npy_spec(&liar, &y);
    assert_bad_input(&train_args(&data, &["--steps", "1"]), "liar.npy: ");
    // A safetensors file whose header length is 2⁶³.
    let w = dir.join("w.safetensors");
    let mut weights = (1u64 << 63).to_le_bytes().to_vec();
    weights.extend_from_slice(b"{}");
    std::fs::write(&w, &weights).unwrap();
    let out = dir.join("logits.npy");
    let args = ["infer", "--model", "resnet20", "--weights", p(&w), "--input", p(&x), "--output", p(&out)];
    assert_bad_input(&args, "the header length field says 9223372036854775808 bytes");
    assert!(!out.exists());
    // CIFAR-10 batches with a truncated last record.
    let cifar = dir.join("cifar");
    std::fs::create_dir_all(&cifar).unwrap();
    for name in ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"] {
        std::fs::write(cifar.join(format!("{name}.bin")), vec![1u8; 3073 * 2 - 1000]).unwrap();
    }
    let data = format!("cifar10:{}", p(&cifar));
    assert_bad_input(&["train", "--data", &data, "--steps", "1"], "record 2 of 2 is truncated: 2073 of 3073 bytes");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[cfg(target_os = "linux")]
#[test]
fn inputs_that_are_not_regular_files_are_refused_not_waited_on() {
    let dir = workdir("special-inputs");
    let (x, y) = write_npy(&dir, "", 4, 8);
    // A FIFO with no writer would block a plain read forever; /dev/zero would never end.
    let fifo = dir.join("pipe.npy");
    let c_path = std::ffi::CString::new(p(&fifo)).unwrap();
    unsafe extern "C" {
        fn mkfifo(path: *const std::ffi::c_char, mode: u32) -> i32;
    }
    // SAFETY: a valid C string; mkfifo only creates the node.
    assert_eq!(unsafe { mkfifo(c_path.as_ptr(), 0o600) }, 0);
    let data = npy_spec(&fifo, &y);
    assert_bad_input(&train_args(&data, &["--steps", "1"]), "pipe.npy: cannot read: it is not a regular file");
    let data = npy_spec(&x, &y);
    assert_bad_input(&train_args(&data, &["--steps", "1", "--init", "/dev/zero"]), "/dev/zero: cannot read");
    assert_bad_input(&train_args(&data, &["--steps", "1", "--init", p(&dir)]), "cannot read: it is a directory");
    std::fs::remove_dir_all(&dir).unwrap();
}
