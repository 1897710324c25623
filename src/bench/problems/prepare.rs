//! Setting up one run of a problem: its inputs made on the device, and a closure that runs the
//! op once with the kernels the variant chooses. [`Problem::prepare`] dispatches on the kind
//! of problem to one small function each, so that what a row of the bench times can be read
//! for one op without the other fifteen around it. Apart from the counting in `problems`
//! because this is the part that touches devices and ops.

use rayon::prelude::*;

use super::inference::prepare_inference;
use super::train_step::prepare_train_step;
use super::{Pass, Problem, Variant};
use crate::device::Device;
use crate::error::Result;
use crate::ops::batchnorm;
use crate::ops::batchnorm_fused::{self, Epilogue};
use crate::ops::conv2d::{self, Conv2dParams, ConvGeometry};
use crate::ops::gemm::{GemmKernel, matmul};
use crate::ops::lrn::LrnParams;
use crate::ops::pool::Pool2dParams;
use crate::ops::sgd::SgdParams;
use crate::ops::{ExecOptions, concat, dropout, elementwise, linear, lrn, pool};
use crate::tensor::{DType, Shape, Tensor};

/// One run of a problem, called again for each timed run.
type Run = Box<dyn FnMut() -> Result<()>>;

/// Where a problem's inputs go and which kernels it runs.
struct Setup {
    device: Device,
    variant: Variant,
    exec: ExecOptions,
}

impl Setup {
    /// An input of `shape`, filled with the [`pattern`] of `seed`.
    fn tensor(&self, shape: &Shape, seed: u64) -> Result<Tensor> {
        pattern(shape.clone(), seed, self.device)
    }

    /// A flat input of `numel` values.
    fn flat(&self, numel: usize, seed: u64) -> Result<Tensor> {
        pattern(Shape::new([numel]), seed, self.device)
    }
}

impl Problem {
    /// Sets up the problem's inputs on `device` and returns one run of it, with the kernels
    /// `variant` chooses on top of the run's options `base`.
    pub fn prepare(
        &self,
        device: Device,
        variant: Variant,
        base: &ExecOptions,
    ) -> Result<Box<dyn FnMut() -> Result<()>>> {
        let s = Setup { device, variant, exec: variant.options(base) };
        match self.clone() {
            Problem::Conv { x, w, params, bias, relu, pass } => prepare_conv(&s, x, w, params, bias, relu, pass),
            Problem::Linear { n, inputs, outputs, bias, relu, pass } => {
                prepare_linear(&s, n, inputs, outputs, bias, relu, pass)
            }
            Problem::Matmul { m, n, k } => prepare_matmul(&s, m, n, k),
            Problem::BatchNorm { x, residual, relu, pass } => prepare_batch_norm(&s, x, residual, relu, pass),
            Problem::MaxPool { x, p, pass } => prepare_max_pool(&s, x, p, pass),
            Problem::AvgPool { x, p, pass } => prepare_avg_pool(&s, x, p, pass),
            Problem::GlobalAvgPool { x, pass } => prepare_global_avg_pool(&s, x, pass),
            Problem::Lrn { x, p, pass } => prepare_lrn(&s, x, p, pass),
            Problem::Dropout { x, p, pass } => prepare_dropout(&s, x, p, pass),
            Problem::Concat { n, h, w, channels, pass } => prepare_concat(&s, n, h, w, channels, pass),
            Problem::Relu { numel, pass } => prepare_relu(&s, numel, pass),
            Problem::Add { numel } => prepare_add(&s, numel),
            Problem::AddAssign { numel } => prepare_add_assign(&s, numel),
            Problem::Copy { numel } => prepare_copy(&s, numel),
            Problem::Sgd { numel } => prepare_sgd(&s, numel),
            Problem::TrainStep(step) => prepare_train_step(&step, device, variant == Variant::CudaGraph, s.exec),
            Problem::Inference(inf) => prepare_inference(&inf, device, s.exec),
        }
    }
}

