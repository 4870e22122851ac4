//! `--source=remote-write`: receives Prometheus remote-write 1.0 (`POST /api/v1/write`) from
//! sharded agents on its own listener and records each pod's families into the same per-pod
//! [`Store`] readings the scrape source writes, so every read path, `--max-age` and
//! namespace-total rule applies unchanged. Sits beside `collect` in the pipeline:
//! agents → remote_write → store → api.
//!
//! - [`decode`]: snappy + protobuf decoding, pure and fuzzed.
//! - [`Receiver`]: per-series state (latest sample of each series), mapping to pods by their
//!   `namespace`/`pod` labels, the limits, and the HTTP handler ([`router`]).

pub mod decode;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use http::{HeaderMap, StatusCode, header};
use http_body_util::BodyExt;
use tokio::sync::Semaphore;

use crate::clock::{Moment, SampleTime};
use crate::health::{Health, Latch};
use crate::quantity;
use crate::store::{FamilyReading, MetricCatalog, PodKey, Reading, Series, Store};
use crate::telemetry::Telemetry;

use decode::{DecodeError, DecodeLimits, WriteRequest};

/// Path the receiver serves (Prometheus' own receiver path).
pub const WRITE_PATH: &str = "/api/v1/write";

/// Default `--remote-write-max-body-bytes`: compressed body. Unit: bytes.
pub const DEFAULT_MAX_BODY_BYTES: usize = 8 * 1024 * 1024;
/// Default `--remote-write-max-decoded-bytes`: decompressed body. Unit: bytes.
pub const DEFAULT_MAX_DECODED_BYTES: usize = 64 * 1024 * 1024;
/// Default `--remote-write-max-series-per-request` (Prometheus sends at most
/// `queue_config.max_samples_per_send`, 2,000 by default in 2.42).
pub const DEFAULT_MAX_SERIES_PER_REQUEST: usize = 50_000;
/// Default `--remote-write-max-series`: series of served families tracked at once.
pub const DEFAULT_MAX_SERIES: usize = 1_000_000;
/// Default `--remote-write-max-concurrent-requests`.
pub const DEFAULT_MAX_CONCURRENT_REQUESTS: usize = 16;

/// How often the receiver prunes series older than `--max-age` and reports health.
const SWEEP_PERIOD: Duration = Duration::from_secs(1);

/// Validated settings of the receiver.
#[derive(Debug, Clone)]
pub struct RemoteWriteConfig {
    /// Listener address.
    pub addr: std::net::SocketAddr,
    /// TLS on the listener; `None` for plain HTTP.
    pub tls: Option<RemoteWriteTls>,
    /// File holding the bearer token agents must send; re-read on every request (tokens rotate).
    pub bearer_token_file: Option<PathBuf>,
    /// Label holding the pod's namespace.
    pub namespace_label: String,
    /// Label holding the pod's name.
    pub pod_label: String,
    /// Largest compressed body. Unit: bytes.
    pub max_body_bytes: usize,
    /// Largest decompressed body (checked from the snappy header first). Unit: bytes.
    pub max_decoded_bytes: usize,
    /// Most series in one request.
    pub max_series_per_request: usize,
    /// Most series tracked at once; samples of further new series are dropped and counted.
    pub max_series: usize,
    /// Requests handled at once; more get 429 with `Retry-After`.
    pub max_concurrent_requests: usize,
    /// Readiness waits for the first write at most this long after the inventory is known.
    pub ready_grace: Duration,
}

/// TLS of the receiver's listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteWriteTls {
    /// PEM certificate chain, re-read when it changes.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// When set, clients must present a certificate chaining to this CA bundle (mTLS).
    pub client_ca: Option<PathBuf>,
}

