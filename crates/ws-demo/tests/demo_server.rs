//! The demo WebSocket service over real sockets: the exact connection gauge through every way a
//! connection ends, ping/pong liveness, chat/echo/ticker, `/metrics` under promtool, and the
//! SIGTERM drain of the real `ws-demo serve` binary. Also a by-hand memory measurement.

use ws_e2e as support;

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use support::e2e::{self, ProcessGuard};
use support::{eventually, plain_get};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use ws_demo::server::{CloseReason, DemoServer, Route, ServerConfig};

const BIN: &str = env!("CARGO_BIN_EXE_ws-demo");

type Client = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

/// A `DemoServer` serving on 127.0.0.1:0 in this process; shut down (drained) on drop.
struct Running {
    server: DemoServer,
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
}

impl Running {
    async fn start(config: ServerConfig) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = DemoServer::new(config);
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(server.clone().serve(listener, async move {
            let _ = stopped.await;
        }));
        Self {
            server,
            addr,
            stop: Some(stop),
        }
    }

    fn url(&self, route: Route) -> String {
        format!("ws://{}{}", self.addr, route.path())
    }

    async fn connect(&self, route: Route) -> Client {
        let (ws, _) = tokio_tungstenite::connect_async(self.url(route))
            .await
            .unwrap_or_else(|e| panic!("connecting to {}: {e}", self.url(route)));
        ws
    }

    async fn metrics(&self) -> String {
        let (code, body) = plain_get(self.addr, "/metrics")
            .await
            .expect("GET /metrics");
        assert_eq!(code, 200, "{body}");
        body
    }

    /// Waits until both `active_by_route()` and the `/metrics` gauge equal `want`
    /// (chat, echo, ticker), and `active()` equals their sum.
    async fn expect_active(&self, want: [u64; 3], what: &str) {
        let expected: Vec<(&str, u64)> = Route::ALL.iter().map(|r| r.as_str()).zip(want).collect();
        eventually(Duration::from_secs(5), what, || async {
            let body = self.metrics().await;
            let scraped: Vec<(&str, u64)> = Route::ALL
                .iter()
                .map(|r| {
                    let series =
                        format!("websocket_connections_active{{route=\"{}\"}}", r.as_str());
                    let v = e2e::sample(&body, &series).expect("series present");
                    (r.as_str(), v as u64)
                })
                .collect();
            (scraped == expected
                && self.server.active_by_route() == expected
                && self.server.active() == want.iter().sum::<u64>())
            .then_some(())
        })
        .await;
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

fn short_pings() -> ServerConfig {
    ServerConfig {
        ping_interval: Duration::from_millis(200),
        pong_timeout: Duration::from_millis(200),
        drain_grace: Duration::from_secs(2),
        ..ServerConfig::default()
    }
}

/// Completes a WebSocket handshake on a bare TCP stream and returns it, positioned right after
/// the 101 response (nothing of the WebSocket protocol is spoken on it afterwards).
async fn raw_upgrade(addr: SocketAddr, path: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    s.write_all(request.as_bytes()).await.expect("write");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    // Byte by byte, so that nothing after the header is consumed.
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            s.read(&mut byte).await.expect("read"),
            1,
            "EOF in 101 header"
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    s
}

/// Reads text messages until one arrives (skipping pings/pongs), within 5 s.
async fn next_text(ws: &mut Client) -> String {
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => return t.to_string(),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => panic!("expected a text message, got {other:?}"),
            }
        }
    })
    .await
    .expect("a text message within 5s")
}

/// Reads until the server's close frame and returns its code, within `limit`; keeps reading to
/// the end of the stream, which sends tungstenite's reply (a cooperative client).
async fn close_code(ws: &mut Client, limit: Duration) -> Option<CloseCode> {
    tokio::time::timeout(limit, async {
        let mut code = None;
        while let Some(msg) = ws.next().await {
            match msg {
                Ok(Message::Close(frame)) => code = frame.map(|f| f.code),
                Ok(_) => continue,
                Err(_) => break,
            }
        }
        code
    })
    .await
    .ok()
    .flatten()
}

