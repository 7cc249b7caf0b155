//! Who changed a record: syncflow through the API, or a CRM user through the
//! admin edits. Two-way sync has to tell its own writes (echoes) from the
//! users', so the mock counts them apart.

use super::snapshot::Counters;

/// Where a write came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Origin {
    /// The authenticated API, that is syncflow.
    Api,
    /// An admin edit: a person in the CRM's UI.
    User,
}

/// Successful writes of one API, by origin.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct WriteCounts {
    api: u64,
    api_noop: u64,
    user: u64,
}

impl WriteCounts {
    /// Counts one successful create, update or delete; `changed` is false for
    /// an update that left every field as it was.
    pub(super) fn count(&mut self, origin: Origin, changed: bool) {
        match origin {
            Origin::Api => {
                self.api += 1;
                if !changed {
                    self.api_noop += 1;
                }
            }
            Origin::User => self.user += 1,
        }
    }

    pub(super) fn fill(&self, counters: &mut Counters) {
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
        writes.count(Origin::Api, true);
        writes.count(Origin::Api, false);
        writes.count(Origin::User, false);
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
}
