//! The status page in a real browser (headless Chromium through
//! chromedriver) against a running instance: pipelines, providers, the
//! refused reload's errors and the last dead letters are on the page; the
//! replay button asks first, and replays when the operator agrees. A
//! screenshot is saved as `target/status-page.png`.
//!
//! Also here: `/readyz`'s JSON and the backlog metrics the page shows.

mod common;

use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use syncflow_mock_crm::MockCrmConfig;
use syncflow_testkit::{CHROMIUM, CHROMIUM_ARGS, ChromedriverServer};

use common::contacts::hubspot_by_key;
use common::harness::Harness;
use common::mapping_bug;

const PIPELINE: &str = "contacts-to-hubspot";
async fn browser(driver: &ChromedriverServer) -> Client {
    assert!(
        std::path::Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: install it with apt-get install -y chromium chromium-driver"
    );
    let profile = tempfile::tempdir().unwrap();
    let mut args: Vec<String> = CHROMIUM_ARGS.iter().map(|a| a.to_string()).collect();
    args.push(format!("--user-data-dir={}", profile.path().display()));
    // The profile must outlive the browser: leak it (a test process).
    std::mem::forget(profile);
    let caps = json!({"goog:chromeOptions": {"binary": CHROMIUM, "args": args}});
    let Value::Object(caps) = caps else {
        unreachable!()
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    ClientBuilder::rustls()
        .unwrap()
        .capabilities(caps)
        .connect(&driver.url())
        .await
        .expect("a Chromium session through chromedriver")
}

/// A browser on `syncflow`'s status page (the driver must outlive it).
async fn open_page(syncflow: &common::harness::Syncflow) -> (ChromedriverServer, Client) {
    let driver = ChromedriverServer::start().expect("chromedriver");
    let client = browser(&driver).await;
    client
        .goto(&format!("http://{}/", syncflow.http))
        .await
        .unwrap();
    (driver, client)
}

/// Waits until the element `css` has text containing every one of `want`;
/// returns its text.
async fn wait_text(client: &Client, css: &str, want: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = match client.find(Locator::Css(css)).await {
            Ok(el) => el.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        if want.iter().all(|w| text.contains(w)) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{css} says {text:?}, want {want:?}:\n{}",
            client.source().await.unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn click(client: &Client, css: &str) {
    let element = client.find(Locator::Css(css)).await.unwrap();
    element.click().await.unwrap();
}

async fn dead_letter_rows(client: &Client) -> Vec<(String, String)> {
    // The page redraws the table on its refresh: a row found just before
    // may be gone (a stale element). Read the table again then.
    for _ in 0..10 {
        if let Ok(rows) = try_dead_letter_rows(client).await {
            return rows;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    try_dead_letter_rows(client).await.unwrap()
}

async fn try_dead_letter_rows(
    client: &Client,
) -> Result<Vec<(String, String)>, fantoccini::error::CmdError> {
    let mut rows = Vec::new();
    for row in client
        .find_all(Locator::Css("#dead-letters tbody tr[data-seq]"))
        .await?
    {
        let seq = row.attr("data-seq").await?.unwrap_or_default();
        rows.push((seq, row.text().await?));
    }
    Ok(rows)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_status_page_shows_the_instance_and_replays_a_dead_letter() {
    let h = Harness::start(MockCrmConfig::default()).await;
    h.remove_pipeline("contacts-to-salesforce");
    mapping_bug::introduce(&h);
    let syncflow = h.spawn();
    syncflow.wait_ready(Duration::from_secs(20)).await;

    mapping_bug::publish(&h, 1..=3, |key| key == 1).await;
    h.wait_dead_letters(2).await;
    h.wait_settled(Duration::from_secs(20)).await;

    // /readyz names each pipeline's state, in JSON.
    let (status, body) = syncflow.readyz().await;
    assert_eq!(status, 200, "{body}");
    let ready: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ready["ready"], true);
    assert_eq!(ready["nats"], "connected");
    assert_eq!(ready["pipelines"][PIPELINE]["state"], "running", "{body}");

    // The fix goes in; then a bad edit is refused and the fix keeps running.
    mapping_bug::fix(&h);
    syncflow
        .wait_log("reload applied", Duration::from_secs(20))
        .await;
    h.set_line(
        mapping_bug::MAPPING,
        "provider: hubspot",
        "  provider: hubspt",
    );
    syncflow
        .wait_log("reload refused", Duration::from_secs(20))
        .await;

    // The backlog metrics are reported every few seconds.
    let metrics = syncflow.metrics().await;
    for series in [
        "syncflow_pipeline_consumer_pending",
        "syncflow_pipeline_ack_pending",
        "syncflow_pipeline_oldest_unacked_seconds",
    ] {
        let line = format!(r#"{series}{{pipeline="{PIPELINE}"}} 0"#);
        assert!(metrics.contains(&line), "{line} not in:\n{metrics}");
    }

    let (_driver, client) = open_page(&syncflow).await;
    let row = format!("#pipelines tr[data-pipeline='{PIPELINE}']");
    wait_text(
        &client,
        &row,
        &["running", "outbound", "decode 1", "output_schema 1"],
    )
    .await;
    wait_text(
        &client,
        "#providers tr[data-provider='hubspot']",
        &["redis", "closed"],
    )
    .await;
    wait_text(&client, "#config", &["generation 2"]).await;
    wait_text(
        &client,
        "#refused",
        &["pipelines/contacts-to-hubspot.yaml:", "hubspt"],
    )
    .await;
    wait_text(&client, "#dead-letters", &["output_schema", "decode"]).await;
    let rows = dead_letter_rows(&client).await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    let (seq, text) = rows
        .iter()
        .find(|(_, text)| text.contains("output_schema"))
        .unwrap()
        .clone();
    assert!(text.contains(PIPELINE) && text.contains('1'), "{text}");

    let target = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    std::fs::create_dir_all(&target).unwrap();
    let png = client.screenshot().await.unwrap();
    std::fs::write(target.join("status-page.png"), &png).unwrap();

    // The button asks first: dismissed, nothing happens.
    let button = format!("#dead-letters tr[data-seq='{seq}'] button.replay");
    click(&client, &button).await;
    client.dismiss_alert().await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        h.dead_letters().await.len(),
        2,
        "a dismissed replay replays nothing"
    );

    // Accepted: replayed, delivered, and gone from the page.
    click(&client, &button).await;
    client.accept_alert().await.unwrap();
    wait_text(&client, "#replay-result", &["replayed"]).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let snap = h.crm.snapshot();
        if let Some(contact) = hubspot_by_key(&snap).get("1") {
            assert_eq!(contact["lifecyclestage"], "other");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the replayed contact never arrived"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while dead_letter_rows(&client).await.len() != 1 {
        assert!(
            Instant::now() < deadline,
            "the replayed dead letter is still listed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let left = h.dead_letters().await;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0]["error"]["kind"], "decode");
    client.close().await.unwrap();
}

/// An account whose own circuit breaker is open shows in its provider's
/// row, beside the provider's breaker (still closed: the others go).
#[tokio::test(flavor = "multi_thread")]
async fn the_status_page_shows_accounts_whose_breaker_is_open() {
    let h = Harness::start(MockCrmConfig::default()).await;
    h.hubspot_accounts("$.after.company");
    h.set_fast_retries("hubspot", 2);
    h.set_circuit_breaker("hubspot", 2, "1m");
    h.crm
        .add_fault(
            syncflow_mock_crm::MockApi::Hubspot,
            syncflow_mock_crm::Fault {
                body_contains: Some("INITECH".into()),
                status: 503,
                ..Default::default()
            },
        )
        .unwrap();
    let mut syncflow = h.spawn();
    syncflow.wait_ready(Duration::from_secs(20)).await;
    for key in 1..=4u32 {
        let mut ev = common::contacts::created(key);
        ev.record["company"] = json!("initech");
        let payload = json!({"op": "c", "after": ev.record});
        h.publish(
            &format!("cdc.contacts.{key}"),
            &format!("initech-{key}"),
            payload.to_string().as_bytes(),
        )
        .await;
    }
    syncflow
        .wait_metric(
            "syncflow_provider_account_breakers_open{provider=\"hubspot\"}",
            1.0,
            Duration::from_secs(20),
        )
        .await;

    let (_driver, client) = open_page(&syncflow).await;
    let row = "#providers tr[data-provider='hubspot']";
    let text = wait_text(&client, row, &["closed", "1 account open"]).await;
    assert!(
        client
            .find(Locator::Css(&format!("{row} [data-account-breakers='1']")))
            .await
            .is_ok(),
        "{text}"
    );
    client.close().await.unwrap();
    h.crm.clear_faults();
    assert!(syncflow.sigterm().success(), "{}", syncflow.log());
}
