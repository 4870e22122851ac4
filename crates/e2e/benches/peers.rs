//! `make bench-peers` (issue 16, item 5): this adapter and prometheus-adapter v0.12.0 side by side
//! on one machine, against the same kube-apiserver (+ etcd, built by
//! `scripts/build-control-plane.sh`), the same Debian Prometheus and the same fake pods, answering
//! the same read over HTTPS keep-alive at equal concurrency, in interleaved runs.
//!
//! Setup: N fake pods (default 1,000) in namespace `bench`, 100 per app (`app=ws-0` … ), each a
//! listener on its own loopback address (`127.0.(1 + k/250).(k%250 + 1)`, as
//! `crates/ws-metrics-adapter/benches/collection.rs` does) serving two
//! `websocket_connections_active` series; a Pod object per fake pod in kube-apiserver, Running and
//! Ready with that `status.podIP`. Prometheus scrapes every pod every 1 s (static targets labelled
//! `namespace`/`pod`). The adapters:
//! - `ws-metrics-adapter serve` (the release binary) with kube discovery, scraping the pods itself
//!   (its default source), and a second one with `--source=prometheus` on the same Prometheus;
//! - prometheus-adapter (`scripts/build-prometheus-adapter.sh`) with a rules config serving the
//!   same series as the same metric name, once at its default client throttle towards
//!   kube-apiserver (`--client-qps 5 --client-burst 10`: client-go's `rest.DefaultQPS` and
//!   `rest.DefaultBurst`, the flags' defaults in custom-metrics-apiserver v1.30.0
//!   `pkg/cmd/builder.go`) and once unthrottled (both set to 100,000).
//!
//! Authentication is the same for all: every adapter runs as user `bench-adapter` (group
//! `system:masters`, so its own calls need no RBAC of the bench's) with delegated authentication
//! and authorization against kube-apiserver (TokenReview, SubjectAccessReview, each adapter with
//! its default 10 s caches); the load generator sends the bearer token of user `bench-reader`,
//! whom a ClusterRole lets `get` everything in `custom.metrics.k8s.io`.
//!
//! The read: `GET /apis/custom.metrics.k8s.io/v1beta1/namespaces/bench/pods/*/websocket_connections
//! ?labelSelector=app=ws-7` (100 of the pods), from a separate process (this binary re-executed
//! with `WSMA_BENCH_ROLE=client`), C connections each sending one request after another for the
//! window. A run of one adapter has the machine to itself: the other adapters are stopped
//! (SIGSTOP) and resumed (SIGCONT) only for their own runs, so the CPU, the queries Prometheus
//! answered and the LISTs kube-apiserver served during a run are that adapter's. Runs interleave:
//! round 1 runs every adapter at every C, then round 2 again, …
//!
//! Printed per run and summed per adapter and C: req/s, p50/p99 latency, errors (transport,
//! timeouts), non-200 answers and 200s without the 100 items, adapter CPU (utime + stime from
//! /proc/PID/stat) per 10,000 requests, the CPU of kube-apiserver + etcd + Prometheus per 10,000
//! requests, queries Prometheus answered (`prometheus_http_requests_total{handler="/api/v1/query"}`)
//! and LISTs kube-apiserver served (`apiserver_request_total{verb="LIST"}`) per read, peak RSS
//! (VmHWM); then the ratios ours / theirs.
//!
//! Run: `make bench-peers`. Knobs (env): `WSMA_BENCH_PODS` (default 1000; a multiple of 100,
//! at least 800), `WSMA_BENCH_SECONDS` (window per run, default 10), `WSMA_BENCH_ROUNDS` (default
//! 2), `WSMA_BENCH_CONNS` (default `1,16`), `WSMA_BENCH_POD_PORT` (default 9187).

#[path = "../../ws-metrics-adapter/benches/support/mod.rs"]
mod support;

#[path = "../tests/control_plane/pki.rs"]
mod pki;

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, Empty, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use rcgen::ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
use serde_json::json;
use support::{ChildGuard, ROLE_VAR};
use ws_e2e::e2e::{ProcessGuard, free_port, require_tool, workspace_root};
use ws_e2e::prometheus::{Prometheus, Target, scrape_config};

const NAMESPACE: &str = "bench";
const METRIC: &str = "websocket_connections";
const FAMILY: &str = "websocket_connections_active";
/// Pods per app; the read selects one app.
const APP_SIZE: usize = 100;
/// The app the read selects (`app=ws-7`).
const SELECTED_APP: usize = 7;
/// Pods per /24 of the loopback range (as benches/collection.rs lays them out).
const PODS_PER_SUBNET: usize = 250;

const ADMIN_TOKEN: &str = "bench-admin-token";
const ADAPTER_TOKEN: &str = "bench-adapter-token";
const READER_TOKEN: &str = "bench-reader-token";

/// How long any wait gives something before failing: a deadline to give up on a daemon that will
/// never get there, not a speed claim (a 2-core machine with another build beside is slow).
const GIVE_UP: Duration = Duration::from_secs(300);
/// One read's deadline in the load generator; a read slower than this counts as an error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Starts of a daemon that takes its port as a flag before giving up on "address already in use".
const PORT_ATTEMPTS: u32 = 5;
/// Requests per connection before the window opens (TLS handshake, auth caches).
const WARM_PER_CONN: usize = 2;

/// The read every adapter answers.
fn read_path() -> String {
    format!(
        "/apis/custom.metrics.k8s.io/v1beta1/namespaces/{NAMESPACE}/pods/%2A/{METRIC}?labelSelector=app%3Dws-{SELECTED_APP}"
    )
}

