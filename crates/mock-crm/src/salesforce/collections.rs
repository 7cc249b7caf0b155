//! sObject collections under `/services/data/v60.0/composite/sobjects`, up
//! to 200 Contact records per request: create (`POST`), update (`PATCH`,
//! each record with its `id`), upsert by `Internal_Id__c` (`PATCH
//! .../Contact/Internal_Id__c`) and delete (`DELETE ?ids=ID,ID`).
//!
//! Each record goes, in order, through the single-record code: the same
//! checks, conflicts and write counts. The answer is 200 with one result per
//! record, in request order: `{"id", "success": true, "errors": []}`, or
//! `{"success": false, "errors": [{"statusCode", "message", "fields"}]}`
//! (and the `id`, for a delete). With `allOrNone`, every record is checked
//! before any is applied, so when one fails none is, and the others answer
//! `ALL_OR_NONE_OPERATION_ROLLED_BACK`. A request that is no collection at
//! all is refused whole (400).

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{StatusCode, Uri};
use axum::response::Response;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{
    EXTERNAL_ID_FIELD, Pending, Refusal, Salesforce, SalesforceApi, errors, not_found,
    record_fields,
};
use crate::batch::{self, Item, ListError, scalar_text};
use crate::faults::{ItemFault, ItemFaults};
use crate::gateway::Api;
use crate::reply::Reply;
use crate::request::ApiRequest;
use crate::writes::Origin;

pub(super) const PATH: &str = "/services/data/v60.0/composite/sobjects";
const MAX_RECORDS: usize = 200;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Create,
    Update,
    Upsert,
}

/// A collection, checked as far as it can be without the contacts (before
/// the lock).
struct Collection {
    records: Vec<Record>,
    all_or_none: bool,
}

struct Record {
    /// The record's JSON text as sent, or a delete's id: what item faults
    /// match.
    text: String,
    /// What a failure names besides its errors: a delete's id.
    failed_id: Option<String>,
    write: Result<RecordWrite, Refusal>,
}

enum RecordWrite {
    Create(Map<String, Value>),
    Update {
        id: String,
        fields: Map<String, Value>,
    },
    Upsert {
        external_id: String,
        fields: Map<String, Value>,
    },
    Delete(String),
}

/// What a record's write did: the contact's id, and for an upsert whether
/// it created the contact.
struct Saved {
    id: String,
    created: Option<bool>,
}

pub(super) async fn create(State(api): SalesforceApi, request: ApiRequest) -> Response {
    serve(api, request, Action::Create).await
}

pub(super) async fn update(State(api): SalesforceApi, request: ApiRequest) -> Response {
    serve(api, request, Action::Update).await
}

pub(super) async fn upsert(State(api): SalesforceApi, request: ApiRequest) -> Response {
    serve(api, request, Action::Upsert).await
}

pub(super) async fn delete(State(api): SalesforceApi, request: ApiRequest) -> Response {
    let collection = deletes(&request.uri);
    apply(api, request, collection).await
}

async fn serve(api: Arc<Api<Salesforce>>, request: ApiRequest, action: Action) -> Response {
    let collection = collection(&request.body, action);
    apply(api, request, collection).await
}

async fn apply(
    api: Arc<Api<Salesforce>>,
    request: ApiRequest,
    collection: Result<Collection, Reply>,
) -> Response {
    api.serve_batch(
        request,
        collection,
        |salesforce, collection, item_faults| salesforce.collection(collection, item_faults),
    )
    .await
}

/// The records of a create, update or upsert body, or the 400 refusing it.
fn collection(body: &[u8], action: Action) -> Result<Collection, Reply> {
    let listed = batch::items(body, "records", MAX_RECORDS).map_err(refuse)?;
    let all_or_none = match listed.others.get("allOrNone") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(all_or_none)) => *all_or_none,
        Some(_) => return Err(malformed("allOrNone must be true or false")),
    };
    let records = listed
        .items
        .into_iter()
        .enumerate()
        .map(|(index, item)| record(index, item, action))
        .collect::<Result<_, _>>()?;
    Ok(Collection {
        records,
        all_or_none,
    })
}

