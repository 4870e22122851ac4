//! The accept loop both listeners share, with every resource a caller can make it spend bounded:
//! connections (a cap, with the oldest unproven connection closed to make room), request heads
//! (size and time), idle connections, HTTP/2 streams and windows, and accept errors (backed off,
//! logged at a rate).
//!
//! "Proven" means the connection got a successful answer from the API under `/apis` (which, in
//! cluster mode, only an authenticated and authorized caller gets): slow heads, idle TLS,
//! unauthenticated or unauthorized floods and health probes are what gets evicted at the cap,
//! never a reader that already got its metrics (the aggregator keeps such connections open and
//! reuses them). The health listener has no proven connections: at its cap the oldest goes.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use axum::Router;
use clap::Args;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use super::client_cert;

/// Flags of the listener limits (both listeners).
#[derive(Debug, Clone, Args)]
pub struct ListenerArgs {
    /// Connections open at once on each listener. At the cap, the oldest connection that has not
    /// yet had a successful API answer is closed to make room (on the health listener, the oldest
    /// connection); when every slot holds such a reader, new ones wait in the kernel's backlog.
    #[arg(
        long,
        env = "WS_METRICS_ADAPTER_MAX_CONNECTIONS",
        default_value_t = 1000
    )]
    pub max_connections: usize,

    /// Largest request head (request line and headers; HTTP/2 header list) read. Larger heads
    /// are refused with 431 (a stream reset over HTTP/2). Unit: bytes.
    #[arg(long, env = "WS_METRICS_ADAPTER_MAX_REQUEST_HEADER_BYTES", default_value_t = 16 * 1024)]
    pub max_request_header_bytes: usize,

    /// Time allowed for the TLS handshake plus the first request's head, and for each later
    /// HTTP/1.1 request head (hyper also counts an idle keep-alive wait against it).
    #[arg(long, env = "WS_METRICS_ADAPTER_REQUEST_HEADER_TIMEOUT", default_value = "10s", value_parser = crate::config::value::parse_duration)]
    pub request_header_timeout: Duration,

    /// A connection with no request in flight for this long is closed (Go's http.Server
    /// IdleTimeout in the generic apiserver: 90s).
    #[arg(long, env = "WS_METRICS_ADAPTER_IDLE_CONNECTION_TIMEOUT", default_value = "90s", value_parser = crate::config::value::parse_duration)]
    pub idle_connection_timeout: Duration,

    /// Interval of HTTP/2 keep-alive pings; a peer that does not answer one within
    /// --http2-keepalive-timeout is disconnected.
    #[arg(long, env = "WS_METRICS_ADAPTER_HTTP2_KEEPALIVE_INTERVAL", default_value = "30s", value_parser = crate::config::value::parse_duration)]
    pub http2_keepalive_interval: Duration,

    /// See --http2-keepalive-interval.
    #[arg(long, env = "WS_METRICS_ADAPTER_HTTP2_KEEPALIVE_TIMEOUT", default_value = "10s", value_parser = crate::config::value::parse_duration)]
    pub http2_keepalive_timeout: Duration,

    /// Concurrent HTTP/2 streams per connection (the generic apiserver's flag; Go's default).
    #[arg(
        long,
        env = "WS_METRICS_ADAPTER_HTTP2_MAX_STREAMS_PER_CONNECTION",
        default_value_t = 250
    )]
    pub http2_max_streams_per_connection: u32,
}

/// Largest accepted --max-connections: far above the 20,000 file descriptors a process gets here,
/// far below tokio's semaphore limit.
const MAX_CONNECTIONS: usize = 1_000_000;
/// Smallest accepted --max-request-header-bytes: hyper's smallest read buffer.
const MIN_HEADER_BYTES: usize = 8 * 1024;
/// Largest accepted --max-request-header-bytes: Go's `http.DefaultMaxHeaderBytes`.
const MAX_HEADER_BYTES: usize = 1 << 20;
/// HTTP/2 flow-control windows. Every request here is a GET: a body is never read, so a peer
/// may buffer at most this much in us per stream and per connection. Unit: bytes.
const H2_STREAM_WINDOW: u32 = 4 * 1024;
const H2_CONNECTION_WINDOW: u32 = 16 * 1024;

