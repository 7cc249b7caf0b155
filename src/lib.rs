//! syncflow: declarative record synchronization from NATS JetStream to
//! rate-limited provider APIs.
//!
//! Stages, in the order a record meets them (see DESIGN.md §6):
//! [`config`] → `expr` → `doc` → `mapping` → `schema` → `pipeline` (per-record
//! evaluation) → `source` → `executor` → `sink` → [`limiter`] → `reload`.

pub mod action;
pub mod allocator;
pub mod app;
pub mod cli;
pub mod clock;
pub mod compile;
pub mod config;
pub mod connect;
pub mod credentials;
pub mod dlq;
pub mod doc;
pub mod error;
pub mod executor;
pub mod expr;
pub mod fleet;
pub mod fnv;
pub mod idmap;
pub mod inbound;
pub mod kv;
pub mod limiter;
pub mod mapping;
pub mod metric_handles;
pub mod pipeline;
pub mod provider;
pub mod readiness;
pub mod reload;
pub mod runtime;
pub mod sampled;
pub mod schema;
pub mod server;
pub mod sink;
pub mod source;
pub mod status;
pub mod tap;
pub mod transient;
pub mod twoway;
