//! The gateway's behaviour over HTTP: auth, limits per API, idempotent
//! replays, fault injection, latency, the request log, reset and shutdown.

use std::io;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::json;

use super::test_support::{Harness, TOKEN, send};
use super::{Fault, MockApi, MockCrm, MockCrmConfig, RateLimit};

const CONTACTS: &str = "/crm/v3/objects/contacts";
const SF_CONTACTS: &str = "/services/data/v60.0/sobjects/Contact";

fn one_per_ten_seconds() -> Option<RateLimit> {
    Some(RateLimit::gcra(1, Duration::from_secs(10), 1))
}

#[tokio::test]
async fn requests_need_the_bearer_token() {
    let h = Harness::start(MockCrmConfig {
        token: Some(TOKEN.into()),
        ..MockCrmConfig::default()
    })
    .await;
    let create = json!({"properties": {"firstname": "A"}});
    let anonymous = h.hubspot_anonymous(Method::POST, CONTACTS).json(&create);
    let (status, body) = send(anonymous).await;
    assert_eq!(
        (status, &body["category"]),
        (StatusCode::UNAUTHORIZED, &json!("INVALID_AUTHENTICATION"))
    );

    // Wrong tokens go through the anonymous builders: a second Authorization
    // header would not replace the harness's.
    let wrong = h
        .hubspot_anonymous(Method::POST, CONTACTS)
        .bearer_auth("other")
        .json(&create);
    assert_eq!(send(wrong).await.0, StatusCode::UNAUTHORIZED);
    let wrong = h
        .root(Method::POST, &format!("/salesforce{SF_CONTACTS}"))
        .bearer_auth("other")
        .json(&json!({"LastName": "Doe"}));
    let (status, body) = send(wrong).await;
    assert_eq!(
        (status, &body[0]["errorCode"]),
        (StatusCode::UNAUTHORIZED, &json!("INVALID_SESSION_ID"))
    );

    h.create_hubspot_contact(json!({"firstname": "A"})).await;
    let counters = h.crm.snapshot().hubspot.counters;
    assert_eq!((counters.count("POST", 401), counters.creates), (2, 1));
}

#[tokio::test]
async fn hubspot_tells_the_daily_requests_left_and_refuses_past_them() {
    let h = Harness::start(MockCrmConfig {
        hubspot_daily: Some(2),
        ..MockCrmConfig::default()
    })
    .await;
    let create = || {
        h.hubspot(Method::POST, CONTACTS)
            .json(&json!({"properties": {"firstname": "A"}}))
            .send()
    };
    for left in ["1", "0"] {
        let response = create().await.unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        assert_eq!(
            response.headers()["x-hubspot-ratelimit-daily-remaining"],
            left
        );
        assert_eq!(response.headers()["x-hubspot-ratelimit-daily"], "2");
    }
    let response = create().await.unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        response.headers()["x-hubspot-ratelimit-daily-remaining"],
        "0"
    );
    let body = crate::test_support::body(response).await;
    assert_eq!(body["policyName"], "DAILY");
    assert_eq!(h.crm.snapshot().hubspot.counters.creates, 2);
}

#[tokio::test]
async fn each_api_has_its_own_limit() {
    let h = Harness::start(MockCrmConfig {
        hubspot_limit: one_per_ten_seconds(),
        ..MockCrmConfig::default()
    })
    .await;
    h.create_hubspot_contact(json!({})).await;
    let (status, _) = send(h.hubspot(Method::GET, &format!("{CONTACTS}/1"))).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    for _ in 0..5 {
        let (status, _) = send(
            h.salesforce(Method::POST, SF_CONTACTS)
                .json(&json!({"LastName": "Doe"})),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED);
    }
    let snapshot = h.crm.snapshot();
    assert_eq!(snapshot.hubspot.counters.rate_limited, 1);
    assert_eq!(snapshot.salesforce.counters.rate_limited, 0);
}

#[tokio::test]
async fn a_repeated_idempotency_key_replays_without_applying_again() {
    let h = Harness::start(MockCrmConfig::default()).await;
    let create = json!({"properties": {"firstname": "A"}});
    let post = || {
        h.hubspot(Method::POST, CONTACTS)
            .header("Idempotency-Key", "k1")
            .json(&create)
    };
    let first = post().send().await.unwrap();
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first_body = first.text().await.unwrap();
    let again = post().send().await.unwrap();
    assert_eq!(again.status(), StatusCode::CREATED);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.text().await.unwrap(), first_body);

    let id: serde_json::Value = serde_json::from_str(&first_body).unwrap();
    let contact = format!("{CONTACTS}/{}", id["id"].as_str().unwrap());
    let rename = |name: &str| json!({"properties": {"firstname": name}});
    let keyed = h
        .hubspot(Method::PATCH, &contact)
        .header("Idempotency-Key", "k2")
        .json(&rename("B"));
    assert_eq!(send(keyed).await.0, StatusCode::OK);
    send(h.hubspot(Method::PATCH, &contact).json(&rename("C"))).await;
    let replay = h
        .hubspot(Method::PATCH, &contact)
        .header("Idempotency-Key", "k2")
        .json(&rename("B"));
    let (status, replayed) = send(replay).await;
    assert_eq!(
        (status, &replayed["properties"]["firstname"]),
        (StatusCode::OK, &json!("B"))
    );

    let snapshot = h.crm.snapshot().hubspot;
    assert_eq!(snapshot.records.len(), 1);
    let record = snapshot.records.values().next().unwrap();
    assert_eq!(
        record.fields["firstname"], "C",
        "the replay changed the record"
    );
    assert_eq!(
        (
            snapshot.counters.idempotent_replays,
            snapshot.counters.creates
        ),
        (2, 1)
    );
}

