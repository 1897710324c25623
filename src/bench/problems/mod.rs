//! The problems `scratchnet bench` times: one op, one direction, one shape.
//!
//! Each problem knows how to describe itself (a machine-readable spec that
//! `scripts/torch_baseline.py` reads to time the same thing in PyTorch), how much work it is
//! (floating-point operations and the fewest bytes it must move through memory, for the
//! roofline), which kernel variants can run it, and how to set up one run of it on a device.

use rayon::prelude::*;
use serde_json::{Value, json};

use crate::autograd::{Graph, Var};
use crate::device::Device;
use crate::error::Result;
use crate::models;
use crate::nn::Sgd;
use crate::ops::batchnorm;
use crate::ops::batchnorm_fused::{self, Epilogue};
use crate::ops::conv2d::{self, Conv2dParams, ConvAlgo, ConvGeometry};
use crate::ops::gemm::{GemmKernel, matmul};
use crate::ops::lrn::LrnParams;
use crate::ops::pool::Pool2dParams;
use crate::ops::sgd::SgdParams;
use crate::ops::{ExecOptions, concat, dropout, elementwise, linear, lrn, pool};
use crate::tensor::{DType, Shape, Tensor};

/// Which direction of an op is timed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
    Forward,
    /// The gradient of the input (for ops with one input and no parameters).
    Backward,
    /// A convolution's or a linear layer's input gradient.
    BackwardData,
    /// A convolution's or a linear layer's weight gradient.
    BackwardFilter,
}

impl Pass {
    pub fn name(self) -> &'static str {
        match self {
            Pass::Forward => "forward",
            Pass::Backward => "backward",
            Pass::BackwardData => "backward_data",
            Pass::BackwardFilter => "backward_filter",
        }
    }

    fn short(self) -> &'static str {
        match self {
            Pass::Forward => "fwd",
            Pass::Backward => "bwd",
            Pass::BackwardData => "dgrad",
            Pass::BackwardFilter => "wgrad",
        }
    }
}

/// A model's training step, as a problem: forward, loss, backward and the SGD update.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainStep {
    pub model: String,
    pub batch: usize,
    pub input: [usize; 3],
    pub num_classes: usize,
    /// DenseNet's memory-efficient mode (torchvision's `memory_efficient=True`).
    pub memory_efficient: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Problem {
    Conv {
        x: Shape,
        w: Shape,
        params: Conv2dParams,
        bias: bool,
        relu: bool,
        pass: Pass,
    },
    /// `y = x·Wᵀ + b` with `x: [n, inputs]`, `W: [outputs, inputs]`.
    Linear {
        n: usize,
        inputs: usize,
        outputs: usize,
        bias: bool,
        relu: bool,
        pass: Pass,
    },
    /// `C[m×n] = op(A)·op(B)` with inner dimension `k`; A is m×k and B is k×n before transposing.
    Matmul {
        m: usize,
        n: usize,
        k: usize,
    },
    /// Training-mode batch norm, with the residual addition and ReLU a network fuses into it.
    BatchNorm {
        x: Shape,
        residual: bool,
        relu: bool,
        pass: Pass,
    },
    MaxPool {
        x: Shape,
        p: Pool2dParams,
        pass: Pass,
    },
    AvgPool {
        x: Shape,
        p: Pool2dParams,
        pass: Pass,
    },
    GlobalAvgPool {
        x: Shape,
        pass: Pass,
    },
    Lrn {
        x: Shape,
        p: LrnParams,
        pass: Pass,
    },
    Dropout {
        x: Shape,
        p: f64,
        pass: Pass,
    },
    /// Concatenation along channels of `[n, c_i, h, w]` pieces.
    Concat {
        n: usize,
        h: usize,
        w: usize,
        channels: Vec<usize>,
        pass: Pass,
    },
    Relu {
        numel: usize,
        pass: Pass,
    },
    Add {
        numel: usize,
    },
    AddAssign {
        numel: usize,
    },
    /// A device-to-device copy: the bandwidth ceiling every memory-bound op is held against.
    Copy {
        numel: usize,
    },
    /// One SGD update with momentum and weight decay.
    Sgd {
        numel: usize,
    },
    TrainStep(TrainStep),
}

