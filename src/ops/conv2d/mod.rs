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
//! (`gpu.rs` chooses and launches them, as the [`ExecOptions`] the op receives say).
//!
//! # How the CPU's fast path computes it: im2col + GEMM
//!
//! For one image, gather every input value that each output pixel reads into a matrix
//! `col` with one row per (channel, ky, kx) and one column per output pixel:
//!
//! ```text
//! col[(c·KH + ky)·KW + kx, oy·OW + ox] = x[c, oy·sh − ph + ky·dh, ox·sw − pw + kx·dw]
//! ```
//!
//! Then the convolution is one matrix product per group, `y_g = W_g · col_g`, where `W_g`
//! is the weight tensor of group g seen as an `(O/G) × (C/G·KH·KW)` matrix and `col_g` is
//! the block of rows of `col` that belongs to group g's channels (contiguous, because the
//! channel is the slowest index of a row). All the arithmetic happens in [`gemm`], the one
//! routine written for speed. `col` is never stored: the GEMM copies its operands into packed
//! panels anyway, and [`im2col::Im2col`] gathers each panel straight from the (zero-padded)
//! image, which halves the copying of a small layer.
//!
//! The two gradients reuse the same picture:
//!
//! - **data**: `dcol_g = W_gᵀ · dy_g`, then `col2im` scatters each entry of `dcol` back to
//!   the input pixel it was gathered from, adding where windows overlap; for stride 1 the
//!   same gradient is computed as a forward convolution of `dy` with the flipped, transposed
//!   weights, which runs the GEMM at a better shape and needs no col2im;
//! - **filter**: `dW_g = Σ_n dy_g · col_gᵀ` (the im2col of x is gathered again per image,
//!   transposed, by [`im2col::Im2colT`]);
//! - **bias**: `db[o] = Σ_{n, oy, ox} dy[n, o, oy, ox]`.
//!
//! Work is spread over images with rayon. The filter gradient sums over images, so it is
//! computed in a fixed number of batch chunks whose partial sums are added in order: the
//! result does not depend on the number of threads.

use rayon::prelude::*;

mod gpu;
mod im2col;
pub mod reference;

pub use gpu::ConvAlgo;

use super::gemm::{MatMut, MatRef, gemm, gemm_parallel};
use super::{ExecOptions, common_dtype, expect_nchw, expect_shape, gpu_f32, host, with_float_type};
use crate::device::gpu::{KernelCall, to_i32, to_i64};
use crate::device::host_memory::filled;
use crate::error::{Error, Result};
use crate::tensor::{Element, Float, Shape, Tensor};
use im2col::{Im2col, Im2colT};

const OP: &str = "conv2d";

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
    if let Some(gpu) = gpu_f32(OP, dtype, device)? {
        let bias = b.map(Tensor::gpu_buffer).transpose()?;
        let y = gpu::forward(&gpu, exec, x.gpu_buffer()?, w.gpu_buffer()?, bias, relu, &g)?;
        return Ok(Tensor::from_gpu(g.out_shape(), y));
    }
    let mut y = with_float_type!(dtype, OP, |T| {
        let bias = b.map(host::<T>).transpose()?;
        let y = forward_cpu::<T>(host(x)?, host(w)?, bias, &g)?;
        Ok(Tensor::from_cpu(g.out_shape(), y))
    })?;
    if relu {
        super::bias_act::bias_act_in_place(&mut y, None, true)?;
    }
    Ok(y)
}

