//! A fake Redis for the limiter, on tokio's clock, and a small simulation
//! harness: instances, callers and a provider that counts what arrives.
//!
//! With `#[tokio::test(start_paused = true)]` time advances only when every
//! task waits, so a simulated second takes milliseconds and every run is the
//! same: timing properties are asserted exactly, where a real Redis on a
//! busy machine would need generous bounds (tests.rs keeps a few of those,
//! to check the Lua scripts themselves).
//!
//! [`FakeRedis`] runs the lease and give-back scripts of redis.rs, line for
//! line, on a clock in microseconds. It can be slow (a latency before and
//! after each call, with jitter), down (calls fail after the latency),
//! paused (calls hang until the client's timeout, like `CLIENT PAUSE`),
//! restarted (its state lost), failing the next few calls (a connection's
//! cached error) or flapping (down for a moment right after a call got
//! through).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

use super::gcra::Schedule;
use super::pool::{Grant, Tail};
use super::redis::{BoxFuture, HORIZON, INSTANCE_TTL, LeaseBackend, Standing, within_call_timeout};
use super::{LimiterError, RateLimitSpec, SharedLimiter};

/// The provider's key as the scripts keep it (redis.rs): TAT, epoch, hold
/// (0: none), each instance's last call, and when the key expires.
#[derive(Debug)]
struct State {
    tat: u64,
    epoch: u64,
    hold: u64,
    /// Instance id → last call.
    instances: BTreeMap<String, u64>,
    expires: u64,
}

#[derive(Debug, Default)]
struct Controls {
    /// One way, before and after the script runs.
    latency: Duration,
    /// Up to this much more, at random, each way.
    jitter: Duration,
    down: bool,
    paused: bool,
    /// The next this many calls fail (a connection's cached error).
    fail_next: u32,
    /// The next successful call's reply takes this much longer.
    slow_next: Duration,
    /// After the next successful call, Redis goes down for this long.
    flap_after_next: Option<Duration>,
}

/// A Redis for limiters on tokio's clock.
pub(super) struct FakeRedis {
    origin: Instant,
    /// Redis's clock at `origin`, µs: far from zero, like a real one.
    base_us: u64,
    /// The provider's key; none while absent (never set, expired, lost).
    state: Mutex<Option<State>>,
    controls: Mutex<Controls>,
    rng: Mutex<StdRng>,
    calls: Mutex<u64>,
}

impl FakeRedis {
    pub fn new(seed: u64) -> Arc<Self> {
        Arc::new(FakeRedis {
            origin: Instant::now(),
            base_us: 1_700_000_000_000_000,
            state: Mutex::default(),
            controls: Mutex::default(),
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
            calls: Mutex::new(0),
        })
    }

    fn now_us(&self) -> u64 {
        self.base_us + self.origin.elapsed().as_micros() as u64
    }

    pub fn set_latency(&self, latency: Duration, jitter: Duration) {
        let mut c = self.controls.lock().unwrap();
        c.latency = latency;
        c.jitter = jitter;
    }

    pub fn set_down(&self, down: bool) {
        self.controls.lock().unwrap().down = down;
    }

    /// The next `calls` calls fail, and the reply of the one after them
    /// comes `then_slow` later (a reconnect, the scripts loaded again).
    pub fn fail_next(&self, calls: u32, then_slow: Duration) {
        let mut c = self.controls.lock().unwrap();
        c.fail_next = calls;
        c.slow_next = then_slow;
    }

    /// Right after the next lease call that gets through, Redis goes down
    /// for `down_for`: the calls after it fail.
    pub fn flap_after_next(&self, down_for: Duration) {
        self.controls.lock().unwrap().flap_after_next = Some(down_for);
    }

    fn after_success(self: &Arc<Self>) {
        let flap = self.controls.lock().unwrap().flap_after_next.take();
        if let Some(down_for) = flap {
            self.set_down(true);
            let redis = Arc::clone(self);
            tokio::spawn(async move {
                tokio::time::sleep(down_for).await;
                redis.set_down(false);
            });
        }
    }

