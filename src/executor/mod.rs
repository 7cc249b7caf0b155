//! The per-pipeline loop: pull from the source, evaluate, route by key to a
//! lane, and (in the lane) send, record ids, dead-letter and ack.
//!
//! Evaluation runs on every core: pulled messages are evaluated in small
//! chunks, each a task of its own, and routed to their lanes in stream
//! order as the chunks finish (in the order they were pulled, whatever
//! order they finish in). One task evaluating everything capped a pipeline
//! at one core while the other sat idle (bench/README.md, `batch`).
//!
//! A running pipeline can take a new version of itself without stopping
//! ([`PipelineRunner::swap`]): records pulled after the swap are evaluated
//! and sent by the new version, records already evaluated finish with the
//! version that evaluated them, in the same lanes, so per-key order holds
//! across the swap and nothing is handed back. Only a change of the source
//! itself (stream, subject, consumer settings) needs a drain and a new runner.

mod accounts;
mod backlog;
mod dead_letter;
mod deliver;
mod lane;
mod metrics;
mod waiting;

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesOrdered;
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

pub use dead_letter::{DLQ_STREAM, REPLAY_OF_HEADER, ensure_streams as ensure_dead_letter_streams};
pub use deliver::Ctx;
pub use metrics::PipelineMetrics;

use crate::config::model::NatsSourceConfig;
use crate::fleet::{Fleet, PartitionedSource, split};
use crate::pipeline::MessageMeta;
use crate::readiness::Readiness;
use crate::source::{JetStreamSource, Source, SourceMessage, jetstream};

