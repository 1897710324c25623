//! Bad shapes and mismatched inputs: every op answers with an error that names the op and
//! the shapes, never a panic.

use scratchnet::ops::conv2d::{self, Conv2dParams};
use scratchnet::ops::lrn::{self, LrnParams};
use scratchnet::ops::pool::{self, Pool2dParams};
use scratchnet::ops::{ExecOptions, Precision};
use scratchnet::ops::{batchnorm, concat, dropout, elementwise, linear, loss, sgd};
use scratchnet::{DType, Error, Shape, Tensor};

fn z(shape: &[usize]) -> Tensor {
    Tensor::zeros(shape, DType::F32)
}

fn message<T: std::fmt::Debug>(r: Result<T, Error>) -> String {
    let e = r.expect_err("expected an error").to_string();
    assert!(!e.contains('\n'), "errors are one line: {e}");
    e
}

#[test]
fn conv2d_rejects_bad_shapes() {
    let p = Conv2dParams::default();
    assert_eq!(
        message(conv2d::forward(&z(&[1, 3, 8]), &z(&[4, 3, 3, 3]), None, p, &ExecOptions::default())),
        "conv2d: expected a 4-D input (N, C, H, W), got input of shape [1, 3, 8]"
    );
    assert_eq!(
        message(conv2d::forward(&z(&[1, 3, 8, 8]), &z(&[4, 2, 3, 3]), None, p, &ExecOptions::default())),
        "conv2d: expected weight of shape [O, 3, KH, KW] for input [1, 3, 8, 8] with groups=1, got weight of shape [4, 2, 3, 3]"
    );
    let e = message(conv2d::forward(&z(&[1, 3, 8, 8]), &z(&[4, 1, 3, 3]), None, p.groups(2), &ExecOptions::default()));
    assert!(e.contains("divisible by groups=2"), "{e}");
    let e = message(conv2d::forward(&z(&[1, 3, 2, 2]), &z(&[4, 3, 3, 3]), None, p, &ExecOptions::default()));
    assert!(e.contains("at least as large as the dilated kernel 3x3"), "{e}");
    let e = message(conv2d::forward(&z(&[1, 3, 8, 8]), &z(&[4, 3, 3, 3]), Some(&z(&[5])), p, &ExecOptions::default()));
    assert!(e.contains("bias of shape [4]"), "{e}");
    let e = message(conv2d::forward(&z(&[1, 3, 8, 8]), &z(&[4, 3, 3, 3]), None, p.stride(0), &ExecOptions::default()));
    assert!(e.contains("stride must be at least 1"), "{e}");
    let e = message(conv2d::backward_data(
        &z(&[1, 4, 5, 5]),
        &z(&[4, 3, 3, 3]),
        &Shape::from([1, 3, 8, 8]),
        p,
        &ExecOptions::default(),
    ));
    assert!(e.contains("output gradient of shape [1, 4, 6, 6]"), "{e}");
    let x64 = Tensor::zeros([1, 3, 8, 8], DType::F64);
    let e = message(conv2d::forward(&x64, &z(&[4, 3, 3, 3]), None, p, &ExecOptions::default()));
    assert_eq!(e, "conv2d: inputs disagree: input is f64 but weight is f32");
}

#[test]
fn linear_rejects_bad_shapes() {
    assert!(message(linear::forward(&z(&[2, 3, 4]), &z(&[5, 3]), None, &ExecOptions::default())).contains("2-D input"));
    assert!(
        message(linear::backward_data(&z(&[2, 6]), &z(&[5, 3]), Precision::Fp32))
            .contains("output gradient of shape [2, 5]")
    );
    assert!(
        message(linear::backward_weight(&z(&[3, 5]), &z(&[2, 3]), Precision::Fp32))
            .contains("output gradient of shape [2, 5]")
    );
}

#[test]
fn pools_reject_bad_shapes() {
    assert!(message(pool::max_pool2d_forward(&z(&[2, 3]), Pool2dParams::new(2, 2))).contains("4-D input"));
    let e = message(pool::max_pool2d_backward(&z(&[1, 1, 3, 3]), &z(&[1, 1, 4, 4]), Pool2dParams::new(2, 2)));
    assert!(e.contains("output gradient of shape [1, 1, 2, 2]"), "{e}");
    let e = message(pool::avg_pool2d_backward(&z(&[1, 1, 1, 1]), &Shape::from([1, 1, 4, 4]), Pool2dParams::new(2, 2)));
    assert!(e.contains("output gradient of shape [1, 1, 2, 2]"), "{e}");
    let e = message(pool::global_avg_pool_backward(&z(&[1, 2]), &Shape::from([1, 2, 3, 3])));
    assert!(e.contains("[1, 2, 1, 1]"), "{e}");
}

#[test]
fn lrn_rejects_bad_arguments() {
    assert!(message(lrn::forward(&z(&[2, 3]), LrnParams::alexnet())).contains("4-D input"));
    let p = LrnParams { size: 0, ..LrnParams::alexnet() };
    assert!(message(lrn::forward(&z(&[1, 3, 2, 2]), p)).contains("size must be at least 1"));
    let x = z(&[1, 3, 2, 2]);
    assert!(message(lrn::backward(&z(&[1, 3, 2, 1]), &x, &x, LrnParams::alexnet())).contains("output gradient"));
}

