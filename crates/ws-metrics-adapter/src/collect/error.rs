//! Why one pod scrape failed: [`ScrapeError`] keeps the cause (for the log line written when a
//! pod's outcome changes) and names the `outcome` label it is counted under.

use std::io;
use std::time::Duration;

use super::http1::ResponseError;
use crate::exposition;
use crate::store::SampleError;

/// The `outcome` label of a scrape that was recorded in the store.
pub const SUCCESS: &str = "success";

/// Every value of the `outcome` label of `ws_metrics_adapter_scrapes_total`, success first.
/// Dashboards, alerts and tests name them: they do not change.
pub const OUTCOME_LABELS: [&str; 7] = [
    SUCCESS,
    "timeout",
    "connect_error",
    "bad_status",
    "body_too_large",
    "unparseable",
    "discarded",
];

/// Why one pod scrape recorded nothing, named after the step that failed. The pod keeps its last
/// good value until `--max-age`; a failure is never turned into a zero.
#[derive(Debug, thiserror::Error)]
pub enum ScrapeError {
    /// The scrape URL has no usable host (`http://` path).
    #[error("scrape URL has no usable host")]
    BadUrl,
    /// The scrape URL does not make a request (`https://` path).
    #[error("building the request: {0}")]
    InvalidRequest(#[source] http::Error),
    /// The TCP connection could not be made (refused, unreachable, DNS).
    #[error("connecting: {0}")]
    ConnectFailed(#[source] io::Error),
    /// The connection failed while the request was sent or the response read (reset, broken
    /// pipe).
    #[error("connection failed: {0}")]
    ConnectionFailed(#[source] io::Error),
    /// hyper's client (`https://` path) failed: connect, TLS handshake, or a response it refused.
    #[error("request failed: {0}")]
    RequestFailed(#[source] hyper_util::client::legacy::Error),
    /// The body could not be read through hyper (reset, TLS error, a body cut short).
    #[error("reading the body: {0}")]
    BodyFailed(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The connection ended before the response did (`http://` path), or a close-delimited body
    /// does not look whole (see `collect::body`).
    #[error("response cut short: {0}")]
    ResponseCut(#[source] ResponseError),
    /// A close-delimited body read through hyper does not look whole (see `collect::body`).
    #[error("response cut short: the connection closed where no complete exposition ends")]
    BodyCut,
    /// No answer within `--scrape-timeout`.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// A non-2xx HTTP status.
    #[error("HTTP status {status}")]
    BadStatus {
        /// The status code.
        status: u16,
    },
    /// The body is larger than `--scrape-max-body-bytes`.
    #[error("body over {limit} bytes")]
    BodyTooLarge {
        /// The cap. Unit: bytes.
        limit: usize,
    },
    /// The response is not HTTP/1.x, has broken framing or an oversized head (`http://` path).
    #[error("malformed response: {0}")]
    MalformedResponse(#[source] ResponseError),
    /// The body is not UTF-8.
    #[error("body is not UTF-8: {0}")]
    NotUtf8(#[source] std::str::Utf8Error),
    /// The body is not in the Prometheus text format or OpenMetrics text.
    #[error("unparsable metrics body: {0}")]
    Unparseable(#[source] exposition::Error),
    /// The body parsed, but a wanted family cannot be served (NaN, Inf, a duplicate series).
    #[error("metrics body not servable: {0}")]
    NotServable(#[source] SampleError),
    /// The body was read, but the pod disappeared or was re-created during the scrape: the
    /// reading belongs to no pod and was dropped.
    #[error("pod gone or re-created during the scrape; reading dropped")]
    Discarded,
}

impl ScrapeError {
    /// The label value used in `ws_metrics_adapter_scrapes_total{outcome=…}` (one of
    /// [`OUTCOME_LABELS`] other than [`SUCCESS`]).
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Timeout(_) => "timeout",
            // NB: a connection that ends early is a connect error, not a parse error: the pod
            // said nothing wrong, the transport lost it (the same split hyper makes).
            Self::BadUrl
            | Self::InvalidRequest(_)
            | Self::ConnectFailed(_)
            | Self::ConnectionFailed(_)
            | Self::RequestFailed(_)
            | Self::BodyFailed(_)
            | Self::ResponseCut(_)
            | Self::BodyCut => "connect_error",
            Self::BadStatus { .. } => "bad_status",
            Self::BodyTooLarge { .. } => "body_too_large",
            Self::MalformedResponse(_)
            | Self::NotUtf8(_)
            | Self::Unparseable(_)
            | Self::NotServable(_) => "unparseable",
            Self::Discarded => "discarded",
        }
    }

    /// A failure of the response reader, by what it means for the scrape: `limit` is the body cap
    /// the reader was given.
    pub(super) fn from_response(error: ResponseError, limit: usize) -> Self {
        match error {
            ResponseError::Closed | ResponseError::Truncated | ResponseError::Incomplete => {
                Self::ResponseCut(error)
            }
            ResponseError::BodyTooLarge => Self::BodyTooLarge { limit },
            ResponseError::Head(_) | ResponseError::Framing(_) | ResponseError::HeadTooLarge => {
                Self::MalformedResponse(error)
            }
        }
    }

    /// Whether this outcome is worth a warning: a discarded reading is the pod going away, which
    /// the pod watch reports on its own.
    pub(super) fn is_warning(&self) -> bool {
        !matches!(self, Self::Discarded)
    }
}

/// The `outcome` label of a scrape's result.
pub fn outcome_label<T>(result: &Result<T, ScrapeError>) -> &'static str {
    match result {
        Ok(_) => SUCCESS,
        Err(e) => e.metric_label(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_is_counted_under_a_known_label_and_the_labels_are_unchanged() {
        let io = || io::Error::from(io::ErrorKind::ConnectionRefused);
        let cases: Vec<(ScrapeError, &str)> = vec![
            (ScrapeError::BadUrl, "connect_error"),
            (ScrapeError::ConnectFailed(io()), "connect_error"),
            (ScrapeError::ConnectionFailed(io()), "connect_error"),
            (
                ScrapeError::ResponseCut(ResponseError::Truncated),
                "connect_error",
            ),
            (ScrapeError::BodyCut, "connect_error"),
            (ScrapeError::Timeout(Duration::from_secs(1)), "timeout"),
            (ScrapeError::BadStatus { status: 503 }, "bad_status"),
            (ScrapeError::BodyTooLarge { limit: 10 }, "body_too_large"),
            (
                ScrapeError::MalformedResponse(ResponseError::HeadTooLarge),
                "unparseable",
            ),
            (
                ScrapeError::Unparseable(exposition::Error::Syntax {
                    line: 1,
                    reason: "x".into(),
                }),
                "unparseable",
            ),
            (
                ScrapeError::NotServable(SampleError::Unservable { family: "f".into() }),
                "unparseable",
            ),
            (ScrapeError::Discarded, "discarded"),
        ];
        for (error, label) in &cases {
            assert_eq!(error.metric_label(), *label, "{error}");
            assert!(OUTCOME_LABELS.contains(label));
        }
        assert_eq!(
            OUTCOME_LABELS,
            [
                "success",
                "timeout",
                "connect_error",
                "bad_status",
                "body_too_large",
                "unparseable",
                "discarded"
            ]
        );
    }

    #[test]
    fn the_response_reader_failure_is_sorted_by_what_it_means() {
        let cut = ScrapeError::from_response(ResponseError::Incomplete, 10);
        assert!(matches!(cut, ScrapeError::ResponseCut(_)), "{cut:?}");
        let big = ScrapeError::from_response(ResponseError::BodyTooLarge, 10);
        assert!(
            matches!(big, ScrapeError::BodyTooLarge { limit: 10 }),
            "{big:?}"
        );
        let bad = ScrapeError::from_response(ResponseError::Framing("chunk size"), 10);
        assert!(matches!(bad, ScrapeError::MalformedResponse(_)), "{bad:?}");
    }

    #[test]
    fn the_cause_is_kept_as_the_source() {
        let error = ScrapeError::ConnectFailed(io::Error::from(io::ErrorKind::ConnectionRefused));
        let source = std::error::Error::source(&error).map(ToString::to_string);
        assert_eq!(
            source,
            Some(io::Error::from(io::ErrorKind::ConnectionRefused).to_string())
        );
        assert_eq!(outcome_label::<()>(&Err(error)), "connect_error");
        assert_eq!(outcome_label::<()>(&Ok(())), "success");
    }
}
