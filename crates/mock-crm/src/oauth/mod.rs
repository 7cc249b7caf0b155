//! The OAuth2 refresh-token flow, per account: what lets syncflow's token
//! refresh (one refresh token per account, short-lived access tokens) be
//! tested against the mock instead of a real CRM app.
//!
//! The mock keeps, per account name, its current refresh token (a setting:
//! registered by the tests over `/_admin/oauth/grants/{account}` or
//! [`MockCrm::oauth_grant`](super::MockCrm::oauth_grant)), and every access
//! token it issued with its account and expiry. A token request
//! (`grant_type=refresh_token`, form-encoded, to HubSpot's
//! `/oauth/v1/token` or Salesforce's `/services/oauth2/token`) trades a
//! known refresh token for a fresh access token; earlier access tokens stay
//! valid until their own expiry, as HubSpot's do. With
//! `rotate_refresh_tokens`, each refresh also replaces the refresh token.
//!
//! Token requests skip the gateway: no faults, fail rate, rate limit,
//! request counters or log (only the latency), but they are counted here
//! ([`OAuthStats`]). Expired and revoked access tokens are kept (marked
//! expired), so a request carrying one is told its token expired (HubSpot's
//! `EXPIRED_AUTHENTICATION`) and counted against its account.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::header::HOST;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::OAuthConfig;
use super::gateway::{Api, Provider};
use super::reply::Reply;

#[cfg(test)]
mod tests;

/// The account name stats use for a refresh token or bearer that names no
/// known account.
pub(super) const UNKNOWN_ACCOUNT: &str = "?";

/// Counts of the OAuth flow since the start or the last reset, by account,
/// as returned by `MockCrm::oauth_stats` and `GET /_admin/oauth`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OAuthStats {
    /// Access tokens issued.
    pub refreshes: BTreeMap<String, u64>,
    /// Token requests refused (bad grant type, client or refresh token);
    /// `"?"` when the refresh token names no known account.
    pub refused_refreshes: BTreeMap<String, u64>,
    /// API requests refused 401 for their bearer; `"?"` when it is no token
    /// the mock issued (missing, unknown), else the expired or revoked
    /// token's account.
    pub unauthorized: BTreeMap<String, u64>,
    /// Access tokens valid now, by account (accounts without one left out).
    /// Not reset: tokens are kept by a reset.
    pub live_tokens: BTreeMap<String, u64>,
}

/// What a bearer is to the OAuth flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Bearer {
    /// A live access token of this account.
    Live(String),
    /// An access token of this account that expired or was revoked.
    Expired(String),
    Unknown,
}

/// The grants and issued tokens; present even with OAuth off, so the
/// admin calls always work (they then change nothing that is checked).
pub(super) struct OAuth {
    config: Option<OAuthConfig>,
    state: Mutex<Grants>,
}

#[derive(Default)]
struct Grants {
    /// Account by refresh token, and the other way round.
    accounts_by_refresh: HashMap<String, String>,
    refresh_by_account: HashMap<String, String>,
    /// Every access token issued, expired ones included (see the module doc).
    access: HashMap<String, Issued>,
    stats: OAuthStats,
}

struct Issued {
    account: String,
    expires_at: Instant,
}

/// A successful refresh, as both APIs word it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Refreshed {
    pub(super) access_token: String,
    /// The refresh token to use next time: the same one, or a new one when
    /// refresh tokens rotate.
    pub(super) refresh_token: String,
    /// Whether `refresh_token` is a new one (rotation).
    pub(super) rotated: bool,
    pub(super) expires_in: Duration,
}

/// Why a token request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TokenRefusal {
    /// The body is no form the mock can read.
    InvalidRequest,
    UnsupportedGrantType,
    InvalidClient,
    /// Unknown, revoked or rotated away.
    BadRefreshToken,
}

/// A token request's fields. All optional: a missing one is refused like a
/// wrong one.
#[derive(Debug, Default, Deserialize)]
struct TokenForm {
    grant_type: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    refresh_token: Option<String>,
}

impl OAuth {
    pub(super) fn new(config: Option<OAuthConfig>) -> OAuth {
        OAuth {
            config,
            state: Mutex::new(Grants::default()),
        }
    }

    pub(super) fn is_on(&self) -> bool {
        self.config.is_some()
    }

