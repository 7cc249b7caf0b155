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
//! - **Writes are announced before they are made.** The values about to be
//!   written are saved in the state as *sent* first (compare-and-set), then
//!   written, then confirmed (or withdrawn on failure). The other side's
//!   change event for the write can come back before the write's answer
//!   (System A publishes its CDC event before it answers): it must already
//!   be known as an echo.
//! - **Deletes win**: a record deleted on either side is deleted on the
//!   other, and later changes of it are not synced.
//! - **Records born on one side** come back from the other before their
//!   link exists (a webhook for syncflow's own create; System A's CDC event
//!   for it): a change of an unlinked record waits up to [`LINK_GRACE`] for
//!   its link when it is recent (inbound) or when System A's record names
//!   its provider id (`two_way.external_id`, outbound).

use std::time::Duration;

use serde_json::{Map, Value};

use super::Link;
use super::state::{Observed, PairState, Seen, Side};
use super::store::{LinkStore, Saved};
use crate::action::Action;
use crate::clock::now_ms;
use crate::config::model::Direction;
use crate::idmap::IdMap;
use crate::mapping::{insert, lookup};
use crate::pipeline::{Facts, TwoWay};
use crate::sink::{Delivery, Failure, Record, Sink, SkipReason, TargetSink};
use crate::transient::Trouble;

/// How long a change of an unlinked record waits for its link.
pub const LINK_GRACE: Duration = Duration::from_secs(5);
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
        let direction = direction.as_str();
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

/// The dotted path of field `index` on `side`.
fn path(link: &Link, index: usize, side: Side) -> &[String] {
    match side {
        Side::Internal => &link.fields[index].internal,
        Side::External => &link.fields[index].external,
    }
}

/// What one change makes syncflow write.
struct Writes {
    /// To the target: the fields it lacks (the whole body for a create).
    target: Option<Value>,
    /// Back to the side the change came from: the fields it lost.
    back: Option<Value>,
    /// The last change seen from each side (`[to, from]`): a provider
    /// endpoint with `unmodified_since` refuses a write over a newer one.
    seen: [Option<i64>; 2],
}

/// A provider that refused a write because the record changed since the
/// last change syncflow saw (`unmodified_since`): that change is on its way
/// (the next poll) and decides then what to write.
fn changed_meanwhile(delivery: &Delivery) -> bool {
    matches!(
        delivery,
        Delivery::Failed(Failure {
            status: Some(412),
            ..
        })
    )
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

    // The linked record: System A's key, and whether the target has it.
    let (key, exists) = match tw.direction {
        Direction::Outbound => {
            let linked = external_id(rt, record, provider, object, facts).await;
            (Some(record.key.to_string()), linked)
        }
        Direction::Inbound => {
            let key = match linked_key(tw, rt, record, provider, object, facts).await {
                Some(key) => Some(key),
                None => created_unlinked(rt, record, target, provider, object).await,
            };
            let exists = key.is_some();
            (key, exists)
        }
    };
    if record.action == Action::Delete {
        return delete(tw, rt, target, record, key).await;
    }
    let Some(key) = key else {
        return create_inbound(tw, rt, target, record, facts).await;
    };

    // Decide and announce, under compare-and-set.
    let writes = update(rt, link, &key, record, |state| {
        if state.deleted {
            return None;
        }
        observe(link, state, from, record, facts, counts);
        let target = match exists {
            true => body_of(link, state, to, record.redelivered),
            false => record.body.cloned(),
        };
        let back = body_of(link, state, from, record.redelivered);
        if let Some(body) = &target {
            announce(link, state, to, body, !exists);
        }
        if let Some(body) = &back {
            announce(link, state, from, body, false);
        }
        Some(Writes {
            target,
            back,
            seen: [state.seen(to), state.seen(from)],
        })
    })
    .await;
    let Some(writes) = writes else {
        return Delivery::Skipped {
            reason: SkipReason::AlreadyDeleted,
        };
    };

    let sent = match &writes.target {
        None => {
            counts.writes.get("none").increment(1);
            Delivery::Skipped {
                reason: SkipReason::Unchanged,
            }
        }
        Some(first) => {
            let action = if exists {
                Action::Update
            } else {
                Action::Create
            };
            let template = Record {
                key: &key,
                action,
                ..*record
            };
            let since = writes.seen[0].filter(|_| exists);
            let written = write(rt, link, record, target, to, template, first.clone(), since).await;
            let Some((sent, body)) = written else {
                tracing::info!(pipeline = record.pipeline, key = %key, "the target changed since syncflow last saw it: the write waits for that change");
                return Delivery::Skipped {
                    reason: SkipReason::ChangedMeanwhile,
                };
            };
            let body = &body;
            let ok = matches!(sent, Delivery::Sent { .. } | Delivery::Skipped { .. });
            if ok {
                counts
                    .writes
                    .get(if exists { "sync" } else { "create" })
                    .increment(1);
            }
            let gone = matches!(
                &sent,
                Delivery::Failed(Failure {
                    status: Some(404),
                    ..
                })
            );
            settle(rt, link, &key, record, to, body, ok, gone).await;
            if gone {
                // Deleted on the target meanwhile: a delete wins, and its
                // own change event deletes the other side.
                return Delivery::Skipped {
                    reason: SkipReason::AlreadyDeleted,
                };
            }
            sent
        }
    };
    if let Some(back) = &writes.back {
        set_back(rt, record, link, &key, from, back, writes.seen[1]).await;
    }
    sent
}

