//! Acks leave through one task per pipeline, in bursts: an ack waits up to
//! [`GATHER`] for others so they share one write to NATS. Only the ack's
//! own delivery is delayed, never a record (docs/acks-and-order.md).

use std::time::Duration;

use tokio::sync::{mpsc, watch};
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
    /// For a consumer held by lease (a fleet's partition or splitter):
    /// true once the lease is lost. From then on its messages are the new
    /// holder's, and an ack from here would reach the new holder's consumer
    /// (same name) for a message it may not have handled yet.
    fence: Option<watch::Receiver<bool>>,
}

impl Acks {
    /// Starts the pipeline's ack task; it ends once every `Acks` is dropped
    /// and every ack handed to it is sent.
    pub fn start(pipeline: String) -> (Acks, JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            Acks { tx, fence: None },
            tokio::spawn(send_all(pipeline, rx)),
        )
    }

    /// Fenced by `fence` (see [`Acks::fenced`]).
    pub fn with_fence(mut self, fence: watch::Receiver<bool>) -> Self {
        self.fence = Some(fence);
        self
    }

    /// Whether the lease this source pulled under is lost.
    pub fn fenced(&self) -> bool {
        self.fence.as_ref().is_some_and(|f| *f.borrow())
    }

    /// Resolves once the lease is lost; never for a source without one.
    pub async fn wait_fenced(&self) {
        match &self.fence {
            Some(fence) => {
                let mut fence = fence.clone();
                if fence.wait_for(|f| *f).await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
            None => std::future::pending().await,
        }
    }

    /// Acks the message with stream sequence `seq`; nothing once fenced.
    pub fn ack(&self, seq: u64, handle: Acker) {
        if self.fenced() {
            tracing::debug!(seq, "lease lost: not acked, the new holder has it");
            return;
        }
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
