//! A crash mid-stream loses nothing and creates nothing twice: `syncflow run`
//! is killed with SIGKILL while requests are in flight (a slow, rate-limited
//! mock CRM keeps the stream going for seconds), then started again. Both
//! CRMs must end in exactly the state the events imply, every contact
//! created once (a redelivered create is answered from the Idempotency-Key
//! store, not applied again), and each dead letter published once.
//!
//! The first test gives each key one event; the second interleaves creates,
//! updates and deletes of the same keys, so the order of each key's changes
//! must survive the crash too (`run_order.rs` pins down how it can break).

mod common;

use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::rngs::StdRng;

use syncflow_mock_crm::MockCrmConfig;

use common::contacts::{self, assert_crm_state, assert_hubspot_order, requests};
use common::harness::Harness;

const KEYS: u32 = 150;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_then_restart_loses_nothing_and_creates_nothing_twice() {
    let h = Harness::start(MockCrmConfig {
        record_log: true,
        // Several requests are always in flight: some are applied by the CRM
        // but never answered to the killed process.
        latency: Duration::from_millis(100),
        ..MockCrmConfig::default()
    })
    .await;
    for provider in ["hubspot", "salesforce"] {
        h.set_rate_limit(provider, 50, "1s", 5);
        h.set_fast_retries(provider, 5);
    }
    // What the killed process held comes back after ack_wait.
    for pipeline in ["contacts-to-hubspot", "contacts-to-salesforce"] {
        h.set_ack_wait(pipeline, "2s");
    }

    let events = contacts::one_per_key(KEYS);
    let want = contacts::expected(&events);
    let writes: u64 = (want.hubspot_creates() + want.salesforce_creates()) as u64;
    contacts::publish_all(&h, &events).await;

    let started = Instant::now();
    let mut first = h.spawn();
    first.wait_ready(Duration::from_secs(20)).await;
    // Mid-stream: about a third of the writes made.
    h.wait_crm(
        "a third of the writes",
        Duration::from_secs(30),
        |s| requests(&s.hubspot) + requests(&s.salesforce) >= writes / 3,
        || first.log(),
    )
    .await;
    first.kill9();
    let at_kill = h.crm.snapshot();
    let unacked = h.consumer("contacts-to-hubspot").await.num_ack_pending
        + h.consumer("contacts-to-salesforce").await.num_ack_pending;
    assert!(unacked > 0, "killed after the stream was done");

    let mut second = h.spawn();
    second.wait_ready(Duration::from_secs(20)).await;
    h.wait_settled(Duration::from_secs(60)).await;
    let took = started.elapsed();
    assert!(second.sigterm().success(), "{}", second.log());

    let snap = h.crm.snapshot();
    assert_crm_state(&snap, &want);
    let letters = h.dead_letters().await;
    assert_eq!(letters.len(), want.unknown_id, "{letters:#?}");
    assert!(
        letters.iter().all(|l| l["error"]["kind"] == "unknown_id"),
        "{letters:#?}"
    );

    println!(
        "crash: {} events in {took:.1?}; killed after {} hubspot / {} salesforce requests with \
         {unacked} messages unacked; after restart {} + {} requests, Idempotency-Key replays \
         hubspot {} salesforce {}; creates hubspot {} salesforce {} (expected {} / {}); dead letters {}",
        events.len(),
        requests(&at_kill.hubspot),
        requests(&at_kill.salesforce),
        requests(&snap.hubspot) - requests(&at_kill.hubspot),
        requests(&snap.salesforce) - requests(&at_kill.salesforce),
        snap.hubspot.counters.idempotent_replays,
        snap.salesforce.counters.idempotent_replays,
        snap.hubspot.counters.creates,
        snap.salesforce.counters.creates,
        want.hubspot_creates(),
        want.salesforce_creates(),
        letters.len(),
    );
}

/// The mixed history of `run_sync.rs` (creates, updates, deletes of 60 keys,
/// shuffled across keys), killed with SIGKILL mid-stream: after the restart
/// both CRMs hold exactly what the events imply, HubSpot got each key's
/// writes in stream order, and only the expected dead letters exist (a
/// redelivered change applied after a later one would leave stale fields or
/// make a spurious `unknown_id`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_keeps_each_keys_changes_in_order() {
    let h = Harness::start(MockCrmConfig {
        record_log: true,
        latency: Duration::from_millis(100),
        ..MockCrmConfig::default()
    })
    .await;
    for provider in ["hubspot", "salesforce"] {
        h.set_rate_limit(provider, 50, "1s", 5);
        h.set_fast_retries(provider, 5);
    }
    for pipeline in ["contacts-to-hubspot", "contacts-to-salesforce"] {
        h.set_ack_wait(pipeline, "2s");
    }

    let history = contacts::history(&mut StdRng::seed_from_u64(11), 60);
    let want = contacts::expected(&history);
    let hubspot_writes: usize = want.hubspot_ops.values().map(Vec::len).sum();
    contacts::publish_all(&h, &history).await;

    let started = Instant::now();
    let mut first = h.spawn();
    first.wait_ready(Duration::from_secs(20)).await;
    h.wait_crm(
        "a third of the HubSpot writes",
        Duration::from_secs(30),
        |s| requests(&s.hubspot) >= hubspot_writes as u64 / 3,
        || first.log(),
    )
    .await;
    first.kill9();

    let mut second = h.spawn();
    second.wait_ready(Duration::from_secs(20)).await;
    h.wait_settled(Duration::from_secs(60)).await;
    let took = started.elapsed();
    assert!(second.sigterm().success(), "{}", second.log());

    let snap = h.crm.snapshot();
    assert_crm_state(&snap, &want);
    assert_hubspot_order(&snap, &want);
    let letters = h.dead_letters().await;
    assert_eq!(letters.len(), want.unknown_id, "{letters:#?}");
    println!(
        "crash, mixed history: {} events in {took:.1?}; replays hubspot {} salesforce {}; \
         dead letters {} (all unknown_id, as implied)",
        history.len(),
        snap.hubspot.counters.idempotent_replays,
        snap.salesforce.counters.idempotent_replays,
        letters.len(),
    );
}
