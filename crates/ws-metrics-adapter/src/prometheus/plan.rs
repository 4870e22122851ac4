//! The Prometheus source's plan: which metric of which resource comes from which query, the
//! PromQL of each query, and the step that turns an answer into a [`Table`] of the shared read
//! contract ([`crate::store::read`]). The tables are published to the store, which the API reads.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, SystemTime};

use crate::clock::{Moment, SampleTime};

use super::rules;
use crate::quantity;
use crate::store::read::{ObjectKey, ObjectValue, Outcome, Served, Snapshot, Table, Values};

/// Label added to tell the value part of a query's answer from its freshness part.
pub(crate) const PART_LABEL: &str = "ws_adapter_part";

/// One query run every interval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct QuerySpec {
    /// PromQL as sent, value part and freshness part joined (see [`QuerySpec::new`]).
    pub promql: String,
    /// Label holding the namespace (namespaced resources).
    pub namespace_label: Option<String>,
    /// Label holding the object's name.
    pub object_label: String,
    /// Run as one part per namespace ([`QuerySpec::promql_in`]), not cluster-wide.
    pub split: bool,
}

impl QuerySpec {
    /// Joins the value query with a freshness part, so that one request returns both the values
    /// and, per object, the time of the newest raw sample behind them (an instant query stamps
    /// every result with its evaluation time, which says nothing about the data's age):
    ///
    /// ```text
    /// label_replace(VALUE, "ws_adapter_part", "value", "", "")
    ///   or label_replace(max by (GROUP) (timestamp(SERIES{MATCHERS})), "ws_adapter_part", "time", "", "")
    /// ```
    pub(crate) fn new(
        value_promql: &str,
        series: &str,
        namespace_label: Option<String>,
        object_label: String,
    ) -> Self {
        let group: Vec<&str> = namespace_label
            .iter()
            .map(String::as_str)
            .chain(std::iter::once(object_label.as_str()))
            .collect();
        let matchers: Vec<String> = group.iter().map(|l| format!("{l}!=\"\"")).collect();
        let promql = format!(
            "label_replace({value_promql}, \"{PART_LABEL}\", \"value\", \"\", \"\") or label_replace(max by ({}) (timestamp({series}{{{}}})), \"{PART_LABEL}\", \"time\", \"\", \"\")",
            group.join(", "),
            matchers.join(",")
        );
        Self {
            promql,
            namespace_label,
            object_label,
            split: false,
        }
    }

    /// The PromQL of the part of the namespaces `group`: every `LABEL!=""` matcher of the
    /// namespace label (the ones the plan writes into `<<.LabelMatchers>>` and the freshness
    /// part) becomes `LABEL="ns"`, or `LABEL=~"a|b"` for several (PromQL regexes are anchored).
    /// A template that does not use `<<.LabelMatchers>>` still answers for every namespace; the
    /// caller keeps only the group's objects, so the merge stays exact.
    pub(crate) fn promql_in(&self, group: &[String]) -> String {
        match &self.namespace_label {
            // Namespace names are DNS labels ([a-z0-9-]): nothing in them needs escaping in a
            // PromQL string or regex.
            Some(label) => {
                let matcher = match group {
                    [one] => format!("{label}=\"{one}\""),
                    many => format!("{label}=~\"{}\"", many.join("|")),
                };
                self.promql.replace(&format!("{label}!=\"\""), &matcher)
            }
            None => self.promql.clone(),
        }
    }
}

/// Which metrics are served and the queries behind them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Served (resource, metric) pairs, in discovery order.
    pub served: Vec<Served>,
    /// Queries, each run once per interval.
    pub queries: Vec<QuerySpec>,
}

impl Plan {
    /// Adds a query (reusing an identical one) and returns its index.
    pub(crate) fn add_query(&mut self, spec: QuerySpec) -> usize {
        if let Some(i) = self.queries.iter().position(|q| *q == spec) {
            return i;
        }
        self.queries.push(spec);
        self.queries.len() - 1
    }

