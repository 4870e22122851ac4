//! Parser for the Prometheus text exposition format (0.0.4) and OpenMetrics text (1.0): turns a
//! scraped `/metrics` body into [`Sample`]s, validating every line but allocating only for the
//! metric names the caller wants. Pipeline position: collect → **exposition** → store.

// Decisions on input the two specifications leave open (also summarised on `parse_selected`):
//
// - Dialect: a body whose last non-blank line is `# EOF` is OpenMetrics, any other body is
//   Prometheus text. The dialect only changes how a timestamp written as a plain integer is
//   read: milliseconds in Prometheus text, seconds in OpenMetrics. A timestamp written with a
//   `.` or an exponent is seconds in both (Prometheus text has no such form; an OpenMetrics body
//   that lost its `# EOF` still reads right).
// - Values follow Go's `strconv.ParseFloat` as Prometheus calls it (which refuses `p`, `P` and
//   `_`, so no hex floats and no digit separators): decimal forms with optional sign, fraction
//   and exponent; `inf`/`infinity` in any case with an optional sign; `nan` in any case without
//   a sign. A finite literal too large for an f64 is rejected, as Go reports it as a range error.
// - Label values: `\\`, `\"` and `\n` are unescaped; any other backslash sequence is kept
//   literally (backslash included), as Prometheus does. A raw line feed cannot occur inside a
//   value because the body is split into lines first.
// - `# HELP`, `# TYPE` and `# UNIT` are checked for shape (metric name, known type); other
//   `#` lines are comments. Metric types are lower case, as Prometheus requires.
// - Exemplars (` # {labels} value [timestamp]`) are validated and skipped in both dialects.
// - Spaces and tabs around tokens are tolerated, including before the first token of a line and
//   between `}` and the value; one `\r` before each `\n` is stripped.

/// One sample line: metric name, its labels in the order written, value, optional timestamp.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Metric name as written on the sample line (e.g. `websocket_connections_active`).
    pub name: String,
    /// Label pairs (name, unescaped value) in the order written.
    pub labels: Vec<(String, String)>,
    /// The sample value (may be NaN or ±Inf).
    pub value: f64,
    /// Optional timestamp. Unit: milliseconds since the Unix epoch (OpenMetrics seconds are
    /// converted).
    pub timestamp_ms: Option<i64>,
}

/// Why a body could not be parsed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// A line does not follow the grammar. `line` is 1-based.
    #[error("line {line}: {reason}")]
    Syntax {
        /// 1-based number of the offending line.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
}

/// Result of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Parses the whole body and returns the samples whose metric name satisfies `wanted`.
///
/// The whole body is validated (a syntax error anywhere fails the parse, as Prometheus does),
/// but labels and strings are only allocated for wanted samples. `wanted` sees the metric name
/// exactly as written (no suffix is added or stripped).
///
/// Timestamps: a body whose last non-blank line is `# EOF` is OpenMetrics and its integer
/// timestamps are seconds; otherwise integer timestamps are Prometheus milliseconds. Timestamps
/// with a fraction or exponent are seconds either way; seconds are rounded to the nearest
/// millisecond. Unknown label-value escapes such as `\t` are kept literally. Values accept what
/// Prometheus accepts (Go float syntax without hex, including `NaN`, `Inf` and `Infinity` in any
/// case); exemplars are validated and dropped.
///
/// # Errors
/// [`Error::Syntax`] for the first line that does not parse.
pub fn parse_selected(text: &str, wanted: impl Fn(&str) -> bool) -> Result<Vec<Sample>> {
    parse_selected_declared(text, wanted).map(|selected| selected.samples)
}

/// What [`parse_selected_declared`] found.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Selected<'a> {
    /// The wanted samples, in body order.
    pub samples: Vec<Sample>,
    /// The wanted families a `# TYPE` line declares, in body order: a family declared with no
    /// samples exists (its value is 0), one never mentioned does not.
    pub declared: Vec<&'a str>,
}

/// [`parse_selected`] that also reports which wanted families a `# TYPE` line declares, found in
/// the same pass over the body (a second pass per family cost about as much as the parse).
///
/// # Errors
/// [`Error::Syntax`] for the first line that does not parse.
pub fn parse_selected_declared<'a>(
    text: &'a str,
    wanted: impl Fn(&str) -> bool,
) -> Result<Selected<'a>> {
    let mut parser = Parser {
        dialect: if ends_with_eof_marker(text) {
            Dialect::OpenMetrics
        } else {
            Dialect::Prometheus
        },
        wanted,
        names: Vec::new(),
        sorted: Vec::new(),
    };
    let mut selected = Selected::default();
    let mut lines = text.split('\n').enumerate();
    while let Some((index, raw)) = lines.next() {
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        match parser.line(line) {
            Ok(Parsed::Nothing) => {}
            Ok(Parsed::Type(family)) => {
                if (parser.wanted)(family) {
                    selected.declared.push(family);
                }
            }
            Ok(Parsed::Sample(sample)) => selected.samples.push(sample),
            Ok(Parsed::Eof) => {
                if let Some((after, _)) = lines.find(|(_, rest)| !is_blank(rest)) {
                    return Err(syntax(after, "content after `# EOF`".to_owned()));
                }
                break;
            }
            Err(reason) => return Err(syntax(index, reason)),
        }
    }
    Ok(selected)
}

/// Parses the whole body and returns every sample.
///
/// # Errors
/// [`Error::Syntax`] for the first line that does not parse.
pub fn parse(text: &str) -> Result<Vec<Sample>> {
    parse_selected(text, |_| true)
}

/// Builds the error for the line at 0-based `index`.
fn syntax(index: usize, reason: String) -> Error {
    Error::Syntax {
        line: index.saturating_add(1),
        reason,
    }
}

/// How integer timestamps are read (see the notes at the top of the file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dialect {
    /// Prometheus text 0.0.4: integer timestamps are milliseconds.
    Prometheus,
    /// OpenMetrics 1.0: timestamps are seconds.
    OpenMetrics,
}

/// What one line turned out to be.
enum Parsed<'a> {
    /// Blank line, comment, `# HELP` or `# UNIT`, or a sample the caller does not want.
    Nothing,
    /// A well-formed `# TYPE` line of this family.
    Type(&'a str),
    /// A wanted sample.
    Sample(Sample),
    /// The `# EOF` marker.
    Eof,
}

/// Per-body parsing state; the scratch vectors are reused across lines so that validating an
/// unwanted sample allocates nothing once they have grown.
struct Parser<'a, F> {
    dialect: Dialect,
    wanted: F,
    /// Label names of the label set being parsed, for the duplicate check.
    names: Vec<&'a str>,
    /// Scratch space for the duplicate check of large label sets.
    sorted: Vec<&'a str>,
}

/// True for a line with nothing but spaces, tabs and carriage returns.
fn is_blank(line: &str) -> bool {
    line.bytes().all(|b| matches!(b, b' ' | b'\t' | b'\r'))
}

