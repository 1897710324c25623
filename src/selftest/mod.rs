//! `scratchnet selftest`: every op, forward and backward, on one device against the op's
//! plain reference (`ops::<op>::reference`) computed in f64, on random inputs of awkward sizes
//! (batch 1, prime heights, widths and channel counts, channels that are no multiple of any
//! tile).
//!
//! On `cuda` and `emu` the candidates are the kernels; on `cpu` it is the CPU path in f32,
//! plus gradient checks by finite differences. New device buffers are filled with NaN before
//! each kernel runs, so an element a kernel forgets to write cannot pass. The error measure
//! is the relative L2 error `‖a − b‖ / ‖b‖`; NaN never passes.
//!
//! This file holds the harness, the convolutions, the GEMMs and the bias + ReLU after them;
//! the other op families are in `pool.rs`, `norm.rs` (LRN and the batch norms), `dense.rs`
//! (fully connected, cross-entropy, SGD), `pointwise.rs` (element-wise, concat, dropout),
//! `precision.rs` (the convolutions and the product in TF32, BF16 and FP16 through each
//! device's default path) and `tensor_cores.rs` (every tensor-core kernel and tile, forced one
//! at a time, on cuda and emu).

mod dense;
mod norm;
mod pointwise;
mod pool;
mod precision;
mod tensor_cores;

use crate::autograd::gradcheck::{GradcheckOptions, gradcheck};
use crate::device::{Device, poison_new_buffers};
use crate::error::Result;
use crate::ops::conv2d::{self, Conv2dParams, ConvAlgo, ConvGeometry, reference};
use crate::ops::gemm::{self, GemmKernel, matmul};
use crate::ops::lrn::LrnParams;
use crate::ops::pool::Pool2dParams;
use crate::ops::{ExecOptions, Precision, bias_act, elementwise, linear};
use crate::tensor::{DType, Shape, Tensor};

/// Tolerance for results computed with the same order of operations as the reference, or
/// short sums (relative L2).
pub const TOL_PLAIN: f64 = 1e-5;
/// Tolerance for long sums added in another order (reductions over a batch, GEMMs).
pub const TOL_REORDERED: f64 = 1e-4;

/// One comparison.
#[derive(Clone, Debug)]
pub struct Check {
    /// The op and direction, e.g. `conv2d backward (filter)`.
    pub op: String,
    /// The shapes and parameters, e.g. `x [2, 3, 7, 5] w [5, 3, 3, 3] s1 p1`.
    pub case: String,
    pub rel_err: f64,
    pub tol: f64,
}

impl Check {
    pub fn passed(&self) -> bool {
        self.rel_err <= self.tol
    }
}

/// `‖a − b‖ / ‖b‖` (plain `‖a − b‖` when `b` is zero); NaN or infinity when `a` holds one.
pub fn rel_l2(a: &[f64], b: &[f64]) -> f64 {
    if a.len() != b.len() {
        return f64::INFINITY;
    }
    let num: f64 = a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum();
    let den: f64 = b.iter().map(|y| y * y).sum();
    let r = if den > 0.0 { (num / den).sqrt() } else { num.sqrt() };
    if a.iter().any(|v| !v.is_finite()) { f64::NAN } else { r }
}

/// Runs every check on `device`, calling `report` after each. The returned list holds them
/// all; the selftest failed if any did not pass.
pub fn run(device: Device, mut report: impl FnMut(&Check)) -> Result<Vec<Check>> {
    poison_new_buffers(true);
    let mut t = Tester { device, checks: Vec::new(), seed: 1 };
    let result = (|| -> Result<()> {
        t.conv2d()?;
        t.gemm()?;
        t.linear()?;
        t.pooling()?;
        t.lrn()?;
        t.batch_norm()?;
        t.batch_norm_fused()?;
        t.bias_relu()?;
        t.elementwise()?;
        t.concat()?;
        t.dropout()?;
        t.cross_entropy()?;
        t.sgd()?;
        t.low_precision()?;
        t.tensor_cores()?;
        if device.is_cpu() {
            t.finite_differences()?;
        }
        Ok(())
    })();
    poison_new_buffers(false);
    result?;
    for c in &t.checks {
        report(c);
    }
    Ok(t.checks)
}

