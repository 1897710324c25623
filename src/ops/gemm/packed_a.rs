//! The left-hand operand A of the CPU's blocked GEMM: packed into row panels for each block
//! of the product ([`PackA`] for a plain [`MatRef`]), or packed once and kept
//! ([`PackedMatrix`]), for a matrix that many products multiply, such as a convolution's
//! weights during inference, which would otherwise be packed again for every image of every
//! batch.
//!
//! The layout is the one the micro-kernels read. For each block of `KC` steps (columns of A)
//! and each panel of `MR` rows, the panel's `MR` values of step `p` lie together:
//!
//! ```text
//! block b (steps b·KC .. b·KC + kc), panel q (rows q·MR .. q·MR + MR):
//!     out[q·MR·kc + p·MR + r] = A[q·MR + r, b·KC + p]        (0 past the last row)
//! ```
//!
//! A [`PackedMatrix`] is those blocks one after the other, so the panels of rows `ic..` for
//! steps `pc..` are a slice of it whenever `ic` starts a panel: the product reads them where
//! they lie, nothing is copied.

use super::cpu::KC;
use super::views::MatRef;
use crate::tensor::Float;

/// The left-hand operand of [`super::gemm`]: anything that can hand over the packed panels of
/// a block of itself.
pub trait PackA<T>: Copy + Send + Sync {
    fn rows(&self) -> usize;
    fn cols(&self) -> usize;
    /// Rows `r0..r0 + nr` as an operand of their own (to share C among threads).
    fn rows_range(self, r0: usize, nr: usize) -> Self;
    /// The panels of `MR` rows of `A[ic..ic + mc, pc..pc + kc]` (`pc` a multiple of `KC`,
    /// `kc` the block's steps) in the layout above: packed into `scratch`, which holds
    /// `mc.div_ceil(MR)·MR·kc` values, or borrowed where they are kept packed.
    fn panels<'s, const MR: usize>(
        &'s self,
        ic: usize,
        mc: usize,
        pc: usize,
        kc: usize,
        scratch: &'s mut [T],
    ) -> &'s [T];
}

impl<T: Float> PackA<T> for MatRef<'_, T> {
    fn rows(&self) -> usize {
        self.rows
    }
    fn cols(&self) -> usize {
        self.cols
    }
    fn rows_range(self, r0: usize, nr: usize) -> Self {
        MatRef::rows_range(self, r0, nr)
    }
    fn panels<'s, const MR: usize>(
        &'s self,
        ic: usize,
        mc: usize,
        pc: usize,
        kc: usize,
        scratch: &'s mut [T],
    ) -> &'s [T] {
        pack_panels::<T, MR>(|i, p| self.at(i, p), ic, mc, pc, kc, scratch);
        scratch
    }
}

/// Writes the panels of `A[i0..i0+mc, p0..p0+kc]`, reading element `(i, p)` with `at`.
#[inline(always)]
fn pack_panels<T: Float, const MR: usize>(
    at: impl Fn(usize, usize) -> T,
    i0: usize,
    mc: usize,
    p0: usize,
    kc: usize,
    out: &mut [T],
) {
    for (q, panel) in out.chunks_exact_mut(MR * kc).take(mc.div_ceil(MR)).enumerate() {
        let rows = MR.min(mc - q * MR);
        for (p, slot) in panel.chunks_exact_mut(MR).enumerate() {
            for (r, v) in slot.iter_mut().enumerate() {
                *v = if r < rows { at(i0 + q * MR + r, p0 + p) } else { T::ZERO };
            }
        }
    }
}

/// A matrix packed once in the layout above, for the micro-kernel with `mr`-row panels.
#[derive(Debug, PartialEq)]
pub struct PackedMatrix<T> {
    data: Vec<T>,
    rows: usize,
    cols: usize,
    mr: usize,
}

impl<T: Float> PackedMatrix<T> {
    /// `a` packed for the micro-kernel this CPU runs for `T` (`cpu::panel_rows`).
    pub fn new(a: MatRef<T>) -> PackedMatrix<T> {
        PackedMatrix::with_panel_rows(a, super::cpu::panel_rows::<T>())
    }

    /// `a` packed in panels of `mr` rows (8, 6 or 4: the micro-kernels' tiles).
    pub(super) fn with_panel_rows(a: MatRef<T>, mr: usize) -> PackedMatrix<T> {
        let panels = a.rows.div_ceil(mr);
        let mut data = vec![T::ZERO; panels * mr * a.cols];
        for pc in (0..a.cols).step_by(KC) {
            let kc = KC.min(a.cols - pc);
            let block = &mut data[pc * panels * mr..][..panels * mr * kc];
            match mr {
                8 => pack_panels::<T, 8>(|i, p| a.at(i, p), 0, a.rows, pc, kc, block),
                6 => pack_panels::<T, 6>(|i, p| a.at(i, p), 0, a.rows, pc, kc, block),
                _ => pack_panels::<T, 4>(|i, p| a.at(i, p), 0, a.rows, pc, kc, block),
            }
        }
        PackedMatrix { data, rows: a.rows, cols: a.cols, mr }
    }