/// True when the line is the OpenMetrics end marker: `#`, whitespace, `EOF`, optional
/// whitespace (leading whitespace tolerated like on any line).
fn is_eof_marker(line: &str) -> bool {
    let Some(after_hash) = line.trim_start_matches([' ', '\t']).strip_prefix('#') else {
        return false;
    };
    let word = after_hash.trim_start_matches([' ', '\t']);
    word.len() < after_hash.len() && word.trim_end_matches([' ', '\t', '\r']) == "EOF"
}

/// True when the last non-blank line of the body is `# EOF` (the body is OpenMetrics).
pub(crate) fn ends_with_eof_marker(text: &str) -> bool {
    let trimmed = text.trim_end_matches([' ', '\t', '\r', '\n']);
    let last = trimmed.rsplit('\n').next().unwrap_or(trimmed);
    is_eof_marker(last)
}

/// Byte class: may appear in a metric name, `[a-zA-Z0-9_:]`.
const METRIC_CHAR: u8 = 1;
/// Byte class: may appear in a label name, `[a-zA-Z0-9_]`.
const LABEL_CHAR: u8 = 2;

/// Byte classes, looked up instead of chained comparisons in the hot scanning loops.
static CLASSES: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut i = 0;
    while i < table.len() {
        let b = i as u8;
        if b.is_ascii_alphanumeric() || b == b'_' {
            table[i] = METRIC_CHAR | LABEL_CHAR;
        } else if b == b':' {
            table[i] = METRIC_CHAR;
        }
        i += 1;
    }
    table
};

/// Whether byte `b` belongs to `class`.
fn is(b: u8, class: u8) -> bool {
    CLASSES[usize::from(b)] & class != 0
}

/// A position inside one line. Every slice boundary it produces sits next to an ASCII byte, so
/// slicing never splits a UTF-8 character.
struct Cursor<'a> {
    line: &'a str,
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.line.as_bytes().get(self.pos).copied()
    }

    fn at_end(&self) -> bool {
        self.pos >= self.line.len()
    }

    /// Skips spaces and tabs; tells whether there were any.
    fn skip_ws(&mut self) -> bool {
        let start = self.pos;
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.pos += 1;
        }
        self.pos > start
    }

    fn slice_from(&self, start: usize) -> &'a str {
        self.line.get(start..self.pos).unwrap_or_default()
    }

    fn take_while(&mut self, keep: impl Fn(u8) -> bool) -> &'a str {
        let start = self.pos;
        let rest = self.line.as_bytes().get(start..).unwrap_or_default();
        self.pos = start + rest.iter().position(|&b| !keep(b)).unwrap_or(rest.len());
        self.slice_from(start)
    }

    /// The run of bytes up to the next space, tab or end of line.
    fn token(&mut self) -> &'a str {
        self.take_while(|b| b != b' ' && b != b'\t')
    }

    /// `[a-zA-Z_:][a-zA-Z0-9_:]*`, or empty when the next byte cannot start a metric name.
    fn metric_name(&mut self) -> &'a str {
        match self.peek() {
            Some(b) if is(b, METRIC_CHAR) && !b.is_ascii_digit() => {
                self.take_while(|b| is(b, METRIC_CHAR))
            }
            _ => "",
        }
    }

    /// `[a-zA-Z_][a-zA-Z0-9_]*`, or empty when the next byte cannot start a label name.
    fn label_name(&mut self) -> &'a str {
        match self.peek() {
            Some(b) if is(b, LABEL_CHAR) && !b.is_ascii_digit() => {
                self.take_while(|b| is(b, LABEL_CHAR))
            }
            _ => "",
        }
    }

    /// Describes what is at the cursor, for error messages.
    fn found(&self) -> String {
        match self
            .line
            .get(self.pos..)
            .and_then(|rest| rest.chars().next())
        {
            None => "end of line".to_owned(),
            Some(c) => format!("{c:?}"),
        }
    }

    /// After the opening `"`: scans to the closing quote and returns the raw (still escaped)
    /// value and whether it contains a backslash. `None` when the line ends first.
    fn quoted(&mut self) -> Option<(&'a str, bool)> {
        let bytes = self.line.as_bytes();
        let start = self.pos;
        let mut i = start;
        let mut escaped = false;
        loop {
            // Jump to the next byte that matters.
            let rest = bytes.get(i..)?;
            i += rest.iter().position(|&b| b == b'"' || b == b'\\')?;
            match *bytes.get(i)? {
                b'"' => {
                    let raw = self.line.get(start..i)?;
                    self.pos = i + 1;
                    return Some((raw, escaped));
                }
                b'\\' => {
                    // The escaped byte is skipped whatever it is, so `\"` does not end the value.
                    bytes.get(i + 1)?;
                    escaped = true;
                    i += 2;
                }
                _ => i += 1,
            }
        }
    }
}

/// Shortens a token for an error message.
fn shown(token: &str) -> String {
    const MAX: usize = 40;
    match token.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{:?}…", token.get(..cut).unwrap_or_default()),
        None => format!("{token:?}"),
    }
}

