//! The timelines of the control-plane scenarios: one row a second (connections held, what the API
//! answers, the HPA's desired and current replicas, and per pod what it holds and what the API
//! served for it, with the spread over the Ready pods), written as CSV and drawn as an SVG plot.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

/// One sample.
#[derive(Clone, Debug, Default)]
pub(crate) struct Row {
    /// Seconds since the scenario's first sample (the load generator's start in the
    /// scale-up/scale-down runs).
    pub t: f64,
    /// Connections the demo pods hold (sum of their own gauges).
    pub held: f64,
    /// Sum of the values the custom metrics API answers for the HPA's request.
    /// `None` when the read failed (drawn as a gap, never as 0).
    pub api_sum: Option<f64>,
    /// Pods in that answer.
    pub api_pods: Option<usize>,
    /// `status.desiredReplicas` of the HPA (-1 when there is no HPA yet or its status could not
    /// be read: a gap in the plot).
    pub desired: i32,
    /// `status.currentReplicas` of the HPA (-1 likewise).
    pub current: i32,
    /// Every pod process of the sample, by pod name.
    pub pods: BTreeMap<String, PodSample>,
}

/// One pod in one sample.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct PodSample {
    /// Connections it holds, from its own `/metrics` (the truth); `None` when it did not answer.
    pub held: Option<f64>,
    /// What the API served for it; `None` when the answer left it out (or the read failed).
    pub api: Option<f64>,
    /// Reported Ready and not terminating (a Service sends it new connections).
    pub ready: bool,
}

/// How connections spread over the Ready pods of one sample (those that answered).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Spread {
    /// The most any of them holds.
    pub max: f64,
    /// The least.
    pub min: f64,
    /// Their mean.
    pub mean: f64,
}

impl Spread {
    /// `max ÷ mean`: 1 when even, the pod count when one pod holds everything. `None` when no
    /// pod holds anything.
    pub(crate) fn imbalance(&self) -> Option<f64> {
        (self.mean > 0.0).then(|| self.max / self.mean)
    }
}

impl Row {
    /// The spread over the Ready pods that answered; `None` without any.
    pub(crate) fn spread(&self) -> Option<Spread> {
        let held: Vec<f64> = self
            .pods
            .values()
            .filter(|p| p.ready)
            .filter_map(|p| p.held)
            .collect();
        if held.is_empty() {
            return None;
        }
        Some(Spread {
            max: held.iter().copied().fold(f64::MIN, f64::max),
            min: held.iter().copied().fold(f64::MAX, f64::min),
            mean: held.iter().sum::<f64>() / held.len() as f64,
        })
    }
}

/// A load step: when it started and what it asked for.
#[derive(Clone, Debug)]
pub(crate) struct StepMark {
    /// Seconds on the rows' clock.
    pub t: f64,
    /// What to write beside the mark (`load → 600`, `rollout`).
    pub label: String,
}

/// Every pod of the rows, in order of first appearance.
fn pod_names(rows: &[Row]) -> Vec<&str> {
    let mut names: Vec<&str> = Vec::new();
    for row in rows {
        for name in row.pods.keys() {
            if !names.contains(&name.as_str()) {
                names.push(name);
            }
        }
    }
    names
}

