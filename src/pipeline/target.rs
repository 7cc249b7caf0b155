//! Where a pipeline's records go, as compiled: a provider object, or a NATS
//! subject (a template with `{key}` and `{action}`).

use std::sync::Arc;

use crate::action::Action;
use crate::config::placeholders::{Piece, split};
use crate::provider::Provider;

#[derive(Debug, Clone)]
pub enum Target {
    /// An object of a provider's HTTP API.
    Provider {
        provider: Arc<Provider>,
        object: String,
    },
    /// A JetStream subject, for System A's own consumers.
    Subject(SubjectTemplate),
}

impl Target {
    /// The provider, for a provider target.
    pub fn provider(&self) -> Option<&Arc<Provider>> {
        match self {
            Target::Provider { provider, .. } => Some(provider),
            Target::Subject(_) => None,
        }
    }

    /// Requests (or publishes) one instance has in flight at most: sizes
    /// the pipeline's lanes.
    pub fn max_in_flight(&self) -> usize {
        match self {
            Target::Provider { provider, .. } => provider.max_in_flight,
            Target::Subject(_) => SUBJECT_IN_FLIGHT,
        }
    }
}

/// Publishes in flight per pipeline to a subject target: JetStream answers
/// each within a round trip, so a few dozen keep a pipeline busy.
const SUBJECT_IN_FLIGHT: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Key,
    Action,
}

/// A subject with `{key}` and `{action}` placeholders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectTemplate {
    parts: Vec<Part>,
}

impl SubjectTemplate {
    /// Fails on an empty subject, an unknown or unterminated placeholder,
    /// wildcards, spaces or empty tokens.
    pub fn parse(subject: &str) -> Result<Self, String> {
        if subject.is_empty() {
            return Err("the subject is empty".into());
        }
        if subject.contains(['*', '>']) {
            return Err(format!(
                "subject \"{subject}\" has a wildcard: records are published to one subject each"
            ));
        }
        if subject.chars().any(char::is_whitespace) {
            return Err(format!("subject \"{subject}\" contains whitespace"));
        }
        let parts = split(
            "subject",
            subject,
            &[("key", Part::Key), ("action", Part::Action)],
        )?
        .into_iter()
        .map(|piece| match piece {
            Piece::Literal(s) => Part::Literal(s),
            Piece::Placeholder(p) => p,
        })
        .collect();
        let template = SubjectTemplate { parts };
        let sample = template.render("k", Action::Create);
        if sample.split('.').any(str::is_empty) {
            return Err(format!("subject \"{subject}\" has an empty token"));
        }
        Ok(template)
    }

    /// The subject for one record. The key is one token: characters a
    /// subject token cannot hold (`.`, `*`, `>`, whitespace, `%`) are
    /// percent-encoded.
    pub fn render(&self, key: &str, action: Action) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(s) => out.push_str(s),
                Part::Action => out.push_str(action.as_str()),
                Part::Key => {
                    for c in key.chars() {
                        if matches!(c, '.' | '*' | '>' | '%') || c.is_whitespace() || c.is_control()
                        {
                            let mut buf = [0; 4];
                            for b in c.encode_utf8(&mut buf).bytes() {
                                out.push_str(&format!("%{b:02X}"));
                            }
                        } else {
                            out.push(c);
                        }
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_key_and_action_with_the_key_as_one_token() {
        let t = SubjectTemplate::parse("systema.contacts.{action}.{key}").unwrap();
        assert_eq!(t.render("42", Action::Update), "systema.contacts.update.42");
        assert_eq!(
            t.render("a.b c>", Action::Delete),
            "systema.contacts.delete.a%2Eb%20c%3E"
        );
    }

    #[test]
    fn refuses_subjects_that_cannot_be_published_to() {
        for bad in ["", "a.*", "a.>", "a b", "a..b", "a.{id}", "a.{key", ".a"] {
            assert!(SubjectTemplate::parse(bad).is_err(), "{bad:?}");
        }
        let e = SubjectTemplate::parse("a.{keys}").unwrap_err();
        assert!(e.contains("did you mean \"key\""), "{e}");
    }
}
