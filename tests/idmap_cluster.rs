//! The id map on a three-node JetStream cluster (R3): what an instance
//! wrote it reads back, through the death and return of a node.
//!
//! The id map answers every update's "which record is this?": an empty
//! answer for a key whose create was stored sends the update to the dead
//! letters as `unknown_id`. Buckets with replicas read from the stream's
//! leader (kv.rs); this test holds that to its promise while the leader
//! dies, a new one is elected and the old one comes back.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use syncflow::idmap::{Entry, IdMap};
use syncflow_testkit::NatsCluster;

/// Runs `op` until it succeeds (the cluster may be electing), counting
/// the failures.
async fn until_ok<T, E, F, Fut>(failures: &AtomicU64, mut op: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    loop {
        match op().await {
            Ok(v) => return v,
            Err(_) => {
                failures.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[derive(Default)]
struct Counts {
    writes: AtomicU64,
    failures: AtomicU64,
    wrong: AtomicU64,
}

/// Four writers, each storing entries and reading back the one just
/// written and one written earlier, while the bucket's leader is killed
/// and restarted: every read finds what was stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_id_map_reads_back_its_writes_through_a_leaders_death() {
    let mut cluster =
        tokio::task::block_in_place(NatsCluster::start).unwrap_or_else(|e| panic!("{e}"));
    let client = async_nats::ConnectOptions::new()
        .connect(cluster.urls().split(',').collect::<Vec<_>>())
        .await
        .expect("connect");
    let js = jetstream::new(client);
    let map = Arc::new(IdMap::open(&js, 3).await.expect("id map"));
    let counts = Arc::new(Counts::default());
    let deadline = Instant::now() + Duration::from_secs(10);
    let entry = |t: u64, n: u64| Entry {
        id: Some(format!("id-{t}-{n}")),
        seq: n + 1,
        ..Entry::default()
    };
    let writers: Vec<_> = (0..4u64)
        .map(|t| {
            let (map, counts) = (map.clone(), counts.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                while Instant::now() < deadline {
                    let key = format!("k{t}-{n}");
                    let written = entry(t, n);
                    until_ok(&counts.failures, || map.put("p", "o", &key, &written)).await;
                    counts.writes.fetch_add(1, Ordering::Relaxed);
                    // The one just written, and one from earlier.
                    let earlier = n.wrapping_mul(2_654_435_761) % (n + 1);
                    for m in [n, earlier] {
                        let key = format!("k{t}-{m}");
                        let read = until_ok(&counts.failures, || map.lookup("p", "o", &key)).await;
                        if read != Some(entry(t, m)) {
                            counts.wrong.fetch_add(1, Ordering::Relaxed);
                            println!("{key}: read {read:?}");
                        }
                    }
                    n += 1;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut stream = js.get_stream("KV_syncflow_idmap").await.expect("stream");
    let leader = stream
        .info()
        .await
        .expect("stream info")
        .cluster
        .clone()
        .and_then(|c| c.leader)
        .and_then(|name| NatsCluster::index_of(&name))
        .expect("the bucket has a leader");
    cluster.kill(leader);
    tokio::time::sleep(Duration::from_secs(3)).await;
    tokio::task::block_in_place(|| cluster.restart(leader)).expect("restart the node");
    for w in writers {
        w.await.unwrap();
    }
    let (writes, failures, wrong) = (
        counts.writes.load(Ordering::Relaxed),
        counts.failures.load(Ordering::Relaxed),
        counts.wrong.load(Ordering::Relaxed),
    );
    println!(
        "id map, R3, leader killed and restarted: {writes} writes, {failures} failed tries, {wrong} wrong reads"
    );
    assert!(writes > 100, "the writers got through: {writes}");
    assert_eq!(wrong, 0, "reads that did not find what was stored");
}
