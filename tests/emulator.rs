//! The emulator's CUDA semantics, through its own test kernels (kernels/emu/tests/), launched
//! by the same host path as every op: barriers, warp shuffles and votes, partial warps,
//! atomics, dynamic shared memory, early-returning threads, half types, and a broken
//! barrier that must be reported instead of hanging.

use std::process::Command;
use std::sync::Arc;

use scratchnet::device::GpuDevice;
use scratchnet::device::gpu::{GpuBuffer, KernelCall};
use scratchnet::{DType, Device};

fn emu() -> Arc<GpuDevice> {
    Device::Emu(0).gpu().expect("emu opens").expect("emu is a GPU-like device")
}

fn upload_f32(gpu: &Arc<GpuDevice>, v: &[f32]) -> GpuBuffer {
    gpu.upload(DType::F32, v.len(), bytemuck::cast_slice(v)).expect("upload")
}

/// A zeroed buffer of `n` elements of a 2-, 4- or 8-byte type (the dtype only sets the size).
fn zeros(gpu: &Arc<GpuDevice>, bytes_per: usize, n: usize) -> GpuBuffer {
    let dtype = match bytes_per {
        2 => DType::F16,
        4 => DType::F32,
        _ => DType::F64,
    };
    gpu.zeros(dtype, n).expect("alloc")
}

fn download<T: bytemuck::Pod>(gpu: &Arc<GpuDevice>, b: &GpuBuffer) -> Vec<T> {
    let mut bytes = vec![0u8; b.bytes()];
    gpu.download(b, &mut bytes).expect("download");
    bytes.chunks_exact(std::mem::size_of::<T>()).map(bytemuck::pod_read_unaligned).collect()
}

fn values(n: usize) -> Vec<f32> {
    (0..n).map(|i| ((i * 37) % 101) as f32 * 0.25 - 10.0).collect()
}

#[test]
fn shared_memory_tree_reductions_with_barriers() {
    let gpu = emu();
    let x = values(1000);
    let xb = upload_f32(&gpu, &x);
    let out = zeros(&gpu, 4, 1);
    gpu.launch(KernelCall::new("emu_test_block_sum_f32").grid(3, 1, 1).block(256, 1, 1).buf(&out).buf(&xb).i64(1000))
        .unwrap();
    let want: f32 = x.iter().sum();
    assert!((download::<f32>(&gpu, &out)[0] - want).abs() < 1e-2);

    // A 3-D block of 8×4×2 threads, numbered x-fastest as on the GPU.
    let out = zeros(&gpu, 4, 4);
    gpu.launch(KernelCall::new("emu_test_block_sum_2d").grid(4, 1, 1).block(8, 4, 2).buf(&out).buf(&xb).i64(1000))
        .unwrap();
    let got = download::<f32>(&gpu, &out);
    for (b, g) in got.iter().enumerate() {
        let want: f32 = x[b * 64..(b + 1) * 64].iter().sum();
        assert!((g - want).abs() < 1e-3, "block {b}: {g} vs {want}");
    }
}

#[test]
fn warp_shuffles_sum_a_warp() {
    let gpu = emu();
    let n = 100;
    let x = values(n);
    let xb = upload_f32(&gpu, &x);
    let (down, xor) = (zeros(&gpu, 4, 4), zeros(&gpu, 4, 128));
    gpu.launch(
        KernelCall::new("emu_test_warp_sums").grid(2, 1, 1).block(64, 1, 1).buf(&down).buf(&xor).buf(&xb).i32(n as i32),
    )
    .unwrap();
    let (down, xor) = (download::<f32>(&gpu, &down), download::<f32>(&gpu, &xor));
    for w in 0..4 {
        let want: f32 = x.iter().skip(w * 32).take(32).sum();
        assert!((down[w] - want).abs() < 1e-3, "warp {w}");
        for lane in 0..32 {
            assert!((xor[w * 32 + lane] - want).abs() < 1e-3, "xor warp {w} lane {lane}");
        }
    }
}

