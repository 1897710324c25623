//! What build.rs compiled: the table of kernels with their parameter kinds (read from the
//! `__global__` signatures in `kernels/*.cu`), and the fatbin for the GPU.

/// How one kernel parameter is passed: a device pointer or a scalar of a given type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArgKind {
    Ptr,
    I32,
    U32,
    I64,
    U64,
    F32,
    F64,
}

/// One `extern "C" __global__` function.
#[derive(Clone, Copy, Debug)]
pub struct KernelInfo {
    pub name: &'static str,
    /// The file under `kernels/` that defines it.
    pub file: &'static str,
    /// True for the emulator's own test kernels (`kernels/emu/tests/`), which nvcc never sees.
    pub emu_only: bool,
    pub params: &'static [ArgKind],
}

include!(concat!(env!("OUT_DIR"), "/kernel_table.rs"));

/// The kernels compiled by nvcc (empty when the build found no nvcc).
pub static FATBIN: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/kernels.fatbin"));

/// The kernel called `name`, and its index in [`KERNELS`].
pub fn find(name: &str) -> Option<(usize, &'static KernelInfo)> {
    KERNELS.iter().enumerate().find(|(_, k)| k.name == name)
}