fn record(index: usize, item: Item, action: Action) -> Result<Record, Reply> {
    let mut fields = item.fields;
    let attributes = fields.remove("attributes");
    match attributes.as_ref().and_then(|a| a.get("type")) {
        Some(Value::String(contact)) if contact == "Contact" => {}
        Some(other) => {
            let message = format!("Record {index}: sObject type {other} is not supported");
            return Err(invalid_field(message));
        }
        None => {
            let message =
                format!("Record {index}: no sObject type: each record needs attributes.type");
            return Err(invalid_field(message));
        }
    }
    Ok(Record {
        text: item.text,
        failed_id: None,
        write: write(fields, action),
    })
}

/// What a record asks for, or why Salesforce refuses it (as the single call
/// refuses its body).
fn write(mut fields: Map<String, Value>, action: Action) -> Result<RecordWrite, Refusal> {
    Ok(match action {
        Action::Create => RecordWrite::Create(record_fields(Value::Object(fields))?),
        Action::Update => {
            let id = take_text(&mut fields, &["id", "Id"]).ok_or_else(|| {
                Refusal::new(
                    StatusCode::BAD_REQUEST,
                    "MISSING_ARGUMENT",
                    "Id not specified in an update call",
                    &[],
                )
            })?;
            let fields = record_fields(Value::Object(fields))?;
            RecordWrite::Update { id, fields }
        }
        Action::Upsert => {
            let external_id = take_text(&mut fields, &[EXTERNAL_ID_FIELD]).ok_or_else(|| {
                Refusal::new(
                    StatusCode::BAD_REQUEST,
                    "REQUIRED_FIELD_MISSING",
                    format!("Required fields are missing: [{EXTERNAL_ID_FIELD}]"),
                    &[EXTERNAL_ID_FIELD],
                )
            })?;
            let fields = record_fields(Value::Object(fields))?;
            RecordWrite::Upsert {
                external_id,
                fields,
            }
        }
    })
}

/// Takes the fields `names` out; the first one's value that is non-empty text.
fn take_text(fields: &mut Map<String, Value>, names: &[&str]) -> Option<String> {
    let values: Vec<_> = names
        .iter()
        .filter_map(|name| fields.remove(*name))
        .collect();
    values
        .iter()
        .filter_map(scalar_text)
        .find(|text| !text.is_empty())
}

#[derive(Deserialize)]
struct DeleteQuery {
    #[serde(default)]
    ids: String,
    #[serde(default, rename = "allOrNone")]
    all_or_none: bool,
}

/// The deletes of `?ids=ID,ID&allOrNone=false`, or the 400 refusing them.
fn deletes(uri: &Uri) -> Result<Collection, Reply> {
    let Query(query) = Query::<DeleteQuery>::try_from_uri(uri).map_err(|e| {
        let message = format!("expected ?ids=ID,ID&allOrNone=true|false: {e}");
        errors(StatusCode::BAD_REQUEST, "MALFORMED_QUERY", &message, &[])
    })?;
    let ids: Vec<_> = query
        .ids
        .split(',')
        .map(str::trim)
        .filter(|id| !id.is_empty())
        .collect();
    if ids.is_empty() {
        let message = "ids is required: ?ids=ID,ID";
        return Err(errors(
            StatusCode::BAD_REQUEST,
            "MISSING_ARGUMENT",
            message,
            &["ids"],
        ));
    }
    if ids.len() > MAX_RECORDS {
        return Err(too_many(ids.len()));
    }
    let records = ids
        .into_iter()
        .map(|id| Record {
            text: id.to_owned(),
            failed_id: Some(id.to_owned()),
            write: Ok(RecordWrite::Delete(id.to_owned())),
        })
        .collect();
    Ok(Collection {
        records,
        all_or_none: query.all_or_none,
    })
}

fn refuse(refusal: ListError) -> Reply {
    match refusal {
        ListError::Unparsable(e) => malformed(&format!("Cannot deserialize the request body: {e}")),
        ListError::NoList => {
            malformed("The request body must be a JSON object with a \"records\" array")
        }
        ListError::NotAnObject(index) => malformed(&format!(
            "Record {index} of \"records\" must be a JSON object"
        )),
        ListError::TooMany(count) => too_many(count),
    }
}

fn malformed(message: &str) -> Reply {
    errors(StatusCode::BAD_REQUEST, "JSON_PARSER_ERROR", message, &[])
}

fn invalid_field(message: String) -> Reply {
    errors(StatusCode::BAD_REQUEST, "INVALID_FIELD", &message, &[])
}

