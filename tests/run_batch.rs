//! Batch endpoints end to end: the shipped pipelines with the providers of
//! `examples/batch` (HubSpot's batch API, Salesforce's sObject collections)
//! against the mock CRM.
//!
//! - A batch answer with mixed results ends in exactly the right dead
//!   letters and deliveries: records the CRM refused (400, 409) are dead
//!   letters alone, a record refused with a retryable status goes again in
//!   a later batch, a 409 naming the existing contact teaches its id, and a
//!   503 to the whole call retries the whole batch.
//! - Each key's creates, updates and deletes keep their order through
//!   batches.
//! - `kill -9` while batches are in flight creates nothing twice.

mod common;

use std::time::Duration;

use rand::SeedableRng;
use rand::rngs::StdRng;
use serde_json::{Value, json};
use syncflow_mock_crm::{Fault, LoggedRequest, MockApi, MockCrmConfig};

use common::contacts::{self, assert_crm_state, hubspot_by_key, requests};
use common::harness::Harness;

/// The harness with examples/batch's providers in place of the shipped ones
/// (the pipelines are the same).
async fn harness(crm: MockCrmConfig) -> Harness {
    let h = Harness::start(crm).await;
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/batch");
    for provider in ["hubspot", "salesforce"] {
        let file = format!("providers/{provider}.yaml");
        std::fs::copy(examples.join(&file), h.dir.path().join(&file)).unwrap();
    }
    h
}

fn is_batch(r: &LoggedRequest) -> bool {
    r.path.contains("/batch/") || r.path.contains("/composite/")
}

/// Records per batch request the API received.
fn batch_sizes(log: &[LoggedRequest]) -> Vec<usize> {
    log.iter()
        .filter(|r| is_batch(r))
        .map(|r| match &r.body {
            Value::Array(records) => records.len(),
            body => ["inputs", "records"]
                .iter()
                .find_map(|k| body[k].as_array())
                .map_or(0, Vec::len),
        })
        .collect()
}

