//! Router tests: `api::router(state).oneshot(request)` on a seeded [`Store`] with a fixed clock.
//! Whole JSON bodies, status codes and the `Content-Type` header are asserted on every answer.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ws_metrics_adapter::clock::{Moment, SampleTime};

use axum::body::Body;
use http::{HeaderMap, Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;
use ws_metrics_adapter::api::{self, ApiState};
use ws_metrics_adapter::selector::Selector;
use ws_metrics_adapter::store::{
    FamilyReading, MetricCatalog, MetricMapping, ObjectSpec, PodKey, PodTarget, Reading,
    ResourceInfo, Series, Store, resource,
};
use ws_metrics_adapter::telemetry::Telemetry;

const CM1: &str = "/apis/custom.metrics.k8s.io/v1beta1";
const CM2: &str = "/apis/custom.metrics.k8s.io/v1beta2";

/// 2025-06-01T12:00:05Z.
const T0_SECS: u64 = 1_748_779_205;
/// Age after which readings are left out.
const MAX_AGE: Duration = Duration::from_secs(10);

/// Sample time of the freshest readings: T0 plus 900 ms (the timestamp truncates to seconds).
fn t0() -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(T0_SECS * 1000 + 900)
}

/// The API's "now": 2 s after the freshest readings.
fn clock() -> Moment {
    moment(UNIX_EPOCH + Duration::from_secs(T0_SECS + 2))
}

/// A wall-clock time of these tests on both clocks (they run together here; a stepped wall clock
/// is the store's unit tests' business).
fn moment(wall: SystemTime) -> Moment {
    static BASE: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let base = *BASE.get_or_init(std::time::Instant::now);
    let origin = UNIX_EPOCH + Duration::from_secs(T0_SECS - 100_000);
    Moment {
        wall,
        mono: base
            + wall
                .duration_since(origin)
                .expect("test times are after the origin"),
    }
}

fn secs_before_t0(s: u64) -> SystemTime {
    t0() - Duration::from_secs(s)
}

fn mapping(served: &str, family: &str) -> MetricMapping {
    MetricMapping {
        served: served.into(),
        family: family.into(),
        rate: None,
        filter: None,
    }
}

fn ws_catalog() -> MetricCatalog {
    MetricCatalog::new(vec![mapping(
        "websocket_connections",
        "websocket_connections_active",
    )])
}

fn series(route: &str, milli: i64) -> Series {
    Series {
        labels: vec![("route".into(), route.into())],
        milli,
    }
}

fn family(series: Vec<Series>) -> Option<FamilyReading> {
    let total_milli = series.iter().map(|s| s.milli).sum();
    Some(FamilyReading {
        series,
        total_milli,
        stamped_ms: None,
    })
}

/// Adds a pod and, if given, records a reading with these families (indexed like the catalog).
fn seed(
    store: &Store,
    ns: &str,
    name: &str,
    labels: &[(&str, &str)],
    reading: Option<(SystemTime, Vec<Option<FamilyReading>>)>,
) {
    let key = PodKey {
        namespace: ns.into(),
        name: name.into(),
    };
    let uid = format!("uid-{ns}-{name}");
    store.upsert(PodTarget {
        key: key.clone(),
        uid: uid.clone(),
        labels: labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        url: format!("http://127.0.0.1:1/{name}"),
        ready: true,
    });
    if let Some((time, families)) = reading {
        let time = SampleTime::read_at(moment(time));
        assert!(store.record(
            &key,
            &uid,
            Reading {
                time,
                families: families.into(),
            }
        ));
    }
}

/// The main fixture, namespace `chat`:
///
/// | pod    | labels                     | series (milli)              | time     |
/// |--------|----------------------------|-----------------------------|----------|
/// | db-0   | app=db                     | chat 5000                   | T0       |
/// | ws-0   | app=ws, tier=a             | chat 3000 + echo 4000       | T0       |
/// | ws-1   | app=ws, tier=b             | chat 1 000 000              | T0 − 1 s |
/// | ws-2   | app=ws, tier=c, canary=yes | echo 12 000 000             | T0 − 2 s |
/// | ws-3   | app=ws                     | family declared, no samples | T0       |
/// | ws-4   | app=ws, tier=a             | chat 1500                   | T0       |
fn chat_store() -> Arc<Store> {
    let store = Store::new(ws_catalog(), MAX_AGE);
    seed(
        &store,
        "chat",
        "db-0",
        &[("app", "db")],
        Some((t0(), vec![family(vec![series("chat", 5000)])])),
    );
    seed(
        &store,
        "chat",
        "ws-0",
        &[("app", "ws"), ("tier", "a")],
        Some((
            t0(),
            vec![family(vec![series("chat", 3000), series("echo", 4000)])],
        )),
    );
    seed(
        &store,
        "chat",
        "ws-1",
        &[("app", "ws"), ("tier", "b")],
        Some((
            secs_before_t0(1),
            vec![family(vec![series("chat", 1_000_000)])],
        )),
    );
    seed(
        &store,
        "chat",
        "ws-2",
        &[("app", "ws"), ("tier", "c"), ("canary", "yes")],
        Some((
            secs_before_t0(2),
            vec![family(vec![series("echo", 12_000_000)])],
        )),
    );
    seed(
        &store,
        "chat",
        "ws-3",
        &[("app", "ws")],
        Some((t0(), vec![family(Vec::new())])),
    );
    seed(
        &store,
        "chat",
        "ws-4",
        &[("app", "ws"), ("tier", "a")],
        Some((t0(), vec![family(vec![series("chat", 1500)])])),
    );
    Arc::new(store)
}

fn state(store: Arc<Store>) -> ApiState {
    ApiState::with_clock(store, Arc::new(Telemetry::new()), clock)
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

/// Sends one request through a fresh router and checks the header every answer must carry.
async fn send(state: &ApiState, req: Request<Body>) -> Answer {
    let method = req.method().clone();
    let uri = req.uri().clone();
    let resp = api::router(state.clone())
        .oneshot(req)
        .await
        .expect("the router is infallible");
    let status = resp.status();
    let headers = resp.headers().clone();
    assert_eq!(
        headers.get(header::CONTENT_TYPE).map(|v| v.as_bytes()),
        Some(&b"application/json"[..]),
        "{method} {uri}: content-type of a {status} answer"
    );
    let bytes = resp
        .into_body()
        .collect()
        .await
        .expect("body is readable")
        .to_bytes();
    let body = if method == Method::HEAD && bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            panic!(
                "{method} {uri}: body is not JSON ({e}): {}",
                String::from_utf8_lossy(&bytes)
            )
        })
    };
    Answer {
        status,
        headers,
        body,
    }
}

async fn get(state: &ApiState, uri: &str) -> Answer {
    let req = Request::get(uri).body(Body::empty()).expect("request");
    send(state, req).await
}

fn status_body(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    })
}

fn not_found_path() -> Value {
    status_body(
        404,
        "NotFound",
        "the server could not find the requested resource",
    )
}

/// A v1beta2 item for pod `name` in `chat`.
fn item2(name: &str, selector: Value, ts: &str, value: &str) -> Value {
    json!({
        "describedObject": {"kind": "Pod", "namespace": "chat", "name": name, "apiVersion": "v1"},
        "metric": {"name": "websocket_connections", "selector": selector},
        "timestamp": ts,
        "value": value,
    })
}

