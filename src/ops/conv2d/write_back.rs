//! What the CPU's convolution applies to each output plane as it writes it, rather than in
//! passes of its own over the output: the bias, batch norm in eval mode, a residual and a
//! ReLU,
//!
//! ```text
//! y = act((conv(x) + bias)·a + b + residual)        a, b per channel
//! ```
//!
//! in that order and with the same roundings as the ops it stands for (`bias_act`, then
//! `batchnorm_fused` with the coefficients of [`crate::ops::batchnorm::coefficients`]), so
//! that the fused convolution gives the bits of the separate ops. Batch norm then costs no
//! pass over the activations at all: in ResNet-20's inference on the CPU those passes were a
//! fifth of the time.

use crate::tensor::Float;

/// The epilogue of a CPU convolution; [`WriteBack::NONE`] writes the product as it is.
#[derive(Clone, Copy, Debug)]
pub(super) struct WriteBack<'a, T> {
    /// Added first, per output channel.
    pub bias: Option<&'a [T]>,
    /// Batch norm's `(a, b)` per output channel: `t·a + b` (eval mode, running statistics).
    pub batch_norm: Option<&'a [(T, T)]>,
    /// Added after batch norm: a tensor of the output's shape (a residual block's shortcut).
    pub residual: Option<&'a [T]>,
    /// A ReLU last (NaN passes, as in `bias_act` and `batchnorm_fused`).
    pub relu: bool,
}

impl<T: Float> WriteBack<'_, T> {
    pub const NONE: WriteBack<'static, T> = WriteBack { bias: None, batch_norm: None, residual: None, relu: false };

    pub fn is_none(&self) -> bool {
        self.bias.is_none() && self.batch_norm.is_none() && self.residual.is_none() && !self.relu
    }

    /// Applies the epilogue to `plane`, channel `oc` of an output whose element `i` of the
    /// plane is element `at + i` of the whole output (where the residual is read).
    #[inline]
    pub fn apply(&self, plane: &mut [T], oc: usize, at: usize) {
        if self.is_none() {
            return;
        }
        let residual = self.residual.map(|r| &r[at..][..plane.len()]);
        for (i, v) in plane.iter_mut().enumerate() {
            let mut t = *v;
            if let Some(b) = self.bias {
                t += b[oc];
            }
            if let Some(bn) = self.batch_norm {
                // As `batchnorm::normalize` computes it: the residual, or zero, is added.
                let (a, b) = bn[oc];
                t = t * a + b + residual.map_or(T::ZERO, |r| r[i]);
            } else if let Some(r) = residual {
                t += r[i];
            }
            *v = if !self.relu || t > T::ZERO || t.is_nan() { t } else { T::ZERO };
        }
    }
}
