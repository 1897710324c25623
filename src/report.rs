//! The training log (`--log metrics.csv`) and the picture drawn from it (`metrics.svg`).
//!
//! The CSV has one row per step (`split` = `train`: the batch's loss, the epoch's running
//! accuracy, the learning rate and images per second) and one per evaluation (`split` =
//! `held-out`). The SVG holds two charts, loss and accuracy against the step, with the
//! training curve as a line and the held-out evaluations as dots joined by a line.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::output::OutputFile;
use crate::train::{EpochReport, StepReport};

/// One point of a curve.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Point {
    step: f64,
    value: f64,
}

/// Appends rows to a temporary file beside the CSV as training runs (flushed each epoch, so
/// it can be watched), and remembers the points for the SVG. [`MetricsLog::finish`] renames
/// the temporary file into place; a run that fails leaves the old CSV, if any, untouched
/// (see [`crate::output`]).
pub struct MetricsLog {
    path: PathBuf,
    file: std::io::BufWriter<OutputFile>,
    train_loss: Vec<Point>,
    train_accuracy: Vec<Point>,
    test_loss: Vec<Point>,
    test_accuracy: Vec<Point>,
}

impl MetricsLog {
    pub fn create(path: &Path) -> Result<MetricsLog> {
        if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("svg")) {
            return Err(Error::file(path, "the log is a CSV file; its curves go to the same name with .svg"));
        }
        crate::output::check_writable(&path.with_extension("svg"))?;
        let mut log = MetricsLog {
            path: path.to_path_buf(),
            file: std::io::BufWriter::new(OutputFile::create(path)?),
            train_loss: Vec::new(),
            train_accuracy: Vec::new(),
            test_loss: Vec::new(),
            test_accuracy: Vec::new(),
        };
        log.line("step,epoch,split,loss,accuracy,lr,images_per_sec")?;
        Ok(log)
    }

    fn line(&mut self, s: &str) -> Result<()> {
        writeln!(self.file, "{s}").map_err(|e| Error::file(&self.path, format!("cannot write: {e}")))
    }

    pub fn step(&mut self, r: &StepReport) -> Result<()> {
        self.train_loss.push(Point { step: r.step as f64, value: r.loss });
        self.train_accuracy.push(Point { step: r.step as f64, value: r.accuracy });
        self.line(&format!(
            "{},{},train,{:.6},{:.6},{:.6e},{:.1}",
            r.step, r.epoch, r.loss, r.accuracy, r.lr, r.images_per_sec
        ))
    }

    pub fn epoch(&mut self, r: &EpochReport) -> Result<()> {
        if let (Some(loss), Some(accuracy)) = (r.test_loss, r.test_accuracy) {
            if loss.is_finite() {
                self.test_loss.push(Point { step: r.step as f64, value: loss });
                self.test_accuracy.push(Point { step: r.step as f64, value: accuracy });
            }
            self.line(&format!("{},{},held-out,{loss:.6},{accuracy:.6},,", r.step, r.epoch))?;
        }
        self.file.flush().map_err(|e| Error::file(&self.path, format!("cannot write: {e}")))
    }

    /// Moves the CSV into place and writes the curves to the SVG file beside it (same name,
    /// `.svg`); returns the SVG's path.
    pub fn finish(self) -> Result<PathBuf> {
        let MetricsLog { path, file, train_loss, train_accuracy, test_loss, test_accuracy } = self;
        file.into_inner().map_err(|e| Error::file(&path, format!("cannot write: {}", e.error())))?.commit()?;
        let svg_path = path.with_extension("svg");
        let svg = render(&[
            Chart {
                title: "loss",
                curves: vec![(&train_loss, "training batch", false), (&test_loss, "held-out", true)],
            },
            Chart {
                title: "accuracy",
                curves: vec![(&train_accuracy, "training (epoch so far)", false), (&test_accuracy, "held-out", true)],
            },
        ]);
        crate::output::write_atomically(&svg_path, svg.as_bytes())?;
        Ok(svg_path)
    }
}

struct Chart<'a> {
    title: &'static str,
    /// Points, legend, and whether to mark each point with a dot.
    curves: Vec<(&'a [Point], &'static str, bool)>,
}

const WIDTH: f64 = 460.0;
const HEIGHT: f64 = 300.0;
const MARGIN: (f64, f64, f64, f64) = (50.0, 20.0, 30.0, 40.0); // left, right, top, bottom
const COLOURS: [&str; 2] = ["#4c78a8", "#e45756"];

/// Round tick values covering `[lo, hi]`: 1, 2 or 5 times a power of ten apart.
fn ticks(lo: f64, hi: f64) -> Vec<f64> {
    let span = (hi - lo).max(1e-12);
    let raw = span / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * mag).find(|s| span / s <= 6.0).unwrap_or(10.0 * mag);
    let mut t = (lo / step).ceil() * step;
    let mut out = Vec::new();
    while t <= hi + step * 1e-9 {
        out.push(if t.abs() < step * 1e-9 { 0.0 } else { t });
        t += step;
    }
    out
}

fn render(charts: &[Chart]) -> String {
    let mut s = String::new();
    let total_width = WIDTH * charts.len() as f64;
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{total_width}" height="{HEIGHT}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    for (i, chart) in charts.iter().enumerate() {
        let x0 = i as f64 * WIDTH;
        render_chart(&mut s, chart, x0);
    }
    s.push_str("</svg>\n");
    s
}

