//! Acks leave through one task per pipeline, in bursts.
//!
//! A JetStream ack is a tiny publish. Sent by each lane the moment its
//! record is done, nearly every ack became its own write on the NATS socket
//! and its own read on the server (a profile of the throughput benchmark put
//! the client's writes at a fifth of syncflow's CPU, and nats-server spent
//! more per record than syncflow's own evaluation). Funnelled through one
//! task that hands every ack waiting to the client at once, they share
//! writes. An ack waits at most for the task's next turn: the promise (ack
//! only after delivery) is kept, only the ack's own delivery is batched.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::source::AckHandle;

/// Acks sent together at most.
const BURST: usize = 256;
/// How long an ack waits for others to share its write. It delays only the
/// ack's arrival at the server, never a record.
const GATHER: Duration = Duration::from_millis(1);

/// Where lanes hand their settled messages' acks.
#[derive(Clone)]
pub struct Acks {
    tx: mpsc::UnboundedSender<(u64, AckHandle)>,
}

impl Acks {
    /// Starts the pipeline's ack task; it ends once every `Acks` is dropped
    /// and every ack handed to it is sent.
    pub fn start(pipeline: String) -> (Acks, JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Acks { tx }, tokio::spawn(send_all(pipeline, rx)))
    }

    /// Acks the message with stream sequence `seq`.
    pub fn ack(&self, seq: u64, handle: AckHandle) {
        if let Err(mpsc::error::SendError((seq, handle))) = self.tx.send((seq, handle)) {
            // Unreachable while lanes run (the task outlives them); if it
            // happens, ack in place rather than lose the ack.
            tokio::spawn(async move {
                let _ = handle.ack().await;
                tracing::debug!(seq, "acked in place");
            });
        }
    }
}

async fn send_all(pipeline: String, mut rx: mpsc::UnboundedReceiver<(u64, AckHandle)>) {
    let mut burst = Vec::with_capacity(BURST);
    while rx.recv_many(&mut burst, BURST).await > 0 {
        if burst.len() < BURST {
            // Let the acks of the next millisecond join this write.
            tokio::time::sleep(GATHER).await;
            while burst.len() < BURST {
                match rx.try_recv() {
                    Ok(ack) => burst.push(ack),
                    Err(_) => break,
                }
            }
        }
        for (seq, handle) in burst.drain(..) {
            if let Err(e) = handle.ack().await {
                // The message will be redelivered; its idempotency key makes
                // the second delivery harmless.
                tracing::warn!(pipeline = %pipeline, seq, error = %e, "ack failed");
            }
        }
    }
}
