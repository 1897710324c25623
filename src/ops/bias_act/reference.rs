//! A bias and an activation after a product, and the backward of the pair, as their
//! definitions: plain loops over the N×C×HW layout (HW = 1 for a fully connected layer's
//! `[N, C]` output), generic over [`Float`] so that they run in f64 for the checks.
//!
//! ```text
//! y[n, c, p]  = act(z[n, c, p] + b[c])             act = ReLU (NaN passes) or nothing
//! dz[n, c, p] = dy[n, c, p] if y[n, c, p] > 0 or NaN, else 0
//! db[c]       = Σ_{n, p} dz[n, c, p]
//! ```

#![allow(clippy::needless_range_loop)] // indices, to read as the math does

use crate::ops::elementwise::reference::{relu_of, relu_passed};
use crate::tensor::Float;

/// `y = act(z + b)`, with `b` per channel (or none) and `act` ReLU when `relu` is set.
pub fn forward<T: Float>(z: &[T], b: Option<&[T]>, relu: bool, (n, c, hw): (usize, usize, usize)) -> Vec<T> {
    let mut y = vec![T::ZERO; n * c * hw];
    for img in 0..n {
        for ch in 0..c {
            for p in 0..hw {
                let i = (img * c + ch) * hw + p;
                let t = z[i] + b.map_or(T::ZERO, |b| b[ch]);
                y[i] = if relu { relu_of(t) } else { t };
            }
        }
    }
    y
}

/// The backward of `y = relu(z + b)`: `(dz, db)`.
pub fn relu_backward_with_bias<T: Float>(dy: &[T], y: &[T], (n, c, hw): (usize, usize, usize)) -> (Vec<T>, Vec<T>) {
    let mut dz = vec![T::ZERO; n * c * hw];
    let mut db = vec![T::ZERO; c];
    for img in 0..n {
        for ch in 0..c {
            for p in 0..hw {
                let i = (img * c + ch) * hw + p;
                dz[i] = if relu_passed(y[i]) { dy[i] } else { T::ZERO };
                db[ch] += dz[i];
            }
        }
    }
    (dz, db)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bias_relu_and_its_backward_worked_by_hand() {
        // Two images, two channels of two pixels; bias +1 on channel 0, −1 on channel 1.
        let z = [1.0, -2.0, 0.5, -0.5, -3.0, 4.0, 0.0, 1.0];
        let b = [1.0, -1.0];
        let dims = (2, 2, 2);
        // z + b = [2, −1, −0.5, −1.5, −2, 5, −1, 0]
        assert_eq!(forward(&z, Some(&b), false, dims), [2.0, -1.0, -0.5, -1.5, -2.0, 5.0, -1.0, 0.0]);
        let y = forward(&z, Some(&b), true, dims);
        assert_eq!(y, [2.0, 0.0, 0.0, 0.0, 0.0, 5.0, 0.0, 0.0]);
        assert_eq!(forward(&z, None, true, dims), [1.0, 0.0, 0.5, 0.0, 0.0, 4.0, 0.0, 1.0]);
        let dy = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0];
        let (dz, db) = relu_backward_with_bias(&dy, &y, dims);
        assert_eq!(dz, [1.0, 0.0, 0.0, 0.0, 0.0, 6.0, 0.0, 0.0]);
        // Channel 0 is elements 0, 1 (image 0) and 4, 5 (image 1): 1 + 6.
        assert_eq!(db, [7.0, 0.0]);
    }

    #[test]
    fn a_matrix_is_the_case_of_one_pixel() {
        // [N, C] = [2, 3]: the bias goes along the rows' columns.
        let y = forward(&[0.0; 6], Some(&[1.0, -1.0, 2.0]), false, (2, 3, 1));
        assert_eq!(y, [1.0, -1.0, 2.0, 1.0, -1.0, 2.0]);
        let (_, db) = relu_backward_with_bias(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[1.0; 6], (2, 3, 1));
        assert_eq!(db, [5.0, 7.0, 9.0]);
    }
}