fn fault(item_contains: Option<&str>, path_contains: Option<&str>, status: u16) -> Fault {
    Fault {
        method: None,
        path_contains: path_contains.map(str::to_string),
        body_contains: None,
        item_contains: item_contains.map(str::to_string),
        status,
        body: Value::Null,
        times: None,
        retry_after_s: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_batch_answer_ends_in_exactly_the_right_dead_letters_and_deliveries() {
    let h = harness(MockCrmConfig {
        record_log: true,
        ..MockCrmConfig::default()
    })
    .await;
    for provider in ["hubspot", "salesforce"] {
        h.set_fast_retries(provider, 4);
    }
    // Contact 8 was made in HubSpot by hand: its create is a conflict that
    // names it.
    let by_hand = h
        .crm
        .hubspot_user_create(json!({"email": "c8@example.com", "firstname": "ByHand"}))
        .unwrap();
    let hubspot = |f: Fault| h.crm.add_fault(MockApi::Hubspot, f).unwrap();
    // The first batch create is answered 503 as a whole.
    hubspot(Fault {
        times: Some(1),
        ..fault(None, Some("batch/create"), 503)
    });
    hubspot(fault(Some("c5@example.com"), None, 400));
    hubspot(Fault {
        body: json!({"message": "a duplicate, and not of a contact syncflow can name"}),
        ..fault(Some("c6@example.com"), None, 409)
    });
    hubspot(Fault {
        times: Some(1),
        ..fault(Some("c7@example.com"), None, 503)
    });
    // Salesforce refuses contact 9 for good, and contact 10 once.
    let salesforce = |f: Fault| h.crm.add_fault(MockApi::Salesforce, f).unwrap();
    salesforce(fault(Some("c9@example.com"), None, 400));
    salesforce(Fault {
        times: Some(1),
        ..fault(Some("c10@example.com"), None, 503)
    });

    let keys = 30;
    let events: Vec<_> = (1..=keys).map(contacts::created).collect();
    contacts::publish_all(&h, &events).await;
    let mut run = h.spawn();
    run.wait_ready(Duration::from_secs(20)).await;
    h.wait_settled(Duration::from_secs(60)).await;

    let mut letters = h.dead_letters().await;
    letters.sort_by_key(|l| l["key"].as_str().unwrap().parse::<u32>().unwrap());
    let summary: Vec<(String, String, String, u64)> = letters
        .iter()
        .map(|l| {
            (
                l["pipeline"].as_str().unwrap().to_string(),
                l["key"].as_str().unwrap().to_string(),
                l["error"]["kind"].as_str().unwrap().to_string(),
                l["error"]["status"].as_u64().unwrap_or_default(),
            )
        })
        .collect();
    let letter = |p: &str, k: &str, status| {
        (
            p.to_string(),
            k.to_string(),
            "provider_rejected".to_string(),
            status,
        )
    };
    assert_eq!(
        summary,
        [
            letter("contacts-to-hubspot", "5", 400),
            letter("contacts-to-hubspot", "6", 409),
            letter("contacts-to-salesforce", "9", 400),
        ],
        "{letters:#?}\n{}",
        run.log()
    );
    // The refused record's dead letter says what the CRM said of it.
    assert!(
        letters[1]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("CONFLICT: a duplicate"),
        "{:#}",
        letters[1]
    );

    let snap = h.crm.snapshot();
    let contacts = hubspot_by_key(&snap);
    let want: Vec<String> = (1..=keys)
        .filter(|k| ![5, 6].contains(k))
        .map(|k| k.to_string())
        .collect();
    let mut got: Vec<String> = contacts.keys().cloned().collect();
    got.sort_by_key(|k| k.parse::<u32>().unwrap());
    assert_eq!(got, want);
    // Contact 8 is the one made by hand, updated; nothing was made twice.
    assert_eq!(snap.hubspot.records[&by_hand].fields["firstname"], "F8");
    assert_eq!(snap.hubspot.counters.creates, keys as u64 - 3);
    assert_eq!(snap.salesforce.records.len(), keys as usize - 1);
    assert_eq!(snap.salesforce.counters.creates, keys as u64 - 1);

    // Every write went in batches, several records to a request.
    for api in [&snap.hubspot, &snap.salesforce] {
        let singles: Vec<_> = api.log.iter().filter(|r| !is_batch(r)).collect();
        assert!(singles.is_empty(), "{singles:#?}");
    }
    let sizes = batch_sizes(&snap.hubspot.log);
    assert!(sizes.iter().any(|&n| n >= 10), "{sizes:?}");
    // The whole-batch 503 was retried as a whole: same records, same key.
    let first_two: Vec<&LoggedRequest> = snap.hubspot.log.iter().take(2).collect();
    assert_eq!(first_two[0].status, 503, "{first_two:#?}");
    assert_eq!(first_two[0].body, first_two[1].body);
    assert_eq!(first_two[0].idempotency_key, first_two[1].idempotency_key);
    // Contact 7 went alone into a later batch after its refusal.
    let with_7: Vec<&LoggedRequest> = snap
        .hubspot
        .log
        .iter()
        .filter(|r| r.body.to_string().contains("c7@example.com"))
        .collect();
    assert!(with_7.len() >= 2, "{with_7:#?}");
    assert!(run.sigterm().success(), "{}", run.log());
    println!(
        "mixed batch: hubspot batch sizes {sizes:?}, salesforce {:?}",
        batch_sizes(&snap.salesforce.log)
    );
}

/// The mixed history of `run_sync.rs` (creates, updates, deletes of 60 keys,
/// shuffled across keys) through batches: both CRMs end as the events imply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_keys_changes_keep_their_order_through_batches() {
    let h = harness(MockCrmConfig {
        record_log: true,
        latency: Duration::from_millis(20),
        ..MockCrmConfig::default()
    })
    .await;
    let history = contacts::history(&mut StdRng::seed_from_u64(7), 60);
    let want = contacts::expected(&history);
    contacts::publish_all(&h, &history).await;
    let mut run = h.spawn();
    run.wait_ready(Duration::from_secs(20)).await;
    h.wait_settled(Duration::from_secs(60)).await;
    let snap = h.crm.snapshot();
    assert_crm_state(&snap, &want);
    let letters = h.dead_letters().await;
    assert_eq!(letters.len(), want.unknown_id, "{letters:#?}");
    let sizes = batch_sizes(&snap.hubspot.log);
    assert!(
        sizes.len() < history.len() / 2,
        "{} batches for {} events",
        sizes.len(),
        history.len()
    );
    assert!(run.sigterm().success(), "{}", run.log());
}

/// SIGKILL while batches are in flight (a slow, rate-limited CRM), then a
/// restart: every contact exists once. HubSpot answers a redelivered create
/// of a contact it has with a conflict naming it (syncflow learns the id);
/// Salesforce upserts by our key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_batch_creates_nothing_twice() {
    let h = harness(MockCrmConfig {
        record_log: true,
        latency: Duration::from_millis(300),
        ..MockCrmConfig::default()
    })
    .await;
    for provider in ["hubspot", "salesforce"] {
        h.set_rate_limit(provider, 4, "1s", 2);
        h.set_fast_retries(provider, 5);
        h.set_line(
            &format!("providers/{provider}.yaml"),
            "max_records:",
            "      max_records: 10",
        );
    }
    for pipeline in ["contacts-to-hubspot", "contacts-to-salesforce"] {
        h.set_ack_wait(pipeline, "2s");
    }
    let keys = 200;
    let events = contacts::one_per_key(keys);
    let want = contacts::expected(&events);
    contacts::publish_all(&h, &events).await;

    let mut first = h.spawn();
    first.wait_ready(Duration::from_secs(20)).await;
    let creates = (want.hubspot_creates() + want.salesforce_creates()) as u64;
    h.wait_crm(
        "a third of the creates",
        Duration::from_secs(60),
        |s| s.hubspot.counters.creates + s.salesforce.counters.creates >= creates / 3,
        || first.log(),
    )
    .await;
    first.kill9();
    let at_kill = h.crm.snapshot();

    let mut second = h.spawn();
    second.wait_ready(Duration::from_secs(20)).await;
    h.wait_settled(Duration::from_secs(90)).await;
    assert!(second.sigterm().success(), "{}", second.log());
    let snap = h.crm.snapshot();
    assert_crm_state(&snap, &want);
    let letters = h.dead_letters().await;
    assert_eq!(letters.len(), want.unknown_id, "{letters:#?}");
    println!(
        "batch crash: killed after {} hubspot / {} salesforce creates in {} / {} requests; \
         after restart {} + {} requests; creates {} / {} (expected {} / {})",
        at_kill.hubspot.counters.creates,
        at_kill.salesforce.counters.creates,
        requests(&at_kill.hubspot),
        requests(&at_kill.salesforce),
        requests(&snap.hubspot) - requests(&at_kill.hubspot),
        requests(&snap.salesforce) - requests(&at_kill.salesforce),
        snap.hubspot.counters.creates,
        snap.salesforce.counters.creates,
        want.hubspot_creates(),
        want.salesforce_creates(),
    );
}

