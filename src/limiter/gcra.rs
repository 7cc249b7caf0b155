//! The GCRA parameters the fleet schedules with, and why leased cells spent
//! late never break the limit.
//!
//! The contract (module docs): taken at the moments they start, the fleet's
//! requests are a sequence that a GCRA with interval `T = per / requests` and
//! tolerance `tau = (b-1)·T` accepts in full, `b` the burst; that is what a
//! provider enforcing the same limit does. Equivalently, any closed window of
//! length `W` holds at most `⌊W/T⌋ + b` starts. Redis hands out cells at
//! conformance times `c` of a GCRA with interval `Ts ≥ T` and tolerance
//! `taus`; an instance starts cell `j` at some `s_j ∈ [c_j, c_j + L]`, `L`
//! the lateness budget (reply delay, timer granularity, queueing).
//!
//! Proof that this respects the contract when `L + taus ≤ b·Ts - T`:
//! GCRA gives, for cells `j < m` in grant order, `c_m ≥ c_j + (m-j)·Ts - taus`.
//! Take `n` cells starting inside a window `[a, a+W]`, first and last in
//! grant order `j` and `m`: `c_m - c_j ≤ s_m - (s_j - L) ≤ W + L`, and
//! `m - j ≥ n - 1`, so `W ≥ (n-1)·Ts - L - taus`. The contract asks for
//! `W ≥ (n-b)·T`, which holds for `n ≤ b` whatever `W`, and for `n ≥ b+1`
//! follows from `(n-1)·Ts - L - taus ≥ (n-b)·T`, i.e.
//! `L + taus ≤ (n-1)·Ts - (n-b)·T`; the right side grows with `n` (as
//! `Ts ≥ T`), so `n = b+1` is the binding case: `L + taus ≤ b·Ts - T`.
//!
//! So `L` and `taus` share the slack `b·Ts - T`, which is `tau` when
//! `Ts = T`: a GCRA lets `b` requests through at once and then one per `T`,
//! so a burst started `L` late followed by an on-time cell uses `L` of the
//! tolerance. (Sharing `b·T` instead, one interval more, let the fleet send
//! sequences the provider refuses: a burst of 1 at 50/s drew hundreds of
//! 429s from a mock CRM enforcing exactly that limit.) `L` takes as much of
//! the slack as it can use (up to [`MAX_LATENESS`]) and the burst tolerance
//! keeps the rest, so the fleet bursts less than the provider would allow and
//! never more. When the slack cannot hold even [`MIN_LATENESS`] (a burst of
//! 1, or a fast limit with a small burst), the interval is stretched instead
//! to `Ts = (L + T)/b`, which lowers the rate: sharing a limit that leaves no
//! room for lateness across machines cannot be done exactly. With a burst of
//! 1 (the default) the slack is nil and `L = T/20` (within the bounds): a
//! slow limit gives up 5% of its rate for a budget a slow reply fits in.
//!
//! The provider clocks a request when it arrives, not when it starts, and the
//! way there takes longer for some requests than for others (the network,
//! the provider's own queueing). What matters to the provider is how late a
//! request *arrives* relative to its cell, so `L` covers both: a cell may be
//! spent up to [`Schedule::spend`] late, and the rest of `L`
//! ([`PATH_SHARE`] of it) is kept for the spread of the way to the
//! provider. (With all of `L` spendable, a burst of 2 at 100/s drew a 429
//! now and then from a mock CRM on a busy machine: a cell started at the
//! end of its budget whose request then waited a few milliseconds more in
//! the mock's runtime.)

use std::time::Duration;

use super::RateLimitSpec;

/// Lateness every schedule tolerates at least: 2 ms to spend (a Redis round
/// trip plus the tokio timer's 1 ms granularity) and the path's fifth.
const MIN_LATENESS: Duration = Duration::from_micros(2500);
/// Lateness beyond which more budget would only shrink the burst: enough for
/// a slow round trip, and what a quiet instance's leases can stretch over.
const MAX_LATENESS: Duration = Duration::from_millis(25);
/// The part of the lateness budget kept for the spread of the way from a
/// request's start to the provider's clock (module docs): one fifth.
pub(crate) const PATH_SHARE: u32 = 5;

