//! The Grafana dashboard and the alerts of `overlays/monitoring` against a real Prometheus
//! (Debian's package) scraping real `ws-demo serve` pods and four adapters as the ServiceMonitor
//! would (static pods with the scrape source and with the Prometheus source; cluster mode against
//! a mock apiserver, authenticating and measuring with `--rebalance`, once with its
//! authentication config and once without): every target of every panel answers with data, the
//! per-workload and imbalance panels with the right values, and every alert's expression parses
//! and evaluates.

use ws_e2e as support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use support::demo_pod::DemoPod;
use support::e2e::workspace_root;
use support::prometheus::{Prometheus, QueryError};
use support::{Adapter, StaticPod, eventually_ok, static_pods_yaml};

const PODS: &str =
    "/apis/custom.metrics.k8s.io/v1beta2/namespaces/chat/pods/*/websocket_connections";
/// What the dashboard's variables stand for here. `$__rate_interval` is Grafana's 4 × scrape
/// interval (1 s here) at least; 10 s holds several samples.
const VARIABLES: &[(&str, &str)] = &[
    ("${datasource}", "prometheus"),
    ("$__rate_interval", "10s"),
    ("${namespace}", "chat"),
    ("$namespace", "chat"),
];
/// The job the ServiceMonitor gives the adapter (the Service's name), which the alerts name.
const ADAPTER_JOB: &str = "ws-metrics-adapter";

/// One target of one panel.
struct PanelQuery {
    panel: String,
    expr: String,
}

fn dashboard_queries(path: &Path) -> Vec<PanelQuery> {
    let text = std::fs::read_to_string(path).expect("read dashboard.json");
    let dash: Value = serde_json::from_str(&text).expect("dashboard.json is JSON");
    let mut out = Vec::new();
    let mut stack: Vec<Value> = dash["panels"].as_array().cloned().unwrap_or_default();
    while let Some(panel) = stack.pop() {
        stack.extend(panel["panels"].as_array().cloned().unwrap_or_default());
        if panel["type"] == "row" {
            continue;
        }
        let title = panel["title"].as_str().unwrap_or("(untitled)").to_owned();
        let targets = panel["targets"].as_array().cloned().unwrap_or_default();
        assert!(!targets.is_empty(), "panel {title:?} has no targets");
        for t in targets {
            let expr = t["expr"].as_str().unwrap_or_default();
            assert!(
                !expr.trim().is_empty(),
                "panel {title:?}: a target without expr"
            );
            out.push(PanelQuery {
                panel: title.clone(),
                expr: substitute(expr),
            });
        }
    }
    out
}

/// The expression with the dashboard's variables replaced; any other `$name` is a variable the
/// dashboard does not define (`$1` of `label_replace` is not one).
fn substitute(expr: &str) -> String {
    let mut e = expr.to_owned();
    for (var, value) in VARIABLES {
        e = e.replace(var, value);
    }
    let unknown = e.match_indices('$').any(|(i, _)| {
        e[i + 1..].starts_with(|c: char| c.is_ascii_alphabetic() || c == '_' || c == '{')
    });
    assert!(!unknown, "an unknown variable in {expr:?}");
    e
}

/// Every alert of the PrometheusRule: name and expression.
fn alert_rules(path: &Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(path).expect("read prometheus-rule.yaml");
    let rule: Value =
        ws_metrics_adapter::config::value::from_yaml(&text).expect("prometheus-rule.yaml is YAML");
    let mut out = Vec::new();
    for group in rule["spec"]["groups"].as_array().expect("spec.groups") {
        for r in group["rules"].as_array().expect("rules") {
            if let (Some(alert), Some(expr)) = (r["alert"].as_str(), r["expr"].as_str()) {
                out.push((alert.to_owned(), expr.to_owned()));
            }
        }
    }
    assert!(!out.is_empty(), "no alerts in {}", path.display());
    out
}

