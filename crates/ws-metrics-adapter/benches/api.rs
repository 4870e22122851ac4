//! API benchmarks (issue targets (a) and (b)).
//!
//! (a) In process: a wildcard query selecting 100 of 10,000 tracked pods
//!     (`namespaces/chat/pods/*/websocket_connections?labelSelector=app=ws-N`) through
//!     `api::router` with `tower::ServiceExt::oneshot`, each request timed individually (body read
//!     included); plus the bare `Store::pods_matching` call and the body serialization
//!     (`wire::metric_value_list`) timed the same way, to show where the time goes.
//!     Target: p99 ≤ 1 ms. And the Object read of one app's Deployment
//!     (`namespaces/chat/deployments.apps/ws-N/websocket_connections`, the sum over its 100
//!     pods) the same way. Target: p99 within 1.5× of the pods query's.
//! (b) The same over HTTPS (rustls, `server::serve_tls`) with HTTP/1.1 keep-alive, driven from a
//!     separate process (this binary re-executed with `WSMA_BENCH_ROLE=client`) over C
//!     connections for a fixed duration. Target: ≥ 5,000 requests/s.
//!
//! Run: `cargo bench --bench api`. Knobs (env): `WSMA_BENCH_REQUESTS` (default 20000),
//! `WSMA_BENCH_CONNS` (default 4,16,64), `WSMA_BENCH_SECONDS` (default 10 per C).

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ws_metrics_adapter::clock::{Moment, SampleTime};

use axum::body::Body;
use http_body_util::BodyExt;
use support::{ROLE_VAR, count, pct, query_path};
use tower::ServiceExt;
use ws_metrics_adapter::api::wire::{self, Described, Item, Version};
use ws_metrics_adapter::api::{self, ApiState};
use ws_metrics_adapter::selector::Selector;
use ws_metrics_adapter::server::tls;
use ws_metrics_adapter::store::{
    FamilyReading, MetricCatalog, MetricMapping, ObjectSpec, PodKey, PodTarget, Reading, Series,
    Store, resource,
};
use ws_metrics_adapter::telemetry::Telemetry;

const APPS: usize = 100;
const PODS_PER_APP: usize = 100;
const NAMESPACE: &str = support::BENCH_NAMESPACE;
const MARKER: &[u8] = support::ITEM_MARKER;

fn object_path(app: usize) -> String {
    format!(
        "/apis/custom.metrics.k8s.io/v1beta2/namespaces/{NAMESPACE}/deployments.apps/ws-{app}/websocket_connections"
    )
}

/// Connection counts of pod `i` of `app`, in milli-units: (chat, echo).
fn values(app: usize, i: usize) -> (i64, i64) {
    (
        ((app * 31 + i * 7) % 500) as i64 * 1000,
        ((app + i) % 13) as i64 * 1000,
    )
}

struct Seeded {
    store: Arc<Store>,
    /// Pod name → (app, expected total milli).
    expected: HashMap<String, (usize, i64)>,
}

