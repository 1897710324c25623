//! conv2d on the tensor cores (`cuda` with compute capability 8.0 or newer, and `emu`): the
//! kernels of kernels/conv2d_tc.cu, which run when `--precision` is tf32, bf16 or fp16 and
//! the convolution algorithm is `auto` or one of the `tensor-core` ones. The forced FP32
//! algorithms (`direct`, `implicit-gemm`, `implicit-gemm-128`) round the operands for the
//! FP32 kernels instead (mod.rs), as the CPU does.
//!
//! Each direction has one kernel per tile configuration ([`TcTile`]) and precision; the
//! autotuner chooses the configuration per problem, its key including the precision (the
//! emulator takes the 64×64 tile). The results are those of the rounding path: operands
//! rounded, products exact, sums in FP32, outputs rounded for BF16 and FP16, then the bias and
//! the ReLU in FP32 (in the forward kernel's epilogue).
//!
//! Grouped convolutions run as one launch (grid z over the groups) whatever
//! [`ExecOptions::towers`](crate::ops::ExecOptions::towers) says: the towers of `gpu.rs` are
//! an FP32 feature.

use std::sync::Arc;

use super::gpu::{ConvAlgo, check_index_range, filter_splits, shape_args};
use super::{ConvGeometry, OP};
use crate::device::GpuDevice;
use crate::device::gpu::{GpuBuffer, KernelCall, to_i32, to_i64};
use crate::error::{Error, Result};
use crate::ops::autotune;
use crate::ops::precision::Precision;
use crate::ops::tensor_cores::{TcTile, precision_code, precision_index, require_tensor_cores};
use crate::tensor::DType;

/// The configurations `algo` allows for the tensor-core path, or `None` where it asks for
/// the FP32 kernels.
fn tiles_of(algo: ConvAlgo) -> Option<&'static [TcTile]> {
    match algo {
        ConvAlgo::Auto | ConvAlgo::TensorCore => Some(&TcTile::ALL),
        ConvAlgo::TensorCore64 => Some(&[TcTile::T64]),
        ConvAlgo::TensorCore128 => Some(&[TcTile::T128]),
        ConvAlgo::Direct | ConvAlgo::ImplicitGemm | ConvAlgo::ImplicitGemm128 => None,
    }
}

/// The tile configurations to choose among for a convolution in `exec`'s precision on
/// `gpu`, or `None` where the FP32 kernels run on rounded operands instead.
pub(super) fn tiles(gpu: &GpuDevice, algo: ConvAlgo, precision: Precision) -> Result<Option<&'static [TcTile]>> {
    if precision == Precision::Fp32 {
        return Ok(None);
    }
    let Some(tiles) = tiles_of(algo) else { return Ok(None) };
    require_tensor_cores(gpu, precision)?;
    Ok(Some(tiles))
}

const FORWARD: [[&str; 3]; 2] = [
    ["conv2d_fwd_tc64_tf32", "conv2d_fwd_tc64_bf16", "conv2d_fwd_tc64_fp16"],
    ["conv2d_fwd_tc128_tf32", "conv2d_fwd_tc128_bf16", "conv2d_fwd_tc128_fp16"],
];
const DATA: [[&str; 3]; 2] = [
    ["conv2d_bwd_data_tc64_tf32", "conv2d_bwd_data_tc64_bf16", "conv2d_bwd_data_tc64_fp16"],
    ["conv2d_bwd_data_tc128_tf32", "conv2d_bwd_data_tc128_bf16", "conv2d_bwd_data_tc128_fp16"],
];
const FILTER: [[&str; 3]; 2] = [
    ["conv2d_bwd_filter_tc64_tf32", "conv2d_bwd_filter_tc64_bf16", "conv2d_bwd_filter_tc64_fp16"],
    ["conv2d_bwd_filter_tc128_tf32", "conv2d_bwd_filter_tc128_bf16", "conv2d_bwd_filter_tc128_fp16"],
];

