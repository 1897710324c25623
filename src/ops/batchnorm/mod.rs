//! Batch normalisation over the channels of an NCHW tensor (Ioffe & Szegedy, 2015).
//!
//! Per channel c, over the `M = N·H·W` values of that channel:
//!
//! ```text
//! training:  μ = mean(x),  σ² = mean((x − μ)²)   (the biased variance, as PyTorch)
//! eval:      μ, σ² = running_mean, running_var
//! x̂ = (x − μ) / √(σ² + ε),   y = γ · x̂ + β
//! ```
//!
//! After a training step the running statistics move towards the batch's, with momentum
//! 0.1 and the *unbiased* variance `σ² · M / (M − 1)`, as PyTorch does.
//!
//! Training-mode gradient (μ and σ² depend on every x of the channel):
//!
//! ```text
//! dβ = Σ dy,   dγ = Σ dy · x̂
//! dx = γ / √(σ² + ε) · (dy − dβ / M − x̂ · dγ / M)
//! ```
//!
//! In eval mode the statistics are constants, so `dx = γ / √(σ² + ε) · dy`.
//!
//! The CPU path accumulates every per-channel sum in f64, and computes the variance in a
//! second pass over `(x − μ)²` rather than as `E[x²] − μ²`, which cancels catastrophically
//! when the mean is large compared with the spread. The definition's plain loops are in
//! [`reference`](mod@reference).

pub mod reference;

use rayon::prelude::*;

use super::{common_dtype, expect_nchw, expect_shape, gpu_f32, host, sum_f64, sum2_f64, with_float_type};
use crate::device::gpu::{KernelCall, to_i32, to_i64};
use crate::device::host_memory::filled;
use crate::error::{Error, Result};
use crate::ops::elementwise::PAR_CHUNK;
use crate::tensor::{Element, Float, Tensor};

const OP: &str = "batch_norm";

/// The training-mode forward: the output and the batch statistics it used.
#[derive(Clone, Debug)]
pub struct BatchNormTrainOutput {
    pub y: Tensor,
    /// Per-channel batch mean, `[C]`.
    pub mean: Tensor,
    /// Per-channel biased batch variance, `[C]`.
    pub var: Tensor,
}

pub(super) fn check(x: &Tensor, per_channel: &[(&str, &Tensor)]) -> Result<(usize, usize, usize)> {
    let (n, c, h, w) = expect_nchw(OP, "input", x)?;
    super::expect_nonempty_image(OP, "input", x.shape())?;
    for (name, t) in per_channel {
        expect_shape(OP, name, t, &[c])?;
    }
    let mut all = vec![("input", x)];
    all.extend_from_slice(per_channel);
    common_dtype(OP, &all)?;
    Ok((n, c, h * w))
}

/// Appends `(N, C, HW)` in the order the kernels of kernels/batchnorm.cu take them.
pub(super) fn shape_args(call: KernelCall, n: usize, c: usize, hw: usize) -> Result<KernelCall> {
    Ok(call.i32(to_i32(OP, "batch", n)?).i32(to_i32(OP, "channels", c)?).i64(to_i64(hw)))
}

pub(crate) fn check_eps(eps: f64) -> Result<()> {
    if eps.is_finite() && eps > 0.0 {
        Ok(())
    } else {
        Err(Error::argument(OP, format!("eps must be positive, got {eps}")))
    }
}

/// Iterates over the `N` planes of channel `ch` (each `hw` long) in an NCHW buffer.
fn planes<T>(data: &[T], c: usize, hw: usize, ch: usize) -> impl Iterator<Item = &[T]> {
    data.chunks_exact(c * hw).map(move |img| &img[ch * hw..][..hw])
}

