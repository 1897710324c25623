//! The caching allocator: once a training step has run, the next ones reuse its memory and
//! call the device allocator no more. (A file of its own, so that no other test shares the
//! emulated device while this one counts its allocations.)

use std::sync::Mutex;

use scratchnet::models::{self, ResNetCifar};
use scratchnet::nn::{Module, Sgd};
use scratchnet::{DType, Device, Graph, Tensor, Var};

/// Held by each test that measures the shared emulated device, so that none of them counts
/// another's buffers.
static EMU: Mutex<()> = Mutex::new(());

#[test]
fn steady_state_training_does_no_device_allocation() {
    let _alone = EMU.lock().unwrap_or_else(|e| e.into_inner());
    let gpu = Device::Emu(0).gpu().unwrap().unwrap();
    // The smallest ResNet at a tiny size keeps the emulator quick.
    let mut model = ResNetCifar::new(3, 4, 0);
    model.to_device(Device::Emu(0)).unwrap();
    let mut opt = Sgd::new(0.01, 0.9, 5e-4);
    let x = Tensor::randn([2, 3, 8, 8], 0.0, 1.0, DType::F32, 6).to_device(Device::Emu(0)).unwrap();
    let y = Tensor::from_vec([2], vec![0i64, 3]).unwrap().to_device(Device::Emu(0)).unwrap();
    let mut step = || {
        let mut g = Graph::new();
        let logits = model.forward(&mut g, &Var::constant(x.clone())).unwrap();
        let loss = g.cross_entropy(&logits, &y).unwrap();
        g.backward(&loss).unwrap().accumulate_into(model.params_mut()).unwrap();
        opt.step(model.params_mut()).unwrap();
    };
    step();
    step();
    let before = gpu.memory_stats();
    step();
    step();
    let after = gpu.memory_stats();
    if before.cached == 0 {
        eprintln!("skipped: this emulator build frees every buffer at once (AddressSanitizer)");
        return;
    }
    assert_eq!(after.device_allocations, before.device_allocations, "{before:?} → {after:?}");
    assert_eq!(after.in_use, before.in_use, "memory held between steps must not grow");
    assert!(after.peak > after.in_use);
}

/// DenseNet's memory-efficient mode recomputes each bottleneck's concatenation and normalised
/// activations in backward: between the forward pass and the backward one, the device holds
/// less than half of what the plain mode holds. (`scratchnet profile` counts what the tape's
/// entries keep; this counts every buffer, whatever holds it.)
#[test]
fn memory_efficient_densenet_holds_less_until_backward() {
    let _alone = EMU.lock().unwrap_or_else(|e| e.into_inner());
    let gpu = Device::Emu(0).gpu().unwrap().unwrap();
    let held = |memory_efficient: bool| {
        let mut m = models::build("densenet_bc100", 5, 3).unwrap();
        assert!(m.set_memory_efficient(memory_efficient) > 0);
        m.to_device(Device::Emu(0)).unwrap();
        let x = Tensor::randn([2, 3, 8, 8], 0.0, 1.0, DType::F32, 4).to_device(Device::Emu(0)).unwrap();
        let labels = Tensor::from_vec([2], vec![1i64, 3]).unwrap().to_device(Device::Emu(0)).unwrap();
        let before = gpu.memory_stats().in_use;
        let mut g = Graph::new();
        let logits = m.forward(&mut g, &Var::constant(x)).unwrap();
        let loss = g.cross_entropy(&logits, &labels).unwrap();
        let held = gpu.memory_stats().in_use - before;
        g.backward(&loss).unwrap();
        held
    };
    let (plain, lean) = (held(false), held(true));
    eprintln!("held from forward to backward: {plain} bytes, memory-efficient {lean}");
    assert!(lean * 2 < plain, "{lean} bytes held is not under half of {plain}");
}

/// A BF16 graph keeps 16-bit copies of the activations its backward reads: between the
/// forward pass and the backward one the device holds about half of what the FP32 copies
/// take (every buffer counted, in the allocator's size classes, and batch statistics that
/// stay FP32: a little over half).
#[test]
fn a_bf16_graph_holds_half_the_memory_until_backward() {
    use scratchnet::ops::{ExecOptions, Precision};
    let _alone = EMU.lock().unwrap_or_else(|e| e.into_inner());
    let gpu = Device::Emu(0).gpu().unwrap().unwrap();
    let held = |keep_activations_fp32: bool| {
        let mut model = ResNetCifar::new(3, 4, 0);
        model.to_device(Device::Emu(0)).unwrap();
        let x = Tensor::randn([4, 3, 16, 16], 0.0, 1.0, DType::F32, 6).to_device(Device::Emu(0)).unwrap();
        let y = Tensor::from_vec([4], vec![0i64, 3, 1, 2]).unwrap().to_device(Device::Emu(0)).unwrap();
        let before = gpu.memory_stats().in_use;
        let exec = ExecOptions { keep_activations_fp32, ..ExecOptions::with_precision(Precision::Bf16) };
        let mut g = Graph::new().with_options(exec);
        let logits = model.forward(&mut g, &Var::constant(x)).unwrap();
        let loss = g.cross_entropy(&logits, &y).unwrap();
        let held = gpu.memory_stats().in_use - before;
        g.backward(&loss).unwrap();
        held
    };
    let (fp32, bf16) = (held(true), held(false));
    eprintln!("held from forward to backward in BF16: {fp32} bytes with FP32 copies, {bf16} with BF16 ones");
    assert!(fp32 <= 2 * bf16 && 2 * bf16 <= fp32 + fp32 / 10, "{bf16} bytes held is not half of {fp32}");
}

#[test]
fn a_full_device_empties_its_cache_then_says_how_much_was_missing() {
    const MIB: usize = 1 << 20;
    let gpu = scratchnet::device::emu::device_with_memory(8 * MIB);
    if !gpu.caches_freed_memory() {
        eprintln!("skipped: this emulator build frees every buffer at once (AddressSanitizer)");
        return;
    }
    // Two 3 MiB buffers, freed: they stay in the cache, holding 6 of the 8 MiB.
    for _ in 0..2 {
        let a = gpu.alloc(DType::F32, 3 * MIB / 4).unwrap();
        let b = gpu.alloc(DType::F32, 3 * MIB / 4).unwrap();
        drop((a, b));
    }
    assert_eq!(gpu.memory_stats().cached, 6 * MIB);
    // 5 MiB fits only once the cache is given back: the allocator retries after emptying it.
    let big = gpu.alloc(DType::F32, 5 * MIB / 4).unwrap();
    assert_eq!(gpu.memory_stats().cached, 0);
    // 4 MiB more cannot fit beside it: an error that says how much, not an abort.
    let e = gpu.alloc(DType::F32, MIB).unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, scratchnet::Error::OutOfMemory { bytes, .. } if bytes == 4 * MIB), "{text}");
    assert!(text.starts_with("out of memory on emu: 4.2 MB more were needed for a buffer of 1048576 f32"), "{text}");
    assert!(text.contains("5.2 MB already in use, the cache emptied"), "{text}");
    drop(big);
    gpu.alloc(DType::F32, MIB).unwrap();
}