fn seed() -> Seeded {
    let catalog = MetricCatalog::new(vec![MetricMapping {
        served: "websocket_connections".into(),
        family: "websocket_connections_active".into(),
        rate: None,
        filter: None,
    }]);
    // Nothing may expire during the run.
    let store = Arc::new(Store::new(catalog, Duration::from_secs(24 * 3600)));
    let mut targets = Vec::with_capacity(APPS * PODS_PER_APP);
    let mut expected = HashMap::new();
    for app in 0..APPS {
        for i in 0..PODS_PER_APP {
            let (name, hash) = support::pod_name(app, i);
            let (chat, echo) = values(app, i);
            assert!(
                expected.insert(name.clone(), (app, chat + echo)).is_none(),
                "duplicate pod name {name}"
            );
            targets.push(PodTarget {
                key: PodKey {
                    namespace: NAMESPACE.into(),
                    name: name.clone(),
                },
                uid: format!("uid-{app}-{i}"),
                labels: [
                    ("app".to_string(), format!("ws-{app}")),
                    ("pod-template-hash".to_string(), hash),
                ]
                .into(),
                url: format!("http://10.0.{app}.{i}:9100/metrics"),
                ready: true,
            });
        }
    }
    store.replace_all(targets.clone());
    let now = Moment::now();
    for (k, t) in targets.iter().enumerate() {
        let (chat, echo) = values(k / PODS_PER_APP, k % PODS_PER_APP);
        let reading = Reading {
            time: SampleTime::read_at(now),
            families: vec![Some(FamilyReading {
                series: vec![
                    Series {
                        labels: vec![("route".into(), "chat".into())],
                        milli: chat,
                    },
                    Series {
                        labels: vec![("route".into(), "echo".into())],
                        milli: echo,
                    },
                ],
                total_milli: chat + echo,
                stamped_ms: None,
            })]
            .into(),
        };
        assert!(store.record(&t.key, &t.uid, reading));
    }
    assert_eq!(store.pod_count(), APPS * PODS_PER_APP);
    // One Deployment per app, selecting its 100 pods, as discovery's watch would keep them.
    let deployments = resource::resolve_path("deployments.apps").expect("built in");
    store.track_objects(deployments);
    store.replace_objects(
        deployments,
        (0..APPS)
            .map(|app| {
                let spec = ObjectSpec {
                    labels: Default::default(),
                    pods: Some(Selector::parse(&format!("app=ws-{app}")).expect("selector")),
                };
                (NAMESPACE.to_owned(), format!("ws-{app}"), spec)
            })
            .collect(),
    );
    Seeded { store, expected }
}

/// Full check of one answer: 100 items, all of `app`, each with its expected value.
fn check_full(body: &[u8], app: usize, expected: &HashMap<String, (usize, i64)>) {
    let v: serde_json::Value = serde_json::from_slice(body).expect("JSON body");
    assert_eq!(v["kind"], "MetricValueList");
    let items = v["items"].as_array().expect("items");
    assert_eq!(items.len(), PODS_PER_APP, "items for app ws-{app}");
    for it in items {
        assert_eq!(it["describedObject"]["namespace"], NAMESPACE);
        assert_eq!(it["metric"]["name"], "websocket_connections");
        let name = it["describedObject"]["name"].as_str().expect("name");
        let (a, milli) = expected[name];
        assert_eq!(a, app, "pod {name} does not belong to ws-{app}");
        let value = it["value"].as_str().expect("value");
        let got = match value.strip_suffix('m') {
            Some(m) => m.parse::<i64>().expect("milli"),
            None => value.parse::<i64>().expect("int") * 1000,
        };
        assert_eq!(got, milli, "value of {name}");
    }
}

struct Stats {
    what: String,
    n: usize,
    sorted_ns: Vec<u64>,
}

impl Stats {
    fn new(what: &str, mut ns: Vec<u64>) -> Self {
        ns.sort_unstable();
        Self {
            what: what.into(),
            n: ns.len(),
            sorted_ns: ns,
        }
    }
    fn us(&self, q: f64) -> f64 {
        pct(&self.sorted_ns, q) as f64 / 1000.0
    }
    fn mean_us(&self) -> f64 {
        self.sorted_ns.iter().sum::<u64>() as f64 / self.n.max(1) as f64 / 1000.0
    }
    fn row(&self) -> String {
        format!(
            "| {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
            self.what,
            self.n,
            self.mean_us(),
            self.us(0.50),
            self.us(0.90),
            self.us(0.99),
            self.us(1.0)
        )
    }
}