pub fn forward_train(x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f64) -> Result<BatchNormTrainOutput> {
    check_eps(eps)?;
    let (n, c, hw) = check(x, &[("weight", gamma), ("bias", beta)])?;
    let m = n * hw;
    if m == 0 {
        return Err(Error::shape_of(OP, "at least one value per channel", "input", x.shape()));
    }
    if let Some(gpu) = gpu_f32(OP, x.dtype(), x.device())? {
        let mean = gpu.alloc(x.dtype(), c)?;
        let var = gpu.alloc(x.dtype(), c)?;
        let stats = KernelCall::block_per_item("bn_stats_f32", c)?.buf(&mean).buf(&var).buf(x.gpu_buffer()?);
        gpu.launch(shape_args(stats, n, c, hw)?)?;
        let y = gpu.alloc(x.dtype(), x.numel())?;
        let normalize = KernelCall::elementwise("bn_fwd_f32", x.numel())
            .buf(&y)
            .buf(x.gpu_buffer()?)
            .buf(&mean)
            .buf(&var)
            .buf(gamma.gpu_buffer()?)
            .buf(beta.gpu_buffer()?)
            .f32(eps as f32);
        gpu.launch(shape_args(normalize, n, c, hw)?)?;
        return Ok(BatchNormTrainOutput {
            y: Tensor::from_gpu(x.shape().clone(), y),
            mean: Tensor::from_gpu([c], mean),
            var: Tensor::from_gpu([c], var),
        });
    }
    forward_train_cpu(x, gamma, beta, eps, Epilogue::NONE)
}

/// The CPU training forward, with an epilogue (none for the plain op).
pub(super) fn forward_train_cpu(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    e: Epilogue,
) -> Result<BatchNormTrainOutput> {
    let (n, c, hw) = check(x, &[])?;
    let m = n * hw;
    with_float_type!(x.dtype(), OP, |T| {
        let xs = host::<T>(x)?;
        let stats: Vec<(f64, f64)> = (0..c)
            .into_par_iter()
            .map(|ch| {
                let sum: f64 = planes(xs, c, hw, ch).map(|p| sum_f64(p, |v| v)).sum();
                let mean = sum / m as f64;
                let sq: f64 = planes(xs, c, hw, ch).map(|p| sum_f64(p, |v| (v - mean) * (v - mean))).sum();
                (mean, sq / m as f64)
            })
            .collect();
        let mean: Vec<f64> = stats.iter().map(|s| s.0).collect();
        let var: Vec<f64> = stats.iter().map(|s| s.1).collect();
        let y = normalize::<T>(xs, host::<T>(gamma)?, host::<T>(beta)?, &mean, &var, eps, c, hw, e)?;
        Ok(BatchNormTrainOutput {
            y: Tensor::from_cpu(x.shape().clone(), y),
            mean: Tensor::from_cpu([c], mean.into_iter().map(T::from_f64).collect::<Vec<T>>()),
            var: Tensor::from_cpu([c], var.into_iter().map(T::from_f64).collect::<Vec<T>>()),
        })
    })
}

pub fn forward_eval(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    running_mean: &Tensor,
    running_var: &Tensor,
    eps: f64,
) -> Result<Tensor> {
    check_eps(eps)?;
    let (n, c, hw) =
        check(x, &[("weight", gamma), ("bias", beta), ("running_mean", running_mean), ("running_var", running_var)])?;
    if let Some(gpu) = gpu_f32(OP, x.dtype(), x.device())? {
        let y = gpu.alloc(x.dtype(), x.numel())?;
        let normalize = KernelCall::elementwise("bn_fwd_f32", x.numel())
            .buf(&y)
            .buf(x.gpu_buffer()?)
            .buf(running_mean.gpu_buffer()?)
            .buf(running_var.gpu_buffer()?)
            .buf(gamma.gpu_buffer()?)
            .buf(beta.gpu_buffer()?)
            .f32(eps as f32);
        gpu.launch(shape_args(normalize, n, c, hw)?)?;
        return Ok(Tensor::from_gpu(x.shape().clone(), y));
    }
    with_float_type!(x.dtype(), OP, |T| {
        let mean: Vec<f64> = host::<T>(running_mean)?.iter().map(|v| v.to_f64()).collect();
        let var: Vec<f64> = host::<T>(running_var)?.iter().map(|v| v.to_f64()).collect();
        let y = normalize::<T>(
            host::<T>(x)?,
            host::<T>(gamma)?,
            host::<T>(beta)?,
            &mean,
            &var,
            eps,
            c,
            hw,
            Epilogue::NONE,
        )?;
        Ok(Tensor::from_cpu(x.shape().clone(), y))
    })
}

