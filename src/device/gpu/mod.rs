//! What the CUDA device and the emulator share: buffers, the caching allocator, and the
//! launch path (argument packing and checking, launch dimensions).
//!
//! The two differ only in a [`Backend`]: where memory lives (GPU memory through the CUDA
//! driver, or host memory) and how a launch runs (on the GPU, or block by block on the CPU).
//! Everything above the backend runs the same code for both, so every test through the
//! emulator also tests the host side of the GPU path.

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::Device;
use super::kernels::{self, ArgKind, KernelInfo};
use super::streams::{self, SIDE_STREAMS, StreamGuard, StreamSpan};
use crate::error::{Error, Result};
use crate::tensor::DType;

/// Grid and block dimensions, and dynamic shared memory in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaunchDims {
    pub grid: (u32, u32, u32),
    pub block: (u32, u32, u32),
    pub shared_bytes: u32,
}

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
}

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

struct Allocator {
    /// Free blocks by size class.
    free: HashMap<usize, Vec<u64>>,
    stats: MemoryStats,
    /// The graph being captured, if any, and the thread capturing it: that thread's blocks
    /// come from and go to the graph's own pool.
    capturing: Option<(u64, std::thread::ThreadId)>,
    /// The blocks of each live graph (see [`GpuDevice::capture`]).
    pools: HashMap<u64, GraphPool>,
    /// Blocks freed while a side stream was current, whose kernels may still read them:
    /// held back until the join (see [`GpuDevice::on_streams`]), with the forking thread.
    deferred: Vec<(std::thread::ThreadId, u64, usize)>,
}

impl Allocator {
    /// The pool of the graph the calling thread is capturing, if it is capturing one.
    fn capturing_here(&self) -> Option<u64> {
        self.capturing.filter(|(_, t)| *t == std::thread::current().id()).map(|(pool, _)| pool)
    }
}

/// Memory a captured graph reads and writes each time it is replayed. Every block allocated
/// while it was captured belongs to it until it is dropped: when the buffer that held one is
/// freed, the block is parked here rather than returned to the shared cache, where another
/// buffer could take it and have it overwritten by the next replay.
#[derive(Default)]
struct GraphPool {
    reserved: std::collections::HashSet<u64>,
    /// Reserved blocks no buffer holds, by size class (reused only by the same capture).
    parked: HashMap<usize, Vec<u64>>,
    /// Every buffer the recorded launches read or write (its first byte), allocated inside
    /// the capture or before it: an optimizer's momentum, the model's parameters.
    used: std::collections::HashSet<u64>,
    /// Buffers of `used` allocated outside the capture and freed while the graph lives. A
    /// replay would read and write memory nobody owns, so [`CapturedGraph::replay`] refuses.
    freed_while_used: usize,
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
    /// A device behind `backend`. `caching: false` gives the allocator without a cache:
    /// every buffer is allocated at its exact size and every free goes straight back to the
    /// device (`SCRATCHNET_NO_CACHE=1`, read where devices are opened), so that a memory
    /// checker sees overruns past a buffer's end and uses after its free.
    pub fn new(backend: Box<dyn Backend>, caching: bool) -> Arc<GpuDevice> {
        let caching = caching && backend.caching();
        Arc::new(GpuDevice {
            backend,
            caching,
            alloc: Mutex::new(Allocator {
                free: HashMap::new(),
                stats: MemoryStats::default(),
                capturing: None,
                pools: HashMap::new(),
                deferred: Vec::new(),
            }),
            launches: Default::default(),
            spans: Mutex::new(None),
            launch_log: Mutex::new(None),
            forking: Mutex::new(()),
        })
    }

    pub fn device(&self) -> Device {
        self.backend.device()
    }

    pub fn name(&self) -> String {
        self.backend.name()
    }

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

