//! The controller's decisions, as pure functions of one workload's pods and what the controller
//! remembers of them: the imbalance, which pods to ask to shed how many connections, and which
//! deletion costs to write. No I/O here, so every rule is a unit test.
//!
//! The rules (README, "Connections follow the replicas"):
//! - The workload's mean is over its Ready pods with a fresh value.
//! - A pod is *hot* when it holds more than `(1 + tolerance) × mean`. A pod hot on every sample
//!   for `settle` is asked to shed `min(value − ⌈mean⌉, ⌊max_shed_fraction × value⌋)`: never below
//!   the mean, never more than the fraction at once.
//! - After a shed, the pod is judged again only on a sample taken `after_shed` later (time for
//!   the shed clients to reconnect elsewhere), and shed again at once if still hot.
//! - Nothing is shed while the workload is mid-rollout, while any of its pods is not Ready or has
//!   no fresh value (a pod whose metrics stop answering is never shed from, and its silence
//!   stops the others' shedding too), or with fewer than two pods.
//! - The deletion cost follows the live count with hysteresis: rewritten only when it differs by
//!   more than [`COST_MIN_STEP`] and [`COST_MIN_RATIO`] of the larger, and at most once per pod
//!   per `cost_min_interval`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Smallest change of a pod's count that rewrites its deletion cost.
pub const COST_MIN_STEP: i64 = 2;
/// Smallest change of a pod's count, relative to the larger of old and new, that rewrites its
/// deletion cost.
pub const COST_MIN_RATIO: f64 = 0.1;

/// The knobs of the rules (from the `--rebalance-*` and `--deletion-cost-*` flags).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tuning {
    /// A pod above `(1 + tolerance) × mean` is hot.
    pub tolerance: f64,
    /// How long a pod must be hot before its first shed.
    pub settle: Duration,
    /// At most this fraction of a pod's connections is shed at once.
    pub max_shed_fraction: f64,
    /// A pod shed from is judged again only on a sample this much younger than the shed.
    pub after_shed: Duration,
    /// A pod's deletion cost is rewritten at most this often.
    pub cost_min_interval: Duration,
}

/// One pod of a workload, as the controller sees it at one tick.
#[derive(Debug, Clone, PartialEq)]
pub struct PodView {
    /// Pod name.
    pub name: String,
    /// Its fresh value (within `--max-age`), if any.
    pub value: Option<f64>,
    /// When that value was sampled.
    pub sampled_at: Option<Instant>,
    /// Its `Ready` condition is `True`.
    pub ready: bool,
    /// It implements the shed contract (annotated with a shed path).
    pub sheddable: bool,
    /// It opted in to the deletion cost.
    pub cost_opt_in: bool,
    /// The deletion cost it carries now.
    pub cost: Option<i32>,
}

/// Why a workload is not shed from at this tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hold {
    /// A rollout is in progress (old and new pods, or the controller has not caught up).
    Rolling,
    /// This pod is not Ready.
    NotReady(String),
    /// This pod has no fresh value.
    NoValue(String),
    /// Fewer than two pods: nowhere to move connections to.
    TooFew,
}

/// What to do for one workload at one tick.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Decision {
    /// Max ÷ mean over the Ready pods with a fresh value (1 when they all hold 0); `None` with no
    /// such pod.
    pub imbalance: Option<f64>,
    /// The mean those pods hold.
    pub mean: Option<f64>,
    /// Why nothing is shed, if so.
    pub hold: Option<Hold>,
    /// `(pod, connections)` to ask to shed, largest first.
    pub sheds: Vec<(String, u64)>,
    /// `(pod, cost)` to write, largest change first.
    pub costs: Vec<(String, i32)>,
}

#[derive(Debug, Clone, Default)]
struct PodMemory {
    /// First sample of the current hot streak.
    hot_since: Option<Instant>,
    /// Last shed asked of the pod, while it stays hot.
    shed_at: Option<Instant>,
    /// Last deletion cost written.
    cost_written_at: Option<Instant>,
}

/// What the controller remembers of one workload's pods between ticks.
#[derive(Debug, Clone, Default)]
pub struct Memory {
    pods: HashMap<String, PodMemory>,
}

