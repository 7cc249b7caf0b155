//! The per-pipeline loop: pull from the source, evaluate, route by key to a
//! lane, and (in the lane) send, record ids, dead-letter and ack.
//!
//! A running pipeline can take a new version of itself without stopping
//! ([`PipelineRunner::swap`]): records pulled after the swap are evaluated
//! and sent by the new version, records already evaluated finish with the
//! version that evaluated them, in the same lanes, so per-key order holds
//! across the swap and nothing is handed back. Only a change of the source
//! itself (stream, subject, consumer settings) needs a drain and a new runner.

mod acks;
mod dead_letter;
mod idmap;
mod lane;
mod metrics;
mod process;
mod recovery;

use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

pub use dead_letter::{DLQ_STREAM, ensure_streams as ensure_dead_letter_streams};
pub use idmap::{BUCKET as IDMAP_BUCKET, IdMap};
pub use metrics::PipelineMetrics;
pub use process::Ctx;

use crate::config::model::NatsSourceConfig;
use crate::pipeline::MessageMeta;
use crate::server::Health;
use crate::source::{SourceMessage, nats};
use acks::Acks;
use recovery::Recovery;

/// A running pipeline.
pub struct PipelineRunner {
    pub name: String,
    /// The source the runner's consumer was bound with.
    source: NatsSourceConfig,
    version: watch::Sender<Arc<Ctx>>,
    stop: watch::Sender<bool>,
    abort: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl PipelineRunner {
    /// Starts pulling and processing.
    pub fn spawn(ctx: Arc<Ctx>, health: Health) -> Self {
        let (stop, stop_rx) = watch::channel(false);
        let (abort, abort_rx) = watch::channel(false);
        let name = ctx.pipeline.name.clone();
        let source = ctx.pipeline.source.clone();
        let (version, version_rx) = watch::channel(ctx);
        let task = tokio::spawn(run(version_rx, health, stop_rx, abort_rx));
        PipelineRunner {
            name,
            source,
            version,
            stop,
            abort,
            task,
        }
    }

    /// Whether `ctx` can take over this runner with [`swap`](Self::swap):
    /// same source, so the same consumer, bound the same way.
    pub fn can_swap_to(&self, ctx: &Ctx) -> bool {
        self.source == ctx.pipeline.source
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
/// don't leave the provider's `max_in_flight` idle.
fn lane_count(ctx: &Ctx) -> usize {
    (ctx.pipeline.provider.max_in_flight * 2).clamp(1, 1024)
}

/// Stream sequences being handled, so a redelivery of one of them is not
/// handled twice.
#[derive(Clone, Default)]
struct InFlight(Arc<Mutex<HashSet<u64>>>);

impl InFlight {
    /// False when `seq` is already being handled.
    fn insert(&self, seq: u64) -> bool {
        self.0.lock().expect("in-flight set").insert(seq)
    }

    fn remove(&self, seq: u64) {
        self.0.lock().expect("in-flight set").remove(&seq);
    }

    /// Waits until every dispatched record has been settled.
    async fn wait_empty(&self) {
        while !self.0.lock().expect("in-flight set").is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

async fn run(
    mut version: watch::Receiver<Arc<Ctx>>,
    health: Health,
    stop: watch::Receiver<bool>,
    abort: watch::Receiver<bool>,
) {
    let ctx = version.borrow_and_update().clone();
    let name = ctx.pipeline.name.clone();
    let source = ctx.pipeline.source.clone();
    let durable = ctx.pipeline.durable().to_string();
    let progress_every = (source.ack_wait.0 / 3).max(Duration::from_millis(100));
    let in_flight = InFlight::default();
    let (acks, acks_task) = Acks::start(name.clone());
    let mut tasks = JoinSet::new();
    let lanes = (0..lane_count(&ctx))
        .map(|_| {
            let (tx, rx) = mpsc::unbounded_channel();
            let in_flight = in_flight.clone();
            let done = move |seq| in_flight.remove(seq);
            tasks.spawn(lane::run(
                rx,
                acks.clone(),
                abort.clone(),
                progress_every,
                done,
            ));
            tx
        })
        .collect();
    drop(acks);
    let mut dispatcher = Dispatcher {
        ctx,
        version,
        lanes,
        in_flight,
    };
    consume(
        &mut dispatcher,
        &health,
        stop,
        &source,
        &durable,
        progress_every,
    )
    .await;
    health.remove(&name);
    drop(dispatcher);
    while tasks.join_next().await.is_some() {}
    // Every lane is done: the last acks go out before the runner ends.
    let _ = acks_task.await;
    tracing::info!(pipeline = %name, "drained");
}

/// Binds the consumer and pulls batch after batch into the dispatcher until
/// `stop`; rebinds (with backoff) when the source fails.
async fn consume(
    d: &mut Dispatcher,
    health: &Health,
    mut stop: watch::Receiver<bool>,
    source: &NatsSourceConfig,
    durable: &str,
    progress_every: Duration,
) {
    let name = d.ctx.pipeline.name.clone();
    let js = d.ctx.js.clone();
    let mut backoff = Duration::from_millis(250);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    while !*stop.borrow() {
        let mut consumer = match nats::bind(&js, source, durable).await {
            Ok(consumer) => consumer,
            Err(e) => {
                health.set_ready(&name, false);
                tracing::error!(pipeline = %name, error = %e, retry_in_ms = backoff.as_millis() as u64, "source unavailable");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
                continue;
            }
        };
        health.set_ready(&name, true);
        backoff = Duration::from_millis(250);
        tracing::info!(pipeline = %name, durable, "consuming");
        let mut recovery = Recovery::at_bind(&mut consumer, &name).await;
        'pull: while !*stop.borrow() {
            let mut batch = match nats::fetch(&consumer, source.batch, durable).await {
                Ok(batch) => Box::pin(batch),
                Err(e) => {
                    tracing::warn!(pipeline = %name, error = %e, "pull failed; reconnecting");
                    break 'pull;
                }
            };
            loop {
                let next = tokio::select! {
                    next = batch.next() => next,
                    _ = tick.tick(), if recovery.is_waiting() => {
                        recovery.keep_alive(progress_every).await;
                        // Parked messages go on in stream order, before
                        // anything the rest of this pull brings.
                        if !*stop.borrow() {
                            for msg in recovery.release(&mut consumer, &name, false).await {
                                d.dispatch(msg).await;
                            }
                        }
                        continue;
                    }
                };
                let msg = match next {
                    None => {
                        if !*stop.borrow() {
                            for msg in recovery.release(&mut consumer, &name, true).await {
                                d.dispatch(msg).await;
                            }
                        }
                        break;
                    }
                    Some(Ok(msg)) => msg,
                    Some(Err(e)) => {
                        tracing::warn!(pipeline = %name, error = %e, "pull failed; reconnecting");
                        break 'pull;
                    }
                };
                if *stop.borrow() {
                    // The batch is ours until it ends: hand the rest back
                    // now rather than leaving it to ack_wait.
                    hand_back(&name, &msg).await;
                } else if let Some(msg) = recovery.admit(msg) {
                    d.dispatch(msg).await;
                }
            }
        }
        // Stopped or cut off: what waits goes back, still in order.
        for msg in recovery.take_parked() {
            hand_back(&name, &msg).await;
        }
        if !*stop.borrow() {
            health.set_ready(&name, false);
        }
    }
}

/// Evaluates pulled messages with the current pipeline version and routes
/// them to their key's lane.
struct Dispatcher {
    ctx: Arc<Ctx>,
    version: watch::Receiver<Arc<Ctx>>,
    lanes: Vec<mpsc::UnboundedSender<lane::Job>>,
    in_flight: InFlight,
}

impl Dispatcher {
    async fn dispatch(&mut self, msg: SourceMessage) {
        if !self.in_flight.insert(msg.seq) {
            // A redelivery of a message still being handled here: its first
            // delivery will ack it.
            return;
        }
        if self.version.has_changed().unwrap_or(false) {
            self.take_new_version().await;
        }
        let ctx = &self.ctx;
        ctx.metrics.received.increment(1);
        let received = Instant::now();
        let meta = MessageMeta {
            subject: &msg.subject,
            seq: msg.seq,
            timestamp_ms: msg.timestamp_ms,
            headers: &msg.headers,
        };
        let eval = ctx.pipeline.evaluate(&meta, &msg.payload);
        let lanes = self.lanes.len();
        let lane = match &eval {
            Ok(out) => lane_of(&out.key, lanes),
            Err(e) => match &e.key {
                Some(key) => lane_of(key, lanes),
                None => (msg.seq as usize) % lanes,
            },
        };
        let job = lane::Job {
            ctx: ctx.clone(),
            msg,
            eval,
            received,
        };
        // A lane ends early only when aborted at the drain deadline.
        if let Err(mpsc::error::SendError(job)) = self.lanes[lane].send(job) {
            hand_back(&job.ctx.pipeline.name, &job.msg).await;
            self.in_flight.remove(job.msg.seq);
        }
    }

    async fn take_new_version(&mut self) {
        let next = self.version.borrow_and_update().clone();
        if next.pipeline.key_path() != self.ctx.pipeline.key_path() {
            // Records are routed to lanes by key: with another key, a record
            // could overtake an earlier one of the same record still queued
            // under the old key. Wait for the lanes to empty first.
            self.in_flight.wait_empty().await;
        }
        tracing::info!(pipeline = %next.pipeline.name, "new version takes over");
        self.ctx = next;
    }
}

/// Naks a message so it is redelivered now rather than after ack_wait.
async fn hand_back(pipeline: &str, msg: &SourceMessage) {
    if let Err(e) = msg.ack.nak(None).await {
        tracing::warn!(pipeline, seq = msg.seq, error = %e, "could not hand message back; it will be redelivered after ack_wait");
    }
}

fn lane_of(key: &str, lanes: usize) -> usize {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    (h.finish() % lanes as u64) as usize
}
