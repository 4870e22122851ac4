//! The Prometheus source (`--source=prometheus`): instead of scraping pods, run one PromQL query
//! per served metric and resource every interval against an existing Prometheus, and serve the
//! answers from memory. The pod inventory (watch or static file) still decides which pods exist.
//!
//! - `template`: the `<<.Series>>` / `<<.LabelMatchers>>` / `<<.GroupBy>>` query templates.
//! - [`rules`]: prometheus-adapter `rules:` (discovery, association, naming, querying).
//! - `plan`: which query serves which metric, and answers → tables of the store's snapshot.

pub(crate) mod plan;
pub mod rules;
pub(crate) mod template;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use prometheus_http_query::response::Data;

use crate::clock::SampleTime;
use crate::health::{self, Health};
use crate::store::Store;
use crate::store::read::{Outcome, PartFailure, Snapshot, Table};
use crate::telemetry::{QueryOutcome, Telemetry};
use futures::StreamExt;
use plan::Plan;

/// Errors of setting the source up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The TLS client configuration could not be built: a CA, client certificate or key file
    /// that cannot be used, or a key that does not match the certificate.
    #[error("building the TLS client configuration: {0}")]
    TlsConfig(#[source] crate::tls::client::Error),
    /// The HTTP client could not be built.
    #[error("building the HTTP client: {0}")]
    ClientBuild(#[source] reqwest::Error),
    /// The Prometheus URL was refused.
    #[error("using --prometheus-url {url}: {reason}")]
    BadUrl {
        /// URL given.
        url: String,
        /// Why.
        reason: String,
    },
}

/// Result of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Settings of the Prometheus source.
#[derive(Debug, Clone)]
pub struct PrometheusConfig {
    /// Base URL, e.g. `http://prometheus.monitoring:9090`.
    pub url: String,
    /// File holding a bearer token, re-read before every round (tokens rotate).
    pub bearer_token_file: Option<PathBuf>,
    /// CA bundle (PEM) for an `https://` Prometheus [default: the webpki roots].
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM) for mutual TLS.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// Deadline of one query, connect to last byte.
    pub timeout: Duration,
    /// Period of the query rounds.
    pub interval: Duration,
    /// Query template of the `--metric` mappings.
    pub query: template::Template,
    /// Label holding a series' namespace.
    pub namespace_label: String,
    /// Label holding a series' pod.
    pub pod_label: String,
    /// prometheus-adapter rules, if a rules file was given.
    pub rules: Vec<rules::Rule>,
    /// How often the rules' `seriesQuery`s are listed again.
    pub relist_interval: Duration,
    /// Parts each `--metric` query is split into by namespace, at most (1: unsplit).
    pub parts: usize,
    /// Queries in flight at once, at most.
    pub max_parallel: usize,
}

/// Copies into `table` the objects of namespace `ns` (every namespace when empty) from `last`
/// that are still within `max_age`; returns the oldest sample time among them. They are served
/// while all of them are fresh (the read checks the oldest), then the namespace answers 500,
/// never partly or empty.
fn carry_last_good(
    table: &mut Table,
    last: &Table,
    ns: &str,
    now: crate::clock::Moment,
    max_age: Duration,
) -> Option<SampleTime> {
    let mut oldest: Option<(Duration, SampleTime)> = None;
    for (key, value) in &last.objects {
        let age = value.time.age(now.mono);
        if (ns.is_empty() || key.0 == ns) && age <= max_age {
            if oldest.is_none_or(|(o, _)| age > o) {
                oldest = Some((age, value.time));
            }
            table.objects.insert(key.clone(), value.clone());
        }
    }
    table.kept_labels.extend(last.kept_labels.iter().cloned());
    oldest.map(|(_, t)| t)
}

/// The namespaces a part of a split query asks for; `None` for an unsplit query.
type Group = Option<Arc<[String]>>;

/// One part's answer: query index, namespaces, PromQL, result, duration.
type Answer = (
    usize,
    Group,
    String,
    std::result::Result<Vec<plan::RawSample>, QueryError>,
    Duration,
);

/// Why a namespace has no value while its part has not answered at start-up.
const NOT_ANSWERED_YET: &str = "no answer from Prometheus yet (the adapter is starting)";

