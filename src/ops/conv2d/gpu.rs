//! conv2d on `cuda` and `emu`: which kernel variant runs, and the launches.
//!
//! Two variants of each direction live in kernels/conv2d.cu:
//!
//! - **direct**: one thread per output value, straight from global memory. The plain version
//!   to read first, and the one every fast variant is compared with.
//! - **implicit GEMM**: the product of the CPU reference's im2col + GEMM, computed in 64×64
//!   register-blocked tiles (kernels/tile_gemm.cuh) without ever writing the im2col matrix.
//!
//! `--conv-algo` (or `SCRATCHNET_CONV_ALGO`) chooses: `direct`, `implicit-gemm`, or `auto`
//! (the default), which times both the first time each shape runs on a GPU and keeps the
//! faster ([`crate::ops::autotune`]).
//!
//! **Towers** (`--towers`, or `SCRATCHNET_TOWERS=1`): AlexNet's grouped convolutions were the
//! paper's two GPUs, each computing the group of channels it held. With towers on, each group
//! of a grouped convolution runs on its own side stream ([`GpuDevice::on_streams`]), so the
//! GPU can run the two halves side by side, forward and backward, where one launch would run
//! them as one grid. A tower is the implicit-GEMM kernel launched one group deep, with
//! pointers that start at its group's channels: the same arithmetic in the same order as the
//! single launch, so the results are the same to the bit. (The direct kernels cover all
//! groups in one grid-stride loop; with `--conv-algo direct` the groups run as one launch.)

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use crate::device::streams::SIDE_STREAMS;

use super::{ConvGeometry, OP};
use crate::device::GpuDevice;
use crate::device::gpu::{GpuBuffer, KernelCall, to_i32, to_i64};
use crate::error::{Error, Result};
use crate::ops::autotune;
use crate::tensor::DType;

/// How the convolution kernels are chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvAlgo {
    Direct,
    ImplicitGemm,
    /// Time both on first use of a shape (GPU), or take implicit GEMM (emulator).
    Auto,
}

impl std::str::FromStr for ConvAlgo {
    type Err = Error;
    fn from_str(s: &str) -> Result<ConvAlgo> {
        match s {
            "direct" => Ok(ConvAlgo::Direct),
            "implicit-gemm" => Ok(ConvAlgo::ImplicitGemm),
            "auto" => Ok(ConvAlgo::Auto),
            other => Err(Error::argument("--conv-algo", format!("'{other}' is not direct, implicit-gemm or auto"))),
        }
    }
}

/// 0: not set yet (read the environment); then 1 + the variant's index.
static ALGO: AtomicU8 = AtomicU8::new(0);
const ALGOS: [ConvAlgo; 3] = [ConvAlgo::Direct, ConvAlgo::ImplicitGemm, ConvAlgo::Auto];

/// Sets the variant for every later convolution in the process.
pub fn set_conv_algo(a: ConvAlgo) {
    let index = ALGOS.iter().position(|&x| x == a).unwrap_or(2);
    ALGO.store(index as u8 + 1, Ordering::Relaxed);
}

/// The variant in force: as set, else `SCRATCHNET_CONV_ALGO`, else `auto`.
pub fn conv_algo() -> ConvAlgo {
    match ALGO.load(Ordering::Relaxed) {
        0 => {
            let a = std::env::var("SCRATCHNET_CONV_ALGO").ok().and_then(|s| s.parse().ok()).unwrap_or(ConvAlgo::Auto);
            set_conv_algo(a);
            a
        }
        i => ALGOS[(i - 1) as usize],
    }
}

/// 0: not set yet (read the environment); 1: off; 2: on.
static TOWERS: AtomicU8 = AtomicU8::new(0);

/// Whether every later grouped convolution runs each group on its own stream.
pub fn set_towers(on: bool) {
    TOWERS.store(1 + on as u8, Ordering::Relaxed);
}

/// Towers as set, else `SCRATCHNET_TOWERS=1`, else off.
pub fn towers() -> bool {
    match TOWERS.load(Ordering::Relaxed) {
        0 => {
            let on = std::env::var("SCRATCHNET_TOWERS").is_ok_and(|v| v == "1");
            set_towers(on);
            on
        }
        v => v == 2,
    }
}

/// Whether this convolution runs as towers: towers on, a grouped layer with no more groups
/// than side streams, and the implicit-GEMM kernels.
fn as_towers(algo: ConvAlgo, g: &ConvGeometry) -> bool {
    towers() && algo != ConvAlgo::Direct && (2..=SIDE_STREAMS).contains(&g.groups())
}

/// A variant that actually runs (what `Auto` resolves to).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kernel {
    Direct,
    ImplicitGemm,
}

