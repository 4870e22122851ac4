//! Fuzz targets for every parser of ws-metrics-adapter that reads bytes from the network, and a
//! small mutation driver that runs them on stable Rust (no `cargo fuzz`, no nightly, no
//! sanitizers).
//!
//! Each target is a `fn(&[u8])` that must not panic for any input and asserts cheap invariants
//! (a panic is a finding):
//! - `exposition`: [`exposition::parse`] and [`exposition::parse_selected`] (the scraped
//!   `/metrics` body);
//! - `selector`: [`Selector::parse`] (`labelSelector`, `metricLabelSelector`);
//! - `path`: [`path::parse`] and [`path::parse_query`] (the API request URI, as the router
//!   calls them);
//! - `http_response`: [`collect::decode_response`], the `http://` scrape client's response
//!   reader.
//! - `remote_write`: [`remote_write::decode::decode`] (snappy + protobuf remote-write body) and
//!   the input as an uncompressed `WriteRequest`, each decoded request then ingested by a
//!   [`remote_write::Receiver`] over a one-pod store.
//!
//! The driver ([`fuzz`]) is **not coverage-guided**: it replays the seed corpus, then mutates
//! corpus entries at random (bit flips, byte insertions and deletions, chunk copies, splices of
//! two entries, a per-target dictionary of format tokens) with a seeded PRNG, for a bounded number
//! of runs or seconds. It finds shallow crashes and invariant breaks quickly and reproducibly; it
//! does not learn which inputs reach new code, so deep paths are found only as far as the corpus
//! and the dictionary lead there.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ws_metrics_adapter::api::path;
use ws_metrics_adapter::collect;
use ws_metrics_adapter::exposition;
use ws_metrics_adapter::remote_write;
use ws_metrics_adapter::selector::Selector;
use ws_metrics_adapter::store::{MetricCatalog, MetricMapping, readings_from_samples};

/// One fuzz target.
#[derive(Clone, Copy)]
pub struct Target {
    /// Name on the command line, and the directory of its corpus and artifacts.
    pub name: &'static str,
    /// Runs one input; panics on a finding.
    pub run: fn(&[u8]),
    /// Format tokens the mutator inserts.
    pub dictionary: &'static [&'static [u8]],
}

