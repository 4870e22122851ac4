//! The axum middleware in front of the API: authenticate, strip identity headers, authorize, and
//! answer 401/403/500 as Kubernetes `Status` bodies (the one place auth errors become HTTP).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::header;

use super::attributes::{self, Attributes};
use super::authn::User;
use super::{Auth, Authenticated, Decision};
use crate::api::ApiError;
use crate::api::wire::StatusDetails;
use crate::server::client_cert::PeerCertificates;
use crate::telemetry::{AuthOutcome, Telemetry};

/// The middleware's state: the authenticator/authorizer and where decisions are counted.
#[derive(Debug, Clone)]
pub(crate) struct AuthLayer {
    /// Authentication and authorization.
    pub auth: Arc<Auth>,
    /// `ws_metrics_adapter_auth_decisions_total`.
    pub telemetry: Arc<Telemetry>,
}

/// The 401 answer.
pub(crate) fn unauthorized() -> ApiError {
    ApiError::Unauthorized
}

/// The 403 answer in the Go stack's words [apiserver: pkg/endpoints/handlers/responsewriters/errors.go
/// `forbiddenMessage`, `Forbidden`; apimachinery: pkg/api/errors/errors.go `NewForbidden`].
pub(crate) fn forbidden(user: &User, attrs: &Attributes, reason: &str) -> ApiError {
    let with_reason = |message: String| {
        if reason.is_empty() {
            message
        } else {
            format!("{message}: {reason}")
        }
    };
    match attrs {
        Attributes::NonResource { verb, path } => ApiError::Forbidden {
            message: format!(
                "forbidden: {}",
                with_reason(format!("User {:?} cannot {verb} path {path:?}", user.name))
            ),
            details: None,
        },
        Attributes::Resource(r) => {
            let resource = if r.subresource.is_empty() {
                r.resource.clone()
            } else {
                format!("{}/{}", r.resource, r.subresource)
            };
            let msg = with_reason(if r.namespace.is_empty() {
                format!(
                    "User {:?} cannot {} resource {resource:?} in API group {:?} at the cluster scope",
                    user.name, r.verb, r.group
                )
            } else {
                format!(
                    "User {:?} cannot {} resource {resource:?} in API group {:?} in the namespace {:?}",
                    user.name, r.verb, r.group, r.namespace
                )
            });
            // Go puts the resource in `kind` for these errors; empty fields are omitted.
            let gr = if r.group.is_empty() {
                r.resource.clone()
            } else {
                format!("{}.{}", r.resource, r.group)
            };
            let message = if r.name.is_empty() {
                format!("{gr} is forbidden: {msg}")
            } else {
                format!("{gr} {:?} is forbidden: {msg}", r.name)
            };
            let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_owned());
            ApiError::Forbidden {
                message,
                details: Some(Box::new(StatusDetails {
                    name: non_empty(&r.name),
                    group: non_empty(&r.group),
                    kind: non_empty(&r.resource),
                    ..StatusDetails::default()
                })),
            }
        }
    }
}

/// 500 when a review call failed: the request fails closed; the cause is logged, not sent.
pub(crate) fn review_failed() -> ApiError {
    ApiError::ReviewFailed
}

/// Middleware: `axum::middleware::from_fn_with_state(AuthLayer { .. },
/// layer::authenticate_and_authorize)`. Every decision is counted by outcome.
pub(crate) async fn authenticate_and_authorize(
    State(layer): State<AuthLayer>,
    req: Request,
    next: Next,
) -> Response {
    let (outcome, response) = decide(&layer.auth, req, next).await;
    layer.telemetry.count_auth(outcome);
    response
}

