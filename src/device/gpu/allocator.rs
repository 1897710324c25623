//! The caching allocator in front of a backend's `malloc` and `free`: requests are rounded up
//! to size classes, and freed blocks are kept for the next request of their class, so that a
//! training step, whose sizes repeat from step to step, runs without calling the device
//! allocator once the first step has warmed the cache (cudaMalloc and cudaFree wait for the
//! device).
//!
//! A freed block does not always go straight to the cache: one freed on a side stream waits
//! for the join ([`GpuDevice::on_streams`]), one that belongs to a captured graph is parked
//! in the graph's pool ([`super::capture`]), and without caching (`SCRATCHNET_NO_CACHE=1`,
//! the emulator under AddressSanitizer) every block goes back to the device at once.

use std::collections::HashMap;
use std::sync::{Arc, MutexGuard};

use super::capture::GraphPool;
use super::{GpuBuffer, GpuDevice};
use crate::device::streams;
use crate::error::{Error, Result};
use crate::tensor::DType;

/// Memory use of one device, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryStats {
    /// Held by live buffers (rounded up to the allocator's size classes).
    pub in_use: usize,
    /// The largest `in_use` seen.
    pub peak: usize,
    /// Freed by buffers but kept for reuse.
    pub cached: usize,
    /// Calls to the device's allocator (cudaMalloc or its emulation) so far.
    pub device_allocations: u64,
}

#[derive(Default)]
pub(super) struct Allocator {
    /// Free blocks by size class.
    pub(super) free: HashMap<usize, Vec<u64>>,
    pub(super) stats: MemoryStats,
    /// The graph being captured, if any, and the thread capturing it: that thread's blocks
    /// come from and go to the graph's own pool.
    pub(super) capturing: Option<(u64, std::thread::ThreadId)>,
    /// The blocks of each live graph (see [`GpuDevice::capture`]).
    pub(super) pools: HashMap<u64, GraphPool>,
    /// Blocks freed while a side stream was current, whose kernels may still read them:
    /// held back until the join (see [`GpuDevice::on_streams`]), with the forking thread.
    pub(super) deferred: Vec<(std::thread::ThreadId, u64, usize)>,
}

impl Allocator {
    /// The pool of the graph the calling thread is capturing, if it is capturing one.
    pub(super) fn capturing_here(&self) -> Option<u64> {
        self.capturing.filter(|(_, t)| *t == std::thread::current().id()).map(|(pool, _)| pool)
    }
}

/// The allocator's size class of a request: multiples of 512 bytes up to 1 MiB, then of
/// 1 MiB. Rounding lets a freed block serve the next request of a similar size, and the
/// caching lets a training step, whose sizes repeat from step to step, run without calling
/// the device allocator once the first step has warmed the cache.
fn size_class(bytes: usize) -> usize {
    const SMALL: usize = 512;
    const LARGE: usize = 1 << 20;
    let b = bytes.max(1);
    if b <= LARGE { b.div_ceil(SMALL) * SMALL } else { b.div_ceil(LARGE) * LARGE }
}

impl GpuDevice {
    /// Whether freed blocks are kept for reuse: not under the emulator's AddressSanitizer
    /// build, nor with `SCRATCHNET_NO_CACHE=1`, where every block goes back to the device so
    /// that overruns and uses after free are caught.
    pub fn caches_freed_memory(&self) -> bool {
        self.caching
    }

    pub fn memory_stats(&self) -> MemoryStats {
        self.lock().stats
    }

