//! Per-key lanes. Messages are routed to a lane by a hash of their key and
//! each lane handles its messages one at a time, in stream order: the same
//! key is never in two places at once, different keys run concurrently.
//!
//! While a lane waits (limiter, backoff, open breaker), it tells JetStream
//! every message it holds is still in progress, so none is redelivered
//! behind its own back and overtaken by a later change of the same key.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::deliver::{self, Ctx};
use crate::pipeline::{EvalError, Outcome};
use crate::source::SourceMessage;

/// A message and its evaluation, on its way to a lane, with the pipeline
/// version that evaluated it (and will send it).
pub struct Job {
    pub ctx: Arc<Ctx>,
    pub msg: SourceMessage,
    pub eval: Eval,
    pub received: Instant,
}

pub enum Eval {
    /// Evaluated when it was pulled.
    Done(Result<Outcome, EvalError>),
    /// A provider's change for a two-way link, decoded and keyed by the
    /// provider's id: evaluated in its lane, with System A's key from the
    /// id map. There, every earlier change of the record is settled, so a
    /// link the previous change made (a record born in the CRM, just
    /// created in System A) is found; and the dispatcher never waits on
    /// the id map.
    Inbound {
        message: crate::doc::Doc<'static>,
        key: String,
    },
}

impl Job {
    /// Delivers the message (its evaluation finished first, if need be).
    async fn handle(&self) {
        match &self.eval {
            Eval::Done(eval) => deliver::handle(&self.ctx, &self.msg, eval, self.received).await,
            Eval::Inbound { message, key } => {
                let eval = super::evaluate_inbound(&self.ctx, &self.msg, message, key).await;
                deliver::handle(&self.ctx, &self.msg, &eval, self.received).await
            }
        }
    }
}

/// Runs until its sender is dropped and its queue is empty, or until
/// `abort` turns true: then every message it still holds is handed back.
///
/// The lane takes whatever is sent to it at once (the channel is unbounded;
/// the source's `max_ack_pending` and `max_ack_pending_bytes` bound what a
/// pipeline holds, by count and by size), so every
/// message a pipeline holds sits in some lane's queue, where the steady
/// `progress_every` tick keeps telling JetStream it is being worked on.
pub async fn run(
    mut rx: mpsc::UnboundedReceiver<Box<Job>>,
    mut abort: watch::Receiver<bool>,
    progress_every: Duration,
    done: impl Fn(u64) + Send,
) {
    let mut queue: VecDeque<Box<Job>> = VecDeque::new();
    let mut open = true;
    // Steady, never reset per message: a lane whose messages each take a
    // little less than the period must still report the ones it queues.
    let mut tick = tokio::time::interval(progress_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let job = match queue.pop_front() {
            Some(job) => job,
            None if open => match rx.recv().await {
                Some(job) => job,
                None => return,
            },
            None => return,
        };
        let mut fenced = false;
        {
            // Boxed: inline, the delivery's state (several KB) would be part
            // of every lane task, idle or not, and a pipeline that batches
            // has thousands of lanes.
            let mut work = Box::pin(job.handle());
            loop {
                tokio::select! {
                    biased;
                    _ = &mut work => break,
                    // Its partition's lease is lost: the new holder has the
                    // message; whatever this delivery still waits on (a
                    // retry, the id map, the limiter) is dropped here.
                    _ = job.msg.ack.wait_fenced() => {
                        fenced = true;
                        break;
                    }
                    // The guard `wait_for` returns must not live across awaits.
                    _ = async { drop(abort.wait_for(|a| *a).await) } => {
                        // Drain deadline: hand back what is left, in order.
                        job.msg.hand_back(&job.ctx.pipeline.name).await;
                        for j in queue.iter() {
                            j.msg.hand_back(&j.ctx.pipeline.name).await;
                        }
                        rx.close();
                        while let Some(j) = rx.recv().await {
                            j.msg.hand_back(&j.ctx.pipeline.name).await;
                        }
                        return;
                    }
                    next = rx.recv(), if open => match next {
                        Some(j) => queue.push_back(j),
                        None => open = false,
                    },
                    _ = tick.tick() => {
                        let _ = job.msg.ack.in_progress().await;
                        for j in queue.iter() {
                            let _ = j.msg.ack.in_progress().await;
                        }
                    }
                }
            }
        }
        let seq = job.msg.seq;
        if fenced || job.msg.ack.fenced() {
            tracing::debug!(seq, "lease lost: left to the new holder");
            done(seq);
            // The queued messages of the same lease go the same way.
            queue.retain(|j| {
                let keep = !j.msg.ack.fenced();
                if !keep {
                    done(j.msg.seq);
                }
                keep
            });
            continue;
        }
        job.ctx
            .metrics
            .ack_latency
            .record(job.received.elapsed().as_secs_f64());
        job.msg.ack.ack(seq);
        done(seq);
    }
}
