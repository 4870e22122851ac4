//! Collection: every `--scrape-interval`, scrape each tracked pod's metrics endpoint (bounded
//! concurrency, per-pod deadline, keep-alive reused), parse it, and record the wanted families in
//! the [`Store`]. A failed scrape records nothing, so the pod keeps its last good value until
//! `--max-age` and is then left out: it is never turned into a zero.
//!
//! Transports, picked by the URL's scheme: `http://` pods go through the lean HTTP/1.1 client of
//! `http1` (one idle socket per pod between rounds, a pooled read buffer per scrape in flight);
//! `https://` pods through hyper's pooled client with rustls. On the `http://` path a response
//! that is not HTTP/1.x, has broken framing or an oversized head counts as `unparseable` (hyper
//! reports those as `connect_error`); a connection that fails or ends early is a `connect_error`,
//! and so is a body delimited only by the connection's close that does not look whole (see
//! `body`: never a false zero or a cut number from a truncated body).

mod body;
mod error;
mod http1;

pub use error::{OUTCOME_LABELS, SUCCESS, ScrapeError, outcome_label};
pub use http1::ResponseError;
#[doc(hidden)]
pub use http1::{DecodedResponse, decode_response};

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::clock::{Moment, SampleTime};
use crate::config::CollectConfig;
use crate::exposition;
use crate::health::{self, Health};
use crate::store::{PodKey, Reading, ScrapeJob, Store, readings_from_samples};
use crate::telemetry::Telemetry;

/// A scrape's reading and the catalog its families are indexed by.
struct Parsed {
    reading: Reading,
    catalog: Arc<crate::store::MetricCatalog>,
}

/// Errors of building the collector.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The TLS client for `https://` pods could not be built (`--scrape-ca-file` unreadable or
    /// holding no usable certificate).
    #[error("scrape TLS client: {0}")]
    TlsClientUnusable(#[source] crate::tls::client::Error),
}

/// Result of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `Accept` of every scrape: the Prometheus text format first, then OpenMetrics.
const ACCEPT: &str =
    "text/plain;version=0.0.4;q=0.9,application/openmetrics-text;version=1.0.0;q=0.8,*/*;q=0.1";
/// `User-Agent` of every scrape.
const USER_AGENT: &str = concat!("ws-metrics-adapter/", env!("CARGO_PKG_VERSION"));

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// What one round did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoundReport {
    /// Pods scraped (attempted).
    pub attempted: usize,
    /// Scrapes recorded in the store.
    pub recorded: usize,
    /// Scrapes that failed, by `outcome` label ([`ScrapeError::metric_label`]).
    pub failed: HashMap<&'static str, usize>,
}

/// The scrape loop. Cheap to clone: clones share one state, which every scrape task of a round
/// holds.
#[derive(Clone)]
pub struct Collector {
    shared: Arc<Shared>,
}

/// What the scrapes of a round share.
struct Shared {
    store: Arc<Store>,
    telemetry: Arc<Telemetry>,
    config: CollectConfig,
    /// For `https://` pods.
    client: HttpsClient,
    /// For `http://` pods.
    http1: http1::Client,
    /// Last `outcome` label per pod, to log transitions rather than every failure.
    last_outcome: Mutex<HashMap<PodKey, &'static str>>,
}

impl Collector {
    /// Builds the HTTP clients (keep-alive, connect deadline) and the collector.
    ///
    /// # Errors
    /// [`Error::TlsClientUnusable`] when `--scrape-ca-file` cannot be used.
    pub fn new(
        store: Arc<Store>,
        telemetry: Arc<Telemetry>,
        config: CollectConfig,
    ) -> Result<Self> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(config.timeout));
        http.set_nodelay(true);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(
                crate::tls::client::config(crate::tls::client::ClientTls {
                    ca_file: config.ca_file.as_deref(),
                    identity: None,
                })
                .map_err(Error::TlsClientUnusable)?,
            )
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            // One request per pod per round: one idle connection per pod is all we reuse.
            .pool_max_idle_per_host(1)
            .pool_idle_timeout(Duration::from_secs(90).max(config.interval * 3))
            .build(connector);
        Ok(Self {
            shared: Arc::new(Shared {
                store,
                telemetry,
                http1: http1::Client::new(config.max_body_bytes, config.concurrency),
                config,
                client,
                last_outcome: Mutex::new(HashMap::new()),
            }),
        })
    }
}

impl Shared {
    async fn fetch(&self, url: &Arc<str>) -> std::result::Result<Parsed, ScrapeError> {
        if http1::is_plain_http(url) {
            let body = self.http1.get(url).await?;
            self.reading(body.bytes(), Moment::now())
        } else {
            let body = self.fetch_hyper(url).await?;
            self.reading(&body, Moment::now())
        }
    }