impl<'a, F: Fn(&str) -> bool> Parser<'a, F> {
    fn line(&mut self, line: &'a str) -> Result<Parsed<'a>, String> {
        let mut cur = Cursor { line, pos: 0 };
        cur.skip_ws();
        match cur.peek() {
            None => Ok(Parsed::Nothing),
            Some(b'#') => {
                cur.pos += 1;
                comment(&mut cur)
            }
            Some(_) => Ok(self
                .sample(&mut cur)?
                .map_or(Parsed::Nothing, Parsed::Sample)),
        }
    }

    /// `name [{labels}] value [timestamp] [# {labels} value [timestamp]]`.
    fn sample(&mut self, cur: &mut Cursor<'a>) -> Result<Option<Sample>, String> {
        let name = cur.metric_name();
        if name.is_empty() {
            return Err(format!("expected a metric name, found {}", cur.found()));
        }
        let spaced = cur.skip_ws();
        let wanted = (self.wanted)(name);
        let mut labels = Vec::new();
        if cur.peek() == Some(b'{') {
            cur.pos += 1;
            self.labels(cur, wanted.then_some(&mut labels))?;
            cur.skip_ws();
        } else if !spaced {
            return Err(if cur.at_end() {
                format!("missing value for metric {name:?}")
            } else {
                format!("unexpected {} in metric name {name:?}", cur.found())
            });
        }

        let token = cur.token();
        if token.is_empty() {
            return Err(format!("missing value for metric {name:?}"));
        }
        let value = if wanted {
            parse_float(token)
        } else {
            // The value of an unwanted sample is only validated; 0.0 is never returned.
            is_valid_float(token).then_some(0.0)
        }
        .ok_or_else(|| format!("invalid value {}", shown(token)))?;

        cur.skip_ws();
        let mut timestamp_ms = None;
        if !cur.at_end() && cur.peek() != Some(b'#') {
            let token = cur.token();
            timestamp_ms = Some(
                parse_timestamp(token, self.dialect)
                    .ok_or_else(|| format!("invalid timestamp {}", shown(token)))?,
            );
            cur.skip_ws();
        }
        match cur.peek() {
            None => {}
            Some(b'#') => {
                cur.pos += 1;
                self.exemplar(cur)?;
            }
            Some(_) => {
                return Err(format!(
                    "unexpected {} after the timestamp",
                    shown(cur.line.get(cur.pos..).unwrap_or_default())
                ));
            }
        }

        Ok(wanted.then(|| Sample {
            name: name.to_owned(),
            labels,
            value,
            timestamp_ms,
        }))
    }

    /// After the `#` that follows a sample: ` {labels} value [timestamp]`, validated and
    /// dropped. Exemplar timestamps are OpenMetrics seconds.
    fn exemplar(&mut self, cur: &mut Cursor<'a>) -> Result<(), String> {
        cur.skip_ws();
        if cur.peek() != Some(b'{') {
            return Err(format!(
                "expected exemplar labels `{{` after `#`, found {}",
                cur.found()
            ));
        }
        cur.pos += 1;
        self.labels(cur, None)?;
        cur.skip_ws();
        let token = cur.token();
        if token.is_empty() {
            return Err("missing exemplar value".to_owned());
        }
        if !is_valid_float(token) {
            return Err(format!("invalid exemplar value {}", shown(token)));
        }
        cur.skip_ws();
        if !cur.at_end() {
            let token = cur.token();
            parse_timestamp(token, Dialect::OpenMetrics)
                .ok_or_else(|| format!("invalid exemplar timestamp {}", shown(token)))?;
            cur.skip_ws();
            if !cur.at_end() {
                return Err(format!("unexpected {} after the exemplar", cur.found()));
            }
        }
        Ok(())
    }

    /// After `{`: `name="value"` pairs separated by commas (trailing comma allowed) up to `}`.
    /// Values are unescaped into `out` only when it is given; names are always checked for
    /// duplicates.
    fn labels(
        &mut self,
        cur: &mut Cursor<'a>,
        mut out: Option<&mut Vec<(String, String)>>,
    ) -> Result<(), String> {
        const UNCLOSED: &str = "label set is not closed with `}`";
        self.names.clear();
        cur.skip_ws();
        loop {
            if cur.peek() == Some(b'}') {
                cur.pos += 1;
                break;
            }
            let name = cur.label_name();
            if name.is_empty() {
                return Err(if cur.at_end() {
                    UNCLOSED.to_owned()
                } else {
                    format!("expected a label name or `}}`, found {}", cur.found())
                });
            }
            cur.skip_ws();
            if cur.peek() != Some(b'=') {
                return Err(format!(
                    "expected `=` after label name {name:?}, found {}",
                    cur.found()
                ));
            }
            cur.pos += 1;
            cur.skip_ws();
            if cur.peek() != Some(b'"') {
                return Err(format!(
                    "value of label {name:?} must be double-quoted, found {}",
                    cur.found()
                ));
            }
            cur.pos += 1;
            let (raw, escaped) = cur
                .quoted()
                .ok_or_else(|| format!("unterminated quoted value of label {name:?}"))?;
            self.names.push(name);
            if let Some(out) = out.as_deref_mut() {
                let value = if escaped {
                    unescape(raw)
                } else {
                    raw.to_owned()
                };
                out.push((name.to_owned(), value));
            }
            cur.skip_ws();
            match cur.peek() {
                Some(b',') => {
                    cur.pos += 1;
                    cur.skip_ws();
                }
                Some(b'}') => {
                    cur.pos += 1;
                    break;
                }
                None => return Err(UNCLOSED.to_owned()),
                Some(_) => {
                    return Err(format!(
                        "expected `,` or `}}` after the value of label {name:?}, found {}",
                        cur.found()
                    ));
                }
            }
        }
        match duplicate(&self.names, &mut self.sorted) {
            Some(name) => Err(format!("duplicate label name {name:?}")),
            None => Ok(()),
        }
    }
}

/// After `#`: `# HELP name [text]`, `# TYPE name type`, `# UNIT name [unit]`, `# EOF`, or a
/// comment.
fn comment<'a>(cur: &mut Cursor<'a>) -> Result<Parsed<'a>, String> {
    if !cur.skip_ws() {
        // `#foo` or a lone `#`: a comment.
        return Ok(Parsed::Nothing);
    }
    let keyword = cur.token();
    if !matches!(keyword, "HELP" | "TYPE" | "UNIT") {
        cur.skip_ws();
        return Ok(if keyword == "EOF" && cur.at_end() {
            Parsed::Eof
        } else {
            Parsed::Nothing
        });
    }
    cur.skip_ws();
    let name = cur.metric_name();
    if name.is_empty() {
        return Err(format!(
            "expected a metric name after `# {keyword}`, found {}",
            cur.found()
        ));
    }
    if !cur.at_end() && !cur.skip_ws() {
        return Err(format!(
            "unexpected {} in metric name {name:?}",
            cur.found()
        ));
    }
    match keyword {
        "TYPE" => {
            let kind = cur.token();
            if !matches!(
                kind,
                "counter"
                    | "gauge"
                    | "histogram"
                    | "summary"
                    | "untyped"
                    | "unknown"
                    | "gaugehistogram"
                    | "stateset"
                    | "info"
            ) {
                return Err(format!("invalid metric type {} for {name:?}", shown(kind)));
            }
        }
        "UNIT" => {
            let unit = cur.token();
            if !unit
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
            {
                return Err(format!("invalid unit {} for {name:?}", shown(unit)));
            }
        }
        // HELP text is free-form; escapes in it need no checking as it is not returned.
        _ => return Ok(Parsed::Nothing),
    }
    cur.skip_ws();
    if !cur.at_end() {
        return Err(format!("unexpected {} after `# {keyword}`", cur.found()));
    }
    Ok(if keyword == "TYPE" {
        Parsed::Type(name)
    } else {
        Parsed::Nothing
    })
}

/// The first label name that occurs twice, if any. Small sets are compared pairwise; large ones
/// are sorted in the reusable `sorted` buffer so hostile input cannot make this quadratic.
fn duplicate<'a>(names: &[&'a str], sorted: &mut Vec<&'a str>) -> Option<&'a str> {
    const PAIRWISE_LIMIT: usize = 16;
    if names.len() <= PAIRWISE_LIMIT {
        return names
            .iter()
            .enumerate()
            .find(|&(i, name)| names.iter().take(i).any(|earlier| earlier == name))
            .map(|(_, name)| *name);
    }
    sorted.clear();
    sorted.extend_from_slice(names);
    sorted.sort_unstable();
    sorted.windows(2).find_map(|pair| match pair {
        [a, b] if a == b => Some(*a),
        _ => None,
    })
}

