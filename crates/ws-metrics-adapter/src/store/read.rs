//! The read contract between the sources and the API: what a source publishes besides per-pod
//! scrape readings (a [`Snapshot`] of query answers, swapped whole), what a read asks for
//! ([`Objects`]), what it returns ([`Item`]) and why it may return nothing ([`ReadError`]).
//! Reads are pure: memory only, no I/O, no lock held across anything but a map lookup.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use crate::clock::{Moment, SampleTime};
use crate::selector::Selector;

use super::resource::ResourceInfo;
use super::{PodKey, Store};

/// A metric served for a resource: one `{resource}/{metric}` entry of the discovery documents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServedMetric<'a> {
    /// Resource (`pods`, `namespaces`, `services`, …).
    pub resource: &'static ResourceInfo,
    /// Metric name as served.
    pub metric: &'a str,
}

/// How the values of a metric in a [`Snapshot`] are obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Values {
    /// From table `n` of the snapshot, one value per object.
    Query(usize),
    /// For `namespaces`: the sum of the pods' values of table `n` over every tracked pod of the
    /// namespace (as the scrape source computes it), refused when a pod has no value.
    PodSum(usize),
}

/// A metric served for a resource, and where its values come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    /// Resource (`pods`, `namespaces`, `services`, …).
    pub resource: &'static ResourceInfo,
    /// Metric name.
    pub metric: String,
    /// Where its values come from.
    pub values: Values,
}

/// Values of one object in one answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectValue {
    /// The answer's series for the object: labels other than the object's, and value. Unit of
    /// the value: milli-units.
    pub series: Vec<(Vec<(String, String)>, i64)>,
    /// Sum of the series. Unit: milli-units.
    pub total_milli: i64,
    /// Time of the newest raw sample behind the value, aged on the monotonic clock from when
    /// the answer arrived.
    pub time: SampleTime,
}

/// Object identity in a table: namespace (empty for cluster-scoped objects) and name.
pub type ObjectKey = (String, String);

/// One answer, by object: the parts of a query that succeeded, and the last good values of the
/// parts that failed (served until they are older than `max_age`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Table {
    /// Values by object.
    pub objects: HashMap<ObjectKey, ObjectValue>,
    /// Label names, other than the object's, carried by the answer's series: what a
    /// `metricLabelSelector` may filter on.
    pub kept_labels: BTreeSet<String>,
    /// Namespaces whose part of the query failed this round ("" for a query not split by
    /// namespace): a read there answers the last good values while all of them are fresh, then
    /// 500 with the reason, never a partial or an empty list.
    pub failing: HashMap<String, PartFailure>,
}

/// A part of a query that failed, and what is left of its last good answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartFailure {
    /// Why it failed.
    pub why: Arc<str>,
    /// The oldest sample time among the last good values kept for it; `None` when none are.
    pub oldest: Option<SampleTime>,
}

/// Latest outcome of one table's query.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Not run yet.
    Pending,
    /// The last run succeeded.
    Ready(Arc<Table>),
    /// The last run failed (unreachable, error status, timeout, bad answer): served as 500.
    Failed(Arc<str>),
}

/// What a query source (`--source=prometheus`) publishes, swapped as a whole per round: the
/// served metrics and the latest outcome of every table.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Served (resource, metric) pairs, in discovery order.
    pub served: Arc<[Served]>,
    /// Indexed by [`Values`].
    pub outcomes: Vec<Outcome>,
}

/// Which objects a read asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Objects<'a> {
    /// One object (namespace empty for cluster-scoped ones).
    One {
        /// Namespace, or empty.
        namespace: &'a str,
        /// Name.
        name: &'a str,
    },
    /// All objects of a namespace (or of the cluster, namespace empty) matching a selector.
    All {
        /// Namespace, or empty.
        namespace: &'a str,
        /// `labelSelector` on the objects.
        selector: &'a Selector,
    },
}