fn pod_ip(k: usize) -> Ipv4Addr {
    Ipv4Addr::new(
        127,
        0,
        (1 + k / PODS_PER_SUBNET) as u8,
        (k % PODS_PER_SUBNET + 1) as u8,
    )
}

/// Name and app of fake pod `k`.
fn pod_name(k: usize) -> (String, usize) {
    let app = k / APP_SIZE;
    (support::pod_name(app, k % APP_SIZE).0, app)
}

/// The exposition of fake pod `k`: two series, (chat, echo).
fn pod_body(k: usize) -> String {
    format!(
        "# HELP {FAMILY} Open WebSocket connections by route.\n# TYPE {FAMILY} gauge\n\
         {FAMILY}{{route=\"chat\"}} {}\n{FAMILY}{{route=\"echo\"}} {}\n",
        (k * 7) % 500,
        k % 13
    )
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_owned()
}

// ---------------------------------------------------------------------------------------------
// The load generator role (a separate process, so its CPU is not the adapter's).

/// One read: (status, items in the answer), or (0, 0) on a transport error or timeout.
async fn read_once(client: &support::HttpsClient, uri: &http::Uri, token: &str) -> (u16, usize) {
    let req = http::Request::get(uri.clone())
        .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Empty::<Bytes>::new())
        .expect("request");
    let answer = async {
        let resp = client.request(req).await.ok()?;
        let code = resp.status().as_u16();
        let body = resp.into_body().collect().await.ok()?.to_bytes();
        Some((code, support::count(&body, b"\"describedObject\"")))
    };
    match tokio::time::timeout(REQUEST_TIMEOUT, answer).await {
        Ok(Some(r)) => r,
        _ => (0, 0),
    }
}

/// The client role: opens C keep-alive connections, warms each, prints `WARM`, waits for `GO` on
/// stdin, then reads for the window and prints one `RESULT k=v …` line.
fn client_main() {
    ws_metrics_adapter::server::tls::install_provider();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    support::exit_on_stdin_eof(move |line| {
        if line == "GO" {
            let _ = go_tx.send(());
        }
    });
    let var = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k} not set"));
    let uri: http::Uri = var("WSMA_CLIENT_URI").parse().expect("uri");
    let ca = std::fs::read_to_string(var("WSMA_CLIENT_CA")).expect("read CA");
    let token = var("WSMA_CLIENT_TOKEN");
    let conns: usize = var("WSMA_CLIENT_CONNS").parse().expect("conns");
    let secs: u64 = var("WSMA_CLIENT_SECONDS").parse().expect("seconds");
    let expect: usize = var("WSMA_CLIENT_EXPECT").parse().expect("expected items");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let cfg = support::tls_client_config(&ca);
        // One pool of one connection per task: C connections, each kept alive.
        let clients: Vec<support::HttpsClient> = (0..conns)
            .map(|_| support::https_client(cfg.clone(), 1))
            .collect();
        let warm: Vec<_> = clients
            .iter()
            .map(|cl| {
                let (cl, uri, token) = (cl.clone(), uri.clone(), token.clone());
                tokio::spawn(async move {
                    for _ in 0..WARM_PER_CONN {
                        read_once(&cl, &uri, &token).await;
                    }
                })
            })
            .collect();
        for w in warm {
            w.await.expect("warm-up task");
        }
        println!("WARM");
        tokio::task::spawn_blocking(move || go_rx.recv_timeout(GIVE_UP))
            .await
            .expect("GO wait")
            .expect("GO from the bench within the deadline");
        let start = Instant::now();
        let deadline = start + Duration::from_secs(secs);
        let tasks: Vec<_> = clients
            .into_iter()
            .map(|cl| {
                let (uri, token) = (uri.clone(), token.clone());
                tokio::spawn(async move {
                    let mut lat = Vec::with_capacity(64 * 1024);
                    let (mut errors, mut non200, mut short) = (0u64, 0u64, 0u64);
                    let mut codes: HashMap<u16, u64> = HashMap::new();
                    // Bounded by the deadline and by an iteration cap.
                    for _ in 0..50_000_000usize {
                        if Instant::now() >= deadline {
                            break;
                        }
                        let t0 = Instant::now();
                        let (code, n) = read_once(&cl, &uri, &token).await;
                        lat.push(t0.elapsed().as_nanos() as u64);
                        match code {
                            0 => errors += 1,
                            200 if n == expect => {}
                            200 => short += 1,
                            other => {
                                non200 += 1;
                                *codes.entry(other).or_default() += 1;
                            }
                        }
                    }
                    (lat, errors, non200, short, codes, Instant::now())
                })
            })
            .collect();
        let (mut lat, mut errors, mut non200, mut short, mut end) = (Vec::new(), 0, 0, 0, start);
        let mut codes: HashMap<u16, u64> = HashMap::new();
        for t in tasks {
            let (l, e, b, s, c, fin) = t.await.expect("client task");
            lat.extend(l);
            errors += e;
            non200 += b;
            short += s;
            for (k, v) in c {
                *codes.entry(k).or_default() += v;
            }
            end = end.max(fin);
        }
        let wall = (end - start).as_secs_f64();
        lat.sort_unstable();
        let us = |q| support::pct(&lat, q) as f64 / 1000.0;
        let codes: Vec<String> = codes.iter().map(|(k, v)| format!("{k}x{v}")).collect();
        println!(
            "RESULT requests={} secs={wall:.3} p50_us={:.0} p99_us={:.0} max_us={:.0} errors={errors} non200={non200} short={short} codes={}",
            lat.len(),
            us(0.5),
            us(0.99),
            us(1.0),
            if codes.is_empty() {
                "-".into()
            } else {
                codes.join(",")
            },
        );
    });
    std::process::exit(0);
}

