//! What a request asks to do, as SubjectAccessReview attributes (spec §5.4), derived from the
//! method and URL the way the Go stack's request parser does it
//! [kubernetes/apiserver: pkg/endpoints/request/requestinfo.go `NewRequestInfo`].

use http::Method;
use percent_encoding::percent_decode_str;

/// The attributes of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attributes {
    /// A request for an API object (`/apis/{group}/{version}/…` with at least a resource).
    Resource(ResourceAttributes),
    /// Anything else: discovery (`/apis`, `/apis/{g}`, `/apis/{g}/{v}`), `/openapi/v2`, …
    NonResource {
        /// Lower-case HTTP method (`get`).
        verb: String,
        /// The decoded URL path.
        path: String,
    },
}

/// Resource attributes, as in `authorization.k8s.io/v1` `ResourceAttributes`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ResourceAttributes {
    /// `get`, `list`, `watch`, `create`, …
    pub verb: String,
    /// Namespace, empty for cluster-scoped requests.
    pub namespace: String,
    /// API group (`custom.metrics.k8s.io`); empty for the core group.
    pub group: String,
    /// API version (`v1beta2`).
    pub version: String,
    /// Resource (`pods`, `metrics`, `deployments.apps`).
    pub resource: String,
    /// Subresource (`websocket_connections`), may be empty.
    pub subresource: String,
    /// Object name, `*` for the HPA's wildcard read, may be empty.
    pub name: String,
}

