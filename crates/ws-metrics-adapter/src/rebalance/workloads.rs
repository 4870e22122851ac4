//! Which workloads an HPA scales on a metric this adapter serves, with their pod selector and
//! whether they are mid-rollout. Three watches (HorizontalPodAutoscalers, Deployments,
//! StatefulSets; one LIST each at start and after a desync), read from memory at every tick:
//! never a request per tick.

use std::future::Future;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};

use crate::selector::Selector;

/// A workload an HPA scales on a served metric.
#[derive(Debug, Clone)]
pub(crate) struct Workload {
    /// Namespace.
    pub namespace: String,
    /// `Deployment` or `StatefulSet`.
    pub kind: &'static str,
    /// Name.
    pub name: String,
    /// The served metric the HPA names (a `Pods` metric).
    pub metric: String,
    /// The workload's pod selector.
    pub selector: Arc<Selector>,
    /// A rollout is in progress, or the workload controller has not caught up with the spec.
    pub rolling: bool,
}

/// The three watched caches.
#[derive(Clone)]
pub(crate) struct Workloads {
    hpas: Store<HorizontalPodAutoscaler>,
    deployments: Store<Deployment>,
    statefulsets: Store<StatefulSet>,
}

impl std::fmt::Debug for Workloads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workloads")
            .field("hpas", &self.hpas.state().len())
            .field("deployments", &self.deployments.state().len())
            .field("statefulsets", &self.statefulsets.state().len())
            .finish()
    }
}

/// Keeps a cache of every `K` in the cluster until `shutdown`; watch errors are logged and
/// retried with kube-runtime's default backoff.
fn watch_all<K>(client: Client, shutdown: impl Future<Output = ()> + Send + 'static) -> Store<K>
where
    K: Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let api: Api<K> = Api::all(client);
    let kind = K::kind(&()).into_owned();
    let stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .reflect(writer);
    tokio::spawn(async move {
        tokio::pin!(stream);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => return,
                next = stream.next() => match next {
                    Some(Ok(_)) => {}
                    Some(Err(e)) => tracing::warn!(%kind, error = %e, "watch failed; retrying with backoff"),
                    None => return,
                },
            }
        }
    });
    reader
}

impl Workloads {
    /// Starts the three watches.
    pub(crate) fn watch<F>(client: &Client, shutdown: impl Fn() -> F) -> Self
    where
        F: Future<Output = ()> + Send + 'static,
    {
        Self {
            hpas: watch_all(client.clone(), shutdown()),
            deployments: watch_all(client.clone(), shutdown()),
            statefulsets: watch_all(client.clone(), shutdown()),
        }
    }

    /// The workloads scaled on a metric `serves` says yes to, once per workload (the first such
    /// metric of the first HPA naming it). An HPA whose target is not a Deployment or StatefulSet,
    /// or is not found, is left out.
    pub(crate) fn scaled(&self, serves: impl Fn(&str) -> bool) -> Vec<Workload> {
        let mut out: Vec<Workload> = Vec::new();
        let mut hpas = self.hpas.state();
        hpas.sort_by(|a, b| {
            (&a.metadata.namespace, &a.metadata.name)
                .cmp(&(&b.metadata.namespace, &b.metadata.name))
        });
        for hpa in hpas {
            let Some(spec) = &hpa.spec else { continue };
            let Some(namespace) = hpa.metadata.namespace.clone() else {
                continue;
            };
            let metric = spec
                .metrics
                .iter()
                .flatten()
                .filter(|m| m.type_ == "Pods")
                .filter_map(|m| m.pods.as_ref().map(|p| p.metric.name.clone()))
                .find(|name| serves(name));
            let Some(metric) = metric else { continue };
            let target = &spec.scale_target_ref;
            let group = target
                .api_version
                .as_deref()
                .and_then(|v| v.split_once('/'))
                .map_or("", |(g, _)| g);
            let found = match (group, target.kind.as_str()) {
                ("apps", "Deployment") => self
                    .deployments
                    .get(&ObjectRef::new(&target.name).within(&namespace))
                    .map(|d| {
                        (
                            "Deployment",
                            d.spec.as_ref().map(|s| s.selector.clone()),
                            deployment_rolling(&d),
                        )
                    }),
                ("apps", "StatefulSet") => self
                    .statefulsets
                    .get(&ObjectRef::new(&target.name).within(&namespace))
                    .map(|s| {
                        (
                            "StatefulSet",
                            s.spec.as_ref().map(|s| s.selector.clone()),
                            statefulset_rolling(&s),
                        )
                    }),
                _ => None,
            };
            let Some((kind, Some(selector), rolling)) = found else {
                continue;
            };
            if out
                .iter()
                .any(|w| w.namespace == namespace && w.kind == kind && w.name == target.name)
            {
                continue;
            }
            match Selector::from_label_selector(&selector) {
                Ok(selector) => out.push(Workload {
                    namespace,
                    kind,
                    name: target.name.clone(),
                    metric,
                    selector: Arc::new(selector),
                    rolling,
                }),
                Err(e) => {
                    tracing::debug!(%namespace, name = %target.name, error = %e, "workload selector not usable")
                }
            }
        }
        out
    }
}

/// Mid-rollout, scaling, or not yet observed: the Deployment controller's own view
/// (`kubectl rollout status` reads the same fields: `k8s.io/kubectl/pkg/polymorphichelpers/rollout_status.go`).
pub(crate) fn deployment_rolling(d: &Deployment) -> bool {
    let generation = d.metadata.generation.unwrap_or(0);
    let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let Some(s) = &d.status else { return true };
    s.observed_generation.unwrap_or(0) < generation
        || s.updated_replicas.unwrap_or(0) != want
        || s.replicas.unwrap_or(0) != want
        || s.available_replicas.unwrap_or(0) != want
        || s.unavailable_replicas.unwrap_or(0) > 0
}

/// As [`deployment_rolling`], for a StatefulSet (revisions instead of updated replicas).
pub(crate) fn statefulset_rolling(s: &StatefulSet) -> bool {
    let generation = s.metadata.generation.unwrap_or(0);
    let want = s.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let Some(st) = &s.status else { return true };
    st.observed_generation.unwrap_or(0) < generation
        || (st.update_revision.is_some() && st.current_revision != st.update_revision)
        || st.replicas != want
        || st.ready_replicas.unwrap_or(0) != want
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(generation: i64, status: serde_json::Value) -> Deployment {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "d", "namespace": "ns", "generation": generation},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "ws"}},
                     "template": {"metadata": {"labels": {"app": "ws"}}}},
            "status": status,
        }))
        .expect("deployment")
    }

    #[test]
    fn a_deployment_is_steady_only_when_every_replica_is_updated_and_available() {
        let steady = serde_json::json!({"observedGeneration": 2, "replicas": 3,
            "updatedReplicas": 3, "availableReplicas": 3, "readyReplicas": 3});
        assert!(!deployment_rolling(&deployment(2, steady.clone())));
        assert!(
            deployment_rolling(&deployment(3, steady)),
            "spec not observed yet"
        );
        let rolling = serde_json::json!({"observedGeneration": 2, "replicas": 4,
            "updatedReplicas": 1, "availableReplicas": 3, "readyReplicas": 3});
        assert!(deployment_rolling(&deployment(2, rolling)));
        let scaling = serde_json::json!({"observedGeneration": 2, "replicas": 3,
            "updatedReplicas": 3, "availableReplicas": 2, "unavailableReplicas": 1});
        assert!(deployment_rolling(&deployment(2, scaling)));
    }
}