/// What the Redis script runs with (`interval_us`, `tolerance_us`: whole
/// microseconds on Redis's clock) and how late a leased cell may be spent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Schedule {
    pub interval_us: u64,
    pub tolerance_us: u64,
    pub lateness: Duration,
}

impl Schedule {
    pub fn new(spec: &RateLimitSpec) -> Self {
        let (requests, burst) = (u128::from(spec.requests), u128::from(spec.burst));
        let per_ns = spec.per.as_nanos();
        // Rounded up to whole microseconds: a longer interval is only ever slower.
        let mut interval_us = per_ns.div_ceil(requests).div_ceil(1000).max(1);
        // The slack `b·Ts - T`, rounded down (see the proof).
        let slack_us =
            (burst * interval_us * 1000 * requests).saturating_sub(per_ns) / requests / 1000;
        // With a burst of 1 the slack is nil: the lateness must come out of
        // the rate, and T/20 (at most 5% of it) absorbs a slow Redis reply.
        let lateness_us = slack_us
            .max(interval_us / 20)
            .clamp(MIN_LATENESS.as_micros(), MAX_LATENESS.as_micros());
        let tolerance_us = match slack_us.checked_sub(lateness_us) {
            Some(tolerance_us) => tolerance_us,
            None => {
                // The smallest `Ts` with `b·Ts - T ≥ L`.
                let stretched_ns =
                    (lateness_us * 1000 * requests + per_ns).div_ceil(burst * requests);
                interval_us = interval_us.max(stretched_ns.div_ceil(1000));
                0
            }
        };
        let us = |v: u128| u64::try_from(v).unwrap_or(u64::MAX);
        Schedule {
            interval_us: us(interval_us),
            tolerance_us: us(tolerance_us),
            lateness: Duration::from_micros(us(lateness_us)),
        }
    }

    pub fn interval(&self) -> Duration {
        Duration::from_micros(self.interval_us)
    }

    /// How late after its time a cell may still be spent (start its
    /// request): the lateness budget less the part kept for the way to the
    /// provider (module docs).
    pub fn spend(&self) -> Duration {
        self.lateness - self.lateness / PATH_SHARE
    }