struct Tester {
    device: Device,
    checks: Vec<Check>,
    seed: u64,
}

impl Tester {
    /// A random f64 reference input in ±[0.1, 1.1) (kept away from 0, where ReLU kinks).
    fn input(&mut self, shape: &[usize]) -> Tensor {
        self.seed += 1;
        let mut rng = crate::rng::Rng::new(self.seed * 7919);
        let n: usize = shape.iter().product();
        let v: Vec<f64> = (0..n)
            .map(|_| {
                let u = 2.0 * rng.uniform() - 1.0;
                u.signum() * (0.1 + u.abs())
            })
            .collect();
        Tensor::from_cpu(Shape::from(shape), v)
    }

    /// The same values as f32 on the device under test.
    fn on_device(&self, t: &Tensor) -> Result<Tensor> {
        t.to_dtype(DType::F32)?.to_device(self.device)
    }

    fn record(&mut self, op: &str, case: &str, got: &Tensor, want: &Tensor, tol: f64) -> Result<()> {
        let rel_err =
            if got.shape() != want.shape() { f64::INFINITY } else { rel_l2(&got.to_f64_vec()?, &want.to_f64_vec()?) };
        self.checks.push(Check { op: op.to_string(), case: case.to_string(), rel_err, tol });
        Ok(())
    }

    fn conv2d(&mut self) -> Result<()> {
        let p = Conv2dParams::default;
        let cases = [
            ([2, 3, 7, 5], [5, 3, 3, 3], p().padding(1), true),
            ([1, 5, 11, 13], [7, 5, 3, 3], p().stride(2).padding(1), false),
            ([2, 6, 9, 9], [4, 3, 3, 3], p().padding(2).dilation(2).groups(2), true),
            // Three groups, and 4·13·13 positions: the filter gradient is cut into two
            // split-K slices (the towers' share of the workspace and of its reduction).
            ([4, 6, 13, 13], [9, 2, 3, 3], p().padding(1).groups(3), true),
            ([3, 7, 5, 3], [11, 7, 1, 1], p(), true),
            ([1, 3, 31, 31], [5, 3, 11, 11], p().stride(4), true),
            // Large enough that the tiled kernels cross several 64-wide tiles in every
            // dimension and take many steps along K (and the filter gradient is split).
            ([2, 16, 12, 12], [70, 16, 3, 3], p().padding(1), false),
        ];
        for (xs, ws, params, with_bias) in cases {
            let case = format!("x {:?} w {:?} {}", xs, ws, describe(&params));
            let (x, w, b) = (self.input(&xs), self.input(&ws), self.input(&ws[..1]));
            let g = ConvGeometry::new(x.shape(), w.shape(), params)?;
            let dy = self.input(&g.out_shape());
            let (xd, wd, bd, dyd) =
                (self.on_device(&x)?, self.on_device(&w)?, self.on_device(&b)?, self.on_device(&dy)?);
            let bias_d = with_bias.then_some(&bd);
            // The definition's loops (ops::conv2d::reference) in f64 are what every variant,
            // the CPU's fast path included, is held to.
            let (xv, wv, bv, dyv) = (x.to_f64_vec()?, w.to_f64_vec()?, b.to_f64_vec()?, dy.to_f64_vec()?);
            let want_y =
                Tensor::from_cpu(g.out_shape(), reference::forward(&xv, &wv, with_bias.then_some(bv.as_slice()), &g));
            let want_dx = Tensor::from_cpu(x.shape().clone(), reference::backward_data(&dyv, &wv, &g));
            let want_dw = Tensor::from_cpu(w.shape().clone(), reference::backward_filter(&dyv, &xv, &g));
            // Every kernel variant (on the CPU there is one: the fast im2col + GEMM path).
            let algos: &[(ConvAlgo, &str)] = if self.device.is_cpu() {
                &[(ConvAlgo::Auto, "")]
            } else {
                &[
                    (ConvAlgo::Direct, " direct"),
                    (ConvAlgo::ImplicitGemm, " implicit-gemm"),
                    (ConvAlgo::ImplicitGemm128, " implicit-gemm-128"),
                ]
            };
            for &(algo, label) in algos {
                let exec = ExecOptions::with_conv_algo(algo);
                let got = conv2d::forward(&xd, &wd, bias_d, params, &exec)?;
                self.record(&format!("conv2d forward{label}"), &case, &got, &want_y, TOL_PLAIN)?;
                let got = conv2d::backward_data(&dyd, &wd, x.shape(), params, &exec)?;
                self.record(&format!("conv2d backward data{label}"), &case, &got, &want_dx, TOL_PLAIN)?;
                let got = conv2d::backward_filter(&dyd, &xd, w.shape(), params, &exec)?;
                self.record(&format!("conv2d backward filter{label}"), &case, &got, &want_dw, TOL_REORDERED)?;
            }
            if !self.device.is_cpu() && params.groups > 1 {
                self.conv2d_towers(&case, (&xd, &wd, bias_d, &dyd), params, (&want_y, &want_dx, &want_dw))?;
            }
            let want = Tensor::from_cpu(Shape::from([g.o]), reference::backward_bias(&dyv, &g));
            let got = conv2d::backward_bias(&dyd)?;
            self.record("conv2d backward (bias)", &case, &got, &want, TOL_REORDERED)?;
        }
        Ok(())
    }

