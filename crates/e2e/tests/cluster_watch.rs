//! Cluster mode against a mock Kubernetes apiserver: the adapter LISTs pods once, then follows a
//! WATCH the test drives event by event, and serves the scraped counts of opted-in pods.
//!
//! The mock answers the requests kube-runtime's watcher makes (kube 5): a LIST
//! `GET /api/v1/pods?&limit=500&resourceVersion=0&resourceVersionMatch=NotOlderThan` returning a
//! `PodList` with `metadata.resourceVersion`, then a WATCH
//! `GET /api/v1/pods?&watch=true&timeoutSeconds=290&allowWatchBookmarks=true&resourceVersion=<rv>`
//! streaming newline-delimited `{"type": ..., "object": ...}` events. Every object in a watch event
//! carries a `resourceVersion`, or the watcher would re-list.

use ws_e2e as support;

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use support::e2e;
use support::reqwest_like::Client;
use support::{Adapter, Behavior, FakePod, eventually, exposition, plain_get};

// ---------------------------------------------------------------------------------------------
// Mock apiserver.
// ---------------------------------------------------------------------------------------------

/// One request the mock received.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    query: HashMap<String, String>,
}

impl Seen {
    fn is_pod_watch(&self) -> bool {
        self.path == "/api/v1/pods"
            && self
                .query
                .get("watch")
                .is_some_and(|w| w == "true" || w == "1")
    }

    fn is_pod_list(&self) -> bool {
        self.path == "/api/v1/pods" && !self.is_pod_watch()
    }
}

struct MockState {
    requests: Mutex<Vec<Seen>>,
    /// LISTs wait until this is true.
    list_open: watch::Sender<bool>,
    /// Items of the next LIST.
    list_items: Mutex<Vec<Value>>,
    /// One sender per open WATCH response.
    watchers: Mutex<Vec<mpsc::UnboundedSender<String>>>,
    resource_version: AtomicU64,
}

/// A plain-HTTP apiserver serving pods from memory; the test feeds its watch streams.
struct MockApiserver {
    addr: SocketAddr,
    state: Arc<MockState>,
    task: tokio::task::JoinHandle<()>,
}

fn json_response(code: u16, body: &Value) -> hyper::Response<Body> {
    hyper::Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .expect("response")
}

async fn serve_mock(
    state: Arc<MockState>,
    req: hyper::Request<Incoming>,
) -> Result<hyper::Response<Body>, Infallible> {
    let seen = Seen {
        path: req.uri().path().to_owned(),
        query: form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
            .into_owned()
            .collect(),
    };
    state.requests.lock().expect("lock").push(seen.clone());
    if seen.path == "/version" {
        return Ok(json_response(
            200,
            &json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0"}),
        ));
    }
    if seen.is_pod_watch() {
        let (tx, rx) = mpsc::unbounded_channel::<String>();
        state.watchers.lock().expect("lock").push(tx);
        let lines = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv()
                .await
                .map(|line| (Ok::<_, Infallible>(Bytes::from(line)), rx))
        });
        let resp = hyper::Response::builder()
            .status(200)
            .header("content-type", "application/json")
            .body(Body::from_stream(lines))
            .expect("response");
        return Ok(resp);
    }
    if seen.is_pod_list() {
        let mut open = state.list_open.subscribe();
        let _ = open.wait_for(|open| *open).await;
        let items = state.list_items.lock().expect("lock").clone();
        let rv = state.resource_version.load(Ordering::SeqCst).to_string();
        return Ok(json_response(
            200,
            &json!({"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": rv}, "items": items}),
        ));
    }
    Ok(json_response(
        404,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": format!("the server could not find the requested resource ({})", seen.path),
                "reason": "NotFound", "code": 404}),
    ))
}

