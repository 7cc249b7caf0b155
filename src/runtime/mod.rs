//! `syncflow run`: connects to NATS and Redis, starts one runner per
//! pipeline, serves `/metrics`, applies reloaded configs, and drains cleanly
//! on SIGINT/SIGTERM.

mod inbound;
pub mod plan;
mod providers;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;

use crate::compile::Config;
use crate::config::model::Direction;
use crate::credentials::CredentialStore;
use crate::executor::{Ctx, PipelineMetrics, PipelineRunner, ensure_dead_letter_streams};
use crate::fleet::Fleet;
use crate::idmap::IdMap;
use crate::inbound::http::Hooks;
use crate::limiter;
use crate::pipeline::Pipeline;
use crate::pipeline::Target;
use crate::readiness::Readiness;
use crate::runtime::plan::{PipelineChange, Plan, plan};
use crate::sampled::Sampled;
use crate::server;
use crate::sink::{ProviderSink, SubjectSink, TargetSink};
use crate::status::StatusBoard;
use crate::tap::Taps;
use crate::transient::Trouble;
use crate::twoway;
use crate::twoway::store::LinkStore;

use inbound::InboundRuntime;
pub use providers::ProviderBuildError;
use providers::Providers;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("invalid http.listen {0}")]
    Listen(String),
    #[error("cannot serve http on {addr}: {source}")]
    Serve {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot connect to NATS: {0}")]
    NatsUrl(String),
    #[error("cannot set up Redis: {0}")]
    Redis(String),
    #[error(transparent)]
    Provider(#[from] ProviderBuildError),
}

/// Why a valid config could not be put in place; the running one stays.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Provider(#[from] ProviderBuildError),
    #[error("cannot set up the dead-letter stream: {0}")]
    DeadLetters(String),
}

/// What a reload did, for its log line.
#[derive(Debug, Default)]
pub struct Applied {
    pub added: Vec<String>,
    /// Took the new version over without stopping.
    pub swapped: Vec<String>,
    /// Their source changed: drained and started again.
    pub restarted: Vec<String>,
    pub removed: Vec<String>,
    /// Providers whose limit changed.
    pub rate_limits: Vec<String>,
    pub globals_ignored: bool,
}

impl Applied {
    /// No pipeline or provider changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.swapped.is_empty()
            && self.restarted.is_empty()
            && self.removed.is_empty()
            && self.rate_limits.is_empty()
    }
}

/// The running engine: shared connections and one runner per pipeline.
pub struct Engine {
    nats: async_nats::Client,
    js: jetstream::Context,
    idmap: IdMap,
    links: LinkStore,
    inbound: InboundRuntime,
    readiness: Readiness,
    providers: Providers,
    config: Config,
    runners: BTreeMap<String, PipelineRunner>,
    drain_deadline: Duration,
    taps: Taps,
    status: StatusBoard,
    /// This instance's membership, with `fleet:` in syncflow.yaml.
    fleet: Option<Fleet>,
    pub http_addr: SocketAddr,
}

