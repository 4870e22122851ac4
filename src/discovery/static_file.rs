//! Static mode: the pods to scrape come from a YAML file
//! (`pods: [{namespace, name, labels, metricsUrl}]`), re-read whenever it changes. A file that
//! stops parsing is reported and the previous inventory kept.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::store::{PodKey, PodTarget, Store};
use crate::telemetry::Telemetry;

/// Errors of reading the file.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    ReadFailed {
        /// File.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The YAML does not have the expected shape.
    #[error("parsing {path}: {reason}")]
    Unparseable {
        /// File.
        path: PathBuf,
        /// What is wrong (with line and column where YAML gives them).
        reason: String,
    },
    /// Entries are individually wrong.
    #[error("invalid entries in {path}:\n  - {}", .problems.join("\n  - "))]
    InvalidEntries {
        /// File.
        path: PathBuf,
        /// One message per problem.
        problems: Vec<String>,
    },
}

/// Result of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    pods: Vec<Entry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Entry {
    namespace: String,
    name: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    metrics_url: String,
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric()
}

/// Parses the file's contents into scrape targets.
///
/// # Errors
/// [`Error::Unparseable`] or [`Error::InvalidEntries`] (every bad entry listed).
pub fn parse(path: &Path, text: &str) -> Result<Vec<PodTarget>> {
    // An empty file is more often a file caught mid-write than a wish to drop every pod.
    if text.trim().is_empty() {
        return Err(Error::Unparseable {
            path: path.to_owned(),
            reason: "the file is empty; write `pods: []` to track no pods".into(),
        });
    }
    let file: File = serde_yaml::from_str(text).map_err(|e| Error::Unparseable {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    let mut problems = Vec::new();
    let mut seen = HashSet::new();
    let mut targets = Vec::with_capacity(file.pods.len());
    for (i, e) in file.pods.into_iter().enumerate() {
        let at = format!("pods[{i}] ({}/{})", e.namespace, e.name);
        if !valid_name(&e.namespace) {
            problems.push(format!(
                "{at}: namespace {:?} is not a valid Kubernetes name",
                e.namespace
            ));
        }
        if !valid_name(&e.name) {
            problems.push(format!(
                "{at}: name {:?} is not a valid Kubernetes name",
                e.name
            ));
        }
        match e.metrics_url.parse::<http::Uri>() {
            Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some() => {}
            _ => problems.push(format!(
                "{at}: metricsUrl {:?} is not an absolute http:// or https:// URL",
                e.metrics_url
            )),
        }
        if !seen.insert((e.namespace.clone(), e.name.clone())) {
            problems.push(format!("{at}: listed twice"));
        }
        targets.push(PodTarget {
            // Same entry, same incarnation: a changed URL keeps the pod's reading.
            uid: format!("static/{}/{}", e.namespace, e.name),
            key: PodKey {
                namespace: e.namespace,
                name: e.name,
            },
            labels: e.labels,
            url: e.metrics_url,
        });
    }
    if problems.is_empty() {
        Ok(targets)
    } else {
        Err(Error::InvalidEntries {
            path: path.to_owned(),
            problems,
        })
    }
}

/// Reads and parses the file.
///
/// # Errors
/// As [`parse`], plus [`Error::ReadFailed`].
pub fn load(path: &Path) -> Result<Vec<PodTarget>> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::ReadFailed {
        path: path.to_owned(),
        source,
    })?;
    parse(path, &text)
}

/// Loads the file into the store once (start-up: an error here stops the adapter).
///
/// # Errors
/// As [`load`].
pub fn load_into(path: &Path, store: &Store) -> Result<()> {
    let targets = load(path)?;
    tracing::info!(path = %path.display(), pods = targets.len(), "static pods loaded");
    store.replace_all(targets);
    Ok(())
}

/// Re-reads the file every `period` and replaces the inventory when its contents change. A file
/// that no longer parses is logged and counted; the previous inventory stays.
pub async fn watch(
    path: PathBuf,
    store: Arc<Store>,
    telemetry: Arc<Telemetry>,
    period: Duration,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let mut last = std::fs::read(&path).ok();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            () = tokio::time::sleep(period) => {}
        }
        let now = std::fs::read(&path).ok();
        if now == last {
            continue;
        }
        last = now;
        match load(&path) {
            Ok(targets) => {
                tracing::info!(path = %path.display(), pods = targets.len(), "static pods reloaded");
                store.replace_all(targets);
                telemetry.inventory_event("reloaded");
            }
            Err(e) => {
                tracing::error!(error = %e, "static pods file changed but cannot be used; keeping the previous pods");
                telemetry.inventory_error();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> &'static Path {
        Path::new("pods.yaml")
    }

    #[test]
    fn entries_become_targets() {
        let t = parse(
            p(),
            "pods:\n- namespace: default\n  name: ws-0\n  labels: {app: ws}\n  metricsUrl: http://127.0.0.1:9000/metrics\n",
        )
        .expect("valid");
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].key.name, "ws-0");
        assert_eq!(t[0].labels.get("app").map(String::as_str), Some("ws"));
        assert!(
            parse(p(), "").is_err(),
            "an empty file is refused, it is usually mid-write"
        );
        assert!(
            parse(p(), "pods: []")
                .expect("empty list is fine")
                .is_empty()
        );
    }

    #[test]
    fn every_bad_entry_is_reported() {
        let err = parse(
            p(),
            "pods:\n- {namespace: Bad_NS, name: a, metricsUrl: 'http://x/m'}\n- {namespace: d, name: a, metricsUrl: 'ftp://x'}\n- {namespace: d, name: a, metricsUrl: 'http://x/m'}\n",
        )
        .expect_err("invalid");
        let msg = err.to_string();
        assert!(msg.contains("namespace \"Bad_NS\""), "{msg}");
        assert!(msg.contains("ftp://x"), "{msg}");
        assert!(msg.contains("listed twice"), "{msg}");
    }

    #[test]
    fn typos_in_field_names_are_errors() {
        let err = parse(
            p(),
            "pods:\n- {namespace: d, name: a, metricsURL: 'http://x/m'}\n",
        )
        .expect_err("typo");
        assert!(err.to_string().contains("metricsURL"), "{err}");
    }
}
