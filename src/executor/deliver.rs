//! What happens to one message after evaluation: a failed evaluation or a
//! failed delivery becomes a dead letter, a skip is counted, anything else
//! goes to the pipeline's sink. Every path ends with the message ready to be
//! acked.

use std::sync::Arc;

use async_nats::jetstream;

use super::dead_letter::{self, DeadLetter, DeadLetterError, Original};
use super::metrics::PipelineMetrics;
use crate::action::Action;
use crate::config::model::IdempotencyKeyFrom;
use crate::pipeline::{EvalError, Outcome, Pipeline};
use crate::sink::{Delivery, Failure, Record, Sink, SkipReason, TargetSink};
use crate::source::SourceMessage;
use crate::transient::retry_until_ok;

/// Everything a pipeline's lanes share: one version of the pipeline and
/// what it sends through.
pub struct Ctx {
    pub pipeline: Arc<Pipeline>,
    pub sink: TargetSink,
    /// For dead letters.
    pub js: jetstream::Context,
    pub metrics: PipelineMetrics,
}

/// Handles one message to the point where it may be acked: delivered,
/// skipped or dead-lettered. The caller acks it.
pub async fn handle(ctx: &Ctx, msg: &SourceMessage, eval: &Result<Outcome, EvalError>) {
    let out = match eval {
        Err(e) => {
            let letter = Letter {
                key: e.key.as_deref(),
                action: e.action.map(Action::as_str),
                kind: e.kind.as_str(),
                message: &e.message,
                status: None,
                body: None,
                attempts: 0,
            };
            return dead_letter(ctx, msg, letter).await;
        }
        Ok(out) if out.action == Action::Skip => return ctx.metrics.skipped.increment(1),
        Ok(out) => out,
    };
    let p = &ctx.pipeline;
    let idempotency_key = idempotency_key(p, msg);
    let record = Record {
        pipeline: &p.name,
        key: &out.key,
        action: out.action,
        body: out.body.as_ref(),
        idempotency_key: &idempotency_key,
        stream: &p.source.stream,
        seq: msg.seq,
        redelivered: msg.delivered > 1,
    };
    match ctx.sink.deliver(&record).await {
        Delivery::Sent {
            status, attempts, ..
        } => {
            ctx.metrics.retried(attempts);
            ctx.metrics.sent(out.action.as_str(), status);
        }
        Delivery::Skipped { reason } => {
            ctx.metrics.skipped.increment(1);
            if reason == SkipReason::Stale {
                ctx.metrics.stale.increment(1);
            }
        }
        Delivery::Failed(Failure {
            kind,
            message,
            status,
            body,
            attempts,
        }) => {
            ctx.metrics.retried(attempts);
            let letter = Letter {
                key: Some(&out.key),
                action: Some(out.action.as_str()),
                kind: kind.as_str(),
                message: &message,
                status,
                body: body.as_deref(),
                attempts,
            };
            dead_letter(ctx, msg, letter).await;
        }
    }
}

/// Stable across redeliveries, and new for every change: by default
/// `<pipeline>:<stream>:<sequence>`. With `idempotency_key: message_id`,
/// `<pipeline>:<Nats-Msg-Id>` (the sequence when there is none), for
/// publishers that publish one change again under the same id; a provider
/// then answers a reused id with its first answer.
fn idempotency_key(pipeline: &Pipeline, msg: &SourceMessage) -> String {
    let name = &pipeline.name;
    match (pipeline.idempotency_key, msg.header("Nats-Msg-Id")) {
        (IdempotencyKeyFrom::MessageId, Some(id)) => format!("{name}:{id}"),
        _ => format!("{name}:{}:{}", pipeline.source.stream, msg.seq),
    }
}

struct Letter<'a> {
    key: Option<&'a str>,
    action: Option<&'static str>,
    kind: &'static str,
    message: &'a str,
    status: Option<u16>,
    body: Option<&'a str>,
    attempts: u32,
}

async fn dead_letter(ctx: &Ctx, msg: &SourceMessage, l: Letter<'_>) {
    let p = &ctx.pipeline;
    tracing::warn!(pipeline = %p.name, key = l.key, kind = l.kind, status = l.status, seq = msg.seq, error = l.message, "dead-lettering record");
    let letter = DeadLetter {
        pipeline: &p.name,
        key: l.key,
        action: l.action,
        error: DeadLetterError {
            kind: l.kind,
            message: l.message,
            status: l.status,
            body: l.body,
        },
        attempts: l.attempts,
        original: Original::of(&p.source.stream, msg),
    };
    retry_until_ok(&p.name, "dead-letter publish", || {
        dead_letter::publish(&ctx.js, &p.dead_letter_subject, &letter)
    })
    .await;
    ctx.metrics.dead_lettered(l.kind);
}
