//! A pipeline whose target is a NATS subject (`target: { nats: { subject } }`):
//! each record is published to its subject with a JetStream publish ack,
//! with the mapped body and `Syncflow-Key` / `Syncflow-Action` headers, in
//! per-key order; delivering the stream again publishes nothing twice
//! (`Nats-Msg-Id`).

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream;
use futures::StreamExt;
use serde_json::Value;
use syncflow_mock_crm::MockCrmConfig;

use common::contacts;
use common::harness::Harness;

const PIPELINE: &str = r#"name: contacts-to-systema
source:
  nats:
    stream: CDC
    subject: "cdc.contacts.>"
key: $.after.id
record: $.after
op: $.op
rules:
  - if: 'event.op == "d"'
    then: delete
  - if: 'true'
    then: upsert
target:
  nats: { subject: "systema.contacts.{action}.{key}" }
mapping:
  email: $.email
  name: { expr: '`$${record.first_name} $${record.last_name}`' }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_are_published_to_their_subject_in_key_order() {
    let h = Harness::start(MockCrmConfig::default()).await;
    for name in ["contacts-to-hubspot", "contacts-to-salesforce"] {
        h.remove_pipeline(name);
    }
    std::fs::write(
        h.dir.path().join("pipelines/contacts-to-systema.yaml"),
        PIPELINE,
    )
    .unwrap();
    h.js.get_or_create_stream(jetstream::stream::Config {
        name: "SYSTEMA".into(),
        subjects: vec!["systema.>".into()],
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    })
    .await
    .unwrap();

    // 20 keys: a create, two updates, and for every fourth key a delete.
    let mut events = Vec::new();
    for round in 0..3 {
        for key in 1..=20 {
            let mut ev = contacts::created(key);
            if round > 0 {
                ev.op = "u";
                ev.record["first_name"] = Value::String(format!("F{key}-{round}"));
            }
            events.push(ev);
        }
    }
    for key in (4..=20).step_by(4) {
        let mut ev = contacts::created(key);
        ev.op = "d";
        events.push(ev);
    }
    contacts::publish_all(&h, &events).await;
    let mut syncflow = h.spawn();
    syncflow.wait_ready(Duration::from_secs(20)).await;
    h.wait_settled(Duration::from_secs(30)).await;
    let metrics = syncflow.metrics().await;
    assert!(syncflow.sigterm().success(), "{}", syncflow.log());

    // Everything delivered again (the consumer deleted, so a new one starts
    // from the stream's first message) publishes nothing twice: the
    // idempotency key is each publish's Nats-Msg-Id.
    let cdc = h.js.get_stream("CDC").await.unwrap();
    cdc.delete_consumer("contacts-to-systema").await.unwrap();
    let mut again = h.spawn();
    again.wait_ready(Duration::from_secs(20)).await;
    h.wait_settled(Duration::from_secs(30)).await;
    let republished =
        common::metrics::sum(&again.metrics().await, "syncflow_pipeline_sent_total", &[]);
    assert!(again.sigterm().success(), "{}", again.log());
    assert_eq!(republished, events.len() as f64, "everything sent again");

    let stream = h.js.get_stream("SYSTEMA").await.unwrap();
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::Config {
            deliver_policy: jetstream::consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages = consumer
        .fetch()
        .max_messages(1000)
        .expires(Duration::from_secs(1))
        .messages()
        .await
        .unwrap();
    let mut by_key: BTreeMap<String, Vec<(String, Value)>> = BTreeMap::new();
    while let Some(msg) = messages.next().await {
        let msg = msg.unwrap();
        let headers = msg.headers.clone().expect("headers");
        let key = headers.get("Syncflow-Key").unwrap().to_string();
        let action = headers.get("Syncflow-Action").unwrap().to_string();
        assert_eq!(
            msg.subject.as_str(),
            format!("systema.contacts.{action}.{key}")
        );
        let body = if msg.payload.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&msg.payload).unwrap()
        };
        by_key.entry(key).or_default().push((action, body));
    }
    assert_eq!(by_key.len(), 20);
    let published: usize = by_key.values().map(Vec::len).sum();
    assert_eq!(published, events.len(), "each record published once");
    for (key, published) in &by_key {
        let k: u32 = key.parse().unwrap();
        let mut want: Vec<(String, Value)> = (0..3)
            .map(|round| {
                let first = if round == 0 {
                    format!("F{k}")
                } else {
                    format!("F{k}-{round}")
                };
                (
                    "upsert".to_string(),
                    serde_json::json!({"email": format!("c{k}@example.com"), "name": format!("{first} L{k}")}),
                )
            })
            .collect();
        if k % 4 == 0 {
            want.push(("delete".to_string(), Value::Null));
        }
        assert_eq!(published, &want, "key {key}");
    }
    let sent = common::metrics::sum(&metrics, "syncflow_pipeline_sent_total", &[]);
    assert_eq!(sent, events.len() as f64);
    assert!(
        metrics.contains(r#"status="published""#),
        "publishes are counted as such"
    );
}