/// Every target.
pub const TARGETS: &[Target] = &[
    Target {
        name: "exposition",
        run: exposition_target,
        dictionary: &[
            b"# HELP ",
            b"# TYPE ",
            b"# UNIT ",
            b"# EOF",
            b"\n# EOF\n",
            b" gauge\n",
            b" counter\n",
            b" histogram\n",
            b" summary\n",
            b" untyped\n",
            b"websocket_connections_active",
            b"{route=\"chat\"}",
            b"{",
            b"}",
            b"=\"",
            b"\",",
            b"\\\"",
            b"\\n",
            b"\\\\",
            b" NaN",
            b" +Inf",
            b" -Inf",
            b" Infinity",
            b" 1e308",
            b" 1e309",
            b" 0x1p3",
            b" 1_000",
            b" 1700000000000",
            b" 1700000000.123",
            b" # {trace_id=\"a\"} 1 1.5",
            b"_bucket{le=\"+Inf\"}",
            b"_count",
            b"_sum",
            b"_total",
            b"_created",
            b"\r\n",
            b"\t",
            b"\xc3\xa9",
        ],
    },
    Target {
        name: "selector",
        run: selector_target,
        dictionary: &[
            b"=",
            b"==",
            b"!=",
            b"!",
            b" in ",
            b" notin ",
            b"(",
            b")",
            b",",
            b" ",
            b">",
            b"<",
            b"app",
            b"example.com/",
            b"a.b-c_d",
            b"-",
            b"9223372036854775808",
            b"-9223372036854775808",
            b"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        ],
    },
    Target {
        name: "path",
        run: path_target,
        dictionary: &[
            b"/apis",
            b"/apis/custom.metrics.k8s.io",
            b"/v1beta1",
            b"/v1beta2",
            b"/namespaces/",
            b"/pods/",
            b"/metrics/",
            b"/nodes/",
            b"/deployments.apps/",
            b"%2A",
            b"%2a",
            b"%2F",
            b"%",
            b"%ff",
            b"*",
            b"/",
            b"//",
            b"/.",
            b"/..",
            b"?",
            b"labelSelector=",
            b"&metricLabelSelector=",
            b"+",
            b"%3D",
            b"&",
        ],
    },
    Target {
        name: "http_response",
        run: http_response_target,
        dictionary: &[
            b"HTTP/1.1 200 OK\r\n",
            b"HTTP/1.0 200 OK\r\n",
            b"HTTP/1.1 100 Continue\r\n\r\n",
            b"HTTP/1.1 204 No Content\r\n",
            b"HTTP/1.1 500 Oops\r\n",
            b"Content-Length: ",
            b"Content-Length: 5\r\n",
            b"Transfer-Encoding: chunked\r\n",
            b"Transfer-Encoding: gzip\r\n",
            b"Connection: close\r\n",
            b"Connection: keep-alive\r\n",
            b"Content-Type: application/openmetrics-text; version=1.0.0\r\n",
            b"\r\n",
            b"\r\n\r\n",
            b"\n",
            b"0\r\n\r\n",
            b"5\r\nhello\r\n",
            b";ext=\"v\"",
            b"ffffffffffffffff",
            b"X-Trailer: t\r\n",
            b"# TYPE x gauge\n",
            b"x 1\n",
            b"# EOF\n",
        ],
    },
    Target {
        name: "remote_write",
        run: remote_write_target,
        dictionary: &[
            // Protobuf keys: WriteRequest.timeseries, TimeSeries.labels/samples, Label.name/value,
            // Sample.value (fixed64) and timestamp (varint); unknown fields 3 and 4.
            b"\x0a",
            b"\x12",
            b"\x09",
            b"\x10",
            b"\x1a",
            b"\x22",
            b"\x08__name__",
            b"\x1cwebsocket_connections_active",
            b"\x09namespace",
            b"\x03pod",
            b"\x02ws",
            // The stale marker and an ordinary NaN, little-endian doubles.
            b"\x02\x00\x00\x00\x00\x00\xf0\x7f",
            b"\x00\x00\x00\x00\x00\x00\xf8\x7f",
            b"\x00\x00\x00\x00\x00\x00\xf0\x7f",
            b"\xff\xff\xff\xff\xff\xff\xff\xff\x01",
            b"\x80\xe0\xba\xe0\xba\x31",
            // Snappy tags: literals of 1, 60 and 61 lengths, copies.
            b"\x00",
            b"\xf0",
            b"\xf4",
            b"\x01\x00",
            b"\x02\x00\x00",
            b"\xff\xff\xff\xff\x0f",
        ],
    },
];

/// The target called `name`.
pub fn target(name: &str) -> Option<Target> {
    TARGETS.iter().copied().find(|t| t.name == name)
}

// ---------------------------------------------------------------------------------------------
// Targets
// ---------------------------------------------------------------------------------------------

const FAMILY: &str = "websocket_connections_active";

/// Same sample, NaN equal to NaN.
fn same_sample(a: &exposition::Sample, b: &exposition::Sample) -> bool {
    a.name == b.name
        && a.labels == b.labels
        && a.timestamp_ms == b.timestamp_ms
        && (a.value == b.value || (a.value.is_nan() && b.value.is_nan()))
}

/// The exposition parser, whole and selected: the same verdict on the body (the whole body is
/// validated either way), the selected samples are exactly the wanted ones of the full parse, no
/// sample has a duplicate label name, and a served family with NaN or ±Inf or the same series
/// twice is never turned into a reading (which is as old as its oldest stamped sample).
pub fn exposition_target(input: &[u8]) {
    let text = String::from_utf8_lossy(input);
    let all = exposition::parse(&text);
    let selected = exposition::parse_selected(&text, |name| name == FAMILY);
    let (all, selected) = match (all, selected) {
        (Ok(all), Ok(selected)) => (all, selected),
        (Err(a), Err(b)) => {
            assert_eq!(a, b, "parse and parse_selected disagree on the error");
            return;
        }
        (a, b) => panic!("parse is {a:?} but parse_selected is {b:?}"),
    };
    // The `# TYPE` lines the parser reports for the wanted family, against a plain scan of a
    // body that parsed: tokens split on spaces and tabs, one `\r` before the newline stripped
    // (label values hold no raw newline, so every line starting with `#` is a comment line).
    let declared = exposition::parse_selected_declared(&text, |name| name == FAMILY)
        .expect("the body parsed once")
        .declared;
    let scanned = text.split('\n').any(|line| {
        let line = line.strip_suffix('\r').unwrap_or(line);
        let mut tokens = line.split([' ', '\t']).filter(|t| !t.is_empty());
        tokens.next() == Some("#") && tokens.next() == Some("TYPE") && tokens.next() == Some(FAMILY)
    });
    assert_eq!(
        declared.contains(&FAMILY),
        scanned,
        "declared {declared:?}, but a token scan finds a `# TYPE {FAMILY}` line: {scanned}"
    );
    assert!(
        declared.iter().all(|f| *f == FAMILY),
        "unwanted family declared: {declared:?}"
    );
    let wanted: Vec<_> = all.iter().filter(|s| s.name == FAMILY).collect();
    assert_eq!(wanted.len(), selected.len(), "selected samples differ");
    for (a, b) in wanted.iter().zip(&selected) {
        assert!(same_sample(a, b), "selected {b:?}, full parse {a:?}");
    }
    for s in &all {
        assert!(!s.name.is_empty(), "sample without a name");
        for (i, (name, _)) in s.labels.iter().enumerate() {
            assert!(
                s.labels[..i].iter().all(|(n, _)| n != name),
                "duplicate label {name:?} accepted in {s:?}"
            );
        }
    }
    let catalog = MetricCatalog::new(vec![MetricMapping {
        served: "websocket_connections".into(),
        family: FAMILY.into(),
        rate: None,
        filter: None,
    }]);
    let unservable = selected.iter().any(|s| !s.value.is_finite());
    let mut series: Vec<Vec<(String, String)>> = selected
        .iter()
        .map(|s| {
            let mut labels = s.labels.clone();
            labels.sort();
            labels
        })
        .collect();
    series.sort();
    let duplicate = series.windows(2).any(|w| w[0] == w[1]);
    match readings_from_samples(&catalog, &selected, |_| false) {
        Ok(families) => {
            assert!(!unservable, "a NaN or infinite value became a reading");
            assert!(!duplicate, "a duplicate series became a reading");
            let oldest = selected.iter().filter_map(|s| s.timestamp_ms).min();
            let stamped = families[0].as_ref().and_then(|f| f.stamped_ms);
            assert_eq!(stamped, oldest, "oldest sample time of the family");
        }
        // Else only a sum past the milli-unit range (which takes values far above 1e12: a
        // fuzz input holds at most a few thousand samples) may be refused.
        Err(e) => assert!(
            unservable || duplicate || selected.iter().any(|s| s.value.abs() > 1e12),
            "a servable body was refused: {e}"
        ),
    }
}

/// The label selector parser: a parsed selector's echo re-parses to the same selector (and the
/// same echo), and matches the same label sets.
pub fn selector_target(input: &[u8]) {
    let text = String::from_utf8_lossy(input);
    let Ok(selector) = Selector::parse(&text) else {
        return;
    };
    let echo = selector.to_string();
    let again = match Selector::parse(&echo) {
        Ok(again) => again,
        Err(e) => panic!("the echo {echo:?} of {text:?} does not re-parse: {e}"),
    };
    assert_eq!(
        again, selector,
        "the echo {echo:?} of {text:?} re-parses differently"
    );
    assert_eq!(again.to_string(), echo, "the echo is not stable");
    let _ = selector.to_label_selector();
    // Label sets built from the selector's own keys and values, so that some of them match.
    let pairs: Vec<(String, String)> = selector
        .requirements()
        .iter()
        .map(|r| {
            let value = r.values.first().cloned().unwrap_or_default();
            (r.key.clone(), value)
        })
        .collect();
    for n in 0..=pairs.len().min(4) {
        let labels = &pairs[..n];
        assert_eq!(
            selector.matches_pairs(labels),
            again.matches_pairs(labels),
            "{text:?} and its echo match {labels:?} differently"
        );
    }
}

/// The API path and query parsers, on the raw string and, as the router sees it, on the path
/// and query of the request URI when the input is one.
pub fn path_target(input: &[u8]) {
    let text = String::from_utf8_lossy(input);
    let (raw_path, raw_query) = match text.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (&*text, None),
    };
    check_route(raw_path, path::parse(raw_path));
    let _ = path::parse_query(raw_query);
    if let Ok(uri) = http::Uri::try_from(&*text) {
        check_route(uri.path(), path::parse(uri.path()));
        let query = path::parse_query(uri.query());
        assert_eq!(
            query,
            path::parse_query(uri.query()),
            "parse_query is not deterministic"
        );
    }
}

