//! A response as the gateway handles it: counted, logged, kept for
//! idempotent replays, and sent only after the latency delay.

use axum::body::Body;
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::Value;

#[derive(Debug, Clone)]
pub(super) struct Reply {
    pub(super) status: StatusCode,
    body: Bytes,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl Reply {
    pub(super) fn json(status: StatusCode, body: &Value) -> Reply {
        Reply {
            status,
            body: Bytes::from(body.to_string()),
            headers: Vec::new(),
        }
    }

    pub(super) fn empty(status: StatusCode) -> Reply {
        Reply {
            status,
            body: Bytes::new(),
            headers: Vec::new(),
        }
    }

    /// The body as JSON (null when empty), for the Rust side of admin edits,
    /// which reuse the API's answers.
    pub(super) fn body_json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    pub(super) fn with_header(mut self, name: &'static str, value: impl ToString) -> Reply {
        let value = HeaderValue::try_from(value.to_string())
            .expect("mock_crm header values are plain ASCII");
        self.headers.push((HeaderName::from_static(name), value));
        self
    }
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        let has_body = !self.body.is_empty();
        let mut response = Response::new(Body::from(self.body));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        if has_body {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        headers.extend(self.headers);
        response
    }
}
