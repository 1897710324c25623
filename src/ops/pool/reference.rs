//! Pooling as its definition: plain loops over every window of every plane, generic over
//! [`Float`] so that they run in f64 for the checks. With `(kh, kw)` the kernel, `(sh, sw)`
//! the stride and `(ph, pw)` the padding, output `(oy, ox)` of an H×W plane reads the input
//! pixels
//!
//! ```text
//! iy = oy·sh − ph + ky,  ix = ox·sw − pw + kx       (0 ≤ ky < kh, 0 ≤ kx < kw)
//! OH = ⌊(H + 2·ph − kh) / sh⌋ + 1,  OW likewise     (PyTorch, ceil_mode=False)
//! ```
//!
//! and a pixel outside the plane is padding:
//!
//! ```text
//! max:     y = max over the window's pixels in the plane (padding is −∞); the winner is
//!          the first maximum in the order ky, kx, and a NaN wins (the first NaN)
//!          dx[winner] += dy                               (summed over the windows it won)
//! average: y = (Σ over the window's pixels in the plane) / (kh·kw)    (count_include_pad)
//!          dx[each pixel of the window in the plane] += dy / (kh·kw)
//! global:  y[n, c] = (1/(H·W)) Σ_{iy, ix} x[n, c, iy, ix],  dx[n, c, iy, ix] = dy[n, c] / (H·W)
//! ```
//!
//! `dims` is the input's `(N, C, H, W)`; the parameters are assumed checked by the op (every
//! window holds at least one pixel of the plane).

use super::Pool2dParams;
use crate::tensor::Float;

/// `⌊(len + 2·pad − kernel) / stride⌋ + 1`.
pub fn output_size(len: usize, kernel: usize, stride: usize, pad: usize) -> usize {
    (len + 2 * pad - kernel) / stride + 1
}

/// `(OH, OW)` of a pooling of an H×W plane.
pub fn output_hw((_, _, h, w): (usize, usize, usize, usize), p: &Pool2dParams) -> (usize, usize) {
    (output_size(h, p.kernel.0, p.stride.0, p.padding.0), output_size(w, p.kernel.1, p.stride.1, p.padding.1))
}

