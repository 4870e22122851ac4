//! Static mode: the pods to scrape come from a YAML file
//! (`pods: [{namespace, name, labels, metricsUrl}]`), re-read whenever it changes. A file that
//! stops parsing is reported and the previous inventory kept.
//!
//! The file is untrusted input that can be swapped under us: only a regular file of at most
//! [`MAX_FILE_BYTES`] is read, opened without blocking (a FIFO cannot hang us) on a blocking-pool
//! thread, only when its metadata changes; a list that shrinks by more than half is applied only
//! when the next look finds it unchanged (a file caught mid-write is not a mass deletion).

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
    /// The path is not a regular file (a FIFO, a device, a directory), or is larger than
    /// [`MAX_FILE_BYTES`].
    #[error("refusing to read {path}: {reason}")]
    NotAPodsFile {
        /// File.
        path: PathBuf,
        /// What it is instead.
        reason: String,
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
pub(crate) type Result<T, E = Error> = std::result::Result<T, E>;

/// Largest pods file read: about 100,000 entries. Unit: bytes.
pub(crate) const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    /// Required: a document without it (`{}`, a lone comment) is a mistake, not "no pods"; an
    /// empty `pods:` is no pods.
    #[serde(deserialize_with = "crate::config::value::null_as_default")]
    pods: Vec<Entry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Entry {
    namespace: String,
    name: String,
    #[serde(default, deserialize_with = "crate::config::value::null_as_default")]
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
pub(crate) fn parse(path: &Path, text: &str) -> Result<Vec<PodTarget>> {
    // An empty file is more often a file caught mid-write than a wish to drop every pod; so is
    // one with nothing but comments.
    let blank = text.lines().all(|l| {
        let l = l.trim();
        l.is_empty() || l.starts_with('#') || l == "---"
    });
    if blank {
        return Err(Error::Unparseable {
            path: path.to_owned(),
            reason: "the file has no content (blank or only comments); write `pods: []` to track no pods".into(),
        });
    }
    let file: File = crate::config::value::from_yaml(text).map_err(|e| Error::Unparseable {
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
            // No readiness here: a listed pod is taken as ready.
            ready: true,
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

/// What identifies a version of the file without reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fingerprint {
    len: u64,
    modified: Option<std::time::SystemTime>,
    inode: u64,
    device: u64,
}

fn fingerprint(meta: &std::fs::Metadata) -> Fingerprint {
    use std::os::unix::fs::MetadataExt;
    Fingerprint {
        len: meta.len(),
        modified: meta.modified().ok(),
        inode: meta.ino(),
        device: meta.dev(),
    }
}

fn not_a_pods_file(path: &Path, reason: String) -> Error {
    Error::NotAPodsFile {
        path: path.to_owned(),
        reason,
    }
}

fn check_regular(path: &Path, meta: &std::fs::Metadata) -> Result<()> {
    let kind = meta.file_type();
    if !kind.is_file() {
        let what = if kind.is_dir() {
            "a directory"
        } else {
            use std::os::unix::fs::FileTypeExt;
            if kind.is_fifo() {
                "a FIFO"
            } else if kind.is_char_device() || kind.is_block_device() {
                "a device"
            } else if kind.is_socket() {
                "a socket"
            } else {
                "not a regular file"
            }
        };
        return Err(not_a_pods_file(path, format!("it is {what}")));
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(not_a_pods_file(
            path,
            format!("it has {} bytes, more than {MAX_FILE_BYTES}", meta.len()),
        ));
    }
    Ok(())
}

/// Reads the file if it is a regular file within [`MAX_FILE_BYTES`]. Opened with `O_NONBLOCK`
/// so that a FIFO put in its place cannot block, and checked again on the open handle, so that a
/// swap between the look and the open changes nothing. Blocking IO: call it off the async workers.
fn read_bounded(path: &Path) -> Result<(String, Fingerprint)> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let read_failed = |source| Error::ReadFailed {
        path: path.to_owned(),
        source,
    };
    check_regular(path, &std::fs::metadata(path).map_err(read_failed)?)?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(read_failed)?;
    let meta = file.metadata().map_err(read_failed)?;
    check_regular(path, &meta)?;
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_failed)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(not_a_pods_file(
            path,
            format!("it grew past {MAX_FILE_BYTES} bytes while read"),
        ));
    }
    let text = String::from_utf8(bytes).map_err(|e| Error::Unparseable {
        path: path.to_owned(),
        reason: format!("not UTF-8: {e}"),
    })?;
    Ok((text, fingerprint(&meta)))
}

/// Reads and parses the file (blocking IO).
///
/// # Errors
/// As [`parse`], plus [`Error::ReadFailed`] and [`Error::NotAPodsFile`].
pub(crate) fn load(path: &Path) -> Result<Vec<PodTarget>> {
    let (text, _) = read_bounded(path)?;
    parse(path, &text)
}

/// Loads the file into the store once (start-up: an error here stops the adapter).
///
/// # Errors
/// As [`load`].
pub(crate) fn load_into(path: &Path, store: &Store) -> Result<()> {
    let targets = load(path)?;
    tracing::info!(path = %path.display(), pods = targets.len(), "static pods loaded");
    store.replace_all(targets);
    Ok(())
}

/// What one look at the file found.
enum Look {
    /// Metadata unchanged since the last look.
    Unchanged,
    /// A new version, parsed or not.
    Changed(Fingerprint, Result<Vec<PodTarget>>),
    /// The file cannot even be looked at (gone, unreadable, not a regular file, too large).
    Unusable(Option<Fingerprint>, Error),
}

fn look(path: &Path, last: Option<&Fingerprint>) -> Look {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(source) => {
            return Look::Unusable(
                None,
                Error::ReadFailed {
                    path: path.to_owned(),
                    source,
                },
            );
        }
    };
    let now = fingerprint(&meta);
    if last == Some(&now) {
        return Look::Unchanged;
    }
    match read_bounded(path) {
        Ok((text, fp)) => Look::Changed(fp, parse(path, &text)),
        Err(e) => Look::Unusable(Some(now), e),
    }
}

