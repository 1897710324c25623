//! The host side of kernels/channel_reduce.cuh: per-channel sums over an N×C×HW tensor
//! spread over many blocks, as the fused batch norms (statistics and gradient sums) and the
//! ReLU backward with its bias gradient compute them on a GPU.
//!
//! Each channel's `M = N·HW` values are cut into `S` slices of `chunk` consecutive values;
//! the op's partial kernel, launched on an (S, C) grid, writes `K` sums per slice into
//! `partial[(c·S + s)·K + k]` (f64), and a second kernel adds each channel's `S` partial
//! sums in slice order ([`ChannelReduction::finalize`], or the op's own finalize where it
//! needs more than the sums, as the batch statistics do). This file sizes the slices,
//! allocates the partial sums and launches both passes, with the argument order the kernels
//! share: the op's own arguments, then `N, C, HW, chunk`.

use std::sync::Arc;

use crate::device::GpuDevice;
use crate::device::gpu::{GpuBuffer, KernelCall, to_i32, to_i64};
use crate::error::{Error, Result};
use crate::tensor::DType;

/// The most channels one launch handles: the grid's y dimension.
const MAX_CHANNELS: usize = 65_535;

/// How a per-channel sum over `n·hw` values per channel is cut: `(slices, chunk)`, with
/// `chunk` a multiple of 4. Enough slices that the grid has about a thousand blocks, but
/// none shorter than 2,048 values.
pub(crate) fn channel_slices(n: usize, c: usize, hw: usize) -> (usize, usize) {
    let m = (n * hw).max(1);
    let wanted = 1024usize.div_ceil(c.max(1)).min(m.div_ceil(2048)).clamp(1, 256);
    let chunk = m.div_ceil(wanted).div_ceil(4) * 4;
    (m.div_ceil(chunk), chunk)
}

/// One per-channel reduction of `K` sums per slice, with its buffer of partial sums.
pub(crate) struct ChannelReduction {
    op: &'static str,
    n: usize,
    c: usize,
    hw: usize,
    slices: usize,
    chunk: usize,
    sums: usize,
    partial: GpuBuffer,
}

impl ChannelReduction {
    /// Sizes the slices of an N×C×HW tensor and allocates `sums` f64 partial sums per slice
    /// and channel. `op` names the op in errors.
    pub(crate) fn new(
        gpu: &Arc<GpuDevice>,
        op: &'static str,
        (n, c, hw): (usize, usize, usize),
        sums: usize,
    ) -> Result<Self> {
        if c > MAX_CHANNELS {
            return Err(Error::argument(op, format!("{c} channels are more than one launch handles (65,535)")));
        }
        let (slices, chunk) = channel_slices(n, c, hw);
        let partial = gpu.alloc(DType::F64, sums * slices * c)?;
        Ok(ChannelReduction { op, n, c, hw, slices, chunk, sums, partial })
    }

    /// The slices per channel, `S`.
    pub(crate) fn slices(&self) -> usize {
        self.slices
    }

    /// The partial sums, `[C, S, K]`.
    pub(crate) fn partial(&self) -> &GpuBuffer {
        &self.partial
    }

    /// The first pass: kernel `name` on a grid of (S, C) blocks of 256 threads. `args` adds
    /// the kernel's own arguments (the partial sums among them, where the kernel takes them);
    /// then come `N, C, HW, chunk`.
    pub(crate) fn launch_partials(
        &self,
        gpu: &GpuDevice,
        name: &'static str,
        args: impl FnOnce(KernelCall) -> KernelCall,
    ) -> Result<()> {
        let call = KernelCall::new(name).grid(self.slices as u32, self.c as u32, 1).block(256, 1, 1);
        gpu.launch(
            args(call)
                .i32(to_i32(self.op, "batch", self.n)?)
                .i32(to_i32(self.op, "channels", self.c)?)
                .i64(to_i64(self.hw))
                .i64(to_i64(self.chunk)),
        )
    }

    /// The second pass (`channel_partials_finalize_f32`): each channel's first sum, added
    /// over the slices in order, into `out0`, and the second, if wanted, into `out1`.
    pub(crate) fn finalize(&self, gpu: &GpuDevice, out0: &GpuBuffer, out1: Option<&GpuBuffer>) -> Result<()> {
        gpu.launch(
            KernelCall::elementwise("channel_partials_finalize_f32", self.c)
                .buf(out0)
                .buf_or_null(out1)
                .buf(&self.partial)
                .i32(to_i32(self.op, "channels", self.c)?)
                .i32(to_i32(self.op, "slices", self.slices)?)
                .i32(self.sums as i32),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_cover_each_channel_in_chunks_of_four() {
        for (n, c, hw) in [(64, 64, 112 * 112), (2, 2048, 49), (1, 3, 5), (8, 16, 1), (64, 1000, 1)] {
            let (s, chunk) = channel_slices(n, c, hw);
            assert_eq!(chunk % 4, 0);
            assert!((1..=256).contains(&s));
            assert!(s * chunk >= n * hw && (s - 1) * chunk < n * hw, "{n} {c} {hw}: {s} × {chunk}");
        }
        // A few large channels are cut into many slices; many small ones are not cut.
        assert!(channel_slices(64, 64, 112 * 112).0 >= 16);
        assert_eq!(channel_slices(64, 2048, 49).0, 1);
    }

    #[test]
    fn too_many_channels_for_one_grid_is_an_error() {
        let gpu = crate::device::Device::Emu(0).gpu().unwrap().unwrap();
        let e = ChannelReduction::new(&gpu, "bias + relu", (1, 70_000, 1), 1).err().unwrap().to_string();
        assert!(e.contains("70000 channels are more than one launch handles"), "{e}");
        let r = ChannelReduction::new(&gpu, "bias + relu", (2, 3, 5000), 2).unwrap();
        assert_eq!((r.slices(), r.partial().len()), (5, 2 * 5 * 3));
    }
}
