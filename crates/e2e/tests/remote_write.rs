//! `--source=remote-write` with the real thing: two Debian Prometheus servers in agent mode
//! (`--enable-feature=agent`), each keeping half of four real `ws-demo serve` pods by `hashmod`
//! relabelling and setting their `namespace`/`pod` labels, both remote-writing to the adapter
//! with a bearer token. Values equal the pods' own gauges; an agent killed mid-run takes its pods
//! out of the answer after `--max-age` (never a 0) and the namespace total turns 500; restarted,
//! it brings them back.

use ws_e2e as support;

use std::time::{Duration, Instant, SystemTime};

use support::demo_pod::DemoPod;
use support::e2e::sample;
use support::prometheus::Prometheus;
use support::{Adapter, StaticPod, eventually_ok, plain_get, static_pods_yaml};

const PODS: &str =
    "/apis/custom.metrics.k8s.io/v1beta2/namespaces/chat/pods/*/websocket_connections";
const NS: &str =
    "/apis/custom.metrics.k8s.io/v1beta2/namespaces/chat/metrics/websocket_connections";
const DEADLINE: Duration = Duration::from_secs(90);
const TOKEN: &str = "s3cret-remote-write-token";

/// Pod names and connection counts. `hashmod` of the pod name, modulus 2 (the last 8 bytes of
/// its MD5, big-endian, mod 2): ws-0 and ws-4 give 0, ws-1 and ws-2 give 1, so each agent keeps
/// two pods (checked against the agents' own target lists below).
const COUNTS: [(&str, usize); 4] = [("ws-0", 2), ("ws-1", 5), ("ws-2", 1), ("ws-4", 3)];

/// An agent scraping every pod each second, keeping those whose pod name hashes to `shard`,
/// writing to `url` with the bearer token in `token_file`.
fn agent_config(pods: &[DemoPod], shard: u8, url: &str, token_file: &std::path::Path) -> String {
    let mut s = String::from(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 800ms\nscrape_configs:\n- job_name: ws\n  static_configs:\n",
    );
    for p in pods {
        // Hidden (`__`) labels, dropped after relabelling, as `__meta_kubernetes_*` are.
        s.push_str(&format!(
            "  - targets: ['{}']\n    labels: {{__ws_namespace: chat, __ws_pod: '{}'}}\n",
            p.addr, p.name
        ));
    }
    s.push_str(&format!(
        "  relabel_configs:
  - source_labels: [__ws_pod]
    modulus: 2
    target_label: __tmp_hash
    action: hashmod
  - source_labels: [__tmp_hash]
    regex: '{shard}'
    action: keep
  - source_labels: [__ws_namespace]
    target_label: namespace
  - source_labels: [__ws_pod]
    target_label: pod
remote_write:
- url: '{url}'
  authorization:
    credentials_file: '{}'
  queue_config:
    batch_send_deadline: 200ms
    min_backoff: 100ms
    max_backoff: 1s
",
        token_file.display()
    ));
    s
}

fn items(body: &serde_json::Value) -> Vec<(String, String, String)> {
    support::metric_items(body)
}

/// Seconds between an RFC 3339 `timestamp` of an answer and now.
fn age_of(timestamp: &str) -> f64 {
    let t = time::OffsetDateTime::parse(timestamp, &time::format_description::well_known::Rfc3339)
        .expect("RFC 3339 timestamp");
    let now = time::OffsetDateTime::from(SystemTime::now());
    (now - t).as_seconds_f64()
}

