//! `scratchnet kernel`: one op, one shape, every variant, the way a performance engineer
//! works on a kernel. For each pass and variant: the relative error against the op's plain
//! reference (computed in f64 on the CPU; the variant's outputs are NaN-poisoned first, so an
//! element it fails to write fails the check), the median time, GFLOP/s, GB/s and the share
//! of the roofline the device measured, and, for the GPU kernels the variant launched, what
//! ptxas reported: registers, shared memory, spills and the theoretical occupancy on the
//! architecture of the device (sm_90 when the device is the emulator or the CPU).

use serde_json::Value;

use super::{Ceilings, Pass, Problem, measure_ceilings, time};
use crate::device::Device;
use crate::device::kernels::{CUDA_ARCHS, KernelResources, PTXAS_REPORT, kernel_resources};
use crate::error::{Error, Result};
use crate::ops::batchnorm::{self, reference as bn};
use crate::ops::batchnorm_fused::{self, Epilogue};
use crate::ops::conv2d::{self, Conv2dParams, ConvAlgo, ConvGeometry};
use crate::ops::gemm::{self, GemmKernel};
use crate::ops::lrn::{self, LrnParams};
use crate::ops::pool::{self, Pool2dParams};
use crate::ops::{ExecOptions, Precision};
use crate::ops::{concat, elementwise, sgd};
use crate::selftest::{TOL_PLAIN, TOL_REORDERED, rel_l2};
use crate::tensor::{DType, Shape, Tensor};

/// The error of a result rounded once to f32 (an addition): half an ulp, 2⁻²⁴, relative.
const ONE_ROUNDING: f64 = 6e-8;

/// The op families `scratchnet kernel` knows.
pub const FAMILIES: [&str; 8] = ["conv2d", "gemm", "batchnorm", "lrn", "pool", "concat", "elementwise", "sgd"];

/// What to run.
#[derive(Clone, Debug)]
pub struct KernelOptions {
    pub device: Device,
    pub family: String,
    /// `[N, C, H, W]` (conv2d, batchnorm, lrn, pool, concat) or `[numel]` (elementwise, sgd);
    /// `None` for the family's default on this device.
    pub input: Option<Vec<usize>>,
    /// conv2d's `[O, C/groups, KH, KW]`.
    pub weight: Option<Vec<usize>>,
    pub conv: Conv2dParams,
    /// gemm's `[M, N, K]`.
    pub gemm: Option<[usize; 3]>,
    /// `fwd`, `dgrad`, `wgrad`, `bwd` or `all`.
    pub pass: String,
    /// conv2d and gemm: the precision of the product (the reference then runs on operands
    /// rounded the same way, its result rounded for the 16-bit types).
    pub precision: Precision,
    /// Every variant, not only the engine's default.
    pub all_variants: bool,
    pub repeats: Option<usize>,
}

/// One measured variant of one pass.
pub struct Row {
    /// The problem's label: op, pass and shape.
    pub problem: String,
    pub variant: String,
    pub rel_err: f64,
    pub tol: f64,
    pub median_ms: f64,
    pub flops: f64,
    pub bytes: f64,
    /// The GPU kernels the variant launched, with the threads per block and dynamic shared
    /// memory of their first launch.
    pub kernels: Vec<(String, u32, u32)>,
}

impl Row {
    pub fn passed(&self) -> bool {
        self.rel_err <= self.tol
    }
}

/// What an op computes from its inputs: one output or several (a split's pieces), compared
/// with the reference as one sequence of values.
type Op = std::rc::Rc<dyn Fn(&[&Tensor]) -> Result<Vec<Tensor>>>;

/// One variant of one pass, ready to run: `run` computes the outputs on the device.
struct Case {
    variant: String,
    problem: Problem,
    tol: f64,
    run: Box<dyn FnMut() -> Result<Vec<Tensor>>>,
    want: Vec<f64>,
}

fn bad(what: String) -> Error {
    Error::argument("kernel", what)
}

/// `[N, C, H, W]` from the options, or the family's default on this device.
fn image(opts: &KernelOptions, cuda: [usize; 4], cpu: [usize; 4], emu: [usize; 4]) -> Result<Shape> {
    match &opts.input {
        Some(d) if d.len() == 4 && d.iter().all(|&v| v > 0) => Ok(Shape::new(d.clone())),
        Some(d) => Err(bad(format!("--input must be NxCxHxW with every size at least 1, got {d:?}"))),
        None => Ok(Shape::from(by_device(opts.device, cuda, cpu, emu))),
    }
}

