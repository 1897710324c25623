//! The activations a graph keeps for its backward pass, in the graph's 16-bit precision.
//!
//! Under `--precision bf16` or `fp16` the convolutions and linear layers round their
//! operands to the 16-bit type, so a backward pass that reads an activation only to round it
//! loses nothing if the activation was kept in that type; under `torch.autocast` the tensors
//! between layers are 16-bit anyway. A BF16 or FP16 graph therefore keeps every activation
//! its backward reads (a convolution's or linear layer's input, batch norm's input, a ReLU's
//! output, pooling's and LRN's input and output) as a 16-bit copy: half the memory from the
//! forward pass to the backward one, which `scratchnet profile` shows in its kept column.
//! The backward pass widens each copy back to FP32, exactly, and runs the FP32 backward.
//!
//! What the copies change:
//!
//! - a convolution's or linear layer's input: nothing, bit for bit, since its backward
//!   rounds it to the same 16-bit value before it multiplies;
//! - batch norm's input: nothing where it is a convolution's output without bias (ResNet,
//!   DenseNet), which the convolution already rounded to the 16-bit type; elsewhere (DenseNet's
//!   transitions feed an average pooling) the backward normalises the 16-bit value, an error
//!   of at most half a unit in its last place (2^-9 relative for BF16);
//! - a ReLU's mask (`y > 0`): nothing, except for positive values below the 16-bit type's
//!   smallest subnormal (2^-133 for BF16, 2^-24 for FP16), which round to 0 and stop their
//!   gradient, as under autocast, where the ReLU's output is a 16-bit tensor;
//! - max pooling and LRN: their backward reads the 16-bit values, as it would under autocast.
//!
//! One activation is often kept by two ops (a ReLU's output is its own mask and the next
//! convolution's input; a flatten is a reshape of it): both get the same copy, found by the
//! identity of the FP32 storage, or the memory would not halve. The cache holds a weak handle
//! on each storage it has copied, so that its identity is not reused for another tensor and a
//! write to it copies first (see [`Tensor::downgrade`]); the copies go when backward starts,
//! so that each is freed with the last tape entry that keeps it.

use std::collections::HashMap;
use std::sync::Weak;

use crate::device::Storage;
use crate::error::Result;
use crate::ops::{ExecOptions, precision};
use crate::tensor::{DType, Tensor};

/// The 16-bit copies a graph has made of the activations it keeps, by FP32 storage.
#[derive(Default)]
pub(super) struct KeptActivations {
    copies: HashMap<usize, (Weak<Storage>, Tensor)>,
}

impl KeptActivations {
    /// What a tape entry should keep of the activation `t`: its 16-bit copy in a BF16 or FP16
    /// graph (made once per storage), else `t` itself. Tensors that are not FP32 (a gradient
    /// check's f64) are kept as they are.
    pub fn keep(&mut self, t: &Tensor, exec: &ExecOptions) -> Result<Tensor> {
        if exec.keep_activations_fp32 || t.dtype() != DType::F32 || exec.precision.half_dtype().is_none() {
            return Ok(t.clone());
        }
        if let Some((_, copy)) = self.copies.get(&t.storage_id()) {
            return copy.reshape(t.shape().clone());
        }
        let copy = precision::narrow(t, exec.precision)?;
        self.copies.insert(t.storage_id(), (t.downgrade(), copy.clone()));
        Ok(copy)
    }

    /// Forgets every copy (the tape entries keep theirs).
    pub fn clear(&mut self) {
        self.copies.clear();
    }
}

/// What an op recording its tape entry uses to keep its activations: the graph's copies and
/// its options.
pub(super) struct Keep<'a> {
    pub kept: &'a mut KeptActivations,
    pub exec: &'a ExecOptions,
}

impl Keep<'_> {
    /// See [`KeptActivations::keep`].
    pub fn activation(&mut self, t: &Tensor) -> Result<Tensor> {
        self.kept.keep(t, self.exec)
    }
}

