//! conv2d on `cuda` and `emu`: which kernel variant runs, and the launches.
//!
//! Two variants of each direction live in kernels/conv2d.cu:
//!
//! - **direct**: one thread per output value, straight from global memory. The plain version
//!   to read first, and the one every fast variant is compared with.
//! - **implicit GEMM**: the product of the CPU path's im2col + GEMM, computed in 64×64
//!   register-blocked tiles (kernels/tile_gemm.cuh) without ever writing the im2col matrix.
//!
//! The [`ExecOptions`] the op receives choose (`--conv-algo` on the command line): `direct`,
//! `implicit-gemm`, `implicit-gemm-128`, or `auto` (the default), which times them the first
//! time each shape runs on a GPU and keeps the fastest ([`crate::ops::autotune`]).
//!
//! These are the FP32 kernels. In a low precision (`--precision` tf32, bf16, fp16), `auto`
//! and the `tensor-core` algorithms run the tensor-core kernels of kernels/conv2d_tc.cu
//! instead (`src/ops/conv2d_tc.rs`), and the forced FP32 algorithms run here on rounded operands
//! (mod.rs).
//!
//! **Towers** (`ExecOptions::towers`, `--towers`): AlexNet's grouped convolutions were the
//! paper's two GPUs, each computing the group of channels it held. With towers on, each group
//! of a grouped convolution runs on its own side stream ([`GpuDevice::on_streams`]), so the
//! GPU can run the two halves side by side, forward and backward, where one launch would run
//! them as one grid. A tower is the implicit-GEMM kernel launched one group deep, with
//! pointers that start at its group's channels: the same arithmetic in the same order as the
//! single launch, so the results are the same to the bit. Towers replace the implicit GEMM's
//! one launch where it is the kernel chosen (forced, or picked by the autotuner, which times
//! the one-launch kernels); the direct kernels cover all groups in one grid-stride loop, so
//! where they run, the groups stay one launch. The tensor-core kernels (`src/ops/conv2d_tc.rs`)
//! split into towers the same way.

use std::sync::Arc;

use crate::device::streams::SIDE_STREAMS;

use super::{ConvGeometry, OP};
use crate::device::GpuDevice;
use crate::device::gpu::{GpuBuffer, KernelCall, to_i32, to_i64};
use crate::error::{Error, Result};
use crate::ops::{ExecOptions, autotune};
use crate::tensor::DType;

/// How the convolution kernels are chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvAlgo {
    Direct,
    /// Implicit GEMM on the 64×64 tile engine.
    ImplicitGemm,
    /// Implicit GEMM on the 128×128 tile engine (large layers).
    ImplicitGemm128,
    /// Time the three on first use of a shape (GPU), or take the 64×64 implicit GEMM
    /// (emulator). With `--precision` tf32, bf16 or fp16: the tensor-core kernels, as
    /// [`ConvAlgo::TensorCore`].
    Auto,
    /// The tensor-core kernels (`src/ops/conv2d_tc.rs`), the autotuner choosing the tile
    /// configuration (the 64×64 one on the emulator); needs `--precision` tf32, bf16 or fp16.
    TensorCore,
    /// The tensor-core kernels on the 64×64 block tile.
    TensorCore64,
    /// The tensor-core kernels on the 128×64 block tile.
    TensorCore128,
}

impl std::str::FromStr for ConvAlgo {
    type Err = Error;
    fn from_str(s: &str) -> Result<ConvAlgo> {
        match s {
            "direct" => Ok(ConvAlgo::Direct),
            "implicit-gemm" => Ok(ConvAlgo::ImplicitGemm),
            "implicit-gemm-128" => Ok(ConvAlgo::ImplicitGemm128),
            "auto" => Ok(ConvAlgo::Auto),
            "tensor-core" => Ok(ConvAlgo::TensorCore),
            "tensor-core-64" => Ok(ConvAlgo::TensorCore64),
            "tensor-core-128" => Ok(ConvAlgo::TensorCore128),
            other => Err(Error::argument(
                "--conv-algo",
                format!(
                    "'{other}' is not direct, implicit-gemm, implicit-gemm-128, tensor-core, tensor-core-64, \
                     tensor-core-128 or auto"
                ),
            )),
        }
    }
}

