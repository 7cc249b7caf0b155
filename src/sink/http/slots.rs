//! The sink's concurrency bound, and one connection per request in flight.
//!
//! A request's rate-limit cell must be spent by a request that leaves at
//! once. So each of the `max_in_flight` slots has a connection of its own
//! (conn.rs), and a request makes its slot's connection ready (opening one
//! if there is none, or the provider closed it) *before* it takes a cell:
//! a handshake never makes a request late, and never costs a cell. Should
//! the connection close while the request waits for its cell, it is opened
//! again, and a cell that went stale meanwhile is traded for a fresh one
//! (http.rs). Slots are reused most recent first, so a sink keeps about as
//! many warm connections as it has requests in flight.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{Semaphore, SemaphorePermit};

use super::conn::{Conn, Origin, TransportError};

pub(super) struct Slots {
    permits: Semaphore,
    /// Connections of the slots not in use (none where a slot has not
    /// connected yet or lost its connection), the most recently used last.
    idle: Mutex<Vec<Option<Conn>>>,
}

/// A slot in use: its connection, and the permit that bounds concurrency.
pub(super) struct Slot<'a> {
    slots: &'a Slots,
    conn: Option<Conn>,
    _permit: SemaphorePermit<'a>,
}

impl Slots {
    pub fn new(max_in_flight: usize) -> Self {
        Slots {
            permits: Semaphore::new(max_in_flight.max(1)),
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Waits for a free slot.
    pub async fn take(&self) -> Slot<'_> {
        let permit = self
            .permits
            .acquire()
            .await
            .expect("the sink never closes its semaphore");
        let conn = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop()
            .flatten();
        Slot {
            slots: self,
            conn,
            _permit: permit,
        }
    }
}

impl Slot<'_> {
    /// Makes the slot's connection ready for a request, opening one if there
    /// is none or the provider closed it; returns whether it opened one.
    pub async fn ready(
        &mut self,
        origin: &Origin,
        timeout: Duration,
    ) -> Result<bool, TransportError> {
        if let Some(conn) = &mut self.conn
            && conn.ready().await
        {
            return Ok(false);
        }
        self.conn = None;
        // Boxed: opening a connection is rare, and its state (the TCP and
        // HTTP/1.1 handshakes, 2.6 KB) would otherwise be part of every
        // record's delivery future, copied whole when the lane boxes it.
        self.conn = Some(Box::pin(origin.connect(timeout)).await?);
        Ok(true)
    }

    /// The connection [`Slot::ready`] made ready.
    pub fn conn(&mut self) -> &mut Conn {
        self.conn.as_mut().expect("ready() first")
    }

    /// Drops the connection after a request on it failed: its state is
    /// unknown (a response may still be on its way).
    pub fn discard(&mut self) {
        self.conn = None;
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut idle = self
            .slots
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        idle.push(self.conn.take());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn slots_bound_concurrency_and_are_reused_most_recent_first() {
        let slots = Slots::new(2);
        let a = slots.take().await;
        let b = slots.take().await;
        assert!(
            tokio::time::timeout(Duration::from_millis(50), slots.take())
                .await
                .is_err(),
            "a third request waits for a slot"
        );
        drop(b);
        drop(a);
        assert_eq!(slots.idle.lock().unwrap().len(), 2);
        let _a = slots.take().await;
        let _b = slots.take().await;
        assert!(slots.idle.lock().unwrap().is_empty());
    }
}
