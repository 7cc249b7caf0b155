//! The provider's origin and one HTTP/1.1 connection per slot.
//!
//! The sink must know which connection a request goes over, and that it is
//! open, before it takes a rate-limit cell (docs/sink-connections.md), so
//! there is no pool. A connection has no task of its own: the request using
//! it writes its head and body and reads the answer (`wire.rs`) in its own
//! task, with no wake-up crossing tasks.
//!
//! Redirects are never followed (a 3xx is a wrong `base_url`), no proxy is
//! used, and HTTPS verifies the server with the platform's verifier (the
//! system's roots).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue};
use http::{Method, StatusCode, Uri};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::fields::Fields;
use super::wire::{self, Chunks, Framing, Parsed};

/// One HTTP/1.1 connection, used by one request at a time. An idle
/// connection is not read: a close by the provider is seen at
/// [`Conn::ready`].
pub(super) struct Conn {
    stream: Stream,
    /// Bytes read and not yet taken: the answer being read.
    buf: BytesMut,
    /// The request's bytes, reused from one request to the next.
    out: Vec<u8>,
    /// Another request may follow on this connection.
    reusable: bool,
}

/// A body up to this size goes out in the head's write; a larger one is
/// written apart, so `Conn::out` stays small.
const INLINE_BODY_BYTES: usize = 16 * 1024;
/// How much a read asks for at least.
const READ_BYTES: usize = 8 * 1024;
/// After an answer longer than this the read buffer is dropped, not kept:
/// a body read with Content-Length is a slice of the read buffer's
/// allocation, which the buffer would keep alive after the body is gone,
/// and an idle connection should not hold a large answer's memory.
const KEPT_BUF_BYTES: usize = 4 * READ_BYTES;

enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

impl Conn {
    fn new(stream: Stream) -> Self {
        Conn {
            stream,
            buf: BytesMut::new(),
            out: Vec::new(),
            reusable: true,
        }
    }

    /// Whether the connection can take a request: false when the last
    /// answer ended it, or the provider closed it (or sent something
    /// unasked) while it was idle.
    pub async fn ready(&mut self) -> bool {
        if !self.reusable {
            return false;
        }
        // An idle connection has nothing to read: an end of stream, an
        // error or bytes nobody asked for all mean it cannot be used. A
        // pending read means it is open (and wakes this task later for
        // nothing, which costs one poll).
        let mut byte = [0u8; 1];
        let stream = &mut self.stream;
        let open = std::future::poll_fn(|cx| {
            let mut probe = ReadBuf::new(&mut byte);
            Poll::Ready(
                Pin::new(&mut *stream)
                    .poll_read(cx, &mut probe)
                    .is_pending(),
            )
        })
        .await;
        self.reusable = open;
        open
    }

    /// Writes the request in `out` (and `body` when it was not inlined),
    /// then reads the answer to a `method` request.
    async fn exchange(
        &mut self,
        method: &Method,
        body: &Bytes,
        max_body: u64,
    ) -> Result<Response, TransportError> {
        // Until the answer is read in full, the connection is unusable.
        self.reusable = false;
        self.stream.write_all(&self.out).await.map_err(network)?;
        if body.len() > INLINE_BODY_BYTES {
            self.stream.write_all(body).await.map_err(network)?;
        }
        self.stream.flush().await.map_err(network)?;

        let head = loop {
            match wire::parse_head(&self.buf, method).map_err(protocol)? {
                Parsed::Partial => self.read_more("before the response").await?,
                Parsed::Interim(len) => {
                    let _ = self.buf.split_to(len);
                }
                Parsed::Final(head, len) => {
                    let _ = self.buf.split_to(len);
                    break head;
                }
            }
        };
        let oversized = |head: wire::Head| Response {
            status: head.status,
            headers: head.headers,
            body: Bytes::new(),
            oversized: true,
        };
        let body = match head.framing {
            Framing::Empty => Bytes::new(),
            Framing::Length(len) if len > max_body => return Ok(oversized(head)),
            Framing::Length(len) => {
                let len = len as usize;
                while self.buf.len() < len {
                    self.read_more("in the middle of the response body").await?;
                }
                self.buf.split_to(len).freeze()
            }
            Framing::Chunked => {
                let mut chunks = Chunks::default();
                let mut body = BytesMut::new();
                while !chunks.decode(&mut self.buf, &mut body).map_err(protocol)? {
                    if body.len() as u64 > max_body {
                        return Ok(oversized(head));
                    }
                    self.read_more("in the middle of the response body").await?;
                }
                if body.len() as u64 > max_body {
                    return Ok(oversized(head));
                }
                body.freeze()
            }
            Framing::UntilClose => loop {
                if self.buf.len() as u64 > max_body {
                    return Ok(oversized(head));
                }
                if self.read().await.map_err(network)? == 0 {
                    break self.buf.split().freeze();
                }
            },
        };
        // Bytes after the answer were not asked for: the connection's state
        // is unknown.
        self.reusable = head.keep_alive && self.buf.is_empty();
        if body.len() > KEPT_BUF_BYTES {
            self.buf = BytesMut::new();
        }
        Ok(Response {
            status: head.status,
            headers: head.headers,
            body,
            oversized: false,
        })
    }

