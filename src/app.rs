//! Runs one command and turns its result into an exit code; nothing else
//! happens in `main`.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command, accounts, dlq, run, tap, test, validate};

/// Valid / success.
const OK: u8 = 0;
/// Invalid config, or a failed record or test.
const FAILED: u8 = 1;
/// Bad arguments (clap also exits 2 on its own usage errors).
const USAGE: u8 = 2;

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let dir = cli.command.dir();
    if !dir.is_dir() {
        eprintln!(
            "syncflow: config directory {} does not exist",
            dir.display()
        );
        return ExitCode::from(USAGE);
    }
    let result = match &cli.command {
        Command::Validate { format, .. } => {
            with_stdout(|out| validate::run(dir, *format, out).map_err(|e| e.to_string()))
        }
        Command::Test {
            pipeline,
            input,
            webhook,
            poll,
            format,
            ..
        } => with_stdout(|out| {
            let feed = match (webhook, poll) {
                (Some(path), _) => Some(test::Feed::Webhook(path)),
                (None, Some(path)) => Some(test::Feed::Poll(path)),
                (None, None) => None,
            };
            test::run(dir, pipeline, input.as_deref(), feed, *format, out)
                .map_err(|e| e.to_string())
        }),
        Command::Dlq { command, .. } => with_stdout(|out| dlq::run(dir, command, out)),
        Command::Accounts { command, .. } => with_stdout(|out| accounts::run(dir, command, out)),
        Command::Tap {
            pipeline,
            url,
            key,
            action,
            count,
            format,
            ..
        } => {
            let args = tap::TapArgs {
                pipeline,
                url: url.as_deref(),
                key: key.as_deref(),
                action: action.as_deref(),
                format: *format,
                count: *count,
            };
            with_stdout(|out| tap::run(dir, &args, out))
        }
        // `run` logs from many threads: it must not hold stdout's lock.
        Command::Run {
            log_format,
            drain_timeout,
            ..
        } => {
            run::init_tracing(*log_format);
            run::run(dir, *drain_timeout)
        }
    };
    match result {
        Ok(true) => ExitCode::from(OK),
        Ok(false) => ExitCode::from(FAILED),
        Err(message) => {
            eprintln!("syncflow: {}", message.trim_end());
            ExitCode::from(FAILED)
        }
    }
}

/// Runs a command that prints its report, with stdout locked and buffered
/// once for the whole report.
fn with_stdout<T>(command: impl FnOnce(&mut dyn Write) -> T) -> T {
    let mut out = std::io::stdout().lock();
    command(&mut out)
}

impl Command {
    fn dir(&self) -> &Path {
        match self {
            Command::Validate { dir, .. }
            | Command::Test { dir, .. }
            | Command::Dlq { dir, .. }
            | Command::Accounts { dir, .. }
            | Command::Tap { dir, .. }
            | Command::Run { dir, .. } => &dir.path,
        }
    }
}
