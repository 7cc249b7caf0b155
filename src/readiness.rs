//! Which pipelines are ready: each pipeline's source reports whether it is
//! bound, and `/readyz` (server.rs) reads the whole.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};

/// Which pipelines have a working source: `/readyz` is 200 when NATS is
/// connected and every pipeline's consumer is bound.
#[derive(Clone, Default)]
pub struct Readiness {
    ready: Arc<Mutex<BTreeMap<String, bool>>>,
    /// The sources' connection: while it is down, no pipeline is ready,
    /// whatever its last pull said.
    nats: Arc<OnceLock<async_nats::Client>>,
}

impl Readiness {
    pub fn set_ready(&self, pipeline: &str, ready: bool) {
        self.ready
            .lock()
            .expect("health")
            .insert(pipeline.to_string(), ready);
    }

    pub fn remove(&self, pipeline: &str) {
        self.ready.lock().expect("health").remove(pipeline);
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

    /// Ready when NATS is connected, at least one pipeline runs and none is
    /// cut off.
    pub fn is_ready(&self) -> bool {
        let ready = self.ready.lock().expect("health");
        self.nats_connected() && !ready.is_empty() && ready.values().all(|r| *r)
    }

    /// Why not ready, for `/readyz`'s body: the pipelines that are not.
    pub fn not_ready(&self) -> String {
        let connected = self.nats_connected();
        let ready = self.ready.lock().expect("health");
        let waiting: Vec<&str> = ready
            .iter()
            .filter(|(_, r)| !connected || !**r)
            .map(|(p, _)| p.as_str())
            .collect();
        let pipelines = if ready.is_empty() {
            "no pipeline running".to_string()
        } else {
            waiting.join(", ")
        };
        if connected {
            pipelines
        } else {
            format!("NATS disconnected: {pipelines}")
        }
    }
}