/// A plain-HTTP apiserver just large enough for cluster mode: `/version`, a LIST of each
/// collection in `lists` (path → items) and WATCHes that never send an event; everything else is
/// 404 (those watches, and the Lease, log it and retry). What the adapter scrapes comes from the
/// pods' annotations, as in a cluster.
async fn mock_apiserver(
    lists: Vec<(&'static str, &'static str, Vec<Value>)>,
) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    use hyper::service::service_fn;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind mock apiserver");
    let addr = listener.local_addr().expect("addr");
    let lists: std::sync::Arc<BTreeMap<&'static str, String>> = std::sync::Arc::new(
        lists
            .into_iter()
            .map(|(path, kind, items)| {
                let list = serde_json::json!({
                    "kind": kind, "metadata": {"resourceVersion": "100"}, "items": items,
                });
                (path, list.to_string())
            })
            .collect(),
    );
    let task = tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            while connections.try_join_next().is_some() {}
            let lists = lists.clone();
            connections.spawn(async move {
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let lists = lists.clone();
                    async move {
                        let watch = req.uri().query().unwrap_or("").contains("watch=true");
                        let path = req.uri().path();
                        let (code, body) = match path {
                            "/version" => (
                                200,
                                axum::body::Body::from(
                                    r#"{"major":"1","minor":"33","gitVersion":"v1.33.0"}"#,
                                ),
                            ),
                            _ if watch && lists.contains_key(path) => (
                                200,
                                axum::body::Body::from_stream(futures::stream::pending::<
                                    Result<bytes::Bytes, std::convert::Infallible>,
                                >()),
                            ),
                            _ if lists.contains_key(path) => {
                                (200, axum::body::Body::from(lists[path].clone()))
                            }
                            _ => (
                                404,
                                axum::body::Body::from(
                                    r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","reason":"NotFound","code":404}"#,
                                ),
                            ),
                        };
                        hyper::Response::builder()
                            .status(code)
                            .header("content-type", "application/json")
                            .body(body)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, task)
}

/// A Running, Ready pod of workload `app` opted in for scraping on `port`.
fn pod_json(name: &str, app: &str, port: u16) -> Value {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "chat",
            "uid": format!("uid-{name}"),
            "resourceVersion": "1",
            "labels": {"app": app},
            "annotations": {
                "ws-metrics-adapter.io/scrape": "true",
                "ws-metrics-adapter.io/port": port.to_string(),
            },
        },
        "spec": {"containers": [{"name": "ws", "image": "ws:latest"}]},
        "status": {"phase": "Running", "podIP": "127.0.0.1",
                   "conditions": [{"type": "Ready", "status": "True"}]},
    })
}

/// Deployment `ws` of namespace `chat`, steady at 2 replicas (not rolling: the controller sizes
/// it up).
fn deployment_json() -> Value {
    serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "ws", "namespace": "chat", "uid": "uid-ws", "resourceVersion": "1", "generation": 1},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "ws"}},
                 "template": {"metadata": {"labels": {"app": "ws"}}, "spec": {"containers": [{"name": "ws", "image": "ws:latest"}]}}},
        "status": {"observedGeneration": 1, "replicas": 2, "updatedReplicas": 2,
                   "availableReplicas": 2, "readyReplicas": 2},
    })
}

/// The HPA scaling Deployment `ws` on the served `websocket_connections`.
fn hpa_json() -> Value {
    serde_json::json!({
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "ws", "namespace": "chat", "uid": "uid-hpa", "resourceVersion": "1"},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "ws"},
            "minReplicas": 1, "maxReplicas": 10,
            "metrics": [{"type": "Pods", "pods": {
                "metric": {"name": "websocket_connections"},
                "target": {"type": "AverageValue", "averageValue": "100"},
            }}],
        },
    })
}

fn finite_values(result: &[Value]) -> usize {
    result
        .iter()
        .filter_map(|s| s["value"][1].as_str()?.parse::<f64>().ok())
        .filter(|v| v.is_finite())
        .count()
}

