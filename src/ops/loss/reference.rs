//! Softmax cross-entropy averaged over the batch, as its definition: plain loops over the
//! rows of `[N, K]` logits, generic over [`Float`] so that it runs in f64 for the checks.
//!
//! ```text
//! m_n       = max_j z[n, j]
//! p[n, k]   = exp(z[n, k] − m_n) / Σ_j exp(z[n, j] − m_n)
//! loss      = −(1/N) Σ_n log p[n, label_n]
//!           = −(1/N) Σ_n (z[n, label_n] − m_n − log Σ_j exp(z[n, j] − m_n))
//! dz[n, k]  = (p[n, k] − [k = label_n]) / N · dloss
//! ```
//!
//! The loss takes the logarithm of the softmax in the second form, which is the first
//! written so that a probability that underflows to 0 still has a finite logarithm.

#![allow(clippy::needless_range_loop)] // indices, to read as the math does

use crate::tensor::Float;

/// `(loss, p)` for logits `z` of `k` classes per row, one label (a class index) per row.
pub fn forward<T: Float>(z: &[T], labels: &[usize], k: usize) -> (T, Vec<T>) {
    let n = labels.len();
    let mut p = vec![T::ZERO; n * k];
    let mut total = T::ZERO;
    for r in 0..n {
        let row = &z[r * k..(r + 1) * k];
        let mut m = T::NEG_INFINITY;
        for j in 0..k {
            m = m.max(row[j]);
        }
        let mut sum = T::ZERO;
        for j in 0..k {
            sum += (row[j] - m).exp();
        }
        for j in 0..k {
            p[r * k + j] = (row[j] - m).exp() / sum;
        }
        total += row[labels[r]] - m - sum.ln();
    }
    (-total / T::from_usize(n), p)
}

/// `dz` from the probabilities, the labels and the loss's gradient.
pub fn backward<T: Float>(p: &[T], labels: &[usize], dloss: T, k: usize) -> Vec<T> {
    let n = labels.len();
    let mut dz = vec![T::ZERO; n * k];
    for r in 0..n {
        for j in 0..k {
            let target = if j == labels[r] { T::ONE } else { T::ZERO };
            dz[r * k + j] = (p[r * k + j] - target) / T::from_usize(n) * dloss;
        }
    }
    dz
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_worked_by_hand() {
        // Row 0: logits [0, ln 3, 0, 0], exponentials [1, 3, 1, 1], p = [1, 3, 1, 1]/6; its
        // label 1 loses −ln(1/2). Row 1: four equal logits, p = 1/4 each; label 2 loses ln 4.
        let z = [0.0, 3f64.ln(), 0.0, 0.0, 5.0, 5.0, 5.0, 5.0];
        let (loss, p) = forward(&z, &[1, 2], 4);
        let want_p = [1.0 / 6.0, 0.5, 1.0 / 6.0, 1.0 / 6.0, 0.25, 0.25, 0.25, 0.25];
        for (a, b) in p.iter().zip(want_p) {
            assert!((a - b).abs() < 1e-15, "{p:?}");
        }
        // (−ln(1/2) − ln(1/4)) / 2 = (ln 2 + ln 4) / 2 = 1.5 ln 2
        assert!((loss - 1.5 * 2f64.ln()).abs() < 1e-15, "{loss}");
        let dz = backward(&p, &[1, 2], 2.0, 4);
        // (p − onehot) / N · dloss, with N = 2 and dloss = 2: p − onehot itself.
        let want = [1.0 / 6.0, -0.5, 1.0 / 6.0, 1.0 / 6.0, 0.25, 0.25, -0.75, 0.25];
        for (a, b) in dz.iter().zip(want) {
            assert!((a - b).abs() < 1e-15, "{dz:?}");
        }
    }

    #[test]
    fn the_row_maximum_keeps_large_logits_finite() {
        let (loss, p) = forward(&[1000.0f32, 0.0], &[1], 2);
        assert_eq!(p, [1.0, 0.0]);
        assert!((loss - 1000.0).abs() < 1e-3, "{loss}");
    }
}
