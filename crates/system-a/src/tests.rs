//! System A against a real nats-server: what lands in the stream for each
//! write, over HTTP and through the Rust methods.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::header::NATS_MESSAGE_ID;
use reqwest::{Method, RequestBuilder, StatusCode};
use serde_json::{Value, json};
use syncflow_testkit::NatsServer;

use super::{SystemA, SystemAConfig, WriteError};

/// One message of the stream.
#[derive(Debug)]
struct Event {
    subject: String,
    message_id: String,
    payload: Value,
}

impl Event {
    /// (op, before, after, origin).
    fn summary(&self) -> (String, Value, Value, String) {
        let payload = &self.payload;
        (
            payload["op"].as_str().unwrap().to_owned(),
            payload["before"].clone(),
            payload["after"].clone(),
            payload["source"]["origin"].as_str().unwrap().to_owned(),
        )
    }
}

/// Every message in `stream`, in stream order.
async fn events(nats_url: &str, stream: &str) -> Vec<Event> {
    let client = async_nats::connect(nats_url).await.unwrap();
    let jetstream = async_nats::jetstream::new(client);
    let mut stream = jetstream.get_stream(stream).await.unwrap();
    let count = stream.info().await.unwrap().state.messages;
    let mut events = Vec::new();
    for sequence in 1..=count {
        let message = stream.get_raw_message(sequence).await.unwrap();
        let message_id = message
            .headers
            .get(NATS_MESSAGE_ID)
            .map(|value| value.as_str().to_owned())
            .unwrap_or_default();
        events.push(Event {
            subject: message.subject.to_string(),
            message_id,
            payload: serde_json::from_slice(&message.payload).unwrap(),
        });
    }
    events
}

struct Fixture {
    nats: NatsServer,
    system_a: SystemA,
    client: reqwest::Client,
}

impl Fixture {
    async fn start(token: Option<&str>) -> Fixture {
        let nats = NatsServer::start().expect("start nats-server");
        let system_a = SystemA::start(SystemAConfig {
            nats_url: nats.url(),
            token: token.map(str::to_owned),
            ..SystemAConfig::default()
        })
        .await
        .expect("start System A");
        Fixture {
            nats,
            system_a,
            client: reqwest::Client::new(),
        }
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.system_a.base_url()))
    }

    async fn events(&self) -> Vec<Event> {
        events(&self.nats.url(), "CDC").await
    }
}

async fn send(request: RequestBuilder) -> (StatusCode, Value) {
    let response = request.send().await.expect("send the request");
    let status = response.status();
    let bytes = response.bytes().await.unwrap();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    (status, body)
}

fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn summary(op: &str, before: Value, after: Value, origin: &str) -> (String, Value, Value, String) {
    (op.to_owned(), before, after, origin.to_owned())
}

