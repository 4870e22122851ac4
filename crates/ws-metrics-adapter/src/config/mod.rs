//! Command-line flags (named after the Kubernetes apiserver's, each with a
//! `WS_METRICS_ADAPTER_*` environment fallback) and their validation into a [`Config`], reporting
//! every error at once.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::store::MetricMapping;
pub use crate::telemetry::LogFormat;

pub mod metrics_file;
pub mod value;
pub use value::{from_yaml, null_as_default, parse_duration};

/// Default served metric and the family it sums.
pub const DEFAULT_METRIC: &str = "websocket_connections=websocket_connections_active";

/// Default annotation prefix for opting pods in.
pub const DEFAULT_ANNOTATION_PREFIX: &str = "ws-metrics-adapter.io";

/// Top-level command line.
#[derive(Debug, Parser)]
#[command(name = "ws-metrics-adapter", version, about, long_about = None)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve custom.metrics.k8s.io from live per-pod connection counts.
    Serve(Box<ServeArgs>),
}

/// Flags of `ws-metrics-adapter serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Port of the HTTPS API listener.
    #[arg(long, env = "WS_METRICS_ADAPTER_SECURE_PORT", default_value_t = 6443)]
    pub secure_port: u16,

    /// Address of the HTTPS API listener [default: 0.0.0.0; 127.0.0.1 with --static-pods].
    #[arg(long, env = "WS_METRICS_ADAPTER_BIND_ADDRESS")]
    pub bind_address: Option<IpAddr>,

    /// PEM serving certificate (chain). Re-read when it changes.
    #[arg(long, env = "WS_METRICS_ADAPTER_TLS_CERT_FILE")]
    pub tls_cert_file: Option<PathBuf>,

    /// PEM private key of the serving certificate. Re-read when it changes.
    #[arg(long, env = "WS_METRICS_ADAPTER_TLS_PRIVATE_KEY_FILE")]
    pub tls_private_key_file: Option<PathBuf>,

    /// Directory for a generated self-signed CA and serving certificate, used when no
    /// --tls-cert-file is given (existing files there are reused).
    #[arg(
        long,
        env = "WS_METRICS_ADAPTER_CERT_DIR",
        default_value = "/tmp/ws-metrics-adapter/certs"
    )]
    pub cert_dir: PathBuf,

    /// Plain-HTTP listener for /livez, /readyz and the adapter's own /metrics.
    #[arg(
        long,
        env = "WS_METRICS_ADAPTER_METRICS_BIND_ADDRESS",
        default_value = "0.0.0.0:8080"
    )]
    pub metrics_bind_address: SocketAddr,

    /// Kubeconfig to reach the cluster (default: in-cluster config, then $KUBECONFIG, then
    /// ~/.kube/config).
    #[arg(long, env = "WS_METRICS_ADAPTER_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,

    /// Run without a cluster: the pods to scrape come from this YAML file
    /// (`pods: [{namespace, name, labels, metricsUrl}]`), re-read when it changes.
    #[arg(long, env = "WS_METRICS_ADAPTER_STATIC_PODS")]
    pub static_pods: Option<PathBuf>,

    /// How often every pod is scraped (e.g. 500ms, 1s).
    #[arg(long, env = "WS_METRICS_ADAPTER_SCRAPE_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub scrape_interval: Duration,

    /// Deadline of one pod's scrape, connect to last byte; must not exceed --scrape-interval
    /// [default: 80% of --scrape-interval, so 800ms at 1s].
    #[arg(long, env = "WS_METRICS_ADAPTER_SCRAPE_TIMEOUT", value_parser = parse_duration)]
    pub scrape_timeout: Option<Duration>,

    /// Age after which a pod's last good value is no longer served [default: 3 ×
    /// --scrape-interval; with --source=prometheus, 60s or 2 × --prometheus-interval if longer].
    #[arg(long, env = "WS_METRICS_ADAPTER_MAX_AGE", value_parser = parse_duration)]
    pub max_age: Option<Duration>,

    /// Pods scraped at the same time at most.
    #[arg(
        long,
        env = "WS_METRICS_ADAPTER_SCRAPE_CONCURRENCY",
        default_value_t = 256
    )]
    pub scrape_concurrency: usize,

    /// Threads the scrapes run on, apart from the threads that serve the API, so that a round's
    /// burst of scrapes does not queue the reads behind it. One thread keeps up with about 25,000
    /// pods at a 1 s interval (10,000 cost 0.3 core); raise it beyond that.
    #[arg(long, env = "WS_METRICS_ADAPTER_SCRAPE_THREADS", default_value_t = 1)]
    pub scrape_threads: usize,

    /// Largest metrics body read from a pod; a larger one fails that scrape. Unit: bytes.
    #[arg(long, env = "WS_METRICS_ADAPTER_SCRAPE_MAX_BODY_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub scrape_max_body_bytes: usize,

    /// CA bundle (PEM) that pods scraped over https must chain to [default: the webpki roots].
    #[arg(long, env = "WS_METRICS_ADAPTER_SCRAPE_CA_FILE")]
    pub scrape_ca_file: Option<PathBuf>,

    /// A served metric and the exact Prometheus family summed for it, as SERVED=FAMILY, or the
    /// per-second rate of a counter family over the last WINDOW of scrapes, as
    /// SERVED=rate(FAMILY[WINDOW]) (e.g. messages_per_second=rate(websocket_messages_received_total[30s])).
    /// Repeatable; replaces the default websocket_connections=websocket_connections_active.
    #[arg(
        long = "metric",
        env = "WS_METRICS_ADAPTER_METRIC",
        value_delimiter = ','
    )]
    pub metrics: Vec<String>,

    /// The served metrics from a YAML file instead of --metric: `metrics: [{name, family,
    /// rate, seriesSelector}, …]`, or a ConfigMap holding that under `data.metrics.yaml`.
    /// Re-read every second while running; a bad new file keeps the previous metrics.
    #[arg(
        long,
        env = "WS_METRICS_ADAPTER_METRICS_CONFIG",
        conflicts_with = "metrics"
    )]
    pub metrics_config: Option<PathBuf>,

    /// Prefix of the pod annotations that opt a pod in (`<prefix>/scrape: "true"`, `/port`,
    /// `/path`, `/scheme`).
    #[arg(long, env = "WS_METRICS_ADAPTER_ANNOTATION_PREFIX", default_value = DEFAULT_ANNOTATION_PREFIX)]
    pub annotation_prefix: String,

    /// Serve the API in cluster mode WITHOUT authenticating or authorizing callers (turns the
    /// delegated authentication below off). Anyone who can reach --secure-port can read every
    /// metric.
    #[arg(long, env = "WS_METRICS_ADAPTER_INSECURE_ALLOW_UNAUTHENTICATED")]
    pub insecure_allow_unauthenticated: bool,

    /// Delegated authentication and authorization (cluster mode).
    #[command(flatten)]
    pub auth: crate::auth::flags::AuthArgs,

    /// Self-managed serving CA (cluster mode).
    #[command(flatten)]
    pub serving_ca: crate::server::serving_ca::ServingCaArgs,

    /// Connection limits of both listeners.
    #[command(flatten)]
    pub listener: crate::server::ListenerArgs,

    /// The workload controller (rebalancing, deletion cost).
    #[command(flatten)]
    pub rebalance: crate::rebalance::RebalanceArgs,

    /// Time allowed for in-flight requests after SIGTERM.
    #[arg(long, env = "WS_METRICS_ADAPTER_SHUTDOWN_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// After SIGTERM, keep serving (and collecting) this long with /readyz failing before the
    /// listeners close, so that the Service's endpoints drop this replica before it stops
    /// answering (kube-apiserver's flag of the same name). The shipped Deployment sets 5s.
    #[arg(long, env = "WS_METRICS_ADAPTER_SHUTDOWN_DELAY_DURATION", default_value = "0s", value_parser = parse_duration)]
    pub shutdown_delay_duration: Duration,

    /// Also serve external.metrics.k8s.io/v1beta1: each served metric as a namespaced total over
    /// the series a labelSelector picks. Off by default: KEDA owns that group in most clusters,
    /// and a group has one APIService (overlays/external-metrics registers it).
    #[arg(long, env = "WS_METRICS_ADAPTER_SERVE_EXTERNAL_METRICS")]
    pub serve_external_metrics: bool,

    /// Log format.
    #[arg(long, env = "WS_METRICS_ADAPTER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Where values come from: `scrape` each pod's metrics endpoint, query an existing
    /// `prometheus` (--prometheus-url), or receive Prometheus `remote-write` from agents
    /// (--remote-write-bind-address).
    #[arg(long, env = "WS_METRICS_ADAPTER_SOURCE", value_enum, default_value_t = SourceKind::Scrape)]
    pub source: SourceKind,

    /// Base URL of the Prometheus HTTP API (with --source=prometheus), e.g.
    /// http://prometheus.monitoring:9090.
    #[arg(long, env = "WS_METRICS_ADAPTER_PROMETHEUS_URL")]
    pub prometheus_url: Option<String>,

    /// File holding a bearer token sent to Prometheus, re-read every round.
    #[arg(long, env = "WS_METRICS_ADAPTER_PROMETHEUS_BEARER_TOKEN_FILE")]
    pub prometheus_bearer_token_file: Option<PathBuf>,

    /// CA bundle (PEM) an https Prometheus must chain to [default: the webpki roots].
    #[arg(long, env = "WS_METRICS_ADAPTER_PROMETHEUS_CA_FILE")]
    pub prometheus_ca_file: Option<PathBuf>,

    /// Client certificate (PEM) for mutual TLS with Prometheus.
    #[arg(long, env = "WS_METRICS_ADAPTER_PROMETHEUS_CLIENT_CERT_FILE")]
    pub prometheus_client_cert_file: Option<PathBuf>,

    /// Private key (PEM) of --prometheus-client-cert-file.
    #[arg(long, env = "WS_METRICS_ADAPTER_PROMETHEUS_CLIENT_KEY_FILE")]
    pub prometheus_client_key_file: Option<PathBuf>,

    /// Deadline of one Prometheus query; must not exceed --prometheus-interval [default: 80% of
    /// --prometheus-interval, so 4s at 5s].
    #[arg(long, env = "WS_METRICS_ADAPTER_PROMETHEUS_TIMEOUT", value_parser = parse_duration)]
    pub prometheus_timeout: Option<Duration>,

    /// How often each served metric is queried (one query per metric and resource per interval,
    /// whatever the number of HPA reads).
    #[arg(long, env = "WS_METRICS_ADAPTER_PROMETHEUS_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub prometheus_interval: Duration,

    /// Query template for each --metric SERVED=FAMILY; <<.Series>> is FAMILY, <<.GroupBy>> the
    /// namespace and pod labels, <<.LabelMatchers>> requires both.
    #[arg(long, env = "WS_METRICS_ADAPTER_PROMETHEUS_QUERY", default_value = DEFAULT_PROMETHEUS_QUERY)]
    pub prometheus_query: String,

    /// Label of Prometheus series holding the pod's namespace.
    #[arg(
        long,
        env = "WS_METRICS_ADAPTER_PROMETHEUS_NAMESPACE_LABEL",
        default_value = "namespace"
    )]
    pub prometheus_namespace_label: String,

    /// Label of Prometheus series holding the pod's name.
    #[arg(
        long,
        env = "WS_METRICS_ADAPTER_PROMETHEUS_POD_LABEL",
        default_value = "pod"
    )]
    pub prometheus_pod_label: String,

    /// A prometheus-adapter configuration file whose `rules:` are served as well.
    #[arg(long, env = "WS_METRICS_ADAPTER_PROMETHEUS_RULES_FILE")]
    pub prometheus_rules_file: Option<PathBuf>,

    /// Listener of the remote-write receiver (with --source=remote-write): `POST /api/v1/write`.
    #[arg(
        long,
        env = "WS_METRICS_ADAPTER_REMOTE_WRITE_BIND_ADDRESS",
        default_value = "0.0.0.0:9201"
    )]
    pub remote_write_bind_address: SocketAddr,

    /// File holding the bearer token remote-write clients must send; re-read on every request,
    /// so a rotated token is in force at once.
    #[arg(long, env = "WS_METRICS_ADAPTER_REMOTE_WRITE_BEARER_TOKEN_FILE")]
    pub remote_write_bearer_token_file: Option<PathBuf>,

    /// CA bundle (PEM) that remote-write clients' certificates must chain to (mutual TLS; needs
    /// --remote-write-tls-cert-file).
    #[arg(long, env = "WS_METRICS_ADAPTER_REMOTE_WRITE_CLIENT_CA_FILE")]
    pub remote_write_client_ca_file: Option<PathBuf>,

    /// PEM serving certificate of the remote-write listener (TLS); re-read when it changes.
    /// Without it the listener speaks plain HTTP.
    #[arg(long, env = "WS_METRICS_ADAPTER_REMOTE_WRITE_TLS_CERT_FILE")]
    pub remote_write_tls_cert_file: Option<PathBuf>,

    /// PEM private key of --remote-write-tls-cert-file.
    #[arg(long, env = "WS_METRICS_ADAPTER_REMOTE_WRITE_TLS_PRIVATE_KEY_FILE")]
    pub remote_write_tls_private_key_file: Option<PathBuf>,

    /// Accept remote-write from anyone who can reach --remote-write-bind-address (no bearer
    /// token, no client certificate).
    #[arg(
        long,
        env = "WS_METRICS_ADAPTER_REMOTE_WRITE_INSECURE_ALLOW_UNAUTHENTICATED"
    )]
    pub remote_write_insecure_allow_unauthenticated: bool,

    /// Label of remote-written series holding the pod's namespace.
    #[arg(
        long,
        env = "WS_METRICS_ADAPTER_REMOTE_WRITE_NAMESPACE_LABEL",
        default_value = "namespace"
    )]
    pub remote_write_namespace_label: String,

    /// Label of remote-written series holding the pod's name.
    #[arg(
        long,
        env = "WS_METRICS_ADAPTER_REMOTE_WRITE_POD_LABEL",
        default_value = "pod"
    )]
    pub remote_write_pod_label: String,

    /// Largest compressed remote-write body; a larger one is 413. Unit: bytes.
    #[arg(long, env = "WS_METRICS_ADAPTER_REMOTE_WRITE_MAX_BODY_BYTES", default_value_t = crate::remote_write::DEFAULT_MAX_BODY_BYTES)]
    pub remote_write_max_body_bytes: usize,

    /// Largest decompressed remote-write body, read from the snappy header before
    /// decompressing; a larger one is 413. Unit: bytes.
    #[arg(long, env = "WS_METRICS_ADAPTER_REMOTE_WRITE_MAX_DECODED_BYTES", default_value_t = crate::remote_write::DEFAULT_MAX_DECODED_BYTES)]
    pub remote_write_max_decoded_bytes: usize,

    /// Most series in one remote-write request; more is 413.
    #[arg(long, env = "WS_METRICS_ADAPTER_REMOTE_WRITE_MAX_SERIES_PER_REQUEST", default_value_t = crate::remote_write::DEFAULT_MAX_SERIES_PER_REQUEST)]
    pub remote_write_max_series_per_request: usize,

    /// Most series of served families held at once; samples of further new series are dropped
    /// (counted as reason="series_limit").
    #[arg(long, env = "WS_METRICS_ADAPTER_REMOTE_WRITE_MAX_SERIES", default_value_t = crate::remote_write::DEFAULT_MAX_SERIES)]
    pub remote_write_max_series: usize,

    /// Remote-write requests handled at once; more are answered 429 with Retry-After.
    #[arg(long, env = "WS_METRICS_ADAPTER_REMOTE_WRITE_MAX_CONCURRENT_REQUESTS", default_value_t = crate::remote_write::DEFAULT_MAX_CONCURRENT_REQUESTS)]
    pub remote_write_max_concurrent_requests: usize,

    /// With --source=remote-write, /readyz turns ready at the first write, or this long after
    /// the pod inventory is known if no agent wrote by then [default: --max-age].
    #[arg(long, env = "WS_METRICS_ADAPTER_REMOTE_WRITE_READY_GRACE", value_parser = parse_duration)]
    pub remote_write_ready_grace: Option<Duration>,

    /// How often the rules' seriesQuery are listed again to find new metrics (prometheus-adapter's
    /// --metrics-relist-interval); also the window listed.
    #[arg(long, env = "WS_METRICS_ADAPTER_PROMETHEUS_RELIST_INTERVAL", default_value = "1m", value_parser = parse_duration)]
    pub prometheus_relist_interval: Duration,

    /// Split each --metric query into at most this many parts by namespace (1-256), the
    /// namespaces with tracked pods spread so that each part holds about as many pods: a slow or
    /// failing part costs only its namespaces, and no answer holds every pod of the cluster. 1 is
    /// one cluster-wide query. The rules' queries are never split.
    #[arg(
        long,
        env = "WS_METRICS_ADAPTER_PROMETHEUS_QUERY_PARTS",
        default_value_t = 8
    )]
    pub prometheus_query_parts: usize,

    /// At most this many Prometheus queries in flight at once (1-256).
    #[arg(
        long,
        env = "WS_METRICS_ADAPTER_PROMETHEUS_MAX_PARALLEL_QUERIES",
        default_value_t = 8
    )]
    pub prometheus_max_parallel_queries: usize,
}

