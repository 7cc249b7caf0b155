//! Several instances as one (`fleet:`, docs/fleet.md): per-key order
//! across instances that are killed, restarted and stopped while changes
//! flow, failover within `fleet.failover`, hand-over on SIGTERM.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_nats::jetstream;
use futures::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use syncflow::fleet::partition_of;
use syncflow_mock_crm::{LoggedRequest, MockCrmConfig};
use syncflow_testkit::NatsCluster;

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
    let h = Arc::new(fleet_harness("").await);
    let js = h.js.clone();
    let report = run_chaos(&h, &js, &[], 2000, Chaos::Instances).await;
    report.check(2000);
}

/// The same on a three-node JetStream cluster with every stream and bucket
/// at three replicas: one NATS node is killed mid-run and restarted, and
/// one syncflow instance is killed too. Nothing is lost or reordered.
/// (docs/fleet.md, failure modes: what nats-server 2.9 does meanwhile and
/// what the fleet does about it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_node_killed_mid_run_loses_and_reorders_nothing() {
    let h = Arc::new(fleet_harness("jetstream: { replicas: 3 }\n").await);
    let mut cluster = NatsCluster::start().unwrap_or_else(|e| panic!("{e}"));
    let client = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(cluster.urls().split(',').collect::<Vec<_>>())
        .await
        .expect("connect to the cluster");
    let js = jetstream::new(client);
    js.create_stream(jetstream::stream::Config {
        name: "CDC".into(),
        subjects: vec!["cdc.>".into()],
        num_replicas: 3,
        ..Default::default()
    })
    .await
    .expect("CDC stream, R3");
    let env = [("NATS_URL", cluster.urls())];
    let report = run_chaos(&h, &js, &env, 1000, Chaos::NatsNode(&mut cluster)).await;
    report.check(1000);
}

/// A harness for three instances in a fleet (12 partitions, failover 2 s),
/// HubSpot only, its limit out of the way; `globals` added to syncflow.yaml.
async fn fleet_harness(globals: &str) -> Harness {
    let h = Harness::start(MockCrmConfig {
        record_log: true,
        ..MockCrmConfig::default()
    })
    .await;
    h.remove_pipeline("contacts-to-salesforce");
    h.set_rate_limit("hubspot", 100_000, "1s", 1000);
    h.edit(
        "syncflow.yaml",
        "http:",
        &format!("{globals}fleet: {{ partitions: {PARTITIONS}, failover: 2s }}\nhttp:"),
    );
    h
}

enum Chaos<'a> {
    /// Five `kill -9` and one SIGTERM of random instances, each restarted.
    Instances,
    /// One NATS node killed and restarted, one instance killed.
    NatsNode(&'a mut NatsCluster),
}

/// What a run did, for its checks.
struct Report {
    applied: BTreeMap<u32, Vec<u32>>,
    creates: u64,
    dead_letters: u64,
}

impl Report {
    fn check(&self, keys: u32) {
        let want: Vec<u32> = (0..CHANGES).collect();
        let out_of_order: Vec<(u32, Vec<u32>)> = self
            .applied
            .iter()
            .filter(|(_, v)| **v != want)
            .map(|(k, v)| (*k, v.clone()))
            .take(5)
            .collect();
        assert_eq!(
            out_of_order,
            Vec::new(),
            "keys whose changes were not applied once each in order"
        );
        assert_eq!(self.applied.len(), keys as usize, "keys reached");
        assert_eq!(self.creates, u64::from(keys), "creates");
        assert_eq!(self.dead_letters, 0, "dead letters");
    }
}

const CHANGES: u32 = 10;

