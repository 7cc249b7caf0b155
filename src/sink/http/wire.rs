//! HTTP/1.1 on the wire, for the provider's connections (`conn.rs`): the
//! request's head as bytes, and a response's head and body framing read
//! from bytes (RFC 9112). Parsing the head is httparse's, the parser hyper
//! uses; what is here is the little a client adds around it.
//!
//! Why not hyper's client: it cost 17,100 instructions per request at full
//! speed (a channel between the request handle and the connection, header
//! maps encoded and decoded, its keep-alive and body state machines), a
//! fifth of a record's, for requests that are one write of a known length
//! and answers read in full (bench/README.md, "HTTP/1.1 without hyper").

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, HeaderName, HeaderValue, TRANSFER_ENCODING};
use http::{Method, StatusCode};

use super::fields::Fields;

/// The most header lines a response may have.
const MAX_HEADERS: usize = 100;
/// The longest response head (status line and headers) read.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// The longest chunk-size or trailer line read.
const MAX_LINE_BYTES: usize = 4 * 1024;

/// Appends the request line and headers: `host` and `agent` first, then
/// `headers` without any Host, User-Agent, Content-Length or
/// Transfer-Encoding of theirs (the body's length is known and sent as
/// Content-Length), then the blank line.
pub fn write_head<'h>(
    out: &mut Vec<u8>,
    method: &Method,
    target: &str,
    host: &HeaderValue,
    agent: &str,
    headers: impl IntoIterator<Item = (&'h HeaderName, &'h HeaderValue)>,
    body_len: usize,
) {
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    out.extend_from_slice(host.as_bytes());
    out.extend_from_slice(b"\r\nuser-agent: ");
    out.extend_from_slice(agent.as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        if [
            http::header::HOST,
            http::header::USER_AGENT,
            CONTENT_LENGTH,
            TRANSFER_ENCODING,
        ]
        .contains(name)
        {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    // A POST, PUT or PATCH without a length may be refused (411), so those
    // say 0; other methods say nothing when they have no body.
    if body_len > 0 || [Method::POST, Method::PUT, Method::PATCH].contains(method) {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(itoa::Buffer::new().format(body_len).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// A response's head, read.
#[derive(Debug)]
pub struct Head {
    pub status: StatusCode,
    pub headers: Fields,
    pub framing: Framing,
    /// The connection may carry another request after this response.
    pub keep_alive: bool,
}

/// How the body after a head ends (RFC 9112 section 6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body: a 204 or 304, or the answer to a HEAD.
    Empty,
    Length(u64),
    Chunked,
    /// The body is everything until the provider closes the connection.
    UntilClose,
}

/// What [`parse_head`] found at the start of the buffer.
#[derive(Debug)]
pub enum Parsed {
    /// The head is not all there yet.
    Partial,
    /// A 1xx interim response of this many bytes: skip it, a final one follows.
    Interim(usize),
    /// The final response's head, and how many bytes of the buffer it took.
    Final(Head, usize),
}

/// Parses the response head at the start of `buf` (the answer to a
/// request with `method`).
pub fn parse_head(buf: &[u8], method: &Method) -> Result<Parsed, String> {
    // Left uninitialized for httparse to fill: zeroing all 100 slots (3.2
    // KB) for the five or so headers an answer has cost more than parsing.
    let mut lines = [const { std::mem::MaybeUninit::<httparse::Header>::uninit() }; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut []);
    let parser = httparse::ParserConfig::default();
    let len = match parser.parse_response_with_uninit_headers(&mut response, buf, &mut lines) {
        // A head that came whole with more after it may be over the limit
        // even though the buffer was not when it was still partial.
        Ok(httparse::Status::Complete(len)) if len > MAX_HEAD_BYTES => {
            return Err(format!("response head longer than {MAX_HEAD_BYTES} bytes"));
        }
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD_BYTES => {
            return Err(format!("response head longer than {MAX_HEAD_BYTES} bytes"));
        }
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(format!("response has more than {MAX_HEADERS} headers"));
        }
        Err(e) => return Err(format!("invalid response head: {e}")),
    };
    let code = response.code.unwrap_or_default();
    if (100..200).contains(&code) {
        if code == 101 {
            return Err("the provider switched protocols (101), which was not asked".into());
        }
        return Ok(Parsed::Interim(len));
    }
    let status =
        StatusCode::from_u16(code).map_err(|_| format!("invalid response status {code}"))?;

    let mut length: Option<u64> = None;
    let mut chunked = None;
    let mut close = response.version == Some(0);
    for line in response.headers.iter() {
        let name = line.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            let parsed = std::str::from_utf8(line.value)
                .ok()
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| {
                    format!(
                        "invalid Content-Length {:?}",
                        String::from_utf8_lossy(line.value)
                    )
                })?;
            if length.is_some_and(|l| l != parsed) {
                return Err("the response has two different Content-Length values".into());
            }
            length = Some(parsed);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            // Only the last coding decides: chunked last means chunks.
            let last = tokens(line.value).last();
            chunked = Some(last.is_some_and(|t| t.eq_ignore_ascii_case(b"chunked")));
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in tokens(line.value) {
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") && response.version == Some(0) {
                    close = false;
                }
            }
        }
    }
    let headers = Fields::from_parsed(response.headers);

    let framing = if method == Method::HEAD
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        Framing::Empty
    } else {
        // Transfer-Encoding wins over Content-Length (section 6.3, 3).
        match (chunked, length) {
            (Some(true), _) => Framing::Chunked,
            (Some(false), _) => Framing::UntilClose,
            (None, Some(len)) => Framing::Length(len),
            (None, None) => Framing::UntilClose,
        }
    };
    let head = Head {
        status,
        headers,
        framing,
        keep_alive: !close && framing != Framing::UntilClose,
    };
    Ok(Parsed::Final(head, len))
}