impl MockApiserver {
    /// Starts the mock with `items` as the pod list; LISTs are answered at once unless
    /// `hold_list`, in which case they wait for [`MockApiserver::release_list`].
    async fn start(items: Vec<Value>, hold_list: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind mock apiserver");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(MockState {
            requests: Mutex::new(Vec::new()),
            list_open: watch::channel(!hold_list).0,
            list_items: Mutex::new(items),
            watchers: Mutex::new(Vec::new()),
            resource_version: AtomicU64::new(100),
        });
        let shared = state.clone();
        let task = tokio::spawn(async move {
            // Connections live in this set, so aborting the task closes every one of them.
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                while connections.try_join_next().is_some() {}
                let state = shared.clone();
                connections.spawn(async move {
                    let svc = service_fn(move |req| serve_mock(state.clone(), req));
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self { addr, state, task }
    }

    fn requests(&self) -> Vec<Seen> {
        self.state.requests.lock().expect("lock").clone()
    }

    fn lists(&self) -> usize {
        self.requests().iter().filter(|r| r.is_pod_list()).count()
    }

    fn watches(&self) -> Vec<Seen> {
        self.requests()
            .into_iter()
            .filter(Seen::is_pod_watch)
            .collect()
    }

    fn release_list(&self) {
        self.state.list_open.send_replace(true);
    }

    fn set_list(&self, items: Vec<Value>) {
        *self.state.list_items.lock().expect("lock") = items;
    }

    fn open_watches(&self) -> usize {
        self.state
            .watchers
            .lock()
            .expect("lock")
            .iter()
            .filter(|w| !w.is_closed())
            .count()
    }

    /// Sends one line to every open watch; fails the test when none is open.
    fn send_line(&self, line: String) {
        let mut watchers = self.state.watchers.lock().expect("lock");
        watchers.retain(|w| w.send(line.clone()).is_ok());
        assert!(!watchers.is_empty(), "no open watch received {line}");
    }

    /// Sends an ADDED, MODIFIED or DELETED event for `pod`, with a new resourceVersion.
    fn send(&self, kind: &str, mut pod: Value) {
        let rv = self.state.resource_version.fetch_add(1, Ordering::SeqCst) + 1;
        pod["metadata"]["resourceVersion"] = rv.to_string().into();
        self.send_line(format!("{}\n", json!({"type": kind, "object": pod})));
    }

    fn send_bookmark(&self, rv: u64) {
        self.state.resource_version.store(rv, Ordering::SeqCst);
        let bookmark = json!({"kind": "Pod", "apiVersion": "v1", "metadata": {"resourceVersion": rv.to_string()}});
        self.send_line(format!(
            "{}\n",
            json!({"type": "BOOKMARK", "object": bookmark})
        ));
    }

    /// An ERROR event, as the apiserver sends when the watch's resourceVersion is too old.
    fn send_expired(&self) {
        let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                            "message": "too old resource version", "reason": "Expired", "code": 410});
        self.send_line(format!("{}\n", json!({"type": "ERROR", "object": status})));
    }

    /// Ends every open watch response cleanly (as the apiserver does at `timeoutSeconds`).
    fn end_watches(&self) {
        self.state.watchers.lock().expect("lock").clear();
    }

    /// Stops the server and drops every connection.
    async fn kill(&self) {
        self.task.abort();
        let addr = self.addr;
        eventually(
            Duration::from_secs(5),
            "the mock apiserver to refuse connections",
            || async move {
                tokio::net::TcpStream::connect(addr)
                    .await
                    .is_err()
                    .then_some(())
            },
        )
        .await;
    }

    async fn wait_for_watch(&self) {
        eventually(
            Duration::from_secs(10),
            "the adapter to open a pod watch",
            || async { (self.open_watches() > 0).then_some(()) },
        )
        .await;
    }
}

impl Drop for MockApiserver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A Running pod in `default`, opted in and scraped at `127.0.0.1:<port>`.
fn pod(name: &str, port: u16) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "default",
            "uid": format!("uid-{name}"),
            "resourceVersion": "1",
            "labels": {"app": "ws"},
            "annotations": {
                "ws-metrics-adapter.io/scrape": "true",
                "ws-metrics-adapter.io/port": port.to_string(),
            },
        },
        "spec": {"containers": [{"name": "ws", "image": "ws:latest"}]},
        "status": {"phase": "Running", "podIP": "127.0.0.1"},
    })
}

fn with_phase(mut pod: Value, phase: &str) -> Value {
    pod["status"]["phase"] = phase.into();
    pod
}

// ---------------------------------------------------------------------------------------------
// Adapter side.
// ---------------------------------------------------------------------------------------------

struct Cluster {
    mock: MockApiserver,
    adapter: Adapter,
    client: Client,
    _kubeconfig_dir: tempfile::TempDir,
}

async fn start(items: Vec<Value>, hold_list: bool) -> Cluster {
    let mock = MockApiserver::start(items, hold_list).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dir.path().join("kubeconfig");
    e2e::write_kubeconfig(&kubeconfig, &format!("http://{}", mock.addr), None, None);
    let adapter = e2e::start_cluster_adapter(
        &kubeconfig,
        &["--scrape-interval", "200ms", "--scrape-timeout", "150ms"],
    )
    .await;
    // The certificates are written before the listeners serve: once /livez answers, the CA exists.
    let metrics = adapter.metrics;
    eventually(
        Duration::from_secs(10),
        "the adapter to serve /livez",
        || async move { matches!(plain_get(metrics, "/livez").await, Ok((200, _))).then_some(()) },
    )
    .await;
    let client = adapter.client();
    Cluster {
        mock,
        adapter,
        client,
        _kubeconfig_dir: dir,
    }
}

const ALL_PODS: &str =
    "/apis/custom.metrics.k8s.io/v1beta2/namespaces/default/pods/%2A/websocket_connections";