/// Why samples were not recorded, as the `reason` label of
/// `ws_metrics_adapter_remote_write_samples_dropped_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// `__name__` is none of the served `--metric` families (agents send everything they scrape).
    FamilyNotServed,
    /// No namespace or pod label.
    Unlabelled,
    /// The inventory (watch or `--static-pods`) does not know the pod.
    UnknownPod,
    /// NaN (other than the stale marker), ±Inf or out of range: never served, never a 0.
    Unservable,
    /// Older than the sample already held for the series.
    OutOfOrder,
    /// Already older than `--max-age` when it arrived (a replayed backlog): never served.
    TooOld,
    /// An older sample of a series that has a newer one in the same request.
    Superseded,
    /// A new series beyond `--remote-write-max-series`.
    SeriesLimit,
}

impl DropReason {
    /// Every reason, in label order.
    pub const ALL: [Self; 8] = [
        Self::FamilyNotServed,
        Self::Unlabelled,
        Self::UnknownPod,
        Self::Unservable,
        Self::OutOfOrder,
        Self::TooOld,
        Self::Superseded,
        Self::SeriesLimit,
    ];

    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::FamilyNotServed => "family_not_served",
            Self::Unlabelled => "unlabelled",
            Self::UnknownPod => "unknown_pod",
            Self::Unservable => "unservable",
            Self::OutOfOrder => "out_of_order",
            Self::TooOld => "too_old",
            Self::Superseded => "superseded",
            Self::SeriesLimit => "series_limit",
        }
    }
}

/// What one request did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IngestReport {
    /// Samples recorded (the newest of each series in the request).
    pub accepted: u64,
    /// Stale markers that removed a series.
    pub stale: u64,
    /// Samples not recorded, by reason (indexed like [`DropReason::ALL`]).
    pub dropped: [u64; 8],
    /// Pods whose reading was recorded again.
    pub pods_recorded: usize,
}

impl IngestReport {
    fn drop(&mut self, reason: DropReason, n: u64) {
        if let Some(i) = DropReason::ALL.iter().position(|r| *r == reason) {
            self.dropped[i] += n;
        }
    }

    /// Samples dropped for `reason`.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        DropReason::ALL
            .iter()
            .position(|r| *r == reason)
            .map_or(0, |i| self.dropped[i])
    }
}

/// The latest sample of one series.
#[derive(Debug, Clone)]
struct Point {
    /// Value. Unit: milli-units.
    milli: i64,
    /// The sample's own time. Unit: milliseconds since the Unix epoch.
    ts_ms: i64,
    /// The sample's time on both clocks, aged from its own timestamp.
    time: SampleTime,
}

/// Series labels without `__name__` and the namespace and pod labels (the pod is the key
/// already; a scraped series has no such labels either), sorted.
type LabelSet = Vec<(String, String)>;

/// The series of one family of one pod: by a hash of their labels (so a series already held is
/// found without allocating its labels), each bucket checked label by label.
type FamilySeries = HashMap<u64, Vec<(LabelSet, Point)>>;

#[derive(Debug, Default)]
struct PodSeries {
    /// The pod incarnation the series were recorded for.
    uid: String,
    /// Family name → its series → latest point.
    families: HashMap<String, FamilySeries>,
}

impl PodSeries {
    /// Series held.
    fn held(&self) -> usize {
        self.families
            .values()
            .flat_map(HashMap::values)
            .map(Vec::len)
            .sum()
    }
}

/// Hash of a sorted borrowed label set.
fn label_hash(labels: &[(&str, &str)]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    labels.hash(&mut h);
    h.finish()
}

fn same_labels(held: &LabelSet, labels: &[(&str, &str)]) -> bool {
    held.len() == labels.len()
        && held
            .iter()
            .zip(labels)
            .all(|((a, b), (c, d))| a == c && b == d)
}

#[derive(Debug, Default)]
struct SeriesState {
    pods: HashMap<PodKey, PodSeries>,
    /// Series held across every pod.
    count: usize,
}