    /// Adds a served metric unless the (resource, metric) pair is already served; returns
    /// whether it was added.
    pub(crate) fn serve(&mut self, served: Served) -> bool {
        if self
            .served
            .iter()
            .any(|s| s.resource == served.resource && s.metric == served.metric)
        {
            return false;
        }
        self.served.push(served);
        true
    }
}

/// A sample of an instant-vector answer: labels, value, timestamp (Unix seconds).
pub(crate) type RawSample = (HashMap<String, String>, f64, f64);

/// What a table build dropped, for the adapter's own metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Dropped {
    /// Series without the object label (or namespace label).
    pub unlabelled: usize,
    /// Values that cannot be served: NaN, ±Inf, out of range.
    pub unservable: usize,
}

/// A Prometheus sample time (Unix seconds) as a `SystemTime`; anything unusable (NaN, negative,
/// too large to represent) is the epoch, so it counts as stale, never as fresh, and never panics.
fn system_time(secs: f64) -> SystemTime {
    Duration::try_from_secs_f64(secs)
        .ok()
        .and_then(|d| SystemTime::UNIX_EPOCH.checked_add(d))
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// Builds a table from the samples of a [`QuerySpec`] answer that arrived at `at`. An object
/// with an unservable value (NaN, ±Inf) is left out entirely, never served as zero or as a
/// partial sum.
pub(crate) fn build_table(
    spec: &QuerySpec,
    samples: Vec<RawSample>,
    at: Moment,
) -> (Table, Dropped) {
    let mut dropped = Dropped::default();
    let mut times: HashMap<ObjectKey, SystemTime> = HashMap::new();
    let mut table = Table::default();
    let mut poisoned: BTreeSet<ObjectKey> = BTreeSet::new();
    for (mut labels, value, ts) in samples {
        let part = labels.remove(PART_LABEL);
        let ns = match &spec.namespace_label {
            Some(l) => match labels.remove(l) {
                Some(v) if !v.is_empty() => v,
                _ => {
                    dropped.unlabelled += 1;
                    continue;
                }
            },
            None => String::new(),
        };
        let name = match labels.remove(&spec.object_label) {
            Some(v) if !v.is_empty() => v,
            _ => {
                dropped.unlabelled += 1;
                continue;
            }
        };
        let key = (ns, name);
        if part.as_deref() == Some("time") {
            let t = system_time(value);
            let slot = times.entry(key).or_insert(t);
            *slot = (*slot).max(t);
            continue;
        }
        let Some(milli) = quantity::milli_from_f64(value) else {
            dropped.unservable += 1;
            poisoned.insert(key);
            continue;
        };
        labels.remove("__name__");
        let mut pairs: Vec<(String, String)> = labels.into_iter().collect();
        pairs.sort();
        table
            .kept_labels
            .extend(pairs.iter().map(|(k, _)| k.clone()));
        let entry = table.objects.entry(key).or_insert_with(|| ObjectValue {
            series: Vec::new(),
            total_milli: 0,
            time: SampleTime::stamped(system_time(ts), at),
        });
        entry.total_milli = entry.total_milli.saturating_add(milli);
        entry.series.push((pairs, milli));
    }
    for key in poisoned {
        table.objects.remove(&key);
    }
    for (key, value) in &mut table.objects {
        if let Some(t) = times.get(key) {
            value.time = SampleTime::stamped(*t, at);
        }
    }
    (table, dropped)
}

impl Plan {
    /// The snapshot of one round: this plan's served metrics and the outcome of each query.
    pub(crate) fn snapshot(&self, outcomes: Vec<Outcome>) -> Snapshot {
        Snapshot {
            served: self.served.clone().into(),
            outcomes,
        }
    }
}

/// The plan of the plain `--source=prometheus` metrics: for each `--metric SERVED=FAMILY`, the
/// rendered query template over the pods (namespace and pod labels as configured), served for
/// `pods` and, summed over the inventory, for `namespaces`.
pub(crate) fn plan_for_mappings(
    mappings: &[crate::store::MetricMapping],
    template: &super::template::Template,
    namespace_label: &str,
    pod_label: &str,
    split: bool,
) -> Plan {
    let mut plan = Plan::default();
    for m in mappings {
        let promql = template.render(&super::template::Args {
            series: m.family.clone(),
            label_matchers: format!("{namespace_label}!=\"\",{pod_label}!=\"\""),
            group_by: format!("{namespace_label},{pod_label}"),
        });
        let q = plan.add_query(QuerySpec {
            split,
            ..QuerySpec::new(
                &promql,
                &m.family,
                Some(namespace_label.to_owned()),
                pod_label.to_owned(),
            )
        });
        plan.serve(Served {
            resource: rules::pods(),
            metric: m.served.clone(),
            values: Values::Query(q),
        });
        plan.serve(Served {
            resource: rules::namespaces(),
            metric: m.served.clone(),
            values: Values::PodSum(q),
        });
    }
    plan
}

/// Adds what the rules discovered to a plan (after the `--metric` mappings, which win on a
/// clash). Returns how many (resource, metric) pairs were skipped as duplicates.
pub(crate) fn extend_with_rules(plan: &mut Plan, discovered: &[rules::Discovered]) -> usize {
    let mut skipped = 0;
    for d in discovered {
        let q = plan.add_query(QuerySpec::new(
            &d.promql,
            &d.series,
            d.namespace_label.clone(),
            d.object_label.clone(),
        ));
        if !plan.serve(Served {
            resource: d.resource,
            metric: d.metric.clone(),
            values: Values::Query(q),
        }) {
            skipped += 1;
        }
    }
    // Queries of skipped pairs stay in the plan only if something serves them.
    let used: BTreeSet<usize> = plan
        .served
        .iter()
        .map(|s| match s.values {
            Values::Query(q) | Values::PodSum(q) => q,
        })
        .collect();
    if used.len() != plan.queries.len() {
        let mut remap = HashMap::new();
        let mut kept = Vec::new();
        for (i, q) in plan.queries.drain(..).enumerate() {
            if used.contains(&i) {
                remap.insert(i, kept.len());
                kept.push(q);
            }
        }
        plan.queries = kept;
        // Indexing cannot panic: `remap` holds every index in `used`, which is built from exactly
        // these `served` entries.
        for s in &mut plan.served {
            s.values = match s.values {
                Values::Query(q) => Values::Query(remap[&q]),
                Values::PodSum(q) => Values::PodSum(remap[&q]),
            };
        }
    }
    skipped
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::selector::Selector;
    use crate::store::{
        Described, Item, MetricCatalog, MetricMapping, Objects, PodKey, PodTarget, ReadError,
        ResourceInfo, Store,
    };
    use std::sync::Arc;

    /// A published snapshot, read through the store as the API reads it.
    struct Results(std::sync::Mutex<Snapshot>);

    impl Results {
        fn publish(&self, snapshot: Snapshot) {
            *self.0.lock().unwrap() = snapshot;
        }

        fn read(
            &self,
            store: &Store,
            resource: &'static ResourceInfo,
            metric: &str,
            objects: Objects<'_>,
            metric_selector: &Selector,
            now: Moment,
        ) -> Result<Vec<Item>, ReadError> {
            store.publish(self.0.lock().unwrap().clone());
            store.read(resource, metric, objects, metric_selector, now)
        }
    }

    const T0: u64 = 1_700_000_000;

    /// The moment `secs` (Unix seconds, ≥ T0) on both clocks, which run together in these tests.
    fn at(secs: u64) -> Moment {
        static BASE: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        let base = *BASE.get_or_init(std::time::Instant::now);
        Moment {
            wall: SystemTime::UNIX_EPOCH + Duration::from_secs(secs),
            mono: base + Duration::from_secs(secs - T0),
        }
    }

    /// When an answer with these samples arrives: as its newest sample is taken.
    fn arrival(samples: &[RawSample]) -> Moment {
        let newest = samples
            .iter()
            .map(|s| s.2 as u64)
            .max()
            .unwrap_or(T0)
            .max(T0);
        at(newest)
    }

    fn sample(labels: &[(&str, &str)], value: f64, ts: u64) -> RawSample {
        (
            labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            value,
            ts as f64,
        )
    }

    fn store(pods: &[(&str, &str, &str)]) -> Store {
        let s = Store::new(
            MetricCatalog::new(vec![MetricMapping {
                served: "websocket_connections".into(),
                family: "websocket_connections_active".into(),
                rate: None,
                filter: None,
            }]),
            Duration::from_secs(60),
        );
        s.replace_all(
            pods.iter()
                .map(|(ns, name, app)| PodTarget {
                    key: PodKey {
                        namespace: (*ns).into(),
                        name: (*name).into(),
                    },
                    uid: (*name).into(),
                    labels: [("app".to_owned(), (*app).to_owned())].into(),
                    url: "http://127.0.0.1:1/metrics".into(),
                    ready: true,
                })
                .collect(),
        );
        s
    }

    /// The plan of the default `--metric websocket_connections=websocket_connections_active`
    /// with the default query template, split by namespace.
    fn default_plan() -> Plan {
        let template =
            crate::prometheus::template::Template::parse(crate::config::DEFAULT_PROMETHEUS_QUERY)
                .unwrap();
        plan_for_mappings(
            &[MetricMapping {
                served: "websocket_connections".into(),
                family: "websocket_connections_active".into(),
                rate: None,
                filter: None,
            }],
            &template,
            "namespace",
            "pod",
            true,
        )
    }

    fn mapping_results(samples: Vec<RawSample>) -> Results {
        let plan = default_plan();
        let arrived = arrival(&samples);
        let (table, _) = build_table(&plan.queries[0], samples, arrived);
        Results(std::sync::Mutex::new(
            plan.snapshot(vec![Outcome::Ready(Arc::new(table))]),
        ))
    }

    fn values(items: &[Item]) -> Vec<(String, i64, SystemTime)> {
        items
            .iter()
            .map(|i| {
                let name = match &i.described {
                    Described::Pod { name, .. }
                    | Described::Namespace { name }
                    | Described::Object { name, .. } => name.clone(),
                };
                (name, i.milli, i.time.wall)
            })
            .collect()
    }

    #[test]
    fn the_default_query_renders_as_documented_with_its_freshness_part() {
        let plan = default_plan();
        assert_eq!(
            plan.queries.len(),
            1,
            "one query serves pods and namespaces"
        );
        assert_eq!(
            plan.queries[0].promql,
            "label_replace(sum by (namespace,pod) (websocket_connections_active{namespace!=\"\",pod!=\"\"}), \"ws_adapter_part\", \"value\", \"\", \"\") \
             or label_replace(max by (namespace, pod) (timestamp(websocket_connections_active{namespace!=\"\",pod!=\"\"})), \"ws_adapter_part\", \"time\", \"\", \"\")"
        );
        assert_eq!(plan.served.len(), 2);
    }

    #[test]
    fn a_split_part_asks_for_its_namespace_only() {
        let plan = default_plan();
        let spec = &plan.queries[0];
        assert!(spec.split);
        let part = spec.promql_in(&["chat".into()]);
        assert_eq!(
            part,
            spec.promql.replace("namespace!=\"\"", "namespace=\"chat\"")
        );
        // The value part and the freshness part both carry it.
        assert_eq!(part.matches("namespace=\"chat\"").count(), 2, "{part}");
        assert!(!part.contains("namespace!="), "{part}");
        assert!(part.contains("pod!=\"\""), "{part}");
        let two = spec.promql_in(&["a".into(), "b".into()]);
        assert_eq!(two.matches("namespace=~\"a|b\"").count(), 2, "{two}");
    }

    /// A table where namespace `b`'s part failed: `a` answers from its part; `b` serves what it
    /// still has and, with nothing fresh, answers the query's failure (500), never an empty
    /// list, and its namespace total too.
    #[test]
    fn a_failing_part_costs_only_its_namespace_and_never_answers_empty() {
        let s = store(&[("a", "a-0", "ws"), ("b", "b-0", "ws"), ("b", "b-1", "ws")]);
        let mut r = mapping_results(vec![
            sample(
                &[("namespace", "a"), ("pod", "a-0"), (PART_LABEL, "value")],
                3.0,
                T0,
            ),
            sample(
                &[("namespace", "b"), ("pod", "b-0"), (PART_LABEL, "value")],
                4.0,
                T0,
            ),
        ]);
        let mut snapshot = r.0.into_inner().unwrap();
        let Outcome::Ready(table) = &snapshot.outcomes[0] else {
            panic!("ready");
        };
        let mut table = (**table).clone();
        let b0 = table.objects[&("b".to_owned(), "b-0".to_owned())].time;
        table.failing.insert(
            "b".into(),
            crate::store::read::PartFailure {
                why: Arc::from("timed out"),
                oldest: Some(b0),
            },
        );
        snapshot.outcomes[0] = Outcome::Ready(Arc::new(table));
        r = Results(std::sync::Mutex::new(snapshot));
        let everything = Selector::everything();
        let all = |ns| Objects::All {
            namespace: ns,
            selector: &everything,
        };
        let pods = rules::pods();
        let now = at(T0 + 1);
        let a = r
            .read(
                &s,
                pods,
                "websocket_connections",
                all("a"),
                &Selector::everything(),
                now,
            )
            .unwrap();
        assert_eq!(values(&a)[0].1, 3000);
        // b-0 still has a fresh last good value: served.
        let b = r
            .read(
                &s,
                pods,
                "websocket_connections",
                all("b"),
                &Selector::everything(),
                now,
            )
            .unwrap();
        assert_eq!(values(&b).len(), 1);
        // b-1 has none: its own read and b's total are the failure, not a 404 or a partial sum.
        let one = r.read(
            &s,
            pods,
            "websocket_connections",
            Objects::One {
                namespace: "b",
                name: "b-1",
            },
            &Selector::everything(),
            now,
        );
        assert!(matches!(one, Err(ReadError::QueryFailed { .. })), "{one:?}");
        let total = r.read(
            &s,
            rules::namespaces(),
            "websocket_connections",
            Objects::One {
                namespace: "",
                name: "b",
            },
            &Selector::everything(),
            now,
        );
        assert!(
            matches!(total, Err(ReadError::QueryFailed { .. })),
            "{total:?}"
        );
        // Once b-0's value is older than --max-age (60 s here), b answers the failure.
        let late = r.read(
            &s,
            pods,
            "websocket_connections",
            all("b"),
            &Selector::everything(),
            at(T0 + 61),
        );
        assert!(
            matches!(late, Err(ReadError::QueryFailed { .. })),
            "{late:?}"
        );
    }

    #[test]
    fn values_carry_the_newest_raw_sample_time_and_unknown_pods_are_dropped() {
        let r = mapping_results(vec![
            sample(
                &[
                    ("namespace", "chat"),
                    ("pod", "ws-0"),
                    (PART_LABEL, "value"),
                ],
                7.0,
                T0 + 10,
            ),
            sample(
                &[("namespace", "chat"), ("pod", "ws-0"), (PART_LABEL, "time")],
                (T0 + 8) as f64,
                T0 + 10,
            ),
            sample(
                &[
                    ("namespace", "chat"),
                    ("pod", "ws-1"),
                    (PART_LABEL, "value"),
                ],
                3.0,
                T0 + 10,
            ),
            sample(
                &[("namespace", "chat"), ("pod", "ws-1"), (PART_LABEL, "time")],
                (T0 + 9) as f64,
                T0 + 10,
            ),
            // A pod the inventory does not know (deleted, or another cluster's).
            sample(
                &[
                    ("namespace", "chat"),
                    ("pod", "ghost"),
                    (PART_LABEL, "value"),
                ],
                99.0,
                T0 + 10,
            ),
        ]);
        let s = store(&[("chat", "ws-0", "ws"), ("chat", "ws-1", "ws")]);
        let items = r
            .read(
                &s,
                rules::pods(),
                "websocket_connections",
                Objects::All {
                    namespace: "chat",
                    selector: &Selector::everything(),
                },
                &Selector::everything(),
                at(T0 + 11),
            )
            .unwrap();
        assert_eq!(
            values(&items),
            vec![
                ("ws-0".into(), 7000, at(T0 + 8).wall),
                ("ws-1".into(), 3000, at(T0 + 9).wall)
            ]
        );
        let ns = r
            .read(
                &s,
                rules::namespaces(),
                "websocket_connections",
                Objects::One {
                    namespace: "",
                    name: "chat",
                },
                &Selector::everything(),
                at(T0 + 11),
            )
            .unwrap();
        assert_eq!(values(&ns), vec![("chat".into(), 10_000, at(T0 + 8).wall)]);
        let ghost = r.read(
            &s,
            rules::pods(),
            "websocket_connections",
            Objects::One {
                namespace: "chat",
                name: "ghost",
            },
            &Selector::everything(),
            at(T0 + 11),
        );
        assert!(matches!(ghost, Err(ReadError::NoValue { .. })), "{ghost:?}");
    }

    #[test]
    fn stale_values_are_left_out_and_a_namespace_with_a_gap_is_refused() {
        let r = mapping_results(vec![
            sample(
                &[
                    ("namespace", "chat"),
                    ("pod", "ws-0"),
                    (PART_LABEL, "value"),
                ],
                7.0,
                T0 + 100,
            ),
            sample(
                &[("namespace", "chat"), ("pod", "ws-0"), (PART_LABEL, "time")],
                T0 as f64,
                T0 + 100,
            ),
            sample(
                &[
                    ("namespace", "chat"),
                    ("pod", "ws-1"),
                    (PART_LABEL, "value"),
                ],
                3.0,
                T0 + 100,
            ),
            sample(
                &[("namespace", "chat"), ("pod", "ws-1"), (PART_LABEL, "time")],
                (T0 + 99) as f64,
                T0 + 100,
            ),
        ]);
        let s = store(&[("chat", "ws-0", "ws"), ("chat", "ws-1", "ws")]);
        let now = at(T0 + 100);
        let items = r
            .read(
                &s,
                rules::pods(),
                "websocket_connections",
                Objects::All {
                    namespace: "chat",
                    selector: &Selector::everything(),
                },
                &Selector::everything(),
                now,
            )
            .unwrap();
        assert_eq!(
            values(&items),
            vec![("ws-1".into(), 3000, at(T0 + 99).wall)]
        );
        let ns = r.read(
            &s,
            rules::namespaces(),
            "websocket_connections",
            Objects::One {
                namespace: "",
                name: "chat",
            },
            &Selector::everything(),
            now,
        );
        assert!(
            matches!(ns, Err(ReadError::IncompleteData { missing: 1, .. })),
            "{ns:?}"
        );
    }

    #[test]
    fn a_namespace_the_inventory_does_not_know_is_not_found_not_zero() {
        let s = store(&[("chat", "ws-0", "ws")]);
        s.set_namespaces_seen([("chat".to_owned(), 1), ("quiet".to_owned(), 2)].into());
        let r = mapping_results(vec![sample(
            &[("namespace", "chat"), ("pod", "ws-0")],
            4.0,
            T0,
        )]);
        let total = |name: &str| {
            r.read(
                &s,
                rules::namespaces(),
                "websocket_connections",
                Objects::One {
                    namespace: "",
                    name,
                },
                &Selector::everything(),
                at(T0 + 1),
            )
        };
        assert!(
            matches!(total("ghost"), Err(e @ ReadError::UnknownNamespace { .. }) if e.to_string().contains("\"ghost\" not found"))
        );
        // Known, no tracked pod: a true zero.
        assert_eq!(total("quiet").map(|items| items[0].milli), Ok(0));
        assert_eq!(total("chat").map(|items| items[0].milli), Ok(4000));
    }

    #[test]
    fn a_failed_query_is_unavailable_never_zero() {
        let template =
            crate::prometheus::template::Template::parse("sum by (<<.GroupBy>>) (<<.Series>>)")
                .unwrap();
        let plan = plan_for_mappings(
            &[MetricMapping {
                served: "m".into(),
                family: "f".into(),
                rate: None,
                filter: None,
            }],
            &template,
            "namespace",
            "pod",
            true,
        );
        let r = Results(std::sync::Mutex::new(Snapshot::pending(
            plan.served.clone().into(),
            plan.queries.len(),
        )));
        let s = store(&[("chat", "ws-0", "ws")]);
        let all = Objects::All {
            namespace: "chat",
            selector: &Selector::everything(),
        };
        let pending = r.read(
            &s,
            rules::pods(),
            "m",
            all.clone(),
            &Selector::everything(),
            at(T0),
        );
        assert!(
            matches!(pending, Err(ReadError::NotYetQueried { .. })),
            "{pending:?}"
        );
        r.publish(plan.snapshot(vec![Outcome::Failed("connection refused".into())]));
        let failed = r.read(&s, rules::pods(), "m", all, &Selector::everything(), at(T0));
        assert_eq!(
            failed,
            Err(ReadError::QueryFailed {
                metric: "m".into(),
                why: "connection refused".into()
            })
        );
    }

    #[test]
    fn metric_label_selector_filters_kept_labels_and_refuses_dropped_ones() {
        let r = mapping_results(vec![
            sample(
                &[
                    ("namespace", "chat"),
                    ("pod", "ws-0"),
                    ("route", "chat"),
                    (PART_LABEL, "value"),
                ],
                4.0,
                T0,
            ),
            sample(
                &[
                    ("namespace", "chat"),
                    ("pod", "ws-0"),
                    ("route", "echo"),
                    (PART_LABEL, "value"),
                ],
                2.0,
                T0,
            ),
            sample(
                &[
                    ("namespace", "chat"),
                    ("pod", "ws-1"),
                    ("route", "echo"),
                    (PART_LABEL, "value"),
                ],
                5.0,
                T0,
            ),
        ]);
        let s = store(&[("chat", "ws-0", "ws"), ("chat", "ws-1", "api")]);
        let read = |pods: &str, metric_sel: &str| {
            r.read(
                &s,
                rules::pods(),
                "websocket_connections",
                Objects::All {
                    namespace: "chat",
                    selector: &Selector::parse(pods).unwrap(),
                },
                &Selector::parse(metric_sel).unwrap(),
                at(T0 + 1),
            )
            .map(|items| {
                values(&items)
                    .into_iter()
                    .map(|(n, m, _)| (n, m))
                    .collect::<Vec<_>>()
            })
        };
        assert_eq!(
            read("", "route=echo"),
            Ok(vec![("ws-0".into(), 2000), ("ws-1".into(), 5000)])
        );
        assert_eq!(read("app=ws", ""), Ok(vec![("ws-0".into(), 6000)]));
        assert_eq!(read("", "route=chat"), Ok(vec![("ws-0".into(), 4000)]));
        let refused = read("", "region=eu");
        assert!(
            matches!(&refused, Err(ReadError::Unanswerable(m)) if m.contains("region") && m.contains("route")),
            "{refused:?}"
        );
    }

    #[test]
    fn hostile_sample_times_are_stale_not_a_panic() {
        for secs in [f64::NAN, -1.0, 1e20, f64::INFINITY, f64::MAX] {
            assert_eq!(system_time(secs), SystemTime::UNIX_EPOCH, "{secs}");
        }
        assert_eq!(
            system_time(1.5),
            SystemTime::UNIX_EPOCH + Duration::from_millis(1500)
        );
    }

    #[test]
    fn nan_and_series_without_the_object_label_are_dropped_not_zeroed() {
        let spec = QuerySpec::new("x", "x", Some("namespace".into()), "pod".into());
        let (table, dropped) = build_table(
            &spec,
            vec![
                sample(
                    &[("namespace", "a"), ("pod", "p"), ("route", "r1")],
                    1.0,
                    T0,
                ),
                sample(
                    &[("namespace", "a"), ("pod", "p"), ("route", "r2")],
                    f64::NAN,
                    T0,
                ),
                sample(&[("namespace", "a"), ("pod", "q")], 2.0, T0),
                sample(&[("namespace", "a")], 5.0, T0),
            ],
            at(T0),
        );
        assert_eq!(
            dropped,
            Dropped {
                unlabelled: 1,
                unservable: 1
            }
        );
        assert!(!table.objects.contains_key(&("a".into(), "p".into())));
        assert_eq!(table.objects[&("a".into(), "q".into())].total_milli, 2000);
    }
}