/// Validated listener limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once.
    pub max_connections: usize,
    /// Request head cap. Unit: bytes.
    pub max_header_bytes: usize,
    /// Handshake plus first head; each HTTP/1.1 head.
    pub header_timeout: Duration,
    /// Idle connection lifetime.
    pub idle_timeout: Duration,
    /// HTTP/2 ping interval.
    pub h2_keepalive_interval: Duration,
    /// HTTP/2 ping answer deadline.
    pub h2_keepalive_timeout: Duration,
    /// HTTP/2 concurrent streams.
    pub h2_max_streams: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 1000,
            max_header_bytes: 16 * 1024,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(90),
            h2_keepalive_interval: Duration::from_secs(30),
            h2_keepalive_timeout: Duration::from_secs(10),
            h2_max_streams: 250,
        }
    }
}

impl ListenerArgs {
    /// The limits, with every problem pushed to `problems`.
    pub fn limits(&self, problems: &mut Vec<String>) -> Limits {
        if !(1..=MAX_CONNECTIONS).contains(&self.max_connections) {
            problems.push(format!(
                "--max-connections must be between 1 and {MAX_CONNECTIONS}, got {}",
                self.max_connections
            ));
        }
        if !(MIN_HEADER_BYTES..=MAX_HEADER_BYTES).contains(&self.max_request_header_bytes) {
            problems.push(format!(
                "--max-request-header-bytes must be between {MIN_HEADER_BYTES} and {MAX_HEADER_BYTES}, got {}",
                self.max_request_header_bytes
            ));
        }
        for (flag, d) in [
            ("--request-header-timeout", self.request_header_timeout),
            ("--idle-connection-timeout", self.idle_connection_timeout),
            ("--http2-keepalive-interval", self.http2_keepalive_interval),
            ("--http2-keepalive-timeout", self.http2_keepalive_timeout),
        ] {
            if d.is_zero() {
                problems.push(format!("{flag} must be more than 0"));
            }
        }
        if self.http2_max_streams_per_connection == 0 {
            problems.push("--http2-max-streams-per-connection must be at least 1".into());
        }
        Limits {
            max_connections: self.max_connections.clamp(1, MAX_CONNECTIONS),
            max_header_bytes: self
                .max_request_header_bytes
                .clamp(MIN_HEADER_BYTES, MAX_HEADER_BYTES),
            header_timeout: self.request_header_timeout,
            idle_timeout: self.idle_connection_timeout,
            h2_keepalive_interval: self.http2_keepalive_interval,
            h2_keepalive_timeout: self.http2_keepalive_timeout,
            h2_max_streams: self.http2_max_streams_per_connection.max(1),
        }
    }
}

/// What a connection has done, shared by its task, its watchdog and the eviction list.
#[derive(Debug)]
struct ConnState {
    opened: Instant,
    /// Milliseconds since `opened` of the last request start or end.
    last_activity_ms: AtomicU64,
    in_flight: AtomicUsize,
    /// Some request got a successful answer from the API: the peer is a real, authorized reader.
    proven: AtomicBool,
    /// Set when the connection is to be closed (eviction).
    close: Notify,
}

impl ConnState {
    fn new() -> Self {
        Self {
            opened: Instant::now(),
            last_activity_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            proven: AtomicBool::new(false),
            close: Notify::new(),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_activity_ms.store(ms, Ordering::SeqCst);
    }

    /// When the watchdog must look again, or `None` when the connection is to be closed now.
    fn next_check(&self, limits: &Limits, now: Instant) -> Option<Instant> {
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return Some(now + limits.idle_timeout.min(limits.header_timeout));
        }
        let last =
            self.opened + Duration::from_millis(self.last_activity_ms.load(Ordering::SeqCst));
        // Before any request: the handshake and the first head get --request-header-timeout.
        let allowed = if self.proven.load(Ordering::SeqCst) || last > self.opened {
            limits.idle_timeout
        } else {
            limits.header_timeout
        };
        let deadline = last + allowed;
        (deadline > now).then_some(deadline)
    }
}

