//! Failures that are nobody's fault but the moment's (NATS briefly away, a
//! stopped internal task) in a step a record cannot skip: an id map write,
//! a dead-letter publish, a publish to a subject target. The record waits
//! and the step is tried again; it is never dead-lettered for it. While any
//! of a pipeline's records waits so, the pipeline says so: `/readyz` names
//! it as not ready, `syncflow_pipeline_internal_errors_total{step}` counts
//! the failures, and a (sampled) warning names the step.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use metrics::Counter;

use crate::metric_handles::Handles;
use crate::readiness::Readiness;
use crate::sampled::Sampled;

/// A pipeline's trouble with steps that must succeed.
pub struct Trouble {
    pipeline: String,
    readiness: Readiness,
    /// Records waiting on a failed step right now.
    waiting: AtomicUsize,
    failures: Handles<&'static str, Counter>,
    warn: Sampled,
}

impl std::fmt::Debug for Trouble {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trouble")
            .field("pipeline", &self.pipeline)
            .field("waiting", &self.waiting.load(Ordering::Relaxed))
            .finish()
    }
}

impl Trouble {
    pub fn new(pipeline: &str, readiness: Readiness) -> Self {
        let name = pipeline.to_string();
        Trouble {
            pipeline: pipeline.to_string(),
            readiness,
            waiting: AtomicUsize::new(0),
            failures: Handles::new(
                move |&step: &&'static str| metrics::counter!("syncflow_pipeline_internal_errors_total", "pipeline" => name.clone(), "step" => step),
            ),
            warn: Sampled::every(Duration::from_secs(1)),
        }
    }

    /// Runs `op` until it succeeds, backing off from 100 ms to 5 s between
    /// tries; `step` names it in the metric, the log and `/readyz`.
    pub async fn retry_until_ok<T, E, F, Fut>(&self, step: &'static str, mut op: F) -> T
    where
        E: std::fmt::Display,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let mut episode: Option<Episode<'_>> = None;
        let mut backoff = Duration::from_millis(100);
        loop {
            match op().await {
                Ok(v) => return v,
                Err(e) => {
                    episode.get_or_insert_with(|| Episode::start(self, step));
                    self.failures.get(step).increment(1);
                    self.warn.warn(|suppressed| {
                        tracing::warn!(pipeline = %self.pipeline, step, error = %e, retry_in_ms = backoff.as_millis() as u64, suppressed, "a step of a record failed; the record waits and the pipeline is not ready");
                    });
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

/// One record waiting on a failed step: the pipeline is not ready until
/// every such record has got through.
struct Episode<'a>(&'a Trouble);

impl<'a> Episode<'a> {
    fn start(trouble: &'a Trouble, step: &'static str) -> Self {
        trouble.waiting.fetch_add(1, Ordering::AcqRel);
        trouble.readiness.set_trouble(&trouble.pipeline, Some(step));
        Episode(trouble)
    }
}

impl Drop for Episode<'_> {
    fn drop(&mut self) {
        if self.0.waiting.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.readiness.set_trouble(&self.0.pipeline, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU32;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_failing_step_makes_the_pipeline_unready_until_it_succeeds() {
        let readiness = Readiness::default();
        readiness.set_ready("p", true);
        let trouble = Trouble::new("p", readiness.clone());
        let tries = AtomicU32::new(0);
        let step = trouble.retry_until_ok("dead-letter publish", || async {
            match tries.fetch_add(1, Ordering::Relaxed) {
                0..3 => Err("no responders"),
                _ => Ok(()),
            }
        });
        tokio::pin!(step);
        // Under way: the first tries failed and the pipeline says why.
        assert!(
            tokio::time::timeout(Duration::from_millis(250), &mut step)
                .await
                .is_err()
        );
        assert!(!readiness.is_ready());
        assert!(
            readiness.not_ready().contains("dead-letter publish"),
            "{}",
            readiness.not_ready()
        );
        step.await;
        assert_eq!(tries.load(Ordering::Relaxed), 4);
        assert!(readiness.is_ready());
    }
}
