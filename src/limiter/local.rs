//! The fallback while the shared limit is out of reach: a GCRA on this
//! instance's clock, at this instance's share of the limit.
//!
//! Every instance falls back on its own and cannot see the others' cells, so
//! its share must keep the fleet within the provider's limit whatever the
//! phase of the others. A local cell is like a leased one: it has a time (a
//! conformance time of the local GCRA) and its request must start within the
//! lateness budget `L` of it, so the share is built from the corrected
//! schedule (gcra.rs), not from the provider's full burst tolerance.
//!
//! ## The share, and why it keeps the fleet within the limit
//!
//! With `N` instances last seen sharing a limit of interval `T = per/requests`
//! and burst `b`, each instance runs a GCRA with interval `Tl ≥ N·T`, burst
//! `bl = ⌊b/N⌋` and tolerance `taul`. Write `r = b - N·bl`.
//!
//! Proof that the `N` instances' starts together conform (at most
//! `⌊W/T⌋ + b` in any window of length `W`, see gcra.rs) when
//! `L + taul ≤ bl·Tl - (N-r)·T`: one instance's starts inside the window have
//! cell times within `W + L`, and its GCRA puts `n` cells at least
//! `(n-1)·Tl - taul` apart, so there are at most `q + 1` of them,
//! `q = ⌊(W + L + taul)/Tl⌋`, and at most `N·(q+1)` in all. That is within the
//! bound when `N·(q+1) ≤ b`, i.e. `q < bl`. Otherwise `W ≥ q·Tl - L - taul`, and
//! `⌊W/T⌋ ≥ N·(q+1) - b` follows from `L + taul ≤ q·Tl - (N·(q+1) - b)·T`,
//! whose right side grows with `q` (by `Tl - N·T ≥ 0`): `q = bl` is the binding
//! case. With `N = 1` this is gcra.rs's `L + tau ≤ b·Ts - T`, so a lone
//! instance keeps the fleet's own schedule.
//!
//! The share keeps `Tl = N·Ts` (the fleet's interval) and gives the slack
//! `bl·Tl - (N-r)·T` beyond `L` to the burst; when the slack cannot hold `L`,
//! the interval is stretched to `Tl = ((N-r)·T + L)/bl` instead, as gcra.rs
//! does for the fleet. With `b < N` no share works: `N` instances may each
//! start one request at the same instant, more than the provider allows at
//! once. The share is then `N·Ts` with a burst of 1, marked inexact, and the
//! fallback says so in its log.
//!
//! A window-exact fleet (gcra.rs) is shared by the window instead: each
//! instance keeps to `⌊(requests + b - 1)/N⌋` starts per window of `per`,
//! with `Tl = max(N·Ts, (per + L)/⌊(requests + b - 1)/N⌋)`, and the fleet's
//! argument applied to each instance's quota bounds their sum.

use std::time::Duration;

use tokio::time::Instant;

use super::RateLimitSpec;
use super::gcra::{Exactness, Schedule};

/// One instance's part of a limit while it runs on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LocalShare {
    pub interval: Duration,
    pub tolerance: Duration,
    /// False when the burst is smaller than the instances sharing it: the
    /// shares may then overlap, and the provider may refuse some requests.
    pub exact: bool,
}

impl LocalShare {
    pub fn new(spec: &RateLimitSpec, schedule: &Schedule, instances: u32) -> Self {
        let n = u128::from(instances.max(1));
        let (requests, burst) = (u128::from(spec.requests), u128::from(spec.burst));
        let fleet_ns = u128::from(schedule.interval_us) * 1000;
        let lateness_ns = schedule.lateness.as_nanos();
        let (local_burst, spare) = (burst / n, burst % n);
        if schedule.exactness == Exactness::Window {
            return Self::window_exact(spec, schedule, n);
        }
        let (interval_ns, tolerance_ns, exact) = if local_burst == 0 {
            (n * fleet_ns, 0, false)
        } else {
            // `(N-r)·T`, rounded up: a larger term only shrinks the slack.
            let reserved_ns = ((n - spare) * spec.per.as_nanos()).div_ceil(requests);
            let interval_ns = n * fleet_ns;
            match (local_burst * interval_ns)
                .checked_sub(reserved_ns)
                .and_then(|slack_ns| slack_ns.checked_sub(lateness_ns))
            {
                Some(tolerance_ns) => (interval_ns, tolerance_ns, true),
                // The smallest `Tl` with `bl·Tl - (N-r)·T ≥ L`.
                None => (
                    interval_ns.max((reserved_ns + lateness_ns).div_ceil(local_burst)),
                    0,
                    true,
                ),
            }
        };
        let ns = |v: u128| Duration::from_nanos(u64::try_from(v).unwrap_or(u64::MAX));
        LocalShare {
            interval: ns(interval_ns),
            tolerance: ns(tolerance_ns),
            exact,
        }
    }
}