fn by_device<T>(device: Device, cuda: T, cpu: T, emu: T) -> T {
    match device {
        Device::Cuda(_) => cuda,
        Device::Cpu => cpu,
        Device::Emu(_) => emu,
    }
}

/// Values in [-1, 1) from `seed`, as f64 (the reference's) and f32 on the device.
fn operand(shape: &Shape, seed: u64, device: Device) -> Result<(Vec<f64>, Tensor)> {
    let t = Tensor::uniform(shape.clone(), -1.0, 1.0, DType::F32, seed);
    Ok((t.to_f64_vec()?, t.to_device(device)?))
}

fn wants(opts: &KernelOptions, pass: &str) -> bool {
    opts.pass == "all" || opts.pass == pass || (opts.pass == "bwd" && (pass == "dgrad" || pass == "wgrad"))
}

fn conv_cases(opts: &KernelOptions) -> Result<Vec<Case>> {
    let device = opts.device;
    let x_shape = image(opts, [64, 256, 14, 14], [8, 64, 28, 28], [2, 16, 12, 12])?;
    let w_shape = match &opts.weight {
        Some(d) if d.len() == 4 && d.iter().all(|&v| v > 0) => Shape::new(d.clone()),
        Some(d) => return Err(bad(format!("--weight must be OxIxKHxKW with every size at least 1, got {d:?}"))),
        None => Shape::from([x_shape.dims()[1], x_shape.dims()[1] / opts.conv.groups.max(1), 3, 3]),
    };
    let p = opts.conv;
    let g = ConvGeometry::new(&x_shape, &w_shape, p)?;
    let y_shape = g.out_shape();
    let precision = opts.precision;
    let (xv, x) = operand(&x_shape, 1, device)?;
    let (wv, w) = operand(&w_shape, 2, device)?;
    let (dyv, dy) = operand(&y_shape, 3, device)?;
    let (xv, wv, dyv) = (precision.round_operands(&xv), precision.round_operands(&wv), precision.round_operands(&dyv));
    let mut algos: Vec<(ConvAlgo, &str)> = match (device, opts.all_variants) {
        (Device::Cpu, _) => vec![(ConvAlgo::Auto, "cpu im2col+gemm")],
        (_, false) => vec![(ConvAlgo::Auto, "default")],
        (_, true) => vec![
            (ConvAlgo::Direct, "v1 direct"),
            (ConvAlgo::ImplicitGemm, "v2 implicit-gemm"),
            (ConvAlgo::ImplicitGemm128, "v3 implicit-gemm-128"),
        ],
    };
    if precision.uses_tensor_cores() && opts.all_variants && device != Device::Cpu {
        // The FP32 kernels above then run on rounded operands; the tensor cores beside them.
        algos.extend([(ConvAlgo::TensorCore64, "v4 tensor-core-64"), (ConvAlgo::TensorCore128, "v5 tensor-core-128")]);
    }
    let (tol_plain, tol_reordered) = (precision.result_tolerance(TOL_PLAIN), precision.result_tolerance(TOL_REORDERED));
    let problem =
        |pass| Problem::Conv { x: x_shape.clone(), w: w_shape.clone(), params: p, bias: false, relu: false, pass };
    let mut cases = Vec::new();
    for (algo, name) in algos {
        let exec = ExecOptions { conv_algo: algo, precision, ..ExecOptions::default() };
        if wants(opts, "fwd") {
            let (x, w) = (x.clone(), w.clone());
            cases.push(Case {
                variant: name.into(),
                problem: problem(Pass::Forward),
                tol: tol_plain,
                run: Box::new(move || Ok(vec![conv2d::forward(&x, &w, None, p, &exec)?])),
                want: precision.round_result(conv2d::reference::forward(&xv, &wv, None, &g)),
            });
        }
        if wants(opts, "dgrad") {
            let (dy, w, xs) = (dy.clone(), w.clone(), x_shape.clone());
            cases.push(Case {
                variant: name.into(),
                problem: problem(Pass::BackwardData),
                tol: tol_plain,
                run: Box::new(move || Ok(vec![conv2d::backward_data(&dy, &w, &xs, p, &exec)?])),
                want: precision.round_result(conv2d::reference::backward_data(&dyv, &wv, &g)),
            });
        }
        if wants(opts, "wgrad") {
            let (dy, x, ws) = (dy.clone(), x.clone(), w_shape.clone());
            cases.push(Case {
                variant: name.into(),
                problem: problem(Pass::BackwardFilter),
                tol: tol_reordered,
                run: Box::new(move || Ok(vec![conv2d::backward_filter(&dy, &x, &ws, p, &exec)?])),
                want: precision.round_result(conv2d::reference::backward_filter(&dyv, &xv, &g)),
            });
        }
    }
    Ok(cases)
}

