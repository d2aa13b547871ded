//! The SVG chart of a comparison: one diverging bar per figure on a log2
//! scale, grouped by scenario, right of the 1x line where ringway is
//! better, with the run's headings above and its notes (the noise line
//! among them) below. Plain text, no dependencies.

use std::fmt::Write as _;

use super::verdict;

/// One bar: how many times better ringway is than the baseline.
#[derive(Debug, Clone)]
pub struct Bar {
    pub group: String,
    pub label: String,
    /// The two medians behind the bar, in words.
    pub detail: String,
    pub advantage: Option<f64>,
}

pub fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// A diverging bar chart on a log2 scale: one bar per figure, grouped by
/// scenario; right of the 1x line means ringway is better than `vs`.
/// `alerts` (drawn in red) and `footer` go under the bars.
pub fn svg_chart(
    title: &str,
    subtitle: &[String],
    vs: &str,
    bars: &[Bar],
    alerts: &[String],
    footer: &[String],
) -> String {
    const W: f64 = 1040.0;
    const LABEL_X: f64 = 24.0;
    const PLOT_X0: f64 = 430.0;
    const PLOT_X1: f64 = 1000.0;
    const ROW_H: f64 = 38.0;
    const GROUP_H: f64 = 30.0;
    // The scale reaches 8x each side, further when a bar needs it (32x at most).
    let most = bars
        .iter()
        .filter_map(|b| b.advantage)
        .map(|a| a.log2().abs())
        .fold(3.0f64, f64::max)
        .ceil()
        .min(5.0);
    let mid = (PLOT_X0 + PLOT_X1) / 2.0;
    let half = (PLOT_X1 - PLOT_X0) / 2.0;
    let x_of = |adv: f64| mid + (adv.log2().clamp(-most, most) / most) * half;

    let mut groups: Vec<&str> = Vec::new();
    for b in bars {
        if groups.last() != Some(&b.group.as_str()) {
            groups.push(&b.group);
        }
    }
    let top = 76.0 + 18.0 * subtitle.len() as f64;
    let axis_y = top + 24.0;
    let body_y = axis_y + 14.0;
    let body_h = groups.len() as f64 * GROUP_H + bars.len() as f64 * ROW_H;
    let foot_y = body_y + body_h + 40.0;
    let h = foot_y + 18.0 * (alerts.len() + footer.len()) as f64 + 16.0;

    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h}" viewBox="0 0 {W} {h}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif">"#
    );
    let _ = writeln!(
        s,
        r##"<rect x="0" y="0" width="{W}" height="{h}" fill="#ffffff"/>"##
    );
    let _ = writeln!(
        s,
        r##"<text x="{LABEL_X}" y="34" font-size="22" font-weight="bold" fill="#111">{}</text>"##,
        xml_escape(title)
    );
    for (i, line) in subtitle.iter().enumerate() {
        let _ = writeln!(
            s,
            r##"<text x="{LABEL_X}" y="{}" font-size="13" fill="#444">{}</text>"##,
            58.0 + 18.0 * i as f64,
            xml_escape(line)
        );
    }
    // Direction labels and the scale.
    let _ = writeln!(
        s,
        r##"<text x="{}" y="{}" font-size="13" fill="#b23b3b" text-anchor="end">&#8592; {} better</text>"##,
        mid - 8.0,
        top,
        xml_escape(vs)
    );
    let _ = writeln!(
        s,
        r##"<text x="{}" y="{}" font-size="13" fill="#2e7d32">ringway better &#8594;</text>"##,
        mid + 8.0,
        top
    );
    // The scale's ticks; their grid lines are drawn row by row below, so
    // that group headings stay clear of them.
    let ticks: Vec<f64> = (0..=(2.0 * most) as i32).map(|i| i as f64 - most).collect();
    for &k in &ticks {
        let x = mid + (k / most) * half;
        let label = if k >= 0.0 {
            format!("{}x", 2f64.powf(k))
        } else {
            format!("1/{}x", 2f64.powf(-k))
        };
        let _ = writeln!(
            s,
            r##"<text x="{x:.1}" y="{:.1}" font-size="11" fill="#555" text-anchor="middle">{label}</text>"##,
            axis_y - 4.0
        );
    }
    // Groups and bars.
    let mut y = body_y;
    let mut current: Option<&str> = None;
    for b in bars {
        if current != Some(b.group.as_str()) {
            current = Some(&b.group);
            let _ = writeln!(
                s,
                r##"<text x="{LABEL_X}" y="{:.1}" font-size="14" font-weight="bold" fill="#1a3d6d">{}</text>"##,
                y + 20.0,
                xml_escape(&b.group)
            );
            y += GROUP_H;
        }
        for &k in &ticks {
            let x = mid + (k / most) * half;
            let (stroke, width) = if k == 0.0 {
                ("#222", 1.6)
            } else {
                ("#dddddd", 1.0)
            };
            let _ = writeln!(
                s,
                r##"<line x1="{x:.1}" y1="{y:.1}" x2="{x:.1}" y2="{:.1}" stroke="{stroke}" stroke-width="{width}"/>"##,
                y + ROW_H
            );
        }
        let _ = writeln!(
            s,
            r##"<text x="{}" y="{:.1}" font-size="13" fill="#111">{}</text>"##,
            LABEL_X + 12.0,
            y + 16.0,
            xml_escape(&b.label)
        );
        let _ = writeln!(
            s,
            r##"<text x="{}" y="{:.1}" font-size="11" fill="#666">{}</text>"##,
            LABEL_X + 12.0,
            y + 31.0,
            xml_escape(&b.detail)
        );
        match b.advantage {
            Some(adv) if adv > 0.0 && adv.is_finite() => {
                let x = x_of(adv);
                let (x0, w) = if x >= mid {
                    (mid, x - mid)
                } else {
                    (x, mid - x)
                };
                let fill = if adv >= 1.0 { "#43a047" } else { "#d9534f" };
                let _ = writeln!(
                    s,
                    r##"<rect class="bar" x="{x0:.1}" y="{:.1}" width="{:.1}" height="20" fill="{fill}"/>"##,
                    y + 7.0,
                    w.max(1.5)
                );
                let text = verdict(adv);
                let clipped = if adv.log2().abs() > most {
                    " (off scale)"
                } else {
                    ""
                };
                // Outside the bar's end, or inside the bar when the text
                // would not fit before the edge (about 7 px a character).
                let text_w = 7.0 * (verdict(adv).len() + clipped.len()) as f64 + 12.0;
                let inside = if adv >= 1.0 {
                    x + text_w > W - 8.0
                } else {
                    x - text_w < PLOT_X0 - 60.0
                };
                let (tx, anchor, color) = match (adv >= 1.0, inside) {
                    (true, false) => (x + 6.0, "start", "#111"),
                    (true, true) => (x - 6.0, "end", "#fff"),
                    (false, false) => (x - 6.0, "end", "#111"),
                    (false, true) => (x + 6.0, "start", "#fff"),
                };
                let _ = writeln!(
                    s,
                    r##"<text x="{tx:.1}" y="{:.1}" font-size="12" fill="{color}" text-anchor="{anchor}">{}{clipped}</text>"##,
                    y + 22.0,
                    xml_escape(&text)
                );
            }
            _ => {
                let _ = writeln!(
                    s,
                    r##"<text x="{:.1}" y="{:.1}" font-size="12" fill="#888">n/a</text>"##,
                    mid + 6.0,
                    y + 22.0
                );
            }
        }
        y += ROW_H;
    }
    // Warnings first, in red (a disturbed run says so here as in the text).
    let lines = alerts
        .iter()
        .map(|l| (l, "#b23b3b"))
        .chain(footer.iter().map(|l| (l, "#555")));
    for (i, (line, color)) in lines.enumerate() {
        let _ = writeln!(
            s,
            r##"<text x="{LABEL_X}" y="{:.1}" font-size="12" fill="{color}">{}</text>"##,
            foot_y + 18.0 * i as f64,
            xml_escape(line)
        );
    }
    s.push_str("</svg>\n");
    s
}
