//! [`SharedLimiter`]: one task per provider owns the leased cells and hands
//! them to callers in arrival order.
//!
//! A single task (rather than a lock) keeps the rules simple: callers queue
//! FIFO, at most one Redis call is in flight per provider and instance, and
//! one timer serves every waiter. Callers reach it through a channel and wait
//! on a oneshot; the task stops when the last handle is dropped.
//!
//! The fast path: a caller that finds nobody queued and a pooled cell due
//! takes it itself, under the pool's lock, without the two task hand-offs of
//! the round trip (at thousands of requests a second they were a tenth of
//! syncflow's CPU). The task learns of those takes in bulk ([`Direct`]) and
//! is woken when the pool runs low, so it leases on time as before.
//!
//! ## Switching between the shared limit and the local share
//!
//! The contract (module docs) holds across the switches, given what an
//! instance can know:
//! - (A1) Redis is usable by every instance or by none: it is down,
//!   restarting or flushed, not partitioned from some instances only nor
//!   slow for some only;
//! - (A2) the instances count the same `N` (none joins during an outage),
//!   and the burst is at least `N` (local.rs);
//! - (A3) calls are timely: one on the shared limit calls Redis at least
//!   every [`HEARTBEAT`], one on its local share probes at least every
//!   [`PROBE_MAX`], a call ends within [`CALL_TIMEOUT`], so every instance
//!   hears that Redis is back, or of a hold (below), within [`NOTICE`].
//!
//! Three facts carry the argument (`T`: the provider's interval, `b`: its
//! burst, `L`: the lateness budget, `Tl ≥ N·T`: the local share's interval):
//! - leased cells conform on Redis's clock no later than Redis's `now` at
//!   their lease plus [`HORIZON`], and start at most `L` after (pool.rs);
//! - local shares started with no burst in hand at `λ` or later (the `i`-th
//!   cell of each no earlier than `λ + (i-1)·Tl`) put at most `(y-λ)/T + N`
//!   starts into a window `[x, y]`; the shared timeline after a hold at `h`
//!   (TAT moved to `h + taus`) puts at most `(y-h)/T + 1` there;
//! - junction: if starts `A` conform and all come before `e`, and starts `B`
//!   conform and put at most `(y-λ)/T + k` into any `[x, y]`, with
//!   `λ ≥ e + k·T`, then `A ∪ B` conforms: `[x, y]` holds at most
//!   `(e-x)/T + b` of `A` and `(y-λ)/T + k` of `B`, so at most `(y-x)/T + b`
//!   in all, which for a whole number of starts is the contract.
//!
//! Going local: an instance that finds Redis unusable at `f` keeps handing
//! out its pooled cells, and takes local cells, with no burst in hand, from
//! `λ = f + max(HORIZON + L + Tl, FALLBACK_DELAY)`. By (A1) nothing is leased
//! after `f`, so every shared start comes before `f + HORIZON + L`: the
//! junction with `k = N`. [`FALLBACK_DELAY`] is for Redis coming back: no
//! instance may take a local cell while another leases outside a hold. Let
//! `u` be when this instance's last call that got through went out: the
//! outage began after `u`, so every instance's `λ` is at least
//! `u + FALLBACK_DELAY`. If Redis stays away longer than `HEARTBEAT +
//! CALL_TIMEOUT`, every instance finds it unusable (A3), and all of them come
//! back through a hold (their probes lease nothing). If it is back sooner,
//! an instance that never noticed may lease at once; but every instance that
//! did notice hears that Redis is back within `NOTICE` (A3), before its `λ`,
//! and then takes no local cell until it hears of a hold. For the same
//! reason an instance that finds Redis again by `u + FALLBACK_DELAY - NOTICE`
//! (after a blip of up to about [`BLIP`]), having taken no local cell, goes
//! straight back to the shared limit without a hold: nobody can have taken
//! one. (The colleague's "one interval after the last cell granted" is not
//! enough: the other instances keep spending cells leased up to `HORIZON`
//! ahead, and after a burst the TAT is further than one interval.)
//!
//! Coming back: the first instance that reaches Redis after its fallback
//! (or that finds Redis's state lost: a new epoch, redis.rs) starts a hold
//! `h = now + NOTICE + L + Ts` and moves the TAT to `h + taus`: no shared
//! cell conforms before `h`, and the first comes with no burst in hand.
//! Every instance hears of it within `NOTICE` (A3) and then takes local
//! cells, with no burst in hand, from `HORIZON + L + Tl` after hearing
//! (whatever was leased before the hold began starts before that, as above;
//! this replaces the fallback delay) until `h - L - Ts`, mapped to its clock
//! so that it is never later on Redis's; one still on the shared limit goes
//! local for that window. The local starts all come before `h - Ts`: the
//! junction with `k = 1`, `λ = h`. (Waiting only for this instance's own
//! local schedule to elapse is not enough: the others' local shares run on
//! until they notice, and a restarted Redis grants a fresh burst to whoever
//! calls it first.)
//!
//! Outside these assumptions the fallback still runs but the fleet can go
//! over the limit: a Redis too slow for one instance only (it falls back,
//! the others keep the whole rate), a partition, an instance started during
//! an outage (it counts only itself), a burst smaller than the instances
//! (local.rs), an instance that hears of a hold late (its log says so).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use metrics::{Counter, Gauge};
use redis::aio::ConnectionManager;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;

