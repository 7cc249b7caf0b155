//! A stand-in for the external CRMs: one HTTP server that answers like the
//! HubSpot (`/hubspot`) and Salesforce (`/salesforce`) APIs the shipped
//! providers call, with their rate limits, errors and auth, plus fault
//! injection (random 503s, and scripted [`Fault`]s for chosen requests),
//! latency, `Idempotency-Key` replays and an inspection API (`/_admin`).
//! Used by the demo, the end-to-end tests and the benchmarks, so the
//! request path takes one short lock and logs nothing.
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
mod config;
mod faults;
mod gateway;
mod histogram;
mod hubspot;
mod latency;
mod limit;
mod records;
mod reply;
mod request;
mod salesforce;
mod snapshot;
#[cfg(test)]
mod test_support;
#[cfg(test)]
mod tests;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use config::{ConfigError, MockCrmConfig, RateLimit, parse_duration};
pub use faults::{Fault, FaultError, MockApi};
pub use snapshot::{ApiSnapshot, Counters, LoggedRequest, RecordSnapshot, Snapshot};

use gateway::{Api, Settings};
use hubspot::HubSpot;
use salesforce::Salesforce;

/// A running mock CRM. Dropping it stops the server without waiting.
pub struct MockCrm {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    server: JoinHandle<io::Result<()>>,
}

impl MockCrm {
    /// Binds `config.listen` and serves on a background task.
    pub async fn start(config: MockCrmConfig) -> io::Result<MockCrm> {
        config
            .validate()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let settings = Arc::new(Settings::new(&config));
        let shared = Arc::new(Shared {
            hubspot: Arc::new(Api::new(settings.clone(), config.hubspot_limit)),
            salesforce: Arc::new(Api::new(settings.clone(), config.salesforce_limit)),
            settings,
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
            "mock CRM listening"
        );
        Ok(MockCrm {
            addr,
            shared,
            stop: Some(stop),
            server,
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
    /// body, before authentication, the rate limit and idempotent replays.
    /// Faults are tried in the order they were added.
    pub fn add_fault(&self, api: MockApi, fault: Fault) -> Result<(), FaultError> {
        self.shared.add_fault(api, fault)
    }

    /// Removes every scripted fault of both APIs.
    pub fn clear_faults(&self) {
        self.shared.hubspot.clear_faults();
        self.shared.salesforce.clear_faults();
    }

    /// Forgets records, counters, logs, stored replies and rate-limit history.
    /// The settings (fail rate and scripted faults included) stay.
    pub fn reset(&self) {
        self.shared.reset();
    }

    /// Stops accepting, lets in-flight requests finish, and waits for the server.
    pub async fn shutdown(mut self) -> io::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.server).await.map_err(io::Error::other)?
    }
}

impl Drop for MockCrm {
    fn drop(&mut self) {
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
