//! Object metrics through kube-apiserver (issue 13): a StatefulSet of ws-demo scaled by an HPA
//! `type: Object` on the StatefulSet's own connections (`AverageValue`), and the object path
//! forms (`statefulsets.apps`, `services`, by name and by `*` with a `labelSelector`) read with
//! kubectl as a user would. The Deployment and ReplicaSet forms are read in
//! `apiservice_available_and_exact_counts_through_kube_apiserver`.

use super::*;

/// The StatefulSet the HPA scales: `ws-demo`, pods `ws-demo-0…` bound to the agent's node and
/// opted in to scraping, created in parallel (no ordinal-by-ordinal wait). The object itself
/// carries `team=rt`, which form B selects on.
fn stateful_set(replicas: u32) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: ws-demo, namespace: {NAMESPACE}, labels: {{team: rt}}}}
spec:
  replicas: {replicas}
  serviceName: ws-demo
  podManagementPolicy: Parallel
  selector: {{matchLabels: {{app: ws-demo}}}}
  template:
    metadata:
      labels: {{app: ws-demo}}
      annotations:
        ws-metrics-adapter.io/scrape: "true"
        ws-metrics-adapter.io/port: "{port}"
    spec:
      nodeName: {node}
      terminationGracePeriodSeconds: 5
      containers:
      - name: ws-demo
        image: ws-demo:local
        ports: [{{name: http, containerPort: {port}}}]
"#,
        port = node_agent::POD_PORT,
        node = node_agent::NODE_NAME,
    )
}

/// The StatefulSet's governing Service (headless: no ClusterIP to allocate), selecting its pods.
fn headless_service() -> String {
    format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: ws-demo, namespace: {NAMESPACE}}}
spec:
  clusterIP: None
  selector: {{app: ws-demo}}
  ports: [{{name: http, port: {port}}}]
"#,
        port = node_agent::POD_PORT,
    )
}

/// Connections per replica the Object HPA aims at.
const OBJECT_TARGET: u32 = 100;

/// HPA on the StatefulSet's own connections divided by its replicas (`AverageValue` of an
/// Object metric), scale-up at once, scale-down stabilized over 5 s.
fn object_hpa(min: u32, max: u32) -> String {
    format!(
        r#"apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {{name: ws-demo, namespace: {NAMESPACE}}}
spec:
  scaleTargetRef: {{apiVersion: apps/v1, kind: StatefulSet, name: ws-demo}}
  minReplicas: {min}
  maxReplicas: {max}
  metrics:
  - type: Object
    object:
      describedObject: {{apiVersion: apps/v1, kind: StatefulSet, name: ws-demo}}
      metric: {{name: {METRIC}}}
      target: {{type: AverageValue, averageValue: "{OBJECT_TARGET}"}}
  behavior:
    scaleUp:
      stabilizationWindowSeconds: 0
      policies: [{{type: Pods, value: 10, periodSeconds: 15}}]
    scaleDown:
      stabilizationWindowSeconds: 5
      policies: [{{type: Percent, value: 100, periodSeconds: 15}}]
"#
    )
}

/// `kubectl get --raw` of `path` under `/apis/custom.metrics.k8s.io/v1beta2/namespaces/default/`:
/// `(kind, name, value)` of each item, or kubectl's error.
pub(crate) async fn raw_items(
    cluster: &Cluster,
    path: &str,
) -> Result<Vec<(String, String, f64)>, String> {
    let full = format!("/apis/custom.metrics.k8s.io/v1beta2/namespaces/{NAMESPACE}/{path}");
    let (ok, out, err) = cluster.kubectl(&["get", "--raw", &full]).await;
    if !ok {
        return Err(err);
    }
    let v: serde_json::Value = serde_json::from_str(&out).map_err(|e| format!("{e}: {out}"))?;
    v["items"]
        .as_array()
        .ok_or_else(|| format!("no items: {out}"))?
        .iter()
        .map(|i| {
            let o = &i["describedObject"];
            let field = |v: &serde_json::Value| v.as_str().map(str::to_owned);
            match (field(&o["kind"]), field(&o["name"]), i["value"].as_str()) {
                (Some(kind), Some(name), Some(value)) => Ok((kind, name, quantity(value))),
                _ => Err(format!("an item without kind, name or value: {out}")),
            }
        })
        .collect()
}

