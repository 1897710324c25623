//! Batch normalisation as its definition, and the fused form `act(BN(x) + residual)`: plain
//! loops over the N×C×HW layout, one sum at a time, generic over [`Float`] so that they run in
//! f64 for the checks. Per channel c, over its `M = N·HW` values:
//!
//! ```text
//! training:  μ = (1/M) Σ x,   σ² = (1/M) Σ (x − μ)²        (the biased variance, as PyTorch)
//! eval:      μ, σ² = running_mean, running_var
//! x̂ = (x − μ) / √(σ² + ε),    y = γ · x̂ + β
//!
//! dβ = Σ dy,   dγ = Σ dy · x̂
//! dx = γ / √(σ² + ε) · (dy − dβ / M − x̂ · dγ / M)         (training: μ, σ² depend on x)
//! dx = γ / √(σ² + ε) · dy                                   (eval: μ, σ² are constants)
//!
//! running_mean ← (1 − m) · running_mean + m · μ
//! running_var  ← (1 − m) · running_var  + m · σ² · M / (M − 1)   (the unbiased variance)
//! ```
//!
//! The fused form adds a residual `r` after the normalisation and, optionally, a ReLU:
//!
//! ```text
//! y  = act(γ · x̂ + β + r)
//! dz = dy where y > 0 or y is NaN, else 0        (dy itself without the ReLU)
//! dx, dγ, dβ = the batch norm's gradients above, of dz;   dr = dz
//! ```
//!
//! `dims` is `(N, C, HW)`.

#![allow(clippy::needless_range_loop)] // indices, to read as the math does

use crate::ops::elementwise::reference::{relu_of, relu_passed};
use crate::tensor::Float;

/// The index of value `p` of channel `ch` in image `img`.
fn at((_, c, hw): (usize, usize, usize), img: usize, ch: usize, p: usize) -> usize {
    (img * c + ch) * hw + p
}

/// The batch statistics `(μ, σ²)` per channel: the mean, then the mean of the squared
/// deviations from it.
pub fn batch_stats<T: Float>(x: &[T], dims: (usize, usize, usize)) -> (Vec<T>, Vec<T>) {
    let (n, c, hw) = dims;
    let m = T::from_usize(n * hw);
    let (mut mean, mut var) = (vec![T::ZERO; c], vec![T::ZERO; c]);
    for ch in 0..c {
        let mut sum = T::ZERO;
        for img in 0..n {
            for p in 0..hw {
                sum += x[at(dims, img, ch, p)];
            }
        }
        mean[ch] = sum / m;
        let mut squares = T::ZERO;
        for img in 0..n {
            for p in 0..hw {
                let d = x[at(dims, img, ch, p)] - mean[ch];
                squares += d * d;
            }
        }
        var[ch] = squares / m;
    }
    (mean, var)
}

/// `y = γ · (x − μ) / √(σ² + ε) + β` with the statistics given (the eval forward).
pub fn forward<T: Float>(
    x: &[T],
    gamma: &[T],
    beta: &[T],
    (mean, var): (&[T], &[T]),
    dims: (usize, usize, usize),
    eps: f64,
) -> Vec<T> {
    forward_fused(x, gamma, beta, (mean, var), None, false, dims, eps)
}

/// The training forward: `(y, μ, σ²)` with the batch's statistics.
pub fn forward_train<T: Float>(
    x: &[T],
    gamma: &[T],
    beta: &[T],
    dims: (usize, usize, usize),
    eps: f64,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let (mean, var) = batch_stats(x, dims);
    let y = forward(x, gamma, beta, (&mean, &var), dims, eps);
    (y, mean, var)
}

/// `y = act(γ · x̂ + β + r)` with the statistics given; `act` is ReLU when `relu` is set, and
/// `r` the residual, if any.
#[allow(clippy::too_many_arguments)]
pub fn forward_fused<T: Float>(
    x: &[T],
    gamma: &[T],
    beta: &[T],
    (mean, var): (&[T], &[T]),
    residual: Option<&[T]>,
    relu: bool,
    dims: (usize, usize, usize),
    eps: f64,
) -> Vec<T> {
    let (n, c, hw) = dims;
    let mut y = vec![T::ZERO; n * c * hw];
    for img in 0..n {
        for ch in 0..c {
            let std = (var[ch] + T::from_f64(eps)).sqrt();
            for p in 0..hw {
                let i = at(dims, img, ch, p);
                let x_hat = (x[i] - mean[ch]) / std;
                let t = gamma[ch] * x_hat + beta[ch] + residual.map_or(T::ZERO, |r| r[i]);
                y[i] = if relu { relu_of(t) } else { t };
            }
        }
    }
    y
}

