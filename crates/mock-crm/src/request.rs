//! The parts of an API request the gateway and the handlers look at.

use axum::extract::{FromRequest, Request};
use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderValue, Method, Uri};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

pub(super) const IDEMPOTENCY_KEY: &str = "idempotency-key";

pub(super) struct ApiRequest {
    pub(super) method: Method,
    /// Relative to the API's base URL (the API router is nested).
    pub(super) uri: Uri,
    pub(super) authorization: Option<HeaderValue>,
    /// A key that is not valid UTF-8 counts as absent.
    pub(super) idempotency_key: Option<String>,
    /// `If-Unmodified-Since`, as the latest modification time (ms) the
    /// write accepts: milliseconds since the epoch, or an HTTP date (to the
    /// end of its second). Unreadable counts as absent.
    pub(super) unmodified_since: Option<u64>,
    pub(super) body: Bytes,
}

fn unmodified_since(value: &str) -> Option<u64> {
    if let Ok(ms) = value.trim().parse::<u64>() {
        return Some(ms);
    }
    let at = httpdate::parse_http_date(value).ok()?;
    let secs = at.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs();
    Some(secs * 1000 + 999)
}

impl<S: Send + Sync> FromRequest<S> for ApiRequest {
    type Rejection = Response;

    async fn from_request(request: Request, state: &S) -> Result<Self, Response> {
        let method = request.method().clone();
        let uri = request.uri().clone();
        let headers = request.headers();
        let authorization = headers.get(AUTHORIZATION).cloned();
        let idempotency_key = headers
            .get(IDEMPOTENCY_KEY)
            .and_then(|key| key.to_str().ok())
            .map(str::to_owned);
        let unmodified_since = headers
            .get("if-unmodified-since")
            .and_then(|v| v.to_str().ok())
            .and_then(unmodified_since);
        let body = Bytes::from_request(request, state)
            .await
            .map_err(IntoResponse::into_response)?;
        Ok(ApiRequest {
            method,
            uri,
            authorization,
            idempotency_key,
            unmodified_since,
            body,
        })
    }
}
