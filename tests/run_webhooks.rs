//! Webhooks that must be refused (DESIGN.md §7): a wrong or missing
//! signature, a replayed timestamp, a 10 MB body, invalid JSON, an event
//! for an object nothing syncs. Each gets its status, stores nothing and
//! is counted; the process serves on unharmed. A good request is stored
//! once however often the provider sends it.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream;
use serde_json::json;
use syncflow_mock_crm::{MockCrmConfig, signature_v3};

use common::twoway::{APP_SECRET, TwoWay};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A request as HubSpot would sign it (`secret`, at `timestamp`).
async fn post(url: &str, body: &[u8], secret: Option<&str>, timestamp: u64) -> (u16, String) {
    let mut request = reqwest::Client::new()
        .post(url)
        .header("Content-Type", "application/json")
        .body(body.to_vec());
    if let Some(secret) = secret {
        request = request
            .header(
                "X-HubSpot-Signature-v3",
                signature_v3(secret, "POST", url, body, timestamp),
            )
            .header("X-HubSpot-Request-Timestamp", timestamp.to_string());
    }
    let response = request.send().await.expect("syncflow answers");
    (response.status().as_u16(), response.text().await.unwrap())
}

fn event(id: u64, subscription: &str) -> serde_json::Value {
    json!({"eventId": id, "subscriptionId": 1, "portalId": 62515, "appId": 1, "occurredAt": now_ms(),
           "subscriptionType": subscription, "attemptNumber": 0, "objectId": 4242,
           "changeSource": "CRM_UI", "propertyName": "firstname", "propertyValue": "X"})
}

async fn stored(js: &jetstream::Context) -> u64 {
    let mut stream = js
        .get_stream("SYNCFLOW_INBOUND")
        .await
        .expect("inbound stream");
    stream.info().await.expect("stream info").state.messages
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_webhooks_are_refused_store_nothing_and_harm_nothing() {
    let env = TwoWay::start(MockCrmConfig::default(), |_| {}).await;
    // Only the webhook side: no pipeline consumes what is stored.
    for p in [
        "hubspot-to-contacts",
        "salesforce-to-contacts",
        "contacts-to-hubspot",
        "contacts-to-salesforce",
    ] {
        std::fs::remove_file(env.dir.path().join(format!("pipelines/{p}.yaml"))).unwrap();
    }
    // One pipeline must remain for `run`; it reads a stream nothing writes to.
    std::fs::write(
        env.dir.path().join("pipelines/idle.yaml"),
        "name: idle\nsource: { nats: { stream: CDC, subject: \"cdc.contacts.idle\" } }\nkey: $.id\nrules: [{ if: 'true', then: skip }]\ntarget: { provider: system_a, object: contact }\n",
    )
    .unwrap();
    let run = env.spawn();
    run.wait_ready(Duration::from_secs(20)).await;
    let js = jetstream::new(async_nats::connect(env.nats.url()).await.unwrap());
    let url = format!("http://{}/hooks/hubspot", env.http);
    let good = serde_json::to_vec(&json!([event(1, "contact.propertyChange")])).unwrap();
    let huge = {
        let filler = "x".repeat(10 * 1024 * 1024);
        serde_json::to_vec(&json!([{"eventId": 2, "filler": filler}])).unwrap()
    };
    let unknown_object = serde_json::to_vec(&json!([event(3, "company.propertyChange")])).unwrap();
    let six_minutes_ago = now_ms() - 6 * 60 * 1000;

    // (what, body, signed with, timestamp, status, outcome metric)
    type Case<'a> = (&'a str, Vec<u8>, Option<&'a str>, u64, u16, &'a str);
    let cases: Vec<Case> = vec![
        (
            "wrong signature",
            good.clone(),
            Some("not-the-secret"),
            now_ms(),
            401,
            "bad_signature",
        ),
        (
            "no signature",
            good.clone(),
            None,
            now_ms(),
            401,
            "unsigned",
        ),
        (
            "timestamp 6 minutes old",
            good.clone(),
            Some(APP_SECRET),
            six_minutes_ago,
            401,
            "stale_timestamp",
        ),
        (
            "10 MB body",
            huge,
            Some(APP_SECRET),
            now_ms(),
            413,
            "too_large",
        ),
        (
            "invalid JSON",
            b"[{\"eventId\": 1,".to_vec(),
            Some(APP_SECRET),
            now_ms(),
            400,
            "malformed",
        ),
        (
            "an event for an unknown object",
            unknown_object,
            Some(APP_SECRET),
            now_ms(),
            422,
            "unknown_object",
        ),
    ];
    println!("| request | status | stored | outcome metric |");
    println!("|---|---|---|---|");
    for (what, body, secret, timestamp, want, outcome) in &cases {
        let (status, text) = post(&url, body, *secret, *timestamp).await;
        assert_eq!(status, *want, "{what}: {text}");
        assert_eq!(stored(&js).await, 0, "{what}: nothing stored");
        let label = format!(r#"outcome="{outcome}""#);
        let counted = common::metrics::sum(
            &run.metrics().await,
            "syncflow_webhook_requests_total",
            &[r#"provider="hubspot""#, &label],
        );
        assert_eq!(counted, 1.0, "{what}: counted with {label}");
        println!("| {what} | {status} | 0 | {outcome} |");
    }
    // An unknown provider.
    let (status, _) = post(
        &format!("http://{}/hooks/nobody", env.http),
        &good,
        Some(APP_SECRET),
        now_ms(),
    )
    .await;
    assert_eq!(status, 404);
    println!("| provider with no webhook | 404 | 0 | unknown_provider |");

    // Unharmed: healthy, and a good request is stored, once however often
    // it comes (a provider's retry, a duplicate).
    let health = reqwest::get(format!("http://{}/healthz", env.http))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    for _ in 0..3 {
        let (status, text) = post(&url, &good, Some(APP_SECRET), now_ms()).await;
        assert_eq!(status, 200, "{text}");
    }
    assert_eq!(stored(&js).await, 1, "a repeated event is stored once");
    println!("| a good request, sent 3 times | 200 | 1 | accepted |");
    drop(run);
}
