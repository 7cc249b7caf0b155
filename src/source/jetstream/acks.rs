//! Acks leave through one task per pipeline, in bursts: an ack waits up to
//! [`GATHER`] for others so they share one write to NATS. Only the ack's
//! own delivery is delayed, never a record (docs/acks-and-order.md).

use std::sync::Arc;
use std::time::Duration;

use async_nats::Subject;
use async_nats::jetstream::AckKind;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// An ack: JetStream takes an empty reply as one, as async-nats's
/// `Acker::ack` sends it (`+ACK` is four bytes more per message).
const EMPTY_ACK: bytes::Bytes = bytes::Bytes::new();

/// Acks sent together at most.
const BURST: usize = 256;
/// How long an ack waits for others to share its write. It delays only the
/// ack's arrival at the server, never a record.
const GATHER: Duration = Duration::from_millis(1);

/// Where lanes hand their settled messages' acks. Every message holds one:
/// a clone is one reference count.
#[derive(Clone)]
pub struct Acks(Arc<Shared>);

struct Shared {
    tx: mpsc::UnboundedSender<(u64, Subject)>,
    /// For a consumer held by lease (a fleet's partition or splitter):
    /// true once the lease is lost. From then on its messages are the new
    /// holder's, and an ack from here would reach the new holder's consumer
    /// (same name) for a message it may not have handled yet.
    fence: Option<watch::Receiver<bool>>,
    /// What acks, naks and progress reports are published with: a
    /// message's reply subject is all it needs.
    client: async_nats::Client,
}

impl Acks {
    /// Starts the pipeline's ack task; it ends once every `Acks` is dropped
    /// and every ack handed to it is sent.
    pub fn start(pipeline: String, client: async_nats::Client) -> (Acks, JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(send_all(pipeline, client.clone(), rx));
        let shared = Shared {
            tx,
            fence: None,
            client,
        };
        (Acks(Arc::new(shared)), task)
    }

    /// Fenced by `fence` (see [`Acks::fenced`]); before any message holds
    /// these acks.
    pub fn with_fence(self, fence: watch::Receiver<bool>) -> Self {
        let shared = Shared {
            tx: self.0.tx.clone(),
            fence: Some(fence),
            client: self.0.client.clone(),
        };
        Acks(Arc::new(shared))
    }

    /// Whether the lease this source pulled under is lost.
    pub fn fenced(&self) -> bool {
        self.0.fence.as_ref().is_some_and(|f| *f.borrow())
    }

    /// Resolves once the lease is lost; never for a source without one.
    pub async fn wait_fenced(&self) {
        match &self.0.fence {
            Some(fence) => {
                let mut fence = fence.clone();
                if fence.wait_for(|f| *f).await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
            None => std::future::pending().await,
        }
    }

    /// Acks the message with stream sequence `seq` and reply subject
    /// `reply`; nothing once fenced.
    pub fn ack(&self, seq: u64, reply: Subject) {
        if self.fenced() {
            tracing::debug!(seq, "lease lost: not acked, the new holder has it");
            return;
        }
        if let Err(mpsc::error::SendError((seq, reply))) = self.0.tx.send((seq, reply)) {
            // Unreachable while lanes run (the task outlives them); if it
            // happens, ack in place rather than lose the ack.
            let client = self.0.client.clone();
            tokio::spawn(async move {
                let _ = client.publish(reply, EMPTY_ACK).await;
                tracing::debug!(seq, "acked in place");
            });
        }
    }

    /// Sends `kind` (a nak, a progress report) for the message with reply
    /// subject `reply` at once, not gathered with the acks.
    pub async fn send_now(
        &self,
        reply: Subject,
        kind: AckKind,
    ) -> Result<(), async_nats::PublishError> {
        self.0.client.publish(reply, kind.into()).await
    }
}

async fn send_all(
    pipeline: String,
    client: async_nats::Client,
    mut rx: mpsc::UnboundedReceiver<(u64, Subject)>,
) {
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
        for (seq, reply) in burst.drain(..) {
            if let Err(e) = client.publish(reply, EMPTY_ACK).await {
                // The message will be redelivered; its idempotency key makes
                // the second delivery harmless.
                tracing::warn!(pipeline = %pipeline, seq, error = %e, "ack failed");
            }
        }
    }
}
