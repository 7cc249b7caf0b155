//! [`SharedLimiter`]: one task per provider drives the limiter's state
//! machine (`core.rs`) with real time and a real Redis: it feeds it callers
//! and replies, makes the calls it asks for, and sleeps until it wants to
//! be woken.
//!
//! A single task (rather than a lock) keeps the rules simple: callers queue
//! FIFO, at most one lease call is in flight per provider and instance, and
//! one timer serves every waiter. Callers reach it through a channel and
//! wait on a oneshot; the task stops when the last handle is dropped.
//! Callers who find a cell due take it themselves (`direct.rs`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use metrics::Counter;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::connection::RedisHandle;
use super::core::{Call, Core, Reply, Waiter, wasted_cells};
use super::direct::Direct;
use super::pool::Tail;
use super::redis::{LeaseBackend, LeaseClient};
use super::{LimiterError, LimiterMode, RateLimitSpec};

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
type CellSender = oneshot::Sender<Instant>;

impl Waiter for CellSender {
    fn is_closed(&self) -> bool {
        oneshot::Sender::is_closed(self)
    }

    fn serve(self, deadline: Instant) {
        let _ = self.send(deadline);
    }
}

enum Request {
    Acquire(CellSender),
    /// A caller whose cell went stale before it ran: back to the queue's front.
    Requeue(CellSender),
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
        redis: RedisHandle,
        provider: &str,
        spec: RateLimitSpec,
    ) -> Result<Self, LimiterError> {
        Self::with_key_prefix(redis, "syncflow", provider, spec)
    }

    /// A limiter whose Redis keys start with `key_prefix` (deployments
    /// sharing a Redis each have their own).
    pub fn with_key_prefix(
        redis: RedisHandle,
        key_prefix: &str,
        provider: &str,
        spec: RateLimitSpec,
    ) -> Result<Self, LimiterError> {
        let client = LeaseClient::new(redis, key_prefix, provider);
        Self::with_backend(Arc::new(client), provider, spec)
    }

    /// A limiter leasing from `backend` (a fake Redis in tests).
    pub(super) fn with_backend(
        backend: Arc<dyn LeaseBackend>,
        provider: &str,
        spec: RateLimitSpec,
    ) -> Result<Self, LimiterError> {
        spec.validate()?;
        let (requests, queue) = mpsc::unbounded_channel();
        let local = Arc::new(AtomicBool::new(false));
        let direct = Arc::new(Direct::default());
        let core = Core::new(
            provider,
            spec,
            Arc::clone(&direct),
            Arc::clone(&local),
            Instant::now(),
        );
        tokio::spawn(run(core, backend, Arc::clone(&direct), queue));
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
        if !requeue && let Some(deadline) = self.inner.direct.take(started) {
            return Ok((started.elapsed(), deadline));
        }
        let mut request: fn(CellSender) -> Request = match requeue {
            true => Request::Requeue,
            false => Request::Acquire,
        };
        loop {
            let (waiter, cell) = oneshot::channel();
            self.inner.direct.queue_one();
            if self.inner.requests.send(request(waiter)).is_err() {
                self.inner.direct.served_one();
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

type InFlightCall = Pin<Box<dyn Future<Output = Reply> + Send>>;
type InFlightOffer = Pin<Box<dyn Future<Output = (Tail, Result<bool, LimiterError>)> + Send>>;

/// The task: steps the core, does what it says, and waits for the next event.
async fn run(
    mut core: Core<CellSender>,
    backend: Arc<dyn LeaseBackend>,
    direct: Arc<Direct>,
    mut queue: mpsc::UnboundedReceiver<Request>,
) {
    let mut call: Option<InFlightCall> = None;
    let mut offer: Option<InFlightOffer> = None;
    let timer = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(timer);
    loop {
        let step = core.step(Instant::now());
        if let Some(plan) = step.call {
            call = Some(lease(&backend, plan));
        }
        if let Some(tail) = step.give_back {
            let backend = Arc::clone(&backend);
            offer = Some(Box::pin(
                async move { (tail, backend.give_back(tail).await) },
            ));
        }
        if let Some(wake) = step.wake_at {
            timer.as_mut().reset(wake);
        }
        tokio::select! {
            request = queue.recv() => match request {
                Some(Request::Acquire(waiter)) => core.on_arrival(waiter, Instant::now()),
                Some(Request::Requeue(waiter)) => core.on_requeue(waiter),
                Some(Request::SetSpec(spec)) => core.set_spec(spec),
                None => return,
            },
            () = direct.low() => {}
            reply = async { call.as_mut().expect("guarded by is_some").await }, if call.is_some() => {
                call = None;
                core.on_reply(reply);
            }
            (tail, answer) = async { offer.as_mut().expect("guarded by is_some").await }, if offer.is_some() => {
                offer = None;
                core.on_given_back(tail, answer);
            }
            () = &mut timer => {}
        }
    }
}

/// The lease call `plan` asks for, timed.
fn lease(backend: &Arc<dyn LeaseBackend>, plan: Call) -> InFlightCall {
    let backend = Arc::clone(backend);
    Box::pin(async move {
        let sent = Instant::now();
        let result = backend
            .lease(plan.schedule, plan.wanted, plan.standing)
            .await;
        Reply {
            sent,
            received: Instant::now(),
            wanted: plan.wanted,
            result,
        }
    })
}
