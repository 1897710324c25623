//! The matrix product as its definition, `C[i, j] = Σ_p A[i, p] · B[p, j]`: three loops, the
//! sum in the order of p, generic over [`Float`] so that it runs in f64 for the checks. The
//! CPU's packed, register-blocked GEMM (`ops::gemm`) and every GPU kernel of
//! `kernels/gemm.cu` are held to it by `scratchnet kernel gemm`.

use crate::tensor::Float;

/// `C = A · B` for row-major `A` (m×k) and `B` (k×n).
pub fn matmul<T: Float>(a: &[T], b: &[T], m: usize, n: usize, k: usize) -> Vec<T> {
    let mut c = vec![T::ZERO; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut sum = T::ZERO;
            for p in 0..k {
                sum += a[i * k + p] * b[p * n + j];
            }
            c[i * n + j] = sum;
        }
    }
    c
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_product_worked_by_hand() {
        // [1 2 3]   [1 0]   [1+0+9  0+2+3]   [10 5]
        // [4 5 6] · [0 1] = [4+0+18 0+5+6] = [22 11]
        //           [3 1]
        let c = super::matmul(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[1.0, 0.0, 0.0, 1.0, 3.0, 1.0], 2, 2, 3);
        assert_eq!(c, [10.0, 5.0, 22.0, 11.0]);
    }
}
