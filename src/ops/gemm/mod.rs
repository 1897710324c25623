//! The matrix product `C = op(A)·op(B)`: [`matmul`], the op on tensors of any device, and what
//! it runs there.
//!
//! - `views`: [`MatRef`] and [`MatMut`], the strided matrix views the CPU code takes (a
//!   transposed operand is a view with its strides swapped: nothing is copied);
//! - `cpu`: the CPU's blocked GEMM with packing ([`gemm`], [`gemm_parallel`], [`PackB`]), the
//!   one CPU routine written for speed, with its f32 micro-kernels for x86-64 in `x86`;
//! - `packed_a`: its left-hand operand, packed per block or once and kept ([`PackedMatrix`],
//!   a convolution's weights during inference); `packed_b`: its right-hand operand packed
//!   once and kept ([`PackedBMatrix`], a small map's convolution turned around);
//! - `gpu`: the kernels of `kernels/gemm.cu` ([`GemmKernel`]), the choice among them and
//!   their launch;
//! - [`reference`](mod@reference): the product as its definition, which both are held to.

use super::precision::{Precision, round_output, round_tensor};
use super::{common_dtype, gpu_f32, host, with_float_type};
use crate::device::gpu::{GpuBuffer, KernelCall, to_i32, to_i64};
use crate::error::{Error, Result};
use crate::tensor::{Float, Tensor};

mod cpu;
mod gpu;
mod packed_a;
mod packed_b;
pub mod reference;
mod views;
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86;

pub(crate) use cpu::{KC as GEMM_KC, with_packing_space_for_a};
pub use cpu::{PackB, cpu_kernel_name, cpu_tile, gemm, gemm_parallel};
pub use gpu::GemmKernel;
pub use packed_a::{PackA, PackedA, PackedMatrix};
pub use packed_b::{PackedB, PackedBMatrix};
pub use views::{MatMut, MatRef};

/// A product's sizes and how its operands lie in memory, as both the CPU and the GPU paths
/// take them: `op(A)` is `m×k` with element `(i, p)` at `i·a_strides.0 + p·a_strides.1`, and
/// `op(B)` is `k×n` likewise.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Layout {
    pub(crate) m: usize,
    pub(crate) n: usize,
    pub(crate) k: usize,
    pub(crate) transpose_a: bool,
    pub(crate) transpose_b: bool,
    pub(crate) a_strides: (usize, usize),
    pub(crate) b_strides: (usize, usize),
}

impl Layout {
    /// The arguments every GPU product kernel takes first (kernels/gemm.cu, gemm_tc.cu):
    /// `C, A, B, M, N, K, a_rs, a_cs, b_rs, b_cs`.
    pub(crate) fn product_args(&self, call: KernelCall, c: &GpuBuffer, a: &Tensor, b: &Tensor) -> Result<KernelCall> {
        const OP: &str = "matmul";
        let (a_rs, a_cs) = self.a_strides;
        let (b_rs, b_cs) = self.b_strides;
        Ok(call
            .buf(c)
            .buf(a.gpu_buffer()?)
            .buf(b.gpu_buffer()?)
            .i32(to_i32(OP, "rows", self.m)?)
            .i32(to_i32(OP, "columns", self.n)?)
            .i32(to_i32(OP, "inner dimension", self.k)?)
            .i64(to_i64(a_rs))
            .i64(to_i64(a_cs))
            .i64(to_i64(b_rs))
            .i64(to_i64(b_cs)))
    }

    /// The layout of `op(a) · op(b)`, or a shape error for operands that are not 2-D or whose
    /// inner dimensions differ.
    fn of(a: &Tensor, transpose_a: bool, b: &Tensor, transpose_b: bool) -> Result<Layout> {
        const OP: &str = "matmul";
        let dims = |t: &Tensor, name: &str, transposed: bool| -> Result<(usize, usize)> {
            let (r, c) =
                t.shape().dims2().ok_or_else(|| Error::shape_of(OP, format!("a 2-D {name}"), name, t.shape()))?;
            Ok(if transposed { (c, r) } else { (r, c) })
        };
        let (m, k) = dims(a, "left operand", transpose_a)?;
        let (kb, n) = dims(b, "right operand", transpose_b)?;
        if k != kb {
            return Err(Error::shape(
                OP,
                format!("operands with matching inner dimensions ({m}×{k} · {k}×N)"),
                format!("{m}×{k} · {kb}×{n}"),
            ));
        }
        // Strides of a row-major matrix, or of its transpose.
        let strides = |t: &Tensor, transposed: bool| -> (usize, usize) {
            let cols = t.dims()[1];
            if transposed { (1, cols) } else { (cols, 1) }
        };
        Ok(Layout {
            m,
            n,
            k,
            transpose_a,
            transpose_b,
            a_strides: strides(a, transpose_a),
            b_strides: strides(b, transpose_b),
        })
    }
}

/// `op(a) · op(b)` for 2-D tensors, where `op` transposes when asked: the matrix product as
/// an op on tensors, on any device. The transposes are strided views; nothing is copied.
/// In a low `precision` the operands are rounded first and (for the 16-bit types) the
/// result after (see [`Precision`]).
pub fn matmul(
    a: &Tensor,
    transpose_a: bool,
    b: &Tensor,
    transpose_b: bool,
    kernel: GemmKernel,
    precision: Precision,
) -> Result<Tensor> {
    const OP: &str = "matmul";
    if precision != Precision::Fp32 {
        // The tensor cores on cuda and emu, unless an FP32 kernel is forced.
        let (dtype, device) = common_dtype(OP, &[("left operand", a), ("right operand", b)])?;
        if let Some(tiles) = kernel.tensor_core_tiles()
            && let Some(gpu) = gpu_f32(OP, dtype, device)?
        {
            let layout = Layout::of(a, transpose_a, b, transpose_b)?;
            return super::gemm_tc::matmul_tensor_cores(&gpu, a, b, layout, tiles, precision);
        }
        let (ar, br) = (round_tensor(a, precision)?, round_tensor(b, precision)?);
        let mut c = matmul(&ar, transpose_a, &br, transpose_b, kernel, Precision::Fp32)?;
        round_output(&mut c, precision)?;
        return Ok(c);
    }
    let layout = Layout::of(a, transpose_a, b, transpose_b)?;
    let (dtype, device) = common_dtype(OP, &[("left operand", a), ("right operand", b)])?;
    if let Some(gpu) = gpu_f32(OP, dtype, device)? {
        return gpu::matmul(&gpu, a, b, layout, dtype, kernel);
    }
    let Layout { m, n, k, a_strides: (a_rs, a_cs), b_strides: (b_rs, b_cs), .. } = layout;
    with_float_type!(dtype, OP, |T| {
        let mut c = crate::device::host_memory::filled(m * n, T::ZERO)?;
        let am = MatRef::new(host::<T>(a)?, m, k, a_rs, a_cs);
        let bm = MatRef::new(host::<T>(b)?, k, n, b_rs, b_cs);
        gemm_parallel(am, bm, MatMut::row_major(&mut c, m, n), false);
        Ok(Tensor::from_cpu([m, n], c))
    })
}
