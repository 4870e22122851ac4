//! Kubernetes label selectors (`labelSelector`, `metricLabelSelector`): parsed with the grammar
//! and validation of Go's `labels.Parse` (k8s.io/apimachinery), matched against label sets, and
//! echoed back in canonical string or `metav1.LabelSelector` JSON form.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::str::FromStr;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};

/// Longest label name (the part after an optional `prefix/`) and longest label value.
const MAX_NAME_LEN: usize = 63;
/// Longest DNS-1123 subdomain allowed as a key prefix.
const MAX_PREFIX_LEN: usize = 253;
/// Most requirements in one selector. Go's `labels.Parse` has no bound; an HPA's selector has a
/// handful and a person's a few more, while thousands only cost the adapter (a request's URI can
/// carry about 7,000). Beyond it the request is a 400.
pub const MAX_REQUIREMENTS: usize = 256;
/// Most values in one selector, over all its `in`/`notin` lists (and single values).
pub const MAX_VALUES: usize = 4096;

/// A parsed label selector (all requirements must match).
///
/// The empty selector (from an empty or all-whitespace string) matches everything. Matching
/// costs one lookup per label of the object, plus one set lookup per `=`/`in` requirement on a
/// key it has (bounded by [`MAX_REQUIREMENTS`]): requirements are merged per key at parse time.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Selector {
    /// Sorted by key (stable: requirements on the same key keep their input order).
    requirements: Vec<Requirement>,
    /// The same requirements merged per key, for matching.
    compiled: Compiled,
}

/// All requirements on one key, merged: what a label with that key must (not) be.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct KeyRule {
    /// The label must be present (`=`, `==`, `in`, exists, `>`, `<`).
    required: bool,
    /// The label must be absent (`!key`).
    forbidden: bool,
    /// Each set lists the values allowed by one `=`/`in` requirement; all must hold.
    allowed: Vec<HashSet<String>>,
    /// Values no `!=`/`notin` allows.
    refused: HashSet<String>,
    /// Greatest `>` bound and least `<` bound (the value must be an integer between them).
    greater_than: Option<i64>,
    less_than: Option<i64>,
}

impl KeyRule {
    /// Whether a present label with this value satisfies every requirement on the key.
    fn allows(&self, value: &str) -> bool {
        if self.forbidden || self.refused.contains(value) {
            return false;
        }
        if !self.allowed.iter().all(|set| set.contains(value)) {
            return false;
        }
        if self.greater_than.is_some() || self.less_than.is_some() {
            let Ok(n) = value.parse::<i64>() else {
                return false;
            };
            if self.greater_than.is_some_and(|b| n <= b) || self.less_than.is_some_and(|b| n >= b) {
                return false;
            }
        }
        true
    }
}

/// Requirements merged per key.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Compiled {
    rules: HashMap<String, KeyRule>,
    /// How many keys must be present.
    required_keys: usize,
}

impl Compiled {
    fn new(requirements: &[Requirement]) -> Self {
        let mut rules: HashMap<String, KeyRule> = HashMap::new();
        for r in requirements {
            let rule = rules.entry(r.key.clone()).or_default();
            let bound = || r.values.first().and_then(|v| v.parse::<i64>().ok());
            match r.operator {
                Operator::Equals | Operator::DoubleEquals | Operator::In => {
                    rule.required = true;
                    rule.allowed.push(r.values.iter().cloned().collect());
                }
                Operator::NotEquals | Operator::NotIn => {
                    rule.refused.extend(r.values.iter().cloned())
                }
                Operator::Exists => rule.required = true,
                Operator::DoesNotExist => rule.forbidden = true,
                Operator::GreaterThan => {
                    rule.required = true;
                    // The parser accepts only 64-bit integers here; i64::MAX matches nothing.
                    let b = bound().unwrap_or(i64::MAX);
                    rule.greater_than = Some(rule.greater_than.map_or(b, |o| o.max(b)));
                }
                Operator::LessThan => {
                    rule.required = true;
                    let b = bound().unwrap_or(i64::MIN);
                    rule.less_than = Some(rule.less_than.map_or(b, |o| o.min(b)));
                }
            }
        }
        let required_keys = rules.values().filter(|r| r.required).count();
        Self {
            rules,
            required_keys,
        }
    }

    /// Whether labels given as distinct (name, value) pairs match: each label is looked up once,
    /// then every required key must have been seen.
    fn matches<'a>(&self, labels: impl Iterator<Item = (&'a str, &'a str)>, count: usize) -> bool {
        if self.required_keys > count {
            return false;
        }
        let mut seen_required = 0;
        for (name, value) in labels {
            if let Some(rule) = self.rules.get(name) {
                if !rule.allows(value) {
                    return false;
                }
                seen_required += usize::from(rule.required);
            }
        }
        seen_required == self.required_keys
    }
}

/// One requirement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    /// The label key, e.g. `app` or `example.com/tier`.
    pub key: String,
    /// How the label's value is compared with [`Requirement::values`].
    pub operator: Operator,
    /// Sorted and deduplicated. Exactly one for `=`, `==`, `!=`, `>` and `<` (an integer for the
    /// last two); at least one for `in`/`notin` (`in ()` holds the empty string); none for
    /// exists/does-not-exist.
    pub values: Vec<String>,
}

/// Operator of a requirement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operator {
    /// `key=value`: the label is present with that value.
    Equals,
    /// `key==value`: same as [`Operator::Equals`], kept apart for printing.
    DoubleEquals,
    /// `key!=value`: the label is absent or has another value.
    NotEquals,
    /// `key in (a,b)`: the label is present with one of the values.
    In,
    /// `key notin (a,b)`: the label is absent or has none of the values.
    NotIn,
    /// `key`: the label is present, with any value.
    Exists,
    /// `!key`: the label is absent.
    DoesNotExist,
    /// `key>3`: the label is present, is an integer, and is greater than the value.
    GreaterThan,
    /// `key<3`: the label is present, is an integer, and is less than the value.
    LessThan,
}

/// Why a selector string did not parse.
///
/// Columns count characters from 1; a column one past the last character means the end of the
/// input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A token appeared where the grammar does not allow it.
    #[error(
        "unable to parse requirement: found {} at column {column}, expected: {expected}",
        describe_found(.found)
    )]
    Syntax {
        /// The offending token as written; `None` for the end of the input.
        found: Option<String>,
        /// What the grammar allows at this point.
        expected: &'static str,
        /// Where the offending token starts.
        column: usize,
    },
    /// A label key is not a valid qualified name (`[dns-subdomain/]name`).
    #[error("invalid label key {key:?} at column {column}: {reason}")]
    InvalidKey {
        /// The key as written.
        key: String,
        /// What is wrong with it.
        reason: String,
        /// Where the key starts.
        column: usize,
    },
    /// A value is not a valid label value, or not an integer where `>` or `<` needs one.
    #[error("invalid value {value:?} for label key {key:?} at column {column}: {reason}")]
    InvalidValue {
        /// The key of the requirement.
        key: String,
        /// The value as written (empty when it was omitted).
        value: String,
        /// What is wrong with it.
        reason: String,
        /// Where the value starts (or would start, when omitted).
        column: usize,
    },
    /// The selector has more requirements or values than this adapter evaluates.
    #[error("selector too large: more than {limit} {what}")]
    TooLarge {
        /// `requirements` or `values`.
        what: &'static str,
        /// The bound ([`MAX_REQUIREMENTS`] or [`MAX_VALUES`]).
        limit: usize,
    },
}

/// How an offending token is shown in an [`Error::Syntax`] message.
fn describe_found(found: &Option<String>) -> String {
    match found {
        Some(token) => format!("'{token}'"),
        None => "end of string".to_owned(),
    }
}

impl Selector {
    /// Parses `input`.
    ///
    /// Grammar and validation follow Go's `labels.Parse`: comma-separated requirements
    /// `[!]key`, `key=v`, `key==v`, `key!=v`, `key in (v,…)`, `key notin (v,…)`, `key>n`,
    /// `key<n`, with spaces, tabs, CR or LF allowed between tokens. An empty or all-whitespace
    /// string gives the selector that matches everything. Keys are qualified names (at most 63
    /// characters, optionally prefixed by a DNS-1123 subdomain and `/`); values are empty or at
    /// most 63 characters of `[-A-Za-z0-9_.]` starting and ending with an alphanumeric; `in ()`
    /// means the empty value, as in Go. Requirements are sorted by key.
    ///
    /// # Errors
    /// [`Error::Syntax`] when the string does not follow the grammar (e.g. `x==a==b`, `!x=a`,
    /// `x in (a`, a trailing comma); [`Error::InvalidKey`] or [`Error::InvalidValue`] when a key
    /// or value is malformed or too long, or when the operand of `>`/`<` is not a 64-bit
    /// integer. Only the first problem found is reported.
    pub fn parse(input: &str) -> Result<Self, Error> {
        let requirements = Parser::new(input).selector()?;
        Ok(Self::from_requirements(requirements))
    }

