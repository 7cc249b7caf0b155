//! A message's JSON as evaluation reads it: strings borrowed from the
//! message's bytes, objects as lists of members.
//!
//! Decoding a bench event into `serde_json::Value` allocated every key and
//! every string (17 blocks for 11 members) and inserted each member into a
//! `BTreeMap`, comparing keys as it went; the whole tree was freed again
//! once the record was mapped. A `Doc` allocates one list per object and
//! copies only strings that hold escapes: 9,500 → 6,100 instructions to
//! decode and drop a bench event (callgrind, bench/README.md). Evaluation
//! (paths, scripts, the input schema) reads it in place; what leaves
//! evaluation (the mapped body, a two-way link's fields) is a `Value`.
//!
//! Objects keep their members in the message's order. A key written twice
//! keeps its last value, at its first place, as `Value` does (which keeps
//! the last); lookups scan the members, which for the handful a record
//! has costs about what a `BTreeMap`'s search did.

mod schema;

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Number, Value};

pub use schema::DocJson;

/// One JSON value; see the module's comment.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Doc<'a> {
    #[default]
    Null,
    Bool(bool),
    Number(Number),
    String(Cow<'a, str>),
    Array(Vec<Doc<'a>>),
    Object(Vec<Member<'a>>),
}

/// An object's member: its name and value.
pub type Member<'a> = (Cow<'a, str>, Doc<'a>);

impl<'a> Doc<'a> {
    /// Parses `text`, borrowing every string that holds no escape. The
    /// grammar, nesting limit and errors are serde_json's.
    pub fn parse(text: &'a str) -> Result<Doc<'a>, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// An object's member named `key`.
    pub fn get(&self, key: &str) -> Option<&Doc<'a>> {
        match self {
            Doc::Object(members) => member(members, key),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Doc::String(s) => Some(s),
            _ => None,
        }
    }

    /// A copy as a `serde_json::Value`.
    pub fn to_value(&self) -> Value {
        match self {
            Doc::Null => Value::Null,
            Doc::Bool(b) => Value::Bool(*b),
            Doc::Number(n) => Value::Number(n.clone()),
            Doc::String(s) => Value::String(s.to_string()),
            Doc::Array(items) => Value::Array(items.iter().map(Doc::to_value).collect()),
            Doc::Object(members) => Value::Object(
                members
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_value()))
                    .collect(),
            ),
        }
    }

    /// The same document owning its strings, to outlive the bytes it was
    /// parsed from.
    pub fn into_owned(self) -> Doc<'static> {
        match self {
            Doc::Null => Doc::Null,
            Doc::Bool(b) => Doc::Bool(b),
            Doc::Number(n) => Doc::Number(n),
            Doc::String(s) => Doc::String(Cow::Owned(s.into_owned())),
            Doc::Array(items) => Doc::Array(items.into_iter().map(Doc::into_owned).collect()),
            Doc::Object(members) => Doc::Object(
                members
                    .into_iter()
                    .map(|(k, v)| (Cow::Owned(k.into_owned()), v.into_owned()))
                    .collect(),
            ),
        }
    }

    /// A document borrowing `value`'s strings.
    pub fn borrowing(value: &'a Value) -> Doc<'a> {
        match value {
            Value::Null => Doc::Null,
            Value::Bool(b) => Doc::Bool(*b),
            Value::Number(n) => Doc::Number(n.clone()),
            Value::String(s) => Doc::String(Cow::Borrowed(s)),
            Value::Array(items) => Doc::Array(items.iter().map(Doc::borrowing).collect()),
            Value::Object(members) => Doc::Object(
                members
                    .iter()
                    .map(|(k, v)| (Cow::Borrowed(k.as_str()), Doc::borrowing(v)))
                    .collect(),
            ),
        }
    }
}

impl From<Value> for Doc<'static> {
    fn from(value: Value) -> Self {
        match value {
            Value::Null => Doc::Null,
            Value::Bool(b) => Doc::Bool(b),
            Value::Number(n) => Doc::Number(n),
            Value::String(s) => Doc::String(Cow::Owned(s)),
            Value::Array(items) => Doc::Array(items.into_iter().map(Doc::from).collect()),
            Value::Object(members) => Doc::Object(
                members
                    .into_iter()
                    .map(|(k, v)| (Cow::Owned(k), Doc::from(v)))
                    .collect(),
            ),
        }
    }
}

