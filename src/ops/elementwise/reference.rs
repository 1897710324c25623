//! The element-wise ops as their definitions: one loop each over the elements, generic over
//! [`Float`] so that they run in f64 for the checks.
//!
//! ```text
//! relu(x)           = x if x > 0 or x is NaN, else 0      (NaN passes, as in torch.relu)
//! relu'(dy, y)      = dy if y > 0 or y is NaN, else 0     (read from the output y = relu(x))
//! add(a, b)         = a + b
//! mul(a, b)         = a · b
//! add_assign(acc, x): acc ← acc + x
//! ```

#![allow(clippy::needless_range_loop)] // indices, to read as the math does

use crate::tensor::Float;

/// `max(v, 0)`, with NaN passing through.
pub fn relu_of<T: Float>(v: T) -> T {
    if v > T::ZERO || v.is_nan() { v } else { T::ZERO }
}

/// Whether ReLU let the value that became output `y` through: `y > 0`, or NaN.
pub fn relu_passed<T: Float>(y: T) -> bool {
    y > T::ZERO || y.is_nan()
}

/// `y[i] = relu(x[i])`.
pub fn relu<T: Float>(x: &[T]) -> Vec<T> {
    let mut y = Vec::with_capacity(x.len());
    for i in 0..x.len() {
        y.push(relu_of(x[i]));
    }
    y
}

/// `dx[i] = dy[i]` where the output `y[i]` is positive (or NaN), else 0.
pub fn relu_backward<T: Float>(dy: &[T], y: &[T]) -> Vec<T> {
    let mut dx = Vec::with_capacity(dy.len());
    for i in 0..dy.len() {
        dx.push(if relu_passed(y[i]) { dy[i] } else { T::ZERO });
    }
    dx
}

/// `y[i] = a[i] + b[i]`.
pub fn add<T: Float>(a: &[T], b: &[T]) -> Vec<T> {
    let mut y = Vec::with_capacity(a.len());
    for i in 0..a.len() {
        y.push(a[i] + b[i]);
    }
    y
}

/// `y[i] = a[i] · b[i]`.
pub fn mul<T: Float>(a: &[T], b: &[T]) -> Vec<T> {
    let mut y = Vec::with_capacity(a.len());
    for i in 0..a.len() {
        y.push(a[i] * b[i]);
    }
    y
}

/// `acc[i] ← acc[i] + x[i]`.
pub fn add_assign<T: Float>(acc: &mut [T], x: &[T]) {
    for i in 0..acc.len() {
        acc[i] += x[i];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_op_worked_by_hand() {
        let x = [-1.0, 0.0, 2.0, -3.5, f64::NAN];
        let y = relu(&x);
        assert_eq!(y[..4], [0.0, 0.0, 2.0, 0.0]);
        assert!(y[4].is_nan(), "NaN passes through");
        // The gradient flows where the output is positive or NaN: elements 2 and 4.
        assert_eq!(relu_backward(&[1.0, 2.0, 3.0, 4.0, 5.0], &y), [0.0, 0.0, 3.0, 0.0, 5.0]);
        assert_eq!(add(&[1.0, -2.0], &[0.5, 2.0]), [1.5, 0.0]);
        assert_eq!(mul(&[1.5, -2.0], &[4.0, 3.0]), [6.0, -6.0]);
        let mut acc = [1.0, 2.0];
        add_assign(&mut acc, &[10.0, -2.0]);
        assert_eq!(acc, [11.0, 0.0]);
    }
}