    /// Reads at least one more byte; the end of the stream is an error
    /// that says `when`.
    async fn read_more(&mut self, when: &str) -> Result<(), TransportError> {
        match self.read().await {
            Ok(0) => Err(TransportError {
                kind: TransportKind::Network,
                message: format!("the provider closed the connection {when}"),
            }),
            Ok(_) => Ok(()),
            Err(e) => Err(network(e)),
        }
    }

    async fn read(&mut self) -> io::Result<usize> {
        self.buf.reserve(READ_BYTES);
        self.stream.read_buf(&mut self.buf).await
    }
}

fn network(e: io::Error) -> TransportError {
    TransportError::new(TransportKind::Network, &e)
}

/// An answer that is not HTTP/1.1 as it should be.
fn protocol(message: String) -> TransportError {
    TransportError {
        kind: TransportKind::Network,
        message,
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
    pub headers: Fields,
    pub body: Bytes,
    /// The body was longer than the provider's `max_response_bytes`: it was
    /// not read (`body` is empty).
    pub oversized: bool,
}

const AGENT: &str = concat!("syncflow/", env!("CARGO_PKG_VERSION"));

impl Origin {
    /// `base_url` as validated by the provider's compilation (http or https,
    /// a host). The TLS configuration is built once, here.
    /// `tls`: the provider's own TLS configuration (`tls.rs`), else the
    /// system's roots.
    pub fn new(base_url: &str, tls: Option<Arc<rustls::ClientConfig>>) -> Result<Self, String> {
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
            let config = match tls {
                Some(config) => config,
                // No files to read: the directory is not used.
                None => Arc::new(super::tls::client_config(None, std::path::Path::new(""))?),
            };
            let name = ServerName::try_from(host.clone())
                .map_err(|e| format!("base_url host {host:?}: {e}"))?;
            Some((TlsConnector::from(config), name))
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

    /// The request target for `path` (which starts with '/'): printable
    /// ASCII, no space and no fragment, as a request line needs it (a
    /// path's placeholders are percent-encoded when it is rendered).
    pub fn target(&self, path: &str) -> Result<Target, String> {
        if !path.starts_with('/') {
            return Err(format!("bad request path {path:?}: it must start with '/'"));
        }
        // By bytes (a byte of a non-ASCII character is not graphic either):
        // walking the path as chars cost 170 instructions more a request.
        if let Some(at) = path
            .bytes()
            .position(|b| !b.is_ascii_graphic() || b == b'#')
        {
            let bad = path[at..].chars().next().unwrap_or_default();
            return Err(format!(
                "bad request path {path:?}: {bad:?} must be percent-encoded"
            ));
        }
        let mut target = String::with_capacity(self.prefix.len() + path.len());
        target.push_str(&self.prefix);
        target.push_str(path);
        Ok(Target(target))
    }

    /// Opens a connection (TCP, and TLS for https) within
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
            None => Ok(Conn::new(Stream::Plain(tcp))),
            Some((connector, name)) => {
                let tls = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|e| connect_error(&e))?;
                Ok(Conn::new(Stream::Tls(Box::new(tls))))
            }
        }
    }

    /// Sends `request` over `conn` (made ready), with this origin's `Host`
    /// and syncflow's `User-Agent` and the body's length, and reads the
    /// response, within `timeout`. A body longer than `max_body` is not
    /// read: the response comes back `oversized` and the connection must be
    /// dropped.
    pub async fn send<'h>(
        &self,
        conn: &mut Conn,
        request: Outgoing<'_, impl IntoIterator<Item = (&'h HeaderName, &'h HeaderValue)>>,
        timeout: Duration,
        max_body: u64,
    ) -> Result<Response, TransportError> {
        let Outgoing {
            method,
            target,
            headers,
            body,
        } = request;
        conn.out.clear();
        wire::write_head(
            &mut conn.out,
            method,
            target.as_str(),
            &self.authority,
            AGENT,
            headers,
            body.len(),
        );
        if body.len() <= INLINE_BODY_BYTES {
            conn.out.extend_from_slice(body);
        }
        tokio::time::timeout(timeout, conn.exchange(method, body, max_body))
            .await
            .map_err(|_| TransportError::timeout(timeout))?
    }
}