async fn decide(auth: &Auth, mut req: Request, next: Next) -> (AuthOutcome, Response) {
    let path = req.uri().path().to_owned();
    if auth.always_allowed(&path) {
        strip_identity(auth, &mut req);
        return (AuthOutcome::AlwaysAllowed, next.run(req).await);
    }
    let chain = req.extensions().get::<PeerCertificates>().cloned();
    let user = match auth
        .authenticate(req.headers(), chain.as_ref().map(|c| &c.0[..]))
        .await
    {
        Ok(Authenticated::User(user)) => user,
        Ok(Authenticated::Unauthorized) => {
            tracing::debug!(%path, client_cert = chain.is_some(), "401: no valid credentials");
            return (AuthOutcome::Unauthenticated, unauthorized().into_response());
        }
        Err(e) => {
            tracing::warn!(error = %e, %path, "401: authentication failed");
            return (
                AuthOutcome::AuthenticationFailed,
                unauthorized().into_response(),
            );
        }
    };
    strip_identity(auth, &mut req);
    let attrs = attributes::derive(req.method(), &path, req.uri().query());
    match auth.authorize(&user, &attrs).await {
        Ok(Decision::Allow) => (AuthOutcome::Allowed, next.run(req).await),
        Ok(Decision::Deny(reason)) => {
            tracing::debug!(user = %user.name, %path, %reason, "403: denied by SubjectAccessReview");
            (
                AuthOutcome::Forbidden,
                forbidden(&user, &attrs, &reason).into_response(),
            )
        }
        Err(e) => {
            tracing::warn!(error = %e, user = %user.name, %path, "500: authorization failed closed");
            (
                AuthOutcome::AuthorizationFailed,
                review_failed().into_response(),
            )
        }
    }
}

/// Removes the front-proxy identity headers and the bearer token, so nothing behind this layer
/// can mistake them for an identity.
fn strip_identity(auth: &Auth, req: &mut Request) {
    let names: Vec<header::HeaderName> = req
        .headers()
        .keys()
        .filter(|name| auth.is_identity_header(name.as_str()))
        .cloned()
        .collect();
    for name in names {
        req.headers_mut().remove(name);
    }
    req.headers_mut().remove(header::AUTHORIZATION);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::wire;
    use serde_json::json;

    fn user() -> User {
        User {
            name: "jane".into(),
            ..User::default()
        }
    }

    #[test]
    fn forbidden_messages_have_the_go_shape() {
        let a = attributes::derive(
            &http::Method::GET,
            "/apis/custom.metrics.k8s.io/v1beta2/namespaces/chat/pods/%2A/websocket_connections",
            None,
        );
        let body: serde_json::Value =
            serde_json::from_slice(&wire::status_body(&forbidden(&user(), &a, "").status()))
                .expect("json");
        assert_eq!(
            body,
            json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",
                "message":"pods.custom.metrics.k8s.io \"*\" is forbidden: User \"jane\" cannot get resource \"pods/websocket_connections\" in API group \"custom.metrics.k8s.io\" in the namespace \"chat\"",
                "reason":"Forbidden",
                "details":{"name":"*","group":"custom.metrics.k8s.io","kind":"pods"},
                "code":403})
        );
        let a = attributes::derive(
            &http::Method::GET,
            "/apis/custom.metrics.k8s.io/v1beta2/nodes/n1/m",
            None,
        );
        assert_eq!(
            forbidden(&user(), &a, "no RBAC").to_string(),
            "nodes.custom.metrics.k8s.io \"n1\" is forbidden: User \"jane\" cannot get resource \"nodes/m\" in API group \"custom.metrics.k8s.io\" at the cluster scope: no RBAC"
        );
        let a = attributes::derive(
            &http::Method::GET,
            "/apis/custom.metrics.k8s.io/v1beta2",
            None,
        );
        let s = forbidden(&user(), &a, "").status();
        assert_eq!(
            s.message.as_deref().unwrap_or_default(),
            "forbidden: User \"jane\" cannot get path \"/apis/custom.metrics.k8s.io/v1beta2\""
        );
        assert!(s.details.is_none());
        let body: serde_json::Value =
            serde_json::from_slice(&wire::status_body(&unauthorized().status())).expect("json");
        assert_eq!(
            body,
            json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",
                "message":"Unauthorized","reason":"Unauthorized","code":401})
        );
    }
}
