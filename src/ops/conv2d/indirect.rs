//! conv2d forward on the `cpu` device without im2col, where the convolution allows it: the
//! GEMM's micro-kernel reads each step of B straight from the padded image.
//!
//! For a stride-1, undilated convolution, row `p = (c·KH + ky)·KW + kx` of one image's im2col
//! matrix, over output columns `j = oy·OW + ox`, is
//!
//! ```text
//! col[p, j] = xp[c, oy + ky, ox + kx]           (xp: the zero-padded image, PH × PW planes)
//!           = xp[(oy·PW + ox) + (c·PH·PW + ky·PW + kx)]
//! ```
//!
//! a base that depends on the column only plus an offset that depends on the step only (with
//! several images side by side in one product, the image's place in `xp` joins the base).
//! When the output width is a multiple of 16, each half of the micro-kernel's 32 columns lies
//! in one output row, so its 16 values of step `p` are contiguous in `xp`, at `base +
//! offset[p]`; when it is a multiple of 8, each quarter's 8 values are. The AVX-512 kernel
//! [`kernel_avx512_8x32_indirect`] loads them from there: B is never packed, which on
//! ResNet-20 (16 to 64 channels, 32×32 to 8×8 maps) took a fifth of the time, each gathered
//! value serving only two to eight micro-tiles.
//!
//! A stride-`s` convolution reads every `s`-th column, which no vector load can. Split into
//! its `sh·sw` phases first, `P[ry, rx][c, i, j] = xp[c, i·sh + ry, j·sw + rx`] (one copy of
//! the input, [`Source`]), the image is read at stride 1 again:
//!
//! ```text
//! col[p, j] = xp[c, oy·sh + ky, ox·sw + kx] = P[ky mod sh, kx mod sw][c, oy + ky div sh, ox + kx div sw]
//! ```
//!
//! a base `oy·PWs + ox` plus an offset for the step, as before (a stride-1 convolution has one
//! phase, the padded image itself).
//!
//! The blocking over the shared dimension is the GEMM's (`KC` steps; the first block writes C,
//! the others add to it) and the kernel issues the packed kernel's multiply-adds in the same
//! order, so the output is the bits of im2col + GEMM (`cpu.rs`), which is the fallback for
//! everything else: dilations, widths not a multiple of 8, other CPUs, f64.

use super::ConvGeometry;
use crate::ops::gemm::{GEMM_KC, PackA, with_packing_space_for_a};
use crate::tensor::{DType, Float};

/// Row blocks of the weights packed at a time (as the GEMM's MC).
const MC: usize = 96;

/// Whether [`product`] runs `g` on this CPU for `T`.
pub(super) fn applies<T: Float>(g: &ConvGeometry) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        T::DTYPE == DType::F32
            && g.params.dilation == (1, 1)
            && g.ow.is_multiple_of(8)
            && g.out_pixels() > 0
            && std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = g;
        false
    }
}

/// The padded images as [`product`] reads them: split into the stride's phases (see the
/// module's comment), or, at stride 1, the padded images themselves.
pub(super) struct Source<'a, T> {
    data: &'a [T],
    /// The stride, and the height and width of a phase plane.
    stride: (usize, usize),
    plane: (usize, usize),
    /// Values per image: `sh·sw·C·PHs·PWs`.
    image: usize,
}

impl<'a, T: Float> Source<'a, T> {
    /// `xp`, `m` images padded as `im2col::pad` pads them, split into phases in `buf` where
    /// the stride is not 1.
    pub(super) fn new(xp: &'a [T], g: &ConvGeometry, m: usize, buf: &'a mut Vec<T>) -> Source<'a, T> {
        let (hp, wp) = (g.h + 2 * g.params.padding.0, g.w + 2 * g.params.padding.1);
        let (sh, sw) = g.params.stride;
        let (phs, pws) = (hp.div_ceil(sh), wp.div_ceil(sw));
        let image = sh * sw * g.c * phs * pws;
        if (sh, sw) == (1, 1) {
            return Source { data: xp, stride: (1, 1), plane: (hp, wp), image };
        }
        buf.clear();
        buf.resize(m * image, T::ZERO);
        for (dst, src) in buf.chunks_exact_mut(image).zip(xp.chunks_exact(g.c * hp * wp)) {
            for (phase, dst) in dst.chunks_exact_mut(g.c * phs * pws).enumerate() {
                let (ry, rx) = (phase / sw, phase % sw);
                for (dst, src) in dst.chunks_exact_mut(phs * pws).zip(src.chunks_exact(hp * wp)) {
                    for (i, dst_row) in dst.chunks_exact_mut(pws).enumerate() {
                        let Some(src_row) = src.chunks_exact(wp).nth(i * sh + ry) else { break };
                        for (v, &x) in dst_row.iter_mut().zip(src_row.iter().skip(rx).step_by(sw)) {
                            *v = x;
                        }
                    }
                }
            }
        }
        Source { data: buf, stride: (sh, sw), plane: (phs, pws), image }
    }
}

