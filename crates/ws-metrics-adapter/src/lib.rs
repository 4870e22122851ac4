//! ws-metrics-adapter: serves the Kubernetes `custom.metrics.k8s.io` API (v1beta1 and v1beta2)
//! from the live WebSocket connection counts of each pod, so that a HorizontalPodAutoscaler can
//! scale a real-time service on connections instead of CPU.
//!
//! ```text
//! discovery ──▶ collect ──▶ exposition ──▶ store ──▶ api ──▶ server ──▶ kube-aggregator ──▶ HPA
//! (who to       (scrape each  (parse the     (latest    (custom.metrics  (TLS, health,
//!  scrape: pod   pod's        Prometheus     value +    wire format,     own /metrics)
//!  watch or      /metrics     text)          sample     from memory)
//!  static file)  every tick)                 time)
//! ```
//!
//! Background loops (discovery, and collection or the Prometheus queries) write the
//! [`store::Store`]; API requests only read memory, never the network, through one
//! [`store::Store::read`] whichever the source.
//!
//! Modules import each other without cycles (`scripts/check-module-cycles.py` in `make lint`):
//! leaves such as [`clock`], [`selector`], [`exposition`], `health`, [`tls`] and
//! `config::value` import nothing of the crate that imports them back, and [`app`] is the only
//! module that knows every other.
//!
//! # Layout
//! - [`config`]: command-line flags (each with its environment fallback), `load` reporting every
//!   parse and validation problem at once, and the value parsers shared by every flag and file
//!   (durations, YAML with limits).
//! - `discovery`: which pods to scrape, from a Kubernetes pod watch or a static YAML file, and
//!   the workloads and Services an Object metric names.
//! - [`collect`]: the scrape loop: one bounded-concurrency round per interval; `ScrapeError`
//!   keeps why a scrape failed and names its `outcome` label.
//! - [`exposition`]: pure parser of the Prometheus text format and OpenMetrics text.
//! - [`prometheus`]: the other source (`--source=prometheus`): one PromQL query per served metric
//!   per interval against an existing Prometheus, and prometheus-adapter `rules:`; it publishes
//!   its answers into the store as a snapshot.
//! - [`remote_write`]: the third source (`--source=remote-write`): a Prometheus remote-write 1.0
//!   receiver on its own listener; sharded agents push samples, recorded as the pods' readings.
//! - [`clock`]: wall-clock timestamps for answers, monotonic ages for freshness.
//! - [`store`]: the one read contract: per-pod labels, scrape target and latest good reading with
//!   its sample time, the snapshot the Prometheus source publishes, and `Store::read`.
//! - [`selector`]: Kubernetes label selectors (parse, match, echo).
//! - `quantity`: canonical `resource.Quantity` strings.
//! - [`api`]: the custom metrics API: path parsing, discovery documents (k8s-openapi types),
//!   bodies, and `ApiError`, the one boundary that turns errors into `Status` (auth's too).
//! - [`auth`]: delegated authentication (front proxy, client certificates, TokenReview) and
//!   authorization (SubjectAccessReview), cached.
//! - `health`: liveness and readiness latches the loops flip, and the interval loop itself.
//! - [`tls`]: PEM reading, the rustls client configs (pods, Prometheus), and certificate
//!   generation over rcgen (a CA, serving leaves, a CA read back from PEM).
//! - [`server`]: HTTPS listener (rustls, hot-reloaded certificates, the managed serving CA),
//!   health and metrics listener, both behind one accept loop with connections, heads, idle time
//!   and HTTP/2 streams bounded.
//! - [`rebalance`]: the workload controller (`--rebalance`): per-workload balance, shed requests
//!   to hot pods after a scale-up, pod-deletion-cost from live counts; its rules are pure
//!   functions in `rebalance::plan`.
//! - [`telemetry`]: the adapter's own Prometheus metrics and logging set-up.
//! - [`app`]: the composition root that wires the above together (`run`).
//!
//! The demo workload (`ws-demo`: WebSocket server, load generator, local demo) is the
//! `crates/ws-demo` crate of the workspace, and the end-to-end harness is `crates/e2e`; neither is
//! in this crate's dependency tree.

pub mod api;
pub mod app;
pub mod auth;
pub mod clock;
pub mod collect;
pub mod config;
pub(crate) mod discovery;
pub mod exposition;
pub(crate) mod health;
pub mod prometheus;
pub(crate) mod quantity;
pub mod rebalance;
pub mod remote_write;
pub mod selector;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod tls;
