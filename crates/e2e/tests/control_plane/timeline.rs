//! The scale-up/scale-down timeline: one row a second (connections held, what the API answers,
//! the HPA's desired and current replicas), written as CSV and drawn as an SVG plot.

use std::fmt::Write as _;
use std::path::Path;

/// One sample.
#[derive(Clone, Debug, Default)]
pub(crate) struct Row {
    /// Seconds since the load generator started.
    pub t: f64,
    /// Connections the demo pods hold (sum of their own gauges).
    pub held: f64,
    /// Sum of the values the custom metrics API answers for the HPA's request.
    /// `None` when the read failed (drawn as a gap, never as 0).
    pub api_sum: Option<f64>,
    /// Pods in that answer.
    pub api_pods: Option<usize>,
    /// `status.desiredReplicas` of the HPA.
    pub desired: i32,
    /// `status.currentReplicas` of the HPA.
    pub current: i32,
}

/// A load step: when it started and what it asked for.
#[derive(Clone, Debug)]
pub(crate) struct StepMark {
    /// Seconds since the load generator started.
    pub t: f64,
    /// Connections asked for.
    pub connections: usize,
}

/// Writes the rows as CSV.
pub(crate) fn write_csv(path: &Path, rows: &[Row]) {
    let mut s = String::from(
        "t_seconds,connections_held,api_sum,api_pods,hpa_desired_replicas,hpa_current_replicas\n",
    );
    for r in rows {
        let _ = writeln!(
            s,
            "{:.2},{},{},{},{},{}",
            r.t,
            r.held,
            r.api_sum.map(|v| v.to_string()).unwrap_or_default(),
            r.api_pods.map(|v| v.to_string()).unwrap_or_default(),
            r.desired,
            r.current
        );
    }
    std::fs::write(path, s).expect("write CSV");
}