/// The receiver: holds the latest sample of every served series and records per-pod readings.
#[derive(Debug)]
pub struct Receiver {
    store: Arc<Store>,
    telemetry: Arc<Telemetry>,
    config: RemoteWriteConfig,
    state: Mutex<SeriesState>,
    permits: Semaphore,
    first_write: Latch,
}

fn epoch_ms(ms: i64) -> SystemTime {
    match u64::try_from(ms) {
        Ok(ms) => UNIX_EPOCH + Duration::from_millis(ms),
        Err(_) => UNIX_EPOCH,
    }
}

impl Receiver {
    /// A receiver recording into `store`.
    pub fn new(store: Arc<Store>, telemetry: Arc<Telemetry>, config: RemoteWriteConfig) -> Self {
        let permits = Semaphore::new(config.max_concurrent_requests.max(1));
        Self {
            store,
            telemetry,
            config,
            state: Mutex::new(SeriesState::default()),
            permits,
            first_write: Latch::new(),
        }
    }

    /// The settings.
    pub fn config(&self) -> &RemoteWriteConfig {
        &self.config
    }

    /// Series held now.
    pub fn series_tracked(&self) -> usize {
        self.lock().count
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SeriesState> {
        // A panic mid-update leaves at worst one pod's series half-updated; they are rebuilt by
        // the next write, so serving on beats dying.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a decoded request received at `at`: per series its newest sample (a stale marker
    /// removes the series), then per touched pod a reading whose family values are the sums of
    /// its series, stamped with the newest sample time among them.
    pub fn ingest(&self, request: &WriteRequest, at: Moment) -> IngestReport {
        let catalog = self.store.catalog();
        let max_age = self.store.max_age();
        let mut report = IngestReport::default();
        // The served series grouped by pod, names borrowed from the request: one inventory
        // look-up and one key per pod, not per series.
        type Batch<'r> = Vec<(&'r str, &'r decode::TimeSeries)>;
        let mut by_pod: HashMap<(&str, &str), Batch<'_>> = HashMap::new();
        for ts in &request.timeseries {
            let n = ts.samples.len() as u64;
            if n == 0 {
                continue;
            }
            let mut name = None;
            let (mut ns, mut pod) = (None, None);
            for l in &ts.labels {
                let n = l.name();
                if n == "__name__" {
                    name = Some(l.value());
                } else if n == self.config.namespace_label {
                    ns = Some(l.value());
                } else if n == self.config.pod_label {
                    pod = Some(l.value());
                }
            }
            let Some(family) = name.filter(|n| catalog.families().iter().any(|f| f == n)) else {
                report.drop(DropReason::FamilyNotServed, n);
                continue;
            };
            let (Some(ns), Some(pod)) =
                (ns.filter(|s| !s.is_empty()), pod.filter(|s| !s.is_empty()))
            else {
                report.drop(DropReason::Unlabelled, n);
                continue;
            };
            by_pod.entry((ns, pod)).or_default().push((family, ts));
        }
        let mut state = self.lock();
        let state = &mut *state;
        for ((ns, pod), batch) in by_pod {
            let key = PodKey {
                namespace: ns.to_owned(),
                name: pod.to_owned(),
            };
            let Some(uid) = self.store.pod_uid(&key) else {
                let n: usize = batch.iter().map(|(_, ts)| ts.samples.len()).sum();
                report.drop(DropReason::UnknownPod, n as u64);
                continue;
            };
            if !state.pods.contains_key(&key) {
                state.pods.insert(key.clone(), PodSeries::default());
            }
            let Some(entry) = state.pods.get_mut(&key) else {
                continue;
            };
            if entry.uid != uid {
                // A new incarnation of the pod: what the old one sent is not its value.
                state.count -= entry.held();
                entry.families.clear();
                entry.uid = uid;
            }
            let mut labels: Vec<(&str, &str)> = Vec::new();
            for (family, ts) in batch {
                // The newest sample of the series in this request; older ones are superseded.
                let Some(newest) = ts.samples.iter().max_by_key(|s| s.timestamp) else {
                    continue;
                };
                report.drop(DropReason::Superseded, ts.samples.len() as u64 - 1);
                labels.clear();
                labels.extend(
                    ts.labels
                        .iter()
                        .map(|l| (l.name(), l.value()))
                        .filter(|(n, _)| {
                            *n != "__name__"
                                && *n != self.config.namespace_label
                                && *n != self.config.pod_label
                        }),
                );
                if !labels.is_sorted() {
                    labels.sort_unstable();
                }
                let hash = label_hash(&labels);
                if !entry.families.contains_key(family) {
                    entry.families.insert(family.to_owned(), HashMap::new());
                }
                let Some(series) = entry.families.get_mut(family) else {
                    continue;
                };
                let held = series.get_mut(&hash).and_then(|b| {
                    b.iter_mut()
                        .position(|(l, _)| same_labels(l, &labels))
                        .map(|i| (b, i))
                });
                if decode::is_stale_marker(newest.value) {
                    if let Some((bucket, i)) = held {
                        bucket.swap_remove(i);
                        if bucket.is_empty() {
                            series.remove(&hash);
                        }
                        state.count -= 1;
                    }
                    report.stale += 1;
                    continue;
                }
                let Some(milli) = quantity::milli_from_f64(newest.value) else {
                    report.drop(DropReason::Unservable, 1);
                    continue;
                };
                let time = SampleTime::stamped(epoch_ms(newest.timestamp), at);
                if time.age(at.mono) > max_age {
                    // Already too old to serve: holding it would only cost memory.
                    report.drop(DropReason::TooOld, 1);
                    continue;
                }
                let point = Point {
                    milli,
                    ts_ms: newest.timestamp,
                    time,
                };
                match held {
                    Some((bucket, i)) if bucket[i].1.ts_ms > newest.timestamp => {
                        report.drop(DropReason::OutOfOrder, 1);
                    }
                    Some((bucket, i)) => {
                        bucket[i].1 = point;
                        report.accepted += 1;
                    }
                    None if state.count >= self.config.max_series => {
                        report.drop(DropReason::SeriesLimit, 1);
                    }
                    None => {
                        let owned: LabelSet = labels
                            .iter()
                            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                            .collect();
                        series.entry(hash).or_default().push((owned, point));
                        state.count += 1;
                        report.accepted += 1;
                    }
                }
            }
            state.count -= prune(entry, at.mono, max_age);
            let reading = reading_of(entry, &catalog, at);
            if self
                .store
                .record_parsed(&key, &entry.uid.clone(), reading, &catalog)
            {
                report.pods_recorded += 1;
            }
        }
        report
    }

    /// Drops series older than `--max-age` and pods the inventory no longer has (or has as a new
    /// incarnation). Their readings in the store age out by `--max-age` on their own; this only
    /// bounds memory. Returns the series removed.
    pub fn sweep(&self, now: Instant) -> usize {
        let max_age = self.store.max_age();
        let mut state = self.lock();
        let mut removed = 0;
        state.pods.retain(|key, entry| {
            if self.store.pod_uid(key).as_deref() != Some(entry.uid.as_str()) {
                removed += entry.held();
                return false;
            }
            removed += prune(entry, now, max_age);
            !entry.families.is_empty()
        });
        state.count -= removed;
        removed
    }

    /// Handles one `POST /api/v1/write`: auth, headers, body limits, decoding, ingest. The
    /// outcome is counted in `ws_metrics_adapter_remote_write_requests_total`.
    pub async fn handle(&self, headers: &HeaderMap, body: Body) -> Response {
        let (outcome, response) = self.answer(headers, body).await;
        self.telemetry.count_remote_write_request(outcome);
        response
    }

    async fn answer(&self, headers: &HeaderMap, body: Body) -> (&'static str, Response) {
        let Ok(_permit) = self.permits.try_acquire() else {
            return (
                "overloaded",
                (
                    StatusCode::TOO_MANY_REQUESTS,
                    [(header::RETRY_AFTER, "1")],
                    "too many concurrent remote-write requests; retry later\n",
                )
                    .into_response(),
            );
        };
        if let Some(path) = &self.config.bearer_token_file {
            match bearer_matches(headers, path).await {
                Ok(true) => {}
                Ok(false) => {
                    return (
                        "unauthorized",
                        (
                            StatusCode::UNAUTHORIZED,
                            [(header::WWW_AUTHENTICATE, "Bearer")],
                            "missing or wrong bearer token\n",
                        )
                            .into_response(),
                    );
                }
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e, "cannot read --remote-write-bearer-token-file; refusing writes");
                    return (
                        "token_unreadable",
                        (
                            StatusCode::INTERNAL_SERVER_ERROR,
                            "the receiver cannot check credentials\n",
                        )
                            .into_response(),
                    );
                }
            }
        }
        let value = |name: header::HeaderName| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_ascii_lowercase()
        };
        let content_type = value(header::CONTENT_TYPE);
        if content_type.split(';').next().map(str::trim) != Some("application/x-protobuf") {
            return (
                "unsupported_media_type",
                (
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    format!(
                        "Content-Type {content_type:?}: expected application/x-protobuf (remote-write 1.0)\n"
                    ),
                )
                    .into_response(),
            );
        }
        let encoding = value(header::CONTENT_ENCODING);
        if encoding != "snappy" {
            return (
                "unsupported_media_type",
                (
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    format!("Content-Encoding {encoding:?}: expected snappy\n"),
                )
                    .into_response(),
            );
        }
        let limit = self.config.max_body_bytes;
        let bytes = match http_body_util::Limited::new(body, limit).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                return (
                    "too_large",
                    (
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!("body above {limit} bytes (--remote-write-max-body-bytes)\n"),
                    )
                        .into_response(),
                );
            }
            Err(e) => {
                return (
                    "bad_request",
                    (StatusCode::BAD_REQUEST, format!("reading the body: {e}\n")).into_response(),
                );
            }
        };
        let limits = DecodeLimits {
            max_decoded_bytes: self.config.max_decoded_bytes,
            max_series: self.config.max_series_per_request,
        };
        let request = match decode::decode(&bytes, limits) {
            Ok(r) => r,
            Err(e) => {
                let (outcome, code) = match e {
                    DecodeError::DecodedTooLarge { .. }
                    | DecodeError::TooManySeries { .. }
                    | DecodeError::DecodedStructureTooLarge { .. } => {
                        ("too_large", StatusCode::PAYLOAD_TOO_LARGE)
                    }
                    _ => ("bad_request", StatusCode::BAD_REQUEST),
                };
                return (outcome, (code, format!("{e}\n")).into_response());
            }
        };
        let report = self.ingest(&request, Moment::now());
        self.first_write.set();
        self.telemetry.count_remote_write_samples(
            report.accepted,
            report.stale,
            DropReason::ALL.map(|r| (r.as_str(), report.dropped(r))),
        );
        self.telemetry
            .set_remote_write_series(self.series_tracked());
        ("accepted", StatusCode::NO_CONTENT.into_response())
    }

    /// Prunes every [`SWEEP_PERIOD`] and keeps `health` ticking; ready once the inventory is
    /// known and a write was received or `ready_grace` passed since then, so that an adapter
    /// started before its agents (or with none yet) still becomes ready, its answers missing
    /// instead of blocking a rollout.
    pub async fn run(&self, health: Arc<Health>, shutdown: impl std::future::Future<Output = ()>) {
        let mut ticker = tokio::time::interval(SWEEP_PERIOD);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        // The grace is timed on tokio's clock, so tests pause and advance it.
        let mut known_since: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                () = &mut shutdown => return,
                _ = ticker.tick() => {}
            }
            health.tick_started();
            let now = Moment::now();
            self.sweep(now.mono);
            self.store.round_finished(now);
            self.telemetry
                .set_remote_write_series(self.series_tracked());
            let (fresh, stale) = self.store.freshness(now.mono);
            self.telemetry
                .set_pod_freshness(self.store.pod_count(), fresh, stale);
            if !self.store.is_synced() {
                continue;
            }
            health.pods_known();
            let since = *known_since.get_or_insert_with(tokio::time::Instant::now);
            if self.first_write.is_set() || since.elapsed() >= self.config.ready_grace {
                health.round_finished();
            }
        }
    }
}

