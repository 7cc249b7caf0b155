//! The HTTP endpoint: `/metrics` (Prometheus), `/healthz`, `/readyz`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Which pipelines have a working source: `/readyz` is 200 when NATS is
/// connected and every pipeline's consumer is bound.
#[derive(Clone, Default)]
pub struct Health {
    ready: Arc<Mutex<BTreeMap<String, bool>>>,
    /// The sources' connection: while it is down, no pipeline is ready,
    /// whatever its last pull said.
    nats: Arc<OnceLock<async_nats::Client>>,
}

impl Health {
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
    fn not_ready(&self) -> String {
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

/// How often the recorder folds histogram samples into their buckets.
const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// The process-wide Prometheus recorder (a recorder can be installed once).
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets(&[
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0,
            ])
            .expect("static buckets")
            .build_recorder();
        let handle = recorder.handle();
        // In tests several engines may share a process: the first recorder wins.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

pub fn router(health: Health) -> Router {
    let metrics = prometheus();
    Router::new()
        .route("/metrics", get(move || async move { metrics.render() }))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(health)
}

async fn readyz(State(health): State<Health>) -> (StatusCode, String) {
    if health.is_ready() {
        (StatusCode::OK, "ready\n".into())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", health.not_ready()),
        )
    }
}

/// Serves until `shutdown` resolves. Installs the metrics recorder first:
/// handles registered before it exists would count into nothing, so the
/// engine serves HTTP before it builds anything that records metrics.
pub async fn serve(
    listen: SocketAddr,
    health: Health,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    // Histograms keep their samples until upkeep folds them into buckets;
    // without it memory grows with every record when nothing scrapes.
    tokio::spawn(async {
        let mut every = tokio::time::interval(UPKEEP_EVERY);
        loop {
            every.tick().await;
            prometheus().run_upkeep();
        }
    });
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router(health))
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(error = %e, "http server failed");
        }
    });
    Ok(addr)
}
