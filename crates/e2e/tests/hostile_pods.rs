//! Wire tests of issue 11's hostile pods: the in-process adapter (static mode, short interval and
//! `--max-age`) scrapes a [`HostilePod`] that first answers well, then misbehaves in one mode.
//! Over many scrape rounds (counted by the pod's request counter) every API answer must be the
//! last good value, fresh, or no value at all: 0 false zeros, 0 cut or summed numbers, 0 values
//! past `--max-age`. The adapter's own `/metrics` must count the failure under its outcome.

use ws_e2e as support;

use std::time::{Duration, SystemTime};

use support::hostile_pod::{GOOD_VALUE, HostilePod, Mode, bad_cuts};
use support::{Adapter, StaticPod, plain_get, static_pods_yaml};

const INTERVAL: &str = "250ms";
const TIMEOUT: &str = "200ms";
const MAX_AGE: Duration = Duration::from_secs(1);
const MAX_BODY: usize = 64 * 1024;
/// Scrapes of the pod in the hostile mode before a test may end.
const ROUNDS: usize = 12;
/// How long a test may take to see those rounds: a liveness deadline for a stuck adapter, far
/// above what the rounds need (about 3 s), so a busy machine does not break it.
const DEADLINE: Duration = Duration::from_secs(120);

const WILDCARD: &str = "/apis/custom.metrics.k8s.io/v1beta2/namespaces/chat/pods/%2A/websocket_connections?labelSelector=app%3Dws";

/// The adapter scraping one hostile pod, `ws-0`, that started in [`Mode::Good`].
struct Rig {
    pod: HostilePod,
    adapter: Adapter,
    client: support::reqwest_like::Client,
}

/// One API answer about `ws-0`: when the request was sent, and the value with its timestamp if
/// the pod was served.
struct Observation {
    sent_at: SystemTime,
    item: Option<(String, SystemTime)>,
}

impl Rig {
    /// The adapter over `pod` (which must answer well for now); a TLS pod's CA is trusted.
    async fn start(pod: HostilePod) -> Self {
        let yaml = static_pods_yaml(&[StaticPod {
            namespace: "chat",
            name: "ws-0",
            labels: &[("app", "ws")],
            url: pod.url(),
        }]);
        let max_age = format!("{}ms", MAX_AGE.as_millis());
        let max_body = MAX_BODY.to_string();
        let ca = pod.ca_path().map(|p| p.display().to_string());
        let mut flags = vec![
            "--scrape-interval",
            INTERVAL,
            "--scrape-timeout",
            TIMEOUT,
            "--max-age",
            &max_age,
            "--scrape-max-body-bytes",
            &max_body,
        ];
        if let Some(ca) = &ca {
            flags.extend(["--scrape-ca-file", ca.as_str()]);
        }
        let adapter = Adapter::start_static(&yaml, &flags).await;
        adapter.wait_ready(DEADLINE).await;
        let client = adapter.client();
        let rig = Self {
            pod,
            adapter,
            client,
        };
        let good = GOOD_VALUE.to_string();
        rig.until("the good value to be served", |o| {
            o.item.as_ref().is_some_and(|(v, _)| *v == good)
        })
        .await;
        rig
    }

    async fn observe(&self) -> Observation {
        let sent_at = SystemTime::now();
        let resp = self.client.get(self.adapter.api, WILDCARD).await;
        assert_eq!(resp.status, 200, "{}", resp.body);
        let body = resp.json();
        let items = body["items"]
            .as_array()
            .unwrap_or_else(|| panic!("no items: {body}"));
        assert!(items.len() <= 1, "one pod, many items: {body}");
        let item = items.first().map(|i| {
            assert_eq!(i["describedObject"]["name"], "ws-0", "{body}");
            let value = i["value"].as_str().expect("value").to_owned();
            let ts = humantime::parse_rfc3339(i["timestamp"].as_str().expect("timestamp"))
                .expect("RFC 3339 timestamp");
            (value, ts)
        });
        Observation { sent_at, item }
    }

