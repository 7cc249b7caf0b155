//! The JetStream source: one durable pull consumer per pipeline, explicit
//! acks, batched pulls, bounded unacked messages.
//!
//! - `consumer`: binding the consumer, and what its deliveries say;
//! - `puller`: its pull requests, one at a time, answered on one inbox;
//! - `recovery`: at bind, messages newer than the ones a previous holder
//!   left unacked wait until those are settled (per-key order across a
//!   restart, docs/acks-and-order.md);
//! - `acks`: acks gathered for one write per burst.
//!
//! A cut-off source (a pull error, NATS away) rebinds with backoff and is
//! reported not ready meanwhile.

mod acks;
mod budget;
mod consumer;
mod puller;
mod recovery;

use std::collections::VecDeque;
use std::time::Duration;

use async_nats::Subject;
use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::{self, AckKind};
use tokio::sync::watch;

use consumer::Skipped;
pub use consumer::{NatsSourceError, consumer_config};
pub use puller::PULL_EXPIRES;

use super::{AckError, Settle, Source, SourceMessage};
use crate::config::model::NatsSourceConfig;
use crate::readiness::Readiness;
use acks::Acks;
use budget::{ByteBudget, SizeEstimate};
use puller::Puller;
use recovery::Recovery;

/// How often an exclusive consumer of a work queue is checked for skipped
/// messages: three requests (the stream's info, the consumer's, and the
/// subject's first message from the stream's leader).
const AUDIT_EVERY: Duration = Duration::from_secs(3);

/// How often a message held but not settled is reported in progress, for
/// a consumer whose `ack_wait` is `ack_wait`.
pub fn progress_every(ack_wait: Duration) -> Duration {
    (ack_wait / 3).max(Duration::from_millis(100))
}

/// A pipeline's durable pull consumer as a [`Source`].
pub struct JetStreamSource {
    js: jetstream::Context,
    config: NatsSourceConfig,
    durable: String,
    pipeline: String,
    readiness: Readiness,
    stop: watch::Receiver<bool>,
    acks: Acks,
    acks_task: tokio::task::JoinHandle<()>,
    /// Bytes of the messages given out and not yet settled.
    budget: ByteBudget,
    size: SizeEstimate,
    consumer: Option<PullConsumer>,
    /// The bound consumer's pulls; none open while not bound.
    puller: Option<Puller>,
    recovery: Option<Recovery>,
    /// Parked messages released in stream order, given out before any new one.
    released: VecDeque<SourceMessage>,
    backoff: Duration,
    tick: tokio::time::Interval,
    /// Bind as the consumer's new holder ([`consumer::take_over`]) at the
    /// first bind.
    take_over: bool,
    /// Messages up to this stream sequence were delivered to a previous
    /// holder: they count as redelivered.
    delivered_before: u64,
    /// For a consumer this source alone pulls from (a fleet's partition or
    /// splitter): the last delivery seen. Deliveries are numbered one by
    /// one, so a gap means one was lost on its way (a NATS node died with
    /// it in flight); JetStream would send it again only after `ack_wait`,
    /// behind the newer ones.
    last_delivery: Option<u64>,
    exclusive: bool,
    /// How often an exclusive consumer is checked for messages it skipped
    /// ([`consumer::skipped`]), and the one seen at the last check; no
    /// checks once the stream is known not to be a work queue.
    audit: tokio::time::Interval,
    audited: bool,
    skipped: Option<u64>,
    /// The first delivery since binding is still to be checked against the
    /// stream ([`consumer::older_than`]).
    check_first: bool,
    /// The next take-over makes the consumer again even with nothing unacked.
    make_again: bool,
}

impl JetStreamSource {
    /// Binds lazily: the first [`Source::next`] creates or updates the
    /// durable consumer.
    pub fn new(
        js: jetstream::Context,
        config: NatsSourceConfig,
        pipeline: &str,
        readiness: Readiness,
        stop: watch::Receiver<bool>,
    ) -> Self {
        let durable = config
            .durable
            .clone()
            .unwrap_or_else(|| pipeline.to_string());
        let (acks, acks_task) = Acks::start(pipeline.to_string(), js.client());
        let budget = ByteBudget::new(config.max_ack_pending_bytes);
        JetStreamSource {
            js,
            config,
            durable,
            pipeline: pipeline.to_string(),
            readiness,
            stop,
            acks,
            acks_task,
            budget,
            size: SizeEstimate::default(),
            consumer: None,
            puller: None,
            recovery: None,
            released: VecDeque::new(),
            backoff: Duration::from_millis(250),
            tick: tokio::time::interval(Duration::from_millis(100)),
            take_over: false,
            delivered_before: 0,
            last_delivery: None,
            exclusive: false,
            audit: {
                // Two checks in a row are always AUDIT_EVERY apart.
                let mut audit = tokio::time::interval_at(
                    tokio::time::Instant::now() + AUDIT_EVERY,
                    AUDIT_EVERY,
                );
                audit.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                audit
            },
            audited: true,
            skipped: None,
            check_first: false,
            make_again: false,
        }
    }

