//! conv2d forward on the `cpu` device for small output maps: one product per kernel tap,
//! turned around so the output pixels are the rows, and only over the pixels whose tap lands
//! inside the image. The padding's zeros are never multiplied.
//!
//! im2col + GEMM (`cpu.rs`) multiplies every tap of every window, padding included. On a
//! large map that is a thin border; on a small one it is much of the work: a 3×3 convolution
//! of a 2×2 map (ResNet-18's last stage on a 64×64 image) reads 16 values inside the image
//! out of 36, a 4×4 map 100 of 144. Split by tap instead, the convolution is a sum of
//! shifted pointwise products,
//!
//! ```text
//! y[n, o, oy, ox] = Σ_{ky, kx} Σ_c W[o, c, ky, kx] · x[n, c, oy·sh − ph + ky·dh, ox·sw − pw + kx·dw]
//! ```
//!
//! and for each tap `(ky, kx)` and output row `oy` whose input row `iy` is inside the image,
//! the output columns whose `ix` is inside too form one range `ox_lo..ox_hi`. Their pixels,
//! for all the images of the batch, are the rows of one product:
//!
//! ```text
//! yᵀ[(oy, ox, n), o] += Σ_c xᵀ[(ox, n), c] · W_tapᵀ[c, o]        for ox in ox_lo..ox_hi
//! ```
//!
//! `yᵀ` keeps its rows in the order (oy, ox, n), so those rows are contiguous; `xᵀ` is
//! gathered for them (a few images × a few pixels × C values); `W_tapᵀ` is the weights of one
//! tap, `C × O`, packed once and kept (`packed_weights.rs`, [`PackedBMatrix`]). Turned around
//! this way, the images of the batch fill the micro-kernel's rows (8 on AVX-512) where, as
//! columns, a 2×2 map's 4 pixels per image would fill a few of its 32. At the end `yᵀ` goes
//! back to NCHW, with the bias and the ReLU.
//!
//! [`pays`] chooses between the two by counting the multiply-adds each would run, whole
//! micro-tiles included: this path wins on small maps with padding and loses on large ones
//! (each tap's product adds its result to `yᵀ` in memory, a pass im2col's one long product
//! does not make) and on pointwise convolutions, which have no padding to skip.

use std::ops::Range;

use rayon::prelude::*;

use super::ConvGeometry;
use super::write_back::WriteBack;
use crate::device::host_memory::filled;
use crate::error::Result;
use crate::ops::gemm::{MatMut, MatRef, PackedBMatrix, cpu_tile, gemm, gemm_parallel};
use crate::tensor::Float;

/// The output positions `o` (of `out_len`) at which kernel index `k` reads inside an input of
/// `in_len`: `0 ≤ o·stride − pad + k·dilation < in_len`.
fn inside(k: usize, (in_len, out_len): (usize, usize), stride: usize, pad: usize, dilation: usize) -> Range<usize> {
    let offset = (k * dilation) as isize - pad as isize;
    let first = if offset >= 0 { 0 } else { (-offset) as usize }.div_ceil(stride);
    let end = if (in_len as isize) > offset { (in_len as isize - offset) as usize } else { 0 }.div_ceil(stride);
    first.min(out_len)..end.min(out_len)
}

/// The output rows at which tap row `ky` reads inside the image.
fn rows_inside(g: &ConvGeometry, ky: usize) -> Range<usize> {
    inside(ky, (g.h, g.oh), g.params.stride.0, g.params.padding.0, g.params.dilation.0)
}

/// The output columns at which tap column `kx` reads inside the image.
fn cols_inside(g: &ConvGeometry, kx: usize) -> Range<usize> {
    inside(kx, (g.w, g.ow), g.params.stride.1, g.params.padding.1, g.params.dilation.1)
}

