//! Concatenation along the channel dimension, and its backward: the split.
//!
//! DenseNet feeds every layer the concatenation of all earlier feature maps of its block, so
//! this op and its gradient run once per layer there. For inputs `[N, C_i, …]` (any rank ≥ 2,
//! equal except in dimension 1) the output is `[N, ΣC_i, …]`: for every image, the blocks of
//! each input are copied one after another. The gradient of input `i` is the matching
//! slice of the output gradient.

pub mod reference;

use rayon::prelude::*;

use super::{common_dtype, gpu_f32, host, with_float_type};
use crate::device::gpu::{KernelCall, to_i64};
use crate::device::host_memory::filled;
use crate::error::{Error, Result};
use crate::tensor::{Float, Shape, Tensor};

const OP: &str = "concat";

/// Concatenates `inputs` along dimension 1.
pub fn forward(inputs: &[&Tensor]) -> Result<Tensor> {
    let first = inputs.first().ok_or_else(|| Error::argument(OP, "needs at least one input"))?;
    if first.rank() < 2 {
        return Err(Error::shape_of(OP, "inputs of rank at least 2", "input 0", first.shape()));
    }
    let named: Vec<(String, &Tensor)> = inputs.iter().enumerate().map(|(i, t)| (format!("input {i}"), *t)).collect();
    let refs: Vec<(&str, &Tensor)> = named.iter().map(|(n, t)| (n.as_str(), *t)).collect();
    let (dtype, device) = common_dtype(OP, &refs)?;
    let (n, rest) = (first.dims()[0], &first.dims()[2..]);
    for (i, t) in inputs.iter().enumerate() {
        if t.rank() != first.rank() || t.dims()[0] != n || &t.dims()[2..] != rest {
            return Err(Error::shape(
                OP,
                format!("inputs that differ only in dimension 1, like input 0 of shape {}", first.shape()),
                format!("input {i} of shape {}", t.shape()),
            ));
        }
    }
    let inner: usize = rest.iter().product();
    let channels: Vec<usize> = inputs.iter().map(|t| t.dims()[1]).collect();
    let total: usize = channels.iter().sum();
    let mut out_dims = first.dims().to_vec();
    out_dims[1] = total;
    if let Some(gpu) = gpu_f32(OP, dtype, device)? {
        let y = gpu.alloc(dtype, n * total * inner)?;
        let mut offset = 0;
        for (x, &ci) in inputs.iter().zip(&channels) {
            let piece = ci * inner;
            gpu.launch(
                KernelCall::elementwise("concat_copy_f32", n * piece)
                    .buf(&y)
                    .buf(x.gpu_buffer()?)
                    .i64(to_i64(n))
                    .i64(to_i64(piece))
                    .i64(to_i64(total * inner))
                    .i64(to_i64(offset)),
            )?;
            offset += piece;
        }
        return Ok(Tensor::from_gpu(out_dims, y));
    }
    with_float_type!(dtype, OP, |T| {
        let srcs: Vec<&[T]> = inputs.iter().map(|t| host::<T>(t)).collect::<Result<_>>()?;
        let mut y = filled(n * total * inner, T::ZERO)?;
        y.par_chunks_mut((total * inner).max(1)).enumerate().for_each(|(img, out)| {
            let mut at = 0;
            for (src, &ci) in srcs.iter().zip(&channels) {
                let len = ci * inner;
                out[at..at + len].copy_from_slice(&src[img * len..][..len]);
                at += len;
            }
        });
        Ok(Tensor::from_cpu(out_dims, y))
    })
}

/// Splits `dy` along dimension 1 into pieces of `channels[i]` channels each.
pub fn backward(dy: &Tensor, channels: &[usize]) -> Result<Vec<Tensor>> {
    let total: usize = channels.iter().sum();
    if dy.rank() < 2 || dy.dims()[1] != total {
        return Err(Error::shape_of(
            OP,
            format!("an output gradient with {total} channels in dimension 1"),
            "output gradient",
            dy.shape(),
        ));
    }
    let n = dy.dims()[0];
    let inner: usize = dy.dims()[2..].iter().product();
    if let Some(gpu) = gpu_f32(OP, dy.dtype(), dy.device())? {
        let mut outs = Vec::with_capacity(channels.len());
        let mut offset = 0;
        for &ci in channels {
            let piece = ci * inner;
            let dx = gpu.alloc(dy.dtype(), n * piece)?;
            gpu.launch(
                KernelCall::elementwise("split_copy_f32", n * piece)
                    .buf(&dx)
                    .buf(dy.gpu_buffer()?)
                    .i64(to_i64(n))
                    .i64(to_i64(piece))
                    .i64(to_i64(total * inner))
                    .i64(to_i64(offset)),
            )?;
            let mut dims = dy.dims().to_vec();
            dims[1] = ci;
            outs.push(Tensor::from_gpu(Shape::from(dims), dx));
            offset += piece;
        }
        return Ok(outs);
    }
    with_float_type!(dy.dtype(), OP, |T| {
        let src = host::<T>(dy)?;
        let mut start = 0;
        let mut outs = Vec::with_capacity(channels.len());
        for &ci in channels {
            let len = ci * inner;
            let mut piece = filled(n * len, T::ZERO)?;
            if len > 0 {
                piece.par_chunks_mut(len).enumerate().for_each(|(img, out)| {
                    out.copy_from_slice(&src[img * total * inner + start..][..len]);
                });
            }
            let mut dims = dy.dims().to_vec();
            dims[1] = ci;
            outs.push(Tensor::from_cpu(Shape::from(dims), piece));
            start += len;
        }
        Ok(outs)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concat_and_split_by_hand() {
        let a = Tensor::from_vec([2, 1, 2], vec![1.0f32, 2.0, 3.0, 4.0]).unwrap();
        let b = Tensor::from_vec([2, 2, 2], vec![5.0f32, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0]).unwrap();
        let y = forward(&[&a, &b]).unwrap();
        assert_eq!(y.dims(), &[2, 3, 2]);
        assert_eq!(y.to_vec::<f32>().unwrap(), vec![1.0, 2.0, 5.0, 6.0, 7.0, 8.0, 3.0, 4.0, 9.0, 10.0, 11.0, 12.0]);
        let parts = backward(&y, &[1, 2]).unwrap();
        assert_eq!(parts[0].to_vec::<f32>().unwrap(), a.to_vec::<f32>().unwrap());
        assert_eq!(parts[1].to_vec::<f32>().unwrap(), b.to_vec::<f32>().unwrap());
    }

    #[test]
    fn mismatched_inputs_are_errors() {
        let a = Tensor::zeros([2, 1, 3, 3], crate::DType::F32);
        let b = Tensor::zeros([2, 4, 3, 2], crate::DType::F32);
        let e = forward(&[&a, &b]).unwrap_err().to_string();
        assert_eq!(
            e,
            "concat: expected inputs that differ only in dimension 1, like input 0 of shape [2, 1, 3, 3], got input 1 of shape [2, 4, 3, 2]"
        );
        assert!(forward(&[]).is_err());
        assert!(backward(&a, &[2]).is_err());
    }
}
