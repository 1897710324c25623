//! The tensor-core kernels (kernels/conv2d_tc.cu, kernels/gemm_tc.cu on kernels/tc_gemm.cuh)
//! through the emulator, every kernel forced one at a time (each direction × precision × tile
//! configuration), against the definition in f64 on operands rounded as the precision rounds
//! them, its result rounded for BF16 and FP16. Outputs start as NaN (poisoned allocations), so
//! an element no kernel writes fails.
//!
//! The tolerance of an output: the error of summing its K exact products in FP32 in some
//! order, at most K·2⁻²⁴ times the sum of their magnitudes, plus, for the 16-bit types, one
//! unit in the last place of the type (the FP32 sums of the kernel and of the reference may
//! fall on either side of a rounding boundary). A product missing, counted twice or taken
//! from the wrong element moves an output by about the size of one product, far more.
//!
//! The shapes aim at the edges: sizes that are not multiples of the 64×64 or 128×64 tiles nor
//! of the 16-deep slices; 1×1, 3×3 stride 2 padded, dilated and grouped convolutions and a
//! 7×7 stride-2 stem of 3 channels (K = 147: the weights gathered 4 bytes at a time), beside
//! K = 72 (weights copied 16 bytes at a time); a filter gradient split along N·OH·OW.

use scratchnet::ops::conv2d::reference as conv_ref;
use scratchnet::ops::conv2d::{self, Conv2dParams, ConvAlgo, ConvGeometry};
use scratchnet::ops::gemm::{self, GemmKernel};
use scratchnet::ops::{ExecOptions, Precision};
use scratchnet::{DType, Device, Tensor};

/// Held by every test of this file, so that the one reading the emulator's launch log sees
/// only its own launches.
static LAUNCHES: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    LAUNCHES.lock().unwrap_or_else(|p| p.into_inner())
}

const LOW: [Precision; 3] = [Precision::Tf32, Precision::Bf16, Precision::Fp16];
const TILES: [ConvAlgo; 2] = [ConvAlgo::TensorCore64, ConvAlgo::TensorCore128];

/// One unit in the last place of `x` in the 16-bit output type of `p` (0 for TF32, whose
/// outputs are not rounded).
fn ulp16(p: Precision, x: f64) -> f64 {
    let (mantissa, min_exp) = match p {
        Precision::Bf16 => (7, -126),
        Precision::Fp16 => (10, -14),
        _ => return 0.0,
    };
    let e = if x == 0.0 { min_exp } else { (x.abs().log2().floor() as i32).max(min_exp) };
    2f64.powi(e - mantissa)
}

/// `values` rounded as `p` rounds operands, in f64.
fn rounded(t: &Tensor, p: Precision) -> Vec<f64> {
    t.to_vec::<f32>().unwrap().iter().map(|&v| p.round(v) as f64).collect()
}

fn abs(v: &[f64]) -> Vec<f64> {
    v.iter().map(|x| x.abs()).collect()
}

/// Compares `got` with what follows from the exact sums `exact` (before any output
/// rounding), whose products' magnitudes sum to `mags`, over sums of `k` products; `expected`
/// turns an exact sum into the wanted output (rounding, bias, ReLU). Returns a line per
/// mismatch (at most three).
fn mismatches(
    what: &str,
    p: Precision,
    got: &Tensor,
    exact: &[f64],
    mags: &[f64],
    k: usize,
    expected: impl Fn(usize, f64) -> f64,
) -> Vec<String> {
    let got = got.to_vec::<f32>().unwrap();
    assert_eq!(got.len(), exact.len(), "{what}");
    let mut out = Vec::new();
    for (i, (&g, (&v, &m))) in got.iter().zip(exact.iter().zip(mags)).enumerate() {
        let w = expected(i, v);
        // Two FP32 sums (the kernel's, and the reference's where it is a CPU result) may each
        // be off by K·2⁻²⁴·Σ|products|; the 16-bit rounding of the sum by one unit of the
        // type at its magnitude; adding the bias in FP32 by one FP32 unit.
        let sum_error = 2.0 * (k as f64) * 2f64.powi(-24) * m;
        let tol = sum_error + ulp16(p, v.abs() + sum_error) + w.abs() * 2f64.powi(-23) + 1e-30;
        let within = (g as f64 - w).abs() <= tol; // false for a NaN: an element never written
        if !within && out.len() < 3 {
            out.push(format!("{what} {p}: element {i} is {g}, want {w} (tolerance {tol:e})"));
        }
    }
    out
}