/// The connections of one listener that may be evicted at the cap, oldest first.
#[derive(Debug, Default)]
struct Registry {
    conns: Mutex<Vec<Weak<ConnState>>>,
}

impl Registry {
    fn add(&self, conn: &Arc<ConnState>) {
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        conns.retain(|w| w.strong_count() > 0);
        conns.push(Arc::downgrade(conn));
    }

    /// Closes the oldest connection not proven yet; returns whether there was one.
    fn evict_oldest_unproven(&self) -> bool {
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        conns.retain(|w| w.strong_count() > 0);
        // An unproven connection with no request in flight first (a slow head, idle TLS); one
        // that is being answered only when there is no other.
        let unproven = |idle_only: bool| {
            conns.iter().position(|w| {
                w.upgrade().is_some_and(|c| {
                    !c.proven.load(Ordering::SeqCst)
                        && (!idle_only || c.in_flight.load(Ordering::SeqCst) == 0)
                })
            })
        };
        let victim = unproven(true).or_else(|| unproven(false));
        match victim {
            Some(i) => {
                if let Some(c) = conns.remove(i).upgrade() {
                    c.close.notify_one();
                }
                true
            }
            None => false,
        }
    }
}

/// Logs accept errors at most once per period, with the number suppressed meanwhile.
#[derive(Debug)]
struct AcceptErrorLog {
    last: Option<Instant>,
    suppressed: u64,
    backoff: Duration,
}

const ACCEPT_LOG_PERIOD: Duration = Duration::from_secs(10);
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(5);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

impl AcceptErrorLog {
    fn new() -> Self {
        Self {
            last: None,
            suppressed: 0,
            backoff: ACCEPT_BACKOFF_MIN,
        }
    }

    /// Notes a failed accept; returns how long to wait before the next one.
    fn failed(&mut self, listener: &'static str, error: &std::io::Error) -> Duration {
        let now = Instant::now();
        if self
            .last
            .is_none_or(|t| now.duration_since(t) >= ACCEPT_LOG_PERIOD)
        {
            tracing::warn!(
                listener,
                %error,
                suppressed = self.suppressed,
                "accept failed (file descriptors exhausted?); backing off, logged at most every 10s"
            );
            self.last = Some(now);
            self.suppressed = 0;
        } else {
            self.suppressed += 1;
        }
        let wait = self.backoff;
        self.backoff = (self.backoff * 2).min(ACCEPT_BACKOFF_MAX);
        wait
    }

    fn succeeded(&mut self) {
        self.backoff = ACCEPT_BACKOFF_MIN;
    }
}

/// Serves `app` on `listener` (over TLS when `tls` is given) within `limits` until `shutdown`
/// resolves, then lets in-flight requests finish for up to `grace`.
/// What a listener serves: its name in logs, TLS or plain, and whether a successful API read
/// proves a connection (the API listener; never the health listener).
pub(crate) struct Endpoint {
    pub(crate) name: &'static str,
    pub(crate) tls: Option<TlsAcceptor>,
    pub(crate) proves_readers: bool,
}