    /// Registers or replaces `account`'s refresh token (its old one stops
    /// working; its access tokens stay valid). A token another account held
    /// moves to `account`.
    pub(super) fn grant(&self, account: &str, refresh_token: &str) {
        let mut grants = self.lock();
        grants.forget_refresh_token_of(account);
        if let Some(previous) = grants
            .accounts_by_refresh
            .insert(refresh_token.to_owned(), account.to_owned())
        {
            grants.refresh_by_account.remove(&previous);
        }
        grants
            .refresh_by_account
            .insert(account.to_owned(), refresh_token.to_owned());
    }

    /// Forgets `account`'s refresh token and expires its access tokens.
    pub(super) fn revoke(&self, account: &str) {
        let mut grants = self.lock();
        grants.forget_refresh_token_of(account);
        grants.expire(account, Instant::now());
    }

    /// Expires `account`'s access tokens now; its refresh token still works.
    pub(super) fn expire(&self, account: &str) {
        self.lock().expire(account, Instant::now());
    }

    pub(super) fn stats(&self) -> OAuthStats {
        let grants = self.lock();
        let mut stats = grants.stats.clone();
        let now = Instant::now();
        for issued in grants.access.values() {
            if issued.expires_at > now {
                *stats.live_tokens.entry(issued.account.clone()).or_default() += 1;
            }
        }
        stats
    }

    /// Zeroes the counts; grants and tokens stay (they are settings, and
    /// what clients hold).
    pub(super) fn reset_stats(&self) {
        self.lock().stats = OAuthStats::default();
    }

    /// What `bearer` is at `now`.
    pub(super) fn check(&self, bearer: &str, now: Instant) -> Bearer {
        match self.lock().access.get(bearer) {
            Some(issued) if issued.expires_at > now => Bearer::Live(issued.account.clone()),
            Some(issued) => Bearer::Expired(issued.account.clone()),
            None => Bearer::Unknown,
        }
    }

    /// Counts an API request refused for its bearer (`None`: no account).
    pub(super) fn count_unauthorized(&self, account: Option<&str>) {
        let account = account.unwrap_or(UNKNOWN_ACCOUNT);
        count(&mut self.lock().stats.unauthorized, account);
    }

    /// Handles a token request's body; `None` with OAuth off.
    pub(super) fn refresh(
        &self,
        body: &[u8],
        now: Instant,
    ) -> Option<Result<Refreshed, TokenRefusal>> {
        let config = self.config.as_ref()?;
        // Parsed before the lock, which the request path shares.
        let form = serde_urlencoded::from_bytes::<TokenForm>(body);
        let mut grants = self.lock();
        let Ok(form) = form else {
            count(&mut grants.stats.refused_refreshes, UNKNOWN_ACCOUNT);
            return Some(Err(TokenRefusal::InvalidRequest));
        };
        let account = form
            .refresh_token
            .as_ref()
            .and_then(|token| grants.accounts_by_refresh.get(token))
            .cloned();
        let checked = if form.grant_type.as_deref() != Some("refresh_token") {
            Err(TokenRefusal::UnsupportedGrantType)
        } else if form.client_id.as_deref() != Some(&config.client_id)
            || form.client_secret.as_deref() != Some(&config.client_secret)
        {
            Err(TokenRefusal::InvalidClient)
        } else {
            account.clone().ok_or(TokenRefusal::BadRefreshToken)
        };
        Some(match checked {
            Ok(account) => Ok(grants.issue(config, account, form.refresh_token, now)),
            Err(refusal) => {
                let account = account.as_deref().unwrap_or(UNKNOWN_ACCOUNT);
                count(&mut grants.stats.refused_refreshes, account);
                Err(refusal)
            }
        })
    }

    fn lock(&self) -> MutexGuard<'_, Grants> {
        // Every change leaves the maps consistent: keep serving after a panic.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Grants {
    /// A new access token for `account`, which presented `refresh_token`.
    fn issue(
        &mut self,
        config: &OAuthConfig,
        account: String,
        refresh_token: Option<String>,
        now: Instant,
    ) -> Refreshed {
        let access_token = self.new_access_token();
        let issued = Issued {
            account: account.clone(),
            expires_at: now + config.access_ttl,
        };
        self.access.insert(access_token.clone(), issued);
        count(&mut self.stats.refreshes, &account);
        let refresh_token = match config.rotate_refresh_tokens {
            true => {
                let rotated = self.new_refresh_token();
                self.forget_refresh_token_of(&account);
                self.accounts_by_refresh
                    .insert(rotated.clone(), account.clone());
                self.refresh_by_account.insert(account, rotated.clone());
                rotated
            }
            false => refresh_token.unwrap_or_default(),
        };
        Refreshed {
            access_token,
            refresh_token,
            rotated: config.rotate_refresh_tokens,
            expires_in: config.access_ttl,
        }
    }