/// A running pipeline.
pub struct PipelineRunner {
    pub name: String,
    /// The source the runner's consumer was bound with.
    source: NatsSourceConfig,
    /// Whether it was started for records that name their account (and
    /// so runs them through an account gate and waiting room).
    accounts: bool,
    version: watch::Sender<Arc<Ctx>>,
    stop: watch::Sender<bool>,
    abort: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl PipelineRunner {
    /// Starts pulling and processing: from the pipeline's consumer, or in
    /// a fleet, from the partitions this instance holds (and splitting the
    /// pipeline's consumer into them while it holds the splitter).
    pub fn spawn(ctx: Arc<Ctx>, readiness: Readiness, fleet: Option<&Fleet>) -> Self {
        let (stop, stop_rx) = watch::channel(false);
        let (abort, abort_rx) = watch::channel(false);
        let name = ctx.pipeline.name.clone();
        let source = ctx.pipeline.source.clone();
        let progress_every = jetstream::progress_every(source.ack_wait.0);
        let accounts = account_gate(&ctx).is_some();
        let js = ctx.js.clone();
        let (version, version_rx) = watch::channel(ctx);
        let task = match fleet {
            None => {
                let pulled =
                    JetStreamSource::new(js, source.clone(), &name, readiness.clone(), stop_rx);
                tokio::spawn(run(pulled, version_rx, readiness, abort_rx, progress_every))
            }
            Some(fleet) => {
                let pulled = PartitionedSource::new(
                    fleet.clone(),
                    js,
                    source.clone(),
                    &name,
                    readiness.clone(),
                    stop_rx.clone(),
                );
                let splitter = split::run(
                    fleet.clone(),
                    version_rx.clone(),
                    readiness.clone(),
                    stop_rx,
                );
                let runner = run(pulled, version_rx, readiness, abort_rx, progress_every);
                tokio::spawn(async move {
                    tokio::join!(runner, splitter);
                })
            }
        };
        PipelineRunner {
            name,
            source,
            accounts,
            version,
            stop,
            abort,
            task,
        }
    }

    /// Whether `ctx` can take over this runner with [`swap`](Self::swap):
    /// same source, so the same consumer, bound the same way, and accounts
    /// named or not as before (the account gate is the runner's).
    pub fn can_swap_to(&self, ctx: &Ctx) -> bool {
        self.source == ctx.pipeline.source && self.accounts == account_gate(ctx).is_some()
    }

    /// Makes `ctx` the version that evaluates and sends every record pulled
    /// from now on.
    pub fn swap(&self, ctx: Arc<Ctx>) {
        debug_assert!(self.can_swap_to(&ctx));
        self.version.send_replace(ctx);
    }

    /// Stops fetching and lets the lanes finish what they hold; whatever is
    /// left at `deadline` is handed back to the source for redelivery.
    /// Returns whether everything finished in time.
    pub async fn drain(self, deadline: Duration) -> bool {
        let _ = self.stop.send(true);
        let mut task = self.task;
        match tokio::time::timeout(deadline, &mut task).await {
            Ok(_) => true,
            Err(_) => {
                let _ = self.abort.send(true);
                let _ = task.await;
                false
            }
        }
    }
}

/// Lanes per pipeline: enough that lanes waiting on backoff or the limiter
/// don't leave the target's `max_in_flight` idle. A lane whose records use
/// the id map spends two JetStream round trips outside its request slot
/// (the read before, the writes after): twice as many lanes keep the slots
/// busy (bench/README.md, `id-map`). A lane holds one record at a time, so
/// a request slot that carries batches needs a batch's worth of lanes.
fn lane_count(ctx: &Ctx) -> usize {
    let per_slot = match ctx.sink.uses_id_map() {
        true => 4,
        false => 2,
    };
    let records = ctx.sink.max_batch_records();
    let most = match records {
        1 => 1024,
        // More lanes than twice the records a pipeline may hold only
        // thin out key collisions further, at a task each.
        _ => (2 * ctx.pipeline.source.max_ack_pending.max(1) as usize).clamp(1024, MAX_BATCH_LANES),
    };
    let lanes = (ctx.pipeline.target.max_in_flight() * per_slot * records).clamp(1, most);
    match ctx.pipeline.names_accounts() {
        // An account at its cap fills a few lanes with records waiting for
        // its cells; other accounts' keys that share those lanes wait
        // behind them. Many lanes make that rare (bench/README.md, accounts).
        true => lanes.max(ACCOUNT_LANES),
        false => lanes,
    }
}

/// Lanes of a pipeline whose records name accounts, at least.
const ACCOUNT_LANES: usize = 1024;

/// Lanes of a pipeline whose records go in batches: each lane is a task
/// holding one record, so this bounds the records being batched at once.
const MAX_BATCH_LANES: usize = 8192;

/// Stream sequences dispatched and not yet settled, with when they were,
/// so a redelivery of one of them is not handled twice (and the oldest one's
/// age can be reported); and how many each account holds (accounts.rs).
#[derive(Clone, Default)]
struct Dispatched(Arc<Mutex<DispatchedState>>);

#[derive(Default)]
struct DispatchedState {
    by_seq: HashMap<u64, (Instant, Option<Arc<str>>), foldhash::fast::RandomState>,
    held: HashMap<Arc<str>, usize, foldhash::fast::RandomState>,
}

impl Dispatched {
    fn lock(&self) -> std::sync::MutexGuard<'_, DispatchedState> {
        self.0.lock().expect("dispatched set")
    }

