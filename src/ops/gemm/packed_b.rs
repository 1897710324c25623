//! The right-hand operand B of the CPU's blocked GEMM packed once and kept
//! ([`PackedBMatrix`]): the twin of [`super::PackedMatrix`] for B, for a matrix that many
//! products multiply from the right, such as a convolution's transposed weights when the
//! product is turned around (`yᵀ = xᵀ·Wᵀ`, `conv2d/shifted_taps.rs`) so that a handful of
//! output pixels fill the micro-kernel's rows rather than a sliver of its columns.
//!
//! The layout is the one [`PackB::pack`] writes and the micro-kernels read. For each block of
//! `KC` steps (rows of B) and each panel of `NR` columns, the panel's `NR` values of step `p`
//! lie together:
//!
//! ```text
//! block b (steps b·KC .. b·KC + kc), panel q (columns q·NR .. q·NR + NR):
//!     out[q·NR·kc + p·NR + c] = B[b·KC + p, q·NR + c]        (0 past the last column)
//! ```
//!
//! The blocks lie one after the other, so the panels of columns `jc..` for steps `pc..` are a
//! slice of the packed matrix whenever `jc` starts a panel: the product reads them in place.

use super::cpu::{KC, PackB};
use super::views::MatRef;
use crate::tensor::Float;

/// A matrix packed once in the layout above, for the micro-kernel with `nr`-column panels.
#[derive(Debug, PartialEq)]
pub struct PackedBMatrix<T> {
    data: Vec<T>,
    rows: usize,
    cols: usize,
    nr: usize,
}

impl<T: Float> PackedBMatrix<T> {
    /// `b` packed for the micro-kernel this CPU runs for `T` (`cpu::panel_cols`).
    pub fn new(b: MatRef<T>) -> PackedBMatrix<T> {
        PackedBMatrix::with_panel_cols(b, super::cpu::panel_cols::<T>())
    }

    /// `b` packed in panels of `nr` columns (32, 16 or 8: the micro-kernels' tiles).
    pub(super) fn with_panel_cols(b: MatRef<T>, nr: usize) -> PackedBMatrix<T> {
        let panels = b.cols.div_ceil(nr);
        let mut data = vec![T::ZERO; panels * nr * b.rows];
        for pc in (0..b.rows).step_by(KC) {
            let kc = KC.min(b.rows - pc);
            let block = &mut data[pc * panels * nr..][..panels * nr * kc];
            match nr {
                32 => b.pack::<32>(pc, kc, 0, b.cols, block),
                16 => b.pack::<16>(pc, kc, 0, b.cols, block),
                _ => b.pack::<8>(pc, kc, 0, b.cols, block),
            }
        }
        PackedBMatrix { data, rows: b.rows, cols: b.cols, nr }
    }

    /// The whole matrix as an operand.
    pub fn view(&self) -> PackedB<'_, T> {
        PackedB { m: self, col0: 0, cols: self.cols }
    }

    /// Element `(i, j)`, wherever packing put it.
    fn at(&self, i: usize, j: usize) -> T {
        let (block, p) = (i / KC * KC, i % KC);
        let kc = KC.min(self.rows - block);
        let panels = self.cols.div_ceil(self.nr);
        self.data[block * panels * self.nr + (j / self.nr) * self.nr * kc + p * self.nr + j % self.nr]
    }
}

/// Columns `col0..col0 + cols` of a [`PackedBMatrix`], as the right-hand operand of a product.
#[derive(Clone, Copy, Debug)]
pub struct PackedB<'a, T> {
    m: &'a PackedBMatrix<T>,
    col0: usize,
    cols: usize,
}

