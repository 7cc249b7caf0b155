//! Each account's `Authorization`, for providers with `auth.per_account`:
//! the stored token (`bearer`), or an OAuth2 access token refreshed before
//! it expires and after a 401.
//!
//! - One instance refreshes at a time: it takes a lease in the account's
//!   bucket entry (compare-and-set on its revision), trades the refresh
//!   token, and writes the new access token there, where every instance
//!   sees it. A lease whose holder died runs out after [`LEASE`].
//! - While a refresh is due but another instance holds it, the current
//!   token is used as long as it has not expired; an expired one waits for
//!   the new token.
//! - Credentials the provider refused (the token endpoint's 400/401, a
//!   bearer token's 401, or 401s to [`MAX_REJECTIONS`] freshly refreshed
//!   tokens in a row) are marked invalid in the bucket: the account's
//!   records wait, never dead-lettered, until `syncflow accounts add`
//!   replaces them. Missing credentials wait the same way. Other accounts
//!   are not held back: an account's records in flight are few (the
//!   account gate, executor/accounts.rs).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use http::HeaderValue;
use metrics::Counter;

use super::oauth::{Refreshed, TokenEndpoint};
use crate::clock::now_ms;
use crate::config::model::CredentialKind;
use crate::credentials::{CredentialStore, Current, Lease, WriteError};
use crate::provider::AccountAuth;
use crate::sampled::Sampled;

/// How long a refresh lease holds: longer than a token request may take.
const LEASE: Duration = Duration::from_secs(30);
/// Refreshes a 401 may ask for before the credentials count as invalid.
const MAX_REJECTIONS: u32 = 3;
/// How long after a failed refresh (no answer, 5xx) the next may go.
const RETRY_REFRESH: Duration = Duration::from_secs(2);
/// How often a held account looks again, besides every bucket change.
const HELD_RECHECK: Duration = Duration::from_secs(30);

/// The header one request carries, and which credentials made it.
pub(super) struct Token {
    pub header: HeaderValue,
    revision: u64,
    rejections: u32,
}

/// One provider's accounts' credentials.
pub(super) struct AccountCredentials {
    provider: String,
    kind: CredentialKind,
    store: Arc<CredentialStore>,
    endpoint: Option<TokenEndpoint>,
    refresh_before_ms: i64,
    warn: Sampled,
    refreshes: Counter,
    held: Counter,
}

/// Why an account's records cannot go now.
enum Look {
    Go(Token),
    /// Due for a refresh: this task may do it. Meanwhile the current
    /// token, when it has not expired.
    /// `true`: because the current token got a 401.
    Refresh(Arc<Current>, Option<Token>, bool),
    /// Wait for a change (another instance refreshing, or held).
    Wait {
        held: Option<String>,
    },
}

impl AccountCredentials {
    pub fn new(
        provider: &str,
        auth: &AccountAuth,
        store: Arc<CredentialStore>,
        timeout: Duration,
    ) -> Result<Self, String> {
        let endpoint = auth
            .oauth2
            .as_ref()
            .map(|oauth| TokenEndpoint::new(oauth, timeout))
            .transpose()?;
        let refresh_before = auth
            .oauth2
            .as_ref()
            .map_or(Duration::ZERO, |o| o.refresh_before);
        Ok(AccountCredentials {
            provider: provider.to_string(),
            kind: auth.kind,
            store,
            endpoint,
            refresh_before_ms: refresh_before.as_millis() as i64,
            warn: Sampled::every(Duration::from_secs(1)),
            refreshes: metrics::counter!("syncflow_provider_token_refreshes_total", "provider" => provider.to_string()),
            held: metrics::counter!("syncflow_provider_credential_waits_total", "provider" => provider.to_string()),
        })
    }

    /// The header for `account`'s next request; waits while it has no
    /// usable credentials.
    ///
    /// The usual case, a token that may go now, is answered here; the
    /// rest (fetching, refreshing, waiting) is boxed, so that its state is
    /// not part of every request's future (bench/README.md, "Futures
    /// copied"). The same for [`Self::rejected`] and [`Self::accepted`].
    pub async fn token(&self, account: &str, local: &Local) -> Token {
        if let Look::Go(token) = self.look(account, local) {
            return token;
        }
        Box::pin(self.wait_for_token(account, local)).await
    }