    /// Binds as the new holder of a consumer another instance may have
    /// held and died with ([`consumer::take_over`]).
    pub fn taking_over(mut self) -> Self {
        self.take_over = true;
        self.exclusive = true;
        self
    }

    /// Fences the source with its lease: once `fence` turns true, its
    /// messages are neither acked nor worked on any more (see
    /// [`AckHandle::wait_fenced`](crate::source::AckHandle::wait_fenced)).
    pub fn with_fence(mut self, fence: watch::Receiver<bool>) -> Self {
        self.acks = self.acks.with_fence(fence);
        self
    }

    /// Ends a source whose consumer another instance may take next: every
    /// message given out settled, the acks sent and on the server, so the
    /// next holder starts exactly where this one ended.
    pub async fn finish(self) {
        let (settled, js) = (self.settled(), self.js.clone());
        settled.await;
        self.close().await;
        flush_acks(&js).await;
    }

    /// Returns once every message given out has been settled (acked,
    /// handed back or dropped).
    pub fn settled(&self) -> impl std::future::Future<Output = ()> + Send + use<> {
        // Owned: the source itself is not `Sync`, so a borrow of it could
        // not be held across the wait in a spawned task.
        let budget = self.budget.clone();
        async move { budget.wait_empty().await }
    }

    fn stopped(&self) -> bool {
        *self.stop.borrow()
    }

    /// Creates or updates the consumer; on failure waits out a backoff.
    async fn bind(&mut self) {
        let bound = match self.take_over {
            true => consumer::take_over(&self.js, &self.config, &self.durable, self.make_again)
                .await
                .map(|(consumer, delivered_before)| {
                    self.take_over = false;
                    self.make_again = false;
                    self.delivered_before = delivered_before;
                    consumer
                }),
            false => consumer::bind(&self.js, &self.config, &self.durable).await,
        };
        match bound {
            Ok(mut consumer) => {
                if self.exclusive {
                    self.last_delivery = Some(consumer.cached_info().delivered.consumer_sequence);
                    self.check_first = self.audited;
                }
                self.readiness.set_ready(&self.pipeline, true);
                self.backoff = Duration::from_millis(250);
                tracing::info!(pipeline = %self.pipeline, durable = %self.durable, "consuming");
                self.recovery = Some(Recovery::at_bind(&mut consumer, &self.pipeline).await);
                self.consumer = Some(consumer);
            }
            Err(e) => {
                self.readiness.set_ready(&self.pipeline, false);
                tracing::error!(pipeline = %self.pipeline, error = %e, retry_in_ms = self.backoff.as_millis() as u64, "source unavailable");
                tokio::select! {
                    _ = tokio::time::sleep(self.backoff) => {}
                    _ = self.stop.changed() => {}
                }
                self.backoff = (self.backoff * 2).min(Duration::from_secs(30));
            }
        }
    }

    /// The pull failed: what waits goes back (still in order), and the
    /// consumer is bound again.
    async fn cut_off(&mut self, error: &NatsSourceError) {
        tracing::warn!(pipeline = %self.pipeline, error = %error, "pull failed; reconnecting");
        self.puller = None;
        self.consumer = None;
        self.hand_back_parked().await;
        self.readiness.set_ready(&self.pipeline, false);
        if self.exclusive {
            // What this pull lost is not known: bind again as the new
            // holder, once what was given out is settled.
            self.resync().await;
        }
    }

    async fn hand_back_parked(&mut self) {
        if let Some(recovery) = &mut self.recovery {
            for msg in recovery.take_parked() {
                msg.hand_back(&self.pipeline).await;
            }
        }
        for msg in std::mem::take(&mut self.released) {
            msg.hand_back(&self.pipeline).await;
        }
    }

