//! The provider's HTTP API as syncflow calls it ([`ProviderApi`], DESIGN.md
//! §2, §5): it renders the endpoint, paces every attempt through the
//! provider's rate limiter, bounds concurrency, retries with backoff and
//! `Retry-After`, and holds callers back while the provider's circuit
//! breaker is open. What a record means to the CRM (which endpoint, which
//! id) is decided above it, in the provider sink (`sink/provider.rs`).
//!
//! ```text
//! send(req) ─ prepare: endpoint, URL, body (Internal error if impossible)
//!   └─ per attempt: breaker (wait while open) → in-flight slot
//!        → its connection ready (opened if need be) → rate limiter → HTTP → classify
//!          2xx ─────────────────────────→ Ok(ApiResponse)
//!          404 on update/delete/read ───→ Err(NotFound)
//!          other status not in retry_on → Err(Rejected)
//!          retry_on status, connect error, timeout, other network error
//!            → sleep (Retry-After, else full-jitter backoff) and try again,
//!              or Err(RetriesExhausted) after `retry.max_attempts` tries
//! ```
//!
//! - Concurrency: `max_in_flight` slots per provider, held for one attempt
//!   (never while backing off or waiting on the breaker). The slot is taken
//!   before the rate limiter so that a granted rate-limit cell is used at
//!   once: holding it while queueing for a slot would let requests bunch up.
//! - Connections (`slots.rs`, `conn.rs`, docs/sink-connections.md): each
//!   slot has an HTTP/1.1 connection of its own, made ready before the cell
//!   is taken; one that closed while the request waited is opened again, and
//!   a cell that went stale meanwhile is traded for a fresh one.
//! - Backoff: sleep uniform in `[0, min(max_backoff, initial_backoff·2^(n−1))]`
//!   after the n-th failed attempt. A `Retry-After` header (delta-seconds or
//!   HTTP date) replaces it and is honoured in full, even beyond
//!   `max_backoff`. A date in the past means no wait.
//! - Retry-After (`pause.rs`): up to `retry.max_retry_after`, it pauses
//!   every request to the provider until then (a 429's to a request of an
//!   account: that account's); longer, the attempt counts as failed and the
//!   usual backoff applies. An account's 429 is not the provider failing:
//!   it does not count towards the breaker.
//! - Quota (`quota`, limiter/quota.rs): every attempt spends one of the
//!   provider's (or the account's) quota; a spent quota waits for its reset.
//! - Circuit breaker (`breaker.rs`): `failure_threshold` consecutive requests
//!   that failed on the provider's side open it. While open, `send` waits
//!   instead of failing; after `open_for`, one attempt goes through as the
//!   probe, whose outcome closes or re-opens it. A probe's attempt does not
//!   count against its record's `max_attempts`.
//! - Outages are not the record's fault: a request whose attempts ran out
//!   while the provider served nobody (no success since it began) and other
//!   requests failed too counts towards the breaker and starts over, waiting
//!   for the provider, instead of becoming a dead letter. A record failing
//!   on its own, alone or beside successes, is dead-lettered in time.
//! - Response bodies are read up to `max_response_bytes`; a longer one is a
//!   [`ApiErrorKind::ResponseTooLarge`] failure, never read whole.
//! - Headers: the provider's (auth included; marked sensitive and never
//!   logged), `content-type: application/json` with a body, and the
//!   idempotency header carrying the same `idempotency_key` on every attempt.
//!   Redirects are not followed: a 3xx is a wrong `base_url`, reported as
//!   [`ApiErrorKind::Rejected`].
//! - Metrics (label `provider`): `syncflow_provider_in_flight`,
//!   `syncflow_provider_requests_total` and `syncflow_provider_request_seconds`
//!   (plus `status`: the HTTP status, or `timeout` / `connect` / `network`),
//!   `syncflow_provider_retries_total`, `syncflow_provider_breaker_open`
//!   (0 closed, 1 open, 0.5 half-open), `syncflow_provider_limiter_wait_seconds`.

mod account;
mod api;
pub mod batch;
mod batcher;
mod breaker;
mod conn;
mod credentials;
mod fields;
mod metrics;
mod oauth;
mod pause;
mod retry;
mod slots;
#[cfg(test)]
mod test_server;
#[cfg(test)]
mod tests;
pub mod tls;
mod verdict;
mod wire;

