//! [`WaitingRoom`]: the next records of an account at its cap, kept in
//! memory and sent on as the account's records settle.
//!
//! Handing every record of a flooded account back to JetStream with a delay
//! (accounts.rs) works, but a server tracking tens of thousands of delayed
//! redeliveries hands them back late (nats-server postpones redeliveries
//! while it has acks to process, nats-server#2898), and the account's cap
//! runs dry: 50,000 parked records drained at 7 of the account's 10
//! requests/s in `bench/run.sh accounts`. So the records an account will
//! send next, about half an `ack_wait` of them, wait here, in stream order,
//! and the account's next record goes the moment one of its records
//! settles; only the ones beyond are handed back, to refill the room later.
//! What waits here holds its share of `max_ack_pending_bytes`: the room
//! takes at most half of it, so other accounts' records still come.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::mpsc::UnboundedSender;
use tokio::time::Instant;

use super::Dispatched;
use super::accounts::{AccountGate, Admit};
use super::lane::{Eval, Job};

pub struct WaitingRoom {
    inner: Mutex<Inner>,
}

struct Inner {
    gate: AccountGate,
    by_account: HashMap<String, BTreeMap<u64, Waiting>>,
    /// Keys with a change waiting here, and how many.
    keys: HashMap<String, usize>,
    bytes: usize,
    max_bytes: usize,
    /// Records of one account kept at most.
    per_account: usize,
    /// Where records go on; `None` once the pipeline drains.
    lanes: Option<Vec<UnboundedSender<Box<Job>>>>,
}

struct Waiting {
    job: Box<Job>,
    key: String,
    bytes: usize,
}

/// What became of a record the dispatcher offered.
pub enum Offered {
    /// It goes to its lane now.
    Go(Box<Job>),
    /// It waits here.
    Kept,
    /// Hand it back to JetStream, to come again after this long.
    Park(Box<Job>, Duration),
}

/// A waiting record's share of memory besides its payload.
const OVERHEAD: usize = 512;

/// How many records scanned for one whose key may go (the first may wait
/// for an earlier change of its key, handed back).
const SCAN: usize = 16;

impl WaitingRoom {
    /// `max_bytes`: what the room may hold; `ack_wait`: records are kept
    /// for about half of it at the account's rate at most.
    pub fn new(gate: AccountGate, max_bytes: usize, ack_wait: Duration) -> Self {
        let per_account = per_account(&gate, ack_wait);
        WaitingRoom {
            inner: Mutex::new(Inner {
                gate,
                by_account: HashMap::new(),
                keys: HashMap::new(),
                bytes: 0,
                max_bytes,
                per_account,
                lanes: None,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("waiting room")
    }

    pub fn cap(&self) -> usize {
        self.lock().gate.cap()
    }

    pub fn set_lanes(&self, lanes: Vec<UnboundedSender<Box<Job>>>) {
        self.lock().lanes = Some(lanes);
    }

    /// A new pipeline version's limits; what waits, waits on.
    pub fn reconfigure(&self, gate: AccountGate, ack_wait: Duration) {
        let mut inner = self.lock();
        inner.per_account = per_account(&gate, ack_wait);
        inner.gate.reconfigure(gate);
    }

    /// Decides a record of `account` as it comes from the source.
    pub fn offer(
        &self,
        job: Box<Job>,
        account: &str,
        dispatched: &Dispatched,
        now: Instant,
    ) -> Offered {
        let Eval::Done(Ok(out)) = &job.eval else {
            return Offered::Go(job);
        };
        let (key, seq) = (out.key.clone(), job.msg.seq);
        let mut inner = self.lock();
        let held = dispatched.held(account);
        // Records that came before it wait here already: it queues behind.
        let queued = inner.by_account.get(account).map_or(0, BTreeMap::len);
        let full = if queued > 0 { inner.gate.cap() } else { held };
        let delay = match inner.gate.admit(account, &key, seq, full, now) {
            Admit::Go => {
                dispatched.hold(seq, account);
                return Offered::Go(job);
            }
            Admit::Park(delay) => delay,
        };
        let bytes = job.msg.payload.len() + OVERHEAD;
        // The earliest change of a key whose later changes wait here comes
        // in whatever the limits: handed back, it would leave them stuck
        // behind it, in a room it can never enter while they fill it.
        let unblocks = inner.keys.contains_key(&key) && inner.gate.first_parked(&key) == Some(seq);
        if !unblocks && (queued >= inner.per_account || inner.bytes + bytes > inner.max_bytes) {
            // Not back before the records waiting here have gone.
            let behind = Duration::from_secs_f64(queued as f64 / inner.gate.rate());
            return Offered::Park(job, delay.max(behind));
        }
        inner.bytes += bytes;
        *inner.keys.entry(key.clone()).or_default() += 1;
        let waiting = Waiting { job, key, bytes };
        inner
            .by_account
            .entry(account.to_string())
            .or_default()
            .insert(seq, waiting);
        drop(inner);
        // It may go at once: the account may have room, kept only behind
        // an earlier change of its key that has just gone.
        self.release(account, dispatched);
        Offered::Kept
    }

    /// Sends on `account`'s next waiting records while it has room.
    pub fn release(&self, account: &str, dispatched: &Dispatched) {
        let mut inner = self.lock();
        let inner = &mut *inner;
        let Some(lanes) = &inner.lanes else {
            return;
        };
        let Some(queue) = inner.by_account.get_mut(account) else {
            return;
        };
        let mut held = dispatched.held(account);
        while held < inner.gate.cap() {
            let next = queue
                .iter()
                .take(SCAN)
                .find(|(seq, w)| inner.gate.first_parked(&w.key) == Some(**seq))
                .map(|(seq, _)| *seq);
            let Some(seq) = next else {
                break;
            };
            let waiting = queue.remove(&seq).expect("just found");
            inner.bytes -= waiting.bytes;
            if let Some(n) = inner.keys.get_mut(&waiting.key) {
                *n -= 1;
                if *n == 0 {
                    inner.keys.remove(&waiting.key);
                }
            }
            inner.gate.unpark(&waiting.key, seq);
            dispatched.hold(seq, account);
            held += 1;
            let lane = super::lane_of(&waiting.key, lanes.len());
            if let Err(e) = lanes[lane].send(waiting.job) {
                // The lane ended (drain deadline): hand it back.
                let job = e.0;
                tokio::spawn(async move { job.msg.hand_back(&job.ctx.pipeline.name).await });
            }
        }
        if queue.is_empty() {
            inner.by_account.remove(account);
        }
    }

    /// The pipeline drains: nothing more goes on; returns what waits here,
    /// to hand back.
    pub fn close(&self) -> Vec<Job> {
        let mut inner = self.lock();
        inner.lanes = None;
        inner.bytes = 0;
        inner.keys.clear();
        std::mem::take(&mut inner.by_account)
            .into_values()
            .flat_map(BTreeMap::into_values)
            .map(|w| *w.job)
            .collect()
    }

    /// For the log line of a parked record.
    pub fn log(&self, log: impl FnOnce(&AccountGate)) {
        log(&self.lock().gate)
    }
}

/// About half an `ack_wait` of the account's records, at least its cap.
fn per_account(gate: &AccountGate, ack_wait: Duration) -> usize {
    let half = (gate.rate() * ack_wait.as_secs_f64() / 2.0) as usize;
    half.max(gate.cap())
}