    /// Parked messages that may go on now join `released`.
    async fn release(&mut self, between_pulls: bool) {
        let (Some(recovery), Some(consumer)) = (&mut self.recovery, &mut self.consumer) else {
            return;
        };
        let released = recovery
            .release(consumer, &self.pipeline, between_pulls)
            .await;
        self.released.extend(released);
    }

    /// Whether a delivery before `msg` never arrived (exclusive consumers
    /// only); notes `msg` as the last one seen otherwise.
    fn lost_before(&mut self, msg: &SourceMessage) -> bool {
        if !self.exclusive {
            return false;
        }
        let Settle::JetStream(ack) = &msg.ack.0;
        let lost = self
            .last_delivery
            .is_some_and(|last| ack.delivery > last + 1);
        if lost {
            tracing::warn!(
                pipeline = %self.pipeline,
                seq = msg.seq,
                expected_delivery = self.last_delivery.map(|l| l + 1),
                delivery = ack.delivery,
                "a delivery was lost on its way: taking the consumer over again so it comes first"
            );
        } else {
            self.last_delivery = Some(ack.delivery);
        }
        lost
    }

    /// After a lost delivery: hands back what this pull still holds, lets
    /// what was given out settle, and binds the consumer again as its new
    /// holder (at its ack floor), so the lost message comes before any
    /// newer one of its key. The pause is what is in flight now.
    async fn resync(&mut self) {
        self.wind_down().await;
        self.settled().await;
        self.readiness.set_ready(&self.pipeline, false);
        // The acks given so far reach the server before it is read.
        flush_acks(&self.js).await;
        self.consumer = None;
        self.recovery = None;
        self.last_delivery = None;
        self.take_over = true;
    }

    /// For the first delivery since binding (exclusive consumers of a work
    /// queue): false when the stream holds an older message of the
    /// consumer's subject, which the consumer went past; the caller takes
    /// it again. False too when the stream cannot say (after a pause).
    async fn first_is_first(&mut self, msg: &SourceMessage) -> bool {
        if !std::mem::take(&mut self.check_first) {
            return true;
        }
        match consumer::older_than(&self.js, &self.config, &self.durable, msg.seq).await {
            Ok(Skipped::NotAWorkQueue) => {
                self.audited = false;
                true
            }
            Ok(Skipped::Nothing) => true,
            Ok(Skipped::From(older)) => {
                tracing::warn!(
                    pipeline = %self.pipeline,
                    durable = %self.durable,
                    seq = older,
                    first_delivered = msg.seq,
                    "the consumer started past a message its stream still holds: taking it over again"
                );
                self.make_again = true;
                false
            }
            Err(e) => {
                tracing::warn!(pipeline = %self.pipeline, error = %e, "cannot check the first delivery against the stream; binding again");
                tokio::select! {
                    _ = tokio::time::sleep(self.backoff) => {}
                    _ = self.stop.changed() => {}
                }
                false
            }
        }
    }

    /// Checks the consumer for a message it went past; the same one seen at
    /// two checks in a row makes the consumer again, so it comes now and
    /// before any newer one of its key.
    async fn audit(&mut self) {
        let first = match consumer::skipped(&self.js, &self.config, &self.durable).await {
            Ok(Skipped::NotAWorkQueue) => {
                self.audited = false;
                return;
            }
            Ok(Skipped::Nothing) => None,
            Ok(Skipped::From(seq)) => Some(seq),
            // NATS busy or away: the next check will say.
            Err(_) => None,
        };
        if first.is_some() && first == self.skipped {
            tracing::warn!(
                pipeline = %self.pipeline,
                durable = %self.durable,
                seq = first,
                "the consumer went past a message its stream still holds: taking it over again"
            );
            self.skipped = None;
            self.make_again = true;
            self.resync().await;
            return;
        }
        self.skipped = first;
    }

    /// Stopping: the current pull's messages are ours until it ends, so
    /// they are handed back now rather than left to `ack_wait`; so are the
    /// parked ones.
    async fn wind_down(&mut self) {
        if let Some(mut puller) = self.puller.take() {
            while let Some(Ok(m)) = puller.next().await {
                let msg = consumer::to_source_message(m, &self.acks, &self.budget);
                msg.hand_back(&self.pipeline).await;
            }
        }
        self.hand_back_parked().await;
    }
}

