//! A pipeline's backlog, every few seconds, for `/metrics` and the status
//! page: what its consumer has not delivered yet (`pending`), what is
//! delivered and not acked (`ack_pending`, by every instance sharing the
//! consumer), and how long this instance has held its oldest unacked record.

use std::time::Duration;

use async_nats::jetstream;

use super::Dispatched;
use crate::config::model::NatsSourceConfig;

const EVERY: Duration = Duration::from_secs(5);

/// Runs until aborted with the runner.
pub(super) async fn report(
    js: jetstream::Context,
    source: NatsSourceConfig,
    pipeline: String,
    dispatched: Dispatched,
) {
    let label = || pipeline.clone();
    let pending = metrics::gauge!("syncflow_pipeline_consumer_pending", "pipeline" => label());
    let ack_pending = metrics::gauge!("syncflow_pipeline_ack_pending", "pipeline" => label());
    let oldest = metrics::gauge!("syncflow_pipeline_oldest_unacked_seconds", "pipeline" => label());
    let durable = source.durable.clone().unwrap_or_else(|| pipeline.clone());
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        oldest.set(
            dispatched
                .oldest()
                .map_or(0.0, |t| t.elapsed().as_secs_f64()),
        );
        // Unavailable while NATS is away or before the first bind: the
        // last figures stay (the source reports not ready meanwhile).
        let info = async {
            let stream = js.get_stream(&source.stream).await.ok()?;
            let mut consumer: jetstream::consumer::PullConsumer =
                stream.get_consumer(&durable).await.ok()?;
            consumer
                .info()
                .await
                .ok()
                .map(|i| (i.num_pending, i.num_ack_pending))
        };
        if let Ok(Some((p, a))) = tokio::time::timeout(EVERY, info).await {
            pending.set(p as f64);
            ack_pending.set(a as f64);
        }
    }
}
