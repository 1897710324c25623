//! 2-D convolution: forward, and the gradients with respect to the input ("data"), the
//! weights ("filter") and the bias.
//!
//! Like every deep-learning framework, "convolution" here is cross-correlation:
//!
//! ```text
//! y[n, o, oy, ox] = b[o] + Σ_{c in group(o)} Σ_{ky, kx}
//!                       w[o, c - c0(o), ky, kx] · x[n, c, oy·sh − ph + ky·dh, ox·sw − pw + kx·dw]
//! ```
//!
//! with zeros outside the input. Layouts are PyTorch's: x is NCHW, w is OIHW with I = C/groups.
//! Groups split the channels into `groups` independent convolutions (AlexNet's two towers).
//!
//! The definition as plain loops, which every path is checked against, is [`reference`](mod@reference). The
//! `cpu` device runs the fast path below; cuda and emu run the kernels of `kernels/conv2d.cu`
//! (`gpu.rs` chooses and launches them, as the [`ExecOptions`] the op receives say), and in a
//! low precision those of `kernels/conv2d_tc.cu` on the tensor cores (`src/ops/conv2d_tc.rs`).
//!
//! The `cpu` device's path, im2col + GEMM, is in `cpu.rs`; in inference, the forward pass
//! of small padded maps runs one turned-around product per kernel tap instead
//! (`shifted_taps.rs`), which skips the multiplications by the padding's zeros.

use std::sync::Arc;

use rayon::prelude::*;

mod batch_norm_folded;
mod cpu;
mod gpu;
mod im2col;
mod indirect;
mod packed_weights;
pub mod reference;
mod shifted_taps;
mod write_back;

pub use gpu::ConvAlgo;
pub(crate) use gpu::{FilterGradient, Groups, check_index_range, shape_args, splits_into_towers};

use super::precision::{Precision, round_output, round_tensor};
use super::tensor_cores::TcTile;
use super::{ExecOptions, common_dtype, expect_nchw, expect_shape, gpu_f32, host, with_float_type};
use crate::device::gpu::{KernelCall, to_i32, to_i64};
use crate::device::{Device, GpuDevice};
use crate::error::{Error, Result};
use crate::tensor::{DType, Element, Float, Shape, Tensor};
pub use batch_norm_folded::{BatchNormEval, forward_batch_norm};
use cpu::{backward_data_cpu, backward_filter_cpu, forward_cpu, images_per_product};
use write_back::WriteBack;

pub(crate) const OP: &str = "conv2d";

/// Stride, padding, dilation and groups, each per (height, width) where it applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dParams {
    pub stride: (usize, usize),
    pub padding: (usize, usize),
    pub dilation: (usize, usize),
    pub groups: usize,
}

impl Default for Conv2dParams {
    fn default() -> Self {
        Conv2dParams { stride: (1, 1), padding: (0, 0), dilation: (1, 1), groups: 1 }
    }
}

impl Conv2dParams {
    pub fn stride(mut self, s: usize) -> Self {
        self.stride = (s, s);
        self
    }
    pub fn padding(mut self, p: usize) -> Self {
        self.padding = (p, p);
        self
    }
    pub fn dilation(mut self, d: usize) -> Self {
        self.dilation = (d, d);
        self
    }
    pub fn groups(mut self, g: usize) -> Self {
        self.groups = g;
        self
    }
}

/// Every size of one convolution, derived from the input and weight shapes and checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeometry {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub o: usize,
    pub kh: usize,
    pub kw: usize,
    pub oh: usize,
    pub ow: usize,
    pub params: Conv2dParams,
}

