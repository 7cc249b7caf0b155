//! What a mock CRM holds, as returned by `MockCrm::snapshot` and
//! `GET /_admin/state` (the same JSON, so tests in other processes can read it).

use std::collections::BTreeMap;

use axum::http::Method;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub fail_rate: f64,
    pub hubspot: ApiSnapshot,
    pub salesforce: ApiSnapshot,
}

/// One API's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiSnapshot {
    /// Current records by provider id.
    pub records: BTreeMap<String, RecordSnapshot>,
    pub counters: Counters,
    /// Every API request in the order it was handled; empty unless
    /// `record_log` is on.
    pub log: Vec<LoggedRequest>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordSnapshot {
    /// The fields as clients sent them (HubSpot: the `properties`).
    pub fields: Map<String, Value>,
    /// Salesforce's `Internal_Id__c`, when the record has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
}

/// Counts since the start or the last reset.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Counters {
    /// Responses by request method, then status (replays included).
    pub requests: BTreeMap<String, BTreeMap<u16, u64>>,
    /// Requests refused with 429.
    pub rate_limited: u64,
    /// Requests answered 503 by fault injection.
    pub injected_failures: u64,
    /// Requests answered by a scripted [`Fault`](super::Fault).
    #[serde(default)]
    pub scripted_failures: u64,
    /// Batch items failed by a scripted item fault
    /// ([`Fault::item_contains`](super::Fault::item_contains)).
    #[serde(default)]
    pub scripted_item_failures: u64,
    /// Requests answered from the `Idempotency-Key` store.
    pub idempotent_replays: u64,
    /// Batch requests (HubSpot `.../batch/*`, Salesforce
    /// `composite/sobjects`) that reached the API's handler: past faults,
    /// auth, the rate limit and replays. Refused bodies included.
    #[serde(default)]
    pub batch_requests: u64,
    /// Records created through the API, each record of a batch apart
    /// (replays and admin edits excluded).
    pub creates: u64,
    /// Successful creates, updates and deletes through the authenticated API
    /// (syncflow's writes), no-op updates included.
    #[serde(default)]
    pub api_writes: u64,
    /// Of `api_writes`, the updates that changed no field value: echoes.
    #[serde(default)]
    pub api_noop_writes: u64,
    /// Admin edits (`/_admin/{hubspot,salesforce}/contacts`): a CRM user's
    /// writes. Not in `requests` nor `creates`.
    #[serde(default)]
    pub user_writes: u64,
}

impl Counters {
    /// How many `method` requests were answered `status`.
    pub fn count(&self, method: &str, status: u16) -> u64 {
        self.requests
            .get(method)
            .and_then(|by_status| by_status.get(&status))
            .copied()
            .unwrap_or(0)
    }

    pub(super) fn record(&mut self, method: &Method, status: u16) {
        // Look up before inserting: the method string is allocated only once.
        if let Some(by_status) = self.requests.get_mut(method.as_str()) {
            *by_status.entry(status).or_default() += 1;
        } else {
            let by_status = BTreeMap::from([(status, 1)]);
            self.requests.insert(method.to_string(), by_status);
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoggedRequest {
    pub method: String,
    /// Relative to the API's base URL, as in a provider's `path:`.
    pub path: String,
    pub status: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// When the request arrived, in microseconds since the Unix epoch.
    pub received_at_us: u64,
    /// The body as JSON; a string when it is not JSON, null when empty.
    pub body: Value,
    pub replayed: bool,
    /// With OAuth on, the account whose access token the request carried
    /// (none for the fixed `token`, or a refused bearer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
}