/// Three instances; `keys` × 10 changes published over the run while
/// `chaos` happens; waits until all is delivered and reports.
async fn run_chaos(
    h: &Arc<Harness>,
    js: &jetstream::Context,
    env: &[(&str, String)],
    keys: u32,
    mut chaos: Chaos<'_>,
) -> Report {
    let mut rng = StdRng::seed_from_u64(15);
    let events = interleaved(&mut rng, keys, CHANGES);
    let spawn = || Syncflow::spawn_with_env(h, h.dir.path(), "10s", env);
    let mut instances: Vec<Syncflow> = (0..3).map(|_| spawn()).collect();
    for i in &instances {
        i.wait_ready(Duration::from_secs(30)).await;
    }
    // Published over the whole run, so every kill meets work in flight.
    let publisher = {
        let js = js.clone();
        tokio::spawn(async move {
            for (n, ev) in events.iter().enumerate() {
                publish(&js, ev, n).await;
                if n % 500 == 499 {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        })
    };
    let mut kills = Vec::new();
    let mut stop = None;
    match &mut chaos {
        Chaos::Instances => {
            for round in 0..6 {
                tokio::time::sleep(Duration::from_millis(rng.random_range(1200..2000))).await;
                let victim = rng.random_range(0..instances.len());
                let held = held_partitions(&instances[victim].log());
                let at = now_us();
                if round == 3 {
                    let status = instances[victim].sigterm();
                    assert!(status.success(), "{}", instances[victim].log());
                    stop = Some((at, held));
                } else {
                    instances[victim].kill9();
                    kills.push((at, held));
                }
                // Back a moment later, as a supervisor would restart it.
                tokio::time::sleep(Duration::from_millis(300)).await;
                instances[victim] = spawn();
            }
        }
        Chaos::NatsNode(cluster) => {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            cluster.kill(1);
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let held = held_partitions(&instances[0].log());
            let at = now_us();
            instances[0].kill9();
            kills.push((at, held));
            tokio::time::sleep(Duration::from_millis(300)).await;
            instances[0] = spawn();
            tokio::time::sleep(Duration::from_millis(1500)).await;
            cluster.restart(1).expect("restart the NATS node");
        }
    }
    publisher.await.unwrap();
    if let Err(left) = delivered(js, Duration::from_secs(120)).await {
        print_moves(&instances);
        if std::env::var("FLEET_DEBUG").is_ok() {
            print_stranded(js).await;
        }
        panic!("not delivered after 120 s: {left:?}");
    }
    let snap = h.crm.snapshot();

    let log = &snap.hubspot.log;
    let applied = applied_versions(log);
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
    let dead_letters = dead_letter_count(js).await;
    println!(
        "fleet ({}): {} keys x {} changes, 3 instances; creates {}, replays {}, writes {}; failover (kill -9 -> next write of its partitions): {failovers:?}; SIGTERM hand-over pause: {handover:?}",
        match chaos {
            Chaos::Instances => "5 kill -9 and 1 SIGTERM",
            Chaos::NatsNode(_) => "1 of 3 NATS nodes killed and restarted, R3, 1 kill -9",
        },
        keys,
        CHANGES,
        snap.hubspot.counters.creates,
        snap.hubspot.counters.idempotent_replays,
        log.len()
    );
    // What the CRM saw of keys whose changes did not arrive in order, to
    // tell a loss from a repeat or a reordering.
    let want: Vec<u32> = (0..CHANGES).collect();
    for (key, _) in applied.iter().filter(|(_, v)| **v != want).take(3) {
        for r in log.iter().filter(|r| key_of(r) == Some(*key)) {
            println!(
                "  key {key}: {} v{:?} {} replayed={} at {} key={:?}",
                r.method,
                version_of(r),
                r.status,
                r.replayed,
                r.received_at_us,
                r.idempotency_key
            );
        }
    }
    // FLEET_DEBUG=1: how the fleet moved, from each instance's log.
    if std::env::var("FLEET_DEBUG").is_ok() {
        println!(
            "kills at {:?}",
            kills.iter().map(|(at, _)| *at).collect::<Vec<_>>()
        );
        print_moves(&instances);
    }
    // Keys out of order: how their partitions moved, and every warning.
    let bad: Vec<u32> = applied
        .iter()
        .filter(|(_, v)| **v != want)
        .map(|(k, _)| *k)
        .take(2)
        .collect();
    for key in &bad {
        let p = partition_of(&key.to_string(), PARTITIONS);
        println!("key {key} is in partition {p}");
        let marks = [
            format!("partition={p} "),
            format!("/p{p} "),
            format!("-p{p}\""),
            "splitter".to_string(),
        ];
        for (n, i) in instances.iter().enumerate() {
            for line in i
                .log()
                .lines()
                .filter(|l| {
                    marks.iter().any(|m| l.contains(m.as_str()))
                        || l.contains("WARN")
                        || l.contains("ERROR")
                })
                .take(120)
            {
                println!("  instance {n}: {}", &line[..line.len().min(260)]);
            }
        }
    }
    for mut i in instances {
        assert!(i.sigterm().success(), "{}", i.log());
    }
    Report {
        applied,
        creates: snap.hubspot.counters.creates,
        dead_letters,
    }
}

/// Each key's change numbers as the CRM applied them (2xx, not replayed).
fn applied_versions(log: &[LoggedRequest]) -> BTreeMap<u32, Vec<u32>> {
    let mut applied: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    for r in log
        .iter()
        .filter(|r| (200..300).contains(&r.status) && !r.replayed)
    {
        if let (Some(key), Some(v)) = (key_of(r), version_of(r)) {
            applied.entry(key).or_default().push(v);
        }
    }
    applied
}

async fn dead_letter_count(js: &jetstream::Context) -> u64 {
    match js.get_stream("SYNCFLOW_DLQ").await {
        Ok(mut s) => s.info().await.unwrap().state.messages,
        Err(_) => 0,
    }
}

/// Two instances in a fleet take two reloads while changes flow: a mapping
/// change (the pipeline swaps to its new version in place) and a change of
/// its source settings (the pipeline drains and starts again, its splitter
/// and partitions let go and run again). Nothing lost, nothing reordered,
/// every create once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_reloads_without_losing_or_reordering() {
    const KEYS: u32 = 300;
    let h = Arc::new(fleet_harness("").await);
    let mut rng = StdRng::seed_from_u64(7);
    let events = interleaved(&mut rng, KEYS, CHANGES);
    let instances: Vec<Syncflow> = (0..2).map(|_| h.spawn()).collect();
    for i in &instances {
        i.wait_ready(Duration::from_secs(30)).await;
    }
    let publisher = {
        let js = h.js.clone();
        tokio::spawn(async move {
            for (n, ev) in events.iter().enumerate() {
                publish(&js, ev, n).await;
                if n % 100 == 99 {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(800)).await;
    h.edit(
        "pipelines/contacts-to-hubspot.yaml",
        "properties.phone: $.phone",
        "properties.phone: { expr: 'record.phone' }",
    );
    for i in &instances {
        i.wait_log("changed=[\"contacts-to-hubspot\"]", Duration::from_secs(20))
            .await;
    }
    h.set_ack_wait("contacts-to-hubspot", "20s");
    for i in &instances {
        i.wait_log(
            "restarted=[\"contacts-to-hubspot\"]",
            Duration::from_secs(20),
        )
        .await;
    }
    publisher.await.unwrap();
    wait_all_delivered(&h.js, Duration::from_secs(60)).await;
    let snap = h.crm.snapshot();
    println!(
        "fleet reload: {KEYS} keys x {CHANGES} changes, 2 instances, a swap and a restart; creates {}, replays {}",
        snap.hubspot.counters.creates, snap.hubspot.counters.idempotent_replays
    );
    let report = Report {
        applied: applied_versions(&snap.hubspot.log),
        creates: snap.hubspot.counters.creates,
        dead_letters: dead_letter_count(&h.js).await,
    };
    report.check(KEYS);
    for mut i in instances {
        assert!(i.sigterm().success(), "{}", i.log());
    }
}

/// The consumers of `stream`, each with something pending or unacked
/// noted in `busy`; `None` when NATS could not say.
async fn unsettled(
    stream: &jetstream::stream::Stream,
    busy: &mut Vec<String>,
) -> Option<Vec<jetstream::consumer::Info>> {
    let mut consumers = Vec::new();
    let mut listed = stream.consumers();
    while let Some(info) = listed.next().await {
        let info = info.ok()?;
        if info.num_pending > 0 || info.num_ack_pending > 0 {
            busy.push(format!(
                "{}: {} pending, {} unacked",
                info.name, info.num_pending, info.num_ack_pending
            ));
        }
        consumers.push(info);
    }
    Some(consumers)
}

/// FLEET_DEBUG: the partition consumers' positions and the messages left
/// in the partitions, to tell messages skipped from messages stored late.
async fn print_stranded(js: &jetstream::Context) {
    let Ok(mut parts) = js.get_stream("SYNCFLOW_PARTS").await else {
        return;
    };
    let mut listed = parts.consumers();
    while let Some(Ok(c)) = listed.next().await {
        println!(
            "  consumer {}: delivered {} ack floor {} pending {} created {}",
            c.name,
            c.delivered.stream_sequence,
            c.ack_floor.stream_sequence,
            c.num_pending,
            c.created
        );
    }
    let state = parts.info().await.map(|i| i.state.clone());
    let Ok(state) = state else { return };
    println!(
        "  parts stream: first {} last {} messages {}",
        state.first_sequence, state.last_sequence, state.messages
    );
    let mut shown = 0;
    for seq in state.first_sequence..=state.last_sequence {
        if let Ok(m) = parts.get_raw_message(seq).await {
            let origin = m.headers.get("Syncflow-Seq").map(|v| v.to_string());
            if shown < 40 {
                println!(
                    "  left: seq {seq} {} origin {origin:?} at {}",
                    m.subject, m.time
                );
            }
            shown += 1;
        }
    }
}

/// How the fleet moved, from each instance's log (FLEET_DUMP=DIR: each
/// whole log copied there).
fn print_moves(instances: &[Syncflow]) {
    if let Ok(dir) = std::env::var("FLEET_DUMP") {
        for (n, i) in instances.iter().enumerate() {
            let _ = std::fs::write(format!("{dir}/instance-{n}.log"), i.log());
        }
    }
    const MOVES: [&str; 8] = [
        "took the consumer",
        "splitting",
        "fleet partition",
        "fleet splitter",
        "cannot",
        "members changed",
        "let go",
        "running partition",
    ];
    for (n, i) in instances.iter().enumerate() {
        for line in i
            .log()
            .lines()
            .filter(|l| MOVES.iter().any(|w| l.contains(w)))
            .take(150)
        {
            println!("  instance {n}: {}", &line[..line.len().min(220)]);
        }
    }
}

/// Publishes one event on `cdc.contacts.<key>` with `Nats-Msg-Id` `ev-<n>`,
/// again until stored (a NATS node may be down: the id makes a repeat
/// harmless).
async fn publish(js: &jetstream::Context, ev: &Event, n: usize) {
    let started = Instant::now();
    loop {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", format!("ev-{n}").as_str());
        let sent = js
            .publish_with_headers(
                format!("cdc.contacts.{}", ev.key),
                headers,
                ev.payload().into(),
            )
            .await;
        if let Ok(ack) = sent
            && ack.await.is_ok()
        {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "cannot publish event {n}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the pipeline's consumer and every partition have nothing
/// left (the partition stream is a work queue: empty once all is acked).
async fn wait_all_delivered(js: &jetstream::Context, timeout: Duration) {
    if let Err(left) = delivered(js, timeout).await {
        panic!("not delivered after {timeout:?}: {left:?}");
    }
}

/// What is left undelivered after `timeout`, if anything is.
async fn delivered(js: &jetstream::Context, timeout: Duration) -> Result<(), Option<Vec<String>>> {
    let started = Instant::now();
    let mut quiet = 0;
    loop {
        let left = async {
            let mut busy = Vec::new();
            let cdc = js.get_stream("CDC").await.ok()?;
            unsettled(&cdc, &mut busy).await?;
            // A partition is done when its consumer has nothing pending or
            // unacked and its stream holds nothing. A message its consumer
            // went past (nats-server 2.9 leaves some when a node dies: one
            // whose ack was lost, or one a consumer made on a lagging
            // replica skipped) counts as left until the partition's run
            // takes its consumer again and settles it.
            let parts = js.get_stream("SYNCFLOW_PARTS").await.ok()?;
            let consumers = unsettled(&parts, &mut busy).await?;
            let mut by_subject = parts.info_with_subjects("syncflow.parts.>").await.ok()?;
            while let Some(pair) = by_subject.next().await {
                let (subject, count) = pair.ok()?;
                let p = subject.rsplit('.').next().unwrap_or_default();
                let name = format!("contacts-to-hubspot-p{p}");
                match consumers.iter().find(|c| c.name == name) {
                    None => busy.push(format!("{subject}: {count} messages, no consumer")),
                    Some(_) => busy.push(format!("{subject}: {count} messages left")),
                }
            }
            Some(busy)
        };
        let left = left.await;
        quiet = match &left {
            Some(busy) if busy.is_empty() => quiet + 1,
            _ => 0,
        };
        if quiet >= 2 {
            return Ok(());
        }
        if started.elapsed() >= timeout {
            return Err(left);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
