//! The kernels against the ops' plain references (`ops::<op>::reference`), through the
//! emulator (always) and on a CUDA GPU (when one is usable; otherwise the test says it was
//! skipped), and the cpu device's path against the same references. The op-by-op comparisons
//! are `scratchnet::selftest`, the same list `scratchnet selftest` prints; the tests below
//! add what a list of ops cannot show: a whole training step (against the references composed
//! by hand, and emu against cpu), memory reuse, and the launch path's own checks.

use std::collections::HashMap;

use scratchnet::device::cuda;
use scratchnet::device::gpu::KernelCall;
use scratchnet::nn::init::Init;
use scratchnet::nn::{BatchNorm2d, Conv2d, Linear, Module, Sgd};
use scratchnet::ops::conv2d::{Conv2dParams, ConvGeometry};
use scratchnet::ops::lrn::LrnParams;
use scratchnet::ops::pool::Pool2dParams;
use scratchnet::ops::{batchnorm, concat, conv2d, dropout, elementwise, linear, loss, lrn, pool};
use scratchnet::selftest::{self, rel_l2};
use scratchnet::{DType, Device, Graph, Result, Tensor, Var};

fn assert_selftest_passes(device: Device) {
    let checks = selftest::run(device, |_| {}).unwrap_or_else(|e| panic!("selftest on {device}: {e}"));
    let failed: Vec<String> = checks
        .iter()
        .filter(|c| !c.passed())
        .map(|c| format!("{} [{}]: {:e} > {:e}", c.op, c.case, c.rel_err, c.tol))
        .collect();
    assert!(checks.len() > 70, "only {} checks ran", checks.len());
    assert!(failed.is_empty(), "on {device}:\n{}", failed.join("\n"));
}

#[test]
fn every_kernel_matches_its_reference_on_emu() {
    assert_selftest_passes(Device::Emu(0));
}

#[test]
fn the_cpu_path_of_every_op_matches_its_reference() {
    assert_selftest_passes(Device::Cpu);
}

#[test]
fn every_kernel_matches_its_reference_on_cuda() {
    match cuda::check(0) {
        Ok(_) => assert_selftest_passes(Device::Cuda(0)),
        Err(why) => eprintln!("skipped: cuda:0 is not usable here: {why}"),
    }
}

/// A small network that uses every layer kind: conv (grouped, strided), batch norm, ReLU,
/// LRN, overlapping max pool, average pool, dropout, a residual add, concat and linear.
struct Mixed {
    conv1: Conv2d,
    bn1: BatchNorm2d,
    conv2: Conv2d,
    fc: Linear,
}

impl Mixed {
    fn new() -> Mixed {
        let p = Conv2dParams::default().padding(1);
        Mixed {
            conv1: Conv2d::new("conv1", 3, 8, 3, p, false, Init::KaimingNormalFanOut, 1),
            bn1: BatchNorm2d::new("bn1", 8),
            conv2: Conv2d::new("conv2", 8, 8, 3, p.groups(2), false, Init::Default, 2),
            fc: Linear::new("fc", 16 * 3 * 4, 5, true, 3),
        }
    }
}

const MIXED_LRN: LrnParams = LrnParams { size: 5, alpha: 0.5, beta: 0.75, k: 2.0 };
const MIXED_MAX_POOL: Pool2dParams = Pool2dParams { kernel: (3, 3), stride: (2, 2), padding: (0, 0) };
const MIXED_AVG_POOL: Pool2dParams = Pool2dParams { kernel: (2, 2), stride: (2, 2), padding: (1, 1) };
const MIXED_DROPOUT: (f64, u64) = (0.25, 42);

impl Module for Mixed {
    fn forward(&mut self, g: &mut Graph, x: &Var) -> Result<Var> {
        let h = self.conv1.forward(g, x)?;
        let h = self.bn1.forward(g, &h)?;
        let h = g.relu(&h)?;
        let h = g.lrn(&h, MIXED_LRN)?;
        let h = g.max_pool2d(&h, MIXED_MAX_POOL)?;
        let r = self.conv2.forward(g, &h)?;
        let h2 = g.add(&r, &h)?;
        let h = g.concat(&[&h, &h2])?;
        let h = g.avg_pool2d(&h, MIXED_AVG_POOL)?;
        let h = g.dropout(&h, MIXED_DROPOUT.0, MIXED_DROPOUT.1)?;
        let h = g.flatten(&h)?;
        self.fc.forward(g, &h)
    }
    fn children(&self) -> Vec<&dyn Module> {
        vec![&self.conv1, &self.bn1, &self.conv2, &self.fc]
    }
    fn children_mut(&mut self) -> Vec<&mut dyn Module> {
        vec![&mut self.conv1, &mut self.bn1, &mut self.conv2, &mut self.fc]
    }
}

