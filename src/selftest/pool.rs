//! Max, average and global-average pooling against `ops::pool::reference`.

use super::{TOL_PLAIN, TOL_REORDERED, Tester, expected};
use crate::error::Result;
use crate::ops::pool::{self, Pool2dParams, reference};
use crate::tensor::{Shape, Tensor};

impl Tester {
    pub(super) fn pooling(&mut self) -> Result<()> {
        // Distinct values so no window has a tie (ties may legitimately pick either input).
        let xs = [2, 3, 13, 11];
        let dims = (xs[0], xs[1], xs[2], xs[3]);
        let mut order: Vec<usize> = (0..xs.iter().product()).collect();
        crate::rng::Rng::new(self.seed).shuffle(&mut order);
        let xv: Vec<f64> = order.iter().map(|&v| v as f64 * 0.01 - 4.0).collect();
        let xd = self.on_device(&Tensor::from_cpu(Shape::from(xs), xv.clone()))?;
        for p in [Pool2dParams::new(3, 2), Pool2dParams::new(3, 1).padding(1), Pool2dParams::new(2, 2)] {
            let case = format!("x {xs:?} kernel {:?} stride {:?} pad {:?}", p.kernel, p.stride, p.padding);
            let (oh, ow) = reference::output_hw(dims, &p);
            let ys = [xs[0], xs[1], oh, ow];
            let want = expected(ys, reference::max_pool2d_forward(&xv, dims, &p));
            self.record("max_pool2d forward", &case, &pool::max_pool2d_forward(&xd, p)?, &want, TOL_PLAIN)?;
            let dy = self.input(&ys);
            let (dyd, dyv) = (self.on_device(&dy)?, dy.to_f64_vec()?);
            let want = expected(xs, reference::max_pool2d_backward(&dyv, &xv, dims, &p));
            self.record("max_pool2d backward", &case, &pool::max_pool2d_backward(&dyd, &xd, p)?, &want, TOL_PLAIN)?;
            let want = expected(ys, reference::avg_pool2d_forward(&xv, dims, &p));
            self.record("avg_pool2d forward", &case, &pool::avg_pool2d_forward(&xd, p)?, &want, TOL_PLAIN)?;
            let want = expected(xs, reference::avg_pool2d_backward(&dyv, dims, &p));
            let got = pool::avg_pool2d_backward(&dyd, xd.shape(), p)?;
            self.record("avg_pool2d backward", &case, &got, &want, TOL_PLAIN)?;
        }
        let case = format!("x {xs:?}");
        let want = expected([xs[0], xs[1], 1, 1], reference::global_avg_pool_forward(&xv, dims));
        self.record("global_avg_pool forward", &case, &pool::global_avg_pool_forward(&xd)?, &want, TOL_REORDERED)?;
        let dy = self.input(&[2, 3, 1, 1]);
        let want = expected(xs, reference::global_avg_pool_backward(&dy.to_f64_vec()?, dims));
        let got = pool::global_avg_pool_backward(&self.on_device(&dy)?, xd.shape())?;
        self.record("global_avg_pool backward", &case, &got, &want, TOL_PLAIN)
    }
}