/// The object a value describes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Described {
    /// A pod in a namespace.
    Pod {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
    },
    /// A namespace itself (form E).
    Namespace {
        /// Name of the namespace.
        name: String,
    },
    /// Any other object (served by prometheus-adapter rules: services, deployments, nodes, …).
    Object {
        /// Kind, e.g. `Service`.
        kind: &'static str,
        /// API version, e.g. `apps/v1`.
        api_version: &'static str,
        /// Namespace, for namespaced resources.
        namespace: Option<String>,
        /// Name.
        name: String,
    },
}

/// One value a read returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// What it describes.
    pub described: Described,
    /// Value. Unit: milli-units.
    pub milli: i64,
    /// Sample time: its wall part is the `timestamp` rendered.
    pub time: SampleTime,
}

/// Why a read gives no values. The API turns each into one `Status` (404, 400 or 500); the
/// message is this error's `Display`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// The metric is not served for the resource (404).
    #[error("the server could not find the metric {metric} for {resource}")]
    UnknownMetric {
        /// Metric asked for.
        metric: String,
        /// Group-resource, e.g. `pods`.
        resource: String,
    },
    /// The object is not tracked or has no fresh value (404). `with` is empty or
    /// ` with selector …`.
    #[error("the server could not find the metric {metric} for {resource} {name}{with}")]
    NoValue {
        /// Metric asked for.
        metric: String,
        /// Group-resource, e.g. `pods`.
        resource: String,
        /// Object name.
        name: String,
        /// The echoed metric selector, if it is part of the message.
        with: String,
    },
    /// A namespace nobody has seen: no pod is tracked there and discovery saw none either (in
    /// cluster mode, no pod at all, opted in or not; in static mode, the file names none), so its
    /// total is not a zero (404).
    #[error("namespaces \"{namespace}\" not found")]
    UnknownNamespace {
        /// Namespace asked for.
        namespace: String,
    },
    /// A selector the source cannot answer (400), with the reason.
    #[error("{0}")]
    Unanswerable(String),
    /// Some pods of a namespace or object have no fresh value: a partial sum would undercount
    /// (500).
    #[error("{missing} of {pods} pods of {of} have no fresh value")]
    IncompleteData {
        /// What was summed: `namespace chat`, `deployments.apps chat/ws`.
        of: String,
        /// Pods without a fresh value.
        missing: usize,
        /// Pods summed over.
        pods: usize,
    },
    /// An object that is not there: the watch of its resource has listed every object and this
    /// one is not among them (404).
    #[error("{resource} \"{name}\" not found")]
    UnknownObject {
        /// Group-resource, e.g. `deployments.apps`.
        resource: String,
        /// Object name.
        name: String,
    },
    /// The object selects no ready pod that is scraped (none opted in, none ready yet, or a
    /// Service without a selector): its sum would be a zero nobody measured (404).
    #[error(
        "the server could not find the metric {metric} for {resource} {name}: it selects no ready pod that is scraped"
    )]
    NoPods {
        /// Metric asked for.
        metric: String,
        /// Group-resource, e.g. `deployments.apps`.
        resource: String,
        /// Object name.
        name: String,
    },
    /// The watch of the object's resource has not listed its objects yet (500).
    #[error("the watch of {resource} has not synced yet")]
    NotSynced {
        /// Group-resource, e.g. `deployments.apps`.
        resource: String,
    },
    /// The query behind the metric failed on its last run (500): never a zero.
    #[error("query for {metric} failed: {why}")]
    QueryFailed {
        /// Metric asked for.
        metric: String,
        /// The query's error.
        why: Arc<str>,
    },
    /// The query behind the metric has not run yet (500).
    #[error("query for {metric} has not run yet")]
    NotYetQueried {
        /// Metric asked for.
        metric: String,
    },
}

/// The sum over every pod of a namespace or object, and the oldest sample time in it; refused when
/// any pod has no fresh value (`None`), since a partial sum would read as a drop in load. The
/// one rule both value origins (scrape readings, a published snapshot) apply.
pub(super) fn sum_every_pod(
    of: impl FnOnce() -> String,
    values: impl IntoIterator<Item = Option<(i64, SampleTime)>>,
) -> Result<(i64, Option<SampleTime>), ReadError> {
    let (mut sum, mut oldest, mut missing, mut pods) = (0i64, None::<SampleTime>, 0, 0);
    for value in values {
        pods += 1;
        match value {
            Some((v, t)) => {
                sum = sum.saturating_add(v);
                oldest = Some(oldest.map_or(t, |o| o.older(t)));
            }
            None => missing += 1,
        }
    }
    if missing > 0 {
        return Err(ReadError::IncompleteData {
            of: of(),
            missing,
            pods,
        });
    }
    Ok((sum, oldest))
}

