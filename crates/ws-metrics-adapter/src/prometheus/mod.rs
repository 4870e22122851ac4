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

use crate::health::{self, Health};
use crate::store::Store;
use crate::store::read::{Outcome, Snapshot};
use crate::telemetry::{QueryOutcome, Telemetry};
use plan::{Plan, QuerySpec};

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
        let auth = &auth;
        let runs = plan.queries.iter().map(|spec| async move {
            let started = Instant::now();
            let result = match &auth {
                Ok(_) => self.query(&spec.promql, auth_str).await,
                Err(e) => Err(e.clone()),
            };
            (spec, result, started.elapsed())
        });
        let answers = futures::future::join_all(runs).await;
        let mut outcomes = Vec::with_capacity(answers.len());
        for (spec, result, elapsed) in answers {
            report.queries += 1;
            let secs = elapsed.as_secs_f64();
            match result {
                Ok(samples) => {
                    self.telemetry
                        .observe_prometheus_query("query", QueryOutcome::Success, secs);
                    let (table, dropped) =
                        plan::build_table(spec, samples, crate::clock::Moment::now());
                    self.telemetry
                        .prometheus_series_dropped(dropped.unlabelled, dropped.unservable);
                    self.note(spec, None);
                    outcomes.push(Outcome::Ready(Arc::new(table)));
                }
                Err(e) => {
                    report.failed += 1;
                    self.telemetry
                        .observe_prometheus_query("query", e.outcome(), secs);
                    let why: Arc<str> = Arc::from(e.to_string());
                    self.note(spec, Some(e));
                    outcomes.push(Outcome::Failed(why));
                }
            }
        }
        self.store.publish(plan.snapshot(outcomes));
        self.plan.store(plan);
        self.store.round_finished(crate::clock::Moment::now());
        report
    }

    fn note(&self, spec: &QuerySpec, error: Option<QueryError>) {
        let message = error.as_ref().map(ToString::to_string);
        let mut last = self.last_error.lock().unwrap_or_else(|e| e.into_inner());
        let previous = last.insert(spec.promql.clone(), message.clone());
        drop(last);
        // The same message is the same failure: only a change is logged.
        if previous.as_ref() == Some(&message) {
            return;
        }
        match error {
            Some(e) => tracing::warn!(
                query = %spec.promql, error = %e,
                "prometheus query failed; its metrics answer 500 until it succeeds"
            ),
            None if previous.is_some() => {
                tracing::info!(query = %spec.promql, "prometheus query succeeds again");
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