impl Source for JetStreamSource {
    async fn next(&mut self) -> Option<SourceMessage> {
        loop {
            if self.stopped() {
                self.wind_down().await;
                return None;
            }
            if let Some(msg) = self.released.pop_front() {
                return Some(msg);
            }
            let Some(consumer) = &self.consumer else {
                self.bind().await;
                continue;
            };
            let waiting = self.recovery.as_ref().is_some_and(Recovery::is_waiting);
            let puller = match &mut self.puller {
                Some(puller) => puller,
                None => match Puller::new(&self.js, consumer, &self.durable).await {
                    Ok(puller) => self.puller.insert(puller),
                    Err(e) => {
                        self.cut_off(&e).await;
                        continue;
                    }
                },
            };
            if puller.pending() == 0 {
                // While recovering, the older messages awaited must come
                // whatever the parked ones hold: max_ack_pending bounds it.
                if !waiting && self.budget.available() == 0 {
                    tokio::select! {
                        _ = self.budget.wait_available() => {}
                        _ = self.stop.changed() => {}
                    }
                    continue;
                }
                let count =
                    budget::pull_size(self.config.batch, self.budget.available(), self.size.get());
                if let Err(e) = puller.request(count).await {
                    self.cut_off(&e).await;
                    continue;
                }
            }
            tokio::select! {
                next = puller.next() => match next {
                    // The request ended: no pull of ours is open.
                    None => self.release(true).await,
                    Some(Ok(m)) => {
                        let mut msg = consumer::to_source_message(m, &self.acks, &self.budget);
                        if self.lost_before(&msg) || !self.first_is_first(&msg).await {
                            msg.hand_back(&self.pipeline).await;
                            drop(msg);
                            self.resync().await;
                            continue;
                        }
                        self.size.observe(msg.ack.held_bytes());
                        if msg.seq <= self.delivered_before {
                            msg.delivered = msg.delivered.max(2);
                        }
                        let admitted = match &mut self.recovery {
                            Some(recovery) => recovery.admit(msg),
                            None => Some(msg),
                        };
                        if admitted.is_some() {
                            return admitted;
                        }
                    }
                    Some(Err(e)) => self.cut_off(&e).await,
                },
                _ = self.tick.tick(), if waiting => {
                    let every = progress_every(self.config.ack_wait.0);
                    if let Some(recovery) = &mut self.recovery {
                        recovery.keep_alive(every).await;
                    }
                    self.release(false).await;
                }
                _ = self.audit.tick(), if self.exclusive && self.audited => self.audit().await,
                _ = self.stop.changed() => {}
            }
        }
    }

    async fn close(self) {
        drop(self.acks);
        let _ = self.acks_task.await;
    }
}

/// Waits until the acks sent so far are on the server; bounded, as NATS
/// may be away (those messages are then redelivered).
async fn flush_acks(js: &jetstream::Context) {
    let _ = tokio::time::timeout(Duration::from_secs(5), js.client().flush()).await;
}

/// How a JetStream message is settled: acks go through the pipeline's ack
/// task (`acks`), the rest straight to the server.
pub(crate) struct Ack {
    /// The delivery's `$JS.ACK` subject, what every kind of ack answers;
    /// none for a message that is not a JetStream delivery.
    reply: Option<Subject>,
    acks: Acks,
    /// The message's share of `max_ack_pending_bytes`, released with it.
    held: budget::Held,
    /// Its consumer sequence: which delivery of the consumer it was.
    delivery: u64,
}

impl std::fmt::Debug for Ack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JetStreamAck")
    }
}

impl Ack {
    pub(super) fn held_bytes(&self) -> usize {
        self.held.bytes()
    }

    pub(super) fn ack(self, seq: u64) {
        match self.reply {
            Some(reply) => self.acks.ack(seq, reply),
            None => tracing::warn!(seq, "not a JetStream delivery: nothing to ack"),
        }
    }

    pub(super) fn fenced(&self) -> bool {
        self.acks.fenced()
    }

    pub(super) async fn wait_fenced(&self) {
        self.acks.wait_fenced().await;
    }

    pub(super) async fn in_progress(&self) -> Result<(), AckError> {
        self.send_now(AckKind::Progress).await
    }

    pub(super) async fn nak(&self, delay: Option<Duration>) -> Result<(), AckError> {
        self.send_now(AckKind::Nak(delay)).await
    }

    async fn send_now(&self, kind: AckKind) -> Result<(), AckError> {
        let Some(reply) = &self.reply else {
            return Err(AckError("not a JetStream delivery".into()));
        };
        self.acks
            .send_now(reply.clone(), kind)
            .await
            .map_err(|e| AckError(e.to_string()))
    }
}

#[cfg(test)]
mod tests;
