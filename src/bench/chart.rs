//! The benchmarks' SVG charts, hand-written standalone SVG 1.1 with no dependencies: a bar
//! chart with a min-max whisker per bar (`bench seed-table`) and a line chart of named
//! (seconds, MiB) series with vertical markers (`bench linux`). Both share the document frame
//! (size, white background, title, rotated y label) and the text escaping.
//!
//! It lives in the CLI, not in the Linux harness: `bench seed-table` needs no Linux guest, and
//! the harness measures while the commands present.

use std::fmt::Write as _;

/// Escapes text for XML content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if (c as u32) < 0x20 && c != '\n' && c != '\t' => {}
            c => out.push(c),
        }
    }
    out
}

/// The opening of a `w` x `h` document: the `<svg>` element, a white background and `title`
/// centred at (`title_x`, `title_y`) in `title_size` px.
fn open_document(
    w: f64,
    h: f64,
    title: &str,
    title_x: f64,
    title_y: f64,
    title_size: u32,
) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <svg xmlns=\"http://www.w3.org/2000/svg\" version=\"1.1\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect x=\"0\" y=\"0\" width=\"{w}\" height=\"{h}\" fill=\"white\"/>\n\
         <text x=\"{title_x}\" y=\"{title_y}\" text-anchor=\"middle\" font-size=\"{title_size}\">{}</text>\n",
        escape(title)
    )
}

/// The y axis label, rotated, centred on the plot's height (`mid_y`).
fn y_label(label: &str, mid_y: f64) -> String {
    format!(
        "<text x=\"16\" y=\"{mid_y:.1}\" text-anchor=\"middle\" transform=\"rotate(-90 16 {mid_y:.1})\">{}</text>\n",
        escape(label)
    )
}

// ---- Bar chart ----------------------------------------------------------------------------

/// One bar.
pub struct Bar {
    /// Group it belongs to (bars of a group stand together).
    pub group: String,
    /// Its label.
    pub label: String,
    /// Its height.
    pub value: f64,
    /// Whisker bottom.
    pub low: f64,
    /// Whisker top.
    pub high: f64,
}

/// Renders `bars` as an SVG document: groups side by side, a whisker from `low` to `high` on
/// each bar, the y axis in `unit` from 0.
pub fn bar_chart(title: &str, unit: &str, bars: &[Bar]) -> String {
    const COLORS: [&str; 3] = ["#c0504d", "#4f81bd", "#9bbb59"];
    let (w, h, left, top, bottom) = (760.0, 420.0, 70.0, 50.0, 70.0);
    let max = bars
        .iter()
        .map(|b| b.high.max(b.value))
        .fold(0.0, f64::max)
        .max(1e-9)
        * 1.1;
    let plot_h = h - top - bottom;
    let y = |v: f64| top + plot_h * (1.0 - v / max);
    let mut groups: Vec<&str> = Vec::new();
    for b in bars {
        if !groups.contains(&b.group.as_str()) {
            groups.push(&b.group);
        }
    }
    let group_w = (w - left - 20.0) / groups.len().max(1) as f64;
    let mut s = open_document(w, h, title, w / 2.0, 24.0, 14);
    for i in 0..=5 {
        let v = max * i as f64 / 5.0;
        let _ = writeln!(
            s,
            "<line x1=\"{left}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{v:.0}</text>",
            w - 20.0,
            left - 6.0,
            y(v) + 4.0,
            y = y(v)
        );
    }
    s += &y_label(unit, top + plot_h / 2.0);
    for (gi, g) in groups.iter().enumerate() {
        let in_group: Vec<&Bar> = bars.iter().filter(|b| b.group == *g).collect();
        let bw = group_w * 0.8 / in_group.len() as f64;
        let x0 = left + gi as f64 * group_w + group_w * 0.1;
        for (i, b) in in_group.iter().enumerate() {
            let x = x0 + i as f64 * bw;
            let _ = write!(
                s,
                "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\"/>\n\
                 <line x1=\"{cx:.1}\" x2=\"{cx:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"black\"/>\n\
                 <text x=\"{cx:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{:.1}</text>\n\
                 <text x=\"{cx:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>\n",
                y(b.value),
                bw * 0.9,
                (h - bottom) - y(b.value),
                COLORS[i % COLORS.len()],
                y(b.low),
                y(b.high),
                y(b.high) - 4.0,
                b.value,
                h - bottom + 16.0,
                escape(&b.label),
                cx = x + bw * 0.45
            );
        }
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\" font-weight=\"bold\">{}</text>",
            x0 + group_w * 0.4,
            h - bottom + 36.0,
            escape(g)
        );
    }
    s += "</svg>\n";
    s
}

