//! Tests of the receiver: ingest into a seeded store (values, times, stale markers, limits) and
//! the HTTP handler (auth, headers, limits, malformed bodies).

use std::time::Duration;

use axum::body::Body;
use http::Request;
use tower::ServiceExt;

use super::decode::{Label, STALE_NAN_BITS, Sample, TimeSeries, encode};
use super::*;
use crate::selector::Selector;
use crate::store::{MetricMapping, PodTarget};

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
        .map(|(n, v)| Label {
            name: n.into(),
            value: v.into(),
        })
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
    unlabelled.labels.retain(|l| l.name != "pod");
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
