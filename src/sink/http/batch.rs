//! Batch requests: packing records into one body, and reading each
//! record's outcome out of the answer (provider/batch.rs has the config).
//!
//! A batch is sent like any request ([`ProviderApi::send_batch`]): one
//! rate-limit cell, the provider's retries, breaker and `Retry-After`, one
//! idempotency key for every attempt. A whole-batch failure is every
//! record's; a 2xx answer (207 included) is read record by record.

use bytes::Bytes;
use http::HeaderValue;
use serde_json::Value;

use super::api::{Call, internal};
use super::{ApiError, ApiErrorKind, ApiRequest, ApiResponse, EndpointKind, ProviderApi};
use crate::config::placeholders::Piece;
use crate::provider::{Batch, BatchEndpoint, Ids, ItemValue, encode_segment};
use crate::sink::json;

/// One record's item, as JSON: its mapped body (an object, or nothing for
/// a delete) with the endpoint's item fields and the trace id set.
pub fn item(
    batch: &Batch,
    endpoint: &BatchEndpoint,
    key: &str,
    id: Option<&str>,
    body: Option<&Value>,
    trace: &str,
) -> Vec<u8> {
    let value = |value: &ItemValue| match value {
        ItemValue::Key => Value::String(key.to_string()),
        ItemValue::Id => Value::String(id.unwrap_or_default().to_string()),
        ItemValue::Const(value) => value.clone(),
    };
    let top_level = endpoint.item.iter().all(|(at, _)| at.len() == 1);
    let fields = match body {
        Some(Value::Object(fields)) => Some(fields),
        _ => None,
    };
    if !top_level {
        // A field inside the body's objects: built as a tree.
        let mut item = fields.cloned().unwrap_or_default();
        for (at, v) in &endpoint.item {
            crate::mapping::insert(&mut item, at, value(v));
        }
        if let Some(field) = &batch.trace {
            item.insert(field.clone(), Value::String(trace.to_string()));
        }
        let mut out = Vec::with_capacity(256);
        json::write_value(&mut out, &Value::Object(item));
        return out;
    }
    // Written straight from the body, not cloned into a new object and
    // dropped again: that was a tenth of a batched record's instructions
    // (callgrind, bench `batch`). The fields added win over the body's.
    let added = |name: &str| {
        endpoint.item.iter().any(|(at, _)| at[0] == name) || batch.trace.as_deref() == Some(name)
    };
    let mut out = Vec::with_capacity(256);
    out.push(b'{');
    let name_of = |out: &mut Vec<u8>, name: &str| {
        if out.len() > 1 {
            out.push(b',');
        }
        json::write_str(out, name);
        out.push(b':');
    };
    for (name, v) in fields.into_iter().flatten() {
        if !added(name) {
            name_of(&mut out, name);
            json::write_value(&mut out, v);
        }
    }
    for (at, v) in &endpoint.item {
        name_of(&mut out, &at[0]);
        json::write_value(&mut out, &value(v));
    }
    if let Some(name) = &batch.trace {
        name_of(&mut out, name);
        json::write_str(&mut out, trace);
    }
    out.push(b'}');
    out
}

/// The request body for `items` (each one's JSON); `None` when the records
/// go in the path.
pub fn body(batch: &Batch, endpoint: &BatchEndpoint, items: Vec<Vec<u8>>) -> Option<Bytes> {
    if endpoint.ids_in_path() {
        return None;
    }
    let length = items.iter().map(Vec::len).sum::<usize>() + items.len() + 2;
    let mut array = Vec::with_capacity(length);
    array.push(b'[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            array.push(b',');
        }
        array.extend_from_slice(item);
    }
    array.push(b']');
    if batch.items_at.is_empty() {
        return Some(Bytes::from(array));
    }
    // The body's other fields around the items: written with a marker in
    // the items' place, which is then replaced.
    const MARKER: &str = "\u{0}syncflow-items\u{0}";
    const WRITTEN: &[u8] = b"\"\\u0000syncflow-items\\u0000\"";
    let mut body = batch.fields.clone();
    crate::mapping::insert(&mut body, &batch.items_at, Value::String(MARKER.into()));
    let around = serde_json::to_vec(&Value::Object(body)).expect("JSON");
    let at = around
        .windows(WRITTEN.len())
        .position(|w| w == WRITTEN)
        .expect("the marker is written as it is");
    let mut out = Vec::with_capacity(around.len() + array.len());
    out.extend_from_slice(&around[..at]);
    out.extend_from_slice(&array);
    out.extend_from_slice(&around[at + WRITTEN.len()..]);
    Some(Bytes::from(out))
}

