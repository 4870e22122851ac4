//! JSON bodies of the custom metrics API: discovery documents, `MetricValueList` in its v1beta1 and
//! v1beta2 shapes, and `Status` errors (spec §1, §2.3, §3), with `kind` and `apiVersion` always set.

use std::time::SystemTime;

use serde::Serialize;
use serde_json::Value;

use crate::quantity;

/// API group served.
pub const GROUP: &str = "custom.metrics.k8s.io";

/// Served versions of the group, preferred first.
pub const VERSIONS: [Version; 2] = [Version::V1beta2, Version::V1beta1];

/// A served version of `custom.metrics.k8s.io`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// `v1beta1`: `metricName` and `selector` on the item.
    V1beta1,
    /// `v1beta2`: `metric: {name, selector}`.
    V1beta2,
}

impl Version {
    /// Parses a path segment.
    pub fn from_segment(s: &str) -> Option<Self> {
        match s {
            "v1beta1" => Some(Self::V1beta1),
            "v1beta2" => Some(Self::V1beta2),
            _ => None,
        }
    }

    /// The version string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::V1beta1 => "v1beta1",
            Self::V1beta2 => "v1beta2",
        }
    }

    /// `custom.metrics.k8s.io/<version>`.
    pub fn group_version(self) -> &'static str {
        match self {
            Self::V1beta1 => "custom.metrics.k8s.io/v1beta1",
            Self::V1beta2 => "custom.metrics.k8s.io/v1beta2",
        }
    }
}

#[derive(Serialize)]
struct GroupVersionRef {
    #[serde(rename = "groupVersion")]
    group_version: &'static str,
    version: &'static str,
}

fn group_value(with_kind: bool) -> Value {
    let versions: Vec<GroupVersionRef> = VERSIONS
        .iter()
        .map(|v| GroupVersionRef {
            group_version: v.group_version(),
            version: v.as_str(),
        })
        .collect();
    let mut group = serde_json::json!({
        "name": GROUP,
        "versions": versions,
        "preferredVersion": {"groupVersion": VERSIONS[0].group_version(), "version": VERSIONS[0].as_str()},
    });
    if with_kind {
        group["kind"] = "APIGroup".into();
        group["apiVersion"] = "v1".into();
    }
    group
}

/// `GET /apis`: an APIGroupList with our one group (items carry no kind, as in Go).
pub fn api_group_list() -> Vec<u8> {
    let body = serde_json::json!({
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": [group_value(false)],
    });
    body.to_string().into_bytes()
}

/// `GET /apis/custom.metrics.k8s.io`: the APIGroup, v1beta2 preferred.
pub fn api_group() -> Vec<u8> {
    group_value(true).to_string().into_bytes()
}

/// `GET /apis/custom.metrics.k8s.io/{version}`: one `pods/<m>` and one `namespaces/<m>` entry per
/// served metric. Never empty, since at least one metric is always served; scopes are consistent
/// per parent resource (all `pods/*` namespaced, all `namespaces/*` cluster-scoped).
pub fn api_resource_list(version: Version, metrics: &[String]) -> Vec<u8> {
    let mut resources = Vec::with_capacity(metrics.len() * 2);
    for (parent, namespaced) in [("pods", true), ("namespaces", false)] {
        for m in metrics {
            resources.push(serde_json::json!({
                "name": format!("{parent}/{m}"),
                "singularName": "",
                "namespaced": namespaced,
                "kind": "MetricValueList",
                "verbs": ["get"],
            }));
        }
    }
    serde_json::json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": version.group_version(),
        "resources": resources,
    })
    .to_string()
    .into_bytes()
}

/// `GET /apis/custom.metrics.k8s.io/{version}` for an explicit list of
/// `(group-resource, metric, namespaced)` entries (the Prometheus source, whose rules may serve
/// any resource). An empty list is a valid (empty) document.
pub fn api_resource_list_of(version: Version, entries: &[(String, String, bool)]) -> Vec<u8> {
    let resources: Vec<serde_json::Value> = entries
        .iter()
        .map(|(resource, metric, namespaced)| {
            serde_json::json!({
                "name": format!("{resource}/{metric}"),
                "singularName": "",
                "namespaced": namespaced,
                "kind": "MetricValueList",
                "verbs": ["get"],
            })
        })
        .collect();
    serde_json::json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": version.group_version(),
        "resources": resources,
    })
    .to_string()
    .into_bytes()
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

#[derive(Serialize)]
struct ObjectReference<'a> {
    kind: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    namespace: Option<&'a str>,
    name: &'a str,
    #[serde(rename = "apiVersion")]
    api_version: &'a str,
}

impl Described {
    fn reference(&self) -> ObjectReference<'_> {
        match self {
            Self::Pod { namespace, name } => ObjectReference {
                kind: "Pod",
                namespace: Some(namespace),
                name,
                api_version: "v1",
            },
            Self::Namespace { name } => ObjectReference {
                kind: "Namespace",
                namespace: None,
                name,
                api_version: "v1",
            },
            Self::Object {
                kind,
                api_version,
                namespace,
                name,
            } => ObjectReference {
                kind,
                namespace: namespace.as_deref(),
                name,
                api_version,
            },
        }
    }
}

/// One value to put in a `MetricValueList`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// What it describes.
    pub described: Described,
    /// Value. Unit: milli-units.
    pub milli: i64,
    /// Sample time: its wall part is the `timestamp` rendered.
    pub time: crate::clock::SampleTime,
}

