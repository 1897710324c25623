//! The implicit-GEMM convolution operands walk their rows k by adding the step to the row's
//! digits, (channel, ky, kx) or (image, oy, ox), with carries, instead of dividing k
//! (kernels/conv_index.cuh). These shapes aim at the edges of that walk, through the
//! emulator, against the cpu device, on both tile engines (and the direct kernels beside
//! them):
//!
//! - kernels of one tap (1×1) or two (1×2), fewer taps than the step of 2, 4 or 8 rows, so
//!   one step crosses several channels;
//! - kernels of one row or one column (3×1), and an output one pixel wide, a digit whose
//!   radix is 1;
//! - strides of 2 and 3 with gaps between the taps (the data gradient's exact division by
//!   the stride);
//! - groups, with one channel or three per group;
//! - images of 9 output pixels, about one step of the filter gradient, with its shared
//!   dimension cut into split-K slices whose boundary falls inside an image.

use scratchnet::device::gpu::KernelCall;
use scratchnet::ops::ExecOptions;
use scratchnet::ops::conv2d::{self, Conv2dParams, ConvAlgo};
use scratchnet::selftest::rel_l2;
use scratchnet::{DType, Device, Tensor};

/// The digits and the division by a stride on their own, against `/` and `%`, for every
/// radix up to 6, steps of 1 to 8 rows, and divisors up to 64 (one emulated thread,
/// kernels/emu/tests/conv_index_tests.cu).
#[test]
fn row_digits_and_fast_division_agree_with_dividing() {
    let gpu = Device::Emu(0).gpu().unwrap().unwrap();
    let out = gpu.zeros(DType::F64, 4).unwrap();
    gpu.launch(KernelCall::new("emu_test_conv_index").grid(1, 1, 1).block(1, 1, 1).buf(&out).i32(40)).unwrap();
    let mut bytes = vec![0u8; out.bytes()];
    gpu.download(&out, &mut bytes).unwrap();
    let got: Vec<i64> = bytes.chunks_exact(8).map(bytemuck::pod_read_unaligned).collect();
    assert_eq!(&got[..3], &[0, 0, 0], "mismatches: RowDigits3, RowDigits2, FastDiv");
    assert!(got[3] > 100_000, "only {} comparisons", got[3]);
}

fn err(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims());
    rel_l2(&a.to_f64_vec().unwrap(), &b.to_f64_vec().unwrap())
}

/// (x dims, w dims, params): x is N×C×H×W, w is O×C/G×KH×KW.
type Case = ([usize; 4], [usize; 4], Conv2dParams);

fn cases() -> Vec<Case> {
    let p = Conv2dParams::default;
    vec![
        // 1×1 with 13 channels: each step of B (4 or 2 rows) and of A (8) moves whole channels.
        ([2, 13, 5, 7], [6, 13, 1, 1], p()),
        // Two taps per channel, padded: a step of 4 is two channels.
        ([2, 6, 5, 9], [5, 6, 1, 2], p().padding(1)),
        // One column of taps, stride and dilation 2.
        ([1, 4, 11, 6], [3, 4, 3, 1], p().stride(2).padding(2).dilation(2)),
        // Stride 3 over a 2×2 kernel: most input pixels are read by no tap at all.
        ([2, 5, 10, 11], [4, 5, 2, 2], p().stride(3).padding(1)),
        // Outputs one pixel wide (OW = 1).
        ([3, 5, 7, 2], [4, 5, 3, 2], p()),
        // Four groups of three channels, 1×1; and six groups of one channel, 3×3.
        ([2, 12, 6, 6], [8, 3, 1, 1], p().groups(4)),
        ([2, 6, 7, 5], [6, 1, 3, 3], p().padding(1).groups(6)),
        // 5×5, dilation 3, stride 2, two groups.
        ([1, 6, 17, 15], [4, 3, 5, 5], p().stride(2).padding(4).dilation(3).groups(2)),
        // 60 images of 3×3 outputs: 540 rows for the filter gradient, in two split-K slices
        // of 272, the boundary two pixels into image 30.
        ([60, 3, 3, 3], [4, 3, 3, 3], p().padding(1)),
    ]
}

#[test]
fn implicit_gemm_operands_walk_every_edge_of_the_row_digits() {
    scratchnet::device::poison_new_buffers(true);
    let algos = [ConvAlgo::ImplicitGemm, ConvAlgo::ImplicitGemm128, ConvAlgo::Direct];
    let mut failures = Vec::new();
    for (i, (xs, ws, p)) in cases().into_iter().enumerate() {
        let seed = 100 * i as u64;
        let x = Tensor::randn(xs.to_vec(), 0.0, 1.0, DType::F32, seed + 1);
        let w = Tensor::randn(ws.to_vec(), 0.0, 0.5, DType::F32, seed + 2);
        let b = Tensor::randn(vec![ws[0]], 0.0, 0.5, DType::F32, seed + 3);
        let want_y = conv2d::forward(&x, &w, Some(&b), p, &ExecOptions::default()).unwrap();
        let dy = Tensor::randn(want_y.dims().to_vec(), 0.0, 1.0, DType::F32, seed + 4);
        let want_dx = conv2d::backward_data(&dy, &w, x.shape(), p, &ExecOptions::default()).unwrap();
        let want_dw = conv2d::backward_filter(&dy, &x, w.shape(), p, &ExecOptions::default()).unwrap();
        let on_emu = |t: &Tensor| t.to_device(Device::Emu(0)).unwrap();
        let (xd, wd, bd, dyd) = (on_emu(&x), on_emu(&w), on_emu(&b), on_emu(&dy));
        for algo in algos {
            let exec = ExecOptions::with_conv_algo(algo);
            let y = conv2d::forward(&xd, &wd, Some(&bd), p, &exec).unwrap();
            let dx = conv2d::backward_data(&dyd, &wd, x.shape(), p, &exec).unwrap();
            let dw = conv2d::backward_filter(&dyd, &xd, w.shape(), p, &exec).unwrap();
            // The limits of the selftest: 1e-5 where the sums run in the reference's order or
            // are short, 1e-4 for the filter gradient's long sums in another order.
            for (what, got, want, limit) in
                [("forward", &y, &want_y, 1e-5), ("data", &dx, &want_dx, 1e-5), ("filter", &dw, &want_dw, 1e-4)]
            {
                let e = err(got, want);
                if e.is_nan() || e > limit {
                    failures.push(format!("x {xs:?} w {ws:?} {p:?} {algo:?} {what}: relative error {e:e}"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