/// What a fused batch norm applies after normalising: `y = act(BN(x) + residual)`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Epilogue<'a> {
    /// Added after the normalisation (a ResNet block's shortcut).
    pub residual: Option<&'a Tensor>,
    /// ReLU after the addition.
    pub relu: bool,
}

impl Epilogue<'_> {
    /// Plain batch norm.
    pub const NONE: Epilogue<'static> = Epilogue { residual: None, relu: false };
}

/// Each channel's `(a, b)` of `x·a + b`: `a = γ/√(σ² + ε)`, `b = β − μ·a`, computed in f64
/// and rounded once. A convolution followed by batch norm in eval mode applies the same
/// coefficients as it writes its output (`conv2d::forward_batch_norm`), so the two give the
/// same bits.
pub(crate) fn coefficients<T: Float>(
    gamma: &[T],
    beta: &[T],
    mean: &[f64],
    var: &[f64],
    eps: f64,
    c: usize,
) -> Vec<(T, T)> {
    (0..c)
        .map(|ch| {
            let a = gamma[ch].to_f64() / (var[ch] + eps).sqrt();
            (T::from_f64(a), T::from_f64(beta[ch].to_f64() - mean[ch] * a))
        })
        .collect()
}

/// `y = act(γ·(x − μ)/√(σ² + ε) + β + r)`, the normalisation folded into one multiply-add
/// per element: `x·a + b` with `a = γ/√(σ² + ε)` and `b = β − μ·a`.
#[allow(clippy::too_many_arguments)]
pub(super) fn normalize<T: Float>(
    x: &[T],
    gamma: &[T],
    beta: &[T],
    mean: &[f64],
    var: &[f64],
    eps: f64,
    c: usize,
    hw: usize,
    epilogue: Epilogue,
) -> Result<Vec<T>> {
    let coef = coefficients(gamma, beta, mean, var, eps, c);
    let residual = epilogue.residual.map(host::<T>).transpose()?;
    let relu = epilogue.relu;
    let mut y = filled(x.len(), T::ZERO)?;
    // Whole planes per task, PAR_CHUNK values at least: the planes of a small map (4 values
    // on a 2×2 map) would each cost more to hand to a thread than to normalize.
    let hw = hw.max(1); // (an empty map has no planes to walk)
    let planes = (PAR_CHUNK / hw).max(1);
    y.par_chunks_mut(planes * hw).zip(x.par_chunks(planes * hw)).enumerate().for_each(|(t, (y, x))| {
        for (p, (y, x)) in y.chunks_exact_mut(hw).zip(x.chunks_exact(hw)).enumerate() {
            let plane = t * planes + p;
            let (a, b) = coef[plane % c];
            let r = residual.map(|r| &r[plane * hw..][..hw]);
            for (i, (y, &x)) in y.iter_mut().zip(x).enumerate() {
                let t = x * a + b + r.map_or(T::ZERO, |r| r[i]);
                *y = if !relu || t > T::ZERO || t.is_nan() { t } else { T::ZERO };
            }
        }
    });
    Ok(y)
}

/// The gradients `(dx, dγ, dβ)`.
#[derive(Clone, Debug)]
pub struct BatchNormGrads {
    pub dx: Tensor,
    pub dgamma: Tensor,
    pub dbeta: Tensor,
    /// The residual's gradient, from [`backward_fused`](super::batchnorm_fused::backward_fused) when the forward pass added one.
    pub dresidual: Option<Tensor>,
}

/// Training-mode backward, from the batch statistics the forward pass returned.
pub fn backward_train(
    dy: &Tensor,
    x: &Tensor,
    gamma: &Tensor,
    mean: &Tensor,
    var: &Tensor,
    eps: f64,
) -> Result<BatchNormGrads> {
    backward(dy, x, gamma, mean, var, eps, true)
}

/// Eval-mode backward (statistics held fixed), from the running statistics.
pub fn backward_eval(
    dy: &Tensor,
    x: &Tensor,
    gamma: &Tensor,
    running_mean: &Tensor,
    running_var: &Tensor,
    eps: f64,
) -> Result<BatchNormGrads> {
    backward(dy, x, gamma, running_mean, running_var, eps, false)
}

