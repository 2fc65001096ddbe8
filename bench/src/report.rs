//! The report: rows and bars collected by the figures, written out as the markdown table
//! (docs/benchmarks.md) and the SVG chart (docs/benchmarks.svg), with the machine it ran on.

use std::fmt::Write as _;

pub(crate) struct Row {
    pub(crate) id: &'static str,
    pub(crate) figure: String,
    pub(crate) ours: String,
    pub(crate) baseline: String,
    pub(crate) target: String,
    pub(crate) met: Option<bool>,
}

pub(crate) struct Bar {
    pub(crate) label: String,
    pub(crate) ours: f64,
    pub(crate) baselines: Vec<(&'static str, f64)>,
    pub(crate) unit: &'static str,
    pub(crate) higher_is_better: bool,
}

#[derive(Default)]
pub(crate) struct Report {
    pub(crate) rows: Vec<Row>,
    pub(crate) bars: Vec<Bar>,
    pub(crate) notes: Vec<String>,
    pub(crate) checks: Vec<String>,
}

impl Report {
    pub(crate) fn row(
        &mut self,
        id: &'static str,
        figure: impl Into<String>,
        ours: impl Into<String>,
        baseline: impl Into<String>,
        target: impl Into<String>,
        met: Option<bool>,
    ) {
        let row = Row {
            id,
            figure: figure.into(),
            ours: ours.into(),
            baseline: baseline.into(),
            target: target.into(),
            met,
        };
        eprintln!(
            "  {} {}: ours {} | baseline {} | target {}{}",
            row.id,
            row.figure,
            row.ours,
            row.baseline,
            row.target,
            match row.met {
                Some(true) => " (met)",
                Some(false) => " (MISSED)",
                None => "",
            }
        );
        self.rows.push(row);
    }

    pub(crate) fn bar(
        &mut self,
        label: impl Into<String>,
        ours: f64,
        baselines: Vec<(&'static str, f64)>,
        unit: &'static str,
        higher_is_better: bool,
    ) {
        self.bars.push(Bar {
            label: label.into(),
            ours,
            baselines,
            unit,
            higher_is_better,
        });
    }
}

pub(crate) fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    format!("{cpu}, {cores} cores")
}

pub(crate) fn command_output(cmd: &str, args: &[&str]) -> String {
    std::process::Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

pub(crate) fn markdown(report: &Report, header: &str, name: &str) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# Benchmarks\n");
    let _ = writeln!(md, "{header}\n");
    let _ = writeln!(
        md,
        "| # | figure | darkrift-etcd | baseline (same run) | target | met |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|");
    for r in &report.rows {
        let met = match r.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "",
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} |",
            r.id, r.figure, r.ours, r.baseline, r.target, met
        );
    }
    let _ = writeln!(md, "\n![darkrift-etcd against its baselines]({name}.svg)\n");
    let _ = writeln!(md, "## The full id space\n");
    for c in &report.checks {
        let _ = writeln!(md, "{c}\n");
    }
    let _ = writeln!(md, "## How each figure is measured\n");
    for n in &report.notes {
        let _ = writeln!(md, "{n}\n");
    }
    md
}

pub(crate) fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

pub(crate) fn fmt_value(v: f64, unit: &str) -> String {
    if v >= 100.0 {
        format!("{v:.0} {unit}")
    } else if v >= 10.0 {
        format!("{v:.1} {unit}")
    } else {
        format!("{v:.2} {unit}")
    }
}

/// One group of horizontal bars per comparison (ours first), each group scaled to its largest.
pub(crate) fn svg(report: &Report, subtitle: &str) -> String {
    let (width, label_w, bar_w, top) = (1000.0, 300.0, 500.0, 70.0);
    #[allow(clippy::cast_precision_loss, reason = "a handful of bars")]
    let group_h = |b: &Bar| 14.0 + 18.0 * (1 + b.baselines.len()) as f64;
    let height = top + report.bars.iter().map(group_h).sum::<f64>() + 30.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="13">"#
    );
    let _ = writeln!(s, r##"<rect width="100%" height="100%" fill="#ffffff"/>"##);
    let _ = writeln!(
        s,
        r#"<text x="16" y="26" font-size="17" font-weight="bold">darkrift-etcd (blue) against its baselines (grey), one run</text>"#
    );
    let _ = writeln!(
        s,
        r##"<text x="16" y="48" fill="#555555">{}</text>"##,
        xml_escape(subtitle)
    );
    let mut y = top;
    for b in &report.bars {
        let max = b
            .baselines
            .iter()
            .map(|(_, v)| *v)
            .fold(b.ours, f64::max)
            .max(f64::MIN_POSITIVE);
        let better = if b.higher_is_better {
            "higher is better"
        } else {
            "lower is better"
        };
        let _ = writeln!(
            s,
            r##"<text x="16" y="{:.1}">{}</text><text x="16" y="{:.1}" fill="#777777" font-size="11">{better}</text>"##,
            y + 16.0,
            xml_escape(&b.label),
            y + 31.0
        );
        let bars = std::iter::once(("darkrift-etcd", b.ours, "#2b6cb0"))
            .chain(b.baselines.iter().map(|(name, v)| (*name, *v, "#a0aec0")));
        for (j, (name, v, color)) in bars.enumerate() {
            #[allow(clippy::cast_precision_loss)]
            let by = y + 4.0 + 18.0 * j as f64;
            let w = if v.is_finite() {
                (v.max(0.0) / max * bar_w).max(1.0)
            } else {
                1.0
            };
            let _ = writeln!(
                s,
                r#"<rect x="{label_w}" y="{by:.1}" width="{w:.1}" height="15" fill="{color}"/><text x="{:.1}" y="{:.1}" font-size="12">{} ({})</text>"#,
                label_w + w + 6.0,
                by + 12.0,
                xml_escape(&fmt_value(v, b.unit)),
                xml_escape(name)
            );
        }
        y += group_h(b);
    }
    let _ = writeln!(s, "</svg>");
    s
}
