//! The GCRA parameters the fleet schedules with, and why leased cells spent
//! late never break the limit (docs/limiter.md has the whole argument).
//!
//! Redis hands out cells at conformance times `c` of a GCRA with interval
//! `Ts` and tolerance `taus`; an instance starts cell `j` at some
//! `s_j ∈ [c_j, c_j + L]`, `L` the lateness budget (reply delay, timer
//! granularity, a busy runtime, and the way to the provider). Which promise
//! the starts keep depends on how much burst the limit leaves room for.
//!
//! **GCRA-exact** (the burst tolerance holds the budget): the fleet's starts
//! are a sequence a GCRA with `T = per / requests` and `tau = (b-1)·T`
//! accepts in full, so any closed window of length `W` holds at most
//! `⌊W/T⌋ + b` starts. Proof: GCRA gives, for cells `j < m`,
//! `c_m ≥ c_j + (m-j)·Ts - taus`; `n` starts inside `[a, a+W]`, first and
//! last in grant order `j` and `m`, have `c_m - c_j ≤ W + L` and
//! `m - j ≥ n - 1`, so `W ≥ (n-1)·Ts - L - taus`, which gives the bound when
//! `L + taus ≤ b·Ts - T` (`n = b+1` is the binding case). So `L` and `taus`
//! share the slack `b·Ts - T` (`= tau` when `Ts = T`): `L` takes what it can
//! use, up to [`MAX_LATENESS`], and the burst keeps the rest.
//!
//! **Window-exact** (the slack cannot hold [`MIN_LATENESS`]: a burst of 1,
//! or a fast limit with a small burst): any half-open window of the limit's
//! own length `per` holds at most `requests + b - 1` starts, as in the GCRA
//! case, but a shorter window may see two starts closer than `T`. Proof:
//! with `taus = 0` consecutive cells are at least `Ts` apart, and the starts
//! in `[a, a+per)` have cells in `[a-L, a+per)`, so there are at most
//! `⌈(per + L)/Ts⌉` of them, which `Ts ≥ (per + L)/(requests + b - 1)`
//! keeps within the bound. The rate given up is about `L/per`, where making
//! a burst of 1 GCRA-exact would stretch every interval by `L` (at 100/s a
//! fifth of the rate, and a 2 ms budget that a Redis round trip and the
//! 1 ms timer eat whole). Providers count requests per window (HubSpot: 100
//! per 10 s), which is the promise that matters to them; a provider that
//! enforces spacing to the millisecond needs a burst of at least 2.
//!
//! The provider clocks a request when it arrives, not when it starts, so `L`
//! also covers the spread of the way there: a cell may be spent up to
//! [`Schedule::spend`] late, and the rest of `L` ([`PATH_SHARE`] of it) is
//! kept for the way.

use std::time::Duration;

use super::RateLimitSpec;

/// Lateness every schedule tolerates at least: 2 ms to spend (a Redis round
/// trip plus the tokio timer's 1 ms granularity) and the path's fifth.
const MIN_LATENESS: Duration = Duration::from_micros(2500);
/// Lateness beyond which more budget would only shrink the burst (or, for a
/// window-exact schedule, the rate): enough for a slow round trip on a busy
/// machine, and what a quiet instance's leases can stretch over.
const MAX_LATENESS: Duration = Duration::from_millis(25);
/// A window-exact schedule gives up at most this share of `per` to lateness.
const WINDOW_SHARE: u32 = 40;
/// The part of the lateness budget kept for the spread of the way from a
/// request's start to the provider's clock (module docs): one fifth.
pub(crate) const PATH_SHARE: u32 = 5;

/// Which promise a schedule keeps (module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exactness {
    /// At most `⌊W/T⌋ + b` starts in any closed window of length `W`.
    Gcra,
    /// At most `requests + b - 1` starts in any half-open window of `per`.
    Window,
}

/// What the Redis script runs with (`interval_us`, `tolerance_us`: whole
/// microseconds on Redis's clock) and how late a leased cell may be spent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Schedule {
    pub interval_us: u64,
    pub tolerance_us: u64,
    pub lateness: Duration,
    pub exactness: Exactness,
}

