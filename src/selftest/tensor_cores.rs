//! The tensor-core kernels (kernels/conv2d_tc.cu, kernels/gemm_tc.cu) in each precision and
//! tile configuration, against the definitions on operands rounded as the precision rounds
//! them (`Precision::round`), the results rounded for BF16 and FP16: cuda (compute capability
//! 8.0 or newer) and emu. The limit adds to the reordered-sum tolerance the relative size of
//! one unit of the 16-bit output type, since a sum and its reference may round to neighbours.

use super::{TOL_REORDERED, Tester, describe, expected, transpose};
use crate::error::Result;
use crate::ops::conv2d::{self, Conv2dParams, ConvAlgo, ConvGeometry, reference};
use crate::ops::gemm::{self, GemmKernel, matmul};
use crate::ops::{ExecOptions, Precision};
use crate::tensor::Tensor;

const LOW: [Precision; 3] = [Precision::Tf32, Precision::Bf16, Precision::Fp16];

impl Tester {
    pub(super) fn tensor_cores(&mut self) -> Result<()> {
        let Some(gpu) = self.device.gpu()? else { return Ok(()) };
        if gpu.compute_capability().is_some_and(|(major, _)| major < 8) {
            return Ok(());
        }
        self.tensor_core_convolutions()?;
        self.tensor_core_products()
    }

    fn tensor_core_convolutions(&mut self) -> Result<()> {
        let p = Conv2dParams::default;
        let cases = [
            ([2, 5, 9, 8], [7, 5, 3, 3], p().stride(2).padding(1)),
            ([2, 6, 7, 7], [9, 2, 3, 3], p().padding(2).dilation(2).groups(3)),
            ([1, 3, 23, 23], [8, 3, 7, 7], p().stride(2).padding(3)),
            ([1, 72, 4, 3], [130, 72, 1, 1], p()),
        ];
        for (xs, ws, params) in cases {
            let case = format!("x {:?} w {:?} {}", xs, ws, describe(&params));
            let (x, w) = (self.input(&xs), self.input(&ws));
            let g = ConvGeometry::new(x.shape(), w.shape(), params)?;
            let dy = self.input(&g.out_shape());
            let (xd, wd, dyd) = (self.on_device(&x)?, self.on_device(&w)?, self.on_device(&dy)?);
            for precision in LOW {
                let (xv, wv, dyv) = (
                    precision.round_operands(&x.to_f64_vec()?),
                    precision.round_operands(&w.to_f64_vec()?),
                    precision.round_operands(&dy.to_f64_vec()?),
                );
                let want_y = expected(g.out_shape(), precision.round_result(reference::forward(&xv, &wv, None, &g)));
                let want_dx = expected(g.in_shape(), precision.round_result(reference::backward_data(&dyv, &wv, &g)));
                let want_dw =
                    expected(g.weight_shape(), precision.round_result(reference::backward_filter(&dyv, &xv, &g)));
                for (algo, tile) in [(ConvAlgo::TensorCore64, "tc64"), (ConvAlgo::TensorCore128, "tc128")] {
                    let exec = ExecOptions { conv_algo: algo, precision, ..ExecOptions::default() };
                    let tol = precision.result_tolerance(TOL_REORDERED);
                    let label = format!("{tile} {precision}");
                    let got = conv2d::forward(&xd, &wd, None, params, &exec)?;
                    self.record(&format!("conv2d forward {label}"), &case, &got, &want_y, tol)?;
                    let got = conv2d::backward_data(&dyd, &wd, x.shape(), params, &exec)?;
                    self.record(&format!("conv2d backward data {label}"), &case, &got, &want_dx, tol)?;
                    let got = conv2d::backward_filter(&dyd, &xd, w.shape(), params, &exec)?;
                    self.record(&format!("conv2d backward filter {label}"), &case, &got, &want_dw, tol)?;
                }
            }
        }
        Ok(())
    }

    /// The three products of a linear layer (x·Wᵀ, dy·W, dyᵀ·x) with partial tiles, and x·Wᵀ
    /// with K a multiple of 4 (the 16-byte copies).
    fn tensor_core_products(&mut self) -> Result<()> {
        for ((m, n, k), (ta, tb)) in [
            ((37, 130, 75), (false, true)),
            ((37, 75, 130), (false, false)),
            ((130, 75, 37), (true, false)),
            ((37, 130, 72), (false, true)),
        ] {
            let a = self.input(&if ta { [k, m] } else { [m, k] });
            let b = self.input(&if tb { [n, k] } else { [k, n] });
            let (ad, bd) = (self.on_device(&a)?, self.on_device(&b)?);
            for precision in LOW {
                let a_rows =
                    precision.round_operands(&if ta { transpose(&a.to_f64_vec()?, k, m) } else { a.to_f64_vec()? });
                let b_rows =
                    precision.round_operands(&if tb { transpose(&b.to_f64_vec()?, n, k) } else { b.to_f64_vec()? });
                let want = expected([m, n], precision.round_result(gemm::reference::matmul(&a_rows, &b_rows, m, n, k)));
                for kernel in [GemmKernel::TensorCore64, GemmKernel::TensorCore128] {
                    let got: Tensor = matmul(&ad, ta, &bd, tb, kernel, precision)?;
                    let case = format!("{m}×{k}·{k}×{n} transposed ({ta}, {tb}) {kernel:?}");
                    self.record(
                        &format!("matmul {precision}"),
                        &case,
                        &got,
                        &want,
                        precision.result_tolerance(TOL_REORDERED),
                    )?;
                }
            }
        }
        Ok(())
    }
}
