//! The shed contract, version 1 (`docs/shed-contract.md`): the wire format of the request an
//! adapter sends a pod to close some of its WebSocket connections, and of the pod's answer.
//! Pure: [`server`](crate::server) serves it, tests and clients build bodies with it.

use std::fmt;
use std::num::NonZeroU64;

/// The only `apiVersion` of request and response bodies this version of the contract knows: the
/// adapter's own constant, so that the two sides of the contract cannot drift apart.
pub const API_VERSION: &str = ws_metrics_adapter::rebalance::act::SHED_API_VERSION;

/// Where a pod serves the shed endpoint unless its annotation [`PATH_ANNOTATION`] says otherwise
/// (on the port the adapter scrapes).
pub const DEFAULT_PATH: &str = "/shed";

/// The pod annotation naming the shed endpoint's path (prefix `ws-metrics-adapter.io`, the
/// adapter's `--annotation-prefix`).
pub const PATH_ANNOTATION: &str = "ws-metrics-adapter.io/shed-path";

/// The close code a pod sends each connection it sheds: 1013 Try Again Later (RFC 6455 §7.4.2,
/// registered by IANA), which tells a client to reconnect, through the Service, later.
pub const CLOSE_CODE: u16 = 1013;

/// The close reason text that goes with [`CLOSE_CODE`].
pub const CLOSE_REASON: &str = "rebalancing";

/// Largest request body a pod reads; a larger one is answered 413. Unit: bytes.
pub const MAX_BODY: usize = 1024;

/// A valid shed request: close `count` connections (fewer if the pod holds fewer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShedRequest {
    /// Connections the adapter asks the pod to close.
    pub count: NonZeroU64,
}

impl ShedRequest {
    /// The JSON body of this request, as the adapter sends it.
    pub fn to_json(&self) -> String {
        serde_json::json!({"apiVersion": API_VERSION, "count": self.count.get()}).to_string()
    }
}

/// The pod's answer to a valid request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShedResponse {
    /// Connections the pod is now closing with [`CLOSE_CODE`]: at most the request's count, fewer
    /// when it holds fewer, 0 while it drains.
    pub closing: u64,
}

impl ShedResponse {
    /// The JSON body of this answer.
    pub fn to_json(&self) -> String {
        serde_json::json!({"apiVersion": API_VERSION, "closing": self.closing}).to_string()
    }
}

/// Why a request body is refused (each one a 400 with [`RequestError`]'s message as plain text).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The body is not JSON.
    #[error("body is not JSON: {0}")]
    Unparseable(String),
    /// The body is JSON but not an object.
    #[error("body must be a JSON object {{\"apiVersion\":\"{API_VERSION}\",\"count\":N}}")]
    NotAnObject,
    /// No `apiVersion`, or one this server does not support.
    #[error("unsupported apiVersion {0}: this server supports \"{API_VERSION}\"")]
    UnsupportedVersion(Shown),
    /// No `count`.
    #[error("count is missing: give a positive integer")]
    MissingCount,
    /// A `count` that is not a positive integer (0, negative, fractional, a string, …).
    #[error("count {0}: must be a positive integer")]
    BadCount(Shown),
}

/// A JSON value as shown in an error message (`(missing)` when absent), at most 64 characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shown(String);

impl Shown {
    fn of(v: Option<&serde_json::Value>) -> Self {
        let s = v.map_or_else(|| "(missing)".to_owned(), |v| v.to_string());
        // Never echo a whole hostile body back.
        Self(s.chars().take(64).collect())
    }
}

