//! Turns a request URI into what it asks for: a discovery document or a metric read in one of the
//! path forms A–E of spec §2.1, with each segment percent-decoded (`%2A` → `*`) and the query
//! form-decoded (`+` → space).

use std::borrow::Cow;

use percent_encoding::percent_decode_str;

use super::wire::{EXTERNAL_GROUP, GROUP, Version};

/// What a request path addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `/apis`.
    GroupList,
    /// `/apis/custom.metrics.k8s.io`.
    Group,
    /// `/apis/custom.metrics.k8s.io/{version}`.
    ResourceList(Version),
    /// A metric read under `/apis/custom.metrics.k8s.io/{version}/…`.
    Metric {
        /// Version of the path; the body answers in it.
        version: Version,
        /// Which objects.
        target: Target,
        /// Metric name, exactly as requested.
        metric: String,
    },
    /// `/apis/external.metrics.k8s.io` (served only with `--serve-external-metrics`).
    ExternalGroup,
    /// `/apis/external.metrics.k8s.io/v1beta1`.
    ExternalResourceList,
    /// `/apis/external.metrics.k8s.io/v1beta1/namespaces/{ns}/{metric}`, the only read form of
    /// that group (k8s.io/metrics external_metrics/v1beta1).
    ExternalMetric {
        /// Namespace.
        namespace: String,
        /// Metric name, exactly as requested.
        metric: String,
    },
}

/// The objects a metric read is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Form B for pods: `namespaces/{ns}/pods/*/{m}`.
    AllPods {
        /// Namespace.
        namespace: String,
    },
    /// Form A for pods: `namespaces/{ns}/pods/{name}/{m}`.
    Pod {
        /// Namespace.
        namespace: String,
        /// Pod name.
        name: String,
    },
    /// Form E: `namespaces/{ns}/metrics/{m}`.
    Namespace {
        /// Namespace.
        namespace: String,
    },
    /// Forms A–D for a resource other than pods (`services`, `deployments.apps`, `nodes`, …):
    /// the scrape source's watched objects, or the Prometheus source's rules.
    Object {
        /// The group-resource as written in the path.
        resource: String,
        /// Namespace (forms A and B); `None` for cluster-scoped forms C and D.
        namespace: Option<String>,
        /// Object name; `None` for `*` (forms B and D).
        name: Option<String>,
    },
}

/// Why a path is not served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathError {
    /// No such route (404, "the server could not find the requested resource").
    NotFound,
    /// A route shape we know, written wrongly (400 with this message).
    Invalid(String),
}

fn decode(segment: &str) -> Result<Cow<'_, str>, PathError> {
    let decoded = percent_decode_str(segment).decode_utf8().map_err(|_| {
        PathError::Invalid(format!(
            "invalid request path: segment {segment:?} is not UTF-8"
        ))
    })?;
    if decoded.contains('/') {
        return Err(PathError::Invalid(format!(
            "invalid request path: segment {segment:?} contains an encoded '/'"
        )));
    }
    Ok(decoded)
}

/// A Kubernetes object name as accepted in a path (DNS subdomain characters).
fn check_name(what: &str, s: &str) -> Result<(), PathError> {
    let ok = !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(PathError::Invalid(format!(
            "invalid request path: {what} {s:?} is not a valid Kubernetes name"
        )))
    }
}

/// A metric name must be one path segment (`IsValidPathSegmentName`): not `.`/`..`, no `%`.
fn check_metric(s: &str) -> Result<(), PathError> {
    if s.is_empty() || s == "." || s == ".." || s.contains('%') {
        return Err(PathError::Invalid(format!(
            "invalid request path: {s:?} is not a valid metric name"
        )));
    }
    Ok(())
}

