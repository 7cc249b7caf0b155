//! Admin edits: a person changing contacts in the CRM's own UI, while
//! syncflow writes through the API. They skip the gateway (no faults, auth,
//! rate limit or request counters) and count as `user_writes`; the records
//! check them as the API does (a UI refuses a bad email too). HubSpot edits
//! emit webhooks with `changeSource: "CRM_UI"`. Salesforce edits may give a
//! `LastModifiedDate` (ms) to backdate the change: a late commit, which
//! appears behind a poller's cursor.
//!
//! Routes under `/_admin`: `POST /hubspot/contacts` (`{"properties": {..}}`),
//! `PATCH|DELETE /hubspot/contacts/{id}`, `POST /salesforce/contacts`
//! (fields), `PATCH|DELETE /salesforce/contacts/{id}` (a DELETE may carry
//! `{"LastModifiedDate": ms}`), `PUT /salesforce/clock` (`{"now": ms|null}`).

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{patch, post, put};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::Shared;
use super::hubspot;
use super::reply::Reply;
use super::salesforce::{self, LAST_MODIFIED, errors};
use super::writes::Origin;

/// An admin edit the CRM refused, with the answer its API would give.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("the CRM refused the edit with status {status}: {body}")]
pub struct EditError {
    pub status: u16,
    pub body: Value,
}

type Edited = Result<Value, EditError>;

fn outcome(reply: Reply) -> Edited {
    if reply.status.is_success() {
        Ok(reply.body_json())
    } else {
        Err(EditError {
            status: reply.status.as_u16(),
            body: reply.body_json(),
        })
    }
}

impl Shared {
    /// Creates a HubSpot contact; answers it as the API does.
    pub(super) fn hubspot_user_create(&self, properties: Value) -> Edited {
        let properties = hubspot_properties(properties)?;
        outcome(
            self.hubspot
                .edit(|hubspot| hubspot.create(properties, Origin::User)),
        )
    }

    pub(super) fn hubspot_user_update(&self, id: &str, properties: Value) -> Edited {
        let properties = hubspot_properties(properties)?;
        outcome(
            self.hubspot
                .edit(|hubspot| hubspot.update(id, properties, Origin::User)),
        )
    }

    pub(super) fn hubspot_user_delete(&self, id: &str) -> Edited {
        outcome(
            self.hubspot
                .edit(|hubspot| hubspot.archive(id, Origin::User)),
        )
    }

    /// Creates a Salesforce contact; answers it as a GET by id does.
    pub(super) fn salesforce_user_create(&self, fields: Value, at: Option<u64>) -> Edited {
        let fields = salesforce_fields(fields)?;
        self.salesforce.edit(|salesforce| {
            let created = outcome(salesforce.create(fields, Origin::User, at))?;
            let id = created["id"].as_str().expect("a created contact has an id");
            outcome(salesforce.read(id))
        })
    }

    pub(super) fn salesforce_user_update(
        &self,
        id: &str,
        fields: Value,
        at: Option<u64>,
    ) -> Edited {
        let fields = salesforce_fields(fields)?;
        self.salesforce.edit(|salesforce| {
            outcome(salesforce.update(id, fields, Origin::User, at))?;
            outcome(salesforce.read(id))
        })
    }

    pub(super) fn salesforce_user_delete(&self, id: &str, at: Option<u64>) -> Edited {
        outcome(
            self.salesforce
                .edit(|salesforce| salesforce.delete(id, Origin::User, at)),
        )
    }
}

/// Checked as the API's create and update bodies are.
fn hubspot_properties(properties: Value) -> Result<Map<String, Value>, EditError> {
    let body = json!({ "properties": properties }).to_string();
    hubspot::properties(body.as_bytes()).map_err(|refusal| outcome(refusal.into()).unwrap_err())
}

fn salesforce_fields(fields: Value) -> Result<Map<String, Value>, EditError> {
    salesforce::fields(fields.to_string().as_bytes())
        .map_err(|refusal| outcome(refusal.into()).unwrap_err())
}

pub(super) fn routes(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/hubspot/contacts", post(hubspot_create))
        .route(
            "/hubspot/contacts/{id}",
            patch(hubspot_update).delete(hubspot_delete),
        )
        .route("/salesforce/contacts", post(salesforce_create))
        .route(
            "/salesforce/contacts/{id}",
            patch(salesforce_update).delete(salesforce_delete),
        )
        .route("/salesforce/clock", put(salesforce_clock))
        .with_state(shared)
}

type SharedState = State<Arc<Shared>>;

fn respond(success: StatusCode, edited: Edited) -> Response {
    match edited {
        Ok(Value::Null) => success.into_response(),
        Ok(body) => (success, Json(body)).into_response(),
        Err(refused) => {
            let status = StatusCode::from_u16(refused.status).unwrap_or(StatusCode::BAD_REQUEST);
            (status, Json(refused.body)).into_response()
        }
    }
}

