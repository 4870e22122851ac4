//! Reliability figures under attack (issue "hostile input"): what abusive selectors and hostile
//! connections cost, and what a well-formed reader sees meanwhile.
//!
//! (e) In process, 3,000 pods in one namespace: a normal read (100 pods by `app=`), a 7,000-term
//!     selector (refused with 400), the worst selectors still accepted (256 `!=` terms that make
//!     every pod a candidate; a 4,096-value `in`), and the normal read while two threads send the
//!     worst accepted selector in a loop. Target: abusive selectors under 5 ms, the normal read
//!     not delayed.
//! (f) The release binary in static mode (no auth in static mode; the auth bench gives its cost on
//!     cache hits, 2–3 µs): 1,000 hostile connections (a third with a head larger than the cap
//!     that never ends, a third trickling a head, a third idle after the handshake), the
//!     adapter's RSS before and with them, and the latency of well-formed reads (HTTP/1.1
//!     keep-alive) during the attack. Targets: under 64 MiB for the 1,000 connections, p99 under
//!     100 ms.
//!
//! Run: `cargo bench --bench hostile`. Knobs: `WSMA_BENCH_REQUESTS` (default 2000 per case),
//! `WSMA_BENCH_HOSTILE` (default 1000 connections).

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::body::Body;
use http_body_util::BodyExt;
use support::{ChildGuard, pct};
use tower::ServiceExt;
use ws_metrics_adapter::api::{self, ApiState};
use ws_metrics_adapter::clock::{Moment, SampleTime};
use ws_metrics_adapter::store::{
    FamilyReading, MetricCatalog, MetricMapping, PodKey, PodTarget, Reading, Series, Store,
};
use ws_metrics_adapter::telemetry::Telemetry;

const PODS: usize = 3000;
const APPS: usize = 30;
const BASE: &str =
    "/apis/custom.metrics.k8s.io/v1beta2/namespaces/chat/pods/%2A/websocket_connections";

fn seed() -> Arc<Store> {
    let store = Arc::new(Store::new(
        MetricCatalog::new(vec![MetricMapping {
            served: "websocket_connections".into(),
            family: "websocket_connections_active".into(),
            rate: None,
            filter: None,
        }]),
        Duration::from_secs(24 * 3600),
    ));
    let targets: Vec<PodTarget> = (0..PODS)
        .map(|i| PodTarget {
            key: PodKey {
                namespace: "chat".into(),
                name: format!("ws-{i}"),
            },
            uid: format!("uid-{i}"),
            labels: [
                ("app".to_owned(), format!("ws-{}", i % APPS)),
                ("tier".to_owned(), format!("t{}", i % 7)),
                ("pod-template-hash".to_owned(), format!("h{}", i % 11)),
            ]
            .into(),
            url: format!("http://127.0.0.1:1/{i}"),
            ready: true,
        })
        .collect();
    store.replace_all(targets.clone());
    let now = Moment::now();
    for t in &targets {
        let reading = Reading {
            time: SampleTime::read_at(now),
            families: vec![Some(FamilyReading {
                series: vec![Series {
                    labels: vec![("route".into(), "chat".into())],
                    milli: 5000,
                }],
                total_milli: 5000,
                stamped_ms: None,
            })]
            .into(),
        };
        assert!(store.record(&t.key, &t.uid, reading));
    }
    store
}

/// Latencies of `n` requests to `path` through the router, after a warm-up. Unit: ns.
async fn timed(router: &axum::Router, path: &str, n: usize, want: u16) -> Vec<u64> {
    let uri: http::Uri = path.parse().expect("uri");
    let mut lat = Vec::with_capacity(n);
    for k in 0..n + n / 10 {
        let req = http::Request::get(uri.clone())
            .body(Body::empty())
            .expect("request");
        let t = Instant::now();
        let resp = router.clone().oneshot(req).await.expect("infallible");
        let status = resp.status().as_u16();
        let _ = resp.into_body().collect().await.expect("body");
        let ns = u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX);
        assert_eq!(status, want, "{}", &path[..path.len().min(200)]);
        if k >= n / 10 {
            lat.push(ns);
        }
    }
    lat.sort_unstable();
    lat
}

