//! A provider's webhook: a request's signature checked, its body read into
//! envelopes, all before anything is stored. Pure: the HTTP side
//! (inbound/http.rs) stores the envelopes and answers.

use std::collections::BTreeSet;

use http::HeaderMap;
use serde_json::Value;

use super::envelope::{Change, Envelope, EnvelopeMapping};
use super::signature::{Refusal, Signed, Verifier};
use crate::config::diagnostics::Diagnostics;
use crate::config::load::SourceFile;
use crate::config::model::WebhookConfig;
use crate::expr::ScriptEngine;
use crate::mapping::JsonPath;
use crate::path;

/// One change per record and moment: a provider that tells a change as one
/// event per changed field (HubSpot's `propertyChange`, a creation and its
/// properties) gives events of the same record and time, merged here into
/// one envelope so that one edit is one write to System A. Deletes stay
/// apart, and so do events that are not one edit: one made through the
/// API and one by a user (`ours` differs: syncflow's own write and a
/// user's edit in the same millisecond), or two that give one field
/// different values. The merged envelope's id is its events' ids, so a
/// retry of the same request is stored once.
fn merge(envelopes: Vec<Envelope>) -> Vec<Envelope> {
    use std::collections::HashMap;
    let mut out: Vec<Envelope> = Vec::with_capacity(envelopes.len());
    let mut at: HashMap<(String, String, i64), usize> = HashMap::new();
    for envelope in envelopes {
        if envelope.change == Change::Delete {
            out.push(envelope);
            continue;
        }
        let slot = (
            envelope.object.clone(),
            envelope.record_id.clone(),
            envelope.occurred_at,
        );
        match at.get(&slot) {
            Some(&i)
                if out[i].ours == envelope.ours
                    && !conflicting(&out[i].record, &envelope.record) =>
            {
                let into = &mut out[i];
                if envelope.change == Change::Create {
                    into.change = Change::Create;
                }
                merge_values(&mut into.record, envelope.record);
                let id = envelope.event_id.rsplit_once(':').map_or("", |(_, id)| id);
                into.event_id.push('+');
                into.event_id.push_str(id);
            }
            _ => {
                at.insert(slot, out.len());
                out.push(envelope);
            }
        }
    }
    // The same events in another order (a retry, reshuffled) get one id.
    for envelope in &mut out {
        if let Some((provider, ids)) = envelope.event_id.split_once(':')
            && ids.contains('+')
        {
            let mut ids: Vec<&str> = ids.split('+').collect();
            ids.sort_unstable();
            envelope.event_id = format!("{provider}:{}", ids.join("+"));
        }
    }
    out
}

/// Whether `a` and `b` give one field (a leaf, objects compared deeply)
/// different values.
fn conflicting(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => a
            .iter()
            .any(|(k, v)| b.get(k).is_some_and(|w| conflicting(v, w))),
        (a, b) => a != b,
    }
}

/// `from`'s fields into `into`, objects merged deeply.
fn merge_values(into: &mut Value, from: Value) {
    match (into, from) {
        (Value::Object(into), Value::Object(from)) => {
            for (k, v) in from {
                match into.get_mut(&k) {
                    Some(slot) => merge_values(slot, v),
                    None => {
                        into.insert(k, v);
                    }
                }
            }
        }
        (into, from) => *into = from,
    }
}

#[derive(Debug, Clone)]
pub struct Webhook {
    pub provider: String,
    verifier: Verifier,
    public_url: Option<String>,
    pub max_body_bytes: u64,
    events: JsonPath,
    envelope: EnvelopeMapping,
    /// The provider's objects: an event for another is refused.
    objects: BTreeSet<String>,
}

/// Why a webhook request was refused, with its HTTP status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    Signature(Refusal),
    /// The body is not JSON, or has no events where `events` points.
    Malformed(String),
    /// An event the envelope mapping cannot read.
    BadEvent(String),
    /// An event for an object the provider does not declare.
    UnknownObject(String),
}

