//! A stand-in for the external CRMs: one HTTP server that answers like the
//! HubSpot (`/hubspot`) and Salesforce (`/salesforce`) APIs the shipped
//! providers call, with their rate limits, errors and auth, plus fault
//! injection (random 503s, and scripted [`Fault`]s for chosen requests),
//! latency, `Idempotency-Key` replays and an inspection API (`/_admin`).
//! Used by the demo, the end-to-end tests and the benchmarks, so the
//! request path takes one short lock and logs nothing.
//!
//! Routes, relative to each API's base URL:
//!
//! - HubSpot (`/hubspot`): `POST /crm/v3/objects/contacts`,
//!   `GET|PATCH|DELETE /crm/v3/objects/contacts/{id}`, and the batches
//!   `POST /crm/v3/objects/contacts/batch/{create,update,upsert,archive}`
//!   (`{"inputs": [...]}`, at most 100).
//! - Salesforce (`/salesforce`): `POST /services/data/v60.0/sobjects/Contact`,
//!   `GET|PATCH|DELETE .../sobjects/Contact/{id}`,
//!   `PATCH .../sobjects/Contact/Internal_Id__c/{external_id}` (upsert),
//!   `GET .../sobjects/Contact/changes`, and the sObject collections
//!   `POST|PATCH /services/data/v60.0/composite/sobjects` (`{"allOrNone",
//!   "records": [...]}`, at most 200), `DELETE .../composite/sobjects?ids=..`
//!   and `PATCH .../composite/sobjects/Contact/Internal_Id__c` (upsert).
//!
//! A batch is one request to the gateway (one fault answer, one share of the
//! rate limit, one stored reply for its `Idempotency-Key`), and each of its
//! records goes through the same code as a single-record request: the same
//! checks, conflicts, webhooks and write counts. A [`Fault`] with
//! `item_contains` fails single records of a batch.
//!
//! For two-way sync it also plays the CRM's side of changes: HubSpot
//! webhooks for every contact change (signed, batched, retried, and on
//! demand duplicated, reordered or dropped: [`WebhookConfig`]), a Salesforce
//! "changed since" query for pollers (`GET /salesforce/services/data/v60.0/
//! sobjects/Contact/changes`), and admin edits standing for CRM users
//! ([`MockCrm::hubspot_user_create`] and the like), counted apart from
//! syncflow's API writes ([`Counters`]).
//!
//! With [`MockCrmConfig::oauth`] set, it also plays the OAuth2
//! refresh-token flow, per account (`oauth.rs`): tests register each
//! account's refresh token ([`MockCrm::oauth_grant`], or
//! `PUT /_admin/oauth/grants/{account}`), clients trade it for short-lived
//! access tokens at `POST /hubspot/oauth/v1/token` or
//! `POST /salesforce/services/oauth2/token` (form-encoded
//! `grant_type=refresh_token&client_id&client_secret&refresh_token`), and
//! API requests must then carry a live one (or the fixed `token`). An
//! expired or revoked token gets the API's 401, and the request log names
//! the account of each accepted token. Admin routes: `DELETE
//! /_admin/oauth/grants/{account}` (revoke), `POST
//! /_admin/oauth/expire/{account}`, and `GET /_admin/oauth` ([`OAuthStats`]).
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use syncflow_mock_crm::{MockCrm, MockCrmConfig};
//! let crm = MockCrm::start(MockCrmConfig::default()).await?;
//! let hubspot_base_url = crm.hubspot_url(); // http://127.0.0.1:PORT/hubspot
//! // ... run syncflow against it ...
//! assert_eq!(crm.snapshot().hubspot.counters.rate_limited, 0);
//! crm.shutdown().await
//! # }
//! ```

mod admin;
mod batch;
mod config;
mod edits;
mod faults;
mod gateway;
mod histogram;
mod hubspot;
mod latency;
mod limit;
mod oauth;
mod records;
mod reply;
mod request;
mod salesforce;
mod snapshot;
#[cfg(test)]
mod test_support;
#[cfg(test)]
mod tests;
mod webhook;
mod writes;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use config::{ConfigError, MockCrmConfig, OAuthConfig, RateLimit, parse_duration};
pub use edits::EditError;
pub use faults::{Fault, FaultError, MockApi};
pub use oauth::OAuthStats;
pub use snapshot::{ApiSnapshot, Counters, LoggedRequest, RecordSnapshot, Snapshot};
pub use webhook::{MAX_RETRY_BACKOFF, WebhookConfig, WebhookStats, signature_v3};

use gateway::{Api, Settings};
use hubspot::HubSpot;
use salesforce::Salesforce;
use serde_json::Value;
use webhook::Webhooks;

