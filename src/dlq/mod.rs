//! Dead letters as operators handle them: found by pipeline, kind, key and
//! time, shown in full, replayed to where they came from, purged.
//!
//! The executor writes dead letters (`executor/dead_letter.rs`); this module
//! reads them back. Both `syncflow dlq` and the status page's replay button
//! go through [`DeadLetterStore`], so a replay is the same operation
//! wherever it starts.
//!
//! A replay publishes the original message to its original subject and only
//! then deletes the dead letter: a crash in between leaves the dead letter
//! in place, and replaying it again is harmless. The replayed message
//! carries its original stream sequence (`Syncflow-Replay-Of`), so the
//! executor treats it as a redelivery of that change: skipped when a newer
//! change of the key (or the replay itself, the first time) was applied.

mod read;

use std::collections::BTreeMap;

use async_nats::jetstream;
use base64::Engine as _;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::executor::DLQ_STREAM;
pub use crate::executor::REPLAY_OF_HEADER;

#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    #[error("NATS: {0}")]
    Nats(String),
    #[error("no dead letter {stream}#{seq}")]
    NotFound { stream: String, seq: u64 },
    #[error("dead letter {stream}#{seq} is not a syncflow dead letter: {message}")]
    Malformed {
        stream: String,
        seq: u64,
        message: String,
    },
    #[error("dead letter {stream}#{seq} cannot be replayed: {message}")]
    Unreplayable {
        stream: String,
        seq: u64,
        message: String,
    },
}

fn nats(e: impl std::fmt::Display) -> DlqError {
    DlqError::Nats(e.to_string())
}

/// A dead letter as the executor wrote it (see `executor::dead_letter`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Letter {
    pub pipeline: String,
    pub key: Option<String>,
    pub action: Option<String>,
    pub error: LetterError,
    pub attempts: u32,
    pub original: Original,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LetterError {
    pub kind: String,
    pub message: String,
    pub status: Option<u16>,
    pub body: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Original {
    pub stream: String,
    pub subject: String,
    pub sequence: u64,
    pub delivered: i64,
    pub timestamp_ms: Option<i64>,
    #[serde(default)]
    pub headers: Map<String, Value>,
    pub data: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_base64: Option<String>,
}

impl Original {
    /// The payload as it was published: base64-decoded, the text itself, or
    /// the JSON document (the same document; its bytes may be spaced
    /// differently).
    pub fn payload(&self) -> Result<Bytes, String> {
        if let Some(b64) = &self.data_base64 {
            return base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map(Bytes::from)
                .map_err(|e| format!("data_base64: {e}"));
        }
        Ok(match &self.data {
            Value::String(text) => Bytes::from(text.clone().into_bytes()),
            json => Bytes::from(serde_json::to_vec(json).expect("JSON serializes")),
        })
    }

    /// The headers as (name, value) pairs.
    pub fn header_pairs(&self) -> Vec<(String, String)> {
        self.headers
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
            .collect()
    }
}

/// A dead letter where it is stored.
#[derive(Debug, Clone, Serialize)]
pub struct Stored {
    pub stream: String,
    pub seq: u64,
    /// The dead-letter subject it was published to.
    pub subject: String,
    /// When it was dead-lettered, milliseconds since the Unix epoch.
    pub time_ms: i64,
    pub letter: Letter,
}

/// Which dead letters a command works on. Empty fields match everything.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub pipeline: Option<String>,
    pub kind: Option<String>,
    pub key: Option<String>,
    /// Dead-lettered at or after, ms since the epoch.
    pub since_ms: Option<i64>,
    /// Dead-lettered before, ms since the epoch.
    pub until_ms: Option<i64>,
}

impl Filter {
    pub fn matches(&self, stored: &Stored) -> bool {
        let l = &stored.letter;
        self.pipeline.as_ref().is_none_or(|p| *p == l.pipeline)
            && self.kind.as_ref().is_none_or(|k| *k == l.error.kind)
            && self.key.as_ref().is_none_or(|k| Some(k) == l.key.as_ref())
            && self.since_ms.is_none_or(|t| stored.time_ms >= t)
            && self.until_ms.is_none_or(|t| stored.time_ms < t)
    }
}

/// What a replay did.
#[derive(Debug, Clone, Serialize)]
pub struct Replayed {
    /// The subject the original was published to again.
    pub subject: String,
    /// Its new sequence in the source stream.
    pub seq: u64,
    /// False when the source stream recognised the publish as one it had
    /// (a replay retried within its duplicate window).
    pub new: bool,
}