#[test]
fn votes_and_partial_warps() {
    let gpu = emu();
    let pred: Vec<i32> = (0..64).map(|i| (i % 3 == 0) as i32).collect();
    let pb = gpu.upload(DType::F32, 64, bytemuck::cast_slice(&pred)).unwrap();
    let bufs: Vec<GpuBuffer> = (0..4).map(|_| zeros(&gpu, 4, 64)).collect();
    gpu.launch(
        KernelCall::new("emu_test_votes")
            .block(64, 1, 1)
            .buf(&bufs[0])
            .buf(&bufs[1])
            .buf(&bufs[2])
            .buf(&bufs[3])
            .buf(&pb),
    )
    .unwrap();
    let ballot = download::<u32>(&gpu, &bufs[0]);
    let any = download::<i32>(&gpu, &bufs[1]);
    let all = download::<i32>(&gpu, &bufs[2]);
    for w in 0..2 {
        let want: u32 = (0..32).filter(|l| pred[w * 32 + l] != 0).map(|l| 1u32 << l).sum();
        assert_eq!(ballot[w * 32], want, "warp {w}");
        assert_eq!(any[w * 32], 1);
        assert_eq!(all[w * 32], 0);
    }

    // 40 threads: a full warp and a warp of 8 lanes.
    let x = values(80);
    let xb = upload_f32(&gpu, &x);
    let (sum, ballot, active, poison) = (zeros(&gpu, 4, 2), zeros(&gpu, 4, 80), zeros(&gpu, 4, 80), zeros(&gpu, 4, 80));
    gpu.launch(
        KernelCall::new("emu_test_partial_warp")
            .grid(2, 1, 1)
            .block(40, 1, 1)
            .buf(&sum)
            .buf(&ballot)
            .buf(&active)
            .buf(&poison)
            .buf(&xb),
    )
    .unwrap();
    let sums = download::<f32>(&gpu, &sum);
    for b in 0..2 {
        let want: f32 = x[b * 40..(b + 1) * 40].iter().sum();
        assert!((sums[b] - want).abs() < 1e-3);
    }
    let active = download::<u32>(&gpu, &active);
    assert_eq!(active[0], 0xffff_ffff);
    assert_eq!(active[35], 0x0000_00ff);
    let poison = download::<f32>(&gpu, &poison);
    assert!(poison[36].is_nan(), "a shuffle from a lane that does not exist reads NaN");
    assert_eq!(poison[1], x[5]);
}

#[test]
fn atomics_from_many_blocks() {
    let gpu = emu();
    let n = 1000usize;
    let x = values(n);
    let xb = upload_f32(&gpu, &x);
    let fsum = zeros(&gpu, 4, 1);
    let dsum = zeros(&gpu, 8, 1);
    let icount = zeros(&gpu, 4, 1);
    let ucount = zeros(&gpu, 8, 1);
    let imax = gpu.upload(DType::F32, 1, bytemuck::bytes_of(&i32::MIN)).unwrap();
    let imin = gpu.upload(DType::F32, 1, bytemuck::bytes_of(&i32::MAX)).unwrap();
    let cas = zeros(&gpu, 4, 1);
    let sub = zeros(&gpu, 4, 1);
    gpu.launch(
        KernelCall::elementwise("emu_test_atomics", n)
            .buf(&fsum)
            .buf(&dsum)
            .buf(&icount)
            .buf(&ucount)
            .buf(&imax)
            .buf(&imin)
            .buf(&cas)
            .buf(&sub)
            .buf(&xb)
            .i64(n as i64),
    )
    .unwrap();
    let want: f64 = x.iter().map(|&v| v as f64).sum();
    assert!((download::<f32>(&gpu, &fsum)[0] as f64 - want).abs() < 1e-1);
    assert!((download::<f64>(&gpu, &dsum)[0] - want).abs() < 1e-6);
    assert_eq!(download::<i32>(&gpu, &icount)[0], n as i32);
    assert_eq!(download::<u64>(&gpu, &ucount)[0], 2 * n as u64);
    let max = x.iter().map(|&v| (v * 1000.0) as i32).max().unwrap();
    let min = x.iter().map(|&v| (v * 1000.0) as i32).min().unwrap();
    assert_eq!(download::<i32>(&gpu, &imax)[0], max);
    assert_eq!(download::<i32>(&gpu, &imin)[0], min);
    assert_eq!(download::<u32>(&gpu, &cas)[0], n as u32);
    assert_eq!(download::<i32>(&gpu, &sub)[0], -(n as i32));
}

#[test]
fn dynamic_shared_memory_starts_poisoned_in_every_block() {
    let gpu = emu();
    let x = values(128);
    let xb = upload_f32(&gpu, &x);
    let (out, poison) = (zeros(&gpu, 4, 128), zeros(&gpu, 4, 2));
    gpu.launch(
        KernelCall::new("emu_test_dynamic_shared")
            .grid(2, 1, 1)
            .block(64, 1, 1)
            .shared_bytes(65 * 4)
            .buf(&out)
            .buf(&poison)
            .buf(&xb),
    )
    .unwrap();
    let out = download::<f32>(&gpu, &out);
    assert_eq!(out[0], x[63]);
    assert_eq!(out[64], x[127]);
    assert!(download::<f32>(&gpu, &poison).iter().all(|v| v.is_nan()));
}

