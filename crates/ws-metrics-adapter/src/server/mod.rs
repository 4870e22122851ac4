//! Serving: the HTTPS listener for the API (rustls; a failed handshake drops one connection, never
//! the server), the plain-HTTP listener for `/livez`, `/readyz` and the adapter's own `/metrics`,
//! and the health state both report.
//!
//! - [`tls`]: certificates (files re-read on change, or a generated CA plus leaf).
//! - [`client_cert`]: client certificates requested at the handshake, handed to each request.
//! - [`serving_ca`]: a self-managed serving CA in a Secret, rotation, APIService `caBundle`.
//! - [`listener`]: the accept loop of both listeners, with connections, heads, idle time and
//!   HTTP/2 streams bounded.

pub mod client_cert;
pub mod listener;
pub mod serving_ca;
pub mod tls;

pub use listener::{Limits, ListenerArgs};

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::{StatusCode, header};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::store::Store;
use crate::telemetry::Telemetry;

/// Liveness and readiness, written by the loops and read by the probes.
#[derive(Debug)]
pub struct Health {
    origin: Instant,
    /// Milliseconds since `origin` at which the last collection tick started; 0 = none yet.
    last_tick_ms: AtomicU64,
    collected: AtomicBool,
    ready_latch: AtomicBool,
    max_tick_gap: Duration,
    store: Arc<Store>,
    auth: std::sync::OnceLock<Arc<crate::auth::Auth>>,
}

impl Health {
    /// Health for a collector ticking every `interval` with per-scrape `timeout`: live while a tick
    /// started within 1.5 × interval + timeout (metrics-server uses 1.5 × resolution).
    pub fn new(store: Arc<Store>, interval: Duration, timeout: Duration) -> Self {
        Self {
            origin: Instant::now(),
            last_tick_ms: AtomicU64::new(0),
            collected: AtomicBool::new(false),
            ready_latch: AtomicBool::new(false),
            max_tick_gap: interval.mul_f64(1.5) + timeout,
            store,
            auth: std::sync::OnceLock::new(),
        }
    }

    /// Makes readiness also wait for `auth` to have loaded its authentication config (spec §5.6:
    /// serving before it would turn the aggregator's calls into 401s).
    pub fn require_auth_config(&self, auth: Arc<crate::auth::Auth>) {
        let _ = self.auth.set(auth);
    }

    fn auth_pending(&self) -> bool {
        self.auth.get().is_some_and(|a| !a.is_loaded())
    }

    /// Called when a collection tick starts.
    pub fn tick_started(&self) {
        let ms = u64::try_from(self.origin.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        self.last_tick_ms.store(ms, Ordering::Relaxed);
    }

    /// Called when a collection round has finished.
    pub fn round_finished(&self) {
        self.collected.store(true, Ordering::Relaxed);
    }

    /// Live: the collection loop is ticking on time. Before its first tick (start-up, a slow
    /// first watch sync) the gap is counted from start-up, with 5 s of extra allowance.
    pub fn is_live(&self) -> bool {
        let last = self.last_tick_ms.load(Ordering::Relaxed);
        let since_start = self.origin.elapsed();
        if last == 0 {
            return since_start <= self.max_tick_gap + Duration::from_secs(5);
        }
        since_start.saturating_sub(Duration::from_millis(last)) <= self.max_tick_gap
    }

    /// Ready once pods are known (watch synced or static file read) and the first round finished.
    /// A latch: once ready, stays ready, so that a data-source problem never takes the
    /// APIService down (spec §5.2); failures show as missing values instead.
    pub fn is_ready(&self) -> bool {
        if self.ready_latch.load(Ordering::Relaxed) {
            return true;
        }
        let ready = self.store.is_synced()
            && self.collected.load(Ordering::Relaxed)
            && !self.auth_pending();
        if ready {
            self.ready_latch.store(true, Ordering::Relaxed);
        }
        ready
    }

    /// Why not ready, for the `/readyz` body.
    fn not_ready_reason(&self) -> &'static str {
        if self.auth_pending() {
            "authentication config (ConfigMap kube-system/extension-apiserver-authentication) not loaded yet; see the log"
        } else if !self.store.is_synced() {
            "pod inventory not loaded yet (watch not synced or static file not read)"
        } else {
            "first collection round not finished yet"
        }
    }
}

fn text(code: StatusCode, body: &'static str) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

async fn livez(State(health): State<Arc<Health>>) -> Response {
    if health.is_live() {
        text(StatusCode::OK, "ok")
    } else {
        text(
            StatusCode::SERVICE_UNAVAILABLE,
            "collection loop is not ticking on time\n",
        )
    }
}

async fn readyz(State(health): State<Arc<Health>>) -> Response {
    if health.is_ready() {
        text(StatusCode::OK, "ok")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("not ready: {}\n", health.not_ready_reason()),
        )
            .into_response()
    }
}

/// `/healthz`, `/livez` and `/readyz` (no authentication; for probes).
pub fn health_routes(health: Arc<Health>) -> Router {
    Router::new()
        .route("/healthz", get(livez))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .with_state(health)
}

/// The plain-HTTP router: health plus the adapter's own `/metrics`.
pub fn metrics_router(health: Arc<Health>, telemetry: Arc<Telemetry>) -> Router {
    let metrics = get(move |headers: http::HeaderMap| {
        let telemetry = telemetry.clone();
        async move { crate::telemetry::exposition_response(&headers, || telemetry.render_openmetrics()) }
    });
    health_routes(health).route("/metrics", metrics)
}

/// Serves `app` over TLS on `listener` within `limits` until `shutdown` resolves, then lets
/// in-flight requests finish for up to `grace`.
pub async fn serve_tls(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: Router,
    limits: Limits,
    grace: Duration,
    shutdown: impl Future<Output = ()>,
) {
    let acceptor = TlsAcceptor::from(tls);
    listener::serve(
        listener::Endpoint {
            name: "api",
            tls: Some(acceptor),
            proves_readers: true,
        },
        listener,
        app,
        limits,
        grace,
        shutdown,
    )
    .await;
}

/// Serves `app` over plain HTTP on `listener` within `limits` until `shutdown` resolves.
pub async fn serve_plain(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    listener::serve(
        listener::Endpoint {
            name: "metrics",
            tls: None,
            proves_readers: false,
        },
        listener,
        app,
        limits,
        Duration::from_secs(1),
        shutdown,
    )
    .await;
}
