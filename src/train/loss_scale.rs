//! Dynamic loss scaling, for training with `--precision fp16`.
//!
//! FP16 has 5 exponent bits: the smallest normal value is 2^-14 ≈ 6·10^-5 and the largest
//! 65504. A network's gradients are mostly small, and in FP16 many of them would flush to
//! zero. So the loss is multiplied by a large scale S before the backward pass (every
//! gradient is then S times larger, up in FP16's range), and the gradients are divided by S
//! again, in FP32, before the optimizer sees them. Too large an S makes some gradient
//! overflow to infinity instead; the scaler watches for that and adapts (Micikevicius et al.,
//! "Mixed Precision Training", 2018; the rules and defaults of PyTorch's `GradScaler`):
//!
//! - a step whose gradients hold an infinity or a NaN is skipped (no update: the weights and
//!   the optimizer's momentum stay as they were) and S is halved;
//! - after [`GROWTH_INTERVAL`] good steps in a row, S is doubled, so that it keeps probing for
//!   the largest scale that does not overflow.
//!
//! BF16 has FP32's 8 exponent bits and needs none of this; FP32 and TF32 neither.

use crate::autograd::{Graph, Param, Var};
use crate::error::Result;
use crate::ops::elementwise;

/// The scale of the first step, 2^16, as PyTorch's `GradScaler`.
pub const INITIAL_SCALE: f64 = 65536.0;
/// Good steps in a row before the scale doubles.
pub const GROWTH_INTERVAL: usize = 2000;

/// What the scaler decided about a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScaledStep {
    /// The gradients were finite: unscale them and update.
    Apply,
    /// Some gradient overflowed: no update, the scale halved.
    Skip,
}

/// The loss scale and its history.
#[derive(Clone, Debug)]
pub struct LossScaler {
    scale: f64,
    good_in_a_row: usize,
    growth_interval: usize,
    skipped: usize,
}

impl Default for LossScaler {
    fn default() -> Self {
        LossScaler::new(INITIAL_SCALE, GROWTH_INTERVAL)
    }
}

impl LossScaler {
    /// A scaler starting at `scale` that doubles it after `growth_interval` good steps.
    pub fn new(scale: f64, growth_interval: usize) -> LossScaler {
        LossScaler { scale, good_in_a_row: 0, growth_interval: growth_interval.max(1), skipped: 0 }
    }

    /// The factor the loss's gradient is seeded with this step.
    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// Steps skipped so far.
    pub fn skipped(&self) -> usize {
        self.skipped
    }

    /// Takes the verdict on a step whose gradients held `non_finite` values that are NaN or
    /// infinite, and moves the scale for the next step.
    pub fn update(&mut self, non_finite: u64) -> ScaledStep {
        if non_finite > 0 {
            self.scale = (self.scale * 0.5).max(f64::MIN_POSITIVE);
            self.good_in_a_row = 0;
            self.skipped += 1;
            return ScaledStep::Skip;
        }
        self.good_in_a_row += 1;
        if self.good_in_a_row == self.growth_interval {
            self.scale *= 2.0;
            self.good_in_a_row = 0;
        }
        ScaledStep::Apply
    }
}

/// The backward pass of an FP16 step: the gradients of `loss` × the scale, added to the
/// parameters' gradients; then the verdict. On [`ScaledStep::Apply`] the gradients are divided
/// by the scale (in FP32) and ready for the optimizer; on [`ScaledStep::Skip`] they are
/// dropped, so that the optimizer, which skips parameters without a gradient, changes nothing.
pub fn backward_scaled(g: Graph, loss: &Var, params: Vec<&mut Param>, scaler: &mut LossScaler) -> Result<ScaledStep> {
    let scale = scaler.scale();
    let seed = elementwise::full(loss.shape().clone(), scale, loss.value().dtype(), loss.value().device())?;
    let grads = g.backward_with_grad(loss, seed)?;
    let mut params = params;
    grads.accumulate_into(params.iter_mut().map(|p| &mut **p))?;
    let non_finite = {
        let grads: Vec<&crate::tensor::Tensor> = params.iter().filter_map(|p| p.grad.as_ref()).collect();
        elementwise::count_non_finite(&grads)?
    };
    let verdict = scaler.update(non_finite);
    for p in params {
        match verdict {
            ScaledStep::Skip => p.grad = None,
            ScaledStep::Apply => {
                if let Some(grad) = &mut p.grad {
                    elementwise::scale_in_place(grad, 1.0 / scale)?;
                }
            }
        }
    }
    Ok(verdict)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overflow_skips_and_halves_then_good_steps_grow_the_scale() {
        let mut s = LossScaler::new(1024.0, 3);
        assert_eq!(s.update(5), ScaledStep::Skip);
        assert_eq!((s.scale(), s.skipped()), (512.0, 1));
        assert_eq!(s.update(0), ScaledStep::Apply);
        assert_eq!(s.update(0), ScaledStep::Apply);
        assert_eq!(s.scale(), 512.0, "two good steps are not yet three");
        // An overflow resets the run of good steps.
        assert_eq!(s.update(1), ScaledStep::Skip);
        assert_eq!(s.scale(), 256.0);
        for _ in 0..3 {
            assert_eq!(s.update(0), ScaledStep::Apply);
        }
        assert_eq!((s.scale(), s.skipped()), (512.0, 2));
    }
}