/// Whether this convolution runs as towers when its kernel is the implicit GEMM: towers
/// on, and a grouped layer with no more groups than side streams.
pub(crate) fn splits_into_towers(exec: &ExecOptions, g: &ConvGeometry) -> bool {
    exec.towers && (2..=SIDE_STREAMS).contains(&g.groups())
}

/// A variant that actually runs (what `Auto` resolves to).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kernel {
    Direct,
    ImplicitGemm,
    ImplicitGemm128,
}

/// The three implicit-GEMM kernels of one tile engine, and its tile's side.
struct ImplicitGemmKernels {
    forward: &'static str,
    data: &'static str,
    filter: &'static str,
    tile: usize,
}

const ENGINE_64: ImplicitGemmKernels = ImplicitGemmKernels {
    forward: "conv2d_fwd_implicit_gemm_f32",
    data: "conv2d_bwd_data_implicit_gemm_f32",
    filter: "conv2d_bwd_filter_implicit_gemm_f32",
    tile: 64,
};

const ENGINE_128: ImplicitGemmKernels = ImplicitGemmKernels {
    forward: "conv2d_fwd_implicit_gemm128_f32",
    data: "conv2d_bwd_data_implicit_gemm128_f32",
    filter: "conv2d_bwd_filter_implicit_gemm128_f32",
    tile: 128,
};

impl Kernel {
    fn name(self) -> &'static str {
        match self {
            Kernel::Direct => "direct",
            Kernel::ImplicitGemm => "implicit-gemm",
            Kernel::ImplicitGemm128 => "implicit-gemm-128",
        }
    }

    /// The implicit-GEMM kernels of this variant; `None` for the direct one.
    fn implicit_gemm(self) -> Option<&'static ImplicitGemmKernels> {
        match self {
            Kernel::Direct => None,
            Kernel::ImplicitGemm => Some(&ENGINE_64),
            Kernel::ImplicitGemm128 => Some(&ENGINE_128),
        }
    }
}

/// Runs `launch` with the variant `algo` asks for.
fn run(
    gpu: &GpuDevice,
    algo: ConvAlgo,
    pass: &str,
    g: &ConvGeometry,
    launch: impl Fn(Kernel) -> Result<()>,
) -> Result<()> {
    let kernel = choose(gpu, algo, pass, g, &launch)?;
    launch(kernel)
}

/// The variant `algo` asks for: under `Auto`, the autotuner's choice for this problem, timed
/// with `launch` (the one-launch kernels) the first time the problem is met.
fn choose(
    gpu: &GpuDevice,
    algo: ConvAlgo,
    pass: &str,
    g: &ConvGeometry,
    launch: impl Fn(Kernel) -> Result<()>,
) -> Result<Kernel> {
    Ok(match algo {
        ConvAlgo::Direct => Kernel::Direct,
        ConvAlgo::ImplicitGemm => Kernel::ImplicitGemm,
        ConvAlgo::ImplicitGemm128 => Kernel::ImplicitGemm128,
        // A low precision takes the tensor-core path before reaching here (mod.rs).
        ConvAlgo::TensorCore | ConvAlgo::TensorCore64 | ConvAlgo::TensorCore128 => {
            return Err(Error::argument(
                "--conv-algo",
                "the tensor-core kernels need --precision tf32, bf16 or fp16 (FP32 runs on the FP32 kernels)",
            ));
        }
        ConvAlgo::Auto => {
            let p = &g.params;
            let problem = format!(
                "conv2d {pass} x{} w{} s{:?} p{:?} d{:?} g{}",
                g.in_shape(),
                g.weight_shape(),
                p.stride,
                p.padding,
                p.dilation,
                p.groups
            );
            // The emulator takes the last: the 64×64 tile, which wastes least on the small
            // layers the tests use (the selftest runs every variant explicitly).
            let candidates = [Kernel::Direct, Kernel::ImplicitGemm128, Kernel::ImplicitGemm];
            autotune::pick(gpu, &problem, &candidates, Kernel::name, &launch)?
        }
    })
}