fn bench_in_process(seeded: &Seeded, n: usize) -> Vec<Stats> {
    let telemetry = Arc::new(Telemetry::new());
    let router = api::router(ApiState::new(seeded.store.clone(), telemetry));
    let uris: Vec<http::Uri> = (0..APPS)
        .map(|a| query_path(a).parse().expect("uri"))
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let warmup = 2_000;
    let mut out = Vec::new();

    // (a) router, oneshot, body to bytes.
    let lat = rt.block_on(async {
        let mut lat = Vec::with_capacity(n);
        for k in 0..warmup + n {
            let app = (k * 37) % APPS;
            let req = http::Request::get(uris[app].clone())
                .body(Body::empty())
                .expect("request");
            let svc = router.clone();
            let t = Instant::now();
            let resp = svc.oneshot(req).await.expect("infallible");
            let status = resp.status();
            let body = resp.into_body().collect().await.expect("body").to_bytes();
            let el = t.elapsed();
            assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
            if k % 997 == 0 {
                check_full(&body, app, &seeded.expected);
            } else {
                assert_eq!(count(&body, MARKER), PODS_PER_APP, "items for ws-{app}");
            }
            if k >= warmup {
                lat.push(el.as_nanos() as u64);
            }
        }
        lat
    });
    out.push(Stats::new("router oneshot + body (full request)", lat));

    // The Object read: one app's Deployment, the sum over the same 100 pods.
    let objects: Vec<http::Uri> = (0..APPS)
        .map(|a| object_path(a).parse().expect("uri"))
        .collect();
    let sums: Vec<i64> = (0..APPS)
        .map(|a| {
            (0..PODS_PER_APP)
                .map(|i| {
                    let (chat, echo) = values(a, i);
                    chat + echo
                })
                .sum()
        })
        .collect();
    let lat = rt.block_on(async {
        let mut lat = Vec::with_capacity(n);
        for k in 0..warmup + n {
            let app = (k * 37) % APPS;
            let req = http::Request::get(objects[app].clone())
                .body(Body::empty())
                .expect("request");
            let svc = router.clone();
            let t = Instant::now();
            let resp = svc.oneshot(req).await.expect("infallible");
            let status = resp.status();
            let body = resp.into_body().collect().await.expect("body").to_bytes();
            let el = t.elapsed();
            assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
            if k % 997 == 0 {
                let v: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
                let value = v["items"][0]["value"].as_str().expect("value");
                let milli = match value.strip_suffix('k') {
                    Some(k) => k.parse::<i64>().expect("int") * 1_000_000,
                    None => value.parse::<i64>().expect("int") * 1000,
                };
                assert_eq!(milli, sums[app], "ws-{app}: {value}");
            } else {
                assert_eq!(count(&body, MARKER), 1, "one item for ws-{app}");
            }
            if k >= warmup {
                lat.push(el.as_nanos() as u64);
            }
        }
        lat
    });
    out.push(Stats::new(
        "Object: deployments.apps/ws-N, sum over its 100 pods (full request)",
        lat,
    ));

    // Where the time goes: the store query alone …
    let selectors: Vec<Selector> = (0..APPS)
        .map(|a| Selector::parse(&format!("app=ws-{a}")).expect("selector"))
        .collect();
    let all = Selector::everything();
    let mut lat = Vec::with_capacity(n);
    for k in 0..warmup + n {
        let app = (k * 37) % APPS;
        let now = Moment::now();
        let t = Instant::now();
        let pods = seeded
            .store
            .pods_matching(NAMESPACE, &selectors[app], 0, &all, now);
        let el = t.elapsed();
        assert_eq!(pods.len(), PODS_PER_APP);
        std::hint::black_box(&pods);
        if k >= warmup {
            lat.push(el.as_nanos() as u64);
        }
    }
    out.push(Stats::new("Store::pods_matching only", lat));

    // The scan alone: a selector that matches no pod still visits all 10,000.
    let none = Selector::parse("app=absent").expect("selector");
    let mut lat = Vec::with_capacity(n);
    for k in 0..warmup + n {
        let now = Moment::now();
        let t = Instant::now();
        let pods = seeded.store.pods_matching(NAMESPACE, &none, 0, &all, now);
        let el = t.elapsed();
        assert!(pods.is_empty());
        if k >= warmup {
            lat.push(el.as_nanos() as u64);
        }
    }
    out.push(Stats::new(
        "Store::pods_matching, selector matching 0 pods (scan only)",
        lat,
    ));

    // What a label index would cost instead: point look-ups of just the 100 pods of the app
    // (`Store::pod_value` each, one read lock per call), the names coming from a prebuilt
    // app → names map standing in for the index.
    let mut by_app: Vec<Vec<PodKey>> = vec![Vec::new(); APPS];
    for (name, (app, _)) in &seeded.expected {
        by_app[*app].push(PodKey {
            namespace: NAMESPACE.into(),
            name: name.clone(),
        });
    }
    for keys in &mut by_app {
        keys.sort();
    }
    let mut lat = Vec::with_capacity(n);
    for k in 0..warmup + n {
        let app = (k * 37) % APPS;
        let now = Moment::now();
        let t = Instant::now();
        let pods: Vec<_> = by_app[app]
            .iter()
            .filter_map(|key| seeded.store.pod_value(key, 0, &all, now))
            .collect();
        let el = t.elapsed();
        assert_eq!(pods.len(), PODS_PER_APP);
        if k >= warmup {
            lat.push(el.as_nanos() as u64);
        }
    }
    out.push(Stats::new(
        "index stand-in: 100 × Store::pod_value of the app's pods",
        lat,
    ));

    // … and the body serialization alone (100 items, v1beta2).
    let now = Moment::now();
    let item_sets: Vec<Vec<Item>> = selectors
        .iter()
        .map(|sel| {
            seeded
                .store
                .pods_matching(NAMESPACE, sel, 0, &all, now)
                .into_iter()
                .map(|p| Item {
                    described: Described::Pod {
                        namespace: NAMESPACE.into(),
                        name: p.name,
                    },
                    milli: p.milli,
                    time: p.time,
                })
                .collect()
        })
        .collect();
    let mut lat = Vec::with_capacity(n);
    for k in 0..warmup + n {
        let app = (k * 37) % APPS;
        let t = Instant::now();
        let body = wire::metric_value_list(
            Version::V1beta2,
            "websocket_connections",
            None,
            &item_sets[app],
        );
        let el = t.elapsed();
        assert_eq!(count(&body, MARKER), PODS_PER_APP);
        if k >= warmup {
            lat.push(el.as_nanos() as u64);
        }
    }
    out.push(Stats::new("wire::metric_value_list only (100 items)", lat));
    out
}