impl fmt::Display for Shown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Parses a request body. Fields other than `apiVersion` and `count` are ignored, so that a
/// later minor revision may add optional ones.
///
/// # Errors
/// A [`RequestError`] naming what is wrong; the version is checked before the count.
pub fn parse_request(body: &[u8]) -> Result<ShedRequest, RequestError> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| RequestError::Unparseable(e.to_string()))?;
    let object = value.as_object().ok_or(RequestError::NotAnObject)?;
    let version = object.get("apiVersion");
    if version.and_then(|v| v.as_str()) != Some(API_VERSION) {
        return Err(RequestError::UnsupportedVersion(Shown::of(version)));
    }
    let count = object.get("count").ok_or(RequestError::MissingCount)?;
    count
        .as_u64()
        .and_then(NonZeroU64::new)
        .map(|count| ShedRequest { count })
        .ok_or_else(|| RequestError::BadCount(Shown::of(Some(count))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_request_parses_and_round_trips() {
        let req = parse_request(br#"{"apiVersion":"shed.ws-metrics-adapter.io/v1","count":3}"#)
            .expect("valid");
        assert_eq!(req.count.get(), 3);
        assert_eq!(parse_request(req.to_json().as_bytes()), Ok(req));
        // Unknown fields are ignored.
        let req = parse_request(
            br#"{"count":18446744073709551615,"apiVersion":"shed.ws-metrics-adapter.io/v1","reason":"x"}"#,
        )
        .expect("valid");
        assert_eq!(req.count.get(), u64::MAX);
    }

    #[test]
    fn every_bad_body_is_refused_with_a_message_naming_the_problem() {
        let v1 = API_VERSION;
        for (body, needle) in [
            ("", "body is not JSON"),
            ("{", "body is not JSON"),
            ("count=3", "body is not JSON"),
            ("[1]", "must be a JSON object"),
            ("3", "must be a JSON object"),
            (r#"{"count":3}"#, "unsupported apiVersion (missing)"),
            (
                r#"{"apiVersion":"shed.ws-metrics-adapter.io/v2","count":3}"#,
                "unsupported apiVersion \"shed.ws-metrics-adapter.io/v2\": this server supports \"shed.ws-metrics-adapter.io/v1\"",
            ),
            (r#"{"apiVersion":1,"count":3}"#, "unsupported apiVersion 1"),
            (&format!(r#"{{"apiVersion":"{v1}"}}"#), "count is missing"),
            (&format!(r#"{{"apiVersion":"{v1}","count":0}}"#), "count 0:"),
            (
                &format!(r#"{{"apiVersion":"{v1}","count":-2}}"#),
                "count -2:",
            ),
            (
                &format!(r#"{{"apiVersion":"{v1}","count":1.5}}"#),
                "count 1.5:",
            ),
            (
                &format!(r#"{{"apiVersion":"{v1}","count":"3"}}"#),
                "count \"3\":",
            ),
            (
                &format!(r#"{{"apiVersion":"{v1}","count":null}}"#),
                "count null:",
            ),
        ] {
            let err = parse_request(body.as_bytes()).expect_err(body).to_string();
            assert!(err.contains(needle), "{body}: {needle:?} not in {err:?}");
        }
    }

    #[test]
    fn an_error_never_echoes_more_than_64_characters_of_the_body() {
        let long = "x".repeat(500);
        let body = format!(r#"{{"apiVersion":"{long}","count":1}}"#);
        let err = parse_request(body.as_bytes()).expect_err("bad version");
        let RequestError::UnsupportedVersion(shown) = &err else {
            panic!("{err:?}");
        };
        assert_eq!(shown.to_string().chars().count(), 64);
    }

    #[test]
    fn the_response_body_names_the_version_and_the_count() {
        assert_eq!(
            ShedResponse { closing: 2 }.to_json(),
            r#"{"apiVersion":"shed.ws-metrics-adapter.io/v1","closing":2}"#
        );
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_are_parsed_or_refused_without_a_panic(
            body in proptest::collection::vec(proptest::num::u8::ANY, 0..256)
        ) {
            let _ = parse_request(&body);
        }

        #[test]
        fn near_valid_bodies_are_accepted_exactly_when_count_is_a_positive_integer(
            version in "shed\\.ws-metrics-adapter\\.io/v[0-9]{1,2}",
            count in "-?[0-9]{1,22}(\\.[0-9]{1,3})?(e[0-9])?",
        ) {
            let body = format!(r#"{{"apiVersion":"{version}","count":{count}}}"#);
            let want = (version == API_VERSION)
                .then(|| count.parse::<u64>().ok().and_then(NonZeroU64::new))
                .flatten();
            match parse_request(body.as_bytes()) {
                Ok(req) => proptest::prop_assert_eq!(Some(req.count), want, "{}", body),
                // JSON has no leading zeros: `007` is not a number there.
                Err(_) => proptest::prop_assert!(
                    want.is_none() || (count.len() > 1 && count.starts_with('0')),
                    "{} refused", body
                ),
            }
        }

        #[test]
        fn every_positive_count_round_trips(count in 1u64..) {
            let count = NonZeroU64::new(count).expect("strategy starts at 1");
            let req = ShedRequest { count };
            proptest::prop_assert_eq!(parse_request(req.to_json().as_bytes()), Ok(req));
        }
    }
}