impl Refused {
    pub fn status(&self) -> u16 {
        match self {
            Refused::Signature(_) => 401,
            Refused::Malformed(_) => 400,
            Refused::BadEvent(_) | Refused::UnknownObject(_) => 422,
        }
    }

    /// The `outcome` label of `syncflow_webhook_requests_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Refused::Signature(r) => r.label(),
            Refused::Malformed(_) => "malformed",
            Refused::BadEvent(_) => "bad_event",
            Refused::UnknownObject(_) => "unknown_object",
        }
    }

    /// What the provider is told (nothing about the secret or the expected signature).
    pub fn message(&self) -> String {
        match self {
            Refused::Signature(Refusal::Missing) => "signature or timestamp missing".into(),
            Refused::Signature(Refusal::Mismatch) => "signature does not match".into(),
            Refused::Signature(Refusal::Stale) => "timestamp too old: refused as a replay".into(),
            Refused::Malformed(m) => format!("malformed body: {m}"),
            Refused::BadEvent(m) => format!("unreadable event: {m}"),
            Refused::UnknownObject(o) => format!("no object \"{o}\" syncs from this provider"),
        }
    }
}

/// One webhook request, as received.
pub struct Request<'a> {
    pub method: &'a str,
    /// `Host` header, for the default public URL.
    pub host: Option<&'a str>,
    /// Path and query, as received.
    pub path_and_query: &'a str,
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
}

impl Webhook {
    pub fn compile(
        provider: &str,
        objects: BTreeSet<String>,
        config: &WebhookConfig,
        file: &SourceFile,
        engine: &ScriptEngine,
        diags: &mut Diagnostics,
    ) -> Option<Self> {
        let at = |field: &str| path!["inbound", "webhook", field];
        let before = diags.len();
        let verifier = Verifier::new(&config.signature)
            .map_err(|e| file.error(diags, &at("signature"), e))
            .ok();
        if let Some(url) = &config.public_url {
            match url.parse::<http::Uri>() {
                Ok(uri) if matches!(uri.scheme_str(), Some("http" | "https")) => {}
                _ => file.error(
                    diags,
                    &at("public_url"),
                    format!("public_url must be an http(s) URL, not \"{url}\""),
                ),
            }
        }
        file.check_range(
            diags,
            &at("max_body_bytes"),
            config.max_body_bytes,
            1024,
            64 * 1024 * 1024,
        );
        let events = JsonPath::compile(&config.events)
            .map_err(|e| file.text_error(diags, &at("events"), 1, e.col, e.message))
            .ok();
        let envelope = EnvelopeMapping::compile(
            file,
            &at("event"),
            &config.event,
            &["id", "object", "record_id", "occurred_at"],
            engine,
            diags,
        );
        if diags.len() != before {
            return None;
        }
        Some(Webhook {
            provider: provider.to_string(),
            verifier: verifier?,
            public_url: config.public_url.clone(),
            max_body_bytes: config.max_body_bytes,
            events: events?,
            envelope: envelope?,
            objects,
        })
    }

    /// Checks the request and reads every event into an envelope, or
    /// refuses it whole: nothing of a refused request is stored.
    pub fn accept(
        &self,
        request: &Request<'_>,
        engine: &ScriptEngine,
        now_ms: i64,
    ) -> Result<Vec<Envelope>, Refused> {
        let url = match &self.public_url {
            Some(base) => format!("{}{}", base.trim_end_matches('/'), request.path_and_query),
            None => format!(
                "http://{}{}",
                request.host.unwrap_or_default(),
                request.path_and_query
            ),
        };
        let signed = Signed {
            method: request.method,
            url: &url,
            headers: request.headers,
            body: request.body,
        };
        self.verifier
            .verify(&signed, now_ms)
            .map_err(Refused::Signature)?;
        self.read(request.body, engine)
    }

