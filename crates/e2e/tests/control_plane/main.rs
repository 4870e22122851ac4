//! Control-plane tests: the adapter behind the real kube-aggregator, read by the real HPA
//! controller. etcd, kube-apiserver and kube-controller-manager are built from their Go modules
//! (`scripts/build-control-plane.sh`, pinned in `go/`); a node agent runs each pod as a real
//! `ws-demo serve` process on its own loopback address; HAProxy, its backends following the demo
//! pods as a Service's endpoints would, is the load balancer the load generator connects through.
//! `balance` holds the scenarios of "connections follow the replicas" (issue 15): rebalancing
//! after a scale-up, deletion cost on a scale-down, a rolling update, a frozen pod. `objects`
//! holds the Object metrics scenario (issue 13): a StatefulSet scaled on its own connections.
//!
//! Run with `make control-plane` (README). The scenarios write their timelines as CSV and SVG
//! under `target/control-plane/`.

use ws_e2e as support;

mod auth;
mod balance;
mod cluster;
mod external;
mod load_balancer;
mod node_agent;
mod objects;
mod pki;
mod pod_network;
mod pod_spec;
mod rates;
mod reload;
mod serving_ca;
mod shipped;
mod timeline;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use kube::{Api, Client};
use ws_demo::load::{LoadGenerator, LoadPlan, Step, Summary};

use cluster::{Cluster, GIVE_UP, Options};
use load_balancer::{Balance, LoadBalancer};
use timeline::{PodSample, Row, StepMark};

/// The tests of this file share the machine's two cores and ports; one control plane at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const NAMESPACE: &str = "default";
const METRIC: &str = "websocket_connections";
const TARGET_AVERAGE: u32 = 100;

/// Deployment `ws-demo`: pods bound to the agent's node, opted in to scraping on port 8080.
fn deployment(replicas: u32) -> String {
    deployment_with(replicas, &[], 0)
}

/// [`deployment`] with more pod-template `annotations` (`ws-metrics-adapter.io/shed-path`, …)
/// and `minReadySeconds`. A rolling update adds one pod before it removes one (maxSurge 1,
/// maxUnavailable 0), and moves on once the new pod has been Ready for `min_ready_seconds`.
fn deployment_with(replicas: u32, annotations: &[(&str, &str)], min_ready_seconds: u32) -> String {
    let extra: String = annotations
        .iter()
        .map(|(k, v)| format!("\n        {k}: \"{v}\""))
        .collect();
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: ws-demo, namespace: {NAMESPACE}}}
spec:
  replicas: {replicas}
  minReadySeconds: {min_ready_seconds}
  selector: {{matchLabels: {{app: ws-demo}}}}
  strategy:
    type: RollingUpdate
    rollingUpdate: {{maxSurge: 1, maxUnavailable: 0}}
  template:
    metadata:
      labels: {{app: ws-demo}}
      annotations:
        ws-metrics-adapter.io/scrape: "true"
        ws-metrics-adapter.io/port: "{port}"{extra}
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

/// Starts the load balancer in front of the demo pods (`app=ws-demo`, port 8080: what Service
/// `ws-demo` would select), balancing with `balance`.
async fn start_service(cluster: &mut Cluster, balance: Balance) -> LoadBalancer {
    cluster
        .start_load_balancer("app=ws-demo", node_agent::POD_PORT, balance)
        .await
}

/// Waits (up to [`GIVE_UP`]) until the load balancer sends new connections to exactly `n` pods.
async fn wait_for_backends(cluster: &Cluster, lb: &LoadBalancer, n: usize) {
    cluster
        .wait(
            &format!("{n} ready backends in HAProxy"),
            GIVE_UP,
            || async { lb.ready_backends().await.len() == n },
        )
        .await;
}

/// HPA on the average connections per pod. Scale-up may add up to 10 pods at once (the default
/// policy allows max(4 pods, 100 %) per 15 s, which would make 1 → 6 two steps); scale-down
/// stabilizes over `scale_down_window` seconds instead of the default 300.
fn hpa(min: u32, max: u32, scale_down_window: u32) -> String {
    format!(
        r#"apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {{name: ws-demo, namespace: {NAMESPACE}}}
spec:
  scaleTargetRef: {{apiVersion: apps/v1, kind: Deployment, name: ws-demo}}
  minReplicas: {min}
  maxReplicas: {max}
  metrics:
  - type: Pods
    pods:
      metric: {{name: {METRIC}}}
      target: {{type: AverageValue, averageValue: "{TARGET_AVERAGE}"}}
  behavior:
    scaleUp:
      stabilizationWindowSeconds: 0
      policies: [{{type: Pods, value: 10, periodSeconds: 15}}]
    scaleDown:
      stabilizationWindowSeconds: {scale_down_window}
      policies: [{{type: Percent, value: 100, periodSeconds: 15}}]
"#
    )
}