/// Whether this path runs fewer multiply-adds than im2col + GEMM for `g` (ungrouped), with
/// `images_per_product` images side by side in each of the latter's products, counting the
/// whole micro-tiles (`MR×NR` on this CPU) each computes: by a fifth at least, to pay for
/// its passes over `yᵀ`.
pub(super) fn pays<T: Float>(g: &ConvGeometry, images_per_product: usize) -> bool {
    if g.groups() != 1 || g.n == 0 || g.out_pixels() == 0 {
        return false;
    }
    let (mr, nr) = cpu_tile::<T>();
    let whole = |len: usize, tile: usize| len.div_ceil(tile) * tile;
    let k = g.k_per_group();
    let products = (0..g.n).step_by(images_per_product).map(|n0| images_per_product.min(g.n - n0));
    let im2col: usize = products.map(|m| whole(g.o, mr) * k * whole(m * g.out_pixels(), nr)).sum();
    let mut taps = 0;
    for ky in 0..g.kh {
        for kx in 0..g.kw {
            let rows = rows_inside(g, ky).len() * whole(g.n * cols_inside(g, kx).len(), mr);
            taps += rows * g.c * whole(g.o, nr);
        }
    }
    5 * taps <= 4 * im2col
}

/// `W_tapᵀ` for every tap `(ky, kx)`, in that order: `C × O` matrices packed for the GEMM.
pub(super) fn pack_taps<T: Float>(w: &[T], g: &ConvGeometry) -> Vec<PackedBMatrix<T>> {
    let taps = g.kh * g.kw;
    (0..taps)
        // Element (c, o) of tap t is w[o, c, t] = w[(o·C + c)·taps + t].
        .map(|t| PackedBMatrix::new(MatRef::new(&w[t..], g.c, g.o, taps, g.c * taps)))
        .collect()
}