impl Cluster {
    /// `pod -> value` of the all-pods answer, which must be a 200.
    async fn served(&self) -> BTreeMap<String, String> {
        let resp = self.client.get(self.adapter.api, ALL_PODS).await;
        assert_eq!(resp.status, 200, "{}", resp.body);
        let body = resp.json();
        body["items"]
            .as_array()
            .unwrap_or_else(|| panic!("no items: {body}"))
            .iter()
            .map(|i| {
                let name = i["describedObject"]["name"]
                    .as_str()
                    .expect("name")
                    .to_owned();
                (name, i["value"].as_str().expect("value").to_owned())
            })
            .collect()
    }

    /// Polls the API until it serves exactly `want`.
    async fn wait_served(&self, want: &[(&str, &str)], what: &str) {
        let want: BTreeMap<String, String> = want
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let mut last = BTreeMap::new();
        let found = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                last = self.served().await;
                if last == want {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(
            found.is_ok(),
            "{what}: wanted {want:?}, still served {last:?}"
        );
    }

    async fn own_metrics(&self) -> String {
        let (code, body) = plain_get(self.adapter.metrics, "/metrics")
            .await
            .expect("GET /metrics");
        assert_eq!(code, 200, "{body}");
        body
    }
}

// ---------------------------------------------------------------------------------------------
// Tests.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_waits_for_the_pod_list_and_then_a_collection_round() {
    let a = FakePod::start(Behavior::Body(exposition(&[("chat", 2)]))).await;
    let b = FakePod::start(Behavior::Body(exposition(&[("chat", 3), ("echo", 1)]))).await;
    let c = start(
        vec![pod("ws-a", a.addr.port()), pod("ws-b", b.addr.port())],
        true,
    )
    .await;

    eventually(
        Duration::from_secs(10),
        "the adapter's LIST to reach the mock",
        || async { (c.mock.lists() == 1).then_some(()) },
    )
    .await;
    // The LIST is held: no inventory, so no round and no readiness; alive all the same.
    let (code, body) = plain_get(c.adapter.metrics, "/readyz")
        .await
        .expect("GET /readyz");
    assert_eq!(
        (code, body.trim()),
        (
            503,
            "not ready: pod inventory not loaded yet (watch not synced or static file not read)"
        )
    );
    assert_eq!(
        plain_get(c.adapter.metrics, "/livez")
            .await
            .expect("GET /livez")
            .0,
        200
    );
    let metrics = c.own_metrics().await;
    assert_eq!(
        e2e::sample(
            &metrics,
            "ws_metrics_adapter_collection_round_duration_seconds_count"
        ),
        Some(0.0),
        "{metrics}"
    );
    assert_eq!(
        (a.requests(), b.requests()),
        (0, 0),
        "pods scraped before they were listed"
    );

