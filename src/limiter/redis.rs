//! The Redis side: one Lua script call leases a slice of a provider's timeline.
//!
//! One key per provider, `syncflow:ratelimit:{provider}:state` (`{provider}`
//! is a cluster hash tag; the prefix is `redis.key_prefix`, `syncflow` by
//! default), a string of space-separated fields, microseconds on Redis's clock
//! (`TIME` is the only clock that matters, instances' clocks never do):
//!
//! ```text
//! TAT EPOCH HOLD ID LAST ID LAST ...
//! ```
//!
//! - `TAT`: the GCRA's theoretical arrival time (0: none yet);
//! - `EPOCH`: when this Redis started keeping the provider's state. It lasts
//!   while some instance is heard from, so an instance that leased from an
//!   earlier state learns that Redis lost it (restarted, flushed) and the TAT
//!   no longer covers its cells;
//! - `HOLD`: the fleet's switch back to the shared limit after local
//!   fallbacks (see core/switch.rs), no cell conforms before it; 0 or past:
//!   none;
//! - `ID LAST` pairs: each instance's id and its last call, the heartbeat
//!   that tells the local fallback how many share the limit (an instance not
//!   heard from for [`INSTANCE_TTL`] is dropped).
//!
//! One key rather than one per field makes a lease call four commands
//! (`EVALSHA`, `TIME`, `GET`, `SET`) where four keys made it eleven, and a
//! give-back three: at 10,000/s shared by three instances, one Redis command
//! per 69–80 requests counting those run inside scripts, where it was one per
//! 7–29 (docs/limiter.md). Instances running the four-key layout lease
//! from a timeline of their own: a fleet switches to this one all at once.
//!
//! Interval, tolerance and horizon travel with every call, so a changed limit
//! (hot reload) applies to the same TAT without resetting it.

use std::time::Duration;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use redis::Script;

use super::LimiterError;
use super::connection::{RedisHandle, RedisTarget};
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
///
/// The key lives while any of its fields means something: an instance heard
/// from (and so the epoch), a hold, a TAT ahead of `now` (past it, the TAT
/// means the same as none), so idle providers leave nothing behind.
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

-- TAT EPOCH HOLD ID LAST ID LAST ... (module docs)
local stored, epoch, hold = 0, now, 0
local instances = {}
local state = redis.call('GET', KEYS[1])
if state then
  local fields = {}
  for field in string.gmatch(state, '%S+') do fields[#fields + 1] = field end
  stored, hold = tonumber(fields[1]), tonumber(fields[3])
  for i = 4, #fields - 1, 2 do
    if tonumber(fields[i + 1]) > now - instance_ttl then
      -- The epoch lasts while some instance is heard from.
      epoch = tonumber(fields[2])
      if fields[i] ~= ARGV[5] then instances[#instances + 1] = fields[i] .. ' ' .. fields[i + 1] end
    end
  end
end
if hold <= now then hold = 0 end

local tat = math.max(stored, now)
if hold == 0 and (returning or (known_epoch ~= 0 and known_epoch ~= epoch)) then
  hold = now + hold_for
  if tat < hold + tolerance then
    tat = hold + tolerance
    stored = tat
  end
end
local start = tat - tolerance
local fit = 0
if start <= now + horizon then fit = math.floor((now + horizon - start) / interval) + 1 end
local granted = math.min(wanted, fit)
if granted > 0 then
  tat = tat + granted * interval
  stored = tat
end

instances[#instances + 1] = ARGV[5] .. ' ' .. string.format('%.0f', now)
local ttl = math.max(instance_ttl, stored - now, hold - now)
redis.call('SET', KEYS[1],
  string.format('%.0f %.0f %.0f ', stored, epoch, hold) .. table.concat(instances, ' '),
  'PX', math.ceil(ttl / 1000))
return {now, start, interval, granted, #instances, epoch, hold, tat}
";

/// Gives back the last `ARGV[2]` cells of a grant, `ARGV[3]` apart, if they
/// are still the end of the timeline: the TAT is the one that grant left
/// (`ARGV[1]`), so nobody leased after it and no hold moved it. Then the
/// timeline is as if the grant had been that much shorter, and the next
/// lease (any instance's) takes those cells' times. Returns 1 if given back.
const GIVE_BACK: &str = r"
local state = redis.call('GET', KEYS[1])
if not state then return 0 end
local tat, rest = string.match(state, '^(%d+)(.*)$')
if tonumber(tat) ~= tonumber(ARGV[1]) then return 0 end
local back = tonumber(tat) - tonumber(ARGV[2]) * tonumber(ARGV[3])
redis.call('SET', KEYS[1], string.format('%.0f', back) .. rest, 'KEEPTTL')
return 1
";

/// The key of a provider's state (module docs).
pub(crate) fn state_key(key_prefix: &str, provider: &str) -> String {
    format!("{key_prefix}:ratelimit:{{{provider}}}:state")
}

/// A Redis handle for the limiters that connects lazily, so syncflow starts
/// (on the local fallback) while Redis is down. Needs a tokio runtime.
pub fn connect(url: &str) -> Result<RedisHandle, LimiterError> {
    manage(redis::Client::open(url)?)
}

/// [`connect`] for a client already set up (TLS, see connect.rs), or for the
/// primary Redis Sentinels name (connection.rs).
pub fn manage(target: impl Into<RedisTarget>) -> Result<RedisHandle, LimiterError> {
    RedisHandle::new(target.into())
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

/// One provider's key and this instance's identity in it.
#[derive(Clone)]
pub(crate) struct LeaseClient {
    redis: RedisHandle,
    script: Script,
    give_back: Script,
    key: String,
    instance_id: String,
    /// The primary (connection.rs: its serial) of this instance's last
    /// grant; 0 before the first, and always without Sentinel.
    granted_by: Arc<AtomicU64>,
}

impl LeaseClient {
    pub fn new(redis: RedisHandle, key_prefix: &str, provider: &str) -> Self {
        LeaseClient {
            redis,
            script: Script::new(LEASE),
            give_back: Script::new(GIVE_BACK),
            key: state_key(key_prefix, provider),
            instance_id: format!("{:016x}", rand::random::<u64>()),
            granted_by: Arc::new(AtomicU64::new(0)),
        }
    }

    async fn call_lease(
        &self,
        schedule: Schedule,
        wanted: u32,
        standing: Standing,
    ) -> Result<Grant, LimiterError> {
        let (reply, primary) = within_call_timeout(async {
            let mut redis = self.redis.pin().await?;
            // A primary other than the last grant's (a Sentinel failover)
            // may have lost the last writes to the provider's state: the
            // call starts a hold, as coming back from the local fallback
            // does (docs/limiter.md, "Failover").
            let granted_by = self.granted_by.load(Ordering::Relaxed);
            let moved = granted_by != 0 && granted_by != redis.serial;
            let mut call = self.script.key(&self.key);
            call.arg(schedule.interval_us)
                .arg(schedule.tolerance_us)
                .arg(wanted)
                .arg(HORIZON.as_micros() as u64)
                .arg(&self.instance_id)
                .arg(INSTANCE_TTL.as_micros() as u64)
                .arg(standing.epoch_us.unwrap_or(0))
                .arg(u8::from(standing.returning || moved))
                .arg(standing.hold_for.as_micros() as u64);
            let reply = call.invoke_async(&mut redis).await?;
            Ok::<_, redis::RedisError>((reply, redis.serial))
        })
        .await?;
        self.granted_by.store(primary, Ordering::Relaxed);
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
        let mut call = self.give_back.key(&self.key);
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
