//! `POST /hooks/<provider>` on syncflow's HTTP listener: a request is
//! answered 2xx only after each of its events is stored in JetStream.
//! Refused requests store nothing:
//!
//! | outcome | status |
//! |---|---|
//! | no such provider, or no webhook for it | 404 |
//! | body over `max_body_bytes` | 413 |
//! | signature or timestamp missing, wrong, or too old | 401 |
//! | not JSON, no events | 400 |
//! | an event that cannot be read, or for an unknown object | 422 |
//! | JetStream did not store every event | 503 (the provider retries) |
//!
//! Each is counted in `syncflow_webhook_requests_total{provider, outcome}`.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use async_nats::jetstream;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header::HOST};
use axum::routing::post;

use super::webhook::{Refused, Request, Webhook};
use super::{Envelope, store};
use crate::clock::now_ms;
use crate::expr::ScriptEngine;
use crate::metric_handles::Handles;

/// The webhooks syncflow answers, swapped whole on reload.
#[derive(Clone, Default)]
pub struct Hooks {
    current: Arc<RwLock<Arc<Registry>>>,
    requests: Arc<Counts>,
}

type Counts = Handles<(String, &'static str), metrics::Counter>;

impl Default for Handles<(String, &'static str), metrics::Counter> {
    fn default() -> Self {
        Handles::new(
            |(provider, outcome): &(String, &'static str)| metrics::counter!("syncflow_webhook_requests_total", "provider" => provider.clone(), "outcome" => *outcome),
        )
    }
}

/// What answers webhooks now.
#[derive(Default)]
pub struct Registry {
    pub webhooks: BTreeMap<String, Arc<Webhook>>,
    pub engine: ScriptEngine,
    pub js: Option<jetstream::Context>,
}

impl Hooks {
    /// Puts a new set of webhooks in place (at start and on reload).
    pub fn set(&self, registry: Registry) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(registry);
    }

    fn registry(&self) -> Arc<Registry> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn count(&self, provider: &str, outcome: &'static str) {
        self.requests
            .get((provider.to_string(), outcome))
            .increment(1);
    }

    pub fn router(&self) -> Router {
        Router::new()
            .route("/hooks/{provider}", post(hook))
            .with_state(self.clone())
    }
}

/// How much of a body over the limit is read (and dropped) so that its
/// sender, still writing, gets the 413 rather than a broken connection.
const DRAIN_BYTES: usize = 64 * 1024 * 1024;
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(5);

/// The body, if it is at most `limit` bytes (and arrived whole). Past the
/// limit nothing more is kept, but the rest is read a while longer, as
/// servers linger before closing: a client that has not finished sending
/// would miss the answer.
async fn read_body(body: Body, limit: usize) -> Option<axum::body::Bytes> {
    use futures::StreamExt;
    let mut stream = body.into_data_stream();
    let mut kept = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.ok()?;
        if kept.len() + chunk.len() > limit {
            let mut drained = 0;
            let _ = tokio::time::timeout(DRAIN_TIME, async {
                while let Some(Ok(chunk)) = stream.next().await {
                    drained += chunk.len();
                    if drained > DRAIN_BYTES {
                        break;
                    }
                }
            })
            .await;
            return None;
        }
        kept.extend_from_slice(&chunk);
    }
    Some(kept.into())
}

async fn hook(
    State(hooks): State<Hooks>,
    Path(provider): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> (StatusCode, String) {
    let registry = hooks.registry();
    let (Some(webhook), Some(js)) = (registry.webhooks.get(&provider), &registry.js) else {
        hooks.count("(unknown)", "unknown_provider");
        return (
            StatusCode::NOT_FOUND,
            format!("no webhook for provider \"{provider}\"\n"),
        );
    };
    let limit = usize::try_from(webhook.max_body_bytes).unwrap_or(usize::MAX);
    let Some(body) = read_body(body, limit).await else {
        hooks.count(&provider, "too_large");
        return (
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body over {} bytes\n", webhook.max_body_bytes),
        );
    };
    let request = Request {
        method: method.as_str(),
        host: headers.get(HOST).and_then(|h| h.to_str().ok()),
        path_and_query: uri.path_and_query().map_or("/", |p| p.as_str()),
        headers: &headers,
        body: &body,
    };
    let envelopes: Vec<Envelope> = match webhook.accept(&request, &registry.engine, now_ms()) {
        Ok(envelopes) => envelopes,
        Err(refused) => {
            hooks.count(&provider, refused.label());
            if let Refused::Signature(_) = refused {
                tracing::warn!(provider = %provider, outcome = refused.label(), "webhook refused");
            }
            let status = StatusCode::from_u16(refused.status()).expect("a status");
            return (status, format!("{}\n", refused.message()));
        }
    };
    match store(js, &envelopes).await {
        Ok(()) => {
            hooks.count(&provider, "accepted");
            metrics::counter!("syncflow_webhook_events_total", "provider" => provider.clone())
                .increment(envelopes.len() as u64);
            (
                StatusCode::OK,
                format!("stored {} events\n", envelopes.len()),
            )
        }
        Err(e) => {
            hooks.count(&provider, "store_failed");
            tracing::warn!(provider = %provider, error = %e, "webhook events not stored; the provider will retry");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "events not stored; retry later\n".into(),
            )
        }
    }
}
