//! In-memory state between the sources and the API: which pods exist (written by discovery), the
//! latest good reading of each (written by the scrape source) or the latest query answers (a
//! [`read::Snapshot`] published by the Prometheus source), and the one read the API makes
//! ([`Store::read`], memory only).
//!
//! Safety rules live here: a value older than `max_age` is never served, a failed scrape or query
//! never replaces a good value nor reads as a zero, and a pod removed by discovery is gone from
//! the next answer.
//!
//! - [`read`]: the read contract (what is published, asked, answered, refused).
//! - [`resource`]: the resources a metric can be served for.
//! - [`rates`]: per-pod rates of counter families from successive scrapes.
//! - [`objects`]: the objects (Deployments, StatefulSets, ReplicaSets, Services) whose value is
//!   the sum over their ready pods.

pub mod objects;
mod rates;
pub mod read;
pub mod resource;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};

use crate::clock::{Moment, SampleTime};
use crate::quantity;
use crate::selector::{Operator, Selector};

pub use objects::ObjectSpec;
pub use read::{Described, Item, Objects, ReadError, ServedMetric, Snapshot};
pub use resource::ResourceInfo;

/// Label set of a Kubernetes object or of a Prometheus series, by name.
pub type Labels = BTreeMap<String, String>;

/// One served metric and the exposition family it is computed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricMapping {
    /// Name in the custom metrics API (e.g. `websocket_connections`).
    pub served: String,
    /// Exact name of the Prometheus samples summed for it (e.g. `websocket_connections_active`).
    pub family: String,
    /// `Some(window)`: the family is a counter and the metric is its per-second rate over the
    /// last `window` of scrapes (`SERVED=rate(FAMILY[WINDOW])`, [`rates`]); `None`: its value.
    pub rate: Option<Duration>,
    /// Only the family's series matching this count (a per-metric label filter of the metrics
    /// config file); a request's `metricLabelSelector` filters them further.
    pub filter: Option<Selector>,
}

/// The fixed set of metrics this adapter serves, decided at start-up.
///
/// A reading holds one slot per value a metric can read: first the exposition families kept from
/// each scrape ([`MetricCatalog::families`], what the parser fills), then one per distinct
/// (counter family, window) rate ([`MetricCatalog::rates`], filled by [`Store::record`]).
#[derive(Debug, Clone)]
pub struct MetricCatalog {
    mappings: Vec<MetricMapping>,
    families: Vec<String>,
    /// Rate slots: (index of the counter family in `families`, window).
    rates: Vec<(usize, Duration)>,
    /// For each mapping, its slot.
    slot_of: Vec<usize>,
}

impl MetricCatalog {
    /// Builds the catalog. Several served names may share one family (or one rate).
    pub fn new(mappings: Vec<MetricMapping>) -> Self {
        let mut families: Vec<String> = Vec::new();
        let mut raw_of = Vec::with_capacity(mappings.len());
        for m in &mappings {
            let idx = match families.iter().position(|f| *f == m.family) {
                Some(i) => i,
                None => {
                    families.push(m.family.clone());
                    families.len() - 1
                }
            };
            raw_of.push(idx);
        }
        let mut rates: Vec<(usize, Duration)> = Vec::new();
        let slot_of = mappings
            .iter()
            .zip(raw_of)
            .map(|(m, raw)| match m.rate {
                None => raw,
                Some(window) => {
                    let i = rates
                        .iter()
                        .position(|r| *r == (raw, window))
                        .unwrap_or_else(|| {
                            rates.push((raw, window));
                            rates.len() - 1
                        });
                    families.len() + i
                }
            })
            .collect::<Vec<_>>();
        // `families.len()` above is final: every family was added in the first pass.
        Self {
            mappings,
            families,
            rates,
            slot_of,
        }
    }

    /// The rates computed from counter families: (index in [`MetricCatalog::families`],
    /// window), in slot order after the families.
    pub fn rates(&self) -> &[(usize, Duration)] {
        &self.rates
    }

    /// The served metrics, in configuration order.
    pub fn mappings(&self) -> &[MetricMapping] {
        &self.mappings
    }

    /// The distinct exposition families to keep from each scrape, in index order.
    pub fn families(&self) -> &[String] {
        &self.families
    }

    /// Looks a served metric up by exact name and returns its slot in a reading: the index of
    /// its family, or of its rate after the families.
    pub fn family_index(&self, served: &str) -> Option<usize> {
        self.lookup(served).map(|(slot, _)| slot)
    }

    /// A served metric's slot and its series filter, if it is served.
    pub fn lookup(&self, served: &str) -> Option<(usize, Option<&Selector>)> {
        let i = self.mappings.iter().position(|m| m.served == served)?;
        Some((self.slot_of[i], self.mappings[i].filter.as_ref()))
    }

    /// For each slot of `to`, the slot of `self` holding the same values (the same family, or
    /// the same family's rate over the same window), if any: how readings taken under `self`
    /// carry over to `to`.
    fn slots_in(&self, to: &MetricCatalog) -> Vec<Option<usize>> {
        let raw = |name: &str| self.families.iter().position(|f| f == name);
        let families = to.families.iter().map(|f| raw(f));
        let rates = to.rates.iter().map(|&(family, window)| {
            let old = raw(&to.families[family])?;
            let i = self.rates.iter().position(|r| *r == (old, window))?;
            Some(self.families.len() + i)
        });
        families.chain(rates).collect()
    }
}

/// Identity of a pod.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodKey {
    /// Namespace of the pod.
    pub namespace: String,
    /// Name of the pod.
    pub name: String,
}

/// What discovery knows about a pod that should be scraped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodTarget {
    /// Namespace and name.
    pub key: PodKey,
    /// Identity of this incarnation of the pod (the Kubernetes UID; in static mode, derived from
    /// the entry). A reading taken from an older incarnation is never recorded on a newer one.
    pub uid: String,
    /// The pod's Kubernetes labels, matched by `labelSelector`.
    pub labels: Labels,
    /// Full URL of the pod's metrics endpoint, e.g. `http://10.1.2.3:9090/metrics`.
    pub url: String,
    /// The pod's `Ready` condition is `True` (always, in static mode): only ready pods count
    /// toward an object's sum, as only they are a Service's endpoints.
    pub ready: bool,
}

/// One series of a family as read from a pod: its Prometheus labels and value in milli-units.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Series {
    /// Prometheus labels of the series (matched by `metricLabelSelector`).
    pub labels: Vec<(String, String)>,
    /// Value. Unit: milli-units of the sample value (1 connection = 1000).
    pub milli: i64,
}

/// The series of one family in one scrape: `None` when the pod did not expose the family at all.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FamilyReading {
    /// Series of the family, in exposition order.
    pub series: Vec<Series>,
    /// Sum of all series. Unit: milli-units.
    pub total_milli: i64,
    /// Oldest exposition timestamp written on the family's series, if any carries one: the
    /// family is as old as that. Unit: milliseconds since the Unix epoch.
    pub stamped_ms: Option<i64>,
}

/// One successful scrape of one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reading {
    /// When the scrape's response was read. Its wall part is the time reported to the HPA for a
    /// family whose series carry no exposition timestamp ([`FamilyReading::stamped_ms`]).
    pub time: SampleTime,
    /// Indexed like [`MetricCatalog::families`]; `None` where the pod does not expose the family.
    pub families: Families,
}

/// A reading's families, the first [`INLINE_FAMILIES`] inside the [`Reading`] itself. A read
/// follows each selected pod's reading once; with the families in a buffer of their own it
/// followed two pointers, and at 10,000 pods (readings replaced every second) both were cache
/// misses: 24 % of the API's CPU under the HPA's read while collecting (benches README, (c″)).
pub type Families = smallvec::SmallVec<[Option<FamilyReading>; INLINE_FAMILIES]>;

/// Families a [`Reading`] holds without a buffer of its own: the usual catalog serves one or two
/// families (the connection gauge, perhaps a rate of a counter).
pub const INLINE_FAMILIES: usize = 2;

#[derive(Debug)]
struct PodEntry {
    uid: String,
    labels: Labels,
    url: Arc<str>,
    ready: bool,
    /// The latest good reading. Swapped whole by [`Store::record_parsed`] under the inventory's
    /// *read* lock: recording a scrape neither waits for nor blocks the API's reads (10,000
    /// scrapes a second each took the write lock before, and a waiting writer stalls new readers).
    reading: ArcSwapOption<Reading>,
    /// One counter history per [`MetricCatalog::rates`] entry (empty until the first reading).
    /// Locked only by the recording of this pod's scrape, which also swaps `reading` while it
    /// holds the lock, so two recordings of one pod land in the order their rates were computed.
    rates: Mutex<Vec<rates::CounterHistory>>,
}

impl PodEntry {
    fn new(target_uid: String, labels: Labels, url: Arc<str>, ready: bool) -> Self {
        Self {
            uid: target_uid,
            labels,
            url,
            ready,
            reading: ArcSwapOption::empty(),
            rates: Mutex::new(Vec::new()),
        }
    }

    /// The counter histories (poisoning ignored: each update is one `observe`).
    fn rates(&self) -> std::sync::MutexGuard<'_, Vec<rates::CounterHistory>> {
        self.rates.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The pods of one namespace, with an inverted index of their labels so that a selector such as
/// `app=ws` visits only the pods it can match instead of every pod of the namespace.
#[derive(Debug, Default)]
struct Namespace {
    /// Pod name → entry. BTreeMap keeps answers in a stable, sorted order.
    pods: BTreeMap<String, PodEntry>,
    /// Label key → label value → names of the pods carrying it.
    index: HashMap<String, HashMap<String, BTreeSet<String>>>,
}

impl Namespace {
    fn index_labels(&mut self, name: &str, labels: &Labels) {
        for (k, v) in labels {
            self.index
                .entry(k.clone())
                .or_default()
                .entry(v.clone())
                .or_default()
                .insert(name.to_owned());
        }
    }