/// The path with `{ids}` filled in: each id percent-encoded, comma-separated.
pub fn path<'a>(endpoint: &BatchEndpoint, ids: impl Iterator<Item = &'a str> + Clone) -> String {
    let mut out = String::new();
    for piece in &endpoint.path {
        match piece {
            Piece::Literal(text) => out.push_str(text),
            Piece::Placeholder(Ids) => {
                for (i, id) in ids.clone().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    encode_segment(&mut out, id);
                }
            }
        }
    }
    out
}

/// What the answer says of one record.
#[derive(Debug, Clone, PartialEq)]
pub enum ItemOutcome {
    /// Done; with the record's id where `response.id_from` finds one.
    Done { id: Option<String> },
    /// The provider refused this record (or said nothing of it): `status` is
    /// what its code stands for (`response.statuses`).
    Failed {
        status: u16,
        message: String,
        /// The failure as the answer tells it, for the dead letter (and a
        /// 409's existing id).
        body: Option<String>,
    },
    /// The answer says nothing of the record (or cannot be read): it may or
    /// may not have been applied, so it is neither retried (a create could
    /// be made twice) nor acked as done: a dead letter, to look at.
    Unanswered { message: String },
}

/// Each record's outcome in a 2xx answer to a batch whose records carried
/// `traces` (in request order).
pub fn outcomes(batch: &Batch, answer: &[u8], traces: &[&str]) -> Vec<ItemOutcome> {
    let said_nothing = || ItemOutcome::Unanswered {
        message: "the provider's answer to the batch says nothing of this record".into(),
    };
    if answer.iter().all(u8::is_ascii_whitespace) {
        // An answer without a body (HubSpot's archive: 204): all done.
        return traces
            .iter()
            .map(|_| ItemOutcome::Done { id: None })
            .collect();
    }
    let Ok(answer) = serde_json::from_slice::<Value>(answer) else {
        let unreadable = ItemOutcome::Unanswered {
            message: "the provider's answer to the batch is not JSON".into(),
        };
        return vec![unreadable; traces.len()];
    };
    let results = list(batch.results.get(&answer).as_deref());
    let mut out = vec![None; traces.len()];
    match &batch.result_trace {
        None => {
            for (slot, result) in out.iter_mut().zip(&results) {
                *slot = Some(read_result(batch, result));
            }
        }
        Some(trace_at) => {
            let index = |trace: &str| traces.iter().position(|t| *t == trace);
            for result in &results {
                for trace in named(trace_at, result) {
                    if let Some(i) = index(&trace) {
                        out[i] = Some(read_result(batch, result));
                    }
                }
            }
            let errors = batch
                .errors
                .as_ref()
                .map(|at| list(at.get(&answer).as_deref()));
            let error_trace = batch.error_trace.as_ref();
            for error in errors.iter().flatten() {
                for trace in error_trace.map(|at| named(at, error)).unwrap_or_default() {
                    if let Some(i) = index(&trace) {
                        out[i] = Some(failure(batch, error));
                    }
                }
            }
        }
    }
    out.into_iter()
        .map(|o| o.unwrap_or_else(said_nothing))
        .collect()
}

/// A result: done, unless `response.success` says otherwise.
fn read_result(batch: &Batch, result: &Value) -> ItemOutcome {
    let succeeded = match &batch.success {
        None => true,
        Some(at) => at.get(result).is_some_and(|v| *v == Value::Bool(true)),
    };
    if !succeeded {
        return failure(batch, result);
    }
    let id = batch.id_from.as_ref().and_then(|at| {
        let id = match at.get(result).as_deref() {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => return None,
        };
        super::valid_id(&id).then_some(id)
    });
    ItemOutcome::Done { id }
}

fn failure(batch: &Batch, failure: &Value) -> ItemOutcome {
    let text = |at: &Option<crate::mapping::JsonPath>| {
        at.as_ref().and_then(|at| match at.get(failure).as_deref() {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Null) | None => None,
            Some(other) => Some(other.to_string()),
        })
    };
    let code = text(&batch.error_code);
    let status = batch.status_of(code.as_deref());
    let message = match (code, text(&batch.error_message)) {
        (Some(code), Some(message)) => format!("{code}: {message}"),
        (Some(text), None) | (None, Some(text)) => text,
        (None, None) => "the provider refused this record of the batch".into(),
    };
    let mut body = failure.to_string();
    truncate(&mut body, super::BODY_LIMIT);
    ItemOutcome::Failed {
        status,
        message,
        body: Some(body),
    }
}