/// Writes a file_sd targets file atomically (Prometheus re-reads it on change).
fn write_targets(path: &Path, adapters: &[(&Adapter, &str)]) {
    let groups: Vec<Value> = adapters
        .iter()
        .map(|(a, pod)| {
            serde_json::json!({
                "targets": [a.metrics.to_string()],
                "labels": {"namespace": "ws-metrics", "pod": pod, "service": "ws-metrics-adapter"},
            })
        })
        .collect();
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_string(&groups).expect("json")).expect("write targets");
    std::fs::rename(&tmp, path).expect("rename targets");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_panel_has_data_and_every_alert_evaluates_in_a_real_prometheus() {
    let root = workspace_root();
    let monitoring = root.join("overlays/monitoring");
    let queries = dashboard_queries(&monitoring.join("dashboard.json"));
    let alerts = alert_rules(&monitoring.join("prometheus-rule.yaml"));

    // Two workloads as the cluster would name their pods: Deployment `ws`, StatefulSet `chat`.
    let binary = Prometheus::binary();
    let pods = vec![
        DemoPod::start("ws-7c6b8d9f5-x2k9p", 2).await,
        DemoPod::start("ws-7c6b8d9f5-m4n7q", 3).await,
        DemoPod::start("chat-0", 1).await,
    ];
    let entries: Vec<StaticPod<'_>> = pods
        .iter()
        .map(|p| StaticPod {
            namespace: "chat",
            name: p.name,
            labels: &[("app", "ws")],
            url: format!("http://{}/metrics", p.addr),
        })
        .collect();
    let pods_yaml = static_pods_yaml(&entries);
    let scrape = Adapter::start_static(
        &pods_yaml,
        &["--scrape-interval", "1s", "--scrape-timeout", "800ms"],
    )
    .await;

    // The demo pods with the labels a PodMonitor gives; the adapters through a file_sd list
    // written once they listen, under the ServiceMonitor's job, with its honorLabels.
    let dir = tempfile::tempdir().expect("tempdir");
    let targets_file = dir.path().join("adapters.json");
    std::fs::write(&targets_file, "[]").expect("write targets");
    let mut config = String::from(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 800ms\n  evaluation_interval: 1s\nscrape_configs:\n- job_name: ws-demo\n  static_configs:\n",
    );
    for p in &pods {
        config.push_str(&format!(
            "  - targets: ['{}']\n    labels: {{namespace: 'chat', pod: '{}'}}\n",
            p.addr, p.name
        ));
    }
    config.push_str(&format!(
        "- job_name: {ADAPTER_JOB}\n  honor_labels: true\n  file_sd_configs:\n  - files: ['{}']\n",
        targets_file.display()
    ));
    let mut prometheus = Prometheus::start(binary, dir.path(), &config);
    prometheus.wait_ready(Duration::from_secs(60)).await;

    let url = prometheus.url();
    let source = Adapter::start_static(
        &pods_yaml,
        &[
            "--source",
            "prometheus",
            "--prometheus-url",
            &url,
            "--prometheus-interval",
            "1s",
            "--prometheus-timeout",
            "800ms",
            "--max-age",
            "10s",
        ],
    )
    .await;
    // Cluster mode, authenticating every caller, over the same pods, the Deployment `ws` and
    // its HPA from a mock apiserver. The flags give both CAs (any CA will do: no caller here
    // presents a certificate), so no ConfigMap is read and the authentication config is in
    // force at once.
    let pod_items = pods
        .iter()
        .map(|p| {
            let app = if p.name.starts_with("chat-") {
                "chat"
            } else {
                "ws"
            };
            pod_json(p.name, app, p.addr.port())
        })
        .collect();
    let (mock, mock_task) = mock_apiserver(vec![
        ("/api/v1/pods", "PodList", pod_items),
        (
            "/apis/apps/v1/deployments",
            "DeploymentList",
            vec![deployment_json()],
        ),
        ("/apis/apps/v1/statefulsets", "StatefulSetList", vec![]),
        (
            "/apis/autoscaling/v2/horizontalpodautoscalers",
            "HorizontalPodAutoscalerList",
            vec![hpa_json()],
        ),
    ])
    .await;
    let cluster_dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = cluster_dir.path().join("kubeconfig");
    support::e2e::write_kubeconfig(&kubeconfig, &format!("http://{mock}"), None, None);
    let ca = scrape.ca_path().display().to_string();
    let argv: Vec<String> = [
        "ws-metrics-adapter",
        "serve",
        "--kubeconfig",
        &kubeconfig.display().to_string(),
        "--client-ca-file",
        &ca,
        "--requestheader-client-ca-file",
        &ca,
        "--cert-dir",
        &cluster_dir.path().join("certs").display().to_string(),
        "--scrape-interval",
        "1s",
        "--scrape-timeout",
        "800ms",
        // Measures every workload an HPA scales on a served metric (the imbalance panel); the
        // Lease is 404 here, so this replica never leads and never acts on pods.
        "--rebalance",
        "--rebalance-lease-namespace",
        "ws-metrics",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let cluster = Adapter::start_with(argv.clone(), cluster_dir, kubeconfig.clone()).await;
    // The same without the CA flags: it waits for ConfigMap
    // kube-system/extension-apiserver-authentication, which the mock does not have, so it never
    // becomes ready and its authentication-config gauge stays 0 (the alert's case).
    let unready_dir = tempfile::tempdir().expect("tempdir");
    let mut unready_argv: Vec<String> = argv
        .iter()
        .filter(|a| !a.ends_with("-ca-file") && **a != ca)
        .cloned()
        .collect();
    let cert_flag = unready_argv
        .iter()
        .position(|a| a == "--cert-dir")
        .expect("--cert-dir");
    unready_argv[cert_flag + 1] = unready_dir.path().join("certs").display().to_string();
    let unready = Adapter::start_with(unready_argv, unready_dir, kubeconfig).await;
    write_targets(
        &targets_file,
        &[
            (&scrape, "ws-metrics-adapter-scrape"),
            (&source, "ws-metrics-adapter-prometheus"),
            (&cluster, "ws-metrics-adapter-cluster"),
            (&unready, "ws-metrics-adapter-unready"),
        ],
    );
    scrape.wait_ready(Duration::from_secs(60)).await;
    source.wait_ready(Duration::from_secs(60)).await;
    cluster.wait_ready(Duration::from_secs(60)).await;
    // A static-file reload is an inventory event (the inventory panel counts them).
    std::fs::write(&scrape.pods_file, format!("{pods_yaml}# reloaded\n")).expect("rewrite pods");

    // An HPA's worth of reads on every adapter for the whole test: API latency, codes, value
    // age; on the authenticating one, without credentials (401, `unauthenticated`) and on an
    // always-allowed path (`always_allowed`).
    let readers: Vec<_> = [
        (&scrape, PODS),
        (&source, PODS),
        (&cluster, PODS),
        (&cluster, "/healthz"),
    ]
    .into_iter()
    .map(|(a, path)| {
        let (client, api) = (a.client(), a.api);
        tokio::spawn(async move {
            loop {
                let _ = client.get(api, path).await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    })
    .collect();

    // The four adapters are scraped under the alerts' job.
    eventually_ok(
        Duration::from_secs(60),
        "four adapters up under the ServiceMonitor's job",
        || async {
            let q = format!("up{{job=\"{ADAPTER_JOB}\"}} == 1");
            match prometheus.query_result(&q).await {
                Ok(r) if r.len() == 4 => Ok(()),
                Ok(r) => Err(format!("{} series: {r:?}", r.len())),
                Err(e) => Err(format!("{e:?}")),
            }
        },
    )
    .await;

    // Every target of every panel has data: no panel is exempt.
    for q in &queries {
        let what = format!("panel {:?}: {}", q.panel, q.expr);
        eventually_ok(Duration::from_secs(60), &what, || async {
            match prometheus.query_result(&q.expr).await {
                Err(QueryError::Rejected(e)) => panic!("{what}: Prometheus rejects it: {e}"),
                Err(QueryError::Unanswered(e)) => Err(e),
                Ok(r) if finite_values(&r) > 0 => Ok(()),
                Ok(r) => Err(format!("no series with a finite value: {r:?}")),
            }
        })
        .await;
    }

    // The workload read from the pod name groups the pods as their controllers would, and the
    // imbalance from the pods' gauges agrees with the adapter's own (3 ÷ mean(2, 3) = 1.2).
    let target = |panel: &str, fragment: &str| {
        queries
            .iter()
            .find(|q| q.panel == panel && q.expr.contains(fragment))
            .unwrap_or_else(|| panic!("panel {panel:?} with a target on {fragment}"))
            .expr
            .clone()
    };
    let imbalance = "Imbalance (max ÷ mean per workload)";
    for (expr, label, want) in [
        (
            target("Connections per workload", "websocket_connections_active"),
            "workload",
            &[("chat", "1"), ("ws", "5")][..],
        ),
        (
            target(imbalance, "websocket_connections_active"),
            "workload",
            &[("chat", "1"), ("ws", "1.2")][..],
        ),
        (
            target(imbalance, "ws_metrics_adapter_workload_imbalance_ratio"),
            "name",
            &[("ws", "1.2")][..],
        ),
    ] {
        let want: BTreeMap<String, String> = want
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        eventually_ok(Duration::from_secs(60), &expr, || async {
            let r = prometheus
                .query_result(&expr)
                .await
                .map_err(|e| format!("{e:?}"))?;
            let got: BTreeMap<String, String> = r
                .iter()
                .map(|s| {
                    (
                        s["metric"][label].as_str().unwrap_or("").to_owned(),
                        s["value"][1].as_str().unwrap_or("").to_owned(),
                    )
                })
                .collect();
            if got == want {
                Ok(())
            } else {
                Err(format!("{got:?}"))
            }
        })
        .await;
    }

    // Every alert expression is accepted and evaluated (firing or not). The adapter-down alert,
    // which depends on the job name, is silent while the adapters are up; the
    // authentication-config alert holds exactly the adapter that has no config.
    for (alert, expr) in &alerts {
        let r = eventually_ok(Duration::from_secs(60), alert, || async {
            match prometheus.query_result(expr).await {
                Err(QueryError::Rejected(e)) => {
                    panic!("alert {alert}: Prometheus rejects {expr}: {e}")
                }
                Err(QueryError::Unanswered(e)) => Err(e),
                Ok(r) => Ok(r),
            }
        })
        .await;
        if alert == "WsMetricsAdapterDown" {
            assert!(r.is_empty(), "{alert} while every adapter is up: {r:?}");
        }
        if alert == "WsMetricsAdapterAuthenticationConfigNotLoaded" {
            eventually_ok(Duration::from_secs(60), alert, || async {
                let r = prometheus
                    .query_result(expr)
                    .await
                    .map_err(|e| format!("{e:?}"))?;
                let pods: Vec<&str> = r
                    .iter()
                    .map(|s| s["metric"]["pod"].as_str().unwrap_or(""))
                    .collect();
                if pods == ["ws-metrics-adapter-unready"] {
                    Ok(())
                } else {
                    Err(format!("{r:?}"))
                }
            })
            .await;
        }
    }

    for r in readers {
        r.abort();
    }
    scrape.stop().await;
    source.stop().await;
    cluster.stop().await;
    unready.stop().await;
    mock_task.abort();
    prometheus.stop();
    drop(pods);
}