    fn unindex_labels(&mut self, name: &str, labels: &Labels) {
        for (k, v) in labels {
            if let Some(values) = self.index.get_mut(k) {
                if let Some(names) = values.get_mut(v) {
                    names.remove(name);
                    if names.is_empty() {
                        values.remove(v);
                    }
                }
                if values.is_empty() {
                    self.index.remove(k);
                }
            }
        }
    }

    /// Inserts or replaces a pod; returns whether it is new.
    fn insert(&mut self, name: String, entry: PodEntry) -> bool {
        let replaced = self.remove(&name);
        self.index_labels(&name, &entry.labels);
        self.pods.insert(name, entry);
        !replaced
    }

    fn remove(&mut self, name: &str) -> bool {
        match self.pods.remove(name) {
            Some(old) => {
                self.unindex_labels(name, &old.labels);
                true
            }
            None => false,
        }
    }

    fn set_labels(&mut self, name: &str, labels: Labels) {
        let Some(entry) = self.pods.get_mut(name) else {
            return;
        };
        if entry.labels == labels {
            return;
        }
        let old = std::mem::replace(&mut entry.labels, labels.clone());
        self.unindex_labels(name, &old);
        self.index_labels(name, &labels);
    }

    /// The entries of [`Namespace::candidates`], in its (name) order; `None` when the selector
    /// has no requirement the index answers (the caller scans every pod).
    ///
    /// One cursor walks the map: a Deployment's pods sit side by side in name order (they share
    /// its prefix), so most candidates are the entry right after the previous one and cost one
    /// comparison, where a lookup per name searches the whole map (14 string comparisons at
    /// 10,000 pods, 6 % of a read's CPU in the profile). A name elsewhere re-seeks the cursor.
    fn candidate_entries(&self, selector: &Selector) -> Option<Vec<(&str, &PodEntry)>> {
        let names = self.candidates(selector)?;
        let mut entries = Vec::with_capacity(names.len());
        let mut cursor = self.pods.range::<str, _>(..).peekable();
        for name in names {
            let named = |(key, _): &(&String, &PodEntry)| key.as_str() == name;
            let found = cursor.next_if(named).or_else(|| {
                cursor = self
                    .pods
                    .range::<str, _>((Bound::Included(name), Bound::Unbounded))
                    .peekable();
                cursor.next_if(named)
            });
            // The index only names pods of this map; a miss would be a bug, and is skipped.
            if let Some((key, entry)) = found {
                entries.push((key.as_str(), entry));
            }
        }
        Some(entries)
    }

    /// The names a selector can match, sorted, from its most selective `=`, `==` or `in`
    /// requirement; `None` when it has none (the caller scans every pod).
    fn candidates(&self, selector: &Selector) -> Option<Vec<&str>> {
        let mut best: Option<Vec<&str>> = None;
        for req in selector.requirements() {
            let values: &[String] = match req.operator {
                Operator::Equals | Operator::DoubleEquals | Operator::In => &req.values,
                _ => continue,
            };
            let by_value = self.index.get(&req.key);
            let mut names: Vec<&str> = values
                .iter()
                .filter_map(|v| by_value.and_then(|m| m.get(v)))
                .flat_map(|set| set.iter().map(String::as_str))
                .collect();
            if values.len() > 1 {
                names.sort_unstable();
                names.dedup();
            }
            if best.as_ref().is_none_or(|b| names.len() < b.len()) {
                best = Some(names);
            }
        }
        best
    }
}

/// Whether [`Namespace::candidates`] are exactly the pods `selector` matches: its one
/// requirement is an `=`, `==` or `in`, which the label index answers whole (the HPA's usual
/// `app=NAME`), so checking each candidate against it again would only repeat the index.
fn index_answers_whole(selector: &Selector) -> bool {
    matches!(
        selector.requirements(),
        [req] if matches!(req.operator, Operator::Equals | Operator::DoubleEquals | Operator::In)
    )
}

#[derive(Debug, Default)]
struct Inner {
    /// Namespace name → its pods.
    pods: HashMap<String, Namespace>,
    pod_count: usize,
    /// Whether the pod inventory is complete (watch synced or static file read).
    synced: bool,
    /// Namespaces discovery has seen pods in (tracked or not), with how many; `None` when
    /// discovery does not report them (then every namespace is taken to exist).
    namespaces_seen: Option<HashMap<String, usize>>,
}

/// A pod selected by a query, with the value computed for the requested metric.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodValue {
    /// Pod name.
    pub name: String,
    /// Value. Unit: milli-units.
    pub milli: i64,
    /// Sample time of the reading the value comes from.
    pub time: SampleTime,
}

/// A scrape job handed to the collector.
#[derive(Debug, Clone)]
pub struct ScrapeJob {
    /// Which pod.
    pub key: PodKey,
    /// Incarnation the reading must be recorded on.
    pub uid: String,
    /// Where to scrape.
    pub url: Arc<str>,
}

/// The shared store. Cheap to share behind an `Arc`; every method takes `&self`.
#[derive(Debug)]
pub struct Store {
    /// What is served. Swapped whole by [`Store::replace_catalog`] (a reloaded metrics config)
    /// while the inventory's write lock is held, so readings and the catalog change together.
    catalog: ArcSwap<MetricCatalog>,
    max_age: Duration,
    inner: RwLock<Inner>,
    /// Time the last collection round ended, used as the timestamp of answers with no samples.
    last_round: RwLock<Option<Moment>>,
    /// The query source's answers, once it publishes; while `None`, values are the pods'
    /// scrape readings. Swapped whole, so a read sees one round, never half of two.
    queried: ArcSwapOption<Snapshot>,
    /// Objects whose value is the sum over their pods, for the resources discovery watches.
    objects: objects::ObjectIndex,
}

impl Store {
    /// An empty store. `max_age` is the age after which a reading is no longer served.
    pub fn new(catalog: MetricCatalog, max_age: Duration) -> Self {
        Self {
            catalog: ArcSwap::from_pointee(catalog),
            max_age,
            inner: RwLock::new(Inner::default()),
            last_round: RwLock::new(None),
            queried: ArcSwapOption::empty(),
            objects: objects::ObjectIndex::default(),
        }
    }

    /// Publishes a query source's round (or a new set of served metrics): from now on values come
    /// from `snapshot`, and the pods' scrape readings are not read.
    pub fn publish(&self, snapshot: Snapshot) {
        self.queried.store(Some(Arc::new(snapshot)));
    }

    /// The query source's last published snapshot, if it published one.
    pub fn snapshot(&self) -> Option<Arc<Snapshot>> {
        self.queried.load_full()
    }

    /// The served (resource, metric) pairs, in discovery order, for the discovery documents:
    /// those of the published snapshot, else `pods/<m>`, `namespaces/<m>` and then every tracked
    /// object resource's `<resource>/<m>` for every metric of the catalog.
    pub fn served(&self) -> Vec<(&'static ResourceInfo, String)> {
        if let Some(snap) = self.queried.load().as_deref() {
            return snap
                .served
                .iter()
                .map(|s| (s.resource, s.metric.clone()))
                .collect();
        }
        let catalog = self.catalog.load();
        [resource::pods(), resource::namespaces()]
            .into_iter()
            .chain(self.objects.tracked())
            .flat_map(|r| {
                catalog
                    .mappings()
                    .iter()
                    .map(move |m| (r, m.served.clone()))
            })
            .collect()
    }

    /// Whether `metric` is served for `resource`.
    pub fn serves(&self, resource: &'static ResourceInfo, metric: &str) -> bool {
        match self.queried.load().as_deref() {
            Some(snap) => snap
                .served
                .iter()
                .any(|s| s.resource == resource && s.metric == metric),
            None => {
                (resource.is_pods() || resource.is_namespaces() || self.objects.tracks(resource))
                    && self.catalog.load().family_index(metric).is_some()
            }
        }
    }

    /// The one read of the API: values of `metric` for `objects` of `resource`, from memory, each
    /// at most `max_age` old. Pods are the inventory's: a value of a pod it does not track is
    /// never served.
    ///
    /// # Errors
    /// [`ReadError`]: the metric is not served for the resource, the object has no fresh value,
    /// the namespace is unknown, a namespace total would be partial, a selector cannot be
    /// answered, or the query behind the metric failed or has not run.
    pub fn read(
        &self,
        resource: &'static ResourceInfo,
        metric: &str,
        objects: Objects<'_>,
        metric_selector: &Selector,
        now: Moment,
    ) -> Result<Vec<Item>, ReadError> {
        if let Some(snap) = self.queried.load().as_deref() {
            return snap.read(self, resource, metric, objects, metric_selector, now);
        }
        // A reload swaps the catalog and moves every reading to its slots under the write lock:
        // an answer computed with the catalog that is still current after it used the right
        // slots. Reloads come at most once a second; one that lands mid-read costs that read one
        // more pass.
        loop {
            let catalog = self.catalog.load_full();
            let answer = self.read_with(
                &catalog,
                resource,
                metric,
                objects.clone(),
                metric_selector,
                now,
            );
            if Arc::ptr_eq(&catalog, &self.catalog.load()) {
                return answer;
            }
        }
    }