    c.mock.release_list();
    c.adapter.wait_ready(Duration::from_secs(10)).await;
    // Ready means a round over the listed pods has finished: both values are there already.
    assert_eq!(
        c.served().await,
        BTreeMap::from([("ws-a".into(), "2".into()), ("ws-b".into(), "4".into())])
    );
    let metrics = c.own_metrics().await;
    assert!(
        e2e::sample(
            &metrics,
            "ws_metrics_adapter_collection_round_duration_seconds_count"
        )
        .is_some_and(|n| n >= 1.0),
        "{metrics}"
    );
    c.adapter.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_events_change_the_served_pods_at_once_and_api_requests_never_list() {
    let a = FakePod::start(Behavior::Body(exposition(&[("chat", 1)]))).await;
    let b = FakePod::start(Behavior::Body(exposition(&[("chat", 2)]))).await;
    let d = FakePod::start(Behavior::Body(exposition(&[("chat", 4)]))).await;
    let not_opted_in = FakePod::start(Behavior::Body(exposition(&[("chat", 99)]))).await;
    let mut hidden = pod("ws-hidden", not_opted_in.addr.port());
    hidden["metadata"]["annotations"] = json!({});
    let c = start(
        vec![
            pod("ws-a", a.addr.port()),
            pod("ws-b", b.addr.port()),
            hidden,
        ],
        false,
    )
    .await;
    c.adapter.wait_ready(Duration::from_secs(10)).await;
    c.mock.wait_for_watch().await;
    c.wait_served(&[("ws-a", "1"), ("ws-b", "2")], "the listed, opted-in pods")
        .await;
    assert_eq!(
        not_opted_in.requests(),
        0,
        "a pod without the scrape annotation was scraped"
    );

    // The watch resumes from the LIST's resourceVersion and asks for bookmarks.
    let first_watch = c.mock.watches().remove(0);
    assert_eq!(
        first_watch.query.get("resourceVersion").map(String::as_str),
        Some("100"),
        "{first_watch:?}"
    );
    assert_eq!(
        first_watch
            .query
            .get("allowWatchBookmarks")
            .map(String::as_str),
        Some("true"),
        "{first_watch:?}"
    );

    c.mock.send("DELETED", pod("ws-a", a.addr.port()));
    c.wait_served(&[("ws-b", "2")], "after ws-a was DELETED")
        .await;

    c.mock.send(
        "MODIFIED",
        with_phase(pod("ws-b", b.addr.port()), "Succeeded"),
    );
    c.wait_served(&[], "after ws-b turned Succeeded").await;

    c.mock.send("ADDED", pod("ws-d", d.addr.port()));
    c.wait_served(&[("ws-d", "4")], "after ws-d was ADDED")
        .await;

    // API requests read memory only: no LIST, no new WATCH, no request at all to the apiserver.
    let before = c.mock.requests().len();
    for _ in 0..20 {
        assert_eq!(c.served().await.len(), 1);
    }
    assert_eq!(c.mock.lists(), 1, "{:?}", c.mock.requests());
    assert_eq!(
        c.mock.requests().len(),
        before,
        "API requests reached the apiserver: {:?}",
        c.mock.requests()
    );

    // A watch that ends (the apiserver's timeoutSeconds) resumes from the last bookmark, without a LIST.
    c.mock.send_bookmark(5000);
    c.mock.end_watches();
    eventually(
        Duration::from_secs(10),
        "the adapter to watch again",
        || async { (c.mock.watches().len() == 2).then_some(()) },
    )
    .await;
    let second_watch = c.mock.watches().remove(1);
    assert_eq!(
        second_watch
            .query
            .get("resourceVersion")
            .map(String::as_str),
        Some("5000"),
        "{second_watch:?}"
    );
    assert_eq!(
        c.mock.lists(),
        1,
        "a clean end of the watch caused a re-list: {:?}",
        c.mock.requests()
    );
    c.mock.wait_for_watch().await;
    c.mock.send("ADDED", pod("ws-a", a.addr.port()));
    c.wait_served(
        &[("ws-a", "1"), ("ws-d", "4")],
        "after ws-a came back on the new watch",
    )
    .await;
    c.adapter.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_watch_relists_and_drops_pods_deleted_meanwhile() {
    let a = FakePod::start(Behavior::Body(exposition(&[("chat", 1)]))).await;
    let b = FakePod::start(Behavior::Body(exposition(&[("chat", 2)]))).await;
    let e = FakePod::start(Behavior::Body(exposition(&[("chat", 5)]))).await;
    let c = start(
        vec![pod("ws-a", a.addr.port()), pod("ws-b", b.addr.port())],
        false,
    )
    .await;
    c.adapter.wait_ready(Duration::from_secs(10)).await;
    c.mock.wait_for_watch().await;
    c.wait_served(&[("ws-a", "1"), ("ws-b", "2")], "the listed pods")
        .await;

    // While the adapter was not looking, ws-b went away and ws-e came.
    c.mock
        .set_list(vec![pod("ws-a", a.addr.port()), pod("ws-e", e.addr.port())]);
    c.mock.send_expired();
    eventually(
        Duration::from_secs(10),
        "the adapter to re-list after 410 Gone",
        || async { (c.mock.lists() == 2).then_some(()) },
    )
    .await;
    c.wait_served(&[("ws-a", "1"), ("ws-e", "5")], "after the re-list")
        .await;
    c.adapter.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_apiserver_leaves_the_last_known_pods_served_and_scraped() {
    let a = FakePod::start(Behavior::Body(exposition(&[("chat", 1)]))).await;
    let b = FakePod::start(Behavior::Body(exposition(&[("chat", 2)]))).await;
    let c = start(
        vec![pod("ws-a", a.addr.port()), pod("ws-b", b.addr.port())],
        false,
    )
    .await;
    c.adapter.wait_ready(Duration::from_secs(10)).await;
    c.mock.wait_for_watch().await;
    c.wait_served(&[("ws-a", "1"), ("ws-b", "2")], "the listed pods")
        .await;

    c.mock.kill().await;
    eventually(
        Duration::from_secs(15),
        "the adapter to notice the watch failing",
        || async {
            e2e::sample(
                &c.own_metrics().await,
                "ws_metrics_adapter_inventory_errors_total",
            )
            .filter(|n| *n >= 1.0)
        },
    )
    .await;
    // Still scraping the pods it knows: a new count shows up.
    a.set(Behavior::Body(exposition(&[("chat", 10)])));
    c.wait_served(&[("ws-a", "10"), ("ws-b", "2")], "with the apiserver gone")
        .await;
    let (code, _) = plain_get(c.adapter.metrics, "/readyz")
        .await
        .expect("GET /readyz");
    assert_eq!(
        code, 200,
        "readiness must not depend on the apiserver once synced"
    );
    c.adapter.stop().await;
}
