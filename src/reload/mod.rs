//! Hot reload: watch the config directory, re-validate the whole of it on a
//! change (exactly as `syncflow validate` does), and either put the new
//! config in place or refuse it with every error, keeping the running one.
//!
//! Metrics: `syncflow_config_reloads_total{outcome}` (`applied`, `unchanged`,
//! `refused` for an invalid config, `failed` for a valid one that could not
//! be built), `syncflow_config_generation` (1 at start, +1 per applied
//! reload) and `syncflow_config_errors` (errors of the last refused config; 0
//! once a valid one is in place).

pub mod watch;

use std::path::{Path, PathBuf};

use tokio::sync::watch as signal;

use crate::compile::compile_dir;
use crate::config::env::ProcessEnv;
use crate::runtime::Engine;
pub use watch::ConfigWatcher;

/// Applies every change of `dir` to `engine` until `stop` turns true.
pub async fn run(
    dir: &Path,
    mut watcher: ConfigWatcher,
    engine: &mut Engine,
    mut stop: signal::Receiver<bool>,
) {
    let mut generation = 1u64;
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            () = watcher.changed() => {}
        }
        if reload(dir, engine, &mut watcher).await {
            generation += 1;
            metrics::gauge!("syncflow_config_generation").set(generation as f64);
        }
    }
}

/// One reload; returns whether a new config was put in place.
async fn reload(dir: &Path, engine: &mut Engine, watcher: &mut ConfigWatcher) -> bool {
    let started = std::time::Instant::now();
    let owned: PathBuf = dir.to_path_buf();
    // Compiling runs the pipelines' tests: keep it off the async workers.
    let compiled =
        tokio::task::spawn_blocking(move || compile_dir(&owned, &ProcessEnv, true)).await;
    let config = match compiled {
        Ok(Ok(config)) => config,
        Ok(Err(diags)) => {
            let errors = diags.into_sorted();
            for d in &errors {
                tracing::error!(diagnostic = %d, "config error");
            }
            tracing::error!(
                errors = errors.len(),
                "reload refused: the running config stays"
            );
            count("refused");
            metrics::gauge!("syncflow_config_errors").set(errors.len() as f64);
            engine.config_refused(errors.iter().map(ToString::to_string).collect());
            return false;
        }
        Err(e) => {
            tracing::error!(error = %e, "reload failed: the running config stays");
            count("failed");
            return false;
        }
    };
    metrics::gauge!("syncflow_config_errors").set(0.0);
    // The files outside the config's folders this version was made of, as
    // read (a refused version keeps the running one's list).
    watcher.also_watch(config.read_files());
    match engine.apply(config).await {
        Ok(applied) if applied.is_empty() => {
            tracing::info!("config files changed, but no pipeline or provider did");
            count("unchanged");
            false
        }
        Ok(applied) => {
            tracing::info!(
                added = ?applied.added,
                changed = ?applied.swapped,
                restarted = ?applied.restarted,
                removed = ?applied.removed,
                rate_limits = ?applied.rate_limits,
                took_ms = started.elapsed().as_millis() as u64,
                "reload applied"
            );
            count("applied");
            true
        }
        Err(e) => {
            tracing::error!(error = %e, "reload failed: the running config stays");
            count("failed");
            false
        }
    }
}

fn count(outcome: &'static str) {
    metrics::counter!("syncflow_config_reloads_total", "outcome" => outcome).increment(1);
}
