//! System A's contacts as the end-to-end tests publish them, and what the
//! shipped pipelines must make of them at each CRM.

use std::collections::BTreeMap;

use rand::Rng;
use rand::rngs::StdRng;
use serde_json::{Map, Value, json};
use syncflow_mock_crm::{ApiSnapshot, LoggedRequest, Snapshot};

use super::harness::Harness;

/// One contact's change, as System A publishes it.
#[derive(Clone)]
pub struct Event {
    pub key: u32,
    pub op: &'static str,
    pub record: Value,
}

impl Event {
    pub fn payload(&self) -> Vec<u8> {
        json!({"op": self.op, "after": self.record})
            .to_string()
            .into_bytes()
    }
}

/// A new contact with a company: created at both CRMs.
pub fn created(key: u32) -> Event {
    Event {
        key,
        op: "c",
        record: json!({
            "id": key.to_string(), "email": format!("c{key}@example.com"), "first_name": format!("F{key}"),
            "last_name": format!("L{key}"), "company": format!("Company {key}"), "status": "lead",
        }),
    }
}

/// One event per key (1..=keys): mostly creates with a company (both CRMs),
/// every third without one (Salesforce only), every seventh an active update
/// of a contact HubSpot never got (a dead letter there, an upsert at
/// Salesforce). No two events share a key, so their order does not matter.
pub fn one_per_key(keys: u32) -> Vec<Event> {
    (1..=keys)
        .map(|key| {
            let mut ev = created(key);
            if key % 7 == 0 {
                ev.op = "u";
                ev.record["status"] = json!("active");
            } else if key % 3 == 0 {
                ev.record["company"] = json!(null);
            }
            ev
        })
        .collect()
}

/// Requests the API has answered, whatever the answer.
pub fn requests(api: &ApiSnapshot) -> u64 {
    api.counters
        .requests
        .values()
        .flat_map(|by| by.values())
        .sum()
}

/// Per key (1..=keys): a create, a few updates, and for every fifth key a
/// delete; shuffled across keys while each key's own order is kept. Every
/// fourth key has no company, so HubSpot never gets it and its updates are
/// dead-lettered (`unknown_id`).
pub fn history(rng: &mut StdRng, keys: u32) -> Vec<Event> {
    let mut per_key: Vec<Vec<Event>> = Vec::new();
    for key in 1..=keys {
        let mut events = Vec::new();
        let company = (key % 4 != 0).then(|| format!("Company {key}"));
        let record = |n: u32, status: &str| {
            json!({
                "id": key.to_string(), "email": format!("c{key}.v{n}@example.com"), "first_name": format!("F{key}"),
                "last_name": format!("L{key}"), "company": company, "phone": format!("555-{key}-{n}"), "status": status,
            })
        };
        events.push(Event {
            key,
            op: "c",
            record: record(0, "lead"),
        });
        for n in 1..=rng.random_range(1..=5u32) {
            let status = if rng.random_bool(0.6) {
                "active"
            } else {
                "inactive"
            };
            events.push(Event {
                key,
                op: "u",
                record: record(n, status),
            });
        }
        if key % 5 == 0 {
            events.push(Event {
                key,
                op: "d",
                record: json!({"id": key.to_string()}),
            });
        }
        per_key.push(events);
    }
    let mut out = Vec::new();
    let mut cursors = vec![0usize; per_key.len()];
    while out.len() < per_key.iter().map(Vec::len).sum() {
        let k = rng.random_range(0..per_key.len());
        if cursors[k] < per_key[k].len() {
            out.push(per_key[k][cursors[k]].clone());
            cursors[k] += 1;
        }
    }
    out
}

/// Publishes `events` in order on `cdc.contacts.<key>`, each with a
/// `Nats-Msg-Id` of its own (`ev-<n>`, counted across calls, so a second
/// call is not taken for duplicates of the first).
pub async fn publish_all(h: &Harness, events: &[Event]) {
    static PUBLISHED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    for ev in events {
        let n = PUBLISHED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        h.publish(
            &format!("cdc.contacts.{}", ev.key),
            &format!("ev-{n}"),
            &ev.payload(),
        )
        .await;
    }
}

