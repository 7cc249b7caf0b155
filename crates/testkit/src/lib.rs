//! Real `nats-server -js` and `redis-server` processes for tests: single
//! servers, a three-node JetStream cluster ([`NatsCluster`]), and a Redis
//! primary with a replica and sentinels ([`RedisSentinel`]).
//!
//! NATS and Redis are never mocked (see DEVELOPERS.md): a test starts its own
//! server on a free loopback port with its data in a temporary directory, and
//! can kill, stop and restart it to exercise outages. Dropping the handle kills
//! the process and removes the directory.
//!
//! ```no_run
//! # fn main() -> Result<(), syncflow_testkit::TestkitError> {
//! let mut nats = syncflow_testkit::NatsServer::start()?;
//! let url = nats.url(); // nats://127.0.0.1:PORT
//! nats.restart()?; // same port, same JetStream store
//! # Ok(()) }
//! ```
//!
//! The calls block (at most ~10 s while a server starts, ~20 s while a
//! cluster elects its leader or sentinels fail over): they are meant for
//! test setup, where nothing else is waiting on the runtime (in an async
//! test, inside `tokio::task::block_in_place`).

mod chromedriver;
mod config;
mod nats;
mod nats_cluster;
mod redis;
mod redis_sentinel;
mod server;
mod tls;

use std::io;
use std::process::ExitStatus;
use std::time::Duration;

pub use chromedriver::{CHROMIUM, CHROMIUM_ARGS, Chromedriver};
pub use config::{copy_tree, example_config, shipped_config};
pub use nats::Nats;
pub use nats_cluster::{NatsCluster, newer_nats_server};
pub use redis::Redis;
pub use redis_sentinel::{RedisSentinel, RedisSentinelKind, SentinelServer};
pub use server::{Server, ServerKind, free_port, temp_dir};
pub use tls::Certs;

/// A `nats-server -js` on a free loopback port.
pub type NatsServer = Server<Nats>;
/// A `redis-server` without persistence on a free loopback port.
pub type RedisServer = Server<Redis>;
/// A `chromedriver` on a free loopback port (the browser tests).
pub type ChromedriverServer = Server<Chromedriver>;

/// Why a test server could not be started.
#[derive(Debug, thiserror::Error)]
pub enum TestkitError {
    #[error("{binary} not found on PATH: install it with \"{install}\"")]
    NotInstalled {
        binary: &'static str,
        install: &'static str,
    },
    #[error("{need}: {found}; {install}")]
    TooOld {
        need: &'static str,
        found: String,
        install: &'static str,
    },
    #[error("could not {action}: {source}")]
    Io {
        action: String,
        #[source]
        source: io::Error,
    },
    #[error("{binary} on port {port} exited during startup ({status}); log tail:\n{log_tail}")]
    Exited {
        binary: &'static str,
        port: u16,
        status: ExitStatus,
        log_tail: String,
    },
    #[error(
        "{binary} on port {port} was not ready after {waited:?} (last probe: {last_probe_error}); log tail:\n{log_tail}"
    )]
    NotReady {
        binary: &'static str,
        port: u16,
        waited: Duration,
        last_probe_error: String,
        log_tail: String,
    },
    #[error(
        "{cluster} was not ready after {waited:?} (last probe: {last_probe_error}); log tails:\n{logs}"
    )]
    ClusterNotReady {
        cluster: &'static str,
        waited: Duration,
        last_probe_error: String,
        logs: String,
    },
}