    async fn wait_for_token(&self, account: &str, local: &Local) -> Token {
        // The watch may not have brought the account in yet (just started,
        // just added): asked of the bucket once before holding its records.
        if self.store.get(&self.provider, account).is_none()
            && let Err(e) = self.store.fetch(&self.provider, account).await
        {
            tracing::warn!(provider = %self.provider, account, error = %e, "cannot read the account's credentials");
        }
        loop {
            let changed = self.store.changed();
            let look = self.look(account, local);
            let wait = match look {
                Look::Go(token) => return token,
                Look::Refresh(current, usable, after_401) => {
                    if let Some(token) = self.refresh(account, local, &current, after_401).await {
                        return token;
                    }
                    if let Some(token) = usable {
                        return token;
                    }
                    // Another task or instance refreshes, or it failed and
                    // is tried again shortly.
                    Duration::from_secs(1)
                }
                Look::Wait { held: None } => Duration::from_secs(1),
                Look::Wait { held: Some(why) } => {
                    self.held.increment(1);
                    self.warn.warn(|suppressed| {
                        tracing::warn!(provider = %self.provider, account, reason = %why, suppressed, "the account's records wait for its credentials: replace them with `syncflow accounts add`");
                    });
                    HELD_RECHECK
                }
            };
            let _ = tokio::time::timeout(wait, changed).await;
        }
    }

    fn look(&self, account: &str, local: &Local) -> Look {
        let Some(current) = self.store.get(&self.provider, account) else {
            return Look::Wait {
                held: Some("no credentials stored for the account".into()),
            };
        };
        let stored = &current.stored;
        if let Some(why) = &stored.invalid {
            return Look::Wait {
                held: Some(why.clone()),
            };
        }
        if stored.kind != self.kind {
            return Look::Wait {
                held: Some(format!(
                    "stored credentials are {}, the provider takes {}",
                    stored.kind.as_str(),
                    self.kind.as_str()
                )),
            };
        }
        if current.header.is_none() && stored.bearer().is_some() {
            return Look::Wait {
                held: Some("the stored token is not a valid header value".into()),
            };
        }
        let now = now_ms();
        // A token that got a 401 is due for a refresh, and not sent again.
        let stale = local.lock().is_stale(current.revision);
        let usable = current
            .header
            .clone()
            .filter(|_| !stored.expired(now) && !stale);
        let due = stale || stored.refresh_due(now, self.refresh_before_ms);
        let elsewhere = stored.refreshing_elsewhere(&self.store.instance, now);
        let usable = usable.map(|header| Token {
            header,
            revision: current.revision,
            rejections: stored.rejections,
        });
        match (usable, due && !elsewhere) {
            (usable, true) => Look::Refresh(current.clone(), usable, stale),
            (Some(token), false) => Look::Go(token),
            (None, false) => Look::Wait { held: None },
        }
    }

    /// The provider answered 401 to `token`: refreshes (OAuth2) or marks
    /// the credentials invalid. The request then asks for a token again.
    pub async fn rejected(&self, account: &str, local: &Local, token: &Token) {
        Box::pin(self.refresh_or_invalidate(account, local, token)).await
    }

    async fn refresh_or_invalidate(&self, account: &str, local: &Local, token: &Token) {
        let Some(current) = self.store.get(&self.provider, account) else {
            return;
        };
        if current.revision != token.revision {
            return; // Replaced or refreshed since: try the new ones.
        }
        match self.kind {
            CredentialKind::Bearer => {
                self.invalidate(
                    account,
                    &current,
                    "the provider answered 401 to the token".into(),
                )
                .await
            }
            CredentialKind::Oauth2 if current.stored.rejections + 1 >= MAX_REJECTIONS => {
                let why = format!(
                    "the provider answered 401 to {MAX_REJECTIONS} freshly refreshed access tokens in a row"
                );
                self.invalidate(account, &current, why).await
            }
            CredentialKind::Oauth2 => {
                if self.refresh(account, local, &current, true).await.is_none() {
                    local.lock().stale = Some(current.revision);
                }
            }
        }
    }

    /// The provider accepted `token`: a run of 401s is over.
    pub async fn accepted(&self, account: &str, token: &Token) {
        if token.rejections > 0 {
            Box::pin(self.clear_rejections(account, token)).await
        }
    }

    async fn clear_rejections(&self, account: &str, token: &Token) {
        if let Some(current) = self.store.get(&self.provider, account)
            && current.revision == token.revision
        {
            let mut stored = current.stored.clone();
            stored.rejections = 0;
            let _ = self
                .store
                .update(&self.provider, account, &stored, current.revision)
                .await;
        }
    }

    async fn invalidate(&self, account: &str, current: &Current, why: String) {
        tracing::error!(provider = %self.provider, account, reason = %why, "credentials refused: the account's records wait until `syncflow accounts add` replaces them");
        let mut stored = current.stored.clone();
        stored.invalid = Some(why);
        stored.refreshing = None;
        stored.updated_at_ms = now_ms();
        let _ = self
            .store
            .update(&self.provider, account, &stored, current.revision)
            .await;
    }

