//! `syncflow run` end to end: a few hundred creates, updates and deletes,
//! interleaved across keys, against a mock CRM that fails 5% of requests.
//! The CRMs must end in exactly the state the rules and mappings imply,
//! each key's requests in order, every create made once.

mod common;

use std::time::Duration;

use rand::SeedableRng;
use rand::rngs::StdRng;
use syncflow_mock_crm::MockCrmConfig;
use syncflow_testkit::newer_nats_server;

use common::contacts::{self, assert_crm_state, assert_hubspot_order, ops_by_key};
use common::harness::Harness;

const KEYS: u32 = 60;

fn crm() -> MockCrmConfig {
    MockCrmConfig {
        fail_rate: 0.05,
        record_log: true,
        ..MockCrmConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_history_with_injected_failures_ends_in_the_implied_state() {
    let metrics = mixed_history(Harness::start(crm()).await).await;
    // Debian's nats-server 2.9 has no batch gets: the id map reads one key a
    // request.
    assert_eq!(read_requests(&metrics, "batch"), 0.0, "{metrics}");
    assert!(read_requests(&metrics, "single") > 0.0, "{metrics}");
}

/// The same on a nats-server with batch gets (2.11 or later): the id map's
/// reads, gathered, answer as single ones do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_history_on_a_newer_server_with_gathered_reads() {
    let nats = tokio::task::block_in_place(newer_nats_server).unwrap_or_else(|e| panic!("{e}"));
    let metrics = mixed_history(Harness::start_on(nats, crm()).await).await;
    println!(
        "id map read requests: {} batch, {} single",
        read_requests(&metrics, "batch"),
        read_requests(&metrics, "single")
    );
    assert!(
        read_requests(&metrics, "batch") > 0.0,
        "no batch read: {metrics}"
    );
}

/// `syncflow_idmap_read_requests_total{kind}` from a `/metrics` page, 0
/// when there is none.
fn read_requests(metrics: &str, kind: &str) -> f64 {
    let series = format!("syncflow_idmap_read_requests_total{{kind=\"{kind}\"}}");
    common::metrics::value(metrics, &series).unwrap_or(0.0)
}

/// Publishes the history, runs syncflow until it has settled, checks the
/// CRMs' state, order and dead letters; returns syncflow's metrics.
async fn mixed_history(h: Harness) -> String {
    // Fast limits and short backoffs: this test is about correctness.
    for provider in ["hubspot", "salesforce"] {
        h.set_rate_limit(provider, 2000, "1s", 50);
        h.set_fast_retries(provider, 5);
    }

    let history = contacts::history(&mut StdRng::seed_from_u64(7), KEYS);
    contacts::publish_all(&h, &history).await;
    let mut syncflow = h.spawn();
    syncflow.wait_ready(Duration::from_secs(20)).await;
    h.wait_settled(Duration::from_secs(90)).await;
    let metrics = syncflow.metrics().await;
    assert!(syncflow.sigterm().success(), "{}", syncflow.log());

    let want = contacts::expected(&history);
    let snap = h.crm.snapshot();
    assert!(
        snap.hubspot.counters.injected_failures > 0,
        "the test must exercise retries"
    );
    assert_crm_state(&snap, &want);

    // Order: each key's successful, non-replayed requests in event order.
    let sf_ops = ops_by_key(&snap.salesforce.log, |path, _| {
        path.rsplit('/')
            .next()
            .map(str::to_string)
            .filter(|_| path.contains("Internal_Id__c"))
    });
    for (key, ops) in &want.salesforce_ops {
        let upserts = ops.iter().filter(|o| **o == "PATCH").count();
        assert_eq!(
            sf_ops.get(key).map(Vec::len),
            Some(upserts),
            "salesforce upserts of key {key}"
        );
    }
    assert_hubspot_order(&snap, &want);

    let letters = h.dead_letters().await;
    let unknown_ids = letters
        .iter()
        .filter(|l| l["error"]["kind"] == "unknown_id")
        .count();
    assert_eq!(unknown_ids, want.unknown_id, "{letters:#?}");
    assert_eq!(
        letters.len(),
        unknown_ids,
        "only unknown-id dead letters: {letters:#?}"
    );
    println!(
        "records: {} events; hubspot 503s injected {}, salesforce {}; dead letters {}\n{}",
        history.len(),
        snap.hubspot.counters.injected_failures,
        snap.salesforce.counters.injected_failures,
        letters.len(),
        metrics
            .lines()
            .filter(|l| l.starts_with("syncflow_pipeline_retries_total"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    metrics
}