async fn adapter_metric(adapter: &Adapter, series: &str) -> f64 {
    let (_, body) = plain_get(adapter.metrics, "/metrics")
        .await
        .expect("adapter /metrics");
    sample(&body, series).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sharded_agents_remote_write_the_pods_gauges_and_a_killed_agent_leaves_then_returns() {
    let binary = Prometheus::binary();
    let mut pods = Vec::new();
    for (name, n) in COUNTS {
        pods.push(DemoPod::start(name, n).await);
    }
    let mut want = Vec::new();
    for p in &pods {
        want.push((p.name.to_owned(), format!("{}", p.active().await)));
    }
    want.sort();
    assert_eq!(
        want,
        vec![
            ("ws-0".to_owned(), "2".to_owned()),
            ("ws-1".to_owned(), "5".to_owned()),
            ("ws-2".to_owned(), "1".to_owned()),
            ("ws-4".to_owned(), "3".to_owned()),
        ],
        "the demo pods' own gauges"
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, TOKEN).expect("write token");
    let entries: Vec<StaticPod<'_>> = pods
        .iter()
        .map(|p| StaticPod {
            namespace: "chat",
            name: p.name,
            labels: &[("app", "ws")],
            url: format!("http://{}/metrics", p.addr),
        })
        .collect();
    let token_flag = token_file.display().to_string();
    let adapter = Adapter::start_static(
        &static_pods_yaml(&entries),
        &[
            "--source",
            "remote-write",
            "--remote-write-bearer-token-file",
            &token_flag,
            "--max-age",
            "5s",
        ],
    )
    .await;
    let rw = adapter.remote_write.expect("remote-write listener");
    let url = format!("http://{rw}/api/v1/write");

    let mut agents = Vec::new();
    for shard in 0..2u8 {
        let agent_dir = dir.path().join(format!("agent-{shard}"));
        std::fs::create_dir_all(&agent_dir).expect("agent dir");
        let mut agent = Prometheus::start_agent(
            binary.clone(),
            &agent_dir,
            &agent_config(&pods, shard, &url, &token_file),
        );
        agent.wait_ready(Duration::from_secs(30)).await;
        agents.push(agent);
    }
    // Each agent keeps its half, and together every pod.
    let mut shards = Vec::new();
    for agent in &agents {
        let kept = eventually_ok(DEADLINE, "the agent's targets", || async {
            match agent.target_pods().await {
                Some(p) if p.len() == 2 => Ok(p),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
        shards.push(kept);
    }
    assert_eq!(
        shards,
        vec![
            vec!["ws-0".to_owned(), "ws-4".to_owned()],
            vec!["ws-1".to_owned(), "ws-2".to_owned()]
        ],
        "hashmod splits the pods in two"
    );

    adapter.wait_ready(DEADLINE).await;
    let client = adapter.client();
    let started = Instant::now();
    let body = eventually_ok(DEADLINE, "every pod's count through the API", || async {
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
    println!(
        "all four pods served {:.1}s after the adapter was ready",
        started.elapsed().as_secs_f64()
    );
    for (name, _, ts) in items(&body) {
        println!("value age at read: {name} {:.2}s", age_of(&ts));
    }
    let total = client.get(adapter.api, NS).await;
    assert_eq!(total.status, 200, "{}", total.body);
    assert_eq!(items(&total.json())[0].1, "11", "namespace total");
    let accepted = "ws_metrics_adapter_remote_write_samples_total{outcome=\"accepted\"}";
    let (a0, t0) = (adapter_metric(&adapter, accepted).await, Instant::now());
    // At least five rounds of the four pods' twelve series (1 s scrapes), for a steadier rate.
    eventually_ok(DEADLINE, "60 more samples accepted", || async {
        let a = adapter_metric(&adapter, accepted).await;
        if a >= a0 + 60.0 {
            Ok(())
        } else {
            Err(format!("{} so far", a - a0))
        }
    })
    .await;
    let (a1, t1) = (adapter_metric(&adapter, accepted).await, Instant::now());
    println!(
        "ingest: {:.1} samples/s of served families accepted (4 pods x 3 routes, 1s scrapes)",
        (a1 - a0) / (t1 - t0).as_secs_f64()
    );
    assert_eq!(
        adapter_metric(
            &adapter,
            "ws_metrics_adapter_remote_write_requests_total{outcome=\"unauthorized\"}"
        )
        .await,
        0.0
    );

    // Kill the agent of ws-1 and ws-2 (SIGKILL: no stale markers). Their values stop arriving
    // and leave the answer once older than --max-age; the others stay; never a 0.
    agents[1].stop();
    let killed = Instant::now();
    eventually_ok(DEADLINE, "ws-1 and ws-2 out of the answer", || async {
        let r = client.get(adapter.api, PODS).await;
        let got: Vec<(String, String)> = items(&r.json())
            .into_iter()
            .map(|(n, v, _)| (n, v))
            .collect();
        assert!(
            got.iter().all(|(_, v)| v != "0"),
            "a pod whose agent died is never a 0: {got:?}"
        );
        let rest = vec![
            ("ws-0".to_owned(), "2".to_owned()),
            ("ws-4".to_owned(), "3".to_owned()),
        ];
        if r.status == 200 && got == rest {
            Ok(())
        } else {
            Err(format!("{} {got:?}", r.status))
        }
    })
    .await;
    println!(
        "ws-1 and ws-2 left the answer {:.1}s after their agent was killed (--max-age 5s)",
        killed.elapsed().as_secs_f64()
    );
    let total = client.get(adapter.api, NS).await;
    assert_eq!(
        total.status, 500,
        "a namespace total with pods missing is refused, not partial: {}",
        total.body
    );

    // Restart it (same port, same WAL): the pods come back with their counts.
    agents[1].restart();
    agents[1].wait_ready(Duration::from_secs(30)).await;
    let back = Instant::now();
    eventually_ok(
        DEADLINE,
        "every pod back after the agent restarted",
        || async {
            let r = client.get(adapter.api, PODS).await;
            let got: Vec<(String, String)> = items(&r.json())
                .into_iter()
                .map(|(n, v, _)| (n, v))
                .collect();
            if r.status == 200 && got == want {
                Ok(())
            } else {
                Err(format!("{} {got:?}", r.status))
            }
        },
    )
    .await;
    println!(
        "ws-1 and ws-2 back {:.1}s after the agent was ready again",
        back.elapsed().as_secs_f64()
    );
    let total = eventually_ok(DEADLINE, "the namespace total again", || async {
        let r = client.get(adapter.api, NS).await;
        if r.status == 200 {
            Ok(r.json())
        } else {
            Err(r.body)
        }
    })
    .await;
    assert_eq!(items(&total)[0].1, "11");
    for a in &mut agents {
        a.stop();
    }
    adapter.stop().await;
    drop(pods);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_with_the_wrong_token_is_refused_and_its_samples_never_served() {
    let binary = Prometheus::binary();
    let pods = vec![DemoPod::start("ws-0", 2).await];
    let dir = tempfile::tempdir().expect("tempdir");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, TOKEN).expect("write token");
    let wrong = dir.path().join("wrong");
    std::fs::write(&wrong, "not-the-token").expect("write wrong token");
    let entries = [StaticPod {
        namespace: "chat",
        name: "ws-0",
        labels: &[],
        url: format!("http://{}/metrics", pods[0].addr),
    }];
    let token_flag = token_file.display().to_string();
    let adapter = Adapter::start_static(
        &static_pods_yaml(&entries),
        &[
            "--source",
            "remote-write",
            "--remote-write-bearer-token-file",
            &token_flag,
            "--max-age",
            "5s",
        ],
    )
    .await;
    let url = format!(
        "http://{}/api/v1/write",
        adapter.remote_write.expect("listener")
    );
    let agent_dir = dir.path().join("agent");
    std::fs::create_dir_all(&agent_dir).expect("agent dir");
    // ws-0 hashes to 0.
    let mut agent =
        Prometheus::start_agent(binary, &agent_dir, &agent_config(&pods, 0, &url, &wrong));
    agent.wait_ready(Duration::from_secs(30)).await;
    let unauthorized = "ws_metrics_adapter_remote_write_requests_total{outcome=\"unauthorized\"}";
    eventually_ok(DEADLINE, "the agent's writes refused", || async {
        let n = adapter_metric(&adapter, unauthorized).await;
        if n >= 3.0 {
            Ok(())
        } else {
            Err(format!("{n} refused so far"))
        }
    })
    .await;
    let r = adapter.client().get(adapter.api, PODS).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        items(&r.json()).is_empty(),
        "nothing from a refused agent: {}",
        r.body
    );
    assert_eq!(
        adapter_metric(
            &adapter,
            "ws_metrics_adapter_remote_write_samples_total{outcome=\"accepted\"}"
        )
        .await,
        0.0
    );
    agent.stop();
    adapter.stop().await;
}