/// A v1beta1 item for pod `name` in `chat`.
fn item1(name: &str, selector: Value, ts: &str, value: &str) -> Value {
    json!({
        "describedObject": {"kind": "Pod", "namespace": "chat", "name": name, "apiVersion": "v1"},
        "metricName": "websocket_connections",
        "timestamp": ts,
        "value": value,
        "selector": selector,
    })
}

fn list(version: &str, items: Vec<Value>) -> Value {
    json!({
        "kind": "MetricValueList",
        "apiVersion": format!("custom.metrics.k8s.io/{version}"),
        "metadata": {},
        "items": items,
    })
}

/// Pod names of a MetricValueList, in answer order.
fn names(body: &Value) -> Vec<String> {
    body["items"]
        .as_array()
        .unwrap_or_else(|| panic!("no items in {body}"))
        .iter()
        .map(|i| {
            i["describedObject"]["name"]
                .as_str()
                .expect("name")
                .to_owned()
        })
        .collect()
}

const TS0: &str = "2025-06-01T12:00:05Z";
const TS1: &str = "2025-06-01T12:00:04Z";
const TS2: &str = "2025-06-01T12:00:03Z";

// ---------------------------------------------------------------------------------------------
// Discovery
// ---------------------------------------------------------------------------------------------

fn group_versions() -> Value {
    json!([
        {"groupVersion": "custom.metrics.k8s.io/v1beta2", "version": "v1beta2"},
        {"groupVersion": "custom.metrics.k8s.io/v1beta1", "version": "v1beta1"},
    ])
}

fn preferred() -> Value {
    json!({"groupVersion": "custom.metrics.k8s.io/v1beta2", "version": "v1beta2"})
}

#[tokio::test]
async fn apis_lists_the_one_group_with_v1beta2_preferred() {
    let s = state(chat_store());
    let a = get(&s, "/apis").await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(
        a.body,
        json!({
            "kind": "APIGroupList",
            "apiVersion": "v1",
            "groups": [{
                "name": "custom.metrics.k8s.io",
                "versions": group_versions(),
                "preferredVersion": preferred(),
            }],
        })
    );
}

#[tokio::test]
async fn the_group_document_lists_both_versions_with_v1beta2_preferred() {
    let s = state(chat_store());
    for path in [
        "/apis/custom.metrics.k8s.io",
        "/apis/custom.metrics.k8s.io/",
    ] {
        let a = get(&s, path).await;
        assert_eq!(a.status, StatusCode::OK, "{path}");
        assert_eq!(
            a.body,
            json!({
                "kind": "APIGroup",
                "apiVersion": "v1",
                "name": "custom.metrics.k8s.io",
                "versions": group_versions(),
                "preferredVersion": preferred(),
            }),
            "{path}"
        );
    }
}

fn resource(name: &str, namespaced: bool) -> Value {
    json!({
        "name": name,
        "singularName": "",
        "namespaced": namespaced,
        "kind": "MetricValueList",
        "verbs": ["get"],
    })
}

#[tokio::test]
async fn each_version_lists_pods_and_namespaces_resources_for_the_served_metric() {
    // An empty store: the list must not depend on data having arrived.
    let s = state(Arc::new(Store::new(ws_catalog(), MAX_AGE)));
    for v in ["v1beta1", "v1beta2"] {
        let a = get(&s, &format!("/apis/custom.metrics.k8s.io/{v}")).await;
        assert_eq!(a.status, StatusCode::OK, "{v}");
        assert_eq!(
            a.body,
            json!({
                "kind": "APIResourceList",
                "apiVersion": "v1",
                "groupVersion": format!("custom.metrics.k8s.io/{v}"),
                "resources": [
                    resource("pods/websocket_connections", true),
                    resource("namespaces/websocket_connections", false),
                ],
            }),
            "{v}"
        );
    }
}

#[tokio::test]
async fn resource_lists_name_every_configured_metric_with_consistent_scopes() {
    let catalog = MetricCatalog::new(vec![
        mapping("websocket_connections", "websocket_connections_active"),
        mapping("chat_rooms", "chat_rooms_open"),
    ]);
    let s = state(Arc::new(Store::new(catalog, MAX_AGE)));
    let a = get(&s, CM2).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(
        a.body,
        json!({
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": "custom.metrics.k8s.io/v1beta2",
            "resources": [
                resource("pods/websocket_connections", true),
                resource("pods/chat_rooms", true),
                resource("namespaces/websocket_connections", false),
                resource("namespaces/chat_rooms", false),
            ],
        })
    );
}

