//! The CPU path of every op (threads, f64 lanes, folded multiply-adds) against the op's plain
//! reference (`ops::<op>::reference`), in f64 and in f32, at a few shapes each: odd sizes,
//! batch 1, and tensors long enough to be cut into several parallel chunks. (Convolution has
//! its own file, tests/conv2d_reference.rs.) The reference always runs in f64, on the f64
//! values of the inputs the CPU path saw.

use scratchnet::ops::batchnorm::{self, reference as bn_ref};
use scratchnet::ops::lrn::{self, LrnParams};
use scratchnet::ops::pool::{self, Pool2dParams};
use scratchnet::ops::{
    ExecOptions, Precision, batchnorm_fused, bias_act, concat, dropout, elementwise, linear, loss, sgd,
};
use scratchnet::selftest::rel_l2;
use scratchnet::{DType, Shape, Tensor};

/// The tolerance of a result of `dtype` computed in another order than the reference's:
/// rounding alone in f64; in f32, the selftest's tolerance for reordered sums.
fn tol(dtype: DType) -> f64 {
    if dtype == DType::F64 { 1e-12 } else { 1e-5 }
}

const DTYPES: [DType; 2] = [DType::F64, DType::F32];

fn input(shape: &[usize], dtype: DType, seed: u64) -> Tensor {
    Tensor::uniform(Shape::from(shape), -1.0, 1.0, dtype, seed)
}

fn v(t: &Tensor) -> Vec<f64> {
    t.to_f64_vec().unwrap()
}

#[track_caller]
fn check(what: &str, got: &Tensor, want: &[f64], dtype: DType) {
    let err = rel_l2(&v(got), want);
    assert!(err <= tol(dtype), "{what} ({dtype}): relative error {err:e}");
}

fn nchw(shape: &[usize]) -> (usize, usize, usize) {
    (shape[0], shape[1], shape[2..].iter().product())
}

#[test]
fn elementwise_ops() {
    use elementwise::reference as r;
    for dtype in DTYPES {
        // 20,495 elements: more than one parallel chunk of 16,384.
        for shape in [vec![7], vec![3, 17, 31], vec![5, 4099]] {
            let (a, b) = (input(&shape, dtype, 1), input(&shape, dtype, 2));
            let (av, bv) = (v(&a), v(&b));
            let y = elementwise::relu_forward(&a).unwrap();
            check("relu", &y, &r::relu(&av), dtype);
            check("relu backward", &elementwise::relu_backward(&b, &y).unwrap(), &r::relu_backward(&bv, &v(&y)), dtype);
            check("add", &elementwise::add(&a, &b).unwrap(), &r::add(&av, &bv), dtype);
            check("mul", &elementwise::mul(&a, &b).unwrap(), &r::mul(&av, &bv), dtype);
            let mut acc = a.clone();
            elementwise::add_assign(&mut acc, &b).unwrap();
            let mut want = av.clone();
            r::add_assign(&mut want, &bv);
            check("add_assign", &acc, &want, dtype);
        }
    }
}

#[test]
fn bias_and_relu() {
    use bias_act::reference as r;
    for dtype in DTYPES {
        // NCHW, and a fully connected layer's [N, C].
        for shape in [vec![2, 3, 5, 7], vec![9, 21], vec![1, 4, 64, 64]] {
            let dims = nchw(&shape);
            let (z, b, dy) = (input(&shape, dtype, 1), input(&[shape[1]], dtype, 2), input(&shape, dtype, 3));
            for (bias, relu) in [(true, true), (false, true), (true, false)] {
                let mut y = z.clone();
                bias_act::bias_act_in_place(&mut y, bias.then_some(&b), relu).unwrap();
                let bv = v(&b);
                let want = r::forward(&v(&z), bias.then_some(bv.as_slice()), relu, dims);
                check(&format!("bias {bias} relu {relu} {shape:?}"), &y, &want, dtype);
            }
            let mut y = z.clone();
            bias_act::bias_act_in_place(&mut y, Some(&b), true).unwrap();
            let (dz, db) = bias_act::relu_backward_with_bias(&dy, &y, true).unwrap();
            let (want_dz, want_db) = r::relu_backward_with_bias(&v(&dy), &v(&y), dims);
            check("relu backward with bias (dz)", &dz, &want_dz, dtype);
            check("relu backward with bias (db)", &db.unwrap(), &want_db, dtype);
        }
    }
}