/// The launch of `table`'s kernel for `tile` and `precision` over `cols` × `rows` of C per
/// group and `z` blocks deep.
fn tiles_call(
    table: &[[&'static str; 3]; 2],
    tile: TcTile,
    precision: Precision,
    cols: usize,
    rows: usize,
    z: usize,
) -> Result<KernelCall> {
    let name = table[tile.index()][precision_index(OP, precision)?];
    let count = |n: usize, what: &str| {
        u32::try_from(n).map_err(|_| Error::argument(OP, format!("{n} {what} are too many for one launch")))
    };
    Ok(KernelCall::new(name)
        .grid(
            count(cols.div_ceil(tile.cols()), "column tiles")?,
            count(rows.div_ceil(tile.rows()), "row tiles")?,
            count(z, "groups")?,
        )
        .block(256, 1, 1))
}

/// The variant for `pass` of `g`: the only one allowed, or the autotuner's pick, timed
/// with `launch` the first time the problem is met.
fn choose(
    gpu: &GpuDevice,
    tiles: &[TcTile],
    precision: Precision,
    pass: &str,
    g: &ConvGeometry,
    launch: impl Fn(TcTile) -> Result<()>,
) -> Result<TcTile> {
    let p = &g.params;
    let problem = format!(
        "conv2d {pass} {precision} x{} w{} s{:?} p{:?} d{:?} g{}",
        g.in_shape(),
        g.weight_shape(),
        p.stride,
        p.padding,
        p.dilation,
        p.groups
    );
    autotune::pick(gpu, &problem, tiles, TcTile::name, launch)
}

/// `conv(x, w)` rounded as `precision` rounds outputs, `+ bias`, then ReLU when `relu`.
#[allow(clippy::too_many_arguments)]
pub(super) fn forward(
    gpu: &Arc<GpuDevice>,
    tiles: &[TcTile],
    precision: Precision,
    x: &GpuBuffer,
    w: &GpuBuffer,
    bias: Option<&GpuBuffer>,
    relu: bool,
    g: &ConvGeometry,
) -> Result<GpuBuffer> {
    check_index_range(g)?;
    let y = gpu.alloc(DType::F32, g.out_shape().numel())?;
    let launch = |tile: TcTile| -> Result<()> {
        let call = tiles_call(&FORWARD, tile, precision, g.n * g.out_pixels(), g.o_per_group(), g.groups())?;
        let call = call.buf(&y).buf(x).buf(w).buf_or_null(bias);
        gpu.launch(shape_args(call, g)?.i32(relu as i32))
    };
    let pass = if relu { "forward+relu" } else { "forward" };
    let tile = choose(gpu, tiles, precision, pass, g, launch)?;
    launch(tile)?;
    Ok(y)
}

/// The data gradient from `dy` and `w`, rounded as `precision` rounds outputs.
pub(super) fn backward_data(
    gpu: &Arc<GpuDevice>,
    tiles: &[TcTile],
    precision: Precision,
    dy: &GpuBuffer,
    w: &GpuBuffer,
    g: &ConvGeometry,
) -> Result<GpuBuffer> {
    check_index_range(g)?;
    let dx = gpu.alloc(DType::F32, g.in_shape().numel())?;
    let launch = |tile: TcTile| -> Result<()> {
        let cols = g.n * g.h * g.w;
        let call = tiles_call(&DATA, tile, precision, cols, g.c / g.groups(), g.groups())?;
        gpu.launch(shape_args(call.buf(&dx).buf(dy).buf(w), g)?)
    };
    let tile = choose(gpu, tiles, precision, "backward data", g, launch)?;
    launch(tile)?;
    Ok(dx)
}

/// The filter gradient into `dw`: one launch when the shared dimension N·OH·OW is not
/// split, else the slices' FP32 partial sums into a workspace and their sum, rounded, by
/// conv2d_bwd_filter_reduce_tc (the split of `gpu.rs`, sized for the tile's rows).
fn filter_into(
    gpu: &Arc<GpuDevice>,
    tile: TcTile,
    precision: Precision,
    dw: &GpuBuffer,
    dy: &GpuBuffer,
    x: &GpuBuffer,
    g: &ConvGeometry,
) -> Result<()> {
    let count = g.weight_shape().numel();
    let (splits, chunk) = filter_splits(g, tile.rows());
    let workspace = if splits > 1 { Some(gpu.alloc(DType::F32, count * splits)?) } else { None };
    let call = tiles_call(&FILTER, tile, precision, g.k_per_group(), g.o_per_group(), g.groups() * splits)?;
    let call = shape_args(call.buf(workspace.as_ref().unwrap_or(dw)).buf(dy).buf(x), g)?;
    gpu.launch(call.i32(to_i32(OP, "slice length", chunk)?).i32(to_i32(OP, "groups", g.groups())?))?;
    match &workspace {
        Some(ws) => gpu.launch(
            KernelCall::elementwise("conv2d_bwd_filter_reduce_tc", count)
                .buf(dw)
                .buf(ws)
                .i64(to_i64(count))
                .i64(to_i64(count))
                .i32(to_i32(OP, "slices", splits)?)
                .i32(precision_code(precision)),
        ),
        None => Ok(()),
    }
}

/// The filter gradient from `dy` and `x`, rounded as `precision` rounds outputs.
pub(super) fn backward_filter(
    gpu: &Arc<GpuDevice>,
    tiles: &[TcTile],
    precision: Precision,
    dy: &GpuBuffer,
    x: &GpuBuffer,
    g: &ConvGeometry,
) -> Result<GpuBuffer> {
    check_index_range(g)?;
    let dw = gpu.alloc(DType::F32, g.weight_shape().numel())?;
    let launch = |tile: TcTile| filter_into(gpu, tile, precision, &dw, dy, x, g);
    let tile = choose(gpu, tiles, precision, "backward filter", g, launch)?;
    launch(tile)?;
    Ok(dw)
}
