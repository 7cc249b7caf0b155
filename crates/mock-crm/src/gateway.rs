//! What every API request goes through, in the order a real API gateway
//! applies it: fault injection, authentication, rate limit, idempotent
//! replay, and only then the API's own handler. Then counters, the request
//! log, and the latency delay. A batch request goes through once, as a
//! whole; its handler then asks the item faults about each of its records.
//!
//! With OAuth on, the bearer must be the fixed token or a live access token
//! the mock issued (`oauth.rs`; one more short lock per request, only then).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::config::check_fail_rate;
use super::faults::{Fault, FaultError, Faults, ItemFaults};
use super::latency::LatencyProbe;
use super::limit::Limiter;
use super::oauth::{Bearer, OAuth};
use super::records::unix_micros;
use super::reply::Reply;
use super::request::ApiRequest;
use super::snapshot::{ApiSnapshot, Counters, LoggedRequest, RecordSnapshot};
use super::writes::WriteCounts;
use super::{ConfigError, MockCrmConfig, RateLimit};

/// Settings every API reads on every request.
pub(super) struct Settings {
    /// An `f64`, stored as bits so it can change while requests run.
    fail_rate_bits: AtomicU64,
    latency: Duration,
    token: Option<String>,
    record_log: bool,
    pub(super) latency_probe: Option<Arc<LatencyProbe>>,
    /// Grants and issued access tokens; checked only when OAuth is on.
    pub(super) oauth: OAuth,
}

/// What the gateway made of a request's bearer.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Auth {
    /// `account`: whose access token it was (OAuth only).
    Accepted { account: Option<String> },
    /// `expired`: an access token the mock issued to `account` that expired
    /// or was revoked.
    Refused {
        expired: bool,
        account: Option<String>,
    },
}

impl Auth {
    fn accepted(&self) -> bool {
        matches!(self, Auth::Accepted { .. })
    }
}

impl Settings {
    pub(super) fn new(config: &MockCrmConfig) -> Settings {
        Settings {
            fail_rate_bits: AtomicU64::new(config.fail_rate.to_bits()),
            latency: config.latency,
            token: config.token.clone(),
            record_log: config.record_log,
            latency_probe: config
                .latency_field
                .as_deref()
                .map(|field| Arc::new(LatencyProbe::new(field))),
            oauth: OAuth::new(config.oauth.clone()),
        }
    }

    pub(super) fn fail_rate(&self) -> f64 {
        f64::from_bits(self.fail_rate_bits.load(Ordering::Relaxed))
    }

    pub(super) fn set_fail_rate(&self, fail_rate: f64) -> Result<(), ConfigError> {
        check_fail_rate(fail_rate)?;
        self.fail_rate_bits
            .store(fail_rate.to_bits(), Ordering::Relaxed);
        Ok(())
    }

    fn roll_injected_failure(&self) -> bool {
        let fail_rate = self.fail_rate();
        fail_rate > 0.0 && rand::random::<f64>() < fail_rate
    }

    pub(super) fn latency(&self) -> Duration {
        self.latency
    }

    /// Without OAuth, the bearer must be the token, or any non-empty one
    /// when none is set; with OAuth, the token (when set) or a live access
    /// token the mock issued at `now`.
    fn authenticate(&self, authorization: Option<&HeaderValue>, now: Instant) -> Auth {
        let unknown = Auth::Refused {
            expired: false,
            account: None,
        };
        let Some(bearer) = authorization
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
        else {
            return unknown;
        };
        let anonymous = Auth::Accepted { account: None };
        match &self.token {
            Some(expected) if bearer == expected => return anonymous,
            None if bearer.is_empty() => return unknown,
            None if !self.oauth.is_on() => return anonymous,
            _ if !self.oauth.is_on() => return unknown,
            _ => {}
        }
        match self.oauth.check(bearer, now) {
            Bearer::Live(account) => Auth::Accepted {
                account: Some(account),
            },
            Bearer::Expired(account) => Auth::Refused {
                expired: true,
                account: Some(account),
            },
            Bearer::Unknown => unknown,
        }
    }
}

