//! The one boundary where a failed request becomes a Kubernetes `Status` answer (spec §3): every
//! 4xx/5xx of the API and of the auth layer in front of it is an [`ApiError`]. 404/400 carry a
//! precise message; a 500 says only "unable to fetch metrics" and its cause is logged here, once.

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, Method, StatusCode, header};

use super::wire::{self, Status, StatusDetails};
use crate::store::ReadError;

/// Why a request is answered with a `Status` instead of a document.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ApiError {
    /// 405: the API is read-only (`Allow: GET, HEAD`).
    #[error("the server does not allow this method on the requested resource ({0})")]
    MethodNotAllowed(Method),
    /// 406: the `Accept` header allows no JSON.
    #[error("only application/json is served; the Accept header allows none of it")]
    NotAcceptable,
    /// 404: the path matches no route.
    #[error("the server could not find the requested resource")]
    PathNotFound,
    /// 400: a path, query or selector written wrongly, with what is wrong.
    #[error("{0}")]
    BadRequest(String),
    /// The store had no value to give (404, 400 or 500 by cause).
    #[error(transparent)]
    Read(#[from] ReadError),
    /// 401: no valid credentials.
    #[error("Unauthorized")]
    Unauthorized,
    /// 403: authenticated, not authorized; `details` names the object, group and resource.
    #[error("{message}")]
    Forbidden {
        /// The Go stack's message (see `auth::layer::forbidden`).
        message: String,
        /// What the refusal is about, for resource requests.
        details: Option<Box<StatusDetails>>,
    },
    /// 500: an authorization review failed; the request fails closed.
    #[error("Internal error occurred: the authorization check failed")]
    ReviewFailed,
}

/// The message of every 500 for a metric: the cause stays in the log.
const UNABLE_TO_FETCH: &str = "Internal error occurred: unable to fetch metrics";

impl ApiError {
    /// The HTTP code.
    pub fn code(&self) -> StatusCode {
        match self {
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::NotAcceptable => StatusCode::NOT_ACCEPTABLE,
            Self::PathNotFound => StatusCode::NOT_FOUND,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Read(e) => match e {
                ReadError::UnknownMetric { .. }
                | ReadError::NoValue { .. }
                | ReadError::UnknownNamespace { .. }
                | ReadError::UnknownObject { .. }
                | ReadError::NoPods { .. } => StatusCode::NOT_FOUND,
                ReadError::Unanswerable(_) => StatusCode::BAD_REQUEST,
                ReadError::IncompleteData { .. }
                | ReadError::QueryFailed { .. }
                | ReadError::NotYetQueried { .. }
                | ReadError::NotSynced { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            },
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden { .. } => StatusCode::FORBIDDEN,
            Self::ReviewFailed => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The `reason` of the `Status`, as the Go stack names it [apimachinery:
    /// pkg/apis/meta/v1/types.go `StatusReason`].
    fn reason(&self) -> &'static str {
        match self.code() {
            StatusCode::METHOD_NOT_ALLOWED => "MethodNotAllowed",
            StatusCode::NOT_ACCEPTABLE => "NotAcceptable",
            StatusCode::NOT_FOUND => "NotFound",
            StatusCode::BAD_REQUEST => "BadRequest",
            StatusCode::UNAUTHORIZED => "Unauthorized",
            StatusCode::FORBIDDEN => "Forbidden",
            _ => "InternalError",
        }
    }

    /// The `Status` body. A read's 500 never carries its cause.
    pub fn status(&self) -> Status {
        let message = match self {
            Self::Read(_) if self.code() == StatusCode::INTERNAL_SERVER_ERROR => {
                UNABLE_TO_FETCH.to_owned()
            }
            other => other.to_string(),
        };
        let details = match self {
            Self::Forbidden { details, .. } => details.as_deref().cloned(),
            _ => None,
        };
        wire::status(self.code().as_u16(), self.reason(), message, details)
    }
}

/// Writes a JSON answer: `Content-Type: application/json`, and `nosniff` so that no browser
/// reads a body as anything else.
pub(super) fn json(code: StatusCode, body: impl Into<Body>) -> Response {
    let mut resp = Response::new(body.into());
    *resp.status_mut() = code;
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    resp
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = self.code();
        if let Self::Read(e) = &self
            && code == StatusCode::INTERNAL_SERVER_ERROR
        {
            // The one log line of a metric that is not served; the client sees only the generic
            // message.
            tracing::warn!(error = %e, "metric not served");
        }
        let mut resp = json(code, wire::status_body(&self.status()));
        if matches!(self, Self::MethodNotAllowed(_)) {
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        }
        resp
    }
}
