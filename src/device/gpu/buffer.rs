//! [`GpuBuffer`], device memory holding the elements of one dtype, and the copies in and out
//! of it: from the host into a new buffer or an existing one, back to the host, and from one
//! buffer into a new one.
//!
//! Apart from the allocator ([`super::allocator`]), which decides which block of memory a
//! buffer gets and where it goes when the buffer is dropped: a buffer only holds its block.

use std::sync::Arc;

use super::GpuDevice;
use crate::error::{Error, Result};
use crate::tensor::DType;

/// Device memory holding `len` elements of one dtype. Freed (into the cache) when dropped.
pub struct GpuBuffer {
    pub(super) ptr: u64,
    pub(super) len: usize,
    pub(super) dtype: DType,
    /// The size of its block in bytes: the allocator's size class, which it takes back.
    pub(super) capacity: usize,
    pub(super) device: Arc<GpuDevice>,
}

impl GpuBuffer {
    pub fn ptr(&self) -> u64 {
        self.ptr
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn bytes(&self) -> usize {
        self.len * self.dtype.size_in_bytes()
    }
    pub fn gpu(&self) -> &Arc<GpuDevice> {
        &self.device
    }
}

impl std::fmt::Debug for GpuBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GpuBuffer({} × {} on {})", self.len, self.dtype, self.device.device())
    }
}

impl Drop for GpuBuffer {
    fn drop(&mut self) {
        self.device.release(self.ptr, self.capacity);
    }
}

impl GpuDevice {
    /// A buffer of zeros.
    pub fn zeros(self: &Arc<Self>, dtype: DType, len: usize) -> Result<GpuBuffer> {
        let buf = self.alloc(dtype, len)?;
        if buf.bytes() > 0 {
            // SAFETY: the buffer holds `bytes()` bytes.
            unsafe { self.backend.memset(buf.ptr, 0, buf.bytes())? };
        }
        Ok(buf)
    }

    /// Copies host bytes into a new buffer.
    pub fn upload(self: &Arc<Self>, dtype: DType, len: usize, bytes: &[u8]) -> Result<GpuBuffer> {
        let buf = self.alloc(dtype, len)?;
        if bytes.len() != buf.bytes() {
            return Err(Error::Device(format!("upload of {} bytes into a buffer of {}", bytes.len(), buf.bytes())));
        }
        if !bytes.is_empty() {
            // SAFETY: the buffer holds exactly `bytes.len()` bytes.
            unsafe { self.backend.upload(buf.ptr, bytes)? };
        }
        Ok(buf)
    }

    /// Copies a buffer back to the host (waiting for the kernels that write it).
    pub fn download(&self, buf: &GpuBuffer, dst: &mut [u8]) -> Result<()> {
        if dst.len() != buf.bytes() {
            return Err(Error::Device(format!("download of a buffer of {} bytes into {}", buf.bytes(), dst.len())));
        }
        if dst.is_empty() {
            return self.backend.synchronize();
        }
        // SAFETY: the buffer holds `dst.len()` bytes.
        unsafe { self.backend.download(dst, buf.ptr) }
    }

    /// A new buffer with the same contents.
    pub fn duplicate(self: &Arc<Self>, src: &GpuBuffer) -> Result<GpuBuffer> {
        let buf = self.alloc(src.dtype, src.len)?;
        self.note_use(&[src.ptr]);
        if buf.bytes() > 0 {
            // SAFETY: both hold `bytes()` bytes.
            unsafe { self.backend.copy(buf.ptr, src.ptr, buf.bytes())? };
        }
        Ok(buf)
    }

    /// Copies host bytes into an existing buffer (a captured graph's input, between replays).
    pub fn write(&self, buf: &GpuBuffer, bytes: &[u8]) -> Result<()> {
        if bytes.len() != buf.bytes() {
            return Err(Error::Device(format!("write of {} bytes into a buffer of {}", bytes.len(), buf.bytes())));
        }
        if bytes.is_empty() {
            return Ok(());
        }
        // SAFETY: the buffer holds exactly `bytes.len()` bytes; device memory is not subject
        // to Rust's aliasing rules, and kernels reading it are ordered on the same queue.
        unsafe { self.backend.upload(buf.ptr, bytes) }
    }
}
