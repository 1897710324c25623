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
//! is the case HW = 1). The kernels are in kernels/bias_act.cu; the bias gradient's per-channel
//! sum is launched by `src/ops/channel_reduce.rs`.

pub mod reference;

use rayon::prelude::*;

use super::{common_dtype, expect_shape, gpu_f32, host, with_float_type};
use crate::device::gpu::{KernelCall, to_i32, to_i64};
use crate::device::host_memory::filled;
use crate::error::{Error, Result};
use crate::ops::channel_reduce::ChannelReduction;
use crate::tensor::{Element, Float, Tensor};

const OP: &str = "bias + relu";

/// `(N, C, HW)` of an NCHW tensor or an `[N, C]` matrix.
pub(crate) fn channel_dims(op: &'static str, t: &Tensor) -> Result<(usize, usize, usize)> {
    match *t.dims() {
        [n, c] => Ok((n, c, 1)),
        [n, c, h, w] => Ok((n, c, h * w)),
        _ => Err(Error::shape_of(op, "an [N, C] or [N, C, H, W] tensor", "output", t.shape())),
    }
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
        let sums = ChannelReduction::new(&gpu, OP, (n, c, hw), 1)?;
        let (dyb, yb) = (dy.gpu_buffer()?, y.gpu_buffer()?);
        sums.launch_partials(&gpu, "relu_bwd_bias_partial_f32", |call| {
            call.buf(&dz).buf(sums.partial()).buf(dyb).buf(yb)
        })?;
        sums.finalize(&gpu, &db, None)?;
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
