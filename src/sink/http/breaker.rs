//! A provider's circuit breaker.
//!
//! Closed: every attempt goes; `failure_threshold` consecutive requests that
//! failed on the provider's side open it. Open: attempts wait. After
//! `open_for`, the first waiter becomes the probe (half-open) and its next
//! attempt alone goes through; its outcome closes the breaker (waking every
//! waiter) or re-opens it. Only the probe moves a half-open breaker: results
//! of requests that were already in flight when it opened are ignored there.
//!
//! The state lives in a `watch` channel so waiters sleep until it changes or
//! `open_for` ends, never polling.

use std::time::Duration;

use metrics::Gauge;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::model::CircuitBreakerConfig;

/// What [`ProviderApi::breaker_state`](super::ProviderApi::breaker_state) reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    /// Requests wait. It stays open past `open_for` until a request arrives
    /// to probe.
    Open,
    /// One probe attempt is in flight; every other request waits for it.
    HalfOpen,
}

#[derive(Debug, Clone, Copy)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen,
}

/// How a finished attempt or request bears on the provider's health. A 4xx
/// rejection is `Up`: the provider answered, the record was at fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ProviderHealth {
    Up,
    Down,
}

pub(super) struct Breaker {
    provider: String,
    /// An account's own breaker (pipelines that name accounts).
    account: Option<String>,
    threshold: u32,
    open_for: Duration,
    state: watch::Sender<State>,
    gauge: BreakerGauge,
}

/// What the breaker's gauge shows.
pub(super) enum BreakerGauge {
    /// The provider's breaker: 0 closed, 1 open, 0.5 half-open.
    State(Gauge),
    /// An account's: counted among the provider's account breakers not
    /// closed (one gauge per account would not scale to many accounts).
    Count(Gauge),
}

/// One request's way through the breaker, across all its attempts.
pub(super) struct Pass<'a> {
    breaker: &'a Breaker,
    /// This request holds the half-open breaker's single probe.
    probe: bool,
}

enum Wait {
    No,
    Until(Instant),
    ForChange,
}

impl Breaker {
    pub fn new(provider: &str, config: &CircuitBreakerConfig, gauge: Gauge) -> Self {
        gauge.set(0.0);
        Self::with_gauge(provider, None, config, BreakerGauge::State(gauge))
    }

    /// `account`'s own breaker, counted in `open_count` while not closed.
    pub fn for_account(
        provider: &str,
        account: &str,
        config: &CircuitBreakerConfig,
        open_count: Gauge,
    ) -> Self {
        Self::with_gauge(
            provider,
            Some(account),
            config,
            BreakerGauge::Count(open_count),
        )
    }

    fn with_gauge(
        provider: &str,
        account: Option<&str>,
        config: &CircuitBreakerConfig,
        gauge: BreakerGauge,
    ) -> Self {
        Breaker {
            account: account.map(str::to_string),
            provider: provider.to_string(),
            threshold: config.failure_threshold.max(1),
            open_for: config.open_for.0,
            state: watch::Sender::new(State::Closed { failures: 0 }),
            gauge,
        }
    }

    pub fn state(&self) -> BreakerState {
        match *self.state.borrow() {
            State::Closed { .. } => BreakerState::Closed,
            State::Open { .. } => BreakerState::Open,
            State::HalfOpen => BreakerState::HalfOpen,
        }
    }

