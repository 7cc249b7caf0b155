//! A provider-wide pause: a 429 or 503 with `Retry-After` says when the
//! provider will take requests again, for everyone. Every request of the
//! provider waits it out before its next attempt (rather than each lane
//! spending an attempt on the same wall), and no rate-limit cell is taken
//! meanwhile. A 429 to a request of an account (pipelines that name one)
//! pauses that account only: its quota, not the provider, ran out. So does
//! an answer saying no request is left in the provider's window.

use std::sync::Mutex;
use std::time::Duration;

use metrics::Counter;
use tokio::time::Instant;

pub(super) struct Pause {
    provider: String,
    account: Option<String>,
    until: Mutex<Option<Instant>>,
    pauses: Counter,
}

impl Pause {
    pub fn new(provider: &str, account: Option<&str>) -> Self {
        Pause {
            provider: provider.to_string(),
            account: account.map(str::to_string),
            until: Mutex::new(None),
            pauses: metrics::counter!("syncflow_provider_pauses_total", "provider" => provider.to_string()),
        }
    }

    /// No attempt of this provider starts within `wait` from now: a 429 or
    /// 503 with `Retry-After` (`status`).
    pub fn pause_for(&self, wait: Duration, status: u16) {
        self.pause(wait, |pause| match &pause.account {
            None => {
                tracing::info!(provider = %pause.provider, status, wait_ms = wait.as_millis() as u64, "provider asked to wait (Retry-After): pausing every request to it")
            }
            Some(account) => {
                tracing::info!(provider = %pause.provider, account, status, wait_ms = wait.as_millis() as u64, "provider asked to wait (Retry-After): pausing the account's requests")
            }
        });
    }

    /// No attempt starts within `wait` (the provider's window) from now:
    /// the provider said no request is left in its window
    /// (`rate_limit.remaining_header`), so the next would be refused.
    pub fn pause_for_window(&self, wait: Duration, header: &http::HeaderName) {
        self.pause(wait, |pause| {
            tracing::info!(provider = %pause.provider, account = pause.account.as_deref(), header = %header, wait_ms = wait.as_millis() as u64, "provider says no request is left in its window: waiting it out")
        });
    }

    fn pause(&self, wait: Duration, announce: impl FnOnce(&Self)) {
        let until = Instant::now() + wait;
        let mut current = self.until.lock().unwrap_or_else(|e| e.into_inner());
        if current.is_none_or(|t| t < until) {
            if current.is_none_or(|t| t <= Instant::now()) {
                self.pauses.increment(1);
                announce(self);
            }
            *current = Some(until);
        }
    }

    /// Whether a pause is on now.
    pub fn is_on(&self) -> bool {
        let until = *self.until.lock().unwrap_or_else(|e| e.into_inner());
        until.is_some_and(|until| until > Instant::now())
    }

    /// Waits until the provider takes requests again.
    pub async fn wait(&self) {
        loop {
            let until = *self.until.lock().unwrap_or_else(|e| e.into_inner());
            match until {
                Some(until) if until > Instant::now() => tokio::time::sleep_until(until).await,
                _ => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn everyone_waits_for_the_latest_pause() {
        let pause = Pause::new("p", None);
        let started = Instant::now();
        pause.wait().await;
        assert_eq!(started.elapsed(), Duration::ZERO);
        pause.pause_for(Duration::from_secs(2), 429);
        // A shorter Retry-After does not shorten the pause.
        pause.pause_for(Duration::from_secs(1), 503);
        pause.wait().await;
        assert_eq!(started.elapsed(), Duration::from_secs(2));
    }
}
