//! The HubSpot-like API under `/hubspot`: CRM v3 contacts, one at a time
//! and in batches of up to 100 (`batch.rs`), and, with OAuth on, the token
//! endpoint `POST /oauth/v1/token` (`oauth.rs`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use serde_json::{Map, Value, json};

use super::RateLimit;
use super::gateway::{Api, Provider};
use super::oauth::{self, Refreshed, TokenAnswers};
use super::records::{
    FieldsError, invalid_email, next_record_number, now_rfc3339, parse_json, scalar_fields,
};
use super::reply::Reply;
use super::request::ApiRequest;
use super::snapshot::RecordSnapshot;
use super::webhook::{Change, Webhooks, property_changes};
use super::writes::{Origin, Write, WriteCounts};

mod batch;

type HubSpotApi = State<Arc<Api<HubSpot>>>;

pub(super) fn routes(api: Arc<Api<HubSpot>>) -> Router {
    Router::new()
        .route("/oauth/v1/token", post(oauth::token::<HubSpot>))
        .route("/crm/v3/objects/contacts", post(create))
        // Two segments: never taken for an `{id}`.
        .route("/crm/v3/objects/contacts/batch/create", post(batch::create))
        .route("/crm/v3/objects/contacts/batch/update", post(batch::update))
        .route("/crm/v3/objects/contacts/batch/upsert", post(batch::upsert))
        .route(
            "/crm/v3/objects/contacts/batch/archive",
            post(batch::archive),
        )
        .route(
            "/crm/v3/objects/contacts/{id}",
            get(read).patch(update).delete(archive),
        )
        .with_state(api)
}

/// HubSpot's contacts, by id. Every change is published as webhook events.
pub(super) struct HubSpot {
    contacts: HashMap<String, Contact>,
    /// Contact id by email: the one-contact-per-email check, without a scan
    /// of every contact per create (quadratic in long runs).
    ids_by_email: HashMap<String, String>,
    writes: WriteCounts,
    webhooks: Arc<Webhooks>,
}

struct Contact {
    properties: Map<String, Value>,
    created_at: String,
    updated_at: String,
}

impl Contact {
    fn to_json(&self, id: &str) -> Value {
        json!({
            "id": id,
            "properties": self.properties,
            "createdAt": self.created_at,
            "updatedAt": self.updated_at,
            "archived": false,
        })
    }
}

impl Provider for HubSpot {
    const TELLS_WINDOW: bool = true;

    fn unauthorized() -> Reply {
        error(
            StatusCode::UNAUTHORIZED,
            "INVALID_AUTHENTICATION",
            "Authentication credentials not found.",
        )
    }

    fn expired() -> Reply {
        error(
            StatusCode::UNAUTHORIZED,
            "EXPIRED_AUTHENTICATION",
            "The OAuth token used to make this call expired.",
        )
    }

    fn rate_limited(limit: &RateLimit) -> Reply {
        let body = json!({
            "status": "error",
            "message": "You have reached your ten_secondly_rolling limit.",
            "errorType": "RATE_LIMIT",
            "policyName": "TEN_SECONDLY_ROLLING",
        });
        Reply::json(StatusCode::TOO_MANY_REQUESTS, &body)
            .with_header("x-hubspot-ratelimit-max", limit.requests)
            .with_header("x-hubspot-ratelimit-remaining", 0)
            .with_header(
                "x-hubspot-ratelimit-interval-milliseconds",
                limit.per.as_millis(),
            )
    }

    fn records(&self) -> BTreeMap<String, RecordSnapshot> {
        self.contacts
            .iter()
            .map(|(id, contact)| {
                let record = RecordSnapshot {
                    fields: contact.properties.clone(),
                    external_id: None,
                };
                (id.clone(), record)
            })
            .collect()
    }

    fn write_counts(&self) -> WriteCounts {
        self.writes
    }

    fn clear(&mut self) {
        self.contacts.clear();
        self.ids_by_email.clear();
        self.writes = WriteCounts::default();
    }
}

impl TokenAnswers for HubSpot {
    fn token_issued(refreshed: &Refreshed, _host: Option<&str>) -> Reply {
        let body = json!({
            "token_type": "bearer",
            "refresh_token": refreshed.refresh_token,
            "access_token": refreshed.access_token,
            "expires_in": refreshed.expires_in.as_secs(),
        });
        Reply::json(StatusCode::OK, &body)
    }

    fn bad_refresh_token() -> Reply {
        let body =
            json!({"status": "BAD_REFRESH_TOKEN", "message": "missing or unknown refresh token"});
        Reply::json(StatusCode::BAD_REQUEST, &body)
    }
}

impl HubSpot {
    pub(super) fn new(webhooks: Arc<Webhooks>) -> HubSpot {
        HubSpot {
            contacts: HashMap::new(),
            ids_by_email: HashMap::new(),
            writes: WriteCounts::default(),
            webhooks,
        }
    }

