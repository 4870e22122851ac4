//! Delegated authentication and authorization (spec §5.3–§5.4), between the TLS listener and the
//! API: who is calling (front-proxy headers behind a verified certificate, a client certificate,
//! or a bearer token checked by TokenReview) and may they (SubjectAccessReview), both cached.
//!
//! - [`authn`]: the authentication config (CA bundles, request-header settings) and its pure steps.
//! - [`attributes`]: SubjectAccessReview attributes from method and URL.
//! - `cache`: the bounded TTL cache with single-flight fills both reviews use.
//! - [`flags`]: the generic apiserver's flags.
//! - `layer`: the axum middleware and its 401/403/500 `Status` answers.
//! - `source`: loading and watching ConfigMap `kube-system/extension-apiserver-authentication`.
//!
//! Client certificates are requested but not verified during the TLS handshake (the CAs come from
//! a ConfigMap that changes at run time); the handshake proves possession of the key, and this
//! module verifies the chain per request against the CAs in force, memoised per leaf.

pub mod attributes;
pub mod authn;
pub(crate) mod cache;
pub mod flags;
pub(crate) mod layer;
pub(crate) mod source;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::{HeaderMap, header};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    NonResourceAttributes, ResourceAttributes as SarResourceAttributes, SubjectAccessReview,
    SubjectAccessReviewSpec,
};
use kube::api::PostParams;
use rustls::pki_types::CertificateDer;
use tokio::time::Instant;

use attributes::Attributes;
use authn::{AuthnConfig, CertVerdict, User};
use cache::TtlCache;

/// Errors of the review calls. Every one fails the request closed (401 for authentication, 500 for
/// authorization), never open. `Clone` because the caches hand one call's answer to every request
/// waiting on it; the sources are shared behind `Arc` for that.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The TokenReview call failed.
    #[error("TokenReview failed: {0}")]
    TokenReviewFailed(#[source] Arc<kube::Error>),
    /// The TokenReview call did not answer in time.
    #[error("TokenReview timed out after {0:?}")]
    TokenReviewTimedOut(Duration),
    /// The SubjectAccessReview spec could not be encoded as its cache key.
    #[error("encoding the SubjectAccessReview: {0}")]
    AccessReviewUnencodable(#[source] Arc<serde_json::Error>),
    /// The SubjectAccessReview call failed.
    #[error("SubjectAccessReview failed: {0}")]
    AccessReviewFailed(#[source] Arc<kube::Error>),
    /// The SubjectAccessReview call did not answer in time.
    #[error("SubjectAccessReview timed out after {0:?}")]
    AccessReviewTimedOut(Duration),
}

/// Result of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Group allowed everything without a SubjectAccessReview, as the Go stack's delegating
/// authorizer does (the aggregator's availability probe relies on it)
/// [apiserver: pkg/server/options/authorization.go `AlwaysAllowGroups`].
pub const PRIVILEGED_GROUP: &str = "system:masters";

/// Largest bearer token sent to TokenReview; longer ones are refused (401) without a call.
/// Unit: bytes.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Tunables; the defaults are the Go stack's [apiserver: pkg/server/options/authentication.go
/// `DelegatingAuthenticationOptions` (token cache 10 s, client timeout 10 s),
/// pkg/server/options/authorization.go `DelegatingAuthorizationOptions` (allow/deny cache 10 s,
/// always-allow paths `/healthz`, `/readyz`, `/livez`)].
#[derive(Debug, Clone)]
pub struct Settings {
    /// How long a TokenReview answer (either way) is reused.
    pub token_ttl: Duration,
    /// How long an "allowed" SAR answer is reused.
    pub allow_ttl: Duration,
    /// How long a "denied" SAR answer is reused.
    pub deny_ttl: Duration,
    /// Deadline of one TokenReview or SAR call.
    pub review_timeout: Duration,
    /// Paths served without authentication or authorization; a trailing `*` matches a prefix.
    pub always_allow_paths: Vec<String>,
    /// Keys each cache holds at most.
    pub cache_capacity: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            token_ttl: Duration::from_secs(10),
            allow_ttl: Duration::from_secs(10),
            deny_ttl: Duration::from_secs(10),
            review_timeout: Duration::from_secs(10),
            always_allow_paths: vec!["/healthz".into(), "/readyz".into(), "/livez".into()],
            cache_capacity: 10_000,
        }
    }
}