/// What differs between the APIs besides their routes: their records and how
/// they word the gateway's refusals.
pub(super) trait Provider: Send + 'static {
    fn unauthorized() -> Reply;
    /// The 401 for an access token that expired or was revoked (OAuth).
    fn expired() -> Reply {
        Self::unauthorized()
    }
    /// The 429 body and headers; the gateway adds `Retry-After`.
    fn rate_limited(limit: &RateLimit) -> Reply;
    /// Whether answers tell the sliding window's state, as HubSpot's do
    /// (`X-HubSpot-RateLimit-Max`, `-Remaining`, `-Interval-Milliseconds`).
    const TELLS_WINDOW: bool = false;
    /// The 429 once the daily limit is used up.
    fn daily_limit_reached() -> Reply {
        Reply::json(
            StatusCode::TOO_MANY_REQUESTS,
            &json!({"status": "error", "message": "You have reached your daily limit.", "errorType": "RATE_LIMIT", "policyName": "DAILY"}),
        )
    }
    fn records(&self) -> BTreeMap<String, RecordSnapshot>;
    /// Successful writes by origin, since the start or the last reset.
    fn write_counts(&self) -> WriteCounts;
    /// Forgets the records and write counts (a reset); settings stay.
    fn clear(&mut self);
}

/// One API (HubSpot or Salesforce): its records and everything the gateway
/// keeps for it, behind one lock held only for the bookkeeping of a request.
pub(super) struct Api<P> {
    settings: Arc<Settings>,
    state: Mutex<ApiState<P>>,
}

struct ApiState<P> {
    store: P,
    limiter: Option<Limiter>,
    faults: Faults,
    replies_by_key: HashMap<String, Reply>,
    counters: Counters,
    log: Vec<LoggedRequest>,
    /// The daily limit and the requests it took so far.
    daily: Option<(u64, u64)>,
}

impl<P: Provider> Api<P> {
    pub(super) fn new(settings: Arc<Settings>, limit: Option<RateLimit>, store: P) -> Self {
        Api {
            settings,
            state: Mutex::new(ApiState {
                store,
                limiter: limit.map(Limiter::new),
                faults: Faults::default(),
                replies_by_key: HashMap::new(),
                counters: Counters::default(),
                log: Vec::new(),
                daily: None,
            }),
        }
    }

    /// Takes at most `requests` in all (HubSpot's daily limit).
    pub(super) fn with_daily(self, requests: Option<u64>) -> Self {
        self.lock().daily = requests.map(|max| (max, 0));
        self
    }

    /// Runs `request` through the gateway; `apply` is the API's own handling,
    /// called (under the lock) only if the request gets that far. Anything
    /// that can be computed without the store, like parsing the body, belongs
    /// before the call so the lock stays short.
    pub(super) async fn serve(
        &self,
        request: ApiRequest,
        apply: impl FnOnce(&mut P) -> Reply,
    ) -> Response {
        let reply = self.decide(request, Kind::Single, |store, _| apply(store));
        self.respond(reply).await
    }

