//! A hostile pod: a raw TCP server on `127.0.0.1:0` (no hyper, so it can misbehave at the byte
//! level) whose answer is switched at runtime between a good exposition and the broken framings,
//! bodies and timings of issue 11. Counts accepted connections and requests.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The family every mode serves.
pub const FAMILY: &str = "websocket_connections_active";

/// The value of the good body's one series of [`FAMILY`].
pub const GOOD_VALUE: u64 = 12;

/// What the pod answers to the next request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// 200 with [`good_body`] and a `Content-Length`; the connection is kept alive.
    Good,
    /// 200 close-delimited (no `Content-Length`, no chunking): [`good_body`] cut after byte
    /// `cuts[k % cuts.len()]` on the k-th request in this mode, then a clean close (FIN).
    TruncatedFin(Vec<usize>),
    /// As [`Mode::TruncatedFin`], then a reset (RST, `SO_LINGER` 0) instead of a FIN.
    TruncatedRst(Vec<usize>),
    /// As [`Mode::TruncatedFin`], but over TLS the TCP connection is closed without a TLS
    /// `close_notify` (over plain TCP the same as [`Mode::TruncatedFin`]).
    TruncatedNoCloseNotify(Vec<usize>),
    /// 200 with a `Content-Length` this many bytes larger than the body sent, then FIN.
    ShortContentLength(usize),
    /// 200 chunked: the whole body in chunks but no terminating `0` chunk, then FIN.
    ChunkedWithoutLastChunk,
    /// 200 with [`FAMILY`]'s one series written twice (the same label set).
    DuplicateSeries,
    /// 200 with a series stamped 1 s after the epoch (`… 5 1000`, in 1970).
    Timestamp1970,
    /// 200 with a series stamped with the time of the request (value 5).
    TimestampNow,
    /// 200 close-delimited body of about this many bytes of valid exposition. Unit: bytes.
    Huge(usize),
    /// 200 close-delimited body that never ends (valid comment lines, as fast as it is read).
    Endless,
    /// [`good_body`] with a `Content-Length`, one byte every 100 ms.
    Trickle,
    /// Read the request, never answer (until the client goes away).
    Hang,
    /// Alternate: odd requests in this mode get [`Mode::Good`], even ones the inner mode.
    Flip(Box<Mode>),
}

/// The good exposition: another family first, then [`FAMILY`] with `route="chat"` =
/// [`GOOD_VALUE`].
pub fn good_body() -> String {
    format!(
        "# HELP process_open_fds Number of open file descriptors.\n\
         # TYPE process_open_fds gauge\n\
         process_open_fds 7\n\
         # HELP {FAMILY} Open WebSocket connections.\n\
         # TYPE {FAMILY} gauge\n\
         {FAMILY}{{route=\"chat\"}} {GOOD_VALUE}\n"
    )
}

/// Cut points of [`good_body`] that no close-delimited body may be served from: before the first
/// byte, inside the first line, after [`FAMILY`]'s `# HELP` line, after its `# TYPE` line (read
/// as an explicit 0 before issue 11), inside the number (`1` for `12`), and just before the last
/// line feed.
pub fn bad_cuts() -> Vec<usize> {
    let body = good_body();
    let after = |needle: &str| body.find(needle).expect("needle in body") + needle.len();
    vec![
        0,
        10,
        after(&format!("# HELP {FAMILY} Open WebSocket connections.\n")),
        after(&format!("# TYPE {FAMILY} gauge\n")),
        after(&format!("{FAMILY}{{route=\"chat\"}} 1")),
        body.len() - 1,
    ]
}

/// A running hostile pod; aborted when dropped.
pub struct HostilePod {
    /// Where it listens.
    pub addr: SocketAddr,
    /// For a TLS pod: the directory holding its CA (`ca.crt`) and serving pair.
    tls_dir: Option<tempfile::TempDir>,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

struct State {
    mode: Mutex<Mode>,
    /// Requests received in the current mode (reset by `set`).
    in_mode: AtomicUsize,
    accepted: AtomicUsize,
    requests: AtomicUsize,
}

impl Drop for HostilePod {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl HostilePod {
    /// Starts a hostile pod on 127.0.0.1:0 in `mode`, plain HTTP.
    pub async fn start(mode: Mode) -> Self {
        Self::start_with(mode, None).await
    }

