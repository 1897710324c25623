//! What a bench run is asked to do ([`BenchOptions`]): the device, the suites, the sizes and
//! how long to time, with the defaults each kind of device gets and the checks on what the
//! command line gave. Apart from the run itself so that the knobs can be read in one place.

use super::Suite;
use crate::device::Device;
use crate::error::{Error, Result};
use crate::ops::ExecOptions;

/// What to run and how long.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    pub device: Device,
    pub suites: Vec<Suite>,
    /// Images per batch of the network suites (default: 64 on cuda, 2 on cpu, 1 on emu).
    pub batch: Option<usize>,
    /// Megabytes per tensor of the memory suite and of the copy ceiling (default: 256 on
    /// cuda, 64 on cpu, 1 on emu).
    pub size_mb: Option<usize>,
    /// Side of the square SGEMM (default: 4096 on cuda, 1024 on cpu, 64 on emu).
    pub gemm_size: Option<usize>,
    /// Keep only problems whose label contains this text.
    pub filter: Option<String>,
    /// Time every kernel variant, not only the engine's default.
    pub all_variants: bool,
    /// Timed runs at least (default: 10 on cuda, 3 elsewhere).
    pub repeats: Option<usize>,
    /// Time a whole training step of each network suite.
    pub train_steps: bool,
    /// The kernels the default variant runs (`--conv-algo`, `--towers`, `--no-fuse`).
    pub exec: ExecOptions,
}

impl BenchOptions {
    pub fn new(device: Device) -> BenchOptions {
        BenchOptions {
            device,
            suites: Suite::ALL.to_vec(),
            batch: None,
            size_mb: None,
            gemm_size: None,
            filter: None,
            all_variants: false,
            repeats: None,
            train_steps: true,
            exec: ExecOptions::default(),
        }
    }

    pub(super) fn by_device<T>(&self, cuda: T, cpu: T, emu: T) -> T {
        match self.device {
            Device::Cuda(_) => cuda,
            Device::Cpu => cpu,
            Device::Emu(_) => emu,
        }
    }

    pub fn batch(&self) -> usize {
        self.batch.unwrap_or(self.by_device(64, 2, 1))
    }

    pub(super) fn size_bytes(&self) -> usize {
        self.size_mb.unwrap_or(self.by_device(256, 64, 1)) << 20
    }

    pub(super) fn gemm_size(&self) -> usize {
        self.gemm_size.unwrap_or(self.by_device(4096, 1024, 64))
    }

    pub(super) fn repeats(&self) -> usize {
        self.repeats.unwrap_or(self.by_device(10, 3, 1))
    }

    pub(super) fn check(&self) -> Result<()> {
        let bad = |what: String| Err(Error::argument("bench", what));
        if self.batch == Some(0) || self.batch.is_some_and(|b| b > 4096) {
            return bad(format!("--batch must be between 1 and 4096, got {}", self.batch.unwrap_or(0)));
        }
        if self.size_mb == Some(0) || self.size_mb.is_some_and(|s| s > 16384) {
            return bad(format!("--size-mb must be between 1 and 16384, got {}", self.size_mb.unwrap_or(0)));
        }
        if self.gemm_size == Some(0) || self.gemm_size.is_some_and(|s| s > 32768) {
            return bad(format!("--gemm-size must be between 1 and 32768, got {}", self.gemm_size.unwrap_or(0)));
        }
        if self.repeats == Some(0) || self.repeats.is_some_and(|r| r > 100_000) {
            return bad(format!("--repeats must be between 1 and 100000, got {}", self.repeats.unwrap_or(0)));
        }
        if self.suites.is_empty() {
            return bad("no suite to run".into());
        }
        Ok(())
    }
}
