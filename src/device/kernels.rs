//! What build.rs compiled: the table of kernels with their parameter kinds (read from the
//! `__global__` signatures in `kernels/*.cu`), and the fatbin for the GPU.

// Declared in a file of its own, which build.rs compiles too: it writes the table below.
pub use super::arg_kind::ArgKind;

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

/// What ptxas reported when it compiled the fatbin (`-Xptxas -v`: registers, stack frame and
/// spills of every kernel for every architecture); empty when built without nvcc.
pub static PTXAS_REPORT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/ptxas_report.txt"));

/// One kernel's resources for one architecture, as ptxas reported them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelResources {
    pub kernel: String,
    /// e.g. "sm_90".
    pub arch: String,
    pub registers: u32,
    /// Bytes of local memory per thread for the stack (arrays indexed at run time, spills).
    pub stack_bytes: u32,
    pub spill_store_bytes: u32,
    /// Static shared memory per block, in bytes.
    pub shared_bytes: u32,
}

/// What one streaming multiprocessor of an architecture holds, for occupancy: the limits of
/// NVIDIA's occupancy calculator (CUDA C++ Programming Guide, "Compute Capabilities").
struct SmLimits {
    warps: u32,
    blocks: u32,
    registers: u32,
    shared_bytes: u32,
}

fn sm_limits(arch: &str) -> Option<SmLimits> {
    let (warps, blocks, shared_kib) = match arch {
        "sm_75" => (32, 16, 64),
        "sm_80" => (64, 32, 164),
        "sm_86" => (48, 16, 100),
        "sm_89" => (48, 24, 100),
        "sm_90" => (64, 32, 228),
        _ => return None,
    };
    Some(SmLimits { warps, blocks, registers: 65536, shared_bytes: shared_kib << 10 })
}

impl KernelResources {
    /// The theoretical occupancy of a launch of `threads` threads per block with `dynamic`
    /// bytes of dynamic shared memory: the resident warps per SM (limited by registers,
    /// shared memory, warps and blocks) over the SM's maximum. Registers are allocated per
    /// warp in units of 256; each block also reserves 1 KiB of shared memory for the system.
    pub fn occupancy(&self, threads: u32, dynamic: u32) -> Option<f64> {
        let sm = sm_limits(&self.arch)?;
        let warps_per_block = threads.div_ceil(32).max(1);
        let regs_per_warp = (self.registers.max(1) * 32).div_ceil(256) * 256;
        let by_registers = (sm.registers / regs_per_warp) / warps_per_block;
        let shared = self.shared_bytes + dynamic;
        let by_shared = if shared == 0 { u32::MAX } else { sm.shared_bytes / (shared + 1024) };
        let blocks = by_registers.min(by_shared).min(sm.warps / warps_per_block).min(sm.blocks);
        Some(f64::from(blocks * warps_per_block) / f64::from(sm.warps))
    }
}

/// [`PTXAS_REPORT`] read into one row per kernel and architecture. The report's lines come
/// in this order per kernel: "Compiling entry function 'NAME' for 'sm_XY'", then "N bytes
/// stack frame, N bytes spill stores, N bytes spill loads", then "Used N registers, …".
pub fn kernel_resources(report: &str) -> Vec<KernelResources> {
    let number_before = |line: &str, what: &str| -> Option<u32> {
        let end = line.find(what)?;
        line[..end].trim_end().rsplit([' ', ',']).next()?.parse().ok()
    };
    let mut rows = Vec::new();
    let mut current: Option<KernelResources> = None;
    let mut frame_seen = false;
    for line in report.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            if let Some(done) = current.take() {
                rows.push(done);
            }
            let mut parts = rest.split('\'');
            let kernel = parts.next().unwrap_or_default().to_string();
            let arch = parts.nth(1).unwrap_or_default().to_string();
            current = Some(KernelResources {
                kernel,
                arch,
                registers: 0,
                stack_bytes: 0,
                spill_store_bytes: 0,
                shared_bytes: 0,
            });
            frame_seen = false;
        } else if let Some(k) = current.as_mut() {
            // The first frame line is the entry's own (later ones would be device functions
            // that were not inlined).
            if line.contains("bytes stack frame") && !frame_seen {
                frame_seen = true;
                k.stack_bytes = number_before(line, "bytes stack frame").unwrap_or(0);
                k.spill_store_bytes = number_before(line, "bytes spill stores").unwrap_or(0);
            } else if line.contains("Used") && line.contains("registers") {
                k.registers = line
                    .split("Used")
                    .nth(1)
                    .and_then(|r| r.trim_start().split(' ').next())
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                k.shared_bytes = number_before(line, "bytes smem").unwrap_or(0);
            }
        }
    }
    rows.extend(current);
    rows
}

