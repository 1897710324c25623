//! Graph capture and replay: [`GpuDevice::capture`] records the work a closure queues (CUDA
//! stream capture; the emulator records the launches) into a [`CapturedGraph`], which runs it
//! again and again with the launch cost of one call.
//!
//! A file of its own because a replay reads and writes the same memory every time, long after
//! the capture: every block allocated while capturing belongs to the graph ([`GraphPool`])
//! until the graph is dropped, and every buffer the recorded work touches is noted, so that a
//! replay never writes memory that another buffer has since been given, and refuses to run
//! over memory that was freed. The allocator ([`super::allocator`]) keeps to the pools made
//! here.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::GpuDevice;
use crate::error::{Error, Result};

/// Memory a captured graph reads and writes each time it is replayed. Every block allocated
/// while it was captured belongs to it until it is dropped: when the buffer that held one is
/// freed, the block is parked here rather than returned to the shared cache, where another
/// buffer could take it and have it overwritten by the next replay.
#[derive(Default)]
pub(super) struct GraphPool {
    pub(super) reserved: HashSet<u64>,
    /// Reserved blocks no buffer holds, by size class (reused only by the same capture).
    pub(super) parked: HashMap<usize, Vec<u64>>,
    /// Every buffer the recorded launches read or write (its first byte), allocated inside
    /// the capture or before it: an optimizer's momentum, the model's parameters.
    pub(super) used: HashSet<u64>,
    /// Buffers of `used` allocated outside the capture and freed while the graph lives. A
    /// replay would read and write memory nobody owns, so [`CapturedGraph::replay`] refuses.
    pub(super) freed_while_used: usize,
}

impl GpuDevice {
    /// Records the work `f` queues into a graph instead of running it (CUDA stream capture;
    /// the emulator records the launches), for [`CapturedGraph::replay`] to run again and again
    /// with the launch cost of one call. Inside `f`, nothing may wait for the device or copy
    /// between host and device; every buffer allocated inside belongs to the graph (see
    /// `GraphPool`), so values computed by `f` (a loss, the gradients) can be read after each
    /// replay from the tensors `f` returned. `f` runs no kernel: the work happens at replay.
    /// What is recorded is the calling thread's work (on CUDA, the device's one stream, so no
    /// other thread may use the device meanwhile; the emulator records only this thread's).
    pub fn capture<T>(self: &Arc<Self>, f: impl FnOnce() -> Result<T>) -> Result<(CapturedGraph, T)> {
        static NEXT_POOL: AtomicU64 = AtomicU64::new(1);
        let pool = NEXT_POOL.fetch_add(1, Ordering::Relaxed);
        {
            let mut a = self.lock();
            if a.capturing.is_some() {
                return Err(Error::Device(format!("{}: a graph is already being captured", self.device())));
            }
            a.capturing = Some((pool, std::thread::current().id()));
            a.pools.insert(pool, GraphPool::default());
        }
        let begun = self.backend.begin_capture();
        let result = begun.and_then(|()| f());
        let ended = self.backend.end_capture();
        self.lock().capturing = None;
        // Dropped on an error, giving back the graph and its memory.
        let mut graph = CapturedGraph { handle: ended.as_ref().ok().copied(), pool, device: Arc::clone(self) };
        let value = result?;
        graph.handle = Some(ended?);
        Ok((graph, value))
    }

    /// While this thread captures a graph: the graph's work reads or writes these buffers.
    pub(super) fn note_use(&self, buffers: &[u64]) {
        let mut a = self.lock();
        if let Some(pool) = a.capturing_here().and_then(|g| a.pools.get_mut(&g)) {
            pool.used.extend(buffers.iter().copied());
        }
    }
}

/// A graph of recorded work (see [`GpuDevice::capture`]).
pub struct CapturedGraph {
    handle: Option<u64>,
    pool: u64,
    device: Arc<GpuDevice>,
}

impl CapturedGraph {
    /// Queues the whole recorded work once more. Refused when a buffer the recorded work
    /// uses was freed since (its owner, such as the optimizer, must live as long as the graph).
    pub fn replay(&self) -> Result<()> {
        let freed = self.device.lock().pools.get(&self.pool).map_or(0, |p| p.freed_while_used);
        if freed > 0 {
            return Err(Error::Device(format!(
                "{}: a captured graph uses {freed} buffer(s) freed since its capture; \
                 whatever owns them must live as long as the graph",
                self.device.device()
            )));
        }
        match self.handle {
            Some(h) => self.device.backend.replay(h),
            None => Err(Error::Device("the graph's capture failed".into())),
        }
    }
}

impl Drop for CapturedGraph {
    fn drop(&mut self) {
        if let Some(h) = self.handle {
            // Work already queued may still use the graph's memory.
            let _ = self.device.backend.synchronize();
            self.device.backend.release_graph(h);
        }
        self.device.release_pool(self.pool);
    }
}