impl Engine {
    /// Connects and starts every pipeline. NATS being down is not an error:
    /// the engine waits for it (`/readyz` says so), as a supervisor expects.
    /// `None` when shutdown was asked for while waiting.
    pub async fn start(
        config: Config,
        drain_deadline: Duration,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Result<Option<Engine>, RunError> {
        let readiness = Readiness::default();
        let listen: SocketAddr = config
            .globals
            .http
            .listen
            .parse()
            .map_err(|_| RunError::Listen(config.globals.http.listen.clone()))?;
        let mut http_shutdown = shutdown.clone();
        let hooks = Hooks::default();
        let taps = Taps::default();
        let status = StatusBoard::new(readiness.clone());
        let routes = hooks.router().merge(taps.router()).merge(status.router());
        let http_addr = server::serve(listen, readiness.clone(), routes, async move {
            let _ = http_shutdown.wait_for(|s| *s).await;
        })
        .await
        .map_err(|source| RunError::Serve {
            addr: listen.to_string(),
            source,
        })?;
        tracing::info!(addr = %http_addr, "serving / (status page), /metrics, /healthz, /readyz, /hooks/<provider>, /api/tap/<pipeline>");

        let nats = crate::connect::nats_options(&config.globals.nats)
            .await
            .map_err(|e| RunError::NatsUrl(e.to_string()))?
            .connect(crate::connect::nats_servers(&config.globals.nats.url))
            .await
            .map_err(|e| RunError::NatsUrl(e.to_string()))?;
        readiness.watch_nats(nats.clone());
        let js = jetstream::new(nats.clone());
        let Some((idmap, links, inbound, credentials, fleet)) =
            wait_for_nats(&js, &config, hooks, shutdown).await
        else {
            return Ok(None);
        };

        let redis = crate::connect::redis_client(&config.globals.redis)
            .map_err(|e| RunError::Redis(e.to_string()))
            .and_then(|client| {
                limiter::manage(client).map_err(|e| RunError::Redis(e.to_string()))
            })?;
        let mut providers = Providers::new(redis, &config.globals.redis.key_prefix, credentials);
        let empty = Config {
            globals: config.globals.clone(),
            providers: BTreeMap::new(),
            links: BTreeMap::new(),
            pipelines: BTreeMap::new(),
        };
        let plan = plan(&empty, &config);
        providers.commit(providers.stage(&config.providers, &plan.providers)?, |_| {
            true
        });

        let mut engine = Engine {
            nats,
            js,
            idmap,
            links,
            inbound,
            readiness,
            providers,
            config: empty,
            runners: BTreeMap::new(),
            drain_deadline,
            taps,
            status,
            fleet,
            http_addr,
        };
        engine
            .inbound
            .apply(&config, &plan, &engine.providers)
            .await;
        engine.status.config_applied(&config, &engine.js, true);
        engine.apply_pipelines(&plan, config).await;
        metrics::gauge!("syncflow_config_generation").set(1.0);
        Ok(Some(engine))
    }

    /// Puts a new, valid config in place: builds what changed first, then
    /// swaps changed pipelines over (draining only those whose source
    /// changed), starts added ones and drains removed ones. Unchanged
    /// pipelines are not touched. On an error nothing changed.
    pub async fn apply(&mut self, config: Config) -> Result<Applied, ApplyError> {
        let plan = plan(&self.config, &config);
        let staged = self.providers.stage(&config.providers, &plan.providers)?;
        let subjects: Vec<String> = config
            .pipelines
            .values()
            .map(|p| p.dead_letter_subject.clone())
            .collect();
        ensure_dead_letter_streams(&self.js, &subjects, &config.globals.jetstream)
            .await
            .map_err(|e| ApplyError::DeadLetters(e.to_string()))?;
        self.providers
            .commit(staged, |name| config.providers.contains_key(name));
        self.inbound.apply(&config, &plan, &self.providers).await;
        let globals_ignored = plan.globals_changed;
        if globals_ignored {
            tracing::warn!(
                "syncflow.yaml changed: nats, redis, http, jetstream and fleet settings take effect at the next start"
            );
        }
        let mut applied = self.apply_pipelines(&plan, config).await;
        applied.rate_limits = plan
            .providers
            .iter()
            .filter(|(_, c)| **c == plan::ProviderChange::RateLimit)
            .map(|(name, _)| name.clone())
            .collect();
        applied.globals_ignored = globals_ignored;
        self.status
            .config_applied(&self.config, &self.js, !applied.is_empty());
        Ok(applied)
    }

    /// The pipeline side of [`apply`](Self::apply), once providers are in place.
    async fn apply_pipelines(&mut self, plan: &Plan, config: Config) -> Applied {
        let mut applied = Applied::default();
        let mut draining = Vec::new();
        for name in &plan.removed_pipelines {
            if let Some(runner) = self.runners.remove(name) {
                self.taps.remove(name);
                draining.push((runner, None));
                applied.removed.push(name.clone());
            }
        }
        for (name, change) in &plan.pipelines {
            let pipeline = &config.pipelines[name];
            match change {
                PipelineChange::Unchanged => {}
                PipelineChange::Added => {
                    self.spawn(pipeline);
                    applied.added.push(name.clone());
                }
                PipelineChange::Changed => {
                    let ctx = self.ctx(pipeline);
                    let runner = self.runners.remove(name).expect("a changed pipeline runs");
                    if runner.can_swap_to(&ctx) {
                        runner.swap(ctx);
                        self.runners.insert(name.clone(), runner);
                        applied.swapped.push(name.clone());
                    } else {
                        draining.push((runner, Some(ctx)));
                        applied.restarted.push(name.clone());
                    }
                }
            }
        }
        // Old versions drain side by side; each new one starts on the same
        // consumer once its old one has let go.
        let deadline = self.drain_deadline;
        let drains = draining.into_iter().map(|(runner, next)| async move {
            let name = runner.name.clone();
            log_drain(&name, runner.drain(deadline).await);
            next
        });
        for ctx in futures::future::join_all(drains)
            .await
            .into_iter()
            .flatten()
        {
            self.readiness.set_ready(&ctx.pipeline.name, false);
            let runner = PipelineRunner::spawn(ctx, self.readiness.clone(), self.fleet.as_ref());
            self.runners.insert(runner.name.clone(), runner);
        }
        self.config = config;
        applied
    }

    /// The sink of a target: a provider object's API, or a subject.
    fn sink(&self, target: &Target) -> TargetSink {
        match target {
            Target::Provider { provider, object } => {
                let running = self
                    .providers
                    .get(&provider.name)
                    .expect("providers are in place before their pipelines");
                TargetSink::Provider(Box::new(ProviderSink::new(
                    running.api.clone(),
                    self.idmap.clone(),
                    object,
                )))
            }
            Target::Subject(subject) => {
                TargetSink::Subject(Box::new(SubjectSink::new(self.js.clone(), subject.clone())))
            }
        }
    }

    fn ctx(&self, pipeline: &Arc<Pipeline>) -> Arc<Ctx> {
        let two_way = pipeline.two_way.as_ref().map(|tw| {
            // Lost edits are set back on the side the changes come from.
            let from = match tw.direction {
                Direction::Outbound => &tw.link.internal,
                Direction::Inbound => &tw.link.external,
            };
            twoway::engine::Runtime {
                store: self.links.clone(),
                idmap: self.idmap.clone(),
                source: self.sink(from),
                counts: twoway::engine::Counts::new(&tw.link.name, tw.direction),
            }
        });
        Arc::new(Ctx {
            pipeline: pipeline.clone(),
            sink: self.sink(&pipeline.target),
            js: self.js.clone(),
            metrics: PipelineMetrics::new(&pipeline.name),
            trouble: Arc::new(Trouble::new(&pipeline.name, self.readiness.clone())),
            dead_letter_log: Sampled::every(Duration::from_secs(1)),
            two_way,
            tap: self.taps.pipeline(&pipeline.name),
        })
    }

    fn spawn(&mut self, pipeline: &Arc<Pipeline>) {
        let ctx = self.ctx(pipeline);
        self.readiness.set_ready(&pipeline.name, false);
        let runner = PipelineRunner::spawn(ctx, self.readiness.clone(), self.fleet.as_ref());
        self.runners.insert(pipeline.name.clone(), runner);
    }

    /// A reload was refused (its errors stay on the status page until a
    /// config is applied).
    pub fn config_refused(&self, errors: Vec<String>) {
        self.status.config_refused(errors);
    }

    /// Stops every pipeline: in-flight records finish (or are handed back
    /// at the drain deadline), acks are flushed to the server.
    pub async fn drain(self) {
        let deadline = self.drain_deadline;
        // The others start taking this instance's partitions over as each
        // one drains here, not once everything has.
        if let Some(fleet) = &self.fleet {
            fleet.start_leaving();
        }
        let drains = self.runners.into_values().map(|r| async move {
            let name = r.name.clone();
            log_drain(&name, r.drain(deadline).await);
        });
        futures::future::join_all(drains).await;
        if let Some(fleet) = &self.fleet {
            fleet.leave(Duration::from_secs(5)).await;
        }
        self.inbound.stop().await;
        // Bounded: with NATS gone a flush would wait for a reconnect forever.
        match tokio::time::timeout(Duration::from_secs(5), self.nats.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "could not flush acks to NATS; those messages will be redelivered")
            }
            Err(_) => tracing::warn!(
                "NATS unreachable while flushing acks; those messages will be redelivered"
            ),
        }
    }
}

