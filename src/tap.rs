//! Live decisions of a running pipeline, for `syncflow tap`: each record's
//! key, action, mapped body or error, provider status and latency, streamed
//! as JSON lines from `GET /api/tap/<pipeline>?key=K&action=A`.
//!
//! Nobody tapping costs one atomic load per record: decisions are built only
//! while someone listens. A listener that reads slower than records flow
//! never slows the pipeline: its queue is bounded, what does not fit is
//! dropped and counted, and the count is sent on the stream.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::mpsc;

/// Decisions a listener may fall behind by before the next ones are dropped.
const QUEUE: usize = 1024;
/// A line every few seconds even when nothing happens, so a listener that
/// went away is noticed (and unsubscribed) without waiting for a record.
const KEEPALIVE: Duration = Duration::from_secs(5);

/// One record's fate.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Decision {
    pub time_ms: i64,
    pub seq: u64,
    pub key: Option<String>,
    pub action: Option<String>,
    /// sent, skipped, stale, dead_letter.
    pub outcome: String,
    /// The provider's HTTP status, when a request was made.
    pub status: Option<u16>,
    /// The dead letter's kind and message.
    pub error_kind: Option<String>,
    pub error: Option<String>,
    /// The mapped body that was (or would have been) sent.
    pub body: Option<Value>,
    /// From the record's arrival to its decision.
    pub latency_ms: f64,
}

/// What a listener wants to see.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct TapFilter {
    pub key: Option<String>,
    pub action: Option<String>,
}

impl TapFilter {
    fn wants(&self, key: Option<&str>, action: Option<&str>) -> bool {
        self.key.as_deref().is_none_or(|k| Some(k) == key)
            && self.action.as_deref().is_none_or(|a| Some(a) == action)
    }
}

struct Listener {
    id: u64,
    filter: TapFilter,
    tx: mpsc::Sender<Arc<Decision>>,
    dropped: Arc<AtomicU64>,
}

/// One pipeline's listeners (shared by every version of the pipeline, so a
/// hot reload does not cut a tap).
pub struct PipelineTap {
    listening: AtomicUsize,
    listeners: RwLock<Vec<Listener>>,
    next_id: AtomicU64,
    /// `syncflow_tap_dropped_total`: decisions slow listeners missed.
    dropped: metrics::Counter,
}

impl PipelineTap {
    pub fn new(pipeline: &str) -> Self {
        PipelineTap {
            listening: AtomicUsize::new(0),
            listeners: RwLock::new(Vec::new()),
            next_id: AtomicU64::new(0),
            dropped: metrics::counter!("syncflow_tap_dropped_total", "pipeline" => pipeline.to_string()),
        }
    }

    /// Whether anyone listens: the only cost on the per-record path when
    /// nobody does.
    #[inline]
    pub fn is_active(&self) -> bool {
        self.listening.load(Ordering::Relaxed) > 0
    }

    /// Offers a decision to every listener that wants it; `make` runs once,
    /// and only if one does. Never waits.
    pub fn offer(&self, key: Option<&str>, action: Option<&str>, make: impl FnOnce() -> Decision) {
        let listeners = self.listeners.read().expect("tap listeners");
        let mut wanting = listeners.iter().filter(|l| l.filter.wants(key, action));
        let Some(first) = wanting.next() else {
            return;
        };
        let decision = Arc::new(make());
        for l in std::iter::once(first).chain(wanting) {
            if l.tx.try_send(decision.clone()).is_err() {
                l.dropped.fetch_add(1, Ordering::Relaxed);
                self.dropped.increment(1);
            }
        }
    }

    fn change(&self, change: impl FnOnce(&mut Vec<Listener>)) {
        let mut listeners = self.listeners.write().expect("tap listeners");
        change(&mut listeners);
        self.listening.store(listeners.len(), Ordering::Relaxed);
    }

    fn subscribe(self: &Arc<Self>, filter: TapFilter) -> Subscription {
        let (tx, rx) = mpsc::channel(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.change(|listeners| {
            listeners.push(Listener {
                id,
                filter,
                tx,
                dropped: dropped.clone(),
            })
        });
        Subscription {
            tap: self.clone(),
            id,
            rx,
            dropped,
        }
    }
}

/// A listener's end; unsubscribes when dropped (the HTTP client left).
struct Subscription {
    tap: Arc<PipelineTap>,
    id: u64,
    rx: mpsc::Receiver<Arc<Decision>>,
    dropped: Arc<AtomicU64>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.tap
            .change(|listeners| listeners.retain(|l| l.id != self.id));
    }
}

