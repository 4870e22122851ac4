//! The real binary: configuration errors and exit codes, environment fallbacks, the startup log,
//! graceful shutdown on SIGTERM, and `promtool check metrics` on its own `/metrics`.

use ws_e2e as support;

use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::e2e::{self, ProcessGuard};
use support::{Behavior, FakePod, StaticPod, eventually, exposition, plain_get, static_pods_yaml};

fn adapter_bin() -> std::path::PathBuf {
    support::e2e::bin("ws-metrics-adapter")
}
const ALL_PODS: &str =
    "/apis/custom.metrics.k8s.io/v1beta2/namespaces/default/pods/%2A/websocket_connections";

/// The binary with `args`, logging at info, and none of the caller's `WS_METRICS_ADAPTER_*`
/// variables (they would change what the flags mean).
fn adapter_command(args: &[&str]) -> Command {
    let mut cmd = Command::new(adapter_bin());
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("WS_METRICS_ADAPTER_") {
            cmd.env_remove(&key);
        }
    }
    cmd.env("RUST_LOG", "info").env("NO_COLOR", "1").args(args);
    cmd
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The problems listed under `invalid configuration:`, one per `  - ` line.
fn problems(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter_map(|l| l.strip_prefix("  - "))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_config_error_is_reported_at_once_with_exit_code_2() {
    let cmd = adapter_command(&[
        "serve",
        "--scrape-timeout",
        "5s",
        "--scrape-interval",
        "1s",
        "--metric",
        "bad",
        "--tls-cert-file",
        "x.pem",
        "--authorization-always-allow-paths",
        "healthz",
    ]);
    let out = e2e::run(cmd, "ws-metrics-adapter", Duration::from_secs(30)).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.starts_with("ws-metrics-adapter: invalid configuration:"),
        "{stderr}"
    );
    let listed = problems(&stderr);
    assert_eq!(listed.len(), 4, "{stderr}");
    for needle in [
        "--scrape-timeout 5s: must be greater than 0 and at most --scrape-interval (1s)",
        "--metric \"bad\": expected SERVED=FAMILY",
        "--tls-cert-file needs --tls-private-key-file",
        "--authorization-always-allow-paths \"healthz\": a path must start with '/'",
    ] {
        assert!(
            listed.iter().any(|p| p.contains(needle)),
            "missing {needle:?} in:\n{stderr}"
        );
    }
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_mode_authenticates_by_default_and_names_an_unreadable_ca_file() {
    // Without --insecure-allow-unauthenticated, cluster mode sets up delegated authentication,
    // which starts by reading the CA files given by flags.
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dir.path().join("kubeconfig");
    e2e::write_kubeconfig(&kubeconfig, "https://127.0.0.1:1", None, None);
    let kc = kubeconfig.display().to_string();
    let certs = dir.path().join("certs").display().to_string();
    let missing = dir.path().join("missing-ca.crt").display().to_string();
    let out = e2e::run(
        adapter_command(&[
            "serve",
            "--kubeconfig",
            &kc,
            "--cert-dir",
            &certs,
            "--bind-address",
            "127.0.0.1",
            "--secure-port",
            "0",
            "--metrics-bind-address",
            "127.0.0.1:0",
            "--client-ca-file",
            &missing,
        ]),
        "ws-metrics-adapter",
        Duration::from_secs(30),
    )
    .await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("--client-ca-file") && stderr.contains("missing-ca.crt"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environment_variables_stand_in_for_flags_and_are_checked_like_them() {
    // Unparseable values in two variables and a validation problem in a flag: all three
    // reported together, each variable named with the flag it stands for.
    let mut cmd = adapter_command(&[
        "serve",
        "--static-pods",
        "pods.yaml",
        "--scrape-concurrency",
        "0",
    ]);
    cmd.env("WS_METRICS_ADAPTER_SCRAPE_INTERVAL", "bogus")
        .env("WS_METRICS_ADAPTER_SERVING_CERT_VALIDITY", "a fortnight");
    let out = e2e::run(cmd, "ws-metrics-adapter", Duration::from_secs(30)).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let listed = problems(&stderr);
    assert_eq!(listed.len(), 3, "{stderr}");
    for (problem, start) in listed.iter().zip([
        "WS_METRICS_ADAPTER_SCRAPE_INTERVAL=\"bogus\" (for --scrape-interval): ",
        "WS_METRICS_ADAPTER_SERVING_CERT_VALIDITY=\"a fortnight\" (for --serving-cert-validity): ",
        "--scrape-concurrency: must be at least 1",
    ]) {
        assert!(
            problem.starts_with(start),
            "{problem:?} should start with {start:?}"
        );
    }

    // Parseable but invalid: the value is used, then rejected by validation.
    let mut cmd = adapter_command(&[
        "serve",
        "--static-pods",
        "pods.yaml",
        "--scrape-timeout",
        "10ms",
    ]);
    cmd.env("WS_METRICS_ADAPTER_SCRAPE_INTERVAL", "50ms");
    let out = e2e::run(cmd, "ws-metrics-adapter", Duration::from_secs(30)).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(
        problems(&stderr),
        ["--scrape-interval 50ms: must be at least 100ms"],
        "{stderr}"
    );

    // A flag wins over its variable.
    let mut cmd = adapter_command(&[
        "serve",
        "--static-pods",
        "pods.yaml",
        "--scrape-timeout",
        "10ms",
        "--scrape-interval",
        "20ms",
    ]);
    cmd.env("WS_METRICS_ADAPTER_SCRAPE_INTERVAL", "50ms");
    let out = e2e::run(cmd, "ws-metrics-adapter", Duration::from_secs(30)).await;
    assert_eq!(
        problems(&text(&out.stderr)),
        ["--scrape-interval 20ms: must be at least 100ms"],
        "{}",
        text(&out.stderr)
    );
}

/// A running `ws-metrics-adapter serve --static-pods` on free loopback ports.
struct Running {
    process: ProcessGuard,
    api: SocketAddr,
    metrics: SocketAddr,
    dir: tempfile::TempDir,
}

impl Running {
    /// Starts the binary over `pods_yaml` on port 0 (it logs the addresses it bound) and waits
    /// until `/readyz` answers 200. With `metrics_from_env`, the metrics address is given as
    /// `WS_METRICS_ADAPTER_METRICS_BIND_ADDRESS` instead of a flag.
    async fn start(pods_yaml: &str, extra: &[&str], metrics_from_env: bool) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let pods = dir.path().join("pods.yaml");
        std::fs::write(&pods, pods_yaml).expect("write pods file");
        let (pods, certs) = (
            pods.display().to_string(),
            dir.path().join("certs").display().to_string(),
        );
        let mut args = vec![
            "serve",
            "--static-pods",
            &pods,
            "--secure-port",
            "0",
            "--cert-dir",
            &certs,
        ];
        if !metrics_from_env {
            args.extend(["--metrics-bind-address", "127.0.0.1:0"]);
        }
        args.extend_from_slice(extra);
        let mut cmd = adapter_command(&args);
        if metrics_from_env {
            cmd.env("WS_METRICS_ADAPTER_METRICS_BIND_ADDRESS", "127.0.0.1:0");
        }
        let mut process = ProcessGuard::spawn(cmd, "ws-metrics-adapter");
        // Give-up deadlines for a loaded machine, not speed claims.
        let limit = Duration::from_secs(60);
        let api_port = process.listening_addr("https", limit).await.port();
        // --secure-port binds every address; the test connects over loopback.
        let api = SocketAddr::from(([127, 0, 0, 1], api_port));
        let metrics = process.listening_addr("http", limit).await;
        let deadline = Instant::now() + limit;
        loop {
            if let Ok((200, _)) = plain_get(metrics, "/readyz").await {
                return Self {
                    process,
                    api,
                    metrics,
                    dir,
                };
            }
            if let Some(status) = process.try_wait() {
                panic!(
                    "the adapter exited ({status}) before it was ready:\n{}",
                    process.stderr()
                );
            }
            assert!(
                Instant::now() < deadline,
                "not ready within {limit:?}:\n{}",
                process.stderr()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn client(&self) -> support::reqwest_like::Client {
        support::reqwest_like::Client::new(&self.dir.path().join("certs").join("ca.crt"))
    }
}

fn one_pod_yaml(pod: &FakePod) -> String {
    static_pods_yaml(&[StaticPod {
        namespace: "default",
        name: "ws-0",
        labels: &[("app", "ws")],
        url: pod.url(),
    }])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_a_serving_adapter_promptly_and_successfully() {
    let pod = FakePod::start(Behavior::Body(exposition(&[("chat", 3), ("echo", 4)]))).await;
    // The metrics address comes from the environment: /readyz answering there proves it was used.
    let mut running = Running::start(&one_pod_yaml(&pod), &[], true).await;
    let client = running.client();
    let resp = client.get(running.api, ALL_PODS).await;
    assert_eq!(resp.status, 200, "{}", resp.body);
    assert_eq!(resp.json()["items"][0]["value"], "7", "{}", resp.body);

    // The client keeps its (idle, keep-alive) connection open across the shutdown, as the
    // aggregator would.
    let sent = Instant::now();
    running.process.signal("TERM");
    let status = running.process.wait(Duration::from_secs(15)).await;
    let took = sent.elapsed();
    let stderr = running.process.stderr();
    let status = status.unwrap_or_else(|| panic!("still running 15 s after SIGTERM:\n{stderr}"));
    assert!(
        status.success(),
        "exit status {status} after SIGTERM:\n{stderr}"
    );
    assert!(stderr.contains("shutting down"), "{stderr}");
    assert!(
        !stderr.contains("shutdown grace period over"),
        "an idle connection held the shutdown for the whole grace period:\n{stderr}"
    );
    eprintln!("exited {took:?} after SIGTERM");
    drop(client);
}

/// This machine's address on its default route, if it has one besides loopback (no packet is
/// sent: connecting a UDP socket only picks the source address).
fn non_loopback_address() -> Option<IpAddr> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("192.0.2.1:9").ok()?;
    Some(socket.local_addr().ok()?.ip()).filter(|ip| !ip.is_loopback() && !ip.is_unspecified())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_mode_listens_on_loopback_only_and_logs_that_it_is_unauthenticated() {
    let pod = FakePod::start(Behavior::Body(exposition(&[("chat", 1)]))).await;
    let running = Running::start(&one_pod_yaml(&pod), &["--log-format", "json"], false).await;
    // Started on port 0: the warning names the configured address, whose IP is the claim.
    let want_ip = running.api.ip();
    let warning = eventually(
        Duration::from_secs(10),
        "the unauthenticated warning in the startup log",
        || {
            let stderr = running.process.stderr();
            let found = stderr
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find(|l| {
                    l["fields"]["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("WITHOUT authentication"))
                });
            async move { found }
        },
    )
    .await;
    assert_eq!(warning["level"], "WARN", "{warning}");
    let warned: std::net::SocketAddr = warning["fields"]["address"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {warning}"));
    assert_eq!(warned.ip(), want_ip, "{warning}");
    assert!(
        running.process.stderr().contains(&format!(
            "listening on https://127.0.0.1:{}",
            running.api.port()
        )),
        "the API listener is bound to loopback:\n{}",
        running.process.stderr()
    );

    match non_loopback_address() {
        Some(ip) => {
            let reached = tokio::net::TcpStream::connect((ip, running.api.port())).await;
            assert!(
                reached.is_err(),
                "the API answered on {ip}, not only on loopback"
            );
        }
        None => eprintln!("no non-loopback address on this machine: only the log line is checked"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_metrics_pass_promtool_check_metrics() {
    let promtool = e2e::require_tool(
        "promtool",
        ".ci/run must install the `prometheus` Debian package, which provides promtool",
    );
    let good = FakePod::start(Behavior::Body(exposition(&[("chat", 2)]))).await;
    let dead_url = format!("http://127.0.0.1:{}/metrics", e2e::free_port());
    let yaml = static_pods_yaml(&[
        StaticPod {
            namespace: "default",
            name: "good",
            labels: &[("app", "ws")],
            url: good.url(),
        },
        StaticPod {
            namespace: "default",
            name: "dead",
            labels: &[("app", "ws")],
            url: dead_url,
        },
    ]);
    let running = Running::start(
        &yaml,
        &["--scrape-interval", "200ms", "--scrape-timeout", "150ms"],
        false,
    )
    .await;
    // Every labelled family gets samples: API requests of several kinds and codes.
    let client = running.client();
    for path in [
        ALL_PODS.to_owned(),
        format!("{ALL_PODS}?labelSelector=app%3Dws"),
        "/apis/custom.metrics.k8s.io/v1beta2/namespaces/default/pods/good/websocket_connections"
            .to_owned(),
        "/apis/custom.metrics.k8s.io/v1beta2/namespaces/default/pods/dead/websocket_connections"
            .to_owned(),
        "/apis/custom.metrics.k8s.io/v1beta2/namespaces/default/metrics/websocket_connections"
            .to_owned(),
        "/apis/custom.metrics.k8s.io/v1beta2".to_owned(),
        "/apis/custom.metrics.k8s.io/v1beta2/namespaces/default/pods/%2A/nope".to_owned(),
    ] {
        let _ = client.get(running.api, &path).await;
    }
    let metrics = running.metrics;
    let body = eventually(
        Duration::from_secs(10),
        "a round with one success and one connect error",
        || async move {
            let (_, body) = plain_get(metrics, "/metrics").await.ok()?;
            let success = e2e::sample(
                &body,
                "ws_metrics_adapter_scrapes_total{outcome=\"success\"}",
            )?;
            let failed = e2e::sample(
                &body,
                "ws_metrics_adapter_scrapes_total{outcome=\"connect_error\"}",
            )?;
            (success >= 1.0 && failed >= 1.0).then_some(body)
        },
    )
    .await;
    assert!(
        body.contains("code=\"404\""),
        "no 404 request sample: {body}"
    );
    let file = running.dir.path().join("metrics.txt");
    std::fs::write(&file, &body).expect("write metrics body");
    let mut cmd = Command::new(promtool);
    cmd.args(["check", "metrics"]);
    let out = e2e::run_with_stdin(cmd, "promtool", Some(&file), Duration::from_secs(30)).await;
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics ({}):\n{said}\n--- body:\n{body}",
        out.status
    );
}

/// A raw HTTP/1.1 POST; the status code.
async fn plain_post(addr: SocketAddr, path: &str, headers: &str, body: &[u8]) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to the remote-write listener");
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.expect("write head");
    s.write_all(body).await.expect("write body");
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.expect("read answer");
    let text = String::from_utf8_lossy(&out);
    text.get(9..12)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"))
}

#[tokio::test]
async fn the_binary_serves_remote_write_on_its_own_listener() {
    let pod = FakePod::start(Behavior::Body(exposition(&[("chat", 1)]))).await;
    let running = Running::start(
        &one_pod_yaml(&pod),
        &[
            "--source",
            "remote-write",
            "--remote-write-bind-address",
            "127.0.0.1:0",
            "--remote-write-insecure-allow-unauthenticated",
            "--remote-write-ready-grace",
            "1s",
        ],
        false,
    )
    .await;
    let stderr = running.process.stderr();
    let rw: SocketAddr = stderr
        .lines()
        .find(|l| l.contains("(remote-write receiver"))
        .and_then(|l| l.split("listening on ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no remote-write listening line in:\n{stderr}"));
    assert!(
        stderr.contains("--remote-write-insecure-allow-unauthenticated"),
        "the unauthenticated receiver is logged as such:\n{stderr}"
    );
    let (code, _) = plain_get(rw, "/api/v1/write").await.expect("GET");
    assert_eq!(code, 405);
    let proto = "Content-Type: application/x-protobuf\r\nContent-Encoding: snappy\r\n";
    assert_eq!(
        plain_post(rw, "/api/v1/write", proto, b"\x0a\xff\x00").await,
        400,
        "corrupt snappy"
    );
    assert_eq!(
        plain_post(rw, "/api/v1/write", "Content-Type: text/plain\r\n", b"x").await,
        415
    );
    // An empty WriteRequest (snappy of zero bytes is the single byte 0): accepted.
    assert_eq!(plain_post(rw, "/api/v1/write", proto, b"\x00").await, 204);
    let (_, metrics) = plain_get(running.metrics, "/metrics")
        .await
        .expect("metrics");
    for outcome in [
        "accepted",
        "bad_request",
        "unsupported_media_type",
        "method_not_allowed",
    ] {
        let line =
            format!("ws_metrics_adapter_remote_write_requests_total{{outcome=\"{outcome}\"}} 1");
        assert!(metrics.contains(&line), "missing {line:?} in:\n{metrics}");
    }
}