/// The gradient with respect to the input, from the output gradient `dy` and the weights.
pub fn backward_data(dy: &Tensor, w: &Tensor, x_shape: &Shape, p: Conv2dParams, exec: &ExecOptions) -> Result<Tensor> {
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

fn forward_cpu<T: Float>(x: &[T], w: &[T], bias: Option<&[T]>, g: &ConvGeometry) -> Result<Vec<T>> {
    let (og, pix, in_len) = (g.o_per_group(), g.out_pixels(), g.c * g.h * g.w);
    // Images per product: one, unless the output maps are small (see MIN_GEMM_COLUMNS).
    let m = if pix < MIN_GEMM_COLUMNS { MIN_GEMM_COLUMNS.div_ceil(pix.max(1)).min(g.n).max(1) } else { 1 };
    let batches = g.n.div_ceil(m);
    // With fewer products than threads, let the GEMM itself share the work.
    let split_gemm = batches < rayon::current_num_threads();
    let mut y = filled(g.n * g.o * pix, T::ZERO)?;
    // Each task keeps its buffers (padded images, staged output) from one batch to the next.
    let buffers = || (Vec::new(), Vec::new());
    y.par_chunks_mut(m * g.o * pix).zip(x.par_chunks(m * in_len)).for_each_init(buffers, |bufs, (y_batch, x_batch)| {
        let (padded, staged) = bufs;
        let m = x_batch.len() / in_len;
        let x_batch = im2col::pad(x_batch, g, padded);
        // The product's output is [O, m·OH·OW]: for one image that is its NCHW output
        // already; for several it is staged and reordered below.
        let out = if m == 1 {
            &mut *y_batch
        } else {
            staged.resize(g.o * m * pix, T::ZERO);
            &mut staged[..]
        };
        for grp in 0..g.groups() {
            let k = g.k_per_group();
            let w_g = MatRef::row_major(&w[grp * og * k..][..og * k], og, k);
            let col_g = Im2col::new(x_batch, g, m, grp);
            let y_g = MatMut::row_major(&mut out[grp * og * m * pix..][..og * m * pix], og, m * pix);
            if split_gemm {
                gemm_parallel(w_g, col_g, y_g, false);
            } else {
                gemm(w_g, col_g, y_g, false);
            }
        }
        // [O, m·pix] back to NCHW, adding the bias on the way.
        for (j, y_img) in y_batch.chunks_exact_mut(g.o * pix).enumerate() {
            for (oc, plane) in y_img.chunks_exact_mut(pix).enumerate() {
                if m > 1 {
                    plane.copy_from_slice(&staged[(oc * m + j) * pix..][..pix]);
                }
                if let Some(b) = bias {
                    plane.iter_mut().for_each(|v| *v += b[oc]);
                }
            }
        }
    });
    Ok(y)
}

/// Below this many output pixels per image, the im2col matrices of several images are put
/// side by side for one GEMM: a per-image product with 4 columns (a 2×2 map, ResNet's last
/// stage on a 64×64 image) would use 4 of the 32 columns of the micro-kernel. Above it, one
/// product per image is as fast and needs no reordering of the output (measured when im2col
/// was still a stored matrix, on ResNet-20's first stage, 1024 pixels: a batched forward took
/// twice as long, its 19 MB im2col falling out of the L2 cache).
const MIN_GEMM_COLUMNS: usize = 256;

fn backward_data_cpu<T: Float>(dy: &[T], w: &[T], g: &ConvGeometry) -> Result<Vec<T>> {
    if let Some(dx) = backward_data_as_forward_cpu(dy, w, g)? {
        return Ok(dx);
    }
    let pix = g.out_pixels();
    let in_len = g.c * g.h * g.w;
    let mut dx = filled(g.n * in_len, T::ZERO)?;
    let split_gemm = g.n < rayon::current_num_threads();
    dx.par_chunks_mut(in_len).zip(dy.par_chunks(g.o * pix)).for_each_init(
        || Vec::new(),
        |dcol, (dx_img, dy_img)| {
            if g.is_pointwise() {
                // For a pointwise conv the GEMM's output *is* the input gradient.
                dcol_gemms(w, dy_img, dx_img, g, split_gemm);
            } else {
                dcol.resize(g.c * g.kh * g.kw * pix, T::ZERO);
                dcol_gemms(w, dy_img, dcol, g, split_gemm);
                col2im(dcol, g, dx_img);
            }
        },
    );
    Ok(dx)
}

/// The data gradient of a stride-1 convolution is itself a stride-1 convolution: of `dy` with
/// the weights transposed (input and output channels swapped, within each group) and flipped
/// (`ky → KH−1−ky`, `kx → KW−1−kx`), padded by each kernel's reach minus the original padding.
/// Input pixel `iy` received `w[ky]·x[iy]` in every output `oy = iy + ph − ky·dh`, so
/// `dx[iy] = Σ_ky w[ky]·dy[iy + ph − ky·dh]`, which with `ky' = KH−1−ky` reads
/// `dy[iy − ph' + ky'·dh]` at padding `ph' = (KH−1)·dh − ph`: a forward convolution.
///
/// Why bother on the CPU: the im2col route multiplies `Wᵀ·dy` with an inner dimension of only
/// O (16 in a CIFAR ResNet's first stage), which a GEMM runs far below its peak, and then
/// scatters the columns back with col2im. As a forward convolution the inner dimension is
/// O·KH·KW, the shape the forward pass already runs well, and no col2im is needed. Returns
/// `None` where it does not apply (strides above 1, padding beyond the kernel's reach).
fn backward_data_as_forward_cpu<T: Float>(dy: &[T], w: &[T], g: &ConvGeometry) -> Result<Option<Vec<T>>> {
    let p = g.params;
    let reach = ((g.kh - 1) * p.dilation.0, (g.kw - 1) * p.dilation.1);
    if g.is_pointwise() || p.stride != (1, 1) || reach.0 < p.padding.0 || reach.1 < p.padding.1 {
        return Ok(None);
    }
    let (og, cg, taps) = (g.o_per_group(), g.c / g.groups(), g.kh * g.kw);
    // w: [O, C/G, KH, KW] → flipped: [C, O/G, KH, KW], group by group.
    let mut flipped = filled(w.len(), T::ZERO)?;
    for grp in 0..g.groups() {
        for o in 0..og {
            for c in 0..cg {
                let src = &w[((grp * og + o) * cg + c) * taps..][..taps];
                let dst = &mut flipped[((grp * cg + c) * og + o) * taps..][..taps];
                for (d, s) in dst.iter_mut().zip(src.iter().rev()) {
                    *d = *s;
                }
            }
        }
    }
    let params = Conv2dParams { stride: (1, 1), padding: (reach.0 - p.padding.0, reach.1 - p.padding.1), ..p };
    let dy_shape = Shape::new([g.n, g.o, g.oh, g.ow]);
    let flipped_shape = Shape::new([g.c, og, g.kh, g.kw]);
    let Ok(transposed) = ConvGeometry::new(&dy_shape, &flipped_shape, params) else { return Ok(None) };
    debug_assert_eq!((transposed.oh, transposed.ow), (g.h, g.w));
    forward_cpu(dy, &flipped, None, &transposed).map(Some)
}

/// `dcol_g = W_gᵀ · dy_g` for every group of one image.
fn dcol_gemms<T: Float>(w: &[T], dy_img: &[T], dcol: &mut [T], g: &ConvGeometry, split_gemm: bool) {
    let (og, k, pix) = (g.o_per_group(), g.k_per_group(), g.out_pixels());
    for grp in 0..g.groups() {
        let w_g_t = MatRef::row_major(&w[grp * og * k..][..og * k], og, k).t();
        let dy_g = MatRef::row_major(&dy_img[grp * og * pix..][..og * pix], og, pix);
        let dcol_g = MatMut::row_major(&mut dcol[grp * k * pix..][..k * pix], k, pix);
        if split_gemm {
            gemm_parallel(w_g_t, dy_g, dcol_g, false);
        } else {
            gemm(w_g_t, dy_g, dcol_g, false);
        }
    }
}

fn backward_filter_cpu<T: Float>(dy: &[T], x: &[T], g: &ConvGeometry) -> Result<Vec<T>> {
    let (og, k, pix) = (g.o_per_group(), g.k_per_group(), g.out_pixels());
    let in_len = g.c * g.h * g.w;
    let w_len = g.o * k;
    // A fixed number of chunks, so the order of the additions depends on N alone.
    const CHUNKS: usize = 8;
    let per_chunk = g.n.div_ceil(CHUNKS).max(1);
    let split_gemm = g.n < rayon::current_num_threads();
    let partials: Vec<Vec<T>> = (0..g.n.div_ceil(per_chunk))
        .into_par_iter()
        .map(|chunk| {
            let mut dw = vec![T::ZERO; w_len];
            let mut padded = Vec::new();
            for img in chunk * per_chunk..((chunk + 1) * per_chunk).min(g.n) {
                let x_img = im2col::pad(&x[img * in_len..][..in_len], g, &mut padded);
                let dy_img = &dy[img * g.o * pix..][..g.o * pix];
                for grp in 0..g.groups() {
                    // dW_g [og, k] += dy_g [og, pix] · col_gᵀ [pix, k]. The taps (k) are the
                    // product's columns: at least 27 of them, where the output channels of a
                    // CIFAR network's first stage (16) would fill half of the 32-wide tile.
                    let dy_g = MatRef::row_major(&dy_img[grp * og * pix..][..og * pix], og, pix);
                    let col_g_t = Im2colT::new(x_img, g, 1, grp);
                    let dw_g = MatMut::row_major(&mut dw[grp * og * k..][..og * k], og, k);
                    if split_gemm {
                        gemm_parallel(dy_g, col_g_t, dw_g, true);
                    } else {
                        gemm(dy_g, col_g_t, dw_g, true);
                    }
                }
            }
            dw
        })
        .collect();
    let mut partials = partials.into_iter();
    let mut dw = match partials.next() {
        Some(dw) => dw,
        None => filled(w_len, T::ZERO)?,
    };
    for part in partials {
        dw.iter_mut().zip(&part).for_each(|(a, &b)| *a += b);
    }
    Ok(dw)
}

/// The output positions `o` in `0..out_len` whose input index `o·stride + offset` falls
/// inside `0..in_len`. Every other position reads padding. Computing this range once per
/// row replaces a bounds test per element.
fn valid_outputs(out_len: usize, in_len: usize, stride: usize, offset: isize) -> std::ops::Range<usize> {
    // First o with o·stride + offset >= 0.
    let lo = if offset >= 0 { 0 } else { (-offset) as usize }.div_ceil(stride);
    // First o with o·stride + offset >= in_len.
    let limit = in_len as isize - offset;
    let hi = if limit <= 0 { 0 } else { (limit as usize).div_ceil(stride) };
    lo.min(out_len)..hi.min(out_len).max(lo.min(out_len))
}

/// The adjoint of im2col: adds each entry of `col` to the input pixel it came from.
fn col2im<T: Float>(col: &[T], g: &ConvGeometry, x: &mut [T]) {
    let p = &g.params;
    let pix = g.out_pixels();
    x.fill(T::ZERO);
    for c in 0..g.c {
        let plane = &mut x[c * g.h * g.w..][..g.h * g.w];
        for ky in 0..g.kh {
            let y_off = (ky * p.dilation.0) as isize - p.padding.0 as isize;
            let rows = valid_outputs(g.oh, g.h, p.stride.0, y_off);
            for kx in 0..g.kw {
                let x_off = (kx * p.dilation.1) as isize - p.padding.1 as isize;
                let cols = valid_outputs(g.ow, g.w, p.stride.1, x_off);
                let src = &col[((c * g.kh + ky) * g.kw + kx) * pix..][..pix];
                if cols.is_empty() {
                    continue;
                }
                let ix0 = ((cols.start * p.stride.1) as isize + x_off) as usize;
                for oy in rows.clone() {
                    let iy = (oy * p.stride.0) as isize + y_off;
                    let in_row = &mut plane[iy as usize * g.w..][..g.w];
                    let from = &src[oy * g.ow..][cols.clone()];
                    for (d, &v) in in_row[ix0..].iter_mut().step_by(p.stride.1).zip(from) {
                        *d += v;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_outputs_matches_brute_force() {
        for out_len in 0..6 {
            for in_len in 0..7 {
                for stride in 1..4 {
                    for offset in -5isize..5 {
                        let want: Vec<usize> = (0..out_len)
                            .filter(|&o| {
                                let i = (o * stride) as isize + offset;
                                i >= 0 && i < in_len as isize
                            })
                            .collect();
                        let got: Vec<usize> = valid_outputs(out_len, in_len, stride, offset).collect();
                        assert_eq!(got, want, "out {out_len} in {in_len} s {stride} off {offset}");
                    }
                }
            }
        }
    }

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
