//! Sinks: where an evaluated record goes.
//!
//! The executor hands a sink a [`Record`] (key, action, mapped body,
//! idempotency key) and gets back a [`Delivery`]: sent (with the
//! destination's id of the record when it told one), skipped, or failed
//! with a dead-letter kind. Everything that is particular to a destination
//! lives in its sink:
//! - [`ProviderSink`] (`provider.rs`): a provider object over HTTP. It knows
//!   the CRM's ways: the id map (which `{id}` a key has), upsert resolution,
//!   a 404 on delete meaning done. The HTTP itself (limits, retries,
//!   breaker, connections) is [`http::ProviderApi`].
//! - [`SubjectSink`] (`nats.rs`): a JetStream subject, each record confirmed
//!   by a publish ack.
//!
//! A new kind of sink is a new file and one arm in [`TargetSink`].

pub mod http;
mod json;
mod nats;
mod provider;

use std::future::Future;

use serde_json::Value;

pub use http::BreakerState;
pub use nats::SubjectSink;
pub use provider::ProviderSink;

use crate::action::Action;
use crate::transient::Trouble;

/// Somewhere records are delivered.
pub trait Sink: Send + Sync {
    /// Delivers one record, retrying as the destination's policy allows.
    fn deliver(&self, record: &Record<'_>) -> impl Future<Output = Delivery> + Send;
}

/// One evaluated record, as the executor hands it over.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    /// The pipeline it comes from (for logs).
    pub pipeline: &'a str,
    pub key: &'a str,
    /// The account it belongs to, for a pipeline that names one: the
    /// provider's limit applies per account.
    pub account: Option<&'a str>,
    /// Never `Skip`: skipped records do not reach a sink.
    pub action: Action,
    /// The mapped, schema-checked body, for actions that send one.
    pub body: Option<&'a Value>,
    /// The stream the change came from, and whether it was delivered
    /// before (a redelivery may be older than what was applied since).
    pub stream: &'a str,
    pub redelivered: bool,
    /// Where a step the record cannot skip reports its failures.
    pub trouble: &'a Trouble,
    /// The same for every delivery of the same message (DESIGN.md §5).
    pub idempotency_key: &'a str,
    /// The message's position in its stream (for logs).
    pub seq: u64,
    /// Two-way: the last modification time of the record syncflow saw at
    /// the target; a provider endpoint with `unmodified_since` refuses the
    /// write (412) if it changed since.
    pub unmodified_since: Option<i64>,
}

/// What became of a record.
#[derive(Debug, Clone, PartialEq)]
pub enum Delivery {
    /// The destination took it.
    Sent {
        /// The HTTP status; `None` for a destination without one (a publish).
        status: Option<u16>,
        /// The destination's id of the record, when it told one.
        id: Option<String>,
        /// Tries it took, the successful one included.
        attempts: u32,
    },
    /// Nothing needed doing.
    Skipped { reason: SkipReason },
    /// No retry can fix it: a dead letter.
    Failed(Failure),
}

/// Why a delivery needed nothing done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// Deleting what syncflow already deleted.
    AlreadyDeleted,
    /// A redelivered change no newer than the last one applied to its key.
    Stale,
    /// A create of a record already there with the same body.
    Unchanged,
    /// Two-way: the target refused the write because the record changed
    /// since syncflow last saw it; that change decides what to write.
    ChangedMeanwhile,
}

impl SkipReason {
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::AlreadyDeleted => "already_deleted",
            SkipReason::Stale => "stale",
            SkipReason::Unchanged => "unchanged",
            SkipReason::ChangedMeanwhile => "changed_meanwhile",
        }
    }
}

/// Why a record could not be delivered, with what its dead letter says.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub kind: FailureKind,
    pub message: String,
    /// The last HTTP status, if a response came back.
    pub status: Option<u16>,
    /// The last response body, truncated.
    pub body: Option<String>,
    /// Tries made (0 when none could be made).
    pub attempts: u32,
}

/// A delivery failure's dead-letter kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// An update or delete of a key whose provider id is not known.
    UnknownId,
    /// A final answer of the destination (a 4xx, a status outside `retry_on`).
    ProviderRejected,
    /// Every attempt failed with a retryable status or a network error.
    RetriesExhausted,
    /// The destination's answer was longer than it may be.
    ResponseTooLarge,
    /// syncflow could not make the request. (Sinks wait such failures out
    /// rather than report them; kept for dead letters of earlier versions.)
    Internal,
}

impl FailureKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::UnknownId => "unknown_id",
            FailureKind::ProviderRejected => "provider_rejected",
            FailureKind::RetriesExhausted => "retries_exhausted",
            FailureKind::ResponseTooLarge => "response_too_large",
            FailureKind::Internal => "internal",
        }
    }
}

/// A pipeline's sink, whatever its kind.
pub enum TargetSink {
    Provider(Box<ProviderSink>),
    Subject(Box<SubjectSink>),
}

impl TargetSink {
    /// Whether each record's delivery reads and writes the id map: two
    /// JetStream round trips besides the request.
    pub fn uses_id_map(&self) -> bool {
        match self {
            TargetSink::Provider(sink) => sink.tracked(),
            TargetSink::Subject(_) => false,
        }
    }

    /// The most records one request carries (1 without batch endpoints).
    pub fn max_batch_records(&self) -> usize {
        match self {
            TargetSink::Provider(sink) => sink.max_batch_records(),
            TargetSink::Subject(_) => 1,
        }
    }
}

impl Sink for TargetSink {
    async fn deliver(&self, record: &Record<'_>) -> Delivery {
        match self {
            TargetSink::Provider(sink) => sink.deliver(record).await,
            TargetSink::Subject(sink) => sink.deliver(record).await,
        }
    }
}
