//! JSON bodies of the custom metrics API: discovery documents and `Status` errors as k8s-openapi
//! types, `MetricValueList` in its v1beta1 and v1beta2 shapes (no k8s-openapi type exists for it)
//! (spec §1, §2.3, §3), with `kind` and `apiVersion` always set on top-level documents.

use std::time::SystemTime;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    APIGroup, APIGroupList, APIResource, APIResourceList, GroupVersionForDiscovery, LabelSelector,
    ListMeta,
};
use serde::Serialize;
use serde_json::Value;

use crate::quantity;
use crate::store::ResourceInfo;
pub use crate::store::read::{Described, Item};
pub use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Status, StatusDetails};

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

/// The served versions as discovery lists them, preferred first.
fn group_versions() -> Vec<GroupVersionForDiscovery> {
    VERSIONS
        .iter()
        .map(|v| GroupVersionForDiscovery {
            group_version: v.group_version().to_owned(),
            version: v.as_str().to_owned(),
        })
        .collect()
}

fn group() -> APIGroup {
    APIGroup {
        name: GROUP.to_owned(),
        preferred_version: group_versions().into_iter().next(),
        server_address_by_client_cidrs: None,
        versions: group_versions(),
    }
}

/// Serializes a k8s-openapi value; these types hold only strings, bools and lists, so this
/// cannot fail, and an empty body would be the answer if it ever did.
fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

/// The external metrics group, served only with `--serve-external-metrics`.
pub const EXTERNAL_GROUP: &str = "external.metrics.k8s.io";

/// Its one version (k8s.io/metrics pkg/apis/external_metrics/v1beta1).
pub const EXTERNAL_GROUP_VERSION: &str = "external.metrics.k8s.io/v1beta1";

fn external_group() -> APIGroup {
    let version = GroupVersionForDiscovery {
        group_version: EXTERNAL_GROUP_VERSION.to_owned(),
        version: "v1beta1".to_owned(),
    };
    APIGroup {
        name: EXTERNAL_GROUP.to_owned(),
        preferred_version: Some(version.clone()),
        server_address_by_client_cidrs: None,
        versions: vec![version],
    }
}

/// `GET /apis`: an APIGroupList with our group (and the external one when served). k8s-openapi
/// writes `kind`/`apiVersion` on every `APIGroup`, but Go leaves the `TypeMeta` of list items
/// empty [apimachinery: pkg/apis/meta/v1/types.go `APIGroupList`; spec §1.2], so they are taken
/// off the items.
pub fn api_group_list(external: bool) -> Vec<u8> {
    let mut groups = vec![group()];
    if external {
        groups.push(external_group());
    }
    let mut body = serde_json::to_value(APIGroupList { groups }).unwrap_or_default();
    if let Some(groups) = body.get_mut("groups").and_then(Value::as_array_mut) {
        for g in groups.iter_mut().filter_map(Value::as_object_mut) {
            g.remove("kind");
            g.remove("apiVersion");
        }
    }
    body.to_string().into_bytes()
}

/// `GET /apis/custom.metrics.k8s.io`: the APIGroup, v1beta2 preferred.
pub fn api_group() -> Vec<u8> {
    to_json(&group())
}

/// `GET /apis/external.metrics.k8s.io`.
pub fn external_api_group() -> Vec<u8> {
    to_json(&external_group())
}

/// `GET /apis/external.metrics.k8s.io/v1beta1`: one namespaced resource per served metric, as
/// the Go adapters list them (custom-metrics-apiserver `installer.go`, kind
/// `ExternalMetricValueList`).
pub fn external_resource_list(metrics: &[String]) -> Vec<u8> {
    to_json(&APIResourceList {
        group_version: EXTERNAL_GROUP_VERSION.to_owned(),
        resources: metrics
            .iter()
            .map(|m| APIResource {
                name: m.clone(),
                singular_name: String::new(),
                namespaced: true,
                kind: "ExternalMetricValueList".to_owned(),
                verbs: vec!["get".to_owned()],
                ..APIResource::default()
            })
            .collect(),
    })
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ExternalItem<'a> {
    metric_name: &'a str,
    metric_labels: &'a std::collections::BTreeMap<String, String>,
    timestamp: String,
    value: String,
}