fn too_many(count: usize) -> Reply {
    let message = format!(
        "record limit reached. cannot submit more than {MAX_RECORDS} records into this call ({count} were)"
    );
    errors(StatusCode::BAD_REQUEST, "EXCEEDED_ID_LIMIT", &message, &[])
}

impl Salesforce {
    fn collection(&mut self, collection: Collection, faults: &mut ItemFaults<'_>) -> Reply {
        let results = if collection.all_or_none {
            self.all_or_none(collection.records, faults)
        } else {
            collection
                .records
                .into_iter()
                .map(|record| self.each(record, faults))
                .collect()
        };
        Reply::json(StatusCode::OK, &Value::Array(results))
    }

    /// Applies one record of a collection that is not all-or-none.
    fn each(&mut self, record: Record, faults: &mut ItemFaults<'_>) -> Value {
        let outcome = match faults.check(&record.text) {
            Some(fault) => Err(injected(fault)),
            None => record.write.and_then(|write| self.write(write)),
        };
        result(outcome, record.failed_id)
    }

    /// Checks every record, then applies them all, or none if one failed.
    fn all_or_none(&mut self, records: Vec<Record>, faults: &mut ItemFaults<'_>) -> Vec<Value> {
        let mut pending = Pending::default();
        let checks: Vec<_> = records
            .iter()
            .map(|record| match faults.check(&record.text) {
                Some(fault) => Err(injected(fault)),
                None => match &record.write {
                    Ok(write) => self.check(write, &mut pending),
                    Err(refusal) => Err(refusal.clone()),
                },
            })
            .collect();
        if checks.iter().all(Result::is_ok) {
            return records
                .into_iter()
                .map(|record| {
                    let outcome = record.write.and_then(|write| self.write(write));
                    debug_assert!(outcome.is_ok(), "checked records are written");
                    result(outcome, record.failed_id)
                })
                .collect();
        }
        records
            .into_iter()
            .zip(checks)
            .map(|(record, check)| {
                let refusal = check.err().unwrap_or_else(rolled_back);
                result(Err(refusal), record.failed_id)
            })
            .collect()
    }

    /// Whether `write` would succeed after the pending ones, without
    /// applying it; it is then pending too.
    fn check(&self, write: &RecordWrite, pending: &mut Pending) -> Result<(), Refusal> {
        match write {
            RecordWrite::Create(fields) => {
                self.check_create(fields, pending)?;
                if let Some(external_id) = fields.get(EXTERNAL_ID_FIELD).and_then(Value::as_str) {
                    pending.external_ids.insert(external_id.to_owned());
                }
            }
            RecordWrite::Update { id, .. } => {
                if !self.is_live(id) {
                    return Err(not_found().in_collection());
                }
            }
            RecordWrite::Upsert {
                external_id,
                fields,
            } => {
                self.check_upsert(external_id, fields, pending)?;
                pending.external_ids.insert(external_id.clone());
            }
            RecordWrite::Delete(id) => {
                if !self.is_live(id) || pending.deleted.contains(id) {
                    return Err(not_found().in_collection());
                }
                pending.deleted.insert(id.clone());
            }
        }
        Ok(())
    }

    /// Applies one record through the single-record code.
    fn write(&mut self, write: RecordWrite) -> Result<Saved, Refusal> {
        let saved = |id: String| Saved { id, created: None };
        let outcome = match write {
            RecordWrite::Create(fields) => self.try_create(fields, Origin::Api, None).map(saved),
            RecordWrite::Update { id, fields } => self
                .try_update(&id, fields, Origin::Api, None)
                .map(|()| saved(id)),
            RecordWrite::Upsert {
                external_id,
                fields,
            } => self.try_upsert(external_id, fields).map(|upserted| Saved {
                id: upserted.id,
                created: Some(upserted.created),
            }),
            RecordWrite::Delete(id) => self.try_delete(&id, Origin::Api, None).map(|()| saved(id)),
        };
        outcome.map_err(Refusal::in_collection)
    }
}

impl Refusal {
    /// As a collection words it: a contact that is not there (never was,
    /// or was deleted) is `ENTITY_IS_DELETED`.
    fn in_collection(self) -> Refusal {
        if self.status == StatusCode::NOT_FOUND {
            Refusal::new(
                StatusCode::NOT_FOUND,
                "ENTITY_IS_DELETED",
                "entity is deleted",
                &[],
            )
        } else {
            self
        }
    }

