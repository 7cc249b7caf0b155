//! The limiter's decisions, as a state machine without I/O: events in
//! (a caller arrives, a Redis reply comes back, time passes), actions out
//! (serve these callers, make this Redis call, give these cells back, wake
//! me then). It never reads a clock, sleeps or talks to Redis; the driver
//! (`driver.rs`) does, so the timing rules here are tested with paused time
//! against a fake Redis (`sim.rs`).
//!
//! The switches between the shared limit and the local share, and why they
//! keep the fleet within the limit, are in docs/limiter.md ("Switching").

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use metrics::{Counter, Gauge};
use tokio::time::Instant;

mod switch;

use super::LimiterError;
use super::RateLimitSpec;
use super::demand::{LeaseSizer, POOL_REACH};
use super::direct::Direct;
use super::gcra::Schedule;
use super::local::LocalShare;
use super::pool::{Grant, Tail};
use super::redis::{HORIZON, Standing};
#[cfg(test)]
pub(in crate::limiter) use switch::FALLBACK_DELAY;
use switch::{Fallback, NOTICE, PROBE_MIN, Phase};

/// Every instance on the shared limit calls Redis at least this often,
/// keeping its heartbeat fresh and hearing of holds in time.
pub(super) const HEARTBEAT: Duration = Duration::from_millis(500);
/// How long an instance with leased cells left over waits for another
/// caller before it gives them back to the fleet (its demand has stopped),
/// rather than let them expire unused while other instances wait behind them.
const GIVE_BACK_AFTER: Duration = Duration::from_millis(25);
/// A caller waiting for a cell.
pub(super) trait Waiter {
    /// The caller gave up (its future was dropped).
    fn is_closed(&self) -> bool;
    /// Hands it a cell that must be spent by `deadline`.
    fn serve(self, deadline: Instant);
}

/// A Redis call the driver should make now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Call {
    pub schedule: Schedule,
    pub wanted: u32,
    pub standing: Standing,
}

/// A Redis call's outcome, with when it went out and came back.
#[derive(Debug)]
pub(super) struct Reply {
    pub sent: Instant,
    pub received: Instant,
    pub wanted: u32,
    pub result: Result<Grant, LimiterError>,
}

/// What the driver does after an event.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Step {
    /// Start this lease call (only when none is in flight).
    pub call: Option<Call>,
    /// Ask Redis to take these cells back.
    pub give_back: Option<Tail>,
    /// Step again by then, if nothing else happens first.
    pub wake_at: Option<Instant>,
}

/// The limiter's metrics, by provider.
pub(super) struct CoreMetrics {
    local: Gauge,
    redis_calls: Counter,
    given_back: Counter,
    expired_cells: Counter,
    stale_cells: Counter,
    unanswered: Counter,
}

impl CoreMetrics {
    pub fn new(provider: &str) -> Self {
        let p = || provider.to_owned();
        CoreMetrics {
            local: metrics::gauge!("syncflow_limiter_local", "provider" => p()),
            redis_calls: metrics::counter!("syncflow_limiter_redis_calls_total", "provider" => p()),
            given_back: metrics::counter!("syncflow_limiter_given_back_cells_total", "provider" => p()),
            expired_cells: wasted_cells(provider, "expired"),
            stale_cells: wasted_cells(provider, "slow_reply"),
            unanswered: wasted_cells(provider, "unanswered_give_back"),
        }
    }
}

/// Leased cells that went unused: capacity lost to lateness (a slow Redis
/// reply, a busy runtime), never a request over the limit.
pub(super) fn wasted_cells(provider: &str, reason: &'static str) -> Counter {
    metrics::counter!("syncflow_limiter_wasted_cells_total", "provider" => provider.to_owned(), "reason" => reason)
}

