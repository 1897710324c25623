//! Training in a low precision (`--precision`): one step of whole networks in BF16 on the
//! emulator against the same step on the CPU, FP16 loss scaling through an overflow, and the
//! default job trained in BF16 to the accuracy of FP32.

use scratchnet::autograd::{Graph, Var};
use scratchnet::nn::Sgd;
use scratchnet::ops::{ExecOptions, Precision};
use scratchnet::selftest::rel_l2;
use scratchnet::train::{LossScaler, ScaledStep, TrainOptions, backward_scaled, train};
use scratchnet::{DType, Device, Tensor};

/// The labels of a batch of `n`: 0, 1, …, 4, 0, 1, …
fn labels(n: usize) -> Tensor {
    Tensor::from_vec([n], (0..n as i64).map(|i| i % 5).collect::<Vec<i64>>()).expect("labels")
}

/// A network's parameters (by name) and then its buffers as one flat vector.
fn state_of(model: &dyn scratchnet::models::Model) -> (Vec<(String, Vec<f64>)>, Vec<f64>) {
    let params = model.params().iter().map(|p| (p.name().to_string(), p.value.to_f64_vec().expect("param"))).collect();
    let buffers = model.buffers().into_iter().flat_map(|(_, t)| t.to_f64_vec().expect("buffer")).collect();
    (params, buffers)
}

/// What one step did: the loss, the update of each parameter (by name), the buffers after.
struct Step {
    loss: f64,
    update: Vec<(String, Vec<f64>)>,
    buffers: Vec<f64>,
}

impl Step {
    /// The update of every parameter as one vector.
    fn whole_update(&self) -> Vec<f64> {
        self.update.iter().flat_map(|(_, u)| u.iter().copied()).collect()
    }

    /// The update of the classifier's weights, the last layer.
    fn classifier_update(&self) -> &[f64] {
        let fc = self.update.iter().rev().find(|(n, _)| n.ends_with("weight")).expect("a last weight");
        &fc.1
    }
}

/// One SGD step of a whole network in `precision` on `device`: the loss, the change of every
/// parameter (one flat vector), and the buffers after the step (batch norm's running
/// statistics).
fn one_step_of(name: &str, x: &Tensor, precision: Precision, device: Device) -> Step {
    let mut model = scratchnet::models::build(name, 5, 11).expect("model");
    let (before, _) = state_of(model.as_ref());
    model.to_device(device).expect("to device");
    let mut opt = Sgd::new(0.05, 0.9, 5e-4);
    let mut g = Graph::new().with_options(ExecOptions::with_precision(precision));
    let logits = model.forward(&mut g, &Var::constant(x.to_device(device).expect("x"))).expect("forward");
    let loss = g.cross_entropy(&logits, &labels(x.dims()[0]).to_device(device).expect("y")).expect("loss");
    let value = loss.value().item().expect("loss value");
    g.backward(&loss).expect("backward").accumulate_into(model.params_mut()).expect("grads");
    opt.step(model.params_mut()).expect("sgd");
    let (after, buffers) = state_of(model.as_ref());
    let update = after
        .into_iter()
        .zip(&before)
        .map(|((name, a), (_, b))| (name, a.iter().zip(b).map(|(a, b)| a - b).collect()))
        .collect();
    Step { loss: value, update, buffers }
}

/// The emulator runs the BF16 step with its kernels (tensor cores where they exist, rounded
/// operands otherwise) and must land where the CPU's rounding lands.
///
/// How close is close: the two devices add in FP32 in different orders, so now and then a sum
/// falls on the other side of a BF16 rounding boundary and comes out one BF16 step (2^-8)
/// apart. Every layer rounds its result to BF16 again, which turns the small differences such
/// a flip causes downstream into more one-step flips, so after twenty layers and back the two
/// steps differ at the level of BF16's own noise, as any two correct BF16 implementations
/// would (a perturbation of 1e-6 in one batch-norm weight does as much on the CPU alone).
/// (TF32 on the CPU moves the whole update by 7% when one batch-norm weight changes by 1e-6
/// and a single rounding flips.) The forward pass has fewer layers to cascade through, so the
/// loss, the running statistics (batch norm's batch means and variances) and the classifier's
/// update (from the forward features and the loss) stay closer; the loss is held to half its
/// distance from FP32. The kernels themselves are compared one by one, where no cascade
/// blurs them, in tests/tensor_cores.rs and `scratchnet selftest`.
#[test]
fn a_bf16_step_of_resnet20_and_densenet_bc100_on_emu_matches_the_cpu_in_bf16() {
    for (name, size) in [("resnet20", 16), ("densenet_bc100", 8)] {
        let x = Tensor::randn([2, 3, size, size], 0.0, 1.0, DType::F32, 12);
        let cpu = one_step_of(name, &x, Precision::Bf16, Device::Cpu);
        let emu = one_step_of(name, &x, Precision::Bf16, Device::Emu(0));
        let fp32 = one_step_of(name, &x, Precision::Fp32, Device::Cpu);
        let distance = |a: &Step, b: &Step| {
            (
                (a.loss - b.loss).abs() / b.loss.abs(),
                rel_l2(&a.buffers, &b.buffers),
                rel_l2(a.classifier_update(), b.classifier_update()),
                rel_l2(&a.whole_update(), &b.whole_update()),
            )
        };
        let (device, precision) = (distance(&emu, &cpu), distance(&fp32, &cpu));
        let show = |(a, b, c, d): (f64, f64, f64, f64)| format!("{a:.1e} {b:.1e} {c:.1e} {d:.1e}");
        eprintln!(
            "{name}: loss, running statistics, classifier update, whole update: emu vs cpu in bf16 {}; \
             fp32 vs bf16 on cpu {}",
            show(device),
            show(precision)
        );
        let (loss, buffers, classifier, whole) = device;
        assert!(loss < 1e-3 && loss < precision.0 / 2.0, "{name}: loss {} vs {}", emu.loss, cpu.loss);
        assert!(buffers < 2e-3, "{name}: running statistics differ by {buffers:e}");
        assert!(classifier < 3e-2, "{name}: classifier update differs by {classifier:e}");
        assert!(whole < 0.5, "{name}: the whole update differs by {whole:e}, beyond BF16's noise");
    }
}