    fn take_slow(&self) -> Duration {
        std::mem::take(&mut self.controls.lock().unwrap().slow_next)
    }

    pub fn set_paused(&self, paused: bool) {
        self.controls.lock().unwrap().paused = paused;
    }

    /// Loses every key, as a restart without persistence does.
    pub fn restart(&self) {
        *self.state.lock().unwrap() = None;
    }

    pub fn calls(&self) -> u64 {
        *self.calls.lock().unwrap()
    }

    pub fn hold_running(&self) -> bool {
        let now = self.now_us();
        self.live(now)
            .as_ref()
            .is_some_and(|state| state.hold > now)
    }

    /// How far the TAT is ahead of Redis's clock.
    pub fn tat_ahead(&self) -> Duration {
        let now = self.now_us();
        let tat = self.live(now).as_ref().map_or(now, |state| state.tat);
        Duration::from_micros(tat.saturating_sub(now))
    }

    /// The provider's key at `now`, unless it has expired.
    fn live(&self, now: u64) -> std::sync::MutexGuard<'_, Option<State>> {
        let mut state = self.state.lock().unwrap();
        if state.as_ref().is_some_and(|state| state.expires <= now) {
            *state = None;
        }
        state
    }

    /// A client for one instance.
    pub fn client(self: &Arc<Self>, instance: usize) -> Arc<dyn LeaseBackend> {
        Arc::new(FakeClient {
            redis: Arc::clone(self),
            id: format!("instance-{instance}"),
        })
    }

    fn one_way(&self) -> Duration {
        let c = self.controls.lock().unwrap();
        let jitter = if c.jitter.is_zero() {
            Duration::ZERO
        } else {
            let nanos = c.jitter.as_nanos() as u64;
            Duration::from_nanos(self.rng.lock().unwrap().random_range(0..=nanos))
        };
        c.latency + jitter
    }

    /// Waits out the way there, and while paused; fails while down.
    async fn arrive(&self) -> Result<(), LimiterError> {
        tokio::time::sleep(self.one_way()).await;
        while self.controls.lock().unwrap().paused {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        *self.calls.lock().unwrap() += 1;
        let mut c = self.controls.lock().unwrap();
        if c.fail_next > 0 {
            c.fail_next -= 1;
            return Err(LimiterError::Stopped("fake redis: cached error".into()));
        }
        if c.down {
            return Err(LimiterError::Stopped("fake redis is down".into()));
        }
        Ok(())
    }

    /// The LEASE script of redis.rs.
    fn lease_script(&self, id: &str, schedule: Schedule, wanted: u32, standing: Standing) -> Grant {
        let now = self.now_us();
        let (interval, tolerance) = (schedule.interval_us, schedule.tolerance_us);
        let horizon = HORIZON.as_micros() as u64;
        let instance_ttl = INSTANCE_TTL.as_micros() as u64;
        let mut state = self.live(now);

        let (mut stored, mut epoch, mut hold) = (0, now, 0);
        let mut instances = BTreeMap::new();
        if let Some(old) = state.take() {
            (stored, hold) = (old.tat, old.hold);
            for (instance, last) in old.instances {
                if last + instance_ttl > now {
                    // The epoch lasts while some instance is heard from.
                    epoch = old.epoch;
                    instances.insert(instance, last);
                }
            }
        }
        if hold <= now {
            hold = 0;
        }

        let mut tat = stored.max(now);
        let known = standing.epoch_us.unwrap_or(0);
        if hold == 0 && (standing.returning || (known != 0 && known != epoch)) {
            hold = now + standing.hold_for.as_micros() as u64;
            if tat < hold + tolerance {
                tat = hold + tolerance;
                stored = tat;
            }
        }
        let start = tat.saturating_sub(tolerance);
        let fit = if start <= now + horizon {
            (now + horizon - start) / interval + 1
        } else {
            0
        };
        let granted = u64::from(wanted).min(fit) as u32;
        if granted > 0 {
            tat += u64::from(granted) * interval;
            stored = tat;
        }

        instances.insert(id.to_string(), now);
        let ttl = instance_ttl
            .max(stored.saturating_sub(now))
            .max(hold.saturating_sub(now));
        let count = instances.len() as u32;
        *state = Some(State {
            tat: stored,
            epoch,
            hold,
            instances,
            expires: now + ttl.div_ceil(1000) * 1000,
        });
        Grant {
            now_us: now,
            start_us: start,
            interval_us: interval,
            granted,
            tat_us: tat,
            instances: count,
            epoch_us: epoch,
            hold_us: (hold != 0).then_some(hold),
        }
    }

    /// The GIVE_BACK script of redis.rs.
    fn give_back_script(&self, tail: Tail) -> bool {
        let mut state = self.live(self.now_us());
        match state.as_mut() {
            Some(state) if state.tat == tail.tat_us => {
                state.tat -= u64::from(tail.cells) * tail.interval_us;
                true
            }
            _ => false,
        }
    }
}

