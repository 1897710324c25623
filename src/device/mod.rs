//! Devices: where a tensor's memory lives and where its ops run.
//!
//! | device | what runs | memory |
//! |---|---|---|
//! | `cpu` | the Rust reference ops (rayon) | host `Vec`s |
//! | `cuda[:N]` | the kernels of `kernels/*.cu`, compiled by nvcc, embedded as a fatbin | GPU memory, through a caching allocator |
//! | `emu` | the same kernel sources compiled as C++ and run on the CPU by the emulator | host memory, through the same allocator |
//!
//! `cuda` and `emu` share one host-side path ([`gpu`]): buffers, the allocator, argument
//! packing and checking, launch dimensions, side streams ([`streams`]). They differ only in
//! their [`gpu::Backend`].

mod arg_kind;
pub mod collective;
pub mod cpu;
pub mod cuda;
pub mod emu;
pub mod gpu;
pub mod host_memory;
pub mod kernels;
pub mod nccl;
pub mod streams;

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::{Error, Result};
pub use cpu::CpuStorage;
pub use gpu::{CapturedGraph, GpuBuffer, GpuDevice, GpuEvent};

/// Where a tensor lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Device {
    /// Host memory; ops run the Rust reference implementations, parallel with rayon.
    Cpu,
    /// An NVIDIA GPU, by ordinal.
    Cuda(usize),
    /// The CUDA kernels, emulated on the CPU, by ordinal: each emulated device has its own
    /// memory (allocator), streams and launch lock, so several of them stand in for several
    /// GPUs in one process. `emu` is `emu:0`.
    Emu(usize),
}

/// How many emulated devices a process may open (`emu:0` to `emu:7`): enough for any test
/// of several devices, few enough that a typo is an error.
pub const MAX_EMU_DEVICES: usize = 8;

impl Device {
    /// What `--device auto` means on this machine: `cuda:0` if it opens (the driver, the
    /// GPU and the kernels all work together), else `cpu`.
    pub fn best_available() -> Device {
        if cuda::check(0).is_ok() && cuda::device(0).is_ok() { Device::Cuda(0) } else { Device::Cpu }
    }

    /// The GPU-like device behind `cuda:N` or `emu:N`, opened on first use; `None` for the CPU.
    pub fn gpu(&self) -> Result<Option<Arc<GpuDevice>>> {
        match self {
            Device::Cpu => Ok(None),
            Device::Cuda(n) => cuda::device(*n).map(Some),
            Device::Emu(n) => emu::device_at(*n).map(Some),
        }
    }

    pub fn is_cpu(&self) -> bool {
        matches!(self, Device::Cpu)
    }

    /// Whether this is one of the emulated devices.
    pub fn is_emu(&self) -> bool {
        matches!(self, Device::Emu(_))
    }

    /// The devices of a `--devices` list, comma-separated (`cuda:0,cuda:1`, `emu:0,emu:1`):
    /// at least two, all different, all of one kind (CUDA or emulated), each usable.
    pub fn parse_list(list: &str) -> Result<Vec<Device>> {
        let devices = list.split(',').map(|d| d.trim().parse::<Device>()).collect::<Result<Vec<Device>>>()?;
        if devices.len() < 2 {
            return Err(Error::Device(format!(
                "--devices {list}: name two devices or more, such as cuda:0,cuda:1 or emu:0,emu:1 (one device is --device)"
            )));
        }
        for (i, d) in devices.iter().enumerate() {
            if devices[..i].contains(d) {
                return Err(Error::Device(format!("--devices {list}: {d} is named twice")));
            }
            if d.is_cpu() {
                return Err(Error::Device(format!(
                    "--devices {list}: cpu is one device; several devices are cuda:N or emu:N"
                )));
            }
            if d.is_emu() != devices[0].is_emu() {
                return Err(Error::Device(format!(
                    "--devices {list}: mixes CUDA and emulated devices; name devices of one kind"
                )));
            }
        }
        Ok(devices)
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
            Device::Emu(0) => f.write_str("emu"),
            Device::Emu(n) => write!(f, "emu:{n}"),
        }
    }
}

impl FromStr for Device {
    type Err = Error;