fn check_route(raw: &str, route: Result<path::Route, path::PathError>) {
    let Ok(path::Route::Metric { target, metric, .. }) = route else {
        return;
    };
    assert!(
        !metric.is_empty() && !metric.contains('/'),
        "{raw:?}: metric {metric:?} accepted"
    );
    let names = match &target {
        path::Target::AllPods { namespace } | path::Target::Namespace { namespace } => {
            vec![namespace.as_str()]
        }
        path::Target::Pod { namespace, name } => vec![namespace.as_str(), name.as_str()],
        path::Target::Object {
            namespace, name, ..
        } => namespace.iter().chain(name).map(String::as_str).collect(),
    };
    for n in names {
        assert!(
            !n.is_empty() && !n.contains('/'),
            "{raw:?}: name {n:?} accepted in {target:?}"
        );
    }
}

/// Body cap of the `http_response` target: small, so the fuzzer reaches it. Unit: bytes.
const FUZZ_MAX_BODY: usize = 4096;

/// The scrape client's response reader: however the bytes are split into reads, it decodes the
/// same response (or the same error); the body stays within the cap; no `internal:` error.
pub fn http_response_target(input: &[u8]) {
    let whole = collect::decode_response(input, &[], FUZZ_MAX_BODY);
    let sizes = read_sizes(input);
    let split = collect::decode_response(input, &sizes, FUZZ_MAX_BODY);
    let bytewise = collect::decode_response(input, &[1; 64], FUZZ_MAX_BODY);
    assert_eq!(whole, split, "split into reads of {sizes:?}");
    assert_eq!(whole, bytewise, "split into one-byte reads first");
    match whole {
        Ok(r) => assert!(r.body.len() <= FUZZ_MAX_BODY, "body over the cap"),
        Err(e) => assert!(!e.starts_with("internal:"), "{e}"),
    }
}

