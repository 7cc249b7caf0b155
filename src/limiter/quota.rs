//! [`Quotas`]: a provider's request quota (`quota: { requests, per }`, a
//! CRM's daily allocation), per account for pipelines that name one.
//!
//! The count lives in Redis, one key per account and window
//! (`<prefix>:quota:<provider>@<account>:<window>`, windows aligned to the
//! Unix epoch: a `1d` quota resets at 00:00 UTC), so every instance spends
//! from the same allocation. An instance takes requests from it in chunks
//! (1% of the quota, between 1 and 100) so that a request rarely waits on
//! Redis; what a chunk grants never takes the count past the quota, and
//! what an instance leaves unspent at the window's end is lost (the count
//! errs on the safe side). Where the provider tells how many requests are
//! left (`remaining_header`) and that is fewer than the count leaves, the
//! count follows it: others may spend the same allocation. If Redis cannot
//! be reached the request goes (the rate limit, which has its own
//! fallback, still holds) and a warning says so: a quota is a budget, not
//! the provider's hard limit.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::connection::RedisHandle;
use crate::provider::Quota;
use crate::sampled::Sampled;

pub struct Quotas {
    redis: RedisHandle,
    key_prefix: String,
    provider: String,
    quota: Quota,
    /// Per account (`None`: records without one): this instance's chunk.
    local: Mutex<HashMap<Option<String>, Chunk>>,
    redis_down: Sampled,
}

/// What this instance holds of a window's quota.
#[derive(Default)]
struct Chunk {
    window: u64,
    left: u64,
    /// The window's quota is spent, fleet-wide.
    spent: bool,
}

/// Whether a request may go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Taken {
    Yes,
    /// The quota is spent until then.
    Spent {
        resets_at: SystemTime,
    },
}

/// Raises a window's count to what the provider says was used, never
/// lowers it.
static RAISE: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r"local used = tonumber(ARGV[1])
if tonumber(redis.call('GET', KEYS[1]) or '0') < used then
  redis.call('SET', KEYS[1], used, 'EX', ARGV[2])
end
return 0",
    )
});

impl Quotas {
    pub fn new(redis: RedisHandle, key_prefix: &str, provider: &str, quota: Quota) -> Self {
        Quotas {
            redis,
            key_prefix: key_prefix.to_string(),
            provider: provider.to_string(),
            quota,
            local: Mutex::new(HashMap::new()),
            redis_down: Sampled::every(Duration::from_secs(10)),
        }
    }

    /// The window `now` is in, and when it ends.
    fn window(&self, now: SystemTime) -> (u64, SystemTime) {
        let per = self.quota.per.as_secs().max(1);
        let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let window = since_epoch / per;
        (window, UNIX_EPOCH + Duration::from_secs((window + 1) * per))
    }

    fn redis_key(&self, account: Option<&str>, window: u64) -> String {
        format!(
            "{}:quota:{}@{}:{window}",
            self.key_prefix,
            self.provider,
            account.unwrap_or_default()
        )
    }

    /// The header telling the requests left, if the quota names one.
    pub fn remaining_header(&self) -> Option<&http::HeaderName> {
        self.quota.remaining_header.as_ref()
    }

    /// The provider says `remaining` requests are left for `account`: the
    /// count follows when that is fewer than it leaves.
    pub async fn follow(&self, account: Option<&str>, remaining: u64, now: SystemTime) {
        let (window, _) = self.window(now);
        // What this instance still holds comes out of what is left too: it
        // stays counted, so the next chunk grants only the rest.
        let held = {
            let mut local = self.local.lock().expect("quota chunks");
            let chunk = local.entry(account.map(str::to_string)).or_default();
            if chunk.window != window {
                return;
            }
            chunk.left = chunk.left.min(remaining);
            chunk.spent |= remaining == 0;
            chunk.left
        };
        let used = self.quota.requests.saturating_sub(remaining) + held;
        let per = self.quota.per.as_secs().max(1);
        let raised: Result<i64, _> = RAISE
            .key(self.redis_key(account, window))
            .arg(used)
            .arg(2 * per)
            .invoke_async(&mut self.redis.clone())
            .await;
        if let Err(e) = raised {
            self.redis_down.warn(|suppressed| {
                tracing::warn!(provider = %self.provider, account, error = %e, suppressed, "quota count unavailable (Redis): the provider's remaining count is not shared");
            });
        }
    }

    /// When `account`'s quota resets, if this instance knows it is spent
    /// (without taking anything).
    pub fn spent(&self, account: Option<&str>, now: SystemTime) -> Option<SystemTime> {
        let (window, resets_at) = self.window(now);
        let local = self.local.lock().expect("quota chunks");
        let chunk = local.get(&account.map(str::to_string))?;
        (chunk.window == window && chunk.spent && chunk.left == 0).then_some(resets_at)
    }