    /// False when `seq` is already being handled.
    fn insert(&self, seq: u64, at: Instant) -> bool {
        match self.lock().by_seq.entry(seq) {
            std::collections::hash_map::Entry::Occupied(_) => false,
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert((at, None));
                true
            }
        }
    }

    /// Records `account`'s records held now.
    fn held(&self, account: &str) -> usize {
        self.lock().held.get(account).copied().unwrap_or(0)
    }

    /// Counts `seq` among `account`'s held records until it is removed.
    fn hold(&self, seq: u64, account: &str) {
        let mut state = self.lock();
        let account: Arc<str> = match state.held.get_key_value(account) {
            Some((name, _)) => name.clone(),
            None => Arc::from(account),
        };
        if let Some(entry) = state.by_seq.get_mut(&seq) {
            entry.1 = Some(account.clone());
            *state.held.entry(account).or_default() += 1;
        }
    }

    /// Settles `seq`; returns the account it was held for, if any.
    fn remove(&self, seq: u64) -> Option<Arc<str>> {
        let mut state = self.lock();
        let (_, account) = state.by_seq.remove(&seq)?;
        let account = account?;
        if let Some(n) = state.held.get_mut(&account) {
            *n -= 1;
            if *n == 0 {
                state.held.remove(&account);
            }
        }
        Some(account)
    }

    /// When the longest-held record was dispatched. A scan: called every
    /// few seconds, over at most `max_ack_pending` entries.
    fn oldest(&self) -> Option<Instant> {
        self.lock().by_seq.values().map(|(at, _)| *at).min()
    }

    /// Waits until every dispatched record has been settled.
    async fn wait_empty(&self) {
        while !self.lock().by_seq.is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Pulls from the source into the lanes until the source stops, then lets
/// the lanes finish and the source deliver its last acks.
async fn run(
    mut source: impl Source + 'static,
    mut version: watch::Receiver<Arc<Ctx>>,
    readiness: Readiness,
    abort: watch::Receiver<bool>,
    progress_every: Duration,
) {
    let ctx = version.borrow_and_update().clone();
    let name = ctx.pipeline.name.clone();
    let dispatched = Dispatched::default();
    let room = waiting_room(&ctx).map(Arc::new);
    let mut tasks = JoinSet::new();
    let lanes: Vec<_> = (0..lane_count(&ctx))
        .map(|_| {
            let (tx, rx) = mpsc::unbounded_channel();
            let (dispatched, room) = (dispatched.clone(), room.clone());
            let done = move |seq| {
                // A settled record of an account makes room for its next.
                if let (Some(account), Some(room)) = (dispatched.remove(seq), &room) {
                    room.release(&account, &dispatched);
                }
            };
            tasks.spawn(lane::run(rx, abort.clone(), progress_every, done));
            tx
        })
        .collect();
    if let Some(room) = &room {
        room.set_lanes(lanes.clone());
    }
    let backlog = tokio::spawn(backlog::report(
        ctx.js.clone(),
        ctx.pipeline.source.clone(),
        name.clone(),
        dispatched.clone(),
    ));
    let mut dispatcher = Dispatcher {
        room: room.clone(),
        ctx,
        version,
        lanes,
        dispatched: dispatched.clone(),
        evaluating: FuturesOrdered::new(),
    };
    if let Some(room) = &room {
        tracing::info!(pipeline = %name, records_per_account = room.cap(), "records name their account: each account sends at most this many at once, its next ones wait");
    }
    // The source is pulled in a task of its own, so that waiting for the
    // next message and for evaluations to finish can be one `select!`
    // (pulling is not cancel-safe; receiving from a channel is).
    let (pulled_tx, mut pulled) = mpsc::channel(EVAL_CHUNK);
    let puller = tokio::spawn(async move {
        while let Some(msg) = source.next().await {
            if pulled_tx.send(msg).await.is_err() {
                break;
            }
        }
        source
    });
    let mut chunk = Vec::with_capacity(EVAL_CHUNK);
    loop {
        tokio::select! {
            biased;
            Some(evaluated) = dispatcher.evaluating.next() => {
                dispatcher.route_all(evaluated).await;
            }
            n = pulled.recv_many(&mut chunk, EVAL_CHUNK), if dispatcher.evaluating.len() < EVAL_CHUNKS_IN_FLIGHT => {
                if n == 0 {
                    break;
                }
                dispatcher.evaluate(std::mem::take(&mut chunk)).await;
            }
        }
    }
    dispatcher.finish_evaluating().await;
    let source = puller.await.expect("the puller does not panic");
    readiness.remove(&name);
    backlog.abort();
    drop(dispatcher);
    if let Some(room) = &room {
        // What waited for its account's turn goes back to JetStream now.
        for job in room.close() {
            job.msg.hand_back(&name).await;
            dispatched.remove(job.msg.seq);
        }
    }
    while tasks.join_next().await.is_some() {}
    // Every lane is done: the last acks go out before the runner ends.
    source.close().await;
    tracing::info!(pipeline = %name, "drained");
}

/// Evaluates pulled messages with the current pipeline version and routes
/// them to their key's lane.
struct Dispatcher {
    ctx: Arc<Ctx>,
    version: watch::Receiver<Arc<Ctx>>,
    /// Jobs go boxed: a channel allocates its slots 32 at a time, and a
    /// job inline is some 500 bytes, 16 KB per lane whether it is busy or not.
    lanes: Vec<mpsc::UnboundedSender<Box<lane::Job>>>,
    dispatched: Dispatched,
    /// For a pipeline whose records name accounts with limits of their own.
    room: Option<Arc<waiting::WaitingRoom>>,
    /// Chunks of pulled messages being evaluated, in the order pulled.
    evaluating: FuturesOrdered<JoinHandle<Evaluated>>,
}

/// A chunk's jobs, boxed by the task that evaluated them (not by the
/// dispatcher): lanes take them boxed.
#[allow(clippy::vec_box)]
type Evaluated = Vec<Box<lane::Job>>;

/// Messages evaluated by one task: enough to make a task's cost small
/// beside theirs, few enough that a lone message is not held back.
const EVAL_CHUNK: usize = 16;
/// Chunks evaluated at once: a few per core.
const EVAL_CHUNKS_IN_FLIGHT: usize = 8;

impl Dispatcher {
    /// Starts evaluating `msgs` (in a task) with the current version,
    /// leaving out redeliveries of messages still being handled.
    async fn evaluate(&mut self, mut msgs: Vec<SourceMessage>) {
        if self.version.has_changed().unwrap_or(false) {
            // What the old version evaluated goes to the lanes first. Before
            // `msgs` count as dispatched: a new key path waits for every
            // dispatched record to settle, and these could not.
            self.finish_evaluating().await;
            self.take_new_version().await;
        }
        let received = Instant::now();
        // A redelivery of a message still being handled here: its first
        // delivery will ack it.
        msgs.retain(|msg| self.dispatched.insert(msg.seq, received));
        if msgs.is_empty() {
            return;
        }
        let ctx = self.ctx.clone();
        ctx.metrics.received.increment(msgs.len() as u64);
        self.evaluating.push_back(tokio::spawn(async move {
            msgs.into_iter()
                .map(|msg| {
                    let eval = evaluate(&ctx, &msg);
                    Box::new(lane::Job {
                        ctx: ctx.clone(),
                        msg,
                        eval,
                        received,
                    })
                })
                .collect()
        }));
    }

    /// Routes every chunk being evaluated, in order.
    async fn finish_evaluating(&mut self) {
        while let Some(evaluated) = self.evaluating.next().await {
            self.route_all(evaluated).await;
        }
    }

    async fn route_all(&mut self, evaluated: Result<Evaluated, tokio::task::JoinError>) {
        // An evaluation that panicked is a bug; its messages are never
        // acked and come again after ack_wait.
        let jobs = evaluated.expect("evaluation does not panic");
        for job in jobs {
            self.route(job).await;
        }
    }

    /// Sends an evaluated message to its key's lane (through the waiting
    /// room, for a pipeline whose records name accounts).
    async fn route(&mut self, job: Box<lane::Job>) {
        let (eval, msg, received) = (&job.eval, &job.msg, job.received);
        let lanes = self.lanes.len();
        let lane = match eval {
            lane::Eval::Done(Ok(out)) => lane_of(&out.key, lanes),
            lane::Eval::Inbound { key, .. } => lane_of(key, lanes),
            lane::Eval::Done(Err(e)) => match &e.key {
                Some(key) => lane_of(key, lanes),
                None => (msg.seq as usize) % lanes,
            },
        };
        let account = match &job.eval {
            lane::Eval::Done(Ok(out)) => out.account.clone(),
            _ => None,
        };
        let job = match (&self.room, account) {
            (Some(room), Some(account)) => {
                match room.offer(job, &account, &self.dispatched, received) {
                    waiting::Offered::Go(job) => job,
                    waiting::Offered::Kept => return,
                    waiting::Offered::Park(job, delay) => {
                        park(room, &job.ctx.pipeline.name, &account, &job.msg, delay).await;
                        job.ctx.metrics.parked.increment(1);
                        self.dispatched.remove(job.msg.seq);
                        return;
                    }
                }
            }
            _ => job,
        };
        // A lane ends early only when aborted at the drain deadline.
        if let Err(mpsc::error::SendError(job)) = self.lanes[lane].send(job) {
            job.msg.hand_back(&job.ctx.pipeline.name).await;
            self.dispatched.remove(job.msg.seq);
        }
    }

    async fn take_new_version(&mut self) {
        let next = self.version.borrow_and_update().clone();
        // The new version's limits; what is parked stays parked.
        if let (Some(new), Some(room)) = (account_gate(&next), &self.room) {
            room.reconfigure(new, next.pipeline.source.ack_wait.0);
        }
        if next.pipeline.key_path() != self.ctx.pipeline.key_path() {
            // Records are routed to lanes by key: with another key, a record
            // could overtake an earlier one of the same record still queued
            // under the old key. Wait for the lanes to empty first.
            self.dispatched.wait_empty().await;
        }
        tracing::info!(pipeline = %next.pipeline.name, "new version takes over");
        self.ctx = next;
    }
}

/// Evaluates a pulled message with `ctx`'s pipeline; a two-way link's
/// inbound change only decoded and keyed (its lane evaluates the rest).
fn evaluate(ctx: &Ctx, msg: &SourceMessage) -> lane::Eval {
    let p = &ctx.pipeline;
    if p.is_inbound() && ctx.two_way.is_some() {
        match p
            .decode(&msg.payload)
            .and_then(|m| Ok((p.read_key(&m)?, m.into_owned())))
        {
            Ok((key, message)) => lane::Eval::Inbound { message, key },
            Err(e) => lane::Eval::Done(Err(e)),
        }
    } else {
        lane::Eval::Done(p.evaluate(&meta(msg, None), &msg.payload))
    }
}

/// Evaluates a change of the provider's record for a two-way link (decoded,
/// keyed by the provider's id), with System A's key of it (when linked)
/// given to rules and mappings.
async fn evaluate_inbound(
    ctx: &Ctx,
    msg: &SourceMessage,
    message: &crate::doc::Doc<'_>,
    key: &str,
) -> Result<crate::pipeline::Outcome, crate::pipeline::EvalError> {
    let p = &ctx.pipeline;
    let rt = ctx
        .two_way
        .as_ref()
        .expect("an inbound pipeline is two-way");
    let link = &p
        .two_way
        .as_ref()
        .expect("an inbound pipeline is two-way")
        .link;
    let linked = rt.linked_key(&ctx.trouble, link, key).await;
    p.evaluate_decoded(&meta(msg, linked.as_deref()), message, key.to_string())
}

/// What rules and mappings see of `msg` besides its record.
fn meta<'a>(msg: &'a SourceMessage, linked_key: Option<&'a str>) -> MessageMeta<'a> {
    MessageMeta {
        subject: &msg.subject,
        seq: msg.seq,
        timestamp_ms: msg.timestamp_ms,
        headers: &msg.headers,
        linked_key,
    }
}

/// The gate of a pipeline whose records name their account, when its
/// provider has a limit to apply per account.
fn account_gate(ctx: &Ctx) -> Option<accounts::AccountGate> {
    let p = &ctx.pipeline;
    if !p.names_accounts() {
        return None;
    }
    let limit = p.target.provider()?.rate_limit?;
    let per_s = f64::from(limit.requests) / limit.per.as_secs_f64();
    Some(accounts::AccountGate::new(
        per_s,
        ctx.sink.max_batch_records(),
        p.source.ack_wait.0,
    ))
}

/// The waiting room of a pipeline whose records name their account: half
/// of the pipeline's `max_ack_pending_bytes` for records waiting in memory.
fn waiting_room(ctx: &Ctx) -> Option<waiting::WaitingRoom> {
    let gate = account_gate(ctx)?;
    let source = &ctx.pipeline.source;
    Some(waiting::WaitingRoom::new(
        gate,
        source.max_ack_pending_bytes / 2,
        source.ack_wait.0,
    ))
}

/// Hands a record of an account at its cap back to JetStream, to come
/// again after `delay`.
async fn park(
    room: &waiting::WaitingRoom,
    pipeline: &str,
    account: &str,
    msg: &SourceMessage,
    delay: Duration,
) {
    room.log(|gate| {
        gate.log.warn(|suppressed| {
            tracing::info!(
                pipeline,
                account,
                seq = msg.seq,
                delay_ms = delay.as_millis() as u64,
                parked = gate.parked(),
                suppressed,
                "account at its limit: record parked, other accounts go on"
            );
        })
    });
    if let Err(e) = msg.ack.nak(Some(delay)).await {
        tracing::warn!(pipeline, seq = msg.seq, error = %e, "could not park message; it will be redelivered after ack_wait");
    }
}

fn lane_of(key: &str, lanes: usize) -> usize {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    (h.finish() % lanes as u64) as usize
}
