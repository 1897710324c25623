//! The CUDA device, on the driver API through cudarc (loaded dynamically, so a build needs
//! no CUDA installation and a machine without a driver still runs the binary).
//!
//! One context (the device's primary context) and per GPU a main stream and a few side
//! streams (see [`super::streams`]: work goes to the calling thread's current one); the fatbin that
//! build.rs embedded is loaded once, and kernel handles are looked up once each. Every driver
//! call is checked and its error mapped to a message that says what was being done.
//!
//! cudarc panics when it cannot load `libcuda` or a symbol in it, so everything here first
//! probes for the library and runs the first driver calls under `catch_unwind`: a machine
//! without a GPU gets an error that says what is missing, never a panic.

use std::collections::HashMap;
use std::ffi::{CString, c_void};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::{result, sys};

use super::Device;
use super::gpu::{Backend, GpuDevice, LaunchDims};
use super::kernels::{CUDA_ARCHS, FATBIN, KernelInfo};
use super::streams::SIDE_STREAMS;
use crate::error::{Error, Result};

/// What the probe found about one GPU.
#[derive(Clone, Debug)]
pub struct GpuInfo {
    pub ordinal: usize,
    pub name: String,
    pub compute_capability: (i32, i32),
    pub memory_bytes: usize,
}

/// What the probe found about the driver and its GPUs.
#[derive(Clone, Debug)]
pub struct CudaInfo {
    /// e.g. (13, 0) for driver 580.
    pub driver_version: (i32, i32),
    pub gpus: Vec<GpuInfo>,
}

/// Runs `f`, turning a panic (cudarc's way of reporting a missing library or symbol) into
/// `None` without printing the panic message.
pub(crate) fn quietly<T>(f: impl FnOnce() -> T) -> Option<T> {
    static HOOK: Mutex<()> = Mutex::new(());
    let _only_one = HOOK.lock().unwrap_or_else(|p| p.into_inner());
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let r = std::panic::catch_unwind(AssertUnwindSafe(f));
    std::panic::set_hook(previous);
    r.ok()
}

fn driver_error(what: &str, e: result::DriverError) -> String {
    format!("{what}: {e:?}")
}

/// Is a driver there, and which GPUs does it see?
pub fn probe() -> std::result::Result<CudaInfo, String> {
    static PROBE: OnceLock<std::result::Result<CudaInfo, String>> = OnceLock::new();
    PROBE.get_or_init(probe_uncached).clone()
}

fn probe_uncached() -> std::result::Result<CudaInfo, String> {
    // SAFETY: only tries to open the library.
    let present = quietly(|| unsafe { sys::is_culib_present() }).unwrap_or(false);
    if !present {
        return Err("no NVIDIA driver: libcuda.so could not be loaded (is the NVIDIA driver installed?)".into());
    }
    // The version first: cuDriverGetVersion is in every driver, while cudarc resolves the
    // other functions under their CUDA 13 names, which an older driver lacks.
    let version = quietly(|| {
        let mut version = 0;
        // SAFETY: writes one int.
        unsafe { sys::cuDriverGetVersion(&mut version) }.result().map(|()| version)
    })
    .ok_or_else(|| "libcuda.so loaded, but it has no cuDriverGetVersion: it is not an NVIDIA driver".to_string())?
    .map_err(|e| driver_error("cuDriverGetVersion", e))?;
    if let Some(why) = driver_too_old(version) {
        return Err(why);
    }
    quietly(|| -> std::result::Result<CudaInfo, String> {
        result::init().map_err(|e| driver_error("the CUDA driver failed to initialise (cuInit)", e))?;
        let count = result::device::get_count().map_err(|e| driver_error("cuDeviceGetCount", e))?;
        let mut gpus = Vec::new();
        for ordinal in 0..count.max(0) {
            let dev = result::device::get(ordinal).map_err(|e| driver_error("cuDeviceGet", e))?;
            let name = result::device::get_name(dev).unwrap_or_else(|_| "unknown GPU".into());
            // SAFETY: `dev` came from device::get.
            let (major, minor, mem) = unsafe {
                (
                    result::device::get_attribute(
                        dev,
                        sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR,
                    )
                    .unwrap_or(0),
                    result::device::get_attribute(
                        dev,
                        sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR,
                    )
                    .unwrap_or(0),
                    result::device::total_mem(dev).unwrap_or(0),
                )
            };
            gpus.push(GpuInfo {
                ordinal: ordinal as usize,
                name,
                compute_capability: (major, minor),
                memory_bytes: mem,
            });
        }
        Ok(CudaInfo { driver_version: (version / 1000, (version % 1000) / 10), gpus })
    })
    .unwrap_or_else(|| {
        Err(format!(
            "the NVIDIA driver (CUDA {}) lacks a function of the CUDA {}.{} driver API that scratchnet calls",
            version_text(version),
            MIN_DRIVER.0,
            MIN_DRIVER.1
        ))
    })
}

