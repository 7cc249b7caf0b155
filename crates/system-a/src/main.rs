//! System A as a standalone server, for the demo and manual tests.
//!
//! ```text
//! cargo run -p syncflow-system-a --bin system-a -- --listen 127.0.0.1:18090 \
//!     --nats-url nats://127.0.0.1:4222 [--stream CDC] [--subject-prefix cdc.contacts] \
//!     [--token dev-token]
//! ```

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;
use syncflow_system_a::{SystemA, SystemAConfig};
use tracing_subscriber::EnvFilter;

/// Contacts over HTTP; every write published as a CDC event on NATS JetStream.
/// Inspect it at /_admin/state.
#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:18090")]
    listen: SocketAddr,
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    /// The JetStream stream; created (capturing SUBJECT_PREFIX.>) when missing.
    #[arg(long, default_value = "CDC")]
    stream: String,
    /// Events go to SUBJECT_PREFIX.<id>.
    #[arg(long, default_value = "cdc.contacts")]
    subject_prefix: String,
    /// The bearer token the API requires; none when unset.
    #[arg(long, env = "SYSTEM_A_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    match serve(Args::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("system-a: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Serves until Ctrl-C, then lets in-flight requests finish.
async fn serve(args: Args) -> std::io::Result<()> {
    let system_a = SystemA::start(SystemAConfig {
        listen: args.listen,
        nats_url: args.nats_url,
        stream: args.stream,
        subject_prefix: args.subject_prefix,
        token: args.token,
    })
    .await?;
    println!("System A listening on {}", system_a.addr());
    println!("  contacts: {}/contacts", system_a.base_url());
    println!("  state:    {}/_admin/state", system_a.base_url());
    tokio::signal::ctrl_c().await?;
    system_a.shutdown().await
}