/// Unescapes a label value: `\\` → `\`, `\"` → `"`, `\n` → line feed; any other backslash is
/// kept literally, together with the character after it (Prometheus does the same).
fn unescape(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut out = String::with_capacity(raw.len());
    let mut segment = 0;
    let mut i = 0;
    while i < bytes.len() {
        if bytes.get(i) == Some(&b'\\') {
            let replacement = match bytes.get(i + 1) {
                Some(b'\\') => Some('\\'),
                Some(b'"') => Some('"'),
                Some(b'n') => Some('\n'),
                _ => None,
            };
            if let Some(c) = replacement {
                out.push_str(raw.get(segment..i).unwrap_or_default());
                out.push(c);
                i += 2;
                segment = i;
                continue;
            }
        }
        i += 1;
    }
    out.push_str(raw.get(segment..).unwrap_or_default());
    out
}

/// What the syntax check of a value found.
enum FloatSyntax {
    /// A special value or a small integer, already converted.
    Exact(f64),
    /// A decimal literal still to convert; its magnitude is below `10^magnitude`.
    Decimal { magnitude: i64 },
}

/// The largest `magnitude` that cannot overflow an f64 (`10^308 < f64::MAX`).
const SAFE_MAGNITUDE: i64 = 308;

/// Checks a value against Prometheus's float syntax: Go's `strconv.ParseFloat` minus the forms
/// with `p`, `P` or `_` (hex floats, digit separators). `inf`/`infinity` take any case and an
/// optional sign, `nan` any case and no sign (Go refuses `+NaN`).
fn float_syntax(token: &str) -> Option<FloatSyntax> {
    let bytes = token.as_bytes();
    let (negative, signed, rest) = match bytes.split_first() {
        Some((b'+', rest)) => (false, true, rest),
        Some((b'-', rest)) => (true, true, rest),
        _ => (false, false, bytes),
    };
    match rest.first() {
        Some(b'0'..=b'9' | b'.') => {}
        Some(b'i' | b'I') => {
            let inf = rest.eq_ignore_ascii_case(b"inf") || rest.eq_ignore_ascii_case(b"infinity");
            let value = if negative {
                f64::NEG_INFINITY
            } else {
                f64::INFINITY
            };
            return inf.then_some(FloatSyntax::Exact(value));
        }
        Some(b'n' | b'N') if !signed => {
            return rest
                .eq_ignore_ascii_case(b"nan")
                .then_some(FloatSyntax::Exact(f64::NAN));
        }
        _ => return None,
    }

    // Fast path for the most common values: small integers are exact in an f64.
    if rest.len() <= 15 && rest.iter().all(u8::is_ascii_digit) {
        let n = rest.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
        // At most 15 digits: the conversion is exact.
        let v = n as f64;
        return Some(FloatSyntax::Exact(if negative { -v } else { v }));
    }

    // digits [. digits] | . digits, then an optional exponent with at least one digit.
    let digits = |from: usize| {
        rest.iter()
            .skip(from)
            .take_while(|b| b.is_ascii_digit())
            .count()
    };
    let whole = digits(0);
    let mut i = whole;
    let mut mantissa_digits = whole;
    if rest.get(i) == Some(&b'.') {
        let fraction = digits(i + 1);
        i += 1 + fraction;
        mantissa_digits += fraction;
    }
    if mantissa_digits == 0 {
        return None;
    }
    let mut exponent: i64 = 0;
    if matches!(rest.get(i), Some(b'e' | b'E')) {
        i += 1;
        let exponent_negative = rest.get(i) == Some(&b'-');
        if matches!(rest.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let count = digits(i);
        if count == 0 {
            return None;
        }
        exponent = rest.iter().skip(i).take(count).fold(0i64, |e, d| {
            e.saturating_mul(10).saturating_add(i64::from(d - b'0'))
        });
        if exponent_negative {
            exponent = -exponent;
        }
        i += count;
    }
    if i != rest.len() {
        return None;
    }
    let whole = i64::try_from(whole).unwrap_or(i64::MAX);
    Some(FloatSyntax::Decimal {
        magnitude: whole.saturating_add(exponent),
    })
}

/// Parses a value (see [`float_syntax`]). A finite literal that overflows an f64 is rejected,
/// as Go reports it as a range error and Prometheus then refuses the line.
fn parse_float(token: &str) -> Option<f64> {
    match float_syntax(token)? {
        FloatSyntax::Exact(value) => Some(value),
        FloatSyntax::Decimal { .. } => {
            let value: f64 = token.parse().ok()?;
            (!value.is_infinite()).then_some(value)
        }
    }
}

/// Whether [`parse_float`] would accept the value, without converting it when it is too small
/// to overflow (the common case for samples nobody asked for).
fn is_valid_float(token: &str) -> bool {
    match float_syntax(token) {
        None => false,
        Some(FloatSyntax::Exact(_)) => true,
        Some(FloatSyntax::Decimal { magnitude }) => {
            magnitude <= SAFE_MAGNITUDE || parse_float(token).is_some()
        }
    }
}

/// Parses a sample or exemplar timestamp into milliseconds. An integer is milliseconds in
/// Prometheus text and seconds in OpenMetrics; a number with a fraction or exponent is seconds.
fn parse_timestamp(token: &str, dialect: Dialect) -> Option<i64> {
    let unsigned = token.strip_prefix(['+', '-']).unwrap_or(token);
    if !unsigned.is_empty() && unsigned.bytes().all(|b| b.is_ascii_digit()) {
        let n: i64 = token.parse().ok()?;
        return match dialect {
            Dialect::Prometheus => Some(n),
            Dialect::OpenMetrics => n.checked_mul(1000),
        };
    }
    seconds_to_ms(token)
}

/// Converts seconds to milliseconds, rounding half away from zero. Plain decimals are converted
/// exactly; exponent forms go through f64.
fn seconds_to_ms(token: &str) -> Option<i64> {
    let negative = token.starts_with('-');
    let unsigned = token.strip_prefix(['+', '-']).unwrap_or(token);
    if let Some((whole, fraction)) = unsigned.split_once('.') {
        let is_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if is_digits(whole) && is_digits(fraction) && !(whole.is_empty() && fraction.is_empty()) {
            let whole: u64 = if whole.is_empty() {
                0
            } else {
                whole.parse().ok()?
            };
            let mut fraction_digits = fraction.bytes().map(|b| i128::from(b - b'0'));
            let mut millis = i128::from(whole);
            for _ in 0..3 {
                millis = millis * 10 + fraction_digits.next().unwrap_or(0);
            }
            if fraction_digits.next().is_some_and(|d| d >= 5) {
                millis += 1;
            }
            return i64::try_from(if negative { -millis } else { millis }).ok();
        }
    }
    let seconds = parse_float(token)?;
    let millis = (seconds * 1000.0).round();
    // i64::MIN is exactly representable; i64::MAX + 1 is the first value out of range.
    let in_range = millis >= i64::MIN as f64 && millis < i64::MAX as f64;
    // The cast is exact: checked just above (and NaN fails the check).
    in_range.then_some(millis as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample(name: &str, labels: &[(&str, &str)], value: f64, ts: Option<i64>) -> Sample {
        Sample {
            name: name.to_owned(),
            labels: labels
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect(),
            value,
            timestamp_ms: ts,
        }
    }

    /// Compares sample lists, treating NaN as equal to NaN.
    fn same(got: &[Sample], want: &[Sample]) -> bool {
        got.len() == want.len()
            && got.iter().zip(want).all(|(g, w)| {
                g.name == w.name
                    && g.labels == w.labels
                    && g.timestamp_ms == w.timestamp_ms
                    && (g.value == w.value
                        && g.value.is_sign_negative() == w.value.is_sign_negative()
                        || g.value.is_nan() && w.value.is_nan())
            })
    }

    #[track_caller]
    fn assert_parses(body: &str, want: &[Sample]) {
        match parse(body) {
            Ok(got) => assert!(
                same(&got, want),
                "body {body:?}\n got {got:?}\nwant {want:?}"
            ),
            Err(e) => panic!("body {body:?} failed: {e}"),
        }
    }

    fn error_line(body: &str) -> Option<usize> {
        match parse(body) {
            Ok(_) => None,
            Err(Error::Syntax { line, .. }) => Some(line),
        }
    }

    #[test]
    fn help_type_unit_and_comment_lines_yield_no_samples() {
        let cases = [
            "# HELP m Some help.\n",
            "# HELP m Help with \\\\ and \\n escapes.\n",
            "# HELP m\n",
            "# TYPE m counter\n# TYPE m gauge\n# TYPE m histogram\n# TYPE m summary\n",
            "# TYPE m untyped\n# TYPE m unknown\n# TYPE m gaugehistogram\n",
            "# TYPE m stateset\n# TYPE m info\n",
            "# UNIT m_seconds seconds\n",
            "# just a comment\n#no space comment\n#\n# HELPER is not HELP\n",
            "   # indented comment\n\t# TYPE m\tgauge  \n",
            "\n\n  \n\t\n",
            "",
        ];
        for body in cases {
            assert_parses(body, &[]);
        }
        assert_parses(
            "# HELP m help\n# TYPE m gauge\n# comment\nm 1\n",
            &[sample("m", &[], 1.0, None)],
        );
    }

    #[test]
    fn escaped_label_values_are_unescaped() {
        let cases: [(&str, &str); 8] = [
            (r#"m{a="plain"} 1"#, "plain"),
            (r#"m{a="back\\slash"} 1"#, "back\\slash"),
            (r#"m{a="say \"hi\""} 1"#, "say \"hi\""),
            (r#"m{a="two\nlines"} 1"#, "two\nlines"),
            // Unknown escapes are kept literally, backslash included, as Prometheus does.
            (r#"m{a="tab\there"} 1"#, "tab\\there"),
            (r#"m{a="\é"} 1"#, "\\é"),
            (r#"m{a="ünïcødé 🦀"} 1"#, "ünïcødé 🦀"),
            (r#"m{a="\\\"\\n"} 1"#, "\\\"\\n"),
        ];
        for (body, value) in cases {
            assert_parses(body, &[sample("m", &[("a", value)], 1.0, None)]);
        }
    }

    #[test]
    fn timestamps_are_milliseconds_in_prometheus_text_and_seconds_in_openmetrics() {
        let cases: [(&str, Option<i64>); 14] = [
            ("m 1\n", None),
            ("m 1 1700000000123\n", Some(1_700_000_000_123)),
            ("m 1 -5\n", Some(-5)),
            ("m 1 +5\n", Some(5)),
            ("m 1 0\n", Some(0)),
            // Fractions and exponents are seconds even without `# EOF`.
            ("m 1 1700000000.5\n", Some(1_700_000_000_500)),
            ("m 1 1.7e9\n", Some(1_700_000_000_000)),
            ("m 1 1700000000\n# EOF\n", Some(1_700_000_000_000)),
            ("m 1 1700000000.123\n# EOF\n", Some(1_700_000_000_123)),
            ("m 1 -1.5\n# EOF\n", Some(-1_500)),
            ("m 1 .0015\n# EOF\n", Some(2)),
            ("m 1 0.0014999\n# EOF\n", Some(1)),
            ("m 1 1.520879607789e9\n# EOF\n", Some(1_520_879_607_789)),
            (
                "m 1 1520879607.789 # {a=\"b\"} 1 1520879607.000\n# EOF\n",
                Some(1_520_879_607_789),
            ),
        ];
        for (body, ts) in cases {
            assert_parses(body, &[sample("m", &[], 1.0, ts)]);
        }
    }

    #[test]
    fn out_of_range_or_malformed_timestamps_are_rejected() {
        let cases = [
            "m 1 9223372036854775808\n",
            "m 1 9223372036854776\n# EOF\n",
            "m 1 1e300\n",
            "m 1 NaN\n",
            "m 1 +Inf\n",
            "m 1 12ab\n",
            "m 1 1.2.3\n",
            "m 1 0x10\n",
            "m 1 .\n",
        ];
        for body in cases {
            assert_eq!(error_line(body), Some(1), "{body:?}");
        }
        assert_parses(
            "m 1 9223372036854775807\n",
            &[sample("m", &[], 1.0, Some(i64::MAX))],
        );
        assert_parses(
            "m 1 -9223372036854775.808\n# EOF\n",
            &[sample("m", &[], 1.0, Some(i64::MIN))],
        );
    }

    #[test]
    fn values_accept_go_float_forms() {
        let cases: [(&str, f64); 21] = [
            ("0", 0.0),
            ("42", 42.0),
            ("-3", -3.0),
            ("+3", 3.0),
            ("1.5", 1.5),
            (".5", 0.5),
            ("5.", 5.0),
            ("1e3", 1000.0),
            ("1.5E-2", 0.015),
            ("2.5e+06", 2_500_000.0),
            ("1e-400", 0.0),
            ("123456789012345678901234567890", 1.234_567_890_123_456_8e29),
            ("+Inf", f64::INFINITY),
            ("-Inf", f64::NEG_INFINITY),
            ("Inf", f64::INFINITY),
            ("inf", f64::INFINITY),
            ("INF", f64::INFINITY),
            ("Infinity", f64::INFINITY),
            ("-infinity", f64::NEG_INFINITY),
            ("1.7976931348623157e308", f64::MAX),
            ("-0", -0.0),
        ];
        for (text, value) in cases {
            assert_parses(&format!("m {text}\n"), &[sample("m", &[], value, None)]);
        }
        for nan in ["NaN", "nan", "NAN"] {
            let got = parse(&format!("m {nan}\n"));
            assert!(
                matches!(got.as_deref(), Ok([s]) if s.value.is_nan()),
                "{nan}: {got:?}"
            );
        }
    }

    #[test]
    fn values_reject_what_prometheus_rejects() {
        let cases = [
            "0x10",
            "0x1p3",
            "1p3",
            "1_000",
            "+NaN",
            "-nan",
            "nanx",
            "infinit",
            "Infinityy",
            "1e400",
            "-1e400",
            "1e",
            "1e+",
            "e1",
            ".",
            "+",
            "-",
            "1.2.3",
            "1,5",
            "--1",
            "Inf1",
            "one",
            "1.0f",
            "١",
            "1e99999999999999999999999",
            "0.000001e315",
        ];
        for text in cases {
            let body = format!("m 1\nm {text}\n");
            assert_eq!(error_line(&body), Some(2), "{text:?}");
            // Values of unwanted samples are checked the same way, overflow included.
            assert!(parse_selected(&body, |_| false).is_err(), "{text:?}");
            let exemplar = format!("m 1 # {{}} {text}\n");
            assert!(parse_selected(&exemplar, |_| false).is_err(), "{text:?}");
        }
        // Near the overflow threshold the unwanted path still converts exactly.
        let edge = [
            "1.7976931348623157e308",
            "0.1e309",
            "-9e307",
            "1e-99999999999",
        ];
        for text in edge {
            let body = format!("m {text}\n");
            assert_eq!(parse_selected(&body, |_| false), Ok(vec![]), "{text:?}");
        }
    }

    #[test]
    fn eof_ends_the_body_and_only_blank_lines_may_follow() {
        assert_parses("m 1\n# EOF\n", &[sample("m", &[], 1.0, None)]);
        assert_parses("m 1\n# EOF", &[sample("m", &[], 1.0, None)]);
        assert_parses("m 1\n# EOF\n\n  \r\n\t\n", &[sample("m", &[], 1.0, None)]);
        assert_parses("m 1\n# EOF  \r\n", &[sample("m", &[], 1.0, None)]);
        assert_eq!(error_line("m 1\n# EOF\nm 2\n"), Some(3));
        assert_eq!(error_line("m 1\n# EOF\n\n# HELP m x\n"), Some(4));
        // `# EOF` followed by more words is a plain comment, not the marker.
        assert_parses("# EOF or not\nm 1\n", &[sample("m", &[], 1.0, None)]);
    }

    #[test]
    fn crlf_line_endings_are_tolerated() {
        assert_parses(
            "# HELP m h\r\n# TYPE m gauge\r\nm{a=\"x\"} 1 5\r\nm{a=\"y\"} 2\r\n\r\n",
            &[
                sample("m", &[("a", "x")], 1.0, Some(5)),
                sample("m", &[("a", "y")], 2.0, None),
            ],
        );
        assert_parses("m 1 1.5\r\n# EOF\r\n", &[sample("m", &[], 1.0, Some(1500))]);
    }

    #[test]
    fn label_set_forms_and_whitespace_are_tolerated() {
        let ab = [("a", "1"), ("b", "2")];
        let cases: [(&str, &[(&str, &str)]); 10] = [
            (r#"m{} 7"#, &[]),
            (r#"m { } 7"#, &[]),
            (r#"m{a="1",b="2",} 7"#, &ab),
            (r#"m{a="1",b="2"} 7"#, &ab),
            (r#"m{ a = "1" , b = "2" , } 7"#, &ab),
            ("m\t{a=\"1\",\tb=\"2\"}\t7\t", &ab),
            (r#"  m{a="1",b="2"}   7  "#, &ab),
            (r#"m{a="1",b="2"}7"#, &ab),
            (r#"m{_x="",B_9="}{,="} 7"#, &[("_x", ""), ("B_9", "}{,=")]),
            ("m  \t 7", &[]),
        ];
        for (body, labels) in cases {
            assert_parses(body, &[sample("m", labels, 7.0, None)]);
        }
    }

    #[test]
    fn duplicate_label_names_are_rejected() {
        assert_eq!(error_line("m 1\nm{a=\"1\",a=\"2\"} 1\n"), Some(2));
        // Unwanted samples are checked too.
        let body = "m{a=\"1\",b=\"2\",a=\"3\"} 1\n";
        assert!(parse_selected(body, |_| false).is_err());
        // Large label sets take the sorting path.
        let many: Vec<String> = (0..40).map(|i| format!("l{i}=\"v\"")).collect();
        let unique = format!("m{{{}}} 1\n", many.join(","));
        assert_eq!(
            parse(&unique).map(|s| s.first().map(|s| s.labels.len())),
            Ok(Some(40))
        );
        let dup = format!("m{{{},l7=\"again\"}} 1\n", many.join(","));
        assert_eq!(error_line(&dup), Some(1));
        let err = parse_selected(&dup, |_| false);
        assert!(matches!(err, Err(Error::Syntax { ref reason, .. }) if reason.contains("l7")));
    }

    const CLIENT_GOLANG_BODY: &str = r#"# HELP go_gc_duration_seconds A summary of the pause duration of garbage collection cycles.
# TYPE go_gc_duration_seconds summary
go_gc_duration_seconds{quantile="0"} 2.5941e-05
go_gc_duration_seconds{quantile="0.25"} 3.8211e-05
go_gc_duration_seconds{quantile="0.5"} 4.6752e-05
go_gc_duration_seconds{quantile="0.75"} 6.1063e-05
go_gc_duration_seconds{quantile="1"} 0.000355394
go_gc_duration_seconds_sum 0.012484071
go_gc_duration_seconds_count 212
# HELP go_goroutines Number of goroutines that currently exist.
# TYPE go_goroutines gauge
go_goroutines 42
# HELP go_info Information about the Go environment.
# TYPE go_info gauge
go_info{version="go1.22.5"} 1
# HELP go_memstats_alloc_bytes Number of bytes allocated and still in use.
# TYPE go_memstats_alloc_bytes gauge
go_memstats_alloc_bytes 8.318048e+06
# HELP http_request_duration_seconds Latency of HTTP requests.
# TYPE http_request_duration_seconds histogram
http_request_duration_seconds_bucket{handler="/ws",method="GET",le="0.005"} 10
http_request_duration_seconds_bucket{handler="/ws",method="GET",le="0.01"} 12
http_request_duration_seconds_bucket{handler="/ws",method="GET",le="0.1"} 20
http_request_duration_seconds_bucket{handler="/ws",method="GET",le="1"} 21
http_request_duration_seconds_bucket{handler="/ws",method="GET",le="+Inf"} 21
http_request_duration_seconds_sum{handler="/ws",method="GET"} 1.7560473
http_request_duration_seconds_count{handler="/ws",method="GET"} 21
# HELP process_start_time_seconds Start time of the process since unix epoch in seconds.
# TYPE process_start_time_seconds gauge
process_start_time_seconds 1.72147281495e+09
# HELP promhttp_metric_handler_requests_total Total number of scrapes by HTTP status code.
# TYPE promhttp_metric_handler_requests_total counter
promhttp_metric_handler_requests_total{code="200"} 1234
promhttp_metric_handler_requests_total{code="500"} 0
# HELP websocket_connections_active Currently open WebSocket connections.
# TYPE websocket_connections_active gauge
websocket_connections_active{path="/chat"} 17
websocket_connections_active{path="/feed"} 3
websocket_connections_active{path="/admin"} 0
# HELP websocket_connections_active_total Connections ever opened.
# TYPE websocket_connections_active_total counter
websocket_connections_active_total 4521
"#;

    #[test]
    fn a_realistic_client_golang_body_parses() {
        let all = parse(CLIENT_GOLANG_BODY).unwrap_or_default();
        assert_eq!(all.len(), 24);
        let inf_bucket = all
            .iter()
            .find(|s| s.labels.iter().any(|(n, v)| n == "le" && v == "+Inf"));
        assert_eq!(
            inf_bucket,
            Some(&sample(
                "http_request_duration_seconds_bucket",
                &[("handler", "/ws"), ("method", "GET"), ("le", "+Inf")],
                21.0,
                None
            ))
        );
        let start = all.iter().find(|s| s.name == "process_start_time_seconds");
        assert_eq!(start.map(|s| s.value), Some(1_721_472_814.95));
        let quantile = all.first();
        assert_eq!(
            quantile,
            Some(&sample(
                "go_gc_duration_seconds",
                &[("quantile", "0")],
                2.5941e-05,
                None
            ))
        );
    }

    #[test]
    fn family_names_match_exactly() {
        let got = parse_selected(CLIENT_GOLANG_BODY, |n| n == "websocket_connections_active");
        assert_eq!(
            got,
            Ok(vec![
                sample(
                    "websocket_connections_active",
                    &[("path", "/chat")],
                    17.0,
                    None
                ),
                sample(
                    "websocket_connections_active",
                    &[("path", "/feed")],
                    3.0,
                    None
                ),
                sample(
                    "websocket_connections_active",
                    &[("path", "/admin")],
                    0.0,
                    None
                ),
            ])
        );
        let total = parse_selected(CLIENT_GOLANG_BODY, |n| {
            n == "websocket_connections_active_total"
        });
        assert_eq!(total.map(|s| s.len()), Ok(1));
        let family = parse_selected(CLIENT_GOLANG_BODY, |n| n == "http_request_duration_seconds");
        assert_eq!(family, Ok(vec![]), "histogram series carry suffixes");
    }

    const OPENMETRICS_BODY: &str = r#"# TYPE websocket_connections_opened counter
# HELP websocket_connections_opened Connections opened since start.
websocket_connections_opened_total{path="/chat"} 1027 1520879607.789 # {trace_id="KOO5S4vxi0o"} 1 1520879602.029
websocket_connections_opened_created{path="/chat"} 1520430000.123
# TYPE websocket_connections_active gauge
# UNIT websocket_connections_active connections
websocket_connections_active{path="/chat"} 17.0
# TYPE request_seconds histogram
# UNIT request_seconds seconds
request_seconds_bucket{le="0.1"} 8 # {trace_id="abc"} 0.054
request_seconds_bucket{le="+Inf"} 9 # {} 2.3 1520879603
request_seconds_count 9
request_seconds_sum 3.1
request_seconds_created 1520430000
# TYPE build info
build_info{version="1.2.3"} 1
# EOF
"#;

    #[test]
    fn an_openmetrics_body_with_created_and_exemplars_parses() {
        let got = parse(OPENMETRICS_BODY).unwrap_or_default();
        assert_eq!(got.len(), 9);
        assert_eq!(
            got.first(),
            Some(&sample(
                "websocket_connections_opened_total",
                &[("path", "/chat")],
                1027.0,
                Some(1_520_879_607_789)
            ))
        );
        assert_eq!(
            got.get(1),
            Some(&sample(
                "websocket_connections_opened_created",
                &[("path", "/chat")],
                1_520_430_000.123,
                None
            ))
        );
        let only = parse_selected(OPENMETRICS_BODY, |n| n == "websocket_connections_active");
        assert_eq!(
            only,
            Ok(vec![sample(
                "websocket_connections_active",
                &[("path", "/chat")],
                17.0,
                None
            )])
        );
    }

    #[test]
    fn a_syntax_error_anywhere_fails_the_whole_body() {
        let body = format!("{CLIENT_GOLANG_BODY}broken_metric{{a=\"1\" 1\n");
        let err = parse_selected(&body, |n| n == "websocket_connections_active");
        assert!(
            matches!(err, Err(Error::Syntax { line: 43, .. })),
            "{err:?}"
        );
        let early = format!("garbage here\n{CLIENT_GOLANG_BODY}");
        assert_eq!(
            parse_selected(&early, |_| false).map_err(|Error::Syntax { line, .. }| line),
            Err(1)
        );
    }

    #[test]
    fn errors_report_the_right_line() {
        let cases: [(&str, usize, &str); 23] = [
            ("m 1\nm\n", 2, "missing value"),
            ("m 1\nm{a=\"1\"}\n", 2, "missing value"),
            ("m 1\n\nm{a=\"1} 1\n", 3, "unterminated"),
            ("m{a=\"1\\\"} 1\n", 1, "unterminated"),
            ("# c\nm abc\n", 2, "invalid value"),
            ("m{a=1} 1\n", 1, "double-quoted"),
            ("m{a='1'} 1\n", 1, "double-quoted"),
            ("m{a} 1\n", 1, "expected `=`"),
            ("m{a=\"1\" b=\"2\"} 1\n", 1, "expected `,` or `}`"),
            ("m{,} 1\n", 1, "label name"),
            ("m{1a=\"x\"} 1\n", 1, "label name"),
            ("m{a=\"1\"\n", 1, "not closed"),
            ("m{a=\"1\", 1\n", 1, "label name"),
            ("1m 1\n", 1, "metric name"),
            ("m-x 1\n", 1, "metric name"),
            ("\u{0}\u{1}\u{7f}\u{fffd}PNG\r\n", 1, "metric name"),
            ("m 1\n\u{1b}[31m\u{0}\u{0}\n", 2, "metric name"),
            ("m 1 2 3\n", 1, "after the timestamp"),
            ("m 1 # x\n", 1, "exemplar"),
            ("m 1 # {a=\"b\"}\n", 1, "exemplar value"),
            ("# TYPE m Counter\n", 1, "invalid metric type"),
            ("# TYPE m gauge extra\n", 1, "after `# TYPE`"),
            ("# HELP 9m text\n", 1, "metric name"),
        ];
        for (body, line, reason_part) in cases {
            match parse(body) {
                Err(Error::Syntax { line: got, reason }) => {
                    assert_eq!(got, line, "{body:?}: {reason}");
                    assert!(reason.contains(reason_part), "{body:?}: {reason}");
                }
                other => panic!("{body:?} should fail, got {other:?}"),
            }
        }
    }

    #[test]
    fn errors_display_the_line_number() {
        let err = parse("ok 1\nbad\n").err();
        assert_eq!(
            err.map(|e| e.to_string()),
            Some("line 2: missing value for metric \"bad\"".to_owned())
        );
    }

    #[test]
    fn unwanted_samples_allocate_nothing_but_are_still_validated() {
        let body = "a{x=\"1\"} 1\nb{y=\"2\"} 2\nc{z=\"3\"} 3\n";
        assert_eq!(parse_selected(body, |_| false), Ok(vec![]));
        assert_eq!(
            parse_selected(body, |n| n == "b"),
            Ok(vec![sample("b", &[("y", "2")], 2.0, None)])
        );
        assert!(parse_selected("a 1\nb{y=\"2\"} zz\n", |n| n == "a").is_err());
    }

    // ---- property tests ----

    /// How a generated body is written out.
    #[derive(Debug, Clone)]
    struct Style {
        openmetrics: bool,
        crlf: bool,
        separator: &'static str,
        trailing_comma: bool,
        float_form: u8,
        metadata: bool,
    }

    fn style() -> impl Strategy<Value = Style> {
        (
            any::<bool>(),
            any::<bool>(),
            prop::sample::select(vec![" ", "\t", "  ", " \t "]),
            any::<bool>(),
            0u8..3,
            any::<bool>(),
        )
            .prop_map(
                |(openmetrics, crlf, separator, trailing_comma, float_form, metadata)| Style {
                    openmetrics,
                    crlf,
                    separator,
                    trailing_comma,
                    float_form,
                    metadata,
                },
            )
    }

    fn label_value() -> impl Strategy<Value = String> {
        prop::collection::vec(
            prop_oneof![
                any::<char>(),
                Just('\\'),
                Just('"'),
                Just('\n'),
                Just('é'),
                Just('🦀'),
                Just('n'),
            ],
            0..12,
        )
        .prop_map(String::from_iter)
    }

    fn value() -> impl Strategy<Value = f64> {
        prop_oneof![
            any::<f64>(),
            Just(f64::NAN),
            Just(f64::INFINITY),
            Just(f64::NEG_INFINITY),
            (-1_000_000i64..1_000_000).prop_map(|n| n as f64),
        ]
    }

    fn samples() -> impl Strategy<Value = Vec<Sample>> {
        let labels = prop::collection::vec(("[a-zA-Z_][a-zA-Z0-9_]{0,8}", label_value()), 0..5)
            .prop_map(|pairs| {
                let mut seen = std::collections::HashSet::new();
                pairs
                    .into_iter()
                    .filter(|(n, _)| seen.insert(n.clone()))
                    .collect::<Vec<_>>()
            });
        let one = (
            "[a-zA-Z_:][a-zA-Z0-9_:]{0,20}",
            labels,
            value(),
            prop::option::of(any::<i64>()),
        )
            .prop_map(|(name, labels, value, timestamp_ms)| Sample {
                name,
                labels,
                value,
                timestamp_ms,
            });
        prop::collection::vec(one, 0..8)
    }

    fn render_value(v: f64, form: u8) -> String {
        if v.is_nan() {
            "NaN".to_owned()
        } else if v == f64::INFINITY {
            "+Inf".to_owned()
        } else if v == f64::NEG_INFINITY {
            "-Inf".to_owned()
        } else {
            match form {
                0 => format!("{v}"),
                1 => format!("{v:e}"),
                _ => format!("{v:?}"),
            }
        }
    }

    fn render(samples: &[Sample], style: &Style) -> String {
        let eol = if style.crlf { "\r\n" } else { "\n" };
        let sep = style.separator;
        let mut out = String::new();
        for s in samples {
            if style.metadata {
                out.push_str(&format!("# HELP {} help \\\\ text \\n{eol}", s.name));
                out.push_str(&format!("# TYPE {} gauge{eol}", s.name));
            }
            out.push_str(&s.name);
            if !s.labels.is_empty() || style.trailing_comma {
                out.push('{');
                for (i, (n, v)) in s.labels.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    let escaped = v
                        .replace('\\', "\\\\")
                        .replace('"', "\\\"")
                        .replace('\n', "\\n");
                    out.push_str(&format!("{n}=\"{escaped}\""));
                }
                if style.trailing_comma && !s.labels.is_empty() {
                    out.push(',');
                }
                out.push('}');
            }
            out.push_str(sep);
            out.push_str(&render_value(s.value, style.float_form));
            if let Some(ts) = s.timestamp_ms {
                out.push_str(sep);
                if style.openmetrics {
                    let sign = if ts < 0 { "-" } else { "" };
                    let abs = ts.unsigned_abs();
                    out.push_str(&format!("{sign}{}.{:03}", abs / 1000, abs % 1000));
                } else {
                    out.push_str(&ts.to_string());
                }
            }
            out.push_str(eol);
        }
        if style.openmetrics {
            out.push_str("# EOF");
            out.push_str(eol);
        }
        out
    }

    /// Number of lines as the parser counts them.
    fn line_count(text: &str) -> usize {
        text.split('\n').count()
    }

    fn check_bounds(text: &str) -> std::result::Result<(), TestCaseError> {
        match parse(text) {
            Ok(samples) => prop_assert!(samples.len() <= line_count(text)),
            Err(Error::Syntax { line, reason }) => {
                prop_assert!(line >= 1 && line <= line_count(text), "line {line}");
                prop_assert!(!reason.is_empty());
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn arbitrary_strings_never_panic(text in any::<String>()) {
            check_bounds(&text)?;
        }

        #[test]
        fn grammar_flavoured_strings_never_panic(
            text in "[a-zA-Z_:{}=\",# \t\r\n\\\\0-9.+\\-eEinfINFaN\u{e9}\u{1f980}]{0,80}"
        ) {
            check_bounds(&text)?;
        }

        #[test]
        fn mutated_well_formed_bodies_never_panic(
            samples in samples(),
            style in style(),
            edits in prop::collection::vec((any::<prop::sample::Index>(), any::<char>(), 0u8..3), 1..6),
        ) {
            let mut chars: Vec<char> = render(&samples, &style).chars().collect();
            for (at, c, op) in edits {
                if chars.is_empty() {
                    chars.push(c);
                    continue;
                }
                let i = at.index(chars.len());
                match op {
                    0 => chars[i] = c,
                    1 => { chars.remove(i); }
                    _ => chars.insert(i, c),
                }
            }
            let text: String = chars.into_iter().collect();
            check_bounds(&text)?;
        }

        #[test]
        fn well_formed_bodies_round_trip(samples in samples(), style in style()) {
            let body = render(&samples, &style);
            match parse(&body) {
                Ok(got) => prop_assert!(same(&got, &samples), "body {:?}\n got {:?}", body, got),
                Err(e) => prop_assert!(false, "body {:?} failed: {}", body, e),
            }
        }

        #[test]
        fn selecting_equals_filtering_a_full_parse(samples in samples(), style in style(), pick in any::<prop::sample::Index>()) {
            let body = render(&samples, &style);
            let name = if samples.is_empty() { String::new() } else { samples[pick.index(samples.len())].name.clone() };
            let selected = parse_selected(&body, |n| n == name).unwrap_or_default();
            let want: Vec<Sample> = samples.into_iter().filter(|s| s.name == name).collect();
            prop_assert!(same(&selected, &want), "selected {:?}\nwant {:?}", selected, want);
        }
    }
}
