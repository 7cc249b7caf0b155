//! The splitter: one per pipeline in the fleet, on whichever instance
//! holds its lease. It reads the pipeline's consumer in stream order and
//! republishes each message to its key's partition, then acks it.
//!
//! - Order: publishes go out in stream order on one connection, so each
//!   partition stores a key's changes in stream order.
//! - Nothing lost: the source is acked only once the partition stream has
//!   stored the message (its publish ack).
//! - Nothing twice: each republished message carries `Nats-Msg-Id`
//!   `<pipeline>.<stream created, ns, hex>.<seq>`; a splitter that takes over from a dead one
//!   republishes from the ack floor and the partition stream drops what was
//!   already stored (within its 2-minute window).
//! - A message without a key (not JSON, no key) goes to a partition by its
//!   sequence: the partition's run dead-letters it, as any instance would.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::context::PublishError;
use async_nats::jetstream::message::PublishMessage as Publish;
use async_nats::jetstream::publish::PublishAck;
use futures::StreamExt;
use futures::stream::FuturesOrdered;
use tokio::sync::{mpsc, watch};

use super::source::{DELIVERED_HEADER, MSG_ID_HEADER, SEQ_HEADER, SUBJECT_HEADER, TIME_HEADER};
use super::{Fleet, Resource, partition_of, parts_subject};
use crate::executor::Ctx;
use crate::readiness::Readiness;
use crate::source::{JetStreamSource, Source, SourceMessage};

/// Publishes awaiting their ack at once.
const IN_FLIGHT: usize = 256;

/// Splits `version`'s pipeline whenever this instance holds its splitter,
/// until `stop`.
pub async fn run(
    fleet: Fleet,
    version: watch::Receiver<Arc<Ctx>>,
    readiness: Readiness,
    mut stop: watch::Receiver<bool>,
) {
    let name = version.borrow().pipeline.name.clone();
    let resource = Resource::Splitter(name.clone());
    fleet.add_splitter(&name);
    let mut granted = fleet.granted();
    let mut backoff = Duration::from_millis(250);
    let mut unstored = Unstored::default();
    while !*stop.borrow() {
        let Some(run) = fleet.start_run(&resource) else {
            tokio::select! {
                _ = granted.changed() => {}
                _ = stop.changed() => {}
            }
            continue;
        };
        tracing::info!(pipeline = %name, "splitting");
        let clean = split_while_held(
            &fleet,
            &resource,
            run.fence(),
            version.clone(),
            &readiness,
            &stop,
            &mut unstored,
        )
        .await;
        drop(run);
        tracing::info!(pipeline = %name, "splitter let go");
        if !clean {
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stop.changed() => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(10));
        } else {
            backoff = Duration::from_millis(250);
        }
    }
    fleet.remove_splitter(&name);
}

