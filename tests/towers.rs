//! AlexNet's towers (`--towers`): each group of a grouped convolution on its own side stream,
//! checked through the emulator. A tower is the implicit-GEMM kernel launched one group deep
//! with pointers into its group's channels, so the results must equal the one-launch
//! convolution to the bit, and the launches must land on the side streams.
//!
//! The launch counters belong to the process, so the tests of this file take turns.

use std::sync::{Arc, Mutex, MutexGuard};

use scratchnet::device::GpuDevice;
use scratchnet::device::streams::{self, SIDE_STREAMS};
use scratchnet::nn::init::Init;
use scratchnet::nn::{Conv2d, Linear, Module, Sgd};
use scratchnet::ops::ExecOptions;
use scratchnet::ops::conv2d::{self, Conv2dParams, ConvAlgo};
use scratchnet::selftest::rel_l2;
use scratchnet::train::GraphStep;
use scratchnet::{DType, Device, Graph, Result, Tensor, Var};

fn one_at_a_time() -> MutexGuard<'static, ()> {
    static TURN: Mutex<()> = Mutex::new(());
    TURN.lock().unwrap_or_else(|p| p.into_inner())
}

fn emu() -> Arc<GpuDevice> {
    Device::Emu(0).gpu().unwrap().unwrap()
}

fn err(a: &Tensor, b: &Tensor) -> f64 {
    rel_l2(&a.to_f64_vec().unwrap(), &b.to_f64_vec().unwrap())
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.to_vec::<f32>().unwrap().iter().map(|v| v.to_bits()).collect()
}

/// Launches per stream since `before`.
fn launched_since(gpu: &GpuDevice, before: &[u64]) -> Vec<u64> {
    gpu.launches_per_stream().iter().zip(before).map(|(now, then)| now - then).collect()
}