fn gemm_cases(opts: &KernelOptions) -> Result<Vec<Case>> {
    let device = opts.device;
    let [m, n, k] = opts.gemm.unwrap_or(by_device(device, [4096, 4096, 4096], [512, 512, 512], [64, 48, 80]));
    if m == 0 || n == 0 || k == 0 {
        return Err(bad(format!("--gemm must be MxNxK with every size at least 1, got {m}x{n}x{k}")));
    }
    let precision = opts.precision;
    let (av, a) = operand(&Shape::from([m, k]), 1, device)?;
    let (bv, b) = operand(&Shape::from([k, n]), 2, device)?;
    let want = precision.round_result(gemm::reference::matmul(
        &precision.round_operands(&av),
        &precision.round_operands(&bv),
        m,
        n,
        k,
    ));
    let mut kernels: Vec<(GemmKernel, String)> = match (device, opts.all_variants) {
        (Device::Cpu, _) => vec![(GemmKernel::Auto, "cpu packed".into())],
        (_, false) => vec![(GemmKernel::Auto, "default".into())],
        // Every kernel that can take this product (the 16-byte loads need N and K multiples of 4).
        (_, true) => GemmKernel::ALL
            .iter()
            .zip(["naive", "tiled16", "64x64", "128x128", "128x128-vec4"])
            .enumerate()
            .filter(|(_, (g, _))| g.fits(m, n, k, false, false))
            .map(|(i, (&g, label))| (g, format!("v{} {label}", i + 1)))
            .collect(),
    };
    if precision.uses_tensor_cores() && opts.all_variants && device != Device::Cpu {
        kernels.extend([
            (GemmKernel::TensorCore64, "v6 tensor-core-64".to_string()),
            (GemmKernel::TensorCore128, "v7 tensor-core-128".to_string()),
        ]);
    }
    let tol = precision.result_tolerance(TOL_PLAIN);
    Ok(kernels
        .into_iter()
        .map(|(kernel, variant)| {
            let (a, b) = (a.clone(), b.clone());
            Case {
                variant,
                problem: Problem::Matmul { m, n, k },
                tol,
                run: Box::new(move || Ok(vec![gemm::matmul(&a, false, &b, false, kernel, precision)?])),
                want: want.clone(),
            }
        })
        .collect())
}

/// The cases of a family with one variant per pass: each pass's op run on the device, and
/// what the op's plain reference (`ops::<op>::reference`) computed from the same inputs in f64.
struct Single {
    /// The variant's label where a family has several (`v1 plain`), else empty: the op's one
    /// path, printed as `default` (`cpu` on the CPU).
    variant: &'static str,
    pass: &'static str,
    problem: Problem,
    tol: f64,
    op: Op,
    inputs: Vec<(Vec<f64>, Shape)>,
    want: Vec<f64>,
}

/// Every value of `outputs`, in order.
fn flatten(outputs: &[Tensor]) -> Result<Vec<f64>> {
    let mut all = Vec::new();
    for t in outputs {
        all.extend(t.to_f64_vec()?);
    }
    Ok(all)
}

/// An op of one output.
fn one(f: impl Fn(&[&Tensor]) -> Result<Tensor> + 'static) -> Op {
    std::rc::Rc::new(move |t: &[&Tensor]| Ok(vec![f(t)?]))
}

fn singles(device: Device, list: Vec<Single>) -> Result<Vec<Case>> {
    let mut cases = Vec::new();
    for s in list {
        let dev: Vec<Tensor> = s
            .inputs
            .iter()
            .map(|(v, shape)| Tensor::from_vec(shape.clone(), v.clone())?.to_dtype(DType::F32)?.to_device(device))
            .collect::<Result<_>>()?;
        let op = s.op.clone();
        cases.push(Case {
            variant: match (s.variant, device.is_cpu()) {
                ("", true) => "cpu".into(),
                ("", false) => "default".into(),
                (label, _) => label.into(),
            },
            problem: s.problem,
            tol: s.tol,
            run: Box::new(move || op(&dev.iter().collect::<Vec<_>>())),
            want: s.want,
        });
    }
    Ok(cases)
}

