//! The Salesforce-like API under `/salesforce`: REST API v60.0 Contact
//! sObjects, with upsert by the external id field `Internal_Id__c`, sObject
//! collections of up to 200 (`collections.rs`), and a "changed since" query
//! for pollers (`changes.rs`); with OAuth on, the token endpoint
//! `POST /services/oauth2/token` (`oauth.rs`).
//!
//! Every record carries `LastModifiedDate` (milliseconds since the Unix
//! epoch, a number) and `IsDeleted`. A delete leaves a tombstone, so pollers
//! see it; everything else treats a deleted contact as gone.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, patch, post};
use serde_json::{Map, Value, json};

use super::RateLimit;
use super::gateway::{Api, Provider};
use super::oauth::{self, Refreshed, TokenAnswers};
use super::records::{
    FieldsError, invalid_email, next_record_number, parse_json, scalar_fields, unix_millis,
};
use super::reply::Reply;
use super::request::ApiRequest;
use super::snapshot::RecordSnapshot;
use super::writes::{Origin, Write, WriteCounts};

mod changes;
mod collections;

pub(super) const CONTACT_PATH: &str = "/services/data/v60.0/sobjects/Contact";
const EXTERNAL_ID_FIELD: &str = "Internal_Id__c";
const LAST_NAME: &str = "LastName";
/// The modification time admin edits may set to backdate a change.
pub(super) const LAST_MODIFIED: &str = "LastModifiedDate";

type SalesforceApi = State<Arc<Api<Salesforce>>>;

pub(super) fn routes(api: Arc<Api<Salesforce>>) -> Router {
    Router::new()
        .route("/services/oauth2/token", post(oauth::token::<Salesforce>))
        .route(CONTACT_PATH, post(create))
        // A fixed segment: matched before `{id}`.
        .route(&format!("{CONTACT_PATH}/changes"), get(changes::changes))
        .route(
            &format!("{CONTACT_PATH}/{{id}}"),
            get(read).patch(update).delete(delete),
        )
        .route(
            &format!("{CONTACT_PATH}/{EXTERNAL_ID_FIELD}/{{external_id}}"),
            patch(upsert),
        )
        .route(
            collections::PATH,
            post(collections::create)
                .patch(collections::update)
                .delete(collections::delete),
        )
        .route(
            &format!("{}/Contact/{EXTERNAL_ID_FIELD}", collections::PATH),
            patch(collections::upsert),
        )
        .with_state(api)
}

/// Salesforce's contacts by id, deleted ones included, and the index of the
/// live ones' external ids.
#[derive(Default)]
pub(super) struct Salesforce {
    contacts: HashMap<String, Contact>,
    ids_by_external_id: HashMap<String, String>,
    writes: WriteCounts,
    /// When set, the `LastModifiedDate` of every change not given one: lets
    /// tests make many records share one modification time.
    clock: Option<u64>,
}

/// The external id is set when the record is created (by the create body's
/// `Internal_Id__c` or the upsert path) and never changes: changing it
/// through an update is not modelled.
struct Contact {
    fields: Map<String, Value>,
    external_id: Option<String>,
    /// Milliseconds since the Unix epoch.
    last_modified: u64,
    deleted: bool,
}

impl Contact {
    /// The record as Salesforce returns it.
    fn to_json(&self, id: &str) -> Value {
        let mut body = self.fields.clone();
        body.insert(
            "attributes".into(),
            json!({"type": "Contact", "url": format!("{CONTACT_PATH}/{id}")}),
        );
        body.insert("Id".into(), id.into());
        body.insert(LAST_MODIFIED.into(), self.last_modified.into());
        body.insert("IsDeleted".into(), self.deleted.into());
        if let Some(external_id) = &self.external_id {
            body.insert(EXTERNAL_ID_FIELD.into(), external_id.as_str().into());
        }
        Value::Object(body)
    }

    /// Merges `fields` in; true when a value changed (a field set to null
    /// that was absent is no change).
    fn merge(&mut self, fields: Map<String, Value>) -> bool {
        let changed = fields
            .iter()
            .any(|(name, value)| self.fields.get(name).unwrap_or(&Value::Null) != value);
        self.fields.extend(fields);
        changed
    }
}

impl Provider for Salesforce {
    fn unauthorized() -> Reply {
        errors(
            StatusCode::UNAUTHORIZED,
            "INVALID_SESSION_ID",
            "Session expired or invalid",
            &[],
        )
    }

