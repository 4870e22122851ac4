//! The Grafana dashboard and the alerts of `overlays/monitoring` against a real Prometheus
//! (Debian's package) scraping real `ws-demo serve` pods and three adapters (static pods with the
//! scrape source and with the Prometheus source; cluster mode, authenticating, against a mock
//! apiserver) as the ServiceMonitor would: every panel's expression answers with data, every
//! alert's expression parses and evaluates.

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
/// Panel targets (panel title, a fragment of the expression) that cannot have data here, with
/// the reason. They must still be accepted and evaluated by Prometheus. (Auth decisions have
/// data: a third adapter runs in cluster mode, authenticating, against a mock apiserver.)
const ALLOWED_EMPTY: &[(&str, &str, &str)] = &[(
    "Imbalance (max ÷ mean per workload)",
    "ws_metrics_adapter_workload_imbalance_ratio",
    "--rebalance needs a Lease to lead and HPAs and workloads to watch; the mock apiserver here serves pods only",
)];
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

/// A plain-HTTP apiserver just large enough for cluster mode: `/version`, a pod LIST of `pods`
/// and a pod WATCH that never sends an event; every other resource is 404 (the object watches
/// log it and retry). What the adapter scrapes comes from the pods' annotations, as in a cluster.
async fn mock_apiserver(pods: Vec<Value>) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    use hyper::service::service_fn;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind mock apiserver");
    let addr = listener.local_addr().expect("addr");
    let list = serde_json::json!({
        "kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "100"}, "items": pods,
    })
    .to_string();
    let task = tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            while connections.try_join_next().is_some() {}
            let list = list.clone();
            connections.spawn(async move {
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let list = list.clone();
                    async move {
                        let watch = req.uri().query().unwrap_or("").contains("watch=true");
                        let (code, body) = match req.uri().path() {
                            "/version" => (
                                200,
                                axum::body::Body::from(
                                    r#"{"major":"1","minor":"33","gitVersion":"v1.33.0"}"#,
                                ),
                            ),
                            "/api/v1/pods" if watch => (
                                200,
                                axum::body::Body::from_stream(futures::stream::pending::<
                                    Result<bytes::Bytes, std::convert::Infallible>,
                                >()),
                            ),
                            "/api/v1/pods" => (200, axum::body::Body::from(list)),
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

/// A Running pod opted in for scraping on `port`.
fn pod_json(name: &str, port: u16) -> Value {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "chat",
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
    for (panel, fragment, _) in ALLOWED_EMPTY {
        assert!(
            queries
                .iter()
                .any(|q| q.panel == *panel && q.expr.contains(fragment)),
            "ALLOWED_EMPTY names {panel:?} / {fragment:?}, which the dashboard no longer has"
        );
    }

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
    // Cluster mode, authenticating every caller, over the same pods from a mock apiserver. The
    // flags give both CAs (any CA will do: no caller here presents a certificate), so no
    // ConfigMap is read and the authentication config is in force at once.
    let (mock, mock_task) = mock_apiserver(
        pods.iter()
            .map(|p| pod_json(p.name, p.addr.port()))
            .collect(),
    )
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

    let mut empty_allowed = Vec::new();
    for q in &queries {
        let allowed = ALLOWED_EMPTY
            .iter()
            .find(|(panel, fragment, _)| q.panel == *panel && q.expr.contains(fragment));
        let what = format!("panel {:?}: {}", q.panel, q.expr);
        let result = eventually_ok(Duration::from_secs(60), &what, || async {
            match prometheus.query_result(&q.expr).await {
                Err(QueryError::Rejected(e)) => panic!("{what}: Prometheus rejects it: {e}"),
                Err(QueryError::Unanswered(e)) => Err(e),
                Ok(r) if allowed.is_some() => Ok(r),
                Ok(r) if finite_values(&r) > 0 => Ok(r),
                Ok(r) => Err(format!("no series with a finite value: {r:?}")),
            }
        })
        .await;
        if let Some((_, _, why)) = allowed {
            empty_allowed.push(format!("{:?} ({} series): {why}", q.panel, result.len()));
        }
    }

    // The workload read from the pod name groups the pods as their controllers would.
    let per_workload = queries
        .iter()
        .find(|q| q.panel == "Connections per workload")
        .expect("panel Connections per workload");
    eventually_ok(
        Duration::from_secs(60),
        "connections per workload",
        || async {
            let r = prometheus
                .query_result(&per_workload.expr)
                .await
                .map_err(|e| format!("{e:?}"))?;
            let got: BTreeMap<String, String> = r
                .iter()
                .map(|s| {
                    (
                        s["metric"]["workload"].as_str().unwrap_or("").to_owned(),
                        s["value"][1].as_str().unwrap_or("").to_owned(),
                    )
                })
                .collect();
            let want: BTreeMap<String, String> = [("chat", "1"), ("ws", "5")]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
            if got == want {
                Ok(())
            } else {
                Err(format!("{got:?}"))
            }
        },
    )
    .await;

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
    println!("panel targets allowed to be empty here: {empty_allowed:#?}");

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
