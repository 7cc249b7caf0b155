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

use super::LimiterError;
use super::RateLimitSpec;
use super::demand::LeaseSizer;
use super::direct::Direct;
use super::gcra::Schedule;
use super::local::{LocalGcra, LocalShare};
use super::pool::{Grant, Tail};
use super::redis::{CALL_TIMEOUT, HORIZON, Standing};

/// Every instance on the shared limit calls Redis at least this often,
/// keeping its heartbeat fresh and hearing of holds in time.
pub(super) const HEARTBEAT: Duration = Duration::from_millis(500);
/// Backoff between probes of an unreachable Redis.
const PROBE_MIN: Duration = Duration::from_millis(50);
const PROBE_MAX: Duration = Duration::from_millis(250);
/// How long any instance may take to hear that Redis is back, or of a hold:
/// one on the shared limit within `HEARTBEAT + CALL_TIMEOUT`, one on its
/// local share within two probes (the first after Redis is back may still
/// fail on the connection manager's cached error), `2·(PROBE_MAX +
/// CALL_TIMEOUT)`; plus room for a busy runtime.
const NOTICE: Duration = Duration::from_millis(1500);
/// How long after its last call that got through an instance may find
/// Redis again and go straight back to the shared limit (docs/limiter.md).
const BLIP: Duration = Duration::from_secs(1);
/// Least time between losing Redis and the first local cell: every instance
/// has then called Redis since it went away (so all of them are local), or
/// Redis is back and this instance hears of it first (docs/limiter.md).
pub(super) const FALLBACK_DELAY: Duration = HEARTBEAT
    .saturating_add(CALL_TIMEOUT)
    .saturating_add(BLIP)
    .saturating_add(NOTICE);
/// How long an instance with leased cells left over waits for another
/// caller before it gives them back to the fleet (its demand has stopped),
/// rather than let them expire unused while other instances wait behind them.
const GIVE_BACK_AFTER: Duration = Duration::from_millis(25);
/// Replies slower than the spend budget in a row, over at least
/// [`SLOW_FOR`], that mean Redis is too far for this limit (each one's cells
/// are stale on arrival): fall back. A few slow replies in a burst are a
/// hiccup (a process starting, a busy machine): they waste a lease, where
/// falling back would take local cells beside a fleet still on the shared limit.
const SLOW_REPLIES_TO_FALL_BACK: u32 = 3;
const SLOW_FOR: Duration = HEARTBEAT;

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

/// The local share while this instance is off the shared limit.
struct Fallback {
    gcra: LocalGcra,
    phase: Phase,
    /// When the last local cell was taken: one taken after the switch point
    /// means this instance heard of the hold too late.
    last_taken: Option<Instant>,
    /// When this instance last found Redis unusable.
    fell_back: Instant,
    /// When its last call before that went out that got through: Redis
    /// became unusable after it.
    usable_at: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Redis is unusable: local cells (from the GCRA's start on), and probes.
    Unreachable,
    /// A probe got through: no local cell until the fleet's switch back to
    /// the shared limit is known; the next call announces the return.
    Announcing,
    /// The fleet switches back at a hold: local cells until `until`.
    Holding { until: Instant },
}

impl Fallback {
    fn may_take(&self, at: Instant) -> bool {
        match self.phase {
            Phase::Unreachable => true,
            Phase::Announcing => false,
            Phase::Holding { until } => at < until,
        }
    }
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
        let idle = self.waiters.is_empty() && self.local.is_none() && !self.giving_back;
        (idle && self.direct.pool().tail().is_some()).then(|| self.last_arrival + GIVE_BACK_AFTER)
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
            _ => self.sizer.want(
                self.waiters.len(),
                self.direct.pool().len(),
                &self.schedule,
                now,
            ),
        };
        let heartbeat = self.last_call + HEARTBEAT;
        let due = match self.phase() {
            Some(Phase::Unreachable | Phase::Announcing) => self.retry_at,
            // Even with the horizon full, call once per heartbeat: that is
            // how a hold is heard of in time.
            _ if wanted > 0 => self.retry_at.min(heartbeat),
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
        let returning = matches!(self.phase(), Some(Phase::Unreachable | Phase::Announcing));
        match grant.hold_us {
            // A hold seen before still applies to an instance that has
            // fallen back since: it must stop at the same switch.
            Some(hold) if returning || self.hold_seen != Some(hold) => {
                self.hold_seen = Some(hold);
                self.on_hold(grant, hold, sent, received);
            }
            Some(_) => {}
            None => {
                if let Some(fallback) = &mut self.local
                    && fallback.phase == Phase::Unreachable
                {
                    let took_local = fallback
                        .last_taken
                        .is_some_and(|taken| taken >= fallback.fell_back);
                    if !took_local && received + NOTICE <= fallback.usable_at + FALLBACK_DELAY {
                        // A blip: nobody can have taken a local cell.
                        self.local = None;
                        self.set_local_flag(false);
                        tracing::info!(provider = %self.provider, instances = self.instances, "rate limiter back on the shared limit");
                    } else {
                        // Redis is back: stop taking local cells (an instance
                        // that never noticed the outage may lease again) and
                        // announce the return at once, which starts the hold.
                        fallback.phase = Phase::Announcing;
                        self.retry_at = received;
                        tracing::info!(provider = %self.provider, "redis reachable again: announcing the return to the shared limit");
                    }
                }
            }
        }
    }

