//! Plain SVG charts, written by hand (no plotting dependency): grouped bars
//! with min–max whiskers, and lines over x.

use std::fmt::Write as _;

use crate::stats::Summary;

/// Series colours; loopd is always the first series.
const COLORS: &[&str] = &[
    "#d9480f", "#1c7ed6", "#37b24d", "#ae3ec9", "#f59f00", "#495057",
];

const W: f64 = 820.0;
const H: f64 = 360.0;
const LEFT: f64 = 78.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 44.0;
const BOTTOM: f64 = 70.0;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A round number at or above `v` (1, 2, 2.5, 5 × 10^k).
fn nice_ceil(v: f64) -> f64 {
    if v <= 0.0 {
        return 1.0;
    }
    let mag = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if m * mag >= v {
            return m * mag;
        }
    }
    10.0 * mag
}

/// Short tick labels: 1.2M, 350k, 0.5.
pub fn short(v: f64) -> String {
    let a = v.abs();
    if a >= 1e6 {
        format!("{}M", trim(v / 1e6))
    } else if a >= 1e3 {
        format!("{}k", trim(v / 1e3))
    } else {
        trim(v)
    }
}

fn trim(v: f64) -> String {
    let s = format!("{v:.2}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    s.to_string()
}

fn frame(out: &mut String, title: &str, y_label: &str, y_max: f64) {
    let _ = write!(
        out,
        r##"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" width="{W}" height="{H}" font-family="DejaVu Sans, Verdana, sans-serif" font-size="12">
<rect width="100%" height="100%" fill="#ffffff"/>
<text x="{}" y="22" text-anchor="middle" font-size="15" font-weight="bold">{}</text>
<text transform="translate(16 {}) rotate(-90)" text-anchor="middle">{}</text>
"##,
        W / 2.0,
        esc(title),
        TOP + (H - TOP - BOTTOM) / 2.0,
        esc(y_label)
    );
    let plot_h = H - TOP - BOTTOM;
    for i in 0..=5 {
        let v = y_max * i as f64 / 5.0;
        let y = TOP + plot_h - plot_h * i as f64 / 5.0;
        let _ = write!(
            out,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#dee2e6"/>
<text x="{}" y="{:.1}" text-anchor="end">{}</text>
"##,
            W - RIGHT,
            LEFT - 6.0,
            y + 4.0,
            short(v)
        );
    }
    let _ = write!(
        out,
        r##"<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{}" stroke="#343a40"/>
<line x1="{LEFT}" y1="{}" x2="{}" y2="{}" stroke="#343a40"/>
"##,
        H - BOTTOM,
        H - BOTTOM,
        W - RIGHT,
        H - BOTTOM
    );
}

fn legend(out: &mut String, series: &[String]) {
    let mut x = LEFT;
    let y = H - 18.0;
    for (i, name) in series.iter().enumerate() {
        let _ = write!(
            out,
            r##"<rect x="{x:.1}" y="{:.1}" width="12" height="12" fill="{}"/>
<text x="{:.1}" y="{:.1}">{}</text>
"##,
            y - 10.0,
            COLORS[i % COLORS.len()],
            x + 16.0,
            y,
            esc(name)
        );
        x += 30.0 + 7.5 * name.len() as f64;
    }
}

/// Grouped bars: one group per label, one bar per series (median) with a
/// min–max whisker. A missing value leaves a gap.
pub fn bars(
    title: &str,
    y_label: &str,
    series: &[String],
    groups: &[(String, Vec<Option<Summary>>)],
) -> String {
    let y_max = nice_ceil(
        groups
            .iter()
            .flat_map(|(_, v)| v.iter().flatten().map(|s| s.max))
            .fold(0.0, f64::max)
            * 1.05,
    );
    let mut out = String::new();
    frame(&mut out, title, y_label, y_max);
    let plot_w = W - LEFT - RIGHT;
    let plot_h = H - TOP - BOTTOM;
    let gw = plot_w / groups.len().max(1) as f64;
    let bw = (gw * 0.8 / series.len().max(1) as f64).min(46.0);
    let y_of = |v: f64| TOP + plot_h - plot_h * (v / y_max).clamp(0.0, 1.0);
    for (g, (label, values)) in groups.iter().enumerate() {
        let gx = LEFT + gw * g as f64;
        let x0 = gx + (gw - bw * series.len() as f64) / 2.0;
        for (i, v) in values.iter().enumerate() {
            let Some(s) = v else { continue };
            let x = x0 + bw * i as f64;
            let y = y_of(s.median);
            let _ = writeln!(
                out,
                r##"<rect x="{x:.1}" y="{y:.1}" width="{:.1}" height="{:.1}" fill="{}"><title>{}: {} (min {}, max {})</title></rect>"##,
                bw - 2.0,
                TOP + plot_h - y,
                COLORS[i % COLORS.len()],
                esc(&series[i]),
                short(s.median),
                short(s.min),
                short(s.max)
            );
            let cx = x + (bw - 2.0) / 2.0;
            let _ = write!(
                out,
                r##"<line x1="{cx:.1}" y1="{:.1}" x2="{cx:.1}" y2="{:.1}" stroke="#212529"/>
<line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#212529"/>
<line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#212529"/>
"##,
                y_of(s.min),
                y_of(s.max),
                cx - 3.0,
                y_of(s.min),
                cx + 3.0,
                y_of(s.min),
                cx - 3.0,
                y_of(s.max),
                cx + 3.0,
                y_of(s.max)
            );
        }
        let _ = writeln!(
            out,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            gx + gw / 2.0,
            H - BOTTOM + 18.0,
            esc(label)
        );
    }
    legend(&mut out, series);
    out.push_str("</svg>\n");
    out
}

/// Lines: one per series, points at (x, median) with min–max whiskers.
pub fn lines(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(String, Vec<(f64, Summary)>)],
) -> String {
    let y_max = nice_ceil(
        series
            .iter()
            .flat_map(|(_, pts)| pts.iter().map(|p| p.1.max))
            .fold(0.0, f64::max)
            * 1.05,
    );
    let x_max = nice_ceil(
        series
            .iter()
            .flat_map(|(_, pts)| pts.iter().map(|p| p.0))
            .fold(0.0, f64::max),
    );
    let mut out = String::new();
    frame(&mut out, title, y_label, y_max);
    let plot_w = W - LEFT - RIGHT;
    let plot_h = H - TOP - BOTTOM;
    let x_of = |x: f64| LEFT + plot_w * (x / x_max).clamp(0.0, 1.0);
    let y_of = |v: f64| TOP + plot_h - plot_h * (v / y_max).clamp(0.0, 1.0);
    for i in 0..=4 {
        let x = x_max * i as f64 / 4.0;
        let _ = writeln!(
            out,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            x_of(x),
            H - BOTTOM + 16.0,
            short(x)
        );
    }
    let _ = writeln!(
        out,
        r##"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
        LEFT + plot_w / 2.0,
        H - BOTTOM + 34.0,
        esc(x_label)
    );
    for (i, (name, pts)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let path: Vec<String> = pts
            .iter()
            .map(|(x, s)| format!("{:.1},{:.1}", x_of(*x), y_of(s.median)))
            .collect();
        let _ = writeln!(
            out,
            r##"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"><title>{}</title></polyline>"##,
            path.join(" "),
            esc(name)
        );
        for (x, s) in pts {
            let _ = write!(
                out,
                r##"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{color}"><title>{}: {} at {}</title></circle>
<line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{color}"/>
"##,
                x_of(*x),
                y_of(s.median),
                esc(name),
                short(s.median),
                short(*x),
                x_of(*x),
                y_of(s.min),
                x_of(*x),
                y_of(s.max)
            );
        }
    }
    let names: Vec<String> = series.iter().map(|s| s.0.clone()).collect();
    legend(&mut out, &names);
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_numbers() {
        assert_eq!(nice_ceil(0.0), 1.0);
        assert_eq!(nice_ceil(7.0), 10.0);
        assert_eq!(nice_ceil(180.0), 200.0);
        assert_eq!(nice_ceil(2100.0), 2500.0);
        assert_eq!(short(1_250_000.0), "1.25M");
        assert_eq!(short(35_000.0), "35k");
        assert_eq!(short(0.5), "0.5");
    }

    #[test]
    fn bars_are_well_formed() {
        let s = Summary::of(&[1.0, 2.0, 3.0]).unwrap();
        let svg = bars(
            "t <x>",
            "y",
            &["a".into(), "b".into()],
            &[("g1".into(), vec![Some(s), None])],
        );
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert!(svg.contains("t &lt;x&gt;"));
        assert_eq!(svg.matches("<rect x=").count(), 1 + 2); // one bar, two legend boxes
    }
}