#[test]
fn fully_connected() {
    use linear::reference as r;
    for dtype in DTYPES {
        // Large enough in the last case to cross the packed GEMM's blocks.
        for (n, i, o) in [(5, 17, 13), (1, 3, 1), (33, 300, 70)] {
            let dims = (n, i, o);
            let (x, w, b, dy) =
                (input(&[n, i], dtype, 1), input(&[o, i], dtype, 2), input(&[o], dtype, 3), input(&[n, o], dtype, 4));
            let (xv, wv, bv, dyv) = (v(&x), v(&w), v(&b), v(&dy));
            let y = r::forward(&xv, &wv, Some(&bv), dims);
            check("linear forward", &linear::forward(&x, &w, Some(&b), &ExecOptions::default()).unwrap(), &y, dtype);
            check(
                "linear forward, no bias",
                &linear::forward(&x, &w, None, &ExecOptions::default()).unwrap(),
                &r::forward(&xv, &wv, None, dims),
                dtype,
            );
            let relu = elementwise::reference::relu(&y);
            check(
                "linear + relu",
                &linear::forward_relu(&x, &w, Some(&b), &ExecOptions::default()).unwrap(),
                &relu,
                dtype,
            );
            check(
                "linear data",
                &linear::backward_data(&dy, &w, Precision::Fp32).unwrap(),
                &r::backward_data(&dyv, &wv, dims),
                dtype,
            );
            let want = r::backward_weight(&dyv, &xv, dims);
            check("linear weight", &linear::backward_weight(&dy, &x, Precision::Fp32).unwrap(), &want, dtype);
            check("linear bias", &linear::backward_bias(&dy).unwrap(), &r::backward_bias(&dyv, dims), dtype);
        }
    }
}

#[test]
fn softmax_cross_entropy() {
    use loss::reference as r;
    for dtype in DTYPES {
        for (n, k) in [(7, 13), (1, 2), (16, 1000)] {
            let z = Tensor::uniform([n, k], -8.0, 8.0, dtype, 1);
            let labels: Vec<usize> = (0..n).map(|i| (i * 5 + 3) % k).collect();
            let label_tensor = Tensor::from_vec([n], labels.iter().map(|&l| l as i64).collect::<Vec<i64>>()).unwrap();
            let (loss_got, probs) = loss::forward(&z, &label_tensor).unwrap();
            let (loss_want, probs_want) = r::forward(&v(&z), &labels, k);
            check("cross_entropy loss", &loss_got, &[loss_want], dtype);
            check("cross_entropy probabilities", &probs, &probs_want, dtype);
            let dloss = Tensor::full(Shape::scalar(), 0.7, dtype);
            let dz = loss::backward(&probs, &label_tensor, &dloss).unwrap();
            check("cross_entropy backward", &dz, &r::backward(&v(&probs), &labels, 0.7, k), dtype);
        }
    }
}

#[test]
fn dropout_masks_match_to_the_bit() {
    use dropout::reference as r;
    for (len, p, seed) in [(1000, 0.3, 12345), (17, 0.5, 1), (100, 0.0, 2), (100, 1.0, 3), (4099, 0.9, 4)] {
        // The reference in the op's own type rounds its scale as the op does: equal to the bit.
        assert_eq!(dropout::mask([len], p, seed).unwrap().to_vec::<f32>().unwrap(), r::mask::<f32>(len, p, seed));
        let x = input(&[len], DType::F32, 5);
        let xs = x.to_vec::<f32>().unwrap();
        assert_eq!(dropout::forward(&x, p, seed).unwrap().to_vec::<f32>().unwrap(), r::forward(&xs, p, seed));
        assert_eq!(dropout::backward(&x, p, seed).unwrap().to_vec::<f32>().unwrap(), r::backward(&xs, p, seed));
        let x = input(&[len], DType::F64, 5);
        assert_eq!(v(&dropout::forward(&x, p, seed).unwrap()), r::forward(&v(&x), p, seed));
        assert_eq!(v(&dropout::backward(&x, p, seed).unwrap()), r::backward(&v(&x), p, seed));
    }
}