/// Default query template of the Prometheus source: with the default labels it renders
/// `sum by (namespace,pod) (websocket_connections_active{namespace!="",pod!=""})`.
pub const DEFAULT_PROMETHEUS_QUERY: &str =
    "sum by (<<.GroupBy>>) (<<.Series>>{<<.LabelMatchers>>})";

/// Default `--max-age` with `--source=prometheus`: one missed 30 s Prometheus scrape (or two
/// --prometheus-interval when that is longer, see [`default_max_age`]).
pub const DEFAULT_PROMETHEUS_MAX_AGE: Duration = Duration::from_secs(60);

/// The default of a timeout flag given only its interval: 80% of it, so that a round's deadline
/// leaves a fifth of the period before the next round (800ms at the 1s --scrape-interval, 4s at
/// the 5s --prometheus-interval). Deriving it is what lets `--scrape-interval 500ms` stand alone:
/// a fixed default would exceed a short interval and be refused.
pub fn default_timeout(interval: Duration) -> Duration {
    interval * 4 / 5
}

/// The default `--max-age`: three scrape intervals (two missed scrapes); with
/// `--source=prometheus`, [`DEFAULT_PROMETHEUS_MAX_AGE`], or two --prometheus-interval when
/// that is longer (a fixed 60s would be refused for a `--prometheus-interval` above it).
pub fn default_max_age(source: SourceKind, scrape: Duration, prometheus: Duration) -> Duration {
    match source {
        SourceKind::Scrape => scrape * 3,
        SourceKind::Prometheus => DEFAULT_PROMETHEUS_MAX_AGE.max(prometheus * 2),
        SourceKind::RemoteWrite => DEFAULT_REMOTE_WRITE_MAX_AGE,
    }
}

