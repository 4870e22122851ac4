//! The custom metrics API (spec §1–§4), answered from the [`Store`] only, whichever source fills
//! it: discovery documents, metric reads for pods, namespaces and other objects, and `Status`
//! errors. Every answer is JSON with `Content-Type: application/json`.
//!
//! - [`path`]: request path and query parsing.
//! - [`wire`]: the JSON bodies.
//! - [`error`]: [`ApiError`], the one place failures become `Status` answers.

pub mod error;
pub mod path;
pub mod wire;

use std::sync::Arc;
use std::time::Instant;

use crate::clock::Moment;

use axum::Router;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderValue, Method, StatusCode, header};

use crate::selector::Selector;
use crate::store::{Objects, ReadError, Store, resource};
use crate::telemetry::Telemetry;
pub use error::ApiError;
use error::json;
use path::{PathError, Route, Target};
use wire::Version;

/// Source of "now" for freshness checks (its monotonic part) and fallback timestamps (its wall
/// part); injectable for tests.
pub type Clock = fn() -> Moment;

/// What the API handler reads. Built once at start-up.
#[derive(Clone)]
pub struct ApiState {
    store: Arc<Store>,
    telemetry: Arc<Telemetry>,
    clock: Clock,
    /// The discovery documents that never change, rendered once and shared by every answer.
    group_list: Bytes,
    group: Bytes,
    /// `--serve-external-metrics`: also answer `external.metrics.k8s.io`.
    external: bool,
}

impl ApiState {
    /// Precomputes the static discovery documents.
    pub fn new(store: Arc<Store>, telemetry: Arc<Telemetry>) -> Self {
        Self::with_clock(store, telemetry, Moment::now)
    }

    /// Like [`ApiState::new`] with an explicit clock.
    pub fn with_clock(store: Arc<Store>, telemetry: Arc<Telemetry>, clock: Clock) -> Self {
        Self {
            group_list: Bytes::from(wire::api_group_list(false)),
            group: Bytes::from(wire::api_group()),
            store,
            telemetry,
            clock,
            external: false,
        }
    }

    /// Also serves `external.metrics.k8s.io/v1beta1` (off by default: KEDA owns that group in
    /// most clusters, and one group has one APIService): each served metric as a namespaced
    /// total over the series its `labelSelector` selects.
    #[must_use]
    pub fn serving_external_metrics(mut self) -> Self {
        self.external = true;
        self.group_list = Bytes::from(wire::api_group_list(true));
        self
    }
}

/// The API as an axum router: every path goes through one handler so that unknown paths and
/// methods get `Status` bodies too.
pub fn router(state: ApiState) -> Router {
    Router::new().fallback(handle).with_state(state)
}

/// Whether the `Accept` header allows JSON. Absent, `*/*`, `application/*` and
/// `application/json` (with any parameters) do. The HPA sends `…protobuf, */*`.
fn accepts_json(req: &Request) -> bool {
    let values: Vec<&HeaderValue> = req.headers().get_all(header::ACCEPT).iter().collect();
    if values.is_empty() {
        return true;
    }
    values
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|part| {
            let mut params = part.split(';');
            let media = params.next().unwrap_or("").trim().to_ascii_lowercase();
            // `q=0` means "not acceptable".
            let refused = params.any(|p| {
                let p = p.trim();
                p.strip_prefix("q=")
                    .is_some_and(|q| q.trim().parse::<f32>().is_ok_and(|q| q <= 0.0))
            });
            !refused
                && matches!(
                    media.as_str(),
                    "" | "*/*" | "application/*" | "application/json"
                )
        })
}

/// Labels of the request-duration metric: which kind of request it was.
fn route_kind(route: &Result<Route, PathError>) -> &'static str {
    match route {
        Ok(
            Route::GroupList
            | Route::Group
            | Route::ResourceList(_)
            | Route::ExternalGroup
            | Route::ExternalResourceList,
        ) => "discovery",
        Ok(Route::ExternalMetric { .. }) => "external",
        Ok(Route::Metric {
            target: Target::AllPods { .. },
            ..
        }) => "pods_selector",
        Ok(Route::Metric {
            target: Target::Pod { .. },
            ..
        }) => "pod",
        Ok(Route::Metric {
            target: Target::Namespace { .. },
            ..
        }) => "namespace",
        Ok(Route::Metric {
            target: Target::Object { .. },
            ..
        }) => "object",
        Err(_) => "other",
    }
}

