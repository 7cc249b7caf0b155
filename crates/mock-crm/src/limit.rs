//! The server side of a rate limit: GCRA (exact, one timestamp of state),
//! or a sliding window (a count over the last `per`, as HubSpot enforces
//! "100 requests per 10 seconds").

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::RateLimit;

/// Admits requests at `limit`; the caller serialises access (the API's lock).
pub(super) struct Limiter {
    limit: RateLimit,
    kind: Kind,
}

enum Kind {
    Gcra {
        /// Steady spacing of requests: `per / requests`.
        interval: Duration,
        /// How far ahead of `now` the schedule may run: `burst - 1`
        /// intervals, so `burst` requests pass back to back from idle.
        tolerance: Duration,
        /// Theoretical arrival time of the next request; `None` = idle.
        tat: Option<Instant>,
    },
    Window {
        /// Arrivals admitted within the last `per`, oldest first.
        admitted: VecDeque<Instant>,
    },
}

impl Limiter {
    /// `limit` must be validated (no zero field).
    pub(super) fn new(limit: RateLimit) -> Self {
        let kind = if limit.window {
            Kind::Window {
                admitted: VecDeque::with_capacity(limit.requests as usize),
            }
        } else {
            let interval = limit.per / limit.requests;
            Kind::Gcra {
                interval,
                tolerance: interval * (limit.burst - 1),
                tat: None,
            }
        };
        Limiter { limit, kind }
    }

    pub(super) fn limit(&self) -> &RateLimit {
        &self.limit
    }

    /// Admits a request arriving at `now`, or says how long until one would be.
    pub(super) fn acquire(&mut self, now: Instant) -> Result<(), Duration> {
        match &mut self.kind {
            Kind::Gcra {
                interval,
                tolerance,
                tat,
            } => {
                let next = tat.map_or(now, |tat| tat.max(now));
                let ahead = next - now;
                if ahead > *tolerance {
                    return Err(ahead - *tolerance);
                }
                *tat = Some(next + *interval);
                Ok(())
            }
            Kind::Window { admitted } => {
                let per = self.limit.per;
                while admitted.front().is_some_and(|&at| at + per <= now) {
                    admitted.pop_front();
                }
                if admitted.len() >= self.limit.requests as usize {
                    let oldest = *admitted.front().expect("full");
                    return Err(oldest + per - now);
                }
                admitted.push_back(now);
                Ok(())
            }
        }
    }

    /// For a sliding window: its size, the requests left in it at `now`,
    /// and its length.
    pub(super) fn window_left(&mut self, now: Instant) -> Option<(u32, u32, Duration)> {
        let per = self.limit.per;
        match &mut self.kind {
            Kind::Window { admitted } => {
                while admitted.front().is_some_and(|&at| at + per <= now) {
                    admitted.pop_front();
                }
                let max = self.limit.requests;
                Some((max, max.saturating_sub(admitted.len() as u32), per))
            }
            Kind::Gcra { .. } => None,
        }
    }

    /// Forgets past requests: the next ones see an idle limit.
    pub(super) fn reset(&mut self) {
        match &mut self.kind {
            Kind::Gcra { tat, .. } => *tat = None,
            Kind::Window { admitted } => admitted.clear(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gcra(requests: u32, per_ms: u64, burst: u32) -> Limiter {
        Limiter::new(RateLimit::gcra(
            requests,
            Duration::from_millis(per_ms),
            burst,
        ))
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

    #[test]
    fn a_window_admits_requests_per_window_however_they_bunch() {
        let mut limiter = Limiter::new(RateLimit::window(3, Duration::from_secs(1)));
        let start = Instant::now();
        let ms = Duration::from_millis;
        assert_eq!(limiter.acquire(start), Ok(()));
        assert_eq!(limiter.acquire(start + ms(10)), Ok(()));
        assert_eq!(limiter.acquire(start + ms(20)), Ok(()));
        // The fourth within a second of the first waits for the first to age out.
        assert_eq!(limiter.acquire(start + ms(500)), Err(ms(500)));
        assert_eq!(limiter.acquire(start + ms(1000)), Ok(()));
        assert_eq!(limiter.acquire(start + ms(1005)), Err(ms(5)));
        assert_eq!(limiter.acquire(start + ms(1010)), Ok(()));
    }
}
