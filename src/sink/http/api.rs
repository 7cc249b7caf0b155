//! [`ProviderApi`]: one provider's HTTP API (the policy is in the module doc).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::StatusCode;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use serde_json::Value;
use tokio::time::Instant;

use super::account::{AccountState, Accounts};
use super::breaker::{Breaker, BreakerState, ProviderHealth};
use super::conn::{Conn, Origin, Outgoing, Response, Target, TransportError};
use super::credentials::{AccountCredentials, Token};
use super::fields::Fields;
use super::metrics::ProviderMetrics;
use super::pause::Pause;
use super::retry::{backoff_ceiling, full_jitter, parse_retry_after};
use super::slots::Slots;
use super::verdict::{Attempt, Verdict};
use super::{ApiError, ApiErrorKind, ApiRequest, ApiResponse, EndpointKind};
use crate::limiter::{AccountLimits, Limiter, LimiterError, Quotas, Taken};
use crate::provider::{Endpoint, Provider};
use crate::sampled::Sampled;

/// Sends records to one provider. Share it (`Arc`) between every pipeline
/// that targets the provider: its concurrency bound and breaker are per sink.
pub struct ProviderApi {
    provider: Arc<Provider>,
    origin: Origin,
    /// The provider's headers (auth included, marked sensitive).
    headers: HeaderMap,
    /// The concurrency bound and a connection per request in flight.
    slots: Slots,
    limiter: Limiter,
    /// For records that name their account: each account's own limit.
    accounts: Option<Arc<AccountLimits>>,
    /// The provider's `quota`, per account.
    quotas: Option<Arc<Quotas>>,
    in_flight: AtomicUsize,
    breaker: Breaker,
    idempotency_header: Option<HeaderName>,
    /// What [`ProviderApi::get`] sends: a plain GET.
    get_endpoint: Endpoint,
    /// Retry-After pauses every request to the provider.
    pause: Pause,
    /// Each account's pause (a 429's Retry-After to one of its requests),
    /// breaker and outage counts.
    account_states: Accounts,
    /// `auth.per_account`: each account's `Authorization`.
    credentials: Option<AccountCredentials>,
    /// Requests that succeeded, and requests failing right now: an outage
    /// (nobody served, several failing) is told from a record that keeps
    /// failing on its own.
    served: AtomicU64,
    failing: AtomicUsize,
    /// One retry warning per second at most, with a count of the rest.
    sampled_warn: Sampled,
    metrics: ProviderMetrics,
}

/// The provider's settings cannot make an HTTP client. Header values are
/// never shown: they may be credentials.
#[derive(Debug, thiserror::Error)]
pub enum ApiBuildError {
    #[error("provider {provider}: invalid HTTP header \"{name}\"")]
    Header { provider: String, name: String },
    #[error("provider {provider}: cannot build the HTTP client: {message}")]
    Client { provider: String, message: String },
}

/// What one send works out once and every attempt reuses.
pub(super) struct Call<'a> {
    pub req: ApiRequest<'a>,
    pub endpoint: &'a Endpoint,
    pub target: Target,
    pub idempotency_key: HeaderValue,
    pub body: Option<Bytes>,
}

impl ProviderApi {
    pub fn new(provider: Arc<Provider>, limiter: Limiter) -> Result<Self, ApiBuildError> {
        let bad_header = |name: &str| ApiBuildError::Header {
            provider: provider.name.clone(),
            name: name.to_string(),
        };
        let mut headers = HeaderMap::new();
        for (name, value) in &provider.headers {
            let header = HeaderName::from_bytes(name.as_bytes()).map_err(|_| bad_header(name))?;
            let mut value = HeaderValue::from_str(value.expose()).map_err(|_| bad_header(name))?;
            // Keeps auth out of any Debug output of requests.
            value.set_sensitive(true);
            headers.append(header, value);
        }
        let idempotency_header = provider
            .idempotency_header
            .as_deref()
            .map(|name| HeaderName::from_bytes(name.as_bytes()).map_err(|_| bad_header(name)))
            .transpose()?;

        let origin = Origin::new(&provider.base_url, provider.tls.clone()).map_err(|message| {
            ApiBuildError::Client {
                provider: provider.name.clone(),
                message,
            }
        })?;
        let slots = Slots::new(provider.max_in_flight);

        let metrics = ProviderMetrics::new(&provider.name);
        let breaker = Breaker::new(
            &provider.name,
            &provider.circuit_breaker,
            metrics.breaker_open.clone(),
        );
        Ok(ProviderApi {
            origin,
            headers,
            slots,
            limiter,
            accounts: None,
            quotas: None,
            in_flight: AtomicUsize::new(0),
            breaker,
            idempotency_header,
            get_endpoint: Endpoint {
                method: http::Method::GET,
                path: crate::provider::PathTemplate::parse("/").expect("a plain path"),
                id_from: None,
                conflict_id: None,
                unmodified_since: None,
            },
            pause: Pause::new(&provider.name, None),
            account_states: Accounts::new(&provider.name, &provider.circuit_breaker),
            credentials: None,
            served: AtomicU64::new(0),
            failing: AtomicUsize::new(0),
            sampled_warn: Sampled::every(Duration::from_secs(1)),
            metrics,
            provider,
        })
    }

