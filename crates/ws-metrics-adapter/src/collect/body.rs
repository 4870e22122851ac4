//! Whether a scraped body is whole: the one rule both transports (`http1` for `http://`, hyper for
//! `https://`) apply to a body whose only end was the pod closing the connection.
//! Pipeline position: collect (transport) → **body check** → exposition.

// The rule. A body framed by `Content-Length` or by chunked encoding carries its own proof of
// completeness, and both transports already fail one cut short (`Truncated` in `http1`, an
// `IncompleteMessage` body error in hyper). A close-delimited body (no `Content-Length`, no
// chunking, HTTP/1.0 style) ends wherever the connection ends, so a pod that crashes, a proxy that
// gives up, or a hostile pod can cut it anywhere. Such a body is accepted only when
// 1. the connection ended cleanly: a FIN (or a TLS `close_notify`), not a reset, a read error or
//    the scrape deadline. The transports enforce this part: every read error fails the scrape,
//    and rustls reports a TCP close without `close_notify` as `UnexpectedEof`, which hyper turns
//    into a body error;
// 2. it is OpenMetrics (by its `Content-Type`) and its last non-blank line is `# EOF`: the
//    format's own terminator, the only real proof of completeness in either dialect; or
// 3. it is Prometheus text (any other `Content-Type`; a body ending in `# EOF` is OpenMetrics
//    whatever its header says) and
//    - it is not empty: an empty body is indistinguishable from a cut before the first byte;
//    - it ends in a line feed: the text format ends every line with one, so a body that does not
//      was cut inside a line (inside a number: a smaller number);
//    - its last non-blank line is not metadata (`# HELP`, `# TYPE`, `# UNIT`): samples of that
//      family were cut off. Without this a cut just after `# TYPE …` reads as a declared family
//      with no series, which is served as an explicit 0 (a false zero).
//
// What no rule can see in Prometheus text (it has no terminator): a cut exactly at a line end
// between two series of the same family (the sum of the series before the cut), or exactly
// before the family's first line (the family reads as not exposed, so the pod is left out). Pods
// that need those cases covered must frame their responses (every Prometheus client library
// sends `Content-Length` or chunked) or serve OpenMetrics.
//
// A body refused by this rule counts as `connect_error`, like a `Content-Length` body cut short:
// the connection ended before the response was complete. It is not `unparseable`, which says the
// pod sent something malformed, and it leads an operator to look at the network and the pod's
// process (restarts, proxies) rather than at its exposition code.

use crate::exposition;

