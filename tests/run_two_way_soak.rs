//! The convergence soak of two-way sync (issue 13): 300 contacts, then a
//! minute of random creates, updates and deletes on both sides at once —
//! System A through its API, HubSpot and Salesforce through their admin
//! APIs as their users would — with the same field edited on both sides
//! within the sync delay now and then, 5% of CRM requests failing with
//! 503, HubSpot's webhooks duplicated, reordered and dropped, and syncflow
//! killed with `kill -9` once and started again.
//!
//! Once both sides are quiet: every linked contact is equal on every
//! synced field on both sides, with the value its field's policy says
//! should win; no contact exists on one side only; no write changed
//! nothing (an echo written back would); and the writes each side received
//! are the edits of the other side (plus set-backs: an owned field edited
//! on the wrong side, a newer edit overwritten by an older one's sync
//! while both were in flight).
//!
//! `SYNCFLOW_SOAK_SECS` (default 60) sets the length of the random phase.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Map, Value, json};
use syncflow_mock_crm::MockCrmConfig;

use common::twoway::TwoWay;

const INITIAL: usize = 300;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Crm {
    HubSpot,
    Salesforce,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    A,
    Crm,
}

/// The synced fields: System A's name, HubSpot's, Salesforce's.
const FIELDS: [(&str, &str, &str); 3] = [
    ("first_name", "firstname", "FirstName"),
    ("last_name", "lastname", "LastName"),
    ("phone", "phone", "Phone"),
];

/// Who owns a field in a link (`None`: the newer change wins).
fn owner(crm: Crm, field: &str) -> Option<Side> {
    match (crm, field) {
        (_, "email") => Some(Side::A),
        (Crm::HubSpot, "phone") => Some(Side::Crm),
        _ => None,
    }
}

/// One contact, as the test made it.
#[derive(Debug)]
struct Contact {
    crm: Crm,
    email: String,
    a_id: Option<String>,
    crm_id: Option<String>,
    /// Per field, the value that should win, and when it was set (ms).
    want: BTreeMap<&'static str, (Option<String>, u64)>,
    deleted: bool,
    born: Instant,
}

#[derive(Debug, Default)]
struct Tally {
    /// Edits made on each side that changed a synced value (creates and
    /// deletes included).
    edits_a: u64,
    edits_crm: BTreeMap<&'static str, u64>,
    /// Edits of a field its owner is the other side: set back.
    wrong_side: BTreeMap<&'static str, u64>,
    conflicts: u64,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn crm_name(crm: Crm) -> &'static str {
    match crm {
        Crm::HubSpot => "hubspot",
        Crm::Salesforce => "salesforce",
    }
}

fn crm_field(crm: Crm, field: &str) -> &'static str {
    let (_, h, s) = FIELDS
        .iter()
        .chain([("email", "email", "Email")].iter())
        .find(|(a, _, _)| *a == field)
        .copied()
        .unwrap();
    match crm {
        Crm::HubSpot => h,
        Crm::Salesforce => s,
    }
}

/// Makes an edit and records what should win.
struct Soak {
    env: TwoWay,
    contacts: Vec<Contact>,
    tally: Tally,
    rng: StdRng,
    serial: u64,
}

impl Soak {
    fn value(&mut self) -> String {
        self.serial += 1;
        format!("v{}", self.serial)
    }

    async fn create(&mut self, crm: Crm, side: Side) {
        let n = self.contacts.len();
        let email = format!("c{n}@example.com");
        let (first, last) = (self.value(), self.value());
        let phone = self.value();
        let at = now_ms();
        let mut contact = Contact {
            crm,
            email: email.clone(),
            a_id: None,
            crm_id: None,
            want: BTreeMap::new(),
            deleted: false,
            born: Instant::now(),
        };
        for (field, value) in [
            ("first_name", &first),
            ("last_name", &last),
            ("phone", &phone),
        ] {
            contact.want.insert(field, (Some(value.clone()), at));
        }
        match side {
            Side::A => {
                let record = self
                    .env
                    .system_a
                    .user_create(json!({"crm": crm_name(crm), "email": email, "first_name": first, "last_name": last, "phone": phone}))
                    .await
                    .unwrap();
                contact.a_id = Some(record["id"].as_str().unwrap().to_string());
                self.tally.edits_a += 1;
            }
            Side::Crm => {
                let id = match crm {
                    Crm::HubSpot => self.env.crm.hubspot_user_create(
                        json!({"email": email, "firstname": first, "lastname": last, "phone": phone}),
                    ),
                    Crm::Salesforce => self.env.crm.salesforce_user_create(
                        json!({"Email": email, "FirstName": first, "LastName": last, "Phone": phone}),
                        Some(at),
                    ),
                }
                .unwrap();
                contact.crm_id = Some(id);
                *self.tally.edits_crm.entry(crm_name(crm)).or_default() += 1;
            }
        }
        self.contacts.push(contact);
    }