/// The reload decisions, one look at a time.
#[derive(Debug, Default)]
struct Reloader {
    /// Fingerprint of the last version looked at.
    last: Option<Fingerprint>,
    /// Pods in the applied inventory.
    applied: usize,
    /// A shrunk list waiting for a second look.
    pending: Option<Vec<PodTarget>>,
    /// The last problem reported, so an unusable file is reported once, not every period.
    last_problem: Option<String>,
}

/// What to do after a look.
enum Decision {
    /// Nothing changes.
    Keep,
    /// Replace the inventory.
    Apply(Vec<PodTarget>),
    /// The file cannot be used: report it (once per distinct problem), keep the inventory.
    Report(Error),
}

impl Reloader {
    fn on_look(&mut self, seen: Look) -> Decision {
        match seen {
            Look::Unchanged => match self.pending.take() {
                Some(targets) => self.apply(targets),
                None => Decision::Keep,
            },
            Look::Changed(fp, Ok(targets)) => {
                self.last = Some(fp);
                self.pending = None;
                self.last_problem = None;
                if targets.len() < self.applied / 2 {
                    self.pending = Some(targets);
                    return Decision::Keep;
                }
                self.apply(targets)
            }
            Look::Changed(fp, Err(e)) | Look::Unusable(Some(fp), e) => {
                self.last = Some(fp);
                self.problem(e)
            }
            Look::Unusable(None, e) => self.problem(e),
        }
    }

    fn apply(&mut self, targets: Vec<PodTarget>) -> Decision {
        self.applied = targets.len();
        Decision::Apply(targets)
    }