/// A `resource.Quantity` string as a number (the forms the adapter writes: `600`, `1500m`, `2k`).
fn quantity(s: &str) -> f64 {
    let (digits, scale) = match s.as_bytes().last() {
        Some(b'm') => (&s[..s.len() - 1], 1e-3),
        Some(b'k') => (&s[..s.len() - 1], 1e3),
        Some(b'M') => (&s[..s.len() - 1], 1e6),
        Some(b'G') => (&s[..s.len() - 1], 1e9),
        _ => (s, 1.0),
    };
    digits
        .parse::<f64>()
        .unwrap_or_else(|e| panic!("quantity {s:?}: {e}"))
        * scale
}

/// One answer of the custom metrics API: pod → value.
#[derive(Debug, Default)]
struct Answer {
    values: BTreeMap<String, f64>,
}

/// What the HPA's request returns (`pods/*/websocket_connections?labelSelector=app=ws-demo`),
/// through kube-apiserver and the aggregator.
async fn api_answer(client: &Client, version: &str) -> Result<Answer, String> {
    let path = format!(
        "/apis/custom.metrics.k8s.io/{version}/namespaces/{NAMESPACE}/pods/%2A/{METRIC}?labelSelector=app%3Dws-demo"
    );
    let req = http::Request::get(path).body(Vec::new()).expect("request");
    let text = client.request_text(req).await.map_err(|e| e.to_string())?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    let mut answer = Answer::default();
    for item in v["items"].as_array().ok_or("no items")? {
        let name = item["describedObject"]["name"].as_str().ok_or("no name")?;
        let value = quantity(item["value"].as_str().ok_or("no value")?);
        answer.values.insert(name.to_owned(), value);
    }
    Ok(answer)
}

/// Waits (up to [`GIVE_UP`]) until the API answers exactly `want` (pod → value) for the demo pods.
async fn wait_for_answer(cluster: &Cluster, what: &str, want: &BTreeMap<String, f64>) {
    cluster
        .wait(what, GIVE_UP, || async {
            api_answer(&cluster.client, "v1beta2")
                .await
                .is_ok_and(|a| &a.values == want)
        })
        .await;
}

/// How long a pod's `/metrics` may take to answer the sampler: a frozen pod (SIGSTOP) never
/// answers, and is then left out of the sample instead of stalling it.
const POD_READ_TIMEOUT: Duration = Duration::from_secs(2);

/// A pod's `/metrics`, or `None` when it did not answer 200 within [`POD_READ_TIMEOUT`].
async fn pod_metrics(addr: SocketAddr) -> Option<String> {
    match tokio::time::timeout(POD_READ_TIMEOUT, support::plain_get(addr, "/metrics")).await {
        Ok(Ok((200, body))) => Some(body),
        _ => None,
    }
}