/// Values in [-1, 1) that f32 holds exactly, so that the device and the reference start from
/// the same numbers (and an exact op, a copy or a ReLU, must match to the bit).
fn values(shape: &Shape, seed: u64) -> Result<(Vec<f64>, Shape)> {
    Ok((Tensor::uniform(shape.clone(), -1.0, 1.0, DType::F32, seed).to_f64_vec()?, shape.clone()))
}

/// A reference's output rounded to f32, as an input of the next pass (the forward's output
/// that a backward reads).
fn rounded(values: Vec<f64>, shape: &Shape) -> (Vec<f64>, Shape) {
    (values.into_iter().map(|v| v as f32 as f64).collect(), shape.clone())
}

/// `(N, C, H·W)` of an NCHW shape.
fn nchw(s: &Shape) -> (usize, usize, usize) {
    let d = s.dims();
    (d[0], d[1], d[2] * d[3])
}

fn family_cases(opts: &KernelOptions) -> Result<Vec<Case>> {
    let device = opts.device;
    let list: Vec<Single> = match opts.family.as_str() {
        "conv2d" => return conv_cases(opts),
        "gemm" => return gemm_cases(opts),
        "batchnorm" => batchnorm_singles(opts)?,
        "lrn" => lrn_singles(opts)?,
        "pool" => pool_singles(opts)?,
        "concat" => concat_singles(opts)?,
        "elementwise" | "sgd" => pointwise_singles(opts)?,
        other => return Err(bad(format!("unknown op '{other}' (expected one of {})", FAMILIES.join(", ")))),
    };
    let list = list.into_iter().filter(|c| wants(opts, c.pass)).collect();
    singles(device, list)
}

/// The small image of the emulator's default shapes.
const SMALL: [usize; 4] = [2, 8, 9, 9];

/// One pass of one op, with its expected output.
fn single(
    pass: &'static str,
    problem: Problem,
    tol: f64,
    op: Op,
    inputs: Vec<(Vec<f64>, Shape)>,
    want: Vec<f64>,
) -> Single {
    Single { variant: "", pass, problem, tol, op, inputs, want }
}

/// Training-mode batch norm, forward and backward: on a GPU with `--variants all`, v1 the
/// plain kernels (a block per channel, batchnorm.cu) and v2 the fused ones (sliced one-pass
/// statistics, batchnorm_fused.cu) with no epilogue, the same function.
fn batchnorm_singles(opts: &KernelOptions) -> Result<Vec<Single>> {
    let x = image(opts, [64, 256, 28, 28], [8, 64, 28, 28], SMALL)?;
    let c = Shape::from([x.dims()[1]]);
    let (xv, gamma, beta, dy) = (values(&x, 1)?, values(&c, 2)?, values(&c, 3)?, values(&x, 4)?);
    let dims = nchw(&x);
    // The backward reads the batch statistics the forward kept: computed here, once.
    let (y, mean, var) = bn::forward_train(&xv.0, &gamma.0, &beta.0, dims, 1e-5);
    let dx = bn::backward(&dy.0, &xv.0, &gamma.0, (&mean, &var), dims, 1e-5, true).dx;
    let (mean, var) = ((mean, c.clone()), (var, c.clone()));
    let problem = |pass| Problem::BatchNorm { x: x.clone(), residual: false, relu: false, pass };
    let fwd_inputs = vec![xv.clone(), gamma.clone(), beta];
    let bwd_inputs = vec![xv, dy, gamma, mean, var];
    let fwd = |t: &[&Tensor]| -> Result<Tensor> { Ok(batchnorm::forward_train(t[0], t[1], t[2], 1e-5)?.y) };
    let bwd =
        |t: &[&Tensor]| -> Result<Tensor> { Ok(batchnorm::backward_train(t[1], t[0], t[2], t[3], t[4], 1e-5)?.dx) };
    let mut list = vec![
        single("fwd", problem(Pass::Forward), TOL_REORDERED, one(fwd), fwd_inputs.clone(), y.clone()),
        single("bwd", problem(Pass::Backward), TOL_REORDERED, one(bwd), bwd_inputs.clone(), dx.clone()),
    ];
    if opts.all_variants && !opts.device.is_cpu() {
        let none = Epilogue { residual: None, relu: false };
        let fused_fwd = move |t: &[&Tensor]| -> Result<Tensor> {
            Ok(batchnorm_fused::forward_train_fused(t[0], t[1], t[2], none, 1e-5)?.y)
        };
        let fused_bwd = |t: &[&Tensor]| -> Result<Tensor> {
            Ok(batchnorm_fused::backward_fused(t[1], t[0], None, t[2], t[3], t[4], 1e-5, true, false)?.dx)
        };
        list.extend([
            single("fwd", problem(Pass::Forward), TOL_REORDERED, one(fused_fwd), fwd_inputs, y),
            single("bwd", problem(Pass::Backward), TOL_REORDERED, one(fused_bwd), bwd_inputs, dx),
        ]);
        for (i, s) in list.iter_mut().enumerate() {
            s.variant = if i < 2 { "v1 plain" } else { "v2 fused" };
        }
    }
    Ok(list)
}

