//! A scripted HTTP server for the sink's tests: answers from a queue of
//! replies, then a fallback; logs every request it received and the most
//! requests it ever had in flight at once.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::Instant;

#[derive(Debug, Clone)]
pub(super) struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: String,
    delay: Duration,
}

impl Reply {
    pub fn status(status: u16) -> Self {
        Reply {
            status,
            headers: Vec::new(),
            body: String::new(),
            delay: Duration::ZERO,
        }
    }

    pub fn json(status: u16, body: serde_json::Value) -> Self {
        Reply {
            body: body.to_string(),
            ..Reply::status(status).header("content-type", "application/json")
        }
    }

    pub fn body(self, body: &str) -> Self {
        Reply {
            body: body.to_string(),
            ..self
        }
    }

    pub fn header(mut self, name: &'static str, value: impl ToString) -> Self {
        self.headers.push((name, value.to_string()));
        self
    }

    /// Answers only after `delay`.
    pub fn after(self, delay: Duration) -> Self {
        Reply { delay, ..self }
    }
}

#[derive(Debug, Clone)]
pub(super) struct Seen {
    pub method: Method,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub at: Instant,
    pub wall: SystemTime,
}

struct Script {
    replies: Mutex<VecDeque<Reply>>,
    fallback: Mutex<Reply>,
    seen: Mutex<Vec<Seen>>,
    current: AtomicUsize,
    peak: AtomicUsize,
}

pub(super) struct TestServer {
    url: String,
    script: Arc<Script>,
    task: JoinHandle<()>,
}

impl TestServer {
    /// Answers with `replies` in order, then `fallback` forever.
    pub async fn start(replies: impl IntoIterator<Item = Reply>, fallback: Reply) -> Self {
        let script = Arc::new(Script {
            replies: Mutex::new(replies.into_iter().collect()),
            fallback: Mutex::new(fallback),
            seen: Mutex::default(),
            current: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let app = Router::new().fallback(answer).with_state(script.clone());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        TestServer { url, script, task }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.script.seen.lock().unwrap().clone()
    }

    pub fn set_fallback(&self, reply: Reply) {
        *self.script.fallback.lock().unwrap() = reply;
    }

    /// The most requests that were being answered at the same time.
    pub fn peak_concurrency(&self) -> usize {
        self.script.peak.load(Ordering::SeqCst)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Counts a request as in progress until its answer is sent or the client
/// gives up (the handler is dropped).
struct Concurrent<'a>(&'a Script);

impl Drop for Concurrent<'_> {
    fn drop(&mut self) {
        self.0.current.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn answer(
    State(script): State<Arc<Script>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let now = script.current.fetch_add(1, Ordering::SeqCst) + 1;
    let _concurrent = Concurrent(&script);
    script.peak.fetch_max(now, Ordering::SeqCst);
    script.seen.lock().unwrap().push(Seen {
        method,
        path: uri.path().to_string(),
        headers,
        body,
        at: Instant::now(),
        wall: SystemTime::now(),
    });
    let next = script.replies.lock().unwrap().pop_front();
    let reply = next.unwrap_or_else(|| script.fallback.lock().unwrap().clone());
    tokio::time::sleep(reply.delay).await;
    let mut response = reply.body.into_response();
    *response.status_mut() = StatusCode::from_u16(reply.status).unwrap();
    for (name, value) in reply.headers {
        response.headers_mut().insert(name, value.parse().unwrap());
    }
    response
}
