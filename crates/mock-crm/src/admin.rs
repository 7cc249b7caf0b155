//! `/_admin`: inspection and control for tests and demos. Not rate limited,
//! not authenticated, not counted (the admin edits of `edits.rs`, also here,
//! are counted apart as `user_writes`).
//!
//! OAuth (`oauth.rs`): `PUT /oauth/grants/{account}` (`{"refresh_token":
//! ".."}`) registers or replaces an account's refresh token, `DELETE
//! /oauth/grants/{account}` revokes it and the account's access tokens,
//! `POST /oauth/expire/{account}` expires the access tokens only, and
//! `GET /oauth` answers the [`OAuthStats`](super::OAuthStats).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{delete, get, post, put};
use axum::{Router, body::Bytes};
use serde::Deserialize;
use serde_json::json;

use super::{Fault, MockApi, OAuthStats, Shared, Snapshot, WebhookConfig, WebhookStats, edits};

type SharedState = State<Arc<Shared>>;

pub(super) fn routes(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/state", get(state))
        .route("/reset", post(reset))
        .route("/fail_rate", post(set_fail_rate))
        .route("/faults", post(add_fault))
        .route("/faults", delete(clear_faults))
        .route(
            "/webhooks",
            get(webhook_stats).put(set_webhook).delete(unset_webhook),
        )
        .route("/oauth", get(oauth_stats))
        .route(
            "/oauth/grants/{account}",
            put(oauth_grant).delete(oauth_revoke),
        )
        .route("/oauth/expire/{account}", post(oauth_expire))
        .with_state(shared.clone())
        .merge(edits::routes(shared))
}

async fn webhook_stats(State(shared): SharedState) -> Json<WebhookStats> {
    Json(shared.webhooks.stats())
}

/// A [`WebhookConfig`] as JSON: `{"url": ..., "secret": ..., "max_batch": 10, ...}`.
async fn set_webhook(State(shared): SharedState, body: Bytes) -> Response {
    let refuse = |message: String| {
        (StatusCode::BAD_REQUEST, Json(json!({"message": message}))).into_response()
    };
    let config = match serde_json::from_slice::<WebhookConfig>(&body) {
        Ok(config) => config,
        Err(e) => {
            return refuse(format!(
                "expected a webhook target {{\"url\", \"secret\", ...}}: {e}"
            ));
        }
    };
    match shared.webhooks.set_target(Some(config)) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => refuse(e.to_string()),
    }
}

async fn unset_webhook(State(shared): SharedState) -> StatusCode {
    (shared.webhooks.set_target(None)).expect("no target is always a valid setting");
    StatusCode::NO_CONTENT
}

async fn oauth_stats(State(shared): SharedState) -> Json<OAuthStats> {
    Json(shared.settings.oauth.stats())
}

#[derive(Deserialize)]
struct Grant {
    refresh_token: String,
}

/// `{"refresh_token": ".."}`, read whatever the content type.
async fn oauth_grant(
    State(shared): SharedState,
    Path(account): Path<String>,
    body: Bytes,
) -> Response {
    match serde_json::from_slice::<Grant>(&body) {
        Ok(grant) if !grant.refresh_token.is_empty() => {
            shared.settings.oauth.grant(&account, &grant.refresh_token);
            StatusCode::NO_CONTENT.into_response()
        }
        Ok(_) => refuse("the refresh token is empty".into()),
        Err(e) => refuse(format!("expected {{\"refresh_token\": \"..\"}}: {e}")),
    }
}

async fn oauth_revoke(State(shared): SharedState, Path(account): Path<String>) -> StatusCode {
    shared.settings.oauth.revoke(&account);
    StatusCode::NO_CONTENT
}

async fn oauth_expire(State(shared): SharedState, Path(account): Path<String>) -> StatusCode {
    shared.settings.oauth.expire(&account);
    StatusCode::NO_CONTENT
}

fn refuse(message: String) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({"message": message}))).into_response()
}

async fn state(State(shared): SharedState) -> Json<Snapshot> {
    Json(shared.snapshot())
}

