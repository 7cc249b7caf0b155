//! Accounts: a pipeline that names the account a record belongs to has the
//! provider's rate limit applied per account (each shared through Redis),
//! and its batches hold one account's records.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;
use syncflow_mock_crm::{LoggedRequest, MockCrmConfig};

use common::contacts::{self, hubspot_by_key};
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

/// The company a HubSpot create names (the account, upper-cased).
fn tenant(r: &LoggedRequest) -> &str {
    r.body["properties"]["company"].as_str().unwrap_or_default()
}

/// The contact's key in a HubSpot create (its firstname is `F<key>`).
fn key_of(r: &LoggedRequest) -> u32 {
    r.body["properties"]["firstname"].as_str().unwrap()[1..]
        .parse()
        .unwrap()
}

/// The HubSpot pipeline alone, its account the contact's company (its
/// tests cut: they have records without one), the provider's limit
/// `per_second` requests, one at a time, per account.
async fn harness(per_second: u32) -> Harness {
    let h = Harness::start(MockCrmConfig {
        record_log: true,
        ..MockCrmConfig::default()
    })
    .await;
    h.hubspot_accounts("$.after.company");
    h.set_rate_limit("hubspot", per_second, "1s", 1);
    h
}

/// Publishes a change of `key` for `company`; `n` tells versions apart.
async fn publish(h: &Harness, key: u32, company: &str, op: &'static str, n: u32) {
    let mut ev = contacts::created(key);
    ev.record["company"] = json!(company);
    ev.record["last_name"] = json!(format!("L{key}-{n}"));
    let payload = json!({"op": op, "after": ev.record});
    h.publish(
        &format!("cdc.contacts.{key}"),
        &format!("acct-{key}-{n}"),
        payload.to_string().as_bytes(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_account_has_the_providers_limit_to_itself() {
    let h = harness(5).await;

    let per_account = 20;
    let mut tenant_of = BTreeMap::new();
    for key in 1..=2 * per_account {
        let tenant = if key % 2 == 0 { "acme" } else { "globex" };
        tenant_of.insert(key, tenant);
        publish(&h, key, tenant, "c", 0).await;
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

/// One account floods the pipeline while another sends a few records: the
/// few arrive at once, the flood drains at its own limit, in per-key order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_at_its_limit_holds_back_only_its_own_records() {
    let h = harness(10).await;
    // A short ack_wait: acme's next 10 records wait in memory, the rest is
    // handed back to JetStream and comes again.
    h.set_ack_wait("contacts-to-hubspot", "2s");
    let mut run = h.spawn();
    run.wait_ready(Duration::from_secs(20)).await;

    // acme: 60 contacts created and updated, 120 requests (12 s at 10/s).
    let flood_keys = 60;
    for key in 1..=flood_keys {
        publish(&h, key, "acme", "c", 0).await;
    }
    for key in 1..=flood_keys {
        publish(&h, key, "acme", "u", 1).await;
    }
    // globex: 10 contacts just behind the flood in the stream.
    let published = std::time::Instant::now();
    let few: Vec<u32> = (1001..=1010).collect();
    for &key in &few {
        publish(&h, key, "globex", "c", 0).await;
    }
    let globex_done = loop {
        let snap = h.crm.snapshot();
        let there = hubspot_by_key(&snap)
            .keys()
            .filter(|k| k.parse::<u32>().unwrap() > 1000)
            .count();
        if there == few.len() {
            break snap;
        }
        assert!(
            published.elapsed() < Duration::from_secs(30),
            "{there} of globex's contacts after 30 s\n{}",
            run.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let took = published.elapsed();
    let acme_then = globex_done
        .hubspot
        .log
        .iter()
        .filter(|r| key_of(r) <= flood_keys)
        .count();
    // Behind the flood, globex would have waited 12 s.
    assert!(took < Duration::from_secs(4), "globex took {took:?}");
    assert!(acme_then < 100, "acme had {acme_then} of 120 requests done");

    h.wait_settled(Duration::from_secs(60)).await;
    let snap = h.crm.snapshot();
    let contacts = hubspot_by_key(&snap);
    assert_eq!(contacts.len(), flood_keys as usize + few.len());
    for key in 1..=flood_keys {
        assert_eq!(
            contacts[&key.to_string()]["lastname"],
            format!("L{key}-1"),
            "acme's update of {key} applied last"
        );
    }
    let letters = h.dead_letters().await;
    assert!(letters.is_empty(), "{letters:#?}");
    let metrics = run.metrics().await;
    let parked: f64 = metrics
        .lines()
        .find(|l| l.starts_with("syncflow_pipeline_parked_total"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0);
    assert!(parked > 0.0, "nothing was parked");
    assert!(run.sigterm().success(), "{}", run.log());
    println!(
        "isolation: globex's 10 contacts in {took:?} behind acme's flood, with acme at {acme_then} of 120; {parked} records parked"
    );
}

/// A spent quota holds back its account's records, not as dead letters,
/// while other accounts go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_quota_holds_back_only_its_accounts_records() {
    let h = harness(10).await;
    h.edit(
        "providers/hubspot.yaml",
        "max_in_flight: 32",
        "max_in_flight: 32\nquota: { requests: 3, per: 1d }",
    );
    let mut run = h.spawn_with_drain_timeout("1s");
    run.wait_ready(Duration::from_secs(20)).await;
    for key in 1..=5 {
        publish(&h, key, "acme", "c", 0).await;
    }
    for key in 6..=7 {
        publish(&h, key, "globex", "c", 0).await;
    }
    run.wait_log("quota spent", Duration::from_secs(20)).await;
    // globex's two go; acme's fourth and fifth wait for tomorrow.
    h.wait_crm(
        "5 contacts",
        Duration::from_secs(20),
        |s| hubspot_by_key(s).len() >= 5,
        || run.log(),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let contacts = hubspot_by_key(&h.crm.snapshot());
    let acme = (1..=5).filter(|k| contacts.contains_key(&k.to_string()));
    assert_eq!(acme.count(), 3, "{contacts:?}");
    assert!(contacts.contains_key("6") && contacts.contains_key("7"));
    assert!(h.dead_letters().await.is_empty());
    let pending = h.consumer("contacts-to-hubspot").await.num_ack_pending;
    assert_eq!(pending, 2);
    let line = run
        .log()
        .lines()
        .find(|l| l.contains("quota spent"))
        .unwrap()
        .to_string();
    assert!(
        line.contains("acme") && line.contains("resets_at"),
        "{line}"
    );
    let metrics = run.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("syncflow_provider_quota_waits_total") && !l.ends_with(" 0")),
        "{metrics}"
    );
    run.sigterm();
}

/// A 429 with `Retry-After` to one account's request pauses that account
/// only: the provider keeps serving the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_pauses_only_its_account() {
    let h = harness(10).await;
    h.crm
        .add_fault(
            syncflow_mock_crm::MockApi::Hubspot,
            syncflow_mock_crm::Fault {
                times: Some(1),
                retry_after_s: Some(3),
                ..syncflow_mock_crm::Fault::body_contains("ACME", 429)
            },
        )
        .unwrap();
    let mut run = h.spawn();
    run.wait_ready(Duration::from_secs(20)).await;
    let published = std::time::Instant::now();
    for key in 1..=3 {
        publish(&h, key, "acme", "c", 0).await;
    }
    for key in 4..=6 {
        publish(&h, key, "globex", "c", 0).await;
    }
    h.wait_settled(Duration::from_secs(30)).await;
    let log = h.crm.snapshot().hubspot.log;
    let refused: Vec<_> = log.iter().filter(|r| r.status == 429).collect();
    assert_eq!(refused.len(), 1, "{log:#?}");
    assert_eq!(tenant(refused[0]), "ACME");
    let first = refused[0].received_at_us;
    let created_after = |keys: std::ops::RangeInclusive<u32>| {
        log.iter()
            .filter(|r| r.status == 201 && keys.contains(&key_of(r)))
            .map(|r| r.received_at_us.saturating_sub(first) / 1000)
            .max()
            .unwrap()
    };
    let (acme_ms, globex_ms) = (created_after(1..=3), created_after(4..=6));
    assert!(
        globex_ms < 1500,
        "globex's last create {globex_ms} ms after the 429"
    );
    assert!(
        acme_ms >= 2900,
        "acme's last create {acme_ms} ms after the 429"
    );
    let text = run.log();
    assert!(
        text.contains("pausing the account's requests") && text.contains("acme"),
        "{text}"
    );
    assert!(!text.contains("pausing every request"), "{text}");
    assert!(run.sigterm().success());
    println!(
        "pause: acme's last create {acme_ms} ms after its 429, globex's {globex_ms} ms ({:?} since publish)",
        published.elapsed()
    );
}

/// The provider's own count of the requests left (HubSpot's
/// `X-HubSpot-RateLimit-Daily-Remaining`) is followed when it is lower than
/// syncflow's: the account waits instead of running into the provider's
/// daily limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_saying_fewer_requests_are_left_is_followed() {
    let h = Harness::start(MockCrmConfig {
        record_log: true,
        hubspot_daily: Some(3),
        ..MockCrmConfig::default()
    })
    .await;
    h.remove_pipeline("contacts-to-salesforce");
    h.set_rate_limit("hubspot", 10, "1s", 1);
    h.edit(
        "providers/hubspot.yaml",
        "max_in_flight: 32",
        "max_in_flight: 32\nquota: { requests: 250000, per: 1d, remaining_header: X-HubSpot-RateLimit-Daily-Remaining }",
    );
    let mut run = h.spawn_with_drain_timeout("1s");
    run.wait_ready(Duration::from_secs(20)).await;
    for key in 1..=5 {
        contacts::publish_all(&h, &[contacts::created(key)]).await;
    }
    run.wait_log("quota spent", Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let snap = h.crm.snapshot();
    assert_eq!(snap.hubspot.counters.creates, 3);
    assert_eq!(
        snap.hubspot.counters.rate_limited, 0,
        "{:#?}",
        snap.hubspot.log
    );
    assert_eq!(h.consumer("contacts-to-hubspot").await.num_ack_pending, 2);
    assert!(h.dead_letters().await.is_empty());
    run.sigterm();
}
