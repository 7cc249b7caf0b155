//! The JetStream source against a real nats-server.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use futures::StreamExt as _;
use syncflow_testkit::NatsServer;
use tokio::sync::watch;

use super::*;
use crate::config::duration::ConfigDuration;

/// A work-queue consumer that went past messages its stream still holds
/// (nats-server 2.9 leaves one so when it is made on a replica catching up
/// after a node died) is made again by its exclusive source: the skipped
/// messages come, in stream order and counted as redelivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exclusive_source_takes_again_a_consumer_that_skipped_messages() {
    let nats = NatsServer::start().unwrap();
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let parts = js
        .create_stream(stream::Config {
            name: "PARTS".into(),
            subjects: vec!["parts.>".into()],
            retention: stream::RetentionPolicy::WorkQueue,
            ..Default::default()
        })
        .await
        .unwrap();
    // Five messages on a subject the consumer does not read yet, then five
    // it reads and acks: its position is past the first five.
    for n in 1..=10 {
        let subject = if n <= 5 { "parts.later" } else { "parts.p0" };
        let ack = js.publish(subject, n.to_string().into()).await.unwrap();
        ack.await.unwrap();
    }
    let mut config = consumer::pull::Config {
        durable_name: Some("p0".into()),
        filter_subject: "parts.p0".into(),
        ack_policy: consumer::AckPolicy::Explicit,
        ..Default::default()
    };
    let first = parts.create_consumer(config.clone()).await.unwrap();
    let mut batch = first.fetch().max_messages(5).messages().await.unwrap();
    while let Some(msg) = batch.next().await {
        msg.unwrap().double_ack().await.unwrap();
    }
    // Widened, it now has five messages behind it it will never deliver:
    // what a consumer made on a lagging replica looks like.
    config.filter_subject = "parts.>".into();
    parts.update_consumer(config).await.unwrap();
    for n in 11..=12 {
        let ack = js.publish("parts.p0", n.to_string().into()).await.unwrap();
        ack.await.unwrap();
    }
    let config = NatsSourceConfig {
        stream: "PARTS".into(),
        subject: "parts.>".into(),
        durable: Some("p0".into()),
        batch: 16,
        max_ack_pending: 64,
        max_ack_pending_bytes: 1 << 20,
        ack_wait: ConfigDuration::from_secs(30),
    };
    let (_stop, stop_rx) = watch::channel(false);
    let mut source =
        JetStreamSource::new(js.clone(), config, "p0", Readiness::default(), stop_rx).taking_over();
    let mut seen = Vec::new();
    while seen.len() < 7 {
        let msg = tokio::time::timeout(Duration::from_secs(20), source.next())
            .await
            .unwrap_or_else(|_| panic!("messages 1 to 5 never came; seen {seen:?}"))
            .expect("the source goes on");
        seen.push((msg.seq, msg.delivered > 1));
        let seq = msg.seq;
        msg.ack.ack(seq);
    }
    // Once two checks saw 1 left behind, the consumer was made again and
    // 1 to 5 came in order, as redeliveries. (nats-server 2.9 does not
    // deliver 11 and 12 to the widened consumer either: they come after
    // the take-over too.)
    let skipped: Vec<_> = seen.iter().filter(|(seq, _)| *seq <= 5).collect();
    assert_eq!(
        skipped,
        [&(1, true), &(2, true), &(3, true), &(4, true), &(5, true)],
        "{seen:?}"
    );
    let newer: Vec<u64> = seen
        .iter()
        .map(|(seq, _)| *seq)
        .filter(|seq| *seq > 10)
        .collect();
    assert_eq!(newer, [11, 12], "{seen:?}");
}