    fn rate_limited(limit: &RateLimit) -> Reply {
        let message = format!(
            "Rate limit exceeded: {} requests per {:?}",
            limit.requests, limit.per
        );
        errors(
            StatusCode::TOO_MANY_REQUESTS,
            "REQUEST_LIMIT_EXCEEDED",
            &message,
            &[],
        )
    }

    fn records(&self) -> BTreeMap<String, RecordSnapshot> {
        self.contacts
            .iter()
            .filter(|(_, contact)| !contact.deleted)
            .map(|(id, contact)| {
                let record = RecordSnapshot {
                    fields: contact.fields.clone(),
                    external_id: contact.external_id.clone(),
                };
                (id.clone(), record)
            })
            .collect()
    }

    fn write_counts(&self) -> WriteCounts {
        self.writes
    }

    fn clear(&mut self) {
        // The clock is a setting: it stays.
        *self = Salesforce {
            clock: self.clock,
            ..Salesforce::default()
        };
    }
}

/// Salesforce answers a refresh without `expires_in`: its sessions end by
/// the org's policy (the mock still enforces the ttl). Nor does it repeat
/// the refresh token, unless the connected app rotates them.
impl TokenAnswers for Salesforce {
    fn token_issued(refreshed: &Refreshed, host: Option<&str>) -> Reply {
        // Where the client found this API (the mock nests it under `/salesforce`).
        let instance_url = host
            .map(|host| format!("http://{host}/salesforce"))
            .unwrap_or_default();
        let mut body = json!({
            "access_token": refreshed.access_token,
            "instance_url": instance_url,
            "id": "https://login.salesforce.com/id/00D/005",
            "token_type": "Bearer",
            "issued_at": unix_millis().to_string(),
            "signature": "mock",
        });
        if refreshed.rotated {
            body["refresh_token"] = refreshed.refresh_token.clone().into();
        }
        Reply::json(StatusCode::OK, &body)
    }

    fn bad_refresh_token() -> Reply {
        let body =
            json!({"error": "invalid_grant", "error_description": "expired access/refresh token"});
        Reply::json(StatusCode::BAD_REQUEST, &body)
    }
}

impl Salesforce {
    pub(super) fn set_clock(&mut self, clock: Option<u64>) {
        self.clock = clock;
    }

    /// The modification time of a change now: `at` (a backdated admin
    /// edit), else the fixed clock, else the time.
    fn modified_at(&self, at: Option<u64>) -> u64 {
        at.or(self.clock).unwrap_or_else(unix_millis)
    }

    fn live(&mut self, id: &str) -> Option<&mut Contact> {
        self.contacts.get_mut(id).filter(|contact| !contact.deleted)
    }

    fn is_live(&self, id: &str) -> bool {
        self.contacts
            .get(id)
            .is_some_and(|contact| !contact.deleted)
    }

    pub(super) fn create(
        &mut self,
        fields: Map<String, Value>,
        origin: Origin,
        at: Option<u64>,
    ) -> Reply {
        match self.try_create(fields, origin, at) {
            Ok(id) => Reply::json(
                StatusCode::CREATED,
                &json!({"id": id, "success": true, "errors": []}),
            ),
            Err(refusal) => refusal.into(),
        }
    }

    /// Creates a contact; its id. A collection creates each record here.
    fn try_create(
        &mut self,
        fields: Map<String, Value>,
        origin: Origin,
        at: Option<u64>,
    ) -> Result<String, Refusal> {
        self.check_create(&fields, &Pending::default())?;
        let external_id = fields
            .get(EXTERNAL_ID_FIELD)
            .and_then(Value::as_str)
            .map(str::to_owned);
        Ok(self.insert(fields, external_id, origin, at))
    }