/// An `ExternalMetricValueList` with one item: `metric`'s value (milli-units) at `time`, with
/// `labels` as its `metricLabels`.
pub fn external_metric_value_list(
    metric: &str,
    labels: &std::collections::BTreeMap<String, String>,
    milli: i64,
    time: SystemTime,
) -> Vec<u8> {
    serde_json::to_vec(&List {
        kind: "ExternalMetricValueList",
        api_version: EXTERNAL_GROUP_VERSION,
        metadata: Empty {},
        items: vec![ExternalItem {
            metric_name: metric,
            metric_labels: labels,
            timestamp: timestamp(time),
            value: quantity::format_milli(milli),
        }],
    })
    // Plain structs and a string map: serializing cannot fail.
    .unwrap_or_default()
}

/// `GET /apis/custom.metrics.k8s.io/{version}`: one `{resource}/{metric}` entry per served pair,
/// in the order given (the store's: for the scrape source every `pods/<m>`, then every
/// `namespaces/<m>`). Scope follows the resource, so it is consistent per parent resource. An
/// empty list is a valid (empty) document.
pub fn api_resource_list(version: Version, served: &[(&'static ResourceInfo, String)]) -> Vec<u8> {
    let resources = served
        .iter()
        .map(|(resource, metric)| APIResource {
            name: format!("{}/{metric}", resource.path()),
            singular_name: String::new(),
            namespaced: resource.namespaced,
            kind: "MetricValueList".to_owned(),
            verbs: vec!["get".to_owned()],
            ..APIResource::default()
        })
        .collect();
    to_json(&APIResourceList {
        group_version: version.group_version().to_owned(),
        resources,
    })
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

/// RFC 3339 UTC with second precision, as `metav1.Time` marshals. A time before 1970 (which
/// humantime cannot format: it panics) is written as the epoch.
pub fn timestamp(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t.max(SystemTime::UNIX_EPOCH)).to_string()
}

/// A `MetricValueList` in the shape of `version`. `selector` is the echoed
/// `metricLabelSelector` as a LabelSelector (`None`: `null`).
///
/// Written directly rather than through serde structs: this is the body of every HPA read, and
/// per item serde escaped a dozen keys and constants, formatted a timestamp and allocated four
/// strings. Here what every item shares (the metric fragment, a pod list's namespace) is
/// rendered once, a timestamp once per distinct second, and only names are escaped per item.
/// The bytes are the serde rendering's (field order included): see the tests.
pub fn metric_value_list(
    version: Version,
    metric: &str,
    selector: Option<&LabelSelector>,
    items: &[Item],
) -> Vec<u8> {
    // `null` or the selector object; serializing a LabelSelector cannot fail.
    let selector = serde_json::to_vec(&selector).unwrap_or_else(|_| b"null".to_vec());
    let mut shared = Vec::with_capacity(64 + metric.len() + selector.len());
    match version {
        Version::V1beta2 => {
            shared.extend_from_slice(b",\"metric\":{\"name\":");
            json_str(&mut shared, metric);
            shared.extend_from_slice(b",\"selector\":");
            shared.extend_from_slice(&selector);
            shared.push(b'}');
        }
        Version::V1beta1 => {
            shared.extend_from_slice(b",\"metricName\":");
            json_str(&mut shared, metric);
        }
    }
    let mut out = Vec::with_capacity(96 + items.len() * (160 + shared.len()));
    out.extend_from_slice(b"{\"kind\":\"MetricValueList\",\"apiVersion\":");
    json_str(&mut out, version.group_version());
    out.extend_from_slice(b",\"metadata\":{},\"items\":[");
    let mut pod_prefix = PodPrefix::default();
    let mut stamp = Stamp::default();
    for (k, item) in items.iter().enumerate() {
        if k > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"describedObject\":");
        match &item.described {
            Described::Pod { namespace, name } => {
                out.extend_from_slice(pod_prefix.of(namespace));
                json_str(&mut out, name);
                out.extend_from_slice(b",\"apiVersion\":\"v1\"}");
            }
            Described::Namespace { name } => {
                out.extend_from_slice(b"{\"kind\":\"Namespace\",\"name\":");
                json_str(&mut out, name);
                out.extend_from_slice(b",\"apiVersion\":\"v1\"}");
            }
            Described::Object {
                kind,
                api_version,
                namespace,
                name,
            } => {
                out.extend_from_slice(b"{\"kind\":");
                json_str(&mut out, kind);
                if let Some(namespace) = namespace {
                    out.extend_from_slice(b",\"namespace\":");
                    json_str(&mut out, namespace);
                }
                out.extend_from_slice(b",\"name\":");
                json_str(&mut out, name);
                out.extend_from_slice(b",\"apiVersion\":");
                json_str(&mut out, api_version);
                out.push(b'}');
            }
        }
        out.extend_from_slice(&shared);
        out.extend_from_slice(b",\"timestamp\":\"");
        out.extend_from_slice(stamp.of(item.time.wall).as_bytes());
        out.extend_from_slice(b"\",\"value\":\"");
        out.extend_from_slice(quantity::format_milli(item.milli).as_bytes());
        out.push(b'"');
        if version == Version::V1beta1 {
            out.extend_from_slice(b",\"selector\":");
            out.extend_from_slice(&selector);
        }
        out.push(b'}');
    }
    out.extend_from_slice(b"]}");
    out
}

/// A JSON string, escaped as serde_json escapes it.
fn json_str(out: &mut Vec<u8>, s: &str) {
    // Writing into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// `{"kind":"Pod","namespace":<ns>,"name":` of the last namespace seen: a pod list has one.
#[derive(Default)]
struct PodPrefix {
    namespace: String,
    rendered: Vec<u8>,
}

impl PodPrefix {
    fn of(&mut self, namespace: &str) -> &[u8] {
        if self.rendered.is_empty() || self.namespace != namespace {
            self.namespace.clear();
            self.namespace.push_str(namespace);
            self.rendered.clear();
            self.rendered
                .extend_from_slice(b"{\"kind\":\"Pod\",\"namespace\":");
            json_str(&mut self.rendered, namespace);
            self.rendered.extend_from_slice(b",\"name\":");
        }
        &self.rendered
    }
}

/// The [`timestamp`] of the last whole second seen: the items of one answer were mostly read
/// within the same few seconds.
#[derive(Default)]
struct Stamp {
    second: Option<u64>,
    rendered: String,
}

impl Stamp {
    fn of(&mut self, t: SystemTime) -> &str {
        let second = t
            .duration_since(SystemTime::UNIX_EPOCH)
            .ok()
            .map(|d| d.as_secs());
        if second.is_none() || second != self.second {
            self.second = second;
            self.rendered = timestamp(t);
        }
        &self.rendered
    }
}

/// A `metav1.Status` failure body with a code, reason and message (spec §3); `details` names
/// the object a 403 is about. The only place a `Status` is built: see [`super::error::ApiError`].
pub fn status(
    code: u16,
    reason: &str,
    message: impl Into<String>,
    details: Option<StatusDetails>,
) -> Status {
    Status {
        code: Some(i32::from(code)),
        details,
        message: Some(message.into()),
        metadata: ListMeta::default(),
        reason: Some(reason.to_owned()),
        status: Some("Failure".to_owned()),
    }
}

/// The JSON body of a `Status` (k8s-openapi writes `kind: Status` and `apiVersion: v1`).
pub fn status_body(status: &Status) -> Vec<u8> {
    to_json(status)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SampleTime;
    use std::time::Duration;

    #[derive(Serialize)]
    struct ObjectReference<'a> {
        kind: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        namespace: Option<&'a str>,
        name: &'a str,
        #[serde(rename = "apiVersion")]
        api_version: &'a str,
    }

    /// The `describedObject` of a value.
    fn reference(described: &Described) -> ObjectReference<'_> {
        match described {
            Described::Pod { namespace, name } => ObjectReference {
                kind: "Pod",
                namespace: Some(namespace),
                name,
                api_version: "v1",
            },
            Described::Namespace { name } => ObjectReference {
                kind: "Namespace",
                namespace: None,
                name,
                api_version: "v1",
            },
            Described::Object {
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

    #[derive(Serialize)]
    struct MetricIdentifier<'a> {
        name: &'a str,
        selector: Option<&'a LabelSelector>,
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
        selector: Option<&'a LabelSelector>,
    }

    /// The serde rendering of [`metric_value_list`]: the reference its writer is tested against.
    fn metric_value_list_serde(
        version: Version,
        metric: &str,
        selector: Option<&LabelSelector>,
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
                        described_object: reference(&i.described),
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
                        described_object: reference(&i.described),
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

    /// Items of every shape, names that need escaping, values and times across seconds (and one
    /// before the epoch), with and without an echoed selector.
    fn varied_items() -> Vec<Item> {
        let now = crate::clock::Moment::now();
        let at =
            |ms: u64| SampleTime::stamped(SystemTime::UNIX_EPOCH + Duration::from_millis(ms), now);
        let pod = |ns: &str, name: &str| Described::Pod {
            namespace: ns.into(),
            name: name.into(),
        };
        vec![
            Item {
                described: pod("chat", "ws-1"),
                milli: 5000,
                time: at(1_748_779_205_900),
            },
            Item {
                described: pod("chat", "ws-2"),
                milli: 1500,
                time: at(1_748_779_205_100),
            },
            Item {
                described: pod("chat", "w\"s\\3\u{7}é"),
                milli: -3000,
                time: at(1_748_779_206_000),
            },
            Item {
                described: pod("other", "ws-4"),
                milli: i64::MIN,
                time: at(1_748_779_205_000),
            },
            Item {
                described: pod("chat", "ws-5"),
                milli: i64::MAX,
                time: at(0),
            },
            Item {
                described: Described::Namespace {
                    name: "chat".into(),
                },
                milli: 0,
                time: SampleTime::stamped(SystemTime::UNIX_EPOCH - Duration::from_secs(5), now),
            },
            Item {
                described: Described::Object {
                    kind: "Deployment",
                    api_version: "apps/v1",
                    namespace: Some("chat".into()),
                    name: "ws".into(),
                },
                milli: 120_000_000,
                time: at(1_748_779_207_000),
            },
            Item {
                described: Described::Object {
                    kind: "Node",
                    api_version: "v1",
                    namespace: None,
                    name: "node-\u{1}".into(),
                },
                milli: 1,
                time: at(1_748_779_207_999),
            },
        ]
    }

    #[test]
    fn metric_value_list_writes_the_serde_rendering_byte_for_byte() {
        let selector = LabelSelector {
            match_labels: Some([("route".to_owned(), "ch\"at".to_owned())].into()),
            ..LabelSelector::default()
        };
        let items = varied_items();
        for version in VERSIONS {
            for sel in [None, Some(&selector)] {
                for metric in ["websocket_connections", "we\"ird"] {
                    for n in [0, 1, 2, items.len()] {
                        let fast = metric_value_list(version, metric, sel, &items[..n]);
                        let serde = metric_value_list_serde(version, metric, sel, &items[..n]);
                        assert_eq!(
                            String::from_utf8_lossy(&fast),
                            String::from_utf8_lossy(&serde),
                            "{version:?}, selector {sel:?}, metric {metric}, {n} items"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn timestamps_are_rfc3339_utc_seconds() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_748_779_205_900);
        assert_eq!(timestamp(t), "2025-06-01T12:00:05Z");
        let before_1970 = SystemTime::UNIX_EPOCH - Duration::from_secs(5);
        assert_eq!(timestamp(before_1970), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn resource_list_is_never_empty_and_has_consistent_scope() {
        let body: Value = serde_json::from_slice(&api_resource_list(
            Version::V1beta1,
            &[
                (crate::store::resource::pods(), "m".into()),
                (crate::store::resource::namespaces(), "m".into()),
            ],
        ))
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
        let list: Value = serde_json::from_slice(&api_group_list(false)).expect("json");
        assert!(list["groups"][0].get("kind").is_none());
    }
}