    /// Applies the provider's rate limit per account to records that name
    /// one (the others keep the provider's).
    pub fn with_account_limits(mut self, accounts: Arc<AccountLimits>) -> Self {
        self.accounts = Some(accounts);
        self
    }

    /// Sends each account's own credentials (`auth.per_account`), kept in
    /// `store`.
    pub fn with_account_credentials(
        mut self,
        store: Arc<crate::credentials::CredentialStore>,
    ) -> Result<Self, ApiBuildError> {
        if let Some(auth) = &self.provider.account_auth {
            let credentials =
                AccountCredentials::new(&self.provider.name, auth, store, self.provider.timeout)
                    .map_err(|message| ApiBuildError::Client {
                        provider: self.provider.name.clone(),
                        message,
                    })?;
            self.credentials = Some(credentials);
        }
        Ok(self)
    }

    /// Spends the provider's `quota` (per account) on every attempt.
    pub fn with_quotas(mut self, quotas: Arc<Quotas>) -> Self {
        self.quotas = Some(quotas);
        self
    }

    /// Waits while `account`'s quota is known to be spent: a spent quota
    /// holds back the account's records (not dead letters) until it resets.
    /// (The request takes its share of the quota later, with its cell:
    /// [`ProviderApi::take_quota`].)
    async fn wait_for_quota(&self, account: Option<&str>) {
        let Some(quotas) = &self.quotas else {
            return;
        };
        loop {
            let Some(resets_at) = quotas.spent(account, SystemTime::now()) else {
                return;
            };
            self.metrics.quota_waits.increment(1);
            let wait = resets_at
                .duration_since(SystemTime::now())
                .unwrap_or_default();
            self.sampled_warn.warn(|suppressed| {
                tracing::warn!(provider = %self.provider.name, account, resets_at = %httpdate::fmt_http_date(resets_at), resets_in_s = wait.as_secs(), suppressed, "quota spent: the account's records wait until it resets");
            });
            // Looked at again at least every minute: the clock may move.
            tokio::time::sleep(wait.min(Duration::from_secs(60)) + Duration::from_millis(5)).await;
        }
    }

    /// Takes one request of the quota, just before it is sent: the answers
    /// to the requests before it (the provider's count of what is left)
    /// are in by then. False when the quota is spent.
    async fn take_quota(&self, account: Option<&str>) -> bool {
        match &self.quotas {
            Some(quotas) => quotas.take(account, SystemTime::now()).await == Taken::Yes,
            None => true,
        }
    }

    /// Follows the provider's count of the requests left, where the quota
    /// names the header that tells it.
    async fn follow_quota(&self, account: Option<&str>, headers: &Fields) {
        let Some(quotas) = &self.quotas else {
            return;
        };
        let Some(value) = quotas
            .remaining_header()
            .and_then(|name| headers.get(name.as_str()))
        else {
            return;
        };
        if let Some(remaining) = remaining_of(value) {
            quotas.follow(account, remaining, SystemTime::now()).await;
        }
    }

    /// Follows the provider's count of the requests left in its own rate
    /// window (`rate_limit.remaining_header`): at 0 the next request would
    /// be refused (someone else spends the same account's limit, or our
    /// limit is set above the provider's), so the account, or the provider
    /// for records without one, waits one `rate_limit.per` first.
    fn follow_window(&self, account: Option<&AccountState>, headers: &Fields) {
        let (Some(name), Some(limit)) = (
            &self.provider.window_remaining_header,
            &self.provider.rate_limit,
        ) else {
            return;
        };
        let left = headers
            .get(name.as_str())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if left != Some(0) {
            return;
        }
        match account {
            Some(state) => state.pause.pause_for_window(limit.per, name),
            None => self.pause.pause_for_window(limit.per, name),
        }
    }

