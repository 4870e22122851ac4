//! Tests of the receiver: ingest into a seeded store (values, times, stale markers, limits) and
//! the HTTP handler (auth, headers, limits, malformed bodies).

use std::time::Duration;

use axum::body::Body;
use http::Request;
use tower::ServiceExt;

use super::decode::{Label, STALE_NAN_BITS, Sample, TimeSeries, encode};
use super::*;
use crate::health::Health;
use crate::selector::Selector;
use crate::store::{MetricMapping, PodTarget};
use std::path::PathBuf;

const FAMILY: &str = "websocket_connections_active";
const MAX_AGE: Duration = Duration::from_secs(10);

fn config() -> RemoteWriteConfig {
    RemoteWriteConfig {
        addr: "127.0.0.1:0".parse().expect("literal address"),
        tls: None,
        bearer_token_file: None,
        namespace_label: "namespace".into(),
        pod_label: "pod".into(),
        max_body_bytes: 1 << 20,
        max_decoded_bytes: 4 << 20,
        max_series_per_request: 1000,
        max_series: 1000,
        max_concurrent_requests: 4,
        ready_grace: Duration::from_secs(30),
    }
}

fn store(pods: &[&str]) -> Arc<Store> {
    let store = Arc::new(Store::new(
        MetricCatalog::new(vec![MetricMapping {
            served: "websocket_connections".into(),
            family: FAMILY.into(),
            rate: None,
            filter: None,
        }]),
        MAX_AGE,
    ));
    store.replace_all(
        pods.iter()
            .map(|p| PodTarget {
                key: key(p),
                uid: format!("uid-{p}"),
                labels: [("app".to_string(), "ws".to_string())].into(),
                url: format!("http://127.0.0.1:1/{p}"),
                ready: true,
            })
            .collect(),
    );
    store
}

fn key(pod: &str) -> PodKey {
    PodKey {
        namespace: "ws".into(),
        name: pod.into(),
    }
}

fn unix_ms(t: SystemTime) -> i64 {
    i64::try_from(
        t.duration_since(UNIX_EPOCH)
            .expect("after 1970")
            .as_millis(),
    )
    .expect("fits")
}

fn series(name: &str, pod: &str, route: &str, value: f64, ts: i64) -> TimeSeries {
    TimeSeries {
        labels: [
            ("__name__", name),
            ("namespace", "ws"),
            ("pod", pod),
            ("route", route),
        ]
        .into_iter()
        .map(|(n, v)| Label::new(n, v))
        .collect(),
        samples: vec![Sample {
            value,
            timestamp: ts,
        }],
    }
}

fn value(store: &Store, pod: &str, at: Moment) -> Option<(i64, SystemTime)> {
    store
        .pod_value(&key(pod), 0, &Selector::everything(), at)
        .map(|v| (v.milli, v.time.wall))
}

#[test]
fn a_pods_value_is_the_sum_of_its_series_stamped_with_the_newest_sample() {
    let store = store(&["a", "b"]);
    let rx = Receiver::new(store.clone(), Arc::new(Telemetry::new()), config());
    let at = Moment::now();
    let t = unix_ms(at.wall) - 2_000;
    let report = rx.ingest(
        &WriteRequest {
            timeseries: vec![
                series(FAMILY, "a", "chat", 3.0, t - 500),
                series(FAMILY, "a", "feed", 4.0, t),
                series(FAMILY, "b", "chat", 5.0, t),
                series("up", "a", "", 1.0, t),
            ],
        },
        at,
    );
    assert_eq!(report.accepted, 3);
    assert_eq!(report.dropped(DropReason::FamilyNotServed), 1);
    assert_eq!(report.pods_recorded, 2);
    let (milli, wall) = value(&store, "a", at).expect("a has a value");
    assert_eq!(milli, 7000);
    assert_eq!(
        unix_ms(wall),
        t,
        "the newest sample's own time, not the receive time"
    );
    assert_eq!(value(&store, "b", at).map(|v| v.0), Some(5000));
    assert_eq!(rx.series_tracked(), 3);
}