fn backward(
    dy: &Tensor,
    x: &Tensor,
    gamma: &Tensor,
    mean: &Tensor,
    var: &Tensor,
    eps: f64,
    batch_stats: bool,
) -> Result<BatchNormGrads> {
    check_eps(eps)?;
    let (n, c, hw) = check(x, &[("weight", gamma), ("mean", mean), ("var", var)])?;
    expect_shape(OP, "output gradient", dy, x.dims())?;
    let (dtype, device) = common_dtype(OP, &[("input", x), ("output gradient", dy)])?;
    if let Some(gpu) = gpu_f32(OP, dtype, device)? {
        let dgamma = gpu.alloc(dtype, c)?;
        let dbeta = gpu.alloc(dtype, c)?;
        let (xb, dyb, meanb, varb) = (x.gpu_buffer()?, dy.gpu_buffer()?, mean.gpu_buffer()?, var.gpu_buffer()?);
        let reduce = KernelCall::block_per_item("bn_bwd_reduce_f32", c)?
            .buf(&dgamma)
            .buf(&dbeta)
            .buf(dyb)
            .buf(xb)
            .buf(meanb)
            .buf(varb)
            .f32(eps as f32);
        gpu.launch(shape_args(reduce, n, c, hw)?)?;
        let dx = gpu.alloc(dtype, x.numel())?;
        let data = KernelCall::elementwise("bn_bwd_data_f32", x.numel())
            .buf(&dx)
            .buf(dyb)
            .buf(xb)
            .buf(meanb)
            .buf(varb)
            .buf(gamma.gpu_buffer()?)
            .buf(&dgamma)
            .buf(&dbeta)
            .f32(eps as f32);
        gpu.launch(shape_args(data, n, c, hw)?.i32(batch_stats as i32))?;
        return Ok(BatchNormGrads {
            dx: Tensor::from_gpu(x.shape().clone(), dx),
            dgamma: Tensor::from_gpu([c], dgamma),
            dbeta: Tensor::from_gpu([c], dbeta),
            dresidual: None,
        });
    }
    with_float_type!(x.dtype(), OP, |T| backward_cpu::<T>(
        host(dy)?,
        None,
        x,
        gamma,
        mean,
        var,
        eps,
        batch_stats,
        false
    ))
}

