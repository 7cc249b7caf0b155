//! What one attempt's result means: success, a failure no retry fixes, or a
//! failure worth another try; and how a failure reads in a dead letter.

use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;

use super::breaker::ProviderHealth;
use super::conn::TransportError;
use super::metrics::AttemptLabel;
use super::{ApiError, ApiErrorKind, BODY_LIMIT, EndpointKind};

/// One attempt's result, before classification.
pub(super) enum Attempt {
    Response {
        status: StatusCode,
        retry_after: Option<Duration>,
        body: Bytes,
    },
    /// No (complete) response: connect error, timeout, broken connection.
    Transport(TransportError),
    /// A response whose body was longer than `max_response_bytes`.
    Oversized { status: StatusCode, limit: u64 },
}

pub(super) enum Verdict {
    Success {
        status: StatusCode,
        body: Bytes,
    },
    /// No retry fixes it.
    Final(Failure),
    /// Another attempt may succeed; if none is left, the retries are exhausted.
    Retryable(Failure),
}

/// What kind of failure an attempt was; a dead letter's kind comes from it
/// once no attempt is left ([`Failure::into_error`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FailureKind {
    /// A final status outside `retry_on`.
    Rejected,
    /// 404 on an endpoint that addresses an existing record.
    NotFound,
    /// A `retry_on` status or a transport error: another attempt may succeed.
    Transient,
    /// A body longer than `max_response_bytes`.
    Oversized,
}

pub(super) struct Failure {
    kind: FailureKind,
    pub status: Option<StatusCode>,
    body: Option<Bytes>,
    pub retry_after: Option<Duration>,
    /// The status, or the transport error, with a hint where there is one.
    pub cause: String,
}

impl Attempt {
    /// The `status` label of the request metrics.
    pub fn label(&self) -> AttemptLabel {
        match self {
            Attempt::Response { status, .. } => AttemptLabel::Status(status.as_u16()),
            Attempt::Transport(e) => AttemptLabel::Transport(e.kind.label()),
            Attempt::Oversized { status, .. } => AttemptLabel::Status(status.as_u16()),
        }
    }

    /// `retry_on` statuses, timeouts and network errors are worth another
    /// try. 404 on an endpoint that addresses an existing record means the
    /// record is gone; any other status is the provider's final answer.
    pub fn classify(self, endpoint: EndpointKind, retry_on: &[u16]) -> Verdict {
        let (status, retry_after, body) = match self {
            Attempt::Transport(e) => {
                return Verdict::Retryable(Failure {
                    kind: FailureKind::Transient,
                    status: None,
                    body: None,
                    retry_after: None,
                    cause: e.to_string(),
                });
            }
            Attempt::Oversized { status, limit } => {
                return Verdict::Final(Failure {
                    kind: FailureKind::Oversized,
                    status: Some(status),
                    body: None,
                    retry_after: None,
                    cause: format!(
                        "{status}: the response body is longer than max_response_bytes ({limit})"
                    ),
                });
            }
            Attempt::Response {
                status,
                retry_after,
                body,
            } => (status, retry_after, body),
        };
        if status.is_success() {
            return Verdict::Success { status, body };
        }
        let failure = |kind, cause: String| Failure {
            kind,
            status: Some(status),
            body: Some(body),
            retry_after,
            cause,
        };
        let addresses_existing = matches!(
            endpoint,
            EndpointKind::Update | EndpointKind::Delete | EndpointKind::Read
        );
        if retry_on.contains(&status.as_u16()) {
            Verdict::Retryable(failure(FailureKind::Transient, status.to_string()))
        } else if status == StatusCode::NOT_FOUND && addresses_existing {
            let cause = format!("{status}: the record is gone at the provider");
            Verdict::Final(failure(FailureKind::NotFound, cause))
        } else if status.is_redirection() {
            let cause = format!("{status}: redirects are not followed, check base_url");
            Verdict::Final(failure(FailureKind::Rejected, cause))
        } else {
            Verdict::Final(failure(FailureKind::Rejected, status.to_string()))
        }
    }
}

impl Verdict {
    /// The HTTP status, when a response came back.
    pub fn status(&self) -> Option<u16> {
        match self {
            Verdict::Success { status, .. } => Some(status.as_u16()),
            Verdict::Final(failure) | Verdict::Retryable(failure) => {
                failure.status.map(|s| s.as_u16())
            }
        }
    }

    pub fn health(&self) -> ProviderHealth {
        match self {
            Verdict::Success { .. } => ProviderHealth::Up,
            Verdict::Final(failure) | Verdict::Retryable(failure) => failure.health(),
        }
    }
}

impl Failure {
    /// Down when the provider failed (a retryable failure, an unlisted 5xx);
    /// a 4xx is the record's fault, not a sign of an outage.
    pub fn health(&self) -> ProviderHealth {
        let provider_failed =
            self.kind == FailureKind::Transient || self.status.is_none_or(|s| s.is_server_error());
        if provider_failed {
            ProviderHealth::Down
        } else {
            ProviderHealth::Up
        }
    }

