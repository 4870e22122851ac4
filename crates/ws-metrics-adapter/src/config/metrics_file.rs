//! The metrics config file (`--metrics-config`): the served metrics, each a family's value or a
//! counter's rate, with an optional label filter over its series. Read at start-up (a bad file
//! stops the start with every problem) and re-read while running (`app` polls it; a bad new file
//! keeps the old metrics). The file is either the list itself or a whole ConfigMap holding it
//! under `data.metrics.yaml`, so the file that is applied is also the file that is read:
//!
//! ```yaml
//! metrics:
//!   - name: websocket_connections
//!     family: websocket_connections_active
//!   - name: chat_connections
//!     family: websocket_connections_active
//!     seriesSelector: route=chat
//!   - name: messages_per_second
//!     family: websocket_messages_received_total
//!     rate: 30s
//! ```

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::value::{from_yaml, parse_duration};
use super::{is_metric_name, is_served_name};
use crate::selector::Selector;
use crate::store::MetricMapping;

/// Largest metrics config file read (a ConfigMap holds at most 1 MiB).
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// Longest rate window: a rate keeps every scrape of the window per series and pod (3,600 at a
/// 1 s interval), so the window bounds that memory.
pub const MAX_RATE_WINDOW: Duration = Duration::from_secs(3600);

/// Why a rate window cannot be used with `scrape_interval`, if it cannot: it must hold two
/// scrapes and be at most [`MAX_RATE_WINDOW`]. The one check of `--metric …=rate()` and of this
/// file's `rate:`.
pub fn check_rate_window(window: Duration, scrape_interval: Duration) -> Result<(), String> {
    let shown = humantime::format_duration(window);
    if window < scrape_interval * 2 {
        Err(format!(
            "rate window {shown} must be at least 2 × --scrape-interval ({}), or no two scrapes fall in it",
            humantime::format_duration(scrape_interval)
        ))
    } else if window > MAX_RATE_WINDOW {
        Err(format!(
            "rate window {shown} is longer than {} (every scrape in it is kept per series)",
            humantime::format_duration(MAX_RATE_WINDOW)
        ))
    } else {
        Ok(())
    }
}