/// Checks the products the kernels compute in 32-bit `int` from their shape arguments: the
/// implicit GEMMs' column counts and shared dimensions, among them the filter gradient's
/// `K = N·OH·OW`. Each factor fits an `int` on its own ([`shape_args`] checks that); their
/// product may not, and would wrap inside the kernel.
pub(crate) fn check_index_range(g: &ConvGeometry) -> Result<()> {
    let og = g.o_per_group();
    for (what, factors) in [
        ("N·OH·OW (images × output pixels)", [g.n, g.oh, g.ow]),
        ("N·H·W (images × input pixels)", [g.n, g.h, g.w]),
        ("C/groups·KH·KW (weights per output channel)", [g.c / g.groups(), g.kh, g.kw]),
        ("O/groups·KH·KW", [og, g.kh, g.kw]),
    ] {
        let product = factors.iter().try_fold(1usize, |p, &f| p.checked_mul(f)).unwrap_or(usize::MAX);
        to_i32(OP, what, product)?;
    }
    Ok(())
}

/// Appends the sixteen shape arguments every conv2d kernel takes, in their order.
pub(crate) fn shape_args(call: KernelCall, g: &ConvGeometry) -> Result<KernelCall> {
    let p = &g.params;
    let mut call = call;
    for (what, v) in [
        ("batch", g.n),
        ("input channels", g.c),
        ("height", g.h),
        ("width", g.w),
        ("output channels", g.o),
        ("kernel height", g.kh),
        ("kernel width", g.kw),
        ("output height", g.oh),
        ("output width", g.ow),
        ("stride", p.stride.0),
        ("stride", p.stride.1),
        ("padding", p.padding.0),
        ("padding", p.padding.1),
        ("dilation", p.dilation.0),
        ("dilation", p.dilation.1),
        ("groups", p.groups),
    ] {
        call = call.i32(to_i32(OP, what, v)?);
    }
    Ok(call)
}

/// The launch of an implicit GEMM with square tiles of side `tile`: `cols` columns and
/// `rows` rows of C per group, `z` blocks deep.
fn tiles(name: &'static str, tile: usize, cols: usize, rows: usize, z: usize) -> Result<KernelCall> {
    let count = |n: usize, what: &str| {
        u32::try_from(n).map_err(|_| Error::argument(OP, format!("{n} {what} are too many for one launch")))
    };
    Ok(KernelCall::new(name)
        .grid(
            count(cols.div_ceil(tile), "column tiles")?,
            count(rows.div_ceil(tile), "row tiles")?,
            count(z, "groups")?,
        )
        .block(256, 1, 1))
}

/// Where one implicit-GEMM launch's operands start: the groups `first..first + count` of
/// the layer. A launch over all of them is the plain one; a launch over one group is a
/// tower, its pointers at that group's channels and its grid one group deep (see the module's
/// comment; the kernels take `g = 0` for the first group they are given).
#[derive(Clone, Copy)]
pub(crate) struct Groups {
    pub(crate) first: usize,
    pub(crate) count: usize,
}

impl Groups {
    pub(crate) fn all(g: &ConvGeometry) -> Groups {
        Groups { first: 0, count: g.groups() }
    }

    pub(crate) fn one(t: usize) -> Groups {
        Groups { first: t, count: 1 }
    }
}