impl Memory {
    /// Notes that `pod` was asked to shed at `at`.
    pub fn shed_sent(&mut self, pod: &str, at: Instant) {
        let m = self.pods.entry(pod.to_owned()).or_default();
        m.shed_at = Some(at);
        m.hot_since = None;
    }

    /// Notes that `pod`'s deletion cost was written at `at`.
    pub fn cost_written(&mut self, pod: &str, at: Instant) {
        self.pods.entry(pod.to_owned()).or_default().cost_written_at = Some(at);
    }
}

/// Decides one tick for one workload. `memory` keeps the hot streaks between ticks; the caller
/// reports what it sent with [`Memory::shed_sent`] and [`Memory::cost_written`] (a global rate
/// limit may send less than decided).
pub fn decide(
    memory: &mut Memory,
    rolling: bool,
    pods: &[PodView],
    tuning: &Tuning,
    now: Instant,
) -> Decision {
    memory
        .pods
        .retain(|name, _| pods.iter().any(|p| &p.name == name));
    let measured: Vec<(&PodView, f64)> = pods
        .iter()
        .filter(|p| p.ready)
        .filter_map(|p| Some((p, p.value?)))
        .collect();
    let mut decision = Decision::default();
    if !measured.is_empty() {
        let sum: f64 = measured.iter().map(|(_, v)| v).sum();
        let mean = sum / measured.len() as f64;
        let max = measured.iter().map(|(_, v)| *v).fold(f64::MIN, f64::max);
        decision.mean = Some(mean);
        decision.imbalance = Some(if mean > 0.0 { max / mean } else { 1.0 });
    }
    decision.hold = if rolling {
        Some(Hold::Rolling)
    } else if let Some(p) = pods.iter().find(|p| !p.ready) {
        Some(Hold::NotReady(p.name.clone()))
    } else if let Some(p) = pods.iter().find(|p| p.value.is_none()) {
        Some(Hold::NoValue(p.name.clone()))
    } else if measured.len() < 2 {
        Some(Hold::TooFew)
    } else {
        None
    };

    if let Some(mean) = decision.mean {
        let threshold = (1.0 + tuning.tolerance) * mean;
        for (p, value) in &measured {
            let m = memory.pods.entry(p.name.clone()).or_default();
            if *value <= threshold || decision.hold.is_some() {
                // A streak needs every sample hot and the workload steady.
                m.hot_since = None;
                m.shed_at = None;
                continue;
            }
            let sampled = p.sampled_at.unwrap_or(now);
            let due = match m.shed_at {
                // Judged again once a sample shows where the shed clients went.
                Some(shed) => sampled >= shed + tuning.after_shed,
                None => {
                    let since = *m.hot_since.get_or_insert(sampled);
                    sampled.saturating_duration_since(since) >= tuning.settle
                }
            };
            if !due || !p.sheddable {
                continue;
            }
            let excess = value - mean.ceil();
            let cap = (tuning.max_shed_fraction * value).floor();
            let count = excess.min(cap);
            if count >= 1.0 {
                decision.sheds.push((p.name.clone(), count as u64));
            }
        }
        decision
            .sheds
            .sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    }

    let mut costs: Vec<(String, i32, i64)> = Vec::new();
    for (p, value) in &measured {
        if !p.cost_opt_in {
            continue;
        }
        let want = value
            .round()
            .clamp(f64::from(i32::MIN), f64::from(i32::MAX)) as i32;
        let change = match p.cost {
            None => i64::MAX,
            Some(have) => {
                let diff = (i64::from(want) - i64::from(have)).abs();
                let larger = i64::from(want).abs().max(i64::from(have).abs()) as f64;
                if diff <= COST_MIN_STEP || (diff as f64) <= COST_MIN_RATIO * larger {
                    continue;
                }
                diff
            }
        };
        let m = memory.pods.entry(p.name.clone()).or_default();
        if m.cost_written_at
            .is_some_and(|at| now.saturating_duration_since(at) < tuning.cost_min_interval)
        {
            continue;
        }
        costs.push((p.name.clone(), want, change));
    }
    costs.sort_by(|a, b| b.2.cmp(&a.2).then(a.0.cmp(&b.0)));
    decision.costs = costs.into_iter().map(|(n, c, _)| (n, c)).collect();
    decision
}