/// A scale so large that the first step's gradients overflow FP16: the step is skipped (the
/// weights stay to the bit), the scale halves, and after enough halvings the steps apply again
/// and the weights move.
/// A BF16 graph keeps the activations its backward pass reads as 16-bit copies: half the
/// memory `profile` counts, one copy for an activation that two entries keep (a ReLU's mask
/// that is also the next convolution's input; were they two copies the memory would not
/// halve), and the step it computes is the step with FP32 copies, bit for bit where every
/// kept activation is either rounded by its backward anyway or already a BF16 value
/// (ResNet-20: convolution inputs, convolution outputs into batch norm, ReLU masks), and
/// within BF16's rounding where a backward reads a value the forward had in FP32 (ResNet-18's
/// max pooling, whose maxima the rounding leaves in place unless it makes a tie, and
/// DenseNet's batch norms after an average pooling). DenseNet's memory-efficient segments
/// keep their input features as 16-bit copies too, and run their forward pass on them.
#[test]
fn bf16_graphs_keep_activations_in_16_bits_with_half_the_memory() {
    // (model, image size, device, memory-efficient, bit for bit)
    let cases = [
        ("resnet20", 16, Device::Cpu, false, true),
        ("resnet20", 8, Device::Emu(0), false, true),
        ("resnet18", 32, Device::Cpu, false, false),
        ("densenet_bc100", 16, Device::Cpu, false, false),
        ("densenet_bc100", 16, Device::Cpu, true, false),
    ];
    for (name, size, device, memory_efficient, exact) in cases {
        let run = |keep_activations_fp32: bool| {
            let mut m = scratchnet::models::build(name, 5, 3).expect("model");
            m.set_memory_efficient(memory_efficient);
            m.to_device(device).expect("to device");
            let x = Tensor::randn([2, 3, size, size], 0.0, 1.0, DType::F32, 4).to_device(device).expect("x");
            let exec = ExecOptions { keep_activations_fp32, ..ExecOptions::with_precision(Precision::Bf16) };
            let mut g = Graph::new().with_options(exec);
            g.start_profile(device).expect("profile");
            let logits = m.forward(&mut g, &Var::constant(x)).expect("forward");
            let loss = g.cross_entropy(&logits, &labels(2).to_device(device).expect("y")).expect("loss");
            let value = loss.value().item().expect("loss value");
            let mut grads = g.backward(&loss).expect("backward");
            let profile = grads.take_profile().expect("a profile");
            let kept = profile.kept_bytes.iter().sum::<usize>() + profile.loss_kept_bytes;
            let flat: Vec<f64> = m
                .params()
                .iter()
                .flat_map(|p| grads.of_param(p).map(|t| t.to_f64_vec().expect("grad")).unwrap_or_default())
                .collect();
            (value, flat, kept)
        };
        let (loss32, grads32, kept32) = run(true);
        let (loss16, grads16, kept16) = run(false);
        let name = if memory_efficient { format!("{name} (memory-efficient)") } else { name.to_string() };
        eprintln!("{name} on {device}: kept for backward {kept32} bytes with FP32 copies, {kept16} with BF16 ones");
        // Batch statistics, probabilities and labels stay FP32: a little over half (3% over
        // for ResNet-20's 8×8 images, whose activations are small beside its statistics).
        assert!(
            kept32 <= 2 * kept16 && 2 * kept16 <= kept32 + kept32 / 20,
            "{name} on {device}: {kept16} bytes kept is not half of {kept32}"
        );
        if memory_efficient {
            // The segments' forward pass runs on the copies: the loss moves within BF16's rounding.
            assert!((loss16 - loss32).abs() < 1e-2 * loss32.abs(), "{name}: loss {loss16} against {loss32}");
        } else {
            assert_eq!(loss16.to_bits(), loss32.to_bits(), "{name}: the forward pass is the same");
        }
        assert_eq!(grads16.len(), grads32.len());
        if memory_efficient {
            // Its forward pass differs, and a difference anywhere moves a batch of two's BF16
            // gradients by tens of percent (one pixel changed by 0.03 moves them by 36%): the
            // segments' own test (src/autograd/recompute.rs) compares them where it can.
        } else if exact {
            let differ = grads16.iter().zip(&grads32).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
            assert_eq!(differ, 0, "{name} on {device}: {differ} gradient values differ");
        } else {
            let err = rel_l2(&grads16, &grads32);
            eprintln!("{name}: gradients with BF16 copies differ by {err:.2e} (relative L2)");
            assert!(err < 2e-2, "{name}: gradients differ by {err:.2e}");
        }
    }
}

