//! Every op's backward pass against central finite differences, in f64.

use scratchnet::autograd::gradcheck::{GradcheckOptions, gradcheck};
use scratchnet::autograd::{BnEpilogue, BnStats};
use scratchnet::ops::conv2d::Conv2dParams;
use scratchnet::ops::lrn::LrnParams;
use scratchnet::ops::pool::Pool2dParams;
use scratchnet::{DType, Graph, Result, Tensor, Var};

/// Uniform values in ±[0.1, 1.1): kept away from zero so ReLU's kink is never straddled.
fn input(shape: &[usize], seed: u64) -> Tensor {
    let u = Tensor::uniform(shape, -1.0, 1.0, DType::F64, seed).to_f64_vec().unwrap();
    let v = u.into_iter().map(|x| x.signum() * (0.1 + x.abs())).collect();
    Tensor::from_vec(shape, v).unwrap()
}

fn check(name: &str, inputs: &[Tensor], f: impl Fn(&mut Graph, &[Var]) -> Result<Var>) {
    check_with(name, inputs, GradcheckOptions::default(), f)
}

fn check_with(name: &str, inputs: &[Tensor], opts: GradcheckOptions, f: impl Fn(&mut Graph, &[Var]) -> Result<Var>) {
    let report = gradcheck(inputs, f, opts).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert!(report.checked > 0);
    assert!(
        report.passed(),
        "{name}: input {} element {}: analytic {} numeric {} (ratio {:.3})",
        report.worst.0,
        report.worst.1,
        report.worst.2,
        report.worst.3,
        report.worst_ratio
    );
}

fn conv_case(name: &str, x: [usize; 4], w: [usize; 4], p: Conv2dParams, bias: bool) {
    let mut inputs = vec![input(&x, 1), input(&w, 2)];
    if bias {
        inputs.push(input(&[w[0]], 3));
    }
    check(name, &inputs, |g, v| g.conv2d(&v[0], &v[1], v.get(2), p));
}

#[test]
fn conv2d_plain_with_bias() {
    conv_case("conv plain", [2, 3, 5, 4], [4, 3, 3, 3], Conv2dParams::default(), true);
}

#[test]
fn conv2d_strided_padded() {
    conv_case("conv stride 2 pad 1", [2, 2, 7, 6], [3, 2, 3, 3], Conv2dParams::default().stride(2).padding(1), false);
}

#[test]
fn conv2d_dilated_rectangular() {
    let p = Conv2dParams { stride: (1, 2), padding: (2, 1), dilation: (2, 1), groups: 1 };
    conv_case("conv dilated", [1, 2, 6, 7], [3, 2, 3, 2], p, true);
}

#[test]
fn conv2d_grouped() {
    conv_case("conv groups 2", [2, 4, 5, 5], [6, 2, 3, 3], Conv2dParams::default().groups(2).padding(1), true);
    conv_case("conv depthwise", [1, 3, 4, 4], [3, 1, 2, 2], Conv2dParams::default().groups(3), false);
}

#[test]
fn conv2d_pointwise() {
    conv_case("conv 1x1", [2, 3, 3, 4], [5, 3, 1, 1], Conv2dParams::default(), true);
}

#[test]
fn linear_with_and_without_bias() {
    let inputs = [input(&[3, 5], 1), input(&[4, 5], 2), input(&[4], 3)];
    check("linear", &inputs, |g, v| g.linear(&v[0], &v[1], Some(&v[2])));
    check("linear no bias", &inputs[..2], |g, v| g.linear(&v[0], &v[1], None));
}

#[test]
fn max_pool_overlapping_and_padded() {
    // Distinct, well-separated values, so no window has a near-tie that a step could flip.
    let n = 2 * 2 * 7 * 7;
    let mut order: Vec<usize> = (0..n).collect();
    scratchnet::rng::Rng::new(9).shuffle(&mut order);
    let x = Tensor::from_vec([2, 2, 7, 7], order.iter().map(|&k| k as f64 * 0.01).collect()).unwrap();
    check("max pool 3/2", std::slice::from_ref(&x), |g, v| g.max_pool2d(&v[0], Pool2dParams::new(3, 2)));
    check("max pool 3/1 pad 1", &[x], |g, v| g.max_pool2d(&v[0], Pool2dParams::new(3, 1).padding(1)));
}

