//! The Redis side: one Lua script call leases a slice of a provider's timeline.
//!
//! Keys (`{provider}` is a cluster hash tag, so all land in one slot; the
//! prefix is `redis.key_prefix`, `syncflow` by default):
//! - `syncflow:ratelimit:{provider}`: the GCRA TAT, microseconds on Redis's
//!   clock (`TIME` is the only clock that matters, instances' clocks never do);
//! - `syncflow:ratelimit:{provider}:instances`: instance id → last call time,
//!   the heartbeat that tells the local fallback how many share the limit;
//! - `syncflow:ratelimit:{provider}:epoch`: when this Redis started keeping
//!   the provider's state (it expires with the heartbeats), so an instance
//!   that leased from an earlier state learns that Redis lost it (restarted,
//!   flushed) and the TAT no longer covers its cells;
//! - `syncflow:ratelimit:{provider}:hold`: the fleet's switch back to the
//!   shared limit after local fallbacks (see core.rs): no cell conforms
//!   before it.
//!
//! Interval, tolerance and horizon travel with every call, so a changed limit
//! (hot reload) applies to the same TAT without resetting it.

use std::time::Duration;

use redis::Script;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::LimiterError;
use super::gcra::Schedule;
use super::pool::{Grant, Tail};

/// How far ahead of Redis's `now` cells are leased. It bounds both how much of
/// the fleet's capacity one call can take and how long a newcomer waits
/// behind the cells already leased to others.
pub(crate) const HORIZON: Duration = Duration::from_millis(200);
/// An instance not heard from for this long no longer counts as sharing.
pub(crate) const INSTANCE_TTL: Duration = Duration::from_secs(5);
/// A script call slower than this counts as Redis being unreachable.
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_millis(200);

/// Cell `i` of a grant conforms at `max(now, tat + i·interval - tolerance)`,
/// `tat = max(stored TAT, now)`: the GCRA virtual scheduling rule applied to
/// cells as early as it allows, so consecutive grants (from any instance)
/// form one conformant sequence. Cells are granted while they conform within
/// `now + horizon`, and the TAT advances by `granted·interval`.
///
/// A caller coming back from its local fallback, or one that leased from an
/// earlier epoch, starts a hold `hold_for` long unless one is running: the
/// TAT moves to `hold + tolerance`, so the first cell after the hold conforms
/// at it with no burst in hand. The reply names the running hold (0: none).
const LEASE: &str = r"
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local wanted = tonumber(ARGV[3])
local horizon = tonumber(ARGV[4])
local instance_ttl = tonumber(ARGV[6])
local known_epoch = tonumber(ARGV[7])
local returning = ARGV[8] == '1'
local hold_for = tonumber(ARGV[9])

local epoch = tonumber(redis.call('GET', KEYS[3]))
if epoch == nil then epoch = now end
redis.call('SET', KEYS[3], string.format('%.0f', epoch), 'PX', math.ceil(instance_ttl / 1000))

local tat = tonumber(redis.call('GET', KEYS[1]))
if tat == nil or tat < now then tat = now end
local hold = tonumber(redis.call('GET', KEYS[4]))
if hold == nil and (returning or (known_epoch ~= 0 and known_epoch ~= epoch)) then
  hold = now + hold_for
  redis.call('SET', KEYS[4], string.format('%.0f', hold), 'PX', math.ceil(hold_for / 1000))
  if tat < hold + tolerance then
    tat = hold + tolerance
    redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000) + 1000)
  end
end
local start = tat - tolerance
local fit = 0
if start <= now + horizon then fit = math.floor((now + horizon - start) / interval) + 1 end
local granted = math.min(wanted, fit)
if granted > 0 then
  tat = tat + granted * interval
  -- Once now passes the TAT the key means the same as no key: let it expire
  -- then (plus a second of slack) so idle providers leave nothing behind.
  redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000) + 1000)
end

redis.call('ZADD', KEYS[2], now, ARGV[5])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - instance_ttl)
redis.call('PEXPIRE', KEYS[2], math.ceil(instance_ttl / 1000))
return {now, start, interval, granted, redis.call('ZCARD', KEYS[2]), epoch, hold or 0, tat}
";

/// Gives back the last `ARGV[2]` cells of a grant, `ARGV[3]` apart, if they
/// are still the end of the timeline: the TAT is the one that grant left
/// (`ARGV[1]`), so nobody leased after it and no hold moved it. Then the
/// timeline is as if the grant had been that much shorter, and the next
/// lease (any instance's) takes those cells' times. Returns 1 if given back.
const GIVE_BACK: &str = r"
local tat = tonumber(redis.call('GET', KEYS[1]))
if tat == nil or tat ~= tonumber(ARGV[1]) then return 0 end
local back = tat - tonumber(ARGV[2]) * tonumber(ARGV[3])
redis.call('SET', KEYS[1], string.format('%.0f', back), 'KEEPTTL')
return 1
";

/// A Redis handle for the limiters that connects lazily, so syncflow starts
/// (on the local fallback) while Redis is down. Needs a tokio runtime.
pub fn connect(url: &str) -> Result<ConnectionManager, LimiterError> {
    manage(redis::Client::open(url)?)
}

