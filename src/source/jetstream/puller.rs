//! Pull requests, all answered on one subscription.
//!
//! async-nats's `batch()` makes an inbox and a subscription for each pull
//! and clones the JetStream context into every message it yields (an
//! allocation and a dozen reference counts a record, for an `Acker` that
//! only needs the reply subject). Here the consumer's pulls answer on one
//! inbox for as long as it is bound, and messages come as they are: their
//! acks go through the pipeline's own client (`acks.rs`).
//!
//! Every request answers on the same inbox, so messages arrive in the order
//! the consumer sends them, its stream order, even if requests overlap:
//! requests on subscriptions of their own could be read out of order, as
//! the server serves a consumer's waiting requests in turn.
//!
//! Stopping stays exact. The puller counts the messages asked for that the
//! server has neither sent nor given up: each message settles one, and a
//! request's end (408 when it expires, 409 when the server ends it) settles
//! what its `Nats-Pending-Messages` header says was left. At zero the server
//! holds no request of ours and sends nothing more to the inbox, so nothing
//! can wait out `ack_wait` in a subscription nobody reads.

use std::pin::Pin;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::PullConsumer, consumer::pull::BatchConfig};
use async_nats::{Message, StatusCode, Subject, Subscriber};
use futures::StreamExt;
use tokio::time::{Instant, Sleep};

use super::NatsSourceError;

/// How long one pull request waits on the server for messages. It bounds
/// how long a stop waits for the requests open to end, and costs one idle
/// request per second per pipeline.
pub const PULL_EXPIRES: Duration = Duration::from_secs(1);
/// How long after PULL_EXPIRES a request with no answer counts as lost.
const PULL_GRACE: Duration = Duration::from_millis(500);

/// The header in which the server says how many messages an ended request
/// was still owed.
const PENDING_MESSAGES: &str = "Nats-Pending-Messages";

pub struct Puller {
    consumer: PullConsumer,
    inbox: Subject,
    subscriber: Subscriber,
    durable: String,
    /// Messages asked for that the server has neither sent nor given up.
    pending: usize,
    /// Fires when the requests open should all have been answered: the last
    /// one's expiry plus a grace (earlier ones expire earlier). If it fires
    /// (the server restarted, the connection dropped and came back), the
    /// caller binds again and pulls from the server that is there now.
    lost: Pin<Box<Sleep>>,
}

impl Puller {
    /// Subscribes to the inbox every request of this consumer answers on.
    pub async fn new(
        js: &jetstream::Context,
        consumer: &PullConsumer,
        durable: &str,
    ) -> Result<Self, NatsSourceError> {
        let client = js.client();
        let inbox = Subject::from(client.new_inbox());
        let subscriber = client
            .subscribe(inbox.clone())
            .await
            .map_err(|e| pull_error(durable, &e))?;
        Ok(Puller {
            consumer: consumer.clone(),
            inbox,
            subscriber,
            durable: durable.to_string(),
            pending: 0,
            lost: Box::pin(tokio::time::sleep(Duration::ZERO)),
        })
    }

    /// Messages asked for and still to come. Zero: the server holds no
    /// request of ours.
    pub fn pending(&self) -> usize {
        self.pending
    }

    /// Asks for up to `count` more messages, delivered after those asked
    /// for before.
    pub async fn request(&mut self, count: usize) -> Result<(), NatsSourceError> {
        let batch = BatchConfig {
            batch: count,
            expires: Some(PULL_EXPIRES),
            ..Default::default()
        };
        self.consumer
            .request_batch(batch, self.inbox.clone())
            .await
            .map_err(|e| pull_error(&self.durable, &e))?;
        self.pending += count;
        self.lost
            .as_mut()
            .reset(Instant::now() + PULL_EXPIRES + PULL_GRACE);
        Ok(())
    }

    /// The next message, in stream order; `None` once nothing asked for is
    /// left to come. Cancel-safe: a message is counted only when returned.
    pub async fn next(&mut self) -> Option<Result<Message, NatsSourceError>> {
        while self.pending > 0 {
            // Biased: what has arrived is read before the timer is looked at.
            let message = tokio::select! {
                biased;
                message = self.subscriber.next() => message,
                _ = &mut self.lost => {
                    return Some(Err(pull_error(&self.durable, &"no answer to a pull request")));
                }
            };
            let Some(message) = message else {
                return Some(Err(pull_error(&self.durable, &"the subscription closed")));
            };
            match message.status {
                None | Some(StatusCode::OK) => {
                    self.pending -= 1;
                    return Some(Ok(message));
                }
                Some(StatusCode::IDLE_HEARTBEAT) => {}
                Some(StatusCode::TIMEOUT | StatusCode::REQUEST_TERMINATED)
                    if message.description.as_deref() != Some("Consumer Deleted") =>
                {
                    match owed(&message) {
                        Some(owed) => self.pending = self.pending.saturating_sub(owed),
                        // Without the count, what is still to come is not
                        // known: the caller binds again.
                        None => return Some(Err(status_error(&self.durable, &message))),
                    }
                }
                Some(_) => return Some(Err(status_error(&self.durable, &message))),
            }
        }
        None
    }
}