/// "13.0" for the driver API version 13000.
fn version_text(version: i32) -> String {
    format!("{}.{}", version / 1000, (version % 1000) / 10)
}

/// Why a driver of API version `version` (as cuDriverGetVersion gives it) cannot run
/// scratchnet, or `None` if it can.
fn driver_too_old(version: i32) -> Option<String> {
    ((version / 1000, (version % 1000) / 10) < MIN_DRIVER).then(|| {
        format!(
            "the NVIDIA driver is too old: it supports CUDA {}, and scratchnet needs CUDA {}.{} \
             (driver {MIN_DRIVER_RELEASE} or newer)",
            version_text(version),
            MIN_DRIVER.0,
            MIN_DRIVER.1
        )
    })
}

/// Whether the embedded kernels can run on a GPU of this compute capability: SASS for its
/// exact architecture, or PTX of an older one that the driver compiles on load.
pub fn kernels_run_on(cc: (i32, i32)) -> std::result::Result<(), String> {
    if FATBIN.is_empty() {
        return Err("the GPU kernels were not compiled: nvcc was not found when scratchnet was built \
                    (run scripts/setup-cuda.sh, then cargo build again)"
            .into());
    }
    let runs = CUDA_ARCHS.iter().filter_map(|a| a.parse::<i32>().ok()).any(|a| sass_or_ptx_runs(a, newest_arch(), cc));
    if runs {
        Ok(())
    } else {
        let arch = cc.0 * 10 + cc.1;
        Err(format!(
            "the kernels were compiled for sm_{} but this GPU is sm_{arch} (set SCRATCHNET_CUDA_ARCHS={arch} and rebuild)",
            CUDA_ARCHS.join(", sm_")
        ))
    }
}

fn newest_arch() -> i32 {
    CUDA_ARCHS.iter().filter_map(|a| a.parse::<i32>().ok()).max().unwrap_or(0)
}

/// Whether code compiled for architecture `arch` (e.g. 86) runs on a GPU of compute
/// capability `cc`: machine code (SASS) for sm_XY runs on sm_XZ with Z ≥ Y; the PTX kept for
/// the newest architecture is compiled by the driver for any GPU at least that new.
fn sass_or_ptx_runs(arch: i32, newest: i32, cc: (i32, i32)) -> bool {
    let (major, minor) = (arch / 10, arch % 10);
    (cc.0 == major && cc.1 >= minor) || (arch == newest && cc.0 * 10 + cc.1 >= newest)
}

/// The oldest driver that loads what nvcc 13.0 produces, and whose functions cudarc's
/// `cuda-13000` bindings resolve.
const MIN_DRIVER: (i32, i32) = (13, 0);
/// The first driver release with CUDA 13.0.
const MIN_DRIVER_RELEASE: u32 = 580;

