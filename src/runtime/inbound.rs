//! The running side of providers' `inbound`: the webhooks answered on the
//! HTTP listener and one poller per polled object, both following reloads.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_nats::jetstream::{self, kv};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::plan::{Plan, ProviderChange};
use super::providers::Providers;
use crate::compile::Config;
use crate::config::model::JetStreamGlobals;
use crate::expr::ScriptEngine;
use crate::inbound::http::{Hooks, Registry};
use crate::inbound::poll::{CURSORS, LEASES, Poller};
use crate::kv::open_bucket;

/// A running poller, stopped by its sender.
struct Running {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// Webhooks and pollers of the running config.
pub struct InboundRuntime {
    hooks: Hooks,
    js: jetstream::Context,
    cursors: kv::Store,
    leases: kv::Store,
    engine: ScriptEngine,
    /// This instance, in poll leases.
    holder: String,
    /// By (provider, object).
    pollers: BTreeMap<(String, String), Running>,
}

impl InboundRuntime {
    /// Makes sure the inbound stream and the poll buckets exist.
    pub async fn open(
        hooks: Hooks,
        js: &jetstream::Context,
        settings: &JetStreamGlobals,
    ) -> Result<Self, String> {
        crate::inbound::ensure_stream(js, settings)
            .await
            .map_err(|e| e.to_string())?;
        let cursors = open_bucket(js, CURSORS, "syncflow: poll cursors", settings.replicas).await?;
        let leases = open_bucket(js, LEASES, "syncflow: poll leases", settings.replicas).await?;
        Ok(InboundRuntime {
            hooks,
            js: js.clone(),
            cursors,
            leases,
            engine: ScriptEngine::new(),
            holder: crate::kv::holder_id(),
            pollers: BTreeMap::new(),
        })
    }

    /// Puts `config`'s webhooks in place and (re)starts the pollers of
    /// added or changed providers; stops those of removed ones.
    pub async fn apply(&mut self, config: &Config, plan: &Plan, providers: &Providers) {
        let webhooks = config
            .providers
            .iter()
            .filter_map(|(name, p)| Some((name.clone(), Arc::new(p.inbound.webhook.clone()?))))
            .collect();
        self.hooks.set(Registry {
            webhooks,
            engine: self.engine.clone(),
            js: Some(self.js.clone()),
        });

        let changed = |provider: &str| {
            !matches!(
                plan.providers.get(provider),
                Some(ProviderChange::Unchanged | ProviderChange::RateLimit)
            )
        };
        let stale: Vec<(String, String)> = self
            .pollers
            .keys()
            .filter(|(provider, object)| {
                changed(provider)
                    || config
                        .providers
                        .get(provider)
                        .is_none_or(|p| !p.inbound.polls.contains_key(object))
            })
            .cloned()
            .collect();
        for key in stale {
            if let Some(running) = self.pollers.remove(&key) {
                stop(running).await;
            }
        }
        for (name, provider) in &config.providers {
            let Some(running) = providers.get(name) else {
                continue;
            };
            for (object, poll) in &provider.inbound.polls {
                let key = (name.clone(), object.clone());
                if self.pollers.contains_key(&key) {
                    continue;
                }
                let poller = Poller {
                    poll: Arc::new(poll.clone()),
                    api: running.api.clone(),
                    js: self.js.clone(),
                    cursors: self.cursors.clone(),
                    leases: self.leases.clone(),
                    engine: self.engine.clone(),
                    holder: self.holder.clone(),
                };
                let (tx, rx) = watch::channel(false);
                let task = tokio::spawn(poller.run(rx));
                self.pollers.insert(key, Running { stop: tx, task });
            }
        }
    }

    /// Stops every poller (each hands its lease back).
    pub async fn stop(self) {
        for running in self.pollers.into_values() {
            stop(running).await;
        }
    }
}

async fn stop(running: Running) {
    let _ = running.stop.send(true);
    let _ = running.task.await;
}