    fn problem(&mut self, e: Error) -> Decision {
        if self.pending.take().is_some() {
            // The postponed list is dropped: read the file afresh at the next look, or the
            // fingerprint it left would make that look "unchanged" and lose it for good.
            self.last = None;
        }
        let text = e.to_string();
        if self.last_problem.as_deref() == Some(text.as_str()) {
            return Decision::Keep;
        }
        self.last_problem = Some(text);
        Decision::Report(e)
    }
}

/// Re-looks at the file every `period` and replaces the inventory when it changed. A file that
/// no longer parses is logged and counted; the previous inventory stays. A new list with fewer
/// than half the pods of the applied one is applied only when the next look finds the same file.
pub(crate) async fn watch(
    path: PathBuf,
    store: Arc<Store>,
    telemetry: Arc<Telemetry>,
    period: Duration,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let path: Arc<Path> = Arc::from(path);
    // No fingerprint yet: the first look reads the file, so a change made between the start-up
    // load and this loop is not missed (re-applying the same pods keeps their readings).
    let mut reloader = Reloader {
        applied: store.pod_count(),
        ..Reloader::default()
    };
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            () = tokio::time::sleep(period) => {}
        }
        let (p, known) = (path.clone(), reloader.last.clone());
        let Ok(seen) = tokio::task::spawn_blocking(move || look(&p, known.as_ref())).await else {
            continue;
        };
        let before = reloader.applied;
        let decision = reloader.on_look(seen);
        match decision {
            Decision::Keep => {
                if reloader
                    .pending
                    .as_ref()
                    .is_some_and(|_| before == reloader.applied)
                {
                    tracing::warn!(
                        path = %path.display(), previous = before,
                        "static pods file lost more than half its pods; applying it if it is the same at the next look"
                    );
                }
            }
            Decision::Apply(targets) => {
                tracing::info!(path = %path.display(), pods = targets.len(), "static pods reloaded");
                store.replace_all(targets);
                telemetry.inventory_event("reloaded");
            }
            Decision::Report(e) => {
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
    fn a_document_without_pods_is_refused_not_taken_as_no_pods() {
        for text in ["# just a comment\n", "{}", "---\n# c\n", "other: 1\n"] {
            let err = parse(p(), text).expect_err(text);
            assert!(matches!(err, Error::Unparseable { .. }), "{text:?}: {err}");
        }
        let err = parse(p(), "# c\n\n").expect_err("comment only");
        assert!(err.to_string().contains("write `pods: []`"), "{err}");
    }

    fn temp_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "wsma-static-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    #[test]
    fn a_fifo_a_device_and_an_oversized_file_are_refused_without_reading_them() {
        let dir = temp_dir();
        let fifo = dir.join("fifo.yaml");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("mkfifo runs");
        assert!(made.success());
        // Nobody writes to the FIFO: a blocking open would hang here for good.
        let err = load(&fifo).expect_err("fifo");
        assert!(err.to_string().contains("it is a FIFO"), "{err}");

        let zero = dir.join("zero.yaml");
        std::os::unix::fs::symlink("/dev/zero", &zero).expect("symlink");
        let err = load(&zero).expect_err("device");
        assert!(err.to_string().contains("it is a device"), "{err}");

        let big = dir.join("big.yaml");
        let f = std::fs::File::create(&big).expect("create");
        f.set_len(MAX_FILE_BYTES + 1).expect("sparse file");
        let err = load(&big).expect_err("oversized");
        assert!(err.to_string().contains("more than"), "{err}");

        let err = load(&dir).expect_err("directory");
        assert!(err.to_string().contains("a directory"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn pods_yaml(n: usize) -> String {
        let mut s = String::from("pods:\n");
        for i in 0..n {
            s.push_str(&format!(
                "- {{namespace: d, name: p{i}, metricsUrl: 'http://127.0.0.1:1/m'}}\n"
            ));
        }
        s
    }

    async fn until(what: &str, mut f: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !f() {
            assert!(std::time::Instant::now() < deadline, "timed out: {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn a_list_that_loses_more_than_half_is_applied_only_once_seen_twice_and_a_fifo_changes_nothing()
     {
        use crate::store::{MetricCatalog, MetricMapping};
        let dir = temp_dir();
        let path = dir.join("pods.yaml");
        std::fs::write(&path, pods_yaml(10)).expect("write");
        let store = Arc::new(Store::new(
            MetricCatalog::new(vec![MetricMapping {
                served: "m".into(),
                family: "m".into(),
                rate: None,
                filter: None,
            }]),
            Duration::from_secs(3),
        ));
        load_into(&path, &store).expect("valid");
        let telemetry = Arc::new(Telemetry::new());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(watch(
            path.clone(),
            store.clone(),
            telemetry.clone(),
            Duration::from_millis(20),
            async move {
                let _ = stopped.await;
            },
        ));
        // Growing or shrinking a little applies at once.
        std::fs::write(&path, pods_yaml(12)).expect("write");
        until("12 pods", || store.pod_count() == 12).await;
        // A FIFO swapped in: refused and counted, nothing hangs, the pods stay.
        let tmp_fifo = dir.join("new-fifo");
        assert!(
            std::process::Command::new("mkfifo")
                .arg(&tmp_fifo)
                .status()
                .expect("mkfifo")
                .success()
        );
        std::fs::rename(&tmp_fifo, &path).expect("swap in the FIFO");
        until("the FIFO counted as an inventory error", || {
            telemetry
                .render_openmetrics()
                .contains("inventory_errors_total 1")
        })
        .await;
        assert_eq!(store.pod_count(), 12);
        // Back to a file that lost more than half: applied, but only after a second look.
        let tmp = dir.join("new.yaml");
        std::fs::write(&tmp, pods_yaml(3)).expect("write");
        std::fs::rename(&tmp, &path).expect("swap in");
        until("3 pods after two looks", || store.pod_count() == 3).await;
        let _ = stop.send(());
        task.await.expect("watch ends");
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn targets(n: usize) -> Vec<PodTarget> {
        parse(p(), &pods_yaml(n)).expect("valid")
    }

    fn fp(len: u64) -> Fingerprint {
        Fingerprint {
            len,
            modified: None,
            inode: 1,
            device: 1,
        }
    }

    #[test]
    fn a_list_that_loses_more_than_half_waits_for_a_second_look() {
        let mut r = Reloader {
            applied: 10,
            ..Reloader::default()
        };
        assert!(
            matches!(r.on_look(Look::Changed(fp(1), Ok(targets(6)))), Decision::Apply(t) if t.len() == 6)
        );
        assert!(matches!(
            r.on_look(Look::Changed(fp(2), Ok(targets(2)))),
            Decision::Keep
        ));
        assert_eq!(r.applied, 6, "not applied at the first look");
        assert!(matches!(r.on_look(Look::Unchanged), Decision::Apply(t) if t.len() == 2));
        assert!(matches!(r.on_look(Look::Unchanged), Decision::Keep));
        // A shrink followed by a change (the writer finished) applies the final version only.
        assert!(matches!(
            r.on_look(Look::Changed(fp(3), Ok(targets(0)))),
            Decision::Keep
        ));
        assert!(
            matches!(r.on_look(Look::Changed(fp(4), Ok(targets(5)))), Decision::Apply(t) if t.len() == 5),
            "the writer finished: the full list, not the cut one"
        );
    }

    #[test]
    fn a_postponed_shrink_is_not_lost_when_one_look_fails() {
        let mut r = Reloader {
            applied: 10,
            ..Reloader::default()
        };
        assert!(matches!(
            r.on_look(Look::Changed(fp(1), Ok(targets(2)))),
            Decision::Keep
        ));
        let gone = Error::ReadFailed {
            path: p().to_owned(),
            source: std::io::Error::other("transient"),
        };
        assert!(matches!(
            r.on_look(Look::Unusable(None, gone)),
            Decision::Report(_)
        ));
        // The next look must read the file again (no fingerprint to call it unchanged).
        assert_eq!(r.last, None);
        assert!(matches!(
            r.on_look(Look::Changed(fp(1), Ok(targets(2)))),
            Decision::Keep
        ));
        assert!(matches!(r.on_look(Look::Unchanged), Decision::Apply(t) if t.len() == 2));
    }

    #[test]
    fn an_unusable_file_is_reported_once_and_keeps_the_inventory() {
        let mut r = Reloader {
            applied: 4,
            ..Reloader::default()
        };
        let bad = || Error::Unparseable {
            path: p().to_owned(),
            reason: "x".into(),
        };
        assert!(matches!(
            r.on_look(Look::Unusable(None, bad())),
            Decision::Report(_)
        ));
        assert!(matches!(
            r.on_look(Look::Unusable(None, bad())),
            Decision::Keep
        ));
        assert!(matches!(
            r.on_look(Look::Changed(fp(1), Ok(targets(4)))),
            Decision::Apply(_)
        ));
        assert!(
            matches!(r.on_look(Look::Unusable(None, bad())), Decision::Report(_)),
            "a new occurrence is reported again"
        );
    }

    /// An alias bomb shaped like a pods file: one entry's labels (a thousand of them) anchored,
    /// then aliased by thousands of entries, so a small file expands into millions of strings.
    /// (A billion laughs of nested lists is refused before expansion: the entries are typed.)
    fn alias_bomb() -> String {
        let labels: Vec<String> = (0..1000).map(|i| format!("k{i}: v")).collect();
        let mut s = format!(
            "pods:\n- {{namespace: d, name: p0, metricsUrl: 'http://x/m', labels: &l {{{}}}}}\n",
            labels.join(", ")
        );
        for i in 1..1000 {
            s.push_str(&format!(
                "- {{namespace: d, name: p{i}, metricsUrl: 'http://x/m', labels: *l}}\n"
            ));
        }
        s
    }

    #[test]
    fn an_alias_bomb_is_refused_with_a_clear_error_and_keeps_the_pods() {
        let err = parse(p(), &alias_bomb()).expect_err("bomb");
        let msg = err.to_string();
        assert!(matches!(err, Error::Unparseable { .. }), "{msg}");
        assert!(
            msg.contains("alias replay limit exceeded") && msg.contains("line 2"),
            "the error names the cause and where: {msg}"
        );
        let mut r = Reloader {
            applied: 4,
            ..Reloader::default()
        };
        assert!(matches!(
            r.on_look(Look::Changed(fp(1), Err(err))),
            Decision::Report(Error::Unparseable { .. })
        ));
        assert_eq!(r.applied, 4, "the previous pods stay");
        // Anchors used honestly (shared labels) still work.
        let t = parse(
            p(),
            "pods:\n- {namespace: d, name: a, metricsUrl: 'http://x/m', labels: &l {app: ws}}\n- {namespace: d, name: b, metricsUrl: 'http://x/m', labels: *l}\n",
        )
        .expect("anchors");
        assert_eq!(t[1].labels.get("app").map(String::as_str), Some("ws"));
    }

    #[test]
    fn yaml_errors_name_the_line_and_column() {
        let err = parse(p(), "pods:\n- namespace: d\n  name: [a\n").expect_err("syntax");
        let msg = err.to_string();
        assert!(msg.contains("line 3"), "{msg}");
        assert!(msg.contains("column"), "{msg}");
        let err = parse(
            p(),
            "pods:\n- namespace: d\n  name: a\n  metricsUrl: {x: 1}\n",
        )
        .expect_err("shape");
        assert!(err.to_string().contains("line 4"), "{err}");
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
