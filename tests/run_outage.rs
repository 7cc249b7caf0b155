//! A provider outage makes records wait, not dead letters: the CRM answers
//! every request 503 for a while with records queued; syncflow's retries
//! run out, the breaker opens and probes, and once the CRM is back every
//! record is delivered exactly once, with no dead letter.
//!
//! CI runs a 15 s outage with 1,000 records; `SYNCFLOW_OUTAGE=full` runs
//! the issue's 5 minutes with 10,000 records.

mod common;

use std::time::{Duration, Instant};

use serde_json::Value;
use syncflow_mock_crm::{Fault, MockApi, MockCrmConfig};

use common::contacts;
use common::harness::Harness;
use common::metrics;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_ends_with_every_record_delivered_once_and_no_dead_letter() {
    let full = std::env::var("SYNCFLOW_OUTAGE").is_ok_and(|v| v == "full");
    let (records, outage) = match full {
        true => (10_000, Duration::from_secs(300)),
        false => (1_000, Duration::from_secs(15)),
    };
    let h = Harness::start(MockCrmConfig::default()).await;
    h.remove_pipeline("contacts-to-salesforce");
    h.set_rate_limit("hubspot", 2000, "1s", 50);
    h.set_fast_retries("hubspot", 3);
    h.set_circuit_breaker("hubspot", 5, "1s");

    let down = Fault {
        method: None,
        path_contains: None,
        body_contains: None,
        item_contains: None,
        status: 503,
        body: Value::Null,
        times: None,
        retry_after_s: None,
    };
    let mut syncflow = h.spawn();
    syncflow.wait_ready(Duration::from_secs(20)).await;
    // A few records go through, then the CRM goes down with the rest queued.
    let first: Vec<_> = (1..=20).map(contacts::created).collect();
    contacts::publish_all(&h, &first).await;
    h.wait_crm(
        "20 creates",
        Duration::from_secs(30),
        |s| s.hubspot.counters.creates >= 20,
        || syncflow.log(),
    )
    .await;
    h.crm.add_fault(MockApi::Hubspot, down).unwrap();
    let went_down = Instant::now();
    let rest: Vec<_> = (21..=records).map(contacts::created).collect();
    contacts::publish_all(&h, &rest).await;
    syncflow
        .wait_log("circuit breaker opened", Duration::from_secs(60))
        .await;
    tokio::time::sleep(outage.saturating_sub(went_down.elapsed())).await;
    let during = syncflow.metrics().await;
    h.crm.clear_faults();

    h.wait_settled(Duration::from_secs(120)).await;
    let after = syncflow.metrics().await;
    assert!(syncflow.sigterm().success(), "{}", syncflow.log());

    let snap = h.crm.snapshot().hubspot;
    let letters = h.dead_letters().await;
    let waited = metrics::sum(&after, "syncflow_provider_outage_waits_total", &[]);
    println!(
        "outage of {outage:?} with {records} records: {} refused with 503, {} records waited \
         out their retries, {} dead letters, {} creates, {} records at the CRM",
        snap.counters.scripted_failures,
        waited,
        letters.len(),
        snap.counters.creates,
        snap.records.len()
    );
    assert_eq!(letters, Vec::<Value>::new(), "no dead letter");
    assert_eq!(
        snap.counters.creates,
        u64::from(records),
        "each created once"
    );
    assert_eq!(snap.records.len(), records as usize);
    assert!(waited > 0.0, "records waited out the outage");
    assert_eq!(
        metrics::value(
            &during,
            r#"syncflow_provider_breaker_open{provider="hubspot"}"#
        ),
        Some(1.0),
        "the breaker was open during the outage"
    );
}