/// Everything the limiter decides with.
pub(super) struct Core<W> {
    provider: String,
    spec: RateLimitSpec,
    schedule: Schedule,
    /// Some while cells come from the local share; pooled cells stay valid.
    local: Option<Fallback>,
    /// What `SharedLimiter::mode` reads.
    local_flag: Arc<AtomicBool>,
    /// The pool, shared with callers taking cells directly.
    direct: Arc<Direct>,
    sizer: LeaseSizer,
    waiters: VecDeque<W>,
    /// Instances sharing the limit, as Redis last counted them.
    instances: u32,
    /// The epoch of the last grant; none before the first.
    epoch: Option<u64>,
    /// The last hold acted on (Redis microseconds).
    hold_seen: Option<u64>,
    /// When the last call that got through went out.
    last_ok: Instant,
    last_call: Instant,
    /// A lease call is out.
    calling: bool,
    /// Cells are being offered back; no lease until Redis answers, so the
    /// offered cells stay the pool's last.
    giving_back: bool,
    /// No lease call before this (after a short grant, or the next probe).
    retry_at: Instant,
    backoff: Duration,
    slow_replies: u32,
    /// When the first of the current run of slow replies came.
    slow_since: Instant,
    /// When the last caller came.
    last_arrival: Instant,
    metrics: CoreMetrics,
}

impl<W: Waiter> Core<W> {
    pub fn new(
        provider: &str,
        spec: RateLimitSpec,
        direct: Arc<Direct>,
        local_flag: Arc<AtomicBool>,
        now: Instant,
    ) -> Self {
        let mut core = Core {
            provider: provider.to_owned(),
            spec,
            schedule: Schedule::new(&spec),
            local: None,
            local_flag,
            direct,
            sizer: LeaseSizer::new(now),
            waiters: VecDeque::new(),
            instances: 1,
            epoch: None,
            hold_seen: None,
            last_ok: now,
            // Call at once: registers this instance and finds out whether
            // Redis is there before anyone waits on it.
            last_call: now.checked_sub(HEARTBEAT).unwrap_or(now),
            calling: false,
            giving_back: false,
            retry_at: now,
            backoff: PROBE_MIN,
            slow_replies: 0,
            slow_since: now,
            last_arrival: now,
            metrics: CoreMetrics::new(provider),
        };
        core.set_local_flag(false);
        core.set_spec(spec);
        core
    }

    /// A caller asks for a cell.
    pub fn on_arrival(&mut self, waiter: W, now: Instant) {
        self.sizer.arrival(now);
        self.last_arrival = now;
        self.waiters.push_back(waiter);
    }

    /// A caller whose cell went stale before it ran: back to the front.
    pub fn on_requeue(&mut self, waiter: W) {
        self.waiters.push_front(waiter);
    }

    /// Serves what is due, and says what to do next.
    pub fn step(&mut self, now: Instant) -> Step {
        self.count_direct(now);
        self.serve(now);
        let mut step = Step::default();
        let (due, wanted) = self.next_call(now);
        if !self.calling && !self.giving_back && due <= now {
            step.call = Some(self.start_call(wanted, now));
        }
        // While Redis is answering a call or an offer, its answer wakes us.
        let waiting_on_redis = self.calling || self.giving_back;
        let next_cell = self.next_cell_at(now);
        let mut wake = match (next_cell, waiting_on_redis) {
            (Some(cell), false) => cell.min(due),
            (Some(cell), true) => cell,
            (None, false) => due,
            (None, true) => now + HEARTBEAT,
        };
        if let Some(idle_at) = self.give_back_at() {
            if idle_at <= now && !self.calling {
                step.give_back = self.give_back();
            } else {
                wake = wake.min(idle_at.max(now + Duration::from_millis(1)));
            }
        }
        // Wake at the switch back too, so the mode (and its metric and
        // log) changes when it happens rather than at the next caller.
        if let Some(Phase::Holding { until }) = self.phase() {
            wake = wake.min(until);
        }
        step.wake_at = Some(wake);
        self.direct.set_refill_below(self.sizer.refill_below(now));
        step
    }

    /// Counts the cells callers took directly since the last look as
    /// arrivals served at once.
    fn count_direct(&mut self, now: Instant) {
        let taken = self.direct.take_count();
        if taken > 0 {
            self.sizer.arrivals(now, taken);
            self.last_arrival = now;
        }
    }

