//! Cluster mode: the objects an Object metric can name (Deployments, StatefulSets, ReplicaSets,
//! Services), one kube-runtime watcher per resource over all namespaces (one LIST at start and
//! after a desync, then WATCH). Each event updates the store's object index at once, so a read of
//! `deployments.apps/ws` never asks the API server and a changed selector counts from the next
//! answer. With the scrape source an object's value is the sum over its pods; with the Prometheus
//! source the rules give the values and the objects' labels answer a `labelSelector` over them.

use std::future::Future;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource, ResourceExt};

use crate::selector::Selector;
use crate::store::{ObjectSpec, ResourceInfo, Store, resource};
use crate::telemetry::Telemetry;

/// A watched resource: how to read an object's labels and pod selector.
pub(crate) trait Watched:
    Resource<DynamicType = ()>
    + Clone
    + std::fmt::Debug
    + serde::de::DeserializeOwned
    + Send
    + Sync
    + 'static
{
    /// The resource as the API serves it (`deployments.apps`).
    fn info() -> &'static ResourceInfo;
    /// Which pods the object selects; `None` when it selects none (or none usable).
    fn pods(&self) -> Option<Selector>;
}

/// A workload's `spec.selector`. An empty one (refused by apps/v1 validation) selects nothing
/// here, never the whole namespace; one that does not convert is logged and selects nothing.
fn workload_pods(meta: &ObjectMeta, selector: Option<&LabelSelector>) -> Option<Selector> {
    match Selector::from_label_selector(selector?) {
        Ok(s) if !s.is_empty() => Some(s),
        Ok(_) => None,
        Err(e) => {
            tracing::warn!(namespace = ?meta.namespace, name = ?meta.name, error = %e, "object selector not usable; it selects no pod");
            None
        }
    }
}

fn info_of(path: &str) -> &'static ResourceInfo {
    resource::resolve_path(path).expect("a built-in resource")
}

impl Watched for Deployment {
    fn info() -> &'static ResourceInfo {
        info_of("deployments.apps")
    }
    fn pods(&self) -> Option<Selector> {
        workload_pods(&self.metadata, self.spec.as_ref().map(|s| &s.selector))
    }
}

impl Watched for StatefulSet {
    fn info() -> &'static ResourceInfo {
        info_of("statefulsets.apps")
    }
    fn pods(&self) -> Option<Selector> {
        workload_pods(&self.metadata, self.spec.as_ref().map(|s| &s.selector))
    }
}

impl Watched for ReplicaSet {
    fn info() -> &'static ResourceInfo {
        info_of("replicasets.apps")
    }
    fn pods(&self) -> Option<Selector> {
        workload_pods(&self.metadata, self.spec.as_ref().map(|s| &s.selector))
    }
}

impl Watched for Service {
    fn info() -> &'static ResourceInfo {
        info_of("services")
    }
    /// `spec.selector` (equality only). A Service without one has endpoints managed by hand: no
    /// pod of it is known here.
    fn pods(&self) -> Option<Selector> {
        let labels = self.spec.as_ref()?.selector.as_ref()?;
        if labels.is_empty() {
            return None;
        }
        workload_pods(
            &self.metadata,
            Some(&LabelSelector {
                match_labels: Some(labels.clone()),
                match_expressions: None,
            }),
        )
    }
}

fn spec_of<K: Watched>(object: &K) -> ObjectSpec {
    ObjectSpec {
        labels: object.labels().clone(),
        pods: object.pods(),
    }
}

fn key_of<K: Watched>(object: &K) -> (String, String) {
    (object.namespace().unwrap_or_default(), object.name_any())
}

/// Applies one watch event of `K` to the store; `relist` holds a re-list until it completes, so
/// that objects deleted while the watch was down disappear at once.
fn apply<K: Watched>(
    store: &Store,
    relist: &mut Option<Vec<(String, String, ObjectSpec)>>,
    event: Event<K>,
) {
    match event {
        Event::Init => *relist = Some(Vec::new()),
        Event::InitApply(object) => {
            let (ns, name) = key_of(&object);
            relist
                .get_or_insert_with(Vec::new)
                .push((ns, name, spec_of(&object)));
        }
        Event::InitDone => {
            let objects = relist.take().unwrap_or_default();
            tracing::info!(resource = %K::info().path(), objects = objects.len(), "object watch synced");
            store.replace_objects(K::info(), objects);
        }
        Event::Apply(object) => {
            let (ns, name) = key_of(&object);
            store.upsert_object(K::info(), &ns, &name, spec_of(&object));
        }
        Event::Delete(object) => {
            let (ns, name) = key_of(&object);
            store.remove_object(K::info(), &ns, &name);
        }
    }
}

