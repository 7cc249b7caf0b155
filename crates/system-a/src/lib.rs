//! A stand-in for System A, the internal system syncflow syncs from and to:
//! contacts in memory behind a small HTTP API, whose every write (the API's
//! and an admin's, no-op updates included) is published as a Debezium-shaped
//! CDC event on NATS JetStream before it is answered, as a real CDC pipeline
//! would publish it.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use syncflow_system_a::{SystemA, SystemAConfig};
//! let nats = syncflow_testkit::NatsServer::start().expect("nats-server");
//! let system_a = SystemA::start(SystemAConfig {
//!     nats_url: nats.url(),
//!     ..SystemAConfig::default()
//! })
//! .await?;
//! let record = system_a.user_create(serde_json::json!({"email": "a@b.c"})).await.unwrap();
//! // An event {"op": "c", "after": {"id": "1", "email": "a@b.c"}, ...} is on
//! // subject cdc.contacts.1 of stream CDC.
//! system_a.shutdown().await
//! # }
//! ```
//!
//! API (bearer token when `token` is set): `POST /contacts` (201 with the
//! record; a create repeated with the same `Idempotency-Key` is answered
//! the first one's record, nothing created twice), `GET /contacts/{id}`,
//! `PATCH /contacts/{id}` (merge; a null
//! removes a field), `DELETE /contacts/{id}` (204); 404 for a missing
//! record, 400 for a bad body (not a JSON object, or one with an `"id"`).
//! The answer comes once the event is stored: while NATS is down, writes
//! wait. Admin, no token, counted as a user's writes:
//! `POST /_admin/contacts`, `GET|PATCH|DELETE /_admin/contacts/{id}`,
//! `GET /_admin/state`.

mod cdc;
mod config;
mod http;
mod store;
mod table;
#[cfg(test)]
mod tests;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use cdc::Origin;
pub use config::SystemAConfig;
pub use table::{Counters, Snapshot, WriteError};

use cdc::Publisher;
use http::App;
use table::{Change, Table};

/// A running System A. Dropping it stops the server without waiting.
pub struct SystemA {
    addr: SocketAddr,
    app: Arc<App>,
    stop: Option<oneshot::Sender<()>>,
    server: JoinHandle<io::Result<()>>,
}

impl SystemA {
    /// Connects to NATS, creates the stream if missing, binds `listen` and
    /// serves on a background task.
    pub async fn start(config: SystemAConfig) -> io::Result<SystemA> {
        config
            .validate()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let publisher = Publisher::connect(&config).await?;
        let app = Arc::new(App {
            table: Table::new(publisher),
            token: config.token.clone(),
            creates: Default::default(),
        });
        let listener = TcpListener::bind(config.listen).await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let router = http::router(app.clone());
        let server = tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await
        });
        tracing::info!(
            %addr,
            nats_url = %config.nats_url,
            stream = %config.stream,
            subject_prefix = %config.subject_prefix,
            "System A listening"
        );
        Ok(SystemA {
            addr,
            app,
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

    pub fn snapshot(&self) -> Snapshot {
        self.app.table.snapshot()
    }

    /// The record with this id, if any.
    pub fn get(&self, id: &str) -> Option<Value> {
        self.app.table.get(id)
    }

    /// A person creates a contact from `fields` (an object); the record, with
    /// its new `"id"`.
    pub async fn user_create(&self, fields: Value) -> Result<Value, WriteError> {
        let record = self.app.write(Origin::User, Change::Create(fields)).await?;
        Ok(record.expect("a create has a record after it"))
    }

    /// A person merges `fields` into a contact (a null removes a field); the
    /// record after.
    pub async fn user_update(&self, id: &str, fields: Value) -> Result<Value, WriteError> {
        let change = Change::Update(id.to_owned(), fields);
        let record = self.app.write(Origin::User, change).await?;
        Ok(record.expect("an update has a record after it"))
    }

    pub async fn user_delete(&self, id: &str) -> Result<(), WriteError> {
        let change = Change::Delete(id.to_owned());
        self.app.write(Origin::User, change).await.map(drop)
    }

    /// Stops accepting, lets in-flight requests finish, and waits for the server.
    pub async fn shutdown(mut self) -> io::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.server).await.map_err(io::Error::other)?
    }
}

impl Drop for SystemA {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