/// Adds a part's answer to its query's table: the part's objects (only those of its own
/// namespaces when split) and kept labels. Returns the series dropped on the way.
fn merge_part(
    table: &mut Option<Table>,
    spec: &plan::QuerySpec,
    samples: Vec<plan::RawSample>,
    group: &Group,
    now: crate::clock::Moment,
) -> plan::Dropped {
    let (mut part, dropped) = plan::build_table(spec, samples, now);
    if let Some(group) = group {
        part.objects.retain(|(n, _), _| group.contains(n));
    }
    let table = table.get_or_insert_with(Table::default);
    table.objects.extend(part.objects);
    table.kept_labels.extend(part.kept_labels);
    dropped
}

/// The namespaces a part covers: its group, or `""` for a query not split by namespace.
fn members(group: &Group) -> Vec<String> {
    group
        .as_deref()
        .map_or_else(|| vec![String::new()], <[String]>::to_vec)
}

/// The snapshot of a first round that is still running: the values of the parts that answered,
/// each namespace of the other parts failing with the reason (an error, or no answer yet; never
/// a zero), and `Pending` for a query none of whose parts answered. Telemetry and logs are left
/// to the end of the round.
fn first_answers(
    plan: &Plan,
    parts: &[(usize, Group)],
    answers: &[Answer],
    now: crate::clock::Moment,
) -> Snapshot {
    let same = |a: &Group, b: &Group| match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    };
    let mut tables: Vec<Option<Table>> = vec![None; plan.queries.len()];
    for (i, ns, _, result, _) in answers {
        let Ok(samples) = result else { continue };
        merge_part(&mut tables[*i], &plan.queries[*i], samples.clone(), ns, now);
    }
    for (i, group) in parts {
        let Some(table) = tables[*i].as_mut() else {
            continue;
        };
        let answer = answers
            .iter()
            .find(|(j, ns, _, _, _)| j == i && same(ns, group))
            .map(|(_, _, _, result, _)| result);
        let why: Arc<str> = match answer {
            Some(Ok(_)) => continue,
            Some(Err(e)) => Arc::from(e.to_string()),
            None => Arc::from(NOT_ANSWERED_YET),
        };
        for ns in members(group) {
            table.failing.insert(
                ns,
                PartFailure {
                    why: why.clone(),
                    oldest: None,
                },
            );
        }
    }
    plan.snapshot(
        tables
            .into_iter()
            .map(|t| t.map_or(Outcome::Pending, |t| Outcome::Ready(Arc::new(t))))
            .collect(),
    )
}

/// The namespaces of each part: `(namespace, tracked pods)` spread over at most `parts` groups,
/// the largest first onto the group with the fewest pods so far, each group sorted by name.
/// Empty when there is one part or no namespace: then the query runs unsplit.
fn namespace_groups(mut namespaces: Vec<(String, usize)>, parts: usize) -> Vec<Vec<String>> {
    if parts <= 1 || namespaces.is_empty() {
        return Vec::new();
    }
    namespaces.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let mut groups: Vec<(usize, Vec<String>)> = vec![(0, Vec::new()); parts.min(namespaces.len())];
    for (name, pods) in namespaces {
        // `groups` is never empty here: at least one namespace and one part.
        if let Some(lightest) = groups.iter_mut().min_by_key(|(total, _)| *total) {
            lightest.0 += pods;
            lightest.1.push(name);
        }
    }
    groups
        .into_iter()
        .map(|(_, mut names)| {
            names.sort();
            names
        })
        .collect()
}

/// The rustls client configuration towards Prometheus (CA, optional client certificate).
fn tls_config(config: &PrometheusConfig) -> Result<rustls::ClientConfig> {
    crate::tls::client::config(crate::tls::client::ClientTls {
        ca_file: config.ca_file.as_deref(),
        identity: config
            .client_cert
            .as_ref()
            .map(|(cert, key)| (cert.as_path(), key.as_path())),
    })
    .map_err(Error::TlsConfig)
}

