//! Pooling: max pooling, average pooling, and global average pooling.
//!
//! A pooling window of `kernel` pixels slides over each channel plane with `stride`; when the
//! stride is smaller than the kernel the windows overlap, as in AlexNet's 3×3 stride-2 pools
//! (the paper credits the overlap with a small drop in error). Output size, as PyTorch with
//! `ceil_mode=False`: `⌊(H + 2·pad − kernel) / stride⌋ + 1`.
//!
//! - **Max**: padding counts as −∞, so it never wins. The gradient goes to the one input that
//!   won each window (the first maximum in scan order, as PyTorch), summed where overlapping
//!   windows share a winner. Backward finds the winner again from the input rather than
//!   storing indices: the same comparison in the same order gives the same answer.
//! - **Average**: padding counts as zeros *and* in the divisor (`count_include_pad=True`,
//!   PyTorch's default), so every window divides by `kernel_h · kernel_w`.
//! - **Global average**: the mean of each whole plane, `[N, C, H, W] → [N, C, 1, 1]`.

pub mod reference;

use rayon::prelude::*;

use super::{expect_nchw, expect_shape, gpu_f32, host, with_float_type};
use crate::device::GpuDevice;
use crate::device::gpu::{GpuBuffer, KernelCall, to_i32, to_i64};
use crate::device::host_memory::filled;
use crate::error::{Error, Result};
use crate::tensor::{Element, Float, Shape, Tensor};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool2dParams {
    pub kernel: (usize, usize),
    pub stride: (usize, usize),
    pub padding: (usize, usize),
}

impl Pool2dParams {
    /// A square window with a square stride and no padding.
    pub fn new(kernel: usize, stride: usize) -> Self {
        Pool2dParams { kernel: (kernel, kernel), stride: (stride, stride), padding: (0, 0) }
    }

    pub fn padding(mut self, p: usize) -> Self {
        self.padding = (p, p);
        self
    }
}

/// Sizes of one pooling, checked.
#[derive(Clone, Copy, Debug)]
struct PoolGeometry {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
    p: Pool2dParams,
}

impl PoolGeometry {
    fn new(op: &'static str, x: &Shape, p: Pool2dParams) -> Result<Self> {
        let (n, c, h, w) = x.dims4().ok_or_else(|| Error::shape_of(op, "a 4-D input (N, C, H, W)", "input", x))?;
        let (kh, kw) = p.kernel;
        if kh == 0 || kw == 0 || p.stride.0 == 0 || p.stride.1 == 0 {
            return Err(Error::argument(op, format!("kernel and stride must be at least 1, got {p:?}")));
        }
        if p.padding.0 > kh / 2 || p.padding.1 > kw / 2 {
            return Err(Error::argument(op, format!("padding must be at most half the kernel, got {p:?}")));
        }
        super::expect_nonempty_image(op, "input", x)?;
        // Padding is at most half the kernel (checked above), so these sums cannot overflow.
        if h + 2 * p.padding.0 < kh || w + 2 * p.padding.1 < kw {
            return Err(Error::shape(
                op,
                format!("an input at least {kh}x{kw} after padding {:?}", p.padding),
                format!("input of shape {x}"),
            ));
        }
        let oh = (h + 2 * p.padding.0 - kh) / p.stride.0 + 1;
        let ow = (w + 2 * p.padding.1 - kw) / p.stride.1 + 1;
        Ok(PoolGeometry { n, c, h, w, oh, ow, p })
    }

    fn out_shape(&self) -> Shape {
        Shape::from([self.n, self.c, self.oh, self.ow])
    }

    /// Launches one of the window kernels of kernels/pool.cu (they share this argument list)
    /// with one thread per element of `threads_over`: outputs for the forward kernels,
    /// inputs for the backward ones.
    fn launch(
        &self,
        gpu: &GpuDevice,
        kernel: &'static str,
        threads_over: usize,
        bufs: &[&GpuBuffer],
        op: &'static str,
    ) -> Result<()> {
        let mut call = KernelCall::elementwise(kernel, threads_over);
        for b in bufs {
            call = call.buf(b);
        }
        call = call.i64(to_i64(self.n * self.c));
        let p = &self.p;
        for (what, v) in [
            ("height", self.h),
            ("width", self.w),
            ("output height", self.oh),
            ("output width", self.ow),
            ("kernel", p.kernel.0),
            ("kernel", p.kernel.1),
            ("stride", p.stride.0),
            ("stride", p.stride.1),
            ("padding", p.padding.0),
            ("padding", p.padding.1),
        ] {
            call = call.i32(to_i32(op, what, v)?);
        }
        gpu.launch(call)
    }