#[test]
fn returned_threads_count_as_arrived_at_barriers() {
    let gpu = emu();
    let out = zeros(&gpu, 4, 8);
    let active = 100;
    gpu.launch(KernelCall::new("emu_test_early_return").grid(2, 1, 1).block(256, 1, 1).buf(&out).i32(active)).unwrap();
    let out = download::<i32>(&gpu, &out);
    let want_sum = active * (active + 1) / 2;
    let want_count = (0..active).filter(|t| t % 3 == 0).count() as i32;
    assert_eq!(&out[..4], &[want_sum, want_count, 1, 1]);
    assert_eq!(&out[4..], &[want_sum, want_count, 1, 1]);
}

#[test]
fn a_divergent_barrier_is_an_error_not_a_hang() {
    let gpu = emu();
    let out = zeros(&gpu, 4, 8 * 32);
    let e = gpu
        .launch(KernelCall::new("emu_test_divergent_barrier").grid(8, 1, 1).block(32, 1, 1).buf(&out))
        .unwrap_err()
        .to_string();
    assert!(e.contains("__syncthreads() reached by 31 of 32 live threads of block (3,0,0)"), "{e}");
    // The emulator still works afterwards.
    shared_memory_tree_reductions_with_barriers();
}

#[test]
fn half_conversions_round_like_the_half_crate() {
    let gpu = emu();
    let x: Vec<f32> = vec![0.1, -2.5, 65504.0, 70000.0, 1e-7, f32::NAN, 2.71, -0.0];
    let n = x.len();
    let xb = upload_f32(&gpu, &x);
    let (h, b, back, hsum) = (zeros(&gpu, 2, n), zeros(&gpu, 2, n), zeros(&gpu, 4, n), zeros(&gpu, 2, n));
    gpu.launch(
        KernelCall::elementwise("emu_test_half", n).buf(&h).buf(&b).buf(&back).buf(&hsum).buf(&xb).i64(n as i64),
    )
    .unwrap();
    let h = download::<u16>(&gpu, &h);
    let b = download::<u16>(&gpu, &b);
    for (i, &v) in x.iter().enumerate() {
        let (want_h, want_b) = (half::f16::from_f32(v), half::bf16::from_f32(v));
        if v.is_nan() {
            assert!(half::f16::from_bits(h[i]).is_nan() && half::bf16::from_bits(b[i]).is_nan());
        } else {
            assert_eq!(h[i], want_h.to_bits(), "f16 of {v}");
            assert_eq!(b[i], want_b.to_bits(), "bf16 of {v}");
        }
    }
}

/// In a build with `SCRATCHNET_EMU_ASAN=1`, AddressSanitizer reports a kernel that reads one
/// element past the end of its input. The read happens in a child process (ASan stops the
/// process that makes it), which is this test binary running only this test.
#[test]
fn address_sanitizer_catches_an_out_of_bounds_read() {
    if !cfg!(scratchnet_emu_asan) {
        eprintln!("skipped: the emulator was built without AddressSanitizer (SCRATCHNET_EMU_ASAN=1)");
        return;
    }
    if std::env::var_os("SCRATCHNET_ASAN_CHILD").is_some() {
        let gpu = emu();
        let x = upload_f32(&gpu, &values(16));
        let out = zeros(&gpu, 4, 1);
        let _ = gpu.launch(KernelCall::new("emu_test_read_past_end").buf(&out).buf(&x).i64(16));
        return;
    }
    let exe = std::env::current_exe().expect("the test binary knows its path");
    let child = Command::new(exe)
        .args(["address_sanitizer_catches_an_out_of_bounds_read", "--exact", "--nocapture"])
        .env("SCRATCHNET_ASAN_CHILD", "1")
        .output()
        .expect("the child runs");
    let stderr = String::from_utf8_lossy(&child.stderr);
    assert!(!child.status.success(), "the child should have been stopped by ASan");
    assert!(stderr.contains("heap-buffer-overflow"), "{stderr}");
    assert!(stderr.contains("emu_test_read_past_end"), "{stderr}");
}

/// Events time the device's queue: on the emulator, whose launches finish before they return,
/// the time between two events is the host time between recording them.
#[test]
fn events_measure_the_time_between_them() {
    let gpu = emu();
    let start = gpu.record_event().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(30));
    let middle = gpu.record_event().unwrap();
    let end = gpu.record_event().unwrap();
    let slept = start.elapsed_ms(&middle).unwrap();
    assert!((30.0..3000.0).contains(&slept), "{slept} ms");
    let nothing = middle.elapsed_ms(&end).unwrap();
    assert!((0.0..slept).contains(&nothing), "{nothing} ms");
    assert!(start.elapsed_ms(&end).unwrap() >= slept);
}