/// A kept activation as the backward pass reads it: FP32, widened from its 16-bit copy.
pub(super) fn widened(t: Tensor) -> Result<Tensor> {
    match t.dtype() {
        DType::BF16 | DType::F16 => precision::widen(&t),
        _ => Ok(t),
    }
}

#[cfg(test)]
mod tests {
    use super::super::backward::Saved;
    use super::*;
    use crate::autograd::{BnEpilogue, BnStats, Graph, Var};
    use crate::ops::conv2d::Conv2dParams;
    use crate::ops::lrn::LrnParams;
    use crate::ops::pool::Pool2dParams;
    use crate::ops::precision::Precision;

    fn exec(precision: Precision, keep_activations_fp32: bool, fuse: bool) -> ExecOptions {
        ExecOptions { keep_activations_fp32, fuse, ..ExecOptions::with_precision(precision) }
    }

    fn randn(shape: &[usize], seed: u64) -> Tensor {
        Tensor::randn(shape.to_vec(), 0.0, 1.0, DType::F32, seed)
    }

    /// conv → BN+ReLU → conv: the tape's entries and the two activations the second
    /// convolution and the batch norm share.
    fn conv_bn_conv(precision: Precision, keep_activations_fp32: bool) -> (Graph, Var) {
        let mut g = Graph::new().with_options(exec(precision, keep_activations_fp32, true));
        let x = g.input(randn(&[2, 3, 6, 6], 1));
        let w1 = g.leaf(randn(&[4, 3, 3, 3], 2));
        let (gamma, beta) = (g.leaf(Tensor::full([4], 1.0, DType::F32)), g.leaf(Tensor::zeros([4], DType::F32)));
        let w2 = g.leaf(randn(&[5, 4, 3, 3], 3));
        let c1 = g.conv2d(&x, &w1, None, Conv2dParams::default().padding(1)).unwrap();
        let h = g.batch_norm(&c1, (&gamma, &beta), BnStats::Batch, BnEpilogue::RELU, 1e-5).unwrap().y;
        let y = g.conv2d(&h, &w2, None, Conv2dParams::default()).unwrap();
        (g, y)
    }

    /// The activations each entry keeps (parameters, statistics and leaves left out).
    fn kept_activations(g: &Graph) -> Vec<Vec<Tensor>> {
        g.nodes
            .iter()
            .map(|n| match &n.saved {
                Saved::Conv2d { x, .. } => vec![x.clone()],
                Saved::BatchNormAct { x, y, .. } => std::iter::once(x.clone()).chain(y.clone()).collect(),
                _ => vec![],
            })
            .filter(|v| !v.is_empty())
            .collect()
    }

    #[test]
    fn a_16_bit_graph_keeps_one_16_bit_copy_of_each_activation() {
        for (precision, dtype) in [(Precision::Bf16, DType::BF16), (Precision::Fp16, DType::F16)] {
            let (g, _) = conv_bn_conv(precision, false);
            let kept = kept_activations(&g);
            let [conv1, bn, conv2] = &kept[..] else { panic!("three entries keep activations: {}", kept.len()) };
            for t in [&conv1[0], &bn[0], &bn[1], &conv2[0]] {
                assert_eq!(t.dtype(), dtype, "{precision}");
            }
            assert!(bn[1].shares_storage_with(&conv2[0]), "{precision}: the ReLU's output is one copy");
            assert!(!bn[0].shares_storage_with(&bn[1]));
        }
        // FP32, TF32, and BF16 told to keep FP32: the activations themselves.
        for (precision, fp32) in [(Precision::Fp32, false), (Precision::Tf32, false), (Precision::Bf16, true)] {
            let (g, _) = conv_bn_conv(precision, fp32);
            let kept = kept_activations(&g);
            assert!(kept.iter().flatten().all(|t| t.dtype() == DType::F32), "{precision}");
            assert!(kept[1][1].shares_storage_with(&kept[2][0]));
        }
    }

