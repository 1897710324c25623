//! The normalisations against their plain references: LRN (`ops::lrn::reference`), batch
//! norm in training and eval mode with its running statistics, and the fused batch norms
//! `act(BN(x) + residual)` (`ops::batchnorm::reference`).

use super::{TOL_PLAIN, TOL_REORDERED, Tester, expected};
use crate::error::Result;
use crate::ops::batchnorm::reference as bn;
use crate::ops::lrn::{self, LrnParams};
use crate::ops::{batchnorm, batchnorm_fused};
use crate::tensor::{DType, Shape, Tensor};

/// `(N, C, H·W)` of an NCHW shape.
fn nchw(s: [usize; 4]) -> (usize, usize, usize) {
    (s[0], s[1], s[2] * s[3])
}

impl Tester {
    pub(super) fn lrn(&mut self) -> Result<()> {
        let xs = [2, 7, 5, 3];
        let (x, dy) = (self.input(&xs), self.input(&xs));
        let (xd, dyd) = (self.on_device(&x)?, self.on_device(&dy)?);
        let (xv, dyv) = (x.to_f64_vec()?, dy.to_f64_vec()?);
        let strong = LrnParams { size: 4, alpha: 0.8, beta: 0.75, k: 2.0 };
        for p in [LrnParams::alexnet(), strong] {
            let case = format!("x {xs:?} size {} alpha {}", p.size, p.alpha);
            let yd = lrn::forward(&xd, p)?;
            self.record(
                "lrn forward",
                &case,
                &yd,
                &expected(xs, lrn::reference::forward(&xv, nchw(xs), &p)),
                TOL_PLAIN,
            )?;
            let want = expected(xs, lrn::reference::backward(&dyv, &xv, nchw(xs), &p));
            self.record("lrn backward", &case, &lrn::backward(&dyd, &xd, &yd, p)?, &want, TOL_PLAIN)?;
        }
        Ok(())
    }

    pub(super) fn batch_norm(&mut self) -> Result<()> {
        let (xs, eps) = ([3, 5, 7, 3], 1e-5);
        let dims = nchw(xs);
        let case = format!("x {xs:?}");
        let (x, gamma, beta, dy) = (self.input(&xs), self.input(&[5]), self.input(&[5]), self.input(&xs));
        let (xd, gd, bd, dyd) =
            (self.on_device(&x)?, self.on_device(&gamma)?, self.on_device(&beta)?, self.on_device(&dy)?);
        let (xv, gv, bv, dyv) = (x.to_f64_vec()?, gamma.to_f64_vec()?, beta.to_f64_vec()?, dy.to_f64_vec()?);
        let (y, mean, var) = bn::forward_train(&xv, &gv, &bv, dims, eps);
        let got = batchnorm::forward_train(&xd, &gd, &bd, eps)?;
        self.record("batch_norm forward (train)", &case, &got.y, &expected(xs, y), TOL_REORDERED)?;
        self.record("batch_norm batch mean", &case, &got.mean, &expected([5], mean.clone()), TOL_REORDERED)?;
        self.record("batch_norm batch variance", &case, &got.var, &expected([5], var.clone()), TOL_REORDERED)?;
        let want = bn::backward(&dyv, &xv, &gv, (&mean, &var), dims, eps, true);
        let got = batchnorm::backward_train(&dyd, &xd, &gd, &got.mean, &got.var, eps)?;
        self.record("batch_norm backward (train, data)", &case, &got.dx, &expected(xs, want.dx), TOL_REORDERED)?;
        self.record("batch_norm backward (weight)", &case, &got.dgamma, &expected([5], want.dgamma), TOL_REORDERED)?;
        self.record("batch_norm backward (bias)", &case, &got.dbeta, &expected([5], want.dbeta), TOL_REORDERED)?;

        let rv = Tensor::uniform([5], 0.5, 2.0, DType::F64, 99);
        let (rm, rvd) = (self.input(&[5]), self.on_device(&rv)?);
        let rmd = self.on_device(&rm)?;
        let stats = (rm.to_f64_vec()?, rv.to_f64_vec()?);
        let want = expected(xs, bn::forward(&xv, &gv, &bv, (&stats.0, &stats.1), dims, eps));
        let got = batchnorm::forward_eval(&xd, &gd, &bd, &rmd, &rvd, eps)?;
        self.record("batch_norm forward (eval)", &case, &got, &want, TOL_PLAIN)?;
        let want = bn::backward(&dyv, &xv, &gv, (&stats.0, &stats.1), dims, eps, false);
        let got = batchnorm::backward_eval(&dyd, &xd, &gd, &rmd, &rvd, eps)?;
        self.record("batch_norm backward (eval, data)", &case, &got.dx, &expected(xs, want.dx), TOL_PLAIN)?;
        self.record(
            "batch_norm backward (eval, weight)",
            &case,
            &got.dgamma,
            &expected([5], want.dgamma),
            TOL_REORDERED,
        )?;
        self.record("batch_norm backward (eval, bias)", &case, &got.dbeta, &expected([5], want.dbeta), TOL_REORDERED)?;

        let (mut rm_want, mut rv_want) = stats;
        let (mut rm_got, mut rv_got) = (rmd.clone(), rvd.clone());
        let (bm, bv) = (self.input(&[5]), Tensor::uniform([5], 0.1, 1.0, DType::F64, 98));
        bn::update_running_stats(&mut rm_want, &mut rv_want, (&bm.to_f64_vec()?, &bv.to_f64_vec()?), 63, 0.1);
        batchnorm::update_running_stats(
            &mut rm_got,
            &mut rv_got,
            &self.on_device(&bm)?,
            &self.on_device(&bv)?,
            63,
            0.1,
        )?;
        self.record("batch_norm running mean", &case, &rm_got, &expected([5], rm_want), TOL_PLAIN)?;
        self.record("batch_norm running variance", &case, &rv_got, &expected([5], rv_want), TOL_PLAIN)
    }