/// Default `--max-age` with `--source=remote-write`: a sample's own timestamp older than this is
/// not served (two missed 15 s agent scrapes, plus the agents' send delay).
pub const DEFAULT_REMOTE_WRITE_MAX_AGE: Duration = Duration::from_secs(30);

/// Where values come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SourceKind {
    /// Scrape each pod's metrics endpoint every --scrape-interval.
    Scrape,
    /// Query an existing Prometheus every --prometheus-interval.
    Prometheus,
    /// Receive Prometheus remote-write from agents on --remote-write-bind-address.
    RemoteWrite,
}

/// Where values come from, validated.
#[derive(Debug, Clone)]
pub enum Source {
    /// Scrape the pods (settings in [`Config::collect`]).
    Scrape,
    /// Query Prometheus.
    Prometheus(Box<crate::prometheus::PrometheusConfig>),
    /// Receive remote-write.
    RemoteWrite(Box<crate::remote_write::RemoteWriteConfig>),
}

/// Where the pods to scrape come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodSource {
    /// A watch of pods in the cluster.
    Cluster {
        /// Explicit kubeconfig, else inferred.
        kubeconfig: Option<PathBuf>,
    },
    /// A YAML file (no cluster).
    Static {
        /// Path of the file.
        path: PathBuf,
    },
}

/// How the serving certificate is obtained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsSource {
    /// Files given by the operator, re-read when they change.
    Files {
        /// PEM certificate chain.
        cert: PathBuf,
        /// PEM private key.
        key: PathBuf,
    },
    /// Generated (or reused) under this directory.
    SelfSigned {
        /// Directory.
        dir: PathBuf,
    },
    /// Issued from a CA kept in a Secret, rotated, and published as the APIServices' caBundle.
    Managed(crate::server::serving_ca::ServingCa),
}

/// Collection settings.
#[derive(Debug, Clone)]
pub struct CollectConfig {
    /// Round period.
    pub interval: Duration,
    /// Per-pod deadline.
    pub timeout: Duration,
    /// Concurrent scrapes at most.
    pub concurrency: usize,
    /// Worker threads of the collection's own runtime.
    pub threads: usize,
    /// Body cap. Unit: bytes.
    pub max_body_bytes: usize,
    /// CA bundle for https pods.
    pub ca_file: Option<PathBuf>,
}

/// Validated configuration of `serve`.
#[derive(Debug, Clone)]
pub struct Config {
    /// HTTPS API address.
    pub secure_addr: SocketAddr,
    /// Health and metrics address.
    pub metrics_addr: SocketAddr,
    /// Serving certificate source.
    pub tls: TlsSource,
    /// Pod source.
    pub pods: PodSource,
    /// Collection settings.
    pub collect: CollectConfig,
    /// Age after which values are not served.
    pub max_age: Duration,
    /// Served metrics.
    pub metrics: Vec<MetricMapping>,
    /// Where `metrics` came from when it is a file that is re-read while running.
    pub metrics_config: Option<PathBuf>,
    /// Annotation prefix.
    pub annotation_prefix: String,
    /// SIGTERM grace.
    pub shutdown_grace: Duration,
    /// Serving on, not ready, between SIGTERM and closing the listeners.
    pub shutdown_delay: Duration,
    /// Connection limits of both listeners.
    pub limits: crate::server::Limits,
    /// Serve external.metrics.k8s.io too.
    pub serve_external_metrics: bool,
    /// Log format.
    pub log_format: LogFormat,
    /// Where values come from.
    pub source: Source,
    /// Delegated authentication and authorization; `None` in static mode and with
    /// --insecure-allow-unauthenticated.
    pub auth: Option<crate::auth::flags::AuthOptions>,
    /// The workload controller's settings; `None` without --rebalance.
    pub rebalance: Option<crate::rebalance::Settings>,
}

/// Every problem found in the flags, reported together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration:\n  - {}", .problems.join("\n  - "))]
pub struct ConfigError {
    /// One message per problem.
    pub problems: Vec<String>,
}

/// Checks the flags of `cmd` and of all its subcommands (clap's introspection), help and
/// version aside: each must have the environment fallback `PREFIX` + the long flag in upper
/// snake case (`--scrape-interval` → `WS_METRICS_ADAPTER_SCRAPE_INTERVAL`), lists must take
/// comma-separated values, and none may be short or positional (what [`load`] relies on to
/// drop a refused flag). Returns how many flags were checked and one message per failure; the
/// tests of `ws-metrics-adapter` and `ws-demo` assert it is empty, so a new flag without a
/// fallback fails them.
pub fn env_fallback_problems(cmd: &clap::Command, prefix: &str) -> (usize, Vec<String>) {
    fn walk(cmd: &clap::Command, path: &str, prefix: &str, out: &mut (usize, Vec<String>)) {
        for a in cmd.get_arguments() {
            if matches!(a.get_id().as_str(), "help" | "version") {
                continue;
            }
            out.0 += 1;
            let Some(long) = a.get_long() else {
                out.1
                    .push(format!("{path}: {} has no long flag", a.get_id()));
                continue;
            };
            let want = format!("{prefix}{}", long.replace('-', "_").to_uppercase());
            let got = a.get_env().map(|e| e.to_string_lossy().into_owned());
            if got.as_deref() != Some(want.as_str()) {
                out.1
                    .push(format!("{path} --{long}: env {got:?}, want {want}"));
            }
            if a.get_short().is_some() || a.is_positional() {
                out.1.push(format!("{path} --{long}: short or positional"));
            }
            if matches!(a.get_action(), clap::ArgAction::Append)
                && a.get_value_delimiter() != Some(',')
            {
                out.1
                    .push(format!("{path} --{long}: a list must split on ','"));
            }
        }
        for sub in cmd.get_subcommands() {
            walk(sub, &format!("{path} {}", sub.get_name()), prefix, out);
        }
    }
    let mut out = (0, Vec::new());
    walk(cmd, cmd.get_name(), prefix, &mut out);
    out
}

/// Why [`load`] returned no [`Config`].
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// What clap prints itself: `--help`, `--version`, or a usage error before any flag value
    /// (no subcommand). Print it with [`clap::Error::exit`].
    #[error("{0}")]
    Clap(clap::Error),
    /// Every bad flag or environment value, then every validation problem. Exit code 2.
    #[error(transparent)]
    Invalid(ConfigError),
}

