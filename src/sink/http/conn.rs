//! The provider's origin and one HTTP/1.1 connection per slot, over hyper.
//!
//! The sink must know which connection a request goes over, and that it is
//! open, before it takes a rate-limit cell (docs/sink-connections.md), so
//! there is no pool. A connection has no task of its own: whoever uses it
//! drives its I/O while waiting for its response ([`Conn`]), which saves the
//! cross-task wake-ups a connection task costs per request.
//!
//! Redirects are never followed (a 3xx is a wrong `base_url`), no proxy is
//! used, and HTTPS verifies the server with the platform's verifier (the
//! system's roots).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, HOST, HeaderMap, HeaderValue, USER_AGENT};
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// One HTTP/1.1 connection: the handle requests go in through, and the
/// future doing its reads and writes, polled only by the request using the
/// connection (an idle connection is not polled: a close by the provider is
/// seen at [`Conn::ready`]).
pub(super) struct Conn {
    sender: SendRequest<Full<Bytes>>,
    io: Pin<Box<dyn Future<Output = hyper::Result<()>> + Send>>,
    /// The I/O future has finished: the connection is closed.
    ended: bool,
}

impl Conn {
    /// Drives the connection until it can take a request; false when it is
    /// closed (the provider closed it while idle, or it broke).
    pub async fn ready(&mut self) -> bool {
        if self.ended {
            return false;
        }
        std::future::poll_fn(|cx| {
            if let Poll::Ready(result) = self.io.as_mut().poll(cx) {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "provider connection closed");
                }
                self.ended = true;
                return Poll::Ready(false);
            }
            self.sender.poll_ready(cx).map(|r| r.is_ok())
        })
        .await
    }

    /// Runs `exchange` (a request on this connection) while driving the
    /// connection's I/O; a connection that ends before the exchange does
    /// is a network error.
    async fn drive<T>(
        &mut self,
        exchange: impl Future<Output = hyper::Result<T>>,
    ) -> Result<T, TransportError> {
        let network = |e: hyper::Error| TransportError::new(TransportKind::Network, &e);
        let mut exchange = std::pin::pin!(exchange);
        std::future::poll_fn(|cx| {
            // The I/O first: it may complete the exchange in this same poll.
            if !self.ended
                && let Poll::Ready(result) = self.io.as_mut().poll(cx)
            {
                self.ended = true;
                if let Err(e) = result {
                    return match exchange.as_mut().poll(cx) {
                        Poll::Ready(Ok(done)) => Poll::Ready(Ok(done)),
                        _ => Poll::Ready(Err(network(e))),
                    };
                }
            }
            match exchange.as_mut().poll(cx) {
                Poll::Ready(result) => Poll::Ready(result.map_err(network)),
                Poll::Pending if self.ended => Poll::Ready(Err(TransportError {
                    kind: TransportKind::Network,
                    message: "the provider closed the connection before the response".into(),
                })),
                Poll::Pending => Poll::Pending,
            }
        })
        .await
    }
}

/// Where a provider's requests go: scheme, host and port, and the path
/// prefix of its `base_url`.
pub(super) struct Origin {
    host: String,
    port: u16,
    /// The `Host` header.
    authority: HeaderValue,
    /// `base_url`'s path without a trailing slash ("" for none).
    prefix: String,
    tls: Option<(TlsConnector, ServerName<'static>)>,
}

/// A request that got no (complete) response.
#[derive(Debug)]
pub(super) struct TransportError {
    pub kind: TransportKind,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TransportKind {
    /// No connection: refused, unresolvable, TLS handshake failed.
    Connect,
    /// No answer within the provider's `timeout`.
    Timeout,
    /// The connection broke while the request was under way.
    Network,
}

impl std::fmt::Display for TransportKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

impl TransportKind {
    /// The `status` label of the request metrics.
    pub fn label(self) -> &'static str {
        match self {
            TransportKind::Connect => "connect",
            TransportKind::Timeout => "timeout",
            TransportKind::Network => "network",
        }
    }
}

impl std::fmt::Display for TransportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.kind {
            TransportKind::Timeout => f.write_str(&self.message),
            kind => write!(f, "{kind} error: {}", self.message),
        }
    }
}

impl std::error::Error for TransportError {}

impl TransportError {
    fn new(kind: TransportKind, error: &dyn std::error::Error) -> Self {
        // The root cause says what happened; the outer layers only where.
        let mut root = error;
        while let Some(source) = root.source() {
            root = source;
        }
        TransportError {
            kind,
            message: root.to_string(),
        }
    }

    fn timeout(after: Duration) -> Self {
        TransportError {
            kind: TransportKind::Timeout,
            message: format!("timed out after {after:?}"),
        }
    }
}

/// A response, read in full unless it was too long.
pub(super) struct Response {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The body was longer than the provider's `max_response_bytes`: it was
    /// not read (`body` is empty).
    pub oversized: bool,
}

impl Response {
    fn oversized(parts: http::response::Parts) -> Self {
        Response {
            status: parts.status,
            headers: parts.headers,
            body: Bytes::new(),
            oversized: true,
        }
    }
}

const AGENT: &str = concat!("syncflow/", env!("CARGO_PKG_VERSION"));