    /// Counts a successful write and publishes its events.
    fn changed(&mut self, origin: Origin, id: &str, changes: Vec<Change>, write: Write) {
        self.writes.count(origin, write);
        if !changes.is_empty() {
            self.webhooks.publish(origin, id, changes);
        }
    }

    pub(super) fn create(&mut self, properties: Map<String, Value>, origin: Origin) -> Reply {
        answer(StatusCode::CREATED, self.try_create(properties, origin))
    }

    /// Creates a contact; it as the API returns it. A batch creates each of
    /// its contacts here.
    fn try_create(
        &mut self,
        properties: Map<String, Value>,
        origin: Origin,
    ) -> Result<Value, Refusal> {
        // Like HubSpot, one contact per email: a second is a conflict that
        // names the first.
        if let Some(email) = email_of(&properties)
            && let Some(id) = self.ids_by_email.get(email)
        {
            let message = format!("Contact already exists. Existing ID: {id}");
            return Err(Refusal::new(StatusCode::CONFLICT, "CONFLICT", message));
        }
        let id = next_record_number().to_string();
        let now = now_rfc3339();
        // Like HubSpot: the creation, then the properties it set.
        let mut changes = vec![Change::Created];
        changes.extend(property_changes(&Map::new(), &properties));
        let contact = Contact {
            properties,
            created_at: now.clone(),
            updated_at: now,
        };
        let created = contact.to_json(&id);
        if let Some(email) = email_of(&contact.properties) {
            self.ids_by_email.insert(email.to_string(), id.clone());
        }
        self.contacts.insert(id.clone(), contact);
        self.changed(origin, &id, changes, Write::Create);
        Ok(created)
    }

    pub(super) fn update(
        &mut self,
        id: &str,
        properties: Map<String, Value>,
        origin: Origin,
    ) -> Reply {
        answer(StatusCode::OK, self.try_update(id, properties, origin))
    }

    /// Merges `properties` into the contact; it as the API returns it.
    fn try_update(
        &mut self,
        id: &str,
        properties: Map<String, Value>,
        origin: Origin,
    ) -> Result<Value, Refusal> {
        let Some(contact) = self.contacts.get_mut(id) else {
            return Err(not_found(id));
        };
        let changes = property_changes(&contact.properties, &properties);
        if let Some(old) = email_of(&contact.properties) {
            self.ids_by_email.remove(old);
        }
        contact.properties.extend(properties);
        if let Some(email) = email_of(&contact.properties) {
            self.ids_by_email.insert(email.to_string(), id.to_string());
        }
        contact.updated_at = now_rfc3339();
        let updated = contact.to_json(id);
        let changed = !changes.is_empty();
        self.changed(origin, id, changes, Write::Update { changed });
        Ok(updated)
    }

    fn read(&self, id: &str) -> Reply {
        match self.contacts.get(id) {
            Some(contact) => Reply::json(StatusCode::OK, &contact.to_json(id)),
            None => not_found(id).into(),
        }
    }

    pub(super) fn archive(&mut self, id: &str, origin: Origin) -> Reply {
        match self.try_archive(id, origin) {
            Ok(()) => Reply::empty(StatusCode::NO_CONTENT),
            Err(refusal) => refusal.into(),
        }
    }

    fn try_archive(&mut self, id: &str, origin: Origin) -> Result<(), Refusal> {
        let Some(contact) = self.contacts.remove(id) else {
            return Err(not_found(id));
        };
        if let Some(email) = email_of(&contact.properties) {
            self.ids_by_email.remove(email);
        }
        self.changed(origin, id, vec![Change::Deleted], Write::Delete);
        Ok(())
    }
}

/// The single-record answer: `status` with the contact, or the refusal.
fn answer(status: StatusCode, outcome: Result<Value, Refusal>) -> Reply {
    match outcome {
        Ok(contact) => Reply::json(status, &contact),
        Err(refusal) => refusal.into(),
    }
}

/// Why HubSpot refused one record: what a single-record call answers, and
/// what a batch lists in its `errors` for that input.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Refusal {
    status: StatusCode,
    category: &'static str,
    message: String,
    /// The `errors` of a validation error's answer: details per property.
    details: Option<Value>,
}

impl Refusal {
    fn new(status: StatusCode, category: &'static str, message: impl Into<String>) -> Refusal {
        Refusal {
            status,
            category,
            message: message.into(),
            details: None,
        }
    }
}

impl From<Refusal> for Reply {
    fn from(refusal: Refusal) -> Reply {
        let mut body = json!({
            "status": "error",
            "message": refusal.message,
            "category": refusal.category,
        });
        if let Some(details) = refusal.details {
            body["errors"] = details;
        }
        Reply::json(refusal.status, &body)
    }
}

