//! A bias and a ReLU applied together after a convolution or a fully connected layer, and
//! the backward of the pair: the fused form of `relu(conv(x) + b)` that AlexNet uses after
//! every layer.
//!
//! ```text
//! forward:   y  = max(z + b, 0)            (in place on the product's output z)
//! backward:  dz = dy where y > 0, else 0   (the ReLU's mask, read from the output)
//!            db = Σ dz per channel          (in the same pass)
//! ```
//!
//! The tensors are N×C×HW with the channel second (a fully connected layer's `[N, C]` output
//! is the case HW = 1). The kernels are in kernels/bias_act.cu.

use rayon::prelude::*;

use super::{common_dtype, expect_shape, gpu_f32, host, with_float_type};
use crate::device::GpuDevice;
use crate::device::gpu::{KernelCall, to_i32, to_i64};
use crate::device::host_memory::filled;
use crate::error::{Error, Result};
use crate::tensor::{DType, Element, Float, Tensor};

const OP: &str = "bias + relu";

/// `(N, C, HW)` of an NCHW tensor or an `[N, C]` matrix.
pub(crate) fn channel_dims(op: &'static str, t: &Tensor) -> Result<(usize, usize, usize)> {
    match *t.dims() {
        [n, c] => Ok((n, c, 1)),
        [n, c, h, w] => Ok((n, c, h * w)),
        _ => Err(Error::shape_of(op, "an [N, C] or [N, C, H, W] tensor", "output", t.shape())),
    }
}

/// How a per-channel sum over `n·hw` values per channel is cut for the kernels of
/// kernels/channel_reduce.cuh: `(slices, chunk)`, with `chunk` a multiple of 4. Enough
/// slices that the grid has about a thousand blocks, but none shorter than 2,048 values.
pub(crate) fn channel_slices(n: usize, c: usize, hw: usize) -> (usize, usize) {
    let m = (n * hw).max(1);
    let wanted = 1024usize.div_ceil(c.max(1)).min(m.div_ceil(2048)).clamp(1, 256);
    let chunk = m.div_ceil(wanted).div_ceil(4) * 4;
    (m.div_ceil(chunk), chunk)
}

/// The launch of a per-channel slice kernel: grid (slices, channels).
pub(crate) fn slice_call(op: &'static str, name: &'static str, slices: usize, c: usize) -> Result<KernelCall> {
    if c > 65_535 {
        return Err(Error::argument(op, format!("{c} channels are more than one launch handles (65,535)")));
    }
    Ok(KernelCall::new(name).grid(slices as u32, c as u32, 1).block(256, 1, 1))
}

/// Adds the `slices` partial sums (`k` per slice) of each channel: the first into `out0`,
/// the second, if wanted, into `out1`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn finalize_partials(
    gpu: &GpuDevice,
    op: &'static str,
    out0: &crate::device::GpuBuffer,
    out1: Option<&crate::device::GpuBuffer>,
    partial: &crate::device::GpuBuffer,
    c: usize,
    slices: usize,
    k: usize,
) -> Result<()> {
    gpu.launch(
        KernelCall::elementwise("channel_partials_finalize_f32", c)
            .buf(out0)
            .buf_or_null(out1)
            .buf(partial)
            .i32(to_i32(op, "channels", c)?)
            .i32(to_i32(op, "slices", slices)?)
            .i32(k as i32),
    )
}

/// `y ← act(y + b)` in place, `act` ReLU when `relu` is set, else nothing; `bias` may be absent.
pub fn bias_act_in_place(y: &mut Tensor, bias: Option<&Tensor>, relu: bool) -> Result<()> {
    let (n, c, hw) = channel_dims(OP, y)?;
    let mut inputs = vec![("output", &*y)];
    if let Some(b) = bias {
        expect_shape(OP, "bias", b, &[c])?;
        inputs.push(("bias", b));
    }
    let (dtype, device) = common_dtype(OP, &inputs)?;
    if let Some(gpu) = gpu_f32(OP, dtype, device)? {
        let b = bias.map(Tensor::gpu_buffer).transpose()?;
        let numel = y.numel();
        let yb = y.gpu_buffer_mut()?;
        return gpu.launch(
            KernelCall::elementwise("bias_act_f32", numel)
                .buf(yb)
                .buf_or_null(b)
                .i32(relu as i32)
                .i32(to_i32(OP, "batch", n)?)
                .i32(to_i32(OP, "channels", c)?)
                .i64(to_i64(hw)),
        );
    }
    with_float_type!(dtype, OP, |T| {
        let b: Option<Vec<T>> = bias.map(|b| host::<T>(b).map(<[T]>::to_vec)).transpose()?;
        let ys = y.as_mut_slice::<T>()?;
        ys.par_chunks_mut(hw.max(1)).enumerate().for_each(|(plane, ys)| {
            let add = b.as_ref().map_or(T::ZERO, |b| b[plane % c]);
            for v in ys {
                let t = *v + add;
                *v = if !relu || t > T::ZERO || t.is_nan() { t } else { T::ZERO };
            }
        });
        Ok(())
    })
}

