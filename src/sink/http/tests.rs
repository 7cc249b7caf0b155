//! The HTTP sink against real HTTP servers on loopback: the mock CRM for the
//! shipped HubSpot provider, a scripted server for failures and timing.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};
use tokio::time::Instant;

use super::test_server::{Reply, TestServer};
use super::*;
use crate::config::duration::ConfigDuration;
use crate::error::{Fault, Retry};
use crate::limiter::{Limiter, RateLimitSpec, SharedLimiter};
use crate::provider::Provider;
use syncflow_mock_crm::{MockCrm, MockCrmConfig};

const PROVIDER: &str = r#"
name: crm
base_url: "${CRM_URL}"
auth: { bearer: secret-token }
max_in_flight: 4
timeout: 2s
retry: { max_attempts: 3, initial_backoff: 1ms, max_backoff: 5ms, retry_on: [429, 503] }
circuit_breaker: { failure_threshold: 100, open_for: 10s }
idempotency_header: Idempotency-Key
objects:
  contact:
    create: { method: POST, path: /contacts, id_from: $.id }
    update: { method: PATCH, path: "/contacts/{id}" }
    delete: { method: DELETE, path: "/contacts/{id}" }
    read: { method: GET, path: "/contacts/{id}" }
"#;

/// A provider on `url` with quick retries, compiled from YAML like any
/// other; tests adjust its fields.
fn provider(url: &str) -> Provider {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("providers")).unwrap();
    std::fs::write(dir.path().join("providers/crm.yaml"), PROVIDER).unwrap();
    let env = HashMap::from([("CRM_URL".to_string(), url.to_string())]);
    let config = crate::compile::compile_dir(dir.path(), &env, false).unwrap();
    (*config.providers["crm"]).clone()
}

fn sink(provider: Provider) -> ProviderApi {
    ProviderApi::new(Arc::new(provider), Limiter::Unlimited).unwrap()
}

fn req<'a>(endpoint: EndpointKind, id: Option<&'a str>, body: Option<&'a Value>) -> ApiRequest<'a> {
    ApiRequest {
        object: "contact",
        endpoint,
        key: "k1",
        account: None,
        id,
        body,
        idempotency_key: "contacts:42",
        unmodified_since: None,
    }
}

fn create(body: &Value) -> ApiRequest<'_> {
    req(EndpointKind::Create, None, Some(body))
}

/// A shared limit of one request every 200 ms, no burst.
fn five_per_second(redis: &syncflow_testkit::RedisServer) -> (Limiter, RateLimitSpec) {
    let spec = RateLimitSpec {
        requests: 5,
        per: Duration::from_secs(1),
        burst: 1,
    };
    let conn = crate::limiter::connect(&redis.url()).unwrap();
    (
        Limiter::Shared(SharedLimiter::new(conn, "crm", spec).unwrap()),
        spec,
    )
}

fn header<'a>(seen: &'a test_server::Seen, name: &str) -> &'a str {
    seen.headers.get(name).map_or("", |v| v.to_str().unwrap())
}

#[tokio::test]
async fn the_shipped_hubspot_provider_creates_updates_and_deletes() {
    let crm = MockCrm::start(MockCrmConfig::default()).await.unwrap();
    let env = HashMap::from([("HUBSPOT_URL".to_string(), crm.hubspot_url())]);
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = crate::compile::compile_dir(root, &env, false).unwrap();
    let sink = ProviderApi::new(config.providers["hubspot"].clone(), Limiter::Unlimited).unwrap();

    // Each message has its own idempotency key: the mock replays a reused one.
    let message = |n: &'static str, endpoint, id, body| ApiRequest {
        idempotency_key: n,
        ..req(endpoint, id, body)
    };
    let body = json!({"properties": {"email": "a@b.c", "firstname": "A"}});
    let created = sink.send(message("1", EndpointKind::Create, None, Some(&body)));
    let created = created.await.unwrap();
    assert_eq!((created.status, created.attempts), (201, 1));
    let id = created.provider_id.expect("id_from: $.id");
    assert_eq!(crm.snapshot().hubspot.records[&id].fields["email"], "a@b.c");

    let change = json!({"properties": {"firstname": "B"}});
    let update = |n| message(n, EndpointKind::Update, Some(&id), Some(&change));
    let updated = sink.send(update("2")).await.unwrap();
    assert_eq!(updated.json().unwrap()["properties"]["firstname"], "B");
    let deleted = sink.send(message("3", EndpointKind::Delete, Some(&id), None));
    assert_eq!(deleted.await.unwrap().json(), None);

    let gone = sink.send(update("4")).await.unwrap_err();
    assert_eq!(
        (gone.kind, gone.status, gone.attempts),
        (ApiErrorKind::NotFound, Some(404), 1)
    );
}

