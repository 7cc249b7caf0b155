//! Cells leased from Redis, waiting to be handed out on this instance.
//!
//! A grant names cells by their conformance times on Redis's clock. Redis read
//! its clock (`now`) at some moment between sending the call (`sent`) and
//! receiving the reply (`received`), so the local instant of Redis time `r`
//! lies in `[sent + (r - now), received + (r - now)]`. A cell is therefore
//! handed out no earlier than the late end of that range (never early), and
//! discarded once past the early end plus the spend budget (never more
//! than `spend` late, whatever the round trip took: `Schedule::spend`). See [`super::gcra`]
//! for why that bound keeps the whole fleet within the limit.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// The Redis script's answer; times in microseconds on Redis's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Grant {
    pub now_us: u64,
    /// Cell `i` conforms at `max(now, start + i·interval)`.
    pub start_us: u64,
    pub interval_us: u64,
    pub granted: u32,
    /// The TAT the call left in Redis.
    pub tat_us: u64,
    /// Instances seen sharing the limit recently, this one included.
    pub instances: u32,
    /// When this Redis started keeping the provider's state.
    pub epoch_us: u64,
    /// The fleet's switch back to the shared limit, while one is pending.
    pub hold_us: Option<u64>,
}

impl Grant {
    /// Latest local instant that is no later than Redis time `at_us`, given
    /// when the call went out: Redis read its clock after `sent`.
    pub fn local_no_later_than(&self, sent: Instant, at_us: u64) -> Instant {
        match at_us.checked_sub(self.now_us) {
            Some(ahead) => sent + Duration::from_micros(ahead),
            None => sent
                .checked_sub(Duration::from_micros(self.now_us - at_us))
                .unwrap_or(sent),
        }
    }

    /// Local instant from which the first cell past this grant would fit into
    /// the script's horizon, given when the reply arrived.
    pub fn next_fits_at(&self, received: Instant, horizon: Duration) -> Instant {
        let next_us = self.start_us + u64::from(self.granted) * self.interval_us;
        let ahead = Duration::from_micros(next_us.saturating_sub(self.now_us));
        received + ahead.saturating_sub(horizon)
    }
}

#[derive(Debug, Clone, Copy)]
struct Cell {
    at: Instant,
    deadline: Instant,
}

/// The latest grant, while its last cells are pooled: they are the end of
/// the fleet's timeline unless someone leased after it, and can be given
/// back ([`Pool::give_back`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tail {
    /// The TAT the grant left in Redis.
    pub tat_us: u64,
    pub interval_us: u64,
    /// Its cells still pooled: the grant's last ones.
    pub cells: u32,
}

#[derive(Debug, Default)]
pub(crate) struct Pool {
    /// In grant order; times are nearly but not strictly increasing (the
    /// burst tolerance lets a later grant start before an earlier one ends).
    cells: VecDeque<Cell>,
    /// The latest grant while none of it was given back. Its cells went in
    /// last and cells leave from the front, so those still pooled are the
    /// last `min(granted, len)`.
    latest: Option<Grant>,
    /// The last this many cells are being offered back to Redis: nobody may
    /// take them until it answers ([`Pool::given_back`]).
    withheld: usize,
}

impl Pool {
    /// Adds a grant's cells. The round trip must not exceed `spend`, or
    /// every cell would be past its deadline on arrival.
    pub fn add(&mut self, grant: &Grant, sent: Instant, received: Instant, spend: Duration) {
        debug_assert!(received - sent <= spend, "stale grant");
        debug_assert_eq!(self.withheld, 0, "a lease while cells are offered back");
        if grant.granted == 0 {
            return;
        }
        self.latest = Some(*grant);
        for i in 0..u64::from(grant.granted) {
            let conforms_us = grant.now_us.max(grant.start_us + i * grant.interval_us);
            let offset = Duration::from_micros(conforms_us - grant.now_us);
            self.cells.push_back(Cell {
                at: received + offset,
                deadline: sent + offset + spend,
            });
        }
    }

    /// Cells that may still be handed out.
    pub fn len(&self) -> usize {
        self.cells.len() - self.withheld.min(self.cells.len())
    }

    /// The latest grant's cells still pooled, if any.
    pub fn tail(&self) -> Option<Tail> {
        if self.withheld > 0 {
            return None;
        }
        let latest = self.latest?;
        let cells = (latest.granted as usize).min(self.cells.len());
        (cells > 0).then_some(Tail {
            tat_us: latest.tat_us,
            interval_us: latest.interval_us,
            cells: cells as u32,
        })
    }

    /// Withholds the latest grant's pooled cells, to offer them back to the
    /// fleet: none of them starts until Redis answers. Nothing may be added
    /// meanwhile (the withheld cells stay the last ones).
    pub fn give_back(&mut self) -> Option<Tail> {
        let tail = self.tail()?;
        self.withheld = tail.cells as usize;
        self.latest = None;
        Some(tail)
    }

    /// The end of a [`Pool::give_back`]: the withheld cells are dropped, or
    /// (Redis refused them: someone leased after them) handed out again.
    pub fn given_back(&mut self, dropped: bool) {
        if dropped {
            let keep = self.cells.len() - self.withheld.min(self.cells.len());
            self.cells.truncate(keep);
        }
        self.withheld = 0;
    }

    /// The front cell, unless it is withheld.
    fn front(&self) -> Option<&Cell> {
        (self.len() > 0).then(|| self.cells.front()).flatten()
    }

    /// When the last cell that may still be handed out may be (the
    /// withheld ones are the last).
    pub fn last_at(&self) -> Option<Instant> {
        let last = self.len().checked_sub(1)?;
        Some(self.cells[last].at)
    }