    /// Parses the `--device` flag: `auto`, `cpu`, `emu[:N]`, `cuda` or `cuda:N`. A CUDA device
    /// that cannot be used is an error that says why (no driver, no GPU, no kernels).
    fn from_str(s: &str) -> Result<Device> {
        let device = match s {
            "auto" => return Ok(Device::best_available()),
            "cpu" => Device::Cpu,
            "emu" => Device::Emu(0),
            "cuda" => Device::Cuda(0),
            other => {
                let ordinal = |prefix: &str| other.strip_prefix(prefix).and_then(|n| n.parse::<usize>().ok());
                match (ordinal("cuda:"), ordinal("emu:")) {
                    (Some(n), _) => Device::Cuda(n),
                    (_, Some(n)) if n < MAX_EMU_DEVICES => Device::Emu(n),
                    (_, Some(_)) => {
                        return Err(Error::Device(format!(
                            "{other}: the emulator offers emu:0 to emu:{} ({MAX_EMU_DEVICES} devices)",
                            MAX_EMU_DEVICES - 1
                        )));
                    }
                    _ => {
                        return Err(Error::Device(format!(
                            "unknown device '{other}' (expected auto, cpu, emu, emu:N, cuda or cuda:N)"
                        )));
                    }
                }
            }
        };
        if let Device::Cuda(n) = device {
            cuda::check(n).map_err(|why| Error::Device(format!("cuda:{n} is not usable: {why}")))?;
        }
        Ok(device)
    }
}

/// Whether a GPU device opened now caches freed memory: yes, unless `SCRATCHNET_NO_CACHE=1`
/// asks for the allocator without a cache (exact sizes, every free back to the device) that
/// compute-sanitizer's memcheck needs to see overruns and uses after free. Read once per
/// device, when it is opened, like `SCRATCHNET_CUDA_SYNC`.
pub(crate) fn cache_requested() -> bool {
    !std::env::var("SCRATCHNET_NO_CACHE").is_ok_and(|v| v == "1")
}

static POISON: AtomicBool = AtomicBool::new(false);

/// Fill every new GPU or emulator buffer with 0xFF bytes (NaN) before a kernel writes it, so
/// that an element a kernel fails to write cannot pass a comparison. The parity tests and
/// `selftest` turn this on.
pub fn poison_new_buffers(on: bool) {
    POISON.store(on, Ordering::Relaxed);
}

pub(crate) fn poisoning() -> bool {
    POISON.load(Ordering::Relaxed)
}

/// The memory behind a tensor.
#[derive(Debug)]
pub enum Storage {
    Cpu(CpuStorage),
    /// On a CUDA GPU or the emulator.
    Gpu(GpuBuffer),
}

impl Storage {
    pub fn device(&self) -> Device {
        match self {
            Storage::Cpu(_) => Device::Cpu,
            Storage::Gpu(b) => b.gpu().device(),
        }
    }

    pub fn dtype(&self) -> crate::tensor::DType {
        match self {
            Storage::Cpu(s) => s.dtype(),
            Storage::Gpu(b) => b.dtype(),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Storage::Cpu(s) => s.len(),
            Storage::Gpu(b) => b.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A copy on the same device.
    pub fn try_clone(&self) -> Result<Storage> {
        Ok(match self {
            Storage::Cpu(s) => Storage::Cpu(s.try_clone()?),
            Storage::Gpu(b) => Storage::Gpu(b.gpu().duplicate(b)?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_device_names() {
        assert_eq!("cpu".parse::<Device>().unwrap(), Device::Cpu);
        assert_eq!("emu".parse::<Device>().unwrap(), Device::Emu(0));
        assert_eq!("emu:1".parse::<Device>().unwrap(), Device::Emu(1));
        assert_eq!(Device::Emu(0).to_string(), "emu");
        assert_eq!(Device::Emu(3).to_string(), "emu:3");
        assert!("emu:8".parse::<Device>().unwrap_err().to_string().contains("emu:0 to emu:7"));
        assert_eq!(Device::parse_list("emu:0,emu:1").unwrap(), vec![Device::Emu(0), Device::Emu(1)]);
        for (list, why) in [
            ("emu:0", "two devices or more"),
            ("emu:0,emu", "named twice"),
            ("emu:0,cpu", "cpu is one device"),
            ("cpu,emu:1", "cpu is one device"),
            ("emu:0,gpu:1", "unknown device 'gpu:1'"),
        ] {
            let e = Device::parse_list(list).unwrap_err().to_string();
            assert!(e.contains(why), "{list}: {e}");
        }
        let err = "tpu".parse::<Device>().unwrap_err().to_string();
        assert!(err.contains("unknown device 'tpu'"), "{err}");
        assert!("cuda:x".parse::<Device>().is_err());
        // Whether cuda works depends on the machine; it must never panic.
        match "cuda:0".parse::<Device>() {
            Ok(d) => assert_eq!(d, Device::Cuda(0)),
            Err(e) => assert!(e.to_string().starts_with("device: cuda:0 is not usable: "), "{e}"),
        }
        assert_eq!(Device::Cuda(1).to_string(), "cuda:1");
    }
}
