//! Which pipelines are ready: each pipeline's source reports whether it is
//! bound, its records report a step they are stuck on (transient.rs), and
//! `/readyz` (server.rs) reads the whole.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};

/// `/readyz`'s body.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub ready: bool,
    pub nats: &'static str,
    /// What is not ready, in one line.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub pipelines: BTreeMap<String, PipelineReport>,
}

#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct PipelineReport {
    pub state: PipelineState,
    /// The step its records are stuck on.
    pub trouble: Option<&'static str>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PipelineState {
    /// Its consumer is bound and nothing is stuck.
    Running,
    /// Binding its consumer (or binding again after losing it).
    Starting,
    /// Its records wait on a failing step.
    Troubled,
}

/// One pipeline's standing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Standing {
    /// Its consumer is bound.
    bound: bool,
    /// A step its records wait on (a failing dead-letter publish...).
    trouble: Option<&'static str>,
}

/// `/readyz` is 200 when NATS is connected and every pipeline's consumer is
/// bound with none of its records stuck on a failing step.
#[derive(Clone, Default)]
pub struct Readiness {
    pipelines: Arc<Mutex<BTreeMap<String, Standing>>>,
    /// The sources' connection: while it is down, no pipeline is ready,
    /// whatever its last pull said.
    nats: Arc<OnceLock<async_nats::Client>>,
}

impl Readiness {
    fn update(&self, pipeline: &str, change: impl FnOnce(&mut Standing)) {
        let mut pipelines = self.pipelines.lock().unwrap_or_else(|e| e.into_inner());
        change(pipelines.entry(pipeline.to_string()).or_default());
    }

    /// Whether the pipeline's consumer is bound.
    pub fn set_ready(&self, pipeline: &str, ready: bool) {
        self.update(pipeline, |s| s.bound = ready);
    }

    /// The step the pipeline's records are stuck on, or none.
    pub fn set_trouble(&self, pipeline: &str, step: Option<&'static str>) {
        self.update(pipeline, |s| s.trouble = step);
    }

    pub fn remove(&self, pipeline: &str) {
        self.pipelines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(pipeline);
    }

    /// Makes readiness follow `client`'s connection too.
    pub fn watch_nats(&self, client: async_nats::Client) {
        let _ = self.nats.set(client);
    }

    fn nats_connected(&self) -> bool {
        self.nats.get().is_none_or(|client| {
            client.connection_state() == async_nats::connection::State::Connected
        })
    }

    /// Ready when NATS is connected, at least one pipeline runs and every
    /// one is bound and untroubled.
    pub fn is_ready(&self) -> bool {
        let pipelines = self.pipelines.lock().unwrap_or_else(|e| e.into_inner());
        self.nats_connected()
            && !pipelines.is_empty()
            && pipelines.values().all(|s| s.bound && s.trouble.is_none())
    }

    /// Everything `/readyz` says.
    pub fn report(&self) -> Report {
        let connected = self.nats_connected();
        let pipelines = self
            .pipelines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(name, s)| {
                let state = match (s.bound, s.trouble) {
                    (_, Some(_)) => PipelineState::Troubled,
                    (true, None) => PipelineState::Running,
                    (false, None) => PipelineState::Starting,
                };
                (
                    name.clone(),
                    PipelineReport {
                        state,
                        trouble: s.trouble,
                    },
                )
            })
            .collect();
        let ready = self.is_ready();
        Report {
            ready,
            nats: if connected {
                "connected"
            } else {
                "disconnected"
            },
            reason: (!ready).then(|| self.not_ready()),
            pipelines,
        }
    }

    /// Why not ready, for `/readyz`'s body: the pipelines that are not, and why.
    pub fn not_ready(&self) -> String {
        let connected = self.nats_connected();
        let pipelines = self.pipelines.lock().unwrap_or_else(|e| e.into_inner());
        let waiting: Vec<String> = pipelines
            .iter()
            .filter_map(|(name, s)| match (s.bound, s.trouble) {
                (_, Some(step)) => Some(format!("{name} ({step} failing)")),
                (false, None) => Some(name.clone()),
                (true, None) if !connected => Some(name.clone()),
                (true, None) => None,
            })
            .collect();
        let listed = if pipelines.is_empty() {
            "no pipeline running".to_string()
        } else {
            waiting.join(", ")
        };
        if connected {
            listed
        } else {
            format!("NATS disconnected: {listed}")
        }
    }
}
