//! The durable id map: record key → the provider's id of that record, in a
//! JetStream key-value bucket so every instance and every restart sees it.

use async_nats::jetstream::{self, kv};
use base64::Engine as _;

/// The bucket every pipeline shares; keys are `provider.object.key`.
pub const BUCKET: &str = "syncflow_idmap";

#[derive(Debug, thiserror::Error)]
#[error("id map: {0}")]
pub struct IdMapError(String);

/// What the id map knows of a record key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Known {
    /// The provider's id of the record.
    Id(String),
    /// syncflow deleted the record (or saw it was already gone).
    Deleted,
    /// Never created through syncflow, or its create failed.
    Unknown,
}

#[derive(Clone)]
pub struct IdMap {
    store: kv::Store,
}

impl IdMap {
    /// Opens the bucket, creating it on first use.
    ///
    /// The bucket's stream is created here with the settings of the KV
    /// convention (as `create_key_value` would) because async-nats's
    /// `create_key_value` first reads the account info in a shape that
    /// nats-server 2.9 (Debian bookworm's) does not send.
    pub async fn open(js: &jetstream::Context) -> Result<Self, IdMapError> {
        let fail = |e: &dyn std::fmt::Display| IdMapError(e.to_string());
        if let Ok(store) = js.get_key_value(BUCKET).await {
            return Ok(IdMap { store });
        }
        js.get_or_create_stream(jetstream::stream::Config {
            name: format!("KV_{BUCKET}"),
            description: Some("syncflow: record key to provider id".to_string()),
            subjects: vec![format!("$KV.{BUCKET}.>")],
            max_messages_per_subject: 1,
            storage: jetstream::stream::StorageType::File,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: jetstream::stream::DiscardPolicy::New,
            num_replicas: 1,
            ..Default::default()
        })
        .await
        .map_err(|e| fail(&e))?;
        let store = js.get_key_value(BUCKET).await.map_err(|e| fail(&e))?;
        Ok(IdMap { store })
    }

    /// What the map knows of `key`: its id, that syncflow deleted its record
    /// (a delete leaves a marker in the bucket), or nothing.
    pub async fn lookup(
        &self,
        provider: &str,
        object: &str,
        key: &str,
    ) -> Result<Known, IdMapError> {
        let entry = self
            .store
            .entry(kv_key(provider, object, key))
            .await
            .map_err(|e| IdMapError(e.to_string()))?;
        Ok(match entry {
            Some(e) if matches!(e.operation, kv::Operation::Put) => {
                Known::Id(String::from_utf8_lossy(&e.value).into_owned())
            }
            Some(_) => Known::Deleted,
            None => Known::Unknown,
        })
    }

    /// Returns once the server has stored it (a JetStream ack), so a
    /// message is only acked after the id it produced is durable.
    pub async fn put(
        &self,
        provider: &str,
        object: &str,
        key: &str,
        id: &str,
    ) -> Result<(), IdMapError> {
        self.store
            .put(kv_key(provider, object, key), id.to_string().into())
            .await
            .map(|_| ())
            .map_err(|e| IdMapError(e.to_string()))
    }

    pub async fn remove(&self, provider: &str, object: &str, key: &str) -> Result<(), IdMapError> {
        self.store
            .delete(kv_key(provider, object, key))
            .await
            .map_err(|e| IdMapError(e.to_string()))
    }
}

/// KV keys allow `[-/_=.a-zA-Z0-9]`. Record keys of `[A-Za-z0-9_-]` are used
/// as they are (readable in `nats kv get`); anything else is base64url with
/// a leading `=`, which no plain key can start with.
fn kv_key(provider: &str, object: &str, key: &str) -> String {
    let plain = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if plain {
        format!("{provider}.{object}.{key}")
    } else {
        let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key);
        format!("{provider}.{object}.={encoded}")
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
    }
}