fn email_of(properties: &Map<String, Value>) -> Option<&str> {
    properties.get("email").and_then(Value::as_str)
}

async fn create(State(api): HubSpotApi, request: ApiRequest) -> Response {
    api.serve_body(request, body_properties, |hubspot, properties| {
        hubspot.create(properties, Origin::Api)
    })
    .await
}

async fn update(State(api): HubSpotApi, Path(id): Path<String>, request: ApiRequest) -> Response {
    api.serve_body(request, body_properties, |hubspot, properties| {
        hubspot.update(&id, properties, Origin::Api)
    })
    .await
}

async fn read(State(api): HubSpotApi, Path(id): Path<String>, request: ApiRequest) -> Response {
    api.serve(request, |hubspot| hubspot.read(&id)).await
}

async fn archive(State(api): HubSpotApi, Path(id): Path<String>, request: ApiRequest) -> Response {
    api.serve(request, |hubspot| hubspot.archive(&id, Origin::Api))
        .await
}

fn body_properties(body: &[u8]) -> Result<Map<String, Value>, Reply> {
    properties(body).map_err(Reply::from)
}

/// The `properties` of a create or update body, or why HubSpot refuses it
/// (a 400).
pub(super) fn properties(body: &[u8]) -> Result<Map<String, Value>, Refusal> {
    properties_of(parse_json(body).map_err(validation_error)?)
}

/// The `properties` of a body or of a batch input (an object with them).
fn properties_of(mut body: Value) -> Result<Map<String, Value>, Refusal> {
    let properties = body
        .get_mut("properties")
        .map(Value::take)
        .ok_or_else(|| validation_error(FieldsError::NotAnObject))?;
    let properties = scalar_fields(properties).map_err(validation_error)?;
    check_email(&properties)?;
    Ok(properties)
}

/// HubSpot refuses an `email` that is not an email address.
fn check_email(properties: &Map<String, Value>) -> Result<(), Refusal> {
    if let Some(email) = invalid_email(properties, "email") {
        let message = format!("Email address {email} is invalid");
        return Err(Refusal {
            details: Some(json!([{
                "code": "INVALID_EMAIL",
                "message": message,
                "context": {"propertyName": ["email"]},
            }])),
            ..Refusal::new(
                StatusCode::BAD_REQUEST,
                "VALIDATION_ERROR",
                format!("Property values were not valid: {message}"),
            )
        });
    }
    Ok(())
}

fn validation_error(refusal: FieldsError) -> Refusal {
    let message = match refusal {
        FieldsError::Unparsable(e) => format!("Invalid input JSON: {e}"),
        FieldsError::NotAnObject => {
            "The body must be an object with a \"properties\" object".to_owned()
        }
        FieldsError::Nested(name) => {
            format!("Property \"{name}\" must be a string, number, boolean or null")
        }
    };
    Refusal::new(StatusCode::BAD_REQUEST, "VALIDATION_ERROR", message)
}

fn not_found(id: &str) -> Refusal {
    Refusal::new(
        StatusCode::NOT_FOUND,
        "OBJECT_NOT_FOUND",
        format!("Object not found. objectId {id} does not exist"),
    )
}

fn error(status: StatusCode, category: &'static str, message: &str) -> Reply {
    Refusal::new(status, category, message).into()
}

#[cfg(test)]
mod tests {
    use reqwest::{Method, StatusCode};
    use serde_json::json;

    use crate::test_support::{Harness, send};
    use crate::{MockCrmConfig, RateLimit};

    const CONTACTS: &str = "/crm/v3/objects/contacts";

