//! Dead letters: a record no retry can fix, with everything needed to
//! understand and replay it, published to the pipeline's dead-letter subject
//! and confirmed by JetStream before the original is acked.

use async_nats::jetstream;
use base64::Engine as _;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::config::model::JetStreamGlobals;
use crate::source::SourceMessage;

/// The stream syncflow creates for dead-letter subjects no stream captures.
pub const DLQ_STREAM: &str = "SYNCFLOW_DLQ";

/// The header of a replayed dead letter's message (`syncflow dlq replay`):
/// `<stream>:<sequence>` of the change it stands for.
pub const REPLAY_OF_HEADER: &str = "Syncflow-Replay-Of";

#[derive(Debug, Serialize)]
pub struct DeadLetter<'a> {
    pub pipeline: &'a str,
    pub key: Option<&'a str>,
    pub action: Option<&'a str>,
    pub error: DeadLetterError<'a>,
    pub attempts: u32,
    pub original: Original<'a>,
}

#[derive(Debug, Serialize)]
pub struct DeadLetterError<'a> {
    /// decode, key, input_schema, script, mapping, output_schema,
    /// unknown_id, provider_rejected, retries_exhausted, internal.
    pub kind: &'a str,
    pub message: &'a str,
    pub status: Option<u16>,
    pub body: Option<&'a str>,
}

#[derive(Debug, Serialize)]
pub struct Original<'a> {
    pub stream: &'a str,
    pub subject: &'a str,
    pub sequence: u64,
    pub delivered: i64,
    pub timestamp_ms: Option<i64>,
    pub headers: Map<String, Value>,
    /// The payload as JSON when it is JSON, else as text when it is UTF-8.
    pub data: Value,
    /// The payload in base64 when it is not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_base64: Option<String>,
}

impl<'a> Original<'a> {
    pub fn of(stream: &'a str, msg: &'a SourceMessage) -> Self {
        let (data, data_base64) = match serde_json::from_slice::<Value>(&msg.payload) {
            Ok(v) => (v, None),
            Err(_) => match std::str::from_utf8(&msg.payload) {
                Ok(text) => (Value::String(text.to_string()), None),
                Err(_) => (
                    Value::Null,
                    Some(base64::engine::general_purpose::STANDARD.encode(&msg.payload)),
                ),
            },
        };
        Original {
            stream,
            subject: &msg.subject,
            sequence: msg.seq,
            delivered: msg.delivered,
            timestamp_ms: msg.timestamp_ms,
            headers: msg
                .headers
                .iter()
                .filter(|(name, _)| kept_header(name))
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect(),
            data,
            data_base64,
        }
    }
}

/// Whether a message header goes into its dead letter. Dead letters are
/// kept and read by people: credentials (`Authorization`, a webhook's
/// signature, anything not known to be harmless) stay out.
fn kept_header(name: &str) -> bool {
    const KEPT: [&str; 4] = ["nats-msg-id", "content-type", "traceparent", "tracestate"];
    const KEPT_PREFIXES: [&str; 3] = ["syncflow-", "ce-", "nats-expected-"];
    let name = name.to_ascii_lowercase();
    KEPT.contains(&name.as_str()) || KEPT_PREFIXES.iter().any(|p| name.starts_with(p))
}

#[derive(Debug, thiserror::Error)]
#[error("dead-letter publish to {subject} failed: {message}")]
pub struct PublishError {
    pub subject: String,
    pub message: String,
}

/// Publishes and waits for JetStream's ack. The `Nats-Msg-Id` makes a
/// re-publish after a crash a no-op within the stream's dedup window.
pub async fn publish(
    js: &jetstream::Context,
    subject: &str,
    letter: &DeadLetter<'_>,
) -> Result<(), PublishError> {
    let fail = |message: String| PublishError {
        subject: subject.to_string(),
        message,
    };
    let body = serde_json::to_vec(letter).map_err(|e| fail(e.to_string()))?;
    let mut headers = async_nats::HeaderMap::new();
    let id = format!(
        "{}:{}:{}",
        letter.pipeline, letter.original.stream, letter.original.sequence
    );
    headers.insert("Nats-Msg-Id", id.as_str());
    js.publish_with_headers(subject.to_string(), headers, body.into())
        .await
        .map_err(|e| fail(e.to_string()))?
        .await
        .map_err(|e| fail(e.to_string()))?;
    Ok(())
}

/// Makes sure every dead-letter subject is captured by some stream: those
/// no existing stream covers are added to [`DLQ_STREAM`].
pub async fn ensure_streams(
    js: &jetstream::Context,
    subjects: &[String],
    settings: &JetStreamGlobals,
) -> Result<(), PublishError> {
    let mut uncovered = Vec::new();
    for subject in subjects {
        match js.stream_by_subject(subject.clone()).await {
            Ok(name) if name != DLQ_STREAM => {}
            _ => uncovered.push(subject.clone()),
        }
    }
    if uncovered.is_empty() {
        return Ok(());
    }
    // Keep subjects other pipelines (or an older config) added.
    if let Ok(mut stream) = js.get_stream(DLQ_STREAM).await {
        if let Ok(info) = stream.info().await {
            for s in &info.config.subjects {
                if !uncovered.contains(s) {
                    uncovered.push(s.clone());
                }
            }
        }
    }
    uncovered.sort();
    js.create_or_update_stream(jetstream::stream::Config {
        name: DLQ_STREAM.to_string(),
        description: Some("syncflow dead letters".to_string()),
        subjects: uncovered,
        storage: jetstream::stream::StorageType::File,
        duplicate_window: std::time::Duration::from_secs(120),
        num_replicas: settings.replicas,
        max_age: settings.dead_letters.max_age.0,
        max_bytes: settings
            .dead_letters
            .max_bytes
            .map_or(-1, |bytes| i64::try_from(bytes).unwrap_or(i64::MAX)),
        ..Default::default()
    })
    .await
    .map_err(|e| PublishError {
        subject: DLQ_STREAM.to_string(),
        message: e.to_string(),
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::kept_header;

    #[test]
    fn only_known_harmless_headers_are_kept() {
        for kept in [
            "Nats-Msg-Id",
            "content-type",
            "traceparent",
            "Syncflow-Key",
            "ce-type",
        ] {
            assert!(kept_header(kept), "{kept}");
        }
        for dropped in [
            "Authorization",
            "X-HubSpot-Signature-v3",
            "Cookie",
            "X-Api-Key",
            "X-Custom",
        ] {
            assert!(!kept_header(dropped), "{dropped}");
        }
    }
}
