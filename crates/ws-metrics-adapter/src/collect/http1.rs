//! A lean HTTP/1.1 client for plain `http://` scrape targets: between rounds a pod costs one idle
//! `TcpStream` (no task, no buffers); a scrape borrows a read buffer from a pool bounded by
//! `--scrape-concurrency`. The response parser ([`ResponseReader`]) is sans-IO and fuzzed.

use std::collections::{HashMap, HashSet};
use std::io::{self, Write as _};
use std::ops::{Deref, DerefMut, Range};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::ScrapeError;
use super::{ACCEPT, USER_AGENT};

/// Largest response head we read: status line and header fields, plus any skipped 1xx heads.
/// The same cap applies to the trailer section of a chunked body. Unit: bytes.
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Most header fields in one head (hyper's client allows 100; metrics endpoints send a handful).
const MAX_HEADERS: usize = 64;
/// Longest chunk-size line, extensions included. Unit: bytes.
const MAX_CHUNK_LINE: usize = 4 * 1024;
/// Most hex digits in a chunk size (leading zeros included).
const MAX_CHUNK_SIZE_DIGITS: u8 = 16;
/// Capacity of a fresh read buffer: a typical Go-client body (3–4 KiB) plus its head fits.
/// Unit: bytes.
const INITIAL_BUFFER: usize = 8 * 1024;
/// Free space made before each read when the length still to come is unknown. Unit: bytes.
const READ_SIZE: usize = 4 * 1024;
/// Buffers that grew beyond this are freed rather than pooled. Unit: bytes.
const MAX_POOLED_BUFFER: usize = 256 * 1024;

/// Whether `url` is scraped by this client (`http://`, any case) rather than by hyper + rustls.
pub(crate) fn is_plain_http(url: &str) -> bool {
    url.get(..7)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("http://"))
}

// ---------------------------------------------------------------------------------------------
// The response parser (sans IO)
// ---------------------------------------------------------------------------------------------

/// Caps applied while reading one response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    /// Head cap (also the trailer cap). Unit: bytes.
    pub max_head: usize,
    /// Cap on the decoded body. Unit: bytes.
    pub max_body: usize,
}

/// A complete response in the read buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Response {
    /// Status code of the final (non-1xx) response.
    pub status: u16,
    /// Whether the connection may carry the next request: keep-alive, self-delimited body, and
    /// nothing received beyond the response.
    pub reusable: bool,
    /// Where the decoded body lies in the buffer.
    pub body: Range<usize>,
}

/// What [`ResponseReader::advance`] needs next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Progress {
    /// More bytes (or the end of the stream).
    NeedMore,
    /// The response is complete.
    Done(Response),
}