/// `y_g = W_g · col_g` for `m` images side by side and group `grp`: `a` is `W_g` (`O/G ×
/// C/G·KH·KW`, packed or not), `x` the `m` images as [`Source`] lays them out, `y` the
/// group's `O/G × m·OH·OW` output, overwritten. Only where [`applies`] says so.
pub(super) fn product<T: Float>(
    a: impl PackA<T>,
    x: &Source<T>,
    g: &ConvGeometry,
    (m, grp): (usize, usize),
    y: &mut [T],
) {
    let ((sh, sw), (phs, pws)) = (x.stride, x.plane);
    let (cg, og, pix) = (g.c / g.groups(), g.o_per_group(), g.out_pixels());
    let cols = m * pix;
    assert!(applies::<T>(g) && x.data.len() >= m * x.image && y.len() == og * cols && a.rows() == og);
    // The step offsets, in im2col's row order, from the group's first channel: the phase of
    // the tap, the channel, the tap's row and column within the phase.
    let mut offsets = Vec::with_capacity(g.k_per_group());
    for c in grp * cg..(grp + 1) * cg {
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                let phase = (ky % sh) * sw + kx % sw;
                offsets.push((phase * g.c + c) * phs * pws + (ky / sh) * pws + kx / sw);
            }
        }
    }
    // Each column's base: its image's place, then its output pixel's place in a phase plane.
    let base = |j: usize| (j / pix) * x.image + (j % pix / g.ow) * pws + j % pix % g.ow;
    let k = offsets.len();
    let xp = x.data.as_ptr().cast::<f32>();
    let c = y.as_mut_ptr().cast::<f32>();
    // The packing space of the GEMM's row blocks, kept by the thread: A's panels are packed
    // there, unless the weights are kept packed and read in place.
    let space = MC.min(og).div_ceil(8) * 8 * GEMM_KC.min(k);
    with_packing_space_for_a(space, |scratch: &mut [T]| {
        for pc in (0..k).step_by(GEMM_KC) {
            let kc = GEMM_KC.min(k - pc);
            let offsets = &offsets[pc..pc + kc];
            for ic in (0..og).step_by(MC) {
                let mc = MC.min(og - ic);
                let panels = a.panels::<8>(ic, mc, pc, kc, &mut *scratch);
                // SAFETY: T is f32 (`applies`), so the panels are f32 values.
                let panels = unsafe { std::slice::from_raw_parts(panels.as_ptr().cast::<f32>(), panels.len()) };
                for jr in (0..cols).step_by(32) {
                    let nr = 32.min(cols - jr);
                    // The part starting at column jr + d, or the first part again past the last
                    // column (read, and never stored).
                    let part = |d: usize| if d < nr { base(jr + d) } else { base(jr) };
                    // SAFETY (for every read below): a part of w values (16 or 8, dividing OW and
                    // so the pixels of an image) lies in one output row of one image. Its value t
                    // at step (c, ky, kx) is phase (ky mod sh, kx mod sw), channel c, row oy + ky div
                    // sh, column ox + t + kx div sw of that image's phases, and since the output
                    // size keeps (oy·sh + ky, (ox + t)·sw + kx) inside the padded image, that row
                    // and column are inside a phase plane (PHs = ⌈PH/sh⌉, PWs = ⌈PW/sw⌉): inside
                    // x. The tile (ic + ir.., jr..) lies inside y; AVX-512F is present.
                    for ir in (0..mc).step_by(8) {
                        let mr = 8.min(mc - ir);
                        let a_panel = &panels[(ir / 8) * 8 * kc..][..8 * kc];
                        let tile = unsafe { c.add((ic + ir) * cols + jr) };
                        let shape = (tile, cols, mr, nr, pc > 0);
                        if g.ow.is_multiple_of(16) {
                            let parts = unsafe { [xp.add(part(0)), xp.add(part(16))] };
                            unsafe { kernel(kc, a_panel, parts, offsets, shape) };
                        } else {
                            let parts =
                                unsafe { [xp.add(part(0)), xp.add(part(8)), xp.add(part(16)), xp.add(part(24))] };
                            unsafe { kernel(kc, a_panel, parts, offsets, shape) };
                        }
                    }
                }
            }
        }
    });
}

