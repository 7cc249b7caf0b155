//! HubSpot-like webhooks: every change of a HubSpot contact (syncflow's
//! through the API, a user's through the admin edits) becomes events, queued
//! here and posted in signed batches to the configured target by a
//! background task (`deliver.rs`), with HubSpot's retries and, on demand, its
//! duplicates, reordering and lost answers.
//!
//! Events are only queued while a target is set, as HubSpot only sends to a
//! subscribed app. Changing the target sends the batches not yet taken to the
//! new one; batches already in flight finish against the old one.

mod config;
mod deliver;
mod event;
mod sign;
pub use sign::signature_v3;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

pub use config::{MAX_RETRY_BACKOFF, WebhookConfig};
pub(crate) use event::{Change, property_changes};

use crate::config::ConfigError;
use crate::records::unix_millis;
use crate::writes::Origin;
use event::{Event, Stamp};

/// Counts of webhook deliveries since the start or the last reset, as
/// returned by `MockCrm::webhook_stats` and `GET /_admin/webhooks`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookStats {
    /// Events queued (only while a target is set).
    pub events_enqueued: u64,
    /// Events in batches the receiver accepted (2xx, not dropped), once each.
    pub events_delivered: u64,
    /// Batches the receiver accepted, duplicates not included.
    pub batches_sent: u64,
    /// Failed attempts followed by another (non-2xx, connection error,
    /// timeout or a simulated drop).
    pub retries: u64,
    /// Accepted batches that were sent a second time (`duplicate_rate`).
    pub duplicates_sent: u64,
    /// Events whose batch ran out of attempts.
    pub given_up: u64,
    /// Events neither delivered nor given up yet: queued or in flight. A
    /// batch counts as delivered only once its duplicate (if any) was sent,
    /// so 0 means the receiver has seen everything it will see.
    pub pending: u64,
    /// Every POST made: attempts and duplicates.
    pub requests: u64,
}

/// The event queue and the delivery counts, shared by the HubSpot store
/// (which publishes under its own lock: events are numbered in the order the
/// changes were made) and the delivery task.
pub(crate) struct Webhooks {
    state: Mutex<State>,
    /// Wakes the delivery task: a target was set or events were queued.
    wake: Notify,
    client: reqwest::Client,
}

struct State {
    target: Option<Arc<Target>>,
    queue: VecDeque<Event>,
    next_event_id: u64,
    stats: WebhookStats,
    /// Bumped by a reset: deliveries of batches taken before it no longer count.
    generation: u64,
}

/// A validated [`WebhookConfig`].
pub(crate) struct Target {
    config: WebhookConfig,
    url: reqwest::Url,
}

/// A batch taken off the queue, with what its delivery needs.
struct Batch {
    target: Arc<Target>,
    events: Vec<Event>,
    generation: u64,
}

impl Webhooks {
    pub(crate) fn new(config: Option<WebhookConfig>) -> Result<Arc<Webhooks>, ConfigError> {
        let webhooks = Arc::new(Webhooks {
            state: Mutex::new(State {
                target: None,
                queue: VecDeque::new(),
                next_event_id: 1,
                stats: WebhookStats::default(),
                generation: 0,
            }),
            wake: Notify::new(),
            client: reqwest::Client::new(),
        });
        webhooks.set_target(config)?;
        Ok(webhooks)
    }

    /// Starts the delivery task; it runs until aborted.
    pub(crate) fn spawn_delivery(self: &Arc<Self>) -> JoinHandle<()> {
        tokio::spawn(deliver::run(self.clone()))
    }

    pub(crate) fn set_target(&self, config: Option<WebhookConfig>) -> Result<(), ConfigError> {
        let target = match config {
            Some(config) => {
                let url = config.validate()?;
                Some(Arc::new(Target { config, url }))
            }
            None => None,
        };
        self.lock().target = target;
        self.wake.notify_one();
        Ok(())
    }

    /// Queues the events of one change of contact `object_id`, all with the
    /// same `occurredAt`; nothing while no target is set.
    pub(crate) fn publish(&self, origin: Origin, object_id: &str, changes: Vec<Change>) {
        let mut state = self.lock();
        let Some(target) = state.target.clone() else {
            return;
        };
        let occurred_at = unix_millis();
        for change in changes {
            let stamp = Stamp {
                event_id: state.next_event_id,
                portal_id: target.config.portal_id,
                app_id: target.config.app_id,
                occurred_at,
                object_id,
                origin,
            };
            state.next_event_id += 1;
            state.queue.push_back(Event::new(change, &stamp));
            state.stats.events_enqueued += 1;
        }
        drop(state);
        self.wake.notify_one();
    }

    pub(crate) fn stats(&self) -> WebhookStats {
        let stats = self.lock().stats;
        WebhookStats {
            pending: stats.events_enqueued - stats.events_delivered - stats.given_up,
            ..stats
        }
    }

    /// Forgets queued events and the counts; batches in flight still reach
    /// the receiver but are no longer counted. Event ids keep growing, so a
    /// receiver's deduplication never mistakes a new event for an old one.
    pub(crate) fn reset(&self) {
        let mut state = self.lock();
        state.queue.clear();
        state.stats = WebhookStats::default();
        state.generation += 1;
    }

    /// The target, when one is set and events are waiting.
    fn ready(&self) -> Option<Arc<Target>> {
        let state = self.lock();
        (!state.queue.is_empty())
            .then(|| state.target.clone())
            .flatten()
    }

    fn queued(&self) -> usize {
        self.lock().queue.len()
    }

    /// Up to `max_batch` events of the current target, oldest first.
    fn take_batch(&self) -> Option<Batch> {
        let mut state = self.lock();
        let target = state.target.clone()?;
        let take = state.queue.len().min(target.config.max_batch);
        if take == 0 {
            return None;
        }
        let events = state.queue.drain(..take).collect();
        Some(Batch {
            target,
            events,
            generation: state.generation,
        })
    }

    /// Counts what a delivery did, unless a reset came since its batch was taken.
    fn count(&self, generation: u64, update: impl FnOnce(&mut WebhookStats)) {
        let mut state = self.lock();
        if state.generation == generation {
            update(&mut state.stats);
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update leaves the state consistent: keep going after a panic.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