/// Two SGD steps of `Mixed` on `device`; returns the losses and every parameter and buffer.
fn two_steps(device: Device) -> (Vec<f64>, Vec<Vec<f64>>) {
    let mut model = Mixed::new();
    model.to_device(device).unwrap();
    let mut opt = Sgd::new(0.05, 0.9, 1e-3);
    let x = Tensor::randn([3, 3, 11, 13], 0.0, 1.0, DType::F32, 5).to_device(device).unwrap();
    let y = Tensor::from_vec([3], vec![1i64, 4, 0]).unwrap().to_device(device).unwrap();
    let mut losses = Vec::new();
    for _ in 0..2 {
        let mut g = Graph::new();
        let logits = model.forward(&mut g, &Var::constant(x.clone())).unwrap();
        let loss = g.cross_entropy(&logits, &y).unwrap();
        losses.push(loss.value().item().unwrap());
        g.backward(&loss).unwrap().accumulate_into(model.params_mut()).unwrap();
        opt.step(model.params_mut()).unwrap();
    }
    let mut state: Vec<Vec<f64>> = model.params().iter().map(|p| p.value.to_f64_vec().unwrap()).collect();
    state.extend(model.buffers().iter().map(|(_, b)| b.to_f64_vec().unwrap()));
    (losses, state)
}

/// One training step of `Mixed` composed by hand from the ops' plain references, in f64: the
/// loss and the gradient of each parameter, by name.
fn mixed_by_the_references(
    params: &HashMap<String, Vec<f64>>,
    x: &Tensor,
    labels: &[usize],
) -> (f64, HashMap<String, Vec<f64>>) {
    use batchnorm::reference as bn;
    use conv2d::reference as conv;
    use elementwise::reference as ew;
    let p = |name: &str| params[name].as_slice();
    let n = x.dims()[0];
    let xv = x.to_f64_vec().unwrap();
    let geometry = |x: &[usize], w: [usize; 4], p: Conv2dParams| ConvGeometry::new(&x.into(), &w.into(), p).unwrap();
    let g1 = geometry(x.dims(), [8, 3, 3, 3], Conv2dParams::default().padding(1));
    let (h, w) = (g1.oh, g1.ow);
    let dims1 = (n, 8, h, w);

    // Forward.
    let c1 = conv::forward(&xv, p("conv1.weight"), None, &g1);
    let (b1, mean, var) = bn::forward_train(&c1, p("bn1.weight"), p("bn1.bias"), (n, 8, h * w), 1e-5);
    let r1 = ew::relu(&b1);
    let l1 = lrn::reference::forward(&r1, (n, 8, h * w), &MIXED_LRN);
    let m = pool::reference::max_pool2d_forward(&l1, dims1, &MIXED_MAX_POOL);
    let (mh, mw) = pool::reference::output_hw(dims1, &MIXED_MAX_POOL);
    let g2 = geometry(&[n, 8, mh, mw], [8, 4, 3, 3], Conv2dParams::default().padding(1).groups(2));
    let r = conv::forward(&m, p("conv2.weight"), None, &g2);
    let h2 = ew::add(&r, &m);
    let cat = concat::reference::forward(&[&m, &h2], n, &[8, 8], mh * mw);
    let dims_cat = (n, 16, mh, mw);
    let a = pool::reference::avg_pool2d_forward(&cat, dims_cat, &MIXED_AVG_POOL);
    let d = dropout::reference::forward(&a, MIXED_DROPOUT.0, MIXED_DROPOUT.1);
    let features = d.len() / n;
    let fc = (n, features, 5);
    let z = linear::reference::forward(&d, p("fc.weight"), Some(p("fc.bias")), fc);
    let (loss_value, probs) = loss::reference::forward(&z, labels, 5);

    // Backward, each op's gradient in turn; m feeds three ops, so its gradient is their sum.
    let mut grads = HashMap::new();
    let dz = loss::reference::backward(&probs, labels, 1.0, 5);
    grads.insert("fc.weight".to_string(), linear::reference::backward_weight(&dz, &d, fc));
    grads.insert("fc.bias".to_string(), linear::reference::backward_bias(&dz, fc));
    let dd = linear::reference::backward_data(&dz, p("fc.weight"), fc);
    let da = dropout::reference::backward(&dd, MIXED_DROPOUT.0, MIXED_DROPOUT.1);
    let dcat = pool::reference::avg_pool2d_backward(&da, dims_cat, &MIXED_AVG_POOL);
    let pieces = concat::reference::backward(&dcat, n, &[8, 8], mh * mw);
    let dh2 = &pieces[1];
    grads.insert("conv2.weight".to_string(), conv::backward_filter(dh2, &m, &g2));
    let dm = ew::add(&ew::add(&pieces[0], dh2), &conv::backward_data(dh2, p("conv2.weight"), &g2));
    let dl1 = pool::reference::max_pool2d_backward(&dm, &l1, dims1, &MIXED_MAX_POOL);
    let dr1 = lrn::reference::backward(&dl1, &r1, (n, 8, h * w), &MIXED_LRN);
    let db1 = ew::relu_backward(&dr1, &r1);
    let g = bn::backward(&db1, &c1, p("bn1.weight"), (&mean, &var), (n, 8, h * w), 1e-5, true);
    grads.insert("bn1.weight".to_string(), g.dgamma);
    grads.insert("bn1.bias".to_string(), g.dbeta);
    grads.insert("conv1.weight".to_string(), conv::backward_filter(&g.dx, &xv, &g1));
    (loss_value, grads)
}