/// An authorization decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Allowed.
    Allow,
    /// Denied, with the reviewer's reason (may be empty).
    Deny(String),
}

/// How a request was authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authenticated {
    /// A user.
    User(User),
    /// No (valid) credentials: 401.
    Unauthorized,
}

/// Leaf certificates already classified under the current config generation.
#[derive(Debug, Default)]
struct CertMemo {
    generation: u64,
    verdicts: HashMap<Vec<u8>, (Instant, CertVerdict)>,
}

/// How long a certificate verdict is reused (expiry is re-checked after this). Unit: seconds.
const CERT_MEMO_TTL: Duration = Duration::from_secs(60);

/// The authenticator and authorizer; one per process, shared by every request.
pub struct Auth {
    config: ArcSwap<AuthnConfig>,
    generation: AtomicU64,
    loaded: AtomicBool,
    authn_client: kube::Client,
    authz_client: kube::Client,
    settings: Settings,
    tokens: TtlCache<[u8; 32], Option<User>>,
    decisions: TtlCache<String, Decision>,
    certs: Mutex<CertMemo>,
    token_reviews: AtomicU64,
    access_reviews: AtomicU64,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("config", &self.config.load())
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Auth {
    /// An authenticator using `authn_client` for TokenReviews and `authz_client` for
    /// SubjectAccessReviews. No certificate is trusted until [`Auth::set_config`].
    pub fn new(authn_client: kube::Client, authz_client: kube::Client, settings: Settings) -> Self {
        Self {
            config: ArcSwap::from_pointee(AuthnConfig::default()),
            generation: AtomicU64::new(0),
            loaded: AtomicBool::new(false),
            authn_client,
            authz_client,
            tokens: TtlCache::new(settings.cache_capacity),
            decisions: TtlCache::new(settings.cache_capacity),
            settings,
            certs: Mutex::new(CertMemo::default()),
            token_reviews: AtomicU64::new(0),
            access_reviews: AtomicU64::new(0),
        }
    }

    /// Puts a new authentication config in force for the next request.
    pub fn set_config(&self, config: AuthnConfig) {
        self.config.store(Arc::new(config));
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.loaded.store(true, Ordering::SeqCst);
    }

    /// Whether a config has been loaded (readiness).
    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::SeqCst)
    }

    /// The settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// TokenReview calls made so far.
    pub fn token_reviews(&self) -> u64 {
        self.token_reviews.load(Ordering::Relaxed)
    }

    /// Tokens held by the TokenReview cache (bounded by the cache capacity).
    pub fn cached_tokens(&self) -> usize {
        self.tokens.len()
    }

    /// SubjectAccessReview calls made so far.
    pub fn access_reviews(&self) -> u64 {
        self.access_reviews.load(Ordering::Relaxed)
    }

    /// Whether `path` is served without authentication and authorization.
    pub fn always_allowed(&self, path: &str) -> bool {
        self.settings
            .always_allow_paths
            .iter()
            .any(|p| match p.strip_suffix('*') {
                Some(prefix) => path.starts_with(prefix),
                None => p == path,
            })
    }

    /// Whether `name` is a front-proxy identity header under the current config.
    pub fn is_identity_header(&self, name: &str) -> bool {
        self.config
            .load()
            .request_header
            .as_ref()
            .is_some_and(|rh| rh.headers.matches(name))
            || authn::HeaderNames::default().matches(name)
    }

    fn classify(&self, chain: &[CertificateDer<'static>]) -> CertVerdict {
        let Some(leaf) = chain.first() else {
            return CertVerdict::Untrusted;
        };
        let generation = self.generation.load(Ordering::SeqCst);
        let now = Instant::now();
        {
            let memo = self.certs.lock().unwrap_or_else(PoisonError::into_inner);
            if memo.generation == generation
                && let Some((at, verdict)) = memo.verdicts.get(leaf.as_ref())
                && now.duration_since(*at) < CERT_MEMO_TTL
            {
                return verdict.clone();
            }
        }
        let verdict = self.config.load().classify(chain);
        let mut memo = self.certs.lock().unwrap_or_else(PoisonError::into_inner);
        if memo.generation != generation || memo.verdicts.len() >= self.settings.cache_capacity {
            memo.verdicts.clear();
            memo.generation = generation;
        }
        memo.verdicts
            .insert(leaf.as_ref().to_vec(), (now, verdict.clone()));
        verdict
    }

    /// Authenticates a request in the Go stack's order: front proxy (verified certificate plus a
    /// username header), client certificate, bearer token. Anonymous requests are not allowed.
    ///
    /// # Errors
    /// A failed or timed-out TokenReview (the caller answers 401).
    pub async fn authenticate(
        &self,
        headers: &HeaderMap,
        chain: Option<&[CertificateDer<'static>]>,
    ) -> Result<Authenticated> {
        if let Some(chain) = chain {
            match self.classify(chain) {
                CertVerdict::FrontProxy => {
                    let config = self.config.load();
                    if let Some(user) = config
                        .request_header
                        .as_ref()
                        .and_then(|rh| rh.headers.user(headers))
                    {
                        return Ok(Authenticated::User(user.with_authenticated_group()));
                    }
                    // A front-proxy certificate without a user header: try the others.
                    if let CertVerdict::Client(user) = config.classify_client_only(chain) {
                        return Ok(Authenticated::User(user.with_authenticated_group()));
                    }
                }
                CertVerdict::Client(user) => {
                    return Ok(Authenticated::User(user.with_authenticated_group()));
                }
                CertVerdict::Untrusted => {}
            }
        }
        match bearer_token(headers) {
            Some(token) => self.review_token(token).await,
            None => Ok(Authenticated::Unauthorized),
        }
    }

    async fn review_token(&self, token: &str) -> Result<Authenticated> {
        if token.len() > MAX_TOKEN_BYTES {
            return Ok(Authenticated::Unauthorized);
        }
        let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
        let mut key = [0u8; 32];
        key.copy_from_slice(digest.as_ref());
        let user = self
            .tokens
            .get_or_fill(&key, || async {
                self.token_reviews.fetch_add(1, Ordering::Relaxed);
                let review = TokenReview {
                    spec: TokenReviewSpec {
                        token: Some(token.to_owned()),
                        audiences: None,
                    },
                    ..TokenReview::default()
                };
                let api: kube::Api<TokenReview> = kube::Api::all(self.authn_client.clone());
                let timeout = self.settings.review_timeout;
                let answer =
                    tokio::time::timeout(timeout, api.create(&PostParams::default(), &review))
                        .await
                        .map_err(|_| Error::TokenReviewTimedOut(timeout))?
                        .map_err(|e| Error::TokenReviewFailed(Arc::new(e)))?;
                let status = answer.status.unwrap_or_default();
                let user = match (status.authenticated, status.user) {
                    (Some(true), Some(info))
                        if info.username.as_deref().is_some_and(|u| !u.is_empty()) =>
                    {
                        Some(
                            User {
                                name: info.username.unwrap_or_default(),
                                uid: info.uid.unwrap_or_default(),
                                groups: info.groups.unwrap_or_default(),
                                extra: info.extra.unwrap_or_default().into_iter().collect(),
                            }
                            .with_authenticated_group(),
                        )
                    }
                    _ => None,
                };
                Ok((user, self.settings.token_ttl))
            })
            .await?;
        Ok(user.map_or(Authenticated::Unauthorized, Authenticated::User))
    }

    /// Authorizes `user` for `attrs`: members of `system:masters` without a call, everyone else by
    /// a cached SubjectAccessReview.
    ///
    /// # Errors
    /// A failed or timed-out SubjectAccessReview (the caller answers 500).
    pub async fn authorize(&self, user: &User, attrs: &Attributes) -> Result<Decision> {
        if user.groups.iter().any(|g| g == PRIVILEGED_GROUP) {
            return Ok(Decision::Allow);
        }
        let spec = sar_spec(user, attrs);
        // The whole spec is the key, as in the Go webhook authorizer
        // [apiserver: plugin/pkg/authorizer/webhook/webhook.go]. Serializing it cannot fail (plain
        // strings and string maps); if it ever did, fail closed rather than share a key.
        let key = serde_json::to_string(&spec)
            .map_err(|e| Error::AccessReviewUnencodable(Arc::new(e)))?;
        self.decisions
            .get_or_fill(&key, || async {
                self.access_reviews.fetch_add(1, Ordering::Relaxed);
                let review = SubjectAccessReview {
                    spec,
                    ..SubjectAccessReview::default()
                };
                let api: kube::Api<SubjectAccessReview> = kube::Api::all(self.authz_client.clone());
                let timeout = self.settings.review_timeout;
                let answer =
                    tokio::time::timeout(timeout, api.create(&PostParams::default(), &review))
                        .await
                        .map_err(|_| Error::AccessReviewTimedOut(timeout))?
                        .map_err(|e| Error::AccessReviewFailed(Arc::new(e)))?;
                let status = answer.status.unwrap_or_default();
                Ok(if status.allowed && status.denied != Some(true) {
                    (Decision::Allow, self.settings.allow_ttl)
                } else {
                    (
                        Decision::Deny(status.reason.unwrap_or_default()),
                        self.settings.deny_ttl,
                    )
                })
            })
            .await
    }
}

/// The token of `Authorization: Bearer <token>` (scheme case-insensitive)
/// [apiserver: pkg/authentication/request/bearertoken/bearertoken.go].
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() && !token.contains(' '))
        .then_some(token)
}

