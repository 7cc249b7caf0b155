//! One change of a two-way pipeline, end to end: find the linked record,
//! let its state decide field by field (state.rs), write the other side
//! what it lacks (and set back the side that lost an owned or older
//! field), link records born on one side, and save the state.
//!
//! - **The linked record.** System A's key is the state's key. Outbound,
//!   it is the message's key, and the provider's id comes from the id map.
//!   Inbound, the message's key is the provider's id, and the id map's
//!   reverse entry gives System A's key: none for a record born in the
//!   provider, which is created in System A and linked.
//! - **Create or update** is decided here, not by the rules: a record the
//!   other side does not have yet is created with the whole mapped body; one
//!   it has is updated with the fields it must be written, and nothing is
//!   sent when there are none (an echo, a repeat). The rules say whether to
//!   sync (`create`, `update`, `upsert`), `delete` or `skip`.
//! - **Deletes win**: a record deleted on either side is deleted on the
//!   other, and later changes of it are not synced.
//! - **A record just created by syncflow** may come back as a provider's
//!   change before its link is stored (the webhook can be quicker than the
//!   create's answer): an inbound change of an unknown, recent record waits
//!   up to [`LINK_GRACE`] for its link before creating a new one.

use std::time::Duration;

use serde_json::{Map, Value};

use super::Link;
use super::state::{Observed, PairState, Seen, Side};
use super::store::{LinkStore, Saved};
use crate::action::Action;
use crate::config::model::Direction;
use crate::idmap::IdMap;
use crate::mapping::insert;
use crate::pipeline::{Facts, TwoWay};
use crate::sink::{Delivery, Failure, Record, Sink, SkipReason, TargetSink};
use crate::transient::Trouble;

/// How long an inbound change of an unknown record waits for its link.
pub const LINK_GRACE: Duration = Duration::from_secs(2);
/// Changes older than this do not wait for a link: it would be there.
const RECENT: Duration = Duration::from_secs(60);

/// What a two-way pipeline holds besides its target's sink.
pub struct Runtime {
    pub store: LinkStore,
    pub idmap: IdMap,
    /// The side the changes come from, for setting back lost edits.
    pub source: TargetSink,
    pub counts: Counts,
}

impl Runtime {
    /// System A's key of the provider's record `id` (an inbound change's
    /// key), if it is linked.
    pub async fn linked_key(&self, trouble: &Trouble, link: &Link, id: &str) -> Option<String> {
        let (provider, object) = link.provider();
        let provider = provider.name.as_str();
        trouble
            .retry_until_ok("id map read", || self.idmap.key_of(provider, object, id))
            .await
    }
}

/// The link's metrics for one pipeline.
pub struct Counts {
    fields: crate::metric_handles::Handles<&'static str, metrics::Counter>,
    writes: crate::metric_handles::Handles<&'static str, metrics::Counter>,
}

impl Counts {
    pub fn new(link: &str, direction: Direction) -> Self {
        let direction = match direction {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
        };
        let (l1, l2) = (link.to_string(), link.to_string());
        Counts {
            fields: crate::metric_handles::Handles::new(
                move |&outcome: &&'static str| metrics::counter!("syncflow_twoway_fields_total", "link" => l1.clone(), "direction" => direction, "outcome" => outcome),
            ),
            writes: crate::metric_handles::Handles::new(
                move |&kind: &&'static str| metrics::counter!("syncflow_twoway_writes_total", "link" => l2.clone(), "direction" => direction, "kind" => kind),
            ),
        }
    }
}

/// The sides a pipeline's direction reads from and writes to.
fn sides(direction: Direction) -> (Side, Side) {
    match direction {
        Direction::Outbound => (Side::Internal, Side::External),
        Direction::Inbound => (Side::External, Side::Internal),
    }
}

/// The dotted path of `field` on `side`.
fn path(link: &Link, index: usize, side: Side) -> &[String] {
    match side {
        Side::Internal => &link.fields[index].internal,
        Side::External => &link.fields[index].external,
    }
}