/// What an ended request was still owed, from its status message.
fn owed(message: &Message) -> Option<usize> {
    message
        .headers
        .as_ref()?
        .get(PENDING_MESSAGES)?
        .as_str()
        .parse()
        .ok()
}

fn pull_error(durable: &str, e: &dyn std::fmt::Display) -> NatsSourceError {
    NatsSourceError::Pull {
        durable: durable.to_string(),
        message: e.to_string(),
    }
}

fn status_error(durable: &str, message: &Message) -> NatsSourceError {
    let status = message.status.map_or(0, |s| s.as_u16());
    let description = message.description.as_deref().unwrap_or("");
    pull_error(durable, &format_args!("{status} {description}"))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use async_nats::jetstream::{self, consumer, stream};
    use syncflow_testkit::NatsServer;

    use super::*;

    async fn consumer_of(js: &jetstream::Context, messages: u32) -> PullConsumer {
        let stream = js
            .create_stream(stream::Config {
                name: "PULLS".into(),
                subjects: vec!["pulls.>".into()],
                ..Default::default()
            })
            .await
            .unwrap();
        for n in 1..=messages {
            js.publish("pulls.a", n.to_string().into())
                .await
                .unwrap()
                .await
                .unwrap();
        }
        stream
            .create_consumer(consumer::pull::Config {
                durable_name: Some("d".into()),
                ack_policy: consumer::AckPolicy::Explicit,
                ..Default::default()
            })
            .await
            .unwrap()
    }

    async fn next_payload(puller: &mut Puller) -> Option<String> {
        let next = tokio::time::timeout(Duration::from_secs(5), puller.next())
            .await
            .expect("the puller answers within a request's expiry");
        next.map(|m| String::from_utf8(m.unwrap().payload.to_vec()).unwrap())
    }

    /// Requests that overlap answer on the one inbox in stream order, and a
    /// request the stream cannot fill ends with the server's 408, whose
    /// count leaves nothing pending: the server holds no request of ours.
    #[tokio::test]
    async fn overlapping_requests_come_in_order_and_end_with_nothing_pending() {
        let nats = NatsServer::start().unwrap();
        let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
        let consumer = consumer_of(&js, 5).await;
        let mut puller = Puller::new(&js, &consumer, "d").await.unwrap();
        puller.request(3).await.unwrap();
        puller.request(3).await.unwrap();
        assert_eq!(puller.pending(), 6);
        let mut seen = Vec::new();
        for _ in 0..5 {
            seen.push(next_payload(&mut puller).await.expect("a message"));
        }
        assert_eq!(seen, ["1", "2", "3", "4", "5"]);
        assert_eq!(puller.pending(), 1);
        // The second request expires owing one: then nothing is open.
        assert_eq!(next_payload(&mut puller).await, None);
        assert_eq!(puller.pending(), 0);
        // A later request is served by the same inbox.
        js.publish("pulls.a", "6".into())
            .await
            .unwrap()
            .await
            .unwrap();
        puller.request(1).await.unwrap();
        assert_eq!(next_payload(&mut puller).await.as_deref(), Some("6"));
        assert_eq!(puller.pending(), 0);
        assert_eq!(next_payload(&mut puller).await, None);
    }

    /// A request nobody answers (the server went away with it) ends as an
    /// error soon after its expiry, so the source binds again.
    #[tokio::test]
    async fn a_request_left_unanswered_is_an_error() {
        let mut nats = NatsServer::start().unwrap();
        let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
        let consumer = consumer_of(&js, 0).await;
        let mut puller = Puller::new(&js, &consumer, "d").await.unwrap();
        puller.request(10).await.unwrap();
        js.client().flush().await.unwrap();
        nats.kill();
        let started = tokio::time::Instant::now();
        let next = tokio::time::timeout(Duration::from_secs(5), puller.next())
            .await
            .expect("an answer within expiry and grace");
        assert!(matches!(next, Some(Err(_))), "{next:?}");
        assert!(started.elapsed() >= PULL_EXPIRES, "{:?}", started.elapsed());
    }
}