// ---- Line chart ---------------------------------------------------------------------------
/// One named curve.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Legend label.
    pub name: String,
    /// Points (x, y), drawn in order.
    pub points: Vec<(f64, f64)>,
}

/// A labelled vertical line at an x position.
#[derive(Debug, Clone, PartialEq)]
pub struct Marker {
    /// Label.
    pub label: String,
    /// x position.
    pub x: f64,
}

/// A chart.
#[derive(Debug, Clone, PartialEq)]
pub struct Chart {
    /// Title above the plot.
    pub title: String,
    /// x axis label.
    pub x_label: String,
    /// y axis label.
    pub y_label: String,
    /// Curves.
    pub series: Vec<Series>,
    /// Vertical markers.
    pub markers: Vec<Marker>,
    /// Size in pixels.
    pub width: u32,
    /// Size in pixels.
    pub height: u32,
}

const COLORS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

/// Tick positions covering `[lo, hi]` with a 1/2/5 x 10^k step, about `n` of them.
pub fn nice_ticks(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    if !(lo.is_finite() && hi.is_finite()) || hi <= lo {
        return vec![lo];
    }
    let raw = (hi - lo) / n.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let first = (lo / step).ceil() * step;
    let mut ticks = Vec::new();
    let mut i = 0;
    loop {
        let t = first + i as f64 * step;
        if t > hi + step * 1e-9 || i > 1000 {
            break;
        }
        ticks.push(if t.abs() < step * 1e-9 { 0.0 } else { t });
        i += 1;
    }
    ticks
}

fn fmt_tick(v: f64) -> String {
    if v == v.trunc() && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v:.2}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_owned()
    }
}

impl Chart {
    /// An empty 900x500 chart.
    pub fn new(title: &str, x_label: &str, y_label: &str) -> Chart {
        Chart {
            title: title.into(),
            x_label: x_label.into(),
            y_label: y_label.into(),
            series: Vec::new(),
            markers: Vec::new(),
            width: 900,
            height: 500,
        }
    }

    /// Adds a curve.
    pub fn series(mut self, name: &str, points: Vec<(f64, f64)>) -> Chart {
        self.series.push(Series {
            name: name.into(),
            points,
        });
        self
    }

    /// Adds a vertical marker.
    pub fn marker(mut self, label: &str, x: f64) -> Chart {
        self.markers.push(Marker {
            label: label.into(),
            x,
        });
        self
    }

    fn bounds(&self) -> (f64, f64, f64, f64) {
        let pts = self
            .series
            .iter()
            .flat_map(|s| s.points.iter())
            .filter(|(x, y)| x.is_finite() && y.is_finite());
        let (mut x0, mut x1, mut y1) = (f64::INFINITY, f64::NEG_INFINITY, f64::NEG_INFINITY);
        for &(x, y) in pts {
            x0 = x0.min(x);
            x1 = x1.max(x);
            y1 = y1.max(y);
        }
        for m in &self.markers {
            if m.x.is_finite() {
                x0 = x0.min(m.x);
                x1 = x1.max(m.x);
            }
        }
        if !x0.is_finite() {
            (x0, x1, y1) = (0.0, 1.0, 1.0);
        }
        if x1 <= x0 {
            x1 = x0 + 1.0;
        }
        if y1.is_nan() || y1 <= 0.0 {
            y1 = 1.0;
        }
        // y starts at 0 (memory); a little headroom on top, rounded to a tick.
        let ticks = nice_ticks(0.0, y1 * 1.05, 6);
        let step = if ticks.len() > 1 {
            ticks[1] - ticks[0]
        } else {
            y1
        };
        let y_top = (y1 * 1.05 / step).ceil() * step;
        (x0, x1, 0.0, y_top)
    }

