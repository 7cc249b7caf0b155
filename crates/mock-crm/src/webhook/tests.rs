//! Webhooks end to end: a real receiver (a small axum server) gets what the
//! mock posts, and checks it as syncflow will.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::routing::post;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use reqwest::Method;
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::records::unix_millis;
use crate::test_support::{Harness, send};
use crate::{MockCrmConfig, WebhookConfig, WebhookStats};

const SECRET: &str = "app-secret";
const CONTACTS: &str = "/crm/v3/objects/contacts";
const DRAINED: Duration = Duration::from_secs(20);

/// One POST the receiver got.
#[derive(Debug, Clone)]
struct Received {
    /// The URL as called: the receiver's base and the request's path and query.
    url: String,
    content_type: String,
    timestamp: String,
    signature: String,
    body: Bytes,
}

impl Received {
    fn events(&self) -> Vec<Value> {
        serde_json::from_slice(&self.body).expect("a JSON array of events")
    }

    /// Checks the signature as a receiver must, independently of the mock's
    /// code: HMAC-SHA256(secret, "POST" + url + body + timestamp), base64.
    fn signature_is_valid(&self, secret: &str) -> bool {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        let mut message = b"POST".to_vec();
        message.extend_from_slice(self.url.as_bytes());
        message.extend_from_slice(&self.body);
        message.extend_from_slice(self.timestamp.as_bytes());
        mac.update(&message);
        STANDARD.encode(mac.finalize().into_bytes()) == self.signature
    }
}

#[derive(Default)]
struct ReceiverState {
    received: Vec<Received>,
    /// Statuses to answer first, in order; 200 once they are spent.
    script: VecDeque<u16>,
}