fn closed(body: &str, route: &str, reason: &str) -> f64 {
    let series =
        format!("websocket_connections_closed_total{{route=\"{route}\",reason=\"{reason}\"}}");
    e2e::sample(body, &series).unwrap_or_else(|| panic!("no {series} in {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gauge_is_exact_through_connect_client_close_abrupt_drop_and_protocol_error() {
    let run = Running::start(ServerConfig::default()).await;
    run.expect_active([0, 0, 0], "nothing open at start").await;

    let mut echo_a = run.connect(Route::Echo).await;
    run.expect_active([0, 1, 0], "one echo").await;
    let echo_b = run.connect(Route::Echo).await;
    let mut chat = run.connect(Route::Chat).await;
    let ticker = run.connect(Route::Ticker).await;
    run.expect_active([1, 2, 1], "two echo, one chat, one ticker")
        .await;
    let mut raw = raw_upgrade(run.addr, Route::Echo.path()).await;
    run.expect_active([1, 3, 1], "a raw upgrade counts too")
        .await;

    // A close handshake started by the client.
    echo_a.close(None).await.expect("close");
    while echo_a.next().await.is_some() {}
    run.expect_active([1, 2, 1], "client close").await;
    assert_eq!(run.server.closed(Route::Echo, CloseReason::ClientClose), 1);

    // The TCP connection dropped without a close frame.
    drop(echo_b);
    drop(ticker);
    run.expect_active([1, 1, 0], "abrupt drops").await;
    assert_eq!(run.server.closed(Route::Echo, CloseReason::Error), 1);
    assert_eq!(run.server.closed(Route::Ticker, CloseReason::Error), 1);

    // A protocol error: an unmasked frame from a client.
    raw.write_all(&[0x81, 0x02, b'h', b'i'])
        .await
        .expect("write");
    run.expect_active([1, 0, 0], "protocol error").await;
    assert_eq!(run.server.closed(Route::Echo, CloseReason::Error), 2);

    chat.close(None).await.expect("close");
    while chat.next().await.is_some() {}
    run.expect_active([0, 0, 0], "all closed").await;

    let body = run.metrics().await;
    assert_eq!(closed(&body, "echo", "client_close"), 1.0, "{body}");
    assert_eq!(closed(&body, "echo", "error"), 2.0, "{body}");
    assert_eq!(closed(&body, "chat", "client_close"), 1.0, "{body}");
    assert_eq!(closed(&body, "ticker", "error"), 1.0, "{body}");
    assert_eq!(
        e2e::sample(&body, "websocket_connections_opened_total{route=\"echo\"}"),
        Some(3.0),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_that_vanishes_without_a_close_frame_is_removed_after_ping_and_pong_timeouts() {
    let run = Running::start(short_pings()).await;
    // A healthy client, read continuously, answers every ping and must stay.
    let healthy = run.connect(Route::Echo).await;
    let (mut sink, mut stream) = healthy.split();
    let pings = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = pings.clone();
    let reader = tokio::spawn(async move {
        while let Some(Ok(m)) = stream.next().await {
            if m.is_ping() {
                seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
    });

    let vanished = raw_upgrade(run.addr, Route::Echo.path()).await;
    let upgraded = Instant::now();
    run.expect_active([0, 2, 0], "both counted").await;
    run.expect_active([0, 1, 0], "the silent client removed")
        .await;
    let took = upgraded.elapsed();
    // Never before one ping interval plus one pong timeout (400 ms; the server's clock started
    // a moment before ours). How much later depends on the machine: printed, not bounded.
    assert!(took >= Duration::from_millis(350), "removed after {took:?}");
    eprintln!("silent client removed {took:?} after its upgrade");
    assert_eq!(run.server.closed(Route::Echo, CloseReason::PingTimeout), 1);

    // The healthy one is pinged three more times (counted, not slept) and is still served.
    let pinged = pings.load(std::sync::atomic::Ordering::SeqCst);
    eventually(Duration::from_secs(120), "three more pings", || async {
        (pings.load(std::sync::atomic::Ordering::SeqCst) >= pinged + 3).then_some(())
    })
    .await;
    sink.send(Message::text("still here")).await.expect("send");
    assert_eq!(run.server.active(), 1);
    assert_eq!(run.server.closed(Route::Echo, CloseReason::Error), 0);
    drop(vanished);
    reader.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shed_closes_the_oldest_connections_of_any_route_with_1013_and_cuts_a_client_that_never_answers()
 {
    let run = Running::start(ServerConfig {
        // No ping during the test: only the shed ends connections.
        ping_interval: Duration::from_secs(3600),
        pong_timeout: Duration::from_millis(500),
        ..ServerConfig::default()
    })
    .await;
    // Opened in this order, each counted before the next: the silent one is the oldest.
    let mut silent = raw_upgrade(run.addr, Route::Echo.path()).await;
    run.expect_active([0, 1, 0], "silent").await;
    let mut ticker = run.connect(Route::Ticker).await;
    run.expect_active([0, 1, 1], "ticker").await;
    let mut chat = run.connect(Route::Chat).await;
    run.expect_active([1, 1, 1], "chat").await;

    assert_eq!(run.server.shed(2), 2);
    // The ticker client reads its close frame (ticks may come before it) and answers it.
    let frame = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match ticker.next().await {
                Some(Ok(Message::Close(frame))) => return frame,
                Some(Ok(_)) => continue,
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
    })
    .await
    .expect("a close frame");
    let frame = frame.expect("a close frame with a code");
    assert_eq!(frame.code, CloseCode::Again);
    assert_eq!(frame.reason.as_str(), "rebalancing");
    while ticker.next().await.is_some() {}
    // The silent client got the same frame, unmasked: 0x88, length, code 1013, reason.
    let mut head = [0u8; 4];
    silent.read_exact(&mut head).await.expect("the close frame");
    assert_eq!(head, [0x88, 13, 0x03, 0xF5]);
    let mut reason = [0u8; 11];
    silent.read_exact(&mut reason).await.expect("the reason");
    assert_eq!(&reason, b"rebalancing");
    // It never answers: cut after the pong timeout, still counted as shed.
    run.expect_active([1, 0, 0], "both shed connections gone")
        .await;
    let mut rest = Vec::new();
    assert_eq!(
        silent.read_to_end(&mut rest).await.map(|_| rest.len()).ok(),
        Some(0),
        "the server closed the TCP connection"
    );
    assert_eq!(run.server.closed(Route::Echo, CloseReason::Shed), 1);
    assert_eq!(run.server.closed(Route::Ticker, CloseReason::Shed), 1);
    let body = run.metrics().await;
    assert_eq!(closed(&body, "echo", "shed"), 1.0, "{body}");
    assert_eq!(closed(&body, "ticker", "shed"), 1.0, "{body}");

    // The newest is untouched and still served.
    chat.send(Message::text("still here")).await.expect("send");
    assert_eq!(next_text(&mut chat).await, "still here");
    assert_eq!(run.server.shed(5), 1, "only the chat client is left");
    assert_eq!(
        close_code(&mut chat, Duration::from_secs(30)).await,
        Some(CloseCode::Again)
    );
    run.expect_active([0, 0, 0], "all shed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_broadcasts_to_every_chat_client_echo_answers_its_sender_and_ticker_ticks() {
    let run = Running::start(ServerConfig::default()).await;
    let mut chats = Vec::new();
    for _ in 0..3 {
        chats.push(run.connect(Route::Chat).await);
    }
    let mut echo = run.connect(Route::Echo).await;
    let mut ticker = run.connect(Route::Ticker).await;
    run.expect_active([3, 1, 1], "all connected").await;

    chats[1]
        .send(Message::text("hello, room"))
        .await
        .expect("send");
    for (i, c) in chats.iter_mut().enumerate() {
        assert_eq!(next_text(c).await, "hello, room", "chat client {i}");
    }

    echo.send(Message::text("echo me")).await.expect("send");
    assert_eq!(next_text(&mut echo).await, "echo me");
    // The echo client saw nothing of the chat.
    echo.send(Message::text("again")).await.expect("send");
    assert_eq!(next_text(&mut echo).await, "again");

    assert_eq!(next_text(&mut ticker).await, "tick 1");
    assert_eq!(next_text(&mut ticker).await, "tick 2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_have_zero_series_for_every_route_before_any_connection_and_pass_promtool() {
    let run = Running::start(ServerConfig::default()).await;
    let body = run.metrics().await;
    assert!(
        body.contains("# TYPE websocket_connections_active gauge\n"),
        "{body}"
    );
    for route in Route::ALL {
        let series = format!(
            "websocket_connections_active{{route=\"{}\"}}",
            route.as_str()
        );
        assert_eq!(e2e::sample(&body, &series), Some(0.0), "{series}: {body}");
        for reason in CloseReason::ALL {
            assert_eq!(closed(&body, route.as_str(), reason.as_str()), 0.0);
        }
    }
    let _open = run.connect(Route::Ticker).await;
    run.expect_active([0, 0, 1], "one ticker").await;
    let body = run.metrics().await;

    let promtool = e2e::require_tool("promtool", "apt-get install prometheus");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("metrics.txt");
    std::fs::write(&file, &body).expect("write metrics");
    // `promtool check metrics` reads the exposition on stdin.
    let mut cmd = Command::new(promtool);
    cmd.args(["check", "metrics"]);
    let out = e2e::run_with_stdin(cmd, "promtool", Some(&file), Duration::from_secs(30)).await;
    assert!(
        out.status.success(),
        "promtool: {}{}\n{body}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `ws-demo serve` on 127.0.0.1:0 with `extra` flags; returns the guard and the bound address
/// (read from the startup log).
async fn spawn_serve(extra: &[&str]) -> (ProcessGuard, SocketAddr) {
    let mut cmd = Command::new(BIN);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("WS_DEMO_") {
            cmd.env_remove(&key);
        }
    }
    cmd.env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(extra);
    let guard = ProcessGuard::spawn(cmd, "ws-demo serve");
    let addr = eventually(Duration::from_secs(20), "the listening log line", || {
        let stderr = guard.stderr();
        async move {
            let rest = stderr.split("listening on http://").nth(1)?;
            rest.split_whitespace().next()?.parse().ok()
        }
    })
    .await;
    (guard, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_sends_1001_refuses_new_connections_and_exits_0_within_the_grace() {
    let grace = Duration::from_secs(2);
    let (mut proc, addr) = spawn_serve(&["--drain-grace", "2s"]).await;
    let url = format!("ws://{addr}/ws/echo");
    let mut clients = Vec::new();
    for _ in 0..3 {
        let (ws, _) = tokio_tungstenite::connect_async(&url)
            .await
            .expect("connect");
        clients.push(ws);
    }
    // One client that will never answer the close frame keeps the drain going for the grace.
    let _silent = raw_upgrade(addr, "/ws/chat").await;
    eventually(
        Duration::from_secs(5),
        "4 connections on /metrics",
        || async {
            let (_, body) = plain_get(addr, "/metrics").await.ok()?;
            let echo = e2e::sample(&body, "websocket_connections_active{route=\"echo\"}")?;
            let chat = e2e::sample(&body, "websocket_connections_active{route=\"chat\"}")?;
            (echo == 3.0 && chat == 1.0).then_some(())
        },
    )
    .await;

    let waiters: Vec<_> = clients
        .into_iter()
        .map(|mut ws| {
            tokio::spawn(async move { close_code(&mut ws, Duration::from_secs(10)).await })
        })
        .collect();
    proc.signal("TERM");
    let signalled = Instant::now();

    // New connections are refused while the drain still runs.
    eventually(Duration::from_secs(2), "connections refused", || async {
        TcpStream::connect(addr).await.is_err().then_some(())
    })
    .await;
    assert!(
        proc.try_wait().is_none(),
        "exited before the grace although a client never answered"
    );

    for w in waiters {
        let code = w.await.expect("reader task");
        assert_eq!(code, Some(CloseCode::Away));
    }
    let status = proc
        .wait(grace + Duration::from_secs(5))
        .await
        .unwrap_or_else(|| panic!("still running; stderr:\n{}", proc.stderr()));
    let took = signalled.elapsed();
    assert_eq!(status.code(), Some(0), "stderr:\n{}", proc.stderr());
    assert!(took >= grace, "exited after {took:?}, before the grace");
    eprintln!("exited {took:?} after SIGTERM (grace {grace:?})");
    let stderr = proc.stderr();
    assert!(stderr.contains("draining"), "{stderr}");
    assert!(stderr.contains("drain grace over"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_only_cooperative_clients_exits_as_soon_as_they_are_gone() {
    // A grace far longer than any wait below: exiting within the wait shows it did not wait
    // for the grace, on any machine.
    let (mut proc, addr) = spawn_serve(&["--drain-grace", "1h"]).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws/ticker"))
        .await
        .expect("connect");
    let (_, health) = plain_get(addr, "/healthz").await.expect("healthz");
    assert_eq!(health, "ok");
    proc.signal("TERM");
    assert_eq!(
        close_code(&mut ws, Duration::from_secs(120)).await,
        Some(CloseCode::Away)
    );
    let status = proc
        .wait(Duration::from_secs(300))
        .await
        .unwrap_or_else(|| panic!("waited for the 1 h grace with no connection left"));
    assert_eq!(status.code(), Some(0), "stderr:\n{}", proc.stderr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_serve_flags_exit_2_with_every_problem() {
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--ping-interval", "1ms", "--pong-timeout", "0s"]);
    let out = e2e::run(cmd, "ws-demo serve", Duration::from_secs(30)).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--ping-interval 1ms"), "{stderr}");
    assert!(stderr.contains("--pong-timeout 0s"), "{stderr}");
}

/// Server RSS per idle connection at 10,000 connections. Run by hand, on a release build:
/// `cargo test --release --test demo_server -- --ignored --nocapture memory`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement: run by hand, prints RSS per connection"]
async fn memory_per_idle_connection_at_10000_connections() {
    const N: u64 = 10_000;
    let (serve, addr) = spawn_serve(&["--ping-interval", "1s"]).await;
    let rss = |pid: u32| -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    };
    // Touch every route once so that lazily built state is in the baseline.
    let _ = plain_get(addr, "/metrics").await;
    let before = rss(serve.pid());
    let mut cmd = Command::new(BIN);
    cmd.args([
        "load",
        "--target",
        &format!("ws://{addr}/ws/echo"),
        "--connections",
        &N.to_string(),
        "--rate",
        "5000",
        // Held until measured (SIGTERM below); --deadline fails it if 10,000 never open.
        "--hold",
        "24h",
        "--deadline",
        "5m",
        "--json",
    ]);
    let load = ProcessGuard::spawn(cmd, "ws-demo load");
    eventually(Duration::from_secs(300), "10,000 open", || async {
        let (_, body) = plain_get(addr, "/metrics").await.ok()?;
        (e2e::sample(&body, "websocket_connections_active{route=\"echo\"}")? == N as f64)
            .then_some(())
    })
    .await;
    // Let a few ping rounds pass so that every connection has read and written.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = rss(serve.pid());
    let per = (after.saturating_sub(before)) as f64 / N as f64;
    let load_rss = rss(load.pid());
    println!(
        "server VmRSS {before} KiB idle, {after} KiB with {N} connections: {per:.2} KiB per connection \
         (load generator VmRSS {load_rss} KiB: {:.2} KiB per connection)",
        load_rss as f64 / N as f64
    );
    load.signal("TERM");
    let out = tokio::task::spawn_blocking(move || load.finish_blocking(Duration::from_secs(300)))
        .await
        .expect("load process");
    println!("{}", String::from_utf8_lossy(&out.stdout));
    assert!(per <= 20.0, "{per:.2} KiB per connection");
}
