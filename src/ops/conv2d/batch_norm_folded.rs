//! Batch norm in eval mode folded into the convolution before it, as inference engines fold
//! it: `act(BN(conv(x, w) + b) + residual)` in one op.
//!
//! On the CPU in FP32 the convolution applies batch norm's per-channel `x·a + b` (and the
//! residual and the ReLU) as it writes each output plane (`write_back.rs`), so batch norm
//! costs no pass over the activations: in ResNet-20's inference those passes were a fifth of
//! the time. The coefficients and the order of the additions are batch norm's own, so the
//! result is the bits of the two ops run one after the other, which is what other devices and
//! precisions run.

use super::write_back::WriteBack;
use super::{Conv2dParams, ConvGeometry, OP, forward, forward_on_cpu};
use crate::device::Device;
use crate::error::Result;
use crate::ops::precision::Precision;
use crate::ops::{ExecOptions, batchnorm, batchnorm_fused, common_dtype, expect_shape, host, with_float_type};
use crate::tensor::Tensor;

/// Batch norm in eval mode, with its running statistics, as [`forward_batch_norm`] folds it
/// into a convolution.
#[derive(Clone, Copy, Debug)]
pub struct BatchNormEval<'a> {
    pub gamma: &'a Tensor,
    pub beta: &'a Tensor,
    pub running_mean: &'a Tensor,
    pub running_var: &'a Tensor,
    pub eps: f64,
}

