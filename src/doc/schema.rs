//! [`Doc`] as a representation jsonschema validates (its `Json` trait), so
//! an input schema checks the decoded message in place instead of a
//! `Value` copy of it.

use std::borrow::Cow;

use jsonschema::json::{Array, Json, Node, NodeIdentity, Object};
use jsonschema::types::JsonType;
use serde_json::{Number, Value};

use super::{Doc, Member, member};

/// The marker jsonschema's `Validator<DocJson>` is built for.
pub struct DocJson;

impl Json for DocJson {
    type Node<'a> = &'a Doc<'a>;
    type PreparedKey = Box<str>;
    type StringBuffer = Doc<'static>;

    // A lookup scans the members: one pass over them (for `required`)
    // costs less than a lookup per required name well past 16 members.
    const KEYS_PER_LOOKUP: usize = 16;

    fn prepare_key(key: &str) -> Box<str> {
        key.into()
    }

    fn with_string_node<T>(
        buffer: &mut Doc<'static>,
        string: &str,
        f: impl FnOnce(<Self as Json>::Node<'_>) -> T,
    ) -> T {
        *buffer = Doc::String(Cow::Owned(string.to_owned()));
        f(buffer)
    }
}

impl<'a> Node<'a, DocJson> for &'a Doc<'a> {
    type Object = Members<'a>;
    type Array = &'a [Doc<'a>];
    type Number = &'a Number;

    fn as_object(&self) -> Option<Members<'a>> {
        match self {
            Doc::Object(members) => Some(Members(members)),
            _ => None,
        }
    }

    fn as_array(&self) -> Option<&'a [Doc<'a>]> {
        match self {
            Doc::Array(items) => Some(items),
            _ => None,
        }
    }

    fn as_string(&self) -> Option<Cow<'a, str>> {
        match self {
            Doc::String(s) => Some(Cow::Borrowed(s)),
            _ => None,
        }
    }

    fn as_number(&self) -> Option<&'a Number> {
        match self {
            Doc::Number(n) => Some(n),
            _ => None,
        }
    }

    fn as_boolean(&self) -> Option<bool> {
        match self {
            Doc::Bool(b) => Some(*b),
            _ => None,
        }
    }

    fn is_null(&self) -> bool {
        matches!(self, Doc::Null)
    }

    fn json_type(&self) -> JsonType {
        match self {
            Doc::Null => JsonType::Null,
            Doc::Bool(_) => JsonType::Boolean,
            Doc::Number(_) => JsonType::Number,
            Doc::String(_) => JsonType::String,
            Doc::Array(_) => JsonType::Array,
            Doc::Object(_) => JsonType::Object,
        }
    }

    /// Strings, booleans and null compared in place: an `enum` of statuses
    /// must not copy each record's status into a `Value` first.
    fn equals_value(&self, expected: &Value) -> bool {
        match (self, expected) {
            (Doc::String(s), Value::String(e)) => s == e,
            (Doc::String(_), _) | (_, Value::String(_)) => false,
            (Doc::Bool(b), Value::Bool(e)) => b == e,
            (Doc::Null, Value::Null) => true,
            (Doc::Bool(_) | Doc::Null, _) => false,
            _ => jsonschema::json::cmp::equal(&self.to_value(), expected),
        }
    }

    fn to_value(&self) -> Cow<'a, Value> {
        Cow::Owned(Doc::to_value(self))
    }

    fn identity(&self) -> Option<NodeIdentity> {
        Some(NodeIdentity::new(
            std::ptr::from_ref::<Doc<'a>>(self) as usize
        ))
    }
}

/// An object's members, as jsonschema walks them.
pub struct Members<'a>(&'a [Member<'a>]);

impl<'a> Object<'a, DocJson> for Members<'a> {
    type Node = &'a Doc<'a>;
    type MemberName = &'a str;
    type MembersIter = MembersIter<'a>;

    fn len(&self) -> usize {
        self.0.len()
    }

    fn get(&self, key: &Box<str>) -> Option<&'a Doc<'a>> {
        member(self.0, key)
    }

    fn members(&self) -> MembersIter<'a> {
        MembersIter(self.0.iter())
    }
}

pub struct MembersIter<'a>(std::slice::Iter<'a, Member<'a>>);

impl<'a> Iterator for MembersIter<'a> {
    type Item = (&'a str, &'a Doc<'a>);

    fn next(&mut self) -> Option<Self::Item> {
        self.0.next().map(|(k, v)| (&**k, v))
    }
}

impl<'a> Array<'a, DocJson> for &'a [Doc<'a>] {
    type Node = &'a Doc<'a>;
    type ElementsIter = std::slice::Iter<'a, Doc<'a>>;

    fn len(&self) -> usize {
        <[Doc<'a>]>::len(self)
    }

    fn elements(&self) -> std::slice::Iter<'a, Doc<'a>> {
        self.iter()
    }
}
