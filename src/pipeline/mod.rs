//! A pipeline compiled from `pipelines/<name>.yaml`, and the per-record
//! evaluation every command shares: message bytes → action + body, or a
//! typed error bound for the dead-letter subject.

pub mod compile;
mod evaluate;
mod target;
mod testcase;

pub use compile::compile;
pub use evaluate::{EvalError, EvalErrorKind, Facts, MessageMeta, Outcome};
pub use target::{SubjectTemplate, Target};
pub use testcase::{TestFailure, run_tests};

use crate::action::Action;
use std::sync::Arc;

use crate::config::model::{
    ChangeShape, Direction, IdempotencyKeyFrom, NatsSourceConfig, TestCase,
};
use crate::expr::{Script, ScriptEngine};
use crate::mapping::{FieldSource, JsonPath, Mapping};
use crate::schema::Schema;
use crate::twoway::Link;

#[derive(Debug, Clone)]
pub struct Pipeline {
    pub name: String,
    /// The NATS source, with `durable` defaulted to the pipeline name.
    pub source: NatsSourceConfig,
    key: FieldSource,
    /// The account a record belongs to, when the pipeline names one.
    account: Option<FieldSource>,
    /// Longer keys are dead letters of kind `key`.
    max_key_bytes: usize,
    /// What idempotency keys are made of.
    pub idempotency_key: IdempotencyKeyFrom,
    record: FieldSource,
    op: Option<JsonPath>,
    input_schema: Option<Schema>,
    when: Option<Script>,
    rules: Vec<Rule>,
    mapping: Mapping,
    output_schema: Option<Schema>,
    pub target: Target,
    /// This pipeline carries one direction of a two-way link.
    pub two_way: Option<TwoWay>,
    pub dead_letter_subject: String,
    pub tests: Vec<TestCase>,
    engine: ScriptEngine,
    /// Hash of the pipeline file and its schemas' texts: on reload, an
    /// unchanged fingerprint (and an unchanged provider) leaves the pipeline
    /// untouched.
    pub fingerprint: u64,
}

/// A pipeline's part in a two-way link.
#[derive(Debug, Clone)]
pub struct TwoWay {
    pub link: Arc<Link>,
    pub direction: Direction,
    /// The change's modification time, in the message.
    modified: JsonPath,
    /// Whether a field missing from a change is empty or unchanged.
    changes: ChangeShape,
    /// Outbound: the provider's id, when System A's record holds it.
    external_id: Option<JsonPath>,
    /// Inbound: System A's key, when the provider's record holds it.
    internal_id: Option<JsonPath>,
}

impl TwoWay {
    /// Inbound: whether the provider's records name System A's key (so an
    /// unlinked record without one needs no wait for its link).
    pub fn names_internal_id(&self) -> bool {
        self.internal_id.is_some()
    }
}

#[derive(Debug, Clone)]
struct Rule {
    condition: Script,
    action: Action,
}

impl Pipeline {
    /// Whether records name the account they belong to.
    pub fn names_accounts(&self) -> bool {
        self.account.is_some()
    }

    /// The JSONPath of the record key, which routes records to lanes.
    pub fn key_path(&self) -> &str {
        self.key.as_str()
    }

    /// Carries a link's provider changes into System A.
    pub fn is_inbound(&self) -> bool {
        self.two_way
            .as_ref()
            .is_some_and(|tw| tw.direction == Direction::Inbound)
    }

    pub fn durable(&self) -> &str {
        self.source.durable.as_deref().unwrap_or(&self.name)
    }
}
