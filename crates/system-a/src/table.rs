//! The write path every write takes, the API's and the admin's alike: plan
//! it, publish its event and wait until JetStream stored it, then apply it.
//! One committer makes the writes, in the order they arrive, so the events
//! in the stream are in the order the writes were made, and a reader never
//! sees a change whose event is not in the stream yet.
//!
//! Group commit, as databases do: the committer takes every write waiting,
//! plans each against the writes planned before it, sends their events one
//! after another without waiting, then waits for the acknowledgements and
//! applies the writes in order. A group never holds two writes of one
//! record, so a record's events are in the stream in the order of its
//! writes even when a publish fails and is repeated (events of different
//! records may then be stored out of their write order, as a CDC pipeline
//! with several partitions stores them). While NATS is down, writes wait
//! (and queue up behind the first) until it is back.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::{mpsc, oneshot};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::cdc::{Event, Origin, Publisher};
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
    /// The committer has stopped (System A is shutting down).
    #[error("System A is shutting down")]
    ShuttingDown,
}

/// What to write.
pub(crate) enum Change {
    Create(Value),
    Update(String, Value),
    Delete(String),
}

pub(crate) struct Table {
    /// To the committer.
    writes: mpsc::UnboundedSender<Request>,
    state: Arc<Mutex<State>>,
}

/// A write waiting for the committer, and who waits for its outcome.
struct Request {
    origin: Origin,
    change: Change,
    done: oneshot::Sender<Result<Option<Value>, WriteError>>,
}

#[derive(Default)]
struct State {
    /// What readers see: every write whose event is stored.
    contacts: Contacts,
    counters: Counters,
}

/// Writes planned and sent, waiting for their acknowledgements.
#[derive(Default)]
struct Group {
    writes: Vec<Sent>,
    ids: HashSet<String>,
}

struct Sent {
    origin: Origin,
    done: oneshot::Sender<Result<Option<Value>, WriteError>>,
    write: Write,
    event: Event,
    sent: Result<async_nats::jetstream::context::PublishAckFuture, async_nats::Error>,
}

/// Writes in one group at most.
const MAX_GROUP: usize = 256;

impl Table {
    /// Starts the committer (on the current tokio runtime); it stops when
    /// the table is dropped.
    pub(crate) fn new(publisher: Publisher) -> Table {
        let (writes, queue) = mpsc::unbounded_channel();
        let state = Arc::new(Mutex::new(State::default()));
        tokio::spawn(commit(queue, publisher, state.clone()));
        Table { writes, state }
    }

    /// Makes `change`; the record after it (`None` after a delete).
    pub(crate) async fn write(
        &self,
        origin: Origin,
        change: Change,
    ) -> Result<Option<Value>, WriteError> {
        let (done, outcome) = oneshot::channel();
        let request = Request {
            origin,
            change,
            done,
        };
        self.writes
            .send(request)
            .map_err(|_| WriteError::ShuttingDown)?;
        outcome.await.unwrap_or(Err(WriteError::ShuttingDown))
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
        lock(&self.state)
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // Every update of the state is a single step: keep serving after a panic.
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The committer: takes the writes waiting, in groups, until the table is
/// dropped. `planned` is what readers will see once every sent write is
/// applied: writes are planned against it.
async fn commit(
    mut queue: mpsc::UnboundedReceiver<Request>,
    mut publisher: Publisher,
    state: Arc<Mutex<State>>,
) {
    let mut planned = Contacts::default();
    let mut waiting = Vec::new();
    while queue.recv_many(&mut waiting, MAX_GROUP).await > 0 {
        let mut group = Group::default();
        for Request {
            origin,
            change,
            done,
        } in waiting.drain(..)
        {
            let write = match plan(&mut planned, change) {
                Ok(write) => write,
                Err(e) => {
                    let _ = done.send(Err(e));
                    continue;
                }
            };
            if group.ids.contains(&write.id) {
                // A record's second write: its first is stored before it
                // is sent (it was planned after the first already).
                settle(&publisher, &state, std::mem::take(&mut group)).await;
            }
            let event = publisher.prepare(&write, origin);
            let sent = publisher.send(&event).await;
            group.ids.insert(write.id.clone());
            group.writes.push(Sent {
                origin,
                done,
                write,
                event,
                sent,
            });
        }
        settle(&publisher, &state, group).await;
    }
}

/// Plans `change` against `planned`, and makes it part of what is planned.
fn plan(planned: &mut Contacts, change: Change) -> Result<Write, WriteError> {
    let bad = |e: FieldsError| WriteError::BadFields(e.to_string());
    let write = match change {
        Change::Create(body) => planned.plan_create(fields(body).map_err(bad)?),
        Change::Update(id, body) => {
            let patch: Fields = fields(body).map_err(bad)?;
            planned
                .plan_update(&id, patch)
                .ok_or(WriteError::NotFound(id))?
        }
        Change::Delete(id) => planned.plan_delete(&id).ok_or(WriteError::NotFound(id))?,
    };
    planned.apply(&write);
    Ok(write)
}

/// Waits until each write's event is stored, then applies the writes in
/// order and answers them.
async fn settle(publisher: &Publisher, state: &Mutex<State>, group: Group) {
    let mut stored = Vec::with_capacity(group.writes.len());
    for sent in group.writes {
        let retries = publisher.store(&sent.event, sent.sent).await;
        stored.push((sent.origin, sent.done, sent.write, retries));
    }
    let mut state = lock(state);
    for (origin, done, write, retries) in stored {
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
        let _ = done.send(Ok(write.after));
    }
}
