//! Who should hold what: a pure function of the live members, the same on
//! every instance that sees the same members, so instances agree without
//! talking to each other (the leases make a disagreement harmless: an
//! instance takes a partition only once its holder let go or expired).

use std::fmt;

use crate::fnv::hash as fnv1a;

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

/// Who should hold each partition (`members` sorted; empty when none).
///
/// Rendezvous hashing with bounded loads: each partition goes to the
/// member that ranks it highest (a hash of member and partition) among
/// those not yet holding their share (`partitions / members`, rounded up).
/// Every member holds its share within one, and when a member joins or
/// leaves, mostly its own share moves: a restarted instance (a new name)
/// takes partitions from everyone a little rather than shifting them all
/// round, and each move is a hand-over that pauses that partition.
pub fn partition_owners(partitions: u32, members: &[String]) -> Vec<&str> {
    if members.is_empty() {
        return Vec::new();
    }
    let cap = (partitions as usize).div_ceil(members.len());
    let mut load = vec![0usize; members.len()];
    let mut ranked: Vec<usize> = (0..members.len()).collect();
    (0..partitions)
        .map(|p| {
            ranked.sort_by_key(|&m| std::cmp::Reverse(score(&members[m], u64::from(p))));
            let m = *ranked
                .iter()
                .find(|&&m| load[m] < cap)
                .expect("caps add up to at least the partitions");
            load[m] += 1;
            members[m].as_str()
        })
        .collect()
}

/// Who should run `pipeline`'s splitter: the member that ranks it highest.
pub fn splitter_owner<'a>(pipeline: &str, members: &'a [String]) -> Option<&'a str> {
    let p = fnv1a(pipeline.as_bytes());
    members
        .iter()
        .max_by_key(|m| score(m, p))
        .map(String::as_str)
}

/// A member's rank for a partition (or a pipeline's hash).
fn score(member: &str, of: u64) -> u64 {
    let h = fnv1a(member.as_bytes()) ^ of.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    // One round of a 64-bit mixer (splitmix64's finaliser): FNV's low bits
    // alone rank members too alike across neighbouring partitions.
    let h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    let h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The partition of a key, out of `partitions`.
///
/// FNV-1a rather than std's hasher: every instance, whatever its build,
/// must put a key in the same partition, and std does not promise its
/// algorithm across releases.
pub fn partition_of(key: &str, partitions: u32) -> u32 {
    (fnv1a(key.as_bytes()) % u64::from(partitions.max(1))) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn partitions_spread_evenly_and_mostly_stay_put_as_members_change() {
        let held = |owners: &[&str], who: &str| owners.iter().filter(|o| **o == who).count();
        let three = members(&["a-1", "b-2", "c-3"]);
        let before = partition_owners(12, &three);
        assert_eq!(before.len(), 12);
        for m in &three {
            assert_eq!(held(&before, m), 4, "{before:?}");
        }
        // c-3 dies: only what it held moves, and the rest stays put.
        let two = members(&["a-1", "b-2"]);
        let after = partition_owners(12, &two);
        assert_eq!([held(&after, "a-1"), held(&after, "b-2")], [6, 6]);
        let moved = (0..12).filter(|&p| before[p] != after[p]).count();
        assert!(
            moved <= 6,
            "{moved} partitions moved: {before:?} -> {after:?}"
        );
        // It comes back under a new name: it takes about its share.
        let back = members(&["a-1", "b-2", "c-9"]);
        let again = partition_owners(12, &back);
        let moved = (0..12).filter(|&p| after[p] != again[p]).count();
        assert!(
            moved <= 6,
            "{moved} partitions moved: {after:?} -> {again:?}"
        );
        assert_eq!(partition_owners(12, &[]), Vec::<&str>::new());
        assert!(held(&partition_owners(5, &three), "a-1") <= 2);
    }

    #[test]
    fn a_splitter_has_one_owner_among_the_members() {
        let three = members(&["a", "b", "c"]);
        let owner = splitter_owner("contacts", &three).unwrap();
        assert!(three.iter().any(|m| m == owner));
        assert_eq!(
            splitter_owner("contacts", &three),
            Some(owner),
            "the same on every call"
        );
        assert_eq!(splitter_owner("contacts", &[]), None);
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