    /// True when the burst was too small to absorb [`MIN_LATENESS`], so the
    /// fleet runs slower than the spec (worth a warning).
    pub fn is_slowed(&self, spec: &RateLimitSpec) -> bool {
        self.interval() > spec.interval() + Duration::from_micros(1)
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::super::tests::{gcra_refusals, max_in_window, window_bound};
    use super::*;

    fn spec(requests: u32, per_ms: u64, burst: u32) -> RateLimitSpec {
        RateLimitSpec {
            requests,
            per: Duration::from_millis(per_ms),
            burst,
        }
    }

    #[test]
    fn a_roomy_burst_keeps_the_rate_and_most_of_the_burst() {
        // 100 per 10 s, burst 10: T = 100 ms, tau = 900 ms, 25 ms of it lateness.
        let s = Schedule::new(&spec(100, 10_000, 10));
        assert_eq!(s.interval_us, 100_000);
        assert_eq!(s.lateness, MAX_LATENESS);
        assert_eq!(s.tolerance_us, 875_000);
        assert!(!s.is_slowed(&spec(100, 10_000, 10)));
    }

    #[test]
    fn a_tight_burst_is_spent_on_lateness() {
        // 2000/s, burst 20: T = 500 µs, tau = 9.5 ms, all of it lateness.
        let s = Schedule::new(&spec(2000, 1000, 20));
        assert_eq!(s.interval_us, 500);
        assert_eq!(s.lateness, Duration::from_micros(9_500));
        assert_eq!(s.tolerance_us, 0);
        // 50/s, burst 2: tau = T = 20 ms, all of it lateness.
        let s = Schedule::new(&spec(50, 1000, 2));
        assert_eq!((s.interval_us, s.tolerance_us), (20_000, 0));
        assert_eq!(s.lateness, Duration::from_millis(20));
    }

    #[test]
    fn no_burst_stretches_the_interval_by_the_lateness() {
        // 5/s, burst 1: the provider wants every request 200 ms after the
        // previous one, so a cell that may start 10 ms (T/20) late comes
        // every 210 ms.
        let slow = spec(5, 1000, 1);
        let s = Schedule::new(&slow);
        assert_eq!((s.interval_us, s.tolerance_us), (210_000, 0));
        assert_eq!(s.lateness, Duration::from_millis(10));
        assert!(s.is_slowed(&slow));
        // 100/s, burst 1: T/20 is under the least lateness, 10 ms + 2.5 ms.
        let s = Schedule::new(&spec(100, 1000, 1));
        assert_eq!(s.interval_us, 12_500);
        // Of the least lateness, 2 ms may be spent.
        assert_eq!(s.spend(), Duration::from_millis(2));
        // 10 000/s, burst 1: 100 µs + 2.5 ms.
        let fast = spec(10_000, 1000, 1);
        assert_eq!(Schedule::new(&fast).interval_us, 2_600);
        // 2000/s, burst 4: tau = 1.5 ms < 2.5 ms, so Ts = (2.5 ms + 500 µs) / 4.
        let s = Schedule::new(&spec(2000, 1000, 4));
        assert_eq!((s.interval_us, s.tolerance_us), (750, 0));
    }

    #[test]
    fn intervals_round_up_to_whole_microseconds() {
        // 3 per second: 333 333.3 µs becomes 333 334 µs, never 333 333.
        assert_eq!(Schedule::new(&spec(3, 1000, 5)).interval_us, 333_334);
        // Faster than one per microsecond is capped at one per microsecond.
        assert_eq!(Schedule::new(&spec(u32::MAX, 1, 1_000_000)).interval_us, 1);
    }

    /// The proof above, checked: the earliest cells a schedule allows, each
    /// started up to `lateness` late, never exceed `⌈W/T⌉ + burst` in any window.
    #[test]
    fn late_cells_of_a_greedy_schedule_stay_within_the_window_bound() {
        let mut rng = StdRng::seed_from_u64(7);
        let specs = [
            spec(2000, 1000, 20),
            spec(10_000, 1000, 1),
            spec(10_000, 1000, 50),
            spec(100, 10_000, 10),
            spec(500, 1000, 1),
            spec(3, 1000, 2),
        ];
        for spec in specs {
            let s = Schedule::new(&spec);
            let (ts, taus, late) = (s.interval_us, s.tolerance_us, s.lateness.as_micros() as u64);
            // Greedy GCRA: each cell as early as allowed (a full burst first).
            let mut tat = 0;
            let mut starts: Vec<Duration> = (0..2000)
                .map(|_| {
                    let c = tat.max(taus) - taus;
                    tat = tat.max(c) + ts;
                    // Adversarial lateness: mostly none or the whole budget.
                    let delay = match rng.random_range(0..4) {
                        0 => 0,
                        1 => late,
                        _ => rng.random_range(0..=late),
                    };
                    Duration::from_micros(c + delay)
                })
                .collect();
            starts.sort();
            assert_eq!(gcra_refusals(&starts, &spec), 0, "{spec:?}: a GCRA refuses");
            let t = spec.interval();
            for w in [t / 3, t, t * 7 / 2, t * 20, t * 200, Duration::from_secs(1)] {
                let seen = max_in_window(&starts, w);
                let bound = window_bound(w, &spec);
                assert!(seen <= bound, "{spec:?} W={w:?}: {seen} > {bound}");
            }
        }
    }
}
