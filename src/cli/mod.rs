//! Command-line arguments (parsing only; the commands live beside this).

pub mod accounts;
pub mod dlq;
pub mod run;
pub mod tap;
pub mod test;
pub mod validate;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "syncflow",
    version,
    about = "Declarative record sync from NATS JetStream to CRM APIs"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check the whole config offline and run every pipeline's tests.
    Validate {
        #[command(flatten)]
        dir: DirArg,
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Dry-run one pipeline on messages (newline-delimited JSON), or on its
    /// own `tests:` when no --input is given. No network.
    Test {
        #[command(flatten)]
        dir: DirArg,
        /// The pipeline's name.
        pipeline: String,
        /// A file of newline-delimited JSON messages, or `-` for stdin.
        #[arg(long, conflicts_with_all = ["webhook", "poll"])]
        input: Option<PathBuf>,
        /// A webhook request body from the link's provider: its events are
        /// read into envelopes and run through this inbound pipeline.
        #[arg(long, conflicts_with = "poll")]
        webhook: Option<PathBuf>,
        /// A page of the link's provider's poll endpoint, the same way.
        #[arg(long)]
        poll: Option<PathBuf>,
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// List, show, replay and purge dead letters.
    Dlq {
        #[command(flatten)]
        dir: DirArg,
        #[command(subcommand)]
        command: dlq::DlqCommand,
    },
    /// List, add and remove accounts' credentials (auth.per_account).
    Accounts {
        #[command(flatten)]
        dir: DirArg,
        #[command(subcommand)]
        command: accounts::AccountsCommand,
    },
    /// Print a running instance's live decisions for one pipeline: key,
    /// action, body or error, provider status and latency.
    Tap {
        #[command(flatten)]
        dir: DirArg,
        /// The pipeline's name.
        pipeline: String,
        /// The instance's HTTP address (default: `http.listen` of the config).
        #[arg(long)]
        url: Option<String>,
        /// Only this record key.
        #[arg(long)]
        key: Option<String>,
        /// Only this action (create, update, upsert, delete, skip...).
        #[arg(long)]
        action: Option<String>,
        /// Stop after this many decisions.
        #[arg(long)]
        count: Option<u64>,
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Run every pipeline until SIGINT/SIGTERM, then drain.
    Run {
        #[command(flatten)]
        dir: DirArg,
        /// Log lines as JSON (for log shippers) instead of text.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        log_format: Format,
        /// How long a drain may take before in-flight messages are handed
        /// back for redelivery (e.g. 20s).
        #[arg(long, default_value = "20s", value_parser = parse_duration)]
        drain_timeout: std::time::Duration,
    },
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    crate::config::duration::parse_duration(s)
}

#[derive(Debug, Args)]
pub struct DirArg {
    /// The config directory (syncflow.yaml, pipelines/, providers/, schemas/).
    #[arg(long = "dir", env = "SYNCFLOW_DIR", default_value = ".", global = true)]
    pub path: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Json,
}

/// How long a command waits for NATS before saying it cannot reach it.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// JetStream, with the config's connection settings (`syncflow.yaml`).
async fn jetstream(
    config: &crate::compile::Config,
) -> Result<async_nats::jetstream::Context, String> {
    let g = &config.globals.nats;
    let url = crate::config::secret::redact_url(&g.url);
    let options = crate::connect::nats_options(g)
        .await
        .map_err(|e| e.to_string())?;
    let client = tokio::time::timeout(
        CONNECT_TIMEOUT,
        options.connect(crate::connect::nats_servers(&g.url)),
    )
    .await
    .map_err(|_| format!("cannot reach NATS at {url} within {CONNECT_TIMEOUT:?}"))?
    .map_err(|e| format!("cannot connect to NATS at {url}: {e}"))?;
    Ok(async_nats::jetstream::new(client))
}

/// Runs a command's async part on a runtime of its own (commands other than
/// `run` are short and single-threaded).
fn block_on<T>(work: impl std::future::Future<Output = Result<T, String>>) -> Result<T, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    runtime.block_on(async {
        let _ = rustls::crypto::ring::default_provider().install_default();
        work.await
    })
}