fn prepare_conv(
    s: &Setup,
    x: Shape,
    w: Shape,
    params: Conv2dParams,
    bias: bool,
    relu: bool,
    pass: Pass,
) -> Result<Run> {
    let exec = s.exec;
    let geometry = ConvGeometry::new(&x, &w, params)?;
    let (xt, wt) = (s.tensor(&x, 1)?, s.tensor(&w, 2)?);
    let b = if bias { Some(s.tensor(&Shape::new([w.dims()[0]]), 3)?) } else { None };
    Ok(match pass {
        Pass::Forward => Box::new(move || {
            if relu {
                conv2d::forward_relu(&xt, &wt, b.as_ref(), params, &exec)?;
            } else {
                conv2d::forward(&xt, &wt, b.as_ref(), params, &exec)?;
            }
            Ok(())
        }),
        Pass::BackwardData => {
            let dy = s.tensor(&geometry.out_shape(), 4)?;
            Box::new(move || conv2d::backward_data(&dy, &wt, &x, params, &exec).map(drop))
        }
        _ => {
            let dy = s.tensor(&geometry.out_shape(), 4)?;
            Box::new(move || conv2d::backward_filter(&dy, &xt, &w, params, &exec).map(drop))
        }
    })
}

/// A linear layer's pass, or with a [`Variant::Gemm`] the bare product it runs.
fn prepare_linear(
    s: &Setup,
    n: usize,
    inputs: usize,
    outputs: usize,
    bias: bool,
    relu: bool,
    pass: Pass,
) -> Result<Run> {
    let (x, w) = (s.tensor(&Shape::new([n, inputs]), 1)?, s.tensor(&Shape::new([outputs, inputs]), 2)?);
    let dy = s.tensor(&Shape::new([n, outputs]), 4)?;
    let b = if bias { Some(s.tensor(&Shape::new([outputs]), 3)?) } else { None };
    let (exec, p) = (s.exec, s.exec.precision);
    Ok(match (s.variant, pass) {
        (Variant::Gemm(kernel), Pass::Forward) => Box::new(move || matmul(&x, false, &w, true, kernel, p).map(drop)),
        (Variant::Gemm(kernel), Pass::BackwardData) => {
            Box::new(move || matmul(&dy, false, &w, false, kernel, p).map(drop))
        }
        (Variant::Gemm(kernel), _) => Box::new(move || matmul(&dy, true, &x, false, kernel, p).map(drop)),
        (_, Pass::Forward) if relu => Box::new(move || linear::forward_relu(&x, &w, b.as_ref(), &exec).map(drop)),
        (_, Pass::Forward) => Box::new(move || linear::forward(&x, &w, b.as_ref(), &exec).map(drop)),
        (_, Pass::BackwardData) => Box::new(move || linear::backward_data(&dy, &w, p).map(drop)),
        _ => Box::new(move || linear::backward_weight(&dy, &x, p).map(drop)),
    })
}

fn prepare_matmul(s: &Setup, m: usize, n: usize, k: usize) -> Result<Run> {
    let (a, b) = (s.tensor(&Shape::new([m, k]), 1)?, s.tensor(&Shape::new([k, n]), 2)?);
    let kernel = match s.variant {
        Variant::Gemm(kernel) => kernel,
        _ => GemmKernel::default(),
    };
    let p = s.exec.precision;
    Ok(Box::new(move || matmul(&a, false, &b, false, kernel, p).map(drop)))
}

