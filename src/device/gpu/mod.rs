//! What the CUDA device and the emulator share: buffers, the caching allocator, the launch
//! path (argument packing and checking, launch dimensions), side streams and graph capture.
//!
//! The two differ only in a [`Backend`]: where memory lives (GPU memory through the CUDA
//! driver, or host memory) and how a launch runs (on the GPU, or block by block on the CPU).
//! Everything above the backend runs the same code for both, so every test through the
//! emulator also tests the host side of the GPU path.
//!
//! This file holds the backend's trait, [`GpuDevice`] (a backend with everything in front of
//! it), events, and the conversions of sizes into kernel arguments. The rest of
//! [`GpuDevice`] is spread over one file per idea:
//!
//! | file | what |
//! |---|---|
//! | `buffer.rs` | [`GpuBuffer`], and copies between buffers and the host |
//! | `allocator.rs` | the caching allocator: size classes, the cache, [`MemoryStats`] |
//! | `launch.rs` | [`KernelCall`]; each launch checked against its kernel's signature and the GPU's limits |
//! | `fork_join.rs` | side streams: [`GpuDevice::on_streams`] and its log of what each stream ran |
//! | `capture.rs` | graph capture and replay: [`GpuDevice::capture`], [`CapturedGraph`] |
//! | `peer.rs` | copies from another device, ordered by events on both ([`GpuDevice::copy_from_device`]) |

mod allocator;
mod buffer;
mod capture;
mod fork_join;
mod launch;
mod peer;

use std::ffi::c_void;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

pub use allocator::MemoryStats;
pub use buffer::GpuBuffer;
pub use capture::CapturedGraph;
pub use launch::{Arg, BLOCK, KernelCall, LaunchDims};
pub use peer::PeerCopyStats;

use super::Device;
use super::kernels::KernelInfo;
use super::streams::{SIDE_STREAMS, StreamSpan};
use crate::error::{Error, Result};
use allocator::Allocator;

/// The operations a device must provide. Pointers are device addresses (for the emulator,
/// host addresses) as `u64`.
pub trait Backend: Send + Sync {
    fn device(&self) -> Device;

    /// What the device is, e.g. "NVIDIA H100 80GB HBM3" (autotuning choices are kept per name).
    fn name(&self) -> String;

    /// # Safety
    /// The returned memory is uninitialised.
    unsafe fn malloc(&self, bytes: usize) -> Result<u64>;
    /// # Safety
    /// `ptr` came from `malloc` with this size and is not used afterwards.
    unsafe fn free(&self, ptr: u64, bytes: usize);
    /// # Safety
    /// `dst` holds at least `src.len()` bytes.
    unsafe fn upload(&self, dst: u64, src: &[u8]) -> Result<()>;
    /// Waits for earlier work, then copies.
    /// # Safety
    /// `src` holds at least `dst.len()` bytes.
    unsafe fn download(&self, dst: &mut [u8], src: u64) -> Result<()>;
    /// # Safety
    /// Both hold at least `bytes` bytes.
    unsafe fn copy(&self, dst: u64, src: u64, bytes: usize) -> Result<()>;
    /// # Safety
    /// `dst` holds at least `bytes` bytes.
    unsafe fn memset(&self, dst: u64, byte: u8, bytes: usize) -> Result<()>;
    /// # Safety
    /// `args[i]` points at a value of the kind `kernel.params[i]`; pointer arguments are
    /// live allocations of this device large enough for what the kernel touches.
    unsafe fn launch(
        &self,
        index: usize,
        kernel: &KernelInfo,
        dims: LaunchDims,
        args: &mut [*mut c_void],
    ) -> Result<()>;
    fn synchronize(&self) -> Result<()>;
    /// Marks the current point of the device's queue of work; returns a handle for
    /// [`Backend::elapsed_ms`]. (CUDA: an event recorded on the stream; emulator, whose
    /// launches finish before they return: the host clock.)
    fn record_event(&self) -> Result<u64>;
    /// Milliseconds between two recorded events, waiting for the second to be reached.
    fn elapsed_ms(&self, start: u64, end: u64) -> Result<f64>;
    /// Gives back an event's resources.
    fn release_event(&self, event: u64);
    /// Makes the current stream wait until `event` is reached; the event may have been
    /// recorded by another device's backend (CUDA lets a GPU's stream wait on another's event).
    fn wait_event(&self, event: u64) -> Result<()>;
    /// Copies `bytes` bytes from `src` in the memory of the device behind `peer` to `dst`
    /// in this device's, on the current stream; `Ok(false)` when the two cannot reach each
    /// other's memory and the caller must stage the copy through the host.
    /// # Safety
    /// `dst` holds `bytes` bytes of this device, `src` holds `bytes` bytes of `peer`'s.
    unsafe fn copy_from_peer(&self, dst: u64, peer: &dyn Backend, src: u64, bytes: usize) -> Result<bool>;
    /// Whether this device can read `peer`'s memory directly.
    fn can_access_peer(&self, peer: &dyn Backend) -> Result<bool>;
    /// The driver's handle of the calling thread's current stream (a `CUstream`, for NCCL);
    /// 0 for the emulator, which has none.
    fn raw_stream(&self) -> u64 {
        0
    }
    /// The driver's handle of the device's context (a `CUcontext`); 0 for the emulator.
    fn raw_context(&self) -> u64 {
        0
    }
    /// From now on, work is recorded into a graph instead of run (CUDA stream capture). Host
    /// copies and waits are not allowed until [`Backend::end_capture`].
    fn begin_capture(&self) -> Result<()>;
    /// Ends the recording; returns the graph, ready to replay.
    fn end_capture(&self) -> Result<u64>;
    /// Runs a recorded graph: the same kernels with the same arguments, in order.
    fn replay(&self, graph: u64) -> Result<()>;
    fn release_graph(&self, graph: u64);
    /// Makes side streams 1 to `count` wait for the work queued so far on the main stream.
    /// Every other call queues its work on the calling thread's current stream
    /// ([`super::streams::current_on`]).
    fn fork(&self, count: usize) -> Result<()>;
    /// Makes the main stream wait for the work queued so far on side streams 1 to `count`.
    fn join(&self, count: usize) -> Result<()>;
    /// Whether freed memory may be kept for reuse. The emulator built with AddressSanitizer
    /// says no, so that an out-of-bounds access always falls outside an allocation.
    fn caching(&self) -> bool {
        true
    }
    /// The GPU's compute capability (major, minor); `None` for the emulator, which has every
    /// feature the kernels use (tensor cores included).
    fn compute_capability(&self) -> Option<(i32, i32)> {
        None
    }
}

