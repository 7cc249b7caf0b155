//! Several instances as one (`fleet:` in syncflow.yaml, docs/fleet.md).
//!
//! Without a fleet, instances that run the same pipeline share its durable
//! consumer and split its messages as they come, so two changes of one key
//! can be applied by two instances out of order. With a fleet:
//!
//! - each pipeline has one **splitter** at a time in the fleet: it reads
//!   the pipeline's consumer in stream order and republishes each message
//!   to its key's **partition** (a subject of the work-queue stream
//!   `SYNCFLOW_PARTS`), acking the source only once the partition stream
//!   has stored it ([`split`]);
//! - each partition is held by one instance at a time, which runs it for
//!   every pipeline through a durable consumer of its own ([`source`]);
//! - who holds what is a lease per partition and per splitter in the
//!   key-value bucket `syncflow_fleet`, next to each instance's heartbeat.
//!   Every instance computes the same assignment from the live members
//!   ([`assign`]); it takes what is its share once its holder let go or its
//!   lease ran out, and hands over what no longer is, after draining it.
//!
//! A key lives in one partition, a partition is run by one instance, and a
//! new holder binds the partition's consumer at its ack floor
//! ([`crate::source::jetstream`]'s take-over), so a key's changes are
//! applied in stream order whichever instances come, go or die.

pub mod assign;
mod source;
pub mod split;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use futures::StreamExt;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

pub use assign::{Resource, partition_of};
pub use source::PartitionedSource;

use crate::clock::now_ms;
use crate::config::model::FleetGlobals;
use crate::kv::{hold_lease, open_bucket, release_lease};

/// The bucket of heartbeats and leases.
pub const BUCKET: &str = "syncflow_fleet";
/// The stream of messages routed to their key's partition.
pub const PARTS_STREAM: &str = "SYNCFLOW_PARTS";

/// The subject of `pipeline`'s partition `p` in [`PARTS_STREAM`].
pub fn parts_subject(pipeline: &str, p: u32) -> String {
    format!("syncflow.parts.{pipeline}.{p}")
}

/// How often the coordinator looks at members and leases (it also wakes
/// on every change in the bucket).
const TICK: Duration = Duration::from_millis(200);

/// This instance's membership of the fleet.
#[derive(Clone)]
pub struct Fleet(Arc<Inner>);

struct Inner {
    me: String,
    partitions: u32,
    failover: Duration,
    store: kv::Store,
    /// What this instance may run now: leased and not being handed over.
    granted: watch::Sender<BTreeSet<Resource>>,
    /// Runs of each granted resource (a partition runs once per pipeline);
    /// a lease is given back only once its resource has none.
    in_use: Mutex<HashMap<Resource, usize>>,
    /// Pipelines whose splitter this instance would run.
    splitters: Mutex<BTreeSet<String>>,
    /// A fence per lease held: turned true when the lease is lost (taken
    /// by another instance, or expired unrenewed), so its runs stop acking
    /// and sending at once rather than finish what they hold.
    fences: Mutex<HashMap<Resource, watch::Sender<bool>>>,
    leaving: watch::Sender<bool>,
    /// True once every lease is given back after [`Fleet::leave`].
    left: watch::Sender<bool>,
    wake: Notify,
}

/// A heartbeat's value.
#[derive(serde::Serialize, serde::Deserialize)]
struct Heartbeat {
    until: i64,
}

impl Fleet {
    /// Opens the bucket and the partitions stream, and starts taking part.
    pub async fn join(
        js: &jetstream::Context,
        settings: &FleetGlobals,
        replicas: usize,
    ) -> Result<Fleet, String> {
        let store = open_bucket(js, BUCKET, "syncflow: fleet members and leases", replicas).await?;
        ensure_parts_stream(js, replicas).await?;
        let me = settings
            .instance
            .clone()
            .unwrap_or_else(crate::kv::holder_id);
        let fleet = Fleet(Arc::new(Inner {
            me,
            partitions: settings.partitions,
            failover: settings.failover.0,
            store,
            granted: watch::channel(BTreeSet::new()).0,
            in_use: Mutex::new(HashMap::new()),
            splitters: Mutex::new(BTreeSet::new()),
            fences: Mutex::new(HashMap::new()),
            leaving: watch::channel(false).0,
            left: watch::channel(false).0,
            wake: Notify::new(),
        }));
        tracing::info!(instance = %fleet.0.me, partitions = settings.partitions, failover_ms = settings.failover.0.as_millis() as u64, "joining the fleet");
        tokio::spawn(coordinate(fleet.clone()));
        Ok(fleet)
    }

    pub fn partitions(&self) -> u32 {
        self.0.partitions
    }