/// A token bucket: `rate` tokens a second, at most `burst` saved up.
#[derive(Debug, Clone)]
pub struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Option<Instant>,
}

impl Bucket {
    /// A full bucket.
    pub fn new(rate: f64, burst: f64) -> Self {
        Self {
            rate,
            burst,
            tokens: burst,
            last: None,
        }
    }

    /// Takes up to `want` whole tokens at `now`; returns how many were taken.
    pub fn take(&mut self, want: u64, now: Instant) -> u64 {
        if let Some(last) = self.last {
            let earned = now.saturating_duration_since(last).as_secs_f64() * self.rate;
            self.tokens = (self.tokens + earned).min(self.burst);
        }
        self.last = Some(now);
        let taken = (want as f64).min(self.tokens.floor()).max(0.0);
        self.tokens -= taken;
        taken as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TUNING: Tuning = Tuning {
        tolerance: 0.1,
        settle: Duration::from_secs(3),
        max_shed_fraction: 0.5,
        after_shed: Duration::from_secs(1),
        cost_min_interval: Duration::from_secs(10),
    };

    fn pod(name: &str, value: Option<f64>, at: Instant) -> PodView {
        PodView {
            name: name.into(),
            value,
            sampled_at: value.map(|_| at),
            ready: true,
            sheddable: true,
            cost_opt_in: false,
            cost: None,
        }
    }

    fn six(first: f64, at: Instant) -> Vec<PodView> {
        let mut pods = vec![pod("a", Some(first), at)];
        for n in ["b", "c", "d", "e", "f"] {
            pods.push(pod(n, Some(0.0), at));
        }
        pods
    }

    #[test]
    fn a_hot_pod_is_shed_from_after_settle_never_below_the_mean_nor_past_the_fraction() {
        let t0 = Instant::now();
        let mut mem = Memory::default();
        let d = decide(&mut mem, false, &six(600.0, t0), &TUNING, t0);
        assert_eq!(d.imbalance, Some(6.0));
        assert_eq!(d.mean, Some(100.0));
        assert!(d.sheds.is_empty(), "not hot for settle yet: {d:?}");
        let t2 = t0 + Duration::from_secs(2);
        assert!(
            decide(&mut mem, false, &six(600.0, t2), &TUNING, t2)
                .sheds
                .is_empty()
        );
        let t3 = t0 + Duration::from_secs(3);
        let d = decide(&mut mem, false, &six(600.0, t3), &TUNING, t3);
        // min(600 − 100, 0.5 × 600)
        assert_eq!(d.sheds, vec![("a".to_owned(), 300)]);
        mem.shed_sent("a", t3);
        // A sample from before the clients could move: not judged.
        let early = t3 + Duration::from_millis(500);
        let mut pods = six(300.0, early);
        for p in &mut pods[1..] {
            p.value = Some(60.0);
        }
        assert!(
            decide(&mut mem, false, &pods, &TUNING, early)
                .sheds
                .is_empty()
        );
        // Once a later sample shows it still hot: shed again at once, to the mean at most.
        let later = t3 + Duration::from_secs(1);
        let mut pods = six(300.0, later);
        for p in &mut pods[1..] {
            p.value = Some(60.0);
        }
        let d = decide(&mut mem, false, &pods, &TUNING, later);
        assert_eq!(d.sheds, vec![("a".to_owned(), 150)]); // min(300 − 100, 150)
        // Within tolerance: nothing.
        let mut pods = six(105.0, later);
        for p in &mut pods[1..] {
            p.value = Some(99.0);
        }
        assert!(
            decide(&mut mem, false, &pods, &TUNING, later + TUNING.settle)
                .sheds
                .is_empty()
        );
    }

    #[test]
    fn a_streak_broken_by_one_cool_sample_starts_again() {
        let t0 = Instant::now();
        let mut mem = Memory::default();
        decide(&mut mem, false, &six(600.0, t0), &TUNING, t0);
        let t2 = t0 + Duration::from_secs(2);
        let mut cool = six(0.0, t2);
        for p in &mut cool {
            p.value = Some(100.0);
        }
        decide(&mut mem, false, &cool, &TUNING, t2);
        let t4 = t0 + Duration::from_secs(4);
        assert!(
            decide(&mut mem, false, &six(600.0, t4), &TUNING, t4)
                .sheds
                .is_empty()
        );
    }

    #[test]
    fn nothing_is_shed_while_rolling_or_a_pod_is_unready_or_silent_or_alone() {
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(10);
        let run = |rolling: bool, edit: &dyn Fn(&mut Vec<PodView>)| {
            let mut mem = Memory::default();
            let mut pods = six(600.0, t0);
            edit(&mut pods);
            decide(&mut mem, rolling, &pods, &TUNING, t0);
            let mut pods = six(600.0, later);
            edit(&mut pods);
            decide(&mut mem, rolling, &pods, &TUNING, later)
        };
        let d = run(true, &|_| {});
        assert_eq!(d.hold, Some(Hold::Rolling));
        assert!(d.sheds.is_empty());
        let d = run(false, &|p| p[2].ready = false);
        assert_eq!(d.hold, Some(Hold::NotReady("c".into())));
        assert!(d.sheds.is_empty());
        // A pod whose metrics stopped: no value, no shedding anywhere, and it is never shed from.
        let d = run(false, &|p| p[0].value = None);
        assert_eq!(d.hold, Some(Hold::NoValue("a".into())));
        assert!(d.sheds.is_empty());
        let d = run(false, &|p| p.truncate(1));
        assert_eq!(d.hold, Some(Hold::TooFew));
        assert!(d.sheds.is_empty());
        // Control: the same run, steady, sheds.
        assert_eq!(run(false, &|_| {}).sheds.len(), 1);
    }

    #[test]
    fn a_pod_without_the_contract_is_never_asked() {
        let t0 = Instant::now();
        let mut mem = Memory::default();
        let mut pods = six(600.0, t0);
        pods[0].sheddable = false;
        decide(&mut mem, false, &pods, &TUNING, t0);
        let t = t0 + Duration::from_secs(5);
        let mut pods = six(600.0, t);
        pods[0].sheddable = false;
        let d = decide(&mut mem, false, &pods, &TUNING, t);
        assert!(d.sheds.is_empty());
        assert_eq!(d.imbalance, Some(6.0), "the imbalance is still measured");
    }

    #[test]
    fn deletion_costs_follow_counts_with_hysteresis_and_a_per_pod_interval() {
        let t0 = Instant::now();
        let mut mem = Memory::default();
        let mut pods = vec![pod("busy", Some(100.0), t0), pod("idle", Some(3.0), t0)];
        for p in &mut pods {
            p.cost_opt_in = true;
        }
        let d = decide(&mut mem, false, &pods, &TUNING, t0);
        assert_eq!(d.costs, vec![("busy".into(), 100), ("idle".into(), 3)]);
        mem.cost_written("busy", t0);
        mem.cost_written("idle", t0);
        pods[0].cost = Some(100);
        pods[1].cost = Some(3);
        // Small moves: no patch (within 2, or within 10 % of the larger).
        pods[0].value = Some(108.0);
        pods[1].value = Some(5.0);
        let t = t0 + Duration::from_secs(60);
        assert!(decide(&mut mem, false, &pods, &TUNING, t).costs.is_empty());
        // A large move, but too soon after the last write.
        pods[1].value = Some(40.0);
        let soon = t0 + Duration::from_secs(5);
        assert!(
            decide(&mut mem, false, &pods, &TUNING, soon)
                .costs
                .is_empty()
        );
        assert_eq!(
            decide(&mut mem, false, &pods, &TUNING, t).costs,
            vec![("idle".into(), 40)]
        );
        // Not opted in, or no fresh value: never written.
        pods[1].cost_opt_in = false;
        pods[0].value = None;
        pods[0].cost = Some(0);
        assert!(decide(&mut mem, false, &pods, &TUNING, t).costs.is_empty());
    }

    #[test]
    fn the_bucket_refills_at_its_rate_up_to_its_burst() {
        let t0 = Instant::now();
        let mut b = Bucket::new(100.0, 200.0);
        assert_eq!(b.take(500, t0), 200);
        assert_eq!(b.take(10, t0), 0);
        assert_eq!(b.take(500, t0 + Duration::from_millis(500)), 50);
        assert_eq!(b.take(1000, t0 + Duration::from_secs(100)), 200);
    }
}