pub(crate) async fn serve(
    endpoint: Endpoint,
    listener: TcpListener,
    app: Router,
    limits: Limits,
    grace: Duration,
    shutdown: impl Future<Output = ()>,
) {
    let Endpoint {
        name,
        tls,
        proves_readers,
    } = endpoint;
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.max_header_bytes);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(limits.h2_max_streams)
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONNECTION_WINDOW)
        .keep_alive_interval(limits.h2_keepalive_interval)
        .keep_alive_timeout(limits.h2_keepalive_timeout);
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let registry = Arc::new(Registry::default());
    let mut errors = AcceptErrorLog::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => {
                    errors.succeeded();
                    a
                }
                Err(e) => {
                    let wait = errors.failed(name, &e);
                    tokio::select! {
                        () = &mut shutdown => break,
                        () = tokio::time::sleep(wait) => {}
                    }
                    continue;
                }
            },
        };
        // At the cap, make room by closing the oldest unproven connection; when every slot is
        // a proven reader, this connection waits for one to end, and later ones wait in the
        // kernel's backlog meanwhile.
        let permit = match permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                registry.evict_oldest_unproven();
                tokio::select! {
                    () = &mut shutdown => break,
                    p = permits.clone().acquire_owned() => match p {
                        Ok(p) => p,
                        Err(_) => break,
                    },
                }
            }
        };
        let _ = stream.set_nodelay(true);
        let state = Arc::new(ConnState::new());
        registry.add(&state);
        let tls = tls.clone();
        let app = app.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _permit = permit;
            let watchdog = watchdog(state.clone(), limits);
            tokio::pin!(watchdog);
            tokio::select! {
                () = &mut watchdog => {
                    tracing::debug!(%peer, listener = name, "connection closed by a limit");
                }
                () = serve_one(stream, peer, tls, proves_readers, app, &builder, watcher, state.clone(), limits) => {}
            }
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(grace) => tracing::warn!(listener = name, "shutdown grace period over; closing remaining connections"),
    }
}

/// Resolves when the connection is to be closed: evicted, or past its header or idle deadline.
async fn watchdog(state: Arc<ConnState>, limits: Limits) {
    loop {
        let Some(next) = state.next_check(&limits, Instant::now()) else {
            return;
        };
        tokio::select! {
            () = state.close.notified() => return,
            () = tokio::time::sleep_until(next) => {}
        }
    }
}

/// Counts a request in flight from its start until its response is produced.
struct InFlight(Arc<ConnState>);

