//! CRM v3 batch endpoints: `POST /crm/v3/objects/contacts/batch/{create,
//! update,upsert,archive}` with `{"inputs": [...]}`, at most 100 inputs.
//!
//! Each input goes, in order, through the single-record code: the same
//! checks, conflicts (also with an earlier input of the batch), webhooks and
//! write counts. One that fails is listed in `errors` (with its
//! `objectWriteTraceId`, so the client can tell which) and does not stop the
//! others. The answer is `{"status": "COMPLETE", "results", "startedAt",
//! "completedAt"}`: 201 (create) or 200, or 207 Multi-Status with
//! `numErrors` and `errors` when some input failed. An archive answers 204
//! and ignores unknown ids, as HubSpot's does (207 only for item faults).
//! A body that is no batch at all is refused whole (400).

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Map, Value, json};

use super::{HubSpot, HubSpotApi, Refusal, check_email, error, properties_of};
use crate::batch::{self, Item, ListError, scalar_text};
use crate::faults::{ItemFault, ItemFaults};
use crate::gateway::Api;
use crate::records::now_rfc3339;
use crate::reply::Reply;
use crate::request::ApiRequest;
use crate::writes::Origin;

const MAX_INPUTS: usize = 100;
const TRACE_ID: &str = "objectWriteTraceId";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Create,
    Update,
    Upsert,
    Archive,
}

/// One input, checked as far as it can be without the contacts (before the
/// lock).
struct Input {
    /// As sent: what item faults match.
    text: String,
    trace_id: Option<String>,
    write: Result<ContactWrite, Refusal>,
}

enum ContactWrite {
    Create(Map<String, Value>),
    Update {
        id: String,
        properties: Map<String, Value>,
    },
    /// Updates the contact whose `id_property` is `value`, or creates one
    /// with it.
    Upsert {
        id_property: String,
        value: String,
        properties: Map<String, Value>,
    },
    Archive(String),
}

pub(super) async fn create(State(api): HubSpotApi, request: ApiRequest) -> Response {
    serve(api, request, Action::Create).await
}

pub(super) async fn update(State(api): HubSpotApi, request: ApiRequest) -> Response {
    serve(api, request, Action::Update).await
}

pub(super) async fn upsert(State(api): HubSpotApi, request: ApiRequest) -> Response {
    serve(api, request, Action::Upsert).await
}

pub(super) async fn archive(State(api): HubSpotApi, request: ApiRequest) -> Response {
    serve(api, request, Action::Archive).await
}

async fn serve(api: Arc<Api<HubSpot>>, request: ApiRequest, action: Action) -> Response {
    let inputs = inputs(&request.body, action);
    api.serve_batch(request, inputs, |hubspot, inputs, item_faults| {
        hubspot.batch(action, inputs, item_faults)
    })
    .await
}

/// The inputs of a batch body, or the 400 refusing it whole.
fn inputs(body: &[u8], action: Action) -> Result<Vec<Input>, Reply> {
    let listed = batch::items(body, "inputs", MAX_INPUTS).map_err(refuse)?;
    listed
        .items
        .into_iter()
        .enumerate()
        .map(|(index, item)| input(index, item, action))
        .collect()
}

fn input(index: usize, item: Item, action: Action) -> Result<Input, Reply> {
    let trace_id = match item.fields.get(TRACE_ID) {
        None | Some(Value::Null) => None,
        Some(value) => Some(scalar_text(value).ok_or_else(|| {
            let message = format!("Invalid input JSON: input {index}: {TRACE_ID} must be a string");
            error(StatusCode::BAD_REQUEST, "VALIDATION_ERROR", &message)
        })?),
    };
    Ok(Input {
        text: item.text,
        trace_id,
        write: write(item.fields, action),
    })
}

