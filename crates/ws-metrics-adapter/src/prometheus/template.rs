//! The `<< >>` query templates of prometheus-adapter's `metricsQuery` (and of `--prometheus-query`),
//! reduced to the fields they are documented with: `<<.Series>>`, `<<.LabelMatchers>>` and
//! `<<.GroupBy>>` (prometheus-adapter `docs/config.md`, "Querying"). Pure; rendered once per
//! discovered metric, not per request.

/// What a template may refer to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    /// The Prometheus series (metric) name, e.g. `http_requests_total`.
    pub series: String,
    /// Comma-separated label matchers selecting every object of the resource, e.g.
    /// `namespace!="",pod!=""`. (prometheus-adapter puts the requested objects' names here; this
    /// adapter queries all objects at once and picks them from memory.)
    pub label_matchers: String,
    /// Comma-separated labels naming the object, e.g. `namespace,pod`.
    pub group_by: String,
}

/// Why a template cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A `<<` without a closing `>>`.
    #[error("unclosed action starting at byte {0}")]
    Unclosed(usize),
    /// An action other than the supported fields.
    #[error(
        "unsupported action <<{0}>>: only <<.Series>>, <<.LabelMatchers>> and <<.GroupBy>> are supported"
    )]
    Unsupported(String),
    /// The template renders to nothing.
    #[error("the template is empty")]
    Empty,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Series,
    LabelMatchers,
    GroupBy,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Field(Field),
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    source: String,
    pieces: Vec<Piece>,
}

impl Template {
    /// Parses a template. Go's trim markers (`<<- x ->>`) and spaces inside the delimiters are
    /// accepted, as Go's `text/template` does.
    ///
    /// # Errors
    /// [`Error::Unclosed`], [`Error::Unsupported`] or [`Error::Empty`].
    pub fn parse(source: &str) -> Result<Self, Error> {
        if source.trim().is_empty() {
            return Err(Error::Empty);
        }
        let mut pieces = Vec::new();
        let mut rest = source;
        let mut offset = 0;
        while let Some(start) = rest.find("<<") {
            let Some(len) = rest[start + 2..].find(">>") else {
                return Err(Error::Unclosed(offset + start));
            };
            if start > 0 {
                pieces.push(Piece::Text(rest[..start].to_owned()));
            }
            let inner = &rest[start + 2..start + 2 + len];
            // Go's trim markers (`<<- x ->>`) only strip surrounding text; spaces are allowed.
            let action = inner
                .trim()
                .trim_start_matches('-')
                .trim_end_matches('-')
                .trim();
            let field = match action {
                ".Series" => Field::Series,
                ".LabelMatchers" => Field::LabelMatchers,
                ".GroupBy" => Field::GroupBy,
                other => return Err(Error::Unsupported(other.to_owned())),
            };
            pieces.push(Piece::Field(field));
            let consumed = start + 2 + len + 2;
            offset += consumed;
            rest = &rest[consumed..];
        }
        if !rest.is_empty() {
            pieces.push(Piece::Text(rest.to_owned()));
        }
        Ok(Self {
            source: source.to_owned(),
            pieces,
        })
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether the template uses `<<.LabelMatchers>>`.
    pub fn uses_label_matchers(&self) -> bool {
        self.pieces.contains(&Piece::Field(Field::LabelMatchers))
    }

    /// Renders the template.
    pub fn render(&self, args: &Args) -> String {
        let mut out = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::Field(Field::Series) => out.push_str(&args.series),
                Piece::Field(Field::LabelMatchers) => out.push_str(&args.label_matchers),
                Piece::Field(Field::GroupBy) => out.push_str(&args.group_by),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn pods() -> Args {
        Args {
            series: "http_requests_total".into(),
            label_matchers: r#"namespace!="",pod!="""#.into(),
            group_by: "namespace,pod".into(),
        }
    }

    #[test]
    fn config_md_example_query_renders_with_every_field() {
        // prometheus-adapter docs/config.md, "Querying".
        let t = Template::parse(
            r#"sum(rate(<<.Series>>{<<.LabelMatchers>>,container!="POD"}[2m])) by (<<.GroupBy>>)"#,
        )
        .unwrap();
        assert_eq!(
            t.render(&pods()),
            r#"sum(rate(http_requests_total{namespace!="",pod!="",container!="POD"}[2m])) by (namespace,pod)"#
        );
        assert!(t.uses_label_matchers());
    }

    #[test]
    fn spaces_and_trim_markers_inside_delimiters_are_accepted() {
        let t = Template::parse("sum by (<< .GroupBy >>) (<<- .Series ->>)").unwrap();
        assert_eq!(
            t.render(&pods()),
            "sum by (namespace,pod) (http_requests_total)"
        );
        assert!(!t.uses_label_matchers());
    }

    #[test]
    fn unsupported_and_broken_templates_are_refused_with_the_reason() {
        assert_eq!(
            Template::parse("sum(<<.LabelValuesByName>>)"),
            Err(Error::Unsupported(".LabelValuesByName".into()))
        );
        assert_eq!(Template::parse("sum(<<.Series)"), Err(Error::Unclosed(4)));
        assert_eq!(Template::parse("  "), Err(Error::Empty));
    }

    #[test]
    fn a_template_without_actions_renders_verbatim() {
        let t = Template::parse("sum by (namespace, pod) (websocket_connections_active)").unwrap();
        assert_eq!(
            t.render(&pods()),
            "sum by (namespace, pod) (websocket_connections_active)"
        );
    }
}
