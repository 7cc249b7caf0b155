//! Bytes of unacked messages a pipeline holds at most
//! (`source.nats.max_ack_pending_bytes`).
//!
//! `max_ack_pending` bounds how many messages a pipeline holds; this bounds
//! how much of them, so a stream of 100 KB records does not hold 400 times
//! what a stream of 250-byte ones does. Each message given out carries a
//! [`Held`] for its size, released when the message is dropped (settled or
//! handed back). A pull asks for no more messages than the bytes left can
//! take, at the largest size seen lately, and waits while none are left.
//! The server is not asked to count bytes (a pull's `max_bytes`): it ends
//! such a pull with a 409 that async-nats reports as an error.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;

#[derive(Clone)]
pub struct ByteBudget(Arc<Inner>);

struct Inner {
    limit: usize,
    held: AtomicUsize,
    freed: Notify,
}

/// A message's share of the budget, given back on drop.
pub struct Held {
    budget: Arc<Inner>,
    bytes: usize,
}

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Held({})", self.bytes)
    }
}

impl Held {
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let before = self.budget.held.fetch_sub(self.bytes, Ordering::AcqRel);
        if before >= self.budget.limit && before - self.bytes < self.budget.limit {
            self.budget.freed.notify_waiters();
        }
    }
}

impl ByteBudget {
    pub fn new(limit: usize) -> Self {
        ByteBudget(Arc::new(Inner {
            limit: limit.max(1),
            held: AtomicUsize::new(0),
            freed: Notify::new(),
        }))
    }

    /// Counts `bytes` as held until the returned guard is dropped.
    pub fn hold(&self, bytes: usize) -> Held {
        self.0.held.fetch_add(bytes, Ordering::AcqRel);
        Held {
            budget: self.0.clone(),
            bytes,
        }
    }

    /// Bytes that may still be taken.
    pub fn available(&self) -> usize {
        self.0
            .limit
            .saturating_sub(self.0.held.load(Ordering::Acquire))
    }

    /// Returns once nothing is held. Polled: called once per hand-over,
    /// not per message.
    pub async fn wait_empty(&self) {
        while self.0.held.load(Ordering::Acquire) > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    /// Returns once some bytes are available.
    pub async fn wait_available(&self) {
        loop {
            let freed = self.0.freed.notified();
            tokio::pin!(freed);
            // Registered before the check, so a release in between wakes it.
            freed.as_mut().enable();
            if self.available() > 0 {
                return;
            }
            freed.await;
        }
    }
}

/// How many messages one pull asks for: what `available` bytes take at
/// `size` bytes a message, between 1 and `batch`. The first pull (no size
/// seen yet) asks for one message, to learn the size before asking for more.
pub fn pull_size(batch: usize, available: usize, size: Option<usize>) -> usize {
    match size {
        None => 1,
        Some(size) => (available / size.max(1)).clamp(1, batch.max(1)),
    }
}

/// The message size pulls are sized by: the largest of the recent ones,
/// decaying by an eighth per message so one outlier does not shrink pulls
/// for long.
#[derive(Debug, Default)]
pub struct SizeEstimate(Option<usize>);

impl SizeEstimate {
    pub fn observe(&mut self, bytes: usize) {
        self.0 = Some(match self.0 {
            Some(seen) => (seen - seen / 8).max(bytes),
            None => bytes,
        });
    }

    pub fn get(&self) -> Option<usize> {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_bytes_come_back_on_drop() {
        let budget = ByteBudget::new(1000);
        let a = budget.hold(600);
        let b = budget.hold(600);
        assert_eq!(budget.available(), 0);
        drop(a);
        assert_eq!(budget.available(), 400);
        drop(b);
        assert_eq!(budget.available(), 1000);
    }

    #[tokio::test]
    async fn a_waiting_pull_wakes_when_bytes_are_released() {
        let budget = ByteBudget::new(100);
        let held = budget.hold(150);
        let waiter = tokio::spawn({
            let budget = budget.clone();
            async move { budget.wait_available().await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        drop(held);
        tokio::time::timeout(std::time::Duration::from_secs(2), waiter)
            .await
            .expect("woken")
            .unwrap();
    }

    #[test]
    fn pulls_take_what_the_bytes_left_allow() {
        assert_eq!(pull_size(256, 4 << 20, None), 1);
        assert_eq!(pull_size(256, 4 << 20, Some(250)), 256);
        assert_eq!(pull_size(256, 4 << 20, Some(100_000)), 41);
        assert_eq!(pull_size(256, 10, Some(100_000)), 1);
    }

    #[test]
    fn the_estimate_follows_the_largest_recent_size() {
        let mut size = SizeEstimate::default();
        size.observe(1000);
        size.observe(100);
        assert_eq!(size.get(), Some(875));
        for _ in 0..40 {
            size.observe(100);
        }
        assert_eq!(size.get(), Some(100));
        size.observe(20_000);
        assert_eq!(size.get(), Some(20_000));
    }
}