/// The loss and the gradients of one step of `Mixed` on each device, against the references.
#[test]
fn one_training_step_on_cpu_and_emu_matches_the_references() {
    let x = Tensor::randn([3, 3, 11, 13], 0.0, 1.0, DType::F32, 5);
    let labels = [1usize, 4, 0];
    let y = Tensor::from_vec([3], labels.iter().map(|&l| l as i64).collect::<Vec<i64>>()).unwrap();
    for device in [Device::Cpu, Device::Emu(0)] {
        let mut model = Mixed::new();
        let params: HashMap<String, Vec<f64>> =
            model.params().iter().map(|p| (p.name().to_string(), p.value.to_f64_vec().unwrap())).collect();
        let (want_loss, want_grads) = mixed_by_the_references(&params, &x, &labels);
        model.to_device(device).unwrap();
        let mut g = Graph::new();
        let logits = model.forward(&mut g, &Var::constant(x.to_device(device).unwrap())).unwrap();
        let loss = g.cross_entropy(&logits, &y.to_device(device).unwrap()).unwrap();
        let got_loss = loss.value().item().unwrap();
        assert!((got_loss - want_loss).abs() <= 1e-5 * want_loss.abs(), "{device}: loss {got_loss}, want {want_loss}");
        g.backward(&loss).unwrap().accumulate_into(model.params_mut()).unwrap();
        assert_eq!(model.params().len(), want_grads.len());
        for p in model.params() {
            let got = p.grad.as_ref().unwrap_or_else(|| panic!("{device}: no gradient for {}", p.name()));
            let err = rel_l2(&got.to_f64_vec().unwrap(), &want_grads[p.name()]);
            assert!(err < 1e-4, "{device}: the gradient of {} is off by {err:e}", p.name());
        }
    }
}

#[test]
fn two_training_steps_on_emu_match_the_cpu() {
    let (cpu_losses, cpu_state) = two_steps(Device::Cpu);
    let (emu_losses, emu_state) = two_steps(Device::Emu(0));
    // Each device on its own is deterministic: a second run gives the same bits.
    assert_eq!(two_steps(Device::Emu(0)), (emu_losses.clone(), emu_state.clone()));
    assert_eq!(two_steps(Device::Cpu), (cpu_losses.clone(), cpu_state.clone()));
    for (a, b) in emu_losses.iter().zip(&cpu_losses) {
        assert!((a - b).abs() <= 1e-5 * b.abs(), "loss {a} on emu, {b} on cpu");
    }
    assert_eq!(cpu_state.len(), emu_state.len());
    for (i, (e, c)) in emu_state.iter().zip(&cpu_state).enumerate() {
        let err = rel_l2(e, c);
        assert!(err < 1e-4, "tensor {i} differs after two steps: {err:e}");
    }
}