/// Limits of the `remote_write` target: small, so the fuzzer reaches them.
const FUZZ_REMOTE_WRITE_LIMITS: remote_write::decode::DecodeLimits =
    remote_write::decode::DecodeLimits {
        max_decoded_bytes: 64 * 1024,
        max_series: 64,
    };

/// The remote-write decoder: whatever the bytes, an answer or an error, never a panic; what
/// decodes is within the series limit, re-encodes to bytes that decode to the same encoding, and
/// ingests into a store without panicking, holding at most the receiver's series limit.
pub fn remote_write_target(input: &[u8]) {
    let limits = FUZZ_REMOTE_WRITE_LIMITS;
    let decoded = [
        remote_write::decode::decode(input, limits),
        remote_write::decode::decode_protobuf(input, limits.max_series),
    ];
    for request in decoded.into_iter().flatten() {
        assert!(request.timeseries.len() <= limits.max_series);
        let body = remote_write::decode::encode(&request);
        let again = remote_write::decode::decode(
            &body,
            remote_write::decode::DecodeLimits {
                max_decoded_bytes: usize::MAX,
                ..limits
            },
        )
        .expect("a re-encoded request decodes");
        // Compared as bytes: NaN samples make the structs unequal to themselves.
        assert_eq!(
            remote_write::decode::encode(&again),
            body,
            "re-encoding is stable"
        );
        ingest(&request);
    }
}

