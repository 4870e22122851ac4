//! The demo WebSocket service (`ws-demo serve`): chat, echo and ticker routes, an exact
//! `websocket_connections_active{route}` gauge on `/metrics` (what the adapter scrapes), the
//! `websocket_messages_received_total`/`_sent_total{route}` counters (for a per-pod rate), ping/pong
//! liveness, `/healthz`, the shed endpoint of the shed contract ([`crate::shed`]: close N
//! connections, oldest first, with 1013), and a graceful drain that sends every client a 1001
//! close frame.

use std::collections::BTreeMap;
use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{Notify, broadcast, oneshot, watch};
use tokio::time::Instant;

use ws_metrics_adapter::config::ConfigError;

use super::{
    MAX_FRAME_SIZE, MAX_MESSAGE_SIZE, MAX_WRITE_BUFFER_SIZE, READ_BUFFER_SIZE, WRITE_BUFFER_SIZE,
};
use crate::shed::{self, ShedResponse};

/// Period of the `/ws/ticker` messages.
pub const TICK_PERIOD: Duration = Duration::from_secs(1);

/// Chat messages kept for chat clients that fall behind; a client further behind skips ahead.
const CHAT_BACKLOG: usize = 256;

/// How long a connection told to stop (drain over, or a dead peer) still gets to write its close
/// frame.
const LAST_WORD: Duration = Duration::from_secs(1);

/// A WebSocket route of the demo service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    /// `/ws/chat`: every text or binary message is broadcast to every chat client.
    Chat,
    /// `/ws/echo`: every text or binary message is sent back.
    Echo,
    /// `/ws/ticker`: the server sends `tick N` every [`TICK_PERIOD`].
    Ticker,
}

impl Route {
    /// Every route, in label order.
    pub const ALL: [Route; 3] = [Route::Chat, Route::Echo, Route::Ticker];

