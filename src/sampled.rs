//! Sampled log lines: a warning repeated for every record (a retry, a
//! provider asking to wait) is written at most once per period, with how
//! many were left out since the last one.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

pub struct Sampled {
    period: Duration,
    state: Mutex<(Option<Instant>, u64)>,
}

impl Sampled {
    pub fn every(period: Duration) -> Self {
        Sampled {
            period,
            state: Mutex::new((None, 0)),
        }
    }

    /// Calls `log` with the number of lines left out since the last one,
    /// unless one was written less than a period ago.
    pub fn warn(&self, log: impl FnOnce(u64)) {
        let now = Instant::now();
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (last, suppressed) = &mut *state;
        if last.is_some_and(|at| now < at + self.period) {
            *suppressed += 1;
            return;
        }
        let left_out = std::mem::take(suppressed);
        *last = Some(now);
        drop(state);
        log(left_out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn one_line_per_period_with_the_count_of_the_rest() {
        let sampled = Sampled::every(Duration::from_secs(1));
        let mut written = Vec::new();
        for _ in 0..5 {
            sampled.warn(|n| written.push(n));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        sampled.warn(|n| written.push(n));
        assert_eq!(written, [0, 4]);
    }
}
