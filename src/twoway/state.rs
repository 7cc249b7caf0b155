//! What syncflow knows of one linked record, field by field, and the rules
//! that decide who wins and what each side must be told. Pure: no I/O, no
//! clock (every time is the change's own modification time).
//!
//! Per field it keeps:
//! - the **winner**: the value both sides should hold (in each side's own
//!   shape, as the mappings give it), when it was set and by which side;
//! - what each side **holds**, as far as syncflow knows;
//! - what syncflow last **sent** each side and has not yet seen come back,
//!   so that the change event its own write causes (a CRM webhook for its
//!   update, System A's CDC event for its write) is recognised as an echo,
//!   not a user's edit;
//! - the newest change time **seen** from each side, so that an older
//!   change arriving late does not pass for what a side holds now;
//! - the value in the **last** event of a side whose events come in commit
//!   order (System A's), so that a later event carrying it again (it
//!   changed another field) does not pass for a newer edit of this one.
//!
//! A change from a side is an echo (it equals what syncflow sent that
//! side), a repeat (it equals what the side holds), or a user's edit. An
//! edit wins by the field's policy: the owning side always (`internal`,
//! `provider`; the other side only with the field's first value), or the
//! newer change (`latest`; ties go to System A). Then
//! every side whose holding differs from the winner is written the
//! winner: the other side (the sync) and, when the edit lost, the side
//! that made it (set back). A side that already holds the winner is never
//! written, which is what keeps echoes and repeats from looping.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::model::Policy;

/// One side of a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    /// System A.
    Internal,
    /// The provider (the CRM).
    External,
}

impl Side {
    pub fn other(self) -> Side {
        match self {
            Side::Internal => Side::External,
            Side::External => Side::Internal,
        }
    }

    fn index(self) -> usize {
        match self {
            Side::Internal => 0,
            Side::External => 1,
        }
    }
}

/// Writes to one side whose echo is awaited, at most.
const MAX_PENDING: usize = 8;

/// The value both sides should hold, in each side's shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Winner {
    /// `[internal, external]`.
    pub value: [Value; 2],
    /// When the winning change was made (its side's clock, ms).
    pub at: i64,
    pub side: Side,
}

/// One field of one linked record.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FieldState {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub winner: Option<Winner>,
    /// `[internal, external]` for the three below.
    #[serde(default)]
    pub holds: [Option<Value>; 2],
    /// Announced writes whose echo has not come yet, oldest first.
    #[serde(default)]
    pub sent: [Vec<Value>; 2],
    #[serde(default)]
    pub seen: [i64; 2],
    /// The value in the newest change event seen from a side whose events
    /// come in commit order (System A's): an event that carries it again
    /// did not change the field. System A's CDC event carries the whole
    /// record, stamped with the time of a write that may have changed only
    /// another field (syncflow's own write of it, say): that time must not
    /// make an older value pass for a newer edit.
    #[serde(default, skip_serializing_if = "no_values")]
    pub last: [Option<Value>; 2],
}

fn no_values(values: &[Option<Value>; 2]) -> bool {
    values.iter().all(Option::is_none)
}

/// A field's value in a change event.
#[derive(Debug, Clone)]
pub struct Observed {
    pub from: Side,
    /// When the change was made (the side's clock, ms).
    pub at: i64,
    /// In `from`'s shape.
    pub value: Value,
    /// The same, in the other side's shape (the pipeline's mapping).
    pub mapped: Value,
    /// `from`'s change events come in commit order (System A's CDC stream,
    /// per key), unlike webhooks.
    pub ordered: bool,
}

/// What a change did to a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// syncflow's own write, come back.
    Echo,
    /// What the side was known to hold already.
    Repeat,
    /// A user's edit that now wins.
    Won,
    /// A user's edit that lost (to a newer change, or to the field's owner).
    Lost,
}