/// The forward implicit GEMM over `groups`, into `y`.
#[allow(clippy::too_many_arguments)]
fn implicit_forward(
    gpu: &GpuDevice,
    k: &ImplicitGemmKernels,
    y: &GpuBuffer,
    x: &GpuBuffer,
    w: &GpuBuffer,
    bias: Option<&GpuBuffer>,
    relu: bool,
    g: &ConvGeometry,
    Groups { first, count }: Groups,
) -> Result<()> {
    let (cg, og) = (g.c / g.groups(), g.o_per_group());
    let call = tiles(k.forward, k.tile, g.n * g.out_pixels(), og, count)?
        .buf_from(y, first * og * g.out_pixels())?
        .buf_from(x, first * cg * g.h * g.w)?
        .buf_from(w, first * og * g.k_per_group())?;
    let call = match bias {
        Some(b) => call.buf_from(b, first * og)?,
        None => call.buf_or_null(None),
    };
    gpu.launch(shape_args(call, g)?.i32(relu as i32))
}

/// `conv(x, w) + bias`, then ReLU when `relu` is set: fused into the implicit GEMM's
/// epilogue, or a separate in-place pass after the direct kernel.
pub(super) fn forward(
    gpu: &Arc<GpuDevice>,
    exec: &ExecOptions,
    x: &GpuBuffer,
    w: &GpuBuffer,
    bias: Option<&GpuBuffer>,
    relu: bool,
    g: &ConvGeometry,
) -> Result<GpuBuffer> {
    check_index_range(g)?;
    let count = g.out_shape().numel();
    let y = gpu.alloc(DType::F32, count)?;
    let problem = if relu { "forward+relu" } else { "forward" };
    let launch = |kernel: Kernel| match kernel.implicit_gemm() {
        Some(k) => implicit_forward(gpu, k, &y, x, w, bias, relu, g, Groups::all(g)),
        None => {
            let call = KernelCall::elementwise("conv2d_fwd_direct_f32", count);
            gpu.launch(shape_args(call.buf(&y).buf(x).buf(w).buf_or_null(bias), g)?)?;
            if !relu {
                return Ok(());
            }
            gpu.launch(
                KernelCall::elementwise("bias_act_f32", count)
                    .buf(&y)
                    .buf_or_null(None)
                    .i32(1)
                    .i32(to_i32(OP, "batch", g.n)?)
                    .i32(to_i32(OP, "channels", g.o)?)
                    .i64(to_i64(g.out_pixels())),
            )
        }
    };
    let kernel = choose(gpu, exec.conv_algo, problem, g, launch)?;
    match kernel.implicit_gemm().filter(|_| splits_into_towers(exec, g)) {
        // The towers: group t's implicit GEMM on side stream t + 1.
        Some(k) => {
            gpu.on_streams(g.groups(), |t| implicit_forward(gpu, k, &y, x, w, bias, relu, g, Groups::one(t)))?;
        }
        None => launch(kernel)?,
    }
    Ok(y)
}

/// The data gradient's implicit GEMM over `groups`, into `dx`.
fn implicit_data(
    gpu: &GpuDevice,
    k: &ImplicitGemmKernels,
    dx: &GpuBuffer,
    dy: &GpuBuffer,
    w: &GpuBuffer,
    g: &ConvGeometry,
    Groups { first, count }: Groups,
) -> Result<()> {
    let (cg, og) = (g.c / g.groups(), g.o_per_group());
    let call = tiles(k.data, k.tile, g.n * g.h * g.w, cg, count)?
        .buf_from(dx, first * cg * g.h * g.w)?
        .buf_from(dy, first * og * g.out_pixels())?
        .buf_from(w, first * og * g.k_per_group())?;
    gpu.launch(shape_args(call, g)?)
}

/// The data gradient's launch with kernel `kernel`, into `dx`.
fn launch_data(
    gpu: &GpuDevice,
    kernel: Kernel,
    dx: &GpuBuffer,
    dy: &GpuBuffer,
    w: &GpuBuffer,
    g: &ConvGeometry,
) -> Result<()> {
    match kernel.implicit_gemm() {
        Some(k) => implicit_data(gpu, k, dx, dy, w, g, Groups::all(g)),
        None => {
            let call = KernelCall::elementwise("conv2d_bwd_data_direct_f32", g.in_shape().numel());
            gpu.launch(shape_args(call.buf(dx).buf(dy).buf(w), g)?)
        }
    }
}

