//! `scratchnet bench --plot roofline.svg`: every timed problem on the device's roofline.
//!
//! Both axes are logarithmic. Across: arithmetic intensity, the floating-point operations per
//! byte of memory traffic a problem needs. Up: the GFLOP/s it reached. The two measured
//! ceilings form the roof: the slanted line is the copy bandwidth (at intensity I a kernel
//! that streams at full bandwidth reaches bandwidth·I), the flat line the best GEMM rate.
//! A point's distance below the roof is the time it leaves on the table.

use std::fmt::Write;

use super::{Ceilings, Row};

const WIDTH: f64 = 860.0;
const HEIGHT: f64 = 560.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 170.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;

fn color(category: &str) -> &'static str {
    match category {
        "conv" => "#1f77b4",
        "gemm" => "#d62728",
        _ => "#2ca02c",
    }
}

/// Escapes text for an SVG element.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// The SVG document. Problems that do no arithmetic (copies, train steps) are left out.
pub fn render(rows: &[Row], ceilings: &Ceilings, title: &str) -> String {
    let points: Vec<(f64, f64, &Row)> = rows
        .iter()
        .filter(|r| r.problem.flops() > 0.0 && r.problem.bytes() > 0.0 && r.median_ms > 0.0)
        .map(|r| (r.problem.flops() / r.problem.bytes(), r.gflops(), r))
        .collect();
    let peak = ceilings.gemm_gflops.max(1e-3);
    let bw = ceilings.copy_gbs.max(1e-3);
    // Decades that hold every point and the ridge (where the two ceilings meet).
    let ridge = peak / bw;
    let (mut xmin, mut xmax) = (ridge / 10.0, ridge * 10.0);
    let (mut ymin, mut ymax) = (peak / 1e3, peak * 2.0);
    for &(x, y, _) in &points {
        (xmin, xmax) = (xmin.min(x), xmax.max(x));
        (ymin, ymax) = (ymin.min(y), ymax.max(y));
    }
    let (lx0, lx1) = (xmin.log10().floor(), xmax.log10().ceil());
    let (ly0, ly1) = (ymin.log10().floor(), ymax.log10().ceil());
    let (pw, ph) = (WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM);
    let px = |x: f64| LEFT + (x.log10() - lx0) / (lx1 - lx0) * pw;
    let py = |y: f64| TOP + ph - (y.log10() - ly0) / (ly1 - ly0) * ph;

    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(s, r#"<text x="{LEFT}" y="22" font-size="14">{}</text>"#, escape(title));
    // Grid and tick labels, one per decade.
    for d in (lx0 as i32)..=(lx1 as i32) {
        let x = px(10f64.powi(d));
        let _ = writeln!(s, r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="#ddd"/>"##, TOP + ph);
        let _ = writeln!(s, r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle">1e{d}</text>"#, TOP + ph + 16.0);
    }
    for d in (ly0 as i32)..=(ly1 as i32) {
        let y = py(10f64.powi(d));
        let _ = writeln!(s, r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/>"##, LEFT + pw);
        let _ = writeln!(s, r#"<text x="{:.1}" y="{:.1}" text-anchor="end">1e{d}</text>"#, LEFT - 6.0, y + 4.0);
    }
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">arithmetic intensity (FLOP/byte)</text>"#,
        LEFT + pw / 2.0,
        HEIGHT - 12.0
    );
    let _ = writeln!(
        s,
        r#"<text transform="translate(16,{:.1}) rotate(-90)" text-anchor="middle">GFLOP/s</text>"#,
        TOP + ph / 2.0
    );
    // The roof: bandwidth up to the ridge, then the GEMM rate.
    let x_start = 10f64.powf(lx0);
    let roof_start = (x_start, (bw * x_start).max(10f64.powf(ly0)));
    let x_low = roof_start.1 / bw;
    let _ = writeln!(
        s,
        r##"<polyline fill="none" stroke="#444" stroke-width="2" points="{:.1},{:.1} {:.1},{:.1} {:.1},{:.1}"/>"##,
        px(x_low),
        py(roof_start.1),
        px(ridge),
        py(peak),
        px(10f64.powf(lx1)),
        py(peak)
    );
    let _ =
        writeln!(s, r#"<text x="{:.1}" y="{:.1}">copy {:.0} GB/s</text>"#, px(x_low) + 6.0, py(roof_start.1) - 6.0, bw);
    let _ =
        writeln!(s, r#"<text x="{:.1}" y="{:.1}">GEMM {:.0} GFLOP/s</text>"#, px(ridge) + 6.0, py(peak) - 6.0, peak);
    for &(x, y, r) in &points {
        let _ = writeln!(
            s,
            r#"<circle cx="{:.1}" cy="{:.1}" r="3.5" fill="{}" fill-opacity="0.7"><title>{} [{}] {:.3} ms, {:.0} GFLOP/s</title></circle>"#,
            px(x),
            py(y),
            color(r.problem.category()),
            escape(&r.problem.label()),
            r.variant,
            r.median_ms,
            y
        );
    }
    for (i, (name, category)) in
        [("convolution", "conv"), ("GEMM / linear", "gemm"), ("memory-bound", "memory")].into_iter().enumerate()
    {
        let y = TOP + 10.0 + 18.0 * i as f64;
        let x = WIDTH - RIGHT + 16.0;
        let _ = writeln!(s, r#"<circle cx="{x}" cy="{y}" r="4" fill="{}"/>"#, color(category));
        let _ = writeln!(s, r#"<text x="{}" y="{}">{name}</text>"#, x + 10.0, y + 4.0);
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::Problem;

    #[test]
    fn every_arithmetic_problem_is_a_point_under_its_label() {
        let row = |problem: Problem, ms: f64| Row {
            suite: "gemm",
            problem,
            variant: "default",
            primary: true,
            layers: 1,
            runs: 3,
            median_ms: ms,
            min_ms: ms,
            peak_bytes: None,
        };
        let rows = [row(Problem::Matmul { m: 64, n: 64, k: 64 }, 0.5), row(Problem::Copy { numel: 1 << 20 }, 0.2)];
        let c = Ceilings { copy_gbs: 20.0, gemm_gflops: 100.0, copy_bytes: 0, gemm_size: 64 };
        let svg = render(&rows, &c, "cpu <test>");
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert_eq!(svg.matches("<title>").count(), 1, "the copy does no arithmetic");
        assert!(svg.contains("sgemm 64x64x64"));
        assert!(svg.contains("cpu &lt;test&gt;"));
        assert!(svg.contains("copy 20 GB/s") && svg.contains("GEMM 100 GFLOP/s"));
    }
}