/// The trace ids a result or failure names: a string, or an array of them.
fn named(at: &crate::mapping::JsonPath, value: &Value) -> Vec<String> {
    match at.get(value).as_deref() {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(names)) => names
            .iter()
            .filter_map(|n| n.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    }
}

fn list(found: Option<&Value>) -> Vec<Value> {
    match found {
        Some(Value::Array(items)) => items.clone(),
        _ => Vec::new(),
    }
}

fn truncate(text: &mut String, limit: usize) {
    if text.len() > limit {
        let mut end = limit;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
}

/// The idempotency key of a batch: the same for every attempt of the same
/// records (FNV-1a over their trace ids), so the provider can replay it.
pub fn idempotency_key(traces: &[&str]) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for trace in traces {
        for b in trace.bytes().chain([0]) {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("batch:{}:{hash:016x}", traces.len())
}

/// One batch request, as the batcher made it.
pub struct BatchRequest<'a> {
    /// The provider object and what the records are (for logs and metrics).
    pub object: &'a str,
    pub kind: EndpointKind,
    /// Whose limit the request takes its cell from.
    pub account: Option<&'a str>,
    pub endpoint: &'a BatchEndpoint,
    /// The rendered path and the body (none when the ids are in the path).
    pub path: &'a str,
    pub body: Option<Bytes>,
    pub idempotency_key: &'a str,
}

impl ProviderApi {
    /// Sends one batch, retrying the whole batch as the provider's policy
    /// allows.
    pub async fn send_batch(&self, batch: BatchRequest<'_>) -> Result<ApiResponse, ApiError> {
        let BatchRequest {
            object,
            kind,
            account,
            endpoint,
            path,
            body,
            idempotency_key,
        } = batch;
        let req = ApiRequest {
            object,
            endpoint: kind,
            key: "",
            account,
            id: None,
            body: None,
            idempotency_key,
            unmodified_since: None,
        };
        let what = || format!("{} batch {} {object}", self.provider().name, kind.as_str());
        let target = self
            .target(path)
            .map_err(|e| internal(format!("{}: {e}", what())))?;
        let idempotency_key = HeaderValue::from_str(idempotency_key)
            .map_err(|_| internal(format!("{}: invalid idempotency key", what())))?;
        let call = Call {
            req,
            endpoint: &endpoint.request,
            target,
            idempotency_key,
            body,
        };
        self.run(call).await.map_err(|e| match e.kind {
            // A 404 to a whole batch is a wrong path, not "the record is gone".
            ApiErrorKind::NotFound => ApiError {
                kind: ApiErrorKind::Rejected,
                ..e
            },
            _ => e,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::path::Path;

    use serde_json::json;

    use super::*;

    /// The batch of `provider`'s contact in examples/batch.
    fn batch(provider: &str) -> Batch {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/batch");
        let config = crate::compile::compile_dir(&dir, &HashMap::new(), false).unwrap();
        let object = &config.providers[provider].objects["contact"];
        object.batch.clone().unwrap()
    }

    fn parse(body: Option<Bytes>) -> Value {
        serde_json::from_slice(&body.unwrap()).unwrap()
    }

    fn value(item: &[u8]) -> Value {
        serde_json::from_slice(item).unwrap()
    }

    #[test]
    fn hubspot_inputs_carry_the_id_and_trace_and_results_match_by_trace() {
        let b = batch("hubspot");
        let update = b.update.as_ref().unwrap();
        let record = json!({"properties": {"email": "a@b.c"}});
        let items = vec![
            item(&b, update, "k1", Some("101"), Some(&record), "t1"),
            item(&b, update, "k2", Some("102"), Some(&record), "t2"),
            item(&b, update, "k3", Some("103"), Some(&record), "t3"),
        ];
        assert_eq!(
            value(&items[0]),
            json!({"id": "101", "properties": {"email": "a@b.c"}, "objectWriteTraceId": "t1"})
        );
        let values: Vec<Value> = items.iter().map(|i| value(i)).collect();
        assert_eq!(
            parse(body(&b, update, items.clone()))["inputs"],
            Value::Array(values)
        );
        assert_eq!(
            path(update, ["101"].into_iter()),
            "/crm/v3/objects/contacts/batch/update"
        );
        // Out of order, one failure listed apart, one record not mentioned.
        let answer = json!({
            "status": "COMPLETE",
            "results": [{"id": "102", "objectWriteTraceId": "t2"}],
            "numErrors": 1,
            "errors": [{"status": "error", "category": "OBJECT_NOT_FOUND", "message": "Object not found", "context": {"objectWriteTraceId": ["t1"]}}],
        });
        let got = outcomes(&b, answer.to_string().as_bytes(), &["t1", "t2", "t3"]);
        let ItemOutcome::Failed {
            status,
            message,
            body,
        } = &got[0]
        else {
            panic!("{got:?}");
        };
        assert_eq!(
            (*status, message.as_str()),
            (404, "OBJECT_NOT_FOUND: Object not found")
        );
        assert!(body.as_deref().unwrap().contains("\"t1\""));
        assert_eq!(
            got[1],
            ItemOutcome::Done {
                id: Some("102".into())
            }
        );
        assert!(
            matches!(got[2], ItemOutcome::Unanswered { .. }),
            "{:?}",
            got[2]
        );
    }

    #[test]
    fn an_items_own_fields_win_over_the_bodys_once() {
        let b = batch("hubspot");
        let update = b.update.as_ref().unwrap();
        let record = json!({"id": "stale", "objectWriteTraceId": "old", "properties": {"n": 1}});
        let written = item(&b, update, "k1", Some("101"), Some(&record), "t1");
        let text = String::from_utf8(written.clone()).unwrap();
        assert_eq!(text.matches("\"id\"").count(), 1, "{text}");
        assert_eq!(text.matches("objectWriteTraceId").count(), 1, "{text}");
        assert_eq!(
            value(&written),
            json!({"id": "101", "objectWriteTraceId": "t1", "properties": {"n": 1}})
        );
        // A delete's item has no body: only its own fields.
        assert_eq!(
            value(&item(&b, update, "k1", Some("7"), None, "t2")),
            json!({"id": "7", "objectWriteTraceId": "t2"})
        );
    }

    #[test]
    fn an_answer_without_a_body_is_every_record_done() {
        let b = batch("hubspot");
        assert_eq!(
            outcomes(&b, b"", &["t1", "t2"]),
            vec![ItemOutcome::Done { id: None }; 2]
        );
        assert!(matches!(
            outcomes(&b, b"<html>", &["t1"])[0],
            ItemOutcome::Unanswered { .. }
        ));
    }

    #[test]
    fn salesforce_records_are_typed_and_results_match_by_position() {
        let b = batch("salesforce");
        let upsert = b.upsert.as_ref().unwrap();
        let record = json!({"LastName": "Hopper"});
        let one = item(&b, upsert, "k/1", None, Some(&record), "t1");
        let one = value(&one);
        assert_eq!(
            one,
            json!({"attributes": {"type": "Contact"}, "Internal_Id__c": "k/1", "LastName": "Hopper"})
        );
        let sent = parse(body(&b, upsert, vec![serde_json::to_vec(&one).unwrap()]));
        assert_eq!(sent, json!({"allOrNone": false, "records": [one]}));
        let answer = json!([
            {"id": "003A", "success": true, "errors": []},
            {"success": false, "errors": [{"statusCode": "DUPLICATE_VALUE", "message": "duplicate value found", "fields": []}]},
            {"success": false, "errors": [{"statusCode": "REQUIRED_FIELD_MISSING", "message": "Required fields are missing: [LastName]", "fields": ["LastName"]}]},
        ]);
        let got = outcomes(&b, answer.to_string().as_bytes(), &["a", "b", "c", "d"]);
        assert_eq!(
            got[0],
            ItemOutcome::Done {
                id: Some("003A".into())
            }
        );
        assert!(matches!(got[1], ItemOutcome::Failed { status: 409, .. }));
        // Not listed in `statuses`: a rejection.
        assert!(matches!(got[2], ItemOutcome::Failed { status: 400, .. }));
        assert!(matches!(got[3], ItemOutcome::Unanswered { .. }));
    }

    #[test]
    fn salesforce_deletes_put_the_ids_in_the_query() {
        let b = batch("salesforce");
        let delete = b.delete.as_ref().unwrap();
        assert!(delete.ids_in_path() && delete.needs_id());
        assert_eq!(body(&b, delete, vec![b"{}".to_vec()]), None);
        assert_eq!(
            path(delete, ["003A", "003 B"].into_iter()),
            "/services/data/v60.0/composite/sobjects?ids=003A,003%20B&allOrNone=false"
        );
    }

    #[test]
    fn a_batch_key_is_the_same_for_the_same_records_only() {
        assert_eq!(idempotency_key(&["a", "b"]), idempotency_key(&["a", "b"]));
        assert_ne!(idempotency_key(&["a", "b"]), idempotency_key(&["b", "a"]));
        assert_ne!(idempotency_key(&["ab"]), idempotency_key(&["a", "b"]));
    }
}