    pub fn pass(&self) -> Pass<'_> {
        Pass {
            breaker: self,
            probe: false,
        }
    }

    /// Sets `to`, with the log line and gauge value of the transition.
    fn enter(&self, state: &mut State, to: State) {
        let provider = &self.provider;
        let account = self.account.as_deref();
        let open_for_ms = self.open_for.as_millis() as u64;
        match (*state, to) {
            (State::Closed { .. }, State::Open { .. }) => {
                tracing::warn!(provider = %provider, account, failures = self.threshold, open_for_ms, "circuit breaker opened; requests wait");
            }
            (State::HalfOpen, State::Open { .. }) => {
                tracing::warn!(provider = %provider, account, open_for_ms, "circuit breaker probe failed; re-opened");
            }
            (_, State::HalfOpen) => {
                tracing::info!(provider = %provider, account, "circuit breaker half-open; probing");
            }
            (_, State::Closed { .. }) => {
                tracing::info!(provider = %provider, account, "circuit breaker closed");
            }
            _ => {}
        }
        let to_name = match to {
            State::Closed { .. } => "closed",
            State::Open { .. } => "open",
            State::HalfOpen => "half_open",
        };
        if std::mem::discriminant(state) != std::mem::discriminant(&to) {
            metrics::counter!("syncflow_provider_breaker_transitions_total", "provider" => provider.clone(), "to" => to_name).increment(1);
        }
        match &self.gauge {
            BreakerGauge::State(gauge) => gauge.set(match to {
                State::Closed { .. } => 0.0,
                State::Open { .. } => 1.0,
                State::HalfOpen => 0.5,
            }),
            BreakerGauge::Count(gauge) => {
                let closed = |s: &State| matches!(s, State::Closed { .. });
                match (closed(state), closed(&to)) {
                    (true, false) => gauge.increment(1.0),
                    (false, true) => gauge.decrement(1.0),
                    _ => {}
                }
            }
        }
        *state = to;
    }

    fn open(&self, state: &mut State) {
        let until = Instant::now() + self.open_for;
        self.enter(state, State::Open { until });
    }
}

impl Pass<'_> {
    /// Waits until this request's next attempt may go: at once while closed;
    /// while open, until the breaker closes or this request becomes the probe.
    pub async fn ready(&mut self) {
        if matches!(*self.breaker.state.borrow(), State::Closed { .. }) {
            return;
        }
        let breaker = self.breaker;
        let mut changes = breaker.state.subscribe();
        loop {
            // Marked seen before looking, so a change made after the look
            // wakes the wait below.
            changes.borrow_and_update();
            let mut wait = Wait::No;
            let probe = &mut self.probe;
            breaker.state.send_if_modified(|state| match *state {
                State::Closed { .. } => false,
                State::HalfOpen if *probe => false,
                State::HalfOpen => {
                    wait = Wait::ForChange;
                    false
                }
                State::Open { until } if until <= Instant::now() => {
                    *probe = true;
                    breaker.enter(state, State::HalfOpen);
                    true
                }
                State::Open { until } => {
                    wait = Wait::Until(until);
                    false
                }
            });
            match wait {
                Wait::No => return,
                Wait::Until(until) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(until) => {}
                        _ = changes.changed() => {}
                    }
                }
                // The sender lives in `breaker`, which outlives this pass.
                Wait::ForChange => {
                    let _ = changes.changed().await;
                }
            }
        }
    }

    /// Reports an attempt's outcome: decides the probe, if this is it.
    pub fn attempted(&mut self, health: ProviderHealth) {
        if !std::mem::take(&mut self.probe) {
            return;
        }
        let breaker = self.breaker;
        breaker.state.send_if_modified(|state| {
            if !matches!(state, State::HalfOpen) {
                return false;
            }
            match health {
                ProviderHealth::Up => breaker.enter(state, State::Closed { failures: 0 }),
                ProviderHealth::Down => breaker.open(state),
            }
            true
        });
    }

    /// Whether this request's next attempt is the half-open breaker's probe.
    pub fn is_probe(&self) -> bool {
        self.probe
    }

    /// Reports a request's outcome (its final one, or a round of attempts
    /// that ran out in an outage): counts consecutive failures while closed.
    pub fn finished(&mut self, health: ProviderHealth) {
        let breaker = self.breaker;
        breaker.state.send_if_modified(|state| {
            let State::Closed { failures } = state else {
                return false;
            };
            match health {
                ProviderHealth::Up => *failures = 0,
                ProviderHealth::Down if *failures + 1 >= breaker.threshold => {
                    breaker.open(state);
                    return true;
                }
                ProviderHealth::Down => *failures += 1,
            }
            // Nobody waits on a closed breaker's count.
            false
        });
    }
}

