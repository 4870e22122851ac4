//! The adapter's own observability: Prometheus metrics about scrapes, rounds, API requests and the
//! age of served values (served on the plain-HTTP `/metrics`), and the logging set-up.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Upper bounds of the `served_value_age_seconds` buckets. Unit: seconds.
pub const SERVED_AGE_BUCKETS: [f64; 14] = [
    0.1, 0.25, 0.5, 0.75, 1.0, 1.1, 1.25, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0,
];

/// Outcome of one request to Prometheus (`--source=prometheus`), by kind.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum QueryOutcome {
    /// Answered with data.
    Success,
    /// No answer within `--prometheus-timeout`.
    Timeout,
    /// Connection, TLS or HTTP failure.
    RequestFailed,
    /// Prometheus answered with an error, or an answer of the wrong type.
    PrometheusError,
}

impl QueryOutcome {
    /// The label value used in `ws_metrics_adapter_prometheus_requests_total{outcome=…}`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Timeout => "timeout",
            Self::RequestFailed => "request_failed",
            Self::PrometheusError => "prometheus_error",
        }
    }
}

/// What the authentication and authorization layer decided for one API request.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum AuthOutcome {
    /// Authenticated and allowed (by a cached or fresh SubjectAccessReview, or system:masters).
    Allowed,
    /// A path of --authorization-always-allow-paths: no credentials needed.
    AlwaysAllowed,
    /// 401: no usable credentials (no certificate or token, an untrusted certificate, an unknown
    /// token, identity headers without a valid front-proxy certificate).
    Unauthenticated,
    /// 401: a TokenReview could not be made (timeout, apiserver error); fails closed.
    AuthenticationFailed,
    /// 403: denied by SubjectAccessReview.
    Forbidden,
    /// 500: a SubjectAccessReview could not be made; fails closed.
    AuthorizationFailed,
}

