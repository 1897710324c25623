//! The convolutions and the matrix product in each low precision (`--precision`), against
//! the references run on the operands rounded as the precision rounds them (in f64), with the
//! result rounded too for the 16-bit types. On cuda and emu this is the tensor-core kernels
//! (or the rounded FP32 ones where those run); on cpu the rounded FP32 path. Then the 16-bit
//! copies a BF16 or FP16 graph keeps of its activations, exactly the rounded values.

use super::{Tester, expected};
use crate::error::Result;
use crate::ops::conv2d::{self, Conv2dParams, ConvGeometry, reference};
use crate::ops::gemm::{self, GemmKernel, matmul};
use crate::ops::precision::{narrow, widen};
use crate::ops::{ExecOptions, Precision};
use crate::tensor::{Shape, Tensor};

/// Relative L2 error allowed in `precision`. TF32 results are FP32 sums of exact products, as
/// any reordered FP32 sum. A 16-bit result is rounded after the sum; where the device's FP32
/// sum and the reference's f64 one fall on two sides of a rounding boundary, they come out
/// one 16-bit step apart (2^-8 relative for BF16, 2^-11 for FP16). That happens to a few
/// values in a thousand at most, which keeps the relative L2 error well below 2^-8 · √0.01.
fn tolerance(precision: Precision) -> f64 {
    match precision {
        Precision::Fp32 | Precision::Tf32 => super::TOL_REORDERED,
        Precision::Bf16 => 1e-3,
        Precision::Fp16 => 2e-4,
    }
}

impl Tester {
    pub(super) fn low_precision(&mut self) -> Result<()> {
        let p = Conv2dParams::default;
        let convs = [
            ([2, 5, 9, 7], [6, 5, 3, 3], p().padding(1)),
            ([1, 3, 17, 17], [8, 3, 7, 7], p().stride(2).padding(3)),
            ([2, 6, 9, 9], [4, 3, 3, 3], p().padding(2).dilation(2).groups(2)),
            ([2, 24, 10, 10], [33, 24, 1, 1], p()),
        ];
        for precision in [Precision::Tf32, Precision::Bf16, Precision::Fp16] {
            for (xs, ws, params) in convs {
                self.conv2d_in(precision, &xs, &ws, params)?;
            }
            for (m, n, k) in [(37, 19, 45), (130, 70, 41)] {
                self.matmul_in(precision, m, n, k)?;
            }
            if precision.half_dtype().is_some() {
                self.kept_copy_in(precision, &[3, 1000, 7])?;
            }
        }
        Ok(())
    }

    /// The 16-bit copy a BF16 or FP16 graph keeps of an activation, and the FP32 tensor the
    /// backward pass reads back from it: both exactly the values rounded to the precision.
    fn kept_copy_in(&mut self, precision: Precision, shape: &[usize]) -> Result<()> {
        let x = self.input(shape);
        let want = expected(shape, precision.round_operands(&x.to_f64_vec()?));
        let copy = narrow(&self.on_device(&x)?, precision)?;
        let case = format!("{shape:?} as {}", copy.dtype());
        self.record(&format!("activation kept in {precision}"), &case, &copy, &want, 0.0)?;
        self.record(&format!("activation widened from {precision}"), &case, &widen(&copy)?, &want, 0.0)
    }

    fn conv2d_in(&mut self, precision: Precision, xs: &[usize], ws: &[usize], params: Conv2dParams) -> Result<()> {
        let (x, w) = (self.input(xs), self.input(ws));
        let g = ConvGeometry::new(&Shape::from(xs), &Shape::from(ws), params)?;
        let dy = self.input(g.out_shape().dims());
        let (xr, wr, dyr) = (
            precision.round_operands(&x.to_f64_vec()?),
            precision.round_operands(&w.to_f64_vec()?),
            precision.round_operands(&dy.to_f64_vec()?),
        );
        let want_y = expected(g.out_shape(), precision.round_result(reference::forward(&xr, &wr, None, &g)));
        let want_dx = expected(g.in_shape(), precision.round_result(reference::backward_data(&dyr, &wr, &g)));
        let want_dw = expected(g.weight_shape(), precision.round_result(reference::backward_filter(&dyr, &xr, &g)));
        let exec = ExecOptions::with_precision(precision);
        let (xd, wd, dyd) = (self.on_device(&x)?, self.on_device(&w)?, self.on_device(&dy)?);
        let case = format!("x {xs:?} w {ws:?} {}", super::describe(&params));
        let tol = tolerance(precision);
        let y = conv2d::forward(&xd, &wd, None, params, &exec)?;
        self.record(&format!("conv2d forward {precision}"), &case, &y, &want_y, tol)?;
        let dx = conv2d::backward_data(&dyd, &wd, &g.in_shape(), params, &exec)?;
        self.record(&format!("conv2d backward data {precision}"), &case, &dx, &want_dx, tol)?;
        let dw = conv2d::backward_filter(&dyd, &xd, &g.weight_shape(), params, &exec)?;
        self.record(&format!("conv2d backward filter {precision}"), &case, &dw, &want_dw, tol)
    }

    fn matmul_in(&mut self, precision: Precision, m: usize, n: usize, k: usize) -> Result<()> {
        let (a, b) = (self.input(&[m, k]), self.input(&[k, n]));
        let want = gemm::reference::matmul(
            &precision.round_operands(&a.to_f64_vec()?),
            &precision.round_operands(&b.to_f64_vec()?),
            m,
            n,
            k,
        );
        let want: Tensor = expected([m, n], precision.round_result(want));
        let got = matmul(&self.on_device(&a)?, false, &self.on_device(&b)?, false, GemmKernel::Auto, precision)?;
        self.record(&format!("matmul {precision}"), &format!("{m}×{k}·{k}×{n}"), &got, &want, tolerance(precision))
    }
}
