//! Local response normalisation across channels (AlexNet, section 3.3).
//!
//! Each value is divided by a power of the energy of its neighbours in the channel dimension,
//! at the same pixel:
//!
//! ```text
//! s[c] = k + (α / size) · Σ_{c' ∈ W(c)} x[c']²        W(c) = [c − ⌊size/2⌋, c + ⌊(size−1)/2⌋] ∩ [0, C)
//! y[c] = x[c] · s[c]^(−β)
//! ```
//!
//! This is PyTorch's `nn.LocalResponseNorm` and Caffe's LRN layer: α is divided by `size`.
//! The AlexNet paper writes the sum without that division, with α = 1e-4; the Caffe model
//! of AlexNet (and our `LrnParams::alexnet`) uses α = 1e-4 in the divided form, a
//! normalisation five times weaker than the paper's formula read literally. Size 5 and
//! β = 0.75 everywhere; k = 2 is the paper's (Caffe's reference model leaves it at 1).
//!
//! The gradient: `y[j]` depends on `x[i]` directly when `i = j` and through `s[j]` whenever
//! `i ∈ W(j)`, which is when `j ∈ [i − ⌊(size−1)/2⌋, i + ⌊size/2⌋]`. Differentiating,
//!
//! ```text
//! dx[i] = dy[i] · s[i]^(−β) − (2αβ / size) · x[i] · Σ_{j : i ∈ W(j)} dy[j] · y[j] / s[j]
//! ```
//!
//! The backward pass recomputes `s` from `x` instead of keeping it: one more tensor the size
//! of the activation would otherwise stay alive until backward.

pub mod reference;

use rayon::prelude::*;

use super::{common_dtype, expect_nchw, expect_shape, gpu_f32, host, with_float_type};
use crate::device::gpu::{KernelCall, to_i32, to_i64};
use crate::device::host_memory::filled;
use crate::error::{Error, Result};
use crate::tensor::{Element, Float, Tensor};

const OP: &str = "lrn";

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LrnParams {
    pub size: usize,
    pub alpha: f64,
    pub beta: f64,
    pub k: f64,
}

impl LrnParams {
    /// AlexNet's: size 5, α = 1e-4 (divided by size, the convention of PyTorch and Caffe),
    /// β = 0.75, k = 2 (the paper's value; Caffe's reference model leaves k at its default, 1).
    pub fn alexnet() -> Self {
        LrnParams { size: 5, alpha: 1e-4, beta: 0.75, k: 2.0 }
    }

    fn check(&self) -> Result<()> {
        if self.size == 0 {
            return Err(Error::argument(OP, "size must be at least 1"));
        }
        if self.k <= 0.0 || self.alpha < 0.0 {
            return Err(Error::argument(
                OP,
                format!("k must be positive and alpha non-negative, got k={} alpha={}", self.k, self.alpha),
            ));
        }
        Ok(())
    }

    /// The shape and parameter arguments of the kernels in kernels/lrn.cu.
    fn append_args(&self, call: KernelCall, n: usize, c: usize, hw: usize) -> Result<KernelCall> {
        Ok(call
            .i32(to_i32(OP, "batch", n)?)
            .i32(to_i32(OP, "channels", c)?)
            .i64(to_i64(hw))
            .i32(to_i32(OP, "size", self.size)?)
            .f32((self.alpha / self.size as f64) as f32)
            .f32(self.beta as f32)
            .f32(self.k as f32))
    }

    /// Channels that normalise channel `c`: `[c − ⌊size/2⌋, c + ⌊(size−1)/2⌋]` within `0..channels`.
    fn window(&self, c: usize, channels: usize) -> std::ops::Range<usize> {
        c.saturating_sub(self.size / 2)..(c + (self.size - 1) / 2 + 1).min(channels)
    }

    /// Channels whose window contains channel `i`: `[i − ⌊(size−1)/2⌋, i + ⌊size/2⌋]`.
    fn windows_containing(&self, i: usize, channels: usize) -> std::ops::Range<usize> {
        i.saturating_sub((self.size - 1) / 2)..(i + self.size / 2 + 1).min(channels)
    }
}

/// `s[c]` for every channel of one image, `[C, HW]`.
fn scale<T: Float>(x_img: &[T], c: usize, hw: usize, p: &LrnParams) -> Vec<T> {
    let alpha_over_n = T::from_f64(p.alpha / p.size as f64);
    let k = T::from_f64(p.k);
    let mut s = vec![T::ZERO; c * hw];
    for ch in 0..c {
        let out = &mut s[ch * hw..][..hw];
        for src in p.window(ch, c) {
            for (o, &v) in out.iter_mut().zip(&x_img[src * hw..][..hw]) {
                *o += v * v;
            }
        }
        out.iter_mut().for_each(|o| *o = k + alpha_over_n * *o);
    }
    s
}

