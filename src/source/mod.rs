//! Where records come from. The executor works on [`SourceMessage`]s and
//! settles them through their [`AckHandle`]; the NATS JetStream pull
//! consumer (`nats`) is the one source today. Inbound sources (provider
//! webhooks, polling) slot in by producing the same messages, with their
//! own way of settling in `AckHandle`.

pub mod nats;

use std::time::Duration;

use bytes::Bytes;

/// One message from a source, owned, with the handle that settles it.
#[derive(Debug)]
pub struct SourceMessage {
    pub subject: String,
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
    /// A header's value, for example `Nats-Msg-Id`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Settles a message with its source (a JetStream acker; other sources
/// will add their own way of settling here).
pub struct AckHandle(pub async_nats::jetstream::message::Acker);

impl std::fmt::Debug for AckHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AckHandle")
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct AckError(String);

impl AckHandle {
    /// Done: the record was delivered, skipped or dead-lettered.
    pub async fn ack(&self) -> Result<(), AckError> {
        self.0.ack().await.map_err(|e| AckError(e.to_string()))
    }

    /// Still working on it (waiting on the limiter, a backoff or an open
    /// breaker): do not redeliver yet.
    pub async fn in_progress(&self) -> Result<(), AckError> {
        use async_nats::jetstream::AckKind;
        self.0
            .ack_with(AckKind::Progress)
            .await
            .map_err(|e| AckError(e.to_string()))
    }

    /// Hand it back for redelivery after `delay` (used when draining).
    pub async fn nak(&self, delay: Option<Duration>) -> Result<(), AckError> {
        use async_nats::jetstream::AckKind;
        self.0
            .ack_with(AckKind::Nak(delay))
            .await
            .map_err(|e| AckError(e.to_string()))
    }
}
