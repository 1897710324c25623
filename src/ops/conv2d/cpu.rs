//! conv2d on the `cpu` device: im2col + GEMM, the fast path that `reference.rs` checks.
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

use super::im2col::{self, Im2col, Im2colT};
use super::indirect;
use super::write_back::WriteBack;
use super::{Conv2dParams, ConvGeometry};
use crate::device::host_memory::filled;
use crate::error::Result;
use crate::ops::gemm::{MatMut, MatRef, PackA, PackB, PackedMatrix, gemm, gemm_parallel};
use crate::tensor::{Float, Shape};

/// `packed`, when given, is `w` packed for the GEMM, one matrix per group (kept between calls
/// by `packed_weights` when the weights do not change). `wb` (bias, batch norm, residual,
/// ReLU) is applied as each output plane is written, not in passes of its own.
pub(super) fn forward_cpu<T: Float>(
    x: &[T],
    w: &[T],
    packed: Option<&[PackedMatrix<T>]>,
    wb: &WriteBack<T>,
    g: &ConvGeometry,
) -> Result<Vec<T>> {
    let (og, pix, in_len) = (g.o_per_group(), g.out_pixels(), g.c * g.h * g.w);
    let m = images_per_product(g);
    let batches = g.n.div_ceil(m);
    // With fewer products than threads, let the GEMM itself share the work.
    let split_gemm = batches < rayon::current_num_threads();
    let mut y = filled(g.n * g.o * pix, T::ZERO)?;
    // Each task keeps its buffers (padded images, staged output, phases) from one batch to the
    // next.
    let buffers = || (Vec::new(), Vec::new(), Vec::new());
    let chunks = y.par_chunks_mut(m * g.o * pix).zip(x.par_chunks(m * in_len)).enumerate();
    chunks.for_each_init(buffers, |bufs, (batch, (y_batch, x_batch))| {
        let (padded, staged, phases) = bufs;
        let m = x_batch.len() / in_len;
        let x_batch = im2col::pad(x_batch, g, padded);
        // Where the micro-kernel can read B in place, the images as it reads them.
        let source = (!split_gemm && indirect::applies::<T>(g)).then(|| indirect::Source::new(x_batch, g, m, phases));
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
            if let Some(source) = &source {
                // B read from the padded images (or their phases) in place.
                let y_g = &mut out[grp * og * m * pix..][..og * m * pix];
                match packed {
                    Some(packed) => indirect::product(packed[grp].view(), source, g, (m, grp), y_g),
                    None => {
                        let w_g = MatRef::row_major(&w[grp * og * k..][..og * k], og, k);
                        indirect::product(w_g, source, g, (m, grp), y_g)
                    }
                }
                continue;
            }
            let col_g = Im2col::new(x_batch, g, m, grp);
            let y_g = MatMut::row_major(&mut out[grp * og * m * pix..][..og * m * pix], og, m * pix);
            match packed {
                Some(packed) => product(packed[grp].view(), col_g, y_g, split_gemm),
                None => product(MatRef::row_major(&w[grp * og * k..][..og * k], og, k), col_g, y_g, split_gemm),
            }
        }
        // [O, m·pix] back to NCHW, with the write-back's epilogue on the way.
        for (j, y_img) in y_batch.chunks_exact_mut(g.o * pix).enumerate() {
            for (oc, plane) in y_img.chunks_exact_mut(pix).enumerate() {
                if m > 1 {
                    plane.copy_from_slice(&staged[(oc * m + j) * pix..][..pix]);
                }
                wb.apply(plane, oc, ((batch * m + j) * g.o + oc) * pix);
            }
        }
    });
    Ok(y)
}

/// Images whose im2col matrices lie side by side in one product of the forward pass: one,
/// unless the output maps are small (see MIN_GEMM_COLUMNS).
pub(super) fn images_per_product(g: &ConvGeometry) -> usize {
    let pix = g.out_pixels();
    if pix < MIN_GEMM_COLUMNS { MIN_GEMM_COLUMNS.div_ceil(pix.max(1)).min(g.n).max(1) } else { 1 }
}

/// `y = a·b` on this thread, or shared among the threads when `split`.
fn product<T: Float>(a: impl PackA<T>, b: impl PackB<T>, y: MatMut<T>, split: bool) {
    if split { gemm_parallel(a, b, y, false) } else { gemm(a, b, y, false) }
}

/// Below this many output pixels per image, the im2col matrices of several images are put
/// side by side for one GEMM: a per-image product with 4 columns (a 2×2 map, ResNet's last
/// stage on a 64×64 image) would use 4 of the 32 columns of the micro-kernel. Above it, one
/// product per image is as fast and needs no reordering of the output (measured when im2col
/// was still a stored matrix, on ResNet-20's first stage, 1024 pixels: a batched forward took
/// twice as long, its 19 MB im2col falling out of the L2 cache).
const MIN_GEMM_COLUMNS: usize = 256;

pub(super) fn backward_data_cpu<T: Float>(dy: &[T], w: &[T], g: &ConvGeometry) -> Result<Vec<T>> {
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
    forward_cpu(dy, &flipped, None, &WriteBack::NONE, &transposed).map(Some)
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

pub(super) fn backward_filter_cpu<T: Float>(dy: &[T], x: &[T], g: &ConvGeometry) -> Result<Vec<T>> {
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
}