/// Writes the rows as CSV: the totals, the spread over the Ready pods (`max`, `min`, `mean`,
/// `imbalance` = max ÷ mean), then `held_POD` and `api_POD` for every pod that appears. An empty
/// cell is a value that was not there (a pod not yet started or gone, a failed read), never 0.
pub(crate) fn write_csv(path: &Path, rows: &[Row]) {
    let names = pod_names(rows);
    let mut s = String::from(
        "t_seconds,connections_held,api_sum,api_pods,hpa_desired_replicas,hpa_current_replicas,max,min,mean,imbalance",
    );
    for name in &names {
        let _ = write!(s, ",held_{name},api_{name}");
    }
    s.push('\n');
    let cell = |v: Option<f64>| v.map(|v| v.to_string()).unwrap_or_default();
    for r in rows {
        let spread = r.spread();
        let _ = write!(
            s,
            "{:.2},{},{},{},{},{},{},{},{},{}",
            r.t,
            r.held,
            cell(r.api_sum),
            r.api_pods.map(|v| v.to_string()).unwrap_or_default(),
            r.desired,
            r.current,
            cell(spread.map(|s| s.max)),
            cell(spread.map(|s| s.min)),
            spread.map(|s| format!("{:.2}", s.mean)).unwrap_or_default(),
            spread
                .and_then(|s| s.imbalance())
                .map(|v| format!("{v:.3}"))
                .unwrap_or_default(),
        );
        for name in &names {
            let pod = r.pods.get(*name);
            let _ = write!(
                s,
                ",{},{}",
                cell(pod.and_then(|p| p.held)),
                cell(pod.and_then(|p| p.api))
            );
        }
        s.push('\n');
    }
    std::fs::write(path, s).expect("write CSV");
}

/// One line of a panel: legend, colour, width, one value per row (`None` is a gap).
struct Series {
    name: String,
    color: &'static str,
    width: f64,
    dashed: bool,
    values: Vec<Option<f64>>,
}

/// The right-hand axis of a panel: its top value and its series.
struct RightAxis {
    max: f64,
    series: Vec<Series>,
}

/// Distinct colours for the per-pod lines (cycled).
const POD_COLORS: [&str; 10] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf",
];

const W: f64 = 900.0;
const LEFT: f64 = 60.0;
const RIGHT: f64 = 50.0;
const PANEL: f64 = 200.0;

/// Draws the totals (held, and as answered by the API); the connections of every pod with the
/// imbalance on a second axis; the HPA's desired and current replicas and the pods the API
/// answered for; the marks as dashed lines.
pub(crate) fn write_svg(path: &Path, title: &str, rows: &[Row], marks: &[StepMark]) {
    let t_max = rows.last().map_or(1.0, |r| r.t).max(1.0);
    let x = |t: f64| LEFT + t / t_max * (W - LEFT - RIGHT);
    let conn_max = rows
        .iter()
        .map(|r| r.held.max(r.api_sum.unwrap_or(0.0)))
        .fold(1.0, f64::max)
        * 1.1;
    let pod_max = rows
        .iter()
        .flat_map(|r| r.pods.values().filter_map(|p| p.held))
        .fold(1.0, f64::max)
        * 1.1;
    let imbalance_max = rows
        .iter()
        .filter_map(|r| r.spread()?.imbalance())
        .fold(2.0, f64::max)
        .ceil();
    let rep_max = rows
        .iter()
        .map(|r| f64::from(r.desired.max(r.current)))
        .fold(1.0, f64::max)
        + 1.0;
    let tops = [40.0, 40.0 + PANEL + 50.0, 40.0 + 2.0 * (PANEL + 50.0)];
    let h = tops[2] + PANEL + 45.0;

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
    let line = |name: &str, color: &'static str, values: Vec<Option<f64>>| Series {
        name: name.to_owned(),
        color,
        width: 1.5,
        dashed: false,
        values,
    };
    panel(
        &mut s,
        rows,
        &x,
        tops[0],
        conn_max,
        "WebSocket connections",
        &[
            // The first series is drawn wider so that an exact overlap leaves both visible.
            Series {
                width: 4.0,
                ..line(
                    "held by the pods",
                    "#1f77b4",
                    rows.iter().map(|r| Some(r.held)).collect(),
                )
            },
            line(
                "sum served by API",
                "#ff7f0e",
                rows.iter().map(|r| r.api_sum).collect(),
            ),
        ],
        None,
    );
    let pods: Vec<Series> = pod_names(rows)
        .into_iter()
        .enumerate()
        .map(|(i, name)| Series {
            // One legend entry stands for all the pod lines.
            name: if i == 0 {
                "each pod (own /metrics)".into()
            } else {
                String::new()
            },
            ..line(
                name,
                POD_COLORS[i % POD_COLORS.len()],
                rows.iter()
                    .map(|r| r.pods.get(name).and_then(|p| p.held))
                    .collect(),
            )
        })
        .collect();
    panel(
        &mut s,
        rows,
        &x,
        tops[1],
        pod_max,
        "Connections per pod",
        &pods,
        Some(&RightAxis {
            max: imbalance_max,
            series: vec![Series {
                width: 2.5,
                dashed: true,
                ..line(
                    "imbalance max ÷ mean (right axis)",
                    "#000000",
                    rows.iter()
                        .map(|r| r.spread().and_then(|s| s.imbalance()))
                        .collect(),
                )
            }],
        }),
    );
    panel(
        &mut s,
        rows,
        &x,
        tops[2],
        rep_max,
        "HPA replicas",
        &[
            Series {
                width: 4.0,
                ..line(
                    "status.desiredReplicas",
                    "#2ca02c",
                    rows.iter().map(|r| replicas(r.desired)).collect(),
                )
            },
            line(
                "status.currentReplicas",
                "#d62728",
                rows.iter().map(|r| replicas(r.current)).collect(),
            ),
            line(
                "pods served",
                "#9467bd",
                rows.iter().map(|r| r.api_pods.map(|n| n as f64)).collect(),
            ),
        ],
        None,
    );
    for mark in marks {
        let sx = x(mark.t);
        let _ = writeln!(
            s,
            r##"<line x1="{sx:.1}" x2="{sx:.1}" y1="{}" y2="{}" stroke="#444" stroke-dasharray="4 3"/><text x="{:.1}" y="{}" fill="#444">{}</text>"##,
            tops[0],
            tops[2] + PANEL,
            sx + 4.0,
            tops[0] + 14.0,
            escape(&mark.label)
        );
    }
    let tick = nice_step(t_max);
    let mut t = 0.0;
    while t <= t_max {
        for top in tops {
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
        r#"<text x="{}" y="{}" text-anchor="middle">seconds since the first sample</text>"#,
        W / 2.0,
        h - 5.0
    );
    s.push_str("</svg>\n");
    std::fs::write(path, s).expect("write SVG");
}