fn row(what: &str, lat: &[u64]) {
    let us = |q| pct(lat, q) as f64 / 1000.0;
    println!(
        "| {what} | {} | {:.1} | {:.1} | {:.1} |",
        lat.len(),
        us(0.5),
        us(0.99),
        lat.last().copied().unwrap_or(0) as f64 / 1000.0
    );
}

fn selectors(n: usize) {
    let store = seed();
    let router = api::router(ApiState::new(store, Arc::new(Telemetry::new())));
    let normal = format!("{BASE}?labelSelector=app%3Dws-1");
    let huge: Vec<String> = (0..7000).map(|i| format!("k{i}=v")).collect();
    let huge = format!("{BASE}?labelSelector={}", huge.join(","));
    let mut worst: Vec<String> = (0..256).map(|i| format!("k{i}!=v")).collect();
    worst[255] = "tier!=t9".into();
    let worst = format!("{BASE}?labelSelector={}", worst.join(","));
    let values: Vec<String> = (0..4096).map(|i| format!("ws-{i}")).collect();
    let big_in = format!("{BASE}?labelSelector=app+in+({})", values.join(","));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "## (e) selectors against {PORTS} pods, in process (µs)",
        PORTS = PODS
    );
    println!();
    println!("| request | n | p50 | p99 | max |");
    println!("|---|---:|---:|---:|---:|");
    rt.block_on(async {
        row(
            "normal read: app=ws-1 (100 pods)",
            &timed(&router, &normal, n, 200).await,
        );
        row(
            "7,000 terms (refused, 400)",
            &timed(&router, &huge, n, 400).await,
        );
        row(
            "256 `!=` terms, every pod a candidate (3,000 pods answered)",
            &timed(&router, &worst, n / 4, 200).await,
        );
        row(
            "`app in (…4,096 values)` (3,000 pods answered)",
            &timed(&router, &big_in, n / 4, 200).await,
        );
    });
    // The normal read while two abusers loop on the worst accepted selector.
    let stop = Arc::new(AtomicBool::new(false));
    let abusers: Vec<_> = (0..2)
        .map(|_| {
            let router = router.clone();
            let worst = worst.clone();
            let stop = stop.clone();
            rt.spawn(async move {
                let mut sent = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let _ = timed(&router, &worst, 10, 200).await;
                    sent += 11;
                }
                sent
            })
        })
        .collect();
    let during = rt.block_on(timed(&router, &normal, n, 200));
    stop.store(true, Ordering::Relaxed);
    let sent: u64 = rt.block_on(async {
        let mut total = 0;
        for a in abusers {
            total += a.await.unwrap_or(0);
        }
        total
    });
    row(
        &format!("normal read while 2 abusers sent {sent} worst selectors"),
        &during,
    );
    println!();
}

/// The release binary, its API address, and the CA to trust.
fn start_adapter(dir: &std::path::Path) -> (ChildGuard, SocketAddr, SocketAddr, String) {
    let pods = dir.join("pods.yaml");
    std::fs::write(
        &pods,
        "pods:\n- {namespace: default, name: ws-0, labels: {app: ws}, metricsUrl: 'http://127.0.0.1:1/metrics'}\n",
    )
    .expect("pods file");
    let ports = support::free_ports(2);
    let (api, metrics): (SocketAddr, SocketAddr) = (
        format!("127.0.0.1:{}", ports[0]).parse().expect("addr"),
        format!("127.0.0.1:{}", ports[1]).parse().expect("addr"),
    );
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ws-metrics-adapter"));
    cmd.env("RUST_LOG", "warn")
        .args(["serve", "--static-pods"])
        .arg(&pods)
        .arg("--cert-dir")
        .arg(dir.join("certs"))
        .args(["--secure-port", &ports[0].to_string()])
        .args(["--metrics-bind-address", &metrics.to_string()]);
    let guard = ChildGuard::spawn("ws-metrics-adapter", cmd, false);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !matches!(support::plain_get(metrics, "/readyz"), Ok((200, _))) {
        assert!(Instant::now() < deadline, "adapter not ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    let ca = std::fs::read_to_string(dir.join("certs").join("ca.crt")).expect("CA");
    (guard, api, metrics, ca)
}

fn tls_stream(
    api: SocketAddr,
    cfg: &Arc<rustls::ClientConfig>,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let conn = rustls::ClientConnection::new(cfg.clone(), name).expect("client");
    let tcp = TcpStream::connect(api).expect("connect");
    // As every HTTP client does; also, Nagle's algorithm against delayed ACKs made requests
    // written in pieces stall on this machine's network stack.
    tcp.set_nodelay(true).expect("nodelay");
    let mut s = rustls::StreamOwned::new(conn, tcp);
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock).expect("handshake");
    }
    s
}

