//! The id map's reads, gathered across records: while a read is with the
//! server, the keys asked for meanwhile queue, and the next request takes
//! them all at once as one batch direct get (`Requests::get_many`,
//! nats-server 2.11 or later).
//!
//! Every record of an object the id map keeps reads its key before it is
//! sent, and for a create the key is not there. One by one, such a read
//! costs nats-server about 7.5 µs of CPU and the client about 5; in
//! batches of 100, 1.4 and 0.6 (`bench/run.sh kv-cost --server-batches`,
//! bench/README.md). No read waits for a batch to fill: a read asked for
//! while nothing is with the server goes at once, alone, as a plain direct
//! get. Reads queue only behind one that is out, so a batch is as large as
//! the load makes it and a read waits at most one round trip more.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use metrics::Counter;
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::requests::{Requests, Value};

/// Requests with the server at once. One: reads that come while it is out
/// all go in the next.
const IN_FLIGHT: usize = 1;

/// Keys one request asks for at most (the server takes up to 1,024).
const MAX_KEYS: usize = 256;

/// Batches failing in a row after which reads go one by one for good: the
/// stream's server does not know batch gets (an older one in a cluster
/// whose connected server is newer).
const FAILURES_BEFORE_ONE_BY_ONE: u32 = 3;

const STOPPED: &str = "the id map's reader has stopped";

type Answer = Result<Option<Value>, String>;

/// Keys read and the requests that read them (README, metrics): how well
/// reads are gathered.
#[derive(Clone)]
pub struct ReadCounters {
    pub keys: Counter,
    pub single: Counter,
    pub batches: Counter,
}

impl ReadCounters {
    pub fn new() -> ReadCounters {
        let requests = |kind: &'static str| {
            metrics::counter!("syncflow_idmap_read_requests_total", "kind" => kind)
        };
        ReadCounters {
            keys: metrics::counter!("syncflow_idmap_reads_total"),
            single: requests("single"),
            batches: requests("batch"),
        }
    }
}

struct Ask {
    key: String,
    answer: oneshot::Sender<Answer>,
}

/// Reads of one bucket, gathered; cloned by every holder of the id map.
#[derive(Clone)]
pub struct Gathered {
    asks: mpsc::UnboundedSender<Ask>,
}

impl Gathered {
    /// Starts the task that sends the reads; it ends when every clone is
    /// dropped.
    pub fn start(requests: Requests, counters: ReadCounters) -> Gathered {
        let (asks, queue) = mpsc::unbounded_channel();
        tokio::spawn(run(requests, counters, queue));
        Gathered { asks }
    }

    /// The last value of `key`, as [`Requests::get`].
    pub async fn get(&self, key: String) -> Answer {
        let (answer, answered) = oneshot::channel();
        self.asks
            .send(Ask { key, answer })
            .map_err(|_| STOPPED.to_string())?;
        answered.await.map_err(|_| STOPPED.to_string())?
    }
}

async fn run(
    requests: Requests,
    counters: ReadCounters,
    mut queue: mpsc::UnboundedReceiver<Ask>,
) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    let failures = Arc::new(AtomicU32::new(0));
    loop {
        // The slot first: while it is taken, asks queue and go together.
        let slot = Arc::clone(&slots)
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let Some(first) = queue.recv().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < MAX_KEYS {
            match queue.try_recv() {
                Ok(ask) => batch.push(ask),
                Err(_) => break,
            }
        }
        let (requests, failures) = (requests.clone(), Arc::clone(&failures));
        let counters = counters.clone();
        tokio::spawn(async move {
            answer(&requests, &counters, batch, &failures).await;
            drop(slot);
        });
    }
}

/// Answers `batch`: in one request when it holds several keys, else (or
/// when batches keep failing) one by one.
async fn answer(
    requests: &Requests,
    counters: &ReadCounters,
    batch: Vec<Ask>,
    failures: &AtomicU32,
) {
    if batch.len() == 1 || failures.load(Ordering::Relaxed) >= FAILURES_BEFORE_ONE_BY_ONE {
        return one_by_one(requests, counters, batch).await;
    }
    // Two records may ask for one key (two pipelines, one object); the
    // server answers a subject once.
    let mut keys: Vec<String> = Vec::with_capacity(batch.len());
    let mut place: HashMap<&str, usize> = HashMap::with_capacity(batch.len());
    let places: Vec<usize> = batch
        .iter()
        .map(|ask| {
            *place.entry(&ask.key).or_insert_with(|| {
                keys.push(ask.key.clone());
                keys.len() - 1
            })
        })
        .collect();
    drop(place);
    counters.batches.increment(1);
    match requests.get_many(&keys).await {
        Ok(values) => {
            failures.store(0, Ordering::Relaxed);
            for (ask, p) in batch.into_iter().zip(places) {
                // A clone of a value is a reference count (`Bytes`).
                let _ = ask.answer.send(Ok(values[p].clone()));
            }
        }
        Err(error) => {
            let failed = failures.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::warn!(
                %error,
                keys = keys.len(),
                failed_in_a_row = failed,
                one_by_one_from_now = failed >= FAILURES_BEFORE_ONE_BY_ONE,
                "a batch read of the id map failed; its keys are read one by one"
            );
            one_by_one(requests, counters, batch).await;
        }
    }
}

async fn one_by_one(requests: &Requests, counters: &ReadCounters, batch: Vec<Ask>) {
    counters.single.increment(batch.len() as u64);
    futures::future::join_all(batch.into_iter().map(|ask| async move {
        let value = requests.get(&ask.key).await;
        let _ = ask.answer.send(value);
    }))
    .await;
}
