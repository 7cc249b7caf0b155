//! The per-record path: decode → key/record/op → input schema → `when` →
//! rules (first match) → mapping → output schema.

use std::fmt;

use serde_json::Value;

use super::Pipeline;
use crate::action::Action;
use crate::doc::Doc;
use crate::error::{Fault, Retry};
use crate::expr::{Event, Vars};
use crate::mapping::JsonPath;

/// What the runtime knows about a message besides its bytes; exposed to
/// scripts as `event`.
#[derive(Debug, Clone, Default)]
pub struct MessageMeta<'a> {
    pub subject: &'a str,
    pub seq: u64,
    /// Publish time, milliseconds since the Unix epoch.
    pub timestamp_ms: Option<i64>,
    pub headers: &'a [(String, String)],
    /// For an inbound two-way change: System A's key of the provider's
    /// record, when it is linked (`event.linked_key`).
    pub linked_key: Option<&'a str>,
}

/// A record that made it through evaluation.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub key: String,
    /// The record's account, for pipelines that name one.
    pub account: Option<String>,
    pub action: Action,
    /// The mapped, schema-checked body for create/update/upsert.
    pub body: Option<Value>,
    /// Why a skipped record was skipped.
    pub skip_reason: Option<&'static str>,
    /// What a two-way link needs of the change.
    pub facts: Option<Facts>,
}

/// A change as a two-way link sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Facts {
    /// When it was made (ms since the epoch, its side's clock).
    pub modified: i64,
    /// The link's fields in the changed record (its side's shape), in the
    /// link's order; `None` where the change does not carry the field.
    pub fields: Vec<Option<Value>>,
    /// Inbound: System A's key of the record, when the runtime found it
    /// linked before evaluation.
    pub linked_key: Option<String>,
    /// Outbound: the provider's id System A's record holds
    /// (`two_way.external_id`).
    pub external_id: Option<String>,
    /// Inbound: System A's key the provider's record holds
    /// (`two_way.internal_id`).
    pub internal_id: Option<String>,
    /// Inbound: whether the change may be syncflow's own write (the
    /// envelope's `ours`), when the provider tells.
    pub ours: Option<bool>,
}

/// The stage at which a record failed; each is a dead-letter kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EvalErrorKind {
    Decode,
    Key,
    Account,
    InputSchema,
    Script,
    Mapping,
    OutputSchema,
}

impl EvalErrorKind {
    pub const NAMES: [&'static str; 7] = [
        "decode",
        "key",
        "account",
        "input_schema",
        "script",
        "mapping",
        "output_schema",
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EvalErrorKind::Decode => "decode",
            EvalErrorKind::Key => "key",
            EvalErrorKind::Account => "account",
            EvalErrorKind::InputSchema => "input_schema",
            EvalErrorKind::Script => "script",
            EvalErrorKind::Mapping => "mapping",
            EvalErrorKind::OutputSchema => "output_schema",
        }
    }
}

impl fmt::Display for EvalErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct EvalError {
    pub kind: EvalErrorKind,
    /// The key, when the failure came after it was read.
    pub key: Option<String>,
    /// The action a rule chose, when the failure came after that (mapping,
    /// output schema): a dead letter says what was about to be done.
    pub action: Option<Action>,
    pub message: String,
}

impl EvalError {
    /// A record that fails evaluation is the data's or the config's fault,
    /// and evaluating it again gives the same answer: dead-letter it.
    pub fn fault(&self) -> Fault {
        Fault::User
    }
    pub fn retry(&self) -> Retry {
        Retry::No
    }
}

/// The longest account name: it is part of Redis keys and log lines.
const MAX_ACCOUNT_BYTES: usize = 256;

impl Pipeline {
    /// Evaluates one message. Pure: no I/O, safe to call from any thread.
    pub fn evaluate(&self, meta: &MessageMeta<'_>, data: &[u8]) -> Result<Outcome, EvalError> {
        let message = self.decode(data)?;
        let key = self.read_key(&message)?;
        self.evaluate_decoded(meta, &message, key)
    }