/// Whether the provider has the record of an outbound change: the id map
/// knows its id; or System A's record names it (`two_way.external_id`: a
/// record syncflow created from the provider's), in which case its link is
/// waited for (the inbound side is linking it), and made if it never comes.
async fn external_id(
    rt: &Runtime,
    record: &Record<'_>,
    provider: &str,
    object: &str,
    facts: &Facts,
) -> bool {
    let lookup = || async {
        record
            .trouble
            .retry_until_ok("id map read", || {
                rt.idmap.lookup(provider, object, record.key)
            })
            .await
            .and_then(|e| e.live_id().map(str::to_string))
    };
    if lookup().await.is_some() {
        return true;
    }
    let Some(named) = &facts.external_id else {
        return false;
    };
    let deadline = tokio::time::Instant::now() + LINK_GRACE;
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if lookup().await.is_some() {
            return true;
        }
    }
    record
        .trouble
        .retry_until_ok("id map write", || {
            rt.idmap.link(provider, object, record.key, named)
        })
        .await;
    tracing::info!(pipeline = record.pipeline, key = record.key, id = %named, "linked by the provider id System A's record holds");
    true
}

/// System A's key of the provider's record (an inbound change's key): as
/// looked up before evaluation; or, for a record syncflow itself created
/// in the provider (it names System A's key, `two_way.internal_id`; or,
/// without that setting, any recent change), waited for a little, the
/// outbound side linking it meanwhile.
async fn linked_key(
    tw: &TwoWay,
    rt: &Runtime,
    record: &Record<'_>,
    provider: &str,
    object: &str,
    facts: &Facts,
) -> Option<String> {
    if let Some(key) = &facts.linked_key {
        return Some(key.clone());
    }
    // Born in the provider, as far as it tells: a change made by someone
    // else (`ours: false`), or a record that names no System A key when
    // syncflow's records do (and the provider does not say it was ours:
    // a change told in parts may carry the name in another part).
    let named = facts.internal_id.is_some();
    if !named && (facts.ours == Some(false) || (tw.names_internal_id() && facts.ours != Some(true)))
    {
        return None;
    }
    let age_ms = now_ms().saturating_sub(facts.modified);
    if age_ms > RECENT.as_millis() as i64 && !named {
        return None;
    }
    let deadline = tokio::time::Instant::now() + LINK_GRACE;
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let key = record
            .trouble
            .retry_until_ok("id map read", || {
                rt.idmap.key_of(provider, object, record.key)
            })
            .await;
        if key.is_some() {
            return key;
        }
    }
    // Never linked (syncflow stopped between the create and its link):
    // linked now by the key the record names.
    let named = facts.internal_id.as_deref()?;
    record
        .trouble
        .retry_until_ok("id map write", || {
            rt.idmap.link(provider, object, named, record.key)
        })
        .await;
    tracing::info!(
        pipeline = record.pipeline,
        key = named,
        id = record.key,
        "linked by the System A key the provider's record holds"
    );
    Some(named.to_string())
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

