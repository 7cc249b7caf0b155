//! Where a pipeline's records come from.
//!
//! The executor sees a [`Source`]: a stream of [`SourceMessage`]s, each with
//! the [`AckHandle`] that settles it. How messages are fetched, kept in
//! order across restarts and acknowledged is the source's business; the one
//! kind today is a JetStream durable pull consumer ([`jetstream`]). Provider
//! changes (webhooks, polling) are stored in JetStream first, so they reach
//! pipelines through the same source.

pub mod jetstream;

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;

pub use jetstream::JetStreamSource;

/// A stream of messages for one pipeline.
///
/// A source stops when the stop signal it was built with turns true: it
/// hands back (for redelivery) whatever it holds that it has not given out,
/// and [`Source::next`] returns `None`.
pub trait Source: Send {
    /// The next message, waiting as long as it takes (reconnecting when
    /// the source is cut off); `None` once stopped.
    fn next(&mut self) -> impl Future<Output = Option<SourceMessage>> + Send;

    /// Called once every message the source gave out has been settled:
    /// delivers what settling left pending (gathered acks).
    fn close(self) -> impl Future<Output = ()> + Send;
}

/// One message from a source, owned, with the handle that settles it.
#[derive(Debug)]
pub struct SourceMessage {
    /// As the client received it: no copy of its own (it derefs to `str`).
    pub subject: async_nats::Subject,
    /// Position in the source (the JetStream stream sequence): ordering,
    /// idempotency keys and dead letters refer to it.
    pub seq: u64,
    pub timestamp_ms: Option<i64>,
    pub headers: Vec<(String, String)>,
    pub payload: Bytes,
    /// How many times the source has delivered this message (1 = first).
    pub delivered: i64,
    pub ack: AckHandle,
}

impl SourceMessage {
    /// Hands it back to its source for redelivery now, rather than after
    /// `ack_wait`; a failure is logged (it then comes after `ack_wait`).
    pub async fn hand_back(&self, pipeline: &str) {
        if let Err(e) = self.ack.nak(None).await {
            tracing::warn!(pipeline, seq = self.seq, error = %e, "could not hand message back; it will be redelivered after ack_wait");
        }
    }

    /// A header's value, for example `Nats-Msg-Id`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Settles a message with the source that gave it out.
#[derive(Debug)]
pub struct AckHandle(Settle);

/// One way of settling per kind of source.
#[derive(Debug)]
enum Settle {
    JetStream(jetstream::Ack),
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct AckError(String);

impl AckHandle {
    /// The bytes the message counts for in its pipeline's
    /// `max_ack_pending_bytes`.
    pub fn held_bytes(&self) -> usize {
        match &self.0 {
            Settle::JetStream(ack) => ack.held_bytes(),
        }
    }

    /// Done: the record was delivered, skipped or dead-lettered. The source
    /// may gather acks and send them together; a lost ack means a
    /// redelivery, which the idempotency key makes harmless.
    pub fn ack(self, seq: u64) {
        match self.0 {
            Settle::JetStream(ack) => ack.ack(seq),
        }
    }

    /// Whether the lease the message was pulled under is lost (a fleet's
    /// partition taken over): it is the new holder's now, not to be sent,
    /// acked or handed back from here.
    pub fn fenced(&self) -> bool {
        match &self.0 {
            Settle::JetStream(ack) => ack.fenced(),
        }
    }

    /// Resolves once [`fenced`](Self::fenced); never for a message pulled
    /// without a lease.
    pub async fn wait_fenced(&self) {
        match &self.0 {
            Settle::JetStream(ack) => ack.wait_fenced().await,
        }
    }

    /// Still working on it (waiting on the limiter, a backoff or an open
    /// breaker): do not redeliver yet.
    pub async fn in_progress(&self) -> Result<(), AckError> {
        match &self.0 {
            Settle::JetStream(ack) => ack.in_progress().await,
        }
    }

    /// Hand it back for redelivery, after `delay` if given.
    pub async fn nak(&self, delay: Option<Duration>) -> Result<(), AckError> {
        match &self.0 {
            Settle::JetStream(ack) => ack.nak(delay).await,
        }
    }
}