/// The gradients of a batch norm.
#[derive(Clone, Debug, PartialEq)]
pub struct Grads<T> {
    pub dx: Vec<T>,
    pub dgamma: Vec<T>,
    pub dbeta: Vec<T>,
}

/// `(dx, dγ, dβ)` from the output gradient, with `mean` and `var` the statistics the forward
/// used: the batch's when `batch_stats` (training), else fixed (eval).
pub fn backward<T: Float>(
    dy: &[T],
    x: &[T],
    gamma: &[T],
    (mean, var): (&[T], &[T]),
    dims: (usize, usize, usize),
    eps: f64,
    batch_stats: bool,
) -> Grads<T> {
    let (n, c, hw) = dims;
    let m = T::from_usize(n * hw);
    let mut g = Grads { dx: vec![T::ZERO; n * c * hw], dgamma: vec![T::ZERO; c], dbeta: vec![T::ZERO; c] };
    for ch in 0..c {
        let std = (var[ch] + T::from_f64(eps)).sqrt();
        let x_hat = |i: usize| (x[i] - mean[ch]) / std;
        for img in 0..n {
            for p in 0..hw {
                let i = at(dims, img, ch, p);
                g.dbeta[ch] += dy[i];
                g.dgamma[ch] += dy[i] * x_hat(i);
            }
        }
        for img in 0..n {
            for p in 0..hw {
                let i = at(dims, img, ch, p);
                g.dx[i] = if batch_stats {
                    gamma[ch] / std * (dy[i] - g.dbeta[ch] / m - x_hat(i) * g.dgamma[ch] / m)
                } else {
                    gamma[ch] / std * dy[i]
                };
            }
        }
    }
    g
}

/// The backward of the fused form: the batch norm's gradients of `dz`, and `dz` (the
/// residual's gradient). `y` is the forward's output when it applied a ReLU, else `None`.
#[allow(clippy::too_many_arguments)]
pub fn backward_fused<T: Float>(
    dy: &[T],
    y: Option<&[T]>,
    x: &[T],
    gamma: &[T],
    stats: (&[T], &[T]),
    dims: (usize, usize, usize),
    eps: f64,
    batch_stats: bool,
) -> (Grads<T>, Vec<T>) {
    let mut dz = dy.to_vec();
    if let Some(y) = y {
        for i in 0..dz.len() {
            if !relu_passed(y[i]) {
                dz[i] = T::ZERO;
            }
        }
    }
    (backward(&dz, x, gamma, stats, dims, eps, batch_stats), dz)
}