#[test]
fn sgd_steps() {
    for dtype in DTYPES {
        for len in [1003, 20_000] {
            let h = sgd::SgdParams { lr: 0.1, momentum: 0.9, weight_decay: 5e-4 };
            let (mut p, g, mut vel) = (input(&[len], dtype, 1), input(&[len], dtype, 2), input(&[len], dtype, 3));
            let (mut pw, gw, mut vw) = (v(&p), v(&g), v(&vel));
            for _ in 0..2 {
                sgd::step(&mut p, &g, &mut vel, h).unwrap();
                sgd::reference::step(&mut pw, &gw, &mut vw, h);
            }
            check("sgd parameters", &p, &pw, dtype);
            check("sgd velocity", &vel, &vw, dtype);
        }
    }
}

#[test]
fn concat_and_split_copy_exactly() {
    use concat::reference as r;
    for dtype in DTYPES {
        for (n, channels, rest) in
            [(2, vec![1, 4, 3], vec![5, 3]), (3, vec![2, 0, 5], vec![]), (1, vec![7], vec![2, 2])]
        {
            let inner: usize = rest.iter().product();
            let xs: Vec<Tensor> = channels
                .iter()
                .enumerate()
                .map(|(i, &c)| input(&[[n, c].as_slice(), &rest].concat(), dtype, i as u64 + 1))
                .collect();
            let values: Vec<Vec<f64>> = xs.iter().map(v).collect();
            let slices: Vec<&[f64]> = values.iter().map(Vec::as_slice).collect();
            let y = concat::forward(&xs.iter().collect::<Vec<_>>()).unwrap();
            assert_eq!(v(&y), r::forward(&slices, n, &channels, inner), "concat {dtype} {channels:?}");
            let pieces = concat::backward(&y, &channels).unwrap();
            let want = r::backward(&v(&y), n, &channels, inner);
            for (got, want) in pieces.iter().zip(&want) {
                assert_eq!(&v(got), want, "split {dtype} {channels:?}");
            }
        }
    }
}

#[test]
fn pooling() {
    use pool::reference as r;
    let params = [
        Pool2dParams::new(3, 2),
        Pool2dParams::new(3, 1).padding(1),
        Pool2dParams::new(2, 2),
        Pool2dParams { kernel: (3, 2), stride: (1, 2), padding: (1, 1) },
    ];
    for dtype in DTYPES {
        for shape in [[2, 3, 13, 11], [1, 1, 4, 5]] {
            let dims = (shape[0], shape[1], shape[2], shape[3]);
            let x = input(&shape, dtype, 1);
            let xv = v(&x);
            for p in params {
                let y = pool::max_pool2d_forward(&x, p).unwrap();
                check(&format!("max pool {p:?}"), &y, &r::max_pool2d_forward(&xv, dims, &p), dtype);
                let dy = input(y.dims(), dtype, 2);
                let dx = pool::max_pool2d_backward(&dy, &x, p).unwrap();
                check(&format!("max pool backward {p:?}"), &dx, &r::max_pool2d_backward(&v(&dy), &xv, dims, &p), dtype);
                let y = pool::avg_pool2d_forward(&x, p).unwrap();
                check(&format!("avg pool {p:?}"), &y, &r::avg_pool2d_forward(&xv, dims, &p), dtype);
                let dx = pool::avg_pool2d_backward(&dy, x.shape(), p).unwrap();
                check(&format!("avg pool backward {p:?}"), &dx, &r::avg_pool2d_backward(&v(&dy), dims, &p), dtype);
            }
            let y = pool::global_avg_pool_forward(&x).unwrap();
            check("global avg pool", &y, &r::global_avg_pool_forward(&xv, dims), dtype);
            let dy = input(&[shape[0], shape[1], 1, 1], dtype, 3);
            let dx = pool::global_avg_pool_backward(&dy, x.shape()).unwrap();
            check("global avg pool backward", &dx, &r::global_avg_pool_backward(&v(&dy), dims), dtype);
        }
    }
}