    /// Refuses a create as Salesforce does: without `LastName`, or with an
    /// external id another contact (or a pending one) has.
    fn check_create(&self, fields: &Map<String, Value>, pending: &Pending) -> Result<(), Refusal> {
        require_last_name(fields)?;
        let Some(external_id) = fields.get(EXTERNAL_ID_FIELD).and_then(Value::as_str) else {
            return Ok(());
        };
        let owner = match self.ids_by_external_id.get(external_id) {
            Some(owner) => owner.as_str(),
            // A record of the same collection: it has no id yet.
            None if pending.external_ids.contains(external_id) => "<unknown>",
            None => return Ok(()),
        };
        let message = format!(
            "duplicate value found: {EXTERNAL_ID_FIELD} duplicates value on record with id: {owner}"
        );
        Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            "DUPLICATE_VALUE",
            message,
            &[],
        ))
    }

    /// Merges `fields` into the contact. Like Salesforce, every update moves
    /// `LastModifiedDate`, even one that changes nothing (an echo).
    pub(super) fn update(
        &mut self,
        id: &str,
        fields: Map<String, Value>,
        origin: Origin,
        at: Option<u64>,
    ) -> Reply {
        match self.try_update(id, fields, origin, at) {
            Ok(()) => Reply::empty(StatusCode::NO_CONTENT),
            Err(refusal) => refusal.into(),
        }
    }

    fn try_update(
        &mut self,
        id: &str,
        fields: Map<String, Value>,
        origin: Origin,
        at: Option<u64>,
    ) -> Result<(), Refusal> {
        let modified_at = self.modified_at(at);
        let Some(contact) = self.live(id) else {
            return Err(not_found());
        };
        let changed = contact.merge(fields);
        contact.last_modified = modified_at;
        self.writes.count(origin, Write::Update { changed });
        Ok(())
    }

    fn upsert(&mut self, external_id: String, fields: Map<String, Value>) -> Reply {
        match self.try_upsert(external_id, fields) {
            Ok(Upserted { id, created }) => {
                let body = json!({"id": id, "success": true, "errors": [], "created": created});
                let status = if created {
                    StatusCode::CREATED
                } else {
                    StatusCode::OK
                };
                Reply::json(status, &body)
            }
            Err(refusal) => refusal.into(),
        }
    }

    /// Updates the contact with this external id, or creates it (and then
    /// `LastName` is required, as on any create).
    fn try_upsert(
        &mut self,
        external_id: String,
        fields: Map<String, Value>,
    ) -> Result<Upserted, Refusal> {
        let existing = self.ids_by_external_id.get(&external_id).cloned();
        if let Some(id) = existing {
            let modified_at = self.modified_at(None);
            let contact = self
                .contacts
                .get_mut(&id)
                .expect("the external id index names live contacts");
            let changed = contact.merge(fields);
            contact.last_modified = modified_at;
            self.writes.count(Origin::Api, Write::Update { changed });
            return Ok(Upserted { id, created: false });
        }
        self.check_upsert(&external_id, &fields, &Pending::default())?;
        let id = self.insert(fields, Some(external_id), Origin::Api, None);
        Ok(Upserted { id, created: true })
    }

    /// Refuses an upsert that would create a contact without `LastName`.
    fn check_upsert(
        &self,
        external_id: &str,
        fields: &Map<String, Value>,
        pending: &Pending,
    ) -> Result<(), Refusal> {
        let exists = self.ids_by_external_id.contains_key(external_id)
            || pending.external_ids.contains(external_id);
        if exists {
            Ok(())
        } else {
            require_last_name(fields)
        }
    }

    pub(super) fn read(&mut self, id: &str) -> Reply {
        match self.live(id) {
            Some(contact) => Reply::json(StatusCode::OK, &contact.to_json(id)),
            None => not_found().into(),
        }
    }

    /// Leaves a tombstone with the last fields, for pollers.
    pub(super) fn delete(&mut self, id: &str, origin: Origin, at: Option<u64>) -> Reply {
        match self.try_delete(id, origin, at) {
            Ok(()) => Reply::empty(StatusCode::NO_CONTENT),
            Err(refusal) => refusal.into(),
        }
    }

    fn try_delete(&mut self, id: &str, origin: Origin, at: Option<u64>) -> Result<(), Refusal> {
        let modified_at = self.modified_at(at);
        let Some(contact) = self.contacts.get_mut(id).filter(|c| !c.deleted) else {
            return Err(not_found());
        };
        contact.deleted = true;
        contact.last_modified = modified_at;
        if let Some(external_id) = &contact.external_id {
            self.ids_by_external_id.remove(external_id);
        }
        self.writes.count(origin, Write::Delete);
        Ok(())
    }

    fn insert(
        &mut self,
        fields: Map<String, Value>,
        external_id: Option<String>,
        origin: Origin,
        at: Option<u64>,
    ) -> String {
        // Contact ids are 18 characters with the key prefix 003.
        let id = format!("003{:015}", next_record_number() % 10u64.pow(15));
        if let Some(external_id) = &external_id {
            self.ids_by_external_id
                .insert(external_id.clone(), id.clone());
        }
        let contact = Contact {
            fields,
            external_id,
            last_modified: self.modified_at(at),
            deleted: false,
        };
        self.contacts.insert(id.clone(), contact);
        self.writes.count(origin, Write::Create);
        id
    }
}

