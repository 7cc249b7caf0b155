//! The write path every write takes, the API's and the admin's alike: plan
//! it, publish its event and wait until JetStream stored it, then apply it.
//! Writes are serialised (one at a time, publish included), so the events in
//! the stream are in the order the writes were made, and a reader never sees
//! a change whose event is not in the stream yet. While NATS is down, writes
//! wait (and queue up behind the first) until it is back.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::cdc::{Origin, Publisher};
use super::store::{Contacts, Fields, FieldsError, Write, fields};

/// Counts since the start.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Creates, updates and deletes through the API, no-op updates included.
    pub api_writes: u64,
    /// Of `api_writes`, the updates that changed nothing (before == after).
    pub api_noop_writes: u64,
    /// Writes through the admin routes or the `user_*` methods.
    pub user_writes: u64,
    /// Events JetStream acknowledged: one per write made.
    pub events_published: u64,
    /// Publish attempts that failed (NATS down, no acknowledgement in time)
    /// and were repeated.
    #[serde(default)]
    pub publish_retries: u64,
}

/// Every record and the counters, as `SystemA::snapshot` and
/// `GET /_admin/state` return them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Records by id, each with its `"id"`.
    pub records: BTreeMap<String, Value>,
    pub counters: Counters,
}

/// A write that was not made.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("contact {0} not found")]
    NotFound(String),
    #[error("{0}")]
    BadFields(String),
}

/// What to write.
pub(crate) enum Change {
    Create(Value),
    Update(String, Value),
    Delete(String),
}

pub(crate) struct Table {
    /// Held for a whole write: serialises them.
    publisher: tokio::sync::Mutex<Publisher>,
    /// Held only for a moment: reads never wait for a publish.
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    contacts: Contacts,
    counters: Counters,
}

impl Table {
    pub(crate) fn new(publisher: Publisher) -> Table {
        Table {
            publisher: tokio::sync::Mutex::new(publisher),
            state: Mutex::new(State::default()),
        }
    }

    /// Makes `change`; the record after it (`None` after a delete).
    pub(crate) async fn write(
        &self,
        origin: Origin,
        change: Change,
    ) -> Result<Option<Value>, WriteError> {
        let mut publisher = self.publisher.lock().await;
        let write = self.plan(change)?;
        let retries = publisher.publish(&write, origin).await;
        let mut state = self.lock();
        state.contacts.apply(&write);
        let counters = &mut state.counters;
        counters.events_published += 1;
        counters.publish_retries += retries;
        match origin {
            Origin::Api => {
                counters.api_writes += 1;
                counters.api_noop_writes += u64::from(!write.changed());
            }
            Origin::User => counters.user_writes += 1,
        }
        Ok(write.after)
    }

    fn plan(&self, change: Change) -> Result<Write, WriteError> {
        let bad = |e: FieldsError| WriteError::BadFields(e.to_string());
        let mut state = self.lock();
        match change {
            Change::Create(body) => Ok(state.contacts.plan_create(fields(body).map_err(bad)?)),
            Change::Update(id, body) => {
                let patch: Fields = fields(body).map_err(bad)?;
                state
                    .contacts
                    .plan_update(&id, patch)
                    .ok_or(WriteError::NotFound(id))
            }
            Change::Delete(id) => state
                .contacts
                .plan_delete(&id)
                .ok_or(WriteError::NotFound(id)),
        }
    }

    pub(crate) fn get(&self, id: &str) -> Option<Value> {
        self.lock().contacts.get(id)
    }

    pub(crate) fn snapshot(&self) -> Snapshot {
        let state = self.lock();
        Snapshot {
            records: state.contacts.all(),
            counters: state.counters.clone(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update of the state is a single step: keep serving after a panic.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