    /// A write to an activation after it was kept copies the activation first (the cache's
    /// weak handle makes the storage shared), so the next entry that keeps it gets a fresh
    /// copy of the new values, not the old copy.
    #[test]
    fn an_activation_written_after_it_was_kept_is_copied_again() {
        let mut kept = KeptActivations::default();
        let e = ExecOptions::with_precision(Precision::Bf16);
        let mut t = Tensor::from_vec([3], vec![1.0f32, 2.0, 3.0]).unwrap();
        let first = kept.keep(&t, &e).unwrap();
        assert!(kept.keep(&t.reshape([3, 1]).unwrap(), &e).unwrap().shares_storage_with(&first));
        t.as_mut_slice::<f32>().unwrap()[0] = 5.0;
        let second = kept.keep(&t, &e).unwrap();
        assert!(!second.shares_storage_with(&first));
        assert_eq!(widened(second).unwrap().to_vec::<f32>().unwrap(), [5.0, 2.0, 3.0]);
        assert_eq!(widened(first).unwrap().to_vec::<f32>().unwrap(), [1.0, 2.0, 3.0]);
        let f64_tensor = Tensor::from_vec([1], vec![0.1f64]).unwrap();
        assert_eq!(kept.keep(&f64_tensor, &e).unwrap().dtype(), DType::F64, "only FP32 is narrowed");
    }

    /// Every kind of entry that keeps an activation, through backward, in BF16 against the same
    /// graph keeping FP32: conv+bias+ReLU, LRN, max pooling, linear+ReLU, linear, and, unfused,
    /// batch norm and ReLU. The convolution's and linear layers' inputs are rounded by their
    /// backward anyway; LRN, pooling and batch norm read BF16 values instead of FP32 ones, so
    /// the gradients agree to BF16's rounding.
    #[test]
    fn every_kept_activation_is_widened_in_backward() {
        let grads = |keep_activations_fp32: bool| {
            let mut g = Graph::new().with_options(exec(Precision::Bf16, keep_activations_fp32, false));
            let x = g.leaf(randn(&[2, 3, 8, 8], 1));
            let leaves: Vec<Var> = [
                randn(&[6, 3, 3, 3], 2),
                randn(&[6], 3),
                Tensor::full([6], 1.5, DType::F32),
                Tensor::full([6], 0.1, DType::F32),
                randn(&[7, 54], 4),
                randn(&[7], 5),
                randn(&[3, 7], 6),
            ]
            .into_iter()
            .map(|t| g.leaf(t))
            .collect();
            let [w, b, gamma, beta, w1, b1, w2] = &leaves[..] else { unreachable!() };
            let h = g.conv2d_relu(&x, w, Some(b), Conv2dParams::default()).unwrap();
            let h = g.lrn(&h, LrnParams { size: 3, alpha: 0.5, beta: 0.75, k: 1.0 }).unwrap();
            let h = g.batch_norm(&h, (gamma, beta), BnStats::Batch, BnEpilogue::RELU, 1e-5).unwrap().y;
            let h = g.max_pool2d(&h, Pool2dParams::new(2, 2)).unwrap();
            let h = g.flatten(&h).unwrap();
            let h = g.linear_relu(&h, w1, Some(b1)).unwrap();
            let y = g.linear(&h, w2, None).unwrap();
            let loss = g.cross_entropy(&y, &Tensor::from_vec([2], vec![0i64, 2]).unwrap()).unwrap();
            let gr = g.backward(&loss).unwrap();
            std::iter::once(&x).chain(&leaves).flat_map(|v| gr.of(v).unwrap().to_f64_vec().unwrap()).collect::<Vec<_>>()
        };
        let (wide, narrow) = (grads(true), grads(false));
        let err = crate::selftest::rel_l2(&narrow, &wide);
        assert!(err > 0.0 && err < 2e-2, "BF16 copies move the gradients by {err:.2e}");
    }
}