    /// The message's JSON.
    ///
    /// The bytes are checked as UTF-8 once, whole, and parsed as a `str`:
    /// `from_slice` checks each string apart as it goes, which cost 1,700
    /// of the 10,800 instructions a bench event's decode took (callgrind,
    /// bench/README.md); the whole check costs about 100.
    pub fn decode<'a>(&self, data: &'a [u8]) -> Result<Doc<'a>, EvalError> {
        let not_json = |e: &dyn std::fmt::Display| {
            fail(
                EvalErrorKind::Decode,
                None,
                format!("message is not JSON: {e}"),
            )
        };
        let text = std::str::from_utf8(data).map_err(|e| not_json(&e))?;
        Doc::parse(text).map_err(|e| not_json(&e))
    }

    /// The message's record key.
    pub fn read_key(&self, message: &Doc<'_>) -> Result<String, EvalError> {
        let at = self.key.as_str();
        let key = self.read_name(&self.key, message, EvalErrorKind::Key, None)?;
        if key.len() > self.max_key_bytes {
            return Err(fail(
                EvalErrorKind::Key,
                None,
                format!(
                    "the key at {at} is {} bytes long, more than max_key_bytes ({})",
                    key.len(),
                    self.max_key_bytes
                ),
            ));
        }
        Ok(key)
    }

    /// A key or an account: a non-empty string, or a number as text.
    fn read_name(
        &self,
        source: &crate::mapping::FieldSource,
        message: &Doc<'_>,
        kind: EvalErrorKind,
        key: Option<&str>,
    ) -> Result<String, EvalError> {
        let (at, what) = (source.as_str(), kind.as_str());
        let value = source
            .get(message, &self.engine)
            .map_err(|e| fail(kind, key, format!("{what} {at}: {e}")))?;
        match value.as_deref() {
            Some(Doc::String(s)) if !s.is_empty() => Ok(s.to_string()),
            Some(Doc::Number(n)) => Ok(n.to_string()),
            Some(other) => Err(fail(
                kind,
                key,
                format!("{what} at {at} must be a non-empty string or a number, got {other}"),
            )),
            None => Err(fail(kind, key, format!("no {what} at {at}"))),
        }
    }

    /// The message's account, for a pipeline that names one.
    fn read_account(&self, message: &Doc<'_>, key: &str) -> Result<Option<String>, EvalError> {
        let Some(source) = &self.account else {
            return Ok(None);
        };
        let at = source.as_str();
        let account = self.read_name(source, message, EvalErrorKind::Account, Some(key))?;
        if account.len() > MAX_ACCOUNT_BYTES || account.chars().any(char::is_control) {
            return Err(fail(
                EvalErrorKind::Account,
                Some(key),
                format!(
                    "the account at {at} must be at most {MAX_ACCOUNT_BYTES} bytes without control characters"
                ),
            ));
        }
        Ok(Some(account))
    }

    /// Evaluates a decoded message whose key was read.
    pub fn evaluate_decoded(
        &self,
        meta: &MessageMeta<'_>,
        message: &Doc<'_>,
        key: String,
    ) -> Result<Outcome, EvalError> {
        // Borrowed from the message for plain paths: no copy per record.
        let record = self
            .record
            .get(message, &self.engine)
            .map_err(|e| fail(EvalErrorKind::Script, Some(&key), format!("record: {e}")))?
            .unwrap_or(std::borrow::Cow::Owned(Doc::Null));
        let record: &Doc = &record;
        let op = self.op.as_ref().and_then(|p| p.get_doc(message));

        if let Some(schema) = &self.input_schema {
            schema
                .validate_doc(record)
                .map_err(|e| fail(EvalErrorKind::InputSchema, Some(&key), e))?;
        }

        let event = Event {
            op: op.as_deref(),
            key: &key,
            subject: meta.subject,
            seq: meta.seq,
            timestamp_ms: meta.timestamp_ms,
            headers: meta.headers,
            linked_key: meta.linked_key,
        };
        let mut vars = Vars::new(record, event);
        if let Some(when) = &self.when {
            let pass = self
                .engine
                .eval_bool(when, &mut vars)
                .map_err(|e| fail(EvalErrorKind::Script, Some(&key), format!("when: {e}")))?;
            if !pass {
                return Ok(skipped(key, "when"));
            }
        }
        let mut action = None;
        for (i, rule) in self.rules.iter().enumerate() {
            let matched = self
                .engine
                .eval_bool(&rule.condition, &mut vars)
                .map_err(|e| {
                    fail(
                        EvalErrorKind::Script,
                        Some(&key),
                        format!("rules[{i}].if: {e}"),
                    )
                })?;
            if matched {
                action = Some(rule.action);
                break;
            }
        }
        let action = match action {
            None => return Ok(skipped(key, "no rule matched")),
            Some(Action::Skip) => return Ok(skipped(key, "rule")),
            Some(a) => a,
        };
        // Only a record that goes to the provider needs its account.
        let account = self.read_account(message, &key)?;
        let body = if action.sends_body() {
            let body = self
                .mapping
                .apply(record, &self.engine, &mut vars)
                .map_err(|e| {
                    let kind = if e.in_script {
                        EvalErrorKind::Script
                    } else {
                        EvalErrorKind::Mapping
                    };
                    EvalError {
                        action: Some(action),
                        ..fail(
                            kind,
                            Some(&key),
                            format!("mapping {}: {}", e.field, e.message),
                        )
                    }
                })?;
            if let Some(schema) = &self.output_schema {
                schema.validate(&body).map_err(|e| EvalError {
                    action: Some(action),
                    ..fail(EvalErrorKind::OutputSchema, Some(&key), e)
                })?;
            }
            Some(body)
        } else {
            None
        };
        let facts = match &self.two_way {
            Some(tw) => Some(
                tw.facts(message, record, meta.linked_key)
                    .map_err(|message| EvalError {
                        action: Some(action),
                        ..fail(EvalErrorKind::Mapping, Some(&key), message)
                    })?,
            ),
            None => None,
        };
        Ok(Outcome {
            key,
            account,
            action,
            body,
            skip_reason: None,
            facts,
        })
    }
}