#[tokio::test]
async fn numeric_ids_become_strings() {
    let server = TestServer::start([], Reply::json(201, json!({"id": 42}))).await;
    let sent = sink(provider(server.url())).send(create(&json!({}))).await;
    assert_eq!(sent.unwrap().provider_id.as_deref(), Some("42"));
}

#[tokio::test]
async fn every_attempt_carries_the_same_idempotency_key_auth_and_body() {
    let script = [Reply::status(503), Reply::status(429)];
    let server = TestServer::start(script, Reply::json(201, json!({"id": "c1"}))).await;
    let body = json!({"email": "a@b.c"});
    let sent = sink(provider(server.url()))
        .send(create(&body))
        .await
        .unwrap();
    assert_eq!(
        (sent.attempts, sent.provider_id.as_deref()),
        (3, Some("c1"))
    );

    let seen = server.seen();
    assert_eq!(seen.len(), 3);
    for request in &seen {
        assert_eq!(
            (request.method.as_str(), request.path.as_str()),
            ("POST", "/contacts")
        );
        assert_eq!(header(request, "idempotency-key"), "contacts:42");
        assert_eq!(header(request, "authorization"), "Bearer secret-token");
        assert_eq!(header(request, "content-type"), "application/json");
        assert_eq!(
            serde_json::from_slice::<Value>(&request.body).unwrap(),
            body
        );
    }
}

#[tokio::test]
async fn a_header_syncflow_sets_replaces_the_providers_own() {
    let server = TestServer::start([], Reply::json(201, json!({"id": "c1"}))).await;
    let mut provider = provider(server.url());
    for (name, value) in [
        ("X-Tenant", "t1"),
        ("Content-Type", "text/plain"),
        ("Idempotency-Key", "fixed"),
        ("Host", "elsewhere"),
    ] {
        provider.headers.push((
            name.to_string(),
            crate::config::secret::Secret::new(value.to_string()),
        ));
    }
    sink(provider).send(create(&json!({}))).await.unwrap();
    let seen = server.seen();
    let count = |name| seen[0].headers.get_all(name).iter().count();
    assert_eq!(header(&seen[0], "x-tenant"), "t1");
    assert_eq!(header(&seen[0], "content-type"), "application/json");
    assert_eq!(header(&seen[0], "idempotency-key"), "contacts:42");
    assert_ne!(header(&seen[0], "host"), "elsewhere");
    for name in ["content-type", "idempotency-key", "host", "content-length"] {
        assert_eq!(count(name), 1, "{name}");
    }
}

#[tokio::test]
async fn retry_after_in_seconds_is_waited_out() {
    let script = [Reply::status(503).header("retry-after", 1)];
    let server = TestServer::start(script, Reply::status(200)).await;
    let sent = sink(provider(server.url())).send(create(&json!({}))).await;
    assert_eq!(sent.unwrap().attempts, 2);
    let seen = server.seen();
    let waited = seen[1].at - seen[0].at;
    assert!(waited >= Duration::from_secs(1), "retried after {waited:?}");
}

