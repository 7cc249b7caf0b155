//! What happens to one message after evaluation: a failed evaluation or a
//! failed delivery becomes a dead letter, a skip is counted, anything else
//! goes to the pipeline's sink. Every path ends with the message ready to be
//! acked.

use std::sync::Arc;

use async_nats::jetstream;
use tokio::time::Instant;

use super::dead_letter::{self, DeadLetter, DeadLetterError, Original, REPLAY_OF_HEADER};
use super::metrics::PipelineMetrics;
use crate::action::Action;
use crate::config::model::IdempotencyKeyFrom;
use crate::pipeline::{EvalError, Outcome, Pipeline};
use crate::sampled::Sampled;
use crate::sink::{Delivery, Failure, Record, Sink, SkipReason, TargetSink};
use crate::source::SourceMessage;
use crate::tap::{Decision, PipelineTap};
use crate::transient::Trouble;

/// Everything a pipeline's lanes share: one version of the pipeline and
/// what it sends through.
pub struct Ctx {
    pub pipeline: Arc<Pipeline>,
    pub sink: TargetSink,
    /// For dead letters.
    pub js: jetstream::Context,
    pub metrics: PipelineMetrics,
    /// Where steps that must succeed report their failures.
    pub trouble: Arc<Trouble>,
    /// One dead-letter log line per second at most.
    pub dead_letter_log: Sampled,
    /// For a pipeline of a two-way link: the link's state and the other side.
    pub two_way: Option<crate::twoway::engine::Runtime>,
    /// Who watches its decisions (`syncflow tap`).
    pub tap: Arc<PipelineTap>,
}

/// Handles one message to the point where it may be acked: delivered,
/// skipped or dead-lettered. The caller acks it. `received`: when the
/// message arrived, for the tap's latency.
pub async fn handle(
    ctx: &Ctx,
    msg: &SourceMessage,
    eval: &Result<Outcome, EvalError>,
    received: Instant,
) {
    let settled = settle(ctx, msg, eval).await;
    if ctx.tap.is_active() {
        offer_to_tap(ctx, msg, eval, &settled, received);
    }
}

/// How a message ended, for the tap.
enum Settled {
    Sent {
        status: Option<u16>,
    },
    /// `skipped` by the rules, or why the sink skipped it (`stale`...).
    Skipped {
        reason: &'static str,
    },
    DeadLetter {
        kind: &'static str,
        status: Option<u16>,
        message: Option<String>,
    },
}

async fn settle(ctx: &Ctx, msg: &SourceMessage, eval: &Result<Outcome, EvalError>) -> Settled {
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
            dead_letter(ctx, msg, letter).await;
            // The message is the evaluation's: the tap reads it there.
            return Settled::DeadLetter {
                kind: e.kind.as_str(),
                status: None,
                message: None,
            };
        }
        Ok(out) if out.action == Action::Skip => {
            ctx.metrics.skipped.increment(1);
            return Settled::Skipped { reason: "skipped" };
        }
        Ok(out) => out,
    };
    let p = &ctx.pipeline;
    let idempotency_key = idempotency_key(p, msg);
    let (seq, redelivered) = match replayed_seq(p, msg) {
        Some(original) => (original, true),
        None => (msg.seq, msg.delivered > 1),
    };
    let record = Record {
        pipeline: &p.name,
        key: &out.key,
        account: out.account.as_deref(),
        action: out.action,
        body: out.body.as_ref(),
        idempotency_key: &idempotency_key,
        stream: &p.source.stream,
        seq,
        redelivered,
        trouble: &ctx.trouble,
        unmodified_since: None,
    };
    let delivery = match (&ctx.two_way, &p.two_way, &out.facts) {
        // Boxed: a two-way delivery's state (the link's id map and echo
        // checks around the send) is thousands of bytes, and inline it would
        // make every pipeline's record future that large, copied whole
        // when its lane boxes it (bench/README.md, "Futures copied").
        (Some(rt), Some(tw), Some(facts)) => {
            Box::pin(crate::twoway::engine::deliver(
                tw, rt, &ctx.sink, &record, facts,
            ))
            .await
        }
        _ => ctx.sink.deliver(&record).await,
    };
    match delivery {
        Delivery::Sent {
            status, attempts, ..
        } => {
            ctx.metrics.retried(attempts);
            ctx.metrics.sent(out.action.as_str(), status);
            Settled::Sent { status }
        }
        Delivery::Skipped { reason } => {
            ctx.metrics.skipped.increment(1);
            if reason == SkipReason::Stale {
                ctx.metrics.stale.increment(1);
            }
            Settled::Skipped {
                reason: reason.as_str(),
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
            Settled::DeadLetter {
                kind: kind.as_str(),
                status,
                message: Some(message),
            }
        }
    }
}