struct FakeClient {
    redis: Arc<FakeRedis>,
    id: String,
}

impl LeaseBackend for FakeClient {
    fn lease(
        &self,
        schedule: Schedule,
        wanted: u32,
        standing: Standing,
    ) -> BoxFuture<Result<Grant, LimiterError>> {
        let (redis, id) = (Arc::clone(&self.redis), self.id.clone());
        Box::pin(within_call_timeout(async move {
            redis.arrive().await?;
            let grant = redis.lease_script(&id, schedule, wanted, standing);
            redis.after_success();
            tokio::time::sleep(redis.one_way() + redis.take_slow()).await;
            Ok::<_, LimiterError>(grant)
        }))
    }

    fn give_back(&self, tail: Tail) -> BoxFuture<Result<bool, LimiterError>> {
        let redis = Arc::clone(&self.redis);
        Box::pin(within_call_timeout(async move {
            redis.arrive().await?;
            let taken = redis.give_back_script(tail);
            tokio::time::sleep(redis.one_way()).await;
            Ok::<_, LimiterError>(taken)
        }))
    }
}

/// `n` limiters sharing `spec` through `redis`.
pub(super) fn fleet(redis: &Arc<FakeRedis>, spec: RateLimitSpec, n: usize) -> Vec<SharedLimiter> {
    (0..n)
        .map(|i| SharedLimiter::with_backend(redis.client(i), "sim", spec).unwrap())
        .collect()
}

/// How a simulated caller spends its cells.
#[derive(Debug, Clone, Copy)]
pub(super) struct Callers {
    /// Concurrent request loops per instance.
    pub per_instance: usize,
    /// Between a cell's grant and the request's start, up to this much more
    /// at random (a busy runtime; the caller gives the cell up when it is
    /// late, as the HTTP sink does).
    pub start_jitter: Duration,
    /// How long a request takes before its loop asks again.
    pub request_time: Duration,
}

/// Requests started by every instance's callers from now for `run`, as
/// offsets from the start; seeded, so a run is always the same.
pub(super) async fn run_callers(
    instances: &[SharedLimiter],
    callers: Callers,
    run: Duration,
    seed: u64,
) -> Vec<Duration> {
    let origin = Instant::now();
    let until = origin + run;
    let mut tasks = tokio::task::JoinSet::new();
    for (i, limiter) in instances.iter().enumerate() {
        for c in 0..callers.per_instance {
            let limiter = limiter.clone();
            let mut rng = StdRng::seed_from_u64(seed ^ ((i as u64) << 32) ^ c as u64);
            tasks.spawn(async move {
                let mut starts = Vec::new();
                let mut requeue = false;
                loop {
                    let asked = tokio::time::timeout_at(until, limiter.acquire_cell(requeue));
                    let Ok(Ok((_, deadline))) = asked.await else {
                        return starts;
                    };
                    let nanos = callers.start_jitter.as_nanos() as u64;
                    if nanos > 0 {
                        let late = Duration::from_nanos(rng.random_range(0..=nanos));
                        tokio::time::sleep(late).await;
                    }
                    let now = Instant::now();
                    if now > deadline {
                        requeue = true;
                        continue;
                    }
                    requeue = false;
                    starts.push(now - origin);
                    tokio::time::sleep(callers.request_time).await;
                }
            });
        }
    }
    let mut starts: Vec<Duration> = tasks.join_all().await.into_iter().flatten().collect();
    starts.sort();
    starts
}

