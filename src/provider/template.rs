//! Endpoint paths with `{key}` and `{id}` placeholders.

use std::fmt::Write;

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
        let parts = split(path, &[("key", Part::Key), ("id", Part::Id)])?
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

/// A piece of a path: text as written, or one of the placeholders given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece<P> {
    Literal(String),
    Placeholder(P),
}

/// Splits `path` at its `{name}` placeholders, each one of `placeholders`.
/// Fails on an unknown or unterminated placeholder, or a path that does not
/// start with `/`.
pub fn split<P: Clone>(path: &str, placeholders: &[(&str, P)]) -> Result<Vec<Piece<P>>, String> {
    if !path.starts_with('/') {
        return Err(format!("path \"{path}\" must start with \"/\""));
    }
    let mut pieces = Vec::new();
    let mut rest = path;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            pieces.push(Piece::Literal(rest[..open].to_string()));
        }
        let close = rest[open..]
            .find('}')
            .ok_or_else(|| format!("unterminated placeholder in path \"{path}\""))?;
        let name = &rest[open + 1..open + close];
        let Some((_, placeholder)) = placeholders.iter().find(|(n, _)| *n == name) else {
            let names: Vec<&str> = placeholders.iter().map(|(n, _)| *n).collect();
            let listed: Vec<String> = names.iter().map(|n| format!("{{{n}}}")).collect();
            let listed = match listed.split_last() {
                Some((last, [])) => last.clone(),
                Some((last, init)) => format!("{} and {last}", init.join(", ")),
                None => String::new(),
            };
            return Err(format!(
                "unknown placeholder \"{{{name}}}\" in path \"{path}\"{}; placeholders are {listed}",
                crate::config::suggest::did_you_mean(name, names.iter().copied())
            ));
        };
        pieces.push(Piece::Placeholder(placeholder.clone()));
        rest = &rest[open + close + 1..];
    }
    if !rest.is_empty() {
        pieces.push(Piece::Literal(rest.to_string()));
    }
    Ok(pieces)
}

/// Percent-encodes `value` as one path segment. A value that is all dots
/// (`.`, `..`) has its dots encoded too: as a segment of its own, servers
/// would resolve it to the current or parent resource.
fn encode_segment(out: &mut String, value: &str) {
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