    /// The `route` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Chat => "chat",
            Self::Echo => "echo",
            Self::Ticker => "ticker",
        }
    }

    /// The HTTP path.
    pub fn path(self) -> &'static str {
        match self {
            Self::Chat => "/ws/chat",
            Self::Echo => "/ws/echo",
            Self::Ticker => "/ws/ticker",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Why a connection ended: the `reason` label of `websocket_connections_closed_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseReason {
    /// The client sent a close frame.
    ClientClose,
    /// A protocol or I/O error, a send that did not complete in time, or a TCP close without a
    /// close frame.
    Error,
    /// No frame (pong or other) arrived within the pong timeout after a ping.
    PingTimeout,
    /// The server closed it while draining.
    Drain,
    /// The server closed it with 1013 because a shed request asked it to
    /// ([`DemoServer::shed`]).
    Shed,
}

impl CloseReason {
    /// Every reason, in label order.
    pub const ALL: [CloseReason; 5] = [
        CloseReason::ClientClose,
        CloseReason::Error,
        CloseReason::PingTimeout,
        CloseReason::Drain,
        CloseReason::Shed,
    ];

    /// The `reason` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClientClose => "client_close",
            Self::Error => "error",
            Self::PingTimeout => "ping_timeout",
            Self::Drain => "drain",
            Self::Shed => "shed",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Liveness and drain timings and the shed endpoint of the demo service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// A ping is sent to every connection this often.
    pub ping_interval: Duration,
    /// A connection from which no frame (pong or other) arrives within this time after a ping is
    /// closed as `ping_timeout`. Also bounds every send to a client that does not read.
    pub pong_timeout: Duration,
    /// On shutdown, time given to clients to answer the 1001 close frame before the remaining
    /// connections are cut.
    pub drain_grace: Duration,
    /// Path of the shed endpoint (`POST`, on the same port as `/metrics`); a pod names it to the
    /// adapter with the annotation [`shed::PATH_ANNOTATION`].
    pub shed_path: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            ping_interval: Duration::from_secs(10),
            pong_timeout: Duration::from_secs(10),
            drain_grace: Duration::from_secs(10),
            shed_path: shed::DEFAULT_PATH.to_owned(),
        }
    }
}

/// Flags of `ws-demo serve` (each with a `WS_DEMO_*` environment fallback).
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Address of the one listener: WebSocket routes, /metrics and /healthz.
    #[arg(long, env = "WS_DEMO_LISTEN", default_value = "127.0.0.1:9000")]
    pub listen: SocketAddr,

    /// How often every connection is pinged (e.g. 10s, 500ms).
    #[arg(long, env = "WS_DEMO_PING_INTERVAL", default_value = "10s", value_parser = ws_metrics_adapter::config::parse_duration)]
    pub ping_interval: Duration,

    /// A connection silent this long after a ping is closed as ping_timeout.
    #[arg(long, env = "WS_DEMO_PONG_TIMEOUT", default_value = "10s", value_parser = ws_metrics_adapter::config::parse_duration)]
    pub pong_timeout: Duration,

    /// On SIGTERM, time given to clients to answer the 1001 close frame.
    #[arg(long, env = "WS_DEMO_DRAIN_GRACE", default_value = "10s", value_parser = ws_metrics_adapter::config::parse_duration)]
    pub drain_grace: Duration,

    /// Path of the shed endpoint (POST {"apiVersion":"shed.ws-metrics-adapter.io/v1","count":N}
    /// closes N connections with 1013); give the pod the same value in its
    /// ws-metrics-adapter.io/shed-path annotation.
    #[arg(long, env = "WS_DEMO_SHED_PATH", default_value = shed::DEFAULT_PATH)]
    pub shed_path: String,
}

impl ServeArgs {
    /// Checks the timings, reporting every problem at once.
    ///
    /// # Errors
    /// A [`ConfigError`] listing each problem.
    pub fn validate(&self) -> Result<ServerConfig, ConfigError> {
        let mut problems = Vec::new();
        let min = Duration::from_millis(10);
        for (flag, value) in [
            ("--ping-interval", self.ping_interval),
            ("--pong-timeout", self.pong_timeout),
        ] {
            if value < min {
                problems.push(format!(
                    "{flag} {}: must be at least 10ms",
                    humantime::format_duration(value)
                ));
            }
        }
        if let Err(e) = check_shed_path(&self.shed_path) {
            problems.push(format!("--shed-path {:?}: {e}", self.shed_path));
        }
        if !problems.is_empty() {
            return Err(ConfigError { problems });
        }
        Ok(ServerConfig {
            ping_interval: self.ping_interval,
            pong_timeout: self.pong_timeout,
            drain_grace: self.drain_grace,
            shed_path: self.shed_path.clone(),
        })
    }
}

/// Why a shed path cannot be routed: it must be an absolute path of its own.
fn check_shed_path(path: &str) -> Result<(), &'static str> {
    if !path.starts_with('/') || path.len() < 2 {
        return Err("must start with / and name a path, e.g. /shed");
    }
    // What the router takes literally (no `{param}`, `:param` or `*rest` patterns).
    if !path
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '-' | '_' | '.' | '~'))
    {
        return Err("may hold only letters, digits and / - _ . ~");
    }
    let mut taken = ["/metrics", "/healthz"]
        .into_iter()
        .chain(Route::ALL.map(Route::path));
    if taken.any(|t| t == path) {
        return Err("is already a route of the service");
    }
    Ok(())
}

/// Binds a listener with a backlog deep enough for a burst of connections (tokio's default
/// is 1024).
///
/// # Errors
/// The socket, bind or listen error.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// Life cycle of the service; connections watch it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Accepting and serving.
    Serving,
    /// Shutdown requested: no new upgrades, every connection sends a 1001 close frame.
    Draining,
    /// Grace over: every connection ends now.
    Closing,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClosedLabels {
    route: &'static str,
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ShedLabels {
    code: &'static str,
}

/// Per-route metric handles, resolved once so that a connection touches only atomics.
#[derive(Debug)]
struct RouteMetrics {
    active: Gauge,
    opened: Counter,
    closed: [Counter; 5],
    /// Data frames (text or binary) read from clients.
    received: Counter,
    /// Data frames written to clients: echo replies, chat deliveries, ticks.
    sent: Counter,
}

#[derive(Debug)]
struct Inner {
    config: ServerConfig,
    registry: Registry,
    routes: [RouteMetrics; 3],
    /// Shed requests answered by the handler, by status code.
    shed_requests: Family<ShedLabels, Counter>,
    chat: broadcast::Sender<Message>,
    phase: watch::Sender<Phase>,
    /// Notified when the last open connection ends.
    idle: Notify,
    /// Open connections a shed request may still pick, by open order (the key is a sequence
    /// number: smallest = oldest). A connection leaves it when it is picked, when it starts to
    /// close for another reason, and when it ends.
    sheddable: Mutex<BTreeMap<u64, oneshot::Sender<()>>>,
    next_id: AtomicU64,
}

impl Inner {
    fn sheddable(&self) -> MutexGuard<'_, BTreeMap<u64, oneshot::Sender<()>>> {
        // The map stays consistent across a panic (every change is one insert or remove).
        self.sheddable
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The demo WebSocket service. A cheap handle: clones share the connections and metrics.
#[derive(Debug, Clone)]
pub struct DemoServer {
    inner: Arc<Inner>,
}

impl DemoServer {
    /// Creates the service and registers its metrics, every route's series at 0.
    pub fn new(config: ServerConfig) -> Self {
        let mut registry = Registry::default();
        let active = Family::<RouteLabels, Gauge>::default();
        registry.register(
            "websocket_connections_active",
            "Open WebSocket connections, by route",
            active.clone(),
        );
        let opened = Family::<RouteLabels, Counter>::default();
        registry.register(
            "websocket_connections_opened",
            "WebSocket connections upgraded, by route",
            opened.clone(),
        );
        let closed = Family::<ClosedLabels, Counter>::default();
        registry.register(
            "websocket_connections_closed",
            "WebSocket connections ended, by route and reason (client_close, error, ping_timeout, drain, shed)",
            closed.clone(),
        );
        let received = Family::<RouteLabels, Counter>::default();
        registry.register(
            "websocket_messages_received",
            "WebSocket data messages read from clients, by route",
            received.clone(),
        );
        let sent = Family::<RouteLabels, Counter>::default();
        registry.register(
            "websocket_messages_sent",
            "WebSocket data messages written to clients (echo replies, chat deliveries, ticks), by route",
            sent.clone(),
        );
        let shed_requests = Family::<ShedLabels, Counter>::default();
        registry.register(
            "websocket_shed_requests",
            "Shed requests answered, by status code (200, 400, 413, 415)",
            shed_requests.clone(),
        );
        for code in ["200", "400", "413", "415"] {
            let _ = shed_requests.get_or_create(&ShedLabels { code });
        }
        // Creating every series up front declares it at 0, so `route=` series exist before the
        // first connection; the clones share the registered atomics.
        let routes = Route::ALL.map(|route| {
            let labels = RouteLabels {
                route: route.as_str(),
            };
            RouteMetrics {
                active: active.get_or_create(&labels).clone(),
                opened: opened.get_or_create(&labels).clone(),
                closed: CloseReason::ALL.map(|reason| {
                    closed
                        .get_or_create(&ClosedLabels {
                            route: route.as_str(),
                            reason: reason.as_str(),
                        })
                        .clone()
                }),
                received: received.get_or_create(&labels).clone(),
                sent: sent.get_or_create(&labels).clone(),
            }
        });
        let (chat, _) = broadcast::channel(CHAT_BACKLOG);
        let (phase, _) = watch::channel(Phase::Serving);
        Self {
            inner: Arc::new(Inner {
                config,
                registry,
                routes,
                shed_requests,
                chat,
                phase,
                idle: Notify::new(),
                sheddable: Mutex::new(BTreeMap::new()),
                next_id: AtomicU64::new(0),
            }),
        }
    }

    /// The timings and shed path in use.
    pub fn config(&self) -> &ServerConfig {
        &self.inner.config
    }

    /// Every route: `/ws/chat`, `/ws/echo`, `/ws/ticker`, `/metrics`, `/healthz`, and `POST`
    /// [`ServerConfig::shed_path`] (`/shed`).
    ///
    /// # Panics
    /// If the shed path is not a routable path of its own ([`ServeArgs::validate`] checks it).
    pub fn router(&self) -> Router {
        Router::new()
            .route(Route::Chat.path(), get(chat))
            .route(Route::Echo.path(), get(echo))
            .route(Route::Ticker.path(), get(ticker))
            .route("/metrics", get(metrics))
            .route("/healthz", get(healthz))
            .route(
                &self.inner.config.shed_path,
                post(shed_endpoint).layer(DefaultBodyLimit::max(shed::MAX_BODY)),
            )
            .with_state(self.clone())
    }

    /// Asks up to `count` open connections, oldest first, to close with 1013 Try Again Later
    /// ([`shed::CLOSE_CODE`]) and returns how many were asked: fewer than `count` when fewer are
    /// open (connections already closing are not counted), 0 while draining. Each connection
    /// sends its close frame at once and ends when the client answers it (or after
    /// [`ServerConfig::pong_timeout`]); the gauge goes down then, as for any other close.
    ///
    /// Oldest first: a client that has just been moved here (or has just arrived) is not moved
    /// again by the next request, so one rebalancing moves each client at most once, and a new
    /// connection is never closed before its client has finished setting it up.
    pub fn shed(&self, count: u64) -> u64 {
        if self.is_draining() {
            return 0;
        }
        let mut closing = 0;
        let mut sheddable = self.inner.sheddable();
        while closing < count {
            let Some((_, tx)) = sheddable.pop_first() else {
                break;
            };
            // A connection whose task has just ended refuses: it is not closing on our ask.
            if tx.send(()).is_ok() {
                closing += 1;
            }
        }
        closing
    }

    /// Shed requests answered by the handler with status `code` since start (200, 400, 413,
    /// 415; a 405 is answered by the router and not counted).
    pub fn shed_requests(&self, code: u16) -> u64 {
        let code = match code {
            200 => "200",
            400 => "400",
            413 => "413",
            415 => "415",
            _ => return 0,
        };
        self.inner
            .shed_requests
            .get_or_create(&ShedLabels { code })
            .get()
    }

    /// Open connections now, all routes together (the sum of the gauge's series).
    pub fn active(&self) -> u64 {
        self.inner
            .routes
            .iter()
            .map(|r| u64::try_from(r.active.get()).unwrap_or(0))
            .sum()
    }

    /// Open connections now, by route label, in [`Route::ALL`] order.
    pub fn active_by_route(&self) -> Vec<(&'static str, u64)> {
        Route::ALL
            .iter()
            .map(|r| {
                let n = self.inner.routes[r.index()].active.get();
                (r.as_str(), u64::try_from(n).unwrap_or(0))
            })
            .collect()
    }

    /// Connections upgraded on `route` since start.
    pub fn opened(&self, route: Route) -> u64 {
        self.inner.routes[route.index()].opened.get()
    }

    /// Data messages read from clients on `route` since start
    /// (`websocket_messages_received_total{route}`).
    pub fn messages_received(&self, route: Route) -> u64 {
        self.inner.routes[route.index()].received.get()
    }

    /// Data messages written to clients on `route` since start
    /// (`websocket_messages_sent_total{route}`).
    pub fn messages_sent(&self, route: Route) -> u64 {
        self.inner.routes[route.index()].sent.get()
    }

    /// Connections on `route` that ended for `reason` since start.
    pub fn closed(&self, route: Route, reason: CloseReason) -> u64 {
        self.inner.routes[route.index()].closed[reason.index()].get()
    }

    /// True once shutdown has begun (`/healthz` answers 503, upgrades are refused).
    pub fn is_draining(&self) -> bool {
        *self.inner.phase.borrow() != Phase::Serving
    }

    /// Every metric in the classic Prometheus text format (0.0.4).
    pub fn render_text(&self) -> String {
        ws_metrics_adapter::telemetry::openmetrics_to_text(&self.render_openmetrics())
    }

    /// Every metric in the OpenMetrics text format.
    pub fn render_openmetrics(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.inner.registry);
        out
    }

    /// Serves [`router`](Self::router) on `listener` until `shutdown` resolves, then drains:
    /// closes the listener (new connections are refused), refuses upgrades on connections already
    /// accepted, sends every WebSocket a close frame with code 1001, waits up to
    /// [`ServerConfig::drain_grace`] for them to end, and cuts the rest.
    ///
    /// # Errors
    /// Only what the underlying server reports; failed accepts are retried, not returned.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let (stop_accepting, stopped) = oneshot::channel::<()>();
        let mut server = pin!(
            axum::serve(listener, self.router())
                .with_graceful_shutdown(async move {
                    // A dropped sender means the same as a sent signal: stop.
                    let _ = stopped.await;
                })
                .into_future()
        );
        let mut shutdown = pin!(shutdown);
        tokio::select! {
            result = &mut server => return result,
            () = &mut shutdown => {}
        }
        let grace = self.inner.config.drain_grace;
        let deadline = Instant::now() + grace;
        tracing::info!(
            open = self.active(),
            grace = %humantime::format_duration(grace),
            "draining: listener closed, sending close frames (1001)"
        );
        // Draining before the listener closes: an upgrade that races the signal is refused or
        // closed at once rather than missed.
        self.inner.phase.send_replace(Phase::Draining);
        let _ = stop_accepting.send(());
        let drained = async {
            let all_left = self.wait_idle(deadline).await;
            if !all_left {
                tracing::warn!(
                    remaining = self.active(),
                    "drain grace over: closing the remaining connections"
                );
                self.inner.phase.send_replace(Phase::Closing);
                self.wait_idle(Instant::now() + LAST_WORD).await;
            }
        };
        // The HTTP side (in-flight plain requests) finishes alongside, within the same grace.
        let (result, ()) = tokio::join!(
            async {
                match tokio::time::timeout_at(deadline + LAST_WORD, &mut server).await {
                    Ok(r) => r,
                    Err(_) => Ok(()),
                }
            },
            drained
        );
        tracing::info!(remaining = self.active(), "drained");
        result
    }

    /// Waits until no connection is open or `deadline` passes; true if none is open.
    async fn wait_idle(&self, deadline: Instant) -> bool {
        loop {
            let notified = self.inner.idle.notified();
            let mut notified = pin!(notified);
            // Registered before the check, so a last close in between is not missed.
            notified.as_mut().enable();
            if self.active() == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.active() == 0;
            }
        }
    }

    fn upgrade(self, ws: WebSocketUpgrade, route: Route) -> Response {
        if self.is_draining() {
            return text(StatusCode::SERVICE_UNAVAILABLE, "draining\n");
        }
        ws.read_buffer_size(READ_BUFFER_SIZE)
            .write_buffer_size(WRITE_BUFFER_SIZE)
            .max_write_buffer_size(MAX_WRITE_BUFFER_SIZE)
            .max_message_size(MAX_MESSAGE_SIZE)
            .max_frame_size(MAX_FRAME_SIZE)
            .on_upgrade(move |socket| connection(self.inner, socket, route))
    }
}

/// Counts a connection open for as long as it lives: +1 on creation, −1 and one
/// `closed_total{reason}` on drop, whatever path ends the connection (including a panic or the
/// task being dropped with the runtime).
///
/// It also holds the connection's place among those a shed request may pick: the receiver
/// returned by [`open`](Self::open) fires when the connection is picked.
struct ConnectionGuard {
    inner: Arc<Inner>,
    route: Route,
    reason: CloseReason,
    id: u64,
}

impl ConnectionGuard {
    fn open(inner: Arc<Inner>, route: Route) -> (Self, oneshot::Receiver<()>) {
        let m = &inner.routes[route.index()];
        m.active.inc();
        m.opened.inc();
        let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        inner.sheddable().insert(id, tx);
        let guard = Self {
            inner,
            route,
            reason: CloseReason::Error,
            id,
        };
        (guard, rx)
    }

    /// Takes the connection out of those a shed request may pick (it is closing already).
    fn not_sheddable(&self) {
        self.inner.sheddable().remove(&self.id);
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.not_sheddable();
        let m = &self.inner.routes[self.route.index()];
        m.closed[self.reason.index()].inc();
        m.active.dec();
        if self.inner.routes.iter().all(|r| r.active.get() <= 0) {
            self.inner.idle.notify_waiters();
        }
    }
}

/// Sends `msg`, giving up after `limit` (a client that does not read). False if it failed.
async fn send(socket: &mut WebSocket, msg: Message, limit: Duration) -> bool {
    matches!(
        tokio::time::timeout(limit, socket.send(msg)).await,
        Ok(Ok(()))
    )
}

async fn next_chat(chat: &mut Option<broadcast::Receiver<Message>>) -> Option<Message> {
    let Some(rx) = chat else {
        return std::future::pending().await;
    };
    loop {
        match rx.recv().await {
            Ok(m) => return Some(m),
            // A slow reader skips what it missed; the connection stays.
            Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(broadcast::error::RecvError::Closed) => return None,
        }
    }
}

fn going_away(reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame {
        code: close_code::AWAY,
        reason: Utf8Bytes::from_static(reason),
    }))
}

fn try_again_later() -> Message {
    Message::Close(Some(CloseFrame {
        code: shed::CLOSE_CODE,
        reason: Utf8Bytes::from_static(shed::CLOSE_REASON),
    }))
}

/// One upgraded connection, from the completed upgrade to its end.
async fn connection(inner: Arc<Inner>, mut socket: WebSocket, route: Route) {
    let (mut guard, mut shed_rx) = ConnectionGuard::open(inner.clone(), route);
    // False once the shed receiver has fired (picked, or the sender is gone): never polled again.
    let mut sheddable = true;
    let config = inner.config.clone();
    let counts = &inner.routes[route.index()];
    let mut phase = inner.phase.subscribe();
    let mut chat = (route == Route::Chat).then(|| inner.chat.subscribe());
    let start = Instant::now();
    let mut ping_due = start + config.ping_interval;
    let mut pong_deadline: Option<Instant> = None;
    let mut tick_due = (route == Route::Ticker).then_some(start + TICK_PERIOD);
    let mut ticks: u64 = 0;
    // True once we sent our close frame: from then on only the client's reply (or the end of the
    // grace) is awaited.
    let mut closing = false;
    // After a shed close frame: the client has until then to answer it.
    let mut reply_deadline: Option<Instant> = None;
    let timer = tokio::time::sleep_until(ping_due);
    let mut timer = pin!(timer);

    if *phase.borrow_and_update() != Phase::Serving {
        // Upgraded while the drain began.
        guard.not_sheddable();
        guard.reason = CloseReason::Drain;
        if !send(&mut socket, going_away("server draining"), LAST_WORD).await {
            return;
        }
        closing = true;
    }

    loop {
        let mut wake = ping_due;
        if let Some(d) = pong_deadline {
            wake = wake.min(d);
        }
        if let Some(t) = tick_due {
            wake = wake.min(t);
        }
        if let Some(d) = reply_deadline {
            wake = wake.min(d);
        }
        if timer.deadline() != wake {
            timer.as_mut().reset(wake);
        }
        tokio::select! {
            frame = socket.recv() => {
                let msg = match frame {
                    // The TCP stream ended: after a close handshake, or (reason left as error)
                    // without one.
                    None => break,
                    Some(Err(e)) => {
                        tracing::debug!(route = route.as_str(), error = %e, "connection error");
                        break;
                    }
                    Some(Ok(msg)) => msg,
                };
                pong_deadline = None;
                if matches!(msg, Message::Text(_) | Message::Binary(_)) {
                    counts.received.inc();
                }
                match msg {
                    Message::Close(_) => {
                        if !closing {
                            guard.not_sheddable();
                            guard.reason = CloseReason::ClientClose;
                        }
                        // The reply is queued; the next recv() flushes it and returns None.
                    }
                    Message::Text(_) | Message::Binary(_) if closing => {}
                    msg @ (Message::Text(_) | Message::Binary(_)) => match route {
                        Route::Echo => {
                            if !send(&mut socket, msg, config.pong_timeout).await {
                                break;
                            }
                            counts.sent.inc();
                        }
                        Route::Chat => {
                            // No receiver is impossible here (this connection subscribed).
                            let _ = inner.chat.send(msg);
                        }
                        Route::Ticker => {}
                    },
                    // tungstenite answers pings itself; a pong only proves liveness (above).
                    Message::Ping(_) | Message::Pong(_) => {}
                }
            }
            () = &mut timer => {
                let now = Instant::now();
                if reply_deadline.is_some_and(|d| now >= d) {
                    // Shed, and the client never answered the close frame: cut it (still `shed`).
                    break;
                }
                if pong_deadline.is_some_and(|d| now >= d) {
                    guard.reason = CloseReason::PingTimeout;
                    if !closing {
                        let _ = send(&mut socket, going_away("ping timeout"), LAST_WORD).await;
                    }
                    break;
                }
                if now >= ping_due {
                    ping_due = now + config.ping_interval;
                    pong_deadline.get_or_insert(now + config.pong_timeout);
                    if !closing
                        && !send(&mut socket, Message::Ping(Default::default()), config.pong_timeout).await
                    {
                        break;
                    }
                }
                if let Some(due) = tick_due.filter(|t| now >= *t) {
                    ticks += 1;
                    // Skip missed ticks rather than bursting them.
                    tick_due = Some((due + TICK_PERIOD).max(now));
                    let tick = Message::Text(format!("tick {ticks}").into());
                    if !closing {
                        if !send(&mut socket, tick, config.pong_timeout).await {
                            break;
                        }
                        counts.sent.inc();
                    }
                }
            }
            picked = &mut shed_rx, if sheddable => {
                sheddable = false;
                // Err: the entry was removed without a send, i.e. the connection is already
                // closing for another reason.
                if picked.is_ok() && !closing {
                    guard.reason = CloseReason::Shed;
                    closing = true;
                    chat = None;
                    tick_due = None;
                    reply_deadline = Some(Instant::now() + config.pong_timeout);
                    if !send(&mut socket, try_again_later(), LAST_WORD).await {
                        break;
                    }
                }
            }
            msg = next_chat(&mut chat), if !closing => match msg {
                Some(msg) => {
                    if !send(&mut socket, msg, config.pong_timeout).await {
                        break;
                    }
                    counts.sent.inc();
                }
                // Impossible while `inner` (which owns the sender) lives; stop listening.
                None => chat = None,
            },
            changed = phase.changed() => {
                // The sender lives in `inner`, which this task holds: an error cannot happen, but
                // would mean the service is gone, so end.
                let now_phase = if changed.is_ok() { *phase.borrow_and_update() } else { Phase::Closing };
                match now_phase {
                    Phase::Serving => {}
                    Phase::Draining => {
                        if !closing {
                            guard.not_sheddable();
                            if guard.reason != CloseReason::ClientClose {
                                guard.reason = CloseReason::Drain;
                            }
                            closing = true;
                            chat = None;
                            tick_due = None;
                            if !send(&mut socket, going_away("server draining"), LAST_WORD).await {
                                break;
                            }
                        }
                    }
                    Phase::Closing => {
                        if !matches!(guard.reason, CloseReason::ClientClose | CloseReason::Shed) {
                            guard.reason = CloseReason::Drain;
                        }
                        break;
                    }
                }
            }
        }
    }
    // `guard` drops here (and on every early return): the gauge goes down exactly once.
}

fn text(code: StatusCode, body: &'static str) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

async fn chat(State(server): State<DemoServer>, ws: WebSocketUpgrade) -> Response {
    server.upgrade(ws, Route::Chat)
}

async fn echo(State(server): State<DemoServer>, ws: WebSocketUpgrade) -> Response {
    server.upgrade(ws, Route::Echo)
}

async fn ticker(State(server): State<DemoServer>, ws: WebSocketUpgrade) -> Response {
    server.upgrade(ws, Route::Ticker)
}

async fn healthz(State(server): State<DemoServer>) -> Response {
    if server.is_draining() {
        text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    } else {
        text(StatusCode::OK, "ok")
    }
}

/// `POST` shed path: the pod side of the shed contract (`docs/shed-contract.md`).
async fn shed_endpoint(
    State(server): State<DemoServer>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let (code, response) = shed_answer(&server, &headers, body);
    server
        .inner
        .shed_requests
        .get_or_create(&ShedLabels {
            code: match code {
                StatusCode::OK => "200",
                StatusCode::PAYLOAD_TOO_LARGE => "413",
                StatusCode::UNSUPPORTED_MEDIA_TYPE => "415",
                _ => "400",
            },
        })
        .inc();
    response
}

fn shed_answer(
    server: &DemoServer,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> (StatusCode, Response) {
    let refuse = |code: StatusCode, reason: String| {
        let response = (
            code,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("{reason}\n"),
        )
            .into_response();
        (code, response)
    };
    // Only JSON: a browser cannot send that cross-origin without a CORS preflight.
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return refuse(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type must be application/json".into(),
        );
    }
    let body = match body {
        Ok(b) => b,
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("body larger than {} bytes", shed::MAX_BODY),
            );
        }
        Err(e) => return refuse(StatusCode::BAD_REQUEST, e.body_text()),
    };
    let request = match shed::parse_request(&body) {
        Ok(r) => r,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let closing = server.shed(request.count.get());
    tracing::info!(
        asked = request.count.get(),
        closing,
        open = server.active(),
        "shed request: closing connections with 1013"
    );
    let response = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        ShedResponse { closing }.to_json(),
    )
        .into_response();
    (StatusCode::OK, response)
}

/// Prometheus text by default; OpenMetrics for scrapers that ask for it.
async fn metrics(State(server): State<DemoServer>, headers: HeaderMap) -> Response {
    ws_metrics_adapter::telemetry::exposition_response(&headers, || server.render_openmetrics())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    async fn get(server: &DemoServer, path: &str) -> (StatusCode, String) {
        let resp = server
            .router()
            .oneshot(
                axum::http::Request::get(path)
                    .body(Body::empty())
                    .expect("request"),
            )
            .await
            .expect("infallible");
        let status = resp.status();
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn metrics_declare_every_route_at_zero_before_any_connection() {
        let server = DemoServer::new(ServerConfig::default());
        let (status, body) = get(&server, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            body.contains("# TYPE websocket_connections_active gauge"),
            "{body}"
        );
        assert!(
            body.contains("# TYPE websocket_connections_opened_total counter"),
            "{body}"
        );
        for route in Route::ALL {
            let r = route.as_str();
            assert!(
                body.contains(&format!(
                    "websocket_connections_active{{route=\"{r}\"}} 0\n"
                )),
                "{body}"
            );
            assert!(
                body.contains(&format!(
                    "websocket_connections_opened_total{{route=\"{r}\"}} 0\n"
                )),
                "{body}"
            );
            for reason in CloseReason::ALL {
                let line = format!(
                    "websocket_connections_closed_total{{route=\"{r}\",reason=\"{}\"}} 0\n",
                    reason.as_str()
                );
                assert!(body.contains(&line), "missing {line} in {body}");
            }
        }
        assert!(!body.contains("# EOF"), "{body}");
        assert_eq!(server.active(), 0);
        assert_eq!(
            server.active_by_route(),
            vec![("chat", 0), ("echo", 0), ("ticker", 0)]
        );
    }

    #[tokio::test]
    async fn healthz_is_ok_while_serving_and_503_once_draining() {
        let server = DemoServer::new(ServerConfig::default());
        assert_eq!(
            get(&server, "/healthz").await,
            (StatusCode::OK, "ok".into())
        );
        server.inner.phase.send_replace(Phase::Draining);
        assert!(server.is_draining());
        let (status, body) = get(&server, "/healthz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body, "draining\n");
    }

    async fn post(
        server: &DemoServer,
        path: &str,
        content_type: Option<&str>,
        body: impl Into<Body>,
    ) -> (StatusCode, Option<String>, String) {
        let mut req = axum::http::Request::post(path);
        if let Some(ct) = content_type {
            req = req.header(header::CONTENT_TYPE, ct);
        }
        let resp = server
            .router()
            .oneshot(req.body(body.into()).expect("request"))
            .await
            .expect("infallible");
        let status = resp.status();
        let ct = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().expect("ASCII content type").to_owned());
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        (status, ct, String::from_utf8_lossy(&body).into_owned())
    }

    const JSON: Option<&str> = Some("application/json");

    #[tokio::test]
    async fn shed_answers_how_many_it_is_closing_and_refuses_every_bad_request_precisely() {
        let server = DemoServer::new(ServerConfig::default());
        let v1 = shed::API_VERSION;
        // No connection: a valid request is answered, closing none.
        assert_eq!(
            post(
                &server,
                "/shed",
                JSON,
                format!(r#"{{"apiVersion":"{v1}","count":3}}"#)
            )
            .await,
            (
                StatusCode::OK,
                Some("application/json".into()),
                format!(r#"{{"apiVersion":"{v1}","closing":0}}"#)
            )
        );
        for (content_type, body, code, needle) in [
            (JSON, "{".to_owned(), 400, "body is not JSON"),
            (
                JSON,
                r#"{"apiVersion":"shed.ws-metrics-adapter.io/v2","count":1}"#.into(),
                400,
                "this server supports \"shed.ws-metrics-adapter.io/v1\"",
            ),
            (
                JSON,
                format!(r#"{{"apiVersion":"{v1}"}}"#),
                400,
                "count is missing",
            ),
            (
                JSON,
                format!(r#"{{"apiVersion":"{v1}","count":0}}"#),
                400,
                "count 0",
            ),
            (
                JSON,
                format!(r#"{{"apiVersion":"{v1}","count":-1}}"#),
                400,
                "count -1",
            ),
            (
                JSON,
                format!(
                    r#"{{"apiVersion":"{v1}","count":1,"pad":"{}"}}"#,
                    "x".repeat(1024)
                ),
                413,
                "body larger than 1024 bytes",
            ),
            (
                Some("text/plain"),
                format!(r#"{{"apiVersion":"{v1}","count":1}}"#),
                415,
                "Content-Type must be application/json",
            ),
            (
                None,
                format!(r#"{{"apiVersion":"{v1}","count":1}}"#),
                415,
                "application/json",
            ),
        ] {
            let (status, ct, text) = post(&server, "/shed", content_type, body.clone()).await;
            assert_eq!(status.as_u16(), code, "{body}: {text}");
            assert_eq!(ct.as_deref(), Some("text/plain; charset=utf-8"), "{body}");
            assert!(text.contains(needle), "{body}: {needle:?} not in {text:?}");
        }
        // A parameter on the media type is fine.
        let (status, _, _) = post(
            &server,
            "/shed",
            Some("application/json; charset=utf-8"),
            format!(r#"{{"apiVersion":"{v1}","count":1}}"#),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        // Other methods: 405 from the router, naming POST.
        let resp = server
            .router()
            .oneshot(
                axum::http::Request::get("/shed")
                    .body(Body::empty())
                    .expect("request"),
            )
            .await
            .expect("infallible");
        assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(
            resp.headers().get(header::ALLOW).map(|v| v.as_bytes()),
            Some(&b"POST"[..])
        );
        assert_eq!(server.shed_requests(200), 2);
        assert_eq!(server.shed_requests(400), 5);
        assert_eq!(server.shed_requests(413), 1);
        assert_eq!(server.shed_requests(415), 2);
        let (_, metrics) = get(&server, "/metrics").await;
        assert!(
            metrics.contains("websocket_shed_requests_total{code=\"400\"} 5\n"),
            "{metrics}"
        );
    }

    #[tokio::test]
    async fn shed_picks_the_oldest_open_connections_and_none_while_draining() {
        let server = DemoServer::new(ServerConfig::default());
        let mut conns: Vec<_> = (0..4)
            .map(|_| ConnectionGuard::open(server.inner.clone(), Route::Echo))
            .collect();
        assert_eq!(server.shed(2), 2);
        let picked: Vec<bool> = conns
            .iter_mut()
            .map(|(_, rx)| rx.try_recv().is_ok())
            .collect();
        assert_eq!(picked, [true, true, false, false]);
        // Those picked are not picked again; one closing for another reason is not counted.
        conns[2].0.not_sheddable();
        assert_eq!(server.shed(5), 1);
        assert!(conns[3].1.try_recv().is_ok());
        assert_eq!(server.shed(1), 0);
        // A new connection is sheddable; while draining nothing is.
        let mut late = ConnectionGuard::open(server.inner.clone(), Route::Chat);
        server.inner.phase.send_replace(Phase::Draining);
        assert_eq!(server.shed(1), 0);
        assert!(late.1.try_recv().is_err());
    }

    #[test]
    fn shed_path_must_be_a_plain_path_of_its_own() {
        let args = |shed_path: &str| ServeArgs {
            listen: "127.0.0.1:0".parse().expect("addr"),
            ping_interval: Duration::from_secs(1),
            pong_timeout: Duration::from_secs(1),
            drain_grace: Duration::from_secs(1),
            shed_path: shed_path.into(),
        };
        assert_eq!(
            args("/admin/shed-v1").validate().expect("valid").shed_path,
            "/admin/shed-v1"
        );
        for (bad, needle) in [
            ("shed", "must start with /"),
            ("/", "must start with /"),
            ("/shed/{n}", "only letters"),
            ("/shed?x=1", "only letters"),
            ("/metrics", "already a route"),
            ("/ws/echo", "already a route"),
        ] {
            let err = args(bad).validate().expect_err(bad).to_string();
            assert!(err.contains(&format!("--shed-path {bad:?}")), "{err}");
            assert!(err.contains(needle), "{bad}: {needle:?} not in {err}");
        }
    }

    #[tokio::test]
    async fn guard_counts_each_connection_down_exactly_once_with_its_reason() {
        let server = DemoServer::new(ServerConfig::default());
        let (a, _) = ConnectionGuard::open(server.inner.clone(), Route::Echo);
        let (mut b, _) = ConnectionGuard::open(server.inner.clone(), Route::Echo);
        assert_eq!(server.active(), 2);
        b.reason = CloseReason::PingTimeout;
        drop(b);
        assert_eq!(server.active(), 1);
        assert_eq!(server.closed(Route::Echo, CloseReason::PingTimeout), 1);
        drop(a);
        assert_eq!(server.active(), 0);
        assert_eq!(server.closed(Route::Echo, CloseReason::Error), 1);
        assert_eq!(server.opened(Route::Echo), 2);
    }
}