/// Training-mode batch norm with its residual addition and ReLU: fused kernels, or with
/// [`Variant::Unfused`] (`exec.fuse` off) the separate ops. The backward pass runs on the
/// statistics of one forward pass made here.
fn prepare_batch_norm(s: &Setup, x: Shape, residual: bool, relu: bool, pass: Pass) -> Result<Run> {
    let c = x.dims()[1];
    let xt = s.tensor(&x, 1)?;
    let gamma = Tensor::full([c], 1.0, DType::F32).to_device(s.device)?;
    let beta = Tensor::zeros([c], DType::F32).to_device(s.device)?;
    let r = if residual { Some(s.tensor(&x, 5)?) } else { None };
    let unfused = !s.exec.fuse;
    let eps = 1e-5;
    Ok(match pass {
        Pass::Forward if unfused => Box::new(move || {
            let out = batchnorm::forward_train(&xt, &gamma, &beta, eps)?;
            let y = match &r {
                Some(r) => elementwise::add(&out.y, r)?,
                None => out.y,
            };
            if relu {
                elementwise::relu_forward(&y)?;
            }
            Ok(())
        }),
        Pass::Forward => Box::new(move || {
            let epilogue = Epilogue { residual: r.as_ref(), relu };
            batchnorm_fused::forward_train_fused(&xt, &gamma, &beta, epilogue, eps).map(drop)
        }),
        _ => {
            let epilogue = Epilogue { residual: r.as_ref(), relu };
            let out = batchnorm_fused::forward_train_fused(&xt, &gamma, &beta, epilogue, eps)?;
            let dy = s.tensor(&x, 4)?;
            let y = relu.then_some(out.y);
            let (mean, var) = (out.mean, out.var);
            if unfused {
                Box::new(move || {
                    let g = match &y {
                        Some(y) => elementwise::relu_backward(&dy, y)?,
                        None => dy.clone(),
                    };
                    batchnorm::backward_train(&g, &xt, &gamma, &mean, &var, eps).map(drop)
                })
            } else {
                Box::new(move || {
                    batchnorm_fused::backward_fused(&dy, &xt, y.as_ref(), &gamma, &mean, &var, eps, true, residual)
                        .map(drop)
                })
            }
        }
    })
}

fn prepare_max_pool(s: &Setup, x: Shape, p: Pool2dParams, pass: Pass) -> Result<Run> {
    let xt = s.tensor(&x, 1)?;
    Ok(if pass == Pass::Forward {
        Box::new(move || pool::max_pool2d_forward(&xt, p).map(drop))
    } else {
        let dy = s.tensor(&pool::max_pool2d_forward(&xt, p)?.shape().clone(), 4)?;
        Box::new(move || pool::max_pool2d_backward(&dy, &xt, p).map(drop))
    })
}

fn prepare_avg_pool(s: &Setup, x: Shape, p: Pool2dParams, pass: Pass) -> Result<Run> {
    let xt = s.tensor(&x, 1)?;
    Ok(if pass == Pass::Forward {
        Box::new(move || pool::avg_pool2d_forward(&xt, p).map(drop))
    } else {
        let dy = s.tensor(&pool::avg_pool2d_forward(&xt, p)?.shape().clone(), 4)?;
        Box::new(move || pool::avg_pool2d_backward(&dy, &x, p).map(drop))
    })
}

fn prepare_global_avg_pool(s: &Setup, x: Shape, pass: Pass) -> Result<Run> {
    Ok(if pass == Pass::Forward {
        let xt = s.tensor(&x, 1)?;
        Box::new(move || pool::global_avg_pool_forward(&xt).map(drop))
    } else {
        let dy = s.tensor(&Shape::new([x.dims()[0], x.dims()[1], 1, 1]), 4)?;
        Box::new(move || pool::global_avg_pool_backward(&dy, &x).map(drop))
    })
}

fn prepare_lrn(s: &Setup, x: Shape, p: LrnParams, pass: Pass) -> Result<Run> {
    let xt = s.tensor(&x, 1)?;
    Ok(if pass == Pass::Forward {
        Box::new(move || lrn::forward(&xt, p).map(drop))
    } else {
        let y = lrn::forward(&xt, p)?;
        let dy = s.tensor(&x, 4)?;
        Box::new(move || lrn::backward(&dy, &xt, &y, p).map(drop))
    })
}