    /// [`Store::read`] with `catalog`'s slots and filters.
    fn read_with(
        &self,
        catalog: &MetricCatalog,
        resource: &'static ResourceInfo,
        metric: &str,
        objects: Objects<'_>,
        metric_selector: &Selector,
        now: Moment,
    ) -> Result<Vec<Item>, ReadError> {
        let unknown = || ReadError::UnknownMetric {
            metric: metric.to_owned(),
            resource: resource.path(),
        };
        let (family, filter) = catalog.lookup(metric).ok_or_else(unknown)?;
        // The metric's own filter and the request's selector together; the request's alone
        // names the answer (`with selector …`, the wire's `metric.selector`).
        let combined;
        let series_selector = match filter {
            Some(filter) => {
                combined = filter.and(metric_selector);
                &combined
            }
            None => metric_selector,
        };
        match objects {
            Objects::All {
                namespace,
                selector,
            } if resource.is_pods() => Ok(self
                .pods_matching(namespace, selector, family, series_selector, now)
                .into_iter()
                .map(|p| Item {
                    described: Described::Pod {
                        namespace: namespace.to_owned(),
                        name: p.name,
                    },
                    milli: p.milli,
                    time: p.time,
                })
                .collect()),
            Objects::One { namespace, name } if resource.is_pods() => {
                let key = PodKey {
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                };
                let p = self
                    .pod_value(&key, family, series_selector, now)
                    .ok_or_else(|| ReadError::NoValue {
                        metric: metric.to_owned(),
                        resource: "pods".to_owned(),
                        with: if metric_selector.is_empty() {
                            String::new()
                        } else {
                            format!(" with selector {metric_selector}")
                        },
                        name: key.name.clone(),
                    })?;
                Ok(vec![Item {
                    described: Described::Pod {
                        namespace: key.namespace,
                        name: p.name,
                    },
                    milli: p.milli,
                    time: p.time,
                }])
            }
            Objects::One { name, .. } if resource.is_namespaces() => {
                let (milli, time) = self.namespace_total(name, family, series_selector, now)?;
                Ok(vec![Item {
                    described: Described::Namespace {
                        name: name.to_owned(),
                    },
                    milli,
                    time,
                }])
            }
            objects if self.objects.tracks(resource) => {
                self.object_values(resource, metric, objects, family, series_selector, now)
            }
            _ => Err(unknown()),
        }
    }

    /// Serves `resource` (a namespaced workload or Service) as the sum over each object's ready
    /// pods, from objects discovery keeps with [`Store::replace_objects`] and the calls after it.
    /// Until the first of those, a read of it is a 500 (not synced), never a 404.
    pub fn track_objects(&self, resource: &'static ResourceInfo) {
        self.objects.track(resource);
    }

    /// Replaces every object of a tracked `resource` (namespace, name, spec): a watch's list.
    pub fn replace_objects(
        &self,
        resource: &'static ResourceInfo,
        objects: Vec<(String, String, ObjectSpec)>,
    ) {
        self.objects.replace(resource, objects);
    }

    /// Adds or updates one object of a tracked resource.
    pub fn upsert_object(
        &self,
        resource: &'static ResourceInfo,
        namespace: &str,
        name: &str,
        spec: ObjectSpec,
    ) {
        self.objects.upsert(resource, namespace, name, spec);
    }

    /// Whether `resource` is one whose objects discovery watches.
    pub fn tracks_objects(&self, resource: &'static ResourceInfo) -> bool {
        self.objects.tracks(resource)
    }

    /// The names of the objects of `resource` in `namespace` whose own labels match `selector`;
    /// `None` when the resource is not watched or its watch has not listed yet.
    pub fn objects_matching(
        &self,
        resource: &'static ResourceInfo,
        namespace: &str,
        selector: &Selector,
    ) -> Option<Vec<String>> {
        self.objects
            .matching(resource, namespace, selector)
            .map(|found| found.into_iter().map(|(name, _)| name).collect())
    }

    /// Removes one object of a tracked resource.
    pub fn remove_object(&self, resource: &'static ResourceInfo, namespace: &str, name: &str) {
        self.objects.remove(resource, namespace, name);
    }

    /// Values of a tracked object resource: for one object, the sum over its ready pods or why
    /// there is none; for a `labelSelector` over the objects, one item per matching object whose
    /// sum is complete (an object with a pod lacking a fresh value is left out, never undercounted).
    fn object_values(
        &self,
        resource: &'static ResourceInfo,
        metric: &str,
        objects: Objects<'_>,
        family: usize,
        series_selector: &Selector,
        now: Moment,
    ) -> Result<Vec<Item>, ReadError> {
        let not_synced = || ReadError::NotSynced {
            resource: resource.path(),
        };
        let item = |namespace: &str, name: &str, (milli, time): (i64, SampleTime)| Item {
            described: read::described(resource, namespace, name),
            milli,
            time,
        };
        match objects {
            Objects::One { namespace, name } => {
                let spec = match self.objects.get(resource, namespace, name) {
                    objects::Lookup::Found(spec) => spec,
                    objects::Lookup::Missing => {
                        return Err(ReadError::UnknownObject {
                            resource: resource.path(),
                            name: name.to_owned(),
                        });
                    }
                    objects::Lookup::NotSynced | objects::Lookup::Untracked => {
                        return Err(not_synced());
                    }
                };
                let inner = self.locked();
                let sum = self.object_sum(
                    &inner,
                    resource,
                    metric,
                    namespace,
                    name,
                    &spec,
                    family,
                    series_selector,
                    now,
                )?;
                Ok(vec![item(namespace, name, sum)])
            }
            Objects::All {
                namespace,
                selector,
            } => {
                let found = self
                    .objects
                    .matching(resource, namespace, selector)
                    .ok_or_else(not_synced)?;
                let inner = self.locked();
                Ok(found
                    .into_iter()
                    .filter_map(|(name, spec)| {
                        let sum = self.object_sum(
                            &inner,
                            resource,
                            metric,
                            namespace,
                            &name,
                            &spec,
                            family,
                            series_selector,
                            now,
                        );
                        sum.ok().map(|sum| item(namespace, &name, sum))
                    })
                    .collect())
            }
        }
    }

    /// The sum over the ready tracked pods `spec` selects in `namespace`, with the oldest sample
    /// time in it: the namespace total's rule (every pod fresh, or no value) over the object's
    /// pods. Not-ready pods are left out: a pod that just started may not be scraped yet, and it
    /// is not yet a Service endpoint holding connections.
    #[allow(clippy::too_many_arguments)]
    fn object_sum(
        &self,
        inner: &Inner,
        resource: &'static ResourceInfo,
        metric: &str,
        namespace: &str,
        name: &str,
        spec: &ObjectSpec,
        family: usize,
        series_selector: &Selector,
        now: Moment,
    ) -> Result<(i64, SampleTime), ReadError> {
        let no_pods = || ReadError::NoPods {
            metric: metric.to_owned(),
            resource: resource.path(),
            name: name.to_owned(),
        };
        let (Some(pods), Some(ns)) = (spec.pods.as_ref(), inner.pods.get(namespace)) else {
            return Err(no_pods());
        };
        let ready = |e: &&PodEntry| e.ready && pods.matches_map(&e.labels);
        let entries: Vec<&PodEntry> = match ns.candidate_entries(pods) {
            Some(found) => found.into_iter().map(|(_, e)| e).filter(ready).collect(),
            None => ns.pods.values().filter(ready).collect(),
        };
        if entries.is_empty() {
            return Err(no_pods());
        }
        let values = entries
            .into_iter()
            .map(|e| self.fresh_value(e, family, series_selector, now.mono));
        let (sum, oldest) =
            read::sum_every_pod(|| format!("{} {namespace}/{name}", resource.path()), values)?;
        Ok((sum, oldest.unwrap_or_else(|| SampleTime::read_at(now))))
    }

    /// The served metrics now (a reload may replace them: hold the `Arc` for one scrape's parse
    /// and record with [`Store::record_parsed`]).
    pub fn catalog(&self) -> Arc<MetricCatalog> {
        self.catalog.load_full()
    }

    /// Serves `catalog` from now on (a reloaded metrics config). Every pod keeps what carries
    /// over: the readings of families and rates both catalogs have (so an unchanged metric is
    /// never without a value for a round), the counter histories of unchanged rates. A new
    /// metric has values from each pod's next scrape (a new rate from its second); a removed one
    /// is unknown at once.
    pub fn replace_catalog(&self, catalog: MetricCatalog) {
        let mut inner = self.write();
        let old = self.catalog.load_full();
        let slots = old.slots_in(&catalog);
        let rate_of =
            |new: usize| slots[catalog.families.len() + new].map(|s| s - old.families.len());
        for ns in inner.pods.values_mut() {
            for entry in ns.pods.values_mut() {
                if let Some(reading) = entry.reading.load_full() {
                    let families = slots
                        .iter()
                        .map(|s| s.and_then(|i| reading.families.get(i).cloned().flatten()))
                        .collect();
                    entry.reading.store(Some(Arc::new(Reading {
                        time: reading.time,
                        families,
                    })));
                }
                let entry_rates = entry.rates.get_mut().unwrap_or_else(|e| e.into_inner());
                if !entry_rates.is_empty() {
                    let mut old_rates: Vec<Option<rates::CounterHistory>> =
                        std::mem::take(entry_rates).into_iter().map(Some).collect();
                    *entry_rates = catalog
                        .rates
                        .iter()
                        .enumerate()
                        .map(|(k, &(_, window))| {
                            rate_of(k)
                                .and_then(|i| old_rates.get_mut(i)?.take())
                                .unwrap_or_else(|| rates::CounterHistory::new(window))
                        })
                        .collect();
                }
            }
        }
        self.catalog.store(Arc::new(catalog));
    }

    /// Age after which a reading is left out of answers.
    pub fn max_age(&self) -> Duration {
        self.max_age
    }