/// The body as JSON, or the refusal (HubSpot's wording and Salesforce's
/// look alike enough for an admin API).
fn json_body(body: &Bytes) -> Result<Value, EditError> {
    if body.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_slice(body).map_err(|e| EditError {
        status: 400,
        body: json!({"message": format!("the body is not JSON: {e}")}),
    })
}

async fn hubspot_create(State(shared): SharedState, body: Bytes) -> Response {
    let edited =
        json_body(&body).and_then(|body| shared.hubspot_user_create(body["properties"].clone()));
    respond(StatusCode::CREATED, edited)
}

async fn hubspot_update(
    State(shared): SharedState,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let edited = json_body(&body)
        .and_then(|body| shared.hubspot_user_update(&id, body["properties"].clone()));
    respond(StatusCode::OK, edited)
}

async fn hubspot_delete(State(shared): SharedState, Path(id): Path<String>) -> Response {
    respond(StatusCode::NO_CONTENT, shared.hubspot_user_delete(&id))
}

async fn salesforce_create(State(shared): SharedState, body: Bytes) -> Response {
    let edited = json_body(&body).and_then(|body| {
        let (fields, at) = backdating(body)?;
        shared.salesforce_user_create(fields, at)
    });
    respond(StatusCode::CREATED, edited)
}

async fn salesforce_update(
    State(shared): SharedState,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let edited = json_body(&body).and_then(|body| {
        let (fields, at) = backdating(body)?;
        shared.salesforce_user_update(&id, fields, at)
    });
    respond(StatusCode::OK, edited)
}

async fn salesforce_delete(
    State(shared): SharedState,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let edited = json_body(&body).and_then(|body| {
        let (_, at) = backdating(body)?;
        shared.salesforce_user_delete(&id, at)
    });
    respond(StatusCode::NO_CONTENT, edited)
}