/// Dropout forward draws a new mask each run (a new seed); backward regenerates one.
fn prepare_dropout(s: &Setup, x: Shape, p: f64, pass: Pass) -> Result<Run> {
    let xt = s.tensor(&x, 1)?;
    Ok(if pass == Pass::Forward {
        let mut seed = 0u64;
        Box::new(move || {
            seed += 1;
            dropout::forward(&xt, p, seed).map(drop)
        })
    } else {
        let dy = s.tensor(&x, 4)?;
        Box::new(move || dropout::backward(&dy, p, 7).map(drop))
    })
}

fn prepare_concat(s: &Setup, n: usize, h: usize, w: usize, channels: Vec<usize>, pass: Pass) -> Result<Run> {
    Ok(if pass == Pass::Forward {
        let pieces = (channels.iter().enumerate())
            .map(|(i, &c)| s.tensor(&Shape::new([n, c, h, w]), i as u64))
            .collect::<Result<Vec<_>>>()?;
        Box::new(move || {
            let refs: Vec<&Tensor> = pieces.iter().collect();
            concat::forward(&refs).map(drop)
        })
    } else {
        let dy = s.tensor(&Shape::new([n, channels.iter().sum(), h, w]), 4)?;
        Box::new(move || concat::backward(&dy, &channels).map(drop))
    })
}

fn prepare_relu(s: &Setup, numel: usize, pass: Pass) -> Result<Run> {
    let x = s.flat(numel, 1)?;
    Ok(if pass == Pass::Forward {
        Box::new(move || elementwise::relu_forward(&x).map(drop))
    } else {
        let dy = s.flat(numel, 4)?;
        Box::new(move || elementwise::relu_backward(&dy, &x).map(drop))
    })
}

fn prepare_add(s: &Setup, numel: usize) -> Result<Run> {
    let (a, b) = (s.flat(numel, 1)?, s.flat(numel, 2)?);
    Ok(Box::new(move || elementwise::add(&a, &b).map(drop)))
}

fn prepare_add_assign(s: &Setup, numel: usize) -> Result<Run> {
    let (mut a, b) = (s.flat(numel, 1)?, s.flat(numel, 2)?);
    Ok(Box::new(move || elementwise::add_assign(&mut a, &b)))
}

/// The copy ceiling: on the CPU a parallel copy between host buffers, on a GPU a
/// device-to-device copy of the storage.
fn prepare_copy(s: &Setup, numel: usize) -> Result<Run> {
    let a = s.flat(numel, 1)?;
    Ok(if s.device.is_cpu() {
        // Into memory already touched: the host's allocator returns large blocks to
        // the system and every new one pays its page faults, which a ceiling
        // should not include.
        let mut b = Tensor::zeros([numel], DType::F32);
        Box::new(move || {
            let (src, dst) = (a.as_slice::<f32>()?, b.as_mut_slice::<f32>()?);
            dst.par_chunks_mut(1 << 16).zip(src.par_chunks(1 << 16)).for_each(|(to, from)| to.copy_from_slice(from));
            Ok(())
        })
    } else {
        Box::new(move || a.storage().try_clone().map(drop))
    })
}

fn prepare_sgd(s: &Setup, numel: usize) -> Result<Run> {
    let (mut p, g) = (s.flat(numel, 1)?, s.flat(numel, 2)?);
    let mut v = Tensor::zeros_on([numel], DType::F32, s.device)?;
    let h = SgdParams { lr: 1e-6, momentum: 0.9, weight_decay: 5e-4 };
    Ok(Box::new(move || crate::ops::sgd::step(&mut p, &g, &mut v, h)))
}

/// Inputs whose values do not matter for timing but must not be all alike (ReLU's and max
/// pooling's branches): a hash of the index, spread over [-1, 1). Made in parallel on the
/// host, which is far quicker than normal samples for the hundreds of megabytes a bench needs.
pub fn pattern(shape: Shape, seed: u64, device: Device) -> Result<Tensor> {
    let n = shape.numel();
    let data: Vec<f32> = (0..n)
        .into_par_iter()
        .map(|i| {
            let h = (i as u64 ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)).wrapping_mul(0xD6E8_FEB8_6659_FD93);
            ((h >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect();
    Tensor::from_vec(shape, data)?.to_device(device)
}
