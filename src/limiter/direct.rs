//! The pool of leased cells, shared between the limiter's task and its
//! callers, so a caller that finds a cell due and nobody queued ahead of it
//! takes the cell itself, without the two task hand-offs of asking the task
//! (at thousands of requests a second they were a tenth of syncflow's CPU).
//! The task learns of those takes in bulk and is woken when the pool runs
//! low, so it leases on time as before.

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;
use tokio::time::Instant;

use super::pool::Pool;

#[derive(Default)]
pub(super) struct Direct {
    pool: Mutex<Pool>,
    /// Callers sent to the task and not yet served: while any wait, nobody
    /// takes a cell around them (FIFO).
    queued: AtomicUsize,
    /// Cells taken directly since the task last looked: arrivals and spent
    /// cells for its lease sizing.
    taken: AtomicU32,
    /// A direct take that leaves fewer pooled cells than this wakes the task:
    /// the demand the pool must cover until a lease comes back.
    refill_below: AtomicUsize,
    low: Notify,
}

impl Direct {
    pub fn pool(&self) -> MutexGuard<'_, Pool> {
        self.pool.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A pooled cell due now, if nobody is queued for one; its deadline.
    pub fn take(&self, now: Instant) -> Option<Instant> {
        if self.queued.load(Ordering::Acquire) != 0 {
            return None;
        }
        let mut pool = self.pool();
        let deadline = pool.take_fresh(now)?;
        let left = pool.len();
        drop(pool);
        self.taken.fetch_add(1, Ordering::Relaxed);
        if left < self.refill_below.load(Ordering::Relaxed) {
            self.low.notify_one();
        }
        Some(deadline)
    }

    /// A caller is about to queue with the task.
    pub fn queue_one(&self) {
        self.queued.fetch_add(1, Ordering::AcqRel);
    }

    /// A queued caller was served, gave up, or never reached the task.
    pub fn served_one(&self) {
        self.queued.fetch_sub(1, Ordering::AcqRel);
    }

    /// The direct takes since the last call.
    pub fn take_count(&self) -> u32 {
        self.taken.swap(0, Ordering::Relaxed)
    }

    pub fn set_refill_below(&self, cells: usize) {
        self.refill_below.store(cells, Ordering::Relaxed);
    }

    /// Resolves when a direct take left the pool low.
    pub async fn low(&self) {
        self.low.notified().await;
    }
}