/// AlexNet's local response normalisation, forward and backward.
fn lrn_singles(opts: &KernelOptions) -> Result<Vec<Single>> {
    let x = image(opts, [64, 96, 55, 55], [8, 96, 27, 27], SMALL)?;
    let p = LrnParams::alexnet();
    let (xv, dy) = (values(&x, 1)?, values(&x, 4)?);
    let y = lrn::reference::forward(&xv.0, nchw(&x), &p);
    let dx = lrn::reference::backward(&dy.0, &xv.0, nchw(&x), &p);
    let fwd = move |t: &[&Tensor]| lrn::forward(t[0], p);
    let bwd = move |t: &[&Tensor]| lrn::backward(t[1], t[0], t[2], p);
    let problem = |pass| Problem::Lrn { x: x.clone(), p, pass };
    let y_in = rounded(y.clone(), &x);
    Ok(vec![
        single("fwd", problem(Pass::Forward), TOL_PLAIN, one(fwd), vec![xv.clone()], y),
        single("bwd", problem(Pass::Backward), TOL_PLAIN, one(bwd), vec![xv, dy, y_in], dx),
    ])
}

/// AlexNet-style 3×3 stride-2 max pooling (padded), forward and backward.
fn pool_singles(opts: &KernelOptions) -> Result<Vec<Single>> {
    let x = image(opts, [64, 64, 112, 112], [8, 64, 56, 56], SMALL)?;
    let p = Pool2dParams::new(3, 2).padding(1);
    // The output's shape, with the op's own checks of the arguments.
    let y = pool::max_pool2d_forward(&Tensor::zeros(x.clone(), DType::F32), p)?.shape().clone();
    let d = x.dims();
    let dims = (d[0], d[1], d[2], d[3]);
    let (xv, dy) = (values(&x, 1)?, values(&y, 4)?);
    let want_y = pool::reference::max_pool2d_forward(&xv.0, dims, &p);
    let want_dx = pool::reference::max_pool2d_backward(&dy.0, &xv.0, dims, &p);
    let fwd = move |t: &[&Tensor]| pool::max_pool2d_forward(t[0], p);
    let bwd = move |t: &[&Tensor]| pool::max_pool2d_backward(t[1], t[0], p);
    let problem = |pass| Problem::MaxPool { x: x.clone(), p, pass };
    Ok(vec![
        single("fwd", problem(Pass::Forward), TOL_PLAIN, one(fwd), vec![xv.clone()], want_y),
        single("bwd", problem(Pass::Backward), TOL_PLAIN, one(bwd), vec![xv, dy], want_dx),
    ])
}