    /// The provider this API talks to.
    pub fn provider(&self) -> &Arc<Provider> {
        &self.provider
    }

    /// One warning per second at most for the provider, with a count of
    /// the ones left out.
    pub(super) fn sampled_warn(&self, warn: impl FnOnce(u64)) {
        self.sampled_warn.warn(warn);
    }

    pub(super) fn metrics(&self) -> &ProviderMetrics {
        &self.metrics
    }

    pub fn breaker_state(&self) -> BreakerState {
        self.breaker.state()
    }

    /// HTTP requests to the provider in flight right now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    fn prepare<'a>(&'a self, req: ApiRequest<'a>) -> Result<Call<'a>, ApiError> {
        let fail = |problem: String| internal(format!("{}: {problem}", self.what(&req)));
        let endpoint = self
            .provider
            .objects
            .get(req.object)
            .and_then(|object| object.endpoint(req.endpoint))
            .ok_or_else(|| fail("the provider has no such endpoint".into()))?;
        if self.credentials.is_some() && req.account.is_none() {
            return Err(fail(
                "the provider takes credentials per account and the record names none".into(),
            ));
        }
        if endpoint.path.needs_id() && req.id.is_none_or(str::is_empty) {
            return Err(fail(format!(
                "the path needs the provider's id of key \"{}\" and none was given",
                req.key
            )));
        }
        let target = self
            .origin
            .target(&endpoint.path.render(req.key, req.id))
            .map_err(fail)?;
        let idempotency_key = HeaderValue::from_str(req.idempotency_key).map_err(|_| {
            fail(format!(
                "idempotency key {:?} is not a valid header value",
                req.idempotency_key
            ))
        })?;
        Ok(Call {
            req,
            endpoint,
            target,
            idempotency_key,
            body: req.body.map(json_bytes),
        })
    }

    /// One try: a slot (the concurrency bound, and the slot's connection,
    /// made ready first), then the rate limiter, then HTTP. The slot comes
    /// first so a granted rate-limit cell is spent at once (slots.rs).
    /// `None`: the quota turned out spent, or a pause began, when the request
    /// was about to go (its cell is lost; the request waits and goes again).
    async fn attempt(
        &self,
        call: &Call<'_>,
        account: Option<&AccountState>,
        token: Option<&Token>,
    ) -> Result<Option<Attempt>, LimiterError> {
        let timeout = self.provider.timeout;
        let mut slot = self.slots.take().await;
        let started = Instant::now();
        // No connection, no cell spent: the attempt failed to connect.
        let connect_failed = |e| {
            let attempt = Attempt::Transport(e);
            self.metrics.attempt(attempt.label(), started.elapsed());
            Ok(Some(attempt))
        };
        if let Err(e) = slot.ready(&self.origin, timeout).await {
            return connect_failed(e);
        }
        let account_limiter;
        let limiter = match (call.req.account, &self.accounts) {
            (Some(account), Some(accounts)) => {
                account_limiter = accounts.limiter(account)?;
                &account_limiter
            }
            _ => &self.limiter,
        };
        let (mut waited, mut deadline) = limiter.acquire_cell(false).await?;
        // The provider may have closed the connection while the request
        // waited for its cell (an idle timeout): open it again, and if that
        // made the cell stale, wait for a fresh one at the queue's front.
        loop {
            match slot.ready(&self.origin, timeout).await {
                Ok(false) => break,
                Ok(true) if deadline.is_none_or(|d| Instant::now() <= d) => break,
                Ok(true) => {
                    let (more, fresh) = limiter.acquire_cell(true).await?;
                    (waited, deadline) = (waited + more, fresh);
                }
                Err(e) => return connect_failed(e),
            }
        }
        self.metrics.limiter_wait.record(waited);
        // A pause that began while the request waited for its cell (a 429's
        // Retry-After, or the provider's window spent): the provider would
        // refuse it. Its cell is lost; it waits out the pause and goes again
        // (checked before the quota, which would count a request not sent).
        if self.pause.is_on() || account.is_some_and(|state| state.pause.is_on()) {
            return Ok(None);
        }
        if !self.take_quota(call.req.account).await {
            return Ok(None);
        }
        // Taking the quota goes to Redis once a chunk. A reply slower than
        // the cell's budget leaves the cell stale, and the request would
        // bunch with the next cell's, whose take found the chunk filled and
        // went at once (tests.rs, a_slow_quota_take_does_not_send_a_request_
        // on_a_stale_cell): it waits for a fresh cell at the queue's front.
        // The quota stays taken: the request still goes.
        while deadline.is_some_and(|d| Instant::now() > d) {
            let (more, fresh) = limiter.acquire_cell(true).await?;
            self.metrics.limiter_wait.record(more);
            deadline = fresh;
        }

        let _in_flight = RequestInFlight::start(self);
        let started = Instant::now();
        let limit = self.provider.max_response_bytes;
        let sent = self.send_on(slot.conn(), call, token, timeout, limit).await;
        let attempt = match sent {
            Ok(response) if response.oversized => {
                // The rest of the body is still on the connection.
                slot.discard();
                Attempt::Oversized {
                    status: response.status,
                    limit,
                }
            }
            Ok(response) => {
                self.follow_quota(call.req.account, &response.headers).await;
                self.follow_window(account, &response.headers);
                Attempt::Response {
                    status: response.status,
                    retry_after: response
                        .headers
                        .get(RETRY_AFTER.as_str())
                        .and_then(|v| parse_retry_after(v, SystemTime::now())),
                    body: response.body,
                }
            }
            Err(e) => {
                slot.discard();
                Attempt::Transport(e)
            }
        };
        self.metrics.attempt(attempt.label(), started.elapsed());
        Ok(Some(attempt))
    }

    /// Sends the HTTP request of one attempt on `conn`: the endpoint's
    /// method and path, the provider's headers, the token, the idempotency
    /// key, the precondition and the JSON body. A header syncflow sets
    /// replaces the provider's header of the same name.
    async fn send_on(
        &self,
        conn: &mut Conn,
        call: &Call<'_>,
        token: Option<&Token>,
        timeout: Duration,
        limit: u64,
    ) -> Result<Response, TransportError> {
        let precondition = match (&call.endpoint.unmodified_since, call.req.unmodified_since) {
            (Some(precondition), Some(at)) => Some((&precondition.header, precondition.value(at))),
            _ => None,
        };
        let idempotency = self
            .idempotency_header
            .as_ref()
            .filter(|_| !call.idempotency_key.is_empty())
            .map(|name| (name, &call.idempotency_key));
        let json = HeaderValue::from_static("application/json");
        let set = [
            token.map(|token| (&AUTHORIZATION, &token.header)),
            idempotency,
            precondition.as_ref().map(|(name, value)| (*name, value)),
            call.body.as_ref().map(|_| (&CONTENT_TYPE, &json)),
        ];
        let ours = set.iter().flatten().copied();
        let provider = self
            .headers
            .iter()
            .filter(|(name, _)| !ours.clone().any(|(set, _)| set == *name));
        let body = call.body.clone().unwrap_or_default();
        let request = Outgoing {
            method: &call.endpoint.method,
            target: &call.target,
            headers: provider.chain(ours.clone()),
            body: &body,
        };
        self.origin.send(conn, request, timeout, limit).await
    }

    fn success(
        &self,
        call: &Call<'_>,
        status: StatusCode,
        body: Bytes,
        attempts: u32,
    ) -> ApiResponse {
        let provider_id = call.endpoint.id_from.as_ref().and_then(|path| {
            let json = serde_json::from_slice::<Value>(&body).ok();
            let id = json.as_ref().and_then(|b| path.get(b)).and_then(|v| match &*v {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            });
            let id = id.filter(|id| super::valid_id(id));
            if id.is_none() {
                // The record exists at the provider but the id map will not
                // learn it: later updates and deletes of the key will fail.
                tracing::warn!(provider = %self.provider.name, object = call.req.object, endpoint = call.req.endpoint.as_str(), id_from = path.as_str(), max_bytes = super::MAX_ID_BYTES, "response has no usable id at id_from (missing, empty, too long or with control characters)");
            }
            id
        });
        ApiResponse {
            status: status.as_u16(),
            body,
            provider_id,
            attempts,
            sent: call.body.clone(),
        }
    }

    fn what(&self, req: &ApiRequest<'_>) -> String {
        format!(
            "{} {} {}",
            self.provider.name,
            req.endpoint.as_str(),
            req.object
        )
    }
}

