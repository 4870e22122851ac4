//! Wire tests of collection: real fake pods on `127.0.0.1:0` scraped by a [`Collector`] (one
//! `tick()` at a time, asserting on the store, the round report and the scrape counters), and the
//! in-process adapter for what only the running loops show (reloads, a hung pod beside the API).

use ws_e2e as support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use support::{
    Adapter, Behavior, FakePod, StaticPod, eventually, exposition, plain_get, static_pods_yaml,
};
use ws_metrics_adapter::clock::Moment;
use ws_metrics_adapter::collect::{Collector, RoundReport};
use ws_metrics_adapter::config::CollectConfig;
use ws_metrics_adapter::selector::Selector;
use ws_metrics_adapter::store::{MetricCatalog, MetricMapping, PodKey, PodTarget, PodValue, Store};
use ws_metrics_adapter::telemetry::Telemetry;

const NS: &str = "chat";

fn catalog() -> MetricCatalog {
    MetricCatalog::new(vec![MetricMapping {
        served: "websocket_connections".into(),
        family: "websocket_connections_active".into(),
        rate: None,
        filter: None,
    }])
}

fn key(name: &str) -> PodKey {
    PodKey {
        namespace: NS.into(),
        name: name.into(),
    }
}

/// A collector over its own store and telemetry.
struct Rig {
    store: Arc<Store>,
    telemetry: Arc<Telemetry>,
    collector: Collector,
}

struct Settings {
    timeout: Duration,
    concurrency: usize,
    max_body_bytes: usize,
    max_age: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(2),
            concurrency: 16,
            max_body_bytes: 64 * 1024,
            max_age: Duration::from_secs(30),
        }
    }
}

impl Rig {
    fn new(s: Settings) -> Self {
        Self::serving(catalog(), s)
    }

    /// A rig serving `catalog` instead of the connections gauge alone.
    fn serving(catalog: MetricCatalog, s: Settings) -> Self {
        ws_metrics_adapter::server::tls::install_provider();
        let store = Arc::new(Store::new(catalog, s.max_age));
        let telemetry = Arc::new(Telemetry::new());
        let config = CollectConfig {
            interval: s.timeout.max(Duration::from_secs(1)),
            timeout: s.timeout,
            concurrency: s.concurrency,
            threads: 1,
            max_body_bytes: s.max_body_bytes,
            ca_file: None,
        };
        let collector =
            Collector::new(store.clone(), telemetry.clone(), config).expect("collector builds");
        Self {
            store,
            telemetry,
            collector,
        }
    }

    /// Tracks a pod in namespace `chat` under UID `uid-<name>`.
    fn track(&self, name: &str, url: String) {
        self.track_uid(name, &format!("uid-{name}"), url);
    }

    fn track_uid(&self, name: &str, uid: &str, url: String) {
        self.store.upsert(PodTarget {
            key: key(name),
            uid: uid.into(),
            labels: [("app".to_owned(), "ws".to_owned())].into(),
            url,
            ready: true,
        });
    }

    /// The pod's served value (milli) and sample time at `at`.
    fn value_at(&self, name: &str, at: Moment) -> Option<PodValue> {
        let all = Selector::everything();
        self.store.pod_value(&key(name), 0, &all, at)
    }

    fn milli(&self, name: &str) -> Option<i64> {
        self.value_at(name, Moment::now()).map(|v| v.milli)
    }

    /// Names served for the wildcard form at `at`.
    fn served_at(&self, at: Moment) -> Vec<String> {
        let all = Selector::everything();
        self.store
            .pods_matching(NS, &all, 0, &all, at)
            .into_iter()
            .map(|p| p.name)
            .collect()
    }

    fn served(&self) -> Vec<String> {
        self.served_at(Moment::now())
    }

    /// Scrapes counted under this `outcome` label.
    fn count(&self, outcome: &'static str) -> u64 {
        self.telemetry.scrape_count(outcome)
    }
}