    fn lock(&self) -> std::sync::MutexGuard<'_, Allocator> {
        // A panic while holding the lock cannot leave the free lists inconsistent (each
        // update is a single push or pop), so a poisoned lock is still usable.
        self.alloc.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An uninitialised buffer of `len` elements. When [`super::poison_new_buffers`] is on,
    /// every byte is 0xFF (a NaN in every float type), so an element a kernel forgets to
    /// write fails the comparison with the reference.
    pub fn alloc(self: &Arc<Self>, dtype: DType, len: usize) -> Result<GpuBuffer> {
        let bytes = len
            .checked_mul(dtype.size_in_bytes())
            .ok_or_else(|| Error::Device(format!("{}: {len} elements of {dtype} overflow", self.device())))?;
        // Without caching (SCRATCHNET_NO_CACHE, the emulator under AddressSanitizer) the size is exact, so that
        // one element past the end is already outside the allocation.
        let class = if self.caching { size_class(bytes) } else { bytes.max(1) };
        let cached = {
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
        };
        let ptr = match cached {
            Some(p) => p,
            None => {
                // SAFETY: fresh memory; it is initialised below or by the caller's kernel.
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
                p
            }
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
        if super::poisoning() && bytes > 0 {
            // SAFETY: the buffer holds `class >= bytes` bytes.
            unsafe { self.backend.memset(ptr, 0xFF, bytes)? };
        }
        Ok(buf)
    }

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

    pub fn synchronize(&self) -> Result<()> {
        self.backend.synchronize()
    }

    /// Marks this point in the device's queue of work, for timing what runs between two marks
    /// without waiting for the device in between.
    pub fn record_event(self: &Arc<Self>) -> Result<GpuEvent> {
        Ok(GpuEvent { handle: self.backend.record_event()?, device: Arc::clone(self) })
    }

    /// Records the work `f` queues into a graph instead of running it (CUDA stream capture;
    /// the emulator records the launches), for [`CapturedGraph::replay`] to run again and again
    /// with the launch cost of one call. Inside `f`, nothing may wait for the device or copy
    /// between host and device; every buffer allocated inside belongs to the graph (see
    /// [`GraphPool`]), so values computed by `f` (a loss, the gradients) can be read after each
    /// replay from the tensors `f` returned. `f` runs no kernel: the work happens at replay.
    /// What is recorded is the calling thread's work (on CUDA, the device's one stream, so no
    /// other thread may use the device meanwhile; the emulator records only this thread's).
    pub fn capture<T>(self: &Arc<Self>, f: impl FnOnce() -> Result<T>) -> Result<(CapturedGraph, T)> {
        static NEXT_POOL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let pool = NEXT_POOL.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
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

    /// While this thread captures a graph: the graph's work reads or writes these buffers.
    fn note_use(&self, buffers: &[u64]) {
        let mut a = self.lock();
        if let Some(pool) = a.capturing_here().and_then(|g| a.pools.get_mut(&g)) {
            pool.used.extend(buffers.iter().copied());
        }
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

    fn release(&self, ptr: u64, class: usize) {
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
    fn place_free_block(&self, mut a: std::sync::MutexGuard<'_, Allocator>, ptr: u64, class: usize) {
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

    /// Launches a kernel after checking its arguments against the kernel's signature. A grid
    /// with a zero dimension is no work and launches nothing.
    pub fn launch(&self, call: KernelCall) -> Result<()> {
        let (index, info) = kernels::find(call.name)
            .ok_or_else(|| Error::Device(format!("no kernel named {} was compiled", call.name)))?;
        let kinds: Vec<ArgKind> = call.args.iter().map(Arg::kind).collect();
        if kinds != info.params {
            return Err(Error::Device(format!(
                "kernel {} takes {:?} but was given {:?}",
                call.name, info.params, kinds
            )));
        }
        let d = call.dims;
        if d.grid.0 == 0 || d.grid.1 == 0 || d.grid.2 == 0 {
            return Ok(());
        }
        // The limits every GPU since compute capability 3.0 has, checked here so that the
        // emulator (which would accept more) fails the same way a GPU would.
        let threads = d.block.0 as u64 * d.block.1 as u64 * d.block.2 as u64;
        if threads == 0 || threads > 1024 || d.block.2 > 64 {
            return Err(Error::Device(format!(
                "kernel {}: a block of {threads} threads {:?} (1 to 1024 allowed, at most 64 in z)",
                call.name, d.block
            )));
        }
        if d.grid.1 > 65535 || d.grid.2 > 65535 || d.grid.0 > i32::MAX as u32 {
            return Err(Error::Device(format!(
                "kernel {}: grid {:?} exceeds the GPU's limits (2^31−1 in x, 65535 in y and z)",
                call.name, d.grid
            )));
        }
        if d.shared_bytes > MAX_DYNAMIC_SHARED {
            return Err(Error::Device(format!(
                "kernel {}: {} bytes of dynamic shared memory (at most {MAX_DYNAMIC_SHARED} without opting in)",
                call.name, d.shared_bytes
            )));
        }
        self.note_use(&call.buffers);
        if let Some(log) = self.launch_log.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            log.push((call.name, d));
        }
        let mut args = call.args;
        let mut ptrs: Vec<*mut c_void> = args.iter_mut().map(Arg::as_mut_ptr).collect();
        // SAFETY: the argument kinds match the signature (checked above), and the pointers
        // come from live buffers of this device (KernelCall::buf borrows them).
        unsafe { self.backend.launch(index, info, d, &mut ptrs)? };
        self.launches[streams::current_on(self.device())].fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Kernels launched so far on each stream: the main one first, then the side streams.
    pub fn launches_per_stream(&self) -> Vec<u64> {
        self.launches.iter().map(|c| c.load(Ordering::Relaxed)).collect()
    }

    /// Runs `f(0)`, …, `f(count − 1)`, each with its own side stream current (stream i + 1),
    /// so that the work they queue can run side by side on the GPU; returns their results in
    /// order. Before: every side stream waits for what the main stream has queued (the fork);
    /// after: the main stream waits for every side stream (the join), so what the caller
    /// queues next sees all their results. The closures run one after another on the calling
    /// thread: only the device runs them in parallel. Inside a capture the fork and the join
    /// become edges of the graph, whose two branches then replay side by side. The join
    /// happens however the closures end (an error, a panic).
    pub fn on_streams<T>(self: &Arc<Self>, count: usize, mut f: impl FnMut(usize) -> Result<T>) -> Result<Vec<T>> {
        if count == 0 || count > SIDE_STREAMS {
            return Err(Error::Device(format!(
                "{}: work for {count} side streams (1 to {SIDE_STREAMS} allowed)",
                self.device()
            )));
        }
        if streams::forked() {
            return Err(Error::Device(format!("{}: side streams cannot fork again", self.device())));
        }
        let _one_fork_at_a_time = self.forking.lock().unwrap_or_else(|p| p.into_inner());
        static NEXT_REGION: AtomicU64 = AtomicU64::new(1);
        let region = NEXT_REGION.fetch_add(1, Ordering::Relaxed);
        // Spans are timed with events, which a graph being captured cannot hold.
        let logging =
            self.spans.lock().unwrap_or_else(|p| p.into_inner()).is_some() && self.lock().capturing_here().is_none();
        let label = if logging { streams::label() } else { String::new() };
        let mut join = JoinOnDrop { device: self, count, done: false };
        self.backend.fork(count)?;
        let mut results = Vec::with_capacity(count);
        let mut spans = Vec::new();
        for i in 0..count {
            let _on = StreamGuard::enter(self.device(), i + 1);
            let start = if logging { Some(self.record_event()?) } else { None };
            results.push(f(i)?);
            if let Some(start) = start {
                let end = self.record_event()?;
                spans.push(StreamSpan { region, stream: i + 1, label: label.clone(), start, end });
            }
        }
        join.join()?;
        if let Some(log) = self.spans.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            log.extend(spans);
        }
        Ok(results)
    }

    /// The end of [`GpuDevice::on_streams`]: the main stream waits for the side streams, then
    /// the blocks this thread freed on them go back to the cache. If the join itself fails,
    /// the blocks are not reused (nothing orders later work after the side streams' any more).
    fn join_side_streams(&self, count: usize) -> Result<()> {
        let joined = self.backend.join(count);
        let me = std::thread::current().id();
        let mine: Vec<(u64, usize)> = {
            let mut a = self.lock();
            let (mine, others) = a.deferred.drain(..).partition(|(t, _, _)| *t == me);
            a.deferred = others;
            mine.into_iter().map(|(_, ptr, class)| (ptr, class)).collect()
        };
        joined?;
        for (ptr, class) in mine {
            let mut a = self.lock();
            a.stats.cached -= class;
            self.place_free_block(a, ptr, class);
        }
        Ok(())
    }

    /// Starts noting every kernel launched (name and dimensions), for `scratchnet kernel` to
    /// say which kernels a variant ran and look up their ptxas figures.
    pub fn start_launch_log(&self) {
        *self.launch_log.lock().unwrap_or_else(|p| p.into_inner()) = Some(Vec::new());
    }

    /// The launches noted since [`GpuDevice::start_launch_log`], which stops noting them.
    pub fn take_launch_log(&self) -> Vec<(&'static str, LaunchDims)> {
        self.launch_log.lock().unwrap_or_else(|p| p.into_inner()).take().unwrap_or_default()
    }

    /// Starts keeping a [`StreamSpan`] for each side stream of each later
    /// [`GpuDevice::on_streams`] (the profiler's view of the streams).
    pub fn start_stream_log(&self) {
        *self.spans.lock().unwrap_or_else(|p| p.into_inner()) = Some(Vec::new());
    }

    /// The spans kept since [`GpuDevice::start_stream_log`], which stops keeping them.
    pub fn take_stream_log(&self) -> Vec<StreamSpan> {
        self.spans.lock().unwrap_or_else(|p| p.into_inner()).take().unwrap_or_default()
    }
}

impl Drop for GpuDevice {
    fn drop(&mut self) {
        self.release_cache();
    }
}

/// Joins the side streams of a fork when dropped, if [`JoinOnDrop::join`] has not.
struct JoinOnDrop<'a> {
    device: &'a GpuDevice,
    count: usize,
    done: bool,
}

impl JoinOnDrop<'_> {
    fn join(&mut self) -> Result<()> {
        self.done = true;
        self.device.join_side_streams(self.count)
    }
}

impl Drop for JoinOnDrop<'_> {
    fn drop(&mut self) {
        if !self.done {
            // Waiting on a side stream that never waited for the fork is harmless.
            let _ = self.device.join_side_streams(self.count);
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
        let mut a = self.device.lock();
        if let Some(pool) = a.pools.remove(&self.pool) {
            let caching = self.device.caching;
            for (class, ptrs) in pool.parked {
                for p in ptrs {
                    if caching {
                        a.free.entry(class).or_default().push(p);
                    } else {
                        a.stats.cached -= class;
                        // SAFETY: a parked block belongs to no buffer.
                        unsafe { self.device.backend.free(p, class) };
                    }
                }
            }
        }
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

/// Device memory holding `len` elements of one dtype. Freed (into the cache) when dropped.
pub struct GpuBuffer {
    ptr: u64,
    len: usize,
    dtype: DType,
    capacity: usize,
    device: Arc<GpuDevice>,
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

/// One kernel argument.
#[derive(Clone, Copy, Debug)]
pub enum Arg {
    Ptr(u64),
    I32(i32),
    U32(u32),
    I64(i64),
    U64(u64),
    F32(f32),
    F64(f64),
}

impl Arg {
    fn kind(&self) -> ArgKind {
        match self {
            Arg::Ptr(_) => ArgKind::Ptr,
            Arg::I32(_) => ArgKind::I32,
            Arg::U32(_) => ArgKind::U32,
            Arg::I64(_) => ArgKind::I64,
            Arg::U64(_) => ArgKind::U64,
            Arg::F32(_) => ArgKind::F32,
            Arg::F64(_) => ArgKind::F64,
        }
    }

    /// A pointer to the value itself, as cuLaunchKernel's `kernelParams` wants.
    fn as_mut_ptr(&mut self) -> *mut c_void {
        match self {
            Arg::Ptr(v) => v as *mut u64 as *mut c_void,
            Arg::I32(v) => v as *mut i32 as *mut c_void,
            Arg::U32(v) => v as *mut u32 as *mut c_void,
            Arg::I64(v) => v as *mut i64 as *mut c_void,
            Arg::U64(v) => v as *mut u64 as *mut c_void,
            Arg::F32(v) => v as *mut f32 as *mut c_void,
            Arg::F64(v) => v as *mut f64 as *mut c_void,
        }
    }
}

/// A kernel launch being put together: name, dimensions, arguments in order.
#[derive(Debug)]
pub struct KernelCall {
    pub name: &'static str,
    pub dims: LaunchDims,
    args: Vec<Arg>,
    /// The first byte of every buffer passed, for a graph being captured to keep track of.
    buffers: Vec<u64>,
}

/// Dynamic shared memory a kernel may use without `cudaFuncSetAttribute` on any GPU.
const MAX_DYNAMIC_SHARED: u32 = 48 * 1024;

/// Threads per block for one-thread-per-element kernels (SCRATCHNET_BLOCK in common.cuh).
pub const BLOCK: u32 = 256;

/// Upper bound on blocks for grid-stride kernels: enough to fill any current GPU many times
/// over, few enough that each thread handles several elements of a huge tensor.
const MAX_GRID_STRIDE_BLOCKS: usize = 1 << 16;

impl KernelCall {
    pub fn new(name: &'static str) -> KernelCall {
        KernelCall {
            name,
            dims: LaunchDims { grid: (1, 1, 1), block: (1, 1, 1), shared_bytes: 0 },
            args: Vec::new(),
            buffers: Vec::new(),
        }
    }

    /// One thread per element with `BLOCK`-thread blocks; kernels launched this way use a
    /// grid-stride loop, so the grid may be capped below `n / BLOCK`.
    pub fn elementwise(name: &'static str, n: usize) -> KernelCall {
        let blocks = n.div_ceil(BLOCK as usize).min(MAX_GRID_STRIDE_BLOCKS) as u32;
        KernelCall::new(name).grid(blocks, 1, 1).block(BLOCK, 1, 1)
    }

    /// Enough `BLOCK`-thread blocks for one thread per group of 4 of `n` elements (the
    /// kernels that use 16-byte accesses), capped like [`KernelCall::elementwise`].
    pub fn vec4(name: &'static str, n: usize) -> KernelCall {
        KernelCall::elementwise(name, n.div_ceil(4))
    }

    /// One `BLOCK`-thread block per item (a channel, a row, a plane).
    pub fn block_per_item(name: &'static str, items: usize) -> Result<KernelCall> {
        let blocks = u32::try_from(items)
            .ok()
            .filter(|&b| b < (1u32 << 31))
            .ok_or_else(|| Error::Device(format!("kernel {name}: {items} blocks are too many")))?;
        Ok(KernelCall::new(name).grid(blocks, 1, 1).block(BLOCK, 1, 1))
    }

    pub fn grid(mut self, x: u32, y: u32, z: u32) -> Self {
        self.dims.grid = (x, y, z);
        self
    }

    pub fn block(mut self, x: u32, y: u32, z: u32) -> Self {
        self.dims.block = (x, y, z);
        self
    }

    pub fn shared_bytes(mut self, bytes: u32) -> Self {
        self.dims.shared_bytes = bytes;
        self
    }

    /// A buffer argument (input or output).
    pub fn buf(mut self, b: &GpuBuffer) -> Self {
        self.args.push(Arg::Ptr(b.ptr));
        self.buffers.push(b.ptr);
        self
    }

    /// A buffer from element `first` on (a part of it, such as one group's channels).
    pub fn buf_from(mut self, b: &GpuBuffer, first: usize) -> Result<Self> {
        if first > b.len {
            return Err(Error::Device(format!("kernel {}: element {first} of a buffer of {}", self.name, b.len)));
        }
        self.args.push(Arg::Ptr(b.ptr + (first * b.dtype.size_in_bytes()) as u64));
        self.buffers.push(b.ptr);
        Ok(self)
    }

    /// An optional buffer: a null pointer when absent (the kernel tests for it).
    pub fn buf_or_null(mut self, b: Option<&GpuBuffer>) -> Self {
        self.args.push(Arg::Ptr(b.map_or(0, |b| b.ptr)));
        self.buffers.extend(b.map(|b| b.ptr));
        self
    }

    pub fn i32(mut self, v: i32) -> Self {
        self.args.push(Arg::I32(v));
        self
    }

    pub fn u32(mut self, v: u32) -> Self {
        self.args.push(Arg::U32(v));
        self
    }

    pub fn i64(mut self, v: i64) -> Self {
        self.args.push(Arg::I64(v));
        self
    }

    pub fn u64(mut self, v: u64) -> Self {
        self.args.push(Arg::U64(v));
        self
    }

    pub fn f32(mut self, v: f32) -> Self {
        self.args.push(Arg::F32(v));
        self
    }

    pub fn f64(mut self, v: f64) -> Self {
        self.args.push(Arg::F64(v));
        self
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
