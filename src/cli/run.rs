//! `syncflow run`: validate as `validate` would, then run until a signal,
//! applying config changes as they are saved.

use std::path::Path;
use std::time::Duration;

use super::Format;
use crate::compile::compile_dir;
use crate::config::env::ProcessEnv;
use crate::reload::{self, ConfigWatcher};
use crate::runtime::{Engine, shutdown_signal};

pub fn init_tracing(format: Format) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only for a terminal: log files and collectors get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(ansi);
    let _ = match format {
        Format::Json => builder.json().try_init(),
        Format::Text => builder.try_init(),
    };
}

/// Returns whether the run ended cleanly (a drain after a signal).
pub fn run(dir: &Path, drain_timeout: Duration) -> Result<bool, String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    runtime.block_on(async move {
        // Watch before the first load, so no edit falls between the two.
        let mut watcher = ConfigWatcher::new(dir);
        let config = match compile_dir(dir, &ProcessEnv, true) {
            Ok(config) => config,
            Err(diags) => return Err(format!("{diags}{} errors: not starting", diags.len())),
        };
        // As read by this load: a certificate rotated since is a change.
        watcher.also_watch(config.read_files());
        let _ = rustls::crypto::ring::default_provider().install_default();
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            shutdown_signal().await;
            tracing::info!("signal received: draining");
            let _ = stop.send(true);
        });
        let pipelines = config.pipelines.len();
        let engine = Engine::start(config, drain_timeout, stop_rx.clone())
            .await
            .map_err(|e| e.to_string())?;
        let Some(mut engine) = engine else {
            return Ok(true);
        };
        tracing::info!(pipelines, "running");
        reload::run(dir, watcher, &mut engine, stop_rx).await;
        engine.drain().await;
        tracing::info!("stopped");
        Ok(true)
    })
}
