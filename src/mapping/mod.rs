//! Field mappings: output path ⇐ JSONPath into the record, or a Rhai `expr`.
//!
//! Output paths are dotted (`properties.email`) and build nested objects. A
//! JSONPath that matches nothing, or an expression returning `()`, leaves the
//! field out.

mod path;

use serde_json::{Map, Value};

pub use path::{JsonPath, PathError};

use crate::expr::{Script, ScriptEngine, Vars};

/// Where one output field's value comes from.
#[derive(Debug, Clone)]
pub enum FieldSource {
    Path(JsonPath),
    Expr(Script),
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
        record: &Value,
        engine: &ScriptEngine,
        vars: &mut Vars<'a>,
    ) -> Result<Value, FieldError> {
        let mut out = Map::new();
        for field in &self.fields {
            let value = match &field.source {
                FieldSource::Path(path) => path.get(record).map(|v| v.into_owned()),
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

fn insert(out: &mut Map<String, Value>, segments: &[String], value: Value) {
    let (last, parents) = segments.split_last().expect("validated non-empty");
    let mut map = out;
    for seg in parents {
        let slot = map
            .entry(seg.clone())
            .or_insert_with(|| Value::Object(Map::new()));
        if !slot.is_object() {
            // Unreachable with conflict-free fields; keep the later value.
            *slot = Value::Object(Map::new());
        }
        map = slot.as_object_mut().expect("just made an object");
    }
    map.insert(last.clone(), value);
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
        let record = json!({"email": "a@b.c"});
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
        let record = json!({"n": 1});
        let mut vars = Vars::new(&record, Event::default());
        let err = mapping.apply(&record, &engine, &mut vars).unwrap_err();
        assert_eq!(err.field, "x");
        assert!(err.in_script);
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