impl ProviderApi {
    /// Sends one request, retrying as the provider's policy allows; waits
    /// (never fails) while the provider is paused or its circuit breaker is
    /// open, or while it serves nobody (module docs).
    pub async fn send(&self, req: ApiRequest<'_>) -> Result<ApiResponse, ApiError> {
        let call = self.prepare(req)?;
        self.run(call).await
    }

    /// GETs `path` (under `base_url`), paced, retried and breaker-guarded
    /// like every request to the provider: a poll's "changed since" page.
    pub async fn get(&self, path: &str) -> Result<ApiResponse, ApiError> {
        let req = ApiRequest {
            object: "(poll)",
            endpoint: EndpointKind::Read,
            key: "",
            account: None,
            id: None,
            body: None,
            idempotency_key: "",
            unmodified_since: None,
        };
        let target = self
            .origin
            .target(path)
            .map_err(|e| internal(format!("{}: {e}", self.what(&req))))?;
        let call = Call {
            req,
            endpoint: &self.get_endpoint,
            target,
            idempotency_key: HeaderValue::from_static(""),
            body: None,
        };
        self.run(call).await
    }

    /// The URL of `path` under the provider's `base_url`.
    pub(super) fn target(&self, path: &str) -> Result<Target, String> {
        self.origin.target(path)
    }

