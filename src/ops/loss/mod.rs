//! Softmax cross-entropy, averaged over the batch (PyTorch's `F.cross_entropy` with integer
//! class labels and `reduction='mean'`).
//!
//! ```text
//! p[n, k] = exp(z[n, k] − m_n) / Σ_j exp(z[n, j] − m_n)        m_n = max_j z[n, j]
//! loss    = −(1/N) Σ_n log p[n, label_n]
//! dz[n,k] = (p[n, k] − [k = label_n]) / N · dloss
//! ```
//!
//! Subtracting the row maximum keeps `exp` from overflowing without changing the result.
//! Unlike PyTorch there is no `ignore_index`: every label must be a class (a −100 is an
//! error here, where PyTorch would skip the example).
//! The forward pass returns the probabilities so the backward pass needs nothing else.

pub mod reference;

use super::{common_dtype, gpu_f32, host, with_float_type};
use crate::device::gpu::{KernelCall, to_i32, to_i64};
use crate::device::host_memory::filled;
use crate::error::{Error, Result};
use crate::tensor::{DType, Element, Float, Tensor};

const OP: &str = "cross_entropy";

/// Checks shapes and dtypes; returns `(N, K)`.
fn check_shapes(logits: &Tensor, labels: &Tensor) -> Result<(usize, usize)> {
    let (n, k) = logits
        .shape()
        .dims2()
        .ok_or_else(|| Error::shape_of(OP, "2-D logits (N, classes)", "logits", logits.shape()))?;
    if labels.dtype() != DType::I64 {
        return Err(Error::DType { op: OP, actual: labels.dtype(), supported: "i64 labels" });
    }
    super::expect_shape(OP, "labels", labels, &[n])?;
    if n == 0 || k == 0 {
        return Err(Error::shape_of(OP, "at least one example and one class", "logits", logits.shape()));
    }
    Ok((n, k))
}

/// Every label as a class index, or an error naming the first one outside `0..k`. (Labels
/// already on a GPU are not checked here: the forward kernel gives a NaN loss for a label out
/// of range, rather than the host waiting for the device to read them back.)
fn check_labels(labels: &Tensor, k: usize) -> Result<Vec<usize>> {
    labels
        .to_vec::<i64>()?
        .into_iter()
        .enumerate()
        .map(|(i, l)| {
            usize::try_from(l).ok().filter(|&l| l < k).ok_or_else(|| {
                Error::argument(OP, format!("label {l} at position {i} is outside the {k} classes 0..{k}"))
            })
        })
        .collect()
}

/// The mean loss (a scalar tensor) and the softmax probabilities `[N, K]`.
pub fn forward(logits: &Tensor, labels: &Tensor) -> Result<(Tensor, Tensor)> {
    let (n, k) = check_shapes(logits, labels)?;
    if let Some(gpu) = gpu_f32(OP, logits.dtype(), logits.device())? {
        if labels.device().is_cpu() {
            check_labels(labels, k)?;
        }
        let labels = labels.to_device(logits.device())?;
        let row_loss = gpu.alloc(logits.dtype(), n)?;
        let probs = gpu.alloc(logits.dtype(), n * k)?;
        gpu.launch(
            KernelCall::block_per_item("softmax_xent_fwd_f32", n)?
                .buf(&row_loss)
                .buf(&probs)
                .buf(logits.gpu_buffer()?)
                .buf(labels.gpu_buffer()?)
                .i32(to_i32(OP, "batch", n)?)
                .i32(to_i32(OP, "classes", k)?),
        )?;
        let loss = gpu.alloc(logits.dtype(), 1)?;
        gpu.launch(
            KernelCall::new("mean_f32").block(crate::device::gpu::BLOCK, 1, 1).buf(&loss).buf(&row_loss).i64(to_i64(n)),
        )?;
        return Ok((Tensor::from_gpu(crate::tensor::Shape::scalar(), loss), Tensor::from_gpu([n, k], probs)));
    }
    let labels = check_labels(labels, k)?;
    with_float_type!(logits.dtype(), OP, |T| {
        let z = host::<T>(logits)?;
        let mut probs = filled(n * k, T::ZERO)?;
        let mut total = 0.0f64;
        for ((row, p), &label) in z.chunks_exact(k).zip(probs.chunks_exact_mut(k)).zip(&labels) {
            let m = row.iter().fold(T::NEG_INFINITY, |a, &b| a.max(b)).to_f64();
            let sum: f64 = row.iter().map(|&v| (v.to_f64() - m).exp()).sum();
            let log_sum = sum.ln();
            for (pj, &zj) in p.iter_mut().zip(row) {
                *pj = T::from_f64((zj.to_f64() - m - log_sum).exp());
            }
            total -= row[label].to_f64() - m - log_sum;
        }
        Ok((Tensor::scalar(T::from_f64(total / n as f64)), Tensor::from_cpu([n, k], probs)))
    })
}

