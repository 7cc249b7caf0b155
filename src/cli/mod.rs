//! Command-line arguments (parsing only; the commands live beside this).

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
