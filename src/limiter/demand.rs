//! How many cells to lease, and when.
//!
//! An instance asks Redis for more only when its pool cannot cover the callers
//! already waiting plus the arrivals expected over [`REFILL_AHEAD`] (about a
//! round trip, so a steady caller rarely waits for one). Asking earlier buys
//! nothing: new cells come after the pooled ones, and when the fleet is not
//! saturated they start ageing at once, alongside the pooled ones. For the
//! same reason it does not ask while its last pooled cell is more than
//! [`POOL_REACH`] ahead, however many callers wait: with callers queued
//! deeper than the pool (a backlog), each grant was spread among them at
//! once and the instance called again, taking the sliver of the horizon
//! freed since the last call. At 10,000/s offered to a 10,000/s limit after
//! a 150 ms stall (a backlog that never drains), that was 1 Redis command
//! per 38–41 requests; waiting for the pool to come within reach, 60–62.
//!
//! It then asks for the uncovered waiters plus the arrivals expected over a
//! `span`. A lease's cells come at the fleet's interval `Ts` and expire
//! `lateness` after their time, so an instance receiving `r` requests/s with
//! `r·Ts < 1` can spend a lease of `k` cells only if `r·(k·Ts + lateness) ≥ k`,
//! i.e. over a span of at most `lateness / (1 - r·Ts)`. That span is the floor;
//! above it the span adapts to how leased cells were actually spent: it
//! shrinks in proportion to the cells that expired unused since the last
//! lease, and grows back while none do (callers that come back as soon as
//! they are served spend everything). A saturated instance thus leases about
//! [`MAX_SPAN`] of demand per call, a quiet one what it can spend, an idle one
//! nothing.

use std::time::Duration;

use tokio::time::Instant;

use super::gcra::Schedule;

/// Expected arrivals over this long count as demand the pool must cover.
const REFILL_AHEAD: Duration = Duration::from_millis(2);
/// The adaptive span never shrinks below this, so it can grow back.
const MIN_SPAN: Duration = Duration::from_millis(2);
const MAX_SPAN: Duration = Duration::from_millis(100);
/// No lease call while the last pooled cell is further ahead than this
/// (module docs): about what a saturated instance leases per call.
pub(super) const POOL_REACH: Duration = MAX_SPAN;
/// Most cells asked for in one call (the script's horizon may grant fewer).
const MAX_LEASE: u32 = 1000;
/// Time constant of the arrival-rate estimate.
const RATE_WINDOW: Duration = Duration::from_millis(250);

#[derive(Debug)]
pub(crate) struct LeaseSizer {
    /// Arrivals per second, decayed to `rate_at`.
    rate: f64,
    rate_at: Instant,
    span: Duration,
    used: u32,
    expired: u32,
}

impl LeaseSizer {
    pub fn new(now: Instant) -> Self {
        LeaseSizer {
            rate: 0.0,
            rate_at: now,
            span: MAX_SPAN / 4,
            used: 0,
            expired: 0,
        }
    }

    /// An exponentially decaying count of arrivals: each adds `1/window`, so
    /// a steady rate `r` settles at `r`.
    pub fn arrival(&mut self, now: Instant) {
        self.rate = self.rate_at(now) + 1.0 / RATE_WINDOW.as_secs_f64();
        self.rate_at = now;
    }

    /// `n` arrivals served at once from the pool (direct.rs),
    /// counted when the task hears of them: arrivals and spent cells.
    pub fn arrivals(&mut self, now: Instant, n: u32) {
        self.rate = self.rate_at(now) + f64::from(n) / RATE_WINDOW.as_secs_f64();
        self.rate_at = now;
        self.used += n;
    }

    /// Pooled cells below which the pool no longer covers the expected
    /// demand and a lease is wanted (with nobody waiting); at least 1.
    pub fn refill_below(&self, now: Instant) -> usize {
        ((self.rate_at(now) * REFILL_AHEAD.as_secs_f64()).floor() as usize).max(1)
    }

    fn rate_at(&self, now: Instant) -> f64 {
        let age = now.saturating_duration_since(self.rate_at);
        self.rate * (-age.as_secs_f64() / RATE_WINDOW.as_secs_f64()).exp()
    }

    pub fn used(&mut self) {
        self.used += 1;
    }

    pub fn expired(&mut self, cells: u32) {
        self.expired += cells;
    }