/// A record born in the provider: created in System A with the whole
/// mapped body, its state saved, then linked (in that order: System A's
/// CDC event for the create waits for the link, and then finds the state
/// that makes it an echo).
async fn create_inbound(
    tw: &TwoWay,
    rt: &Runtime,
    target: &TargetSink,
    record: &Record<'_>,
    facts: &Facts,
) -> Delivery {
    let link = &tw.link;
    let (provider, object) = link.provider();
    let provider = provider.name.as_str();
    let Some(body) = record.body else {
        return Delivery::Skipped {
            reason: SkipReason::Unchanged,
        };
    };
    // On a subject, System A's key is the one it is given.
    let subject_key = format!("{provider}-{}", record.key);
    let new_key = match target {
        TargetSink::Subject(_) => subject_key.as_str(),
        TargetSink::Provider(_) => record.key,
    };
    let sent = target
        .deliver(&Record {
            key: new_key,
            action: Action::Create,
            ..*record
        })
        .await;
    let key = match &sent {
        Delivery::Sent { id: Some(id), .. } if matches!(target, TargetSink::Provider(_)) => {
            id.clone()
        }
        Delivery::Sent { .. } if matches!(target, TargetSink::Subject(_)) => subject_key,
        Delivery::Sent { .. } => {
            tracing::warn!(
                pipeline = record.pipeline,
                key = record.key,
                "created, but System A did not answer its key: not linked"
            );
            return sent;
        }
        _ => return sent,
    };
    rt.counts.writes.get("create").increment(1);
    update(rt, link, &key, record, |state| {
        observe(link, state, Side::External, record, facts, &rt.counts);
        announce(link, state, Side::Internal, body, true);
        for (i, field) in link.fields.iter().enumerate() {
            if let Some(value) = lookup(body, path(link, i, Side::Internal)) {
                state
                    .fields
                    .entry(field.name.clone())
                    .or_default()
                    .confirm(Side::Internal, value);
            }
        }
    })
    .await;
    record
        .trouble
        .retry_until_ok("id map write", || {
            rt.idmap.link(provider, object, &key, record.key)
        })
        .await;
    sent
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
            .and_then(|body| lookup(body, path(link, i, from.other())))
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
        tracing::debug!(pipeline = record.pipeline, key = record.key, field = %field.name, from = ?from, at = facts.modified, value = %value, seen = ?seen, "field observed");
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
fn body_of(link: &Link, state: &PairState, side: Side, redelivered: bool) -> Option<Value> {
    let mut body = Map::new();
    for (i, field) in link.fields.iter().enumerate() {
        let Some(f) = state.fields.get(&field.name) else {
            continue;
        };
        let value = match redelivered {
            false => f.to_write(side),
            // Its first handling may have announced writes and died.
            true => f.to_write_again(side),
        };
        if let Some(value) = value {
            insert(&mut body, path(link, i, side), value.clone());
        }
    }
    (!body.is_empty()).then_some(Value::Object(body))
}

/// The link's fields a write of `body` to `side` holds: (name, value).
fn written<'a>(
    link: &'a Link,
    body: &'a Value,
    side: Side,
) -> impl Iterator<Item = (&'a str, &'a Value)> {
    link.fields
        .iter()
        .enumerate()
        .filter_map(move |(i, f)| Some((f.name.as_str(), lookup(body, path(link, i, side))?)))
}

/// Announces that `side` is about to be written `body`: its change event
/// for it will be an echo. A create leaves out empty fields, so the new
/// record holds them empty.
fn announce(link: &Link, state: &mut PairState, side: Side, body: &Value, create: bool) {
    tracing::debug!(to = ?side, body = %body, create, "announcing a write");
    for (i, field) in link.fields.iter().enumerate() {
        let field = state.fields.entry(field.name.clone()).or_default();
        match lookup(body, path(link, i, side)) {
            Some(value) => field.sending(side, value.clone()),
            None if create => field.holds(side, Value::Null),
            None => {}
        }
    }
}

