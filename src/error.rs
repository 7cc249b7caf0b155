//! Error classification shared by every stage.
//!
//! Each failure says whose fault it is and whether retrying can help, because
//! that is exactly the decision the executor makes for every record: retry it
//! with backoff, or send it to the dead-letter subject and move on.

use std::fmt;

/// Who caused a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The operator's config or the record itself: fix the data or the config.
    User,
    /// A system outside syncflow (the provider, NATS, Redis).
    External,
    /// A bug or an unexpected state inside syncflow.
    Internal,
}

/// Whether retrying the same operation later can succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    WithBackoff,
    No,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Fault::User => "user",
            Fault::External => "external",
            Fault::Internal => "internal",
        })
    }
}