    #[tokio::test]
    async fn contacts_are_created_read_merged_and_archived() {
        let h = Harness::start(MockCrmConfig::default()).await;
        let create = json!({"properties": {"email": "a@b.c", "firstname": "A"}});
        let (status, created) = send(h.hubspot(Method::POST, CONTACTS).json(&create)).await;
        assert_eq!(status, StatusCode::CREATED);
        let id = created["id"].as_str().unwrap();
        assert!(id.bytes().all(|b| b.is_ascii_digit()), "{id}");
        assert_eq!(created["properties"], create["properties"]);
        assert_eq!(created["archived"], false);
        assert!(created["createdAt"].as_str().unwrap().ends_with('Z'));

        let contact = format!("{CONTACTS}/{id}");
        let update = json!({"properties": {"firstname": "B", "company": "ACME"}});
        let (status, updated) = send(h.hubspot(Method::PATCH, &contact).json(&update)).await;
        assert_eq!(status, StatusCode::OK);
        let merged = json!({"email": "a@b.c", "firstname": "B", "company": "ACME"});
        assert_eq!(updated["properties"], merged);

        let (status, read) = send(h.hubspot(Method::GET, &contact)).await;
        assert_eq!((status, &read["properties"]), (StatusCode::OK, &merged));
        let snapshot = h.crm.snapshot().hubspot;
        assert_eq!(json!(snapshot.records[id].fields), merged);
        assert_eq!(snapshot.counters.creates, 1);

        let (status, body) = send(h.hubspot(Method::DELETE, &contact)).await;
        assert_eq!((status, body), (StatusCode::NO_CONTENT, json!(null)));
        let (status, body) = send(h.hubspot(Method::GET, &contact)).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body["category"], "OBJECT_NOT_FOUND");
        assert!(h.crm.snapshot().hubspot.records.is_empty());
    }

    #[tokio::test]
    async fn unknown_ids_are_not_found() {
        let h = Harness::start(MockCrmConfig::default()).await;
        let path = format!("{CONTACTS}/404404");
        let update = json!({"properties": {"firstname": "B"}});
        for request in [
            h.hubspot(Method::GET, &path),
            h.hubspot(Method::PATCH, &path).json(&update),
            h.hubspot(Method::DELETE, &path),
        ] {
            let (status, body) = send(request).await;
            assert_eq!(status, StatusCode::NOT_FOUND);
            assert_eq!(body["status"], "error");
            assert_eq!(body["category"], "OBJECT_NOT_FOUND");
        }
    }

    #[tokio::test]
    async fn bad_bodies_are_validation_errors() {
        let h = Harness::start(MockCrmConfig::default()).await;
        let bad_bodies = [
            "not json".to_owned(),
            json!({"email": "a@b.c"}).to_string(),
            json!({"properties": "a@b.c"}).to_string(),
            json!({"properties": {"address": {"city": "Paris"}}}).to_string(),
            json!({"properties": {"tags": ["a"]}}).to_string(),
            json!({"properties": {"email": "not-an-email"}}).to_string(),
        ];
        for bad in bad_bodies {
            let (status, body) = send(h.hubspot(Method::POST, CONTACTS).body(bad.clone())).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
            assert_eq!(body["category"], "VALIDATION_ERROR", "{bad}");
        }
        assert!(h.crm.snapshot().hubspot.records.is_empty());

        let id = h.create_hubspot_contact(json!({"email": "a@b.c"})).await;
        let bad_email = json!({"properties": {"email": "a@b"}});
        let patch = h.hubspot(Method::PATCH, &format!("{CONTACTS}/{id}"));
        let (status, body) = send(patch.json(&bad_email)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["errors"][0]["code"], "INVALID_EMAIL");
        let fields = &h.crm.snapshot().hubspot.records[&id].fields;
        assert_eq!(fields["email"], "a@b.c");
    }

    #[tokio::test]
    async fn a_second_contact_with_the_same_email_is_a_conflict_naming_the_first() {
        let h = Harness::start(MockCrmConfig::default()).await;
        let body = json!({"properties": {"email": "a@b.c"}});
        let first = send(
            h.hubspot(Method::POST, "/crm/v3/objects/contacts")
                .json(&body),
        )
        .await;
        assert_eq!(first.0, StatusCode::CREATED);
        let id = first.1["id"].as_str().unwrap().to_string();
        let again = send(
            h.hubspot(Method::POST, "/crm/v3/objects/contacts")
                .json(&body),
        )
        .await;
        assert_eq!(again.0, StatusCode::CONFLICT);
        assert_eq!(
            again.1["message"],
            format!("Contact already exists. Existing ID: {id}")
        );
    }

    #[tokio::test]
    async fn over_the_limit_is_429_with_hubspot_headers_and_policy() {
        let limit = RateLimit::gcra(2, std::time::Duration::from_secs(10), 2);
        let h = Harness::start(MockCrmConfig {
            hubspot_limit: Some(limit),
            ..MockCrmConfig::default()
        })
        .await;
        h.create_hubspot_contact(json!({"firstname": "A"})).await;
        h.create_hubspot_contact(json!({"firstname": "B"})).await;

        let create = json!({"properties": {"firstname": "C"}});
        let response = h
            .hubspot(Method::POST, CONTACTS)
            .json(&create)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        let header = |name: &str| response.headers()[name].to_str().unwrap().to_owned();
        let retry_after: u64 = header("retry-after").parse().unwrap();
        assert!((1..=5).contains(&retry_after), "{retry_after}");
        assert_eq!(header("x-hubspot-ratelimit-max"), "2");
        assert_eq!(header("x-hubspot-ratelimit-remaining"), "0");
        assert_eq!(header("x-hubspot-ratelimit-interval-milliseconds"), "10000");
        let body = crate::test_support::body(response).await;
        assert_eq!(body["policyName"], "TEN_SECONDLY_ROLLING");

        let counters = h.crm.snapshot().hubspot.counters;
        assert_eq!((counters.rate_limited, counters.creates), (1, 2));
        assert_eq!(counters.count("POST", 429), 1);
    }
}