/// One request as [`Origin::send`] writes it: no header map and no URI
/// parsed per request (a record's request is built from parts the provider
/// compiled at load).
pub(super) struct Outgoing<'a, H> {
    pub method: &'a Method,
    pub target: &'a Target,
    /// Any Host, User-Agent, Content-Length or Transfer-Encoding among them
    /// is not sent: the origin and the body say those.
    pub headers: H,
    pub body: &'a Bytes,
}

/// A request target: `base_url`'s path and a request's path (and query)
/// under it, checked to be one (see [`Origin::target`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Target(String);

impl Target {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_split_host_port_and_prefix() {
        let o = Origin::new("http://127.0.0.1:8080", None).unwrap();
        assert_eq!(
            (o.host.as_str(), o.port, o.prefix.as_str()),
            ("127.0.0.1", 8080, "")
        );
        assert_eq!(o.authority, "127.0.0.1:8080");
        assert!(o.tls.is_none());
        assert_eq!(
            o.target("/crm/v3/objects/contacts").unwrap().as_str(),
            "/crm/v3/objects/contacts"
        );

        let o = Origin::new("https://api.example.com/services/", None).unwrap();
        assert_eq!((o.host.as_str(), o.port), ("api.example.com", 443));
        assert!(o.tls.is_some());
        assert_eq!(
            o.target("/data/x?y=1").unwrap().as_str(),
            "/services/data/x?y=1"
        );
        assert!(o.target("/a b").unwrap_err().contains("' '"));
        assert!(o.target("/a#b").is_err());
        assert!(o.target("/a\u{e9}").is_err());
        assert!(o.target("a").is_err());

        let o = Origin::new("http://[::1]/v1", None).unwrap();
        assert_eq!(
            (o.host.as_str(), o.port, o.prefix.as_str()),
            ("::1", 80, "/v1")
        );
        assert!(Origin::new("ftp://x", None).is_err());
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let origin = Origin::new(&format!("http://127.0.0.1:{port}"), None).unwrap();
        let e = origin.connect(Duration::from_secs(5)).await.err().unwrap();
        assert_eq!(e.kind, TransportKind::Connect);
        assert!(e.to_string().starts_with("connect error: "), "{e}");
    }