#[tokio::test]
async fn retry_after_as_an_http_date_is_waited_out() {
    let date = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(2));
    // The date has whole seconds: what the sink must wait for is the parsed value.
    let until = httpdate::parse_http_date(&date).unwrap();
    assert!(until >= SystemTime::now() + Duration::from_secs(1));
    let script = [Reply::status(429).header("retry-after", &date)];
    let server = TestServer::start(script, Reply::status(200)).await;
    let sent = sink(provider(server.url())).send(create(&json!({}))).await;
    assert_eq!(sent.unwrap().attempts, 2);
    assert!(server.seen()[1].wall >= until, "retried before {date}");
}

#[tokio::test]
async fn exhausted_retries_report_the_last_status_and_body() {
    let server = TestServer::start([], Reply::status(503).body("down for maintenance")).await;
    let err = sink(provider(server.url()))
        .send(create(&json!({})))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ApiErrorKind::RetriesExhausted);
    assert_eq!((err.status, err.attempts), (Some(503), 3));
    assert_eq!(err.body.as_deref(), Some("down for maintenance"));
    assert_eq!(
        (err.fault(), err.retry()),
        (Fault::External, Retry::WithBackoff)
    );
    assert!(err.message.contains("after 3 attempts"), "{}", err.message);
    assert_eq!(server.seen().len(), 3);
}

#[tokio::test]
async fn a_4xx_is_rejected_at_once_and_leaves_the_breaker_closed() {
    let reply = Reply::json(400, json!({"message": "invalid email"}));
    let server = TestServer::start([], reply).await;
    let mut p = provider(server.url());
    p.circuit_breaker.failure_threshold = 1;
    let sink = sink(p);
    let err = sink.send(create(&json!({}))).await.unwrap_err();
    assert_eq!(
        (err.kind, err.status, err.attempts),
        (ApiErrorKind::Rejected, Some(400), 1)
    );
    assert_eq!((err.fault(), err.retry()), (Fault::User, Retry::No));
    assert!(err.body.unwrap().contains("invalid email"));
    assert_eq!(server.seen().len(), 1);
    assert_eq!(sink.breaker_state(), BreakerState::Closed);
}

#[tokio::test]
async fn a_404_is_not_found_on_update_but_rejected_on_create() {
    let server = TestServer::start([], Reply::status(404)).await;
    let sink = sink(provider(server.url()));
    let body = json!({});
    let update = sink.send(req(EndpointKind::Update, Some("7"), Some(&body)));
    let err = update.await.unwrap_err();
    assert_eq!((err.kind, err.attempts), (ApiErrorKind::NotFound, 1));
    assert_eq!(server.seen()[0].path, "/contacts/7");
    let err = sink.send(create(&body)).await.unwrap_err();
    assert_eq!(err.kind, ApiErrorKind::Rejected);
    assert_eq!(server.seen().len(), 2);
}

#[tokio::test]
async fn a_timeout_is_retried() {
    let slow = Reply::status(200).after(Duration::from_secs(2));
    let server = TestServer::start([slow], Reply::json(200, json!({"id": "c2"}))).await;
    let mut p = provider(server.url());
    p.timeout = Duration::from_millis(200);
    let sent = sink(p).send(create(&json!({}))).await.unwrap();
    assert_eq!(
        (sent.attempts, sent.provider_id.as_deref()),
        (2, Some("c2"))
    );
}

#[tokio::test]
async fn connect_errors_are_retried_until_exhausted() {
    // A port nobody listens on any more.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let err = sink(provider(&url))
        .send(create(&json!({})))
        .await
        .unwrap_err();
    assert_eq!(
        (err.kind, err.status, err.attempts),
        (ApiErrorKind::RetriesExhausted, None, 3)
    );
    assert!(err.message.contains("connect error"), "{}", err.message);
}

#[tokio::test]
async fn an_id_path_without_an_id_is_internal_and_sends_nothing() {
    let server = TestServer::start([], Reply::status(200)).await;
    let err = sink(provider(server.url()))
        .send(req(EndpointKind::Delete, None, None))
        .await
        .unwrap_err();
    assert_eq!((err.kind, err.attempts), (ApiErrorKind::Internal, 0));
    assert_eq!(err.fault(), Fault::Internal);
    assert!(server.seen().is_empty());
}

