//! The im2col matrix as a GEMM operand that is never stored.
//!
//! A convolution is `y_g = W_g · col_g` (see the module comment of `conv2d`), where `col` has
//! one row per kernel tap `(c, ky, kx)` and one column per output pixel `(oy, ox)`:
//!
//! ```text
//! col[(c·KH + ky)·KW + kx, oy·OW + ox] = x[c, oy·sh − ph + ky·dh, ox·sw − pw + kx·dw]   (0 if outside)
//! ```
//!
//! Writing `col` out and then letting the GEMM copy it into its packed panels moves every
//! value twice, and for the small layers of a CIFAR network (16 channels, 144 taps) those
//! copies cost as much as the arithmetic. [`Im2col`] and [`Im2colT`] instead implement the
//! GEMM's [`PackB`]: when the GEMM asks for a block of the operand in its packed layout, they
//! gather it from the image directly. Same values, same order of the multiply-adds, one copy.
//!
//! - [`Im2col`] is `col` itself (taps × pixels), the right operand of the forward pass, for
//!   `m` images side by side (image j's columns start at `j·OH·OW`);
//! - [`Im2colT`] is `colᵀ` (pixels × taps), the right operand of the filter gradient
//!   `dW_g = dy_g · col_gᵀ`.
//!
//! Both read from the images zero-padded by the convolution's padding ([`pad`]): the output
//! size is defined so that every tap of every output pixel falls inside the padded image,
//! so the gathers need no bounds tests. They read one *run* at a time: consecutive output
//! pixels of one row of one image, for one tap, which read one row of the padded image at
//! the stride.

use super::ConvGeometry;
use crate::ops::gemm::PackB;
use crate::tensor::Float;

/// Output pixels of one image, cut out of the GEMM's columns (or rows): `len` consecutive
/// pixels of output row `oy` of image `img` starting at `ox`, landing at `at` in the panel.
#[derive(Clone, Copy, Default, Debug)]
struct Run {
    at: usize,
    img: usize,
    oy: usize,
    ox: usize,
    len: usize,
}

/// A row of `col`, as `(c, ky, kx)`, stepped through without divisions.
#[derive(Clone, Copy, Debug)]
struct Tap {
    c: usize,
    ky: usize,
    kx: usize,
}

impl Tap {
    fn of(row: usize, g: &ConvGeometry) -> Tap {
        Tap { c: row / (g.kh * g.kw), ky: row / g.kw % g.kh, kx: row % g.kw }
    }
    fn advance(&mut self, g: &ConvGeometry) {
        self.kx += 1;
        if self.kx == g.kw {
            self.kx = 0;
            self.ky += 1;
            if self.ky == g.kh {
                self.ky = 0;
                self.c += 1;
            }
        }
    }
}

/// Copies `m` images `[C, H, W]` into `buf` with the convolution's zero padding around each
/// plane, `[C, H + 2·ph, W + 2·pw]`, and returns them; returns `x` itself when there is no
/// padding.
pub(super) fn pad<'a, T: Float>(x: &'a [T], g: &ConvGeometry, buf: &'a mut Vec<T>) -> &'a [T] {
    let (ph, pw) = g.params.padding;
    if (ph, pw) == (0, 0) {
        return x;
    }
    let (hp, wp) = (g.h + 2 * ph, g.w + 2 * pw);
    let planes = x.len() / (g.h * g.w);
    buf.clear();
    buf.resize(planes * hp * wp, T::ZERO);
    for (dst, src) in buf.chunks_exact_mut(hp * wp).zip(x.chunks_exact(g.h * g.w)) {
        for (dst_row, src_row) in dst[ph * wp..].chunks_exact_mut(wp).zip(src.chunks_exact(g.w)) {
            dst_row[pw..pw + g.w].copy_from_slice(src_row);
        }
    }
    buf
}

/// The padded images a gather reads, with the geometry.
#[derive(Clone, Copy)]
struct Im2colGeometry<'a, T> {
    /// The padded images (see [`pad`]), from the first one the operand covers.
    x: &'a [T],
    g: ConvGeometry,
}