#[tokio::test]
async fn every_write_emits_exactly_one_event_in_order_with_its_shape() {
    let f = Fixture::start(None).await;
    let started = unix_millis();
    let create = json!({"email": "a@b.c", "first_name": "A", "phone": null});
    let (status, created) = send(f.request(Method::POST, "/contacts").json(&create)).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(
        created,
        json!({"id": "1", "email": "a@b.c", "first_name": "A"})
    );
    let patch = json!({"status": "lead", "first_name": null});
    let (status, updated) = send(f.request(Method::PATCH, "/contacts/1").json(&patch)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        updated,
        json!({"id": "1", "email": "a@b.c", "status": "lead"})
    );
    let (status, read) = send(f.request(Method::GET, "/contacts/1")).await;
    assert_eq!((status, &read), (StatusCode::OK, &updated));

    let (status, user) = send(
        f.request(Method::POST, "/_admin/contacts")
            .json(&json!({"email": "u@b.c"})),
    )
    .await;
    assert_eq!((status, &user["id"]), (StatusCode::CREATED, &json!("2")));
    let edited = f
        .system_a
        .user_update("2", json!({"phone": "+33 1"}))
        .await
        .unwrap();
    let (status, _) = send(f.request(Method::DELETE, "/contacts/1")).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    f.system_a.user_delete("2").await.unwrap();
    let finished = unix_millis();

    let events = f.events().await;
    let summaries: Vec<_> = events.iter().map(Event::summary).collect();
    assert_eq!(
        summaries,
        [
            summary("c", Value::Null, created.clone(), "api"),
            summary("u", created, updated.clone(), "api"),
            summary("c", Value::Null, user.clone(), "user"),
            summary("u", user, edited.clone(), "user"),
            summary("d", updated, Value::Null, "api"),
            summary("d", edited, Value::Null, "user"),
        ]
    );
    let subjects: Vec<_> = events.iter().map(|e| e.subject.as_str()).collect();
    assert_eq!(
        subjects,
        [
            "cdc.contacts.1",
            "cdc.contacts.1",
            "cdc.contacts.2",
            "cdc.contacts.2",
            "cdc.contacts.1",
            "cdc.contacts.2"
        ]
    );
    let message_ids: BTreeSet<_> = events.iter().map(|e| e.message_id.as_str()).collect();
    assert_eq!(message_ids.len(), 6);
    assert!(!message_ids.contains(""));
    let times: Vec<u64> = events
        .iter()
        .map(|e| e.payload["ts_ms"].as_u64().unwrap())
        .collect();
    assert!(times.iter().all(|t| (started..=finished).contains(t)));
    assert!(times.is_sorted());

    let snapshot = f.system_a.snapshot();
    assert!(snapshot.records.is_empty());
    let counters = snapshot.counters;
    assert_eq!(
        (
            counters.api_writes,
            counters.user_writes,
            counters.events_published,
            counters.api_noop_writes
        ),
        (3, 3, 6, 0)
    );
}