/// What an upsert did.
struct Upserted {
    id: String,
    created: bool,
}

/// What the records of an all-or-none collection checked so far will have
/// done once applied, for the checks of the next ones: nothing is applied
/// until every record passed. Empty for a single record.
#[derive(Default)]
struct Pending {
    /// External ids that creates and upserts will have taken.
    external_ids: HashSet<String>,
    /// Contacts that deletes will have deleted.
    deleted: HashSet<String>,
}

/// Why Salesforce refused one record: what a single-record call answers (as
/// a list of one error), and the error a collection gives that record.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Refusal {
    status: StatusCode,
    code: &'static str,
    message: String,
    fields: &'static [&'static str],
}

impl Refusal {
    fn new(
        status: StatusCode,
        code: &'static str,
        message: impl Into<String>,
        fields: &'static [&'static str],
    ) -> Refusal {
        Refusal {
            status,
            code,
            message: message.into(),
            fields,
        }
    }
}

impl From<Refusal> for Reply {
    fn from(refusal: Refusal) -> Reply {
        errors(
            refusal.status,
            refusal.code,
            &refusal.message,
            refusal.fields,
        )
    }
}

async fn create(State(api): SalesforceApi, request: ApiRequest) -> Response {
    api.serve_body(request, body_fields, |salesforce, fields| {
        salesforce.create(fields, Origin::Api, None)
    })
    .await
}

async fn update(
    State(api): SalesforceApi,
    Path(id): Path<String>,
    request: ApiRequest,
) -> Response {
    let unmodified_since = request.unmodified_since;
    api.serve_body(request, body_fields, |salesforce, fields| {
        if let Some(since) = unmodified_since
            && salesforce
                .live(&id)
                .is_some_and(|c| c.last_modified > since)
        {
            return precondition_failed();
        }
        salesforce.update(&id, fields, Origin::Api, None)
    })
    .await
}

async fn upsert(
    State(api): SalesforceApi,
    Path(external_id): Path<String>,
    request: ApiRequest,
) -> Response {
    api.serve_body(request, body_fields, |salesforce, fields| {
        salesforce.upsert(external_id, fields)
    })
    .await
}

async fn read(State(api): SalesforceApi, Path(id): Path<String>, request: ApiRequest) -> Response {
    api.serve(request, |salesforce| salesforce.read(&id)).await
}

async fn delete(
    State(api): SalesforceApi,
    Path(id): Path<String>,
    request: ApiRequest,
) -> Response {
    api.serve(request, |salesforce| {
        salesforce.delete(&id, Origin::Api, None)
    })
    .await
}

fn body_fields(body: &[u8]) -> Result<Map<String, Value>, Reply> {
    fields(body).map_err(Reply::from)
}

/// The fields of a create, update or upsert body, or why Salesforce refuses
/// it (a 400). `LastName` may be left out (an update) but not emptied.
pub(super) fn fields(body: &[u8]) -> Result<Map<String, Value>, Refusal> {
    parse_json(body).map_err(unreadable).and_then(record_fields)
}

/// The fields of a body, or of a record of a collection (without its
/// `attributes`).
fn record_fields(record: Value) -> Result<Map<String, Value>, Refusal> {
    let fields = scalar_fields(record).map_err(unreadable)?;
    if let Some(email) = invalid_email(&fields, "Email") {
        let message = format!("Email: invalid email address: {email}");
        return Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            "INVALID_EMAIL_ADDRESS",
            message,
            &["Email"],
        ));
    }
    match fields.get(LAST_NAME) {
        Some(last_name) if is_blank(last_name) => Err(last_name_missing()),
        _ => Ok(fields),
    }
}

fn unreadable(error: FieldsError) -> Refusal {
    let message = match error {
        FieldsError::Unparsable(e) => format!("Cannot deserialize the request body: {e}"),
        FieldsError::NotAnObject => "The request body must be a JSON object".to_owned(),
        FieldsError::Nested(name) => {
            format!("Field {name} must be a string, number, boolean or null")
        }
    };
    Refusal::new(StatusCode::BAD_REQUEST, "JSON_PARSER_ERROR", message, &[])
}