    /// Reads a body's events into envelopes (the signature checked
    /// already, or not at all in a dry run).
    pub fn read(&self, body: &[u8], engine: &ScriptEngine) -> Result<Vec<Envelope>, Refused> {
        let body: Value = serde_json::from_slice(body)
            .map_err(|e| Refused::Malformed(format!("not JSON: {e}")))?;
        let events = match self.events.get(&body) {
            Some(found) => match found.into_owned() {
                Value::Array(events) => events,
                one => vec![one],
            },
            None => {
                return Err(Refused::Malformed(format!(
                    "no events at {}",
                    self.events.as_str()
                )));
            }
        };
        let envelopes = events
            .iter()
            .map(|event| self.envelope(event, engine))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(merge(envelopes))
    }

    fn envelope(&self, event: &Value, engine: &ScriptEngine) -> Result<Envelope, Refused> {
        let read = self
            .envelope
            .read(event, engine)
            .map_err(Refused::BadEvent)?;
        let object = read
            .object
            .ok_or_else(|| Refused::BadEvent("no object".into()))?;
        if !self.objects.contains(&object) {
            return Err(Refused::UnknownObject(object));
        }
        let id = read.id.ok_or_else(|| Refused::BadEvent("no id".into()))?;
        Ok(Envelope {
            provider: self.provider.clone(),
            object,
            event_id: format!("{}:{id}", self.provider),
            record_id: read.record_id,
            occurred_at: read.occurred_at,
            change: read.change,
            record: read.record.unwrap_or(Value::Object(Default::default())),
            source: "webhook".into(),
            ours: read.ours,
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn event(id: u64, at: i64, ours: Option<bool>, properties: Value) -> Envelope {
        Envelope {
            provider: "hubspot".into(),
            object: "contact".into(),
            event_id: format!("hubspot:{id}"),
            record_id: "501".into(),
            occurred_at: at,
            change: Change::Update,
            record: json!({ "properties": properties }),
            source: "webhook".into(),
            ours,
        }
    }

    fn summary(envelopes: &[Envelope]) -> Vec<(String, Value)> {
        envelopes
            .iter()
            .map(|e| (e.event_id.clone(), e.record.clone()))
            .collect()
    }

    #[test]
    fn one_edit_told_field_by_field_is_one_change() {
        let user = Some(false);
        let merged = merge(vec![
            event(9, 1000, user, json!({"firstname": "Ada"})),
            event(3, 1000, user, json!({"lastname": "King"})),
            event(4, 1001, user, json!({"phone": "1"})),
        ]);
        assert_eq!(
            summary(&merged),
            [
                (
                    "hubspot:3+9".to_string(),
                    json!({"properties": {"firstname": "Ada", "lastname": "King"}})
                ),
                (
                    "hubspot:4".to_string(),
                    json!({"properties": {"phone": "1"}})
                ),
            ]
        );
    }

    #[test]
    fn a_users_edit_and_syncflows_write_in_one_millisecond_stay_apart() {
        // syncflow's write of one value and a user's of another, same field,
        // same millisecond: merged, the user's edit would be lost.
        let merged = merge(vec![
            event(1, 1000, Some(true), json!({"firstname": "v2125"})),
            event(2, 1000, Some(false), json!({"firstname": "v2126"})),
            event(3, 1000, Some(false), json!({"lastname": "K"})),
        ]);
        assert_eq!(
            summary(&merged),
            [
                (
                    "hubspot:1".to_string(),
                    json!({"properties": {"firstname": "v2125"}})
                ),
                (
                    "hubspot:2+3".to_string(),
                    json!({"properties": {"firstname": "v2126", "lastname": "K"}})
                ),
            ]
        );
        // Two values of one field from one source: two changes too.
        let merged = merge(vec![
            event(1, 1000, None, json!({"firstname": "a"})),
            event(2, 1000, None, json!({"firstname": "b"})),
        ]);
        assert_eq!(merged.len(), 2);
    }
}