/// Drops the entry's series older than `max_age`; returns how many.
fn prune(entry: &mut PodSeries, now: Instant, max_age: Duration) -> usize {
    let mut removed = 0;
    entry.families.retain(|_, series| {
        series.retain(|_, bucket| {
            let before = bucket.len();
            bucket.retain(|(_, p)| p.time.age(now) <= max_age);
            removed += before - bucket.len();
            !bucket.is_empty()
        });
        !series.is_empty()
    });
    removed
}

/// The pod's reading: per served family the sum of its series (exposition order = label order),
/// stamped with the newest of their sample times; `None` for a family with no series (the pod
/// is left out of its answers, never a 0).
fn reading_of(entry: &PodSeries, catalog: &MetricCatalog, at: Moment) -> Reading {
    let families = catalog
        .families()
        .iter()
        .map(|family| {
            let series = entry.families.get(family)?;
            if series.is_empty() {
                return None;
            }
            let mut out = FamilyReading::default();
            let mut sorted: Vec<(&LabelSet, &Point)> = series
                .values()
                .flat_map(|bucket| bucket.iter().map(|(l, p)| (l, p)))
                .collect();
            sorted.sort_by(|a, b| a.0.cmp(b.0));
            for (labels, p) in sorted {
                out.total_milli = out.total_milli.checked_add(p.milli)?;
                out.stamped_ms = Some(out.stamped_ms.map_or(p.ts_ms, |o| o.max(p.ts_ms)));
                out.series.push(Series {
                    labels: labels.clone(),
                    milli: p.milli,
                });
            }
            Some(out)
        })
        .collect();
    Reading {
        time: SampleTime::read_at(at),
        families,
    }
}

