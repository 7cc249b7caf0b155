//! The NATS JetStream source: one durable pull consumer per pipeline,
//! explicit acks, batched pulls, bounded unacked messages.

use std::time::Duration;

use async_nats::jetstream::{self, consumer::PullConsumer};
use futures::StreamExt;

use super::{AckHandle, SourceMessage};
use crate::config::model::NatsSourceConfig;

/// How long one pull request waits on the server for messages. It bounds
/// how long a stop waits for the current request to end, and costs one idle
/// request per second per pipeline.
pub const PULL_EXPIRES: Duration = Duration::from_secs(1);
/// How long after PULL_EXPIRES a pull with no answer counts as lost.
const PULL_GRACE: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum NatsSourceError {
    #[error("stream \"{stream}\" not found: {message}")]
    StreamMissing { stream: String, message: String },
    #[error("cannot create consumer \"{durable}\" on stream \"{stream}\": {message}")]
    Consumer {
        stream: String,
        durable: String,
        message: String,
    },
    #[error("pull from consumer \"{durable}\" failed: {message}")]
    Pull { durable: String, message: String },
}

/// The consumer's settings, from the pipeline's `source.nats`.
pub fn consumer_config(cfg: &NatsSourceConfig, durable: &str) -> jetstream::consumer::pull::Config {
    jetstream::consumer::pull::Config {
        durable_name: Some(durable.to_string()),
        filter_subject: cfg.subject.clone(),
        ack_policy: jetstream::consumer::AckPolicy::Explicit,
        ack_wait: cfg.ack_wait.0,
        max_ack_pending: cfg.max_ack_pending,
        deliver_policy: jetstream::consumer::DeliverPolicy::All,
        ..Default::default()
    }
}

/// Creates the durable consumer, or updates it to the pipeline's settings
/// (keeping its position) when it exists.
pub async fn bind(
    js: &jetstream::Context,
    cfg: &NatsSourceConfig,
    durable: &str,
) -> Result<PullConsumer, NatsSourceError> {
    let stream = js
        .get_stream(&cfg.stream)
        .await
        .map_err(|e| NatsSourceError::StreamMissing {
            stream: cfg.stream.clone(),
            message: e.to_string(),
        })?;
    let config = consumer_config(cfg, durable);
    let consumer_error = |e: &dyn std::fmt::Display| NatsSourceError::Consumer {
        stream: cfg.stream.clone(),
        durable: durable.to_string(),
        message: e.to_string(),
    };
    match stream.create_consumer(config.clone()).await {
        Ok(c) => Ok(c),
        // An existing consumer with other settings: update what may change.
        Err(_) => stream
            .update_consumer(config)
            .await
            .map_err(|e| consumer_error(&e)),
    }
}

/// One pull request: up to `batch` messages, delivered as they arrive; the
/// stream ends when `batch` have come or after [`PULL_EXPIRES`].
///
/// One request at a time (rather than a continuous, self-renewing pull) so
/// that stopping is exact: once the current batch ends, the server holds no
/// request of ours and delivers nothing to a subscription nobody reads, where
/// a message would wait out `ack_wait` and could then be overtaken by a later
/// change of its key.
pub async fn fetch(
    consumer: &PullConsumer,
    batch: usize,
    durable: &str,
) -> Result<
    impl futures::Stream<Item = Result<SourceMessage, NatsSourceError>> + use<>,
    NatsSourceError,
> {
    let pull_error = |e: &dyn std::fmt::Display| NatsSourceError::Pull {
        durable: durable.to_string(),
        message: e.to_string(),
    };
    let stream = consumer
        .batch()
        .max_messages(batch)
        .expires(PULL_EXPIRES)
        .messages()
        .await
        .map_err(|e| pull_error(&e))?;
    let durable = durable.to_string();
    // The server ends the request after PULL_EXPIRES. If its answer never
    // comes (the server restarted, the connection dropped and came back),
    // async-nats would wait 5 s more; end it soon after instead, so the
    // next pull goes to the server that is there now.
    let lost = tokio::time::sleep(PULL_EXPIRES + PULL_GRACE);
    Ok(stream.take_until(lost).map(move |m| {
        m.map(to_source_message).map_err(|e| NatsSourceError::Pull {
            durable: durable.clone(),
            message: e.to_string(),
        })
    }))
}

fn to_source_message(m: jetstream::Message) -> SourceMessage {
    let (seq, delivered, timestamp_ms) = match m.info() {
        Ok(info) => (
            info.stream_sequence,
            info.delivered,
            Some((info.published.unix_timestamp_nanos() / 1_000_000) as i64),
        ),
        Err(_) => (0, 1, None),
    };
    let (msg, acker) = m.split();
    let headers = msg
        .headers
        .as_ref()
        .map(|h| {
            h.iter()
                .flat_map(|(k, vs)| vs.iter().map(move |v| (k.to_string(), v.to_string())))
                .collect()
        })
        .unwrap_or_default();
    SourceMessage {
        subject: msg.subject.to_string(),
        seq,
        timestamp_ms,
        headers,
        payload: msg.payload,
        delivered,
        ack: AckHandle(acker),
    }
}
