//! Remote-write ingestion benchmark (issue 16 target: 100,000 series/s with ≤ 0.5 core): the
//! receiver's whole request path in process — the axum router, body collection with its limit,
//! snappy + protobuf decoding, mapping to pods and recording their readings into the store —
//! fed with 100,000 series (10,000 pods × 10 series of `websocket_connections_active`, plus as
//! many series of a family not served, as agents send everything they scrape) in requests of
//! 2,000 series, the size Prometheus sends (`queue_config.max_samples_per_send`).
//!
//! Measured over a window: series/s through the receiver on one thread (the request loop runs
//! on a current-thread runtime), and the process CPU time (getrusage) per 100,000 series: at
//! 100,000 series/s that is the share of a core the receiver needs.
//!
//! Run: `cargo bench -p ws-metrics-adapter --bench remote_write`. Knobs (env):
//! `WSMA_BENCH_PODS` (default 10000), `WSMA_BENCH_SERIES_PER_POD` (default 10),
//! `WSMA_BENCH_SECONDS` (window, default 10).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use http::Request;
use tower::ServiceExt;
use ws_metrics_adapter::remote_write::decode::{Label, Sample, TimeSeries, WriteRequest, encode};
use ws_metrics_adapter::remote_write::{self, Receiver, RemoteWriteConfig};
use ws_metrics_adapter::store::{MetricCatalog, MetricMapping, PodKey, PodTarget, Store};
use ws_metrics_adapter::telemetry::Telemetry;

const PER_REQUEST: usize = 2_000;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Process CPU time (user + system). Unit: seconds.
fn cpu_seconds() -> f64 {
    // getrusage would need `unsafe` (forbidden here): /proc gives the same ticks.
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    let after = stat.rsplit_once(')').expect("comm field").1;
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 (utime, stime) are at 11 and 12 after the comm field.
    let ticks: u64 = f[11].parse::<u64>().expect("utime") + f[12].parse::<u64>().expect("stime");
    ticks as f64 / 100.0
}