/// Draws connections (held, and as answered by the API) above; below, the HPA's desired and
/// current replicas and the pods the API answered for (the pods actually running and scraped);
/// the load steps as dashed lines.
pub(crate) fn write_svg(path: &Path, title: &str, rows: &[Row], steps: &[StepMark]) {
    const W: f64 = 900.0;
    const LEFT: f64 = 60.0;
    const RIGHT: f64 = 20.0;
    const PANEL: f64 = 200.0;
    let t_max = rows.last().map_or(1.0, |r| r.t).max(1.0);
    let x = |t: f64| LEFT + t / t_max * (W - LEFT - RIGHT);
    let conn_max = rows
        .iter()
        .map(|r| r.held.max(r.api_sum.unwrap_or(0.0)))
        .fold(1.0, f64::max)
        .max(1.0)
        * 1.1;
    let rep_max = rows
        .iter()
        .map(|r| f64::from(r.desired.max(r.current)))
        .fold(1.0, f64::max)
        + 1.0;
    let top1 = 40.0;
    let top2 = top1 + PANEL + 50.0;
    let h = top2 + PANEL + 45.0;

    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h}" viewBox="0 0 {W} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="20" text-anchor="middle" font-size="14">{}</text>"#,
        W / 2.0,
        escape(title)
    );
    let panel = |s: &mut String,
                 top: f64,
                 max: f64,
                 label: &str,
                 series: &[(&str, &str, Vec<Option<f64>>)]| {
        let y = |v: f64| top + PANEL - v / max * PANEL;
        let _ = writeln!(
            s,
            r##"<rect x="{LEFT}" y="{top}" width="{}" height="{PANEL}" fill="none" stroke="#999"/>"##,
            W - LEFT - RIGHT
        );
        let tick = nice_step(max);
        let mut v = 0.0;
        while v <= max {
            let _ = writeln!(
                s,
                r##"<text x="{}" y="{:.1}" text-anchor="end" fill="#555">{:.0}</text><line x1="{LEFT}" x2="{}" y1="{:.1}" y2="{:.1}" stroke="#eee"/>"##,
                LEFT - 5.0,
                y(v) + 4.0,
                v,
                W - RIGHT,
                y(v),
                y(v)
            );
            v += tick;
        }
        let _ = writeln!(
            s,
            r#"<text x="{LEFT}" y="{}" fill="black">{}</text>"#,
            top - 6.0,
            escape(label)
        );
        for (i, (name, color, values)) in series.iter().enumerate() {
            // One polyline per run of known values: a missing value is a gap.
            let mut runs: Vec<Vec<String>> = vec![Vec::new()];
            for (r, v) in rows.iter().zip(values) {
                match v {
                    Some(v) => {
                        runs.last_mut()
                            .expect("a run")
                            .push(format!("{:.1},{:.1}", x(r.t), y(*v)))
                    }
                    None => runs.push(Vec::new()),
                }
            }
            // The first series is drawn wider so that an exact overlap leaves both visible.
            let width = if i == 0 { 4.0 } else { 1.5 };
            for points in runs.iter().filter(|p| !p.is_empty()) {
                let _ = writeln!(
                    s,
                    r#"<polyline fill="none" stroke="{color}" stroke-width="{width}" points="{}"/>"#,
                    points.join(" ")
                );
            }
            let lx = W - RIGHT - 500.0 + 170.0 * i as f64;
            let _ = writeln!(
                s,
                r#"<line x1="{lx}" x2="{}" y1="{}" y2="{}" stroke="{color}" stroke-width="3"/><text x="{}" y="{}">{}</text>"#,
                lx + 18.0,
                top - 10.0,
                top - 10.0,
                lx + 22.0,
                top - 6.0,
                escape(name)
            );
        }
    };
    panel(
        &mut s,
        top1,
        conn_max,
        "WebSocket connections",
        &[
            (
                "held by the pods",
                "#1f77b4",
                rows.iter().map(|r| Some(r.held)).collect(),
            ),
            (
                "sum served by API",
                "#ff7f0e",
                rows.iter().map(|r| r.api_sum).collect(),
            ),
        ],
    );
    panel(
        &mut s,
        top2,
        rep_max,
        "HPA replicas",
        &[
            (
                "status.desiredReplicas",
                "#2ca02c",
                rows.iter().map(|r| Some(f64::from(r.desired))).collect(),
            ),
            (
                "status.currentReplicas",
                "#d62728",
                rows.iter().map(|r| Some(f64::from(r.current))).collect(),
            ),
            (
                "pods served",
                "#9467bd",
                rows.iter().map(|r| r.api_pods.map(|n| n as f64)).collect(),
            ),
        ],
    );
    for step in steps {
        let sx = x(step.t);
        let _ = writeln!(
            s,
            r##"<line x1="{sx:.1}" x2="{sx:.1}" y1="{top1}" y2="{}" stroke="#444" stroke-dasharray="4 3"/><text x="{:.1}" y="{}" fill="#444">load → {}</text>"##,
            top2 + PANEL,
            sx + 4.0,
            top1 + 14.0,
            step.connections
        );
    }
    let tick = nice_step(t_max);
    let mut t = 0.0;
    while t <= t_max {
        for top in [top1, top2] {
            let _ = writeln!(
                s,
                r##"<text x="{:.1}" y="{}" text-anchor="middle" fill="#555">{t:.0}</text>"##,
                x(t),
                top + PANEL + 15.0
            );
        }
        t += tick;
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">seconds since the load generator started</text>"#,
        W / 2.0,
        h - 5.0
    );
    s.push_str("</svg>\n");
    std::fs::write(path, s).expect("write SVG");
}

/// A step of 1, 2 or 5 × 10^k giving at most about six ticks up to `max`.
fn nice_step(max: f64) -> f64 {
    let raw = max / 6.0;
    let base = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * base)
        .find(|step| *step >= raw)
        .unwrap_or(10.0 * base)
        .max(1.0)
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[test]
fn ticks_are_round_numbers() {
    assert_eq!(nice_step(660.0), 200.0);
    assert_eq!(nice_step(120.0), 20.0);
    assert_eq!(nice_step(7.0), 2.0);
    assert_eq!(nice_step(3.0), 1.0);
}