/// Whether the `Content-Type` value announces OpenMetrics text (`application/openmetrics-text`,
/// any parameters, any case).
pub(crate) fn is_openmetrics(content_type: &[u8]) -> bool {
    const OPENMETRICS: &[u8] = b"application/openmetrics-text";
    let essence = content_type
        .split(|&b| b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    essence.eq_ignore_ascii_case(OPENMETRICS)
}

/// Whether an HTTP/1 response with these headers is delimited by the connection's close (RFC 9112
/// §6.3): no `Transfer-Encoding` ending in `chunked`, and no `Content-Length` unless a
/// `Transfer-Encoding` overrides it.
pub(crate) fn is_close_delimited(headers: &http::HeaderMap) -> bool {
    let mut codings = headers
        .get_all(http::header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|c| !c.is_empty())
        .peekable();
    if codings.peek().is_none() {
        return !headers.contains_key(http::header::CONTENT_LENGTH);
    }
    !codings
        .last()
        .is_some_and(|c| c.eq_ignore_ascii_case(b"chunked"))
}

/// Whether a close-delimited body (its end known only because the pod closed the connection
/// cleanly) can be taken as the whole exposition; `openmetrics`: the response's `Content-Type`
/// said OpenMetrics. See the rule at the top of this file.
pub(crate) fn close_delimited_body_is_complete(body: &[u8], openmetrics: bool) -> bool {
    let trimmed = body.trim_ascii_end();
    let last_line = match trimmed.iter().rposition(|&b| b == b'\n') {
        Some(lf) => &trimmed[lf + 1..],
        None => trimmed,
    };
    // NB: a last line that is not UTF-8 is neither `# EOF` nor metadata; if the body ends in a
    // line feed the exposition parser refuses it later as unparsable.
    let last_line = std::str::from_utf8(last_line).unwrap_or_default();
    if exposition::ends_with_eof_marker(last_line) {
        return true;
    }
    if openmetrics || !body.ends_with(b"\n") || trimmed.is_empty() {
        return false;
    }
    !is_metadata(last_line)
}

/// A `# HELP`, `# TYPE` or `# UNIT` line (tokens as the exposition parser splits them).
fn is_metadata(line: &str) -> bool {
    let mut tokens = line.split([' ', '\t', '\r']).filter(|t| !t.is_empty());
    tokens.next() == Some("#") && matches!(tokens.next(), Some("HELP" | "TYPE" | "UNIT"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use proptest::prelude::*;

    const PROMETHEUS: &str = "# HELP process_open_fds Open fds.\n\
        # TYPE process_open_fds gauge\n\
        process_open_fds 7\n\
        # HELP websocket_connections_active Open WebSocket connections.\n\
        # TYPE websocket_connections_active gauge\n\
        websocket_connections_active{route=\"chat\"} 12\n";

    const OPENMETRICS: &str = "# TYPE websocket_connections_active gauge\n\
        websocket_connections_active{route=\"chat\"} 12\n\
        # EOF\n";

    #[test]
    fn whole_bodies_are_complete() {
        let cases: &[(&str, bool)] = &[
            (PROMETHEUS, false),
            (OPENMETRICS, false),
            (OPENMETRICS, true),
            ("# EOF", true),
            ("x 1\n# EOF\n\n", true),
            ("x 1\r\n", false),
            ("x 1\n\n", false),
            // A declared family followed by something else: its emptiness is real.
            ("# TYPE x gauge\n# TYPE y gauge\ny 1\n", false),
            // A plain comment is a whole line like any other.
            ("x 1\n# just a comment\n", false),
            ("x 1\n#HELP is a comment\n", false),
        ];
        for (body, openmetrics) in cases {
            assert!(
                close_delimited_body_is_complete(body.as_bytes(), *openmetrics),
                "{body:?} (openmetrics: {openmetrics})"
            );
        }
    }

    #[test]
    fn cut_bodies_are_incomplete() {
        let cases: &[(&str, bool)] = &[
            ("", false),
            ("\n\n", false),
            ("x 1", false),
            ("x 1\nx{a=\"b\"} 1", false),
            // The false zero of issue 11: cut right after the family's TYPE line.
            ("# HELP x X.\n# TYPE x gauge\n", false),
            ("# HELP x X.\n", false),
            ("x 1\n# UNIT x_seconds seconds\n", false),
            ("\t#  TYPE x gauge \r\n", false),
            // OpenMetrics (by header) without its terminator, or cut inside it.
            ("x 1\n", true),
            ("x 1\n# EO", true),
            ("x 1\n# EO", false),
            ("", true),
        ];
        for (body, openmetrics) in cases {
            assert!(
                !close_delimited_body_is_complete(body.as_bytes(), *openmetrics),
                "{body:?} (openmetrics: {openmetrics})"
            );
        }
    }

    #[test]
    fn every_cut_of_a_one_series_body_is_refused_or_keeps_the_value() {
        // Cut anywhere, the body is refused, or is everything up to a whole line that is not
        // the family's metadata: never a false zero, never a smaller number.
        let samples_before = |cut: &str| {
            cut.lines()
                .filter(|l| l.starts_with("websocket_connections_active"))
                .count()
        };
        for cut in 0..PROMETHEUS.len() {
            let body = &PROMETHEUS[..cut];
            if close_delimited_body_is_complete(body.as_bytes(), false) {
                let declared = body.contains("# TYPE websocket_connections_active");
                assert!(
                    !declared || samples_before(body) == 1,
                    "cut at {cut} accepted with the family declared and its sample cut: {body:?}"
                );
            }
        }
        for cut in 0..OPENMETRICS.len() - 1 {
            let body = &OPENMETRICS.as_bytes()[..cut];
            assert!(
                !close_delimited_body_is_complete(body, true),
                "OpenMetrics cut at {cut}"
            );
            assert!(
                !close_delimited_body_is_complete(body, false)
                    || String::from_utf8_lossy(body).ends_with("12\n"),
                "OpenMetrics without its header, cut at {cut}"
            );
        }
    }

    #[test]
    fn close_delimited_framing_is_told_from_the_headers() {
        let headers = |pairs: &[(&str, &str)]| {
            let mut h = http::HeaderMap::new();
            for (k, v) in pairs {
                h.append(
                    http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    http::HeaderValue::from_str(v).unwrap(),
                );
            }
            h
        };
        let cases: &[(&[(&str, &str)], bool)] = &[
            (&[], true),
            (&[("content-type", "text/plain")], true),
            (&[("content-length", "10")], false),
            (&[("transfer-encoding", "chunked")], false),
            (&[("transfer-encoding", "gzip, Chunked")], false),
            (
                &[
                    ("transfer-encoding", "gzip"),
                    ("transfer-encoding", "chunked"),
                ],
                false,
            ),
            (&[("transfer-encoding", "chunked, gzip")], true),
            (
                &[("transfer-encoding", "gzip"), ("content-length", "10")],
                true,
            ),
            (
                &[("transfer-encoding", ""), ("content-length", "10")],
                false,
            ),
        ];
        for (pairs, want) in cases {
            assert_eq!(is_close_delimited(&headers(pairs)), *want, "{pairs:?}");
        }
    }

    #[test]
    fn openmetrics_is_recognised_by_its_media_type() {
        for ct in [
            "application/openmetrics-text",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            "Application/OpenMetrics-Text;version=0.0.1",
            " application/openmetrics-text ",
        ] {
            assert!(is_openmetrics(ct.as_bytes()), "{ct}");
        }
        for ct in [
            "text/plain; version=0.0.4",
            "",
            "application/openmetrics-textx",
            "text/plain; x=application/openmetrics-text",
        ] {
            assert!(!is_openmetrics(ct.as_bytes()), "{ct}");
        }
    }

    proptest! {
        #[test]
        fn a_body_without_a_final_line_feed_or_eof_is_never_complete(
            body in proptest::collection::vec(any::<u8>(), 0..200),
            openmetrics in any::<bool>(),
        ) {
            if close_delimited_body_is_complete(&body, openmetrics) {
                let text = String::from_utf8_lossy(&body);
                prop_assert!(body.ends_with(b"\n") || text.trim_end().ends_with("EOF"));
            }
        }
    }
}