fn report(attempted: usize, recorded: usize, failed: &[(&'static str, usize)]) -> RoundReport {
    RoundReport {
        attempted,
        recorded,
        failed: failed.iter().copied().collect(),
    }
}

// ---------------------------------------------------------------------------------------------
// What a good scrape records
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_good_pod_is_recorded_with_the_sum_of_its_series_and_the_time_of_the_scrape() {
    let pod = FakePod::start(Behavior::Body(exposition(&[
        ("chat", 3),
        ("echo", 4),
        ("lobby", 1000),
    ])))
    .await;
    let rig = Rig::new(Settings::default());
    rig.track("ws-0", pod.url());
    let before = Moment::now();
    let r = rig.collector.tick().await;
    let after = Moment::now();
    assert_eq!(r, report(1, 1, &[]));
    let v = rig.value_at("ws-0", after).expect("recorded");
    assert_eq!(v.milli, 1_007_000);
    assert!(
        before.wall <= v.time.wall && v.time.wall <= after.wall,
        "sample time is the scrape's"
    );
    assert_eq!(rig.count("success"), 1);
    assert_eq!(pod.requests(), 1);
}

/// A counter family `messages_total{route="chat"}` at `value`.
fn counter(value: u64) -> String {
    format!("# TYPE messages counter\nmessages_total{{route=\"chat\"}} {value}\n")
}

#[tokio::test]
async fn a_rate_is_exact_for_the_increments_the_test_makes_resets_included() {
    let rig = Rig::serving(
        MetricCatalog::new(vec![
            MetricMapping {
                served: "messages".into(),
                family: "messages_total".into(),
                rate: None,
                filter: None,
            },
            MetricMapping {
                served: "messages_per_second".into(),
                family: "messages_total".into(),
                rate: Some(Duration::from_secs(600)),
                filter: None,
            },
        ]),
        Settings::default(),
    );
    let pod = FakePod::start(Behavior::Body(counter(100))).await;
    rig.track("ws-0", pod.url());
    let all = Selector::everything();
    // Scrapes `value` and returns (the scrape's time, the rate served then).
    let scrape = |value: u64| {
        pod.set(Behavior::Body(counter(value)));
        async {
            assert_eq!(rig.collector.tick().await, report(1, 1, &[]));
            let now = Moment::now();
            let read = rig
                .store
                .pod_value(&key("ws-0"), 0, &all, now)
                .expect("counter");
            let rate = rig.store.pod_value(&key("ws-0"), 1, &all, now);
            (read.time.wall, rate)
        }
    };
    let (t0, rate) = scrape(100).await;
    assert!(rate.is_none(), "one scrape: no rate, never a 0: {rate:?}");
    // The rate over the two reads: increase × 1000 (milli) / seconds between them.
    let expect = |increase: f64, t: std::time::SystemTime| {
        increase * 1000.0 / t.duration_since(t0).expect("later").as_secs_f64()
    };
    let close = |got: Option<PodValue>, want: f64, what: &str| {
        let got = got.unwrap_or_else(|| panic!("{what}: no rate")).milli as f64;
        // The adapter times reads on the monotonic clock, this test on the wall clock read with
        // it: they differ by microseconds.
        assert!(
            (got - want).abs() <= want * 0.01 + 1.0,
            "{what}: rate {got} milli/s, want {want}"
        );
    };
    let (t1, rate) = scrape(130).await;
    close(rate, expect(30.0, t1), "+30");
    // A reset: 130 → 7 counts 7 more, never a negative rate.
    let (t2, rate) = scrape(7).await;
    close(rate, expect(37.0, t2), "reset to 7");
    let (t3, rate) = scrape(20).await;
    close(rate, expect(50.0, t3), "+13 after the reset");
    // The counter vanishes from the pod's exposition: no rate (and no 0), then it starts over.
    pod.set(Behavior::Body(exposition(&[("chat", 1)])));
    rig.collector.tick().await;
    assert!(
        rig.store
            .pod_value(&key("ws-0"), 1, &all, Moment::now())
            .is_none()
    );
    let (_, rate) = scrape(25).await;
    assert!(
        rate.is_none(),
        "a counter back after a gap starts over: {rate:?}"
    );
}

#[tokio::test]
async fn fractional_and_openmetrics_values_are_kept_in_milli_units() {
    let pod = FakePod::start(Behavior::Body(
        "# TYPE websocket_connections_active gauge\n\
         websocket_connections_active{route=\"a\"} 1.5\n\
         websocket_connections_active{route=\"b\"} 2e0\n\
         # EOF\n"
            .into(),
    ))
    .await;
    let rig = Rig::new(Settings::default());
    rig.track("ws-0", pod.url());
    assert_eq!(rig.collector.tick().await, report(1, 1, &[]));
    assert_eq!(rig.milli("ws-0"), Some(3500));
}

#[tokio::test]
async fn a_family_declared_without_samples_is_an_explicit_zero() {
    let pod = FakePod::start(Behavior::Body(exposition(&[]))).await;
    let rig = Rig::new(Settings::default());
    rig.track("ws-0", pod.url());
    assert_eq!(rig.collector.tick().await, report(1, 1, &[]));
    assert_eq!(rig.milli("ws-0"), Some(0));
    assert_eq!(rig.served(), ["ws-0"]);
}

#[tokio::test]
async fn a_pod_without_the_family_is_left_out_rather_than_zero() {
    let pod = FakePod::start(Behavior::Body(
        "# TYPE http_requests_total counter\nhttp_requests_total 12\n".into(),
    ))
    .await;
    let rig = Rig::new(Settings::default());
    rig.track("ws-0", pod.url());
    // The scrape itself succeeded: the pod simply does not have the metric.
    assert_eq!(rig.collector.tick().await, report(1, 1, &[]));
    assert_eq!(rig.milli("ws-0"), None);
    assert!(rig.served().is_empty());
}

#[tokio::test]
async fn a_family_with_a_longer_similar_name_is_not_counted() {
    let both = FakePod::start(Behavior::Body(format!(
        "{}# TYPE websocket_connections_active_total counter\nwebsocket_connections_active_total 99\n\
         websocket_connections_active_created 1.7e9\n",
        exposition(&[("chat", 2)])
    )))
    .await;
    let only_similar = FakePod::start(Behavior::Body(
        "# HELP websocket_connections_active_total Connections ever opened.\n\
         # TYPE websocket_connections_active_total counter\n\
         websocket_connections_active_total{route=\"chat\"} 99\n"
            .into(),
    ))
    .await;
    let rig = Rig::new(Settings::default());
    rig.track("ws-both", both.url());
    rig.track("ws-similar", only_similar.url());
    assert_eq!(rig.collector.tick().await, report(2, 2, &[]));
    assert_eq!(rig.milli("ws-both"), Some(2000));
    assert_eq!(rig.milli("ws-similar"), None);
    assert_eq!(rig.served(), ["ws-both"]);
}

#[tokio::test]
async fn a_family_declared_with_a_tab_separator_is_an_explicit_zero() {
    // The exposition parser accepts tabs between tokens of a `# TYPE` line, so this body is
    // valid and declares the family; with no samples it must read as 0, like the
    // single-space form above.
    let pod = FakePod::start(Behavior::Body(
        "# TYPE websocket_connections_active\tgauge\n".into(),
    ))
    .await;
    let rig = Rig::new(Settings::default());
    rig.track("ws-0", pod.url());
    assert_eq!(rig.collector.tick().await, report(1, 1, &[]));
    assert_eq!(rig.milli("ws-0"), Some(0));
}

#[tokio::test]
async fn a_type_marker_quoted_in_help_text_does_not_declare_the_family() {
    // The family is not exposed at all; only another metric's help text mentions it.
    let pod = FakePod::start(Behavior::Body(
        "# HELP legacy_gauge Replaced; see # TYPE websocket_connections_active gauge\n\
         # TYPE legacy_gauge gauge\nlegacy_gauge 1\n"
            .into(),
    ))
    .await;
    let rig = Rig::new(Settings::default());
    rig.track("ws-0", pod.url());
    assert_eq!(rig.collector.tick().await, report(1, 1, &[]));
    assert_eq!(
        rig.milli("ws-0"),
        None,
        "an absent family must never be served as 0"
    );
}

// ---------------------------------------------------------------------------------------------
// Failed scrapes: keep the last good value until max-age, then leave the pod out; never zero
// ---------------------------------------------------------------------------------------------

/// Scrapes `pod` once while it is good, flips it to `bad`, scrapes again and checks the outcome,
/// that the first reading is still the one served, and that it is dropped (not zeroed) after
/// max-age. Returns the report of the failing round.
async fn good_then(rig: &Rig, pod: &FakePod, bad: Behavior) -> RoundReport {
    pod.set(Behavior::Body(exposition(&[("chat", 5)])));
    let r = rig.collector.tick().await;
    assert_eq!(r.recorded, 1, "good round: {r:?}");
    let good = rig
        .value_at("ws-0", Moment::now())
        .expect("good value recorded");
    assert_eq!(good.milli, 5000);

    pod.set(bad);
    let failing = rig.collector.tick().await;
    assert_eq!(failing.recorded, 0, "failing round: {failing:?}");
    // Still served, with the old sample time: nothing was written by the failed scrape.
    assert_eq!(rig.value_at("ws-0", Moment::now()), Some(good.clone()));
    let max_age = rig.store.max_age();
    assert_eq!(
        rig.value_at("ws-0", good.time.when_aged(max_age)),
        Some(good.clone())
    );
    // One past max-age: gone from both forms, not a zero.
    let expired = good.time.when_aged(max_age + Duration::from_millis(1));
    assert_eq!(rig.value_at("ws-0", expired), None);
    assert!(rig.served_at(expired).is_empty());
    failing
}

#[tokio::test]
async fn a_pod_answering_an_error_status_keeps_its_last_good_value_until_max_age_and_is_never_zeroed()
 {
    let pod = FakePod::start(Behavior::Status(200)).await;
    let rig = Rig::new(Settings {
        max_age: Duration::from_secs(3),
        ..Settings::default()
    });
    rig.track("ws-0", pod.url());
    for (i, code) in [500u16, 503, 404].into_iter().enumerate() {
        let r = good_then(&rig, &pod, Behavior::Status(code)).await;
        assert_eq!(r, report(1, 0, &[("bad_status", 1)]), "{code}");
        assert_eq!(rig.count("bad_status"), i as u64 + 1, "{code}");
    }
}

/// Deterministic non-UTF-8 garbage.
fn random_bytes(n: usize) -> Vec<u8> {
    let mut x: u32 = 0x9e37_79b9;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .chain([0xff, 0xfe, 0x00])
        .collect()
}

#[tokio::test]
async fn garbage_bodies_are_unparseable_and_keep_the_last_good_value_until_max_age() {
    let pod = FakePod::start(Behavior::Status(200)).await;
    let rig = Rig::new(Settings {
        max_age: Duration::from_secs(3),
        ..Settings::default()
    });
    rig.track("ws-0", pod.url());
    let bodies = [
        ("random bytes", Behavior::Bytes(random_bytes(512))),
        (
            "html",
            Behavior::Body(
                "<!DOCTYPE html>\n<html><body><h1>502 Bad Gateway</h1></body></html>\n".into(),
            ),
        ),
        (
            "json",
            Behavior::Body("{\"websocket_connections_active\": 5}\n".into()),
        ),
        (
            "NaN value",
            Behavior::Body(format!(
                "{}websocket_connections_active{{route=\"x\"}} NaN\n",
                exposition(&[("chat", 1)])
            )),
        ),
        (
            "+Inf value",
            Behavior::Body("websocket_connections_active +Inf\n".into()),
        ),
        (
            "syntax error after good lines",
            Behavior::Body(format!(
                "{}websocket_connections_active{{route=\"y\" 3\n",
                exposition(&[("chat", 1)])
            )),
        ),
    ];
    for (i, (what, body)) in bodies.into_iter().enumerate() {
        let r = good_then(&rig, &pod, body).await;
        assert_eq!(r, report(1, 0, &[("unparseable", 1)]), "{what}");
        assert_eq!(rig.count("unparseable"), i as u64 + 1, "{what}");
    }
}

#[tokio::test]
async fn a_nan_in_a_family_that_is_not_served_does_not_fail_the_scrape() {
    let pod = FakePod::start(Behavior::Body(format!(
        "# TYPE process_cpu_ratio gauge\nprocess_cpu_ratio NaN\n{}",
        exposition(&[("chat", 6)])
    )))
    .await;
    let rig = Rig::new(Settings::default());
    rig.track("ws-0", pod.url());
    assert_eq!(rig.collector.tick().await, report(1, 1, &[]));
    assert_eq!(rig.milli("ws-0"), Some(6000));
}

#[tokio::test]
async fn a_body_larger_than_the_cap_is_too_large_while_a_small_one_is_recorded() {
    let series: Vec<(String, u64)> = (0..200).map(|i| (format!("route-{i}"), 1)).collect();
    let refs: Vec<(&str, u64)> = series.iter().map(|(r, v)| (r.as_str(), *v)).collect();
    let big_body = exposition(&refs);
    assert!(big_body.len() > 4096);
    let big = FakePod::start(Behavior::Body(big_body)).await;
    let small = FakePod::start(Behavior::Body(exposition(&[("chat", 2)]))).await;
    let rig = Rig::new(Settings {
        max_body_bytes: 4096,
        ..Settings::default()
    });
    rig.track("ws-big", big.url());
    rig.track("ws-small", small.url());
    let r = rig.collector.tick().await;
    assert_eq!(r, report(2, 1, &[("body_too_large", 1)]));
    assert_eq!(rig.count("body_too_large"), 1);
    assert_eq!(rig.served(), ["ws-small"]);
}

#[tokio::test]
async fn a_stopped_pod_is_a_connect_error() {
    let pod = FakePod::start(Behavior::Body(exposition(&[("chat", 1)]))).await;
    let addr = pod.addr;
    pod.stop();
    // The listener closes once the aborted accept task is dropped.
    eventually(
        Duration::from_secs(5),
        "the stopped pod to refuse connections",
        || async move { tokio::net::TcpStream::connect(addr).await.err().map(|_| ()) },
    )
    .await;
    let rig = Rig::new(Settings::default());
    rig.track("ws-0", pod.url());
    let r = rig.collector.tick().await;
    assert_eq!(r, report(1, 0, &[("connect_error", 1)]));
    assert_eq!(rig.count("connect_error"), 1);
    assert!(rig.served().is_empty());
}

// ---------------------------------------------------------------------------------------------
// Timeouts, connection reuse and concurrency
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_hung_pod_costs_one_timeout_and_the_other_pods_of_the_round_are_recorded() {
    let timeout = Duration::from_millis(500);
    let a = FakePod::start(Behavior::Body(exposition(&[("chat", 1)]))).await;
    let hung = FakePod::start(Behavior::Hang).await;
    let b = FakePod::start(Behavior::Body(exposition(&[("chat", 2)]))).await;
    let rig = Rig::new(Settings {
        timeout,
        ..Settings::default()
    });
    rig.track("ws-a", a.url());
    rig.track("ws-hung", hung.url());
    rig.track("ws-b", b.url());
    let started = Instant::now();
    let r = rig.collector.tick().await;
    let took = started.elapsed();
    assert_eq!(r, report(3, 2, &[("timeout", 1)]));
    assert!(
        took >= timeout,
        "the round waited for the deadline: {took:?}"
    );
    // How soon after the timeout the round ends is a figure of the machine, not asserted.
    eprintln!("round with a hung pod took {took:?} (scrape timeout {timeout:?})");
    assert_eq!(rig.count("timeout"), 1);
    assert_eq!(rig.served(), ["ws-a", "ws-b"]);
    assert_eq!(hung.requests(), 1, "the hung pod did receive the request");
}

#[tokio::test]
async fn five_rounds_reuse_one_keep_alive_connection() {
    let pod = FakePod::start(Behavior::Body(exposition(&[("chat", 1)]))).await;
    let rig = Rig::new(Settings::default());
    rig.track("ws-0", pod.url());
    for round in 0..5 {
        assert_eq!(
            rig.collector.tick().await,
            report(1, 1, &[]),
            "round {round}"
        );
    }
    assert_eq!(pod.requests(), 5);
    assert_eq!(pod.accepted(), 1, "one TCP connection for five rounds");
}

/// Time of one round over four pods that each answer after 300 ms.
async fn round_over_four_slow_pods(concurrency: usize) -> (Duration, Vec<FakePod>) {
    let mut pods = Vec::new();
    for _ in 0..4 {
        pods.push(
            FakePod::start(Behavior::Slow(
                Duration::from_millis(300),
                exposition(&[("chat", 1)]),
            ))
            .await,
        );
    }
    let rig = Rig::new(Settings {
        concurrency,
        ..Settings::default()
    });
    for (i, p) in pods.iter().enumerate() {
        rig.track(&format!("ws-{i}"), p.url());
    }
    let started = Instant::now();
    let r = rig.collector.tick().await;
    let took = started.elapsed();
    assert_eq!(r, report(4, 4, &[]), "concurrency {concurrency}");
    (took, pods)
}

#[tokio::test]
async fn scrape_concurrency_bounds_how_many_pods_are_scraped_at_once() {
    let (two, _p2) = round_over_four_slow_pods(2).await;
    let (four, _p4) = round_over_four_slow_pods(4).await;
    // Two waves of 300 ms cannot take less than 600 ms; one wave not less than 300 ms.
    assert!(two >= Duration::from_millis(600), "concurrency 2: {two:?}");
    assert!(
        four >= Duration::from_millis(300),
        "concurrency 4: {four:?}"
    );
    let ratio = two.as_secs_f64() / four.as_secs_f64();
    assert!(
        ratio >= 1.5,
        "concurrency 2 should take about twice as long as 4: {two:?} vs {four:?} (ratio {ratio:.2})"
    );
}

// ---------------------------------------------------------------------------------------------
// Pod incarnations
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_pod_recreated_under_the_same_name_does_not_inherit_the_old_reading() {
    let pod = FakePod::start(Behavior::Body(exposition(&[("chat", 9)]))).await;
    let rig = Rig::new(Settings::default());
    rig.track_uid("ws-0", "uid-old", pod.url());
    assert_eq!(rig.collector.tick().await, report(1, 1, &[]));
    assert_eq!(rig.milli("ws-0"), Some(9000));

    // Re-created (same name, new UID) via upsert: the old reading is gone.
    rig.track_uid("ws-0", "uid-new", pod.url());
    assert_eq!(rig.milli("ws-0"), None);
    assert!(rig.served().is_empty());

    // Scraped again: the new incarnation gets its own value.
    pod.set(Behavior::Body(exposition(&[("chat", 4)])));
    assert_eq!(rig.collector.tick().await, report(1, 1, &[]));
    assert_eq!(rig.milli("ws-0"), Some(4000));

    // The same through a full re-list.
    rig.store.replace_all(vec![PodTarget {
        key: key("ws-0"),
        uid: "uid-newer".into(),
        labels: Default::default(),
        url: pod.url(),
        ready: true,
    }]);
    assert_eq!(rig.milli("ws-0"), None);
}

#[tokio::test]
async fn a_scrape_in_flight_when_the_pod_is_recreated_is_discarded() {
    let pod = FakePod::start(Behavior::Slow(
        Duration::from_millis(400),
        exposition(&[("chat", 9)]),
    ))
    .await;
    let rig = Rig::new(Settings::default());
    rig.track_uid("ws-0", "uid-old", pod.url());
    let recreate = async {
        eventually(
            Duration::from_secs(5),
            "the scrape to reach the pod",
            || async { (pod.requests() == 1).then_some(()) },
        )
        .await;
        rig.track_uid("ws-0", "uid-new", pod.url());
    };
    let (r, ()) = tokio::join!(rig.collector.tick(), recreate);
    assert_eq!(r, report(1, 0, &[("discarded", 1)]));
    assert_eq!(rig.count("discarded"), 1);
    assert_eq!(
        rig.milli("ws-0"),
        None,
        "the old incarnation's reading is not recorded"
    );
}

// ---------------------------------------------------------------------------------------------
// The running adapter
// ---------------------------------------------------------------------------------------------

const WILDCARD: &str = "/apis/custom.metrics.k8s.io/v1beta2/namespaces/chat/pods/%2A/websocket_connections?labelSelector=app%3Dws";

fn single(name: &str) -> String {
    format!("/apis/custom.metrics.k8s.io/v1beta2/namespaces/chat/pods/{name}/websocket_connections")
}

fn ws_pod(name: &str, url: String) -> StaticPod<'_> {
    StaticPod {
        namespace: NS,
        name,
        labels: &[("app", "ws")],
        url,
    }
}

/// (name, value) of each item of a MetricValueList.
fn items(body: &serde_json::Value) -> Vec<(String, String)> {
    body["items"]
        .as_array()
        .unwrap_or_else(|| panic!("no items: {body}"))
        .iter()
        .map(|i| {
            (
                i["describedObject"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                i["value"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

fn pairs(want: &[(&str, &str)]) -> Vec<(String, String)> {
    want.iter()
        .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
        .collect()
}

/// Replaces the file in one step, so the adapter's watcher never reads half of it.
fn write_atomically(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("yaml.tmp");
    std::fs::write(&tmp, text).expect("write temp pods file");
    std::fs::rename(&tmp, path).expect("rename pods file");
}

#[tokio::test]
async fn a_failing_pod_is_served_with_its_last_value_then_left_out_and_never_as_zero() {
    let pod = FakePod::start(Behavior::Body(exposition(&[("chat", 5)]))).await;
    let yaml = static_pods_yaml(&[ws_pod("ws-0", pod.url())]);
    let adapter = Adapter::start_static(
        &yaml,
        &[
            "--scrape-interval",
            "200ms",
            "--scrape-timeout",
            "150ms",
            "--max-age",
            "1s",
        ],
    )
    .await;
    adapter.wait_ready(Duration::from_secs(10)).await;
    let client = adapter.client();
    let resp = client.get(adapter.api, WILDCARD).await;
    assert_eq!(items(&resp.json()), pairs(&[("ws-0", "5")]));

    pod.set(Behavior::Status(500));
    let flipped = Instant::now();
    let mut kept = 0;
    let gone_after = loop {
        let resp = client.get(adapter.api, WILDCARD).await;
        assert_eq!(resp.status, 200, "{}", resp.body);
        match items(&resp.json()).as_slice() {
            [(name, value)] => {
                assert_eq!(
                    (name.as_str(), value.as_str()),
                    ("ws-0", "5"),
                    "only the last good value"
                );
                kept += 1;
            }
            [] => break flipped.elapsed(),
            other => panic!("unexpected items {other:?}"),
        }
        // A give-up bound for a loaded machine; the claim is the lower bound below.
        assert!(
            flipped.elapsed() < Duration::from_secs(120),
            "never expired"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        kept >= 1,
        "the last good value was served after the failure began"
    );
    // The last good reading is at most one interval (plus a round) old at the flip.
    assert!(
        gone_after >= Duration::from_millis(500),
        "dropped too early: {gone_after:?}"
    );
    let resp = client.get(adapter.api, &single("ws-0")).await;
    assert_eq!(resp.status, 404, "{}", resp.body);
    // Stays out while the pod keeps failing: two more failed scrapes of it (counted, not slept).
    let failed_so_far = pod.requests();
    eventually(
        Duration::from_secs(120),
        "two more scrapes of the failing pod",
        || async { (pod.requests() >= failed_so_far + 2).then_some(()) },
    )
    .await;
    let resp = client.get(adapter.api, WILDCARD).await;
    assert_eq!(items(&resp.json()), pairs(&[]));
    adapter.stop().await;
}

#[tokio::test]
async fn the_api_answers_promptly_while_a_pod_hangs() {
    let good = FakePod::start(Behavior::Body(exposition(&[("chat", 3)]))).await;
    let hung = FakePod::start(Behavior::Hang).await;
    let yaml = static_pods_yaml(&[ws_pod("ws-good", good.url()), ws_pod("ws-hung", hung.url())]);
    let timeout = Duration::from_millis(900);
    let adapter = Adapter::start_static(
        &yaml,
        &[
            "--scrape-interval",
            "1s",
            "--scrape-timeout",
            "900ms",
            "--max-age",
            "5s",
        ],
    )
    .await;
    adapter.wait_ready(Duration::from_secs(10)).await;
    let client = adapter.client();
    let first_hang = hung.requests();
    let mut slowest = Duration::ZERO;
    let started = Instant::now();
    // Until two more hung scrapes have started, so requests land while one is in progress
    // (ended on a count; the deadline only gives up).
    while hung.requests() < first_hang + 2 {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no new scrape of the hung pod"
        );
        let t = Instant::now();
        let resp = client.get(adapter.api, WILDCARD).await;
        slowest = slowest.max(t.elapsed());
        assert_eq!(resp.status, 200, "{}", resp.body);
        assert_eq!(items(&resp.json()), pairs(&[("ws-good", "3")]));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        hung.requests() > first_hang,
        "a new hung scrape started during the requests"
    );
    // Every answer above was the served value while a scrape hung; how fast they came is a
    // figure of the machine (`make bench`, api), printed rather than bounded.
    eprintln!("slowest API answer {slowest:?} while a pod hangs (scrape timeout {timeout:?})");
    adapter.stop().await;
}

/// Value of `ws_metrics_adapter_inventory_errors_total` on the adapter's own metrics.
async fn inventory_errors(adapter: &Adapter) -> Option<u64> {
    let (code, body) = plain_get(adapter.metrics, "/metrics").await.ok()?;
    if code != 200 {
        return None;
    }
    body.lines()
        .find_map(|l| l.strip_prefix("ws_metrics_adapter_inventory_errors_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
}

#[tokio::test]
async fn static_mode_follows_the_pods_file_and_keeps_the_last_good_inventory_on_a_bad_edit() {
    let a = FakePod::start(Behavior::Body(exposition(&[("chat", 1)]))).await;
    let b = FakePod::start(Behavior::Body(exposition(&[("chat", 2)]))).await;
    let c = FakePod::start(Behavior::Body(exposition(&[("chat", 3)]))).await;
    let yaml = static_pods_yaml(&[ws_pod("ws-a", a.url()), ws_pod("ws-b", b.url())]);
    let adapter = Adapter::start_static(
        &yaml,
        &["--scrape-interval", "200ms", "--scrape-timeout", "150ms"],
    )
    .await;
    adapter.wait_ready(Duration::from_secs(10)).await;
    let client = adapter.client();
    let served = |want: Vec<(String, String)>| {
        let client = &client;
        let api = adapter.api;
        move || {
            let want = want.clone();
            async move {
                let resp = client.get(api, WILDCARD).await;
                (resp.status == 200 && items(&resp.json()) == want).then_some(())
            }
        }
    };
    eventually(
        Duration::from_secs(5),
        "ws-a and ws-b served",
        served(pairs(&[("ws-a", "1"), ("ws-b", "2")])),
    )
    .await;

    // Add ws-c, remove ws-b.
    write_atomically(
        &adapter.pods_file,
        &static_pods_yaml(&[ws_pod("ws-a", a.url()), ws_pod("ws-c", c.url())]),
    );
    let edited = Instant::now();
    eventually(
        Duration::from_secs(120),
        "the edit to be served",
        served(pairs(&[("ws-a", "1"), ("ws-c", "3")])),
    )
    .await;
    let took = edited.elapsed();
    let resp = client.get(adapter.api, &single("ws-b")).await;
    assert_eq!(resp.status, 404, "removed pod: {}", resp.body);

    // A broken edit: noticed, reported, and the previous pods keep being scraped and served.
    let errors_before = inventory_errors(&adapter).await.unwrap_or(0);
    write_atomically(
        &adapter.pods_file,
        "pods:\n- namespace: chat\n  name: Not_A_Name\n  metricsUrl: ftp://nowhere\n",
    );
    eventually(
        Duration::from_secs(5),
        "the bad edit to be reported",
        || async {
            inventory_errors(&adapter)
                .await
                .filter(|n| *n > errors_before)
        },
    )
    .await;
    let scrapes_of_c = c.requests();
    eventually(
        Duration::from_secs(5),
        "ws-c to keep being scraped",
        || async { (c.requests() >= scrapes_of_c + 2).then_some(()) },
    )
    .await;
    let resp = client.get(adapter.api, WILDCARD).await;
    assert_eq!(items(&resp.json()), pairs(&[("ws-a", "1"), ("ws-c", "3")]));
    assert!(!adapter.task.is_finished(), "the adapter keeps running");
    assert_eq!(
        plain_get(adapter.metrics, "/readyz").await.map(|r| r.0),
        Ok(200)
    );

    // The watcher survived the bad edit: a good edit is applied again.
    write_atomically(
        &adapter.pods_file,
        &static_pods_yaml(&[ws_pod("ws-c", c.url())]),
    );
    eventually(
        Duration::from_secs(120),
        "the repaired file to be served",
        served(pairs(&[("ws-c", "3")])),
    )
    .await;
    eprintln!("first edit applied in {took:?}");
    adapter.stop().await;
}
