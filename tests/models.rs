//! Every model: its parameter count against the published figure, torchvision's names, and a
//! forward pass at a small input on the CPU.

use scratchnet::models::{self, MODEL_NAMES};
use scratchnet::{DType, Device, Graph, Tensor, Var};

/// Trainable parameters with 1000 classes (10 for the CIFAR nets), as torchvision's models
/// report them (`sum(p.numel() for p in model.parameters())`) and as the papers list them.
const PUBLISHED: &[(&str, usize)] = &[
    ("alexnet", 60_965_224),
    ("resnet18", 11_689_512),
    ("resnet34", 21_797_672),
    ("resnet50", 25_557_032),
    ("resnet101", 44_549_160),
    ("resnet152", 60_192_808),
    ("resnet20", 272_474),
    ("densenet121", 7_978_856),
    ("densenet169", 14_149_480),
    ("densenet201", 20_013_928),
    ("densenet161", 28_681_000),
    ("densenet_bc100", 769_162),
];

#[test]
fn parameter_counts_match_the_published_figures() {
    for &(name, want) in PUBLISHED {
        let m = models::build(name, models::default_num_classes(name), 0).unwrap();
        assert_eq!(m.num_params(), want, "{name}");
    }
}

#[test]
fn the_cifar_resnets_grow_by_six_layers_per_step() {
    // resnet(6n+2): each extra block per stage adds two 3×3 convolutions and two batch norms
    // at each of 16, 32 and 64 channels.
    let per_block = |c: usize| 2 * (c * c * 9) + 2 * (2 * c);
    let extra: usize = [16, 32, 64].iter().map(|&c| per_block(c)).sum();
    let mut previous = models::build("resnet20", 10, 0).unwrap().num_params();
    for name in ["resnet32", "resnet44", "resnet56"] {
        let n = models::build(name, 10, 0).unwrap().num_params();
        assert_eq!(n - previous, 2 * extra, "{name}");
        previous = n;
    }
}

#[test]
fn names_follow_torchvision() {
    let names = |model: &str| -> Vec<String> {
        let m = models::build(model, 1000, 0).unwrap();
        let mut v: Vec<String> = m.params().iter().map(|p| p.name().to_string()).collect();
        v.extend(m.buffers().into_iter().map(|(n, _)| n));
        v
    };
    let alexnet = names("alexnet");
    for n in ["conv1.weight", "conv2.bias", "conv5.weight", "fc6.weight", "fc8.bias"] {
        assert!(alexnet.contains(&n.to_string()), "alexnet lacks {n}");
    }
    let r50 = names("resnet50");
    for n in [
        "conv1.weight",
        "bn1.running_var",
        "layer1.0.downsample.0.weight",
        "layer1.0.downsample.1.num_batches_tracked",
        "layer4.2.conv3.weight",
        "layer4.2.bn3.bias",
        "fc.weight",
    ] {
        assert!(r50.contains(&n.to_string()), "resnet50 lacks {n}");
    }
    let d121 = names("densenet121");
    for n in [
        "features.conv0.weight",
        "features.norm0.running_mean",
        "features.denseblock1.denselayer1.norm1.weight",
        "features.denseblock4.denselayer16.conv2.weight",
        "features.transition3.conv.weight",
        "features.norm5.bias",
        "classifier.weight",
    ] {
        assert!(d121.contains(&n.to_string()), "densenet121 lacks {n}");
    }
    // The state_dict: 121 batch norms (norm0, two per dense layer × 58, three transitions,
    // norm5) of 5 tensors each, 120 convolutions, and the classifier's weight and bias.
    assert_eq!(d121.len(), 121 * 5 + 120 + 2);
}

#[test]
fn every_model_runs_forward_on_a_small_input() {
    for &name in MODEL_NAMES {
        let mut m = models::build(name, 7, 1).unwrap();
        let [c, h, w] = if name == "alexnet" {
            m.input_size()
        } else if models::is_cifar(name) {
            [3, 16, 16]
        } else {
            [3, 64, 64]
        };
        let x = Tensor::randn([1, c, h, w], 0.0, 1.0, DType::F32, 2);
        m.check_input(x.shape()).unwrap();
        let mut g = Graph::eval();
        let y = m.forward(&mut g, &Var::constant(x)).unwrap();
        assert_eq!(y.dims(), &[1, 7], "{name}");
        assert!(y.value().to_f64_vec().unwrap().iter().all(|v| v.is_finite()), "{name}");
    }
}

