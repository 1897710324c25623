//! Gradient checking by central finite differences.
//!
//! For a function `f` of some input tensors, the tape's gradients are compared with
//!
//! ```text
//! ∂⟨r, f(x)⟩/∂x_j ≈ (⟨r, f(x + h·e_j)⟩ − ⟨r, f(x − h·e_j)⟩) / 2h
//! ```
//!
//! where `r` is a fixed random tensor the shape of the output: projecting onto `r` checks
//! every output element's gradient at once, which a plain sum would not (a sum hides errors
//! that cancel, and the gradient of a sum through softmax is zero). Run it in f64: the error
//! of a central difference is O(h²) from truncation plus O(ε/h) from rounding, which in f64 at
//! h = 1e-6 is about 1e-10, and in f32 would be about 1e-1.

use super::{Graph, Mode, Var};
use crate::error::{Error, Result};
use crate::ops::elementwise::dot;
use crate::tensor::{DType, Tensor};

/// What a gradient check found.
#[derive(Clone, Debug)]
pub struct GradcheckReport {
    /// Largest `|analytic − numeric| / (atol + rtol·|numeric|)`: at most 1 passes.
    pub worst_ratio: f64,
    /// Where that was: input number and element index, analytic and numeric values.
    pub worst: (usize, usize, f64, f64),
    /// How many partial derivatives were compared.
    pub checked: usize,
}

impl GradcheckReport {
    pub fn passed(&self) -> bool {
        self.worst_ratio <= 1.0
    }
}

#[derive(Clone, Copy, Debug)]
pub struct GradcheckOptions {
    pub step: f64,
    pub atol: f64,
    pub rtol: f64,
    /// Layers behave as in training (batch statistics, dropout) while checking.
    pub training: bool,
}

impl Default for GradcheckOptions {
    fn default() -> Self {
        GradcheckOptions { step: 1e-6, atol: 1e-6, rtol: 1e-5, training: true }
    }
}

/// Compares the tape's gradient of `f` with respect to each of `inputs` (f64 tensors) with
/// finite differences. `f` builds the computation from the leaves it is given; it must be
/// deterministic (a dropout inside it must use a fixed seed).
pub fn gradcheck(
    inputs: &[Tensor],
    f: impl Fn(&mut Graph, &[Var]) -> Result<Var>,
    opts: GradcheckOptions,
) -> Result<GradcheckReport> {
    if let Some(t) = inputs.iter().find(|t| t.dtype() != DType::F64) {
        return Err(Error::argument("gradcheck", format!("inputs must be f64, got {}", t.dtype())));
    }
    let mode = Mode { recording: true, training: opts.training };
    // The analytic gradients, seeded with a random projection r.
    let mut g = Graph::with_mode(mode);
    let leaves: Vec<Var> = inputs.iter().map(|t| g.leaf(t.clone())).collect();
    let out = f(&mut g, &leaves)?;
    let r = Tensor::uniform(out.shape().clone(), -1.0, 1.0, DType::F64, 0x5EED);
    let grads = g.backward_with_grad(&out, r.clone())?;
    let analytic: Vec<Vec<f64>> = leaves
        .iter()
        .zip(inputs)
        .map(|(l, t)| grads.of(l).map_or_else(|| Ok(vec![0.0; t.numel()]), Tensor::to_f64_vec))
        .collect::<Result<_>>()?;

    // ⟨r, f(inputs)⟩ without recording.
    let projected = |inputs: &[Tensor]| -> Result<f64> {
        let mut g = Graph::with_mode(Mode { recording: false, training: opts.training });
        let vars: Vec<Var> = inputs.iter().map(|t| Var::constant(t.clone())).collect();
        let out = f(&mut g, &vars)?;
        dot(out.value(), &r)
    };

    let mut report = GradcheckReport { worst_ratio: 0.0, worst: (0, 0, 0.0, 0.0), checked: 0 };
    let mut work: Vec<Tensor> = inputs.to_vec();
    for (i, input) in inputs.iter().enumerate() {
        let base = input.to_vec::<f64>()?;
        for j in 0..base.len() {
            let mut plus = base.clone();
            plus[j] += opts.step;
            work[i] = Tensor::from_vec(input.shape().clone(), plus)?;
            let f_plus = projected(&work)?;
            let mut minus = base.clone();
            minus[j] -= opts.step;
            work[i] = Tensor::from_vec(input.shape().clone(), minus)?;
            let f_minus = projected(&work)?;
            let numeric = (f_plus - f_minus) / (2.0 * opts.step);
            let a = analytic[i][j];
            let ratio = (a - numeric).abs() / (opts.atol + opts.rtol * numeric.abs());
            // NaN never passes.
            if ratio.is_nan() || ratio > report.worst_ratio {
                report.worst_ratio = if ratio.is_nan() { f64::INFINITY } else { ratio };
                report.worst = (i, j, a, numeric);
            }
            report.checked += 1;
        }
        work[i] = input.clone();
    }
    Ok(report)
}