impl FieldState {
    /// A change of the field, seen in a change event of `o.from`.
    pub fn change(&mut self, o: Observed, policy: Policy) -> Seen {
        let (from, at, value) = (o.from, o.at, o.value);
        let i = from.index();
        // Another value seen from this side at the very same millisecond,
        // on a side whose events may come in any order: which of the two
        // the side holds now is unknown, and the winner is written to it.
        let tie = !o.ordered && at == self.seen[i] && at != 0;
        let unchanged = o.ordered && self.last[i].as_ref() == Some(&value);
        if o.ordered && at >= self.seen[i] {
            self.last[i] = Some(value.clone());
        }
        if let Some(n) = self.sent[i].iter().position(|v| *v == value) {
            self.sent[i].remove(n);
            // An echo older than what the side was seen with since (an
            // earlier write's, come late) tells nothing of what it holds.
            if tie && self.holds[i].as_ref() != Some(&value) {
                self.holds[i] = None;
            } else if at >= self.seen[i] {
                self.holds[i] = Some(value);
            }
            self.seen[i] = self.seen[i].max(at);
            return Seen::Echo;
        }
        if self.holds[i].as_ref() == Some(&value) {
            self.seen[i] = self.seen[i].max(at);
            return Seen::Repeat;
        }
        if unchanged {
            // What the side held at its previous event, whatever this
            // event's time: not an edit. It holds it now, unless syncflow's
            // own write is still to come back.
            if at >= self.seen[i] && self.sent[i].is_empty() {
                self.holds[i] = Some(value);
            }
            self.seen[i] = self.seen[i].max(at);
            return Seen::Repeat;
        }
        // Does the side still hold this value? Not if a newer change was
        // seen from it already; nor, on a side whose events come in commit
        // order, if syncflow's own write is still to come back (it was made
        // after this change).
        let current = at >= self.seen[i] && (!o.ordered || self.sent[i].is_empty());
        self.seen[i] = self.seen[i].max(at);
        let wins = match (policy, &self.winner) {
            // An owned field's first value may come from either side (a
            // record created on the other side fills it in); after that,
            // only its owner changes it.
            (Policy::Internal, w) => from == Side::Internal || w.is_none(),
            (Policy::Provider, w) => from == Side::External || w.is_none(),
            (Policy::Latest, None) => true,
            (Policy::Latest, Some(w)) => at > w.at || (at == w.at && from == Side::Internal),
        };
        if current {
            self.holds[i] = if tie { None } else { Some(value.clone()) };
        }
        if !wins {
            return Seen::Lost;
        }
        let mut both = [Value::Null, Value::Null];
        both[i] = value;
        both[from.other().index()] = o.mapped;
        self.winner = Some(Winner {
            value: both,
            at,
            side: from,
        });
        Seen::Won
    }

    /// The value `side` must be written, if it does not hold the winner.
    /// An empty winner is not written to a side whose value is unknown:
    /// what syncflow never heard of is taken to be empty.
    pub fn to_write(&self, side: Side) -> Option<&Value> {
        // Being written already (announced, not yet confirmed).
        let sending = self.sent[side.index()].last() == self.wanted(side);
        self.to_write_again(side).filter(|_| !sending)
    }

    /// [`to_write`](Self::to_write), writes announced but not confirmed
    /// included: for a redelivered change, whose first handling may have
    /// announced a write and died before making it. Writing the same
    /// value twice is harmless (its second echo repeats what the side holds).
    pub fn to_write_again(&self, side: Side) -> Option<&Value> {
        let want = self.wanted(side)?;
        let holds = self.holds[side.index()].as_ref().unwrap_or(&Value::Null);
        (holds != want).then_some(want)
    }

    fn wanted(&self, side: Side) -> Option<&Value> {
        Some(&self.winner.as_ref()?.value[side.index()])
    }

    /// syncflow is about to write `value` to `side`: the change event the
    /// write causes will be an echo.
    pub fn sending(&mut self, side: Side, value: Value) {
        let sent = &mut self.sent[side.index()];
        sent.retain(|v| *v != value);
        sent.push(value);
        // Writes whose echo never came (a side that tells no change when
        // a write changes nothing) are forgotten, oldest first.
        if sent.len() > MAX_PENDING {
            sent.remove(0);
        }
    }

    /// The write of `value` to `side` succeeded: the side holds it (unless
    /// its echo came already, or a newer write was announced since).
    pub fn confirm(&mut self, side: Side, value: &Value) {
        if self.sent[side.index()].last() == Some(value) {
            self.holds[side.index()] = Some(value.clone());
        }
    }