/// A running mock CRM. Dropping it stops the server without waiting.
pub struct MockCrm {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    server: JoinHandle<io::Result<()>>,
    /// Posts the webhooks; aborted with the server.
    deliveries: JoinHandle<()>,
}

impl MockCrm {
    /// Binds `config.listen` and serves on a background task.
    pub async fn start(config: MockCrmConfig) -> io::Result<MockCrm> {
        config
            .validate()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let settings = Arc::new(Settings::new(&config));
        let webhooks = Webhooks::new(config.webhook.clone())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let hubspot = HubSpot::new(webhooks.clone());
        let shared = Arc::new(Shared {
            hubspot: Arc::new(
                Api::new(settings.clone(), config.hubspot_limit, hubspot)
                    .with_daily(config.hubspot_daily),
            ),
            salesforce: Arc::new(Api::new(
                settings.clone(),
                config.salesforce_limit,
                Salesforce::default(),
            )),
            settings,
            webhooks,
        });
        let listener = TcpListener::bind(config.listen).await?;
        let addr = listener.local_addr()?;
        // Responses are small and written at once: Nagle's algorithm would
        // only add delay on keep-alive connections.
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let (stop, stopped) = oneshot::channel::<()>();
        let app = router(&shared);
        let server = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await
        });
        tracing::info!(
            %addr,
            hubspot_limit = ?config.hubspot_limit.map(|limit| limit.to_string()),
            salesforce_limit = ?config.salesforce_limit.map(|limit| limit.to_string()),
            fail_rate = config.fail_rate,
            latency = ?config.latency,
            webhook = ?config.webhook.as_ref().map(|webhook| &webhook.url),
            oauth_client = ?config.oauth.as_ref().map(|oauth| &oauth.client_id),
            "mock CRM listening"
        );
        let deliveries = shared.webhooks.spawn_delivery();
        Ok(MockCrm {
            addr,
            shared,
            stop: Some(stop),
            server,
            deliveries,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Base URL of the HubSpot-like API, as a provider's `base_url`.
    pub fn hubspot_url(&self) -> String {
        format!("{}/hubspot", self.base_url())
    }

    /// Base URL of the Salesforce-like API, as a provider's `base_url`.
    pub fn salesforce_url(&self) -> String {
        format!("{}/salesforce", self.base_url())
    }

    pub fn snapshot(&self) -> Snapshot {
        self.shared.snapshot()
    }

    /// Changes the fraction of requests answered 503; refuses one outside 0..=1.
    pub fn set_fail_rate(&self, fail_rate: f64) -> Result<(), ConfigError> {
        self.shared.settings.set_fail_rate(fail_rate)
    }

    /// Answers the requests to `api` that match `fault` with its status and
    /// body, before authentication, the rate limit and idempotent replays;
    /// or, for a fault with `item_contains`, fails the matching items of
    /// batch requests each on its own. Faults are tried in the order they
    /// were added.
    pub fn add_fault(&self, api: MockApi, fault: Fault) -> Result<(), FaultError> {
        self.shared.add_fault(api, fault)
    }

    /// Removes every scripted fault of both APIs.
    pub fn clear_faults(&self) {
        self.shared.hubspot.clear_faults();
        self.shared.salesforce.clear_faults();
    }

    /// Forgets records, counters, logs, stored replies, rate-limit history,
    /// queued webhook events and webhook counts, and zeroes the OAuth stats.
    /// The settings (fail rate, scripted faults, webhook target, Salesforce
    /// clock, OAuth grants) stay, and so do the access tokens issued.
    pub fn reset(&self) {
        self.shared.reset();
    }

    /// Sets where webhooks go (`None`: nowhere, and changes are not queued).
    /// Tests start the mock before they know syncflow's port.
    pub fn set_webhook(&self, webhook: Option<WebhookConfig>) -> Result<(), ConfigError> {
        self.shared.webhooks.set_target(webhook)
    }

    pub fn webhook_stats(&self) -> WebhookStats {
        self.shared.webhooks.stats()
    }

    /// Waits until no webhook event is pending (all delivered or given up),
    /// checking every 10 ms; the stats then, or the last ones seen on timeout.
    pub async fn wait_for_webhooks(&self, timeout: Duration) -> Result<WebhookStats, WebhookStats> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let stats = self.webhook_stats();
            if stats.pending == 0 {
                return Ok(stats);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(stats);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Registers or replaces `account`'s OAuth refresh token: the old one
    /// stops working, access tokens already issued stay valid. Used only
    /// when the mock was started with [`MockCrmConfig::oauth`].
    pub fn oauth_grant(&self, account: &str, refresh_token: &str) {
        self.shared.settings.oauth.grant(account, refresh_token);
    }

    /// Revokes `account`'s refresh token and every live access token of it
    /// (requests carrying one are then told it expired).
    pub fn oauth_revoke(&self, account: &str) {
        self.shared.settings.oauth.revoke(account);
    }

    /// Expires `account`'s live access tokens now; its refresh token still
    /// works, so a client that refreshes carries on.
    pub fn oauth_expire(&self, account: &str) {
        self.shared.settings.oauth.expire(account);
    }

    pub fn oauth_stats(&self) -> OAuthStats {
        self.shared.settings.oauth.stats()
    }

    /// A CRM user creates a HubSpot contact (`properties` is an object, as in
    /// the API's body); its id. Webhooks say `changeSource: "CRM_UI"`.
    pub fn hubspot_user_create(&self, properties: Value) -> Result<String, EditError> {
        let created = self.shared.hubspot_user_create(properties)?;
        Ok(created["id"].as_str().unwrap_or_default().to_owned())
    }

    /// A CRM user changes some properties of a HubSpot contact (null clears one).
    pub fn hubspot_user_update(&self, id: &str, properties: Value) -> Result<(), EditError> {
        self.shared.hubspot_user_update(id, properties).map(drop)
    }

    pub fn hubspot_user_delete(&self, id: &str) -> Result<(), EditError> {
        self.shared.hubspot_user_delete(id).map(drop)
    }

    /// A CRM user creates a Salesforce contact (`LastName` required); its id.
    /// `modified_at` (ms since the epoch) backdates the change.
    pub fn salesforce_user_create(
        &self,
        fields: Value,
        modified_at: Option<u64>,
    ) -> Result<String, EditError> {
        let created = self.shared.salesforce_user_create(fields, modified_at)?;
        Ok(created["Id"].as_str().unwrap_or_default().to_owned())
    }

    pub fn salesforce_user_update(
        &self,
        id: &str,
        fields: Value,
        modified_at: Option<u64>,
    ) -> Result<(), EditError> {
        self.shared
            .salesforce_user_update(id, fields, modified_at)
            .map(drop)
    }

    /// Deletes, leaving a tombstone for pollers.
    pub fn salesforce_user_delete(
        &self,
        id: &str,
        modified_at: Option<u64>,
    ) -> Result<(), EditError> {
        self.shared
            .salesforce_user_delete(id, modified_at)
            .map(drop)
    }

    /// Fixes the `LastModifiedDate` (ms) of every later Salesforce change not
    /// given one, API writes included; `None` goes back to the real time.
    pub fn set_salesforce_clock(&self, now: Option<u64>) {
        self.shared.set_salesforce_clock(now);
    }

    /// Stops accepting, lets in-flight requests finish, and waits for the
    /// server. Webhooks not yet delivered are dropped.
    pub async fn shutdown(mut self) -> io::Result<()> {
        self.deliveries.abort();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.server).await.map_err(io::Error::other)?
    }
}

impl Drop for MockCrm {
    fn drop(&mut self) {
        self.deliveries.abort();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Everything the routes share.
struct Shared {
    settings: Arc<Settings>,
    hubspot: Arc<Api<HubSpot>>,
    salesforce: Arc<Api<Salesforce>>,
    webhooks: Arc<Webhooks>,
}

impl Shared {
    fn snapshot(&self) -> Snapshot {
        Snapshot {
            fail_rate: self.settings.fail_rate(),
            hubspot: self.hubspot.snapshot(),
            salesforce: self.salesforce.snapshot(),
        }
    }

    fn reset(&self) {
        self.hubspot.reset();
        self.salesforce.reset();
        self.webhooks.reset();
        self.settings.oauth.reset_stats();
    }

    fn set_salesforce_clock(&self, now: Option<u64>) {
        self.salesforce.edit(|salesforce| salesforce.set_clock(now));
    }

    fn add_fault(&self, api: MockApi, fault: Fault) -> Result<(), FaultError> {
        match api {
            MockApi::Hubspot => self.hubspot.add_fault(fault),
            MockApi::Salesforce => self.salesforce.add_fault(fault),
        }
    }
}

fn router(shared: &Arc<Shared>) -> Router {
    Router::new()
        .nest("/hubspot", hubspot::routes(shared.hubspot.clone()))
        .nest("/salesforce", salesforce::routes(shared.salesforce.clone()))
        .nest("/_admin", admin::routes(shared.clone()))
        .merge(latency::routes(shared.settings.latency_probe.clone()))
}