impl<T: Float> Im2colGeometry<'_, T> {
    /// Height and width of a padded plane.
    fn padded(&self) -> (usize, usize) {
        (self.g.h + 2 * self.g.params.padding.0, self.g.w + 2 * self.g.params.padding.1)
    }

    /// Cuts `len` consecutive im2col columns (output pixels, counted across images) starting
    /// at `first` into runs whose input values lie one after the other (at the width stride):
    /// runs that stay in one output row, or, for a pointwise convolution, whose input plane is
    /// the output plane, in one image (a 16×16 map is then one run of 256, not 16 of 16).
    /// Returns how many `runs` it filled.
    fn runs(&self, first: usize, len: usize, runs: &mut [Run]) -> usize {
        let (pix, ow) = (self.g.out_pixels(), self.g.ow);
        let whole_planes = self.g.is_pointwise();
        let mut count = 0;
        let mut col = first;
        while col < first + len {
            let (img, pixel) = (col / pix, col % pix);
            let (oy, ox) = (pixel / ow, pixel % ow);
            let n = if whole_planes { pix - pixel } else { ow - ox }.min(first + len - col);
            runs[count] = Run { at: col - first, img, oy, ox, len: n };
            count += 1;
            col += n;
        }
        count
    }

    /// Where in `x` the run's first value lies for this tap; the next ones follow at the
    /// width stride. Input pixel `oy·sh − ph + ky·dh` is row `oy·sh + ky·dh` of the padded
    /// plane, so the index is a sum of a part that depends on the tap and one that depends
    /// on the output pixel.
    #[inline(always)]
    fn start(&self, tap: Tap, run: &Run) -> usize {
        self.tap_offset(tap) + self.pixel_offset(run.img, run.oy, run.ox)
    }

    /// The tap's part of an index into `x`: `(c·Hp + ky·dh)·Wp + kx·dw`.
    #[inline(always)]
    fn tap_offset(&self, tap: Tap) -> usize {
        let (hp, wp) = self.padded();
        let p = &self.g.params;
        (tap.c * hp + tap.ky * p.dilation.0) * wp + tap.kx * p.dilation.1
    }

    /// The output pixel's part of an index into `x`: `(img·C·Hp + oy·sh)·Wp + ox·sw`.
    #[inline(always)]
    fn pixel_offset(&self, img: usize, oy: usize, ox: usize) -> usize {
        let (hp, wp) = self.padded();
        let p = &self.g.params;
        (img * self.g.c * hp + oy * p.stride.0) * wp + ox * p.stride.1
    }
}

/// `col_g` of images `0..m` of `x`, side by side: rows are group g's taps, columns `m·OH·OW`.
#[derive(Clone, Copy)]
pub(super) struct Im2col<'a, T> {
    geo: Im2colGeometry<'a, T>,
    /// The first row (tap) of the group, and the first column of this view.
    tap0: usize,
    col0: usize,
    cols: usize,
}

impl<'a, T: Float> Im2col<'a, T> {
    /// `x` holds `m` padded images (see [`pad`]) from the first one the product covers;
    /// `grp` is the group.
    pub(super) fn new(x: &'a [T], g: &ConvGeometry, m: usize, grp: usize) -> Self {
        Im2col { geo: Im2colGeometry { x, g: *g }, tap0: grp * g.k_per_group(), col0: 0, cols: m * g.out_pixels() }
    }
}

impl<T: Float> PackB<T> for Im2col<'_, T> {
    fn rows(&self) -> usize {
        self.geo.g.k_per_group()
    }
    fn cols(&self) -> usize {
        self.cols
    }
    fn cols_range(self, c0: usize, nc: usize) -> Self {
        debug_assert!(c0 + nc <= self.cols);
        Im2col { col0: self.col0 + c0, cols: nc, ..self }
    }
    fn pack<const NR: usize>(&self, p0: usize, kc: usize, j0: usize, nc: usize, out: &mut [T]) {
        let x = self.geo.x;
        for (q, panel) in out.chunks_exact_mut(NR * kc).take(nc.div_ceil(NR)).enumerate() {
            let width = NR.min(nc - q * NR);
            // The panel's columns are the same pixels at every step: cut them into runs once.
            let mut runs = [Run::default(); NR];
            let count = self.geo.runs(self.col0 + j0 + q * NR, width, &mut runs);
            let runs = &runs[..count];
            let mut tap = Tap::of(self.tap0 + p0, &self.geo.g);
            let sw = self.geo.g.params.stride.1;
            for slot in panel.chunks_exact_mut(NR) {
                if let ([run], 1) = (runs, sw)
                    && run.len == NR
                {
                    // The common case (an output row at least NR wide): one copy of a length
                    // known at compile time, which the compiler turns into a few vector moves.
                    let start = self.geo.start(tap, run);
                    slot.copy_from_slice(&x[start..start + NR]);
                } else {
                    for run in runs {
                        let (start, dst) = (self.geo.start(tap, run), &mut slot[run.at..run.at + run.len]);
                        if sw == 1 {
                            copy_run(dst, &x[start..start + run.len]);
                        } else {
                            for (d, &v) in dst.iter_mut().zip(x[start..].iter().step_by(sw)) {
                                *d = v;
                            }
                        }
                    }
                    slot[width..].fill(T::ZERO);
                }
                tap.advance(&self.geo.g);
            }
        }
    }
}

