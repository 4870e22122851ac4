//! A Deployment scaled by two metrics at once (issue 13): connections per pod and messages per
//! second per pod (`rate(websocket_messages_received_total[10s])`, computed by the adapter from
//! its scrapes). The load holds few connections that send many messages, so the message rate is
//! the metric that drives the scale.

use super::*;

/// Served rate metric.
const RATE_METRIC: &str = "messages_per_second";

/// HPA on both metrics: 100 connections and 100 messages per second per pod.
fn two_metric_hpa() -> String {
    format!(
        r#"apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {{name: ws-demo, namespace: {NAMESPACE}}}
spec:
  scaleTargetRef: {{apiVersion: apps/v1, kind: Deployment, name: ws-demo}}
  minReplicas: 1
  maxReplicas: 6
  metrics:
  - type: Pods
    pods:
      metric: {{name: {METRIC}}}
      target: {{type: AverageValue, averageValue: "100"}}
  - type: Pods
    pods:
      metric: {{name: {RATE_METRIC}}}
      target: {{type: AverageValue, averageValue: "100"}}
  behavior:
    scaleUp:
      stabilizationWindowSeconds: 0
      policies: [{{type: Pods, value: 10, periodSeconds: 15}}]
"#
    )
}

/// `(current, desired, [averageValue per metric name])` from the HPA's status.
async fn hpa_metrics(client: &Client) -> Option<(i32, i32, BTreeMap<String, f64>)> {
    let api: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), NAMESPACE);
    let status = api.get_status("ws-demo").await.ok()?.status?;
    let averages = status
        .current_metrics
        .unwrap_or_default()
        .into_iter()
        .filter_map(|m| {
            let pods = m.pods?;
            Some((pods.metric.name, quantity(&pods.current.average_value?.0)))
        })
        .collect();
    Some((
        status.current_replicas.unwrap_or(0),
        status.desired_replicas,
        averages,
    ))
}

/// 100 connections (1 pod's worth) each sending 2.5 messages a second (250/s: 3 pods' worth at
/// 100 per pod): the HPA goes to 3 on the message rate, which the adapter serves within 10 % of
/// what the load sends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_message_rate_drives_the_scale_when_it_is_the_larger_need() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let mut cluster = Cluster::start(Options {
        adapter_args: vec![
            "--scrape-interval=1s".into(),
            format!("--metric={METRIC}=websocket_connections_active"),
            format!("--metric={RATE_METRIC}=rate(websocket_messages_received_total[10s])"),
        ],
        ..Options::default()
    })
    .await;
    let lb = start_service(&mut cluster, Balance::RoundRobin).await;
    cluster.kubectl_apply(&deployment(1)).await;
    cluster.kubectl_apply(&two_metric_hpa()).await;
    wait_for_backends(&cluster, &lb, 1).await;

    let load = Arc::new(LoadGenerator::new(LoadPlan {
        targets: vec![format!("ws://{}/ws/echo", lb.addr)],
        steps: vec![step(100, HOLD_UNTIL_ENDED)],
        churn_per_sec: 0.0,
        messages_per_sec: 2.5,
        deadline: Some(LOAD_DEADLINE),
    }));
    let runner = load.clone();
    let load_task = tokio::spawn(async move { runner.run(std::future::pending()).await });

    // The rate through kube-apiserver: the pod's received messages per second, once it holds
    // its 100 connections and the 10 s window is full of them.
    let path = format!("pods/*/{RATE_METRIC}?labelSelector=app%3Dws-demo");
    let last = std::sync::Mutex::new(None);
    let served = tokio::time::timeout(SETTLE_GIVE_UP, async {
        loop {
            if let Ok(items) = objects::raw_items(&cluster, &path).await {
                let total: f64 = items.iter().map(|(_, _, v)| v).sum();
                if (total - 250.0).abs() <= 25.0 {
                    return total;
                }
                *last.lock().expect("last") = Some(items);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "the served message rate never came within 10 % of 250/s; last {:?}",
            last.lock().expect("last")
        )
    });
    eprintln!("served message rate {served:.1}/s for 250/s sent");

    let last = std::sync::Mutex::new(None);
    let settled = tokio::time::timeout(SETTLE_GIVE_UP, async {
        loop {
            let state = hpa_metrics(&cluster.client).await;
            // At 3 replicas, and averaged over 3 pods: the status can say 3 replicas while its
            // averages still come from the sync before the third pod had a value (100 connections
            // over 2 pods read 50).
            if let Some((3, 3, averages)) = &state
                && averages.contains_key(RATE_METRIC)
                && averages
                    .get(METRIC)
                    .is_some_and(|c| *c <= 100.0 / 3.0 + 1.0)
            {
                return averages.clone();
            }
            *last.lock().expect("last") = state;
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "the HPA did not settle at 3 on both metrics, averaged over 3 pods; last (current, desired, averages) {:?}",
            last.lock().expect("last")
        )
    });
    // At 3 pods: connections ~33 per pod (they would want 1 pod), messages ~83 per pod (3).
    let connections = settled[METRIC];
    let messages = settled[RATE_METRIC];
    assert!(
        connections <= 100.0 / 3.0 + 1.0 && messages > connections,
        "the message rate must be what drives the scale: {settled:?}"
    );
    assert_eq!(load.progress().open, 100, "the load holds its connections");
    load_task.abort();
}
