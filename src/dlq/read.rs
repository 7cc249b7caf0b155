//! Reading a dead-letter stream: an ephemeral consumer with no acks, read
//! in batches until the stream has nothing more for it.

use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures::StreamExt;

use super::{DlqError, Letter, Stored, nats};

/// Messages per pull: enough to read a large dead-letter stream in few
/// round trips, small enough to bound what one pull holds.
const BATCH: usize = 500;

/// Calls `each` with every message of `stream` (on `subject`, when given),
/// oldest first, or with only the last `tail` sequences of it. A message
/// that is not a dead letter comes as an error.
pub async fn each(
    js: &jetstream::Context,
    stream: &str,
    subject: Option<&str>,
    tail: Option<u64>,
    mut each: impl FnMut(Result<Stored, DlqError>),
) -> Result<(), DlqError> {
    let mut s = js.get_stream(stream).await.map_err(nats)?;
    let state = s.info().await.map_err(nats)?.state.clone();
    if state.messages == 0 {
        return Ok(());
    }
    let deliver_policy = match tail {
        Some(n) if state.last_sequence > n => consumer::DeliverPolicy::ByStartSequence {
            start_sequence: state.last_sequence - n + 1,
        },
        _ => consumer::DeliverPolicy::All,
    };
    let reader = s
        .create_consumer(consumer::pull::Config {
            filter_subject: subject.unwrap_or_default().to_string(),
            deliver_policy,
            ack_policy: consumer::AckPolicy::None,
            inactive_threshold: Duration::from_secs(30),
            description: Some("syncflow dlq reader".into()),
            ..Default::default()
        })
        .await
        .map_err(nats)?;
    let name = reader.cached_info().name.clone();
    let result = async {
        // The sequences the stream held when the reader started: messages
        // dead-lettered while reading are left for the next command.
        let mut pending = reader.cached_info().num_pending;
        while pending > 0 {
            let mut batch = reader
                .fetch()
                .max_messages(BATCH.min(pending as usize))
                .expires(Duration::from_secs(2))
                .messages()
                .await
                .map_err(nats)?;
            let mut got = 0;
            while let Some(msg) = batch.next().await {
                let msg = msg.map_err(nats)?;
                let info = msg.info().map_err(nats)?;
                got += 1;
                let time_ms =
                    i64::try_from(info.published.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
                let seq = info.stream_sequence;
                each(parse(
                    stream,
                    seq,
                    msg.subject.as_str(),
                    time_ms,
                    &msg.payload,
                ));
                pending = info.pending;
            }
            if got == 0 {
                break;
            }
        }
        Ok(())
    }
    .await;
    let _ = s.delete_consumer(&name).await;
    result
}

/// A stored message as a dead letter.
pub fn parse(
    stream: &str,
    seq: u64,
    subject: &str,
    time_ms: i64,
    payload: &[u8],
) -> Result<Stored, DlqError> {
    let letter: Letter = serde_json::from_slice(payload).map_err(|e| DlqError::Malformed {
        stream: stream.to_string(),
        seq,
        message: e.to_string(),
    })?;
    Ok(Stored {
        stream: stream.to_string(),
        seq,
        subject: subject.to_string(),
        time_ms,
        letter,
    })
}