impl fmt::Display for Doc<'_> {
    /// As compact JSON, the way `Value` displays.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.to_value(), f)
    }
}

/// The member named `key` of an object's members.
pub fn member<'d, 'a>(members: &'d [Member<'a>], key: &str) -> Option<&'d Doc<'a>> {
    members.iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

impl<'de> Deserialize<'de> for Doc<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(DocVisitor)
    }
}

struct DocVisitor;

impl<'de> Visitor<'de> for DocVisitor {
    type Value = Doc<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_unit<E>(self) -> Result<Doc<'de>, E> {
        Ok(Doc::Null)
    }
    fn visit_bool<E>(self, b: bool) -> Result<Doc<'de>, E> {
        Ok(Doc::Bool(b))
    }
    fn visit_i64<E>(self, i: i64) -> Result<Doc<'de>, E> {
        Ok(Doc::Number(i.into()))
    }
    fn visit_u64<E>(self, u: u64) -> Result<Doc<'de>, E> {
        Ok(Doc::Number(u.into()))
    }
    fn visit_f64<E>(self, f: f64) -> Result<Doc<'de>, E> {
        // As `Value` decodes: a float JSON cannot hold is null.
        Ok(Number::from_f64(f).map_or(Doc::Null, Doc::Number))
    }
    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Doc<'de>, E> {
        Ok(Doc::String(Cow::Borrowed(s)))
    }
    fn visit_str<E>(self, s: &str) -> Result<Doc<'de>, E> {
        Ok(Doc::String(Cow::Owned(s.to_owned())))
    }
    fn visit_string<E>(self, s: String) -> Result<Doc<'de>, E> {
        Ok(Doc::String(Cow::Owned(s)))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Doc<'de>, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Doc::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Doc<'de>, A::Error> {
        let mut members: Vec<Member<'de>> = Vec::new();
        while let Some(Key(name)) = map.next_key()? {
            let value = map.next_value()?;
            // A name written twice is found as it comes while the object
            // is small; past that, in one sort at the end (a scan per
            // member would make a wide object quadratic).
            let known = match members.len() < SCANNED_MEMBERS {
                true => members.iter_mut().find(|(k, _)| *k == name),
                false => None,
            };
            match known {
                Some(slot) => slot.1 = value,
                None => members.push((name, value)),
            }
        }
        if members.len() > SCANNED_MEMBERS {
            keep_last(&mut members);
        }
        Ok(Doc::Object(members))
    }
}

/// Members checked for a repeated name as they come; see `visit_map`.
const SCANNED_MEMBERS: usize = 16;

/// Of members with one name, keeps the first's place and the last's value.
fn keep_last(members: &mut Vec<Member<'_>>) {
    // Names are nearly always distinct: one pass through a set says so for
    // a third of what the sort below costs (a throwaway program, 209
    // members: 173,000 → 117,000 instructions to decode and drop the
    // event, against 284,000 into a `Value`).
    let mut names = std::collections::HashSet::with_capacity_and_hasher(
        members.len(),
        foldhash::fast::RandomState::default(),
    );
    if members.iter().all(|(name, _)| names.insert(name.as_ref())) {
        return;
    }
    let mut order: Vec<usize> = (0..members.len()).collect();
    // Stable: within one name, the indices stay in the order written.
    order.sort_by(|&a, &b| members[a].0.cmp(&members[b].0));
    let runs: Vec<&[usize]> = order
        .chunk_by(|&a, &b| members[a].0 == members[b].0)
        .filter(|run| run.len() > 1)
        .collect();
    let mut gone = vec![false; members.len()];
    for run in runs {
        let (first, last) = (run[0], run[run.len() - 1]);
        members[first].1 = std::mem::take(&mut members[last].1);
        for &i in &run[1..] {
            gone[i] = true;
        }
    }
    let mut i = 0;
    members.retain(|_| {
        i += 1;
        !gone[i - 1]
    });
}