/// Watches every `K` in the cluster until `shutdown`, keeping the store's objects current.
/// Watch errors (RBAC refusing the list, the API server away) are logged and retried with
/// kube-runtime's default backoff; until the first list, reads of `K` answer 500.
async fn watch<K: Watched>(
    client: Client,
    store: Arc<Store>,
    telemetry: Arc<Telemetry>,
    shutdown: impl Future<Output = ()>,
) {
    let api: Api<K> = Api::all(client);
    let stream = watcher::watcher(api, watcher::Config::default()).default_backoff();
    tokio::pin!(stream);
    tokio::pin!(shutdown);
    let mut relist = None;
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            next = stream.next() => match next {
                Some(Ok(event)) => apply(&store, &mut relist, event),
                Some(Err(e)) => {
                    tracing::warn!(resource = %K::info().path(), error = %e, "object watch failed; retrying with backoff");
                    telemetry.inventory_error();
                }
                None => return,
            },
        }
    }
}

/// Serves the Object metrics of every watched resource and starts their watches.
pub(crate) fn start<F>(
    client: &Client,
    store: &Arc<Store>,
    telemetry: &Arc<Telemetry>,
    shutdown: impl Fn() -> F,
) where
    F: Future<Output = ()> + Send + 'static,
{
    fn one<K: Watched, F: Future<Output = ()> + Send + 'static>(
        client: &Client,
        store: &Arc<Store>,
        telemetry: &Arc<Telemetry>,
        shutdown: F,
    ) {
        store.track_objects(K::info());
        tokio::spawn(watch::<K>(
            client.clone(),
            store.clone(),
            telemetry.clone(),
            shutdown,
        ));
    }
    one::<Deployment, F>(client, store, telemetry, shutdown());
    one::<StatefulSet, F>(client, store, telemetry, shutdown());
    one::<ReplicaSet, F>(client, store, telemetry, shutdown());
    one::<Service, F>(client, store, telemetry, shutdown());
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use crate::clock::Moment;
    use crate::store::{MetricCatalog, MetricMapping, Objects, ReadError};

    fn deployment(name: &str, selector: serde_json::Value) -> Deployment {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "chat", "labels": {"team": "rt"}},
            "spec": {"selector": selector, "template": {}},
        }))
        .expect("deployment")
    }

    fn store() -> Store {
        Store::new(
            MetricCatalog::new(vec![MetricMapping {
                served: "m".into(),
                family: "f".into(),
                rate: None,
                filter: None,
            }]),
            Duration::from_secs(5),
        )
    }

    fn read(store: &Store, name: &str) -> Result<Vec<crate::store::Item>, ReadError> {
        store.read(
            Deployment::info(),
            "m",
            Objects::One {
                namespace: "chat",
                name,
            },
            &Selector::everything(),
            Moment::now(),
        )
    }

    #[test]
    fn events_keep_the_index_and_a_relist_drops_what_is_gone() {
        let store = store();
        store.track_objects(Deployment::info());
        let mut relist = None;
        assert!(matches!(
            read(&store, "ws"),
            Err(ReadError::NotSynced { .. })
        ));
        apply::<Deployment>(&store, &mut relist, Event::Init);
        let ws = deployment("ws", serde_json::json!({"matchLabels": {"app": "ws"}}));
        apply(&store, &mut relist, Event::InitApply(ws.clone()));
        // Not synced until the list completes.
        assert!(matches!(
            read(&store, "ws"),
            Err(ReadError::NotSynced { .. })
        ));
        apply::<Deployment>(&store, &mut relist, Event::InitDone);
        // Known, but no pod is tracked: no value rather than a zero.
        assert!(matches!(read(&store, "ws"), Err(ReadError::NoPods { .. })));
        assert!(matches!(
            read(&store, "other"),
            Err(ReadError::UnknownObject { .. })
        ));
        apply(
            &store,
            &mut relist,
            Event::Apply(deployment(
                "other",
                serde_json::json!({"matchLabels": {"app": "o"}}),
            )),
        );
        assert!(matches!(
            read(&store, "other"),
            Err(ReadError::NoPods { .. })
        ));
        // A re-list without `other` drops it.
        apply::<Deployment>(&store, &mut relist, Event::Init);
        apply(&store, &mut relist, Event::InitApply(ws));
        apply::<Deployment>(&store, &mut relist, Event::InitDone);
        assert!(matches!(
            read(&store, "other"),
            Err(ReadError::UnknownObject { .. })
        ));
        apply(
            &store,
            &mut relist,
            Event::Delete(deployment("ws", serde_json::json!({}))),
        );
        assert!(matches!(
            read(&store, "ws"),
            Err(ReadError::UnknownObject { .. })
        ));
    }

    #[test]
    fn an_empty_selector_or_a_service_without_one_selects_no_pod() {
        let empty = deployment("d", serde_json::json!({}));
        assert_eq!(empty.pods(), None);
        let svc: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "s", "namespace": "chat"},
            "spec": {"ports": [{"port": 80}]},
        }))
        .expect("service");
        assert_eq!(svc.pods(), None);
        let svc: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "s", "namespace": "chat"},
            "spec": {"selector": {"app": "ws"}},
        }))
        .expect("service");
        assert_eq!(svc.pods().map(|s| s.to_string()), Some("app=ws".to_owned()));
        assert_eq!(Service::info().path(), "services");
        assert_eq!(StatefulSet::info().path(), "statefulsets.apps");
        assert_eq!(ReplicaSet::info().kind, "ReplicaSet");
    }
}