impl ConvGeometry {
    /// Checks an input shape `[N, C, H, W]` against a weight shape `[O, C/groups, KH, KW]`.
    pub fn new(x: &Shape, w: &Shape, p: Conv2dParams) -> Result<ConvGeometry> {
        let bad = |what: &str| Error::argument(OP, format!("{what} must be at least 1, got {p:?}"));
        if p.stride.0 == 0 || p.stride.1 == 0 {
            return Err(bad("stride"));
        }
        if p.dilation.0 == 0 || p.dilation.1 == 0 {
            return Err(bad("dilation"));
        }
        if p.groups == 0 {
            return Err(bad("groups"));
        }
        let (n, c, h, wd) = x.dims4().ok_or_else(|| Error::shape_of(OP, "a 4-D input (N, C, H, W)", "input", x))?;
        let (o, ci, kh, kw) =
            w.dims4().ok_or_else(|| Error::shape_of(OP, "a 4-D weight (O, C/groups, KH, KW)", "weight", w))?;
        let g = p.groups;
        if c % g != 0 || o % g != 0 {
            return Err(Error::shape(
                OP,
                format!("input channels and output channels divisible by groups={g}"),
                format!("input {x} and weight {w}"),
            ));
        }
        if ci != c / g || kh == 0 || kw == 0 || o == 0 {
            return Err(Error::shape(
                OP,
                format!("weight of shape [O, {}, KH, KW] for input {x} with groups={g}", c / g),
                format!("weight of shape {w}"),
            ));
        }
        super::expect_nonempty_image(OP, "input", x)?;
        // Checked throughout: absurd padding or dilation must be an error, not a wrap-around.
        let out_len = |len: usize, k: usize, s: usize, pad: usize, d: usize| -> Option<usize> {
            let span = d.checked_mul(k - 1)?.checked_add(1)?;
            let padded = pad.checked_mul(2)?.checked_add(len)?;
            padded.checked_sub(span).map(|r| r / s + 1)
        };
        let (oh, ow) = match (
            out_len(h, kh, p.stride.0, p.padding.0, p.dilation.0),
            out_len(wd, kw, p.stride.1, p.padding.1, p.dilation.1),
        ) {
            (Some(oh), Some(ow)) => (oh, ow),
            _ => {
                return Err(Error::shape(
                    OP,
                    format!(
                        "an input at least as large as the dilated kernel {}x{} after padding {:?}",
                        p.dilation.0 * (kh - 1) + 1,
                        p.dilation.1 * (kw - 1) + 1,
                        p.padding
                    ),
                    format!("input of shape {x}"),
                ));
            }
        };
        Ok(ConvGeometry { n, c, h, w: wd, o, kh, kw, oh, ow, params: p })
    }

    pub fn groups(&self) -> usize {
        self.params.groups
    }
    /// Output channels per group: the rows of one group's weight matrix.
    pub fn o_per_group(&self) -> usize {
        self.o / self.groups()
    }
    /// Length of one group's im2col column: (C/G)·KH·KW, the shared dimension of the GEMM.
    pub fn k_per_group(&self) -> usize {
        self.c / self.groups() * self.kh * self.kw
    }
    /// Output pixels per image: the columns of the GEMM.
    pub fn out_pixels(&self) -> usize {
        self.oh * self.ow
    }
    pub fn in_shape(&self) -> Shape {
        Shape::from([self.n, self.c, self.h, self.w])
    }
    pub fn out_shape(&self) -> Shape {
        Shape::from([self.n, self.o, self.oh, self.ow])
    }
    pub fn weight_shape(&self) -> Shape {
        Shape::from([self.o, self.c / self.groups(), self.kh, self.kw])
    }
    /// Multiply-adds of the forward pass (each gradient costs as many again).
    pub fn macs(&self) -> u64 {
        (self.n * self.o * self.out_pixels() * self.k_per_group()) as u64
    }
    /// A 1×1 kernel with stride 1 and no padding reads each pixel once: im2col would copy
    /// the image unchanged, so the image itself is the GEMM operand.
    fn is_pointwise(&self) -> bool {
        let p = &self.params;
        self.kh == 1 && self.kw == 1 && p.stride == (1, 1) && p.padding == (0, 0)
    }
}

/// The forward pass: `y = conv(x, w) + b`, shape `[N, O, OH, OW]`. On cuda and emu, `exec`
/// chooses the kernel (and the towers of a grouped convolution); the CPU has one path.
pub fn forward(x: &Tensor, w: &Tensor, b: Option<&Tensor>, p: Conv2dParams, exec: &ExecOptions) -> Result<Tensor> {
    forward_act(x, w, b, p, false, exec)
}

/// `relu(conv(x, w) + b)` in one pass over the output (see [`super::bias_act`]); its
/// backward is [`super::bias_act::relu_backward_with_bias`] then the two gradients below.
pub fn forward_relu(x: &Tensor, w: &Tensor, b: Option<&Tensor>, p: Conv2dParams, exec: &ExecOptions) -> Result<Tensor> {
    forward_act(x, w, b, p, true, exec)
}