#[test]
fn a_stale_marker_removes_its_series_and_the_last_one_removes_the_value_never_a_zero() {
    let store = store(&["a"]);
    let rx = Receiver::new(store.clone(), Arc::new(Telemetry::new()), config());
    let at = Moment::now();
    let t = unix_ms(at.wall);
    let stale = f64::from_bits(STALE_NAN_BITS);
    rx.ingest(
        &WriteRequest {
            timeseries: vec![
                series(FAMILY, "a", "chat", 3.0, t),
                series(FAMILY, "a", "feed", 4.0, t),
            ],
        },
        at,
    );
    let report = rx.ingest(
        &WriteRequest {
            timeseries: vec![series(FAMILY, "a", "feed", stale, t + 1)],
        },
        at,
    );
    assert_eq!(report.stale, 1);
    assert_eq!(value(&store, "a", at).map(|v| v.0), Some(3000));
    rx.ingest(
        &WriteRequest {
            timeseries: vec![series(FAMILY, "a", "chat", stale, t + 1)],
        },
        at,
    );
    assert_eq!(
        value(&store, "a", at),
        None,
        "no series left: no value, not 0"
    );
    assert_eq!(rx.series_tracked(), 0);
}

#[test]
fn an_ordinary_nan_is_dropped_and_the_previous_value_stays_until_max_age() {
    let store = store(&["a"]);
    let rx = Receiver::new(store.clone(), Arc::new(Telemetry::new()), config());
    let at = Moment::now();
    let t = unix_ms(at.wall);
    rx.ingest(
        &WriteRequest {
            timeseries: vec![series(FAMILY, "a", "chat", 3.0, t)],
        },
        at,
    );
    let report = rx.ingest(
        &WriteRequest {
            timeseries: vec![series(FAMILY, "a", "chat", f64::NAN, t + 1)],
        },
        at,
    );
    assert_eq!(report.dropped(DropReason::Unservable), 1);
    assert_eq!(value(&store, "a", at).map(|v| v.0), Some(3000));
    let later = Moment {
        wall: at.wall + MAX_AGE + Duration::from_secs(1),
        mono: at.mono + MAX_AGE + Duration::from_secs(1),
    };
    assert_eq!(
        value(&store, "a", later),
        None,
        "aged out by --max-age, never 0"
    );
}

#[test]
fn a_series_that_stops_arriving_leaves_the_sum_after_max_age() {
    let store = store(&["a"]);
    let rx = Receiver::new(store.clone(), Arc::new(Telemetry::new()), config());
    let at = Moment::now();
    let t = unix_ms(at.wall);
    rx.ingest(
        &WriteRequest {
            timeseries: vec![
                series(FAMILY, "a", "chat", 3.0, t),
                series(FAMILY, "a", "feed", 4.0, t),
            ],
        },
        at,
    );
    let step = MAX_AGE + Duration::from_secs(1);
    let later = Moment {
        wall: at.wall + step,
        mono: at.mono + step,
    };
    rx.ingest(
        &WriteRequest {
            timeseries: vec![series(FAMILY, "a", "chat", 5.0, unix_ms(later.wall))],
        },
        later,
    );
    assert_eq!(value(&store, "a", later).map(|v| v.0), Some(5000));
    assert_eq!(rx.series_tracked(), 1);
}

#[test]
fn samples_for_pods_the_inventory_does_not_know_or_without_labels_are_dropped() {
    let store = store(&["a"]);
    let rx = Receiver::new(store.clone(), Arc::new(Telemetry::new()), config());
    let at = Moment::now();
    let t = unix_ms(at.wall);
    let mut unlabelled = series(FAMILY, "a", "chat", 1.0, t);
    unlabelled.labels.retain(|l| l.name() != "pod");
    let report = rx.ingest(
        &WriteRequest {
            timeseries: vec![series(FAMILY, "ghost", "chat", 1.0, t), unlabelled],
        },
        at,
    );
    assert_eq!(report.dropped(DropReason::UnknownPod), 1);
    assert_eq!(report.dropped(DropReason::Unlabelled), 1);
    assert_eq!(rx.series_tracked(), 0);
    assert!(!store.has_pod(&key("ghost")));
}