use super::demand::LeaseSizer;
use super::gcra::Schedule;
use super::local::{LocalGcra, LocalShare};
use super::pool::{Grant, Pool};
use super::redis::{CALL_TIMEOUT, HORIZON, LeaseClient, Standing};
use super::{LimiterError, LimiterMode, RateLimitSpec};

/// Every instance on the shared limit calls Redis at least this often,
/// keeping its heartbeat fresh and hearing of holds in time.
const HEARTBEAT: Duration = Duration::from_millis(500);
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
/// Redis again and go straight back to the shared limit (module docs).
const BLIP: Duration = Duration::from_secs(1);
/// Least time between losing Redis and the first local cell: every instance
/// has then called Redis since it went away (so all of them are local), or
/// Redis is back and this instance hears of it first (module docs).
pub(super) const FALLBACK_DELAY: Duration = HEARTBEAT
    .saturating_add(CALL_TIMEOUT)
    .saturating_add(BLIP)
    .saturating_add(NOTICE);
/// How long an instance with leased cells left over waits for another
/// caller before it gives them back to the fleet (its demand has stopped:
/// a drained backlog, a quiet stream), rather than let them expire unused
/// while other instances wait behind them.
const GIVE_BACK_AFTER: Duration = Duration::from_millis(25);
/// Replies slower than the spend budget in a row, over at least
/// [`SLOW_FOR`], that mean Redis is too far for this limit (each one's cells
/// are stale on arrival): fall back. A few slow replies in a burst are a
/// hiccup (a process starting, its connection and script being set up, a
/// busy machine): they waste a lease, where falling back would take local
/// cells beside a fleet still on the shared limit.
const SLOW_REPLIES_TO_FALL_BACK: u32 = 3;
const SLOW_FOR: Duration = HEARTBEAT;

/// A provider's limit, shared with every instance through Redis; cheap to clone.
///
/// Create it inside a tokio runtime, after the metrics recorder is installed.
#[derive(Clone)]
pub struct SharedLimiter {
    inner: Arc<Handle>,
}

struct Handle {
    provider: String,
    requests: mpsc::UnboundedSender<Request>,
    direct: Arc<Direct>,
    local: Arc<AtomicBool>,
    /// Cells handed to a caller that ran only after their deadline.
    late_cells: Counter,
}

/// Where the task sends a waiter its cell's deadline.
type Waiter = oneshot::Sender<Instant>;

/// What callers share with the task for the fast path.
#[derive(Default)]
struct Direct {
    pool: Mutex<Pool>,
    /// Callers sent to the task and not yet served: while any wait, nobody
    /// takes a cell around them (FIFO).
    queued: AtomicUsize,
    /// Cells taken directly since the task last looked: arrivals and spent
    /// cells for its lease sizing.
    taken: AtomicU32,
    /// A direct take that leaves fewer pooled cells than this wakes the task:
    /// the demand the pool must cover until a lease comes back.
    refill_below: AtomicUsize,
    low: Notify,
}