/// What an input asks for, or why HubSpot refuses it (as the single call
/// refuses its body).
fn write(input: Map<String, Value>, action: Action) -> Result<ContactWrite, Refusal> {
    if action == Action::Archive {
        return input_id(&input).map(ContactWrite::Archive);
    }
    let id = match action {
        Action::Create => None,
        _ => Some(input_id(&input)?),
    };
    let id_property = match action {
        Action::Upsert => Some(id_property(&input)?),
        _ => None,
    };
    let properties = properties_of(Value::Object(input))?;
    Ok(match (id, id_property) {
        (None, _) => ContactWrite::Create(properties),
        (Some(id), None) => ContactWrite::Update { id, properties },
        (Some(value), Some(id_property)) => {
            // The contact it may create has the property: checked as set.
            let mut created = properties.clone();
            created.insert(id_property.clone(), Value::String(value.clone()));
            check_email(&created)?;
            ContactWrite::Upsert {
                id_property,
                value,
                properties,
            }
        }
    })
}

fn input_id(input: &Map<String, Value>) -> Result<String, Refusal> {
    input.get("id").and_then(scalar_text).ok_or_else(|| {
        Refusal::new(
            StatusCode::BAD_REQUEST,
            "VALIDATION_ERROR",
            "The input must have an \"id\"",
        )
    })
}

fn id_property(input: &Map<String, Value>) -> Result<String, Refusal> {
    let id_property = input.get("idProperty").and_then(Value::as_str);
    id_property.map(str::to_owned).ok_or_else(|| {
        Refusal::new(
            StatusCode::BAD_REQUEST,
            "VALIDATION_ERROR",
            "An upsert input must have an \"idProperty\", such as \"email\"",
        )
    })
}

fn refuse(refusal: ListError) -> Reply {
    let message = match refusal {
        ListError::Unparsable(e) => format!("Invalid input JSON: {e}"),
        ListError::NoList => "The body must be an object with an \"inputs\" array".to_owned(),
        ListError::NotAnObject(index) => format!("Input {index} of \"inputs\" must be an object"),
        ListError::TooMany(count) => {
            format!("Too many inputs: {count}, at most {MAX_INPUTS} per batch")
        }
    };
    error(StatusCode::BAD_REQUEST, "VALIDATION_ERROR", &message)
}

impl HubSpot {
    /// Handles the inputs in order; a failed one is listed and skipped.
    fn batch(&mut self, action: Action, inputs: Vec<Input>, faults: &mut ItemFaults<'_>) -> Reply {
        let started_at = now_rfc3339();
        let mut results = Vec::new();
        let mut errors = Vec::new();
        for input in inputs {
            let outcome = match faults.check(&input.text) {
                Some(fault) => Err(injected(fault)),
                None => input.write.and_then(|write| self.write(write)),
            };
            match outcome {
                Ok(Some(mut result)) => {
                    if let Some(trace_id) = input.trace_id {
                        result[TRACE_ID] = Value::String(trace_id);
                    }
                    results.push(result);
                }
                Ok(None) => {}
                Err(refusal) => errors.push(refusal.item(input.trace_id)),
            }
        }
        batch_answer(action, started_at, results, errors)
    }

    /// Applies one input: the contact as the batch lists it (none for an
    /// archive).
    fn write(&mut self, write: ContactWrite) -> Result<Option<Value>, Refusal> {
        match write {
            ContactWrite::Create(properties) => self.try_create(properties, Origin::Api).map(Some),
            ContactWrite::Update { id, properties } => {
                self.try_update(&id, properties, Origin::Api).map(Some)
            }
            ContactWrite::Upsert {
                id_property,
                value,
                properties,
            } => self.upsert(id_property, value, properties).map(Some),
            ContactWrite::Archive(id) => {
                // Unknown ids are ignored, as HubSpot does.
                if self.contacts.contains_key(&id) {
                    self.try_archive(&id, Origin::Api)?;
                }
                Ok(None)
            }
        }
    }