#[test]
fn inputs_of_the_wrong_size_are_refused() {
    let m = models::build("alexnet", 10, 0).unwrap();
    let e = m.check_input(&[2, 3, 224, 224].into()).unwrap_err().to_string();
    assert_eq!(
        e,
        "input: expected a batch [N, C, H, W] of images of 3×227×227 for alexnet (its fc6 reads exactly 256×6×6 values), got shape [2, 3, 224, 224]"
    );
    assert!(m.check_input(&[2, 1, 227, 227].into()).is_err());
    assert!(m.check_input(&[3, 227, 227].into()).is_err());
    // DenseNet-121's three transitions need a 29×29 image; 28×28 is refused before it runs.
    let mut d = models::build("densenet121", 10, 0).unwrap();
    assert!(d.check_input(&[1, 3, 28, 28].into()).is_err());
    d.check_input(&[1, 3, 29, 29].into()).unwrap();
    let mut g = Graph::eval();
    let y = d.forward(&mut g, &Var::constant(Tensor::zeros([1, 3, 29, 29], DType::F32))).unwrap();
    assert_eq!(y.dims(), &[1, 10]);
    // The message names the layer whose output would be empty, and that layer is where a
    // 29×29 image is down to one pixel.
    for (name, small, layer) in
        [("densenet121", 28, "features.transition3.pool"), ("densenet_bc100", 3, "features.transition2.pool")]
    {
        let mut d = models::build(name, 10, 0).unwrap();
        let e = d.check_input(&[1, 3, small, small].into()).unwrap_err().to_string();
        assert!(e.contains(&format!("the output of {layer} would be empty")), "{e}");
        let layers = models::trace_layers(d.as_mut(), [3, small + 1, small + 1]).unwrap();
        let pool = layers.iter().find(|l| l.name == layer).unwrap();
        assert_eq!(&pool.output.dims()[2..], &[1, 1], "{name}");
    }
    let e = models::build("resnet19", 10, 0).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(e.contains("unknown model 'resnet19'"), "{e}");
}

#[test]
fn dropout_can_be_set_and_turned_off() {
    let mut alexnet = models::build("alexnet", 10, 0).unwrap();
    assert_eq!(alexnet.set_dropout(0.0), 2);
    let mut densenet = models::build("densenet_bc100", 10, 0).unwrap();
    assert_eq!(densenet.set_dropout(0.2), 48);
    let mut resnet = models::build("resnet20", 10, 0).unwrap();
    assert_eq!(resnet.set_dropout(0.5), 0);
}

/// One training step with the fused kernels (BN+ReLU, BN+add+ReLU, bias+ReLU) and one with
/// every op on its own: the same loss and the same gradient for every parameter.
#[test]
fn fused_and_unfused_layers_train_alike() {
    for (name, size) in [("resnet20", 16), ("resnet50", 32), ("densenet121", 32), ("alexnet", 227)] {
        let run = |fuse: bool| {
            let mut m = models::build(name, 5, 3).unwrap();
            m.set_dropout(0.0);
            let x = Tensor::randn([2, 3, size, size], 0.0, 1.0, DType::F32, 4);
            let labels = Tensor::from_vec([2], vec![1i64, 3]).unwrap();
            let exec = scratchnet::ops::ExecOptions { fuse, ..Default::default() };
            let mut g = Graph::new().with_options(exec);
            let logits = m.forward(&mut g, &Var::constant(x)).unwrap();
            let loss = g.cross_entropy(&logits, &labels).unwrap();
            let loss_value = loss.value().item().unwrap();
            let grads = g.backward(&loss).unwrap();
            let flat: Vec<f64> = m
                .params()
                .iter()
                .flat_map(|p| grads.of_param(p).map(|t| t.to_f64_vec().unwrap()).unwrap_or_default())
                .collect();
            (loss_value, flat)
        };
        let (fused_loss, fused) = run(true);
        let (plain_loss, plain) = run(false);
        assert!(
            (fused_loss - plain_loss).abs() < 1e-5 * plain_loss.abs().max(1.0),
            "{name}: {fused_loss} vs {plain_loss}"
        );
        assert_eq!(fused.len(), plain.len(), "{name}: every parameter gets a gradient both ways");
        let err = scratchnet::selftest::rel_l2(&fused, &plain);
        assert!(err < 1e-4, "{name}: gradients differ by {err:.2e}");
    }
}