    /// Finds the other side's id of a contact made on one side.
    fn resolve(&mut self, i: usize) -> bool {
        let c = &self.contacts[i];
        if c.a_id.is_some() && c.crm_id.is_some() {
            return true;
        }
        let (a_id, crm_id) = match (&c.a_id, &c.crm_id) {
            (Some(a), None) => (Some(a.clone()), self.crm_id_of(c.crm, a)),
            (None, Some(id)) => (self.a_id_of(c.crm, id), Some(id.clone())),
            _ => unreachable!("every contact is made on one side"),
        };
        let c = &mut self.contacts[i];
        (c.a_id, c.crm_id) = (a_id, crm_id);
        c.a_id.is_some() && c.crm_id.is_some()
    }

    fn crm_id_of(&self, crm: Crm, a_id: &str) -> Option<String> {
        let snap = self.env.crm.snapshot();
        match crm {
            Crm::HubSpot => snap
                .hubspot
                .records
                .iter()
                .find(|(_, r)| r.fields.get("syncflow_key").and_then(Value::as_str) == Some(a_id))
                .map(|(id, _)| id.clone()),
            Crm::Salesforce => snap
                .salesforce
                .records
                .iter()
                .find(|(_, r)| r.external_id.as_deref() == Some(a_id))
                .map(|(id, _)| id.clone()),
        }
    }

    fn a_id_of(&self, crm: Crm, crm_id: &str) -> Option<String> {
        let name = format!("{}_id", crm_name(crm));
        self.env
            .system_a
            .snapshot()
            .records
            .iter()
            .find(|(_, r)| r.get(&name).and_then(Value::as_str) == Some(crm_id))
            .map(|(id, _)| id.clone())
    }

    async fn edit(&mut self, i: usize, side: Side, field: &'static str, value: Option<String>) {
        let c = &self.contacts[i];
        let crm = c.crm;
        let at = now_ms();
        match side {
            Side::A => {
                let id = c.a_id.clone().unwrap();
                let body = json!({ field: value });
                // A deleted meanwhile on the other side: nothing to edit.
                if self.env.system_a.user_update(&id, body).await.is_err() {
                    return;
                }
                self.tally.edits_a += 1;
            }
            Side::Crm => {
                let id = c.crm_id.clone().unwrap();
                let name = crm_field(crm, field);
                let done = match crm {
                    Crm::HubSpot => self
                        .env
                        .crm
                        .hubspot_user_update(&id, json!({ name: value })),
                    Crm::Salesforce => {
                        self.env
                            .crm
                            .salesforce_user_update(&id, json!({ name: value }), Some(at))
                    }
                };
                if done.is_err() {
                    return;
                }
                *self.tally.edits_crm.entry(crm_name(crm)).or_default() += 1;
            }
        }
        match owner(crm, field) {
            Some(owner) if owner != side => {
                *self
                    .tally
                    .wrong_side
                    .entry(match side {
                        Side::A => "system_a",
                        Side::Crm => crm_name(crm),
                    })
                    .or_default() += 1;
            }
            // The newer edit wins; an equal time goes to System A.
            _ => {
                let slot = self.contacts[i].want.get_mut(field).unwrap();
                if at > slot.1 || (at == slot.1 && side == Side::A) {
                    *slot = (value, at);
                }
            }
        }
    }

    async fn delete(&mut self, i: usize, side: Side) {
        let c = &self.contacts[i];
        let done = match side {
            Side::A => self
                .env
                .system_a
                .user_delete(c.a_id.as_ref().unwrap())
                .await
                .is_ok(),
            Side::Crm => match c.crm {
                Crm::HubSpot => self
                    .env
                    .crm
                    .hubspot_user_delete(c.crm_id.as_ref().unwrap())
                    .is_ok(),
                Crm::Salesforce => self
                    .env
                    .crm
                    .salesforce_user_delete(c.crm_id.as_ref().unwrap(), Some(now_ms()))
                    .is_ok(),
            },
        };
        if done {
            match side {
                Side::A => self.tally.edits_a += 1,
                Side::Crm => *self.tally.edits_crm.entry(crm_name(c.crm)).or_default() += 1,
            }
        }
        self.contacts[i].deleted = true;
    }