    /// The id of the contact whose `property` is `value` (the lowest id if
    /// several are): by the email index for `email`, else by a scan.
    fn find_by(&self, property: &str, value: &str) -> Option<String> {
        if property == "email" {
            return self.ids_by_email.get(value).cloned();
        }
        self.contacts
            .iter()
            .filter(|(_, contact)| {
                contact
                    .properties
                    .get(property)
                    .and_then(scalar_text)
                    .is_some_and(|text| text == value)
            })
            .map(|(id, _)| id)
            .min_by_key(|id| (id.len(), id.as_str()))
            .cloned()
    }

    fn upsert(
        &mut self,
        id_property: String,
        value: String,
        mut properties: Map<String, Value>,
    ) -> Result<Value, Refusal> {
        if let Some(id) = self.find_by(&id_property, &value) {
            let mut updated = self.try_update(&id, properties, Origin::Api)?;
            updated["new"] = false.into();
            return Ok(updated);
        }
        properties.insert(id_property, Value::String(value));
        let mut created = self.try_create(properties, Origin::Api)?;
        created["new"] = true.into();
        Ok(created)
    }
}

/// The refusal of an input as the batch lists it in `errors`.
impl Refusal {
    fn item(self, trace_id: Option<String>) -> Value {
        let mut item = json!({
            "status": "error",
            "category": self.category,
            "message": self.message,
        });
        if let Some(trace_id) = trace_id {
            item["context"] = json!({"objectWriteTraceId": [trace_id]});
        }
        item
    }
}

/// An item fault's failure, in the category HubSpot uses for its status.
fn injected(fault: ItemFault) -> Refusal {
    let category = match fault.status.as_u16() {
        400 => "VALIDATION_ERROR",
        404 => "OBJECT_NOT_FOUND",
        409 => "CONFLICT",
        429 => "RATE_LIMITS",
        _ => "INTERNAL_ERROR",
    };
    Refusal::new(fault.status, category, fault.message)
}