/// Waits (up to [`GIVE_UP`]) until `kubectl get --raw` of `path` answers exactly `want`.
pub(crate) async fn wait_for_items(cluster: &Cluster, path: &str, want: &[(&str, &str, f64)]) {
    let want: Vec<(String, String, f64)> = want
        .iter()
        .map(|(k, n, v)| ((*k).to_owned(), (*n).to_owned(), *v))
        .collect();
    let last = std::sync::Mutex::new(None);
    let reached = tokio::time::timeout(GIVE_UP, async {
        loop {
            let got = raw_items(cluster, path).await;
            if got.as_ref().is_ok_and(|g| *g == want) {
                return;
            }
            *last.lock().expect("last answer") = Some(got);
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    })
    .await;
    assert!(
        reached.is_ok(),
        "{path}: want {want:?}, last answer {:?} after {GIVE_UP:?}",
        last.lock().expect("last answer")
    );
}

/// The HPA's status: `(current, desired, the Object metric's averageValue)`.
async fn object_hpa_state(client: &Client) -> Option<(i32, i32, Option<f64>)> {
    let api: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), NAMESPACE);
    let status = api.get_status("ws-demo").await.ok()?.status?;
    let average = status
        .current_metrics
        .unwrap_or_default()
        .into_iter()
        .find_map(|m| m.object?.current.average_value)
        .map(|q| quantity(&q.0));
    Some((
        status.current_replicas.unwrap_or(0),
        status.desired_replicas,
        average,
    ))
}

/// Waits (up to [`SETTLE_GIVE_UP`]) until the HPA runs and wants `replicas` and its last
/// computation saw `average` connections per replica.
async fn wait_for_object_hpa(cluster: &Cluster, replicas: i32, average: f64) {
    let last = std::sync::Mutex::new(None);
    let reached = tokio::time::timeout(SETTLE_GIVE_UP, async {
        loop {
            let state = object_hpa_state(&cluster.client).await;
            if state == Some((replicas, replicas, Some(average))) {
                return;
            }
            *last.lock().expect("last state") = state;
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    })
    .await;
    assert!(
        reached.is_ok(),
        "the Object HPA did not settle at {replicas} replicas and {average} per replica within \
         {SETTLE_GIVE_UP:?}; last (current, desired, average): {:?}",
        last.lock().expect("last state")
    );
}

/// StatefulSet at 1 replica, HPA min 1 max 5 on the StatefulSet's connections per replica
/// (target 100). 300 connections through the Service's load balancer → 3 replicas, every object
/// form answering 300 through kube-apiserver; 100 connections → back to 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hpa_scales_a_statefulset_on_its_own_connections() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let mut cluster = Cluster::start(Options {
        adapter_args: vec!["--scrape-interval=1s".into()],
        ..Options::default()
    })
    .await;
    let lb = start_service(&mut cluster, Balance::RoundRobin).await;
    cluster.kubectl_apply(&headless_service()).await;
    cluster.kubectl_apply(&stateful_set(1)).await;
    cluster.kubectl_apply(&object_hpa(1, 5)).await;
    wait_for_object_hpa(&cluster, 1, 0.0).await;
    wait_for_backends(&cluster, &lb, 1).await;

    let (load, load_task) = start_load(
        lb.addr,
        vec![step(300, HOLD_UNTIL_ENDED), step(100, HOLD_UNTIL_ENDED)],
    );
    wait_for_object_hpa(&cluster, 3, 100.0).await;
    let sts = format!("statefulsets.apps/ws-demo/{METRIC}");
    wait_for_items(&cluster, &sts, &[("StatefulSet", "ws-demo", 300.0)]).await;
    // The same pods through the Service; the StatefulSet by its own labels (form B); one route
    // (the load opens /ws/echo only).
    wait_for_items(
        &cluster,
        &format!("services/ws-demo/{METRIC}"),
        &[("Service", "ws-demo", 300.0)],
    )
    .await;
    wait_for_items(
        &cluster,
        &format!("statefulsets.apps/*/{METRIC}?labelSelector=team%3Drt"),
        &[("StatefulSet", "ws-demo", 300.0)],
    )
    .await;
    wait_for_items(
        &cluster,
        &format!("{sts}?metricLabelSelector=route%3Dchat"),
        &[("StatefulSet", "ws-demo", 0.0)],
    )
    .await;
    wait_for_items(
        &cluster,
        &format!("statefulsets.apps/*/{METRIC}?labelSelector=team%3Dnone"),
        &[],
    )
    .await;
    // A StatefulSet that does not exist: the adapter's 404 message through kube-apiserver.
    let err = raw_items(&cluster, &format!("statefulsets.apps/no-such/{METRIC}"))
        .await
        .expect_err("a missing StatefulSet must fail");
    assert!(
        err.contains("NotFound") && err.contains("statefulsets.apps \"no-such\" not found"),
        "kubectl stderr: {err}"
    );

    load.end_step(1);
    wait_for_object_hpa(&cluster, 1, 100.0).await;
    wait_for_items(&cluster, &sts, &[("StatefulSet", "ws-demo", 100.0)]).await;
    load_task.abort();
}
