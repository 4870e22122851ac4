//! The Kubernetes resources a metric can be served for (`pods`, `namespaces`, and the built-in
//! workload resources the Prometheus source's rules may name): part of the read contract between
//! the sources, the store and the API.

/// A Kubernetes resource this adapter can serve metrics for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceInfo {
    /// API group, empty for core.
    pub group: &'static str,
    /// Plural resource name.
    pub plural: &'static str,
    /// Singular resource name.
    pub singular: &'static str,
    /// Kind, for `describedObject`.
    pub kind: &'static str,
    /// `apiVersion`, for `describedObject`.
    pub api_version: &'static str,
    /// Whether objects live in a namespace.
    pub namespaced: bool,
}

impl ResourceInfo {
    /// The group-resource as it appears in API paths and discovery: `pods`, `deployments.apps`.
    pub fn path(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_owned()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// Whether this is the `namespaces` resource.
    pub fn is_namespaces(&self) -> bool {
        self.group.is_empty() && self.plural == "namespaces"
    }

    /// Whether this is the `pods` resource.
    pub fn is_pods(&self) -> bool {
        self.group.is_empty() && self.plural == "pods"
    }
}

const fn res(
    group: &'static str,
    plural: &'static str,
    singular: &'static str,
    kind: &'static str,
    api_version: &'static str,
    namespaced: bool,
) -> ResourceInfo {
    ResourceInfo {
        group,
        plural,
        singular,
        kind,
        api_version,
        namespaced,
    }
}

/// The resources a rule may name. prometheus-adapter asks the cluster's REST mapper; this adapter
/// runs without discovery of the cluster's API, so it knows the built-in workload resources.
/// A label naming anything else is skipped (as prometheus-adapter skips labels its mapper cannot
/// resolve), and an override naming anything else is a configuration error.
pub const RESOURCES: &[ResourceInfo] = &[
    res("", "pods", "pod", "Pod", "v1", true),
    res("", "namespaces", "namespace", "Namespace", "v1", false),
    res("", "nodes", "node", "Node", "v1", false),
    res("", "services", "service", "Service", "v1", true),
    res("", "endpoints", "endpoints", "Endpoints", "v1", true),
    res(
        "",
        "persistentvolumes",
        "persistentvolume",
        "PersistentVolume",
        "v1",
        false,
    ),
    res(
        "",
        "persistentvolumeclaims",
        "persistentvolumeclaim",
        "PersistentVolumeClaim",
        "v1",
        true,
    ),
    res(
        "",
        "replicationcontrollers",
        "replicationcontroller",
        "ReplicationController",
        "v1",
        true,
    ),
    res(
        "apps",
        "deployments",
        "deployment",
        "Deployment",
        "apps/v1",
        true,
    ),
    res(
        "apps",
        "statefulsets",
        "statefulset",
        "StatefulSet",
        "apps/v1",
        true,
    ),
    res(
        "apps",
        "daemonsets",
        "daemonset",
        "DaemonSet",
        "apps/v1",
        true,
    ),
    res(
        "apps",
        "replicasets",
        "replicaset",
        "ReplicaSet",
        "apps/v1",
        true,
    ),
    res("batch", "jobs", "job", "Job", "batch/v1", true),
    res("batch", "cronjobs", "cronjob", "CronJob", "batch/v1", true),
    res(
        "networking.k8s.io",
        "ingresses",
        "ingress",
        "Ingress",
        "networking.k8s.io/v1",
        true,
    ),
    res(
        "autoscaling",
        "horizontalpodautoscalers",
        "horizontalpodautoscaler",
        "HorizontalPodAutoscaler",
        "autoscaling/v2",
        true,
    ),
    res(
        "policy",
        "poddisruptionbudgets",
        "poddisruptionbudget",
        "PodDisruptionBudget",
        "policy/v1",
        true,
    ),
];

/// The `namespaces` resource.
pub fn namespaces() -> &'static ResourceInfo {
    &RESOURCES[1]
}

/// The `pods` resource.
pub fn pods() -> &'static ResourceInfo {
    &RESOURCES[0]
}

/// Resolves a group and a singular or plural resource, case-insensitively. An empty group first
/// means core, then any group holding a resource of that name if exactly one does (as `kubectl get
/// deployment` resolves without a group).
pub fn resolve(group: &str, resource: &str) -> Option<&'static ResourceInfo> {
    let resource = resource.to_ascii_lowercase();
    let named = |r: &&ResourceInfo| r.plural == resource || r.singular == resource;
    let group = group.to_ascii_lowercase();
    if let Some(r) = RESOURCES.iter().filter(named).find(|r| r.group == group) {
        return Some(r);
    }
    if group.is_empty() {
        let mut any = RESOURCES.iter().filter(named);
        let first = any.next()?;
        return any.next().is_none().then_some(first);
    }
    None
}

/// Resolves a group-resource as written in an API path (`pods`, `pod`, `deployments.apps`).
pub fn resolve_path(path: &str) -> Option<&'static ResourceInfo> {
    match path.split_once('.') {
        Some((resource, group)) => resolve(group, resource).filter(|r| r.group == group),
        None => resolve("", path).filter(|r| r.group.is_empty()),
    }
}