    /// Hands every cell due at `now` to the waiters, oldest first: leased
    /// cells first (they are the fleet's), then the local share's.
    fn serve(&mut self, now: Instant) {
        if let Some(Phase::Holding { until }) = self.phase()
            && now >= until
        {
            self.local = None;
            self.set_local_flag(false);
            tracing::info!(provider = %self.provider, instances = self.instances, "rate limiter back on the shared limit");
        }
        let direct = Arc::clone(&self.direct);
        let mut pool = direct.pool();
        let expired = pool.discard_expired(now);
        self.sizer.expired(expired);
        self.metrics.expired_cells.increment(u64::from(expired));
        while let Some(waiter) = self.waiters.front() {
            if waiter.is_closed() {
                self.waiters.pop_front();
                direct.served_one();
                continue;
            }
            let deadline = if let Some(deadline) = pool.take_due(now) {
                self.sizer.used();
                Some(deadline)
            } else {
                let spend = self.schedule.spend();
                self.local.as_mut().and_then(|fallback| {
                    if !fallback.may_take(now) {
                        return None;
                    }
                    let at = fallback.gcra.take(now, spend)?;
                    fallback.last_taken = Some(at);
                    Some(at + spend)
                })
            };
            let Some(deadline) = deadline else { break };
            // A caller that gave up since the check above wastes this one
            // cell: capacity lost, never the limit exceeded.
            if let Some(waiter) = self.waiters.pop_front() {
                direct.served_one();
                waiter.serve(deadline);
            }
        }
    }

    /// When to give the latest grant's unused cells back, if there are any
    /// and nobody waits for them: on the shared limit only (local cells are
    /// nobody else's).
    fn give_back_at(&self) -> Option<Instant> {
        let shared = self.local.is_none() && !self.giving_back;
        let stops_at = self.demand_stops_at().filter(|_| shared)?;
        self.direct.pool().tail().is_some().then_some(stops_at)
    }

    /// When this instance's demand counts as stopped, if nobody waits: no
    /// caller for [`GIVE_BACK_AFTER`].
    fn demand_stops_at(&self) -> Option<Instant> {
        self.waiters
            .is_empty()
            .then(|| self.last_arrival + GIVE_BACK_AFTER)
    }

    /// Offers the latest grant's pooled cells back to Redis; they wait for
    /// its answer ([`Core::on_given_back`]).
    fn give_back(&mut self) -> Option<Tail> {
        let tail = self.direct.pool().give_back()?;
        self.giving_back = true;
        self.metrics.redis_calls.increment(1);
        Some(tail)
    }

    /// Redis's answer to a give-back: taken, the cells are dropped (others
    /// lease their times now); refused, someone leased after them and they
    /// are this instance's to hand out again. Unanswered, Redis may have
    /// taken them: they are dropped, capacity lost rather than the limit
    /// risked.
    pub fn on_given_back(&mut self, tail: Tail, answer: Result<bool, LimiterError>) {
        self.giving_back = false;
        let dropped = match answer {
            Ok(taken) => {
                if taken {
                    self.metrics.given_back.increment(u64::from(tail.cells));
                }
                taken
            }
            Err(error) => {
                tracing::debug!(provider = %self.provider, error = %error, "no answer to giving leased cells back: dropping them");
                self.metrics.unanswered.increment(u64::from(tail.cells));
                true
            }
        };
        self.direct.pool().given_back(dropped);
    }

    /// When the next cell can go to the front waiter, if anyone waits.
    fn next_cell_at(&self, now: Instant) -> Option<Instant> {
        if self.waiters.is_empty() {
            return None;
        }
        let local = self.local.as_ref().and_then(|fallback| {
            let at = fallback.gcra.next_at(now);
            fallback.may_take(at).then_some(at)
        });
        match (self.direct.pool().next_at(), local) {
            (Some(pooled), Some(local)) => Some(pooled.min(local)),
            (pooled, local) => pooled.or(local),
        }
    }

    fn phase(&self) -> Option<Phase> {
        self.local.as_ref().map(|fallback| fallback.phase)
    }

