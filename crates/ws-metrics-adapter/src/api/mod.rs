//! The custom metrics API (spec §1–§4), answered from the [`Store`] only: discovery documents,
//! metric reads for pods and namespaces, and `Status` errors. Every answer is JSON with
//! `Content-Type: application/json`.
//!
//! - [`path`]: request path and query parsing.
//! - [`wire`]: the JSON bodies.

pub mod path;
pub mod wire;

use std::sync::Arc;
use std::time::Instant;

use crate::clock::Moment;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use http::{HeaderValue, Method, StatusCode, header};
use serde_json::Value;

use crate::prometheus::results::{Objects, ReadError, Results};
use crate::prometheus::rules;
use crate::selector::Selector;
use crate::store::{PodKey, Store};
use crate::telemetry::Telemetry;
use path::{PathError, Route, Target};
use wire::{Described, Item, Status, Version};

/// Source of "now" for freshness checks (its monotonic part) and fallback timestamps (its wall
/// part); injectable for tests.
pub type Clock = fn() -> Moment;

/// What the API handler reads. Built once at start-up.
#[derive(Clone)]
pub struct ApiState {
    store: Arc<Store>,
    telemetry: Arc<Telemetry>,
    clock: Clock,
    group_list: Arc<[u8]>,
    group: Arc<[u8]>,
    resource_lists: Arc<[Vec<u8>; 2]>,
    /// Values from Prometheus instead of the store's scraped readings (`--source=prometheus`).
    prometheus: Option<Arc<Results>>,
}

impl ApiState {
    /// Precomputes the discovery documents from the store's catalog.
    pub fn new(store: Arc<Store>, telemetry: Arc<Telemetry>) -> Self {
        Self::with_clock(store, telemetry, Moment::now)
    }

    /// Like [`ApiState::new`] with an explicit clock.
    pub fn with_clock(store: Arc<Store>, telemetry: Arc<Telemetry>, clock: Clock) -> Self {
        let metrics: Vec<String> = store
            .catalog()
            .mappings()
            .iter()
            .map(|m| m.served.clone())
            .collect();
        Self {
            group_list: wire::api_group_list().into(),
            group: wire::api_group().into(),
            resource_lists: Arc::new([
                wire::api_resource_list(Version::V1beta1, &metrics),
                wire::api_resource_list(Version::V1beta2, &metrics),
            ]),
            store,
            telemetry,
            clock,
            prometheus: None,
        }
    }

    /// Serves values (and discovery) from the Prometheus source's results; the store is still the
    /// pod inventory.
    pub fn with_prometheus(mut self, results: Arc<Results>) -> Self {
        self.prometheus = Some(results);
        self
    }
}

/// The API as an axum router: every path goes through one handler so that unknown paths and
/// methods get `Status` bodies too.
pub fn router(state: ApiState) -> Router {
    Router::new().fallback(handle).with_state(state)
}

