//! Collection benchmark (issue target (c)): the real release binary scraping 1,000 and 10,000
//! fake pods every second.
//!
//! Fake pods run in helper processes (this binary re-executed with `WSMA_BENCH_ROLE=fakepods`):
//! each process serves up to 2,500 pods, one listener per pod on its own loopback address
//! (`127.0.(1 + k/250).(k%250 + 1):9100`), answering `GET /metrics` with a ~3 KiB Go-client-like
//! body over HTTP/1.1 keep-alive, on a 2-worker tokio runtime.
//!
//! Measured: idle RSS (empty pods file); then per N, once every pod has a fresh value, over a
//! window: adapter CPU (utime+stime / wall), peak RSS (VmHWM), round durations (histogram deltas
//! from the adapter's own /metrics), overruns and scrape outcomes; plus one HTTPS wildcard query
//! checking the served values. Target: 10,000 pods every second within the interval with
//! ≤ 1 core and ≤ 128 MiB RSS; idle RSS ≤ 20 MiB.
//!
//! Run: `cargo bench --bench collection`. Knobs (env): `WSMA_BENCH_PODS` (default 1000,10000),
//! `WSMA_BENCH_SECONDS` (window, default 20), `WSMA_BENCH_CONCURRENCY` (adapter
//! --scrape-concurrency, default 256, a list runs each), `WSMA_BENCH_POD_PORT` (default 9100).

mod support;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use support::{ChildGuard, ROLE_VAR};
use ws_metrics_adapter::exposition;
use ws_metrics_adapter::server::tls;

const PODS_PER_PROCESS: usize = 2_500;
const NAMESPACE: &str = support::BENCH_NAMESPACE;
const APP_SIZE: usize = 100;

fn pod_ip(k: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, (1 + k / 250) as u8, (k % 250 + 1) as u8)
}

/// Connection counts of fake pod `k`: (chat, echo).
fn pod_values(k: usize) -> (u64, u64) {
    ((k as u64 * 7) % 500, k as u64 % 13)
}

