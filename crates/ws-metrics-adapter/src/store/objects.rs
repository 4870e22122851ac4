//! The objects whose metric is the sum over their pods (Deployments, StatefulSets, ReplicaSets,
//! Services): their labels and pod selector, kept current by discovery's watches so that a read
//! of `deployments.apps/ws` costs a map lookup and the same pod-index walk as `pods/*` with the
//! Deployment's selector — never a request to the API server.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use crate::selector::Selector;

use super::Labels;
use super::resource::ResourceInfo;

/// What a read needs to know of one object.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectSpec {
    /// The object's own labels, matched by a `labelSelector` over the objects (form B).
    pub labels: Labels,
    /// Which pods are the object's: a workload's `spec.selector`, a Service's `spec.selector`.
    /// `None` when it selects no pod (a Service without a selector, whose endpoints are managed
    /// by hand): its value is never a sum over pods it does not name.
    pub pods: Option<Selector>,
}

/// The objects of one resource.
#[derive(Debug)]
struct Kind {
    resource: &'static ResourceInfo,
    /// Whether the watch has listed every object once: before that, a missing object may exist.
    synced: bool,
    /// Namespace → name → spec. BTreeMap keeps a form-B answer in name order.
    objects: HashMap<String, BTreeMap<String, Arc<ObjectSpec>>>,
}

/// How a lookup of one object ended.
#[derive(Debug)]
pub(super) enum Lookup {
    /// Its resource is not tracked.
    Untracked,
    /// The watch has not synced yet.
    NotSynced,
    /// Not there (after the watch synced).
    Missing,
    /// Found.
    Found(Arc<ObjectSpec>),
}

/// Objects by resource, for the resources declared with [`ObjectIndex::track`].
#[derive(Debug, Default)]
pub(super) struct ObjectIndex {
    kinds: RwLock<Vec<Kind>>,
}

impl ObjectIndex {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<Kind>> {
        // As for the pod inventory: every update is one map operation, so a poisoned lock still
        // guards consistent data.
        self.kinds.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Vec<Kind>> {
        self.kinds.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Declares `resource` as tracked (served, not yet synced). Idempotent.
    pub(super) fn track(&self, resource: &'static ResourceInfo) {
        let mut kinds = self.write();
        if !kinds.iter().any(|k| k.resource == resource) {
            kinds.push(Kind {
                resource,
                synced: false,
                objects: HashMap::new(),
            });
        }
    }

    /// The tracked resources, in the order they were declared.
    pub(super) fn tracked(&self) -> Vec<&'static ResourceInfo> {
        self.read().iter().map(|k| k.resource).collect()
    }

    /// Whether `resource` is tracked.
    pub(super) fn tracks(&self, resource: &'static ResourceInfo) -> bool {
        self.read().iter().any(|k| k.resource == resource)
    }

    /// Replaces every object of `resource` (a watch's list or re-list) and marks it synced.
    pub(super) fn replace(
        &self,
        resource: &'static ResourceInfo,
        objects: Vec<(String, String, ObjectSpec)>,
    ) {
        let mut fresh: HashMap<String, BTreeMap<String, Arc<ObjectSpec>>> = HashMap::new();
        for (ns, name, spec) in objects {
            fresh.entry(ns).or_default().insert(name, Arc::new(spec));
        }
        let mut kinds = self.write();
        if let Some(kind) = kinds.iter_mut().find(|k| k.resource == resource) {
            kind.objects = fresh;
            kind.synced = true;
        }
    }

    /// Adds or replaces one object.
    pub(super) fn upsert(
        &self,
        resource: &'static ResourceInfo,
        namespace: &str,
        name: &str,
        spec: ObjectSpec,
    ) {
        let mut kinds = self.write();
        if let Some(kind) = kinds.iter_mut().find(|k| k.resource == resource) {
            kind.objects
                .entry(namespace.to_owned())
                .or_default()
                .insert(name.to_owned(), Arc::new(spec));
        }
    }

    /// Removes one object.
    pub(super) fn remove(&self, resource: &'static ResourceInfo, namespace: &str, name: &str) {
        let mut kinds = self.write();
        if let Some(kind) = kinds.iter_mut().find(|k| k.resource == resource)
            && let Some(names) = kind.objects.get_mut(namespace)
        {
            names.remove(name);
            if names.is_empty() {
                kind.objects.remove(namespace);
            }
        }
    }

    /// One object.
    pub(super) fn get(
        &self,
        resource: &'static ResourceInfo,
        namespace: &str,
        name: &str,
    ) -> Lookup {
        let kinds = self.read();
        let Some(kind) = kinds.iter().find(|k| k.resource == resource) else {
            return Lookup::Untracked;
        };
        match kind.objects.get(namespace).and_then(|n| n.get(name)) {
            Some(spec) => Lookup::Found(spec.clone()),
            None if kind.synced => Lookup::Missing,
            None => Lookup::NotSynced,
        }
    }

    /// The objects of `resource` in `namespace` whose labels match `selector`, by name; `None`
    /// when the resource is not tracked or its watch has not synced.
    pub(super) fn matching(
        &self,
        resource: &'static ResourceInfo,
        namespace: &str,
        selector: &Selector,
    ) -> Option<Vec<(String, Arc<ObjectSpec>)>> {
        let kinds = self.read();
        let kind = kinds
            .iter()
            .find(|k| k.resource == resource)
            .filter(|k| k.synced)?;
        Some(
            kind.objects
                .get(namespace)
                .into_iter()
                .flatten()
                .filter(|(_, spec)| selector.matches_map(&spec.labels))
                .map(|(name, spec)| (name.clone(), spec.clone()))
                .collect(),
        )
    }
}