#[test]
fn grouped_convolutions_as_towers_give_the_same_bits_on_the_side_streams() {
    let _turn = one_at_a_time();
    scratchnet::device::poison_new_buffers(true);
    let gpu = emu();
    // (n, c, h, w, o, k, groups, stride, padding, bias): odd sizes, three groups, and a
    // filter gradient long enough (4·13·13 positions) to be cut into two split-K slices.
    let cases =
        [(2, 6, 7, 9, 4, 3, 2, 1, 1, true), (1, 9, 11, 5, 6, 5, 3, 2, 2, false), (4, 4, 13, 13, 8, 3, 2, 1, 1, true)];
    for (i, &(n, c, h, w, o, k, groups, stride, padding, bias)) in cases.iter().enumerate() {
        let seed = 10 * i as u64;
        let p = Conv2dParams::default().stride(stride).padding(padding).groups(groups);
        let x = Tensor::randn([n, c, h, w], 0.0, 1.0, DType::F32, seed + 1);
        let wt = Tensor::randn([o, c / groups, k, k], 0.0, 0.3, DType::F32, seed + 2);
        let b = bias.then(|| Tensor::randn([o], 0.0, 0.5, DType::F32, seed + 3));
        let cpu = ExecOptions::default();
        let want_y = conv2d::forward_relu(&x, &wt, b.as_ref(), p, &cpu).unwrap();
        let dy = Tensor::randn(want_y.dims().to_vec(), 0.0, 1.0, DType::F32, seed + 4);
        let (want_dx, want_dw) = conv2d::backward_data_and_filter(&dy, &x, &wt, p, (true, true), &cpu).unwrap();
        let on = |t: &Tensor| t.to_device(Device::Emu(0)).unwrap();
        let (xe, we, be, dye) = (on(&x), on(&wt), b.as_ref().map(on), on(&dy));

        let run = |towers: bool| {
            let exec = ExecOptions { conv_algo: ConvAlgo::ImplicitGemm, towers, ..ExecOptions::default() };
            let before = gpu.launches_per_stream();
            let y = conv2d::forward_relu(&xe, &we, be.as_ref(), p, &exec).unwrap();
            let forward_launches = launched_since(&gpu, &before);
            let (dx, dw) = conv2d::backward_data_and_filter(&dye, &xe, &we, p, (true, true), &exec).unwrap();
            (y, dx.unwrap(), dw.unwrap(), forward_launches, launched_since(&gpu, &before))
        };
        let (y1, dx1, dw1, fwd1, all1) = run(false);
        let (yt, dxt, dwt, fwdt, allt) = run(true);
        let case = format!("case {i}");
        assert_eq!(bits(&yt), bits(&y1), "{case}: forward");
        assert_eq!(bits(&dxt), bits(&dx1), "{case}: data gradient");
        assert_eq!(bits(&dwt), bits(&dw1), "{case}: filter gradient");
        // And both agree with the cpu device.
        assert!(err(&yt, &want_y) < 1e-5, "{case}: forward against the CPU");
        assert!(err(&dxt, want_dx.as_ref().unwrap()) < 1e-5, "{case}: dx against the CPU");
        assert!(err(&dwt, want_dw.as_ref().unwrap()) < 1e-4, "{case}: dW against the CPU");

        // One launch on the main stream without towers; one per tower on its own stream with.
        assert_eq!(fwd1[0], 1, "{case}: {fwd1:?}");
        assert!(fwd1[1..].iter().all(|&l| l == 0), "{case}: {fwd1:?}");
        assert_eq!(fwdt[0], 0, "{case}: {fwdt:?}");
        assert!(fwdt[1..=groups].iter().all(|&l| l == 1), "{case}: {fwdt:?}");
        assert!(fwdt[groups + 1..].iter().all(|&l| l == 0), "{case}: {fwdt:?}");
        // The backward's kernels too: each tower's data and filter gradients (and its share
        // of the split-K reduction) on its stream, as many launches per tower as the single
        // launches take on the main stream.
        assert!(all1[1..].iter().all(|&l| l == 0), "{case}: {all1:?}");
        let per_tower = allt[1];
        assert!(per_tower >= 3, "{case}: {allt:?}");
        assert!(allt[1..=groups].iter().all(|&l| l == per_tower), "{case}: {allt:?}");
        assert_eq!(allt[0], 0, "{case}: {allt:?}");
        assert_eq!(per_tower, all1[0], "{case}: {all1:?} vs {allt:?}");
    }
    scratchnet::device::poison_new_buffers(false);
}

/// A little AlexNet: a plain convolution, then two grouped ones (the towers), a pool and a
/// classifier.
struct TowerNet {
    conv1: Conv2d,
    conv2: Conv2d,
    conv3: Conv2d,
    fc: Linear,
}

impl TowerNet {
    fn new(device: Device) -> TowerNet {
        let p = Conv2dParams::default().padding(1);
        let mut m = TowerNet {
            conv1: Conv2d::new("conv1", 3, 8, 3, p, true, Init::Default, 1),
            conv2: Conv2d::new("conv2", 8, 8, 3, p.groups(2), true, Init::Default, 2),
            conv3: Conv2d::new("conv3", 8, 6, 3, p.groups(2), true, Init::Default, 3),
            fc: Linear::new("fc", 6, 4, true, 4),
        };
        m.to_device(device).unwrap();
        m
    }

    fn weights(&self) -> Vec<Vec<u32>> {
        self.params().iter().map(|p| bits(&p.value)).collect()
    }
}

impl Module for TowerNet {
    fn forward(&mut self, g: &mut Graph, x: &Var) -> Result<Var> {
        let h = self.conv1.forward_relu(g, x)?;
        let h = self.conv2.forward_relu(g, &h)?;
        let h = self.conv3.forward_relu(g, &h)?;
        let h = g.global_avg_pool(&h)?;
        let h = g.flatten(&h)?;
        self.fc.forward(g, &h)
    }
    fn children(&self) -> Vec<&dyn Module> {
        vec![&self.conv1, &self.conv2, &self.conv3, &self.fc]
    }
    fn children_mut(&mut self) -> Vec<&mut dyn Module> {
        vec![&mut self.conv1, &mut self.conv2, &mut self.conv3, &mut self.fc]
    }
}

