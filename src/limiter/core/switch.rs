//! The switches between the shared limit and the local share: falling back
//! when Redis is unusable, holding, and coming back; why they keep the
//! fleet within the limit is docs/limiter.md ("Switching").

use std::time::Duration;

use tokio::time::Instant;

use super::super::LimiterError;
use super::super::local::{LocalGcra, LocalShare};
use super::super::pool::Grant;
use super::super::redis::{CALL_TIMEOUT, HORIZON};
use super::{Core, HEARTBEAT, Waiter};

/// Backoff between probes of an unreachable Redis.
pub(super) const PROBE_MIN: Duration = Duration::from_millis(50);
const PROBE_MAX: Duration = Duration::from_millis(250);
/// How long any instance may take to hear that Redis is back, or of a hold:
/// one on the shared limit within `HEARTBEAT + CALL_TIMEOUT`, one on its
/// local share within two probes (the first after Redis is back may still
/// fail on the connection manager's cached error), `2·(PROBE_MAX +
/// CALL_TIMEOUT)`; plus room for a busy runtime.
pub(super) const NOTICE: Duration = Duration::from_millis(1500);
/// How long after its last call that got through an instance may find
/// Redis again and go straight back to the shared limit (docs/limiter.md).
const BLIP: Duration = Duration::from_secs(1);
/// Least time between losing Redis and the first local cell: every instance
/// has then called Redis since it went away (so all of them are local), or
/// Redis is back and this instance hears of it first (docs/limiter.md).
pub(in crate::limiter) const FALLBACK_DELAY: Duration = HEARTBEAT
    .saturating_add(CALL_TIMEOUT)
    .saturating_add(BLIP)
    .saturating_add(NOTICE);
/// Replies slower than the spend budget in a row, over at least
/// [`SLOW_FOR`], that mean Redis is too far for this limit (each one's cells
/// are stale on arrival): fall back. A few slow replies in a burst are a
/// hiccup (a process starting, a busy machine): they waste a lease, where
/// falling back would take local cells beside a fleet still on the shared limit.
const SLOW_REPLIES_TO_FALL_BACK: u32 = 3;
const SLOW_FOR: Duration = HEARTBEAT;

/// The local share while this instance is off the shared limit.
pub(super) struct Fallback {
    pub(super) gcra: LocalGcra,
    pub(super) phase: Phase,
    /// When the last local cell was taken: one taken after the switch point
    /// means this instance heard of the hold too late.
    pub(super) last_taken: Option<Instant>,
    /// When this instance found Redis unusable: the start of this outage
    /// (a failure while announcing the return does not move it).
    pub(super) fell_back: Instant,
    /// When its last call before that went out that got through: Redis
    /// became unusable after it.
    pub(super) usable_at: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// Redis is unusable: local cells (from the GCRA's start on), and probes.
    Unreachable,
    /// A probe got through: no local cell until the fleet's switch back to
    /// the shared limit is known; the next call announces the return.
    Announcing,
    /// The fleet switches back at a hold: local cells until `until`.
    Holding { until: Instant },
}

impl Fallback {
    pub(super) fn may_take(&self, at: Instant) -> bool {
        match self.phase {
            Phase::Unreachable => true,
            Phase::Announcing => false,
            Phase::Holding { until } => at < until,
        }
    }
}

impl<W: Waiter> Core<W> {
    /// What a grant means for the switches: a hold to act on, or Redis back
    /// after an outage (a blip, or an announced return).
    pub(super) fn switch_on_grant(&mut self, grant: &Grant, sent: Instant, received: Instant) {
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

    pub(super) fn on_failure(&mut self, error: LimiterError, now: Instant) {
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
                // A failure while announcing the return continues the same
                // outage: the blip rule (`switch_on_grant`) must still count
                // from its start, as local cells may have been taken since
                // (here or elsewhere) and no hold has been started. Counted
                // from the failed announce, the next probe found Redis
                // "within a blip" and went back to the shared limit without a
                // hold while the other instances still took their local
                // shares (timing.rs, a_failed_announce_still_switches_back_
                // through_a_hold). Once a hold was heard of, counting afresh
                // is safe: a reply naming it switches back through it again,
                // and once it has passed, every local cell came before it.
                if fallback.phase != Phase::Announcing {
                    fallback.fell_back = now;
                    fallback.usable_at = self.last_ok;
                }
                fallback.phase = Phase::Unreachable;
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
}