// ---------------------------------------------------------------------------------------------
// Fake pods (in this process; their CPU is nobody's under test).

/// Binds one listener per pod and serves its body to every `GET /metrics` (HTTP/1.1 keep-alive).
async fn start_fake_pods(pods: usize, port: u16) {
    for k in 0..pods {
        let addr = SocketAddr::new(IpAddr::V4(pod_ip(k)), port);
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .unwrap_or_else(|e| panic!("fake pod: bind {addr}: {e}"));
        let body = Bytes::from(pod_body(k));
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    // Out of descriptors for a moment: retry rather than lose the pod.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let body = body.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let resp = if req.uri().path() == "/metrics" {
                            hyper::Response::builder()
                                .header("content-type", "text/plain; version=0.0.4; charset=utf-8")
                                .body(Full::new(body.clone()))
                        } else {
                            hyper::Response::builder()
                                .status(404)
                                .body(Full::new(Bytes::new()))
                        };
                        async move { resp }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(true)
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
    }
}

// ---------------------------------------------------------------------------------------------
// The control plane: etcd and kube-apiserver only (no controllers: the bench writes the pods'
// status itself, and the adapters are read directly, not through the aggregator).

/// Runs a script of `scripts/` that prints a path as its last stdout line (its progress goes to
/// stderr) and returns that path.
fn script_path(script: &str) -> PathBuf {
    let path = workspace_root().join("scripts").join(script);
    let out = Command::new(&path)
        .stderr(std::process::Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", path.display()));
    assert!(
        out.status.success(),
        "{} failed ({})",
        path.display(),
        out.status
    );
    let text = String::from_utf8_lossy(&out.stdout);
    PathBuf::from(text.lines().last().unwrap_or_default().trim())
}

/// Starts `program` with `argv(ports)` on `N` ports that were free a moment ago and polls
/// `ready(ports)` until it holds; returns the process and its ports.
///
/// NB: etcd, kube-apiserver and prometheus-adapter take their ports as flags and cannot bind :0
/// and report it (prometheus-adapter's generic apiserver treats `--secure-port=0` as "do not
/// serve"); another process may take a port in between, and the daemon then exits with "address
/// already in use": it is started again on fresh ports, at most [`PORT_ATTEMPTS`] times.
async fn start_on_free_ports<const N: usize, A, F, Fut>(
    name: &str,
    program: &Path,
    argv: A,
    mut ready: F,
) -> (ProcessGuard, [u16; N])
where
    A: Fn([u16; N]) -> Vec<String>,
    F: FnMut([u16; N]) -> Fut,
    Fut: Future<Output = bool>,
{
    for attempt in 1..=PORT_ATTEMPTS {
        let ports: [u16; N] = std::array::from_fn(|_| free_port());
        let mut cmd = Command::new(program);
        cmd.args(argv(ports));
        let mut process = ProcessGuard::spawn(cmd, name);
        let start = Instant::now();
        loop {
            if ready(ports).await {
                return (process, ports);
            }
            if let Some(status) = process.try_wait() {
                let log = format!("{}{}", process.stdout(), process.stderr());
                let taken = log.to_ascii_lowercase().contains("address already in use");
                assert!(
                    taken && attempt < PORT_ATTEMPTS,
                    "{name} exited ({status}) before it was ready (attempt {attempt}):\n{}",
                    tail(&log, 40)
                );
                eprintln!("{name}: a port of {ports:?} was taken before it bound it; again");
                break;
            }
            assert!(
                start.elapsed() < GIVE_UP,
                "{name} not ready within {GIVE_UP:?}:\n{}",
                tail(&format!("{}{}", process.stdout(), process.stderr()), 40)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    unreachable!("the last attempt returns or panics")
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn strings(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// A client for the cluster in `kubeconfig`.
async fn client_from(kubeconfig: &Path) -> Result<kube::Client, String> {
    let kc = Kubeconfig::read_from(kubeconfig).map_err(|e| e.to_string())?;
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    kube::Client::try_from(config).map_err(|e| e.to_string())
}

/// Files and processes of the control plane.
struct ControlPlane {
    etcd: ProcessGuard,
    apiserver: ProcessGuard,
    /// Cluster-admin client (the bench's own calls).
    client: kube::Client,
    /// The adapters' kubeconfig (user `bench-adapter`).
    adapter_kubeconfig: PathBuf,
    /// The adapters' serving certificate (all of them serve the same one).
    serving: pki::Pair,
    /// The CA of that certificate, which the load generator trusts.
    serving_ca: PathBuf,
}

async fn start_control_plane(dir: &Path, bin: &Path) -> ControlPlane {
    let pki_dir = dir.join("pki");
    std::fs::create_dir_all(&pki_dir).expect("pki dir");
    let cluster_ca = pki::Ca::new("bench-cluster-ca");
    let cluster_ca_file = cluster_ca.write(&pki_dir, "cluster-ca");
    let apiserver_tls = cluster_ca.leaf(
        &pki_dir,
        "apiserver",
        "kube-apiserver",
        &[],
        &["localhost", "127.0.0.1"],
        &[ServerAuth],
    );
    // The requestheader flags make kube-apiserver publish a complete
    // kube-system/extension-apiserver-authentication ConfigMap, which both adapters read at
    // start-up; the front proxy itself is unused (the adapters are read directly).
    let front_proxy_ca = pki::Ca::new("bench-front-proxy-ca");
    let front_proxy_ca_file = front_proxy_ca.write(&pki_dir, "front-proxy-ca");
    let front_proxy = front_proxy_ca.leaf(
        &pki_dir,
        "front-proxy-client",
        "front-proxy-client",
        &[],
        &[],
        &[ClientAuth],
    );
    let serving_ca = pki::Ca::new("bench-adapters-ca");
    let serving_ca_file = serving_ca.write(&pki_dir, "adapters-ca");
    let serving = serving_ca.leaf(
        &pki_dir,
        "adapter",
        "bench-adapter",
        &[],
        &["localhost", "127.0.0.1"],
        &[ServerAuth],
    );
    let (sa_key, sa_pub) = (pki_dir.join("sa.key"), pki_dir.join("sa.pub"));
    pki::write_signing_key(&sa_key, &sa_pub);
    let tokens = dir.join("tokens.csv");
    std::fs::write(
        &tokens,
        format!(
            "{ADMIN_TOKEN},admin,admin-uid,\"system:masters\"\n\
             {ADAPTER_TOKEN},bench-adapter,adapter-uid,\"system:masters\"\n\
             {READER_TOKEN},bench-reader,reader-uid\n"
        ),
    )
    .expect("token file");

    let etcd_data = dir.join("etcd");
    let (etcd, [etcd_port, _]) = start_on_free_ports(
        "etcd",
        &bin.join("etcd"),
        |[client, peer]| {
            // A retry starts on an empty data dir: the failed attempt may have written its peer URL.
            let _ = std::fs::remove_dir_all(&etcd_data);
            strings(&[
                "--name=bench",
                &format!("--data-dir={}", etcd_data.display()),
                &format!("--listen-client-urls=http://127.0.0.1:{client}"),
                &format!("--advertise-client-urls=http://127.0.0.1:{client}"),
                &format!("--listen-peer-urls=http://127.0.0.1:{peer}"),
                &format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer}"),
                &format!("--initial-cluster=bench=http://127.0.0.1:{peer}"),
                "--log-level=warn",
                // A bench cluster's data need not survive a power cut; fsync dominates on shared disks.
                "--unsafe-no-fsync",
            ])
        },
        |[client, _]| async move {
            let addr = SocketAddr::from(([127, 0, 0, 1], client));
            matches!(ws_e2e::plain_get(addr, "/health").await, Ok((200, b)) if b.contains("true"))
        },
    )
    .await;

    let p = |path: &Path| path.display().to_string();
    let admin_kubeconfig = dir.join("admin.kubeconfig");
    let (apiserver, [api_port]) = start_on_free_ports(
        "kube-apiserver",
        &bin.join("kube-apiserver"),
        |[port]| {
            strings(&[
                &format!("--etcd-servers=http://127.0.0.1:{etcd_port}"),
                "--bind-address=127.0.0.1",
                &format!("--secure-port={port}"),
                &format!("--tls-cert-file={}", p(&apiserver_tls.cert)),
                &format!("--tls-private-key-file={}", p(&apiserver_tls.key)),
                &format!("--client-ca-file={}", p(&cluster_ca_file)),
                &format!("--token-auth-file={}", p(&tokens)),
                "--authorization-mode=RBAC",
                // No controller manager creates the `default` ServiceAccount; the pods need none.
                "--disable-admission-plugins=ServiceAccount",
                "--service-account-issuer=https://kubernetes.default.svc",
                &format!("--service-account-key-file={}", p(&sa_pub)),
                &format!("--service-account-signing-key-file={}", p(&sa_key)),
                "--service-cluster-ip-range=10.96.0.0/24",
                &format!("--requestheader-client-ca-file={}", p(&front_proxy_ca_file)),
                "--requestheader-allowed-names=front-proxy-client",
                "--requestheader-username-headers=X-Remote-User",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                &format!("--proxy-client-cert-file={}", p(&front_proxy.cert)),
                &format!("--proxy-client-key-file={}", p(&front_proxy.key)),
                "--profiling=false",
                "--v=0",
            ])
        },
        |[port]| {
            let kubeconfig = admin_kubeconfig.clone();
            let ca = cluster_ca_file.clone();
            async move {
                let server = format!("https://127.0.0.1:{port}");
                ws_e2e::e2e::write_kubeconfig(&kubeconfig, &server, Some(&ca), Some(ADMIN_TOKEN));
                let Ok(client) = client_from(&kubeconfig).await else {
                    return false;
                };
                let req = http::Request::get("/readyz")
                    .body(Vec::new())
                    .expect("request");
                client
                    .request_text(req)
                    .await
                    .is_ok_and(|t| t.trim() == "ok")
            }
        },
    )
    .await;
    let server = format!("https://127.0.0.1:{api_port}");
    ws_e2e::e2e::write_kubeconfig(
        &admin_kubeconfig,
        &server,
        Some(&cluster_ca_file),
        Some(ADMIN_TOKEN),
    );
    let adapter_kubeconfig = dir.join("adapter.kubeconfig");
    ws_e2e::e2e::write_kubeconfig(
        &adapter_kubeconfig,
        &server,
        Some(&cluster_ca_file),
        Some(ADAPTER_TOKEN),
    );
    let client = client_from(&admin_kubeconfig)
        .await
        .expect("cluster-admin client");
    ControlPlane {
        etcd,
        apiserver,
        client,
        adapter_kubeconfig,
        serving,
        serving_ca: serving_ca_file,
    }
}

/// Creates or updates one object (given as JSON) by server-side apply at `path/name`.
async fn apply(client: &kube::Client, path: &str, name: &str, object: serde_json::Value) {
    let body = serde_json::to_vec(&object).expect("object JSON");
    let req = http::Request::patch(format!("{path}/{name}?fieldManager=bench-peers&force=true"))
        .header(http::header::CONTENT_TYPE, "application/apply-patch+yaml")
        .body(body)
        .expect("request");
    client
        .request_text(req)
        .await
        .unwrap_or_else(|e| panic!("applying {path}/{name}: {e}"));
}

/// The namespace, the reader's permission, and the pods: created, then reported Running and
/// Ready on their fake pod's address (what a kubelet would write).
async fn create_objects(client: &kube::Client, pods: usize, pod_port: u16) {
    apply(
        client,
        "/api/v1/namespaces",
        NAMESPACE,
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}),
    )
    .await;
    apply(
        client,
        "/apis/rbac.authorization.k8s.io/v1/clusterroles",
        "custom-metrics-reader",
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": "custom-metrics-reader"},
            "rules": [{"apiGroups": ["custom.metrics.k8s.io"], "resources": ["*"], "verbs": ["get", "list"]}],
        }),
    )
    .await;
    apply(
        client,
        "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
        "bench-reader",
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": "bench-reader"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "custom-metrics-reader"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "bench-reader"}],
        }),
    )
    .await;
    let api: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let started = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .expect("RFC 3339 time");
    let results: Vec<()> = futures::stream::iter(0..pods)
        .map(|k| {
            let (api, started) = (api.clone(), started.clone());
            async move {
                let (name, app) = pod_name(k);
                let pod: Pod = serde_json::from_value(json!({
                    "apiVersion": "v1", "kind": "Pod",
                    "metadata": {
                        "name": name, "namespace": NAMESPACE,
                        "labels": {"app": format!("ws-{app}")},
                        "annotations": {
                            "ws-metrics-adapter.io/scrape": "true",
                            "ws-metrics-adapter.io/port": pod_port.to_string(),
                        },
                    },
                    "spec": {
                        "nodeName": "bench-node",
                        "automountServiceAccountToken": false,
                        "containers": [{"name": "ws", "image": "ws-demo:local"}],
                    },
                }))
                .expect("pod object");
                api.create(&PostParams::default(), &pod)
                    .await
                    .unwrap_or_else(|e| panic!("creating pod {name}: {e}"));
                let ip = pod_ip(k).to_string();
                let cond =
                    |t: &str| json!({"type": t, "status": "True", "lastTransitionTime": started});
                let status = json!({"status": {
                    "phase": "Running",
                    "hostIP": "127.0.0.1",
                    "podIP": ip, "podIPs": [{"ip": ip}],
                    "startTime": started,
                    "conditions": [cond("PodScheduled"), cond("Initialized"),
                                   cond("ContainersReady"), cond("Ready")],
                    "containerStatuses": [{
                        "name": "ws", "image": "ws-demo:local", "imageID": "",
                        "ready": true, "started": true, "restartCount": 0,
                        "state": {"running": {"startedAt": started}},
                    }],
                }});
                api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                    .await
                    .unwrap_or_else(|e| panic!("pod {name} status: {e}"));
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    assert_eq!(results.len(), pods);
}

/// `apiserver_request_total{verb="LIST"}` summed over resources and codes, from kube-apiserver's
/// own /metrics.
async fn apiserver_lists(client: &kube::Client) -> f64 {
    let req = http::Request::get("/metrics")
        .body(Vec::new())
        .expect("request");
    let text = client
        .request_text(req)
        .await
        .expect("kube-apiserver /metrics");
    text.lines()
        .filter(|l| l.starts_with("apiserver_request_total{") && l.contains("verb=\"LIST\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

// ---------------------------------------------------------------------------------------------
// The adapters.

/// prometheus-adapter's rules: the same series, served as the same metric of pods (its
/// `docs/config.md` rule shape; `metricsQuery` sums the route series per pod, as this adapter sums
/// a pod's series of a family).
fn prometheus_adapter_rules() -> String {
    format!(
        r#"rules:
- seriesQuery: '{FAMILY}{{namespace!="",pod!=""}}'
  resources:
    overrides:
      namespace: {{resource: "namespace"}}
      pod: {{resource: "pod"}}
  name:
    matches: "^{FAMILY}$"
    as: "{METRIC}"
  metricsQuery: 'sum(<<.Series>>{{<<.LabelMatchers>>}}) by (<<.GroupBy>>)'
"#
    )
}

/// One adapter under test.
struct Adapter {
    name: String,
    process: ProcessGuard,
    uri: http::Uri,
}

impl Adapter {
    fn pid(&self) -> String {
        self.process.pid().to_string()
    }
}

/// Polls the read until it answers 200 with [`APP_SIZE`] items (values collected, caches
/// warm), or panics after [`GIVE_UP`] with the adapter's log.
async fn wait_answering(adapter: &mut Adapter, client: &support::HttpsClient) {
    let start = Instant::now();
    loop {
        let last = match read_once(client, &adapter.uri, READER_TOKEN).await {
            (200, n) if n == APP_SIZE => return,
            other => other,
        };
        if let Some(status) = adapter.process.try_wait() {
            panic!(
                "{} exited ({status}):\n{}",
                adapter.name,
                tail(&adapter.process.stderr(), 40)
            );
        }
        assert!(
            start.elapsed() < GIVE_UP,
            "{} did not answer the read within {GIVE_UP:?} (last: status {}, {} items):\n{}",
            adapter.name,
            last.0,
            last.1,
            tail(&adapter.process.stderr(), 40)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `ws-metrics-adapter serve` on port 0 with `extra` flags; its address from its log.
async fn start_ours(name: &str, cp: &ControlPlane, extra: &[String]) -> Adapter {
    let kc = cp.adapter_kubeconfig.display().to_string();
    let mut cmd = Command::new(ws_e2e::e2e::bin("ws-metrics-adapter"));
    cmd.args([
        "serve".to_string(),
        format!("--kubeconfig={kc}"),
        format!("--authentication-kubeconfig={kc}"),
        format!("--authorization-kubeconfig={kc}"),
        format!("--tls-cert-file={}", cp.serving.cert.display()),
        format!("--tls-private-key-file={}", cp.serving.key.display()),
        "--bind-address=127.0.0.1".into(),
        "--secure-port=0".into(),
        "--metrics-bind-address=127.0.0.1:0".into(),
    ])
    .args(extra)
    .env("RUST_LOG", "warn,ws_metrics_adapter=info");
    let mut process = ProcessGuard::spawn(cmd, name);
    let addr = process.listening_addr("https", GIVE_UP).await;
    Adapter {
        name: name.into(),
        process,
        uri: format!("https://{addr}{}", read_path())
            .parse()
            .expect("uri"),
    }
}

/// prometheus-adapter on a free port with `extra` flags (the throttle).
async fn start_theirs(
    name: &str,
    binary: &Path,
    cp: &ControlPlane,
    prometheus_url: &str,
    rules: &Path,
    extra: &[&str],
    probe: &support::HttpsClient,
) -> Adapter {
    let kc = cp.adapter_kubeconfig.display().to_string();
    let (process, [port]) = start_on_free_ports(
        name,
        binary,
        |[port]| {
            let mut argv = vec![
                format!("--secure-port={port}"),
                "--bind-address=127.0.0.1".into(),
                format!("--tls-cert-file={}", cp.serving.cert.display()),
                format!("--tls-private-key-file={}", cp.serving.key.display()),
                format!("--lister-kubeconfig={kc}"),
                format!("--authentication-kubeconfig={kc}"),
                format!("--authorization-kubeconfig={kc}"),
                format!("--prometheus-url={prometheus_url}"),
                format!("--config={}", rules.display()),
                // The shipped manifest's relist interval (the default is 10 min); the first list
                // runs at start-up, after Prometheus already holds every series.
                "--metrics-relist-interval=1m".into(),
                "--v=0".into(),
            ];
            argv.extend(extra.iter().map(|s| s.to_string()));
            argv
        },
        |[port]| {
            let uri: http::Uri = format!("https://127.0.0.1:{port}/readyz")
                .parse()
                .expect("uri");
            async move { read_once(probe, &uri, READER_TOKEN).await.0 == 200 }
        },
    )
    .await;
    Adapter {
        name: name.into(),
        process,
        uri: format!("https://127.0.0.1:{port}{}", read_path())
            .parse()
            .expect("uri"),
    }
}

// ---------------------------------------------------------------------------------------------
// Runs and figures.

/// Counters read before and after a run.
#[derive(Clone, Copy, Default)]
struct Counters {
    adapter_ticks: u64,
    upstream_ticks: u64,
    queries: f64,
    lists: f64,
}

/// One measured run.
struct Run {
    adapter: usize,
    conns: usize,
    result: HashMap<String, String>,
    delta: Counters,
}

impl Run {
    fn num(&self, key: &str) -> f64 {
        self.result
            .get(key)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }
}

struct Bench {
    cp: ControlPlane,
    prometheus: Prometheus,
    /// kube-apiserver, etcd and Prometheus.
    upstream_pids: Vec<String>,
    ca: PathBuf,
    secs: u64,
}

impl Bench {
    async fn counters(&self, adapter: &Adapter) -> Counters {
        Counters {
            adapter_ticks: support::cpu_ticks(&adapter.pid()),
            upstream_ticks: self
                .upstream_pids
                .iter()
                .map(|p| support::cpu_ticks(p))
                .sum(),
            queries: self.prometheus.requests_served("/api/v1/query").await,
            lists: apiserver_lists(&self.cp.client).await,
        }
    }

    /// One window of the load generator against `adapter` (already resumed and answering).
    async fn run(&self, adapter: &Adapter, conns: usize) -> (HashMap<String, String>, Counters) {
        let mut cmd = Command::new(std::env::current_exe().expect("bench executable"));
        cmd.env(ROLE_VAR, "client")
            .env("WSMA_CLIENT_URI", adapter.uri.to_string())
            .env("WSMA_CLIENT_CA", &self.ca)
            .env("WSMA_CLIENT_TOKEN", READER_TOKEN)
            .env("WSMA_CLIENT_CONNS", conns.to_string())
            .env("WSMA_CLIENT_SECONDS", self.secs.to_string())
            .env("WSMA_CLIENT_EXPECT", APP_SIZE.to_string());
        let mut client = ChildGuard::spawn("load generator", cmd, true);
        tokio::task::block_in_place(|| client.expect_line("WARM", GIVE_UP));
        let before = self.counters(adapter).await;
        client.send_line("GO");
        let line = tokio::task::block_in_place(|| {
            client.expect_line("RESULT", Duration::from_secs(self.secs) + GIVE_UP)
        });
        let after = self.counters(adapter).await;
        let result = line
            .split_whitespace()
            .skip(1)
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let delta = Counters {
            adapter_ticks: after.adapter_ticks - before.adapter_ticks,
            upstream_ticks: after.upstream_ticks - before.upstream_ticks,
            queries: after.queries - before.queries,
            lists: after.lists - before.lists,
        };
        (result, delta)
    }
}

/// Sum of a run field over runs.
fn sum(runs: &[&Run], key: &str) -> f64 {
    runs.iter().map(|r| r.num(key)).sum()
}

/// Aggregate of one adapter at one C over the rounds.
struct Summary {
    requests: f64,
    rps: f64,
    p50_ms: (f64, f64),
    /// Mean over the runs of each run's p50.
    p50_mean_ms: f64,
    p99_ms: (f64, f64),
    errors: f64,
    non200: f64,
    short: f64,
    cpu_per_10k: f64,
    upstream_per_10k: f64,
    queries_per_read: f64,
    lists_per_read: f64,
}

fn summarize(runs: &[&Run], ticks: f64) -> Summary {
    let requests = sum(runs, "requests");
    let secs = sum(runs, "secs");
    let range = |key: &str| {
        let v: Vec<f64> = runs.iter().map(|r| r.num(key) / 1000.0).collect();
        (
            v.iter().copied().fold(f64::INFINITY, f64::min),
            v.iter().copied().fold(0.0, f64::max),
        )
    };
    let per = |x: f64| {
        if requests > 0.0 {
            x / requests
        } else {
            f64::NAN
        }
    };
    Summary {
        requests,
        rps: if secs > 0.0 { requests / secs } else { 0.0 },
        p50_ms: range("p50_us"),
        p50_mean_ms: runs.iter().map(|r| r.num("p50_us") / 1000.0).sum::<f64>()
            / runs.len().max(1) as f64,
        p99_ms: range("p99_us"),
        errors: sum(runs, "errors"),
        non200: sum(runs, "non200"),
        short: sum(runs, "short"),
        cpu_per_10k: per(runs
            .iter()
            .map(|r| r.delta.adapter_ticks as f64)
            .sum::<f64>()
            / ticks)
            * 10_000.0,
        upstream_per_10k: per(runs
            .iter()
            .map(|r| r.delta.upstream_ticks as f64)
            .sum::<f64>()
            / ticks)
            * 10_000.0,
        queries_per_read: per(runs.iter().map(|r| r.delta.queries).sum()),
        lists_per_read: per(runs.iter().map(|r| r.delta.lists).sum()),
    }
}

fn ms_range((lo, hi): (f64, f64)) -> String {
    if (hi - lo).abs() < 0.005 {
        format!("{lo:.2}")
    } else {
        format!("{lo:.2}–{hi:.2}")
    }
}

fn main() {
    if std::env::var(ROLE_VAR).as_deref() == Ok("client") {
        client_main();
        return;
    }
    ws_metrics_adapter::server::tls::install_provider();
    let pods = support::env_num("WSMA_BENCH_PODS", 1000) as usize;
    assert!(
        pods.is_multiple_of(APP_SIZE)
            && pods > SELECTED_APP * APP_SIZE
            && pods <= 250 * PODS_PER_SUBNET,
        "WSMA_BENCH_PODS: a multiple of {APP_SIZE} above {} (the read selects app ws-{SELECTED_APP}), at most {}",
        SELECTED_APP * APP_SIZE,
        250 * PODS_PER_SUBNET
    );
    let secs = support::env_num("WSMA_BENCH_SECONDS", 10);
    let rounds = support::env_num("WSMA_BENCH_ROUNDS", 2) as usize;
    let conns = support::env_list("WSMA_BENCH_CONNS", &[1, 16]);
    let pod_port = support::env_num("WSMA_BENCH_POD_PORT", 9187) as u16;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(bench(pods, secs, rounds, conns, pod_port));
}

async fn bench(pods: usize, secs: u64, rounds: usize, conns: Vec<usize>, pod_port: u16) {
    let started = Instant::now();
    let load_start = load_average();
    println!("load average at start: {load_start}");
    let control_plane_bin = tokio::task::spawn_blocking(|| script_path("build-control-plane.sh"))
        .await
        .expect("build-control-plane.sh");
    let theirs_bin = tokio::task::spawn_blocking(|| script_path("build-prometheus-adapter.sh"))
        .await
        .expect("build-prometheus-adapter.sh");
    let prometheus_bin = require_tool(
        "prometheus",
        "install Debian's `prometheus` package (scripts/install-deps.sh does)",
    );
    let dir = tempfile::Builder::new()
        .prefix("ws-bench-peers-")
        .tempdir()
        .expect("tempdir");

    let cp = start_control_plane(dir.path(), &control_plane_bin).await;
    println!(
        "kube-apiserver ready ({:.1} s)",
        started.elapsed().as_secs_f64()
    );
    start_fake_pods(pods, pod_port).await;
    let t = Instant::now();
    create_objects(&cp.client, pods, pod_port).await;
    println!(
        "{pods} fake pods serving and their Pod objects Running and Ready ({:.1} s)",
        t.elapsed().as_secs_f64()
    );

    let prom_dir = dir.path().join("prometheus");
    std::fs::create_dir_all(&prom_dir).expect("prometheus dir");
    let names: Vec<String> = (0..pods).map(|k| pod_name(k).0).collect();
    let targets: Vec<Target<'_>> = (0..pods)
        .map(|k| Target {
            addr: format!("{}:{pod_port}", pod_ip(k)),
            namespace: NAMESPACE,
            pod: &names[k],
        })
        .collect();
    let mut prometheus = Prometheus::start(prometheus_bin, &prom_dir, &scrape_config(&targets));
    prometheus.wait_ready(GIVE_UP).await;
    // NB: a count, not the series: Prometheus sends a long answer chunked, which
    // `Prometheus::query`'s plain GET does not decode.
    let scraped = format!("count(sum by (pod) ({FAMILY}))");
    ws_e2e::eventually(GIVE_UP, &format!("{pods} pods in Prometheus"), || async {
        let result = prometheus.query(&scraped).await?;
        let n: f64 = result.first()?["value"][1].as_str()?.parse().ok()?;
        (n as usize >= pods).then_some(())
    })
    .await;
    println!(
        "Prometheus scrapes all {pods} pods every 1 s ({:.1} s)",
        started.elapsed().as_secs_f64()
    );
    let prom_pid = prometheus
        .pid()
        .expect("Prometheus runs (waited for above)")
        .to_string();

    let probe = support::https_client(
        support::tls_client_config(
            &std::fs::read_to_string(&cp.serving_ca).expect("read the adapters' CA"),
        ),
        4,
    );
    let rules = dir.path().join("prometheus-adapter-rules.yaml");
    std::fs::write(&rules, prometheus_adapter_rules()).expect("write rules");
    let mut adapters = vec![
        start_ours("ws-metrics-adapter (scrape)", &cp, &[]).await,
        start_ours(
            "ws-metrics-adapter (--source=prometheus)",
            &cp,
            &[
                "--source=prometheus".into(),
                format!("--prometheus-url={}", prometheus.url()),
            ],
        )
        .await,
        start_theirs(
            "prometheus-adapter (default --client-qps 5)",
            &theirs_bin,
            &cp,
            &prometheus.url(),
            &rules,
            &[],
            &probe,
        )
        .await,
        start_theirs(
            "prometheus-adapter (unthrottled)",
            &theirs_bin,
            &cp,
            &prometheus.url(),
            &rules,
            &["--client-qps=100000", "--client-burst=100000"],
            &probe,
        )
        .await,
    ];
    for a in &mut adapters {
        wait_answering(a, &probe).await;
        a.process.signal("STOP");
    }
    println!(
        "all adapters answer the read ({:.1} s); load average {}",
        started.elapsed().as_secs_f64(),
        load_average()
    );

    let bench = Bench {
        upstream_pids: vec![
            cp.apiserver.pid().to_string(),
            cp.etcd.pid().to_string(),
            prom_pid,
        ],
        cp,
        prometheus,
        ca: dir.path().join("pki/adapters-ca.crt"),
        secs,
    };
    let mut runs: Vec<Run> = Vec::new();
    println!();
    println!(
        "| round | adapter | C | requests | req/s | p50 ms | p99 ms | max ms | errors | non-200 | short | adapter CPU s | queries | LISTs | load |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    let ticks = support::clock_ticks();
    for round in 1..=rounds {
        for &c in &conns {
            for (i, adapter) in adapters.iter_mut().enumerate() {
                adapter.process.signal("CONT");
                wait_answering(adapter, &probe).await;
                let (result, delta) = bench.run(adapter, c).await;
                adapter.process.signal("STOP");
                let run = Run {
                    adapter: i,
                    conns: c,
                    result,
                    delta,
                };
                println!(
                    "| {round} | {} | {c} | {:.0} | {:.0} | {:.2} | {:.2} | {:.1} | {:.0} | {:.0} | {:.0} | {:.2} | {:.0} | {:.0} | {} |",
                    adapter.name,
                    run.num("requests"),
                    run.num("requests") / run.num("secs").max(1e-9),
                    run.num("p50_us") / 1000.0,
                    run.num("p99_us") / 1000.0,
                    run.num("max_us") / 1000.0,
                    run.num("errors"),
                    run.num("non200"),
                    run.num("short"),
                    delta.adapter_ticks as f64 / ticks,
                    delta.queries,
                    delta.lists,
                    load_average(),
                );
                if run.num("non200") > 0.0 {
                    println!(
                        "  non-200 answers by status: {}",
                        run.result.get("codes").map_or("-", String::as_str)
                    );
                }
                runs.push(run);
            }
        }
    }
    let hwm: Vec<f64> = adapters
        .iter()
        .map(|a| support::status_kib(&a.pid(), "VmHWM") as f64 / 1024.0)
        .collect();

    println!();
    println!(
        "## Summary: {pods} pods, the read selecting {APP_SIZE}, {rounds} interleaved round(s) of {secs} s per adapter and C"
    );
    println!();
    println!(
        "| adapter | C | requests | req/s | p50 ms | p99 ms | errors | non-200 | short | adapter CPU s / 10k req | kube-apiserver + etcd + Prometheus CPU s / 10k req | Prometheus queries / read | kube-apiserver LISTs / read | peak RSS MiB |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut table: HashMap<(usize, usize), Summary> = HashMap::new();
    for &c in &conns {
        for (i, a) in adapters.iter().enumerate() {
            let mine: Vec<&Run> = runs
                .iter()
                .filter(|r| r.adapter == i && r.conns == c)
                .collect();
            let s = summarize(&mine, ticks);
            println!(
                "| {} | {c} | {:.0} | {:.1} | {} | {} | {:.0} | {:.0} | {:.0} | {:.3} | {:.3} | {:.3} | {:.3} | {:.1} |",
                a.name,
                s.requests,
                s.rps,
                ms_range(s.p50_ms),
                ms_range(s.p99_ms),
                s.errors,
                s.non200,
                s.short,
                s.cpu_per_10k,
                s.upstream_per_10k,
                s.queries_per_read,
                s.lists_per_read,
                hwm[i],
            );
            table.insert((i, c), s);
        }
    }
    println!();
    println!("## Ratios, ours / theirs (req/s: higher is better; CPU and RSS: lower is better)");
    println!();
    println!("| ours | theirs | C | req/s | p50 | adapter CPU per request | peak RSS |");
    println!("|---|---|---:|---:|---:|---:|---:|");
    for &c in &conns {
        for ours in [0, 1] {
            for theirs in [2, 3] {
                let (o, t) = (&table[&(ours, c)], &table[&(theirs, c)]);
                println!(
                    "| {} | {} | {c} | {:.0}× | {:.4}× | {:.4}× | {:.2}× |",
                    adapters[ours].name,
                    adapters[theirs].name,
                    o.rps / t.rps,
                    o.p50_mean_ms / t.p50_mean_ms,
                    o.cpu_per_10k / t.cpu_per_10k,
                    hwm[ours] / hwm[theirs],
                );
            }
        }
    }
    println!();
    println!(
        "load average at start: {load_start}; at the end: {}; wall time {:.0} s",
        load_average(),
        started.elapsed().as_secs_f64()
    );
}