    /// The body of `url` through hyper (used for `https://`).
    async fn fetch_hyper(&self, url: &str) -> std::result::Result<Bytes, ScrapeError> {
        let req = http::Request::get(url)
            .header(http::header::ACCEPT, ACCEPT)
            .header(http::header::USER_AGENT, USER_AGENT)
            .body(Empty::<Bytes>::new())
            .map_err(ScrapeError::InvalidRequest)?;
        let resp = self
            .client
            .request(req)
            .await
            .map_err(ScrapeError::RequestFailed)?;
        if !resp.status().is_success() {
            return Err(ScrapeError::BadStatus {
                status: resp.status().as_u16(),
            });
        }
        // hyper fails a short `Content-Length` body or a chunked one without its last chunk, and
        // a close-delimited one on a reset or a TCP close without TLS `close_notify`; a
        // close-delimited body that ended cleanly still has to look whole (see `body`).
        // 204 and 304 have no body at all (RFC 9110 §15.3.5, §15.4.5): nothing to cut.
        let bodyless = matches!(resp.status().as_u16(), 204 | 304);
        let close_delimited = !bodyless && body::is_close_delimited(resp.headers());
        let openmetrics = resp
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|ct| body::is_openmetrics(ct.as_bytes()));
        let bytes = Limited::new(resp.into_body(), self.config.max_body_bytes)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    ScrapeError::BodyTooLarge {
                        limit: self.config.max_body_bytes,
                    }
                } else {
                    ScrapeError::BodyFailed(e)
                }
            })?
            .to_bytes();
        if close_delimited && !body::close_delimited_body_is_complete(&bytes, openmetrics) {
            return Err(ScrapeError::BodyCut);
        }
        Ok(bytes)
    }

    /// The reading in a scrape's body, read at `at`. Exposition timestamps on the kept samples
    /// are honoured: the reading is as old as its oldest stamped sample.
    fn reading(&self, body: &[u8], at: Moment) -> std::result::Result<Parsed, ScrapeError> {
        let text = std::str::from_utf8(body).map_err(ScrapeError::NotUtf8)?;
        // One catalog for the whole parse: a reload meanwhile is sorted out by `record_parsed`.
        let catalog = self.store.catalog();
        let families = catalog.families();
        // One pass validates the body, takes the wanted samples and notes which wanted
        // families a `# TYPE` line declares: one declared with no samples is served as 0, one
        // never mentioned as absent.
        let selected =
            exposition::parse_selected_declared(text, |name| families.iter().any(|f| f == name))
                .map_err(ScrapeError::Unparseable)?;
        let declared = |family: &str| selected.declared.contains(&family);
        let families = readings_from_samples(&catalog, &selected.samples, declared)
            .map_err(ScrapeError::NotServable)?;
        // Families whose series carry timestamps are aged by them (`FamilyReading::stamped_ms`).
        let time = SampleTime::read_at(at);
        Ok(Parsed {
            reading: Reading { time, families },
            catalog,
        })
    }

    /// Scrapes one pod and records its reading; counts the outcome.
    async fn scrape(&self, job: &ScrapeJob) -> std::result::Result<(), ScrapeError> {
        let started = Instant::now();
        let result = match tokio::time::timeout(self.config.timeout, self.fetch(&job.url)).await {
            Err(_) => Err(ScrapeError::Timeout(self.config.timeout)),
            Ok(Err(error)) => Err(error),
            Ok(Ok(parsed)) => {
                if self
                    .store
                    .record_parsed(&job.key, &job.uid, parsed.reading, &parsed.catalog)
                {
                    Ok(())
                } else {
                    Err(ScrapeError::Discarded)
                }
            }
        };
        self.telemetry
            .observe_scrape(outcome_label(&result), started.elapsed().as_secs_f64());
        result
    }

    /// Logs the cause once, when a pod's outcome changes (not on every failed round).
    fn note_outcome(&self, job: &ScrapeJob, result: &std::result::Result<(), ScrapeError>) {
        let label = outcome_label(result);
        let mut last = self.last_outcome.lock().unwrap_or_else(|e| e.into_inner());
        // Every pod, every round: clone the key only for a pod seen for the first time.
        let previous = match last.get_mut(&job.key) {
            Some(slot) => Some(std::mem::replace(slot, label)),
            None => last.insert(job.key.clone(), label),
        };
        drop(last);
        if previous == Some(label) {
            return;
        }
        let (ns, pod, url) = (&job.key.namespace, &job.key.name, &*job.url);
        match result {
            Ok(()) if previous.is_some() => {
                tracing::info!(namespace = %ns, pod = %pod, url, "scrapes succeed again");
            }
            Ok(()) => {}
            Err(error) if !error.is_warning() => {
                tracing::debug!(namespace = %ns, pod = %pod, url, error = %error, "scrape discarded");
            }
            Err(error) => tracing::warn!(
                namespace = %ns, pod = %pod, url, outcome = label, error = %error,
                "scrape failed; the last good value is served until --max-age, then the pod is left out"
            ),
        }
    }

    /// Scrapes one pod, records its reading, logs a change of outcome; the failure's label.
    async fn scrape_and_note(&self, job: ScrapeJob) -> Option<&'static str> {
        let result = self.scrape(&job).await;
        self.note_outcome(&job, &result);
        result.err().map(|error| error.metric_label())
    }
}