    /// A server of one connection: for each answer, reads one request
    /// (head and Content-Length body) and writes the answer `step` bytes
    /// at a time. After the last it closes when `close` says so, else it
    /// gives the connection back, open, with the requests read.
    async fn server(
        answers: Vec<&'static str>,
        step: usize,
        close: bool,
    ) -> (
        Origin,
        tokio::task::JoinHandle<(Vec<String>, Option<tokio::net::TcpStream>)>,
    ) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let origin = Origin::new(
            &format!("http://{}/api", listener.local_addr().unwrap()),
            None,
        )
        .unwrap();
        let served = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut requests = Vec::new();
            let mut buf = Vec::new();
            for answer in answers {
                let request = loop {
                    if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8(buf[..end + 4].to_vec()).unwrap();
                        let length = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length: "))
                            .map_or(0, |l| l.parse::<usize>().unwrap());
                        if buf.len() >= end + 4 + length {
                            let request: Vec<u8> = buf.drain(..end + 4 + length).collect();
                            break String::from_utf8(request).unwrap();
                        }
                    }
                    let mut more = [0u8; 1024];
                    let n = socket.read(&mut more).await.unwrap();
                    assert!(n > 0, "the client closed before its request");
                    buf.extend_from_slice(&more[..n]);
                };
                requests.push(request);
                for piece in answer.as_bytes().chunks(step) {
                    socket.write_all(piece).await.unwrap();
                    socket.flush().await.unwrap();
                    if step < answer.len() {
                        tokio::task::yield_now().await;
                    }
                }
            }
            (requests, (!close).then_some(socket))
        });
        (origin, served)
    }

    /// POSTs `body` to `/contacts?x=1` with an idempotency key.
    async fn post(
        origin: &Origin,
        conn: &mut Conn,
        body: &'static str,
        timeout: Duration,
        max_body: u64,
    ) -> Result<Response, TransportError> {
        let target = origin.target("/contacts?x=1").unwrap();
        let body = Bytes::from_static(body.as_bytes());
        let name = HeaderName::from_static("idempotency-key");
        let value = HeaderValue::from_static("k1");
        let request = Outgoing {
            method: &Method::POST,
            target: &target,
            headers: [(&name, &value)],
            body: &body,
        };
        origin.send(conn, request, timeout, max_body).await
    }

    const SECOND: Duration = Duration::from_secs(5);

    /// One POST answered with `answer` (the server then closes if `close`):
    /// what it came to, and whether the connection was ready for another.
    async fn answered(
        answer: &'static str,
        max_body: u64,
        close: bool,
    ) -> (Result<Response, TransportError>, bool) {
        let (origin, served) = server(vec![answer], usize::MAX, close).await;
        let mut conn = origin.connect(SECOND).await.unwrap();
        let result = post(&origin, &mut conn, "{}", SECOND, max_body).await;
        let ready = conn.ready().await;
        served.await.unwrap();
        (result, ready)
    }

    #[tokio::test]
    async fn requests_and_answers_of_every_framing_share_one_connection() {
        let answers = vec![
            "HTTP/1.1 201 Created\r\nContent-Length: 8\r\nX-Quota: 7\r\n\r\n{\"id\":1}",
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\nT: 1\r\n\r\n",
            "HTTP/1.1 204 No Content\r\n\r\n",
            "HTTP/1.1 429 Too Many Requests\r\nRetry-After: 2\r\nContent-Length: 0\r\n\r\n",
        ];
        // Whole answers, and answers arriving a byte at a time.
        for step in [usize::MAX, 1] {
            let (origin, served) = server(answers.clone(), step.min(4096), true).await;
            let mut conn = origin.connect(SECOND).await.unwrap();
            let mut got = Vec::new();
            for body in ["{\"a\":1}", "", "x", "{}"] {
                assert!(conn.ready().await);
                let r = post(&origin, &mut conn, body, SECOND, 1024).await.unwrap();
                assert!(!r.oversized);
                got.push((r.status.as_u16(), r.body, r.headers));
            }
            assert_eq!(got[0].0, 201);
            assert_eq!(&got[0].1[..], b"{\"id\":1}");
            assert_eq!(got[0].2.get("x-quota"), Some("7"));
            assert_eq!((got[1].0, &got[1].1[..]), (200, &b"abcde"[..]));
            assert_eq!((got[2].0, got[2].1.len()), (204, 0));
            assert_eq!(got[3].0, 429);
            assert_eq!(got[3].2.get("retry-after"), Some("2"));

            // The server closed after the last answer: the idle connection
            // is seen closed.
            let (requests, _) = served.await.unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
            assert!(!conn.ready().await);
            let host = origin.authority.to_str().unwrap().to_owned();
            assert_eq!(
                requests[0],
                format!(
                    "POST /api/contacts?x=1 HTTP/1.1\r\nhost: {host}\r\nuser-agent: {AGENT}\r\n\
                     idempotency-key: k1\r\ncontent-length: 7\r\n\r\n{{\"a\":1}}"
                )
            );
            assert!(
                requests[1].ends_with("content-length: 0\r\n\r\n"),
                "{}",
                requests[1]
            );
        }
    }

    #[tokio::test]
    async fn an_answer_that_ends_the_connection_leaves_it_unusable() {
        for (answer, close) in [
            // Read until the provider closes.
            ("HTTP/1.1 200 OK\r\n\r\nall of it", true),
            // Says it will close (and has not yet).
            (
                "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 9\r\n\r\nall of it",
                false,
            ),
            // HTTP/1.0 without keep-alive.
            (
                "HTTP/1.0 200 OK\r\nContent-Length: 9\r\n\r\nall of it",
                false,
            ),
        ] {
            let (r, ready) = answered(answer, 1024, close).await;
            assert_eq!(&r.unwrap().body[..], b"all of it", "{answer}");
            assert!(!ready, "{answer}");
        }
    }

    #[tokio::test]
    async fn bodies_over_the_limit_are_not_read() {
        for answer in [
            "HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n0123456789a",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\n012345\r\n5\r\n6789a\r\n0\r\n\r\n",
            "HTTP/1.1 200 OK\r\n\r\n0123456789a",
        ] {
            let (r, ready) = answered(answer, 10, false).await;
            let r = r.unwrap();
            assert!(r.oversized, "{answer}");
            assert_eq!((r.status.as_u16(), r.body.len()), (200, 0));
            assert!(!ready);
        }
    }

    #[tokio::test]
    async fn broken_answers_are_network_errors() {
        for (answer, says) in [
            ("", "closed the connection before the response"),
            (
                "HTTP/1.1 200 OK\r\nContent-Le",
                "closed the connection before the response",
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab",
                "in the middle of the response body",
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
                "in the middle",
            ),
            ("hello there\r\n\r\n", "invalid response head"),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nxyz\r\n",
                "invalid chunk size",
            ),
        ] {
            let (r, ready) = answered(answer, 1024, true).await;
            let e = r.err().unwrap();
            assert_eq!(e.kind, TransportKind::Network, "{answer:?}");
            assert!(e.to_string().contains(says), "{answer:?}: {e}");
            assert!(!ready);
        }
    }

    #[tokio::test]
    async fn bytes_after_an_answer_leave_the_connection_unusable() {
        // The server stays open: only the unasked bytes end the connection.
        let answer = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n";
        let (r, ready) = answered(answer, 1024, false).await;
        assert_eq!(&r.unwrap().body[..], b"ok");
        assert!(!ready);
        // And an answer that leaves nothing behind keeps it.
        let answer = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        let (r, ready) = answered(answer, 1024, false).await;
        assert_eq!(&r.unwrap().body[..], b"ok");
        assert!(ready);
    }

    #[tokio::test]
    async fn a_large_answer_leaves_no_large_buffer_behind() {
        let answer: &'static str = Box::leak(
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n{}",
                "x".repeat(100_000)
            )
            .into_boxed_str(),
        );
        let (origin, served) = server(vec![answer], usize::MAX, false).await;
        let mut conn = origin.connect(SECOND).await.unwrap();
        let r = post(&origin, &mut conn, "{}", SECOND, 1 << 20)
            .await
            .unwrap();
        assert_eq!(r.body.len(), 100_000);
        // The connection keeps no share of the body's allocation: it is
        // freed with the body.
        assert!(r.body.is_unique());
        assert!(conn.ready().await);
        drop(served.await.unwrap());
    }

    #[tokio::test]
    async fn no_answer_in_time_is_a_timeout() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let origin =
            Origin::new(&format!("http://{}", listener.local_addr().unwrap()), None).unwrap();
        let silent = tokio::spawn(async move { listener.accept().await.unwrap() });
        let mut conn = origin.connect(SECOND).await.unwrap();
        let wait = Duration::from_millis(100);
        let e = post(&origin, &mut conn, "{}", wait, 1024)
            .await
            .err()
            .unwrap();
        assert_eq!(e.kind, TransportKind::Timeout);
        assert!(!conn.ready().await);
        drop(silent.await.unwrap());
    }

    #[tokio::test]
    async fn a_large_body_goes_out_whole() {
        let body: &'static str = Box::leak("x".repeat(INLINE_BODY_BYTES * 3 + 7).into_boxed_str());
        let (origin, served) = server(
            vec!["HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"],
            usize::MAX,
            true,
        )
        .await;
        let mut conn = origin.connect(SECOND).await.unwrap();
        let r = post(&origin, &mut conn, body, SECOND, 1024).await.unwrap();
        assert_eq!(r.status.as_u16(), 200);
        let (requests, _) = served.await.unwrap();
        assert!(requests[0].ends_with(body));
        assert!(requests[0].contains(&format!("content-length: {}\r\n", body.len())));
    }
}
