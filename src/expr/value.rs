//! JSON ⇄ Rhai values, without a serde round trip on the per-record path.

use rhai::{Dynamic, Map};
use serde_json::Value;

use crate::doc::Doc;

/// A decoded message (or part of one) as a Rhai value.
pub fn from_doc(value: &Doc<'_>) -> Dynamic {
    match value {
        Doc::Null => Dynamic::UNIT,
        Doc::Bool(b) => Dynamic::from_bool(*b),
        Doc::Number(n) => match n.as_i64() {
            Some(i) => Dynamic::from_int(i),
            None => Dynamic::from_float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Doc::String(s) => Dynamic::from(rhai::ImmutableString::from(&**s)),
        Doc::Array(items) => Dynamic::from_array(items.iter().map(from_doc).collect()),
        Doc::Object(fields) => {
            let map: Map = fields
                .iter()
                .map(|(k, v)| (k.as_ref().into(), from_doc(v)))
                .collect();
            Dynamic::from_map(map)
        }
    }
}

/// `()` becomes `None`: a mapping expression returning `()` leaves its field out.
pub fn to_json(value: Dynamic) -> Result<Option<Value>, String> {
    if value.is_unit() {
        return Ok(None);
    }
    convert(&value).map(Some)
}

/// Directly for the types scripts return (a serde round trip costs a
/// record's mapping more than the script itself); serde for the rest.
fn convert(value: &Dynamic) -> Result<Value, String> {
    if value.is_unit() {
        return Ok(Value::Null);
    }
    if let Ok(s) = value.as_immutable_string_ref() {
        return Ok(Value::String(s.as_str().to_owned()));
    }
    if let Ok(i) = value.as_int() {
        return Ok(Value::from(i));
    }
    if let Ok(b) = value.as_bool() {
        return Ok(Value::Bool(b));
    }
    if let Ok(f) = value.as_float() {
        return serde_json::Number::from_f64(f)
            .map(Value::Number)
            .ok_or_else(|| format!("cannot turn the script's float {f} into JSON"));
    }
    if value.is_array() {
        let items = value.read_lock::<rhai::Array>().expect("checked: an array");
        return items
            .iter()
            .map(convert)
            .collect::<Result<_, _>>()
            .map(Value::Array);
    }
    if value.is_map() {
        let fields = value.read_lock::<Map>().expect("checked: a map");
        return fields
            .iter()
            .map(|(k, v)| Ok((k.to_string(), convert(v)?)))
            .collect::<Result<_, _>>()
            .map(Value::Object);
    }
    rhai::serde::from_dynamic::<Value>(value).map_err(|e| {
        format!(
            "cannot turn the script's {} result into JSON: {e}",
            value.type_name()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn round_trips() {
        let v = json!({"a": 1, "b": [true, 1.5, "x"], "c": {"d": "e"}});
        assert_eq!(to_json(from_doc(&Doc::borrowing(&v))).unwrap(), Some(v));
        assert_eq!(to_json(Dynamic::UNIT).unwrap(), None);
        assert_eq!(to_json(Dynamic::from("x")).unwrap(), Some(json!("x")));
        assert_eq!(to_json(Dynamic::from_float(1.5)).unwrap(), Some(json!(1.5)));
        assert!(to_json(Dynamic::from_float(f64::NAN)).is_err());
        // A type with no JSON form is an error naming it.
        let err = to_json(Dynamic::from(std::time::Instant::now())).unwrap_err();
        assert!(err.contains("cannot turn"), "{err}");
    }
}