#[test]
fn avg_pools() {
    let x = input(&[2, 3, 5, 5], 4);
    check("avg pool 3/2 pad 1", std::slice::from_ref(&x), |g, v| {
        g.avg_pool2d(&v[0], Pool2dParams::new(3, 2).padding(1))
    });
    check("avg pool 2/2", std::slice::from_ref(&x), |g, v| g.avg_pool2d(&v[0], Pool2dParams::new(2, 2)));
    check("global avg pool", &[x], |g, v| g.global_avg_pool(&v[0]));
}

#[test]
fn lrn_odd_and_even_sizes() {
    // A large alpha makes the cross-channel term matter; with AlexNet's 1e-4 a wrong
    // cross term would hide below the tolerance.
    for size in [5, 4, 1] {
        let p = LrnParams { size, alpha: 0.8, beta: 0.75, k: 2.0 };
        check(&format!("lrn size {size}"), &[input(&[2, 7, 3, 2], 5)], move |g, v| g.lrn(&v[0], p));
    }
    let x = input(&[1, 6, 2, 2], 6);
    check("lrn alexnet", &[x], |g, v| g.lrn(&v[0], LrnParams::alexnet()));
}

#[test]
fn batch_norm_training_mode() {
    let inputs = [input(&[3, 4, 3, 2], 7), input(&[4], 8), input(&[4], 9)];
    check("batch norm train", &inputs, |g, v| {
        Ok(g.batch_norm(&v[0], (&v[1], &v[2]), BnStats::Batch, BnEpilogue::NONE, 1e-5)?.y)
    });
}

#[test]
fn batch_norm_eval_mode() {
    let inputs = [input(&[2, 3, 2, 2], 10), input(&[3], 11), input(&[3], 12)];
    let rm = input(&[3], 13);
    let rv = Tensor::from_vec([3], vec![0.5f64, 1.5, 2.0]).unwrap();
    let opts = GradcheckOptions { training: false, ..Default::default() };
    check_with("batch norm eval", &inputs, opts, |g, v| {
        Ok(g.batch_norm(&v[0], (&v[1], &v[2]), BnStats::Running { mean: &rm, var: &rv }, BnEpilogue::NONE, 1e-5)?.y)
    });
}

#[test]
fn fused_batch_norm_add_relu_training_and_eval() {
    let inputs = [input(&[3, 4, 3, 2], 30), input(&[4], 31), input(&[4], 32), input(&[3, 4, 3, 2], 33)];
    check("bn+add+relu train", &inputs, |g, v| {
        Ok(g.batch_norm(&v[0], (&v[1], &v[2]), BnStats::Batch, BnEpilogue::add_relu(&v[3]), 1e-5)?.y)
    });
    check("bn+relu train", &inputs[..3], |g, v| {
        Ok(g.batch_norm(&v[0], (&v[1], &v[2]), BnStats::Batch, BnEpilogue::RELU, 1e-5)?.y)
    });
    let (rm, rv) = (input(&[4], 34), Tensor::from_vec([4], vec![0.5f64, 1.5, 2.0, 0.8]).unwrap());
    let opts = GradcheckOptions { training: false, ..Default::default() };
    check_with("bn+add+relu eval", &inputs, opts, |g, v| {
        let stats = BnStats::Running { mean: &rm, var: &rv };
        Ok(g.batch_norm(&v[0], (&v[1], &v[2]), stats, BnEpilogue::add_relu(&v[3]), 1e-5)?.y)
    });
}

#[test]
fn fused_bias_relu_after_conv_and_linear() {
    let p = Conv2dParams::default().padding(1);
    let inputs = [input(&[2, 3, 5, 4], 40), input(&[4, 3, 3, 3], 41), input(&[4], 42)];
    check("conv+bias+relu", &inputs, |g, v| g.conv2d_relu(&v[0], &v[1], v.get(2), p));
    check("conv+relu no bias", &inputs[..2], |g, v| g.conv2d_relu(&v[0], &v[1], None, p));
    let inputs = [input(&[3, 5], 43), input(&[4, 5], 44), input(&[4], 45)];
    check("linear+bias+relu", &inputs, |g, v| g.linear_relu(&v[0], &v[1], v.get(2)));
}

