//! [`SubjectSink`]: records published to a JetStream subject, for System
//! A's own consumers. Each publish waits for JetStream's ack, so a record is
//! acked at its source only once it is stored.
//!
//! A record is published as its mapped body (no body for a delete), with
//! headers `Nats-Msg-Id` (the idempotency key: JetStream drops a
//! redelivery's second publish within the stream's duplicate window),
//! `Syncflow-Key` and `Syncflow-Action`.

use async_nats::jetstream;

use super::{Delivery, Record, Sink};
use crate::pipeline::SubjectTemplate;

pub struct SubjectSink {
    js: jetstream::Context,
    subject: SubjectTemplate,
}

impl SubjectSink {
    pub fn new(js: jetstream::Context, subject: SubjectTemplate) -> Self {
        SubjectSink { js, subject }
    }

    async fn publish(&self, record: &Record<'_>) -> Result<(), String> {
        let subject = self.subject.render(record.key, record.action);
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", record.idempotency_key);
        headers.insert("Syncflow-Key", record.key);
        headers.insert("Syncflow-Action", record.action.as_str());
        let payload = match record.body {
            Some(body) => {
                let mut json = Vec::with_capacity(256);
                super::json::write_value(&mut json, body);
                json
            }
            None => Vec::new(),
        };
        self.js
            .publish_with_headers(subject, headers, payload.into())
            .await
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        Ok(())
    }
}

impl Sink for SubjectSink {
    async fn deliver(&self, record: &Record<'_>) -> Delivery {
        // No stream for the subject, or NATS away: both are waited out
        // (and logged), as for a dead-letter publish.
        record
            .trouble
            .retry_until_ok("publish", || self.publish(record))
            .await;
        Delivery::Sent {
            status: None,
            id: None,
            attempts: 1,
        }
    }
}
