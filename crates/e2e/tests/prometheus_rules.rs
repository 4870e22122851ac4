//! prometheus-adapter `rules:` (the examples of its docs/config.md and config-walkthrough.md,
//! written out by hand under tests/fixtures/prometheus-adapter/): first what each rule discovers
//! from hand-written series lists, then the answers of the adapter over a real Prometheus holding
//! deterministic history made with `promtool tsdb create-blocks-from openmetrics`, compared with
//! what the rules mean.

use ws_e2e as support;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, SystemTime};

use support::e2e::{require_tool, run};
use support::prometheus::{Prometheus, scrape_config};
use support::{Adapter, StaticPod, eventually, static_pods_yaml};
use ws_metrics_adapter::prometheus::rules::{self, SeriesLabels};

const CM: &str = "/apis/custom.metrics.k8s.io/v1beta1";

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/prometheus-adapter")
        .join(name)
}

fn series(labels: &[(&str, &str)]) -> SeriesLabels {
    labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// (resource, metric, promql) of every discovery.
fn discovered(file: &str, listed: Vec<Vec<SeriesLabels>>) -> Vec<(String, String, String)> {
    let rules = rules::load(&fixture(file)).expect("fixture rules load");
    assert_eq!(rules.len(), listed.len(), "one series list per rule");
    rules::discover_all(&rules, &listed)
        .into_iter()
        .map(|d| (d.resource.path(), d.metric, d.promql))
        .collect()
}

#[test]
fn walkthrough_rule_serves_the_rate_for_pods_and_namespaces() {
    let listed = vec![vec![
        series(&[
            ("__name__", "http_requests_total"),
            ("method", "GET"),
            ("kubernetes_namespace", "production"),
            ("kubernetes_pod_name", "frontend-server-abcd-0123"),
        ]),
        series(&[
            ("__name__", "http_requests_total"),
            ("method", "POST"),
            ("kubernetes_namespace", "production"),
            ("kubernetes_pod_name", "frontend-server-abcd-4567"),
        ]),
    ]];
    assert_eq!(
        discovered("walkthrough.yaml", listed),
        vec![
            (
                "namespaces".into(),
                "http_requests_per_second".into(),
                r#"sum(rate(http_requests_total{kubernetes_namespace!=""}[2m])) by (kubernetes_namespace)"#.into()
            ),
            (
                "pods".into(),
                "http_requests_per_second".into(),
                r#"sum(rate(http_requests_total{kubernetes_namespace!="",kubernetes_pod_name!=""}[2m])) by (kubernetes_namespace,kubernetes_pod_name)"#.into()
            ),
        ]
    );
}

#[test]
fn config_md_rules_discover_names_resources_and_filters_as_documented() {
    let listed = vec![
        // Rule 0 (`^container_(.*)_seconds_total$`): only the seconds counter is served, as `$1`.
        vec![
            series(&[
                ("__name__", "container_cpu_usage_seconds_total"),
                ("container", "app"),
                ("namespace", "prod"),
                ("pod", "web-1"),
            ]),
            series(&[
                ("__name__", "container_network_receive_bytes_total"),
                ("container", "app"),
                ("namespace", "prod"),
                ("pod", "web-1"),
            ]),
        ],
        // Rule 1 (isNot seconds): the bytes counter under its own name, not the seconds one.
        vec![
            series(&[
                ("__name__", "container_cpu_usage_seconds_total"),
                ("namespace", "prod"),
                ("pod", "web-1"),
            ]),
            series(&[
                ("__name__", "container_network_receive_bytes_total"),
                ("namespace", "prod"),
                ("pod", "web-1"),
            ]),
        ],
        // Rule 2 (template kube_<group>_<resource>): deployments.apps; `kube_foo_bar` names no
        // resource and is skipped.
        vec![series(&[
            ("__name__", "queue_depth"),
            ("namespace", "prod"),
            ("kube_apps_deployment", "web"),
            ("kube_foo_bar", "x"),
        ])],
        // Rule 3 (microservice → apps.deployment, `_total` → `_per_second`).
        vec![series(&[
            ("__name__", "http_requests_total"),
            ("namespace", "prod"),
            ("microservice", "checkout"),
        ])],
    ];
    let got: BTreeSet<(String, String)> = discovered("config-md.yaml", listed.clone())
        .into_iter()
        .map(|(r, m, _)| (r, m))
        .collect();
    let want: BTreeSet<(String, String)> = [
        ("namespaces", "cpu_usage"),
        ("pods", "cpu_usage"),
        ("namespaces", "container_network_receive_bytes_total"),
        ("pods", "container_network_receive_bytes_total"),
        ("deployments.apps", "queue_depth"),
        ("namespaces", "queue_depth"),
        ("deployments.apps", "http_requests_per_second"),
        ("namespaces", "http_requests_per_second"),
    ]
    .into_iter()
    .map(|(r, m)| (r.to_owned(), m.to_owned()))
    .collect();
    assert_eq!(got, want);
    let queries = discovered("config-md.yaml", listed);
    let query = |r: &str, m: &str| {
        queries
            .iter()
            .find(|(rr, mm, _)| rr == r && mm == m)
            .map(|(_, _, q)| q.clone())
            .expect("discovered")
    };
    assert_eq!(
        query("pods", "cpu_usage"),
        r#"sum(rate(container_cpu_usage_seconds_total{namespace!="",pod!="",container!="POD"}[2m])) by (namespace,pod)"#
    );
    assert_eq!(
        query("deployments.apps", "queue_depth"),
        r#"max(queue_depth{namespace!="",kube_apps_deployment!=""}) by (namespace,kube_apps_deployment)"#
    );
    assert_eq!(
        query("deployments.apps", "http_requests_per_second"),
        r#"sum(rate(http_requests_total{namespace!="",microservice!=""}[2m])) by (namespace,microservice)"#
    );
}

#[test]
fn invalid_rules_are_reported_all_at_once() {
    let text = r#"
rules:
- seriesQuery: ''
  resources: {}
  metricsQuery: 'sum(<<.LabelValuesByName>>)'
- seriesQuery: 'x'
  seriesFilters: [{is: "(", isNot: "y"}]
  resources: {overrides: {svc: {resource: "frobnicator"}}}
  name: {matches: "(a)(b)"}
  metricsQuery: 'x'
"#;
    let Err(rules::ParseError::Rules(problems)) = rules::parse(text) else {
        panic!("expected rule problems")
    };
    let all = problems.join("\n");
    for needle in [
        "rules[0] seriesQuery",
        "rules[0] resources",
        "rules[0] metricsQuery: unsupported action <<.LabelValuesByName>>",
        "rules[1] seriesFilters[0]: exactly one",
        "rules[1] resources.overrides.svc: unknown resource \"frobnicator\"",
        "rules[1] name.as: required",
    ] {
        assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
    }
}

/// A counter rising by `slope` per second, or a constant gauge, in OpenMetrics lines.
struct Series {
    name: &'static str,
    labels: &'static str,
    slope: f64,
    constant: f64,
}

/// OpenMetrics text with one sample per second from 15 min ago to 15 min ahead, so that an
/// instant query at any moment of the test sees full `[2m]` windows on both sides (rate() then
/// equals the slope exactly, with no extrapolation at a ragged end).
fn openmetrics(families: &[(&str, &str, &[Series])]) -> String {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let (from, to) = (now - 900, now + 900);
    let mut out = String::new();
    for (family, kind, series) in families {
        out.push_str(&format!("# TYPE {family} {kind}\n"));
        for s in *series {
            for t in from..=to {
                let v = if s.slope != 0.0 {
                    s.slope * (t - from) as f64
                } else {
                    s.constant
                };
                out.push_str(&format!("{}{{{}}} {v} {t}\n", s.name, s.labels));
            }
        }
    }
    out.push_str("# EOF\n");
    out
}

fn history() -> String {
    openmetrics(&[
        (
            "http_requests",
            "counter",
            &[
                // Walkthrough: pod 0123 at 0.6 + 0.4 = 1 req/s, pod 4567 at 2 + 1 = 3 req/s,
                // and a pod the inventory does not know at 5 req/s.
                Series {
                    name: "http_requests_total",
                    labels: r#"method="GET",kubernetes_namespace="production",kubernetes_pod_name="frontend-server-abcd-0123""#,
                    slope: 0.6,
                    constant: 0.0,
                },
                Series {
                    name: "http_requests_total",
                    labels: r#"method="POST",kubernetes_namespace="production",kubernetes_pod_name="frontend-server-abcd-0123""#,
                    slope: 0.4,
                    constant: 0.0,
                },
                Series {
                    name: "http_requests_total",
                    labels: r#"method="GET",kubernetes_namespace="production",kubernetes_pod_name="frontend-server-abcd-4567""#,
                    slope: 2.0,
                    constant: 0.0,
                },
                Series {
                    name: "http_requests_total",
                    labels: r#"method="POST",kubernetes_namespace="production",kubernetes_pod_name="frontend-server-abcd-4567""#,
                    slope: 1.0,
                    constant: 0.0,
                },
                Series {
                    name: "http_requests_total",
                    labels: r#"method="GET",kubernetes_namespace="production",kubernetes_pod_name="frontend-server-gone""#,
                    slope: 5.0,
                    constant: 0.0,
                },
                // config.md microservice rule: checkout at 2 req/s.
                Series {
                    name: "http_requests_total",
                    labels: r#"namespace="prod",microservice="checkout""#,
                    slope: 2.0,
                    constant: 0.0,
                },
            ],
        ),
        (
            "container_cpu_usage_seconds",
            "counter",
            &[
                Series {
                    name: "container_cpu_usage_seconds_total",
                    labels: r#"namespace="prod",pod="web-1",container="app""#,
                    slope: 0.25,
                    constant: 0.0,
                },
                // The pause container: excluded by the rule's `container!="POD"`.
                Series {
                    name: "container_cpu_usage_seconds_total",
                    labels: r#"namespace="prod",pod="web-1",container="POD""#,
                    slope: 100.0,
                    constant: 0.0,
                },
            ],
        ),
        (
            "container_network_receive_bytes",
            "counter",
            &[Series {
                name: "container_network_receive_bytes_total",
                labels: r#"namespace="prod",pod="web-1",container="app""#,
                slope: 1000.0,
                constant: 0.0,
            }],
        ),
        (
            "queue_depth",
            "gauge",
            &[
                Series {
                    name: "queue_depth",
                    labels: r#"namespace="prod",kube_apps_deployment="web""#,
                    slope: 0.0,
                    constant: 7.0,
                },
                Series {
                    name: "queue_depth",
                    labels: r#"namespace="prod",kube_apps_deployment="api""#,
                    slope: 0.0,
                    constant: 12.0,
                },
            ],
        ),
    ])
}

fn values(body: &serde_json::Value) -> Vec<(String, String)> {
    body["items"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|i| {
                    (
                        i["describedObject"]["name"]
                            .as_str()
                            .unwrap_or("")
                            .to_owned(),
                        i["value"].as_str().unwrap_or("").to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

async fn rules_adapter(prometheus: &Prometheus, file: &str, pods: &[StaticPod<'_>]) -> Adapter {
    let url = prometheus.url();
    let rules_file = fixture(file).display().to_string();
    let adapter = Adapter::start_static(
        &static_pods_yaml(pods),
        &[
            "--source",
            "prometheus",
            "--prometheus-url",
            &url,
            "--prometheus-interval",
            "1s",
            "--prometheus-timeout",
            "800ms",
            "--prometheus-rules-file",
            &rules_file,
        ],
    )
    .await;
    adapter.wait_ready(Duration::from_secs(20)).await;
    adapter
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_over_real_prometheus_history_answer_what_they_mean() {
    let binary = Prometheus::binary();
    let promtool = require_tool("promtool", "install Debian's `prometheus` package");
    let dir = tempfile::tempdir().expect("tempdir");
    let om = dir.path().join("history.om");
    std::fs::write(&om, history()).expect("write history");
    let mut cmd = Command::new(promtool);
    cmd.args(["tsdb", "create-blocks-from", "openmetrics"])
        .arg(&om)
        .arg(dir.path().join("data"));
    let out = run(cmd, "promtool", Duration::from_secs(120)).await;
    assert!(
        out.status.success(),
        "promtool: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut prometheus = Prometheus::start(binary, dir.path(), &scrape_config(&[]));
    prometheus.wait_ready(Duration::from_secs(30)).await;
    prometheus
        .wait_series("queue_depth", 2, Duration::from_secs(30))
        .await;

    // The walkthrough.
    let walkthrough = rules_adapter(
        &prometheus,
        "walkthrough.yaml",
        &[
            StaticPod {
                namespace: "production",
                name: "frontend-server-abcd-0123",
                labels: &[("app", "frontend")],
                url: "http://127.0.0.1:9/metrics".into(),
            },
            StaticPod {
                namespace: "production",
                name: "frontend-server-abcd-4567",
                labels: &[("app", "frontend")],
                url: "http://127.0.0.1:9/metrics".into(),
            },
        ],
    )
    .await;
    let client = walkthrough.client();
    let discovery = eventually(Duration::from_secs(20), "rules in discovery", || async {
        let r = client.get(walkthrough.api, CM).await;
        let names: BTreeSet<String> = r.json()["resources"]
            .as_array()?
            .iter()
            .filter_map(|x| x["name"].as_str().map(str::to_owned))
            .collect();
        names
            .contains("pods/http_requests_per_second")
            .then_some(r.json())
    })
    .await;
    let listed: BTreeSet<(String, bool)> = discovery["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .map(|x| {
            (
                x["name"].as_str().unwrap_or("").to_owned(),
                x["namespaced"].as_bool().unwrap_or(false),
            )
        })
        .collect();
    assert_eq!(
        listed,
        [
            ("pods/websocket_connections", true),
            ("namespaces/websocket_connections", false),
            ("pods/http_requests_per_second", true),
            ("namespaces/http_requests_per_second", false),
        ]
        .into_iter()
        .map(|(n, ns)| (n.to_owned(), ns))
        .collect()
    );
    // Per pod: the rate summed across methods; the unknown pod's series is not served.
    let pods = client
        .get(
            walkthrough.api,
            &format!("{CM}/namespaces/production/pods/*/http_requests_per_second"),
        )
        .await;
    assert_eq!(pods.status, 200, "{}", pods.body);
    assert_eq!(
        values(&pods.json()),
        vec![
            ("frontend-server-abcd-0123".to_owned(), "1".to_owned()),
            ("frontend-server-abcd-4567".to_owned(), "3".to_owned()),
        ]
    );
    assert_eq!(
        pods.json()["items"][0]["metricName"],
        "http_requests_per_second"
    );
    let one = client
        .get(
            walkthrough.api,
            &format!(
                "{CM}/namespaces/production/pods/frontend-server-abcd-4567/http_requests_per_second"
            ),
        )
        .await;
    assert_eq!(
        values(&one.json()),
        vec![("frontend-server-abcd-4567".to_owned(), "3".to_owned())]
    );
    // The namespace: the rule's own query grouped by the namespace label (every series of the
    // namespace, 1 + 3 + 5), as prometheus-adapter answers it.
    let ns = client
        .get(
            walkthrough.api,
            &format!("{CM}/namespaces/production/metrics/http_requests_per_second"),
        )
        .await;
    assert_eq!(
        values(&ns.json()),
        vec![("production".to_owned(), "9".to_owned())],
        "{}",
        ns.body
    );
    walkthrough.stop().await;

    // docs/config.md.
    let config_md = rules_adapter(
        &prometheus,
        "config-md.yaml",
        &[StaticPod {
            namespace: "prod",
            name: "web-1",
            labels: &[("app", "web")],
            url: "http://127.0.0.1:9/metrics".into(),
        }],
    )
    .await;
    let client = config_md.client();
    let get = |path: String| {
        let client = &client;
        let api = config_md.api;
        async move { client.get(api, &format!("{CM}/{path}")).await }
    };
    eventually(Duration::from_secs(20), "config.md metrics", || async {
        (get("namespaces/prod/pods/web-1/cpu_usage".into())
            .await
            .status
            == 200)
            .then_some(())
    })
    .await;
    for (path, want) in [
        (
            "namespaces/prod/pods/web-1/cpu_usage",
            vec![("web-1", "250m")],
        ),
        ("namespaces/prod/metrics/cpu_usage", vec![("prod", "250m")]),
        (
            "namespaces/prod/pods/*/container_network_receive_bytes_total",
            vec![("web-1", "1k")],
        ),
        (
            "namespaces/prod/deployments.apps/*/queue_depth",
            vec![("api", "12"), ("web", "7")],
        ),
        (
            "namespaces/prod/deployments.apps/web/queue_depth",
            vec![("web", "7")],
        ),
        ("namespaces/prod/metrics/queue_depth", vec![("prod", "12")]),
        (
            "namespaces/prod/deployments.apps/checkout/http_requests_per_second",
            vec![("checkout", "2")],
        ),
        (
            "namespaces/prod/metrics/http_requests_per_second",
            vec![("prod", "2")],
        ),
    ] {
        let r = get(path.into()).await;
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        let want: Vec<(String, String)> = want
            .into_iter()
            .map(|(a, b)| (a.to_owned(), b.to_owned()))
            .collect();
        assert_eq!(values(&r.json()), want, "{path}");
    }
    let dep = get("namespaces/prod/deployments.apps/web/queue_depth".into())
        .await
        .json();
    assert_eq!(
        dep["items"][0]["describedObject"],
        serde_json::json!({"kind": "Deployment", "namespace": "prod", "name": "web", "apiVersion": "apps/v1"})
    );
    // Objects this adapter does not watch cannot be selected by label; the seconds counter is
    // not served under its own name (rule 1 filters it out).
    let sel =
        get("namespaces/prod/deployments.apps/*/queue_depth?labelSelector=app%3Dweb".into()).await;
    assert_eq!(sel.status, 400, "{}", sel.body);
    let filtered = get("namespaces/prod/pods/web-1/container_cpu_usage_seconds_total".into()).await;
    assert_eq!(filtered.status, 404, "{}", filtered.body);
    config_md.stop().await;
}