#[tokio::test]
async fn max_in_flight_is_never_exceeded() {
    let server = TestServer::start([], Reply::status(200).after(Duration::from_millis(100))).await;
    let mut p = provider(server.url());
    p.max_in_flight = 3;
    let sink = sink(p);
    let body = json!({});
    let sends = (0..12).map(|_| sink.send(create(&body)));
    let results = futures::future::join_all(sends).await;
    assert!(results.iter().all(Result::is_ok));
    assert_eq!(server.seen().len(), 12);
    assert_eq!(server.peak_concurrency(), 3);
    assert_eq!(sink.in_flight(), 0);
}

#[tokio::test]
async fn every_attempt_waits_on_the_rate_limiter() {
    let redis = syncflow_testkit::RedisServer::start().unwrap();
    let (limiter, spec) = five_per_second(&redis);
    let script = [Reply::status(503), Reply::status(503)];
    let server = TestServer::start(script, Reply::status(200)).await;
    let sink = ProviderApi::new(Arc::new(provider(server.url())), limiter).unwrap();
    assert_eq!(sink.send(create(&json!({}))).await.unwrap().attempts, 3);
    // At most ⌈W/T⌉ + burst starts in any window W: three starts (backoff
    // alone would be ~1 ms) must span more than one interval T.
    let seen = server.seen();
    let span = seen[2].at - seen[0].at;
    assert!(span > spec.interval(), "3 attempts within {span:?}");
}

#[tokio::test]
async fn an_open_breaker_holds_callers_until_a_probe_succeeds() {
    let open_for = Duration::from_millis(300);
    let server = TestServer::start([], Reply::status(503)).await;
    let mut p = provider(server.url());
    p.retry.max_attempts = 1;
    p.circuit_breaker.failure_threshold = 2;
    p.circuit_breaker.open_for = ConfigDuration(open_for);
    let sink = Arc::new(sink(p));

    let body = json!({});
    let first = sink.send(create(&body)).await.unwrap_err();
    // The second failure opens it, no earlier than this.
    let opened = Instant::now();
    let second = sink.send(create(&body)).await.unwrap_err();
    for err in [first, second] {
        assert_eq!(err.kind, ApiErrorKind::RetriesExhausted);
    }
    assert_eq!(sink.breaker_state(), BreakerState::Open);

    let waiting: Vec<_> = (0..3)
        .map(|_| {
            let sink = sink.clone();
            tokio::spawn(async move { sink.send(create(&json!({}))).await })
        })
        .collect();
    tokio::time::sleep(open_for / 3).await;
    assert!(
        waiting.iter().all(|w| !w.is_finished()),
        "a caller failed or went through while open"
    );
    assert_eq!(server.seen().len(), 2);

    // The provider recovers; answers take a while so a second probe would show.
    let answer_time = Duration::from_millis(200);
    server.set_fallback(Reply::status(200).after(answer_time));
    for caller in waiting {
        assert_eq!(caller.await.unwrap().unwrap().status, 200);
    }
    assert_eq!(sink.breaker_state(), BreakerState::Closed);

    let seen = server.seen();
    assert_eq!(seen.len(), 5);
    let probe = seen[2].at;
    assert!(probe >= opened + open_for);
    assert!(
        seen[3..].iter().all(|s| s.at >= probe + answer_time),
        "a request went alongside the probe"
    );
}

#[tokio::test]
async fn a_connection_the_provider_closed_is_reopened_without_a_failed_attempt() {
    let close = || Reply::status(201).header("connection", "close");
    let server = TestServer::start([close(), close()], Reply::status(201)).await;
    let mut p = provider(server.url());
    p.max_in_flight = 1;
    let sink = sink(p);
    for _ in 0..4 {
        let response = sink.send(create(&json!({}))).await.unwrap();
        assert_eq!(response.attempts, 1);
    }
    let seen = server.seen();
    assert_eq!(seen.len(), 4);
    assert_eq!(
        header(&seen[0], "host"),
        server.url().trim_start_matches("http://")
    );
    assert!(header(&seen[0], "user-agent").starts_with("syncflow/"));
    assert_eq!(header(&seen[0], "content-length"), "2");
}

