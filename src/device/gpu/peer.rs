//! Copies between two devices, and the events that order them.
//!
//! A tensor that moves from device A to device B (AlexNet's towers meeting at conv3, a
//! replica's buffers in data-parallel training) is copied by B from A's memory:
//!
//! 1. B's current stream waits for an event recorded on A's: the copy starts once A's
//!    kernels that write the source have run (an event of one GPU may be waited on by
//!    another's stream);
//! 2. the copy runs on B's stream: a peer copy where the two GPUs can reach each other's
//!    memory (`cuMemcpyPeerAsync` with peer access enabled, over NVLink or PCIe), else staged
//!    through the host (A downloads, B uploads), which is what a machine without peer
//!    access must do anyway; two emulated devices share the host's memory and always copy
//!    directly;
//! 3. A's stream waits for an event recorded on B's after the copy: A's later work, which
//!    may reuse the source's memory once it is freed, cannot overwrite it while B reads it.
//!
//! Each device counts the copies it received and how they went ([`PeerCopyStats`]), which
//! the tests and `scratchnet profile` read.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::{GpuBuffer, GpuDevice};
use crate::error::{Error, Result};

/// The copies a device has received from other devices.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerCopyStats {
    /// Copies made directly from the other device's memory.
    pub direct: u64,
    /// Copies staged through the host (no peer access between the two GPUs).
    pub staged: u64,
    /// Bytes received, both ways together.
    pub bytes: u64,
}

impl GpuDevice {
    /// A copy of `src`, a buffer of another device, in a new buffer of this one (see the
    /// module's comment for how it is ordered on both devices).
    pub fn copy_from_device(self: &Arc<Self>, src: &GpuBuffer) -> Result<GpuBuffer> {
        let from = src.gpu();
        if Arc::ptr_eq(from, self) {
            return self.duplicate(src);
        }
        if self.lock().capturing_here().is_some() || from.lock().capturing_here().is_some() {
            return Err(Error::Device(format!(
                "a copy from {} to {} while capturing a CUDA graph (a graph holds one device's work)",
                from.device(),
                self.device()
            )));
        }
        let out = self.alloc(src.dtype, src.len)?;
        let bytes = out.bytes();
        if bytes == 0 {
            return Ok(out);
        }
        let written = from.record_event()?;
        self.backend.wait_event(written.handle)?;
        // SAFETY: both buffers hold `bytes` bytes; the source belongs to `from`'s backend.
        let direct = unsafe { self.backend.copy_from_peer(out.ptr, from.backend.as_ref(), src.ptr, bytes)? };
        if !direct {
            let mut host = vec![0u8; bytes];
            from.download(src, &mut host)?;
            // SAFETY: `out` holds `bytes` bytes.
            unsafe { self.backend.upload(out.ptr, &host)? };
        }
        let read = self.record_event()?;
        from.backend.wait_event(read.handle)?;
        let counter = if direct { &self.peer_direct } else { &self.peer_staged };
        counter.fetch_add(1, Ordering::Relaxed);
        self.peer_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        Ok(out)
    }

    /// The copies this device has received from others so far.
    pub fn peer_copy_stats(&self) -> PeerCopyStats {
        PeerCopyStats {
            direct: self.peer_direct.load(Ordering::Relaxed),
            staged: self.peer_staged.load(Ordering::Relaxed),
            bytes: self.peer_bytes.load(Ordering::Relaxed),
        }
    }

    /// Whether this device can read `other`'s memory directly (peer access); `None` when
    /// the backend cannot tell before trying (it never needs to for emulated devices, which
    /// always can).
    pub fn can_access_peer(&self, other: &GpuDevice) -> Result<bool> {
        self.backend.can_access_peer(other.backend.as_ref())
    }
}