    fn from_requirements(mut requirements: Vec<Requirement>) -> Self {
        // Stable, so requirements on the same key keep their input order (Go's sort.Sort is
        // stable too for the short lists selectors are in practice).
        requirements.sort_by(|a, b| a.key.cmp(&b.key));
        let compiled = Compiled::new(&requirements);
        Self {
            requirements,
            compiled,
        }
    }

    /// The selector matching what both `self` and `other` match (their requirements together):
    /// a metric's own series filter combined with a request's `metricLabelSelector`.
    #[must_use]
    pub fn and(&self, other: &Self) -> Self {
        if other.is_empty() {
            return self.clone();
        }
        if self.is_empty() {
            return other.clone();
        }
        let mut requirements = self.requirements.clone();
        requirements.extend(other.requirements.iter().cloned());
        Self::from_requirements(requirements)
    }

    /// The selector that matches everything.
    #[must_use]
    pub fn everything() -> Self {
        Self::default()
    }

    /// True when there are no requirements.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// The requirements, sorted by key as Go does.
    #[must_use]
    pub fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }

    /// Whether a label set matches. `get` returns the value of a label by name. Costs one
    /// call per requirement; prefer [`Selector::matches_map`] and [`Selector::matches_pairs`],
    /// which cost one lookup per label whatever the number of requirements.
    #[must_use]
    pub fn matches<'a>(&self, get: impl Fn(&str) -> Option<&'a str>) -> bool {
        self.requirements.iter().all(|r| r.matches(get(&r.key)))
    }

    /// Whether a Kubernetes label map matches.
    #[must_use]
    pub fn matches_map(&self, labels: &BTreeMap<String, String>) -> bool {
        self.is_empty()
            || self.compiled.matches(
                labels.iter().map(|(k, v)| (k.as_str(), v.as_str())),
                labels.len(),
            )
    }

    /// Whether a Prometheus series' labels match. The names must be distinct, as the exposition
    /// parser (which refuses a repeated name) and Prometheus answers guarantee.
    #[must_use]
    pub fn matches_pairs(&self, labels: &[(String, String)]) -> bool {
        self.is_empty()
            || self.compiled.matches(
                labels.iter().map(|(k, v)| (k.as_str(), v.as_str())),
                labels.len(),
            )
    }

    /// A `metav1.LabelSelector` (a Deployment's or StatefulSet's `spec.selector`) as a
    /// selector, as Go's `metav1.LabelSelectorAsSelector` makes it.
    ///
    /// # Errors
    /// An operator that is not In, NotIn, Exists or DoesNotExist, or a key or value the selector
    /// grammar refuses.
    pub fn from_label_selector(s: &LabelSelector) -> Result<Self, String> {
        let mut terms: Vec<String> = s
            .match_labels
            .iter()
            .flatten()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        for e in s.match_expressions.iter().flatten() {
            let values = e.values.clone().unwrap_or_default().join(",");
            terms.push(match e.operator.as_str() {
                "In" => format!("{} in ({values})", e.key),
                "NotIn" => format!("{} notin ({values})", e.key),
                "Exists" => e.key.clone(),
                "DoesNotExist" => format!("!{}", e.key),
                other => {
                    return Err(format!(
                        "operator {other:?} is not a label selector operator"
                    ));
                }
            });
        }
        Self::parse(&terms.join(",")).map_err(|e| e.to_string())
    }

    /// The selector as a `metav1.LabelSelector` (k8s-openapi's type), as Go's
    /// `metav1.ParseToLabelSelector(sel.String())` produces it.
    ///
    /// `=` and `==` become `matchLabels` entries (for a key required twice, the last one wins, as
    /// in Go); `in`, `notin`, exists and does-not-exist become `matchExpressions` items
    /// `{key, operator: In|NotIn|Exists|DoesNotExist, values}`, in key order, `values` omitted
    /// when empty. Empty `matchLabels`/`matchExpressions` are omitted.
    ///
    /// Two deliberate departures, because Go's function fails on these where this one cannot:
    /// - `key!=v` becomes `{key, operator: NotIn, values: [v]}`, which selects the same sets;
    /// - `>` and `<` have no `LabelSelector` form and are left out, so the result can select
    ///   more than the selector itself (a selector made only of them gives `{}`).
    ///
    /// The empty selector gives `None` (`null` on the wire).
    #[must_use]
    pub fn to_label_selector(&self) -> Option<LabelSelector> {
        if self.is_empty() {
            return None;
        }
        let mut match_labels = BTreeMap::new();
        let mut match_expressions = Vec::new();
        for r in &self.requirements {
            let operator = match r.operator {
                Operator::Equals | Operator::DoubleEquals => {
                    let value = r.values.first().cloned().unwrap_or_default();
                    match_labels.insert(r.key.clone(), value);
                    continue;
                }
                Operator::GreaterThan | Operator::LessThan => continue,
                Operator::In => "In",
                Operator::NotIn | Operator::NotEquals => "NotIn",
                Operator::Exists => "Exists",
                Operator::DoesNotExist => "DoesNotExist",
            };
            match_expressions.push(LabelSelectorRequirement {
                key: r.key.clone(),
                operator: operator.to_owned(),
                values: (!r.values.is_empty()).then(|| r.values.clone()),
            });
        }
        Some(LabelSelector {
            match_labels: (!match_labels.is_empty()).then_some(match_labels),
            match_expressions: (!match_expressions.is_empty()).then_some(match_expressions),
        })
    }
}

impl Requirement {
    /// Whether the requirement holds for a label whose value is `value` (`None`: label absent).
    fn matches(&self, value: Option<&str>) -> bool {
        let listed = |v: &str| self.values.iter().any(|x| x == v);
        match self.operator {
            Operator::Equals | Operator::DoubleEquals | Operator::In => value.is_some_and(listed),
            Operator::NotEquals | Operator::NotIn => !value.is_some_and(listed),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
            Operator::GreaterThan | Operator::LessThan => {
                let (Some(value), [bound]) = (value, self.values.as_slice()) else {
                    return false;
                };
                let (Ok(value), Ok(bound)) = (value.parse::<i64>(), bound.parse::<i64>()) else {
                    return false;
                };
                if self.operator == Operator::GreaterThan {
                    value > bound
                } else {
                    value < bound
                }
            }
        }
    }
}

/// Canonical form, as Go's `Requirement.String()`: `key=v`, `key==v`, `key!=v`,
/// `key in (a,b)`, `key notin (a,b)`, `key`, `!key`, `key>3`, `key<3`.
impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let values = self.values.join(",");
        match self.operator {
            Operator::Exists => write!(f, "{}", self.key),
            Operator::DoesNotExist => write!(f, "!{}", self.key),
            Operator::Equals => write!(f, "{}={values}", self.key),
            Operator::DoubleEquals => write!(f, "{}=={values}", self.key),
            Operator::NotEquals => write!(f, "{}!={values}", self.key),
            Operator::In => write!(f, "{} in ({values})", self.key),
            Operator::NotIn => write!(f, "{} notin ({values})", self.key),
            Operator::GreaterThan => write!(f, "{}>{values}", self.key),
            Operator::LessThan => write!(f, "{}<{values}", self.key),
        }
    }
}

/// Canonical form, as Go's `Selector.String()`: the requirements in key order joined by `,`
/// (empty for the empty selector). Parsing it gives back an equal selector.
impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

/// Same as [`Selector::parse`].
impl FromStr for Selector {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

// ---------------------------------------------------------------------------------------------
// Lexer

/// Kinds of tokens. `in` and `notin` are ordinary words, recognised as operators only where an
/// operator is expected (so `in in (in)` is valid, as in Go).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind<'a> {
    Word(&'a str),
    Not,
    Equals,
    DoubleEquals,
    NotEquals,
    GreaterThan,
    LessThan,
    OpenParen,
    CloseParen,
    Comma,
    End,
}

/// A token and the byte offset where it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Token<'a> {
    kind: Kind<'a>,
    offset: usize,
}

