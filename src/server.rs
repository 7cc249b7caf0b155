//! The HTTP endpoint: `/metrics` (Prometheus), `/healthz`, `/readyz`.

use std::net::SocketAddr;
use std::sync::OnceLock;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::readiness::Readiness;

/// How often the recorder folds histogram samples into their buckets. The
/// samples wait in memory until then: at 40,000 records/s and three
/// histograms a record, every second is about a megabyte.
const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// The process-wide Prometheus recorder (a recorder can be installed once).
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        // Up to 30 minutes: a record that waits out retries, a Retry-After
        // or an open breaker for minutes lands in a bucket of its own.
        let recorder = PrometheusBuilder::new()
            .set_buckets(&[
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
            ])
            .expect("static buckets")
            .build_recorder();
        let handle = recorder.handle();
        // In tests several engines may share a process: the first recorder wins.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

pub fn router(health: Readiness) -> Router {
    let metrics = prometheus();
    Router::new()
        .route("/metrics", get(move || async move { metrics.render() }))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(health)
}

/// 200 when ready, else 503; the body names each pipeline's state either
/// way, and `reason` says in one line what is not ready.
async fn readyz(State(health): State<Readiness>) -> (StatusCode, axum::Json<serde_json::Value>) {
    let report = health.report();
    let status = match report.ready {
        true => StatusCode::OK,
        false => StatusCode::SERVICE_UNAVAILABLE,
    };
    (
        status,
        axum::Json(serde_json::to_value(report).expect("JSON serializes")),
    )
}

/// Serves until `shutdown` resolves. Installs the metrics recorder first:
/// handles registered before it exists would count into nothing, so the
/// engine serves HTTP before it builds anything that records metrics.
pub async fn serve(
    listen: SocketAddr,
    health: Readiness,
    extra: Router,
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
        if let Err(e) = axum::serve(listener, router(health).merge(extra))
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(error = %e, "http server failed");
        }
    });
    Ok(addr)
}
