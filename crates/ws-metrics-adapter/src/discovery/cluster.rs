//! Cluster mode: pods come from a kube-runtime watcher over all namespaces (one LIST at start and
//! after a desync, then WATCH; never a request per API call). Each event updates the store at
//! once, so a deleted pod disappears from the next answer.
//!
//! A pod is scraped when it is annotated `<prefix>/scrape: "true"`, is Running, has a pod IP and
//! no deletionTimestamp. `<prefix>/port` (or a container port named `metrics`), `<prefix>/path`
//! (default `/metrics`) and `<prefix>/scheme` (`http` or `https`) say where.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};

use crate::rebalance::PodFacts;
use crate::store::{PodKey, PodTarget, Store};
use crate::telemetry::Telemetry;

/// Why a pod is not scraped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Skip {
    /// No `<prefix>/scrape: "true"` annotation.
    #[error("not opted in")]
    NotOptedIn,
    /// Phase is not Running.
    #[error("not running")]
    NotRunning,
    /// Being deleted.
    #[error("terminating")]
    Terminating,
    /// No pod IP yet.
    #[error("no pod IP")]
    NoIp,
    /// Opted in but the annotations cannot be used.
    #[error("{0}")]
    Misconfigured(String),
}

/// Decides whether and where to scrape `pod`.
///
/// # Errors
/// A [`Skip`] saying why the pod is not scraped.
pub(crate) fn target_for(pod: &Pod, prefix: &str) -> Result<PodTarget, Skip> {
    let meta = &pod.metadata;
    let annotation = |name: &str| {
        meta.annotations
            .as_ref()
            .and_then(|a| a.get(&format!("{prefix}/{name}")))
            .map(|v| v.trim())
    };
    if annotation("scrape") != Some("true") {
        return Err(Skip::NotOptedIn);
    }
    if meta.deletion_timestamp.is_some() {
        return Err(Skip::Terminating);
    }
    let status = pod.status.as_ref();
    if status.and_then(|s| s.phase.as_deref()) != Some("Running") {
        return Err(Skip::NotRunning);
    }
    let ip: IpAddr = status
        .and_then(|s| s.pod_ip.as_deref())
        .filter(|ip| !ip.is_empty())
        .ok_or(Skip::NoIp)?
        .parse()
        .map_err(|_| Skip::Misconfigured("pod IP is not an IP address".into()))?;
    let port: u16 = match annotation("port") {
        Some(p) => p.parse().ok().filter(|p| *p != 0).ok_or_else(|| {
            Skip::Misconfigured(format!("{prefix}/port {p:?} is not a port number"))
        })?,
        None => pod
            .spec
            .as_ref()
            .into_iter()
            .flat_map(|s| &s.containers)
            .flat_map(|c| c.ports.iter().flatten())
            .find(|p| p.name.as_deref() == Some("metrics"))
            .and_then(|p| u16::try_from(p.container_port).ok())
            .ok_or_else(|| {
                Skip::Misconfigured(format!(
                    "no {prefix}/port annotation and no container port named \"metrics\""
                ))
            })?,
    };
    let path = annotation("path").unwrap_or("/metrics");
    if !path.starts_with('/') || path.contains(char::is_whitespace) {
        return Err(Skip::Misconfigured(format!(
            "{prefix}/path {path:?} must start with '/'"
        )));
    }
    let scheme = match annotation("scheme").unwrap_or("http") {
        s @ ("http" | "https") => s,
        other => {
            return Err(Skip::Misconfigured(format!(
                "{prefix}/scheme {other:?} must be http or https"
            )));
        }
    };
    let host = match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    };
    Ok(PodTarget {
        key: PodKey {
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone().unwrap_or_default(),
        },
        uid: meta.uid.clone().unwrap_or_default(),
        labels: meta.labels.clone().unwrap_or_default(),
        url: format!("{scheme}://{host}:{port}{path}"),
        ready: is_ready(pod),
    })
}

/// Decides whether to track `pod` when values come from Prometheus (`--source=prometheus`): every
/// `Running` pod that is not being deleted, annotations or not, since Prometheus (not this
/// adapter) decides what is scraped. The target has no URL: nothing scrapes it.
///
/// # Errors
/// [`Skip::Terminating`] or [`Skip::NotRunning`].
pub(crate) fn tracked_for(pod: &Pod) -> Result<PodTarget, Skip> {
    let meta = &pod.metadata;
    if meta.deletion_timestamp.is_some() {
        return Err(Skip::Terminating);
    }
    if pod.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Running") {
        return Err(Skip::NotRunning);
    }
    Ok(PodTarget {
        key: key_of(pod),
        uid: meta.uid.clone().unwrap_or_default(),
        labels: meta.labels.clone().unwrap_or_default(),
        url: String::new(),
        ready: is_ready(pod),
    })
}