impl Direct {
    fn pool(&self) -> MutexGuard<'_, Pool> {
        self.pool.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A pooled cell due now, if nobody is queued for one; its deadline.
    fn take(&self) -> Option<Instant> {
        if self.queued.load(Ordering::Acquire) != 0 {
            return None;
        }
        let now = Instant::now();
        let mut pool = self.pool();
        let deadline = pool.take_fresh(now)?;
        let left = pool.len();
        drop(pool);
        self.taken.fetch_add(1, Ordering::Relaxed);
        if left < self.refill_below.load(Ordering::Relaxed) {
            self.low.notify_one();
        }
        Some(deadline)
    }
}

enum Request {
    Acquire(Waiter),
    /// A caller whose cell went stale before it ran: back to the queue's front.
    Requeue(Waiter),
    SetSpec(RateLimitSpec),
}

impl std::fmt::Debug for SharedLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedLimiter")
            .field("provider", &self.inner.provider)
            .field("mode", &self.mode())
            .finish()
    }
}

impl SharedLimiter {
    pub fn new(
        redis: ConnectionManager,
        provider: &str,
        spec: RateLimitSpec,
    ) -> Result<Self, LimiterError> {
        spec.validate()?;
        let (requests, queue) = mpsc::unbounded_channel();
        let local = Arc::new(AtomicBool::new(false));
        let direct = Arc::new(Direct::default());
        let now = Instant::now();
        let mut state = State {
            provider: provider.to_owned(),
            client: Arc::new(LeaseClient::new(redis, provider)),
            spec,
            schedule: Schedule::new(&spec),
            local: None,
            local_flag: Arc::clone(&local),
            direct: Arc::clone(&direct),
            sizer: LeaseSizer::new(now),
            waiters: VecDeque::new(),
            instances: 1,
            epoch: None,
            hold_seen: None,
            last_ok: now,
            // Call at once: registers this instance and finds out whether
            // Redis is there before anyone waits on it.
            last_call: now.checked_sub(HEARTBEAT).unwrap_or(now),
            retry_at: now,
            backoff: PROBE_MIN,
            slow_replies: 0,
            slow_since: now,
            local_gauge: metrics::gauge!("syncflow_limiter_local", "provider" => provider.to_owned()),
            redis_calls: metrics::counter!("syncflow_limiter_redis_calls_total", "provider" => provider.to_owned()),
            last_arrival: now,
            given_back: metrics::counter!("syncflow_limiter_given_back_cells_total", "provider" => provider.to_owned()),
            expired_cells: wasted_cells(provider, "expired"),
            stale_cells: wasted_cells(provider, "slow_reply"),
        };
        state.local_gauge.set(0.0);
        state.apply_spec(spec);
        tokio::spawn(state.run(queue));
        Ok(SharedLimiter {
            inner: Arc::new(Handle {
                provider: provider.to_owned(),
                requests,
                direct,
                local,
                late_cells: wasted_cells(provider, "late"),
            }),
        })
    }

    /// Waits, in FIFO order with the other callers of this instance, until one
    /// request may start; returns how long that took.
    pub async fn acquire(&self) -> Result<Duration, LimiterError> {
        Ok(self.acquire_cell(false).await?.0)
    }

    /// Like [`SharedLimiter::acquire`], and returns the instant by which the
    /// request must have started (the cell's deadline), for a caller with
    /// more to do before it starts. `requeue`: the caller's previous cell
    /// went stale unused, so it waits at the front of the queue.
    pub async fn acquire_cell(&self, requeue: bool) -> Result<(Duration, Instant), LimiterError> {
        let started = Instant::now();
        let stopped = || LimiterError::Stopped(self.inner.provider.clone());
        if !requeue && let Some(deadline) = self.inner.direct.take() {
            return Ok((started.elapsed(), deadline));
        }
        let mut request: fn(Waiter) -> Request = match requeue {
            true => Request::Requeue,
            false => Request::Acquire,
        };
        loop {
            let (waiter, cell) = oneshot::channel();
            self.inner.direct.queued.fetch_add(1, Ordering::AcqRel);
            if self.inner.requests.send(request(waiter)).is_err() {
                self.inner.direct.queued.fetch_sub(1, Ordering::AcqRel);
                return Err(stopped());
            }
            let deadline = cell.await.map_err(|_| stopped())?;
            // This task may run well after the cell was handed over (a busy
            // runtime). Starting past the cell's deadline could bunch with
            // other instances' cells, so that cell is spent: wait for the next.
            if Instant::now() <= deadline {
                return Ok((started.elapsed(), deadline));
            }
            self.inner.late_cells.increment(1);
            request = Request::Requeue;
        }
    }