/// Why `cuda:N` is not usable, or `Ok` if it is.
pub fn check(ordinal: usize) -> std::result::Result<GpuInfo, String> {
    let info = probe()?;
    if info.gpus.is_empty() {
        return Err("the NVIDIA driver is installed but sees no GPU".into());
    }
    let gpu = info.gpus.iter().find(|g| g.ordinal == ordinal).cloned().ok_or_else(|| {
        format!("there is no cuda:{ordinal}; this machine has cuda:0 to cuda:{}", info.gpus.len() - 1)
    })?;
    kernels_run_on(gpu.compute_capability)?;
    Ok(gpu)
}

/// The device `cuda:ordinal`, opened on first use.
pub fn device(ordinal: usize) -> Result<Arc<GpuDevice>> {
    static OPEN: OnceLock<Mutex<HashMap<usize, Arc<GpuDevice>>>> = OnceLock::new();
    let mut open = OPEN.get_or_init(|| Mutex::new(HashMap::new())).lock().unwrap_or_else(|p| p.into_inner());
    if let Some(d) = open.get(&ordinal) {
        return Ok(Arc::clone(d));
    }
    let gpu = check(ordinal).map_err(|e| Error::Device(format!("cuda:{ordinal} is not usable: {e}")))?;
    let backend = quietly(|| CudaBackend::open(gpu)).unwrap_or_else(|| {
        Err(Error::Device(format!("cuda:{ordinal}: the driver panicked while opening the device")))
    })?;
    let d = GpuDevice::new(Box::new(backend), super::cache_requested());
    open.insert(ordinal, Arc::clone(&d));
    Ok(d)
}

struct CudaBackend {
    info: GpuInfo,
    /// The fatbin, aligned; kept for the module's life (the driver may load kernels lazily).
    _image: Vec<u64>,
    ctx: sys::CUcontext,
    /// The main stream, then the side streams.
    streams: [sys::CUstream; SIDE_STREAMS + 1],
    /// Events that order the streams at a fork (one) and a join (one per side stream). An
    /// event may be recorded again as soon as a wait on it has been queued: the wait is for
    /// the record that came before it.
    fork_event: sys::CUevent,
    join_events: [sys::CUevent; SIDE_STREAMS],
    module: sys::CUmodule,
    functions: Mutex<HashMap<usize, sys::CUfunction>>,
    /// `SCRATCHNET_CUDA_SYNC=1`: wait for every kernel, so a failing one is named.
    sync_each_launch: bool,
    /// Events no longer in use (as u64 handles), kept for the next record_event.
    free_events: Mutex<Vec<u64>>,
    /// Whether the stream is being captured into a graph (no per-launch waits then).
    capturing: std::sync::atomic::AtomicBool,
    /// Per other GPU (by ordinal): whether this context reads its memory directly, found and
    /// enabled on the first copy from it.
    peers: Mutex<HashMap<usize, bool>>,
}

// SAFETY: driver handles (context, stream, module, function) may be used from any thread;
// every call makes the context current on the calling thread first.
unsafe impl Send for CudaBackend {}
// SAFETY: as above; the function cache is behind a mutex.
unsafe impl Sync for CudaBackend {}