impl super::TwoWay {
    /// The modification time (from the message) and the link's fields
    /// (from the record) of a change.
    fn facts(
        &self,
        message: &Doc<'_>,
        record: &Doc<'_>,
        linked_key: Option<&str>,
    ) -> Result<Facts, String> {
        let modified = match self.modified.get_doc(message).as_deref() {
            Some(Doc::Number(n)) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
            Some(Doc::String(s)) => s.parse().ok(),
            _ => None,
        }
        .ok_or_else(|| {
            format!(
                "two_way.modified: no modification time (ms since the epoch) at {}",
                self.modified.as_str()
            )
        })?;
        let from_internal = self.direction == crate::config::model::Direction::Outbound;
        let fields = self
            .link
            .fields
            .iter()
            .map(|f| {
                let path = if from_internal {
                    &f.internal
                } else {
                    &f.external
                };
                match (crate::mapping::lookup_doc(record, path), self.changes) {
                    (Some(value), _) => Some(value.to_value()),
                    // A full record without the field: it is empty.
                    (None, crate::config::model::ChangeShape::Full) => Some(Value::Null),
                    (None, crate::config::model::ChangeShape::Changed) => None,
                }
            })
            .collect();
        let id_at = |path: &Option<JsonPath>| {
            path.as_ref()
                .and_then(|p| p.get_doc(record))
                .and_then(|v| match v.as_ref() {
                    Doc::String(s) if !s.is_empty() => Some(s.to_string()),
                    Doc::Number(n) => Some(n.to_string()),
                    _ => None,
                })
        };
        Ok(Facts {
            modified,
            fields,
            linked_key: linked_key.map(str::to_string),
            external_id: id_at(&self.external_id),
            internal_id: id_at(&self.internal_id),
            ours: match self.direction {
                crate::config::model::Direction::Inbound => match message.get("ours") {
                    Some(Doc::Bool(b)) => Some(*b),
                    _ => None,
                },
                crate::config::model::Direction::Outbound => None,
            },
        })
    }
}

fn fail(kind: EvalErrorKind, key: Option<&str>, message: String) -> EvalError {
    EvalError {
        kind,
        key: key.map(str::to_string),
        action: None,
        message,
    }
}

fn skipped(key: String, reason: &'static str) -> Outcome {
    Outcome {
        key,
        account: None,
        action: Action::Skip,
        body: None,
        skip_reason: Some(reason),
        facts: None,
    }
}
