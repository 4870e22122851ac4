//! Shared helpers of the benchmarks: child-process guards (every process a benchmark starts is
//! killed by pid when its guard drops, panics included), /proc readers, percentiles, a plain
//! HTTP/1.1 GET and an HTTPS client trusting one CA.
#![allow(dead_code, missing_docs)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// Name of the environment variable that selects the role of a re-executed bench binary.
pub(crate) const ROLE_VAR: &str = "WSMA_BENCH_ROLE";

/// A child process killed (SIGKILL, by pid) and reaped when dropped. Its stdin is a pipe held
/// here: helper roles exit on stdin EOF, so they also go away if the bench process dies.
pub(crate) struct ChildGuard {
    pub name: String,
    pub pid: u32,
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    lines: Option<mpsc::Receiver<String>>,
}

impl ChildGuard {
    /// Spawns `cmd` with stdin piped, and stdout piped into a line channel when `capture_stdout`.
    pub(crate) fn spawn(name: &str, mut cmd: Command, capture_stdout: bool) -> Self {
        cmd.stdin(Stdio::piped());
        if capture_stdout {
            cmd.stdout(Stdio::piped());
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {name}: {e}"));
        let pid = child.id();
        let stdin = child.stdin.take();
        let lines = child.stdout.take().map(|out| {
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { return };
                    if tx.send(line).is_err() {
                        return;
                    }
                }
            });
            rx
        });
        Self {
            name: name.to_owned(),
            pid,
            child: Some(child),
            stdin,
            lines,
        }
    }

    /// The next stdout line, waiting at most `timeout`.
    pub(crate) fn next_line(&self, timeout: Duration) -> Option<String> {
        self.lines.as_ref()?.recv_timeout(timeout).ok()
    }

    /// Waits (bounded) for a stdout line starting with `prefix`; other lines are echoed.
    pub(crate) fn expect_line(&self, prefix: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "{}: no line starting with {prefix:?} within {timeout:?}",
                self.name
            );
            match self.next_line(left) {
                Some(l) if l.starts_with(prefix) => return l,
                Some(l) => println!("[{}] {l}", self.name),
                None => {
                    let exited = self.exited();
                    assert!(
                        exited.is_none(),
                        "{} exited ({exited:?}) before printing {prefix:?}",
                        self.name
                    );
                }
            }
        }
    }

    /// Writes one line to the child's stdin.
    pub(crate) fn send_line(&mut self, line: &str) {
        if let Some(stdin) = self.stdin.as_mut() {
            let _ = writeln!(stdin, "{line}");
            let _ = stdin.flush();
        }
    }

    /// `Some(status)` once the child has exited.
    pub(crate) fn exited(&self) -> Option<String> {
        // try_wait needs &mut; /proc tells without reaping.
        match std::fs::read_to_string(format!("/proc/{}/stat", self.pid)) {
            Ok(s) if after_comm(&s).first() == Some(&"Z") => Some("zombie".into()),
            Ok(_) => None,
            Err(_) => Some("gone".into()),
        }
    }

    /// Waits for the child to exit by itself, at most `timeout`; false if it is still running.
    pub(crate) fn wait_exit(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let Some(child) = self.child.as_mut() else {
            return true;
        };
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        drop(self.stdin.take());
        if let Some(mut child) = self.child.take() {
            // Child::kill sends SIGKILL to this pid only (a no-op error if already reaped).
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Fields of /proc/<pid>/stat after the `(comm)` field: index 0 is the state.
fn after_comm(stat: &str) -> Vec<&str> {
    stat.rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default()
}

/// Clock ticks per second of /proc times.
pub(crate) fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// utime + stime of a process, in clock ticks.
pub(crate) fn cpu_ticks(pid: &str) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let f = after_comm(&stat);
    // After the comm: state(0) ppid(1) … utime(11) stime(12).
    let get = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    get(11) + get(12)
}

/// A `kB` field of /proc/<pid>/status (VmRSS, VmHWM, …), in KiB.
pub(crate) fn status_kib(pid: &str, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Number of open file descriptors of a process.
pub(crate) fn open_fds(pid: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// `n` distinct free TCP ports on 127.0.0.1 (all bound at once, then released).
pub(crate) fn free_ports(n: usize) -> Vec<u16> {
    let ls: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port"))
        .collect();
    ls.iter()
        .map(|l| l.local_addr().expect("addr").port())
        .collect()
}

/// Blocking HTTP/1.1 GET with `Connection: close`; returns status and body.
pub(crate) fn plain_get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&buf);
    let code = text
        .get(9..12)
        .and_then(|c| c.parse().ok())
        .ok_or("no status line")?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Ok((code, body))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    // Bounded: every iteration consumes at least one line.
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].strip_prefix("\r\n").unwrap_or(&rest[n..]);
    }
    out
}

