//! A provider-wide pause: a 429 or 503 with `Retry-After` says when the
//! provider will take requests again, for everyone. Every request of the
//! provider waits it out before its next attempt (rather than each lane
//! spending an attempt on the same wall), and no rate-limit cell is taken
//! meanwhile. A 429 to a request of an account (pipelines that name one)
//! pauses that account only: its quota, not the provider, ran out.

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

    /// No attempt of this provider starts within `wait` from now.
    pub fn pause_for(&self, wait: Duration, status: u16) {
        let until = Instant::now() + wait;
        let mut current = self.until.lock().unwrap_or_else(|e| e.into_inner());
        if current.is_none_or(|t| t < until) {
            if current.is_none_or(|t| t <= Instant::now()) {
                self.pauses.increment(1);
                match &self.account {
                    None => {
                        tracing::info!(provider = %self.provider, status, wait_ms = wait.as_millis() as u64, "provider asked to wait (Retry-After): pausing every request to it")
                    }
                    Some(account) => {
                        tracing::info!(provider = %self.provider, account, status, wait_ms = wait.as_millis() as u64, "provider asked to wait (Retry-After): pausing the account's requests")
                    }
                }
            }
            *current = Some(until);
        }
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