    /// The error of a record's result.
    fn item(&self) -> Value {
        json!({"statusCode": self.code, "message": self.message, "fields": self.fields})
    }
}

/// A record's result, in request order.
fn result(outcome: Result<Saved, Refusal>, failed_id: Option<String>) -> Value {
    match outcome {
        Ok(saved) => {
            let mut result = json!({"id": saved.id, "success": true, "errors": []});
            if let Some(created) = saved.created {
                result["created"] = created.into();
            }
            result
        }
        Err(refusal) => {
            let mut result = json!({"success": false, "errors": [refusal.item()]});
            if let Some(id) = failed_id {
                result["id"] = id.into();
            }
            result
        }
    }
}

/// A record that passed, in an all-or-none collection that did not.
fn rolled_back() -> Refusal {
    Refusal::new(
        StatusCode::BAD_REQUEST,
        "ALL_OR_NONE_OPERATION_ROLLED_BACK",
        "Record rolled back because not all records were valid and the request was using AllOrNone header",
        &[],
    )
}

/// An item fault's failure, in the status code Salesforce uses for its
/// HTTP status.
fn injected(fault: ItemFault) -> Refusal {
    let code = match fault.status.as_u16() {
        400 => "INVALID_FIELD",
        404 => "ENTITY_IS_DELETED",
        409 => "DUPLICATE_VALUE",
        429 => "REQUEST_LIMIT_EXCEEDED",
        _ => "UNABLE_TO_LOCK_ROW",
    };
    Refusal::new(fault.status, code, fault.message, &[])
}

#[cfg(test)]
mod tests {
    use reqwest::{Method, StatusCode};
    use serde_json::{Value, json};

    use super::PATH;
    use crate::salesforce::CONTACT_PATH;
    use crate::test_support::{Harness, send};
    use crate::{Fault, MockApi, MockCrmConfig};

    const UPSERT: &str = "/services/data/v60.0/composite/sobjects/Contact/Internal_Id__c";

    /// A Contact record of a collection.
    fn contact(fields: Value) -> Value {
        let mut record = json!({"attributes": {"type": "Contact"}});
        record
            .as_object_mut()
            .unwrap()
            .extend(fields.as_object().unwrap().clone());
        record
    }

    async fn collection(
        h: &Harness,
        method: Method,
        path: &str,
        all_or_none: bool,
        records: Vec<Value>,
    ) -> (StatusCode, Value) {
        let body = json!({"allOrNone": all_or_none, "records": records});
        send(h.salesforce(method, path).json(&body)).await
    }

    async fn delete(h: &Harness, query: &str) -> (StatusCode, Value) {
        send(h.salesforce(Method::DELETE, &format!("{PATH}?{query}"))).await
    }

    async fn create_one(h: &Harness, fields: Value) -> String {
        let (status, body) = send(h.salesforce(Method::POST, CONTACT_PATH).json(&fields)).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["id"].as_str().unwrap().to_owned()
    }

    fn failure(code: &str, message: &str, fields: &[&str]) -> Value {
        json!({"success": false, "errors": [{"statusCode": code, "message": message, "fields": fields}]})
    }

    #[tokio::test]
    async fn a_create_collection_answers_each_record_in_order() {
        let h = Harness::start(MockCrmConfig::default()).await;
        let (_, single) = send(
            h.salesforce(Method::POST, CONTACT_PATH)
                .json(&json!({"LastName": "Doe", "Email": "doe"})),
        )
        .await;
        let records = vec![
            contact(json!({"LastName": "Doe", "Email": "j@doe.io"})),
            contact(json!({"FirstName": "Jo"})),
            contact(json!({"LastName": "Doe", "Email": "doe"})),
            contact(json!({"LastName": "Roe", "Internal_Id__c": "ext-1"})),
            contact(json!({"LastName": "Poe", "Internal_Id__c": "ext-1"})),
        ];
        let (status, results) = collection(&h, Method::POST, PATH, false, records).await;
        assert_eq!(status, StatusCode::OK, "{results}");
        let ids: Vec<_> = [0, 3]
            .map(|i| results[i]["id"].as_str().unwrap().to_owned())
            .into();
        for (i, id) in [0, 3].into_iter().zip(&ids) {
            assert_eq!(results[i], json!({"id": id, "success": true, "errors": []}));
            assert!(id.starts_with("003") && id.len() == 18, "{id}");
        }
        assert_eq!(
            results[1],
            failure(
                "REQUIRED_FIELD_MISSING",
                "Required fields are missing: [LastName]",
                &["LastName"]
            )
        );
        assert_eq!(
            results[2],
            failure(
                "INVALID_EMAIL_ADDRESS",
                single[0]["message"].as_str().unwrap(),
                &["Email"]
            )
        );
        let duplicate = format!(
            "duplicate value found: Internal_Id__c duplicates value on record with id: {}",
            ids[1]
        );
        assert_eq!(results[4], failure("DUPLICATE_VALUE", &duplicate, &[]));

        let snapshot = h.crm.snapshot().salesforce;
        assert_eq!(snapshot.records.len(), 2);
        assert_eq!(
            snapshot.records[&ids[1]].external_id.as_deref(),
            Some("ext-1")
        );
        assert_eq!(
            (snapshot.counters.creates, snapshot.counters.batch_requests),
            (2, 1)
        );
        assert_eq!(snapshot.counters.count("POST", 200), 1);
    }