/// The sum of every series of metric `name` (whatever its labels) in a text exposition.
fn sum_series(body: &str, name: &str) -> f64 {
    body.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

/// Connections each pod process holds, read from its own `/metrics` (the truth); pods that do
/// not answer are left out.
async fn held(pods: &node_agent::Pods) -> BTreeMap<String, f64> {
    let reads = pods.pods().into_iter().map(|(name, addr)| async move {
        let body = pod_metrics(addr).await?;
        Some((name, sum_series(&body, "websocket_connections_active")))
    });
    futures::future::join_all(reads)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// One sample of a scenario: the HPA's status, what the API answers for the HPA's request, and
/// every pod's own count and readiness, read together; the row's time is taken on `clock` once
/// they have all answered (a frozen pod's read answered by a thaw shows after the thaw).
async fn sample(client: &Client, agent: &node_agent::Pods, clock: Instant) -> (Row, HpaState) {
    let (hpa, answer, held) = tokio::join!(
        hpa_state(client),
        api_answer(client, "v1beta2"),
        held(agent)
    );
    let t = clock.elapsed().as_secs_f64();
    let answer = match answer {
        Ok(a) => Some(a.values),
        Err(e) => {
            eprintln!("t={t:.1}s: API read failed: {e}");
            None
        }
    };
    let ready = agent.ready();
    let pods = agent
        .pods()
        .into_iter()
        .map(|(name, _)| {
            let pod = PodSample {
                held: held.get(&name).copied(),
                api: answer.as_ref().and_then(|a| a.get(&name).copied()),
                ready: ready.contains(&name),
            };
            (name, pod)
        })
        .collect();
    let row = Row {
        t,
        held: held.values().sum(),
        api_sum: answer.as_ref().map(|v| v.values().sum()),
        api_pods: answer.as_ref().map(BTreeMap::len),
        desired: hpa.desired,
        current: hpa.current,
        pods,
    };
    (row, hpa)
}

/// One row a second of `samples` (taken more often), for the CSV and the plot.
fn one_a_second(samples: &[Row]) -> Vec<Row> {
    let mut rows: Vec<Row> = Vec::new();
    for sample in samples {
        if rows.last().is_none_or(|r| sample.t - r.t >= 1.0) {
            rows.push(sample.clone());
        }
    }
    rows
}

/// Waits (up to [`GIVE_UP`]) until the HPA runs `replicas` replicas, wants as many, and has
/// computed from the metric.
async fn wait_for_hpa_at(cluster: &Cluster, replicas: i32) {
    let client = cluster.client.clone();
    cluster
        .wait(
            &format!("the HPA at {replicas} replicas with its metric"),
            GIVE_UP,
            || {
                let client = client.clone();
                async move {
                    let api: Api<HorizontalPodAutoscaler> = Api::namespaced(client, NAMESPACE);
                    api.get_status("ws-demo").await.is_ok_and(|h| {
                        let s = h.status.unwrap_or_default();
                        s.current_replicas == Some(replicas)
                            && s.desired_replicas == replicas
                            && s.current_metrics.is_some_and(|m| !m.is_empty())
                    })
                }
            },
        )
        .await;
}

/// What the HPA's status says.
#[derive(Debug, Clone, Copy)]
struct HpaState {
    /// Desired replicas (-1 when the status could not be read).
    desired: i32,
    /// Current replicas (-1 when the status could not be read).
    current: i32,
    /// The average connections per pod the HPA computed at its last sync (its
    /// `currentMetrics[].pods.current.averageValue`), over the pods it had values for.
    average: Option<f64>,
}

/// The HPA's status.
async fn hpa_state(client: &Client) -> HpaState {
    let api: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), NAMESPACE);
    match api.get_status("ws-demo").await {
        Ok(h) => {
            let status = h.status.unwrap_or_default();
            let average = status
                .current_metrics
                .unwrap_or_default()
                .into_iter()
                .find_map(|m| m.pods?.current.average_value)
                .map(|q| quantity(&q.0));
            HpaState {
                desired: status.desired_replicas,
                current: status.current_replicas.unwrap_or(0),
                average,
            }
        }
        Err(_) => HpaState {
            desired: -1,
            current: -1,
            average: None,
        },
    }
}

/// `(desired, current)` replicas from the HPA's status.
async fn hpa_replicas(client: &Client) -> (i32, i32) {
    let s = hpa_state(client).await;
    (s.desired, s.current)
}

/// The hold of a step that the test ends itself ([`LoadGenerator::end_step`], or by aborting
/// the load): longer than any give-up deadline, so that it never ends by time.
const HOLD_UNTIL_ENDED: Duration = Duration::from_secs(24 * 3600);

/// Time a load step has to open (or close) its connections: the hold starts when the count is
/// reached, not after a fixed ramp, and a step short of it after this long ends the run with
/// [`ws_demo::load::Summary::unreached`]. Generous: a loaded 2-core machine is 5-10x slower.
const LOAD_DEADLINE: Duration = Duration::from_secs(300);

/// Starts a load generator (the library behind `ws-demo load`) on `target` (the load balancer,
/// or one pod), with count-ended steps ([`LOAD_DEADLINE`]).
fn start_load(
    target: SocketAddr,
    steps: Vec<Step>,
) -> (Arc<LoadGenerator>, tokio::task::JoinHandle<Summary>) {
    let load = Arc::new(LoadGenerator::new(LoadPlan {
        targets: vec![format!("ws://{target}/ws/echo")],
        steps,
        churn_per_sec: 0.0,
        messages_per_sec: 0.0,
        deadline: Some(LOAD_DEADLINE),
    }));
    let runner = load.clone();
    let task = tokio::spawn(async move { runner.run(std::future::pending()).await });
    (load, task)
}

