//! The scale plot: wall time and calls against N, as a self-contained SVG written by hand (two
//! line charts with a log-scaled N axis; no plotting dependency for a dozen points).

use std::fmt::Write as _;

use crate::scale::Scale;

/// One line of a chart.
struct Series {
    name: &'static str,
    colour: &'static str,
    points: Vec<(f64, f64)>,
}

const W: f64 = 440.0;
const H: f64 = 300.0;
const LEFT: f64 = 56.0;
const RIGHT: f64 = 12.0;
const TOP: f64 = 34.0;
const BOTTOM: f64 = 96.0;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A "nice" axis maximum at or above `v` (1, 2 or 5 times a power of ten).
fn nice_max(v: f64) -> f64 {
    if v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * p)
        .find(|c| *c >= v)
        .unwrap_or(10.0 * p)
}

/// One chart at horizontal offset `x0`.
fn chart(o: &mut String, x0: f64, title: &str, y_label: &str, ns: &[f64], series: &[Series]) {
    let plot_w = W - LEFT - RIGHT;
    let plot_h = H - TOP - BOTTOM;
    let (lo, hi) = (
        ns.iter().copied().fold(f64::INFINITY, f64::min).max(1.0),
        ns.iter().copied().fold(1.0, f64::max),
    );
    let span = (hi.ln() - lo.ln()).max(1e-9);
    let x = |n: f64| x0 + LEFT + (n.max(lo).ln() - lo.ln()) / span * plot_w;
    let ymax = nice_max(
        series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.1))
            .fold(0.0, f64::max)
            * 1.05,
    );
    let y = |v: f64| TOP + plot_h - v / ymax * plot_h;
    let _ = writeln!(
        o,
        r#"<text x="{:.1}" y="20" font-size="14" font-weight="bold">{}</text>"#,
        x0 + LEFT,
        esc(title)
    );
    // Grid and y ticks.
    for i in 0..=4 {
        let v = ymax * f64::from(i) / 4.0;
        let _ = writeln!(
            o,
            r##"<line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" font-size="11" text-anchor="end">{}</text>"##,
            x0 + LEFT,
            y(v),
            x0 + LEFT + plot_w,
            y(v),
            x0 + LEFT - 4.0,
            y(v) + 4.0,
            if ymax >= 10.0 {
                format!("{v:.0}")
            } else {
                format!("{v:.1}")
            }
        );
    }
    for n in ns {
        let _ = writeln!(
            o,
            r##"<line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#999"/><text x="{:.1}" y="{:.1}" font-size="11" text-anchor="middle">{n}</text>"##,
            x(*n),
            TOP + plot_h,
            x(*n),
            TOP + plot_h + 4.0,
            x(*n),
            TOP + plot_h + 16.0
        );
    }
    let _ = writeln!(
        o,
        r#"<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="middle">deployments N (log scale)</text>"#,
        x0 + LEFT + plot_w / 2.0,
        TOP + plot_h + 30.0
    );
    let _ = writeln!(
        o,
        r#"<text transform="translate({:.1},{:.1}) rotate(-90)" font-size="11" text-anchor="middle">{}</text>"#,
        x0 + 14.0,
        TOP + plot_h / 2.0,
        esc(y_label)
    );
    for (i, s) in series.iter().enumerate() {
        let pts: Vec<String> = s
            .points
            .iter()
            .map(|(n, v)| format!("{:.1},{:.1}", x(*n), y(*v)))
            .collect();
        let _ = writeln!(
            o,
            r#"<polyline fill="none" stroke="{}" stroke-width="2" points="{}"/>"#,
            s.colour,
            pts.join(" ")
        );
        for (n, v) in &s.points {
            let _ = writeln!(
                o,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{}"><title>{}: N={n}: {v:.3}</title></circle>"#,
                x(*n),
                y(*v),
                s.colour,
                esc(s.name)
            );
        }
        let ly = TOP + plot_h + 46.0 + 14.0 * i as f64;
        let _ = writeln!(
            o,
            r#"<line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{}" stroke-width="2"/><text x="{:.1}" y="{:.1}" font-size="11">{}</text>"#,
            x0 + LEFT,
            ly - 4.0,
            x0 + LEFT + 18.0,
            ly - 4.0,
            s.colour,
            x0 + LEFT + 24.0,
            ly,
            esc(s.name)
        );
    }
}

/// The SVG document for `s`.
pub fn svg(s: &Scale, caption: &str) -> String {
    let ns: Vec<f64> = s.points.iter().map(|p| p.deployments as f64).collect();
    let pick = |f: &dyn Fn(&crate::scale::Point) -> f64| -> Vec<(f64, f64)> {
        s.points
            .iter()
            .map(|p| (p.deployments as f64, f(p)))
            .collect()
    };
    let time = [
        Series {
            name: "first apply",
            colour: "#1f77b4",
            points: pick(&|p| p.first_apply.seconds),
        },
        Series {
            name: "critical path of the first apply",
            colour: "#9ecae1",
            points: pick(&|p| p.critical_path),
        },
        Series {
            name: "apply changing one deployment",
            colour: "#ff7f0e",
            points: pick(&|p| p.change_one.seconds),
        },
        Series {
            name: "no-op plan",
            colour: "#2ca02c",
            points: pick(&|p| p.noop_plan.seconds),
        },
    ];
    let calls = [
        Series {
            name: "Prefect calls, first apply",
            colour: "#1f77b4",
            points: pick(&|p| p.first_apply.prefect_calls as f64),
        },
        Series {
            name: "Prefect calls, no-op plan",
            colour: "#2ca02c",
            points: pick(&|p| p.noop_plan.prefect_calls as f64),
        },
        Series {
            name: "Prefect calls, one-deployment apply",
            colour: "#ff7f0e",
            points: pick(&|p| p.change_one.prefect_calls as f64),
        },
        Series {
            name: "Google calls, first apply",
            colour: "#d62728",
            points: pick(&|p| p.first_apply.google_calls as f64),
        },
    ];
    let mut o = String::new();
    let _ = writeln!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{:.0}" height="{:.0}" font-family="sans-serif" viewBox="0 0 {:.0} {:.0}">"#,
        2.0 * W,
        H + 34.0,
        2.0 * W,
        H + 34.0
    );
    o.push_str("<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n");
    chart(&mut o, 0.0, "wall time vs N", "seconds", &ns, &time);
    chart(&mut o, W, "calls vs N", "calls", &ns, &calls);
    let _ = writeln!(
        o,
        r##"<text x="8" y="{:.0}" font-size="10" fill="#555">{}</text>"##,
        H + 26.0,
        esc(caption)
    );
    o.push_str("</svg>\n");
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_axis_maxima() {
        assert_eq!(nice_max(0.0), 1.0);
        assert_eq!(nice_max(0.42), 0.5);
        assert_eq!(nice_max(7.0), 10.0);
        assert_eq!(nice_max(130.0), 200.0);
        assert_eq!(nice_max(f64::NAN), 1.0);
    }

    #[test]
    fn escapes_text() {
        assert_eq!(esc("a<b & c>"), "a&lt;b &amp; c&gt;");
    }
}
