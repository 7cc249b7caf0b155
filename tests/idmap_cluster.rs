//! The id map on a three-node JetStream cluster (R3): what an instance
//! wrote it reads back, through the death and return of the bucket's
//! stream leader.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use syncflow::idmap::{Entry, IdMap};
use syncflow_testkit::NatsCluster;

async fn retry<T, E: std::fmt::Display, F, Fut>(errors: &AtomicU64, mut op: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    loop {
        match op().await {
            Ok(v) => return v,
            Err(_) => {
                errors.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_id_map_reads_back_its_writes_through_a_leader_death() {
    let mut cluster = tokio::task::block_in_place(NatsCluster::start).expect("cluster");
    let client = async_nats::ConnectOptions::new()
        .connect(cluster.urls().split(',').collect::<Vec<_>>())
        .await
        .expect("connect");
    let js = jetstream::new(client);
    let map = Arc::new(IdMap::open(&js, 3).await.expect("id map"));
    let errors = Arc::new(AtomicU64::new(0));
    let lost = Arc::new(AtomicU64::new(0));
    let writes = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(16);
    let mut tasks = Vec::new();
    for t in 0..4u64 {
        let (map, errors, lost, writes) =
            (map.clone(), errors.clone(), lost.clone(), writes.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < deadline {
                let key = format!("k{t}-{n}");
                let entry = Entry {
                    id: Some(format!("id-{key}")),
                    seq: n + 1,
                    ..Entry::default()
                };
                retry(&errors, || map.put("p", "o", &key, &entry)).await;
                writes.fetch_add(1, Ordering::Relaxed);
                let read = retry(&errors, || map.lookup("p", "o", &key)).await;
                if read.as_ref() != Some(&entry) {
                    lost.fetch_add(1, Ordering::Relaxed);
                    println!("{:?} {key}: read {read:?}", Instant::now());
                }
                if n > 0 {
                    let old = format!("k{t}-{}", (n * 7919) % n);
                    let read = retry(&errors, || map.lookup("p", "o", &old)).await;
                    if read.is_none() {
                        lost.fetch_add(1, Ordering::Relaxed);
                        println!("{:?} {old} (old): read nothing", Instant::now());
                    }
                }
                n += 1;
            }
        }));
    }
    let mut stream = js.get_stream("KV_syncflow_idmap").await.expect("stream");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let leader = stream
        .info()
        .await
        .expect("info")
        .cluster
        .clone()
        .and_then(|c| c.leader)
        .and_then(|name| NatsCluster::index_of(&name))
        .expect("leader");
    let leader = match std::env::var("KILL") {
        Ok(i) => i.parse().unwrap(),
        Err(_) => leader,
    };
    println!("killing leader n{}", leader + 1);
    cluster.kill(leader);
    tokio::time::sleep(Duration::from_secs(4)).await;
    tokio::task::block_in_place(|| cluster.restart(leader)).expect("restart");
    println!("restarted");
    for t in tasks {
        t.await.unwrap();
    }
    println!(
        "writes {}, errors {}, lost {}",
        writes.load(Ordering::Relaxed),
        errors.load(Ordering::Relaxed),
        lost.load(Ordering::Relaxed)
    );
    assert_eq!(lost.load(Ordering::Relaxed), 0);
}
