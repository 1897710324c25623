//! The strided matrix views the CPU's GEMM reads and writes: [`MatRef`], a read-only view
//! with any row and column strides (so a transpose is a view of the same memory, `a.t()`),
//! and [`MatMut`], a row-major view of C that splits into disjoint blocks for the threads.
//! Kept apart from the blocking in `cpu` because the views' bounds checks and their `unsafe`
//! are the part a reader must trust, and are read on their own.

use std::marker::PhantomData;

/// A read-only matrix view: element `(i, j)` is `data[i * row_stride + j * col_stride]`.
#[derive(Clone, Copy, Debug)]
pub struct MatRef<'a, T> {
    // Read across `gemm` by the blocking and packing; built only through `new`, which checks
    // the bounds that `at` relies on.
    pub(super) data: &'a [T],
    pub(super) rows: usize,
    pub(super) cols: usize,
    pub(super) row_stride: usize,
    pub(super) col_stride: usize,
}

impl<'a, T: Copy> MatRef<'a, T> {
    /// A view with explicit strides. Panics if the view reaches past the end of `data`:
    /// callers are ops that have already checked their shapes, so this is a bug check.
    pub fn new(data: &'a [T], rows: usize, cols: usize, row_stride: usize, col_stride: usize) -> Self {
        if rows > 0 && cols > 0 {
            // Checked: a wrapped product could pass the test and let `at` read out of bounds.
            let last = (rows - 1)
                .checked_mul(row_stride)
                .zip((cols - 1).checked_mul(col_stride))
                .and_then(|(r, c)| r.checked_add(c));
            assert!(last.is_some_and(|last| last < data.len()), "MatRef {rows}x{cols} exceeds {} elements", data.len());
        }
        MatRef { data, rows, cols, row_stride, col_stride }
    }

    /// A contiguous row-major `rows × cols` matrix.
    pub fn row_major(data: &'a [T], rows: usize, cols: usize) -> Self {
        MatRef::new(data, rows, cols, cols, 1)
    }

    /// The transpose, as a view of the same memory.
    pub fn t(self) -> Self {
        MatRef {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
        }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    #[inline(always)]
    pub(super) fn at(&self, i: usize, j: usize) -> T {
        debug_assert!(i < self.rows && j < self.cols);
        // SAFETY: `new` checked that the largest index of the view is in bounds.
        unsafe { *self.data.get_unchecked(i * self.row_stride + j * self.col_stride) }
    }

    /// The sub-matrix of rows `r0..r0 + nr`.
    pub(super) fn rows_range(self, r0: usize, nr: usize) -> Self {
        debug_assert!(r0 + nr <= self.rows);
        if nr == 0 {
            return MatRef { rows: 0, ..self };
        }
        MatRef { data: &self.data[r0 * self.row_stride..], rows: nr, ..self }
    }

    /// The sub-matrix of columns `c0..c0 + nc`.
    pub(super) fn cols_range(self, c0: usize, nc: usize) -> Self {
        debug_assert!(c0 + nc <= self.cols);
        if nc == 0 {
            return MatRef { cols: 0, ..self };
        }
        MatRef { data: &self.data[c0 * self.col_stride..], cols: nc, ..self }
    }
}

/// A mutable row-major matrix view (row stride ≥ columns, column stride 1). It can be split
/// into disjoint column or row blocks that are written from different threads.
pub struct MatMut<'a, T> {
    ptr: *mut T,
    pub(super) rows: usize,
    pub(super) cols: usize,
    pub(super) row_stride: usize,
    _borrow: PhantomData<&'a mut T>,
}

// SAFETY: a MatMut is an exclusive borrow of the elements it covers (the constructor takes
// `&mut [T]`, and splitting yields views over disjoint elements), like `&mut [T]` itself.
unsafe impl<T: Send> Send for MatMut<'_, T> {}

impl<'a, T: Copy> MatMut<'a, T> {
    /// A contiguous row-major `rows × cols` matrix.
    pub fn row_major(data: &'a mut [T], rows: usize, cols: usize) -> Self {
        assert!(
            rows.checked_mul(cols).is_some_and(|n| n <= data.len()),
            "MatMut {rows}x{cols} exceeds {} elements",
            data.len()
        );
        MatMut { ptr: data.as_mut_ptr(), rows, cols, row_stride: cols, _borrow: PhantomData }
    }

    /// Splits into columns `..c` and `c..`.
    pub(super) fn split_at_col(self, c: usize) -> (MatMut<'a, T>, MatMut<'a, T>) {
        assert!(c <= self.cols);
        let left = MatMut { cols: c, ..self };
        // SAFETY: c <= cols, so the offset stays inside the first row of the view.
        let right = MatMut { ptr: unsafe { self.ptr.add(c) }, cols: self.cols - c, ..self };
        (left, right)
    }

    /// Splits into rows `..r` and `r..`.
    pub(super) fn split_at_row(self, r: usize) -> (MatMut<'a, T>, MatMut<'a, T>) {
        assert!(r <= self.rows);
        let top = MatMut { rows: r, ..self };
        let offset = if r == self.rows { 0 } else { r * self.row_stride };
        // SAFETY: for r < rows, row r starts inside the view; for r == rows the bottom view
        // is empty and never dereferenced.
        let bottom = MatMut { ptr: unsafe { self.ptr.add(offset) }, rows: self.rows - r, ..self };
        (top, bottom)
    }

    /// The same view, borrowed again for a shorter time (to split it and keep it).
    pub(super) fn reborrow(&mut self) -> MatMut<'_, T> {
        MatMut { ptr: self.ptr, rows: self.rows, cols: self.cols, row_stride: self.row_stride, _borrow: PhantomData }
    }

    #[inline(always)]
    pub(super) fn ptr_at(&mut self, i: usize, j: usize) -> *mut T {
        debug_assert!(i < self.rows && j < self.cols);
        // SAFETY: (i, j) is inside the view, whose elements this borrow owns.
        unsafe { self.ptr.add(i * self.row_stride + j) }
    }
}
