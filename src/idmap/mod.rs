//! The durable id map: for each record key of a provider object, the
//! provider's id of the record and what syncflow last applied to it, in a
//! JetStream key-value bucket so every instance and every restart sees it.
//!
//! An entry (JSON) holds the provider id (when the object learns ids), the
//! stream position of the last change applied (so a redelivered, older
//! change is recognised and not sent again) and a hash of the body last
//! sent (so a create of a key already there with the same body is a no-op).
//! A delete leaves an entry marked deleted. Entries written before these
//! fields existed (the bare id, or a KV delete marker) still read.

mod gather;
mod requests;

use async_nats::jetstream::{self, kv};
use base64::Engine as _;
use gather::{Gathered, ReadCounters};
use requests::{Requests, Value};
use serde::{Deserialize, Serialize};

/// The bucket every pipeline shares; keys are `provider.object.key`.
pub const BUCKET: &str = "syncflow_idmap";

#[derive(Debug, thiserror::Error)]
#[error("id map: {0}")]
pub struct IdMapError(String);

/// What the map knows of one record key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The provider's id of the record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// syncflow deleted the record (or saw it was already gone).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
    /// Where the last change applied to the record came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub seq: u64,
    /// A hash of the body last sent (FNV-1a 64 of its JSON, in hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Entry {
    /// The provider's id, unless the record was deleted.
    pub fn live_id(&self) -> Option<&str> {
        self.id.as_deref().filter(|_| !self.deleted)
    }

    /// Whether a change at `seq` of `stream` is no newer than the last one
    /// applied: a redelivery that must not be sent again.
    pub fn supersedes(&self, stream: &str, seq: u64) -> bool {
        self.stream.as_deref() == Some(stream) && self.seq >= seq
    }

    fn decode(value: &[u8]) -> Entry {
        serde_json::from_slice(value).unwrap_or_else(|_| Entry {
            // Written before entries were JSON: the bare id.
            id: Some(String::from_utf8_lossy(value).into_owned()),
            ..Entry::default()
        })
    }
}

/// A reverse entry: the record key of a provider id.
#[derive(Debug, Serialize, Deserialize)]
struct Reverse {
    key: String,
}

/// A body's hash as stored in [`Entry::body`]: FNV-1a 64 of its JSON
/// ([`crate::fnv`]).
pub fn body_hash(body: &serde_json::Value) -> String {
    // Hashed as it is serialized: no copy of the JSON is made.
    let mut hash = crate::fnv::Writer::new();
    serde_json::to_writer(&mut hash, body).expect("a JSON value always serializes");
    hex(hash.finish())
}

/// [`body_hash`] of a body already serialized (`serde_json::to_writer`'s
/// compact JSON, as requests carry it): the same hash without serializing
/// the body again, which cost about 3,500 instructions a record applied
/// (callgrind, `bench/run.sh throughput --id-map`).
pub fn json_hash(json: &[u8]) -> String {
    hex(crate::fnv::hash(json))
}

/// Sixteen hex digits, as `format!("{:016x}")` writes them, without the
/// formatting machinery (about 500 instructions a hash).
fn hex(n: u64) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    (0..16)
        .rev()
        .map(|nibble| char::from(HEX[((n >> (nibble * 4)) & 0xf) as usize]))
        .collect()
}

#[derive(Clone)]
pub struct IdMap {
    store: kv::Store,
    /// Puts, and gets where the bucket allows direct gets, go this way
    /// (requests.rs says why); gets of a replicated bucket read its
    /// leader through `store`.
    requests: Requests,
    direct_gets: bool,
    /// Direct gets gathered into batches, where the server knows them
    /// (gather.rs).
    gathered: Option<Gathered>,
    reads: ReadCounters,
}

impl IdMap {
    /// Opens the bucket, creating it on first use.
    ///
    /// The bucket's stream is created here with the settings of the KV
    /// convention (as `create_key_value` would) because async-nats's
    /// `create_key_value` first reads the account info in a shape that
    /// nats-server 2.9 (Debian bookworm's) does not send.
    pub async fn open(js: &jetstream::Context, replicas: usize) -> Result<Self, IdMapError> {
        let store =
            crate::kv::open_bucket(js, BUCKET, "syncflow: record key to provider id", replicas)
                .await
                .map_err(IdMapError)?;
        let direct_gets = store.stream.cached_info().config.allow_direct;
        let requests = Requests::new(js.client(), BUCKET);
        let reads = ReadCounters::new();
        let gathered = (direct_gets && batch_gets(&js.client().server_info().version))
            .then(|| Gathered::start(requests.clone(), reads.clone()));
        Ok(IdMap {
            requests,
            store,
            direct_gets,
            gathered,
            reads,
        })
    }