impl Schedule {
    pub fn new(spec: &RateLimitSpec) -> Self {
        let (requests, burst) = (u128::from(spec.requests), u128::from(spec.burst));
        let per_ns = spec.per.as_nanos();
        // Rounded up to whole microseconds: a longer interval is only ever slower.
        let interval_us = per_ns.div_ceil(requests).div_ceil(1000).max(1);
        // The slack `b·Ts - T`, rounded down (module docs).
        let slack_us =
            (burst * interval_us * 1000 * requests).saturating_sub(per_ns) / requests / 1000;
        let (min, max) = (MIN_LATENESS.as_micros(), MAX_LATENESS.as_micros());
        let us = |v: u128| u64::try_from(v).unwrap_or(u64::MAX);
        if slack_us >= min {
            let lateness_us = slack_us.min(max);
            return Schedule {
                interval_us: us(interval_us),
                tolerance_us: us(slack_us - lateness_us),
                lateness: Duration::from_micros(us(lateness_us)),
                exactness: Exactness::Gcra,
            };
        }
        // Window-exact: a budget of at most one interval and a fortieth of
        // the window, and `Ts ≥ (per + L)/(requests + b - 1)`.
        let lateness_us = interval_us
            .min(per_ns / 1000 / u128::from(WINDOW_SHARE))
            .clamp(min, max);
        let window_us = (per_ns + lateness_us * 1000)
            .div_ceil(requests + burst - 1)
            .div_ceil(1000);
        Schedule {
            interval_us: us(interval_us.max(window_us)),
            tolerance_us: 0,
            lateness: Duration::from_micros(us(lateness_us)),
            exactness: Exactness::Window,
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

    /// True when the fleet runs more than 5% slower than the spec (worth a
    /// warning): a window-exact schedule of a short `per`.
    pub fn is_slowed(&self, spec: &RateLimitSpec) -> bool {
        self.interval() > spec.interval() * 21 / 20
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::super::sim::max_in_half_open_window;
    use super::super::sim::{gcra_refusals, max_in_window, window_bound};
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
    fn a_burst_too_small_for_the_budget_keeps_the_window_exact() {
        // 5/s, burst 1: 25 ms of budget (a fortieth of the second), paid for
        // by stretching 5 intervals by 5 ms each: 205 ms, 2.4% of the rate.
        let slow = spec(5, 1000, 1);
        let s = Schedule::new(&slow);
        assert_eq!(s.exactness, Exactness::Window);
        assert_eq!((s.interval_us, s.tolerance_us), (205_000, 0));
        assert_eq!(s.lateness, MAX_LATENESS);
        assert_eq!(s.spend(), Duration::from_millis(20));
        assert!(!s.is_slowed(&slow));
        // 20/s, burst 1: 51.25 ms.
        assert_eq!(Schedule::new(&spec(20, 1000, 1)).interval_us, 51_250);
        // 100/s, burst 1: the budget is at most one interval, 10 ms; 1% of the rate.
        let s = Schedule::new(&spec(100, 1000, 1));
        assert_eq!(
            (s.interval_us, s.lateness),
            (10_100, Duration::from_millis(10))
        );
        // HubSpot's 100 per 10 s, burst 1: 25 ms over 10 s.
        let s = Schedule::new(&spec(100, 10_000, 1));
        assert_eq!((s.interval_us, s.lateness), (100_250, MAX_LATENESS));
        // 10 000/s, burst 1: the least budget, and whole microseconds.
        let s = Schedule::new(&spec(10_000, 1000, 1));
        assert_eq!((s.interval_us, s.lateness), (101, MIN_LATENESS));
        // 2000/s, burst 4: tau = 1.5 ms < 2.5 ms; the window takes 3 more.
        let s = Schedule::new(&spec(2000, 1000, 4));
        assert_eq!((s.interval_us, s.tolerance_us), (501, 0));
        assert_eq!(s.exactness, Exactness::Window);
        // A short window pays more: 1 per 100 ms loses a fortieth.
        let short = spec(1, 100, 1);
        assert_eq!(Schedule::new(&short).interval_us, 102_500);
    }

    #[test]
    fn intervals_round_up_to_whole_microseconds() {
        // 3 per second: 333 333.3 µs becomes 333 334 µs, never 333 333.
        assert_eq!(Schedule::new(&spec(3, 1000, 5)).interval_us, 333_334);
        // Faster than one per microsecond is capped at one per microsecond.
        assert_eq!(Schedule::new(&spec(u32::MAX, 1, 1_000_000)).interval_us, 1);
    }

    /// The proofs above, checked: the earliest cells a schedule allows, each
    /// started up to `lateness` late, never exceed `⌈W/T⌉ + burst` in any
    /// window (GCRA-exact), or `requests + burst - 1` in a window of `per`
    /// (window-exact).
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
            spec(20, 1000, 1),
            spec(2000, 1000, 4),
            spec(100, 10_000, 1),
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
            if s.exactness == Exactness::Window {
                let seen = max_in_half_open_window(&starts, spec.per);
                let bound = (spec.requests + spec.burst - 1) as usize;
                assert!(seen <= bound, "{spec:?}: {seen} in a window of per");
                continue;
            }
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
