//! What a provider's API keeps per account, for records that name theirs:
//! the account's own pause (a 429's Retry-After), circuit breaker, outage
//! counts, and this instance's side of its credentials' refresh. An account
//! whose requests keep failing opens its own breaker and holds back its own
//! records only; the other accounts of the provider keep going.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex};

use metrics::Gauge;

use super::breaker::Breaker;
use super::credentials;
use super::pause::Pause;
use crate::config::model::CircuitBreakerConfig;

pub(super) struct AccountState {
    pub pause: Pause,
    pub breaker: Breaker,
    /// The account's requests that succeeded, and those failing now (the
    /// provider's are counted the same way, in `ProviderApi`).
    pub served: AtomicU64,
    pub failing: AtomicUsize,
    /// This instance's side of the account's credentials
    /// (`auth.per_account`).
    pub credentials: credentials::Local,
}

/// Every account's state, made on first use.
pub(super) struct Accounts {
    provider: String,
    breaker: CircuitBreakerConfig,
    /// `syncflow_provider_account_breakers_open`: the accounts whose breaker
    /// is not closed.
    open_breakers: Gauge,
    states: Mutex<HashMap<String, Arc<AccountState>>>,
}

impl Accounts {
    pub fn new(provider: &str, breaker: &CircuitBreakerConfig) -> Self {
        let open_breakers = metrics::gauge!("syncflow_provider_account_breakers_open", "provider" => provider.to_string());
        // Shown from the start, but not reset: a reload builds a new API
        // while the old one's account breakers may still close (and count
        // themselves out).
        open_breakers.increment(0.0);
        Accounts {
            provider: provider.to_string(),
            breaker: breaker.clone(),
            open_breakers,
            states: Mutex::default(),
        }
    }

    pub fn get(&self, account: &str) -> Arc<AccountState> {
        let mut states = self.states.lock().expect("account states");
        if let Some(state) = states.get(account) {
            return state.clone();
        }
        let state = Arc::new(AccountState {
            pause: Pause::new(&self.provider, Some(account)),
            breaker: Breaker::for_account(
                &self.provider,
                account,
                &self.breaker,
                self.open_breakers.clone(),
            ),
            served: AtomicU64::new(0),
            failing: AtomicUsize::new(0),
            credentials: credentials::Local::default(),
        });
        states.insert(account.to_string(), state.clone());
        state
    }
}