    /// The fused kernels against the fused reference: BN + add + ReLU and BN + ReLU (training
    /// and eval, both directions).
    pub(super) fn batch_norm_fused(&mut self) -> Result<()> {
        let eps = 1e-5;
        // [8, 3, 32, 32]: channels long enough to be cut into several slices, planes of a
        // multiple of 4 (the vector path); [5, 6, 7, 7]: planes of 49 (the scalar path).
        // [4, 3, 17, 17]: planes of 289, walked plane by plane one value at a time.
        for (xs, residual) in
            [([8, 3, 32, 32], true), ([5, 6, 7, 7], true), ([3, 5, 4, 6], false), ([4, 3, 17, 17], true)]
        {
            let (c, dims) = (xs[1], nchw(xs));
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
            let (xv, gv, bv, rv, dyv) =
                (x.to_f64_vec()?, gamma.to_f64_vec()?, beta.to_f64_vec()?, r.to_f64_vec()?, dy.to_f64_vec()?);
            let residual_v = residual.then_some(rv.as_slice());
            let (mean, var) = bn::batch_stats(&xv, dims);
            let want_y = bn::forward_fused(&xv, &gv, &bv, (&mean, &var), residual_v, true, dims, eps);
            let (want_g, dz) = bn::backward_fused(&dyv, Some(&want_y), &xv, &gv, (&mean, &var), dims, eps, true);

            let epilogue = batchnorm_fused::Epilogue { residual: residual.then_some(&rd), relu: true };
            let got = batchnorm_fused::forward_train_fused(&xd, &gd, &bd, epilogue, eps)?;
            self.record(&format!("{label} forward (train)"), &case, &got.y, &expected(xs, want_y), TOL_REORDERED)?;
            self.record(&format!("{label} batch mean"), &case, &got.mean, &expected([c], mean), TOL_REORDERED)?;
            self.record(&format!("{label} batch variance"), &case, &got.var, &expected([c], var), TOL_REORDERED)?;
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
            let (dx, dgamma, dbeta) =
                (expected(xs, want_g.dx), expected([c], want_g.dgamma), expected([c], want_g.dbeta));
            self.record(&format!("{label} backward (train, data)"), &case, &got_g.dx, &dx, TOL_REORDERED)?;
            self.record(&format!("{label} backward (weight)"), &case, &got_g.dgamma, &dgamma, TOL_REORDERED)?;
            self.record(&format!("{label} backward (bias)"), &case, &got_g.dbeta, &dbeta, TOL_REORDERED)?;
            if residual {
                let got_dr = got_g.dresidual.unwrap_or_else(|| Tensor::zeros([0], DType::F32));
                self.record(&format!("{label} backward (residual)"), &case, &got_dr, &expected(xs, dz), TOL_PLAIN)?;
            }

            // Eval mode, with fixed statistics.
            let (rm, rvar) = (self.input(&[c]), Tensor::uniform([c], 0.5, 2.0, DType::F64, 97));
            let (rmd, rvd) = (self.on_device(&rm)?, self.on_device(&rvar)?);
            let stats = (rm.to_f64_vec()?, rvar.to_f64_vec()?);
            let want_y = bn::forward_fused(&xv, &gv, &bv, (&stats.0, &stats.1), residual_v, true, dims, eps);
            let got_y = batchnorm_fused::forward_eval_fused(&xd, &gd, &bd, &rmd, &rvd, epilogue, eps)?;
            let (want_g, _) = bn::backward_fused(&dyv, Some(&want_y), &xv, &gv, (&stats.0, &stats.1), dims, eps, false);
            self.record(&format!("{label} forward (eval)"), &case, &got_y, &expected(xs, want_y), TOL_PLAIN)?;
            let got_g =
                batchnorm_fused::backward_fused(&dyd, &xd, Some(&got_y), &gd, &rmd, &rvd, eps, false, residual)?;
            self.record(
                &format!("{label} backward (eval, data)"),
                &case,
                &got_g.dx,
                &expected(xs, want_g.dx),
                TOL_PLAIN,
            )?;
        }

        // One-pass statistics on values far from zero: the mean is 1000 times the spread.
        let xs = [4, 2, 8, 8];
        let xv: Vec<f64> = self.input(&xs).to_f64_vec()?.into_iter().map(|v| v + 1000.0).collect();
        let x = Tensor::from_cpu(Shape::from(xs), xv.clone());
        let (gamma, beta) = (Tensor::full([2], 1.0, DType::F64), Tensor::zeros([2], DType::F64));
        let (_, want_var) = bn::batch_stats(&xv, nchw(xs));
        let got = batchnorm_fused::forward_train_fused(
            &self.on_device(&x)?,
            &self.on_device(&gamma)?,
            &self.on_device(&beta)?,
            batchnorm_fused::Epilogue { residual: None, relu: true },
            eps,
        )?;
        let case = "x [4, 2, 8, 8] around 1000";
        self.record("bn+relu batch variance", case, &got.var, &expected([2], want_var), TOL_REORDERED)
    }
}
