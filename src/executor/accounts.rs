//! [`AccountGate`]: one account at its limit holds back only its own records.
//!
//! A pipeline that names accounts (`account:`) sends each account at its
//! own rate limit (limiter/accounts.rs). Without a gate, an account with a
//! backlog would fill the pipeline with records waiting for its cells: the
//! lanes they sit in (other accounts' keys share lanes), the request slots
//! they wait in, and `max_ack_pending`, so every other account would wait
//! behind it.
//!
//! (The records an account sends next wait in memory rather than in
//! JetStream, up to a budget: waiting.rs. This file decides.)
//!
//! The gate lets each account hold at most `cap` records at once: half a
//! second of its limit (at least 2, and two batches' worth where the
//! target batches). A record of an account at its cap is *parked*: handed
//! back to JetStream (a nak) with a delay, and forgotten but for its key
//! and sequence. Parked records are timed to come back a little faster
//! than the account can send them, so that it always has the next ones at
//! hand; one that comes back while the account is still at its cap waits
//! a little more.
//! Other accounts' records keep flowing past it. Parked records still count
//! towards `max_ack_pending`, which must therefore exceed the backlog one
//! account may build up (README, "Accounts").
//!
//! Per-key order holds: while a change of a key is parked, every later
//! change of that key that arrives is parked too, whatever its account's
//! room, and a key's parked change goes only when it is the earliest one
//! parked. A parked change that never came back (its consumer was reset)
//! is forgotten after `forget_after`, so its key is not held forever.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use tokio::time::Instant;

/// What to do with a record of an account.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Admit {
    Go,
    /// Hand it back for redelivery after this long.
    Park(Duration),
}

pub struct AccountGate {
    /// Records one account may hold at once.
    cap: usize,
    /// An account's records per second at its limit.
    rate: f64,
    forget_after: Duration,
    /// Parked changes by key: sequence → (account, when it is due back).
    parked: HashMap<String, BTreeMap<u64, (String, Instant)>>,
    /// Parked changes by account.
    parked_by_account: HashMap<String, usize>,
    /// One "parked" log line per second at most.
    pub log: crate::sampled::Sampled,
}

/// The shortest and longest a parked record waits before it comes back.
const MIN_PARK: Duration = Duration::from_millis(100);
const MAX_PARK: Duration = Duration::from_secs(3600);

impl AccountGate {
    /// `requests_per_s`: an account's limit; `batch`: records per request.
    pub fn new(requests_per_s: f64, batch: usize, ack_wait: Duration) -> Self {
        let rate = requests_per_s * batch as f64;
        let half_second = (rate / 2.0).ceil() as usize;
        AccountGate {
            cap: half_second.max(2).max(2 * batch),
            rate,
            forget_after: MAX_PARK + 2 * ack_wait,
            parked: HashMap::new(),
            parked_by_account: HashMap::new(),
            log: crate::sampled::Sampled::every(Duration::from_secs(1)),
        }
    }

    /// Takes `new`'s limits (a new pipeline version), keeping what is
    /// parked.
    pub fn reconfigure(&mut self, new: AccountGate) {
        self.cap = new.cap;
        self.rate = new.rate;
        self.forget_after = new.forget_after;
    }

    pub fn cap(&self) -> usize {
        self.cap
    }

    /// An account's records per second at its limit.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// The earliest parked change of `key`.
    pub fn first_parked(&self, key: &str) -> Option<u64> {
        self.parked.get(key)?.keys().next().copied()
    }

    /// Records parked right now.
    pub fn parked(&self) -> usize {
        self.parked_by_account.values().sum()
    }

    /// Decides a record of `account` and `key` at `seq`, with `held` of the
    /// account's records held now.
    pub fn admit(
        &mut self,
        account: &str,
        key: &str,
        seq: u64,
        held: usize,
        now: Instant,
    ) -> Admit {
        self.forget_overdue(key, now);
        let earlier = self
            .parked
            .get(key)
            .and_then(|seqs| seqs.keys().next())
            .is_some_and(|&first| first < seq);
        if !earlier && held < self.cap {
            self.unpark(key, seq);
            return Admit::Go;
        }
        let again = self
            .parked
            .get(key)
            .is_some_and(|seqs| seqs.contains_key(&seq));
        let waiting = self.parked_by_account.get(account).copied().unwrap_or(0);
        // A record parked for the first time goes behind the account's
        // other parked ones, due back a fifth sooner than the account
        // reaches it; one that came back too early waits for half its
        // cap's worth of records to go.
        let wait = match again {
            true => self.cap as f64 / 2.0 / self.rate,
            false => (waiting + 1) as f64 / (1.25 * self.rate),
        };
        let delay = Duration::from_secs_f64(wait).clamp(MIN_PARK, MAX_PARK);
        if !again {
            *self
                .parked_by_account
                .entry(account.to_string())
                .or_default() += 1;
        }
        self.parked
            .entry(key.to_string())
            .or_default()
            .insert(seq, (account.to_string(), now + delay));
        Admit::Park(delay)
    }

