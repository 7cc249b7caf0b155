//! Field mappings: output path ⇐ JSONPath into the record, or a Rhai `expr`.
//!
//! Output paths are dotted (`properties.email`) and build nested objects. A
//! JSONPath that matches nothing, or an expression returning `()`, leaves the
//! field out.

mod path;

use std::borrow::Cow;

use serde_json::{Map, Value};

pub use path::{JsonPath, PathError};

use crate::config::diagnostics::Diagnostics;
use crate::config::load::SourceFile;
use crate::config::yaml::Seg;
use crate::doc::Doc;
use crate::expr::{Script, ScriptEngine, Vars};

/// Where one output field's value comes from.
#[derive(Debug, Clone)]
pub enum FieldSource {
    Path(JsonPath),
    Expr(Script),
}

impl FieldSource {
    /// The JSONPath or the script's text, as written.
    pub fn as_str(&self) -> &str {
        match self {
            FieldSource::Path(path) => path.as_str(),
            FieldSource::Expr(script) => script.text(),
        }
    }

    /// The value this source gives for `message` (a script sees it as
    /// `record`); `None` when the path matches nothing or the script
    /// returns `()`. Borrowed from the message for paths.
    pub fn get<'r, 'd>(
        &self,
        message: &'r Doc<'d>,
        engine: &ScriptEngine,
    ) -> Result<Option<Cow<'r, Doc<'d>>>, String> {
        match self {
            FieldSource::Path(path) => Ok(path.get_doc(message)),
            FieldSource::Expr(script) => {
                let mut vars = Vars::new(message, crate::expr::Event::default());
                let value = engine.eval(script, &mut vars).map_err(|e| e.message)?;
                Ok(value.into_json()?.map(|v| Cow::Owned(Doc::from(v))))
            }
        }
    }
}

/// Compiles one source (a JSONPath string or `{ expr: <Rhai> }`) at `at`;
/// `what` names it in the error.
pub fn compile_source(
    file: &SourceFile,
    at: &[Seg],
    yaml: &serde_yaml::Value,
    what: &str,
    engine: &ScriptEngine,
    diags: &mut Diagnostics,
) -> Option<FieldSource> {
    match yaml {
        serde_yaml::Value::String(p) => JsonPath::compile(p)
            .map_err(|e| file.text_error(diags, at, 1, e.col, e.message))
            .ok()
            .map(FieldSource::Path),
        serde_yaml::Value::Mapping(m)
            if m.len() == 1 && m.get("expr").is_some_and(|e| e.is_string()) =>
        {
            let text = m.get("expr").and_then(|e| e.as_str()).unwrap_or_default();
            let mut expr_at = at.to_vec();
            expr_at.push(Seg::from("expr"));
            engine
                .compile(text)
                .map_err(|e| {
                    file.text_error(
                        diags,
                        &expr_at,
                        e.line,
                        e.col,
                        format!("invalid Rhai script: {}", e.message),
                    )
                })
                .ok()
                .map(FieldSource::Expr)
        }
        _ => {
            file.error(
                diags,
                at,
                format!("{what}: expected a JSONPath string or {{ expr: <Rhai script> }}"),
            );
            None
        }
    }
}

#[derive(Debug, Clone)]
pub struct Field {
    /// The dotted output path, as written (for errors).
    pub name: String,
    segments: Vec<String>,
    source: FieldSource,
}

impl Field {
    /// Fails when the dotted path has an empty segment (`a..b`, `.a`).
    pub fn new(name: &str, source: FieldSource) -> Result<Self, String> {
        let segments: Vec<String> = name.split('.').map(str::to_string).collect();
        if segments.iter().any(String::is_empty) {
            return Err(format!(
                "invalid output path \"{name}\": segments are separated by single dots"
            ));
        }
        Ok(Field {
            name: name.to_string(),
            segments,
            source,
        })
    }

    /// `a` and `a.b` cannot both be set: one would overwrite the other.
    pub fn conflicts_with(&self, other: &Field) -> bool {
        let n = self.segments.len().min(other.segments.len());
        self.segments[..n] == other.segments[..n]
    }
}

/// A field that could not be produced for one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    /// True when a Rhai expression failed (a `script` error), false when
    /// its result could not be used (a `mapping` error).
    pub in_script: bool,
    pub message: String,
}

#[derive(Debug, Clone, Default)]
pub struct Mapping {
    /// In the order written: fields are evaluated, and fail, in that order.
    fields: Vec<Field>,
}