#[tokio::test]
async fn a_new_connection_opens_before_the_cell_and_costs_none() {
    let redis = syncflow_testkit::RedisServer::start().unwrap();
    let (limiter, spec) = five_per_second(&redis);
    let server = TestServer::start([], Reply::status(201)).await;
    let sink = ProviderApi::new(Arc::new(provider(server.url())), limiter).unwrap();
    let started = Instant::now();
    for _ in 0..3 {
        sink.send(create(&json!({}))).await.unwrap();
    }
    // The first request leaves on the first cell, over the connection it
    // opened before taking it; the next two on the next two cells.
    let at: Vec<Duration> = server.seen().iter().map(|s| s.at - started).collect();
    // (A connection that took a cell of its own would put the first request
    // a whole interval, 200 ms, after the start.)
    assert!(at[0] < Duration::from_millis(190), "{at:?}");
    let spread = at[2] - at[0];
    assert!(
        spread >= 2 * spec.interval() - Duration::from_millis(5),
        "{at:?}"
    );
    assert!(
        spread < 2 * spec.interval() + Duration::from_millis(150),
        "{at:?}"
    );
}

/// A TCP proxy to `upstream` whose answers arrive `delay` late: a slow
/// Redis. Returns its URL.
async fn slow_proxy(upstream: String, delay: Duration) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("redis://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let server = tokio::net::TcpStream::connect(&upstream).await.unwrap();
            let (mut from_client, mut to_client) = client.into_split();
            let (mut from_server, mut to_server) = server.into_split();
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut from_client, &mut to_server).await;
            });
            tokio::spawn(async move {
                let mut buf = vec![0; 64 * 1024];
                while let Ok(n @ 1..) = from_server.read(&mut buf).await {
                    tokio::time::sleep(delay).await;
                    if to_client.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    url
}

/// The quota is taken after the cell, and every other take here goes to a
/// slow Redis (chunks of 2). A request whose take outlasted its cell's
/// budget must not go on that cell: it would bunch with the request of the
/// next cell, whose take found the chunk filled and went at once.
#[tokio::test]
async fn a_slow_quota_take_does_not_send_a_request_on_a_stale_cell() {
    let redis = syncflow_testkit::RedisServer::start().unwrap();
    let (limiter, spec) = five_per_second(&redis);
    let slow = slow_proxy(
        format!("127.0.0.1:{}", redis.port()),
        Duration::from_millis(100),
    )
    .await;
    let quota = crate::provider::Quota {
        requests: 200,
        per: Duration::from_secs(86_400),
        remaining_header: None,
    };
    let quotas = Arc::new(crate::limiter::Quotas::new(
        crate::limiter::connect(&slow).unwrap(),
        "test",
        "crm",
        quota,
    ));
    // The connection to the slow Redis made before the requests.
    quotas.take(None, SystemTime::now()).await;
    let server = TestServer::start([], Reply::status(201)).await;
    let sink = ProviderApi::new(Arc::new(provider(server.url())), limiter)
        .unwrap()
        .with_quotas(quotas);
    let body = json!({});
    let sent = futures::future::join_all((0..4).map(|_| sink.send(create(&body)))).await;
    assert!(sent.iter().all(Result::is_ok), "{sent:?}");
    let mut at: Vec<Instant> = server.seen().iter().map(|s| s.at).collect();
    at.sort();
    let gaps: Vec<Duration> = at.windows(2).map(|w| w[1] - w[0]).collect();
    // Each request leaves within its cell's budget (a few ms at 5/s), so
    // requests of consecutive cells are about an interval apart.
    assert!(
        gaps.iter()
            .all(|gap| *gap >= spec.interval() - Duration::from_millis(30)),
        "gaps between requests: {gaps:?}"
    );
}

/// A provider asking to wait a day (`Retry-After: 86400`) would park the
/// record for a day while progress acks keep it from redelivery; beyond
/// `retry.max_retry_after` the attempt counts as failed instead.
#[tokio::test]
async fn a_retry_after_beyond_the_cap_counts_as_a_failed_attempt() {
    let server = TestServer::start([], Reply::status(429).header("retry-after", 86_400)).await;
    let started = Instant::now();
    let err = sink(provider(server.url()))
        .send(create(&json!({})))
        .await
        .unwrap_err();
    assert_eq!(
        (err.kind, err.status, err.attempts),
        (ApiErrorKind::RetriesExhausted, Some(429), 3)
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

/// One record's 429 with Retry-After pauses the provider for every record:
/// the others do not spend attempts on the same wall.
#[tokio::test]
async fn a_retry_after_pauses_every_request_to_the_provider() {
    let script = [Reply::status(429).header("retry-after", 1)];
    let server = TestServer::start(script, Reply::json(201, json!({"id": "c"}))).await;
    let api = Arc::new(sink(provider(server.url())));
    let first = tokio::spawn({
        let api = Arc::clone(&api);
        async move { api.send(create(&json!({"n": 1}))).await.map(|r| r.attempts) }
    });
    // The 429 is in: another record asks now.
    while server.seen().is_empty() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let paused_at = server.seen()[0].at;
    let second = api.send(create(&json!({"n": 2}))).await.unwrap();
    assert_eq!((first.await.unwrap().unwrap(), second.attempts), (2, 1));
    let seen = server.seen();
    assert_eq!(seen.len(), 3);
    for later in &seen[1..] {
        assert!(
            later.at >= paused_at + Duration::from_millis(990),
            "a request went out {:?} into the pause",
            later.at - paused_at
        );
    }
}

/// A response body is read up to `max_response_bytes`: a longer one is a
/// failure of its own kind, whether its length is announced or not.
#[tokio::test]
async fn an_oversized_response_is_an_error_of_its_own_kind() {
    let big = "x".repeat(4096);
    let server = TestServer::start([], Reply::status(201).body(&big)).await;
    let mut p = provider(server.url());
    p.max_response_bytes = 1024;
    let api = sink(p);
    let err = api.send(create(&json!({}))).await.unwrap_err();
    assert_eq!(
        (err.kind, err.status, err.attempts),
        (ApiErrorKind::ResponseTooLarge, Some(201), 1)
    );
    assert!(
        err.message.contains("max_response_bytes (1024)"),
        "{}",
        err.message
    );
    // The connection is not reused with the body still on it.
    server.set_fallback(Reply::json(201, json!({"id": "small"})));
    let ok = api.send(create(&json!({}))).await.unwrap();
    assert_eq!(ok.provider_id.as_deref(), Some("small"));
}

/// An outage: every request fails for a while. Records whose attempts run
/// out while nobody is served wait for the provider (the breaker opens,
/// probes decide) instead of becoming dead letters; all go through once it
/// is back.
#[tokio::test]
async fn an_outage_makes_records_wait_not_fail() {
    let server = TestServer::start([], Reply::status(503)).await;
    let mut p = provider(server.url());
    p.circuit_breaker.failure_threshold = 2;
    p.circuit_breaker.open_for = crate::config::duration::ConfigDuration::from_millis(100);
    let api = Arc::new(sink(p));
    let records: Vec<_> = (0..4)
        .map(|n| {
            let api = Arc::clone(&api);
            tokio::spawn(async move {
                let body = json!({"n": n});
                api.send(create(&body)).await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(api.breaker_state(), BreakerState::Open);
    server.set_fallback(Reply::json(201, json!({"id": "back"})));
    for record in records {
        let sent = record.await.unwrap().expect("delivered after the outage");
        assert!(sent.attempts > 3, "{} attempts", sent.attempts);
    }
    assert_eq!(api.breaker_state(), BreakerState::Closed);
}