#[derive(Serialize)]
struct MetricIdentifier<'a> {
    name: &'a str,
    selector: &'a Value,
}

#[derive(Serialize)]
struct ItemV1beta2<'a> {
    #[serde(rename = "describedObject")]
    described_object: ObjectReference<'a>,
    metric: MetricIdentifier<'a>,
    timestamp: String,
    value: String,
}

#[derive(Serialize)]
struct ItemV1beta1<'a> {
    #[serde(rename = "describedObject")]
    described_object: ObjectReference<'a>,
    #[serde(rename = "metricName")]
    metric_name: &'a str,
    timestamp: String,
    value: String,
    selector: &'a Value,
}

#[derive(Serialize)]
struct List<T> {
    kind: &'static str,
    #[serde(rename = "apiVersion")]
    api_version: &'static str,
    metadata: Empty,
    items: Vec<T>,
}

#[derive(Serialize)]
struct Empty {}

/// RFC 3339 UTC with second precision, as `metav1.Time` marshals.
pub fn timestamp(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// A `MetricValueList` in the shape of `version`. `selector` is the echoed
/// `metricLabelSelector` as a LabelSelector, or `null`.
pub fn metric_value_list(
    version: Version,
    metric: &str,
    selector: &Value,
    items: &[Item],
) -> Vec<u8> {
    let result = match version {
        Version::V1beta2 => serde_json::to_vec(&List {
            kind: "MetricValueList",
            api_version: version.group_version(),
            metadata: Empty {},
            items: items
                .iter()
                .map(|i| ItemV1beta2 {
                    described_object: i.described.reference(),
                    metric: MetricIdentifier {
                        name: metric,
                        selector,
                    },
                    timestamp: timestamp(i.time.wall),
                    value: quantity::format_milli(i.milli),
                })
                .collect(),
        }),
        Version::V1beta1 => serde_json::to_vec(&List {
            kind: "MetricValueList",
            api_version: version.group_version(),
            metadata: Empty {},
            items: items
                .iter()
                .map(|i| ItemV1beta1 {
                    described_object: i.described.reference(),
                    metric_name: metric,
                    timestamp: timestamp(i.time.wall),
                    value: quantity::format_milli(i.milli),
                    selector,
                })
                .collect(),
        }),
    };
    // Serializing these plain structs cannot fail (no maps with non-string keys, no I/O).
    result.unwrap_or_default()
}

/// A `metav1.Status` failure body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Status {
    kind: &'static str,
    #[serde(rename = "apiVersion")]
    api_version: &'static str,
    metadata: StatusMeta,
    status: &'static str,
    /// Human-readable message, returned to the HPA and kubectl.
    pub message: String,
    /// Machine-readable reason (`NotFound`, `BadRequest`, …).
    pub reason: &'static str,
    /// HTTP status code.
    pub code: u16,
    /// What the failure is about (403 names the object, group and resource).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<Box<StatusDetails>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
struct StatusMeta {}

/// `metav1.StatusDetails`: the object a failure is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct StatusDetails {
    /// Object name, omitted when empty.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// API group, omitted when empty.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub group: String,
    /// The resource (Go puts the resource in `kind` for these errors).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub kind: String,
}

impl Status {
    /// A failure with a code, reason and message.
    pub fn failure(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            kind: "Status",
            api_version: "v1",
            metadata: StatusMeta {},
            status: "Failure",
            message: message.into(),
            reason,
            code,
            details: None,
        }
    }

    /// The same failure with `details`.
    pub fn with_details(mut self, details: StatusDetails) -> Self {
        self.details = Some(Box::new(details));
        self
    }

    /// 404 for a path that matches no route.
    pub fn not_found_path() -> Self {
        Self::failure(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
    }

    /// 500 with the generic message; the cause is logged by the caller, never sent.
    pub fn internal() -> Self {
        Self::failure(
            500,
            "InternalError",
            "Internal error occurred: unable to fetch metrics",
        )
    }

    /// The JSON body.
    pub fn to_body(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_are_rfc3339_utc_seconds() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_748_779_205_900);
        assert_eq!(timestamp(t), "2025-06-01T12:00:05Z");
    }

    #[test]
    fn resource_list_is_never_empty_and_has_consistent_scope() {
        let body: Value =
            serde_json::from_slice(&api_resource_list(Version::V1beta1, &["m".into()]))
                .expect("json");
        assert_eq!(body["groupVersion"], "custom.metrics.k8s.io/v1beta1");
        assert_eq!(body["resources"][0]["name"], "pods/m");
        assert_eq!(body["resources"][0]["namespaced"], true);
        assert_eq!(body["resources"][1]["name"], "namespaces/m");
        assert_eq!(body["resources"][1]["namespaced"], false);
        assert_eq!(body["resources"][1]["singularName"], "");
    }

    #[test]
    fn group_prefers_v1beta2() {
        let body: Value = serde_json::from_slice(&api_group()).expect("json");
        assert_eq!(body["kind"], "APIGroup");
        assert_eq!(body["preferredVersion"]["version"], "v1beta2");
        assert_eq!(
            body["versions"][1]["groupVersion"],
            "custom.metrics.k8s.io/v1beta1"
        );
        let list: Value = serde_json::from_slice(&api_group_list()).expect("json");
        assert!(list["groups"][0].get("kind").is_none());
    }
}
