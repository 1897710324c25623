//! The fully connected layer: `y = x · Wᵀ + b`.
//!
//! Shapes follow PyTorch's `nn.Linear`: x is `[N, I]`, W is `[O, I]` (one row per output),
//! b is `[O]`, y is `[N, O]`. All three products are one matrix product each
//! ([`matmul`]), with the transposes expressed as strided views so nothing is copied:
//!
//! ```text
//! forward:  y  = x · Wᵀ        [N, I]·[I, O]
//! data:     dx = dy · W        [N, O]·[O, I]
//! weight:   dW = dyᵀ · x       [O, N]·[N, I]
//! bias:     db = Σ_n dy[n, :]
//! ```
//!
//! The bias kernels are in kernels/linear.cu, the products in kernels/gemm.cu. The products
//! run in the [`Precision`] the caller passes; the bias is added in FP32.

pub mod reference;

use rayon::prelude::*;

use super::exec::ExecOptions;
use super::gemm::{GemmKernel, MatMut, MatRef, PackedBMatrix, gemm_parallel, matmul};
use super::precision::Precision;
use super::weight_cache::{Packing, kept};
use super::{common_dtype, expect_shape, gpu_f32, host, with_float_type};
use crate::device::Device;
use crate::device::gpu::{KernelCall, to_i32, to_i64};
use crate::device::host_memory::filled;
use crate::error::{Error, Result};
use crate::tensor::{DType, Element, Float, Tensor};

const OP: &str = "linear";

fn dims(x: &Tensor, w: &Tensor) -> Result<(usize, usize, usize)> {
    let (n, i) =
        x.shape().dims2().ok_or_else(|| Error::shape_of(OP, "a 2-D input (N, features)", "input", x.shape()))?;
    let (o, wi) =
        w.shape().dims2().ok_or_else(|| Error::shape_of(OP, "a 2-D weight (out, in)", "weight", w.shape()))?;
    if wi != i {
        return Err(Error::shape(
            OP,
            format!("weight of shape [O, {i}] for input {}", x.shape()),
            format!("weight of shape {}", w.shape()),
        ));
    }
    Ok((n, i, o))
}

pub fn forward(x: &Tensor, w: &Tensor, b: Option<&Tensor>, exec: &ExecOptions) -> Result<Tensor> {
    let (n, _, o) = dims(x, w)?;
    let mut inputs = vec![("input", x), ("weight", w)];
    if let Some(b) = b {
        expect_shape(OP, "bias", b, &[o])?;
        inputs.push(("bias", b));
    }
    let (dtype, device) = common_dtype(OP, &inputs)?;
    let mut y = product(x, w, (dtype, device), exec)?;
    let Some(b) = b else { return Ok(y) };
    if let Some(gpu) = gpu_f32(OP, dtype, device)? {
        let bias = b.gpu_buffer()?;
        let yb = y.gpu_buffer_mut()?;
        gpu.launch(
            KernelCall::elementwise("bias_add_rows_f32", n * o)
                .buf(yb)
                .buf(bias)
                .i64(to_i64(n))
                .i32(to_i32(OP, "outputs", o)?),
        )?;
        return Ok(y);
    }
    with_float_type!(dtype, OP, |T| {
        let bs = host::<T>(b)?.to_vec();
        for row in y.as_mut_slice::<T>()?.chunks_exact_mut(o.max(1)) {
            row.iter_mut().zip(&bs).for_each(|(v, &bo)| *v += bo);
        }
        Ok(y)
    })
}

/// `relu(x · Wᵀ + b)`: the bias and the ReLU in one pass over the product (see
/// [`super::bias_act`], which also has the backward).
pub fn forward_relu(x: &Tensor, w: &Tensor, b: Option<&Tensor>, exec: &ExecOptions) -> Result<Tensor> {
    let (_, _, o) = dims(x, w)?;
    let mut inputs = vec![("input", x), ("weight", w)];
    if let Some(b) = b {
        expect_shape(OP, "bias", b, &[o])?;
        inputs.push(("bias", b));
    }
    let on = common_dtype(OP, &inputs)?;
    let mut y = product(x, w, on, exec)?;
    super::bias_act::bias_act_in_place(&mut y, b, true)?;
    Ok(y)
}