    /// The input rows (or columns) covered by output index `o`, clipped to the image.
    fn window(o: usize, stride: usize, pad: usize, k: usize, len: usize) -> std::ops::Range<usize> {
        let start = (o * stride) as isize - pad as isize;
        let end = (start + k as isize).min(len as isize);
        (start.max(0) as usize)..(end.max(0) as usize)
    }

    fn rows(&self, oy: usize) -> std::ops::Range<usize> {
        Self::window(oy, self.p.stride.0, self.p.padding.0, self.p.kernel.0, self.h)
    }

    fn cols(&self, ox: usize) -> std::ops::Range<usize> {
        Self::window(ox, self.p.stride.1, self.p.padding.1, self.p.kernel.1, self.w)
    }

    /// Index (within the plane) of the first maximum of window `(oy, ox)`. NaN wins, so it
    /// propagates as in PyTorch.
    fn argmax<T: Float>(&self, plane: &[T], oy: usize, ox: usize) -> usize {
        let mut best = T::NEG_INFINITY;
        let mut best_at = usize::MAX;
        for iy in self.rows(oy) {
            for ix in self.cols(ox) {
                let v = plane[iy * self.w + ix];
                #[allow(clippy::eq_op)] // v != v is the NaN test
                if v > best || v != v || best_at == usize::MAX {
                    best = v;
                    best_at = iy * self.w + ix;
                    if v != v {
                        return best_at;
                    }
                }
            }
        }
        best_at
    }

    /// The value [`Self::argmax`] points at, found without tracking where: the first maximum
    /// of window `(oy, ox)`, or its first NaN. (The forward pass needs only the value; this is
    /// several times faster on the small windows of a network's pooling.)
    fn window_max<T: Float>(&self, plane: &[T], rows: std::ops::Range<usize>, cols: std::ops::Range<usize>) -> T {
        let mut best = plane[rows.start * self.w + cols.start];
        for iy in rows {
            for &v in &plane[iy * self.w..][cols.clone()] {
                #[allow(clippy::eq_op)] // v != v is the NaN test
                if v != v {
                    return v;
                }
                if v > best {
                    best = v;
                }
            }
        }
        best
    }
}

pub fn max_pool2d_forward(x: &Tensor, p: Pool2dParams) -> Result<Tensor> {
    const OP: &str = "max_pool2d";
    let g = PoolGeometry::new(OP, x.shape(), p)?;
    if let Some(gpu) = gpu_f32(OP, x.dtype(), x.device())? {
        let n = g.out_shape().numel();
        let y = gpu.alloc(x.dtype(), n)?;
        g.launch(&gpu, "max_pool2d_fwd_f32", n, &[&y, x.gpu_buffer()?], OP)?;
        return Ok(Tensor::from_gpu(g.out_shape(), y));
    }
    with_float_type!(x.dtype(), OP, |T| {
        let xs = host::<T>(x)?;
        let mut y = filled(g.n * g.c * g.oh * g.ow, T::ZERO)?;
        let cols: Vec<_> = (0..g.ow).map(|ox| g.cols(ox)).collect();
        y.par_chunks_mut(g.oh * g.ow).zip(xs.par_chunks(g.h * g.w)).for_each(|(out, plane)| {
            for (oy, out_row) in out.chunks_exact_mut(g.ow).enumerate() {
                let rows = g.rows(oy);
                for (v, cols) in out_row.iter_mut().zip(&cols) {
                    *v = g.window_max(plane, rows.clone(), cols.clone());
                }
            }
        });
        Ok(Tensor::from_cpu(g.out_shape(), y))
    })
}