    /// The last value of a bucket key, `None` when it has none.
    async fn get(&self, key: String) -> Result<Option<Value>, IdMapError> {
        self.reads.keys.increment(1);
        if let Some(gathered) = &self.gathered {
            return gathered.get(key).await.map_err(IdMapError);
        }
        self.reads.single.increment(1);
        if self.direct_gets {
            return self.requests.get(&key).await.map_err(IdMapError);
        }
        let entry = self
            .store
            .entry(&key)
            .await
            .map_err(|e| IdMapError(e.to_string()))?;
        Ok(entry.map(|e| match e.operation {
            kv::Operation::Put => Value::Put(e.value),
            kv::Operation::Delete | kv::Operation::Purge => Value::Deleted,
        }))
    }

    /// What the map knows of `key`; `None` when nothing.
    pub async fn lookup(
        &self,
        provider: &str,
        object: &str,
        key: &str,
    ) -> Result<Option<Entry>, IdMapError> {
        Ok(self
            .get(kv_key(provider, object, key))
            .await?
            .map(|value| match value {
                Value::Put(bytes) => Entry::decode(&bytes),
                // A delete marker of an earlier version.
                Value::Deleted => Entry {
                    deleted: true,
                    ..Entry::default()
                },
            }))
    }

    /// The record key whose provider id is `id`, if syncflow linked them.
    pub async fn key_of(
        &self,
        provider: &str,
        object: &str,
        id: &str,
    ) -> Result<Option<String>, IdMapError> {
        Ok(match self.get(reverse_key(provider, object, id)).await? {
            Some(Value::Put(bytes)) => serde_json::from_slice::<Reverse>(&bytes)
                .ok()
                .map(|r| r.key),
            Some(Value::Deleted) | None => None,
        })
    }

    /// Records that `key`'s record is `id` at the provider: the id map
    /// entry (merged into what it holds) and the reverse entry.
    pub async fn link(
        &self,
        provider: &str,
        object: &str,
        key: &str,
        id: &str,
    ) -> Result<(), IdMapError> {
        let mut entry = self
            .lookup(provider, object, key)
            .await?
            .unwrap_or_default();
        entry.id = Some(id.to_string());
        entry.deleted = false;
        self.put(provider, object, key, &entry).await?;
        self.put_reverse(provider, object, key, id).await
    }

    /// Returns once the server has stored it (a JetStream ack), so a
    /// message is only acked after what it taught the map is durable.
    pub async fn put(
        &self,
        provider: &str,
        object: &str,
        key: &str,
        entry: &Entry,
    ) -> Result<(), IdMapError> {
        let value = serde_json::to_vec(entry).map_err(|e| IdMapError(e.to_string()))?;
        self.requests
            .put(&kv_key(provider, object, key), value.into())
            .await
            .map_err(IdMapError)
    }

    /// Writes the reverse entry of `id` (id → `key`), for
    /// [`IdMap::key_of`]; once per id learned.
    pub async fn put_reverse(
        &self,
        provider: &str,
        object: &str,
        key: &str,
        id: &str,
    ) -> Result<(), IdMapError> {
        let reverse = serde_json::to_vec(&Reverse {
            key: key.to_string(),
        })
        .map_err(|e| IdMapError(e.to_string()))?;
        self.requests
            .put(&reverse_key(provider, object, id), reverse.into())
            .await
            .map_err(IdMapError)
    }
}

/// Whether a nats-server of `version` (`2.12.8`) answers batch direct gets
/// (`multi_last`, 2.11 and later).
fn batch_gets(version: &str) -> bool {
    crate::kv::server_version(version) >= (2, 11)
}

/// The bucket key of a record's entry: `provider.object.<kv_token(key)>`.
pub fn kv_key(provider: &str, object: &str, key: &str) -> String {
    joined(&[provider, object], key)
}

