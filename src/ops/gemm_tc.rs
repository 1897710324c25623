//! The matrix product on the tensor cores: the kernels of `kernels/gemm_tc.cu`, which run
//! when `--precision` is tf32, bf16 or fp16 and the kernel is `GemmKernel::Auto` or one of
//! the tensor-core ones (the linear layers' products, `scratchnet kernel gemm`). The engine
//! is the convolutions' (kernels/tc_gemm.cuh); [`super::gemm::matmul`] chooses this path.

use std::sync::Arc;

use super::gemm::Layout;
use crate::device::GpuDevice;
use crate::device::gpu::KernelCall;
use crate::error::Result;
use crate::ops::autotune;
use crate::ops::precision::Precision;
use crate::ops::tensor_cores::{TcTile, precision_index, require_tensor_cores};
use crate::tensor::{DType, Tensor};

const TENSOR_CORE: [[&str; 3]; 2] =
    [["gemm_tc64_tf32", "gemm_tc64_bf16", "gemm_tc64_fp16"], ["gemm_tc128_tf32", "gemm_tc128_bf16", "gemm_tc128_fp16"]];

/// [`matmul`](super::gemm::matmul) in a low `precision` on the tensor cores (kernels/gemm_tc.cu),
/// on one of `tiles` (the autotuner's pick where there are two, the 64×64 one on the
/// emulator): operands rounded to the precision, products exact, sums in FP32, for BF16 and
/// FP16 each output rounded to the 16-bit type.
pub(crate) fn matmul_tensor_cores(
    gpu: &Arc<GpuDevice>,
    a: &Tensor,
    b: &Tensor,
    layout: Layout,
    tiles: &[TcTile],
    precision: Precision,
) -> Result<Tensor> {
    const OP: &str = "matmul";
    require_tensor_cores(gpu, precision)?;
    let column = precision_index(OP, precision)?;
    let Layout { m, n, k, a_strides: (a_rs, a_cs), b_strides: (b_rs, b_cs), .. } = layout;
    let c = gpu.alloc(DType::F32, m * n)?;
    let launch = |tile: TcTile| -> Result<()> {
        let blocks = |len: usize, side: usize| u32::try_from(len.div_ceil(side)).unwrap_or(u32::MAX);
        let call = KernelCall::new(TENSOR_CORE[tile.index()][column])
            .grid(blocks(n, tile.cols()), blocks(m, tile.rows()), 1)
            .block(256, 1, 1);
        gpu.launch(layout.product_args(call, &c, a, b)?)
    };
    let problem = format!("matmul {precision} {m}x{n}x{k} a{a_rs},{a_cs} b{b_rs},{b_cs}");
    let tile = autotune::pick(gpu, &problem, tiles, TcTile::name, launch)?;
    launch(tile)?;
    Ok(Tensor::from_gpu([m, n], c))
}
