//! The OAuth flow over HTTP: token endpoints of both APIs, access tokens at
//! the gateway, the admin routes, and what stays as it was.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use reqwest::{Method, RequestBuilder, StatusCode};
use serde_json::json;

use crate::test_support::{CLIENT_ID, Harness, oauth_config, send};
use crate::{MockCrmConfig, OAuthStats};

const HUBSPOT_TOKEN: &str = "/hubspot/oauth/v1/token";
const SALESFORCE_TOKEN: &str = "/salesforce/services/oauth2/token";
const CONTACTS: &str = "/crm/v3/objects/contacts";
const SF_CONTACTS: &str = "/services/data/v60.0/sobjects/Contact";
const TTL: Duration = Duration::from_secs(60);

/// An access token for `refresh_token` from HubSpot's endpoint.
async fn hubspot_access_token(h: &Harness, refresh_token: &str) -> String {
    let (status, body) = send(h.refresh(HUBSPOT_TOKEN, refresh_token)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["access_token"]
        .as_str()
        .expect("an access token")
        .to_owned()
}

/// A HubSpot contact create carrying `access_token`.
fn hubspot_create(h: &Harness, access_token: &str) -> RequestBuilder {
    h.hubspot_anonymous(Method::POST, CONTACTS)
        .bearer_auth(access_token)
        .json(&json!({"properties": {"firstname": "A"}}))
}

/// A Salesforce contact create carrying `access_token`.
fn salesforce_create(h: &Harness, access_token: &str) -> RequestBuilder {
    h.root(Method::POST, &format!("/salesforce{SF_CONTACTS}"))
        .bearer_auth(access_token)
        .json(&json!({"LastName": "Doe"}))
}

fn counts(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs.iter().map(|(k, n)| (k.to_string(), *n)).collect()
}

#[tokio::test]
async fn hubspot_refresh_issues_a_working_access_token() {
    let h = Harness::start_oauth(TTL, false).await;
    h.crm.oauth_grant("acme", "rt-acme");
    let (status, body) = send(h.refresh(HUBSPOT_TOKEN, "rt-acme")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let access_token = body["access_token"].as_str().unwrap().to_owned();
    assert!(access_token.starts_with("at-"), "{access_token}");
    assert_eq!(
        body,
        json!({"token_type": "bearer", "refresh_token": "rt-acme", "access_token": access_token, "expires_in": 60})
    );
    let (status, body) = send(hubspot_create(&h, &access_token)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    let second = hubspot_access_token(&h, "rt-acme").await;
    assert_ne!(second, access_token);
    for token in [&access_token, &second] {
        let read = h.hubspot_anonymous(Method::GET, &format!("{CONTACTS}/0"));
        let (status, _) = send(read.bearer_auth(token)).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "earlier tokens stay valid");
    }
    let stats = h.crm.oauth_stats();
    assert_eq!(stats.refreshes, counts(&[("acme", 2)]));
    assert_eq!(stats.live_tokens, counts(&[("acme", 2)]));
}

#[tokio::test]
async fn salesforce_refresh_issues_a_session_without_expires_in() {
    let h = Harness::start_oauth(TTL, false).await;
    h.crm.oauth_grant("acme", "rt-acme");
    // A form the client did not label as one is read all the same.
    let form = format!(
        "grant_type=refresh_token&client_id={CLIENT_ID}&client_secret=client-secret&refresh_token=rt-acme"
    );
    let request = h.root(Method::POST, SALESFORCE_TOKEN).body(form);
    let (status, body) = send(request).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let issued_at: u64 = body["issued_at"].as_str().unwrap().parse().unwrap();
    assert!(issued_at > 1_600_000_000_000, "{issued_at}");
    let access_token = body["access_token"].as_str().unwrap().to_owned();
    let expected = json!({
        "access_token": access_token,
        "instance_url": h.crm.salesforce_url(),
        "id": "https://login.salesforce.com/id/00D/005",
        "token_type": "Bearer",
        "issued_at": body["issued_at"],
        "signature": "mock",
    });
    assert_eq!(body, expected);
    let (status, body) = send(salesforce_create(&h, &access_token)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

#[tokio::test]
async fn token_requests_from_a_wrong_client_or_grant_are_refused() {
    let h = Harness::start_oauth(TTL, false).await;
    h.crm.oauth_grant("acme", "rt-acme");
    for path in [HUBSPOT_TOKEN, SALESFORCE_TOKEN] {
        let wrong_secret =
            "grant_type=refresh_token&client_id=client-id&client_secret=nope&refresh_token=rt-acme";
        let (status, body) = send(h.root(Method::POST, path).body(wrong_secret)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
        assert_eq!(
            body,
            json!({"error": "invalid_client", "error_description": "invalid client credentials"})
        );
        let wrong_client = "grant_type=refresh_token&client_id=other&client_secret=client-secret&refresh_token=rt-acme";
        let (status, _) = send(h.root(Method::POST, path).body(wrong_client)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");

        let password = "grant_type=password&client_id=client-id&client_secret=client-secret";
        let (status, body) = send(h.root(Method::POST, path).body(password)).await;
        assert_eq!(
            (status, body),
            (
                StatusCode::BAD_REQUEST,
                json!({"error": "unsupported_grant_type"})
            )
        );
    }
    let stats = h.crm.oauth_stats();
    assert_eq!(stats.refused_refreshes, counts(&[("?", 2), ("acme", 4)]));
    assert!(stats.refreshes.is_empty() && stats.live_tokens.is_empty());
}

#[tokio::test]
async fn an_unknown_refresh_token_is_refused_in_each_apis_words() {
    let h = Harness::start_oauth(TTL, false).await;
    let (status, body) = send(h.refresh(HUBSPOT_TOKEN, "rt-who")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        body,
        json!({"status": "BAD_REFRESH_TOKEN", "message": "missing or unknown refresh token"})
    );
    let (status, body) = send(h.refresh(SALESFORCE_TOKEN, "rt-who")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        body,
        json!({"error": "invalid_grant", "error_description": "expired access/refresh token"})
    );
    assert_eq!(h.crm.oauth_stats().refused_refreshes, counts(&[("?", 2)]));
}

#[tokio::test]
async fn an_expired_access_token_is_refused_until_the_client_refreshes() {
    let ttl = Duration::from_millis(300);
    let h = Harness::start_oauth(ttl, false).await;
    h.crm.oauth_grant("acme", "rt-acme");
    let (_, body) = send(h.refresh(HUBSPOT_TOKEN, "rt-acme")).await;
    assert_eq!(body["expires_in"], 0, "whole seconds, rounded down");
    let access_token = body["access_token"].as_str().unwrap().to_owned();
    assert_eq!(
        send(hubspot_create(&h, &access_token)).await.0,
        StatusCode::CREATED
    );

    tokio::time::sleep(ttl + Duration::from_millis(50)).await;
    let (status, body) = send(hubspot_create(&h, &access_token)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["category"], "EXPIRED_AUTHENTICATION");
    let (status, body) = send(salesforce_create(&h, &access_token)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        body,
        json!([{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID", "fields": []}])
    );
    // A token the mock never issued is not an expired one.
    let (status, body) = send(hubspot_create(&h, "at-unknown")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["category"], "INVALID_AUTHENTICATION");

    let fresh = hubspot_access_token(&h, "rt-acme").await;
    assert_eq!(
        send(hubspot_create(&h, &fresh)).await.0,
        StatusCode::CREATED
    );
    let stats = h.crm.oauth_stats();
    assert_eq!(stats.unauthorized, counts(&[("?", 1), ("acme", 2)]));
    assert_eq!(stats.refreshes, counts(&[("acme", 2)]));
}

#[tokio::test]
async fn expire_ends_the_access_tokens_but_not_the_refresh_token() {
    let h = Harness::start_oauth(TTL, false).await;
    h.crm.oauth_grant("acme", "rt-acme");
    h.crm.oauth_grant("globex", "rt-globex");
    let acme = hubspot_access_token(&h, "rt-acme").await;
    let globex = hubspot_access_token(&h, "rt-globex").await;
    let (status, _) = send(h.root(Method::POST, "/_admin/oauth/expire/acme")).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = send(hubspot_create(&h, &acme)).await;
    assert_eq!(
        (status, &body["category"]),
        (StatusCode::UNAUTHORIZED, &json!("EXPIRED_AUTHENTICATION"))
    );
    assert_eq!(
        send(hubspot_create(&h, &globex)).await.0,
        StatusCode::CREATED
    );
    let acme = hubspot_access_token(&h, "rt-acme").await;
    assert_eq!(send(hubspot_create(&h, &acme)).await.0, StatusCode::CREATED);
}

#[tokio::test]
async fn revoke_ends_the_refresh_token_and_the_live_access_tokens() {
    let h = Harness::start_oauth(TTL, false).await;
    let grant = h
        .root(Method::PUT, "/_admin/oauth/grants/acme")
        .body(r#"{"refresh_token": "rt-acme"}"#);
    assert_eq!(send(grant).await.0, StatusCode::NO_CONTENT);
    let hubspot = hubspot_access_token(&h, "rt-acme").await;
    let (_, body) = send(h.refresh(SALESFORCE_TOKEN, "rt-acme")).await;
    let salesforce = body["access_token"].as_str().unwrap().to_owned();

    let revoke = h.root(Method::DELETE, "/_admin/oauth/grants/acme");
    assert_eq!(send(revoke).await.0, StatusCode::NO_CONTENT);
    let (status, body) = send(hubspot_create(&h, &hubspot)).await;
    assert_eq!(
        (status, &body["category"]),
        (StatusCode::UNAUTHORIZED, &json!("EXPIRED_AUTHENTICATION"))
    );
    let (status, body) = send(salesforce_create(&h, &salesforce)).await;
    assert_eq!(
        (status, &body[0]["errorCode"]),
        (StatusCode::UNAUTHORIZED, &json!("INVALID_SESSION_ID"))
    );
    let (status, body) = send(h.refresh(HUBSPOT_TOKEN, "rt-acme")).await;
    assert_eq!(
        (status, &body["status"]),
        (StatusCode::BAD_REQUEST, &json!("BAD_REFRESH_TOKEN"))
    );

    let (status, stats) = send(h.root(Method::GET, "/_admin/oauth")).await;
    assert_eq!(status, StatusCode::OK);
    let stats: OAuthStats = serde_json::from_value(stats).unwrap();
    assert_eq!(
        stats,
        OAuthStats {
            refreshes: counts(&[("acme", 2)]),
            refused_refreshes: counts(&[("?", 1)]),
            unauthorized: counts(&[("acme", 2)]),
            live_tokens: BTreeMap::new(),
        }
    );
}

#[tokio::test]
async fn with_rotation_each_refresh_replaces_the_refresh_token() {
    let h = Harness::start_oauth(TTL, true).await;
    h.crm.oauth_grant("acme", "rt-0");
    let (status, body) = send(h.refresh(HUBSPOT_TOKEN, "rt-0")).await;
    assert_eq!(status, StatusCode::OK);
    let rotated = body["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(rotated, "rt-0");
    let (status, _) = send(h.refresh(HUBSPOT_TOKEN, "rt-0")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "the old one stops working");

    // Salesforce names the new refresh token only when they rotate.
    let (status, body) = send(h.refresh(SALESFORCE_TOKEN, &rotated)).await;
    assert_eq!(status, StatusCode::OK);
    let next = body["refresh_token"].as_str().unwrap();
    assert_ne!(next, rotated);
    assert_eq!(send(h.refresh(HUBSPOT_TOKEN, next)).await.0, StatusCode::OK);
    assert_eq!(h.crm.oauth_stats().refreshes, counts(&[("acme", 3)]));
}

#[tokio::test]
async fn the_request_log_names_the_account_of_the_access_token() {
    let h = Harness::start(MockCrmConfig {
        record_log: true,
        token: Some("dev-token".into()),
        ..oauth_config(TTL, false)
    })
    .await;
    h.crm.oauth_grant("acme", "rt-acme");
    let acme = hubspot_access_token(&h, "rt-acme").await;
    send(hubspot_create(&h, &acme)).await;
    send(hubspot_create(&h, "dev-token")).await;
    send(hubspot_create(&h, "at-unknown")).await;
    let log = h.crm.snapshot().hubspot.log;
    let summary: Vec<_> = log
        .iter()
        .map(|entry| (entry.path.as_str(), entry.status, entry.account.as_deref()))
        .collect();
    // Token requests are not API requests: not logged.
    assert_eq!(
        summary,
        [
            (CONTACTS, 201, Some("acme")),
            (CONTACTS, 201, None),
            (CONTACTS, 401, None),
        ]
    );
    let state = h.crm.snapshot();
    let logged = serde_json::to_value(&state.hubspot.log).unwrap();
    assert_eq!(logged[0]["account"], "acme");
    assert!(logged[1].get("account").is_none(), "{}", logged[1]);
}

#[tokio::test]
async fn token_requests_skip_the_gateway_but_wait_the_latency() {
    let latency = Duration::from_millis(100);
    let h = Harness::start(MockCrmConfig {
        fail_rate: 1.0,
        latency,
        ..oauth_config(TTL, false)
    })
    .await;
    h.crm.oauth_grant("acme", "rt-acme");
    let started = Instant::now();
    let (status, _) = send(h.refresh(HUBSPOT_TOKEN, "rt-acme")).await;
    assert_eq!(status, StatusCode::OK, "not subject to the fail rate");
    assert!(started.elapsed() >= latency);
    assert_eq!(
        send(h.refresh(SALESFORCE_TOKEN, "rt-acme")).await.0,
        StatusCode::OK
    );
    let snapshot = h.crm.snapshot();
    for counters in [snapshot.hubspot.counters, snapshot.salesforce.counters] {
        assert_eq!(
            counters,
            Default::default(),
            "token requests are not counted"
        );
    }
}

#[tokio::test]
async fn reset_zeroes_the_stats_but_keeps_grants_and_tokens() {
    let h = Harness::start_oauth(TTL, false).await;
    h.crm.oauth_grant("acme", "rt-acme");
    let access_token = hubspot_access_token(&h, "rt-acme").await;
    send(hubspot_create(&h, "at-unknown")).await;
    h.crm.reset();
    let stats = h.crm.oauth_stats();
    assert!(stats.refreshes.is_empty() && stats.unauthorized.is_empty());
    assert_eq!(stats.live_tokens, counts(&[("acme", 1)]));
    assert_eq!(
        send(hubspot_create(&h, &access_token)).await.0,
        StatusCode::CREATED
    );
    hubspot_access_token(&h, "rt-acme").await;
}

#[tokio::test]
async fn the_admin_grant_route_refuses_a_body_without_a_refresh_token() {
    let h = Harness::start_oauth(TTL, false).await;
    for bad in ["", "{}", r#"{"refresh_token": ""}"#, "rt-acme"] {
        let grant = h.root(Method::PUT, "/_admin/oauth/grants/acme").body(bad);
        let (status, body) = send(grant).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
        assert!(body["message"].is_string());
    }
}

#[tokio::test]
async fn with_oauth_off_there_are_no_token_endpoints_and_any_bearer_passes() {
    let h = Harness::start(MockCrmConfig::default()).await;
    h.crm.oauth_grant("acme", "rt-acme");
    for path in [HUBSPOT_TOKEN, SALESFORCE_TOKEN] {
        let (status, body) = send(h.refresh(path, "rt-acme")).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(body["error"], "not_found");
    }
    let (status, _) = send(hubspot_create(&h, "anything")).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(h.crm.snapshot().hubspot.counters.count("POST", 201), 1);
    assert_eq!(h.crm.oauth_stats(), OAuthStats::default());
}