/// After a write of `body` to `side`: confirmed (the side holds it), or
/// withdrawn (it failed: the values are no longer expected back).
#[allow(clippy::too_many_arguments)]
async fn settle(
    rt: &Runtime,
    link: &Link,
    key: &str,
    record: &Record<'_>,
    side: Side,
    body: &Value,
    ok: bool,
    gone: bool,
) {
    tracing::debug!(key, to = ?side, body = %body, ok, gone, "settling a write");
    update(rt, link, key, record, |state| {
        // Deleted on `side` by its user: that side's delete event must
        // still delete the other side, so it is not taken for an echo.
        if gone && !state.deleted {
            (state.deleted, state.deleted_from) = (true, Some(side));
        }
        for (name, value) in written(link, body, side) {
            let field = state.fields.entry(name.to_string()).or_default();
            match ok {
                true => field.confirm(side, value),
                false => field.withdraw(side, value),
            }
        }
    })
    .await;
}

/// Writes the side the change came from the fields it lost (an owned
/// field edited on the wrong side, an edit older than the other side's).
async fn set_back(
    rt: &Runtime,
    record: &Record<'_>,
    link: &Link,
    key: &str,
    from: Side,
    body: &Value,
    seen: Option<i64>,
) {
    let idempotency_key = format!("{}:set-back", record.idempotency_key);
    let back = Record {
        key,
        action: Action::Update,
        idempotency_key: &idempotency_key,
        ..*record
    };
    let written = write(rt, link, record, &rt.source, from, back, body.clone(), seen).await;
    // Refused for good: the change it waits for will set it back.
    let Some((sent, body)) = written else {
        return;
    };
    let ok = matches!(sent, Delivery::Sent { .. });
    if ok {
        rt.counts.writes.get("set_back").increment(1);
    } else {
        tracing::warn!(pipeline = record.pipeline, key, outcome = ?sent, "could not set a lost field back on the side it came from");
    }
    settle(rt, link, key, record, from, &body, ok, false).await;
}

/// Writes `body` to `side` through `sink` as `template` says, with
/// `unmodified_since: since`. A refusal (412) whose awaited change was
/// handled meanwhile is written again (see [`refused`]). Returns what the
/// sink answered and the body last written; `None` when refused for good
/// (the write is withdrawn and waits for the side's next change).
#[allow(clippy::too_many_arguments)]
async fn write(
    rt: &Runtime,
    link: &Link,
    record: &Record<'_>,
    sink: &TargetSink,
    side: Side,
    template: Record<'_>,
    mut body: Value,
    mut since: Option<i64>,
) -> Option<(Delivery, Value)> {
    let mut refusals = 0;
    loop {
        let idempotency_key = write_key(template.idempotency_key, template.action, &body, refusals);
        let sent = sink
            .deliver(&Record {
                body: Some(&body),
                unmodified_since: since,
                idempotency_key: &idempotency_key,
                ..template
            })
            .await;
        if !changed_meanwhile(&sent) {
            return Some((sent, body));
        }
        rt.counts.writes.get("deferred").increment(1);
        refusals += 1;
        let again = refusals < MAX_REFUSALS;
        (body, since) = refused(rt, link, template.key, record, side, &body, since, again).await?;
    }
}

/// The idempotency key of one write. A create keeps the change's own key:
/// a redelivered change makes the same create (its body is the message's),
/// which the provider must answer once. An update adds a hash of its body:
/// a redelivered change may compute another update (the link's state moved
/// on meanwhile), and a provider that keeps its answers by key would answer
/// it with the first update's, without applying it. After `refusals`
/// refusals (412) the write is a new request, not a retry of the refused one
/// (which a provider would answer with its stored 412), even with the same
/// body.
fn write_key<'k>(
    key: &'k str,
    action: Action,
    body: &Value,
    refusals: u32,
) -> std::borrow::Cow<'k, str> {
    let key: std::borrow::Cow<'k, str> = match action {
        Action::Create => key.into(),
        _ => format!("{key}:{}", crate::idmap::body_hash(body)).into(),
    };
    match refusals {
        0 => key,
        n => format!("{key}:again-{n}").into(),
    }
}