    /// A random live contact made at least `age` ago, both ids known.
    fn pick(&mut self, age: Duration) -> Option<usize> {
        for _ in 0..20 {
            let i = self.rng.random_range(0..self.contacts.len());
            let c = &self.contacts[i];
            if c.deleted || c.born.elapsed() < age {
                continue;
            }
            if self.resolve(i) {
                return Some(i);
            }
        }
        None
    }
}

fn field_value(fields: &Map<String, Value>, name: &str) -> Option<String> {
    fields.get(name).and_then(Value::as_str).map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_sides_converge_with_no_echoes_and_no_lost_updates() {
    let secs: u64 = std::env::var("SYNCFLOW_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let env = TwoWay::start(MockCrmConfig::default(), |hook| {
        hook.duplicate_rate = 0.1;
        hook.drop_rate = 0.05;
        hook.reorder = true;
    })
    .await;
    // What a killed instance held comes back soon.
    for p in ["contacts-to-hubspot", "contacts-to-salesforce"] {
        common::edit(
            env.dir.path(),
            &format!("pipelines/{p}.yaml"),
            r#"subject: "cdc.contacts.>" }"#,
            r#"subject: "cdc.contacts.>", ack_wait: 5s }"#,
        );
    }
    for (p, subject) in [
        ("hubspot-to-contacts", "syncflow.inbound.hubspot.contact }"),
        (
            "salesforce-to-contacts",
            "syncflow.inbound.salesforce.contact }",
        ),
    ] {
        common::edit(
            env.dir.path(),
            &format!("pipelines/{p}.yaml"),
            subject,
            &subject.replace(" }", ", ack_wait: 5s }"),
        );
    }
    env.crm.set_fail_rate(0.05).unwrap();
    let mut run = env.spawn();
    run.wait_ready(Duration::from_secs(30)).await;

    let mut soak = Soak {
        env,
        contacts: Vec::new(),
        tally: Tally::default(),
        rng: StdRng::seed_from_u64(13),
        serial: 0,
    };
    // 300 contacts: half made in System A, half in the CRMs.
    for n in 0..INITIAL {
        let crm = if n % 2 == 0 {
            Crm::HubSpot
        } else {
            Crm::Salesforce
        };
        let side = if n % 4 < 2 { Side::A } else { Side::Crm };
        soak.create(crm, side).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // The random phase: about 25 operations a second.
    let started = Instant::now();
    let mut killed = false;
    let mut ops = 0u64;
    while started.elapsed() < Duration::from_secs(secs) {
        if !killed && started.elapsed() > Duration::from_secs(secs / 2) {
            run.kill9();
            run = soak.env.spawn();
            killed = true;
        }
        ops += 1;
        let roll = soak.rng.random_range(0..100);
        let side = if soak.rng.random_bool(0.5) {
            Side::A
        } else {
            Side::Crm
        };
        if roll < 10 {
            let crm = if soak.rng.random_bool(0.5) {
                Crm::HubSpot
            } else {
                Crm::Salesforce
            };
            soak.create(crm, side).await;
        } else if let Some(i) = soak.pick(Duration::from_secs(5)) {
            if roll < 14 {
                soak.delete(i, side).await;
            } else {
                let field = FIELDS[soak.rng.random_range(0..FIELDS.len())].0;
                let value = Some(soak.value());
                if roll < 24 {
                    // A conflict: the same field on both sides within the
                    // sync delay; the CRM's edit is the newer one.
                    soak.edit(i, Side::A, field, value).await;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    let other = Some(soak.value());
                    soak.edit(i, Side::Crm, field, other).await;
                    soak.tally.conflicts += 1;
                } else {
                    soak.edit(i, side, field, value).await;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    assert!(killed);

    // Quiet: no write anywhere for 5 s, no webhook pending.
    soak.env.crm.set_fail_rate(0.0).unwrap();
    let writes = soak
        .env
        .wait_quiet(Duration::from_secs(5), Duration::from_secs(180))
        .await;

    // Every contact: on both sides or on neither, equal, with its winners.
    let a = soak.env.system_a.snapshot();
    let crm = soak.env.crm.snapshot();
    let mut divergent = Vec::new();
    let mut linked = 0;
    for i in 0..soak.contacts.len() {
        let _ = soak.resolve(i);
        let c = &soak.contacts[i];
        let a_rec = c.a_id.as_ref().and_then(|id| a.records.get(id));
        let crm_rec = c.crm_id.as_ref().and_then(|id| match c.crm {
            Crm::HubSpot => crm.hubspot.records.get(id),
            Crm::Salesforce => crm.salesforce.records.get(id),
        });
        match (c.deleted, a_rec, crm_rec) {
            (true, None, None) => continue,
            (false, Some(a_rec), Some(crm_rec)) => {
                linked += 1;
                let a_fields = a_rec.as_object().unwrap();
                for (field, _, _) in FIELDS.iter().chain([("email", "", "")].iter()) {
                    let on_a = field_value(a_fields, field);
                    let on_crm = field_value(&crm_rec.fields, crm_field(c.crm, field));
                    let want = match *field {
                        "email" => Some(c.email.clone()),
                        _ => c.want[field].0.clone(),
                    };
                    if on_a != on_crm || on_a != want {
                        divergent.push(format!(
                            "{} {field}: System A {on_a:?}, {} {on_crm:?}, should be {want:?}",
                            c.email,
                            crm_name(c.crm)
                        ));
                    }
                }
            }
            (deleted, a_rec, crm_rec) => divergent.push(format!(
                "{} (deleted: {deleted}): in System A {}, in {} {}",
                c.email,
                a_rec.is_some(),
                crm_name(c.crm),
                crm_rec.is_some()
            )),
        }
    }
    // Nothing the test did not make.
    let known_a: usize = soak.contacts.iter().filter(|c| !c.deleted).count();
    let orphans_a = a.records.len() as i64 - known_a as i64;
    let live_crm = crm.hubspot.records.len() + crm.salesforce.records.len();
    let orphans_crm = live_crm as i64 - known_a as i64;
    // Which, when there are any: enough to tell a record made twice (its
    // twin names the same CRM id) from one whose delete was lost.
    if orphans_a != 0 || orphans_crm != 0 {
        let live = || soak.contacts.iter().filter(|c| !c.deleted);
        let a_ids: Vec<_> = live().filter_map(|c| c.a_id.as_deref()).collect();
        let crm_ids: Vec<_> = live().filter_map(|c| c.crm_id.as_deref()).collect();
        for (id, record) in &a.records {
            if !a_ids.contains(&id.as_str()) {
                println!("  not made by the test, in System A: {id} {record}");
            }
        }
        let crm_records = crm.hubspot.records.iter().chain(&crm.salesforce.records);
        for (id, record) in crm_records {
            if !crm_ids.contains(&id.as_str()) {
                println!("  not made by the test, in a CRM: {id} {:?}", record.fields);
            }
        }
    }

    let metrics = run.metrics().await;
    let kind = |direction: &str, kind: &str| {
        common::metrics::sum(
            &metrics,
            "syncflow_twoway_writes_total",
            &[
                &format!(r#"direction="{direction}""#),
                &format!(r#"kind="{kind}""#),
            ],
        )
    };
    let fields = |outcome: &str| {
        common::metrics::sum(
            &metrics,
            "syncflow_twoway_fields_total",
            &[&format!(r#"outcome="{outcome}""#)],
        )
    };
    let t = &soak.tally;
    let edits_crm: u64 = t.edits_crm.values().sum();
    let noop = (
        a.counters.api_noop_writes,
        crm.hubspot.counters.api_noop_writes + crm.salesforce.counters.api_noop_writes,
    );
    println!("convergence soak: {secs} s of random edits, syncflow killed with -9 once");
    println!(
        "  contacts made:                 {} ({INITIAL} at first)",
        soak.contacts.len()
    );
    println!("  operations in the random phase: {ops}");
    println!("  edits in System A:             {}", t.edits_a);
    println!(
        "  edits in the CRMs:             {edits_crm} {:?}",
        t.edits_crm
    );
    println!("  edits of a field the other side owns: {:?}", t.wrong_side);
    println!(
        "  conflicts (both sides, one field, within the sync delay): {}",
        t.conflicts
    );
    println!("  writes System A received:      {}", writes.0);
    println!("  writes HubSpot received:       {}", writes.1);
    println!("  writes Salesforce received:    {}", writes.2);
    println!("  writes that changed nothing (System A, CRMs): {noop:?}");
    println!(
        "  syncflow's writes, outbound:   {} sync, {} create, {} delete, {} set back",
        kind("outbound", "sync"),
        kind("outbound", "create"),
        kind("outbound", "delete"),
        kind("outbound", "set_back")
    );
    println!(
        "  syncflow's writes, inbound:    {} sync, {} create, {} delete, {} set back",
        kind("inbound", "sync"),
        kind("inbound", "create"),
        kind("inbound", "delete"),
        kind("inbound", "set_back")
    );
    println!(
        "  fields seen (since the restart): {} won, {} lost to policy or a newer edit, {} echoes suppressed, {} repeats",
        fields("won"),
        fields("lost"),
        fields("echo"),
        fields("repeat")
    );
    println!(
        "  linked contacts equal on every field: {linked}; divergent: {}",
        divergent.len()
    );
    println!("  contacts on one side only: System A {orphans_a}, CRMs {orphans_crm}");
    if !divergent.is_empty() {
        // What syncflow knew of them.
        let js =
            async_nats::jetstream::new(async_nats::connect(soak.env.nats.url()).await.unwrap());
        let links = js.get_key_value("syncflow_links").await.unwrap();
        for c in &soak.contacts {
            if !divergent
                .iter()
                .any(|d| d.starts_with(&format!("{} ", c.email)))
            {
                continue;
            }
            let link = match c.crm {
                Crm::HubSpot => "contacts-hubspot",
                Crm::Salesforce => "contacts-salesforce",
            };
            let key = format!("{link}.{}", c.a_id.clone().unwrap_or_default());
            let state = links
                .get(&key)
                .await
                .unwrap()
                .map(|v| String::from_utf8_lossy(&v).to_string());
            println!(
                "{} {:?} {:?} want {:?}\n  state {}",
                c.email,
                c.a_id,
                c.crm_id,
                c.want,
                state.unwrap_or_default()
            );
        }
    }
    let failed = !divergent.is_empty() || orphans_a != 0 || orphans_crm != 0;
    if failed && std::env::var("SYNCFLOW_SOAK_KEEP").is_ok() {
        let kept = soak.env.dir.path().to_path_buf();
        std::mem::forget(soak.env.dir);
        println!("logs kept in {}", kept.display());
    }
    assert!(divergent.is_empty(), "divergent:\n{}", divergent.join("\n"));
    assert_eq!(
        (orphans_a, orphans_crm),
        (0, 0),
        "contacts on one side only"
    );

    // No echo written back: every write changed something, but for the
    // writes a killed instance had in flight and made again (and the rare
    // write after syncflow's write and a user's edit of one field landed in
    // the CRM in one millisecond, when webhooks cannot tell which is last).
    let in_flight_at_kill = 32 + 16 + 32;
    assert!(
        noop.0 + noop.1 <= in_flight_at_kill,
        "writes that changed nothing: {noop:?}"
    );
    // Writes each side received: one per edit of the other side, plus the
    // set-backs of its own edits of fields the other side owns. A conflict
    // (both sides, one field, within the sync delay) costs one write more
    // or one less, by which edit syncflow hears of first: the older edit's
    // sync then overwrites the newer one, which is written again; or the
    // older edit comes second and loses, and is not written. Writes a
    // killed instance made again are the no-op ones.
    // Edits of a field the other side owns are set back on their own side
    // instead of synced.
    let wrong_a = t.wrong_side.get("system_a").copied().unwrap_or(0);
    let wrong_crm: u64 = t
        .wrong_side
        .iter()
        .filter(|(k, _)| **k != "system_a")
        .map(|(_, v)| v)
        .sum();
    let slack = t.conflicts as i64;
    let to_a = writes.0 as i64 - noop.0 as i64;
    let to_crm = (writes.1 + writes.2) as i64 - noop.1 as i64;
    let expect_a = (edits_crm - wrong_crm + wrong_a) as i64;
    let expect_crm = (t.edits_a - wrong_a + wrong_crm) as i64;
    println!(
        "  System A received {to_a} writes: {} CRM edits to sync + {wrong_a} set-backs = {expect_a}, ± {slack} conflicts",
        edits_crm - wrong_crm
    );
    println!(
        "  the CRMs received {to_crm} writes: {} System A edits to sync + {wrong_crm} set-backs = {expect_crm}, ± {slack} conflicts",
        t.edits_a - wrong_a
    );
    assert!(
        (to_a - expect_a).abs() <= slack,
        "System A received {to_a} writes, expected {expect_a} ± {slack}"
    );
    assert!(
        (to_crm - expect_crm).abs() <= slack,
        "the CRMs received {to_crm} writes, expected {expect_crm} ± {slack}"
    );
}