impl Origin {
    /// `base_url` as validated by the provider's compilation (http or https,
    /// a host). The TLS configuration is built once, here.
    pub fn new(base_url: &str) -> Result<Self, String> {
        let uri: Uri = base_url
            .parse()
            .map_err(|e| format!("invalid base_url {base_url:?}: {e}"))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(format!("base_url {base_url:?} must be http or https")),
        };
        let authority = uri
            .authority()
            .ok_or_else(|| format!("base_url {base_url:?} has no host"))?;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tls = if https {
            let config = tls_config().map_err(|e| format!("TLS setup: {e}"))?;
            let name = ServerName::try_from(host.clone())
                .map_err(|e| format!("base_url host {host:?}: {e}"))?;
            Some((TlsConnector::from(Arc::new(config)), name))
        } else {
            None
        };
        Ok(Origin {
            host,
            port,
            authority: HeaderValue::from_str(authority.as_str())
                .map_err(|e| format!("base_url host: {e}"))?,
            prefix: uri.path().trim_end_matches('/').to_owned(),
            tls,
        })
    }

    /// The request target for `path` (which starts with '/').
    pub fn target(&self, path: &str) -> Result<Uri, String> {
        let mut target = String::with_capacity(self.prefix.len() + path.len());
        target.push_str(&self.prefix);
        target.push_str(path);
        Uri::try_from(target).map_err(|e| format!("bad request path {path:?}: {e}"))
    }

    /// Opens a connection (TCP, TLS for https, HTTP/1.1 handshake) within
    /// `timeout`.
    pub async fn connect(&self, timeout: Duration) -> Result<Conn, TransportError> {
        tokio::time::timeout(timeout, self.open())
            .await
            .map_err(|_| TransportError::timeout(timeout))?
    }

    async fn open(&self) -> Result<Conn, TransportError> {
        let connect_error =
            |e: &dyn std::error::Error| TransportError::new(TransportKind::Connect, e);
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| connect_error(&e))?;
        // Requests are single small writes: don't hold them back.
        tcp.set_nodelay(true).map_err(|e| connect_error(&e))?;
        match &self.tls {
            None => handshake(tcp).await,
            Some((connector, name)) => {
                let tls = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|e| connect_error(&e))?;
                handshake(tls).await
            }
        }
    }

    /// Sends `request` over `conn` (made ready), with this origin's `Host`
    /// and syncflow's `User-Agent`, and reads the response, within
    /// `timeout`. A body longer than `max_body` is not read: the response
    /// comes back `oversized` and the connection must be dropped.
    pub async fn send(
        &self,
        conn: &mut Conn,
        mut request: Request<Full<Bytes>>,
        timeout: Duration,
        max_body: u64,
    ) -> Result<Response, TransportError> {
        let headers = request.headers_mut();
        headers.insert(HOST, self.authority.clone());
        headers.insert(USER_AGENT, HeaderValue::from_static(AGENT));
        let exchange = async {
            let response = conn.sender.send_request(request);
            let response = conn.drive(response).await?;
            let (parts, mut body) = response.into_parts();
            let announced = parts
                .headers
                .get(CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
            if announced.is_some_and(|len| len > max_body) {
                return Ok(Response::oversized(parts));
            }
            // Read frame by frame, so a body longer than announced (or
            // chunked, announced not at all) stops at the limit too.
            let mut read = BytesMut::new();
            while let Some(frame) = conn.drive(async { body.frame().await.transpose() }).await? {
                if let Ok(data) = frame.into_data() {
                    if (read.len() + data.len()) as u64 > max_body {
                        return Ok(Response::oversized(parts));
                    }
                    read.extend_from_slice(&data);
                }
            }
            Ok(Response {
                status: parts.status,
                headers: parts.headers,
                body: read.freeze(),
                oversized: false,
            })
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| TransportError::timeout(timeout))?
    }
}

async fn handshake<S>(stream: S) -> Result<Conn, TransportError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (sender, connection) = http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| TransportError::new(TransportKind::Connect, &e))?;
    Ok(Conn {
        sender,
        io: Box::pin(connection),
        ended: false,
    })
}

/// TLS with the platform's verifier and ring (installed as the process's
/// default provider), HTTP/1.1 only.
fn tls_config() -> Result<rustls::ClientConfig, rustls::Error> {
    use rustls_platform_verifier::BuilderVerifierExt;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut config = rustls::ClientConfig::builder()
        .with_platform_verifier()?
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_split_host_port_and_prefix() {
        let o = Origin::new("http://127.0.0.1:8080").unwrap();
        assert_eq!(
            (o.host.as_str(), o.port, o.prefix.as_str()),
            ("127.0.0.1", 8080, "")
        );
        assert_eq!(o.authority, "127.0.0.1:8080");
        assert!(o.tls.is_none());
        assert_eq!(
            o.target("/crm/v3/objects/contacts").unwrap(),
            "/crm/v3/objects/contacts"
        );

        let o = Origin::new("https://api.example.com/services/").unwrap();
        assert_eq!((o.host.as_str(), o.port), ("api.example.com", 443));
        assert!(o.tls.is_some());
        assert_eq!(o.target("/data/x?y=1").unwrap(), "/services/data/x?y=1");

        let o = Origin::new("http://[::1]/v1").unwrap();
        assert_eq!(
            (o.host.as_str(), o.port, o.prefix.as_str()),
            ("::1", 80, "/v1")
        );
        assert!(Origin::new("ftp://x").is_err());
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let origin = Origin::new(&format!("http://127.0.0.1:{port}")).unwrap();
        let e = origin.connect(Duration::from_secs(5)).await.err().unwrap();
        assert_eq!(e.kind, TransportKind::Connect);
        assert!(e.to_string().starts_with("connect error: "), "{e}");
    }
}