pub fn forward(x: &Tensor, p: LrnParams) -> Result<Tensor> {
    p.check()?;
    let (n, c, h, w) = expect_nchw(OP, "input", x)?;
    super::expect_nonempty_image(OP, "input", x.shape())?;
    let hw = h * w;
    if let Some(gpu) = gpu_f32(OP, x.dtype(), x.device())? {
        let y = gpu.alloc(x.dtype(), x.numel())?;
        let call = KernelCall::elementwise("lrn_fwd_f32", x.numel()).buf(&y).buf(x.gpu_buffer()?);
        gpu.launch(p.append_args(call, n, c, hw)?)?;
        return Ok(Tensor::from_gpu(x.shape().clone(), y));
    }
    with_float_type!(x.dtype(), OP, |T| {
        let xs = host::<T>(x)?;
        let neg_beta = T::from_f64(-p.beta);
        let mut y = filled(xs.len(), T::ZERO)?;
        y.par_chunks_mut(c * hw).zip(xs.par_chunks(c * hw)).for_each(|(y_img, x_img)| {
            let s = scale(x_img, c, hw, &p);
            for ((y, &x), &s) in y_img.iter_mut().zip(x_img).zip(&s) {
                *y = x * s.powf(neg_beta);
            }
        });
        Ok(Tensor::from_cpu(x.shape().clone(), y))
    })
}

/// The input gradient, from the output gradient, the input and the output.
pub fn backward(dy: &Tensor, x: &Tensor, y: &Tensor, p: LrnParams) -> Result<Tensor> {
    p.check()?;
    let (n, c, h, w) = expect_nchw(OP, "input", x)?;
    super::expect_nonempty_image(OP, "input", x.shape())?;
    expect_shape(OP, "output gradient", dy, x.dims())?;
    expect_shape(OP, "output", y, x.dims())?;
    let (dtype, device) = common_dtype(OP, &[("output gradient", dy), ("input", x), ("output", y)])?;
    let hw = h * w;
    if let Some(gpu) = gpu_f32(OP, dtype, device)? {
        let dx = gpu.alloc(dtype, x.numel())?;
        let call = KernelCall::elementwise("lrn_bwd_f32", x.numel())
            .buf(&dx)
            .buf(dy.gpu_buffer()?)
            .buf(x.gpu_buffer()?)
            .buf(y.gpu_buffer()?);
        gpu.launch(p.append_args(call, n, c, hw)?)?;
        return Ok(Tensor::from_gpu(x.shape().clone(), dx));
    }
    with_float_type!(dtype, OP, |T| {
        let (dys, xs, ys) = (host::<T>(dy)?, host::<T>(x)?, host::<T>(y)?);
        let neg_beta = T::from_f64(-p.beta);
        let coef = T::from_f64(2.0 * p.alpha * p.beta / p.size as f64);
        let mut dx = filled(xs.len(), T::ZERO)?;
        dx.par_chunks_mut(c * hw)
            .zip(xs.par_chunks(c * hw).zip(dys.par_chunks(c * hw).zip(ys.par_chunks(c * hw))))
            .for_each(|(dx_img, (x_img, (dy_img, y_img)))| {
                let s = scale(x_img, c, hw, &p);
                // ratio[j] = dy[j]·y[j]/s[j], the term each channel j sends to its window.
                let ratio: Vec<T> = dy_img.iter().zip(y_img).zip(&s).map(|((&d, &y), &s)| d * y / s).collect();
                for i in 0..c {
                    let out = &mut dx_img[i * hw..][..hw];
                    out.fill(T::ZERO);
                    for j in p.windows_containing(i, c) {
                        for (o, &r) in out.iter_mut().zip(&ratio[j * hw..][..hw]) {
                            *o += r;
                        }
                    }
                    let at = i * hw;
                    for (q, o) in out.iter_mut().enumerate() {
                        let direct = dy_img[at + q] * s[at + q].powf(neg_beta);
                        *o = direct - coef * x_img[at + q] * *o;
                    }
                }
            });
        Ok(Tensor::from_cpu(x.shape().clone(), dx))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_follow_pytorch() {
        let p = LrnParams { size: 4, ..LrnParams::alexnet() };
        // size 4: c − 2 … c + 1
        assert_eq!(p.window(0, 10), 0..2);
        assert_eq!(p.window(5, 10), 3..7);
        assert_eq!(p.window(9, 10), 7..10);
        // i is in W(j) for j in i − 1 … i + 2
        assert_eq!(p.windows_containing(5, 10), 4..8);
        for i in 0..10 {
            for j in 0..10 {
                assert_eq!(p.window(j, 10).contains(&i), p.windows_containing(i, 10).contains(&j));
            }
        }
    }

    #[test]
    fn forward_by_hand() {
        // Two channels, one pixel, size 3 (window of c is c−1..c+1), α = 3, β = 1, k = 1:
        // s = 1 + (3/3)(x0² + x1²) = 1 + 1 + 4 = 6 for both channels.
        let p = LrnParams { size: 3, alpha: 3.0, beta: 1.0, k: 1.0 };
        let x = Tensor::from_vec([1, 2, 1, 1], vec![1.0f64, 2.0]).unwrap();
        let y = forward(&x, p).unwrap().to_vec::<f64>().unwrap();
        assert!((y[0] - 1.0 / 6.0).abs() < 1e-15 && (y[1] - 2.0 / 6.0).abs() < 1e-15);
    }
}