/// Parses a raw (still percent-encoded) request path.
///
/// # Errors
/// [`PathError::NotFound`] for paths outside the API, [`PathError::Invalid`] for malformed ones.
pub fn parse(raw_path: &str) -> Result<Route, PathError> {
    let trimmed = raw_path.strip_suffix('/').unwrap_or(raw_path);
    let mut raw = trimmed.split('/');
    // A path starts with '/', so the first piece is empty.
    if raw.next() != Some("") {
        return Err(PathError::NotFound);
    }
    let segments: Vec<Cow<'_, str>> = match raw.map(decode).collect::<Result<_, _>>() {
        Ok(s) => s,
        // Outside our group a bad escape is just a path we do not serve.
        Err(_) if !trimmed.starts_with("/apis/custom.metrics.k8s.io/") => {
            return Err(PathError::NotFound);
        }
        Err(e) => return Err(e),
    };
    let segs: Vec<&str> = segments.iter().map(AsRef::as_ref).collect();
    match segs.as_slice() {
        ["apis"] => Ok(Route::GroupList),
        ["apis", g] if *g == GROUP => Ok(Route::Group),
        ["apis", g, v] if *g == GROUP => Version::from_segment(v)
            .map(Route::ResourceList)
            .ok_or(PathError::NotFound),
        ["apis", g, v, rest @ ..] if *g == GROUP => {
            let version = Version::from_segment(v).ok_or(PathError::NotFound)?;
            if rest.iter().any(|s| s.is_empty()) {
                return Err(PathError::Invalid(
                    "invalid request path: empty segment".into(),
                ));
            }
            let (target, metric) = metric_target(rest)?;
            check_metric(metric)?;
            Ok(Route::Metric {
                version,
                target,
                metric: metric.to_owned(),
            })
        }
        ["apis", g] if *g == EXTERNAL_GROUP => Ok(Route::ExternalGroup),
        ["apis", g, "v1beta1"] if *g == EXTERNAL_GROUP => Ok(Route::ExternalResourceList),
        ["apis", g, "v1beta1", "namespaces", ns, metric] if *g == EXTERNAL_GROUP => {
            check_name("namespace", ns)?;
            check_metric(metric)?;
            Ok(Route::ExternalMetric {
                namespace: (*ns).to_owned(),
                metric: (*metric).to_owned(),
            })
        }
        _ => Err(PathError::NotFound),
    }
}

fn metric_target<'a>(rest: &[&'a str]) -> Result<(Target, &'a str), PathError> {
    match rest {
        // Form E.
        ["namespaces", ns, "metrics", metric] => {
            check_name("namespace", ns)?;
            Ok((Target::Namespace { namespace: (*ns).to_owned() }, metric))
        }
        // Forms A and B.
        ["namespaces", ns, resource, name, metric] => {
            check_name("namespace", ns)?;
            let target = match *resource {
                // Humans type `pod` with kubectl get --raw; the HPA always sends `pods`.
                "pods" | "pod" if *name == "*" => Target::AllPods { namespace: (*ns).to_owned() },
                "pods" | "pod" => {
                    check_name("pod name", name)?;
                    Target::Pod {
                        namespace: (*ns).to_owned(),
                        name: (*name).to_owned(),
                    }
                }
                other => {
                    let name = if *name == "*" {
                        None
                    } else {
                        check_name("object name", name)?;
                        Some((*name).to_owned())
                    };
                    Target::Object {
                        resource: other.to_owned(),
                        namespace: Some((*ns).to_owned()),
                        name,
                    }
                }
            };
            Ok((target, metric))
        }
        // `namespaces/{ns}/{metric}` is not a form: the Go server answers 400 for it.
        ["namespaces", _, _] => Err(PathError::Invalid(
            "invalid request path: use namespaces/{namespace}/metrics/{metric} for a namespace's metric".into(),
        )),
        // Forms C and D: cluster-scoped resources.
        [resource, name, metric] if *resource != "namespaces" => {
            let name = if *name == "*" {
                None
            } else {
                check_name("object name", name)?;
                Some((*name).to_owned())
            };
            Ok((
                Target::Object {
                    resource: (*resource).to_owned(),
                    namespace: None,
                    name,
                },
                metric,
            ))
        }
        _ => Err(PathError::NotFound),
    }
}

/// The query parameters the API reads; everything else is ignored, as in Go.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query {
    /// `labelSelector`, decoded.
    pub label_selector: Option<String>,
    /// `metricLabelSelector`, decoded.
    pub metric_label_selector: Option<String>,
}

/// Form-decodes a raw query string (`+` is a space, `%XX` a byte).
pub fn parse_query(raw: Option<&str>) -> Query {
    let mut q = Query::default();
    // A repeated parameter keeps its first value, as Go's `url.Values.Get` does.
    for (k, v) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
        match k.as_ref() {
            "labelSelector" if q.label_selector.is_none() => {
                q.label_selector = Some(v.into_owned())
            }
            "metricLabelSelector" if q.metric_label_selector.is_none() => {
                q.metric_label_selector = Some(v.into_owned());
            }
            _ => {}
        }
    }
    q
}

#[cfg(test)]
mod tests {
    use super::*;

    const CM: &str = "/apis/custom.metrics.k8s.io/v1beta2";

    fn route(p: &str) -> Result<Route, PathError> {
        parse(p)
    }