/// Takes the optional `LastModifiedDate` (ms) out of a Salesforce edit body.
fn backdating(body: Value) -> Result<(Value, Option<u64>), EditError> {
    let mut fields = match body {
        Value::Null => Map::new(),
        Value::Object(fields) => fields,
        // Left for the fields check to refuse in Salesforce's words.
        other => return Ok((other, None)),
    };
    let at = match fields.remove(LAST_MODIFIED) {
        None | Some(Value::Null) => None,
        Some(value) => Some(value.as_u64().ok_or_else(|| {
            let message = format!("{LAST_MODIFIED} must be milliseconds since the epoch");
            outcome(errors(
                StatusCode::BAD_REQUEST,
                "INVALID_FIELD",
                &message,
                &[LAST_MODIFIED],
            ))
            .unwrap_err()
        })?),
    };
    Ok((Value::Object(fields), at))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Clock {
    now: Option<u64>,
}

async fn salesforce_clock(State(shared): SharedState, body: Bytes) -> Response {
    match serde_json::from_slice::<Clock>(&body) {
        Ok(clock) => {
            shared.set_salesforce_clock(clock.now);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => {
            let message = format!("expected {{\"now\": MS or null}}: {e}");
            (StatusCode::BAD_REQUEST, Json(json!({"message": message}))).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use reqwest::{Method, StatusCode};
    use serde_json::json;

    use crate::MockCrmConfig;
    use crate::test_support::{Harness, send};

    const T: u64 = 1_700_000_000_000;

    #[tokio::test]
    async fn hubspot_edits_skip_the_gateway_and_count_as_user_writes() {
        // Every API request would fail: edits do not go through faults or auth.
        let h = Harness::start(MockCrmConfig {
            fail_rate: 1.0,
            token: Some("secret".into()),
            ..MockCrmConfig::default()
        })
        .await;
        let create = json!({"properties": {"email": "u@x.io", "firstname": "U"}});
        let (status, created) = send(
            h.root(Method::POST, "/_admin/hubspot/contacts")
                .json(&create),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        assert_eq!(created["properties"], create["properties"]);
        let id = created["id"].as_str().unwrap().to_owned();
        let path = format!("/_admin/hubspot/contacts/{id}");
        let patch = json!({"properties": {"firstname": "V"}});
        let (status, updated) = send(h.root(Method::PATCH, &path).json(&patch)).await;
        assert_eq!(
            (status, &updated["properties"]["firstname"]),
            (StatusCode::OK, &json!("V"))
        );

        // Refused as the API would: a duplicate email, a bad one, a missing id.
        let duplicate = h
            .crm
            .hubspot_user_create(json!({"email": "u@x.io"}))
            .unwrap_err();
        assert_eq!(duplicate.status, 409);
        let bad = json!({"properties": {"email": "nope"}});
        let (status, body) = send(h.root(Method::PATCH, &path).json(&bad)).await;
        assert_eq!(
            (status, &body["category"]),
            (StatusCode::BAD_REQUEST, &json!("VALIDATION_ERROR"))
        );
        let (status, _) = send(h.root(Method::POST, "/_admin/hubspot/contacts").body("{")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);

        let (status, _) = send(h.root(Method::DELETE, &path)).await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        assert_eq!(h.crm.hubspot_user_delete(&id).unwrap_err().status, 404);

        let snapshot = h.crm.snapshot().hubspot;
        assert!(snapshot.records.is_empty());
        let counters = snapshot.counters;
        assert_eq!((counters.user_writes, counters.api_writes), (3, 0));
        assert!(counters.requests.is_empty() && counters.creates == 0);
        assert_eq!(counters.injected_failures, 0);
    }

    #[tokio::test]
    async fn salesforce_edits_may_be_backdated() {
        let h = Harness::start(MockCrmConfig::default()).await;
        let create = json!({"LastName": "Doe", "LastModifiedDate": T});
        let (status, created) = send(
            h.root(Method::POST, "/_admin/salesforce/contacts")
                .json(&create),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        assert_eq!(
            (
                &created["LastName"],
                &created["LastModifiedDate"],
                &created["IsDeleted"]
            ),
            (&json!("Doe"), &json!(T), &json!(false))
        );
        let id = created["Id"].as_str().unwrap().to_owned();
        let path = format!("/_admin/salesforce/contacts/{id}");

        // Without a time, the clock's (here: now).
        let (status, updated) =
            send(h.root(Method::PATCH, &path).json(&json!({"Title": "CEO"}))).await;
        assert_eq!((status, &updated["Title"]), (StatusCode::OK, &json!("CEO")));
        assert!(updated["LastModifiedDate"].as_u64().unwrap() > T);
        h.crm
            .salesforce_user_update(&id, json!({"Title": "CTO"}), Some(T + 1))
            .unwrap();
        let records = h.crm.snapshot().salesforce.records;
        assert_eq!(records[&id].fields["Title"], "CTO");

        let bad_time = json!({"Title": "x", "LastModifiedDate": "yesterday"});
        let (status, body) = send(h.root(Method::PATCH, &path).json(&bad_time)).await;
        assert_eq!(
            (status, &body[0]["errorCode"]),
            (StatusCode::BAD_REQUEST, &json!("INVALID_FIELD"))
        );
        let no_last_name = h
            .crm
            .salesforce_user_create(json!({"FirstName": "A"}), None)
            .unwrap_err();
        assert_eq!(no_last_name.body[0]["errorCode"], "REQUIRED_FIELD_MISSING");

        let (status, _) = send(
            h.root(Method::DELETE, &path)
                .json(&json!({"LastModifiedDate": T + 2})),
        )
        .await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        assert!(h.crm.snapshot().salesforce.records.is_empty());
        assert_eq!(
            h.crm.salesforce_user_delete(&id, None).unwrap_err().status,
            404
        );
        let (_, changes) =
            send(h.salesforce(Method::GET, "/services/data/v60.0/sobjects/Contact/changes")).await;
        assert_eq!(
            (
                &changes["records"][0]["IsDeleted"],
                &changes["records"][0]["LastModifiedDate"]
            ),
            (&json!(true), &json!(T + 2))
        );
        let counters = h.crm.snapshot().salesforce.counters;
        assert_eq!((counters.user_writes, counters.api_writes), (4, 0));
    }

    #[tokio::test]
    async fn the_salesforce_clock_is_set_and_unset_over_http() {
        let h = Harness::start(MockCrmConfig::default()).await;
        let clock =
            |body: serde_json::Value| h.root(Method::PUT, "/_admin/salesforce/clock").json(&body);
        assert_eq!(
            send(clock(json!({"now": T}))).await.0,
            StatusCode::NO_CONTENT
        );
        let id = h
            .crm
            .salesforce_user_create(json!({"LastName": "A"}), None)
            .unwrap();
        assert_eq!(
            send(clock(json!({"now": null}))).await.0,
            StatusCode::NO_CONTENT
        );
        let later = h
            .crm
            .salesforce_user_create(json!({"LastName": "B"}), None)
            .unwrap();
        assert_eq!(
            send(clock(json!({"when": 1}))).await.0,
            StatusCode::BAD_REQUEST
        );
        let (_, changes) =
            send(h.salesforce(Method::GET, "/services/data/v60.0/sobjects/Contact/changes")).await;
        let times: Vec<_> = changes["records"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["Id"].as_str().unwrap().to_owned(),
                    r["LastModifiedDate"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(times[0], (id, T));
        assert_eq!(times[1].0, later);
        assert!(times[1].1 > T);
    }
}