/// Refusals (412) of one write in a row before it waits for the next
/// change instead: a side edited faster than syncflow can write to it.
const MAX_REFUSALS: u32 = 3;

/// A write of `body` to `side` with `unmodified_since: since` was refused
/// (412): withdraws it. When the side's change it waited for was handled
/// meanwhile (see [`PairState::refused`]) and `again` allows, announces
/// and returns what to write now, with the side's newer `since`; else the
/// next change from the side decides.
#[allow(clippy::too_many_arguments)]
async fn refused(
    rt: &Runtime,
    link: &Link,
    key: &str,
    record: &Record<'_>,
    side: Side,
    body: &Value,
    since: Option<i64>,
    again: bool,
) -> Option<(Value, Option<i64>)> {
    update(rt, link, key, record, |state| {
        let written: Vec<(&str, &Value)> = written(link, body, side).collect();
        let seen_meanwhile = state.refused(side, &written, since);
        if !(seen_meanwhile && again) {
            return None;
        }
        let next = body_of(link, state, side, false)?;
        announce(link, state, side, &next, false);
        Some((next, state.seen(side)))
    })
    .await
}

/// A delete: the other side's record is deleted, the pair marked deleted.
async fn delete(
    tw: &TwoWay,
    rt: &Runtime,
    target: &TargetSink,
    record: &Record<'_>,
    key: Option<String>,
) -> Delivery {
    let Some(key) = key else {
        // Never linked: nothing on the other side to delete.
        return Delivery::Skipped {
            reason: SkipReason::AlreadyDeleted,
        };
    };
    let (from, _) = sides(tw.direction);
    // Deleted from the other side already: this is its echo.
    let echo = update(rt, &tw.link, &key, record, |state| {
        let echo = state.deleted && state.deleted_from != Some(from);
        if !state.deleted {
            (state.deleted, state.deleted_from) = (true, Some(from));
        }
        echo
    })
    .await;
    if echo {
        return Delivery::Skipped {
            reason: SkipReason::AlreadyDeleted,
        };
    }
    let sent = target
        .deliver(&Record {
            key: &key,
            ..*record
        })
        .await;
    if matches!(sent, Delivery::Sent { .. }) {
        rt.counts.writes.get("delete").increment(1);
    }
    sent
}

/// Loads the state of `key`, applies `change` and saves it, again on the
/// fresh state whenever the other direction saved it meanwhile.
async fn update<T>(
    rt: &Runtime,
    link: &Link,
    key: &str,
    record: &Record<'_>,
    mut change: impl FnMut(&mut PairState) -> T,
) -> T {
    loop {
        let (mut state, revision) = record
            .trouble
            .retry_until_ok("link state read", || rt.store.load(&link.name, key))
            .await;
        let out = change(&mut state);
        let saved = record
            .trouble
            .retry_until_ok("link state write", || {
                rt.store.save(&link.name, key, &state, revision)
            })
            .await;
        if saved == Saved::Done {
            return out;
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn an_update_is_keyed_by_its_body_and_a_create_by_its_change() {
        let (a, b) = (json!({"phone": "1"}), json!({"phone": "2"}));
        let key = |action, body, refusals| write_key("p:S:7", action, body, refusals).into_owned();
        assert_eq!(key(Action::Create, &a, 0), "p:S:7");
        assert_eq!(key(Action::Create, &b, 0), "p:S:7");
        assert_eq!(key(Action::Update, &a, 0), key(Action::Update, &a, 0));
        assert_ne!(key(Action::Update, &a, 0), key(Action::Update, &b, 0));
        assert!(key(Action::Update, &a, 0).starts_with("p:S:7:"));
        assert_eq!(
            key(Action::Update, &a, 2),
            format!("{}:again-2", key(Action::Update, &a, 0))
        );
        assert_eq!(key(Action::Create, &a, 1), "p:S:7:again-1");
    }
}