/// Moves the running statistics towards the batch's, in place; `count` is the `M` the batch
/// statistics came from.
pub fn update_running_stats<T: Float>(
    running_mean: &mut [T],
    running_var: &mut [T],
    (batch_mean, batch_var): (&[T], &[T]),
    count: usize,
    momentum: f64,
) {
    let m = T::from_f64(momentum);
    let unbias = T::from_usize(count) / T::from_usize(count - 1);
    for ch in 0..running_mean.len() {
        running_mean[ch] = (T::ONE - m) * running_mean[ch] + m * batch_mean[ch];
        running_var[ch] = (T::ONE - m) * running_var[ch] + m * batch_var[ch] * unbias;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: &[f64], b: &[f64]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(a, b)| (a - b).abs() < 1e-14)
    }

    #[test]
    fn statistics_and_running_statistics_worked_by_hand() {
        // One channel of 1, 2, 3, 6 over two images: μ = 3, σ² = (4 + 1 + 0 + 9)/4 = 3.5.
        let x = [1.0, 2.0, 3.0, 6.0];
        let (mean, var) = batch_stats(&x, (2, 1, 2));
        assert_eq!((mean[0], var[0]), (3.0, 3.5));
        // Two channels, one pixel, two images: x[img, ch] = [[1, 10], [3, 30]] → channel 0 is
        // {1, 3}, channel 1 {10, 30}.
        let (mean, var) = batch_stats(&[1.0, 10.0, 3.0, 30.0], (2, 2, 1));
        assert_eq!((mean, var), (vec![2.0, 20.0], vec![1.0, 100.0]));
        // From (0, 1), momentum 0.1, M = 4: 0.1·3 and 0.9 + 0.1·3.5·4/3.
        let (mut rm, mut rv) = ([0.0f64], [1.0f64]);
        update_running_stats(&mut rm, &mut rv, (&[3.0], &[3.5]), 4, 0.1);
        assert!((rm[0] - 0.3).abs() < 1e-15 && (rv[0] - (0.9 + 0.1 * 3.5 * 4.0 / 3.0)).abs() < 1e-15);
    }

    #[test]
    fn forward_and_backward_worked_by_hand() {
        // x = [1, 3]: μ = 2, σ² = 1; ε = 3 makes √(σ² + ε) = 2, so x̂ = [−0.5, 0.5].
        // γ = 2, β = 1: y = [0, 2].
        let (x, gamma, beta, dims, eps) = ([1.0, 3.0], [2.0], [1.0], (1, 1, 2), 3.0);
        let (y, mean, var) = forward_train(&x, &gamma, &beta, dims, eps);
        assert_eq!((y.as_slice(), mean[0], var[0]), ([0.0, 2.0].as_slice(), 2.0, 1.0));
        // dy = [1, 3]: dβ = 4, dγ = −0.5 + 1.5 = 1,
        // dx = γ/2 · (dy − 4/2 − x̂ · 1/2) = [1 − 2 + 0.25, 3 − 2 − 0.25].
        let g = backward(&[1.0, 3.0], &x, &gamma, (&mean, &var), dims, eps, true);
        assert!(close(&g.dx, &[-0.75, 0.75]) && close(&g.dgamma, &[1.0]) && close(&g.dbeta, &[4.0]), "{g:?}");
        // Eval, with μ = 0 and σ² = 1 fixed: dx = γ/2 · dy, dγ = Σ dy · x/2 = (1 + 9)/2.
        let g = backward(&[1.0, 3.0], &x, &gamma, (&[0.0], &[1.0]), dims, eps, false);
        assert!(close(&g.dx, &[1.0, 3.0]) && close(&g.dgamma, &[5.0]) && close(&g.dbeta, &[4.0]), "{g:?}");
        assert_eq!(forward(&x, &gamma, &beta, (&[0.0], &[1.0]), dims, eps), [2.0, 4.0]);
    }

    #[test]
    fn the_fused_epilogue_worked_by_hand() {
        // As above, y = [0, 2] before the epilogue; r = [1, −5] makes it [1, −3], ReLU [1, 0].
        let (x, gamma, beta, dims, eps) = ([1.0, 3.0], [2.0], [1.0], (1, 1, 2), 3.0);
        let stats: (&[f64], &[f64]) = (&[2.0], &[1.0]);
        let y = forward_fused(&x, &gamma, &beta, stats, Some(&[1.0, -5.0]), true, dims, eps);
        assert_eq!(y, [1.0, 0.0]);
        assert_eq!(forward_fused(&x, &gamma, &beta, stats, Some(&[1.0, -5.0]), false, dims, eps), [1.0, -3.0]);
        // Without the residual, ReLU of [0, 2]: the first output is 0, so its gradient stops:
        // dz = [0, 3]; dβ = 3, dγ = 1.5, dx = 1 · (dz − 1.5 − x̂ · 0.75) = [−1.125, 1.125].
        let y = forward_fused(&x, &gamma, &beta, stats, None, true, dims, eps);
        let (g, dz) = backward_fused(&[1.0, 3.0], Some(&y), &x, &gamma, stats, dims, eps, true);
        assert_eq!(dz, [0.0, 3.0]);
        assert!(close(&g.dx, &[-1.125, 1.125]) && close(&g.dgamma, &[1.5]) && close(&g.dbeta, &[3.0]), "{g:?}");
        // Without a ReLU the gradient passes whole.
        let (g, dz) = backward_fused(&[1.0, 3.0], None, &x, &gamma, stats, dims, eps, true);
        assert_eq!((dz, g.dbeta), (vec![1.0, 3.0], vec![4.0]));
    }
}
