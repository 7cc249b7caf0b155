//! Per-provider rate limits shared by every syncflow instance (DESIGN.md §2, §5).
//!
//! A limit is `requests` per `per` with `burst`: GCRA with emission interval
//! `T = per / requests` and tolerance `tau = (burst - 1)·T`. The fleet's
//! requests, taken when they start, are a sequence that GCRA accepts in
//! full, as a provider enforcing the same limit would: in any window of
//! length `W` at most `⌊W/T⌋ + burst` requests start.
//!
//! How the fleet shares one limit without one Redis call per request (one
//! file each):
//! - `redis`: a Lua script keeps the GCRA theoretical arrival time (TAT) of
//!   each provider in Redis, on Redis's clock only, and leases a contiguous
//!   slice of the future timeline (cells with their conformance times) per call.
//! - `pool`: each instance keeps its leased cells and hands each one out no
//!   earlier than its time and no later than its time plus a lateness budget;
//!   [`SharedLimiter::acquire`] checks that deadline again as it returns.
//! - `gcra`: the budget is carved out of the burst tolerance, which is what
//!   makes the fleet-wide bound hold even though cells start late (proof there).
//! - `demand`: how many cells to lease, so a busy instance rarely calls Redis
//!   and a quiet one does not hoard the fleet's capacity.
//! - `local`: the fallback while Redis is unreachable (or too slow for the
//!   budget): a local GCRA at this instance's share of the limit (the
//!   instances last seen sharing it split rate and burst, lateness included;
//!   proof there).
//! - `shared`: [`SharedLimiter`], one task per provider tying these together,
//!   and the switches between shared and local: a pause before local cells
//!   and a fleet-wide switch point back (a hold in Redis), which keep the
//!   contract across an outage and a restarted Redis (proof there).
//!
//! A cell is spent by starting a request by its deadline. The HTTP sink
//! makes sure a request that must first open a connection does not start
//! late: it opens it before taking the cell (sink/slots.rs).

mod core;
mod demand;
mod direct;
mod driver;
mod gcra;
mod local;
mod pool;
mod redis;
#[cfg(test)]
mod sim;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod timing;

use std::time::Duration;

pub use self::driver::SharedLimiter;
pub use self::redis::{connect, manage};

/// A provider's rate limit: `requests` per `per`, at most `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitSpec {
    pub requests: u32,
    pub per: Duration,
    /// Cells allowed at once; 1 when the provider file does not set it.
    pub burst: u32,
}

impl RateLimitSpec {
    /// The emission interval `T = per / requests`.
    pub fn interval(&self) -> Duration {
        self.per / self.requests
    }

    fn validate(&self) -> Result<(), LimiterError> {
        let problem = if self.requests == 0 {
            "requests must be at least 1"
        } else if self.per.is_zero() {
            "per must be longer than zero"
        } else if self.burst == 0 {
            "burst must be at least 1"
        } else {
            return Ok(());
        };
        Err(LimiterError::InvalidSpec(problem))
    }
}

/// Where a [`SharedLimiter`] takes its cells from right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimiterMode {
    /// Leased from the fleet-wide limit in Redis.
    Shared,
    /// This instance's share of the limit, enforced locally: Redis is
    /// unreachable, or the fleet is switching back to it.
    Local,
}

#[derive(Debug, thiserror::Error)]
pub enum LimiterError {
    #[error("invalid rate limit: {0}")]
    InvalidSpec(&'static str),
    #[error("redis: {0}")]
    Redis(#[from] ::redis::RedisError),
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("redis answered after {took:?}, longer than the {budget:?} a leased cell may be late")]
    SlowReply { took: Duration, budget: Duration },
    #[error("rate limiter for provider {0:?} has stopped")]
    Stopped(String),
}

/// What the executor holds per provider: a shared limit, or none at all when
/// the provider file has no `rate_limit`.
#[derive(Debug, Clone)]
pub enum Limiter {
    Unlimited,
    Shared(SharedLimiter),
}

impl Limiter {
    /// Waits until one request may start; returns how long that took and
    /// the instant by which the request must have started (none without a
    /// limit). `requeue`: the caller's previous cell went stale unused, so it
    /// waits at the front.
    pub async fn acquire_cell(
        &self,
        requeue: bool,
    ) -> Result<(Duration, Option<tokio::time::Instant>), LimiterError> {
        match self {
            Limiter::Unlimited => Ok((Duration::ZERO, None)),
            Limiter::Shared(limiter) => {
                let (waited, deadline) = limiter.acquire_cell(requeue).await?;
                Ok((waited, Some(deadline)))
            }
        }
    }
}