/// One change: returns what became of it at the target.
pub async fn deliver(
    tw: &TwoWay,
    rt: &Runtime,
    target: &TargetSink,
    record: &Record<'_>,
    facts: &Facts,
) -> Delivery {
    let (link, counts) = (&tw.link, &rt.counts);
    let (provider, object) = link.provider();
    let (provider, object) = (provider.name.as_str(), object);
    let (from, to) = sides(tw.direction);

    // The linked record: System A's key, and the provider's id.
    let (key, external_id) = match tw.direction {
        Direction::Outbound => {
            let entry = record
                .trouble
                .retry_until_ok("id map read", || {
                    rt.idmap.lookup(provider, object, record.key)
                })
                .await;
            let id = entry.and_then(|e| e.live_id().map(str::to_string));
            (Some(record.key.to_string()), id)
        }
        Direction::Inbound => {
            let key = match linked_key(rt, record, provider, object, facts).await {
                Some(key) => Some(key),
                None => created_unlinked(rt, record, target, provider, object).await,
            };
            (key, Some(record.key.to_string()))
        }
    };
    let (mut state, mut revision) = match &key {
        Some(key) => {
            record
                .trouble
                .retry_until_ok("link state read", || rt.store.load(&link.name, key))
                .await
        }
        None => (PairState::default(), 0),
    };
    if state.deleted {
        return Delivery::Skipped {
            reason: SkipReason::Unchanged,
        };
    }
    if record.action == Action::Delete {
        return delete(tw, rt, target, record, key, &mut state, revision).await;
    }

    observe(link, &mut state, from, record, facts, counts);
    // What the target must be written: everything for a record it lacks.
    let exists = match tw.direction {
        Direction::Outbound => external_id.is_some(),
        Direction::Inbound => key.is_some(),
    };
    let body = if exists {
        body_of(link, &state, to)
    } else {
        record.body.cloned()
    };
    let Some(body) = body else {
        counts.writes.get("none").increment(1);
        save(
            rt,
            link,
            record,
            key.as_deref(),
            &state,
            revision,
            from,
            facts,
            counts,
        )
        .await;
        return Delivery::Skipped {
            reason: SkipReason::Unchanged,
        };
    };
    // A record born in the provider is created in System A under the
    // provider's id; System A's API answers its own key. On a subject, the
    // key System A is given is `<provider>-<id>`.
    let target_key = match (&key, target) {
        (Some(key), _) => key.clone(),
        (None, TargetSink::Subject(_)) if tw.direction == Direction::Inbound => {
            format!("{provider}-{}", record.key)
        }
        (None, _) => record.key.to_string(),
    };
    let action = if exists {
        Action::Update
    } else {
        Action::Create
    };
    let sent = target
        .deliver(&Record {
            key: &target_key,
            action,
            body: Some(&body),
            ..*record
        })
        .await;
    let key = match (&sent, tw.direction, key) {
        (Delivery::Sent { .. }, _, Some(key)) => key,
        // Born in the provider: System A's create answered its key; link it.
        (Delivery::Sent { id: Some(new), .. }, Direction::Inbound, None) => {
            record
                .trouble
                .retry_until_ok("id map write", || {
                    rt.idmap.link(provider, object, new, record.key)
                })
                .await;
            (state, revision) = (PairState::default(), 0);
            observe(link, &mut state, from, record, facts, counts);
            new.clone()
        }
        // Published on a subject: System A's key is the one it was given.
        (Delivery::Sent { id: None, .. }, Direction::Inbound, None)
            if matches!(target, TargetSink::Subject(_)) =>
        {
            record
                .trouble
                .retry_until_ok("id map write", || {
                    rt.idmap.link(provider, object, &target_key, record.key)
                })
                .await;
            (state, revision) = (PairState::default(), 0);
            observe(link, &mut state, from, record, facts, counts);
            target_key.clone()
        }
        (Delivery::Sent { .. }, _, None) => {
            tracing::warn!(
                pipeline = record.pipeline,
                key = record.key,
                "created, but the target did not tell its key: not linked"
            );
            return sent;
        }
        (
            Delivery::Failed(Failure {
                status: Some(404), ..
            }),
            _,
            Some(key),
        ) if exists => {
            // Deleted on the target meanwhile: a delete wins, and its own
            // change event deletes the other side.
            state.deleted = true;
            save(
                rt,
                link,
                record,
                Some(&key),
                &state,
                revision,
                from,
                facts,
                counts,
            )
            .await;
            return Delivery::Skipped {
                reason: SkipReason::AlreadyDeleted,
            };
        }
        _ => return sent,
    };
    counts
        .writes
        .get(if exists { "sync" } else { "create" })
        .increment(1);
    mark_written(link, &mut state, to, &body);
    if !exists {
        // A create leaves out empty fields: the new record holds them empty.
        for (i, field) in link.fields.iter().enumerate() {
            if crate::mapping::lookup(&body, path(link, i, to)).is_none() {
                state
                    .fields
                    .entry(field.name.clone())
                    .or_default()
                    .holds(to, Value::Null);
            }
        }
    }
    if let Delivery::Sent { id: Some(id), .. } = &sent
        && tw.direction == Direction::Outbound
    {
        state.external_id = Some(id.clone());
    }
    set_back(tw, rt, record, &key, &mut state, from, counts).await;
    save(
        rt,
        link,
        record,
        Some(&key),
        &state,
        revision,
        from,
        facts,
        counts,
    )
    .await;
    sent
}