fn forward_act(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    p: Conv2dParams,
    relu: bool,
    exec: &ExecOptions,
) -> Result<Tensor> {
    let g = ConvGeometry::new(x.shape(), w.shape(), p)?;
    let mut inputs = vec![("input", x), ("weight", w)];
    if let Some(b) = b {
        expect_shape(OP, "bias", b, &[g.o])?;
        inputs.push(("bias", b));
    }
    let (dtype, device) = common_dtype(OP, &inputs)?;
    if exec.precision != Precision::Fp32 {
        return forward_low_precision(x, w, b, p, relu, exec, (&g, dtype, device));
    }
    if let Some(gpu) = gpu_f32(OP, dtype, device)? {
        let bias = b.map(Tensor::gpu_buffer).transpose()?;
        let y = gpu::forward(&gpu, exec, x.gpu_buffer()?, w.gpu_buffer()?, bias, relu, &g)?;
        return Ok(Tensor::from_gpu(g.out_shape(), y));
    }
    with_float_type!(dtype, OP, |T| {
        let wb = WriteBack { bias: b.map(host::<T>).transpose()?, relu, ..WriteBack::NONE };
        Ok(Tensor::from_cpu(g.out_shape(), forward_on_cpu::<T>(x, w, &wb, &g, exec)?))
    })
}

/// The CPU's forward pass, `wb` applied as it writes: with the weights fixed, the shifted taps
/// of a small map where they pay, else im2col + GEMM, from weights kept packed.
fn forward_on_cpu<T: Float>(
    x: &Tensor,
    w: &Tensor,
    wb: &WriteBack<T>,
    g: &ConvGeometry,
    exec: &ExecOptions,
) -> Result<Vec<T>> {
    let weights = host::<T>(w)?;
    if exec.weights_fixed && shifted_taps::pays::<T>(g, images_per_product(g)) {
        let taps = packed_weights::packed_taps(w, weights, g);
        return shifted_taps::forward::<T>(host(x)?, &taps, wb, g);
    }
    let packed = exec.weights_fixed.then(|| packed_weights::packed(w, weights, g));
    forward_cpu::<T>(host(x)?, weights, packed.as_deref().map(Vec::as_slice), wb, g)
}

/// The GPU and the tensor-core tile configurations for a product in `exec`'s (low)
/// precision on `device`, or `None` where the rounding path runs instead: the CPU, and the
/// forced FP32 algorithms.
fn tensor_cores(
    dtype: DType,
    device: Device,
    exec: &ExecOptions,
) -> Result<Option<(Arc<GpuDevice>, &'static [TcTile])>> {
    let Some(gpu) = gpu_f32(OP, dtype, device)? else { return Ok(None) };
    Ok(super::conv2d_tc::tiles(&gpu, exec.conv_algo, exec.precision)?.map(|tiles| (gpu, tiles)))
}

/// A convolution in a low precision, its inputs already checked (`g`, their dtype and
/// device): on the tensor cores where [`tensor_cores`] says so, else [`forward_rounded`].
/// Both give the bias and the ReLU in FP32 after the rounded product.
fn forward_low_precision(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    p: Conv2dParams,
    relu: bool,
    exec: &ExecOptions,
    (g, dtype, device): (&ConvGeometry, DType, Device),
) -> Result<Tensor> {
    if let Some((gpu, tiles)) = tensor_cores(dtype, device, exec)? {
        let bias = b.map(Tensor::gpu_buffer).transpose()?;
        let (xb, wb) = (x.gpu_buffer()?, w.gpu_buffer()?);
        let y = super::conv2d_tc::forward(&gpu, exec, tiles, xb, wb, bias, relu, g)?;
        return Ok(Tensor::from_gpu(g.out_shape(), y));
    }
    forward_rounded(x, w, b, p, relu, exec)
}

/// A convolution in a low precision (see [`Precision`]), computed by the FP32 path from
/// rounded operands: the product of the rounded input and weights, its result rounded (for
/// the 16-bit types), then the bias and ReLU in FP32.
fn forward_rounded(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    p: Conv2dParams,
    relu: bool,
    exec: &ExecOptions,
) -> Result<Tensor> {
    let precision = exec.precision;
    // The rounded weights are a fresh tensor each call: nothing to keep packed for them.
    let fp32 = ExecOptions { precision: Precision::Fp32, weights_fixed: false, ..*exec };
    let mut y = forward_act(&round_tensor(x, precision)?, &round_tensor(w, precision)?, None, p, false, &fp32)?;
    round_output(&mut y, precision)?;
    if b.is_some() || relu {
        super::bias_act::bias_act_in_place(&mut y, b, relu)?;
    }
    Ok(y)
}