/// Splits until the splitter is revoked or the pipeline stops; false when
/// a publish failed (what was not stored is handed back).
async fn split_while_held(
    fleet: &Fleet,
    resource: &Resource,
    fence: watch::Receiver<bool>,
    mut version: watch::Receiver<Arc<Ctx>>,
    readiness: &Readiness,
    stop: &watch::Receiver<bool>,
    unstored: &mut Unstored,
) -> bool {
    let mut ctx = version.borrow_and_update().clone();
    let name = ctx.pipeline.name.clone();
    let label = format!("{name}/splitter");
    let Some(generation) = stream_generation(&ctx).await else {
        return false;
    };
    let (source_stop, source_stop_rx) = watch::channel(false);
    let mut source = JetStreamSource::new(
        ctx.js.clone(),
        ctx.pipeline.source.clone(),
        &label,
        readiness.clone(),
        source_stop_rx,
    )
    .taking_over()
    .with_fence(fence.clone());
    // Stops pulling once the splitter is revoked or the pipeline stops.
    let (mut granted, mut stop) = (fleet.granted(), stop.clone());
    let revoked = {
        let resource = resource.clone();
        let source_stop = source_stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = granted.wait_for(|g| !g.contains(&resource)) => {}
                _ = stop.wait_for(|s| *s) => {}
            }
            source_stop.send_replace(true);
        })
    };
    // Pulled in a task of its own: pulling is not cancel-safe.
    let (pulled_tx, mut pulled) = mpsc::channel::<SourceMessage>(IN_FLIGHT);
    let puller = tokio::spawn(async move {
        while let Some(msg) = source.next().await {
            if pulled_tx.send(msg).await.is_err() {
                break;
            }
        }
        source
    });
    let split = metrics::counter!("syncflow_fleet_split_total", "pipeline" => name.clone());
    let partitions = fleet.partitions();
    let mut stored = FuturesOrdered::new();
    let mut failed = false;
    loop {
        tokio::select! {
            biased;
            Some((result, msg)) = stored.next() => {
                if !settle(&name, result, msg, unstored).await {
                    failed = true;
                    source_stop.send_replace(true);
                }
            }
            next = pulled.recv(), if stored.len() < IN_FLIGHT => {
                let Some(msg) = next else { break };
                if *fence.borrow() {
                    // The lease is lost: the new splitter has this one.
                    source_stop.send_replace(true);
                    continue;
                }
                if failed {
                    msg.hand_back(&name).await;
                    continue;
                }
                if version.has_changed().unwrap_or(false) {
                    ctx = version.borrow_and_update().clone();
                }
                let p = partition(&ctx, &msg, partitions);
                let copy = republished(&name, generation, &msg, unstored.attempt(msg.seq));
                match ctx.js.send_publish(parts_subject(&name, p), copy).await {
                    Ok(ack) => {
                        split.increment(1);
                        stored.push_back(async move { (Stored::from(ack.await), msg) });
                    }
                    Err(e) => {
                        if !settle(&name, Stored::Failed(e.to_string()), msg, unstored).await {
                            failed = true;
                            source_stop.send_replace(true);
                        }
                    }
                }
            }
        }
    }
    while let Some((result, msg)) = stored.next().await {
        failed |= !settle(&name, result, msg, unstored).await;
    }
    revoked.abort();
    let source = puller.await.expect("the puller does not panic");
    source.finish().await;
    readiness.remove(&label);
    !failed
}

/// What the partition stream answered to a copy.
enum Stored {
    Yes,
    Failed(String),
    /// "Duplicate" with no sequence: the stream's leader took the message
    /// id but the message was lost in a leader change before it was
    /// stored. nats-server before 2.10.25 (nats-server#6415) answers so to
    /// every copy with that id until its duplicate window ends, and
    /// counting that as stored lost the message (the R3 fleet test).
    IdWithoutMessage,
}

/// The partition stream's answer to a publish.
type Answer = Result<PublishAck, PublishError>;

impl From<Answer> for Stored {
    fn from(answer: Answer) -> Self {
        match answer {
            Ok(ack) if ack.duplicate && ack.sequence == 0 => Stored::IdWithoutMessage,
            Ok(_) => Stored::Yes,
            Err(e) => Stored::Failed(e.to_string()),
        }
    }
}

/// Messages whose id a partition stream holds without the message: each
/// goes again under a new id (`.<attempt>` added), which the stream has
/// not seen. Kept across splitter runs of this instance; another instance
/// taking over finds the same answer and learns the same.
#[derive(Default)]
struct Unstored(HashMap<u64, u32>);

impl Unstored {
    fn attempt(&self, seq: u64) -> Option<u32> {
        self.0.get(&seq).copied()
    }
}

/// Acks a stored message; hands back one that was not. True when stored.
async fn settle(
    pipeline: &str,
    result: Stored,
    msg: SourceMessage,
    unstored: &mut Unstored,
) -> bool {
    let error = match result {
        Stored::Yes => {
            unstored.0.remove(&msg.seq);
            let seq = msg.seq;
            msg.ack.ack(seq);
            return true;
        }
        Stored::Failed(e) => e,
        Stored::IdWithoutMessage => {
            *unstored.0.entry(msg.seq).or_default() += 1;
            "the partition stream holds its id but not the message (a leader change lost it); it goes again under a new id".to_string()
        }
    };
    tracing::warn!(pipeline, seq = msg.seq, error = %error, "cannot store the message in its partition; splitting again from the ack floor");
    msg.hand_back(pipeline).await;
    false
}