/// The kernel called `name`, and its index in [`KERNELS`].
pub fn find(name: &str) -> Option<(usize, &'static KernelInfo)> {
    KERNELS.iter().enumerate().find(|(_, k)| k.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_ptxas_reports() {
        let report = "ptxas info    : Compiling entry function 'relu_fwd_f32' for 'sm_90'
ptxas info    : Function properties for relu_fwd_f32
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 16 registers, used 0 barriers
ptxas info    : Compiling entry function 'conv2d_fwd_implicit_gemm_f32' for 'sm_80'
ptxas info    : Function properties for conv2d_fwd_implicit_gemm_f32
    24 bytes stack frame, 12 bytes spill stores, 12 bytes spill loads
ptxas info    : Used 64 registers, used 1 barriers, 8448 bytes smem
";
        let rows = kernel_resources(report);
        assert_eq!(
            rows,
            vec![
                KernelResources {
                    kernel: "relu_fwd_f32".into(),
                    arch: "sm_90".into(),
                    registers: 16,
                    stack_bytes: 0,
                    spill_store_bytes: 0,
                    shared_bytes: 0
                },
                KernelResources {
                    kernel: "conv2d_fwd_implicit_gemm_f32".into(),
                    arch: "sm_80".into(),
                    registers: 64,
                    stack_bytes: 24,
                    spill_store_bytes: 12,
                    shared_bytes: 8448
                },
            ]
        );
    }

    /// The occupancy calculator's arithmetic on sm_90 (64 warps, 32 blocks, 64 K registers,
    /// 228 KiB of shared memory per SM).
    #[test]
    fn occupancy_is_limited_by_registers_shared_memory_and_warps() {
        let k = |registers, shared_bytes| KernelResources {
            kernel: "k".into(),
            arch: "sm_90".into(),
            registers,
            stack_bytes: 0,
            spill_store_bytes: 0,
            shared_bytes,
        };
        // 32 registers × 256 threads: 8 blocks of 8 warps fill the 64 warps.
        assert_eq!(k(32, 0).occupancy(256, 0), Some(1.0));
        // 128 registers: 4096 per warp, 16 warps by registers, 2 blocks of 8: a quarter.
        assert_eq!(k(128, 16896).occupancy(256, 0), Some(0.25));
        // 100 KiB of shared memory per block: 2 blocks (each also reserves 1 KiB).
        assert_eq!(k(16, 100 << 10).occupancy(128, 0), Some(8.0 / 64.0));
        // 33 registers round up to 40 per thread (1280 per warp): 51 warps, 6 blocks of 8.
        assert_eq!(k(33, 0).occupancy(256, 0), Some(48.0 / 64.0));
        assert_eq!(KernelResources { arch: "sm_70".into(), ..k(32, 0) }.occupancy(256, 0), None);
    }

    /// Local memory is slow memory: a register array indexed at run time, or spills, turn
    /// register traffic into memory traffic (the fused batch-norm passes once had 32 and 64
    /// bytes of it). No kernel may have a stack frame but the two filter-gradient kernels
    /// whose register budget spills a few bytes (a handful of local loads per step of K,
    /// against 256 or 512 FMAs; docs/kernels.md).
    #[test]
    fn no_kernel_keeps_values_in_local_memory() {
        if FATBIN.is_empty() {
            eprintln!("skipped: built without nvcc, so ptxas reported nothing");
            return;
        }
        let rows = kernel_resources(&String::from_utf8_lossy(PTXAS_REPORT));
        let gpu_kernels = KERNELS.iter().filter(|k| !k.emu_only).count();
        assert_eq!(rows.len(), gpu_kernels * CUDA_ARCHS.len(), "a row per kernel and architecture");
        let allowed = |kernel: &str| match kernel {
            "conv2d_bwd_filter_implicit_gemm_f32" | "conv2d_bwd_filter_implicit_gemm128_f32" => 16,
            _ => 0,
        };
        let offenders: Vec<String> = rows
            .iter()
            .filter(|r| r.stack_bytes > allowed(&r.kernel))
            .map(|r| format!("{} on {}: {} bytes of stack, {} registers", r.kernel, r.arch, r.stack_bytes, r.registers))
            .collect();
        assert!(offenders.is_empty(), "{}", offenders.join("\n"));
    }
}