    /// When the next cell may be handed out.
    pub fn next_at(&self) -> Option<Instant> {
        self.front().map(|cell| cell.at)
    }

    /// Drops the cells at the front whose deadline has passed; returns how many.
    pub fn discard_expired(&mut self, now: Instant) -> u32 {
        let mut expired = 0;
        while self.cells.front().is_some_and(|cell| cell.deadline < now) {
            if self.cells.len() <= self.withheld {
                self.withheld -= 1;
            }
            self.cells.pop_front();
            expired += 1;
        }
        expired
    }

    /// Takes the front cell if it may be handed out at `now` and is not past
    /// its deadline (an expired one is left for the task to count).
    pub fn take_fresh(&mut self, now: Instant) -> Option<Instant> {
        let cell = *self.front()?;
        (cell.at <= now && now <= cell.deadline).then(|| {
            self.cells.pop_front();
            cell.deadline
        })
    }

    /// Takes the front cell if it may be handed out at `now`; returns its
    /// deadline. Call [`Pool::discard_expired`] first, so it is not past it.
    pub fn take_due(&mut self, now: Instant) -> Option<Instant> {
        let cell = self.front().filter(|cell| cell.at <= now)?;
        let deadline = cell.deadline;
        self.cells.pop_front();
        Some(deadline)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn grant(start_offset_us: i64, granted: u32) -> Grant {
        let now_us = 1_700_000_000_000_000;
        Grant {
            now_us,
            start_us: now_us.saturating_add_signed(start_offset_us),
            interval_us: 500,
            granted,
            tat_us: now_us.saturating_add_signed(start_offset_us) + u64::from(granted) * 500,
            instances: 1,
            epoch_us: now_us,
            hold_us: None,
        }
    }

    #[test]
    fn cells_are_never_early_and_never_later_than_the_budget() {
        let sent = Instant::now();
        let received = sent + MS;
        let mut pool = Pool::default();
        // Start 1 ms before now: cells 0..=2 conform now, then one per 0.5 ms.
        pool.add(&grant(-1000, 5), sent, received, 4 * MS);
        for us in [0, 0, 0, 500, 1000] {
            let at = received + Duration::from_micros(us);
            assert_eq!(pool.next_at(), Some(at));
            assert_eq!(pool.take_due(at - Duration::from_micros(1)), None);
            assert_eq!(pool.discard_expired(at), 0);
            let deadline = sent + Duration::from_micros(us) + 4 * MS;
            assert_eq!(pool.take_due(at), Some(deadline));
        }
        assert_eq!(pool.len(), 0);
    }

    #[test]
    fn cells_expire_by_their_earliest_local_time_plus_the_budget() {
        let sent = Instant::now();
        let received = sent + MS;
        let mut pool = Pool::default();
        pool.add(&grant(0, 4), sent, received, 2 * MS);
        // Cell i: at received + i·0.5 ms, deadline sent + i·0.5 ms + 2 ms.
        let now = sent + Duration::from_micros(2_600);
        assert_eq!(pool.discard_expired(now), 2);
        assert_eq!(pool.len(), 2);
        assert_eq!(pool.take_due(now), Some(sent + 3 * MS));
    }

    #[test]
    fn only_the_latest_grants_pooled_cells_are_given_back() {
        let sent = Instant::now();
        let mut pool = Pool::default();
        pool.add(&grant(0, 3), sent, sent, 2 * MS);
        let latest = grant(1500, 4);
        pool.add(&latest, sent, sent, 2 * MS);
        pool.take_due(sent).unwrap();
        // Two of the first grant's cells are left, then the latest's four.
        assert_eq!(
            pool.tail(),
            Some(Tail {
                tat_us: latest.tat_us,
                interval_us: 500,
                cells: 4
            })
        );
        assert_eq!(pool.give_back().map(|t| t.cells), Some(4));
        // Withheld until Redis answers: only the first grant's two go out.
        assert_eq!(pool.len(), 2);
        pool.given_back(true);
        assert_eq!(pool.len(), 2);
        // Given back once: the earlier grant's cells are not the timeline's end.
        assert_eq!(pool.tail(), None);
        assert_eq!(pool.give_back(), None);
    }

    #[test]
    fn cells_offered_back_wait_for_the_answer_and_return_when_refused() {
        let sent = Instant::now();
        let mut pool = Pool::default();
        pool.add(&grant(0, 3), sent, sent, 2 * MS);
        assert_eq!(pool.give_back().map(|t| t.cells), Some(3));
        // Offered back: none of them may start, even when due.
        assert_eq!(
            (pool.len(), pool.next_at(), pool.last_at()),
            (0, None, None)
        );
        assert_eq!(pool.take_due(sent), None);
        assert_eq!(pool.take_fresh(sent), None);
        // Someone leased after them: they are ours again, in order.
        pool.given_back(false);
        assert_eq!(pool.len(), 3);
        assert_eq!(pool.last_at(), Some(sent + Duration::from_micros(1000)));
        assert_eq!(pool.take_due(sent), Some(sent + 2 * MS));
    }

    #[test]
    fn next_fits_at_is_the_next_cell_time_minus_the_horizon() {
        let received = Instant::now();
        // 400 cells from now at 0.5 ms: the next would conform 200 ms ahead.
        let g = grant(0, 400);
        assert_eq!(g.next_fits_at(received, 150 * MS), received + 50 * MS);
        assert_eq!(g.next_fits_at(received, 250 * MS), received);
    }
}
