//! A new connection takes a fresh rate-limit cell before it carries a request.
//!
//! A request takes its cell, then asks the HTTP pool for a connection. Over a
//! kept-alive connection it leaves at once, within its cell's lateness
//! budget. When the pool has to open a connection first (the first requests,
//! or after the provider closed an idle one), the TCP and TLS handshakes
//! would make the request leave late, possibly right before the next cells,
//! which a provider enforcing the exact limit would refuse.
//!
//! So the connector itself waits for a fresh cell once the connection is
//! established, and only then hands it to the pool, which sends the waiting
//! request over it at once. The request's first cell is left unused: an
//! unused cell only makes the fleet send less than the limit, never more.
//! Kept-alive requests pay nothing for this; it runs once per connection.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tower_layer::Layer;
use tower_service::Service;

use crate::limiter::Limiter;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Wraps reqwest's connector (`ClientBuilder::connector_layer`).
#[derive(Clone)]
pub struct FreshCellLayer {
    limiter: Limiter,
}

impl FreshCellLayer {
    pub fn new(limiter: Limiter) -> Self {
        FreshCellLayer { limiter }
    }
}

impl<S> Layer<S> for FreshCellLayer {
    type Service = FreshCell<S>;

    fn layer(&self, inner: S) -> FreshCell<S> {
        FreshCell {
            inner,
            limiter: self.limiter.clone(),
        }
    }
}

#[derive(Clone)]
pub struct FreshCell<S> {
    inner: S,
    limiter: Limiter,
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
        let limiter = self.limiter.clone();
        Box::pin(async move {
            let connection = connecting.await.map_err(Into::into)?;
            limiter.acquire().await?;
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
    async fn a_request_over_a_new_connection_leaves_on_a_fresh_cell_one_over_a_kept_one_on_its_own()
    {
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
        let server = server().await;
        let client = reqwest::Client::builder()
            .connector_layer(FreshCellLayer::new(limiter.clone()))
            .build()
            .unwrap();

        let started = Instant::now();
        // The request's own cell comes at once; its new connection waits for
        // the next one.
        limiter.acquire().await.unwrap();
        client.get(&server.url).send().await.unwrap();
        // Over the kept connection: its own cell only.
        limiter.acquire().await.unwrap();
        client.get(&server.url).send().await.unwrap();

        let arrivals: Vec<Duration> = server
            .arrivals
            .lock()
            .unwrap()
            .iter()
            .map(|t| *t - started)
            .collect();
        assert_eq!(server.connections.load(Ordering::SeqCst), 1);
        assert_eq!(arrivals.len(), 2);
        assert!(arrivals[0] >= Duration::from_millis(150), "{arrivals:?}");
        assert!(
            arrivals[1] - arrivals[0] >= Duration::from_millis(150),
            "{arrivals:?}"
        );
        assert!(arrivals[1] < Duration::from_millis(550), "{arrivals:?}");
    }

    #[tokio::test]
    async fn without_a_limit_connections_open_as_usual() {
        let server = server().await;
        let client = reqwest::Client::builder()
            .connector_layer(FreshCellLayer::new(Limiter::Unlimited))
            .build()
            .unwrap();
        client.get(&server.url).send().await.unwrap();
        assert_eq!(server.connections.load(Ordering::SeqCst), 1);
    }
}