/// One bad record makes the CRM refuse its whole batch (400): its records
/// are sent one by one, and only the bad one is a dead letter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_refused_for_one_record_is_sent_record_by_record() {
    let h = harness(MockCrmConfig {
        record_log: true,
        ..MockCrmConfig::default()
    })
    .await;
    h.remove_pipeline("contacts-to-salesforce");
    // Any request holding contact 3, batch or single, is refused.
    h.crm
        .add_fault(
            MockApi::Hubspot,
            Fault::body_contains("c3@example.com", 400),
        )
        .unwrap();
    let events: Vec<_> = (1..=10).map(contacts::created).collect();
    contacts::publish_all(&h, &events).await;
    let mut run = h.spawn();
    run.wait_ready(Duration::from_secs(20)).await;
    h.wait_settled(Duration::from_secs(60)).await;

    let letters = h.dead_letters().await;
    assert_eq!(letters.len(), 1, "{letters:#?}");
    assert_eq!(letters[0]["key"], "3");
    assert_eq!(letters[0]["error"]["status"], 400);
    let snap = h.crm.snapshot();
    assert_eq!(hubspot_by_key(&snap).len(), 9);
    assert_eq!(snap.hubspot.counters.creates, 9);
    let paths: Vec<(&str, u16)> = snap
        .hubspot
        .log
        .iter()
        .map(|r| (r.path.as_str(), r.status))
        .collect();
    assert_eq!(paths[0], ("/crm/v3/objects/contacts/batch/create", 400));
    assert_eq!(paths.len(), 11, "{paths:?}");
    assert!(run.sigterm().success(), "{}", run.log());
}
