//! The real HTTPS listener, read by the real `kubectl` (as the aggregator's Go clients would read
//! it) and probed with raw rustls clients: ALPN, TLS 1.2, garbage on the port, and hot reload of
//! the serving certificate files.

use ws_e2e as support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ProtocolVersion, SupportedProtocolVersion};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use support::e2e::{self, Logs};
use support::{Adapter, Behavior, FakePod, StaticPod, eventually, exposition, static_pods_yaml};
use ws_metrics_adapter::server::tls;

const CM: &str = "/apis/custom.metrics.k8s.io";
const KUBECTL_HINT: &str =
    "the kubectl tests drive the adapter with the real kubectl; .ci/run must install it";
const ALL_VERSIONS: &[&SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// Three fake pods: `ws-0` (3 + 4 connections) and `ws-1` (5) labelled `app=ws`, `other-0` (11)
/// labelled `app=other`, served by an adapter in static mode that has scraped them all.
/// `ca_pem` is the CA to trust when `extra` sets the serving files; else the generated one.
async fn adapter_over_fake_pods(extra: &[&str], ca_pem: Option<&str>) -> (Adapter, Vec<FakePod>) {
    let ws0 = FakePod::start(Behavior::Body(exposition(&[("chat", 3), ("echo", 4)]))).await;
    let ws1 = FakePod::start(Behavior::Body(exposition(&[("chat", 5)]))).await;
    let other = FakePod::start(Behavior::Body(exposition(&[("chat", 11)]))).await;
    let yaml = static_pods_yaml(&[
        StaticPod {
            namespace: "default",
            name: "ws-0",
            labels: &[("app", "ws")],
            url: ws0.url(),
        },
        StaticPod {
            namespace: "default",
            name: "ws-1",
            labels: &[("app", "ws")],
            url: ws1.url(),
        },
        StaticPod {
            namespace: "default",
            name: "other-0",
            labels: &[("app", "other")],
            url: other.url(),
        },
    ]);
    let mut flags = vec!["--scrape-interval", "200ms", "--scrape-timeout", "150ms"];
    flags.extend_from_slice(extra);
    let adapter = Adapter::start_static(&yaml, &flags).await;
    adapter.wait_ready(Duration::from_secs(10)).await;
    let ca = ca_pem.map_or_else(|| adapter_ca(&adapter), str::to_owned);
    let cfg = client_config(&ca, &[b"h2"], ALL_VERSIONS);
    let all = format!("{CM}/v1beta2/namespaces/default/pods/%2A/websocket_connections");
    eventually(
        Duration::from_secs(10),
        "all three pods to have a value",
        || {
            let (cfg, all) = (cfg.clone(), &all);
            async move {
                let (_, status, body) =
                    get_over(handshake(adapter.api, cfg).await.ok()?, all).await;
                let body: Value = serde_json::from_str(&body).ok()?;
                (status == 200 && body["items"].as_array().map(Vec::len) == Some(3)).then_some(())
            }
        },
    )
    .await;
    (adapter, vec![ws0, ws1, other])
}

/// A kubeconfig for the adapter's listener that trusts its generated CA. kubectl prompts for a
/// username when a user has no credentials at all, so the user carries a token the adapter
/// ignores (it authenticates no one yet).
fn kubeconfig_for(adapter: &Adapter, dir: &Path) -> PathBuf {
    let path = dir.join("kubeconfig");
    let server = format!("https://127.0.0.1:{}", adapter.api.port());
    e2e::write_kubeconfig(
        &path,
        &server,
        Some(&adapter.ca_path()),
        Some("ignored-by-the-adapter"),
    );
    path
}

/// Runs `kubectl --kubeconfig <kc> --cache-dir <fresh dir> <args>`.
async fn kubectl(kubectl: &Path, kubeconfig: &Path, args: &[&str]) -> Output {
    let cache = tempfile::tempdir().expect("cache dir");
    let mut cmd = Command::new(kubectl);
    cmd.arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--cache-dir")
        .arg(cache.path())
        .args(args)
        .env_remove("KUBECONFIG");
    e2e::run(cmd, "kubectl", Duration::from_secs(60)).await
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Parses kubectl's stdout as JSON, failing with everything kubectl said.
fn json_of(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "kubectl failed ({}): stdout={} stderr={}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("kubectl printed no JSON ({e}): {}", text(&out.stdout)))
}

/// `name -> value` of every item, checking the parts of each item that do not vary.
fn values_by_pod(body: &Value, version: &str) -> BTreeMap<String, String> {
    assert_eq!(body["kind"], "MetricValueList", "{body}");
    assert_eq!(
        body["apiVersion"],
        format!("custom.metrics.k8s.io/{version}"),
        "{body}"
    );
    let items = body["items"]
        .as_array()
        .unwrap_or_else(|| panic!("no items: {body}"));
    let mut out = BTreeMap::new();
    for item in items {
        let d = &item["describedObject"];
        assert_eq!(
            (&d["kind"], &d["namespace"], &d["apiVersion"]),
            (&"Pod".into(), &"default".into(), &"v1".into()),
            "{item}"
        );
        match version {
            "v1beta1" => assert_eq!(item["metricName"], "websocket_connections", "{item}"),
            _ => assert_eq!(item["metric"]["name"], "websocket_connections", "{item}"),
        }
        assert!(
            item["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')),
            "{item}"
        );
        let name = d["name"]
            .as_str()
            .unwrap_or_else(|| panic!("no name: {item}"))
            .to_owned();
        let value = item["value"]
            .as_str()
            .unwrap_or_else(|| panic!("no value: {item}"))
            .to_owned();
        assert!(
            out.insert(name, value).is_none(),
            "a pod listed twice: {body}"
        );
    }
    out
}

fn expected(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_get_raw_reads_each_pods_connections_in_both_versions_over_the_real_tls_listener() {
    let kubectl_bin = e2e::require_tool("kubectl", KUBECTL_HINT);
    let (adapter, _pods) = adapter_over_fake_pods(&[], None).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let kc = kubeconfig_for(&adapter, dir.path());

    // The HPA's request shape: all pods (`*`) with a label selector; kubectl sends `*` as %2A.
    let out = kubectl(
        &kubectl_bin,
        &kc,
        &[
            "get",
            "--raw",
            &format!(
                "{CM}/v1beta2/namespaces/default/pods/*/websocket_connections?labelSelector=app=ws"
            ),
            "-v=6",
        ],
    )
    .await;
    let body = json_of(&out);
    assert_eq!(
        values_by_pod(&body, "v1beta2"),
        expected(&[("ws-0", "7"), ("ws-1", "5")]),
        "{body}"
    );
    for item in body["items"].as_array().into_iter().flatten() {
        assert_eq!(
            item["metric"]["selector"],
            Value::Null,
            "no metricLabelSelector was given: {item}"
        );
    }
    let log = text(&out.stderr);
    assert!(
        log.lines().any(
            |l| l.contains("/pods/%2A/websocket_connections?labelSelector=app%3Dws")
                && l.contains("200 OK")
        ),
        "kubectl's request log does not show the percent-encoded wildcard answered 200:\n{log}"
    );

    let out = kubectl(
        &kubectl_bin,
        &kc,
        &[
            "get",
            "--raw",
            &format!(
                "{CM}/v1beta1/namespaces/default/pods/*/websocket_connections?labelSelector=app=ws"
            ),
        ],
    )
    .await;
    let body = json_of(&out);
    assert_eq!(
        values_by_pod(&body, "v1beta1"),
        expected(&[("ws-0", "7"), ("ws-1", "5")]),
        "{body}"
    );

    // No selector: every pod of the namespace.
    let out = kubectl(
        &kubectl_bin,
        &kc,
        &[
            "get",
            "--raw",
            &format!("{CM}/v1beta2/namespaces/default/pods/*/websocket_connections"),
        ],
    )
    .await;
    let body = json_of(&out);
    assert_eq!(
        values_by_pod(&body, "v1beta2"),
        expected(&[("other-0", "11"), ("ws-0", "7"), ("ws-1", "5")]),
        "{body}"
    );

    // One pod by name.
    let out = kubectl(
        &kubectl_bin,
        &kc,
        &[
            "get",
            "--raw",
            &format!("{CM}/v1beta2/namespaces/default/pods/ws-1/websocket_connections"),
        ],
    )
    .await;
    let body = json_of(&out);
    assert_eq!(
        values_by_pod(&body, "v1beta2"),
        expected(&[("ws-1", "5")]),
        "{body}"
    );
    let out = kubectl(
        &kubectl_bin,
        &kc,
        &[
            "get",
            "--raw",
            &format!("{CM}/v1beta1/namespaces/default/pods/ws-0/websocket_connections"),
        ],
    )
    .await;
    let body = json_of(&out);
    assert_eq!(
        values_by_pod(&body, "v1beta1"),
        expected(&[("ws-0", "7")]),
        "{body}"
    );

    adapter.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_reports_our_not_found_status_for_an_unknown_metric() {
    let kubectl_bin = e2e::require_tool("kubectl", KUBECTL_HINT);
    let (adapter, _pods) = adapter_over_fake_pods(&[], None).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let kc = kubeconfig_for(&adapter, dir.path());

    let out = kubectl(
        &kubectl_bin,
        &kc,
        &[
            "get",
            "--raw",
            &format!("{CM}/v1beta2/namespaces/default/pods/*/nope"),
        ],
    )
    .await;
    assert!(
        !out.status.success(),
        "kubectl succeeded on an unknown metric: {}",
        text(&out.stdout)
    );
    let stderr = text(&out.stderr);
    // kubectl decoded our Status body (it needs kind, apiVersion and the JSON content type).
    assert!(
        stderr.contains("(NotFound)")
            && stderr.contains("the server could not find the metric nope for pods"),
        "kubectl did not relay our 404 Status: {stderr}"
    );
    assert!(
        out.stdout.is_empty(),
        "nothing on stdout for an error: {}",
        text(&out.stdout)
    );
    adapter.stop().await;
}

/// `kubectl api-resources` runs discovery against our server directly: `/api` (404 here, which
/// kubectl tolerates), `/apis`, then each version's resource list. It hides subresources
/// (names with a '/'), so `pods/websocket_connections` is not in its table; the resource list is
/// checked with `get --raw` instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_discovery_against_the_adapter_succeeds_and_lists_our_resources() {
    let kubectl_bin = e2e::require_tool("kubectl", KUBECTL_HINT);
    let (adapter, _pods) = adapter_over_fake_pods(&[], None).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let kc = kubeconfig_for(&adapter, dir.path());

    let out = kubectl(
        &kubectl_bin,
        &kc,
        &["api-resources", "--api-group=custom.metrics.k8s.io", "-v=6"],
    )
    .await;
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(
        out.status.success(),
        "api-resources failed ({}): {stdout}\n{stderr}",
        out.status
    );
    assert!(stdout.starts_with("NAME"), "no table header: {stdout}");
    assert!(
        !stderr.contains("couldn't get resource list") && !stderr.contains("Got empty response"),
        "{stderr}"
    );
    for path in [
        "/apis?",
        "/apis/custom.metrics.k8s.io/v1beta1?",
        "/apis/custom.metrics.k8s.io/v1beta2?",
    ] {
        assert!(
            stderr.lines().any(
                |l| l.contains(&format!("127.0.0.1:{}{path}", adapter.api.port()))
                    && l.contains("200 OK")
            ),
            "kubectl's discovery did not get 200 for {path}:\n{stderr}"
        );
    }

    let out = kubectl(&kubectl_bin, &kc, &["get", "--raw", "/apis"]).await;
    let groups = json_of(&out);
    assert_eq!(groups["kind"], "APIGroupList", "{groups}");
    assert_eq!(
        groups["groups"][0]["preferredVersion"]["version"], "v1beta2",
        "{groups}"
    );
    for version in ["v1beta1", "v1beta2"] {
        let out = kubectl(
            &kubectl_bin,
            &kc,
            &["get", "--raw", &format!("{CM}/{version}")],
        )
        .await;
        let list = json_of(&out);
        assert_eq!(list["kind"], "APIResourceList", "{list}");
        let names: Vec<&str> = list["resources"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["name"].as_str())
            .collect();
        assert_eq!(
            names,
            [
                "pods/websocket_connections",
                "namespaces/websocket_connections"
            ],
            "{list}"
        );
    }
    adapter.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Raw TLS clients.
// ---------------------------------------------------------------------------------------------

fn client_config(
    ca_pem: &str,
    alpn: &[&[u8]],
    versions: &[&'static SupportedProtocolVersion],
) -> Arc<ClientConfig> {
    tls::install_provider();
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.expect("CA PEM")).expect("CA accepted");
    }
    let mut cfg = ClientConfig::builder_with_provider(tls::provider())
        .with_protocol_versions(versions)
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    // Every handshake is a full one: a resumed session skips the certificate, which would hide
    // which pair the server holds after a reload.
    cfg.resumption = rustls::client::Resumption::disabled();
    Arc::new(cfg)
}

fn adapter_ca(adapter: &Adapter) -> String {
    std::fs::read_to_string(adapter.ca_path()).expect("read generated CA")
}

async fn handshake(
    addr: SocketAddr,
    cfg: Arc<ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").expect("server name");
    tokio::time::timeout(
        Duration::from_secs(5),
        TlsConnector::from(cfg).connect(name, tcp),
    )
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out"))?
}

/// One GET over an established TLS stream, speaking whatever ALPN chose.
async fn get_over(stream: TlsStream<TcpStream>, path: &str) -> (http::Version, u16, String) {
    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2".as_slice());
    let io = TokioIo::new(stream);
    let resp = if h2 {
        let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .expect("HTTP/2 handshake");
        tokio::spawn(conn);
        let req = http::Request::get(format!("https://localhost{path}"))
            .body(Empty::<Bytes>::new())
            .expect("request");
        sender.send_request(req).await.expect("HTTP/2 response")
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .expect("HTTP/1.1 handshake");
        tokio::spawn(conn);
        let req = http::Request::get(path)
            .header(http::header::HOST, "localhost")
            .body(Empty::<Bytes>::new())
            .expect("request");
        sender.send_request(req).await.expect("HTTP/1.1 response")
    };
    let (version, status) = (resp.version(), resp.status().as_u16());
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (version, status, String::from_utf8_lossy(&body).into_owned())
}

fn pod_path() -> String {
    format!("{CM}/v1beta2/namespaces/default/pods/ws-0/websocket_connections")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alpn_prefers_h2_and_negotiates_each_of_h2_and_http11_when_offered_alone() {
    let (adapter, _pods) = adapter_over_fake_pods(&[], None).await;
    let ca = adapter_ca(&adapter);
    /// What the client offers, and what must be negotiated and spoken.
    struct Case {
        what: &'static str,
        offered: &'static [&'static [u8]],
        alpn: Option<&'static [u8]>,
        version: http::Version,
    }
    let cases = [
        Case {
            what: "both, h2 first",
            offered: &[b"h2", b"http/1.1"],
            alpn: Some(b"h2"),
            version: http::Version::HTTP_2,
        },
        Case {
            what: "both, http/1.1 first (the server's preference wins)",
            offered: &[b"http/1.1", b"h2"],
            alpn: Some(b"h2"),
            version: http::Version::HTTP_2,
        },
        Case {
            what: "h2 alone",
            offered: &[b"h2"],
            alpn: Some(b"h2"),
            version: http::Version::HTTP_2,
        },
        Case {
            what: "http/1.1 alone",
            offered: &[b"http/1.1"],
            alpn: Some(b"http/1.1"),
            version: http::Version::HTTP_11,
        },
        Case {
            what: "no ALPN at all",
            offered: &[],
            alpn: None,
            version: http::Version::HTTP_11,
        },
    ];
    for Case {
        what,
        offered,
        alpn: want_alpn,
        version: want_version,
    } in cases
    {
        let stream = handshake(adapter.api, client_config(&ca, offered, ALL_VERSIONS))
            .await
            .unwrap_or_else(|e| panic!("{what}: handshake failed: {e}"));
        assert_eq!(stream.get_ref().1.alpn_protocol(), want_alpn, "{what}");
        let (version, status, body) = get_over(stream, &pod_path()).await;
        assert_eq!((version, status), (want_version, 200), "{what}: {body}");
        assert!(body.contains("\"value\":\"7\""), "{what}: {body}");
    }
    adapter.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_limited_to_tls12_or_tls13_are_each_served() {
    let (adapter, _pods) = adapter_over_fake_pods(&[], None).await;
    let ca = adapter_ca(&adapter);
    for (version, want) in [
        (&rustls::version::TLS12, ProtocolVersion::TLSv1_2),
        (&rustls::version::TLS13, ProtocolVersion::TLSv1_3),
    ] {
        let stream = handshake(
            adapter.api,
            client_config(&ca, &[b"h2", b"http/1.1"], &[version]),
        )
        .await
        .unwrap_or_else(|e| panic!("{want:?}-only handshake failed: {e}"));
        assert_eq!(stream.get_ref().1.protocol_version(), Some(want));
        let (_, status, body) = get_over(stream, &pod_path()).await;
        assert_eq!(status, 200, "{want:?}: {body}");
    }
    adapter.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_tls_port_is_dropped_and_the_next_client_is_served() {
    let (adapter, _pods) = adapter_over_fake_pods(&[], None).await;
    let ca = adapter_ca(&adapter);
    let junk: Vec<u8> = (0..1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 | 0x80)
        .collect();
    let plain_http =
        b"GET /apis/custom.metrics.k8s.io/v1beta2 HTTP/1.1\r\nHost: localhost\r\n\r\n".to_vec();
    for (what, bytes) in [
        ("1 KiB of junk", junk),
        ("plain HTTP on the TLS port", plain_http),
    ] {
        let mut tcp = TcpStream::connect(adapter.api).await.expect("connect");
        // The server may reset before we finish writing; that is a drop too.
        let _ = tcp.write_all(&bytes).await;
        let mut back = Vec::new();
        // The server's own handshake deadline is 10 s: closing well before it means the bytes
        // were rejected, not merely timed out.
        let closed = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut back)).await;
        assert!(
            closed.is_ok(),
            "{what}: the connection was still open after 5 s"
        );
        assert!(
            !String::from_utf8_lossy(&back).contains("HTTP/"),
            "{what}: got an HTTP answer: {back:?}"
        );
        assert!(
            back.len() < 64,
            "{what}: more than a TLS alert came back: {back:?}"
        );

        let stream = handshake(adapter.api, client_config(&ca, &[b"h2"], ALL_VERSIONS))
            .await
            .expect("next client's handshake");
        let (_, status, body) = get_over(stream, &pod_path()).await;
        assert_eq!(
            status, 200,
            "{what}: the next client was not served: {body}"
        );
    }
    adapter.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaced_certificate_files_are_served_within_seconds_and_a_garbage_file_keeps_the_last_good_pair()
 {
    let logs = Logs::capture();
    let sans = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    let first = tls::generate_pair("first", &sans).expect("first pair");
    let second = tls::generate_pair("second", &sans).expect("second pair");
    let files = tempfile::tempdir().expect("tempdir");
    let (cert, key) = (
        files.path().join("serving.crt"),
        files.path().join("serving.key"),
    );
    std::fs::write(&cert, &first.cert_pem).expect("write cert");
    std::fs::write(&key, &first.key_pem).expect("write key");
    let (cert_flag, key_flag) = (cert.display().to_string(), key.display().to_string());
    let (adapter, _pods) = adapter_over_fake_pods(
        &[
            "--tls-cert-file",
            &cert_flag,
            "--tls-private-key-file",
            &key_flag,
        ],
        Some(&first.ca_pem),
    )
    .await;
    let trust_first = client_config(&first.ca_pem, &[b"h2", b"http/1.1"], ALL_VERSIONS);
    let trust_second = client_config(&second.ca_pem, &[b"h2", b"http/1.1"], ALL_VERSIONS);

    let stream = handshake(adapter.api, trust_first.clone())
        .await
        .expect("the first pair is served");
    assert_eq!(get_over(stream, &pod_path()).await.1, 200);
    let refused = handshake(adapter.api, trust_second.clone())
        .await
        .expect_err("second CA not yet in use");
    assert!(
        refused.to_string().contains("UnknownIssuer"),
        "refused for another reason: {refused}"
    );

    // Replace both files in place, key first, as a non-atomic writer would.
    let replaced = Instant::now();
    std::fs::write(&key, &second.key_pem).expect("write key");
    std::fs::write(&cert, &second.cert_pem).expect("write cert");
    let stream = eventually(
        Duration::from_secs(4),
        "a client trusting only the second CA to connect",
        || {
            let cfg = trust_second.clone();
            async move { handshake(adapter.api, cfg).await.ok() }
        },
    )
    .await;
    let took = replaced.elapsed();
    assert_eq!(get_over(stream, &pod_path()).await.1, 200);
    assert!(
        handshake(adapter.api, trust_first.clone()).await.is_err(),
        "the first pair is still served"
    );
    eprintln!("new certificate served {took:?} after the files were replaced");

    // A garbage certificate: rejected (logged) on every check, and the second pair stays.
    let rejection = ["cannot be used yet", cert_flag.as_str()];
    let before = logs.lines_with(&rejection).len();
    std::fs::write(&cert, "this is not a certificate\n").expect("write garbage");
    eventually(
        Duration::from_secs(5),
        "the file watcher to reject the garbage certificate twice",
        || {
            let n = logs.lines_with(&rejection).len();
            async move { (n >= before + 2).then_some(()) }
        },
    )
    .await;
    let stream = handshake(adapter.api, trust_second.clone())
        .await
        .expect("the second pair is still served");
    assert_eq!(get_over(stream, &pod_path()).await.1, 200);
    assert!(
        handshake(adapter.api, trust_first).await.is_err(),
        "fell back to the first pair"
    );
    adapter.stop().await;
}
