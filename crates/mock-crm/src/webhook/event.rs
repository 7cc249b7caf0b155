//! HubSpot's webhook events for contacts, and how a change of a contact's
//! properties becomes them.

use serde::Serialize;
use serde_json::{Map, Value};

use crate::writes::Origin;

/// What happened to a contact, one event's worth.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Change {
    Created,
    /// A property now holds `value` (as HubSpot's string), or was cleared.
    Property {
        name: String,
        value: Option<String>,
    },
    Deleted,
}

/// One event of a webhook body, in HubSpot's field names.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Event {
    pub(crate) event_id: u64,
    pub(crate) subscription_id: u64,
    pub(crate) portal_id: u64,
    pub(crate) app_id: u64,
    /// Milliseconds since the Unix epoch, when the change was made.
    pub(crate) occurred_at: u64,
    pub(crate) subscription_type: &'static str,
    /// 0 on the first delivery, then one more per retry.
    pub(crate) attempt_number: u32,
    /// A number when the contact id is one (HubSpot's are), else the string.
    pub(crate) object_id: Value,
    pub(crate) change_source: &'static str,
    /// Only on `contact.propertyChange`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) property_name: Option<String>,
    /// Only on `contact.propertyChange`; null when the property was cleared.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) property_value: Option<Option<String>>,
}

/// What an event needs besides the change: ids and the time.
pub(crate) struct Stamp<'a> {
    pub(crate) event_id: u64,
    pub(crate) portal_id: u64,
    pub(crate) app_id: u64,
    pub(crate) occurred_at: u64,
    pub(crate) object_id: &'a str,
    pub(crate) origin: Origin,
}

impl Event {
    pub(crate) fn new(change: Change, stamp: &Stamp<'_>) -> Event {
        let (subscription_type, subscription_id, property_name, property_value) = match change {
            Change::Created => ("contact.creation", 1, None, None),
            Change::Property { name, value } => {
                ("contact.propertyChange", 2, Some(name), Some(value))
            }
            Change::Deleted => ("contact.deletion", 3, None, None),
        };
        let object_id = match stamp.object_id.parse::<u64>() {
            Ok(number) => Value::from(number),
            Err(_) => Value::from(stamp.object_id),
        };
        Event {
            event_id: stamp.event_id,
            // One subscription per event type, numbered after the app id as
            // HubSpot's are unique per app.
            subscription_id: stamp.app_id * 10 + subscription_id,
            portal_id: stamp.portal_id,
            app_id: stamp.app_id,
            occurred_at: stamp.occurred_at,
            subscription_type,
            attempt_number: 0,
            object_id,
            change_source: match stamp.origin {
                Origin::Api => "INTEGRATION",
                Origin::User => "CRM_UI",
            },
            property_name,
            property_value,
        }
    }
}

/// A property as HubSpot stores and reports it: a string, or nothing.
pub(crate) fn property_string(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        // The API refuses nested values before they reach a record.
        nested => Some(nested.to_string()),
    }
}

/// The property changes of merging `update` into `current`: one per property
/// whose value (as HubSpot's string) differs, in `update`'s order.
pub(crate) fn property_changes(
    current: &Map<String, Value>,
    update: &Map<String, Value>,
) -> Vec<Change> {
    update
        .iter()
        .filter_map(|(name, value)| {
            let new = property_string(Some(value));
            (property_string(current.get(name)) != new).then(|| Change::Property {
                name: name.clone(),
                value: new,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn stamp(object_id: &str) -> Stamp<'_> {
        Stamp {
            event_id: 7,
            portal_id: 62515,
            app_id: 11,
            occurred_at: 1_700_000_000_123,
            object_id,
            origin: Origin::User,
        }
    }

    #[test]
    fn events_have_hubspots_fields() {
        let change = Change::Property {
            name: "email".into(),
            value: Some("a@b.c".into()),
        };
        let event = serde_json::to_value(Event::new(change, &stamp("1234"))).unwrap();
        assert_eq!(
            event,
            json!({
                "eventId": 7, "subscriptionId": 112, "portalId": 62515, "appId": 11,
                "occurredAt": 1_700_000_000_123u64, "subscriptionType": "contact.propertyChange",
                "attemptNumber": 0, "objectId": 1234, "changeSource": "CRM_UI",
                "propertyName": "email", "propertyValue": "a@b.c",
            })
        );
        let created = serde_json::to_value(Event::new(Change::Created, &stamp("x-1"))).unwrap();
        assert_eq!(created["objectId"], "x-1");
        assert_eq!(created["subscriptionType"], "contact.creation");
        assert!(created.get("propertyName").is_none() && created.get("propertyValue").is_none());
        let cleared = Change::Property {
            name: "phone".into(),
            value: None,
        };
        let cleared = serde_json::to_value(Event::new(cleared, &stamp("1"))).unwrap();
        assert_eq!(cleared["propertyValue"], Value::Null);
        assert!(cleared.as_object().unwrap().contains_key("propertyValue"));
    }

    #[test]
    fn only_values_that_change_as_strings_are_changes() {
        let current = json!({"a": "1", "b": "x", "c": "gone", "d": true});
        let update = json!({"a": 1, "b": "y", "c": null, "d": "true", "e": null, "f": ""});
        let changes = property_changes(current.as_object().unwrap(), update.as_object().unwrap());
        let property = |name: &str, value: Option<&str>| Change::Property {
            name: name.into(),
            value: value.map(str::to_owned),
        };
        assert_eq!(
            changes,
            [
                property("b", Some("y")),
                property("c", None),
                property("f", Some("")),
            ]
        );
    }
}