impl Drop for Pass<'_> {
    /// A probe dropped before its outcome (the caller gave up on the send)
    /// hands the probe to the next waiter instead of leaving the breaker
    /// half-open forever.
    fn drop(&mut self) {
        if !self.probe {
            return;
        }
        let breaker = self.breaker;
        breaker.state.send_if_modified(|state| {
            if !matches!(state, State::HalfOpen) {
                return false;
            }
            let until = Instant::now();
            breaker.enter(state, State::Open { until });
            true
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::sync::{mpsc, oneshot};

    use super::*;
    use crate::config::duration::ConfigDuration;

    const OPEN_FOR: Duration = Duration::from_millis(150);

    fn breaker(threshold: u32) -> Arc<Breaker> {
        let config = CircuitBreakerConfig {
            failure_threshold: threshold,
            open_for: ConfigDuration(OPEN_FOR),
        };
        Arc::new(Breaker::new("test", &config, Gauge::noop()))
    }

    fn fail(breaker: &Breaker) {
        breaker.pass().finished(ProviderHealth::Down);
    }

    /// Spawns a request that reports when its attempt may go, then waits to
    /// be told the attempt's outcome.
    fn request(
        breaker: &Arc<Breaker>,
        id: usize,
        ready: &mpsc::UnboundedSender<usize>,
    ) -> oneshot::Sender<ProviderHealth> {
        let (breaker, ready) = (breaker.clone(), ready.clone());
        let (report, outcome) = oneshot::channel();
        tokio::spawn(async move {
            let mut pass = breaker.pass();
            pass.ready().await;
            ready.send(id).unwrap();
            let health = outcome.await.unwrap_or(ProviderHealth::Down);
            pass.attempted(health);
            pass.finished(health);
        });
        report
    }

    async fn none_within(ready: &mut mpsc::UnboundedReceiver<usize>, wait: Duration) -> bool {
        tokio::time::timeout(wait, ready.recv()).await.is_err()
    }

    #[tokio::test]
    async fn opens_after_threshold_consecutive_failures() {
        let b = breaker(3);
        fail(&b);
        fail(&b);
        b.pass().finished(ProviderHealth::Up);
        fail(&b);
        fail(&b);
        assert_eq!(b.state(), BreakerState::Closed);
        fail(&b);
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[tokio::test]
    async fn waiters_wait_for_one_probe_whose_success_releases_all() {
        let b = breaker(1);
        fail(&b);
        let (tx, mut ready) = mpsc::unbounded_channel();
        let mut reports: Vec<_> = (0..3).map(|id| Some(request(&b, id, &tx))).collect();

        assert!(
            none_within(&mut ready, OPEN_FOR / 2).await,
            "went while open"
        );
        let probe = ready.recv().await.unwrap();
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(none_within(&mut ready, OPEN_FOR).await, "second probe");

        reports[probe]
            .take()
            .unwrap()
            .send(ProviderHealth::Up)
            .unwrap();
        let others = [ready.recv().await.unwrap(), ready.recv().await.unwrap()];
        assert!(!others.contains(&probe));
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[tokio::test]
    async fn a_failed_probe_reopens_for_another_open_for() {
        let b = breaker(1);
        fail(&b);
        let mut pass = b.pass();
        pass.ready().await;
        assert_eq!(b.state(), BreakerState::HalfOpen);
        let reopened = Instant::now();
        pass.attempted(ProviderHealth::Down);
        assert_eq!(b.state(), BreakerState::Open);

        pass.ready().await;
        assert!(reopened.elapsed() >= OPEN_FOR);
        pass.attempted(ProviderHealth::Up);
        pass.finished(ProviderHealth::Up);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[tokio::test]
    async fn a_dropped_probe_hands_over_to_a_waiter() {
        let b = breaker(1);
        fail(&b);
        let mut probe = b.pass();
        probe.ready().await;
        let (tx, mut ready) = mpsc::unbounded_channel();
        let _report = request(&b, 0, &tx);
        assert!(none_within(&mut ready, OPEN_FOR / 2).await);

        drop(probe);
        let handed_over = tokio::time::timeout(OPEN_FOR / 2, ready.recv()).await;
        assert_eq!(handed_over.unwrap(), Some(0));
        assert_eq!(b.state(), BreakerState::HalfOpen);
    }
}