/// Parses the command line and the `WS_METRICS_ADAPTER_*` environment, then validates, and
/// reports every problem at once: bad values of several flags or variables, unknown flags, and
/// the validation problems of what did parse.
///
/// clap stops at the first bad value, so each bad argument is dropped (its command-line
/// occurrences and its environment fallback) and clap run again, once per bad argument. This
/// keeps every flag typed in [`ServeArgs`], with clap's own value parsers and `--help`, instead
/// of a string-typed copy of every flag converted by hand. With a value dropped, its default
/// stands in, so validation problems that name a flag whose value was refused are left out:
/// they would judge the default, not what was given.
///
/// # Errors
/// [`LoadError`].
pub fn load<I, T>(argv: I) -> Result<Config, LoadError>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString>,
{
    let (cli, mut problems, refused) =
        parse_collecting(argv.into_iter().map(Into::into).collect())?;
    let Command::Serve(args) = cli.command;
    match args.validate() {
        Ok(config) if problems.is_empty() => return Ok(config),
        Ok(_) => {}
        Err(e) => problems.extend(e.problems.into_iter().filter(|p| {
            !refused.iter().any(|flag| {
                p.match_indices(flag.as_str()).any(|(i, _)| {
                    // A whole flag name, not the prefix of a longer one.
                    !p[i + flag.len()..]
                        .starts_with(|c: char| c.is_ascii_alphanumeric() || c == '-')
                })
            })
        })),
    }
    Err(LoadError::Invalid(ConfigError { problems }))
}

/// Runs clap until it parses, dropping one refused argument per run. Returns the parse, one
/// message per refused value, and the refused flags (`--name`).
fn parse_collecting(
    mut argv: Vec<std::ffi::OsString>,
) -> Result<(Cli, Vec<String>, Vec<String>), LoadError> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    use clap::{CommandFactory, FromArgMatches};
    let mut problems = Vec::new();
    let mut refused: Vec<String> = Vec::new();
    // Each failed run drops a distinct argument, so this ends within one run per argument.
    loop {
        let mut cmd = Cli::command();
        for flag in &refused {
            let long = flag.trim_start_matches('-').to_owned();
            cmd = cmd.mut_subcommand("serve", |s| {
                let id = s
                    .get_arguments()
                    .find(|a| a.get_long() == Some(long.as_str()))
                    .map(|a| a.get_id().clone());
                match id {
                    Some(id) => s.mut_arg(id, |a| a.env(None)),
                    None => s,
                }
            });
        }
        let e = match cmd.try_get_matches_from_mut(argv.clone()) {
            Ok(m) => match Cli::from_arg_matches(&m) {
                Ok(cli) => return Ok((cli, problems, refused)),
                Err(e) => e,
            },
            Err(e) => e,
        };
        let context = |kind| match e.get(kind) {
            Some(ContextValue::String(s)) => Some(s.clone()),
            _ => None,
        };
        // `--scrape-interval <SCRAPE_INTERVAL>` or `--foo`: the flag is the first word.
        let flag = context(ContextKind::InvalidArg)
            .and_then(|a| {
                let word = a.split_whitespace().next().unwrap_or_default();
                word.split('=').next().map(str::to_owned)
            })
            .filter(|f| f.starts_with("--") && !refused.contains(f));
        let Some(flag) = flag else {
            return Err(rest(e, problems));
        };
        match e.kind() {
            ErrorKind::ValueValidation | ErrorKind::InvalidValue => {
                let value = context(ContextKind::InvalidValue).unwrap_or_default();
                let cause = match (
                    std::error::Error::source(&e),
                    e.get(ContextKind::ValidValue),
                ) {
                    _ if value.is_empty() && e.kind() == ErrorKind::InvalidValue => {
                        "a value is required".to_owned()
                    }
                    (Some(c), _) => c.to_string(),
                    (None, Some(ContextValue::Strings(valid))) => {
                        format!("expected one of {}", valid.join(", "))
                    }
                    _ => "invalid value".to_owned(),
                };
                let serve = cmd.find_subcommand("serve");
                let env = serve
                    .and_then(|s| {
                        s.get_arguments()
                            .find(|a| a.get_long() == flag.strip_prefix("--"))
                    })
                    .and_then(|a| a.get_env())
                    .map(|v| v.to_string_lossy().into_owned());
                if drop_flag(&mut argv, &flag) {
                    problems.push(format!("{flag} {value:?}: {cause}"));
                } else {
                    let var = env.unwrap_or_else(|| "the environment".into());
                    problems.push(format!("{var}={value:?} (for {flag}): {cause}"));
                }
            }
            ErrorKind::UnknownArgument => {
                drop_flag(&mut argv, &flag);
                let hint = match e.get(ContextKind::SuggestedArg) {
                    Some(ContextValue::String(s)) => format!(" (did you mean {s}?)"),
                    _ => String::new(),
                };
                problems.push(format!("{flag}: unknown flag{hint}"));
            }
            _ => return Err(rest(e, problems)),
        }
        refused.push(flag);
    }
}

/// An error that stops the collection: alone, clap's own; after refused values, one more
/// problem in the list.
fn rest(e: clap::Error, mut problems: Vec<String>) -> LoadError {
    if problems.is_empty() {
        return LoadError::Clap(e);
    }
    let text = e.render().to_string();
    let first = text
        .lines()
        .next()
        .unwrap_or_default()
        .trim_start_matches("error: ");
    problems.push(first.to_owned());
    LoadError::Invalid(ConfigError { problems })
}

/// Removes every occurrence of `flag` (`--name value` and `--name=value`) from the command line;
/// whether there was one. Every flag of `serve` is long-only and takes one value per occurrence
/// or none (a bool switch, which never fails to parse on the command line), and nothing follows
/// `--`: checked by the tests over `Cli::command()`.
fn drop_flag(argv: &mut Vec<std::ffi::OsString>, flag: &str) -> bool {
    let with_value = format!("{flag}=");
    let mut out = Vec::with_capacity(argv.len());
    let mut found = false;
    let mut tokens = std::mem::take(argv).into_iter();
    while let Some(t) = tokens.next() {
        let text = t.to_string_lossy();
        if text == "--" {
            out.push(t);
            out.extend(tokens.by_ref());
            break;
        }
        if text == flag {
            found = true;
            // Its value: every refused known flag takes one; an unknown flag is taken to have one
            // unless a flag follows it.
            if tokens
                .as_slice()
                .first()
                .is_some_and(|v| !v.to_string_lossy().starts_with("--"))
            {
                let _ = tokens.next();
            }
        } else if text.starts_with(&with_value) {
            found = true;
        } else {
            out.push(t);
        }
    }
    *argv = out;
    found
}

fn is_metric_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// A served name must be one path segment the HPA accepts (`IsValidPathSegmentName`); we also
/// keep it to the characters users type.
fn is_served_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s != "."
        && s != ".."
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'))
}

/// Parses one `SERVED=FAMILY` or `SERVED=rate(FAMILY[WINDOW])` mapping.
///
/// # Errors
/// A message naming what is wrong with it.
pub fn parse_mapping(s: &str) -> Result<MetricMapping, String> {
    let Some((served, family)) = s.split_once('=') else {
        return Err(format!(
            "--metric {s:?}: expected SERVED=FAMILY or SERVED=rate(FAMILY[WINDOW])"
        ));
    };
    let (served, family) = (served.trim(), family.trim());
    let (family, rate) = match family.strip_prefix("rate(") {
        None => (family, None),
        Some(rest) => {
            let inner = rest.strip_suffix(')').and_then(|r| {
                let (family, window) = r.trim().strip_suffix(']')?.split_once('[')?;
                Some((family.trim(), window.trim()))
            });
            let Some((family, window)) = inner else {
                return Err(format!(
                    "--metric {s:?}: expected rate(FAMILY[WINDOW]), e.g. rate(websocket_messages_received_total[30s])"
                ));
            };
            let window = parse_duration(window)
                .map_err(|e| format!("--metric {s:?}: rate window {window:?}: {e}"))?;
            (family, Some(window))
        }
    };
    if !is_served_name(served) {
        return Err(format!(
            "--metric {s:?}: served name {served:?} must be non-empty and use only letters, digits, '_', '-', '.', ':'"
        ));
    }
    if !is_metric_name(family) {
        return Err(format!(
            "--metric {s:?}: family {family:?} is not a Prometheus metric name ([a-zA-Z_:][a-zA-Z0-9_:]*)"
        ));
    }
    Ok(MetricMapping {
        served: served.to_owned(),
        family: family.to_owned(),
        rate,
        filter: None,
    })
}

