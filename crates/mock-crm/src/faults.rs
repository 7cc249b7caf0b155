//! Scripted faults: requests matching a rule are answered with the rule's
//! status and body at the fault-injection stage, before authentication, the
//! rate limit and idempotent replays. Tests use them to make one record fail
//! (always, or a few times) while the others go through, for example to run
//! a record's retries out or to have a provider refuse it.

use axum::http::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::reply::Reply;

/// Which of the mock's APIs a [`Fault`] applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MockApi {
    Hubspot,
    Salesforce,
}

/// Answers the requests it matches with `status` and `body`. Every filter
/// that is set must match; a fault without filters matches every request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    /// Only requests with this method (`POST`, `PATCH`, ...).
    #[serde(default)]
    pub method: Option<String>,
    /// Only requests whose path (relative to the API's base URL) contains this.
    #[serde(default)]
    pub path_contains: Option<String>,
    /// Only requests whose body contains this text.
    #[serde(default)]
    pub body_contains: Option<String>,
    /// 503 for a failure worth retrying, 400 for a rejection, ...
    pub status: u16,
    /// The JSON body of the answer; no body when null.
    #[serde(default)]
    pub body: Value,
    /// Answer at most this many requests, then let matching ones through;
    /// every matching request when unset.
    #[serde(default)]
    pub times: Option<u64>,
}

impl Fault {
    /// A fault answering every request whose body contains `text` with `status`.
    pub fn body_contains(text: &str, status: u16) -> Fault {
        Fault {
            method: None,
            path_contains: None,
            body_contains: Some(text.to_owned()),
            status,
            body: Value::Null,
            times: None,
        }
    }

    fn matches(&self, method: &Method, path: &str, body: &[u8]) -> bool {
        self.method
            .as_deref()
            .is_none_or(|m| m.eq_ignore_ascii_case(method.as_str()))
            && self
                .path_contains
                .as_deref()
                .is_none_or(|p| path.contains(p))
            && self
                .body_contains
                .as_deref()
                .is_none_or(|text| contains(body, text.as_bytes()))
    }
}

/// A fault whose status is not an HTTP status.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("fault status {0} is not an HTTP status (100..=999)")]
pub struct FaultError(pub u16);

/// One API's faults, in the order they were added (the first match answers).
#[derive(Default)]
pub(super) struct Faults {
    rules: Vec<Rule>,
}

struct Rule {
    fault: Fault,
    status: StatusCode,
    /// Answers left; `None` = unlimited.
    left: Option<u64>,
}

impl Faults {
    pub(super) fn add(&mut self, fault: Fault) -> Result<(), FaultError> {
        let status = StatusCode::from_u16(fault.status).map_err(|_| FaultError(fault.status))?;
        self.rules.push(Rule {
            left: fault.times,
            status,
            fault,
        });
        Ok(())
    }

    pub(super) fn clear(&mut self) {
        self.rules.clear();
    }

    /// The answer of the first rule that matches and has answers left.
    pub(super) fn answer(&mut self, method: &Method, path: &str, body: &[u8]) -> Option<Reply> {
        if self.rules.is_empty() {
            return None;
        }
        let rule = self
            .rules
            .iter_mut()
            .find(|r| r.left != Some(0) && r.fault.matches(method, path, body))?;
        if let Some(left) = &mut rule.left {
            *left -= 1;
        }
        Some(if rule.fault.body.is_null() {
            Reply::empty(rule.status)
        } else {
            Reply::json(rule.status, &rule.fault.body)
        })
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_set_filter_must_match() {
        let fault = Fault {
            method: Some("post".into()),
            path_contains: Some("/contacts".into()),
            ..Fault::body_contains("x@example.com", 503)
        };
        let body = br#"{"properties":{"email":"x@example.com"}}"#;
        assert!(fault.matches(&Method::POST, "/crm/v3/objects/contacts", body));
        assert!(!fault.matches(&Method::PATCH, "/crm/v3/objects/contacts", body));
        assert!(!fault.matches(&Method::POST, "/crm/v3/objects/deals", body));
        assert!(!fault.matches(&Method::POST, "/crm/v3/objects/contacts", b"{}"));
    }

    #[test]
    fn a_limited_fault_answers_its_times_then_lets_requests_through() {
        let mut faults = Faults::default();
        faults
            .add(Fault {
                times: Some(2),
                body: json!({"message": "busy"}),
                ..Fault::body_contains("k1", 503)
            })
            .unwrap();
        for _ in 0..2 {
            let reply = faults.answer(&Method::POST, "/", b"k1").unwrap();
            assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
        }
        assert!(faults.answer(&Method::POST, "/", b"k1").is_none());
        assert!(faults.answer(&Method::POST, "/", b"k2").is_none());
    }

    #[test]
    fn a_status_that_is_not_http_is_refused() {
        let mut faults = Faults::default();
        assert_eq!(
            faults.add(Fault::body_contains("x", 42)),
            Err(FaultError(42))
        );
    }
}