pub(super) fn described(resource: &'static ResourceInfo, ns: &str, name: &str) -> Described {
    if resource.is_pods() {
        Described::Pod {
            namespace: ns.to_owned(),
            name: name.to_owned(),
        }
    } else if resource.is_namespaces() {
        Described::Namespace {
            name: name.to_owned(),
        }
    } else {
        Described::Object {
            kind: resource.kind,
            api_version: resource.api_version,
            namespace: resource.namespaced.then(|| ns.to_owned()),
            name: name.to_owned(),
        }
    }
}

impl Snapshot {
    /// A snapshot with every table pending.
    pub fn pending(served: Arc<[Served]>, tables: usize) -> Self {
        Self {
            served,
            outcomes: vec![Outcome::Pending; tables],
        }
    }

    /// Values of `metric` for `objects` of `resource` from this snapshot. Pods must be tracked by
    /// the inventory (`store`): series of pods it does not know are never served. Values older
    /// than the store's `max_age` are left out.
    pub(super) fn read(
        &self,
        store: &Store,
        resource: &'static ResourceInfo,
        metric: &str,
        objects: Objects<'_>,
        metric_selector: &Selector,
        now: Moment,
    ) -> Result<Vec<Item>, ReadError> {
        let not_found = || ReadError::UnknownMetric {
            metric: metric.to_owned(),
            resource: resource.path(),
        };
        let served = self
            .served
            .iter()
            .find(|s| s.resource == resource && s.metric == metric)
            .ok_or_else(not_found)?;
        let (Values::Query(q) | Values::PodSum(q)) = served.values;
        let table = match self.outcomes.get(q) {
            Some(Outcome::Ready(t)) => t,
            Some(Outcome::Failed(why)) => {
                return Err(ReadError::QueryFailed {
                    metric: metric.to_owned(),
                    why: why.clone(),
                });
            }
            _ => {
                return Err(ReadError::NotYetQueried {
                    metric: metric.to_owned(),
                });
            }
        };
        for req in metric_selector.requirements() {
            if !table.objects.is_empty() && !table.kept_labels.contains(&req.key) {
                return Err(ReadError::Unanswerable(format!(
                    "metricLabelSelector: label {:?} is not kept by the query for {metric} (it keeps: {}); add it to the query's `by (...)` clause",
                    req.key,
                    if table.kept_labels.is_empty() {
                        "no labels besides the object's".to_owned()
                    } else {
                        table
                            .kept_labels
                            .iter()
                            .cloned()
                            .collect::<Vec<_>>()
                            .join(", ")
                    }
                )));
            }
        }
        let max_age = store.max_age();
        let value_of = |ns: &str, name: &str| -> Option<(i64, SampleTime)> {
            let v = table.objects.get(&(ns.to_owned(), name.to_owned()))?;
            if v.time.age(now.mono) > max_age {
                return None;
            }
            let milli = if metric_selector.is_empty() {
                v.total_milli
            } else {
                let mut matching = v
                    .series
                    .iter()
                    .filter(|(labels, _)| metric_selector.matches_pairs(labels))
                    .map(|(_, m)| *m)
                    .peekable();
                // No matching series is no value here (the query dropped them), not a zero.
                matching.peek()?;
                matching.fold(0i64, i64::saturating_add)
            };
            Some((milli, v.time))
        };
        let item = |ns: &str, name: &str, (milli, time): (i64, SampleTime)| Item {
            described: described(resource, ns, name),
            milli,
            time,
        };
        // The namespace the read is about: a failing part there turns "no fresh value" into the
        // query's failure.
        let about = match (served.values, &objects) {
            (Values::PodSum(_), Objects::One { name, .. }) => *name,
            (_, Objects::One { namespace, .. } | Objects::All { namespace, .. }) => *namespace,
        };
        let failing = if resource.namespaced || matches!(served.values, Values::PodSum(_)) {
            table.failing.get(about)
        } else {
            None
        }
        .or_else(|| table.failing.get(""));
        let failed = |f: &PartFailure| ReadError::QueryFailed {
            metric: metric.to_owned(),
            why: f.why.clone(),
        };
        // The last good values of a failed part are served together or not at all: once the
        // oldest is too old, the part answers its failure (never pods dropping out one by one).
        if let Some(f) = failing
            && f.oldest.is_none_or(|t| t.age(now.mono) > max_age)
        {
            return Err(failed(f));
        }
        // The table's answer, before a failing part is taken into account (a `return` in it
        // ends this closure, not the read).
        let answer = (|| -> Result<Vec<Item>, ReadError> {
            match (served.values, objects) {
                (Values::PodSum(_), Objects::One { name, .. }) => {
                    let pods = store.pod_names(name, &Selector::everything());
                    if pods.is_empty() && !store.namespace_known(name) {
                        return Err(ReadError::UnknownNamespace {
                            namespace: name.to_owned(),
                        });
                    }
                    let (sum, oldest) = sum_every_pod(
                        || format!("namespace {name}"),
                        pods.iter().map(|pod| value_of(name, pod)),
                    )?;
                    Ok(vec![item(
                        "",
                        name,
                        (sum, oldest.unwrap_or_else(|| SampleTime::read_at(now))),
                    )])
                }
                (Values::PodSum(_), Objects::All { .. }) => Err(not_found()),
                (Values::Query(_), Objects::One { namespace, name }) => {
                    let no_value = |resource: String| ReadError::NoValue {
                        metric: metric.to_owned(),
                        resource,
                        name: name.to_owned(),
                        with: String::new(),
                    };
                    if resource.is_pods()
                        && !store.has_pod(&PodKey {
                            namespace: namespace.to_owned(),
                            name: name.to_owned(),
                        })
                    {
                        return Err(no_value("pods".to_owned()));
                    }
                    let ns = if resource.namespaced { namespace } else { "" };
                    let v = value_of(ns, name).ok_or_else(|| no_value(resource.path()))?;
                    Ok(vec![item(ns, name, v)])
                }
                (
                    Values::Query(_),
                    Objects::All {
                        namespace,
                        selector,
                    },
                ) => {
                    if resource.is_pods() {
                        return Ok(store
                            .pod_names(namespace, selector)
                            .into_iter()
                            .filter_map(|pod| {
                                value_of(namespace, &pod).map(|v| item(namespace, &pod, v))
                            })
                            .collect());
                    }
                    // Objects selected by their own labels: only for the resources discovery
                    // watches (cluster mode), from their labels in memory.
                    let selected: Option<std::collections::HashSet<String>> = if selector.is_empty()
                    {
                        None
                    } else {
                        match store.objects_matching(resource, namespace, selector) {
                            Some(names) => Some(names.into_iter().collect()),
                            None if store.tracks_objects(resource) => {
                                return Err(ReadError::NotSynced {
                                    resource: resource.path(),
                                });
                            }
                            None => {
                                return Err(ReadError::Unanswerable(format!(
                                    "labelSelector is only supported for pods and, in cluster mode, deployments.apps, statefulsets.apps, replicasets.apps and services: this adapter does not watch {}",
                                    resource.path()
                                )));
                            }
                        }
                    };
                    let ns = if resource.namespaced { namespace } else { "" };
                    let mut names: Vec<&String> = table
                        .objects
                        .keys()
                        .filter(|(n, _)| n == ns)
                        .map(|(_, name)| name)
                        .filter(|name| selected.as_ref().is_none_or(|s| s.contains(*name)))
                        .collect();
                    names.sort();
                    Ok(names
                        .into_iter()
                        .filter_map(|name| value_of(ns, name).map(|v| item(ns, name, v)))
                        .collect())
                }
            }
        })();
        match (answer, failing) {
            (Ok(items), Some(f)) if items.is_empty() => Err(failed(f)),
            (Err(ReadError::NoValue { .. } | ReadError::IncompleteData { .. }), Some(f)) => {
                Err(failed(f))
            }
            (answer, _) => answer,
        }
    }
}