/// The reverse entry of a provider id: `provider.object.by_id.<id>`. Four
/// tokens: a record key is always one token (`kv_token`), so no record's
/// entry can be taken for a reverse one.
fn reverse_key(provider: &str, object: &str, id: &str) -> String {
    joined(&[provider, object, "by_id"], id)
}

/// `tokens` and `last` as one token (`kv_token`), joined with dots.
///
/// Built in one allocation rather than with `format!`, whose machinery
/// cost about 1,000 instructions per key; every record of an object the id
/// map keeps makes two or three keys (callgrind, `bench/run.sh throughput
/// --id-map`).
fn joined(tokens: &[&str], last: &str) -> String {
    let len = tokens.iter().map(|t| t.len() + 1).sum::<usize>() + token_capacity(last);
    let mut out = String::with_capacity(len);
    for token in tokens {
        out.push_str(token);
        out.push('.');
    }
    push_kv_token(&mut out, last);
    out
}

/// A record key as one KV key token. KV keys allow `[-/_=.a-zA-Z0-9]`.
/// Keys of `[A-Za-z0-9_-]` are used as they are (readable in `nats kv
/// get`); anything else is base64url with a leading `=`, which no plain key
/// can start with.
pub fn kv_token(key: &str) -> String {
    let mut out = String::with_capacity(token_capacity(key));
    push_kv_token(&mut out, key);
    out
}

/// Room for [`kv_token`]`(key)` at its longest: `=` and base64 of `key`.
fn token_capacity(key: &str) -> usize {
    key.len() * 4 / 3 + 4
}

/// Appends [`kv_token`]`(key)` to `out`.
fn push_kv_token(out: &mut String, key: &str) {
    let plain = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if plain {
        out.push_str(key);
    } else {
        out.push('=');
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode_string(key, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_valid_kv_keys_and_unambiguous() {
        assert_eq!(kv_key("hubspot", "contact", "42"), "hubspot.contact.42");
        let odd = kv_key("hubspot", "contact", "a.b c");
        assert!(odd.starts_with("hubspot.contact.="));
        assert!(
            odd.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-/_=.".contains(&b))
        );
        assert_ne!(kv_key("p", "o", "=x"), kv_key("p", "o", "x"));
        // A reverse entry never collides with a forward one.
        assert_ne!(reverse_key("p", "o", "x"), kv_key("p", "o", "x"));
        assert!(reverse_key("p", "o", "a.b").starts_with("p.o.by_id.="));
    }

    #[test]
    fn batch_gets_from_2_11() {
        assert!(!batch_gets("2.9.10"));
        assert!(!batch_gets("2.10.25"));
        assert!(batch_gets("2.11.0"));
        assert!(batch_gets("2.12.8"));
        assert!(batch_gets("3.0.0-beta"));
        assert!(!batch_gets(""));
    }

    #[test]
    fn entries_read_back_and_old_bare_ids_still_read() {
        let entry = Entry {
            id: Some("c1".into()),
            stream: Some("CDC".into()),
            seq: 42,
            body: Some(body_hash(&serde_json::json!({"a": 1}))),
            ..Entry::default()
        };
        let bytes = serde_json::to_vec(&entry).unwrap();
        assert_eq!(Entry::decode(&bytes), entry);
        assert_eq!(Entry::decode(b"12345").live_id(), Some("12345"));
        assert!(entry.supersedes("CDC", 42));
        assert!(entry.supersedes("CDC", 7));
        assert!(!entry.supersedes("CDC", 43));
        assert!(!entry.supersedes("OTHER", 7));
    }

    #[test]
    fn body_hashes_are_stable() {
        // Pinned: stored hashes must read the same after an upgrade.
        assert_eq!(body_hash(&serde_json::json!({"a": 1})), "9c3e82dd6fcae8b1");
        assert_ne!(
            body_hash(&serde_json::json!({"a": 1})),
            body_hash(&serde_json::json!({"a": 2}))
        );
        // A request's body, serialized once, hashes the same.
        let body = serde_json::json!({"properties": {"email": "a\"b@c.d", "n": 1.5, "x": null}});
        assert_eq!(
            json_hash(&serde_json::to_vec(&body).unwrap()),
            body_hash(&body)
        );
    }
}