    pub(super) async fn run(&self, call: Call<'_>) -> Result<ApiResponse, ApiError> {
        let req = call.req;
        let retry = &self.provider.retry;
        let max_attempts = retry.max_attempts.max(1);
        // A record of an account answers to the account's own breaker,
        // pause and outage counts; the others to the provider's.
        let account = req.account.map(|account| self.account_states.get(account));
        let (breaker, served, failing_now) = match &account {
            Some(state) => (&state.breaker, &state.served, &state.failing),
            None => (&self.breaker, &self.served, &self.failing),
        };
        let mut pass = breaker.pass();
        // Every attempt made, and those that count against max_attempts.
        let (mut attempts, mut counted) = (0, 0);
        let mut served_before = served.load(Ordering::Relaxed);
        // Counted among the failing requests from its first transient
        // failure until it ends.
        let mut failing: Option<Failing<'_>> = None;
        let failure = loop {
            pass.ready().await;
            self.pause.wait().await;
            if let Some(state) = &account {
                state.pause.wait().await;
            }
            if !pass.is_probe() {
                counted += 1;
            }
            attempts += 1;
            self.wait_for_quota(req.account).await;
            let token = match (&self.credentials, req.account, &account) {
                (Some(credentials), Some(name), Some(state)) => {
                    Some(credentials.token(name, &state.credentials).await)
                }
                _ => None,
            };
            let attempt = self
                .attempt(&call, account.as_deref(), token.as_ref())
                .await
                .map_err(|e| ApiError {
                    attempts: attempts - 1,
                    ..internal(format!("{}: {e}", self.what(&req)))
                })?;
            let not_an_attempt = |attempts: &mut u32, counted: &mut u32, probe: bool| {
                *attempts -= 1;
                if !probe {
                    *counted -= 1;
                }
            };
            let Some(attempt) = attempt else {
                // Not an attempt: the quota ran out, or a pause began, as it was about to go.
                not_an_attempt(&mut attempts, &mut counted, pass.is_probe());
                continue;
            };
            let verdict = attempt.classify(req.endpoint, &retry.retry_on);
            if let (Some(credentials), Some(name), Some(state), Some(token), Some(401)) = (
                &self.credentials,
                req.account,
                &account,
                &token,
                verdict.status(),
            ) {
                // The account's credentials, not the record nor the
                // provider: refreshed (or held as invalid), then again.
                credentials.rejected(name, &state.credentials, token).await;
                not_an_attempt(&mut attempts, &mut counted, pass.is_probe());
                continue;
            }
            // An account's 429 is its own limit, not the provider failing.
            let account_limited = account.is_some() && verdict.status() == Some(429);
            pass.attempted(match account_limited {
                true => ProviderHealth::Up,
                false => verdict.health(),
            });
            let failure = match verdict {
                Verdict::Success { status, body } => {
                    served.fetch_add(1, Ordering::Relaxed);
                    pass.finished(ProviderHealth::Up);
                    if let (Some(credentials), Some(account), Some(token)) =
                        (&self.credentials, req.account, &token)
                    {
                        credentials.accepted(account, token).await;
                    }
                    return Ok(self.success(&call, status, body, attempts));
                }
                Verdict::Final(failure) => break failure,
                Verdict::Retryable(failure) => failure,
            };
            failing.get_or_insert_with(|| Failing::start(failing_now));
            let status = failure.status.map(|s| s.as_u16());
            let backoff = || full_jitter(backoff_ceiling(retry, counted), &mut rand::rng());
            let wait = match failure.retry_after {
                Some(asked) if asked <= retry.max_retry_after.0 => {
                    match (&account, account_limited) {
                        (Some(state), true) => state.pause.pause_for(asked, 429),
                        _ => self.pause.pause_for(asked, status.unwrap_or_default()),
                    }
                    Duration::ZERO
                }
                Some(asked) => {
                    self.sampled_warn.warn(|suppressed| {
                        tracing::warn!(provider = %self.provider.name, status, retry_after_s = asked.as_secs(), max_retry_after_s = retry.max_retry_after.0.as_secs(), suppressed, "provider asked to wait longer than retry.max_retry_after: counted as a failed attempt");
                    });
                    backoff()
                }
                None => backoff(),
            };
            if counted >= max_attempts {
                let served_now = served.load(Ordering::Relaxed);
                let others_failing = failing_now.load(Ordering::Relaxed) > 1;
                if served_now != served_before || !others_failing {
                    break failure;
                }
                // Nobody (of the account) was served meanwhile and others
                // fail too: an outage, not this record's fault. It counts
                // towards the breaker, and starts over.
                pass.finished(ProviderHealth::Down);
                (counted, served_before) = (0, served_now);
                self.metrics.outage_waits.increment(1);
            }
            self.metrics.retries.increment(1);
            self.sampled_warn.warn(|suppressed| {
                tracing::warn!(provider = %self.provider.name, object = req.object, endpoint = req.endpoint.as_str(), account = req.account, status, attempt = attempts, wait_ms = wait.as_millis() as u64, retry_after = failure.retry_after.is_some(), error = %failure.cause, suppressed, "retrying");
            });
            tokio::time::sleep(wait).await;
        };
        pass.finished(
            match account.is_some() && failure.status.is_some_and(|s| s.as_u16() == 429) {
                true => ProviderHealth::Up,
                false => failure.health(),
            },
        );
        Err(failure.into_error(&self.what(&req), attempts))
    }
}

