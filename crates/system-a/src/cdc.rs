//! The CDC side: every write becomes one Debezium-shaped event on
//! `<subject_prefix>.<id>`, published to JetStream and acknowledged before
//! the write counts as made.
//!
//! Like a CDC pipeline, it never skips an event: an attempt that is not
//! acknowledged (NATS down, a timeout) is repeated until one is, with the
//! same `Nats-Msg-Id`, so JetStream keeps exactly one copy even when an
//! earlier attempt, buffered by the client during an outage, lands too.

use std::io;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::HeaderMap;
use async_nats::header::NATS_MESSAGE_ID;
use async_nats::jetstream::context::PublishAckFuture;
use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use serde_json::{Value, json};

use super::config::SystemAConfig;
use super::store::Write;

/// Who made a write: a client of the API, or a person (the admin routes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Api,
    User,
}

impl Origin {
    fn name(self) -> &'static str {
        match self {
            Origin::Api => "api",
            Origin::User => "user",
        }
    }
}

/// The event of `write`: `{"op", "before", "after", "ts_ms", "source": {"origin"}}`.
pub(crate) fn event(write: &Write, origin: Origin, ts_ms: u64) -> Value {
    json!({
        "op": write.op.code(),
        "before": write.before,
        "after": write.after,
        "ts_ms": ts_ms,
        "source": {"origin": origin.name()},
    })
}

/// How long an attempt waits for JetStream's acknowledgement.
const ACK_TIMEOUT: Duration = Duration::from_secs(2);
/// The wait after a failed attempt, doubled each time up to `MAX_BACKOFF`.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

pub(crate) struct Publisher {
    jetstream: jetstream::Context,
    subject_prefix: String,
    /// Unique to this process, so that `Nats-Msg-Id`s stay unique across
    /// restarts: JetStream drops a message whose id it saw in its duplicate
    /// window (2 minutes by default), and a restarted counter would repeat.
    boot: String,
    writes: u64,
}

impl Publisher {
    /// Connects and makes sure the stream exists. An existing stream is used
    /// as it is (its subjects must capture `<subject_prefix>.>`).
    pub(crate) async fn connect(config: &SystemAConfig) -> io::Result<Publisher> {
        let client = async_nats::connect(&config.nats_url)
            .await
            .map_err(|e| io::Error::other(format!("connect to {}: {e}", config.nats_url)))?;
        let jetstream = jetstream::ContextBuilder::new()
            .timeout(ACK_TIMEOUT)
            .build(client);
        // A restarted System A finds its stream, and the events in it, as it
        // left them.
        jetstream
            .get_or_create_stream(stream::Config {
                name: config.stream.clone(),
                subjects: vec![config.stream_subjects()],
                ..stream::Config::default()
            })
            .await
            .map_err(|e| io::Error::other(format!("stream {}: {e}", config.stream)))?;
        let since_epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Ok(Publisher {
            jetstream,
            subject_prefix: config.subject_prefix.clone(),
            boot: format!("{:x}-{:x}", since_epoch.as_nanos(), std::process::id()),
            writes: 0,
        })
    }

    /// The event of `write`, made once: every attempt sends the very same
    /// bytes under the same `Nats-Msg-Id`.
    pub(crate) fn prepare(&mut self, write: &Write, origin: Origin) -> Event {
        self.writes += 1;
        Event {
            subject: format!("{}.{}", self.subject_prefix, write.id),
            message_id: format!("system-a-{}-{}", self.boot, self.writes),
            payload: Bytes::from(event(write, origin, unix_millis()).to_string()),
        }
    }

    /// Sends `event` without waiting for its acknowledgement: events sent
    /// one after another are stored in that order.
    pub(crate) async fn send(&self, event: &Event) -> Result<PublishAckFuture, async_nats::Error> {
        let mut headers = HeaderMap::new();
        headers.insert(NATS_MESSAGE_ID, event.message_id.as_str());
        Ok(self
            .jetstream
            .publish_with_headers(event.subject.clone(), headers, event.payload.clone())
            .await?)
    }

    /// Waits until JetStream has stored `event`: the acknowledgement of its
    /// first attempt (`first`), then attempts again, however many it takes;
    /// the number of failed attempts. An acknowledgement that says
    /// "duplicate" is a success: an earlier attempt of this event was stored
    /// (ids are unique per write, so nothing else can have that id).
    pub(crate) async fn store(
        &self,
        event: &Event,
        first: Result<PublishAckFuture, async_nats::Error>,
    ) -> u64 {
        let mut outcome = match first {
            Ok(ack) => ack.await.map(drop).map_err(async_nats::Error::from),
            Err(e) => Err(e),
        };
        let mut failed = 0;
        let mut backoff = FIRST_BACKOFF;
        loop {
            match outcome {
                Ok(()) => return failed,
                Err(e) => {
                    failed += 1;
                    tracing::warn!(subject = %event.subject, message_id = %event.message_id, error = %e, attempt = failed, "CDC event not stored yet, retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
            outcome = match self.send(event).await {
                Ok(ack) => ack.await.map(drop).map_err(async_nats::Error::from),
                Err(e) => Err(e),
            };
        }
    }
}

/// One write's CDC event, ready to send.
pub(crate) struct Event {
    pub(crate) subject: String,
    message_id: String,
    payload: Bytes,
}

fn unix_millis() -> u64 {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::store::Op;

    #[test]
    fn events_are_debezium_shaped() {
        let write = Write {
            op: Op::Delete,
            id: "7".into(),
            before: Some(json!({"id": "7", "email": "a@b.c"})),
            after: None,
        };
        assert_eq!(
            event(&write, Origin::User, 1_700_000_000_000),
            json!({
                "op": "d",
                "before": {"id": "7", "email": "a@b.c"},
                "after": null,
                "ts_ms": 1_700_000_000_000u64,
                "source": {"origin": "user"},
            })
        );
        let create = Write {
            op: Op::Create,
            before: None,
            after: Some(json!({"id": "8"})),
            id: "8".into(),
        };
        let event = event(&create, Origin::Api, 1);
        assert_eq!(
            (&event["op"], &event["before"]),
            (&json!("c"), &json!(null))
        );
        assert_eq!(event["source"]["origin"], "api");
    }
}
