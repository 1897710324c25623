//! The ops that touch each element once against their plain references: ReLU, addition,
//! product and accumulation (`ops::elementwise::reference`), concat and its split
//! (`ops::concat::reference`), and dropout (`ops::dropout::reference`).

use super::{TOL_PLAIN, Tester, expected};
use crate::error::Result;
use crate::ops::{concat, dropout, elementwise};
use crate::tensor::{DType, Tensor};

impl Tester {
    pub(super) fn elementwise(&mut self) -> Result<()> {
        use elementwise::reference;
        let s = [3, 17, 31];
        let case = format!("{s:?}");
        let (a, b) = (self.input(&s), self.input(&s));
        let (ad, bd) = (self.on_device(&a)?, self.on_device(&b)?);
        let (av, bv) = (a.to_f64_vec()?, b.to_f64_vec()?);
        let y = reference::relu(&av);
        let yd = elementwise::relu_forward(&ad)?;
        self.record("relu forward", &case, &yd, &expected(s, y.clone()), TOL_PLAIN)?;
        let want = expected(s, reference::relu_backward(&bv, &y));
        self.record("relu backward", &case, &elementwise::relu_backward(&bd, &yd)?, &want, TOL_PLAIN)?;
        let want = expected(s, reference::add(&av, &bv));
        self.record("add", &case, &elementwise::add(&ad, &bd)?, &want, TOL_PLAIN)?;
        let want = expected(s, reference::mul(&av, &bv));
        self.record("mul", &case, &elementwise::mul(&ad, &bd)?, &want, TOL_PLAIN)?;
        let (mut acc, mut accd) = (av, ad);
        reference::add_assign(&mut acc, &bv);
        elementwise::add_assign(&mut accd, &bd)?;
        self.record("add_assign (gradient accumulation)", &case, &accd, &expected(s, acc), TOL_PLAIN)
    }

    pub(super) fn concat(&mut self) -> Result<()> {
        let parts = [[2, 1, 5, 3], [2, 4, 5, 3], [2, 3, 5, 3]];
        let (channels, inner) = ([1, 4, 3], 5 * 3);
        let case = "three inputs of 1, 4 and 3 channels, [2, C, 5, 3]";
        let xs: Vec<Tensor> = parts.iter().map(|s| self.input(s)).collect();
        let xds: Vec<Tensor> = xs.iter().map(|x| self.on_device(x)).collect::<Result<_>>()?;
        let values: Vec<Vec<f64>> = xs.iter().map(Tensor::to_f64_vec).collect::<Result<_>>()?;
        let slices: Vec<&[f64]> = values.iter().map(Vec::as_slice).collect();
        let want = expected([2, 8, 5, 3], concat::reference::forward(&slices, 2, &channels, inner));
        let got = concat::forward(&xds.iter().collect::<Vec<_>>())?;
        self.record("concat forward", case, &got, &want, TOL_PLAIN)?;
        let dy = self.input(want.dims());
        let want = concat::reference::backward(&dy.to_f64_vec()?, 2, &channels, inner);
        let got = concat::backward(&self.on_device(&dy)?, &channels)?;
        for ((g, w), shape) in got.iter().zip(want).zip(parts) {
            self.record("concat backward (split)", case, g, &expected(shape, w), TOL_PLAIN)?;
        }
        Ok(())
    }

    pub(super) fn dropout(&mut self) -> Result<()> {
        use dropout::reference;
        let s = [4, 9, 29];
        let numel = s.iter().product();
        let case = format!("{s:?} p 0.3 seed 12345");
        let x = self.input(&s);
        // The mask must match exactly: both sides draw the same counter-based numbers and
        // round the scale to f32. (Ones through the forward pass are the mask.)
        let ones = Tensor::full(s, 1.0, DType::F32);
        let mask = dropout::forward(&self.on_device(&ones)?, 0.3, 12345)?;
        let want: Vec<f64> = reference::mask::<f32>(numel, 0.3, 12345).into_iter().map(f64::from).collect();
        self.record("dropout mask", &case, &mask, &expected(s, want), 0.0)?;
        let want = expected(s, reference::forward(&x.to_f64_vec()?, 0.3, 12345));
        self.record("dropout forward", &case, &dropout::forward(&self.on_device(&x)?, 0.3, 12345)?, &want, TOL_PLAIN)?;
        // The backward pass draws the same mask again from the seed.
        let dy = self.input(&s);
        let want = expected(s, reference::backward(&dy.to_f64_vec()?, 0.3, 12345));
        self.record("dropout backward", &case, &dropout::backward(&self.on_device(&dy)?, 0.3, 12345)?, &want, TOL_PLAIN)
    }
}