/// The dead letters of a config's pipelines.
#[derive(Clone)]
pub struct DeadLetterStore {
    js: jetstream::Context,
    /// Dead-letter subject by pipeline.
    subjects: BTreeMap<String, String>,
}

impl DeadLetterStore {
    /// `subjects`: each pipeline's dead-letter subject.
    pub fn new(js: jetstream::Context, subjects: BTreeMap<String, String>) -> Self {
        DeadLetterStore { js, subjects }
    }

    /// The (stream, filter subject) pairs that hold `filter`'s dead letters.
    /// syncflow's own stream holds nothing but dead letters and is read
    /// whole; a stream of the operator's is read only on the subjects
    /// pipelines dead-letter to. (One filter subject per consumer: NATS
    /// 2.9 has no multi-subject filters.)
    async fn sources(&self, filter: &Filter) -> Result<Vec<(String, Option<String>)>, DlqError> {
        let mut sources = Vec::new();
        let mut read_own_stream = false;
        for (pipeline, subject) in &self.subjects {
            if filter.pipeline.as_ref().is_some_and(|p| p != pipeline) {
                continue;
            }
            let stream = match self.js.stream_by_subject(subject.clone()).await {
                Ok(stream) => stream,
                // Nothing captures it: nothing was ever dead-lettered there.
                Err(_) => continue,
            };
            if stream == DLQ_STREAM && filter.pipeline.is_none() {
                read_own_stream = true;
            } else if !sources.contains(&(stream.clone(), Some(subject.clone()))) {
                sources.push((stream, Some(subject.clone())));
            }
        }
        if filter.pipeline.is_none() && self.js.get_stream(DLQ_STREAM).await.is_ok() {
            read_own_stream = true;
        }
        if read_own_stream {
            sources.retain(|(stream, _)| stream != DLQ_STREAM);
            sources.insert(0, (DLQ_STREAM.to_string(), None));
        }
        Ok(sources)
    }

    /// Every dead letter `filter` selects, oldest first. Messages of a
    /// dead-letter stream that are not dead letters are skipped.
    pub async fn list(&self, filter: &Filter) -> Result<Vec<Stored>, DlqError> {
        let mut found = Vec::new();
        for (stream, subject) in self.sources(filter).await? {
            read::each(&self.js, &stream, subject.as_deref(), None, |stored| {
                if let Ok(stored) = stored
                    && filter.matches(&stored)
                {
                    found.push(stored);
                }
            })
            .await?;
        }
        found.sort_by_key(|s| (s.time_ms, s.seq));
        Ok(found)
    }

    /// The `limit` newest dead letters of syncflow's own stream and of the
    /// pipelines' subjects elsewhere, newest first: what the status page
    /// shows. Reads only the tail of each stream.
    pub async fn latest(&self, limit: usize) -> Result<Vec<Stored>, DlqError> {
        let mut found = Vec::new();
        for (stream, subject) in self.sources(&Filter::default()).await? {
            let tail = (limit as u64).saturating_mul(4).max(64);
            read::each(
                &self.js,
                &stream,
                subject.as_deref(),
                Some(tail),
                |stored| {
                    if let Ok(stored) = stored {
                        found.push(stored);
                    }
                },
            )
            .await?;
        }
        found.sort_by_key(|s| std::cmp::Reverse((s.time_ms, s.seq)));
        found.truncate(limit);
        Ok(found)
    }

