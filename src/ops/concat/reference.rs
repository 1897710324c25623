//! Channel concatenation and its backward, the split, as their definitions: for inputs
//! `x_i` of `[N, C_i, inner…]` (`inner` the product of the dimensions after the channels),
//! with `off_i = C_0 + … + C_{i−1}` and `C = Σ C_i`,
//!
//! ```text
//! y[n, off_i + c, q] = x_i[n, c, q]          for c < C_i, q < inner
//! dx_i[n, c, q]      = dy[n, off_i + c, q]
//! ```
//!
//! Plain loops, generic over [`Float`].

use crate::tensor::Float;

/// `y` of `[N, ΣC_i, inner]` from inputs of `channels[i]` channels each.
pub fn forward<T: Float>(inputs: &[&[T]], n: usize, channels: &[usize], inner: usize) -> Vec<T> {
    let total: usize = channels.iter().sum();
    let mut y = vec![T::ZERO; n * total * inner];
    for img in 0..n {
        let mut offset = 0;
        for (x, &ci) in inputs.iter().zip(channels) {
            for c in 0..ci {
                for q in 0..inner {
                    y[(img * total + offset + c) * inner + q] = x[(img * ci + c) * inner + q];
                }
            }
            offset += ci;
        }
    }
    y
}

/// The pieces of `dy` (`[N, ΣC_i, inner]`) of `channels[i]` channels each.
pub fn backward<T: Float>(dy: &[T], n: usize, channels: &[usize], inner: usize) -> Vec<Vec<T>> {
    let total: usize = channels.iter().sum();
    let mut pieces = Vec::new();
    let mut offset = 0;
    for &ci in channels {
        let mut dx = vec![T::ZERO; n * ci * inner];
        for img in 0..n {
            for c in 0..ci {
                for q in 0..inner {
                    dx[(img * ci + c) * inner + q] = dy[(img * total + offset + c) * inner + q];
                }
            }
        }
        pieces.push(dx);
        offset += ci;
    }
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_images_worked_by_hand() {
        // a is [2, 1, 2], b is [2, 2, 2]: each image of y is a's channel then b's two.
        let a = [1.0, 2.0, 3.0, 4.0];
        let b = [5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0];
        let y = forward(&[&a, &b], 2, &[1, 2], 2);
        assert_eq!(y, [1.0, 2.0, 5.0, 6.0, 7.0, 8.0, 3.0, 4.0, 9.0, 10.0, 11.0, 12.0]);
        let pieces = backward(&y, 2, &[1, 2], 2);
        assert_eq!(pieces, [a.to_vec(), b.to_vec()]);
        // An input of no channels takes no place and gets an empty gradient.
        assert_eq!(forward(&[&a, &[], &b], 2, &[1, 0, 2], 2), y);
        assert_eq!(backward(&y, 2, &[1, 0, 2], 2)[1], Vec::<f64>::new());
    }
}