/// The CPU backward. `dys` is the output gradient; with `relu_out` (the output of a fused
/// ReLU) the gradient reaching the normalisation is `dz = dy` where that output is positive
/// (or NaN), else 0, and with `want_residual` that `dz` is returned as well (it is also the
/// residual's gradient). Two passes: per-channel sums, then `dx` element by element.
#[allow(clippy::too_many_arguments)]
pub(super) fn backward_cpu<T: Float>(
    dys: &[T],
    relu_out: Option<&[T]>,
    x: &Tensor,
    gamma: &Tensor,
    mean: &Tensor,
    var: &Tensor,
    eps: f64,
    batch_stats: bool,
    want_residual: bool,
) -> Result<BatchNormGrads> {
    let (n, c, hw) = check(x, &[])?;
    let m = (n * hw) as f64;
    let xs = host::<T>(x)?;
    let (gs, ms, vs) = (host::<T>(gamma)?, host::<T>(mean)?, host::<T>(var)?);
    // dz of one plane, written into `out`: dy, masked by the ReLU's output when there is one.
    let dz_plane = |plane: usize, out: &mut [T]| {
        let dp = &dys[plane * hw..][..hw];
        match relu_out {
            None => out.copy_from_slice(dp),
            Some(ys) => {
                for ((o, &d), &y) in out.iter_mut().zip(dp).zip(&ys[plane * hw..][..hw]) {
                    *o = if y > T::ZERO || y.is_nan() { d } else { T::ZERO };
                }
            }
        }
    };
    // Per channel: Σdz and Σdz·(x − μ), in f64 (the reference should be the most accurate
    // party in a comparison). Σdz·x̂ is the second times 1/σ, applied once at the end.
    let sums: Vec<(f64, f64)> = (0..c)
        .into_par_iter()
        .map(|ch| {
            let mu = ms[ch].to_f64();
            let mut sum_dz = 0.0;
            let mut sum_dz_xc = 0.0;
            let mut dz = vec![T::ZERO; if relu_out.is_some() { hw } else { 0 }];
            for img in 0..n {
                let plane = img * c + ch;
                let xp = &xs[plane * hw..][..hw];
                let dp = if relu_out.is_some() {
                    dz_plane(plane, &mut dz);
                    &dz[..]
                } else {
                    &dys[plane * hw..][..hw]
                };
                let (s, sx) = sum2_f64(dp, xp, |d, x| (d, d * (x - mu)));
                sum_dz += s;
                sum_dz_xc += sx;
            }
            (sum_dz, sum_dz_xc)
        })
        .collect();
    // dx = γ/σ · (dz − Σdz/M − x̂·Σdz·x̂/M) = a·dz + b·(x − μ) + k per channel, with
    // a = γ/σ, b = −γ/σ³ · Σdz·(x − μ)/M, k = −γ/σ · Σdz/M (in eval mode only a·dz).
    let coef: Vec<(T, T, T, T)> = (0..c)
        .map(|ch| {
            let invstd = 1.0 / (vs[ch].to_f64() + eps).sqrt();
            let a = gs[ch].to_f64() * invstd;
            let (sum_dz, sum_dz_xc) = sums[ch];
            let (b, k) = if batch_stats { (-a * invstd * invstd * sum_dz_xc / m, -a * sum_dz / m) } else { (0.0, 0.0) };
            (T::from_f64(a), T::from_f64(b), T::from_f64(k), ms[ch])
        })
        .collect();
    let mut dx = filled(xs.len(), T::ZERO)?;
    let mut dres = if want_residual { filled(xs.len(), T::ZERO)? } else { Vec::new() };
    let per_plane = |plane: usize, dxp: &mut [T], dzp: Option<&mut [T]>| {
        let (a, b, k, mu) = coef[plane % c];
        // dz first, into dx (and into the residual's gradient when wanted), then dx from it.
        dz_plane(plane, dxp);
        if let Some(dzp) = dzp {
            dzp.copy_from_slice(dxp);
        }
        if batch_stats {
            for (o, &xv) in dxp.iter_mut().zip(&xs[plane * hw..][..hw]) {
                *o = a * *o + b * (xv - mu) + k;
            }
        } else {
            dxp.iter_mut().for_each(|o| *o = a * *o);
        }
    };
    if want_residual {
        dx.par_chunks_mut(hw).zip(dres.par_chunks_mut(hw)).enumerate().for_each(|(p, (dxp, dzp))| {
            per_plane(p, dxp, Some(dzp));
        });
    } else {
        dx.par_chunks_mut(hw).enumerate().for_each(|(p, dxp)| per_plane(p, dxp, None));
    }
    let dgamma: Vec<T> = (0..c).map(|ch| T::from_f64(sums[ch].1 / (vs[ch].to_f64() + eps).sqrt())).collect();
    let dbeta: Vec<T> = sums.iter().map(|s| T::from_f64(s.0)).collect();
    Ok(BatchNormGrads {
        dx: Tensor::from_cpu(x.shape().clone(), dx),
        dgamma: Tensor::from_cpu([c], dgamma),
        dbeta: Tensor::from_cpu([c], dbeta),
        dresidual: want_residual.then(|| Tensor::from_cpu(x.shape().clone(), dres)),
    })
}