impl ServeArgs {
    /// Checks every flag and builds the [`Config`].
    ///
    /// # Errors
    /// A [`ConfigError`] listing every problem found, not just the first.
    pub fn validate(self) -> Result<Config, ConfigError> {
        let mut problems = Vec::new();
        let interval = self.scrape_interval;
        if interval < Duration::from_millis(100) {
            problems.push(format!(
                "--scrape-interval {}: must be at least 100ms",
                humantime::format_duration(interval)
            ));
        }
        let scrape_timeout = self
            .scrape_timeout
            .unwrap_or_else(|| default_timeout(interval));
        if scrape_timeout.is_zero() || scrape_timeout > interval {
            problems.push(format!(
                "--scrape-timeout {}: must be greater than 0 and at most --scrape-interval ({})",
                humantime::format_duration(scrape_timeout),
                humantime::format_duration(interval)
            ));
        }
        let max_age = self
            .max_age
            .unwrap_or_else(|| default_max_age(self.source, interval, self.prometheus_interval));
        if self.source == SourceKind::Scrape && max_age < interval {
            problems.push(format!(
                "--max-age {}: must be at least --scrape-interval ({}), or every value would expire before the next scrape",
                humantime::format_duration(max_age),
                humantime::format_duration(interval)
            ));
        }
        if self.source == SourceKind::Prometheus && max_age < self.prometheus_interval {
            problems.push(format!(
                "--max-age {}: must be at least --prometheus-interval ({})",
                humantime::format_duration(max_age),
                humantime::format_duration(self.prometheus_interval)
            ));
        }
        if self.scrape_concurrency == 0 {
            problems.push("--scrape-concurrency: must be at least 1".into());
        }
        if self.scrape_threads == 0 {
            problems.push("--scrape-threads: must be at least 1".into());
        }
        if self.scrape_max_body_bytes < 1024 {
            problems.push("--scrape-max-body-bytes: must be at least 1024".into());
        }
        let raw: Vec<&str> = if self.metrics_config.is_some() {
            Vec::new()
        } else if self.metrics.is_empty() {
            vec![DEFAULT_METRIC]
        } else {
            self.metrics.iter().map(String::as_str).collect()
        };
        let mut metrics: Vec<MetricMapping> = Vec::new();
        if let Some(path) = &self.metrics_config {
            if self.source == SourceKind::Prometheus {
                problems.push(
                    "--metrics-config: serves the scrape source's metrics; with --source=prometheus use --metric or --prometheus-rules-file"
                        .into(),
                );
            }
            match metrics_file::read(path, interval) {
                Ok(m) => metrics = m,
                Err(e) => problems.push(e),
            }
        }
        for m in raw {
            match parse_mapping(m) {
                Ok(mapping) if metrics.iter().any(|x| x.served == mapping.served) => {
                    problems.push(format!(
                        "--metric {m:?}: served name {:?} is given twice",
                        mapping.served
                    ))
                }
                Ok(MetricMapping {
                    rate: Some(window), ..
                }) if self.source == SourceKind::Prometheus => problems.push(format!(
                    "--metric {m:?}: rate() is computed from the adapter's own scrapes; with --source=prometheus put the rate in --prometheus-query (window {})",
                    humantime::format_duration(window)
                )),
                Ok(MetricMapping {
                    rate: Some(window), ..
                }) if let Err(why) = metrics_file::check_rate_window(window, interval) => {
                    problems.push(format!("--metric {m:?}: {why}"));
                }
                Ok(mapping) => metrics.push(mapping),
                Err(e) => problems.push(e),
            }
        }
        let prefix = self.annotation_prefix.trim_end_matches('/').to_owned();
        if prefix.is_empty()
            || !prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.'))
        {
            problems.push(format!(
                "--annotation-prefix {:?}: must be a DNS subdomain such as {DEFAULT_ANNOTATION_PREFIX}",
                self.annotation_prefix
            ));
        }
        let tls = match (self.tls_cert_file, self.tls_private_key_file) {
            (Some(cert), Some(key)) => TlsSource::Files { cert, key },
            (None, None) => TlsSource::SelfSigned { dir: self.cert_dir },
            (Some(_), None) => {
                problems.push("--tls-cert-file needs --tls-private-key-file".into());
                TlsSource::SelfSigned { dir: self.cert_dir }
            }
            (None, Some(_)) => {
                problems.push("--tls-private-key-file needs --tls-cert-file".into());
                TlsSource::SelfSigned { dir: self.cert_dir }
            }
        };
        let tls = match (self.serving_ca.validate(&mut problems), tls) {
            (None, tls) => tls,
            (Some(managed), TlsSource::SelfSigned { .. }) if self.static_pods.is_none() => {
                TlsSource::Managed(managed)
            }
            (Some(_), tls) => {
                problems
                    .push("--serving-ca-secret excludes --tls-cert-file and --static-pods".into());
                tls
            }
        };
        let pods = match (self.static_pods, self.kubeconfig) {
            (Some(path), None) => PodSource::Static { path },
            (Some(path), Some(_)) => {
                problems.push("--static-pods and --kubeconfig exclude each other".into());
                PodSource::Static { path }
            }
            (None, kubeconfig) => PodSource::Cluster { kubeconfig },
        };
        let auth = match pods {
            PodSource::Cluster { .. } if !self.insecure_allow_unauthenticated => {
                Some(self.auth.validate(&mut problems))
            }
            _ => None,
        };
        let default_bind = match pods {
            PodSource::Static { .. } => IpAddr::V4(Ipv4Addr::LOCALHOST),
            PodSource::Cluster { .. } => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        };
        let secure_addr =
            SocketAddr::new(self.bind_address.unwrap_or(default_bind), self.secure_port);
        let source = match self.source {
            SourceKind::Scrape => Source::Scrape,
            SourceKind::Prometheus => prometheus_source(
                PrometheusArgs {
                    url: self.prometheus_url,
                    bearer_token_file: self.prometheus_bearer_token_file,
                    ca_file: self.prometheus_ca_file,
                    client_cert_file: self.prometheus_client_cert_file,
                    client_key_file: self.prometheus_client_key_file,
                    timeout: self
                        .prometheus_timeout
                        .unwrap_or_else(|| default_timeout(self.prometheus_interval)),
                    interval: self.prometheus_interval,
                    query: self.prometheus_query,
                    namespace_label: self.prometheus_namespace_label,
                    pod_label: self.prometheus_pod_label,
                    rules_file: self.prometheus_rules_file,
                    relist_interval: self.prometheus_relist_interval,
                    parts: self.prometheus_query_parts,
                    max_parallel: self.prometheus_max_parallel_queries,
                },
                &mut problems,
            ),
            SourceKind::RemoteWrite => remote_write_source(
                RemoteWriteArgs {
                    addr: self.remote_write_bind_address,
                    bearer_token_file: self.remote_write_bearer_token_file,
                    client_ca_file: self.remote_write_client_ca_file,
                    tls_cert_file: self.remote_write_tls_cert_file,
                    tls_private_key_file: self.remote_write_tls_private_key_file,
                    insecure_allow_unauthenticated: self
                        .remote_write_insecure_allow_unauthenticated,
                    namespace_label: self.remote_write_namespace_label,
                    pod_label: self.remote_write_pod_label,
                    max_body_bytes: self.remote_write_max_body_bytes,
                    max_decoded_bytes: self.remote_write_max_decoded_bytes,
                    max_series_per_request: self.remote_write_max_series_per_request,
                    max_series: self.remote_write_max_series,
                    max_concurrent_requests: self.remote_write_max_concurrent_requests,
                    ready_grace: self.remote_write_ready_grace.unwrap_or(max_age),
                },
                &mut problems,
            ),
        };
        let limits = self.listener.limits(&mut problems);
        let rebalance = self.rebalance.settings(&mut problems);
        if rebalance.is_some() {
            // The controller acts on pods of the cluster from values a second fresh.
            if matches!(pods, PodSource::Static { .. }) {
                problems.push("--rebalance needs cluster mode (it excludes --static-pods)".into());
            }
            if !matches!(source, Source::Scrape) {
                problems.push("--rebalance needs --source=scrape".into());
            }
        }
        if !problems.is_empty() {
            return Err(ConfigError { problems });
        }
        Ok(Config {
            secure_addr,
            metrics_addr: self.metrics_bind_address,
            tls,
            pods,
            collect: CollectConfig {
                interval,
                timeout: scrape_timeout,
                concurrency: self.scrape_concurrency,
                threads: self.scrape_threads,
                max_body_bytes: self.scrape_max_body_bytes,
                ca_file: self.scrape_ca_file,
            },
            max_age,
            metrics,
            metrics_config: self.metrics_config,
            annotation_prefix: prefix,
            shutdown_grace: self.shutdown_grace,
            shutdown_delay: self.shutdown_delay_duration,
            limits,
            log_format: self.log_format,
            serve_external_metrics: self.serve_external_metrics,
            source,
            auth,
            rebalance,
        })
    }
}

