//! Provider changes into JetStream (DESIGN.md §7): webhooks (`webhook`,
//! `http`) and polling (`poll`), both read into one envelope shape
//! (`envelope`) and stored with a JetStream publish ack before anything
//! else happens, deduplicated by `Nats-Msg-Id`. From there, inbound
//! pipelines read them as they read System A's changes.

pub mod envelope;
pub mod http;
pub mod poll;
pub mod signature;
pub mod webhook;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use async_nats::jetstream;

pub use envelope::{Change, Envelope};
pub use poll::Poll;
pub use webhook::Webhook;

use crate::config::diagnostics::Diagnostics;
use crate::config::load::Sourced;
use crate::config::model::{JetStreamGlobals, ProviderConfig};
use crate::expr::ScriptEngine;

/// The stream syncflow keeps provider changes in.
pub const STREAM: &str = "SYNCFLOW_INBOUND";
/// How long a change's `Nats-Msg-Id` is remembered: a provider's retry or
/// duplicate within it is stored once (HubSpot retries for longer; the
/// pipelines' applied positions catch what comes later).
pub const DEDUPE_WINDOW: Duration = Duration::from_secs(3600);

/// Where the changes of `provider`'s `object` are stored.
pub fn subject(provider: &str, object: &str) -> String {
    format!("syncflow.inbound.{provider}.{object}")
}

/// A provider's ways of telling its changes.
#[derive(Debug, Clone, Default)]
pub struct Inbound {
    pub webhook: Option<Webhook>,
    /// By object.
    pub polls: BTreeMap<String, Poll>,
}

/// Checks and compiles a provider's `inbound`; `None` when it has errors
/// (all of them in `diags`), or none when it has no `inbound`.
pub fn compile(
    src: &Sourced<ProviderConfig>,
    engine: &ScriptEngine,
    diags: &mut Diagnostics,
) -> Option<Inbound> {
    let (cfg, file) = (&src.value, &src.file);
    let Some(inbound) = &cfg.inbound else {
        return Some(Inbound::default());
    };
    let before = diags.len();
    let objects: BTreeSet<String> = cfg.objects.keys().cloned().collect();
    let webhook = inbound
        .webhook
        .as_ref()
        .map(|config| Webhook::compile(&cfg.name, objects.clone(), config, file, engine, diags));
    let mut polls = BTreeMap::new();
    for (object, config) in &inbound.poll {
        if let Some(poll) = Poll::compile(&cfg.name, object, &objects, config, file, engine, diags)
        {
            polls.insert(object.clone(), poll);
        }
    }
    (diags.len() == before).then(|| Inbound {
        webhook: webhook.flatten(),
        polls,
    })
}

#[derive(Debug, thiserror::Error)]
#[error("storing provider changes: {0}")]
pub struct StoreError(String);

/// Makes sure [`STREAM`] exists, capturing every provider's changes.
pub async fn ensure_stream(
    js: &jetstream::Context,
    settings: &JetStreamGlobals,
) -> Result<(), StoreError> {
    js.get_or_create_stream(jetstream::stream::Config {
        name: STREAM.to_string(),
        description: Some("syncflow: provider changes, from webhooks and polls".into()),
        subjects: vec!["syncflow.inbound.>".to_string()],
        storage: jetstream::stream::StorageType::File,
        duplicate_window: DEDUPE_WINDOW,
        num_replicas: settings.replicas,
        max_age: Duration::from_secs(7 * 24 * 3600),
        ..Default::default()
    })
    .await
    .map(|_| ())
    .map_err(|e| StoreError(e.to_string()))
}

/// Stores `envelopes`, each under its `event_id`, and returns once
/// JetStream has acked every one (publishes are in flight together).
pub async fn store(js: &jetstream::Context, envelopes: &[Envelope]) -> Result<(), StoreError> {
    let mut acks = Vec::with_capacity(envelopes.len());
    for envelope in envelopes {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", envelope.event_id.as_str());
        let payload = serde_json::to_vec(envelope).map_err(|e| StoreError(e.to_string()))?;
        let ack = js
            .publish_with_headers(
                subject(&envelope.provider, &envelope.object),
                headers,
                payload.into(),
            )
            .await
            .map_err(|e| StoreError(e.to_string()))?;
        acks.push(ack);
    }
    for ack in acks {
        ack.await.map_err(|e| StoreError(e.to_string()))?;
    }
    Ok(())
}
