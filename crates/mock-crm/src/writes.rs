//! Who changed a record: syncflow through the API, or a CRM user through the
//! admin edits. Two-way sync has to tell its own writes (echoes) from the
//! users', so the mock counts them apart.
//!
//! The stores count here rather than the gateway looking at statuses: a
//! batch creates up to 100 records in one reply (and some of them in a 207).

use super::snapshot::Counters;

/// Where a write came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Origin {
    /// The authenticated API, that is syncflow.
    Api,
    /// An admin edit: a person in the CRM's UI.
    User,
}

/// What a successful write did to its record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Write {
    Create,
    /// `changed` is false for an update that left every field as it was.
    Update {
        changed: bool,
    },
    Delete,
}

/// Successful writes of one API, by origin.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct WriteCounts {
    api: u64,
    api_noop: u64,
    api_creates: u64,
    user: u64,
}

impl WriteCounts {
    /// Counts one successful create, update or delete of one record.
    pub(super) fn count(&mut self, origin: Origin, write: Write) {
        match origin {
            Origin::Api => {
                self.api += 1;
                match write {
                    Write::Create => self.api_creates += 1,
                    Write::Update { changed: false } => self.api_noop += 1,
                    Write::Update { changed: true } | Write::Delete => {}
                }
            }
            Origin::User => self.user += 1,
        }
    }

    pub(super) fn fill(&self, counters: &mut Counters) {
        counters.creates = self.api_creates;
        counters.api_writes = self.api;
        counters.api_noop_writes = self.api_noop;
        counters.user_writes = self.user;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noop_api_writes_are_api_writes_too_and_users_are_apart() {
        let mut writes = WriteCounts::default();
        writes.count(Origin::Api, Write::Update { changed: true });
        writes.count(Origin::Api, Write::Update { changed: false });
        writes.count(Origin::User, Write::Update { changed: false });
        let mut counters = Counters::default();
        writes.fill(&mut counters);
        assert_eq!(
            (
                counters.api_writes,
                counters.api_noop_writes,
                counters.user_writes
            ),
            (2, 1, 1)
        );
    }

    #[test]
    fn creates_are_the_api_s_only() {
        let mut writes = WriteCounts::default();
        writes.count(Origin::Api, Write::Create);
        writes.count(Origin::Api, Write::Create);
        writes.count(Origin::Api, Write::Delete);
        writes.count(Origin::User, Write::Create);
        let mut counters = Counters::default();
        writes.fill(&mut counters);
        assert_eq!(
            (counters.creates, counters.api_writes, counters.user_writes),
            (2, 3, 1)
        );
    }
}
