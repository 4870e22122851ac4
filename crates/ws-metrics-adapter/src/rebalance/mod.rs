//! Connections follow the replicas (`--rebalance`): a controller loop that knows every pod's live
//! count and acts on the workloads an HPA scales on a served metric.
//!
//! - It measures each such workload's balance (max ÷ mean over its Ready pods with a fresh value,
//!   `ws_metrics_adapter_workload_imbalance_ratio`).
//! - After a scale-up, pods annotated `<prefix>/shed-path` that hold more than their share are
//!   asked to shed the excess through the shed contract (`docs/shed-contract.md`); their clients
//!   reconnect through the Service to the new pods. Bounded: see [`plan`] for the rules, and a
//!   global rate of shed connections per second.
//! - Pods annotated `<prefix>/deletion-cost: "true"` carry
//!   `controller.kubernetes.io/pod-deletion-cost` equal to their live count, so that a scale-down
//!   deletes the pods with the fewest clients first. Bounded: hysteresis per pod and a global
//!   rate of patches per second.
//!
//! Inputs are watches only (pods through the discovery inventory, HPAs, Deployments and
//! StatefulSets through [`workloads`]) and the store's values: nothing is listed per tick.

pub mod act;
pub(crate) mod lease;
pub mod plan;
pub(crate) mod pods;
pub(crate) mod workloads;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Args;

use crate::clock::Moment;
use crate::config::value::parse_duration;
use crate::selector::Selector;
use crate::store::{Objects, PodKey, Store, resource};
use crate::telemetry::Telemetry;
use plan::{Bucket, Hold, Memory, PodView, Tuning};
pub use pods::{DELETION_COST, PodFacts};
use workloads::Workloads;

/// Flags of the controller.
#[derive(Debug, Clone, Args)]
pub struct RebalanceArgs {
    /// Run the workload controller (cluster mode, --source=scrape): measure the balance of every
    /// workload an HPA scales on a served metric, ask pods annotated <prefix>/shed-path to shed
    /// their excess after a scale-up, keep pod-deletion-cost on pods annotated
    /// <prefix>/deletion-cost: "true". Needs RBAC to watch HPAs, Deployments and StatefulSets and
    /// to patch pods.
    #[arg(long, env = "WS_METRICS_ADAPTER_REBALANCE")]
    pub rebalance: bool,

    /// How often the controller looks at every workload.
    #[arg(long, env = "WS_METRICS_ADAPTER_REBALANCE_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub rebalance_interval: Duration,

    /// A pod holding more than (1 + tolerance) × its workload's mean is hot.
    #[arg(
        long,
        env = "WS_METRICS_ADAPTER_REBALANCE_TOLERANCE",
        default_value_t = 0.1
    )]
    pub rebalance_tolerance: f64,

    /// How long a pod must be hot, on every sample, before it is first asked to shed.
    #[arg(long, env = "WS_METRICS_ADAPTER_REBALANCE_SETTLE", default_value = "3s", value_parser = parse_duration)]
    pub rebalance_settle: Duration,

    /// Largest fraction of a pod's connections asked to shed at once (0 < f ≤ 1).
    #[arg(
        long,
        env = "WS_METRICS_ADAPTER_REBALANCE_MAX_SHED_FRACTION",
        default_value_t = 0.5
    )]
    pub rebalance_max_shed_fraction: f64,

    /// Connections asked to shed per second at most, all workloads together (also the burst).
    #[arg(
        long,
        env = "WS_METRICS_ADAPTER_REBALANCE_MAX_SHED_RATE",
        default_value_t = 200.0
    )]
    pub rebalance_max_shed_rate: f64,

    /// Deadline of one shed request.
    #[arg(long, env = "WS_METRICS_ADAPTER_REBALANCE_SHED_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub rebalance_shed_timeout: Duration,

    /// Pod-deletion-cost patches per second at most, all pods together.
    #[arg(
        long,
        env = "WS_METRICS_ADAPTER_DELETION_COST_MAX_PATCHES_PER_SECOND",
        default_value_t = 5.0
    )]
    pub deletion_cost_max_patches_per_second: f64,

    /// A pod's deletion cost is rewritten at most this often.
    #[arg(long, env = "WS_METRICS_ADAPTER_DELETION_COST_MIN_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub deletion_cost_min_interval: Duration,

    /// Name of the Lease (coordination.k8s.io) that elects the one replica whose controller acts
    /// on pods; every replica measures.
    #[arg(
        long,
        env = "WS_METRICS_ADAPTER_REBALANCE_LEASE_NAME",
        default_value = "ws-metrics-adapter-rebalance"
    )]
    pub rebalance_lease_name: String,

    /// Namespace of that Lease [default: the adapter's own (its service account's), else
    /// default].
    #[arg(long, env = "WS_METRICS_ADAPTER_REBALANCE_LEASE_NAMESPACE")]
    pub rebalance_lease_namespace: Option<String>,
}

