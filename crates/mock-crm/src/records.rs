//! What both APIs' record stores share: body checks, ids and timestamps.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Why a body cannot be a record's fields.
#[derive(Debug, PartialEq)]
pub(super) enum FieldsError {
    Unparsable(String),
    NotAnObject,
    /// The named field holds an object or an array.
    Nested(String),
}

pub(super) fn parse_json(body: &[u8]) -> Result<Value, FieldsError> {
    serde_json::from_slice(body).map_err(|e| FieldsError::Unparsable(e.to_string()))
}

/// An object whose values are all strings, numbers, booleans or null.
pub(super) fn scalar_fields(value: Value) -> Result<Map<String, Value>, FieldsError> {
    let Value::Object(fields) = value else {
        return Err(FieldsError::NotAnObject);
    };
    match fields
        .iter()
        .find(|(_, value)| value.is_object() || value.is_array())
    {
        Some((name, _)) => Err(FieldsError::Nested(name.clone())),
        None => Ok(fields),
    }
}

/// The value of `field` when it is set but is not an email address (null and
/// "" clear the field, so they pass).
pub(super) fn invalid_email<'a>(fields: &'a Map<String, Value>, field: &str) -> Option<&'a Value> {
    match fields.get(field)? {
        Value::Null => None,
        Value::String(s) if s.is_empty() || is_plausible_email(s) => None,
        other => Some(other),
    }
}

/// `local@host.tld`: the shape the providers check, not RFC 5322.
fn is_plausible_email(s: &str) -> bool {
    let Some((local, domain)) = s.split_once('@') else {
        return false;
    };
    let Some((host, tld)) = domain.rsplit_once('.') else {
        return false;
    };
    !local.is_empty()
        && !host.is_empty()
        && !tld.is_empty()
        && !domain.contains('@')
        && !s.contains(char::is_whitespace)
}

/// A number for a new record's id: unique in the process (across resets),
/// and ahead of the ids of an earlier run, since a syncflow id map may outlive
/// both. It follows the clock in microseconds, so that holds as long as
/// records are created at under one per microsecond on average.
pub(super) fn next_record_number() -> u64 {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = unix_micros();
    let advance = |last: u64| Some(now.max(last + 1));
    let previous = LAST
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, advance)
        .expect("advance always succeeds");
    now.max(previous + 1)
}

pub(super) fn unix_micros() -> u64 {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since_epoch.as_micros()).unwrap_or(u64::MAX)
}

pub(super) fn unix_millis() -> u64 {
    unix_micros() / 1000
}

/// Now, as the providers write timestamps: `2024-05-01T12:00:00.123456789Z`.
pub(super) fn now_rfc3339() -> String {
    OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .expect("the current time is within RFC 3339's years")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn plausible_emails_have_a_local_part_a_host_and_a_tld() {
        for good in ["a@b.c", "first.last+tag@example.co.uk"] {
            assert!(is_plausible_email(good), "{good}");
        }
        for bad in ["", "a", "a@b", "@b.c", "a@.c", "a@b.", "a@b@c.d", "a b@c.d"] {
            assert!(!is_plausible_email(bad), "{bad}");
        }
    }

    #[test]
    fn invalid_email_lets_clearing_values_pass() {
        let fields = json!({"e1": null, "e2": "", "e3": "a@b.c", "e4": "nope", "e5": 7});
        let fields = fields.as_object().unwrap();
        for (field, invalid) in [
            ("e1", false),
            ("e2", false),
            ("e3", false),
            ("e4", true),
            ("e5", true),
            ("absent", false),
        ] {
            assert_eq!(invalid_email(fields, field).is_some(), invalid, "{field}");
        }
    }

    #[test]
    fn scalar_fields_refuses_nested_values_and_non_objects() {
        assert_eq!(
            scalar_fields(json!({"a": "x", "b": 1, "c": true, "d": null})).map(|f| f.len()),
            Ok(4)
        );
        assert_eq!(
            scalar_fields(json!({"a": {"b": 1}})),
            Err(FieldsError::Nested("a".into()))
        );
        assert_eq!(scalar_fields(json!([1])), Err(FieldsError::NotAnObject));
        assert!(matches!(parse_json(b"{"), Err(FieldsError::Unparsable(_))));
    }

    #[test]
    fn record_numbers_only_grow() {
        let first = next_record_number();
        assert!(next_record_number() > first);
        assert!(first >= unix_micros() - 1_000_000);
    }
}