/// One panel at `top`: frame, left ticks up to `max`, the series (a run of known values per
/// polyline), a legend above; and the right axis with its series, if any.
#[allow(clippy::too_many_arguments)]
fn panel(
    s: &mut String,
    rows: &[Row],
    x: &dyn Fn(f64) -> f64,
    top: f64,
    max: f64,
    label: &str,
    series: &[Series],
    right: Option<&RightAxis>,
) {
    let _ = writeln!(
        s,
        r##"<rect x="{LEFT}" y="{top}" width="{}" height="{PANEL}" fill="none" stroke="#999"/>"##,
        W - LEFT - RIGHT
    );
    let y = |v: f64, max: f64| top + PANEL - v / max * PANEL;
    let tick = nice_step(max);
    let mut v = 0.0;
    while v <= max {
        let _ = writeln!(
            s,
            r##"<text x="{}" y="{:.1}" text-anchor="end" fill="#555">{:.0}</text><line x1="{LEFT}" x2="{}" y1="{:.1}" y2="{:.1}" stroke="#eee"/>"##,
            LEFT - 5.0,
            y(v, max) + 4.0,
            v,
            W - RIGHT,
            y(v, max),
            y(v, max)
        );
        v += tick;
    }
    if let Some(axis) = right {
        let tick = nice_step(axis.max);
        let mut v = 0.0;
        while v <= axis.max {
            let _ = writeln!(
                s,
                r##"<text x="{}" y="{:.1}" fill="#555">{:.0}</text>"##,
                W - RIGHT + 5.0,
                y(v, axis.max) + 4.0,
                v
            );
            v += tick;
        }
    }
    let _ = writeln!(
        s,
        r#"<text x="{LEFT}" y="{}" fill="black">{}</text>"#,
        top - 6.0,
        escape(label)
    );
    let all = series.iter().map(|sr| (sr, max)).chain(
        right
            .into_iter()
            .flat_map(|a| a.series.iter().map(|sr| (sr, a.max))),
    );
    let mut legend = 0;
    for (sr, max) in all {
        // One polyline per run of known values: a missing value is a gap.
        let mut runs: Vec<Vec<String>> = vec![Vec::new()];
        for (r, v) in rows.iter().zip(&sr.values) {
            match v {
                Some(v) => {
                    runs.last_mut()
                        .expect("a run")
                        .push(format!("{:.1},{:.1}", x(r.t), y(*v, max)))
                }
                None => runs.push(Vec::new()),
            }
        }
        let dash = if sr.dashed {
            r#" stroke-dasharray="6 3""#
        } else {
            ""
        };
        for points in runs.iter().filter(|p| !p.is_empty()) {
            let _ = writeln!(
                s,
                r#"<polyline fill="none" stroke="{}" stroke-width="{}"{dash} points="{}"/>"#,
                sr.color,
                sr.width,
                points.join(" ")
            );
        }
        if sr.name.is_empty() {
            continue;
        }
        let lx = W - RIGHT - 560.0 + 190.0 * f64::from(legend);
        legend += 1;
        let _ = writeln!(
            s,
            r#"<line x1="{lx}" x2="{}" y1="{}" y2="{}" stroke="{}" stroke-width="3"{dash}/><text x="{}" y="{}">{}</text>"#,
            lx + 18.0,
            top - 10.0,
            top - 10.0,
            sr.color,
            lx + 22.0,
            top - 6.0,
            escape(&sr.name)
        );
    }
}

