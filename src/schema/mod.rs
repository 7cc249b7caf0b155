//! JSON Schemas (draft 2020-12 and 7), compiled once per file.

mod email;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;

use crate::config::diagnostics::Pos;
use crate::config::yaml::{self, Seg};
use crate::doc::{Doc, DocJson};

/// How many violations one dead letter lists.
const MAX_REPORTED: usize = 5;

/// A compiled schema and the file it came from.
#[derive(Clone)]
pub struct Schema {
    /// For values built here (a mapped body).
    validator: Arc<jsonschema::Validator>,
    /// For decoded messages, checked in place (the input schema).
    doc_validator: Arc<jsonschema::Validator<DocJson>>,
    pub file: PathBuf,
    /// Hash of the schema text, part of its pipelines' fingerprints.
    pub fingerprint: u64,
}

impl std::fmt::Debug for Schema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Schema({})", self.file.display())
    }
}

/// Why a schema could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchemaError {
    /// The referenced file is not there (reported where it is referenced).
    Missing { message: String },
    /// The file is there but broken (reported in the schema file itself).
    Invalid {
        file: PathBuf,
        pos: Pos,
        message: String,
    },
}

impl Schema {
    /// Checks `instance`; the error lists up to five violations, each with
    /// the JSON Pointer of the offending value.
    pub fn validate(&self, instance: &Value) -> Result<(), String> {
        if self.validator.is_valid(instance) {
            return Ok(());
        }
        Err(report(self.validator.iter_errors(instance)))
    }

    /// [`Schema::validate`] for a decoded message: the same violations
    /// (members in the message's order, where a `Value` has them by name).
    pub fn validate_doc(&self, instance: &Doc<'_>) -> Result<(), String> {
        if self.doc_validator.is_valid(instance) {
            return Ok(());
        }
        Err(report(self.doc_validator.iter_errors(instance)))
    }
}

/// Up to five violations, each with the JSON Pointer of the offending value.
fn report<'i>(errors: impl Iterator<Item = jsonschema::ValidationError<'i>>) -> String {
    let mut parts: Vec<String> = errors
        .take(MAX_REPORTED + 1)
        .map(|e| {
            let at = e.instance_path().as_str();
            format!("{}: {e}", if at.is_empty() { "/" } else { at })
        })
        .collect();
    if parts.len() > MAX_REPORTED {
        parts.truncate(MAX_REPORTED);
        parts.push("...".into());
    }
    parts.join("; ")
}

/// Compiles each schema file once, however many pipelines use it.
#[derive(Default)]
pub struct SchemaCache {
    compiled: HashMap<PathBuf, Result<Schema, SchemaError>>,
}

impl SchemaCache {
    /// `rel` is relative to the config directory `dir`.
    pub fn get(&mut self, dir: &Path, rel: &str) -> Result<Schema, SchemaError> {
        let rel = PathBuf::from(rel);
        self.compiled
            .entry(rel.clone())
            .or_insert_with(|| compile(dir, &rel))
            .clone()
    }
}