/// The `--remote-write-*` flags, gathered for validation.
struct RemoteWriteArgs {
    addr: SocketAddr,
    bearer_token_file: Option<PathBuf>,
    client_ca_file: Option<PathBuf>,
    tls_cert_file: Option<PathBuf>,
    tls_private_key_file: Option<PathBuf>,
    insecure_allow_unauthenticated: bool,
    namespace_label: String,
    pod_label: String,
    max_body_bytes: usize,
    max_decoded_bytes: usize,
    max_series_per_request: usize,
    max_series: usize,
    max_concurrent_requests: usize,
    ready_grace: Duration,
}

/// Validates the `--remote-write-*` flags, pushing every problem; the returned value is only
/// used when there are none. Like the API's auth flags: no credentials check at all is refused
/// unless asked for by name.
fn remote_write_source(a: RemoteWriteArgs, problems: &mut Vec<String>) -> Source {
    use crate::remote_write::{RemoteWriteConfig, RemoteWriteTls};
    for (flag, path) in [
        ("--remote-write-bearer-token-file", &a.bearer_token_file),
        ("--remote-write-client-ca-file", &a.client_ca_file),
        ("--remote-write-tls-cert-file", &a.tls_cert_file),
        (
            "--remote-write-tls-private-key-file",
            &a.tls_private_key_file,
        ),
    ] {
        if let Some(p) = path
            && let Err(e) = std::fs::metadata(p)
        {
            problems.push(format!("{flag} {}: {e}", p.display()));
        }
    }
    let tls = match (a.tls_cert_file, a.tls_private_key_file) {
        (Some(cert), Some(key)) => Some(RemoteWriteTls {
            cert,
            key,
            client_ca: a.client_ca_file.clone(),
        }),
        (None, None) => None,
        (Some(_), None) => {
            problems.push(
                "--remote-write-tls-cert-file needs --remote-write-tls-private-key-file".into(),
            );
            None
        }
        (None, Some(_)) => {
            problems.push(
                "--remote-write-tls-private-key-file needs --remote-write-tls-cert-file".into(),
            );
            None
        }
    };
    if a.client_ca_file.is_some() && tls.is_none() {
        problems.push(
            "--remote-write-client-ca-file needs --remote-write-tls-cert-file and --remote-write-tls-private-key-file (mutual TLS)".into(),
        );
    }
    let authenticated = a.bearer_token_file.is_some() || a.client_ca_file.is_some();
    if !authenticated && !a.insecure_allow_unauthenticated {
        problems.push(
            "--source=remote-write needs --remote-write-bearer-token-file and/or --remote-write-client-ca-file, or --remote-write-insecure-allow-unauthenticated to accept writes from anyone".into(),
        );
    }
    for (flag, label) in [
        ("--remote-write-namespace-label", &a.namespace_label),
        ("--remote-write-pod-label", &a.pod_label),
    ] {
        if !is_label_name(label) {
            problems.push(format!("{flag} {label:?}: not a Prometheus label name"));
        }
    }
    for (flag, v) in [
        ("--remote-write-max-body-bytes", a.max_body_bytes),
        ("--remote-write-max-decoded-bytes", a.max_decoded_bytes),
    ] {
        if v < 1024 {
            problems.push(format!("{flag} {v}: must be at least 1024"));
        }
    }
    for (flag, v) in [
        (
            "--remote-write-max-series-per-request",
            a.max_series_per_request,
        ),
        ("--remote-write-max-series", a.max_series),
        (
            "--remote-write-max-concurrent-requests",
            a.max_concurrent_requests,
        ),
    ] {
        if v == 0 {
            problems.push(format!("{flag}: must be at least 1"));
        }
    }
    Source::RemoteWrite(Box::new(RemoteWriteConfig {
        addr: a.addr,
        tls,
        bearer_token_file: a.bearer_token_file,
        namespace_label: a.namespace_label,
        pod_label: a.pod_label,
        max_body_bytes: a.max_body_bytes,
        max_decoded_bytes: a.max_decoded_bytes,
        max_series_per_request: a.max_series_per_request,
        max_series: a.max_series,
        max_concurrent_requests: a.max_concurrent_requests,
        ready_grace: a.ready_grace,
    }))
}

/// The `--prometheus-*` flags, gathered for validation.
struct PrometheusArgs {
    url: Option<String>,
    bearer_token_file: Option<PathBuf>,
    ca_file: Option<PathBuf>,
    client_cert_file: Option<PathBuf>,
    client_key_file: Option<PathBuf>,
    timeout: Duration,
    interval: Duration,
    query: String,
    namespace_label: String,
    pod_label: String,
    rules_file: Option<PathBuf>,
    relist_interval: Duration,
    parts: usize,
    max_parallel: usize,
}