impl LocalShare {
    /// A window-exact fleet's share: each of the `n` instances keeps to
    /// `⌊(requests + b - 1)/n⌋` starts per window of `per`, by the same
    /// argument as the fleet's (gcra.rs). None when that is 0.
    fn window_exact(spec: &RateLimitSpec, schedule: &Schedule, n: u128) -> Self {
        let fleet_ns = u128::from(schedule.interval_us) * 1000;
        let quota = (u128::from(spec.requests) + u128::from(spec.burst) - 1) / n;
        let ns = |v: u128| Duration::from_nanos(u64::try_from(v).unwrap_or(u64::MAX));
        if quota == 0 {
            return LocalShare {
                interval: ns(n * fleet_ns),
                tolerance: Duration::ZERO,
                exact: false,
            };
        }
        let window_ns = (spec.per.as_nanos() + schedule.lateness.as_nanos()).div_ceil(quota);
        LocalShare {
            interval: ns((n * fleet_ns).max(window_ns)),
            tolerance: Duration::ZERO,
            exact: true,
        }
    }
}

#[derive(Debug)]
pub(crate) struct LocalGcra {
    /// Theoretical arrival time: the next cell conforms from `tat - tolerance`.
    tat: Instant,
    share: LocalShare,
}

impl LocalGcra {
    /// The first cell conforms at `start`, with no burst in hand (the
    /// switches in core.rs rely on that); a burst builds up while idle.
    pub fn new(share: LocalShare, start: Instant) -> Self {
        LocalGcra {
            tat: start + share.tolerance,
            share,
        }
    }

    /// Applies a new share, keeping the TAT (no reset).
    pub fn reconfigure(&mut self, share: LocalShare) {
        self.share = share;
    }

    /// No cell before `start`, and none of the burst built up before it.
    pub fn hold_until(&mut self, start: Instant) {
        self.tat = self.tat.max(start + self.share.tolerance);
    }

    /// When the next cell conforms.
    pub fn next_at(&self, now: Instant) -> Instant {
        if now + self.share.tolerance >= self.tat {
            now
        } else {
            self.tat - self.share.tolerance
        }
    }