    /// The write of `value` to `side` failed: it will not come back.
    pub fn withdraw(&mut self, side: Side, value: &Value) {
        self.sent[side.index()].retain(|v| v != value);
    }

    /// `side` is known to hold `value` (a create that left the field out).
    pub fn holds(&mut self, side: Side, value: Value) {
        self.holds[side.index()] = Some(value);
    }

    /// syncflow wrote `value` to `side` (so the side holds it, and the
    /// change event it causes is an echo).
    pub fn wrote(&mut self, side: Side, value: Value) {
        self.sending(side, value.clone());
        self.confirm(side, &value);
    }
}

/// One linked record: the provider's id of it, and its fields by name.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PairState {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    /// Deleted on one side, and so on both.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
    /// The side the delete came from: the other's delete event is its echo.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_from: Option<Side>,
    #[serde(default)]
    pub fields: BTreeMap<String, FieldState>,
}

impl PairState {
    /// A write to `side` of `written` (field name, value) was refused
    /// because the side changed since `since` (412): it is withdrawn.
    /// Returns whether a change from the side newer than `since` was seen
    /// meanwhile. That change was handled while the write was in flight,
    /// counting on it (`to_write` leaves out what is being sent), so it will
    /// make no write of its own: the caller must write again now.
    pub fn refused(&mut self, side: Side, written: &[(&str, &Value)], since: Option<i64>) -> bool {
        for (name, value) in written {
            if let Some(field) = self.fields.get_mut(*name) {
                field.withdraw(side, value);
            }
        }
        match (self.seen(side), since) {
            (Some(seen), Some(since)) => seen > since,
            (Some(_), None) => true,
            (None, _) => false,
        }
    }

