//! What the tensor-core kernels of the convolutions and the matrix products share: the tile
//! configurations of their engine (kernels/tc_gemm.cuh), the check that the GPU has tensor
//! cores, and how a precision picks a kernel. The kernels run when `--precision` is tf32,
//! bf16 or fp16 on `cuda` (compute capability 8.0 or newer) and on `emu`; see
//! `conv2d_tc.rs` and `gemm_tc.rs`, named like their kernel files.

use crate::device::GpuDevice;
use crate::error::{Error, Result};
use crate::ops::precision::Precision;

/// A block tile of the tensor-core engine: rows of C × columns of C per block of 256
/// threads. For a convolution the rows are channels (output channels forward and for the
/// filter gradient, input channels for the data gradient), the columns pixels or weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcTile {
    /// 64×64, eight warp tiles of 32×16 (2×2 mma tiles each).
    T64,
    /// 128×64, eight warp tiles of 32×32 (2×4 mma tiles each): fewer shared-memory loads per
    /// mma and per output, for large products; more work wasted on the edges of small ones.
    T128,
}

impl TcTile {
    /// Both, in the order the autotuner tries them; the last is the emulator's pick.
    pub const ALL: [TcTile; 2] = [TcTile::T128, TcTile::T64];

    /// The configuration's name in kernel names (`conv2d_fwd_tc64_bf16`) and in the
    /// autotuner's cache.
    pub fn name(self) -> &'static str {
        match self {
            TcTile::T64 => "tc64",
            TcTile::T128 => "tc128",
        }
    }

    /// Rows of C per block.
    pub fn rows(self) -> usize {
        match self {
            TcTile::T64 => 64,
            TcTile::T128 => 128,
        }
    }

    /// Columns of C per block.
    pub fn cols(self) -> usize {
        64
    }

    /// The row of the configuration in the kernel-name tables.
    pub(crate) fn index(self) -> usize {
        match self {
            TcTile::T64 => 0,
            TcTile::T128 => 1,
        }
    }
}

/// Refuses, in one line, a tensor-core launch on a GPU older than compute capability 8.0:
/// TF32 and BF16 tensor cores start with Ampere, and the fatbin's sm_75 code for these
/// kernels traps.
pub(crate) fn require_tensor_cores(gpu: &GpuDevice, precision: Precision) -> Result<()> {
    check_capability(&gpu.name(), gpu.compute_capability(), precision)
}

/// [`require_tensor_cores`] for a GPU called `name` of compute capability `cc` (`None`: the
/// emulator, which has tensor cores).
fn check_capability(name: &str, cc: Option<(i32, i32)>, precision: Precision) -> Result<()> {
    match cc {
        Some((major, minor)) if major < 8 => Err(Error::argument(
            "--precision",
            format!(
                "{precision} runs on tensor cores, which need compute capability 8.0 or newer; {name} is \
                 {major}.{minor} (use --precision fp32)"
            ),
        )),
        _ => Ok(()),
    }
}

/// The column of a low precision in the kernel-name tables (tf32, bf16, fp16).
pub(crate) fn precision_index(op: &'static str, p: Precision) -> Result<usize> {
    match p {
        Precision::Tf32 => Ok(0),
        Precision::Bf16 => Ok(1),
        Precision::Fp16 => Ok(2),
        Precision::Fp32 => Err(Error::argument(op, "the tensor-core kernels have no FP32 variant")),
    }
}

/// The precision's code in the kernels' `precision` arguments: its index in
/// [`Precision::ALL`] (1 TF32, 2 BF16, 3 FP16), as `round_precision_f32` takes it.
pub(crate) fn precision_code(p: Precision) -> i32 {
    Precision::ALL.iter().position(|&q| q == p).unwrap_or(0) as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpus_before_ampere_are_refused_in_one_line() {
        let e = check_capability("Tesla T4", Some((7, 5)), Precision::Bf16).unwrap_err().to_string();
        assert!(e.contains("bf16") && e.contains("8.0") && e.contains("Tesla T4 is 7.5") && !e.contains('\n'), "{e}");
        assert!(check_capability("A100", Some((8, 0)), Precision::Tf32).is_ok());
        assert!(check_capability("H100", Some((9, 0)), Precision::Fp16).is_ok());
        assert!(check_capability("emu", None, Precision::Bf16).is_ok());
    }
}
