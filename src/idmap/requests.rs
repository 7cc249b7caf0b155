//! The id map's reads and writes as plain NATS requests: a JetStream
//! publish to the key's subject, and a direct get of the key's last value.
//!
//! async-nats's `kv::Store` does the same with more around it, which every
//! record whose object the id map keeps pays for: its put parses the
//! server's ack as an untagged enum (serde buffers it, tries the error shape
//! first and formats the error it throws away), and takes an ack permit and
//! a second timeout; its get formats two subjects and parses every header
//! of the answer, the stored time included. Measured with
//! `bench/run.sh kv-cost` (its client figures) and callgrind (the id-map
//! benchmark, bench/README.md).
//!
//! Only what the id map needs is here. The two-way link states, whose
//! writes are compare-and-set, keep the `Store` (twoway/store.rs).

use std::collections::HashMap;
use std::time::Duration;

use async_nats::{Client, HeaderMap, Request, StatusCode};
use bytes::Bytes;
use futures::StreamExt as _;

/// How long a request waits for the server: JetStream's own default.
const TIMEOUT: Duration = Duration::from_secs(5);

/// A key's last value as a direct get answered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Put(Bytes),
    /// A delete or purge marker.
    Deleted,
}

#[derive(Clone)]
pub struct Requests {
    client: Client,
    /// `$KV.<bucket>.`: a key's subject is this and the key.
    put_prefix: String,
    /// `$JS.API.DIRECT.GET.KV_<bucket>.$KV.<bucket>.`: a key's last value
    /// is asked for on this and the key.
    get_prefix: String,
    /// `$JS.API.DIRECT.GET.KV_<bucket>`: where a batch of keys is asked
    /// for ([`Requests::get_many`]).
    batch_subject: String,
}

/// The end of a batch direct get's answers (ADR-31's "EOB").
const END_OF_BATCH: u16 = 204;

/// What a JetStream publish answers. Only the error is read: a stored
/// message's sequence is not needed.
#[derive(serde::Deserialize)]
struct PubAck {
    #[serde(default)]
    error: Option<ApiError>,
}

#[derive(serde::Deserialize)]
struct ApiError {
    #[serde(default)]
    code: u16,
    #[serde(default)]
    description: String,
}

impl Requests {
    /// Requests to `bucket` over `client`. syncflow's JetStream context has
    /// no domain, so the API is under `$JS.API`.
    pub fn new(client: Client, bucket: &str) -> Requests {
        Requests {
            client,
            put_prefix: format!("$KV.{bucket}."),
            get_prefix: format!("$JS.API.DIRECT.GET.KV_{bucket}.$KV.{bucket}."),
            batch_subject: format!("$JS.API.DIRECT.GET.KV_{bucket}"),
        }
    }

    /// Stores `value` under `key`; returns once the server says it is
    /// stored.
    pub async fn put(&self, key: &str, value: Bytes) -> Result<(), String> {
        let answer = self
            .client
            .send_request(
                subject(&self.put_prefix, key),
                Request::new().payload(value).timeout(Some(TIMEOUT)),
            )
            .await
            .map_err(|e| format!("put {key}: {e}"))?;
        put_answer(&answer.payload).map_err(|e| format!("put {key}: {e}"))
    }

    /// The last value of `key`; `None` when the bucket has none.
    ///
    /// A direct get can be answered by any replica, so this is for a
    /// bucket of one replica (kv.rs: direct gets are allowed only then).
    pub async fn get(&self, key: &str) -> Result<Option<Value>, String> {
        let answer = self
            .client
            .send_request(
                subject(&self.get_prefix, key),
                Request::new().timeout(Some(TIMEOUT)),
            )
            .await
            .map_err(|e| format!("get {key}: {e}"))?;
        get_answer(answer.status, answer.headers.as_ref(), answer.payload)
            .map_err(|e| format!("get {key}: {e}"))
    }