async fn handle(State(state): State<ApiState>, req: Request) -> Response {
    let started = Instant::now();
    let route = path::parse(req.uri().path());
    let kind = route_kind(&route);
    let resp = respond(&state, &req, route);
    state.telemetry.observe_api_request(
        kind,
        resp.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    resp
}

fn respond(state: &ApiState, req: &Request, route: Result<Route, PathError>) -> Response {
    match answer(state, req, route) {
        Ok(body) => json(StatusCode::OK, body),
        Err(e) => e.into_response(),
    }
}

fn answer(
    state: &ApiState,
    req: &Request,
    route: Result<Route, PathError>,
) -> Result<Bytes, ApiError> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Err(ApiError::MethodNotAllowed(req.method().clone()));
    }
    if !accepts_json(req) {
        return Err(ApiError::NotAcceptable);
    }
    let route = route.map_err(|e| match e {
        PathError::NotFound => ApiError::PathNotFound,
        PathError::Invalid(msg) => ApiError::BadRequest(msg),
    })?;
    match route {
        Route::GroupList => Ok(state.group_list.clone()),
        Route::Group => Ok(state.group.clone()),
        // Rendered per request from what the store serves now: the Prometheus source's rules may
        // change the set between rounds. Discovery is polled, not on the HPA's path.
        Route::ResourceList(v) => Ok(wire::api_resource_list(v, &state.store.served()).into()),
        Route::Metric {
            version,
            target,
            metric,
        } => {
            let query = path::parse_query(req.uri().query());
            read_metric(state, version, target, &metric, &query).map(Bytes::from)
        }
        Route::ExternalGroup | Route::ExternalResourceList | Route::ExternalMetric { .. }
            if !state.external =>
        {
            Err(ApiError::PathNotFound)
        }
        Route::ExternalGroup => Ok(wire::external_api_group().into()),
        Route::ExternalResourceList => {
            // What is served for namespaces (the read is a namespace total), whichever source.
            let metrics: Vec<String> = state
                .store
                .served()
                .into_iter()
                .filter(|(resource, _)| resource.is_namespaces())
                .map(|(_, metric)| metric)
                .collect();
            Ok(wire::external_resource_list(&metrics).into())
        }
        Route::ExternalMetric { namespace, metric } => {
            let query = path::parse_query(req.uri().query());
            read_external(state, &namespace, &metric, &query).map(Bytes::from)
        }
    }
}

/// An external metric read: the namespace's total of `metric` over the series the request's
/// `labelSelector` selects (the HPA sends `metric.selector` there), under the namespace total's
/// rule: every tracked pod of the namespace fresh, or no value (500). `metricLabels` are the
/// selector's equality terms.
fn read_external(
    state: &ApiState,
    namespace: &str,
    metric: &str,
    query: &path::Query,
) -> Result<Vec<u8>, ApiError> {
    if !state.store.serves(resource::namespaces(), metric) {
        return Err(ApiError::Read(ReadError::UnknownMetric {
            metric: metric.to_owned(),
            resource: wire::EXTERNAL_GROUP.to_owned(),
        }));
    }
    let series = parse_selector("labelSelector", query.label_selector.as_deref())?;
    let now = (state.clock)();
    let items = state.store.read(
        resource::namespaces(),
        metric,
        Objects::One {
            namespace: "",
            name: namespace,
        },
        &series,
        now,
    )?;
    let Some(item) = items.first() else {
        return Err(ApiError::Read(ReadError::NoValue {
            metric: metric.to_owned(),
            resource: "namespaces".to_owned(),
            with: String::new(),
            name: namespace.to_owned(),
        }));
    };
    state
        .telemetry
        .observe_served_age(item.time.age(now.mono).as_secs_f64());
    let labels = series
        .to_label_selector()
        .and_then(|s| s.match_labels)
        .unwrap_or_default();
    Ok(wire::external_metric_value_list(
        metric,
        &labels,
        item.milli,
        item.time.wall,
    ))
}

fn parse_selector(param: &str, value: Option<&str>) -> Result<Selector, ApiError> {
    match value {
        None => Ok(Selector::everything()),
        Some(s) => Selector::parse(s).map_err(|e| {
            // Echo a long selector only in part: an error must not cost more than the request.
            const SHOWN: usize = 120;
            let shown = match s.char_indices().nth(SHOWN) {
                Some((cut, _)) => format!("{:?}… ({} bytes)", &s[..cut], s.len()),
                None => format!("{s:?}"),
            };
            ApiError::BadRequest(format!("unable to parse {param} {shown}: {e}"))
        }),
    }
}

/// A metric read: the path's target resolved to a resource and objects, one [`Store::read`],
/// and the list rendered in the requested version.
fn read_metric(
    state: &ApiState,
    version: Version,
    target: Target,
    metric: &str,
    query: &path::Query,
) -> Result<Vec<u8>, ApiError> {
    let metric_selector = parse_selector(
        "metricLabelSelector",
        query.metric_label_selector.as_deref(),
    )?;
    let unknown = |resource: &str| {
        ApiError::Read(ReadError::UnknownMetric {
            metric: metric.to_owned(),
            resource: resource.to_owned(),
        })
    };
    let (res, namespace, name) = match &target {
        Target::AllPods { namespace } => (resource::pods(), namespace.as_str(), None),
        Target::Pod { namespace, name } => {
            (resource::pods(), namespace.as_str(), Some(name.as_str()))
        }
        Target::Namespace { namespace } => (resource::namespaces(), "", Some(namespace.as_str())),
        Target::Object {
            resource: written,
            namespace,
            name,
        } => {
            let res = resource::resolve_path(written).ok_or_else(|| unknown(written))?;
            // A namespaced resource asked for without a namespace (or the reverse) is not a
            // metric we serve.
            if res.namespaced != namespace.is_some() {
                return Err(unknown(written));
            }
            (res, namespace.as_deref().unwrap_or(""), name.as_deref())
        }
    };
    // An unknown metric is a 404 before a bad `labelSelector` is a 400.
    if !state.store.serves(res, metric) {
        return Err(unknown(&res.path()));
    }
    let pod_selector;
    let objects = match name {
        Some(name) => Objects::One { namespace, name },
        None => {
            pod_selector = parse_selector("labelSelector", query.label_selector.as_deref())?;
            Objects::All {
                namespace,
                selector: &pod_selector,
            }
        }
    };
    let now = (state.clock)();
    let items = state
        .store
        .read(res, metric, objects, &metric_selector, now)?;
    for item in &items {
        let age = item.time.age(now.mono);
        state.telemetry.observe_served_age(age.as_secs_f64());
    }
    Ok(wire::metric_value_list(
        version,
        metric,
        metric_selector.to_label_selector().as_ref(),
        &items,
    ))
}