/// Whether the pod's `Ready` condition is `True` (what makes it a Service endpoint).
fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True")
}

fn key_of(pod: &Pod) -> PodKey {
    PodKey {
        namespace: pod.metadata.namespace.clone().unwrap_or_default(),
        name: pod.metadata.name.clone().unwrap_or_default(),
    }
}

/// Applies watcher events to the store. Holds the pods of a re-list until it completes, so that
/// a re-list swaps the inventory at once (pods deleted while the watch was down disappear).
#[derive(Debug)]
pub(crate) struct Inventory {
    store: Arc<Store>,
    telemetry: Arc<Telemetry>,
    prefix: String,
    relist: Option<Vec<PodTarget>>,
    /// Names of every pod seen (tracked or not) by namespace, so that the store knows which
    /// namespaces exist; the re-list's copy is swapped in when it completes.
    seen: HashMap<String, HashSet<String>>,
    relist_seen: HashMap<String, HashSet<String>>,
    /// Track every running pod ([`tracked_for`]) instead of opted-in ones ([`target_for`]).
    all_running: bool,
    /// The workload controller's view of the scraped pods (`--rebalance`), fed from the same
    /// events.
    facts: Option<Arc<PodFacts>>,
}

impl Inventory {
    /// An inventory writing to `store`, recognising annotations under `prefix`.
    pub(crate) fn new(store: Arc<Store>, telemetry: Arc<Telemetry>, prefix: String) -> Self {
        Self {
            store,
            telemetry,
            prefix,
            relist: None,
            seen: HashMap::new(),
            relist_seen: HashMap::new(),
            all_running: false,
            facts: None,
        }
    }

    /// Also keeps `facts` (readiness, shed path, deletion cost) of every scraped pod.
    pub(crate) fn feeding(mut self, facts: Arc<PodFacts>) -> Self {
        self.facts = Some(facts);
        self
    }

    fn observe(&self, pod: &Pod, target: Option<&PodTarget>) {
        if let Some(facts) = &self.facts {
            match target {
                Some(t) => facts.observe(t.key.clone(), pod, &self.prefix, &t.url),
                None => facts.forget(&key_of(pod)),
            }
        }
    }

    /// Tracks every running pod, opted in or not (the Prometheus source).
    pub(crate) fn tracking_all_running_pods(mut self) -> Self {
        self.all_running = true;
        self
    }

    fn target(&self, pod: &Pod) -> Result<PodTarget, Skip> {
        if self.all_running {
            tracked_for(pod)
        } else {
            target_for(pod, &self.prefix)
        }
    }

    fn note_skip(&self, pod: &Pod, skip: &Skip) {
        if let Skip::Misconfigured(why) = skip {
            let key = key_of(pod);
            tracing::warn!(namespace = %key.namespace, pod = %key.name, reason = %why, "pod opted in but cannot be scraped");
        }
    }

    /// Notes a pod seen in `seen` (the live map or the re-list's); returns its namespace's
    /// count when it was new.
    fn see(seen: &mut HashMap<String, HashSet<String>>, key: PodKey) -> Option<(String, usize)> {
        let names = seen.entry(key.namespace.clone()).or_default();
        names
            .insert(key.name)
            .then_some((key.namespace, names.len()))
    }

    /// Applies one event.
    pub(crate) fn apply(&mut self, event: Event<Pod>) {
        match event {
            Event::Init => {
                self.relist = Some(Vec::new());
                self.relist_seen.clear();
            }
            Event::InitApply(pod) => {
                Self::see(&mut self.relist_seen, key_of(&pod));
                match self.target(&pod) {
                    Ok(t) => {
                        self.observe(&pod, Some(&t));
                        self.relist.get_or_insert_with(Vec::new).push(t);
                    }
                    Err(skip) => {
                        self.observe(&pod, None);
                        self.note_skip(&pod, &skip);
                    }
                }
            }
            Event::InitDone => {
                let targets = self.relist.take().unwrap_or_default();
                tracing::info!(pods = targets.len(), "pod watch synced");
                if let Some(facts) = &self.facts {
                    let keep: HashSet<&PodKey> = targets.iter().map(|t| &t.key).collect();
                    facts.retain(|k| keep.contains(k));
                }
                self.seen = std::mem::take(&mut self.relist_seen);
                // Pods first, then namespaces: a reader in between sees a namespace that just
                // got its first tracked pod as incomplete (500), never as known and empty (0).
                self.store.replace_all(targets);
                self.store.set_namespaces_seen(
                    self.seen
                        .iter()
                        .map(|(ns, names)| (ns.clone(), names.len()))
                        .collect(),
                );
                self.telemetry.inventory_event("relisted");
            }
            Event::Apply(pod) => {
                let new = Self::see(&mut self.seen, key_of(&pod));
                self.apply_one(pod);
                if let Some((ns, n)) = new {
                    self.store.set_namespace_seen(&ns, n);
                }
            }
            Event::Delete(pod) => {
                self.observe(&pod, None);
                let key = key_of(&pod);
                if self.store.remove(&key) {
                    self.telemetry.inventory_event("deleted");
                }
                if let Some(names) = self.seen.get_mut(&key.namespace)
                    && names.remove(&key.name)
                {
                    let n = names.len();
                    if n == 0 {
                        self.seen.remove(&key.namespace);
                    }
                    self.store.set_namespace_seen(&key.namespace, n);
                }
            }
        }
    }