    /// Takes a cell if one conforms at `now`, and returns its time: as
    /// early as the GCRA allows but at most `lateness` ago, so a caller
    /// served a little late (a timer, a busy runtime) keeps the schedule
    /// instead of pushing every later cell back. The request must start by
    /// the cell's time plus `lateness`, as for a leased cell.
    pub fn take(&mut self, now: Instant, lateness: Duration) -> Option<Instant> {
        if now + self.share.tolerance < self.tat {
            return None;
        }
        let earliest = self.tat.checked_sub(self.share.tolerance).unwrap_or(now);
        let at = earliest.max(now.checked_sub(lateness).unwrap_or(now));
        self.tat = self.tat.max(at) + self.share.interval;
        Some(at)
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::super::sim::{gcra_refusals, max_in_window, per_second, window_bound};
    use super::*;

    const MS: Duration = Duration::from_millis(1);
    const US: Duration = Duration::from_micros(1);

    fn share(spec: &RateLimitSpec, instances: u32) -> LocalShare {
        LocalShare::new(spec, &Schedule::new(spec), instances)
    }

    /// Takes cells as fast as a 50 µs poll allows for `run`; returns their offsets.
    fn drain(gcra: &mut LocalGcra, start: Instant, run: Duration) -> Vec<Duration> {
        let step = Duration::from_micros(50);
        let mut taken = Vec::new();
        let mut now = start;
        while now < start + run {
            if gcra.take(now, Duration::ZERO).is_some() {
                taken.push(now - start);
            } else {
                now += step;
            }
        }
        taken
    }

    #[test]
    fn a_lone_instance_keeps_the_fleet_schedule() {
        // 100/s burst 10: Ts = 10 ms, 25 ms of the 90 ms slack is lateness.
        let spec = per_second(100, 10);
        let s = share(&spec, 1);
        assert_eq!(s.interval, 10 * MS);
        assert_eq!(s.tolerance, 65 * MS);
        assert!(s.exact);
        // 100/s burst 1: the fleet's window-exact 10.1 ms interval, no burst.
        let s = share(&per_second(100, 1), 1);
        assert_eq!((s.interval, s.tolerance), (10_100 * US, Duration::ZERO));
    }

    #[test]
    fn instances_split_rate_and_burst_around_the_lateness() {
        // 300/s burst 9 over 3: Ts = 3.334 ms (rounded up), L = 25 ms; each
        // gets burst 3 at 10.002 ms, slack 3·10.002 - 3·3.333 = 20.006 ms < L:
        // stretched to (10 + 25)/3 ms.
        let s = share(&per_second(300, 9), 3);
        assert_eq!(s.interval, Duration::from_nanos(11_666_667));
        assert_eq!(s.tolerance, Duration::ZERO);
        // 100/s burst 2 over 2: L = 10 ms, Tl = 2·10 + 10 = 30 ms, burst 1.
        let s = share(&per_second(100, 2), 2);
        assert_eq!((s.interval, s.tolerance), (30 * MS, Duration::ZERO));
        // 2000/s burst 100 over 4: Ts = 0.5 ms, L = 25 ms, burst 25 at 2 ms,
        // slack 25·2 - 4·0.5 = 48 ms, 23 ms of it burst.
        let s = share(&per_second(2000, 100), 4);
        assert_eq!((s.interval, s.tolerance), (2 * MS, 23 * MS));
    }

    #[test]
    fn a_burst_smaller_than_the_instances_cannot_be_shared_exactly() {
        // GCRA-exact (100/s burst 2, L = 10 ms) over 3: no burst to split.
        let s = share(&per_second(100, 2), 3);
        assert!(!s.exact);
        assert_eq!((s.interval, s.tolerance), (30 * MS, Duration::ZERO));
    }

    #[test]
    fn a_window_exact_limit_is_shared_by_the_window() {
        // 20/s burst 1 over 3: 6 each per second of 1.025 s, 170.83 ms apart.
        let s = share(&per_second(20, 1), 3);
        assert!(s.exact);
        assert_eq!(
            (s.interval, s.tolerance),
            (Duration::from_nanos(170_833_334), Duration::ZERO)
        );
        // 2 per 10 s over 3: nobody's quota is whole.
        let s = share(
            &RateLimitSpec {
                requests: 2,
                per: Duration::from_secs(10),
                burst: 1,
            },
            3,
        );
        assert!(!s.exact);
    }

    #[test]
    fn the_first_cell_comes_at_the_start_with_no_burst_in_hand() {
        let spec = per_second(100, 10);
        let start = Instant::now();
        let mut gcra = LocalGcra::new(share(&spec, 1), start + 100 * MS);
        assert_eq!(gcra.next_at(start), start + 100 * MS);
        assert_eq!(gcra.take(start + 99 * MS, Duration::ZERO), None);
        let taken = drain(&mut gcra, start, Duration::from_secs(2));
        assert_eq!(taken.len(), 190);
        assert_eq!(taken[..2], [100 * MS, 110 * MS]);
        for w in [5 * MS, 100 * MS, Duration::from_secs(1)] {
            assert!(max_in_window(&taken, w) <= window_bound(w, &spec));
        }
    }

    #[test]
    fn a_late_taker_keeps_the_schedule_within_the_lateness() {
        // 100/s, no burst: a cell every 10.1 ms from the start.
        let spec = per_second(100, 1);
        assert_eq!(share(&spec, 1).interval, 10_100 * US);
        let start = Instant::now();
        let mut gcra = LocalGcra::new(share(&spec, 1), start);
        // Taken 3 ms late with 2 ms of lateness: the cell is dated 1 ms, and
        // the next one comes 10.1 ms after that, not after the take.
        assert_eq!(gcra.take(start + 3 * MS, 2 * MS), Some(start + MS));
        assert_eq!(gcra.next_at(start + 3 * MS), start + 11_100 * US);
        // Taken long after: dated the lateness ago, and the schedule
        // restarts there.
        assert_eq!(gcra.take(start + 100 * MS, 2 * MS), Some(start + 98 * MS));
        assert_eq!(gcra.next_at(start + 100 * MS), start + 108_100 * US);
    }

    #[test]
    fn an_idle_local_limiter_builds_up_its_burst_and_a_hold_takes_it_back() {
        let spec = per_second(100, 10);
        let start = Instant::now();
        let mut gcra = LocalGcra::new(share(&spec, 1), start);
        let later = start + Duration::from_secs(1);
        // Burst 1 + 65 ms / 10 ms.
        let burst = (0..20).filter_map(|_| gcra.take(later, Duration::ZERO));
        assert_eq!(burst.count(), 7);
        let later = later + Duration::from_secs(1);
        gcra.hold_until(later + 50 * MS);
        assert_eq!(gcra.next_at(later), later + 50 * MS);
        assert_eq!(gcra.take(later + 50 * MS, MS), Some(later + 50 * MS));
        assert_eq!(gcra.take(later + 50 * MS, MS), None);
    }

    /// The proof above, checked: `N` instances at random phases, each cell
    /// taken late and started by its deadline (mostly at once or at the
    /// deadline), greedy or idle in turns, never add up to a sequence the
    /// provider refuses.
    #[test]
    fn instances_at_any_phase_stay_within_the_limit_together() {
        let mut rng = StdRng::seed_from_u64(11);
        let cases = [
            (per_second(100, 2), 2),
            (per_second(100, 10), 3),
            (per_second(300, 9), 3),
            (per_second(2000, 100), 4),
            (per_second(2000, 20), 7),
            (per_second(10_000, 100), 3),
            (per_second(5, 3), 2),
        ];
        for (spec, instances) in cases {
            let schedule = Schedule::new(&spec);
            let late = schedule.lateness.as_nanos() as u64;
            let share = share(&spec, instances);
            assert!(share.exact);
            let run = share.interval * 400;
            let origin = Instant::now();
            let mut starts = Vec::new();
            for _ in 0..instances {
                // Half the instances in phase: the worst case for bursts.
                let phase = match rng.random_bool(0.5) {
                    true => 0,
                    false => rng.random_range(0..share.interval.as_nanos() as u64),
                };
                let mut gcra = LocalGcra::new(share, origin + Duration::from_nanos(phase));
                let mut now = origin;
                while now < origin + run {
                    // Served up to a lateness budget after the cell is due.
                    now = gcra.next_at(now) + Duration::from_nanos(rng.random_range(0..=late));
                    let at = gcra.take(now, schedule.lateness).expect("due");
                    let deadline = at + schedule.lateness;
                    // Started anywhere from the take to the deadline, mostly
                    // at either end.
                    let spare = (deadline - now).as_nanos() as u64;
                    let delay = match rng.random_range(0..4) {
                        0 => 0,
                        1 => spare,
                        _ => rng.random_range(0..=spare),
                    };
                    starts.push(now - origin + Duration::from_nanos(delay));
                    // Now and then idle long enough to rebuild the burst.
                    if rng.random_range(0..50) == 0 {
                        now += share.interval * rng.random_range(1..20);
                    }
                }
            }
            starts.sort();
            assert_eq!(
                gcra_refusals(&starts, &spec),
                0,
                "{spec:?} over {instances}: a GCRA refuses"
            );
        }
    }
}
