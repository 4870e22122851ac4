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
//! Background loops (discovery, collection) write the [`store::Store`]; API requests only read
//! memory, never the network.
//!
//! # Layout
//! - [`config`]: command-line flags (with environment fallbacks) and their validation.
//! - [`discovery`]: which pods to scrape, from a Kubernetes pod watch or a static YAML file.
//! - [`collect`]: the scrape loop: one bounded-concurrency round per interval.
//! - [`exposition`]: pure parser of the Prometheus text format and OpenMetrics text.
//! - [`prometheus`]: the other source (`--source=prometheus`): one PromQL query per served metric
//!   per interval against an existing Prometheus, and prometheus-adapter `rules:`.
//! - [`clock`]: wall-clock timestamps for answers, monotonic ages for freshness.
//! - [`store`]: per-pod labels, scrape target and latest good reading with its sample time.
//! - [`selector`]: Kubernetes label selectors (parse, match, echo).
//! - [`quantity`]: canonical `resource.Quantity` strings.
//! - [`api`]: the custom metrics API: path parsing, discovery documents, bodies, `Status` errors.
//! - [`auth`]: delegated authentication (front proxy, client certificates, TokenReview) and
//!   authorization (SubjectAccessReview), cached.
//! - [`health`]: liveness and readiness latches the loops flip, and the interval loop itself.
//! - [`tls`]: PEM reading, the rustls client configs (pods, Prometheus), and certificate
//!   generation over rcgen (a CA, serving leaves, a CA read back from PEM).
//! - [`server`]: HTTPS listener (rustls, hot-reloaded certificates), health and metrics listener,
//!   both behind one accept loop with connections, heads, idle time and HTTP/2 streams bounded.
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
pub mod discovery;
pub mod exposition;
pub mod health;
pub mod prometheus;
pub mod quantity;
pub mod selector;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod tls;
