//! Serving: the HTTPS listener for the API (rustls; a failed handshake drops one connection, never
//! the server), and the plain-HTTP listener for `/livez`, `/readyz` (answered from
//! `health`) and the adapter's own `/metrics`.
//!
//! - [`tls`]: certificates (files re-read on change, or a generated CA plus leaf).
//! - `client_cert`: client certificates requested at the handshake, handed to each request.
//! - [`serving_ca`]: a self-managed serving CA in a Secret, rotation, APIService `caBundle`.
//! - [`listener`]: the accept loop of both listeners, with connections, heads, idle time and
//!   HTTP/2 streams bounded.

pub(crate) mod client_cert;
pub mod listener;
pub mod serving_ca;
pub mod tls;

pub use listener::{Limits, ListenerArgs};

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::{StatusCode, header};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::health::Health;
use crate::telemetry::Telemetry;

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
    match health.not_ready_reason() {
        None => text(StatusCode::OK, "ok"),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("not ready: {reason}\n"),
        )
            .into_response(),
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

/// Serves the remote-write receiver's `app` on `listener`, over TLS when `tls` is given, within
/// `limits` until `shutdown` resolves, then lets in-flight writes finish for up to `grace`.
pub async fn serve_remote_write(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    app: Router,
    limits: Limits,
    grace: Duration,
    shutdown: impl Future<Output = ()>,
) {
    listener::serve(
        listener::Endpoint {
            name: "remote_write",
            tls: tls.map(TlsAcceptor::from),
            proves_readers: false,
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