    /// Cells to lease now; 0 when the pool covers the expected demand.
    pub fn want(&self, waiters: usize, pooled: usize, schedule: &Schedule, now: Instant) -> u32 {
        let rate = self.rate_at(now);
        let (waiters, pooled) = (waiters as f64, pooled as f64);
        // Rounded down: a fraction of an expected arrival is not demand yet.
        if pooled >= (waiters + rate * REFILL_AHEAD.as_secs_f64()).floor() {
            return 0;
        }
        let spendable = 1.0 - rate * schedule.interval().as_secs_f64();
        let floor = if spendable > 0.0 {
            schedule.lateness.as_secs_f64() / spendable
        } else {
            f64::INFINITY
        };
        let span = floor.clamp(self.span.as_secs_f64(), MAX_SPAN.as_secs_f64());
        let cells = (waiters - pooled).max(0.0) + (rate * span).floor();
        (cells as u32).clamp(1, MAX_LEASE)
    }

    /// Called as a lease goes out: adapts the span to how the cells leased so
    /// far were spent.
    pub fn on_lease(&mut self) {
        if self.expired > 0 {
            let kept = f64::from(self.used) / f64::from(self.used + self.expired);
            self.span = self.span.mul_f64(kept).max(MIN_SPAN);
        } else if self.used > 0 {
            self.span = self.span.mul_f64(1.5).min(MAX_SPAN);
        }
        self.used = 0;
        self.expired = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::super::sim::per_second;
    use super::*;

    /// 100 000/s, burst 200: a lateness budget (2 ms) too small to matter here.
    fn roomy() -> Schedule {
        Schedule::new(&per_second(100_000, 200))
    }

    /// A sizer that has seen `rate` arrivals per second for a while.
    fn busy(rate: u32, now: Instant) -> LeaseSizer {
        let mut sizer = LeaseSizer::new(now);
        let gap = Duration::from_secs(1) / rate;
        let mut t = now;
        for _ in 0..rate * 2 {
            t += gap;
            sizer.arrival(t);
        }
        sizer
    }

    #[test]
    fn an_idle_instance_leases_nothing() {
        let now = Instant::now();
        assert_eq!(LeaseSizer::new(now).want(0, 0, &roomy(), now), 0);
        // Long after a busy spell, the rate has decayed away.
        let sizer = busy(1000, now);
        assert_eq!(sizer.want(0, 0, &roomy(), now + Duration::from_secs(20)), 0);
    }

    #[test]
    fn a_lone_caller_leases_one_cell() {
        let now = Instant::now();
        assert_eq!(LeaseSizer::new(now).want(1, 0, &roomy(), now), 1);
        assert_eq!(LeaseSizer::new(now).want(1, 1, &roomy(), now), 0);
    }

    #[test]
    fn the_rate_estimate_settles_at_the_arrival_rate() {
        let now = Instant::now();
        let sizer = busy(1000, now);
        let rate = sizer.rate_at(now + Duration::from_secs(2));
        assert!((950.0..1050.0).contains(&rate), "{rate}");
    }

    #[test]
    fn a_busy_instance_grows_its_lease_to_the_max_span() {
        let now = Instant::now();
        let mut sizer = busy(1000, now);
        let later = now + Duration::from_secs(2);
        // 25 ms of demand at first, plus the uncovered waiters.
        assert_eq!(sizer.want(30, 10, &roomy(), later), 20 + 25);
        // The pool covers the next 10 ms of demand: no call needed.
        assert_eq!(sizer.want(0, 20, &roomy(), later), 0);
        for _ in 0..10 {
            sizer.used();
            sizer.on_lease();
        }
        assert_eq!(sizer.span, MAX_SPAN);
        assert!((98..=100).contains(&sizer.want(0, 0, &roomy(), later)));
    }

    #[test]
    fn expired_cells_shrink_the_span_in_proportion() {
        let now = Instant::now();
        let mut sizer = busy(1000, now);
        sizer.span = MAX_SPAN;
        (0..25).for_each(|_| sizer.used());
        sizer.expired(75);
        sizer.on_lease();
        assert_eq!(sizer.span, MAX_SPAN / 4);
        sizer.expired(10);
        sizer.on_lease();
        assert_eq!(sizer.span, MIN_SPAN);
    }

    #[test]
    fn a_quiet_instance_leases_what_it_can_spend_before_the_cells_expire() {
        let now = Instant::now();
        let mut sizer = busy(500, now);
        sizer.expired(100);
        sizer.on_lease();
        assert_eq!(sizer.span, MIN_SPAN);
        // 2000/s, burst 20: cells 0.5 ms apart, spendable 9.5 ms late. At
        // 500/s, a lease spans at most 9.5 ms / (1 - 0.25) = 12.7 ms of demand.
        let fleet = Schedule::new(&per_second(2000, 20));
        let later = now + Duration::from_secs(2);
        assert_eq!(sizer.want(1, 0, &fleet, later), 1 + 6);
        // An instance taking the fleet's whole rate can spend any lease.
        let saturated = busy(2000, now);
        assert_eq!(saturated.want(0, 0, &fleet, later), 200);
    }
}
