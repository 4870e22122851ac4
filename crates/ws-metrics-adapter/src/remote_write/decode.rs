//! Decoding of a Prometheus remote-write 1.0 body: snappy (block format) around a protobuf
//! `prometheus.WriteRequest`. A pure function of the bytes and the limits, fuzzed
//! (`fuzz/`, target `remote_write`); the receiver ([`super`]) maps what it returns onto pods.

use bytes::Bytes;
use prost::Message;

/// The stale marker Prometheus writes when a series disappears: a NaN with these exact bits
/// (`value.StaleNaN` in Prometheus). Any other NaN is an ordinary (unservable) value.
pub const STALE_NAN_BITS: u64 = 0x7ff0_0000_0000_0002;

/// Whether `value` is Prometheus' stale marker (compared by bits: NaN equals nothing).
pub fn is_stale_marker(value: f64) -> bool {
    value.to_bits() == STALE_NAN_BITS
}

/// `prometheus.WriteRequest` (remote-write 1.0). Field 3 (metadata) is skipped as unknown.
#[derive(Clone, PartialEq, Message)]
pub struct WriteRequest {
    /// The series written, each with its samples.
    #[prost(message, repeated, tag = "1")]
    pub timeseries: Vec<TimeSeries>,
}

/// `prometheus.TimeSeries`. Exemplars (3) and native histograms (4) are skipped as unknown.
#[derive(Clone, PartialEq, Message)]
pub struct TimeSeries {
    /// Labels, `__name__` among them.
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<Label>,
    /// Samples, oldest first as Prometheus sends them (not relied upon).
    #[prost(message, repeated, tag = "2")]
    pub samples: Vec<Sample>,
}

/// `prometheus.Label`. Name and value are protobuf `string`s decoded as [`Bytes`] slices of the
/// decompressed body (no allocation per label, the receiver's largest cost otherwise); [`decode`]
/// checks they are UTF-8, as a `String` field would.
#[derive(Clone, PartialEq, Message)]
pub struct Label {
    /// Label name (UTF-8).
    #[prost(bytes = "bytes", tag = "1")]
    pub name: Bytes,
    /// Label value (UTF-8).
    #[prost(bytes = "bytes", tag = "2")]
    pub value: Bytes,
}

impl Label {
    /// A label from text.
    pub fn new(name: &str, value: &str) -> Self {
        Self {
            name: Bytes::copy_from_slice(name.as_bytes()),
            value: Bytes::copy_from_slice(value.as_bytes()),
        }
    }

    /// The name as text; `""` if it is not UTF-8 (never, after [`decode`]).
    pub fn name(&self) -> &str {
        std::str::from_utf8(&self.name).unwrap_or_default()
    }

    /// The value as text; `""` if it is not UTF-8 (never, after [`decode`]).
    pub fn value(&self) -> &str {
        std::str::from_utf8(&self.value).unwrap_or_default()
    }
}

/// `prometheus.Sample`.
#[derive(Clone, PartialEq, Message)]
pub struct Sample {
    /// Sample value (the stale marker is a NaN, see [`is_stale_marker`]).
    #[prost(double, tag = "1")]
    pub value: f64,
    /// Sample time. Unit: milliseconds since the Unix epoch.
    #[prost(int64, tag = "2")]
    pub timestamp: i64,
}

/// The least memory the decoded structures of a request may take, whatever its size: a real
/// agent's request (a few thousand samples with their labels) always fits. Above it, the decoded
/// structures may take as much memory as the decompressed bytes, so a request costs at most
/// about twice `max_decoded_bytes`. Unit: bytes.
const MIN_STRUCTURE_BUDGET: usize = 16 << 20;

/// Limits applied while decoding one body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest decompressed size, read from the snappy header before decompressing. Unit: bytes.
    pub max_decoded_bytes: usize,
    /// Most series in one request.
    pub max_series: usize,
}