#[test]
fn local_response_normalisation() {
    use lrn::reference as r;
    let strong = LrnParams { size: 4, alpha: 0.8, beta: 0.75, k: 2.0 };
    for dtype in DTYPES {
        for shape in [[2, 7, 5, 3], [1, 3, 1, 1], [1, 96, 6, 6]] {
            for p in [LrnParams::alexnet(), strong, LrnParams { size: 1, ..strong }] {
                let dims = nchw(&shape);
                let (x, dy) = (input(&shape, dtype, 1), input(&shape, dtype, 2));
                let y = lrn::forward(&x, p).unwrap();
                check(&format!("lrn {shape:?} {p:?}"), &y, &r::forward(&v(&x), dims, &p), dtype);
                let dx = lrn::backward(&dy, &x, &y, p).unwrap();
                check(&format!("lrn backward {shape:?} {p:?}"), &dx, &r::backward(&v(&dy), &v(&x), dims, &p), dtype);
            }
        }
    }
}

#[test]
fn batch_norm_plain_and_fused() {
    let eps = 1e-5;
    for dtype in DTYPES {
        // (Not M = 2 values per channel: there dx is a difference of nearly equal terms.)
        // The last two span several of the CPU path's tasks of whole planes (large planes; many
        // 2×2 planes, whose channel changes within a task).
        for shape in [[3, 5, 7, 3], [8, 3, 4, 4], [1, 4, 3, 5], [2, 9, 45, 45], [4, 2500, 2, 2]] {
            let dims = nchw(&shape);
            let c = shape[1];
            let (x, gamma, beta, dy, res) = (
                input(&shape, dtype, 1),
                input(&[c], dtype, 2),
                input(&[c], dtype, 3),
                input(&shape, dtype, 4),
                input(&shape, dtype, 5),
            );
            let (xv, gv, bv, dyv, rv) = (v(&x), v(&gamma), v(&beta), v(&dy), v(&res));
            let case = format!("{shape:?}");

            // Training: the output, the statistics, the gradients.
            let got = batchnorm::forward_train(&x, &gamma, &beta, eps).unwrap();
            let (y, mean, var) = bn_ref::forward_train(&xv, &gv, &bv, dims, eps);
            check(&format!("bn forward {case}"), &got.y, &y, dtype);
            check(&format!("bn mean {case}"), &got.mean, &mean, dtype);
            check(&format!("bn variance {case}"), &got.var, &var, dtype);
            let g = batchnorm::backward_train(&dy, &x, &gamma, &got.mean, &got.var, eps).unwrap();
            let want = bn_ref::backward(&dyv, &xv, &gv, (&v(&got.mean), &v(&got.var)), dims, eps, true);
            check(&format!("bn dx {case}"), &g.dx, &want.dx, dtype);
            check(&format!("bn dgamma {case}"), &g.dgamma, &want.dgamma, dtype);
            check(&format!("bn dbeta {case}"), &g.dbeta, &want.dbeta, dtype);

            // Eval, with fixed statistics.
            let (rm, rvar) = (input(&[c], dtype, 6), Tensor::uniform([c], 0.5, 2.0, dtype, 7));
            let stats = (v(&rm), v(&rvar));
            let got = batchnorm::forward_eval(&x, &gamma, &beta, &rm, &rvar, eps).unwrap();
            check(
                &format!("bn eval {case}"),
                &got,
                &bn_ref::forward(&xv, &gv, &bv, (&stats.0, &stats.1), dims, eps),
                dtype,
            );
            let g = batchnorm::backward_eval(&dy, &x, &gamma, &rm, &rvar, eps).unwrap();
            let want = bn_ref::backward(&dyv, &xv, &gv, (&stats.0, &stats.1), dims, eps, false);
            check(&format!("bn eval dx {case}"), &g.dx, &want.dx, dtype);
            check(&format!("bn eval dgamma {case}"), &g.dgamma, &want.dgamma, dtype);
            check(&format!("bn eval dbeta {case}"), &g.dbeta, &want.dbeta, dtype);

            // The running statistics.
            let (mut rm_got, mut rv_got) = (rm.clone(), rvar.clone());
            let (bmean, bvar) = (input(&[c], dtype, 8), Tensor::uniform([c], 0.1, 1.0, dtype, 9));
            batchnorm::update_running_stats(&mut rm_got, &mut rv_got, &bmean, &bvar, 63, 0.1).unwrap();
            let (mut rm_want, mut rv_want) = stats.clone();
            bn_ref::update_running_stats(&mut rm_want, &mut rv_want, (&v(&bmean), &v(&bvar)), 63, 0.1);
            check("bn running mean", &rm_got, &rm_want, dtype);
            check("bn running variance", &rv_got, &rv_want, dtype);

            // The fused epilogues, training and eval.
            for (residual, relu) in [(true, true), (false, true), (true, false)] {
                let case = format!("{shape:?} residual {residual} relu {relu}");
                let e = batchnorm_fused::Epilogue { residual: residual.then_some(&res), relu };
                let r = residual.then_some(rv.as_slice());
                let got = batchnorm_fused::forward_train_fused(&x, &gamma, &beta, e, eps).unwrap();
                let (mean, var) = bn_ref::batch_stats(&xv, dims);
                let want_y = bn_ref::forward_fused(&xv, &gv, &bv, (&mean, &var), r, relu, dims, eps);
                check(&format!("fused forward {case}"), &got.y, &want_y, dtype);
                let mask = relu.then_some(&got.y);
                let g =
                    batchnorm_fused::backward_fused(&dy, &x, mask, &gamma, &got.mean, &got.var, eps, true, residual)
                        .unwrap();
                let (yv, stats) = (v(&got.y), (v(&got.mean), v(&got.var)));
                let (want, dz) = bn_ref::backward_fused(
                    &dyv,
                    relu.then_some(yv.as_slice()),
                    &xv,
                    &gv,
                    (&stats.0, &stats.1),
                    dims,
                    eps,
                    true,
                );
                check(&format!("fused dx {case}"), &g.dx, &want.dx, dtype);
                check(&format!("fused dgamma {case}"), &g.dgamma, &want.dgamma, dtype);
                check(&format!("fused dbeta {case}"), &g.dbeta, &want.dbeta, dtype);
                if residual {
                    check(&format!("fused dresidual {case}"), g.dresidual.as_ref().unwrap(), &dz, dtype);
                }

                let got = batchnorm_fused::forward_eval_fused(&x, &gamma, &beta, &rm, &rvar, e, eps).unwrap();
                let stats = (v(&rm), v(&rvar));
                let want_y = bn_ref::forward_fused(&xv, &gv, &bv, (&stats.0, &stats.1), r, relu, dims, eps);
                check(&format!("fused eval forward {case}"), &got, &want_y, dtype);
                let yv = v(&got);
                let g = batchnorm_fused::backward_fused(
                    &dy,
                    &x,
                    relu.then_some(&got),
                    &gamma,
                    &rm,
                    &rvar,
                    eps,
                    false,
                    false,
                )
                .unwrap();
                let (want, _) = bn_ref::backward_fused(
                    &dyv,
                    relu.then_some(yv.as_slice()),
                    &xv,
                    &gv,
                    (&stats.0, &stats.1),
                    dims,
                    eps,
                    false,
                );
                check(&format!("fused eval dx {case}"), &g.dx, &want.dx, dtype);
            }
        }
    }
}