/// A captured graph runs nothing while it is recorded, then replays the same kernels on
/// whatever its input buffers hold; host copies inside a capture are refused, as CUDA does.
#[test]
fn a_captured_graph_replays_its_kernels_on_new_inputs() {
    let gpu = emu();
    let a = upload_f32(&gpu, &[1.0, 2.0, 3.0, 4.0, 5.0]);
    let b = upload_f32(&gpu, &[10.0; 5]);
    let y = gpu.zeros(DType::F32, 5).unwrap();
    let (graph, sum) = gpu
        .capture(|| {
            gpu.launch(KernelCall::vec4("add_f32", 5).buf(&y).buf(&a).buf(&b).i64(5))?;
            let sum = gpu.alloc(DType::F32, 5)?;
            gpu.launch(KernelCall::vec4("add_f32", 5).buf(&sum).buf(&y).buf(&b).i64(5))?;
            Ok(sum)
        })
        .unwrap();
    let read = |buf: &GpuBuffer| {
        let mut bytes = vec![0u8; buf.bytes()];
        gpu.download(buf, &mut bytes).unwrap();
        bytemuck::cast_slice::<u8, f32>(&bytes).to_vec()
    };
    assert_eq!(read(&y), [0.0; 5], "capturing runs nothing");
    graph.replay().unwrap();
    assert_eq!(read(&y), [11.0, 12.0, 13.0, 14.0, 15.0]);
    assert_eq!(read(&sum), [21.0, 22.0, 23.0, 24.0, 25.0]);
    gpu.write(&a, bytemuck::cast_slice(&[100.0f32, 200.0, 300.0, 400.0, 500.0])).unwrap();
    graph.replay().unwrap();
    assert_eq!(read(&sum), [120.0, 220.0, 320.0, 420.0, 520.0]);

    // A buffer allocated in the capture belongs to the graph: freed, it is not handed out
    // again while the graph lives (a replay would overwrite it).
    let y_ptr = sum.ptr();
    drop(sum);
    let other = gpu.alloc(DType::F32, 5).unwrap();
    assert_ne!(other.ptr(), y_ptr);
    drop(graph);

    let refused = gpu.capture(|| {
        let mut bytes = vec![0u8; a.bytes()];
        gpu.download(&a, &mut bytes)
    });
    let e = refused.err().expect("a download inside a capture fails").to_string();
    assert!(e.contains("while capturing"), "{e}");
}

/// A graph whose work reads a buffer allocated before the capture (an optimizer's momentum,
/// say), freed after it: a replay would use memory nobody owns. It is refused; and with the
/// cache on, the block stays with the graph rather than going to the next buffer. (Without
/// the cache, as in the AddressSanitizer build, the block goes back to the system, where any
/// access to it would be reported.)
#[test]
fn a_graph_refuses_to_replay_over_a_buffer_freed_since_its_capture() {
    let gpu = scratchnet::device::emu::device_with_memory(1 << 20);
    let x = upload_f32(&gpu, &[1.0, -2.0, 3.0, -4.0]);
    let (graph, y) = gpu
        .capture(|| {
            let y = gpu.alloc(DType::F32, 4)?;
            gpu.launch(KernelCall::elementwise("relu_fwd_f32", 4).buf(&y).buf(&x).i64(4))?;
            Ok(y)
        })
        .unwrap();
    graph.replay().unwrap();
    assert_eq!(download::<f32>(&gpu, &y), [1.0, 0.0, 3.0, 0.0]);
    let freed = x.ptr();
    drop(x);
    let e = graph.replay().unwrap_err().to_string();
    assert!(e.contains("uses 1 buffer(s) freed since its capture"), "{e}");
    if gpu.caches_freed_memory() {
        let other = gpu.alloc(DType::F32, 4).unwrap();
        assert_ne!(other.ptr(), freed, "the freed block stays with the graph");
    }
    // The graph's own output, freed while the graph lives, is no such case.
    drop(y);
    drop(graph);
}

/// The bench's captured training step builds its optimizer inside `prepare`; the graph reads
/// and writes the optimizer's momentum and learning rate at every replay, so it must keep
/// them alive after `prepare` returns.
#[test]
fn a_captured_training_step_replays_after_its_setup_returns() {
    use scratchnet::bench::{Problem, TrainStep, Variant};
    let step =
        TrainStep { model: "resnet20".into(), batch: 2, input: [3, 32, 32], num_classes: 10, memory_efficient: false };
    let mut run = Problem::TrainStep(step).prepare(Device::Emu(0), Variant::CudaGraph, &Default::default()).unwrap();
    run().unwrap();
    run().unwrap();
}