/// Percentile `q` (0..=1) of sorted values (nearest rank).
pub(crate) fn pct(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Occurrences of `needle` in `hay`.
pub(crate) fn count(hay: &[u8], needle: &[u8]) -> usize {
    let mut n = 0;
    let mut i = 0;
    while i + needle.len() <= hay.len() {
        if &hay[i..i + needle.len()] == needle {
            n += 1;
            i += needle.len();
        } else {
            i += 1;
        }
    }
    n
}

/// An HTTP/1.1-only HTTPS client trusting the CA certificates in `ca_pem`, with at most
/// `idle_per_host` idle connections kept.
pub(crate) type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>;

pub(crate) fn tls_client_config(ca_pem: &str) -> rustls::ClientConfig {
    let roots = ws_metrics_adapter::tls::pem::roots_from_pem("the adapter's CA", ca_pem.as_bytes())
        .expect("the adapter's CA certificate");
    rustls::ClientConfig::builder_with_provider(ws_metrics_adapter::tls::provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

pub(crate) fn https_client(cfg: rustls::ClientConfig, idle_per_host: usize) -> HttpsClient {
    let conn = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(cfg)
        .https_only()
        .enable_http1()
        .build();
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(idle_per_host)
        .build(conn)
}

/// Exits the process when stdin reaches EOF (the parent bench died or dropped its guard).
pub(crate) fn exit_on_stdin_eof(on_line: impl Fn(&str) + Send + 'static) {
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        for line in stdin.lock().lines() {
            match line {
                Ok(l) => on_line(l.trim()),
                Err(_) => break,
            }
        }
        std::process::exit(0);
    });
}

/// Reads a `usize` list from an env var such as `1000,10000`.
pub(crate) fn env_list(name: &str, default: &[usize]) -> Vec<usize> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .split(',')
            .map(|s| {
                s.trim()
                    .parse()
                    .unwrap_or_else(|_| panic!("{name}: {s:?} is not a number"))
            })
            .collect(),
        _ => default.to_vec(),
    }
}

/// Reads a number from an env var.
pub(crate) fn env_num(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}: {v:?} is not a number")),
        _ => default,
    }
}

/// Deterministic pseudo-random generator (xorshift64*), for names and values.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// `n` characters of the alphabet Kubernetes uses for generated name suffixes.
    pub(crate) fn suffix(&mut self, n: usize) -> String {
        const ALPHA: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
        (0..n)
            .map(|_| ALPHA[(self.next() % ALPHA.len() as u64) as usize] as char)
            .collect()
    }
}

/// Pod name and `pod-template-hash` of pod `i` of app `app`, Deployment-style
/// (`ws-42-5d8f7c9b4d-x7k2p`).
pub(crate) fn pod_name(app: usize, i: usize) -> (String, String) {
    let mut h = Rng::new(app as u64 + 1);
    let hash = h.suffix(10);
    let mut r = Rng::new(((app as u64) << 20) | i as u64 | 1 << 40);
    (format!("ws-{app}-{hash}-{}", r.suffix(5)), hash)
}

// ---------------------------------------------------------------------------------------------
// The read load: the HPA's wildcard query over HTTPS keep-alive, from a process of its own.

/// Role name of the read-load client (see [`read_load_main`]).
pub(crate) const READ_LOAD_ROLE: &str = "client";
/// Namespace of the benches' pods.
pub(crate) const BENCH_NAMESPACE: &str = "chat";
/// One item of a metric list.
pub(crate) const ITEM_MARKER: &[u8] = b"\"describedObject\"";

/// The wildcard read of app `ws-{app}`'s pods: what the HPA of that app sends.
pub(crate) fn query_path(app: usize) -> String {
    format!(
        "/apis/custom.metrics.k8s.io/v1beta2/namespaces/{BENCH_NAMESPACE}/pods/%2A/websocket_connections?labelSelector=app%3Dws-{app}"
    )
}

/// `k=v` fields of a result line.
pub(crate) fn parse_kv(line: &str) -> std::collections::HashMap<String, String> {
    line.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// A read load to run: `conns` keep-alive connections reading apps `0..apps` (each answer must
/// hold `pods_per_app` items) for `secs` seconds.
pub(crate) struct ReadLoad<'a> {
    pub addr: SocketAddr,
    /// The CA file the adapter's certificate chains to.
    pub ca: &'a std::path::Path,
    pub conns: usize,
    pub secs: u64,
    pub apps: usize,
    pub pods_per_app: usize,
}

impl ReadLoad<'_> {
    /// Starts the client process (this binary re-executed) and waits until every connection is
    /// open and warmed up.
    pub(crate) fn start(&self) -> ChildGuard {
        let mut cmd = Command::new(std::env::current_exe().expect("current exe"));
        cmd.env(ROLE_VAR, READ_LOAD_ROLE)
            .env("WSMA_CLIENT_ADDR", self.addr.to_string())
            .env("WSMA_CLIENT_CA", self.ca)
            .env("WSMA_CLIENT_CONNS", self.conns.to_string())
            .env("WSMA_CLIENT_SECONDS", self.secs.to_string())
            .env("WSMA_CLIENT_APPS", self.apps.to_string())
            .env("WSMA_CLIENT_ITEMS", self.pods_per_app.to_string());
        let client = ChildGuard::spawn(&format!("read load C={}", self.conns), cmd, true);
        client.expect_line("WARM", Duration::from_secs(60));
        client
    }

    /// Waits for the client's result line; returns it and its fields.
    pub(crate) fn finish(
        client: &mut ChildGuard,
        secs: u64,
    ) -> (String, std::collections::HashMap<String, String>) {
        let result = client.expect_line("RESULT", Duration::from_secs(secs + 60));
        assert!(
            client.wait_exit(Duration::from_secs(10)),
            "read load client did not exit"
        );
        let fields = parse_kv(&result);
        (result, fields)
    }
}