    fn forget_refresh_token_of(&mut self, account: &str) {
        if let Some(token) = self.refresh_by_account.remove(account) {
            self.accounts_by_refresh.remove(&token);
        }
    }

    fn expire(&mut self, account: &str, now: Instant) {
        for issued in self.access.values_mut() {
            if issued.account == account && issued.expires_at > now {
                issued.expires_at = now;
            }
        }
    }

    fn new_access_token(&self) -> String {
        loop {
            let token = format!("at-{:032x}", rand::random::<u128>());
            if !self.access.contains_key(&token) {
                return token;
            }
        }
    }

    fn new_refresh_token(&self) -> String {
        loop {
            let token = format!("rt-{:032x}", rand::random::<u128>());
            if !self.accounts_by_refresh.contains_key(&token) {
                return token;
            }
        }
    }
}

fn count(counts: &mut BTreeMap<String, u64>, account: &str) {
    match counts.get_mut(account) {
        Some(n) => *n += 1,
        None => {
            counts.insert(account.to_owned(), 1);
        }
    }
}

/// How an API words the answers of its token endpoint that differ from the
/// other's (the client refusals are the same, as the OAuth2 RFC words them).
pub(super) trait TokenAnswers {
    /// `host`: the `Host` the client called, for URLs in the answer.
    fn token_issued(refreshed: &Refreshed, host: Option<&str>) -> Reply;
    fn bad_refresh_token() -> Reply;
}

/// `POST` to an API's token endpoint: past the gateway (see the module doc),
/// the body read as a form whatever its content type.
pub(super) async fn token<P: Provider + TokenAnswers>(
    State(api): State<Arc<Api<P>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let settings = api.settings();
    let reply = match settings.oauth.refresh(&body, Instant::now()) {
        None => Reply::json(
            StatusCode::NOT_FOUND,
            &json!({"error": "not_found", "error_description": "OAuth is off: start the mock with an OAuth client (--oauth-client-id)"}),
        ),
        Some(Ok(refreshed)) => {
            let host = headers.get(HOST).and_then(|host| host.to_str().ok());
            P::token_issued(&refreshed, host)
        }
        Some(Err(TokenRefusal::BadRefreshToken)) => P::bad_refresh_token(),
        Some(Err(TokenRefusal::InvalidClient)) => Reply::json(
            StatusCode::UNAUTHORIZED,
            &json!({"error": "invalid_client", "error_description": "invalid client credentials"}),
        ),
        Some(Err(TokenRefusal::UnsupportedGrantType)) => Reply::json(
            StatusCode::BAD_REQUEST,
            &json!({"error": "unsupported_grant_type"}),
        ),
        Some(Err(TokenRefusal::InvalidRequest)) => Reply::json(
            StatusCode::BAD_REQUEST,
            &json!({"error": "invalid_request", "error_description": "expected an application/x-www-form-urlencoded body"}),
        ),
    };
    if !settings.latency().is_zero() {
        tokio::time::sleep(settings.latency()).await;
    }
    reply.into_response()
}

#[cfg(test)]
mod unit_tests {
    use super::*;

    fn oauth(rotate: bool) -> OAuth {
        OAuth::new(Some(OAuthConfig {
            rotate_refresh_tokens: rotate,
            ..OAuthConfig::new("id", "secret", Duration::from_secs(60))
        }))
    }

    fn form(refresh_token: &str) -> String {
        format!(
            "grant_type=refresh_token&client_id=id&client_secret=secret&refresh_token={refresh_token}"
        )
    }