fn offer_to_tap(
    ctx: &Ctx,
    msg: &SourceMessage,
    eval: &Result<Outcome, EvalError>,
    settled: &Settled,
    received: Instant,
) {
    let (key, action) = match eval {
        Ok(out) => (Some(out.key.as_str()), Some(out.action.as_str())),
        Err(e) => (e.key.as_deref(), e.action.map(Action::as_str)),
    };
    ctx.tap.offer(key, action, || {
        let (outcome, status, error_kind, error) = match settled {
            Settled::Sent { status } => ("sent", *status, None, None),
            Settled::Skipped { reason } => (*reason, None, None, None),
            Settled::DeadLetter {
                kind,
                status,
                message,
            } => {
                let message = message
                    .clone()
                    .or_else(|| eval.as_ref().err().map(|e| e.message.clone()));
                ("dead_letter", *status, Some(kind.to_string()), message)
            }
        };
        Decision {
            time_ms: crate::clock::now_ms(),
            seq: msg.seq,
            key: key.map(str::to_string),
            action: action.map(str::to_string),
            outcome: outcome.to_string(),
            status,
            error_kind,
            error,
            body: eval.as_ref().ok().and_then(|o| o.body.clone()),
            latency_ms: received.elapsed().as_secs_f64() * 1000.0,
        }
    });
}

/// Stable across redeliveries, and new for every change: by default
/// `<pipeline>:<stream>:<sequence>`. With `idempotency_key: message_id`,
/// `<pipeline>:<Nats-Msg-Id>` (the sequence when there is none), for
/// publishers that publish one change again under the same id; a provider
/// then answers a reused id with its first answer. Bytes a header value
/// cannot hold (a message id is anyone's text) are percent-encoded.
fn idempotency_key(pipeline: &Pipeline, msg: &SourceMessage) -> String {
    let name = &pipeline.name;
    // Pushed piece by piece: `format!` cost a thousand instructions per
    // record (callgrind, bench `batch`), this a quarter of that.
    let mut key = String::with_capacity(name.len() + pipeline.source.stream.len() + 24);
    key.push_str(name);
    key.push(':');
    match (pipeline.idempotency_key, msg.header("Nats-Msg-Id")) {
        (IdempotencyKeyFrom::MessageId, Some(id)) => key.push_str(id),
        _ => {
            key.push_str(&pipeline.source.stream);
            key.push(':');
            key.push_str(itoa::Buffer::new().format(msg.seq));
        }
    }
    header_safe(key)
}

/// A dead letter replayed by `syncflow dlq replay` is a redelivery of the
/// change it stands for: its original sequence decides whether it is stale
/// (a newer change of the key, or this very replay, was applied since).
fn replayed_seq(pipeline: &Pipeline, msg: &SourceMessage) -> Option<u64> {
    let (stream, seq) = msg.header(REPLAY_OF_HEADER)?.rsplit_once(':')?;
    (stream == pipeline.source.stream).then(|| seq.parse().ok())?
}

/// Visible ASCII as it is; `%` and anything else percent-encoded.
fn header_safe(key: String) -> String {
    if key.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b'%') {
        return key;
    }
    let mut out = String::with_capacity(key.len() + 8);
    for b in key.bytes() {
        if (0x21..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
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
    // The error message stays out of the log: it may quote the record's
    // values (a schema error names the bad email); the dead letter has it.
    ctx.dead_letter_log.warn(|suppressed| {
        tracing::warn!(pipeline = %p.name, key = l.key, kind = l.kind, status = l.status, seq = msg.seq, suppressed, subject = %p.dead_letter_subject, "dead-lettering record");
    });
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
    ctx.trouble
        .retry_until_ok("dead-letter publish", || {
            dead_letter::publish(&ctx.js, &p.dead_letter_subject, &letter)
        })
        .await;
    ctx.metrics.dead_lettered(l.kind);
}

#[cfg(test)]
mod tests {
    use super::header_safe;

    #[test]
    fn idempotency_keys_are_always_valid_header_values() {
        assert_eq!(header_safe("p:CDC:42".into()), "p:CDC:42");
        let odd = header_safe("p:id with spaces\r\nX-Evil: 1 é %".into());
        assert_eq!(odd, "p:id%20with%20spaces%0D%0AX-Evil:%201%20%C3%A9%20%25");
        assert!(http::HeaderValue::from_str(&odd).is_ok());
    }
}
