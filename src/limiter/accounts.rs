//! [`AccountLimits`]: a provider's rate limit applied per account.
//!
//! A pipeline that names the account a record belongs to (`account:`) has
//! each account of the provider limited on its own: one [`SharedLimiter`]
//! per account, made the first time the account sends, on the Redis key
//! `<prefix>:ratelimit:<provider>@<account>:state`, so every instance
//! shares each account's limit as they share a provider's. A change of the
//! provider's `rate_limit` on reload applies to every account.

use std::collections::HashMap;
use std::sync::Mutex;

use super::connection::RedisHandle;
use super::{Limiter, LimiterError, RateLimitSpec, SharedLimiter};

pub struct AccountLimits {
    redis: RedisHandle,
    key_prefix: String,
    provider: String,
    state: Mutex<State>,
}

struct State {
    spec: RateLimitSpec,
    by_account: HashMap<String, SharedLimiter>,
}

impl AccountLimits {
    pub fn new(
        redis: RedisHandle,
        key_prefix: &str,
        provider: &str,
        spec: RateLimitSpec,
    ) -> Result<Self, LimiterError> {
        spec.validate()?;
        Ok(AccountLimits {
            redis,
            key_prefix: key_prefix.to_string(),
            provider: provider.to_string(),
            state: Mutex::new(State {
                spec,
                by_account: HashMap::new(),
            }),
        })
    }

    /// `account`'s limiter, made on first use.
    pub fn limiter(&self, account: &str) -> Result<Limiter, LimiterError> {
        let mut state = self.state.lock().expect("account limits");
        if let Some(limiter) = state.by_account.get(account) {
            return Ok(Limiter::Shared(limiter.clone()));
        }
        let name = format!("{}@{account}", self.provider);
        let limiter = SharedLimiter::with_key_prefix(
            self.redis.clone(),
            &self.key_prefix,
            &name,
            state.spec,
        )?;
        tracing::info!(provider = %self.provider, account, "first request of the account: its own rate limit");
        state
            .by_account
            .insert(account.to_string(), limiter.clone());
        Ok(Limiter::Shared(limiter))
    }

    /// The provider's new `rate_limit`, for every account.
    pub fn set_spec(&self, spec: RateLimitSpec) -> Result<(), LimiterError> {
        let mut state = self.state.lock().expect("account limits");
        state.spec = spec;
        for limiter in state.by_account.values() {
            limiter.set_spec(spec)?;
        }
        Ok(())
    }

    /// Accounts that have sent so far.
    pub fn accounts(&self) -> usize {
        self.state.lock().expect("account limits").by_account.len()
    }
}