    /// What this instance may run, as it changes.
    pub fn granted(&self) -> watch::Receiver<BTreeSet<Resource>> {
        self.0.granted.subscribe()
    }

    /// Starts a run of `resource`; `None` when it is not (or no longer)
    /// granted. Its lease is not given back while the guard lives.
    pub fn start_run(&self, resource: &Resource) -> Option<Run> {
        let mut in_use = self.0.in_use.lock().expect("in-use counts");
        // Checked under the lock the coordinator reads counts under: once
        // it has revoked a resource and seen no run, none can start.
        if !self.0.granted.borrow().contains(resource) {
            return None;
        }
        let fence = self
            .0
            .fences
            .lock()
            .expect("fences")
            .get(resource)?
            .subscribe();
        *in_use.entry(resource.clone()).or_default() += 1;
        Some(Run {
            fleet: self.clone(),
            resource: resource.clone(),
            fence,
        })
    }

    /// A new fence for a lease just taken.
    fn raise_fence(&self, resource: &Resource) {
        let fence = watch::channel(false).0;
        self.0
            .fences
            .lock()
            .expect("fences")
            .insert(resource.clone(), fence);
    }

    /// The lease is gone: lost (its runs stop at once) or given back.
    fn drop_fence(&self, resource: &Resource, lost: bool) {
        if let Some(fence) = self.0.fences.lock().expect("fences").remove(resource)
            && lost
        {
            fence.send_replace(true);
        }
    }

    fn runs(&self, resource: &Resource) -> usize {
        let in_use = self.0.in_use.lock().expect("in-use counts");
        in_use.get(resource).copied().unwrap_or(0)
    }

    /// This instance runs `pipeline`: it may be given its splitter.
    pub fn add_splitter(&self, pipeline: &str) {
        self.0
            .splitters
            .lock()
            .expect("splitters")
            .insert(pipeline.to_string());
        self.0.wake.notify_one();
    }

    /// This instance no longer runs `pipeline`.
    pub fn remove_splitter(&self, pipeline: &str) {
        self.0.splitters.lock().expect("splitters").remove(pipeline);
        self.0.wake.notify_one();
    }

    /// Leaves the fleet: stops heartbeating (so the others take this
    /// instance's share), hands everything over as its runs end, and
    /// returns once every lease is given back or `deadline` has passed
    /// (what is left then expires after `failover`).
    pub async fn leave(&self, deadline: Duration) {
        self.start_leaving();
        let mut left = self.0.left.subscribe();
        if tokio::time::timeout(deadline, left.wait_for(|l| *l))
            .await
            .is_err()
        {
            tracing::warn!(instance = %self.0.me, "left the fleet with leases still held; they expire after fleet.failover");
        }
    }

    /// Starts leaving without waiting: the others start taking over while
    /// this instance drains.
    pub fn start_leaving(&self) {
        self.0.leaving.send_replace(true);
        self.0.wake.notify_one();
    }
}

/// A run of a granted resource (see [`Fleet::start_run`]).
pub struct Run {
    fleet: Fleet,
    resource: Resource,
    fence: watch::Receiver<bool>,
}

impl Run {
    /// True once the lease is lost: the run's messages are the new holder's.
    pub fn fence(&self) -> watch::Receiver<bool> {
        self.fence.clone()
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        let mut in_use = self.fleet.0.in_use.lock().expect("in-use counts");
        if let Some(n) = in_use.get_mut(&self.resource) {
            *n -= 1;
            if *n == 0 {
                in_use.remove(&self.resource);
            }
        }
        drop(in_use);
        self.fleet.0.wake.notify_one();
    }
}

/// The work-queue stream of partitioned messages: a message is gone once
/// its partition's consumer acked it, so a new holder's consumer starts
/// with exactly what is left. Duplicates (a splitter taking over
/// republishes what its predecessor had not acked) are dropped by
/// `Nats-Msg-Id` within the window.
async fn ensure_parts_stream(js: &jetstream::Context, replicas: usize) -> Result<(), String> {
    js.get_or_create_stream(jetstream::stream::Config {
        name: PARTS_STREAM.to_string(),
        description: Some("syncflow: pipelines' messages by key partition".to_string()),
        subjects: vec!["syncflow.parts.>".to_string()],
        retention: jetstream::stream::RetentionPolicy::WorkQueue,
        storage: jetstream::stream::StorageType::File,
        duplicate_window: Duration::from_secs(120),
        num_replicas: replicas,
        ..Default::default()
    })
    .await
    .map(|_| ())
    .map_err(|e| format!("cannot create the stream {PARTS_STREAM}: {e}"))
}