    /// Renders the chart as an SVG document.
    pub fn to_svg(&self) -> String {
        let (w, h) = (self.width.max(200) as f64, self.height.max(150) as f64);
        let (left, right, top, bottom) = (70.0, 180.0, 40.0, 50.0);
        let (pw, ph) = (w - left - right, h - top - bottom);
        let (x0, x1, y0, y1) = self.bounds();
        let sx = |x: f64| left + (x - x0) / (x1 - x0) * pw;
        let sy = |y: f64| top + ph - (y - y0) / (y1 - y0) * ph;
        let mut s = open_document(w, h, &self.title, left + pw / 2.0, 22.0, 15);
        // Grid and ticks.
        let _ = writeln!(s, r##"<g class="grid" stroke="#dddddd" stroke-width="1">"##);
        let xt = nice_ticks(x0, x1, 8);
        let yt = nice_ticks(y0, y1, 6);
        for &t in &xt {
            let _ = writeln!(
                s,
                r#"<line x1="{0:.1}" y1="{1:.1}" x2="{0:.1}" y2="{2:.1}"/>"#,
                sx(t),
                top,
                top + ph
            );
        }
        for &t in &yt {
            let _ = writeln!(
                s,
                r#"<line x1="{1:.1}" y1="{0:.1}" x2="{2:.1}" y2="{0:.1}"/>"#,
                sy(t),
                left,
                left + pw
            );
        }
        let _ = writeln!(s, "</g>");
        let _ = writeln!(
            s,
            r#"<g class="axes" stroke="black" stroke-width="1" fill="none">"#
        );
        let _ = writeln!(
            s,
            r#"<rect x="{left}" y="{top}" width="{pw}" height="{ph}"/>"#
        );
        let _ = writeln!(s, "</g>");
        let _ = writeln!(s, r#"<g class="ticks" fill="black">"#);
        for &t in &xt {
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
                sx(t),
                top + ph + 16.0,
                fmt_tick(t)
            );
        }
        for &t in &yt {
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
                left - 6.0,
                sy(t) + 4.0,
                fmt_tick(t)
            );
        }
        let _ = writeln!(s, "</g>");
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            left + pw / 2.0,
            h - 12.0,
            escape(&self.x_label)
        );
        s += &y_label(&self.y_label, top + ph / 2.0);
        // Markers.
        for (i, m) in self.markers.iter().filter(|m| m.x.is_finite()).enumerate() {
            let x = sx(m.x);
            let label_y = top + 12.0 + 14.0 * i as f64;
            let _ = writeln!(
                s,
                r##"<g class="marker"><line x1="{x:.1}" y1="{top}" x2="{x:.1}" y2="{:.1}" stroke="#888888" stroke-dasharray="4 3"/><text x="{:.1}" y="{:.1}" fill="#555555">{}</text></g>"##,
                top + ph,
                x + 3.0,
                label_y,
                escape(&m.label)
            );
        }
        // Curves and legend.
        for (i, ser) in self.series.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            let mut pts = String::new();
            for &(x, y) in ser
                .points
                .iter()
                .filter(|(x, y)| x.is_finite() && y.is_finite())
            {
                let _ = write!(pts, "{:.2},{:.2} ", sx(x), sy(y));
            }
            let _ = writeln!(
                s,
                r#"<polyline class="series" data-name="{}" fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
                escape(&ser.name),
                pts.trim_end()
            );
            let ly = top + 10.0 + i as f64 * 20.0;
            let lx = left + pw + 15.0;
            let _ = writeln!(
                s,
                r#"<g class="legend"><line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{color}" stroke-width="3"/><text x="{}" y="{}">{}</text></g>"#,
                lx + 25.0,
                lx + 30.0,
                ly + 4.0,
                escape(&ser.name)
            );
        }
        s.push_str("</svg>\n");
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bar_chart_has_one_rect_per_bar_and_escapes_text() {
        let bars: Vec<Bar> = ["a", "b", "c"]
            .iter()
            .map(|l| Bar {
                group: "g<1>".into(),
                label: (*l).into(),
                value: 2.0,
                low: 1.0,
                high: 3.0,
            })
            .collect();
        let svg = bar_chart("t & t", "ms", &bars);
        assert_eq!(
            svg.matches("<rect x=").count(),
            4,
            "the background and three bars"
        );
        assert!(svg.contains("t &amp; t") && svg.contains("g&lt;1&gt;"));
        roxmltree::Document::parse(&svg).expect("valid XML");
    }

    #[test]
    fn ticks_are_nice() {
        assert_eq!(
            nice_ticks(0.0, 10.0, 5),
            vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]
        );
        assert_eq!(nice_ticks(0.0, 1000.0, 4), vec![0.0, 500.0, 1000.0]);
        let t = nice_ticks(-3.3, 7.1, 10);
        assert_eq!(t.first(), Some(&-2.0));
        assert_eq!(t.last(), Some(&6.0));
        assert_eq!(nice_ticks(1.0, 1.0, 5), vec![1.0]);
        assert_eq!(fmt_tick(2.5), "2.5");
        assert_eq!(fmt_tick(300.0), "300");
    }

    #[test]
    fn svg_is_valid_xml_with_every_series() {
        let chart = Chart::new("Host memory <QEMU & UML>", "seconds", "MiB")
            .series(
                "qemu \"tcg\"",
                vec![(0.0, 280.0), (1.0, 540.0), (5.0, 290.0)],
            )
            .series(
                "uml+prezero",
                vec![(0.0, 40.0), (1.5, 300.0), (4.0, f64::NAN), (6.0, 45.0)],
            )
            .series("empty", vec![])
            .marker("free", 2.0);
        let svg = chart.to_svg();
        let doc = roxmltree::Document::parse(&svg).expect("valid XML");
        let root = doc.root_element();
        assert_eq!(root.tag_name().name(), "svg");
        assert_eq!(
            root.tag_name().namespace(),
            Some("http://www.w3.org/2000/svg")
        );
        let lines: Vec<_> = doc
            .descendants()
            .filter(|n| n.has_tag_name("polyline"))
            .collect();
        let names: Vec<_> = lines
            .iter()
            .map(|n| n.attribute("data-name").unwrap())
            .collect();
        assert_eq!(names, ["qemu \"tcg\"", "uml+prezero", "empty"]);
        assert_eq!(lines[0].attribute("points").unwrap().split(' ').count(), 3);
        // The NaN point is dropped.
        assert_eq!(lines[1].attribute("points").unwrap().split(' ').count(), 3);
        let texts: Vec<_> = doc.descendants().filter_map(|n| n.text()).collect();
        assert!(texts.contains(&"Host memory <QEMU & UML>"));
        assert!(texts.contains(&"free"));
        assert!(texts.contains(&"uml+prezero"));
        // Points lie inside the plot area.
        for n in &lines {
            for p in n.attribute("points").unwrap().split_whitespace() {
                let (x, y) = p.split_once(',').unwrap();
                let (x, y): (f64, f64) = (x.parse().unwrap(), y.parse().unwrap());
                assert!(
                    (70.0..=720.0 + 1e-6).contains(&x) && (40.0..=450.0 + 1e-6).contains(&y),
                    "{x},{y}"
                );
            }
        }
    }

    #[test]
    fn empty_chart_still_renders() {
        let svg = Chart::new("t", "x", "y").to_svg();
        roxmltree::Document::parse(&svg).unwrap();
    }
}