impl Mapping {
    /// Conflicting output paths must have been rejected by the caller
    /// (see [`Field::conflicts_with`]), which knows where they are written.
    pub fn new(fields: Vec<Field>) -> Self {
        Mapping { fields }
    }

    pub fn has_scripts(&self) -> bool {
        self.fields
            .iter()
            .any(|f| matches!(f.source, FieldSource::Expr(_)))
    }

    /// Builds the output body of one record.
    pub fn apply<'a>(
        &'a self,
        record: &Doc<'_>,
        engine: &ScriptEngine,
        vars: &mut Vars<'a>,
    ) -> Result<Value, FieldError> {
        // One insert per field, each finding its parent objects by name
        // again. Building each object once from its members in key order
        // (the output paths' tree worked out at load, `Map::from_iter`)
        // runs fewer instructions but takes more time: tried twice, and
        // measured both ways in bench/README.md ("The allocator, the body
        // writer, and a change taken back"; "The mapping's shape, taken
        // back").
        let mut out = Map::new();
        for field in &self.fields {
            let value = match &field.source {
                FieldSource::Path(path) => path.get_doc(record).map(|v| v.to_value()),
                FieldSource::Expr(script) => {
                    let result = engine.eval(script, vars).map_err(|e| FieldError {
                        field: field.name.clone(),
                        in_script: true,
                        message: e.message,
                    })?;
                    result.into_json().map_err(|message| FieldError {
                        field: field.name.clone(),
                        in_script: false,
                        message,
                    })?
                }
            };
            if let Some(value) = value {
                insert(&mut out, &field.segments, value);
            }
        }
        Ok(Value::Object(out))
    }
}

/// Sets `value` at the dotted path `segments` of `out`, making the objects
/// on the way.
pub fn insert(out: &mut Map<String, Value>, segments: &[String], value: Value) {
    let (last, parents) = segments.split_last().expect("validated non-empty");
    let mut map = out;
    for seg in parents {
        // Looked up before `entry`, which takes an owned key: the parent
        // exists for every field but the first under it, and cloning its
        // name each time was a tenth of the mapping (callgrind, bench).
        if !map.get(seg).is_some_and(Value::is_object) {
            // Missing, or (unreachable with conflict-free fields) not an
            // object: the later value wins.
            map.insert(seg.clone(), Value::Object(Map::new()));
        }
        map = map
            .get_mut(seg)
            .and_then(Value::as_object_mut)
            .expect("just made an object");
    }
    map.insert(last.clone(), value);
}

/// The value at the dotted path `segments` of `value`.
pub fn lookup<'a>(value: &'a Value, segments: &[String]) -> Option<&'a Value> {
    segments
        .iter()
        .try_fold(value, |v, seg| v.as_object()?.get(seg))
}

/// [`lookup`] in a decoded message.
pub fn lookup_doc<'r, 'd>(value: &'r Doc<'d>, segments: &[String]) -> Option<&'r Doc<'d>> {
    segments.iter().try_fold(value, |v, seg| v.get(seg))
}