/// Calls `f(window pixel index in x, output index in y)` for every pixel of every window that
/// lies in its plane, in the order n, c, oy, ox, ky, kx.
fn for_each_window_pixel(
    (n, c, h, w): (usize, usize, usize, usize),
    p: &Pool2dParams,
    mut f: impl FnMut(usize, usize),
) {
    let (oh, ow) = output_hw((n, c, h, w), p);
    for img in 0..n {
        for ch in 0..c {
            let plane = img * c + ch;
            for oy in 0..oh {
                for ox in 0..ow {
                    for ky in 0..p.kernel.0 {
                        for kx in 0..p.kernel.1 {
                            let iy = (oy * p.stride.0 + ky) as isize - p.padding.0 as isize;
                            let ix = (ox * p.stride.1 + kx) as isize - p.padding.1 as isize;
                            if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                                let xi = (plane * h + iy as usize) * w + ix as usize;
                                f(xi, (plane * oh + oy) * ow + ox);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The winner of each window: the index in `x` of its first maximum (or first NaN).
fn winners<T: Float>(x: &[T], dims: (usize, usize, usize, usize), p: &Pool2dParams) -> Vec<Option<usize>> {
    let (oh, ow) = output_hw(dims, p);
    let mut best: Vec<Option<usize>> = vec![None; dims.0 * dims.1 * oh * ow];
    for_each_window_pixel(dims, p, |xi, yi| {
        let v = x[xi];
        let better = match best[yi] {
            None => true,
            Some(b) => !x[b].is_nan() && (v > x[b] || v.is_nan()),
        };
        if better {
            best[yi] = Some(xi);
        }
    });
    best
}

pub fn max_pool2d_forward<T: Float>(x: &[T], dims: (usize, usize, usize, usize), p: &Pool2dParams) -> Vec<T> {
    winners(x, dims, p).into_iter().map(|b| b.map_or(T::NEG_INFINITY, |b| x[b])).collect()
}

/// `dx[winner of window] += dy[window]`.
pub fn max_pool2d_backward<T: Float>(
    dy: &[T],
    x: &[T],
    dims: (usize, usize, usize, usize),
    p: &Pool2dParams,
) -> Vec<T> {
    let mut dx = vec![T::ZERO; x.len()];
    for (yi, b) in winners(x, dims, p).into_iter().enumerate() {
        if let Some(b) = b {
            dx[b] += dy[yi];
        }
    }
    dx
}

pub fn avg_pool2d_forward<T: Float>(x: &[T], dims: (usize, usize, usize, usize), p: &Pool2dParams) -> Vec<T> {
    let (oh, ow) = output_hw(dims, p);
    let mut sums = vec![T::ZERO; dims.0 * dims.1 * oh * ow];
    for_each_window_pixel(dims, p, |xi, yi| sums[yi] += x[xi]);
    let area = T::from_usize(p.kernel.0 * p.kernel.1);
    sums.into_iter().map(|s| s / area).collect()
}

/// `dx[pixel] += dy[window] / (kh·kw)` for each pixel of each window.
pub fn avg_pool2d_backward<T: Float>(dy: &[T], dims: (usize, usize, usize, usize), p: &Pool2dParams) -> Vec<T> {
    let (n, c, h, w) = dims;
    let area = T::from_usize(p.kernel.0 * p.kernel.1);
    let mut dx = vec![T::ZERO; n * c * h * w];
    for_each_window_pixel(dims, p, |xi, yi| dx[xi] += dy[yi] / area);
    dx
}

/// The mean of each plane, `[N, C]` (stored as `[N, C, 1, 1]`).
pub fn global_avg_pool_forward<T: Float>(x: &[T], (n, c, h, w): (usize, usize, usize, usize)) -> Vec<T> {
    let mut y = vec![T::ZERO; n * c];
    for plane in 0..n * c {
        let mut sum = T::ZERO;
        for i in 0..h * w {
            sum += x[plane * h * w + i];
        }
        y[plane] = sum / T::from_usize(h * w);
    }
    y
}

pub fn global_avg_pool_backward<T: Float>(dy: &[T], (n, c, h, w): (usize, usize, usize, usize)) -> Vec<T> {
    let mut dx = vec![T::ZERO; n * c * h * w];
    for plane in 0..n * c {
        for i in 0..h * w {
            dx[plane * h * w + i] = dy[plane] / T::from_usize(h * w);
        }
    }
    dx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlapping_max_windows_worked_by_hand() {
        // 3×3 windows at stride 2 on a 5×5 plane (x[i] = 7i mod 25) → 2×2; the windows share
        // row 2 and column 2.
        //  0  7 14 21  3
        // 10 17 24  6 13
        // 20  2  9 16 23
        //  5 12 19  1  8
        // 15 22  4 11 18
        let x: Vec<f64> = (0..25).map(|v| ((v * 7) % 25) as f64).collect();
        let (dims, p) = ((1, 1, 5, 5), Pool2dParams::new(3, 2));
        assert_eq!(output_hw(dims, &p), (2, 2));
        assert_eq!(max_pool2d_forward(&x, dims, &p), [24.0, 24.0, 22.0, 23.0]);
        let dx = max_pool2d_backward(&[1.0, 2.0, 3.0, 4.0], &x, dims, &p);
        let mut want = [0.0; 25];
        want[7] = 1.0 + 2.0; // 24 wins the two upper windows
        want[21] = 3.0; // 22
        want[14] = 4.0; // 23
        assert_eq!(dx, want);
    }

    #[test]
    fn max_ties_go_to_the_first_and_nan_wins() {
        // One 1×4 window over [1, 3, 3, 2]: the first 3 wins.
        let p = Pool2dParams { kernel: (1, 4), stride: (1, 1), padding: (0, 0) };
        let dims = (1, 1, 1, 4);
        assert_eq!(max_pool2d_backward(&[5.0], &[1.0, 3.0, 3.0, 2.0], dims, &p), [0.0, 5.0, 0.0, 0.0]);
        let x = [1.0, f64::NAN, 9.0, f64::NAN];
        assert!(max_pool2d_forward(&x, dims, &p)[0].is_nan());
        assert_eq!(max_pool2d_backward(&[5.0], &x, dims, &p), [0.0, 5.0, 0.0, 0.0]);
        // Padding never wins, even over negative values.
        let p = Pool2dParams::new(3, 1).padding(1);
        assert_eq!(max_pool2d_forward(&[-5.0, -6.0, -7.0, -8.0], (1, 1, 2, 2), &p), [-5.0; 4]);
    }

    #[test]
    fn average_windows_count_the_padding_worked_by_hand() {
        // 2×2 plane [1 2; 3 4], 2×2 windows at stride 1 with padding 1 → 3×3 outputs, each
        // the sum of its pixels in the plane over 4:
        // [1, 1+2, 2; 1+3, 10, 2+4; 3, 3+4, 4] / 4.
        let (dims, p) = ((1, 1, 2, 2), Pool2dParams::new(2, 1).padding(1));
        let y = avg_pool2d_forward(&[1.0, 2.0, 3.0, 4.0], dims, &p);
        assert_eq!(y, [0.25, 0.75, 0.5, 1.0, 2.5, 1.5, 0.75, 1.75, 1.0]);
        // Each pixel is in four windows; with dy = 4 everywhere it receives 4 · 4/4 = 4, and
        // dy = 1 at the centre window alone gives 1/4 to each pixel.
        assert_eq!(avg_pool2d_backward(&[4.0; 9], dims, &p), [4.0; 4]);
        let mut centre = [0.0; 9];
        centre[4] = 1.0;
        assert_eq!(avg_pool2d_backward(&centre, dims, &p), [0.25; 4]);
    }

    #[test]
    fn global_average_worked_by_hand() {
        let dims = (1, 2, 1, 3);
        assert_eq!(global_avg_pool_forward(&[1.0, 2.0, 3.0, -3.0, 0.0, 0.0], dims), [2.0, -1.0]);
        assert_eq!(global_avg_pool_backward(&[3.0, 6.0], dims), [1.0, 1.0, 1.0, 2.0, 2.0, 2.0]);
    }
}
