//! conv2d on the tensor cores (`cuda` with compute capability 8.0 or newer, and `emu`): the
//! kernels of kernels/conv2d_tc.cu, which run when `--precision` is tf32, bf16 or fp16 and
//! the convolution algorithm is `auto` or one of the `tensor-core` ones. The forced FP32
//! algorithms (`direct`, `implicit-gemm`, `implicit-gemm-128`) round the operands for the
//! FP32 kernels instead (conv2d/mod.rs), as the CPU does.
//!
//! Each direction has one kernel per tile configuration ([`TcTile`]) and precision; the
//! autotuner chooses the configuration per problem, its key including the precision (the
//! emulator takes the 64×64 tile). The results are those of the rounding path: operands
//! rounded, products exact, sums in FP32, outputs rounded for BF16 and FP16, then the bias and
//! the ReLU in FP32 (in the forward kernel's epilogue).
//!
//! Grouped convolutions run as one launch (grid z over the groups), or, with
//! [`ExecOptions::towers`] on, as `conv2d/gpu.rs`'s towers: each group's launch, one group deep with
//! pointers at its channels, on its own side stream, with the same bits as the one launch.

use std::sync::Arc;

use super::conv2d::{
    ConvAlgo, ConvGeometry, FilterGradient, Groups, OP, check_index_range, shape_args, splits_into_towers,
};
use crate::device::GpuDevice;
use crate::device::gpu::{GpuBuffer, KernelCall};
use crate::error::{Error, Result};
use crate::ops::precision::Precision;
use crate::ops::tensor_cores::{TcTile, precision_code, precision_index, require_tensor_cores};
use crate::ops::{ExecOptions, autotune};
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
pub(crate) fn tiles(gpu: &GpuDevice, algo: ConvAlgo, precision: Precision) -> Result<Option<&'static [TcTile]>> {
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

/// Runs `launch` over all groups with `tile`, or, where the layer splits into towers
/// ([`ExecOptions::towers`]), once per group on side stream t + 1, with pointers at that
/// group's channels: the same blocks computing the same sums, so the same bits.
fn run(
    gpu: &Arc<GpuDevice>,
    exec: &ExecOptions,
    g: &ConvGeometry,
    tile: TcTile,
    launch: impl Fn(TcTile, Groups) -> Result<()>,
) -> Result<()> {
    if splits_into_towers(exec, g) {
        gpu.on_streams(g.groups(), |t| launch(tile, Groups::one(t)))?;
        Ok(())
    } else {
        launch(tile, Groups::all(g))
    }
}

/// `conv(x, w)` rounded as `exec.precision` rounds outputs, `+ bias`, then ReLU when `relu`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn forward(
    gpu: &Arc<GpuDevice>,
    exec: &ExecOptions,
    tiles: &[TcTile],
    x: &GpuBuffer,
    w: &GpuBuffer,
    bias: Option<&GpuBuffer>,
    relu: bool,
    g: &ConvGeometry,
) -> Result<GpuBuffer> {
    check_index_range(g)?;
    let precision = exec.precision;
    let y = gpu.alloc(DType::F32, g.out_shape().numel())?;
    let (cg, og) = (g.c / g.groups(), g.o_per_group());
    let launch = |tile: TcTile, Groups { first, count }: Groups| -> Result<()> {
        let call = tiles_call(&FORWARD, tile, precision, g.n * g.out_pixels(), og, count)?
            .buf_from(&y, first * og * g.out_pixels())?
            .buf_from(x, first * cg * g.h * g.w)?
            .buf_from(w, first * og * g.k_per_group())?;
        let call = match bias {
            Some(b) => call.buf_from(b, first * og)?,
            None => call.buf_or_null(None),
        };
        gpu.launch(shape_args(call, g)?.i32(relu as i32))
    };
    let pass = if relu { "forward+relu" } else { "forward" };
    let tile = choose(gpu, tiles, precision, pass, g, |tile| launch(tile, Groups::all(g)))?;
    run(gpu, exec, g, tile, launch)?;
    Ok(y)
}

/// The data gradient from `dy` and `w`, rounded as `exec.precision` rounds outputs.
pub(crate) fn backward_data(
    gpu: &Arc<GpuDevice>,
    exec: &ExecOptions,
    tiles: &[TcTile],
    dy: &GpuBuffer,
    w: &GpuBuffer,
    g: &ConvGeometry,
) -> Result<GpuBuffer> {
    check_index_range(g)?;
    let precision = exec.precision;
    let dx = gpu.alloc(DType::F32, g.in_shape().numel())?;
    let (cg, og) = (g.c / g.groups(), g.o_per_group());
    let launch = |tile: TcTile, Groups { first, count }: Groups| -> Result<()> {
        let call = tiles_call(&DATA, tile, precision, g.n * g.h * g.w, cg, count)?
            .buf_from(&dx, first * cg * g.h * g.w)?
            .buf_from(dy, first * og * g.out_pixels())?
            .buf_from(w, first * og * g.k_per_group())?;
        gpu.launch(shape_args(call, g)?)
    };
    let tile = choose(gpu, tiles, precision, "backward data", g, |tile| launch(tile, Groups::all(g)))?;
    run(gpu, exec, g, tile, launch)?;
    Ok(dx)
}

/// The filter gradient on tile `tile` in `precision`: the buffers of `conv2d/gpu.rs`'s
/// `FilterGradient`, split along N·OH·OW for the tile's rows, whose slices' FP32 partial
/// sums `conv2d_bwd_filter_reduce_tc` adds and rounds. Allocated before any fork, so that the
/// towers only write into them.
struct TcFilterGradient {
    tile: TcTile,
    precision: Precision,
    grad: FilterGradient,
}

impl TcFilterGradient {
    fn alloc(gpu: &Arc<GpuDevice>, tile: TcTile, precision: Precision, g: &ConvGeometry) -> Result<TcFilterGradient> {
        Ok(TcFilterGradient { tile, precision, grad: FilterGradient::split(gpu, g, Some(tile.rows()))? })
    }

    /// The launches over `groups` (and their share of the slices' reduction).
    fn launch(&self, gpu: &GpuDevice, dy: &GpuBuffer, x: &GpuBuffer, g: &ConvGeometry, groups: Groups) -> Result<()> {
        let kernel = |z| tiles_call(&FILTER, self.tile, self.precision, g.k_per_group(), g.o_per_group(), z);
        let reduce = ("conv2d_bwd_filter_reduce_tc", Some(precision_code(self.precision)));
        self.grad.implicit(gpu, kernel, reduce, (dy, x), g, groups)
    }
}

/// The filter gradient from `dy` and `x`, rounded as `exec.precision` rounds outputs.
pub(crate) fn backward_filter(
    gpu: &Arc<GpuDevice>,
    exec: &ExecOptions,
    tiles: &[TcTile],
    dy: &GpuBuffer,
    x: &GpuBuffer,
    g: &ConvGeometry,
) -> Result<GpuBuffer> {
    check_index_range(g)?;
    let precision = exec.precision;
    let timed = |tile: TcTile| TcFilterGradient::alloc(gpu, tile, precision, g)?.launch(gpu, dy, x, g, Groups::all(g));
    let tile = choose(gpu, tiles, precision, "backward filter", g, timed)?;
    let grad = TcFilterGradient::alloc(gpu, tile, precision, g)?;
    run(gpu, exec, g, tile, |_, groups| grad.launch(gpu, dy, x, g, groups))?;
    Ok(grad.grad.dw)
}
