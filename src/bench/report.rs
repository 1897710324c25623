//! What a bench run reports: a [`Row`] per timed problem and variant, the [`Header`] with the
//! device and its ceilings, and the [`Report`] of the whole run; each as a line of the table
//! and as JSON (the results file, `jsonl`).

use serde_json::{Value, json};

use super::{Ceilings, Problem};
use crate::device::Device;

/// One timed problem and variant.
#[derive(Clone, Debug)]
pub struct Row {
    pub suite: &'static str,
    pub problem: Problem,
    pub variant: &'static str,
    /// Whether this is the variant the engine runs by default (the one compared with PyTorch).
    pub primary: bool,
    /// Layers of the network that have this problem.
    pub layers: usize,
    pub runs: usize,
    pub median_ms: f64,
    pub min_ms: f64,
    /// Peak device memory during one run (train steps on a GPU).
    pub peak_bytes: Option<usize>,
}

impl Row {
    pub fn gflops(&self) -> f64 {
        self.problem.flops() / (self.median_ms * 1e6)
    }

    pub fn gbs(&self) -> f64 {
        self.problem.bytes() / (self.median_ms * 1e6)
    }

    pub fn to_json(&self, ceilings: &Ceilings) -> Value {
        let (fraction, bound) = ceilings.roofline(self.problem.flops(), self.problem.bytes(), self.median_ms / 1e3);
        let mut row = json!({
            "suite": self.suite,
            "key": self.problem.key(),
            "spec": self.problem.spec(),
            "label": self.problem.label(),
            "category": self.problem.category(),
            "variant": self.variant,
            "primary": self.primary,
            "layers": self.layers,
            "runs": self.runs,
            "median_ms": self.median_ms,
            "min_ms": self.min_ms,
            "flops": self.problem.flops(),
            "bytes": self.problem.bytes(),
            "gflops": self.gflops(),
            "gbs": self.gbs(),
            "roofline": fraction,
            "bound": bound,
        });
        let images = match &self.problem {
            Problem::TrainStep(t) => Some(t.batch),
            Problem::Inference(i) => Some(i.batch),
            _ => None,
        };
        if let Some(images) = images {
            row["images_per_s"] = json!(images as f64 / (self.median_ms / 1e3));
        }
        if let Some(peak) = self.peak_bytes {
            row["peak_mb"] = json!(peak as f64 / (1u64 << 20) as f64);
        }
        row
    }
}

/// Everything one run measured.
pub struct Report {
    pub device: Device,
    pub device_name: String,
    pub batch: usize,
    pub ceilings: Ceilings,
    pub rows: Vec<Row>,
}

/// What a run is measured on, known once the ceilings are: the first line of its results file.
pub struct Header<'a> {
    pub device: Device,
    pub device_name: &'a str,
    pub batch: usize,
    /// The precision of the convolutions and products (`--precision`); the baseline runs in
    /// the same one.
    pub precision: crate::ops::Precision,
    pub ceilings: &'a Ceilings,
}

impl Header<'_> {
    pub fn to_json(&self) -> Value {
        json!({
            "tool": "scratchnet bench",
            "version": env!("CARGO_PKG_VERSION"),
            "device": self.device.to_string(),
            "device_name": self.device_name,
            "batch": self.batch,
            "precision": self.precision.name(),
            "ceilings": {
                "copy_gbs": self.ceilings.copy_gbs,
                "gemm_gflops": self.ceilings.gemm_gflops,
                "copy_bytes": self.ceilings.copy_bytes,
                "gemm_size": self.ceilings.gemm_size,
            },
        })
    }
}

impl Report {
    /// The table's header line.
    pub fn header() -> String {
        format!(
            "{:<12} {:<52} {:<14} {:>4} {:>10} {:>9} {:>8} {:>6}  {}",
            "suite", "problem", "variant", "n", "median ms", "GFLOP/s", "GB/s", "roof", "bound"
        )
    }

    /// One row of the table.
    pub fn line(&self, row: &Row) -> String {
        line(row, &self.ceilings)
    }
}

/// One row of the table, against the given ceilings.
pub fn line(row: &Row, ceilings: &Ceilings) -> String {
    if let Problem::TrainStep(t) = &row.problem {
        let images = t.batch as f64 / (row.median_ms / 1e3);
        let peak =
            row.peak_bytes.map(|p| format!(", peak {:.0} MiB", p as f64 / (1u64 << 20) as f64)).unwrap_or_default();
        return format!(
            "{:<12} {:<52} {:<14} {:>4} {:>10.3}  {images:.1} images/s{peak}",
            row.suite,
            row.problem.label(),
            row.variant,
            row.layers,
            row.median_ms
        );
    }
    let (fraction, bound) = ceilings.roofline(row.problem.flops(), row.problem.bytes(), row.median_ms / 1e3);
    format!(
        "{:<12} {:<52} {:<14} {:>4} {:>10.3} {:>9.1} {:>8.1} {:>5.0}%  {bound}",
        row.suite,
        row.problem.label(),
        row.variant,
        row.layers,
        row.median_ms,
        row.gflops(),
        row.gbs(),
        100.0 * fraction
    )
}