/// Why a body cannot be decoded; each maps to one HTTP status in the receiver.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The snappy block header is not readable (not snappy, or truncated).
    #[error("body is not snappy block-compressed: {0}")]
    SnappyHeader(String),
    /// The header announces more decompressed bytes than allowed.
    #[error("decompressed body would be {announced} bytes, above the limit of {limit}")]
    DecodedTooLarge {
        /// Size announced by the snappy header. Unit: bytes.
        announced: usize,
        /// The limit. Unit: bytes.
        limit: usize,
    },
    /// The snappy data is corrupt.
    #[error("body is not valid snappy: {0}")]
    Snappy(String),
    /// The decompressed bytes are not a `prometheus.WriteRequest`.
    #[error("body is not a remote-write protobuf WriteRequest: {0}")]
    Protobuf(String),
    /// More series than allowed in one request.
    #[error("request has {series} series, above the limit of {limit} per request")]
    TooManySeries {
        /// Series in the request.
        series: usize,
        /// The limit.
        limit: usize,
    },
    /// Decoded, the request's series, labels and samples would take more memory than the
    /// decompressed-size limit allows (tiny fields expand many times once decoded).
    #[error(
        "request would take about {estimated} bytes once decoded ({series} series, {labels} labels, {samples} samples), above the limit of {limit}"
    )]
    DecodedStructureTooLarge {
        /// Estimated memory of the decoded request. Unit: bytes.
        estimated: usize,
        /// Series counted.
        series: usize,
        /// Labels counted, over all series.
        labels: usize,
        /// Samples counted, over all series.
        samples: usize,
        /// The limit (the decompressed-size limit). Unit: bytes.
        limit: usize,
    },
}

/// What [`prescan`] counts in a `WriteRequest` without decoding it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Counts {
    series: usize,
    labels: usize,
    samples: usize,
}

impl Counts {
    /// The memory prost allocates for these (its `Vec`s may hold up to twice their length).
    fn estimated_bytes(self) -> usize {
        2 * (self.series * std::mem::size_of::<TimeSeries>()
            + self.labels * std::mem::size_of::<Label>()
            + self.samples * std::mem::size_of::<Sample>())
    }
}