/// A Go-client-like exposition (~3 KiB): go_* and process_* metrics, a histogram, and the
/// two `websocket_connections_active` series.
fn metrics_body(k: usize) -> String {
    let (chat, echo) = pod_values(k);
    let mut s = String::with_capacity(3300);
    s.push_str(
        "# HELP go_gc_duration_seconds A summary of the wall-time pause (stop-the-world) duration in garbage collection cycles.
# TYPE go_gc_duration_seconds summary
go_gc_duration_seconds{quantile=\"0\"} 2.4042e-05
go_gc_duration_seconds{quantile=\"0.25\"} 3.6125e-05
go_gc_duration_seconds{quantile=\"0.5\"} 4.4916e-05
go_gc_duration_seconds{quantile=\"0.75\"} 6.0334e-05
go_gc_duration_seconds{quantile=\"1\"} 0.000512958
go_gc_duration_seconds_sum 0.019288916
go_gc_duration_seconds_count 311
# HELP go_goroutines Number of goroutines that currently exist.
# TYPE go_goroutines gauge
",
    );
    s.push_str(&format!("go_goroutines {}\n", 2 * (chat + echo) + 17));
    s.push_str(
        "# HELP go_info Information about the Go environment.
# TYPE go_info gauge
go_info{version=\"go1.22.5\"} 1
# HELP go_memstats_alloc_bytes Number of bytes allocated in heap and currently in use.
# TYPE go_memstats_alloc_bytes gauge
go_memstats_alloc_bytes 1.1843072e+07
# HELP go_memstats_alloc_bytes_total Total number of bytes allocated in heap until now, even if released already.
# TYPE go_memstats_alloc_bytes_total counter
go_memstats_alloc_bytes_total 2.864239432e+09
# HELP go_memstats_heap_inuse_bytes Number of heap bytes in use by spans.
# TYPE go_memstats_heap_inuse_bytes gauge
go_memstats_heap_inuse_bytes 1.4573568e+07
# HELP go_memstats_heap_objects Number of currently allocated objects.
# TYPE go_memstats_heap_objects gauge
go_memstats_heap_objects 61421
# HELP go_memstats_sys_bytes Number of bytes obtained from system.
# TYPE go_memstats_sys_bytes gauge
go_memstats_sys_bytes 3.0233864e+07
# HELP go_threads Number of OS threads created.
# TYPE go_threads gauge
go_threads 12
# HELP http_request_duration_seconds Duration of HTTP requests.
# TYPE http_request_duration_seconds histogram
",
    );
    let buckets = [
        "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "+Inf",
    ];
    let mut cum = 0u64;
    for (i, le) in buckets.iter().enumerate() {
        cum += [9120u64, 3380, 1210, 402, 96, 31, 7, 2, 1, 0, 0, 0][i];
        s.push_str(&format!(
            "http_request_duration_seconds_bucket{{handler=\"/ws\",le=\"{le}\"}} {cum}\n"
        ));
    }
    s.push_str(&format!("http_request_duration_seconds_sum{{handler=\"/ws\"}} 61.52839\nhttp_request_duration_seconds_count{{handler=\"/ws\"}} {cum}\n"));
    s.push_str(
        "# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.
# TYPE process_cpu_seconds_total counter
process_cpu_seconds_total 812.37
# HELP process_max_fds Maximum number of open file descriptors.
# TYPE process_max_fds gauge
process_max_fds 1.048576e+06
# HELP process_open_fds Number of open file descriptors.
# TYPE process_open_fds gauge
process_open_fds 214
# HELP process_resident_memory_bytes Resident memory size in bytes.
# TYPE process_resident_memory_bytes gauge
process_resident_memory_bytes 4.2106880e+07
# HELP process_start_time_seconds Start time of the process since unix epoch in seconds.
# TYPE process_start_time_seconds gauge
process_start_time_seconds 1.74877812297e+09
# HELP process_virtual_memory_bytes Virtual memory size in bytes.
# TYPE process_virtual_memory_bytes gauge
process_virtual_memory_bytes 1.269829632e+09
# HELP websocket_connections_active Open WebSocket connections by route.
# TYPE websocket_connections_active gauge
",
    );
    s.push_str(&format!(
        "websocket_connections_active{{route=\"chat\"}} {chat}\nwebsocket_connections_active{{route=\"echo\"}} {echo}\n"
    ));
    s
}

// ---------------------------------------------------------------------------------------------
// The fake pods role.

fn fakepods_main() {
    let var = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k} not set"));
    let start: usize = var("WSMA_FP_START").parse().expect("start");
    let count: usize = var("WSMA_FP_COUNT").parse().expect("count");
    let port: u16 = var("WSMA_FP_PORT").parse().expect("port");
    let max_secs: u64 = var("WSMA_FP_MAX_SECS").parse().expect("max secs");
    let accepted = Arc::new(AtomicU64::new(0));
    let requests = Arc::new(AtomicU64::new(0));
    {
        let (a, r) = (accepted.clone(), requests.clone());
        // "STATS" on stdin prints the counters; EOF (parent gone) exits.
        support::exit_on_stdin_eof(move |line| {
            if line == "STATS" {
                println!(
                    "STATS accepted={} requests={}",
                    a.load(Ordering::Relaxed),
                    r.load(Ordering::Relaxed)
                );
            }
        });
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let mut listeners = Vec::with_capacity(count);
        for k in start..start + count {
            let addr = SocketAddr::new(IpAddr::V4(pod_ip(k)), port);
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .unwrap_or_else(|e| panic!("bind {addr}: {e}"));
            listeners.push((k, l));
        }
        for (k, listener) in listeners {
            let body = Bytes::from(metrics_body(k));
            let (accepted, requests) = (accepted.clone(), requests.clone());
            tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    accepted.fetch_add(1, Ordering::Relaxed);
                    let (body, requests) = (body.clone(), requests.clone());
                    tokio::spawn(async move {
                        let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                            requests.fetch_add(1, Ordering::Relaxed);
                            let resp = if req.uri().path() == "/metrics" {
                                hyper::Response::builder()
                                    .header(
                                        "content-type",
                                        "text/plain; version=0.0.4; charset=utf-8",
                                    )
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
        println!("READY {count}");
        // Lifetime bound in case the parent never closes stdin.
        tokio::time::sleep(Duration::from_secs(max_secs)).await;
    });
    std::process::exit(0);
}

struct FakePods {
    procs: Vec<ChildGuard>,
}

impl FakePods {
    fn start(n: usize, port: u16, max_secs: u64) -> Self {
        let nproc = n.div_ceil(PODS_PER_PROCESS).max(1);
        let mut procs = Vec::with_capacity(nproc);
        let exe = std::env::current_exe().expect("current exe");
        for p in 0..nproc {
            let (from, to) = (p * n / nproc, (p + 1) * n / nproc);
            let mut cmd = Command::new(&exe);
            cmd.env(ROLE_VAR, "fakepods")
                .env("WSMA_FP_START", from.to_string())
                .env("WSMA_FP_COUNT", (to - from).to_string())
                .env("WSMA_FP_PORT", port.to_string())
                .env("WSMA_FP_MAX_SECS", max_secs.to_string());
            procs.push(ChildGuard::spawn(
                &format!("fakepods[{from}..{to}]"),
                cmd,
                true,
            ));
        }
        for p in &procs {
            p.expect_line("READY", Duration::from_secs(60));
        }
        // Bounded poll: the first and last pod answer.
        for k in [0, n - 1] {
            let addr = SocketAddr::new(IpAddr::V4(pod_ip(k)), port);
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match support::plain_get(addr, "/metrics") {
                    Ok((200, body)) if body.contains("websocket_connections_active") => break,
                    other => assert!(
                        Instant::now() < deadline,
                        "fake pod {k} at {addr} not answering: {other:?}"
                    ),
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Self { procs }
    }

    /// (accepted connections, requests) summed over the processes.
    fn stats(&mut self) -> (u64, u64) {
        let (mut a, mut r) = (0, 0);
        for p in &mut self.procs {
            p.send_line("STATS");
            let line = p.expect_line("STATS", Duration::from_secs(10));
            for (k, v) in line.split_whitespace().filter_map(|kv| kv.split_once('=')) {
                let v: u64 = v.parse().unwrap_or(0);
                match k {
                    "accepted" => a += v,
                    "requests" => r += v,
                    _ => {}
                }
            }
        }
        (a, r)
    }

    fn cpu_ticks(&self) -> u64 {
        self.procs
            .iter()
            .map(|p| support::cpu_ticks(&p.pid.to_string()))
            .sum()
    }
}

// ---------------------------------------------------------------------------------------------
// The adapter under test.

struct Adapter {
    guard: ChildGuard,
    pid: String,
    api: SocketAddr,
    metrics: SocketAddr,
    dir: tempfile::TempDir,
}

fn pods_yaml(n: usize, port: u16) -> String {
    let mut s = String::with_capacity(n * 200 + 16);
    if n == 0 {
        s.push_str("pods: []\n");
        return s;
    }
    s.push_str("pods:\n");
    for k in 0..n {
        let (app, i) = (k / APP_SIZE, k % APP_SIZE);
        let (name, hash) = support::pod_name(app, i);
        s.push_str(&format!(
            "- namespace: {NAMESPACE}\n  name: {name}\n  metricsUrl: \"http://{}:{port}/metrics\"\n  labels:\n    app: \"ws-{app}\"\n    pod-template-hash: \"{hash}\"\n",
            pod_ip(k)
        ));
    }
    s
}

impl Adapter {
    fn start(n: usize, pod_port: u16, concurrency: usize) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let pods = dir.path().join("pods.yaml");
        std::fs::write(&pods, pods_yaml(n, pod_port)).expect("write pods file");
        let ports = support::free_ports(2);
        let (api_port, metrics_port) = (ports[0], ports[1]);
        let log = std::fs::File::create(dir.path().join("adapter.log")).expect("log file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ws-metrics-adapter"));
        cmd.arg("serve")
            .arg("--static-pods")
            .arg(&pods)
            .args(["--secure-port", &api_port.to_string()])
            .args([
                "--metrics-bind-address",
                &format!("127.0.0.1:{metrics_port}"),
            ])
            .arg("--cert-dir")
            .arg(dir.path().join("certs"))
            .args(["--scrape-interval", "1s", "--scrape-timeout", "800ms"])
            .args(["--scrape-concurrency", &concurrency.to_string()])
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(log);
        let guard = ChildGuard::spawn(&format!("adapter N={n}"), cmd, false);
        let pid = guard.pid.to_string();
        Self {
            guard,
            pid,
            api: SocketAddr::from(([127, 0, 0, 1], api_port)),
            metrics: SocketAddr::from(([127, 0, 0, 1], metrics_port)),
            dir,
        }
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("adapter.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    fn wait_ready(&self, timeout: Duration) -> Duration {
        let t0 = Instant::now();
        loop {
            if let Ok((200, _)) = support::plain_get(self.metrics, "/readyz") {
                return t0.elapsed();
            }
            if let Some(status) = self.guard.exited() {
                panic!("adapter exited ({status}):\n{}", self.log_tail());
            }
            assert!(
                t0.elapsed() < timeout,
                "adapter not ready within {timeout:?}:\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The adapter's own metrics, by series (`name{labels}`) → value.
    fn scrape(&self) -> Metrics {
        let (code, body) = support::plain_get(self.metrics, "/metrics").expect("adapter /metrics");
        assert_eq!(code, 200);
        let samples = exposition::parse(&body).expect("adapter /metrics parses");
        let mut m = HashMap::new();
        for s in samples {
            let labels: Vec<String> = s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            m.insert(format!("{}{{{}}}", s.name, labels.join(",")), s.value);
        }
        Metrics(m)
    }

    fn wait_fresh(&self, n: usize, timeout: Duration) -> Duration {
        let t0 = Instant::now();
        loop {
            let fresh = self
                .scrape()
                .get("ws_metrics_adapter_pods_with_fresh_value{}");
            if fresh as usize == n {
                return t0.elapsed();
            }
            assert!(
                t0.elapsed() < timeout,
                "only {fresh} of {n} pods fresh after {timeout:?}:\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

struct Metrics(HashMap<String, f64>);

impl Metrics {
    fn get(&self, series: &str) -> f64 {
        self.0.get(series).copied().unwrap_or(0.0)
    }
    /// Series of a family with their values, e.g. every `…_scrapes_total{outcome=…}`.
    fn family(&self, prefix: &str) -> Vec<(String, f64)> {
        let mut v: Vec<(String, f64)> = self
            .0
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}

/// Upper bound of the highest histogram bucket that gained observations between two scrapes.
fn max_bucket(before: &Metrics, after: &Metrics, hist: &str) -> String {
    let mut buckets: Vec<(f64, f64)> = after
        .family(&format!("{hist}_bucket{{"))
        .into_iter()
        .filter_map(|(k, v)| {
            let le = k.split("le=").nth(1)?.trim_end_matches('}');
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, v - before.get(&k)))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last().map_or(0.0, |b| b.1);
    let first_full = buckets.iter().find(|b| b.1 >= total).map(|b| b.0);
    match first_full {
        Some(le) if le.is_finite() => format!("≤ {:.0} ms", le * 1000.0),
        Some(_) => "> largest bucket".into(),
        None => "n/a".into(),
    }
}

/// One HTTPS wildcard query for every pod of the namespace, checking the values served.
fn check_api(adapter: &Adapter, n: usize) -> String {
    let ca = std::fs::read_to_string(adapter.dir.path().join("certs").join(tls::CA_FILE))
        .expect("read certs/ca.crt");
    let client = support::https_client(support::tls_client_config(&ca), 1);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let uri: http::Uri = format!(
        "https://127.0.0.1:{}/apis/custom.metrics.k8s.io/v1beta2/namespaces/{NAMESPACE}/pods/%2A/websocket_connections",
        adapter.api.port()
    )
    .parse()
    .expect("uri");
    let (code, body, took) = rt.block_on(async {
        let t0 = Instant::now();
        let req = http::Request::get(uri)
            .body(Empty::<Bytes>::new())
            .expect("request");
        let resp = tokio::time::timeout(Duration::from_secs(10), client.request(req))
            .await
            .expect("API answered within 10 s")
            .expect("API request");
        let code = resp.status().as_u16();
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        (code, body, t0.elapsed())
    });
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    let v: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
    let items = v["items"].as_array().expect("items");
    assert_eq!(items.len(), n, "wildcard query must return every pod");
    let expected: HashMap<String, u64> = (0..n)
        .map(|k| {
            let (c, e) = pod_values(k);
            (support::pod_name(k / APP_SIZE, k % APP_SIZE).0, c + e)
        })
        .collect();
    for it in items {
        let name = it["describedObject"]["name"].as_str().expect("name");
        let value: u64 = it["value"]
            .as_str()
            .expect("value")
            .parse()
            .expect("integer value");
        assert_eq!(Some(&value), expected.get(name), "value of {name}");
    }
    format!(
        "{n} items, all values as served by the pods ({} KiB, {:.0?})",
        body.len() / 1024,
        took
    )
}

// ---------------------------------------------------------------------------------------------

struct Row {
    n: usize,
    concurrency: usize,
    ready: Duration,
    all_fresh: Duration,
    window: f64,
    cores: f64,
    rss_end_kib: u64,
    rss_max_kib: u64,
    hwm_kib: u64,
    fds: usize,
    rounds: f64,
    round_mean_ms: f64,
    round_max: String,
    overruns: f64,
    scrapes: Vec<(String, f64)>,
    scrape_mean_ms: f64,
    pod_requests_per_s: f64,
    new_connections: u64,
    fakepod_cores: f64,
    api: String,
    read: Vec<ReadRow>,
}

/// (c′) The HPA's read of one app (100 pods) over HTTPS keep-alive while collection runs.
struct ReadRow {
    conns: usize,
    fields: HashMap<String, String>,
    adapter_cores: f64,
    rounds: f64,
    round_mean_ms: f64,
    overruns: f64,
}

/// Runs the read load against the collecting adapter once per entry of `WSMA_BENCH_READ_CONNS`
/// (connections; `4,8` by default, 0 to skip) for `WSMA_BENCH_READ_SECONDS` (10 by default) each:
/// every answer must hold the app's 100 pods. Empty when skipped or with fewer pods than one app.
fn reads_while_collecting(adapter: &Adapter, n: usize) -> Vec<ReadRow> {
    support::env_list("WSMA_BENCH_READ_CONNS", &[4, 8])
        .into_iter()
        .filter_map(|conns| read_while_collecting(adapter, n, conns))
        .collect()
}

/// One run of [`reads_while_collecting`] over `conns` connections.
fn read_while_collecting(adapter: &Adapter, n: usize, conns: usize) -> Option<ReadRow> {
    let secs = support::env_num("WSMA_BENCH_READ_SECONDS", 10);
    if conns == 0 || n < APP_SIZE {
        return None;
    }
    let ca = adapter.dir.path().join("certs").join(tls::CA_FILE);
    let load = support::ReadLoad {
        addr: adapter.api,
        ca: &ca,
        conns,
        secs,
        apps: n / APP_SIZE,
        pods_per_app: APP_SIZE,
    };
    let mut client = load.start();
    let m0 = adapter.scrape();
    let (t0, cpu0) = (Instant::now(), support::cpu_ticks(&adapter.pid));
    let (result, fields) = support::ReadLoad::finish(&mut client, secs);
    let (wall, cpu1) = (t0.elapsed().as_secs_f64(), support::cpu_ticks(&adapter.pid));
    let m1 = adapter.scrape();
    let d = |s: &str| m1.get(s) - m0.get(s);
    let rounds = d("ws_metrics_adapter_collection_round_duration_seconds_count{}");
    let row = ReadRow {
        conns,
        fields,
        adapter_cores: (cpu1 - cpu0) as f64 / support::clock_ticks() / wall,
        rounds,
        round_mean_ms: d("ws_metrics_adapter_collection_round_duration_seconds_sum{}")
            / rounds.max(1.0)
            * 1000.0,
        overruns: d("ws_metrics_adapter_collection_round_overruns_total{}"),
    };
    println!(
        "N={n}: read while collecting, C={conns}: {result}; adapter {:.3} cores, rounds {} mean {:.1} ms, overruns {}",
        row.adapter_cores, row.rounds, row.round_mean_ms, row.overruns
    );
    Some(row)
}

fn run_one(n: usize, concurrency: usize, window: u64, port: u16) -> Row {
    println!("--- N={n} pods, --scrape-concurrency {concurrency}");
    let mut pods = FakePods::start(n, port, window + 600);
    println!(
        "fake pods listening in {} process(es); body {} bytes",
        pods.procs.len(),
        metrics_body(0).len()
    );
    let adapter = Adapter::start(n, port, concurrency);
    let ready = adapter.wait_ready(Duration::from_secs(60));
    let all_fresh = adapter.wait_fresh(n, Duration::from_secs(60));
    println!("ready after {ready:.2?}, all {n} fresh {all_fresh:.2?} later; measuring {window} s");
    let ticks = support::clock_ticks();

    let m0 = adapter.scrape();
    let (acc0, req0) = pods.stats();
    let (t0, cpu0, fp0) = (
        Instant::now(),
        support::cpu_ticks(&adapter.pid),
        pods.cpu_ticks(),
    );
    let mut rss_max = 0;
    for _ in 0..window {
        std::thread::sleep(Duration::from_secs(1));
        rss_max = rss_max.max(support::status_kib(&adapter.pid, "VmRSS"));
    }
    let (cpu1, fp1) = (support::cpu_ticks(&adapter.pid), pods.cpu_ticks());
    let wall = t0.elapsed().as_secs_f64();
    let (acc1, req1) = pods.stats();
    let m1 = adapter.scrape();
    let hwm = support::status_kib(&adapter.pid, "VmHWM");
    let rss_end = support::status_kib(&adapter.pid, "VmRSS");
    let fds = support::open_fds(&adapter.pid);

    let d = |s: &str| m1.get(s) - m0.get(s);
    let rounds = d("ws_metrics_adapter_collection_round_duration_seconds_count{}");
    let round_sum = d("ws_metrics_adapter_collection_round_duration_seconds_sum{}");
    let scrape_count = d("ws_metrics_adapter_scrape_duration_seconds_count{}");
    let scrape_sum = d("ws_metrics_adapter_scrape_duration_seconds_sum{}");
    let scrapes: Vec<(String, f64)> = m1
        .family("ws_metrics_adapter_scrapes_total{")
        .into_iter()
        .map(|(k, v)| {
            let outcome = k
                .split("outcome=")
                .nth(1)
                .unwrap_or("?")
                .trim_end_matches('}')
                .to_owned();
            (outcome, v - m0.get(&k))
        })
        .collect();
    let read = reads_while_collecting(&adapter, n);
    let api = check_api(&adapter, n);
    let row = Row {
        n,
        concurrency,
        ready,
        all_fresh,
        window: wall,
        cores: (cpu1 - cpu0) as f64 / ticks / wall,
        rss_end_kib: rss_end,
        rss_max_kib: rss_max,
        hwm_kib: hwm,
        fds,
        rounds,
        round_mean_ms: round_sum / rounds.max(1.0) * 1000.0,
        round_max: max_bucket(
            &m0,
            &m1,
            "ws_metrics_adapter_collection_round_duration_seconds",
        ),
        overruns: d("ws_metrics_adapter_collection_round_overruns_total{}"),
        scrapes,
        scrape_mean_ms: scrape_sum / scrape_count.max(1.0) * 1000.0,
        pod_requests_per_s: (req1 - req0) as f64 / wall,
        new_connections: acc1 - acc0,
        fakepod_cores: (fp1 - fp0) as f64 / ticks / wall,
        api,
        read,
    };
    println!(
        "N={n}: rounds {} mean {:.1} ms (max {}), overruns {}, adapter {:.3} cores, RSS {} KiB (peak {} KiB), scrapes {:?}, API: {}",
        row.rounds,
        row.round_mean_ms,
        row.round_max,
        row.overruns,
        row.cores,
        row.rss_end_kib,
        row.hwm_kib,
        row.scrapes,
        row.api
    );
    // Adapter first, then the fake pods (guards kill by pid).
    drop(adapter);
    drop(pods);
    row
}

fn idle_rss(port: u16) -> (u64, u64, f64) {
    let adapter = Adapter::start(0, port, 256);
    adapter.wait_ready(Duration::from_secs(30));
    let ticks = support::clock_ticks();
    std::thread::sleep(Duration::from_secs(2));
    let (t0, c0) = (Instant::now(), support::cpu_ticks(&adapter.pid));
    std::thread::sleep(Duration::from_secs(5));
    let cores = (support::cpu_ticks(&adapter.pid) - c0) as f64 / ticks / t0.elapsed().as_secs_f64();
    (
        support::status_kib(&adapter.pid, "VmRSS"),
        support::status_kib(&adapter.pid, "VmHWM"),
        cores,
    )
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

fn main() {
    tls::install_provider();
    match std::env::var(ROLE_VAR).as_deref() {
        Ok("fakepods") => return fakepods_main(),
        Ok(support::READ_LOAD_ROLE) => return support::read_load_main(),
        _ => {}
    }
    let started = Instant::now();
    let ns = support::env_list("WSMA_BENCH_PODS", &[1_000, 10_000]);
    let window = support::env_num("WSMA_BENCH_SECONDS", 20);
    let concurrencies = support::env_list("WSMA_BENCH_CONCURRENCY", &[256]);
    let port = support::env_num("WSMA_BENCH_POD_PORT", 9100) as u16;
    for &n in &ns {
        assert!(
            (1..=40 * 250 * 2).contains(&n),
            "WSMA_BENCH_PODS: {n} out of range (1..=20000)"
        );
    }
    println!(
        "load average at start: {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );

    let (idle_rss, idle_hwm, idle_cores) = idle_rss(port);
    println!("idle: RSS {idle_rss} KiB, peak {idle_hwm} KiB, {idle_cores:.4} cores");
    let mut rows = Vec::new();
    for &n in &ns {
        for &c in &concurrencies {
            rows.push(run_one(n, c, window, port));
        }
    }

    println!();
    println!(
        "## (c) collection at a 1 s interval (real release binary, fake pods in separate processes)"
    );
    println!();
    println!(
        "Idle (pods: []): RSS {} MiB (peak {} MiB), CPU {:.4} cores. Target ≤ 20 MiB.",
        mib(idle_rss),
        mib(idle_hwm),
        idle_cores
    );
    println!();
    println!(
        "| pods | conc. | ready / all fresh | window s | rounds | round mean ms | round max | overruns | adapter cores | RSS MiB end / max / peak(HWM) | fds | scrapes in window | scrape mean ms | pod req/s | new conns | fake-pod cores |"
    );
    println!("|---:|---:|---|---:|---:|---:|---|---:|---:|---|---:|---|---:|---:|---:|---:|");
    for r in &rows {
        let scrapes: Vec<String> = r.scrapes.iter().map(|(o, v)| format!("{o}={v}")).collect();
        println!(
            "| {} | {} | {:.1?} / +{:.1?} | {:.1} | {} | {:.1} | {} | {} | {:.3} | {} / {} / {} | {} | {} | {:.2} | {:.0} | {} | {:.2} |",
            r.n,
            r.concurrency,
            r.ready,
            r.all_fresh,
            r.window,
            r.rounds,
            r.round_mean_ms,
            r.round_max,
            r.overruns,
            r.cores,
            mib(r.rss_end_kib),
            mib(r.rss_max_kib),
            mib(r.hwm_kib),
            r.fds,
            scrapes.join(" "),
            r.scrape_mean_ms,
            r.pod_requests_per_s,
            r.new_connections,
            r.fakepod_cores,
        );
    }
    println!();
    for r in &rows {
        println!("N={}: HTTPS wildcard check: {}", r.n, r.api);
    }
    println!("Target: 10,000 pods within the 1 s interval, ≤ 0.35 core, ≤ 64 MiB RSS.");
    println!();
    println!("## (c′) the HPA's read of one app (100 pods) over HTTPS keep-alive while collecting");
    println!();
    println!(
        "| pods | C | requests | req/s | p50 µs | p90 µs | p99 µs | max µs | errors | bad | adapter cores | rounds | round mean ms | overruns |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (r, read) in rows
        .iter()
        .flat_map(|r| r.read.iter().map(move |read| (r, read)))
    {
        let f = |k: &str| read.fields.get(k).map_or("?", String::as_str);
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.3} | {} | {:.1} | {} |",
            r.n,
            read.conns,
            f("requests"),
            f("rps"),
            f("p50_us"),
            f("p90_us"),
            f("p99_us"),
            f("max_us"),
            f("errors"),
            f("bad"),
            read.adapter_cores,
            read.rounds,
            read.round_mean_ms,
            read.overruns,
        );
    }
    println!("Target: ≥ 6,000 req/s with p99 ≤ 3 ms at 10,000 pods.");
    println!(
        "load average at end: {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    println!("total bench time {:.1?}", started.elapsed());
    for r in &rows {
        let failed: f64 = r
            .scrapes
            .iter()
            .filter(|(o, _)| o != "success")
            .map(|(_, v)| v)
            .sum();
        assert_eq!(
            failed, 0.0,
            "N={}: every scrape in the window must succeed: {:?}",
            r.n, r.scrapes
        );
        for read in &r.read {
            let f = |k: &str| read.fields.get(k).map(String::as_str);
            assert_eq!(
                (f("errors"), f("bad")),
                (Some("0"), Some("0")),
                "N={}, C={}: every read while collecting must answer 200 with the app's 100 pods",
                r.n,
                read.conns
            );
        }
    }
}
