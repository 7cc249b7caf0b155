//! Link states in the JetStream key-value bucket `syncflow_links`, one
//! entry per linked record (`<link>.<record key>`). Saves are
//! compare-and-set on the entry's revision: the two directions of a link
//! run in different pipelines, and a change from each side of one record at
//! the same moment must not lose the other's update of the state.

use async_nats::jetstream::{self, kv};

use super::state::PairState;
use crate::idmap::kv_token;

pub const BUCKET: &str = "syncflow_links";

#[derive(Debug, thiserror::Error)]
#[error("link state: {0}")]
pub struct StoreError(String);

/// What a save found.
#[derive(Debug, PartialEq, Eq)]
pub enum Saved {
    Done,
    /// The entry changed since it was loaded: load and apply again.
    Conflict,
}

#[derive(Clone)]
pub struct LinkStore {
    store: kv::Store,
}

fn key(link: &str, record: &str) -> String {
    format!("{link}.{}", kv_token(record))
}

impl LinkStore {
    pub async fn open(js: &jetstream::Context, replicas: usize) -> Result<Self, StoreError> {
        crate::kv::open_bucket(js, BUCKET, "syncflow: two-way link states", replicas)
            .await
            .map(|store| LinkStore { store })
            .map_err(StoreError)
    }

    /// The state of `record` (its System A key) in `link`, and the revision
    /// to save against (0: none yet).
    pub async fn load(&self, link: &str, record: &str) -> Result<(PairState, u64), StoreError> {
        let entry = self
            .store
            .entry(key(link, record))
            .await
            .map_err(|e| StoreError(e.to_string()))?;
        match entry {
            Some(entry) if matches!(entry.operation, kv::Operation::Put) => {
                let state = serde_json::from_slice(&entry.value)
                    .map_err(|e| StoreError(format!("unreadable state: {e}")))?;
                Ok((state, entry.revision))
            }
            _ => Ok((PairState::default(), 0)),
        }
    }

    pub async fn save(
        &self,
        link: &str,
        record: &str,
        state: &PairState,
        revision: u64,
    ) -> Result<Saved, StoreError> {
        let value = serde_json::to_vec(state).map_err(|e| StoreError(e.to_string()))?;
        let k = key(link, record);
        let result = match revision {
            0 => self
                .store
                .create(&k, value.into())
                .await
                .map_err(|e| match e.kind() {
                    kv::CreateErrorKind::AlreadyExists => None,
                    _ => Some(e.to_string()),
                }),
            _ => self
                .store
                .update(&k, value.into(), revision)
                .await
                .map_err(|e| match e.kind() {
                    kv::UpdateErrorKind::WrongLastRevision => None,
                    _ => Some(e.to_string()),
                }),
        };
        match result {
            Ok(_) => Ok(Saved::Done),
            Err(None) => Ok(Saved::Conflict),
            Err(Some(e)) => Err(StoreError(e)),
        }
    }
}