/// A member's name, borrowed when it holds no escape.
struct Key<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a member name")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E>(self, s: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s)))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_what_value_parses_and_borrows_plain_strings() {
        let text = r#"{"op":"c","after":{"id":"7","email":"a@b.c","n":-3,"big":18446744073709551615,"f":1.5,"ok":true,"none":null,"tags":["x","y\"z"],"esc":"line\nbreak","\u00e9":1}}"#;
        let doc = Doc::parse(text).unwrap();
        assert_eq!(doc.to_value(), serde_json::from_str::<Value>(text).unwrap());
        let after = doc.get("after").unwrap();
        assert!(matches!(
            after.get("email"),
            Some(Doc::String(Cow::Borrowed("a@b.c")))
        ));
        // A string with an escape is decoded into its own copy.
        assert!(matches!(after.get("esc"), Some(Doc::String(Cow::Owned(s))) if s == "line\nbreak"));
        assert_eq!(after.get("é"), Some(&Doc::Number(1.into())));
        assert_eq!(after.get("missing"), None);
        assert_eq!(doc.get("op").and_then(Doc::as_str), Some("c"));
    }

    #[test]
    fn a_name_written_twice_keeps_its_last_value_as_value_does() {
        let text = r#"{"a":1,"b":2,"a":{"x":3}}"#;
        let doc = Doc::parse(text).unwrap();
        assert_eq!(doc.get("a"), Some(&Doc::borrowing(&json!({"x": 3}))));
        assert_eq!(doc.to_value(), serde_json::from_str::<Value>(text).unwrap());
        let Doc::Object(members) = &doc else { panic!() };
        assert_eq!(members.len(), 2);
    }

    #[test]
    fn a_wide_object_with_repeated_names_keeps_the_last_values() {
        let mut text = String::from("{");
        for i in 0..100 {
            text.push_str(&format!("\"k{}\":{i},", i % 40));
        }
        text.push_str("\"k3\":\"last\"}");
        let doc = Doc::parse(&text).unwrap();
        assert_eq!(
            doc.to_value(),
            serde_json::from_str::<Value>(&text).unwrap()
        );
        let Doc::Object(members) = &doc else { panic!() };
        assert_eq!(members.len(), 40);
        // Each name at its first place, with its last value.
        assert_eq!(members[0], (Cow::Borrowed("k0"), Doc::Number(80.into())));
        assert_eq!(members[3].1, Doc::String(Cow::Borrowed("last")));
        assert_eq!(doc.get("k39"), Some(&Doc::Number(79.into())));
    }

    #[test]
    fn a_wide_object_of_distinct_names_keeps_its_order() {
        let members: Vec<String> = (0..50).map(|i| format!("\"f{i}\":{i}")).collect();
        let text = format!("{{{}}}", members.join(","));
        let doc = Doc::parse(&text).unwrap();
        let Doc::Object(members) = &doc else { panic!() };
        let names: Vec<&str> = members.iter().map(|(k, _)| k.as_ref()).collect();
        let want: Vec<String> = (0..50).map(|i| format!("f{i}")).collect();
        assert_eq!(names, want);
        assert_eq!(
            doc.to_value(),
            serde_json::from_str::<Value>(&text).unwrap()
        );
    }

    #[test]
    fn errors_and_limits_are_serde_jsons() {
        for bad in ["", "{", r#"{"a":}"#, "[1,]", "nul", r#"{"a":1}x"#] {
            let ours = Doc::parse(bad).unwrap_err().to_string();
            let theirs = serde_json::from_str::<Value>(bad).unwrap_err().to_string();
            assert_eq!(ours, theirs, "{bad:?}");
        }
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert!(Doc::parse(&deep).is_err());
        assert!(serde_json::from_str::<Value>(&deep).is_err());
    }

    #[test]
    fn conversions_round_trip() {
        let value = json!({"a": [1, "two", {"three": null}], "b": {"c": false}, "d": 2.5});
        assert_eq!(Doc::borrowing(&value).to_value(), value);
        assert_eq!(Doc::from(value.clone()).to_value(), value);
        let owned: Doc<'static> = Doc::borrowing(&value).into_owned();
        assert_eq!(owned.to_value(), value);
        assert_eq!(Doc::borrowing(&value).to_string(), value.to_string());
    }
}