#[tokio::test]
async fn limits_and_faults_come_before_replays() {
    let h = Harness::start(MockCrmConfig {
        salesforce_limit: one_per_ten_seconds(),
        ..MockCrmConfig::default()
    })
    .await;
    let post = || {
        h.salesforce(Method::POST, SF_CONTACTS)
            .header("Idempotency-Key", "k1")
            .json(&json!({"LastName": "Doe"}))
    };
    assert_eq!(send(post()).await.0, StatusCode::CREATED);
    assert_eq!(send(post()).await.0, StatusCode::TOO_MANY_REQUESTS);
    h.crm.set_fail_rate(1.0).unwrap();
    assert_eq!(send(post()).await.0, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(h.crm.snapshot().salesforce.counters.idempotent_replays, 0);
}

#[tokio::test]
async fn injected_failures_answer_503_before_anything_else() {
    let h = Harness::start(MockCrmConfig {
        fail_rate: 1.0,
        token: Some(TOKEN.into()),
        ..MockCrmConfig::default()
    })
    .await;
    let create = json!({"properties": {"firstname": "A"}});
    let anonymous = h.hubspot_anonymous(Method::POST, CONTACTS).json(&create);
    for request in [h.hubspot(Method::POST, CONTACTS).json(&create), anonymous] {
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(response.headers().get("retry-after").is_none());
        assert_eq!(
            response.text().await.unwrap(),
            r#"{"message":"injected failure"}"#
        );
    }
    let snapshot = h.crm.snapshot().hubspot;
    assert!(snapshot.records.is_empty());
    assert_eq!(snapshot.counters.injected_failures, 2);

    h.crm.set_fail_rate(0.0).unwrap();
    h.create_hubspot_contact(json!({"firstname": "A"})).await;
    assert!(h.crm.set_fail_rate(1.5).is_err());
}

#[tokio::test]
async fn scripted_faults_answer_only_the_requests_they_match() {
    let h = Harness::start(MockCrmConfig::default()).await;
    let fault = Fault {
        method: Some("POST".into()),
        body: json!({"message": "try later"}),
        times: Some(2),
        ..Fault::body_contains("doomed@example.com", 503)
    };
    h.crm.add_fault(MockApi::Hubspot, fault).unwrap();
    let doomed = json!({"properties": {"email": "doomed@example.com"}});
    for _ in 0..2 {
        let (status, body) = send(h.hubspot(Method::POST, CONTACTS).json(&doomed)).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body, json!({"message": "try later"}));
    }
    // Other records, and this one once the fault's two answers are spent, pass.
    h.create_hubspot_contact(json!({"email": "fine@example.com"}))
        .await;
    h.create_hubspot_contact(json!({"email": "doomed@example.com"}))
        .await;
    // The fault was on HubSpot only.
    let sf = h
        .salesforce(Method::POST, SF_CONTACTS)
        .json(&json!({"LastName": "doomed@example.com"}));
    assert_eq!(send(sf).await.0, StatusCode::CREATED);
    assert_eq!(h.crm.snapshot().hubspot.counters.scripted_failures, 2);

    // Over the admin API: an unlimited 400 for one path, then cleared.
    let add = h.root(Method::POST, "/_admin/faults").json(&json!({
        "api": "salesforce", "path_contains": "/Internal_Id__c/k9", "status": 400,
        "body": [{"errorCode": "FIELD_CUSTOM_VALIDATION_EXCEPTION", "message": "no"}],
    }));
    assert_eq!(send(add).await.0, StatusCode::NO_CONTENT);
    let upsert = || {
        h.salesforce(Method::PATCH, &format!("{SF_CONTACTS}/Internal_Id__c/k9"))
            .json(&json!({"LastName": "K"}))
    };
    for _ in 0..3 {
        let (status, body) = send(upsert()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body[0]["errorCode"], "FIELD_CUSTOM_VALIDATION_EXCEPTION");
    }
    let bad = h
        .root(Method::POST, "/_admin/faults")
        .json(&json!({"api": "hubspot", "status": 503, "typo": 1}));
    assert_eq!(send(bad).await.0, StatusCode::BAD_REQUEST);
    let clear = h.root(Method::DELETE, "/_admin/faults");
    assert_eq!(send(clear).await.0, StatusCode::NO_CONTENT);
    assert_eq!(send(upsert()).await.0, StatusCode::CREATED);
}

