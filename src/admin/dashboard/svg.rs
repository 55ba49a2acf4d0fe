//! SVG charts drawn by keygate, inlined into the dashboard pages: daily bars, a daily line and a
//! horizontal meter. No script, no font and no request: the page works offline and the browser
//! only lays out what is here.
//!
//! Every chart scales with its `viewBox` to the width of its container (`width="100%"`), so it
//! fits a phone. Each data point is one element carrying `data-label` and `data-value` (the
//! value exactly as given, in Rust's shortest round-trip form) and a `<title>` tooltip; each
//! chart's `<svg>` carries `data-chart` with its title. Tests read those attributes instead of
//! guessing values from pixels. Non-finite values are drawn and reported as 0. All text is
//! XML-escaped with [`escape`]; the inline SVG has no `xmlns`, which HTML does not need.

/// The chart's coordinate space, scaled to the container by `width="100%"`.
const WIDTH: f64 = 400.0;
const HEIGHT: f64 = 220.0;
/// Room for the y-axis tick labels.
const LEFT: f64 = 52.0;
const RIGHT: f64 = 10.0;
/// Room for the title.
const TOP: f64 = 30.0;
/// Room for the x-axis labels.
const BOTTOM: f64 = 28.0;
const PLOT_WIDTH: f64 = WIDTH - LEFT - RIGHT;
const PLOT_HEIGHT: f64 = HEIGHT - TOP - BOTTOM;
/// At most this many x-axis labels fit; every point still has its label in its tooltip.
const MAX_X_LABELS: usize = 4;
/// Fractions of the step that make "nice" axis steps, per power of ten.
const NICE_STEPS: [f64; 5] = [1.0, 2.0, 2.5, 5.0, 10.0];
/// Large axis values are shortened with these suffixes.
const SCALES: [(f64, &str); 3] = [(1e9, "B"), (1e6, "M"), (1e3, "k")];

const BAR_FILL: &str = "#2563eb";
const LINE_STROKE: &str = "#dc2626";
const GRID: &str = "#e5e7eb";
const MUTED: &str = "#6b7280";
const TEXT: &str = "#111827";

/// Text made safe for XML and HTML text and attribute values. Control characters that XML
/// forbids become U+FFFD.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if c.is_control() => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

/// A bar per point (`<rect data-label data-value>`), labels as given (days, oldest first).
pub fn bars(title: &str, points: &[(String, f64)], unit: &str) -> String {
    chart(Shape::Bars, title, points, unit)
}

/// A line through the points with a `<circle data-label data-value>` at each; for rates such
/// as the error rate in percent.
pub fn line(title: &str, points: &[(String, f64)], unit: &str) -> String {
    chart(Shape::Line, title, points, unit)
}

/// A horizontal bar: how much of `limit` is `used`, green below 70 %, amber below 90 %, red
/// from there. The `<svg>` carries `data-used` and `data-limit`. A zero limit shows as full
/// when anything is used.
pub fn meter(used: f64, limit: f64) -> String {
    let used = finite(used);
    let limit = finite(limit);
    let ratio = if limit > 0.0 {
        used.max(0.0) / limit
    } else if used > 0.0 {
        1.0
    } else {
        0.0
    };
    let fill = if ratio >= 0.9 {
        "#dc2626"
    } else if ratio >= 0.7 {
        "#d97706"
    } else {
        "#16a34a"
    };
    let width = ratio.min(1.0) * 100.0;
    let percent = format!("{:.0}%", ratio * 100.0);
    let tooltip = escape(&format!("{} of {} ({percent})", human(used), human(limit)));
    format!(
        r#"<svg class="meter" viewBox="0 0 100 8" width="100%" height="10" preserveAspectRatio="none" role="img" aria-label="{percent} used" data-used="{used}" data-limit="{limit}"><title>{tooltip}</title><rect width="100" height="8" rx="2" fill="{GRID}"/><rect width="{width:.2}" height="8" rx="2" fill="{fill}"/></svg>"#
    )
}

#[derive(Clone, Copy)]
enum Shape {
    Bars,
    Line,
}