/// The logits' gradient from the probabilities, the labels and the loss's gradient.
pub fn backward(probs: &Tensor, labels: &Tensor, dloss: &Tensor) -> Result<Tensor> {
    let (n, k) = check_shapes(probs, labels)?;
    if dloss.numel() != 1 {
        return Err(Error::shape_of(OP, "a one-element loss gradient", "loss gradient", dloss.shape()));
    }
    let (dtype, device) = common_dtype(OP, &[("probabilities", probs), ("loss gradient", dloss)])?;
    if let Some(gpu) = gpu_f32(OP, dtype, device)? {
        let labels = labels.to_device(device)?;
        let dz = gpu.alloc(dtype, n * k)?;
        gpu.launch(
            KernelCall::elementwise("softmax_xent_bwd_f32", n * k)
                .buf(&dz)
                .buf(probs.gpu_buffer()?)
                .buf(labels.gpu_buffer()?)
                .buf(dloss.gpu_buffer()?)
                .i32(to_i32(OP, "batch", n)?)
                .i32(to_i32(OP, "classes", k)?),
        )?;
        return Ok(Tensor::from_gpu([n, k], dz));
    }
    let labels = check_labels(labels, k)?;
    with_float_type!(dtype, OP, |T| {
        let scale = host::<T>(dloss)?[0] / T::from_usize(n);
        let mut dz = host::<T>(probs)?.to_vec();
        for (row, &label) in dz.chunks_exact_mut(k).zip(&labels) {
            row[label] -= T::ONE;
            row.iter_mut().for_each(|v| *v *= scale);
        }
        Ok(Tensor::from_cpu([n, k], dz))
    })
}

/// The index of the largest logit of each row (the predicted class): the first maximum,
/// or the first NaN if the row has one (as `torch.argmax`).
pub fn argmax_rows(logits: &Tensor) -> Result<Vec<usize>> {
    let (_, k) =
        logits.shape().dims2().filter(|&(_, k)| k > 0).ok_or_else(|| {
            Error::shape_of("argmax", "2-D logits (N, classes) with a class", "logits", logits.shape())
        })?;
    let v = logits.to_f64_vec()?;
    Ok(v.chunks_exact(k)
        .map(|row| {
            let mut best = 0;
            for (i, &x) in row.iter().enumerate() {
                if x.is_nan() {
                    return i;
                }
                if x > row[best] {
                    best = i;
                }
            }
            best
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_by_hand() {
        // Uniform logits over 4 classes: loss = ln 4 whatever the label.
        let z = Tensor::zeros([2, 4], DType::F64);
        let y = Tensor::from_vec([2], vec![0i64, 3]).unwrap();
        let (loss, probs) = forward(&z, &y).unwrap();
        assert!((loss.item().unwrap() - 4f64.ln()).abs() < 1e-15);
        assert!(probs.to_vec::<f64>().unwrap().iter().all(|&p| (p - 0.25).abs() < 1e-15));
        let dz = backward(&probs, &y, &Tensor::scalar(1.0f64)).unwrap().to_vec::<f64>().unwrap();
        assert!((dz[0] - (0.25 - 1.0) / 2.0).abs() < 1e-15);
        assert!((dz[1] - 0.25 / 2.0).abs() < 1e-15);
        assert!((dz[7] - (0.25 - 1.0) / 2.0).abs() < 1e-15);
    }

    #[test]
    fn huge_logits_do_not_overflow() {
        let z = Tensor::from_vec([1, 2], vec![1000.0f32, 0.0]).unwrap();
        let y = Tensor::from_vec([1], vec![1i64]).unwrap();
        let (loss, _) = forward(&z, &y).unwrap();
        assert!((loss.item().unwrap() - 1000.0).abs() < 1e-3);
    }

    #[test]
    fn bad_labels_are_errors() {
        let z = Tensor::zeros([2, 3], DType::F32);
        let e = forward(&z, &Tensor::from_vec([2], vec![0i64, 3]).unwrap()).unwrap_err();
        assert_eq!(e.to_string(), "cross_entropy: label 3 at position 1 is outside the 3 classes 0..3");
        assert!(forward(&z, &Tensor::from_vec([2], vec![-1i64, 0]).unwrap()).is_err());
        assert!(forward(&z, &Tensor::from_vec([3], vec![0i64, 0, 0]).unwrap()).is_err());
        assert!(forward(&z, &Tensor::zeros([2], DType::F32)).unwrap_err().to_string().contains("i64"));
    }

    #[test]
    fn argmax_picks_the_first_largest() {
        let z = Tensor::from_vec([3, 3], vec![0.0f32, 2.0, 2.0, -1.0, -3.0, -2.0, 5.0, f32::NAN, 9.0]).unwrap();
        assert_eq!(argmax_rows(&z).unwrap(), vec![1, 0, 1]);
        assert!(argmax_rows(&Tensor::zeros([2, 0], DType::F32)).is_err());
    }
}
