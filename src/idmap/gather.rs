//! The id map's reads, gathered across records: while a read is with the
//! server, the keys asked for meanwhile queue, and the next request takes
//! them all at once as one batch direct get (`Requests::get_many`,
//! nats-server 2.11 or later).
//!
//! Every record of an object the id map keeps reads its key before it is
//! sent, and for a create the key is not there. One by one, such a read
//! cost nats-server about 9 µs of CPU and the client about 6; gathered,
//! 2.5–3 and 2. A read of a key that is there costs the server the same
//! either way (`bench/run.sh kv-cost`, nats-server 2.12.8; bench/README.md,
//! "Reads gathered"). No read waits for a batch to fill: a read asked for
//! while nothing is with the server goes at once, alone, as a plain direct
//! get. Reads queue only behind one that is out, so a batch is as large as
//! the load makes it and a read waits at most one round trip more.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use metrics::Counter;
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::requests::{ManyError, Requests, Value};

/// Requests with the server at once. One: reads that come while it is out
/// all go in the next.
const IN_FLIGHT: usize = 1;

/// Keys one request asks for at most: more than a round trip gathers at
/// the bench's rates (about 43), under the 1,024 subjects NATS clients
/// allow a request.
const MAX_KEYS: usize = 256;

/// Batches refused in a row after which reads go one by one for good: the
/// stream's server does not know batch gets (an older one in a cluster
/// whose connected server is newer). A batch left unanswered (the
/// connection down) does not count.
const REFUSALS_BEFORE_ONE_BY_ONE: u32 = 3;

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
        let requests = |kind: &'static str| metrics::counter!("syncflow_idmap_read_requests_total", "kind" => kind);
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

async fn run(requests: Requests, counters: ReadCounters, mut queue: mpsc::UnboundedReceiver<Ask>) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    let refusals = Arc::new(AtomicU32::new(0));
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
        let (requests, refusals) = (requests.clone(), Arc::clone(&refusals));
        let counters = counters.clone();
        tokio::spawn(async move {
            answer(&requests, &counters, batch, &refusals).await;
            drop(slot);
        });
    }
}

/// Answers `batch`: in one request when it holds several keys, else (or
/// when the server keeps refusing batches) one by one.
async fn answer(
    requests: &Requests,
    counters: &ReadCounters,
    batch: Vec<Ask>,
    refusals: &AtomicU32,
) {
    if batch.len() == 1 || refusals.load(Ordering::Relaxed) >= REFUSALS_BEFORE_ONE_BY_ONE {
        return one_by_one(requests, counters, batch).await;
    }
    let keys: Vec<&str> = batch.iter().map(|ask| ask.key.as_str()).collect();
    counters.batches.increment(1);
    let read = requests.get_many(&keys).await;
    drop(keys);
    match read {
        Ok(values) => {
            refusals.store(0, Ordering::Relaxed);
            for (ask, value) in batch.into_iter().zip(values) {
                let _ = ask.answer.send(Ok(value));
            }
        }
        Err(error) => {
            let refused = match &error {
                ManyError::Refused(_) => refusals.fetch_add(1, Ordering::Relaxed) + 1,
                ManyError::Unanswered(_) => refusals.load(Ordering::Relaxed),
            };
            tracing::warn!(
                %error,
                keys = batch.len(),
                refused_in_a_row = refused,
                one_by_one_from_now = refused >= REFUSALS_BEFORE_ONE_BY_ONE,
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use async_nats::jetstream;
    use futures::StreamExt as _;
    use syncflow_testkit::NatsServer;

    use super::*;
    use crate::idmap::{BUCKET, IdMap};

    /// A server that does not know batch gets (Debian's 2.9, as the stream's
    /// server behind a newer one would be): every read is still answered
    /// right, and after three refused batches no more are sent.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_server_refusing_batches_is_read_one_by_one() {
        let nats = tokio::task::block_in_place(NatsServer::start).unwrap();
        let client = async_nats::connect(nats.url()).await.unwrap();
        let js = jetstream::new(client.clone());
        let map = IdMap::open(&js, 1).await.unwrap();
        for n in 0..10 {
            let entry = crate::idmap::Entry {
                id: Some(format!("crm-{n}")),
                ..Default::default()
            };
            map.put("p", "o", &format!("k{n}"), &entry).await.unwrap();
        }
        let batches = Arc::new(AtomicUsize::new(0));
        let mut seen = client
            .subscribe(format!("$JS.API.DIRECT.GET.KV_{BUCKET}"))
            .await
            .unwrap();
        client.flush().await.unwrap();
        let counted = Arc::clone(&batches);
        tokio::spawn(async move {
            while seen.next().await.is_some() {
                counted.fetch_add(1, Ordering::Relaxed);
            }
        });

        let gathered = Gathered::start(Requests::new(client.clone(), BUCKET), ReadCounters::new());
        for _wave in 0..6 {
            let reads = (0..40).map(|n| {
                let gathered = gathered.clone();
                async move {
                    let key = crate::idmap::kv_key("p", "o", &format!("k{}", n % 20));
                    (n, gathered.get(key).await)
                }
            });
            for (n, value) in futures::future::join_all(reads).await {
                let value = value.unwrap_or_else(|e| panic!("read {n}: {e}"));
                match n % 20 < 10 {
                    true => assert!(matches!(value, Some(Value::Put(_))), "read {n}: {value:?}"),
                    false => assert_eq!(value, None, "read {n}"),
                }
            }
        }
        client.flush().await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert_eq!(
            batches.load(Ordering::Relaxed),
            REFUSALS_BEFORE_ONE_BY_ONE as usize
        );
    }
}