fn chart(shape: Shape, title: &str, points: &[(String, f64)], unit: &str) -> String {
    let title = escape(title);
    let unit = escape(unit);
    let mut out = format!(
        r#"<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" width="100%" role="img" aria-label="{title}" data-chart="{title}" font-family="system-ui, sans-serif" font-size="11"><title>{title}</title><text x="4" y="18" font-size="14" font-weight="600" fill="{TEXT}">{title}</text><text x="{unit_x}" y="18" text-anchor="end" fill="{MUTED}">{unit}</text>"#,
        unit_x = WIDTH - 4.0,
    );
    if points.is_empty() {
        out.push_str(&format!(
            r#"<text class="empty" x="{x}" y="{y}" text-anchor="middle" font-size="13" fill="{MUTED}">No data for this period</text></svg>"#,
            x = WIDTH / 2.0,
            y = TOP + PLOT_HEIGHT / 2.0,
        ));
        return out;
    }
    let max = points.iter().map(|(_, v)| finite(*v)).fold(0.0, f64::max);
    let axis = Axis::new(max);
    out.push_str(&axis.render());

    let band = PLOT_WIDTH / points.len() as f64;
    let label_every = points.len().div_ceil(MAX_X_LABELS);
    let baseline = TOP + PLOT_HEIGHT;
    for (i, (label, _)) in points.iter().enumerate().step_by(label_every) {
        out.push_str(&format!(
            r#"<text x="{x:.2}" y="{y}" text-anchor="middle" fill="{MUTED}">{label}</text>"#,
            x = LEFT + band * (i as f64 + 0.5),
            y = baseline + 18.0,
            label = escape(label),
        ));
    }
    let top = axis.top();
    let height_of = |v: f64| {
        let h = PLOT_HEIGHT * v.max(0.0) / top;
        // A tiny non-zero value stays visible.
        if v > 0.0 { h.max(1.0) } else { h }
    };
    match shape {
        Shape::Bars => {
            for (i, (label, value)) in points.iter().enumerate() {
                let value = finite(*value);
                let h = height_of(value);
                out.push_str(&format!(
                    r#"<rect x="{x:.2}" y="{y:.2}" width="{w:.2}" height="{h:.2}" fill="{BAR_FILL}" data-label="{label}" data-value="{value}"><title>{label}: {shown} {unit}</title></rect>"#,
                    x = LEFT + band * (i as f64 + 0.15),
                    y = baseline - h,
                    w = band * 0.7,
                    label = escape(label),
                    shown = human(value),
                ));
            }
        }
        Shape::Line => {
            let xy: Vec<(f64, f64)> = points
                .iter()
                .enumerate()
                .map(|(i, (_, v))| {
                    (
                        LEFT + band * (i as f64 + 0.5),
                        baseline - height_of(finite(*v)),
                    )
                })
                .collect();
            let path: Vec<String> = xy.iter().map(|(x, y)| format!("{x:.2},{y:.2}")).collect();
            out.push_str(&format!(
                r#"<polyline points="{}" fill="none" stroke="{LINE_STROKE}" stroke-width="2"/>"#,
                path.join(" ")
            ));
            for ((label, value), (x, y)) in points.iter().zip(&xy) {
                let value = finite(*value);
                out.push_str(&format!(
                    r#"<circle cx="{x:.2}" cy="{y:.2}" r="3" fill="{LINE_STROKE}" data-label="{label}" data-value="{value}"><title>{label}: {shown} {unit}</title></circle>"#,
                    label = escape(label),
                    shown = human(value),
                ));
            }
        }
    }
    out.push_str("</svg>");
    out
}

/// The y axis: from 0 up in `intervals` equal, round steps (3 to 5 tick labels).
struct Axis {
    step: f64,
    intervals: usize,
}

impl Axis {
    fn new(max: f64) -> Self {
        if max <= 0.0 {
            return Axis {
                step: 0.25,
                intervals: 4,
            };
        }
        let raw = max / 4.0;
        let magnitude = 10f64.powf(raw.log10().floor());
        let normalized = raw / magnitude;
        // The tolerance absorbs log10 rounding, so an exact power of ten keeps its step.
        let nice = NICE_STEPS
            .into_iter()
            .find(|&n| n >= normalized * (1.0 - 1e-9))
            .unwrap_or(10.0);
        let step = nice * magnitude;
        let intervals = (max / step - 1e-9).ceil().max(1.0) as usize;
        Axis { step, intervals }
    }

    fn top(&self) -> f64 {
        self.step * self.intervals as f64
    }

    /// Grid lines and tick labels, 0 at the bottom.
    fn render(&self) -> String {
        let top = self.top();
        let (divisor, suffix) = SCALES
            .into_iter()
            .find(|&(d, _)| top >= d)
            .unwrap_or((1.0, ""));
        let scaled_step = self.step / divisor;
        let decimals = [1.0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6]
            .into_iter()
            .position(|m| {
                let s = scaled_step * m;
                (s - s.round()).abs() < 1e-6
            })
            .unwrap_or(6);
        (0..=self.intervals)
            .map(|k| {
                let value = self.step * k as f64;
                let y = TOP + PLOT_HEIGHT - PLOT_HEIGHT * value / top;
                let shown = value / divisor;
                let label = if k == 0 {
                    "0".to_owned()
                } else {
                    format!("{shown:.decimals$}{suffix}")
                };
                format!(
                    r#"<line x1="{LEFT}" y1="{y:.2}" x2="{x2}" y2="{y:.2}" stroke="{GRID}"/><text class="tick" x="{x:.2}" y="{ty:.2}" text-anchor="end" fill="{MUTED}">{label}</text>"#,
                    x2 = WIDTH - RIGHT,
                    x = LEFT - 6.0,
                    ty = y + 4.0,
                )
            })
            .collect()
    }
}

fn finite(v: f64) -> f64 {
    if v.is_finite() { v } else { 0.0 }
}