    /// When the next Redis call is due, and how many cells it should ask for.
    fn next_call(&self, now: Instant) -> (Instant, u32) {
        let wanted = match self.phase() {
            // A probe asks for nothing: nobody may lease before the hold
            // that the return announces.
            Some(Phase::Unreachable) => 0,
            // Demand has stopped: lease nothing for the arrivals the rate
            // estimate still expects. Those cells went back to the fleet
            // (give-back) at once, and were leased again, in a loop of
            // calls until the estimate decayed: 345 calls in the second after
            // 10,000/s stopped (timing.rs).
            _ if self.demand_stops_at().is_some_and(|at| at <= now) => 0,
            _ => self.sizer.want(
                self.waiters.len(),
                self.direct.pool().len(),
                &self.schedule,
                now,
            ),
        };
        let heartbeat = self.last_call + HEARTBEAT;
        // New cells would come after the pooled ones (demand.rs).
        let in_reach = self
            .direct
            .pool()
            .last_at()
            .map_or(now, |last| last.checked_sub(POOL_REACH).unwrap_or(now));
        let due = match self.phase() {
            Some(Phase::Unreachable | Phase::Announcing) => self.retry_at,
            // Even with the horizon full, call once per heartbeat: that is
            // how a hold is heard of in time.
            _ if wanted > 0 => self.retry_at.max(in_reach).min(heartbeat),
            _ => heartbeat,
        };
        (due, wanted)
    }

    fn start_call(&mut self, wanted: u32, now: Instant) -> Call {
        if wanted > 0 {
            self.sizer.on_lease();
        }
        self.last_call = now;
        self.calling = true;
        self.metrics.redis_calls.increment(1);
        Call {
            schedule: self.schedule,
            wanted,
            standing: Standing {
                epoch_us: self.epoch,
                returning: self.phase() == Some(Phase::Announcing),
                hold_for: NOTICE + self.schedule.lateness + self.schedule.interval(),
            },
        }
    }

    /// A lease call came back.
    pub fn on_reply(&mut self, reply: Reply) {
        self.calling = false;
        let Reply {
            sent,
            received,
            wanted,
            result,
        } = reply;
        let (took, budget) = (received - sent, self.schedule.spend());
        match result {
            // Every cell of a reply slower than the budget is stale on
            // arrival, and a hold it names is heard of again at the next call.
            Ok(grant) if took > budget => {
                self.metrics.stale_cells.increment(u64::from(grant.granted));
                self.on_failure(LimiterError::SlowReply { took, budget }, received);
            }
            Ok(grant) => self.on_grant(&grant, sent, received, wanted),
            Err(error) => self.on_failure(error, received),
        }
    }

    fn on_grant(&mut self, grant: &Grant, sent: Instant, received: Instant, wanted: u32) {
        let new_epoch = self.epoch.is_some_and(|epoch| epoch != grant.epoch_us);
        self.epoch = Some(grant.epoch_us);
        // Around a switch Redis counts only the instances heard from since
        // it came back: keep the larger count, a smaller share is safe.
        let instances = grant.instances.max(1);
        self.set_instances(
            match self.local.is_some() || grant.hold_us.is_some() || new_epoch {
                true => self.instances.max(instances),
                false => instances,
            },
        );
        self.backoff = PROBE_MIN;
        self.slow_replies = 0;
        self.last_ok = sent;
        self.direct
            .pool()
            .add(grant, sent, received, self.schedule.spend());
        // The horizon is full: wait until a useful part of it frees up,
        // rather than calling again for a cell or two at a time.
        self.retry_at = if grant.granted < wanted {
            let short = self.schedule.interval() * (wanted - grant.granted);
            grant.next_fits_at(received, HORIZON) + short.min(HORIZON / 2)
        } else {
            received
        };
        self.switch_on_grant(grant, sent, received);
    }

    fn set_instances(&mut self, instances: u32) {
        if instances != self.instances {
            self.instances = instances;
            self.reshare();
        }
    }

    /// Applies a new limit (a hot reload) to the same shared timeline.
    pub fn set_spec(&mut self, spec: RateLimitSpec) {
        self.spec = spec;
        self.schedule = Schedule::new(&spec);
        if self.schedule.is_slowed(&spec) {
            tracing::warn!(
                provider = %self.provider,
                requests = spec.requests,
                per = ?spec.per,
                burst = spec.burst,
                interval = ?self.schedule.interval(),
                "rate limit burst too small to share across instances at full rate: spacing requests wider"
            );
        }
        self.reshare();
    }

    /// Applies the current spec and instance count to the local share.
    fn reshare(&mut self) {
        if let Some(fallback) = &mut self.local {
            let share = LocalShare::new(&self.spec, &self.schedule, self.instances);
            fallback.gcra.reconfigure(share);
        }
    }

    fn set_local_flag(&self, local: bool) {
        self.local_flag.store(local, Ordering::Relaxed);
        self.metrics.local.set(if local { 1.0 } else { 0.0 });
    }
}
