//! An object's batch endpoints (`objects.<name>.batch` in a provider file),
//! compiled: how records are packed into one request and how the answer
//! tells each record's outcome. The shapes of HubSpot's batch API and
//! Salesforce's sObject collections are both expressible (README,
//! "Batch endpoints"); the packing and reading are in sink/http/batch.rs.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Map, Value};

use super::{EndpointKind, METHODS};
use crate::config::diagnostics::Diagnostics;
use crate::config::load::Sourced;
use crate::config::model::{BatchConfig, BatchEndpointConfig, ProviderConfig};
use crate::config::placeholders::{Piece, split};
use crate::config::yaml::Seg;
use crate::mapping::JsonPath;
use crate::path;

/// Compiled `batch:`.
#[derive(Debug, Clone)]
pub struct Batch {
    pub max_records: usize,
    pub max_wait: Duration,
    /// Where the records go in the body; empty: the body is their array.
    pub items_at: Vec<String>,
    /// The body's other fields.
    pub fields: Map<String, Value>,
    /// Each record's trace id field, repeated by the answer.
    pub trace: Option<String>,
    pub results: JsonPath,
    pub result_trace: Option<JsonPath>,
    pub id_from: Option<JsonPath>,
    pub success: Option<JsonPath>,
    pub errors: Option<JsonPath>,
    pub error_trace: Option<JsonPath>,
    pub error_code: Option<JsonPath>,
    pub error_message: Option<JsonPath>,
    pub statuses: BTreeMap<String, u16>,
    pub create: Option<BatchEndpoint>,
    pub update: Option<BatchEndpoint>,
    pub upsert: Option<BatchEndpoint>,
    pub delete: Option<BatchEndpoint>,
}

#[derive(Debug, Clone)]
pub struct BatchEndpoint {
    /// The request as the HTTP sink sends it (method; the path is rendered
    /// per batch from `path`).
    pub request: super::Endpoint,
    pub path: Vec<Piece<Ids>>,
    /// Fields each item carries besides the record's body.
    pub item: Vec<(Vec<String>, ItemValue)>,
}

/// `{ids}` in a batch path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ids;

/// A field of an item: the record's key or provider id, or a constant.
#[derive(Debug, Clone, PartialEq)]
pub enum ItemValue {
    Key,
    Id,
    Const(Value),
}

impl Batch {
    pub fn endpoint(&self, kind: EndpointKind) -> Option<&BatchEndpoint> {
        match kind {
            EndpointKind::Create => self.create.as_ref(),
            EndpointKind::Update => self.update.as_ref(),
            EndpointKind::Upsert => self.upsert.as_ref(),
            EndpointKind::Delete => self.delete.as_ref(),
            EndpointKind::Read => None,
        }
    }

    /// The HTTP status a failure code stands for (400 when not listed).
    pub fn status_of(&self, code: Option<&str>) -> u16 {
        code.and_then(|c| self.statuses.get(c))
            .copied()
            .unwrap_or(400)
    }
}

impl BatchEndpoint {
    /// Whether the records go in the path (`{ids}`) rather than a body.
    pub fn ids_in_path(&self) -> bool {
        self.path
            .iter()
            .any(|p| matches!(p, Piece::Placeholder(Ids)))
    }

    /// Whether an item needs the record's provider id.
    pub fn needs_id(&self) -> bool {
        self.ids_in_path() || self.item.iter().any(|(_, v)| *v == ItemValue::Id)
    }
}

const BATCH_ENDPOINTS: [&str; 4] = ["create", "update", "upsert", "delete"];