    /// Polls the API until `done` holds for an answer, checking nothing else.
    async fn until(&self, what: &str, done: impl Fn(&Observation) -> bool) {
        let start = std::time::Instant::now();
        loop {
            if done(&self.observe().await) {
                return;
            }
            assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `ws_metrics_adapter_scrapes_total{outcome}` on the adapter's own metrics.
    async fn scrapes(&self, outcome: &str) -> u64 {
        let (code, body) = plain_get(self.adapter.metrics, "/metrics")
            .await
            .expect("adapter metrics");
        assert_eq!(code, 200, "{body}");
        let prefix = format!("ws_metrics_adapter_scrapes_total{{outcome=\"{outcome}\"}} ");
        body.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map_or(0, |v| v.trim().parse::<f64>().expect("counter") as u64)
    }
}

/// What a mode is expected to do.
struct Expect {
    /// Values the API may serve once the mode is on (the last good one, or the mode's own).
    allowed: &'static [&'static str],
    /// Outcome every hostile scrape is counted under.
    outcome: &'static str,
    /// Whether the pod must end up left out (no good scrape refreshes it any more).
    left_out: bool,
}

/// What the attack showed.
#[derive(Debug, Default)]
struct Tally {
    answers: usize,
    /// Answers that served the pod, by value.
    served: std::collections::BTreeMap<String, usize>,
    left_out: usize,
    /// Requests the pod received, and connections it accepted, in the mode.
    requests: usize,
    accepted: usize,
}

/// Switches the pod to `mode` and watches the API for at least [`ROUNDS`] scrapes of it (and,
/// when the pod must end up left out, [`ROUNDS`] more after it first is), asserting on every
/// answer that the value is allowed and not older than `--max-age`.
async fn attack(mode: Mode, expect: Expect) -> Tally {
    attack_pod(HostilePod::start(Mode::Good).await, mode, expect).await
}

/// [`attack`] on a given pod (e.g. a TLS one), started in [`Mode::Good`].
async fn attack_pod(pod: HostilePod, mode: Mode, expect: Expect) -> Tally {
    let rig = Rig::start(pod).await;
    let failures_before = rig.scrapes(expect.outcome).await;
    let requests_before = rig.pod.requests();
    let accepted_before = rig.pod.accepted();
    rig.pod.set(mode);
    let mut tally = Tally::default();
    let mut out_since: Option<usize> = None;
    let start = std::time::Instant::now();
    loop {
        let o = rig.observe().await;
        tally.answers += 1;
        match &o.item {
            Some((value, ts)) => {
                assert!(
                    expect.allowed.contains(&value.as_str()),
                    "served {value:?}; only {:?} may be served (answer {})",
                    expect.allowed,
                    tally.answers
                );
                // The timestamp has whole seconds (rounded down), hence the extra second.
                let age = o.sent_at.duration_since(*ts).unwrap_or_default();
                assert!(
                    age < MAX_AGE + Duration::from_secs(1),
                    "served {value:?} {age:?} old with --max-age {MAX_AGE:?}"
                );
                *tally.served.entry(value.clone()).or_default() += 1;
                if expect.left_out {
                    assert!(
                        out_since.is_none(),
                        "served {value:?} again after the pod was left out"
                    );
                }
            }
            None => {
                tally.left_out += 1;
                out_since.get_or_insert(rig.pod.requests());
            }
        }
        let rounds = rig.pod.requests() - requests_before;
        let settled =
            !expect.left_out || out_since.is_some_and(|at| rig.pod.requests() >= at + ROUNDS);
        if rounds >= ROUNDS && settled {
            break;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "timed out: {rounds} scrapes in the mode, left out since {out_since:?}, {tally:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let failures = rig.scrapes(expect.outcome).await - failures_before;
    assert!(
        // At least a quarter: the last scrapes may still be in flight when counted.
        failures >= (ROUNDS / 4) as u64,
        "only {failures} scrapes counted as {} in {} rounds",
        expect.outcome,
        rig.pod.requests() - requests_before
    );
    tally.requests = rig.pod.requests() - requests_before;
    tally.accepted = rig.pod.accepted() - accepted_before;
    rig.adapter.stop().await;
    tally
}

const GOOD: &[&str] = &["12"];

#[tokio::test]
async fn a_close_delimited_body_cut_short_then_closed_is_never_served() {
    // Before this fix the cut after `# TYPE` was served as "0" and the cut inside "12" as "1".
    let t = attack(
        Mode::TruncatedFin(bad_cuts()),
        Expect {
            allowed: GOOD,
            outcome: "connect_error",
            left_out: true,
        },
    )
    .await;
    assert!(t.left_out > 0, "{t:?}");
    // A close-delimited answer ends its connection: every scrape after the first (which reused
    // the good mode's keep-alive connection) needed a new one.
    assert!(t.accepted + 1 >= t.requests, "{t:?}");
}

#[tokio::test]
async fn a_close_delimited_body_cut_short_then_reset_is_never_served() {
    attack(
        Mode::TruncatedRst(bad_cuts()),
        Expect {
            allowed: GOOD,
            outcome: "connect_error",
            left_out: true,
        },
    )
    .await;
}

#[tokio::test]
async fn a_body_shorter_than_its_content_length_is_never_served() {
    attack(
        Mode::ShortContentLength(100),
        Expect {
            allowed: GOOD,
            outcome: "connect_error",
            left_out: true,
        },
    )
    .await;
}

#[tokio::test]
async fn a_chunked_body_without_its_last_chunk_is_never_served() {
    attack(
        Mode::ChunkedWithoutLastChunk,
        Expect {
            allowed: GOOD,
            outcome: "connect_error",
            left_out: true,
        },
    )
    .await;
}

#[tokio::test]
async fn duplicate_series_fail_the_scrape_instead_of_being_summed() {
    // Summed, the duplicate would read as "24".
    attack(
        Mode::DuplicateSeries,
        Expect {
            allowed: GOOD,
            outcome: "unparseable",
            left_out: true,
        },
    )
    .await;
}

#[tokio::test]
async fn a_sample_stamped_in_1970_is_never_served() {
    // Its value is 5: served as fresh, it would show.
    attack(
        Mode::Timestamp1970,
        Expect {
            allowed: GOOD,
            outcome: "success",
            left_out: true,
        },
    )
    .await;
}

#[tokio::test]
async fn a_sample_stamped_now_is_served_fresh() {
    let t = attack(
        Mode::TimestampNow,
        Expect {
            allowed: &["12", "5"],
            outcome: "success",
            left_out: false,
        },
    )
    .await;
    assert!(t.served.contains_key("5"), "{t:?}");
}

#[tokio::test]
async fn a_body_over_the_cap_is_never_served() {
    attack(
        Mode::Huge(4 * MAX_BODY),
        Expect {
            allowed: GOOD,
            outcome: "body_too_large",
            left_out: true,
        },
    )
    .await;
}

#[tokio::test]
async fn an_endless_body_is_cut_at_the_cap_and_never_served() {
    attack(
        Mode::Endless,
        Expect {
            allowed: GOOD,
            outcome: "body_too_large",
            left_out: true,
        },
    )
    .await;
}

#[tokio::test]
async fn a_pod_that_trickles_its_answer_times_out_and_is_never_served() {
    attack(
        Mode::Trickle,
        Expect {
            allowed: GOOD,
            outcome: "timeout",
            left_out: true,
        },
    )
    .await;
}

#[tokio::test]
async fn a_pod_that_never_answers_times_out_and_is_never_served() {
    attack(
        Mode::Hang,
        Expect {
            allowed: GOOD,
            outcome: "timeout",
            left_out: true,
        },
    )
    .await;
}

#[tokio::test]
async fn a_pod_flipping_between_good_and_cut_bodies_only_ever_shows_its_good_value() {
    let t = attack(
        Mode::Flip(Box::new(Mode::TruncatedFin(bad_cuts()))),
        Expect {
            allowed: GOOD,
            outcome: "connect_error",
            left_out: false,
        },
    )
    .await;
    assert!(t.served.contains_key("12"), "{t:?}");
}

// Over TLS (`https://` pods go through hyper + rustls): the same rule for close-delimited bodies,
// and the clean end of a TLS stream is its `close_notify`.

#[tokio::test]
async fn over_tls_a_close_delimited_body_cut_short_then_closed_cleanly_is_never_served() {
    // close_notify, then FIN: only the completeness rule can refuse these cuts.
    let t = attack_pod(
        HostilePod::start_tls(Mode::Good).await,
        Mode::TruncatedFin(bad_cuts()),
        Expect {
            allowed: GOOD,
            outcome: "connect_error",
            left_out: true,
        },
    )
    .await;
    assert!(t.left_out > 0, "{t:?}");
}

#[tokio::test]
async fn over_tls_a_close_delimited_body_cut_short_without_close_notify_is_never_served() {
    attack_pod(
        HostilePod::start_tls(Mode::Good).await,
        Mode::TruncatedNoCloseNotify(bad_cuts()),
        Expect {
            allowed: GOOD,
            outcome: "connect_error",
            left_out: true,
        },
    )
    .await;
}

#[tokio::test]
async fn over_tls_a_close_delimited_body_cut_short_then_reset_is_never_served() {
    attack_pod(
        HostilePod::start_tls(Mode::Good).await,
        Mode::TruncatedRst(bad_cuts()),
        Expect {
            allowed: GOOD,
            outcome: "connect_error",
            left_out: true,
        },
    )
    .await;
}

#[tokio::test]
async fn over_tls_a_whole_close_delimited_body_is_served() {
    // The control for the three above: the same framing, not cut, closed cleanly, is a value
    // (every scrape in this mode is close-delimited, and they must count as successes).
    let t = attack_pod(
        HostilePod::start_tls(Mode::Good).await,
        Mode::TruncatedFin(vec![usize::MAX]),
        Expect {
            allowed: GOOD,
            outcome: "success",
            left_out: false,
        },
    )
    .await;
    assert!(t.served.contains_key("12"), "{t:?}");
}