fn env_var(k: &str) -> String {
    std::env::var(k).unwrap_or_else(|_| panic!("{k} not set"))
}

/// The read-load client role: C keep-alive HTTP/1.1 connections (one hyper-util client each, so
/// exactly one connection per task), each sending requests back to back for the duration;
/// prints `WARM` once every connection is open, then one `RESULT` line.
pub(crate) fn read_load_main() {
    ws_metrics_adapter::server::tls::install_provider();
    exit_on_stdin_eof(|_| {});
    let addr: SocketAddr = env_var("WSMA_CLIENT_ADDR").parse().expect("addr");
    let ca = std::fs::read_to_string(env_var("WSMA_CLIENT_CA")).expect("read CA");
    let conns: usize = env_var("WSMA_CLIENT_CONNS").parse().expect("conns");
    let secs: u64 = env_var("WSMA_CLIENT_SECONDS").parse().expect("seconds");
    let apps: usize = env_var("WSMA_CLIENT_APPS").parse().expect("apps");
    let items: usize = env_var("WSMA_CLIENT_ITEMS").parse().expect("items");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let cfg = tls_client_config(&ca);
        let uris: std::sync::Arc<Vec<http::Uri>> = std::sync::Arc::new(
            (0..apps)
                .map(|a| format!("https://{addr}{}", query_path(a)).parse().expect("uri"))
                .collect(),
        );
        let clients: Vec<HttpsClient> = (0..conns).map(|_| https_client(cfg.clone(), 1)).collect();
        // Warm-up: open every connection (TLS handshake) and send a few requests on each.
        let warm: Vec<_> = clients
            .iter()
            .enumerate()
            .map(|(t, cl)| {
                let (cl, uris) = (cl.clone(), uris.clone());
                tokio::spawn(async move {
                    for k in 0..20 {
                        let (code, n) = one_read(&cl, &uris[(t * 13 + k) % apps]).await;
                        assert_eq!((code, n), (200, items));
                    }
                })
            })
            .collect();
        for w in warm {
            w.await.expect("warm-up task");
        }
        let me = std::process::id().to_string();
        let cpu0 = cpu_ticks(&me);
        println!("WARM");
        let start = Instant::now();
        let deadline = start + Duration::from_secs(secs);
        let tasks: Vec<_> = clients
            .into_iter()
            .enumerate()
            .map(|(t, cl)| {
                let uris = uris.clone();
                tokio::spawn(async move {
                    let mut lat = Vec::with_capacity(100_000);
                    let (mut errors, mut bad) = (0u64, 0u64);
                    // Bounded by the deadline and by an iteration cap.
                    for k in 0..50_000_000usize {
                        if Instant::now() >= deadline {
                            break;
                        }
                        let t0 = Instant::now();
                        let (code, n) = one_read(&cl, &uris[(t * 13 + k * 37) % apps]).await;
                        lat.push(t0.elapsed().as_nanos() as u64);
                        if code == 0 {
                            errors += 1;
                        } else if code != 200 || n != items {
                            bad += 1;
                        }
                    }
                    (lat, errors, bad, Instant::now())
                })
            })
            .collect();
        let (mut lat, mut errors, mut bad, mut end) = (Vec::new(), 0, 0, start);
        for t in tasks {
            let (l, e, b, fin) = t.await.expect("client task");
            lat.extend(l);
            errors += e;
            bad += b;
            end = end.max(fin);
        }
        let wall = (end - start).as_secs_f64();
        let cpu = (cpu_ticks(&me) - cpu0) as f64 / clock_ticks() / wall;
        lat.sort_unstable();
        let us = |q| pct(&lat, q) as f64 / 1000.0;
        println!(
            "RESULT requests={} secs={wall:.2} rps={:.0} p50_us={:.0} p90_us={:.0} p99_us={:.0} max_us={:.0} errors={errors} bad={bad} client_cores={cpu:.2}",
            lat.len(),
            lat.len() as f64 / wall,
            us(0.5),
            us(0.9),
            us(0.99),
            us(1.0),
        );
    });
}

/// One GET; returns (status, number of items) or (0, 0) on a transport error.
async fn one_read(cl: &HttpsClient, uri: &http::Uri) -> (u16, usize) {
    use http_body_util::BodyExt as _;
    let req = http::Request::get(uri.clone())
        .body(Empty::<Bytes>::new())
        .expect("request");
    let Ok(resp) = cl.request(req).await else {
        return (0, 0);
    };
    let code = resp.status().as_u16();
    match resp.into_body().collect().await {
        Ok(b) => (code, count(&b.to_bytes(), ITEM_MARKER)),
        Err(_) => (0, 0),
    }
}