#[test]
fn fp16_loss_scaling_skips_an_overflowing_step_and_recovers() {
    let mut model = scratchnet::models::build("resnet20", 5, 3).expect("model");
    let mut opt = Sgd::new(0.05, 0.9, 0.0);
    let x = Tensor::randn([4, 3, 8, 8], 0.0, 1.0, DType::F32, 5);
    let initial = 2f64.powi(40);
    let mut scaler = LossScaler::new(initial, 3);
    let weights = |m: &dyn scratchnet::models::Model| -> Vec<f32> {
        m.params().iter().flat_map(|p| p.value.to_vec::<f32>().expect("param")).collect()
    };
    let before = weights(model.as_ref());
    let mut verdicts = Vec::new();
    for _ in 0..40 {
        let mut g = Graph::new().with_options(ExecOptions::with_precision(Precision::Fp16));
        let logits = model.forward(&mut g, &Var::constant(x.clone())).expect("forward");
        let loss = g.cross_entropy(&logits, &labels(4)).expect("loss");
        assert!(loss.value().item().expect("loss").is_finite());
        let verdict = backward_scaled(g, &loss, model.params_mut(), &mut scaler).expect("backward");
        if verdict == ScaledStep::Apply {
            opt.step(model.params_mut()).expect("sgd");
        } else {
            assert!(model.params().iter().all(|p| p.grad.is_none()), "a skipped step leaves no gradient");
        }
        if verdicts.is_empty() {
            assert_eq!(verdict, ScaledStep::Skip, "2^40 must overflow FP16");
            assert_eq!(weights(model.as_ref()), before, "a skipped step changes no weight");
            assert_eq!(scaler.scale(), initial / 2.0);
        }
        verdicts.push(verdict);
    }
    let first_apply = verdicts.iter().position(|&v| v == ScaledStep::Apply).expect("the scale never came down");
    assert_eq!(scaler.skipped(), verdicts.iter().filter(|&&v| v == ScaledStep::Skip).count());
    // Every skip before the first good step halved the scale from 2^40, and the scale that
    // worked is below FP16's range limit divided by the loss gradient's size.
    assert!(first_apply >= 10, "2^{} should still overflow", 40 - first_apply);
    assert!(verdicts[first_apply..].contains(&ScaledStep::Apply));
    assert_ne!(weights(model.as_ref()), before, "the good steps moved the weights");
}

/// The default job (`scratchnet train`: ResNet-20 on the built-in synthetic set, four
/// epochs), in FP32 and in BF16 on the CPU: the same held-out accuracy to within a point.
/// Minutes of training, so it runs in CI (.ci/run) rather than with every `cargo test`.
#[test]
#[ignore = "trains the default job twice (minutes); .ci/run runs it"]
fn bf16_on_the_cpu_trains_the_default_job_to_the_accuracy_of_fp32() {
    let accuracy = |precision: Precision| -> f64 {
        let o = TrainOptions { exec: ExecOptions::with_precision(precision), ..Default::default() };
        let (_, reports) = train(&o, |_| {}).expect("training");
        reports.last().and_then(|r| r.test_accuracy).expect("a held-out accuracy")
    };
    let (fp32, bf16) = (accuracy(Precision::Fp32), accuracy(Precision::Bf16));
    eprintln!("held-out accuracy of the default job: fp32 {:.1}%, bf16 {:.1}%", fp32 * 100.0, bf16 * 100.0);
    assert!(fp32 > 0.95, "fp32 reached only {fp32}");
    assert!((bf16 - fp32).abs() <= 0.01, "bf16 {bf16} vs fp32 {fp32}");
}