/// Reads a protobuf varint at `*at`, advancing it; `None` when truncated or over 10 bytes.
fn varint(raw: &[u8], at: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..70).step_by(7) {
        let byte = *raw.get(*at)?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// Walks the fields of one message in `raw`, calling `on(field, bytes)` for each length-delimited
/// one and skipping the others. `None` on a wire format it cannot walk (prost then reports it).
fn fields(raw: &[u8], mut on: impl FnMut(u64, &[u8])) -> Option<()> {
    let mut at = 0;
    while at < raw.len() {
        let key = varint(raw, &mut at)?;
        match key & 7 {
            0 => {
                varint(raw, &mut at)?;
            }
            1 => at = at.checked_add(8)?,
            5 => at = at.checked_add(4)?,
            2 => {
                let len = usize::try_from(varint(raw, &mut at)?).ok()?;
                let end = at.checked_add(len)?;
                on(key >> 3, raw.get(at..end)?);
                at = end;
            }
            _ => return None,
        }
    }
    (at == raw.len()).then_some(())
}

/// Counts the series, labels and samples of a `WriteRequest` in one pass over its bytes, with no
/// allocation: what decoding would build, known before prost builds it. Stops counting (and
/// leaves the error to prost) where the bytes are not a walkable message.
fn prescan(raw: &[u8]) -> Counts {
    let mut counts = Counts::default();
    let _ = fields(raw, |field, series| {
        if field == 1 {
            counts.series += 1;
            let _ = fields(series, |inner, _| match inner {
                1 => counts.labels += 1,
                2 => counts.samples += 1,
                _ => {}
            });
        }
    });
    counts
}

/// Decompresses and decodes one remote-write body.
///
/// # Errors
/// [`DecodeError`]: not snappy, too large once decompressed (checked from the header, before any
/// allocation of that size), corrupt, not a `WriteRequest`, or too many series.
pub fn decode(body: &[u8], limits: DecodeLimits) -> Result<WriteRequest, DecodeError> {
    if body.is_empty() {
        // Even an empty WriteRequest compresses to one byte (its length, 0).
        return Err(DecodeError::SnappyHeader("empty body".into()));
    }
    let announced =
        snap::raw::decompress_len(body).map_err(|e| DecodeError::SnappyHeader(e.to_string()))?;
    if announced > limits.max_decoded_bytes {
        return Err(DecodeError::DecodedTooLarge {
            announced,
            limit: limits.max_decoded_bytes,
        });
    }
    let raw = snap::raw::Decoder::new()
        .decompress_vec(body)
        .map_err(|e| DecodeError::Snappy(e.to_string()))?;
    decode_bytes(Bytes::from(raw), limits.max_series)
}

/// Decodes decompressed bytes as a `prometheus.WriteRequest` of at most `max_series` series (the
/// protobuf step of [`decode`], on its own for the fuzz target).
///
/// # Errors
/// [`DecodeError::Protobuf`] or [`DecodeError::TooManySeries`].
pub fn decode_protobuf(raw: &[u8], max_series: usize) -> Result<WriteRequest, DecodeError> {
    decode_bytes(Bytes::copy_from_slice(raw), max_series)
}

fn decode_bytes(raw: Bytes, max_series: usize) -> Result<WriteRequest, DecodeError> {
    // Counted before prost allocates anything: the series limit, and the decoded structures
    // bounded like the decompressed bytes (minimal labels and samples expand 8-16x).
    let counts = prescan(&raw);
    if counts.series > max_series {
        return Err(DecodeError::TooManySeries {
            series: counts.series,
            limit: max_series,
        });
    }
    let limit = raw.len().max(MIN_STRUCTURE_BUDGET);
    if counts.estimated_bytes() > limit {
        return Err(DecodeError::DecodedStructureTooLarge {
            estimated: counts.estimated_bytes(),
            series: counts.series,
            labels: counts.labels,
            samples: counts.samples,
            limit,
        });
    }
    let request = WriteRequest::decode(raw).map_err(|e| DecodeError::Protobuf(e.to_string()))?;
    for l in request.timeseries.iter().flat_map(|t| &t.labels) {
        if std::str::from_utf8(&l.name).is_err() || std::str::from_utf8(&l.value).is_err() {
            return Err(DecodeError::Protobuf(
                "a label name or value is not UTF-8".into(),
            ));
        }
    }
    if request.timeseries.len() > max_series {
        return Err(DecodeError::TooManySeries {
            series: request.timeseries.len(),
            limit: max_series,
        });
    }
    Ok(request)
}

/// Encodes `request` the way a Prometheus agent sends it (protobuf, then snappy block format):
/// for tests, the fuzz seed corpus and the benchmark.
pub fn encode(request: &WriteRequest) -> Vec<u8> {
    let raw = request.encode_to_vec();
    // NB: compressing a Vec in memory cannot fail except above snappy's 4 GiB input limit.
    snap::raw::Encoder::new()
        .compress_vec(&raw)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: DecodeLimits = DecodeLimits {
        max_decoded_bytes: 1 << 20,
        max_series: 100,
    };

    fn series(name: &str, pod: &str, value: f64, ts: i64) -> TimeSeries {
        TimeSeries {
            labels: [("__name__", name), ("namespace", "ws"), ("pod", pod)]
                .into_iter()
                .map(|(n, v)| Label::new(n, v))
                .collect(),
            samples: vec![Sample {
                value,
                timestamp: ts,
            }],
        }
    }

    #[test]
    fn a_write_request_survives_snappy_and_protobuf_round_trip() {
        let request = WriteRequest {
            timeseries: vec![
                series("websocket_connections_active", "a", 42.0, 1_700_000_000_123),
                series("up", "b", 1.0, 1_700_000_000_456),
            ],
        };
        let body = encode(&request);
        assert_eq!(decode(&body, LIMITS), Ok(request));
    }

    #[test]
    fn the_stale_marker_survives_the_round_trip_bit_for_bit() {
        let stale = f64::from_bits(STALE_NAN_BITS);
        let request = WriteRequest {
            timeseries: vec![series("m", "a", stale, 1)],
        };
        let back = decode(&encode(&request), LIMITS).expect("round trip");
        let v = back.timeseries[0].samples[0].value;
        assert!(is_stale_marker(v));
        assert!(
            !is_stale_marker(f64::NAN),
            "an ordinary NaN is no stale marker"
        );
        assert!(!is_stale_marker(0.0));
    }

    #[test]
    fn a_decompressed_size_above_the_limit_is_refused_from_the_header() {
        let request = WriteRequest {
            timeseries: (0..50)
                .map(|i| series("m", &format!("pod-{i}"), 1.0, 1))
                .collect(),
        };
        let body = encode(&request);
        let small = DecodeLimits {
            max_decoded_bytes: 64,
            ..LIMITS
        };
        assert!(matches!(
            decode(&body, small),
            Err(DecodeError::DecodedTooLarge { limit: 64, .. })
        ));
        // A header announcing 4 GiB with no data behind it: refused before any allocation.
        let bomb = [0xff, 0xff, 0xff, 0xff, 0x0f];
        assert!(matches!(
            decode(&bomb, LIMITS),
            Err(DecodeError::DecodedTooLarge { .. })
        ));
    }

    #[test]
    fn more_series_than_allowed_per_request_are_refused() {
        let request = WriteRequest {
            timeseries: (0..3)
                .map(|i| series("m", &i.to_string(), 1.0, 1))
                .collect(),
        };
        let limits = DecodeLimits {
            max_series: 2,
            ..LIMITS
        };
        assert_eq!(
            decode(&encode(&request), limits),
            Err(DecodeError::TooManySeries {
                series: 3,
                limit: 2
            })
        );
    }

    #[test]
    fn the_prescan_counts_what_decoding_would_build() {
        let request = WriteRequest {
            timeseries: (0..3)
                .map(|i| series("m", &i.to_string(), 1.0, 1))
                .collect(),
        };
        assert_eq!(
            prescan(&request.encode_to_vec()),
            Counts {
                series: 3,
                labels: 9,
                samples: 3
            }
        );
    }

    /// Millions of empty labels in a few MiB: refused before prost builds a `Label` for each,
    /// and the reason names the counts.
    #[test]
    fn tiny_fields_that_would_expand_in_memory_are_refused_before_decoding() {
        // One series (field 1) holding 4 Mi empty labels (field 1, length 0: bytes 0x0a 0x00).
        let labels = 4 << 20;
        let mut inner = Vec::with_capacity(2 * labels);
        for _ in 0..labels {
            inner.extend_from_slice(&[0x0a, 0x00]);
        }
        let mut raw = vec![0x0a];
        let mut len = inner.len();
        while len >= 0x80 {
            raw.push((len as u8 & 0x7f) | 0x80);
            len >>= 7;
        }
        raw.push(len as u8);
        raw.extend_from_slice(&inner);
        let err = decode_protobuf(&raw, 100).expect_err("refused");
        assert!(
            matches!(err, DecodeError::DecodedStructureTooLarge { labels: l, series: 1, .. } if l == labels),
            "{err}"
        );
    }

    #[test]
    fn malformed_bodies_are_refused_with_the_step_that_failed() {
        // Empty: no snappy header at all.
        assert!(matches!(
            decode(b"", LIMITS),
            Err(DecodeError::SnappyHeader(_))
        ));
        // Uncompressed protobuf sent as is: its first byte reads as a length, then garbage.
        let raw = WriteRequest {
            timeseries: vec![series("m", "a", 1.0, 1)],
        }
        .encode_to_vec();
        assert!(decode(&raw, LIMITS).is_err());
        // Valid snappy around bytes that are no protobuf (field 1 as a truncated message).
        let not_proto = snap::raw::Encoder::new()
            .compress_vec(&[0x0a, 0x7f, 0x01])
            .expect("compress");
        assert!(matches!(
            decode(&not_proto, LIMITS),
            Err(DecodeError::Protobuf(_))
        ));
        // Snappy header promising 10 bytes, followed by a corrupt literal.
        assert!(matches!(
            decode(&[0x0a, 0xff, 0x00], LIMITS),
            Err(DecodeError::Snappy(_))
        ));
    }
}
