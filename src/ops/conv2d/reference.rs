//! 2-D convolution as its definition: the plain loops every other convolution in scratchnet
//! is checked against (the CPU's im2col + GEMM path, the GPU kernels through the emulator and
//! on a GPU, `scratchnet selftest`). Slow, and written to be read: one loop per index of the
//! sum, no packing, no intrinsics, generic over [`Float`] so that it runs in f64 for the checks.
//!
//! With the layouts of PyTorch (x is N×C×H×W, w is O×(C/G)×KH×KW, y is N×O×OH×OW) and
//! g = o / (O/G) the group of output channel o:
//!
//! ```text
//! y[n, o, oy, ox] = b[o] + Σ_{c < C/G, ky, kx} w[o, c, ky, kx] · x[n, g·C/G + c, iy, ix]
//!     where iy = oy·sh − ph + ky·dh,  ix = ox·sw − pw + kx·dw   (x is 0 outside the image)
//! ```
//!
//! The two gradients follow from the chain rule applied to each multiply-add of that sum:
//! the multiply-add `y += w·x` sends `dy·x` to `dw` and `dy·w` to `dx`.

use super::ConvGeometry;
use crate::tensor::Float;

/// The input pixel `(iy, ix)` that output `(oy, ox)` reads through tap `(ky, kx)`; it may lie
/// in the padding (negative, or past the edge).
fn source(g: &ConvGeometry, oy: usize, ox: usize, ky: usize, kx: usize) -> (isize, isize) {
    let p = &g.params;
    (
        (oy * p.stride.0 + ky * p.dilation.0) as isize - p.padding.0 as isize,
        (ox * p.stride.1 + kx * p.dilation.1) as isize - p.padding.1 as isize,
    )
}

/// The index of `x[n, c, iy, ix]`, or `None` in the padding.
fn x_index(g: &ConvGeometry, n: usize, c: usize, (iy, ix): (isize, isize)) -> Option<usize> {
    let inside = iy >= 0 && ix >= 0 && (iy as usize) < g.h && (ix as usize) < g.w;
    inside.then(|| ((n * g.c + c) * g.h + iy as usize) * g.w + ix as usize)
}

/// Calls `f(y index, w index, x index)` for every multiply-add of the sum above whose input is
/// inside the image, in the order n, o, oy, ox, c, ky, kx.
fn for_each_multiply_add(g: &ConvGeometry, mut f: impl FnMut(usize, usize, usize)) {
    let groups = g.params.groups;
    let (cg, og) = (g.c / groups, g.o / groups);
    for n in 0..g.n {
        for o in 0..g.o {
            let first_channel = (o / og) * cg;
            for oy in 0..g.oh {
                for ox in 0..g.ow {
                    let y = ((n * g.o + o) * g.oh + oy) * g.ow + ox;
                    for c in 0..cg {
                        for ky in 0..g.kh {
                            for kx in 0..g.kw {
                                let w = ((o * cg + c) * g.kh + ky) * g.kw + kx;
                                if let Some(x) = x_index(g, n, first_channel + c, source(g, oy, ox, ky, kx)) {
                                    f(y, w, x);
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `y = conv(x, w) + b` (b per output channel, or none).
pub fn forward<T: Float>(x: &[T], w: &[T], b: Option<&[T]>, g: &ConvGeometry) -> Vec<T> {
    let plane = g.oh * g.ow;
    let mut y: Vec<T> = (0..g.n * g.o * plane).map(|i| b.map_or(T::ZERO, |b| b[(i / plane) % g.o])).collect();
    for_each_multiply_add(g, |yi, wi, xi| y[yi] += w[wi] * x[xi]);
    y
}

/// `dx[n, c, iy, ix] = Σ dy[n, o, oy, ox] · w[o, c', ky, kx]` over every multiply-add that
/// read that input pixel.
pub fn backward_data<T: Float>(dy: &[T], w: &[T], g: &ConvGeometry) -> Vec<T> {
    let mut dx = vec![T::ZERO; g.n * g.c * g.h * g.w];
    for_each_multiply_add(g, |yi, wi, xi| dx[xi] += dy[yi] * w[wi]);
    dx
}

/// `dw[o, c, ky, kx] = Σ dy[n, o, oy, ox] · x[n, g·C/G + c, iy, ix]` over n, oy, ox.
pub fn backward_filter<T: Float>(dy: &[T], x: &[T], g: &ConvGeometry) -> Vec<T> {
    let mut dw = vec![T::ZERO; g.o * (g.c / g.params.groups) * g.kh * g.kw];
    for_each_multiply_add(g, |yi, wi, xi| dw[wi] += dy[yi] * x[xi]);
    dw
}

/// `db[o] = Σ dy[n, o, oy, ox]` over n, oy, ox.
pub fn backward_bias<T: Float>(dy: &[T], g: &ConvGeometry) -> Vec<T> {
    let plane = g.oh * g.ow;
    let mut db = vec![T::ZERO; g.o];
    for (i, &d) in dy.iter().enumerate() {
        db[(i / plane) % g.o] += d;
    }
    db
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::conv2d::Conv2dParams;
    use crate::tensor::Shape;

    /// A case small enough to work by hand: one 3×3 image, a 2×2 filter, stride 1, no
    /// padding, so y is 2×2 and each output is the dot product of the filter with one window.
    #[test]
    fn the_loops_compute_the_definition_worked_by_hand() {
        let g =
            ConvGeometry::new(&Shape::from([1, 1, 3, 3]), &Shape::from([1, 1, 2, 2]), Conv2dParams::default()).unwrap();
        let x = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0];
        let w = [1.0, 0.0, 0.0, -1.0];
        // y[oy, ox] = x[oy, ox] − x[oy+1, ox+1] + 10 = −4 + 10.
        assert_eq!(forward(&x, &w, Some(&[10.0]), &g), [6.0, 6.0, 6.0, 6.0]);
        let dy = [1.0, 2.0, 3.0, 4.0];
        // dx: each dy goes to its window's top-left pixel (weight 1) and, negated, to its
        // bottom-right one (weight −1).
        assert_eq!(backward_data(&dy, &w, &g), [1.0, 2.0, 0.0, 3.0, 3.0, -2.0, 0.0, -3.0, -4.0]);
        // dw[ky, kx] = Σ dy[oy, ox] · x[oy + ky, ox + kx].
        assert_eq!(backward_filter(&dy, &x, &g), [37.0, 47.0, 67.0, 77.0]);
        assert_eq!(backward_bias(&dy, &g), [10.0]);
    }

    /// Padding reads zeros; groups read only their own channels.
    #[test]
    fn padding_reads_zeros_and_groups_read_their_own_channels() {
        let p = Conv2dParams::default().padding(1).groups(2);
        let g = ConvGeometry::new(&Shape::from([1, 2, 1, 1]), &Shape::from([2, 1, 3, 3]), p).unwrap();
        // Two channels of one pixel; each group's 3×3 filter sees its pixel at the centre tap.
        let x = [2.0, 3.0];
        let mut w = [0.0; 18];
        w[4] = 5.0; // group 0, centre
        w[9 + 4] = 7.0; // group 1, centre
        w[0] = 100.0; // a corner tap: always in the padding here
        assert_eq!(forward(&x, &w, None, &g), [10.0, 21.0]);
        assert_eq!(backward_data(&[1.0, 1.0], &w, &g), [5.0, 7.0]);
        let dw = backward_filter(&[1.0, 1.0], &x, &g);
        assert_eq!((dw[4], dw[13], dw[0]), (2.0, 3.0, 0.0));
    }
}