/// The gradient with respect to the input, from the output gradient `dy` and the weights.
pub fn backward_data(dy: &Tensor, w: &Tensor, x_shape: &Shape, p: Conv2dParams, exec: &ExecOptions) -> Result<Tensor> {
    if exec.precision != Precision::Fp32 {
        let g = ConvGeometry::new(x_shape, w.shape(), p)?;
        expect_shape(OP, "output gradient", dy, &g.out_shape())?;
        let (dtype, device) = common_dtype(OP, &[("output gradient", dy), ("weight", w)])?;
        if let Some((gpu, tiles)) = tensor_cores(dtype, device, exec)? {
            let dx = super::conv2d_tc::backward_data(&gpu, exec, tiles, dy.gpu_buffer()?, w.gpu_buffer()?, &g)?;
            return Ok(Tensor::from_gpu(g.in_shape(), dx));
        }
        let (precision, fp32) = (exec.precision, ExecOptions { precision: Precision::Fp32, ..*exec });
        let mut dx = backward_data(&round_tensor(dy, precision)?, &round_tensor(w, precision)?, x_shape, p, &fp32)?;
        round_output(&mut dx, precision)?;
        return Ok(dx);
    }
    let g = ConvGeometry::new(x_shape, w.shape(), p)?;
    expect_shape(OP, "output gradient", dy, &g.out_shape())?;
    let (dtype, device) = common_dtype(OP, &[("output gradient", dy), ("weight", w)])?;
    if let Some(gpu) = gpu_f32(OP, dtype, device)? {
        let dx = gpu::backward_data(&gpu, exec, dy.gpu_buffer()?, w.gpu_buffer()?, &g)?;
        return Ok(Tensor::from_gpu(g.in_shape(), dx));
    }
    with_float_type!(dtype, OP, |T| {
        let dx = backward_data_cpu::<T>(host(dy)?, host(w)?, &g)?;
        Ok(Tensor::from_cpu(g.in_shape(), dx))
    })
}

/// The gradient with respect to the weights, from the output gradient and the input.
pub fn backward_filter(
    dy: &Tensor,
    x: &Tensor,
    w_shape: &Shape,
    p: Conv2dParams,
    exec: &ExecOptions,
) -> Result<Tensor> {
    if exec.precision != Precision::Fp32 {
        let g = ConvGeometry::new(x.shape(), w_shape, p)?;
        expect_shape(OP, "output gradient", dy, &g.out_shape())?;
        let (dtype, device) = common_dtype(OP, &[("output gradient", dy), ("input", x)])?;
        if let Some((gpu, tiles)) = tensor_cores(dtype, device, exec)? {
            let dw = super::conv2d_tc::backward_filter(&gpu, exec, tiles, dy.gpu_buffer()?, x.gpu_buffer()?, &g)?;
            return Ok(Tensor::from_gpu(g.weight_shape(), dw));
        }
        let (precision, fp32) = (exec.precision, ExecOptions { precision: Precision::Fp32, ..*exec });
        let mut dw = backward_filter(&round_tensor(dy, precision)?, &round_tensor(x, precision)?, w_shape, p, &fp32)?;
        round_output(&mut dw, precision)?;
        return Ok(dw);
    }
    let g = ConvGeometry::new(x.shape(), w_shape, p)?;
    expect_shape(OP, "output gradient", dy, &g.out_shape())?;
    let (dtype, device) = common_dtype(OP, &[("output gradient", dy), ("input", x)])?;
    if let Some(gpu) = gpu_f32(OP, dtype, device)? {
        let dw = gpu::backward_filter(&gpu, exec, dy.gpu_buffer()?, x.gpu_buffer()?, &g)?;
        return Ok(Tensor::from_gpu(g.weight_shape(), dw));
    }
    with_float_type!(dtype, OP, |T| {
        let dw = backward_filter_cpu::<T>(host(dy)?, host(x)?, &g)?;
        Ok(Tensor::from_cpu(g.weight_shape(), dw))
    })
}