    /// The fleet switches back to the shared limit at `hold` (Redis time):
    /// local cells from `HORIZON + L + Tl` after hearing of it until
    /// `L + Ts` before it.
    fn on_hold(&mut self, grant: &Grant, hold: u64, sent: Instant, received: Instant) {
        let margin = self.schedule.lateness + self.schedule.interval();
        let switch = grant.local_no_later_than(sent, hold);
        let until = switch.checked_sub(margin).unwrap_or(sent).max(sent);
        let share = LocalShare::new(&self.spec, &self.schedule, self.instances);
        let start = received + HORIZON + self.schedule.lateness + share.interval;
        let switch_in_ms = switch.saturating_duration_since(received).as_millis() as u64;
        match &mut self.local {
            Some(fallback) => {
                if fallback.last_taken.is_some_and(|taken| taken >= until) {
                    tracing::warn!(provider = %self.provider, "heard of the fleet's switch back to the shared limit too late: some local requests may have overlapped shared ones");
                }
                // This replaces the fallback delay, which only waited to hear
                // from Redis; it continues the local schedule with no burst
                // in hand.
                let start = fallback
                    .last_taken
                    .map_or(start, |taken| start.max(taken + share.interval));
                fallback.gcra = LocalGcra::new(share, start);
                fallback.phase = Phase::Holding { until };
                tracing::info!(provider = %self.provider, switch_in_ms, "fleet switching back to the shared limit: local share until then");
            }
            None if start < until => {
                self.local = Some(Fallback {
                    gcra: LocalGcra::new(share, start),
                    phase: Phase::Holding { until },
                    last_taken: None,
                    fell_back: received,
                    usable_at: sent,
                });
                self.set_local_flag(true);
                tracing::info!(provider = %self.provider, switch_in_ms, instances = self.instances, "fleet switching back to the shared limit: local share until then");
            }
            // Too close to the switch for a local cell: the pool serves.
            None => {}
        }
    }

    fn on_failure(&mut self, error: LimiterError, now: Instant) {
        if matches!(self.phase(), Some(Phase::Unreachable)) {
            tracing::debug!(provider = %self.provider, error = %error, "redis still unusable");
        } else if matches!(error, LimiterError::SlowReply { .. })
            && !matches!(self.phase(), Some(Phase::Announcing))
            && (self.slow_replies + 1 < SLOW_REPLIES_TO_FALL_BACK
                || now < self.slow_since + SLOW_FOR)
        {
            // Slow replies for a moment are waste, not yet an outage: call again.
            if self.slow_replies == 0 {
                self.slow_since = now;
            }
            self.slow_replies += 1;
            return;
        } else {
            self.fall_back(&error, now);
        }
        self.retry_at = now + self.backoff;
        self.backoff = (self.backoff * 2).min(PROBE_MAX);
    }

    /// Redis found unusable at `now` (from the shared limit, or while
    /// switching back): local cells after the fallback delay.
    fn fall_back(&mut self, error: &LimiterError, now: Instant) {
        let share = LocalShare::new(&self.spec, &self.schedule, self.instances);
        // An instance that never had a lease holds no cell anyone could
        // bunch with, and could not know whom to wait for: no delay.
        let delay = match self.epoch {
            Some(_) => FALLBACK_DELAY.max(HORIZON + self.schedule.lateness + share.interval),
            None => Duration::ZERO,
        };
        match &mut self.local {
            Some(fallback) => {
                fallback.gcra.hold_until(now + delay);
                fallback.phase = Phase::Unreachable;
                fallback.fell_back = now;
                fallback.usable_at = self.last_ok;
            }
            None => {
                self.local = Some(Fallback {
                    gcra: LocalGcra::new(share, now + delay),
                    phase: Phase::Unreachable,
                    last_taken: None,
                    fell_back: now,
                    usable_at: self.last_ok,
                });
            }
        }
        self.slow_replies = 0;
        self.set_local_flag(true);
        tracing::warn!(
            provider = %self.provider,
            error = %error,
            instances = self.instances,
            local_in_ms = delay.as_millis() as u64,
            local_interval = ?share.interval,
            "rate limiter falling back to local"
        );
        if !share.exact {
            tracing::warn!(
                provider = %self.provider,
                burst = self.spec.burst,
                instances = self.instances,
                "rate limit burst smaller than the instances sharing it: their local shares can overlap, so the provider may refuse some requests"
            );
        }
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
