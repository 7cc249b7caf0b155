//! What both APIs' batch endpoints share: the body's list of items, each
//! kept with its JSON text as sent (what item faults match, as `body_contains`
//! matches the body as sent), and the limit of items per request. Each API
//! words the refusals its own way.

use std::collections::BTreeMap;

use serde_json::error::Category;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// One item of a batch body: an object, with its text as sent.
#[derive(Debug, PartialEq)]
pub(super) struct Item {
    pub(super) text: String,
    pub(super) fields: Map<String, Value>,
}

/// A batch body: its list's items, and the body's other fields.
#[derive(Debug, PartialEq)]
pub(super) struct Listed {
    pub(super) items: Vec<Item>,
    pub(super) others: Map<String, Value>,
}

/// Why a body is not a batch: the whole request is refused.
#[derive(Debug, PartialEq)]
pub(super) enum ListError {
    Unparsable(String),
    /// Not an object with the list (an array) under its name.
    NoList,
    /// The item at this index is not an object.
    NotAnObject(usize),
    /// More items than the API takes: this many.
    TooMany(usize),
}

/// The items of the array `list` of the JSON object `body`, at most `max`.
pub(super) fn items(body: &[u8], list: &str, max: usize) -> Result<Listed, ListError> {
    let mut top =
        serde_json::from_slice::<BTreeMap<String, &RawValue>>(body).map_err(|e| {
            match e.classify() {
                Category::Data => ListError::NoList,
                _ => ListError::Unparsable(e.to_string()),
            }
        })?;
    let raw_items = top.remove(list).ok_or(ListError::NoList)?;
    let raw_items =
        serde_json::from_str::<Vec<&RawValue>>(raw_items.get()).map_err(|_| ListError::NoList)?;
    if raw_items.len() > max {
        return Err(ListError::TooMany(raw_items.len()));
    }
    let items = raw_items
        .into_iter()
        .enumerate()
        .map(|(index, raw)| match serde_json::from_str(raw.get()) {
            Ok(Value::Object(fields)) => Ok(Item {
                text: raw.get().to_owned(),
                fields,
            }),
            _ => Err(ListError::NotAnObject(index)),
        })
        .collect::<Result<_, _>>()?;
    let others = top
        .into_iter()
        .map(|(name, raw)| {
            let value = serde_json::from_str(raw.get()).expect("a raw value is JSON");
            (name, value)
        })
        .collect();
    Ok(Listed { items, others })
}

/// A scalar as text, as the providers' JSON mappers take a string (an id)
/// given as a number or a boolean; `None` for null, objects and arrays.
pub(super) fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn items_keep_their_text_as_sent_and_the_other_fields() {
        let body = br#"{"allOrNone": true, "records": [ {"a" : 1}, {"b":"x y"} ]}"#;
        let listed = items(body, "records", 2).unwrap();
        let texts: Vec<_> = listed.items.iter().map(|i| i.text.as_str()).collect();
        assert_eq!(texts, [r#"{"a" : 1}"#, r#"{"b":"x y"}"#]);
        assert_eq!(listed.items[0].fields["a"], 1);
        assert_eq!(json!(listed.others), json!({"allOrNone": true}));
    }

    #[test]
    fn bodies_that_are_not_batches_are_told_apart() {
        let refusal = |body: &str| items(body.as_bytes(), "inputs", 2).unwrap_err();
        assert!(matches!(refusal("{"), ListError::Unparsable(_)));
        assert!(matches!(refusal("not json"), ListError::Unparsable(_)));
        for no_list in ["[]", "{}", r#"{"inputs": {}}"#, r#"{"records": []}"#, "1"] {
            assert_eq!(refusal(no_list), ListError::NoList, "{no_list}");
        }
        assert_eq!(refusal(r#"{"inputs": [{}, 1]}"#), ListError::NotAnObject(1));
        assert_eq!(
            refusal(r#"{"inputs": [{}, {}, {}]}"#),
            ListError::TooMany(3)
        );
        assert_eq!(items(br#"{"inputs": []}"#, "inputs", 2).unwrap().items, []);
    }

    #[test]
    fn scalars_are_text_and_the_rest_is_not() {
        assert_eq!(scalar_text(&json!("a")).as_deref(), Some("a"));
        assert_eq!(scalar_text(&json!(12)).as_deref(), Some("12"));
        assert_eq!(scalar_text(&json!(null)), None);
        assert_eq!(scalar_text(&json!({})), None);
    }
}
