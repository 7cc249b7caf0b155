//! Credentials per account (`auth.per_account`) through `syncflow run` and
//! `syncflow accounts`, against the mock CRM's OAuth2 token endpoint; and
//! the circuit breaker per account.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::json;
use syncflow_mock_crm::{Fault, LoggedRequest, MockApi, MockCrmConfig, OAuthConfig};

use common::contacts;
use common::harness::{Harness, Syncflow};

const CLIENT_ID: &str = "syncflow-app";
const CLIENT_SECRET: &str = "app-secret";

/// The HubSpot pipeline alone, its account the contact's company, and the
/// provider's auth per account (OAuth2 against the mock's token endpoint).
async fn harness(access_ttl: Duration, refresh_before: &str) -> Harness {
    let h = Harness::start(MockCrmConfig {
        record_log: true,
        oauth: Some(OAuthConfig::new(CLIENT_ID, CLIENT_SECRET, access_ttl)),
        ..MockCrmConfig::default()
    })
    .await;
    h.hubspot_accounts("$.after.company");
    h.set_line(
        "providers/hubspot.yaml",
        "auth:",
        &format!(
            "auth:\n  per_account: {{ kind: oauth2, token_url: /oauth/v1/token, client_id: {CLIENT_ID}, client_secret: {CLIENT_SECRET}, refresh_before: {refresh_before} }}"
        ),
    );
    h.set_rate_limit("hubspot", 50, "1s", 5);
    h
}