    /// The last values of `keys`, in their order, in one request: a direct
    /// get of the last message of many subjects (`multi_last`, nats-server
    /// 2.11 or later). The server answers each key it holds with its last
    /// message, then an end-of-batch status (or 404 when it holds none of
    /// them).
    ///
    /// For a bucket of one replica, as [`Requests::get`].
    pub async fn get_many(&self, keys: &[&str]) -> Result<Vec<Option<Value>>, ManyError> {
        let what = |e: &dyn std::fmt::Display| format!("get of {} keys: {e}", keys.len());
        let failed = |e: &dyn std::fmt::Display| ManyError::Unanswered(what(e));
        let refused = |e: &dyn std::fmt::Display| ManyError::Refused(what(e));
        let subjects: Vec<String> = keys.iter().map(|k| subject(&self.put_prefix, k)).collect();
        // The answers come in the stream's order, not the request's, and
        // the server answers a subject once: a key asked twice (two
        // pipelines, one object) is asked once and answered at its first
        // place, then copied to the others.
        let mut first: HashMap<&str, usize> = HashMap::with_capacity(subjects.len());
        let mut asked: Vec<&str> = Vec::with_capacity(subjects.len());
        for (place, subject) in subjects.iter().enumerate() {
            first.entry(subject).or_insert_with(|| {
                asked.push(subject);
                place
            });
        }
        let body = serde_json::to_vec(&MultiLast {
            multi_last: &asked,
            batch: asked.len(),
        })
        .map_err(|e| failed(&e))?;
        // Several answers come back, so the request has an inbox of its own
        // (async-nats's requests take the first answer only).
        let inbox = self.client.new_inbox();
        let mut answers = self
            .client
            .subscribe(inbox.clone())
            .await
            .map_err(|e| failed(&e))?;
        self.client
            .publish_with_reply(self.batch_subject.clone(), inbox, body.into())
            .await
            .map_err(|e| failed(&e))?;
        let mut values: Vec<Option<Value>> = keys.iter().map(|_| None).collect();
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            let answer = tokio::time::timeout_at(deadline, answers.next())
                .await
                .map_err(|_| failed(&"no end of batch from the server in time"))?
                .ok_or_else(|| failed(&"the connection closed"))?;
            match answer.status {
                None => {}
                // 404: the server holds none of the keys.
                Some(s) if matches!(s.as_u16(), END_OF_BATCH | 404) => {
                    if asked.len() < keys.len() {
                        for (place, subject) in subjects.iter().enumerate() {
                            let at = first[subject.as_str()];
                            if at != place {
                                values[place] = values[at].clone();
                            }
                        }
                    }
                    return Ok(values);
                }
                Some(status) => {
                    let why = answer.description.unwrap_or_default();
                    return Err(refused(&format_args!("the server answered {status} {why}")));
                }
            }
            let place = answer
                .headers
                .as_ref()
                .and_then(|h| h.get("Nats-Subject"))
                .and_then(|s| first.get(s.as_str()).copied())
                .ok_or_else(|| refused(&"an answer for a subject not asked for"))?;
            values[place] = Some(stored(answer.headers.as_ref(), answer.payload));
        }
    }
}

/// Why [`Requests::get_many`] read nothing.
#[derive(Debug)]
pub enum ManyError {
    /// The server answered, but not as a batch get: it may not know them.
    Refused(String),
    /// No answer: the connection or the time ran out.
    Unanswered(String),
}

impl std::fmt::Display for ManyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ManyError::Refused(e) | ManyError::Unanswered(e) => f.write_str(e),
        }
    }
}

/// A batch direct get's request body.
#[derive(serde::Serialize)]
struct MultiLast<'a> {
    multi_last: &'a [&'a str],
    batch: usize,
}

/// `prefix` and `key` in one allocation.
fn subject(prefix: &str, key: &str) -> String {
    let mut subject = String::with_capacity(prefix.len() + key.len());
    subject.push_str(prefix);
    subject.push_str(key);
    subject
}

fn put_answer(payload: &[u8]) -> Result<(), String> {
    let ack: PubAck = serde_json::from_slice(payload)
        .map_err(|e| format!("unreadable answer from the server: {e}"))?;
    match ack.error {
        None => Ok(()),
        Some(error) => Err(format!(
            "the server refused it ({}): {}",
            error.code, error.description
        )),
    }
}

fn get_answer(
    status: Option<StatusCode>,
    headers: Option<&HeaderMap>,
    payload: Bytes,
) -> Result<Option<Value>, String> {
    match status {
        // The key has no value.
        Some(StatusCode::NOT_FOUND) => Ok(None),
        Some(status) => Err(format!("the server answered {status}")),
        None => Ok(Some(stored(headers, payload))),
    }
}

/// A stored message as a key's value: a delete or purge marker, or what
/// was put.
fn stored(headers: Option<&HeaderMap>, payload: Bytes) -> Value {
    let marker = headers
        .and_then(|h| h.get("KV-Operation"))
        .is_some_and(|op| matches!(op.as_str(), "DEL" | "PURGE"));
    match marker {
        true => Value::Deleted,
        false => Value::Put(payload),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_answers_are_stored_or_refused() {
        assert_eq!(put_answer(br#"{"stream":"KV_m","seq":7}"#), Ok(()));
        let refused = put_answer(
            br#"{"error":{"code":503,"err_code":10077,"description":"maximum messages exceeded"},"stream":"KV_m","seq":0}"#,
        );
        assert_eq!(
            refused,
            Err("the server refused it (503): maximum messages exceeded".to_string())
        );
        assert!(put_answer(b"").unwrap_err().contains("unreadable"));
    }

    #[test]
    fn get_answers_tell_values_markers_and_absence() {
        let value = Bytes::from_static(b"{\"id\":\"1\"}");
        assert_eq!(
            get_answer(None, None, value.clone()),
            Ok(Some(Value::Put(value.clone())))
        );
        let mut headers = HeaderMap::new();
        headers.insert("KV-Operation", "DEL");
        assert_eq!(
            get_answer(None, Some(&headers), Bytes::new()),
            Ok(Some(Value::Deleted))
        );
        headers.insert("KV-Operation", "PURGE");
        assert_eq!(
            get_answer(None, Some(&headers), Bytes::new()),
            Ok(Some(Value::Deleted))
        );
        assert_eq!(
            get_answer(Some(StatusCode::NOT_FOUND), None, Bytes::new()),
            Ok(None)
        );
        assert!(get_answer(Some(StatusCode::TIMEOUT), None, Bytes::new()).is_err());
    }
}