impl CudaBackend {
    fn open(info: GpuInfo) -> Result<CudaBackend> {
        let name = format!("cuda:{}", info.ordinal);
        let err = |what: &str, e: result::DriverError| Error::Device(format!("{name}: {what}: {e:?}"));
        let dev = result::device::get(info.ordinal as i32).map_err(|e| err("cuDeviceGet", e))?;
        // SAFETY: `dev` came from device::get; the primary context lives for the process.
        let ctx = unsafe { result::primary_ctx::retain(dev) }.map_err(|e| err("retaining the primary context", e))?;
        // SAFETY: a context just retained.
        unsafe { result::ctx::set_current(ctx) }.map_err(|e| err("cuCtxSetCurrent", e))?;
        let mut streams = [std::ptr::null_mut(); SIDE_STREAMS + 1];
        for s in &mut streams {
            *s = result::stream::create(result::stream::StreamKind::NonBlocking)
                .map_err(|e| err("creating a stream", e))?;
        }
        let ordering_event = || {
            result::event::create(sys::CUevent_flags::CU_EVENT_DISABLE_TIMING).map_err(|e| err("creating an event", e))
        };
        let fork_event = ordering_event()?;
        let mut join_events = [std::ptr::null_mut(); SIDE_STREAMS];
        for e in &mut join_events {
            *e = ordering_event()?;
        }
        // The driver wants the image 8-byte aligned; include_bytes! promises only 1.
        let mut image = vec![0u64; FATBIN.len().div_ceil(8)];
        bytemuck::cast_slice_mut::<u64, u8>(&mut image)[..FATBIN.len()].copy_from_slice(FATBIN);
        // SAFETY: a fatbin produced by nvcc, aligned, alive during the call.
        let module = unsafe { result::module::load_data(image.as_ptr() as *const c_void) }.map_err(|e| {
            Error::Device(format!(
                "{name}: loading the embedded kernels (compiled for sm_{}) on {} (sm_{}{}): {e:?}",
                CUDA_ARCHS.join(", sm_"),
                info.name,
                info.compute_capability.0,
                info.compute_capability.1
            ))
        })?;
        Ok(CudaBackend {
            info,
            _image: image,
            ctx,
            streams,
            fork_event,
            join_events,
            module,
            functions: Mutex::new(HashMap::new()),
            sync_each_launch: std::env::var("SCRATCHNET_CUDA_SYNC").is_ok_and(|v| v == "1"),
            free_events: Mutex::new(Vec::new()),
            capturing: std::sync::atomic::AtomicBool::new(false),
            peers: Mutex::new(HashMap::new()),
        })
    }

    fn name(&self) -> String {
        format!("cuda:{}", self.info.ordinal)
    }

    fn err(&self, what: &str, e: result::DriverError) -> Error {
        Error::Device(format!("{}: {what}: {e:?}", self.name()))
    }

    /// The calling thread's current stream.
    fn stream(&self) -> sys::CUstream {
        self.streams[super::streams::current_on(Device::Cuda(self.info.ordinal)).min(SIDE_STREAMS)]
    }

    fn main_stream(&self) -> sys::CUstream {
        self.streams[0]
    }

    fn bind(&self) -> Result<()> {
        // SAFETY: the context was retained in `open` and is never released.
        unsafe { result::ctx::set_current(self.ctx) }.map_err(|e| self.err("cuCtxSetCurrent", e))
    }

    /// Whether this GPU can read the memory of GPU `peer` directly; the first time yes,
    /// enables it for this context (a context may read another's memory only once enabled).
    fn peer_access(&self, peer: usize, peer_ctx: sys::CUcontext) -> Result<bool> {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(&can) = peers.get(&peer) {
            return Ok(can);
        }
        self.bind()?;
        let device = |n: usize| result::device::get(n as i32).map_err(|e| self.err("cuDeviceGet", e));
        let (me, other) = (device(self.info.ordinal)?, device(peer)?);
        let mut can = 0;
        // SAFETY: writes one int; both are valid devices.
        unsafe { sys::cuDeviceCanAccessPeer(&mut can, me, other) }
            .result()
            .map_err(|e| self.err("cuDeviceCanAccessPeer", e))?;
        let can = can != 0;
        if can {
            // SAFETY: our context is current; the peer's context is retained for the process.
            let enabled = unsafe { sys::cuCtxEnablePeerAccess(peer_ctx, 0) };
            if enabled != sys::cudaError_enum::CUDA_SUCCESS
                && enabled != sys::cudaError_enum::CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED
            {
                return Err(Error::Device(format!(
                    "{}: enabling peer access to cuda:{peer}: {enabled:?}",
                    self.name()
                )));
            }
        }
        peers.insert(peer, can);
        Ok(can)
    }