/// The comma-separated tokens of a header value, trimmed.
fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(|t| t.trim_ascii())
        .filter(|t| !t.is_empty())
}

/// Decodes a chunked body as its bytes arrive (RFC 9112 section 7.1):
/// chunk sizes and extensions, data, trailers. Fed the connection's
/// buffer, it takes what it can and says when it needs more.
#[derive(Debug, Default)]
pub struct Chunks {
    state: ChunkState,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Before a chunk-size line.
    #[default]
    Size,
    /// Inside a chunk's data, this many bytes left.
    Data(u64),
    /// After a chunk's data: its CRLF.
    DataEnd,
    /// After the last chunk: trailer lines until a blank one.
    Trailers,
    Done,
}

impl Chunks {
    /// Moves what it can of `buf` into `body`; true once the body is
    /// complete (`buf` then holds what followed it). False means more bytes
    /// are needed.
    pub fn decode(&mut self, buf: &mut BytesMut, body: &mut BytesMut) -> Result<bool, String> {
        loop {
            match self.state {
                ChunkState::Size => {
                    let Some(line) = take_line(buf)? else {
                        return Ok(false);
                    };
                    let size = line
                        .split(|&b| b == b';')
                        .next()
                        .unwrap_or_default()
                        .trim_ascii();
                    let size = std::str::from_utf8(size)
                        .ok()
                        .filter(|s| !s.is_empty() && s.len() <= 16)
                        .and_then(|s| u64::from_str_radix(s, 16).ok())
                        .ok_or_else(|| {
                            format!("invalid chunk size {:?}", String::from_utf8_lossy(&line))
                        })?;
                    self.state = if size == 0 {
                        ChunkState::Trailers
                    } else {
                        ChunkState::Data(size)
                    };
                }
                ChunkState::Data(left) => {
                    if buf.is_empty() {
                        return Ok(false);
                    }
                    let take = left.min(buf.len() as u64) as usize;
                    body.extend_from_slice(&buf[..take]);
                    buf.advance(take);
                    let left = left - take as u64;
                    self.state = if left == 0 {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(left)
                    };
                }
                ChunkState::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(false);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err("a chunk's data is not followed by CRLF".into());
                    }
                    buf.advance(2);
                    self.state = ChunkState::Size;
                }
                ChunkState::Trailers => {
                    let Some(line) = take_line(buf)? else {
                        return Ok(false);
                    };
                    if line.is_empty() {
                        self.state = ChunkState::Done;
                    }
                }
                ChunkState::Done => return Ok(true),
            }
        }
    }
}

