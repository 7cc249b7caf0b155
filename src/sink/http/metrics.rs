//! A provider's request metrics. Handles without a status are registered
//! once per sink, so an attempt only bumps atomics for them.

use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};

use crate::metric_handles::Handles;

/// What an attempt came to: the `status` label of the request metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum AttemptLabel {
    Status(u16),
    /// No response: `timeout`, `connect` or `network`.
    Transport(&'static str),
}

pub(super) struct ProviderMetrics {
    /// Request count and duration by attempt label.
    requests: Handles<AttemptLabel, (Counter, Histogram)>,
    pub in_flight: Gauge,
    pub retries: Counter,
    /// Requests whose attempts ran out while the provider served nobody:
    /// they waited for it instead of becoming dead letters.
    pub outage_waits: Counter,
    pub breaker_open: Gauge,
    pub limiter_wait: Histogram,
    /// Records per batch request sent.
    pub batch_records: Histogram,
    /// Records a batch's answer refused on their own (every refusal, the
    /// ones retried in a later batch included).
    pub batch_refused: Counter,
    /// Attempts that found their quota spent and waited for it to reset.
    pub quota_waits: Counter,
}

impl ProviderMetrics {
    pub fn new(provider: &str) -> Self {
        let p = provider.to_string();
        ProviderMetrics {
            in_flight: gauge!("syncflow_provider_in_flight", "provider" => p.clone()),
            retries: counter!("syncflow_provider_retries_total", "provider" => p.clone()),
            outage_waits: counter!("syncflow_provider_outage_waits_total", "provider" => p.clone()),
            breaker_open: gauge!("syncflow_provider_breaker_open", "provider" => p.clone()),
            limiter_wait: histogram!("syncflow_provider_limiter_wait_seconds", "provider" => p.clone()),
            batch_records: histogram!("syncflow_provider_batch_records", "provider" => p.clone()),
            batch_refused: counter!("syncflow_provider_batch_refused_records_total", "provider" => p.clone()),
            quota_waits: counter!("syncflow_provider_quota_waits_total", "provider" => p.clone()),
            requests: Handles::new(move |label: &AttemptLabel| {
                let status = match label {
                    AttemptLabel::Status(code) => code.to_string(),
                    AttemptLabel::Transport(kind) => kind.to_string(),
                };
                let labels = [("provider", p.clone()), ("status", status)];
                (
                    counter!("syncflow_provider_requests_total", &labels),
                    histogram!("syncflow_provider_request_seconds", &labels),
                )
            }),
        }
    }

    /// One attempt's outcome: an HTTP status, or `timeout` / `connect` /
    /// `network` when no response came back.
    pub fn attempt(&self, label: AttemptLabel, elapsed: Duration) {
        let (count, seconds) = self.requests.get(label);
        count.increment(1);
        seconds.record(elapsed);
    }
}
