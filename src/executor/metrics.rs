//! Per-pipeline metrics. Handles are registered once per pipeline (or per
//! label value, on first use) so the per-message path only bumps atomics.

use metrics::{Counter, Histogram, counter, histogram};

use crate::metric_handles::Handles;

pub struct PipelineMetrics {
    pub received: Counter,
    pub skipped: Counter,
    /// Redelivered changes not sent because a newer one was applied.
    pub stale: Counter,
    pub retries: Counter,
    /// Records of an account at its limit handed back for later.
    pub parked: Counter,
    pub ack_latency: Histogram,
    /// By action and HTTP status (none for a publish).
    sent: Handles<(&'static str, Option<u16>), Counter>,
    /// By dead-letter kind.
    dead_letters: Handles<&'static str, Counter>,
}

impl PipelineMetrics {
    pub fn new(pipeline: &str) -> Self {
        let p = pipeline.to_string();
        let (sent_p, dead_p) = (p.clone(), p.clone());
        PipelineMetrics {
            received: counter!("syncflow_pipeline_received_total", "pipeline" => p.clone()),
            skipped: counter!("syncflow_pipeline_skipped_total", "pipeline" => p.clone()),
            stale: counter!("syncflow_pipeline_stale_total", "pipeline" => p.clone()),
            retries: counter!("syncflow_pipeline_retries_total", "pipeline" => p.clone()),
            parked: counter!("syncflow_pipeline_parked_total", "pipeline" => p.clone()),
            ack_latency: histogram!("syncflow_pipeline_ack_latency_seconds", "pipeline" => p),
            sent: Handles::new(move |&(action, status): &(&'static str, Option<u16>)| {
                let status = status.map_or_else(|| "published".to_string(), |s| s.to_string());
                counter!(
                    "syncflow_pipeline_sent_total",
                    "pipeline" => sent_p.clone(),
                    "action" => action,
                    "status" => status
                )
            }),
            dead_letters: Handles::new(move |&kind: &&'static str| {
                counter!(
                    "syncflow_pipeline_dead_letters_total",
                    "pipeline" => dead_p.clone(),
                    "kind" => kind
                )
            }),
        }
    }

    pub fn sent(&self, action: &'static str, status: Option<u16>) {
        self.sent.get((action, status)).increment(1);
    }

    /// A delivery that took `attempts` tries: all but the first were retries.
    pub fn retried(&self, attempts: u32) {
        self.retries
            .increment(u64::from(attempts.saturating_sub(1)));
    }

    pub fn dead_lettered(&self, kind: &'static str) {
        self.dead_letters.get(kind).increment(1);
    }
}