fn step(connections: usize, hold: Duration) -> Step {
    Step {
        connections,
        rate: 1000.0,
        hold,
    }
}

/// Pod-list reads (`pods/*/METRIC?labelSelector=…`, the HPA's request) the adapter answered with
/// 200 so far, from its own `/metrics`.
async fn pod_list_reads(cluster: &Cluster) -> f64 {
    const SERIES: &str = "ws_metrics_adapter_api_request_duration_seconds_count{route=\"pods_selector\",code=\"200\"}";
    let (_, metrics) = support::plain_get(cluster.adapter_metrics, "/metrics")
        .await
        .expect("adapter /metrics");
    support::e2e::sample(&metrics, SERIES)
        .unwrap_or_else(|| panic!("{SERIES} in adapter /metrics:\n{metrics}"))
}

/// Where timelines go: `target/control-plane/`.
fn out_dir() -> PathBuf {
    let dir = support::e2e::workspace_root().join("target/control-plane");
    std::fs::create_dir_all(&dir).expect("create target/control-plane");
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apiservice_available_and_exact_counts_through_kube_apiserver() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let cluster = Cluster::start(Options::default()).await;
    cluster.kubectl_apply(&deployment(3)).await;
    let pods = cluster.agent.pods.clone();
    cluster
        .wait("3 demo pods ready", GIVE_UP, || {
            let pods = pods.clone();
            async move { pods.endpoints("app", "ws-demo").len() == 3 }
        })
        .await;

    // Distinct counts per pod, opened straight to each pod.
    let mut loads = Vec::new();
    let mut want = BTreeMap::new();
    for (i, (name, addr)) in pods.pods().into_iter().enumerate() {
        let count = 3 + 4 * i;
        want.insert(name, count as f64);
        let load = Arc::new(LoadGenerator::new(LoadPlan {
            targets: vec![format!("ws://{addr}/ws/echo")],
            steps: vec![step(count, HOLD_UNTIL_ENDED)],
            churn_per_sec: 0.0,
            messages_per_sec: 0.0,
            deadline: Some(LOAD_DEADLINE),
        }));
        let runner = load.clone();
        loads.push(tokio::spawn(async move {
            runner.run(std::future::pending()).await;
        }));
    }

    // Through kubectl, as a user would: `*` is sent as %2A by kubectl itself.
    for version in ["v1beta2", "v1beta1"] {
        let path = format!(
            "/apis/custom.metrics.k8s.io/{version}/namespaces/{NAMESPACE}/pods/*/{METRIC}?labelSelector=app%3Dws-demo"
        );
        let started = Instant::now();
        loop {
            let (ok, out, err) = cluster.kubectl(&["get", "--raw", &path]).await;
            assert!(ok, "kubectl get --raw {path}: {err}");
            let v: serde_json::Value = serde_json::from_str(&out).expect("JSON from kubectl");
            assert_eq!(v["kind"], "MetricValueList", "{out}");
            assert_eq!(
                v["apiVersion"],
                format!("custom.metrics.k8s.io/{version}"),
                "{out}"
            );
            let got: BTreeMap<String, f64> = v["items"]
                .as_array()
                .expect("items")
                .iter()
                .map(|i| {
                    let name = i["describedObject"]["name"]
                        .as_str()
                        .expect("name")
                        .to_owned();
                    // v1beta1 names the metric in `metricName`, v1beta2 in `metric.name`.
                    let metric = if version == "v1beta1" {
                        &i["metricName"]
                    } else {
                        &i["metric"]["name"]
                    };
                    assert_eq!(metric, METRIC, "{out}");
                    (name, quantity(i["value"].as_str().expect("value")))
                })
                .collect();
            if got == want {
                eprintln!(
                    "{version}: exact counts through kubectl {:.1} s after the first read",
                    started.elapsed().as_secs_f64()
                );
                break;
            }
            assert!(
                started.elapsed() < GIVE_UP,
                "{version}: API answers {got:?}, pods hold {want:?} after {GIVE_UP:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    // One pod by name.
    let (name, count) = want.iter().next().expect("a pod");
    let (ok, out, err) = cluster
        .kubectl(&[
            "get",
            "--raw",
            &format!(
                "/apis/custom.metrics.k8s.io/v1beta2/namespaces/{NAMESPACE}/pods/{name}/{METRIC}"
            ),
        ])
        .await;
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(v["items"].as_array().map(Vec::len), Some(1), "{out}");
    assert_eq!(
        quantity(v["items"][0]["value"].as_str().expect("value")),
        *count
    );

    // The Deployment and its ReplicaSet as Objects: the sum over their pods, by name and by `*`.
    let total: f64 = want.values().sum();
    objects::wait_for_items(
        &cluster,
        &format!("deployments.apps/ws-demo/{METRIC}"),
        &[("Deployment", "ws-demo", total)],
    )
    .await;
    objects::wait_for_items(
        &cluster,
        &format!("deployments.apps/*/{METRIC}"),
        &[("Deployment", "ws-demo", total)],
    )
    .await;
    let replica_sets: Api<ReplicaSet> = Api::namespaced(cluster.client.clone(), NAMESPACE);
    let listed = replica_sets
        .list(&Default::default())
        .await
        .expect("list ReplicaSets");
    let [rs] = listed.items.as_slice() else {
        panic!("one ReplicaSet of ws-demo, found {}", listed.items.len());
    };
    let rs = rs.metadata.name.clone().expect("a name");
    objects::wait_for_items(
        &cluster,
        &format!("replicasets.apps/{rs}/{METRIC}"),
        &[("ReplicaSet", &rs, total)],
    )
    .await;

    // The adapter's own 404 messages come back through kube-apiserver.
    let (ok, _, err) = cluster
        .kubectl(&[
            "get",
            "--raw",
            &format!("/apis/custom.metrics.k8s.io/v1beta2/namespaces/{NAMESPACE}/pods/no-such-pod/{METRIC}"),
        ])
        .await;
    assert!(!ok, "a missing pod must fail");
    assert!(
        err.contains("NotFound")
            && err.contains(&format!(
                "the server could not find the metric {METRIC} for pods no-such-pod"
            )),
        "kubectl stderr: {err}"
    );
    let (ok, _, err) = cluster
        .kubectl(&[
            "get",
            "--raw",
            &format!(
                "/apis/custom.metrics.k8s.io/v1beta2/namespaces/{NAMESPACE}/pods/*/no_such_metric"
            ),
        ])
        .await;
    assert!(!ok, "an unknown metric must fail");
    assert!(
        err.contains("NotFound") && err.contains("no_such_metric"),
        "kubectl stderr: {err}"
    );

    // Discovery through the aggregator lists the resources.
    let (ok, out, err) = cluster
        .kubectl(&["get", "--raw", "/apis/custom.metrics.k8s.io/v1beta2"])
        .await;
    assert!(ok, "{err}");
    for resource in [
        "pods",
        "namespaces",
        "deployments.apps",
        "statefulsets.apps",
        "replicasets.apps",
        "services",
    ] {
        assert!(out.contains(&format!("\"{resource}/{METRIC}\"")), "{out}");
    }
    for task in loads {
        task.abort();
    }
}

/// What one scale-up/scale-down run measured.
#[derive(Debug)]
struct Lags {
    /// Load step → first change of the HPA's desired replicas. Unit: seconds.
    up_first_change: f64,
    /// Load step → desired replicas reach 6.
    up_settled: f64,
    /// Load drop → first change of desired replicas (includes the stabilization window).
    down_first_change: f64,
    /// Load drop → desired replicas reach 2.
    down_settled: f64,
    /// Values the adapter served during the run (to the HPA and to this test's sampler).
    served: f64,
    /// Share of them at most 1.1 s old (scrape interval + 100 ms) when served.
    served_within_interval: f64,
    /// Mean age of the served values. Unit: seconds.
    age_mean: f64,
}

/// Time each load step of the scale-up/scale-down scenario has for the HPA to settle (pods to
/// start or stop, the HPA to sync on them) before the test fails: a give-up deadline.
const SETTLE_GIVE_UP: Duration = Duration::from_secs(600);

/// What each load step of the scale-up/scale-down scenario waits for: `(connections, replicas)`.
/// The step ends (the next one starts) once the HPA has settled on it: desired and current
/// replicas at `replicas`, the API serving that many pods, and the HPA's own last computation
/// at `connections / replicas` per pod, that is over every pod of the new count.
const SETTLE: [(usize, i32); 2] = [(600, 6), (150, 2)];

/// Deployment at 1 replica, HPA min 1 max 10 on an average of 100 connections per pod; the load
/// generator opens 600 connections through the Service, holds them until the HPA has settled at
/// 6, drops to 150 and holds until it has settled at 2 ([`SETTLE`]). Samples four times a second
/// (the CSV keeps one row a second), asserts the HPA goes to exactly 6 and stays there until the
/// drop, then to exactly 2, and writes the timeline.
async fn scale_up_then_down(sync: Duration) {
    const SCALE_DOWN_WINDOW: u32 = 10;
    let mut cluster = Cluster::start(Options {
        hpa_sync_period: sync,
        adapter_args: vec!["--scrape-interval=1s".into()],
        ..Options::default()
    })
    .await;
    let lb = start_service(&mut cluster, Balance::RoundRobin).await;
    cluster.kubectl_apply(&deployment(1)).await;
    cluster.kubectl_apply(&hpa(1, 10, SCALE_DOWN_WINDOW)).await;
    wait_for_hpa_at(&cluster, 1).await;
    wait_for_backends(&cluster, &lb, 1).await;

    let steps = SETTLE
        .iter()
        .map(|&(connections, _)| step(connections, HOLD_UNTIL_ENDED))
        .collect();
    let (load, load_task) = start_load(lb.addr, steps);
    let started = Instant::now();
    let mut samples: Vec<Row> = Vec::new();
    let mut marks: Vec<StepMark> = Vec::new();
    // The spread when the HPA settled at 6 (connections through round-robin never move).
    let mut settled_at_6: Option<timeline::Spread> = None;
    // Ends when the last step has settled, or when the load stops on its own (a step short of
    // its count at LOAD_DEADLINE: asserted below).
    while !load_task.is_finished() {
        let t = started.elapsed().as_secs_f64();
        let progress = load.progress();
        if progress.step > marks.len() {
            marks.push(StepMark {
                t,
                label: format!("load → {}", progress.desired),
            });
        }
        let (row, hpa) = sample(&cluster.client, &cluster.agent.pods, started).await;
        samples.push(row.clone());
        if let Some(&(connections, replicas)) = SETTLE.get(progress.step.wrapping_sub(1)) {
            let settled = row.desired == replicas
                && row.current == replicas
                && row.api_pods == usize::try_from(replicas).ok()
                && hpa.average == Some(connections as f64 / f64::from(replicas));
            let since = marks.get(progress.step - 1).map_or(0.0, |m| t - m.t);
            if settled {
                eprintln!(
                    "t={t:.1}s: step {} ({connections} connections) settled at {replicas} \
                     replicas {since:.1} s after it started; ending it",
                    progress.step
                );
                if progress.step == 1 {
                    settled_at_6 = row.spread();
                }
                load.end_step(progress.step);
                if progress.step == SETTLE.len() {
                    break;
                }
            } else if since > SETTLE_GIVE_UP.as_secs_f64() {
                load_task.abort();
                panic!(
                    "step {} ({connections} connections): the HPA did not settle at {replicas} \
                     within {SETTLE_GIVE_UP:?} (last HPA state {hpa:?}): {samples:#?}",
                    progress.step
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let summary = load_task.await.expect("the load task did not panic");
    assert!(
        summary.unreached.is_none() && summary.steps_reached == 2,
        "the load did not reach both steps' counts: {summary}"
    );

    // The CSV and plot keep one row a second; lags are read from every sample.
    let rows = one_a_second(&samples);
    let name = format!("hpa-sync-{}s", sync.as_secs());
    let dir = out_dir();
    timeline::write_csv(&dir.join(format!("timeline-{name}.csv")), &rows);
    timeline::write_svg(
        &dir.join(format!("timeline-{name}.svg")),
        &format!(
            "HPA on live WebSocket connections: target 100 per pod, HPA sync period {} s, scrape every 1 s",
            sync.as_secs()
        ),
        &rows,
        &marks,
    );

    assert_eq!(marks.len(), 2, "both load steps ran: {marks:?}");
    let (up, down) = (marks[0].t, marks[1].t);
    let first = |from: f64, pred: &dyn Fn(&Row) -> bool| {
        samples
            .iter()
            .find(|r| r.t >= from && pred(r))
            .map(|r| r.t - from)
    };
    let up_settled = first(up, &|r| r.desired == 6)
        .unwrap_or_else(|| panic!("desired replicas never reached 6: {rows:#?}"));
    // Settled at exactly 6: from the first 6 until the drop, and 6 running before the drop.
    let before_drop: Vec<&Row> = samples
        .iter()
        .filter(|r| r.t >= up + up_settled && r.t < down)
        .collect();
    assert!(
        before_drop.iter().all(|r| r.desired == 6),
        "desired replicas left 6 before the drop: {rows:#?}"
    );
    assert!(
        before_drop
            .last()
            .is_some_and(|r| r.current == 6 && r.api_pods == Some(6)),
        "6 pods were not running and served before the drop: {rows:#?}"
    );
    // Pods always exist from here on: an answer without any would be a false zero to the HPA.
    let empty: Vec<&Row> = samples
        .iter()
        .filter(|r| r.t > up && r.api_pods == Some(0))
        .collect();
    assert!(empty.is_empty(), "the API answered no pods at {empty:#?}");
    let down_settled = first(down, &|r| r.desired == 2)
        .unwrap_or_else(|| panic!("desired replicas never reached 2: {rows:#?}"));
    // The loop above ended on the HPA settled at 2 (SETTLE), not on the load running out.
    assert!(
        samples
            .last()
            .is_some_and(|r| r.desired == 2 && r.current == 2 && r.api_pods == Some(2)),
        "the HPA did not settle at 2: {rows:#?}"
    );
    // The wire's timestamps have whole seconds; the adapter's own histogram has the real ages.
    let (_, metrics) = support::plain_get(cluster.adapter_metrics, "/metrics")
        .await
        .expect("adapter /metrics");
    let series = |s: &str| {
        support::e2e::sample(
            &metrics,
            &format!("ws_metrics_adapter_served_value_age_seconds{s}"),
        )
        .unwrap_or_else(|| panic!("served_value_age{s} in adapter /metrics"))
    };
    let served = series("_count");
    let lags = Lags {
        up_first_change: first(up, &|r| r.desired != 1).expect("desired changed"),
        up_settled,
        down_first_change: first(down, &|r| r.desired != 6).expect("desired changed"),
        down_settled,
        served,
        served_within_interval: series("_bucket{le=\"1.1\"}") / served,
        age_mean: series("_sum") / served,
    };
    eprintln!(
        "TIMELINE {name}: load step 1→600: desired changed after {:.1} s, reached 6 after {:.1} s; \
         drop 600→150: desired changed after {:.1} s, reached 2 after {:.1} s \
         (scale-down stabilization window {SCALE_DOWN_WINDOW} s); \
         values served: {}, {:.2} % at most 1.1 s old, mean age {:.2} s; files in {}",
        lags.up_first_change,
        lags.up_settled,
        lags.down_first_change,
        lags.down_settled,
        lags.served,
        lags.served_within_interval * 100.0,
        lags.age_mean,
        dir.display()
    );
    // The baseline of issue 15: what a scale-up leaves behind when nothing moves connections.
    let spread = settled_at_6.expect("step 1 settled (asserted above)");
    eprintln!(
        "BALANCE baseline {name} (HAProxy roundrobin, no --rebalance): when the HPA settled at 6, \
         imbalance max/mean {:.2} (max {}, min {}, mean {:.1} over the Ready pods)",
        spread.imbalance().unwrap_or(f64::NAN),
        spread.max,
        spread.min,
        spread.mean
    );
    // Figures are reported (README), not asserted: the machine is shared, and a busy one delays
    // scrapes. What holds however slow the machine: values were served, and none older than
    // --max-age (3 s, the default 3 × --scrape-interval) — the store leaves those out, measured
    // on the same clock reading as the histogram (api/mod.rs).
    let max_age = 3.0;
    let within_max_age = bucket(
        &metrics,
        "ws_metrics_adapter_served_value_age_seconds",
        max_age,
    )
    .unwrap_or_else(|| panic!("a served_value_age bucket at {max_age} s in adapter /metrics"));
    assert!(lags.served > 0.0, "{lags:?}");
    assert_eq!(
        within_max_age, lags.served,
        "values older than --max-age were served: {lags:?}"
    );
}

/// The cumulative count of histogram `name`'s bucket whose upper bound is `le`, whatever digits
/// the exposition writes the bound with (`3`, `3.0`).
fn bucket(metrics: &str, name: &str, le: f64) -> Option<f64> {
    let prefix = format!("{name}_bucket{{le=\"");
    metrics.lines().find_map(|line| {
        let rest = line.strip_prefix(&prefix)?;
        let (bound, rest) = rest.split_once('"')?;
        (bound.parse::<f64>().ok()? == le).then_some(())?;
        rest.rsplit_once(' ')?.1.parse().ok()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hpa_scales_up_to_6_and_down_to_2_with_1s_sync() {
    let _serial = ONE_AT_A_TIME.lock().await;
    scale_up_then_down(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hpa_scales_up_to_6_and_down_to_2_with_default_15s_sync() {
    let _serial = ONE_AT_A_TIME.lock().await;
    scale_up_then_down(Duration::from_secs(15)).await;
}

/// Three pods at exactly 100 connections each (the load spread round-robin by HAProxy), an
/// HPA at its target with no scale-down stabilization; then one pod's process is frozen (SIGSTOP:
/// its /metrics stops answering, its connections stay open). The adapter keeps that pod's last
/// good value until `--max-age`, then leaves the pod out, never serving a 0; the HPA, missing one
/// pod on what would be a scale-down, assumes it at target and holds 3 replicas.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hpa_does_not_scale_down_when_a_pods_metrics_stop_answering() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let mut cluster = Cluster::start(Options {
        hpa_sync_period: Duration::from_secs(1),
        adapter_args: vec!["--scrape-interval=1s".into(), "--max-age=3s".into()],
        ..Options::default()
    })
    .await;
    let lb = start_service(&mut cluster, Balance::RoundRobin).await;
    let client = cluster.client.clone();
    let pods = cluster.agent.pods.clone();
    cluster.kubectl_apply(&deployment(3)).await;
    wait_for_backends(&cluster, &lb, 3).await;
    let (_load, load_task) = start_load(lb.addr, vec![step(300, HOLD_UNTIL_ENDED)]);
    let even = BTreeMap::from_iter(pods.pods().into_iter().map(|(name, _)| (name, 100.0)));
    wait_for_answer(&cluster, "the API serves 100 for each of the 3 pods", &even).await;
    cluster.kubectl_apply(&hpa(1, 10, 0)).await;
    wait_for_hpa_at(&cluster, 3).await;

    let (frozen, _) = pods.pods().into_iter().next().expect("a pod");
    pods.signal(&frozen, "STOP");
    let started = Instant::now();
    // Something that must not happen (a scale-down) is watched for a count of events, not a
    // time: until the HPA has read the metric HPA_READS_WITHOUT times since the frozen pod was
    // first left out (after --max-age, 3 s). The HPA's reads are the adapter's count of
    // successful pod-list reads minus this test's own, counted from that moment.
    const HPA_READS_WITHOUT: f64 = 10.0;
    let mut own_reads = 0.0;
    let mut left_out_at: Option<(f64, f64)> = None;
    let mut hpa_reads = 0.0;
    while hpa_reads < HPA_READS_WITHOUT {
        let (desired, _) = hpa_replicas(&client).await;
        assert!(
            desired >= 3,
            "the HPA scaled down to {desired} while {frozen}'s metrics were not answering"
        );
        match api_answer(&client, "v1beta2").await {
            Ok(answer) => {
                own_reads += 1.0;
                for (pod, value) in &answer.values {
                    assert_eq!(*value, 100.0, "{pod} served {value} during the fault");
                }
                if left_out_at.is_none() && !answer.values.contains_key(&frozen) {
                    left_out_at = Some((pod_list_reads(&cluster).await, own_reads));
                    eprintln!(
                        "{frozen} left out {:.1} s after it froze",
                        started.elapsed().as_secs_f64()
                    );
                }
            }
            // A failed read (500) also makes the HPA hold; not what we serve here, though.
            Err(e) => panic!("API read failed during the fault: {e}"),
        }
        if let Some((reads_then, own_then)) = left_out_at {
            hpa_reads = pod_list_reads(&cluster).await - reads_then - (own_reads - own_then);
        }
        assert!(
            started.elapsed() < GIVE_UP,
            "after {GIVE_UP:?}: {frozen} left out: {}, HPA reads since: {hpa_reads}",
            left_out_at.is_some()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let (desired, _) = hpa_replicas(&client).await;
    assert!(
        desired >= 3,
        "the HPA scaled down to {desired} after {frozen} froze"
    );
    eprintln!(
        "{hpa_reads} HPA reads without {frozen}, {:.1} s after it froze: no scale-down",
        started.elapsed().as_secs_f64()
    );
    // And the HPA was computing from the metric all along (a failing read would also hold it).
    let api: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), NAMESPACE);
    let status = api
        .get_status("ws-demo")
        .await
        .expect("HPA")
        .status
        .unwrap_or_default();
    let active = status
        .conditions
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.type_ == "ScalingActive");
    assert!(
        active.as_ref().is_some_and(|c| c.status == "True"),
        "HPA not computing from the metric: {active:?}"
    );

    pods.signal(&frozen, "CONT");
    wait_for_answer(&cluster, "the thawed pod served again", &even).await;
    assert_eq!(hpa_replicas(&client).await.0, 3);
    load_task.abort();
}