/// Why a response could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ResponseError {
    /// The stream ended before the first byte of a response.
    #[error("connection closed before any response byte")]
    Closed,
    /// The stream ended inside the response.
    #[error("connection closed in the middle of the response")]
    Truncated,
    /// A close-delimited 2xx body that does not look whole (see `collect::body`): the
    /// connection ended where no complete exposition ends.
    #[error("connection closed before the close-delimited body looked complete")]
    Incomplete,
    /// The status line or a header field is not HTTP/1.x.
    #[error("malformed response head: {0}")]
    Head(#[source] httparse::Error),
    /// The body framing is broken or unsupported.
    #[error("malformed response: {0}")]
    Framing(&'static str),
    /// The head (or the trailer section) is over `Limits::max_head` or has too many fields.
    #[error("response head over the size cap")]
    HeadTooLarge,
    /// The decoded body is over `Limits::max_body`.
    #[error("response body over the size cap")]
    BodyTooLarge,
}

/// Reads one HTTP/1.x response from a buffer that the caller fills. The buffer holds only
/// response bytes (from its start); the reader may rewrite it in place (skipping 1xx heads,
/// decoding chunks), so the caller only ever appends to it.
#[derive(Debug)]
pub(crate) struct ResponseReader {
    limits: Limits,
    state: State,
}

#[derive(Debug)]
enum State {
    /// Reading the head; `skipped` bytes of 1xx heads came before it.
    Head { skipped: usize },
    /// Reading the body that starts at `start`.
    Body {
        status: u16,
        keep_alive: bool,
        start: usize,
        framing: Framing,
    },
}

#[derive(Debug)]
enum Framing {
    /// No body (204, 304, 101).
    Empty,
    /// `Content-Length`. Unit: bytes.
    Length(usize),
    /// Delimited by the end of the stream; `openmetrics`: the `Content-Type` says OpenMetrics.
    Close { openmetrics: bool },
    /// `Transfer-Encoding: chunked`.
    Chunked(Chunked),
}

/// In-place chunked decoder: the decoded body is `start..decoded_end`; undecoded bytes follow
/// it directly (the gap left by chunk framing is closed after every call).
#[derive(Debug)]
struct Chunked {
    step: ChunkStep,
    decoded_end: usize,
    /// Size of the chunk whose size line is being read.
    size: usize,
    /// Length of the current size-extension or trailer line. Unit: bytes.
    line: usize,
    /// Length of the trailer section so far. Unit: bytes.
    trailers: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkStep {
    /// Hex digits of a chunk size (`digits` so far).
    Size { digits: u8 },
    /// Chunk extensions up to the end of the size line.
    Extension,
    /// LF after the size line's CR.
    SizeLf,
    /// Chunk data still to copy. Unit: bytes.
    Data(usize),
    /// CR after chunk data.
    DataCr,
    /// LF after chunk data.
    DataLf,
    /// A trailer line, or the empty line that ends the body.
    Trailer,
    /// LF after a trailer line's CR.
    TrailerLf,
    /// The last chunk, trailers and final CRLF were read.
    Done,
}

/// Header facts that decide framing and reuse.
struct HeadFacts {
    status: u16,
    http10: bool,
    content_length: Option<usize>,
    /// `Some(true)` for exactly `chunked`; `Some(false)` for any other transfer coding.
    chunked: Option<bool>,
    close: bool,
    keep_alive: bool,
    /// `Content-Type` is OpenMetrics text.
    openmetrics: bool,
}

fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// Comma-separated list elements, trimmed, empty ones dropped (RFC 9110 §5.6.1).
fn list(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(trim_ows)
        .filter(|s| !s.is_empty())
}

fn head_facts(
    status: u16,
    version: u8,
    headers: &[httparse::Header<'_>],
) -> Result<HeadFacts, ResponseError> {
    let mut facts = HeadFacts {
        status,
        http10: version == 0,
        content_length: None,
        chunked: None,
        close: false,
        keep_alive: false,
        openmetrics: false,
    };
    let mut codings = 0usize;
    for h in headers {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            let mut any = false;
            for v in list(h.value) {
                any = true;
                if !v.iter().all(u8::is_ascii_digit) {
                    return Err(ResponseError::Framing("invalid Content-Length"));
                }
                // Saturate: anything beyond usize is over the cap anyway.
                let n = v.iter().fold(0usize, |n, d| {
                    n.saturating_mul(10).saturating_add(usize::from(d - b'0'))
                });
                if facts.content_length.is_some_and(|c| c != n) {
                    return Err(ResponseError::Framing("conflicting Content-Length values"));
                }
                facts.content_length = Some(n);
            }
            if !any {
                return Err(ResponseError::Framing("empty Content-Length"));
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            for coding in list(h.value) {
                codings += 1;
                let only_chunked = codings == 1 && coding.eq_ignore_ascii_case(b"chunked");
                facts.chunked = Some(only_chunked);
            }
            if codings == 0 {
                return Err(ResponseError::Framing("empty Transfer-Encoding"));
            }
        } else if name.eq_ignore_ascii_case(b"content-type") {
            facts.openmetrics = super::body::is_openmetrics(h.value);
        } else if name.eq_ignore_ascii_case(b"connection") {
            for option in list(h.value) {
                facts.close |= option.eq_ignore_ascii_case(b"close");
                facts.keep_alive |= option.eq_ignore_ascii_case(b"keep-alive");
            }
        }
    }
    match facts.chunked {
        // RFC 9112 §6.1: an HTTP/1.0 message with Transfer-Encoding has faulty framing.
        Some(_) if facts.http10 => Err(ResponseError::Framing(
            "Transfer-Encoding in an HTTP/1.0 response",
        )),
        // We cannot undo gzip & co. (we never ask for them).
        Some(false) => Err(ResponseError::Framing("unsupported Transfer-Encoding")),
        Some(true) | None => Ok(facts),
    }
}

/// RFC 9112 §6.3: 1xx, 204 and 304 responses end with their head.
fn has_body(status: u16) -> bool {
    !(status < 200 || status == 204 || status == 304)
}

impl ResponseReader {
    /// A reader for one response.
    pub(crate) fn new(limits: Limits) -> Self {
        Self {
            limits,
            state: State::Head { skipped: 0 },
        }
    }

    /// Status of the final response once its head is read.
    pub(crate) fn status(&self) -> Option<u16> {
        match self.state {
            State::Head { .. } => None,
            State::Body { status, .. } => Some(status),
        }
    }

    /// Whether no byte of the response has been seen (`buf` as last passed to `advance`).
    pub(crate) fn nothing_received(&self, buf: &[u8]) -> bool {
        matches!(self.state, State::Head { skipped: 0 }) && buf.is_empty()
    }

    /// How many more bytes the reader wants to see, to size the next read. Unit: bytes.
    pub(crate) fn read_hint(&self, buf: &[u8]) -> usize {
        match &self.state {
            State::Body {
                start,
                framing: Framing::Length(n),
                ..
            } => start.saturating_add(*n).saturating_sub(buf.len()).max(1),
            _ => READ_SIZE,
        }
    }

    /// Parses what `buf` holds; `eof` says the stream has ended after it. Call again after
    /// appending bytes to `buf`. Once `Done`, the body is at `Response::body` in `buf`.
    ///
    /// # Errors
    /// [`ResponseError`] when the response is malformed, over a cap, or cut short by `eof`.
    pub(crate) fn advance(
        &mut self,
        buf: &mut Vec<u8>,
        eof: bool,
    ) -> Result<Progress, ResponseError> {
        if let State::Head { skipped } = &mut self.state {
            let head = read_head(buf, skipped, self.limits)?;
            let skipped = *skipped;
            match head {
                Some(state) => self.state = state,
                None if eof && buf.is_empty() && skipped == 0 => return Err(ResponseError::Closed),
                None if eof => return Err(ResponseError::Truncated),
                None => return Ok(Progress::NeedMore),
            }
        }
        let State::Body {
            status,
            keep_alive,
            start,
            framing,
        } = &mut self.state
        else {
            // NB: the head branch above either moved to `Body` or returned.
            return Err(ResponseError::Framing("internal: head not read"));
        };
        let (status, start) = (*status, *start);
        let done = |end: usize, reusable: bool| {
            Ok(Progress::Done(Response {
                status,
                reusable,
                body: start..end,
            }))
        };
        match framing {
            Framing::Empty => done(start, *keep_alive && buf.len() == start),
            // Refused before reading it; after the head, so an error status still shows.
            Framing::Length(n) if *n > self.limits.max_body => Err(ResponseError::BodyTooLarge),
            Framing::Length(n) => {
                let end = start + *n;
                if buf.len() >= end {
                    done(end, *keep_alive && buf.len() == end)
                } else if eof {
                    Err(ResponseError::Truncated)
                } else {
                    Ok(Progress::NeedMore)
                }
            }
            Framing::Close { openmetrics } => {
                if buf.len() - start > self.limits.max_body {
                    Err(ResponseError::BodyTooLarge)
                } else if eof
                    && (200..300).contains(&status)
                    && !super::body::close_delimited_body_is_complete(&buf[start..], *openmetrics)
                {
                    // Only a clean EOF gets here: a reset or read error fails in the caller.
                    Err(ResponseError::Incomplete)
                } else if eof {
                    done(buf.len(), false)
                } else {
                    Ok(Progress::NeedMore)
                }
            }
            Framing::Chunked(chunked) => {
                if chunked.decode(buf, start, self.limits)? {
                    let end = chunked.decoded_end;
                    done(end, *keep_alive && buf.len() == end)
                } else if eof {
                    Err(ResponseError::Truncated)
                } else {
                    Ok(Progress::NeedMore)
                }
            }
        }
    }
}

/// One response read by [`decode_response`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedResponse {
    /// Status code of the final (non-1xx) response.
    pub status: u16,
    /// Whether the client would keep the connection for the next scrape.
    pub reusable: bool,
    /// The decoded body (chunk framing removed).
    pub body: Vec<u8>,
}

/// Reads one HTTP/1.x response from `input` exactly as the `http://` scrape client reads it from
/// a socket, with the same head cap (16 KiB) and a body cap of `max_body` bytes: the bytes arrive
/// in pieces of `read_sizes` (in order; then one piece with the rest), followed by a clean end of
/// the stream. Pure, for the fuzz target and tests; not a general-purpose HTTP API.
///
/// # Errors
/// Why the client refuses the response (malformed, over a cap, cut short), as text. A message
/// that starts with `internal:` is a bug in the reader.
#[doc(hidden)]
pub fn decode_response(
    input: &[u8],
    read_sizes: &[usize],
    max_body: usize,
) -> Result<DecodedResponse, String> {
    let limits = Limits {
        max_head: MAX_HEAD_BYTES,
        max_body,
    };
    decode_pieces(input, read_sizes, limits).map_err(|e| e.to_string())
}

/// [`decode_response`] with explicit limits and the typed error.
fn decode_pieces(
    input: &[u8],
    read_sizes: &[usize],
    limits: Limits,
) -> Result<DecodedResponse, ResponseError> {
    let mut reader = ResponseReader::new(limits);
    let mut buf = Vec::new();
    let mut rest = input;
    let mut sizes = read_sizes.iter();
    loop {
        let eof = rest.is_empty();
        match reader.advance(&mut buf, eof)? {
            Progress::Done(r) => {
                // Bytes the server sent after the response also make it non-reusable.
                let reusable = r.reusable && rest.is_empty();
                let body = buf.get(r.body).unwrap_or_default().to_vec();
                return Ok(DecodedResponse {
                    status: r.status,
                    reusable,
                    body,
                });
            }
            Progress::NeedMore if eof => {
                return Err(ResponseError::Framing(
                    "internal: more wanted after the end",
                ));
            }
            Progress::NeedMore => {}
        }
        let n = sizes
            .next()
            .copied()
            .unwrap_or(rest.len())
            .clamp(1, rest.len());
        buf.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
    }
}

/// Parses the head at the start of `buf`, dropping 1xx interim heads from `buf`. `None` while
/// the head is incomplete.
fn read_head(
    buf: &mut Vec<u8>,
    skipped: &mut usize,
    limits: Limits,
) -> Result<Option<State>, ResponseError> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut headers);
        let len = match response.parse(&buf[..]) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if *skipped + buf.len() > limits.max_head => {
                return Err(ResponseError::HeadTooLarge);
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => return Err(ResponseError::HeadTooLarge),
            Err(e) => return Err(ResponseError::Head(e)),
        };
        if *skipped + len > limits.max_head {
            return Err(ResponseError::HeadTooLarge);
        }
        let (Some(status), Some(version)) = (response.code, response.version) else {
            // NB: httparse sets both before it reports a complete head.
            return Err(ResponseError::Framing("head without status"));
        };
        // 1xx interim responses (100 Continue, 103 Early Hints) precede the real one: skip them.
        // 101 Switching Protocols is final and was never asked for: reported as a bad status.
        if (100..200).contains(&status) && status != 101 {
            buf.drain(..len);
            *skipped += len;
            continue;
        }
        let facts = head_facts(status, version, response.headers)?;
        let persistent = if facts.http10 {
            facts.keep_alive && !facts.close
        } else {
            !facts.close
        };
        let (framing, keep_alive) = if !has_body(status) {
            (Framing::Empty, persistent && status != 101)
        } else if facts.chunked.is_some() {
            let chunked = Chunked {
                step: ChunkStep::Size { digits: 0 },
                decoded_end: len,
                size: 0,
                line: 0,
                trailers: 0,
            };
            // Both Transfer-Encoding and Content-Length: the former wins (RFC 9112 §6.3), but the
            // connection is not trusted with another request.
            let keep = persistent && facts.content_length.is_none();
            (Framing::Chunked(chunked), keep)
        } else if let Some(n) = facts.content_length {
            (Framing::Length(n), persistent)
        } else {
            let openmetrics = facts.openmetrics;
            (Framing::Close { openmetrics }, false)
        };
        return Ok(Some(State::Body {
            status: facts.status,
            keep_alive,
            start: len,
            framing,
        }));
    }
}

