//! The sink's concurrency bound, and one HTTP client per request in flight.
//!
//! A request's rate-limit cell must be spent by a request that leaves at
//! once. Over a shared connection pool it may not: a request that waits for
//! a connection can be handed one that another request just gave back, long
//! after its own cell. So each of the `max_in_flight` slots has a client of
//! its own, whose pool holds that slot's one kept-alive connection: a request
//! either finds its slot's connection open and leaves at once, or its slot
//! opens a connection, and a new connection takes a fresh cell before it
//! carries anything (connect.rs). Slots are reused most recent first, so a
//! sink keeps about as many warm connections as it has requests in flight.

use std::sync::{Arc, Mutex, PoisonError};

use reqwest::header::HeaderMap;
use tokio::sync::{Semaphore, SemaphorePermit};

use super::connect::{CellDeadline, FreshCellLayer};
use crate::limiter::Limiter;
use crate::provider::Provider;

pub(super) struct Slots {
    permits: Semaphore,
    /// Clients not in use, the most recently used last.
    idle: Mutex<Vec<SlotClient>>,
    /// Stands in should building another client ever fail (it built once):
    /// slots then share its pool, which only weakens the guarantee above.
    first: SlotClient,
    provider: Arc<Provider>,
    headers: HeaderMap,
    limiter: Limiter,
}

/// A slot's client, and the deadline of the cell its request holds, which
/// its connector reads (connect.rs).
#[derive(Clone)]
struct SlotClient {
    client: reqwest::Client,
    deadline: CellDeadline,
}

/// A slot in use: its client, and the permit that bounds concurrency.
pub(super) struct Slot<'a> {
    slots: &'a Slots,
    client: Option<SlotClient>,
    _permit: SemaphorePermit<'a>,
}

impl Slots {
    pub fn new(
        provider: Arc<Provider>,
        headers: HeaderMap,
        limiter: Limiter,
    ) -> Result<Self, reqwest::Error> {
        let first = build_client(&provider, &headers, &limiter)?;
        Ok(Slots {
            permits: Semaphore::new(provider.max_in_flight.max(1)),
            idle: Mutex::new(vec![first.clone()]),
            first,
            provider,
            headers,
            limiter,
        })
    }

    /// Waits for a free slot.
    pub async fn take(&self) -> Slot<'_> {
        let permit = self
            .permits
            .acquire()
            .await
            .expect("the sink never closes its semaphore");
        let idle = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let client = idle.unwrap_or_else(|| {
            build_client(&self.provider, &self.headers, &self.limiter).unwrap_or_else(|e| {
                tracing::warn!(provider = %self.provider.name, error = %e, "cannot build another HTTP client: sharing the first one's connections");
                self.first.clone()
            })
        });
        Slot {
            slots: self,
            client: Some(client),
            _permit: permit,
        }
    }
}

impl Slot<'_> {
    fn slot_client(&self) -> &SlotClient {
        self.client.as_ref().expect("taken only on drop")
    }

    /// The slot's client, for a request holding a cell with this deadline
    /// (none without a limit).
    pub fn client(&self, deadline: Option<tokio::time::Instant>) -> &reqwest::Client {
        let slot = self.slot_client();
        slot.deadline.set(deadline);
        &slot.client
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            let mut idle = self
                .slots
                .idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            idle.push(client);
        }
    }
}

fn build_client(
    provider: &Provider,
    headers: &HeaderMap,
    limiter: &Limiter,
) -> Result<SlotClient, reqwest::Error> {
    let deadline = CellDeadline::default();
    let builder = reqwest::Client::builder()
        .default_headers(headers.clone())
        .timeout(provider.timeout)
        // The slot's one connection, kept alive between its requests.
        .pool_max_idle_per_host(1)
        // A new connection that took too long takes a fresh cell before it
        // carries the request.
        .connector_layer(FreshCellLayer::new(limiter.clone(), deadline.clone()))
        // Every request that goes out holds a cell of its own: no resending
        // behind the sink's back.
        .retry(reqwest::retry::never())
        .tcp_nodelay(true)
        // A redirect means a wrong base_url; following it could turn a POST
        // into a GET. Reported as a rejection instead.
        .redirect(reqwest::redirect::Policy::none());
    if provider.base_url.starts_with("http://") {
        // No TLS to verify: skip loading the system's certificates, which
        // costs milliseconds per client (redirects are not followed, so no
        // request of this client can go to an https URL).
        builder.tls_certs_only([]).build()
    } else {
        builder.build()
    }
    .map(|client| SlotClient { client, deadline })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider(max_in_flight: usize) -> Arc<Provider> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = crate::testkit::shipped_config().unwrap();
        let config =
            crate::compile::compile_dir(dir.path(), &std::collections::HashMap::new(), false)
                .unwrap();
        let mut provider = (*config.providers["hubspot"]).clone();
        provider.max_in_flight = max_in_flight;
        Arc::new(provider)
    }

    #[tokio::test]
    async fn slots_bound_concurrency_and_are_reused_most_recent_first() {
        let slots = Slots::new(provider(2), HeaderMap::new(), Limiter::Unlimited).unwrap();
        let a = slots.take().await;
        let b = slots.take().await;
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(50), slots.take())
                .await
                .is_err(),
            "a third request waits for a slot"
        );
        drop(b);
        drop(a);
        assert_eq!(slots.idle.lock().unwrap().len(), 2);
        // Two clients, built once each, reused from now on.
        let _a = slots.take().await;
        let _b = slots.take().await;
        assert!(slots.idle.lock().unwrap().is_empty());
    }
}