pub fn hubspot_props(r: &Value) -> Map<String, Value> {
    let mut p = Map::new();
    for (from, to) in [
        ("email", "email"),
        ("first_name", "firstname"),
        ("last_name", "lastname"),
        ("phone", "phone"),
    ] {
        if let Some(v) = r.get(from) {
            p.insert(to.into(), v.clone());
        }
    }
    if let Some(c) = r["company"].as_str() {
        p.insert("company".into(), json!(c.to_uppercase()));
    }
    let stage = if r["status"] == "active" {
        "customer"
    } else {
        "lead"
    };
    p.insert("lifecyclestage".into(), json!(stage));
    p
}

pub fn salesforce_fields(r: &Value) -> Map<String, Value> {
    let mut f = Map::new();
    for (from, to) in [
        ("first_name", "FirstName"),
        ("last_name", "LastName"),
        ("email", "Email"),
        ("phone", "Phone"),
    ] {
        if let Some(v) = r.get(from) {
            f.insert(to.into(), v.clone());
        }
    }
    if r["status"] == "lead" {
        f.insert("LeadSource".into(), json!("Web"));
    }
    f.insert(
        "Description".into(),
        json!(format!(
            "Synced from System A ({})",
            r["status"].as_str().unwrap()
        )),
    );
    f
}

/// What the shipped rules imply: key → final fields (absent = no record),
/// the ordered operations per key, and the expected dead letters.
pub struct Expected {
    pub hubspot: BTreeMap<String, Map<String, Value>>,
    pub hubspot_ops: BTreeMap<String, Vec<&'static str>>,
    pub salesforce: BTreeMap<String, Map<String, Value>>,
    pub salesforce_ops: BTreeMap<String, Vec<&'static str>>,
    pub unknown_id: usize,
}

impl Expected {
    /// HubSpot contacts created (each exactly once).
    pub fn hubspot_creates(&self) -> usize {
        self.hubspot_ops
            .values()
            .filter(|ops| ops[0] == "POST")
            .count()
    }

    /// Salesforce contacts created by upsert (each exactly once).
    pub fn salesforce_creates(&self) -> usize {
        self.salesforce_ops
            .values()
            .filter(|ops| ops[0] == "PATCH")
            .count()
    }
}

pub fn expected(history: &[Event]) -> Expected {
    let mut e = Expected {
        hubspot: BTreeMap::new(),
        hubspot_ops: BTreeMap::new(),
        salesforce: BTreeMap::new(),
        salesforce_ops: BTreeMap::new(),
        unknown_id: 0,
    };
    for ev in history {
        let key = ev.key.to_string();
        // contacts-to-hubspot: d → delete, c with company → create, u → update.
        let hs_known = e.hubspot.contains_key(&key);
        match ev.op {
            "d" if hs_known => {
                e.hubspot.remove(&key);
                e.hubspot_ops.entry(key.clone()).or_default().push("DELETE");
            }
            "c" if ev.record["company"].is_string() => {
                e.hubspot.insert(key.clone(), hubspot_props(&ev.record));
                e.hubspot_ops.entry(key.clone()).or_default().push("POST");
            }
            "u" if hs_known => {
                e.hubspot
                    .get_mut(&key)
                    .unwrap()
                    .extend(hubspot_props(&ev.record));
                e.hubspot_ops.entry(key.clone()).or_default().push("PATCH");
            }
            "d" | "u" => e.unknown_id += 1,
            _ => {}
        }
        // contacts-to-salesforce: d → delete, c → upsert, active u → upsert.
        match ev.op {
            "d" => {
                e.salesforce.remove(&key);
                e.salesforce_ops
                    .entry(key.clone())
                    .or_default()
                    .push("DELETE");
            }
            "c" => {
                e.salesforce
                    .insert(key.clone(), salesforce_fields(&ev.record));
                e.salesforce_ops
                    .entry(key.clone())
                    .or_default()
                    .push("PATCH");
            }
            // An upsert: it creates the contact when Salesforce has none.
            "u" if ev.record["status"] == "active" => {
                e.salesforce
                    .entry(key.clone())
                    .or_default()
                    .extend(salesforce_fields(&ev.record));
                e.salesforce_ops
                    .entry(key.clone())
                    .or_default()
                    .push("PATCH");
            }
            _ => {}
        }
    }
    e
}

