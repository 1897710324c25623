//! Local response normalisation across channels as its definition, PyTorch's
//! `nn.LocalResponseNorm` (α divided by `size`): plain loops over the N×C×HW layout, generic
//! over [`Float`] so that they run in f64 for the checks. At each image n and pixel q,
//!
//! ```text
//! W(c)  = { c' : c − ⌊size/2⌋ ≤ c' ≤ c + ⌊(size−1)/2⌋ } ∩ [0, C)
//! s[c]  = k + (α / size) · Σ_{c' ∈ W(c)} x[c']²
//! y[c]  = x[c] · s[c]^(−β)
//! dx[i] = dy[i] · s[i]^(−β) − (2αβ / size) · x[i] · Σ_{j : i ∈ W(j)} dy[j] · y[j] / s[j]
//! ```
//!
//! The backward takes the input alone (not the forward's output): it computes `s` and `y`
//! again from their definitions.

#![allow(clippy::needless_range_loop)] // indices, to read as the math does

use super::LrnParams;
use crate::tensor::Float;

/// Whether channel `i` is in the window `W(j)` of channel `j`.
fn in_window(i: usize, j: usize, size: usize) -> bool {
    let (i, j) = (i as isize, j as isize);
    j - (size / 2) as isize <= i && i <= j + ((size - 1) / 2) as isize
}

/// The channels within `size` of channel `ch`: every channel that can share a window with it
/// (the loops test each with [`in_window`]; this only spares them the rest).
fn near(ch: usize, size: usize, channels: usize) -> std::ops::Range<usize> {
    ch.saturating_sub(size)..(ch + size + 1).min(channels)
}

/// `s[n, c, q]` for every element.
fn scale<T: Float>(x: &[T], (n, c, hw): (usize, usize, usize), p: &LrnParams) -> Vec<T> {
    let alpha_over_size = T::from_f64(p.alpha) / T::from_usize(p.size);
    let mut s = vec![T::ZERO; n * c * hw];
    for img in 0..n {
        for ch in 0..c {
            for q in 0..hw {
                let mut energy = T::ZERO;
                for other in near(ch, p.size, c) {
                    if in_window(other, ch, p.size) {
                        let v = x[(img * c + other) * hw + q];
                        energy += v * v;
                    }
                }
                s[(img * c + ch) * hw + q] = T::from_f64(p.k) + alpha_over_size * energy;
            }
        }
    }
    s
}

/// `y = x · s^(−β)`, for `x` of `(N, C, HW)`.
pub fn forward<T: Float>(x: &[T], dims: (usize, usize, usize), p: &LrnParams) -> Vec<T> {
    let s = scale(x, dims, p);
    let mut y = vec![T::ZERO; x.len()];
    for e in 0..x.len() {
        y[e] = x[e] * s[e].powf(T::from_f64(-p.beta));
    }
    y
}

/// `dx` from the output gradient and the input.
pub fn backward<T: Float>(dy: &[T], x: &[T], (n, c, hw): (usize, usize, usize), p: &LrnParams) -> Vec<T> {
    let s = scale(x, (n, c, hw), p);
    let y = forward(x, (n, c, hw), p);
    let neg_beta = T::from_f64(-p.beta);
    let coef = T::from_f64(2.0 * p.alpha * p.beta) / T::from_usize(p.size);
    let mut dx = vec![T::ZERO; x.len()];
    for img in 0..n {
        for i in 0..c {
            for q in 0..hw {
                let at = |ch: usize| (img * c + ch) * hw + q;
                let mut through_s = T::ZERO;
                for j in near(i, p.size, c) {
                    if in_window(i, j, p.size) {
                        through_s += dy[at(j)] * y[at(j)] / s[at(j)];
                    }
                }
                dx[at(i)] = dy[at(i)] * s[at(i)].powf(neg_beta) - coef * x[at(i)] * through_s;
            }
        }
    }
    dx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_even_window_reaches_further_back_than_forward() {
        // size 2: W(c) = {c − 1, c}. One pixel, x = [1, 2, 3], α = 2 (α/size = 1), β = 1, k = 1:
        // s = [1 + 1, 1 + 1 + 4, 1 + 4 + 9] = [2, 6, 14].
        let p = LrnParams { size: 2, alpha: 2.0, beta: 1.0, k: 1.0 };
        let y = forward(&[1.0f64, 2.0, 3.0], (1, 3, 1), &p);
        let want = [0.5, 2.0 / 6.0, 3.0 / 14.0];
        for (a, b) in y.iter().zip(want) {
            assert!((a - b).abs() < 1e-15, "{y:?}");
        }
    }

    #[test]
    fn the_gradient_worked_by_hand() {
        // size 3 over two channels: each window holds both. α = 3 (α/size = 1), β = 1, k = 1,
        // x = [1, 2]: s = 1 + 1 + 4 = 6 for both, y = x/6. With dy = [1, 0] the loss is y0 =
        // x0 / (1 + x0² + x1²): ∂/∂x0 = (s − 2x0²)/s² = 4/36, ∂/∂x1 = −2·x0·x1/s² = −4/36.
        let p = LrnParams { size: 3, alpha: 3.0, beta: 1.0, k: 1.0 };
        let dx = backward(&[1.0f64, 0.0], &[1.0, 2.0], (1, 2, 1), &p);
        assert!((dx[0] - 1.0 / 9.0).abs() < 1e-15 && (dx[1] + 1.0 / 9.0).abs() < 1e-15, "{dx:?}");
        // Two pixels and two images are independent normalisations of the same kind.
        let x = [1.0f64, 0.0, 2.0, 0.0, 0.0, 1.0, 0.0, 2.0];
        let dx = backward(&[1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0], &x, (2, 2, 2), &p);
        let want = [1.0 / 9.0, 0.0, -1.0 / 9.0, 0.0, 0.0, 1.0 / 9.0, 0.0, -1.0 / 9.0];
        for (a, b) in dx.iter().zip(want) {
            assert!((a - b).abs() < 1e-15, "{dx:?}");
        }
    }
}
