//! Host memory: one `Vec` per tensor, tagged with its element type.

use half::{bf16, f16};

use crate::tensor::DType;

/// Runs `f` on one of rayon's worker threads when `device` is the CPU (else here, where a
/// GPU's context is current).
///
/// Every CPU op spreads its loops over the rayon pool. Called from a thread outside the pool
/// (the main thread), each loop is sent to the pool as a job while the caller sleeps until it
/// is done: a hand-off and a wake-up per op, tens of microseconds on a 2-vCPU virtual
/// machine, a tenth of DenseNet-121's inference at batch 8 (some 400 ops, many of them on
/// 2×2 and 4×4 maps). Run from a worker, a loop splits in place and the idle workers steal
/// its halves, and the caller hands off once for the whole pass.
pub fn on_cpu_workers<R: Send>(device: super::Device, f: impl FnOnce() -> R + Send) -> R {
    if device == super::Device::Cpu { rayon::scope(|_| f()) } else { f() }
}

/// Asks the C allocator to keep the memory of freed tensors for the next ones instead of
/// giving it back to the system. A training step frees and allocates the same activation
/// sizes (megabytes each) over and over; glibc's malloc, which Rust's allocator calls,
/// serves blocks that large with mmap, or trims the top of its heap once a couple of
/// megabytes are free, so every step faults the same pages in again: about 20 ms of system
/// time per single-thread ResNet-20 step at batch 32 on the 2-core development machine.
/// Blocks below 32 MiB (glibc's largest allowed mmap threshold) then come from the heap,
/// which is never trimmed. The CUDA and emulator devices keep their own cache of device
/// memory; this is the CPU's. The command line and the CPU benches call it once at start.
pub fn keep_freed_host_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::ffi::c_int;
        unsafe extern "C" {
            /// glibc's `int mallopt(int param, int value)` (malloc.h).
            fn mallopt(param: c_int, value: c_int) -> c_int;
        }
        const M_TRIM_THRESHOLD: c_int = -1;
        const M_MMAP_THRESHOLD: c_int = -3;
        // SAFETY: mallopt only sets two of the allocator's tuning parameters, under its own
        // lock; a value it does not accept is refused (returns 0), changing nothing.
        unsafe {
            mallopt(M_MMAP_THRESHOLD, 32 << 20);
            mallopt(M_TRIM_THRESHOLD, c_int::MAX);
        }
    }
}

/// The storage of a tensor that lives in host memory.
#[derive(Clone, Debug)]
pub enum CpuStorage {
    F32(Vec<f32>),
    F64(Vec<f64>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
    I64(Vec<i64>),
}

impl CpuStorage {
    pub fn dtype(&self) -> DType {
        match self {
            CpuStorage::F32(_) => DType::F32,
            CpuStorage::F64(_) => DType::F64,
            CpuStorage::F16(_) => DType::F16,
            CpuStorage::BF16(_) => DType::BF16,
            CpuStorage::I64(_) => DType::I64,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            CpuStorage::F32(v) => v.len(),
            CpuStorage::F64(v) => v.len(),
            CpuStorage::F16(v) => v.len(),
            CpuStorage::BF16(v) => v.len(),
            CpuStorage::I64(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `n` zeros of the given type.
    pub fn zeros(dtype: DType, n: usize) -> Self {
        match dtype {
            DType::F32 => CpuStorage::F32(vec![0.0; n]),
            DType::F64 => CpuStorage::F64(vec![0.0; n]),
            DType::F16 => CpuStorage::F16(vec![f16::ZERO; n]),
            DType::BF16 => CpuStorage::BF16(vec![bf16::ZERO; n]),
            DType::I64 => CpuStorage::I64(vec![0; n]),
        }
    }

    /// `n` zeros of the given type, or an out-of-memory error (tensor storage that grows
    /// with the batch goes through here; see [`super::host_memory`]).
    pub fn try_zeros(dtype: DType, n: usize) -> crate::Result<Self> {
        use super::host_memory::filled;
        Ok(match dtype {
            DType::F32 => CpuStorage::F32(filled(n, 0.0)?),
            DType::F64 => CpuStorage::F64(filled(n, 0.0)?),
            DType::F16 => CpuStorage::F16(filled(n, f16::ZERO)?),
            DType::BF16 => CpuStorage::BF16(filled(n, bf16::ZERO)?),
            DType::I64 => CpuStorage::I64(filled(n, 0)?),
        })
    }

    /// A copy, or an out-of-memory error.
    pub fn try_clone(&self) -> crate::Result<Self> {
        let mut copy = CpuStorage::try_zeros(self.dtype(), self.len())?;
        copy.as_bytes_mut().copy_from_slice(self.as_bytes());
        Ok(copy)
    }

    /// The raw bytes, writable (for copies from a device).
    pub fn as_bytes_mut(&mut self) -> &mut [u8] {
        match self {
            CpuStorage::F32(v) => bytemuck::cast_slice_mut(v),
            CpuStorage::F64(v) => bytemuck::cast_slice_mut(v),
            CpuStorage::F16(v) => bytemuck::cast_slice_mut(v),
            CpuStorage::BF16(v) => bytemuck::cast_slice_mut(v),
            CpuStorage::I64(v) => bytemuck::cast_slice_mut(v),
        }
    }

    /// The raw little-endian bytes (what a checkpoint file holds).
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            CpuStorage::F32(v) => bytemuck::cast_slice(v),
            CpuStorage::F64(v) => bytemuck::cast_slice(v),
            CpuStorage::F16(v) => bytemuck::cast_slice(v),
            CpuStorage::BF16(v) => bytemuck::cast_slice(v),
            CpuStorage::I64(v) => bytemuck::cast_slice(v),
        }
    }
}