    /// Starts a hostile pod on 127.0.0.1:0 in `mode`, behind TLS with a certificate for
    /// 127.0.0.1 from its own CA ([`HostilePod::ca_path`]).
    pub async fn start_tls(mode: Mode) -> Self {
        use ws_metrics_adapter::server::tls;
        tls::install_provider();
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = tls::ensure_self_signed(dir.path(), &[]).expect("pod certificate");
        let pair = tls::load_pair(&cert, &key).expect("pod key pair");
        let config =
            tls::server_config(Arc::new(tls::CertResolver::new(pair))).expect("pod TLS config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let mut pod = Self::start_with(mode, Some(acceptor)).await;
        pod.tls_dir = Some(dir);
        pod
    }

    async fn start_with(mode: Mode, tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind hostile pod");
        let addr = listener.local_addr().expect("local addr");
        let state = Arc::new(State {
            mode: Mutex::new(mode),
            in_mode: AtomicUsize::new(0),
            accepted: AtomicUsize::new(0),
            requests: AtomicUsize::new(0),
        });
        let shared = state.clone();
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                shared.accepted.fetch_add(1, Ordering::SeqCst);
                // Connections die with the pod: the set aborts them when this task is aborted.
                let shared = shared.clone();
                match tls.clone() {
                    None => connections.spawn(serve_connection(stream, shared, |s| s)),
                    Some(acceptor) => connections.spawn(async move {
                        if let Ok(stream) = acceptor.accept(stream).await {
                            serve_connection(stream, shared, |s| s.get_ref().0).await;
                        }
                    }),
                };
                while connections.try_join_next().is_some() {}
            }
        });
        Self {
            addr,
            tls_dir: None,
            state,
            task,
        }
    }

    /// Metrics URL of the pod (`https://` for a TLS pod).
    pub fn url(&self) -> String {
        let scheme = if self.tls_dir.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}/metrics", self.addr)
    }

    /// The CA certificate of a TLS pod.
    pub fn ca_path(&self) -> Option<std::path::PathBuf> {
        let dir = self.tls_dir.as_ref()?;
        Some(dir.path().join(ws_metrics_adapter::server::tls::CA_FILE))
    }

    /// Switches what the pod answers from the next request on.
    pub fn set(&self, mode: Mode) {
        *self.state.mode.lock().expect("mode lock") = mode;
        self.state.in_mode.store(0, Ordering::SeqCst);
    }

    /// TCP connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.state.accepted.load(Ordering::SeqCst)
    }

    /// Request heads received so far, in every mode.
    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }
}

/// Reads one request head (up to the blank line); `false` when the client closed or sent junk.
async fn read_request<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut Vec<u8>) -> bool {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            buf.drain(..end + 4);
            return true;
        }
        if buf.len() > 64 * 1024 {
            return false;
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// What to do with the connection after answering.
enum After {
    KeepAlive,
    /// A clean close: TLS `close_notify` (over TLS), then FIN.
    Fin,
    /// Drop the connection: FIN without a TLS `close_notify`.
    Drop,
    /// Reset: RST.
    Rst,
}

/// Serves requests on one connection; `tcp` reaches the TCP socket under `stream`.
async fn serve_connection<S>(mut stream: S, state: Arc<State>, tcp: fn(&S) -> &TcpStream)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = Vec::new();
    while read_request(&mut stream, &mut buf).await {
        state.requests.fetch_add(1, Ordering::SeqCst);
        let k = state.in_mode.fetch_add(1, Ordering::SeqCst);
        let mut mode = state.mode.lock().expect("mode lock").clone();
        let mut k = k;
        if let Mode::Flip(inner) = mode {
            mode = if k.is_multiple_of(2) {
                Mode::Good
            } else {
                *inner
            };
            k /= 2;
        }
        let after = match answer(&mut stream, &mode, k).await {
            Ok(after) => after,
            Err(_) => return,
        };
        match after {
            After::KeepAlive => {
                if stream.flush().await.is_err() {
                    return;
                }
            }
            After::Fin => {
                let _ = stream.shutdown().await;
                return;
            }
            After::Drop => return,
            After::Rst => {
                let _ = tcp(&stream).set_zero_linger();
                return;
            }
        }
    }
}