/// A replica count to draw: none for -1 (not read).
fn replicas(n: i32) -> Option<f64> {
    (n >= 0).then(|| f64::from(n))
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

#[test]
fn the_spread_is_over_ready_pods_that_answered() {
    let pod = |held, ready| PodSample {
        held,
        api: None,
        ready,
    };
    let row = Row {
        pods: BTreeMap::from([
            ("a".into(), pod(Some(500.0), true)),
            ("b".into(), pod(Some(100.0), true)),
            // Terminating, or not answering: not in the spread.
            ("c".into(), pod(Some(900.0), false)),
            ("d".into(), pod(None, true)),
        ]),
        ..Row::default()
    };
    let spread = row.spread().expect("two pods");
    assert_eq!(
        spread,
        Spread {
            max: 500.0,
            min: 100.0,
            mean: 300.0
        }
    );
    assert_eq!(spread.imbalance(), Some(500.0 / 300.0));
    assert_eq!(Row::default().spread(), None);
    let idle = Row {
        pods: BTreeMap::from([("a".into(), pod(Some(0.0), true))]),
        ..Row::default()
    };
    assert_eq!(idle.spread().and_then(|s| s.imbalance()), None);
}

#[test]
fn the_csv_has_a_column_pair_per_pod_and_blank_for_missing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("t.csv");
    let rows = vec![
        Row {
            t: 0.0,
            held: 6.0,
            pods: BTreeMap::from([(
                "a".into(),
                PodSample {
                    held: Some(6.0),
                    api: Some(6.0),
                    ready: true,
                },
            )]),
            ..Row::default()
        },
        Row {
            t: 1.0,
            held: 6.0,
            pods: BTreeMap::from([
                (
                    "a".into(),
                    PodSample {
                        held: Some(4.0),
                        api: None,
                        ready: true,
                    },
                ),
                (
                    "b".into(),
                    PodSample {
                        held: Some(2.0),
                        api: Some(2.0),
                        ready: true,
                    },
                ),
            ]),
            ..Row::default()
        },
    ];
    write_csv(&path, &rows);
    let text = std::fs::read_to_string(&path).expect("read CSV");
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].ends_with(",max,min,mean,imbalance,held_a,api_a,held_b,api_b"),
        "{}",
        lines[0]
    );
    assert_eq!(lines[1], "0.00,6,,,0,0,6,6,6.00,1.000,6,6,,");
    assert_eq!(lines[2], "1.00,6,,,0,0,4,2,3.00,1.333,4,,2,2");
}