fn ingest(request: &remote_write::decode::WriteRequest) {
    use std::sync::Arc;
    use ws_metrics_adapter::clock::Moment;
    use ws_metrics_adapter::store::{PodKey, PodTarget, Store};
    let store = Arc::new(Store::new(
        MetricCatalog::new(vec![MetricMapping {
            served: "websocket_connections".into(),
            family: "websocket_connections_active".into(),
            rate: None,
            filter: None,
        }]),
        Duration::from_secs(3600 * 24 * 365 * 100),
    ));
    store.replace_all(vec![PodTarget {
        key: PodKey {
            namespace: "ws".into(),
            name: "a".into(),
        },
        uid: "u".into(),
        labels: Default::default(),
        url: "http://127.0.0.1:1/metrics".into(),
        ready: true,
    }]);
    let receiver = remote_write::Receiver::new(
        store,
        Arc::new(ws_metrics_adapter::telemetry::Telemetry::new()),
        remote_write::RemoteWriteConfig {
            addr: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            tls: None,
            bearer_token_file: None,
            namespace_label: "namespace".into(),
            pod_label: "pod".into(),
            max_body_bytes: 1 << 20,
            max_decoded_bytes: 1 << 20,
            max_series_per_request: 64,
            max_series: 8,
            max_concurrent_requests: 1,
            ready_grace: Duration::from_secs(1),
        },
    );
    let report = receiver.ingest(request, Moment::now());
    assert!(receiver.series_tracked() <= 8, "series limit exceeded");
    assert!(report.accepted <= request.timeseries.len() as u64);
}

/// Read sizes derived from the input itself (so a crash reproduces from the input alone).
fn read_sizes(input: &[u8]) -> Vec<usize> {
    let mut rng = Rng::new(input.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    }));
    let n = rng.below(32);
    (0..n)
        .map(|_| {
            let big = rng.below(4) == 0;
            1 + rng.below(if big { 200 } else { 8 })
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The driver
// ---------------------------------------------------------------------------------------------

/// splitmix64: small, fast and good enough to pick mutations.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            // NB: modulo bias is irrelevant for picking mutations.
            (self.next_u64() % n as u64) as usize
        }
    }
}

/// Applies one to four random mutations to `input`, keeping it at most `max_len` bytes.
pub fn mutate(
    rng: &mut Rng,
    input: &mut Vec<u8>,
    corpus: &[Vec<u8>],
    dictionary: &[&[u8]],
    max_len: usize,
) {
    for _ in 0..1 + rng.below(4) {
        let len = input.len();
        match rng.below(9) {
            // Flip one bit.
            0 if len > 0 => {
                let i = rng.below(len);
                input[i] ^= 1 << rng.below(8);
            }
            // Set a byte, biased to the interesting ones.
            1 if len > 0 => {
                const SPECIAL: &[u8] = b"\0\t\n\r \"#,(){}=\\%+-.0123456789:;eE\x7f\x80\xff";
                let i = rng.below(len);
                input[i] = if rng.below(2) == 0 {
                    SPECIAL[rng.below(SPECIAL.len())]
                } else {
                    rng.below(256) as u8
                };
            }
            // Insert a random byte.
            2 => {
                let i = rng.below(len + 1);
                input.insert(i, rng.below(256) as u8);
            }
            // Delete a run of bytes.
            3 if len > 0 => {
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(16));
                input.drain(i..i + n);
            }
            // Insert a dictionary token.
            4 | 5 if !dictionary.is_empty() => {
                let token = dictionary[rng.below(dictionary.len())];
                let i = rng.below(len + 1);
                input.splice(i..i, token.iter().copied());
            }
            // Copy a chunk of the input elsewhere in it.
            6 if len > 0 => {
                let from = rng.below(len);
                let n = 1 + rng.below((len - from).min(64));
                let chunk = input[from..from + n].to_vec();
                let to = rng.below(len + 1);
                input.splice(to..to, chunk);
            }
            // Splice: this input's head with another entry's tail.
            7 if !corpus.is_empty() => {
                let other = &corpus[rng.below(corpus.len())];
                let cut = rng.below(len + 1);
                let from = rng.below(other.len() + 1);
                input.truncate(cut);
                input.extend_from_slice(&other[from..]);
            }
            // Truncate.
            8 if len > 0 => input.truncate(rng.below(len)),
            _ => {}
        }
    }
    input.truncate(max_len);
}

