//! The `rules:` section of a prometheus-adapter configuration file, and the pure step that turns
//! the series Prometheus lists for each rule's `seriesQuery` into the metrics this adapter serves
//! (discovery → association → naming → query), following prometheus-adapter's `docs/config.md`.
//!
//! Differences, on purpose: one query per served metric and resource covers every object at once
//! (`<<.LabelMatchers>>` selects all objects, `<<.GroupBy>>` is the namespace label plus the
//! object label), and resources are resolved against a built-in table instead of the cluster's
//! REST mapper (see [`RESOURCES`]).

use std::collections::{BTreeMap, BTreeSet};

use regex::Regex;
use serde::Deserialize;

use super::template::{self, Template};

/// Errors in a rules file.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read.
    #[error("reading rules file {path}: {source}")]
    ReadFailed {
        /// Path given.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not YAML of the expected shape.
    #[error("parsing rules file {path}: {source}")]
    Unparseable {
        /// Path given.
        path: String,
        /// Cause (boxed: serde-saphyr's error is large, and this one is rare).
        #[source]
        source: Box<serde_saphyr::Error>,
    },
    /// One or more rules are invalid; every problem is listed.
    #[error("invalid rules in {path}:\n  - {}", .problems.join("\n  - "))]
    InvalidRules {
        /// Path given.
        path: String,
        /// One message per problem, naming the rule by index.
        problems: Vec<String>,
    },
}

/// Result of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A prometheus-adapter configuration file. Only `rules` is read; `externalRules` and
/// `resourceRules` serve other API groups and are ignored.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct FileConfig {
    /// Custom-metrics discovery rules.
    #[serde(default, deserialize_with = "crate::config::value::null_as_default")]
    pub rules: Vec<RuleConfig>,
}

/// One rule as written (`docs/config.md`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuleConfig {
    /// Series selector passed to `/api/v1/series`.
    #[serde(default)]
    pub series_query: String,
    /// `is` / `isNot` filters on the series name.
    #[serde(default, deserialize_with = "crate::config::value::null_as_default")]
    pub series_filters: Vec<FilterConfig>,
    /// Label → resource association.
    #[serde(default)]
    pub resources: ResourcesConfig,
    /// Naming of the served metric.
    #[serde(default)]
    pub name: NameConfig,
    /// Query template.
    #[serde(default)]
    pub metrics_query: String,
}

/// A series-name filter: exactly one of `is` and `isNot`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FilterConfig {
    /// Keep series whose name matches.
    pub is: Option<String>,
    /// Keep series whose name does not match.
    pub is_not: Option<String>,
}

/// `resources:` of a rule.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ResourcesConfig {
    /// Label name → group-resource.
    #[serde(default, deserialize_with = "crate::config::value::null_as_default")]
    pub overrides: BTreeMap<String, GroupResourceConfig>,
    /// Label pattern with `<<.Group>>` and `<<.Resource>>`, e.g. `kube_<<.Group>>_<<.Resource>>`.
    #[serde(default)]
    pub template: Option<String>,
}

/// A group-resource as written in an override (`{group: "apps", resource: "deployment"}`).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct GroupResourceConfig {
    /// API group; empty for the core group (and then guessed when the resource is unambiguous).
    #[serde(default)]
    pub group: String,
    /// Resource, singular or plural.
    pub resource: String,
}

/// `name:` of a rule.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct NameConfig {
    /// Regex over the series name; default `.*`.
    #[serde(default)]
    pub matches: Option<String>,
    /// Replacement with `$1`/`${1}`; default `$0` (no group) or `$1` (one group).
    #[serde(default, rename = "as")]
    pub as_: Option<String>,
}

// The resource table moved to the store: the API resolves paths against it without importing
// this module.
pub use crate::store::resource::{
    RESOURCES, ResourceInfo, namespaces, pods, resolve, resolve_path,
};

/// A validated rule.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Position in the file (0-based), for messages.
    pub index: usize,
    /// Series selector for `/api/v1/series`.
    pub series_query: String,
    filters: Vec<(bool, Regex)>,
    overrides: Vec<(String, &'static ResourceInfo)>,
    /// Label template as a regex with `group` / `resource` captures.
    template: Option<Regex>,
    name_matches: Regex,
    name_as: String,
    /// The `metricsQuery` template.
    pub query: Template,
}

/// Validates every rule, listing every problem.
///
/// # Errors
/// One message per problem, naming the rule by index.
pub fn compile(config: &FileConfig) -> std::result::Result<Vec<Rule>, Vec<String>> {
    let mut problems = Vec::new();
    let mut rules = Vec::new();
    for (index, rc) in config.rules.iter().enumerate() {
        match compile_rule(index, rc) {
            Ok(rule) => rules.push(rule),
            Err(mut p) => problems.append(&mut p),
        }
    }
    if problems.is_empty() {
        Ok(rules)
    } else {
        Err(problems)
    }
}