/// Concatenation along the channels of two pieces, and its split.
fn concat_singles(opts: &KernelOptions) -> Result<Vec<Single>> {
    let x = image(opts, [64, 256, 28, 28], [8, 64, 28, 28], SMALL)?;
    let [n, c, h, w] = [x.dims()[0], x.dims()[1], x.dims()[2], x.dims()[3]];
    let channels = vec![c, c.div_ceil(2)];
    let pieces: Vec<_> = channels
        .iter()
        .enumerate()
        .map(|(i, &ci)| values(&Shape::from([n, ci, h, w]), i as u64 + 1))
        .collect::<Result<_>>()?;
    let total = Shape::from([n, channels.iter().sum(), h, w]);
    let slices: Vec<&[f64]> = pieces.iter().map(|(v, _)| v.as_slice()).collect();
    let want_y = concat::reference::forward(&slices, n, &channels, h * w);
    let dy = values(&total, 4)?;
    let want_dx = concat::reference::backward(&dy.0, n, &channels, h * w).concat();
    let fwd = |t: &[&Tensor]| concat::forward(t);
    let split = channels.clone();
    let bwd: Op = std::rc::Rc::new(move |t: &[&Tensor]| concat::backward(t[0], &split));
    let problem = |pass| Problem::Concat { n, h, w, channels: channels.clone(), pass };
    Ok(vec![
        single("fwd", problem(Pass::Forward), 0.0, one(fwd), pieces, want_y),
        single("bwd", problem(Pass::Backward), 0.0, bwd, vec![dy], want_dx),
    ])
}

/// The element-wise ops (ReLU forward and backward, addition) or the SGD step.
fn pointwise_singles(opts: &KernelOptions) -> Result<Vec<Single>> {
    let numel = match &opts.input {
        Some(d) if d.len() == 1 && d[0] > 0 => d[0],
        Some(d) => return Err(bad(format!("--input for {} is one size (elements), got {d:?}", opts.family))),
        None => by_device(opts.device, 64 << 20, 8 << 20, 4099),
    };
    let v = Shape::from([numel]);
    Ok(if opts.family == "sgd" {
        let h = sgd::SgdParams { lr: 0.1, momentum: 0.9, weight_decay: 5e-4 };
        // The parameters after one step (velocity starts at the given values).
        let step = move |t: &[&Tensor]| -> Result<Tensor> {
            // Copies (a shared tensor is copied on its first in-place update), so that
            // every timed run starts from the same values.
            let (mut param, mut velocity) = (t[0].clone(), t[2].clone());
            sgd::step(&mut param, t[1], &mut velocity, h)?;
            Ok(param)
        };
        let (param, grad, velocity) = (values(&v, 1)?, values(&v, 2)?, values(&v, 3)?);
        let mut want = param.0.clone();
        sgd::reference::step(&mut want, &grad.0, &mut velocity.0.clone(), h);
        vec![single("fwd", Problem::Sgd { numel }, TOL_PLAIN, one(step), vec![param, grad, velocity], want)]
    } else {
        use elementwise::reference as r;
        let relu = |t: &[&Tensor]| elementwise::relu_forward(t[0]);
        let relu_bwd = |t: &[&Tensor]| elementwise::relu_backward(t[0], t[1]);
        let add = |t: &[&Tensor]| elementwise::add(t[0], t[1]);
        let (a, b) = (values(&v, 1)?, values(&v, 2)?);
        let y = rounded(r::relu(&a.0), &v);
        let (want_y, want_dx, want_sum) = (r::relu(&a.0), r::relu_backward(&b.0, &y.0), r::add(&a.0, &b.0));
        vec![
            single("fwd", Problem::Relu { numel, pass: Pass::Forward }, 0.0, one(relu), vec![a.clone()], want_y),
            single(
                "bwd",
                Problem::Relu { numel, pass: Pass::Backward },
                0.0,
                one(relu_bwd),
                vec![b.clone(), y],
                want_dx,
            ),
            single("fwd", Problem::Add { numel }, ONE_ROUNDING, one(add), vec![a, b], want_sum),
        ]
    })
}

/// The ptxas figures of `kernel` for the architecture of `device` (a GPU's own; sm_90, the
/// newest compiled, for the emulator and the CPU).
pub fn resources(device: Device, kernel: &str) -> Option<KernelResources> {
    let arch = match device {
        Device::Cuda(n) => crate::device::cuda::check(n)
            .ok()
            .map(|g| format!("sm_{}{}", g.compute_capability.0, g.compute_capability.1))?,
        _ => CUDA_ARCHS.iter().max_by_key(|a| a.parse::<u32>().unwrap_or(0)).map(|a| format!("sm_{a}"))?,
    };
    kernel_resources(&String::from_utf8_lossy(PTXAS_REPORT)).into_iter().find(|r| r.kernel == kernel && r.arch == arch)
}