/// Routes each output gradient to its window's maximum in `x`.
pub fn max_pool2d_backward(dy: &Tensor, x: &Tensor, p: Pool2dParams) -> Result<Tensor> {
    const OP: &str = "max_pool2d backward";
    let g = PoolGeometry::new(OP, x.shape(), p)?;
    expect_shape(OP, "output gradient", dy, &g.out_shape())?;
    let (dtype, device) = super::common_dtype(OP, &[("output gradient", dy), ("input", x)])?;
    if let Some(gpu) = gpu_f32(OP, dtype, device)? {
        let n = x.numel();
        let dx = gpu.alloc(dtype, n)?;
        g.launch(&gpu, "max_pool2d_bwd_f32", n, &[&dx, dy.gpu_buffer()?, x.gpu_buffer()?], OP)?;
        return Ok(Tensor::from_gpu(x.shape().clone(), dx));
    }
    with_float_type!(x.dtype(), OP, |T| {
        let (xs, dys) = (host::<T>(x)?, host::<T>(dy)?);
        let mut dx = filled(xs.len(), T::ZERO)?;
        dx.par_chunks_mut(g.h * g.w).zip(xs.par_chunks(g.h * g.w).zip(dys.par_chunks(g.oh * g.ow))).for_each(
            |(dplane, (plane, dout))| {
                for oy in 0..g.oh {
                    for ox in 0..g.ow {
                        dplane[g.argmax(plane, oy, ox)] += dout[oy * g.ow + ox];
                    }
                }
            },
        );
        Ok(Tensor::from_cpu(x.shape().clone(), dx))
    })
}

pub fn avg_pool2d_forward(x: &Tensor, p: Pool2dParams) -> Result<Tensor> {
    const OP: &str = "avg_pool2d";
    let g = PoolGeometry::new(OP, x.shape(), p)?;
    if let Some(gpu) = gpu_f32(OP, x.dtype(), x.device())? {
        let n = g.out_shape().numel();
        let y = gpu.alloc(x.dtype(), n)?;
        g.launch(&gpu, "avg_pool2d_fwd_f32", n, &[&y, x.gpu_buffer()?], OP)?;
        return Ok(Tensor::from_gpu(g.out_shape(), y));
    }
    with_float_type!(x.dtype(), OP, |T| {
        let xs = host::<T>(x)?;
        let inv_area = T::ONE / T::from_usize(p.kernel.0 * p.kernel.1);
        let mut y = filled(g.n * g.c * g.oh * g.ow, T::ZERO)?;
        y.par_chunks_mut(g.oh * g.ow).zip(xs.par_chunks(g.h * g.w)).for_each(|(out, plane)| {
            for oy in 0..g.oh {
                for ox in 0..g.ow {
                    let mut s = T::ZERO;
                    for iy in g.rows(oy) {
                        for ix in g.cols(ox) {
                            s += plane[iy * g.w + ix];
                        }
                    }
                    out[oy * g.ow + ox] = s * inv_area;
                }
            }
        });
        Ok(Tensor::from_cpu(g.out_shape(), y))
    })
}

/// Spreads each output gradient evenly over its window (padding takes its share and drops it).
pub fn avg_pool2d_backward(dy: &Tensor, x_shape: &Shape, p: Pool2dParams) -> Result<Tensor> {
    const OP: &str = "avg_pool2d backward";
    let g = PoolGeometry::new(OP, x_shape, p)?;
    expect_shape(OP, "output gradient", dy, &g.out_shape())?;
    if let Some(gpu) = gpu_f32(OP, dy.dtype(), dy.device())? {
        let n = x_shape.numel();
        let dx = gpu.alloc(dy.dtype(), n)?;
        g.launch(&gpu, "avg_pool2d_bwd_f32", n, &[&dx, dy.gpu_buffer()?], OP)?;
        return Ok(Tensor::from_gpu(x_shape.clone(), dx));
    }
    with_float_type!(dy.dtype(), OP, |T| {
        let dys = host::<T>(dy)?;
        let inv_area = T::ONE / T::from_usize(p.kernel.0 * p.kernel.1);
        let mut dx = filled(x_shape.numel(), T::ZERO)?;
        dx.par_chunks_mut(g.h * g.w).zip(dys.par_chunks(g.oh * g.ow)).for_each(|(dplane, dout)| {
            for oy in 0..g.oh {
                for ox in 0..g.ow {
                    let share = dout[oy * g.ow + ox] * inv_area;
                    for iy in g.rows(oy) {
                        for ix in g.cols(ox) {
                            dplane[iy * g.w + ix] += share;
                        }
                    }
                }
            }
        });
        Ok(Tensor::from_cpu(x_shape.clone(), dx))
    })
}