/// `x · Wᵀ` in `exec`'s precision. When the weights stay fixed (inference) on the CPU in
/// FP32, `Wᵀ` is packed for the GEMM once and kept ([`weight_cache`]): packing it again for
/// every batch copied all of AlexNet's 59 million classifier weights per forward pass.
/// `(dtype, device)` is the operands' common one, as the caller checked it.
fn product(x: &Tensor, w: &Tensor, (dtype, device): (DType, Device), exec: &ExecOptions) -> Result<Tensor> {
    if !(exec.weights_fixed && exec.precision == Precision::Fp32 && device == Device::Cpu) {
        return matmul(x, false, w, true, GemmKernel::default(), exec.precision);
    }
    let (n, i, o) = dims(x, w)?;
    with_float_type!(dtype, OP, |T| {
        let ws = host::<T>(w)?;
        // Wᵀ is I×O: element (i, o) is W[o, i].
        let packed = kept(w, Packing::LinearTransposed, || PackedBMatrix::new(MatRef::new(ws, i, o, 1, i)));
        let mut y = filled(n * o, T::ZERO)?;
        gemm_parallel(MatRef::row_major(host::<T>(x)?, n, i), packed.view(), MatMut::row_major(&mut y, n, o), false);
        Ok(Tensor::from_cpu([n, o], y))
    })
}

/// `dx = dy · W`.
pub fn backward_data(dy: &Tensor, w: &Tensor, precision: Precision) -> Result<Tensor> {
    let (o, _) = w.shape().dims2().ok_or_else(|| Error::shape_of(OP, "a 2-D weight (out, in)", "weight", w.shape()))?;
    let n = dy.dims().first().copied().unwrap_or(0);
    expect_shape(OP, "output gradient", dy, &[n, o])?;
    matmul(dy, false, w, false, GemmKernel::default(), precision)
}

/// `dW = dyᵀ · x`.
pub fn backward_weight(dy: &Tensor, x: &Tensor, precision: Precision) -> Result<Tensor> {
    let (n, _) =
        x.shape().dims2().ok_or_else(|| Error::shape_of(OP, "a 2-D input (N, features)", "input", x.shape()))?;
    let o = dy.dims().get(1).copied().unwrap_or(0);
    expect_shape(OP, "output gradient", dy, &[n, o])?;
    matmul(dy, true, x, false, GemmKernel::default(), precision)
}