/// A kernel choice for one problem.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// What the engine runs by default (the autotuner's pick, fused kernels).
    Default,
    Conv(ConvAlgo),
    Gemm(GemmKernel),
    /// Batch norm, residual addition and ReLU as separate ops.
    Unfused,
    /// A training step captured once as a CUDA graph and replayed.
    CudaGraph,
    /// A training step whose grouped convolutions run one group per side stream (AlexNet's
    /// two towers, `--towers`).
    Towers,
}

impl Variant {
    /// The execution options this variant runs with, starting from the run's `base`.
    pub fn options(self, base: &ExecOptions) -> ExecOptions {
        match self {
            Variant::Conv(algo) => ExecOptions { conv_algo: algo, ..*base },
            Variant::Unfused => ExecOptions { fuse: false, ..*base },
            Variant::Towers => ExecOptions { towers: true, ..*base },
            _ => *base,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Variant::Default => "default",
            Variant::Conv(ConvAlgo::Direct) => "direct",
            Variant::Conv(ConvAlgo::ImplicitGemm) => "implicit-gemm",
            Variant::Conv(ConvAlgo::ImplicitGemm128) => "implicit-gemm-128",
            Variant::Conv(ConvAlgo::Auto) => "auto",
            Variant::Gemm(GemmKernel::Naive) => "gemm-naive",
            Variant::Gemm(GemmKernel::Tiled) => "gemm-tiled16",
            Variant::Gemm(GemmKernel::Blocked64) => "gemm-64x64",
            Variant::Gemm(GemmKernel::Blocked128) => "gemm-128x128",
            Variant::Gemm(GemmKernel::Vec128) => "gemm-128x128-vec4",
            Variant::Gemm(GemmKernel::Auto) => "gemm-auto",
            Variant::Unfused => "unfused",
            Variant::CudaGraph => "cuda-graph",
            Variant::Towers => "towers",
        }
    }
}

const F32: f64 = 4.0;

fn dims_json(s: &Shape) -> Value {
    json!(s.dims())
}

fn shape_text(s: &Shape) -> String {
    s.dims().iter().map(|d| d.to_string()).collect::<Vec<_>>().join("x")
}

impl Problem {
    /// What the problem is, as `scripts/torch_baseline.py` reads it.
    pub fn spec(&self) -> Value {
        match self {
            Problem::Conv { x, w, params, bias, relu, pass } => json!({
                "op": "conv2d", "pass": pass.name(), "x": dims_json(x), "w": dims_json(w),
                "stride": [params.stride.0, params.stride.1], "padding": [params.padding.0, params.padding.1],
                "dilation": [params.dilation.0, params.dilation.1], "groups": params.groups,
                "bias": bias, "relu": relu,
            }),
            Problem::Linear { n, inputs, outputs, bias, relu, pass } => json!({
                "op": "linear", "pass": pass.name(), "n": n, "in": inputs, "out": outputs, "bias": bias, "relu": relu,
            }),
            Problem::Matmul { m, n, k } => json!({"op": "matmul", "m": m, "n": n, "k": k}),
            Problem::BatchNorm { x, residual, relu, pass } => json!({
                "op": "batch_norm", "pass": pass.name(), "x": dims_json(x), "residual": residual, "relu": relu,
            }),
            Problem::MaxPool { x, p, pass } | Problem::AvgPool { x, p, pass } => json!({
                "op": if matches!(self, Problem::MaxPool { .. }) { "max_pool2d" } else { "avg_pool2d" },
                "pass": pass.name(), "x": dims_json(x),
                "kernel": [p.kernel.0, p.kernel.1], "stride": [p.stride.0, p.stride.1], "padding": [p.padding.0, p.padding.1],
            }),
            Problem::GlobalAvgPool { x, pass } => {
                json!({"op": "global_avg_pool", "pass": pass.name(), "x": dims_json(x)})
            }
            Problem::Lrn { x, p, pass } => json!({
                "op": "lrn", "pass": pass.name(), "x": dims_json(x), "size": p.size, "alpha": p.alpha, "beta": p.beta, "k": p.k,
            }),
            Problem::Dropout { x, p, pass } => json!({"op": "dropout", "pass": pass.name(), "x": dims_json(x), "p": p}),
            Problem::Concat { n, h, w, channels, pass } => json!({
                "op": "concat", "pass": pass.name(), "n": n, "h": h, "w": w, "channels": channels,
            }),
            Problem::Relu { numel, pass } => json!({"op": "relu", "pass": pass.name(), "numel": numel}),
            Problem::Add { numel } => json!({"op": "add", "numel": numel}),
            Problem::AddAssign { numel } => json!({"op": "add_assign", "numel": numel}),
            Problem::Copy { numel } => json!({"op": "copy", "numel": numel}),
            Problem::Sgd { numel } => json!({"op": "sgd", "numel": numel, "momentum": 0.9, "weight_decay": 5e-4}),
            Problem::TrainStep(t) => json!({
                "op": "train_step", "model": t.model, "batch": t.batch, "input": t.input, "num_classes": t.num_classes,
                "memory_efficient": t.memory_efficient,
            }),
        }
    }