/// Whether the request's `Authorization: Bearer` token equals the file's (trimmed), compared in
/// constant time over SHA-256 digests so neither content nor length leaks through timing.
async fn bearer_matches(headers: &HeaderMap, path: &std::path::Path) -> std::io::Result<bool> {
    let expected = tokio::fs::read_to_string(path).await?;
    let expected = expected.trim();
    if expected.is_empty() {
        return Err(std::io::Error::other("the token file is empty"));
    }
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
        .trim();
    let a = ring::digest::digest(&ring::digest::SHA256, given.as_bytes());
    let b = ring::digest::digest(&ring::digest::SHA256, expected.as_bytes());
    let diff = a
        .as_ref()
        .iter()
        .zip(b.as_ref())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y));
    Ok(diff == 0 && !given.is_empty())
}

async fn write(State(receiver): State<Arc<Receiver>>, headers: HeaderMap, body: Body) -> Response {
    receiver.handle(&headers, body).await
}

/// The receiver's routes: `POST /api/v1/write` (other methods: 405), anything else 404.
pub fn router(receiver: Arc<Receiver>) -> Router {
    let r = receiver.clone();
    Router::new()
        .route(WRITE_PATH, post(write))
        .method_not_allowed_fallback(move || {
            let r = r.clone();
            async move {
                r.telemetry.count_remote_write_request("method_not_allowed");
                (
                    StatusCode::METHOD_NOT_ALLOWED,
                    [(header::ALLOW, "POST")],
                    "remote-write takes POST\n",
                )
            }
        })
        .with_state(receiver)
}

#[cfg(test)]
mod tests;
