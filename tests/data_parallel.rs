//! Data-parallel training on two emulated devices (`emu:0,emu:1`), which stand in for two
//! GPUs: the host-side sum replaces NCCL, everything else (replicas, buffers on their own
//! devices, bucketed all-reduce during backward, synchronised batch norm) is the code a
//! CUDA run executes.
//!
//! What must hold, for ResNet-20 (which has batch norm) at a batch of 4 split 2 + 2:
//! - with `--sync-bn`, the step is one device's step on the whole batch of 4;
//! - with batch norm per device (the default, as DDP), it is the step of one device that
//!   accumulates the gradients of the two halves, each normalised on its own, which differs
//!   from the whole batch's step (the documented difference);
//! - the replicas' weights stay the same bits;
//! - a checkpoint saved from a data-parallel run loads on one device.

use scratchnet::autograd::{Graph, Var};
use scratchnet::device::Device;
use scratchnet::models::{self, Model};
use scratchnet::nn::Sgd;
use scratchnet::ops::ExecOptions;
use scratchnet::tensor::Tensor;
use scratchnet::train::{DataParallel, ReplicaStep, TrainOptions, replicate};

const LR: f64 = 0.1;

fn resnet20_on(device: Device) -> Box<dyn Model> {
    let mut m = models::build("resnet20", 10, 7).unwrap();
    m.to_device(device).unwrap();
    m
}

fn batch(n: usize) -> (Tensor, Tensor) {
    let x = Tensor::randn([n, 3, 32, 32], 0.0, 1.0, scratchnet::tensor::DType::F32, 11);
    let y = Tensor::from_vec([n], (0..n as i64).map(|i| (i * 3) % 10).collect::<Vec<_>>()).unwrap();
    (x, y)
}

fn rows(t: &Tensor, start: usize, end: usize) -> Tensor {
    let dims = t.dims().to_vec();
    let per: usize = dims[1..].iter().product();
    let mut shape = dims.clone();
    shape[0] = end - start;
    if t.dtype() == scratchnet::tensor::DType::I64 {
        let v = t.to_vec::<i64>().unwrap();
        Tensor::from_vec(shape, v[start * per..end * per].to_vec()).unwrap()
    } else {
        let v = t.to_vec::<f32>().unwrap();
        Tensor::from_vec(shape, v[start * per..end * per].to_vec()).unwrap()
    }
}

/// One device: the gradients of each `(images, labels, weight)` part accumulated (the backward
/// of each part's mean loss scaled by its weight), then one SGD step.
fn one_device_step(model: &mut dyn Model, parts: &[(Tensor, Tensor, f64)]) {
    let device = model.params()[0].value.device();
    for (x, y, weight) in parts {
        let mut g = Graph::new();
        let logits = model.forward(&mut g, &Var::constant(x.to_device(device).unwrap())).unwrap();
        let loss = g.cross_entropy(&logits, &y.to_device(device).unwrap()).unwrap();
        let seed =
            scratchnet::ops::elementwise::full(loss.shape().clone(), *weight, loss.value().dtype(), device).unwrap();
        g.backward_with_grad(&loss, seed).unwrap().accumulate_into(model.params_mut()).unwrap();
    }
    Sgd::new(LR, 0.9, 5e-4).step(model.params_mut()).unwrap();
}

/// Two replicas (emu:0 and emu:1) of the model, one data-parallel step on a batch of 4.
fn data_parallel_step(sync_bn: bool, bucket_bytes: usize) -> (Box<dyn Model>, Box<dyn Model>) {
    let dp = DataParallel::in_process(&[Device::Emu(0), Device::Emu(1)], sync_bn, bucket_bytes).unwrap();
    let mut first = resnet20_on(Device::Emu(0));
    let mut second = replicate(first.as_ref(), models::build("resnet20", 10, 99).unwrap(), Device::Emu(1)).unwrap();
    let (x, y) = batch(4);
    let (mut opt0, mut opt1) = (Sgd::new(LR, 0.9, 5e-4), Sgd::new(LR, 0.9, 5e-4));
    let replicas = vec![
        ReplicaStep { model: first.as_mut(), opt: &mut opt0, images: rows(&x, 0, 2), labels: rows(&y, 0, 2) },
        ReplicaStep { model: second.as_mut(), opt: &mut opt1, images: rows(&x, 2, 4), labels: rows(&y, 2, 4) },
    ];
    let outcome = scratchnet::train::data_parallel_step(&dp, replicas, 4, ExecOptions::default()).unwrap();
    assert_eq!(outcome.predictions.len(), 4);
    assert!(outcome.loss.is_finite() && outcome.loss > 0.0, "{}", outcome.loss);
    (first, second)
}

/// The largest difference between two models' weights, relative to the largest weight.
fn max_difference(a: &dyn Model, b: &dyn Model) -> f64 {
    let mut worst = 0.0f64;
    for (p, q) in a.params().iter().zip(b.params()) {
        assert_eq!(p.name(), q.name());
        let (u, v) = (p.value.to_f64_vec().unwrap(), q.value.to_f64_vec().unwrap());
        let scale = u.iter().fold(1e-3f64, |m, x| m.max(x.abs()));
        for (x, y) in u.iter().zip(&v) {
            worst = worst.max((x - y).abs() / scale);
        }
    }
    worst
}

