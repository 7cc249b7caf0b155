//! The status page at `/`: one self-contained HTML page (`page.html`, no
//! build step, nothing fetched from elsewhere) that reads `/api/status`
//! every two seconds, and replays a dead letter through
//! `POST /api/dead-letters/replay`.
//!
//! Counters come from the same Prometheus recorder `/metrics` renders
//! (`scrape.rs`), so the page and the dashboards never disagree; what the
//! recorder does not hold (limits, the refused reload's errors, the last
//! dead letters) comes from the [`StatusBoard`] the engine and the reloader
//! keep up to date.

mod scrape;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::clock::now_ms;
use crate::compile::Config;
use crate::dlq::{DeadLetterStore, DlqError, Stored};
use crate::readiness::Readiness;
use scrape::Samples;

const PAGE: &str = include_str!("page.html");
/// Dead letters the page lists.
const LAST_DEAD_LETTERS: usize = 20;
/// How long the page waits for the dead letters before showing the rest.
const DEAD_LETTERS_TIMEOUT: Duration = Duration::from_secs(2);

/// What the page shows that the metrics recorder does not hold.
#[derive(Clone)]
pub struct StatusBoard {
    inner: Arc<Mutex<Board>>,
    readiness: Readiness,
}

struct Board {
    started: Instant,
    generation: u64,
    /// Name and direction (outbound: System A to the target).
    pipelines: Vec<(String, &'static str)>,
    /// Name, requests per second, burst.
    providers: Vec<(String, Option<f64>, Option<u32>)>,
    refused: Option<Value>,
    dead_letters: Option<DeadLetterStore>,
}

impl StatusBoard {
    pub fn new(readiness: Readiness) -> Self {
        StatusBoard {
            inner: Arc::new(Mutex::new(Board {
                started: Instant::now(),
                generation: 0,
                pipelines: Vec::new(),
                providers: Vec::new(),
                refused: None,
                dead_letters: None,
            })),
            readiness,
        }
    }

    fn board(&self) -> std::sync::MutexGuard<'_, Board> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The config now running; `changed`: a new generation (a valid edit
    /// that changed nothing keeps the generation, and clears a refusal).
    pub fn config_applied(
        &self,
        config: &Config,
        js: &async_nats::jetstream::Context,
        changed: bool,
    ) {
        let mut b = self.board();
        if changed {
            b.generation += 1;
        }
        b.pipelines = config
            .pipelines
            .values()
            .map(|p| {
                (
                    p.name.clone(),
                    if p.is_inbound() {
                        "inbound"
                    } else {
                        "outbound"
                    },
                )
            })
            .collect();
        b.providers = config
            .providers
            .values()
            .map(|p| {
                let limit = p
                    .rate_limit
                    .map(|r| f64::from(r.requests) / r.per.as_secs_f64());
                (p.name.clone(), limit, p.rate_limit.map(|r| r.burst))
            })
            .collect();
        b.refused = None;
        let subjects: BTreeMap<String, String> = config
            .pipelines
            .values()
            .map(|p| (p.name.clone(), p.dead_letter_subject.clone()))
            .collect();
        b.dead_letters = Some(DeadLetterStore::new(js.clone(), subjects));
    }

    /// A reload was refused: its errors, each `file:line:col: message`.
    pub fn config_refused(&self, errors: Vec<String>) {
        self.board().refused = Some(json!({"at_ms": now_ms(), "errors": errors}));
    }

    pub fn router(&self) -> Router {
        Router::new()
            .route("/", get(page))
            .route("/api/status", get(status))
            .route("/api/dead-letters/replay", post(replay))
            .with_state(self.clone())
    }