/// System A's key of the provider's record (an inbound change's key):
/// from the reverse entry, waiting a little for a recent record's link.
async fn linked_key(
    rt: &Runtime,
    record: &Record<'_>,
    provider: &str,
    object: &str,
    facts: &Facts,
) -> Option<String> {
    if let Some(key) = &facts.linked_key {
        return Some(key.clone());
    }
    let lookup = || async {
        record
            .trouble
            .retry_until_ok("id map read", || {
                rt.idmap.key_of(provider, object, record.key)
            })
            .await
    };
    let age_ms = now_ms().saturating_sub(facts.modified);
    if age_ms > RECENT.as_millis() as i64 {
        return None;
    }
    let deadline = tokio::time::Instant::now() + LINK_GRACE;
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Some(key) = lookup().await {
            return Some(key);
        }
    }
    None
}

/// System A's key of a provider record that System A's API created
/// already but that was not linked yet (syncflow stopped in between): the
/// target's id map entry of the provider's id, which is linked now.
async fn created_unlinked(
    rt: &Runtime,
    record: &Record<'_>,
    target: &TargetSink,
    provider: &str,
    object: &str,
) -> Option<String> {
    let TargetSink::Provider(sink) = target else {
        return None;
    };
    let (target_provider, target_object) = sink.names();
    let entry = record
        .trouble
        .retry_until_ok("id map read", || {
            rt.idmap.lookup(target_provider, target_object, record.key)
        })
        .await?;
    // Only what this pipeline's own stream created: System A's keys and
    // the provider's ids may look alike.
    if entry.stream.as_deref() != Some(record.stream) {
        return None;
    }
    let key = entry.live_id()?.to_string();
    record
        .trouble
        .retry_until_ok("id map write", || {
            rt.idmap.link(provider, object, &key, record.key)
        })
        .await;
    tracing::info!(pipeline = record.pipeline, key = %key, id = record.key, "linked a record created before a restart");
    Some(key)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Applies the change's fields to the state.
fn observe(
    link: &Link,
    state: &mut PairState,
    from: Side,
    record: &Record<'_>,
    facts: &Facts,
    counts: &Counts,
) {
    for (i, value) in facts.fields.iter().enumerate() {
        let Some(value) = value else { continue };
        let field = &link.fields[i];
        let mapped = record
            .body
            .and_then(|body| crate::mapping::lookup(body, path(link, i, from.other())))
            .cloned()
            .unwrap_or(Value::Null);
        let seen = state.fields.entry(field.name.clone()).or_default().change(
            Observed {
                from,
                at: facts.modified,
                value: value.clone(),
                mapped,
                ordered: from == Side::Internal,
            },
            field.policy,
        );
        counts
            .fields
            .get(match seen {
                Seen::Echo => "echo",
                Seen::Repeat => "repeat",
                Seen::Won => "won",
                Seen::Lost => "lost",
            })
            .increment(1);
    }
}

/// The fields `side` must be written, as a body in its shape; `None` when
/// there are none.
fn body_of(link: &Link, state: &PairState, side: Side) -> Option<Value> {
    let mut body = Map::new();
    for (i, field) in link.fields.iter().enumerate() {
        if let Some(value) = state.fields.get(&field.name).and_then(|f| f.to_write(side)) {
            insert(&mut body, path(link, i, side), value.clone());
        }
    }
    (!body.is_empty()).then_some(Value::Object(body))
}

/// Records that `side` was written `body`.
fn mark_written(link: &Link, state: &mut PairState, side: Side, body: &Value) {
    for (i, field) in link.fields.iter().enumerate() {
        if let Some(value) = crate::mapping::lookup(body, path(link, i, side)) {
            state
                .fields
                .entry(field.name.clone())
                .or_default()
                .wrote(side, value.clone());
        }
    }
}

/// Writes the side the change came from the fields it lost (an owned
/// field edited on the wrong side, an edit older than the other side's).
async fn set_back(
    tw: &TwoWay,
    rt: &Runtime,
    record: &Record<'_>,
    key: &str,
    state: &mut PairState,
    from: Side,
    counts: &Counts,
) {
    let Some(body) = body_of(&tw.link, state, from) else {
        return;
    };
    let idempotency_key = format!("{}:set-back", record.idempotency_key);
    let back = Record {
        key,
        action: Action::Update,
        body: Some(&body),
        idempotency_key: &idempotency_key,
        ..*record
    };
    match rt.source.deliver(&back).await {
        Delivery::Sent { .. } => {
            counts.writes.get("set_back").increment(1);
            mark_written(&tw.link, state, from, &body);
        }
        other => {
            tracing::warn!(pipeline = record.pipeline, key, outcome = ?other, "could not set a lost field back on the side it came from");
        }
    }
}

/// A delete: the other side's record is deleted, the pair marked deleted.
async fn delete(
    tw: &TwoWay,
    rt: &Runtime,
    target: &TargetSink,
    record: &Record<'_>,
    key: Option<String>,
    state: &mut PairState,
    revision: u64,
) -> Delivery {
    let Some(key) = key else {
        // Never linked: nothing on the other side to delete.
        return Delivery::Skipped {
            reason: SkipReason::AlreadyDeleted,
        };
    };
    let sent = target
        .deliver(&Record {
            key: &key,
            ..*record
        })
        .await;
    if matches!(sent, Delivery::Sent { .. } | Delivery::Skipped { .. }) {
        state.deleted = true;
        let saved = rt.store.save(&tw.link.name, &key, state, revision).await;
        if !matches!(saved, Ok(Saved::Done)) {
            // Someone changed it meanwhile: mark it deleted over that.
            if let Ok((mut again, revision)) = rt.store.load(&tw.link.name, &key).await {
                again.deleted = true;
                let _ = rt.store.save(&tw.link.name, &key, &again, revision).await;
            }
        }
    }
    sent
}

/// Saves the state; when the other direction saved it meanwhile, applies
/// this change again to its version (applying a change twice is a repeat).
#[allow(clippy::too_many_arguments)]
async fn save(
    rt: &Runtime,
    link: &Link,
    record: &Record<'_>,
    key: Option<&str>,
    state: &PairState,
    revision: u64,
    from: Side,
    facts: &Facts,
    counts: &Counts,
) {
    let Some(key) = key else { return };
    let (mut state, mut revision) = (state.clone(), revision);
    for _ in 0..10 {
        let saved = record
            .trouble
            .retry_until_ok("link state write", || {
                rt.store.save(&link.name, key, &state, revision)
            })
            .await;
        if saved == Saved::Done {
            return;
        }
        let (mut again, rev) = record
            .trouble
            .retry_until_ok("link state read", || rt.store.load(&link.name, key))
            .await;
        observe(link, &mut again, from, record, facts, counts);
        // What this change wrote stays written on the fresh version.
        for (name, field) in &state.fields {
            let target = again.fields.entry(name.clone()).or_default();
            for side in [Side::Internal, Side::External] {
                let i = match side {
                    Side::Internal => 0,
                    Side::External => 1,
                };
                if field.sent[i].is_some() && target.sent[i].is_none() {
                    target.sent[i] = field.sent[i].clone();
                    target.holds[i] = field.holds[i].clone();
                }
            }
        }
        again.external_id = again.external_id.or(state.external_id.clone());
        (state, revision) = (again, rev);
    }
    tracing::warn!(
        pipeline = record.pipeline,
        key,
        "link state kept changing under this change; saved as last seen"
    );
}