/// What the coordinator knows and holds.
struct State {
    /// Members by name, with until when their heartbeat holds (ms).
    members: HashMap<String, i64>,
    live: Vec<String>,
    /// Leases held: when each was last renewed, and its revision then.
    held: BTreeMap<Resource, Held>,
    next_heartbeat: Instant,
}

#[derive(Clone, Copy)]
struct Held {
    at: Instant,
    revision: u64,
}

/// Heartbeats, follows the members and holds this instance's share of
/// leases until it has left.
async fn coordinate(fleet: Fleet) {
    let inner = &fleet.0;
    let mut state = State {
        members: HashMap::new(),
        live: Vec::new(),
        held: BTreeMap::new(),
        next_heartbeat: Instant::now(),
    };
    let mut leaving = inner.leaving.subscribe();
    let mut watch: Option<kv::Watch> = None;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let members_gauge = metrics::gauge!("syncflow_fleet_members");
    let held_gauge = metrics::gauge!("syncflow_fleet_partitions_held");
    loop {
        if watch.is_none() {
            watch = inner.store.watch_with_history("member.>").await.ok();
        }
        let mut watch_ended = false;
        tokio::select! {
            _ = tick.tick() => {}
            _ = inner.wake.notified() => {}
            _ = leaving.changed() => {}
            entry = next_entry(&mut watch) => match entry {
                Some(Ok(entry)) => follow(&mut state, &entry),
                // Cut off (NATS restarted): watched again from its history.
                _ => watch_ended = true,
            },
        }
        if watch_ended {
            watch = None;
        }
        let is_leaving = *inner.leaving.borrow();
        heartbeat(inner, &mut state, is_leaving).await;
        let live = live_members(&state, &inner.me, is_leaving);
        if live != state.live {
            tracing::info!(instance = %inner.me, members = ?live, "fleet members changed");
            members_gauge.set(live.len() as f64);
            state.live = live;
        }
        let mut wanted: BTreeSet<Resource> =
            (0..inner.partitions).map(Resource::Partition).collect();
        if !is_leaving {
            let splitters = inner.splitters.lock().expect("splitters").clone();
            wanted.extend(splitters.into_iter().map(Resource::Splitter));
        }
        let resources: BTreeSet<Resource> =
            wanted.iter().chain(state.held.keys()).cloned().collect();
        let live = state.live.clone();
        let owners = assign::partition_owners(inner.partitions, &live);
        for resource in resources {
            let owner = match &resource {
                Resource::Partition(p) => owners.get(*p as usize).copied(),
                Resource::Splitter(pipeline) => assign::splitter_owner(pipeline, &live),
            };
            let mine =
                !is_leaving && wanted.contains(&resource) && owner == Some(inner.me.as_str());
            settle_lease(&fleet, &mut state, resource, mine).await;
        }
        held_gauge.set(
            state
                .held
                .keys()
                .filter(|r| matches!(r, Resource::Partition(_)))
                .count() as f64,
        );
        if is_leaving && state.held.is_empty() {
            inner.left.send_replace(true);
            return;
        }
    }
}

/// The next change of a heartbeat; never, without a watch.
async fn next_entry(watch: &mut Option<kv::Watch>) -> Option<Result<kv::Entry, kv::WatcherError>> {
    match watch {
        Some(watch) => watch.next().await,
        None => std::future::pending().await,
    }
}

/// Takes in a change of a member's heartbeat.
fn follow(state: &mut State, entry: &kv::Entry) {
    let Some(name) = entry.key.strip_prefix("member.") else {
        return;
    };
    match entry.operation {
        kv::Operation::Put => {
            if let Ok(beat) = serde_json::from_slice::<Heartbeat>(&entry.value) {
                state.members.insert(name.to_string(), beat.until);
            }
        }
        kv::Operation::Delete | kv::Operation::Purge => {
            state.members.remove(name);
        }
    }
}

/// Writes this instance's heartbeat when due; removes it once leaving.
async fn heartbeat(inner: &Inner, state: &mut State, leaving: bool) {
    let key = format!("member.{}", inner.me);
    if leaving {
        if state.members.contains_key(&inner.me) {
            let _ = inner.store.delete(&key).await;
            state.members.remove(&inner.me);
        }
        return;
    }
    if Instant::now() < state.next_heartbeat {
        return;
    }
    let until = now_ms() + inner.failover.as_millis() as i64;
    let beat = serde_json::to_vec(&Heartbeat { until }).expect("a heartbeat serializes");
    match inner.store.put(&key, beat.into()).await {
        Ok(_) => {
            state.members.insert(inner.me.clone(), until);
            state.next_heartbeat = Instant::now() + inner.failover / 4;
        }
        Err(e) => {
            tracing::warn!(instance = %inner.me, error = %e, "cannot write the fleet heartbeat")
        }
    }
}