fn require_last_name(fields: &Map<String, Value>) -> Result<(), Refusal> {
    match fields.get(LAST_NAME) {
        Some(last_name) if !is_blank(last_name) => Ok(()),
        _ => Err(last_name_missing()),
    }
}

fn is_blank(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::String(s) => s.trim().is_empty(),
        _ => false,
    }
}

fn last_name_missing() -> Refusal {
    Refusal::new(
        StatusCode::BAD_REQUEST,
        "REQUIRED_FIELD_MISSING",
        "Required fields are missing: [LastName]",
        &[LAST_NAME],
    )
}

/// A conditional update of a contact changed after the given time.
fn precondition_failed() -> Reply {
    errors(
        StatusCode::PRECONDITION_FAILED,
        "PRECONDITION_FAILED",
        "The requested entity has been modified since the time specified in If-Unmodified-Since",
        &[],
    )
}

fn not_found() -> Refusal {
    Refusal::new(
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
        "The requested resource does not exist",
        &[],
    )
}

/// Salesforce's error body: a list of `{message, errorCode, fields}`.
pub(super) fn errors(status: StatusCode, code: &str, message: &str, fields: &[&str]) -> Reply {
    let body = json!([{"message": message, "errorCode": code, "fields": fields}]);
    Reply::json(status, &body)
}

#[cfg(test)]
mod tests {
    use reqwest::{Method, StatusCode};
    use serde_json::{Value, json};

    use super::CONTACT_PATH;
    use crate::MockCrmConfig;
    use crate::test_support::{Harness, send};

    fn upsert_path(external_id: &str) -> String {
        format!("{CONTACT_PATH}/Internal_Id__c/{external_id}")
    }

    async fn create(h: &Harness, fields: Value) -> String {
        let (status, created) = send(h.salesforce(Method::POST, CONTACT_PATH).json(&fields)).await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        assert_eq!(
            (&created["success"], &created["errors"]),
            (&json!(true), &json!([]))
        );
        created["id"].as_str().unwrap().to_owned()
    }

