//! One SGD step with momentum and weight decay as the op defines it (PyTorch's
//! `torch.optim.SGD`, dampening 0, not Nesterov), element by element, generic over [`Float`]:
//!
//! ```text
//! g[i] = grad[i] + weight_decay · θ[i]
//! v[i] ← momentum · v[i] + g[i]
//! θ[i] ← θ[i] − lr · v[i]
//! ```
//!
//! The hyperparameters are rounded once to `T`, as the op does.

#![allow(clippy::needless_range_loop)] // indices, to read as the math does

use super::SgdParams;
use crate::tensor::Float;

/// Updates `param` and `velocity` in place from `grad`.
pub fn step<T: Float>(param: &mut [T], grad: &[T], velocity: &mut [T], h: SgdParams) {
    let (lr, momentum, weight_decay) = (T::from_f64(h.lr), T::from_f64(h.momentum), T::from_f64(h.weight_decay));
    for i in 0..param.len() {
        let g = grad[i] + weight_decay * param[i];
        velocity[i] = momentum * velocity[i] + g;
        param[i] -= lr * velocity[i];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_steps_worked_by_hand() {
        // Values that are exact in binary: lr 0.5, momentum 0.5, weight decay 0.25.
        let h = SgdParams { lr: 0.5, momentum: 0.5, weight_decay: 0.25 };
        let (mut p, mut v) = ([2.0, -4.0], [0.0, 1.0]);
        step(&mut p, &[1.0, 0.0], &mut v, h);
        // g = [1 + 0.5, 0 − 1] = [1.5, −1]; v = [0 + 1.5, 0.5 − 1] = [1.5, −0.5];
        // θ = [2 − 0.75, −4 + 0.25] = [1.25, −3.75].
        assert_eq!((p, v), ([1.25, -3.75], [1.5, -0.5]));
        step(&mut p, &[1.0, 0.0], &mut v, h);
        // g = [1 + 0.3125, −0.9375]; v = [0.75 + 1.3125, −0.25 − 0.9375] = [2.0625, −1.1875];
        // θ = [1.25 − 1.03125, −3.75 + 0.59375] = [0.21875, −3.15625].
        assert_eq!((p, v), ([0.21875, -3.15625], [2.0625, -1.1875]));
    }
}