#[test]
fn new_series_beyond_the_total_limit_are_dropped_and_counted() {
    let store = store(&["a"]);
    let rx = Receiver::new(
        store.clone(),
        Arc::new(Telemetry::new()),
        RemoteWriteConfig {
            max_series: 2,
            ..config()
        },
    );
    let at = Moment::now();
    let t = unix_ms(at.wall);
    let report = rx.ingest(
        &WriteRequest {
            timeseries: ["r1", "r2", "r3"]
                .iter()
                .map(|r| series(FAMILY, "a", r, 1.0, t))
                .collect(),
        },
        at,
    );
    assert_eq!(report.accepted, 2);
    assert_eq!(report.dropped(DropReason::SeriesLimit), 1);
    assert_eq!(rx.series_tracked(), 2);
    // A series already held is still updated at the limit.
    let report = rx.ingest(
        &WriteRequest {
            timeseries: vec![series(FAMILY, "a", "r1", 9.0, t + 1)],
        },
        at,
    );
    assert_eq!(report.accepted, 1);
    assert_eq!(value(&store, "a", at).map(|v| v.0), Some(10_000));
}

#[test]
fn an_older_sample_never_replaces_a_newer_one() {
    let store = store(&["a"]);
    let rx = Receiver::new(store.clone(), Arc::new(Telemetry::new()), config());
    let at = Moment::now();
    let t = unix_ms(at.wall);
    rx.ingest(
        &WriteRequest {
            timeseries: vec![series(FAMILY, "a", "chat", 3.0, t)],
        },
        at,
    );
    let report = rx.ingest(
        &WriteRequest {
            timeseries: vec![series(FAMILY, "a", "chat", 1.0, t - 1000)],
        },
        at,
    );
    assert_eq!(report.dropped(DropReason::OutOfOrder), 1);
    assert_eq!(value(&store, "a", at).map(|v| v.0), Some(3000));
}

#[test]
fn a_recreated_pod_does_not_inherit_the_old_incarnations_series() {
    let store = store(&["a"]);
    let rx = Receiver::new(store.clone(), Arc::new(Telemetry::new()), config());
    let at = Moment::now();
    let t = unix_ms(at.wall);
    rx.ingest(
        &WriteRequest {
            timeseries: vec![series(FAMILY, "a", "chat", 3.0, t)],
        },
        at,
    );
    store.upsert(PodTarget {
        key: key("a"),
        uid: "uid-a-2".into(),
        labels: Default::default(),
        url: "http://127.0.0.1:1/a".into(),
        ready: true,
    });
    assert_eq!(rx.sweep(at.mono), 1);
    assert_eq!(rx.series_tracked(), 0);
    assert_eq!(value(&store, "a", at), None);
}

fn post(body: Vec<u8>) -> http::request::Builder {
    let _ = body;
    Request::post(WRITE_PATH)
        .header(header::CONTENT_TYPE, "application/x-protobuf")
        .header(header::CONTENT_ENCODING, "snappy")
        .header("X-Prometheus-Remote-Write-Version", "0.1.0")
}

fn good_body() -> Vec<u8> {
    let t = unix_ms(SystemTime::now());
    encode(&WriteRequest {
        timeseries: vec![series(FAMILY, "a", "chat", 2.0, t)],
    })
}

async fn status(rx: &Arc<Receiver>, req: Request<Body>) -> (StatusCode, HeaderMap, String) {
    let resp = router(rx.clone())
        .oneshot(req)
        .await
        .expect("router is infallible");
    let (parts, body) = resp.into_parts();
    let bytes = body.collect().await.expect("body").to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&bytes).into_owned(),
    )
}