async fn reset(State(shared): SharedState) -> StatusCode {
    shared.reset();
    StatusCode::NO_CONTENT
}

#[derive(Deserialize)]
struct FailRate {
    fail_rate: f64,
}

/// Reads the body whatever its content type, so a bare `curl -d` works.
async fn set_fail_rate(State(shared): SharedState, body: Bytes) -> Response {
    let refuse = |message: String| {
        (StatusCode::BAD_REQUEST, Json(json!({"message": message}))).into_response()
    };
    let request: FailRate = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => return refuse(format!("expected {{\"fail_rate\": 0.05}}: {e}")),
    };
    match shared.settings.set_fail_rate(request.fail_rate) {
        Ok(()) => Json(json!({"fail_rate": request.fail_rate})).into_response(),
        Err(e) => refuse(e.to_string()),
    }
}

/// `{"api": "hubspot", "body_contains": "x@example.com", "status": 503}`:
/// the API, and the [`Fault`]'s fields beside it. With `"item_contains"`
/// instead, only the matching items of batches fail.
async fn add_fault(State(shared): SharedState, body: Bytes) -> Response {
    let refuse = |message: String| {
        (StatusCode::BAD_REQUEST, Json(json!({"message": message}))).into_response()
    };
    let parsed = serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&body)
        .and_then(|mut fields| {
            let api = fields.remove("api").unwrap_or_default();
            Ok((
                serde_json::from_value::<MockApi>(api)?,
                serde_json::from_value::<Fault>(fields.into())?,
            ))
        });
    let (api, fault) = match parsed {
        Ok(request) => request,
        Err(e) => {
            return refuse(format!(
                "expected {{\"api\": \"hubspot\" or \"salesforce\", \"status\": 503, ...}}: {e}"
            ));
        }
    };
    match shared.add_fault(api, fault) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => refuse(e.to_string()),
    }
}

async fn clear_faults(State(shared): SharedState) -> StatusCode {
    shared.hubspot.clear_faults();
    shared.salesforce.clear_faults();
    StatusCode::NO_CONTENT
}

#[cfg(test)]
mod tests {
    use reqwest::{Method, StatusCode};
    use serde_json::json;

    use crate::test_support::{Harness, send};
    use crate::{MockCrmConfig, Snapshot};

    #[tokio::test]
    async fn state_is_the_snapshot_as_json() {
        let h = Harness::start(MockCrmConfig {
            record_log: true,
            ..MockCrmConfig::default()
        })
        .await;
        h.create_hubspot_contact(json!({"email": "a@b.c"})).await;
        let (status, state) = send(h.root(Method::GET, "/_admin/state")).await;
        assert_eq!(status, StatusCode::OK);
        let state: Snapshot = serde_json::from_value(state).unwrap();
        assert_eq!(state, h.crm.snapshot());
        assert_eq!(state.hubspot.counters.count("POST", 201), 1);
    }

    #[tokio::test]
    async fn reset_clears_the_records() {
        let h = Harness::start(MockCrmConfig::default()).await;
        h.create_hubspot_contact(json!({})).await;
        let (status, _) = send(h.root(Method::POST, "/_admin/reset")).await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        assert!(h.crm.snapshot().hubspot.records.is_empty());
    }

    #[tokio::test]
    async fn fail_rate_changes_live_and_refuses_nonsense() {
        let h = Harness::start(MockCrmConfig::default()).await;
        let set = |body: &'static str| h.root(Method::POST, "/_admin/fail_rate").body(body);
        let (status, body) = send(set(r#"{"fail_rate": 1.0}"#)).await;
        assert_eq!((status, body), (StatusCode::OK, json!({"fail_rate": 1.0})));
        let (status, _) = send(h.hubspot(Method::GET, "/crm/v3/objects/contacts/1")).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);

        for nonsense in [r#"{"fail_rate": 2}"#, r#"{"rate": 0.1}"#, "0.1"] {
            let (status, body) = send(set(nonsense)).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{nonsense}");
            assert!(body["message"].is_string());
        }
        assert_eq!(h.crm.snapshot().fail_rate, 1.0);
    }
}
