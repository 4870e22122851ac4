//! A `--metrics-config` change picked up while the HPA keeps reading (issue 13): the adapter
//! serves a new metric from the changed file without a restart, and the HPA scaling on the
//! unchanged one keeps computing from it, never without a value.

use super::*;

const CONNECTIONS_ONLY: &str = "metrics:
  - name: websocket_connections
    family: websocket_connections_active
";

/// HPA at 2 replicas on 200 connections; the metrics file then gains two metrics. Discovery
/// through kube-apiserver lists them, the HPA's next reads all succeed and it stays at 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_metrics_config_change_is_served_while_the_hpa_keeps_reading() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let files = tempfile::tempdir().expect("tempdir");
    let config = files.path().join("metrics.yaml");
    std::fs::write(&config, CONNECTIONS_ONLY).expect("write metrics config");
    let mut cluster = Cluster::start(Options {
        adapter_args: vec![
            "--scrape-interval=1s".into(),
            format!("--metrics-config={}", config.display()),
        ],
        ..Options::default()
    })
    .await;
    let lb = start_service(&mut cluster, Balance::RoundRobin).await;
    cluster.kubectl_apply(&deployment(2)).await;
    cluster.kubectl_apply(&hpa(1, 10, 30)).await;
    wait_for_backends(&cluster, &lb, 2).await;
    let (_load, load_task) = start_load(lb.addr, vec![step(200, HOLD_UNTIL_ENDED)]);
    wait_for_hpa_at(&cluster, 2).await;

    let reads_before = pod_list_reads(&cluster).await;
    std::fs::write(
        &config,
        format!(
            "{CONNECTIONS_ONLY}  - name: echo_connections\n    family: websocket_connections_active\n    seriesSelector: route=echo\n  - name: messages_per_second\n    family: websocket_messages_received_total\n    rate: 10s\n"
        ),
    )
    .expect("rewrite metrics config");
    let changed = Instant::now();
    cluster
        .wait("discovery lists the new metrics", GIVE_UP, || async {
            let (ok, out, _) = cluster
                .kubectl(&["get", "--raw", "/apis/custom.metrics.k8s.io/v1beta2"])
                .await;
            ok && out.contains("\"pods/echo_connections\"")
                && out.contains("\"pods/messages_per_second\"")
        })
        .await;
    eprintln!(
        "new metrics listed through kube-apiserver {:.1} s after the file changed",
        changed.elapsed().as_secs_f64()
    );
    // The filtered metric answers every connection (the load opens /ws/echo only).
    cluster
        .wait("echo_connections = 200 over 2 pods", GIVE_UP, || async {
            objects::raw_items(
                &cluster,
                "pods/*/echo_connections?labelSelector=app%3Dws-demo",
            )
            .await
            .is_ok_and(|items| {
                items.len() == 2 && items.iter().map(|(_, _, v)| v).sum::<f64>() == 200.0
            })
        })
        .await;
    // The HPA kept reading the unchanged metric: at least 3 more answered reads, all 200.
    cluster
        .wait("3 more HPA reads", GIVE_UP, || async {
            pod_list_reads(&cluster).await >= reads_before + 3.0
        })
        .await;
    let (_, metrics) = support::plain_get(cluster.adapter_metrics, "/metrics")
        .await
        .expect("adapter /metrics");
    let failed: f64 = metrics
        .lines()
        .filter(|l| {
            l.starts_with(
                "ws_metrics_adapter_api_request_duration_seconds_count{route=\"pods_selector\"",
            ) && !l.contains("code=\"200\"")
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum();
    assert_eq!(failed, 0.0, "HPA reads that failed:\n{metrics}");
    let state = hpa_state(&cluster.client).await;
    assert_eq!((state.desired, state.current), (2, 2), "{state:?}");
    assert_eq!(state.average, Some(100.0), "{state:?}");
    load_task.abort();
}