// ---------------------------------------------------------------------------------------------
// Form B: all pods of a namespace
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn v1beta2_wildcard_answers_every_selected_pod_with_canonical_values_and_sample_times() {
    let s = state(chat_store());
    let a = get(
        &s,
        &format!("{CM2}/namespaces/chat/pods/%2A/websocket_connections?labelSelector=app%3Dws"),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(
        a.body,
        list(
            "v1beta2",
            vec![
                item2("ws-0", Value::Null, TS0, "7"),
                item2("ws-1", Value::Null, TS1, "1k"),
                item2("ws-2", Value::Null, TS2, "12k"),
                item2("ws-3", Value::Null, TS0, "0"),
                item2("ws-4", Value::Null, TS0, "1500m"),
            ]
        )
    );
}

#[tokio::test]
async fn v1beta1_wildcard_uses_metric_name_and_an_item_level_selector() {
    let s = state(chat_store());
    let a = get(
        &s,
        &format!("{CM1}/namespaces/chat/pods/%2A/websocket_connections?labelSelector=app%3Dws"),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(
        a.body,
        list(
            "v1beta1",
            vec![
                item1("ws-0", Value::Null, TS0, "7"),
                item1("ws-1", Value::Null, TS1, "1k"),
                item1("ws-2", Value::Null, TS2, "12k"),
                item1("ws-3", Value::Null, TS0, "0"),
                item1("ws-4", Value::Null, TS0, "1500m"),
            ]
        )
    );
}

#[tokio::test]
async fn a_literal_star_and_the_pod_synonym_address_the_same_pods() {
    let s = state(chat_store());
    let encoded = get(
        &s,
        &format!("{CM2}/namespaces/chat/pods/%2A/websocket_connections"),
    )
    .await;
    for path in [
        format!("{CM2}/namespaces/chat/pods/*/websocket_connections"),
        format!("{CM2}/namespaces/chat/pod/%2a/websocket_connections"),
        format!("{CM2}/namespaces/chat/pods/%2A/websocket_connections/"),
    ] {
        let a = get(&s, &path).await;
        assert_eq!(a.status, StatusCode::OK, "{path}");
        assert_eq!(a.body, encoded.body, "{path}");
    }
    assert_eq!(
        names(&encoded.body),
        ["db-0", "ws-0", "ws-1", "ws-2", "ws-3", "ws-4"]
    );
}

#[tokio::test]
async fn label_selectors_of_every_operator_pick_pods_by_their_kubernetes_labels() {
    let s = state(chat_store());
    // Queries encoded as the kube-aggregator re-encodes them (url.Values.Encode: space → '+').
    let cases: &[(&str, &[&str])] = &[
        ("app%3Dws", &["ws-0", "ws-1", "ws-2", "ws-3", "ws-4"]),
        ("app%3D%3Ddb", &["db-0"]),
        ("app%21%3Dws", &["db-0"]),
        ("tier+in+%28a%2Cb%29", &["ws-0", "ws-1", "ws-4"]),
        ("tier+notin+%28a%2Cb%29", &["db-0", "ws-2", "ws-3"]),
        ("canary", &["ws-2"]),
        ("%21tier", &["db-0", "ws-3"]),
        ("app%3Dws%2Ctier%3Da", &["ws-0", "ws-4"]),
        ("app%3Dws%2C%21tier", &["ws-3"]),
        ("app%3Dnope", &[]),
        // An empty selector selects everything, as in Go.
        ("", &["db-0", "ws-0", "ws-1", "ws-2", "ws-3", "ws-4"]),
    ];
    for (query, want) in cases {
        let path =
            format!("{CM2}/namespaces/chat/pods/%2A/websocket_connections?labelSelector={query}");
        let a = get(&s, &path).await;
        assert_eq!(a.status, StatusCode::OK, "{query}: {}", a.body);
        assert_eq!(names(&a.body), *want, "{query}");
    }
}

#[tokio::test]
async fn an_unparsable_label_selector_is_a_bad_request_naming_the_parameter() {
    let s = state(chat_store());
    for query in [
        "tier+in+%28a",
        "app%3D%3Dws%3D%3Dx",
        "%21app%3Dws",
        "app%3Dws%2C",
    ] {
        let a = get(
            &s,
            &format!("{CM2}/namespaces/chat/pods/%2A/websocket_connections?labelSelector={query}"),
        )
        .await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{query}");
        let message = a.body["message"].as_str().expect("message").to_owned();
        assert!(
            message.starts_with("unable to parse labelSelector "),
            "{query}: {message}"
        );
        assert_eq!(a.body, status_body(400, "BadRequest", &message), "{query}");
    }
}

#[tokio::test]
async fn a_selector_with_thousands_of_terms_is_refused_with_a_short_precise_message() {
    let s = state(chat_store());
    // Unescaped `=` and `,` (valid in a query) so 7,000 terms fit a URI (under 64 KiB).
    let terms: Vec<String> = (0..7000).map(|i| format!("k{i}=v")).collect();
    for param in ["labelSelector", "metricLabelSelector"] {
        let a = get(
            &s,
            &format!(
                "{CM2}/namespaces/chat/pods/%2A/websocket_connections?{param}={}",
                terms.join(",")
            ),
        )
        .await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{param}");
        let message = a.body["message"].as_str().expect("message").to_owned();
        assert!(
            message.starts_with(&format!("unable to parse {param} \"k0=v,k1=v,"))
                && message.ends_with("selector too large: more than 256 requirements"),
            "{message}"
        );
        // The selector is echoed only in part (about 120 characters, not 50 KiB).
        assert!(message.len() < 300, "{} bytes", message.len());
        assert_eq!(a.body, status_body(400, "BadRequest", &message));
    }
    // At the limit it is evaluated: 256 requirements that all hold for ws-0.
    let mut at_limit: Vec<String> = (0..255).map(|i| format!("k{i}%21%3Dv")).collect();
    at_limit.push("app%3Dws".into());
    let a = get(
        &s,
        &format!(
            "{CM2}/namespaces/chat/pods/%2A/websocket_connections?labelSelector={}",
            at_limit.join("%2C")
        ),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(names(&a.body).contains(&"ws-0".to_owned()), "{}", a.body);
}

#[tokio::test]
async fn a_metric_label_selector_filters_series_before_summing_and_is_echoed_in_v1beta2() {
    let s = state(chat_store());
    let echo = json!({"matchLabels": {"route": "chat"}});
    let a = get(
        &s,
        &format!(
            "{CM2}/namespaces/chat/pods/%2A/websocket_connections?labelSelector=app%3Dws&metricLabelSelector=route%3Dchat"
        ),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(
        a.body,
        list(
            "v1beta2",
            vec![
                item2("ws-0", echo.clone(), TS0, "3"),
                item2("ws-1", echo.clone(), TS1, "1k"),
                // Family present, no series matching: an explicit zero.
                item2("ws-2", echo.clone(), TS2, "0"),
                item2("ws-3", echo.clone(), TS0, "0"),
                item2("ws-4", echo.clone(), TS0, "1500m"),
            ]
        )
    );
}

#[tokio::test]
async fn a_metric_label_selector_is_echoed_on_each_v1beta1_item() {
    let s = state(chat_store());
    let echo = json!({"matchLabels": {"route": "echo"}});
    let a = get(
        &s,
        &format!(
            "{CM1}/namespaces/chat/pods/%2A/websocket_connections?labelSelector=tier%3Da&metricLabelSelector=route%3Decho"
        ),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(
        a.body,
        list(
            "v1beta1",
            vec![
                item1("ws-0", echo.clone(), TS0, "4"),
                item1("ws-4", echo.clone(), TS0, "0"),
            ]
        )
    );
}

#[tokio::test]
async fn an_unparsable_metric_label_selector_is_a_bad_request_in_every_form() {
    let s = state(chat_store());
    for path in [
        format!(
            "{CM2}/namespaces/chat/pods/%2A/websocket_connections?metricLabelSelector=route+in+%28"
        ),
        format!(
            "{CM2}/namespaces/chat/pods/ws-0/websocket_connections?metricLabelSelector=route+in+%28"
        ),
        format!(
            "{CM1}/namespaces/chat/metrics/websocket_connections?metricLabelSelector=route+in+%28"
        ),
    ] {
        let a = get(&s, &path).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{path}");
        let message = a.body["message"].as_str().expect("message").to_owned();
        assert!(
            message.starts_with("unable to parse metricLabelSelector "),
            "{path}: {message}"
        );
        assert_eq!(a.body, status_body(400, "BadRequest", &message), "{path}");
    }
}

#[tokio::test]
async fn unknown_query_parameters_are_ignored() {
    let s = state(chat_store());
    let plain = get(
        &s,
        &format!("{CM2}/namespaces/chat/pods/%2A/websocket_connections?labelSelector=app%3Ddb"),
    )
    .await;
    let extra = get(
        &s,
        &format!(
            "{CM2}/namespaces/chat/pods/%2A/websocket_connections?pretty=true&labelSelector=app%3Ddb&selector=app%3Dws&timeout=5s"
        ),
    )
    .await;
    assert_eq!(extra.status, StatusCode::OK);
    assert_eq!(extra.body, plain.body);
    assert_eq!(names(&extra.body), ["db-0"]);
}

#[tokio::test]
async fn a_second_metric_reads_its_own_family() {
    let catalog = MetricCatalog::new(vec![
        mapping("websocket_connections", "websocket_connections_active"),
        mapping("chat_rooms", "chat_rooms_open"),
    ]);
    let store = Store::new(catalog, MAX_AGE);
    seed(
        &store,
        "chat",
        "ws-0",
        &[("app", "ws")],
        Some((
            t0(),
            vec![
                family(vec![series("chat", 9000)]),
                family(vec![series("lobby", 2000), series("vip", 1000)]),
            ],
        )),
    );
    // ws-1 exposes only the connections family: it has no value for chat_rooms.
    seed(
        &store,
        "chat",
        "ws-1",
        &[("app", "ws")],
        Some((t0(), vec![family(vec![series("chat", 1000)]), None])),
    );
    let s = state(Arc::new(store));
    let rooms = get(&s, &format!("{CM2}/namespaces/chat/pods/%2A/chat_rooms")).await;
    assert_eq!(rooms.status, StatusCode::OK);
    assert_eq!(
        rooms.body,
        json!({
            "kind": "MetricValueList",
            "apiVersion": "custom.metrics.k8s.io/v1beta2",
            "metadata": {},
            "items": [{
                "describedObject": {"kind": "Pod", "namespace": "chat", "name": "ws-0", "apiVersion": "v1"},
                "metric": {"name": "chat_rooms", "selector": null},
                "timestamp": TS0,
                "value": "3",
            }],
        })
    );
    let conns = get(
        &s,
        &format!("{CM2}/namespaces/chat/pods/%2A/websocket_connections"),
    )
    .await;
    assert_eq!(
        conns.body,
        list(
            "v1beta2",
            vec![
                item2("ws-0", Value::Null, TS0, "9"),
                item2("ws-1", Value::Null, TS0, "1"),
            ]
        )
    );
    // A pod without the family: 404 on the single-object form, not a zero.
    let single = get(&s, &format!("{CM2}/namespaces/chat/pods/ws-1/chat_rooms")).await;
    assert_eq!(single.status, StatusCode::NOT_FOUND);
    assert_eq!(
        single.body,
        status_body(
            404,
            "NotFound",
            "the server could not find the metric chat_rooms for pods ws-1"
        )
    );
}

#[tokio::test]
async fn a_known_metric_with_no_matching_pods_is_an_empty_list() {
    let s = state(chat_store());
    for path in [
        format!("{CM2}/namespaces/empty/pods/%2A/websocket_connections"),
        format!("{CM2}/namespaces/chat/pods/%2A/websocket_connections?labelSelector=app%3Dnope"),
    ] {
        let a = get(&s, &path).await;
        assert_eq!(a.status, StatusCode::OK, "{path}");
        assert_eq!(a.body, list("v1beta2", Vec::new()), "{path}");
    }
    let a = get(
        &s,
        &format!("{CM1}/namespaces/empty/pods/%2A/websocket_connections"),
    )
    .await;
    assert_eq!(a.body, list("v1beta1", Vec::new()));
}

// ---------------------------------------------------------------------------------------------
// Form A: one pod
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_single_pod_answers_exactly_one_item_in_both_versions() {
    let s = state(chat_store());
    let a = get(
        &s,
        &format!("{CM2}/namespaces/chat/pods/ws-1/websocket_connections"),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(
        a.body,
        list("v1beta2", vec![item2("ws-1", Value::Null, TS1, "1k")])
    );
    let a = get(
        &s,
        &format!("{CM1}/namespaces/chat/pod/ws-0/websocket_connections"),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(
        a.body,
        list("v1beta1", vec![item1("ws-0", Value::Null, TS0, "7")])
    );
}

#[tokio::test]
async fn a_single_pod_with_a_metric_label_selector_sums_only_matching_series() {
    let s = state(chat_store());
    let echo = json!({"matchLabels": {"route": "chat"}});
    let a = get(
        &s,
        &format!(
            "{CM2}/namespaces/chat/pods/ws-0/websocket_connections?metricLabelSelector=route%3Dchat"
        ),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.body, list("v1beta2", vec![item2("ws-0", echo, TS0, "3")]));
}

#[tokio::test]
async fn an_unknown_pod_is_not_found_with_the_go_message() {
    let s = state(chat_store());
    let a = get(
        &s,
        &format!("{CM2}/namespaces/chat/pods/ws-9/websocket_connections"),
    )
    .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(
        a.body,
        status_body(
            404,
            "NotFound",
            "the server could not find the metric websocket_connections for pods ws-9"
        )
    );
    // Same pod name in another namespace: not found either.
    let a = get(
        &s,
        &format!("{CM2}/namespaces/other/pods/ws-0/websocket_connections"),
    )
    .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn an_unknown_pod_with_a_metric_selector_names_the_selector_in_the_message() {
    let s = state(chat_store());
    let a = get(
        &s,
        &format!(
            "{CM1}/namespaces/chat/pods/ws-9/websocket_connections?metricLabelSelector=route%3Dchat"
        ),
    )
    .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(
        a.body,
        status_body(
            404,
            "NotFound",
            "the server could not find the metric websocket_connections for pods ws-9 with selector route=chat"
        )
    );
}

/// Namespace `mixed`: `fresh` at T0, `edge` exactly `MAX_AGE` old at the clock, `stale` one
/// second older than that, `never` tracked but never scraped.
fn mixed_store() -> Arc<Store> {
    let store = Store::new(ws_catalog(), MAX_AGE);
    let one = || vec![family(vec![series("chat", 1000)])];
    seed(
        &store,
        "mixed",
        "fresh",
        &[("app", "ws")],
        Some((t0(), one())),
    );
    seed(
        &store,
        "mixed",
        "edge",
        &[("app", "ws")],
        Some((clock().wall - MAX_AGE, one())),
    );
    seed(
        &store,
        "mixed",
        "stale",
        &[("app", "ws")],
        Some((clock().wall - MAX_AGE - Duration::from_secs(1), one())),
    );
    seed(&store, "mixed", "never", &[("app", "ws")], None);
    Arc::new(store)
}

#[tokio::test]
async fn a_pod_whose_reading_is_older_than_max_age_is_not_found_rather_than_zero() {
    let s = state(mixed_store());
    for pod in ["stale", "never"] {
        let a = get(
            &s,
            &format!("{CM2}/namespaces/mixed/pods/{pod}/websocket_connections"),
        )
        .await;
        assert_eq!(a.status, StatusCode::NOT_FOUND, "{pod}");
        assert_eq!(
            a.body,
            status_body(
                404,
                "NotFound",
                &format!(
                    "the server could not find the metric websocket_connections for pods {pod}"
                )
            ),
            "{pod}"
        );
    }
    // Exactly max-age old is still served.
    let a = get(
        &s,
        &format!("{CM2}/namespaces/mixed/pods/edge/websocket_connections"),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.body["items"][0]["value"], "1");
}

#[tokio::test]
async fn stale_and_never_scraped_pods_are_left_out_of_wildcard_answers_while_fresh_ones_stay() {
    let s = state(mixed_store());
    let a = get(
        &s,
        &format!("{CM2}/namespaces/mixed/pods/%2A/websocket_connections?labelSelector=app%3Dws"),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(names(&a.body), ["edge", "fresh"]);
    assert_eq!(a.body["items"][1]["timestamp"], TS0);
    assert_eq!(a.body["items"][0]["timestamp"], "2025-06-01T11:59:57Z");
}

#[tokio::test]
async fn a_removed_pod_is_gone_from_the_next_answer() {
    let store = chat_store();
    let s = state(store.clone());
    let path =
        format!("{CM2}/namespaces/chat/pods/%2A/websocket_connections?labelSelector=tier%3Da");
    assert_eq!(names(&get(&s, &path).await.body), ["ws-0", "ws-4"]);
    assert!(store.remove(&PodKey {
        namespace: "chat".into(),
        name: "ws-0".into()
    }));
    assert_eq!(names(&get(&s, &path).await.body), ["ws-4"]);
    let a = get(
        &s,
        &format!("{CM2}/namespaces/chat/pods/ws-0/websocket_connections"),
    )
    .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
}

// ---------------------------------------------------------------------------------------------
// Form E: the namespace itself
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_namespace_answers_one_item_with_the_sum_and_the_oldest_sample_time() {
    let s = state(chat_store());
    // 5 + 7 + 1000 + 12000 + 0 + 1.5 connections.
    let a = get(
        &s,
        &format!("{CM2}/namespaces/chat/metrics/websocket_connections"),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(
        a.body,
        json!({
            "kind": "MetricValueList",
            "apiVersion": "custom.metrics.k8s.io/v1beta2",
            "metadata": {},
            "items": [{
                "describedObject": {"kind": "Namespace", "name": "chat", "apiVersion": "v1"},
                "metric": {"name": "websocket_connections", "selector": null},
                "timestamp": TS2,
                "value": "13013500m",
            }],
        })
    );
    let a = get(
        &s,
        &format!(
            "{CM1}/namespaces/chat/metrics/websocket_connections?metricLabelSelector=route%3Dchat"
        ),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    // 5 + 3 + 1000 + 0 + 0 + 1.5 connections on route=chat.
    assert_eq!(
        a.body,
        json!({
            "kind": "MetricValueList",
            "apiVersion": "custom.metrics.k8s.io/v1beta1",
            "metadata": {},
            "items": [{
                "describedObject": {"kind": "Namespace", "name": "chat", "apiVersion": "v1"},
                "metricName": "websocket_connections",
                "timestamp": TS2,
                "value": "1009500m",
                "selector": {"matchLabels": {"route": "chat"}},
            }],
        })
    );
}

#[tokio::test]
async fn a_namespace_without_pods_is_an_explicit_zero() {
    let store = chat_store();
    // Discovery saw pods in `empty`, none of them opted in.
    store.set_namespaces_seen([("empty".to_owned(), 2), ("chat".to_owned(), 9)].into());
    let s = state(store);
    let a = get(
        &s,
        &format!("{CM2}/namespaces/empty/metrics/websocket_connections"),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.body["items"].as_array().map(Vec::len), Some(1));
    assert_eq!(a.body["items"][0]["value"], "0");
    assert_eq!(
        a.body["items"][0]["describedObject"],
        json!({"kind": "Namespace", "name": "empty", "apiVersion": "v1"})
    );
}

#[tokio::test]
async fn a_namespace_discovery_never_saw_is_not_found_not_zero() {
    let store = chat_store();
    store.set_namespaces_seen([("chat".to_owned(), 9)].into());
    let s = state(store);
    let a = get(
        &s,
        &format!("{CM2}/namespaces/no-such-ns/metrics/websocket_connections"),
    )
    .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(
        a.body,
        status_body(404, "NotFound", "namespaces \"no-such-ns\" not found")
    );
}

#[tokio::test]
async fn a_namespace_with_a_pod_lacking_a_fresh_value_is_an_internal_error_that_leaks_nothing() {
    let s = state(mixed_store());
    let a = get(
        &s,
        &format!("{CM2}/namespaces/mixed/metrics/websocket_connections"),
    )
    .await;
    assert_eq!(a.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        a.body,
        status_body(
            500,
            "InternalError",
            "Internal error occurred: unable to fetch metrics"
        )
    );
}

// ---------------------------------------------------------------------------------------------
// Objects: Deployments, StatefulSets, ReplicaSets and Services as the sum over their ready pods
// ---------------------------------------------------------------------------------------------

fn res(path: &str) -> &'static ResourceInfo {
    resource::resolve_path(path).expect("a built-in resource")
}

fn object(labels: &[(&str, &str)], pods: Option<&str>) -> ObjectSpec {
    ObjectSpec {
        labels: labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        pods: pods.map(|p| Selector::parse(p).expect("selector")),
    }
}

/// [`chat_store`] with watched objects in `chat`: StatefulSet `ws` (app=ws: ws-0…ws-4), Deployment
/// `db` (app=db), Deployment `tier-a` (tier=a: ws-0, ws-4), Deployment `ghost` (selects no pod),
/// Service `ws` (app=ws), Service `external` (no selector), and a ReplicaSet `pending` whose pod
/// `pending-0` is ready and has no value yet. ReplicaSets are tracked, Services synced, and
/// nothing else.
fn object_store() -> Arc<Store> {
    let store = chat_store();
    for r in [
        "statefulsets.apps",
        "deployments.apps",
        "services",
        "replicasets.apps",
    ] {
        store.track_objects(res(r));
    }
    let ns = |name: &str, spec| ("chat".to_owned(), name.to_owned(), spec);
    store.replace_objects(
        res("statefulsets.apps"),
        vec![ns("ws", object(&[("team", "rt")], Some("app=ws")))],
    );
    store.replace_objects(
        res("deployments.apps"),
        vec![
            ns("db", object(&[("team", "data")], Some("app=db"))),
            ns("tier-a", object(&[("team", "rt")], Some("tier=a"))),
            ns("ghost", object(&[("team", "rt")], Some("app=ghost"))),
        ],
    );
    store.replace_objects(
        res("services"),
        vec![
            ns("ws", object(&[], Some("app=ws"))),
            ns("external", object(&[], None)),
        ],
    );
    seed(&store, "chat", "pending-0", &[("app", "pending")], None);
    store.upsert_object(
        res("replicasets.apps"),
        "chat",
        "pending",
        object(&[], Some("app=pending")),
    );
    store
}

fn object_item(kind: &str, name: &str, ts: &str, value: &str) -> Value {
    json!({
        "describedObject": {"kind": kind, "namespace": "chat", "name": name, "apiVersion": if kind == "Service" { "v1" } else { "apps/v1" }},
        "metric": {"name": "websocket_connections", "selector": null},
        "timestamp": ts,
        "value": value,
    })
}

#[tokio::test]
async fn an_object_answers_the_sum_over_its_pods_with_the_oldest_sample_time() {
    let s = state(object_store());
    // ws-0…ws-4: 7 + 1000 + 12000 + 0 + 1.5 connections, the oldest at T0 − 2 s.
    for (path, kind) in [
        ("statefulsets.apps", "StatefulSet"),
        ("services", "Service"),
    ] {
        let a = get(
            &s,
            &format!("{CM2}/namespaces/chat/{path}/ws/websocket_connections"),
        )
        .await;
        assert_eq!(a.status, StatusCode::OK, "{path}");
        assert_eq!(
            a.body,
            json!({
                "kind": "MetricValueList",
                "apiVersion": "custom.metrics.k8s.io/v1beta2",
                "metadata": {},
                "items": [object_item(kind, "ws", TS2, "13008500m")],
            }),
            "{path}"
        );
    }
    // v1beta1, one route: 3 + 1000 + 1.5 on route=chat.
    let a = get(
        &s,
        &format!(
            "{CM1}/namespaces/chat/statefulsets.apps/ws/websocket_connections?metricLabelSelector=route%3Dchat"
        ),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(
        a.body,
        json!({
            "kind": "MetricValueList",
            "apiVersion": "custom.metrics.k8s.io/v1beta1",
            "metadata": {},
            "items": [{
                "describedObject": {"kind": "StatefulSet", "namespace": "chat", "name": "ws", "apiVersion": "apps/v1"},
                "metricName": "websocket_connections",
                "timestamp": TS2,
                "value": "1004500m",
                "selector": {"matchLabels": {"route": "chat"}},
            }],
        })
    );
}

#[tokio::test]
async fn objects_selected_by_their_own_labels_answer_one_item_each_in_name_order() {
    let s = state(object_store());
    // team=rt: ghost (no pod: left out) and tier-a (ws-0 + ws-4 = 7 + 1.5, both at T0).
    let a = get(
        &s,
        &format!(
            "{CM2}/namespaces/chat/deployments.apps/%2A/websocket_connections?labelSelector=team%3Drt"
        ),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(
        a.body["items"],
        json!([object_item("Deployment", "tier-a", TS0, "8500m")])
    );
    // No selector: every Deployment of the namespace with a complete sum.
    let a = get(
        &s,
        &format!("{CM2}/namespaces/chat/deployments.apps/%2A/websocket_connections"),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(
        a.body["items"],
        json!([
            object_item("Deployment", "db", TS0, "5"),
            object_item("Deployment", "tier-a", TS0, "8500m"),
        ])
    );
}

#[tokio::test]
async fn an_object_without_a_complete_sum_is_never_a_partial_or_a_zero() {
    let s = state(object_store());
    let cases = [
        // The only pod is ready and has no value yet.
        (
            "replicasets.apps/pending",
            StatusCode::INTERNAL_SERVER_ERROR,
            status_body(
                500,
                "InternalError",
                "Internal error occurred: unable to fetch metrics",
            ),
        ),
        // Known, selecting no tracked pod; a Service without a selector.
        (
            "deployments.apps/ghost",
            StatusCode::NOT_FOUND,
            status_body(
                404,
                "NotFound",
                "the server could not find the metric websocket_connections for deployments.apps ghost: it selects no ready pod that is scraped",
            ),
        ),
        (
            "services/external",
            StatusCode::NOT_FOUND,
            status_body(
                404,
                "NotFound",
                "the server could not find the metric websocket_connections for services external: it selects no ready pod that is scraped",
            ),
        ),
        (
            "statefulsets.apps/nope",
            StatusCode::NOT_FOUND,
            status_body(404, "NotFound", "statefulsets.apps \"nope\" not found"),
        ),
    ];
    for (object, status, body) in cases {
        let path = format!("{CM2}/namespaces/chat/{object}/websocket_connections");
        let a = get(&s, &path).await;
        assert_eq!(a.status, status, "{path}");
        assert_eq!(a.body, body, "{path}");
    }
    // The ReplicaSets' watch has not listed them yet: no answer, never a 404.
    let fresh = Store::new(ws_catalog(), MAX_AGE);
    fresh.track_objects(res("replicasets.apps"));
    let a = get(
        &state(Arc::new(fresh)),
        &format!("{CM2}/namespaces/chat/replicasets.apps/pending/websocket_connections"),
    )
    .await;
    assert_eq!(a.status, StatusCode::INTERNAL_SERVER_ERROR);
}

#[tokio::test]
async fn discovery_lists_every_tracked_object_resource() {
    let s = state(object_store());
    let a = get(&s, CM2).await;
    assert_eq!(a.status, StatusCode::OK);
    let names: Vec<&str> = a.body["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    assert_eq!(
        names,
        [
            "pods/websocket_connections",
            "namespaces/websocket_connections",
            "statefulsets.apps/websocket_connections",
            "deployments.apps/websocket_connections",
            "services/websocket_connections",
            "replicasets.apps/websocket_connections",
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// external.metrics.k8s.io (only with --serve-external-metrics)
// ---------------------------------------------------------------------------------------------

const EM: &str = "/apis/external.metrics.k8s.io/v1beta1";

#[tokio::test]
async fn the_external_group_is_not_served_unless_asked_for() {
    let s = state(chat_store());
    for path in [
        "/apis/external.metrics.k8s.io".to_owned(),
        EM.to_owned(),
        format!("{EM}/namespaces/chat/websocket_connections"),
    ] {
        let a = get(&s, &path).await;
        assert_eq!(a.status, StatusCode::NOT_FOUND, "{path}");
    }
    let a = get(&s, "/apis").await;
    assert_eq!(a.body["groups"].as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn external_discovery_lists_every_served_metric_as_a_namespaced_resource() {
    let s = state(chat_store()).serving_external_metrics();
    let a = get(&s, "/apis").await;
    let names: Vec<&str> = a.body["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .filter_map(|g| g["name"].as_str())
        .collect();
    assert_eq!(names, ["custom.metrics.k8s.io", "external.metrics.k8s.io"]);
    let a = get(&s, "/apis/external.metrics.k8s.io").await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(
        a.body["preferredVersion"],
        json!({"groupVersion": "external.metrics.k8s.io/v1beta1", "version": "v1beta1"})
    );
    let a = get(&s, EM).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(
        a.body,
        json!({
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": "external.metrics.k8s.io/v1beta1",
            "resources": [{
                "name": "websocket_connections",
                "singularName": "",
                "namespaced": true,
                "kind": "ExternalMetricValueList",
                "verbs": ["get"],
            }],
        })
    );
}

#[tokio::test]
async fn an_external_metric_is_the_namespace_total_over_the_selected_series() {
    let s = state(chat_store()).serving_external_metrics();
    let a = get(&s, &format!("{EM}/namespaces/chat/websocket_connections")).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(
        a.body,
        json!({
            "kind": "ExternalMetricValueList",
            "apiVersion": "external.metrics.k8s.io/v1beta1",
            "metadata": {},
            "items": [{
                "metricName": "websocket_connections",
                "metricLabels": {},
                "timestamp": TS2,
                "value": "13013500m",
            }],
        })
    );
    let a = get(
        &s,
        &format!("{EM}/namespaces/chat/websocket_connections?labelSelector=route%3Dchat"),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.body["items"][0]["value"], "1009500m");
    assert_eq!(a.body["items"][0]["metricLabels"], json!({"route": "chat"}));
    // Unknown metric, bad selector, a namespace with a pod lacking a value.
    let a = get(&s, &format!("{EM}/namespaces/chat/nope")).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(
        a.body["message"],
        "the server could not find the metric nope for external.metrics.k8s.io"
    );
    let a = get(
        &s,
        &format!("{EM}/namespaces/chat/websocket_connections?labelSelector=route%3D%3D%3D"),
    )
    .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    let mixed = state(mixed_store()).serving_external_metrics();
    let a = get(
        &mixed,
        &format!("{EM}/namespaces/mixed/websocket_connections"),
    )
    .await;
    assert_eq!(a.status, StatusCode::INTERNAL_SERVER_ERROR);
}

// ---------------------------------------------------------------------------------------------
// Unknown metrics and resources
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn an_unknown_metric_is_not_found_naming_the_metric_and_resource() {
    let s = state(chat_store());
    let cases = [
        (
            format!("{CM2}/namespaces/chat/pods/%2A/nope"),
            "the server could not find the metric nope for pods",
        ),
        (
            format!("{CM1}/namespaces/chat/pods/ws-0/nope"),
            "the server could not find the metric nope for pods",
        ),
        (
            format!("{CM2}/namespaces/chat/metrics/nope"),
            "the server could not find the metric nope for namespaces",
        ),
        // The family name is not a served name.
        (
            format!("{CM2}/namespaces/chat/pods/%2A/websocket_connections_active"),
            "the server could not find the metric websocket_connections_active for pods",
        ),
    ];
    for (path, message) in cases {
        let a = get(&s, &path).await;
        assert_eq!(a.status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(a.body, status_body(404, "NotFound", message), "{path}");
    }
}

#[tokio::test]
async fn an_unserved_resource_is_not_found_naming_the_resource() {
    let s = state(chat_store());
    let cases = [
        (
            format!("{CM2}/namespaces/chat/services/x/websocket_connections"),
            "the server could not find the metric websocket_connections for services",
        ),
        (
            format!("{CM2}/nodes/%2A/websocket_connections"),
            "the server could not find the metric websocket_connections for nodes",
        ),
        (
            format!("{CM1}/nodes/node-1/websocket_connections"),
            "the server could not find the metric websocket_connections for nodes",
        ),
        (
            format!("{CM2}/namespaces/chat/deployments.apps/%2A/websocket_connections"),
            "the server could not find the metric websocket_connections for deployments.apps",
        ),
    ];
    for (path, message) in cases {
        let a = get(&s, &path).await;
        assert_eq!(a.status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(a.body, status_body(404, "NotFound", message), "{path}");
    }
}

// ---------------------------------------------------------------------------------------------
// Methods and content negotiation
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn methods_other_than_get_and_head_are_not_allowed() {
    let s = state(chat_store());
    for method in [Method::POST, Method::PUT, Method::DELETE, Method::PATCH] {
        for path in [
            format!("{CM2}/namespaces/chat/pods/%2A/websocket_connections"),
            CM2.to_owned(),
        ] {
            let req = Request::builder()
                .method(method.clone())
                .uri(&path)
                .body(Body::from("{}"))
                .expect("request");
            let a = send(&s, req).await;
            assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
            assert_eq!(
                a.headers.get(header::ALLOW).map(|v| v.as_bytes()),
                Some(&b"GET, HEAD"[..]),
                "{method} {path}"
            );
            assert_eq!(
                a.body,
                status_body(
                    405,
                    "MethodNotAllowed",
                    &format!(
                        "the server does not allow this method on the requested resource ({method})"
                    )
                ),
                "{method} {path}"
            );
        }
    }
}

#[tokio::test]
async fn head_is_answered_like_get() {
    let s = state(chat_store());
    for path in [
        CM2.to_owned(),
        format!("{CM2}/namespaces/chat/pods/%2A/websocket_connections"),
    ] {
        let req = Request::head(&path).body(Body::empty()).expect("request");
        let a = send(&s, req).await;
        assert_eq!(a.status, StatusCode::OK, "{path}");
    }
    let req = Request::head(format!(
        "{CM2}/namespaces/chat/pods/ws-9/websocket_connections"
    ))
    .body(Body::empty())
    .expect("request");
    assert_eq!(send(&s, req).await.status, StatusCode::NOT_FOUND);
}

async fn get_accepting(s: &ApiState, path: &str, accept: &str) -> Answer {
    let req = Request::get(path)
        .header(header::ACCEPT, accept)
        .body(Body::empty())
        .expect("request");
    send(s, req).await
}

#[tokio::test]
async fn the_hpa_accept_header_gets_json() {
    let s = state(chat_store());
    let path =
        format!("{CM2}/namespaces/chat/pods/%2A/websocket_connections?labelSelector=app%3Ddb");
    let plain = get(&s, &path).await;
    for accept in [
        "application/vnd.kubernetes.protobuf, */*",
        "application/json",
        "application/json;charset=utf-8",
        "application/*",
        "*/*",
    ] {
        let a = get_accepting(&s, &path, accept).await;
        assert_eq!(a.status, StatusCode::OK, "{accept}");
        assert_eq!(a.body, plain.body, "{accept}");
    }
    // Discovery too.
    let a = get_accepting(&s, CM1, "application/vnd.kubernetes.protobuf, */*").await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.body["kind"], "APIResourceList");
}

#[tokio::test]
async fn an_accept_header_without_json_is_not_acceptable() {
    let s = state(chat_store());
    for accept in [
        "application/vnd.kubernetes.protobuf",
        "text/html, application/xml",
    ] {
        let a = get_accepting(
            &s,
            &format!("{CM2}/namespaces/chat/pods/%2A/websocket_connections"),
            accept,
        )
        .await;
        assert_eq!(a.status, StatusCode::NOT_ACCEPTABLE, "{accept}");
        assert_eq!(
            a.body,
            status_body(
                406,
                "NotAcceptable",
                "only application/json is served; the Accept header allows none of it"
            ),
            "{accept}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Paths outside the API and malformed paths
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn paths_outside_the_api_are_not_found_with_a_status_body() {
    let s = state(chat_store());
    for path in [
        "/openapi/v2".to_owned(),
        "/openapi/v3".to_owned(),
        "/".to_owned(),
        "/healthz".to_owned(),
        "/apis/external.metrics.k8s.io/v1beta1".to_owned(),
        "/apis/custom.metrics.k8s.io/v1".to_owned(),
        format!("{CM1}/blah"),
        format!("{CM2}/nodes/foo"),
        format!("{CM2}/namespaces/ns/pods/bar"),
    ] {
        let a = get(&s, &path).await;
        assert_eq!(a.status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(a.body, not_found_path(), "{path}");
    }
}

#[tokio::test]
async fn malformed_paths_are_bad_requests() {
    let s = state(chat_store());
    for path in [
        format!("{CM2}/namespaces//pods/*/websocket_connections"),
        format!("{CM2}/namespaces/chat/websocket_connections"),
        format!("{CM2}/namespaces/chat/pods/a%2Fb/websocket_connections"),
        format!("{CM2}/namespaces/ch%2Fat/pods/%2A/websocket_connections"),
        format!("{CM2}/namespaces/Chat_NS/pods/%2A/websocket_connections"),
        format!("{CM2}/namespaces/chat/pods/Bad_Name/websocket_connections"),
        format!("{CM2}/namespaces/chat/pods/%2A/.."),
        format!("{CM2}/namespaces/chat/pods/%2A/%ff"),
    ] {
        let a = get(&s, &path).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{path}: {}", a.body);
        let message = a.body["message"].as_str().expect("message").to_owned();
        assert!(
            message.starts_with("invalid request path"),
            "{path}: {message}"
        );
        assert_eq!(a.body, status_body(400, "BadRequest", &message), "{path}");
    }
}

// ---------------------------------------------------------------------------------------------
// Property: the router never panics and always answers JSON with a sane code
// ---------------------------------------------------------------------------------------------

mod never_panics {
    use super::*;
    use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
    use proptest::prelude::*;

    /// What must be encoded in a path segment: enough to keep the URI valid, while letting
    /// `*`, `.`, `%`-free reserved characters and the like through.
    const SEGMENT: &AsciiSet = &CONTROLS
        .add(b' ')
        .add(b'"')
        .add(b'#')
        .add(b'<')
        .add(b'>')
        .add(b'?')
        .add(b'`')
        .add(b'{')
        .add(b'}')
        .add(b'/')
        .add(b'%')
        .add(b'\\')
        .add(b'^')
        .add(b'|')
        .add(b'[')
        .add(b']');

    fn segment() -> impl Strategy<Value = String> {
        prop_oneof![
            3 => prop::sample::select(vec![
                "apis", "custom.metrics.k8s.io", "v1beta1", "v1beta2", "v1", "namespaces", "chat",
                "mixed", "pods", "pod", "services", "nodes", "metrics", "%2A", "%2a", "*", "ws-0",
                "ws-9", "websocket_connections", "nope", "", ".", "..", "%2F", "%ff", "%", "%zz",
                "openapi", "Bad_Name",
            ])
            .prop_map(str::to_owned),
            1 => "[a-zA-Z0-9%._~*:@!$&'()+,;=-]{0,10}",
            1 => any::<String>().prop_map(|s| utf8_percent_encode(&s, SEGMENT).to_string()),
        ]
    }

    fn path() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => prop::collection::vec(segment(), 0..8).prop_map(|segs| format!("/{}", segs.join("/"))),
            // Well-formed prefixes with a random tail, to reach the metric forms often.
            4 => (
                prop::sample::select(vec![CM1, CM2]),
                prop::collection::vec(segment(), 0..6),
                any::<bool>(),
            )
                .prop_map(|(base, segs, slash)| {
                    format!("{base}/{}{}", segs.join("/"), if slash { "/" } else { "" })
                }),
            // The metric forms A, B and E with mostly valid pieces, to reach 200 and 500 often.
            6 => (
                prop::sample::select(vec![CM1, CM2]),
                prop::sample::select(vec!["chat", "mixed", "empty", "Bad_NS"]),
                prop::sample::select(vec![
                    "pods/%2A", "pods/*", "pod/%2a", "pods/ws-0", "pods/ws-9", "pods/fresh",
                    "pods/never", "metrics", "services/x",
                ]),
                prop::sample::select(vec![
                    "websocket_connections", "websocket_connections", "websocket_connections", "nope",
                    "websocket_connections_active",
                ]),
            )
                .prop_map(|(base, ns, middle, metric)| format!("{base}/namespaces/{ns}/{middle}/{metric}")),
            1 => any::<String>().prop_map(|s| format!("/{}", utf8_percent_encode(&s, SEGMENT))),
        ]
    }

    fn query() -> impl Strategy<Value = Option<String>> {
        let key = prop_oneof![
            Just("labelSelector".to_owned()),
            Just("metricLabelSelector".to_owned()),
            Just("pretty".to_owned()),
            "[a-zA-Z]{0,6}",
        ];
        let value = prop_oneof![
            prop::sample::select(vec![
                "app=ws",
                "app==ws",
                "app!=ws",
                "tier in (a,b)",
                "tier notin (a)",
                "canary",
                "!tier",
                "route=chat",
                "x>3",
                "x<a",
                "in (",
                "a,,b",
                "",
                " ",
                "=",
                "!",
                "a=b,c in (d,e),!f",
            ])
            .prop_map(str::to_owned),
            any::<String>(),
        ];
        prop_oneof![
            1 => Just(None),
            4 => prop::collection::vec((key, value), 0..4).prop_map(|pairs| {
                let mut ser = form_urlencoded::Serializer::new(String::new());
                for (k, v) in &pairs {
                    ser.append_pair(k, v);
                }
                Some(ser.finish())
            }),
            // Raw query text, kept only when it is a valid URI query.
            1 => "[ -~]{0,30}".prop_map(Some),
        ]
    }

    fn method() -> impl Strategy<Value = Method> {
        prop::sample::select(vec![
            Method::GET,
            Method::GET,
            Method::GET,
            Method::GET,
            Method::GET,
            Method::GET,
            Method::GET,
            Method::HEAD,
            Method::POST,
            Method::DELETE,
            Method::OPTIONS,
        ])
    }

    fn accept() -> impl Strategy<Value = Option<&'static str>> {
        prop::sample::select(vec![
            None,
            None,
            Some("application/vnd.kubernetes.protobuf, */*"),
            Some("application/json"),
            Some("application/vnd.kubernetes.protobuf"),
            Some(""),
            Some(";;,,"),
        ])
    }

    fn store() -> Arc<Store> {
        let store = chat_store();
        let one = || vec![family(vec![series("chat", 1000)])];
        seed(
            &store,
            "mixed",
            "fresh",
            &[("app", "ws")],
            Some((t0(), one())),
        );
        seed(&store, "mixed", "never", &[("app", "ws")], None);
        store
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

        #[test]
        fn any_path_and_query_gets_a_json_status_or_list_with_a_known_code(
            path in path(),
            query in query(),
            method in method(),
            accept in accept(),
        ) {
            let uri = match &query {
                Some(q) => format!("{path}?{q}"),
                None => path.clone(),
            };
            // Strategies may produce a string that is not a URI (e.g. raw query text with a
            // space); those cannot reach the router at all.
            let Ok(uri) = uri.parse::<http::Uri>() else { return Ok(()) };
            let mut builder = Request::builder().method(method.clone()).uri(uri.clone());
            if let Some(a) = accept {
                builder = builder.header(header::ACCEPT, a);
            }
            let req = builder.body(Body::empty()).expect("request");
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("runtime");
            let s = state(store());
            let (status, content_type, bytes) = rt.block_on(async move {
                let resp = api::router(s).oneshot(req).await.expect("infallible");
                let status = resp.status();
                let ct = resp.headers().get(header::CONTENT_TYPE).cloned();
                let bytes = resp.into_body().collect().await.expect("body").to_bytes();
                (status, ct, bytes)
            });
            prop_assert!(
                [200u16, 400, 404, 405, 406, 500].contains(&status.as_u16()),
                "{method} {uri}: {status}"
            );
            prop_assert_eq!(
                content_type.as_ref().map(|v| v.as_bytes()),
                Some(&b"application/json"[..]),
                "{} {}", method, uri
            );
            if method == Method::HEAD && bytes.is_empty() {
                return Ok(());
            }
            let body: Value = serde_json::from_slice(&bytes)
                .map_err(|e| TestCaseError::fail(format!("{method} {uri}: not JSON: {e}")))?;
            if status == StatusCode::OK {
                let kind = body["kind"].as_str().unwrap_or_default();
                prop_assert!(
                    ["MetricValueList", "APIResourceList", "APIGroup", "APIGroupList"].contains(&kind),
                    "{} {}: {}", method, uri, body
                );
                if kind == "MetricValueList" {
                    prop_assert!(body["items"].is_array(), "{} {}: {}", method, uri, body);
                }
            } else {
                prop_assert_eq!(&body["kind"], "Status", "{} {}: {}", method, uri, body);
                prop_assert_eq!(&body["status"], "Failure", "{} {}: {}", method, uri, body);
                prop_assert_eq!(body["code"].as_u64(), Some(u64::from(status.as_u16())));
                prop_assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
            }
        }
    }
}