/// Why one query failed, for logs and the adapter's own metrics. `Clone` because a bearer-token
/// failure fails every query of the round; the sources are shared behind `Arc` for that.
#[derive(Debug, Clone, thiserror::Error)]
pub enum QueryError {
    /// No answer within `--prometheus-timeout`.
    #[error("timed out")]
    Timeout,
    /// The query request failed: connection refused, reset, TLS failure, or an HTTP error status.
    #[error("request failed: {0}")]
    RequestFailed(#[source] Arc<prometheus_http_query::Error>),
    /// The series request (`/api/v1/series`) failed: connection, TLS, or HTTP.
    #[error("request failed: {0}")]
    SeriesRequestFailed(#[source] Arc<reqwest::Error>),
    /// The URL of the series endpoint could not be formed from `--prometheus-url`. The cause is
    /// a `url::ParseError`, boxed: this crate does not depend on `url` by name.
    #[error("request failed: {0}")]
    SeriesUrl(#[source] Arc<dyn std::error::Error + Send + Sync>),
    /// The answer to the series request was not its JSON (an HTTP error page, a cut body).
    #[error("request failed: HTTP {status}: {source}")]
    SeriesAnswerUnreadable {
        /// HTTP status of the answer.
        status: http::StatusCode,
        /// Cause.
        #[source]
        source: Arc<reqwest::Error>,
    },
    /// Prometheus answered with an error (bad PromQL, its own timeout); its message.
    #[error("prometheus error: {0}")]
    PrometheusError(String),
    /// The answer was not an instant vector.
    #[error("unexpected result type: {0}")]
    Unexpected(&'static str),
    /// The bearer token file could not be read.
    #[error("reading bearer token file: {path}: {source}")]
    TokenUnreadable {
        /// Path given.
        path: PathBuf,
        /// Cause.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// The bearer token cannot be sent in an HTTP header (a control character in it).
    #[error("reading bearer token file: token is not a valid header value")]
    TokenNotAHeader(#[source] Arc<http::header::InvalidHeaderValue>),
}

impl QueryError {
    fn outcome(&self) -> QueryOutcome {
        match self {
            Self::Timeout => QueryOutcome::Timeout,
            Self::RequestFailed(_)
            | Self::SeriesRequestFailed(_)
            | Self::SeriesUrl(_)
            | Self::SeriesAnswerUnreadable { .. }
            | Self::TokenUnreadable { .. }
            | Self::TokenNotAHeader(_) => QueryOutcome::RequestFailed,
            Self::PrometheusError(_) | Self::Unexpected(_) => QueryOutcome::PrometheusError,
        }
    }
}

fn classify(e: prometheus_http_query::Error) -> QueryError {
    use prometheus_http_query::Error as E;
    match e {
        E::Prometheus(p) => QueryError::PrometheusError(p.to_string()),
        E::Client(c) => {
            let timeout = std::error::Error::source(&c)
                .and_then(|s| s.downcast_ref::<reqwest::Error>())
                .is_some_and(reqwest::Error::is_timeout);
            if timeout {
                QueryError::Timeout
            } else {
                QueryError::RequestFailed(Arc::new(E::Client(c)))
            }
        }
        other => QueryError::RequestFailed(Arc::new(other)),
    }
}

/// What one round did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoundReport {
    /// Queries sent.
    pub queries: usize,
    /// Queries that failed.
    pub failed: usize,
    /// Whether the rules' series were listed in this round.
    pub relisted: bool,
}

/// The query loop's state.
pub struct Source {
    client: prometheus_http_query::Client,
    config: PrometheusConfig,
    store: Arc<Store>,
    /// The plan of the last published snapshot.
    plan: arc_swap::ArcSwap<Plan>,
    telemetry: Arc<Telemetry>,
    /// The plan of the `--metric` mappings alone; the rules' discoveries are added to it.
    base: Plan,
    last_relist: Mutex<Option<Instant>>,
    /// Last error message per query, to log changes rather than every failure.
    last_error: Mutex<HashMap<String, Option<String>>>,
}

impl Source {
    /// Builds the HTTP client (rustls on ring, with the configured CA, client certificate and
    /// deadline), and publishes an all-pending snapshot to the store (the API answers 500 for
    /// its metrics until the first round).
    ///
    /// # Errors
    /// TLS files that cannot be used, or a URL the client refuses.
    pub fn new(
        config: PrometheusConfig,
        mappings: &[crate::store::MetricMapping],
        store: Arc<Store>,
        telemetry: Arc<Telemetry>,
    ) -> Result<Self> {
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls_config(&config)?)
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .user_agent(concat!("ws-metrics-adapter/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(Error::ClientBuild)?;
        let client =
            prometheus_http_query::Client::from(http, &config.url).map_err(|e| Error::BadUrl {
                url: config.url.clone(),
                reason: e.to_string(),
            })?;
        let base = plan::plan_for_mappings(
            mappings,
            &config.query,
            &config.namespace_label,
            &config.pod_label,
            config.parts > 1,
        );
        store.publish(Snapshot::pending(
            base.served.clone().into(),
            base.queries.len(),
        ));
        Ok(Self {
            client,
            config,
            store,
            plan: arc_swap::ArcSwap::from_pointee(base.clone()),
            telemetry,
            base,
            last_relist: Mutex::new(None),
            last_error: Mutex::new(HashMap::new()),
        })
    }

    fn bearer(&self) -> std::result::Result<Option<String>, QueryError> {
        match &self.config.bearer_token_file {
            None => Ok(None),
            Some(path) => std::fs::read_to_string(path)
                .map(|t| Some(format!("Bearer {}", t.trim())))
                .map_err(|e| QueryError::TokenUnreadable {
                    path: path.clone(),
                    source: Arc::new(e),
                }),
        }
    }

    /// Runs one instant query and returns its samples.
    async fn query(
        &self,
        promql: &str,
        auth: Option<&str>,
    ) -> std::result::Result<Vec<plan::RawSample>, QueryError> {
        let mut q = self
            .client
            .query(promql)
            .timeout(i64::try_from(self.config.timeout.as_millis()).unwrap_or(i64::MAX));
        if let Some(a) = auth {
            let value = http::HeaderValue::from_str(a)
                .map_err(|e| QueryError::TokenNotAHeader(Arc::new(e)))?;
            q = q.header(http::header::AUTHORIZATION, value);
        }
        // POST: rendered rule queries can be long, and POST keeps them out of access logs' URLs.
        let answer = tokio::time::timeout(self.config.timeout, q.post())
            .await
            .map_err(|_| QueryError::Timeout)?
            .map_err(classify)?;
        match answer.into_inner().0 {
            Data::Vector(v) => Ok(v
                .into_iter()
                .map(|iv| {
                    let (labels, sample) = iv.into_inner();
                    (labels, sample.value(), sample.timestamp())
                })
                .collect()),
            Data::Matrix(_) => Err(QueryError::Unexpected("matrix")),
            Data::Scalar(_) => Err(QueryError::Unexpected("scalar")),
        }
    }

    /// Lists the series of one `seriesQuery` over the last relist interval.
    async fn series(
        &self,
        selector: &str,
        auth: Option<&str>,
    ) -> std::result::Result<Vec<rules::SeriesLabels>, QueryError> {
        #[derive(serde::Deserialize)]
        struct Answer {
            status: String,
            #[serde(default)]
            data: Vec<BTreeMap<String, String>>,
            #[serde(default)]
            error: Option<String>,
        }
        let end = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        let start = end - self.config.relist_interval.as_secs_f64();
        let url = self
            .client
            .base_url()
            .join("api/v1/series")
            .map_err(|e| QueryError::SeriesUrl(Arc::new(e)))?;
        let mut req = self.client.inner().post(url).form(&[
            ("match[]", selector.to_owned()),
            ("start", format!("{start:.3}")),
            ("end", format!("{end:.3}")),
        ]);
        if let Some(a) = auth {
            req = req.header(http::header::AUTHORIZATION, a);
        }
        let resp = req.send().await.map_err(|e| {
            if e.is_timeout() {
                QueryError::Timeout
            } else {
                QueryError::SeriesRequestFailed(Arc::new(e))
            }
        })?;
        let status = resp.status();
        let body: Answer = resp
            .json()
            .await
            .map_err(|e| QueryError::SeriesAnswerUnreadable {
                status,
                source: Arc::new(e),
            })?;
        if body.status != "success" {
            return Err(QueryError::PrometheusError(
                body.error.unwrap_or_else(|| format!("HTTP {status}")),
            ));
        }
        Ok(body.data)
    }

    /// Lists every rule's series and rebuilds the plan. A failure keeps the current plan.
    async fn relist(&self, auth: Option<&str>) -> std::result::Result<Plan, QueryError> {
        let listed = futures::future::join_all(
            self.config
                .rules
                .iter()
                .map(|r| self.series(&r.series_query, auth)),
        )
        .await;
        let mut all = Vec::with_capacity(listed.len());
        for (rule, l) in self.config.rules.iter().zip(listed) {
            match l {
                Ok(series) => all.push(series),
                Err(e) => {
                    tracing::warn!(rule = rule.index, series_query = %rule.series_query, error = %e, "listing series failed; keeping the current metrics");
                    self.telemetry
                        .observe_prometheus_query("series", e.outcome(), 0.0);
                    return Err(e);
                }
            }
        }
        self.telemetry
            .observe_prometheus_query("series", QueryOutcome::Success, 0.0);
        let discovered = rules::discover_all(&self.config.rules, &all);
        let mut plan = self.base.clone();
        let skipped = plan::extend_with_rules(&mut plan, &discovered);
        if skipped > 0 {
            tracing::warn!(
                skipped,
                "rules produced (resource, metric) pairs already served; the first one wins"
            );
        }
        Ok(plan)
    }

    /// One round: relist the rules' series when due, then run every query of the plan once (all
    /// at once, each with its own deadline) and publish the answers in one swap. A failed query
    /// publishes a failure for its metrics, so they answer 500 until a query succeeds again.
    pub async fn tick(&self) -> RoundReport {
        let mut report = RoundReport::default();
        let auth = self.bearer();
        let auth_str = auth.as_ref().ok().and_then(|a| a.as_deref());
        let mut plan = self.plan.load_full();
        let previous_plan = plan.clone();
        let due = !self.config.rules.is_empty()
            && self
                .last_relist
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_none_or(|t| t.elapsed() >= self.config.relist_interval);
        if due
            && auth.is_ok()
            && let Ok(p) = self.relist(auth_str).await
        {
            *self.last_relist.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
            if p != *plan {
                tracing::info!(
                    served = p.served.len(),
                    queries = p.queries.len(),
                    "rules discovered a new set of metrics"
                );
                plan = Arc::new(p);
            }
            report.relisted = true;
        }
        // Parts: a split query once per group of namespaces with tracked pods, any other once;
        // at most --prometheus-max-parallel-queries in flight, each with its own deadline.
        let groups: Vec<Arc<[String]>> =
            namespace_groups(self.store.tracked_namespaces(), self.config.parts)
                .into_iter()
                .map(Arc::from)
                .collect();
        let parts: Vec<(usize, Group)> = plan
            .queries
            .iter()
            .enumerate()
            .flat_map(|(i, spec)| {
                let split: Vec<(usize, Group)> = if spec.split && !groups.is_empty() {
                    groups.iter().map(|g| (i, Some(g.clone()))).collect()
                } else {
                    vec![(i, None)]
                };
                split
            })
            .collect();
        let auth = &auth;
        let plan_ref = &plan;
        // At start-up (no query has had an outcome yet) each answer is published as it arrives,
        // so that the namespaces of the parts that answered have values before the slowest part
        // answers or times out.
        let starting = self
            .store
            .snapshot()
            .is_none_or(|s| s.outcomes.iter().all(|o| matches!(o, Outcome::Pending)));
        let all_parts = if starting { parts.clone() } else { Vec::new() };
        let mut stream = futures::stream::iter(parts)
            .map(|(i, ns)| async move {
                let spec = &plan_ref.queries[i];
                let promql = ns
                    .as_deref()
                    .map_or_else(|| spec.promql.clone(), |group| spec.promql_in(group));
                let started = Instant::now();
                let result = match &auth {
                    Ok(_) => self.query(&promql, auth_str).await,
                    Err(e) => Err(e.clone()),
                };
                (i, ns, promql, result, started.elapsed())
            })
            .buffer_unordered(self.config.max_parallel);
        let mut answers: Vec<Answer> = Vec::new();
        while let Some(answer) = stream.next().await {
            answers.push(answer);
            if starting && answers.len() < all_parts.len() {
                let now = crate::clock::Moment::now();
                self.store
                    .publish(first_answers(&plan, &all_parts, &answers, now));
            }
        }
        drop(stream);
        let now = crate::clock::Moment::now();
        let mut tables: Vec<Option<Table>> = vec![None; plan.queries.len()];
        let mut failed: Vec<Vec<(Group, Arc<str>)>> = vec![Vec::new(); plan.queries.len()];
        for (i, ns, promql, result, elapsed) in answers {
            report.queries += 1;
            let secs = elapsed.as_secs_f64();
            match result {
                Ok(samples) => {
                    self.telemetry
                        .observe_prometheus_query("query", QueryOutcome::Success, secs);
                    self.telemetry.prometheus_samples(samples.len());
                    let dropped = merge_part(&mut tables[i], &plan.queries[i], samples, &ns, now);
                    self.telemetry
                        .prometheus_series_dropped(dropped.unlabelled, dropped.unservable);
                    self.note(&promql, None);
                }
                Err(e) => {
                    report.failed += 1;
                    self.telemetry
                        .observe_prometheus_query("query", e.outcome(), secs);
                    failed[i].push((ns, Arc::from(e.to_string())));
                    self.note(&promql, Some(e));
                }
            }
        }
        // The last round's tables, for the last good values of the parts that failed: only where
        // this round runs the same query at the same index.
        // At start-up what is published is this round's own early answers: nothing to carry.
        let previous = if starting {
            None
        } else {
            self.store.snapshot()
        };
        let last_good = |i: usize| -> Option<Arc<Table>> {
            if previous_plan.queries.get(i) != plan.queries.get(i) {
                return None;
            }
            match previous.as_ref()?.outcomes.get(i)? {
                Outcome::Ready(t) => Some(t.clone()),
                _ => None,
            }
        };
        let max_age = self.store.max_age();
        let mut outcomes = Vec::with_capacity(plan.queries.len());
        for (i, failures) in failed.into_iter().enumerate() {
            let answered = tables[i].is_some();
            let mut table = tables[i].take().unwrap_or_default();
            if failures.is_empty() {
                outcomes.push(Outcome::Ready(Arc::new(table)));
                continue;
            }
            let last = last_good(i);
            for (group, why) in &failures {
                for ns in members(group) {
                    let oldest = last
                        .as_deref()
                        .and_then(|last| carry_last_good(&mut table, last, &ns, now, max_age));
                    table.failing.insert(
                        ns,
                        PartFailure {
                            why: why.clone(),
                            oldest,
                        },
                    );
                }
            }
            if !answered && table.objects.is_empty() {
                // Every part failed and nothing good is left: the whole metric answers 500.
                outcomes.push(Outcome::Failed(failures[0].1.clone()));
            } else {
                outcomes.push(Outcome::Ready(Arc::new(table)));
            }
        }
        self.store.publish(plan.snapshot(outcomes));
        self.plan.store(plan);
        self.store.round_finished(crate::clock::Moment::now());
        report
    }

    fn note(&self, promql: &str, error: Option<QueryError>) {
        let message = error.as_ref().map(ToString::to_string);
        let mut last = self.last_error.lock().unwrap_or_else(|e| e.into_inner());
        let previous = last.insert(promql.to_owned(), message.clone());
        drop(last);
        // The same message is the same failure: only a change is logged.
        if previous.as_ref() == Some(&message) {
            return;
        }
        match error {
            Some(e) => tracing::warn!(
                query = %promql, error = %e,
                "prometheus query failed; its values are served until --max-age, then answer 500 until it succeeds"
            ),
            None if previous.is_some() => {
                tracing::info!(query = %promql, "prometheus query succeeds again");
            }
            None => {}
        }
    }

    /// Runs rounds every interval until `shutdown` resolves, marking `health` like the scrape
    /// loop does (ticking at the start of a round, collected after the first).
    pub async fn run(&self, health: Arc<Health>, shutdown: impl std::future::Future<Output = ()>) {
        let store = &self.store;
        health::every_interval(
            self.config.interval,
            &health,
            || store.is_synced(),
            shutdown,
            || async {
                let report = self.tick().await;
                tracing::debug!(?report, "prometheus round");
            },
        )
        .await;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::clock::Moment;
    use crate::selector::Selector;
    use crate::store::{
        MetricCatalog, MetricMapping, Objects, PodKey, PodTarget, ReadError, Store,
    };
    use std::sync::atomic::{AtomicBool, Ordering};

    /// A stand-in for Prometheus's `/api/v1/query`: one pod of value 3 per namespace the query
    /// asks for (`fast`, `slow`, or both when it names none), value and freshness parts. While
    /// `stall` is set, any query that covers `slow` never answers: a slow part of Prometheus.
    async fn fake_prometheus(stall: Arc<AtomicBool>) -> String {
        use axum::extract::State;
        async fn query(
            State(stall): State<Arc<AtomicBool>>,
            body: String,
        ) -> axum::Json<serde_json::Value> {
            let q = form_urlencoded::parse(body.as_bytes())
                .find(|(k, _)| k == "query")
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default();
            let named: Vec<&str> = ["fast", "slow"]
                .into_iter()
                .filter(|ns| q.contains(&format!("namespace=\"{ns}\"")))
                .collect();
            let namespaces = if named.is_empty() {
                vec!["fast", "slow"]
            } else {
                named
            };
            if namespaces.contains(&"slow") && stall.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_secs(30)).await;
            }
            let now = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_secs_f64();
            let series = |ns: &str, part: &str, value: String| {
                serde_json::json!({
                    "metric": {"namespace": ns, "pod": format!("{ns}-0"), plan::PART_LABEL: part},
                    "value": [now, value],
                })
            };
            let result: Vec<serde_json::Value> = namespaces
                .iter()
                .flat_map(|ns| {
                    [
                        series(ns, "value", "3".into()),
                        series(ns, "time", format!("{now}")),
                    ]
                })
                .collect();
            axum::Json(serde_json::json!({"status": "success", "data": {
                "resultType": "vector", "result": result,
            }}))
        }
        let app = axum::Router::new()
            .route("/api/v1/query", axum::routing::post(query))
            .with_state(stall);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}")
    }

    fn source(url: String, store: Arc<Store>, parts: usize) -> Source {
        source_with_timeout(url, store, parts, Duration::from_millis(300))
    }

    fn source_with_timeout(
        url: String,
        store: Arc<Store>,
        parts: usize,
        timeout: Duration,
    ) -> Source {
        crate::tls::install_provider();
        let config = PrometheusConfig {
            url,
            bearer_token_file: None,
            ca_file: None,
            client_cert: None,
            timeout,
            interval: Duration::from_secs(1),
            query: template::Template::parse(crate::config::DEFAULT_PROMETHEUS_QUERY).unwrap(),
            namespace_label: "namespace".into(),
            pod_label: "pod".into(),
            rules: Vec::new(),
            relist_interval: Duration::from_secs(60),
            parts,
            max_parallel: 4,
        };
        let mappings = store.catalog().mappings().to_vec();
        Source::new(config, &mappings, store, Arc::new(Telemetry::new())).unwrap()
    }

    fn store() -> Arc<Store> {
        let store = Store::new(
            MetricCatalog::new(vec![MetricMapping {
                served: "websocket_connections".into(),
                family: "websocket_connections_active".into(),
                rate: None,
                filter: None,
            }]),
            Duration::from_secs(60),
        );
        store.replace_all(
            ["fast", "slow"]
                .into_iter()
                .map(|ns| PodTarget {
                    key: PodKey {
                        namespace: ns.into(),
                        name: format!("{ns}-0"),
                    },
                    uid: ns.into(),
                    labels: Default::default(),
                    url: "http://127.0.0.1:1/metrics".into(),
                    ready: true,
                })
                .collect(),
        );
        store.mark_synced();
        Arc::new(store)
    }

    fn read(store: &Store, ns: &str) -> Result<Vec<i64>, ReadError> {
        store
            .read(
                rules::pods(),
                "websocket_connections",
                Objects::All {
                    namespace: ns,
                    selector: &Selector::everything(),
                },
                &Selector::everything(),
                Moment::now(),
            )
            .map(|items| items.iter().map(|i| i.milli).collect())
    }

    #[test]
    fn namespaces_are_spread_over_the_parts_by_pods() {
        let ns = |v: &[(&str, usize)]| -> Vec<(String, usize)> {
            v.iter().map(|(n, c)| ((*n).to_owned(), *c)).collect()
        };
        assert!(
            namespace_groups(ns(&[("a", 1)]), 1).is_empty(),
            "one part: unsplit"
        );
        assert!(
            namespace_groups(Vec::new(), 8).is_empty(),
            "no namespace: unsplit"
        );
        // Fewer namespaces than parts: one each.
        assert_eq!(
            namespace_groups(ns(&[("a", 1), ("b", 2)]), 8),
            [["b"], ["a"]]
        );
        // The big one alone, the small ones together.
        let groups = namespace_groups(ns(&[("big", 100), ("s1", 30), ("s2", 30), ("s3", 30)]), 2);
        assert_eq!(groups, [vec!["big"], vec!["s1", "s2", "s3"]]);
    }

    #[tokio::test]
    async fn a_stalled_namespace_fails_alone_and_keeps_its_last_good_values() {
        let stall = Arc::new(AtomicBool::new(true));
        let store = store();
        let source = source(fake_prometheus(stall.clone()).await, store.clone(), 2);
        // First round: `slow` times out and has no good answer yet; `fast` is served.
        let report = source.tick().await;
        assert_eq!((report.queries, report.failed), (2, 1));
        assert_eq!(read(&store, "fast").unwrap(), [3000]);
        assert!(matches!(
            read(&store, "slow"),
            Err(ReadError::QueryFailed { .. })
        ));
        // It answers once, then stalls again: its last good value is served (fresh).
        stall.store(false, Ordering::SeqCst);
        source.tick().await;
        assert_eq!(read(&store, "slow").unwrap(), [3000]);
        stall.store(true, Ordering::SeqCst);
        let report = source.tick().await;
        assert_eq!(report.failed, 1);
        assert_eq!(read(&store, "slow").unwrap(), [3000]);
        assert_eq!(read(&store, "fast").unwrap(), [3000]);
    }

    /// At start-up the part that answers is served before the stalled one times out; the
    /// stalled one's namespace is a 500 saying why, never a zero.
    #[tokio::test]
    async fn at_start_up_the_first_part_to_answer_is_served_before_the_round_ends() {
        let stall = Arc::new(AtomicBool::new(true));
        let store = store();
        let url = fake_prometheus(stall.clone()).await;
        let source = Arc::new(source_with_timeout(
            url,
            store.clone(),
            2,
            Duration::from_secs(20),
        ));
        assert!(
            matches!(read(&store, "fast"), Err(ReadError::NotYetQueried { .. })),
            "nothing queried before the first round"
        );
        let round = tokio::spawn({
            let source = source.clone();
            async move { source.tick().await }
        });
        let deadline = Instant::now() + Duration::from_secs(15);
        while read(&store, "fast").is_err() {
            assert!(
                Instant::now() < deadline,
                "fast never served during the first round"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!round.is_finished(), "served before the round ended");
        assert_eq!(read(&store, "fast").unwrap(), [3000]);
        match read(&store, "slow") {
            Err(ReadError::QueryFailed { why, .. }) => {
                assert_eq!(&*why, NOT_ANSWERED_YET);
            }
            other => panic!("slow before its answer: {other:?}"),
        }
        // The stalled part answers after all: the round ends with both.
        stall.store(false, Ordering::SeqCst);
        round.abort();
        let report = source.tick().await;
        assert_eq!((report.queries, report.failed), (2, 0));
        assert_eq!(read(&store, "slow").unwrap(), [3000]);
        assert_eq!(read(&store, "fast").unwrap(), [3000]);
    }

    /// The same stall with one cluster-wide query: every namespace fails with it.
    #[tokio::test]
    async fn unsplit_a_stall_anywhere_fails_every_namespace() {
        let stall = Arc::new(AtomicBool::new(false));
        let store = store();
        let source = source(fake_prometheus(stall.clone()).await, store.clone(), 1);
        let report = source.tick().await;
        assert_eq!((report.queries, report.failed), (1, 0));
        assert_eq!(read(&store, "fast").unwrap(), [3000]);
        assert_eq!(read(&store, "slow").unwrap(), [3000]);
        stall.store(true, Ordering::SeqCst);
        let report = source.tick().await;
        assert_eq!((report.queries, report.failed), (1, 1));
        // Last good values, both namespaces; they would turn 500 together past --max-age.
        assert_eq!(read(&store, "fast").unwrap(), [3000]);
        let Some(snapshot) = store.snapshot() else {
            panic!("published");
        };
        let Outcome::Ready(table) = &snapshot.outcomes[0] else {
            panic!("last good values kept");
        };
        assert!(table.failing.contains_key(""), "{:?}", table.failing);
    }
}
