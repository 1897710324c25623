//! AlexNet's towers on two emulated devices (`--towers --devices emu:0,emu:1`), which stand
//! in for the paper's two GPUs: each tower's parameters live on its own device, the towers
//! exchange activations where the paper's GPUs did (and two edge channels before each LRN),
//! and a training step gives the losses and weights of the one-device network, to rounding.

use scratchnet::autograd::{Graph, LayerOp, LayerRecord, Var};
use scratchnet::device::Device;
use scratchnet::models::{self, Model};
use scratchnet::nn::Sgd;
use scratchnet::tensor::{DType, Tensor};

fn alexnet(classes: usize) -> Box<dyn Model> {
    models::build("alexnet", classes, 5).unwrap()
}

/// One SGD step on `model` (its input on `device`), profiled: the loss, and the layers the
/// profile recorded.
fn train_step(model: &mut dyn Model, device: Device, x: &Tensor, y: &Tensor) -> (f64, Vec<LayerRecord>) {
    let mut g = Graph::new();
    g.start_profile(device).unwrap();
    let logits = model.forward(&mut g, &Var::constant(x.to_device(device).unwrap())).unwrap();
    assert_eq!(logits.value().device(), device, "the logits meet on the first device");
    let loss = g.cross_entropy(&logits, &y.to_device(device).unwrap()).unwrap();
    let value = loss.value().item().unwrap();
    let mut grads = g.backward(&loss).unwrap();
    let layers = grads.take_profile().map(|p| p.layers).unwrap_or_default();
    grads.accumulate_into(model.params_mut()).unwrap();
    Sgd::new(0.01, 0.9, 5e-4).step(model.params_mut()).unwrap();
    (value, layers)
}

#[test]
fn towers_on_two_devices_train_as_one_device_does() {
    // 7 classes: fc8 splits 4 + 3. One image and one step: AlexNet is slow on the emulator,
    // so the one-device network runs on the CPU (whose ops the emulator's kernels match to
    // rounding, dropout masks included).
    let x = Tensor::randn([1, 3, 227, 227], 0.0, 1.0, DType::F32, 3);
    let y = Tensor::from_vec([1], vec![5i64]).unwrap();
    let mut one = alexnet(7);
    let mut towers = alexnet(7).split_towers([Device::Emu(0), Device::Emu(1)]).unwrap();
    for p in towers.params() {
        let want = if p.name().starts_with("tower0.") { Device::Emu(0) } else { Device::Emu(1) };
        assert_eq!(p.value.device(), want, "{}", p.name());
    }
    let received = |d: Device| d.gpu().unwrap().unwrap().peer_copy_stats();
    let before = [received(Device::Emu(0)), received(Device::Emu(1))];

    let (a, _) = train_step(one.as_mut(), Device::Cpu, &x, &y);
    let (b, layers) = train_step(towers.as_mut(), Device::Emu(0), &x, &y);
    assert!((a - b).abs() <= 1e-5 * a.abs().max(1.0), "losses {a} (one device) and {b} (towers)");
    // The profile shows each copy as a row, on the receiving device (the trace's track).
    let copies: Vec<(&str, Device)> = layers
        .iter()
        .filter_map(|l| match l.op {
            LayerOp::Exchange { from, to } => {
                assert_ne!(from, to);
                assert_eq!(l.device, to, "{}", l.name);
                Some((l.name.as_str(), to))
            }
            _ => None,
        })
        .collect();
    let to = |d: Device| copies.iter().filter(|(_, t)| *t == d).count();
    assert_eq!((to(Device::Emu(0)), to(Device::Emu(1))), (7, 7), "{copies:?}");
    assert!(copies.iter().any(|(n, _)| *n == "conv3.input.to1") && copies.iter().any(|(n, _)| *n == "fc6.input.to0"));
    for l in layers.iter().filter(|l| l.name.starts_with("tower")) {
        let want = if l.name.starts_with("tower0.") { Device::Emu(0) } else { Device::Emu(1) };
        assert_eq!(l.device, want, "{}", l.name);
    }
    // Forward: to emu:1 the image, tower 0's two LRN edges and its halves at conv3, fc6, fc7
    // and fc8 (7); to emu:0 tower 1's two edges and four halves, and its logits (7). Backward:
    // each gradient goes back the way its activation came, but the image's (a constant): 6
    // to emu:0, 7 to emu:1.
    let after = [received(Device::Emu(0)), received(Device::Emu(1))];
    assert_eq!(after[0].direct - before[0].direct, 7 + 6);
    assert_eq!(after[1].direct - before[1].direct, 7 + 7);
    assert_eq!(after[0].staged + after[1].staged, before[0].staged + before[1].staged);

    // The weights, merged back into the one-device layout, are the one device's.
    let merged = towers.merged().unwrap().expect("towers merge into one network");
    let mut worst = 0.0f64;
    for (p, q) in one.params().iter().zip(merged.params()) {
        assert_eq!(p.name(), q.name());
        assert_eq!(p.value.dims(), q.value.dims(), "{}", p.name());
        let (u, v) = (p.value.to_f64_vec().unwrap(), q.value.to_f64_vec().unwrap());
        let scale = u.iter().fold(1e-3f64, |m, x| m.max(x.abs()));
        for (a, b) in u.iter().zip(&v) {
            worst = worst.max((a - b).abs() / scale);
        }
    }
    assert!(worst < 1e-5, "towers' weights differ from one device's by {worst:e}");

    // A checkpoint of the towers is the one-device network's, and loads on one device.
    let path = std::env::temp_dir().join(format!("scratchnet-towers-{}.safetensors", std::process::id()));
    scratchnet::checkpoint::save(towers.as_ref(), &path).unwrap();
    let mut loaded = alexnet(7);
    scratchnet::checkpoint::load(loaded.as_mut(), &path).unwrap();
    std::fs::remove_file(&path).unwrap();
    for (p, q) in merged.params().iter().zip(loaded.params()) {
        assert_eq!(p.value.to_vec::<f32>().unwrap(), q.value.to_vec::<f32>().unwrap(), "{}", p.name());
    }
}

#[test]
fn towers_are_refused_where_they_cannot_be() {
    let e = models::build("resnet20", 10, 0).unwrap().split_towers([Device::Emu(0), Device::Emu(1)]);
    assert!(e.err().unwrap().to_string().contains("resnet20 has no towers"));
    let e = alexnet(10).split_towers([Device::Emu(1), Device::Emu(1)]);
    assert!(e.err().unwrap().to_string().contains("two devices, got emu:1 twice"));
    let mut towers = alexnet(10).split_towers([Device::Emu(0), Device::Emu(1)]).unwrap();
    let e = towers.to_device(Device::Cpu).unwrap_err().to_string();
    assert!(e.contains("live on emu and emu:1"), "{e}");
}