impl<T: Float> PackB<T> for PackedB<'_, T> {
    fn rows(&self) -> usize {
        self.m.rows
    }
    fn cols(&self) -> usize {
        self.cols
    }
    fn cols_range(self, c0: usize, nc: usize) -> Self {
        debug_assert!(c0 + nc <= self.cols);
        PackedB { col0: self.col0 + c0, cols: nc, ..self }
    }
    fn pack<const NR: usize>(&self, p0: usize, kc: usize, j0: usize, nc: usize, out: &mut [T]) {
        // Another panel width or a block that starts mid-panel: packed again, element by element.
        for (q, panel) in out.chunks_exact_mut(NR * kc).take(nc.div_ceil(NR)).enumerate() {
            let cols = NR.min(nc - q * NR);
            for (p, slot) in panel.chunks_exact_mut(NR).enumerate() {
                for (c, v) in slot.iter_mut().enumerate() {
                    *v = if c < cols { self.m.at(p0 + p, self.col0 + j0 + q * NR + c) } else { T::ZERO };
                }
            }
        }
    }
    fn panels<'s, const NR: usize>(
        &'s self,
        p0: usize,
        kc: usize,
        j0: usize,
        nc: usize,
        scratch: &'s mut [T],
    ) -> &'s [T] {
        let first = self.col0 + j0;
        if NR == self.m.nr && first.is_multiple_of(NR) && p0.is_multiple_of(KC) {
            // The panels lie together in the block of steps p0.. (a panel that runs past this
            // view's columns holds columns the micro-kernel computes but never stores).
            let panels = self.m.cols.div_ceil(NR);
            let start = p0 * panels * NR + (first / NR) * NR * kc;
            return &self.m.data[start..][..nc.div_ceil(NR) * NR * kc];
        }
        self.pack::<NR>(p0, kc, j0, nc, scratch);
        scratch
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::gemm::{MatMut, gemm, gemm_parallel};
    use crate::rng::Rng;

    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut r = Rng::new(seed);
        (0..n).map(|_| (r.uniform() * 2.0 - 1.0) as f32).collect()
    }

    /// A product with B packed once gives the bits of the same product packing B as it goes,
    /// on one thread and shared among threads, for shapes that cross KC blocks and end
    /// mid-panel, B plain and transposed; a packed matrix keeps every element where `at`
    /// finds it.
    #[test]
    fn b_matrix_packed_once_gives_the_bits_of_packing_per_block() {
        for &(m, n, k) in &[(13, 37, 300), (70, 500, 600), (8, 512, 700), (1, 1, 1), (9, 3, 257), (200, 64, 40)] {
            let (a, b) = (random(m * k, 1), random(k * n, 2));
            let am = MatRef::row_major(&a, m, k);
            for bm in [MatRef::row_major(&b, k, n), MatRef::row_major(&b, n, k).t()] {
                let packed = PackedBMatrix::new(bm);
                assert!((0..k).all(|i| (0..n).all(|j| packed.at(i, j) == bm.at(i, j))), "{k}x{n} packed");
                let mut want = vec![f32::NAN; m * n];
                gemm(am, bm, MatMut::row_major(&mut want, m, n), false);
                let mut one = vec![f32::NAN; m * n];
                gemm(am, packed.view(), MatMut::row_major(&mut one, m, n), false);
                assert_eq!(one, want, "{m}x{n}x{k} on one thread");
                let mut shared = vec![f32::NAN; m * n];
                gemm_parallel(am, packed.view(), MatMut::row_major(&mut shared, m, n), false);
                assert_eq!(shared, want, "{m}x{n}x{k} shared among threads");
            }
        }
    }

    /// Columns taken from the middle of a packed matrix, starting on a panel or inside one
    /// (where the panels are packed again from the kept ones), multiply as the same columns
    /// of B do, and so does a panel width other than this CPU's.
    #[test]
    fn columns_of_a_packed_matrix_start_anywhere() {
        let (m, n, k) = (19, 100, 270);
        let (a, b) = (random(m * k, 3), random(k * n, 4));
        let (am, bm) = (MatRef::row_major(&a, m, k), MatRef::row_major(&b, k, n));
        for packed in [PackedBMatrix::new(bm), PackedBMatrix::with_panel_cols(bm, 8)] {
            for (c0, cols) in [(0, 100), (32, 64), (64, 36), (3, 70), (99, 1)] {
                let mut want = vec![f32::NAN; m * cols];
                gemm(am, bm.cols_range(c0, cols), MatMut::row_major(&mut want, m, cols), false);
                let mut got = vec![f32::NAN; m * cols];
                gemm(am, packed.view().cols_range(c0, cols), MatMut::row_major(&mut got, m, cols), false);
                assert_eq!(got, want, "columns {c0}..{}", c0 + cols);
            }
        }
    }
}