    #[tokio::test]
    async fn an_update_collection_fails_unknown_and_deleted_ids() {
        let h = Harness::start(MockCrmConfig::default()).await;
        let live = create_one(&h, json!({"LastName": "Doe"})).await;
        let deleted = create_one(&h, json!({"LastName": "Gone"})).await;
        let path = format!("{CONTACT_PATH}/{deleted}");
        assert_eq!(
            send(h.salesforce(Method::DELETE, &path)).await.0,
            StatusCode::NO_CONTENT
        );

        let records = vec![
            contact(json!({"id": live, "Title": "CEO"})),
            contact(json!({"id": "003000000000000404", "Title": "CTO"})),
            contact(json!({"id": deleted, "Title": "CFO"})),
            contact(json!({"Title": "COO"})),
            contact(json!({"id": live, "LastName": ""})),
        ];
        let (status, results) = collection(&h, Method::PATCH, PATH, false, records).await;
        assert_eq!(status, StatusCode::OK, "{results}");
        assert_eq!(
            results[0],
            json!({"id": live, "success": true, "errors": []})
        );
        let gone = failure("ENTITY_IS_DELETED", "entity is deleted", &[]);
        assert_eq!((&results[1], &results[2]), (&gone, &gone));
        assert_eq!(
            results[3],
            failure(
                "MISSING_ARGUMENT",
                "Id not specified in an update call",
                &[]
            )
        );
        assert_eq!(
            results[4]["errors"][0]["statusCode"],
            "REQUIRED_FIELD_MISSING"
        );

        let records = h.crm.snapshot().salesforce.records;
        assert_eq!(
            json!(records[&live].fields),
            json!({"LastName": "Doe", "Title": "CEO"})
        );
    }

    #[tokio::test]
    async fn an_upsert_collection_updates_by_external_id_or_creates() {
        let h = Harness::start(MockCrmConfig::default()).await;
        let existing = create_one(&h, json!({"LastName": "Doe", "Internal_Id__c": "ext-1"})).await;
        let records = vec![
            contact(json!({"Internal_Id__c": "ext-1", "Title": "CEO"})),
            contact(json!({"Internal_Id__c": "ext-2", "LastName": "Roe"})),
            contact(json!({"Internal_Id__c": "ext-3", "FirstName": "No last name"})),
            contact(json!({"LastName": "No external id"})),
            // Created by the second record: an update now.
            contact(json!({"Internal_Id__c": "ext-2", "Title": "CTO"})),
        ];
        let (status, results) = collection(&h, Method::PATCH, UPSERT, false, records).await;
        assert_eq!(status, StatusCode::OK, "{results}");
        assert_eq!(
            results[0],
            json!({"id": existing, "success": true, "errors": [], "created": false})
        );
        let created = results[1]["id"].as_str().unwrap();
        assert_eq!(
            (&results[1]["created"], &results[1]["success"]),
            (&json!(true), &json!(true))
        );
        assert_eq!(
            results[2]["errors"][0]["statusCode"],
            "REQUIRED_FIELD_MISSING"
        );
        assert_eq!(
            results[3],
            failure(
                "REQUIRED_FIELD_MISSING",
                "Required fields are missing: [Internal_Id__c]",
                &["Internal_Id__c"]
            )
        );
        assert_eq!(
            results[4],
            json!({"id": created, "success": true, "errors": [], "created": false})
        );

        let snapshot = h.crm.snapshot().salesforce;
        assert_eq!(snapshot.records.len(), 2);
        assert_eq!(
            snapshot.records[created].external_id.as_deref(),
            Some("ext-2")
        );
        assert_eq!(
            json!(snapshot.records[created].fields),
            json!({"LastName": "Roe", "Title": "CTO"})
        );
        assert_eq!(snapshot.records[&existing].fields["Title"], "CEO");
        assert_eq!(snapshot.counters.creates, 2);
    }