/// `syncflow accounts add hubspot <account>`, the secret on stdin.
fn add_account(h: &Harness, account: &str, refresh_token: &str) -> String {
    let (code, out, err) = h.cli(
        &["accounts", "add", "hubspot", account],
        &format!("{refresh_token}\n"),
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(!out.contains(refresh_token) && !err.contains(refresh_token));
    out
}

/// `syncflow accounts list`: its lines, checked free of every secret.
fn list_accounts(h: &Harness, secrets: &[&str]) -> String {
    let (code, out, err) = h.cli(&["accounts", "list"], "");
    assert_eq!(code, 0, "{out}{err}");
    for secret in secrets {
        assert!(!out.contains(secret), "{secret} printed:\n{out}");
    }
    assert!(!out.contains("at-"), "an access token printed:\n{out}");
    out
}

/// Publishes a change of `key` for `company`; `n` tells versions apart.
async fn publish(h: &Harness, key: u32, company: &str, n: u32) {
    let mut ev = contacts::created(key);
    ev.record["company"] = json!(company);
    ev.record["last_name"] = json!(format!("L{key}-{n}"));
    let op = if n == 0 { "c" } else { "u" };
    let payload = json!({"op": op, "after": ev.record});
    h.publish(
        &format!("cdc.contacts.{key}"),
        &format!("cred-{key}-{n}"),
        payload.to_string().as_bytes(),
    )
    .await;
}

/// The company a HubSpot write names (the account, upper-cased).
fn company(r: &LoggedRequest) -> String {
    r.body["properties"]["company"]
        .as_str()
        .unwrap_or_default()
        .to_lowercase()
}

/// Waits until the mock has `n` successful writes from syncflow.
async fn wait_writes(h: &Harness, n: usize, timeout: Duration) -> Vec<LoggedRequest> {
    let deadline = Instant::now() + timeout;
    loop {
        let log = h.crm.snapshot().hubspot.log;
        let ok: Vec<_> = log.into_iter().filter(|r| r.status < 300).collect();
        if ok.len() >= n {
            return ok;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {n} writes after {timeout:?}",
            ok.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Two instances, two accounts, access tokens that live 4 s: every request
/// carries its own account's token, none an expired one (each is refreshed
/// before it expires, by one instance at a time), a token the CRM revoked
/// early is refreshed after its 401, and a rotated refresh token takes
/// effect with no restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_account_sends_its_own_refreshed_token_and_rotations_need_no_restart() {
    let h = harness(Duration::from_secs(4), "1s").await;
    h.crm.oauth_grant("acme", "rt-acme");
    h.crm.oauth_grant("globex", "rt-globex");
    add_account(&h, "acme", "rt-acme");
    add_account(&h, "globex", "rt-globex");

    let mut a = h.spawn();
    let mut b = Syncflow::spawn(&h, h.dir.path(), "10s");
    a.wait_ready(Duration::from_secs(20)).await;
    b.wait_ready(Duration::from_secs(20)).await;

    // 10 rounds, 1 s apart: each a change of 4 contacts per account.
    let started = Instant::now();
    let mut writes = 0;
    for round in 0..10u32 {
        for key in 1..=8u32 {
            let account = if key % 2 == 0 { "acme" } else { "globex" };
            publish(&h, key, account, round).await;
        }
        writes += 8;
        if round == 4 {
            // The CRM ends globex's sessions early: the next request's 401
            // makes a refresh, and the record goes again.
            h.crm.oauth_expire("globex");
        }
        if round == 6 {
            // The customer re-authorizes: a new refresh token, stored with
            // `accounts add` while both instances run.
            h.crm.oauth_grant("acme", "rt-acme-2");
            add_account(&h, "acme", "rt-acme-2");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let log = wait_writes(&h, writes, Duration::from_secs(30)).await;
    h.wait_settled(Duration::from_secs(30)).await;
    let elapsed = started.elapsed();
    let letters = h.dead_letters().await;
    assert!(letters.is_empty(), "{letters:#?}");

    // Every write carried the token of the account it was for.
    for r in &log {
        assert_eq!(r.account.as_deref(), Some(company(r).as_str()), "{r:#?}");
    }
    let stats = h.crm.oauth_stats();
    // No token was sent expired: the only 401s are globex's revoked ones
    // (a request per lane that had it in hand).
    assert_eq!(stats.unauthorized.get("acme"), None, "{stats:#?}");
    assert!(stats.unauthorized.contains_key("globex"), "{stats:#?}");
    // The old refresh token stops working when the customer re-authorizes,
    // before the operator stores the new one: a refresh in between is
    // refused (and the credentials held as invalid until the new ones
    // come, a moment later).
    assert!(
        stats.refused_refreshes.values().sum::<u64>() <= 1,
        "{stats:#?}"
    );
    // One refresh per token lifetime at most (due 2 s after issue: half of
    // 4 s), shared by both instances, plus globex's after the revocation
    // and acme's after the rotation; two instances refreshing each on its
    // own would make twice as many.
    let lifetimes = elapsed.as_secs() / 2 + 2;
    for account in ["acme", "globex"] {
        let refreshes = stats.refreshes.get(account).copied().unwrap_or(0);
        assert!(
            refreshes >= 3 && refreshes <= lifetimes,
            "{account}: {refreshes} refreshes in {elapsed:?} (at most {lifetimes}): {stats:#?}"
        );
    }
    let listed = list_accounts(&h, &["rt-acme", "rt-globex"]);
    assert_eq!(listed.matches(" ok ").count(), 2, "{listed}");
    let metrics = a.metrics().await + &b.metrics().await;
    assert!(a.sigterm().success(), "{}", a.log());
    assert!(b.sigterm().success(), "{}", b.log());
    println!(
        "credentials: {writes} writes in {elapsed:?}, refreshes {:?}, 401s {:?}; {}",
        stats.refreshes,
        stats.unauthorized,
        metrics
            .lines()
            .filter(|l| l.starts_with("syncflow_provider_token_refreshes_total"))
            .collect::<Vec<_>>()
            .join(" ")
    );
}

/// An account whose refresh token the CRM refuses holds back its own
/// records only (no dead letters), `accounts list` says why, and storing a
/// good one lets them go, with no restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_credentials_hold_back_only_their_account_until_replaced() {
    let h = harness(Duration::from_secs(600), "1m").await;
    h.crm.oauth_grant("acme", "rt-acme");
    add_account(&h, "acme", "rt-acme");
    add_account(&h, "globex", "rt-wrong");
    let mut run = h.spawn();
    run.wait_ready(Duration::from_secs(20)).await;

    for key in 1..=10u32 {
        let account = if key % 2 == 0 { "acme" } else { "globex" };
        publish(&h, key, account, 0).await;
    }
    // initech has no credentials at all.
    publish(&h, 11, "initech", 0).await;
    let log = wait_writes(&h, 5, Duration::from_secs(20)).await;
    assert!(log.iter().all(|r| company(r) == "acme"), "{log:#?}");
    run.wait_log("credentials refused", Duration::from_secs(10))
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(wait_writes(&h, 5, Duration::ZERO).await.len(), 5);
    assert!(h.dead_letters().await.is_empty());
    let listed = list_accounts(&h, &["rt-acme", "rt-wrong"]);
    assert!(
        listed.contains("invalid (records wait)") && listed.contains("BAD_REFRESH_TOKEN"),
        "{listed}"
    );
    let metrics = run.metrics().await;
    assert!(
        metrics.contains("syncflow_provider_credential_waits_total"),
        "{metrics}"
    );

    // The customer connects again; the operator stores the new token.
    h.crm.oauth_grant("globex", "rt-globex");
    add_account(&h, "globex", "rt-globex");
    h.crm.oauth_grant("initech", "rt-initech");
    add_account(&h, "initech", "rt-initech");
    let log = wait_writes(&h, 11, Duration::from_secs(40)).await;
    h.wait_settled(Duration::from_secs(20)).await;
    let mut by_account: BTreeMap<String, usize> = BTreeMap::new();
    for r in &log {
        *by_account.entry(company(r)).or_default() += 1;
    }
    assert_eq!(
        by_account,
        BTreeMap::from([
            ("acme".into(), 5),
            ("globex".into(), 5),
            ("initech".into(), 1)
        ])
    );
    assert!(h.dead_letters().await.is_empty());
    let listed = list_accounts(&h, &["rt-acme", "rt-globex", "rt-initech"]);
    assert_eq!(listed.matches(" ok ").count(), 3, "{listed}");
    let (code, out, _) = h.cli(
        &[
            "accounts",
            "list",
            "--provider",
            "hubspot",
            "--format",
            "json",
        ],
        "",
    );
    assert_eq!(code, 0);
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{out}");
    for line in &lines {
        assert_eq!(
            (&line["provider"], &line["kind"], &line["state"]),
            (&json!("hubspot"), &json!("oauth2"), &json!("ok")),
            "{line}"
        );
    }
    assert!(!out.contains("rt-") && !out.contains("at-"), "{out}");

    // A secret a header cannot carry is refused, and not echoed.
    let (code, out, err) = h.cli(&["accounts", "add", "hubspot", "acme"], "rt with spaces\n");
    assert_ne!(code, 0, "{out}{err}");
    assert!(err.contains("cannot hold"), "{err}");
    assert!(!err.contains("rt with") && !out.contains("rt with"));

    // Removed credentials: the account's records wait again.
    let (code, out, _) = h.cli(&["accounts", "remove", "hubspot", "acme"], "");
    assert_eq!(code, 0);
    assert!(out.contains("removed"), "{out}");
    assert!(run.sigterm().success(), "{}", run.log());
    let log = run.log();
    for secret in ["rt-acme", "rt-globex", "rt-wrong", "at-"] {
        assert!(!log.contains(secret), "{secret} in the log");
    }
}

/// An account whose requests keep failing (503) opens its own breaker and
/// waits; another account's records go meanwhile; no dead letters; once
/// the CRM recovers, the account's probe closes its breaker and its
/// records arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_account_opens_its_own_breaker_only() {
    let h = Harness::start(MockCrmConfig {
        record_log: true,
        ..MockCrmConfig::default()
    })
    .await;
    h.hubspot_accounts("$.after.company");
    h.set_rate_limit("hubspot", 50, "1s", 5);
    h.set_fast_retries("hubspot", 3);
    h.set_circuit_breaker("hubspot", 3, "1s");
    h.crm
        .add_fault(
            MockApi::Hubspot,
            Fault {
                body_contains: Some("INITECH".into()),
                status: 503,
                ..Fault::default()
            },
        )
        .unwrap();
    let mut run = h.spawn();
    run.wait_ready(Duration::from_secs(20)).await;
    for key in 1..=6u32 {
        publish(&h, key, "initech", 0).await;
    }
    run.wait_metric(
        "syncflow_provider_account_breakers_open{provider=\"hubspot\"}",
        1.0,
        Duration::from_secs(20),
    )
    .await;
    for key in 7..=12u32 {
        publish(&h, key, "acme", 0).await;
    }
    let log = wait_writes(&h, 6, Duration::from_secs(10)).await;
    assert!(log.iter().all(|r| company(r) == "acme"), "{log:#?}");
    let metrics = run.metrics().await;
    assert!(
        metrics.contains("syncflow_provider_breaker_open{provider=\"hubspot\"} 0"),
        "the provider's breaker stays closed:\n{metrics}"
    );
    assert!(h.dead_letters().await.is_empty());

    h.crm.clear_faults();
    wait_writes(&h, 12, Duration::from_secs(30)).await;
    h.wait_settled(Duration::from_secs(20)).await;
    assert!(h.dead_letters().await.is_empty());
    run.wait_metric(
        "syncflow_provider_account_breakers_open{provider=\"hubspot\"}",
        0.0,
        Duration::from_secs(5),
    )
    .await;
    assert!(run.sigterm().success(), "{}", run.log());
}
