//! A request over a new connection must still leave within its cell.
//!
//! A request takes its cell, then asks its slot's client for the connection.
//! Over a kept-alive connection it leaves at once, within its cell's
//! lateness budget. When the client has to open a connection first (a slot's
//! first request, or after the provider closed an idle connection), the TCP
//! and TLS handshakes can make the request leave late, possibly right before
//! the next cells, which a provider enforcing the exact limit would refuse.
//!
//! So the connector checks, once the connection is established, whether the
//! request's cell (its deadline, which the sink notes in the slot's
//! [`CellDeadline`] before sending) is still fresh. If it is (a fast
//! handshake, as on a local network), the request goes out on it. If not,
//! the connector waits for a fresh cell, at the front of the limiter's queue
//! (this request was served already), and only then hands the connection to
//! the client, which sends the request over it at once; the stale cell is
//! left unused, which only makes the fleet send less than the limit, never
//! more. Kept-alive requests pay nothing for this.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;

use crate::limiter::Limiter;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The deadline of the cell the slot's current request holds: the latest
/// instant it may leave. One per slot client, so one request at a time.
#[derive(Debug, Default, Clone)]
pub struct CellDeadline(Arc<Mutex<Option<Instant>>>);

impl CellDeadline {
    pub fn set(&self, deadline: Option<Instant>) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = deadline;
    }

    /// Whether a request leaving now would still be within its cell; true
    /// when no limit applies.
    fn is_fresh(&self) -> bool {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_none_or(|deadline| Instant::now() <= deadline)
    }
}

/// Wraps reqwest's connector (`ClientBuilder::connector_layer`).
#[derive(Clone)]
pub struct FreshCellLayer {
    limiter: Limiter,
    deadline: CellDeadline,
}

impl FreshCellLayer {
    pub fn new(limiter: Limiter, deadline: CellDeadline) -> Self {
        FreshCellLayer { limiter, deadline }
    }
}

impl<S> Layer<S> for FreshCellLayer {
    type Service = FreshCell<S>;

    fn layer(&self, inner: S) -> FreshCell<S> {
        FreshCell {
            inner,
            limiter: self.limiter.clone(),
            deadline: self.deadline.clone(),
        }
    }
}

#[derive(Clone)]
pub struct FreshCell<S> {
    inner: S,
    limiter: Limiter,
    deadline: CellDeadline,
}

impl<S, Request> Service<Request> for FreshCell<S>
where
    S: Service<Request>,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let connecting = self.inner.call(request);
        let (limiter, deadline) = (self.limiter.clone(), self.deadline.clone());
        Box::pin(async move {
            let connection = connecting.await.map_err(Into::into)?;
            if !deadline.is_fresh() {
                let (_, fresh) = limiter.acquire_cell(true).await?;
                deadline.set(fresh);
            }
            Ok(connection)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::time::Instant;

    use super::*;
    use crate::limiter::{RateLimitSpec, SharedLimiter, connect};
    use crate::testkit::RedisServer;

    /// A bare HTTP/1.1 server that notes when each request arrives and
    /// counts the connections it accepts.
    struct Server {
        url: String,
        connections: Arc<AtomicUsize>,
        arrivals: Arc<std::sync::Mutex<Vec<Instant>>>,
    }

    async fn server() -> Server {
        // reqwest is built without a TLS provider of its own.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/x", listener.local_addr().unwrap());
        let connections = Arc::new(AtomicUsize::new(0));
        let arrivals = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (c, a) = (connections.clone(), arrivals.clone());
        tokio::spawn(async move {
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                c.fetch_add(1, Ordering::SeqCst);
                let a = a.clone();
                tokio::spawn(async move {
                    let mut read = Vec::new();
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = socket.read(&mut buf).await {
                        if n == 0 {
                            return;
                        }
                        read.extend_from_slice(&buf[..n]);
                        while let Some(end) = read.windows(4).position(|w| w == b"\r\n\r\n") {
                            read.drain(..end + 4);
                            a.lock().unwrap().push(Instant::now());
                            let reply = "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
                            if socket.write_all(reply.as_bytes()).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        Server {
            url,
            connections,
            arrivals,
        }
    }

    #[tokio::test]
    async fn a_connection_made_within_the_cell_uses_it_a_late_one_takes_a_fresh_cell() {
        let redis = RedisServer::start().unwrap();
        // One cell every 200 ms, no burst.
        let spec = RateLimitSpec {
            requests: 5,
            per: Duration::from_secs(1),
            burst: 1,
        };
        let limiter = Limiter::Shared(
            SharedLimiter::new(connect(&redis.url()).unwrap(), "fresh", spec).unwrap(),
        );
        let (fast, slow) = (server().await, server().await);
        let client = |deadline: &CellDeadline| {
            reqwest::Client::builder()
                .connector_layer(FreshCellLayer::new(limiter.clone(), deadline.clone()))
                .pool_max_idle_per_host(1)
                .build()
                .unwrap()
        };
        let (fast_deadline, slow_deadline) = (CellDeadline::default(), CellDeadline::default());
        let (fast_client, slow_client) = (client(&fast_deadline), client(&slow_deadline));

        let started = Instant::now();
        // A loopback connection opens well within the cell: the request
        // leaves on it, at once.
        let (_, deadline) = limiter.acquire_cell(false).await.unwrap();
        fast_deadline.set(deadline);
        fast_client.get(&fast.url).send().await.unwrap();
        let first = fast.arrivals.lock().unwrap()[0] - started;
        assert!(first < Duration::from_millis(100), "{first:?}");

        // A cell that went stale while connecting (a slow handshake): the
        // connection waits for a fresh cell, the next one (200 ms on).
        let (_, deadline) = limiter.acquire_cell(false).await.unwrap();
        slow_deadline.set(deadline.map(|d| d - Duration::from_secs(1)));
        slow_client.get(&slow.url).send().await.unwrap();
        let second = slow.arrivals.lock().unwrap()[0] - started;
        assert!(second >= Duration::from_millis(350), "{second:?}");
        assert!(
            slow_deadline
                .0
                .lock()
                .unwrap()
                .is_some_and(|d| d > started + Duration::from_millis(350)),
            "the fresh cell's deadline is noted"
        );

        // Over the kept connection the connector is not involved, whatever
        // the deadline: the request leaves at once.
        slow_deadline.set(Some(Instant::now() - Duration::from_secs(1)));
        let before = Instant::now();
        slow_client.get(&slow.url).send().await.unwrap();
        assert!(before.elapsed() < Duration::from_millis(100));
        assert_eq!(fast.connections.load(Ordering::SeqCst), 1);
        assert_eq!(slow.connections.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn without_a_limit_connections_open_as_usual() {
        let server = server().await;
        let client = reqwest::Client::builder()
            .connector_layer(FreshCellLayer::new(
                Limiter::Unlimited,
                CellDeadline::default(),
            ))
            .build()
            .unwrap();
        client.get(&server.url).send().await.unwrap();
        assert_eq!(server.connections.load(Ordering::SeqCst), 1);
    }
}