/// Outputs of a 16-bit precision are values of the 16-bit type (the kernel rounded them):
/// a line for the first that is not.
fn unrounded(what: &str, p: Precision, got: &Tensor) -> Vec<String> {
    let got = got.to_vec::<f32>().unwrap();
    match got.iter().position(|&v| p.rounds_output() && p.round(v) != v) {
        Some(i) => vec![format!("{what} {p}: element {i} = {} is not a {p} value", got[i])],
        None => Vec::new(),
    }
}

/// The output rounding of `p`, in f64.
fn round_out(p: Precision, v: f64) -> f64 {
    if p.rounds_output() { p.round(v as f32) as f64 } else { v }
}

/// (x dims, w dims, params, fuse a ReLU).
type Case = ([usize; 4], [usize; 4], Conv2dParams, bool);

fn cases() -> Vec<Case> {
    let p = Conv2dParams::default;
    vec![
        // 1×1, 13 channels: K = 13, one partial slice.
        ([2, 13, 5, 7], [6, 13, 1, 1], p(), false),
        // 3×3, stride 2, padded.
        ([2, 5, 9, 8], [7, 5, 3, 3], p().stride(2).padding(1), true),
        // Dilated.
        ([1, 4, 11, 10], [3, 4, 3, 3], p().padding(2).dilation(2), false),
        // Three groups of two channels.
        ([2, 6, 7, 5], [6, 2, 3, 3], p().padding(1).groups(3), true),
        // The stem: 7×7, stride 2, 3 channels (K = 147).
        ([1, 3, 23, 23], [8, 3, 7, 7], p().stride(2).padding(3), true),
        // 130 output channels: two row tiles of 128 (three of 64); K = 72, a multiple of 4.
        ([1, 72, 4, 3], [130, 72, 1, 1], p(), false),
    ]
}

/// The inputs of a case: x, w, bias, and an output gradient.
fn inputs(i: usize, (xs, ws, p, _): &Case) -> (Tensor, Tensor, Tensor, Tensor, ConvGeometry) {
    let seed = 1000 * i as u64;
    let x = Tensor::randn(xs.to_vec(), 0.0, 1.0, DType::F32, seed + 1);
    let w = Tensor::randn(ws.to_vec(), 0.0, 0.5, DType::F32, seed + 2);
    let b = Tensor::randn(vec![ws[0]], 0.0, 0.5, DType::F32, seed + 3);
    let g = ConvGeometry::new(x.shape(), w.shape(), *p).unwrap();
    let dy = Tensor::randn(g.out_shape().dims().to_vec(), 0.0, 1.0, DType::F32, seed + 4);
    (x, w, b, dy, g)
}

fn on_emu(t: &Tensor) -> Tensor {
    t.to_device(Device::Emu(0)).unwrap()
}

fn exec(algo: ConvAlgo, precision: Precision) -> ExecOptions {
    ExecOptions { conv_algo: algo, precision, ..ExecOptions::default() }
}