fn sized(body: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

const CLOSE_DELIMITED_HEAD: &str =
    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nConnection: close\r\n\r\n";

/// Writes the answer of `mode`; `k` counts the requests answered in this mode (for `Flip`, the
/// requests that got the inner mode).
async fn answer<S>(stream: &mut S, mode: &Mode, k: usize) -> std::io::Result<After>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let good = good_body();
    match mode {
        Mode::Good => {
            stream.write_all(sized(&good).as_bytes()).await?;
            Ok(After::KeepAlive)
        }
        Mode::TruncatedFin(cuts)
        | Mode::TruncatedRst(cuts)
        | Mode::TruncatedNoCloseNotify(cuts) => {
            let cut = cuts[k % cuts.len()].min(good.len());
            let mut out = CLOSE_DELIMITED_HEAD.as_bytes().to_vec();
            out.extend_from_slice(&good.as_bytes()[..cut]);
            stream.write_all(&out).await?;
            stream.flush().await?;
            Ok(match mode {
                Mode::TruncatedFin(_) => After::Fin,
                Mode::TruncatedNoCloseNotify(_) => After::Drop,
                _ => After::Rst,
            })
        }
        Mode::ShortContentLength(missing) => {
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
                good.len() + missing
            );
            stream.write_all(head.as_bytes()).await?;
            stream.write_all(good.as_bytes()).await?;
            Ok(After::Fin)
        }
        Mode::ChunkedWithoutLastChunk => {
            let mut out =
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
                    .to_vec();
            for line in good.split_inclusive('\n') {
                out.extend_from_slice(format!("{:x}\r\n{line}\r\n", line.len()).as_bytes());
            }
            stream.write_all(&out).await?;
            Ok(After::Fin)
        }
        Mode::DuplicateSeries => {
            let line = format!("{FAMILY}{{route=\"chat\"}} {GOOD_VALUE}\n");
            let body = format!("{good}{line}");
            stream.write_all(sized(&body).as_bytes()).await?;
            Ok(After::KeepAlive)
        }
        Mode::Timestamp1970 | Mode::TimestampNow => {
            let ms = match mode {
                Mode::Timestamp1970 => 1000,
                _ => SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .expect("clock after 1970")
                    .as_millis(),
            };
            let body = format!("# TYPE {FAMILY} gauge\n{FAMILY}{{route=\"chat\"}} 5 {ms}\n");
            stream.write_all(sized(&body).as_bytes()).await?;
            Ok(After::KeepAlive)
        }
        Mode::Huge(bytes) => {
            stream.write_all(CLOSE_DELIMITED_HEAD.as_bytes()).await?;
            let mut body = format!("# TYPE {FAMILY} gauge\n");
            let mut i = 0;
            while body.len() < *bytes {
                body.push_str(&format!("{FAMILY}{{route=\"r{i}\"}} 1\n"));
                i += 1;
            }
            stream.write_all(body.as_bytes()).await?;
            Ok(After::Fin)
        }
        Mode::Endless => {
            stream.write_all(CLOSE_DELIMITED_HEAD.as_bytes()).await?;
            stream.write_all(good.as_bytes()).await?;
            let filler =
                "# and more, and more, and more, and more, and more, and more\n".repeat(64);
            // Ends when the client gives up (the write fails).
            loop {
                stream.write_all(filler.as_bytes()).await?;
            }
        }
        Mode::Trickle => {
            for b in sized(&good).bytes() {
                stream.write_all(&[b]).await?;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok(After::KeepAlive)
        }
        Mode::Hang => {
            // Hold the connection without answering until the client closes it.
            let mut sink = [0u8; 1024];
            while stream.read(&mut sink).await? > 0 {}
            Ok(After::Fin)
        }
        Mode::Flip(inner) => Box::pin(answer(stream, inner, k)).await,
    }
}