/// `act(BN(conv(x, w) + b) + residual)` with batch norm in eval mode: what
/// [`batchnorm_fused::forward_eval_fused`] gives for [`forward`]'s output, bit for bit,
/// folded into the convolution on the CPU in FP32.
pub fn forward_batch_norm(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    p: Conv2dParams,
    bn: BatchNormEval,
    epilogue: batchnorm_fused::Epilogue,
    exec: &ExecOptions,
) -> Result<Tensor> {
    let on_cpu = [x, w, bn.gamma].iter().all(|t| t.device() == Device::Cpu);
    if exec.precision != Precision::Fp32 || !on_cpu {
        let y = forward(x, w, b, p, exec)?;
        return batchnorm_fused::forward_eval_fused(
            &y,
            bn.gamma,
            bn.beta,
            bn.running_mean,
            bn.running_var,
            epilogue,
            bn.eps,
        );
    }
    let g = ConvGeometry::new(x.shape(), w.shape(), p)?;
    batchnorm::check_eps(bn.eps)?;
    let mut inputs = vec![("input", x), ("weight", w)];
    let per_channel = [
        ("bias", b),
        ("batch norm weight", Some(bn.gamma)),
        ("batch norm bias", Some(bn.beta)),
        ("running mean", Some(bn.running_mean)),
        ("running variance", Some(bn.running_var)),
    ];
    for (name, t) in per_channel {
        if let Some(t) = t {
            expect_shape(OP, name, t, &[g.o])?;
            inputs.push((name, t));
        }
    }
    if let Some(r) = epilogue.residual {
        expect_shape(OP, "residual", r, g.out_shape().dims())?;
        inputs.push(("residual", r));
    }
    let (dtype, _) = common_dtype(OP, &inputs)?;
    let (mean, var) = (bn.running_mean.to_f64_vec()?, bn.running_var.to_f64_vec()?);
    with_float_type!(dtype, OP, |T| {
        let coef = batchnorm::coefficients(host::<T>(bn.gamma)?, host::<T>(bn.beta)?, &mean, &var, bn.eps, g.o);
        let wb = WriteBack {
            bias: b.map(host::<T>).transpose()?,
            batch_norm: Some(&coef),
            residual: epilogue.residual.map(host::<T>).transpose()?,
            relu: epilogue.relu,
        };
        Ok(Tensor::from_cpu(g.out_shape(), forward_on_cpu::<T>(x, w, &wb, &g, exec)?))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::DType;

    /// Folded, the convolution gives the bits of the convolution and then batch norm's eval
    /// kernel: im2col + GEMM and the shifted taps of a small map (weights fixed), with and
    /// without a bias, a residual and a ReLU, in f32 and f64.
    #[test]
    fn folded_batch_norm_gives_the_bits_of_the_two_ops() {
        let p = Conv2dParams::default().padding(1);
        for dtype in [DType::F32, DType::F64] {
            for (xs, ws, fixed) in [([2, 5, 9, 9], [6, 5, 3, 3], false), ([8, 40, 2, 2], [24, 40, 3, 3], true)] {
                let x = Tensor::randn(xs.to_vec(), 0.0, 1.0, dtype, 1);
                let w = Tensor::randn(ws.to_vec(), 0.0, 0.3, dtype, 2);
                let o = ws[0];
                let (bias, gamma, beta) = (
                    Tensor::randn([o], 0.0, 0.1, dtype, 3),
                    Tensor::randn([o], 1.0, 0.2, dtype, 4),
                    Tensor::randn([o], 0.0, 0.2, dtype, 5),
                );
                let (mean, var) = (Tensor::randn([o], 0.0, 0.3, dtype, 6), Tensor::uniform([o], 0.5, 2.0, dtype, 7));
                let bn =
                    BatchNormEval { gamma: &gamma, beta: &beta, running_mean: &mean, running_var: &var, eps: 1e-5 };
                let exec = ExecOptions { weights_fixed: fixed, ..ExecOptions::default() };
                let out_shape = ConvGeometry::new(x.shape(), w.shape(), p).unwrap().out_shape();
                let residual = Tensor::randn(out_shape.dims().to_vec(), 0.0, 1.0, dtype, 8);
                for (b, r, relu) in [(None, None, false), (Some(&bias), None, true), (None, Some(&residual), true)] {
                    let e = batchnorm_fused::Epilogue { residual: r, relu };
                    let y = forward(&x, &w, b, p, &exec).unwrap();
                    let want = batchnorm_fused::forward_eval_fused(&y, &gamma, &beta, &mean, &var, e, 1e-5).unwrap();
                    let got = forward_batch_norm(&x, &w, b, p, bn, e, &exec).unwrap();
                    let case = format!("{dtype:?} {xs:?} bias {} residual {} relu {relu}", b.is_some(), r.is_some());
                    assert_eq!(got.to_f64_vec().unwrap(), want.to_f64_vec().unwrap(), "{case}");
                }
            }
        }
    }

    /// Batch norm's parameters and the residual are checked as the two ops check them.
    #[test]
    fn wrong_shapes_are_errors() {
        let p = Conv2dParams::default();
        let (x, w) = (Tensor::zeros([1, 2, 4, 4], DType::F32), Tensor::zeros([3, 2, 1, 1], DType::F32));
        let (ok, short) = (Tensor::full([3], 1.0, DType::F32), Tensor::zeros([2], DType::F32));
        let bn = BatchNormEval { gamma: &ok, beta: &ok, running_mean: &ok, running_var: &short, eps: 1e-5 };
        let e = forward_batch_norm(&x, &w, None, p, bn, batchnorm_fused::Epilogue::NONE, &ExecOptions::default());
        assert!(e.unwrap_err().to_string().contains("running variance"));
        let bn = BatchNormEval { running_var: &ok, eps: 0.0, ..bn };
        let e = forward_batch_norm(&x, &w, None, p, bn, batchnorm_fused::Epilogue::NONE, &ExecOptions::default());
        assert!(e.unwrap_err().to_string().contains("eps must be positive"));
        let bad = Tensor::zeros([1, 3, 4, 5], DType::F32);
        let bn = BatchNormEval { eps: 1e-5, ..bn };
        let e = batchnorm_fused::Epilogue { residual: Some(&bad), relu: true };
        let e = forward_batch_norm(&x, &w, None, p, bn, e, &ExecOptions::default());
        assert!(e.unwrap_err().to_string().contains("residual"));
    }
}
