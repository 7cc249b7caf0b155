//! A link whose internal side is a NATS subject (System A consumes its
//! changes from JetStream instead of taking them over HTTP): HubSpot's
//! changes, from signed webhooks sent twice each, are published to the
//! subject once each with a JetStream publish ack, a contact born in
//! HubSpot under a key of its own (`hubspot-<id>`) that its later changes
//! keep.

mod common;

use std::time::Duration;

use async_nats::jetstream;
use futures::StreamExt;
use serde_json::{Value, json};
use syncflow_mock_crm::MockCrmConfig;

use common::edit;
use common::twoway::TwoWay;

const WAIT: Duration = Duration::from_secs(20);
const SUBJECT: &str = r#"nats: { subject: "systema.contacts.{action}.{key}" }"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_changes_are_published_to_system_a_once_each() {
    let env = TwoWay::start(MockCrmConfig::default(), |hook| {
        hook.duplicate_rate = 1.0;
    })
    .await;
    let dir = env.dir.path();
    // HubSpot → the subject only: no outbound half, no Salesforce.
    for file in [
        "pipelines/contacts-to-hubspot.yaml",
        "pipelines/contacts-to-salesforce.yaml",
        "pipelines/salesforce-to-contacts.yaml",
        "links/contacts-salesforce.yaml",
    ] {
        std::fs::remove_file(dir.join(file)).unwrap();
    }
    edit(
        dir,
        "links/contacts-hubspot.yaml",
        "internal: { provider: system_a, object: contact }",
        &format!("internal: {{ {SUBJECT} }}"),
    );
    edit(
        dir,
        "pipelines/hubspot-to-contacts.yaml",
        "target: { provider: system_a, object: contact }",
        &format!("target: {{ {SUBJECT} }}"),
    );
    let client = async_nats::connect(env.nats.url()).await.unwrap();
    let js = jetstream::new(client);
    let stream = js
        .get_or_create_stream(jetstream::stream::Config {
            name: "SYSTEMA".into(),
            subjects: vec!["systema.>".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    let run = env.spawn();
    run.wait_ready(WAIT).await;

    let id = env
        .crm
        .hubspot_user_create(json!({"email": "lin@example.com", "firstname": "Lin"}))
        .unwrap();
    let key = format!("hubspot-{id}");
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::Config::default())
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let mut next = async || {
        let msg = tokio::time::timeout(WAIT, messages.next())
            .await
            .unwrap_or_else(|_| panic!("no message on the subject:\n{}", run.log()))
            .unwrap()
            .unwrap();
        msg.ack().await.unwrap();
        let body: Value = serde_json::from_slice(&msg.payload).unwrap_or(Value::Null);
        (msg.subject.to_string(), body)
    };

    // Born in HubSpot: created under a key of its own, naming HubSpot's id.
    let (subject, body) = next().await;
    assert_eq!(subject, format!("systema.contacts.create.{key}"));
    assert_eq!(
        body,
        json!({"email": "lin@example.com", "first_name": "Lin", "crm": "hubspot", "hubspot_id": id})
    );

    // Its edit: the changed field, under the same key.
    env.crm
        .hubspot_user_update(&id, json!({"firstname": "Linh"}))
        .unwrap();
    let (subject, body) = next().await;
    assert_eq!(subject, format!("systema.contacts.update.{key}"));
    assert_eq!(body, json!({"first_name": "Linh"}));

    env.crm.hubspot_user_delete(&id).unwrap();
    let (subject, _) = next().await;
    assert_eq!(subject, format!("systema.contacts.delete.{key}"));

    // Every webhook came twice; nothing was published twice.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stats = env.crm.webhook_stats();
    assert!(stats.duplicates_sent >= 3, "{stats:?}");
    let stored = js
        .get_stream("SYSTEMA")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .messages;
    assert_eq!(stored, 3, "{}", run.log());
}
