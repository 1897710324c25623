//! The CPU's fast convolution (im2col gathered into the GEMM's packed panels) against the
//! definition's loops, `ops::conv2d::reference`, in f64 and f32, on shapes chosen for their
//! edge cases.

use scratchnet::ops::ExecOptions;
use scratchnet::ops::conv2d::{self, Conv2dParams, ConvGeometry, reference};
use scratchnet::{DType, Shape, Tensor};

fn rel_l2(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    assert!(a.iter().all(|v| v.is_finite()), "non-finite output");
    let num: f64 = a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum();
    let den: f64 = b.iter().map(|y| y * y).sum();
    (num / den.max(1e-300)).sqrt()
}

fn compare(x_shape: [usize; 4], w_shape: [usize; 4], p: Conv2dParams, dtype: DType, tol: f64) {
    let x = Tensor::uniform(x_shape, -1.0, 1.0, dtype, 1);
    let w = Tensor::uniform(w_shape, -1.0, 1.0, dtype, 2);
    let b = Tensor::uniform([w_shape[0]], -1.0, 1.0, dtype, 3);
    let g = ConvGeometry::new(x.shape(), w.shape(), p).unwrap();
    let dy = Tensor::uniform(g.out_shape(), -1.0, 1.0, dtype, 4);
    let (xs, ws, bs, dys) =
        (x.to_f64_vec().unwrap(), w.to_f64_vec().unwrap(), b.to_f64_vec().unwrap(), dy.to_f64_vec().unwrap());
    let case = format!("x {x_shape:?} w {w_shape:?} {p:?} {dtype}");

    let y = conv2d::forward(&x, &w, Some(&b), p, &ExecOptions::default()).unwrap();
    assert_eq!(y.shape(), &g.out_shape(), "{case}");
    let err = rel_l2(&y.to_f64_vec().unwrap(), &reference::forward(&xs, &ws, Some(&bs), &g));
    assert!(err < tol, "forward {case}: {err:e}");

    let (dx_want, dw_want) = (reference::backward_data(&dys, &ws, &g), reference::backward_filter(&dys, &xs, &g));
    let dx = conv2d::backward_data(&dy, &w, &Shape::from(x_shape), p, &ExecOptions::default()).unwrap();
    let err = rel_l2(&dx.to_f64_vec().unwrap(), &dx_want);
    assert!(err < tol, "data gradient {case}: {err:e}");
    let dw = conv2d::backward_filter(&dy, &x, &Shape::from(w_shape), p, &ExecOptions::default()).unwrap();
    let err = rel_l2(&dw.to_f64_vec().unwrap(), &dw_want);
    assert!(err < tol, "filter gradient {case}: {err:e}");

    let db = conv2d::backward_bias(&dy).unwrap().to_f64_vec().unwrap();
    for (got, want) in db.iter().zip(reference::backward_bias(&dys, &g)) {
        assert!((got - want).abs() <= tol * want.abs().max(1.0), "bias gradient {case}");
    }
}

fn cases() -> Vec<([usize; 4], [usize; 4], Conv2dParams)> {
    let p = Conv2dParams::default;
    vec![
        // batch 1, prime sizes everywhere
        ([1, 3, 7, 5], [5, 3, 3, 3], p()),
        ([2, 3, 11, 13], [7, 3, 3, 3], p().padding(1)),
        ([3, 5, 9, 9], [4, 5, 3, 3], p().stride(2).padding(1)),
        // AlexNet conv1 in miniature: a big kernel at stride 4
        ([2, 3, 23, 23], [6, 3, 11, 11], p().stride(4)),
        // grouped as AlexNet conv2, and depthwise
        ([2, 6, 9, 9], [4, 3, 5, 5], p().padding(2).groups(2)),
        ([1, 4, 6, 6], [4, 1, 3, 3], p().padding(1).groups(4)),
        // dilation, asymmetric everything
        ([2, 2, 10, 9], [3, 2, 3, 2], Conv2dParams { stride: (2, 1), padding: (2, 0), dilation: (2, 3), groups: 1 }),
        // stride 1 with dilation and grouped channels (data gradient as a flipped convolution)
        ([2, 4, 9, 8], [6, 2, 3, 2], Conv2dParams { stride: (1, 1), padding: (2, 1), dilation: (2, 2), groups: 2 }),
        // pointwise (the im2col-free path) and a strided 1×1 (the path with im2col)
        ([3, 8, 5, 7], [5, 8, 1, 1], p()),
        ([2, 8, 5, 7], [5, 8, 1, 1], p().stride(2)),
        // padding larger than the kernel's reach: whole border rows of zeros
        ([1, 2, 3, 3], [2, 2, 2, 2], p().padding(3)),
    ]
}

#[test]
fn im2col_gemm_matches_direct_in_f64() {
    for (x, w, p) in cases() {
        compare(x, w, p, DType::F64, 1e-13);
    }
}

#[test]
fn im2col_gemm_matches_direct_in_f32() {
    for (x, w, p) in cases() {
        compare(x, w, p, DType::F32, 1e-5);
    }
}

#[test]
fn a_resnet_sized_layer_matches_direct() {
    // Large enough to cross the GEMM's cache blocks (K = 32·9 = 288 > KC).
    compare([2, 32, 16, 16], [32, 32, 3, 3], Conv2dParams::default().padding(1), DType::F32, 1e-5);
}