    /// The spec as one line: rows of two runs (scratchnet's, PyTorch's) match on it.
    pub fn key(&self) -> String {
        self.spec().to_string()
    }

    /// A short description for tables.
    pub fn label(&self) -> String {
        match self {
            Problem::Conv { x, w, params, relu, pass, .. } => {
                let (kh, kw) = (w.dims()[2], w.dims()[3]);
                let mut s =
                    format!("conv {} {} {}→{} {kh}x{kw}", pass.short(), shape_text(x), x.dims()[1], w.dims()[0]);
                if params.stride != (1, 1) {
                    s += &format!(" s{}", params.stride.0);
                }
                if params.groups != 1 {
                    s += &format!(" g{}", params.groups);
                }
                if *relu && *pass == Pass::Forward {
                    s += " +relu";
                }
                s
            }
            Problem::Linear { n, inputs, outputs, relu, pass, .. } => {
                format!("linear {} {n}x{inputs}→{outputs}{}", pass.short(), if *relu { " +relu" } else { "" })
            }
            Problem::Matmul { m, n, k } => format!("sgemm {m}x{n}x{k}"),
            Problem::BatchNorm { x, residual, relu, pass } => {
                let what = match (residual, relu) {
                    (true, _) => "bn+add+relu",
                    (false, true) => "bn+relu",
                    (false, false) => "bn",
                };
                format!("{what} {} {}", pass.short(), shape_text(x))
            }
            Problem::MaxPool { x, p, pass } => format!("maxpool{} {} {}", p.kernel.0, pass.short(), shape_text(x)),
            Problem::AvgPool { x, p, pass } => format!("avgpool{} {} {}", p.kernel.0, pass.short(), shape_text(x)),
            Problem::GlobalAvgPool { x, pass } => format!("gap {} {}", pass.short(), shape_text(x)),
            Problem::Lrn { x, pass, .. } => format!("lrn {} {}", pass.short(), shape_text(x)),
            Problem::Dropout { x, pass, .. } => format!("dropout {} {}", pass.short(), shape_text(x)),
            Problem::Concat { n, h, w, channels, pass } => {
                format!(
                    "concat {} {}x{}x{h}x{w} ({} pieces)",
                    pass.short(),
                    n,
                    channels.iter().sum::<usize>(),
                    channels.len()
                )
            }
            Problem::Relu { numel, pass } => format!("relu {} {}", pass.short(), mib(*numel)),
            Problem::Add { numel } => format!("add {}", mib(*numel)),
            Problem::AddAssign { numel } => format!("add_assign {}", mib(*numel)),
            Problem::Copy { numel } => format!("copy {}", mib(*numel)),
            Problem::Sgd { numel } => format!("sgd {}", mib(*numel)),
            Problem::TrainStep(t) => {
                format!(
                    "train step {} b{}{}",
                    t.model,
                    t.batch,
                    if t.memory_efficient { " memory-efficient" } else { "" }
                )
            }
        }
    }

