//! The envelope every provider change is stored in, whether it came by
//! webhook or by polling: one shape for the inbound pipelines to read.
//!
//! ```json
//! {"provider": "hubspot", "object": "contact", "event_id": "hubspot:123",
//!  "record_id": "4567", "occurred_at": 1700000000000, "change": "update",
//!  "record": {"properties": {"email": "a@b.c"}}, "source": "webhook"}
//! ```
//!
//! A provider says how to read its events with a mapping (the same as a
//! pipeline's: JSONPaths or Rhai over the event as `record`) whose outputs
//! are the envelope's fields.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::diagnostics::Diagnostics;
use crate::config::load::SourceFile;
use crate::config::yaml::Seg;
use crate::expr::{Event, ScriptEngine, Vars};
use crate::mapping::{Mapping, compile_mapping};

/// What kind of change an envelope carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    Create,
    Update,
    Delete,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub provider: String,
    pub object: String,
    /// Unique per change: the provider's event id (webhooks), or the
    /// record's id and modification time (polls). Its `Nats-Msg-Id`.
    pub event_id: String,
    /// The provider's id of the record.
    pub record_id: String,
    /// When the change happened, ms since the epoch (the provider's clock).
    pub occurred_at: i64,
    pub change: Change,
    /// The changed fields (a webhook) or the whole record (a poll), in the
    /// provider's shape.
    pub record: Value,
    /// `webhook` or `poll`.
    pub source: String,
    /// Whether the change may be syncflow's own write (the provider says
    /// who made it: HubSpot's `changeSource`); unknown when not mapped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ours: Option<bool>,
}

/// The envelope fields a mapping may set.
const FIELDS: [&str; 7] = [
    "id",
    "object",
    "record_id",
    "occurred_at",
    "change",
    "record",
    "ours",
];

/// A provider's way of reading one event into an envelope.
#[derive(Debug, Clone)]
pub struct EnvelopeMapping {
    mapping: Mapping,
}

/// The parts of an envelope an event gave, before the defaults of its source.
pub struct Read {
    pub id: Option<String>,
    pub object: Option<String>,
    pub record_id: String,
    pub occurred_at: i64,
    pub change: Change,
    /// None when the mapping does not set it.
    pub record: Option<Value>,
    pub ours: Option<bool>,
}

impl EnvelopeMapping {
    /// Compiles the mapping at `at`; every name in `required` must be set.
    pub fn compile(
        file: &SourceFile,
        at: &[Seg],
        yaml: &serde_yaml::Mapping,
        required: &[&str],
        engine: &ScriptEngine,
        diags: &mut Diagnostics,
    ) -> Option<Self> {
        let before = diags.len();
        for key in yaml.keys() {
            let name = key.as_str().unwrap_or_default();
            if !FIELDS.contains(&name) {
                let mut key_at = at.to_vec();
                key_at.push(Seg::from(name));
                file.key_error(
                    diags,
                    &key_at,
                    format!(
                        "unknown envelope field \"{name}\"{}; the fields are {}",
                        crate::config::suggest::did_you_mean(name, FIELDS),
                        FIELDS.join(", ")
                    ),
                );
            }
        }
        for name in required {
            if !yaml.contains_key(*name) {
                file.error(
                    diags,
                    at,
                    format!("the event mapping needs \"{name}\" (a JSONPath or {{ expr }})"),
                );
            }
        }
        let mapping = compile_mapping(file, at, yaml, engine, diags);
        if diags.len() != before {
            return None;
        }
        Some(EnvelopeMapping { mapping: mapping? })
    }

    /// Reads one event. The error says which field is missing or wrong.
    pub fn read(&self, event: &Value, engine: &ScriptEngine) -> Result<Read, String> {
        let event = crate::doc::Doc::borrowing(event);
        let mut vars = Vars::new(&event, Event::default());
        let out = self
            .mapping
            .apply(&event, engine, &mut vars)
            .map_err(|e| format!("{}: {}", e.field, e.message))?;
        let text = |name: &str| -> Option<String> {
            match out.get(name)? {
                Value::String(s) if !s.is_empty() => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            }
        };
        let record_id = text("record_id").ok_or("no record_id (a non-empty string or number)")?;
        let occurred_at = match out.get("occurred_at") {
            Some(Value::Number(n)) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
            Some(Value::String(s)) => s.parse().ok(),
            _ => None,
        }
        .ok_or("no occurred_at (milliseconds since the epoch)")?;
        let change = match out.get("change").and_then(Value::as_str) {
            None => Change::Update,
            Some("create") => Change::Create,
            Some("update") => Change::Update,
            Some("delete") => Change::Delete,
            Some(other) => {
                return Err(format!(
                    "change \"{other}\" is not create, update or delete"
                ));
            }
        };
        Ok(Read {
            id: text("id"),
            object: text("object"),
            record_id,
            occurred_at,
            change,
            record: out.get("record").cloned(),
            ours: out.get("ours").and_then(Value::as_bool),
        })
    }
}
