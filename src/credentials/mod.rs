//! Credentials per account, in the JetStream key-value bucket
//! `syncflow_credentials` (one entry per provider and account, see
//! [`stored`]). Every instance watches the bucket and keeps its entries in
//! memory, so a rotation (`syncflow accounts add`) or a refreshed OAuth2
//! token reaches every instance at once, with no restart; writes that race
//! (two instances refreshing one token) go through the bucket's
//! compare-and-set on the entry's revision.
//!
//! The bucket holds secrets: restrict it to syncflow's NATS user, and turn
//! on JetStream encryption at rest (`jetstream { cipher: ... }`) in
//! production (README, "Credentials per account").

pub mod stored;

use std::collections::HashMap;
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use futures::StreamExt;
use http::HeaderValue;
use tokio::sync::Notify;

pub use stored::{Lease, Stored};

pub const BUCKET: &str = "syncflow_credentials";

/// One account's credentials as last seen, with their bucket revision and
/// the `Authorization` header they make (built once, not per request).
#[derive(Debug)]
pub struct Current {
    pub stored: Stored,
    pub revision: u64,
    /// `Bearer <token>`, marked sensitive; `None` without a usable token.
    pub header: Option<HeaderValue>,
}

impl Current {
    fn new(stored: Stored, revision: u64) -> Self {
        let header = stored.bearer().and_then(|token| {
            let mut value = HeaderValue::from_str(&format!("Bearer {}", token.expose())).ok()?;
            value.set_sensitive(true);
            Some(value)
        });
        Current {
            stored,
            revision,
            header,
        }
    }
}

/// The bucket, and what this instance knows of it.
pub struct CredentialStore {
    kv: kv::Store,
    /// This instance, in refresh leases.
    pub instance: String,
    /// By bucket key.
    known: RwLock<HashMap<String, Arc<Current>>>,
    /// Woken on every change to `known`.
    changed: Notify,
}

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// Someone wrote the entry since the revision the write expected.
    #[error("the credentials changed meanwhile")]
    Conflict,
    #[error("credentials bucket: {0}")]
    Bucket(String),
}

impl CredentialStore {
    /// Opens (creating when missing) the bucket, without watching it: what
    /// `syncflow accounts` needs.
    pub async fn open(js: &jetstream::Context, replicas: usize) -> Result<Self, String> {
        let kv = crate::kv::open_bucket(js, BUCKET, "syncflow: credentials per account", replicas)
            .await?;
        Ok(CredentialStore {
            kv,
            instance: crate::kv::holder_id(),
            known: RwLock::new(HashMap::new()),
            changed: Notify::new(),
        })
    }

    /// Opens the bucket and keeps this instance's view of it up to date for
    /// as long as the store lives.
    pub async fn open_watched(
        js: &jetstream::Context,
        replicas: usize,
    ) -> Result<Arc<Self>, String> {
        let store = Arc::new(Self::open(js, replicas).await?);
        tokio::spawn(watch(Arc::downgrade(&store), store.kv.clone()));
        Ok(store)
    }

    /// What this instance knows of `account` at `provider`.
    pub fn get(&self, provider: &str, account: &str) -> Option<Arc<Current>> {
        let known = self.known.read().expect("credentials");
        known.get(&stored::key(provider, account)).cloned()
    }