/// Compiles a YAML mapping of output paths to JSONPaths or `{ expr }`
/// scripts, at `at` in `file`, reporting every error.
pub fn compile_mapping(
    file: &SourceFile,
    at: &[Seg],
    yaml: &serde_yaml::Mapping,
    engine: &ScriptEngine,
    diags: &mut Diagnostics,
) -> Option<Mapping> {
    let before = diags.len();
    let mut fields: Vec<Field> = Vec::new();
    for (k, v) in yaml {
        let Some(name) = k.as_str() else {
            // A number or a boolean is a scalar YAML took for something
            // else: pointed at, with the quoting that makes it a path.
            let scalar = match k {
                serde_yaml::Value::Number(n) => Some((n.to_string(), "a number")),
                serde_yaml::Value::Bool(b) => Some((b.to_string(), "a boolean")),
                _ => None,
            };
            match scalar {
                Some((text, what)) => {
                    let mut key_at = at.to_vec();
                    key_at.push(Seg::from(text.as_str()));
                    file.key_error(
                        diags,
                        &key_at,
                        format!("mapping key {text} is {what}; output paths are strings (quote it: \"{text}\")"),
                    );
                }
                None => file.error(
                    diags,
                    at,
                    "a mapping key is empty, a list or a map; output paths are strings",
                ),
            }
            continue;
        };
        let mut field_at = at.to_vec();
        field_at.push(Seg::from(name));
        let what = format!("mapping \"{name}\"");
        let source = compile_source(file, &field_at, v, &what, engine, diags);
        let Some(source) = source else { continue };
        match Field::new(name, source) {
            Ok(field) => {
                if let Some(other) = fields.iter().find(|f| f.conflicts_with(&field)) {
                    file.key_error(diags, &field_at, format!("output path \"{name}\" conflicts with \"{}\": one would overwrite the other", other.name));
                } else {
                    fields.push(field);
                }
            }
            Err(e) => file.key_error(diags, &field_at, e),
        }
    }
    (diags.len() == before).then(|| Mapping::new(fields))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::expr::Event;
    use serde_json::json;

    fn path(p: &str) -> FieldSource {
        FieldSource::Path(JsonPath::compile(p).unwrap())
    }

    fn expr(e: &ScriptEngine, s: &str) -> FieldSource {
        FieldSource::Expr(e.compile(s).unwrap())
    }

    #[test]
    fn builds_nested_output_and_leaves_out_missing_fields() {
        let engine = ScriptEngine::new();
        let mapping = Mapping::new(vec![
            Field::new("properties.email", path("$.email")).unwrap(),
            Field::new("properties.phone", path("$.phone")).unwrap(),
            Field::new(
                "properties.company",
                expr(
                    &engine,
                    "if record.company != () { record.company.to_upper() } else { () }",
                ),
            )
            .unwrap(),
            Field::new("source", expr(&engine, r#""syncflow""#)).unwrap(),
        ]);
        let record = Doc::from(json!({"email": "a@b.c"}));
        let mut vars = Vars::new(&record, Event::default());
        let out = mapping.apply(&record, &engine, &mut vars).unwrap();
        assert_eq!(
            out,
            json!({"properties": {"email": "a@b.c"}, "source": "syncflow"})
        );
    }

    #[test]
    fn script_failures_name_the_field() {
        let engine = ScriptEngine::new();
        let mapping = Mapping::new(vec![
            Field::new("x", expr(&engine, "record.n / 0")).unwrap(),
        ]);
        let record = Doc::from(json!({"n": 1}));
        let mut vars = Vars::new(&record, Event::default());
        let err = mapping.apply(&record, &engine, &mut vars).unwrap_err();
        assert_eq!(err.field, "x");
        assert!(err.in_script);
    }

    #[test]
    fn objects_are_built_whatever_the_order_fields_are_written_in() {
        let engine = ScriptEngine::new();
        let mapping = Mapping::new(vec![
            Field::new("z.y.x", path("$.a")).unwrap(),
            Field::new("b", path("$.b")).unwrap(),
            Field::new("z.a", path("$.missing")).unwrap(),
            Field::new("z.y.a", expr(&engine, "record.b + 1")).unwrap(),
            Field::new("m.only", path("$.missing")).unwrap(),
            Field::new("a", path("$.obj")).unwrap(),
        ]);
        let record = Doc::from(json!({"a": "x", "b": 2, "obj": {}}));
        let mut vars = Vars::new(&record, Event::default());
        let out = mapping.apply(&record, &engine, &mut vars).unwrap();
        // `m` has no field with a value: no empty object for it.
        assert_eq!(
            out,
            json!({"a": {}, "b": 2, "z": {"y": {"a": 3, "x": "x"}}})
        );
        assert_eq!(
            serde_json::to_string(&out).unwrap(),
            r#"{"a":{},"b":2,"z":{"y":{"a":3,"x":"x"}}}"#
        );
    }

    #[test]
    fn the_first_field_written_that_fails_is_the_one_reported() {
        let engine = ScriptEngine::new();
        let mapping = Mapping::new(vec![
            Field::new("z", expr(&engine, "record.n / 0")).unwrap(),
            Field::new("a", expr(&engine, "record.n / 0")).unwrap(),
        ]);
        let record = Doc::from(json!({"n": 1}));
        let mut vars = Vars::new(&record, Event::default());
        let err = mapping.apply(&record, &engine, &mut vars).unwrap_err();
        assert_eq!(err.field, "z");
    }

    #[test]
    fn conflicting_and_malformed_output_paths() {
        let a = Field::new("a", path("$.x")).unwrap();
        let ab = Field::new("a.b", path("$.x")).unwrap();
        let ac = Field::new("ac", path("$.x")).unwrap();
        assert!(a.conflicts_with(&ab));
        assert!(!a.conflicts_with(&ac));
        assert!(Field::new("a..b", path("$.x")).is_err());
    }
}