/// The controller's validated settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Tick period.
    pub interval: Duration,
    /// The rules' knobs.
    pub tuning: Tuning,
    /// Shed connections per second (and burst).
    pub max_shed_rate: f64,
    /// Shed request deadline.
    pub shed_timeout: Duration,
    /// Deletion-cost patches per second (burst: one second's worth, at least 1).
    pub max_patch_rate: f64,
    /// Lease name.
    pub lease_name: String,
    /// Lease namespace (`None`: the adapter's own).
    pub lease_namespace: Option<String>,
}

impl RebalanceArgs {
    /// The settings when `--rebalance` is given, with every problem pushed to `problems`.
    pub fn settings(&self, problems: &mut Vec<String>) -> Option<Settings> {
        if !self.rebalance {
            return None;
        }
        if self.rebalance_interval < Duration::from_millis(100) {
            problems.push("--rebalance-interval must be at least 100ms".into());
        }
        if !(0.0..=10.0).contains(&self.rebalance_tolerance) {
            problems.push("--rebalance-tolerance must be between 0 and 10".into());
        }
        if !(self.rebalance_max_shed_fraction > 0.0 && self.rebalance_max_shed_fraction <= 1.0) {
            problems.push("--rebalance-max-shed-fraction must be more than 0 and at most 1".into());
        }
        for (flag, v) in [
            ("--rebalance-max-shed-rate", self.rebalance_max_shed_rate),
            (
                "--deletion-cost-max-patches-per-second",
                self.deletion_cost_max_patches_per_second,
            ),
        ] {
            if !(v.is_finite() && v > 0.0) {
                problems.push(format!("{flag} must be more than 0"));
            }
        }
        if self.rebalance_shed_timeout.is_zero() {
            problems.push("--rebalance-shed-timeout must be more than 0".into());
        }
        Some(Settings {
            interval: self.rebalance_interval,
            tuning: Tuning {
                tolerance: self.rebalance_tolerance,
                settle: self.rebalance_settle,
                max_shed_fraction: self.rebalance_max_shed_fraction,
                // One tick for the shed clients to reconnect and one scrape to see it.
                after_shed: self.rebalance_interval,
                cost_min_interval: self.deletion_cost_min_interval,
            },
            max_shed_rate: self.rebalance_max_shed_rate,
            shed_timeout: self.rebalance_shed_timeout,
            max_patch_rate: self.deletion_cost_max_patches_per_second,
            lease_name: self.rebalance_lease_name.clone(),
            lease_namespace: self.rebalance_lease_namespace.clone(),
        })
    }
}

