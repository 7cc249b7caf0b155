//! Several instances as one (`fleet:`, docs/fleet.md): per-key order
//! across instances that are killed, restarted and stopped while changes
//! flow, failover within `fleet.failover`, hand-over on SIGTERM.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use syncflow::fleet::partition_of;
use syncflow_mock_crm::{LoggedRequest, MockCrmConfig};

use common::contacts::{self, Event};
use common::harness::{Harness, Syncflow};

const PARTITIONS: u32 = 12;

fn change(key: u32, n: u32) -> Event {
    let mut ev = contacts::created(key);
    if n > 0 {
        ev.op = "u";
    }
    ev.record["email"] = json!(format!("c{key}.v{n}@example.com"));
    ev
}

/// `keys` × `changes` events, each key's in order, keys interleaved.
fn interleaved(rng: &mut StdRng, keys: u32, changes: u32) -> Vec<Event> {
    let mut next = vec![0u32; keys as usize];
    let mut left: Vec<u32> = (1..=keys).collect();
    let mut out = Vec::with_capacity((keys * changes) as usize);
    while !left.is_empty() {
        let i = rng.random_range(0..left.len());
        let key = left[i];
        let n = &mut next[(key - 1) as usize];
        out.push(change(key, *n));
        *n += 1;
        if *n == changes {
            left.swap_remove(i);
        }
    }
    out
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

/// The key a HubSpot write was for (creates and updates carry the email).
fn key_of(r: &LoggedRequest) -> Option<u32> {
    let email = r.body["properties"]["email"].as_str()?;
    email.strip_prefix('c')?.split('.').next()?.parse().ok()
}

/// The change number of a write (`c<key>.v<n>@...`).
fn version_of(r: &LoggedRequest) -> Option<u32> {
    let email = r.body["properties"]["email"].as_str()?;
    email.split(".v").nth(1)?.split('@').next()?.parse().ok()
}

/// The partitions `log` says its instance holds at its end.
fn held_partitions(log: &str) -> BTreeSet<u32> {
    let mut held = BTreeSet::new();
    for line in log.lines().filter(|l| l.contains("fleet partition")) {
        let Some(p) = line
            .split("partition=")
            .nth(1)
            .and_then(|s| s.split(' ').next())
            .and_then(|s| s.parse().ok())
        else {
            continue;
        };
        if line.contains("holding") {
            held.insert(p);
        } else {
            held.remove(&p);
        }
    }
    held
}

/// The longest time without a write to a key of `partitions`, between
/// `from_us` and the first such write after it (how long those partitions
/// stood still).
fn pause_after(log: &[LoggedRequest], partitions: &BTreeSet<u32>, from_us: u64) -> Duration {
    let mut times: Vec<u64> = log
        .iter()
        .filter(|r| r.received_at_us >= from_us)
        .filter(|r| {
            key_of(r)
                .is_some_and(|key| partitions.contains(&partition_of(&key.to_string(), PARTITIONS)))
        })
        .map(|r| r.received_at_us)
        .collect();
    times.sort_unstable();
    let mut last = from_us;
    let mut longest = 0;
    for t in times {
        longest = longest.max(t - last);
        last = t;
        // Past the first second after the event, the partitions move again.
        if t > from_us + 1_000_000 {
            break;
        }
    }
    Duration::from_micros(longest)
}

/// Three instances, 2,000 keys × 10 changes published while instances are
/// killed with `kill -9` and restarted 5 times and one is stopped with
/// SIGTERM: every key's changes reach the CRM once each, in stream order,
/// every create once, nothing lost, nothing dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_keep_each_keys_order_through_kills_and_a_stop() {
    const KEYS: u32 = 2000;
    const CHANGES: u32 = 10;
    let h = Arc::new(
        Harness::start(MockCrmConfig {
            record_log: true,
            ..MockCrmConfig::default()
        })
        .await,
    );
    h.remove_pipeline("contacts-to-salesforce");
    h.set_rate_limit("hubspot", 100_000, "1s", 1000);
    h.edit(
        "syncflow.yaml",
        "http:",
        "fleet: { partitions: 12, failover: 2s }\nhttp:",
    );
    let mut rng = StdRng::seed_from_u64(15);
    let events = interleaved(&mut rng, KEYS, CHANGES);

    let mut instances: Vec<Syncflow> = (0..3).map(|_| h.spawn()).collect();
    for i in &instances {
        i.wait_ready(Duration::from_secs(30)).await;
    }
    // Published over the whole run, so every kill meets work in flight.
    let publisher = {
        let h = h.clone();
        tokio::spawn(async move {
            for chunk in events.chunks(500) {
                contacts::publish_all(&h, chunk).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let mut kills = Vec::new();
    let mut stop = None;
    for round in 0..6 {
        tokio::time::sleep(Duration::from_millis(rng.random_range(1200..2000))).await;
        let victim = rng.random_range(0..instances.len());
        let held = held_partitions(&instances[victim].log());
        let at = now_us();
        if round == 3 {
            assert!(
                instances[victim].sigterm().success(),
                "{}",
                instances[victim].log()
            );
            stop = Some((at, held));
        } else {
            instances[victim].kill9();
            kills.push((at, held));
        }
        // Back a moment later, as a supervisor would restart it.
        tokio::time::sleep(Duration::from_millis(300)).await;
        instances[victim] = h.spawn();
    }
    publisher.await.unwrap();
    wait_all_delivered(&h, Duration::from_secs(120)).await;
    let snap = h.crm.snapshot();

    let log = &snap.hubspot.log;
    let mut applied: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    for r in log
        .iter()
        .filter(|r| (200..300).contains(&r.status) && !r.replayed)
    {
        if let (Some(key), Some(v)) = (key_of(r), version_of(r)) {
            applied.entry(key).or_default().push(v);
        }
    }
    let want: Vec<u32> = (0..CHANGES).collect();
    let out_of_order: Vec<(u32, Vec<u32>)> = applied
        .iter()
        .filter(|(_, v)| **v != want)
        .map(|(k, v)| (*k, v.clone()))
        .take(5)
        .collect();
    let failovers: Vec<String> = kills
        .iter()
        .map(|(at, held)| {
            format!(
                "{:?} ({} partitions)",
                pause_after(log, held, *at),
                held.len()
            )
        })
        .collect();
    let handover = stop.as_ref().map(|(at, held)| {
        format!(
            "{:?} ({} partitions)",
            pause_after(log, held, *at),
            held.len()
        )
    });
    println!(
        "fleet: {} keys x {} changes, 3 instances, 5 kill -9 and 1 SIGTERM; creates {}, replays {}, writes {}; failover (kill -> next write of its partitions): {failovers:?}; SIGTERM hand-over pause: {handover:?}",
        KEYS,
        CHANGES,
        snap.hubspot.counters.creates,
        snap.hubspot.counters.idempotent_replays,
        log.len()
    );
    assert_eq!(
        out_of_order,
        Vec::new(),
        "keys whose changes were not applied once each in order"
    );
    assert_eq!(applied.len(), KEYS as usize, "keys reached");
    assert_eq!(snap.hubspot.counters.creates, u64::from(KEYS), "creates");
    assert_eq!(h.dead_letters().await, Vec::<serde_json::Value>::new());
    for mut i in instances {
        assert!(i.sigterm().success(), "{}", i.log());
    }
}

/// Waits until the pipeline's consumer and every partition have nothing
/// left (the partition stream is a work queue: empty once all is acked).
async fn wait_all_delivered(h: &Harness, timeout: Duration) {
    let started = Instant::now();
    h.wait_settled(timeout).await;
    loop {
        let mut parts = h.js.get_stream("SYNCFLOW_PARTS").await.unwrap();
        let left = parts.info().await.unwrap().state.messages;
        if left == 0 {
            return;
        }
        assert!(
            started.elapsed() < timeout,
            "{left} messages left in partitions"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
