//! The launch path: an op puts a [`KernelCall`] together (the kernel's name, launch
//! dimensions, arguments in order) and [`GpuDevice::launch`] checks it before the backend
//! runs it.
//!
//! A file of its own because the checks are what make the emulator a faithful stand-in: the
//! arguments are held to the kernel's signature (build.rs's table, [`crate::device::kernels`])
//! and the dimensions to the limits of every GPU, so a launch the GPU would refuse or misread
//! fails on the emulator too. What is noted of launches is here as well: the count per stream,
//! and, when asked, each kernel's name and dimensions (the launch log).

use std::ffi::c_void;
use std::sync::atomic::Ordering;

use super::{GpuBuffer, GpuDevice};
use crate::device::kernels::{self, ArgKind};
use crate::device::streams;
use crate::error::{Error, Result};

/// Grid and block dimensions, and dynamic shared memory in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaunchDims {
    pub grid: (u32, u32, u32),
    pub block: (u32, u32, u32),
    pub shared_bytes: u32,
}

impl LaunchDims {
    /// The limits every GPU since compute capability 3.0 has, checked here so that the
    /// emulator (which would accept more) fails the same way a GPU would.
    fn check(&self, kernel: &str) -> Result<()> {
        let threads = self.block.0 as u64 * self.block.1 as u64 * self.block.2 as u64;
        if threads == 0 || threads > 1024 || self.block.2 > 64 {
            return Err(Error::Device(format!(
                "kernel {kernel}: a block of {threads} threads {:?} (1 to 1024 allowed, at most 64 in z)",
                self.block
            )));
        }
        if self.grid.1 > 65535 || self.grid.2 > 65535 || self.grid.0 > i32::MAX as u32 {
            return Err(Error::Device(format!(
                "kernel {kernel}: grid {:?} exceeds the GPU's limits (2^31−1 in x, 65535 in y and z)",
                self.grid
            )));
        }
        if self.shared_bytes > MAX_DYNAMIC_SHARED {
            return Err(Error::Device(format!(
                "kernel {kernel}: {} bytes of dynamic shared memory (at most {MAX_DYNAMIC_SHARED} without opting in)",
                self.shared_bytes
            )));
        }
        Ok(())
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
        self.args.push(Arg::Ptr(b.ptr()));
        self.buffers.push(b.ptr());
        self
    }

    /// A buffer from element `first` on (a part of it, such as one group's channels).
    pub fn buf_from(mut self, b: &GpuBuffer, first: usize) -> Result<Self> {
        if first > b.len() {
            return Err(Error::Device(format!("kernel {}: element {first} of a buffer of {}", self.name, b.len())));
        }
        self.args.push(Arg::Ptr(b.ptr() + (first * b.dtype().size_in_bytes()) as u64));
        self.buffers.push(b.ptr());
        Ok(self)
    }

    /// An optional buffer: a null pointer when absent (the kernel tests for it).
    pub fn buf_or_null(mut self, b: Option<&GpuBuffer>) -> Self {
        self.args.push(Arg::Ptr(b.map_or(0, |b| b.ptr())));
        self.buffers.extend(b.map(|b| b.ptr()));
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

impl GpuDevice {
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
        d.check(call.name)?;
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

    /// Starts noting every kernel launched (name and dimensions), for `scratchnet kernel` to
    /// say which kernels a variant ran and look up their ptxas figures.
    pub fn start_launch_log(&self) {
        *self.launch_log.lock().unwrap_or_else(|p| p.into_inner()) = Some(Vec::new());
    }

    /// The launches noted since [`GpuDevice::start_launch_log`], which stops noting them.
    pub fn take_launch_log(&self) -> Vec<(&'static str, LaunchDims)> {
        self.launch_log.lock().unwrap_or_else(|p| p.into_inner()).take().unwrap_or_default()
    }
}
