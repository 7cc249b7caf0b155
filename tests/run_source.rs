//! The source side of `syncflow run`: a missing stream or an unreachable
//! NATS is a log line naming it, `/readyz` 503 and a retry with backoff —
//! never a crash — and processing resumes by itself once it is back.

mod common;

use std::time::{Duration, Instant};

use async_nats::jetstream;
use syncflow_mock_crm::MockCrmConfig;

use common::contacts::{self, Event};
use common::harness::{Harness, Syncflow};

/// Waits until `/readyz` answers `status`; returns its body.
async fn readyz_becomes(syncflow: &Syncflow, status: u16, timeout: Duration) -> String {
    let started = Instant::now();
    loop {
        let (now, body) = syncflow.readyz().await;
        if now == status {
            return body;
        }
        assert!(
            started.elapsed() < timeout,
            "/readyz still {now} ({body}) after {timeout:?}:\n{}",
            syncflow.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn cdc_stream() -> jetstream::stream::Config {
    jetstream::stream::Config {
        name: "CDC".into(),
        subjects: vec!["cdc.>".into()],
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_stream_is_waited_for_and_then_consumed() {
    let h = Harness::start(MockCrmConfig::default()).await;
    h.remove_pipeline("contacts-to-salesforce");
    h.js.delete_stream("CDC").await.unwrap();

    let mut syncflow = h.spawn();
    let line = syncflow
        .wait_log("source unavailable", Duration::from_secs(20))
        .await;
    assert!(line.contains(r#"stream "CDC" not found"#), "{line}");
    assert!(line.contains("retry_in_ms"), "{line}");
    let body = readyz_becomes(&syncflow, 503, Duration::from_secs(5)).await;
    assert!(body.contains("contacts-to-hubspot"), "{body}");

    h.js.create_stream(cdc_stream()).await.unwrap();
    let events: Vec<Event> = (1..=5).map(contacts::created).collect();
    contacts::publish_all(&h, &events).await;
    readyz_becomes(&syncflow, 200, Duration::from_secs(40)).await;
    h.wait_settled(Duration::from_secs(20)).await;
    assert_eq!(h.crm.snapshot().hubspot.counters.creates, 5);
    assert!(syncflow.sigterm().success(), "{}", syncflow.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_going_away_is_not_ready_and_coming_back_resumes() {
    let mut h = Harness::start(MockCrmConfig::default()).await;
    h.remove_pipeline("contacts-to-salesforce");
    let mut syncflow = h.spawn();
    syncflow.wait_ready(Duration::from_secs(20)).await;
    let before: Vec<Event> = (1..=5).map(contacts::created).collect();
    contacts::publish_all(&h, &before).await;
    h.wait_settled(Duration::from_secs(20)).await;

    tokio::task::block_in_place(|| h.nats.stop());
    let body = readyz_becomes(&syncflow, 503, Duration::from_secs(20)).await;
    assert!(
        body.contains("NATS disconnected: contacts-to-hubspot"),
        "{body}"
    );
    tokio::task::block_in_place(|| h.nats.restart()).expect("restart nats");
    readyz_becomes(&syncflow, 200, Duration::from_secs(40)).await;

    let after: Vec<Event> = (6..=10).map(contacts::created).collect();
    contacts::publish_all(&h, &after).await;
    h.wait_settled(Duration::from_secs(30)).await;
    assert_eq!(
        h.crm.snapshot().hubspot.counters.creates,
        10,
        "{}",
        syncflow.log()
    );
    assert!(syncflow.sigterm().success(), "{}", syncflow.log());
}

/// `max_ack_pending_bytes` holds large records back by their size: with
/// 20 KB records and 64 KiB, a handful are unacked at once where the count
/// alone (512) would let all 60 be.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_records_are_held_by_bytes_not_only_by_count() {
    let h = Harness::start(MockCrmConfig {
        latency: Duration::from_millis(100),
        ..MockCrmConfig::default()
    })
    .await;
    h.remove_pipeline("contacts-to-salesforce");
    let subject = r#"    subject: "cdc.contacts.>""#;
    h.edit(
        "pipelines/contacts-to-hubspot.yaml",
        subject,
        &format!("{subject}\n    max_ack_pending_bytes: 65536"),
    );
    let events: Vec<Event> = (1..=60)
        .map(|key| {
            let mut ev = contacts::created(key);
            // A long field the mapping leaves out.
            ev.record["notes"] = serde_json::json!("n".repeat(20_000));
            ev
        })
        .collect();
    contacts::publish_all(&h, &events).await;

    let mut syncflow = h.spawn();
    syncflow.wait_ready(Duration::from_secs(30)).await;
    let started = Instant::now();
    let mut most_unacked = 0;
    while h.crm.snapshot().hubspot.counters.creates < 60 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{}",
            syncflow.log()
        );
        let c = h.consumer("contacts-to-hubspot").await;
        most_unacked = most_unacked.max(c.num_ack_pending);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    h.wait_settled(Duration::from_secs(20)).await;
    // 64 KiB takes three 20 KB records, and a pull asks for one more
    // whenever any room is left: four held at most. The server counts, for
    // a millisecond or so, the records settled here whose acks are being
    // gathered (acks.rs) while the pulls their room allowed already went
    // out: as many again at most. By count alone (512), all 60 could be.
    assert!(
        (1..=8).contains(&most_unacked),
        "{most_unacked} records unacked at once"
    );
    assert!(syncflow.sigterm().success(), "{}", syncflow.log());
    println!("max_ack_pending_bytes 65536, 20 KB records: at most {most_unacked} unacked at once");
}
