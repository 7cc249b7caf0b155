//! Per-key order when JetStream redelivers (DESIGN.md §5: messages with the
//! same key are applied in stream order; a crash means redelivery, not loss).
//!
//! Lanes apply a key's messages in the order they *arrive*; after a
//! redelivery that is not stream order, so these tests pin down the two ways
//! a redelivery happens: a crash, and a message expiring while it is held.

mod common;

use std::time::Duration;

use serde_json::json;
use syncflow_mock_crm::MockCrmConfig;

use common::contacts::{self, Event, hubspot_by_key};
use common::harness::Harness;

const KEYS: u32 = 10;

fn updated(key: u32, n: u32) -> Event {
    let mut ev = contacts::created(key);
    ev.op = "u";
    ev.record["email"] = json!(format!("c{key}.v{n}@example.com"));
    ev.record["status"] = json!("active");
    ev
}

/// syncflow is killed while its creates are at the CRM (applied there, not
/// yet answered, so the id map never learned the ids); the contacts are
/// updated while it is down. After the restart every update must land on
/// its contact: the redelivered creates come first (answered from the
/// Idempotency-Key store), then the updates. None is dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_made_while_syncflow_was_down_do_not_overtake_the_ones_it_held() {
    let h = Harness::start(MockCrmConfig {
        // Long enough that the creates are all at the CRM, unanswered, at the kill.
        latency: Duration::from_secs(1),
        ..MockCrmConfig::default()
    })
    .await;
    h.remove_pipeline("contacts-to-salesforce");
    h.set_rate_limit("hubspot", 2000, "1s", 50);
    h.set_ack_wait("contacts-to-hubspot", "2s");

    let creates: Vec<Event> = (1..=KEYS).map(contacts::created).collect();
    contacts::publish_all(&h, &creates).await;
    let mut first = h.spawn();
    first.wait_ready(Duration::from_secs(20)).await;
    h.wait_crm(
        "a create",
        Duration::from_secs(10),
        |s| s.hubspot.counters.creates > 0,
        || first.log(),
    )
    .await;
    // The first wave of creates is applied at the CRM; no answer has come
    // back yet, so the id map knows none of them.
    tokio::time::sleep(Duration::from_millis(200)).await;
    first.kill9();
    let in_flight = h.crm.snapshot().hubspot.counters.creates;

    for key in 1..=KEYS {
        let ev = updated(key, 1);
        h.publish(
            &format!("cdc.contacts.{key}"),
            &format!("update-{key}"),
            &ev.payload(),
        )
        .await;
    }
    let mut second = h.spawn();
    second.wait_ready(Duration::from_secs(20)).await;
    h.wait_settled(Duration::from_secs(30)).await;
    assert!(second.sigterm().success(), "{}", second.log());

    let letters: Vec<String> = h
        .dead_letters()
        .await
        .iter()
        .map(|l| format!("{} key {}", l["error"]["kind"], l["key"]))
        .collect();
    let snap = h.crm.snapshot();
    println!(
        "while down: {in_flight} creates unanswered at the kill; {} dead letters, creates {}, replays {}",
        letters.len(),
        snap.hubspot.counters.creates,
        snap.hubspot.counters.idempotent_replays
    );
    assert_eq!(letters, Vec::<String>::new(), "dead letters");
    let hubspot = hubspot_by_key(&snap);
    assert_eq!(hubspot.len(), KEYS as usize);
    for key in 1..=KEYS {
        assert_eq!(
            hubspot[&key.to_string()]["email"],
            json!(format!("c{key}.v1@example.com")),
            "key {key}"
        );
    }
    assert_eq!(snap.hubspot.counters.creates, u64::from(KEYS));
}

/// One contact changed 40 times, at a CRM that takes 10 requests/s: its
/// lane holds most of the changes for seconds, longer than ack_wait. A
/// healthy process keeps telling JetStream it is working on every message
/// it holds (lane.rs), so none is redelivered behind its back: one delivery
/// per message, no request replayed, every change applied once, in order.
/// (`num_redelivered` cannot tell: the server forgets a redelivery once it
/// is acked. The consumer's delivery count keeps it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_held_longer_than_ack_wait_are_not_redelivered() {
    const CHANGES: u32 = 40;
    let h = Harness::start(MockCrmConfig {
        record_log: true,
        ..MockCrmConfig::default()
    })
    .await;
    h.remove_pipeline("contacts-to-salesforce");
    h.set_rate_limit("hubspot", 10, "1s", 1);
    h.set_ack_wait("contacts-to-hubspot", "1s");

    let mut events = vec![contacts::created(1)];
    events.extend((1..=CHANGES).map(|n| updated(1, n)));
    contacts::publish_all(&h, &events).await;
    let mut syncflow = h.spawn();
    syncflow.wait_ready(Duration::from_secs(20)).await;
    h.wait_settled(Duration::from_secs(30)).await;
    let consumer = h.consumer("contacts-to-hubspot").await;
    assert!(syncflow.sigterm().success(), "{}", syncflow.log());

    let snap = h.crm.snapshot();
    let applied: Vec<String> = snap
        .hubspot
        .log
        .iter()
        .filter(|r| r.method == "PATCH" && r.status == 200 && !r.replayed)
        .map(|r| r.body["properties"]["email"].as_str().unwrap().to_string())
        .collect();
    let deliveries = consumer.delivered.consumer_sequence;
    println!(
        "held past ack_wait: {} deliveries of {} messages, {} replays, {} updates applied",
        deliveries,
        events.len(),
        snap.hubspot.counters.idempotent_replays,
        applied.len()
    );
    let want: Vec<String> = (1..=CHANGES)
        .map(|n| format!("c1.v{n}@example.com"))
        .collect();
    assert_eq!(applied, want, "each change applied once, in order");
    assert_eq!(
        deliveries,
        events.len() as u64,
        "deliveries (redeliveries included)"
    );
    assert_eq!(snap.hubspot.counters.idempotent_replays, 0, "replays");
    assert_eq!(h.dead_letters().await, Vec::<serde_json::Value>::new());
}
