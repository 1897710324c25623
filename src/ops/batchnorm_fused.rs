//! The fused batch norms: `y = act(BN(x) + residual)` with the ReLU and the residual
//! addition folded into the normalisation's pass (BN + ReLU after a convolution, BN + add +
//! ReLU at the end of a residual block), and their backward, which applies the ReLU's mask as
//! it reads the output gradient. The kernels are in kernels/batchnorm_fused.cu; on the CPU
//! these forms run the batch norm CPU code of [`super::batchnorm`] with the epilogue; the
//! reference of both is `src/ops/batchnorm/reference.rs`.
//!
//! On a GPU the statistics and the gradient sums are per-channel reductions spread over many
//! blocks (kernels/channel_reduce.cuh, launched by `src/ops/channel_reduce.rs`): a pass of
//! partial sums, a finalize per channel, then one element-wise pass.

pub use super::batchnorm::Epilogue;
use super::batchnorm::{
    BatchNormGrads, BatchNormTrainOutput, backward_cpu, check, check_eps, forward_train_cpu, normalize, shape_args,
};
use crate::device::gpu::{KernelCall, to_i32};
use crate::error::{Error, Result};
use crate::ops::channel_reduce::ChannelReduction;
use crate::ops::{common_dtype, expect_shape, gpu_f32, host, with_float_type};
use crate::tensor::Tensor;

const OP: &str = "batch_norm";

/// Checks a fused epilogue's residual against the input.
fn check_epilogue(x: &Tensor, e: Epilogue) -> Result<()> {
    if let Some(r) = e.residual {
        expect_shape(OP, "residual", r, x.dims())?;
        common_dtype(OP, &[("input", x), ("residual", r)])?;
    }
    Ok(())
}

/// The fused forward's last kernel: `y = act(x·a + b + r)` with the statistics given.
#[allow(clippy::too_many_arguments)]
fn fused_normalize_gpu(
    gpu: &std::sync::Arc<crate::device::GpuDevice>,
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    mean: &crate::device::GpuBuffer,
    var: &crate::device::GpuBuffer,
    eps: f64,
    e: Epilogue,
) -> Result<Tensor> {
    let (n, c, hw) = check(x, &[])?;
    let y = gpu.alloc(x.dtype(), x.numel())?;
    let residual = e.residual.map(Tensor::gpu_buffer).transpose()?;
    let call = KernelCall::elementwise("bn_act_fwd_f32", x.numel().div_ceil(if hw % 4 == 0 { 4 } else { 1 }))
        .buf(&y)
        .buf(x.gpu_buffer()?)
        .buf_or_null(residual)
        .buf(mean)
        .buf(var)
        .buf(gamma.gpu_buffer()?)
        .buf(beta.gpu_buffer()?)
        .f32(eps as f32)
        .i32(e.relu as i32);
    gpu.launch(shape_args(call, n, c, hw)?)?;
    Ok(Tensor::from_gpu(x.shape().clone(), y))
}

/// Training-mode `y = act(BN(x) + residual)` in one pass for the statistics and one for the
/// output. Also returns the batch statistics, as [`forward_train`](super::batchnorm::forward_train).
pub fn forward_train_fused(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    epilogue: Epilogue,
    eps: f64,
) -> Result<BatchNormTrainOutput> {
    check_eps(eps)?;
    let (n, c, hw) = check(x, &[("weight", gamma), ("bias", beta)])?;
    check_epilogue(x, epilogue)?;
    if n * hw == 0 {
        return Err(Error::shape_of(OP, "at least one value per channel", "input", x.shape()));
    }
    let Some(gpu) = gpu_f32(OP, x.dtype(), x.device())? else {
        return forward_train_cpu(x, gamma, beta, eps, epilogue);
    };
    let sums = ChannelReduction::new(&gpu, OP, (n, c, hw), 2)?;
    let xb = x.gpu_buffer()?;
    sums.launch_partials(&gpu, "bn_stats_partial_f32", |call| call.buf(sums.partial()).buf(xb))?;
    let mean = gpu.alloc(x.dtype(), c)?;
    let var = gpu.alloc(x.dtype(), c)?;
    let finalize = KernelCall::elementwise("bn_stats_finalize_f32", c).buf(&mean).buf(&var).buf(sums.partial()).buf(xb);
    gpu.launch(shape_args(finalize, n, c, hw)?.i32(to_i32(OP, "slices", sums.slices())?))?;
    let y = fused_normalize_gpu(&gpu, x, gamma, beta, &mean, &var, eps, epilogue)?;
    Ok(BatchNormTrainOutput { y, mean: Tensor::from_gpu([c], mean), var: Tensor::from_gpu([c], var) })
}