fn is_ctl(b: u8) -> bool {
    (b < 0x20 && b != b'\t') || b == 0x7f
}

impl Chunked {
    /// Decodes what `buf` holds past the decoded part; `true` once the body has ended.
    fn decode(
        &mut self,
        buf: &mut Vec<u8>,
        start: usize,
        limits: Limits,
    ) -> Result<bool, ResponseError> {
        // Invariant: undecoded bytes start right at `decoded_end` on entry (see the end).
        let mut i = self.decoded_end;
        while i < buf.len() && self.step != ChunkStep::Done {
            if let ChunkStep::Data(remaining) = self.step {
                let take = remaining.min(buf.len() - i);
                if i != self.decoded_end {
                    buf.copy_within(i..i + take, self.decoded_end);
                }
                self.decoded_end += take;
                i += take;
                self.step = match remaining - take {
                    0 => ChunkStep::DataCr,
                    left => ChunkStep::Data(left),
                };
                continue;
            }
            let b = buf[i];
            i += 1;
            self.step = self.byte(b, self.decoded_end - start, limits)?;
        }
        // Close the gap left by the framing bytes just decoded.
        if i > self.decoded_end {
            let rest = buf.len() - i;
            buf.copy_within(i.., self.decoded_end);
            buf.truncate(self.decoded_end + rest);
        }
        Ok(self.step == ChunkStep::Done)
    }

    /// One framing byte; `decoded` is the body length so far.
    fn byte(&mut self, b: u8, decoded: usize, limits: Limits) -> Result<ChunkStep, ResponseError> {
        use ChunkStep as S;
        let malformed = |what| Err(ResponseError::Framing(what));
        Ok(match (self.step, b) {
            (S::Size { digits }, b) if b.is_ascii_hexdigit() => {
                if digits >= MAX_CHUNK_SIZE_DIGITS {
                    return malformed("chunk size too long");
                }
                let digit = usize::from(match b {
                    b'0'..=b'9' => b - b'0',
                    _ => (b | 0x20) - b'a' + 10,
                });
                self.size = self.size.saturating_mul(16).saturating_add(digit);
                if decoded.saturating_add(self.size) > limits.max_body {
                    return Err(ResponseError::BodyTooLarge);
                }
                S::Size { digits: digits + 1 }
            }
            (S::Size { digits: 0 }, _) => return malformed("invalid chunk size"),
            (S::Size { .. }, b';' | b' ' | b'\t') => {
                self.line = 1;
                S::Extension
            }
            (S::Size { .. } | S::Extension, b'\r') => S::SizeLf,
            (S::Size { .. } | S::Extension | S::SizeLf, b'\n') => self.size_line_end(),
            (S::Size { .. }, _) => return malformed("invalid chunk size"),
            (S::Extension, b) if is_ctl(b) => return malformed("control byte in chunk extension"),
            (S::Extension, _) => {
                self.line += 1;
                if self.line > MAX_CHUNK_LINE {
                    return malformed("chunk extension too long");
                }
                S::Extension
            }
            (S::SizeLf, _) => return malformed("CR without LF in chunk size line"),
            (S::DataCr, b'\r') => S::DataLf,
            (S::DataCr | S::DataLf, b'\n') => S::Size { digits: 0 },
            (S::DataCr | S::DataLf, _) => return malformed("chunk data not followed by CRLF"),
            (S::Trailer | S::TrailerLf, _) if self.trailers >= limits.max_head => {
                return Err(ResponseError::HeadTooLarge);
            }
            (S::Trailer, b'\r') => {
                self.trailers += 1;
                S::TrailerLf
            }
            (S::Trailer | S::TrailerLf, b'\n') => {
                self.trailers += 1;
                if self.line == 0 {
                    S::Done
                } else {
                    self.line = 0;
                    S::Trailer
                }
            }
            (S::Trailer, b) if is_ctl(b) => return malformed("control byte in trailer"),
            (S::Trailer, _) => {
                self.trailers += 1;
                self.line += 1;
                S::Trailer
            }
            (S::TrailerLf, _) => return malformed("CR without LF in trailer"),
            // `decode` copies data itself and stops at Done.
            (S::Data(_) | S::Done, _) => return malformed("internal: byte in data state"),
        })
    }