/// The mean of each plane: `[N, C, H, W] → [N, C, 1, 1]`, summed in f64.
pub fn global_avg_pool_forward(x: &Tensor) -> Result<Tensor> {
    const OP: &str = "global_avg_pool";
    let (n, c, h, w) = expect_nchw(OP, "input", x)?;
    super::expect_nonempty_image(OP, "input", x.shape())?;
    if let Some(gpu) = gpu_f32(OP, x.dtype(), x.device())? {
        let y = gpu.alloc(x.dtype(), n * c)?;
        gpu.launch(
            KernelCall::block_per_item("global_avg_pool_fwd_f32", n * c)?
                .buf(&y)
                .buf(x.gpu_buffer()?)
                .i64(to_i64(h * w)),
        )?;
        return Ok(Tensor::from_gpu([n, c, 1, 1], y));
    }
    with_float_type!(x.dtype(), OP, |T| {
        let xs = host::<T>(x)?;
        let y: Vec<T> =
            xs.par_chunks(h * w).map(|plane| T::from_f64(super::sum_f64(plane, |v| v) / (h * w) as f64)).collect();
        Ok(Tensor::from_cpu([n, c, 1, 1], y))
    })
}

pub fn global_avg_pool_backward(dy: &Tensor, x_shape: &Shape) -> Result<Tensor> {
    const OP: &str = "global_avg_pool backward";
    let (n, c, h, w) =
        x_shape.dims4().ok_or_else(|| Error::shape_of(OP, "a 4-D input (N, C, H, W)", "input", x_shape))?;
    super::expect_nonempty_image(OP, "input", x_shape)?;
    expect_shape(OP, "output gradient", dy, &[n, c, 1, 1])?;
    if let Some(gpu) = gpu_f32(OP, dy.dtype(), dy.device())? {
        let dx = gpu.alloc(dy.dtype(), x_shape.numel())?;
        gpu.launch(
            KernelCall::elementwise("global_avg_pool_bwd_f32", x_shape.numel())
                .buf(&dx)
                .buf(dy.gpu_buffer()?)
                .i64(to_i64(n * c))
                .i64(to_i64(h * w)),
        )?;
        return Ok(Tensor::from_gpu(x_shape.clone(), dx));
    }
    with_float_type!(dy.dtype(), OP, |T| {
        let dys = host::<T>(dy)?;
        let inv = T::ONE / T::from_usize(h * w);
        let mut dx = filled(n * c * h * w, T::ZERO)?;
        dx.par_chunks_mut(h * w).zip(dys.par_iter()).for_each(|(plane, &d)| plane.fill(d * inv));
        Ok(Tensor::from_cpu(x_shape.clone(), dx))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(shape: [usize; 4], v: Vec<f32>) -> Tensor {
        Tensor::from_vec(shape, v).unwrap()
    }

    #[test]
    fn max_pool_overlapping_windows_by_hand() {
        // 3×3 kernel, stride 2 on a 5×5 plane → 2×2, windows overlap on row/column 2.
        let x = t([1, 1, 5, 5], (0..25).map(|v| ((v * 7) % 25) as f32).collect());
        // plane:  0  7 14 21  3 / 10 17 24  6 13 / 20  2  9 16 23 / 5 12 19 1 8 / 15 22 4 11 18
        let y = max_pool2d_forward(&x, Pool2dParams::new(3, 2)).unwrap();
        assert_eq!(y.to_vec::<f32>().unwrap(), vec![24.0, 24.0, 22.0, 23.0]);
        let dy = t([1, 1, 2, 2], vec![1.0, 2.0, 3.0, 4.0]);
        let dx = max_pool2d_backward(&dy, &x, Pool2dParams::new(3, 2)).unwrap();
        let dx = dx.to_vec::<f32>().unwrap();
        assert_eq!(dx[7], 3.0, "24 wins two overlapping windows: 1 + 2");
        assert_eq!(dx[21], 3.0);
        assert_eq!(dx[14], 4.0);
        assert_eq!(dx.iter().sum::<f32>(), 10.0);
    }

    #[test]
    fn max_pool_padding_never_wins() {
        let x = t([1, 1, 2, 2], vec![-5.0, -6.0, -7.0, -8.0]);
        let y = max_pool2d_forward(&x, Pool2dParams::new(3, 1).padding(1)).unwrap();
        assert_eq!(y.to_vec::<f32>().unwrap(), vec![-5.0; 4]);
    }

    /// The forward pass's window maximum is, bit for bit, the value at the window's `argmax`
    /// (which the backward pass routes to): the first of equal values (−0 before +0 keeps
    /// −0), and a NaN wherever one is in the window, for strides, padding and kernels that
    /// overlap or not.
    #[test]
    fn window_max_is_the_value_at_argmax() {
        let specials = [f32::NAN, -0.0, 0.0, f32::INFINITY, f32::NEG_INFINITY, 1.0, -1.0];
        let mut r = crate::rng::Rng::new(7);
        let plane: Vec<f32> = (0..7 * 6)
            .map(|_| {
                let u = r.uniform();
                if u < 0.3 { specials[(u * 100.0) as usize % specials.len()] } else { (u * 4.0).floor() as f32 - 2.0 }
            })
            .collect();
        let x = t([1, 1, 7, 6], plane.clone());
        for p in [Pool2dParams::new(3, 2), Pool2dParams::new(3, 1).padding(1), Pool2dParams::new(2, 2)] {
            let g = PoolGeometry::new("test", x.shape(), p).unwrap();
            let y = max_pool2d_forward(&x, p).unwrap().to_vec::<f32>().unwrap();
            for oy in 0..g.oh {
                for ox in 0..g.ow {
                    let want = plane[g.argmax(&plane, oy, ox)];
                    assert_eq!(y[oy * g.ow + ox].to_bits(), want.to_bits(), "{p:?} at ({oy}, {ox})");
                }
            }
        }
    }

    #[test]
    fn avg_pool_counts_padding() {
        // 2×2 plane of ones, 3×3 window with padding 1: every window holds 4 ones out of 9.
        let x = t([1, 1, 2, 2], vec![1.0; 4]);
        let p = Pool2dParams::new(3, 1).padding(1);
        let y = avg_pool2d_forward(&x, p).unwrap();
        for v in y.to_vec::<f32>().unwrap() {
            assert!((v - 4.0 / 9.0).abs() < 1e-7);
        }
        let dx = avg_pool2d_backward(&Tensor::full([1, 1, 2, 2], 9.0, crate::DType::F32), x.shape(), p).unwrap();
        assert_eq!(dx.to_vec::<f32>().unwrap(), vec![4.0; 4]);
    }

    #[test]
    fn global_avg_pool_by_hand() {
        let x = t([1, 2, 1, 3], vec![1.0, 2.0, 3.0, -3.0, 0.0, 0.0]);
        let y = global_avg_pool_forward(&x).unwrap();
        assert_eq!(y.dims(), &[1, 2, 1, 1]);
        assert_eq!(y.to_vec::<f32>().unwrap(), vec![2.0, -1.0]);
    }

    #[test]
    fn bad_pool_arguments_are_errors() {
        let x = Tensor::zeros([1, 1, 4, 4], crate::DType::F32);
        let e = max_pool2d_forward(&x, Pool2dParams::new(3, 1).padding(2)).unwrap_err();
        assert!(e.to_string().contains("padding must be at most half the kernel"), "{e}");
        let e = max_pool2d_forward(&x, Pool2dParams::new(5, 1)).unwrap_err();
        assert!(e.to_string().contains("an input at least 5x5"), "{e}");
        let e = avg_pool2d_forward(&x, Pool2dParams::new(2, 0)).unwrap_err();
        assert!(e.to_string().contains("at least 1"), "{e}");
    }
}
