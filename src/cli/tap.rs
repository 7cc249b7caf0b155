//! `syncflow tap PIPELINE`: prints a running instance's live decisions for
//! one pipeline (read from its `/api/tap/<pipeline>`, see `tap.rs`).

use std::io::Write;
use std::path::Path;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};

use super::Format;
use crate::clock::format_time;
use crate::compile::compile_dir;
use crate::config::env::ProcessEnv;
use crate::tap::Decision;

pub struct TapArgs<'a> {
    pub pipeline: &'a str,
    /// `host:port` or `http://host:port` of the instance.
    pub url: Option<&'a str>,
    pub key: Option<&'a str>,
    pub action: Option<&'a str>,
    pub format: Format,
    /// Stop after this many decisions.
    pub count: Option<u64>,
}

/// Returns once the instance ends the stream, or after `count` decisions.
pub fn run(dir: &Path, args: &TapArgs<'_>, out: &mut dyn Write) -> Result<bool, String> {
    let addr = match args.url {
        Some(url) => url
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string(),
        None => {
            let config = compile_dir(dir, &ProcessEnv, false)
                .map_err(|d| format!("{d}{} errors in the config (or give --url)", d.len()))?;
            // An instance listening on every interface is reached on loopback.
            config.globals.http.listen.replace("0.0.0.0", "127.0.0.1")
        }
    };
    let mut query = Vec::new();
    if let Some(key) = args.key {
        query.push(format!("key={}", encode(key)));
    }
    if let Some(action) = args.action {
        query.push(format!("action={}", encode(action)));
    }
    let path = format!("/api/tap/{}?{}", encode(args.pipeline), query.join("&"));
    super::block_on(stream(&addr, &path, args, out))
}

async fn stream(
    addr: &str,
    path: &str,
    args: &TapArgs<'_>,
    out: &mut dyn Write,
) -> Result<bool, String> {
    let unreachable = |e: &dyn std::fmt::Display| format!("cannot reach syncflow at {addr}: {e}");
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| unreachable(&e))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .map_err(|e| unreachable(&e))?;
    tokio::spawn(conn);
    let request = http::Request::get(path)
        .header(http::header::HOST, addr)
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let mut response = sender
        .send_request(request)
        .await
        .map_err(|e| unreachable(&e))?;
    if !response.status().is_success() {
        let body = response
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let message = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
        return Err(message);
    }
    let io = |e: std::io::Error| e.to_string();
    if args.format == Format::Text {
        writeln!(out, "tapping {} at {addr} (Ctrl-C to stop)", args.pipeline).map_err(io)?;
        out.flush().map_err(io)?;
    }
    let body = response.body_mut();
    let mut pending = Vec::new();
    let mut seen = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("the tap stream broke: {e}"))?;
        let Some(data) = frame.data_ref() else {
            continue;
        };
        pending.extend_from_slice(data);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line[..end]);
            if line.trim().is_empty() {
                continue; // keepalive
            }
            let value: serde_json::Value =
                serde_json::from_str(&line).map_err(|e| format!("unreadable tap line: {e}"))?;
            if let Some(dropped) = value.get("dropped").and_then(|d| d.as_u64()) {
                match args.format {
                    Format::Json => writeln!(out, "{line}").map_err(io)?,
                    Format::Text => writeln!(out, "… {dropped} decisions dropped: this tap reads slower than the pipeline decides").map_err(io)?,
                }
                continue;
            }
            match args.format {
                Format::Json => writeln!(out, "{line}").map_err(io)?,
                Format::Text => {
                    let d: Decision = serde_json::from_value(value)
                        .map_err(|e| format!("unreadable decision: {e}"))?;
                    print_decision(&d, out).map_err(io)?;
                }
            }
            out.flush().map_err(io)?;
            seen += 1;
            if args.count.is_some_and(|n| seen >= n) {
                return Ok(true);
            }
        }
    }
    if args.format == Format::Text {
        writeln!(
            out,
            "the instance closed the tap (pipeline removed or instance stopping)"
        )
        .map_err(io)?;
    }
    Ok(true)
}

fn print_decision(d: &Decision, out: &mut dyn Write) -> std::io::Result<()> {
    let status = d.status.map(|s| format!(" {s}")).unwrap_or_default();
    let error = match (&d.error_kind, &d.error) {
        (Some(kind), Some(message)) => format!(" {kind}: {message}"),
        (Some(kind), None) => format!(" {kind}"),
        _ => String::new(),
    };
    writeln!(
        out,
        "{} seq={} key={} {} → {}{status}{error} ({:.1} ms)",
        format_time(d.time_ms),
        d.seq,
        d.key.as_deref().unwrap_or("-"),
        d.action.as_deref().unwrap_or("-"),
        d.outcome,
        d.latency_ms
    )?;
    if let Some(body) = &d.body {
        writeln!(out, "   {body}")?;
    }
    Ok(())
}

/// Percent-encodes all but unreserved characters, for a path segment or a
/// query value.
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_encoded_for_the_query() {
        assert_eq!(encode("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
        assert_eq!(encode("contacts-to-hubspot"), "contacts-to-hubspot");
    }

    #[test]
    fn a_decision_reads_on_one_line_with_its_body_below() {
        let d = Decision {
            time_ms: 0,
            seq: 7,
            key: Some("42".into()),
            action: Some("create".into()),
            outcome: "sent".into(),
            status: Some(201),
            error_kind: None,
            error: None,
            body: Some(serde_json::json!({"a": 1})),
            latency_ms: 3.25,
        };
        let mut out = Vec::new();
        print_decision(&d, &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "1970-01-01T00:00:00.000Z seq=7 key=42 create → sent 201 (3.2 ms)\n   {\"a\":1}\n"
        );
    }
}