/// `running ← (1 − momentum)·running + momentum·batch`, with the unbiased batch variance.
/// `count` is the number of values per channel the batch statistics came from (N·H·W).
pub fn update_running_stats(
    running_mean: &mut Tensor,
    running_var: &mut Tensor,
    batch_mean: &Tensor,
    batch_var: &Tensor,
    count: usize,
    momentum: f64,
) -> Result<()> {
    const OP: &str = "batch_norm running statistics";
    if count < 2 {
        return Err(Error::argument(OP, format!("expected more than 1 value per channel when training, got {count}")));
    }
    let c = batch_mean.numel();
    for (name, t) in [("running_mean", &*running_mean), ("running_var", &*running_var), ("batch_var", batch_var)] {
        expect_shape(OP, name, t, &[c])?;
    }
    let (dtype, device) = common_dtype(
        OP,
        &[
            ("running_mean", running_mean),
            ("running_var", running_var),
            ("batch_mean", batch_mean),
            ("batch_var", batch_var),
        ],
    )?;
    let unbias = count as f64 / (count - 1) as f64;
    if let Some(gpu) = gpu_f32(OP, dtype, device)? {
        let rm = running_mean.gpu_buffer_mut()?;
        let rv = running_var.gpu_buffer_mut()?;
        return gpu.launch(
            KernelCall::elementwise("bn_update_running_f32", c)
                .buf(rm)
                .buf(rv)
                .buf(batch_mean.gpu_buffer()?)
                .buf(batch_var.gpu_buffer()?)
                .i32(to_i32(OP, "channels", c)?)
                .f32(momentum as f32)
                .f32(unbias as f32),
        );
    }
    with_float_type!(dtype, OP, |T| {
        let (bm, bv) = (host::<T>(batch_mean)?.to_vec(), host::<T>(batch_var)?.to_vec());
        for (r, b) in running_mean.as_mut_slice::<T>()?.iter_mut().zip(&bm) {
            *r = T::from_f64((1.0 - momentum) * r.to_f64() + momentum * b.to_f64());
        }
        for (r, b) in running_var.as_mut_slice::<T>()?.iter_mut().zip(&bv) {
            *r = T::from_f64((1.0 - momentum) * r.to_f64() + momentum * b.to_f64() * unbias);
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forward_train_by_hand() {
        // One channel holding 1, 2, 3, 6: μ = 3, σ² = (4 + 1 + 0 + 9)/4 = 3.5.
        let x = Tensor::from_vec([2, 1, 1, 2], vec![1.0f64, 2.0, 3.0, 6.0]).unwrap();
        let gamma = Tensor::from_vec([1], vec![2.0f64]).unwrap();
        let beta = Tensor::from_vec([1], vec![0.5f64]).unwrap();
        let out = forward_train(&x, &gamma, &beta, 1e-5).unwrap();
        assert_eq!(out.mean.to_vec::<f64>().unwrap(), vec![3.0]);
        assert_eq!(out.var.to_vec::<f64>().unwrap(), vec![3.5]);
        let s = (3.5f64 + 1e-5).sqrt();
        let want: Vec<f64> = [1.0, 2.0, 3.0, 6.0].iter().map(|v| 2.0 * (v - 3.0) / s + 0.5).collect();
        for (a, b) in out.y.to_vec::<f64>().unwrap().iter().zip(&want) {
            assert!((a - b).abs() < 1e-12);
        }
        // Running stats from (0, 1): mean 0.9·0 + 0.1·3, var 0.9·1 + 0.1·3.5·4/3.
        let mut rm = Tensor::zeros([1], crate::DType::F64);
        let mut rv = Tensor::full([1], 1.0, crate::DType::F64);
        update_running_stats(&mut rm, &mut rv, &out.mean, &out.var, 4, 0.1).unwrap();
        assert!((rm.item().unwrap() - 0.3).abs() < 1e-15);
        assert!((rv.item().unwrap() - (0.9 + 0.1 * 3.5 * 4.0 / 3.0)).abs() < 1e-15);
    }

    #[test]
    fn variance_survives_a_large_mean() {
        // E[x²] − μ² in f32 would lose every digit here; the two-pass variance keeps them.
        let x = Tensor::from_vec([4, 1, 1, 1], vec![1e4f32 + 1.0, 1e4 - 1.0, 1e4 + 1.0, 1e4 - 1.0]).unwrap();
        let one = Tensor::full([1], 1.0, crate::DType::F32);
        let zero = Tensor::zeros([1], crate::DType::F32);
        let out = forward_train(&x, &one, &zero, 1e-5).unwrap();
        assert_eq!(out.var.to_vec::<f32>().unwrap(), vec![1.0]);
    }

    #[test]
    fn one_value_per_channel_cannot_update_running_stats() {
        let mut rm = Tensor::zeros([2], crate::DType::F32);
        let mut rv = Tensor::zeros([2], crate::DType::F32);
        let b = Tensor::zeros([2], crate::DType::F32);
        let e = update_running_stats(&mut rm, &mut rv, &b, &b, 1, 0.1).unwrap_err();
        assert!(e.to_string().contains("more than 1 value per channel"), "{e}");
    }
}
