//! The fully connected layer as its definition: one loop per index of each sum, generic over
//! [`Float`] so that it runs in f64 for the checks. x is `[N, I]`, W is `[O, I]` (one row per
//! output, as PyTorch's `nn.Linear`), b is `[O]`, y is `[N, O]`:
//!
//! ```text
//! y[n, o]  = b[o] + Σ_i x[n, i] · W[o, i]
//! dx[n, i] = Σ_o dy[n, o] · W[o, i]
//! dW[o, i] = Σ_n dy[n, o] · x[n, i]
//! db[o]    = Σ_n dy[n, o]
//! ```
//!
//! Each sum runs in the order of its index. `dims` is `(N, I, O)`.

#![allow(clippy::needless_range_loop)] // indices, to read as the math does

use crate::tensor::Float;

/// `y = x · Wᵀ + b` (b, if any, per output).
pub fn forward<T: Float>(x: &[T], w: &[T], b: Option<&[T]>, (n, i, o): (usize, usize, usize)) -> Vec<T> {
    let mut y = vec![T::ZERO; n * o];
    for r in 0..n {
        for j in 0..o {
            let mut sum = b.map_or(T::ZERO, |b| b[j]);
            for k in 0..i {
                sum += x[r * i + k] * w[j * i + k];
            }
            y[r * o + j] = sum;
        }
    }
    y
}

/// `dx = dy · W`.
pub fn backward_data<T: Float>(dy: &[T], w: &[T], (n, i, o): (usize, usize, usize)) -> Vec<T> {
    let mut dx = vec![T::ZERO; n * i];
    for r in 0..n {
        for k in 0..i {
            let mut sum = T::ZERO;
            for j in 0..o {
                sum += dy[r * o + j] * w[j * i + k];
            }
            dx[r * i + k] = sum;
        }
    }
    dx
}

/// `dW = dyᵀ · x`.
pub fn backward_weight<T: Float>(dy: &[T], x: &[T], (n, i, o): (usize, usize, usize)) -> Vec<T> {
    let mut dw = vec![T::ZERO; o * i];
    for j in 0..o {
        for k in 0..i {
            let mut sum = T::ZERO;
            for r in 0..n {
                sum += dy[r * o + j] * x[r * i + k];
            }
            dw[j * i + k] = sum;
        }
    }
    dw
}

/// `db = Σ_n dy[n, :]`.
pub fn backward_bias<T: Float>(dy: &[T], (n, _, o): (usize, usize, usize)) -> Vec<T> {
    let mut db = vec![T::ZERO; o];
    for j in 0..o {
        for r in 0..n {
            db[j] += dy[r * o + j];
        }
    }
    db
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_layer_worked_by_hand() {
        // Two examples of two features, three outputs:
        // x = [[1, 2], [3, −1]], W = [[1, 0], [0, 1], [1, 1]], b = [0.5, 0, −1].
        let dims = (2, 2, 3);
        let (x, w, b) = ([1.0, 2.0, 3.0, -1.0], [1.0, 0.0, 0.0, 1.0, 1.0, 1.0], [0.5, 0.0, -1.0]);
        // Row 0: [1 + 0.5, 2, 3 − 1]; row 1: [3 + 0.5, −1, 2 − 1].
        assert_eq!(forward(&x, &w, Some(&b), dims), [1.5, 2.0, 2.0, 3.5, -1.0, 1.0]);
        assert_eq!(forward(&x, &w, None, dims), [1.0, 2.0, 3.0, 3.0, -1.0, 2.0]);
        let dy = [1.0, 2.0, 0.0, 0.0, 1.0, -1.0];
        // dx[0] = 1·W[0] + 2·W[1] = [1, 2]; dx[1] = W[1] − W[2] = [−1, 0].
        assert_eq!(backward_data(&dy, &w, dims), [1.0, 2.0, -1.0, 0.0]);
        // dW[o] = dy[0, o]·x[0] + dy[1, o]·x[1]: [1, 2], 2·[1, 2] + [3, −1], −[3, −1].
        assert_eq!(backward_weight(&dy, &x, dims), [1.0, 2.0, 5.0, 3.0, -3.0, 1.0]);
        assert_eq!(backward_bias(&dy, dims), [1.0, 3.0, -1.0]);
    }
}
