//! Who should hold what: a pure function of the live members, the same on
//! every instance that sees the same members, so instances agree without
//! talking to each other (the leases make a disagreement harmless: an
//! instance takes a partition only once its holder let go or expired).

use std::fmt;

/// What an instance holds: one partition of every pipeline's keys, or the
/// splitter of one pipeline (the reader of its source that routes each
/// message to its key's partition).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Resource {
    Partition(u32),
    Splitter(String),
}

impl Resource {
    /// Its lease's key in the fleet bucket.
    pub fn lease_key(&self) -> String {
        match self {
            Resource::Partition(p) => format!("lease.partition.{p}"),
            Resource::Splitter(pipeline) => format!("lease.splitter.{pipeline}"),
        }
    }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Resource::Partition(p) => write!(f, "partition {p}"),
            Resource::Splitter(pipeline) => write!(f, "splitter of {pipeline}"),
        }
    }
}

/// The member that should hold `resource`; `members` sorted, none when empty.
///
/// Partitions go round-robin over the sorted members, so each holds its
/// share within one; splitters by a hash of the pipeline's name, so
/// pipelines' splitters spread too.
pub fn owner<'a>(resource: &Resource, members: &'a [String]) -> Option<&'a str> {
    if members.is_empty() {
        return None;
    }
    let n = members.len() as u64;
    let at = match resource {
        Resource::Partition(p) => u64::from(*p) % n,
        Resource::Splitter(pipeline) => fnv1a(pipeline.as_bytes()) % n,
    };
    Some(members[at as usize].as_str())
}

/// The partition of a key, out of `partitions`.
///
/// FNV-1a rather than std's hasher: every instance, whatever its build,
/// must put a key in the same partition, and std does not promise its
/// algorithm across releases.
pub fn partition_of(key: &str, partitions: u32) -> u32 {
    (fnv1a(key.as_bytes()) % u64::from(partitions.max(1))) as u32
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn partitions_spread_evenly_and_move_only_as_members_change() {
        let three = members(&["a", "b", "c"]);
        let held = |m: &[String], who: &str| {
            (0..12)
                .filter(|p| owner(&Resource::Partition(*p), m) == Some(who))
                .count()
        };
        assert_eq!(
            [held(&three, "a"), held(&three, "b"), held(&three, "c")],
            [4, 4, 4]
        );
        let two = members(&["a", "c"]);
        assert_eq!([held(&two, "a"), held(&two, "c")], [6, 6]);
        assert_eq!(owner(&Resource::Partition(0), &[]), None);
    }

    #[test]
    fn a_key_always_lands_in_the_same_partition() {
        // Fixed values: a change here would move keys between instances
        // of different versions in one fleet.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        let spread: std::collections::BTreeSet<u32> = (0..200)
            .map(|i| partition_of(&format!("contact-{i}"), 12))
            .collect();
        assert_eq!(spread.len(), 12, "200 keys reach every partition");
    }
}