/// The ConfigMap data key holding the metrics list when the file is a whole ConfigMap.
pub const CONFIGMAP_KEY: &str = "metrics.yaml";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct File {
    /// The list (plain shape).
    metrics: Option<Vec<Entry>>,
    /// ConfigMap shape: `kind: ConfigMap`, the list under `data.metrics.yaml`.
    kind: Option<String>,
    /// A ConfigMap's, accepted and not read.
    #[serde(rename = "apiVersion")]
    _api_version: Option<serde::de::IgnoredAny>,
    /// A ConfigMap's, accepted and not read.
    #[serde(rename = "metadata")]
    _metadata: Option<serde::de::IgnoredAny>,
    data: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Entry {
    name: String,
    family: String,
    /// A window: the metric is the family's per-second rate over it.
    rate: Option<String>,
    /// A label selector over the family's series.
    series_selector: Option<String>,
}

/// Parses a metrics config file's text into the served metrics, checking every entry against
/// `scrape_interval` (a rate window must hold two scrapes).
///
/// # Errors
/// Every problem found, each naming its entry.
pub fn parse(text: &str, scrape_interval: Duration) -> Result<Vec<MetricMapping>, Vec<String>> {
    let file: File = from_yaml(text).map_err(|e| vec![e.to_string()])?;
    let entries = match (file.kind.as_deref(), file.metrics, file.data) {
        (None, Some(entries), None) => entries,
        (Some("ConfigMap"), None, Some(data)) => {
            let Some(inner) = data.get(CONFIGMAP_KEY) else {
                return Err(vec![format!(
                    "a ConfigMap here holds the metrics under data.{CONFIGMAP_KEY}; it has {:?}",
                    data.keys().collect::<Vec<_>>()
                )]);
            };
            let inner: File =
                from_yaml(inner).map_err(|e| vec![format!("data.{CONFIGMAP_KEY}: {e}")])?;
            match (inner.kind, inner.metrics) {
                (None, Some(entries)) => entries,
                _ => {
                    return Err(vec![format!(
                        "data.{CONFIGMAP_KEY}: expected `metrics: [{{name: …, family: …}}, …]`"
                    )]);
                }
            }
        }
        (Some(kind), ..) if kind != "ConfigMap" => {
            return Err(vec![format!(
                "kind {kind:?}: expected the metrics list or a ConfigMap"
            )]);
        }
        _ => {
            return Err(vec![format!(
                "expected `metrics: [{{name: …, family: …}}, …]`, or a ConfigMap with it under data.{CONFIGMAP_KEY}"
            )]);
        }
    };
    let mut problems = Vec::new();
    let mut metrics: Vec<MetricMapping> = Vec::new();
    if entries.is_empty() {
        problems.push("metrics: the list is empty; at least one metric must be served".into());
    }
    for (i, e) in entries.into_iter().enumerate() {
        let at = format!("metrics[{i}] ({:?})", e.name);
        let before = problems.len();
        if !is_served_name(&e.name) {
            problems.push(format!(
                "{at}: name must be non-empty and use only letters, digits, '_', '-', '.', ':'"
            ));
        } else if metrics.iter().any(|m| m.served == e.name) {
            problems.push(format!("{at}: name is given twice"));
        }
        if !is_metric_name(&e.family) {
            problems.push(format!(
                "{at}: family {:?} is not a Prometheus metric name ([a-zA-Z_:][a-zA-Z0-9_:]*)",
                e.family
            ));
        }
        let rate = match e.rate.as_deref().map(parse_duration) {
            None => None,
            Some(Ok(window)) => match check_rate_window(window, scrape_interval) {
                Ok(()) => Some(window),
                Err(why) => {
                    problems.push(format!("{at}: {why}"));
                    None
                }
            },
            Some(Err(why)) => {
                problems.push(format!(
                    "{at}: rate {:?}: {why}",
                    e.rate.unwrap_or_default()
                ));
                None
            }
        };
        let filter = match e.series_selector.as_deref().map(Selector::parse) {
            None => None,
            Some(Ok(s)) if s.is_empty() => None,
            Some(Ok(s)) => Some(s),
            Some(Err(why)) => {
                problems.push(format!("{at}: seriesSelector: {why}"));
                None
            }
        };
        if problems.len() == before {
            metrics.push(MetricMapping {
                served: e.name,
                family: e.family,
                rate,
                filter,
            });
        }
    }
    if problems.is_empty() {
        Ok(metrics)
    } else {
        Err(problems)
    }
}

/// Reads and parses the file at `path` (at most [`MAX_FILE_BYTES`]).
///
/// # Errors
/// One message naming the file and every problem found.
pub fn read(path: &Path, scrape_interval: Duration) -> Result<Vec<MetricMapping>, String> {
    let shown = path.display();
    let text = read_text(path).map_err(|e| format!("--metrics-config {shown}: {e}"))?;
    parse(&text, scrape_interval)
        .map_err(|problems| format!("--metrics-config {shown}: {}", problems.join("; ")))
}

/// The file's text, at most [`MAX_FILE_BYTES`].
///
/// # Errors
/// The I/O error, or that the file is larger.
pub fn read_text(path: &Path) -> Result<String, String> {
    use std::io::Read as _;
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut text = String::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| e.to_string())?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(format!("larger than {MAX_FILE_BYTES} bytes"));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn the_list_and_a_configmap_holding_it_give_the_same_metrics() {
        let list = "metrics:
  - name: websocket_connections
    family: websocket_connections_active
  - name: chat_connections
    family: websocket_connections_active
    seriesSelector: route=chat
  - name: messages_per_second
    family: websocket_messages_received_total
    rate: 30s
";
        let metrics = parse(list, SECOND).expect("valid");
        assert_eq!(metrics.len(), 3);
        assert_eq!(metrics[0].filter, None);
        assert_eq!(
            metrics[1].filter.as_ref().map(ToString::to_string),
            Some("route=chat".to_owned())
        );
        assert_eq!(metrics[2].rate, Some(Duration::from_secs(30)));
        let indented: String = list.lines().map(|l| format!("    {l}\n")).collect();
        let config_map = format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: ws-metrics-adapter-metrics, namespace: ws-metrics}}\ndata:\n  metrics.yaml: |\n{indented}"
        );
        assert_eq!(parse(&config_map, SECOND).expect("valid"), metrics);
    }

    #[test]
    fn every_problem_is_reported_at_once_naming_its_entry() {
        let bad = "metrics:
  - {name: a, family: ok_family}
  - {name: a, family: '1bad'}
  - {name: 'x/y', family: f, rate: soon}
  - {name: r, family: f_total, rate: 1s}
  - {name: s, family: f, seriesSelector: 'route in ('}
  - {name: t, family: f_total, rate: 2h}
";
        let problems = parse(bad, SECOND).expect_err("invalid");
        let text = problems.join("\n");
        for needle in [
            "metrics[1] (\"a\"): name is given twice",
            "metrics[1] (\"a\"): family \"1bad\" is not a Prometheus metric name",
            "metrics[2] (\"x/y\"): name must be non-empty",
            "metrics[2] (\"x/y\"): rate \"soon\"",
            "metrics[3] (\"r\"): rate window 1s must be at least 2 × --scrape-interval (1s)",
            "metrics[4] (\"s\"): seriesSelector",
            "metrics[5] (\"t\"): rate window 2h is longer than 1h",
        ] {
            assert!(text.contains(needle), "{needle} in\n{text}");
        }
        assert_eq!(problems.len(), 7, "{text}");
    }

    #[test]
    fn shapes_that_are_not_a_metrics_list_are_refused() {
        for (text, needle) in [
            ("metrics: []", "the list is empty"),
            ("metric: []", "unknown field"),
            ("kind: Secret\ndata: {metrics.yaml: ''}", "kind \"Secret\""),
            (
                "kind: ConfigMap\ndata: {other: ''}",
                "under data.metrics.yaml",
            ),
            ("metrics: [{name: a, family: f, extra: 1}]", "unknown field"),
            ("{", "line"),
        ] {
            let problems = parse(text, SECOND).expect_err(text);
            assert!(problems.join("\n").contains(needle), "{text}: {problems:?}");
        }
    }
}
