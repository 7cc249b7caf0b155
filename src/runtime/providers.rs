//! The running side of providers: one HTTP API client per provider, and one
//! shared rate limiter per provider that outlives client rebuilds, so a reload never
//! resets a provider's limit nor runs two limiters for the same key.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::plan::ProviderChange;
use crate::credentials::CredentialStore;
use crate::limiter::{
    AccountLimits, Limiter, LimiterError, Quotas, RateLimitSpec, RedisHandle, SharedLimiter,
};
use crate::provider::{Provider, RateLimit};
use crate::sink::http::{ApiBuildError, ProviderApi};

#[derive(Debug, thiserror::Error)]
pub enum ProviderBuildError {
    #[error(transparent)]
    Api(#[from] ApiBuildError),
    #[error("provider {provider}: {source}")]
    Limiter {
        provider: String,
        #[source]
        source: LimiterError,
    },
}

/// A provider's API client and the limiter inside it.
#[derive(Clone)]
pub struct ProviderRuntime {
    pub api: Arc<ProviderApi>,
    limiter: Option<(SharedLimiter, RateLimit)>,
    /// The same limit per account, for records that name theirs.
    accounts: Option<Arc<AccountLimits>>,
}

/// Every provider's runtime, by name.
pub struct Providers {
    redis: RedisHandle,
    /// Credentials per account (`auth.per_account`).
    credentials: Arc<CredentialStore>,
    /// `redis.key_prefix`.
    key_prefix: String,
    running: BTreeMap<String, ProviderRuntime>,
}

/// Providers built for a reload, not yet in use: dropping it changes nothing.
pub struct Staged {
    built: BTreeMap<String, ProviderRuntime>,
    /// Limiters kept from the running providers that take a new rate.
    new_rates: Vec<(String, SharedLimiter, RateLimit)>,
    /// Account limits kept from the running providers: they take the new
    /// rate too.
    new_account_rates: Vec<(Arc<AccountLimits>, RateLimit)>,
}

impl Providers {
    pub fn new(redis: RedisHandle, key_prefix: &str, credentials: Arc<CredentialStore>) -> Self {
        Providers {
            redis,
            credentials,
            key_prefix: key_prefix.to_string(),
            running: BTreeMap::new(),
        }
    }

    pub fn get(&self, name: &str) -> Option<&ProviderRuntime> {
        self.running.get(name)
    }

    /// Builds what `changes` needs (sinks of added and rebuilt providers) for
    /// the providers in `new`, touching nothing that runs.
    pub fn stage(
        &self,
        new: &BTreeMap<String, Arc<Provider>>,
        changes: &BTreeMap<String, ProviderChange>,
    ) -> Result<Staged, ProviderBuildError> {
        let mut staged = Staged {
            built: BTreeMap::new(),
            new_rates: Vec::new(),
            new_account_rates: Vec::new(),
        };
        for (name, change) in changes {
            let provider = &new[name];
            let running = self.running.get(name);
            match change {
                ProviderChange::Unchanged => {}
                ProviderChange::RateLimit => {
                    let (Some((limiter, _)), Some(rl)) =
                        (running.and_then(|r| r.limiter.clone()), provider.rate_limit)
                    else {
                        unreachable!("a rate-limit change keeps a limit on both sides");
                    };
                    staged.new_rates.push((name.clone(), limiter, rl));
                    if let Some(accounts) = running.and_then(|r| r.accounts.clone()) {
                        staged.new_account_rates.push((accounts, rl));
                    }
                }
                ProviderChange::Rebuilt | ProviderChange::Added => {
                    let kept = running.and_then(|r| r.limiter.clone());
                    let limiter = match (kept, provider.rate_limit) {
                        (_, None) => None,
                        (Some((limiter, old)), Some(rl)) => {
                            if old != rl {
                                staged.new_rates.push((name.clone(), limiter.clone(), rl));
                            }
                            Some((limiter, rl))
                        }
                        (None, Some(rl)) => Some((self.new_limiter(provider, rl)?, rl)),
                    };
                    let sink_limiter = limiter
                        .as_ref()
                        .map_or(Limiter::Unlimited, |(l, _)| Limiter::Shared(l.clone()));
                    let accounts = match (
                        running.and_then(|r| r.accounts.clone()),
                        provider.rate_limit,
                    ) {
                        (_, None) => None,
                        (Some(kept), Some(rl)) => {
                            let old = running
                                .and_then(|r| r.limiter.as_ref())
                                .map(|(_, old)| *old);
                            if old != Some(rl) {
                                staged.new_account_rates.push((kept.clone(), rl));
                            }
                            Some(kept)
                        }
                        (None, Some(rl)) => Some(Arc::new(
                            AccountLimits::new(
                                self.redis.clone(),
                                &self.key_prefix,
                                &provider.name,
                                spec(rl),
                            )
                            .map_err(|source| {
                                ProviderBuildError::Limiter {
                                    provider: provider.name.clone(),
                                    source,
                                }
                            })?,
                        )),
                    };
                    let mut sink = ProviderApi::new(provider.clone(), sink_limiter)?
                        .with_account_credentials(self.credentials.clone())?;
                    if let Some(accounts) = &accounts {
                        sink = sink.with_account_limits(accounts.clone());
                    }
                    if let Some(quota) = provider.quota.clone() {
                        let quotas = Quotas::new(
                            self.redis.clone(),
                            &self.key_prefix,
                            &provider.name,
                            quota,
                        );
                        sink = sink.with_quotas(Arc::new(quotas));
                    }
                    staged.built.insert(
                        name.clone(),
                        ProviderRuntime {
                            api: Arc::new(sink),
                            limiter,
                            accounts,
                        },
                    );
                }
            }
        }
        Ok(staged)
    }

    /// Puts staged providers in use and forgets providers no longer in
    /// `keep` (pipelines still sending through them hold their own `Arc`).
    pub fn commit(&mut self, staged: Staged, keep: impl Fn(&str) -> bool) {
        self.running.extend(staged.built);
        for (name, limiter, rl) in staged.new_rates {
            if let Err(e) = limiter.set_spec(spec(rl)) {
                tracing::error!(provider = %name, error = %e, "cannot apply the new rate limit");
            }
            if let Some(running) = self.running.get_mut(&name) {
                running.limiter = Some((limiter, rl));
            }
        }

        for (accounts, rl) in staged.new_account_rates {
            if let Err(e) = accounts.set_spec(spec(rl)) {
                tracing::error!(error = %e, "cannot apply the new rate limit to the accounts");
            }
        }

        self.running.retain(|name, _| keep(name));
    }

    fn new_limiter(
        &self,
        provider: &Provider,
        rl: RateLimit,
    ) -> Result<SharedLimiter, ProviderBuildError> {
        SharedLimiter::with_key_prefix(
            self.redis.clone(),
            &self.key_prefix,
            &provider.name,
            spec(rl),
        )
        .map_err(|source| ProviderBuildError::Limiter {
            provider: provider.name.clone(),
            source,
        })
    }
}

fn spec(rl: RateLimit) -> RateLimitSpec {
    RateLimitSpec {
        requests: rl.requests,
        per: rl.per,
        burst: rl.burst,
    }
}