    /// The change at `seq` of `key` is no longer parked.
    pub fn unpark(&mut self, key: &str, seq: u64) {
        let Some(seqs) = self.parked.get_mut(key) else {
            return;
        };
        let removed = seqs.remove(&seq);
        if seqs.is_empty() {
            self.parked.remove(key);
        }
        if let Some((account, _)) = removed {
            self.count_down(&account);
        }
    }

    fn forget_overdue(&mut self, key: &str, now: Instant) {
        let Some(seqs) = self.parked.get_mut(key) else {
            return;
        };
        let forget_after = self.forget_after;
        let mut forgotten = Vec::new();
        seqs.retain(|_, (account, due)| {
            let keep = *due + forget_after > now;
            if !keep {
                forgotten.push(std::mem::take(account));
            }
            keep
        });
        if seqs.is_empty() {
            self.parked.remove(key);
        }
        for account in forgotten {
            self.count_down(&account);
        }
    }

    fn count_down(&mut self, account: &str) {
        if let Some(n) = self.parked_by_account.get_mut(account) {
            *n -= 1;
            if *n == 0 {
                self.parked_by_account.remove(account);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_account_at_its_cap_parks_its_records_and_not_the_others() {
        let now = Instant::now();
        let mut gate = AccountGate::new(10.0, 1, Duration::from_secs(30));
        assert_eq!(gate.cap(), 5);
        assert_eq!(gate.admit("a", "k1", 1, 2, now), Admit::Go);
        // At its cap: parked, further back each time.
        let Admit::Park(first) = gate.admit("a", "k2", 2, 5, now) else {
            panic!()
        };
        let Admit::Park(second) = gate.admit("a", "k3", 3, 5, now) else {
            panic!()
        };
        assert!(second > first, "{first:?} {second:?}");
        // Another account goes.
        assert_eq!(gate.admit("b", "k4", 4, 0, now), Admit::Go);
        assert_eq!(gate.parked(), 2);
        // k2 back with room: it goes, and is no longer parked.
        assert_eq!(gate.admit("a", "k2", 2, 0, now), Admit::Go);
        assert_eq!(gate.parked(), 1);
    }

    #[test]
    fn a_later_change_of_a_parked_key_waits_for_the_earlier_one() {
        let now = Instant::now();
        let mut gate = AccountGate::new(10.0, 1, Duration::from_secs(30));
        assert!(matches!(gate.admit("a", "k", 5, 5, now), Admit::Park(_)));
        // The account has room now, but k's change 5 is still out.
        assert!(matches!(gate.admit("a", "k", 9, 0, now), Admit::Park(_)));
        // Whatever the account: the key's order comes first.
        assert!(matches!(gate.admit("b", "k", 10, 0, now), Admit::Park(_)));
        // 5 comes back: it goes, then 9, then 10.
        assert_eq!(gate.admit("a", "k", 5, 0, now), Admit::Go);
        assert!(matches!(gate.admit("b", "k", 10, 0, now), Admit::Park(_)));
        assert_eq!(gate.admit("a", "k", 9, 0, now), Admit::Go);
        assert_eq!(gate.admit("b", "k", 10, 0, now), Admit::Go);
        assert_eq!(gate.parked(), 0);
    }

    #[test]
    fn a_parked_change_that_never_comes_back_is_forgotten() {
        let now = Instant::now();
        let mut gate = AccountGate::new(10.0, 1, Duration::from_secs(30));
        assert!(matches!(gate.admit("a", "k", 5, 5, now), Admit::Park(_)));
        let later = now + Duration::from_secs(100);
        assert!(matches!(gate.admit("a", "k", 9, 0, later), Admit::Park(_)));
        let much_later = now + MAX_PARK + Duration::from_secs(100);
        assert_eq!(gate.admit("a", "k", 9, 0, much_later), Admit::Go);
        assert_eq!(gate.parked(), 0);
    }

    #[test]
    fn batches_leave_room_for_two_of_them() {
        let gate = AccountGate::new(10.0, 100, Duration::from_secs(30));
        assert_eq!(gate.cap(), 500);
        let gate = AccountGate::new(1.0, 100, Duration::from_secs(30));
        assert_eq!(gate.cap(), 200);
    }
}