/// `dst.copy_from_slice(src)` for the runs of an output row narrower than a panel. The widths
/// of the networks' small maps (2 to 16 at 64×64 images, 7 and 14 at 224×224) are copied as
/// blocks of a size known at compile time, a few vector moves, where a copy of a length known
/// only at run time is a call to `memcpy`, which costs more than these few values.
#[inline(always)]
fn copy_run<T: Copy>(dst: &mut [T], src: &[T]) {
    #[inline(always)]
    fn fixed<T: Copy, const L: usize>(dst: &mut [T], src: &[T]) {
        if let (Ok(d), Ok(s)) = (<&mut [T; L]>::try_from(&mut *dst), <&[T; L]>::try_from(src)) {
            *d = *s;
        } else {
            dst.copy_from_slice(src);
        }
    }
    match dst.len() {
        2 => fixed::<T, 2>(dst, src),
        4 => fixed::<T, 4>(dst, src),
        7 => fixed::<T, 7>(dst, src),
        8 => fixed::<T, 8>(dst, src),
        14 => fixed::<T, 14>(dst, src),
        16 => fixed::<T, 16>(dst, src),
        _ => dst.copy_from_slice(src),
    }
}

/// `col_gᵀ` of the images in `x`: rows are output pixels (across images), columns group g's
/// taps. Packing it is a transpose (a panel's step is one pixel, across NR taps), done one
/// tap at a time so the reads run along the input rows.
#[derive(Clone, Copy)]
pub(super) struct Im2colT<'a, T> {
    geo: Im2colGeometry<'a, T>,
    /// The first tap of this view (the group's first plus the view's offset).
    tap0: usize,
    cols: usize,
    /// Output pixels of all the images: the rows.
    rows: usize,
}

impl<'a, T: Float> Im2colT<'a, T> {
    /// `x` holds `m` padded images (see [`pad`]); `grp` is the group.
    pub(super) fn new(x: &'a [T], g: &ConvGeometry, m: usize, grp: usize) -> Self {
        let (tap0, cols, rows) = (grp * g.k_per_group(), g.k_per_group(), m * g.out_pixels());
        Im2colT { geo: Im2colGeometry { x, g: *g }, tap0, cols, rows }
    }
}