/// Identifies a workload between ticks.
type WorkloadId = (String, &'static str, String);

/// What the controller keeps of one workload between ticks.
#[derive(Debug, Default)]
struct Tracked {
    /// The rules' memory of its pods.
    memory: Memory,
    /// The hold last logged (`None` before its first tick), so that only changes are logged.
    logged_hold: Option<Option<Hold>>,
}

/// The controller's state.
struct Controller {
    store: Arc<Store>,
    telemetry: Arc<Telemetry>,
    facts: Arc<PodFacts>,
    workloads: Workloads,
    client: kube::Client,
    shedder: act::Shedder,
    settings: Settings,
    tracked: HashMap<WorkloadId, Tracked>,
    shed_bucket: Bucket,
    patch_bucket: Bucket,
    /// This replica holds the Lease: only then does it act on pods.
    leading: Arc<AtomicBool>,
    /// Pods with a shed request or a patch in flight: at most one of each per pod.
    in_flight: Arc<Mutex<HashSet<(PodKey, &'static str)>>>,
}

/// Runs the controller until `shutdown`.
pub(crate) async fn run<F>(
    client: kube::Client,
    store: Arc<Store>,
    telemetry: Arc<Telemetry>,
    facts: Arc<PodFacts>,
    shed_tls: rustls::ClientConfig,
    settings: Settings,
    shutdown: impl Fn() -> F,
) where
    F: Future<Output = ()> + Send + 'static,
{
    let workloads = Workloads::watch(&client, &shutdown);
    let leading = Arc::new(AtomicBool::new(false));
    let candidate = lease::Candidate {
        namespace: settings
            .lease_namespace
            .clone()
            .unwrap_or_else(lease::own_namespace),
        name: settings.lease_name.clone(),
        identity: lease::Candidate::identity(),
    };
    tokio::spawn(lease::campaign(
        client.clone(),
        candidate,
        leading.clone(),
        shutdown(),
    ));
    let stop = shutdown();
    tokio::pin!(stop);
    let mut c = Controller {
        store,
        telemetry,
        facts,
        workloads,
        shedder: act::Shedder::new(shed_tls, settings.shed_timeout),
        client,
        tracked: HashMap::new(),
        shed_bucket: Bucket::new(settings.max_shed_rate, settings.max_shed_rate),
        patch_bucket: Bucket::new(settings.max_patch_rate, settings.max_patch_rate.max(1.0)),
        in_flight: Arc::new(Mutex::new(HashSet::new())),
        leading,
        settings,
    };
    tracing::info!(
        interval = %humantime::format_duration(c.settings.interval),
        "workload controller started (rebalancing, deletion cost)"
    );
    let mut ticks = tokio::time::interval(c.settings.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = &mut stop => return,
            _ = ticks.tick() => c.tick(),
        }
    }
}

impl Controller {
    fn tick(&mut self) {
        let now = Moment::now();
        let store = self.store.clone();
        let scaled = self.workloads.scaled(|m| store.serves(resource::pods(), m));
        let mut seen: HashSet<WorkloadId> = HashSet::new();
        for w in scaled {
            let id: WorkloadId = (w.namespace.clone(), w.kind, w.name.clone());
            seen.insert(id.clone());
            let values: HashMap<String, (f64, std::time::Instant)> = self
                .store
                .read(
                    resource::pods(),
                    &w.metric,
                    Objects::All {
                        namespace: &w.namespace,
                        selector: &w.selector,
                    },
                    &Selector::everything(),
                    now,
                )
                .unwrap_or_default()
                .into_iter()
                .filter_map(|item| match item.described {
                    crate::store::Described::Pod { name, .. } => Some((
                        name,
                        (
                            item.milli as f64 / 1000.0,
                            now.mono
                                .checked_sub(item.time.age(now.mono))
                                .unwrap_or(now.mono),
                        ),
                    )),
                    _ => None,
                })
                .collect();
            // Each pod's facts, read once (in name order): the views and the shed URLs come
            // from them.
            let facts: BTreeMap<String, pods::Facts> = self
                .store
                .pod_names(&w.namespace, &w.selector)
                .into_iter()
                .map(|name| {
                    let key = PodKey {
                        namespace: w.namespace.clone(),
                        name,
                    };
                    let f = self.facts.get(&key).unwrap_or_default();
                    (key.name, f)
                })
                .collect();
            let views: Vec<PodView> = facts
                .iter()
                .map(|(name, f)| {
                    let value = values.get(name);
                    PodView {
                        name: name.clone(),
                        value: value.map(|v| v.0),
                        sampled_at: value.map(|v| v.1),
                        ready: f.ready,
                        sheddable: f.shed_url.is_some(),
                        cost_opt_in: f.deletion_cost_opt_in,
                        cost: f.deletion_cost,
                    }
                })
                .collect();
            // Taken out for the tick (put back below), so that the rest of `self` stays usable.
            let mut tracked = self.tracked.remove(&id).unwrap_or_default();
            let d = plan::decide(
                &mut tracked.memory,
                w.rolling,
                &views,
                &self.settings.tuning,
                now.mono,
            );
            self.telemetry
                .set_workload_balance(&w.namespace, w.kind, &w.name, d.imbalance, d.mean);
            if tracked.logged_hold.as_ref() != Some(&d.hold) {
                tracked.logged_hold = Some(d.hold.clone());
                tracing::info!(namespace = %w.namespace, kind = w.kind, name = %w.name,
                    pods = views.len(), hold = ?d.hold, "workload shedding {}",
                    if d.hold.is_some() { "held" } else { "allowed" });
            }
            // Every replica measures; only the Lease holder acts.
            let acting = self.leading.load(Ordering::SeqCst);
            let (sheds, costs) = if acting {
                (d.sheds, d.costs)
            } else {
                (Vec::new(), Vec::new())
            };
            for (pod, want) in sheds {
                let Some(url) = facts.get(&pod).and_then(|f| f.shed_url.clone()) else {
                    continue;
                };
                let key = PodKey {
                    namespace: w.namespace.clone(),
                    name: pod.clone(),
                };
                if !self.claim(&key, "shed") {
                    continue;
                }
                let count = self.shed_bucket.take(want, now.mono);
                if count == 0 {
                    release(&self.in_flight, &key, "shed");
                    break;
                }
                tracked.memory.shed_sent(&pod, now.mono);
                let (shedder, telemetry, in_flight) = (
                    self.shedder.clone(),
                    self.telemetry.clone(),
                    self.in_flight.clone(),
                );
                tracing::info!(namespace = %key.namespace, pod = %key.name, count,
                    mean = ?d.mean, "asking the pod to shed connections");
                tokio::spawn(async move {
                    match shedder.shed(&url, count).await {
                        Ok(closing) => telemetry.count_shed("ok", closing),
                        Err(e) => {
                            tracing::warn!(namespace = %key.namespace, pod = %key.name, error = %e, "shed request failed");
                            telemetry.count_shed(e.label(), 0);
                        }
                    }
                    release(&in_flight, &key, "shed");
                });
            }
            for (pod, cost) in costs {
                let key = PodKey {
                    namespace: w.namespace.clone(),
                    name: pod.clone(),
                };
                if !self.claim(&key, "cost") {
                    continue;
                }
                if self.patch_bucket.take(1, now.mono) == 0 {
                    release(&self.in_flight, &key, "cost");
                    break;
                }
                tracked.memory.cost_written(&pod, now.mono);
                let (client, telemetry, in_flight) = (
                    self.client.clone(),
                    self.telemetry.clone(),
                    self.in_flight.clone(),
                );
                tokio::spawn(async move {
                    match act::patch_deletion_cost(client, &key.namespace, &key.name, cost).await {
                        Ok(()) => telemetry.count_cost_patch("ok"),
                        // Gone since: nothing to order any more.
                        Err(kube::Error::Api(s)) if s.code == 404 => {
                            telemetry.count_cost_patch("not_found");
                        }
                        Err(e) => {
                            tracing::warn!(namespace = %key.namespace, pod = %key.name, error = %e, "deletion-cost patch failed");
                            telemetry.count_cost_patch("error");
                        }
                    }
                    release(&in_flight, &key, "cost");
                });
            }
            self.tracked.insert(id, tracked);
        }
        let telemetry = self.telemetry.clone();
        self.tracked.retain(|id, _| {
            let keep = seen.contains(id);
            if !keep {
                telemetry.forget_workload(&id.0, id.1, &id.2);
            }
            keep
        });
    }

    fn claim(&self, key: &PodKey, what: &'static str) -> bool {
        self.in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((key.clone(), what))
    }
}

fn release(in_flight: &Mutex<HashSet<(PodKey, &'static str)>>, key: &PodKey, what: &'static str) {
    in_flight
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&(key.clone(), what));
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: RebalanceArgs,
    }

    #[test]
    fn off_by_default_and_every_bad_value_is_reported() {
        let cli = Cli::parse_from(["x"]);
        let mut problems = Vec::new();
        assert_eq!(cli.args.settings(&mut problems), None);
        let cli = Cli::parse_from([
            "x",
            "--rebalance",
            "--rebalance-interval=10ms",
            "--rebalance-tolerance=-1",
            "--rebalance-max-shed-fraction=1.5",
            "--rebalance-max-shed-rate=0",
            "--deletion-cost-max-patches-per-second=NaN",
        ]);
        assert!(cli.args.settings(&mut problems).is_some());
        assert_eq!(problems.len(), 5, "{problems:?}");
        let mut problems = Vec::new();
        let s = Cli::parse_from(["x", "--rebalance"])
            .args
            .settings(&mut problems)
            .expect("on");
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(s.tuning.after_shed, Duration::from_secs(1));
        assert_eq!(s.tuning.settle, Duration::from_secs(3));
    }
}