    /// [`serve`](Self::serve) for a batch request parsed before the lock:
    /// once through the gateway as a whole (one fault answer, one share of
    /// the rate limit, one stored reply), then `apply` asks `ItemFaults`
    /// about each item before handling it.
    pub(super) async fn serve_batch<T>(
        &self,
        request: ApiRequest,
        parsed: Result<T, Reply>,
        apply: impl FnOnce(&mut P, T, &mut ItemFaults<'_>) -> Reply,
    ) -> Response {
        let reply = self.decide(request, Kind::Batch, |store, item_faults| match parsed {
            Ok(parsed) => apply(store, parsed, item_faults),
            Err(refusal) => refusal,
        });
        self.respond(reply).await
    }

    pub(super) fn settings(&self) -> &Settings {
        &self.settings
    }

    async fn respond(&self, reply: Reply) -> Response {
        if !self.settings.latency.is_zero() {
            tokio::time::sleep(self.settings.latency).await;
        }
        reply.into_response()
    }

    /// [`serve`](Self::serve) for a request with a body: `parse` checks it
    /// before the lock, and `apply` gets what it parsed to, or the request is
    /// answered with `parse`'s refusal (once through the gateway).
    pub(super) async fn serve_body<T>(
        &self,
        request: ApiRequest,
        parse: fn(&[u8]) -> Result<T, Reply>,
        apply: impl FnOnce(&mut P, T) -> Reply,
    ) -> Response {
        let parsed = parse(&request.body);
        self.serve_parsed(request, parsed, apply).await
    }

    /// [`serve`](Self::serve) for a request parsed (its body or its query)
    /// before the lock: `apply` gets what it parsed to, or the request is
    /// answered with the refusal (once through the gateway, like any answer).
    pub(super) async fn serve_parsed<T>(
        &self,
        request: ApiRequest,
        parsed: Result<T, Reply>,
        apply: impl FnOnce(&mut P, T) -> Reply,
    ) -> Response {
        self.serve(request, |store| match parsed {
            Ok(parsed) => apply(store, parsed),
            Err(refusal) => refusal,
        })
        .await
    }

    /// Runs `edit` on the records directly, past the whole gateway: no
    /// faults, auth, limit, replay store, request counters or log. For the
    /// admin edits, which stand for a person using the CRM's own UI.
    pub(super) fn edit<R>(&self, edit: impl FnOnce(&mut P) -> R) -> R {
        edit(&mut self.lock().store)
    }

    fn decide(
        &self,
        request: ApiRequest,
        kind: Kind,
        apply: impl FnOnce(&mut P, &mut ItemFaults<'_>) -> Reply,
    ) -> Reply {
        let received_at_us = unix_micros();
        if let Some(probe) = &self.settings.latency_probe {
            probe.observe(&request.body, received_at_us);
        }
        let injected = self.settings.roll_injected_failure();
        let auth = self
            .settings
            .authenticate(request.authorization.as_ref(), Instant::now());
        let authorized = auth.accepted();
        let logged_body = self
            .settings
            .record_log
            .then(|| body_as_json(&request.body));

        let mut guard = self.lock();
        let state = &mut *guard;
        // The limit judges requests in the order they take the lock, at
        // the time they take it: with `now` read before the body was parsed
        // and the lock waited for, two requests racing here could be judged
        // out of their times' order, which makes the limit stricter by the
        // gap and refuses a request the provider would have let through.
        let now = Instant::now();
        let mut replayed = false;
        let reply = if injected {
            state.counters.injected_failures += 1;
            Reply::json(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({"message": "injected failure"}),
            )
        } else if let Some(reply) =
            state
                .faults
                .answer(&request.method, request.uri.path(), &request.body)
        {
            state.counters.scripted_failures += 1;
            reply
        } else if let Auth::Refused { expired, account } = &auth {
            if self.settings.oauth.is_on() {
                self.settings.oauth.count_unauthorized(account.as_deref());
            }
            match expired {
                true => P::expired(),
                false => P::unauthorized(),
            }
        } else if let Some(refusal) = state
            .limiter
            .as_mut()
            .and_then(|limiter| refuse_over_limit::<P>(limiter, now))
        {
            state.counters.rate_limited += 1;
            refusal
        } else if state.daily.is_some_and(|(max, used)| used >= max) {
            state.counters.rate_limited += 1;
            P::daily_limit_reached()
        } else if let Some(stored) = request
            .idempotency_key
            .as_ref()
            .and_then(|key| state.replies_by_key.get(key))
        {
            state.counters.idempotent_replays += 1;
            replayed = true;
            stored.clone().with_header("idempotent-replayed", "true")
        } else {
            // Creates are counted by the store, record by record.
            let mut item_faults = ItemFaults::new(
                &mut state.faults,
                &request.method,
                request.uri.path(),
                &request.body,
            );
            let reply = apply(&mut state.store, &mut item_faults);
            state.counters.scripted_item_failures += item_faults.failed();
            if kind == Kind::Batch {
                state.counters.batch_requests += 1;
            }
            if let Some(key) = &request.idempotency_key {
                state.replies_by_key.insert(key.clone(), reply.clone());
            }
            reply
        };
        let window = match P::TELLS_WINDOW {
            true => state.limiter.as_mut().and_then(|l| l.window_left(now)),
            false => None,
        };
        let reply = match window {
            Some((max, left, per)) => reply
                .with_header("x-hubspot-ratelimit-max", max)
                .with_header("x-hubspot-ratelimit-remaining", left)
                .with_header("x-hubspot-ratelimit-interval-milliseconds", per.as_millis()),
            _ => reply,
        };
        let reply = match &mut state.daily {
            Some((max, used)) => {
                // Every request that got past the gateway's checks counts.
                if authorized && !injected && reply.status != StatusCode::TOO_MANY_REQUESTS {
                    *used += 1;
                }
                reply
                    .with_header("x-hubspot-ratelimit-daily", *max)
                    .with_header(
                        "x-hubspot-ratelimit-daily-remaining",
                        max.saturating_sub(*used),
                    )
            }
            None => reply,
        };
        state
            .counters
            .record(&request.method, reply.status.as_u16());
        if let Some(body) = logged_body {
            state.log.push(LoggedRequest {
                method: request.method.to_string(),
                path: request.uri.path().to_owned(),
                status: reply.status.as_u16(),
                idempotency_key: request.idempotency_key,
                received_at_us,
                body,
                replayed,
                account: match auth {
                    Auth::Accepted { account } => account,
                    Auth::Refused { .. } => None,
                },
            });
        }
        reply
    }

    pub(super) fn snapshot(&self) -> ApiSnapshot {
        let state = self.lock();
        let mut counters = state.counters.clone();
        state.store.write_counts().fill(&mut counters);
        ApiSnapshot {
            records: state.store.records(),
            counters,
            log: state.log.clone(),
        }
    }

    pub(super) fn add_fault(&self, fault: Fault) -> Result<(), FaultError> {
        self.lock().faults.add(fault)
    }

    pub(super) fn clear_faults(&self) {
        self.lock().faults.clear();
    }

    /// Forgets records, counters, the log, stored replies and past requests
    /// of the rate limit (scripted faults stay, like the other settings).
    pub(super) fn reset(&self) {
        let mut state = self.lock();
        state.store.clear();
        if let Some(limiter) = &mut state.limiter {
            limiter.reset();
        }
        state.replies_by_key.clear();
        state.counters = Counters::default();
        if let Some((_, used)) = &mut state.daily {
            *used = 0;
        }
        state.log.clear();
    }

    fn lock(&self) -> MutexGuard<'_, ApiState<P>> {
        // A panic in a handler leaves the state as consistent as any single
        // request can: keep serving rather than fail every later request.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Whether a request is about one record or many: batches are counted apart
/// and are the only ones item faults apply to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Single,
    Batch,
}

/// The 429 for a request arriving at `now` over `limiter`'s limit; `None`
/// admits it (and uses up its share of the limit).
fn refuse_over_limit<P: Provider>(limiter: &mut Limiter, now: Instant) -> Option<Reply> {
    let wait = limiter.acquire(now).err()?;
    let refusal = P::rate_limited(limiter.limit());
    Some(refusal.with_header("retry-after", retry_after_secs(wait)))
}

/// `Retry-After` in whole seconds, rounded up and at least 1.
fn retry_after_secs(wait: Duration) -> u128 {
    wait.as_millis().div_ceil(1000).max(1)
}

fn body_as_json(body: &[u8]) -> Value {
    if body.is_empty() {
        return Value::Null;
    }
    serde_json::from_slice(body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::OAuthConfig;

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1000)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
    }

    impl Settings {
        fn accepts(&self, authorization: Option<&HeaderValue>) -> bool {
            self.authenticate(authorization, Instant::now()).accepted()
        }
    }

    #[test]
    fn bearer_must_match_the_token_or_be_non_empty() {
        let header = |value: &'static str| HeaderValue::from_static(value);
        let any = Settings::new(&MockCrmConfig::default());
        assert!(any.accepts(Some(&header("Bearer x"))));
        assert!(!any.accepts(Some(&header("Bearer "))));
        assert!(!any.accepts(Some(&header("Basic eDp5"))));
        assert!(!any.accepts(None));

        let fixed = Settings::new(&MockCrmConfig {
            token: Some("dev-token".into()),
            ..MockCrmConfig::default()
        });
        assert!(fixed.accepts(Some(&header("Bearer dev-token"))));
        assert!(!fixed.accepts(Some(&header("Bearer other"))));
    }

    #[test]
    fn with_oauth_the_bearer_must_be_the_token_or_an_issued_access_token() {
        let header = |value: &'static str| HeaderValue::from_static(value);
        let oauth = Some(OAuthConfig::new("id", "secret", Duration::from_secs(60)));
        let settings = Settings::new(&MockCrmConfig {
            token: Some("dev-token".into()),
            oauth: oauth.clone(),
            ..MockCrmConfig::default()
        });
        assert!(settings.accepts(Some(&header("Bearer dev-token"))));
        let unknown = Auth::Refused {
            expired: false,
            account: None,
        };
        let now = Instant::now();
        let other = header("Bearer other");
        assert_eq!(settings.authenticate(Some(&other), now), unknown);

        settings.oauth.grant("acme", "rt-acme");
        let form =
            "grant_type=refresh_token&client_id=id&client_secret=secret&refresh_token=rt-acme";
        let issued = settings
            .oauth
            .refresh(form.as_bytes(), now)
            .unwrap()
            .unwrap();
        let bearer = HeaderValue::try_from(format!("Bearer {}", issued.access_token)).unwrap();
        let account = Some("acme".to_owned());
        assert_eq!(
            settings.authenticate(Some(&bearer), now),
            Auth::Accepted {
                account: account.clone()
            }
        );
        let later = now + Duration::from_secs(60);
        assert_eq!(
            settings.authenticate(Some(&bearer), later),
            Auth::Refused {
                expired: true,
                account
            }
        );

        // Without a fixed token, any other bearer is refused.
        let settings = Settings::new(&MockCrmConfig {
            oauth,
            ..MockCrmConfig::default()
        });
        assert!(!settings.accepts(Some(&header("Bearer anything"))));
        assert!(!settings.accepts(Some(&header("Bearer "))));
    }
}