    #[test]
    fn a_refresh_token_buys_access_tokens_of_its_account_until_they_expire() {
        let oauth = oauth(false);
        oauth.grant("acme", "rt/acme");
        let now = Instant::now();
        let first = oauth.refresh(form("rt%2Facme").as_bytes(), now);
        let first = first.unwrap().unwrap();
        assert_eq!(first.refresh_token, "rt/acme");
        assert_eq!(first.expires_in, Duration::from_secs(60));
        let second = oauth.refresh(form("rt%2Facme").as_bytes(), now);
        let second = second.unwrap().unwrap();
        assert_ne!(first.access_token, second.access_token);

        let live = Bearer::Live("acme".into());
        assert_eq!(oauth.check(&first.access_token, now), live);
        assert_eq!(oauth.check(&second.access_token, now), live);
        let later = now + Duration::from_secs(60);
        let expired = Bearer::Expired("acme".into());
        assert_eq!(oauth.check(&first.access_token, later), expired);
        assert_eq!(oauth.check("at-other", now), Bearer::Unknown);
        assert_eq!(
            oauth.stats().refreshes,
            BTreeMap::from([("acme".into(), 2)])
        );
    }

    #[test]
    fn refusals_are_checked_in_order_and_counted_by_account() {
        let oauth = oauth(false);
        oauth.grant("acme", "rt-acme");
        let refresh = |body: &str| oauth.refresh(body.as_bytes(), Instant::now()).unwrap();
        let wrong_grant = "grant_type=password&client_id=x&refresh_token=rt-acme";
        assert_eq!(
            refresh(wrong_grant),
            Err(TokenRefusal::UnsupportedGrantType)
        );
        let wrong_secret =
            "grant_type=refresh_token&client_id=id&client_secret=no&refresh_token=rt-acme";
        assert_eq!(refresh(wrong_secret), Err(TokenRefusal::InvalidClient));
        assert_eq!(refresh(""), Err(TokenRefusal::UnsupportedGrantType));
        assert_eq!(
            refresh(&form("rt-other")),
            Err(TokenRefusal::BadRefreshToken)
        );
        assert_eq!(
            oauth.stats().refused_refreshes,
            BTreeMap::from([("acme".into(), 2), ("?".into(), 2)])
        );
    }

    #[test]
    fn rotation_replaces_the_refresh_token() {
        let oauth = oauth(true);
        oauth.grant("acme", "rt-0");
        let now = Instant::now();
        let refreshed = oauth
            .refresh(form("rt-0").as_bytes(), now)
            .unwrap()
            .unwrap();
        assert_ne!(refreshed.refresh_token, "rt-0");
        assert_eq!(
            oauth.refresh(form("rt-0").as_bytes(), now).unwrap(),
            Err(TokenRefusal::BadRefreshToken)
        );
        let next = form(&refreshed.refresh_token);
        assert!(oauth.refresh(next.as_bytes(), now).unwrap().is_ok());
    }

    #[test]
    fn a_granted_token_moves_between_accounts_and_replaces_the_old_one() {
        let oauth = oauth(false);
        oauth.grant("a", "rt-1");
        oauth.grant("a", "rt-2");
        let refresh = |token: &str| oauth.refresh(form(token).as_bytes(), Instant::now());
        assert_eq!(refresh("rt-1").unwrap(), Err(TokenRefusal::BadRefreshToken));
        oauth.grant("b", "rt-2");
        let issued = refresh("rt-2").unwrap().unwrap();
        let now = Instant::now();
        assert_eq!(
            oauth.check(&issued.access_token, now),
            Bearer::Live("b".into())
        );
        oauth.revoke("a");
        assert!(
            refresh("rt-2").unwrap().is_ok(),
            "b's token survives a's revoke"
        );
    }

    #[test]
    fn revoke_and_expire_end_the_live_tokens() {
        let oauth = oauth(false);
        oauth.grant("acme", "rt-acme");
        let refresh = || oauth.refresh(form("rt-acme").as_bytes(), Instant::now());
        let token = refresh().unwrap().unwrap().access_token;
        assert_eq!(
            oauth.stats().live_tokens,
            BTreeMap::from([("acme".into(), 1)])
        );
        oauth.expire("acme");
        let expired = Bearer::Expired("acme".into());
        assert_eq!(oauth.check(&token, Instant::now()), expired);
        assert!(oauth.stats().live_tokens.is_empty());

        let token = refresh().unwrap().unwrap().access_token;
        oauth.revoke("acme");
        assert_eq!(oauth.check(&token, Instant::now()), expired);
        assert_eq!(refresh().unwrap(), Err(TokenRefusal::BadRefreshToken));
    }

    #[test]
    fn with_oauth_off_there_is_no_token_endpoint() {
        let off = OAuth::new(None);
        off.grant("acme", "rt-acme");
        assert_eq!(
            off.refresh(form("rt-acme").as_bytes(), Instant::now()),
            None
        );
    }
}