/// [`connect`] for a client already set up (TLS, see connect.rs).
pub fn manage(client: redis::Client) -> Result<ConnectionManager, LimiterError> {
    // Fail fast and let the limiter's own probing set the pace of retries:
    // one connection attempt per reconnect, so a probe after Redis is back
    // is not held up by a backoff started while it was away (core.rs
    // counts on hearing that Redis is back within two probes).
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CALL_TIMEOUT))
        .set_number_of_retries(0);
    Ok(ConnectionManager::new_lazy_with_config(client, config)?)
}

/// What a lease call says about this instance besides how many cells it wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Standing {
    /// The epoch of this instance's last grant, if it had one.
    pub epoch_us: Option<u64>,
    /// Coming back from the local fallback: starts a hold unless one runs.
    pub returning: bool,
    /// How long a hold this call starts lasts.
    pub hold_for: Duration,
}

/// What the limiter needs of Redis: the lease and give-back scripts. The
/// futures own what they need, so the driver can hold one across its loop.
pub(crate) trait LeaseBackend: Send + Sync + 'static {
    /// Asks for up to `wanted` cells (0: heartbeat only), within [`CALL_TIMEOUT`].
    fn lease(
        &self,
        schedule: Schedule,
        wanted: u32,
        standing: Standing,
    ) -> BoxFuture<Result<Grant, LimiterError>>;

    /// Gives a grant's unused tail back ([`GIVE_BACK`]); true if Redis took it.
    fn give_back(&self, tail: Tail) -> BoxFuture<Result<bool, LimiterError>>;
}

pub(crate) type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

/// One provider's keys and this instance's identity in them.
#[derive(Clone)]
pub(crate) struct LeaseClient {
    redis: ConnectionManager,
    script: Script,
    give_back: Script,
    tat_key: String,
    instances_key: String,
    epoch_key: String,
    hold_key: String,
    instance_id: String,
}

impl LeaseClient {
    pub fn new(redis: ConnectionManager, key_prefix: &str, provider: &str) -> Self {
        let tat_key = format!("{key_prefix}:ratelimit:{{{provider}}}");
        LeaseClient {
            redis,
            script: Script::new(LEASE),
            give_back: Script::new(GIVE_BACK),
            instances_key: format!("{tat_key}:instances"),
            epoch_key: format!("{tat_key}:epoch"),
            hold_key: format!("{tat_key}:hold"),
            tat_key,
            instance_id: format!("{:016x}", rand::random::<u64>()),
        }
    }

    async fn call_lease(
        &self,
        schedule: Schedule,
        wanted: u32,
        standing: Standing,
    ) -> Result<Grant, LimiterError> {
        let mut redis = self.redis.clone();
        let mut call = self.script.key(&self.tat_key);
        call.key(&self.instances_key)
            .key(&self.epoch_key)
            .key(&self.hold_key)
            .arg(schedule.interval_us)
            .arg(schedule.tolerance_us)
            .arg(wanted)
            .arg(HORIZON.as_micros() as u64)
            .arg(&self.instance_id)
            .arg(INSTANCE_TTL.as_micros() as u64)
            .arg(standing.epoch_us.unwrap_or(0))
            .arg(u8::from(standing.returning))
            .arg(standing.hold_for.as_micros() as u64);
        let reply = within_call_timeout(call.invoke_async(&mut redis)).await?;
        let (now_us, start_us, interval_us, granted, instances, epoch_us, hold_us, tat_us): (
            u64,
            u64,
            u64,
            u32,
            u32,
            u64,
            u64,
            u64,
        ) = reply;
        Ok(Grant {
            now_us,
            start_us,
            interval_us,
            granted,
            tat_us,
            instances,
            epoch_us,
            hold_us: (hold_us != 0).then_some(hold_us),
        })
    }

    async fn call_give_back(&self, tail: Tail) -> Result<bool, LimiterError> {
        let mut redis = self.redis.clone();
        let mut call = self.give_back.key(&self.tat_key);
        call.arg(tail.tat_us).arg(tail.cells).arg(tail.interval_us);
        let taken: u8 = within_call_timeout(call.invoke_async(&mut redis)).await?;
        Ok(taken == 1)
    }
}

impl LeaseBackend for LeaseClient {
    fn lease(
        &self,
        schedule: Schedule,
        wanted: u32,
        standing: Standing,
    ) -> BoxFuture<Result<Grant, LimiterError>> {
        let client = self.clone();
        Box::pin(async move { client.call_lease(schedule, wanted, standing).await })
    }

    /// The caller has dropped those cells already: whatever the answer,
    /// none of them starts.
    fn give_back(&self, tail: Tail) -> BoxFuture<Result<bool, LimiterError>> {
        let client = self.clone();
        Box::pin(async move { client.call_give_back(tail).await })
    }
}

/// A call that did not answer within [`CALL_TIMEOUT`] failed.
pub(crate) async fn within_call_timeout<T, E>(
    call: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, LimiterError>
where
    LimiterError: From<E>,
{
    Ok(tokio::time::timeout(CALL_TIMEOUT, call)
        .await
        .map_err(|_| LimiterError::Timeout(CALL_TIMEOUT))??)
}
