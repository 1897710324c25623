//! Devices: where a tensor's memory lives and where its ops run.
//!
//! Only the host exists in this build. Every op dispatches on [`Storage`], so the CUDA device
//! and the emulator (which runs the CUDA kernel sources on the CPU) each become one more
//! variant here and one more match arm in each op, with no change to the layers above.

pub mod cpu;

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};
pub use cpu::CpuStorage;

/// Where a tensor lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Device {
    /// Host memory; ops run the Rust reference implementations, parallel with rayon.
    Cpu,
}

impl Device {
    /// What `--device auto` means on this machine: the best usable device.
    pub fn best_available() -> Device {
        Device::Cpu
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
        }
    }
}

impl FromStr for Device {
    type Err = Error;

    /// Parses the `--device` flag: `auto` or `cpu`.
    fn from_str(s: &str) -> Result<Device> {
        match s {
            "auto" => Ok(Device::best_available()),
            "cpu" => Ok(Device::Cpu),
            other => Err(Error::Device(format!(
                "unknown device '{other}' (this build has: auto, cpu)"
            ))),
        }
    }
}

/// The memory behind a tensor, one variant per device.
#[derive(Clone, Debug)]
pub enum Storage {
    Cpu(CpuStorage),
}

impl Storage {
    pub fn device(&self) -> Device {
        match self {
            Storage::Cpu(_) => Device::Cpu,
        }
    }

    pub fn dtype(&self) -> crate::tensor::DType {
        match self {
            Storage::Cpu(s) => s.dtype(),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Storage::Cpu(s) => s.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_device_names() {
        assert_eq!("cpu".parse::<Device>().unwrap(), Device::Cpu);
        assert_eq!("auto".parse::<Device>().unwrap(), Device::Cpu);
        let err = "tpu".parse::<Device>().unwrap_err().to_string();
        assert!(err.contains("unknown device 'tpu'"), "{err}");
    }
}