    /// Resolves on the next change to what this instance knows. Take it
    /// before looking, so a change between the look and the wait wakes it.
    pub fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }

    /// Replaces `account`'s credentials whatever they were.
    pub async fn put(&self, provider: &str, account: &str, value: &Stored) -> Result<u64, String> {
        let key = stored::key(provider, account);
        let revision = self
            .kv
            .put(&key, value.to_json().into())
            .await
            .map_err(|e| e.to_string())?;
        self.learn(key, Some(Current::new(value.clone(), revision)));
        Ok(revision)
    }

    /// Writes `value` if the entry is still at `revision`.
    pub async fn update(
        &self,
        provider: &str,
        account: &str,
        value: &Stored,
        revision: u64,
    ) -> Result<Arc<Current>, WriteError> {
        let key = stored::key(provider, account);
        match self.kv.update(&key, value.to_json().into(), revision).await {
            Ok(revision) => {
                let current = Arc::new(Current::new(value.clone(), revision));
                self.learn_arc(key, Some(current.clone()));
                Ok(current)
            }
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                // Learn what is there now, so the next look is not stale.
                let _ = self.fetch(provider, account).await;
                Err(WriteError::Conflict)
            }
            Err(e) => Err(WriteError::Bucket(e.to_string())),
        }
    }

    /// Reads `account`'s entry from the bucket (not memory), and learns it.
    pub async fn fetch(
        &self,
        provider: &str,
        account: &str,
    ) -> Result<Option<Arc<Current>>, String> {
        let key = stored::key(provider, account);
        let entry = self.kv.entry(&key).await.map_err(|e| e.to_string())?;
        let current = entry.and_then(|entry| decode(&entry)).map(Arc::new);
        self.learn_arc(key, current.clone());
        Ok(current)
    }

    /// Removes `account`'s credentials; false when there were none.
    pub async fn remove(&self, provider: &str, account: &str) -> Result<bool, String> {
        let key = stored::key(provider, account);
        let existed = self
            .kv
            .entry(&key)
            .await
            .map_err(|e| e.to_string())?
            .is_some_and(|e| e.operation == kv::Operation::Put);
        if existed {
            self.kv.delete(&key).await.map_err(|e| e.to_string())?;
        }
        self.learn(key, None);
        Ok(existed)
    }

    /// Every stored account: `(provider, account, credentials)`, sorted.
    pub async fn list(&self) -> Result<Vec<(String, String, Current)>, String> {
        let mut keys: Vec<String> = self
            .kv
            .keys()
            .await
            .map_err(|e| e.to_string())?
            .filter_map(|k| async move { k.ok() })
            .collect()
            .await;
        keys.sort();
        let mut listed = Vec::with_capacity(keys.len());
        for key in keys {
            let Some((provider, account)) = stored::parse_key(&key) else {
                continue;
            };
            let entry = self.kv.entry(&key).await.map_err(|e| e.to_string())?;
            if let Some(current) = entry.and_then(|e| decode(&e)) {
                listed.push((provider, account, current));
            }
        }
        Ok(listed)
    }

    fn learn(&self, key: String, current: Option<Current>) {
        self.learn_arc(key, current.map(Arc::new));
    }

    /// Takes `current` (or the entry's removal) unless a later revision is
    /// known already: the watch and this instance's own writes race.
    fn learn_arc(&self, key: String, current: Option<Arc<Current>>) {
        {
            let mut known = self.known.write().expect("credentials");
            match current {
                Some(current) => {
                    let newer = known
                        .get(&key)
                        .is_none_or(|old| old.revision < current.revision);
                    if newer {
                        known.insert(key, current);
                    }
                }
                None => {
                    known.remove(&key);
                }
            }
        }
        self.changed.notify_waiters();
    }
}

/// An entry's credentials; `None` for a deletion or a value that does not
/// read (logged: it was written by hand or by a newer syncflow).
fn decode(entry: &kv::Entry) -> Option<Current> {
    if entry.operation != kv::Operation::Put {
        return None;
    }
    match Stored::from_json(&entry.value) {
        Ok(stored) => Some(Current::new(stored, entry.revision)),
        Err(e) => {
            tracing::error!(bucket = BUCKET, key = %entry.key, error = %e, "credentials entry does not read: ignored");
            None
        }
    }
}

/// Follows the bucket into `store` until the store is dropped, watching
/// again (from each key's latest value) whenever the watch ends.
async fn watch(store: Weak<CredentialStore>, kv: kv::Store) {
    let mut backoff = Duration::from_millis(250);
    loop {
        match kv.watch_with_history(">").await {
            Ok(mut entries) => {
                backoff = Duration::from_millis(250);
                while let Some(entry) = entries.next().await {
                    let Some(store) = store.upgrade() else {
                        return;
                    };
                    match entry {
                        Ok(entry) => {
                            let current = decode(&entry);
                            if current.is_none() && entry.operation != kv::Operation::Put {
                                store.learn(entry.key.clone(), None);
                            } else if let Some(current) = current {
                                store.learn(entry.key.clone(), Some(current));
                            }
                        }
                        Err(e) => {
                            tracing::warn!(bucket = BUCKET, error = %e, "credentials watch failed");
                            break;
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!(bucket = BUCKET, error = %e, retry_in_ms = backoff.as_millis() as u64, "cannot watch the credentials bucket");
            }
        }
        if store.strong_count() == 0 {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}