/// Members whose heartbeat holds, sorted; this instance among them unless
/// it is leaving.
fn live_members(state: &State, me: &str, leaving: bool) -> Vec<String> {
    let now = now_ms();
    let mut live: Vec<String> = state
        .members
        .iter()
        .filter(|(name, until)| **until >= now && !(leaving && name.as_str() == me))
        .map(|(name, _)| name.clone())
        .collect();
    if !leaving && !live.iter().any(|m| m == me) {
        live.push(me.to_string());
    }
    live.sort();
    live
}

/// Takes, renews or hands over one lease, as `mine` says it should be.
async fn settle_lease(fleet: &Fleet, state: &mut State, resource: Resource, mine: bool) {
    let inner = &fleet.0;
    let key = resource.lease_key();
    let renew_due = |held: &Held| held.at.elapsed() >= inner.failover / 4;
    match (mine, state.held.get(&resource).copied()) {
        (true, None) => {
            if let Ok(Some(revision)) =
                hold_lease(&inner.store, &key, &inner.me, inner.failover, None).await
            {
                state.held.insert(
                    resource.clone(),
                    Held {
                        at: Instant::now(),
                        revision,
                    },
                );
                fleet.raise_fence(&resource);
                log_move(&resource, &inner.me, "holding");
                inner.granted.send_modify(|g| {
                    g.insert(resource);
                });
            }
        }
        (true, Some(held)) => {
            // Given back to the runs if it was being handed over and is
            // this instance's again.
            inner
                .granted
                .send_if_modified(|g| g.insert(resource.clone()));
            if renew_due(&held) {
                renew(fleet, state, resource, held).await;
            }
        }
        (false, Some(held)) => {
            inner.granted.send_if_modified(|g| g.remove(&resource));
            if fleet.runs(&resource) == 0 {
                release_lease(&inner.store, &key, &inner.me).await;
                state.held.remove(&resource);
                fleet.drop_fence(&resource, false);
                log_move(&resource, &inner.me, "handed over");
            } else if renew_due(&held) {
                // Still draining: keep it until the runs end.
                renew(fleet, state, resource, held).await;
            }
        }
        (false, None) => {}
    }
}

async fn renew(fleet: &Fleet, state: &mut State, resource: Resource, held: Held) {
    let inner = &fleet.0;
    let key = resource.lease_key();
    match hold_lease(
        &inner.store,
        &key,
        &inner.me,
        inner.failover,
        Some(held.revision),
    )
    .await
    {
        Ok(Some(revision)) => {
            state.held.insert(
                resource,
                Held {
                    at: Instant::now(),
                    revision,
                },
            );
        }
        Ok(None) => {
            // Another instance took it (this one was too slow to renew):
            // stop at once; what was in flight is redelivered to the other.
            tracing::warn!(instance = %inner.me, resource = %resource, "lease lost to another instance; stopping it");
            lose(fleet, state, &resource);
        }
        // NATS away: keep running while the lease is surely ours (others
        // take it only once it has expired); the next look tries again.
        Err(e) => {
            tracing::warn!(instance = %inner.me, resource = %resource, error = %e, "cannot renew lease");
            // Stopped before another instance may take it (at `failover`).
            if held.at.elapsed() >= inner.failover * 3 / 4 {
                tracing::warn!(instance = %inner.me, resource = %resource, "lease expired unrenewed; stopping it");
                lose(fleet, state, &resource);
            }
        }
    }
}

/// The lease is no longer this instance's: its runs stop at once (the
/// fence), without draining.
fn lose(fleet: &Fleet, state: &mut State, resource: &Resource) {
    fleet.0.granted.send_if_modified(|g| g.remove(resource));
    state.held.remove(resource);
    fleet.drop_fence(resource, true);
    log_move(resource, &fleet.0.me, "lost");
}

fn log_move(resource: &Resource, me: &str, what: &'static str) {
    let held = if what == "holding" { 1.0 } else { 0.0 };
    match resource {
        Resource::Partition(p) => {
            tracing::info!(instance = me, partition = p, what, "fleet partition");
            metrics::gauge!("syncflow_fleet_partition_held", "partition" => p.to_string())
                .set(held);
        }
        Resource::Splitter(pipeline) => {
            tracing::info!(instance = me, pipeline = %pipeline, what, "fleet splitter");
            metrics::gauge!("syncflow_fleet_splitter_held", "pipeline" => pipeline.clone())
                .set(held);
        }
    }
}
