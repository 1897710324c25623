//! Two bench files side by side: scratchnet's (`scratchnet bench --json`) and a baseline's
//! (`scripts/torch_baseline.py`, which times the same specs in PyTorch). Rows match on their
//! key, the problem's spec. The ratio is the baseline's time over scratchnet's: scratchnet's
//! throughput as a fraction of the baseline's, so 1.0 is parity and 0.85 is 85 %.

use std::collections::HashMap;
use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Result};

/// One problem timed by both.
#[derive(Clone, Debug)]
pub struct Pair {
    pub suite: String,
    pub category: String,
    pub label: String,
    pub ours_ms: f64,
    pub theirs_ms: f64,
    pub ours_peak_mb: Option<f64>,
    pub theirs_peak_mb: Option<f64>,
}

impl Pair {
    /// Scratchnet's throughput over the baseline's.
    pub fn ratio(&self) -> f64 {
        self.theirs_ms / self.ours_ms
    }
}

/// The geometric mean of the ratios of one group of rows.
#[derive(Clone, Debug)]
pub struct Summary {
    pub suite: String,
    pub category: String,
    pub rows: usize,
    pub geomean: f64,
}

#[derive(Debug)]
pub struct Comparison {
    pub ours_device: String,
    pub theirs_device: String,
    pub pairs: Vec<Pair>,
    /// Rows of ours that the baseline did not time.
    pub unmatched: usize,
}

fn positive(v: &Value) -> Option<f64> {
    v.as_f64().filter(|t| t.is_finite() && *t > 0.0)
}

/// Reads both files and pairs their rows.
pub fn compare(ours: &Path, theirs: &Path) -> Result<Comparison> {
    let (a, b) = (super::jsonl::read(ours)?, super::jsonl::read(theirs)?);
    let mut baseline: HashMap<&str, &Value> = HashMap::new();
    for row in &b.rows {
        if let (Some(key), Some(_)) = (row["key"].as_str(), positive(&row["median_ms"])) {
            baseline.insert(key, row);
        }
    }
    let mut pairs = Vec::new();
    let mut unmatched = 0;
    for row in &a.rows {
        if row["primary"].as_bool() == Some(false) {
            continue;
        }
        let (Some(key), Some(ours_ms)) = (row["key"].as_str(), positive(&row["median_ms"])) else { continue };
        let Some(theirs) = baseline.get(key) else {
            unmatched += 1;
            continue;
        };
        let text = |v: &Value| v.as_str().unwrap_or("?").to_string();
        pairs.push(Pair {
            suite: text(&row["suite"]),
            category: text(&row["category"]),
            label: text(&row["label"]),
            ours_ms,
            theirs_ms: positive(&theirs["median_ms"]).unwrap_or(f64::NAN),
            ours_peak_mb: positive(&row["peak_mb"]),
            theirs_peak_mb: positive(&theirs["peak_mb"]),
        });
    }
    if pairs.is_empty() {
        return Err(Error::argument(
            "bench --compare",
            format!("no row of {} matches a row of {}", ours.display(), theirs.display()),
        ));
    }
    // Files from before precisions existed ran in FP32.
    let precision = |v: &Value| v["precision"].as_str().unwrap_or("fp32").to_string();
    if precision(&a.header) != precision(&b.header) {
        return Err(Error::argument(
            "bench --compare",
            format!(
                "{} ran in {} but {} in {}: compare two runs of one precision",
                ours.display(),
                precision(&a.header),
                theirs.display(),
                precision(&b.header)
            ),
        ));
    }
    let device = |v: &Value| v["device_name"].as_str().unwrap_or("?").to_string();
    Ok(Comparison { ours_device: device(&a.header), theirs_device: device(&b.header), pairs, unmatched })
}

fn geomean(values: impl Iterator<Item = f64>) -> (usize, f64) {
    let (n, sum) = values.fold((0, 0.0), |(n, s), v| (n + 1, s + v.ln()));
    (n, if n == 0 { f64::NAN } else { (sum / n as f64).exp() })
}