    /// The whole matrix as an operand.
    pub fn view(&self) -> PackedA<'_, T> {
        PackedA { m: self, row0: 0, rows: self.rows }
    }

    /// Element `(i, j)`, wherever packing put it.
    fn at(&self, i: usize, j: usize) -> T {
        let (block, p) = (j / KC * KC, j % KC);
        let kc = KC.min(self.cols - block);
        let panels = self.rows.div_ceil(self.mr);
        self.data[block * panels * self.mr + (i / self.mr) * self.mr * kc + p * self.mr + i % self.mr]
    }
}

/// Rows `row0..row0 + rows` of a [`PackedMatrix`], as the left-hand operand of a product.
#[derive(Clone, Copy, Debug)]
pub struct PackedA<'a, T> {
    m: &'a PackedMatrix<T>,
    row0: usize,
    rows: usize,
}

impl<T: Float> PackA<T> for PackedA<'_, T> {
    fn rows(&self) -> usize {
        self.rows
    }
    fn cols(&self) -> usize {
        self.m.cols
    }
    fn rows_range(self, r0: usize, nr: usize) -> Self {
        debug_assert!(r0 + nr <= self.rows);
        PackedA { row0: self.row0 + r0, rows: nr, ..self }
    }
    fn panels<'s, const MR: usize>(
        &'s self,
        ic: usize,
        mc: usize,
        pc: usize,
        kc: usize,
        scratch: &'s mut [T],
    ) -> &'s [T] {
        let first = self.row0 + ic;
        if MR == self.m.mr && first.is_multiple_of(MR) && pc.is_multiple_of(KC) {
            // The panels lie together in the block of steps pc.. (a panel that runs past this
            // view's rows holds rows of the matrix the micro-kernel computes but never stores).
            let panels = self.m.rows.div_ceil(MR);
            let start = pc * panels * MR + (first / MR) * MR * kc;
            return &self.m.data[start..][..mc.div_ceil(MR) * MR * kc];
        }
        // Another panel height or a block that starts mid-panel: packed again, element by element.
        pack_panels::<T, MR>(|i, p| self.m.at(i, p), first, mc, pc, kc, scratch);
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

    /// A product with A packed once gives the bits of the same product packing A as it goes,
    /// on one thread and shared (by columns, by row blocks), for shapes that cross KC blocks
    /// and end mid-panel; and a packed matrix keeps every element where `at` finds it.
    #[test]
    fn a_matrix_packed_once_gives_the_bits_of_packing_per_block() {
        for &(m, n, k) in &[(13, 37, 300), (70, 500, 600), (512, 32, 700), (1, 1, 1), (9, 3, 257)] {
            let (a, b) = (random(m * k, 1), random(k * n, 2));
            let (am, bm) = (MatRef::row_major(&a, m, k), MatRef::row_major(&b, k, n));
            let packed = PackedMatrix::new(am);
            assert!((0..m).all(|i| (0..k).all(|j| packed.at(i, j) == a[i * k + j])), "{m}x{k} packed");
            let mut want = vec![f32::NAN; m * n];
            gemm(am, bm, MatMut::row_major(&mut want, m, n), false);
            let mut one = vec![f32::NAN; m * n];
            gemm(packed.view(), bm, MatMut::row_major(&mut one, m, n), false);
            assert_eq!(one, want, "{m}x{n}x{k} on one thread");
            let mut shared = vec![f32::NAN; m * n];
            gemm_parallel(packed.view(), bm, MatMut::row_major(&mut shared, m, n), false);
            assert_eq!(shared, want, "{m}x{n}x{k} shared among threads");
        }
    }

    /// Rows taken from the middle of a packed matrix, starting on a panel or inside one (where
    /// the panels are packed again from the kept ones), multiply as the same rows of A do.
    #[test]
    fn rows_of_a_packed_matrix_start_anywhere() {
        let (m, n, k) = (40, 19, 270);
        let (a, b) = (random(m * k, 3), random(k * n, 4));
        let (am, bm) = (MatRef::row_major(&a, m, k), MatRef::row_major(&b, k, n));
        let packed = PackedMatrix::new(am);
        for (r0, rows) in [(0, 40), (8, 24), (24, 16), (3, 30), (39, 1)] {
            let mut want = vec![f32::NAN; rows * n];
            gemm(am.rows_range(r0, rows), bm, MatMut::row_major(&mut want, rows, n), false);
            let mut got = vec![f32::NAN; rows * n];
            gemm(packed.view().rows_range(r0, rows), bm, MatMut::row_major(&mut got, rows, n), false);
            assert_eq!(got, want, "rows {r0}..{}", r0 + rows);
        }
    }
}
