//! What the controller needs to know of each scraped pod beyond its value: Ready, where its shed
//! endpoint is, whether it opted in to the deletion cost and the cost it carries now. Fed by the
//! one pod watch (`discovery::cluster::Inventory`), so the controller adds no watch of its own on
//! pods.

use std::collections::HashMap;
use std::sync::Mutex;

use k8s_openapi::api::core::v1::Pod;

use crate::store::PodKey;

/// The annotation the ReplicaSet controller reads to choose which pods to delete first on a
/// scale-down (lower first). See `pkg/controller/replicaset/replica_set.go` (getPodsToDelete) and
/// `pkg/controller/controller_utils.go` (ActivePodsWithRanks) upstream.
pub const DELETION_COST: &str = "controller.kubernetes.io/pod-deletion-cost";

/// One pod's facts.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Facts {
    /// The pod's `Ready` condition is `True`.
    pub ready: bool,
    /// `POST` here to ask the pod to shed connections (`<prefix>/shed-path` on the scrape
    /// port); `None` when the pod did not opt in.
    pub shed_url: Option<String>,
    /// `<prefix>/deletion-cost: "true"`: the controller keeps [`DELETION_COST`] equal to the
    /// pod's live count.
    pub deletion_cost_opt_in: bool,
    /// The [`DELETION_COST`] the pod carries now, when it parses as an int32.
    pub deletion_cost: Option<i32>,
}

/// The pods' facts, by pod. Written by the watch, read once per controller tick.
#[derive(Debug, Default)]
pub struct PodFacts {
    pods: Mutex<HashMap<PodKey, Facts>>,
}

impl PodFacts {
    fn locked(&self) -> std::sync::MutexGuard<'_, HashMap<PodKey, Facts>> {
        // Every write is one map operation: a panicking writer leaves the map consistent.
        self.pods.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records the facts of a scraped pod: `scrape_url` is where it is scraped.
    pub(crate) fn observe(&self, key: PodKey, pod: &Pod, prefix: &str, scrape_url: &str) {
        let facts = facts_of(pod, prefix, scrape_url);
        self.locked().insert(key, facts);
    }

    /// Forgets a pod (deleted, or no longer scraped).
    pub(crate) fn forget(&self, key: &PodKey) {
        self.locked().remove(key);
    }

    /// Keeps only the pods `keep` says yes to (after a re-list).
    pub(crate) fn retain(&self, keep: impl Fn(&PodKey) -> bool) {
        self.locked().retain(|k, _| keep(k));
    }

    /// The facts of `key`, if the pod is scraped.
    pub(crate) fn get(&self, key: &PodKey) -> Option<Facts> {
        self.locked().get(key).cloned()
    }
}

/// The facts of `pod`. The shed URL keeps the scheme, host and port of `scrape_url` and takes
/// the annotation's path, which must start with `/` (else the pod is not shed from).
pub(crate) fn facts_of(pod: &Pod, prefix: &str, scrape_url: &str) -> Facts {
    let annotations = pod.metadata.annotations.as_ref();
    let annotation = |name: &str| {
        annotations
            .and_then(|a| a.get(name))
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
    };
    let ready = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let origin = scrape_url.find("://").and_then(|i| {
        scrape_url[i + 3..]
            .find('/')
            .map(|j| &scrape_url[..i + 3 + j])
    });
    let shed_url = annotation(&format!("{prefix}/shed-path"))
        .filter(|p| p.starts_with('/') && !p.contains(char::is_whitespace))
        .zip(origin)
        .map(|(path, origin)| format!("{origin}{path}"));
    Facts {
        ready,
        shed_url,
        deletion_cost_opt_in: annotation(&format!("{prefix}/deletion-cost")) == Some("true"),
        deletion_cost: annotation(DELETION_COST).and_then(|v| v.parse().ok()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(annotations: serde_json::Value, ready: &str) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns", "annotations": annotations},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": ready}]},
        }))
        .expect("pod")
    }

    #[test]
    fn shed_url_takes_the_scrape_origin_and_the_annotated_path() {
        let p = pod(
            serde_json::json!({"x.io/shed-path": "/admin/shed", "x.io/deletion-cost": "true",
                               DELETION_COST: "42"}),
            "True",
        );
        let f = facts_of(&p, "x.io", "http://10.0.0.7:8080/metrics");
        assert_eq!(
            f.shed_url.as_deref(),
            Some("http://10.0.0.7:8080/admin/shed")
        );
        assert!(f.ready && f.deletion_cost_opt_in);
        assert_eq!(f.deletion_cost, Some(42));
        let v6 = facts_of(&p, "x.io", "https://[fd00::1]:9443/m");
        assert_eq!(
            v6.shed_url.as_deref(),
            Some("https://[fd00::1]:9443/admin/shed")
        );
    }

    #[test]
    fn no_annotation_or_a_bad_path_means_no_shedding() {
        let none = facts_of(&pod(serde_json::json!({}), "False"), "x.io", "http://a:1/m");
        assert_eq!(none, Facts::default());
        let bad = pod(
            serde_json::json!({"x.io/shed-path": "shed", DELETION_COST: "many"}),
            "True",
        );
        let f = facts_of(&bad, "x.io", "http://a:1/m");
        assert_eq!(f.shed_url, None);
        assert_eq!(f.deletion_cost, None);
    }
}