#[test]
fn conv_forward_on_every_tensor_core_kernel_matches_the_rounded_definition() {
    let _serial = serial();
    scratchnet::device::poison_new_buffers(true);
    let mut failures = Vec::new();
    for (i, case) in cases().iter().enumerate() {
        let (x, w, b, _, g) = inputs(i, case);
        let bias = b.to_vec::<f32>().unwrap();
        let plane = g.out_pixels();
        let (xd, wd, bd) = (on_emu(&x), on_emu(&w), on_emu(&b));
        for p in LOW {
            let (xr, wr) = (rounded(&x, p), rounded(&w, p));
            let want = conv_ref::forward(&xr, &wr, None, &g);
            let mags = conv_ref::forward(&abs(&xr), &abs(&wr), None, &g);
            let relu = case.3;
            // Rounded, then the bias and the ReLU in FP32.
            let finish = |j: usize, v: f64| {
                let y = (round_out(p, v) as f32 + bias[(j / plane) % g.o]) as f64;
                if relu { y.max(0.0) } else { y }
            };
            for algo in TILES {
                let e = exec(algo, p);
                let y = if relu {
                    conv2d::forward_relu(&xd, &wd, Some(&bd), case.2, &e)
                } else {
                    conv2d::forward(&xd, &wd, Some(&bd), case.2, &e)
                }
                .unwrap();
                let what = format!("case {i} {algo:?} forward");
                failures.extend(mismatches(&what, p, &y, &want, &mags, g.k_per_group(), finish));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn conv_data_gradient_on_every_tensor_core_kernel_matches_the_rounded_definition() {
    let _serial = serial();
    scratchnet::device::poison_new_buffers(true);
    let mut failures = Vec::new();
    for (i, case) in cases().iter().enumerate() {
        let (x, w, _, dy, g) = inputs(i, case);
        let (wd, dyd) = (on_emu(&w), on_emu(&dy));
        for p in LOW {
            let (dyr, wr) = (rounded(&dy, p), rounded(&w, p));
            let want = conv_ref::backward_data(&dyr, &wr, &g);
            let mags = conv_ref::backward_data(&abs(&dyr), &abs(&wr), &g);
            let k = g.o_per_group() * g.kh * g.kw;
            for algo in TILES {
                let dx = conv2d::backward_data(&dyd, &wd, x.shape(), case.2, &exec(algo, p)).unwrap();
                let what = format!("case {i} {algo:?} data gradient");
                failures.extend(mismatches(&what, p, &dx, &want, &mags, k, |_, v| round_out(p, v)));
                failures.extend(unrounded(&what, p, &dx));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn conv_filter_gradient_on_every_tensor_core_kernel_matches_the_rounded_definition() {
    let _serial = serial();
    scratchnet::device::poison_new_buffers(true);
    let mut all = cases();
    // N·OH·OW = 648: the shared dimension is cut into two slices, summed and then rounded by
    // conv2d_bwd_filter_reduce_tc.
    all.push(([2, 3, 18, 18], [4, 3, 3, 3], Conv2dParams::default().padding(1), false));
    let mut failures = Vec::new();
    for (i, case) in all.iter().enumerate() {
        let (x, w, _, dy, g) = inputs(i, case);
        let (xd, dyd) = (on_emu(&x), on_emu(&dy));
        for p in LOW {
            let (dyr, xr) = (rounded(&dy, p), rounded(&x, p));
            let want = conv_ref::backward_filter(&dyr, &xr, &g);
            let mags = conv_ref::backward_filter(&abs(&dyr), &abs(&xr), &g);
            let k = g.n * g.out_pixels();
            for algo in TILES {
                let dw = conv2d::backward_filter(&dyd, &xd, w.shape(), case.2, &exec(algo, p)).unwrap();
                let what = format!("case {i} {algo:?} filter gradient");
                failures.extend(mismatches(&what, p, &dw, &want, &mags, k, |_, v| round_out(p, v)));
                failures.extend(unrounded(&what, p, &dw));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// `op(a)·op(b)` in f64 on rounded operands, and the sums of the products' magnitudes.
fn matmul_reference(a: &Tensor, ta: bool, b: &Tensor, tb: bool, p: Precision) -> (Vec<f64>, Vec<f64>, usize) {
    let plain = |t: &Tensor, transposed: bool| -> (Vec<f64>, usize, usize) {
        let (r, c) = (t.dims()[0], t.dims()[1]);
        let v = rounded(t, p);
        if !transposed {
            return (v, r, c);
        }
        let mut out = vec![0.0; r * c];
        for i in 0..r {
            for j in 0..c {
                out[j * r + i] = v[i * c + j];
            }
        }
        (out, c, r)
    };
    let (am, m, k) = plain(a, ta);
    let (bm, _, n) = plain(b, tb);
    let want = gemm::reference::matmul(&am, &bm, m, n, k);
    let mags = gemm::reference::matmul(&abs(&am), &abs(&bm), m, n, k);
    (want, mags, k)
}

#[test]
fn matmul_on_every_tensor_core_kernel_matches_the_rounded_definition() {
    let _serial = serial();
    scratchnet::device::poison_new_buffers(true);
    // The three products of a linear layer with batch 37, 75 inputs and 130 outputs (x·Wᵀ,
    // dy·W, dyᵀ·x), and x·Wᵀ again with 72 inputs, where x and W are copied 16 bytes at a time.
    let (x, w, dy) = (
        Tensor::randn(vec![37, 75], 0.0, 1.0, DType::F32, 1),
        Tensor::randn(vec![130, 75], 0.0, 0.5, DType::F32, 2),
        Tensor::randn(vec![37, 130], 0.0, 1.0, DType::F32, 3),
    );
    let (x4, w4) =
        (Tensor::randn(vec![37, 72], 0.0, 1.0, DType::F32, 4), Tensor::randn(vec![130, 72], 0.0, 0.5, DType::F32, 5));
    let products = [(&x, false, &w, true), (&dy, false, &w, false), (&dy, true, &x, false), (&x4, false, &w4, true)];
    let mut failures = Vec::new();
    for (i, &(a, ta, b, tb)) in products.iter().enumerate() {
        let (ad, bd) = (on_emu(a), on_emu(b));
        for p in LOW {
            let (want, mags, k) = matmul_reference(a, ta, b, tb, p);
            for kernel in [GemmKernel::TensorCore64, GemmKernel::TensorCore128] {
                let c = gemm::matmul(&ad, ta, &bd, tb, kernel, p).unwrap();
                let what = format!("product {i} {kernel:?}");
                failures.extend(mismatches(&what, p, &c, &want, &mags, k, |_, v| round_out(p, v)));
                failures.extend(unrounded(&what, p, &c));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The default choice (`auto`) on emu runs the tensor cores; the CPU rounds the operands for
/// its FP32 path. Both compute the same rounded products, so they agree within the FP32
/// summation error (and an ulp of the 16-bit output).
#[test]
fn tensor_cores_agree_with_the_cpus_rounding_path() {
    let _serial = serial();
    let (xs, ws, p, _) = cases()[3];
    let (x, w, b, dy, g) = inputs(3, &(xs, ws, p, true));
    for precision in LOW {
        let e = ExecOptions::with_precision(precision);
        let cpu = conv2d::forward_relu(&x, &w, Some(&b), p, &e).unwrap().to_f64_vec().unwrap();
        let emu = conv2d::forward_relu(&on_emu(&x), &on_emu(&w), Some(&on_emu(&b)), p, &e).unwrap();
        let (xr, wr, dyr) = (rounded(&x, precision), rounded(&w, precision), rounded(&dy, precision));
        let exact = conv_ref::forward(&xr, &wr, None, &g);
        let mags = conv_ref::forward(&abs(&xr), &abs(&wr), None, &g);
        let fails = mismatches("conv forward", precision, &emu, &exact, &mags, g.k_per_group(), |i, _| cpu[i]);
        assert!(fails.is_empty(), "{}", fails.join("\n"));
        let cpu_dw = conv2d::backward_filter(&dy, &x, w.shape(), p, &e).unwrap().to_f64_vec().unwrap();
        let emu_dw = conv2d::backward_filter(&on_emu(&dy), &on_emu(&x), w.shape(), p, &e).unwrap();
        let exact = conv_ref::backward_filter(&dyr, &xr, &g);
        let mags = conv_ref::backward_filter(&abs(&dyr), &abs(&xr), &g);
        let k = g.n * g.out_pixels();
        let fails = mismatches("conv filter gradient", precision, &emu_dw, &exact, &mags, k, |i, _| cpu_dw[i]);
        assert!(fails.is_empty(), "{}", fails.join("\n"));

        let a = Tensor::randn(vec![19, 33], 0.0, 1.0, DType::F32, 7);
        let bm = Tensor::randn(vec![21, 33], 0.0, 1.0, DType::F32, 8);
        let cpu = gemm::matmul(&a, false, &bm, true, GemmKernel::Auto, precision).unwrap().to_f64_vec().unwrap();
        let emu = gemm::matmul(&on_emu(&a), false, &on_emu(&bm), true, GemmKernel::Auto, precision).unwrap();
        let (exact, mags, k) = matmul_reference(&a, false, &bm, true, precision);
        let fails = mismatches("matmul", precision, &emu, &exact, &mags, k, |i, _| cpu[i]);
        assert!(fails.is_empty(), "{}", fails.join("\n"));
    }
}

/// The tensor-core algorithms need a low precision; the error says so in one line.
#[test]
fn tensor_core_algorithms_refuse_fp32() {
    let _serial = serial();
    let (x, w) = (
        Tensor::randn(vec![1, 2, 4, 4], 0.0, 1.0, DType::F32, 1),
        Tensor::randn(vec![2, 2, 3, 3], 0.0, 1.0, DType::F32, 2),
    );
    let e = conv2d::forward(
        &on_emu(&x),
        &on_emu(&w),
        None,
        Conv2dParams::default(),
        &ExecOptions::with_conv_algo(ConvAlgo::TensorCore),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("--precision") && !e.contains('\n'), "{e}");
    assert_eq!("tensor-core-128".parse::<ConvAlgo>().unwrap(), ConvAlgo::TensorCore128);
}

/// Which kernels run: in a low precision `auto` and the tensor-core algorithms launch the
/// tensor-core kernels of that precision (the 64×64 tile on the emulator), a forced FP32
/// algorithm or GEMM kernel rounds the operands and launches the FP32 kernel.
#[test]
fn the_algorithm_chooses_between_the_tensor_cores_and_the_rounding_path() {
    let _serial = serial();
    let gpu = Device::Emu(0).gpu().unwrap().unwrap();
    let (x, w, _, dy, g) = inputs(0, &cases()[0]);
    let (xd, wd, dyd) = (on_emu(&x), on_emu(&w), on_emu(&dy));
    let p = g.params;
    let launched = |f: &dyn Fn()| -> Vec<&'static str> {
        gpu.start_launch_log();
        f();
        gpu.take_launch_log().into_iter().map(|(name, _)| name).collect()
    };
    let names = launched(&|| {
        conv2d::forward(&xd, &wd, None, p, &ExecOptions::with_precision(Precision::Bf16)).unwrap();
    });
    assert_eq!(names, ["conv2d_fwd_tc64_bf16"]);
    let names = launched(&|| {
        let e = exec(ConvAlgo::TensorCore, Precision::Tf32);
        conv2d::backward_data_and_filter(&dyd, &xd, &wd, p, (true, true), &e).unwrap();
    });
    assert_eq!(names, ["conv2d_bwd_data_tc64_tf32", "conv2d_bwd_filter_tc64_tf32"]);
    let names = launched(&|| {
        conv2d::forward(&xd, &wd, None, p, &exec(ConvAlgo::TensorCore128, Precision::Fp16)).unwrap();
    });
    assert_eq!(names, ["conv2d_fwd_tc128_fp16"]);
    // A grouped convolution with towers on: one launch per group (three), one group deep.
    let (gx, gw, _, _, gg) = inputs(3, &cases()[3]);
    let towers = ExecOptions { towers: true, ..ExecOptions::with_precision(Precision::Bf16) };
    gpu.start_launch_log();
    conv2d::forward(&on_emu(&gx), &on_emu(&gw), None, gg.params, &towers).unwrap();
    let log = gpu.take_launch_log();
    assert_eq!(log.len(), 3, "{log:?}");
    assert!(log.iter().all(|(name, dims)| *name == "conv2d_fwd_tc64_bf16" && dims.grid.2 == 1), "{log:?}");
    let names = launched(&|| {
        conv2d::forward(&xd, &wd, None, p, &exec(ConvAlgo::ImplicitGemm, Precision::Bf16)).unwrap();
    });
    assert!(names.contains(&"conv2d_fwd_implicit_gemm_f32") && names.contains(&"round_precision_f32"), "{names:?}");
    assert!(!names.iter().any(|n| n.contains("_tc")), "{names:?}");

    let (a, b) = (
        on_emu(&Tensor::randn(vec![5, 7], 0.0, 1.0, DType::F32, 1)),
        on_emu(&Tensor::randn(vec![6, 7], 0.0, 1.0, DType::F32, 2)),
    );
    let names = launched(&|| {
        gemm::matmul(&a, false, &b, true, GemmKernel::Auto, Precision::Bf16).unwrap();
    });
    assert_eq!(names, ["gemm_tc64_bf16"]);
    let names = launched(&|| {
        gemm::matmul(&a, false, &b, true, GemmKernel::Blocked64, Precision::Bf16).unwrap();
    });
    assert!(names.contains(&"gemm_64x64_f32") && !names.iter().any(|n| n.contains("_tc")), "{names:?}");
}

/// Towers (each group on its own side stream, pointers at its channels) compute what the one
/// launch over all groups computes, to the bit, in every direction; the filter gradient of
/// 4·13·13 positions is split in two slices, whose workspace and reduction the towers share.
#[test]
fn tensor_core_towers_equal_the_one_launch_to_the_bit() {
    let _serial = serial();
    scratchnet::device::poison_new_buffers(true);
    let params = Conv2dParams::default().padding(1).groups(3);
    let case = ([4, 6, 13, 13], [9, 2, 3, 3], params, true);
    let (x, w, b, dy, _) = inputs(7, &case);
    let (xd, wd, bd, dyd) = (on_emu(&x), on_emu(&w), on_emu(&b), on_emu(&dy));
    for precision in LOW {
        let run = |towers: bool| {
            let e = ExecOptions { towers, ..ExecOptions::with_precision(precision) };
            let y = conv2d::forward_relu(&xd, &wd, Some(&bd), params, &e).unwrap();
            let (dx, dw) = conv2d::backward_data_and_filter(&dyd, &xd, &wd, params, (true, true), &e).unwrap();
            [y, dx.unwrap(), dw.unwrap()].map(|t| t.to_vec::<f32>().unwrap())
        };
        let (one, towers) = (run(false), run(true));
        for (what, (a, b)) in ["forward", "data", "filter"].iter().zip(one.iter().zip(&towers)) {
            assert!(a.iter().all(|v| v.is_finite()), "{what} {precision}");
            assert!(a.iter().zip(b).all(|(u, v)| u.to_bits() == v.to_bits()), "{what} {precision}");
        }
    }
}