    fn dead_letter_store(&self) -> Option<DeadLetterStore> {
        self.board().dead_letters.clone()
    }
}

async fn page() -> Response {
    ([(header::CACHE_CONTROL, "no-cache")], Html(PAGE)).into_response()
}

async fn status(State(board): State<StatusBoard>) -> axum::Json<Value> {
    let samples = Samples::parse(&crate::server::prometheus().render());
    let (dead_letters, dead_letters_error) = match board.dead_letter_store() {
        None => (Vec::new(), None),
        Some(store) => {
            match tokio::time::timeout(DEAD_LETTERS_TIMEOUT, store.latest(LAST_DEAD_LETTERS)).await
            {
                Ok(Ok(letters)) => (letters.iter().map(summary).collect(), None),
                Ok(Err(e)) => (Vec::new(), Some(e.to_string())),
                Err(_) => (Vec::new(), Some("NATS did not answer in time".to_string())),
            }
        }
    };
    let report = board.readiness.report();
    let b = board.board();
    let pipelines: Vec<Value> = b
        .pipelines
        .iter()
        .map(|(name, direction)| {
            let p = |metric: &str| samples.sum(metric, &[("pipeline", name)]);
            let state = report.pipelines.get(name);
            json!({
                "name": name,
                "direction": direction,
                "state": state.map_or(json!("starting"), |s| json!(s.state)),
                "trouble": state.and_then(|s| s.trouble).map(|t| format!("{t} failing")),
                "received": p("syncflow_pipeline_received_total"),
                "sent": p("syncflow_pipeline_sent_total"),
                "skipped": p("syncflow_pipeline_skipped_total"),
                "stale": p("syncflow_pipeline_stale_total"),
                "dead_letters": samples.by_label("syncflow_pipeline_dead_letters_total", &[("pipeline", name)], "kind"),
                "pending": samples.get("syncflow_pipeline_consumer_pending", &[("pipeline", name)]),
                "ack_pending": samples.get("syncflow_pipeline_ack_pending", &[("pipeline", name)]),
                "oldest_unacked_s": samples.get("syncflow_pipeline_oldest_unacked_seconds", &[("pipeline", name)]),
            })
        })
        .collect();
    let providers: Vec<Value> = b
        .providers
        .iter()
        .map(|(name, limit, burst)| {
            let by = [("provider", name.as_str())];
            let breaker = match samples.get("syncflow_provider_breaker_open", &by) {
                Some(v) if v >= 1.0 => "open",
                Some(v) if v > 0.0 => "half_open",
                _ => "closed",
            };
            let local = samples.get("syncflow_limiter_local", &by).unwrap_or(0.0) >= 1.0;
            json!({
                "name": name,
                "limit_per_s": limit,
                "burst": burst,
                "requests": samples.sum("syncflow_provider_requests_total", &by),
                "responses_429": samples.sum("syncflow_provider_requests_total", &[("provider", name), ("status", "429")]),
                "in_flight": samples.get("syncflow_provider_in_flight", &by).unwrap_or(0.0),
                "breaker": breaker,
                // Pipelines that name accounts: each account has its own
                // breaker (sink/http/account.rs), and may wait for its
                // credentials or quota.
                "account_breakers_open": samples.get("syncflow_provider_account_breakers_open", &by).unwrap_or(0.0),
                "credential_waits": samples.sum("syncflow_provider_credential_waits_total", &by),
                "quota_waits": samples.sum("syncflow_provider_quota_waits_total", &by),
                "limiter": if local { "local" } else { "redis" },
            })
        })
        .collect();
    axum::Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_s": b.started.elapsed().as_secs_f64(),
        "nats": {"connected": report.nats == "connected"},
        "config": {
            "generation": b.generation,
            "pipelines": b.pipelines.len(),
            "providers": b.providers.len(),
            "refused": b.refused,
        },
        "pipelines": pipelines,
        "providers": providers,
        "dead_letters": dead_letters,
        "dead_letters_error": dead_letters_error,
    }))
}

/// One dead letter as the page lists it.
fn summary(s: &Stored) -> Value {
    json!({
        "stream": s.stream,
        "seq": s.seq,
        "time_ms": s.time_ms,
        "pipeline": s.letter.pipeline,
        "key": s.letter.key,
        "kind": s.letter.error.kind,
        "message": s.letter.error.message,
        "subject": s.letter.original.subject,
    })
}

#[derive(Deserialize)]
struct ReplayRequest {
    stream: String,
    seq: u64,
}

/// The page's replay button: the same replay as `syncflow dlq replay`.
async fn replay(
    State(board): State<StatusBoard>,
    axum::Json(req): axum::Json<ReplayRequest>,
) -> (StatusCode, axum::Json<Value>) {
    let fail = |status: StatusCode, e: &dyn std::fmt::Display| {
        (status, axum::Json(json!({"error": e.to_string()})))
    };
    let Some(store) = board.dead_letter_store() else {
        return fail(
            StatusCode::SERVICE_UNAVAILABLE,
            &"not connected to NATS yet",
        );
    };
    let stored = match store.get(&req.stream, req.seq).await {
        Ok(stored) => stored,
        Err(e @ DlqError::NotFound { .. }) => return fail(StatusCode::NOT_FOUND, &e),
        Err(e @ DlqError::Malformed { .. }) => return fail(StatusCode::UNPROCESSABLE_ENTITY, &e),
        Err(e) => return fail(StatusCode::BAD_GATEWAY, &e),
    };
    match store.replay(&stored).await {
        Ok(r) => {
            tracing::info!(stream = %req.stream, seq = req.seq, pipeline = %stored.letter.pipeline, subject = %r.subject, "dead letter replayed from the status page");
            let message = format!(
                "published to {} as sequence {}; the dead letter was removed",
                r.subject, r.seq
            );
            (
                StatusCode::OK,
                axum::Json(
                    json!({"replayed": true, "subject": r.subject, "seq": r.seq, "message": message}),
                ),
            )
        }
        Err(e @ DlqError::Unreplayable { .. }) => fail(StatusCode::UNPROCESSABLE_ENTITY, &e),
        Err(e) => fail(StatusCode::BAD_GATEWAY, &e),
    }
}
