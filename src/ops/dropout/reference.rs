//! Inverted dropout as the op defines it, element by element, generic over [`Float`]:
//!
//! ```text
//! u_i     = counter_uniform_f32(seed, i)          (24 random bits, exact in f32)
//! keep_i  = not (u_i < p), the comparison in f32
//! scale   = 1/(1 − p), or 0 when p = 1
//! y[i]    = x[i] · scale where keep_i, else 0
//! dx[i]   = dy[i] · scale where keep_i, else 0  (the same mask, drawn again from the seed)
//! ```
//!
//! The scale is rounded once to `T`, as the op does: run in f32, a mask of ones equals the
//! kernel's to the bit.

#![allow(clippy::needless_range_loop)] // indices, to read as the math does

use crate::rng::counter_uniform_f32;
use crate::tensor::Float;

/// Whether element `i` survives dropout with probability `p` and seed `seed`.
pub fn kept(p: f64, seed: u64, i: usize) -> bool {
    let dropped = counter_uniform_f32(seed, i as u64) < p as f32;
    !dropped
}

/// `y = x ⊙ mask(p, seed)`.
pub fn forward<T: Float>(x: &[T], p: f64, seed: u64) -> Vec<T> {
    let scale = T::from_f64(if p < 1.0 { 1.0 / (1.0 - p) } else { 0.0 });
    let mut y = vec![T::ZERO; x.len()];
    for i in 0..x.len() {
        if kept(p, seed, i) {
            y[i] = x[i] * scale;
        }
    }
    y
}

/// `dx = dy ⊙ mask(p, seed)`: the same mask as the forward pass with the same seed.
pub fn backward<T: Float>(dy: &[T], p: f64, seed: u64) -> Vec<T> {
    forward(dy, p, seed)
}

/// The mask itself: `0` or `1/(1 − p)` per element.
pub fn mask<T: Float>(len: usize, p: f64, seed: u64) -> Vec<T> {
    forward(&vec![T::ONE; len], p, seed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_element_is_dropped_when_its_draw_is_below_p() {
        let seed = 7;
        for i in 0..16 {
            let u = counter_uniform_f32(seed, i as u64) as f64;
            // p equal to the draw keeps the element (dropped is u < p, strictly); a p just
            // above it drops it. Each kept element is scaled by 1/(1 − p).
            let y = forward(&vec![2.0; i + 1], u, seed);
            assert_eq!(y[i], 2.0 / (1.0 - u), "element {i}, u = {u}");
            let above = u + 1.0 / (1u64 << 24) as f64;
            assert_eq!(forward(&vec![2.0; i + 1], above, seed)[i], 0.0, "element {i}");
        }
    }

    #[test]
    fn the_extremes_and_the_backward() {
        assert_eq!(forward(&[1.0, -2.0, 3.0], 0.0, 1), [1.0, -2.0, 3.0]);
        assert_eq!(forward(&[1.0, -2.0, 3.0], 1.0, 1), [0.0, 0.0, 0.0]);
        // p = 0.5: kept elements double.
        let m = mask::<f64>(64, 0.5, 3);
        assert!(m.iter().all(|&v| v == 0.0 || v == 2.0));
        assert!(m.contains(&0.0) && m.contains(&2.0));
        let dx = backward(&[1.5; 64], 0.5, 3);
        for i in 0..64 {
            assert_eq!(dx[i], 1.5 * m[i]);
        }
    }
}
