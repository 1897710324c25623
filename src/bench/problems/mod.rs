//! The problems `scratchnet bench` times: one op, one direction, one shape.
//!
//! Each problem knows how to describe itself (a machine-readable spec that
//! `scripts/torch_baseline.py` reads to time the same thing in PyTorch), how much work it is
//! (floating-point operations and the fewest bytes it must move through memory, for the
//! roofline), which kernel variants can run it, and how to set up one run of it on a device.
//!
//! This file holds what a problem is and its counting; setting up a run is in `prepare`, one
//! function per kind of problem, and the problems that build a whole model in `train_step`
//! (a training step) and `inference` (an eval-mode forward pass).

use serde_json::{Value, json};

use crate::ops::conv2d::{Conv2dParams, ConvAlgo, ConvGeometry};
use crate::ops::gemm::GemmKernel;
use crate::ops::lrn::LrnParams;
use crate::ops::pool::Pool2dParams;
use crate::ops::{ExecOptions, Precision};
use crate::tensor::Shape;

mod inference;
mod prepare;
mod train_step;

pub use inference::Inference;
pub use prepare::pattern;
pub use train_step::TrainStep;

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
    Inference(Inference),
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
            Variant::Conv(ConvAlgo::TensorCore) => "tensor-core",
            Variant::Conv(ConvAlgo::TensorCore64) => "tensor-core-64",
            Variant::Conv(ConvAlgo::TensorCore128) => "tensor-core-128",
            Variant::Gemm(GemmKernel::Naive) => "gemm-naive",
            Variant::Gemm(GemmKernel::Tiled) => "gemm-tiled16",
            Variant::Gemm(GemmKernel::Blocked64) => "gemm-64x64",
            Variant::Gemm(GemmKernel::Blocked128) => "gemm-128x128",
            Variant::Gemm(GemmKernel::Vec128) => "gemm-128x128-vec4",
            Variant::Gemm(GemmKernel::Auto) => "gemm-auto",
            Variant::Gemm(GemmKernel::TensorCore64) => "gemm-tc64",
            Variant::Gemm(GemmKernel::TensorCore128) => "gemm-tc128",
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
            Problem::Inference(i) => json!({
                "op": "inference", "model": i.model, "batch": i.batch, "input": i.input, "num_classes": i.num_classes,
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
            Problem::Inference(i) => format!("inference {} b{} {}x{}", i.model, i.batch, i.input[1], i.input[2]),
        }
    }

    /// Which group of the comparison table the row counts in.
    pub fn category(&self) -> &'static str {
        match self {
            Problem::Conv { .. } => "conv",
            Problem::Linear { .. } | Problem::Matmul { .. } => "gemm",
            Problem::TrainStep(_) => "train_step",
            Problem::Inference(_) => "inference",
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
            Problem::Inference(i) => 2.0 * i.macs as f64,
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
            Problem::TrainStep(_) | Problem::Inference(_) => 0.0,
        }
    }

    /// The variants to time: the engine's default always, the alternatives when asked (in a
    /// low `precision`, the tensor-core tile configurations too; the FP32 kernels then run on
    /// rounded operands).
    pub fn variants(&self, all: bool, precision: Precision) -> Vec<Variant> {
        let mut v = vec![Variant::Default];
        let tensor_cores = precision != Precision::Fp32;
        if all {
            match self {
                Problem::Conv { .. } => {
                    v.extend([ConvAlgo::Direct, ConvAlgo::ImplicitGemm, ConvAlgo::ImplicitGemm128].map(Variant::Conv));
                    if tensor_cores {
                        v.extend([ConvAlgo::TensorCore64, ConvAlgo::TensorCore128].map(Variant::Conv));
                    }
                }
                Problem::Linear { .. } | Problem::Matmul { .. } => {
                    let (m, n, k, ta, tb) = self.gemm_shape();
                    v.extend(GemmKernel::ALL.into_iter().filter(|g| g.fits(m, n, k, ta, tb)).map(Variant::Gemm));
                    if tensor_cores {
                        v.extend([GemmKernel::TensorCore64, GemmKernel::TensorCore128].map(Variant::Gemm));
                    }
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
}

fn pool_out(x: &Shape, p: &Pool2dParams) -> usize {
    let d = x.dims();
    let side = |len: usize, k: usize, s: usize, pad: usize| (len + 2 * pad).saturating_sub(k) / s.max(1) + 1;
    d[0] * d[1] * side(d[2], p.kernel.0, p.stride.0, p.padding.0) * side(d[3], p.kernel.1, p.stride.1, p.padding.1)
}

fn mib(numel: usize) -> String {
    format!("{:.0} MiB", numel as f64 * F32 / (1 << 20) as f64)
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
