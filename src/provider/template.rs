//! Endpoint paths with `{key}` and `{id}` placeholders.

use std::fmt::Write;

use crate::config::placeholders::{Piece, split};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    /// The record key.
    Key,
    /// The provider's id of the record, from the id map.
    Id,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathTemplate {
    parts: Vec<Part>,
}

impl PathTemplate {
    /// Fails on an unknown or unterminated placeholder, or a path that does
    /// not start with `/`.
    pub fn parse(path: &str) -> Result<Self, String> {
        if !path.starts_with('/') {
            return Err(format!("path \"{path}\" must start with \"/\""));
        }
        let parts = split("path", path, &[("key", Part::Key), ("id", Part::Id)])?
            .into_iter()
            .map(|piece| match piece {
                Piece::Literal(s) => Part::Literal(s),
                Piece::Placeholder(p) => p,
            })
            .collect();
        Ok(PathTemplate { parts })
    }

    pub fn needs_id(&self) -> bool {
        self.parts.contains(&Part::Id)
    }

    /// The path with placeholders filled in, each value percent-encoded as
    /// one path segment.
    pub fn render(&self, key: &str, id: Option<&str>) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(s) => out.push_str(s),
                Part::Key => encode_segment(&mut out, key),
                Part::Id => encode_segment(&mut out, id.unwrap_or_default()),
            }
        }
        out
    }
}

/// Percent-encodes `value` as one path segment. A value that is all dots
/// (`.`, `..`) has its dots encoded too: as a segment of its own, servers
/// would resolve it to the current or parent resource.
pub(crate) fn encode_segment(out: &mut String, value: &str) {
    if !value.is_empty() && value.bytes().all(|b| b == b'.') {
        out.push_str(&"%2E".repeat(value.len()));
        return;
    }
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_placeholders_encoded() {
        let t = PathTemplate::parse("/sobjects/Contact/Internal_Id__c/{key}").unwrap();
        assert_eq!(
            t.render("a/b c", None),
            "/sobjects/Contact/Internal_Id__c/a%2Fb%20c"
        );
        let t = PathTemplate::parse("/contacts/{id}").unwrap();
        assert!(t.needs_id());
        assert_eq!(t.render("k", Some("42")), "/contacts/42");
    }

    #[test]
    fn dot_segments_cannot_reach_another_resource() {
        let t = PathTemplate::parse("/contacts/{key}").unwrap();
        assert_eq!(t.render("..", None), "/contacts/%2E%2E");
        assert_eq!(t.render(".", None), "/contacts/%2E");
        assert_eq!(t.render("../admin", None), "/contacts/..%2Fadmin");
        assert_eq!(t.render("a.b", None), "/contacts/a.b");
        let t = PathTemplate::parse("/contacts/{id}").unwrap();
        assert_eq!(t.render("k", Some("..")), "/contacts/%2E%2E");
    }

    #[test]
    fn rejects_bad_templates() {
        assert!(PathTemplate::parse("contacts").is_err());
        assert!(PathTemplate::parse("/c/{id").is_err());
        let err = PathTemplate::parse("/c/{idd}").unwrap_err();
        assert!(err.contains("did you mean \"id\""), "{err}");
    }
}