    /// The request's error after its last attempt; `what` names the call
    /// (`hubspot update contact`). A transient failure with no attempt left
    /// means the retries are exhausted.
    pub fn into_error(self, what: &str, attempts: u32) -> ApiError {
        let (kind, message) = match self.kind {
            FailureKind::Transient => (
                ApiErrorKind::RetriesExhausted,
                format!("{what}: failed after {attempts} attempts: {}", self.cause),
            ),
            FailureKind::Rejected => (ApiErrorKind::Rejected, format!("{what}: {}", self.cause)),
            FailureKind::NotFound => (ApiErrorKind::NotFound, format!("{what}: {}", self.cause)),
            FailureKind::Oversized => (
                ApiErrorKind::ResponseTooLarge,
                format!("{what}: {}", self.cause),
            ),
        };
        ApiError {
            kind,
            status: self.status.map(|s| s.as_u16()),
            body: self.body.as_deref().and_then(truncate),
            attempts,
            message,
        }
    }
}

/// An error body for a dead letter: lossy UTF-8, at most [`BODY_LIMIT`]
/// bytes; `None` when empty.
fn truncate(body: &[u8]) -> Option<String> {
    if body.is_empty() {
        return None;
    }
    // A character cut at the byte limit decodes as U+FFFD, which may push the
    // text past the limit: cut again on a character boundary.
    let text = String::from_utf8_lossy(&body[..body.len().min(BODY_LIMIT)]);
    let mut end = text.len().min(BODY_LIMIT);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Some(text[..end].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const RETRY_ON: [u16; 2] = [429, 503];

    fn verdict(status: u16, endpoint: EndpointKind) -> Verdict {
        let attempt = Attempt::Response {
            status: StatusCode::from_u16(status).unwrap(),
            retry_after: None,
            body: Bytes::from_static(b"{}"),
        };
        attempt.classify(endpoint, &RETRY_ON)
    }

    /// The error kind a final answer gives, `None` for success or a retry.
    fn final_kind(status: u16, endpoint: EndpointKind) -> Option<FailureKind> {
        match verdict(status, endpoint) {
            Verdict::Final(failure) => Some(failure.kind),
            Verdict::Success { .. } | Verdict::Retryable(_) => None,
        }
    }

    #[test]
    fn statuses_are_classified_by_retry_on_and_endpoint() {
        use EndpointKind::*;
        assert!(matches!(verdict(204, Delete), Verdict::Success { .. }));
        assert!(matches!(verdict(503, Create), Verdict::Retryable(_)));
        assert!(matches!(verdict(429, Update), Verdict::Retryable(_)));
        for endpoint in [Update, Delete, Read] {
            assert_eq!(final_kind(404, endpoint), Some(FailureKind::NotFound));
        }
        for endpoint in [Create, Upsert] {
            assert_eq!(final_kind(404, endpoint), Some(FailureKind::Rejected));
        }
        assert_eq!(final_kind(400, Create), Some(FailureKind::Rejected));
        assert_eq!(final_kind(301, Create), Some(FailureKind::Rejected));
        // Outside retry_on even though it is a 5xx: the operator's choice.
        assert_eq!(final_kind(500, Create), Some(FailureKind::Rejected));
    }

    #[test]
    fn only_provider_failures_count_against_its_health() {
        use EndpointKind::*;
        assert_eq!(verdict(200, Create).health(), ProviderHealth::Up);
        assert_eq!(verdict(400, Create).health(), ProviderHealth::Up);
        assert_eq!(verdict(404, Update).health(), ProviderHealth::Up);
        assert_eq!(verdict(503, Create).health(), ProviderHealth::Down);
        assert_eq!(verdict(501, Create).health(), ProviderHealth::Down);
    }

    #[test]
    fn an_unlisted_5xx_is_the_providers_fault() {
        let Verdict::Final(failure) = verdict(501, EndpointKind::Create) else {
            panic!("501 is not in retry_on");
        };
        let err = failure.into_error("crm create contact", 1);
        assert_eq!(err.fault(), crate::error::Fault::External);
        assert_eq!(err.message, "crm create contact: 501 Not Implemented");
    }

    #[test]
    fn error_bodies_are_cut_to_the_limit_on_a_character_boundary() {
        assert_eq!(truncate(b""), None);
        assert_eq!(truncate(b"oops").as_deref(), Some("oops"));
        // "é" is two bytes: after one "x", the limit falls inside an "é".
        let long = format!("x{}", "é".repeat(BODY_LIMIT));
        let cut = truncate(long.as_bytes()).unwrap();
        assert_eq!(cut, format!("x{}", "é".repeat(BODY_LIMIT / 2 - 1)));
    }
}