impl Token<'_> {
    /// The token as written, `None` for the end of the input.
    fn text(&self) -> Option<String> {
        let text = match self.kind {
            Kind::Word(w) => w,
            Kind::Not => "!",
            Kind::Equals => "=",
            Kind::DoubleEquals => "==",
            Kind::NotEquals => "!=",
            Kind::GreaterThan => ">",
            Kind::LessThan => "<",
            Kind::OpenParen => "(",
            Kind::CloseParen => ")",
            Kind::Comma => ",",
            Kind::End => return None,
        };
        Some(text.to_owned())
    }
}

/// Whitespace between tokens, as in Go.
fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

/// Characters that end a word and start an operator or punctuation.
fn is_special(b: u8) -> bool {
    matches!(b, b'=' | b'!' | b'(' | b')' | b',' | b'>' | b'<')
}

/// Splits `input` into tokens, always ending with [`Kind::End`]. A word is a maximal run of
/// anything else than whitespace and special characters (so `a||b` is one word, rejected later
/// by validation). `==` and `!=` are taken greedily. Unlike Go, a NUL byte is an ordinary word
/// character rather than an end of input, so it is reported instead of silently truncating.
fn tokenize(input: &str) -> Vec<Token<'_>> {
    let bytes = input.as_bytes();
    let mut tokens = Vec::new();
    let mut pos = 0;
    loop {
        while bytes.get(pos).copied().is_some_and(is_space) {
            pos += 1;
        }
        let Some(&first) = bytes.get(pos) else {
            tokens.push(Token {
                kind: Kind::End,
                offset: input.len(),
            });
            return tokens;
        };
        let second_is_equals = bytes.get(pos + 1) == Some(&b'=');
        let (kind, len) = match first {
            b'=' if second_is_equals => (Kind::DoubleEquals, 2),
            b'!' if second_is_equals => (Kind::NotEquals, 2),
            b'=' => (Kind::Equals, 1),
            b'!' => (Kind::Not, 1),
            b'>' => (Kind::GreaterThan, 1),
            b'<' => (Kind::LessThan, 1),
            b'(' => (Kind::OpenParen, 1),
            b')' => (Kind::CloseParen, 1),
            b',' => (Kind::Comma, 1),
            _ => {
                let len = bytes[pos..]
                    .iter()
                    .position(|&b| is_space(b) || is_special(b))
                    .unwrap_or(bytes.len() - pos);
                // Word boundaries are ASCII bytes or the end of input, hence char boundaries.
                (Kind::Word(&input[pos..pos + len]), len)
            }
        };
        tokens.push(Token { kind, offset: pos });
        pos += len;
    }
}

// ---------------------------------------------------------------------------------------------
// Parser

/// What may follow a key as an operator, for error messages.
const OPERATORS: &str = "in, notin, =, ==, !=, >, <";

/// Recursive-descent parser over the token list, with Go's grammar and acceptance quirks.
struct Parser<'a> {
    input: &'a str,
    tokens: Vec<Token<'a>>,
    pos: usize,
    /// Values read so far, over all requirements.
    values: usize,
}

impl<'a> Parser<'a> {
    fn new(input: &'a str) -> Self {
        Self {
            input,
            tokens: tokenize(input),
            pos: 0,
            values: 0,
        }
    }