/// Checks and compiles `objects.<object>.batch`, reporting every error.
pub fn compile(
    src: &Sourced<ProviderConfig>,
    object: &str,
    cfg: &BatchConfig,
    diags: &mut Diagnostics,
) -> Option<Batch> {
    let file = &src.file;
    let before = diags.len();
    let at = |field: &str| path!["objects", object, "batch", field];
    file.check_range(diags, &at("max_records"), cfg.max_records, 1, 10_000);
    file.check_duration(
        diags,
        &at("max_wait"),
        cfg.max_wait.0,
        Duration::ZERO,
        Duration::from_secs(60),
    );
    let json_path = |diags: &mut Diagnostics, field: &[&str], text: &str| {
        let mut at = path!["objects", object, "batch"].to_vec();
        at.extend(field.iter().map(|f| Seg::from(*f)));
        JsonPath::compile(text)
            .map_err(|e| file.text_error(diags, &at, 1, e.col, e.message))
            .ok()
    };
    let optional = |diags: &mut Diagnostics, field: &str, text: &Option<String>| match text {
        Some(text) => json_path(diags, &["response", field], text).map(Some),
        None => Some(None),
    };
    let r = &cfg.response;
    let results = json_path(diags, &["response", "results"], &r.results);
    let result_trace = optional(diags, "trace", &r.trace);
    let id_from = optional(diags, "id_from", &r.id_from);
    let success = optional(diags, "success", &r.success);
    let errors = optional(diags, "errors", &r.errors);
    let error_trace = optional(diags, "error_trace", &r.error_trace);
    let error_code = optional(diags, "error_code", &r.error_code);
    let error_message = optional(diags, "error_message", &r.error_message);

    // Without trace ids, results are matched by position: a separate list
    // of failures could not be told apart.
    match (&cfg.request.trace, &r.trace) {
        (Some(_), None) => file.error(
            diags,
            &path!["objects", object, "batch", "response"],
            "request.trace needs response.trace: where a result repeats its record's trace id",
        ),
        (None, Some(_)) => file.error(
            diags,
            &path!["objects", object, "batch", "response", "trace"],
            "response.trace needs request.trace: the field of each record where syncflow puts the trace id",
        ),
        _ => {}
    }
    if r.errors.is_some() && r.error_trace.is_none() {
        file.error(
            diags,
            &path!["objects", object, "batch", "response", "errors"],
            "response.errors needs response.error_trace: where a failure names its records' trace ids",
        );
    }
    if r.errors.is_some() && cfg.request.trace.is_none() {
        file.error(
            diags,
            &path!["objects", object, "batch", "response", "errors"],
            "response.errors needs request.trace: failures listed apart are matched to records by trace id",
        );
    }
    for (code, status) in &r.statuses {
        if !(100..=599).contains(status) {
            file.error(
                diags,
                &path![
                    "objects",
                    object,
                    "batch",
                    "response",
                    "statuses",
                    code.as_str()
                ],
                format!("{status} is not an HTTP status"),
            );
        }
    }

    let configs = [&cfg.create, &cfg.update, &cfg.upsert, &cfg.delete];
    if configs.iter().all(|c| c.is_none()) {
        file.error(
            diags,
            &path!["objects", object, "batch"],
            "a batch needs at least one of create, update, upsert, delete",
        );
    }
    let mut endpoints = configs
        .iter()
        .zip(BATCH_ENDPOINTS)
        .map(|(ep, kind)| {
            ep.as_ref()
                .and_then(|ep| compile_endpoint(src, object, kind, ep, diags))
        })
        .collect::<Vec<_>>()
        .into_iter();
    let mut next = || endpoints.next().flatten();
    let (create, update, upsert, delete) = (next(), next(), next(), next());

    (diags.len() == before).then(|| Batch {
        max_records: cfg.max_records,
        max_wait: cfg.max_wait.0,
        items_at: segments(&cfg.request.items),
        fields: cfg.request.fields.clone(),
        trace: cfg.request.trace.clone(),
        results: results.expect("no errors"),
        result_trace: result_trace.flatten(),
        id_from: id_from.flatten(),
        success: success.flatten(),
        errors: errors.flatten(),
        error_trace: error_trace.flatten(),
        error_code: error_code.flatten(),
        error_message: error_message.flatten(),
        statuses: r.statuses.clone(),
        create,
        update,
        upsert,
        delete,
    })
}

fn compile_endpoint(
    src: &Sourced<ProviderConfig>,
    object: &str,
    kind: &str,
    ep: &BatchEndpointConfig,
    diags: &mut Diagnostics,
) -> Option<BatchEndpoint> {
    let file = &src.file;
    let at = |field: &str| path!["objects", object, "batch", kind, field];
    let method = ep.method.to_ascii_uppercase();
    let method = match METHODS.contains(&method.as_str()) {
        true => http::Method::from_bytes(method.as_bytes()).ok(),
        false => {
            file.error(
                diags,
                &at("method"),
                format!(
                    "unknown HTTP method \"{}\"; expected one of {}",
                    ep.method,
                    METHODS.join(", ")
                ),
            );
            None
        }
    };
    let path = match ep.path.starts_with('/') {
        false => Err(format!("path \"{}\" must start with \"/\"", ep.path)),
        true => split("batch path", &ep.path, &[("ids", Ids)]),
    };
    let path = path.map_err(|e| file.error(diags, &at("path"), e)).ok();
    let mut item = Vec::new();
    for (field, value) in &ep.item {
        let value = match value {
            Value::String(text) if text == "{key}" => ItemValue::Key,
            Value::String(text) if text == "{id}" => ItemValue::Id,
            Value::String(text) if text.contains('{') => {
                file.error(
                    diags,
                    &path!["objects", object, "batch", kind, "item", field.as_str()],
                    format!(
                        "an item field is \"{{key}}\", \"{{id}}\" or a constant, not \"{text}\""
                    ),
                );
                continue;
            }
            other => ItemValue::Const(other.clone()),
        };
        item.push((segments(field), value));
    }
    if kind == "create" && item.iter().any(|(_, v)| *v == ItemValue::Id) {
        file.error(
            diags,
            &path!["objects", object, "batch", kind, "item"],
            "a create has no provider id yet: {id} belongs on update, upsert or delete",
        );
    }
    Some(BatchEndpoint {
        request: super::Endpoint {
            method: method?,
            path: super::PathTemplate::parse("/").expect("a plain path"),
            id_from: None,
            conflict_id: None,
            unmodified_since: None,
        },
        path: path?,
        item,
    })
}

/// `a.b.c` as `["a", "b", "c"]`; empty for "".
fn segments(dotted: &str) -> Vec<String> {
    match dotted {
        "" | "$" => Vec::new(),
        _ => dotted.split('.').map(str::to_string).collect(),
    }
}