/// A GPU (or its emulation): a backend plus the caching allocator in front of it.
pub struct GpuDevice {
    backend: Box<dyn Backend>,
    /// Whether freed blocks are kept for reuse (see [`GpuDevice::caches_freed_memory`]).
    caching: bool,
    alloc: Mutex<Allocator>,
    /// Kernels launched on each stream so far (0: the main stream).
    launches: [AtomicU64; SIDE_STREAMS + 1],
    /// When set, what each side stream ran in each fork and join ([`GpuDevice::on_streams`]).
    spans: Mutex<Option<Vec<StreamSpan>>>,
    /// When set, every kernel launched since, with its launch dimensions ([`GpuDevice::start_launch_log`]).
    launch_log: Mutex<Option<Vec<(&'static str, LaunchDims)>>>,
    /// Held by the thread inside [`GpuDevice::on_streams`]: one fork at a time.
    forking: Mutex<()>,
    /// Copies received from other devices ([`GpuDevice::copy_from_device`]).
    peer_direct: AtomicU64,
    peer_staged: AtomicU64,
    peer_bytes: AtomicU64,
}

impl GpuDevice {
    /// A device behind `backend`. `caching: false` gives the allocator without a cache:
    /// every buffer is allocated at its exact size and every free goes straight back to the
    /// device (`SCRATCHNET_NO_CACHE=1`, read where devices are opened), so that a memory
    /// checker sees overruns past a buffer's end and uses after its free.
    pub fn new(backend: Box<dyn Backend>, caching: bool) -> Arc<GpuDevice> {
        let caching = caching && backend.caching();
        Arc::new(GpuDevice {
            backend,
            caching,
            alloc: Mutex::new(Allocator::default()),
            launches: Default::default(),
            spans: Mutex::new(None),
            launch_log: Mutex::new(None),
            forking: Mutex::new(()),
            peer_direct: AtomicU64::new(0),
            peer_staged: AtomicU64::new(0),
            peer_bytes: AtomicU64::new(0),
        })
    }

    pub fn device(&self) -> Device {
        self.backend.device()
    }

    pub fn name(&self) -> String {
        self.backend.name()
    }

    /// The compute capability of a CUDA GPU; `None` for the emulator.
    pub fn compute_capability(&self) -> Option<(i32, i32)> {
        self.backend.compute_capability()
    }

    pub fn synchronize(&self) -> Result<()> {
        self.backend.synchronize()
    }

    /// The driver's handle of the calling thread's current stream (0 on the emulator).
    pub fn raw_stream(&self) -> u64 {
        self.backend.raw_stream()
    }

    /// Makes this device's current stream wait for `event`, recorded on this device or another.
    pub fn wait_event(&self, event: &GpuEvent) -> Result<()> {
        self.backend.wait_event(event.handle)
    }

    /// Marks this point in the device's queue of work, for timing what runs between two marks
    /// without waiting for the device in between.
    pub fn record_event(self: &Arc<Self>) -> Result<GpuEvent> {
        Ok(GpuEvent { handle: self.backend.record_event()?, device: Arc::clone(self) })
    }
}

impl Drop for GpuDevice {
    fn drop(&mut self) {
        self.release_cache();
    }
}

/// A recorded point in a device's queue of work (see [`GpuDevice::record_event`]).
pub struct GpuEvent {
    handle: u64,
    device: Arc<GpuDevice>,
}

impl GpuEvent {
    /// Milliseconds from `self` to `later`, once the device has reached `later`.
    pub fn elapsed_ms(&self, later: &GpuEvent) -> Result<f64> {
        self.device.backend.elapsed_ms(self.handle, later.handle)
    }
}

impl Drop for GpuEvent {
    fn drop(&mut self) {
        self.device.backend.release_event(self.handle);
    }
}

/// A size as a kernel's `int` argument, or an error naming the op.
pub fn to_i32(op: &'static str, what: &str, v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| Error::argument(op, format!("{what} = {v} exceeds the GPU kernels' 32-bit index")))
}

/// A count as a kernel's `long long` argument.
pub fn to_i64(v: usize) -> i64 {
    // usize is at most 64 bits; a tensor never has 2^63 elements.
    i64::try_from(v).unwrap_or(i64::MAX)
}