    #[test]
    fn discovery_paths_route_with_or_without_trailing_slash() {
        assert_eq!(route("/apis"), Ok(Route::GroupList));
        assert_eq!(route("/apis/custom.metrics.k8s.io"), Ok(Route::Group));
        assert_eq!(route(CM), Ok(Route::ResourceList(Version::V1beta2)));
        assert_eq!(
            route(&format!("{CM}/")),
            Ok(Route::ResourceList(Version::V1beta2))
        );
        assert_eq!(
            route("/apis/custom.metrics.k8s.io/v1"),
            Err(PathError::NotFound)
        );
        // The external group parses; the handler answers 404 unless it is served.
        assert_eq!(
            route("/apis/external.metrics.k8s.io/v1beta1"),
            Ok(Route::ExternalResourceList)
        );
        assert_eq!(
            route("/apis/external.metrics.k8s.io/v1beta1/namespaces/chat/websocket_connections"),
            Ok(Route::ExternalMetric {
                namespace: "chat".into(),
                metric: "websocket_connections".into(),
            })
        );
        assert_eq!(
            route("/apis/external.metrics.k8s.io/v1beta2"),
            Err(PathError::NotFound)
        );
        assert_eq!(
            route("/apis/external.metrics.k8s.io/v1beta1/namespaces/chat/pods/x/m"),
            Err(PathError::NotFound)
        );
        assert_eq!(route("/openapi/v2"), Err(PathError::NotFound));
        assert_eq!(route("/"), Err(PathError::NotFound));
    }

    #[test]
    fn percent_encoded_wildcard_is_decoded() {
        let want = Ok(Route::Metric {
            version: Version::V1beta2,
            target: Target::AllPods {
                namespace: "chat".into(),
            },
            metric: "websocket_connections".into(),
        });
        assert_eq!(
            route(&format!(
                "{CM}/namespaces/chat/pods/%2A/websocket_connections"
            )),
            want
        );
        assert_eq!(
            route(&format!(
                "{CM}/namespaces/chat/pods/*/websocket_connections"
            )),
            want
        );
        assert_eq!(
            route(&format!(
                "{CM}/namespaces/chat/pod/%2a/websocket_connections"
            )),
            want
        );
    }

    #[test]
    fn forms_a_and_e_and_other_resources() {
        assert_eq!(
            route(&format!("{CM}/namespaces/chat/pods/ws-0/m")),
            Ok(Route::Metric {
                version: Version::V1beta2,
                target: Target::Pod {
                    namespace: "chat".into(),
                    name: "ws-0".into()
                },
                metric: "m".into()
            })
        );
        assert_eq!(
            route("/apis/custom.metrics.k8s.io/v1beta1/namespaces/chat/metrics/m"),
            Ok(Route::Metric {
                version: Version::V1beta1,
                target: Target::Namespace {
                    namespace: "chat".into()
                },
                metric: "m".into()
            })
        );
        assert_eq!(
            route(&format!("{CM}/nodes/%2A/m")),
            Ok(Route::Metric {
                version: Version::V1beta2,
                target: Target::Object {
                    resource: "nodes".into(),
                    namespace: None,
                    name: None,
                },
                metric: "m".into()
            })
        );
        assert_eq!(
            route(&format!("{CM}/namespaces/chat/services/ws/m")),
            Ok(Route::Metric {
                version: Version::V1beta2,
                target: Target::Object {
                    resource: "services".into(),
                    namespace: Some("chat".into()),
                    name: Some("ws".into()),
                },
                metric: "m".into()
            })
        );
        assert!(matches!(
            route(&format!("{CM}/namespaces/chat/deployments.apps/Bad_Name/m")),
            Err(PathError::Invalid(_))
        ));
    }

    #[test]
    fn reference_server_vectors_for_unknown_paths() {
        // custom-metrics-apiserver installer/apiserver_test.go: these are 404.
        for p in ["/blah", "/nodes/foo", "/namespaces/ns/pods/bar"] {
            assert_eq!(route(&format!("{CM}{p}")), Err(PathError::NotFound), "{p}");
        }
        // Three segments under namespaces: 400 invalid request path.
        assert!(matches!(
            route(&format!("{CM}/namespaces/ns/m")),
            Err(PathError::Invalid(_))
        ));
    }

    #[test]
    fn malformed_segments_are_bad_requests() {
        for p in [
            "/namespaces//pods/*/m",
            "/namespaces/ns/pods/*/..",
            "/namespaces/ns/pods/a%2Fb/m",
            "/namespaces/NS!/pods/*/m",
            "/namespaces/ns/pods/*/%ff",
            "/namespaces/ns/pods/Bad_Name/m",
        ] {
            assert!(
                matches!(route(&format!("{CM}{p}")), Err(PathError::Invalid(_))),
                "{p}"
            );
        }
    }

    #[test]
    fn query_is_form_decoded_and_unknown_parameters_ignored() {
        let q = parse_query(Some(
            "labelSelector=tier+in+%28a%2Cb%29&pretty=true&metricLabelSelector=route%3Dchat",
        ));
        assert_eq!(q.label_selector.as_deref(), Some("tier in (a,b)"));
        assert_eq!(q.metric_label_selector.as_deref(), Some("route=chat"));
        assert_eq!(parse_query(None), Query::default());
    }
}
