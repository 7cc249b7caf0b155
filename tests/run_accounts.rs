//! Accounts: a pipeline that names the account a record belongs to has the
//! provider's rate limit applied per account (each shared through Redis),
//! and its batches hold one account's records.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;
use syncflow_mock_crm::{LoggedRequest, MockCrmConfig};

use common::contacts;
use common::harness::Harness;

/// The busiest `window` of `times` (µs): how many fall in it at most.
fn busiest(times: &[u64], window: u64) -> usize {
    let mut sorted = times.to_vec();
    sorted.sort_unstable();
    let mut most = 0;
    let mut start = 0;
    for end in 0..sorted.len() {
        while sorted[end] - sorted[start] >= window {
            start += 1;
        }
        most = most.max(end - start + 1);
    }
    most
}

/// The contact's key in a HubSpot create (its firstname is `F<key>`).
fn key_of(r: &LoggedRequest) -> u32 {
    r.body["properties"]["firstname"].as_str().unwrap()[1..]
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_account_has_the_providers_limit_to_itself() {
    let h = Harness::start(MockCrmConfig {
        record_log: true,
        ..MockCrmConfig::default()
    })
    .await;
    h.remove_pipeline("contacts-to-salesforce");
    h.set_line(
        "pipelines/contacts-to-hubspot.yaml",
        "key: $.after.id",
        "key: $.after.id\naccount: $.after.company",
    );
    // Its tests: records without a company, which has become the account.
    let file = h.dir.path().join("pipelines/contacts-to-hubspot.yaml");
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, &text[..text.find("\ntests:").unwrap()]).unwrap();
    // 5 requests/s, one at a time: per account.
    h.set_rate_limit("hubspot", 5, "1s", 1);

    let per_account = 20;
    let mut tenant_of = BTreeMap::new();
    for key in 1..=2 * per_account {
        let tenant = if key % 2 == 0 { "acme" } else { "globex" };
        tenant_of.insert(key, tenant);
        let mut ev = contacts::created(key);
        ev.record["company"] = json!(tenant);
        let payload = json!({"op": ev.op, "after": ev.record});
        h.publish(
            &format!("cdc.contacts.{key}"),
            &format!("acct-{key}"),
            payload.to_string().as_bytes(),
        )
        .await;
    }
    let mut run = h.spawn();
    run.wait_ready(Duration::from_secs(20)).await;
    h.wait_settled(Duration::from_secs(60)).await;
    let letters = h.dead_letters().await;
    assert!(letters.is_empty(), "{letters:#?}");

    let log = h.crm.snapshot().hubspot.log;
    let mut times: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for r in &log {
        assert_eq!(r.status, 201, "{r:#?}");
        times
            .entry(tenant_of[&key_of(r)])
            .or_default()
            .push(r.received_at_us);
    }
    assert_eq!(times["acme"].len(), per_account as usize);
    assert_eq!(times["globex"].len(), per_account as usize);
    // Neither account over its limit: at most 1 + 5 in any second
    // (GCRA with burst 1), with 1 more for the clocks' difference.
    for (tenant, at) in &times {
        let most = busiest(at, 1_000_000);
        assert!(most <= 7, "{tenant}: {most} requests in one second");
    }
    // Both at their own limit at once: more in two seconds than one
    // shared limit allows (1 + 10).
    let all: Vec<u64> = times.values().flatten().copied().collect();
    let both = busiest(&all, 2_000_000);
    assert!(both >= 14, "{both} requests in the busiest two seconds");
    let metrics = run.metrics().await;
    assert!(run.sigterm().success(), "{}", run.log());
    println!(
        "accounts: busiest second acme {}, globex {}; busiest two seconds both {both}; {}",
        busiest(&times["acme"], 1_000_000),
        busiest(&times["globex"], 1_000_000),
        metrics
            .lines()
            .filter(|l| l.starts_with("syncflow_provider_requests_total"))
            .collect::<Vec<_>>()
            .join(" ")
    );
}
