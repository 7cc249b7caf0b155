//! Acks leave through one task per pipeline, in bursts: an ack waits up to
//! [`GATHER`] for others so they share one write to NATS. Only the ack's
//! own delivery is delayed, never a record (docs/acks-and-order.md).

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use async_nats::jetstream::message::Acker;

/// Acks sent together at most.
const BURST: usize = 256;
/// How long an ack waits for others to share its write. It delays only the
/// ack's arrival at the server, never a record.
const GATHER: Duration = Duration::from_millis(1);

/// Where lanes hand their settled messages' acks.
#[derive(Clone)]
pub struct Acks {
    tx: mpsc::UnboundedSender<(u64, Acker)>,
}

impl Acks {
    /// Starts the pipeline's ack task; it ends once every `Acks` is dropped
    /// and every ack handed to it is sent.
    pub fn start(pipeline: String) -> (Acks, JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Acks { tx }, tokio::spawn(send_all(pipeline, rx)))
    }

    /// Acks the message with stream sequence `seq`.
    pub fn ack(&self, seq: u64, handle: Acker) {
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

async fn send_all(pipeline: String, mut rx: mpsc::UnboundedReceiver<(u64, Acker)>) {
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