/// Takes one CRLF-terminated line off the front of `buf` (without the
/// CRLF), or None when it is not all there.
fn take_line(buf: &mut BytesMut) -> Result<Option<Bytes>, String> {
    match buf.windows(2).position(|w| w == b"\r\n") {
        Some(end) => {
            let line = buf.split_to(end).freeze();
            buf.advance(2);
            Ok(Some(line))
        }
        None if buf.len() > MAX_LINE_BYTES => {
            Err(format!("chunk line longer than {MAX_LINE_BYTES} bytes"))
        }
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderMap;

    use super::*;

    fn head(text: &str) -> Head {
        match parse_head(text.as_bytes(), &Method::POST).unwrap() {
            Parsed::Final(head, len) => {
                assert_eq!(len, text.len());
                head
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_request_head_has_host_agent_the_headers_and_the_length() {
        let mut headers = HeaderMap::new();
        headers.insert("authorization", HeaderValue::from_static("Bearer t"));
        headers.insert("host", HeaderValue::from_static("evil"));
        headers.insert("content-length", HeaderValue::from_static("99"));
        let mut out = Vec::new();
        let host = HeaderValue::from_static("crm.example:8080");
        write_head(
            &mut out,
            &Method::POST,
            "/v1/c?x=1",
            &host,
            "syncflow/1",
            &headers,
            12,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /v1/c?x=1 HTTP/1.1\r\nhost: crm.example:8080\r\nuser-agent: syncflow/1\r\n\
             authorization: Bearer t\r\ncontent-length: 12\r\n\r\n"
        );

        let mut out = Vec::new();
        write_head(
            &mut out,
            &Method::DELETE,
            "/c/1",
            &host,
            "a",
            &HeaderMap::new(),
            0,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "DELETE /c/1 HTTP/1.1\r\nhost: crm.example:8080\r\nuser-agent: a\r\n\r\n"
        );
        let mut out = Vec::new();
        write_head(
            &mut out,
            &Method::PATCH,
            "/c/1",
            &host,
            "a",
            &HeaderMap::new(),
            0,
        );
        assert!(
            String::from_utf8(out)
                .unwrap()
                .ends_with("content-length: 0\r\n\r\n")
        );
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let h = head("HTTP/1.1 201 Created\r\nContent-Length: 17\r\nRetry-After: 3\r\n\r\n");
        assert_eq!(
            (h.status.as_u16(), h.framing, h.keep_alive),
            (201, Framing::Length(17), true)
        );
        assert_eq!(h.headers.get("retry-after"), Some("3"));

        let h = head(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 5\r\n\r\n",
        );
        assert_eq!(h.framing, Framing::Chunked);
        let h = head("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n");
        assert_eq!((h.framing, h.keep_alive), (Framing::UntilClose, false));
        let h = head("HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!((h.framing, h.keep_alive), (Framing::UntilClose, false));
        let h = head("HTTP/1.1 204 No Content\r\n\r\n");
        assert_eq!((h.framing, h.keep_alive), (Framing::Empty, true));
        let h =
            head("HTTP/1.1 200 OK\r\nConnection: Keep-Alive, CLOSE\r\nContent-Length: 0\r\n\r\n");
        assert_eq!((h.framing, h.keep_alive), (Framing::Length(0), false));
        let h = head("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n");
        assert!(!h.keep_alive);
        let h = head("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n");
        assert!(h.keep_alive);
        // The same length twice is one length.
        let h = head("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n");
        assert_eq!(h.framing, Framing::Length(2));

        let text = "HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n";
        match parse_head(text.as_bytes(), &Method::HEAD).unwrap() {
            Parsed::Final(h, _) => assert_eq!(h.framing, Framing::Empty),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn partial_interim_and_bad_heads() {
        let post = &Method::POST;
        assert!(matches!(
            parse_head(b"HTTP/1.1 200 OK\r\nContent-Le", post),
            Ok(Parsed::Partial)
        ));
        assert!(matches!(parse_head(b"", post), Ok(Parsed::Partial)));
        assert!(matches!(
            parse_head(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200", post),
            Ok(Parsed::Interim(25))
        ));
        let err = |text: &str| parse_head(text.as_bytes(), post).unwrap_err();
        assert!(err("HTTP/1.1 101 Switching Protocols\r\n\r\n").contains("101"));
        assert!(err("HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n").contains("Content-Length"));
        assert!(err("HTTP/1.1 200 OK\r\nContent-Length: +1\r\n\r\n").contains("Content-Length"));
        assert!(
            err("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")
                .contains("two")
        );
        assert!(err("SMTP ready\r\n\r\n").contains("invalid response head"));
        let many = format!("HTTP/1.1 200 OK\r\n{}\r\n", "X-A: 1\r\n".repeat(101));
        assert!(err(&many).contains("more than 100 headers"));
        let long = format!("HTTP/1.1 200 OK\r\nX-A: {}", "a".repeat(MAX_HEAD_BYTES));
        assert!(err(&long).contains("longer than"));
        // The same, complete at once.
        assert!(err(&format!("{long}\r\n\r\n")).contains("longer than"));
    }

    #[test]
    fn chunks_decode_across_any_split() {
        let wire = b"5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nX-Trailer: t\r\n\r\nNEXT";
        // Fed one byte at a time, and whole: the same body, the rest left.
        for step in [1, 2, 3, 7, wire.len()] {
            let mut chunks = Chunks::default();
            let mut buf = BytesMut::new();
            let mut body = BytesMut::new();
            let mut fed = 0;
            for piece in wire.chunks(step) {
                buf.extend_from_slice(piece);
                fed += piece.len();
                if chunks.decode(&mut buf, &mut body).unwrap() {
                    break;
                }
            }
            assert_eq!(&body[..], b"hello, world", "step {step}");
            // What followed the body stays: in the buffer, or not yet fed.
            let mut rest = buf.to_vec();
            rest.extend_from_slice(&wire[fed..]);
            assert_eq!(rest, b"NEXT", "step {step}");
        }
    }

    #[test]
    fn bad_chunks_are_errors() {
        let bad = |wire: &[u8]| {
            let mut buf = BytesMut::from(wire);
            Chunks::default()
                .decode(&mut buf, &mut BytesMut::new())
                .unwrap_err()
        };
        assert!(bad(b"zz\r\n").contains("invalid chunk size"));
        assert!(bad(b"\r\n").contains("invalid chunk size"));
        assert!(bad(b"2\r\nabXY").contains("CRLF"));
        assert!(bad(&[b'1'; MAX_LINE_BYTES + 1]).contains("longer than"));
    }
}