pub use api::{ApiBuildError, ProviderApi};
pub use batcher::Batcher;
pub use breaker::BreakerState;

use crate::error::{Fault, Retry};
pub use crate::provider::EndpointKind;

/// One record's request, as resolved by the provider sink.
#[derive(Debug, Clone, Copy)]
pub struct ApiRequest<'a> {
    /// The provider object (`contact`).
    pub object: &'a str,
    /// The concrete endpoint: an `upsert` action is already resolved to
    /// create or update when the object has no upsert endpoint.
    pub endpoint: EndpointKind,
    /// The record key, for `{key}` in the path.
    pub key: &'a str,
    /// The record's account: its own rate limit.
    pub account: Option<&'a str>,
    /// The provider's id of the record, for `{id}` in the path.
    pub id: Option<&'a str>,
    pub body: Option<&'a serde_json::Value>,
    /// Sent in the provider's idempotency header on every attempt; stable
    /// across redeliveries.
    pub idempotency_key: &'a str,
    /// The last modification time of the record syncflow saw (ms), for an
    /// endpoint's `unmodified_since` header.
    pub unmodified_since: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct ApiResponse {
    pub status: u16,
    /// The response body as received (parsed only when asked: most records
    /// need nothing from it, or only `provider_id`).
    pub body: bytes::Bytes,
    /// The endpoint's `id_from` applied to the body; numbers become strings.
    pub provider_id: Option<String>,
    /// Tries it took, the successful one included.
    pub attempts: u32,
    /// The request's JSON body as sent, for a record sent on its own (not
    /// in a batch): the id map hashes these bytes rather than serialize
    /// the body a second time.
    pub sent: Option<bytes::Bytes>,
}

impl ApiResponse {
    /// The body: JSON when it parses, else the text as a string; `None`
    /// when empty.
    pub fn json(&self) -> Option<serde_json::Value> {
        (!self.body.is_empty()).then(|| {
            serde_json::from_slice(&self.body).unwrap_or_else(|_| {
                serde_json::Value::String(String::from_utf8_lossy(&self.body).into_owned())
            })
        })
    }
}

/// A request that did not succeed, with everything a dead letter needs.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub kind: ApiErrorKind,
    /// The last HTTP status, if a response came back.
    pub status: Option<u16>,
    /// The last response body, truncated to [`BODY_LIMIT`] bytes.
    pub body: Option<String>,
    /// Tries made (0 when the request could not be made at all).
    pub attempts: u32,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiErrorKind {
    /// A final status outside `retry_on`: usually a 4xx (the record's or the
    /// config's fault); a 3xx (wrong `base_url`) or an unlisted 5xx too.
    Rejected,
    /// 404 on update, delete or read: the record is gone at the provider.
    NotFound,
    /// Every attempt failed with a retryable status or a network error.
    RetriesExhausted,
    /// The response body was longer than the provider's `max_response_bytes`.
    ResponseTooLarge,
    /// syncflow could not make the request: an `{id}` path without an id, an
    /// endpoint the object does not have, a stopped rate limiter.
    Internal,
}

/// The longest provider id the id map keeps.
pub const MAX_ID_BYTES: usize = 512;

/// Whether a provider id read from a response can be kept and put in a
/// path: not empty, at most [`MAX_ID_BYTES`], no control characters.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_ID_BYTES && !id.chars().any(char::is_control)
}

/// How much of an error response body a [`ApiError`] keeps.
pub const BODY_LIMIT: usize = 4096;

impl ApiError {
    pub fn fault(&self) -> Fault {
        match self.kind {
            ApiErrorKind::Rejected if self.status.is_some_and(|s| s >= 500) => Fault::External,
            ApiErrorKind::Rejected => Fault::User,
            ApiErrorKind::NotFound
            | ApiErrorKind::RetriesExhausted
            | ApiErrorKind::ResponseTooLarge => Fault::External,
            ApiErrorKind::Internal => Fault::Internal,
        }
    }

    /// Whether sending the same record later may succeed.
    pub fn retry(&self) -> Retry {
        match self.kind {
            ApiErrorKind::RetriesExhausted => Retry::WithBackoff,
            ApiErrorKind::Rejected
            | ApiErrorKind::NotFound
            | ApiErrorKind::ResponseTooLarge
            | ApiErrorKind::Internal => Retry::No,
        }
    }
}