impl InFlight {
    fn start(state: &Arc<ConnState>) -> Self {
        state.in_flight.fetch_add(1, Ordering::SeqCst);
        state.touch();
        Self(state.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

#[allow(clippy::too_many_arguments)]
async fn serve_one(
    stream: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    tls: Option<TlsAcceptor>,
    proves_readers: bool,
    app: Router,
    builder: &auto::Builder<TokioExecutor>,
    watcher: hyper_util::server::graceful::Watcher,
    state: Arc<ConnState>,
    limits: Limits,
) {
    let counted = {
        let state = state.clone();
        tower::service_fn(move |req: http::Request<hyper::body::Incoming>| {
            let guard = InFlight::start(&state);
            let app = app.clone();
            let state = state.clone();
            async move {
                // Only a successful read of the API proves a reader: behind authentication and
                // authorization in cluster mode. Health paths, errors and 401/403 do not, so
                // callers without credentials cannot hold slots that eviction spares.
                let reads_api = proves_readers && req.uri().path().starts_with("/apis");
                let resp = app.oneshot(req.map(axum::body::Body::new)).await;
                if reads_api
                    && let Ok(r) = &resp
                    && r.status().is_success()
                {
                    state.proven.store(true, Ordering::SeqCst);
                }
                drop(guard);
                resp
            }
        })
    };
    match tls {
        None => {
            let conn = builder.serve_connection_with_upgrades(
                TokioIo::new(stream),
                TowerToHyperService::new(counted),
            );
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        }
        Some(acceptor) => {
            let tls =
                match tokio::time::timeout(limits.header_timeout, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                };
            // The client's certificates (if any) go to every request of the connection.
            let certs = tls.get_ref().1.peer_certificates().map(|chain| {
                client_cert::PeerCertificates(
                    chain.iter().map(|c| c.clone().into_owned()).collect(),
                )
            });
            let service = TowerToHyperService::new(counted.map_request(
                move |mut req: http::Request<hyper::body::Incoming>| {
                    if let Some(certs) = &certs {
                        req.extensions_mut().insert(certs.clone());
                    }
                    req
                },
            ));
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unanswered_connection_gets_the_header_timeout_and_an_answered_one_the_idle_timeout() {
        let limits = Limits {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(90),
            ..Limits::default()
        };
        let s = ConnState::new();
        let now = s.opened;
        assert_eq!(
            s.next_check(&limits, now),
            Some(now + Duration::from_secs(10))
        );
        assert_eq!(s.next_check(&limits, now + Duration::from_secs(10)), None);
        s.proven.store(true, Ordering::SeqCst);
        assert_eq!(
            s.next_check(&limits, now),
            Some(now + Duration::from_secs(90))
        );
        s.in_flight.store(1, Ordering::SeqCst);
        assert!(
            s.next_check(&limits, now + Duration::from_secs(1000))
                .is_some()
        );
    }

    /// The connection's watchdog would wake: `notify_one` left it a permit.
    fn assert_told_to_close(state: &ConnState, what: &str) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(5), state.close.notified())
                .await
                .unwrap_or_else(|_| panic!("{what} was not told to close"));
        });
    }

    #[test]
    fn eviction_takes_the_oldest_unproven_connection_and_spares_proven_ones() {
        let r = Registry::default();
        let a = Arc::new(ConnState::new());
        let b = Arc::new(ConnState::new());
        let c = Arc::new(ConnState::new());
        a.proven.store(true, Ordering::SeqCst);
        for s in [&a, &b, &c] {
            r.add(s);
        }
        assert!(r.evict_oldest_unproven());
        assert_told_to_close(&b, "b, the oldest unproven");
        assert!(r.evict_oldest_unproven(), "c is next");
        assert!(!r.evict_oldest_unproven(), "a is proven and stays");
    }

    #[test]
    fn eviction_spares_a_connection_being_answered_while_an_idle_one_exists() {
        let r = Registry::default();
        let busy = Arc::new(ConnState::new());
        let idle = Arc::new(ConnState::new());
        busy.in_flight.store(1, Ordering::SeqCst);
        r.add(&busy);
        r.add(&idle);
        assert!(r.evict_oldest_unproven());
        assert_told_to_close(&idle, "the idle one, first");
        // With no idle one left, the busy one goes.
        assert!(r.evict_oldest_unproven());
        assert!(!r.evict_oldest_unproven());
    }

    #[test]
    fn limits_are_validated_together() {
        let args = ListenerArgs {
            max_connections: usize::MAX,
            max_request_header_bytes: 10,
            request_header_timeout: Duration::ZERO,
            idle_connection_timeout: Duration::from_secs(1),
            http2_keepalive_interval: Duration::from_secs(1),
            http2_keepalive_timeout: Duration::from_secs(1),
            http2_max_streams_per_connection: 0,
        };
        let mut problems = Vec::new();
        let _ = args.limits(&mut problems);
        assert_eq!(problems.len(), 4, "{problems:?}");
    }

    #[tokio::test]
    async fn accept_errors_back_off_and_are_logged_at_a_rate() {
        let mut log = AcceptErrorLog::new();
        let e = std::io::Error::other("EMFILE");
        let waits: Vec<Duration> = (0..10).map(|_| log.failed("test", &e)).collect();
        assert_eq!(waits[0], ACCEPT_BACKOFF_MIN);
        assert!(waits.windows(2).all(|w| w[1] >= w[0]));
        assert_eq!(*waits.last().expect("ten"), ACCEPT_BACKOFF_MAX);
        assert_eq!(
            log.suppressed, 9,
            "one line for ten failures within the period"
        );
        log.succeeded();
        assert_eq!(log.failed("test", &e), ACCEPT_BACKOFF_MIN);
    }
}