fn compile_rule(index: usize, rc: &RuleConfig) -> std::result::Result<Rule, Vec<String>> {
    let mut problems = Vec::new();
    let at = |what: &str| format!("rules[{index}] {what}");
    if rc.series_query.trim().is_empty() {
        problems.push(at("seriesQuery: must not be empty"));
    }
    let mut filters = Vec::new();
    for (i, f) in rc.series_filters.iter().enumerate() {
        let (is, pattern) = match (&f.is, &f.is_not) {
            (Some(p), None) => (true, p),
            (None, Some(p)) => (false, p),
            _ => {
                problems.push(at(&format!(
                    "seriesFilters[{i}]: exactly one of `is` and `isNot` is required"
                )));
                continue;
            }
        };
        match Regex::new(pattern) {
            Ok(re) => filters.push((is, re)),
            Err(e) => problems.push(at(&format!("seriesFilters[{i}]: {e}"))),
        }
    }
    let mut overrides = Vec::new();
    for (label, gr) in &rc.resources.overrides {
        match resolve(&gr.group, &gr.resource) {
            Some(r) => overrides.push((label.clone(), r)),
            None => problems.push(at(&format!(
                "resources.overrides.{label}: unknown resource {:?} in group {:?} (known: {})",
                gr.resource,
                gr.group,
                RESOURCES
                    .iter()
                    .map(ResourceInfo::path)
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }
    let template = match &rc.resources.template {
        None => None,
        Some(t) => match label_template_regex(t) {
            Ok(re) => Some(re),
            Err(e) => {
                problems.push(at(&format!("resources.template {t:?}: {e}")));
                None
            }
        },
    };
    if overrides.is_empty() && template.is_none() {
        problems.push(at(
            "resources: needs `overrides` or `template` to associate series with objects",
        ));
    }
    let matches = rc.name.matches.as_deref().unwrap_or(".*");
    let (name_matches, name_as) = match Regex::new(matches) {
        Err(e) => {
            problems.push(at(&format!("name.matches: {e}")));
            (None, String::new())
        }
        Ok(re) => {
            // docs/config.md "Naming": `as` defaults to $0 without capture groups, $1 with one,
            // and must be given with more.
            let groups = re.captures_len() - 1;
            let name_as = match (&rc.name.as_, groups) {
                (Some(a), _) => a.clone(),
                (None, 0) => "$0".into(),
                (None, 1) => "$1".into(),
                (None, n) => {
                    problems.push(at(&format!(
                        "name.as: required because name.matches has {n} capture groups"
                    )));
                    String::new()
                }
            };
            (Some(re), name_as)
        }
    };
    let query = match Template::parse(&rc.metrics_query) {
        Ok(t) => Some(t),
        Err(template::Error::Empty) => {
            problems.push(at("metricsQuery: must not be empty"));
            None
        }
        Err(e) => {
            problems.push(at(&format!("metricsQuery: {e}")));
            None
        }
    };
    match (name_matches, query) {
        (Some(name_matches), Some(query)) if problems.is_empty() => Ok(Rule {
            index,
            series_query: rc.series_query.clone(),
            filters,
            overrides,
            template,
            name_matches,
            name_as,
            query,
        }),
        _ => Err(problems),
    }
}

/// The regex a label template stands for: `kube_<<.Group>>_<<.Resource>>` becomes
/// `^kube_(?P<group>.+?)_(?P<resource>.+?)$` (prometheus-adapter `pkg/naming/lbl_res.go`).
fn label_template_regex(t: &str) -> std::result::Result<Regex, String> {
    let mut out = String::from("^");
    let mut rest = t;
    let mut has_resource = false;
    while let Some(start) = rest.find("<<") {
        out.push_str(&regex::escape(&rest[..start]));
        let end = rest[start..]
            .find(">>")
            .ok_or_else(|| "unclosed <<".to_owned())?;
        let action = rest[start + 2..start + end]
            .trim()
            .trim_start_matches('-')
            .trim_end_matches('-')
            .trim();
        match action {
            ".Group" => out.push_str("(?P<group>.+?)"),
            ".Resource" => {
                has_resource = true;
                out.push_str("(?P<resource>.+?)");
            }
            other => return Err(format!("unsupported action <<{other}>>")),
        }
        rest = &rest[start + end + 2..];
    }
    out.push_str(&regex::escape(rest));
    out.push('$');
    if !has_resource {
        return Err("must include <<.Resource>>".into());
    }
    Regex::new(&out).map_err(|e| e.to_string())
}

/// One series as listed by `/api/v1/series`: its labels, `__name__` included.
pub type SeriesLabels = BTreeMap<String, String>;

/// A metric a rule serves for one resource, with the query that fetches it for every object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovered {
    /// Served metric name.
    pub metric: String,
    /// Resource it describes.
    pub resource: &'static ResourceInfo,
    /// Prometheus series name behind it.
    pub series: String,
    /// Label holding the namespace, for namespaced resources.
    pub namespace_label: Option<String>,
    /// Label holding the object's name (for `namespaces`, the namespace label).
    pub object_label: String,
    /// The rendered `metricsQuery`.
    pub promql: String,
    /// Index of the rule that produced it.
    pub rule: usize,
}

impl Rule {
    fn keeps(&self, name: &str) -> bool {
        self.filters.iter().all(|(is, re)| re.is_match(name) == *is)
            && self.name_matches.is_match(name)
    }

    /// The served name of a series name (`name.matches` / `name.as`), if the name matches.
    pub fn served_name(&self, series: &str) -> Option<String> {
        let caps = self.name_matches.captures(series)?;
        let mut out = String::new();
        caps.expand(&self.name_as, &mut out);
        (!out.is_empty()).then_some(out)
    }

    /// The resource a label stands for: an override first, then the template.
    fn resource_for_label(&self, label: &str) -> Option<&'static ResourceInfo> {
        if let Some((_, r)) = self.overrides.iter().find(|(l, _)| l == label) {
            return Some(r);
        }
        let caps = self.template.as_ref()?.captures(label)?;
        let resource = caps.name("resource")?.as_str();
        match caps.name("group") {
            // The group is sanitised in labels (`.` and `-` become `_`, lbl_res.go /
            // resource_converter.go `GroupNameSanitizer`).
            Some(g) => RESOURCES.iter().find(|r| {
                r.group.replace(['.', '-'], "_") == g.as_str()
                    && (r.singular == resource || r.plural == resource)
            }),
            None => resolve("", resource),
        }
    }

    /// What this rule serves for one listed series: one entry per resource its labels name. A
    /// namespaced resource is served only when the series also carries the namespace's label
    /// (docs/config-walkthrough.md: "all namespaced resources must be associated with a
    /// namespace").
    pub fn discover(&self, series: &SeriesLabels) -> Vec<Discovered> {
        let Some(name) = series.get("__name__") else {
            return Vec::new();
        };
        if !self.keeps(name) {
            return Vec::new();
        }
        let Some(metric) = self.served_name(name) else {
            return Vec::new();
        };
        let resources: Vec<(&String, &'static ResourceInfo)> = series
            .keys()
            .filter(|l| *l != "__name__")
            .filter_map(|l| self.resource_for_label(l).map(|r| (l, r)))
            .collect();
        let ns_label = resources
            .iter()
            .find(|(_, r)| r.is_namespaces())
            .map(|(l, _)| (*l).clone());
        let mut out = Vec::new();
        for (label, resource) in resources {
            let namespace_label = if resource.namespaced {
                match &ns_label {
                    Some(l) => Some(l.clone()),
                    None => continue,
                }
            } else {
                None
            };
            let mut group_by: Vec<&str> = Vec::new();
            if let Some(l) = &namespace_label {
                group_by.push(l);
            }
            group_by.push(label);
            let promql = self.query.render(&template::Args {
                series: name.clone(),
                label_matchers: group_by
                    .iter()
                    .map(|l| format!("{l}!=\"\""))
                    .collect::<Vec<_>>()
                    .join(","),
                group_by: group_by.join(","),
            });
            out.push(Discovered {
                metric: metric.clone(),
                resource,
                series: name.clone(),
                namespace_label,
                object_label: label.clone(),
                promql,
                rule: self.index,
            });
        }
        out
    }
}

/// What every rule serves for the series listed for it (`listed[i]` belongs to `rules[i]`): one
/// entry per (resource, metric), the first rule and series winning when two produce the same pair
/// (prometheus-adapter asks that rules be mutually exclusive; docs/config.md).
pub fn discover_all(rules: &[Rule], listed: &[Vec<SeriesLabels>]) -> Vec<Discovered> {
    let mut seen: BTreeSet<(String, String)> = BTreeSet::new();
    let mut out = Vec::new();
    for (rule, series) in rules.iter().zip(listed) {
        for s in series {
            for d in rule.discover(s) {
                if seen.insert((d.resource.path(), d.metric.clone())) {
                    out.push(d);
                }
            }
        }
    }
    out
}

/// Reads and validates a rules file.
///
/// # Errors
/// [`Error::ReadFailed`], [`Error::Unparseable`] or [`Error::InvalidRules`].
pub fn load(path: &std::path::Path) -> Result<Vec<Rule>> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::ReadFailed {
        path: path.display().to_string(),
        source,
    })?;
    parse(&text).map_err(|e| match e {
        ParseError::Yaml(source) => Error::Unparseable {
            path: path.display().to_string(),
            source,
        },
        ParseError::Rules(problems) => Error::InvalidRules {
            path: path.display().to_string(),
            problems,
        },
    })
}

/// Why rules text could not be used.
#[derive(Debug)]
pub enum ParseError {
    /// Not YAML of the expected shape.
    Yaml(Box<serde_saphyr::Error>),
    /// Rules that do not validate, one message each.
    Rules(Vec<String>),
}

/// Parses and validates rules from YAML text.
///
/// # Errors
/// [`ParseError`].
pub fn parse(text: &str) -> std::result::Result<Vec<Rule>, ParseError> {
    let config: FileConfig =
        crate::config::value::from_yaml(text).map_err(|e| ParseError::Yaml(Box::new(e)))?;
    if config.rules.is_empty() {
        return Err(ParseError::Rules(vec!["no `rules:` entries".into()]));
    }
    compile(&config).map_err(ParseError::Rules)
}
