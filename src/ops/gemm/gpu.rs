//! The matrix product on a GPU: the kernels of `kernels/gemm.cu` ([`GemmKernel`]), which of
//! them fits a product, the autotuner's choice among the blocked ones, and the launch. The
//! CPU's blocked GEMM is in `cpu`; [`matmul`](super::matmul) chooses between the two.

use std::sync::Arc;

use super::Layout;
use crate::device::GpuDevice;
use crate::device::gpu::KernelCall;
use crate::error::{Error, Result};
use crate::ops::autotune;
use crate::ops::tensor_cores::TcTile;
use crate::tensor::{DType, Tensor};

/// Which GPU kernel computes a matrix product (kernels/gemm.cu). The CPU always uses the
/// blocked GEMM of `cpu`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GemmKernel {
    /// One thread per element of C, straight from global memory.
    Naive,
    /// 16×16 tiles staged in shared memory.
    Tiled,
    /// 64×64 tiles, 4×4 outputs per thread, double-buffered (kernels/tile_gemm.cuh).
    Blocked64,
    /// 128×128 tiles, 8×8 outputs per thread: fewer shared-memory loads per FMA, for large
    /// products.
    Blocked128,
    /// The 128×128 tiles with 16-byte global loads, where the layout allows them
    /// ([`GemmKernel::fits`]): dense operands whose contiguous dimension is a multiple of 4.
    Vec128,
    /// The fastest of the blocked kernels that fit this shape, timed on first use (see
    /// `ops::autotune`); on the emulator, the last that fits (the 16-byte one, else 128×128).
    /// In a low precision, the tensor-core kernels, the autotuner choosing the tile.
    #[default]
    Auto,
    /// The tensor-core kernels (kernels/gemm_tc.cu) on the 64×64 tile; for a low precision
    /// only (not in [`GemmKernel::ALL`], which lists the FP32 kernels).
    TensorCore64,
    /// The tensor-core kernels on the 128×64 tile.
    TensorCore128,
}

impl GemmKernel {
    /// Every kernel (not `Auto`, which picks one of them).
    pub const ALL: [GemmKernel; 5] =
        [GemmKernel::Naive, GemmKernel::Tiled, GemmKernel::Blocked64, GemmKernel::Blocked128, GemmKernel::Vec128];

    pub fn name(self) -> &'static str {
        match self {
            GemmKernel::Naive => "gemm_naive_f32",
            GemmKernel::Tiled => "gemm_tiled_f32",
            GemmKernel::Blocked64 => "gemm_64x64_f32",
            GemmKernel::Blocked128 | GemmKernel::Auto => "gemm_128x128_f32",
            GemmKernel::Vec128 => "gemm_128x128_vec4_f32",
            GemmKernel::TensorCore64 => "gemm_tc64",
            GemmKernel::TensorCore128 => "gemm_tc128",
        }
    }

    /// Whether the kernel can compute `op(a) · op(b)` for an `m × k` times `k × n` product
    /// (`op` transposing where asked). Every kernel can, but the 16-byte one, which loads four
    /// neighbours along the dimension each operand has contiguous in memory: k for a plain
    /// A, m for a transposed one, n for a plain B, k for a transposed one. That dimension must
    /// be a multiple of 4, so that every float4 is aligned and lies wholly in or out of the
    /// matrix.
    pub fn fits(self, m: usize, n: usize, k: usize, transpose_a: bool, transpose_b: bool) -> bool {
        match self {
            GemmKernel::Vec128 => {
                let a_contiguous = if transpose_a { m } else { k };
                let b_contiguous = if transpose_b { k } else { n };
                a_contiguous % 4 == 0 && b_contiguous % 4 == 0
            }
            _ => true,
        }
    }

    /// Threads per block side (0: a flat block of 256) and outputs per block side.
    fn tiling(self) -> (u32, usize) {
        match self {
            GemmKernel::Naive | GemmKernel::Tiled => (16, 16),
            GemmKernel::Blocked64 => (0, 64),
            GemmKernel::Blocked128 | GemmKernel::Vec128 | GemmKernel::Auto => (0, 128),
            GemmKernel::TensorCore64 => (0, 64),
            GemmKernel::TensorCore128 => (0, 128),
        }
    }

    /// The tile configurations a product in a low precision may run on with this kernel
    /// choice: both under `Auto`, one when forced, none for a forced FP32 kernel (which then
    /// runs on rounded operands, as the CPU does).
    pub(super) fn tensor_core_tiles(self) -> Option<&'static [TcTile]> {
        match self {
            GemmKernel::Auto => Some(&TcTile::ALL),
            GemmKernel::TensorCore64 => Some(&[TcTile::T64]),
            GemmKernel::TensorCore128 => Some(&[TcTile::T128]),
            GemmKernel::Naive | GemmKernel::Tiled | GemmKernel::Blocked64 | GemmKernel::Blocked128 => None,
            GemmKernel::Vec128 => None,
        }
    }
}

/// [`matmul`](super::matmul) on `gpu`, with `kernel` (the autotuner's pick among the blocked
/// kernels that fit, for [`GemmKernel::Auto`]); the operands lie as `layout` says.
pub(super) fn matmul(
    gpu: &Arc<GpuDevice>,
    a: &Tensor,
    b: &Tensor,
    layout: Layout,
    dtype: DType,
    kernel: GemmKernel,
) -> Result<Tensor> {
    const OP: &str = "matmul";
    let Layout { m, n, k, transpose_a, transpose_b, a_strides: (a_rs, a_cs), b_strides: (b_rs, b_cs) } = layout;
    if matches!(kernel, GemmKernel::TensorCore64 | GemmKernel::TensorCore128) {
        return Err(Error::argument(OP, format!("{} needs --precision tf32, bf16 or fp16", kernel.name())));
    }
    if !kernel.fits(m, n, k, transpose_a, transpose_b) {
        return Err(Error::argument(
            OP,
            format!(
                "{} needs the contiguous dimension of each operand to be a multiple of 4, got {m}×{k}{} · {k}×{n}{}",
                kernel.name(),
                if transpose_a { " (transposed)" } else { "" },
                if transpose_b { " (transposed)" } else { "" }
            ),
        ));
    }
    let c = gpu.alloc(dtype, m * n)?;
    let launch = |kernel: GemmKernel| -> Result<()> {
        // One block per tile of C: x along the columns, y along the rows.
        let (side, tile) = kernel.tiling();
        let blocks = |len: usize| u32::try_from(len.div_ceil(tile)).unwrap_or(u32::MAX);
        let call = KernelCall::new(kernel.name()).grid(blocks(n), blocks(m), 1);
        let call = if side == 0 { call.block(256, 1, 1) } else { call.block(side, side, 1) };
        gpu.launch(layout.product_args(call, &c, a, b)?.i32(0))
    };
    let kernel = match kernel {
        GemmKernel::Auto => {
            let problem = format!("matmul {m}x{n}x{k} a{a_rs},{a_cs} b{b_rs},{b_cs}");
            // The 16-byte kernel last (the emulator's pick), where it fits.
            let all = [GemmKernel::Blocked64, GemmKernel::Blocked128, GemmKernel::Vec128];
            let fitting = if GemmKernel::Vec128.fits(m, n, k, transpose_a, transpose_b) { 3 } else { 2 };
            autotune::pick(gpu, &problem, &all[..fitting], GemmKernel::name, launch)?
        }
        k => k,
    };
    launch(kernel)?;
    Ok(Tensor::from_gpu([m, n], c))
}