    #[tokio::test]
    async fn a_delete_collection_leaves_tombstones_and_fails_unknown_ids() {
        let h = Harness::start(MockCrmConfig::default()).await;
        let a = create_one(&h, json!({"LastName": "A", "Internal_Id__c": "ext-a"})).await;
        let b = create_one(&h, json!({"LastName": "B"})).await;
        let query = format!("ids={a},003000000000000404,{a},{b}&allOrNone=false");
        let (status, results) = delete(&h, &query).await;
        assert_eq!(status, StatusCode::OK, "{results}");
        let gone = |id: &str| {
            let mut gone = failure("ENTITY_IS_DELETED", "entity is deleted", &[]);
            gone["id"] = id.into();
            gone
        };
        assert_eq!(
            results,
            json!([
                {"id": a, "success": true, "errors": []},
                gone("003000000000000404"),
                gone(&a),
                {"id": b, "success": true, "errors": []},
            ])
        );
        assert!(h.crm.snapshot().salesforce.records.is_empty());
        let (_, changes) =
            send(h.salesforce(Method::GET, &format!("{CONTACT_PATH}/changes"))).await;
        let deleted: Vec<_> = changes["records"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| &r["IsDeleted"])
            .collect();
        assert_eq!(deleted, [&json!(true), &json!(true)]);
        // The external id is free again.
        create_one(&h, json!({"LastName": "A2", "Internal_Id__c": "ext-a"})).await;

        for bad in ["", "allOrNone=false", "ids=,", "ids=a&allOrNone=maybe"] {
            let (status, body) = delete(&h, bad).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
            assert!(body[0]["errorCode"].is_string(), "{bad}");
        }
    }

    #[tokio::test]
    async fn all_or_none_applies_nothing_when_one_record_fails() {
        let h = Harness::start(MockCrmConfig::default()).await;
        let rolled_back = failure(
            "ALL_OR_NONE_OPERATION_ROLLED_BACK",
            "Record rolled back because not all records were valid and the request was using AllOrNone header",
            &[],
        );
        let records = vec![
            contact(json!({"LastName": "Doe", "Internal_Id__c": "ext-1"})),
            contact(json!({"FirstName": "Jo"})),
            contact(json!({"LastName": "Roe"})),
        ];
        let (status, results) = collection(&h, Method::POST, PATH, true, records).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(results[0], rolled_back);
        assert_eq!(
            results[1]["errors"][0]["statusCode"],
            "REQUIRED_FIELD_MISSING"
        );
        assert_eq!(results[2], rolled_back);
        let snapshot = h.crm.snapshot().salesforce;
        assert!(snapshot.records.is_empty());
        assert_eq!(
            (snapshot.counters.creates, snapshot.counters.api_writes),
            (0, 0)
        );

        // Records are checked against the earlier ones of the collection.
        let twice = vec![
            contact(json!({"LastName": "Doe", "Internal_Id__c": "ext-1"})),
            contact(json!({"LastName": "Roe", "Internal_Id__c": "ext-1"})),
        ];
        let (_, results) = collection(&h, Method::POST, PATH, true, twice).await;
        assert_eq!(results[0], rolled_back);
        let duplicate =
            "duplicate value found: Internal_Id__c duplicates value on record with id: <unknown>";
        assert_eq!(results[1], failure("DUPLICATE_VALUE", duplicate, &[]));
        let upserts = vec![
            contact(json!({"Internal_Id__c": "ext-2", "LastName": "Doe"})),
            contact(json!({"Internal_Id__c": "ext-2", "Title": "CEO"})),
        ];
        let (_, results) = collection(&h, Method::PATCH, UPSERT, true, upserts).await;
        assert_eq!(field_of(&results, "created"), [json!(true), json!(false)]);

        let a = h
            .crm
            .snapshot()
            .salesforce
            .records
            .into_keys()
            .next()
            .unwrap();
        let (_, results) = delete(&h, &format!("ids={a},{a}&allOrNone=true")).await;
        let mut rolled_back_a = rolled_back.clone();
        rolled_back_a["id"] = a.clone().into();
        assert_eq!(results[0], rolled_back_a);
        assert_eq!(results[1]["errors"][0]["statusCode"], "ENTITY_IS_DELETED");
        assert_eq!(
            h.crm.snapshot().salesforce.records.len(),
            1,
            "nothing deleted"
        );
        let (_, results) = delete(&h, &format!("ids={a}&allOrNone=true")).await;
        assert_eq!(results[0]["success"], true);
        assert!(h.crm.snapshot().salesforce.records.is_empty());
    }