    fn locked(&self) -> RwLockReadGuard<'_, Inner> {
        // A poisoned lock means a writer panicked mid-update; every update here is a single
        // map operation, so the data is still consistent and serving it is better than dying.
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a pod or updates its labels and URL. A new UID (the pod was re-created under the same
    /// name) drops the old reading. Returns whether the pod was new.
    pub fn upsert(&self, target: PodTarget) -> bool {
        let mut inner = self.write();
        let ns = inner.pods.entry(target.key.namespace.clone()).or_default();
        let inserted = match ns.pods.get_mut(&target.key.name) {
            Some(entry) => {
                if entry.uid != target.uid {
                    entry.reading.store(None);
                    entry
                        .rates
                        .get_mut()
                        .unwrap_or_else(|e| e.into_inner())
                        .clear();
                    entry.uid = target.uid;
                }
                if *entry.url != *target.url {
                    entry.url = Arc::from(target.url);
                }
                entry.ready = target.ready;
                ns.set_labels(&target.key.name, target.labels);
                false
            }
            None => ns.insert(
                target.key.name,
                PodEntry::new(
                    target.uid,
                    target.labels,
                    Arc::from(target.url),
                    target.ready,
                ),
            ),
        };
        if inserted {
            inner.pod_count += 1;
        }
        inserted
    }

    /// Removes a pod; it is absent from every answer from now on. Returns whether it was known.
    pub fn remove(&self, key: &PodKey) -> bool {
        let mut inner = self.write();
        let Some(ns) = inner.pods.get_mut(&key.namespace) else {
            return false;
        };
        let removed = ns.remove(&key.name);
        if ns.pods.is_empty() {
            inner.pods.remove(&key.namespace);
        }
        if removed {
            inner.pod_count -= 1;
        }
        removed
    }

    /// Replaces the whole inventory (a watch re-list or a re-read static file) and marks the
    /// store synced. Pods that stay (same namespace, name and UID) keep their readings.
    pub fn replace_all(&self, targets: Vec<PodTarget>) {
        let mut fresh: HashMap<String, Namespace> = HashMap::new();
        let mut inner = self.write();
        let mut count = 0;
        for t in targets {
            let mut entry = PodEntry::new(t.uid, t.labels, Arc::from(t.url), t.ready);
            if let Some(old) = inner
                .pods
                .get_mut(&t.key.namespace)
                .and_then(|ns| ns.pods.get_mut(&t.key.name))
                .filter(|e| e.uid == entry.uid)
            {
                entry.reading.store(old.reading.load_full());
                *entry.rates.get_mut().unwrap_or_else(|e| e.into_inner()) =
                    std::mem::take(old.rates.get_mut().unwrap_or_else(|e| e.into_inner()));
            }
            let added = fresh
                .entry(t.key.namespace)
                .or_default()
                .insert(t.key.name, entry);
            if added {
                count += 1;
            }
        }
        inner.pods = fresh;
        inner.pod_count = count;
        inner.synced = true;
    }

    /// Records how many pods (tracked or not) discovery sees in each namespace, so that a
    /// namespace total of a namespace with none is a 404 instead of a zero. Replaces what was
    /// known; a count of 0 removes the namespace.
    pub fn set_namespaces_seen(&self, counts: HashMap<String, usize>) {
        let mut inner = self.write();
        let mut counts = counts;
        counts.retain(|_, n| *n > 0);
        inner.namespaces_seen = Some(counts);
    }

    /// Updates one namespace's count of pods seen by discovery (see
    /// [`Store::set_namespaces_seen`]).
    pub fn set_namespace_seen(&self, namespace: &str, pods: usize) {
        let mut inner = self.write();
        let seen = inner.namespaces_seen.get_or_insert_with(HashMap::new);
        if pods == 0 {
            seen.remove(namespace);
        } else {
            seen.insert(namespace.to_owned(), pods);
        }
    }

    /// Marks the inventory as complete without changing it.
    pub fn mark_synced(&self) {
        self.write().synced = true;
    }

    /// Whether the inventory is complete (watch synced or static file read).
    pub fn is_synced(&self) -> bool {
        self.locked().synced
    }

    /// Number of pods tracked.
    pub fn pod_count(&self) -> usize {
        self.locked().pod_count
    }

    /// The namespaces with at least one tracked pod and how many, sorted by name.
    pub fn tracked_namespaces(&self) -> Vec<(String, usize)> {
        let mut names: Vec<(String, usize)> = self
            .locked()
            .pods
            .iter()
            .filter(|(_, ns)| !ns.pods.is_empty())
            .map(|(name, ns)| (name.clone(), ns.pods.len()))
            .collect();
        names.sort();
        names
    }

    /// The scrape jobs for one collection round (a snapshot; the store stays unlocked during the
    /// round).
    pub fn scrape_jobs(&self) -> Vec<ScrapeJob> {
        let inner = self.locked();
        let mut jobs = Vec::with_capacity(inner.pod_count);
        for (ns, pods) in &inner.pods {
            for (name, entry) in &pods.pods {
                jobs.push(ScrapeJob {
                    key: PodKey {
                        namespace: ns.clone(),
                        name: name.clone(),
                    },
                    uid: entry.uid.clone(),
                    url: entry.url.clone(),
                });
            }
        }
        jobs
    }

    /// The incarnation (UID) of a tracked pod; `None` when the inventory does not know it. The
    /// remote-write receiver records only for pods it returns, with that UID.
    pub fn pod_uid(&self, key: &PodKey) -> Option<String> {
        self.locked()
            .pods
            .get(&key.namespace)
            .and_then(|ns| ns.pods.get(&key.name))
            .map(|e| e.uid.clone())
    }

    /// Records a good reading for the pod, unless the pod is gone or was re-created since the job
    /// was handed out. Returns whether it was recorded.
    pub fn record(&self, key: &PodKey, uid: &str, reading: Reading) -> bool {
        let parsed_with = self.catalog.load_full();
        self.record_parsed(key, uid, reading, &parsed_with)
    }

    /// [`Store::record`] of a reading whose families are indexed like `parsed_with`'s (the
    /// catalog a scrape was parsed with): moved to the current catalog's slots if a reload
    /// replaced it meanwhile.
    pub fn record_parsed(
        &self,
        key: &PodKey,
        uid: &str,
        mut reading: Reading,
        parsed_with: &Arc<MetricCatalog>,
    ) -> bool {
        // The read lock is enough: the entry's reading is swapped atomically and its rates have
        // a lock of their own. It also holds off `replace_catalog` (a writer), so the catalog
        // loaded here stays the current one until the reading is stored.
        let inner = self.locked();
        let catalog = self.catalog.load_full();
        if !Arc::ptr_eq(parsed_with, &catalog) {
            let families = std::mem::take(&mut reading.families);
            reading.families = parsed_with
                .slots_in(&catalog)
                .into_iter()
                .take(catalog.families.len())
                .map(|s| s.and_then(|i| families.get(i).cloned().flatten()))
                .collect();
        }
        match inner
            .pods
            .get(&key.namespace)
            .and_then(|ns| ns.pods.get(&key.name))
        {
            Some(entry) if entry.uid == uid => {
                let rates = catalog.rates();
                if rates.is_empty() {
                    entry.reading.store(Some(Arc::new(reading)));
                    return true;
                }
                let mut histories = entry.rates();
                if histories.len() != rates.len() {
                    *histories = rates
                        .iter()
                        .map(|&(_, window)| rates::CounterHistory::new(window))
                        .collect();
                }
                reading.families.resize(catalog.families().len(), None);
                for (&(raw, _), history) in rates.iter().zip(histories.iter_mut()) {
                    let counter = reading.families[raw].as_ref();
                    let rate = history.observe(counter, reading.time);
                    reading.families.push(rate);
                }
                entry.reading.store(Some(Arc::new(reading)));
                true
            }
            _ => false,
        }
    }

    /// Notes that a collection round ended at `at`.
    pub fn round_finished(&self, at: Moment) {
        *self.last_round.write().unwrap_or_else(|e| e.into_inner()) = Some(at);
    }

    /// When the last collection round ended, if any did.
    pub fn last_round(&self) -> Option<Moment> {
        *self.last_round.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the entry has a reading at most `max_age` old on the monotonic clock: a stepped
    /// wall clock changes neither way what is served.
    fn is_fresh(&self, entry: &PodEntry, now: Instant) -> bool {
        entry
            .reading
            .load()
            .as_deref()
            .is_some_and(|reading| reading.time.age(now) <= self.max_age)
    }

    /// The family's value in the entry's reading, with its sample time, if that time is at most
    /// `max_age` old: the read time, or the oldest exposition timestamp of the family's series
    /// when they carry one (each family is aged on its own, as Prometheus ages each series).
    fn fresh_value(
        &self,
        entry: &PodEntry,
        family: usize,
        series_selector: &Selector,
        now: Instant,
    ) -> Option<(i64, SampleTime)> {
        let reading = entry.reading.load();
        let reading = reading.as_deref()?;
        let fam = reading.families.get(family)?.as_ref()?;
        let time = match fam.stamped_ms {
            Some(ms) => reading.time.restamped(epoch_ms(ms)),
            None => reading.time,
        };
        if time.age(now) > self.max_age {
            return None;
        }
        Some((family_value(reading, family, series_selector)?, time))
    }

    /// Every pod of `namespace` matching `pod_selector` that has a fresh value for the family at
    /// `family`, with that value filtered by `series_selector` and summed. Sorted by name.
    pub fn pods_matching(
        &self,
        namespace: &str,
        pod_selector: &Selector,
        family: usize,
        series_selector: &Selector,
        now: Moment,
    ) -> Vec<PodValue> {
        let inner = self.locked();
        let Some(ns) = inner.pods.get(namespace) else {
            return Vec::new();
        };
        let value_of = |name: &str, e: &PodEntry, check: bool| {
            if check && !pod_selector.matches_map(&e.labels) {
                return None;
            }
            let (milli, time) = self.fresh_value(e, family, series_selector, now.mono)?;
            Some(PodValue {
                name: name.to_owned(),
                milli,
                time,
            })
        };
        match ns.candidate_entries(pod_selector) {
            // Only the pods carrying the most selective required label; the full selector is
            // still applied to each, unless the index answered all of it.
            Some(found) => {
                let check = !index_answers_whole(pod_selector);
                found
                    .into_iter()
                    .filter_map(|(name, e)| value_of(name, e, check))
                    .collect()
            }
            None => ns
                .pods
                .iter()
                .filter_map(|(name, e)| value_of(name, e, true))
                .collect(),
        }
    }

    /// The value of one pod, if it is tracked and has a fresh reading of the family.
    pub fn pod_value(
        &self,
        key: &PodKey,
        family: usize,
        series_selector: &Selector,
        now: Moment,
    ) -> Option<PodValue> {
        let inner = self.locked();
        let entry = inner.pods.get(&key.namespace)?.pods.get(&key.name)?;
        let (milli, time) = self.fresh_value(entry, family, series_selector, now.mono)?;
        Some(PodValue {
            name: key.name.clone(),
            milli,
            time,
        })
    }

    /// Sum over every tracked pod of `namespace`. Fails when any of them has no fresh value, since
    /// a partial sum would read as a drop in load. The time is the oldest sample time included (or
    /// the end of the last round when the namespace has no pods).
    ///
    /// # Errors
    /// [`ReadError::IncompleteData`] when at least one pod has no fresh value for the family;
    /// [`ReadError::UnknownNamespace`] when the namespace has no tracked pod and discovery
    /// reports namespaces but not this one.
    pub fn namespace_total(
        &self,
        namespace: &str,
        family: usize,
        series_selector: &Selector,
        now: Moment,
    ) -> Result<(i64, SampleTime), ReadError> {
        let inner = self.locked();
        let pods = inner.pods.get(namespace).map(|ns| &ns.pods);
        let seen = |seen: &HashMap<String, usize>| seen.contains_key(namespace);
        if pods.is_none() && !inner.namespaces_seen.as_ref().is_none_or(seen) {
            return Err(ReadError::UnknownNamespace {
                namespace: namespace.to_owned(),
            });
        }
        let values = pods
            .into_iter()
            .flat_map(BTreeMap::values)
            .map(|entry| self.fresh_value(entry, family, series_selector, now.mono));
        let (sum, oldest) = read::sum_every_pod(|| format!("namespace {namespace}"), values)?;
        let time = oldest
            .or_else(|| self.last_round().map(SampleTime::read_at))
            .unwrap_or_else(|| SampleTime::read_at(now));
        Ok((sum, time))
    }

    /// Names of the tracked pods of `namespace` matching `pod_selector`, sorted. Used by the
    /// Prometheus source, whose values come from elsewhere but whose pods are the inventory's.
    pub fn pod_names(&self, namespace: &str, pod_selector: &Selector) -> Vec<String> {
        let inner = self.locked();
        let Some(ns) = inner.pods.get(namespace) else {
            return Vec::new();
        };
        let matches = |e: &PodEntry| pod_selector.matches_map(&e.labels);
        match ns.candidate_entries(pod_selector) {
            Some(found) => found
                .into_iter()
                .filter(|(_, e)| matches(e))
                .map(|(name, _)| name.to_owned())
                .collect(),
            None => ns
                .pods
                .iter()
                .filter(|(_, e)| matches(e))
                .map(|(name, _)| name.clone())
                .collect(),
        }
    }

    /// Whether `namespace` is known: it has a tracked pod, discovery saw a pod in it, or discovery
    /// reports no namespaces at all.
    pub fn namespace_known(&self, namespace: &str) -> bool {
        let inner = self.locked();
        inner.pods.contains_key(namespace)
            || inner
                .namespaces_seen
                .as_ref()
                .is_none_or(|seen| seen.contains_key(namespace))
    }

    /// Whether the pod is tracked.
    pub fn has_pod(&self, key: &PodKey) -> bool {
        self.locked()
            .pods
            .get(&key.namespace)
            .is_some_and(|ns| ns.pods.contains_key(&key.name))
    }

    /// How many tracked pods have a fresh reading, and how many do not (never scraped
    /// successfully, or last good reading older than `max_age`), for the adapter's own metrics.
    pub fn freshness(&self, now: Instant) -> (usize, usize) {
        let inner = self.locked();
        let mut fresh = 0;
        let mut stale = 0;
        for entry in inner.pods.values().flat_map(|ns| ns.pods.values()) {
            if self.is_fresh(entry, now) {
                fresh += 1;
            } else {
                stale += 1;
            }
        }
        (fresh, stale)
    }
}

/// A Unix time in milliseconds; before 1970 is the epoch (as stale).
fn epoch_ms(ms: i64) -> std::time::SystemTime {
    std::time::UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

/// Value of a family in a reading: the sum of its series matching `series_selector`. `None` when
/// the pod does not expose the family. A family present with no matching series is `Some(0)`.
fn family_value(reading: &Reading, family: usize, series_selector: &Selector) -> Option<i64> {
    let fam = reading.families.get(family)?.as_ref()?;
    if series_selector.is_empty() {
        return Some(fam.total_milli);
    }
    Some(
        fam.series
            .iter()
            .filter(|s| series_selector.matches_pairs(&s.labels))
            .fold(0i64, |acc, s| acc.saturating_add(s.milli)),
    )
}

/// Why the samples of a scrape cannot be served; the scrape fails as a whole, like a
/// Prometheus scrape does, and the pod keeps its last good value until `--max-age`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SampleError {
    /// A wanted family has a value that cannot be served (NaN, ±Inf or out of range): never a 0.
    #[error("family {family} has an unservable value")]
    Unservable {
        /// The family.
        family: String,
    },
    /// The same series (name and label set, in any order) appears twice. Prometheus rejects
    /// such a scrape ("duplicate sample for timestamp"); summing both would double the value.
    #[error("family {family} has the series {labels:?} twice")]
    DuplicateSeries {
        /// The family.
        family: String,
        /// The repeated label set, sorted.
        labels: Vec<(String, String)>,
    },
}

/// Builds the [`FamilyReading`]s of a scrape from parsed samples, indexed like
/// [`MetricCatalog::families`] (`None` where the pod does not expose the family).
///
/// # Errors
/// [`SampleError`] when a wanted family has an unservable value or a duplicate series: such a
/// scrape is a failed one, never a zero or a doubled value.
pub fn readings_from_samples(
    catalog: &MetricCatalog,
    samples: &[crate::exposition::Sample],
    declared: impl Fn(&str) -> bool,
) -> Result<Families, SampleError> {
    let mut out: Families = catalog
        .families()
        .iter()
        .map(|f| declared(f).then(FamilyReading::default))
        .collect();
    for s in samples {
        let Some(idx) = catalog.families().iter().position(|f| *f == s.name) else {
            continue;
        };
        let unservable = || SampleError::Unservable {
            family: s.name.clone(),
        };
        let milli = quantity::milli_from_f64(s.value).ok_or_else(unservable)?;
        let fam = out[idx].get_or_insert_with(FamilyReading::default);
        if let Some(ts) = s.timestamp_ms {
            fam.stamped_ms = Some(fam.stamped_ms.map_or(ts, |o| o.min(ts)));
        }
        fam.total_milli = fam.total_milli.checked_add(milli).ok_or_else(unservable)?;
        fam.series.push(Series {
            labels: s.labels.clone(),
            milli,
        });
    }
    for (fam, family) in out.iter().zip(catalog.families()) {
        if let Some(labels) = fam.as_ref().and_then(|f| duplicate_series(&f.series)) {
            return Err(SampleError::DuplicateSeries {
                family: family.clone(),
                labels,
            });
        }
    }
    Ok(out)
}

/// The label set (sorted) of a series that occurs twice among `series`, in any label order.
///
/// The series' label lists are compared as sorted lists of references after sorting them all,
/// so a scrape copies no label and hashes nothing (a set of cloned label lists per family was
/// about a tenth of a scrape's CPU at 10,000 pods), and a hostile pod's 100,000 series cost
/// O(n log n) comparisons.
fn duplicate_series(series: &[Series]) -> Option<Vec<(String, String)>> {
    if series.len() < 2 {
        return None;
    }
    let mut keys: Vec<Vec<&(String, String)>> = series
        .iter()
        .map(|s| {
            let mut key: Vec<&(String, String)> = s.labels.iter().collect();
            key.sort_unstable();
            key
        })
        .collect();
    keys.sort_unstable();
    keys.windows(2)
        .find(|pair| pair[0] == pair[1])
        .map(|pair| pair[0].iter().map(|&label| label.clone()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog() -> MetricCatalog {
        MetricCatalog::new(vec![MetricMapping {
            served: "websocket_connections".into(),
            family: "websocket_connections_active".into(),
            rate: None,
            filter: None,
        }])
    }

    fn target(ns: &str, name: &str, uid: &str, app: &str) -> PodTarget {
        PodTarget {
            key: PodKey {
                namespace: ns.into(),
                name: name.into(),
            },
            uid: uid.into(),
            labels: [("app".to_string(), app.to_string())].into(),
            url: format!("http://127.0.0.1:1/{name}"),
            ready: true,
        }
    }

    fn reading(time: Moment, series: &[(&str, i64)]) -> Reading {
        let series: Vec<Series> = series
            .iter()
            .map(|(route, milli)| Series {
                labels: vec![("route".into(), (*route).into())],
                milli: *milli,
            })
            .collect();
        let total_milli = series.iter().map(|s| s.milli).sum();
        Reading {
            time: SampleTime::read_at(time),
            families: smallvec::smallvec![Some(FamilyReading {
                series,
                total_milli,
                stamped_ms: None,
            })],
        }
    }

    fn key(ns: &str, name: &str) -> PodKey {
        PodKey {
            namespace: ns.into(),
            name: name.into(),
        }
    }

    #[test]
    fn a_rate_is_served_from_the_second_scrape_of_its_counter_with_the_last_scrapes_time() {
        let catalog = MetricCatalog::new(vec![
            MetricMapping {
                served: "messages".into(),
                family: "messages_total".into(),
                rate: None,
                filter: None,
            },
            MetricMapping {
                served: "messages_per_second".into(),
                family: "messages_total".into(),
                rate: Some(Duration::from_secs(10)),
                filter: None,
            },
        ]);
        assert_eq!(catalog.families().len(), 1);
        assert_eq!(catalog.family_index("messages"), Some(0));
        assert_eq!(catalog.family_index("messages_per_second"), Some(1));
        let store = Store::new(catalog, Duration::from_secs(3));
        store.upsert(target("ns", "a", "u1", "ws"));
        let t0 = Moment::now();
        let at = |ms: u64| Moment {
            wall: t0.wall + Duration::from_millis(ms),
            mono: t0.mono + Duration::from_millis(ms),
        };
        let all = Selector::everything();
        let rate = |now: Moment, series: &Selector| {
            store
                .pod_value(&key("ns", "a"), 1, series, now)
                .map(|v| (v.milli, v.time.wall))
        };
        store.record(
            &key("ns", "a"),
            "u1",
            reading(at(0), &[("chat", 10_000), ("echo", 0)]),
        );
        assert_eq!(rate(at(0), &all), None, "one scrape: no rate yet");
        store.record(
            &key("ns", "a"),
            "u1",
            reading(at(2_000), &[("chat", 30_000), ("echo", 4_000)]),
        );
        // chat: 20 in 2 s, echo: 4 in 2 s; the time is the second scrape's.
        assert_eq!(rate(at(2_000), &all), Some((12_000, at(2_000).wall)));
        let chat = Selector::parse("route=chat").expect("selector");
        assert_eq!(rate(at(2_000), &chat), Some((10_000, at(2_000).wall)));
        // The counter itself is still served as read.
        assert_eq!(
            store
                .pod_value(&key("ns", "a"), 0, &all, at(2_000))
                .map(|v| v.milli),
            Some(34_000)
        );
        // Stale like any value: nothing after --max-age without a scrape.
        assert_eq!(rate(at(5_001), &all), None);
        // The pod was replaced (new UID): its history starts over.
        store.upsert(target("ns", "a", "u2", "ws"));
        store.record(
            &key("ns", "a"),
            "u2",
            reading(at(6_000), &[("chat", 1_000)]),
        );
        assert_eq!(rate(at(6_000), &all), None);
    }

    fn mapping(
        served: &str,
        family: &str,
        rate: Option<u64>,
        filter: Option<&str>,
    ) -> MetricMapping {
        MetricMapping {
            served: served.into(),
            family: family.into(),
            rate: rate.map(Duration::from_secs),
            filter: filter.map(|f| Selector::parse(f).expect("selector")),
        }
    }

    #[test]
    fn a_new_catalog_keeps_what_carries_over_and_filters_each_metric_by_its_own_selector() {
        let store = Store::new(
            MetricCatalog::new(vec![
                mapping("conns", "active", None, None),
                mapping("msgs", "messages_total", Some(60), None),
            ]),
            Duration::from_secs(30),
        );
        store.upsert(target("ns", "a", "u1", "ws"));
        let t0 = Moment::now();
        let at = |ms: u64| Moment {
            wall: t0.wall + Duration::from_millis(ms),
            mono: t0.mono + Duration::from_millis(ms),
        };
        let both = |time, active: &[(&str, i64)], messages: &[(&str, i64)]| Reading {
            families: smallvec::smallvec![
                reading(time, active).families.remove(0),
                reading(time, messages).families.remove(0),
            ],
            ..reading(time, &[])
        };
        store.record(
            &key("ns", "a"),
            "u1",
            both(at(0), &[("chat", 3000), ("echo", 4000)], &[("chat", 0)]),
        );
        store.record(
            &key("ns", "a"),
            "u1",
            both(
                at(1000),
                &[("chat", 3000), ("echo", 4000)],
                &[("chat", 5000)],
            ),
        );
        let all = Selector::everything();
        let value = |metric: &str| {
            let read = store.read(
                resource::pods(),
                metric,
                Objects::One {
                    namespace: "ns",
                    name: "a",
                },
                &all,
                at(1000),
            );
            read.map(|items| items[0].milli).map_err(|e| e.to_string())
        };
        assert_eq!(value("conns"), Ok(7000));
        assert_eq!(value("msgs"), Ok(5000));
        // Reordered families, a new filtered metric, the rate kept, `conns` removed.
        store.replace_catalog(MetricCatalog::new(vec![
            mapping("msgs", "messages_total", Some(60), None),
            mapping("chat", "active", None, Some("route=chat")),
        ]));
        assert_eq!(value("chat"), Ok(3000), "carried over, filtered");
        assert_eq!(value("msgs"), Ok(5000), "the rate's history carried over");
        assert!(value("conns").is_err(), "removed at once");
        // A scrape parsed with the old catalog (families in its order) is moved to the new one.
        let old = Arc::new(MetricCatalog::new(vec![
            mapping("conns", "active", None, None),
            mapping("msgs", "messages_total", Some(60), None),
        ]));
        store.record_parsed(
            &key("ns", "a"),
            "u1",
            both(at(2000), &[("chat", 9000)], &[("chat", 11_000)]),
            &old,
        );
        let read = |metric: &str| {
            store
                .read(
                    resource::pods(),
                    metric,
                    Objects::One {
                        namespace: "ns",
                        name: "a",
                    },
                    &all,
                    at(2000),
                )
                .map(|items| items[0].milli)
        };
        assert_eq!(read("chat").ok(), Some(9000));
        // 11 messages over 2 s since the first scrape.
        assert_eq!(read("msgs").ok(), Some(5500));
    }

    #[test]
    fn with_a_query_source_a_label_selector_over_watched_objects_picks_them_by_their_labels() {
        use read::{ObjectValue, Outcome, Served, Table, Values};
        let store = Store::new(catalog(), Duration::from_secs(30));
        let now = Moment::now();
        let value = |milli| ObjectValue {
            series: vec![(Vec::new(), milli)],
            total_milli: milli,
            time: SampleTime::read_at(now),
        };
        let table = Table {
            objects: [
                (("prod".to_owned(), "web".to_owned()), value(2000)),
                (("prod".to_owned(), "api".to_owned()), value(5000)),
            ]
            .into(),
            ..Table::default()
        };
        let services = resource::resolve_path("services").expect("built in");
        store.publish(Snapshot {
            served: vec![
                Served {
                    resource: deployments(),
                    metric: "queue_depth".into(),
                    values: Values::Query(0),
                },
                Served {
                    resource: services,
                    metric: "queue_depth".into(),
                    values: Values::Query(0),
                },
            ]
            .into(),
            outcomes: vec![Outcome::Ready(Arc::new(table))],
        });
        let all = Selector::everything();
        let web = Selector::parse("team=web").expect("selector");
        let read = |resource, selector: &Selector| {
            store
                .read(
                    resource,
                    "queue_depth",
                    Objects::All {
                        namespace: "prod",
                        selector,
                    },
                    &all,
                    now,
                )
                .map(|items| items.into_iter().map(|i| i.milli).collect::<Vec<_>>())
        };
        // Not watched: the selector cannot be answered (400); without one, every object.
        assert!(matches!(
            read(services, &web),
            Err(ReadError::Unanswerable(_))
        ));
        assert_eq!(read(services, &all).ok(), Some(vec![5000, 2000]));
        // Watched, not listed yet: no answer rather than a wrong one.
        store.track_objects(deployments());
        assert!(matches!(
            read(deployments(), &web),
            Err(ReadError::NotSynced { .. })
        ));
        store.replace_objects(
            deployments(),
            vec![
                ("prod".into(), "web".into(), object("web", "web")),
                ("prod".into(), "api".into(), object("api", "platform")),
            ],
        );
        assert_eq!(read(deployments(), &web).ok(), Some(vec![2000]));
        assert_eq!(read(deployments(), &all).ok(), Some(vec![5000, 2000]));
    }

    #[test]
    fn a_reading_older_than_max_age_is_left_out() {
        let store = Store::new(catalog(), Duration::from_secs(3));
        store.upsert(target("ns", "a", "u1", "ws"));
        let t0 = Moment::now();
        assert!(store.record(&key("ns", "a"), "u1", reading(t0, &[("chat", 5000)])));
        let all = Selector::everything();
        let at = |s| Moment {
            wall: t0.wall + Duration::from_secs(s),
            mono: t0.mono + Duration::from_secs(s),
        };
        assert_eq!(store.pods_matching("ns", &all, 0, &all, at(3)).len(), 1);
        assert!(store.pods_matching("ns", &all, 0, &all, at(4)).is_empty());
        assert!(store.pod_value(&key("ns", "a"), 0, &all, at(4)).is_none());
    }

    #[test]
    fn a_namespace_discovery_never_saw_has_no_total_while_a_known_empty_one_is_zero() {
        let store = Store::new(catalog(), Duration::from_secs(3));
        let all = Selector::everything();
        let now = Moment::now();
        // Without namespace reports every namespace is taken to exist (the old answer).
        assert_eq!(
            store.namespace_total("ghost", 0, &all, now).map(|t| t.0),
            Ok(0)
        );
        store.set_namespaces_seen([("quiet".to_owned(), 3)].into());
        assert_eq!(
            store.namespace_total("ghost", 0, &all, now),
            Err(ReadError::UnknownNamespace {
                namespace: "ghost".into()
            })
        );
        // Pods there, none opted in: a true zero.
        assert_eq!(
            store.namespace_total("quiet", 0, &all, now).map(|t| t.0),
            Ok(0)
        );
        store.set_namespace_seen("quiet", 0);
        assert!(store.namespace_total("quiet", 0, &all, now).is_err());
        // A tracked pod makes its namespace known whatever discovery reported.
        store.upsert(target("tracked", "a", "u1", "ws"));
        assert!(matches!(
            store.namespace_total("tracked", 0, &all, now),
            Err(ReadError::IncompleteData { .. })
        ));
    }

    #[test]
    fn each_family_is_aged_by_its_own_exposition_timestamps() {
        let catalog = MetricCatalog::new(vec![
            MetricMapping {
                served: "fresh".into(),
                family: "a".into(),
                rate: None,
                filter: None,
            },
            MetricMapping {
                served: "stale".into(),
                family: "b".into(),
                rate: None,
                filter: None,
            },
        ]);
        let store = Store::new(catalog.clone(), Duration::from_secs(3));
        store.upsert(target("ns", "p", "u1", "ws"));
        let at = Moment::now();
        let wall_ms = |t: std::time::SystemTime| {
            t.duration_since(std::time::UNIX_EPOCH)
                .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
                .unwrap_or(0)
        };
        let text = format!(
            "a 5 {}\nb{{x=\"1\"}} 7 {}\nb{{x=\"2\"}} 1 1000\n",
            wall_ms(at.wall),
            wall_ms(at.wall)
        );
        let samples = crate::exposition::parse(&text).expect("valid");
        let families = readings_from_samples(&catalog, &samples, |_| false).expect("servable");
        assert!(store.record(
            &key("ns", "p"),
            "u1",
            Reading {
                time: SampleTime::read_at(at),
                families,
            }
        ));
        let all = Selector::everything();
        // `a` is stamped now: served. `b` has one series stamped 1970: the whole family is left
        // out (never the sum of its fresh series alone), and it does not drag `a` with it.
        assert_eq!(
            store
                .pod_value(&key("ns", "p"), 0, &all, at)
                .map(|v| v.milli),
            Some(5000)
        );
        assert_eq!(store.pod_value(&key("ns", "p"), 1, &all, at), None);
        assert!(store.namespace_total("ns", 1, &all, at).is_err());
        assert_eq!(
            store.namespace_total("ns", 0, &all, at).map(|t| t.0),
            Ok(5000)
        );
    }

    #[test]
    fn a_wall_clock_step_changes_no_age() {
        let store = Store::new(catalog(), Duration::from_secs(3));
        store.upsert(target("ns", "a", "u1", "ws"));
        let t0 = Moment::now();
        assert!(store.record(&key("ns", "a"), "u1", reading(t0, &[("chat", 5000)])));
        let all = Selector::everything();
        // The wall clock stepped back a minute, 4 s passed: the value is 4 s old, not -56 s.
        let stepped_back = Moment {
            wall: t0.wall - Duration::from_secs(60),
            mono: t0.mono + Duration::from_secs(4),
        };
        assert!(
            store
                .pods_matching("ns", &all, 0, &all, stepped_back)
                .is_empty()
        );
        assert!(
            store
                .pod_value(&key("ns", "a"), 0, &all, stepped_back)
                .is_none()
        );
        assert!(store.namespace_total("ns", 0, &all, stepped_back).is_err());
        assert_eq!(store.freshness(stepped_back.mono), (0, 1));
        // The wall clock jumped an hour ahead, 1 s passed: still fresh.
        let stepped_ahead = Moment {
            wall: t0.wall + Duration::from_secs(3600),
            mono: t0.mono + Duration::from_secs(1),
        };
        assert_eq!(
            store
                .pods_matching("ns", &all, 0, &all, stepped_ahead)
                .len(),
            1
        );
    }

    #[test]
    fn duplicate_series_fail_the_scrape_instead_of_doubling() {
        use crate::exposition;
        let samples = exposition::parse(
            "websocket_connections_active{route=\"a\",x=\"1\"} 5\nwebsocket_connections_active{x=\"1\",route=\"a\"} 5\n",
        )
        .expect("valid text");
        let err =
            readings_from_samples(&catalog(), &samples, |_| false).expect_err("duplicates refused");
        assert!(matches!(err, SampleError::DuplicateSeries { .. }), "{err}");
        let distinct = exposition::parse(
            "websocket_connections_active{route=\"a\"} 5\nwebsocket_connections_active{route=\"b\"} 5\n",
        )
        .expect("valid text");
        let ok = readings_from_samples(&catalog(), &distinct, |_| false).expect("servable");
        assert_eq!(ok[0].as_ref().map(|f| f.total_milli), Some(10_000));
        assert_eq!(ok[0].as_ref().and_then(|f| f.stamped_ms), None);
        // A duplicate apart from its twin, among others, and a label-less series twice.
        for (body, twice) in [
            (
                "websocket_connections_active{x=\"1\",route=\"a\"} 1\nwebsocket_connections_active{route=\"b\"} 2\nwebsocket_connections_active{route=\"c\"} 3\nwebsocket_connections_active{route=\"a\",x=\"1\"} 4\n",
                vec![
                    ("route".to_owned(), "a".to_owned()),
                    ("x".to_owned(), "1".to_owned()),
                ],
            ),
            (
                "websocket_connections_active 1\nwebsocket_connections_active{route=\"b\"} 2\nwebsocket_connections_active{} 3\n",
                vec![],
            ),
        ] {
            let samples = exposition::parse(body).expect("valid text");
            match readings_from_samples(&catalog(), &samples, |_| false) {
                Err(SampleError::DuplicateSeries { family, labels }) => {
                    assert_eq!(family, "websocket_connections_active");
                    assert_eq!(labels, twice, "{body}");
                }
                other => panic!("{body}: {other:?}"),
            }
        }
        // The same labels under two different wanted families are two series.
        let two = MetricCatalog::new(vec![
            MetricMapping {
                served: "a".into(),
                family: "fam_a".into(),
                rate: None,
                filter: None,
            },
            MetricMapping {
                served: "b".into(),
                family: "fam_b".into(),
                rate: None,
                filter: None,
            },
        ]);
        let samples =
            exposition::parse("fam_a{route=\"a\"} 1\nfam_b{route=\"a\"} 2\n").expect("valid text");
        let ok = readings_from_samples(&two, &samples, |_| false).expect("servable");
        assert_eq!(ok.len(), 2);
    }

    #[test]
    fn the_oldest_exposition_timestamp_of_kept_samples_is_reported() {
        let samples = crate::exposition::parse(
            "websocket_connections_active{route=\"a\"} 5 1000\nwebsocket_connections_active{route=\"b\"} 5 2000\nother 1 5\n",
        )
        .expect("valid text");
        let ok = readings_from_samples(&catalog(), &samples, |_| false).expect("servable");
        assert_eq!(ok[0].as_ref().and_then(|f| f.stamped_ms), Some(1000));
    }

    #[test]
    fn a_reading_for_a_replaced_incarnation_is_not_recorded() {
        let store = Store::new(catalog(), Duration::from_secs(3));
        store.upsert(target("ns", "a", "u1", "ws"));
        store.upsert(target("ns", "a", "u2", "ws"));
        let now = Moment::now();
        assert!(!store.record(&key("ns", "a"), "u1", reading(now, &[("chat", 1000)])));
        assert!(store.record(&key("ns", "a"), "u2", reading(now, &[("chat", 1000)])));
    }

    #[test]
    fn a_removed_pod_disappears_and_is_not_resurrected_by_a_late_scrape() {
        let store = Store::new(catalog(), Duration::from_secs(3));
        store.upsert(target("ns", "a", "u1", "ws"));
        let now = Moment::now();
        assert!(store.record(&key("ns", "a"), "u1", reading(now, &[("chat", 1000)])));
        assert!(store.remove(&key("ns", "a")));
        assert!(!store.record(&key("ns", "a"), "u1", reading(now, &[("chat", 1000)])));
        let all = Selector::everything();
        assert!(store.pods_matching("ns", &all, 0, &all, now).is_empty());
        assert_eq!(store.pod_count(), 0);
    }

    #[test]
    fn series_selector_filters_before_summing_and_no_match_is_zero() {
        let store = Store::new(catalog(), Duration::from_secs(3));
        store.upsert(target("ns", "a", "u1", "ws"));
        let now = Moment::now();
        store.record(
            &key("ns", "a"),
            "u1",
            reading(now, &[("chat", 3000), ("echo", 4000)]),
        );
        let all = Selector::everything();
        let chat = Selector::parse("route=chat").expect("valid selector");
        let none = Selector::parse("route=nope").expect("valid selector");
        let v = |sel: &Selector| {
            store
                .pod_value(&key("ns", "a"), 0, sel, now)
                .map(|v| v.milli)
        };
        assert_eq!(v(&all), Some(7000));
        assert_eq!(v(&chat), Some(3000));
        assert_eq!(v(&none), Some(0));
    }

    #[test]
    fn namespace_total_refuses_a_partial_sum() {
        let store = Store::new(catalog(), Duration::from_secs(3));
        store.upsert(target("ns", "a", "u1", "ws"));
        store.upsert(target("ns", "b", "u2", "ws"));
        let now = Moment::now();
        store.record(&key("ns", "a"), "u1", reading(now, &[("chat", 2000)]));
        let all = Selector::everything();
        assert!(matches!(
            store.namespace_total("ns", 0, &all, now),
            Err(ReadError::IncompleteData {
                missing: 1,
                pods: 2,
                ..
            })
        ));
        store.record(&key("ns", "b"), "u2", reading(now, &[("chat", 5000)]));
        assert_eq!(
            store.namespace_total("ns", 0, &all, now).map(|t| t.0),
            Ok(7000)
        );
        assert_eq!(
            store.namespace_total("empty", 0, &all, now).map(|t| t.0),
            Ok(0)
        );
    }

    #[test]
    fn replace_all_keeps_readings_of_pods_that_stay() {
        let store = Store::new(catalog(), Duration::from_secs(3));
        store.upsert(target("ns", "a", "u1", "ws"));
        store.upsert(target("ns", "b", "u2", "ws"));
        let now = Moment::now();
        store.record(&key("ns", "a"), "u1", reading(now, &[("chat", 2000)]));
        assert!(!store.is_synced());
        store.replace_all(vec![
            target("ns", "a", "u1", "ws"),
            target("ns", "c", "u3", "ws"),
        ]);
        assert!(store.is_synced());
        assert_eq!(store.pod_count(), 2);
        let all = Selector::everything();
        let names: Vec<_> = store
            .pods_matching("ns", &all, 0, &all, now)
            .into_iter()
            .map(|p| p.name)
            .collect();
        assert_eq!(names, vec!["a".to_string()]);
    }

    #[test]
    fn the_label_index_follows_label_changes_and_removals() {
        let store = Store::new(catalog(), Duration::from_secs(3));
        let now = Moment::now();
        for (name, app) in [("a", "ws"), ("b", "ws"), ("c", "other")] {
            store.upsert(target("ns", name, name, app));
            store.record(&key("ns", name), name, reading(now, &[("chat", 1000)]));
        }
        let all = Selector::everything();
        let names = |sel: &str| -> Vec<String> {
            let sel = Selector::parse(sel).expect("valid selector");
            store
                .pods_matching("ns", &sel, 0, &all, now)
                .into_iter()
                .map(|p| p.name)
                .collect()
        };
        assert_eq!(names("app=ws"), vec!["a", "b"]);
        assert_eq!(names("app in (ws,other)"), vec!["a", "b", "c"]);
        // b is relabelled: the index drops it from app=ws; its reading stays (same UID).
        store.upsert(target("ns", "b", "b", "other"));
        assert_eq!(names("app=ws"), vec!["a"]);
        assert_eq!(names("app==other"), vec!["b", "c"]);
        assert_eq!(names("app=other,app!=other"), Vec::<String>::new());
        store.remove(&key("ns", "c"));
        assert_eq!(names("app=other"), vec!["b"]);
        assert_eq!(names("app notin (ws)"), vec!["b"]);
        assert_eq!(names("app=nope"), Vec::<String>::new());
    }

    proptest::proptest! {
        /// The index answers exactly what a scan of every pod would.
        #[test]
        fn indexed_queries_equal_a_full_scan(
            pods in proptest::collection::vec((0u8..40, 0u8..4, 0u8..3), 0..60),
            ops in proptest::collection::vec((0u8..40, 0u8..4, proptest::bool::ANY), 0..30),
            selector in "(app|tier)(=|==|!=| in | notin )(\\(a0,a1\\)|a[0-3]|t[0-2])(,tier( in \\(t0,t1\\)|=t[0-2]))?",
        ) {
            let store = Store::new(catalog(), Duration::from_secs(3));
            let now = Moment::now();
            let mut expected: BTreeMap<String, Labels> = BTreeMap::new();
            let labels = |app: u8, tier: u8| -> Labels {
                [("app".to_string(), format!("a{app}")), ("tier".to_string(), format!("t{tier}"))].into()
            };
            for (n, app, tier) in pods {
                let name = format!("p{n}");
                let mut t = target("ns", &name, &name, "x");
                t.labels = labels(app, tier);
                store.upsert(t.clone());
                store.record(&t.key, &name, reading(now, &[("chat", 1000)]));
                expected.insert(name, t.labels);
            }
            for (n, app, delete) in ops {
                let name = format!("p{n}");
                if delete {
                    store.remove(&key("ns", &name));
                    expected.remove(&name);
                } else if let Some(l) = expected.get_mut(&name) {
                    l.insert("app".into(), format!("a{app}"));
                    let mut t = target("ns", &name, &name, "x");
                    t.labels = l.clone();
                    store.upsert(t);
                }
            }
            let sel = match Selector::parse(&selector) {
                Ok(s) => s,
                Err(_) => return Ok(()),
            };
            let all = Selector::everything();
            let got: Vec<String> = store.pods_matching("ns", &sel, 0, &all, now).into_iter().map(|p| p.name).collect();
            let want: Vec<String> = expected.iter().filter(|(_, l)| sel.matches_map(l)).map(|(n, _)| n.clone()).collect();
            proptest::prop_assert_eq!(got, want);
        }
    }

    #[test]
    fn pod_selector_picks_pods_by_kubernetes_labels() {
        let store = Store::new(catalog(), Duration::from_secs(3));
        let now = Moment::now();
        for (name, app) in [("a", "ws"), ("b", "other"), ("c", "ws")] {
            store.upsert(target("ns", name, name, app));
            store.record(&key("ns", name), name, reading(now, &[("chat", 1000)]));
        }
        let sel = Selector::parse("app=ws").expect("valid selector");
        let all = Selector::everything();
        let names: Vec<_> = store
            .pods_matching("ns", &sel, 0, &all, now)
            .into_iter()
            .map(|p| p.name)
            .collect();
        assert_eq!(names, vec!["a".to_string(), "c".to_string()]);
    }

    fn deployments() -> &'static ResourceInfo {
        resource::resolve_path("deployments.apps").expect("known")
    }

    fn object(app: &str, team: &str) -> ObjectSpec {
        ObjectSpec {
            labels: [("team".to_string(), team.to_string())].into(),
            pods: Some(Selector::parse(&format!("app={app}")).expect("selector")),
        }
    }

    #[test]
    fn an_object_is_the_complete_sum_over_its_ready_pods_with_the_oldest_time() {
        let store = Store::new(catalog(), Duration::from_secs(3));
        store.track_objects(deployments());
        store.replace_objects(
            deployments(),
            vec![
                ("ns".into(), "ws".into(), object("ws", "rt")),
                ("ns".into(), "other".into(), object("other", "rt")),
                (
                    "ns".into(),
                    "svcless".into(),
                    ObjectSpec {
                        labels: Labels::new(),
                        pods: None,
                    },
                ),
            ],
        );
        let t0 = Moment::now();
        let t1 = Moment {
            mono: t0.mono + Duration::from_millis(500),
            wall: t0.wall + Duration::from_millis(500),
        };
        store.upsert(target("ns", "a", "u1", "ws"));
        store.upsert(target("ns", "b", "u2", "ws"));
        store.upsert(target("ns", "x", "u3", "other"));
        // A Running pod that is not ready yet: never scraped, and not counted.
        store.upsert(PodTarget {
            ready: false,
            ..target("ns", "c", "u4", "ws")
        });
        store.record(
            &key("ns", "a"),
            "u1",
            reading(t0, &[("chat", 2000), ("echo", 1000)]),
        );
        let all = Selector::everything();
        let one = |name| Objects::One {
            namespace: "ns",
            name,
        };
        let read = |objects, sel: &Selector| {
            store.read(deployments(), "websocket_connections", objects, sel, t1)
        };
        // b is ready and has no value yet: no partial sum.
        assert_eq!(
            read(one("ws"), &all).map_err(|e| e.to_string()),
            Err("1 of 2 pods of deployments.apps ns/ws have no fresh value".to_owned())
        );
        store.record(&key("ns", "b"), "u2", reading(t1, &[("chat", 4000)]));
        let items = read(one("ws"), &all).expect("complete");
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].milli, 7000);
        assert_eq!(
            items[0].time,
            SampleTime::read_at(t0),
            "the oldest sample's time"
        );
        assert_eq!(
            items[0].described,
            Described::Object {
                kind: "Deployment",
                api_version: "apps/v1",
                namespace: Some("ns".into()),
                name: "ws".into(),
            }
        );
        // metricLabelSelector filters the series before the sum.
        let chat = Selector::parse("route=chat").expect("selector");
        assert_eq!(read(one("ws"), &chat).expect("complete")[0].milli, 6000);
        // An object whose only pod has no value, one without a selector, and an unknown one.
        assert!(matches!(
            read(one("other"), &all),
            Err(ReadError::IncompleteData { .. })
        ));
        assert!(matches!(
            read(one("svcless"), &all),
            Err(ReadError::NoPods { .. })
        ));
        assert_eq!(
            read(one("nope"), &all).map_err(|e| e.to_string()),
            Err("deployments.apps \"nope\" not found".to_owned())
        );
        // Form B: objects selected by their own labels; an incomplete one is left out.
        let team = Selector::parse("team=rt").expect("selector");
        let listed = read(
            Objects::All {
                namespace: "ns",
                selector: &team,
            },
            &all,
        )
        .expect("list");
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].milli, 7000);
        // The pod going unready leaves the sum; a stale one makes it incomplete again.
        store.upsert(PodTarget {
            ready: false,
            ..target("ns", "b", "u2", "ws")
        });
        assert_eq!(read(one("ws"), &all).expect("complete")[0].milli, 3000);
        let late = Moment {
            mono: t0.mono + Duration::from_millis(3200),
            wall: t0.wall + Duration::from_millis(3200),
        };
        assert!(matches!(
            store.read(
                deployments(),
                "websocket_connections",
                one("ws"),
                &all,
                late
            ),
            Err(ReadError::IncompleteData { .. })
        ));
        // Discovery lists the tracked resource after pods and namespaces.
        assert_eq!(
            store
                .served()
                .iter()
                .map(|(r, m)| format!("{}/{m}", r.path()))
                .collect::<Vec<_>>(),
            [
                "pods/websocket_connections",
                "namespaces/websocket_connections",
                "deployments.apps/websocket_connections"
            ]
        );
    }
}