#[test]
fn training_with_towers_matches_training_without_also_as_a_captured_graph() {
    let _turn = one_at_a_time();
    let device = Device::Emu(0);
    let x = Tensor::randn([3, 3, 6, 6], 0.0, 1.0, DType::F32, 5).to_device(device).unwrap();
    let y = Tensor::from_vec([3], vec![0i64, 3, 1]).unwrap().to_device(device).unwrap();
    let with_towers = |towers: bool| ExecOptions { towers, ..ExecOptions::default() };
    let step = |m: &mut TowerNet, opt: &mut Sgd, exec: ExecOptions| {
        let mut g = Graph::new().with_options(exec);
        let logits = m.forward(&mut g, &Var::constant(x.clone())).unwrap();
        let loss = g.cross_entropy(&logits, &y).unwrap();
        let value = loss.value().item().unwrap();
        g.backward(&loss).unwrap().accumulate_into(m.params_mut()).unwrap();
        opt.step(m.params_mut()).unwrap();
        value
    };

    let (mut plain, mut opt) = (TowerNet::new(device), Sgd::new(0.1, 0.9, 5e-4));
    let plain_losses: Vec<f64> = (0..5).map(|_| step(&mut plain, &mut opt, with_towers(false))).collect();

    let gpu = emu();
    let before = gpu.launches_per_stream();
    let (mut towers, mut opt) = (TowerNet::new(device), Sgd::new(0.1, 0.9, 5e-4));
    let tower_losses: Vec<f64> = (0..5).map(|_| step(&mut towers, &mut opt, with_towers(true))).collect();
    let launched = launched_since(&gpu, &before);

    // Two ordinary steps, then the third captured with its forks and joins, replayed thrice.
    let (mut m, mut opt) = (TowerNet::new(device), Sgd::new(0.1, 0.9, 5e-4));
    let mut graph_losses: Vec<f64> = (0..2).map(|_| step(&mut m, &mut opt, with_towers(true))).collect();
    opt.keep_lr_on(device).unwrap();
    m.prepare_capture(device).unwrap();
    m.prepare_replay().unwrap();
    let graph = GraphStep::capture(&mut m, &mut opt, x.clone(), y.clone(), with_towers(true)).unwrap();
    for i in 0..3 {
        if i > 0 {
            m.prepare_replay().unwrap();
        }
        graph.replay().unwrap();
        graph_losses.push(graph.loss().item().unwrap());
    }

    assert_eq!(tower_losses, plain_losses);
    assert!(towers.weights() == plain.weights(), "weights after 5 steps with towers");
    assert_eq!(graph_losses, plain_losses);
    assert!(m.weights() == plain.weights(), "weights after 2 steps and 3 replays with towers");
    assert!(plain_losses[4] < plain_losses[0], "the net learns: {plain_losses:?}");
    // conv2 and conv3 ran on both side streams, forward and backward, in every step.
    assert!(launched[1] >= 5 * 2 * 3 && launched[1] == launched[2], "{launched:?}");
}