/// A value for people: up to six decimals, trailing zeros dropped.
fn human(v: f64) -> String {
    let s = format!("{v:.6}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn days(values: &[f64]) -> Vec<(String, f64)> {
        values
            .iter()
            .enumerate()
            .map(|(i, v)| (format!("2026-12-{:02}", i + 1), *v))
            .collect()
    }

    fn assert_sane(svg: &str) {
        assert!(!svg.contains("NaN"), "{svg}");
        assert!(!svg.contains("inf"), "{svg}");
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"), "{svg}");
        assert!(!svg.contains("http"), "{svg}");
    }

    #[test]
    fn every_bar_carries_its_exact_value() {
        let values = [0.0, 3.0, 1234567.0, 0.000123, 2.5, 0.1];
        let svg = bars("Daily cost", &days(&values), "USD");
        assert_sane(&svg);
        assert_eq!(svg.matches("<rect x=").count(), values.len());
        assert_eq!(svg.matches("data-value=").count(), values.len());
        for (label, value) in days(&values) {
            let needle = format!(r#"data-label="{label}" data-value="{value}""#);
            assert!(svg.contains(&needle), "{needle} missing in {svg}");
        }
        assert!(svg.contains(r#"data-value="0.000123""#));
        assert!(svg.contains(r#"data-value="1234567""#));
        assert!(svg.contains(r#"data-chart="Daily cost""#));
        assert!(svg.contains(r#"width="100%""#) && svg.contains("viewBox="));
    }

    #[test]
    fn every_line_point_carries_its_exact_value() {
        let values = [0.0, 100.0, 33.333333333333336, 12.5];
        let svg = line("Error rate", &days(&values), "%");
        assert_sane(&svg);
        assert_eq!(svg.matches("<circle ").count(), values.len());
        for (label, value) in days(&values) {
            let needle = format!(r#"data-label="{label}" data-value="{value}""#);
            assert!(svg.contains(&needle), "{needle} missing in {svg}");
        }
        assert!(svg.contains("<polyline"));
    }

    #[test]
    fn one_point_and_all_zeros_draw_without_dividing_by_zero() {
        for svg in [
            bars("One", &days(&[7.0]), "requests"),
            line("One", &days(&[7.0]), "%"),
            bars("Zeros", &days(&[0.0; 30]), "requests"),
            line("Zeros", &days(&[0.0; 30]), "%"),
            bars("Odd", &days(&[f64::NAN, f64::INFINITY, -3.0]), "x"),
        ] {
            assert_sane(&svg);
        }
    }

    #[test]
    fn empty_input_renders_a_message() {
        for svg in [
            bars("Daily tokens", &[], "tokens"),
            line("Error rate", &[], "%"),
        ] {
            assert_sane(&svg);
            assert!(svg.contains("No data for this period"), "{svg}");
            assert!(!svg.contains("data-value"), "{svg}");
            assert!(svg.contains("data-chart="), "{svg}");
        }
    }

    #[test]
    fn text_is_escaped() {
        let points = vec![("<b>\"x\" & 'y'</b>".to_owned(), 1.0)];
        let svg = bars("<script>alert(1)</script>", &points, "a&b\u{0}");
        assert!(!svg.contains("<script>") && !svg.contains("<b>"), "{svg}");
        assert!(svg.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(svg.contains("&lt;b&gt;&quot;x&quot; &amp; &#39;y&#39;&lt;/b&gt;"));
        assert!(svg.contains("a&amp;b\u{FFFD}"));
        assert_eq!(escape("plain 2026-12-01"), "plain 2026-12-01");
    }

    #[test]
    fn the_y_axis_has_three_to_five_ticks() {
        for max in [
            0.0, 0.03, 0.25, 1.0, 3.0, 7.0, 10.0, 33.3, 99.0, 100.0, 101.0, 1000.0, 1234567.0,
            4.2e9,
        ] {
            let svg = bars("t", &days(&[max / 2.0, max]), "u");
            let ticks = svg.matches(r#"class="tick""#).count();
            assert!((3..=5).contains(&ticks), "{max}: {ticks} ticks in {svg}");
            let axis = Axis::new(max);
            assert!(axis.top() >= max, "{max}");
        }
        let svg = bars("t", &days(&[1500.0]), "u");
        assert!(svg.contains(">1.5k</text>"), "{svg}");
        assert!(svg.contains(">0</text>"), "{svg}");
    }

    #[test]
    fn meter_reports_used_and_limit() {
        let m = meter(42.0, 120.0);
        assert_sane(&m);
        assert!(m.contains(r#"data-used="42" data-limit="120""#), "{m}");
        assert!(m.contains("35%"), "{m}");
        assert!(m.contains("#16a34a"));
        let over = meter(150.0, 100.0);
        assert!(
            over.contains(r#"width="100.00""#) && over.contains("#dc2626"),
            "{over}"
        );
        for m in [
            meter(0.0, 0.0),
            meter(5.0, 0.0),
            meter(f64::NAN, f64::INFINITY),
        ] {
            assert_sane(&m);
        }
    }
}