    /// A grouped convolution run as towers (one group per side stream): against the reference,
    /// and against the one-launch implicit GEMM, which it must equal to the bit (limit 0).
    fn conv2d_towers(
        &mut self,
        case: &str,
        (x, w, b, dy): (&Tensor, &Tensor, Option<&Tensor>, &Tensor),
        params: Conv2dParams,
        (want_y, want_dx, want_dw): (&Tensor, &Tensor, &Tensor),
    ) -> Result<()> {
        for (algo, label) in [(ConvAlgo::ImplicitGemm, ""), (ConvAlgo::ImplicitGemm128, " (128)")] {
            self.conv2d_towers_with(algo, label, case, (x, w, b, dy), params, (want_y, want_dx, want_dw))?;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn conv2d_towers_with(
        &mut self,
        algo: ConvAlgo,
        label: &str,
        case: &str,
        (x, w, b, dy): (&Tensor, &Tensor, Option<&Tensor>, &Tensor),
        params: Conv2dParams,
        (want_y, want_dx, want_dw): (&Tensor, &Tensor, &Tensor),
    ) -> Result<()> {
        let run = |towers: bool| -> Result<(Tensor, Option<Tensor>, Option<Tensor>)> {
            let exec = ExecOptions { conv_algo: algo, towers, ..ExecOptions::default() };
            let y = conv2d::forward(x, w, b, params, &exec)?;
            let (dx, dw) = conv2d::backward_data_and_filter(dy, x, w, params, (true, true), &exec)?;
            Ok((y, dx, dw))
        };
        let one = run(false)?;
        let towers = run(true)?;
        let missing = || crate::Error::Device("conv2d towers: a gradient was not computed".into());
        let (dx1, dw1) = (one.1.ok_or_else(missing)?, one.2.ok_or_else(missing)?);
        let (dxt, dwt) = (towers.1.ok_or_else(missing)?, towers.2.ok_or_else(missing)?);
        self.record(&format!("conv2d forward towers{label}"), case, &towers.0, want_y, TOL_PLAIN)?;
        self.record(&format!("conv2d backward data towers{label}"), case, &dxt, want_dx, TOL_PLAIN)?;
        self.record(&format!("conv2d backward filter towers{label}"), case, &dwt, want_dw, TOL_REORDERED)?;
        self.record(&format!("conv2d towers = one launch (fwd){label}"), case, &towers.0, &one.0, 0.0)?;
        self.record(&format!("conv2d towers = one launch (data){label}"), case, &dxt, &dx1, 0.0)?;
        self.record(&format!("conv2d towers = one launch (filter){label}"), case, &dwt, &dw1, 0.0)
    }

    fn gemm(&mut self) -> Result<()> {
        // Partial tiles of every size: 130 and 131 rows span two 128-row tiles, 257 columns
        // three; 132×36·36×260 is a multiple of 4 in every dimension, so the 16-byte kernel
        // runs it in all four layouts, with a partial tile in m and n and a partial step in k.
        let shapes = [(37, 19, 23), (130, 70, 41), (131, 257, 19), (132, 260, 36)];
        for ((m, n, k), (ta, tb)) in shapes
            .into_iter()
            .flat_map(|s| [(false, false), (true, false), (false, true), (true, true)].map(|t| (s, t)))
        {
            let a = self.input(&if ta { [k, m] } else { [m, k] });
            let b = self.input(&if tb { [n, k] } else { [k, n] });
            // The definition's three loops on row-major operands: the stored transposes undone.
            let a_rows = if ta { transpose(&a.to_f64_vec()?, k, m) } else { a.to_f64_vec()? };
            let b_rows = if tb { transpose(&b.to_f64_vec()?, n, k) } else { b.to_f64_vec()? };
            let want = expected([m, n], gemm::reference::matmul(&a_rows, &b_rows, m, n, k));
            let (ad, bd) = (self.on_device(&a)?, self.on_device(&b)?);
            for kernel in GemmKernel::ALL.into_iter().filter(|kernel| kernel.fits(m, n, k, ta, tb)) {
                let got = matmul(&ad, ta, &bd, tb, kernel, Precision::Fp32)?;
                let case = format!("{m}×{k}·{k}×{n} transposed ({ta}, {tb}) {kernel:?}");
                self.record("matmul", &case, &got, &want, TOL_PLAIN)?;
            }
        }
        Ok(())
    }

    /// Bias + ReLU after a convolution (both GPU variants) and a fully connected layer, and
    /// the ReLU backward that also sums the bias gradient, against the definitions: the
    /// convolution's and the fully connected layer's references, then
    /// `ops::bias_act::reference`.
    fn bias_relu(&mut self) -> Result<()> {
        let p = Conv2dParams::default().padding(1).stride(2);
        let (x, w, b) = (self.input(&[2, 16, 12, 12]), self.input(&[20, 16, 3, 3]), self.input(&[20]));
        let g = ConvGeometry::new(x.shape(), w.shape(), p)?;
        let (xv, wv, bv) = (x.to_f64_vec()?, w.to_f64_vec()?, b.to_f64_vec()?);
        let want_v = elementwise::reference::relu(&reference::forward(&xv, &wv, Some(&bv), &g));
        let want = expected(g.out_shape(), want_v.clone());
        let (xd, wd, bd) = (self.on_device(&x)?, self.on_device(&w)?, self.on_device(&b)?);
        let case = format!("x [2, 16, 12, 12] w [20, 16, 3, 3] {}", describe(&p));
        let algos: &[(ConvAlgo, &str)] = if self.device.is_cpu() {
            &[(ConvAlgo::Auto, "")]
        } else {
            &[(ConvAlgo::Direct, " direct"), (ConvAlgo::ImplicitGemm, " implicit-gemm")]
        };
        for &(algo, name) in algos {
            let got = conv2d::forward_relu(&xd, &wd, Some(&bd), p, &ExecOptions::with_conv_algo(algo))?;
            self.record(&format!("conv2d+bias+relu forward{name}"), &case, &got, &want, TOL_PLAIN)?;
        }
        let dy = self.input(want.dims());
        let (dz, db) = bias_act::relu_backward_with_bias(&self.on_device(&dy)?, &self.on_device(&want)?, true)?;
        let (want_dz, want_db) =
            bias_act::reference::relu_backward_with_bias(&dy.to_f64_vec()?, &want_v, (g.n, g.o, g.oh * g.ow));
        self.record("relu backward + bias gradient (dz)", &case, &dz, &expected(g.out_shape(), want_dz), TOL_PLAIN)?;
        let db = db.unwrap_or_else(|| Tensor::zeros([0], DType::F32));
        self.record("relu backward + bias gradient (db)", &case, &db, &expected([g.o], want_db), TOL_REORDERED)?;

        let (n, i, o) = (9, 37, 21);
        let (x, w, b) = (self.input(&[n, i]), self.input(&[o, i]), self.input(&[o]));
        let y = linear::reference::forward(&x.to_f64_vec()?, &w.to_f64_vec()?, Some(&b.to_f64_vec()?), (n, i, o));
        let want_v = elementwise::reference::relu(&y);
        let want = expected([n, o], want_v.clone());
        let got = linear::forward_relu(
            &self.on_device(&x)?,
            &self.on_device(&w)?,
            Some(&self.on_device(&b)?),
            &ExecOptions::default(),
        )?;
        self.record("linear+bias+relu forward", "x [9, 37] w [21, 37]", &got, &want, TOL_PLAIN)?;
        let dy = self.input(&[n, o]);
        let (_, db) = bias_act::relu_backward_with_bias(&self.on_device(&dy)?, &self.on_device(&want)?, true)?;
        let (_, want_db) = bias_act::reference::relu_backward_with_bias(&dy.to_f64_vec()?, &want_v, (n, o, 1));
        let db = db.unwrap_or_else(|| Tensor::zeros([0], DType::F32));
        self.record("relu backward + bias gradient (db)", "[9, 21]", &db, &expected([o], want_db), TOL_REORDERED)
    }

    /// On the CPU: the backward of each op family against central differences (f64).
    fn finite_differences(&mut self) -> Result<()> {
        let x = self.input(&[2, 3, 6, 5]);
        let w = self.input(&[4, 3, 3, 3]);
        let labels = Tensor::from_cpu([2], vec![1i64, 3]);
        let fc = self.input(&[4, 4]);
        let report = gradcheck(
            &[x, w, fc],
            |g, v| {
                let h = g.conv2d(&v[0], &v[1], None, Conv2dParams::default().padding(1).stride(2))?;
                let h = g.relu(&h)?;
                let h = g.lrn(&h, LrnParams { alpha: 0.5, ..LrnParams::alexnet() })?;
                let h = g.max_pool2d(&h, Pool2dParams::new(2, 1))?;
                let h = g.global_avg_pool(&h)?;
                let h = g.flatten(&h)?;
                let logits = g.linear(&h, &v[2], None)?;
                g.cross_entropy(&logits, &labels)
            },
            GradcheckOptions::default(),
        )?;
        // Here the "error" is the worst ratio of |analytic − numeric| to the per-element
        // tolerance 1e-6 + 1e-5·|numeric|: at most 1 passes.
        self.checks.push(Check {
            op: "gradient vs finite differences".into(),
            case: format!("conv → relu → lrn → max pool → linear → loss, {} partials", report.checked),
            rel_err: report.worst_ratio,
            tol: 1.0,
        });
        Ok(())
    }
}

/// The expected result of a check: `values` (from a reference) as a CPU tensor of `shape`.
fn expected(shape: impl Into<Shape>, values: Vec<f64>) -> Tensor {
    Tensor::from_cpu(shape.into(), values)
}

/// The `cols × rows` transpose of a row-major `rows × cols` matrix.
fn transpose(v: &[f64], rows: usize, cols: usize) -> Vec<f64> {
    let mut t = vec![0.0; v.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = v[r * cols + c];
        }
    }
    t
}

pub(super) fn describe(p: &Conv2dParams) -> String {
    format!(
        "s{} p{} d{} g{}",
        if p.stride.0 == p.stride.1 { p.stride.0.to_string() } else { format!("{:?}", p.stride) },
        if p.padding.0 == p.padding.1 { p.padding.0.to_string() } else { format!("{:?}", p.padding) },
        p.dilation.0,
        p.groups
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rel_l2_rejects_nan_and_measures_relative_error() {
        assert_eq!(rel_l2(&[1.0, 2.0], &[1.0, 2.0]), 0.0);
        assert!((rel_l2(&[3.0, 4.0], &[0.0, 5.0]) - (9.0f64 + 1.0).sqrt() / 5.0).abs() < 1e-15);
        assert!(rel_l2(&[f64::NAN], &[1.0]).is_nan());
        assert_eq!(rel_l2(&[1.0], &[1.0, 2.0]), f64::INFINITY);
        assert!(!Check { op: String::new(), case: String::new(), rel_err: f64::NAN, tol: 1.0 }.passed());
    }
}