fn is_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Validates the `--prometheus-*` flags, pushing every problem; the returned value is only used
/// when there are none.
fn prometheus_source(a: PrometheusArgs, problems: &mut Vec<String>) -> Source {
    use crate::prometheus::{PrometheusConfig, rules, template};
    let url = match a.url {
        None => {
            problems.push("--source=prometheus needs --prometheus-url".into());
            String::new()
        }
        Some(u) => {
            match u.parse::<http::Uri>() {
                Ok(uri)
                    if matches!(uri.scheme_str(), Some("http" | "https"))
                        && uri.host().is_some() => {}
                _ => problems.push(format!(
                    "--prometheus-url {u:?}: must be an absolute http:// or https:// URL"
                )),
            }
            u
        }
    };
    for (flag, path) in [
        ("--prometheus-bearer-token-file", &a.bearer_token_file),
        ("--prometheus-ca-file", &a.ca_file),
        ("--prometheus-client-cert-file", &a.client_cert_file),
        ("--prometheus-client-key-file", &a.client_key_file),
    ] {
        if let Some(p) = path
            && let Err(e) = std::fs::metadata(p)
        {
            problems.push(format!("{flag} {}: {e}", p.display()));
        }
    }
    let client_cert = match (a.client_cert_file, a.client_key_file) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        (Some(_), None) => {
            problems
                .push("--prometheus-client-cert-file needs --prometheus-client-key-file".into());
            None
        }
        (None, Some(_)) => {
            problems
                .push("--prometheus-client-key-file needs --prometheus-client-cert-file".into());
            None
        }
    };
    if a.interval < Duration::from_millis(100) {
        problems.push(format!(
            "--prometheus-interval {}: must be at least 100ms",
            humantime::format_duration(a.interval)
        ));
    }
    if a.timeout.is_zero() || a.timeout > a.interval {
        problems.push(format!(
            "--prometheus-timeout {}: must be greater than 0 and at most --prometheus-interval ({})",
            humantime::format_duration(a.timeout),
            humantime::format_duration(a.interval)
        ));
    }
    let query = match template::Template::parse(&a.query) {
        Ok(t) => Some(t),
        Err(e) => {
            problems.push(format!("--prometheus-query {:?}: {e}", a.query));
            None
        }
    };
    for (flag, label) in [
        ("--prometheus-namespace-label", &a.namespace_label),
        ("--prometheus-pod-label", &a.pod_label),
    ] {
        if !is_label_name(label) {
            problems.push(format!("{flag} {label:?}: not a Prometheus label name"));
        }
    }
    if !(1..=256).contains(&a.parts) {
        problems.push(format!(
            "--prometheus-query-parts {}: must be 1-256",
            a.parts
        ));
    }
    if !(1..=256).contains(&a.max_parallel) {
        problems.push(format!(
            "--prometheus-max-parallel-queries {}: must be 1-256",
            a.max_parallel
        ));
    }
    if a.relist_interval < Duration::from_secs(1) {
        problems.push("--prometheus-relist-interval: must be at least 1s".into());
    }
    let rules = match &a.rules_file {
        None => Vec::new(),
        Some(path) => match rules::load(path) {
            Ok(r) => r,
            Err(e) => {
                problems.push(format!("--prometheus-rules-file: {e}"));
                Vec::new()
            }
        },
    };
    match query {
        Some(query) => Source::Prometheus(Box::new(PrometheusConfig {
            url,
            bearer_token_file: a.bearer_token_file,
            ca_file: a.ca_file,
            client_cert,
            timeout: a.timeout,
            interval: a.interval,
            query,
            namespace_label: a.namespace_label,
            pod_label: a.pod_label,
            rules,
            relist_interval: a.relist_interval,
            parts: a.parts,
            max_parallel: a.max_parallel,
        })),
        None => Source::Scrape,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Result<ServeArgs, clap::Error> {
        let mut argv = vec!["ws-metrics-adapter", "serve"];
        argv.extend_from_slice(extra);
        let cli = Cli::try_parse_from(argv)?;
        let Command::Serve(a) = cli.command;
        Ok(*a)
    }

    #[test]
    fn static_mode_defaults_to_loopback_and_three_intervals_of_max_age() {
        let cfg = args(&[
            "--static-pods",
            "pods.yaml",
            "--scrape-interval",
            "500ms",
            "--scrape-timeout",
            "400ms",
        ])
        .expect("flags parse")
        .validate()
        .expect("valid");
        assert_eq!(cfg.secure_addr, "127.0.0.1:6443".parse().expect("addr"));
        assert_eq!(cfg.max_age, Duration::from_millis(1500));
        assert_eq!(
            cfg.metrics,
            vec![MetricMapping {
                served: "websocket_connections".into(),
                family: "websocket_connections_active".into(),
                rate: None,
                filter: None,
            }]
        );
    }

    #[test]
    fn remote_write_refuses_to_start_without_auth_and_reports_every_problem() {
        let err = args(&[
            "--static-pods",
            "pods.yaml",
            "--source=remote-write",
            "--remote-write-pod-label=9bad",
            "--remote-write-client-ca-file=/nonexistent/ca.pem",
            "--remote-write-max-series=0",
        ])
        .expect("flags parse")
        .validate()
        .expect_err("invalid");
        assert_eq!(
            err.problems,
            vec![
                "--remote-write-client-ca-file /nonexistent/ca.pem: No such file or directory (os error 2)".to_owned(),
                "--remote-write-client-ca-file needs --remote-write-tls-cert-file and --remote-write-tls-private-key-file (mutual TLS)".to_owned(),
                "--remote-write-pod-label \"9bad\": not a Prometheus label name".to_owned(),
                "--remote-write-max-series: must be at least 1".to_owned(),
            ]
        );
        let err = args(&["--static-pods", "pods.yaml", "--source=remote-write"])
            .expect("flags parse")
            .validate()
            .expect_err("no auth");
        assert!(
            err.problems[0].contains("--remote-write-insecure-allow-unauthenticated"),
            "{err}"
        );
        let cfg = args(&[
            "--static-pods",
            "pods.yaml",
            "--source=remote-write",
            "--remote-write-insecure-allow-unauthenticated",
        ])
        .expect("flags parse")
        .validate()
        .expect("valid");
        assert_eq!(cfg.max_age, DEFAULT_REMOTE_WRITE_MAX_AGE);
        let Source::RemoteWrite(rw) = cfg.source else {
            panic!("remote-write source expected");
        };
        assert_eq!(rw.addr, "0.0.0.0:9201".parse().expect("addr"));
        assert_eq!(rw.ready_grace, DEFAULT_REMOTE_WRITE_MAX_AGE);
        assert_eq!(
            (rw.namespace_label.as_str(), rw.pod_label.as_str()),
            ("namespace", "pod")
        );
    }

    #[test]
    fn rebalance_needs_cluster_mode_and_the_scrape_source() {
        let on = args(&["--rebalance", "--insecure-allow-unauthenticated"])
            .expect("flags parse")
            .validate()
            .expect("valid in cluster mode");
        assert!(on.rebalance.is_some());
        let err = args(&["--rebalance", "--static-pods", "pods.yaml"])
            .expect("flags parse")
            .validate()
            .expect_err("static mode");
        assert_eq!(
            err.problems,
            vec!["--rebalance needs cluster mode (it excludes --static-pods)".to_owned()]
        );
        let err = args(&[
            "--rebalance",
            "--insecure-allow-unauthenticated",
            "--source=prometheus",
            "--prometheus-url=http://127.0.0.1:9090",
        ])
        .expect("flags parse")
        .validate()
        .expect_err("prometheus source");
        assert_eq!(
            err.problems,
            vec!["--rebalance needs --source=scrape".to_owned()]
        );
    }

    #[test]
    fn every_config_error_is_reported_at_once() {
        let err = args(&[
            "--scrape-interval",
            "1s",
            "--scrape-timeout",
            "2s",
            "--max-age",
            "100ms",
            "--metric",
            "bad",
            "--tls-cert-file",
            "x.pem",
        ])
        .expect("flags parse")
        .validate()
        .expect_err("invalid");
        let text = err.to_string();
        assert_eq!(err.problems.len(), 4, "{text}");
        for needle in [
            "--scrape-timeout",
            "--max-age",
            "SERVED=FAMILY",
            "--tls-private-key-file",
        ] {
            assert!(text.contains(needle), "missing {needle} in {text}");
        }
    }

    #[test]
    fn cluster_mode_authenticates_unless_the_loud_flag_turns_it_off() {
        let cfg = args(&[]).expect("flags parse").validate().expect("valid");
        assert_eq!(cfg.secure_addr, "0.0.0.0:6443".parse().expect("addr"));
        assert_eq!(cfg.pods, PodSource::Cluster { kubeconfig: None });
        let auth = cfg.auth.expect("auth on by default");
        assert_eq!(auth.settings.token_ttl, Duration::from_secs(10));
        assert_eq!(
            auth.settings.always_allow_paths,
            vec!["/healthz", "/readyz", "/livez"]
        );
        let cfg = args(&["--insecure-allow-unauthenticated"])
            .expect("flags parse")
            .validate()
            .expect("valid");
        assert!(cfg.auth.is_none());
        let cfg = args(&[
            "--requestheader-client-ca-file",
            "fp.crt",
            "--requestheader-allowed-names",
            "front-proxy-client,aggregator",
            "--authorization-webhook-cache-unauthorized-ttl",
            "2s",
        ])
        .expect("flags parse")
        .validate()
        .expect("valid");
        let auth = cfg.auth.expect("auth");
        let (ca, names, headers) = auth.request_header.expect("request header");
        assert_eq!(ca, PathBuf::from("fp.crt"));
        assert_eq!(names, vec!["front-proxy-client", "aggregator"]);
        assert_eq!(headers.username, vec!["X-Remote-User"]);
        assert_eq!(auth.settings.deny_ttl, Duration::from_secs(2));
        let err = args(&["--authorization-always-allow-paths", "healthz"])
            .expect("flags parse")
            .validate()
            .expect_err("relative path");
        assert!(err.to_string().contains("must start with '/'"));
    }

    #[test]
    fn the_managed_serving_ca_excludes_certificate_files_and_static_mode() {
        let cfg = args(&["--serving-ca-secret", "ws-metrics/ca"])
            .expect("flags parse")
            .validate()
            .expect("valid");
        let TlsSource::Managed(managed) = cfg.tls else {
            panic!("managed expected, got {:?}", cfg.tls);
        };
        assert_eq!(
            managed.clone().in_namespace("elsewhere").dns_names,
            vec!["ws-metrics-adapter.ws-metrics.svc"]
        );
        assert_eq!(managed.apiservices.len(), 2);
        for extra in [
            &[
                "--tls-cert-file",
                "c.pem",
                "--tls-private-key-file",
                "k.pem",
            ][..],
            &["--static-pods", "p.yaml"][..],
        ] {
            let mut argv = vec!["--serving-ca-secret", "ws-metrics/ca"];
            argv.extend_from_slice(extra);
            let err = args(&argv)
                .expect("flags parse")
                .validate()
                .expect_err("exclusive");
            assert!(
                err.to_string().contains("--serving-ca-secret excludes"),
                "{err}"
            );
        }
    }

    #[test]
    fn metric_mappings_are_repeatable_and_checked() {
        let cfg = args(&[
            "--static-pods",
            "p.yaml",
            "--metric",
            "a=fam_a",
            "--metric",
            "b=fam_a",
        ])
        .expect("flags parse")
        .validate()
        .expect("valid");
        assert_eq!(cfg.metrics.len(), 2);
        assert!(parse_mapping("x=1bad").is_err());
        assert!(parse_mapping("a/b=fam").is_err());
        assert!(parse_mapping("=fam").is_err());
        let dup = args(&[
            "--static-pods",
            "p.yaml",
            "--metric",
            "a=x",
            "--metric",
            "a=y",
        ])
        .expect("flags parse")
        .validate()
        .expect_err("duplicate");
        assert!(dup.to_string().contains("given twice"));
    }

    #[test]
    fn a_rate_mapping_names_a_counter_and_a_window_of_at_least_two_scrapes() {
        let m = parse_mapping("mps=rate(websocket_messages_received_total[30s])").expect("rate");
        assert_eq!(m.family, "websocket_messages_received_total");
        assert_eq!(m.rate, Some(Duration::from_secs(30)));
        assert_eq!(parse_mapping("c=fam").expect("plain").rate, None);
        for bad in [
            "x=rate(fam)",
            "x=rate(fam[30s]",
            "x=rate(fam[soon])",
            "x=rate(1x[5s])",
        ] {
            assert!(parse_mapping(bad).is_err(), "{bad}");
        }
        let err = args(&[
            "--static-pods",
            "p.yaml",
            "--scrape-interval",
            "1s",
            "--metric",
            "a=rate(f_total[1500ms])",
            "--metric",
            "b=rate(f_total[2s])",
        ])
        .expect("flags parse")
        .validate()
        .expect_err("too short");
        let text = err.to_string();
        assert!(
            text.contains("rate window 1s 500ms must be at least 2 × --scrape-interval"),
            "{text}"
        );
        assert!(!text.contains("\"b="), "{text}");
        let err = args(&[
            "--static-pods",
            "p.yaml",
            "--source",
            "prometheus",
            "--metric",
            "a=rate(f_total[1m])",
        ])
        .expect("flags parse")
        .validate()
        .expect_err("prometheus");
        assert!(
            err.to_string()
                .contains("with --source=prometheus put the rate in --prometheus-query"),
            "{err}"
        );
    }

    #[test]
    fn prometheus_source_flags_are_checked_together() {
        let err = args(&[
            "--static-pods",
            "p.yaml",
            "--source",
            "prometheus",
            "--prometheus-timeout",
            "10s",
            "--prometheus-query",
            "sum(<<.Nope>>)",
            "--prometheus-pod-label",
            "kubernetes-pod",
            "--prometheus-ca-file",
            "/nonexistent/ca.pem",
            "--prometheus-client-cert-file",
            "/nonexistent/c.pem",
            "--prometheus-rules-file",
            "/nonexistent/rules.yaml",
        ])
        .expect("flags parse")
        .validate()
        .expect_err("invalid");
        let text = err.to_string();
        for needle in [
            "needs --prometheus-url",
            "--prometheus-timeout 10s",
            "--prometheus-query",
            "--prometheus-pod-label \"kubernetes-pod\"",
            "--prometheus-ca-file /nonexistent/ca.pem",
            "--prometheus-client-cert-file needs --prometheus-client-key-file",
            "--prometheus-rules-file: reading rules file /nonexistent/rules.yaml",
        ] {
            assert!(text.contains(needle), "missing {needle} in {text}");
        }
        let ok = args(&[
            "--static-pods",
            "p.yaml",
            "--source",
            "prometheus",
            "--prometheus-url",
            "http://127.0.0.1:9090",
        ])
        .expect("flags parse")
        .validate()
        .expect("valid");
        assert_eq!(ok.max_age, DEFAULT_PROMETHEUS_MAX_AGE);
        assert!(matches!(ok.source, Source::Prometheus(_)));
        let bad_url = args(&[
            "--static-pods",
            "p.yaml",
            "--source",
            "prometheus",
            "--prometheus-url",
            "prometheus:9090",
        ])
        .expect("flags parse")
        .validate()
        .expect_err("relative URL");
        assert!(bad_url.to_string().contains("absolute http"), "{bad_url}");
    }

    #[test]
    fn every_flag_has_its_environment_variable_and_is_long_only() {
        use clap::CommandFactory;
        let (checked, problems) = env_fallback_problems(&Cli::command(), "WS_METRICS_ADAPTER_");
        assert!(problems.is_empty(), "{problems:#?}");
        assert!(checked > 50, "only {checked} flags walked");
    }

    fn load_args(extra: &[&str]) -> Result<Config, ConfigError> {
        let mut argv = vec!["ws-metrics-adapter", "serve"];
        argv.extend_from_slice(extra);
        match load(argv) {
            Ok(c) => Ok(c),
            Err(LoadError::Invalid(e)) => Err(e),
            Err(LoadError::Clap(e)) => panic!("clap error instead of a list: {e}"),
        }
    }

    #[test]
    fn every_bad_value_and_every_validation_problem_are_reported_at_once() {
        let err = load_args(&[
            "--static-pods",
            "p.yaml",
            "--scrape-interval",
            "1 fortnight",
            "--secure-port=https",
            "--log-format",
            "xml",
            "--serving-cert-validity",
            "bogus",
            "--no-such-flag",
            "1",
            "--metric",
            "bad",
            // Judged against the default interval standing in for the refused one: left out.
            "--scrape-timeout",
            "5s",
            "--scrape-concurrency",
            "0",
            "--scrape-threads",
            "0",
        ])
        .expect_err("invalid");
        let text = err.to_string();
        for needle in [
            "--scrape-interval \"1 fortnight\": unknown time unit",
            "(examples: 500ms, 10s, 2m, 720h)",
            "--secure-port \"https\": invalid digit",
            "--log-format \"xml\": expected one of text, json",
            "--serving-cert-validity \"bogus\"",
            "--no-such-flag: unknown flag",
            "SERVED=FAMILY",
            "--scrape-concurrency: must be at least 1",
            "--scrape-threads: must be at least 1",
        ] {
            assert!(text.contains(needle), "missing {needle} in {text}");
        }
        assert_eq!(err.problems.len(), 8, "{text}");
        assert!(!text.contains("--scrape-timeout"), "{text}");
    }

    #[test]
    fn help_and_version_are_left_to_clap() {
        for flag in ["--help", "--version"] {
            let argv = ["ws-metrics-adapter", flag];
            assert!(matches!(load(argv), Err(LoadError::Clap(_))), "{flag}");
        }
        let err = load_args(&["--bind-address", "--secure-port", "x"]).expect_err("no value");
        assert_eq!(err.problems.len(), 2, "{err}");
        assert!(
            err.to_string()
                .contains("--bind-address \"\": a value is required"),
            "{err}"
        );
    }

    #[test]
    fn a_short_interval_alone_is_valid_its_timeout_derived_from_it() {
        let cfg =
            load_args(&["--static-pods", "p.yaml", "--scrape-interval", "500ms"]).expect("valid");
        assert_eq!(cfg.collect.timeout, Duration::from_millis(400));
        assert_eq!(cfg.max_age, Duration::from_millis(1500));
        let cfg = load_args(&["--static-pods", "p.yaml"]).expect("valid");
        assert_eq!(
            cfg.collect.timeout,
            Duration::from_millis(800),
            "1s keeps 800ms"
        );
        let err = load_args(&[
            "--static-pods",
            "p.yaml",
            "--scrape-interval",
            "500ms",
            "--scrape-timeout",
            "600ms",
        ])
        .expect_err("explicit timeout longer than the interval");
        assert!(err.to_string().contains("--scrape-timeout 600ms"), "{err}");
        let prometheus = |extra: &[&str]| {
            let mut argv = vec![
                "--static-pods",
                "p.yaml",
                "--source",
                "prometheus",
                "--prometheus-url",
                "http://127.0.0.1:9090",
            ];
            argv.extend_from_slice(extra);
            let cfg = load_args(&argv).expect("valid");
            let Source::Prometheus(p) = cfg.source else {
                panic!("prometheus expected");
            };
            (p.timeout, cfg.max_age)
        };
        assert_eq!(
            prometheus(&[]),
            (Duration::from_secs(4), DEFAULT_PROMETHEUS_MAX_AGE),
            "5s keeps 4s and 60s"
        );
        assert_eq!(
            prometheus(&["--prometheus-interval", "2m"]),
            (Duration::from_secs(96), Duration::from_secs(240))
        );
    }

    #[test]
    fn durations_take_units() {
        for (s, d) in [
            ("500ms", Duration::from_millis(500)),
            (" 10s ", Duration::from_secs(10)),
            ("720h", Duration::from_secs(720 * 3600)),
            ("1h 30m", Duration::from_secs(5400)),
        ] {
            assert_eq!(parse_duration(s), Ok(d), "{s}");
        }
        assert!(parse_duration("10").is_err(), "a unit is required");
        assert!(args(&["--scrape-interval", "1 fortnight"]).is_err());
        let a = args(&["--scrape-interval", "2s"]).expect("flags parse");
        assert_eq!(a.scrape_interval, Duration::from_secs(2));
    }
}