/// The requests left in a quota header: a number (HubSpot's
/// `X-HubSpot-RateLimit-Daily-Remaining: 4711`), or Salesforce's
/// `Sforce-Limit-Info: api-usage=25/5000`.
fn remaining_of(value: &str) -> Option<u64> {
    let value = value.trim();
    if let Ok(left) = value.parse() {
        return Some(left);
    }
    let usage = value
        .split(',')
        .find_map(|part| part.trim().strip_prefix("api-usage="))?;
    let (used, max) = usage.split_once('/')?;
    let (used, max): (u64, u64) = (used.trim().parse().ok()?, max.trim().parse().ok()?);
    Some(max.saturating_sub(used))
}

#[cfg(test)]
#[test]
fn quota_headers_read_as_requests_left() {
    assert_eq!(remaining_of("4711"), Some(4711));
    assert_eq!(remaining_of("api-usage=25/5000"), Some(4975));
    assert_eq!(
        remaining_of("api-usage=25/5000, per-app-api-usage=1/100"),
        Some(4975)
    );
    assert_eq!(remaining_of("plenty"), None);
}

/// Counts a request among the failing ones for as long as it lives.
struct Failing<'a>(&'a AtomicUsize);

impl<'a> Failing<'a> {
    fn start(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Failing(count)
    }
}

impl Drop for Failing<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counts a request in flight for as long as it lives, cancellation included.
struct RequestInFlight<'a>(&'a ProviderApi);

impl<'a> RequestInFlight<'a> {
    fn start(api: &'a ProviderApi) -> Self {
        api.in_flight.fetch_add(1, Ordering::Relaxed);
        api.metrics.in_flight.increment(1.0);
        RequestInFlight(api)
    }
}

impl Drop for RequestInFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.metrics.in_flight.decrement(1.0);
    }
}

/// A body's JSON, written straight into its buffer (`Value`'s `Display`
/// goes through a formatter adapter that cost twice as much).
fn json_bytes(body: &Value) -> Bytes {
    let mut buf = Vec::with_capacity(256);
    crate::sink::json::write_value(&mut buf, body);
    Bytes::from(buf)
}

pub(super) fn internal(message: String) -> ApiError {
    ApiError {
        kind: ApiErrorKind::Internal,
        status: None,
        body: None,
        attempts: 0,
        message,
    }
}