#[test]
fn a_profiled_step_times_each_tower_on_its_stream() {
    let _turn = one_at_a_time();
    let device = Device::Emu(0);
    let mut m = TowerNet::new(device);
    let x = Tensor::randn([2, 3, 5, 5], 0.0, 1.0, DType::F32, 6).to_device(device).unwrap();
    let y = Tensor::from_vec([2], vec![1i64, 2]).unwrap().to_device(device).unwrap();
    let mut g = Graph::new().with_options(ExecOptions { towers: true, ..ExecOptions::default() });
    g.start_profile(device).unwrap();
    let logits = m.forward(&mut g, &Var::constant(x)).unwrap();
    let loss = g.cross_entropy(&logits, &y).unwrap();
    let profile = g.backward(&loss).unwrap().take_profile().unwrap();

    let labels: Vec<(&str, usize)> = profile.streams.iter().map(|s| (s.label.as_str(), s.stream)).collect();
    let expected: Vec<(&str, usize)> =
        ["conv2", "conv3", "conv3 (backward)", "conv2 (backward)"].iter().flat_map(|&l| [(l, 1), (l, 2)]).collect();
    assert_eq!(labels, expected);
    let regions = scratchnet::autograd::profile::stream_regions(&profile.streams);
    assert_eq!(regions.len(), 4);
    let step_ms = profile.forward_total_ms() + profile.backward_total_ms();
    for (label, busy, wall) in &regions {
        assert_eq!(busy.len(), 2, "{label}");
        // The emulator runs one launch at a time: the towers follow one another, so the whole
        // takes at least as long as its parts (on a GPU they overlap and it takes less).
        assert!(*wall >= busy.iter().sum::<f64>() * 0.999 - 1e-6, "{label}: {busy:?} in {wall}");
        assert!(*wall <= step_ms, "{label}: {wall} ms of a {step_ms} ms step");
    }
    for s in &profile.streams {
        assert!(s.start_ms >= 0.0 && s.start_ms + s.ms <= step_ms + 1e-3, "{s:?} in a {step_ms} ms step");
    }
}

#[test]
fn side_streams_hold_freed_memory_back_until_the_join() {
    let _turn = one_at_a_time();
    let gpu = emu();
    let cached_before = gpu.memory_stats().cached;
    let mut freed = gpu
        .on_streams(2, |_| {
            assert_ne!(streams::current_on(Device::Emu(0)), 0);
            let b = gpu.alloc(DType::F32, 4000)?;
            Ok(b.ptr())
        })
        .unwrap();
    assert_eq!(streams::current_on(Device::Emu(0)), 0, "the main stream is current again");
    // Stream 2 could not take the block stream 1 had freed: its kernels might still read it.
    assert_ne!(freed[0], freed[1]);
    if gpu.caches_freed_memory() {
        // After the join both are in the cache.
        let again = [gpu.alloc(DType::F32, 4000).unwrap(), gpu.alloc(DType::F32, 4000).unwrap()];
        let mut reused: Vec<u64> = again.iter().map(|b| b.ptr()).collect();
        reused.sort_unstable();
        freed.sort_unstable();
        assert_eq!(reused, freed);
    } else {
        // Without a cache (AddressSanitizer) they went back to the system at the join.
        assert_eq!(gpu.memory_stats().cached, cached_before);
    }

    let e = gpu.on_streams(0, |_| Ok(())).unwrap_err().to_string();
    assert!(e.contains("work for 0 side streams"), "{e}");
    let e = gpu.on_streams(SIDE_STREAMS + 1, |_| Ok(())).unwrap_err().to_string();
    assert!(e.contains(&format!("1 to {SIDE_STREAMS} allowed")), "{e}");
    let nested = gpu.on_streams(1, |_| gpu.on_streams(1, |_| Ok(())).map(|_| ()));
    assert!(nested.unwrap_err().to_string().contains("cannot fork again"));
    // A failing tower still joins: the main stream is current afterwards.
    let failed =
        gpu.on_streams(2, |i| if i == 1 { Err(scratchnet::Error::Device("tower 1 failed".into())) } else { Ok(i) });
    assert_eq!(failed.unwrap_err().to_string(), "device: tower 1 failed");
    assert_eq!(streams::current_on(Device::Emu(0)), 0);
}