/// Runs every case of the options; `on_row` sees each row as it is measured.
pub fn run(opts: &KernelOptions, mut on_row: impl FnMut(&Row, &Ceilings)) -> Result<(Ceilings, Vec<Row>)> {
    if !["fwd", "dgrad", "wgrad", "bwd", "all"].contains(&opts.pass.as_str()) {
        return Err(bad(format!("--pass must be fwd, dgrad, wgrad, bwd or all, got '{}'", opts.pass)));
    }
    let cases = family_cases(opts)?;
    if cases.is_empty() {
        return Err(bad(format!("{} has no pass '{}'", opts.family, opts.pass)));
    }
    let mut bench = super::BenchOptions::new(opts.device);
    bench.repeats = opts.repeats;
    let ceilings = measure_ceilings(&bench)?;
    let gpu = opts.device.gpu()?;
    let mut rows = Vec::new();
    for mut case in cases {
        // The check: new buffers full of NaN, so an element the variant skips cannot pass.
        crate::device::poison_new_buffers(true);
        if let Some(g) = &gpu {
            g.start_launch_log();
        }
        let got = (case.run)();
        let launched = gpu.as_ref().map(|g| g.take_launch_log()).unwrap_or_default();
        crate::device::poison_new_buffers(false);
        let got = flatten(&got?)?;
        let rel_err = if got.len() == case.want.len() { rel_l2(&got, &case.want) } else { f64::INFINITY };
        let mut kernels: Vec<(String, u32, u32)> = Vec::new();
        for (name, dims) in launched {
            if !kernels.iter().any(|(k, _, _)| k == name) {
                kernels.push((name.to_string(), dims.block.0 * dims.block.1 * dims.block.2, dims.shared_bytes));
            }
        }
        let repeats = bench.repeats.unwrap_or(by_device(opts.device, 10, 3, 1));
        let t = time(opts.device, repeats, 1, &mut || (case.run)().map(|_| ()))?;
        let row = Row {
            problem: case.problem.label(),
            variant: case.variant,
            rel_err,
            tol: case.tol,
            median_ms: t.median_ms,
            flops: case.problem.flops(),
            bytes: case.problem.bytes(),
            kernels,
        };
        on_row(&row, &ceilings);
        rows.push(row);
    }
    Ok((ceilings, rows))
}

/// The table's header.
pub fn header() -> String {
    format!(
        "{:<44} {:<22} {:>9} {:>6} {:>10} {:>9} {:>8} {:>5}  {}",
        "problem",
        "variant",
        "error",
        "",
        "median ms",
        "GFLOP/s",
        "GB/s",
        "roof",
        "kernels: registers, shared bytes, spill bytes, occupancy"
    )
}

/// One row of the table, and a line per kernel it launched.
pub fn lines(device: Device, row: &Row, c: &Ceilings) -> Vec<String> {
    let (fraction, _) = c.roofline(row.flops, row.bytes, row.median_ms / 1e3);
    // The emulator's ceilings (a 64³ product, a 1 MiB copy on the CPU) make no roofline.
    let roof = if device.is_emu() { "-".to_string() } else { format!("{:.0}%", 100.0 * fraction) };
    let mut out = vec![format!(
        "{:<44} {:<22} {:>9.2e} {:>6} {:>10.3} {:>9.1} {:>8.1} {:>5}",
        row.problem,
        row.variant,
        row.rel_err,
        if row.passed() { "ok" } else { "FAIL" },
        row.median_ms,
        row.flops / (row.median_ms * 1e6),
        row.bytes / (row.median_ms * 1e6),
        roof
    )];
    for (name, threads, dynamic) in &row.kernels {
        let figures = match resources(device, name) {
            Some(r) => format!(
                "{} regs, {} B shared, {} B spilled, occupancy {}",
                r.registers,
                r.shared_bytes + dynamic,
                r.spill_store_bytes,
                r.occupancy(*threads, *dynamic).map_or("?".into(), |o| format!("{:.0}%", 100.0 * o))
            ),
            None => "no ptxas figures (built without nvcc)".into(),
        };
        out.push(format!("{:>44}   {name} ({threads} threads): {figures}", ""));
    }
    out
}

/// A row as JSON, for scripts.
pub fn to_json(row: &Row) -> Value {
    serde_json::json!({
        "problem": row.problem, "variant": row.variant, "rel_err": row.rel_err, "tol": row.tol,
        "median_ms": row.median_ms, "flops": row.flops, "bytes": row.bytes,
        "kernels": row.kernels.iter().map(|(k, _, _)| k.clone()).collect::<Vec<_>>(),
    })
}
