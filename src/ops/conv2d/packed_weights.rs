//! A convolution's weights kept packed for the CPU's GEMM between calls, when the graph says
//! they do not change ([`crate::ops::ExecOptions::weights_fixed`]: inference, validation):
//! per group for im2col + GEMM, or per tap for the shifted taps of small maps.
//!
//! The weights are the left-hand operand of every product of a convolution (`y_g = W_g ·
//! col_g`), and the GEMM packs its left-hand operand into row panels for each block it
//! multiplies: once per image for maps of 16×16 and more, once per batch for smaller ones.
//! ResNet-50's 25 million weights are then copied twice over per batch of inference, a fifth
//! of its time on the 2-core EPYC. Packed once ([`PackedMatrix`]) and kept (in
//! [`crate::ops::weight_cache`]), they are read where they lie.

use std::sync::Arc;

use super::{ConvGeometry, shifted_taps};
use crate::ops::gemm::{MatRef, PackedBMatrix, PackedMatrix};
use crate::ops::weight_cache::{Packing, kept};
use crate::tensor::{Float, Tensor};

/// The weights `w` (elements `weights`, on the CPU) of the convolution `g` as one packed
/// matrix per group, `O/G × C/G·KH·KW` each: from the cache, or packed now and kept.
pub(super) fn packed<T: Float>(w: &Tensor, weights: &[T], g: &ConvGeometry) -> Arc<Vec<PackedMatrix<T>>> {
    kept(w, Packing::ConvGroups(g.groups()), || {
        let (og, k) = (g.o_per_group(), g.k_per_group());
        (0..g.groups())
            .map(|grp| PackedMatrix::new(MatRef::row_major(&weights[grp * og * k..][..og * k], og, k)))
            .collect()
    })
}

/// The weights `w` of the ungrouped convolution `g` as one packed matrix per tap, `C × O`
/// each (`shifted_taps::pack_taps`): from the cache, or packed now and kept.
pub(super) fn packed_taps<T: Float>(w: &Tensor, weights: &[T], g: &ConvGeometry) -> Arc<Vec<PackedBMatrix<T>>> {
    kept(w, Packing::ConvTaps, || shifted_taps::pack_taps(weights, g))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::conv2d::Conv2dParams;
    use crate::tensor::{DType, Shape};

    fn geometry(groups: usize) -> ConvGeometry {
        let p = Conv2dParams::default().padding(1).groups(groups);
        ConvGeometry::new(&Shape::from([1, 4, 5, 5]), &Shape::from([6, 4 / groups, 3, 3]), p).unwrap()
    }

    /// The same weights give the same packed copy; a write to them (as an optimizer step
    /// makes) gives a fresh one of the new values.
    #[test]
    fn weights_are_packed_once_and_again_after_a_write() {
        let g = geometry(2);
        let mut w = Tensor::randn([6, 2, 3, 3], 0.0, 1.0, DType::F32, 1);
        let first = packed::<f32>(&w, w.as_slice().unwrap(), &g);
        assert_eq!(first.len(), 2, "one matrix per group");
        let again = packed::<f32>(&w, w.as_slice().unwrap(), &g);
        assert!(Arc::ptr_eq(&first, &again), "kept between calls");
        let before = w.storage_id();
        w.as_mut_slice::<f32>().unwrap()[0] = 7.0;
        assert_ne!(w.storage_id(), before, "the write copied the weights first");
        let fresh = packed::<f32>(&w, w.as_slice().unwrap(), &g);
        assert!(!Arc::ptr_eq(&first, &fresh));
        let rows = MatRef::row_major(&w.as_slice::<f32>().unwrap()[..3 * 18], 3, 18);
        let want = PackedMatrix::new(rows);
        assert_eq!(fresh[0], want, "packed from the new values");
    }

    /// A convolution with its weights kept packed gives the bits of one that packs them per
    /// product: one image per product and several (small maps), groups, stride, bias, ReLU,
    /// and again from the cache.
    #[test]
    fn convolutions_with_kept_weights_give_the_same_bits() {
        use crate::ops::ExecOptions;
        use crate::ops::conv2d::{forward, forward_relu};
        let cases = [
            ([2, 6, 20, 20], [8, 3, 3, 3], Conv2dParams::default().padding(1).groups(2)),
            ([5, 16, 4, 4], [40, 16, 3, 3], Conv2dParams::default().padding(1)),
            ([3, 8, 9, 9], [12, 8, 1, 1], Conv2dParams::default().stride(2)),
        ];
        for (xs, ws, p) in cases {
            let x = Tensor::randn(xs.to_vec(), 0.0, 1.0, DType::F32, 3);
            let w = Tensor::randn(ws.to_vec(), 0.0, 0.3, DType::F32, 4);
            let b = Tensor::randn([ws[0]], 0.0, 0.1, DType::F32, 5);
            let per_product = ExecOptions::default();
            let kept = ExecOptions { weights_fixed: true, ..per_product };
            let want = forward(&x, &w, Some(&b), p, &per_product).unwrap().to_vec::<f32>().unwrap();
            for _ in 0..2 {
                assert_eq!(forward(&x, &w, Some(&b), p, &kept).unwrap().to_vec::<f32>().unwrap(), want, "{xs:?}");
            }
            let relu = forward_relu(&x, &w, Some(&b), p, &kept).unwrap().to_vec::<f32>().unwrap();
            assert_eq!(relu, want.iter().map(|&v| v.max(0.0)).collect::<Vec<_>>());
        }
    }
}