fn main() {
    let pods = env("WSMA_BENCH_PODS", 10_000);
    let per_pod = env("WSMA_BENCH_SERIES_PER_POD", 10);
    let seconds = env("WSMA_BENCH_SECONDS", 10);
    let store = Arc::new(Store::new(
        MetricCatalog::new(vec![MetricMapping {
            served: "websocket_connections".into(),
            family: "websocket_connections_active".into(),
            rate: None,
            filter: None,
        }]),
        Duration::from_secs(3600),
    ));
    let name = |k: usize| format!("ws-{k}");
    store.replace_all(
        (0..pods)
            .map(|k| PodTarget {
                key: PodKey {
                    namespace: "chat".into(),
                    name: name(k),
                },
                uid: format!("uid-{k}"),
                labels: [("app".to_string(), "ws".to_string())].into(),
                url: format!("http://127.0.0.1:1/{k}"),
                ready: true,
            })
            .collect(),
    );
    let receiver = Arc::new(Receiver::new(
        store.clone(),
        Arc::new(Telemetry::new()),
        RemoteWriteConfig {
            addr: "127.0.0.1:0".parse().expect("literal"),
            tls: None,
            bearer_token_file: None,
            namespace_label: "namespace".into(),
            pod_label: "pod".into(),
            max_body_bytes: remote_write::DEFAULT_MAX_BODY_BYTES,
            max_decoded_bytes: remote_write::DEFAULT_MAX_DECODED_BYTES,
            max_series_per_request: remote_write::DEFAULT_MAX_SERIES_PER_REQUEST,
            max_series: remote_write::DEFAULT_MAX_SERIES,
            max_concurrent_requests: 16,
            ready_grace: Duration::from_secs(1),
        },
    ));
    let now_ms = i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("after 1970")
            .as_millis(),
    )
    .expect("fits");
    // Served series, then as many of a family not served (dropped at the name check).
    let mut all: Vec<TimeSeries> = Vec::with_capacity(2 * pods * per_pod);
    for family in ["websocket_connections_active", "go_memstats_alloc_bytes"] {
        for k in 0..pods {
            for r in 0..per_pod {
                let labels = [
                    ("__name__", family.to_owned()),
                    ("instance", format!("10.0.{}.{}:9090", k / 250, k % 250)),
                    ("job", "ws".to_owned()),
                    ("namespace", "chat".to_owned()),
                    ("pod", name(k)),
                    ("route", format!("route-{r}")),
                ];
                all.push(TimeSeries {
                    labels: labels.into_iter().map(|(n, v)| Label::new(n, &v)).collect(),
                    samples: vec![Sample {
                        value: ((k * 7 + r) % 500) as f64,
                        timestamp: now_ms,
                    }],
                });
            }
        }
    }
    let served_series = pods * per_pod;
    // Interleave served and unserved series as an agent's shards would.
    let (served, other) = all.split_at(served_series);
    let mixed: Vec<TimeSeries> = served
        .iter()
        .zip(other)
        .flat_map(|(a, b)| [a.clone(), b.clone()])
        .collect();
    let bodies: Vec<bytes::Bytes> = mixed
        .chunks(PER_REQUEST)
        .map(|c| {
            bytes::Bytes::from(encode(&WriteRequest {
                timeseries: c.to_vec(),
            }))
        })
        .collect();
    let compressed: usize = bodies.iter().map(bytes::Bytes::len).sum();
    println!(
        "remote_write: {pods} pods × {per_pod} served series + as many unserved = {} series in {} requests of {PER_REQUEST} ({:.1} MiB snappy)",
        mixed.len(),
        bodies.len(),
        compressed as f64 / 1048576.0
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let app = remote_write::router(receiver.clone());
    let send = |body: bytes::Bytes| {
        let app = app.clone();
        async move {
            let req = Request::post(remote_write::WRITE_PATH)
                .header(http::header::CONTENT_TYPE, "application/x-protobuf")
                .header(http::header::CONTENT_ENCODING, "snappy")
                .header("X-Prometheus-Remote-Write-Version", "0.1.0")
                .body(Body::from(body))
                .expect("request");
            let resp = app.oneshot(req).await.expect("infallible");
            assert_eq!(resp.status(), http::StatusCode::NO_CONTENT);
        }
    };
    rt.block_on(async {
        // Warm-up: one full pass creates every series.
        for b in &bodies {
            send(b.clone()).await;
        }
        assert_eq!(receiver.series_tracked(), served_series, "every served series held");
        let (cpu0, t0) = (cpu_seconds(), Instant::now());
        let mut series = 0usize;
        let mut passes = 0usize;
        while t0.elapsed() < Duration::from_secs(seconds as u64) {
            for b in &bodies {
                send(b.clone()).await;
            }
            series += mixed.len();
            passes += 1;
        }
        let (cpu, wall) = (cpu_seconds() - cpu0, t0.elapsed().as_secs_f64());
        let rate = series as f64 / wall;
        let served_rate = (passes * served_series) as f64 / wall;
        println!(
            "remote_write: {passes} passes in {wall:.1}s: {rate:.0} series/s received ({served_rate:.0} of served families), one thread"
        );
        println!(
            "remote_write: CPU {:.3} core-seconds per 100,000 series received ({:.3} per 100,000 served) => at 100,000 series/s: {:.2} core",
            cpu / (series as f64 / 100_000.0),
            cpu / ((passes * served_series) as f64 / 100_000.0),
            cpu / (series as f64 / 100_000.0),
        );
    });
    let check = store.pod_value(
        &PodKey {
            namespace: "chat".into(),
            name: name(7),
        },
        0,
        &ws_metrics_adapter::selector::Selector::everything(),
        ws_metrics_adapter::clock::Moment::now(),
    );
    let want: i64 = (0..per_pod)
        .map(|r| ((7 * 7 + r) % 500) as i64 * 1000)
        .sum();
    assert_eq!(check.map(|v| v.milli), Some(want), "pod ws-7's sum served");
}