struct Receiver {
    /// What the mock is told to post to.
    url: String,
    state: Arc<Mutex<ReceiverState>>,
    server: JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl Receiver {
    async fn start(script: &[u16]) -> Receiver {
        let state = Arc::new(Mutex::new(ReceiverState {
            script: script.iter().copied().collect(),
            ..ReceiverState::default()
        }));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let app = Router::new()
            .route("/webhooks/hubspot", post(receive))
            .with_state((state.clone(), base.clone()));
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Receiver {
            url: format!("{base}/webhooks/hubspot?portal=62515"),
            state,
            server,
        }
    }

    fn config(&self) -> WebhookConfig {
        WebhookConfig {
            retry_backoff: Duration::from_millis(10),
            ..WebhookConfig::new(&self.url, SECRET)
        }
    }

    fn received(&self) -> Vec<Received> {
        self.state.lock().unwrap().received.clone()
    }

    /// Every event received, in the order received (duplicates included).
    fn events(&self) -> Vec<Value> {
        self.received().iter().flat_map(Received::events).collect()
    }
}

async fn receive(
    State((state, base)): State<(Arc<Mutex<ReceiverState>>, String)>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let mut state = state.lock().unwrap();
    state.received.push(Received {
        url: format!("{base}{uri}"),
        content_type: header("content-type"),
        timestamp: header("x-hubspot-request-timestamp"),
        signature: header("x-hubspot-signature-v3"),
        body,
    });
    let status = state.script.pop_front().unwrap_or(200);
    StatusCode::from_u16(status).unwrap()
}

async fn harness(webhook: WebhookConfig) -> Harness {
    Harness::start(MockCrmConfig {
        webhook: Some(webhook),
        ..MockCrmConfig::default()
    })
    .await
}

async fn drained(h: &Harness) -> WebhookStats {
    h.crm
        .wait_for_webhooks(DRAINED)
        .await
        .expect("webhooks drained")
}

fn summary(event: &Value) -> (String, Value, Value) {
    (
        event["subscriptionType"].as_str().unwrap().to_owned(),
        event.get("propertyName").cloned().unwrap_or(Value::Null),
        event.get("propertyValue").cloned().unwrap_or(json!("-")),
    )
}

fn by_event_id(mut events: Vec<Value>) -> Vec<Value> {
    events.sort_by_key(|event| event["eventId"].as_u64().unwrap());
    events
}

#[tokio::test]
async fn api_writes_are_posted_as_signed_integration_events() {
    let receiver = Receiver::start(&[]).await;
    let h = harness(receiver.config()).await;
    let before = unix_millis();
    let id = h
        .create_hubspot_contact(json!({"email": "a@b.c", "firstname": "A", "phone": null}))
        .await;
    let path = format!("{CONTACTS}/{id}");
    // firstname changes, email stays, a new company, phone stays absent.
    let update =
        json!({"properties": {"firstname": "B", "email": "a@b.c", "company": 7, "phone": null}});
    send(h.hubspot(Method::PATCH, &path).json(&update)).await;
    let clear = json!({"properties": {"company": null}});
    send(h.hubspot(Method::PATCH, &path).json(&clear)).await;
    send(h.hubspot(Method::DELETE, &path)).await;

    let stats = drained(&h).await;
    let after = unix_millis();
    assert_eq!(
        (stats.events_enqueued, stats.events_delivered, stats.pending),
        (7, 7, 0)
    );
    for request in receiver.received() {
        assert_eq!(request.url, receiver.url);
        assert_eq!(request.content_type, "application/json");
        let timestamp: u64 = request.timestamp.parse().unwrap();
        assert!((before..=after).contains(&timestamp), "{timestamp}");
        assert!(request.signature_is_valid(SECRET), "{request:?}");
        assert!(!request.signature_is_valid("another-secret"));
    }

    let events = by_event_id(receiver.events());
    let summaries: Vec<_> = events.iter().map(summary).collect();
    let expected = [
        ("contact.creation", json!(null), json!("-")),
        ("contact.propertyChange", json!("email"), json!("a@b.c")),
        ("contact.propertyChange", json!("firstname"), json!("A")),
        ("contact.propertyChange", json!("company"), json!("7")),
        ("contact.propertyChange", json!("firstname"), json!("B")),
        ("contact.propertyChange", json!("company"), json!(null)),
        ("contact.deletion", json!(null), json!("-")),
    ]
    .map(|(kind, name, value)| (kind.to_owned(), name, value));
    assert_eq!(summaries, expected);
    let object_id: u64 = id.parse().unwrap();
    let mut last_event_id = 0;
    for event in &events {
        assert_eq!(event["objectId"], object_id);
        assert_eq!(event["changeSource"], "INTEGRATION");
        assert_eq!(event["attemptNumber"], 0);
        assert_eq!(
            (&event["portalId"], &event["appId"]),
            (&json!(62515), &json!(1160452))
        );
        assert!(event["subscriptionId"].is_u64());
        let occurred_at = event["occurredAt"].as_u64().unwrap();
        assert!((before..=after).contains(&occurred_at));
        let event_id = event["eventId"].as_u64().unwrap();
        assert!(event_id > last_event_id);
        last_event_id = event_id;
    }
    // One change, one time: the creation's events share it.
    assert!(
        events[..3]
            .iter()
            .all(|e| e["occurredAt"] == events[0]["occurredAt"])
    );
}

#[tokio::test]
async fn user_edits_say_crm_ui_and_api_writes_integration() {
    let receiver = Receiver::start(&[]).await;
    let h = harness(receiver.config()).await;
    let id = h
        .crm
        .hubspot_user_create(json!({"firstname": "U"}))
        .unwrap();
    let update = json!({"properties": {"firstname": "S"}});
    send(
        h.hubspot(Method::PATCH, &format!("{CONTACTS}/{id}"))
            .json(&update),
    )
    .await;
    h.crm
        .hubspot_user_update(&id, json!({"lastname": "L"}))
        .unwrap();
    h.crm.hubspot_user_delete(&id).unwrap();
    drained(&h).await;

    let sources: Vec<_> = by_event_id(receiver.events())
        .iter()
        .map(|event| {
            let (kind, name, _) = summary(event);
            (
                kind,
                name,
                event["changeSource"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let change = |name: &str, source: &str| {
        (
            "contact.propertyChange".to_owned(),
            json!(name),
            source.to_owned(),
        )
    };
    assert_eq!(
        sources,
        [
            (
                "contact.creation".to_owned(),
                json!(null),
                "CRM_UI".to_owned()
            ),
            change("firstname", "CRM_UI"),
            change("firstname", "INTEGRATION"),
            change("lastname", "CRM_UI"),
            (
                "contact.deletion".to_owned(),
                json!(null),
                "CRM_UI".to_owned()
            ),
        ]
    );
    let counters = h.crm.snapshot().hubspot.counters;
    assert_eq!((counters.api_writes, counters.user_writes), (1, 3));
}

#[tokio::test]
async fn an_echo_write_is_counted_as_a_noop_and_sends_no_event() {
    let receiver = Receiver::start(&[]).await;
    let h = harness(receiver.config()).await;
    let id = h
        .crm
        .hubspot_user_create(json!({"firstname": "U", "score": 3}))
        .unwrap();
    drained(&h).await;
    let echo = json!({"properties": {"firstname": "U", "score": "3"}});
    let (status, _) = send(
        h.hubspot(Method::PATCH, &format!("{CONTACTS}/{id}"))
            .json(&echo),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let stats = drained(&h).await;
    assert_eq!(stats.events_enqueued, 3, "the echo made events");
    let counters = h.crm.snapshot().hubspot.counters;
    assert_eq!(
        (
            counters.api_writes,
            counters.api_noop_writes,
            counters.user_writes
        ),
        (1, 1, 1)
    );
}

#[tokio::test]
async fn batches_hold_at_most_max_batch_events_and_fill_within_max_wait() {
    let receiver = Receiver::start(&[]).await;
    let h = harness(WebhookConfig {
        max_batch: 3,
        max_wait: Duration::from_millis(100),
        ..receiver.config()
    })
    .await;
    // One creation and seven properties: eight events queued at once.
    let properties: serde_json::Map<String, Value> = (0..7)
        .map(|i| (format!("p{i}"), json!(format!("v{i}"))))
        .collect();
    h.crm.hubspot_user_create(properties.into()).unwrap();
    let stats = drained(&h).await;
    let mut sizes: Vec<_> = receiver
        .received()
        .iter()
        .map(|r| r.events().len())
        .collect();
    sizes.sort();
    assert_eq!(sizes, [2, 3, 3]);
    assert_eq!((stats.batches_sent, stats.events_delivered), (3, 8));

    // Changes close together share a batch when it has room.
    let receiver = Receiver::start(&[]).await;
    let h = harness(WebhookConfig {
        max_wait: Duration::from_millis(300),
        ..receiver.config()
    })
    .await;
    h.crm.hubspot_user_create(json!({"a": "1"})).unwrap();
    h.crm.hubspot_user_create(json!({"a": "2"})).unwrap();
    let stats = drained(&h).await;
    assert_eq!((stats.batches_sent, stats.events_delivered), (1, 4));
    assert_eq!(receiver.received().len(), 1);
}

#[tokio::test]
async fn a_refused_batch_is_retried_with_the_next_attempt_number_and_signed_again() {
    let receiver = Receiver::start(&[500, 503]).await;
    let h = harness(receiver.config()).await;
    h.crm.hubspot_user_create(json!({"a": "1"})).unwrap();
    let stats = drained(&h).await;
    assert_eq!(
        stats,
        WebhookStats {
            events_enqueued: 2,
            events_delivered: 2,
            batches_sent: 1,
            retries: 2,
            requests: 3,
            ..WebhookStats::default()
        }
    );
    let received = receiver.received();
    assert_eq!(received.len(), 3);
    let event_ids = |request: &Received| -> Vec<Value> {
        request
            .events()
            .iter()
            .map(|e| e["eventId"].clone())
            .collect()
    };
    for (attempt, request) in received.iter().enumerate() {
        assert!(request.signature_is_valid(SECRET));
        let events = request.events();
        assert!(events.iter().all(|event| event["attemptNumber"] == attempt));
        assert_eq!(
            event_ids(request),
            event_ids(&received[0]),
            "the same batch"
        );
    }
    // Re-signed: the timestamp is part of what is signed, so a retry made in
    // a later millisecond has another signature.
    let timestamps: Vec<u64> = received
        .iter()
        .map(|r| r.timestamp.parse().unwrap())
        .collect();
    assert!(timestamps.windows(2).all(|pair| pair[0] <= pair[1]));
}

#[tokio::test]
async fn a_batch_is_given_up_after_max_attempts() {
    let receiver = Receiver::start(&[500; 10]).await;
    let h = harness(WebhookConfig {
        max_attempts: 3,
        ..receiver.config()
    })
    .await;
    h.crm.hubspot_user_create(json!({})).unwrap();
    let stats = drained(&h).await;
    assert_eq!(
        (
            stats.given_up,
            stats.retries,
            stats.requests,
            stats.events_delivered
        ),
        (1, 2, 3, 0)
    );
    assert_eq!(receiver.received().len(), 3);

    // Nobody listening: connection errors are failed attempts too.
    let closed = {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    };
    let h = harness(WebhookConfig {
        max_attempts: 2,
        retry_backoff: Duration::from_millis(10),
        ..WebhookConfig::new(format!("http://{closed}/hooks"), SECRET)
    })
    .await;
    h.crm.hubspot_user_create(json!({"a": "1"})).unwrap();
    let stats = drained(&h).await;
    assert_eq!((stats.given_up, stats.retries), (2, 1));
}

#[tokio::test]
async fn a_dropped_attempt_is_retried_although_the_receiver_got_it() {
    let receiver = Receiver::start(&[]).await;
    let h = harness(WebhookConfig {
        drop_rate: 1.0,
        max_attempts: 2,
        ..receiver.config()
    })
    .await;
    h.crm.hubspot_user_create(json!({})).unwrap();
    let stats = drained(&h).await;
    assert_eq!((stats.given_up, stats.retries, stats.requests), (1, 1, 2));
    let attempts: Vec<_> = receiver
        .events()
        .iter()
        .map(|event| event["attemptNumber"].as_u64().unwrap())
        .collect();
    assert_eq!(attempts, [0, 1]);
}

#[tokio::test]
async fn duplicates_deliver_a_batch_twice() {
    let receiver = Receiver::start(&[]).await;
    let h = harness(WebhookConfig {
        duplicate_rate: 1.0,
        max_batch: 2,
        ..receiver.config()
    })
    .await;
    h.crm
        .hubspot_user_create(json!({"a": "1", "b": "2", "c": "3"}))
        .unwrap();
    let stats = drained(&h).await;
    assert_eq!(
        (stats.batches_sent, stats.duplicates_sent, stats.requests),
        (2, 2, 4)
    );
    assert_eq!(stats.events_delivered, 4, "duplicates count once");
    let mut seen = BTreeMap::<u64, usize>::new();
    for event in receiver.events() {
        *seen.entry(event["eventId"].as_u64().unwrap()).or_default() += 1;
    }
    assert_eq!(seen.len(), 4);
    assert!(seen.values().all(|&count| count == 2), "{seen:?}");
    assert!(
        receiver
            .received()
            .iter()
            .all(|r| r.signature_is_valid(SECRET))
    );
}

#[tokio::test]
async fn reorder_shuffles_the_events_inside_a_batch() {
    let properties = || -> Value {
        let properties: serde_json::Map<String, Value> = (0..30)
            .map(|i| (format!("p{i:02}"), json!(i.to_string())))
            .collect();
        properties.into()
    };
    let ids = |receiver: &Receiver| -> Vec<u64> {
        let received = receiver.received();
        assert_eq!(received.len(), 1, "one batch");
        received[0]
            .events()
            .iter()
            .map(|event| event["eventId"].as_u64().unwrap())
            .collect()
    };

    let ordered = Receiver::start(&[]).await;
    let h = harness(ordered.config()).await;
    h.crm.hubspot_user_create(properties()).unwrap();
    drained(&h).await;
    let ids_in_order = ids(&ordered);
    assert!(ids_in_order.is_sorted(), "{ids_in_order:?}");

    let shuffled = Receiver::start(&[]).await;
    let h = harness(WebhookConfig {
        reorder: true,
        ..shuffled.config()
    })
    .await;
    h.crm.hubspot_user_create(properties()).unwrap();
    drained(&h).await;
    // 31 events: the chance a shuffle leaves them sorted is 1 in 31!.
    let ids = ids(&shuffled);
    assert!(!ids.is_sorted(), "{ids:?}");
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(sorted.len(), 31);
    assert!(sorted.windows(2).all(|pair| pair[0] < pair[1]));
}

#[tokio::test]
async fn the_target_is_set_at_runtime_and_changes_are_queued_only_while_set() {
    let h = Harness::start(MockCrmConfig::default()).await;
    h.crm.hubspot_user_create(json!({"a": "before"})).unwrap();
    assert_eq!(h.crm.webhook_stats(), WebhookStats::default());

    let receiver = Receiver::start(&[]).await;
    h.crm.set_webhook(Some(receiver.config())).unwrap();
    h.crm.hubspot_user_create(json!({"a": "after"})).unwrap();
    drained(&h).await;
    let values: Vec<_> = receiver
        .events()
        .iter()
        .filter_map(|event| event.get("propertyValue").cloned())
        .collect();
    assert_eq!(values, [json!("after")]);

    // Over HTTP: the stats, and a target set and unset.
    let (status, stats) = send(h.root(Method::GET, "/_admin/webhooks")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        stats,
        json!({"events_enqueued": 2, "events_delivered": 2, "batches_sent": 1, "retries": 0,
               "duplicates_sent": 0, "given_up": 0, "pending": 0, "requests": 1})
    );
    let other = Receiver::start(&[]).await;
    let target = json!({"url": other.url, "secret": "s2", "max_wait": "1ms", "max_batch": 1});
    let (status, _) = send(h.root(Method::PUT, "/_admin/webhooks").json(&target)).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    h.crm.hubspot_user_create(json!({})).unwrap();
    drained(&h).await;
    assert_eq!(other.received().len(), 1);
    assert!(other.received()[0].signature_is_valid("s2"));

    let (status, _) = send(h.root(Method::DELETE, "/_admin/webhooks")).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    h.crm.hubspot_user_create(json!({})).unwrap();
    assert_eq!(h.crm.webhook_stats().events_enqueued, 3);

    for bad in [
        json!({"url": other.url}),
        json!({"url": "https://x/", "secret": "s"}),
        json!({"url": other.url, "secret": "s", "drop_rate": 2.0}),
    ] {
        let (status, body) = send(h.root(Method::PUT, "/_admin/webhooks").json(&bad)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
        assert!(body["message"].is_string());
    }
    assert!(
        h.crm
            .set_webhook(Some(WebhookConfig::new("ftp://x/", "s")))
            .is_err()
    );
}

#[tokio::test]
async fn reset_forgets_queued_events_and_counts() {
    // Every attempt fails for a long while: the event stays pending.
    let receiver = Receiver::start(&[500; 100]).await;
    let h = harness(WebhookConfig {
        retry_backoff: Duration::from_secs(5),
        ..receiver.config()
    })
    .await;
    h.crm.hubspot_user_create(json!({})).unwrap();
    while receiver.received().is_empty() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(h.crm.webhook_stats().pending, 1);
    h.crm.reset();
    assert_eq!(h.crm.webhook_stats(), WebhookStats::default());

    // The batch in flight keeps failing against the old target, uncounted.
    let fresh = Receiver::start(&[]).await;
    h.crm.set_webhook(Some(fresh.config())).unwrap();
    h.crm.hubspot_user_create(json!({})).unwrap();
    let stats = drained(&h).await;
    assert_eq!(
        (stats.events_enqueued, stats.events_delivered, stats.retries),
        (1, 1, 0)
    );
}

#[tokio::test]
async fn reset_drops_events_still_waiting_for_their_batch() {
    let receiver = Receiver::start(&[]).await;
    let h = harness(WebhookConfig {
        max_wait: Duration::from_millis(200),
        ..receiver.config()
    })
    .await;
    h.crm.hubspot_user_create(json!({})).unwrap();
    h.crm.reset();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(receiver.received().is_empty());
    assert_eq!(h.crm.webhook_stats(), WebhookStats::default());
}