impl Comparison {
    /// Geometric means per suite and category (conv, gemm, memory, train_step) and per suite.
    pub fn summaries(&self) -> Vec<Summary> {
        let mut groups: Vec<(String, String)> = Vec::new();
        for p in &self.pairs {
            for g in [(p.suite.clone(), p.category.clone()), (p.suite.clone(), "all".to_string())] {
                if !groups.contains(&g) {
                    groups.push(g);
                }
            }
        }
        groups
            .into_iter()
            .map(|(suite, category)| {
                let (rows, geomean) = geomean(
                    self.pairs
                        .iter()
                        .filter(|p| p.suite == suite && (category == "all" || p.category == category))
                        .map(Pair::ratio),
                );
                Summary { suite, category, rows, geomean }
            })
            .collect()
    }
}

impl std::fmt::Display for Comparison {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "scratchnet on {} against the baseline on {}", self.ours_device, self.theirs_device)?;
        writeln!(f, "ratio = baseline time / scratchnet time (scratchnet's throughput as a fraction; 1.00 = parity)")?;
        writeln!(f, "{:<12} {:<52} {:>11} {:>11} {:>7}", "suite", "problem", "ours ms", "theirs ms", "ratio")?;
        for p in &self.pairs {
            write!(f, "{:<12} {:<52} {:>11.3} {:>11.3} {:>7.2}", p.suite, p.label, p.ours_ms, p.theirs_ms, p.ratio())?;
            if let (Some(a), Some(b)) = (p.ours_peak_mb, p.theirs_peak_mb) {
                write!(f, "   peak memory {a:.0} vs {b:.0} MiB")?;
            }
            writeln!(f)?;
        }
        if self.unmatched > 0 {
            writeln!(f, "({} rows had no baseline)", self.unmatched)?;
        }
        writeln!(f, "geometric means:")?;
        for s in self.summaries() {
            writeln!(f, "  {:<12} {:<11} {:>4} rows  {:>6.2}", s.suite, s.category, s.rows, s.geomean)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, v: Value) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, v.to_string()).unwrap();
        p
    }

    #[test]
    fn rows_pair_on_their_keys_and_geomeans_group_them() {
        let dir = std::env::temp_dir().join(format!("scratchnet-compare-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let row = |key: &str, cat: &str, ms: f64, primary: bool| serde_json::json!({"suite": "resnet50", "key": key, "label": key, "category": cat, "median_ms": ms, "primary": primary});
        let ours = write(
            &dir,
            "ours.json",
            serde_json::json!({"device_name": "A", "rows": [
                row("c1", "conv", 2.0, true), row("c1", "conv", 9.0, false),
                row("c2", "conv", 1.0, true), row("m", "memory", 4.0, true), row("x", "memory", 1.0, true)]}),
        );
        let theirs = write(
            &dir,
            "theirs.json",
            serde_json::json!({"device_name": "B", "rows": [
                {"key": "c1", "median_ms": 1.0}, {"key": "c2", "median_ms": 4.0}, {"key": "m", "median_ms": 4.0}]}),
        );
        let c = compare(&ours, &theirs).unwrap();
        assert_eq!(c.pairs.len(), 3, "the non-primary variant is not compared");
        assert_eq!(c.unmatched, 1);
        let s = c.summaries();
        let conv = s.iter().find(|s| s.category == "conv").unwrap();
        // Ratios 0.5 and 4: geometric mean √2.
        assert_eq!(conv.rows, 2);
        assert!((conv.geomean - 2f64.sqrt()).abs() < 1e-12);
        let all = s.iter().find(|s| s.category == "all").unwrap();
        assert!((all.geomean - 2f64.cbrt()).abs() < 1e-12);
        let text = c.to_string();
        assert!(text.contains("0.50") && text.contains("4.00"), "{text}");

        let bad = write(&dir, "bad.json", serde_json::json!({"no": "rows"}));
        let e = compare(&ours, &bad).unwrap_err().to_string();
        assert!(e.contains("is not a bench results file"), "{e}");

        // A BF16 run against a baseline without a precision (FP32) is refused.
        let bf16 = write(
            &dir,
            "bf16.json",
            serde_json::json!({"device_name": "A", "precision": "bf16", "rows": [row("c1", "conv", 2.0, true)]}),
        );
        let e = compare(&bf16, &theirs).unwrap_err().to_string();
        assert!(e.contains("bf16") && e.contains("fp32") && e.contains("one precision"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
