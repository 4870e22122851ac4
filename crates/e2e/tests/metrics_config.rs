//! `--metrics-config` re-read while running (issue 13, item 3), on the in-process adapter over a
//! fake pod: a new metric (with a per-metric series filter) is served after the file changes,
//! with no restart, while a reader keeps asking for the old one and never misses an answer; a
//! bad new file keeps the previous metrics, is counted in `/metrics`, and is logged once.

use ws_e2e as support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use support::{Adapter, Behavior, FakePod, StaticPod, eventually, exposition, static_pods_yaml};

/// A poll's give-up deadline: a bound on a hang on a busy machine, not a speed claim.
const PATIENCE: Duration = Duration::from_secs(60);

fn path(metric: &str) -> String {
    format!(
        "/apis/custom.metrics.k8s.io/v1beta2/namespaces/chat/pods/%2A/{metric}?labelSelector=app%3Dws"
    )
}

/// `(pod, value)` of each item of a MetricValueList.
fn items(body: &serde_json::Value) -> Vec<(String, String)> {
    body["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|i| {
                    (
                        i["describedObject"]["name"]
                            .as_str()
                            .unwrap_or("?")
                            .to_owned(),
                        i["value"].as_str().unwrap_or("?").to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn one(pod: &str, value: &str) -> Vec<(String, String)> {
    vec![(pod.to_owned(), value.to_owned())]
}

const CONNECTIONS_ONLY: &str = "metrics:
  - name: websocket_connections
    family: websocket_connections_active
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_file_is_served_without_restart_and_a_bad_one_keeps_the_previous_metrics() {
    let pod = FakePod::start(Behavior::Body(exposition(&[("chat", 3), ("echo", 4)]))).await;
    let yaml = static_pods_yaml(&[StaticPod {
        namespace: "chat",
        name: "ws-0",
        labels: &[("app", "ws")],
        url: pod.url(),
    }]);
    let config_dir = tempfile::tempdir().expect("tempdir");
    let config = config_dir.path().join("metrics.yaml");
    std::fs::write(&config, CONNECTIONS_ONLY).expect("write metrics config");
    let config_arg = config.display().to_string();
    let adapter = Adapter::start_static(
        &yaml,
        &[
            "--metrics-config",
            &config_arg,
            "--scrape-interval",
            "200ms",
        ],
    )
    .await;
    adapter.wait_ready(PATIENCE).await;
    let client = Arc::new(adapter.client());
    let api = adapter.api;
    eventually(PATIENCE, "websocket_connections served", || {
        let client = client.clone();
        async move {
            let r = client.get(api, &path("websocket_connections")).await;
            (r.status == 200 && items(&r.json()) == one("ws-0", "7")).then_some(())
        }
    })
    .await;

    // The HPA's side: read the unchanged metric over and over through both reloads.
    let stop = Arc::new(AtomicBool::new(false));
    let (reads, misses) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let reader = {
        let (client, stop, reads, misses) =
            (client.clone(), stop.clone(), reads.clone(), misses.clone());
        tokio::spawn(async move {
            let mut missed = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let r = client.get(api, &path("websocket_connections")).await;
                reads.fetch_add(1, Ordering::SeqCst);
                if r.status != 200 || items(&r.json()) != one("ws-0", "7") {
                    misses.fetch_add(1, Ordering::SeqCst);
                    missed.push(format!("{} {}", r.status, r.body));
                }
            }
            missed
        })
    };

    // A new metric, a route's connections only (the file's per-metric filter).
    std::fs::write(
        &config,
        format!(
            "{CONNECTIONS_ONLY}  - name: chat_connections\n    family: websocket_connections_active\n    seriesSelector: route=chat\n"
        ),
    )
    .expect("rewrite metrics config");
    let changed = Instant::now();
    eventually(PATIENCE, "chat_connections served", || {
        let client = client.clone();
        async move {
            let r = client.get(api, &path("chat_connections")).await;
            (r.status == 200 && items(&r.json()) == one("ws-0", "3")).then_some(())
        }
    })
    .await;
    eprintln!(
        "metrics config change served {:.2} s after the file was written",
        changed.elapsed().as_secs_f64()
    );
    // Discovery lists it.
    let r = client.get(api, "/apis/custom.metrics.k8s.io/v1beta2").await;
    assert!(r.body.contains("pods/chat_connections"), "{}", r.body);

    // A bad new file: two problems; the previous metrics stay, the failure is counted once.
    std::fs::write(
        &config,
        "metrics:\n  - {name: websocket_connections, family: '1bad'}\n  - {name: x, family: f, rate: soon}\n",
    )
    .expect("write bad metrics config");
    eventually(PATIENCE, "the reload failure counted", || async {
        let (_, m) = support::plain_get(adapter.metrics, "/metrics").await.ok()?;
        let failures = support::e2e::sample(&m, "ws_metrics_adapter_config_reload_failures_total")?;
        (failures == 1.0).then_some(())
    })
    .await;
    let r = client.get(api, &path("chat_connections")).await;
    assert_eq!(items(&r.json()), one("ws-0", "3"), "{}", r.body);

    // At least a few reads landed across the reloads, and none missed.
    eventually(PATIENCE, "20 reads", || async {
        (reads.load(Ordering::SeqCst) >= 20).then_some(())
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    let missed = reader.await.expect("reader");
    assert!(missed.is_empty(), "reads without the value: {missed:?}");
    assert_eq!(misses.load(Ordering::SeqCst), 0);
    let (_, m) = support::plain_get(adapter.metrics, "/metrics")
        .await
        .expect("metrics");
    assert!(
        support::e2e::sample(
            &m,
            "ws_metrics_adapter_config_last_reload_success_timestamp_seconds"
        )
        .is_some_and(|t| t > 1.0e9),
        "{m}"
    );
    adapter.stop().await;
}

#[test]
fn a_bad_file_at_start_fails_validation_naming_every_problem() {
    use clap::Parser;
    use ws_metrics_adapter::config::{Cli, Command};
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("metrics.yaml");
    std::fs::write(
        &config,
        "metrics:\n  - {name: a, family: '1bad'}\n  - {name: b, family: f_total, rate: 100ms}\n",
    )
    .expect("write");
    let parsed = Cli::try_parse_from([
        "ws-metrics-adapter",
        "serve",
        "--static-pods",
        "p.yaml",
        "--metrics-config",
        &config.display().to_string(),
    ])
    .expect("flags parse");
    let Command::Serve(args) = parsed.command;
    let err = args.validate().expect_err("bad file").to_string();
    assert!(err.contains("family \"1bad\""), "{err}");
    assert!(err.contains("rate window 100ms"), "{err}");
    // And --metric with --metrics-config is refused by the parser.
    assert!(
        Cli::try_parse_from([
            "ws-metrics-adapter",
            "serve",
            "--metric",
            "a=b",
            "--metrics-config",
            "m.yaml",
        ])
        .is_err()
    );
}