fn compile(dir: &Path, rel: &Path) -> Result<Schema, SchemaError> {
    let full = dir.join(rel);
    let text = std::fs::read_to_string(&full).map_err(|e| SchemaError::Missing {
        message: format!("cannot read schema {}: {e}", rel.display()),
    })?;
    let invalid = |pos: Pos, message: String| SchemaError::Invalid {
        file: rel.to_path_buf(),
        pos,
        message,
    };
    let schema: Value = serde_json::from_str(&text).map_err(|e| {
        invalid(
            Pos::new(e.line(), e.column()),
            format!("invalid JSON in schema: {e}"),
        )
    })?;
    let abs = std::fs::canonicalize(&full).unwrap_or(full);
    let base_uri = format!("file://{}", abs.display());
    let validator = configured(jsonschema::options(), &base_uri)
        .build(&schema)
        .map_err(|e| {
            // The error's instance is the schema itself: its path names the
            // offending keyword, and the JSON text (valid YAML) positions it.
            let pointer = e.instance_path().as_str().to_string();
            let segs: Vec<Seg> = pointer
                .split('/')
                .skip(1)
                .map(|s| {
                    let s = s.replace("~1", "/").replace("~0", "~");
                    match s.parse::<usize>() {
                        Ok(i) => Seg::Index(i),
                        Err(_) => Seg::Key(s),
                    }
                })
                .collect();
            let pos = yaml::parse(&text)
                .map(|root| root.key_pos(&segs))
                .unwrap_or(Pos::new(1, 1));
            let keyword = match segs.last() {
                Some(Seg::Key(k)) => format!("keyword \"{k}\""),
                _ => format!("at \"{pointer}\""),
            };
            invalid(pos, format!("invalid JSON Schema: {keyword}: {e}"))
        })?;
    // The same schema and options: it builds whenever the one above did.
    let doc_validator = configured(jsonschema::options_for::<DocJson>(), &base_uri)
        .build(&schema)
        .map_err(|e| invalid(Pos::new(1, 1), format!("invalid JSON Schema: {e}")))?;
    Ok(Schema {
        validator: Arc::new(validator),
        doc_validator: Arc::new(doc_validator),
        file: rel.to_path_buf(),
        fingerprint: crate::config::fingerprint(&[&text]),
    })
}

/// The options every validator of a schema file is built with, whatever
/// JSON representation it checks.
fn configured<'i, R, F: jsonschema::json::Json>(
    options: jsonschema::ValidationOptions<'i, R, F>,
    base_uri: &str,
) -> jsonschema::ValidationOptions<'i, R, F> {
    options
        .with_base_uri(base_uri)
        .should_validate_formats(true)
        .with_format("email", email::is_email)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn dir_with(name: &str, text: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("schemas")).unwrap();
        std::fs::write(dir.path().join("schemas").join(name), text).unwrap();
        dir
    }

    #[test]
    fn validates_and_lists_violations_with_pointers() {
        let dir = dir_with(
            "c.json",
            r#"{"type": "object", "required": ["id"], "properties": {"email": {"type": "string", "format": "email"}}}"#,
        );
        let schema = SchemaCache::default()
            .get(dir.path(), "schemas/c.json")
            .unwrap();
        assert!(schema.validate(&json!({"id": 1, "email": "a@b.c"})).is_ok());
        let err = schema.validate(&json!({"email": 5})).unwrap_err();
        assert!(err.contains("/email: 5 is not of type \"string\""), "{err}");
        assert!(err.contains("/: \"id\" is a required property"), "{err}");
        assert!(schema.validate(&json!({"id": 1, "email": "nope"})).is_err());
        // A decoded message gets the same answers and errors.
        for instance in [
            json!({"id": 1, "email": "a@b.c"}),
            json!({"email": 5}),
            json!({"id": 1, "email": "nope"}),
        ] {
            assert_eq!(
                schema.validate_doc(&Doc::borrowing(&instance)),
                schema.validate(&instance),
                "{instance}"
            );
        }
    }

    #[test]
    fn a_broken_keyword_names_file_keyword_and_line() {
        let dir = dir_with(
            "c.json",
            "{\n  \"type\": \"object\",\n  \"properties\": {\n    \"email\": { \"type\": \"strng\" }\n  }\n}\n",
        );
        match SchemaCache::default().get(dir.path(), "schemas/c.json") {
            Err(SchemaError::Invalid { file, pos, message }) => {
                assert_eq!(file, PathBuf::from("schemas/c.json"));
                assert_eq!(pos.line, 4);
                assert!(message.contains("keyword \"type\""), "{message}");
            }
            other => panic!("expected an invalid schema, got {other:?}"),
        }
    }

    #[test]
    fn invalid_json_and_missing_files() {
        let dir = dir_with("c.json", "{\n  \"type\": \"object\",\n}\n");
        let mut cache = SchemaCache::default();
        match cache.get(dir.path(), "schemas/c.json") {
            Err(SchemaError::Invalid { pos, .. }) => assert_eq!(pos.line, 3),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            cache.get(dir.path(), "schemas/none.json"),
            Err(SchemaError::Missing { .. })
        ));
    }
}