/// `conv(x, w)` for an ungrouped `g`, from the weights as [`pack_taps`] gives them, with the
/// write-back's epilogue.
pub(super) fn forward<T: Float>(
    x: &[T],
    taps: &[PackedBMatrix<T>],
    wb: &WriteBack<T>,
    g: &ConvGeometry,
) -> Result<Vec<T>> {
    let (n, c, o) = (g.n, g.c, g.o);
    let (sh, sw) = g.params.stride;
    let (ph, pw) = g.params.padding;
    let (dh, dw) = g.params.dilation;
    // yᵀ: rows (oy, ox, image), one column per output channel; a block of rows per oy.
    let mut yt = filled(g.out_pixels() * n * o, T::ZERO)?;
    // With fewer output rows than threads, each product is shared instead.
    let split = g.oh < rayon::current_num_threads();
    yt.par_chunks_mut(g.ow * n * o).enumerate().for_each_init(Vec::new, |xt, (oy, yt_row)| {
        for ky in (0..g.kh).filter(|&ky| rows_inside(g, ky).contains(&oy)) {
            let iy = oy * sh + ky * dh - ph;
            for kx in 0..g.kw {
                let ox = cols_inside(g, kx);
                let rows = ox.len() * n;
                if rows == 0 {
                    continue;
                }
                // xᵀ[(ox, image), c] = x[image, c, iy, ix].
                xt.resize(rows * c, T::ZERO);
                for (i, ox) in ox.clone().enumerate() {
                    let ix = ox * sw + kx * dw - pw;
                    for image in 0..n {
                        let row = &mut xt[(i * n + image) * c..][..c];
                        let first = (image * c * g.h + iy) * g.w + ix;
                        for (ch, v) in row.iter_mut().enumerate() {
                            *v = x[first + ch * g.h * g.w];
                        }
                    }
                }
                let a = MatRef::row_major(&xt[..rows * c], rows, c);
                let y = MatMut::row_major(&mut yt_row[ox.start * n * o..][..rows * o], rows, o);
                let b = taps[ky * g.kw + kx].view();
                if split { gemm_parallel(a, b, y, true) } else { gemm(a, b, y, true) }
            }
        }
    });
    // yᵀ back to NCHW, with the write-back's epilogue.
    let pix = g.out_pixels();
    let mut y = filled(n * o * pix, T::ZERO)?;
    y.par_chunks_mut(o * pix).enumerate().for_each(|(image, y_img)| {
        for (oc, plane) in y_img.chunks_exact_mut(pix).enumerate() {
            for (p, v) in plane.iter_mut().enumerate() {
                *v = yt[(p * n + image) * o + oc];
            }
            wb.apply(plane, oc, (image * o + oc) * pix);
        }
    });
    Ok(y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::conv2d::Conv2dParams;
    use crate::ops::conv2d::reference;
    use crate::rng::Rng;
    use crate::tensor::Shape;

    fn geometry(x: [usize; 4], w: [usize; 4], p: Conv2dParams) -> ConvGeometry {
        ConvGeometry::new(&Shape::from(x), &Shape::from(w), p).unwrap()
    }

    fn random(len: usize, seed: u64) -> Vec<f32> {
        let mut r = Rng::new(seed);
        (0..len).map(|_| (r.uniform() * 2.0 - 1.0) as f32).collect()
    }

    /// The ranges are exactly the positions whose input index is inside, for strides,
    /// paddings and dilations of every kind, maps smaller than the kernel included.
    #[test]
    fn the_ranges_hold_exactly_the_taps_inside() {
        for in_len in 1usize..9 {
            for (k, stride, pad, dilation) in [(3, 1, 1, 1), (3, 2, 1, 1), (7, 2, 3, 1), (3, 1, 2, 2), (1, 2, 0, 1)] {
                let span = dilation * (k - 1) + 1;
                if in_len + 2 * pad < span {
                    continue;
                }
                let out_len = (in_len + 2 * pad - span) / stride + 1;
                for kk in 0..k {
                    let r = inside(kk, (in_len, out_len), stride, pad, dilation);
                    for o in 0..out_len {
                        let i = (o * stride + kk * dilation) as isize - pad as isize;
                        assert_eq!(
                            r.contains(&o),
                            (0..in_len as isize).contains(&i),
                            "{in_len} {k} {stride} {pad} {o}"
                        );
                    }
                }
            }
        }
    }

    /// Against the plain reference: 2×2 and 4×4 maps, stride 2, dilation, a kernel larger
    /// than the map, one image and several, with bias and ReLU.
    #[test]
    fn matches_the_reference() {
        let p = Conv2dParams::default();
        let cases = [
            ([8, 40, 2, 2], [70, 40, 3, 3], p.padding(1)),
            ([3, 16, 4, 4], [33, 16, 3, 3], p.padding(1)),
            ([2, 9, 4, 4], [12, 9, 3, 3], p.padding(1).stride(2)),
            ([2, 5, 5, 4], [6, 5, 3, 3], p.padding(2).dilation(2)),
            ([1, 6, 3, 3], [4, 6, 7, 7], p.padding(3)),
            ([5, 300, 2, 2], [40, 300, 3, 3], p.padding(1)),
        ];
        for (i, (xs, ws, p)) in cases.into_iter().enumerate() {
            let g = geometry(xs, ws, p);
            let x = random(xs.iter().product(), 10 + i as u64);
            let w = random(ws.iter().product(), 20 + i as u64);
            let b = random(g.o, 30 + i as u64);
            let taps = pack_taps(&w, &g);
            for (bias, relu) in [(None, false), (Some(&b[..]), true)] {
                let wb = WriteBack { bias, relu, ..WriteBack::NONE };
                let got = forward(&x, &taps, &wb, &g).unwrap();
                let want: Vec<f32> = reference::forward(&x, &w, bias, &g)
                    .into_iter()
                    .map(|v| if relu { v.max(0.0) } else { v })
                    .collect();
                let err = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
                let scale = want.iter().map(|v| v.abs()).fold(0.0f32, f32::max);
                assert!(err <= 1e-5 * scale.max(1.0), "case {i}: max error {err} of {scale}");
            }
        }
    }

    /// Chosen for the small padded maps it is written for, not for large maps or pointwise
    /// convolutions.
    #[test]
    fn pays_where_the_padding_is_much_of_the_work() {
        let p = Conv2dParams::default().padding(1);
        assert!(pays::<f32>(&geometry([8, 512, 2, 2], [512, 512, 3, 3], p), 8));
        assert!(pays::<f32>(&geometry([8, 256, 4, 4], [256, 256, 3, 3], p), 8));
        assert!(!pays::<f32>(&geometry([8, 64, 32, 32], [64, 64, 3, 3], p), 1));
        assert!(!pays::<f32>(&geometry([8, 512, 2, 2], [512, 512, 1, 1], Conv2dParams::default()), 8));
        assert!(!pays::<f32>(&geometry([8, 8, 4, 4], [8, 4, 3, 3], p.groups(2)), 8));
    }
}