    /// Which group of the comparison table the row counts in.
    pub fn category(&self) -> &'static str {
        match self {
            Problem::Conv { .. } => "conv",
            Problem::Linear { .. } | Problem::Matmul { .. } => "gemm",
            Problem::TrainStep(_) => "train_step",
            _ => "memory",
        }
    }

    /// Floating-point operations. Convolutions and products count 2 per multiply-add; the
    /// memory-bound ops carry nominal counts (a few per element) only so that they can be
    /// placed on the roofline plot.
    pub fn flops(&self) -> f64 {
        match self {
            Problem::Conv { x, w, params, .. } => {
                ConvGeometry::new(x, w, *params).map(|g| 2.0 * g.macs() as f64).unwrap_or(0.0)
            }
            Problem::Linear { n, inputs, outputs, .. } => 2.0 * (n * inputs * outputs) as f64,
            Problem::Matmul { m, n, k } => 2.0 * (m * n * k) as f64,
            Problem::BatchNorm { x, residual, relu, pass } => {
                let per = match pass {
                    Pass::Forward => 5 + usize::from(*residual) + usize::from(*relu),
                    _ => 8 + usize::from(*relu),
                };
                (x.numel() * per) as f64
            }
            Problem::MaxPool { x, p, pass } | Problem::AvgPool { x, p, pass } => {
                let out = pool_out(x, p);
                let _ = pass;
                (out * p.kernel.0 * p.kernel.1) as f64
            }
            Problem::GlobalAvgPool { x, .. } => x.numel() as f64,
            Problem::Lrn { x, p, pass } => {
                let per = if *pass == Pass::Forward { p.size + 5 } else { 2 * p.size + 8 };
                (x.numel() * per) as f64
            }
            Problem::Dropout { x, .. } => x.numel() as f64,
            Problem::Concat { .. } | Problem::Copy { .. } => 0.0,
            Problem::Relu { numel, .. } | Problem::Add { numel } | Problem::AddAssign { numel } => *numel as f64,
            Problem::Sgd { numel } => 5.0 * *numel as f64,
            Problem::TrainStep(_) => 0.0,
        }
    }

    /// The fewest bytes the problem must move through device memory: each input read once,
    /// each output written once, except where the algorithm needs a second pass over a tensor
    /// too large to keep on chip (batch norm's statistics before its normalisation).
    pub fn bytes(&self) -> f64 {
        let e = |n: usize| n as f64 * F32;
        match self {
            Problem::Conv { x, w, params, pass, .. } => {
                let y = ConvGeometry::new(x, w, *params).map(|g| g.out_shape().numel()).unwrap_or(0);
                match pass {
                    Pass::Forward | Pass::BackwardData => e(x.numel() + w.numel() + y),
                    _ => e(x.numel() + y + w.numel()),
                }
            }
            Problem::Linear { n, inputs, outputs, .. } => e(n * inputs + outputs * inputs + n * outputs),
            Problem::Matmul { m, n, k } => e(m * k + k * n + m * n),
            Problem::BatchNorm { x, residual, relu, pass } => {
                let (r, a) = (usize::from(*residual), usize::from(*relu));
                let passes = match pass {
                    // Statistics (read x), then normalise (read x and the residual, write y).
                    Pass::Forward => 3 + r,
                    // Reductions (read dy, x, and y for ReLU's mask), then the input gradient
                    // (read them again, write dx and the residual's gradient).
                    _ => 2 * (2 + a) + 1 + r,
                };
                e(x.numel() * passes)
            }
            Problem::MaxPool { x, p, pass } => match pass {
                Pass::Forward => e(x.numel() + pool_out(x, p)),
                // dy, x (to find each window's maximum again), dx.
                _ => e(pool_out(x, p) + 2 * x.numel()),
            },
            Problem::AvgPool { x, p, .. } => e(x.numel() + pool_out(x, p)),
            Problem::GlobalAvgPool { x, .. } => e(x.numel() + x.dims()[0] * x.dims()[1]),
            Problem::Lrn { x, pass, .. } => e(x.numel() * if *pass == Pass::Forward { 2 } else { 4 }),
            // The mask can be regenerated from the counter-based seed, so neither pass needs
            // to read or write it: x → y, dy → dx.
            Problem::Dropout { x, .. } => e(2 * x.numel()),
            Problem::Concat { n, h, w, channels, .. } => e(2 * n * h * w * channels.iter().sum::<usize>()),
            Problem::Relu { numel, pass } => e(numel * if *pass == Pass::Forward { 2 } else { 3 }),
            Problem::Add { numel } | Problem::AddAssign { numel } => e(3 * numel),
            Problem::Copy { numel } => e(2 * numel),
            // Read param, velocity, gradient; write param, velocity.
            Problem::Sgd { numel } => e(5 * numel),
            Problem::TrainStep(_) => 0.0,
        }
    }

    /// The variants to time: the engine's default always, the alternatives when asked.
    pub fn variants(&self, all: bool) -> Vec<Variant> {
        let mut v = vec![Variant::Default];
        if all {
            match self {
                Problem::Conv { .. } => {
                    v.extend([ConvAlgo::Direct, ConvAlgo::ImplicitGemm, ConvAlgo::ImplicitGemm128].map(Variant::Conv));
                }
                Problem::Linear { .. } | Problem::Matmul { .. } => {
                    let (m, n, k, ta, tb) = self.gemm_shape();
                    v.extend(GemmKernel::ALL.into_iter().filter(|g| g.fits(m, n, k, ta, tb)).map(Variant::Gemm));
                }
                Problem::BatchNorm { residual, relu, .. } if *residual || *relu => v.push(Variant::Unfused),
                Problem::TrainStep(step) => {
                    v.push(Variant::CudaGraph);
                    if step.model == "alexnet" {
                        v.push(Variant::Towers);
                    }
                }
                _ => {}
            }
        }
        v
    }

    /// The matrix product a GEMM problem runs, as `matmul` sees it: `(m, n, k, transpose_a,
    /// transpose_b)`; zeros for other problems.
    fn gemm_shape(&self) -> (usize, usize, usize, bool, bool) {
        match *self {
            Problem::Matmul { m, n, k } => (m, n, k, false, false),
            // The three products of `linear`: x·Wᵀ, dy·W and dyᵀ·x.
            Problem::Linear { n, inputs, outputs, pass: Pass::Forward, .. } => (n, outputs, inputs, false, true),
            Problem::Linear { n, inputs, outputs, pass: Pass::BackwardData, .. } => (n, inputs, outputs, false, false),
            Problem::Linear { n, inputs, outputs, .. } => (outputs, inputs, n, true, false),
            _ => (0, 0, 0, false, false),
        }
    }

    /// Sets up the problem's inputs on `device` and returns one run of it, with the kernels
    /// `variant` chooses on top of the run's options `base`.
    pub fn prepare(
        &self,
        device: Device,
        variant: Variant,
        base: &ExecOptions,
    ) -> Result<Box<dyn FnMut() -> Result<()>>> {
        let exec = variant.options(base);
        let t = |shape: &Shape, seed: u64| pattern(shape.clone(), seed, device);
        let flat = |numel: usize, seed: u64| pattern(Shape::new([numel]), seed, device);
        Ok(match self.clone() {
            Problem::Conv { x, w, params, bias, relu, pass } => {
                let geometry = ConvGeometry::new(&x, &w, params)?;
                let (xt, wt) = (t(&x, 1)?, t(&w, 2)?);
                let b = if bias { Some(t(&Shape::new([w.dims()[0]]), 3)?) } else { None };
                match pass {
                    Pass::Forward => Box::new(move || {
                        if relu {
                            conv2d::forward_relu(&xt, &wt, b.as_ref(), params, &exec)?;
                        } else {
                            conv2d::forward(&xt, &wt, b.as_ref(), params, &exec)?;
                        }
                        Ok(())
                    }),
                    Pass::BackwardData => {
                        let dy = t(&geometry.out_shape(), 4)?;
                        Box::new(move || conv2d::backward_data(&dy, &wt, &x, params, &exec).map(drop))
                    }
                    _ => {
                        let dy = t(&geometry.out_shape(), 4)?;
                        Box::new(move || conv2d::backward_filter(&dy, &xt, &w, params, &exec).map(drop))
                    }
                }
            }
            Problem::Linear { n, inputs, outputs, bias, relu, pass } => {
                let (x, w) = (t(&Shape::new([n, inputs]), 1)?, t(&Shape::new([outputs, inputs]), 2)?);
                let dy = t(&Shape::new([n, outputs]), 4)?;
                let b = if bias { Some(t(&Shape::new([outputs]), 3)?) } else { None };
                match (variant, pass) {
                    (Variant::Gemm(kernel), Pass::Forward) => {
                        Box::new(move || matmul(&x, false, &w, true, kernel).map(drop))
                    }
                    (Variant::Gemm(kernel), Pass::BackwardData) => {
                        Box::new(move || matmul(&dy, false, &w, false, kernel).map(drop))
                    }
                    (Variant::Gemm(kernel), _) => Box::new(move || matmul(&dy, true, &x, false, kernel).map(drop)),
                    (_, Pass::Forward) if relu => Box::new(move || linear::forward_relu(&x, &w, b.as_ref()).map(drop)),
                    (_, Pass::Forward) => Box::new(move || linear::forward(&x, &w, b.as_ref()).map(drop)),
                    (_, Pass::BackwardData) => Box::new(move || linear::backward_data(&dy, &w).map(drop)),
                    _ => Box::new(move || linear::backward_weight(&dy, &x).map(drop)),
                }
            }
            Problem::Matmul { m, n, k } => {
                let (a, b) = (t(&Shape::new([m, k]), 1)?, t(&Shape::new([k, n]), 2)?);
                let kernel = match variant {
                    Variant::Gemm(kernel) => kernel,
                    _ => GemmKernel::default(),
                };
                Box::new(move || matmul(&a, false, &b, false, kernel).map(drop))
            }
            Problem::BatchNorm { x, residual, relu, pass } => {
                let c = x.dims()[1];
                let xt = t(&x, 1)?;
                let gamma = Tensor::full([c], 1.0, DType::F32).to_device(device)?;
                let beta = Tensor::zeros([c], DType::F32).to_device(device)?;
                let r = if residual { Some(t(&x, 5)?) } else { None };
                let unfused = !exec.fuse;
                let eps = 1e-5;
                match pass {
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
                        let dy = t(&x, 4)?;
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
                                batchnorm_fused::backward_fused(
                                    &dy,
                                    &xt,
                                    y.as_ref(),
                                    &gamma,
                                    &mean,
                                    &var,
                                    eps,
                                    true,
                                    residual,
                                )
                                .map(drop)
                            })
                        }
                    }
                }
            }
            Problem::MaxPool { x, p, pass } => {
                let xt = t(&x, 1)?;
                if pass == Pass::Forward {
                    Box::new(move || pool::max_pool2d_forward(&xt, p).map(drop))
                } else {
                    let dy = t(&pool::max_pool2d_forward(&xt, p)?.shape().clone(), 4)?;
                    Box::new(move || pool::max_pool2d_backward(&dy, &xt, p).map(drop))
                }
            }
            Problem::AvgPool { x, p, pass } => {
                let xt = t(&x, 1)?;
                if pass == Pass::Forward {
                    Box::new(move || pool::avg_pool2d_forward(&xt, p).map(drop))
                } else {
                    let dy = t(&pool::avg_pool2d_forward(&xt, p)?.shape().clone(), 4)?;
                    Box::new(move || pool::avg_pool2d_backward(&dy, &x, p).map(drop))
                }
            }
            Problem::GlobalAvgPool { x, pass } => {
                if pass == Pass::Forward {
                    let xt = t(&x, 1)?;
                    Box::new(move || pool::global_avg_pool_forward(&xt).map(drop))
                } else {
                    let dy = t(&Shape::new([x.dims()[0], x.dims()[1], 1, 1]), 4)?;
                    Box::new(move || pool::global_avg_pool_backward(&dy, &x).map(drop))
                }
            }
            Problem::Lrn { x, p, pass } => {
                let xt = t(&x, 1)?;
                if pass == Pass::Forward {
                    Box::new(move || lrn::forward(&xt, p).map(drop))
                } else {
                    let y = lrn::forward(&xt, p)?;
                    let dy = t(&x, 4)?;
                    Box::new(move || lrn::backward(&dy, &xt, &y, p).map(drop))
                }
            }
            Problem::Dropout { x, p, pass } => {
                let xt = t(&x, 1)?;
                if pass == Pass::Forward {
                    let mut seed = 0u64;
                    Box::new(move || {
                        seed += 1;
                        dropout::forward(&xt, p, seed).map(drop)
                    })
                } else {
                    let dy = t(&x, 4)?;
                    Box::new(move || dropout::backward(&dy, p, 7).map(drop))
                }
            }
            Problem::Concat { n, h, w, channels, pass } => {
                if pass == Pass::Forward {
                    let pieces = (channels.iter().enumerate())
                        .map(|(i, &c)| t(&Shape::new([n, c, h, w]), i as u64))
                        .collect::<Result<Vec<_>>>()?;
                    Box::new(move || {
                        let refs: Vec<&Tensor> = pieces.iter().collect();
                        concat::forward(&refs).map(drop)
                    })
                } else {
                    let dy = t(&Shape::new([n, channels.iter().sum(), h, w]), 4)?;
                    Box::new(move || concat::backward(&dy, &channels).map(drop))
                }
            }
            Problem::Relu { numel, pass } => {
                let x = flat(numel, 1)?;
                if pass == Pass::Forward {
                    Box::new(move || elementwise::relu_forward(&x).map(drop))
                } else {
                    let dy = flat(numel, 4)?;
                    Box::new(move || elementwise::relu_backward(&dy, &x).map(drop))
                }
            }
            Problem::Add { numel } => {
                let (a, b) = (flat(numel, 1)?, flat(numel, 2)?);
                Box::new(move || elementwise::add(&a, &b).map(drop))
            }
            Problem::AddAssign { numel } => {
                let (mut a, b) = (flat(numel, 1)?, flat(numel, 2)?);
                Box::new(move || elementwise::add_assign(&mut a, &b))
            }
            Problem::Copy { numel } => {
                let a = flat(numel, 1)?;
                if device.is_cpu() {
                    // Into memory already touched: the host's allocator returns large blocks to
                    // the system and every new one pays its page faults, which a ceiling
                    // should not include.
                    let mut b = Tensor::zeros([numel], DType::F32);
                    Box::new(move || {
                        let (src, dst) = (a.as_slice::<f32>()?, b.as_mut_slice::<f32>()?);
                        dst.par_chunks_mut(1 << 16)
                            .zip(src.par_chunks(1 << 16))
                            .for_each(|(d, s)| d.copy_from_slice(s));
                        Ok(())
                    })
                } else {
                    Box::new(move || a.storage().try_clone().map(drop))
                }
            }
            Problem::Sgd { numel } => {
                let (mut p, g) = (flat(numel, 1)?, flat(numel, 2)?);
                let mut v = Tensor::zeros_on([numel], DType::F32, device)?;
                let h = SgdParams { lr: 1e-6, momentum: 0.9, weight_decay: 5e-4 };
                Box::new(move || crate::ops::sgd::step(&mut p, &g, &mut v, h))
            }
            Problem::TrainStep(step) => train_step(&step, device, variant == Variant::CudaGraph, exec)?,
        })
    }
}