/// Eval-mode `y = act(BN(x) + residual)` with the running statistics.
pub fn forward_eval_fused(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    running_mean: &Tensor,
    running_var: &Tensor,
    epilogue: Epilogue,
    eps: f64,
) -> Result<Tensor> {
    check_eps(eps)?;
    let (_, c, hw) =
        check(x, &[("weight", gamma), ("bias", beta), ("running_mean", running_mean), ("running_var", running_var)])?;
    check_epilogue(x, epilogue)?;
    if let Some(gpu) = gpu_f32(OP, x.dtype(), x.device())? {
        return fused_normalize_gpu(
            &gpu,
            x,
            gamma,
            beta,
            running_mean.gpu_buffer()?,
            running_var.gpu_buffer()?,
            eps,
            epilogue,
        );
    }
    with_float_type!(x.dtype(), OP, |T| {
        let (mean, var) = (running_mean.to_f64_vec()?, running_var.to_f64_vec()?);
        let y = normalize::<T>(host(x)?, host(gamma)?, host(beta)?, &mean, &var, eps, c, hw, epilogue)?;
        Ok(Tensor::from_cpu(x.shape().clone(), y))
    })
}

/// The backward of `y = act(BN(x) + residual)`. `y` is the forward's output when it applied
/// a ReLU (its mask), else `None`; `batch_stats` says whether `mean` and `var` are the
/// batch's (training) or fixed (eval). With `want_residual`, `dresidual` is the gradient
/// reaching the addition.
#[allow(clippy::too_many_arguments)]
pub fn backward_fused(
    dy: &Tensor,
    x: &Tensor,
    y: Option<&Tensor>,
    gamma: &Tensor,
    mean: &Tensor,
    var: &Tensor,
    eps: f64,
    batch_stats: bool,
    want_residual: bool,
) -> Result<BatchNormGrads> {
    check_eps(eps)?;
    let (n, c, hw) = check(x, &[("weight", gamma), ("mean", mean), ("var", var)])?;
    expect_shape(OP, "output gradient", dy, x.dims())?;
    let mut inputs = vec![("input", x), ("output gradient", dy)];
    if let Some(y) = y {
        expect_shape(OP, "output", y, x.dims())?;
        inputs.push(("output", y));
    }
    let (dtype, device) = common_dtype(OP, &inputs)?;
    let Some(gpu) = gpu_f32(OP, dtype, device)? else {
        return with_float_type!(dtype, OP, |T| {
            let ys = y.map(host::<T>).transpose()?;
            backward_cpu::<T>(host(dy)?, ys, x, gamma, mean, var, eps, batch_stats, want_residual)
        });
    };
    let sums = ChannelReduction::new(&gpu, OP, (n, c, hw), 2)?;
    let (xb, dyb, meanb, varb) = (x.gpu_buffer()?, dy.gpu_buffer()?, mean.gpu_buffer()?, var.gpu_buffer()?);
    let yb = y.map(Tensor::gpu_buffer).transpose()?;
    sums.launch_partials(&gpu, "bn_act_bwd_partial_f32", |call| {
        call.buf(sums.partial()).buf(dyb).buf_or_null(yb).buf(xb).buf(meanb).buf(varb).f32(eps as f32)
    })?;
    let dgamma = gpu.alloc(dtype, c)?;
    let dbeta = gpu.alloc(dtype, c)?;
    sums.finalize(&gpu, &dbeta, Some(&dgamma))?;
    let dx = gpu.alloc(dtype, x.numel())?;
    let dresidual = if want_residual { Some(gpu.alloc(dtype, x.numel())?) } else { None };
    let data = KernelCall::elementwise("bn_act_bwd_data_f32", x.numel().div_ceil(if hw % 4 == 0 { 4 } else { 1 }))
        .buf(&dx)
        .buf_or_null(dresidual.as_ref())
        .buf(dyb)
        .buf_or_null(yb)
        .buf(xb)
        .buf(meanb)
        .buf(varb)
        .buf(gamma.gpu_buffer()?)
        .buf(&dgamma)
        .buf(&dbeta)
        .f32(eps as f32)
        .i32(batch_stats as i32);
    gpu.launch(shape_args(data, n, c, hw)?)?;
    Ok(BatchNormGrads {
        dx: Tensor::from_gpu(x.shape().clone(), dx),
        dgamma: Tensor::from_gpu([c], dgamma),
        dbeta: Tensor::from_gpu([c], dbeta),
        dresidual: dresidual.map(|d| Tensor::from_gpu(x.shape().clone(), d)),
    })
}
