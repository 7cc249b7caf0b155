//! Waiting out a failure that is nobody's fault but the moment's (NATS
//! briefly away) for a step a record cannot skip: an id map write, a
//! dead-letter publish.

use std::future::Future;
use std::time::Duration;

/// Runs `op` until it succeeds, backing off from 100 ms to 5 s between
/// tries and logging each failure. `what` names the step in the log.
pub async fn retry_until_ok<T, E, F, Fut>(pipeline: &str, what: &'static str, mut op: F) -> T
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut backoff = Duration::from_millis(100);
    loop {
        match op().await {
            Ok(v) => return v,
            Err(e) => {
                tracing::warn!(pipeline, what, error = %e, retry_in_ms = backoff.as_millis() as u64, "transient failure, retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}