/// DenseNet's memory-efficient mode recomputes the bottleneck's concatenation and batch norm
/// in backward instead of keeping them: the same loss, the same gradients, the same running
/// statistics (updated once per step, not again by the recomputation), bit for bit, as the
/// recomputation runs the kernels of the forward pass on the same inputs; and less memory kept
/// for the backward pass (`tests/device_memory.rs` counts the device's buffers too).
#[test]
fn memory_efficient_densenet_trains_alike_and_keeps_less() {
    for (name, size, device) in [("densenet121", 32, Device::Cpu), ("densenet_bc100", 8, Device::Emu(0))] {
        let run = |memory_efficient: bool| {
            let mut m = models::build(name, 5, 3).unwrap();
            assert!(m.set_memory_efficient(memory_efficient) > 0);
            m.to_device(device).unwrap();
            let x = Tensor::randn([2, 3, size, size], 0.0, 1.0, DType::F32, 4).to_device(device).unwrap();
            let labels = Tensor::from_vec([2], vec![1i64, 3]).unwrap().to_device(device).unwrap();
            let mut g = Graph::new();
            g.start_profile(device).unwrap();
            let logits = m.forward(&mut g, &Var::constant(x.clone())).unwrap();
            let loss = g.cross_entropy(&logits, &labels).unwrap();
            let loss_value = loss.value().item().unwrap();
            let mut grads = g.backward(&loss).unwrap();
            let profile = grads.take_profile().unwrap();
            let kept = profile.kept_bytes.iter().sum::<usize>();
            let flat: Vec<f64> = m
                .params()
                .iter()
                .flat_map(|p| grads.of_param(p).map(|t| t.to_f64_vec().unwrap()).unwrap_or_default())
                .collect();
            // The running statistics, through an eval forward that uses them.
            let mut eval = Graph::eval();
            let eval_logits = m.forward(&mut eval, &Var::constant(x)).unwrap().value().to_f64_vec().unwrap();
            (loss_value, flat, eval_logits, kept)
        };
        let (plain_loss, plain, plain_eval, plain_kept) = run(false);
        let (lean_loss, lean, lean_eval, lean_kept) = run(true);
        assert_eq!(lean_loss.to_bits(), plain_loss.to_bits(), "{name}: {lean_loss} vs {plain_loss}");
        assert_eq!(lean.len(), plain.len());
        let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        let differ = |a: &[f64], b: &[f64]| a.iter().zip(b).filter(|(x, y)| x.to_bits() != y.to_bits()).count();
        assert!(bits(&lean) == bits(&plain), "{name}: {} gradient values differ", differ(&lean, &plain));
        assert!(
            bits(&lean_eval) == bits(&plain_eval),
            "{name}: the running statistics differ ({} logits)",
            differ(&lean_eval, &plain_eval)
        );
        eprintln!("{name}: kept for backward {plain_kept} bytes, memory-efficient {lean_kept}");
        assert!(lean_kept * 2 < plain_kept, "{name}: {lean_kept} bytes kept is not under half of {plain_kept}");
    }
}

#[test]
fn batch_norm_on_single_pixels_needs_two_images_per_batch() {
    // ResNet-18 on 32×32 images ends in 1×1 maps: its last batch norms see one value per
    // channel from each image.
    let mut m = models::build("resnet18", 10, 0).unwrap();
    let layers = models::trace_layers(m.as_mut(), [3, 32, 32]).unwrap();
    let (min, layer) = models::min_train_batch(&layers);
    assert_eq!((min, layer), (2, Some("layer4.0.bn1")));
    let layers = models::trace_layers(m.as_mut(), [3, 64, 64]).unwrap();
    assert_eq!(models::min_train_batch(&layers), (1, None));
    // AlexNet has no batch norm at all.
    let mut a = models::build("alexnet", 10, 0).unwrap();
    assert_eq!(models::min_train_batch(&models::trace_layers(a.as_mut(), [3, 227, 227]).unwrap()), (1, None));
}
