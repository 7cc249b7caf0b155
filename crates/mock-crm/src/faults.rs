//! Scripted faults: requests matching a rule are answered with the rule's
//! status and body at the fault-injection stage, before authentication, the
//! rate limit and idempotent replays. Tests use them to make one record fail
//! (always, or a few times) while the others go through, for example to run
//! a record's retries out or to have a provider refuse it.
//!
//! A fault with `item_contains` works inside batches instead: it never
//! answers a request, but fails the batch items (inputs, records or ids)
//! whose JSON text contains it, each on its own, with the item error of the
//! fault's status ([`ItemFaults`]), so one record of a batch can fail while
//! the others are applied.

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
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
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
    /// Makes this an item fault: instead of answering a request, it fails
    /// each item of a batch request (an input, a record, or an id of a
    /// collection delete) whose JSON text as sent contains this, with an
    /// item error for `status` and the `message` of `body`, if any. The
    /// other filters still select the batch request. Never matches a
    /// single-record request.
    #[serde(default)]
    pub item_contains: Option<String>,
    /// 503 for a failure worth retrying, 400 for a rejection, ...
    pub status: u16,
    /// The JSON body of the answer; no body when null.
    #[serde(default)]
    pub body: Value,
    /// Answer at most this many requests (fail at most this many items, for
    /// an item fault), then let matching ones through; unlimited when unset.
    #[serde(default)]
    pub times: Option<u64>,
    /// A `Retry-After` header (seconds) on the answer, as a CRM's 429 has.
    #[serde(default)]
    pub retry_after_s: Option<u64>,
}

impl Fault {
    /// A fault answering every request whose body contains `text` with `status`.
    pub fn body_contains(text: &str, status: u16) -> Fault {
        Fault {
            method: None,
            path_contains: None,
            body_contains: Some(text.to_owned()),
            item_contains: None,
            status,
            body: Value::Null,
            times: None,
            retry_after_s: None,
        }
    }

    /// An item fault failing every batch item whose text contains `text`
    /// with the item error for `status`.
    pub fn item_contains(text: &str, status: u16) -> Fault {
        Fault {
            body_contains: None,
            item_contains: Some(text.to_owned()),
            ..Fault::body_contains(text, status)
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

    /// The answer of the first request fault (not an item fault) that
    /// matches and has answers left.
    pub(super) fn answer(&mut self, method: &Method, path: &str, body: &[u8]) -> Option<Reply> {
        if self.rules.is_empty() {
            return None;
        }
        let rule = self.rules.iter_mut().find(|r| {
            r.left != Some(0)
                && r.fault.item_contains.is_none()
                && r.fault.matches(method, path, body)
        })?;
        rule.use_one();
        let reply = if rule.fault.body.is_null() {
            Reply::empty(rule.status)
        } else {
            Reply::json(rule.status, &rule.fault.body)
        };
        Some(match rule.fault.retry_after_s {
            Some(seconds) => reply.with_header("retry-after", seconds),
            None => reply,
        })
    }

    /// The failure of the first item fault with failures left that matches
    /// the batch request and whose `item_contains` is in `item`.
    fn fail_item(&mut self, request: &BatchRequest<'_>, item: &str) -> Option<ItemFault> {
        let rule = self.rules.iter_mut().find(|r| {
            r.left != Some(0)
                && r.fault
                    .item_contains
                    .as_deref()
                    .is_some_and(|text| item.contains(text))
                && r.fault.matches(request.method, request.path, request.body)
        })?;
        rule.use_one();
        Some(ItemFault {
            status: rule.status,
            message: item_message(&rule.fault.body),
        })
    }
}

impl Rule {
    fn use_one(&mut self) {
        if let Some(left) = &mut self.left {
            *left -= 1;
        }
    }
}

/// The `message` of a fault's body (an object, or Salesforce's list of
/// them), else a default.
fn item_message(body: &Value) -> String {
    [&body["message"], &body[0]["message"]]
        .into_iter()
        .find_map(Value::as_str)
        .unwrap_or("injected item failure")
        .to_owned()
}

/// An item of a batch failed by an item fault: the API words it as its item
/// error for `status`.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct ItemFault {
    pub(super) status: StatusCode,
    pub(super) message: String,
}

/// What item faults match a batch request by, besides the item.
struct BatchRequest<'a> {
    method: &'a Method,
    path: &'a str,
    body: &'a [u8],
}

/// The item faults as one request's handler sees them: a batch handler asks
/// about each item before handling it; other handlers never ask.
pub(super) struct ItemFaults<'a> {
    faults: &'a mut Faults,
    request: BatchRequest<'a>,
    failed: u64,
}

impl<'a> ItemFaults<'a> {
    pub(super) fn new(
        faults: &'a mut Faults,
        method: &'a Method,
        path: &'a str,
        body: &'a [u8],
    ) -> Self {
        ItemFaults {
            faults,
            request: BatchRequest { method, path, body },
            failed: 0,
        }
    }

    /// How `item` (its JSON text as sent) fails, if an item fault says so.
    pub(super) fn check(&mut self, item: &str) -> Option<ItemFault> {
        if self.faults.rules.is_empty() {
            return None;
        }
        let failure = self.faults.fail_item(&self.request, item)?;
        self.failed += 1;
        Some(failure)
    }

    /// Items failed so far.
    pub(super) fn failed(&self) -> u64 {
        self.failed
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
    fn item_faults_fail_matching_items_only_and_never_answer_requests() {
        let mut faults = Faults::default();
        faults
            .add(Fault {
                path_contains: Some("batch".into()),
                times: Some(2),
                body: json!({"message": "locked"}),
                ..Fault::item_contains("k1", 409)
            })
            .unwrap();
        faults.add(Fault::item_contains("k2", 500)).unwrap();
        assert!(faults.answer(&Method::POST, "/batch", b"k1 k2").is_none());

        let mut items = ItemFaults::new(&mut faults, &Method::POST, "/batch", b"k1 k2");
        let locked = ItemFault {
            status: StatusCode::CONFLICT,
            message: "locked".into(),
        };
        assert_eq!(items.check(r#"{"id":"k1"}"#), Some(locked.clone()));
        assert_eq!(items.check(r#"{"id":"k3"}"#), None);
        assert_eq!(items.check(r#"{"id":"k1"}"#), Some(locked));
        assert_eq!(
            items.check(r#"{"id":"k1"}"#),
            None,
            "its two failures are spent"
        );
        let injected = items.check("k2").unwrap();
        assert_eq!(
            (injected.status, injected.message.as_str()),
            (StatusCode::INTERNAL_SERVER_ERROR, "injected item failure")
        );
        assert_eq!(items.failed(), 3);

        // The request filters still apply.
        let mut other = ItemFaults::new(&mut faults, &Method::POST, "/single", b"k2");
        assert!(other.check("k1").is_none());
        assert!(
            other.check("k2").is_some(),
            "the k2 fault has no path filter"
        );
    }

    #[test]
    fn item_messages_come_from_either_api_s_error_body() {
        assert_eq!(item_message(&json!({"message": "a"})), "a");
        assert_eq!(item_message(&json!([{"message": "b"}])), "b");
        assert_eq!(item_message(&Value::Null), "injected item failure");
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