#[tokio::test]
async fn a_good_write_is_204_and_lands_in_the_store() {
    let store = store(&["a"]);
    let telemetry = Arc::new(Telemetry::new());
    let rx = Arc::new(Receiver::new(store.clone(), telemetry.clone(), config()));
    let body = good_body();
    let (code, _, _) = status(
        &rx,
        post(body.clone()).body(Body::from(body)).expect("request"),
    )
    .await;
    assert_eq!(code, StatusCode::NO_CONTENT);
    assert_eq!(value(&store, "a", Moment::now()).map(|v| v.0), Some(2000));
    assert_eq!(telemetry.remote_write_request_count("accepted"), 1);
}

#[tokio::test]
async fn wrong_method_content_type_and_encoding_are_405_and_415() {
    let rx = Arc::new(Receiver::new(
        store(&["a"]),
        Arc::new(Telemetry::new()),
        config(),
    ));
    let (code, headers, _) = status(
        &rx,
        Request::get(WRITE_PATH)
            .body(Body::empty())
            .expect("request"),
    )
    .await;
    assert_eq!(code, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(
        headers.get(header::ALLOW).map(|v| v.as_bytes()),
        Some(&b"POST"[..])
    );
    let body = good_body();
    let req = post(body.clone())
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.clone()))
        .expect("request");
    // The second Content-Type header is not the first: build from scratch instead.
    let _ = req;
    let req = Request::post(WRITE_PATH)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_ENCODING, "snappy")
        .body(Body::from(body.clone()))
        .expect("request");
    let (code, _, text) = status(&rx, req).await;
    assert_eq!(code, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(text.contains("application/x-protobuf"), "{text}");
    let req = Request::post(WRITE_PATH)
        .header(header::CONTENT_TYPE, "application/x-protobuf")
        .body(Body::from(body))
        .expect("request");
    let (code, _, text) = status(&rx, req).await;
    assert_eq!(code, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(text.contains("snappy"), "{text}");
}

#[tokio::test]
async fn malformed_and_oversized_bodies_are_400_and_413_with_a_message() {
    let rx = Arc::new(Receiver::new(
        store(&["a"]),
        Arc::new(Telemetry::new()),
        RemoteWriteConfig {
            max_body_bytes: 64,
            ..config()
        },
    ));
    let (code, _, text) = status(
        &rx,
        post(vec![])
            .body(Body::from(&b"\x0a\xff\x00"[..]))
            .expect("request"),
    )
    .await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert!(text.contains("snappy"), "{text}");
    let (code, _, text) = status(
        &rx,
        post(vec![])
            .body(Body::from(vec![0u8; 65]))
            .expect("request"),
    )
    .await;
    assert_eq!(code, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(text.contains("--remote-write-max-body-bytes"), "{text}");
    // A 5-byte header announcing 4 GiB: refused before decompressing.
    let (code, _, text) = status(
        &rx,
        post(vec![])
            .body(Body::from(&[0xff, 0xff, 0xff, 0xff, 0x0f][..]))
            .expect("request"),
    )
    .await;
    assert_eq!(code, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(text.contains("above the limit"), "{text}");
}

#[tokio::test]
async fn the_bearer_token_is_required_and_re_read_when_it_rotates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("token");
    std::fs::write(&path, "first\n").expect("write token");
    let store = store(&["a"]);
    let rx = Arc::new(Receiver::new(
        store,
        Arc::new(Telemetry::new()),
        RemoteWriteConfig {
            bearer_token_file: Some(path.clone()),
            ..config()
        },
    ));
    let with = |token: Option<&str>| {
        let body = good_body();
        let mut b = post(body.clone());
        if let Some(t) = token {
            b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        b.body(Body::from(body)).expect("request")
    };
    assert_eq!(status(&rx, with(None)).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(
        status(&rx, with(Some("wrong"))).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        status(&rx, with(Some("first"))).await.0,
        StatusCode::NO_CONTENT
    );
    std::fs::write(&path, "second").expect("rotate token");
    assert_eq!(
        status(&rx, with(Some("first"))).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        status(&rx, with(Some("second"))).await.0,
        StatusCode::NO_CONTENT
    );
}

#[tokio::test]
async fn requests_beyond_the_concurrency_limit_are_429_with_retry_after() {
    let rx = Arc::new(Receiver::new(
        store(&["a"]),
        Arc::new(Telemetry::new()),
        RemoteWriteConfig {
            max_concurrent_requests: 1,
            ..config()
        },
    ));
    // Hold the one permit as an in-flight request would.
    let held = rx.permits.try_acquire().expect("one permit");
    let body = good_body();
    let (code, headers, _) = status(
        &rx,
        post(body.clone())
            .body(Body::from(body.clone()))
            .expect("request"),
    )
    .await;
    assert_eq!(code, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        headers.get(header::RETRY_AFTER).map(|v| v.as_bytes()),
        Some(&b"1"[..])
    );
    drop(held);
    let (code, _, _) = status(
        &rx,
        post(body.clone()).body(Body::from(body)).expect("request"),
    )
    .await;
    assert_eq!(code, StatusCode::NO_CONTENT);
}

/// A CA, a serving leaf for 127.0.0.1 and a client leaf (clientAuth), as PEM files under `dir`;
/// returns (ca, server cert, server key, client cert, client key) paths and the CA DER.
fn mtls_files(dir: &std::path::Path) -> [PathBuf; 5] {
    use rcgen::{
        BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    };
    let ca_key = KeyPair::generate().expect("ca key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).expect("ca cert");
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf = |sans: Vec<String>, usage: ExtendedKeyUsagePurpose| {
        let key = KeyPair::generate().expect("leaf key");
        let mut params = CertificateParams::new(sans).expect("leaf params");
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &issuer).expect("leaf cert");
        (cert.pem(), key.serialize_pem())
    };
    let (server_cert, server_key) = leaf(
        vec!["127.0.0.1".into()],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let (client_cert, client_key) = leaf(vec!["agent".into()], ExtendedKeyUsagePurpose::ClientAuth);
    let paths = [
        "ca.crt",
        "server.crt",
        "server.key",
        "client.crt",
        "client.key",
    ]
    .map(|n| dir.join(n));
    for (path, pem) in paths.iter().zip([
        ca_cert.pem(),
        server_cert,
        server_key,
        client_cert,
        client_key,
    ]) {
        std::fs::write(path, pem).expect("write pem");
    }
    paths
}

/// One POST over TLS with or without the client certificate; the status code, or the error.
async fn post_over_tls(
    addr: std::net::SocketAddr,
    ca: &std::path::Path,
    client: Option<(&std::path::Path, &std::path::Path)>,
) -> Result<u16, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let roots = crate::tls::pem::roots_from_file(ca).map_err(|e| e.to_string())?;
    let builder = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let config = match client {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                crate::tls::pem::certs_from_file(cert).map_err(|e| e.to_string())?,
                crate::tls::pem::key_from_file(key).map_err(|e| e.to_string())?,
            )
            .map_err(|e| e.to_string())?,
        None => builder.with_no_client_auth(),
    };
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").map_err(|e| e.to_string())?;
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let body = good_body();
    let head = format!(
        "POST {WRITE_PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\nContent-Encoding: snappy\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    tls.write_all(head.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    tls.write_all(&body).await.map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    tls.read_to_end(&mut out).await.map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out);
    text.get(9..12)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no status in {text:?}"))
}

#[tokio::test]
async fn mutual_tls_admits_a_client_certificate_from_the_ca_and_refuses_none() {
    crate::tls::install_provider();
    let dir = tempfile::tempdir().expect("tempdir");
    let [ca, server_cert, server_key, client_cert, client_key] = mtls_files(dir.path());
    let resolver = Arc::new(crate::server::tls::CertResolver::new(
        crate::server::tls::load_pair(&server_cert, &server_key).expect("server pair"),
    ));
    let tls = crate::server::tls::server_config_verifying_client_certs(resolver, &ca)
        .expect("mTLS config");
    let store = store(&["a"]);
    let rx = Arc::new(Receiver::new(
        store.clone(),
        Arc::new(Telemetry::new()),
        config(),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (trigger, shutdown) = crate::app::Shutdown::new();
    let limits = crate::server::Limits::default();
    let server = tokio::spawn(crate::server::serve_remote_write(
        listener,
        Some(Arc::new(tls)),
        router(rx.clone()),
        limits,
        Duration::from_secs(1),
        shutdown.wait(),
    ));
    assert_eq!(
        post_over_tls(addr, &ca, Some((&client_cert, &client_key))).await,
        Ok(204)
    );
    assert_eq!(value(&store, "a", Moment::now()).map(|v| v.0), Some(2000));
    let refused = post_over_tls(addr, &ca, None).await;
    assert!(
        refused.is_err(),
        "no client certificate must fail the handshake: {refused:?}"
    );
    trigger.trigger();
    let _ = server.await;
}

async fn ticks(n: u32) {
    for _ in 0..n {
        tokio::time::advance(Duration::from_millis(1100)).await;
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn ready_at_the_first_write_once_the_pods_are_known() {
    let rx = Arc::new(Receiver::new(
        store(&["a"]),
        Arc::new(Telemetry::new()),
        config(),
    ));
    let health = Arc::new(Health::new(Duration::from_secs(1), Duration::from_secs(1)));
    let (trigger, shutdown) = crate::app::Shutdown::new();
    let task = tokio::spawn({
        let (rx, health) = (rx.clone(), health.clone());
        async move { rx.run(health, shutdown.wait()).await }
    });
    ticks(3).await;
    assert!(!health.is_ready(), "no write yet, grace (30s) not over");
    let body = good_body();
    let (code, _, _) = status(
        &rx,
        post(body.clone()).body(Body::from(body)).expect("request"),
    )
    .await;
    assert_eq!(code, StatusCode::NO_CONTENT);
    ticks(2).await;
    assert!(health.is_ready(), "ready after the first write");
    trigger.trigger();
    let _ = task.await;
}

#[tokio::test(start_paused = true)]
async fn ready_after_the_grace_without_any_write() {
    let rx = Arc::new(Receiver::new(
        store(&["a"]),
        Arc::new(Telemetry::new()),
        RemoteWriteConfig {
            ready_grace: Duration::from_secs(5),
            ..config()
        },
    ));
    let health = Arc::new(Health::new(Duration::from_secs(1), Duration::from_secs(1)));
    let (trigger, shutdown) = crate::app::Shutdown::new();
    let task = tokio::spawn({
        let (rx, health) = (rx.clone(), health.clone());
        async move { rx.run(health, shutdown.wait()).await }
    });
    ticks(3).await;
    assert!(!health.is_ready(), "grace not over");
    ticks(5).await;
    assert!(
        health.is_ready(),
        "ready once the grace is over, with no write"
    );
    trigger.trigger();
    let _ = task.await;
}

#[test]
fn a_series_is_one_series_whatever_its_label_order_and_metric_label_selectors_see_its_labels() {
    let store = store(&["a"]);
    let rx = Receiver::new(store.clone(), Arc::new(Telemetry::new()), config());
    let at = Moment::now();
    let t = unix_ms(at.wall);
    let mut reversed = series(FAMILY, "a", "chat", 9.0, t + 1);
    reversed.labels.reverse();
    rx.ingest(
        &WriteRequest {
            timeseries: vec![
                series(FAMILY, "a", "chat", 3.0, t),
                series(FAMILY, "a", "feed", 4.0, t),
            ],
        },
        at,
    );
    rx.ingest(
        &WriteRequest {
            timeseries: vec![reversed],
        },
        at,
    );
    assert_eq!(
        rx.series_tracked(),
        2,
        "the reversed labels name the same series"
    );
    assert_eq!(value(&store, "a", at).map(|v| v.0), Some(13_000));
    let chat = Selector::parse("route=chat").expect("selector");
    assert_eq!(
        store.pod_value(&key("a"), 0, &chat, at).map(|v| v.milli),
        Some(9000),
        "metricLabelSelector filters the pod's series"
    );
}