    fn size_line_end(&mut self) -> ChunkStep {
        let size = std::mem::take(&mut self.size);
        self.line = 0;
        if size == 0 {
            ChunkStep::Trailer
        } else {
            ChunkStep::Data(size)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Buffers
// ---------------------------------------------------------------------------------------------

/// Read buffers of the scrapes in flight, kept for the next ones.
#[derive(Debug)]
struct BufferPool {
    free: Mutex<Vec<Vec<u8>>>,
    /// Most buffers kept: the scrape concurrency, so the pool never outgrows one round's need.
    keep: usize,
}

impl BufferPool {
    fn take(&self) -> PooledBuf<'_> {
        let buf = lock(&self.free).pop();
        PooledBuf {
            buf: buf.unwrap_or_else(|| Vec::with_capacity(INITIAL_BUFFER)),
            pool: self,
        }
    }
}

/// A buffer that goes back to its pool (empty) when dropped, unless it grew too big.
struct PooledBuf<'a> {
    buf: Vec<u8>,
    pool: &'a BufferPool,
}

impl Deref for PooledBuf<'_> {
    type Target = Vec<u8>;
    fn deref(&self) -> &Vec<u8> {
        &self.buf
    }
}

impl DerefMut for PooledBuf<'_> {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }
}

impl Drop for PooledBuf<'_> {
    fn drop(&mut self) {
        if self.buf.capacity() > MAX_POOLED_BUFFER {
            return;
        }
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        let mut free = lock(&self.pool.free);
        if free.len() < self.pool.keep {
            free.push(buf);
        }
    }
}

/// Locks, ignoring poison: every critical section here leaves its map or list consistent.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A response body in a pooled buffer; the buffer returns to the pool when this is dropped.
pub(crate) struct Body<'a> {
    buf: PooledBuf<'a>,
    range: Range<usize>,
}

impl Body<'_> {
    /// The decoded body.
    pub(crate) fn bytes(&self) -> &[u8] {
        // The reader only reports ranges inside the buffer it was given.
        self.buf.get(self.range.clone()).unwrap_or_default()
    }
}

// ---------------------------------------------------------------------------------------------
// The client
// ---------------------------------------------------------------------------------------------

/// One `GET` target: the parsed URL.
struct Target {
    uri: http::Uri,
    port: u16,
}

impl Target {
    fn parse(url: &str) -> Option<Self> {
        let uri: http::Uri = url.parse().ok()?;
        uri.host().filter(|h| !h.is_empty())?;
        let port = uri.port_u16().unwrap_or(80);
        Some(Self { uri, port })
    }

    /// Host as written in the URL (IPv6 in brackets).
    fn host(&self) -> &str {
        self.uri.host().unwrap_or_default()
    }

    /// Host to connect to (IPv6 without brackets).
    fn connect_host(&self) -> &str {
        let host = self.host();
        host.strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host)
    }

    /// The request, formatted into `buf`.
    fn write_request(&self, buf: &mut Vec<u8>) {
        let path = self.uri.path_and_query().map_or("/", |p| p.as_str());
        buf.extend_from_slice(b"GET ");
        buf.extend_from_slice(if path.is_empty() {
            b"/"
        } else {
            path.as_bytes()
        });
        buf.extend_from_slice(b" HTTP/1.1\r\nHost: ");
        buf.extend_from_slice(self.host().as_bytes());
        // Like hyper: the port only when it is not the default.
        if self.uri.port_u16().is_some_and(|p| p != 80) {
            // NB: writing to a Vec cannot fail.
            let _ = write!(buf, ":{}", self.port);
        }
        buf.extend_from_slice(b"\r\nAccept: ");
        buf.extend_from_slice(ACCEPT.as_bytes());
        buf.extend_from_slice(b"\r\nUser-Agent: ");
        buf.extend_from_slice(USER_AGENT.as_bytes());
        buf.extend_from_slice(b"\r\n\r\n");
    }
}

/// Why one request/response exchange failed.
enum Failure {
    /// A reused connection turned out closed before answering: try a fresh one.
    Stale(io::Error),
    /// The scrape failed.
    Failed(ScrapeError),
}

/// Keep-alive HTTP/1.1 client for `http://` pods: at most one idle connection per URL.
#[derive(Debug)]
pub(crate) struct Client {
    idle: Mutex<HashMap<Arc<str>, TcpStream>>,
    buffers: BufferPool,
    limits: Limits,
}

impl Client {
    /// A client with no connections; `concurrency` bounds the buffers kept.
    pub(crate) fn new(max_body: usize, concurrency: usize) -> Self {
        Self {
            idle: Mutex::new(HashMap::new()),
            buffers: BufferPool {
                free: Mutex::new(Vec::new()),
                keep: concurrency,
            },
            limits: Limits {
                max_head: MAX_HEAD_BYTES,
                max_body,
            },
        }
    }

    /// Drops the idle connections of URLs not in `live` (pods that are gone or moved).
    pub(crate) fn retain(&self, live: &HashSet<Arc<str>>) {
        lock(&self.idle).retain(|url, _| live.contains(url));
    }

    /// Idle connections held.
    #[cfg(test)]
    fn idle_count(&self) -> usize {
        lock(&self.idle).len()
    }

