//! A mapping bug that dead-letters records, and its fix, for the tests of
//! what operators do with dead letters (`run_dlq`, `run_status_page`).

use serde_json::json;

use super::contacts;
use super::harness::Harness;

pub const MAPPING: &str = "pipelines/contacts-to-hubspot.yaml";
/// Inactive contacts get a lifecycle stage HubSpot's schema refuses.
pub const BUGGY: &str = r#"  properties.lifecyclestage: { expr: 'if record.status == "active" { "customer" } else if record.status == "inactive" { "inactive" } else { "lead" }' }"#;
/// Inactive contacts are "other".
pub const FIXED: &str = r#"  properties.lifecyclestage: { expr: 'if record.status == "active" { "customer" } else if record.status == "inactive" { "other" } else { "lead" }' }"#;

/// Puts the bug in place (before `syncflow run` starts).
pub fn introduce(h: &Harness) {
    h.set_line(MAPPING, "properties.lifecyclestage:", BUGGY);
}

/// Fixes it (a hot reload when syncflow runs).
pub fn fix(h: &Harness) {
    h.set_line(MAPPING, "properties.lifecyclestage:", FIXED);
}

/// Publishes a create of each key (inactive when `inactive(key)`), then a
/// message that is not JSON.
pub async fn publish(
    h: &Harness,
    keys: impl IntoIterator<Item = u32>,
    inactive: impl Fn(u32) -> bool,
) {
    for key in keys {
        let mut ev = contacts::created(key);
        if inactive(key) {
            ev.record["status"] = json!("inactive");
        }
        h.publish(
            &format!("cdc.contacts.{key}"),
            &format!("c{key}"),
            &ev.payload(),
        )
        .await;
    }
    h.publish("cdc.contacts.x", "junk", b"not json").await;
}