    fn apply_one(&mut self, pod: Pod) {
        match self.target(&pod) {
            Ok(t) => {
                self.observe(&pod, Some(&t));
                let added = self.store.upsert(t);
                self.telemetry
                    .inventory_event(if added { "added" } else { "updated" });
            }
            Err(skip) => {
                self.observe(&pod, None);
                self.note_skip(&pod, &skip);
                // No longer eligible (stopped running, being deleted, opted out): drop now.
                if self.store.remove(&key_of(&pod)) {
                    self.telemetry.inventory_event("deleted");
                }
            }
        }
    }
}

/// Watches every pod in the cluster and keeps the store's inventory current until `shutdown`.
/// Watch errors are logged and retried with kube-runtime's default backoff.
pub(crate) async fn watch(
    client: Client,
    mut inventory: Inventory,
    shutdown: impl Future<Output = ()>,
) {
    let api: Api<Pod> = Api::all(client);
    let stream = watcher::watcher(api, watcher::Config::default()).default_backoff();
    tokio::pin!(stream);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            next = stream.next() => match next {
                Some(Ok(event)) => inventory.apply(event),
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "pod watch failed; retrying with backoff (values keep being served until --max-age)");
                    inventory.telemetry.inventory_error();
                }
                None => return,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::selector::Selector;
    use crate::store::{MetricCatalog, MetricMapping};
    use std::time::Duration;

    fn pod(name: &str, annotations: &[(&str, &str)], phase: &str, ip: Option<&str>) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": name, "namespace": "chat", "uid": format!("uid-{name}"),
                "labels": {"app": "ws"},
                "annotations": annotations.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<std::collections::BTreeMap<_, _>>(),
            },
            "spec": {"containers": [{"name": "c", "ports": [{"name": "metrics", "containerPort": 9100}]}]},
            "status": {"phase": phase, "podIP": ip},
        }))
        .expect("valid pod")
    }

    const P: &str = "ws-metrics-adapter.io";

    #[test]
    fn only_opted_in_running_pods_with_an_ip_are_scraped() {
        let on = [
            ("ws-metrics-adapter.io/scrape", "true"),
            ("ws-metrics-adapter.io/port", "9090"),
        ];
        let t = target_for(&pod("a", &on, "Running", Some("10.0.0.7")), P).expect("eligible");
        assert_eq!(t.url, "http://10.0.0.7:9090/metrics");
        assert_eq!(t.uid, "uid-a");
        assert_eq!(
            target_for(&pod("a", &[], "Running", Some("10.0.0.7")), P),
            Err(Skip::NotOptedIn)
        );
        assert_eq!(
            target_for(&pod("a", &on, "Pending", Some("10.0.0.7")), P),
            Err(Skip::NotRunning)
        );
        assert_eq!(
            target_for(&pod("a", &on, "Running", None), P),
            Err(Skip::NoIp)
        );
        let mut deleting = pod("a", &on, "Running", Some("10.0.0.7"));
        deleting.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                "2026-01-01T00:00:00Z".parse().expect("time"),
            ));
        assert_eq!(target_for(&deleting, P), Err(Skip::Terminating));
    }

    #[test]
    fn the_prometheus_source_tracks_every_running_pod_opted_in_or_not() {
        let plain = pod("plain", &[], "Running", Some("10.0.0.9"));
        assert_eq!(
            target_for(&plain, "ws-metrics-adapter.io"),
            Err(Skip::NotOptedIn)
        );
        let t = tracked_for(&plain).expect("tracked");
        assert_eq!(t.key.name, "plain");
        assert_eq!(t.url, "");
        let pending = pod("pending", &[], "Pending", None);
        assert_eq!(tracked_for(&pending), Err(Skip::NotRunning));
    }

    #[test]
    fn port_path_and_scheme_come_from_annotations_or_the_metrics_port() {
        let t = target_for(
            &pod(
                "a",
                &[
                    ("ws-metrics-adapter.io/scrape", "true"),
                    ("ws-metrics-adapter.io/path", "/stats/prom"),
                    ("ws-metrics-adapter.io/scheme", "https"),
                ],
                "Running",
                Some("fd00::7"),
            ),
            P,
        )
        .expect("eligible");
        assert_eq!(t.url, "https://[fd00::7]:9100/stats/prom");
        for (k, v) in [
            ("port", "http"),
            ("port", "0"),
            ("path", "metrics"),
            ("scheme", "ftp"),
        ] {
            let key = format!("ws-metrics-adapter.io/{k}");
            let r = target_for(
                &pod(
                    "a",
                    &[("ws-metrics-adapter.io/scrape", "true"), (&key, v)],
                    "Running",
                    Some("10.0.0.1"),
                ),
                P,
            );
            assert!(matches!(r, Err(Skip::Misconfigured(_))), "{k}={v}: {r:?}");
        }
    }

    fn inventory() -> (Inventory, Arc<Store>) {
        let catalog = MetricCatalog::new(vec![MetricMapping {
            served: "websocket_connections".into(),
            family: "websocket_connections_active".into(),
            rate: None,
            filter: None,
        }]);
        let store = Arc::new(Store::new(catalog, Duration::from_secs(3)));
        let inv = Inventory::new(store.clone(), Arc::new(Telemetry::new()), P.into());
        (inv, store)
    }

    fn names(store: &Store) -> Vec<String> {
        let mut v: Vec<String> = store
            .scrape_jobs()
            .into_iter()
            .map(|j| j.key.name)
            .collect();
        v.sort();
        v
    }

    #[test]
    fn watcher_events_drive_the_inventory() {
        let (mut inv, store) = inventory();
        let on = [("ws-metrics-adapter.io/scrape", "true")];
        inv.apply(Event::Init);
        inv.apply(Event::InitApply(pod("a", &on, "Running", Some("10.0.0.1"))));
        inv.apply(Event::InitApply(pod("b", &on, "Pending", None)));
        assert!(!store.is_synced(), "not synced before InitDone");
        inv.apply(Event::InitDone);
        assert!(store.is_synced());
        assert_eq!(names(&store), vec!["a"]);
        inv.apply(Event::Apply(pod("b", &on, "Running", Some("10.0.0.2"))));
        assert_eq!(names(&store), vec!["a", "b"]);
        // a stops running: gone at once.
        inv.apply(Event::Apply(pod("a", &on, "Succeeded", Some("10.0.0.1"))));
        assert_eq!(names(&store), vec!["b"]);
        inv.apply(Event::Delete(pod("b", &on, "Running", Some("10.0.0.2"))));
        assert!(names(&store).is_empty());
        // A re-list replaces everything: pods deleted during a watch outage vanish.
        inv.apply(Event::Apply(pod("c", &on, "Running", Some("10.0.0.3"))));
        inv.apply(Event::Init);
        inv.apply(Event::InitApply(pod("d", &on, "Running", Some("10.0.0.4"))));
        assert_eq!(
            names(&store),
            vec!["c"],
            "old inventory served until the re-list completes"
        );
        inv.apply(Event::InitDone);
        assert_eq!(names(&store), vec!["d"]);
        let all = Selector::everything();
        assert!(
            store
                .pods_matching("chat", &all, 0, &all, crate::clock::Moment::now())
                .is_empty()
        );
    }

    #[test]
    fn namespaces_with_any_pod_are_known_and_others_are_not() {
        use crate::store::ReadError;
        let (mut inv, store) = inventory();
        let all = Selector::everything();
        let now = crate::clock::Moment::now();
        let total = |ns: &str| store.namespace_total(ns, 0, &all, now).map(|t| t.0);
        inv.apply(Event::Init);
        // Not opted in, still a pod: the namespace exists.
        inv.apply(Event::InitApply(pod(
            "plain",
            &[],
            "Running",
            Some("10.0.0.9"),
        )));
        inv.apply(Event::InitDone);
        assert_eq!(total("chat"), Ok(0));
        assert!(matches!(
            total("elsewhere"),
            Err(ReadError::UnknownNamespace { .. })
        ));
        inv.apply(Event::Delete(pod(
            "plain",
            &[],
            "Running",
            Some("10.0.0.9"),
        )));
        assert!(matches!(
            total("chat"),
            Err(ReadError::UnknownNamespace { .. })
        ));
        inv.apply(Event::Apply(pod("again", &[], "Pending", None)));
        assert_eq!(total("chat"), Ok(0));
    }
}