    /// Applies a new limit to the same Redis key, without resetting it.
    pub fn set_spec(&self, spec: RateLimitSpec) -> Result<(), LimiterError> {
        spec.validate()?;
        self.inner
            .requests
            .send(Request::SetSpec(spec))
            .map_err(|_| LimiterError::Stopped(self.inner.provider.clone()))
    }

    pub fn mode(&self) -> LimiterMode {
        if self.inner.local.load(Ordering::Relaxed) {
            LimiterMode::Local
        } else {
            LimiterMode::Shared
        }
    }
}

/// Leased cells that went unused: capacity lost to lateness (a slow Redis
/// reply, a busy runtime), never a request over the limit.
fn wasted_cells(provider: &str, reason: &'static str) -> Counter {
    metrics::counter!("syncflow_limiter_wasted_cells_total", "provider" => provider.to_owned(), "reason" => reason)
}

type Call = Pin<Box<dyn Future<Output = Reply> + Send>>;

struct Reply {
    sent: Instant,
    received: Instant,
    wanted: u32,
    result: Result<Grant, LimiterError>,
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

/// Everything the limiter's task owns.
struct State {
    provider: String,
    client: Arc<LeaseClient>,
    spec: RateLimitSpec,
    schedule: Schedule,
    /// Some while cells come from the local share; pooled cells stay valid.
    local: Option<Fallback>,
    local_flag: Arc<AtomicBool>,
    /// The pool, shared with callers taking cells directly.
    direct: Arc<Direct>,
    sizer: LeaseSizer,
    waiters: VecDeque<Waiter>,
    /// Instances sharing the limit, as Redis last counted them.
    instances: u32,
    /// The epoch of the last grant; none before the first.
    epoch: Option<u64>,
    /// The last hold acted on (Redis microseconds).
    hold_seen: Option<u64>,
    /// When the last call that got through went out.
    last_ok: Instant,
    last_call: Instant,
    /// No lease call before this (after a short grant, or the next probe).
    retry_at: Instant,
    backoff: Duration,
    slow_replies: u32,
    /// When the first of the current run of slow replies came.
    slow_since: Instant,
    local_gauge: Gauge,
    redis_calls: Counter,
    /// When the last caller came.
    last_arrival: Instant,
    given_back: Counter,
    expired_cells: Counter,
    stale_cells: Counter,
}

impl State {
    async fn run(mut self, mut queue: mpsc::UnboundedReceiver<Request>) {
        let mut call: Option<Call> = None;
        let timer = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(timer);
        loop {
            let now = Instant::now();
            self.count_direct(now);
            self.serve(now);
            let (due, wanted) = self.next_call(now);
            if call.is_none() && due <= now {
                call = Some(self.start_call(wanted, now));
            }
            let next_cell = self.next_cell_at(now);
            let mut wake = match (next_cell, call.is_none()) {
                (Some(cell), true) => cell.min(due),
                (Some(cell), false) => cell,
                (None, true) => due,
                (None, false) => now + HEARTBEAT,
            };
            if let Some(idle_at) = self.give_back_at() {
                if idle_at <= now {
                    self.give_back();
                } else {
                    wake = wake.min(idle_at);
                }
            }
            // Wake at the switch back too, so the mode (and its metric and
            // log) changes when it happens rather than at the next caller.
            if let Some(Phase::Holding { until }) = self.local.as_ref().map(|f| f.phase) {
                wake = wake.min(until);
            }
            timer.as_mut().reset(wake);
            self.direct
                .refill_below
                .store(self.sizer.refill_below(now), Ordering::Relaxed);
            tokio::select! {
                request = queue.recv() => match request {
                    Some(Request::Acquire(waiter)) => {
                        self.sizer.arrival(now);
                        self.last_arrival = now;
                        self.waiters.push_back(waiter);
                    }
                    Some(Request::Requeue(waiter)) => self.waiters.push_front(waiter),
                    Some(Request::SetSpec(spec)) => self.apply_spec(spec),
                    None => return,
                },
                () = self.direct.low.notified() => {}
                reply = async { call.as_mut().expect("guarded by is_some").await }, if call.is_some() => {
                    call = None;
                    self.on_reply(reply);
                }
                () = &mut timer => {}
            }
        }
    }