/// Settings of one fuzzing run.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Mutated executions to run after the corpus (the corpus is always run whole).
    pub runs: u64,
    /// Stop after this long even if `runs` are not done.
    pub time: Duration,
    /// PRNG seed.
    pub seed: u64,
    /// Longest mutated input. Unit: bytes.
    pub max_len: usize,
    /// Seed corpus directory (every regular file in it is one input).
    pub corpus: PathBuf,
    /// Where a crashing input is written.
    pub artifacts: PathBuf,
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct Report {
    /// Inputs executed, corpus included.
    pub executions: u64,
    /// Corpus entries.
    pub corpus: usize,
    /// Time taken.
    pub elapsed: Duration,
    /// The crashing input and where it was written, if any.
    pub finding: Option<(Vec<u8>, PathBuf)>,
}

/// Every regular file in `dir`, sorted by name, as corpus entries.
///
/// # Errors
/// The directory cannot be listed or a file cannot be read.
pub fn load_corpus(dir: &Path) -> std::io::Result<Vec<(PathBuf, Vec<u8>)>> {
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_file() {
            let bytes = std::fs::read(&path)?;
            entries.push((path, bytes));
        }
    }
    entries.sort();
    Ok(entries)
}

/// Runs `input` through `target`; `Err` with the panic message if it panicked.
pub fn execute(target: &Target, input: &[u8]) -> Result<(), String> {
    catch_unwind(AssertUnwindSafe(|| (target.run)(input))).map_err(|panic| {
        panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "non-string panic".to_owned())
    })
}

/// Replays the corpus, then mutates it until `settings.runs` or `settings.time` is reached, or
/// an input panics (written to `settings.artifacts`).
///
/// # Errors
/// The corpus cannot be read, or the artifact cannot be written.
pub fn fuzz(target: &Target, settings: &Settings) -> std::io::Result<Report> {
    let started = Instant::now();
    let corpus: Vec<Vec<u8>> = load_corpus(&settings.corpus)?
        .into_iter()
        .map(|(_, bytes)| bytes)
        .collect();
    let mut report = Report {
        executions: 0,
        corpus: corpus.len(),
        elapsed: Duration::ZERO,
        finding: None,
    };
    let mut rng = Rng::new(settings.seed);
    let mut input = Vec::new();
    let mut runs = 0u64;
    let mut replay = corpus.iter();
    loop {
        if let Some(entry) = replay.next() {
            input.clone_from(entry);
        } else {
            // Check the clock every 256 runs: it is cheap, but not free next to tiny inputs.
            if runs >= settings.runs
                || (runs.is_multiple_of(256) && started.elapsed() >= settings.time)
            {
                break;
            }
            runs += 1;
            match corpus.len() {
                0 => input.clear(),
                n => input.clone_from(&corpus[rng.below(n)]),
            }
            mutate(
                &mut rng,
                &mut input,
                &corpus,
                target.dictionary,
                settings.max_len,
            );
        }
        report.executions += 1;
        if let Err(message) = execute(target, &input) {
            std::fs::create_dir_all(&settings.artifacts)?;
            let hash = input.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
                (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
            });
            let path = settings.artifacts.join(format!("crash-{hash:016x}"));
            std::fs::write(&path, &input)?;
            eprintln!("{}: panic: {message}", target.name);
            report.finding = Some((input, path));
            break;
        }
    }
    report.elapsed = started.elapsed();
    Ok(report)
}

/// `fuzz/corpus/<target>` in this crate.
pub fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target)
}

/// `fuzz/artifacts/<target>` in this crate.
pub fn artifacts_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("artifacts")
        .join(target)
}
