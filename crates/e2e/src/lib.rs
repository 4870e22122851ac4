//! Shared test support: fake pods that serve a metrics body (or misbehave on demand) on
//! `127.0.0.1:0`, and an in-process adapter started through `app::run` with real listeners.
#![allow(dead_code, missing_docs)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use ws_metrics_adapter::app::{self, Listeners, Shutdown, ShutdownTrigger};
use ws_metrics_adapter::config::{Cli, Command};

pub mod demo_pod;
pub mod hostile_pod;
pub mod prometheus;

/// What a fake pod answers on every request.
#[derive(Debug, Clone)]
pub enum Behavior {
    /// 200 with this body.
    Body(String),
    /// This status with a short body.
    Status(u16),
    /// Accept the request and never answer.
    Hang,
    /// Answer this body after a delay.
    Slow(Duration, String),
    /// 200 with these raw bytes (need not be UTF-8).
    Bytes(Vec<u8>),
}

/// A fake pod's metrics endpoint.
pub struct FakePod {
    pub addr: SocketAddr,
    behavior: Arc<Mutex<Behavior>>,
    accepted: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

/// A Prometheus text body with one `websocket_connections_active` series per (route, value).
pub fn exposition(series: &[(&str, u64)]) -> String {
    let mut s = String::from(
        "# HELP websocket_connections_active Open WebSocket connections.\n# TYPE websocket_connections_active gauge\n",
    );
    for (route, v) in series {
        s.push_str(&format!(
            "websocket_connections_active{{route=\"{route}\"}} {v}\n"
        ));
    }
    s
}

impl FakePod {
    /// Starts a fake pod on 127.0.0.1:0.
    pub async fn start(behavior: Behavior) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake pod");
        let addr = listener.local_addr().expect("local addr");
        let behavior = Arc::new(Mutex::new(behavior));
        let accepted = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let (b, a, r) = (behavior.clone(), accepted.clone(), requests.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                a.fetch_add(1, Ordering::SeqCst);
                let (b, r) = (b.clone(), r.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |_req| {
                        let b = b.lock().expect("behavior lock").clone();
                        r.fetch_add(1, Ordering::SeqCst);
                        async move {
                            let (code, body): (u16, Bytes) = match b {
                                Behavior::Body(s) => (200, s.into()),
                                Behavior::Bytes(raw) => (200, raw.into()),
                                Behavior::Status(c) => (c, Bytes::from_static(b"nope")),
                                Behavior::Hang => {
                                    std::future::pending::<()>().await;
                                    unreachable!()
                                }
                                Behavior::Slow(d, s) => {
                                    tokio::time::sleep(d).await;
                                    (200, s.into())
                                }
                            };
                            let resp = hyper::Response::builder()
                                .status(code)
                                .header("content-type", "text/plain; version=0.0.4")
                                .body(Full::new(body))
                                .expect("response");
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self {
            addr,
            behavior,
            accepted,
            requests,
            task,
        }
    }

    /// Metrics URL of the pod.
    pub fn url(&self) -> String {
        format!("http://{}/metrics", self.addr)
    }

    /// Changes what the pod answers from now on.
    pub fn set(&self, behavior: Behavior) {
        *self.behavior.lock().expect("behavior lock") = behavior;
    }

    /// TCP connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// HTTP requests received so far.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// Stops accepting new connections (existing ones keep their tasks).
    pub fn stop(&self) {
        self.task.abort();
    }
}

/// One entry of a static pods file.
pub struct StaticPod<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub labels: &'a [(&'a str, &'a str)],
    pub url: String,
}

/// Renders a static pods file.
pub fn static_pods_yaml(pods: &[StaticPod<'_>]) -> String {
    let mut s = String::from("pods:\n");
    for p in pods {
        s.push_str(&format!(
            "- namespace: {}\n  name: {}\n  metricsUrl: \"{}\"\n  labels:\n",
            p.namespace, p.name, p.url
        ));
        if p.labels.is_empty() {
            s.push_str("    {}\n");
        }
        for (k, v) in p.labels {
            s.push_str(&format!("    {k}: \"{v}\"\n"));
        }
    }
    s
}

/// An adapter running in this process on 127.0.0.1:0 listeners.
pub struct Adapter {
    pub api: SocketAddr,
    pub metrics: SocketAddr,
    /// The remote-write listener (127.0.0.1:0), with `--source=remote-write`.
    pub remote_write: Option<SocketAddr>,
    pub dir: tempfile::TempDir,
    pub pods_file: PathBuf,
    trigger: ShutdownTrigger,
    pub task: tokio::task::JoinHandle<Result<(), app::Error>>,
}

impl Adapter {
    /// Starts the adapter in static mode over `pods_yaml` with `extra` flags (e.g. a scrape
    /// interval). Certificates are generated under the temp dir (`certs/ca.crt`).
    pub async fn start_static(pods_yaml: &str, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let pods_file = dir.path().join("pods.yaml");
        std::fs::write(&pods_file, pods_yaml).expect("write pods file");
        let cert_dir = dir.path().join("certs");
        let mut argv: Vec<String> = vec![
            "ws-metrics-adapter".into(),
            "serve".into(),
            "--static-pods".into(),
            pods_file.display().to_string(),
            "--cert-dir".into(),
            cert_dir.display().to_string(),
        ];
        argv.extend(extra.iter().map(|s| s.to_string()));
        Self::start_with(argv, dir, pods_file).await
    }

    /// Starts the adapter with a full argv (the `--secure-port`/`--metrics-bind-address` flags
    /// are ignored: listeners are bound on 127.0.0.1:0 here).
    pub async fn start_with(argv: Vec<String>, dir: tempfile::TempDir, pods_file: PathBuf) -> Self {
        use clap::Parser;
        let Command::Serve(args) = Cli::try_parse_from(&argv).expect("flags parse").command;
        let config = args.validate().expect("valid config");
        let secure = TcpListener::bind("127.0.0.1:0").await.expect("bind api");
        let metrics = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind metrics");
        let api = secure.local_addr().expect("addr");
        let metrics_addr = metrics.local_addr().expect("addr");
        let remote_write = match &config.source {
            ws_metrics_adapter::config::Source::RemoteWrite(_) => Some(
                TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind remote-write"),
            ),
            _ => None,
        };
        let remote_write_addr = remote_write.as_ref().map(|l| l.local_addr().expect("addr"));
        let (trigger, shutdown) = Shutdown::new();
        let task = tokio::spawn(app::run(
            config,
            Listeners {
                secure,
                metrics,
                remote_write,
            },
            shutdown,
        ));
        Self {
            api,
            metrics: metrics_addr,
            remote_write: remote_write_addr,
            dir,
            pods_file,
            trigger,
            task,
        }
    }

    /// CA certificate of the generated serving certificate.
    pub fn ca_path(&self) -> PathBuf {
        self.dir.path().join("certs").join("ca.crt")
    }

    /// An HTTPS client that trusts the adapter's CA.
    pub fn client(&self) -> reqwest_like::Client {
        reqwest_like::Client::new(&self.ca_path())
    }

    /// Polls `/readyz` until it answers 200 or `deadline` passes.
    pub async fn wait_ready(&self, deadline: Duration) {
        let start = Instant::now();
        loop {
            if let Ok((200, _)) = plain_get(self.metrics, "/readyz").await {
                return;
            }
            assert!(
                start.elapsed() < deadline,
                "adapter not ready within {deadline:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Triggers shutdown and waits for `run` to return.
    pub async fn stop(self) {
        self.trigger.trigger();
        let r = tokio::time::timeout(Duration::from_secs(15), self.task).await;
        assert!(r.is_ok(), "adapter did not stop within 15s");
    }
}

/// GET over plain HTTP/1.1; returns status and body (a chunked body decoded).
///
/// Not `collect::decode_response`: that reads a response as a scrape does, and refuses a
/// close-delimited body that does not look like a whole exposition (a JSON answer, for one).
pub async fn plain_get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.map_err(|e| e.to_string())?;
    let code = std::str::from_utf8(buf.get(9..12).unwrap_or_default())
        .ok()
        .and_then(|c| c.parse().ok())
        .ok_or("no status")?;
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok((code, String::new()));
    };
    let (head, body) = (String::from_utf8_lossy(&buf[..end]), &buf[end + 4..]);
    let chunked = head.lines().skip(1).any(|line| {
        line.split_once(':').is_some_and(|(name, value)| {
            name.trim().eq_ignore_ascii_case("transfer-encoding")
                && value.to_ascii_lowercase().contains("chunked")
        })
    });
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_vec()
    };
    Ok((code, String::from_utf8_lossy(&body).into_owned()))
}

/// The data of a chunked HTTP/1.1 body (RFC 9112 §7.1; trailers ignored); an error when its
/// framing is broken or the last chunk is missing.
pub fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(rest.len());
    loop {
        let line_end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("chunked body: no chunk-size line")?;
        let size_line = String::from_utf8_lossy(&rest[..line_end]);
        let size_hex = size_line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_hex, 16)
            .map_err(|_| format!("chunked body: bad chunk size {size_line:?}"))?;
        if size == 0 {
            return Ok(out);
        }
        let after = &rest[line_end + 2..];
        let data = after
            .get(..size)
            .ok_or("chunked body: a chunk is cut short")?;
        out.extend_from_slice(data);
        rest = after[size..]
            .strip_prefix(b"\r\n")
            .ok_or("chunked body: no CRLF after a chunk")?;
    }
}

/// `(described object's name, value, timestamp)` of each item of a `MetricValueList` body, in
/// order; empty when it has no `items`.
pub fn metric_items(body: &serde_json::Value) -> Vec<(String, String, String)> {
    let text = |v: &serde_json::Value| v.as_str().unwrap_or("").to_owned();
    body["items"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|i| {
                    (
                        text(&i["describedObject"]["name"]),
                        text(&i["value"]),
                        text(&i["timestamp"]),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Polls `f` every 50 ms until it returns `Some` or `deadline` passes.
pub async fn eventually<T, F, Fut>(deadline: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Like [`eventually`], but `f` says why it is not done yet: on timeout the panic shows the last
/// reason, so a failure on a busy CI machine can be read from its log alone.
pub async fn eventually_ok<T, F, Fut>(deadline: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let start = Instant::now();
    loop {
        match f().await {
            Ok(v) => return v,
            Err(last) => assert!(
                start.elapsed() < deadline,
                "timed out after {deadline:?} waiting for {what}; last: {last}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A tiny HTTPS client over hyper-util + hyper-rustls that trusts one CA file.
pub mod reqwest_like {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty};
    use hyper_util::client::legacy::Client as HyperClient;
    use hyper_util::client::legacy::connect::HttpConnector;
    use hyper_util::rt::TokioExecutor;
    use ws_metrics_adapter::tls::client::{self, ClientTls};

    pub struct Client {
        inner: HyperClient<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>,
    }

    /// A response: status, headers and body.
    pub struct Response {
        pub status: u16,
        pub headers: http::HeaderMap,
        pub body: String,
    }

    impl Response {
        pub fn json(&self) -> serde_json::Value {
            serde_json::from_str(&self.body)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
        }
    }

    impl Client {
        pub fn new(ca: &std::path::Path) -> Self {
            ws_metrics_adapter::tls::install_provider();
            // Test set-up: the adapter wrote this CA file before the client is built.
            let cfg = client::config(ClientTls {
                ca_file: Some(ca),
                identity: None,
            })
            .expect("client TLS trusting the adapter's CA");
            let conn = hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(cfg)
                .https_only()
                .enable_http1()
                .enable_http2()
                .build();
            Self {
                inner: HyperClient::builder(TokioExecutor::new()).build(conn),
            }
        }

        /// Sends a request with `method` to `https://127.0.0.1:port{path}`.
        pub async fn request(
            &self,
            method: http::Method,
            addr: std::net::SocketAddr,
            path: &str,
        ) -> Response {
            let req = http::Request::builder()
                .method(method)
                .uri(format!("https://localhost:{}{path}", addr.port()))
                .body(Empty::<Bytes>::new())
                .expect("request");
            let resp = self.inner.request(req).await.expect("request sent");
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            let body = resp.into_body().collect().await.expect("body").to_bytes();
            Response {
                status,
                headers,
                body: String::from_utf8_lossy(&body).into_owned(),
            }
        }

        /// GET.
        pub async fn get(&self, addr: std::net::SocketAddr, path: &str) -> Response {
            self.request(http::Method::GET, addr, path).await
        }
    }
}

/// Helpers for end-to-end tests: child processes killed on drop, external tools (kubectl,
/// promtool), kubeconfigs, free ports, captured logs and `/metrics` samples.
pub mod e2e {
    use std::io::{Read, Write};
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, ExitStatus, Output, Stdio};
    use std::sync::{Arc, Mutex, OnceLock};
    use std::time::{Duration, Instant};

    /// Bytes read from a child's pipe by a background thread.
    #[derive(Clone, Default)]
    pub struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Captured {
        fn spawn(mut pipe: impl Read + Send + 'static) -> (Self, std::thread::JoinHandle<()>) {
            let captured = Self::default();
            let buf = captured.0.clone();
            let reader = std::thread::spawn(move || {
                let mut chunk = [0u8; 8192];
                while let Ok(n) = pipe.read(&mut chunk) {
                    if n == 0 {
                        break;
                    }
                    buf.lock()
                        .expect("capture lock")
                        .extend_from_slice(&chunk[..n]);
                }
            });
            (captured, reader)
        }

        /// Everything read so far, lossily decoded.
        pub fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().expect("capture lock")).into_owned()
        }

        fn bytes(&self) -> Vec<u8> {
            self.0.lock().expect("capture lock").clone()
        }
    }

    /// A child process with captured stdout and stderr, killed (SIGKILL, by its pid) and reaped
    /// when dropped, also when the test panics.
    pub struct ProcessGuard {
        child: Child,
        name: String,
        stdout: Captured,
        stderr: Captured,
        readers: Vec<std::thread::JoinHandle<()>>,
    }

    impl ProcessGuard {
        /// Spawns `cmd` with stdin closed and stdout/stderr captured.
        pub fn spawn(cmd: Command, name: &str) -> Self {
            Self::spawn_with_stdin(cmd, name, Stdio::null())
        }

        /// Spawns `cmd` reading `stdin`, with stdout/stderr captured.
        pub fn spawn_with_stdin(mut cmd: Command, name: &str, stdin: Stdio) -> Self {
            cmd.stdin(stdin)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            let mut child = cmd
                .spawn()
                .unwrap_or_else(|e| panic!("spawning {name} ({cmd:?}): {e}"));
            let (stdout, out_reader) = Captured::spawn(child.stdout.take().expect("piped stdout"));
            let (stderr, err_reader) = Captured::spawn(child.stderr.take().expect("piped stderr"));
            Self {
                child,
                name: name.to_owned(),
                stdout,
                stderr,
                readers: vec![out_reader, err_reader],
            }
        }

        /// Process id.
        pub fn pid(&self) -> u32 {
            self.child.id()
        }

        /// Standard output so far.
        pub fn stdout(&self) -> String {
            self.stdout.text()
        }

        /// Standard error so far.
        pub fn stderr(&self) -> String {
            self.stderr.text()
        }

        /// Sends a signal (`TERM`, `INT`, ...) with the `kill` command.
        pub fn signal(&self, signal: &str) {
            let status = Command::new("kill")
                .arg(format!("-{signal}"))
                .arg(self.pid().to_string())
                .status()
                .expect("running kill");
            assert!(
                status.success(),
                "kill -{signal} {} failed: {status}",
                self.pid()
            );
        }

        /// The exit status if the process has exited.
        pub fn try_wait(&mut self) -> Option<ExitStatus> {
            self.child.try_wait().expect("try_wait")
        }

        /// Polls (blocking the thread) until the process exits or `timeout` passes.
        pub fn wait_blocking(&mut self, timeout: Duration) -> Option<ExitStatus> {
            let start = Instant::now();
            loop {
                if let Some(status) = self.try_wait() {
                    return Some(status);
                }
                if start.elapsed() >= timeout {
                    return None;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }

        /// Polls (without blocking the runtime) until the process exits or `timeout` passes.
        pub async fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
            let start = Instant::now();
            loop {
                if let Some(status) = self.try_wait() {
                    return Some(status);
                }
                if start.elapsed() >= timeout {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }

        /// Waits for the exit (panicking after `timeout`, which kills the process) and returns
        /// the status with everything the process wrote.
        pub fn finish_blocking(mut self, timeout: Duration) -> Output {
            let Some(status) = self.wait_blocking(timeout) else {
                panic!(
                    "{} did not exit within {timeout:?}\nstdout: {}\nstderr: {}",
                    self.name,
                    self.stdout(),
                    self.stderr()
                );
            };
            // The pipes close with the process; collect the last bytes.
            for reader in self.readers.drain(..) {
                let _ = reader.join();
            }
            Output {
                status,
                stdout: self.stdout.bytes(),
                stderr: self.stderr.bytes(),
            }
        }
    }

    /// The first address after `listening on SCHEME://` in `text` (the line our binaries log
    /// once per listener, e.g. `listening on http://127.0.0.1:41234`).
    pub fn parse_listening_addr(text: &str, scheme: &str) -> Option<std::net::SocketAddr> {
        let needle = format!("listening on {scheme}://");
        text.match_indices(&needle).find_map(|(at, _)| {
            let rest = &text[at + needle.len()..];
            let end = rest
                .find(|c: char| !(c.is_ascii_hexdigit() || matches!(c, '.' | ':' | '[' | ']')))
                .unwrap_or(rest.len());
            rest[..end].parse().ok()
        })
    }

    impl ProcessGuard {
        /// Waits until the process logs `listening on SCHEME://ADDR` (stdout or stderr) and
        /// returns ADDR: a child started on port 0 reports the port it bound, so there is no
        /// free-port race. Panics, with the output, if the process exits first or `deadline`
        /// passes (a deadline to give up, not a speed claim: make it generous).
        pub async fn listening_addr(
            &mut self,
            scheme: &str,
            deadline: Duration,
        ) -> std::net::SocketAddr {
            let start = Instant::now();
            loop {
                let text = format!("{}{}", self.stdout(), self.stderr());
                if let Some(addr) = parse_listening_addr(&text, scheme) {
                    return addr;
                }
                if let Some(status) = self.try_wait() {
                    panic!(
                        "{} exited ({status}) before it logged `listening on {scheme}://`:\n{text}",
                        self.name
                    );
                }
                assert!(
                    start.elapsed() < deadline,
                    "{} did not log `listening on {scheme}://` within {deadline:?}:\n{text}",
                    self.name
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    impl Drop for ProcessGuard {
        fn drop(&mut self) {
            if let Ok(None) = self.child.try_wait() {
                // Child::kill sends SIGKILL to this child's pid.
                let _ = self.child.kill();
            }
            let _ = self.child.wait();
        }
    }

    /// Runs `cmd` to completion on a blocking thread, killing it after `timeout`.
    pub async fn run(cmd: Command, name: &str, timeout: Duration) -> Output {
        run_with_stdin(cmd, name, None, timeout).await
    }

    /// Like [`run`], with the contents of the file `stdin` (if any) on standard input.
    pub async fn run_with_stdin(
        cmd: Command,
        name: &str,
        stdin: Option<&Path>,
        timeout: Duration,
    ) -> Output {
        let name = name.to_owned();
        let stdin = match stdin {
            Some(p) => Stdio::from(
                std::fs::File::open(p).unwrap_or_else(|e| panic!("opening {}: {e}", p.display())),
            ),
            None => Stdio::null(),
        };
        let job =
            move || ProcessGuard::spawn_with_stdin(cmd, &name, stdin).finish_blocking(timeout);
        match tokio::task::spawn_blocking(job).await {
            Ok(output) => output,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }

    /// The workspace's root directory (where `Cargo.toml`, `scripts/` and `target/` are).
    pub fn workspace_root() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../..")
            .canonicalize()
            .expect("workspace root")
    }

    /// A binary of the workspace (`ws-metrics-adapter`, `ws-demo`), built by the same `cargo
    /// test` that built this test: it sits next to the test's own `deps/` directory. Cargo gives
    /// `CARGO_BIN_EXE_*` only to a package's own tests; `cargo test --workspace` (what `make
    /// test` runs) builds every package's binaries before it runs any test. A missing binary
    /// fails the test with the command that builds it.
    pub fn bin(name: &str) -> PathBuf {
        let exe = std::env::current_exe().expect("test executable path");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("test executable under target/<profile>/deps");
        let path = profile_dir.join(name);
        assert!(
            path.is_file(),
            "{} is not built: run `cargo build --workspace --bins` (or `cargo test --workspace`) first",
            path.display()
        );
        path
    }

    /// The first executable called `name` on `PATH`.
    pub fn find_on_path(name: &str) -> Option<PathBuf> {
        let path = std::env::var_os("PATH")?;
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|p| {
                use std::os::unix::fs::PermissionsExt;
                std::fs::metadata(p)
                    .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                    .unwrap_or(false)
            })
    }

    /// An external tool the test needs: its path on `PATH`. A missing tool fails the test with
    /// `hint` (`make test` runs `scripts/install-deps.sh` first, which installs every tool the
    /// tests use): a test never passes by skipping what it checks.
    pub fn require_tool(name: &str, hint: &str) -> PathBuf {
        find_on_path(name).unwrap_or_else(|| {
            panic!("`{name}` is not on PATH: {hint} (or run `make deps`, which installs it)")
        })
    }

    /// Starts the adapter in process in cluster mode against the cluster in `kubeconfig`
    /// (`--insecure-allow-unauthenticated`, certificates under the adapter's temp dir), with
    /// `extra` flags.
    pub async fn start_cluster_adapter(kubeconfig: &Path, extra: &[&str]) -> super::Adapter {
        let dir = tempfile::tempdir().expect("tempdir");
        let cert_dir = dir.path().join("certs");
        let mut argv: Vec<String> = vec![
            "ws-metrics-adapter".into(),
            "serve".into(),
            "--kubeconfig".into(),
            kubeconfig.display().to_string(),
            "--insecure-allow-unauthenticated".into(),
            "--cert-dir".into(),
            cert_dir.display().to_string(),
        ];
        argv.extend(extra.iter().map(|s| s.to_string()));
        super::Adapter::start_with(argv, dir, kubeconfig.to_owned()).await
    }

    /// A port that was free a moment ago on 127.0.0.1 (bound to :0 and released).
    pub fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind :0")
            .local_addr()
            .expect("addr")
            .port()
    }

    /// Writes a kubeconfig with one cluster (`server`, optional `certificate-authority`), one user
    /// (a bearer `token`, or no credentials at all) and a current context joining them.
    pub fn write_kubeconfig(path: &Path, server: &str, ca: Option<&Path>, token: Option<&str>) {
        let mut s = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: \"{server}\"\n"
        );
        if let Some(ca) = ca {
            s.push_str(&format!(
                "    certificate-authority: \"{}\"\n",
                ca.display()
            ));
        }
        match token {
            Some(t) => s.push_str(&format!(
                "users:\n- name: test\n  user:\n    token: \"{t}\"\n"
            )),
            None => s.push_str("users:\n- name: test\n  user: {}\n"),
        }
        s.push_str("contexts:\n- name: test\n  context:\n    cluster: test\n    user: test\ncurrent-context: test\n");
        std::fs::write(path, s).expect("write kubeconfig");
    }

    /// The value of one sample in a Prometheus or OpenMetrics text body, the series written
    /// exactly as rendered (`name{label="v",...}` or a bare name).
    pub fn sample(body: &str, series: &str) -> Option<f64> {
        body.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
            l.rsplit_once(' ')
                .filter(|(s, _)| *s == series)
                .and_then(|(_, v)| v.parse().ok())
        })
    }

    /// Log lines written by `tracing` anywhere in this test process (installed once, on first
    /// call, as the global subscriber at INFO).
    #[derive(Clone)]
    pub struct Logs(Arc<Mutex<Vec<u8>>>);

    struct LogWriter(Arc<Mutex<Vec<u8>>>);

    impl Write for LogWriter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("log lock").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Logs {
        /// Captures the process's logs from now on.
        pub fn capture() -> Self {
            static LOGS: OnceLock<Logs> = OnceLock::new();
            LOGS.get_or_init(|| {
                let buf = Arc::new(Mutex::new(Vec::new()));
                let writer = buf.clone();
                let subscriber = tracing_subscriber::fmt()
                    .with_max_level(tracing::Level::INFO)
                    .with_ansi(false)
                    .with_writer(move || LogWriter(writer.clone()))
                    .finish();
                tracing::subscriber::set_global_default(subscriber)
                    .expect("no other global subscriber");
                Logs(buf)
            })
            .clone()
        }

        /// Lines containing every one of `needles`.
        pub fn lines_with(&self, needles: &[&str]) -> Vec<String> {
            String::from_utf8_lossy(&self.0.lock().expect("log lock"))
                .lines()
                .filter(|l| needles.iter().all(|n| l.contains(n)))
                .map(str::to_owned)
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::dechunk;

    #[test]
    fn dechunk_joins_the_chunks_and_refuses_broken_framing() {
        assert_eq!(
            dechunk(b"5\r\nhello\r\n1;ext=1\r\n \r\n5\r\nworld\r\n0\r\n\r\n")
                .expect("well-formed chunks"),
            b"hello world"
        );
        assert_eq!(dechunk(b"0\r\n\r\n").expect("well-formed chunks"), b"");
        for broken in [
            &b"5\r\nhel"[..],
            b"5\r\nhello",
            b"zz\r\nhello\r\n",
            b"5\r\nhelloX0\r\n",
        ] {
            assert!(
                dechunk(broken).is_err(),
                "{:?}",
                String::from_utf8_lossy(broken)
            );
        }
    }
}