fn pool_out(x: &Shape, p: &Pool2dParams) -> usize {
    let d = x.dims();
    let side = |len: usize, k: usize, s: usize, pad: usize| (len + 2 * pad).saturating_sub(k) / s.max(1) + 1;
    d[0] * d[1] * side(d[2], p.kernel.0, p.stride.0, p.padding.0) * side(d[3], p.kernel.1, p.stride.1, p.padding.1)
}

fn mib(numel: usize) -> String {
    format!("{:.0} MiB", numel as f64 * F32 / (1 << 20) as f64)
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

/// One training step of a model on a fixed batch: forward, cross-entropy, backward, SGD.
fn train_step(
    step: &TrainStep,
    device: Device,
    graph: bool,
    exec: ExecOptions,
) -> Result<Box<dyn FnMut() -> Result<()>>> {
    let mut model = models::build(&step.model, step.num_classes, 0)?;
    crate::train::set_memory_efficient(model.as_mut(), step.memory_efficient)?;
    let [c, h, w] = step.input;
    model.check_input(&[step.batch, c, h, w].into())?;
    model.to_device(device)?;
    let x = pattern(Shape::new([step.batch, c, h, w]), 1, device)?;
    let labels: Vec<i64> = (0..step.batch).map(|i| (i % step.num_classes) as i64).collect();
    let y = Tensor::from_vec([step.batch], labels)?.to_device(device)?;
    // A learning rate small enough that repeated steps on one batch stay finite.
    let mut opt = Sgd::new(1e-4, 0.9, 5e-4);
    if graph {
        crate::train::check_graph_capturable(device)?;
        opt.keep_lr_on(device)?;
        // Two ordinary steps first: the autotuner's timings and the allocator's cache.
        for _ in 0..2 {
            let mut g = Graph::new().with_options(exec);
            let logits = model.forward(&mut g, &Var::constant(x.clone()))?;
            let loss = g.cross_entropy(&logits, &y)?;
            g.backward(&loss)?.accumulate_into(model.params_mut())?;
            opt.step(model.params_mut())?;
        }
        model.prepare_capture(device)?;
        model.prepare_replay()?;
        let captured = crate::train::GraphStep::capture(model.as_mut(), &mut opt, x, y, exec)?;
        // Every replay reads and writes the optimizer's momentum and device learning rate:
        // the optimizer lives as long as the graph (the graph refuses to replay otherwise).
        return Ok(Box::new(move || {
            let _optimizer_state = &opt;
            model.prepare_replay()?;
            captured.replay()
        }));
    }
    Ok(Box::new(move || {
        let mut g = Graph::new().with_options(exec);
        let logits = model.forward(&mut g, &Var::constant(x.clone()))?;
        let loss = g.cross_entropy(&logits, &y)?;
        g.backward(&loss)?.accumulate_into(model.params_mut())?;
        opt.step(model.params_mut())
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_tell_problems_apart_and_match_equal_ones() {
        let a = Problem::Conv {
            x: Shape::new([2, 3, 8, 8]),
            w: Shape::new([4, 3, 3, 3]),
            params: Conv2dParams::default().padding(1),
            bias: false,
            relu: false,
            pass: Pass::Forward,
        };
        let mut b = a.clone();
        assert_eq!(a.key(), b.key());
        if let Problem::Conv { pass, .. } = &mut b {
            *pass = Pass::BackwardData;
        }
        assert_ne!(a.key(), b.key());
        assert!(a.key().contains("\"padding\":[1,1]"), "{}", a.key());
    }

    #[test]
    fn work_counts_follow_the_shapes() {
        // 2 images, 4 output channels of 8×8, 27 multiply-adds each.
        let conv = Problem::Conv {
            x: Shape::new([2, 3, 8, 8]),
            w: Shape::new([4, 3, 3, 3]),
            params: Conv2dParams::default().padding(1),
            bias: false,
            relu: true,
            pass: Pass::Forward,
        };
        assert_eq!(conv.flops(), 2.0 * (2 * 4 * 64 * 27) as f64);
        assert_eq!(conv.bytes(), 4.0 * (2 * 3 * 64 + 4 * 27 + 2 * 4 * 64) as f64);
        let bn = Problem::BatchNorm { x: Shape::new([2, 3, 4, 4]), residual: true, relu: true, pass: Pass::Forward };
        assert_eq!(bn.bytes(), 4.0 * (96 * 4) as f64);
        let pool = Problem::MaxPool { x: Shape::new([1, 2, 55, 55]), p: Pool2dParams::new(3, 2), pass: Pass::Forward };
        assert_eq!(pool.bytes(), 4.0 * (2 * 55 * 55 + 2 * 27 * 27) as f64);
        assert_eq!(Problem::Matmul { m: 2, n: 3, k: 4 }.flops(), 48.0);
    }
}
