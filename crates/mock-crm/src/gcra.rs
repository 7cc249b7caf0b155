//! The server side of a rate limit: GCRA, exact and one timestamp of state.

use std::time::{Duration, Instant};

use super::RateLimit;

/// Admits requests at `limit`; the caller serialises access (the API's lock).
pub(super) struct Gcra {
    limit: RateLimit,
    /// Steady spacing of requests: `per / requests`.
    interval: Duration,
    /// How far ahead of `now` the schedule may run: `burst - 1` intervals,
    /// so `burst` requests pass back to back from idle.
    tolerance: Duration,
    /// Theoretical arrival time of the next request; `None` = idle from the start.
    tat: Option<Instant>,
}

impl Gcra {
    /// `limit` must be validated (no zero field).
    pub(super) fn new(limit: RateLimit) -> Self {
        let interval = limit.per / limit.requests;
        Gcra {
            limit,
            interval,
            tolerance: interval * (limit.burst - 1),
            tat: None,
        }
    }

    pub(super) fn limit(&self) -> &RateLimit {
        &self.limit
    }

    /// Admits a request arriving at `now`, or says how long until one would be.
    pub(super) fn acquire(&mut self, now: Instant) -> Result<(), Duration> {
        let tat = self.tat.map_or(now, |tat| tat.max(now));
        let ahead = tat - now;
        if ahead > self.tolerance {
            return Err(ahead - self.tolerance);
        }
        self.tat = Some(tat + self.interval);
        Ok(())
    }

    /// Forgets past requests: the next ones see an idle limit.
    pub(super) fn reset(&mut self) {
        self.tat = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gcra(requests: u32, per_ms: u64, burst: u32) -> Gcra {
        Gcra::new(RateLimit {
            requests,
            per: Duration::from_millis(per_ms),
            burst,
        })
    }

    #[test]
    fn burst_passes_back_to_back_then_one_per_interval() {
        let mut limiter = gcra(10, 1000, 3);
        let start = Instant::now();
        for _ in 0..3 {
            assert_eq!(limiter.acquire(start), Ok(()));
        }
        assert_eq!(limiter.acquire(start), Err(Duration::from_millis(100)));
        let later = start + Duration::from_millis(100);
        assert_eq!(limiter.acquire(later), Ok(()));
        assert_eq!(limiter.acquire(later), Err(Duration::from_millis(100)));
    }

    #[test]
    fn steady_rate_at_the_limit_is_never_refused() {
        let mut limiter = gcra(100, 10_000, 1);
        let start = Instant::now();
        for i in 0..1_000 {
            let now = start + Duration::from_millis(100 * i);
            assert_eq!(limiter.acquire(now), Ok(()), "request {i}");
        }
    }

    #[test]
    fn refused_requests_do_not_use_capacity() {
        let mut limiter = gcra(1, 1000, 1);
        let start = Instant::now();
        assert_eq!(limiter.acquire(start), Ok(()));
        for _ in 0..5 {
            assert!(limiter.acquire(start).is_err());
        }
        assert_eq!(limiter.acquire(start + Duration::from_secs(1)), Ok(()));
    }

    #[test]
    fn reset_makes_it_idle() {
        let mut limiter = gcra(1, 1000, 1);
        let start = Instant::now();
        assert_eq!(limiter.acquire(start), Ok(()));
        limiter.reset();
        assert_eq!(limiter.acquire(start), Ok(()));
    }
}