    /// One dead letter by its place.
    pub async fn get(&self, stream: &str, seq: u64) -> Result<Stored, DlqError> {
        let s = self.js.get_stream(stream).await.map_err(nats)?;
        let raw = s.get_raw_message(seq).await.map_err(|e| match e.kind() {
            jetstream::stream::RawMessageErrorKind::NoMessageFound => DlqError::NotFound {
                stream: stream.to_string(),
                seq,
            },
            _ => nats(e),
        })?;
        let time_ms = i64::try_from(raw.time.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
        read::parse(stream, seq, raw.subject.as_str(), time_ms, &raw.payload)
    }

    /// Publishes the letter's original message to its original subject
    /// (waiting for the stream's ack), then deletes the dead letter.
    pub async fn replay(&self, stored: &Stored) -> Result<Replayed, DlqError> {
        let original = &stored.letter.original;
        let unreplayable = |message: String| DlqError::Unreplayable {
            stream: stored.stream.clone(),
            seq: stored.seq,
            message,
        };
        let payload = original.payload().map_err(unreplayable)?;
        let mut headers = async_nats::HeaderMap::new();
        let mut replay_of = format!("{}:{}", original.stream, original.sequence);
        for (name, value) in original.header_pairs() {
            if name.eq_ignore_ascii_case(REPLAY_OF_HEADER) {
                // A replay that failed again: it stands for the first change.
                replay_of = value;
            } else if !name.eq_ignore_ascii_case("Nats-Msg-Id") {
                // The original's message id would be dropped as a duplicate
                // of itself inside the stream's window; the replay gets its own.
                headers.insert(name.as_str(), value.as_str());
            }
        }
        headers.insert(REPLAY_OF_HEADER, replay_of.as_str());
        // Retrying the same replay within the duplicate window is a no-op.
        headers.insert(
            "Nats-Msg-Id",
            format!("syncflow-replay:{}:{}", stored.stream, stored.seq).as_str(),
        );
        let ack = self
            .js
            .publish_with_headers(original.subject.clone(), headers, payload)
            .await
            .map_err(nats)?
            .await
            .map_err(nats)?;
        if ack.stream != original.stream {
            tracing::warn!(subject = %original.subject, stream = %ack.stream, was = %original.stream, "replayed message landed in another stream than the original");
        }
        self.delete(stored).await?;
        Ok(Replayed {
            subject: original.subject.clone(),
            seq: ack.sequence,
            new: !ack.duplicate,
        })
    }

    /// Removes a dead letter. Deleting one that is already gone is not an
    /// error: two operators purging the same letter both succeed.
    pub async fn delete(&self, stored: &Stored) -> Result<(), DlqError> {
        let stream = self.js.get_stream(&stored.stream).await.map_err(nats)?;
        match stream.delete_message(stored.seq).await {
            Ok(_) => Ok(()),
            Err(e) => match e.kind() {
                jetstream::stream::DeleteMessageErrorKind::JetStream(j)
                    if j.error_code() == jetstream::ErrorCode::NO_MESSAGE_FOUND =>
                {
                    Ok(())
                }
                _ => Err(nats(e)),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(pipeline: &str, kind: &str, key: Option<&str>, time_ms: i64) -> Stored {
        Stored {
            stream: DLQ_STREAM.into(),
            seq: 1,
            subject: "syncflow.dlq.x".into(),
            time_ms,
            letter: Letter {
                pipeline: pipeline.into(),
                key: key.map(String::from),
                action: None,
                error: LetterError {
                    kind: kind.into(),
                    message: String::new(),
                    status: None,
                    body: None,
                },
                attempts: 0,
                original: Original {
                    stream: "CDC".into(),
                    subject: "cdc.x".into(),
                    sequence: 7,
                    delivered: 1,
                    timestamp_ms: None,
                    headers: Map::new(),
                    data: Value::String("not json".into()),
                    data_base64: None,
                },
            },
        }
    }

    #[test]
    fn a_filter_matches_on_every_field_it_names() {
        let s = stored("p", "output_schema", Some("7"), 1000);
        assert!(Filter::default().matches(&s));
        let f = |f: Filter| f.matches(&s);
        assert!(f(Filter {
            pipeline: Some("p".into()),
            kind: Some("output_schema".into()),
            key: Some("7".into()),
            since_ms: Some(1000),
            until_ms: Some(1001),
        }));
        assert!(!f(Filter {
            pipeline: Some("q".into()),
            ..Filter::default()
        }));
        assert!(!f(Filter {
            kind: Some("decode".into()),
            ..Filter::default()
        }));
        assert!(!f(Filter {
            key: Some("8".into()),
            ..Filter::default()
        }));
        assert!(!f(Filter {
            until_ms: Some(1000),
            ..Filter::default()
        }));
    }

    #[test]
    fn payloads_come_back_as_they_were_published() {
        let mut o = stored("p", "decode", None, 0).letter.original;
        assert_eq!(o.payload().unwrap(), Bytes::from_static(b"not json"));
        o.data = serde_json::json!({"a": 1});
        assert_eq!(o.payload().unwrap(), Bytes::from_static(b"{\"a\":1}"));
        o.data = Value::Null;
        o.data_base64 = Some("/wA=".into());
        assert_eq!(o.payload().unwrap(), Bytes::from_static(&[0xff, 0]));
    }
}
