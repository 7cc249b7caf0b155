//! Keeps per-key order across a restart.
//!
//! When a runner binds its consumer, messages the consumer delivered earlier
//! may still be unacked: held by a process that was killed (JetStream
//! redelivers them once their `ack_wait` runs out), handed back by a drain,
//! or held by another instance. Newer messages are delivered at once, so a
//! change published while syncflow was down would overtake the change it
//! held when it died: an update would reach the provider before the create
//! it depends on.
//!
//! So at bind time the runner notes the last stream sequence the consumer
//! had delivered (the boundary) and, while anything up to it is unacked,
//! parks every newer message it pulls (telling JetStream they are in
//! progress) and dispatches only the older, redelivered ones. Once the
//! consumer's ack floor reaches the boundary, the parked messages go on in
//! stream order. After a clean stop nothing is pending and nothing waits.

use std::collections::VecDeque;
use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use tokio::time::Instant;

use crate::source::SourceMessage;

/// How often the ack floor is read while messages are parked: every check
/// is one request to the server, every interval capacity another instance
/// may leave unused after it settles the earlier messages.
const CHECK_EVERY: Duration = Duration::from_millis(100);

pub struct Recovery {
    /// Delivered before this bind and, at the last look, not all acked.
    boundary: Option<u64>,
    parked: VecDeque<SourceMessage>,
    last_check: Instant,
    last_progress: Instant,
}

impl Recovery {
    /// Reads where the consumer stands. If its state cannot be read, it
    /// assumes nothing is pending (the consumer was just bound, so a failure
    /// here is the connection's, and the next pull will say so).
    pub async fn at_bind(consumer: &mut PullConsumer, pipeline: &str) -> Self {
        let now = Instant::now();
        let boundary = match consumer.info().await {
            Ok(info) if info.num_ack_pending > 0 => {
                tracing::info!(
                    pipeline,
                    unacked = info.num_ack_pending,
                    up_to_seq = info.delivered.stream_sequence,
                    "messages delivered before this start are not acked yet: newer ones wait until they are"
                );
                Some(info.delivered.stream_sequence)
            }
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(pipeline, error = %e, "cannot read the consumer's state");
                None
            }
        };
        Recovery {
            boundary,
            parked: VecDeque::new(),
            last_check: now,
            last_progress: now,
        }
    }

    /// Whether messages are being held back.
    pub fn is_waiting(&self) -> bool {
        self.boundary.is_some()
    }

    /// Takes `msg` if it must wait; gives it back if it may go on now.
    pub fn admit(&mut self, msg: SourceMessage) -> Option<SourceMessage> {
        match self.boundary {
            Some(boundary) if msg.seq > boundary => {
                // A redelivery of a parked message is the same message.
                if !self.parked.iter().any(|p| p.seq == msg.seq) {
                    self.parked.push_back(msg);
                }
                None
            }
            _ => Some(msg),
        }
    }

    /// Tells JetStream the parked messages are still being worked on, at
    /// most every `progress_every`. Cheap to call often.
    pub async fn keep_alive(&mut self, progress_every: Duration) {
        if self.boundary.is_none() || self.last_progress.elapsed() < progress_every {
            return;
        }
        self.last_progress = Instant::now();
        for msg in &self.parked {
            let _ = msg.ack.in_progress().await;
        }
    }

    /// Once everything up to the boundary is acked, returns the parked
    /// messages in stream order.
    ///
    /// `between_pulls`: no delivery is in flight to this runner, so its
    /// parked messages are all the consumer's unacked ones it holds, and
    /// "unacked = parked" means every earlier message is settled. (The ack
    /// floor says so too, eventually; nats-server 2.9 moves it past a
    /// redelivered message only at its next `ack_wait` check.) During a pull
    /// only the ack floor counts; it is what releases a runner promptly when
    /// the earlier messages were another instance's, acked as usual, and this
    /// runner's pull waits for messages that are all taken.
    pub async fn release(
        &mut self,
        consumer: &mut PullConsumer,
        pipeline: &str,
        between_pulls: bool,
    ) -> Vec<SourceMessage> {
        let Some(boundary) = self.boundary else {
            return Vec::new();
        };
        if self.last_check.elapsed() < CHECK_EVERY {
            return Vec::new();
        }
        self.last_check = Instant::now();
        match consumer.info().await {
            Ok(info)
                if info.ack_floor.stream_sequence >= boundary
                    || (between_pulls && info.num_ack_pending <= self.parked.len()) =>
            {
                tracing::info!(
                    pipeline,
                    released = self.parked.len(),
                    "earlier messages settled: newer ones go on"
                );
                self.boundary = None;
                self.parked.drain(..).collect()
            }
            Ok(_) => Vec::new(),
            Err(e) => {
                tracing::warn!(pipeline, error = %e, "cannot read the consumer's state");
                Vec::new()
            }
        }
    }

    /// The parked messages, to hand back when the runner stops.
    pub fn take_parked(&mut self) -> VecDeque<SourceMessage> {
        std::mem::take(&mut self.parked)
    }
}