/// One GET on a kept-alive HTTP/1.1 connection; returns the status.
fn get(s: &mut impl ReadWrite, path: &str) -> u16 {
    // One write: one TLS record.
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())
        .expect("write");
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut b).expect("read"), 1, "closed");
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().expect("len"))
        })
        .expect("content-length");
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).expect("body");
    head.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status")
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

fn connections(hostile: usize, n: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (adapter, api, _metrics, ca) = start_adapter(dir.path());
    let mut cfg = support::tls_client_config(&ca);
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let cfg = Arc::new(cfg);
    let pid = adapter.pid.to_string();
    let path =
        "/apis/custom.metrics.k8s.io/v1beta2/namespaces/default/pods/%2A/websocket_connections";
    let mut reader = tls_stream(api, &cfg);
    // `n` reads on the kept-alive connection, sorted latencies. Unit: ns.
    let mut timed_reads = || {
        let mut lat: Vec<u64> = (0..n)
            .map(|_| {
                let t = Instant::now();
                assert_eq!(get(&mut reader, path), 200);
                u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX)
            })
            .collect();
        lat.sort_unstable();
        lat
    };
    let baseline = timed_reads();
    let before = support::status_kib(&pid, "VmRSS");
    let big_line = format!("X-Big: {}\r\n", "a".repeat(1000));
    let mut held = Vec::with_capacity(hostile);
    let started = Instant::now();
    for i in 0..hostile {
        let mut s = tls_stream(api, &cfg);
        match i % 3 {
            0 => {
                let _ = s.write_all(b"GET /apis HTTP/1.1\r\nHost: localhost\r\n");
                for _ in 0..256 {
                    if s.write_all(big_line.as_bytes()).is_err() {
                        break;
                    }
                }
            }
            1 => {
                let _ = s.write_all(b"GET /apis HTTP/1.1\r\nX-Slow: ");
            }
            _ => {}
        }
        held.push(s);
    }
    let opened = started.elapsed();
    let during = timed_reads();
    let with = support::status_kib(&pid, "VmRSS");
    let peak = support::status_kib(&pid, "VmHWM");
    println!("## (f) {hostile} hostile connections against the release binary");
    println!();
    println!(
        "opened in {opened:.1?}; adapter VmRSS {before} KiB before, {with} KiB with them (+{:.1} MiB), peak {peak} KiB",
        (with.saturating_sub(before)) as f64 / 1024.0
    );
    println!();
    println!("| well-formed read (HTTP/1.1 keep-alive) | n | p50 | p99 | max |");
    println!("|---|---:|---:|---:|---:|");
    row("before the attack", &baseline);
    row("during the attack", &during);
    drop(held);
    drop(adapter);
}

fn main() {
    ws_metrics_adapter::server::tls::install_provider();
    let n = usize::try_from(support::env_num("WSMA_BENCH_REQUESTS", 2000)).unwrap_or(2000);
    let hostile = usize::try_from(support::env_num("WSMA_BENCH_HOSTILE", 1000)).unwrap_or(1000);
    println!(
        "load average at start: {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    println!();
    selectors(n);
    connections(hostile, n);
}