/// `db = Σ_n dy[n, :]` (summed in f64 on the CPU).
pub fn backward_bias(dy: &Tensor) -> Result<Tensor> {
    let (n, o) = dy
        .shape()
        .dims2()
        .ok_or_else(|| Error::shape_of(OP, "a 2-D output gradient", "output gradient", dy.shape()))?;
    if let Some(gpu) = gpu_f32(OP, dy.dtype(), dy.device())? {
        let db = gpu.alloc(dy.dtype(), o)?;
        gpu.launch(
            KernelCall::elementwise("sum_rows_f32", o)
                .buf(&db)
                .buf(dy.gpu_buffer()?)
                .i64(to_i64(n))
                .i32(to_i32(OP, "outputs", o)?),
        )?;
        return Ok(Tensor::from_gpu([o], db));
    }
    with_float_type!(dy.dtype(), OP, |T| {
        let dys = host::<T>(dy)?;
        let db: Vec<T> =
            (0..o).into_par_iter().map(|j| T::from_f64((0..n).map(|r| dys[r * o + j].to_f64()).sum())).collect();
        Ok(Tensor::from_cpu([o], db))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forward_by_hand() {
        // x = [[1, 2]], W = [[1, 0], [0, 1], [1, 1]], b = [0.5, 0, -1]  →  y = [[1.5, 2, 2]]
        let x = Tensor::from_vec([1, 2], vec![1.0f32, 2.0]).unwrap();
        let w = Tensor::from_vec([3, 2], vec![1.0f32, 0.0, 0.0, 1.0, 1.0, 1.0]).unwrap();
        let b = Tensor::from_vec([3], vec![0.5f32, 0.0, -1.0]).unwrap();
        let y = forward(&x, &w, Some(&b), &ExecOptions::default()).unwrap();
        assert_eq!(y.dims(), &[1, 3]);
        assert_eq!(y.to_vec::<f32>().unwrap(), vec![1.5, 2.0, 2.0]);
        let dy = Tensor::from_vec([1, 3], vec![1.0f32, 1.0, 1.0]).unwrap();
        assert_eq!(backward_data(&dy, &w, Precision::Fp32).unwrap().to_vec::<f32>().unwrap(), vec![2.0, 2.0]);
        assert_eq!(
            backward_weight(&dy, &x, Precision::Fp32).unwrap().to_vec::<f32>().unwrap(),
            vec![1.0, 2.0, 1.0, 2.0, 1.0, 2.0]
        );
        assert_eq!(backward_bias(&dy).unwrap().to_vec::<f32>().unwrap(), vec![1.0, 1.0, 1.0]);
    }

    #[test]
    fn wrong_shapes_are_errors() {
        let x = Tensor::zeros([4, 5], crate::DType::F32);
        let w = Tensor::zeros([3, 6], crate::DType::F32);
        assert_eq!(
            forward(&x, &w, None, &ExecOptions::default()).unwrap_err().to_string(),
            "linear: expected weight of shape [O, 5] for input [4, 5], got weight of shape [3, 6]"
        );
        let w = Tensor::zeros([3, 5], crate::DType::F32);
        let b = Tensor::zeros([4], crate::DType::F32);
        assert!(
            forward(&x, &w, Some(&b), &ExecOptions::default()).unwrap_err().to_string().contains("bias of shape [3]")
        );
    }

    /// With the weights fixed, `Wᵀ` packed once and kept gives the bits of packing it per
    /// product, with and without bias and ReLU, in f32 and f64, again from the cache, and
    /// after a write to the weights (as an optimizer step makes) from the new values.
    #[test]
    fn kept_transposed_weights_give_the_same_bits() {
        use crate::DType;
        let kept = ExecOptions { weights_fixed: true, ..ExecOptions::default() };
        for dtype in [DType::F32, DType::F64] {
            let x = Tensor::randn([9, 300], 0.0, 1.0, dtype, 1);
            let mut w = Tensor::randn([70, 300], 0.0, 0.1, dtype, 2);
            let b = Tensor::randn([70], 0.0, 0.1, dtype, 3);
            for round in 0..3 {
                let plain = forward(&x, &w, Some(&b), &ExecOptions::default()).unwrap().to_f64_vec().unwrap();
                assert_eq!(forward(&x, &w, Some(&b), &kept).unwrap().to_f64_vec().unwrap(), plain, "round {round}");
                let relu = forward_relu(&x, &w, Some(&b), &ExecOptions::default()).unwrap().to_f64_vec().unwrap();
                assert_eq!(forward_relu(&x, &w, Some(&b), &kept).unwrap().to_f64_vec().unwrap(), relu);
                assert!(relu.iter().zip(&plain).all(|(r, p)| *r == p.max(0.0)));
                if round == 1 {
                    let first = w.storage_id();
                    match dtype {
                        DType::F32 => w.as_mut_slice::<f32>().unwrap()[5] = 3.0,
                        _ => w.as_mut_slice::<f64>().unwrap()[5] = 3.0,
                    }
                    assert_ne!(w.storage_id(), first, "the write copied the weights first");
                }
            }
        }
    }
}