impl AuthOutcome {
    /// The label value used in `ws_metrics_adapter_auth_decisions_total{outcome=…}`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allowed => "allowed",
            Self::AlwaysAllowed => "always_allowed",
            Self::Unauthenticated => "unauthenticated",
            Self::AuthenticationFailed => "authentication_failed",
            Self::Forbidden => "forbidden",
            Self::AuthorizationFailed => "authorization_failed",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PromLabels {
    kind: &'static str,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DropLabels {
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: &'static str,
    code: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkloadLabels {
    namespace: String,
    kind: &'static str,
    name: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WatchLabels {
    event: &'static str,
}

/// Handles to every metric, and the registry that renders them.
#[derive(Debug)]
pub struct Telemetry {
    registry: Registry,
    scrapes: Family<OutcomeLabels, Counter>,
    auth_decisions: Family<OutcomeLabels, Counter>,
    scrape_duration: Histogram,
    round_duration: Histogram,
    round_overruns: Counter,
    last_round_end: Gauge<f64, AtomicU64>,
    pods_tracked: Gauge,
    pods_fresh: Gauge,
    pods_stale: Gauge,
    api_requests: Family<RequestLabels, Histogram>,
    served_age: Histogram,
    watch_events: Family<WatchLabels, Counter>,
    inventory_errors: Counter,
    config_reload_failures: Counter,
    config_last_success: Gauge<f64, AtomicU64>,
    auth_config_loaded: Gauge,
    prom_requests: Family<PromLabels, Counter>,
    prom_duration: Histogram,
    prom_dropped: Family<DropLabels, Counter>,
    prom_samples: Counter,
    workload_imbalance: Family<WorkloadLabels, Gauge<f64, AtomicU64>>,
    workload_mean: Family<WorkloadLabels, Gauge<f64, AtomicU64>>,
    shed_requests: Family<OutcomeLabels, Counter>,
    shed_connections: Counter,
    cost_patches: Family<OutcomeLabels, Counter>,
    rw_requests: Family<OutcomeLabels, Counter>,
    rw_samples: Family<OutcomeLabels, Counter>,
    rw_dropped: Family<DropLabels, Counter>,
    rw_series: Gauge,
}

impl Default for Telemetry {
    fn default() -> Self {
        Self::new()
    }
}

impl Telemetry {
    /// Creates and registers every metric under the `ws_metrics_adapter_` prefix.
    pub fn new() -> Self {
        let mut root = Registry::default();
        let registry = root.sub_registry_with_prefix("ws_metrics_adapter");
        let build = Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]);
        registry.register("build", "Build information of the adapter", build);

        let scrapes = Family::<OutcomeLabels, Counter>::default();
        registry.register("scrapes", "Pod scrapes by outcome", scrapes.clone());
        let scrape_duration = Histogram::new(exponential_buckets(0.0005, 2.0, 14));
        registry.register_with_unit(
            "scrape_duration",
            "Time to scrape and parse one pod, whatever the outcome",
            Unit::Seconds,
            scrape_duration.clone(),
        );
        let round_duration = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        registry.register_with_unit(
            "collection_round_duration",
            "Time to scrape every tracked pod once",
            Unit::Seconds,
            round_duration.clone(),
        );
        let round_overruns = Counter::default();
        registry.register(
            "collection_round_overruns",
            "Rounds that took longer than the scrape interval",
            round_overruns.clone(),
        );
        let last_round_end = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "collection_last_round_end_timestamp_seconds",
            "Unix time at which the last collection round ended",
            last_round_end.clone(),
        );
        let pods_tracked = Gauge::default();
        registry.register(
            "pods_tracked",
            "Pods opted in for scraping",
            pods_tracked.clone(),
        );
        let pods_fresh = Gauge::default();
        registry.register(
            "pods_with_fresh_value",
            "Tracked pods whose last good reading is younger than --max-age",
            pods_fresh.clone(),
        );
        let pods_stale = Gauge::default();
        registry.register(
            "pods_without_fresh_value",
            "Tracked pods left out of answers: never scraped successfully or last good reading older than --max-age",
            pods_stale.clone(),
        );
        let api_requests = Family::<RequestLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.000_05, 2.0, 14))
        });
        registry.register_with_unit(
            "api_request_duration",
            "Custom metrics API requests by route kind and HTTP code",
            Unit::Seconds,
            api_requests.clone(),
        );
        // Fine around the default 1 s scrape interval, where the question is "at most one
        // interval (+ the scrape's own time) old?"; coarse beyond, where values are stale anyway.
        let served_age = Histogram::new(SERVED_AGE_BUCKETS.iter().copied());
        registry.register_with_unit(
            "served_value_age",
            "Age of each value served by the API (now minus its sample time)",
            Unit::Seconds,
            served_age.clone(),
        );
        let watch_events = Family::<WatchLabels, Counter>::default();
        registry.register(
            "inventory_events",
            "Pod inventory events (watch events or static-file reloads) by kind",
            watch_events.clone(),
        );
        let inventory_errors = Counter::default();
        registry.register(
            "inventory_errors",
            "Pod watch errors and static-file reload failures",
            inventory_errors.clone(),
        );
        let config_reload_failures = Counter::default();
        registry.register(
            "config_reload_failures",
            "Re-reads of --metrics-config that could not be used (the previous metrics stay)",
            config_reload_failures.clone(),
        );
        let config_last_success = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "config_last_reload_success_timestamp_seconds",
            "Unix time at which the metrics config was last read and applied (at start, then on each change)",
            config_last_success.clone(),
        );
        let auth_config_loaded = Gauge::default();
        registry.register(
            "authentication_config_loaded",
            "1 once the authentication config (ConfigMap kube-system/extension-apiserver-authentication, or the CA flags) is in force, 0 while readiness waits for it; 1 when the API does not authenticate (static mode, --insecure-allow-unauthenticated)",
            auth_config_loaded.clone(),
        );
        let prom_requests = Family::<PromLabels, Counter>::default();
        registry.register(
            "prometheus_requests",
            "Requests to Prometheus (--source=prometheus) by kind (query, series) and outcome",
            prom_requests.clone(),
        );
        let prom_duration = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        registry.register_with_unit(
            "prometheus_query_duration",
            "Time of one query to Prometheus, whatever the outcome",
            Unit::Seconds,
            prom_duration.clone(),
        );
        let prom_dropped = Family::<DropLabels, Counter>::default();
        registry.register(
            "prometheus_series_dropped",
            "Series of query answers not served, by reason (unlabelled: no object label; unservable: NaN or Inf)",
            prom_dropped.clone(),
        );
        let prom_samples = Counter::default();
        registry.register(
            "prometheus_samples",
            "Samples in the answers of the Prometheus source's queries (the query cost that grows with the pods; with the query durations in prometheus_request_duration_seconds)",
            prom_samples.clone(),
        );
        let auth_decisions = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "auth_decisions",
            "API requests by authentication/authorization outcome (401s and 403s are counted here, before the API handler)",
            auth_decisions.clone(),
        );
        let workload_imbalance = Family::<WorkloadLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "workload_imbalance_ratio",
            "Per workload an HPA scales on a served metric (--rebalance): max ÷ mean of the value over its Ready pods with a fresh value (1 = balanced)",
            workload_imbalance.clone(),
        );
        let workload_mean = Family::<WorkloadLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "workload_mean_value",
            "Per workload an HPA scales on a served metric (--rebalance): mean of the value over its Ready pods with a fresh value",
            workload_mean.clone(),
        );
        let shed_requests = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "shed_requests",
            "Shed requests sent to pods (--rebalance) by outcome (ok, timeout, request_failed, refused, bad_answer)",
            shed_requests.clone(),
        );
        let shed_connections = Counter::default();
        registry.register(
            "shed_connections",
            "Connections pods said they were closing in answer to shed requests",
            shed_connections.clone(),
        );
        let cost_patches = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "deletion_cost_patches",
            "controller.kubernetes.io/pod-deletion-cost patches (--rebalance) by outcome (ok, not_found, error)",
            cost_patches.clone(),
        );
        let rw_requests = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "remote_write_requests",
            "Remote-write requests (--source=remote-write) by outcome (accepted, unauthorized, token_unreadable, unsupported_media_type, method_not_allowed, too_large, bad_request, overloaded)",
            rw_requests.clone(),
        );
        let rw_samples = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "remote_write_samples",
            "Remote-write samples of served families recorded (outcome=accepted) or honoured as stale markers (outcome=stale)",
            rw_samples.clone(),
        );
        let rw_dropped = Family::<DropLabels, Counter>::default();
        registry.register(
            "remote_write_samples_dropped",
            "Remote-write samples not recorded, by reason (family_not_served, unlabelled, unknown_pod, unservable, out_of_order, too_old, superseded, series_limit)",
            rw_dropped.clone(),
        );
        let rw_series = Gauge::default();
        registry.register(
            "remote_write_series_tracked",
            "Series of served families the remote-write receiver holds (bounded by --remote-write-max-series)",
            rw_series.clone(),
        );
        Self {
            registry: root,
            rw_requests,
            rw_samples,
            rw_dropped,
            rw_series,
            workload_imbalance,
            workload_mean,
            shed_requests,
            shed_connections,
            cost_patches,
            auth_decisions,
            prom_requests,
            prom_duration,
            prom_dropped,
            prom_samples,
            scrapes,
            scrape_duration,
            round_duration,
            round_overruns,
            last_round_end,
            pods_tracked,
            pods_fresh,
            pods_stale,
            api_requests,
            served_age,
            watch_events,
            inventory_errors,
            config_reload_failures,
            config_last_success,
            auth_config_loaded,
        }
    }

    /// Sets `ws_metrics_adapter_authentication_config_loaded`: `true` once the authentication
    /// config is in force (or when the API serves without authentication, so there is nothing to
    /// load), `false` while readiness waits for it. Starts at `false`.
    pub fn set_authentication_config_loaded(&self, loaded: bool) {
        self.auth_config_loaded.set(i64::from(loaded));
    }

    /// Sets the balance gauges of one workload; `None` removes that gauge's series (no Ready pod
    /// with a fresh value: nothing to measure, and no stale figure left behind).
    pub fn set_workload_balance(
        &self,
        namespace: &str,
        kind: &'static str,
        name: &str,
        imbalance: Option<f64>,
        mean: Option<f64>,
    ) {
        let labels = WorkloadLabels {
            namespace: namespace.to_owned(),
            kind,
            name: name.to_owned(),
        };
        for (family, value) in [
            (&self.workload_imbalance, imbalance),
            (&self.workload_mean, mean),
        ] {
            match value {
                Some(v) => {
                    family.get_or_create(&labels).set(v);
                }
                None => {
                    family.remove(&labels);
                }
            }
        }
    }

    /// Removes the balance gauges of a workload no longer scaled on a served metric.
    pub fn forget_workload(&self, namespace: &str, kind: &'static str, name: &str) {
        self.set_workload_balance(namespace, kind, name, None, None);
    }

    /// Counts one shed request by outcome, and the connections the pod said it is closing.
    pub fn count_shed(&self, outcome: &'static str, closing: u64) {
        self.shed_requests
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
        self.shed_connections.inc_by(closing);
    }

    /// Counts one deletion-cost patch by outcome.
    pub fn count_cost_patch(&self, outcome: &'static str) {
        self.cost_patches
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    /// Counts one scrape under its `outcome` label (`collect::outcome_label`). Unit of `secs`:
    /// seconds.
    pub fn observe_scrape(&self, outcome: &'static str, secs: f64) {
        self.scrapes.get_or_create(&OutcomeLabels { outcome }).inc();
        self.scrape_duration.observe(secs);
    }

    /// Counts one decision of the authentication and authorization layer.
    pub fn count_auth(&self, outcome: AuthOutcome) {
        self.auth_decisions
            .get_or_create(&OutcomeLabels {
                outcome: outcome.as_str(),
            })
            .inc();
    }

    /// Number of decisions with this outcome so far.
    pub fn auth_count(&self, outcome: AuthOutcome) -> u64 {
        self.auth_decisions
            .get_or_create(&OutcomeLabels {
                outcome: outcome.as_str(),
            })
            .get()
    }

    /// Counts one request to Prometheus (`kind`: `query` or `series`). Unit of `secs`: seconds.
    pub fn observe_prometheus_query(&self, kind: &'static str, outcome: QueryOutcome, secs: f64) {
        self.prom_requests
            .get_or_create(&PromLabels {
                kind,
                outcome: outcome.as_str(),
            })
            .inc();
        if kind == "query" {
            self.prom_duration.observe(secs);
        }
    }

    /// Number of requests to Prometheus of this kind and outcome so far.
    pub fn prometheus_query_count(&self, kind: &'static str, outcome: QueryOutcome) -> u64 {
        self.prom_requests
            .get_or_create(&PromLabels {
                kind,
                outcome: outcome.as_str(),
            })
            .get()
    }

    /// Counts one remote-write request under `outcome`.
    pub fn count_remote_write_request(&self, outcome: &'static str) {
        self.rw_requests
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    /// Remote-write requests counted under `outcome` so far.
    pub fn remote_write_request_count(&self, outcome: &'static str) -> u64 {
        self.rw_requests
            .get_or_create(&OutcomeLabels { outcome })
            .get()
    }

    /// Counts the samples of one remote-write request: `accepted` recorded, `stale` stale
    /// markers honoured, and those dropped as `(reason, count)`.
    pub fn count_remote_write_samples(
        &self,
        accepted: u64,
        stale: u64,
        dropped: impl IntoIterator<Item = (&'static str, u64)>,
    ) {
        for (outcome, n) in [("accepted", accepted), ("stale", stale)] {
            if n > 0 {
                self.rw_samples
                    .get_or_create(&OutcomeLabels { outcome })
                    .inc_by(n);
            }
        }
        for (reason, n) in dropped {
            if n > 0 {
                self.rw_dropped
                    .get_or_create(&DropLabels { reason })
                    .inc_by(n);
            }
        }
    }

    /// Sets `ws_metrics_adapter_remote_write_series_tracked`.
    pub fn set_remote_write_series(&self, series: usize) {
        self.rw_series
            .set(i64::try_from(series).unwrap_or(i64::MAX));
    }

    /// Counts series left out of a query answer.
    pub fn prometheus_series_dropped(&self, unlabelled: usize, unservable: usize) {
        for (reason, n) in [("unlabelled", unlabelled), ("unservable", unservable)] {
            if n > 0 {
                self.prom_dropped
                    .get_or_create(&DropLabels { reason })
                    .inc_by(n as u64);
            }
        }
    }

    /// Counts the samples of one query answer.
    pub fn prometheus_samples(&self, n: usize) {
        self.prom_samples.inc_by(n as u64);
    }

    /// Number of scrapes counted under this `outcome` label so far (one of
    /// `collect::OUTCOME_LABELS`).
    pub fn scrape_count(&self, outcome: &'static str) -> u64 {
        self.scrapes.get_or_create(&OutcomeLabels { outcome }).get()
    }

    /// Records a finished round. Unit of `secs` and `end_unix`: seconds.
    pub fn observe_round(
        &self,
        secs: f64,
        overran: bool,
        end_unix: f64,
        tracked: usize,
        fresh: usize,
        stale: usize,
    ) {
        self.round_duration.observe(secs);
        if overran {
            self.round_overruns.inc();
        }
        self.last_round_end.set(end_unix);
        self.pods_tracked
            .set(i64::try_from(tracked).unwrap_or(i64::MAX));
        self.pods_fresh
            .set(i64::try_from(fresh).unwrap_or(i64::MAX));
        self.pods_stale
            .set(i64::try_from(stale).unwrap_or(i64::MAX));
    }

    /// Sets the inventory and freshness gauges (`pods_tracked`, `pods_with_fresh_value`,
    /// `pods_without_fresh_value`) outside a collection round (the remote-write source).
    pub fn set_pod_freshness(&self, tracked: usize, fresh: usize, stale: usize) {
        self.pods_tracked
            .set(i64::try_from(tracked).unwrap_or(i64::MAX));
        self.pods_fresh
            .set(i64::try_from(fresh).unwrap_or(i64::MAX));
        self.pods_stale
            .set(i64::try_from(stale).unwrap_or(i64::MAX));
    }

    /// Records one API request. Unit of `secs`: seconds.
    pub fn observe_api_request(&self, route: &'static str, code: u16, secs: f64) {
        self.api_requests
            .get_or_create(&RequestLabels { route, code })
            .observe(secs);
    }

    /// Records the age of one served value. Unit: seconds.
    pub fn observe_served_age(&self, secs: f64) {
        self.served_age.observe(secs);
    }

    /// Counts an inventory event (`added`, `updated`, `deleted`, `relisted`, `reloaded`).
    pub fn inventory_event(&self, event: &'static str) {
        self.watch_events
            .get_or_create(&WatchLabels { event })
            .inc();
    }

    /// Counts an inventory error.
    pub fn inventory_error(&self) {
        self.inventory_errors.inc();
    }

    /// Notes that the metrics config was read and applied at `unix` (seconds).
    pub fn config_applied(&self, unix: f64) {
        self.config_last_success.set(unix);
    }

    /// Counts a re-read of the metrics config that could not be used.
    pub fn config_reload_failed(&self) {
        self.config_reload_failures.inc();
    }

    /// Renders every metric in the OpenMetrics text format.
    pub fn render_openmetrics(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Renders every metric in the classic Prometheus text format (0.0.4), which is what
    /// scrapers and `promtool check metrics` expect by default.
    pub fn render_text(&self) -> String {
        openmetrics_to_text(&self.render_openmetrics())
    }
}

/// Converts prometheus-client's OpenMetrics output to the Prometheus text format: counter
/// families are named with their `_total` suffix in HELP/TYPE, info families become gauges named
/// `_info`, and `# UNIT` and `# EOF` lines are dropped.
pub fn openmetrics_to_text(om: &str) -> String {
    let mut types: std::collections::HashMap<&str, &str> = std::collections::HashMap::new();
    for line in om.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ")
            && let Some((name, kind)) = rest.split_once(' ')
        {
            types.insert(name, kind);
        }
    }
    let mut out = String::with_capacity(om.len());
    for line in om.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let header = line
            .strip_prefix("# HELP ")
            .map(|r| ("HELP", r))
            .or_else(|| line.strip_prefix("# TYPE ").map(|r| ("TYPE", r)));
        let Some((what, rest)) = header else {
            out.push_str(line);
            out.push('\n');
            continue;
        };
        let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
        let (name, tail) = match (types.get(name).copied(), what) {
            (Some("counter"), _) if !name.ends_with("_total") => {
                (format!("{name}_total"), tail.to_owned())
            }
            (Some("info"), "TYPE") => (format!("{name}_info"), "gauge".to_owned()),
            (Some("info"), _) => (format!("{name}_info"), tail.to_owned()),
            _ => (name.to_owned(), tail.to_owned()),
        };
        out.push_str(&format!("# {what} {name} {tail}\n"));
    }
    out
}

/// The HTTP answer to a scrape of a prometheus-client registry: Prometheus text 0.0.4 by default
/// (what `promtool check metrics` and most scrapers expect), OpenMetrics when the `Accept` header
/// asks for it. `render_openmetrics` renders the registry.
pub fn exposition_response(
    headers: &http::HeaderMap,
    render_openmetrics: impl FnOnce() -> String,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let openmetrics = headers
        .get_all(http::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    let (content_type, body) = if openmetrics {
        (
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            render_openmetrics(),
        )
    } else {
        (
            "text/plain; version=0.0.4; charset=utf-8",
            openmetrics_to_text(&render_openmetrics()),
        )
    };
    ([(http::header::CONTENT_TYPE, content_type)], body).into_response()
}

/// Installs the global tracing subscriber. `RUST_LOG` sets the filter (default `info`).
pub fn init_logging(format: LogFormat) {
    init_logging_with_default(format, "info");
}

/// Like [`init_logging`] with another default filter when `RUST_LOG` is unset.
pub fn init_logging_with_default(format: LogFormat, default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second initialisation (tests) is harmless: keep the first subscriber.
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(text: &str, series: &str) -> Option<String> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ').map(str::to_owned))
    }

    #[test]
    fn the_authentication_config_gauge_is_0_until_the_config_is_in_force() {
        let telemetry = Telemetry::new();
        let series = "ws_metrics_adapter_authentication_config_loaded";
        let text = telemetry.render_text();
        assert!(text.contains(&format!("# TYPE {series} gauge")), "{text}");
        assert_eq!(sample(&text, series).as_deref(), Some("0"), "{text}");
        telemetry.set_authentication_config_loaded(true);
        assert_eq!(
            sample(&telemetry.render_text(), series).as_deref(),
            Some("1")
        );
        telemetry.set_authentication_config_loaded(false);
        assert_eq!(
            sample(&telemetry.render_text(), series).as_deref(),
            Some("0")
        );
    }
}