impl Kernel {
    fn name(self) -> &'static str {
        match self {
            Kernel::Direct => "direct",
            Kernel::ImplicitGemm => "implicit-gemm",
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
    let kernel = match algo {
        ConvAlgo::Direct => Kernel::Direct,
        ConvAlgo::ImplicitGemm => Kernel::ImplicitGemm,
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
            autotune::pick(gpu, &problem, &[Kernel::Direct, Kernel::ImplicitGemm], Kernel::name, &launch)?
        }
    };
    launch(kernel)
}

/// Appends the sixteen shape arguments every conv2d kernel takes, in their order.
fn shape_args(call: KernelCall, g: &ConvGeometry) -> Result<KernelCall> {
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

/// The launch of a 64×64-tile implicit GEMM: `cols` columns and `rows` rows of C per group,
/// `z` blocks deep.
fn tiles(name: &'static str, cols: usize, rows: usize, z: usize) -> Result<KernelCall> {
    let count = |n: usize, what: &str| {
        u32::try_from(n).map_err(|_| Error::argument(OP, format!("{n} {what} are too many for one launch")))
    };
    Ok(KernelCall::new(name)
        .grid(count(cols.div_ceil(64), "column tiles")?, count(rows.div_ceil(64), "row tiles")?, count(z, "groups")?)
        .block(256, 1, 1))
}

/// `conv(x, w) + bias`, then ReLU when `relu` is set: fused into the implicit GEMM's
/// epilogue, or a separate in-place pass after the direct kernel.
pub(super) fn forward(
    gpu: &Arc<GpuDevice>,
    algo: ConvAlgo,
    x: &GpuBuffer,
    w: &GpuBuffer,
    bias: Option<&GpuBuffer>,
    relu: bool,
    g: &ConvGeometry,
) -> Result<GpuBuffer> {
    let count = g.out_shape().numel();
    let y = gpu.alloc(DType::F32, count)?;
    if as_towers(algo, g) {
        let (cg, og) = (g.c / g.groups(), g.o_per_group());
        gpu.on_streams(g.groups(), |t| {
            let call = tiles("conv2d_fwd_implicit_gemm_f32", g.n * g.out_pixels(), og, 1)?
                .buf_from(&y, t * og * g.out_pixels())?
                .buf_from(x, t * cg * g.h * g.w)?
                .buf_from(w, t * og * g.k_per_group())?;
            let call = match bias {
                Some(b) => call.buf_from(b, t * og)?,
                None => call.buf_or_null(None),
            };
            gpu.launch(shape_args(call, g)?.i32(relu as i32))
        })?;
        return Ok(y);
    }
    let problem = if relu { "forward+relu" } else { "forward" };
    run(gpu, algo, problem, g, |kernel| match kernel {
        Kernel::Direct => {
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
        Kernel::ImplicitGemm => {
            let call = tiles("conv2d_fwd_implicit_gemm_f32", g.n * g.out_pixels(), g.o_per_group(), g.groups())?;
            gpu.launch(shape_args(call.buf(&y).buf(x).buf(w).buf_or_null(bias), g)?.i32(relu as i32))
        }
    })?;
    Ok(y)
}

pub(super) fn backward_data(
    gpu: &Arc<GpuDevice>,
    algo: ConvAlgo,
    dy: &GpuBuffer,
    w: &GpuBuffer,
    g: &ConvGeometry,
) -> Result<GpuBuffer> {
    let dx = gpu.alloc(DType::F32, g.in_shape().numel())?;
    run(gpu, algo, "backward data", g, |kernel| {
        let call = match kernel {
            Kernel::Direct => KernelCall::elementwise("conv2d_bwd_data_direct_f32", g.in_shape().numel()),
            Kernel::ImplicitGemm => {
                tiles("conv2d_bwd_data_implicit_gemm_f32", g.n * g.h * g.w, g.c / g.groups(), g.groups())?
            }
        };
        gpu.launch(shape_args(call.buf(&dx).buf(dy).buf(w), g)?)
    })?;
    Ok(dx)
}

/// How many slices the filter gradient's shared dimension (N·OH·OW) is cut into: enough
/// blocks to fill a large GPU twice over (about 256), each slice at least 256 long.
fn filter_splits(g: &ConvGeometry) -> (usize, usize) {
    let k = g.n * g.out_pixels();
    let tiles = g.k_per_group().div_ceil(64) * g.o_per_group().div_ceil(64) * g.groups();
    let wanted = 256usize.div_ceil(tiles.max(1)).clamp(1, (k / 256).max(1));
    let chunk = k.div_ceil(wanted).div_ceil(8) * 8;
    (k.div_ceil(chunk.max(1)).max(1), chunk.max(8))
}

pub(super) fn backward_filter(
    gpu: &Arc<GpuDevice>,
    algo: ConvAlgo,
    dy: &GpuBuffer,
    x: &GpuBuffer,
    g: &ConvGeometry,
) -> Result<GpuBuffer> {
    let count = g.weight_shape().numel();
    let dw = gpu.alloc(DType::F32, count)?;
    let (splits, chunk) = filter_splits(g);
    let workspace = if splits > 1 { Some(gpu.alloc(DType::F32, count * splits)?) } else { None };
    run(gpu, algo, "backward filter", g, |kernel| match kernel {
        Kernel::Direct => {
            let call = KernelCall::elementwise("conv2d_bwd_filter_direct_f32", count).buf(&dw).buf(dy).buf(x);
            gpu.launch(shape_args(call, g)?)
        }
        Kernel::ImplicitGemm => {
            let call =
                tiles("conv2d_bwd_filter_implicit_gemm_f32", g.k_per_group(), g.o_per_group(), g.groups() * splits)?;
            let call = shape_args(call.buf(workspace.as_ref().unwrap_or(&dw)).buf(dy).buf(x), g)?;
            gpu.launch(call.i32(to_i32(OP, "slice length", chunk)?).i32(to_i32(OP, "groups", g.groups())?))?;
            match &workspace {
                Some(ws) => gpu.launch(
                    KernelCall::elementwise("conv2d_bwd_filter_reduce_f32", count)
                        .buf(&dw)
                        .buf(ws)
                        .i64(to_i64(count))
                        .i64(to_i64(count))
                        .i32(to_i32(OP, "slices", splits)?),
                ),
                None => Ok(()),
            }
        }
    })?;
    Ok(dw)
}

/// Both gradients of a convolution run as towers (see the module's comment): tower t
/// computes group t's share of dx (its input channels) and of dW (its output channels) on
/// side stream t + 1, so each tower's data and filter gradients also follow one another
/// without waiting for the other tower. `None` where a gradient is not wanted.
pub(super) fn backward_towers(
    gpu: &Arc<GpuDevice>,
    dy: &GpuBuffer,
    x: &GpuBuffer,
    w: &GpuBuffer,
    (want_dx, want_dw): (bool, bool),
    g: &ConvGeometry,
) -> Result<(Option<GpuBuffer>, Option<GpuBuffer>)> {
    let (cg, og) = (g.c / g.groups(), g.o_per_group());
    let (in_plane, out_plane) = (g.h * g.w, g.out_pixels());
    let count = g.weight_shape().numel();
    let group_weights = og * g.k_per_group();
    // Allocated on the main stream before the fork, so the towers only write into them.
    let dx = want_dx.then(|| gpu.alloc(DType::F32, g.in_shape().numel())).transpose()?;
    let dw = want_dw.then(|| gpu.alloc(DType::F32, count)).transpose()?;
    let (splits, chunk) = filter_splits(g);
    let workspace = if want_dw && splits > 1 { Some(gpu.alloc(DType::F32, count * splits)?) } else { None };
    gpu.on_streams(g.groups(), |t| {
        if let Some(dx) = &dx {
            let call = tiles("conv2d_bwd_data_implicit_gemm_f32", g.n * in_plane, cg, 1)?
                .buf_from(dx, t * cg * in_plane)?
                .buf_from(dy, t * og * out_plane)?
                .buf_from(w, t * group_weights)?;
            gpu.launch(shape_args(call, g)?)?;
        }
        if let Some(dw) = &dw {
            let call = tiles("conv2d_bwd_filter_implicit_gemm_f32", g.k_per_group(), og, splits)?
                .buf_from(workspace.as_ref().unwrap_or(dw), t * group_weights)?
                .buf_from(dy, t * og * out_plane)?
                .buf_from(x, t * cg * in_plane)?;
            gpu.launch(shape_args(call, g)?.i32(to_i32(OP, "slice length", chunk)?).i32(1))?;
            if let Some(ws) = &workspace {
                gpu.launch(
                    KernelCall::elementwise("conv2d_bwd_filter_reduce_f32", group_weights)
                        .buf_from(dw, t * group_weights)?
                        .buf_from(ws, t * group_weights)?
                        .i64(to_i64(group_weights))
                        .i64(to_i64(count))
                        .i32(to_i32(OP, "slices", splits)?),
                )?;
            }
        }
        Ok(())
    })?;
    Ok((dx, dw))
}

/// Whether [`backward_towers`] applies to this convolution.
pub(super) fn backward_as_towers(algo: ConvAlgo, g: &ConvGeometry) -> bool {
    as_towers(algo, g)
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
        let (splits, chunk) = filter_splits(&g);
        assert!(splits > 50, "{splits}");
        assert_eq!(chunk % 8, 0);
        assert!(splits * chunk >= 64 * 112 * 112 && (splits - 1) * chunk < 64 * 112 * 112);
        // A layer with many weights and few positions needs no split.
        let g = geo([2, 512, 7, 7], [512, 512, 3, 3], Conv2dParams::default().padding(1));
        assert_eq!(filter_splits(&g).0, 1);
        assert_eq!("implicit-gemm".parse::<ConvAlgo>().unwrap(), ConvAlgo::ImplicitGemm);
        assert!("winograd".parse::<ConvAlgo>().is_err());
    }
}