fn assert_same_bits(a: &dyn Model, b: &dyn Model) {
    for (p, q) in a.params().iter().zip(b.params()) {
        assert_eq!(p.value.device(), Device::Emu(0));
        assert_eq!(q.value.device(), Device::Emu(1));
        assert_eq!(p.value.to_vec::<f32>().unwrap(), q.value.to_vec::<f32>().unwrap(), "{}", p.name());
    }
}

#[test]
fn synchronised_batch_norm_makes_the_step_of_one_device_on_the_whole_batch() {
    // A small bucket: the all-reduce runs in many buckets during the backward pass.
    let (first, second) = data_parallel_step(true, 16 << 10);
    assert_same_bits(first.as_ref(), second.as_ref());
    let mut one = resnet20_on(Device::Emu(0));
    let (x, y) = batch(4);
    one_device_step(one.as_mut(), &[(x, y, 1.0)]);
    let d = max_difference(first.as_ref(), one.as_ref());
    assert!(d < 2e-5, "two devices with --sync-bn differ from one device by {d:e}");
    // The running statistics too: every image of the batch moved them, on every replica.
    for ((name, a), (_, b)) in first.buffers().into_iter().zip(one.buffers()) {
        let (u, v) = (a.to_f64_vec().unwrap(), b.to_f64_vec().unwrap());
        for (x, y) in u.iter().zip(&v) {
            assert!((x - y).abs() <= 1e-5 * (1.0 + y.abs()), "{name}: {x} vs {y}");
        }
    }
}

#[test]
fn batch_norm_per_device_makes_the_step_of_the_halves_accumulated() {
    let (first, second) = data_parallel_step(false, 25 << 20);
    assert_same_bits(first.as_ref(), second.as_ref());
    let (x, y) = batch(4);
    let mut halves = resnet20_on(Device::Emu(0));
    let parts = [(rows(&x, 0, 2), rows(&y, 0, 2), 0.5), (rows(&x, 2, 4), rows(&y, 2, 4), 0.5)];
    one_device_step(halves.as_mut(), &parts);
    let d = max_difference(first.as_ref(), halves.as_ref());
    assert!(d < 2e-5, "per-device batch norm differs from the accumulated halves by {d:e}");
    // And that is not the whole batch's step: the statistics of 2 images are not those of 4.
    let mut whole = resnet20_on(Device::Emu(0));
    one_device_step(whole.as_mut(), &[(x, y, 1.0)]);
    let d = max_difference(first.as_ref(), whole.as_ref());
    assert!(d > 1e-4, "per-device batch norm should differ from the whole batch's step, by {d:e} only");
}

#[test]
fn a_checkpoint_of_a_data_parallel_run_loads_on_one_device() {
    let dir = std::env::temp_dir().join(format!("scratchnet-dp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("dp.safetensors");
    let o = TrainOptions {
        device: Device::Emu(0),
        steps: Some(2),
        batch_size: 4,
        synthetic_size: (16, 4),
        augment: false,
        save: Some(path.clone()),
        multi: scratchnet::train::MultiDevice {
            devices: vec![Device::Emu(0), Device::Emu(1)],
            data_parallel: true,
            ..Default::default()
        },
        ..TrainOptions::default()
    };
    let (trained, reports) = scratchnet::train::train(&o, |_| {}).unwrap();
    assert!(reports[0].train_loss.is_finite());
    let mut loaded = models::build("resnet20", 10, 123).unwrap();
    scratchnet::checkpoint::load(loaded.as_mut(), &path).unwrap();
    for (p, q) in trained.params().iter().zip(loaded.params()) {
        assert_eq!(q.value.device(), Device::Cpu);
        assert_eq!(p.value.to_vec::<f32>().unwrap(), q.value.to_vec::<f32>().unwrap(), "{}", p.name());
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn runs_that_cannot_work_on_several_devices_say_why() {
    let with = |multi: scratchnet::train::MultiDevice, model: &str| {
        let o = TrainOptions {
            model: model.into(),
            device: Device::Emu(0),
            steps: Some(1),
            multi,
            ..TrainOptions::default()
        };
        match scratchnet::train::train(&o, |_| {}) {
            Ok(_) => panic!("expected an error"),
            Err(e) => e.to_string(),
        }
    };
    let two = vec![Device::Emu(0), Device::Emu(1)];
    let base = scratchnet::train::MultiDevice::default();
    let e = with(scratchnet::train::MultiDevice { devices: two.clone(), ..base.clone() }, "resnet20");
    assert!(e.contains("add --data-parallel"), "{e}");
    let e = with(scratchnet::train::MultiDevice { sync_bn: true, ..base.clone() }, "resnet20");
    assert!(e.contains("--sync-bn"), "{e}");
    let e = with(scratchnet::train::MultiDevice { data_parallel: true, ..base.clone() }, "resnet20");
    assert!(e.contains("needs several devices"), "{e}");
    let o = TrainOptions {
        model: "resnet20".into(),
        device: Device::Emu(0),
        exec: ExecOptions { towers: true, ..ExecOptions::default() },
        multi: scratchnet::train::MultiDevice { devices: two, ..base },
        ..TrainOptions::default()
    };
    let e = scratchnet::train::train(&o, |_| {}).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(e.contains("splits AlexNet"), "{e}");
}