/// The data and filter gradients together (each only where wanted), as [`backward_data`]
/// and [`backward_filter`] compute them; on a GPU with towers on ([`ExecOptions::towers`]),
/// the groups of a grouped convolution compute both in one fork of side streams.
pub fn backward_data_and_filter(
    dy: &Tensor,
    x: &Tensor,
    w: &Tensor,
    p: Conv2dParams,
    (want_dx, want_dw): (bool, bool),
    exec: &ExecOptions,
) -> Result<(Option<Tensor>, Option<Tensor>)> {
    if exec.precision != Precision::Fp32 {
        // On the tensor cores each gradient is computed on its own (each forks its own towers).
        let (dtype, device) = common_dtype(OP, &[("output gradient", dy), ("input", x), ("weight", w)])?;
        if tensor_cores(dtype, device, exec)?.is_some() {
            let dx = if want_dx { Some(backward_data(dy, w, x.shape(), p, exec)?) } else { None };
            let dw = if want_dw { Some(backward_filter(dy, x, w.shape(), p, exec)?) } else { None };
            return Ok((dx, dw));
        }
        let (precision, fp32) = (exec.precision, ExecOptions { precision: Precision::Fp32, ..*exec });
        let (dy, x, w) = (round_tensor(dy, precision)?, round_tensor(x, precision)?, round_tensor(w, precision)?);
        let (mut dx, mut dw) = backward_data_and_filter(&dy, &x, &w, p, (want_dx, want_dw), &fp32)?;
        for t in dx.iter_mut().chain(dw.iter_mut()) {
            round_output(t, precision)?;
        }
        return Ok((dx, dw));
    }
    let g = ConvGeometry::new(x.shape(), w.shape(), p)?;
    expect_shape(OP, "output gradient", dy, &g.out_shape())?;
    let (dtype, device) = common_dtype(OP, &[("output gradient", dy), ("input", x), ("weight", w)])?;
    if let Some(gpu) = gpu_f32(OP, dtype, device)? {
        let (dx, dw) = gpu::backward_data_and_filter(
            &gpu,
            exec,
            dy.gpu_buffer()?,
            x.gpu_buffer()?,
            w.gpu_buffer()?,
            (want_dx, want_dw),
            &g,
        )?;
        return Ok((dx.map(|b| Tensor::from_gpu(g.in_shape(), b)), dw.map(|b| Tensor::from_gpu(g.weight_shape(), b))));
    }
    let dx = if want_dx { Some(backward_data(dy, w, x.shape(), p, exec)?) } else { None };
    let dw = if want_dw { Some(backward_filter(dy, x, w.shape(), p, exec)?) } else { None };
    Ok((dx, dw))
}

/// The gradient with respect to the bias: `dy` summed over batch, height and width.
pub fn backward_bias(dy: &Tensor) -> Result<Tensor> {
    let (n, o, oh, ow) = expect_nchw(OP, "output gradient", dy)?;
    if let Some(gpu) = gpu_f32(OP, dy.dtype(), dy.device())? {
        let db = gpu.alloc(dy.dtype(), o)?;
        gpu.launch(
            KernelCall::block_per_item("conv2d_bwd_bias_f32", o)?
                .buf(&db)
                .buf(dy.gpu_buffer()?)
                .i32(to_i32(OP, "batch", n)?)
                .i32(to_i32(OP, "channels", o)?)
                .i64(to_i64(oh * ow)),
        )?;
        return Ok(Tensor::from_gpu([o], db));
    }
    with_float_type!(dy.dtype(), OP, |T| {
        let dys = host::<T>(dy)?;
        let pixels = oh * ow;
        let db: Vec<T> = (0..o)
            .into_par_iter()
            .map(|oc| {
                // Summed in f64: the reference should be the most accurate party in a comparison.
                let mut s = 0.0f64;
                for img in 0..n {
                    let start = (img * o + oc) * pixels;
                    s += dys[start..start + pixels].iter().map(|v| v.to_f64()).sum::<f64>();
                }
                T::from_f64(s)
            })
            .collect();
        Ok(Tensor::from_cpu([o], db))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_follows_pytorch_output_sizes() {
        // AlexNet conv1: 227 → 55 with an 11×11 kernel at stride 4.
        let g = ConvGeometry::new(
            &Shape::from([1, 3, 227, 227]),
            &Shape::from([96, 3, 11, 11]),
            Conv2dParams::default().stride(4),
        )
        .unwrap();
        assert_eq!((g.oh, g.ow), (55, 55));
        // Dilation 2 on a 3×3 kernel spans 5 pixels: 10 + 2·1 − 5 + 1 = 8.
        let g = ConvGeometry::new(
            &Shape::from([1, 4, 10, 10]),
            &Shape::from([2, 2, 3, 3]),
            Conv2dParams::default().padding(1).dilation(2).groups(2),
        )
        .unwrap();
        assert_eq!((g.oh, g.ow), (8, 8));
        assert_eq!(g.k_per_group(), 18);
    }
}
