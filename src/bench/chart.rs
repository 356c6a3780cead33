//! A small SVG bar chart: groups of bars with a min-max whisker each.

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

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Renders `bars` as an SVG document.
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
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"24\" text-anchor=\"middle\" font-size=\"14\">{}</text>\n",
        w / 2.0,
        esc(title)
    );
    for i in 0..=5 {
        let v = max * i as f64 / 5.0;
        s += &format!(
            "<line x1=\"{left}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{v:.0}</text>\n",
            w - 20.0,
            left - 6.0,
            y(v) + 4.0,
            y = y(v)
        );
    }
    s += &format!("<text x=\"16\" y=\"{}\" transform=\"rotate(-90 16 {})\" text-anchor=\"middle\">{}</text>\n", top + plot_h / 2.0, top + plot_h / 2.0, esc(unit));
    for (gi, g) in groups.iter().enumerate() {
        let in_group: Vec<&Bar> = bars.iter().filter(|b| b.group == *g).collect();
        let bw = group_w * 0.8 / in_group.len() as f64;
        let x0 = left + gi as f64 * group_w + group_w * 0.1;
        for (i, b) in in_group.iter().enumerate() {
            let x = x0 + i as f64 * bw;
            s += &format!(
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
                esc(&b.label),
                cx = x + bw * 0.45
            );
        }
        s += &format!(
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\" font-weight=\"bold\">{}</text>\n",
            x0 + group_w * 0.4,
            h - bottom + 36.0,
            esc(g)
        );
    }
    s += "</svg>\n";
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chart_has_one_rect_per_bar_and_escapes_text() {
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
        assert_eq!(svg.matches("<rect x=").count(), 3);
        assert!(svg.contains("t &amp; t") && svg.contains("g&lt;1&gt;"));
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    }
}
