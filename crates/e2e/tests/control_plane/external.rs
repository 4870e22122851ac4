//! `external.metrics.k8s.io` through kube-apiserver (issue 13, `--serve-external-metrics`): the
//! APIService turns Available with a `caBundle`, `kubectl get --raw` reads the namespace's total
//! over the selected series, and an HPA `type: External` scales a Deployment on it.

use super::*;

/// The third APIService, as `overlays/external-metrics/api-service-external.yaml` registers it,
/// pointed at the harness's Service and port and with the adapter's CA.
fn external_apiservice(cluster: &Cluster) -> String {
    use base64::Engine;
    format!(
        r#"apiVersion: apiregistration.k8s.io/v1
kind: APIService
metadata: {{name: v1beta1.external.metrics.k8s.io}}
spec:
  group: external.metrics.k8s.io
  version: v1beta1
  service: {{name: ws-metrics-adapter, namespace: ws-metrics, port: {port}}}
  groupPriorityMinimum: 100
  versionPriority: 100
  caBundle: {ca}
"#,
        port = cluster.adapter_addr.port(),
        ca = base64::engine::general_purpose::STANDARD.encode(&cluster.pki.adapter_ca_pem),
    )
}

/// HPA on the namespace's echo connections per replica (External, AverageValue 100).
fn external_hpa() -> String {
    format!(
        r#"apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {{name: ws-demo, namespace: {NAMESPACE}}}
spec:
  scaleTargetRef: {{apiVersion: apps/v1, kind: Deployment, name: ws-demo}}
  minReplicas: 1
  maxReplicas: 5
  metrics:
  - type: External
    external:
      metric:
        name: {METRIC}
        selector: {{matchLabels: {{route: echo}}}}
      target: {{type: AverageValue, averageValue: "100"}}
  behavior:
    scaleUp:
      stabilizationWindowSeconds: 0
      policies: [{{type: Pods, value: 10, periodSeconds: 15}}]
"#
    )
}

/// 300 echo connections through the load balancer: the external total reads 300 through
/// kubectl and the HPA goes from 1 to 3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hpa_scales_on_an_external_metric_served_beside_the_custom_ones() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let mut cluster = Cluster::start(Options {
        adapter_args: vec![
            "--scrape-interval=1s".into(),
            "--serve-external-metrics".into(),
        ],
        ..Options::default()
    })
    .await;
    cluster.kubectl_apply(&external_apiservice(&cluster)).await;
    let client = cluster.client.clone();
    cluster
        .wait(
            "APIService v1beta1.external.metrics.k8s.io Available",
            GIVE_UP,
            || {
                let client = client.clone();
                async move {
                    cluster::apiservice_available(&client, "v1beta1.external.metrics.k8s.io").await
                }
            },
        )
        .await;
    let lb = start_service(&mut cluster, Balance::RoundRobin).await;
    cluster.kubectl_apply(&deployment(1)).await;
    cluster.kubectl_apply(&external_hpa()).await;
    wait_for_backends(&cluster, &lb, 1).await;
    let (_load, load_task) = start_load(lb.addr, vec![step(300, HOLD_UNTIL_ENDED)]);

    let path = format!(
        "/apis/external.metrics.k8s.io/v1beta1/namespaces/{NAMESPACE}/{METRIC}?labelSelector=route%3Decho"
    );
    let started = Instant::now();
    loop {
        let (ok, out, err) = cluster.kubectl(&["get", "--raw", &path]).await;
        if ok {
            let v: serde_json::Value = serde_json::from_str(&out).expect("JSON from kubectl");
            assert_eq!(v["kind"], "ExternalMetricValueList", "{out}");
            let value = v["items"][0]["value"].as_str().map(quantity);
            if value == Some(300.0) {
                assert_eq!(v["items"][0]["metricLabels"]["route"], "echo", "{out}");
                break;
            }
        }
        let last = if ok { out } else { err };
        assert!(
            started.elapsed() < GIVE_UP,
            "the external total never read 300: {last}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // The discovery document through the aggregator.
    let (ok, out, err) = cluster
        .kubectl(&["get", "--raw", "/apis/external.metrics.k8s.io/v1beta1"])
        .await;
    assert!(
        ok && out.contains(&format!("\"name\":\"{METRIC}\"")),
        "{out}{err}"
    );

    // The HPA's own reads of it: 300 over 1 replica → 3.
    let api: Api<HorizontalPodAutoscaler> = Api::namespaced(cluster.client.clone(), NAMESPACE);
    cluster
        .wait("the External HPA at 3 replicas", SETTLE_GIVE_UP, || {
            let api = api.clone();
            async move {
                api.get_status("ws-demo").await.is_ok_and(|h| {
                    let s = h.status.unwrap_or_default();
                    s.current_replicas == Some(3)
                        && s.desired_replicas == 3
                        && s.current_metrics.is_some_and(|m| {
                            m.iter().any(|m| {
                                m.external
                                    .as_ref()
                                    .and_then(|e| e.current.average_value.as_ref())
                                    .is_some_and(|q| quantity(&q.0) == 100.0)
                            })
                        })
                })
            }
        })
        .await;
    load_task.abort();
}