    /// Refreshes `account`'s access token if this task gets to: not while
    /// another task here or another instance (its lease) does. `after_401`:
    /// the provider refused the current token.
    async fn refresh(
        &self,
        account: &str,
        local: &Local,
        current: &Current,
        after_401: bool,
    ) -> Option<Token> {
        let endpoint = self.endpoint.as_ref()?;
        let _refreshing = LocalRefresh::take(local)?;
        let now = now_ms();
        if current
            .stored
            .refreshing_elsewhere(&self.store.instance, now)
        {
            return None;
        }
        let mut leased = current.stored.clone();
        leased.refreshing = Some(Lease {
            by: self.store.instance.clone(),
            until_ms: now + LEASE.as_millis() as i64,
        });
        let leased = match self
            .store
            .update(&self.provider, account, &leased, current.revision)
            .await
        {
            Ok(leased) => leased,
            Err(WriteError::Conflict) => return None,
            Err(e) => {
                self.warn.warn(|suppressed| {
                    tracing::warn!(provider = %self.provider, account, error = %e, suppressed, "cannot take the token refresh lease");
                });
                return None;
            }
        };
        self.refreshes.increment(1);
        let mut next = leased.stored.clone();
        next.refreshing = None;
        next.updated_at_ms = now_ms();
        match endpoint.refresh(&leased.stored.secret).await {
            Refreshed::Token {
                access_token,
                expires_in,
                refresh_token,
            } => {
                let issued = now_ms();
                next.access_token = Some(access_token);
                next.issued_at_ms = Some(issued);
                next.expires_at_ms = expires_in.map(|ttl| issued + ttl.as_millis() as i64);
                next.rejections = if after_401 { next.rejections + 1 } else { 0 };
                if let Some(rotated) = refresh_token {
                    next.secret = rotated;
                }
                tracing::info!(provider = %self.provider, account, expires_in_s = expires_in.map(|d| d.as_secs()), after_401, "access token refreshed");
            }
            Refreshed::Refused(why) => {
                tracing::error!(provider = %self.provider, account, reason = %why, "credentials refused: the account's records wait until `syncflow accounts add` replaces them");
                next.invalid = Some(why);
            }
            Refreshed::Failed(why) => {
                local.lock().retry_at = Some(Instant::now() + RETRY_REFRESH);
                self.warn.warn(|suppressed| {
                    tracing::warn!(provider = %self.provider, account, error = %why, suppressed, "token refresh failed: tried again shortly");
                });
            }
        }
        let written = self
            .store
            .update(&self.provider, account, &next, leased.revision)
            .await;
        match written {
            Ok(current) if current.stored.invalid.is_none() => {
                let header = current.header.clone()?;
                Some(Token {
                    header,
                    revision: current.revision,
                    rejections: current.stored.rejections,
                })
            }
            Ok(_) => None,
            Err(e) => {
                // Replaced meanwhile (`accounts add`): those win.
                tracing::warn!(provider = %self.provider, account, error = %e, "refreshed token not stored");
                None
            }
        }
    }
}

/// What this instance keeps of one account's credentials besides the
/// bucket, with the account's other state (account.rs): whether a task here
/// is refreshing them, when a failed refresh may be tried again, and the
/// revision whose token got a 401 while another refreshed it (not to be
/// sent again).
#[derive(Default)]
pub(super) struct Local(Mutex<LocalState>);

#[derive(Default)]
struct LocalState {
    refreshing: bool,
    retry_at: Option<Instant>,
    stale: Option<u64>,
}

impl Local {
    fn lock(&self) -> std::sync::MutexGuard<'_, LocalState> {
        self.0.lock().expect("account credentials")
    }
}

impl LocalState {
    /// Whether the token at `revision` got a 401 (and forgets the 401 of
    /// an older one).
    fn is_stale(&mut self, revision: u64) -> bool {
        match self.stale {
            Some(at) if at == revision => true,
            Some(_) => {
                self.stale = None;
                false
            }
            None => false,
        }
    }
}

/// This task refreshes the account on this instance; `None` when another
/// task already does, or a failed refresh is not to be tried again yet.
struct LocalRefresh<'a>(&'a Local);

impl<'a> LocalRefresh<'a> {
    fn take(local: &'a Local) -> Option<Self> {
        let mut state = local.lock();
        if state.refreshing || state.retry_at.is_some_and(|at| Instant::now() < at) {
            return None;
        }
        state.refreshing = true;
        state.retry_at = None;
        Some(LocalRefresh(local))
    }
}

impl Drop for LocalRefresh<'_> {
    fn drop(&mut self) {
        self.0.lock().refreshing = false;
    }
}