fn render_chart(s: &mut String, chart: &Chart, x0: f64) {
    let (ml, mr, mt, mb) = MARGIN;
    let (pw, ph) = (WIDTH - ml - mr, HEIGHT - mt - mb);
    let points = chart.curves.iter().flat_map(|(p, _, _)| p.iter()).filter(|p| p.value.is_finite());
    let (mut xmax, mut ymin, mut ymax) = (1.0f64, f64::INFINITY, f64::NEG_INFINITY);
    for p in points {
        xmax = xmax.max(p.step);
        ymin = ymin.min(p.value);
        ymax = ymax.max(p.value);
    }
    if !ymin.is_finite() {
        (ymin, ymax) = (0.0, 1.0);
    }
    ymin = ymin.min(0.0);
    if ymax <= ymin {
        ymax = ymin + 1.0;
    }
    let sx = |step: f64| x0 + ml + step / xmax * pw;
    let sy = |v: f64| mt + ph - (v - ymin) / (ymax - ymin) * ph;
    let _ = writeln!(s, r#"<text x="{}" y="18" font-size="13" font-weight="bold">{}</text>"#, x0 + ml, chart.title);
    for t in ticks(ymin, ymax) {
        let y = sy(t);
        let _ =
            writeln!(s, r##"<line x1="{}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#ddd"/>"##, x0 + ml, x0 + ml + pw);
        let _ =
            writeln!(s, r#"<text x="{}" y="{:.1}" text-anchor="end">{}</text>"#, x0 + ml - 4.0, y + 4.0, fmt_tick(t));
    }
    for t in ticks(0.0, xmax) {
        let x = sx(t);
        let _ = writeln!(s, r#"<text x="{x:.1}" y="{}" text-anchor="middle">{}</text>"#, mt + ph + 14.0, fmt_tick(t));
    }
    let _ = writeln!(s, r#"<text x="{}" y="{}" text-anchor="middle">step</text>"#, x0 + ml + pw / 2.0, HEIGHT - 6.0);
    let _ = writeln!(s, r##"<rect x="{}" y="{mt}" width="{pw}" height="{ph}" fill="none" stroke="#888"/>"##, x0 + ml);
    for (k, (points, label, dots)) in chart.curves.iter().enumerate() {
        let colour = COLOURS[k % COLOURS.len()];
        let path: Vec<String> = points
            .iter()
            .filter(|p| p.value.is_finite())
            .map(|p| format!("{:.1},{:.1}", sx(p.step), sy(p.value)))
            .collect();
        if !path.is_empty() {
            let _ = writeln!(
                s,
                r#"<polyline fill="none" stroke="{colour}" stroke-width="1.2" points="{}"/>"#,
                path.join(" ")
            );
        }
        if *dots {
            for p in points.iter().filter(|p| p.value.is_finite()) {
                let _ =
                    writeln!(s, r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{colour}"/>"#, sx(p.step), sy(p.value));
            }
        }
        let ly = mt + 14.0 + 14.0 * k as f64;
        let lx = x0 + ml + pw - 150.0;
        let _ = writeln!(
            s,
            r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{colour}" stroke-width="2"/>"#,
            lx + 16.0
        );
        let _ = writeln!(s, r#"<text x="{}" y="{}">{label}</text>"#, lx + 20.0, ly + 4.0);
    }
}

fn fmt_tick(v: f64) -> String {
    if v == v.round() && v.abs() < 1e6 { format!("{}", v as i64) } else { format!("{v:.2}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        assert_eq!(ticks(0.0, 1.0), vec![0.0, 0.2, 0.4, 0.6000000000000001, 0.8, 1.0]);
        let t = ticks(0.0, 376.0);
        assert_eq!(t[1] - t[0], 100.0);
        assert!(t.last().copied().unwrap_or(0.0) <= 376.0);
        assert!(!ticks(2.3, 2.3001).is_empty());
    }

    #[test]
    fn log_writes_csv_rows_and_an_svg() {
        let dir = std::env::temp_dir().join(format!("scratchnet-log-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("metrics.csv");
        let mut log = MetricsLog::create(&path).unwrap();
        for step in 1..=3 {
            log.step(&StepReport {
                step,
                total_steps: 3,
                epoch: 1,
                loss: 2.0 / step as f64,
                accuracy: 0.1,
                lr: 0.1,
                images_per_sec: 50.0,
            })
            .unwrap();
        }
        log.epoch(&EpochReport {
            epoch: 1,
            step: 3,
            train_loss: 1.0,
            train_accuracy: 0.2,
            test_loss: Some(0.9),
            test_accuracy: Some(0.5),
            images_per_sec: 50.0,
            loss_scale: None,
        })
        .unwrap();
        let svg = log.finish().unwrap();
        let csv = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines[0], "step,epoch,split,loss,accuracy,lr,images_per_sec");
        assert_eq!(lines.len(), 5);
        assert!(lines[1].starts_with("1,1,train,2.000000,0.100000,1.000000e-1,50.0"));
        assert!(lines[4].starts_with("3,1,held-out,0.900000,0.500000"));
        let picture = std::fs::read_to_string(&svg).unwrap();
        assert!(picture.starts_with("<svg") && picture.contains("polyline") && picture.contains("held-out"));
        assert_eq!(picture.matches("<circle").count(), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