    fn function(&self, index: usize, kernel: &KernelInfo) -> Result<sys::CUfunction> {
        let mut cache = self.functions.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(&f) = cache.get(&index) {
            return Ok(f);
        }
        let cname = CString::new(kernel.name).map_err(|_| Error::Device(format!("bad kernel name {}", kernel.name)))?;
        // SAFETY: the module is loaded for the life of the process.
        let f = unsafe { result::module::get_function(self.module, cname) }
            .map_err(|e| self.err(&format!("finding kernel {}", kernel.name), e))?;
        cache.insert(index, f);
        Ok(f)
    }
}

impl Backend for CudaBackend {
    fn device(&self) -> Device {
        Device::Cuda(self.info.ordinal)
    }

    fn name(&self) -> String {
        self.info.name.clone()
    }

    fn compute_capability(&self) -> Option<(i32, i32)> {
        Some(self.info.compute_capability)
    }

    unsafe fn malloc(&self, bytes: usize) -> Result<u64> {
        self.bind()?;
        // SAFETY: plain allocation in the current context.
        unsafe { result::malloc_sync(bytes) }.map_err(|e| {
            if e.0 == sys::cudaError_enum::CUDA_ERROR_OUT_OF_MEMORY {
                Error::out_of_memory(self.name(), bytes, "a buffer")
            } else {
                self.err(&format!("allocating {bytes} bytes"), e)
            }
        })
    }

    unsafe fn free(&self, ptr: u64, _bytes: usize) {
        if self.bind().is_ok() {
            // Work queued on the stream may still use the block: wait for it first.
            // SAFETY: our stream; the pointer came from malloc (caller's contract).
            unsafe {
                let _ = result::stream::synchronize(self.main_stream());
                let _ = result::free_sync(ptr);
            }
        }
    }

    unsafe fn upload(&self, dst: u64, src: &[u8]) -> Result<()> {
        self.bind()?;
        // Stream-ordered, so it lands before any later kernel; a pageable source is copied
        // to a staging buffer before the call returns, so `src` may be freed afterwards.
        // SAFETY: `dst` holds src.len() bytes (caller's contract).
        unsafe { result::memcpy_htod_async(dst, src, self.stream()) }.map_err(|e| self.err("copying to the device", e))
    }

    unsafe fn download(&self, dst: &mut [u8], src: u64) -> Result<()> {
        self.bind()?;
        // SAFETY: `src` holds dst.len() bytes (caller's contract); the synchronize makes
        // the copy complete before `dst` is read.
        unsafe {
            result::memcpy_dtoh_async(dst, src, self.stream()).map_err(|e| self.err("copying from the device", e))?;
            result::stream::synchronize(self.stream())
                .map_err(|e| self.err("waiting for the device (an earlier kernel failed?)", e))
        }
    }

    unsafe fn copy(&self, dst: u64, src: u64, bytes: usize) -> Result<()> {
        self.bind()?;
        // SAFETY: both hold `bytes` bytes (caller's contract).
        unsafe { result::memcpy_dtod_async(dst, src, bytes, self.stream()) }
            .map_err(|e| self.err("copying on the device", e))
    }

    unsafe fn memset(&self, dst: u64, byte: u8, bytes: usize) -> Result<()> {
        self.bind()?;
        // SAFETY: `dst` holds `bytes` bytes (caller's contract).
        unsafe { result::memset_d8_async(dst, byte, bytes, self.stream()) }.map_err(|e| self.err("memset", e))
    }

    unsafe fn launch(&self, index: usize, kernel: &KernelInfo, d: LaunchDims, args: &mut [*mut c_void]) -> Result<()> {
        self.bind()?;
        let f = self.function(index, kernel)?;
        // SAFETY: the arguments match the signature and point at live device memory (the
        // caller's contract); launch dimensions were checked by GpuDevice::launch.
        unsafe { result::launch_kernel(f, d.grid, d.block, d.shared_bytes, self.stream(), args) }
            .map_err(|e| self.err(&format!("launching {} with {:?}", kernel.name, d), e))?;
        if self.sync_each_launch && !self.capturing.load(std::sync::atomic::Ordering::Relaxed) {
            // A fault surfaces at the next synchronisation; doing it here names the kernel.
            // SAFETY: our stream.
            unsafe { result::stream::synchronize(self.stream()) }
                .map_err(|e| self.err(&format!("kernel {} failed", kernel.name), e))?;
        }
        Ok(())
    }