    /// `GET url`; the 2xx body, read in full. The caller bounds the time taken.
    ///
    /// # Errors
    /// Why the scrape failed: the URL, the connection (connect, reset, early close), a non-2xx
    /// status, the body cap, or a response that is not HTTP/1.x (broken framing, head over the
    /// cap).
    pub(crate) async fn get(&self, url: &Arc<str>) -> Result<Body<'_>, ScrapeError> {
        let Some(target) = Target::parse(url) else {
            return Err(ScrapeError::BadUrl);
        };
        let mut buf = self.buffers.take();
        if let Some(stream) = self.take_idle(url) {
            match self.exchange(stream, &target, &mut buf, true).await {
                Ok(done) => return self.finish(url, done, buf),
                Err(Failure::Failed(error)) => return Err(error),
                Err(Failure::Stale(e)) => {
                    let url = &**url;
                    tracing::debug!(url, error = %e, "idle connection closed by the pod; reconnecting");
                    buf.clear();
                }
            }
        }
        let stream = connect(&target).await.map_err(ScrapeError::ConnectFailed)?;
        match self.exchange(stream, &target, &mut buf, false).await {
            Ok(done) => self.finish(url, done, buf),
            Err(Failure::Failed(error)) => Err(error),
            // NB: a fresh connection is never stale; `exchange` reports its failures as such.
            Err(Failure::Stale(e)) => Err(ScrapeError::ConnectionFailed(e)),
        }
    }

    /// The idle connection of `url`, unless the pod closed it (or sent something unasked)
    /// meanwhile.
    fn take_idle(&self, url: &str) -> Option<TcpStream> {
        let stream = lock(&self.idle).remove(url)?;
        // Cheap: no syscall unless the reactor saw the socket become readable.
        match stream.try_read(&mut [0u8; 1]) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Some(stream),
            _ => None,
        }
    }

    /// Parks a reusable connection, then turns the response into the body or the outcome.
    fn finish<'a>(
        &self,
        url: &Arc<str>,
        (response, stream): (Response, TcpStream),
        buf: PooledBuf<'a>,
    ) -> Result<Body<'a>, ScrapeError> {
        if response.reusable {
            // At most one per URL: a connection already parked there (same URL scraped twice in
            // a round) is dropped.
            let previous = lock(&self.idle).insert(url.clone(), stream);
            drop(previous);
        }
        if !(200..300).contains(&response.status) {
            return Err(ScrapeError::BadStatus {
                status: response.status,
            });
        }
        Ok(Body {
            buf,
            range: response.body,
        })
    }

    /// Writes the request and reads the response into `buf`.
    async fn exchange(
        &self,
        mut stream: TcpStream,
        target: &Target,
        buf: &mut Vec<u8>,
        reused: bool,
    ) -> Result<(Response, TcpStream), Failure> {
        buf.clear();
        target.write_request(buf);
        let written = stream.write_all(buf).await;
        buf.clear();
        if let Err(e) = written {
            return Err(if reused {
                Failure::Stale(e)
            } else {
                Failure::Failed(ScrapeError::ConnectionFailed(e))
            });
        }
        let mut reader = ResponseReader::new(self.limits);
        let mut eof = false;
        loop {
            let progress = reader.advance(buf, eof);
            match (progress, reader.status()) {
                (Ok(Progress::Done(response)), _) => return Ok((response, stream)),
                // An error status: the body does not matter. It is drained only when it came
                // with the head, so the connection can be reused; otherwise it is dropped.
                (_, Some(status)) if !(200..300).contains(&status) => {
                    return Err(Failure::Failed(ScrapeError::BadStatus { status }));
                }
                (Ok(Progress::NeedMore), _) if !eof => {}
                (Ok(Progress::NeedMore), _) => {
                    // NB: unreachable, `advance` ends the response or fails at EOF.
                    return Err(Failure::Failed(ScrapeError::ResponseCut(
                        ResponseError::Truncated,
                    )));
                }
                (Err(ResponseError::Closed), _) if reused => {
                    return Err(Failure::Stale(io::ErrorKind::UnexpectedEof.into()));
                }
                (Err(e), _) => {
                    // The connection ended before the response did (see `collect::body` for why
                    // an incomplete close-delimited body is counted there too), or the response
                    // is not one.
                    return Err(Failure::Failed(ScrapeError::from_response(
                        e,
                        self.limits.max_body,
                    )));
                }
            }
            buf.reserve(reader.read_hint(buf));
            match stream.read_buf(buf).await {
                Ok(0) => eof = true,
                Ok(_) => {}
                Err(e) if reused && reader.nothing_received(buf) && is_reset(&e) => {
                    return Err(Failure::Stale(e));
                }
                Err(e) => return Err(Failure::Failed(ScrapeError::ConnectionFailed(e))),
            }
        }
    }
}

fn is_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof
    )
}