fn batch_answer(
    action: Action,
    started_at: String,
    results: Vec<Value>,
    errors: Vec<Value>,
) -> Reply {
    if action == Action::Archive && errors.is_empty() {
        return Reply::empty(StatusCode::NO_CONTENT);
    }
    let mut body = json!({
        "status": "COMPLETE",
        "results": results,
        "startedAt": started_at,
        "completedAt": now_rfc3339(),
    });
    let status = if !errors.is_empty() {
        body["numErrors"] = errors.len().into();
        body["errors"] = errors.into();
        StatusCode::MULTI_STATUS
    } else if action == Action::Create {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Reply::json(status, &body)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use reqwest::{Method, StatusCode};
    use serde_json::{Value, json};

    use crate::test_support::{Harness, send};
    use crate::{Fault, MockApi, MockCrmConfig, RateLimit, WebhookConfig};

    const CONTACTS: &str = "/crm/v3/objects/contacts";
    const CREATE: &str = "/crm/v3/objects/contacts/batch/create";
    const UPDATE: &str = "/crm/v3/objects/contacts/batch/update";
    const UPSERT: &str = "/crm/v3/objects/contacts/batch/upsert";
    const ARCHIVE: &str = "/crm/v3/objects/contacts/batch/archive";

    async fn post(h: &Harness, path: &str, inputs: Value) -> (StatusCode, Value) {
        send(
            h.hubspot(Method::POST, path)
                .json(&json!({ "inputs": inputs })),
        )
        .await
    }

    fn created(email: &str, trace_id: &str) -> Value {
        json!({"properties": {"email": email}, "objectWriteTraceId": trace_id})
    }

    fn field<'a>(items: &'a Value, name: &str) -> Vec<&'a Value> {
        items.as_array().unwrap().iter().map(|i| &i[name]).collect()
    }

    #[tokio::test]
    async fn a_batch_create_creates_every_input_and_echoes_its_trace_id() {
        let h = Harness::start(MockCrmConfig::default()).await;
        let inputs = json!([
            {"properties": {"email": "a@x.io", "firstname": "A"}, "objectWriteTraceId": "t1"},
            created("b@x.io", "t2"),
            {"properties": {"firstname": "C"}},
        ]);
        let (status, body) = post(&h, CREATE, inputs.clone()).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        assert_eq!(body["status"], "COMPLETE");
        assert!(body.get("errors").is_none() && body.get("numErrors").is_none());
        assert!(body["startedAt"].as_str().unwrap() <= body["completedAt"].as_str().unwrap());
        let results = &body["results"];
        assert_eq!(
            field(results, "objectWriteTraceId"),
            [&json!("t1"), &json!("t2"), &Value::Null]
        );
        let snapshot = h.crm.snapshot().hubspot;
        for (result, input) in results
            .as_array()
            .unwrap()
            .iter()
            .zip(inputs.as_array().unwrap())
        {
            assert_eq!(result["properties"], input["properties"]);
            assert_eq!(result["archived"], false);
            let id = result["id"].as_str().unwrap();
            assert!(id.bytes().all(|b| b.is_ascii_digit()), "{id}");
            assert_eq!(json!(snapshot.records[id].fields), input["properties"]);
        }
        let counters = snapshot.counters;
        assert_eq!(
            (
                counters.creates,
                counters.api_writes,
                counters.batch_requests
            ),
            (3, 3, 1)
        );
        assert_eq!(counters.count("POST", 201), 1, "one request");
    }

    #[tokio::test]
    async fn a_mixed_batch_is_207_with_each_failure_as_the_single_call_words_it() {
        let h = Harness::start(MockCrmConfig::default()).await;
        let existing = h.create_hubspot_contact(json!({"email": "old@x.io"})).await;
        let single = |properties: Value| {
            let request = h.hubspot(Method::POST, CONTACTS);
            send(request.json(&json!({ "properties": properties })))
        };
        let (_, invalid_email) = single(json!({"email": "nope"})).await;
        let (_, nested) = single(json!({"tags": ["a"]})).await;

        let inputs = json!([
            created("new@x.io", "t1"),
            created("nope", "t2"),
            created("old@x.io", "t3"),
            created("new@x.io", "t4"),
            {"properties": {"tags": ["a"]}},
            {"properties": {"firstname": "Last"}, "objectWriteTraceId": "t6"},
        ]);
        let (status, body) = post(&h, CREATE, inputs).await;
        assert_eq!(status, StatusCode::MULTI_STATUS, "{body}");
        assert_eq!(body["status"], "COMPLETE");
        let results = &body["results"];
        assert_eq!(
            field(results, "objectWriteTraceId"),
            [&json!("t1"), &json!("t6")]
        );
        let first = results[0]["id"].as_str().unwrap();
        assert_eq!(body["numErrors"], 4);
        let errors = &body["errors"];
        let context = |trace_id: &str| json!({"objectWriteTraceId": [trace_id]});
        assert_eq!(
            errors[0],
            json!({"status": "error", "category": "VALIDATION_ERROR",
                "message": invalid_email["message"], "context": context("t2")})
        );
        assert_eq!(
            errors[1],
            json!({"status": "error", "category": "CONFLICT",
                "message": format!("Contact already exists. Existing ID: {existing}"),
                "context": context("t3")})
        );
        assert_eq!(
            errors[2]["message"],
            format!("Contact already exists. Existing ID: {first}"),
            "a duplicate of an earlier input conflicts with it"
        );
        assert_eq!(errors[2]["context"], context("t4"));
        assert_eq!(
            errors[3],
            json!({"status": "error", "category": "VALIDATION_ERROR", "message": nested["message"]})
        );

        let snapshot = h.crm.snapshot().hubspot;
        assert_eq!(snapshot.records.len(), 3);
        assert_eq!(
            snapshot.counters.creates, 3,
            "the existing one and two of the batch"
        );
    }

    #[tokio::test]
    async fn a_batch_update_fails_only_the_unknown_id() {
        let h = Harness::start(MockCrmConfig::default()).await;
        let id = h
            .create_hubspot_contact(json!({"email": "a@x.io", "firstname": "A"}))
            .await;
        let inputs = json!([
            {"id": id, "properties": {"firstname": "B"}, "objectWriteTraceId": "t1"},
            {"id": "404404", "properties": {"firstname": "C"}, "objectWriteTraceId": "t2"},
            {"properties": {"firstname": "D"}},
        ]);
        let (status, body) = post(&h, UPDATE, inputs).await;
        assert_eq!(status, StatusCode::MULTI_STATUS, "{body}");
        assert_eq!(body["results"].as_array().unwrap().len(), 1);
        let updated = &body["results"][0];
        assert_eq!(
            (&updated["id"], &updated["objectWriteTraceId"]),
            (&json!(id), &json!("t1"))
        );
        assert_eq!(
            updated["properties"],
            json!({"email": "a@x.io", "firstname": "B"})
        );
        let errors = &body["errors"];
        assert_eq!(
            field(errors, "category"),
            [&json!("OBJECT_NOT_FOUND"), &json!("VALIDATION_ERROR")]
        );
        assert_eq!(
            errors[0]["message"],
            "Object not found. objectId 404404 does not exist"
        );
        assert_eq!(errors[0]["context"], json!({"objectWriteTraceId": ["t2"]}));
        assert_eq!(
            h.crm.snapshot().hubspot.records[&id].fields["firstname"],
            "B"
        );

        let (status, body) = post(&h, UPDATE, json!([{"id": id, "properties": {}}])).await;
        assert_eq!((status, &body["numErrors"]), (StatusCode::OK, &Value::Null));
    }

    #[tokio::test]
    async fn an_upsert_updates_the_contact_it_finds_and_creates_the_others() {
        let h = Harness::start(MockCrmConfig::default()).await;
        let old = h
            .create_hubspot_contact(json!({"email": "old@x.io", "ref": "r1"}))
            .await;
        let upsert = |id: &str, property: &str, properties: Value| json!({"id": id, "idProperty": property, "properties": properties});
        let inputs = json!([
            upsert("old@x.io", "email", json!({"firstname": "Old"})),
            upsert("new@x.io", "email", json!({"firstname": "New"})),
            upsert("r1", "ref", json!({"lastname": "Ref"})),
            upsert("r2", "ref", json!({"lastname": "Two"})),
            upsert("not-an-email", "email", json!({})),
        ]);
        let (status, body) = post(&h, UPSERT, inputs).await;
        assert_eq!(status, StatusCode::MULTI_STATUS, "{body}");
        let results = &body["results"];
        assert_eq!(
            field(results, "new"),
            [&json!(false), &json!(true), &json!(false), &json!(true)]
        );
        assert_eq!(
            (&results[0]["id"], &results[2]["id"]),
            (&json!(old), &json!(old))
        );
        assert_eq!(
            results[0]["properties"],
            json!({"email": "old@x.io", "ref": "r1", "firstname": "Old"})
        );
        assert_eq!(
            results[1]["properties"],
            json!({"firstname": "New", "email": "new@x.io"})
        );
        assert_eq!(
            results[3]["properties"],
            json!({"lastname": "Two", "ref": "r2"})
        );
        assert_eq!(body["errors"][0]["category"], "VALIDATION_ERROR");

        let snapshot = h.crm.snapshot().hubspot;
        assert_eq!(snapshot.records.len(), 3);
        assert_eq!(snapshot.records[&old].fields["lastname"], "Ref");
        assert_eq!(snapshot.counters.creates, 3);
        let (status, _) = post(&h, UPSERT, json!([upsert("new@x.io", "email", json!({}))])).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(h.crm.snapshot().hubspot.records.len(), 3);
    }

    #[tokio::test]
    async fn a_batch_archive_answers_204_and_ignores_unknown_ids() {
        let h = Harness::start(MockCrmConfig::default()).await;
        let a = h.create_hubspot_contact(json!({"email": "a@x.io"})).await;
        let b = h.create_hubspot_contact(json!({"email": "b@x.io"})).await;
        let (status, body) =
            post(&h, ARCHIVE, json!([{"id": a}, {"id": "404404"}, {"id": a}])).await;
        assert_eq!((status, body), (StatusCode::NO_CONTENT, Value::Null));
        let snapshot = h.crm.snapshot().hubspot;
        assert_eq!(snapshot.records.keys().collect::<Vec<_>>(), [&b]);
        assert_eq!(
            snapshot.counters.api_writes, 3,
            "two creates and one archive"
        );
        // The email is free again.
        h.create_hubspot_contact(json!({"email": "a@x.io"})).await;
    }

    #[tokio::test]
    async fn a_body_that_is_no_batch_or_over_100_inputs_is_refused_whole() {
        let h = Harness::start(MockCrmConfig::default()).await;
        let too_many: Vec<_> = (0..101)
            .map(|i| created(&format!("{i}@x.io"), "t"))
            .collect();
        let bodies = [
            json!({ "inputs": too_many }).to_string(),
            "not json".to_owned(),
            json!({"records": []}).to_string(),
            json!({"inputs": {}}).to_string(),
            json!({"inputs": [created("a@x.io", "t1"), "b@x.io"]}).to_string(),
        ];
        for bad in bodies {
            let (status, body) = send(h.hubspot(Method::POST, CREATE).body(bad.clone())).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
            assert_eq!(body["status"], "error", "{bad}");
            assert_eq!(body["category"], "VALIDATION_ERROR", "{bad}");
            assert!(body["message"].is_string(), "{bad}");
        }
        let (_, body) = post(&h, CREATE, json!(too_many)).await;
        assert!(body["message"].as_str().unwrap().contains("101"), "{body}");
        assert!(h.crm.snapshot().hubspot.records.is_empty());

        let hundred: Vec<_> = (0..100)
            .map(|i| created(&format!("{i}@x.io"), "t"))
            .collect();
        assert_eq!(
            post(&h, CREATE, json!(hundred)).await.0,
            StatusCode::CREATED
        );
    }

    #[tokio::test]
    async fn a_batch_is_one_request_for_the_rate_limit() {
        let h = Harness::start(MockCrmConfig {
            hubspot_limit: Some(RateLimit::gcra(1, Duration::from_secs(10), 1)),
            ..MockCrmConfig::default()
        })
        .await;
        let batch = |from: usize| -> Value {
            (from..from + 50)
                .map(|i| created(&format!("{i}@x.io"), &i.to_string()))
                .collect()
        };
        let (status, body) = post(&h, CREATE, batch(0)).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let (status, body) = post(&h, CREATE, batch(50)).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(body["errorType"], "RATE_LIMIT");
        let counters = h.crm.snapshot().hubspot.counters;
        assert_eq!(
            (
                counters.creates,
                counters.rate_limited,
                counters.batch_requests
            ),
            (50, 1, 1)
        );
    }

    #[tokio::test]
    async fn an_idempotent_replay_of_a_batch_creates_nothing_again() {
        let h = Harness::start(MockCrmConfig::default()).await;
        let keyed = || {
            let inputs = json!([created("a@x.io", "t1"), created("b@x.io", "t2")]);
            h.hubspot(Method::POST, CREATE)
                .header("Idempotency-Key", "k1")
                .json(&json!({ "inputs": inputs }))
        };
        let first = keyed().send().await.unwrap();
        assert_eq!(first.status(), StatusCode::CREATED);
        let first = first.text().await.unwrap();
        let again = keyed().send().await.unwrap();
        assert_eq!(again.status(), StatusCode::CREATED);
        assert_eq!(again.headers()["idempotent-replayed"], "true");
        assert_eq!(again.text().await.unwrap(), first);

        let snapshot = h.crm.snapshot().hubspot;
        assert_eq!(snapshot.records.len(), 2);
        let counters = snapshot.counters;
        assert_eq!(
            (
                counters.creates,
                counters.idempotent_replays,
                counters.batch_requests
            ),
            (2, 1, 1)
        );
    }

    #[tokio::test]
    async fn an_item_fault_fails_only_the_inputs_it_matches() {
        let h = Harness::start(MockCrmConfig::default()).await;
        let fault = Fault {
            body: json!({"message": "try this one later"}),
            ..Fault::item_contains("doomed@x.io", 503)
        };
        h.crm.add_fault(MockApi::Hubspot, fault).unwrap();
        let inputs = json!([
            created("a@x.io", "t1"),
            created("doomed@x.io", "t2"),
            created("b@x.io", "t3"),
        ]);
        let (status, body) = post(&h, CREATE, inputs).await;
        assert_eq!(status, StatusCode::MULTI_STATUS, "{body}");
        assert_eq!(
            field(&body["results"], "objectWriteTraceId"),
            [&json!("t1"), &json!("t3")]
        );
        assert_eq!(
            body["errors"],
            json!([{"status": "error", "category": "INTERNAL_ERROR",
                "message": "try this one later", "context": {"objectWriteTraceId": ["t2"]}}])
        );
        // Single-record requests are never failed by an item fault.
        h.create_hubspot_contact(json!({"email": "doomed@x.io"}))
            .await;

        let counters = h.crm.snapshot().hubspot.counters;
        assert_eq!(
            (
                counters.scripted_item_failures,
                counters.scripted_failures,
                counters.creates
            ),
            (1, 0, 3)
        );
    }

    #[tokio::test]
    async fn a_request_fault_answers_the_whole_batch() {
        let h = Harness::start(MockCrmConfig::default()).await;
        let fault = Fault {
            path_contains: Some("batch/create".into()),
            body_contains: None,
            times: Some(1),
            ..Fault::body_contains("", 503)
        };
        h.crm.add_fault(MockApi::Hubspot, fault).unwrap();
        let inputs = json!([created("a@x.io", "t1")]);
        assert_eq!(
            post(&h, CREATE, inputs.clone()).await,
            (StatusCode::SERVICE_UNAVAILABLE, Value::Null)
        );
        assert_eq!(post(&h, CREATE, inputs).await.0, StatusCode::CREATED);
        let counters = h.crm.snapshot().hubspot.counters;
        assert_eq!(
            (
                counters.scripted_failures,
                counters.batch_requests,
                counters.creates
            ),
            (1, 1, 1)
        );
    }

    #[tokio::test]
    async fn batches_publish_the_webhooks_single_calls_do() {
        let h = Harness::start(MockCrmConfig::default()).await;
        let nowhere = WebhookConfig {
            // Nothing is sent while the test runs: events are only queued.
            max_wait: Duration::from_secs(600),
            max_batch: 1000,
            ..WebhookConfig::new("http://127.0.0.1:9/webhooks", "s")
        };
        h.crm.set_webhook(Some(nowhere)).unwrap();
        let (status, body) = post(
            &h,
            CREATE,
            json!([
                {"properties": {"email": "a@x.io", "firstname": "A"}},
                created("a@x.io", "duplicate"),
            ]),
        )
        .await;
        assert_eq!(status, StatusCode::MULTI_STATUS);
        let id = body["results"][0]["id"].as_str().unwrap();
        // The creation and its two properties; nothing for the conflict.
        assert_eq!(h.crm.webhook_stats().events_enqueued, 3);
        post(
            &h,
            UPDATE,
            json!([{"id": id, "properties": {"firstname": "B"}}]),
        )
        .await;
        post(&h, ARCHIVE, json!([{"id": id}])).await;
        assert_eq!(h.crm.webhook_stats().events_enqueued, 5);
    }
}