pub(super) fn backward_data(
    gpu: &Arc<GpuDevice>,
    exec: &ExecOptions,
    dy: &GpuBuffer,
    w: &GpuBuffer,
    g: &ConvGeometry,
) -> Result<GpuBuffer> {
    check_index_range(g)?;
    let dx = gpu.alloc(DType::F32, g.in_shape().numel())?;
    run(gpu, exec.conv_algo, "backward data", g, |kernel| launch_data(gpu, kernel, &dx, dy, w, g))?;
    Ok(dx)
}

/// How many slices the filter gradient's shared dimension (N·OH·OW) is cut into, for tiles
/// of side `tile`: enough blocks to fill a large GPU twice over (about 256), each slice at
/// least 256 long.
fn filter_splits(g: &ConvGeometry, tile: usize) -> (usize, usize) {
    let k = g.n * g.out_pixels();
    let tiles = g.k_per_group().div_ceil(tile) * g.o_per_group().div_ceil(tile) * g.groups();
    let wanted = 256usize.div_ceil(tiles.max(1)).clamp(1, (k / 256).max(1));
    let chunk = k.div_ceil(wanted).div_ceil(8) * 8;
    (k.div_ceil(chunk.max(1)).max(1), chunk.max(8))
}

/// The filter gradient's output and, for an implicit GEMM whose shared dimension is split,
/// the workspace of the slices' partial sums (`splits` blocks the size of dW). The FP32
/// kernels and the tensor-core ones (src/ops/conv2d_tc.rs) share it.
pub(crate) struct FilterGradient {
    pub(crate) dw: GpuBuffer,
    workspace: Option<GpuBuffer>,
    splits: usize,
    chunk: usize,
}

impl FilterGradient {
    /// The buffers for `kernel` (the split depends on its tile).
    fn alloc(gpu: &Arc<GpuDevice>, kernel: Kernel, g: &ConvGeometry) -> Result<FilterGradient> {
        FilterGradient::split(gpu, g, kernel.implicit_gemm().map(|k| k.tile))
    }

    /// The buffers for an implicit GEMM whose tile has `tile_rows` rows (`filter_splits`), or
    /// for an unsplit kernel (`None`: one slice, no workspace).
    pub(crate) fn split(gpu: &Arc<GpuDevice>, g: &ConvGeometry, tile_rows: Option<usize>) -> Result<FilterGradient> {
        let count = g.weight_shape().numel();
        let (splits, chunk) = tile_rows.map_or((1, 0), |rows| filter_splits(g, rows));
        let workspace = if splits > 1 { Some(gpu.alloc(DType::F32, count * splits)?) } else { None };
        Ok(FilterGradient { dw: gpu.alloc(DType::F32, count)?, workspace, splits, chunk })
    }

