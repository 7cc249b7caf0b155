//! The id map's reads gathered into batch direct gets (src/idmap/gather.rs):
//! on a nats-server that has them (2.11 or later) many reads at once go as
//! `multi_last` requests and every one is answered with its own key's value
//! (there, deleted, never written); on Debian's 2.9 the same reads go one
//! by one and read the same.
//!
//! A second connection listens on the bucket's direct get subject, as the
//! server's own responder does, to see which requests went out.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_nats::jetstream;
use futures::StreamExt as _;
use syncflow::idmap::{BUCKET, Entry, IdMap};
use syncflow_testkit::{NatsServer, newer_nats_server};

const KEYS: usize = 600;

/// What a key is before the reads: written, written then deleted by the
/// KV's own delete, or never written.
fn kind(n: usize) -> usize {
    n % 3
}

fn entry(n: usize) -> Entry {
    Entry {
        id: Some(format!("crm-{n}")),
        seq: n as u64 + 1,
        ..Entry::default()
    }
}

/// Direct get requests to the bucket seen by a listener: `(all, batches)`.
struct Seen {
    all: AtomicUsize,
    batches: AtomicUsize,
}

impl Seen {
    /// `(all, batches)` once the listener has seen the last requests: no
    /// new one for 200 ms (at most 10 s; a loaded machine delivers late).
    async fn settled(&self) -> (usize, usize) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut last = self.all.load(Ordering::Relaxed);
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            let now = self.all.load(Ordering::Relaxed);
            if now == last || std::time::Instant::now() > deadline {
                return (now, self.batches.load(Ordering::Relaxed));
            }
            last = now;
        }
    }
}

async fn listen(url: &str) -> Arc<Seen> {
    let client = async_nats::connect(url).await.expect("connect listener");
    let mut requests = client
        .subscribe(format!("$JS.API.DIRECT.GET.KV_{BUCKET}.>"))
        .await
        .expect("subscribe");
    let mut batches = client
        .subscribe(format!("$JS.API.DIRECT.GET.KV_{BUCKET}"))
        .await
        .expect("subscribe");
    client.flush().await.expect("flush");
    let seen = Arc::new(Seen {
        all: AtomicUsize::new(0),
        batches: AtomicUsize::new(0),
    });
    let counter = Arc::clone(&seen);
    tokio::spawn(async move {
        let _client = client;
        loop {
            tokio::select! {
                Some(_) = requests.next() => { counter.all.fetch_add(1, Ordering::Relaxed); }
                Some(request) = batches.next() => {
                    let body: serde_json::Value = serde_json::from_slice(&request.payload).unwrap();
                    assert!(body["multi_last"].is_array(), "a batch get asks by subjects: {body}");
                    counter.all.fetch_add(1, Ordering::Relaxed);
                    counter.batches.fetch_add(1, Ordering::Relaxed);
                }
                else => return,
            }
        }
    });
    seen
}

/// Writes the keys, then reads them all at once (forward and reverse) and
/// checks every answer; returns what the listener saw of the reads.
async fn reads_at_once(server: &NatsServer) -> (usize, usize) {
    let client = async_nats::connect(server.url()).await.expect("connect");
    let js = jetstream::new(client);
    let map = Arc::new(IdMap::open(&js, 1).await.expect("id map"));
    for n in (0..KEYS).filter(|&n| kind(n) != 2) {
        let key = format!("k{n}");
        map.put("hubspot", "contact", &key, &entry(n))
            .await
            .expect("put");
        map.put_reverse("hubspot", "contact", &key, &format!("crm-{n}"))
            .await
            .expect("put reverse");
    }
    let kv = js.get_key_value(BUCKET).await.expect("bucket");
    for n in (0..KEYS).filter(|&n| kind(n) == 1) {
        kv.delete(syncflow::idmap::kv_key(
            "hubspot",
            "contact",
            &format!("k{n}"),
        ))
        .await
        .expect("delete");
    }

    let seen = listen(&server.url()).await;
    let reads = (0..KEYS).map(|n| {
        let map = Arc::clone(&map);
        tokio::spawn(async move {
            let key = format!("k{n}");
            let found = map
                .lookup("hubspot", "contact", &key)
                .await
                .expect("lookup");
            let expected = match kind(n) {
                0 => Some(entry(n)),
                1 => Some(Entry {
                    deleted: true,
                    ..Entry::default()
                }),
                _ => None,
            };
            assert_eq!(found, expected, "key {key}");
            let owner = map
                .key_of("hubspot", "contact", &format!("crm-{n}"))
                .await
                .expect("key_of");
            let expected = (kind(n) != 2).then_some(key);
            assert_eq!(owner, expected, "reverse entry of crm-{n}");
        })
    });
    for read in futures::future::join_all(reads).await {
        read.expect("a read task panicked");
    }
    seen.settled().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_server_takes_many_reads_in_one_request_each_answered_right() {
    let server = tokio::task::block_in_place(newer_nats_server).unwrap_or_else(|e| panic!("{e}"));
    let (requests, batches) = reads_at_once(&server).await;
    assert!(batches > 0, "no batch get among {requests} requests");
    assert!(
        requests < KEYS,
        "{KEYS} keys read twice took {requests} requests ({batches} batches)"
    );
    println!("{} reads: {requests} requests, {batches} batches", 2 * KEYS);
}

/// The suite's own nats-server, Debian's 2.9.10, has no batch gets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_server_is_read_one_by_one_and_reads_the_same() {
    let server = tokio::task::block_in_place(NatsServer::start).unwrap_or_else(|e| panic!("{e}"));
    let version = async_nats::connect(server.url())
        .await
        .expect("connect")
        .server_info()
        .version;
    let (requests, batches) = reads_at_once(&server).await;
    let older = version.starts_with("2.9.") || version.starts_with("2.10.");
    assert!(
        older,
        "nats-server {version} on PATH has batch gets: this test needs one before 2.11"
    );
    assert_eq!(batches, 0);
    assert_eq!(requests, 2 * KEYS);
}

/// Records of two pipelines may read one key at once: a batch that asks
/// for a key several times answers every asker with its value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_read_by_many_at_once_answers_each() {
    let server = tokio::task::block_in_place(newer_nats_server).unwrap_or_else(|e| panic!("{e}"));
    let client = async_nats::connect(server.url()).await.expect("connect");
    let map = Arc::new(
        IdMap::open(&jetstream::new(client), 1)
            .await
            .expect("id map"),
    );
    map.put("hubspot", "contact", "k0", &entry(0))
        .await
        .expect("put");
    let seen = listen(&server.url()).await;
    // Three keys, each read many times: one there, two never written.
    let reads = (0..300).map(|n| {
        let map = Arc::clone(&map);
        async move {
            let key = format!("k{}", n % 3);
            let found = map
                .lookup("hubspot", "contact", &key)
                .await
                .expect("lookup");
            (key, found)
        }
    });
    for (key, found) in futures::future::join_all(reads).await {
        let expected = (key == "k0").then(|| entry(0));
        assert_eq!(found, expected, "key {key}");
    }
    let (_, batches) = seen.settled().await;
    assert!(batches > 0, "no batch get");
}
