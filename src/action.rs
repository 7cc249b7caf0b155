//! What a record asks of the provider.

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Create,
    Update,
    /// The object's `upsert` endpoint when it has one; otherwise update when
    /// the id map knows the key, else create.
    Upsert,
    Delete,
    Read,
    Skip,
}

impl Action {
    pub const NAMES: [&'static str; 6] = ["create", "update", "upsert", "delete", "read", "skip"];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::Update => "update",
            Action::Upsert => "upsert",
            Action::Delete => "delete",
            Action::Read => "read",
            Action::Skip => "skip",
        }
    }

    /// Whether the request carries the mapped record as its body.
    pub fn sends_body(self) -> bool {
        matches!(self, Action::Create | Action::Update | Action::Upsert)
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Action {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "create" => Action::Create,
            "update" => Action::Update,
            "upsert" => Action::Upsert,
            "delete" => Action::Delete,
            "read" => Action::Read,
            "skip" => Action::Skip,
            _ => {
                return Err(format!(
                    "unknown action \"{s}\"{}; expected one of {}",
                    crate::config::suggest::did_you_mean(s, Action::NAMES),
                    Action::NAMES.join(", ")
                ));
            }
        })
    }
}