/// The SubjectAccessReview spec for `user` doing `attrs` (spec §5.4 body).
pub fn sar_spec(user: &User, attrs: &Attributes) -> SubjectAccessReviewSpec {
    let opt = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    let mut spec = SubjectAccessReviewSpec {
        user: Some(user.name.clone()),
        uid: opt(&user.uid),
        groups: Some(user.groups.clone()),
        extra: (!user.extra.is_empty()).then(|| user.extra.clone().into_iter().collect()),
        ..SubjectAccessReviewSpec::default()
    };
    match attrs {
        Attributes::Resource(r) => {
            spec.resource_attributes = Some(SarResourceAttributes {
                verb: opt(&r.verb),
                namespace: opt(&r.namespace),
                group: Some(r.group.clone()),
                version: opt(&r.version),
                resource: opt(&r.resource),
                subresource: opt(&r.subresource),
                name: opt(&r.name),
                ..SarResourceAttributes::default()
            });
        }
        Attributes::NonResource { verb, path } => {
            spec.non_resource_attributes = Some(NonResourceAttributes {
                verb: Some(verb.clone()),
                path: Some(path.clone()),
            });
        }
    }
    spec
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use std::sync::atomic::AtomicUsize;

    use axum::Router;
    use axum::body::Body;
    use bytes::Bytes;
    use http::{HeaderValue, Request, StatusCode};
    use http_body_util::{BodyExt, Full};
    use serde_json::{Value, json};
    use tower::ServiceExt;

    /// A kube-apiserver that answers TokenReviews (`good:<user>`, `masters`, `slow` never answers)
    /// and SAR (user `reader` may get `*/websocket_connections` and non-resource paths; user
    /// `slow-sar` never gets an answer); every SAR spec is recorded.
    fn mock_apiserver(sars: Arc<Mutex<Vec<Value>>>) -> kube::Client {
        let service = tower::service_fn(move |req: Request<kube::client::Body>| {
            let sars = sars.clone();
            async move {
                let path = req.uri().path().to_owned();
                let body = req.into_body().collect().await.expect("body").to_bytes();
                let mut obj: Value = serde_json::from_slice(&body).expect("json");
                if path == "/apis/authentication.k8s.io/v1/tokenreviews" {
                    let token = obj["spec"]["token"].as_str().unwrap_or_default().to_owned();
                    obj["status"] = match token.as_str() {
                        "slow" => {
                            tokio::time::sleep(Duration::from_secs(3600)).await;
                            json!({})
                        }
                        "masters" => {
                            json!({"authenticated": true, "user": {"username": "root", "groups": ["system:masters"]}})
                        }
                        t if t.starts_with("good:") => json!({"authenticated": true,
                            "user": {"username": &t[5..], "uid": "u-1", "groups": ["team"],
                                     "extra": {"authentication.kubernetes.io/credential-id": ["JTI=1"]}}}),
                        _ => json!({"authenticated": false, "error": "invalid token"}),
                    };
                } else if path == "/apis/authorization.k8s.io/v1/subjectaccessreviews" {
                    sars.lock().expect("lock").push(obj["spec"].clone());
                    let spec = &obj["spec"];
                    if spec["user"] == "slow-sar" {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                    }
                    let allowed = spec["user"] == "reader"
                        && (spec["resourceAttributes"]["subresource"] == "websocket_connections"
                            || spec.get("nonResourceAttributes").is_some());
                    obj["status"] = if allowed {
                        json!({"allowed": true})
                    } else {
                        json!({"allowed": false, "reason": "no RBAC"})
                    };
                } else {
                    panic!("unexpected call {path}");
                }
                Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(
                    serde_json::to_vec(&obj).expect("json"),
                ))))
            }
        });
        kube::Client::new(service, "default")
    }

    fn auth_with(settings: Settings) -> (Arc<Auth>, Arc<Mutex<Vec<Value>>>) {
        crate::server::tls::install_provider();
        let sars = Arc::new(Mutex::new(Vec::new()));
        let client = mock_apiserver(sars.clone());
        (Arc::new(Auth::new(client.clone(), client, settings)), sars)
    }

    fn bearer(token: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {token}")).expect("header"),
        );
        h
    }

    const PODS: &str =
        "/apis/custom.metrics.k8s.io/v1beta2/namespaces/chat/pods/%2A/websocket_connections";

    #[tokio::test]
    async fn tokens_are_reviewed_once_per_caller_and_sar_carries_the_user() {
        let (auth, sars) = auth_with(Settings::default());
        let attrs = attributes::derive(&http::Method::GET, PODS, None);
        let mut tasks = Vec::new();
        for _ in 0..100 {
            let auth = auth.clone();
            let attrs = attrs.clone();
            tasks.push(tokio::spawn(async move {
                let Authenticated::User(user) = auth
                    .authenticate(&bearer("good:reader"), None)
                    .await
                    .expect("review")
                else {
                    panic!("authenticated expected");
                };
                auth.authorize(&user, &attrs).await.expect("sar")
            }));
        }
        for t in tasks {
            assert_eq!(t.await.expect("task"), Decision::Allow);
        }
        assert_eq!(auth.token_reviews(), 1);
        assert_eq!(auth.access_reviews(), 1);
        let spec = sars.lock().expect("lock")[0].clone();
        assert_eq!(
            spec,
            json!({"user": "reader", "uid": "u-1",
                "groups": ["team", "system:authenticated"],
                "extra": {"authentication.kubernetes.io/credential-id": ["JTI=1"]},
                "resourceAttributes": {"namespace": "chat", "verb": "get", "group": "custom.metrics.k8s.io",
                    "version": "v1beta2", "resource": "pods", "subresource": "websocket_connections", "name": "*"}})
        );
        // Someone else is denied, and the denial is cached too.
        let Authenticated::User(other) = auth
            .authenticate(&bearer("good:other"), None)
            .await
            .expect("review")
        else {
            panic!("authenticated expected");
        };
        for _ in 0..3 {
            assert_eq!(
                auth.authorize(&other, &attrs).await.expect("sar"),
                Decision::Deny("no RBAC".into())
            );
        }
        assert_eq!(auth.access_reviews(), 2);
        // system:masters needs no SAR.
        let Authenticated::User(root) = auth
            .authenticate(&bearer("masters"), None)
            .await
            .expect("review")
        else {
            panic!("authenticated expected");
        };
        assert_eq!(
            auth.authorize(&root, &attrs).await.expect("no call"),
            Decision::Allow
        );
        assert_eq!(auth.access_reviews(), 2);
        // Bad tokens, missing or malformed headers, oversized tokens: unauthorized.
        assert_eq!(
            auth.authenticate(&bearer("nope"), None)
                .await
                .expect("review"),
            Authenticated::Unauthorized
        );
        assert_eq!(
            auth.authenticate(&HeaderMap::new(), None)
                .await
                .expect("none"),
            Authenticated::Unauthorized
        );
        let mut basic = HeaderMap::new();
        basic.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic YTpi"),
        );
        assert_eq!(
            auth.authenticate(&basic, None).await.expect("none"),
            Authenticated::Unauthorized
        );
        let before = auth.token_reviews();
        let huge = "x".repeat(MAX_TOKEN_BYTES + 1);
        assert_eq!(
            auth.authenticate(&bearer(&huge), None).await.expect("none"),
            Authenticated::Unauthorized
        );
        assert_eq!(
            auth.token_reviews(),
            before,
            "no review for an oversized token"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn review_timeouts_fail_closed() {
        let (auth, _) = auth_with(Settings {
            review_timeout: Duration::from_secs(2),
            ..Settings::default()
        });
        assert!(matches!(
            auth.authenticate(&bearer("slow"), None).await,
            Err(Error::TokenReviewTimedOut(_))
        ));
        let user = User {
            name: "slow-sar".into(),
            ..User::default()
        };
        let attrs = attributes::derive(&http::Method::GET, PODS, None);
        assert!(matches!(
            auth.authorize(&user, &attrs).await,
            Err(Error::AccessReviewTimedOut(_))
        ));
    }

    #[tokio::test]
    async fn thousands_of_distinct_tokens_keep_the_cache_bounded() {
        let (auth, _) = auth_with(Settings {
            cache_capacity: 256,
            ..Settings::default()
        });
        for i in 0..3000 {
            let _ = auth
                .authenticate(&bearer(&format!("bad-{i}")), None)
                .await
                .expect("review");
            assert!(auth.cached_tokens() <= 256);
        }
        assert_eq!(auth.token_reviews(), 3000);
    }

    #[tokio::test(start_paused = true)]
    async fn answers_expire_after_their_ttl() {
        let (auth, _) = auth_with(Settings {
            token_ttl: Duration::from_secs(10),
            allow_ttl: Duration::from_secs(10),
            deny_ttl: Duration::from_secs(3),
            ..Settings::default()
        });
        let attrs = attributes::derive(&http::Method::GET, PODS, None);
        let check = |token: &'static str| {
            let auth = auth.clone();
            let attrs = attrs.clone();
            async move {
                let Authenticated::User(u) = auth
                    .authenticate(&bearer(token), None)
                    .await
                    .expect("review")
                else {
                    panic!("authenticated expected")
                };
                auth.authorize(&u, &attrs).await.expect("sar")
            }
        };
        check("good:reader").await;
        check("good:other").await;
        assert_eq!((auth.token_reviews(), auth.access_reviews()), (2, 2));
        tokio::time::advance(Duration::from_secs(4)).await;
        check("good:reader").await; // allow still cached
        check("good:other").await; // deny expired after 3 s
        assert_eq!((auth.token_reviews(), auth.access_reviews()), (2, 3));
        tokio::time::advance(Duration::from_secs(7)).await;
        check("good:reader").await; // both expired
        assert_eq!((auth.token_reviews(), auth.access_reviews()), (3, 4));
    }

    /// The middleware in front of a handler that reports whether identity headers reached it.
    fn app(auth: Arc<Auth>, telemetry: Arc<crate::telemetry::Telemetry>) -> Router {
        let seen = Arc::new(AtomicUsize::new(0));
        Router::new()
            .fallback(move |req: axum::extract::Request| {
                let seen = seen.clone();
                async move {
                    seen.fetch_add(1, Ordering::SeqCst);
                    let leaked = req
                        .headers()
                        .keys()
                        .any(|k| k.as_str().starts_with("x-remote-"))
                        || req.headers().contains_key(header::AUTHORIZATION);
                    if leaked { "leaked" } else { "ok" }
                }
            })
            .layer(axum::middleware::from_fn_with_state(
                layer::AuthLayer { auth, telemetry },
                layer::authenticate_and_authorize,
            ))
    }

    async fn call(app: &Router, req: Request<Body>) -> (StatusCode, String) {
        let resp = app.clone().oneshot(req).await.expect("infallible");
        let code = resp.status();
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        (code, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn forged_identity_headers_without_a_front_proxy_certificate_are_401() {
        let (auth, sars) = auth_with(Settings::default());
        auth.set_config(AuthnConfig::default());
        let telemetry = Arc::new(crate::telemetry::Telemetry::new());
        let app = app(auth.clone(), telemetry.clone());
        let forged = Request::get(PODS)
            .header("x-remote-user", "system:admin")
            .header("x-remote-group", "system:masters")
            .body(Body::empty())
            .expect("request");
        let (code, body) = call(&app, forged).await;
        assert_eq!(code, StatusCode::UNAUTHORIZED);
        assert!(body.contains(r#""reason":"Unauthorized""#), "{body}");
        // A garbage "certificate" does not help either.
        let mut req = Request::get(PODS)
            .header("x-remote-user", "system:admin")
            .body(Body::empty())
            .expect("request");
        req.extensions_mut()
            .insert(crate::server::client_cert::PeerCertificates(
                vec![CertificateDer::from(vec![0u8; 10])].into(),
            ));
        assert_eq!(call(&app, req).await.0, StatusCode::UNAUTHORIZED);
        // A token plus forged headers: the token's user is the caller, the headers are stripped.
        let req = Request::get(PODS)
            .header("authorization", "Bearer good:reader")
            .header("x-remote-user", "system:admin")
            .header("x-remote-extra-scopes", "all")
            .body(Body::empty())
            .expect("request");
        assert_eq!(call(&app, req).await, (StatusCode::OK, "ok".into()));
        assert_eq!(
            sars.lock().expect("lock").last().expect("sar")["user"],
            "reader"
        );
        // Denied: 403 in the Go shape.
        let req = Request::get(PODS)
            .header("authorization", "Bearer good:other")
            .body(Body::empty())
            .expect("request");
        let (code, body) = call(&app, req).await;
        assert_eq!(code, StatusCode::FORBIDDEN);
        assert!(body.contains(r#"pods.custom.metrics.k8s.io \"*\" is forbidden: User \"other\" cannot get resource \"pods/websocket_connections\""#), "{body}");
        // Health paths need nothing.
        let req = Request::get("/readyz")
            .body(Body::empty())
            .expect("request");
        assert_eq!(call(&app, req).await, (StatusCode::OK, "ok".into()));
        // A review that cannot be made fails closed.
        let req = Request::get(PODS)
            .header("authorization", "Bearer good:slow-sar")
            .body(Body::empty())
            .expect("request");
        let slow = Arc::new(Auth::new(
            mock_apiserver(sars.clone()),
            mock_apiserver(sars),
            Settings {
                review_timeout: Duration::from_millis(200),
                ..Settings::default()
            },
        ));
        let (code, body) = call(&self::app(slow, telemetry.clone()), req).await;
        assert_eq!(code, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
        // Every decision was counted by outcome.
        use crate::telemetry::AuthOutcome::*;
        let counts = [
            Unauthenticated,
            Allowed,
            Forbidden,
            AlwaysAllowed,
            AuthorizationFailed,
        ]
        .map(|o| telemetry.auth_count(o));
        assert_eq!(counts, [2, 1, 1, 1, 1]);
    }
}