// ---------------------------------------------------------------------------------------------
// (b) over HTTPS

struct HttpsRow {
    conns: usize,
    fields: HashMap<String, String>,
    server_cores: f64,
}

fn bench_https(seeded: &Seeded, conns: &[usize], secs: u64) -> Vec<HttpsRow> {
    let dir = tempfile::tempdir().expect("tempdir");
    let pair = tls::generate_pair(
        "ws-metrics-adapter-bench",
        &["localhost".into(), "127.0.0.1".into()],
    )
    .expect("generate pair");
    let (cert, key, ca) = (
        dir.path().join("tls.crt"),
        dir.path().join("tls.key"),
        dir.path().join("ca.crt"),
    );
    std::fs::write(&cert, &pair.cert_pem).expect("write cert");
    std::fs::write(&key, &pair.key_pem).expect("write key");
    std::fs::write(&ca, &pair.ca_pem).expect("write ca");
    let resolver = Arc::new(tls::CertResolver::new(
        tls::load_pair(&cert, &key).expect("load pair"),
    ));
    let server_cfg = Arc::new(tls::server_config(resolver).expect("server config"));

    let telemetry = Arc::new(Telemetry::new());
    let router = api::router(ApiState::new(seeded.store.clone(), telemetry));
    // The server's own runtime: multi-thread, one worker per core (2 here).
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = rt.spawn(ws_metrics_adapter::server::serve_tls(
        listener,
        server_cfg,
        router,
        ws_metrics_adapter::server::Limits::default(),
        Duration::from_secs(2),
        async move {
            let _ = stop_rx.await;
        },
    ));

    let ticks = support::clock_ticks();
    let me = std::process::id().to_string();
    let mut rows = Vec::new();
    for &c in conns {
        let load = support::ReadLoad {
            addr,
            ca: &ca,
            conns: c,
            secs,
            apps: APPS,
            pods_per_app: PODS_PER_APP,
        };
        let mut client = load.start();
        let (t0, cpu0) = (Instant::now(), support::cpu_ticks(&me));
        let (result, fields) = support::ReadLoad::finish(&mut client, secs);
        let (wall, cpu1) = (t0.elapsed().as_secs_f64(), support::cpu_ticks(&me));
        println!("(b) C={c}: {result}");
        rows.push(HttpsRow {
            conns: c,
            fields,
            server_cores: (cpu1 - cpu0) as f64 / ticks / wall,
        });
    }
    let _ = stop_tx.send(());
    rt.block_on(async {
        let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    });
    rt.shutdown_timeout(Duration::from_secs(1));
    rows
}

