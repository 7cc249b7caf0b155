//! Per-provider rate limits shared by every syncflow instance (DESIGN.md
//! §2, §5); docs/limiter.md states the promise and why it holds.
//!
//! A limit is `requests` per `per` with `burst`. The fleet's requests keep
//! it GCRA-exactly when the burst leaves room for lateness, and per window
//! of `per` otherwise (`gcra`). One file per part:
//! - `redis`: the Lua scripts that lease slices of a provider's timeline
//!   (cells with conformance times on Redis's clock) and take unused ones back;
//!   `connection`: the Redis they run on, one server or the primary that
//!   Redis Sentinels name;
//! - `pool`: leased cells, handed out no earlier than their time and no
//!   later than their deadline; `direct`: the pool shared with callers;
//! - `demand`: how many cells to lease;
//! - `local`: the fallback while Redis is unreachable, at this instance's share;
//! - `core`: every decision, as a state machine without I/O; `driver`:
//!   [`SharedLimiter`], the task that runs it with real time and Redis;
//! - `sim` and `timing` (tests): a fake Redis on tokio's clock, and the
//!   timing properties asserted in paused time.
//!
//! A cell is spent by starting a request by its deadline. The HTTP sink
//! makes sure a request that must first open a connection does not start
//! late: it opens it before taking the cell (docs/sink-connections.md).

mod accounts;
mod connection;
mod core;
mod demand;
mod direct;
mod driver;
mod gcra;
mod local;
mod pool;
mod quota;
mod redis;
#[cfg(test)]
mod sim;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod timing;

use std::time::Duration;

pub use self::accounts::AccountLimits;
pub use self::connection::{RedisHandle, RedisTarget};
pub use self::driver::SharedLimiter;
pub use self::quota::{Quotas, Taken};
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