    /// The current token (the end token once past the input).
    fn peek(&self) -> Token<'a> {
        self.tokens.get(self.pos).copied().unwrap_or(Token {
            kind: Kind::End,
            offset: self.input.len(),
        })
    }

    /// The current token, moving past it.
    fn advance(&mut self) -> Token<'a> {
        let token = self.peek();
        if self.pos < self.tokens.len() {
            self.pos += 1;
        }
        token
    }

    /// 1-based character column of a byte offset (always a char boundary).
    fn column(&self, offset: usize) -> usize {
        self.input.get(..offset).map_or(0, |s| s.chars().count()) + 1
    }

    fn unexpected(&self, token: Token<'_>, expected: &'static str) -> Error {
        Error::Syntax {
            found: token.text(),
            expected,
            column: self.column(token.offset),
        }
    }

    /// `selector := "" | requirement ("," requirement)*`
    fn selector(&mut self) -> Result<Vec<Requirement>, Error> {
        let mut requirements = Vec::new();
        match self.peek().kind {
            Kind::End => return Ok(requirements),
            Kind::Word(_) | Kind::Not => {}
            _ => return Err(self.unexpected(self.peek(), "'!', identifier or end of string")),
        }
        loop {
            if requirements.len() == MAX_REQUIREMENTS {
                return Err(Error::TooLarge {
                    what: "requirements",
                    limit: MAX_REQUIREMENTS,
                });
            }
            requirements.push(self.requirement()?);
            let token = self.advance();
            match token.kind {
                Kind::End => return Ok(requirements),
                Kind::Comma => {
                    let next = self.peek();
                    if !matches!(next.kind, Kind::Word(_) | Kind::Not) {
                        return Err(self.unexpected(next, "'!' or identifier after ','"));
                    }
                }
                _ => return Err(self.unexpected(token, "',' or end of string")),
            }
        }
    }

    /// `requirement := "!" KEY | KEY [operator values]`
    fn requirement(&mut self) -> Result<Requirement, Error> {
        let mut token = self.advance();
        let negated = token.kind == Kind::Not;
        if negated {
            token = self.advance();
        }
        let Kind::Word(key) = token.kind else {
            return Err(self.unexpected(token, "identifier"));
        };
        validate_key(key).map_err(|reason| Error::InvalidKey {
            key: key.to_owned(),
            reason,
            column: self.column(token.offset),
        })?;
        let requirement = |operator, values| Requirement {
            key: key.to_owned(),
            operator,
            values,
        };
        if negated {
            // Whatever follows `!key` is left to the caller, which wants a comma or the end.
            return Ok(requirement(Operator::DoesNotExist, Vec::new()));
        }
        if matches!(self.peek().kind, Kind::End | Kind::Comma) {
            return Ok(requirement(Operator::Exists, Vec::new()));
        }
        let token = self.advance();
        let operator = match token.kind {
            Kind::Word("in") => Operator::In,
            Kind::Word("notin") => Operator::NotIn,
            Kind::Equals => Operator::Equals,
            Kind::DoubleEquals => Operator::DoubleEquals,
            Kind::NotEquals => Operator::NotEquals,
            Kind::GreaterThan => Operator::GreaterThan,
            Kind::LessThan => Operator::LessThan,
            _ => return Err(self.unexpected(token, OPERATORS)),
        };
        let values = match operator {
            Operator::In | Operator::NotIn => self.value_set()?,
            _ => vec![self.single_value()?],
        };
        self.values += values.len();
        if self.values > MAX_VALUES {
            return Err(Error::TooLarge {
                what: "values",
                limit: MAX_VALUES,
            });
        }
        // Syntax first, validation after, as Go does; values are checked in input order.
        for &(value, offset) in &values {
            let integer_needed = matches!(operator, Operator::GreaterThan | Operator::LessThan);
            let check = if integer_needed && value.parse::<i64>().is_err() {
                Err("for '>' and '<' operators, the value must be a 64-bit integer".to_owned())
            } else {
                validate_value(value)
            };
            check.map_err(|reason| Error::InvalidValue {
                key: key.to_owned(),
                value: value.to_owned(),
                reason,
                column: self.column(offset),
            })?;
        }
        let mut values: Vec<String> = values.into_iter().map(|(v, _)| v.to_owned()).collect();
        values.sort();
        values.dedup();
        Ok(requirement(operator, values))
    }

    /// The value after `=`, `==`, `!=`, `>` or `<`: a word, or empty when the requirement ends
    /// here. Returned with its byte offset.
    fn single_value(&mut self) -> Result<(&'a str, usize), Error> {
        let token = self.peek();
        match token.kind {
            Kind::End | Kind::Comma => Ok(("", token.offset)),
            Kind::Word(w) => {
                self.advance();
                Ok((w, token.offset))
            }
            _ => Err(self.unexpected(token, "value")),
        }
    }

    /// `"(" [VALUE ("," VALUE)*] ")"` where values may be empty, with Go's exact acceptance:
    /// `()`, `(,)`, `(a,)`, `(,a)` and `(a,,b)` are accepted (the empty string joins the set),
    /// while `(,,)` and `(a,,)` are rejected, as Go's parser does.
    fn value_set(&mut self) -> Result<Vec<(&'a str, usize)>, Error> {
        let open = self.advance();
        if open.kind != Kind::OpenParen {
            return Err(self.unexpected(open, "'('"));
        }
        let mut values = Vec::new();
        match self.peek().kind {
            Kind::CloseParen => {
                self.advance();
                values.push(("", open.offset + 1));
                return Ok(values);
            }
            Kind::Word(_) | Kind::Comma => {}
            _ => return Err(self.unexpected(self.peek(), "',', ')' or identifier")),
        }
        loop {
            let token = self.advance();
            match token.kind {
                Kind::Word(w) => {
                    values.push((w, token.offset));
                    let next = self.peek();
                    match next.kind {
                        Kind::Comma => {}
                        Kind::CloseParen => {
                            self.advance();
                            return Ok(values);
                        }
                        _ => return Err(self.unexpected(next, "',' or ')'")),
                    }
                }
                Kind::Comma => {
                    if values.is_empty() {
                        values.push(("", token.offset));
                    }
                    let next = self.peek();
                    match next.kind {
                        Kind::CloseParen => {
                            self.advance();
                            values.push(("", next.offset));
                            return Ok(values);
                        }
                        Kind::Comma => {
                            self.advance();
                            values.push(("", next.offset));
                        }
                        _ => {}
                    }
                }
                _ => return Err(self.unexpected(token, "',' or identifier")),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Validation (k8s.io/apimachinery/pkg/util/validation: IsQualifiedName, IsValidLabelValue)

const NAME_FORMAT: &str = "must consist of alphanumeric characters, '-', '_' or '.', and must \
                           start and end with an alphanumeric character";

/// `[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?` without a length limit.
fn is_qualified_name_part(s: &str) -> bool {
    let b = s.as_bytes();
    match (b.first(), b.last()) {
        (Some(first), Some(last)) => {
            first.is_ascii_alphanumeric()
                && last.is_ascii_alphanumeric()
                && b.iter()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        }
        _ => false,
    }
}

/// Lowercase RFC 1123 subdomain syntax: dot-separated labels of `[-a-z0-9]`, each starting and
/// ending with `[a-z0-9]`.
fn is_dns1123_subdomain(s: &str) -> bool {
    let alnum = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    s.split('.').all(|label| {
        let b = label.as_bytes();
        match (b.first(), b.last()) {
            (Some(first), Some(last)) => {
                alnum(first) && alnum(last) && b.iter().all(|c| alnum(c) || *c == b'-')
            }
            _ => false,
        }
    })
}

/// Checks a label key: `[prefix "/"] name`. Returns every problem found, joined by `; `.
fn validate_key(key: &str) -> Result<(), String> {
    let mut problems = Vec::new();
    let mut parts = key.split('/');
    let (prefix, name) = match (parts.next(), parts.next(), parts.next()) {
        (Some(name), None, _) => (None, name),
        (Some(prefix), Some(name), None) => (Some(prefix), name),
        _ => {
            return Err(format!(
                "a qualified name {NAME_FORMAT} (e.g. 'MyName', 'my.name', or '123-abc'), with \
                 an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"
            ));
        }
    };
    if let Some(prefix) = prefix {
        if prefix.is_empty() {
            problems.push("prefix part must be non-empty".to_owned());
        } else {
            if prefix.len() > MAX_PREFIX_LEN {
                problems.push(format!(
                    "prefix part must be no more than {MAX_PREFIX_LEN} characters"
                ));
            }
            if !is_dns1123_subdomain(prefix) {
                problems.push(
                    "prefix part a lowercase RFC 1123 subdomain must consist of lower case \
                     alphanumeric characters, '-' or '.', and must start and end with an \
                     alphanumeric character (e.g. 'example.com')"
                        .to_owned(),
                );
            }
        }
    }
    if name.is_empty() {
        problems.push("name part must be non-empty".to_owned());
    } else {
        if name.len() > MAX_NAME_LEN {
            problems.push(format!(
                "name part must be no more than {MAX_NAME_LEN} characters"
            ));
        }
        if !is_qualified_name_part(name) {
            problems.push(format!(
                "name part {NAME_FORMAT} (e.g. 'MyName', 'my.name', or '123-abc')"
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// Checks a label value: empty, or at most 63 characters of `[-A-Za-z0-9_.]` starting and
/// ending with an alphanumeric. Returns every problem found, joined by `; `.
fn validate_value(value: &str) -> Result<(), String> {
    let mut problems = Vec::new();
    if value.len() > MAX_NAME_LEN {
        problems.push(format!("must be no more than {MAX_NAME_LEN} characters"));
    }
    if !value.is_empty() && !is_qualified_name_part(value) {
        problems.push(format!(
            "a valid label must be an empty string or {NAME_FORMAT} (e.g. 'MyValue', or \
             'my_value', or '12345')"
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn and_matches_what_both_match() {
        let both = parse("route in (chat,echo)").and(&parse("route!=echo,tier=a"));
        assert!(both.matches_map(&labels(&[("route", "chat"), ("tier", "a")])));
        assert!(!both.matches_map(&labels(&[("route", "echo"), ("tier", "a")])));
        assert!(!both.matches_map(&labels(&[("route", "chat")])));
        assert_eq!(parse("a=1").and(&Selector::everything()), parse("a=1"));
        assert_eq!(Selector::everything().and(&parse("a=1")), parse("a=1"));
    }

    #[test]
    fn label_selectors_become_selectors() {
        let s: LabelSelector = serde_json::from_value(serde_json::json!({
            "matchLabels": {"app": "ws"},
            "matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["a", "b"]},
                {"key": "canary", "operator": "DoesNotExist"},
            ],
        }))
        .expect("selector");
        let sel = Selector::from_label_selector(&s).expect("usable");
        let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert!(sel.matches_map(&labels(&[("app", "ws"), ("tier", "b")])));
        assert!(!sel.matches_map(&labels(&[("app", "ws"), ("tier", "c")])));
        assert!(!sel.matches_map(&labels(&[("app", "ws"), ("tier", "a"), ("canary", "1")])));
        let bad: LabelSelector = serde_json::from_value(serde_json::json!({
            "matchExpressions": [{"key": "x", "operator": "Gt", "values": ["1"]}],
        }))
        .expect("selector");
        assert!(Selector::from_label_selector(&bad).is_err());
    }

    use proptest::prelude::*;
    use serde_json::json;

    fn parse(input: &str) -> Selector {
        Selector::parse(input).unwrap_or_else(|e| panic!("{input:?} should parse: {e}"))
    }

    fn req(key: &str, operator: Operator, values: &[&str]) -> Requirement {
        Requirement {
            key: key.to_owned(),
            operator,
            values: values.iter().map(|v| (*v).to_owned()).collect(),
        }
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    use Operator::{
        DoesNotExist, DoubleEquals, Equals, Exists, GreaterThan, In, LessThan, NotEquals, NotIn,
    };

    #[test]
    fn go_valid_selectors_parse_and_print_back_without_their_spaces() {
        // TestSelectorParse's good strings: String() equals the input with spaces removed.
        for input in [
            "x=a,y=b,z=c",
            "",
            "x!=a,y=b",
            "x=",
            "x= ",
            "x=,z= ",
            "x= ,z= ",
            "!x",
            "x>1",
            "x>1,z<5",
            "x",
            "x==a",
            " x = a , y == b ",
        ] {
            assert_eq!(
                parse(input).to_string(),
                input.replace(' ', ""),
                "input {input:?}"
            );
        }
    }

    #[test]
    fn invalid_selectors_are_rejected() {
        let long_name = "a".repeat(64);
        let long_prefix = format!("{}/x", "a".repeat(254));
        let long_value = format!("x={}", "v".repeat(64));
        let long_key_req = format!("{long_name}=a");
        let cases: Vec<&str> = vec![
            // TestSelectorParse's bad strings.
            "x=a||y=b",
            "x==a==b",
            "!x=a",
            "x<a",
            // TestSetSelectorParser's invalid ones.
            "x,,y",
            ",x,y",
            "x nott in (y)",
            "a in (xyz),",
            "a in (xyz)b notin ()",
            "a in (xyz abc)",
            "a notin(",
            "a (",
            "(",
            // More syntax errors.
            "x in (a",
            "x in (a,",
            "x in a",
            "x in (a)(b)",
            "=a",
            "x,",
            ",",
            "!",
            "!!x",
            "!x in (a)",
            "x y",
            "x=(a)",
            "x=a=b",
            "x=a b",
            ")",
            "x in (,,)",
            "x in (a,,)",
            "x in ((a))",
            "x in (a=b)",
            // Keys.
            &long_key_req,
            &long_prefix,
            "Example.com/x",
            "a/b/c",
            "/x",
            "x/",
            "-x",
            "x-",
            "x.",
            "_x=a",
            "x!y",
            "a b/c",
            "ключ=a",
            "x\u{0}=a",
            // Values.
            &long_value,
            "x=-a",
            "x=a-",
            "x=a b c",
            "x in (a,-b)",
            "x notin (a,b_)",
            "x=wert✓",
            // Integer operands.
            "x>",
            "x<",
            "x>-1",
            "x>+1",
            "x>1.5",
            "x>1e3",
            "x<99999999999999999999",
        ];
        for input in cases {
            assert!(
                Selector::parse(input).is_err(),
                "{input:?} should be rejected, got {:?}",
                Selector::parse(input)
            );
        }
    }

    #[test]
    fn error_messages_name_the_offending_token_and_its_column() {
        let cases: &[(&str, &str)] = &[
            (
                "x==a==b",
                "unable to parse requirement: found '==' at column 5, expected: ',' or end of string",
            ),
            (
                "!x=a",
                "unable to parse requirement: found '=' at column 3, expected: ',' or end of string",
            ),
            (
                "x in (a",
                "unable to parse requirement: found end of string at column 8, expected: ',' or ')'",
            ),
            (
                "=a",
                "unable to parse requirement: found '=' at column 1, expected: '!', identifier or end of string",
            ),
            (
                "x,",
                "unable to parse requirement: found end of string at column 3, expected: '!' or identifier after ','",
            ),
            (
                "x y",
                "unable to parse requirement: found 'y' at column 3, expected: in, notin, =, ==, !=, >, <",
            ),
            (
                "a notin(",
                "unable to parse requirement: found end of string at column 9, expected: ',', ')' or identifier",
            ),
            (
                "x in a",
                "unable to parse requirement: found 'a' at column 6, expected: '('",
            ),
            (
                "x=(a)",
                "unable to parse requirement: found '(' at column 3, expected: value",
            ),
            (
                "x in (a,,)",
                "unable to parse requirement: found ')' at column 10, expected: ',' or identifier",
            ),
            (
                "x=a||y=b",
                "invalid value \"a||y\" for label key \"x\" at column 3: a valid label must be an \
                 empty string or must consist of alphanumeric characters, '-', '_' or '.', and \
                 must start and end with an alphanumeric character (e.g. 'MyValue', or \
                 'my_value', or '12345')",
            ),
            (
                "x<a",
                "invalid value \"a\" for label key \"x\" at column 3: for '>' and '<' operators, \
                 the value must be a 64-bit integer",
            ),
            (
                "x>",
                "invalid value \"\" for label key \"x\" at column 3: for '>' and '<' operators, \
                 the value must be a 64-bit integer",
            ),
            (
                "a=1, Ab.c/d=2",
                "invalid label key \"Ab.c/d\" at column 6: prefix part a lowercase RFC 1123 \
                 subdomain must consist of lower case alphanumeric characters, '-' or '.', and \
                 must start and end with an alphanumeric character (e.g. 'example.com')",
            ),
            (
                "/",
                "invalid label key \"/\" at column 1: prefix part must be non-empty; name part \
                 must be non-empty",
            ),
            (
                "é=1,ü",
                "invalid label key \"é\" at column 1: name part must consist of alphanumeric \
                 characters, '-', '_' or '.', and must start and end with an alphanumeric \
                 character (e.g. 'MyName', 'my.name', or '123-abc')",
            ),
            (
                "a=b,ü in (x y)",
                "invalid label key \"ü\" at column 5: name part must consist of alphanumeric \
                 characters, '-', '_' or '.', and must start and end with an alphanumeric \
                 character (e.g. 'MyName', 'my.name', or '123-abc')",
            ),
            (
                "ab=é,c in (x y)",
                "invalid value \"é\" for label key \"ab\" at column 4: a valid label must be an \
                 empty string or must consist of alphanumeric characters, '-', '_' or '.', and \
                 must start and end with an alphanumeric character (e.g. 'MyValue', or \
                 'my_value', or '12345')",
            ),
            (
                "x in (a, b c)",
                "unable to parse requirement: found 'c' at column 12, expected: ',' or ')'",
            ),
            (
                "x in (-a, b c)",
                "unable to parse requirement: found 'c' at column 13, expected: ',' or ')'",
            ),
            (
                "x in (a, -b)",
                "invalid value \"-b\" for label key \"x\" at column 10: a valid label must be an \
                 empty string or must consist of alphanumeric characters, '-', '_' or '.', and \
                 must start and end with an alphanumeric character (e.g. 'MyValue', or \
                 'my_value', or '12345')",
            ),
        ];
        for (input, want) in cases {
            let err = Selector::parse(input).expect_err(input);
            assert_eq!(err.to_string(), *want, "input {input:?}");
        }
    }

    #[test]
    fn errors_carry_structured_details() {
        assert_eq!(
            Selector::parse("x in (a"),
            Err(Error::Syntax {
                found: None,
                expected: "',' or ')'",
                column: 8,
            })
        );
        assert!(matches!(
            Selector::parse(&"k".repeat(64)),
            Err(Error::InvalidKey { column: 1, ref reason, .. })
                if reason == "name part must be no more than 63 characters"
        ));
        assert!(matches!(
            Selector::parse(&format!("x = {}", "v".repeat(64))),
            Err(Error::InvalidValue { column: 5, ref key, ref reason, .. })
                if key == "x" && reason == "must be no more than 63 characters"
        ));
    }

    #[test]
    fn set_based_selectors_parse_into_the_requirements_go_builds() {
        // TestSetSelectorParser's valid cases, plus a few more.
        let cases: Vec<(&str, Vec<Requirement>)> = vec![
            ("", vec![]),
            ("\rx", vec![req("x", Exists, &[])]),
            (
                "this-is-a-dns.domain.com/key-with-dash",
                vec![req("this-is-a-dns.domain.com/key-with-dash", Exists, &[])],
            ),
            (
                "this-is-another-dns.domain.com/key-with-dash in (so,what)",
                vec![req(
                    "this-is-another-dns.domain.com/key-with-dash",
                    In,
                    &["so", "what"],
                )],
            ),
            (
                "0.1.2.domain/99 notin (10.10.100.1, tick.tack.clock)",
                vec![req(
                    "0.1.2.domain/99",
                    NotIn,
                    &["10.10.100.1", "tick.tack.clock"],
                )],
            ),
            ("foo  in\t (abc)", vec![req("foo", In, &["abc"])]),
            ("x notin\n (abc)", vec![req("x", NotIn, &["abc"])]),
            (
                "x  notin\t\t\t(abc,def)",
                vec![req("x", NotIn, &["abc", "def"])],
            ),
            ("x in (abc,def)", vec![req("x", In, &["abc", "def"])]),
            ("x in (abc,)", vec![req("x", In, &["", "abc"])]),
            ("x in ()", vec![req("x", In, &[""])]),
            (
                "x notin (abc,,def),bar,z in (),w",
                vec![
                    req("bar", Exists, &[]),
                    req("w", Exists, &[]),
                    req("x", NotIn, &["", "abc", "def"]),
                    req("z", In, &[""]),
                ],
            ),
            (
                "x,y in (a)",
                vec![req("x", Exists, &[]), req("y", In, &["a"])],
            ),
            ("x=a", vec![req("x", Equals, &["a"])]),
            ("x>1", vec![req("x", GreaterThan, &["1"])]),
            ("x<7", vec![req("x", LessThan, &["7"])]),
            (
                "x=a,y!=b",
                vec![req("x", Equals, &["a"]), req("y", NotEquals, &["b"])],
            ),
            (
                "x=a,y!=b,z in (h,i,j)",
                vec![
                    req("x", Equals, &["a"]),
                    req("y", NotEquals, &["b"]),
                    req("z", In, &["h", "i", "j"]),
                ],
            ),
            ("x notin ( )", vec![req("x", NotIn, &[""])]),
            ("x notin (, a)", vec![req("x", NotIn, &["", "a"])]),
            ("a ", vec![req("a", Exists, &[])]),
            (
                "a in (x,y,notin, z,in)",
                vec![req("a", In, &["in", "notin", "x", "y", "z"])],
            ),
            ("x in (b,a,b)", vec![req("x", In, &["a", "b"])]),
            ("x==y", vec![req("x", DoubleEquals, &["y"])]),
            ("x=", vec![req("x", Equals, &[""])]),
            ("x>007", vec![req("x", GreaterThan, &["007"])]),
        ];
        for (input, want) in cases {
            assert_eq!(
                parse(input).requirements(),
                want.as_slice(),
                "input {input:?}"
            );
        }
    }

    #[test]
    fn go_value_list_quirks_are_reproduced() {
        let cases: &[(&str, Option<&[&str]>)] = &[
            ("x in ()", Some(&[""])),
            ("x in (,)", Some(&[""])),
            ("x in (a,)", Some(&["", "a"])),
            ("x in (,a)", Some(&["", "a"])),
            ("x in (a,,b)", Some(&["", "a", "b"])),
            ("x in (,,a)", Some(&["", "a"])),
            ("x in (,,,)", Some(&[""])),
            ("x in (a,,,b)", Some(&["", "a", "b"])),
            ("x in (a,,,)", Some(&["", "a"])),
            ("x in (,,)", None),
            ("x in (a,,)", None),
        ];
        for (input, want) in cases {
            let got = Selector::parse(input)
                .ok()
                .map(|s| s.requirements()[0].values.clone());
            let want = want.map(|v| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>());
            assert_eq!(got, want, "input {input:?}");
        }
    }

    #[test]
    fn keywords_are_plain_identifiers_outside_the_operator_position() {
        assert_eq!(
            parse("in in (in,notin)").requirements(),
            [req("in", In, &["in", "notin"])]
        );
        assert_eq!(
            parse("notin=in").requirements(),
            [req("notin", Equals, &["in"])]
        );
        assert_eq!(parse("!in").requirements(), [req("in", DoesNotExist, &[])]);
        assert_eq!(parse("notin").requirements(), [req("notin", Exists, &[])]);
        assert!(parse("notin=in").matches_map(&labels(&[("notin", "in")])));
    }

    #[test]
    fn empty_and_whitespace_only_strings_give_the_selector_that_matches_everything() {
        for input in ["", " ", "\t \r\n"] {
            let sel = parse(input);
            assert!(sel.is_empty(), "input {input:?}");
            assert_eq!(sel, Selector::everything());
            assert!(sel.matches_map(&labels(&[("x", "y")])));
            assert!(sel.matches_map(&BTreeMap::new()));
            assert_eq!(sel.to_string(), "");
        }
        assert!(!parse("x").is_empty());
    }

    #[test]
    fn requirements_are_sorted_by_key_and_equal_keys_keep_their_order() {
        assert_eq!(parse("x=a,a=x").to_string(), parse("a=x,x=a").to_string());
        assert_eq!(parse("x=a,a=x").to_string(), "a=x,x=a");
        assert_eq!(parse("z,z!=a,b").to_string(), "b,z,z!=a");
        assert_eq!(parse("z!=a,z,b").to_string(), "b,z!=a,z");
        assert_eq!(parse("b.io/x,a,B").to_string(), "B,a,b.io/x");
    }

    #[test]
    fn display_gives_the_go_canonical_form() {
        // TestToString's valid vectors, written as selector strings in another order or spacing.
        let cases: &[(&str, &str)] = &[
            (
                "z, y notin (jkl), x in (def,abc)",
                "x in (abc,def),y notin (jkl),z",
            ),
            (
                "x notin (def, abc),y != jkl,!z",
                "x notin (abc,def),y!=jkl,!z",
            ),
            (
                "x notin (abc),y in (mno,jkl),z notin ()",
                "x notin (abc),y in (jkl,mno),z notin ()",
            ),
            ("x = abc, y == jkl, z != a, z", "x=abc,y==jkl,z!=a,z"),
            ("y<8, x>2, z", "x>2,y<8,z"),
            ("x in (,b)", "x in (,b)"),
            ("x=", "x="),
            ("! a", "!a"),
        ];
        for (input, want) in cases {
            let sel = parse(input);
            assert_eq!(sel.to_string(), *want, "input {input:?}");
            assert_eq!(parse(want), sel, "canonical form of {input:?} reparses");
        }
    }

    #[test]
    fn from_str_is_parse() {
        let sel: Selector = "tier in (a,b),app=chat".parse().expect("valid selector");
        assert_eq!(sel, parse("tier in (a,b),app=chat"));
        assert_eq!(sel.to_string(), "app=chat,tier in (a,b)");
        assert!("x in (".parse::<Selector>().is_err());
    }

    /// A selector, a label set, and whether the first matches the second.
    type MatchCase = (&'static str, &'static [(&'static str, &'static str)], bool);

    #[test]
    fn matching_follows_the_go_truth_table() {
        let cases: &[MatchCase] = &[
            // TestSelectorMatches.
            ("", &[("x", "y")], true),
            ("x=y", &[("x", "y")], true),
            ("x=y,z=w", &[("x", "y"), ("z", "w")], true),
            ("x!=y,z!=w", &[("x", "z"), ("z", "a")], true),
            ("notin=in", &[("notin", "in")], true),
            ("x", &[("x", "z")], true),
            ("!x", &[("y", "z")], true),
            ("x>1", &[("x", "2")], true),
            ("x<1", &[("x", "0")], true),
            ("x=z", &[], false),
            ("x=y", &[("x", "z")], false),
            ("x=y,z=w", &[("x", "w"), ("z", "w")], false),
            ("x!=y,z!=w", &[("x", "z"), ("z", "w")], false),
            ("x", &[("y", "z")], false),
            ("!x", &[("x", "z")], false),
            ("x>1", &[("x", "0")], false),
            ("x<1", &[("x", "2")], false),
            ("foo=bar", &[("foo", "bar"), ("baz", "blah")], true),
            ("baz=blah", &[("foo", "bar"), ("baz", "blah")], true),
            ("foo=bar,baz=blah", &[("foo", "bar"), ("baz", "blah")], true),
            ("foo=blah", &[("foo", "bar"), ("baz", "blah")], false),
            ("baz=bar", &[("foo", "bar"), ("baz", "blah")], false),
            (
                "foo=bar,foobar=bar,baz=blah",
                &[("foo", "bar"), ("baz", "blah")],
                false,
            ),
            // TestRequirementSelectorMatching.
            (
                "x in (foo),y notin (alpha)",
                &[("x", "foo"), ("y", "baz")],
                true,
            ),
            (
                "x in (foo),y in (alpha)",
                &[("x", "foo"), ("y", "baz")],
                false,
            ),
            ("x notin (),y", &[("y", "")], true),
            ("!x,y", &[("y", "")], true),
            ("x notin (),!y", &[("y", "")], false),
            ("x in ()", &[("y", "baz")], false),
            ("z>1", &[("z", "2")], true),
            ("z>1", &[("z", "v2")], false),
            // More: absent labels, empty values, integer edge cases.
            ("x!=a", &[], true),
            ("x notin (a,b)", &[], true),
            ("x notin (a,b)", &[("x", "b")], false),
            ("x notin (a,b)", &[("x", "c")], true),
            ("x in (a,b)", &[("x", "b")], true),
            ("x in (a,b)", &[], false),
            ("x in ()", &[("x", "")], true),
            ("x=", &[("x", "")], true),
            ("x=", &[], false),
            ("x==a", &[("x", "a")], true),
            ("x", &[("x", "")], true),
            ("x>1", &[], false),
            ("x<1", &[], false),
            ("x>1", &[("x", "1")], false),
            ("x<1", &[("x", "-5")], true),
            ("x>1", &[("x", "+5")], true),
            ("x>1", &[("x", "007")], true),
            ("x<1", &[("x", "")], false),
            ("x<1", &[("x", " 0")], false),
            ("x<1", &[("x", "0.5")], false),
            ("x>1", &[("x", "99999999999999999999")], false),
            (
                "x<9223372036854775807",
                &[("x", "-9223372036854775808")],
                true,
            ),
            ("x>0,x<10", &[("x", "5")], true),
            ("x>0,x<10", &[("x", "10")], false),
            ("a.io/b=c", &[("a.io/b", "c")], true),
            ("a.io/b=c", &[("b", "c")], false),
        ];
        for (input, set, want) in cases {
            assert_eq!(
                parse(input).matches_map(&labels(set)),
                *want,
                "{input:?} against {set:?}"
            );
        }
    }

    #[test]
    fn matches_pairs_and_matches_map_and_matches_agree() {
        let sel = parse("app=chat,tier in (a,b),!canary");
        let set = labels(&[("app", "chat"), ("tier", "b")]);
        let pairs: Vec<(String, String)> = set.clone().into_iter().collect();
        assert!(sel.matches_map(&set));
        assert!(sel.matches_pairs(&pairs));
        assert!(sel.matches(|k| set.get(k).map(String::as_str)));
        let mut with_canary = pairs.clone();
        with_canary.push(("canary".to_owned(), "yes".to_owned()));
        assert!(!sel.matches_pairs(&with_canary));
    }

    #[test]
    fn to_label_selector_has_the_shape_go_parse_to_label_selector_gives() {
        let cases: Vec<(&str, serde_json::Value)> = vec![
            ("", serde_json::Value::Null),
            ("app=chat", json!({"matchLabels": {"app": "chat"}})),
            (
                "app==chat,tier=a",
                json!({"matchLabels": {"app": "chat", "tier": "a"}}),
            ),
            (
                "tier in (b,a)",
                json!({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]}]}),
            ),
            (
                "tier notin (a)",
                json!({"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["a"]}]}),
            ),
            (
                "tier!=a",
                json!({"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["a"]}]}),
            ),
            (
                "canary",
                json!({"matchExpressions": [{"key": "canary", "operator": "Exists"}]}),
            ),
            (
                "!canary",
                json!({"matchExpressions": [{"key": "canary", "operator": "DoesNotExist"}]}),
            ),
            (
                "x in ()",
                json!({"matchExpressions": [{"key": "x", "operator": "In", "values": [""]}]}),
            ),
            (
                "tier in (a,b),app=chat,!canary,z",
                json!({
                    "matchLabels": {"app": "chat"},
                    "matchExpressions": [
                        {"key": "canary", "operator": "DoesNotExist"},
                        {"key": "tier", "operator": "In", "values": ["a", "b"]},
                        {"key": "z", "operator": "Exists"},
                    ],
                }),
            ),
            ("x>1", json!({})),
            ("x>1,y<2,app=chat", json!({"matchLabels": {"app": "chat"}})),
            ("x=a,x=b", json!({"matchLabels": {"x": "b"}})),
        ];
        for (input, want) in cases {
            let got = serde_json::to_value(parse(input).to_label_selector()).expect("serializes");
            assert_eq!(got, want, "input {input:?}");
        }
    }

    #[test]
    fn keys_and_values_are_accepted_up_to_their_length_limits() {
        let name63 = "n".repeat(63);
        let prefix253 = format!("{}.{}", "p".repeat(126), "q".repeat(126));
        assert_eq!(prefix253.len(), 253);
        assert!(Selector::parse(&name63).is_ok());
        assert!(Selector::parse(&"n".repeat(64)).is_err());
        assert!(Selector::parse(&format!("{prefix253}/{name63}")).is_ok());
        assert!(Selector::parse(&format!("p{prefix253}/{name63}")).is_err());
        assert!(Selector::parse(&format!("x={}", "v".repeat(63))).is_ok());
        assert!(Selector::parse(&format!("x in (a,{})", "v".repeat(64))).is_err());
    }

    #[test]
    fn greater_and_less_than_take_64_bit_integer_operands() {
        assert_eq!(
            parse("x>9223372036854775807").requirements(),
            [req("x", GreaterThan, &["9223372036854775807"])]
        );
        assert!(Selector::parse("x>9223372036854775808").is_err());
        assert!(
            !parse("x>9223372036854775807").matches_map(&labels(&[("x", "9223372036854775807")]))
        );
        assert!(parse("x<0").matches_map(&labels(&[("x", "-9223372036854775808")])));
    }

    // ---- property tests ----------------------------------------------------------------------

    fn name_strategy() -> BoxedStrategy<String> {
        prop_oneof![
            8 => "[A-Za-z0-9]([-A-Za-z0-9_.]{0,10}[A-Za-z0-9])?",
            1 => Just("in".to_owned()),
            1 => Just("notin".to_owned()),
        ]
        .boxed()
    }

    fn key_strategy() -> BoxedStrategy<String> {
        (
            proptest::option::of(
                "[a-z0-9]([-a-z0-9]{0,4}[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]{0,4}[a-z0-9])?){0,2}",
            ),
            name_strategy(),
        )
            .prop_map(|(prefix, name)| match prefix {
                Some(p) => format!("{p}/{name}"),
                None => name,
            })
            .boxed()
    }

    fn value_strategy() -> BoxedStrategy<String> {
        prop_oneof![
            1 => Just(String::new()),
            1 => Just("in".to_owned()),
            6 => "[A-Za-z0-9]([-A-Za-z0-9_.]{0,8}[A-Za-z0-9])?",
        ]
        .boxed()
    }

    /// A valid requirement with normalised values, built from the given key and value strategies.
    fn requirement_strategy(
        key: impl Strategy<Value = String> + Clone,
        value: impl Strategy<Value = String> + Clone,
        integer: impl Strategy<Value = String> + Clone,
    ) -> impl Strategy<Value = Requirement> {
        let single = |op: Operator| {
            (key.clone(), value.clone()).prop_map(move |(k, v)| Requirement {
                key: k,
                operator: op,
                values: vec![v],
            })
        };
        let set = |op: Operator| {
            (key.clone(), proptest::collection::vec(value.clone(), 1..4)).prop_map(
                move |(k, mut vs)| {
                    vs.sort();
                    vs.dedup();
                    Requirement {
                        key: k,
                        operator: op,
                        values: vs,
                    }
                },
            )
        };
        let unary = |op: Operator| {
            key.clone().prop_map(move |k| Requirement {
                key: k,
                operator: op,
                values: Vec::new(),
            })
        };
        let compare = |op: Operator| {
            (key.clone(), integer.clone()).prop_map(move |(k, n)| Requirement {
                key: k,
                operator: op,
                values: vec![n],
            })
        };
        prop_oneof![
            single(Equals),
            single(DoubleEquals),
            single(NotEquals),
            set(In),
            set(NotIn),
            unary(Exists),
            unary(DoesNotExist),
            compare(GreaterThan),
            compare(LessThan),
        ]
    }

    fn selector_from(requirements: Vec<Requirement>) -> Selector {
        Selector::from_requirements(requirements)
    }

    fn selector_strategy() -> impl Strategy<Value = Selector> {
        let integer = prop_oneof![
            any::<u64>().prop_map(|n| (n >> 1).to_string()),
            (0u32..1000).prop_map(|n| format!("{n:03}")),
        ];
        proptest::collection::vec(
            requirement_strategy(key_strategy(), value_strategy(), integer),
            0..5,
        )
        .prop_map(selector_from)
    }

    /// Selectors over a handful of keys and values, so that label sets often hit them.
    fn small_selector_strategy() -> impl Strategy<Value = Selector> {
        let key = prop::sample::select(vec!["a", "b", "c"]).prop_map(str::to_owned);
        let value = prop::sample::select(vec!["", "1", "2", "10", "v"]).prop_map(str::to_owned);
        let integer = prop::sample::select(vec!["0", "1", "2", "10"]).prop_map(str::to_owned);
        proptest::collection::vec(requirement_strategy(key, value, integer), 0..4)
            .prop_map(selector_from)
    }

    fn small_labels_strategy() -> impl Strategy<Value = BTreeMap<String, String>> {
        proptest::collection::btree_map(
            prop::sample::select(vec!["a", "b", "c", "d"]).prop_map(str::to_owned),
            prop::sample::select(vec!["", "1", "2", "10", "-3", "+2", "v", "x1"])
                .prop_map(str::to_owned),
            0..4,
        )
    }

    /// The selector written with `ws` around every token.
    fn render_spaced(sel: &Selector, ws: &str) -> String {
        let parts: Vec<String> = sel
            .requirements()
            .iter()
            .map(|r| {
                let k = &r.key;
                let vs = r.values.join(&format!("{ws},{ws}"));
                match r.operator {
                    Exists => format!("{ws}{k}{ws}"),
                    DoesNotExist => format!("{ws}!{ws}{k}{ws}"),
                    Equals => format!("{ws}{k}{ws}={ws}{vs}{ws}"),
                    DoubleEquals => format!("{ws}{k}{ws}=={ws}{vs}{ws}"),
                    NotEquals => format!("{ws}{k}{ws}!={ws}{vs}{ws}"),
                    In => format!("{ws}{k}{ws}in{ws}({ws}{vs}{ws}){ws}"),
                    NotIn => format!("{ws}{k}{ws}notin{ws}({ws}{vs}{ws}){ws}"),
                    GreaterThan => format!("{ws}{k}{ws}>{ws}{vs}{ws}"),
                    LessThan => format!("{ws}{k}{ws}<{ws}{vs}{ws}"),
                }
            })
            .collect();
        parts.join(",")
    }

    /// Straightforward evaluation of one requirement, written independently of `matches`.
    fn reference_match(r: &Requirement, set: &BTreeMap<String, String>) -> bool {
        let value = set.get(&r.key);
        match r.operator {
            Equals | DoubleEquals => value == r.values.first(),
            In => value.is_some_and(|v| r.values.contains(v)),
            NotEquals => value != r.values.first(),
            NotIn => value.is_none_or(|v| !r.values.contains(v)),
            Exists => set.contains_key(&r.key),
            DoesNotExist => !set.contains_key(&r.key),
            GreaterThan | LessThan => {
                let label: Option<i64> = value.and_then(|v| v.parse().ok());
                let bound: i64 = r.values[0].parse().expect("generated bound is an integer");
                match (label, r.operator) {
                    (Some(l), GreaterThan) => l > bound,
                    (Some(l), _) => l < bound,
                    (None, _) => false,
                }
            }
        }
    }

    /// Evaluates a `metav1.LabelSelector` JSON value the way the API server does.
    fn label_selector_matches(json: &serde_json::Value, set: &BTreeMap<String, String>) -> bool {
        let labels_ok = json["matchLabels"]
            .as_object()
            .into_iter()
            .flatten()
            .all(|(k, v)| set.get(k).map(String::as_str) == v.as_str());
        let expressions_ok = json["matchExpressions"]
            .as_array()
            .into_iter()
            .flatten()
            .all(|e| {
                let value = e["key"].as_str().and_then(|k| set.get(k));
                let listed = |v: &String| {
                    e["values"]
                        .as_array()
                        .is_some_and(|vs| vs.iter().any(|x| x.as_str() == Some(v)))
                };
                match e["operator"].as_str() {
                    Some("In") => value.is_some_and(listed),
                    Some("NotIn") => !value.is_some_and(listed),
                    Some("Exists") => value.is_some(),
                    Some("DoesNotExist") => value.is_none(),
                    _ => false,
                }
            });
        labels_ok && expressions_ok
    }

    fn token_soup() -> impl Strategy<Value = String> {
        let fragment = prop::sample::select(vec![
            "a", "b/c", "in", "notin", "(", ")", ",", "=", "==", "!", "!=", ">", "<", " ", "\t",
            "1", "-", ".", "é", "/", "",
        ]);
        proptest::collection::vec(fragment, 0..14).prop_map(|parts| parts.concat())
    }

    #[test]
    fn a_selector_past_the_limits_is_refused_as_too_large() {
        let many: Vec<String> = (0..7000).map(|i| format!("k{i}=v")).collect();
        assert_eq!(
            Selector::parse(&many.join(",")),
            Err(Error::TooLarge {
                what: "requirements",
                limit: MAX_REQUIREMENTS
            })
        );
        let at_limit: Vec<String> = (0..MAX_REQUIREMENTS).map(|i| format!("k{i}!=v")).collect();
        assert!(Selector::parse(&at_limit.join(",")).is_ok());
        let values: Vec<String> = (0..=MAX_VALUES).map(|i| format!("v{i}")).collect();
        let big_in = format!("k in ({})", values.join(","));
        assert_eq!(
            Selector::parse(&big_in),
            Err(Error::TooLarge {
                what: "values",
                limit: MAX_VALUES
            })
        );
        let ok_in = format!("k in ({})", values[..MAX_VALUES].join(","));
        let sel = Selector::parse(&ok_in).expect("at the limit");
        let labels: BTreeMap<String, String> = [("k".to_owned(), "v4095".to_owned())].into();
        assert!(sel.matches_map(&labels));
    }

    #[test]
    fn requirements_on_one_key_all_hold() {
        let sel = Selector::parse("a in (1,2,3),a in (2,3,4),a!=3,a>1,a<9").expect("valid");
        let at = |v: &str| sel.matches_map(&[("a".to_owned(), v.to_owned())].into());
        assert!(at("2"));
        assert!(!at("3"), "refused by !=");
        assert!(!at("1"), "not in the second set");
        assert!(!at("4"), "not in the first set");
        assert!(!sel.matches_map(&BTreeMap::new()), "a is required");
        let absent = Selector::parse("!a,b notin (x)").expect("valid");
        assert!(absent.matches_map(&BTreeMap::new()));
        assert!(!absent.matches_map(&[("a".to_owned(), String::new())].into()));
        assert!(!absent.matches_map(&[("b".to_owned(), "x".to_owned())].into()));
    }

    fn check_parse_result(input: &str) -> Result<(), TestCaseError> {
        match Selector::parse(input) {
            Ok(sel) => {
                let printed = sel.to_string();
                prop_assert_eq!(Selector::parse(&printed), Ok(sel), "printed {:?}", printed);
            }
            Err(err) => {
                let column = match &err {
                    Error::Syntax { column, .. }
                    | Error::InvalidKey { column, .. }
                    | Error::InvalidValue { column, .. } => *column,
                    Error::TooLarge { .. } => 1,
                };
                prop_assert!(
                    column >= 1 && column <= input.chars().count() + 1,
                    "{}",
                    err
                );
                prop_assert!(!err.to_string().is_empty());
            }
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn parse_never_panics_and_accepted_input_reparses_from_its_display(input in any::<String>()) {
            check_parse_result(&input)?;
        }

        #[test]
        fn token_soup_never_panics_and_accepted_input_reparses_from_its_display(input in token_soup()) {
            check_parse_result(&input)?;
        }

        #[test]
        fn generated_selectors_round_trip_through_display(sel in selector_strategy()) {
            let printed = sel.to_string();
            prop_assert_eq!(Selector::parse(&printed), Ok(sel), "printed {:?}", printed);
        }

        #[test]
        fn generated_selectors_parse_from_a_spaced_out_rendering(
            sel in selector_strategy(),
            ws in prop::sample::select(vec![" ", "\t", "  ", " \t\r\n"]),
        ) {
            let spaced = render_spaced(&sel, ws);
            prop_assert_eq!(Selector::parse(&spaced), Ok(sel), "spaced {:?}", spaced);
        }

        #[test]
        fn matching_agrees_with_a_reference_evaluation(
            sel in small_selector_strategy(),
            set in small_labels_strategy(),
        ) {
            let want = sel.requirements().iter().all(|r| reference_match(r, &set));
            let pairs: Vec<(String, String)> = set.clone().into_iter().collect();
            prop_assert_eq!(sel.matches_map(&set), want, "{} against {:?}", sel, set);
            prop_assert_eq!(sel.matches_pairs(&pairs), want);
        }

        #[test]
        fn the_label_selector_form_selects_the_same_sets_without_gt_lt_or_duplicate_equals(
            sel in small_selector_strategy(),
            set in small_labels_strategy(),
        ) {
            let reqs = sel.requirements();
            prop_assume!(!reqs.iter().any(|r| matches!(r.operator, GreaterThan | LessThan)));
            let equals_keys: Vec<&str> = reqs
                .iter()
                .filter(|r| matches!(r.operator, Equals | DoubleEquals))
                .map(|r| r.key.as_str())
                .collect();
            prop_assume!(equals_keys.windows(2).all(|w| w[0] != w[1]));
            let json = serde_json::to_value(sel.to_label_selector()).expect("serializes");
            let want = sel.matches_map(&set);
            let got = if json.is_null() { true } else { label_selector_matches(&json, &set) };
            prop_assert_eq!(got, want, "{} as {}", sel, json);
        }
    }
}