    /// The implicit GEMM over `groups`, and its share of the slices' reduction. `kernel(z)`
    /// makes the GEMM's launch with `z` blocks along grid z (groups × slices); `reduce` names
    /// the reduction kernel, with its last argument where it takes one (the tensor cores'
    /// precision, whose rounding it applies to the sum).
    pub(crate) fn implicit(
        &self,
        gpu: &GpuDevice,
        kernel: impl FnOnce(usize) -> Result<KernelCall>,
        (reduce, reduce_last): (&'static str, Option<i32>),
        (dy, x): (&GpuBuffer, &GpuBuffer),
        g: &ConvGeometry,
        Groups { first, count }: Groups,
    ) -> Result<()> {
        let (cg, og) = (g.c / g.groups(), g.o_per_group());
        let group_weights = og * g.k_per_group();
        let call = kernel(count * self.splits)?
            .buf_from(self.workspace.as_ref().unwrap_or(&self.dw), first * group_weights)?
            .buf_from(dy, first * og * g.out_pixels())?
            .buf_from(x, first * cg * g.h * g.w)?;
        let call = shape_args(call, g)?.i32(to_i32(OP, "slice length", self.chunk)?);
        gpu.launch(call.i32(to_i32(OP, "groups", count)?))?;
        let Some(ws) = &self.workspace else { return Ok(()) };
        let call = KernelCall::elementwise(reduce, count * group_weights)
            .buf_from(&self.dw, first * group_weights)?
            .buf_from(ws, first * group_weights)?
            .i64(to_i64(count * group_weights))
            .i64(to_i64(g.weight_shape().numel()))
            .i32(to_i32(OP, "slices", self.splits)?);
        gpu.launch(match reduce_last {
            Some(v) => call.i32(v),
            None => call,
        })
    }

    /// The FP32 implicit GEMM `k` over `groups`.
    fn implicit_f32(
        &self,
        gpu: &GpuDevice,
        k: &ImplicitGemmKernels,
        dy: &GpuBuffer,
        x: &GpuBuffer,
        g: &ConvGeometry,
        groups: Groups,
    ) -> Result<()> {
        let kernel = |z| tiles(k.filter, k.tile, g.k_per_group(), g.o_per_group(), z);
        self.implicit(gpu, kernel, ("conv2d_bwd_filter_reduce_f32", None), (dy, x), g, groups)
    }

    /// The launches with kernel `kernel` (whose buffers these are), into `dw`.
    fn launch(&self, gpu: &GpuDevice, kernel: Kernel, dy: &GpuBuffer, x: &GpuBuffer, g: &ConvGeometry) -> Result<()> {
        match kernel.implicit_gemm() {
            Some(k) => self.implicit_f32(gpu, k, dy, x, g, Groups::all(g)),
            None => {
                let count = g.weight_shape().numel();
                let call = KernelCall::elementwise("conv2d_bwd_filter_direct_f32", count).buf(&self.dw).buf(dy).buf(x);
                gpu.launch(shape_args(call, g)?)
            }
        }
    }
}

/// Runs `kernel` on its own buffers (the autotuner's timing and the plain path).
fn filter_gradient(
    gpu: &Arc<GpuDevice>,
    kernel: Kernel,
    dy: &GpuBuffer,
    x: &GpuBuffer,
    g: &ConvGeometry,
) -> Result<()> {
    FilterGradient::alloc(gpu, kernel, g)?.launch(gpu, kernel, dy, x, g)
}

pub(super) fn backward_filter(
    gpu: &Arc<GpuDevice>,
    exec: &ExecOptions,
    dy: &GpuBuffer,
    x: &GpuBuffer,
    g: &ConvGeometry,
) -> Result<GpuBuffer> {
    check_index_range(g)?;
    let kernel = choose(gpu, exec.conv_algo, "backward filter", g, |k| filter_gradient(gpu, k, dy, x, g))?;
    let grad = FilterGradient::alloc(gpu, kernel, g)?;
    grad.launch(gpu, kernel, dy, x, g)?;
    Ok(grad.dw)
}

/// The data and filter gradients (each only where wanted), with the kernels `exec` chooses.
/// Where both are implicit GEMMs of one tile engine and the layer splits into towers, the
/// groups run as towers (see the module's comment): tower t computes group t's share of dx
/// (its input channels) and of dW (its output channels) on side stream t + 1, so that one
/// tower's filter gradient can run beside the other's data gradient. Otherwise one launch
/// per kernel.
pub(super) fn backward_data_and_filter(
    gpu: &Arc<GpuDevice>,
    exec: &ExecOptions,
    dy: &GpuBuffer,
    x: &GpuBuffer,
    w: &GpuBuffer,
    (want_dx, want_dw): (bool, bool),
    g: &ConvGeometry,
) -> Result<(Option<GpuBuffer>, Option<GpuBuffer>)> {
    // Allocated on the main stream before any fork, so the towers only write into them.
    let dx = want_dx.then(|| gpu.alloc(DType::F32, g.in_shape().numel())).transpose()?;
    let data_kernel = match &dx {
        Some(dx) => Some(choose(gpu, exec.conv_algo, "backward data", g, |k| launch_data(gpu, k, dx, dy, w, g))?),
        None => None,
    };
    let filter_kernel = match want_dw {
        true => Some(choose(gpu, exec.conv_algo, "backward filter", g, |k| filter_gradient(gpu, k, dy, x, g))?),
        false => None,
    };
    let dw = filter_kernel.map(|k| FilterGradient::alloc(gpu, k, g)).transpose()?;
    let mut chosen = [data_kernel, filter_kernel].into_iter().flatten();
    let first = chosen.next();
    let one_kernel = first.filter(|&k| chosen.all(|other| other == k));
    match one_kernel.and_then(Kernel::implicit_gemm).filter(|_| splits_into_towers(exec, g)) {
        Some(k) => {
            gpu.on_streams(g.groups(), |t| {
                if let Some(dx) = &dx {
                    implicit_data(gpu, k, dx, dy, w, g, Groups::one(t))?;
                }
                match &dw {
                    Some(grad) => grad.implicit_f32(gpu, k, dy, x, g, Groups::one(t)),
                    None => Ok(()),
                }
            })?;
        }
        None => {
            if let (Some(dx), Some(kernel)) = (&dx, data_kernel) {
                launch_data(gpu, kernel, dx, dy, w, g)?;
            }
            if let (Some(grad), Some(kernel)) = (&dw, filter_kernel) {
                grad.launch(gpu, kernel, dy, x, g)?;
            }
        }
    }
    Ok((dx, dw.map(|grad| grad.dw)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::conv2d::Conv2dParams;
    use crate::tensor::Shape;

    #[test]
    fn filter_gradients_of_big_images_are_split_in_slices_of_eight() {
        let geo = |x: [usize; 4], w: [usize; 4], p| ConvGeometry::new(&Shape::from(x), &Shape::from(w), p).unwrap();
        // ResNet-50's first layer at batch 64: 64×147 weights (3 tiles), 802,816 positions.
        let g = geo([64, 3, 224, 224], [64, 3, 7, 7], Conv2dParams::default().stride(2).padding(3));
        let (splits, chunk) = filter_splits(&g, 64);
        assert!(splits > 50, "{splits}");
        assert_eq!(chunk % 8, 0);
        assert!(splits * chunk >= 64 * 112 * 112 && (splits - 1) * chunk < 64 * 112 * 112);
        // A layer with many weights and few positions needs no split.
        let g = geo([2, 512, 7, 7], [512, 512, 3, 3], Conv2dParams::default().padding(1));
        assert_eq!(filter_splits(&g, 64).0, 1);
        assert_eq!(filter_splits(&g, 128).0, 1);
        assert_eq!("implicit-gemm".parse::<ConvAlgo>().unwrap(), ConvAlgo::ImplicitGemm);
        assert!("winograd".parse::<ConvAlgo>().is_err());
    }

    #[test]
    fn batch_times_pixels_past_the_kernels_int_is_refused_before_any_launch() {
        let geo = |x: [usize; 4], w: [usize; 4]| {
            ConvGeometry::new(&Shape::from(x), &Shape::from(w), Conv2dParams::default().padding(1)).unwrap()
        };
        // 1024 images of 1500×1500 pixels: N·OH·OW = 2.3e9 > 2^31 − 1, though each factor fits.
        let e = check_index_range(&geo([1024, 1, 1500, 1500], [1, 1, 3, 3])).unwrap_err().to_string();
        assert!(e.contains("N·OH·OW") && e.contains("2304000000") && e.contains("32-bit"), "{e}");
        // One image fewer than the limit in pixels passes.
        check_index_range(&geo([954, 1, 1500, 1500], [1, 1, 3, 3])).unwrap();
    }
}