/// The backward of `y = relu(z + b)`: `dz = dy` where `y > 0` (or NaN) else 0, and, when
/// `want_bias`, `db = Σ dz` per channel.
pub fn relu_backward_with_bias(dy: &Tensor, y: &Tensor, want_bias: bool) -> Result<(Tensor, Option<Tensor>)> {
    let (n, c, hw) = channel_dims(OP, y)?;
    expect_shape(OP, "output gradient", dy, y.dims())?;
    let (dtype, device) = common_dtype(OP, &[("output gradient", dy), ("output", y)])?;
    if let Some(gpu) = gpu_f32(OP, dtype, device)? {
        if !want_bias {
            return Ok((super::elementwise::relu_backward(dy, y)?, None));
        }
        let dz = gpu.alloc(dtype, y.numel())?;
        let db = gpu.alloc(dtype, c)?;
        let (slices, chunk) = channel_slices(n, c, hw);
        let partial = gpu.alloc(DType::F64, slices * c)?;
        gpu.launch(
            slice_call(OP, "relu_bwd_bias_partial_f32", slices, c)?
                .buf(&dz)
                .buf(&partial)
                .buf(dy.gpu_buffer()?)
                .buf(y.gpu_buffer()?)
                .i32(to_i32(OP, "batch", n)?)
                .i32(to_i32(OP, "channels", c)?)
                .i64(to_i64(hw))
                .i64(to_i64(chunk)),
        )?;
        finalize_partials(&gpu, OP, &db, None, &partial, c, slices, 1)?;
        return Ok((Tensor::from_gpu(y.shape().clone(), dz), Some(Tensor::from_gpu([c], db))));
    }
    with_float_type!(dtype, OP, |T| {
        let (dys, ys) = (host::<T>(dy)?, host::<T>(y)?);
        let mut dz = filled(ys.len(), T::ZERO)?;
        dz.par_chunks_mut(hw.max(1)).zip(dys.par_chunks(hw.max(1)).zip(ys.par_chunks(hw.max(1)))).for_each(
            |(dz, (dy, y))| {
                for ((o, &d), &v) in dz.iter_mut().zip(dy).zip(y) {
                    *o = if v > T::ZERO || v.is_nan() { d } else { T::ZERO };
                }
            },
        );
        let db = want_bias.then(|| {
            // Per channel, in f64 and in image order (deterministic, and the most accurate
            // party in a comparison with the kernels).
            let sums: Vec<T> = (0..c)
                .into_par_iter()
                .map(|ch| {
                    let s: f64 = (0..n).map(|img| super::sum_f64(&dz[(img * c + ch) * hw..][..hw], |v| v)).sum();
                    T::from_f64(s)
                })
                .collect();
            Tensor::from_cpu([c], sums)
        });
        Ok((Tensor::from_cpu(y.shape().clone(), dz), db))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_cover_each_channel_in_chunks_of_four() {
        for (n, c, hw) in [(64, 64, 112 * 112), (2, 2048, 49), (1, 3, 5), (8, 16, 1), (64, 1000, 1)] {
            let (s, chunk) = channel_slices(n, c, hw);
            assert_eq!(chunk % 4, 0);
            assert!((1..=256).contains(&s));
            assert!(s * chunk >= n * hw && (s - 1) * chunk < n * hw, "{n} {c} {hw}: {s} × {chunk}");
        }
        // A few large channels are cut into many slices; many small ones are not cut.
        assert!(channel_slices(64, 64, 112 * 112).0 >= 16);
        assert_eq!(channel_slices(64, 2048, 49).0, 1);
    }

    #[test]
    fn bias_relu_and_its_backward_by_hand() {
        // Two images, two channels of two pixels.
        let mut y = Tensor::from_vec([2, 2, 1, 2], vec![1.0f64, -2.0, 0.5, -0.5, -3.0, 4.0, 0.0, 1.0]).unwrap();
        let b = Tensor::from_vec([2], vec![1.0f64, -1.0]).unwrap();
        bias_act_in_place(&mut y, Some(&b), true).unwrap();
        assert_eq!(y.to_vec::<f64>().unwrap(), vec![2.0, 0.0, 0.0, 0.0, 0.0, 5.0, 0.0, 0.0]);
        let dy = Tensor::from_vec([2, 2, 1, 2], vec![1.0f64, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]).unwrap();
        let (dz, db) = relu_backward_with_bias(&dy, &y, true).unwrap();
        assert_eq!(dz.to_vec::<f64>().unwrap(), vec![1.0, 0.0, 0.0, 0.0, 0.0, 6.0, 0.0, 0.0]);
        assert_eq!(db.unwrap().to_vec::<f64>().unwrap(), vec![7.0, 0.0]);
    }
}