#[test]
fn relu_add_and_reuse() {
    let inputs = [input(&[2, 3, 4], 14), input(&[2, 3, 4], 15)];
    check("relu", &inputs[..1], |g, v| g.relu(&v[0]));
    check("add", &inputs, |g, v| g.add(&v[0], &v[1]));
    // x used three times: the tape must sum the three contributions.
    check("reuse", &inputs[..1], |g, v| {
        let r = g.relu(&v[0])?;
        let s = g.add(&r, &v[0])?;
        g.add(&s, &v[0])
    });
}

#[test]
fn concat_three_inputs() {
    let inputs = [input(&[2, 1, 3, 2], 16), input(&[2, 3, 3, 2], 17), input(&[2, 2, 3, 2], 18)];
    check("concat", &inputs, |g, v| g.concat(&[&v[0], &v[1], &v[2]]));
    // A feature map reused by a later concat, as in a dense block.
    check("dense reuse", &inputs[..1], |g, v| {
        let a = g.relu(&v[0])?;
        let b = g.concat(&[&v[0], &a])?;
        g.concat(&[&b, &v[0]])
    });
}

#[test]
fn dropout_reshape_flatten() {
    let x = input(&[2, 3, 2, 2], 19);
    check("dropout", std::slice::from_ref(&x), |g, v| g.dropout(&v[0], 0.4, 77));
    check("reshape", std::slice::from_ref(&x), |g, v| g.reshape(&v[0], [4, 6]));
    check("flatten", &[x], |g, v| g.flatten(&v[0]));
}

#[test]
fn cross_entropy() {
    let labels = Tensor::from_vec([4], vec![2i64, 0, 4, 2]).unwrap();
    check("cross entropy", &[input(&[4, 5], 20)], |g, v| g.cross_entropy(&v[0], &labels));
}

#[test]
fn two_layer_conv_net_end_to_end() {
    // conv → BN → ReLU → max pool → conv (grouped, strided) → ReLU → global pool → linear → loss,
    // checked with respect to the image and every parameter at once.
    let inputs = [
        input(&[2, 3, 6, 6], 21), // image
        input(&[4, 3, 3, 3], 22), // conv1 weight
        input(&[4], 23),          // conv1 bias
        input(&[4], 24),          // bn gamma
        input(&[4], 25),          // bn beta
        input(&[6, 2, 3, 3], 26), // conv2 weight, 2 groups
        input(&[3, 6], 27),       // fc weight
        input(&[3], 28),          // fc bias
    ];
    let labels = Tensor::from_vec([2], vec![1i64, 2]).unwrap();
    check("two-layer net", &inputs, |g, v| {
        let h = g.conv2d(&v[0], &v[1], Some(&v[2]), Conv2dParams::default().padding(1))?;
        let h = g.batch_norm(&h, (&v[3], &v[4]), BnStats::Batch, BnEpilogue::NONE, 1e-5)?.y;
        let h = g.relu(&h)?;
        let h = g.max_pool2d(&h, Pool2dParams::new(3, 2))?;
        let h = g.conv2d(&h, &v[5], None, Conv2dParams::default().padding(1).stride(2).groups(2))?;
        let h = g.relu(&h)?;
        let h = g.global_avg_pool(&h)?;
        let h = g.flatten(&h)?;
        let logits = g.linear(&h, &v[6], Some(&v[7]))?;
        g.cross_entropy(&logits, &labels)
    });
}

#[test]
fn a_wrong_gradient_is_caught() {
    // The checker itself must be able to fail: the gradient of x·mask with the mask of
    // another seed is wrong, and gradcheck has to say so.
    let x = input(&[50], 29);
    let report = gradcheck(
        &[x],
        |g, v| {
            // Forward uses seed 1 when not recording (finite differences) and seed 2 when
            // recording (the analytic pass): the two disagree on purpose.
            let seed = if g.is_recording() { 2 } else { 1 };
            g.dropout(&v[0], 0.5, seed)
        },
        GradcheckOptions::default(),
    )
    .unwrap();
    assert!(!report.passed(), "a mismatched gradient passed: {report:?}");
}