#[test]
fn a_tower_that_panics_still_joins_and_the_next_fork_works() {
    let _turn = one_at_a_time();
    let gpu = emu();
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _ = gpu.on_streams(2, |i| -> Result<()> {
            let _held = gpu.alloc(DType::F32, 1000)?;
            if i == 1 {
                panic!("tower 1 panics");
            }
            Ok(())
        });
    }));
    assert!(caught.is_err());
    assert_eq!(streams::current_on(Device::Emu(0)), 0, "the main stream is current again");
    assert!(!streams::forked());
    // The blocks the towers freed went back to the cache at the join (or, without a cache,
    // to the system: nothing stays held back).
    let before = gpu.memory_stats();
    if gpu.caches_freed_memory() {
        let reused = gpu.alloc(DType::F32, 1000).unwrap();
        assert_eq!(gpu.memory_stats().device_allocations, before.device_allocations, "{reused:?}");
    } else {
        assert_eq!(before.cached, 0);
    }
    assert_eq!(gpu.on_streams(2, |i| Ok(i * 10)).unwrap(), vec![0, 10]);
}

#[test]
fn a_profiled_graph_dropped_before_backward_stops_the_stream_log() {
    let _turn = one_at_a_time();
    let device = Device::Emu(0);
    let gpu = emu();
    let mut m = TowerNet::new(device);
    let x = Tensor::randn([2, 3, 5, 5], 0.0, 1.0, DType::F32, 7).to_device(device).unwrap();
    {
        let mut g = Graph::new().with_options(ExecOptions { towers: true, ..ExecOptions::default() });
        g.start_profile(device).unwrap();
        m.forward(&mut g, &Var::constant(x)).unwrap();
    }
    gpu.on_streams(2, |_| Ok(())).unwrap();
    assert!(gpu.take_stream_log().is_empty(), "no span is kept once the profile is gone");
}

/// The kernels a graph runs are the graph's own choice: two graphs alive at once, one with
/// the direct convolution and one with the implicit GEMM, each launch the kernel they carry,
/// forward and backward, and agree on the values.
#[test]
fn two_graphs_in_one_process_run_the_convolution_kernels_each_one_carries() {
    let _turn = one_at_a_time();
    let gpu = emu();
    let device = Device::Emu(0);
    let x = Tensor::randn([2, 4, 6, 6], 0.0, 1.0, DType::F32, 8).to_device(device).unwrap();
    let w =
        scratchnet::Param::new("w", Tensor::randn([5, 4, 3, 3], 0.0, 0.3, DType::F32, 9).to_device(device).unwrap());
    let p = Conv2dParams::default().padding(1);
    let options = |conv_algo| ExecOptions { conv_algo, ..ExecOptions::default() };
    let mut direct = Graph::new().with_options(options(ConvAlgo::Direct));
    let mut implicit = Graph::new().with_options(options(ConvAlgo::ImplicitGemm));
    let conv_kernels = |log: Vec<(&'static str, _)>| -> Vec<&'static str> {
        log.into_iter().map(|(name, _)| name).filter(|n| n.starts_with("conv2d_")).collect()
    };
    gpu.start_launch_log();
    let (wd, wi) = (direct.param(&w), implicit.param(&w));
    let yd = direct.conv2d(&Var::constant(x.clone()), &wd, None, p).unwrap();
    let yi = implicit.conv2d(&Var::constant(x.clone()), &wi, None, p).unwrap();
    let gd = direct.backward_with_grad(&yd, yd.value().clone()).unwrap();
    let gi = implicit.backward_with_grad(&yi, yi.value().clone()).unwrap();
    let launched = conv_kernels(gpu.take_launch_log());
    assert_eq!(
        launched,
        [
            "conv2d_fwd_direct_f32",
            "conv2d_fwd_implicit_gemm_f32",
            "conv2d_bwd_filter_direct_f32",
            "conv2d_bwd_filter_implicit_gemm_f32"
        ],
        "{launched:?}"
    );
    assert!(err(yi.value(), yd.value()) < 1e-5);
    assert!(err(gi.of_param(&w).unwrap(), gd.of_param(&w).unwrap()) < 1e-4);
}