#[test]
fn a_launch_with_the_wrong_arguments_is_an_error() {
    let gpu = Device::Emu(0).gpu().unwrap().unwrap();
    let y = gpu.alloc(DType::F32, 4).unwrap();
    let e = gpu.launch(KernelCall::elementwise("relu_fwd_f32", 4).buf(&y).i32(4)).unwrap_err().to_string();
    assert!(e.contains("kernel relu_fwd_f32 takes [Ptr, Ptr, I64] but was given [Ptr, I32]"), "{e}");
    let e = gpu.launch(KernelCall::new("no_such_kernel")).unwrap_err().to_string();
    assert!(e.contains("no kernel named no_such_kernel"), "{e}");
    let e = gpu.launch(KernelCall::new("fill_f32").block(2048, 1, 1).buf(&y).f32(1.0).i64(4)).unwrap_err().to_string();
    assert!(e.contains("block of 2048 threads"), "{e}");
}

#[test]
fn tensors_move_between_devices_unchanged() {
    let t = Tensor::randn([3, 5, 7], 0.0, 1.0, DType::F32, 9);
    let e = t.to_device(Device::Emu(0)).unwrap();
    assert_eq!(e.device(), Device::Emu(0));
    assert!(e.as_slice::<f32>().unwrap_err().to_string().contains("lives on emu"));
    assert_eq!(e.to_vec::<f32>().unwrap(), t.to_vec::<f32>().unwrap());
    let back = e.to_device(Device::Cpu).unwrap();
    assert_eq!(back.to_vec::<f32>().unwrap(), t.to_vec::<f32>().unwrap());
    let f64_on_emu = Tensor::zeros([2], DType::F64).to_device(Device::Emu(0)).unwrap();
    let e = scratchnet::ops::elementwise::relu_forward(&f64_on_emu).unwrap_err().to_string();
    assert!(e.contains("dtype f64 is not supported here (supported: f32 on cuda and emu)"), "{e}");
    let cpu = Tensor::zeros([2], DType::F32);
    let e = scratchnet::ops::elementwise::add(&f64_on_emu.to_dtype(DType::F32).unwrap(), &cpu).unwrap_err().to_string();
    assert!(e.contains("left is on emu but right is on cpu"), "{e}");
}

/// One SGD step of a whole network on `device`: the loss, then every parameter and buffer.
fn one_step_of(name: &str, x: &Tensor, device: Device) -> (f64, Vec<(String, Vec<f64>)>) {
    let mut model = scratchnet::models::build(name, 5, 11).unwrap();
    model.to_device(device).unwrap();
    let mut opt = Sgd::new(0.05, 0.9, 5e-4);
    let y = Tensor::from_vec([x.dims()[0]], (0..x.dims()[0] as i64).map(|i| i % 5).collect::<Vec<i64>>()).unwrap();
    let mut g = Graph::new();
    let logits = model.forward(&mut g, &Var::constant(x.to_device(device).unwrap())).unwrap();
    let loss = g.cross_entropy(&logits, &y.to_device(device).unwrap()).unwrap();
    let value = loss.value().item().unwrap();
    g.backward(&loss).unwrap().accumulate_into(model.params_mut()).unwrap();
    opt.step(model.params_mut()).unwrap();
    let mut state: Vec<(String, Vec<f64>)> =
        model.params().iter().map(|p| (p.name().to_string(), p.value.to_f64_vec().unwrap())).collect();
    state.extend(model.buffers().into_iter().map(|(n, t)| (n, t.to_f64_vec().unwrap())));
    (value, state)
}

/// The CIFAR ResNet and DenseNet at small sizes. (An ImageNet ResNet at a size the emulator
/// runs quickly ends in 1×1 feature maps, where batch norm normalises two values per channel:
/// an ill-conditioned step that turns rounding differences of 1e-7 into differences of 1e-1
/// on any two correct implementations. Its layers are covered one by one by the selftest.)
#[test]
fn a_whole_resnet_and_densenet_take_the_same_step_on_cpu_and_emu() {
    for (name, size) in [("resnet20", 16), ("densenet_bc100", 8)] {
        let x = Tensor::randn([2, 3, size, size], 0.0, 1.0, DType::F32, 12);
        let (cpu_loss, cpu_state) = one_step_of(name, &x, Device::Cpu);
        let (emu_loss, emu_state) = one_step_of(name, &x, Device::Emu(0));
        assert!(
            (cpu_loss - emu_loss).abs() <= 1e-5 * cpu_loss.abs(),
            "{name}: loss {cpu_loss} on cpu, {emu_loss} on emu"
        );
        assert_eq!(cpu_state.len(), emu_state.len());
        for ((n, c), (_, e)) in cpu_state.iter().zip(&emu_state) {
            let err = rel_l2(e, c);
            assert!(err < 1e-4, "{name}: {n} differs after one step: {err:e}");
        }
    }
}