/// Derives the attributes of `method` on `path` (still percent-encoded) with `query`.
///
/// Rules of `requestinfo.go`: the path is decoded before it is split; `/apis` needs a group, a
/// version and at least a resource to be a resource request (`/api` a version and a resource);
/// after `namespaces/{ns}` the rest is the resource (unless it is `status`/`finalize`);
/// `resource/name/subresource`; a `get` without a name is a `list` (`watch` with `?watch=true`),
/// a `delete` without one a `deletecollection`. The HPA's `pods/*/{metric}` therefore is a `get`
/// of name `*` (spec §5.4 table, first row).
pub fn derive(method: &Method, path: &str, query: Option<&str>) -> Attributes {
    let decoded = percent_decode_str(path).decode_utf8_lossy().into_owned();
    let non_resource = |decoded: String| Attributes::NonResource {
        verb: method.as_str().to_ascii_lowercase(),
        path: decoded,
    };
    let parts: Vec<&str> = decoded
        .trim_matches('/')
        .split('/')
        .filter(|p| !p.is_empty())
        .collect();
    let (group, rest) = match parts.as_slice() {
        ["apis", group, rest @ ..] if rest.len() >= 2 => (*group, rest),
        ["api", rest @ ..] if rest.len() >= 2 => ("", rest),
        _ => return non_resource(decoded),
    };
    let version = rest[0];
    let mut current = &rest[1..];
    let mut verb = match *method {
        Method::POST => "create",
        Method::GET | Method::HEAD => "get",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE => "delete",
        _ => "",
    }
    .to_owned();
    // `/{specialVerb}/…` (deprecated `watch`, and `proxy`).
    if matches!(current.first(), Some(&("watch" | "proxy"))) {
        if current.len() < 2 {
            return non_resource(decoded);
        }
        verb = current[0].to_owned();
        current = &current[1..];
    }
    let mut namespace = "";
    if current.first() == Some(&"namespaces") && current.len() > 1 {
        namespace = current[1];
        if current.len() > 2 && !matches!(current[2], "status" | "finalize") {
            current = &current[2..];
        }
    }
    let mut attrs = ResourceAttributes {
        namespace: namespace.to_owned(),
        group: group.to_owned(),
        version: version.to_owned(),
        ..ResourceAttributes::default()
    };
    if current.len() >= 3 && verb != "proxy" {
        attrs.subresource = current[2].to_owned();
    }
    if current.len() >= 2 {
        attrs.name = current[1].to_owned();
    }
    if let Some(resource) = current.first() {
        attrs.resource = (*resource).to_owned();
    }
    if attrs.name.is_empty() && verb == "get" {
        let watch = query.is_some_and(|q| {
            form_urlencoded::parse(q.as_bytes())
                .any(|(k, v)| k == "watch" && matches!(v.as_ref(), "true" | "1"))
        });
        verb = if watch { "watch" } else { "list" }.to_owned();
    }
    if attrs.name.is_empty() && verb == "delete" {
        verb = "deletecollection".to_owned();
    }
    attrs.verb = verb;
    Attributes::Resource(attrs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(verb: &str, ns: &str, g: &str, v: &str, r: &str, sub: &str, name: &str) -> Attributes {
        Attributes::Resource(ResourceAttributes {
            verb: verb.into(),
            namespace: ns.into(),
            group: g.into(),
            version: v.into(),
            resource: r.into(),
            subresource: sub.into(),
            name: name.into(),
        })
    }

    const CM: &str = "custom.metrics.k8s.io";

    #[test]
    fn every_path_form_of_spec_5_4_gets_its_attributes() {
        let get = Method::GET;
        let cases = [
            (
                "/apis/custom.metrics.k8s.io/v1beta2/namespaces/chat/pods/%2A/websocket_connections",
                None,
                res(
                    "get",
                    "chat",
                    CM,
                    "v1beta2",
                    "pods",
                    "websocket_connections",
                    "*",
                ),
            ),
            (
                "/apis/custom.metrics.k8s.io/v1beta2/namespaces/chat/pods/*/websocket_connections",
                Some("labelSelector=app%3Dws"),
                res(
                    "get",
                    "chat",
                    CM,
                    "v1beta2",
                    "pods",
                    "websocket_connections",
                    "*",
                ),
            ),
            (
                "/apis/custom.metrics.k8s.io/v1beta1/namespaces/chat/pods/ws-0/websocket_connections",
                None,
                res(
                    "get",
                    "chat",
                    CM,
                    "v1beta1",
                    "pods",
                    "websocket_connections",
                    "ws-0",
                ),
            ),
            (
                "/apis/custom.metrics.k8s.io/v1beta2/namespaces/chat/deployments.apps/ws/websocket_connections",
                None,
                res(
                    "get",
                    "chat",
                    CM,
                    "v1beta2",
                    "deployments.apps",
                    "websocket_connections",
                    "ws",
                ),
            ),
            (
                "/apis/custom.metrics.k8s.io/v1beta2/namespaces/chat/metrics/websocket_connections",
                None,
                res(
                    "get",
                    "chat",
                    CM,
                    "v1beta2",
                    "metrics",
                    "",
                    "websocket_connections",
                ),
            ),
            (
                "/apis/custom.metrics.k8s.io/v1beta2/nodes/node-1/websocket_connections",
                None,
                res(
                    "get",
                    "",
                    CM,
                    "v1beta2",
                    "nodes",
                    "websocket_connections",
                    "node-1",
                ),
            ),
            (
                "/apis/external.metrics.k8s.io/v1beta1/namespaces/chat/websocket_connections_total",
                Some("labelSelector=a%3Db"),
                res(
                    "list",
                    "chat",
                    "external.metrics.k8s.io",
                    "v1beta1",
                    "websocket_connections_total",
                    "",
                    "",
                ),
            ),
            // custom-metrics-apiserver#68: a malformed path becomes a list of the metric name.
            (
                "/apis/custom.metrics.k8s.io/v1beta1/namespaces/default/work-queue-length",
                None,
                res(
                    "list",
                    "default",
                    CM,
                    "v1beta1",
                    "work-queue-length",
                    "",
                    "",
                ),
            ),
            (
                "/apis/custom.metrics.k8s.io/v1beta2/namespaces/chat",
                None,
                res("get", "chat", CM, "v1beta2", "namespaces", "", "chat"),
            ),
            (
                "/apis/custom.metrics.k8s.io/v1beta2/pods",
                Some("watch=true"),
                res("watch", "", CM, "v1beta2", "pods", "", ""),
            ),
            (
                "/api/v1/namespaces/chat/pods/ws-0",
                None,
                res("get", "chat", "", "v1", "pods", "", "ws-0"),
            ),
        ];
        for (path, query, want) in cases {
            assert_eq!(derive(&get, path, query), want, "{path}");
        }
    }

    #[test]
    fn discovery_and_other_paths_are_non_resource() {
        for path in [
            "/apis",
            "/apis/custom.metrics.k8s.io",
            "/apis/custom.metrics.k8s.io/v1beta2",
            "/apis/custom.metrics.k8s.io/v1beta2/",
            "/openapi/v2",
            "/",
            "/api",
            "/api/v1",
        ] {
            assert_eq!(
                derive(&Method::GET, path, None),
                Attributes::NonResource {
                    verb: "get".into(),
                    path: path.into()
                },
                "{path}"
            );
        }
        assert_eq!(
            derive(&Method::POST, "/openapi/v3", None),
            Attributes::NonResource {
                verb: "post".into(),
                path: "/openapi/v3".into()
            }
        );
    }

    #[test]
    fn other_methods_map_to_their_verbs() {
        let p = "/apis/custom.metrics.k8s.io/v1beta2/namespaces/chat/pods/ws-0/m";
        for (method, verb) in [
            (Method::POST, "create"),
            (Method::PUT, "update"),
            (Method::PATCH, "patch"),
            (Method::DELETE, "delete"),
            (Method::HEAD, "get"),
        ] {
            let Attributes::Resource(a) = derive(&method, p, None) else {
                panic!("resource expected");
            };
            assert_eq!(a.verb, verb);
        }
        let Attributes::Resource(a) = derive(
            &Method::DELETE,
            "/apis/custom.metrics.k8s.io/v1beta2/namespaces/chat/pods",
            None,
        ) else {
            panic!("resource expected");
        };
        assert_eq!(a.verb, "deletecollection");
    }
}
