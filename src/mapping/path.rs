//! JSONPath, compiled once.
//!
//! Most paths in a sync config are plain field access (`$.after.email`). Those
//! compile to a list of steps walked directly, with no allocation; anything
//! richer (wildcards, filters, slices, `..`) runs through jsonpath-rust.

use jsonpath_rust::parser::errors::JsonPathError;
use jsonpath_rust::parser::model::JpQuery;
use jsonpath_rust::parser::parse_json_path;
use jsonpath_rust::query::js_path_process;
use std::borrow::Cow;

use serde_json::Value;

use crate::doc::{Doc, member};

#[derive(Debug, Clone)]
pub struct JsonPath {
    source: String,
    kind: PathKind,
}

#[derive(Debug, Clone)]
enum PathKind {
    /// Yields at most one value.
    Definite(Vec<Step>),
    /// May yield several values: they come back as an array.
    Query(Box<JpQuery>),
}

#[derive(Debug, Clone, PartialEq)]
enum Step {
    Key(String),
    Index(usize),
}

/// A JSONPath that does not parse; `col` is 1-based within the path text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathError {
    pub col: usize,
    pub message: String,
}

impl JsonPath {
    pub fn compile(source: &str) -> Result<Self, PathError> {
        // Parse with jsonpath-rust even for simple paths, so every path is
        // held to the same grammar and gets the same error messages.
        let query = parse_json_path(source).map_err(|e| path_error(source, e))?;
        let kind = match definite_steps(source) {
            Some(steps) => PathKind::Definite(steps),
            None => PathKind::Query(Box::new(query)),
        };
        Ok(JsonPath {
            source: source.to_string(),
            kind,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The value at a definite path, or every match of a query as an array
    /// (`None` when nothing matches).
    pub fn get<'a>(&self, root: &'a Value) -> Option<Cow<'a, Value>> {
        match &self.kind {
            PathKind::Definite(steps) => {
                let mut v = root;
                for step in steps {
                    v = match (step, v) {
                        (Step::Key(k), Value::Object(m)) => m.get(k)?,
                        (Step::Index(i), Value::Array(a)) => a.get(*i)?,
                        _ => return None,
                    };
                }
                Some(Cow::Borrowed(v))
            }
            PathKind::Query(q) => {
                let found = js_path_process(q, root).ok()?;
                if found.is_empty() {
                    return None;
                }
                Some(Cow::Owned(Value::Array(
                    found.into_iter().map(|r| r.val().clone()).collect(),
                )))
            }
        }
    }
}

impl JsonPath {
    /// [`JsonPath::get`] on a decoded message: a definite path borrows
    /// from it; a query's matches come back as an array of copies (it
    /// runs on a `Value` copy of the message: jsonpath-rust reads nothing
    /// else).
    pub fn get_doc<'r, 'd>(&self, root: &'r Doc<'d>) -> Option<Cow<'r, Doc<'d>>> {
        match &self.kind {
            PathKind::Definite(steps) => {
                let mut v = root;
                for step in steps {
                    v = match (step, v) {
                        (Step::Key(k), Doc::Object(m)) => member(m, k)?,
                        (Step::Index(i), Doc::Array(a)) => a.get(*i)?,
                        _ => return None,
                    };
                }
                Some(Cow::Borrowed(v))
            }
            PathKind::Query(_) => {
                let found = self.get(&root.to_value())?.into_owned();
                Some(Cow::Owned(Doc::from(found)))
            }
        }
    }
}

/// `$`, `$.a.b`, `$['a']`, `$.a[0]`: paths that name one place.
fn definite_steps(source: &str) -> Option<Vec<Step>> {
    let mut rest = source.strip_prefix('$')?;
    let mut steps = Vec::new();
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('.') {
            let end = after
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == '-'))
                .unwrap_or(after.len());
            if end == 0 {
                return None;
            }
            steps.push(Step::Key(after[..end].to_string()));
            rest = &after[end..];
        } else if let Some(after) = rest.strip_prefix('[') {
            let end = after.find(']')?;
            let inner = &after[..end];
            let step = if let Ok(i) = inner.parse::<usize>() {
                Step::Index(i)
            } else {
                let quoted = inner
                    .strip_prefix('\'')
                    .and_then(|s| s.strip_suffix('\''))
                    .or_else(|| inner.strip_prefix('"').and_then(|s| s.strip_suffix('"')))?;
                if quoted.contains(['\'', '"', '\\']) {
                    return None;
                }
                Step::Key(quoted.to_string())
            };
            steps.push(step);
            rest = &after[end + 1..];
        } else {
            return None;
        }
    }
    Some(steps)
}

fn path_error(source: &str, err: JsonPathError) -> PathError {
    match err {
        JsonPathError::PestError(pest) => {
            let col = match pest.line_col {
                pest::error::LineColLocation::Pos((_, c)) => c,
                pest::error::LineColLocation::Span((_, c), _) => c,
            };
            PathError {
                col,
                message: format!("invalid JSONPath \"{source}\": {}", pest.variant.message()),
            }
        }
        other => PathError {
            col: 1,
            message: format!("invalid JSONPath \"{source}\": {other}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn definite_paths_walk_directly() {
        let doc = json!({"after": {"id": "7", "tags": ["a", "b"], "odd key": 1}});
        let get = |p: &str| {
            let path = JsonPath::compile(p).unwrap();
            let found = path.get(&doc).map(|v| v.into_owned());
            // The decoded message's walk finds the same.
            let in_doc = path.get_doc(&Doc::borrowing(&doc)).map(|v| v.to_value());
            assert_eq!(found, in_doc, "{p}");
            found
        };
        assert_eq!(get("$.after.id"), Some(json!("7")));
        assert_eq!(get("$.after.tags[1]"), Some(json!("b")));
        assert_eq!(get("$['after']['odd key']"), Some(json!(1)));
        assert_eq!(get("$.after.missing"), None);
        assert_eq!(get("$"), Some(doc.clone()));
        assert!(matches!(
            JsonPath::compile("$.a.b").unwrap().kind,
            PathKind::Definite(_)
        ));
    }

    #[test]
    fn queries_return_every_match() {
        let doc = json!({"emails": [{"v": "a"}, {"v": "b"}]});
        let p = JsonPath::compile("$.emails[*].v").unwrap();
        assert_eq!(p.get(&doc).unwrap().into_owned(), json!(["a", "b"]));
        let in_doc = Doc::borrowing(&doc);
        assert_eq!(p.get_doc(&in_doc).unwrap().to_value(), json!(["a", "b"]));
        let none = JsonPath::compile("$.nothing[*]").unwrap();
        assert_eq!(none.get(&doc), None);
        assert_eq!(none.get_doc(&in_doc), None);
    }

    #[test]
    fn bad_paths_report_a_column() {
        let err = JsonPath::compile("$.after[").unwrap_err();
        assert!(err.col >= 8, "{err:?}");
        assert!(
            err.message.starts_with("invalid JSONPath \"$.after[\""),
            "{}",
            err.message
        );
        assert!(JsonPath::compile("after.id").is_err());
    }
}