/// HubSpot's contacts by record key (their stable firstname is `F<key>`).
pub fn hubspot_by_key(snap: &Snapshot) -> BTreeMap<String, Map<String, Value>> {
    snap.hubspot
        .records
        .values()
        .map(|r| {
            let key = r.fields["firstname"]
                .as_str()
                .expect("every synced contact has a firstname")
                .trim_start_matches('F')
                .to_string();
            (key, r.fields.clone())
        })
        .collect()
}

/// Both CRMs hold exactly the records `want` implies, with their fields, and
/// every record was created exactly once (idempotent replays are no creates).
pub fn assert_crm_state(snap: &Snapshot, want: &Expected) {
    let hubspot = hubspot_by_key(snap);
    assert_eq!(
        hubspot.keys().collect::<Vec<_>>(),
        want.hubspot.keys().collect::<Vec<_>>(),
        "hubspot contacts"
    );
    for (key, props) in &want.hubspot {
        for (field, value) in props {
            assert_eq!(
                hubspot[key].get(field),
                Some(value),
                "hubspot key {key} field {field}"
            );
        }
    }
    assert_eq!(
        snap.hubspot.counters.creates as usize,
        want.hubspot_creates(),
        "every HubSpot contact created once"
    );

    let salesforce: BTreeMap<String, &Map<String, Value>> = snap
        .salesforce
        .records
        .values()
        .map(|r| {
            (
                r.external_id.clone().expect("upserted by external id"),
                &r.fields,
            )
        })
        .collect();
    assert_eq!(
        salesforce.keys().collect::<Vec<_>>(),
        want.salesforce.keys().collect::<Vec<_>>(),
        "salesforce contacts"
    );
    for (key, fields) in &want.salesforce {
        for (field, value) in fields {
            assert_eq!(
                salesforce[key].get(field),
                Some(value),
                "salesforce key {key} field {field}"
            );
        }
    }
    assert_eq!(
        snap.salesforce.counters.creates as usize,
        want.salesforce_creates(),
        "every Salesforce contact created once"
    );
}

/// Each key's HubSpot writes (create, updates) were applied in event order.
pub fn assert_hubspot_order(snap: &Snapshot, want: &Expected) {
    let applied = ops_by_key(&snap.hubspot.log, |_, body| {
        body["properties"]["firstname"]
            .as_str()
            .map(|f| f.trim_start_matches('F').to_string())
    });
    for (key, ops) in &want.hubspot_ops {
        let writes: Vec<&str> = ops.iter().copied().filter(|o| *o != "DELETE").collect();
        assert_eq!(
            applied
                .get(key)
                .map(|v| v.iter().map(String::as_str).collect::<Vec<_>>()),
            Some(writes),
            "hubspot order of key {key}"
        );
    }
}

/// Successful (2xx), non-replayed writes per key, in the order received.
pub fn ops_by_key(
    log: &[LoggedRequest],
    key_of: impl Fn(&str, &Value) -> Option<String>,
) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in log {
        if (200..300).contains(&r.status)
            && !r.replayed
            && r.method != "GET"
            && r.method != "DELETE"
        {
            if let Some(key) = key_of(&r.path, &r.body) {
                out.entry(key).or_default().push(r.method.clone());
            }
        }
    }
    out
}