    /// The newest change time seen from `side` (its clock, ms), if any:
    /// what the record looked like there, the last syncflow knew.
    pub fn seen(&self, side: Side) -> Option<i64> {
        self.fields
            .values()
            .map(|f| f.seen[side.index()])
            .max()
            .filter(|at| *at > 0)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use Side::{External as P, Internal as A};

    fn obs(from: Side, at: i64, value: Value, mapped: Value) -> Observed {
        Observed {
            from,
            at,
            value,
            mapped,
            ordered: from == A,
        }
    }

    /// A field synced both ways, both sides holding `x` (`X` on the CRM).
    fn synced(policy_x_at: i64) -> FieldState {
        let mut f = FieldState::default();
        assert_eq!(
            f.change(obs(A, policy_x_at, json!("x"), json!("X")), Policy::Latest),
            Seen::Won
        );
        f.wrote(P, json!("X"));
        assert_eq!(
            f.change(
                obs(P, policy_x_at + 1, json!("X"), json!("x")),
                Policy::Latest
            ),
            Seen::Echo
        );
        f
    }

    #[test]
    fn an_edit_is_written_to_the_other_side_once_and_its_echo_is_not() {
        let mut f = synced(100);
        assert_eq!(
            f.change(obs(A, 200, json!("a"), json!("A")), Policy::Latest),
            Seen::Won
        );
        assert_eq!(f.to_write(P), Some(&json!("A")));
        assert_eq!(f.to_write(A), None);
        f.wrote(P, json!("A"));
        assert_eq!(f.to_write(P), None);
        // The CRM's webhook for syncflow's own write: an echo, nothing to do.
        assert_eq!(
            f.change(obs(P, 210, json!("A"), json!("a")), Policy::Latest),
            Seen::Echo
        );
        assert_eq!((f.to_write(A), f.to_write(P)), (None, None));
        // A duplicate of it, and a repeat of A's event: nothing either.
        assert_eq!(
            f.change(obs(P, 210, json!("A"), json!("a")), Policy::Latest),
            Seen::Repeat
        );
        assert_eq!(
            f.change(obs(A, 200, json!("a"), json!("A")), Policy::Latest),
            Seen::Repeat
        );
        assert_eq!((f.to_write(A), f.to_write(P)), (None, None));
    }

    /// syncflow's write of A's older edit and a CRM user's newer edit land
    /// in the CRM in one millisecond: the webhooks cannot say which the CRM
    /// holds. Whichever order they come in, the user's edit wins and is
    /// written to both sides (to the CRM too: it may hold syncflow's).
    #[test]
    fn a_write_and_an_edit_in_one_millisecond_converge_to_the_edit() {
        for echo_first in [true, false] {
            let mut f = synced(100);
            f.change(obs(A, 200, json!("a"), json!("A")), Policy::Latest);
            f.sending(P, json!("A"));
            let echo = obs(P, 300, json!("A"), json!("a"));
            let edit = obs(P, 300, json!("C"), json!("c"));
            let (first, second) = if echo_first {
                (echo, edit)
            } else {
                (edit, echo)
            };
            f.change(first, Policy::Latest);
            f.change(second, Policy::Latest);
            let winner = f.winner.as_ref().map(|w| w.value.clone());
            assert_eq!(
                winner,
                Some([json!("c"), json!("C")]),
                "echo first: {echo_first}"
            );
            assert_eq!(f.to_write(A), Some(&json!("c")), "echo first: {echo_first}");
            assert_eq!(f.to_write(P), Some(&json!("C")), "echo first: {echo_first}");
        }
        // In commit order (System A's events), the later event is what the
        // side holds: no write back.
        let mut f = synced(100);
        f.change(obs(A, 200, json!("a"), json!("A")), Policy::Latest);
        f.change(obs(A, 200, json!("b"), json!("B")), Policy::Latest);
        assert_eq!(f.to_write(A), None);
    }

    /// Both sides edit the field within the sync delay; the newer edit (the
    /// CRM's, at 300) wins on both sides, whichever order syncflow hears of
    /// the two, and however the CRM's webhooks are ordered.
    #[test]
    fn concurrent_edits_converge_to_the_newer_one_in_any_order() {
        // A's edit (200) is synced to the CRM first, overwriting the CRM
        // user's newer edit (300) whose webhook comes after.
        let mut f = synced(100);
        f.change(obs(A, 200, json!("a"), json!("A")), Policy::Latest);
        f.wrote(P, json!("A"));
        assert_eq!(
            f.change(obs(P, 300, json!("C"), json!("c")), Policy::Latest),
            Seen::Won
        );
        assert_eq!(f.to_write(A), Some(&json!("c")));
        f.wrote(A, json!("c"));
        // The echo of the write of "A" (made at 310) shows the CRM holds "A":
        // the winner "C" is written back.
        assert_eq!(
            f.change(obs(P, 310, json!("A"), json!("a")), Policy::Latest),
            Seen::Echo
        );
        assert_eq!(f.to_write(P), Some(&json!("C")));
        f.wrote(P, json!("C"));
        f.change(obs(P, 320, json!("C"), json!("c")), Policy::Latest);
        f.change(obs(A, 330, json!("c"), json!("C")), Policy::Latest);
        assert_eq!((f.to_write(A), f.to_write(P)), (None, None));
        assert_eq!(f.winner.as_ref().unwrap().value, [json!("c"), json!("C")]);

        // The same, the echo of "A" arriving before the user's "C".
        let mut f = synced(100);
        f.change(obs(A, 200, json!("a"), json!("A")), Policy::Latest);
        f.wrote(P, json!("A"));
        assert_eq!(
            f.change(obs(P, 310, json!("A"), json!("a")), Policy::Latest),
            Seen::Echo
        );
        // "C" was made at 300, before the write seen at 310: the CRM no longer
        // holds it, but it is the newer edit, so it wins and goes both ways.
        assert_eq!(
            f.change(obs(P, 300, json!("C"), json!("c")), Policy::Latest),
            Seen::Won
        );
        assert_eq!(f.to_write(A), Some(&json!("c")));
        assert_eq!(f.to_write(P), Some(&json!("C")));

        // The CRM's edit heard of first, and written to A; then A's older
        // edit comes (committed before that write, since A's events are in
        // order and the write's echo is still to come): it loses, and A
        // need not be set back, it holds the winner already.
        let mut f = synced(100);
        f.change(obs(P, 300, json!("C"), json!("c")), Policy::Latest);
        f.wrote(A, json!("c"));
        assert_eq!(
            f.change(obs(A, 200, json!("a"), json!("A")), Policy::Latest),
            Seen::Lost
        );
        assert_eq!((f.to_write(A), f.to_write(P)), (None, None));
        assert_eq!(
            f.change(obs(A, 305, json!("c"), json!("C")), Policy::Latest),
            Seen::Echo
        );
        // An A edit made after the write (its echo came first) is newer: it wins.
        assert_eq!(
            f.change(obs(A, 310, json!("d"), json!("D")), Policy::Latest),
            Seen::Won
        );
        assert_eq!(f.to_write(P), Some(&json!("D")));
    }

    #[test]
    fn a_stale_change_never_overwrites_a_newer_value() {
        let mut f = synced(100);
        f.change(obs(P, 300, json!("C"), json!("c")), Policy::Latest);
        f.wrote(A, json!("c"));
        // A webhook of an edit at 250, out of order: older than the winner.
        assert_eq!(
            f.change(obs(P, 250, json!("B"), json!("b")), Policy::Latest),
            Seen::Lost
        );
        // The CRM moved on since (300 was seen): it holds "C", not "B".
        assert_eq!((f.to_write(A), f.to_write(P)), (None, None));
    }

    #[test]
    fn an_owned_field_edited_on_the_other_side_is_set_back() {
        let mut f = synced(100);
        let policy = Policy::Internal;
        // A CRM user changes a field System A owns, even later than A's edit.
        assert_eq!(
            f.change(obs(P, 500, json!("Z"), json!("z")), policy),
            Seen::Lost
        );
        assert_eq!(
            f.to_write(P),
            Some(&json!("X")),
            "set back to the owner's value"
        );
        assert_eq!(f.to_write(A), None);
        // The provider owns another: System A's edit is set back.
        let mut g = synced(100);
        assert_eq!(
            g.change(obs(A, 500, json!("z"), json!("Z")), Policy::Provider),
            Seen::Lost
        );
        assert_eq!(g.to_write(A), Some(&json!("x")));
    }

    /// Two writes of one field in flight: System A's older edit is being
    /// written when the CRM user's newer one comes, and lands after it; the
    /// newer is written again. The first write's echo, arriving after the
    /// second was announced, is still known as syncflow's own.
    #[test]
    fn with_two_writes_in_flight_each_echo_is_known() {
        let mut f = synced(100);
        assert_eq!(
            f.change(obs(A, 200, json!("a"), json!("A")), Policy::Latest),
            Seen::Won
        );
        f.sending(P, json!("A"));
        assert_eq!(
            f.change(obs(P, 205, json!("C"), json!("c")), Policy::Latest),
            Seen::Won
        );
        f.confirm(P, &json!("A")); // landed after the user's edit
        assert_eq!(f.to_write(P), Some(&json!("C")), "the newer edit restored");
        f.sending(P, json!("C"));
        assert_eq!(f.to_write(P), None, "announced: not written twice");
        assert_eq!(
            f.change(obs(P, 221, json!("A"), json!("a")), Policy::Latest),
            Seen::Echo
        );
        assert_eq!(
            f.change(obs(P, 230, json!("C"), json!("c")), Policy::Latest),
            Seen::Echo
        );
        assert_eq!(f.winner.as_ref().unwrap().value[1], json!("C"));
        assert_eq!(f.to_write(P), None);
    }

    #[test]
    fn ties_go_to_system_a() {
        let mut f = synced(100);
        f.change(obs(P, 400, json!("P"), json!("p")), Policy::Latest);
        assert_eq!(
            f.change(obs(A, 400, json!("a"), json!("A")), Policy::Latest),
            Seen::Won
        );
    }

    #[test]
    fn states_read_back() {
        let mut state = PairState::default();
        state.fields.insert("email".into(), synced(1));
        let text = serde_json::to_string(&state).unwrap();
        assert_eq!(serde_json::from_str::<PairState>(&text).unwrap(), state);
    }

    /// The soak test's lost edit: System A's edit is written to the CRM
    /// with the CRM's last seen change as `unmodified_since`; the CRM's
    /// own, older edit arrives while that write is in flight (and is not
    /// set back: the write in flight covers it); then the write is refused
    /// (412). The refusal must say "write again now", and what to write.
    #[test]
    fn a_refused_write_whose_awaited_change_came_meanwhile_is_written_again() {
        let mut state = PairState::default();
        state.fields.insert("phone".into(), synced(100));
        let f = state.fields.get_mut("phone").unwrap();
        // System A's edit wins and is announced to the CRM.
        assert_eq!(
            f.change(obs(A, 300, json!("a"), json!("A")), Policy::Latest),
            Seen::Won
        );
        f.sending(P, json!("A"));
        let since = state.seen(P);
        // The CRM's older edit comes in meanwhile: it loses, and nothing is
        // to be written back, since "A" is on its way.
        let f = state.fields.get_mut("phone").unwrap();
        assert_eq!(
            f.change(obs(P, 200, json!("B"), json!("b")), Policy::Latest),
            Seen::Lost
        );
        assert_eq!(f.to_write(P), None);
        // The write is refused: the change it waited for is already seen.
        assert!(state.refused(P, &[("phone", &json!("A"))], since));
        assert_eq!(state.fields["phone"].to_write(P), Some(&json!("A")));

        // Refused before the CRM's change came: wait for it instead.
        let mut state = PairState::default();
        state.fields.insert("phone".into(), synced(100));
        let f = state.fields.get_mut("phone").unwrap();
        f.change(obs(A, 300, json!("a"), json!("A")), Policy::Latest);
        f.sending(P, json!("A"));
        let since = state.seen(P);
        assert!(!state.refused(P, &[("phone", &json!("A"))], since));
        assert_eq!(state.fields["phone"].sent[P.index()], Vec::<Value>::new());
    }

    /// The soak test's second lost edit (c268, last_name): System A's edit
    /// (200) is heard of after the CRM user's newer one (300), whose write
    /// to System A is on its way. Before that write lands, syncflow writes
    /// System A another field: its CDC event carries the field's old value
    /// "a" again, stamped 320. That is not an edit of the field, whatever
    /// its time: the CRM's edit stays the winner.
    #[test]
    fn a_value_carried_again_by_a_later_event_is_not_a_newer_edit() {
        for write_fails in [false, true] {
            let mut f = synced(100);
            assert_eq!(
                f.change(obs(P, 300, json!("C"), json!("c")), Policy::Latest),
                Seen::Won
            );
            f.sending(A, json!("c"));
            assert_eq!(
                f.change(obs(A, 200, json!("a"), json!("A")), Policy::Latest),
                Seen::Lost
            );
            if write_fails {
                // (a 503, a timeout: the message is retried)
                f.withdraw(A, &json!("c"));
            }
            assert_eq!(
                f.change(obs(A, 320, json!("a"), json!("A")), Policy::Latest),
                Seen::Repeat,
                "write fails: {write_fails}"
            );
            assert_eq!(f.winner.as_ref().unwrap().value, [json!("c"), json!("C")]);
            if write_fails {
                // System A holds "a" now, as far as anyone knows: written again.
                assert_eq!(f.to_write(A), Some(&json!("c")));
            } else {
                assert_eq!(f.to_write(A), None, "being written");
                assert_eq!(
                    f.change(obs(A, 330, json!("c"), json!("C")), Policy::Latest),
                    Seen::Echo
                );
            }
            assert_eq!(f.to_write(P), None, "the CRM holds the winner");
        }
        // A real edit back to an earlier value is still an edit.
        let mut f = synced(100);
        f.change(obs(A, 200, json!("a"), json!("A")), Policy::Latest);
        assert_eq!(
            f.change(obs(A, 300, json!("x"), json!("X")), Policy::Latest),
            Seen::Won
        );
    }

    /// kill -9 between announcing a write and making it: the redelivered
    /// change finds the write "in flight" forever; it must make it.
    #[test]
    fn a_write_announced_by_a_handling_that_died_is_made_by_the_redelivery() {
        let mut f = synced(100);
        f.change(obs(A, 300, json!("a"), json!("A")), Policy::Latest);
        f.sending(P, json!("A"));
        // (killed here: the write never went out)
        assert_eq!(
            f.change(obs(A, 300, json!("a"), json!("A")), Policy::Latest),
            Seen::Repeat
        );
        assert_eq!(f.to_write(P), None);
        assert_eq!(f.to_write_again(P), Some(&json!("A")));
        // Once the side holds it, nothing to write either way.
        f.confirm(P, &json!("A"));
        assert_eq!(f.to_write_again(P), None);
    }
}
