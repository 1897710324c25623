//! The device's own ceilings ([`Ceilings`]): the bandwidth of a large device-to-device copy
//! and the rate of the engine's SGEMM on a large square matrix, measured at the start of a
//! run, and the fraction of the roofline they allow a measured time. Datasheet figures would
//! flatter or insult the kernels; these are what this device does for this engine.

use super::timing::time;
use super::{BenchOptions, Problem, Variant};
use crate::error::Result;

/// The device's measured ceilings.
#[derive(Clone, Copy, Debug)]
pub struct Ceilings {
    /// Bytes read plus bytes written per second by a large device-to-device copy, in GB/s.
    pub copy_gbs: f64,
    /// The engine's own SGEMM on a square matrix, in GFLOP/s.
    pub gemm_gflops: f64,
    pub copy_bytes: usize,
    pub gemm_size: usize,
}

impl Ceilings {
    /// The fraction of the roofline a time reaches, and what bounds the problem.
    pub fn roofline(&self, flops: f64, bytes: f64, seconds: f64) -> (f64, &'static str) {
        let compute = flops / (self.gemm_gflops * 1e9);
        let memory = bytes / (self.copy_gbs * 1e9);
        let floor = compute.max(memory);
        (if seconds > 0.0 { floor / seconds } else { 0.0 }, if compute > memory { "compute" } else { "memory" })
    }
}

/// Measures the device's ceilings: a large copy and a large square SGEMM.
pub fn measure_ceilings(opts: &BenchOptions) -> Result<Ceilings> {
    let device = opts.device;
    let numel = opts.size_bytes() / 4;
    let copy = Problem::Copy { numel };
    let t = time(device, opts.repeats(), 2, &mut *copy.prepare(device, Variant::Default, &opts.exec)?)?;
    let copy_gbs = copy.bytes() / (t.median_ms * 1e6);
    let s = opts.gemm_size();
    let gemm = Problem::Matmul { m: s, n: s, k: s };
    let t = time(device, opts.repeats(), 2, &mut *gemm.prepare(device, Variant::Default, &opts.exec)?)?;
    Ok(Ceilings { copy_gbs, gemm_gflops: gemm.flops() / (t.median_ms * 1e6), copy_bytes: numel * 4, gemm_size: s })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roofline_fraction_is_the_floor_over_the_time() {
        let c = Ceilings { copy_gbs: 100.0, gemm_gflops: 1000.0, copy_bytes: 0, gemm_size: 0 };
        // 1 GB at 100 GB/s takes 10 ms at best; 20 ms measured is half the roofline.
        let (fraction, bound) = c.roofline(1e6, 1e9, 0.02);
        assert!((fraction - 0.5).abs() < 1e-12);
        assert_eq!(bound, "memory");
        assert_eq!(c.roofline(1e12, 1e6, 2.0).1, "compute");
    }
}
