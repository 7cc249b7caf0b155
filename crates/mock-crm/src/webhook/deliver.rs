//! The delivery task: takes batches off the queue and posts each on a task
//! of its own, with retries, as HubSpot does (so a batch being retried is
//! overtaken by later ones, and events arrive out of order).

use std::sync::Arc;
use std::time::Duration;

use rand::seq::SliceRandom;
use reqwest::header::CONTENT_TYPE;
use tokio::task::JoinSet;
use tokio::time::{Instant, timeout_at};

use super::config::MAX_RETRY_BACKOFF;
use super::sign::signature_v3;
use super::{Batch, Target, Webhooks};
use crate::records::unix_millis;

pub(super) const SIGNATURE_HEADER: &str = "X-HubSpot-Signature-v3";
pub(super) const TIMESTAMP_HEADER: &str = "X-HubSpot-Request-Timestamp";

pub(super) async fn run(webhooks: Arc<Webhooks>) {
    // Owned here, so aborting this task aborts the deliveries in flight too.
    let mut deliveries = JoinSet::new();
    loop {
        let target = wait_for_events(&webhooks).await;
        fill_batch(&webhooks, &target).await;
        while deliveries.try_join_next().is_some() {}
        while deliveries.len() >= target.config.max_concurrent {
            deliveries.join_next().await;
        }
        // The queue may have been reset or the target changed meanwhile.
        if let Some(batch) = webhooks.take_batch() {
            deliveries.spawn(deliver(webhooks.clone(), batch));
        }
    }
}

async fn wait_for_events(webhooks: &Webhooks) -> Arc<Target> {
    loop {
        if let Some(target) = webhooks.ready() {
            return target;
        }
        // `notify_one` keeps a permit when nobody waits: no wake-up is lost
        // between the check above and this wait.
        webhooks.wake.notified().await;
    }
}

/// Waits until a whole batch is queued or `max_wait` has passed.
async fn fill_batch(webhooks: &Webhooks, target: &Target) {
    let deadline = Instant::now() + target.config.max_wait;
    while webhooks.queued() < target.config.max_batch {
        if timeout_at(deadline, webhooks.wake.notified())
            .await
            .is_err()
        {
            return;
        }
    }
}

/// Posts `batch` until the receiver accepts it or the attempts run out.
async fn deliver(webhooks: Arc<Webhooks>, batch: Batch) {
    let Batch {
        target,
        mut events,
        generation,
    } = batch;
    let config = &target.config;
    if config.reorder {
        events.shuffle(&mut rand::rng());
    }
    let count = events.len() as u64;
    let mut backoff = config.retry_backoff;
    for attempt in 0..config.max_attempts {
        for event in &mut events {
            event.attempt_number = attempt;
        }
        let body = serde_json::to_vec(&events).expect("events serialize");
        let accepted = post(&webhooks, &target, &body, generation).await;
        if accepted && !roll(config.drop_rate) {
            let duplicated = roll(config.duplicate_rate);
            if duplicated {
                // Whatever the receiver answers, a duplicate is not retried.
                post(&webhooks, &target, &body, generation).await;
            }
            webhooks.count(generation, |stats| {
                stats.events_delivered += count;
                stats.batches_sent += 1;
                stats.duplicates_sent += u64::from(duplicated);
            });
            return;
        }
        if attempt + 1 < config.max_attempts {
            webhooks.count(generation, |stats| stats.retries += 1);
            tokio::time::sleep(backoff).await;
            backoff = next_backoff(backoff, config.retry_backoff);
        }
    }
    tracing::warn!(
        url = %target.url,
        events = count,
        attempts = config.max_attempts,
        "webhook batch given up"
    );
    webhooks.count(generation, |stats| stats.given_up += count);
}

/// One signed POST (a new timestamp each time); true when answered 2xx.
async fn post(webhooks: &Webhooks, target: &Target, body: &[u8], generation: u64) -> bool {
    webhooks.count(generation, |stats| stats.requests += 1);
    let timestamp = unix_millis();
    let signature = signature_v3(
        &target.config.secret,
        "POST",
        target.url.as_str(),
        body,
        timestamp,
    );
    let sent = webhooks
        .client
        .post(target.url.clone())
        .header(CONTENT_TYPE, "application/json")
        .header(TIMESTAMP_HEADER, timestamp)
        .header(SIGNATURE_HEADER, signature)
        .body(body.to_vec())
        .timeout(target.config.timeout)
        .send()
        .await;
    match sent {
        Ok(response) => response.status().is_success(),
        Err(e) => {
            tracing::debug!(url = %target.url, error = %e, "webhook attempt failed");
            false
        }
    }
}

/// Doubles, up to [`MAX_RETRY_BACKOFF`] or the first backoff when that is larger.
fn next_backoff(current: Duration, first: Duration) -> Duration {
    (current * 2).min(MAX_RETRY_BACKOFF.max(first))
}

fn roll(probability: f64) -> bool {
    probability > 0.0 && rand::random::<f64>() < probability
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let first = Duration::from_millis(100);
        let mut backoff = first;
        let mut seen = Vec::new();
        for _ in 0..8 {
            seen.push(backoff.as_millis());
            backoff = next_backoff(backoff, first);
        }
        assert_eq!(seen, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        let long = Duration::from_secs(8);
        assert_eq!(next_backoff(long, long), long);
    }

    #[test]
    fn rolls_of_zero_and_one_are_certain() {
        assert!((0..100).all(|_| !roll(0.0)));
        assert!((0..100).all(|_| roll(1.0)));
    }
}