/// The partition of `msg`'s key; a message without one goes by its sequence.
fn partition(ctx: &Ctx, msg: &SourceMessage, partitions: u32) -> u32 {
    let p = &ctx.pipeline;
    match p.decode(&msg.payload).and_then(|m| p.read_key(&m)) {
        Ok(key) => partition_of(&key, partitions),
        Err(_) => (msg.seq % u64::from(partitions.max(1))) as u32,
    }
}

/// When the pipeline's stream was created (ns), which tells a stream from
/// one made again under the same name: its sequences start again at 1, and
/// its messages must not be taken for duplicates of the old one's.
async fn stream_generation(ctx: &Ctx) -> Option<i128> {
    let stream = &ctx.pipeline.source.stream;
    let info = async {
        let found = ctx.js.get_stream(stream).await.ok()?;
        Some(found.cached_info().created)
    };
    match info.await {
        Some(created) => Some(created.unix_timestamp_nanos()),
        None => {
            tracing::warn!(pipeline = %ctx.pipeline.name, stream = %stream, "cannot read the source stream; splitting again soon");
            None
        }
    }
}

/// The message for its partition: the same payload and headers, with where
/// it stands in the pipeline's stream and, when it was delivered before,
/// how often (the partition's run then checks it against the id map, as
/// any redelivery: a copy split again after a failure may come after a
/// newer change of its key). `attempt`: see [`Unstored`].
fn republished(
    pipeline: &str,
    generation: i128,
    msg: &SourceMessage,
    attempt: Option<u32>,
) -> Publish {
    let mut headers = HeaderMap::new();
    for (name, value) in &msg.headers {
        if name.eq_ignore_ascii_case("Nats-Msg-Id") {
            headers.insert(MSG_ID_HEADER, value.as_str());
        } else {
            headers.append(name.as_str(), value.as_str());
        }
    }
    headers.insert(SUBJECT_HEADER, msg.subject.as_str());
    headers.insert(SEQ_HEADER, msg.seq.to_string().as_str());
    if let Some(ms) = msg.timestamp_ms {
        headers.insert(TIME_HEADER, ms.to_string().as_str());
    }
    if msg.delivered > 1 {
        headers.insert(DELIVERED_HEADER, msg.delivered.to_string().as_str());
    }
    Publish::build()
        .payload(msg.payload.clone())
        .headers(headers)
        .message_id(copy_id(pipeline, generation, msg.seq, attempt))
}

/// The copy's `Nats-Msg-Id`: the same for every copy of one message of one
/// stream (a splitter taking over republishes what is already stored, and
/// the partition stream drops it), unless the stream holds that id without
/// the message ([`Unstored`]).
fn copy_id(pipeline: &str, generation: i128, seq: u64, attempt: Option<u32>) -> String {
    match attempt {
        None => format!("{pipeline}.{generation:x}.{seq}"),
        Some(n) => format!("{pipeline}.{generation:x}.{seq}.{n}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(json: &str) -> Stored {
        Stored::from(Ok(serde_json::from_str(json).unwrap()))
    }

    #[test]
    fn a_duplicate_without_a_sequence_is_not_stored() {
        assert!(matches!(answer(r#"{"stream":"P","seq":7}"#), Stored::Yes));
        // Stored by an earlier copy: as good as stored now.
        assert!(matches!(
            answer(r#"{"stream":"P","seq":7,"duplicate":true}"#),
            Stored::Yes
        ));
        assert!(matches!(
            answer(r#"{"stream":"P","seq":0,"duplicate":true}"#),
            Stored::IdWithoutMessage
        ));
    }

    #[test]
    fn a_copy_goes_again_under_a_new_id_only_when_its_id_is_spent() {
        assert_eq!(copy_id("contacts", 0x1f, 42, None), "contacts.1f.42");
        assert_eq!(copy_id("contacts", 0x1f, 42, Some(2)), "contacts.1f.42.2");
    }
}