    /// Counts the cells callers took directly since the last look as
    /// arrivals served at once.
    fn count_direct(&mut self, now: Instant) {
        let taken = self.direct.taken.swap(0, Ordering::Relaxed);
        if taken > 0 {
            self.sizer.arrivals(now, taken);
            self.last_arrival = now;
        }
    }

    /// Hands every cell due at `now` to the waiters, oldest first: leased
    /// cells first (they are the fleet's), then the local share's.
    fn serve(&mut self, now: Instant) {
        if let Some(Phase::Holding { until }) = self.local.as_ref().map(|f| f.phase)
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
        self.expired_cells.increment(u64::from(expired));
        while let Some(waiter) = self.waiters.front() {
            if waiter.is_closed() {
                self.waiters.pop_front();
                direct.queued.fetch_sub(1, Ordering::AcqRel);
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
                direct.queued.fetch_sub(1, Ordering::AcqRel);
                let _ = waiter.send(deadline);
            }
        }
    }

    /// When to give the latest grant's unused cells back, if there are any
    /// and nobody waits for them: on the shared limit only (local cells are
    /// nobody else's).
    fn give_back_at(&self) -> Option<Instant> {
        let idle = self.waiters.is_empty() && self.local.is_none();
        (idle && self.direct.pool().tail().is_some()).then(|| self.last_arrival + GIVE_BACK_AFTER)
    }

    /// Drops the latest grant's pooled cells and asks Redis to take them
    /// back; if someone leased after them, Redis keeps its timeline and the
    /// cells are only lost, as they would have been by expiring.
    fn give_back(&mut self) {
        let Some(tail) = self.direct.pool().give_back() else {
            return;
        };
        self.redis_calls.increment(1);
        let (client, provider, given_back) = (
            Arc::clone(&self.client),
            self.provider.clone(),
            self.given_back.clone(),
        );
        tokio::spawn(async move {
            match client.give_back(tail).await {
                Ok(true) => given_back.increment(u64::from(tail.cells)),
                Ok(false) => {}
                Err(error) => {
                    tracing::debug!(provider, error = %error, "could not give leased cells back");
                }
            }
        });
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
            // how a hold is heard of in time (A3).
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
        self.redis_calls.increment(1);
        let client = Arc::clone(&self.client);
        let schedule = self.schedule;
        let standing = Standing {
            epoch_us: self.epoch,
            returning: self.phase() == Some(Phase::Announcing),
            hold_for: NOTICE + self.schedule.lateness + self.schedule.interval(),
        };
        Box::pin(async move {
            let sent = Instant::now();
            let result = client.lease(schedule, wanted, standing).await;
            Reply {
                sent,
                received: Instant::now(),
                wanted,
                result,
            }
        })
    }

    fn on_reply(&mut self, reply: Reply) {
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
                self.stale_cells.increment(u64::from(grant.granted));
                self.on_failure(LimiterError::SlowReply { took, budget });
            }
            Ok(grant) => self.on_grant(&grant, sent, received, wanted),
            Err(error) => self.on_failure(error),
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
                        // A blip: nobody can have taken a local cell (module docs).
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
    /// `L + Ts` before it (module docs).
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

    fn on_failure(&mut self, error: LimiterError) {
        let now = Instant::now();
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

    fn apply_spec(&mut self, spec: RateLimitSpec) {
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
        self.local_gauge.set(if local { 1.0 } else { 0.0 });
    }
}