/// Every pipeline's tap, by name.
#[derive(Clone, Default)]
pub struct Taps(Arc<Mutex<HashMap<String, Arc<PipelineTap>>>>);

impl Taps {
    /// The tap of a pipeline that runs (created with it).
    pub fn pipeline(&self, name: &str) -> Arc<PipelineTap> {
        self.0
            .lock()
            .expect("taps")
            .entry(name.to_string())
            .or_insert_with(|| Arc::new(PipelineTap::new(name)))
            .clone()
    }

    /// Forgets a pipeline that no longer runs; its listeners' streams end.
    pub fn remove(&self, name: &str) {
        if let Some(tap) = self.0.lock().expect("taps").remove(name) {
            tap.change(Vec::clear);
        }
    }

    fn get(&self, name: &str) -> Option<Arc<PipelineTap>> {
        self.0.lock().expect("taps").get(name).cloned()
    }

    pub fn router(&self) -> Router {
        Router::new()
            .route("/api/tap/{pipeline}", get(stream))
            .with_state(self.clone())
    }
}

/// One JSON line per decision; `{"dropped": N}` when N were dropped since
/// the last line; an empty line as keepalive.
async fn stream(
    State(taps): State<Taps>,
    Path(pipeline): Path<String>,
    Query(filter): Query<TapFilter>,
) -> Response {
    let Some(tap) = taps.get(&pipeline) else {
        let body = serde_json::json!({"error": format!("no pipeline \"{pipeline}\" runs here")});
        return (StatusCode::NOT_FOUND, axum::Json(body)).into_response();
    };
    let sub = tap.subscribe(filter);
    tracing::info!(pipeline = %pipeline, "tap opened");
    // Ends when the pipeline is removed (its listeners' senders are dropped).
    let lines = futures::stream::unfold(sub, |mut sub| async move {
        let line = tokio::select! {
            d = sub.rx.recv() => {
                let d = d?;
                let mut line = String::new();
                let dropped = sub.dropped.swap(0, Ordering::Relaxed);
                if dropped > 0 {
                    line.push_str(&serde_json::json!({"dropped": dropped}).to_string());
                    line.push('\n');
                }
                line.push_str(&serde_json::to_string(&*d).expect("JSON serializes"));
                line.push('\n');
                line
            }
            () = tokio::time::sleep(KEEPALIVE) => match sub.dropped.swap(0, Ordering::Relaxed) {
                0 => "\n".to_string(),
                n => format!("{}\n", serde_json::json!({"dropped": n})),
            },
        };
        Some((Ok::<_, Infallible>(Bytes::from(line)), sub))
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(lines))
        .expect("a valid response")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision(seq: u64) -> Decision {
        Decision {
            time_ms: 0,
            seq,
            key: Some("k".into()),
            action: Some("create".into()),
            outcome: "sent".into(),
            status: Some(201),
            error_kind: None,
            error: None,
            body: None,
            latency_ms: 1.0,
        }
    }

    #[test]
    fn nobody_listening_builds_nothing() {
        let tap = Arc::new(PipelineTap::new("p"));
        assert!(!tap.is_active());
        tap.offer(Some("k"), Some("create"), || {
            unreachable!("built for nobody")
        });
        let sub = tap.subscribe(TapFilter::default());
        assert!(tap.is_active());
        drop(sub);
        assert!(!tap.is_active());
    }

    #[test]
    fn a_slow_listener_loses_decisions_never_blocks_and_is_told_how_many() {
        let tap = Arc::new(PipelineTap::new("p"));
        let mut sub = tap.subscribe(TapFilter::default());
        for seq in 0..(QUEUE as u64 + 10) {
            tap.offer(Some("k"), Some("create"), || decision(seq));
        }
        assert_eq!(sub.dropped.load(Ordering::Relaxed), 10);
        assert_eq!(sub.rx.try_recv().unwrap().seq, 0);
    }

    #[test]
    fn filters_select_by_key_and_action() {
        let tap = Arc::new(PipelineTap::new("p"));
        let mut only_k = tap.subscribe(TapFilter {
            key: Some("k".into()),
            action: None,
        });
        let mut only_delete = tap.subscribe(TapFilter {
            key: None,
            action: Some("delete".into()),
        });
        tap.offer(Some("k"), Some("create"), || decision(1));
        tap.offer(Some("j"), Some("delete"), || decision(2));
        assert_eq!(only_k.rx.try_recv().unwrap().seq, 1);
        assert!(only_k.rx.try_recv().is_err());
        assert_eq!(only_delete.rx.try_recv().unwrap().seq, 2);
        assert!(only_delete.rx.try_recv().is_err());
    }
}