#[tokio::test]
async fn item_faults_are_added_over_the_admin_api_and_fail_batch_items_only() {
    let h = Harness::start(MockCrmConfig::default()).await;
    let add = h.root(Method::POST, "/_admin/faults").json(&json!({
        "api": "hubspot", "item_contains": "doomed@example.com", "status": 409,
        "times": 1,
    }));
    assert_eq!(send(add).await.0, StatusCode::NO_CONTENT);
    let inputs = json!({"inputs": [
        {"properties": {"email": "doomed@example.com"}},
        {"properties": {"email": "doomed@example.com"}},
    ]});
    let batch = h.hubspot(Method::POST, &format!("{CONTACTS}/batch/create"));
    let (status, body) = send(batch.json(&inputs)).await;
    assert_eq!(status, StatusCode::MULTI_STATUS, "{body}");
    assert_eq!(
        body["results"].as_array().unwrap().len(),
        1,
        "its one failure spent"
    );
    assert_eq!(
        (
            &body["errors"][0]["category"],
            &body["errors"][0]["message"]
        ),
        (&json!("CONFLICT"), &json!("injected item failure"))
    );
    assert_eq!(h.crm.snapshot().hubspot.counters.scripted_item_failures, 1);
}

#[tokio::test]
async fn latency_delays_every_response() {
    let latency = Duration::from_millis(150);
    let h = Harness::start(MockCrmConfig {
        latency,
        ..MockCrmConfig::default()
    })
    .await;
    let started = Instant::now();
    let (status, _) = send(h.hubspot(Method::GET, &format!("{CONTACTS}/1"))).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(started.elapsed() >= latency);
}

#[tokio::test]
async fn the_request_log_keeps_every_request_in_order_when_on() {
    let h = Harness::start(MockCrmConfig {
        record_log: true,
        ..MockCrmConfig::default()
    })
    .await;
    let keyed = h
        .hubspot(Method::POST, CONTACTS)
        .header("Idempotency-Key", "k1")
        .json(&json!({"properties": {"firstname": "A"}}));
    send(keyed).await;
    send(h.hubspot(Method::GET, &format!("{CONTACTS}/1"))).await;
    send(h.hubspot(Method::POST, CONTACTS).body("not json")).await;

    let log = h.crm.snapshot().hubspot.log;
    let summary: Vec<_> = log
        .iter()
        .map(|entry| {
            (
                entry.method.as_str(),
                entry.path.as_str(),
                entry.status,
                entry.idempotency_key.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("POST", CONTACTS, 201, Some("k1")),
            ("GET", "/crm/v3/objects/contacts/1", 404, None),
            ("POST", CONTACTS, 400, None),
        ]
    );
    assert_eq!(log[0].body, json!({"properties": {"firstname": "A"}}));
    assert_eq!(
        (&log[1].body, &log[2].body),
        (&json!(null), &json!("not json"))
    );
    assert!(
        log.windows(2)
            .all(|pair| pair[0].received_at_us <= pair[1].received_at_us)
    );

    let quiet = Harness::start(MockCrmConfig::default()).await;
    quiet.create_hubspot_contact(json!({})).await;
    assert!(quiet.crm.snapshot().hubspot.log.is_empty());
}

#[tokio::test]
async fn reset_forgets_state_but_keeps_settings() {
    let h = Harness::start(MockCrmConfig {
        hubspot_limit: one_per_ten_seconds(),
        record_log: true,
        ..MockCrmConfig::default()
    })
    .await;
    let keyed = || {
        h.hubspot(Method::POST, CONTACTS)
            .header("Idempotency-Key", "k1")
            .json(&json!({"properties": {}}))
    };
    assert_eq!(send(keyed()).await.0, StatusCode::CREATED);
    assert_eq!(send(keyed()).await.0, StatusCode::TOO_MANY_REQUESTS);
    h.crm.set_fail_rate(0.5).unwrap();

    h.crm.reset();
    let snapshot = h.crm.snapshot();
    assert!(snapshot.hubspot.records.is_empty() && snapshot.hubspot.log.is_empty());
    assert_eq!(snapshot.hubspot.counters, Default::default());
    assert_eq!(snapshot.fail_rate, 0.5);

    h.crm.set_fail_rate(0.0).unwrap();
    let response = keyed().send().await.unwrap();
    assert_eq!(
        response.status(),
        StatusCode::CREATED,
        "limit and replay store not reset"
    );
    assert!(response.headers().get("idempotent-replayed").is_none());
}

#[tokio::test]
async fn shutdown_stops_serving() {
    let h = Harness::start(MockCrmConfig::default()).await;
    let addr = h.crm.addr();
    h.crm.shutdown().await.unwrap();
    let refused = tokio::net::TcpStream::connect(addr).await;
    assert!(refused.is_err(), "still accepting after shutdown");
}

#[tokio::test]
async fn start_refuses_settings_that_cannot_work() {
    let config = MockCrmConfig {
        fail_rate: 2.0,
        ..MockCrmConfig::default()
    };
    let error = MockCrm::start(config).await.err().unwrap();
    assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
    assert_eq!(error.to_string(), "fail rate 2 is outside 0..=1");
}