    fn field_of(results: &Value, name: &str) -> Vec<Value> {
        results
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r[name].clone())
            .collect()
    }

    #[tokio::test]
    async fn a_request_that_is_no_collection_or_over_200_is_refused_whole() {
        let h = Harness::start(MockCrmConfig::default()).await;
        let too_many: Vec<_> = (0..201).map(|i| contact(json!({"LastName": i}))).collect();
        let no_type = json!({"LastName": "Doe"});
        let account = json!({"attributes": {"type": "Account"}, "Name": "ACME"});
        let bodies = [
            (
                json!({ "records": too_many }).to_string(),
                "EXCEEDED_ID_LIMIT",
            ),
            ("{".to_owned(), "JSON_PARSER_ERROR"),
            (
                json!([contact(json!({"LastName": "Doe"}))]).to_string(),
                "JSON_PARSER_ERROR",
            ),
            (json!({"records": [1]}).to_string(), "JSON_PARSER_ERROR"),
            (
                json!({"records": [], "allOrNone": "yes"}).to_string(),
                "JSON_PARSER_ERROR",
            ),
            (json!({"records": [no_type]}).to_string(), "INVALID_FIELD"),
            (json!({"records": [account]}).to_string(), "INVALID_FIELD"),
        ];
        for (bad, code) in bodies {
            let (status, body) = send(h.salesforce(Method::POST, PATH).body(bad.clone())).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
            assert_eq!(body[0]["errorCode"], code, "{bad}");
            assert!(body[0]["message"].is_string(), "{bad}");
        }
        let ids: Vec<_> = (0..201).map(|i| format!("003{i:015}")).collect();
        let (status, body) = delete(&h, &format!("ids={}", ids.join(","))).await;
        assert_eq!(
            (status, &body[0]["errorCode"]),
            (StatusCode::BAD_REQUEST, &json!("EXCEEDED_ID_LIMIT"))
        );
        assert!(h.crm.snapshot().salesforce.records.is_empty());

        let two_hundred: Vec<_> = (0..200).map(|i| contact(json!({"LastName": i}))).collect();
        let (status, _) = collection(&h, Method::POST, PATH, false, two_hundred).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(h.crm.snapshot().salesforce.counters.creates, 200);
    }

    #[tokio::test]
    async fn an_item_fault_fails_its_record_and_all_or_none_rolls_back() {
        let h = Harness::start(MockCrmConfig::default()).await;
        h.crm
            .add_fault(MockApi::Salesforce, Fault::item_contains("Doomed", 503))
            .unwrap();
        let records = || {
            vec![
                contact(json!({"LastName": "Fine"})),
                contact(json!({"LastName": "Doomed"})),
            ]
        };
        let (_, results) = collection(&h, Method::POST, PATH, false, records()).await;
        assert_eq!(results[0]["success"], true);
        assert_eq!(
            results[1],
            failure("UNABLE_TO_LOCK_ROW", "injected item failure", &[])
        );
        let (_, results) = collection(&h, Method::POST, PATH, true, records()).await;
        assert_eq!(
            results[0]["errors"][0]["statusCode"],
            "ALL_OR_NONE_OPERATION_ROLLED_BACK"
        );
        assert_eq!(results[1]["errors"][0]["statusCode"], "UNABLE_TO_LOCK_ROW");
        // Not the single-record endpoint.
        create_one(&h, json!({"LastName": "Doomed"})).await;

        let counters = h.crm.snapshot().salesforce.counters;
        assert_eq!(
            (
                counters.creates,
                counters.scripted_item_failures,
                counters.batch_requests
            ),
            (2, 2, 2)
        );
    }
}