    #[tokio::test]
    async fn contacts_are_created_read_updated_and_deleted() {
        let h = Harness::start(MockCrmConfig::default()).await;
        let id = create(&h, json!({"LastName": "Doe", "Email": "j@doe.io"})).await;
        assert_eq!(id.len(), 18);
        assert!(id.starts_with("003"), "{id}");

        let contact = format!("{CONTACT_PATH}/{id}");
        let update = json!({"FirstName": "Jo"});
        let (status, body) = send(h.salesforce(Method::PATCH, &contact).json(&update)).await;
        assert_eq!((status, body), (StatusCode::NO_CONTENT, Value::Null));

        let (status, read) = send(h.salesforce(Method::GET, &contact)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(read["Id"], id.as_str());
        assert_eq!(read["attributes"]["type"], "Contact");
        assert_eq!(
            (&read["LastName"], &read["FirstName"]),
            (&json!("Doe"), &json!("Jo"))
        );
        let fields = &h.crm.snapshot().salesforce.records[&id].fields;
        assert_eq!(
            json!(fields),
            json!({"LastName": "Doe", "Email": "j@doe.io", "FirstName": "Jo"})
        );

        let (status, _) = send(h.salesforce(Method::DELETE, &contact)).await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        for request in [
            h.salesforce(Method::GET, &contact),
            h.salesforce(Method::PATCH, &contact).json(&update),
            h.salesforce(Method::DELETE, &contact),
        ] {
            let (status, body) = send(request).await;
            assert_eq!(status, StatusCode::NOT_FOUND);
            assert_eq!(body[0]["errorCode"], "NOT_FOUND");
        }
    }

    #[tokio::test]
    async fn creates_need_a_last_name_and_a_valid_email() {
        let h = Harness::start(MockCrmConfig::default()).await;
        let (status, body) = send(
            h.salesforce(Method::POST, CONTACT_PATH)
                .json(&json!({"FirstName": "Jo"})),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(
            body,
            json!([{"message": "Required fields are missing: [LastName]", "errorCode": "REQUIRED_FIELD_MISSING", "fields": ["LastName"]}])
        );

        let bad_email = json!({"LastName": "Doe", "Email": "doe"});
        let (status, body) = send(h.salesforce(Method::POST, CONTACT_PATH).json(&bad_email)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body[0]["errorCode"], "INVALID_EMAIL_ADDRESS");

        for bad in ["[1]", "{", r#"{"LastName": {"x": 1}}"#] {
            let (status, body) = send(h.salesforce(Method::POST, CONTACT_PATH).body(bad)).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
            assert_eq!(body[0]["errorCode"], "JSON_PARSER_ERROR", "{bad}");
        }

        let id = create(&h, json!({"LastName": "Doe"})).await;
        let emptied = json!({"LastName": ""});
        let (status, body) = send(
            h.salesforce(Method::PATCH, &format!("{CONTACT_PATH}/{id}"))
                .json(&emptied),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body[0]["errorCode"], "REQUIRED_FIELD_MISSING");
        assert_eq!(h.crm.snapshot().salesforce.records.len(), 1);
    }

    #[tokio::test]
    async fn upsert_by_external_id_creates_then_updates() {
        let h = Harness::start(MockCrmConfig::default()).await;
        let path = upsert_path("ext-7");
        let (status, created) = send(
            h.salesforce(Method::PATCH, &path)
                .json(&json!({"LastName": "Doe"})),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED);
        assert_eq!(
            (&created["success"], &created["created"]),
            (&json!(true), &json!(true))
        );
        let id = created["id"].as_str().unwrap();

        // An update by external id does not need LastName again.
        let (status, updated) = send(
            h.salesforce(Method::PATCH, &path)
                .json(&json!({"FirstName": "Jo"})),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            updated,
            json!({"id": id, "success": true, "errors": [], "created": false})
        );

        let records = h.crm.snapshot().salesforce.records;
        assert_eq!(records.len(), 1);
        assert_eq!(records[id].external_id.as_deref(), Some("ext-7"));
        assert_eq!(
            json!(records[id].fields),
            json!({"LastName": "Doe", "FirstName": "Jo"})
        );

        let (status, body) = send(
            h.salesforce(Method::PATCH, &upsert_path("ext-8"))
                .json(&json!({"FirstName": "Al"})),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body[0]["errorCode"], "REQUIRED_FIELD_MISSING");
    }

    #[tokio::test]
    async fn a_created_external_id_is_found_by_upsert_and_unique() {
        let h = Harness::start(MockCrmConfig::default()).await;
        let id = create(&h, json!({"LastName": "Doe", "Internal_Id__c": "ext-1"})).await;
        let (status, updated) = send(
            h.salesforce(Method::PATCH, &upsert_path("ext-1"))
                .json(&json!({"Title": "CEO"})),
        )
        .await;
        assert_eq!((status, &updated["id"]), (StatusCode::OK, &json!(id)));

        let duplicate = json!({"LastName": "Roe", "Internal_Id__c": "ext-1"});
        let (status, body) = send(h.salesforce(Method::POST, CONTACT_PATH).json(&duplicate)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body[0]["errorCode"], "DUPLICATE_VALUE");
    }

    #[tokio::test]
    async fn a_conditional_update_of_a_contact_changed_since_is_refused() {
        let h = Harness::start(MockCrmConfig::default()).await;
        let id = create(&h, json!({"LastName": "Doe"})).await;
        let modified = h.crm.snapshot().salesforce.records.len();
        assert_eq!(modified, 1);
        let path = format!("{CONTACT_PATH}/{id}");
        let (_, read) = send(h.salesforce(Method::GET, &path)).await;
        let at = read["LastModifiedDate"].as_u64().unwrap();
        let conditional = |since: String| {
            h.salesforce(Method::PATCH, &path)
                .header("If-Unmodified-Since", since)
                .json(&json!({"FirstName": "Jo"}))
        };
        let (status, body) = send(conditional((at - 1).to_string())).await;
        assert_eq!(status, StatusCode::PRECONDITION_FAILED);
        assert_eq!(body[0]["errorCode"], "PRECONDITION_FAILED");
        let (status, _) = send(conditional(at.to_string())).await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        // An HTTP date reaches to the end of its second.
        let date = |ms: u64| {
            httpdate::fmt_http_date(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
        };
        let (status, _) = send(conditional(date(at - 1000))).await;
        assert_eq!(
            status,
            StatusCode::PRECONDITION_FAILED,
            "modified a second later"
        );
        let (status, _) = send(conditional(date(at + 60_000))).await;
        assert_eq!(status, StatusCode::NO_CONTENT);
    }
}
