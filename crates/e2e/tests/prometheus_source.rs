//! `--source=prometheus` against a real Prometheus (Debian's package) scraping real `ws-demo serve`
//! pods every second: values equal the pods' real connection counts, a pod that dies disappears,
//! Prometheus stopped mid-run gives 500 (never zeros) and recovery when it returns, and the
//! Prometheus load is one query per metric per interval whatever the number of API readers.

use ws_e2e as support;

use std::time::{Duration, Instant, SystemTime};

use support::demo_pod::DemoPod;
use support::e2e::sample;
use support::prometheus::{Prometheus, Target, scrape_config};
use support::{Adapter, StaticPod, eventually, eventually_ok, plain_get, static_pods_yaml};

const PODS: &str =
    "/apis/custom.metrics.k8s.io/v1beta2/namespaces/chat/pods/*/websocket_connections";
const NS: &str =
    "/apis/custom.metrics.k8s.io/v1beta2/namespaces/chat/metrics/websocket_connections";

struct World {
    pods: Vec<DemoPod>,
    prometheus: Prometheus,
    _dir: tempfile::TempDir,
}

async fn world(counts: &[(&'static str, usize)]) -> World {
    let binary = Prometheus::binary();
    let mut pods = Vec::new();
    for (name, n) in counts {
        pods.push(DemoPod::start(name, *n).await);
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let targets: Vec<Target<'_>> = pods
        .iter()
        .map(|p| Target {
            addr: p.addr.to_string(),
            namespace: "chat",
            pod: p.name,
        })
        .collect();
    let mut prometheus = Prometheus::start(binary, dir.path(), &scrape_config(&targets));
    prometheus.wait_ready(Duration::from_secs(30)).await;
    prometheus
        .wait_series(
            "websocket_connections_active",
            3 * pods.len(),
            Duration::from_secs(30),
        )
        .await;
    World {
        pods,
        prometheus,
        _dir: dir,
    }
}

fn pods_yaml(pods: &[DemoPod]) -> String {
    let entries: Vec<StaticPod<'_>> = pods
        .iter()
        .map(|p| StaticPod {
            namespace: "chat",
            name: p.name,
            labels: &[("app", "ws")],
            url: format!("http://{}/metrics", p.addr),
        })
        .collect();
    static_pods_yaml(&entries)
}

async fn prometheus_adapter(w: &World, extra: &[&str]) -> Adapter {
    let url = w.prometheus.url();
    let mut flags = vec![
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
    ];
    flags.extend_from_slice(extra);
    Adapter::start_static(&pods_yaml(&w.pods), &flags).await
}

fn items(body: &serde_json::Value) -> Vec<(String, String, String)> {
    support::metric_items(body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_equal_the_demo_pods_real_counts_and_a_dead_pod_disappears() {
    let mut w = world(&[("ws-0", 2), ("ws-1", 5), ("ws-2", 1)]).await;
    let adapter = prometheus_adapter(&w, &[]).await;
    adapter.wait_ready(Duration::from_secs(20)).await;
    let client = adapter.client();
    let mut want = Vec::new();
    for p in &w.pods {
        want.push((p.name.to_owned(), format!("{}", p.active().await)));
    }
    assert_eq!(
        want,
        vec![
            ("ws-0".to_owned(), "2".to_owned()),
            ("ws-1".to_owned(), "5".to_owned()),
            ("ws-2".to_owned(), "1".to_owned())
        ],
        "the demo pods' own gauges"
    );
    let body = eventually_ok(Duration::from_secs(60), "the pods' counts", || async {
        let r = client.get(adapter.api, PODS).await;
        let got: Vec<(String, String)> = items(&r.json())
            .into_iter()
            .map(|(n, v, _)| (n, v))
            .collect();
        if r.status == 200 && got == want {
            Ok(r.json())
        } else {
            Err(format!("{} {}", r.status, r.body))
        }
    })
    .await;
    // Sample times come from Prometheus (newest raw sample), not from the adapter's clock, and
    // are recent.
    for (name, _, ts) in items(&body) {
        let t = humantime::parse_rfc3339(&ts).expect("RFC 3339 timestamp");
        let age = SystemTime::now().duration_since(t).unwrap_or_default();
        assert!(age < Duration::from_secs(10), "{name}: sample age {age:?}");
    }
    let ns = client.get(adapter.api, NS).await;
    assert_eq!(ns.status, 200, "{}", ns.body);
    assert_eq!(items(&ns.json())[0].1, "8");

    // The default query groups by namespace and pod only: a metricLabelSelector on `route` is
    // refused with the reason, not answered with zeros.
    let by_route = client
        .get(
            adapter.api,
            &format!("{PODS}?metricLabelSelector=route%3Decho"),
        )
        .await;
    assert_eq!(by_route.status, 400, "{}", by_route.body);
    assert!(by_route.body.contains("by (...)"), "{}", by_route.body);

    // ws-1 dies (still listed by the inventory): Prometheus marks its series stale and it leaves
    // the answer; the namespace total is refused rather than undercounted.
    w.pods[1].kill();
    eventually_ok(Duration::from_secs(60), "ws-1 to disappear", || async {
        let r = client.get(adapter.api, PODS).await;
        let names: Vec<String> = items(&r.json()).into_iter().map(|(n, _, _)| n).collect();
        if r.status == 200 && names == ["ws-0", "ws-2"] {
            Ok(())
        } else {
            Err(format!("{} {}", r.status, r.body))
        }
    })
    .await;
    let ns = client.get(adapter.api, NS).await;
    assert_eq!(ns.status, 500, "{}", ns.body);

    // The adapter counts its own queries.
    let (_, own) = plain_get(adapter.metrics, "/metrics")
        .await
        .expect("/metrics");
    let ok = sample(
        &own,
        "ws_metrics_adapter_prometheus_requests_total{kind=\"query\",outcome=\"success\"}",
    )
    .unwrap_or(0.0);
    assert!(ok >= 2.0, "{own}");
    adapter.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_stopped_mid_run_answers_500_never_zero_and_recovers() {
    let mut w = world(&[("ws-0", 3), ("ws-1", 4)]).await;
    let adapter = prometheus_adapter(&w, &[]).await;
    adapter.wait_ready(Duration::from_secs(20)).await;
    let client = adapter.client();
    let want = vec![
        ("ws-0".to_owned(), "3".to_owned()),
        ("ws-1".to_owned(), "4".to_owned()),
    ];
    let values = || async {
        let r = client.get(adapter.api, PODS).await;
        let got: Vec<(String, String)> = items(&r.json())
            .into_iter()
            .map(|(n, v, _)| (n, v))
            .collect();
        (r.status, got, r.body)
    };
    // Generous: three Prometheus servers start at once in this binary on a 2-core machine.
    eventually_ok(Duration::from_secs(60), "values", || async {
        let (code, got, body) = values().await;
        if code == 200 && got == want {
            Ok(())
        } else {
            Err(format!("{code} {body}"))
        }
    })
    .await;

    w.prometheus.stop();
    // Every answer is either the true values (the last good answer, served until --max-age,
    // 10 s here) or, once they are older, a 500: never an empty list, never a zero.
    let start = Instant::now();
    let first_500 = loop {
        let (code, got, body) = values().await;
        match code {
            200 => assert_eq!(got, want, "served while Prometheus is down: {body}"),
            500 => {
                assert!(body.contains("unable to fetch metrics"), "{body}");
                break start.elapsed();
            }
            other => panic!("unexpected {other}: {body}"),
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no 500 within 60 s of Prometheus stopping (--max-age 10s)"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!("Prometheus stopped: last good values served for {first_500:?}, then 500");
    // From then on only 500s (the values stay too old) until Prometheus is back.
    for _ in 0..5 {
        let (code, _, body) = values().await;
        assert_eq!(code, 500, "{body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ns = client.get(adapter.api, NS).await;
    assert_eq!(ns.status, 500, "{}", ns.body);
    let (_, own) = plain_get(adapter.metrics, "/metrics")
        .await
        .expect("/metrics");
    let failed = sample(
        &own,
        "ws_metrics_adapter_prometheus_requests_total{kind=\"query\",outcome=\"request_failed\"}",
    )
    .unwrap_or(0.0);
    assert!(failed >= 1.0, "{own}");

    // Prometheus comes back on the same port and data dir; the values return.
    w.prometheus.restart();
    w.prometheus.wait_ready(Duration::from_secs(30)).await;
    eventually_ok(
        Duration::from_secs(60),
        "recovery after restart",
        || async {
            let (code, got, body) = values().await;
            if code == 200 && got == want {
                Ok(())
            } else {
                Err(format!("{code} {body}"))
            }
        },
    )
    .await;
    adapter.stop().await;
    drop(w);
}

/// Figures for the README (printed; run with `-- --nocapture`): Prometheus queries, API latency
/// and value age under many concurrent readers, Prometheus source next to the scrape source.
/// Asserts the load target: one query per metric per interval, whatever the number of readers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_query_per_metric_per_interval_whatever_the_number_of_readers() {
    let w = world(&[("ws-0", 2), ("ws-1", 3), ("ws-2", 4)]).await;
    let prom = prometheus_adapter(&w, &[]).await;
    let scrape = Adapter::start_static(
        &pods_yaml(&w.pods),
        &["--scrape-interval", "1s", "--scrape-timeout", "800ms"],
    )
    .await;
    prom.wait_ready(Duration::from_secs(20)).await;
    scrape.wait_ready(Duration::from_secs(20)).await;
    eventually(
        Duration::from_secs(20),
        "values from both sources",
        || async {
            let a = prom.client().get(prom.api, PODS).await;
            let b = scrape.client().get(scrape.api, PODS).await;
            (items(&a.json()).len() == 3 && items(&b.json()).len() == 3).then_some(())
        },
    )
    .await;

    let readers = 32;
    let window = Duration::from_secs(10);
    let p = measure(&w, &prom, readers, window).await;
    p.print("prometheus", readers);
    // One metric, one query per 1 s round: at most one per elapsed second (+1 for a round that
    // straddles a boundary), and every query Prometheus saw is the adapter's.
    let bound = p.elapsed.as_secs_f64().ceil() + 1.0;
    assert!(
        p.prom_queries <= bound && p.prom_queries >= 1.0,
        "{} queries in {:?} for {} reads",
        p.prom_queries,
        p.elapsed,
        p.lat.len()
    );
    assert!(
        (p.prom_queries - p.own).abs() <= 1.0,
        "prometheus saw {}, adapter sent {}",
        p.prom_queries,
        p.own
    );
    assert!(
        p.lat.len() as f64 > 20.0 * p.prom_queries,
        "readers did not outnumber queries"
    );
    // Age ≤ Prometheus scrape interval (1 s) + adapter interval (1 s) + query time.
    let max_age = p.ages[p.ages.len() - 1];
    assert!(max_age <= Duration::from_secs(3), "max age {max_age:?}");
    prom.stop().await;

    // The same readers on the scrape source, with the Prometheus source stopped.
    let s = measure(&w, &scrape, readers, window).await;
    s.print("scrape", readers);
    assert_eq!(
        s.prom_queries, 0.0,
        "the scrape source never queries Prometheus"
    );
    scrape.stop().await;
}

struct Figures {
    elapsed: Duration,
    lat: Vec<Duration>,
    ages: Vec<Duration>,
    prom_queries: f64,
    own: f64,
}

impl Figures {
    fn print(&self, label: &str, readers: usize) {
        let pct = |v: &[Duration], p: f64| v[((v.len() - 1) as f64 * p) as usize];
        println!(
            "FIGURE source={label} readers={readers} window={:.1}s api_reads={} prometheus_queries={} \
             adapter_queries={} latency_p50={:?} latency_p99={:?} value_age_p50={:?} value_age_max={:?}",
            self.elapsed.as_secs_f64(),
            self.lat.len(),
            self.prom_queries,
            self.own,
            pct(&self.lat, 0.5),
            pct(&self.lat, 0.99),
            pct(&self.ages, 0.5),
            self.ages[self.ages.len() - 1],
        );
    }
}

/// `readers` concurrent clients reading `PODS` for `window`; latency of each read, age of each
/// value served, and the queries Prometheus answered meanwhile.
async fn measure(w: &World, adapter: &Adapter, readers: usize, window: Duration) -> Figures {
    let own_before = own_queries(adapter).await;
    let prom_before = w.prometheus.requests_served("/api/v1/query").await;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..readers {
        let client = adapter.client();
        let api = adapter.api;
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut ages = Vec::new();
            while started.elapsed() < window {
                let t = Instant::now();
                let r = client.get(api, PODS).await;
                lat.push(t.elapsed());
                assert_eq!(r.status, 200, "{}", r.body);
                let now = SystemTime::now();
                for (_, _, ts) in items(&r.json()) {
                    let t = humantime::parse_rfc3339(&ts).expect("timestamp");
                    ages.push(now.duration_since(t).unwrap_or_default());
                }
            }
            (lat, ages)
        }));
    }
    let mut lat = Vec::new();
    let mut ages = Vec::new();
    for t in tasks {
        let (l, a) = t.await.expect("reader");
        lat.extend(l);
        ages.extend(a);
    }
    let elapsed = started.elapsed();
    lat.sort();
    ages.sort();
    Figures {
        elapsed,
        lat,
        ages,
        prom_queries: w.prometheus.requests_served("/api/v1/query").await - prom_before,
        own: own_queries(adapter).await - own_before,
    }
}

async fn own_queries(adapter: &Adapter) -> f64 {
    let (_, own) = plain_get(adapter.metrics, "/metrics")
        .await
        .expect("/metrics");
    own.lines()
        .filter(|l| l.starts_with("ws_metrics_adapter_prometheus_requests_total{kind=\"query\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