    /// Starts a new peak from what is in use now (to measure one step's peak).
    pub fn reset_peak(&self) {
        let mut a = self.lock();
        a.stats.peak = a.stats.in_use;
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, Allocator> {
        // A panic while holding the lock cannot leave the free lists inconsistent (each
        // update is a single push or pop), so a poisoned lock is still usable.
        self.alloc.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An uninitialised buffer of `len` elements. When [`crate::device::poison_new_buffers`]
    /// is on, every byte is 0xFF (a NaN in every float type), so an element a kernel forgets
    /// to write fails the comparison with the reference.
    pub fn alloc(self: &Arc<Self>, dtype: DType, len: usize) -> Result<GpuBuffer> {
        let bytes = len
            .checked_mul(dtype.size_in_bytes())
            .ok_or_else(|| Error::Device(format!("{}: {len} elements of {dtype} overflow", self.device())))?;
        // Without caching (SCRATCHNET_NO_CACHE, the emulator under AddressSanitizer) the size is exact, so that
        // one element past the end is already outside the allocation.
        let class = if self.caching { size_class(bytes) } else { bytes.max(1) };
        let ptr = match self.take_cached(class) {
            Some(p) => p,
            None => self.malloc_block(class, len, dtype)?,
        };
        {
            let mut a = self.lock();
            a.stats.in_use += class;
            a.stats.peak = a.stats.peak.max(a.stats.in_use);
            if let Some(g) = a.capturing_here() {
                a.pools.entry(g).or_default().reserved.insert(ptr);
            }
        }
        let buf = GpuBuffer { ptr, len, dtype, capacity: class, device: Arc::clone(self) };
        if crate::device::poisoning() && bytes > 0 {
            // SAFETY: the buffer holds `class >= bytes` bytes.
            unsafe { self.backend.memset(ptr, 0xFF, bytes)? };
        }
        Ok(buf)
    }

    /// A kept block of size class `class`, if there is one.
    fn take_cached(&self, class: usize) -> Option<u64> {
        let mut a = self.lock();
        // While capturing, the graph's own parked blocks first: reusing them follows the
        // graph's order of work, as reuse from the cache follows the stream's.
        let capturing = a.capturing_here();
        let own = capturing.and_then(|g| a.pools.get_mut(&g)).and_then(|p| p.parked.get_mut(&class)?.pop());
        let hit = own.or_else(|| if self.caching { a.free.get_mut(&class).and_then(Vec::pop) } else { None });
        if hit.is_some() {
            a.stats.cached -= class;
        }
        hit
    }

    /// A new block of `class` bytes from the device, for a buffer of `len` elements of
    /// `dtype`. When the device is out of memory, the cache goes back to it first and the
    /// request is tried once more.
    fn malloc_block(&self, class: usize, len: usize, dtype: DType) -> Result<u64> {
        // SAFETY: fresh memory; it is initialised by the caller or by the caller's kernel.
        let p = unsafe { self.backend.malloc(class) };
        let p = match p {
            Ok(p) => p,
            // Freeing memory waits for the device, which would break a capture.
            Err(e) if self.lock().capturing.is_some() => return Err(e),
            Err(_) => {
                // Out of memory: give the cache back to the device and try once more.
                self.release_cache();
                // SAFETY: as above.
                unsafe { self.backend.malloc(class) }.map_err(|e| match e {
                    Error::OutOfMemory { .. } => {
                        let in_use = crate::device::host_memory::human_bytes(self.lock().stats.in_use);
                        Error::out_of_memory(
                            self.device(),
                            class,
                            format!("a buffer of {len} {dtype} ({in_use} already in use, the cache emptied)"),
                        )
                    }
                    other => other,
                })?
            }
        };
        self.lock().stats.device_allocations += 1;
        Ok(p)
    }

    /// Returns every cached block to the device.
    pub fn release_cache(&self) {
        let mut a = self.lock();
        for (class, ptrs) in a.free.drain() {
            for p in ptrs {
                // SAFETY: cached blocks belong to no buffer.
                unsafe { self.backend.free(p, class) };
            }
        }
        a.stats.cached = 0;
    }

    /// Takes back the block of a buffer being dropped.
    pub(super) fn release(&self, ptr: u64, class: usize) {
        let mut a = self.lock();
        a.stats.in_use -= class;
        if streams::current_on(self.device()) != 0 {
            a.deferred.push((std::thread::current().id(), ptr, class));
            a.stats.cached += class;
            return;
        }
        self.place_free_block(a, ptr, class);
    }

    /// Puts a block no buffer holds where the next allocation can find it: its graph's pool,
    /// the cache, or back to the device. Counted in `in_use` no more, in `cached` not yet.
    pub(super) fn place_free_block(&self, mut a: MutexGuard<'_, Allocator>, ptr: u64, class: usize) {
        if let Some(pool) = a.pools.values_mut().find(|p| p.reserved.contains(&ptr)) {
            pool.parked.entry(class).or_default().push(ptr);
            a.stats.cached += class;
            return;
        }
        // A block from before the capture that a live graph still reads: the graph can no
        // longer be replayed. With the cache, the block is parked with the graph, so that no
        // other buffer takes it and has it overwritten; without, it goes back to the device,
        // where a memory checker reports any access to it.
        let mut parked = false;
        for pool in a.pools.values_mut().filter(|p| p.used.contains(&ptr)) {
            pool.freed_while_used += 1;
            if self.caching && !parked {
                pool.parked.entry(class).or_default().push(ptr);
                parked = true;
            }
        }
        if parked {
            a.stats.cached += class;
            return;
        }
        if self.caching {
            a.free.entry(class).or_default().push(ptr);
            a.stats.cached += class;
        } else {
            drop(a);
            // SAFETY: the buffer that owned the block is being dropped.
            unsafe { self.backend.free(ptr, class) };
        }
    }

    /// Gives back the blocks parked in the pool of a graph being dropped: to the cache, or
    /// without caching to the device.
    pub(super) fn release_pool(&self, pool: u64) {
        let mut a = self.lock();
        if let Some(pool) = a.pools.remove(&pool) {
            for (class, ptrs) in pool.parked {
                for p in ptrs {
                    if self.caching {
                        a.free.entry(class).or_default().push(p);
                    } else {
                        a.stats.cached -= class;
                        // SAFETY: a parked block belongs to no buffer.
                        unsafe { self.backend.free(p, class) };
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_classes_round_up() {
        assert_eq!(size_class(0), 512);
        assert_eq!(size_class(1), 512);
        assert_eq!(size_class(513), 1024);
        assert_eq!(size_class(1 << 20), 1 << 20);
        assert_eq!(size_class((1 << 20) + 1), 2 << 20);
    }
}