#[test]
fn batch_norm_rejects_bad_shapes() {
    let x = z(&[2, 3, 2, 2]);
    let e = message(batchnorm::forward_train(&x, &z(&[4]), &z(&[3]), 1e-5));
    assert_eq!(e, "batch_norm: expected weight of shape [3], got weight of shape [4]");
    assert!(message(batchnorm::forward_train(&x, &z(&[3]), &z(&[3]), 0.0)).contains("eps must be positive"));
    let e = message(batchnorm::forward_eval(&x, &z(&[3]), &z(&[3]), &z(&[3]), &z(&[2]), 1e-5));
    assert!(e.contains("running_var of shape [3]"), "{e}");
    let e = message(batchnorm::backward_train(&z(&[2, 3, 2, 1]), &x, &z(&[3]), &z(&[3]), &z(&[3]), 1e-5));
    assert!(e.contains("output gradient"), "{e}");
}

#[test]
fn elementwise_concat_dropout_reject_bad_inputs() {
    assert!(message(elementwise::add(&z(&[2, 2]), &z(&[4]))).contains("[2, 2] and [4]"));
    assert!(message(elementwise::relu_backward(&z(&[2]), &z(&[3]))).contains("relu backward"));
    assert!(
        message(concat::forward(&[&z(&[1, 2, 3, 3]), &z(&[2, 2, 3, 3])])).contains("input 1 of shape [2, 2, 3, 3]")
    );
    assert!(message(concat::forward(&[&z(&[4])])).contains("rank at least 2"));
    assert!(message(dropout::forward(&z(&[4]), -0.1, 0)).contains("probability must be in [0, 1]"));
}

#[test]
fn loss_and_sgd_reject_bad_inputs() {
    let labels = Tensor::from_vec([2], vec![0i64, 1]).unwrap();
    assert!(message(loss::forward(&z(&[2, 3, 1]), &labels)).contains("2-D logits"));
    assert!(message(loss::forward(&z(&[3, 3]), &labels)).contains("labels of shape [3]"));
    let e = message(loss::backward(&z(&[2, 3]), &labels, &z(&[2])));
    assert!(e.contains("one-element loss gradient"), "{e}");
    let mut p = z(&[3]);
    let mut v = z(&[2]);
    let h = sgd::SgdParams { lr: 0.1, momentum: 0.9, weight_decay: 0.0 };
    assert!(message(sgd::step(&mut p, &z(&[3]), &mut v, h)).contains("velocity"));
}

#[test]
fn tensor_constructors_reject_bad_input() {
    assert!(message(Tensor::from_vec([2, 2], vec![1.0f32; 3])).contains("4 values for shape [2, 2]"));
    assert!(message(z(&[6]).reshape([4])).contains("6 elements"));
    assert!(message(z(&[2]).item()).contains("one element"));
}

#[test]
fn empty_images_are_errors_not_panics() {
    let p = Conv2dParams::default().padding(1);
    let e = message(conv2d::forward(&z(&[1, 0, 4, 4]), &z(&[2, 0, 3, 3]), None, p, &ExecOptions::default()));
    assert!(e.contains("at least one channel, row and column"), "{e}");
    assert!(
        message(conv2d::forward(&z(&[1, 2, 0, 4]), &z(&[2, 2, 3, 3]), None, p, &ExecOptions::default()))
            .contains("at least one")
    );
    let pool = Pool2dParams::new(2, 1).padding(1);
    assert!(message(pool::max_pool2d_forward(&z(&[1, 1, 0, 0]), pool)).contains("at least one"));
    assert!(message(pool::avg_pool2d_forward(&z(&[1, 1, 0, 3]), pool)).contains("at least one"));
    assert!(
        message(pool::global_avg_pool_backward(&z(&[1, 2, 1, 1]), &Shape::from([1, 2, 0, 3]))).contains("at least one")
    );
    assert!(message(lrn::forward(&z(&[1, 0, 2, 2]), LrnParams::alexnet())).contains("at least one"));
    let c0 = z(&[0]);
    assert!(message(batchnorm::forward_eval(&z(&[2, 0, 2, 2]), &c0, &c0, &c0, &c0, 1e-5)).contains("at least one"));
    // A batch of zero images is not an error: it gives zero outputs.
    let y = conv2d::forward(&z(&[0, 2, 4, 4]), &z(&[3, 2, 3, 3]), None, p, &ExecOptions::default()).unwrap();
    assert_eq!(y.dims(), &[0, 3, 4, 4]);
}

#[test]
fn absurd_sizes_are_errors_not_wrap_arounds() {
    let huge = usize::MAX / 2 + 2;
    assert!(message(Tensor::from_vec([huge, 2], vec![0f32; 2])).contains("values for shape"));
    let p = Conv2dParams { padding: (usize::MAX / 2, 0), ..Conv2dParams::default() };
    assert!(conv2d::forward(&z(&[1, 1, 3, 3]), &z(&[1, 1, 3, 3]), None, p, &ExecOptions::default()).is_err());
}