fn main() {
    tls::install_provider();
    if std::env::var(ROLE_VAR).as_deref() == Ok(support::READ_LOAD_ROLE) {
        support::read_load_main();
        return;
    }
    let n = support::env_num("WSMA_BENCH_REQUESTS", 20_000) as usize;
    let conns = support::env_list("WSMA_BENCH_CONNS", &[4, 16, 64]);
    let secs = support::env_num("WSMA_BENCH_SECONDS", 10);
    let started = Instant::now();
    let load = || {
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
            .to_owned()
    };
    let load_start = load();
    println!("load average at start: {load_start}");

    let t = Instant::now();
    let seeded = seed();
    println!(
        "seeded {} pods ({} apps × {}) in {:.2?}",
        seeded.store.pod_count(),
        APPS,
        PODS_PER_APP,
        t.elapsed()
    );

    let inproc = bench_in_process(&seeded, n);
    let https = bench_https(&seeded, &conns, secs);

    println!();
    println!("## (a) wildcard query selecting 100 of 10,000 pods, in process (µs)");
    println!();
    println!("| what | n | mean | p50 | p90 | p99 | max |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for s in &inproc {
        println!("{}", s.row());
    }
    println!();
    println!(
        "Target p99 ≤ 1000 µs: full request p99 = {:.1} µs",
        inproc[0].us(0.99)
    );
    println!(
        "Target Object read p99 ≤ 1.5 × pods query p99: {:.1} µs vs {:.1} µs ({:.2}×)",
        inproc[1].us(0.99),
        inproc[0].us(0.99),
        inproc[1].us(0.99) / inproc[0].us(0.99)
    );
    println!();
    println!(
        "## (b) same query over HTTPS, HTTP/1.1 keep-alive, client in a separate process ({secs} s per C)"
    );
    println!();
    println!(
        "| C | requests | req/s | p50 µs | p90 µs | p99 µs | max µs | errors | bad | server cores | client cores |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &https {
        let f = |k: &str| r.fields.get(k).map(String::as_str).unwrap_or("?");
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.2} | {} |",
            r.conns,
            f("requests"),
            f("rps"),
            f("p50_us"),
            f("p90_us"),
            f("p99_us"),
            f("max_us"),
            f("errors"),
            f("bad"),
            r.server_cores,
            f("client_cores"),
        );
    }
    println!();
    println!(
        "Target ≥ 5,000 requests/s. Machine: {} cores shared by server and client.",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    for r in &https {
        let errors: u64 = r
            .fields
            .get("errors")
            .and_then(|v| v.parse().ok())
            .unwrap_or(1);
        let bad: u64 = r
            .fields
            .get("bad")
            .and_then(|v| v.parse().ok())
            .unwrap_or(1);
        assert_eq!(
            (errors, bad),
            (0, 0),
            "C={}: every response must be 200 with 100 items",
            r.conns
        );
    }
    println!("load average at start: {load_start}; at end: {}", load());
    println!("total bench time {:.1?}", started.elapsed());
}
