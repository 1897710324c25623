//! The classifier's end of a network against the plain references: the fully connected
//! layer (`ops::linear::reference`), softmax cross-entropy (`ops::loss::reference`) and the
//! SGD step (`ops::sgd::reference`).

use super::{TOL_PLAIN, Tester, expected};
use crate::error::Result;
use crate::ops::ExecOptions;
use crate::ops::{Precision, linear, loss, sgd};
use crate::tensor::{DType, Shape, Tensor};

impl Tester {
    pub(super) fn linear(&mut self) -> Result<()> {
        use linear::reference;
        let (n, i, o) = (5, 17, 13);
        let dims = (n, i, o);
        let case = format!("x [{n}, {i}] w [{o}, {i}]");
        let (x, w, b, dy) = (self.input(&[n, i]), self.input(&[o, i]), self.input(&[o]), self.input(&[n, o]));
        let (xd, wd, bd, dyd) = (self.on_device(&x)?, self.on_device(&w)?, self.on_device(&b)?, self.on_device(&dy)?);
        let (xv, wv, bv, dyv) = (x.to_f64_vec()?, w.to_f64_vec()?, b.to_f64_vec()?, dy.to_f64_vec()?);
        let got = linear::forward(&xd, &wd, Some(&bd), &ExecOptions::default())?;
        let want = expected([n, o], reference::forward(&xv, &wv, Some(&bv), dims));
        self.record("linear forward", &case, &got, &want, TOL_PLAIN)?;
        let got = linear::backward_data(&dyd, &wd, Precision::Fp32)?;
        self.record(
            "linear backward (data)",
            &case,
            &got,
            &expected([n, i], reference::backward_data(&dyv, &wv, dims)),
            TOL_PLAIN,
        )?;
        let got = linear::backward_weight(&dyd, &xd, Precision::Fp32)?;
        let want = expected([o, i], reference::backward_weight(&dyv, &xv, dims));
        self.record("linear backward (weight)", &case, &got, &want, TOL_PLAIN)?;
        let got = linear::backward_bias(&dyd)?;
        self.record(
            "linear backward (bias)",
            &case,
            &got,
            &expected([o], reference::backward_bias(&dyv, dims)),
            TOL_PLAIN,
        )
    }

    pub(super) fn cross_entropy(&mut self) -> Result<()> {
        use loss::reference;
        let (n, k) = (7, 13);
        let case = format!("logits [{n}, {k}]");
        let z = self.input(&[n, k]);
        let classes: Vec<usize> = (0..n).map(|i| (i * 5 + 3) % k).collect();
        let labels = Tensor::from_cpu([n], classes.iter().map(|&c| c as i64).collect::<Vec<i64>>());
        let (loss_want, probs_want) = reference::forward(&z.to_f64_vec()?, &classes, k);
        let (loss_got, probs_got) = loss::forward(&self.on_device(&z)?, &labels.to_device(self.device)?)?;
        let want = expected(Shape::scalar(), vec![loss_want]);
        self.record("cross_entropy forward (loss)", &case, &loss_got, &want, TOL_PLAIN)?;
        let want = expected([n, k], probs_want.clone());
        self.record("cross_entropy forward (probabilities)", &case, &probs_got, &want, TOL_PLAIN)?;
        let want = expected([n, k], reference::backward(&probs_want, &classes, 0.7, k));
        let dloss = self.on_device(&Tensor::scalar(0.7f64))?;
        let got = loss::backward(&probs_got, &labels.to_device(self.device)?, &dloss)?;
        self.record("cross_entropy backward", &case, &got, &want, TOL_PLAIN)
    }

    pub(super) fn sgd(&mut self) -> Result<()> {
        let s = [1003];
        let case = "1003 parameters (groups of 4 and a tail), lr 0.1, momentum 0.9, weight decay 5e-4, two steps";
        let h = sgd::SgdParams { lr: 0.1, momentum: 0.9, weight_decay: 5e-4 };
        let (p, g) = (self.input(&s), self.input(&s));
        let v = Tensor::zeros(s, DType::F64);
        let (mut pd, gd, mut vd) = (self.on_device(&p)?, self.on_device(&g)?, self.on_device(&v)?);
        let (mut pv, gv, mut vv) = (p.to_f64_vec()?, g.to_f64_vec()?, v.to_f64_vec()?);
        for _ in 0..2 {
            sgd::reference::step(&mut pv, &gv, &mut vv, h);
            sgd::step(&mut pd, &gd, &mut vd, h)?;
        }
        self.record("sgd step (parameters)", case, &pd, &expected(s, pv), TOL_PLAIN)?;
        self.record("sgd step (velocity)", case, &vd, &expected(s, vv), TOL_PLAIN)
    }
}
