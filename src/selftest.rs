//! `scratchnet selftest`: every op, forward and backward, on one device against the CPU
//! reference computed in f64, on random inputs of awkward sizes (batch 1, prime heights,
//! widths and channel counts, channels that are no multiple of any tile).
//!
//! On `cuda` and `emu` the candidate is the kernel; on `cpu` it is the f32 reference itself,
//! plus gradient checks by finite differences. New device buffers are filled with NaN before
//! each kernel runs, so an element a kernel forgets to write cannot pass. The error measure
//! is the relative L2 error `‖a − b‖ / ‖b‖`; NaN never passes.

use crate::autograd::gradcheck::{GradcheckOptions, gradcheck};
use crate::device::{Device, poison_new_buffers};
use crate::error::Result;
use crate::ops::conv2d::{self, Conv2dParams, ConvAlgo, ConvGeometry, reference};
use crate::ops::gemm::{GemmKernel, matmul};
use crate::ops::lrn::{self, LrnParams};
use crate::ops::pool::{self, Pool2dParams};
use crate::ops::{ExecOptions, batchnorm, batchnorm_fused, bias_act, concat, dropout, elementwise, linear, loss, sgd};
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
        t.fused()?;
        t.elementwise()?;
        t.concat()?;
        t.dropout()?;
        t.cross_entropy()?;
        t.sgd()?;
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
            let want = matmul(&a, ta, &b, tb, GemmKernel::Tiled)?;
            let (ad, bd) = (self.on_device(&a)?, self.on_device(&b)?);
            for kernel in GemmKernel::ALL.into_iter().filter(|kernel| kernel.fits(m, n, k, ta, tb)) {
                let got = matmul(&ad, ta, &bd, tb, kernel)?;
                let case = format!("{m}×{k}·{k}×{n} transposed ({ta}, {tb}) {kernel:?}");
                self.record("matmul", &case, &got, &want, TOL_PLAIN)?;
            }
        }
        Ok(())
    }

    fn linear(&mut self) -> Result<()> {
        let (n, i, o) = (5, 17, 13);
        let case = format!("x [{n}, {i}] w [{o}, {i}]");
        let (x, w, b, dy) = (self.input(&[n, i]), self.input(&[o, i]), self.input(&[o]), self.input(&[n, o]));
        let (xd, wd, bd, dyd) = (self.on_device(&x)?, self.on_device(&w)?, self.on_device(&b)?, self.on_device(&dy)?);
        let got = linear::forward(&xd, &wd, Some(&bd))?;
        self.record("linear forward", &case, &got, &linear::forward(&x, &w, Some(&b))?, TOL_PLAIN)?;
        let got = linear::backward_data(&dyd, &wd)?;
        self.record("linear backward (data)", &case, &got, &linear::backward_data(&dy, &w)?, TOL_PLAIN)?;
        let got = linear::backward_weight(&dyd, &xd)?;
        self.record("linear backward (weight)", &case, &got, &linear::backward_weight(&dy, &x)?, TOL_PLAIN)?;
        let got = linear::backward_bias(&dyd)?;
        self.record("linear backward (bias)", &case, &got, &linear::backward_bias(&dy)?, TOL_PLAIN)
    }

    fn pooling(&mut self) -> Result<()> {
        // Distinct values so no window has a tie (ties may legitimately pick either input).
        let xs = [2, 3, 13, 11];
        let mut order: Vec<usize> = (0..xs.iter().product()).collect();
        crate::rng::Rng::new(self.seed).shuffle(&mut order);
        let x = Tensor::from_cpu(Shape::from(xs), order.iter().map(|&v| v as f64 * 0.01 - 4.0).collect::<Vec<f64>>());
        let xd = self.on_device(&x)?;
        for p in [Pool2dParams::new(3, 2), Pool2dParams::new(3, 1).padding(1), Pool2dParams::new(2, 2)] {
            let case = format!("x {xs:?} kernel {:?} stride {:?} pad {:?}", p.kernel, p.stride, p.padding);
            let y = pool::max_pool2d_forward(&x, p)?;
            self.record("max_pool2d forward", &case, &pool::max_pool2d_forward(&xd, p)?, &y, TOL_PLAIN)?;
            let dy = self.input(y.dims());
            let dyd = self.on_device(&dy)?;
            let want = pool::max_pool2d_backward(&dy, &x, p)?;
            self.record("max_pool2d backward", &case, &pool::max_pool2d_backward(&dyd, &xd, p)?, &want, TOL_PLAIN)?;
            let want = pool::avg_pool2d_forward(&x, p)?;
            self.record("avg_pool2d forward", &case, &pool::avg_pool2d_forward(&xd, p)?, &want, TOL_PLAIN)?;
            let want = pool::avg_pool2d_backward(&dy, x.shape(), p)?;
            let got = pool::avg_pool2d_backward(&dyd, x.shape(), p)?;
            self.record("avg_pool2d backward", &case, &got, &want, TOL_PLAIN)?;
        }
        let case = format!("x {xs:?}");
        let want = pool::global_avg_pool_forward(&x)?;
        self.record("global_avg_pool forward", &case, &pool::global_avg_pool_forward(&xd)?, &want, TOL_REORDERED)?;
        let dy = self.input(&[2, 3, 1, 1]);
        let want = pool::global_avg_pool_backward(&dy, x.shape())?;
        let got = pool::global_avg_pool_backward(&self.on_device(&dy)?, x.shape())?;
        self.record("global_avg_pool backward", &case, &got, &want, TOL_PLAIN)
    }

    fn lrn(&mut self) -> Result<()> {
        let xs = [2, 7, 5, 3];
        let (x, dy) = (self.input(&xs), self.input(&xs));
        let (xd, dyd) = (self.on_device(&x)?, self.on_device(&dy)?);
        let strong = LrnParams { size: 4, alpha: 0.8, beta: 0.75, k: 2.0 };
        for p in [LrnParams::alexnet(), strong] {
            let case = format!("x {xs:?} size {} alpha {}", p.size, p.alpha);
            let y = lrn::forward(&x, p)?;
            let yd = lrn::forward(&xd, p)?;
            self.record("lrn forward", &case, &yd, &y, TOL_PLAIN)?;
            let want = lrn::backward(&dy, &x, &y, p)?;
            self.record("lrn backward", &case, &lrn::backward(&dyd, &xd, &yd, p)?, &want, TOL_PLAIN)?;
        }
        Ok(())
    }

    fn batch_norm(&mut self) -> Result<()> {
        let xs = [3, 5, 7, 3];
        let case = format!("x {xs:?}");
        let (x, gamma, beta, dy) = (self.input(&xs), self.input(&[5]), self.input(&[5]), self.input(&xs));
        let (xd, gd, bd, dyd) =
            (self.on_device(&x)?, self.on_device(&gamma)?, self.on_device(&beta)?, self.on_device(&dy)?);
        let want = batchnorm::forward_train(&x, &gamma, &beta, 1e-5)?;
        let got = batchnorm::forward_train(&xd, &gd, &bd, 1e-5)?;
        self.record("batch_norm forward (train)", &case, &got.y, &want.y, TOL_REORDERED)?;
        self.record("batch_norm batch mean", &case, &got.mean, &want.mean, TOL_REORDERED)?;
        self.record("batch_norm batch variance", &case, &got.var, &want.var, TOL_REORDERED)?;
        let want_g = batchnorm::backward_train(&dy, &x, &gamma, &want.mean, &want.var, 1e-5)?;
        let got_g = batchnorm::backward_train(&dyd, &xd, &gd, &got.mean, &got.var, 1e-5)?;
        self.record("batch_norm backward (train, data)", &case, &got_g.dx, &want_g.dx, TOL_REORDERED)?;
        self.record("batch_norm backward (weight)", &case, &got_g.dgamma, &want_g.dgamma, TOL_REORDERED)?;
        self.record("batch_norm backward (bias)", &case, &got_g.dbeta, &want_g.dbeta, TOL_REORDERED)?;

        let rv = Tensor::uniform([5], 0.5, 2.0, DType::F64, 99);
        let (rm, rvd) = (self.input(&[5]), self.on_device(&rv)?);
        let rmd = self.on_device(&rm)?;
        let want = batchnorm::forward_eval(&x, &gamma, &beta, &rm, &rv, 1e-5)?;
        let got = batchnorm::forward_eval(&xd, &gd, &bd, &rmd, &rvd, 1e-5)?;
        self.record("batch_norm forward (eval)", &case, &got, &want, TOL_PLAIN)?;
        let want = batchnorm::backward_eval(&dy, &x, &gamma, &rm, &rv, 1e-5)?;
        let got = batchnorm::backward_eval(&dyd, &xd, &gd, &rmd, &rvd, 1e-5)?;
        self.record("batch_norm backward (eval, data)", &case, &got.dx, &want.dx, TOL_PLAIN)?;

        let (mut rm_want, mut rv_want) = (rm.clone(), rv.clone());
        let (mut rm_got, mut rv_got) = (rmd.clone(), rvd.clone());
        let (bm, bv) = (self.input(&[5]), Tensor::uniform([5], 0.1, 1.0, DType::F64, 98));
        batchnorm::update_running_stats(&mut rm_want, &mut rv_want, &bm, &bv, 63, 0.1)?;
        batchnorm::update_running_stats(
            &mut rm_got,
            &mut rv_got,
            &self.on_device(&bm)?,
            &self.on_device(&bv)?,
            63,
            0.1,
        )?;
        self.record("batch_norm running mean", &case, &rm_got, &rm_want, TOL_PLAIN)?;
        self.record("batch_norm running variance", &case, &rv_got, &rv_want, TOL_PLAIN)
    }

    /// The fused kernels against the plain ops composed on the CPU: BN + add + ReLU and
    /// BN + ReLU (training and eval, both directions), bias + ReLU after a convolution and a
    /// fully connected layer, and the ReLU backward that also sums the bias gradient.
    fn fused(&mut self) -> Result<()> {
        let eps = 1e-5;
        // [8, 3, 32, 32]: channels long enough to be cut into several slices, planes of a
        // multiple of 4 (the vector path); [5, 6, 7, 7]: planes of 49 (the scalar path).
        // [4, 3, 17, 17]: planes of 289, walked plane by plane one value at a time.
        for (xs, residual) in
            [([8, 3, 32, 32], true), ([5, 6, 7, 7], true), ([3, 5, 4, 6], false), ([4, 3, 17, 17], true)]
        {
            let c = xs[1];
            let label = if residual { "bn+add+relu" } else { "bn+relu" };
            let case = format!("x {xs:?}");
            let (x, gamma, beta, r, dy) =
                (self.input(&xs), self.input(&[c]), self.input(&[c]), self.input(&xs), self.input(&xs));
            let (xd, gd, bd, rd, dyd) = (
                self.on_device(&x)?,
                self.on_device(&gamma)?,
                self.on_device(&beta)?,
                self.on_device(&r)?,
                self.on_device(&dy)?,
            );
            // The reference: batch norm, then add, then ReLU, each the plain op.
            let plain = batchnorm::forward_train(&x, &gamma, &beta, eps)?;
            let sum = if residual { elementwise::add(&plain.y, &r)? } else { plain.y.clone() };
            let want_y = elementwise::relu_forward(&sum)?;
            let dz = elementwise::relu_backward(&dy, &want_y)?;
            let want_g = batchnorm::backward_train(&dz, &x, &gamma, &plain.mean, &plain.var, eps)?;

            let epilogue = batchnorm_fused::Epilogue { residual: residual.then_some(&rd), relu: true };
            let got = batchnorm_fused::forward_train_fused(&xd, &gd, &bd, epilogue, eps)?;
            self.record(&format!("{label} forward (train)"), &case, &got.y, &want_y, TOL_REORDERED)?;
            self.record(&format!("{label} batch mean"), &case, &got.mean, &plain.mean, TOL_REORDERED)?;
            self.record(&format!("{label} batch variance"), &case, &got.var, &plain.var, TOL_REORDERED)?;
            let got_g = batchnorm_fused::backward_fused(
                &dyd,
                &xd,
                Some(&got.y),
                &gd,
                &got.mean,
                &got.var,
                eps,
                true,
                residual,
            )?;
            self.record(&format!("{label} backward (train, data)"), &case, &got_g.dx, &want_g.dx, TOL_REORDERED)?;
            self.record(&format!("{label} backward (weight)"), &case, &got_g.dgamma, &want_g.dgamma, TOL_REORDERED)?;
            self.record(&format!("{label} backward (bias)"), &case, &got_g.dbeta, &want_g.dbeta, TOL_REORDERED)?;
            if residual {
                let got_dr = got_g.dresidual.unwrap_or_else(|| Tensor::zeros([0], DType::F32));
                self.record(&format!("{label} backward (residual)"), &case, &got_dr, &dz, TOL_PLAIN)?;
            }

            // Eval mode, with fixed statistics.
            let (rm, rv) = (self.input(&[c]), Tensor::uniform([c], 0.5, 2.0, DType::F64, 97));
            let (rmd, rvd) = (self.on_device(&rm)?, self.on_device(&rv)?);
            let plain = batchnorm::forward_eval(&x, &gamma, &beta, &rm, &rv, eps)?;
            let sum = if residual { elementwise::add(&plain, &r)? } else { plain };
            let want_y = elementwise::relu_forward(&sum)?;
            let got_y = batchnorm_fused::forward_eval_fused(&xd, &gd, &bd, &rmd, &rvd, epilogue, eps)?;
            self.record(&format!("{label} forward (eval)"), &case, &got_y, &want_y, TOL_PLAIN)?;
            let dz = elementwise::relu_backward(&dy, &want_y)?;
            let want_g = batchnorm::backward_eval(&dz, &x, &gamma, &rm, &rv, eps)?;
            let got_g =
                batchnorm_fused::backward_fused(&dyd, &xd, Some(&got_y), &gd, &rmd, &rvd, eps, false, residual)?;
            self.record(&format!("{label} backward (eval, data)"), &case, &got_g.dx, &want_g.dx, TOL_PLAIN)?;
        }

        // One-pass statistics on values far from zero: the mean is 1000 times the spread.
        let xs = [4, 2, 8, 8];
        let x = elementwise::add(&self.input(&xs), &Tensor::full(xs, 1000.0, DType::F64))?;
        let (gamma, beta) = (Tensor::full([2], 1.0, DType::F64), Tensor::zeros([2], DType::F64));
        let want = batchnorm::forward_train(&x, &gamma, &beta, eps)?;
        let got = batchnorm_fused::forward_train_fused(
            &self.on_device(&x)?,
            &self.on_device(&gamma)?,
            &self.on_device(&beta)?,
            batchnorm_fused::Epilogue { residual: None, relu: true },
            eps,
        )?;
        let case = "x [4, 2, 8, 8] around 1000";
        self.record("bn+relu batch variance", case, &got.var, &want.var, TOL_REORDERED)?;

        // Bias + ReLU after a convolution (both GPU variants) and a fully connected layer.
        let p = Conv2dParams::default().padding(1).stride(2);
        let (x, w, b) = (self.input(&[2, 16, 12, 12]), self.input(&[20, 16, 3, 3]), self.input(&[20]));
        let want = elementwise::relu_forward(&conv2d::forward(&x, &w, Some(&b), p, &ExecOptions::default())?)?;
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
        let want_dz = elementwise::relu_backward(&dy, &want)?;
        self.record("relu backward + bias gradient (dz)", &case, &dz, &want_dz, TOL_PLAIN)?;
        let db = db.unwrap_or_else(|| Tensor::zeros([0], DType::F32));
        self.record(
            "relu backward + bias gradient (db)",
            &case,
            &db,
            &conv2d::backward_bias(&want_dz)?,
            TOL_REORDERED,
        )?;

        let (x, w, b) = (self.input(&[9, 37]), self.input(&[21, 37]), self.input(&[21]));
        let want = elementwise::relu_forward(&linear::forward(&x, &w, Some(&b))?)?;
        let got = linear::forward_relu(&self.on_device(&x)?, &self.on_device(&w)?, Some(&self.on_device(&b)?))?;
        self.record("linear+bias+relu forward", "x [9, 37] w [21, 37]", &got, &want, TOL_PLAIN)?;
        let dy = self.input(&[9, 21]);
        let (_, db) = bias_act::relu_backward_with_bias(&self.on_device(&dy)?, &self.on_device(&want)?, true)?;
        let want_db = linear::backward_bias(&elementwise::relu_backward(&dy, &want)?)?;
        let db = db.unwrap_or_else(|| Tensor::zeros([0], DType::F32));
        self.record("relu backward + bias gradient (db)", "[9, 21]", &db, &want_db, TOL_REORDERED)
    }

    fn elementwise(&mut self) -> Result<()> {
        let s = [3, 17, 31];
        let case = format!("{s:?}");
        let (a, b) = (self.input(&s), self.input(&s));
        let (ad, bd) = (self.on_device(&a)?, self.on_device(&b)?);
        let y = elementwise::relu_forward(&a)?;
        let yd = elementwise::relu_forward(&ad)?;
        self.record("relu forward", &case, &yd, &y, TOL_PLAIN)?;
        let want = elementwise::relu_backward(&b, &y)?;
        self.record("relu backward", &case, &elementwise::relu_backward(&bd, &yd)?, &want, TOL_PLAIN)?;
        self.record("add", &case, &elementwise::add(&ad, &bd)?, &elementwise::add(&a, &b)?, TOL_PLAIN)?;
        self.record("mul", &case, &elementwise::mul(&ad, &bd)?, &elementwise::mul(&a, &b)?, TOL_PLAIN)?;
        let (mut acc, mut accd) = (a.clone(), ad.clone());
        elementwise::add_assign(&mut acc, &b)?;
        elementwise::add_assign(&mut accd, &bd)?;
        self.record("add_assign (gradient accumulation)", &case, &accd, &acc, TOL_PLAIN)
    }

    fn concat(&mut self) -> Result<()> {
        let parts = [[2, 1, 5, 3], [2, 4, 5, 3], [2, 3, 5, 3]];
        let case = "three inputs of 1, 4 and 3 channels, [2, C, 5, 3]";
        let xs: Vec<Tensor> = parts.iter().map(|s| self.input(s)).collect();
        let xds: Vec<Tensor> = xs.iter().map(|x| self.on_device(x)).collect::<Result<_>>()?;
        let want = concat::forward(&xs.iter().collect::<Vec<_>>())?;
        let got = concat::forward(&xds.iter().collect::<Vec<_>>())?;
        self.record("concat forward", case, &got, &want, TOL_PLAIN)?;
        let dy = self.input(want.dims());
        let want = concat::backward(&dy, &[1, 4, 3])?;
        let got = concat::backward(&self.on_device(&dy)?, &[1, 4, 3])?;
        for (g, w) in got.iter().zip(&want) {
            self.record("concat backward (split)", case, g, w, TOL_PLAIN)?;
        }
        Ok(())
    }

    fn dropout(&mut self) -> Result<()> {
        let s = [4, 9, 29];
        let case = format!("{s:?} p 0.3 seed 12345");
        let x = self.input(&s);
        // The mask must match exactly: both sides draw the same counter-based numbers. (Ones
        // through the forward pass are the mask.)
        let ones = Tensor::full(s, 1.0, DType::F32);
        let mask = dropout::forward(&self.on_device(&ones)?, 0.3, 12345)?;
        self.record("dropout mask", &case, &mask, &dropout::mask(s, 0.3, 12345)?, 0.0)?;
        let y = dropout::forward(&x, 0.3, 12345)?;
        self.record("dropout forward", &case, &dropout::forward(&self.on_device(&x)?, 0.3, 12345)?, &y, TOL_PLAIN)?;
        // The backward pass draws the same mask again from the seed.
        let dy = self.input(&s);
        let want = dropout::backward(&dy, 0.3, 12345)?;
        self.record("dropout backward", &case, &dropout::backward(&self.on_device(&dy)?, 0.3, 12345)?, &want, TOL_PLAIN)
    }

    fn cross_entropy(&mut self) -> Result<()> {
        let (n, k) = (7, 13);
        let case = format!("logits [{n}, {k}]");
        let z = self.input(&[n, k]);
        let labels = Tensor::from_cpu([n], (0..n as i64).map(|i| (i * 5 + 3) % k as i64).collect::<Vec<i64>>());
        let (loss_want, probs_want) = loss::forward(&z, &labels)?;
        let (loss_got, probs_got) = loss::forward(&self.on_device(&z)?, &labels.to_device(self.device)?)?;
        self.record("cross_entropy forward (loss)", &case, &loss_got, &loss_want, TOL_PLAIN)?;
        self.record("cross_entropy forward (probabilities)", &case, &probs_got, &probs_want, TOL_PLAIN)?;
        let dloss = Tensor::scalar(0.7f64);
        let want = loss::backward(&probs_want, &labels, &dloss)?;
        let got = loss::backward(&probs_got, &labels.to_device(self.device)?, &self.on_device(&dloss)?)?;
        self.record("cross_entropy backward", &case, &got, &want, TOL_PLAIN)
    }

    fn sgd(&mut self) -> Result<()> {
        let s = [1003];
        let case = "1003 parameters (groups of 4 and a tail), lr 0.1, momentum 0.9, weight decay 5e-4, two steps";
        let h = sgd::SgdParams { lr: 0.1, momentum: 0.9, weight_decay: 5e-4 };
        let (mut p, g) = (self.input(&s), self.input(&s));
        let mut v = Tensor::zeros(s, DType::F64);
        let (mut pd, gd, mut vd) = (self.on_device(&p)?, self.on_device(&g)?, self.on_device(&v)?);
        for _ in 0..2 {
            sgd::step(&mut p, &g, &mut v, h)?;
            sgd::step(&mut pd, &gd, &mut vd, h)?;
        }
        self.record("sgd step (parameters)", case, &pd, &p, TOL_PLAIN)?;
        self.record("sgd step (velocity)", case, &vd, &v, TOL_PLAIN)
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

fn describe(p: &Conv2dParams) -> String {
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