    fn synchronize(&self) -> Result<()> {
        self.bind()?;
        // Every stream: called inside a fork, the main stream alone would not cover the side
        // streams' work (outside one, the side streams are idle and this costs nothing).
        for &s in &self.streams {
            // SAFETY: our streams.
            unsafe { result::stream::synchronize(s) }
                .map_err(|e| self.err("waiting for the device (a kernel failed?)", e))?;
        }
        Ok(())
    }

    fn record_event(&self) -> Result<u64> {
        self.bind()?;
        let reused = self.free_events.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let event = match reused {
            Some(e) => e as sys::CUevent,
            None => result::event::create(sys::CUevent_flags::CU_EVENT_DEFAULT)
                .map_err(|e| self.err("creating an event", e))?,
        };
        // SAFETY: a live event and our stream.
        unsafe { result::event::record(event, self.stream()) }.map_err(|e| self.err("recording an event", e))?;
        Ok(event as u64)
    }

    fn elapsed_ms(&self, start: u64, end: u64) -> Result<f64> {
        self.bind()?;
        // SAFETY: both are live events recorded on our stream (record_event's handles).
        unsafe {
            result::event::synchronize(end as sys::CUevent).map_err(|e| self.err("waiting for an event", e))?;
            result::event::elapsed(start as sys::CUevent, end as sys::CUevent)
                .map(f64::from)
                .map_err(|e| self.err("reading the time between two events", e))
        }
    }

    fn release_event(&self, event: u64) {
        // Events are kept for reuse: a profiled step records two per op.
        self.free_events.lock().unwrap_or_else(|p| p.into_inner()).push(event);
    }

    fn wait_event(&self, event: u64) -> Result<()> {
        self.bind()?;
        // SAFETY: a live event (of this GPU or another) and our stream.
        unsafe {
            result::stream::wait_event(
                self.stream(),
                event as sys::CUevent,
                sys::CUevent_wait_flags::CU_EVENT_WAIT_DEFAULT,
            )
        }
        .map_err(|e| self.err("waiting for another device's event", e))
    }

    unsafe fn copy_from_peer(&self, dst: u64, peer: &dyn Backend, src: u64, bytes: usize) -> Result<bool> {
        let Device::Cuda(other) = peer.device() else { return Ok(false) };
        let peer_ctx = peer.raw_context() as sys::CUcontext;
        if !self.peer_access(other, peer_ctx)? {
            return Ok(false);
        }
        self.bind()?;
        // SAFETY: both hold `bytes` bytes in their contexts (the caller's contract).
        unsafe { result::memcpy_peer_async(self.ctx, dst, peer_ctx, src, bytes, self.stream()) }
            .map_err(|e| self.err(&format!("copying from cuda:{other}"), e))?;
        Ok(true)
    }

    fn can_access_peer(&self, peer: &dyn Backend) -> Result<bool> {
        match peer.device() {
            Device::Cuda(other) => self.peer_access(other, peer.raw_context() as sys::CUcontext),
            _ => Ok(false),
        }
    }

    fn raw_stream(&self) -> u64 {
        self.stream() as u64
    }

    fn raw_context(&self) -> u64 {
        self.ctx as u64
    }