/// A fresh connection to the target. Any connect deadline is the caller's scrape deadline.
async fn connect(target: &Target) -> io::Result<TcpStream> {
    // NB: an IP literal resolves without a blocking lookup; a DNS name goes to the blocking pool.
    let stream = TcpStream::connect((target.connect_host(), target.port)).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use proptest::prelude::*;

    const LIMITS: Limits = Limits {
        max_head: 1024,
        max_body: 64,
    };

    /// What a response decodes to: (status, reusable, body).
    type Decoded = Result<(u16, bool, Vec<u8>), ResponseError>;

    /// Feeds `input` to a reader in pieces of the given sizes (the last piece takes the rest),
    /// then signals EOF if the response is not complete yet.
    fn decode_split(input: &[u8], sizes: &[usize], limits: Limits) -> Decoded {
        let r = decode_pieces(input, sizes, limits)?;
        Ok((r.status, r.reusable, r.body))
    }

    fn decode(input: &[u8]) -> Decoded {
        decode_split(input, &[], LIMITS)
    }

    fn ok(status: u16, reusable: bool, body: &str) -> Decoded {
        Ok((status, reusable, body.as_bytes().to_vec()))
    }

    /// (what, raw response, expected)
    fn table() -> Vec<(&'static str, &'static str, Decoded)> {
        use ResponseError as E;
        vec![
            (
                "content-length",
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
                ok(200, true, "hello"),
            ),
            (
                "content-length 0",
                "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
                ok(200, true, ""),
            ),
            (
                "header names any case, bare LF",
                "HTTP/1.1 200 OK\ncontent-LENGTH: 2\n\nhi",
                ok(200, true, "hi"),
            ),
            (
                "repeated equal lengths",
                "HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\nContent-Length: 2\r\n\r\nhi",
                ok(200, true, "hi"),
            ),
            (
                "conflicting lengths",
                "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nhi!",
                Err(E::Framing("conflicting Content-Length values")),
            ),
            (
                "negative length",
                "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
                Err(E::Framing("invalid Content-Length")),
            ),
            (
                "empty length",
                "HTTP/1.1 200 OK\r\nContent-Length: \r\n\r\n",
                Err(E::Framing("empty Content-Length")),
            ),
            (
                "body cut short",
                "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello",
                Err(E::Truncated),
            ),
            (
                "head cut short",
                "HTTP/1.1 200 OK\r\nContent-Len",
                Err(E::Truncated),
            ),
            ("nothing at all", "", Err(E::Closed)),
            (
                "length over the cap, refused before the body",
                "HTTP/1.1 200 OK\r\nContent-Length: 65\r\n\r\n",
                Err(E::BodyTooLarge),
            ),
            (
                "huge length",
                "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999999\r\n\r\n",
                Err(E::BodyTooLarge),
            ),
            (
                "length at the cap",
                "HTTP/1.1 200 OK\r\nContent-Length: 64\r\n\r\n0123456789012345678901234567890123456789012345678901234567890123",
                ok(
                    200,
                    true,
                    "0123456789012345678901234567890123456789012345678901234567890123",
                ),
            ),
            (
                "extra bytes after the body",
                "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhiHTTP/1.1",
                ok(200, false, "hi"),
            ),
            (
                "connection close",
                "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nhi",
                ok(200, false, "hi"),
            ),
            (
                "connection close among options",
                "HTTP/1.1 200 OK\r\nConnection: upgrade , Close\r\nContent-Length: 2\r\n\r\nhi",
                ok(200, false, "hi"),
            ),
            (
                "close-delimited",
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nhello\nworld\n",
                ok(200, false, "hello\nworld\n"),
            ),
            (
                "close-delimited, empty: as if cut before the first byte",
                "HTTP/1.1 200 OK\r\n\r\n",
                Err(E::Incomplete),
            ),
            (
                "close-delimited, cut inside a line",
                "HTTP/1.1 200 OK\r\n\r\n# TYPE x gauge\nx 1",
                Err(E::Incomplete),
            ),
            (
                "close-delimited, cut after a TYPE line (a false zero before issue 11)",
                "HTTP/1.1 200 OK\r\n\r\n# HELP x X.\n# TYPE x gauge\n",
                Err(E::Incomplete),
            ),
            (
                "close-delimited OpenMetrics without its # EOF",
                "HTTP/1.1 200 OK\r\nContent-Type: application/openmetrics-text; version=1.0.0\r\n\r\nx 1\n",
                Err(E::Incomplete),
            ),
            (
                "close-delimited OpenMetrics",
                "HTTP/1.1 200 OK\r\nContent-Type: application/openmetrics-text; version=1.0.0\r\n\r\nx 1\n# EOF",
                ok(200, false, "x 1\n# EOF"),
            ),
            (
                "close-delimited error status: the body is not checked",
                "HTTP/1.1 503 Busy\r\n\r\nbusy",
                ok(503, false, "busy"),
            ),
            (
                "close-delimited over the cap",
                "HTTP/1.1 200 OK\r\n\r\n01234567890123456789012345678901234567890123456789012345678901234",
                Err(E::BodyTooLarge),
            ),
            (
                "http/1.0 with length",
                "HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nhi",
                ok(200, false, "hi"),
            ),
            (
                "http/1.0 keep-alive",
                "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nhi",
                ok(200, true, "hi"),
            ),
            (
                "http/1.0 close-delimited",
                "HTTP/1.0 200 OK\r\n\r\nhi there\n",
                ok(200, false, "hi there\n"),
            ),
            (
                "http/1.0 with chunked",
                "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                Err(E::Framing("Transfer-Encoding in an HTTP/1.0 response")),
            ),
            (
                "chunked",
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n",
                ok(200, true, "hello, world"),
            ),
            (
                "chunked, upper-case hex and leading zeros",
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n00A\r\n0123456789\r\n000\r\n\r\n",
                ok(200, true, "0123456789"),
            ),
            (
                "chunked with extensions",
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;name=value;x=\"q;d\"\r\nhello\r\n1 ; last\r\n!\r\n0;end\r\n\r\n",
                ok(200, true, "hello!"),
            ),
            (
                "chunked with trailers",
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\nExpires: never\r\nX-Sum: 1\r\n\r\n",
                ok(200, true, "hi"),
            ),
            (
                "chunked, bare LF",
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\nhi\n0\n\n",
                ok(200, true, "hi"),
            ),
            (
                "chunked and a length: chunked wins, not reused",
                "HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
                ok(200, false, "hi"),
            ),
            (
                "chunked, bytes after the end",
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\nXYZ",
                ok(200, false, "hi"),
            ),
            (
                "chunked, cut short",
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
                Err(E::Truncated),
            ),
            (
                "chunked, no last chunk",
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n",
                Err(E::Truncated),
            ),
            (
                "chunked, bad size",
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhi\r\n0\r\n\r\n",
                Err(E::Framing("invalid chunk size")),
            ),
            (
                "chunked, size missing",
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n;ext\r\n",
                Err(E::Framing("invalid chunk size")),
            ),
            (
                "chunked, data longer than its size",
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhello\r\n0\r\n\r\n",
                Err(E::Framing("chunk data not followed by CRLF")),
            ),
            (
                "chunked, size too long",
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n00000000000000001\r\nx\r\n0\r\n\r\n",
                Err(E::Framing("chunk size too long")),
            ),
            (
                "chunked over the cap, refused at the size line",
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n41\r\n",
                Err(E::BodyTooLarge),
            ),
            (
                "chunked over the cap across chunks",
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n20\r\n01234567890123456789012345678901\r\n21\r\n",
                Err(E::BodyTooLarge),
            ),
            (
                "chunked, huge size",
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\n",
                Err(E::BodyTooLarge),
            ),
            (
                "gzip transfer coding",
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
                Err(E::Framing("unsupported Transfer-Encoding")),
            ),
            (
                "chunked twice",
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                Err(E::Framing("unsupported Transfer-Encoding")),
            ),
            (
                "error status with body",
                "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\nnope",
                ok(500, true, "nope"),
            ),
            (
                "no reason phrase",
                "HTTP/1.1 404\r\nContent-Length: 0\r\n\r\n",
                ok(404, true, ""),
            ),
            (
                "204 has no body",
                "HTTP/1.1 204 No Content\r\n\r\n",
                ok(204, true, ""),
            ),
            (
                "304 ignores its length",
                "HTTP/1.1 304 Not Modified\r\nContent-Length: 100\r\n\r\n",
                ok(304, true, ""),
            ),
            (
                "interim responses are skipped",
                "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi",
                ok(200, true, "hi"),
            ),
            (
                "101 is final and not reused",
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
                ok(101, false, ""),
            ),
            (
                "not http",
                "SSH-2.0-OpenSSH_9.6\r\n",
                Err(E::Head(httparse::Error::Version)),
            ),
            (
                "http/2 preface-like",
                "HTTP/2 200\r\n\r\n",
                Err(E::Head(httparse::Error::Version)),
            ),
            (
                "html instead of a head",
                "<html><body>hi</body></html>\n",
                Err(E::Head(httparse::Error::Version)),
            ),
            (
                "bad status",
                "HTTP/1.1 2x0 OK\r\n\r\n",
                Err(E::Head(httparse::Error::Status)),
            ),
            (
                "bad header",
                "HTTP/1.1 200 OK\r\nBad Header: x\r\n\r\n",
                Err(E::Head(httparse::Error::HeaderName)),
            ),
        ]
    }

    #[test]
    fn responses_decode_as_the_table_says() {
        for (what, raw, want) in table() {
            assert_eq!(decode(raw.as_bytes()), want, "{what}");
        }
    }

    #[test]
    fn every_split_of_every_table_response_decodes_the_same() {
        for (what, raw, want) in table() {
            let raw = raw.as_bytes();
            // Byte by byte, and every two-piece split.
            assert_eq!(
                decode_split(raw, &[1; 4096], LIMITS),
                want,
                "{what}, byte by byte"
            );
            for cut in 1..raw.len() {
                assert_eq!(
                    decode_split(raw, &[cut], LIMITS),
                    want,
                    "{what}, cut at {cut}"
                );
            }
        }
    }

    #[test]
    fn a_head_over_the_cap_is_refused_complete_or_not() {
        let big = format!(
            "HTTP/1.1 200 OK\r\nX-Pad: {}\r\nContent-Length: 0\r\n\r\n",
            "a".repeat(1100)
        );
        assert_eq!(decode(big.as_bytes()), Err(ResponseError::HeadTooLarge));
        // Incomplete but already over the cap: refused without waiting for the rest.
        let mut reader = ResponseReader::new(LIMITS);
        let mut buf = big.as_bytes()[..1050].to_vec();
        assert_eq!(
            reader.advance(&mut buf, false),
            Err(ResponseError::HeadTooLarge)
        );
        let many: String = (0..MAX_HEADERS + 1)
            .map(|i| format!("X-{i}: 1\r\n"))
            .collect();
        let many = format!("HTTP/1.1 200 OK\r\n{many}\r\n");
        assert_eq!(decode(many.as_bytes()), Err(ResponseError::HeadTooLarge));
        let trailers = format!(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-Pad: {}\r\n\r\n",
            "a".repeat(1100)
        );
        assert_eq!(
            decode(trailers.as_bytes()),
            Err(ResponseError::HeadTooLarge)
        );
        let ext = format!(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1;{}\r\nx\r\n0\r\n\r\n",
            "a".repeat(MAX_CHUNK_LINE)
        );
        assert_eq!(
            decode(ext.as_bytes()),
            Err(ResponseError::Framing("chunk extension too long"))
        );
    }

    #[test]
    fn the_read_hint_asks_for_exactly_the_rest_of_a_sized_body() {
        let mut reader = ResponseReader::new(LIMITS);
        let mut buf = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc".to_vec();
        assert_eq!(reader.read_hint(&buf), READ_SIZE);
        assert_eq!(reader.advance(&mut buf, false), Ok(Progress::NeedMore));
        assert_eq!(reader.read_hint(&buf), 7);
        assert_eq!(reader.status(), Some(200));
    }

    #[test]
    fn requests_carry_the_path_query_host_and_the_usual_headers() {
        let cases = [
            (
                "http://10.0.0.7:9090/metrics?x=1#frag",
                "GET /metrics?x=1 HTTP/1.1\r\nHost: 10.0.0.7:9090\r\n",
                ("10.0.0.7", 9090),
            ),
            (
                "HTTP://pod.example:80",
                "GET / HTTP/1.1\r\nHost: pod.example\r\n",
                ("pod.example", 80),
            ),
            (
                "http://[fd00::7]:9100/stats/prom",
                "GET /stats/prom HTTP/1.1\r\nHost: [fd00::7]:9100\r\n",
                ("fd00::7", 9100),
            ),
        ];
        for (url, head, (host, port)) in cases {
            let t = Target::parse(url).unwrap();
            let mut buf = Vec::new();
            t.write_request(&mut buf);
            let text = String::from_utf8(buf).unwrap();
            assert!(text.starts_with(head), "{url}: {text}");
            assert!(
                text.contains("\r\nAccept: text/plain;version=0.0.4;q=0.9,"),
                "{text}"
            );
            assert!(
                text.contains("\r\nUser-Agent: ws-metrics-adapter/"),
                "{text}"
            );
            assert!(
                text.ends_with("\r\n\r\n") && text.matches("\r\n\r\n").count() == 1,
                "{text}"
            );
            assert_eq!((t.connect_host(), t.port), (host, port), "{url}");
        }
        assert!(Target::parse("http:///metrics").is_none());
        assert!(
            is_plain_http("Http://x") && !is_plain_http("https://x") && !is_plain_http("http:")
        );
    }

    /// A chunked encoding of `body` in the given chunk sizes, with extensions and trailers.
    fn chunked(body: &[u8], sizes: &[usize]) -> Vec<u8> {
        let mut out = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        let mut rest = body;
        let mut sizes = sizes.iter().cycle();
        while !rest.is_empty() {
            let n = sizes
                .next()
                .copied()
                .unwrap_or(rest.len())
                .clamp(1, rest.len());
            out.extend_from_slice(format!("{n:x};i={}\r\n", rest.len()).as_bytes());
            out.extend_from_slice(&rest[..n]);
            out.extend_from_slice(b"\r\n");
            rest = &rest[n..];
        }
        out.extend_from_slice(b"0\r\nX-Trailer: t\r\n\r\n");
        out
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..600),
            sizes in proptest::collection::vec(1usize..50, 0..20),
        ) {
            let _ = decode_split(&bytes, &sizes, LIMITS);
        }

        #[test]
        fn arbitrary_bytes_after_a_chunked_head_never_panic(
            tail in proptest::collection::vec(
                prop_oneof![any::<u8>(), Just(b'\r'), Just(b'\n'), Just(b'0'), Just(b'a'), Just(b';')],
                0..400,
            ),
            sizes in proptest::collection::vec(1usize..50, 0..20),
        ) {
            let mut raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
            raw.extend_from_slice(&tail);
            if let Ok((_, _, body)) = decode_split(&raw, &sizes, LIMITS) {
                prop_assert!(body.len() <= LIMITS.max_body);
            }
        }

        #[test]
        fn chunked_bodies_decode_to_the_original_however_they_are_split(
            body in proptest::collection::vec(any::<u8>(), 0..64),
            chunk_sizes in proptest::collection::vec(1usize..20, 1..5),
            read_sizes in proptest::collection::vec(1usize..40, 0..30),
        ) {
            let raw = chunked(&body, &chunk_sizes);
            prop_assert_eq!(decode_split(&raw, &read_sizes, LIMITS), Ok((200, true, body)));
        }

        #[test]
        fn sized_and_close_delimited_bodies_decode_to_the_original_however_they_are_split(
            body in proptest::collection::vec(any::<u8>(), 0..64),
            read_sizes in proptest::collection::vec(1usize..40, 0..30),
        ) {
            let mut sized = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
            sized.extend_from_slice(&body);
            prop_assert_eq!(decode_split(&sized, &read_sizes, LIMITS), Ok((200, true, body.clone())));
            let mut close = b"HTTP/1.1 200 OK\r\n\r\n".to_vec();
            close.extend_from_slice(&body);
            let want = if crate::collect::body::close_delimited_body_is_complete(&body, false) {
                Ok((200, false, body))
            } else {
                Err(ResponseError::Incomplete)
            };
            prop_assert_eq!(decode_split(&close, &read_sizes, LIMITS), want);
        }
    }

    // -----------------------------------------------------------------------------------------
    // The client against scripted servers on 127.0.0.1:0
    // -----------------------------------------------------------------------------------------

    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::AsyncBufReadExt;
    use tokio::net::TcpListener;

    /// What a scripted server does with the n-th request on a connection.
    #[derive(Clone, Copy)]
    enum Script {
        /// Answer every request with this response.
        Answer(&'static str),
        /// Answer the first request, then close the connection.
        AnswerThenClose(&'static str),
        /// Answer the first request, then reset the connection on the next one.
        AnswerThenReset(&'static str),
        /// Answer the first request, then reset the connection at once (RST, not FIN).
        AnswerThenAbort(&'static str),
    }

    struct Server {
        url: Arc<str>,
        accepted: Arc<AtomicUsize>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for Server {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    async fn read_request(reader: &mut tokio::io::BufReader<TcpStream>) -> bool {
        let mut line = String::new();
        loop {
            line.clear();
            match reader.read_line(&mut line).await {
                Ok(0) | Err(_) => return false,
                Ok(_) if line == "\r\n" => return true,
                Ok(_) => {}
            }
        }
    }

    async fn serve(script: Script) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url: Arc<str> = format!("http://{}/metrics", listener.local_addr().unwrap()).into();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        let task = tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut reader = tokio::io::BufReader::new(stream);
                    let mut n = 0;
                    while read_request(&mut reader).await {
                        n += 1;
                        let stream = reader.get_mut();
                        match script {
                            Script::Answer(r) => stream.write_all(r.as_bytes()).await.unwrap(),
                            Script::AnswerThenClose(r) => {
                                stream.write_all(r.as_bytes()).await.unwrap();
                                return;
                            }
                            Script::AnswerThenReset(r) if n == 1 => {
                                stream.write_all(r.as_bytes()).await.unwrap();
                            }
                            Script::AnswerThenReset(_) => {
                                stream.set_zero_linger().unwrap();
                                return;
                            }
                            Script::AnswerThenAbort(r) => {
                                stream.write_all(r.as_bytes()).await.unwrap();
                                stream.set_zero_linger().unwrap();
                                return;
                            }
                        }
                    }
                });
            }
        });
        Server {
            url,
            accepted,
            task,
        }
    }

    const OK: &str = "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n";

    fn client() -> Client {
        Client::new(1024, 4)
    }

    /// The body, or the `outcome` label of the failure.
    async fn get_text(client: &Client, url: &Arc<str>) -> Result<String, &'static str> {
        let body = client.get(url).await.map_err(|e| e.metric_label())?;
        Ok(String::from_utf8_lossy(body.bytes()).into_owned())
    }

    #[tokio::test]
    async fn keep_alive_connections_are_reused_and_pruned_with_their_pod() {
        let server = serve(Script::Answer(OK)).await;
        let client = client();
        for _ in 0..3 {
            assert_eq!(get_text(&client, &server.url).await, Ok("ok\n".into()));
        }
        assert_eq!(server.accepted.load(Ordering::SeqCst), 1);
        assert_eq!(client.idle_count(), 1);
        client.retain(&HashSet::from([server.url.clone()]));
        assert_eq!(client.idle_count(), 1);
        client.retain(&HashSet::new());
        assert_eq!(client.idle_count(), 0);
    }

    #[tokio::test]
    async fn a_connection_the_pod_closed_is_replaced_without_a_failure() {
        let server = serve(Script::AnswerThenClose(OK)).await;
        let client = client();
        for round in 1..=3 {
            assert_eq!(
                get_text(&client, &server.url).await,
                Ok("ok\n".into()),
                "round {round}"
            );
            // Let the FIN arrive, so the next round finds the connection closed.
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert_eq!(server.accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_stale_connection_found_only_on_write_or_read_is_retried_once() {
        // The server resets the connection on the second request: the probe sees nothing (the
        // connection looks idle), the request is written, and the read fails before any byte.
        let server = serve(Script::AnswerThenReset(OK)).await;
        let client = client();
        assert_eq!(get_text(&client, &server.url).await, Ok("ok\n".into()));
        assert_eq!(get_text(&client, &server.url).await, Ok("ok\n".into()));
        assert_eq!(server.accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn connection_close_and_http_1_0_answers_are_not_reused() {
        for response in [
            "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 3\r\n\r\nok\n",
            "HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nok\n",
        ] {
            let server = serve(Script::Answer(response)).await;
            let client = client();
            assert_eq!(get_text(&client, &server.url).await, Ok("ok\n".into()));
            assert_eq!(client.idle_count(), 0, "{response}");
        }
    }

    #[tokio::test]
    async fn failures_map_to_scrape_outcomes() {
        let cases = [
            (
                "HTTP/1.1 503 Busy\r\nContent-Length: 4\r\n\r\nbusy",
                "bad_status",
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 2000\r\n\r\n",
                "body_too_large",
            ),
            ("garbage\r\n\r\n", "unparseable"),
        ];
        for (response, outcome) in cases {
            let server = serve(Script::Answer(response)).await;
            assert_eq!(
                get_text(&client(), &server.url).await,
                Err(outcome),
                "{response}"
            );
        }
        // Answered, then closed mid-body: truncated.
        let server = serve(Script::AnswerThenClose(
            "HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nok",
        ))
        .await;
        assert_eq!(get_text(&client(), &server.url).await, Err("connect_error"));
        // Close-delimited bodies cut short, then a clean close (FIN) or a reset: never a body.
        for response in [
            // Cut after the TYPE line: before issue 11 this was served as an explicit 0.
            "HTTP/1.1 200 OK\r\n\r\n# TYPE websocket_connections_active gauge\n",
            // Cut inside the number: before issue 11 this was served as 1 instead of 12.
            "HTTP/1.1 200 OK\r\n\r\n# TYPE websocket_connections_active gauge\nwebsocket_connections_active 1",
            "HTTP/1.1 200 OK\r\n\r\n",
        ] {
            let server = serve(Script::AnswerThenClose(response)).await;
            assert_eq!(
                get_text(&client(), &server.url).await,
                Err("connect_error"),
                "FIN after {response:?}"
            );
            let server = serve(Script::AnswerThenAbort(response)).await;
            assert_eq!(
                get_text(&client(), &server.url).await,
                Err("connect_error"),
                "RST after {response:?}"
            );
        }
        // A whole line, then a reset: the read error fails the scrape, whatever the body.
        let server = serve(Script::AnswerThenAbort(
            "HTTP/1.1 200 OK\r\n\r\nwebsocket_connections_active 12\n",
        ))
        .await;
        assert_eq!(get_text(&client(), &server.url).await, Err("connect_error"));
        // The same body closed cleanly is whole.
        let server = serve(Script::AnswerThenClose(
            "HTTP/1.1 200 OK\r\n\r\nwebsocket_connections_active 12\n",
        ))
        .await;
        assert_eq!(
            get_text(&client(), &server.url).await,
            Ok("websocket_connections_active 12\n".into())
        );
        // Nobody listening.
        let gone: Arc<str> = {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            format!("http://{}/metrics", l.local_addr().unwrap()).into()
        };
        assert_eq!(get_text(&client(), &gone).await, Err("connect_error"));
    }

    #[tokio::test]
    async fn an_error_status_keeps_a_connection_whose_body_came_with_the_head() {
        let server = serve(Script::Answer(
            "HTTP/1.1 500 Oops\r\nContent-Length: 4\r\n\r\nnope",
        ))
        .await;
        let client = client();
        for _ in 0..3 {
            assert_eq!(get_text(&client, &server.url).await, Err("bad_status"));
        }
        assert_eq!(server.accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn buffers_return_to_a_pool_bounded_by_the_concurrency() {
        let server = serve(Script::Answer(OK)).await;
        let client = client();
        let bodies = futures::future::join_all((0..8).map(|_| client.get(&server.url))).await;
        assert!(bodies.iter().all(Result::is_ok));
        drop(bodies);
        assert_eq!(lock(&client.buffers.free).len(), 4);
    }
}