/// The largest number of `starts` (sorted) inside any closed window of length `w`.
pub(super) fn max_in_window(starts: &[Duration], w: Duration) -> usize {
    let mut first = 0;
    let mut most = 0;
    for (last, &end) in starts.iter().enumerate() {
        while starts[first] + w < end {
            first += 1;
        }
        most = most.max(last + 1 - first);
    }
    most
}

/// The contract: `⌊W/T⌋ + burst` in any closed window of length `W`, with
/// `T = per / requests` exactly: what a GCRA with tolerance `(burst - 1)·T`
/// lets through.
pub(super) fn window_bound(w: Duration, spec: &RateLimitSpec) -> usize {
    let cells = (w.as_nanos() * u128::from(spec.requests)) / spec.per.as_nanos();
    cells as usize + spec.burst as usize
}

/// How many of `starts` (sorted) a provider enforcing `spec` exactly would
/// refuse: a GCRA with interval `T` and tolerance `(burst - 1)·T`, in exact
/// nanoseconds, the way the mock CRM enforces a limit.
pub(super) fn gcra_refusals(starts: &[Duration], spec: &RateLimitSpec) -> usize {
    let t = spec.per.as_nanos() as f64 / f64::from(spec.requests);
    let tolerance = t * f64::from(spec.burst - 1);
    let mut tat = f64::MIN;
    let mut refused = 0;
    for start in starts {
        let now = start.as_nanos() as f64;
        // A nanosecond of slack for the float rounding of T.
        if tat - tolerance > now + 1.0 {
            refused += 1;
        } else {
            tat = tat.max(now) + t;
        }
    }
    refused
}

pub(super) fn per_second(requests: u32, burst: u32) -> RateLimitSpec {
    RateLimitSpec {
        requests,
        per: Duration::from_secs(1),
        burst,
    }
}

/// The most starts inside any half-open window `[a, a + w)`.
pub(super) fn max_in_half_open_window(starts: &[Duration], w: Duration) -> usize {
    let mut first = 0;
    let mut most = 0;
    for (last, &end) in starts.iter().enumerate() {
        while starts[first] + w <= end {
            first += 1;
        }
        most = most.max(last + 1 - first);
    }
    most
}

/// Starts per second between `from` and the end of the run.
pub(super) fn sustained(starts: &[Duration], from: Duration, run: Duration) -> f64 {
    let n = starts.iter().filter(|&&t| t >= from && t < run).count();
    n as f64 / (run - from).as_secs_f64()
}

/// Open-loop demand: one acquire every `1/rate` on `limiter` for `run`,
/// however long earlier ones wait; (wait, start since now) of each.
pub(super) fn paced(
    limiter: &SharedLimiter,
    rate: u32,
    run: Duration,
) -> tokio::task::JoinHandle<Vec<(Duration, Duration)>> {
    let limiter = limiter.clone();
    let origin = Instant::now();
    tokio::spawn(async move {
        let mut requests = tokio::task::JoinSet::new();
        let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
        while tick.tick().await < origin + run {
            let limiter = limiter.clone();
            requests.spawn(async move {
                let asked = Instant::now();
                let mut requeue = false;
                loop {
                    let (_, deadline) = limiter.acquire_cell(requeue).await.unwrap();
                    let now = Instant::now();
                    if now <= deadline {
                        return (now - asked, now - origin);
                    }
                    requeue = true;
                }
            });
        }
        requests.join_all().await
    })
}