impl Collector {
    /// Scrapes every tracked pod once and records the good readings. Slow pods hold only their
    /// own slot: each scrape has its own deadline and results are recorded as they arrive.
    ///
    /// Each scrape is a task of its own, at most `--scrape-concurrency` at a time, so the
    /// runtime's workers share a round: parsing 10,000 bodies a second is more than one core
    /// does comfortably, and one task polling every scrape would bound a round by one core.
    pub async fn tick(&self) -> RoundReport {
        let this = &*self.shared;
        let started = Instant::now();
        let jobs = this.store.scrape_jobs();
        let mut report = RoundReport {
            attempted: jobs.len(),
            ..RoundReport::default()
        };
        let live: HashSet<PodKey> = jobs.iter().map(|j| j.key.clone()).collect();
        let live_urls: HashSet<Arc<str>> = jobs.iter().map(|j| j.url.clone()).collect();
        let concurrency = this.config.concurrency.max(1);
        let mut pending = jobs.into_iter();
        // Dropped (the round cancelled at shutdown): its scrapes are aborted with it.
        let mut running = tokio::task::JoinSet::new();
        loop {
            while running.len() < concurrency {
                let Some(job) = pending.next() else { break };
                let shared = self.shared.clone();
                running.spawn(async move { shared.scrape_and_note(job).await });
            }
            match running.join_next().await {
                Some(Ok(None)) => report.recorded += 1,
                Some(Ok(Some(failed))) => *report.failed.entry(failed).or_default() += 1,
                // A scrape that panicked: as before the tasks, the panic ends the round.
                Some(Err(error)) if error.is_panic() => {
                    std::panic::resume_unwind(error.into_panic())
                }
                Some(Err(_cancelled)) => {}
                None => break,
            }
        }
        // Forget pods that are gone, so the outcome map does not grow without bound.
        this.last_outcome
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|k, _| live.contains(k));
        this.http1.retain(&live_urls);
        let end = Moment::now();
        this.store.round_finished(end);
        let elapsed = started.elapsed();
        let (fresh, stale) = this.store.freshness(end.mono);
        this.telemetry.observe_round(
            elapsed.as_secs_f64(),
            elapsed > this.config.interval,
            end.wall
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs_f64(),
            report.attempted,
            fresh,
            stale,
        );
        report
    }

    /// Runs [`Collector::run`] on a runtime of its own with `threads` workers, apart from the
    /// runtime that serves the API, and returns a handle that resolves when it has stopped.
    ///
    /// Why: a round readies hundreds of scrapes at once. On a shared runtime a read woken by its
    /// socket queues behind them on the worker (p99 5.9 ms at 10,000 pods while the median is
    /// 0.8 ms); on threads of its own, the kernel's scheduler lets the sleeping API worker preempt
    /// the busy scrape thread as soon as the read arrives.
    pub fn run_on_own_threads(
        self,
        threads: usize,
        health: Arc<Health>,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<tokio::task::JoinHandle<()>> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("collect")
            .enable_all()
            .build()?;
        // The rounds are a task on the workers, so a round's spawns and joins stay on the
        // worker's own queue; the caller's blocking-pool thread only waits for that task, which
        // lets the caller await the collection as it awaits its other tasks.
        let rounds = runtime.spawn(async move { self.run(health, shutdown).await });
        Ok(tokio::task::spawn_blocking(move || {
            if let Err(error) = runtime.block_on(rounds)
                && error.is_panic()
            {
                std::panic::resume_unwind(error.into_panic());
            }
        }))
    }

    /// Runs rounds every interval until `shutdown` resolves. Marks `health` as ticking at the
    /// start of each round and collected after the first.
    pub async fn run(&self, health: Arc<Health>, shutdown: impl std::future::Future<Output = ()>) {
        health::every_interval(
            self.shared.config.interval,
            &health,
            || self.shared.store.is_synced(),
            shutdown,
            || async {
                let report = self.tick().await;
                tracing::debug!(?report, "collection round");
            },
        )
        .await;
    }
}