    fn begin_capture(&self) -> Result<()> {
        self.bind()?;
        // Relaxed: the caching allocator may still call cuMemAlloc for a size it has not seen,
        // which the stricter modes forbid during a capture.
        let mode = sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED;
        // SAFETY: our stream.
        unsafe { result::stream::begin_capture(self.main_stream(), mode) }
            .map_err(|e| self.err("starting to capture a graph", e))?;
        self.capturing.store(true, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    fn end_capture(&self) -> Result<u64> {
        self.bind()?;
        self.capturing.store(false, std::sync::atomic::Ordering::Relaxed);
        // SAFETY: our stream, in capture mode since begin_capture.
        let graph = unsafe { result::stream::end_capture(self.main_stream()) }
            .map_err(|e| self.err("ending the capture (did the step wait for the device?)", e))?;
        // SAFETY: a graph just captured; the executable graph does not need it afterwards.
        let exec = unsafe { result::graph::instantiate(graph, sys::CUgraphInstantiate_flags(0)) };
        // SAFETY: as above.
        let _ = unsafe { result::graph::destroy(graph) };
        let exec = exec.map_err(|e| self.err("instantiating the captured graph", e))?;
        Ok(exec as u64)
    }

    fn replay(&self, graph: u64) -> Result<()> {
        self.bind()?;
        // SAFETY: an executable graph from end_capture, not yet released.
        unsafe { result::graph::launch(graph as sys::CUgraphExec, self.main_stream()) }
            .map_err(|e| self.err("launching the graph", e))
    }

    fn fork(&self, count: usize) -> Result<()> {
        self.bind()?;
        // SAFETY: our streams and event.
        unsafe {
            result::event::record(self.fork_event, self.main_stream())
                .map_err(|e| self.err("marking the fork of the side streams", e))?;
            for &side in &self.streams[1..=count.min(SIDE_STREAMS)] {
                result::stream::wait_event(side, self.fork_event, sys::CUevent_wait_flags::CU_EVENT_WAIT_DEFAULT)
                    .map_err(|e| self.err("making a side stream wait for the main one", e))?;
            }
        }
        Ok(())
    }

    fn join(&self, count: usize) -> Result<()> {
        self.bind()?;
        for i in 0..count.min(SIDE_STREAMS) {
            // SAFETY: our streams and events.
            unsafe {
                result::event::record(self.join_events[i], self.streams[i + 1])
                    .map_err(|e| self.err("marking the end of a side stream's work", e))?;
                result::stream::wait_event(
                    self.main_stream(),
                    self.join_events[i],
                    sys::CUevent_wait_flags::CU_EVENT_WAIT_DEFAULT,
                )
                .map_err(|e| self.err("making the main stream wait for a side stream", e))?;
            }
        }
        Ok(())
    }

    fn release_graph(&self, graph: u64) {
        if self.bind().is_ok() {
            // SAFETY: from end_capture, released once (CapturedGraph's drop).
            let _ = unsafe { result::graph::exec_destroy(graph as sys::CUgraphExec) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_driver_older_than_cuda_13_is_named_too_old_with_the_version_needed() {
        let why = driver_too_old(12020).unwrap();
        assert!(why.contains("too old") && why.contains("CUDA 12.2") && why.contains("CUDA 13.0"), "{why}");
        assert!(why.contains("driver 580 or newer"), "{why}");
        assert_eq!(driver_too_old(13000), None);
        assert_eq!(driver_too_old(13020), None);
    }

    #[test]
    fn compiled_code_runs_on_newer_minor_versions_and_ptx_on_newer_gpus() {
        // SASS for sm_80 runs on sm_86 and sm_87, not on sm_75 or sm_90.
        assert!(sass_or_ptx_runs(80, 90, (8, 6)));
        assert!(sass_or_ptx_runs(80, 90, (8, 7)));
        assert!(!sass_or_ptx_runs(80, 90, (7, 5)));
        assert!(!sass_or_ptx_runs(80, 90, (9, 0)));
        // The PTX of the newest architecture is compiled for anything at least as new.
        assert!(sass_or_ptx_runs(90, 90, (10, 0)));
        assert!(sass_or_ptx_runs(90, 90, (12, 0)));
        assert!(!sass_or_ptx_runs(86, 90, (10, 0)));
    }
}