fn log_drain(pipeline: &str, finished: bool) {
    if finished {
        tracing::info!(pipeline, "pipeline drained");
    } else {
        tracing::warn!(
            pipeline,
            "drain deadline reached; unfinished messages handed back"
        );
    }
}

/// Opens the id map, the link states, the dead-letter and inbound streams,
/// retrying while NATS is unreachable. `None` when shutdown was asked for
/// meanwhile.
async fn wait_for_nats(
    js: &jetstream::Context,
    config: &Config,
    hooks: Hooks,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> Option<(
    IdMap,
    LinkStore,
    InboundRuntime,
    Arc<CredentialStore>,
    Option<Fleet>,
)> {
    let subjects: Vec<String> = config
        .pipelines
        .values()
        .map(|p| p.dead_letter_subject.clone())
        .collect();
    let mut backoff = Duration::from_millis(250);
    loop {
        let attempt = async {
            let settings = &config.globals.jetstream;
            let idmap = IdMap::open(js, settings.replicas)
                .await
                .map_err(|e| e.to_string())?;
            let links = LinkStore::open(js, settings.replicas)
                .await
                .map_err(|e| e.to_string())?;
            ensure_dead_letter_streams(js, &subjects, settings)
                .await
                .map_err(|e| e.to_string())?;
            let inbound = InboundRuntime::open(hooks.clone(), js, settings).await?;
            let credentials = CredentialStore::open_watched(js, settings.replicas).await?;
            let fleet = match &config.globals.fleet {
                Some(fleet) => Some(Fleet::join(js, fleet, settings.replicas).await?),
                None => None,
            };
            Ok::<_, String>((idmap, links, inbound, credentials, fleet))
        };
        match attempt.await {
            Ok(opened) => return Some(opened),
            Err(e) => {
                tracing::error!(error = %e, retry_in_ms = backoff.as_millis() as u64, "NATS JetStream unavailable");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.wait_for(|s| *s) => return None,
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

/// Resolves on the first SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