/// The AVX-512 kernel, or nothing where it does not exist (never called there: `applies`).
/// `shape` is C's tile, its row stride, the tile's rows and columns, and whether to add.
///
/// # Safety
/// As for [`kernel_avx512_8x32_indirect`].
unsafe fn kernel<const PARTS: usize>(
    kc: usize,
    a: &[f32],
    parts: [*const f32; PARTS],
    offsets: &[usize],
    (c, ldc, mr, nr, accumulate): (*mut f32, usize, usize, usize, bool),
) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: forwarded from the caller.
    unsafe {
        crate::ops::gemm::x86::kernel_avx512_8x32_indirect(kc, a, parts, offsets, c, ldc, mr, nr, accumulate)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (kc, a, parts, offsets, c, ldc, mr, nr, accumulate);
        unreachable!("the indirect product runs only on x86-64 with AVX-512")
    }
}

#[cfg(test)]
mod tests {
    use super::super::im2col::{self, Im2col};
    use super::*;
    use crate::ops::conv2d::Conv2dParams;
    use crate::ops::gemm::{MatMut, MatRef, gemm};
    use crate::rng::Rng;
    use crate::tensor::Shape;

    /// The indirect product gives the bits of im2col + GEMM, for kernels of 1×1, 3×3, 5×3
    /// and 7×7, padded and not, strides 1, 2 and 3 (and 2 by 1), groups, output widths of 8,
    /// 16 and 32 (panels of one row, two and four), one image and several side by side,
    /// shared dimensions across KC blocks, and last panels of 8, 16 and 24 columns.
    #[test]
    fn gives_the_bits_of_im2col_and_gemm() {
        let p = Conv2dParams::default();
        let cases = [
            ([1, 16, 32, 32], [16, 16, 3, 3], p.padding(1)),
            ([1, 40, 16, 16], [20, 40, 3, 3], p.padding(1)),
            ([1, 8, 18, 34], [12, 8, 3, 3], p),
            ([1, 6, 16, 16], [10, 3, 5, 3], Conv2dParams { padding: (2, 1), ..p.groups(2) }),
            ([1, 70, 3, 16], [9, 70, 1, 1], p),
            ([4, 64, 8, 8], [24, 64, 3, 3], p.padding(1)),
            ([3, 30, 1, 8], [17, 30, 1, 1], p),
            ([2, 9, 5, 24], [11, 9, 3, 3], p.padding(1)),
            ([2, 16, 32, 32], [32, 16, 3, 3], p.padding(1).stride(2)),
            ([2, 3, 64, 64], [16, 3, 7, 7], p.padding(3).stride(2)),
            ([3, 12, 16, 15], [8, 12, 1, 1], p.stride(2)),
            ([1, 10, 9, 33], [6, 5, 3, 2], Conv2dParams { stride: (2, 1), padding: (1, 0), ..p.groups(2) }),
            ([1, 4, 20, 46], [5, 4, 5, 3], Conv2dParams { stride: (3, 3), padding: (2, 1), ..p }),
        ];
        for (xs, ws, p) in cases {
            let g = ConvGeometry::new(&Shape::from(xs), &Shape::from(ws), p).unwrap();
            if !applies::<f32>(&g) {
                assert!(!std::arch::is_x86_feature_detected!("avx512f"), "{xs:?} {ws:?} should apply");
                continue;
            }
            let mut r = Rng::new(3);
            let x: Vec<f32> = (0..xs.iter().product()).map(|_| r.uniform() as f32 - 0.5).collect();
            let w: Vec<f32> = (0..ws.iter().product()).map(|_| r.uniform() as f32 - 0.5).collect();
            let mut padded = Vec::new();
            let xp = im2col::pad(&x, &g, &mut padded);
            let (og, k, m) = (g.o_per_group(), g.k_per_group(), g.n);
            let cols = m * g.out_pixels();
            let (mut want, mut got) = (vec![f32::NAN; g.o * cols], vec![f32::NAN; g.o * cols]);
            let mut phases = Vec::new();
            let source = Source::new(xp, &g, m, &mut phases);
            for grp in 0..g.groups() {
                let w_g = MatRef::row_major(&w[grp * og * k..][..og * k], og, k);
                let y = MatMut::row_major(&mut want[grp * og * cols..][..og * cols], og, cols);
                gemm(w_g, Im2col::new(xp, &g, m, grp), y, false);
                product(w_g, &source, &g, (m, grp), &mut got[grp * og * cols..][..og * cols]);
            }
            assert_eq!(got, want, "{xs:?} {ws:?}");
        }
    }
}