impl<T: Float> PackB<T> for Im2colT<'_, T> {
    fn rows(&self) -> usize {
        self.rows
    }
    fn cols(&self) -> usize {
        self.cols
    }
    fn cols_range(self, c0: usize, nc: usize) -> Self {
        debug_assert!(c0 + nc <= self.cols);
        Im2colT { tap0: self.tap0 + c0, cols: nc, ..self }
    }
    fn pack<const NR: usize>(&self, p0: usize, kc: usize, j0: usize, nc: usize, out: &mut [T]) {
        let x = self.geo.x;
        // Entry (pixel p, tap t) is x[pixel part of p + tap part of t] (see `start`): the
        // pixel parts of the block's steps, the same for every panel, are listed once.
        let mut runs = vec![Run::default(); kc];
        let count = self.geo.runs(p0, kc, &mut runs);
        let mut pixels = Vec::with_capacity(kc);
        for run in &runs[..count] {
            let first = self.geo.pixel_offset(run.img, run.oy, run.ox);
            pixels.extend((0..run.len).map(|i| first + i * self.geo.g.params.stride.1));
        }
        for (q, panel) in out.chunks_exact_mut(NR * kc).take(nc.div_ceil(NR)).enumerate() {
            let width = NR.min(nc - q * NR);
            let mut taps = [0usize; NR];
            let mut tap = Tap::of(self.tap0 + j0 + q * NR, &self.geo.g);
            for offset in &mut taps[..width] {
                *offset = self.geo.tap_offset(tap);
                tap.advance(&self.geo.g);
            }
            #[cfg(target_arch = "x86_64")]
            if crate::ops::gemm::x86::gather::gather_panel(x, &pixels, &taps[..width], panel) {
                continue;
            }
            for (slot, &pixel) in panel.chunks_exact_mut(NR).zip(&pixels) {
                let x = &x[pixel..];
                for (d, &t) in slot.iter_mut().zip(&taps[..width]) {
                    *d = x[t];
                }
                slot[width..].fill(T::ZERO);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::conv2d::Conv2dParams;
    use crate::tensor::Shape;

    /// The im2col entry of the definition, for image `img`, tap row `row`, pixel `pix`.
    fn entry(x: &[f32], g: &ConvGeometry, img: usize, row: usize, pixel: usize) -> f32 {
        let p = &g.params;
        let (c, ky, kx) = (row / (g.kh * g.kw), row / g.kw % g.kh, row % g.kw);
        let (oy, ox) = (pixel / g.ow, pixel % g.ow);
        let iy = (oy * p.stride.0 + ky * p.dilation.0) as isize - p.padding.0 as isize;
        let ix = (ox * p.stride.1 + kx * p.dilation.1) as isize - p.padding.1 as isize;
        if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize {
            return 0.0;
        }
        x[((img * g.c + c) * g.h + iy as usize) * g.w + ix as usize]
    }

    /// Unpacks `B[p0.., j0..]` from the packed layout of [`PackB::pack`].
    fn unpacked<const NR: usize>(b: &impl PackB<f32>, p0: usize, kc: usize, j0: usize, nc: usize) -> Vec<f32> {
        let mut out = vec![f32::NAN; nc.div_ceil(NR) * NR * kc];
        b.pack::<NR>(p0, kc, j0, nc, &mut out);
        let mut m = vec![0.0; kc * nc];
        for p in 0..kc {
            for j in 0..nc {
                m[p * nc + j] = out[(j / NR) * NR * kc + p * NR + j % NR];
            }
            for j in nc..nc.div_ceil(NR) * NR {
                assert_eq!(out[(j / NR) * NR * kc + p * NR + j % NR], 0.0, "padding of the last panel");
            }
        }
        m
    }

    #[test]
    fn packed_blocks_match_the_definition() {
        // Stride 2 with dilation, asymmetric padding, two groups; and a plain 3×3.
        let cases = [
            ([3, 4, 7, 9], [6, 2, 3, 2], Conv2dParams { stride: (2, 1), padding: (1, 2), dilation: (1, 2), groups: 2 }),
            ([2, 3, 5, 5], [4, 3, 3, 3], Conv2dParams::default().padding(1)),
            // Rows of 20 and 40 pixels: blocks of 16 side by side (the transposing path).
            ([2, 3, 6, 20], [5, 3, 3, 3], Conv2dParams::default().padding(1)),
            ([1, 4, 3, 40], [2, 4, 1, 1], Conv2dParams::default()),
            // Output rows of 2, 4, 7, 8, 14 and 16 pixels: the widths copied as fixed blocks.
            ([3, 2, 2, 2], [3, 2, 3, 3], Conv2dParams::default().padding(1)),
            ([3, 2, 4, 4], [2, 2, 3, 3], Conv2dParams::default().padding(1)),
            ([2, 3, 7, 7], [2, 3, 1, 1], Conv2dParams::default()),
            ([2, 2, 5, 8], [2, 2, 3, 3], Conv2dParams::default().padding(1)),
            ([2, 1, 3, 14], [2, 1, 3, 3], Conv2dParams::default().padding(1)),
            ([3, 2, 4, 16], [3, 2, 3, 3], Conv2dParams::default().padding(1)),
        ];
        for (xs, ws, params) in cases {
            let g = ConvGeometry::new(&Shape::from(xs), &Shape::from(ws), params).unwrap();
            let x: Vec<f32> = (0..xs.iter().product::<usize>()).map(|i| i as f32 + 1.0).collect();
            let mut buf = Vec::new();
            let padded = pad(&x, &g, &mut buf);
            let (k, pix) = (g.k_per_group(), g.out_pixels());
            for grp in 0..g.groups() {
                let col = Im2col::new(padded, &g, g.n, grp);
                let col_t = Im2colT::new(padded, &g, g.n, grp);
                let cols = g.n * pix;
                // Blocks that start and end mid-panel and mid-image.
                for (p0, kc, j0, nc) in [(0, k, 0, cols), (1, k - 2, 3, cols - 5)] {
                    let got = unpacked::<8>(&col, p0, kc, j0, nc);
                    // The same block through a column view (how threads split a product), NR = 32.
                    let got32 = unpacked::<32>(&col.cols_range(j0, nc), p0, kc, 0, nc);
                    for p in 0..kc {
                        for j in 0..nc {
                            let c = j0 + j;
                            let want = entry(&x, &g, c / pix, grp * k + p0 + p, c % pix);
                            assert_eq!(got[p * nc + j], want, "col {p0} {kc} {j0} {nc}: {p} {j}");
                        }
                    }
                    assert_eq!(got32, got);
                }
                for (p0, kc, j0, nc) in [(0, cols, 0, k), (2, cols - 3, 1, k - 1)] {
                    let got = unpacked::<16>(&col_t, p0, kc, j0, nc);
                    assert_eq!(unpacked::<32>(&col_t.cols_range(j0, nc), p0, kc, 0, nc), got);
                    for p in 0..kc {
                        for j in 0..nc {
                            let c = p0 + p;
                            let want = entry(&x, &g, c / pix, grp * k + j0 + j, c % pix);
                            assert_eq!(got[p * nc + j], want, "colᵀ {p0} {kc} {j0} {nc}: {p} {j}");
                        }
                    }
                }
            }
        }
    }
}
