//! What happens to one message after evaluation: resolve the endpoint (with
//! the id map), send it, record the id, or dead-letter it. Every path ends
//! in an ack; transient trouble with NATS itself is retried in place.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;

use super::dead_letter::{self, DeadLetter, DeadLetterError, Original};
use super::idmap::{IdMap, Known};
use super::metrics::PipelineMetrics;
use crate::action::Action;
use crate::pipeline::{EvalError, Outcome, Pipeline};
use crate::provider::EndpointKind;
use crate::sink::{HttpSink, Sink, SinkError, SinkErrorKind, SinkRequest};
use crate::source::SourceMessage;

/// Everything a pipeline's lanes share.
pub struct Ctx {
    pub pipeline: Arc<Pipeline>,
    pub sink: Arc<HttpSink>,
    pub idmap: IdMap,
    pub js: jetstream::Context,
    pub metrics: PipelineMetrics,
}

/// A failure that is nobody's fault but the moment's (NATS briefly away):
/// retried with backoff until it works or the pipeline is drained.
async fn persist<T, E: std::fmt::Display, F, Fut>(ctx: &Ctx, what: &'static str, mut op: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut backoff = Duration::from_millis(100);
    loop {
        match op().await {
            Ok(v) => return v,
            Err(e) => {
                tracing::warn!(pipeline = %ctx.pipeline.name, what, error = %e, retry_in_ms = backoff.as_millis() as u64, "transient failure, retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Handles one message to the point where it may be acked: delivered,
/// skipped or dead-lettered. The caller acks it.
pub async fn handle(ctx: &Ctx, msg: &SourceMessage, eval: &Result<Outcome, EvalError>) {
    match eval {
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
        }
        Ok(out) if out.action == Action::Skip => ctx.metrics.skipped.increment(1),
        Ok(out) => deliver(ctx, msg, out).await,
    }
}

async fn deliver(ctx: &Ctx, msg: &SourceMessage, out: &Outcome) {
    let p = &ctx.pipeline;
    let (provider, object_name) = (&p.provider.name, p.object.as_str());
    let object = &p.provider.objects[object_name];
    let lookup = || {
        persist(ctx, "id map read", || {
            ctx.idmap.lookup(provider, object_name, &out.key)
        })
    };

    let endpoint = match out.action {
        Action::Create => EndpointKind::Create,
        Action::Update => EndpointKind::Update,
        Action::Delete => EndpointKind::Delete,
        Action::Read => EndpointKind::Read,
        Action::Upsert if object.upsert.is_some() => EndpointKind::Upsert,
        Action::Upsert => match lookup().await {
            Known::Id(_) => EndpointKind::Update,
            Known::Deleted | Known::Unknown => EndpointKind::Create,
        },
        Action::Skip => unreachable!("skips are acked without sending"),
    };
    let needs_id = object
        .endpoint(endpoint)
        .is_some_and(|ep| ep.path.needs_id());
    let known = if needs_id {
        lookup().await
    } else {
        Known::Unknown
    };
    let id = match &known {
        Known::Id(id) => Some(id.clone()),
        // Deleting what syncflow already deleted is the outcome we wanted,
        // like a 404 on delete: a redelivery after the delete went through
        // (a crash before the ack, a drain deadline) must not dead-letter.
        Known::Deleted if endpoint == EndpointKind::Delete => {
            tracing::info!(pipeline = %p.name, key = %out.key, seq = msg.seq, "record already deleted; nothing to send");
            ctx.metrics.skipped.increment(1);
            return;
        }
        Known::Deleted | Known::Unknown => None,
    };
    if needs_id && id.is_none() {
        let message = if known == Known::Deleted {
            format!(
                "the {provider} record of key \"{}\" was deleted through syncflow",
                out.key
            )
        } else {
            format!(
                "no {provider} id is known for key \"{}\": it was never created through syncflow, or its create failed",
                out.key
            )
        };
        let letter = Letter {
            key: Some(&out.key),
            action: Some(out.action.as_str()),
            kind: "unknown_id",
            message: &message,
            status: None,
            body: None,
            attempts: 0,
        };
        dead_letter(ctx, msg, letter).await;
        return;
    }

    let idempotency_key = match msg.header("Nats-Msg-Id") {
        Some(id) => format!("{}:{id}", p.name),
        None => format!("{}:{}", p.name, msg.seq),
    };
    let request = SinkRequest {
        object: object_name,
        endpoint,
        key: &out.key,
        id: id.as_deref(),
        body: out.body.as_ref(),
        idempotency_key: &idempotency_key,
    };
    match ctx.sink.send(request).await {
        Ok(resp) => {
            ctx.metrics
                .retries
                .increment(u64::from(resp.attempts.saturating_sub(1)));
            ctx.metrics.sent(out.action.as_str(), resp.status);
            if let Some(new_id) = &resp.provider_id {
                persist(ctx, "id map write", || {
                    ctx.idmap.put(provider, object_name, &out.key, new_id)
                })
                .await;
            }
            if endpoint == EndpointKind::Delete {
                persist(ctx, "id map delete", || {
                    ctx.idmap.remove(provider, object_name, &out.key)
                })
                .await;
            }
        }
        // Deleting what is already gone is the outcome we wanted.
        Err(SinkError {
            kind: SinkErrorKind::NotFound,
            status,
            attempts,
            ..
        }) if endpoint == EndpointKind::Delete => {
            ctx.metrics
                .retries
                .increment(u64::from(attempts.saturating_sub(1)));
            ctx.metrics.sent(out.action.as_str(), status.unwrap_or(404));
            persist(ctx, "id map delete", || {
                ctx.idmap.remove(provider, object_name, &out.key)
            })
            .await;
        }
        Err(e) => {
            ctx.metrics
                .retries
                .increment(u64::from(e.attempts.saturating_sub(1)));
            let kind = match e.kind {
                SinkErrorKind::Rejected | SinkErrorKind::NotFound => "provider_rejected",
                SinkErrorKind::RetriesExhausted => "retries_exhausted",
                SinkErrorKind::Internal => "internal",
            };
            let letter = Letter {
                key: Some(&out.key),
                action: Some(out.action.as_str()),
                kind,
                message: &e.message,
                status: e.status,
                body: e.body.as_deref(),
                attempts: e.attempts,
            };
            dead_letter(ctx, msg, letter).await;
        }
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
    persist(ctx, "dead-letter publish", || {
        dead_letter::publish(&ctx.js, &p.dead_letter_subject, &letter)
    })
    .await;
    ctx.metrics.dead_lettered(l.kind);
}