fn json(code: StatusCode, body: impl Into<Body>) -> Response {
    let mut resp = Response::new(body.into());
    *resp.status_mut() = code;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

fn status_response(status: &Status) -> Response {
    let code = StatusCode::from_u16(status.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json(code, status.to_body())
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
        Ok(Route::GroupList | Route::Group | Route::ResourceList(_)) => "discovery",
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
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut resp = status_response(&Status::failure(
            405,
            "MethodNotAllowed",
            format!(
                "the server does not allow this method on the requested resource ({})",
                req.method()
            ),
        ));
        resp.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return resp;
    }
    if !accepts_json(req) {
        return status_response(&Status::failure(
            406,
            "NotAcceptable",
            "only application/json is served; the Accept header allows none of it",
        ));
    }
    let route = match route {
        Ok(r) => r,
        Err(PathError::NotFound) => return status_response(&Status::not_found_path()),
        Err(PathError::Invalid(msg)) => {
            return status_response(&Status::failure(400, "BadRequest", msg));
        }
    };
    match route {
        Route::GroupList => json(StatusCode::OK, state.group_list.to_vec()),
        Route::Group => json(StatusCode::OK, state.group.to_vec()),
        Route::ResourceList(v) if state.prometheus.is_some() => json(
            StatusCode::OK,
            state
                .prometheus
                .as_ref()
                .map(|p| p.resource_list(v))
                .unwrap_or_default(),
        ),
        Route::ResourceList(v) => {
            let idx = match v {
                Version::V1beta1 => 0,
                Version::V1beta2 => 1,
            };
            json(StatusCode::OK, state.resource_lists[idx].clone())
        }
        Route::Metric {
            version,
            target,
            metric,
        } => {
            let query = path::parse_query(req.uri().query());
            match read_metric(state, version, target, &metric, &query) {
                Ok(body) => json(StatusCode::OK, body),
                Err(status) => status_response(&status),
            }
        }
    }
}

fn parse_selector(param: &str, value: Option<&str>) -> Result<Selector, Status> {
    match value {
        None => Ok(Selector::everything()),
        Some(s) => Selector::parse(s).map_err(|e| {
            // Echo a long selector only in part: an error must not cost more than the request.
            const SHOWN: usize = 120;
            let shown = match s.char_indices().nth(SHOWN) {
                Some((cut, _)) => format!("{:?}… ({} bytes)", &s[..cut], s.len()),
                None => format!("{s:?}"),
            };
            Status::failure(
                400,
                "BadRequest",
                format!("unable to parse {param} {shown}: {e}"),
            )
        }),
    }
}

fn read_metric(
    state: &ApiState,
    version: Version,
    target: Target,
    metric: &str,
    query: &path::Query,
) -> Result<Vec<u8>, Status> {
    let metric_selector = parse_selector(
        "metricLabelSelector",
        query.metric_label_selector.as_deref(),
    )?;
    if let Some(results) = &state.prometheus {
        let items = read_prometheus(state, results, target, metric, &metric_selector, query)?;
        return Ok(finish(state, version, metric, &metric_selector, &items));
    }
    let resource = match &target {
        Target::AllPods { .. } | Target::Pod { .. } => "pods",
        Target::Namespace { .. } => "namespaces",
        Target::Object { resource, .. } => resource.as_str(),
    };
    let family = match (&target, state.store.catalog().family_index(metric)) {
        (Target::Object { .. }, _) | (_, None) => {
            return Err(Status::failure(
                404,
                "NotFound",
                format!("the server could not find the metric {metric} for {resource}"),
            ));
        }
        (_, Some(f)) => f,
    };
    let echo: Value = metric_selector.to_label_selector();
    let now = (state.clock)();
    let items: Vec<Item> = match target {
        Target::AllPods { namespace } => {
            let pod_selector = parse_selector("labelSelector", query.label_selector.as_deref())?;
            state
                .store
                .pods_matching(&namespace, &pod_selector, family, &metric_selector, now)
                .into_iter()
                .map(|p| Item {
                    described: Described::Pod {
                        namespace: namespace.clone(),
                        name: p.name,
                    },
                    milli: p.milli,
                    time: p.time,
                })
                .collect()
        }
        Target::Pod { namespace, name } => {
            let key = PodKey { namespace, name };
            let Some(p) = state.store.pod_value(&key, family, &metric_selector, now) else {
                let with = if metric_selector.is_empty() {
                    String::new()
                } else {
                    format!(" with selector {metric_selector}")
                };
                return Err(Status::failure(
                    404,
                    "NotFound",
                    format!(
                        "the server could not find the metric {metric} for pods {}{with}",
                        key.name
                    ),
                ));
            };
            vec![Item {
                described: Described::Pod {
                    namespace: key.namespace,
                    name: p.name,
                },
                milli: p.milli,
                time: p.time,
            }]
        }
        Target::Namespace { namespace } => {
            match state
                .store
                .namespace_total(&namespace, family, &metric_selector, now)
            {
                Ok((milli, time)) => vec![Item {
                    described: Described::Namespace { name: namespace },
                    milli,
                    time,
                }],
                Err(e @ crate::store::TotalError::UnknownNamespace { .. }) => {
                    return Err(Status::failure(404, "NotFound", e.to_string()));
                }
                Err(e) => {
                    tracing::warn!(metric, error = %e, "namespace total not served");
                    return Err(Status::internal());
                }
            }
        }
        Target::Object { .. } => Vec::new(),
    };
    for item in &items {
        let age = item.time.age(now.mono);
        state.telemetry.observe_served_age(age.as_secs_f64());
    }
    Ok(wire::metric_value_list(version, metric, &echo, &items))
}

/// Records the age of each served value and renders the list.
fn finish(
    state: &ApiState,
    version: Version,
    metric: &str,
    metric_selector: &Selector,
    items: &[Item],
) -> Vec<u8> {
    let now = (state.clock)();
    for item in items {
        let age = item.time.age(now.mono);
        state.telemetry.observe_served_age(age.as_secs_f64());
    }
    wire::metric_value_list(version, metric, &metric_selector.to_label_selector(), items)
}

/// A metric read answered from the Prometheus source's last query results (memory only).
fn read_prometheus(
    state: &ApiState,
    results: &Results,
    target: Target,
    metric: &str,
    metric_selector: &Selector,
    query: &path::Query,
) -> Result<Vec<Item>, Status> {
    let not_found = |resource: &str| {
        Status::failure(
            404,
            "NotFound",
            format!("the server could not find the metric {metric} for {resource}"),
        )
    };
    let pod_selector;
    let (resource, objects) = match &target {
        Target::AllPods { namespace } => {
            pod_selector = parse_selector("labelSelector", query.label_selector.as_deref())?;
            (
                rules::pods(),
                Objects::All {
                    namespace,
                    selector: &pod_selector,
                },
            )
        }
        Target::Pod { namespace, name } => (rules::pods(), Objects::One { namespace, name }),
        Target::Namespace { namespace } => (
            rules::namespaces(),
            Objects::One {
                namespace: "",
                name: namespace,
            },
        ),
        Target::Object {
            resource,
            namespace,
            name,
        } => {
            let info = rules::resolve_path(resource).ok_or_else(|| not_found(resource))?;
            // A namespaced resource asked for without a namespace (or the reverse) is not a
            // metric we serve.
            if info.namespaced != namespace.is_some() {
                return Err(not_found(resource));
            }
            let ns = namespace.as_deref().unwrap_or("");
            let objects = match name {
                Some(name) => Objects::One {
                    namespace: ns,
                    name,
                },
                None => {
                    pod_selector =
                        parse_selector("labelSelector", query.label_selector.as_deref())?;
                    Objects::All {
                        namespace: ns,
                        selector: &pod_selector,
                    }
                }
            };
            (info, objects)
        }
    };
    let now = (state.clock)();
    results
        .read(
            &state.store,
            resource,
            metric,
            objects,
            metric_selector,
            now,
        )
        .map_err(|e| match e {
            ReadError::NotFound(msg) => Status::failure(404, "NotFound", msg),
            ReadError::BadRequest(msg) => Status::failure(400, "BadRequest", msg),
            ReadError::Unavailable(why) => {
                tracing::warn!(metric, reason = %why, "prometheus metric not served");
                Status::internal()
            }
        })
}