#[tokio::test]
async fn noop_writes_emit_events_and_are_counted() {
    let f = Fixture::start(None).await;
    let record = json!({"id": "1", "email": "a@b.c"});
    let (status, _) = send(
        f.request(Method::POST, "/contacts")
            .json(&json!({"email": "a@b.c"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    // The same value, and clearing a field that is not there: nothing changes.
    let same = json!({"email": "a@b.c", "phone": null});
    let (status, body) = send(f.request(Method::PATCH, "/contacts/1").json(&same)).await;
    assert_eq!((status, &body), (StatusCode::OK, &record));
    let (status, _) = send(
        f.request(Method::PATCH, "/_admin/contacts/1")
            .json(&json!({})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    let summaries: Vec<_> = f.events().await.iter().map(Event::summary).collect();
    assert_eq!(
        summaries,
        [
            summary("c", Value::Null, record.clone(), "api"),
            summary("u", record.clone(), record.clone(), "api"),
            summary("u", record.clone(), record, "user"),
        ]
    );
    let counters = f.system_a.snapshot().counters;
    assert_eq!(
        (
            counters.api_writes,
            counters.api_noop_writes,
            counters.user_writes,
            counters.events_published
        ),
        (2, 1, 1, 3)
    );
}

#[tokio::test]
async fn the_api_needs_the_token_and_the_admin_does_not() {
    let f = Fixture::start(Some("s3cret")).await;
    let body = json!({"email": "a@b.c"});
    for request in [
        f.request(Method::POST, "/contacts").json(&body),
        f.request(Method::POST, "/contacts")
            .bearer_auth("wrong")
            .json(&body),
        f.request(Method::POST, "/contacts")
            .header("authorization", "s3cret")
            .json(&body),
        f.request(Method::GET, "/contacts/1"),
    ] {
        let (status, body) = send(request).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(body["error"].is_string());
    }
    let (status, _) = send(
        f.request(Method::POST, "/contacts")
            .bearer_auth("s3cret")
            .json(&body),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = send(f.request(Method::GET, "/contacts/1").bearer_auth("s3cret")).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = send(f.request(Method::POST, "/_admin/contacts").json(&body)).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, state) = send(f.request(Method::GET, "/_admin/state")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(state["records"]["2"], json!({"id": "2", "email": "a@b.c"}));
    assert_eq!(
        (
            &state["counters"]["api_writes"],
            &state["counters"]["user_writes"]
        ),
        (&json!(1), &json!(1))
    );
    assert_eq!(
        f.events().await.len(),
        2,
        "refused requests published nothing"
    );
}

#[tokio::test]
async fn refused_writes_publish_nothing() {
    let f = Fixture::start(None).await;
    let patch = json!({"email": "x@y.z"});
    for (request, expected) in [
        (
            f.request(Method::PATCH, "/contacts/1").json(&patch),
            StatusCode::NOT_FOUND,
        ),
        (
            f.request(Method::DELETE, "/contacts/1"),
            StatusCode::NOT_FOUND,
        ),
        (f.request(Method::GET, "/contacts/1"), StatusCode::NOT_FOUND),
        (
            f.request(Method::POST, "/contacts").body("{"),
            StatusCode::BAD_REQUEST,
        ),
        (
            f.request(Method::POST, "/contacts").json(&json!([1])),
            StatusCode::BAD_REQUEST,
        ),
        (
            f.request(Method::POST, "/contacts")
                .json(&json!({"id": "7"})),
            StatusCode::BAD_REQUEST,
        ),
        (
            f.request(Method::POST, "/_admin/contacts")
                .json(&json!("x")),
            StatusCode::BAD_REQUEST,
        ),
    ] {
        let (status, body) = send(request).await;
        assert_eq!(status, expected, "{body}");
        assert!(body["error"].is_string());
    }
    assert!(matches!(
        f.system_a.user_delete("1").await,
        Err(WriteError::NotFound(id)) if id == "1"
    ));
    assert!(matches!(
        f.system_a.user_create(json!({"id": "1"})).await,
        Err(WriteError::BadFields(_))
    ));
    assert!(f.events().await.is_empty());
    assert_eq!(f.system_a.snapshot().counters, Default::default());
}

#[tokio::test]
async fn while_nats_is_down_a_write_waits_and_its_event_is_stored_once() {
    let mut f = Fixture::start(None).await;
    f.system_a.user_create(json!({"n": 1})).await.unwrap();
    f.nats.stop();

    let create = f.request(Method::POST, "/contacts").json(&json!({"n": 2}));
    let pending = tokio::spawn(send(create));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(!pending.is_finished(), "answered while NATS was down");
    assert!(
        f.system_a.get("2").is_none(),
        "visible before its event was stored"
    );
    // A client that gives up does not cut its write in half.
    let abandoned = f
        .request(Method::POST, "/contacts")
        .json(&json!({"n": 3}))
        .timeout(Duration::from_millis(500))
        .send()
        .await;
    assert!(abandoned.is_err(), "answered while NATS was down");

    f.nats.restart().expect("restart nats-server");
    let (status, created) = tokio::time::timeout(Duration::from_secs(60), pending)
        .await
        .expect("the write ends once NATS is back")
        .unwrap();
    assert_eq!((status, &created["id"]), (StatusCode::CREATED, &json!("2")));
    let record = f.system_a.user_create(json!({"n": 4})).await.unwrap();
    assert_eq!(record["id"], "4", "written after the abandoned one");
    assert_eq!(f.system_a.get("3").unwrap()["n"], 3);

    let events = f.events().await;
    let ids: Vec<_> = events
        .iter()
        .map(|e| e.payload["after"]["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, ["1", "2", "3", "4"], "one event per write, in order");
    let counters = f.system_a.snapshot().counters;
    assert_eq!(counters.events_published, 4);
    assert!(counters.publish_retries >= 1);
}

#[tokio::test]
async fn a_restarted_system_a_keeps_its_stream_and_message_ids_unique() {
    let nats = NatsServer::start().expect("start nats-server");
    let config = SystemAConfig {
        nats_url: nats.url(),
        stream: "PEOPLE".into(),
        subject_prefix: "system_a.people".into(),
        ..SystemAConfig::default()
    };
    let first = SystemA::start(config.clone()).await.unwrap();
    first.user_create(json!({"run": 1})).await.unwrap();
    first.shutdown().await.unwrap();
    // Ids start again at 1: only the message ids tell the two writes apart,
    // and JetStream would drop the second as a duplicate if they matched.
    let second = SystemA::start(config).await.unwrap();
    second.user_create(json!({"run": 2})).await.unwrap();

    let events = events(&nats.url(), "PEOPLE").await;
    let runs: Vec<_> = events
        .iter()
        .map(|e| {
            (
                e.subject.as_str(),
                e.payload["after"]["run"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(runs, [("system_a.people.1", 1), ("system_a.people.1", 2)]);
    assert_ne!(events[0].message_id, events[1].message_id);
}

#[tokio::test]
async fn start_refuses_what_cannot_work() {
    let bad_prefix = SystemAConfig {
        subject_prefix: "cdc.*".into(),
        ..SystemAConfig::default()
    };
    let error = SystemA::start(bad_prefix).await.err().unwrap();
    assert_eq!(error.kind(), std::io::ErrorKind::InvalidInput);

    let port = syncflow_testkit::free_port().unwrap();
    let no_nats = SystemAConfig {
        nats_url: format!("nats://127.0.0.1:{port}"),
        ..SystemAConfig::default()
    };
    let error = SystemA::start(no_nats).await.err().unwrap();
    assert!(error.to_string().contains("connect to"), "{error}");
}

/// Writes made at once (committed in groups): each record's events chain
/// (every event's `before` is the previous one's `after`) and end in what
/// a reader sees; each answer is the record its event says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_keep_each_records_events_in_order() {
    let fixture = Fixture::start(None).await;
    let system_a = std::sync::Arc::new(fixture.system_a);
    let mut ids = Vec::new();
    for n in 0..5 {
        let created = system_a.user_create(json!({"n": n})).await.unwrap();
        ids.push(created["id"].as_str().unwrap().to_owned());
    }
    let writers: Vec<_> = (0..400)
        .map(|w| {
            let (system_a, id) = (system_a.clone(), ids[w % ids.len()].clone());
            tokio::spawn(async move {
                let after = system_a.user_update(&id, json!({"w": w})).await.unwrap();
                assert_eq!(after["w"], w, "the answer is the write's own record");
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    let events = events(&fixture.nats.url(), "CDC").await;
    assert_eq!(events.len(), 405);
    for id in &ids {
        let mine: Vec<&Event> = events
            .iter()
            .filter(|e| e.subject == format!("cdc.contacts.{id}"))
            .collect();
        assert_eq!(mine.len(), 81, "{id}: a create and 80 updates");
        for pair in mine.windows(2) {
            assert_eq!(
                pair[1].payload["before"], pair[0].payload["after"],
                "{id}: each event follows the one before"
            );
        }
        assert_eq!(
            Some(&mine[80].payload["after"]),
            system_a.get(id).as_ref(),
            "{id}: a reader sees the last event's record"
        );
    }
}

/// A create sent again with its `Idempotency-Key` (its answer was lost, the
/// client died before storing the new key) gets the first one's record:
/// one record, one event. A refused create is not kept: sent again right,
/// it is made.
#[tokio::test]
async fn a_create_repeated_with_its_idempotency_key_is_made_once() {
    let f = Fixture::start(None).await;
    let body = json!({"email": "a@b.c"});
    let post = |key: &str, body: &Value| {
        f.request(Method::POST, "/contacts")
            .header("Idempotency-Key", key)
            .json(body)
    };
    let (status, first) = send(post("k1", &body)).await;
    assert_eq!((status, &first["id"]), (StatusCode::CREATED, &json!("1")));
    let again = post("k1", &body).send().await.unwrap();
    assert_eq!(again.status(), StatusCode::CREATED);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.json::<Value>().await.unwrap(), first);
    let (status, other) = send(post("k2", &body)).await;
    assert_eq!((status, &other["id"]), (StatusCode::CREATED, &json!("2")));

    let (status, _) = send(post("k3", &json!({"id": "x"}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, made) = send(post("k3", &body)).await;
    assert_eq!((status, &made["id"]), (StatusCode::CREATED, &json!("3")));

    let (_, state) = send(f.request(Method::GET, "/_admin/state")).await;
    assert_eq!(state["records"].as_object().unwrap().len(), 3);
    assert_eq!(f.events().await.len(), 3, "one event per record made");
}