    /// Takes one request of `account`'s quota, at `now`.
    pub async fn take(&self, account: Option<&str>, now: SystemTime) -> Taken {
        let per = self.quota.per.as_secs().max(1);
        let (window, resets_at) = self.window(now);
        let key = account.map(str::to_string);
        {
            let mut local = self.local.lock().expect("quota chunks");
            let chunk = local.entry(key.clone()).or_default();
            if chunk.window != window {
                *chunk = Chunk {
                    window,
                    ..Chunk::default()
                };
            }
            if chunk.left > 0 {
                chunk.left -= 1;
                return Taken::Yes;
            }
            if chunk.spent {
                return Taken::Spent { resets_at };
            }
        }
        let size = (self.quota.requests / 100).clamp(1, 100);
        let redis_key = self.redis_key(account, window);
        let counted: Result<(u64,), redis::RedisError> = redis::pipe()
            .atomic()
            .incr(&redis_key, size)
            .expire(&redis_key, (2 * per) as i64)
            .ignore()
            .query_async(&mut self.redis.clone())
            .await;
        let total = match counted {
            Ok((total,)) => total,
            Err(e) => {
                self.redis_down.warn(|suppressed| {
                    tracing::warn!(provider = %self.provider, account, error = %e, suppressed, "quota count unavailable (Redis): requests go uncounted");
                });
                return Taken::Yes;
            }
        };
        let granted = self.quota.requests.saturating_sub(total - size).min(size);
        let mut local = self.local.lock().expect("quota chunks");
        let chunk = local.entry(key).or_default();
        if chunk.window != window {
            return Taken::Yes;
        }
        match granted {
            0 => {
                chunk.spent = true;
                Taken::Spent { resets_at }
            }
            _ => {
                chunk.left += granted - 1;
                Taken::Yes
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use syncflow_testkit::RedisServer;

    use super::*;

    fn quotas(server: &RedisServer, requests: u64) -> Quotas {
        let redis = super::super::connect(&server.url()).unwrap();
        let quota = Quota {
            requests,
            per: Duration::from_secs(86_400),
            remaining_header: None,
        };
        Quotas::new(redis, "test", "crm", quota)
    }

    #[tokio::test]
    async fn instances_spend_one_quota_per_account_until_the_window_ends() {
        let server = RedisServer::start().unwrap();
        let (one, two) = (quotas(&server, 5), quotas(&server, 5));
        let noon = UNIX_EPOCH + Duration::from_secs(20_000 * 86_400 + 43_200);
        let midnight = UNIX_EPOCH + Duration::from_secs(20_001 * 86_400);
        for _ in 0..3 {
            assert_eq!(one.take(Some("acme"), noon).await, Taken::Yes);
        }
        for _ in 0..2 {
            assert_eq!(two.take(Some("acme"), noon).await, Taken::Yes);
        }
        let spent = Taken::Spent {
            resets_at: midnight,
        };
        assert_eq!(one.take(Some("acme"), noon).await, spent);
        assert_eq!(two.take(Some("acme"), noon).await, spent);
        // Another account has its own; the next day starts over.
        assert_eq!(one.take(Some("globex"), noon).await, Taken::Yes);
        assert_eq!(one.take(Some("acme"), midnight).await, Taken::Yes);
    }

    #[tokio::test]
    async fn the_count_follows_a_provider_that_says_fewer_are_left() {
        let server = RedisServer::start().unwrap();
        let (one, two) = (quotas(&server, 100), quotas(&server, 100));
        let now = SystemTime::now();
        assert_eq!(one.take(None, now).await, Taken::Yes);
        // Others spent the allocation too: 3 left, says the provider (its
        // answer to the request just taken). Three more, from any instance.
        one.follow(None, 3, now).await;
        assert_eq!(two.take(None, now).await, Taken::Yes);
        assert_eq!(one.take(None, now).await, Taken::Yes);
        assert_eq!(two.take(None, now).await, Taken::Yes);
        assert!(matches!(two.take(None, now).await, Taken::Spent { .. }));
        assert!(matches!(one.take(None, now).await, Taken::Spent { .. }));
        // As many left as the count leaves: nothing changes.
        let three = quotas(&server, 100);
        three.follow(Some("acme"), 100, now).await;
        for _ in 0..100 {
            assert_eq!(three.take(Some("acme"), now).await, Taken::Yes);
        }
        assert!(matches!(
            three.take(Some("acme"), now).await,
            Taken::Spent { .. }
        ));
    }

    #[tokio::test]
    async fn chunks_never_grant_past_the_quota() {
        let server = RedisServer::start().unwrap();
        let fleet: Vec<Quotas> = (0..3).map(|_| quotas(&server, 250)).collect();
        let now = SystemTime::now();
        let mut granted = 0;
        for round in 0..200 {
            for q in &fleet {
                if q.take(None, now).await == Taken::Yes {
                    granted += 1;
                }
            }
            assert!(granted <= 250, "round {round}: {granted}");
        }
        // Chunks of 2: up to one unspent per instance at the end.
        assert!(granted >= 247, "{granted}");
    }

    #[tokio::test]
    async fn without_redis_requests_go() {
        let redis = super::super::connect("redis://127.0.0.1:1").unwrap();
        let quota = Quota {
            requests: 1,
            per: Duration::from_secs(60),
            remaining_header: None,
        };
        let q = Quotas::new(redis, "test", "crm", quota);
        for _ in 0..3 {
            assert_eq!(q.take(None, SystemTime::now()).await, Taken::Yes);
        }
    }
}
