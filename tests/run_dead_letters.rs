//! Dead letters end to end: a message of each kind no retry can fix, sent
//! through both shipped pipelines, lands on the dead-letter subject exactly
//! once per pipeline that fails it, with its error and the original message,
//! and the good records published after them are delivered all the same.
//! `/metrics` exposes every figure issue 3 asks for, with the right counts.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::{Value, json};
use syncflow_mock_crm::{Fault, MockApi, MockCrmConfig};

use common::contacts::{self, hubspot_by_key};
use common::harness::Harness;
use common::metrics;

const HUBSPOT: &str = "contacts-to-hubspot";
const SALESFORCE: &str = "contacts-to-salesforce";
/// HubSpot's tries per record in this test.
const MAX_ATTEMPTS: u32 = 3;
const GOOD: u32 = 20;

/// A bad message and the dead letter each pipeline must make of it (`None`:
/// that pipeline skips it or delivers it).
struct Bad {
    subject: &'static str,
    msg_id: &'static str,
    payload: Vec<u8>,
    hubspot: Option<Letter>,
    salesforce: Option<Letter>,
}

/// What a dead letter must say.
#[derive(Clone, Copy)]
struct Letter {
    kind: &'static str,
    key: Option<&'static str>,
    /// `Some(None)`: the letter's action must be null.
    action: Option<Option<&'static str>>,
    status: Option<u16>,
    /// Text the error body must contain.
    body: Option<&'static str>,
    attempts: u32,
}

fn eval_error(kind: &'static str, key: Option<&'static str>) -> Option<Letter> {
    Some(Letter {
        kind,
        key,
        action: Some(None),
        status: None,
        body: None,
        attempts: 0,
    })
}

fn contact(after: Value, op: &str) -> Vec<u8> {
    json!({"op": op, "after": after}).to_string().into_bytes()
}

fn bad_messages() -> Vec<Bad> {
    let rejected = |body| {
        Some(Letter {
            kind: "provider_rejected",
            key: Some("rejected"),
            action: None,
            status: Some(400),
            body: Some(body),
            attempts: 1,
        })
    };
    vec![
        Bad {
            subject: "cdc.contacts.garbage",
            msg_id: "bad-decode",
            payload: b"not json {".to_vec(),
            hubspot: eval_error("decode", None),
            salesforce: eval_error("decode", None),
        },
        // JSON in shape, but not UTF-8: the whole message is checked once.
        Bad {
            subject: "cdc.contacts.latin1",
            msg_id: "bad-utf8",
            payload: b"{\"op\":\"c\",\"after\":{\"id\":\"caf\xe9\"}}".to_vec(),
            hubspot: eval_error("decode", None),
            salesforce: eval_error("decode", None),
        },
        Bad {
            subject: "cdc.contacts.nokey",
            msg_id: "bad-key",
            payload: contact(json!({"email": "nokey@example.com"}), "u"),
            hubspot: eval_error("key", None),
            salesforce: eval_error("key", None),
        },
        Bad {
            subject: "cdc.contacts.bad-email",
            msg_id: "bad-input",
            payload: contact(
                json!({"id": "bad-email", "email": "not-an-email", "company": "Acme", "last_name": "B"}),
                "c",
            ),
            hubspot: eval_error("input_schema", Some("bad-email")),
            salesforce: eval_error("input_schema", Some("bad-email")),
        },
        // No company: HubSpot skips it. No last name: Salesforce's schema refuses it.
        Bad {
            subject: "cdc.contacts.no-last-name",
            msg_id: "bad-output",
            payload: contact(
                json!({"id": "no-last-name", "email": "n@example.com", "first_name": "N"}),
                "c",
            ),
            hubspot: None,
            salesforce: Some(Letter {
                // The rule had chosen upsert before the output schema failed.
                action: Some(Some("upsert")),
                ..eval_error("output_schema", Some("no-last-name")).unwrap()
            }),
        },
        // An update of a contact HubSpot never got; Salesforce skips inactive updates.
        Bad {
            subject: "cdc.contacts.never-created",
            msg_id: "bad-unknown-id",
            payload: contact(
                json!({"id": "never-created", "email": "u@example.com", "last_name": "U", "status": "inactive"}),
                "u",
            ),
            hubspot: Some(Letter {
                kind: "unknown_id",
                key: Some("never-created"),
                action: Some(Some("update")),
                status: None,
                body: None,
                attempts: 0,
            }),
            salesforce: None,
        },
        // "a@b" passes JSON Schema's email format; both CRMs want a TLD.
        Bad {
            subject: "cdc.contacts.rejected",
            msg_id: "bad-rejected",
            payload: contact(
                json!({"id": "rejected", "email": "a@b", "company": "Acme", "last_name": "R"}),
                "c",
            ),
            hubspot: rejected("INVALID_EMAIL"),
            salesforce: rejected("INVALID_EMAIL_ADDRESS"),
        },
        // HubSpot answers 503 to this contact every time (a scripted fault).
        Bad {
            subject: "cdc.contacts.doomed",
            msg_id: "bad-doomed",
            payload: contact(
                json!({"id": "doomed", "email": "doomed@example.com", "company": "Acme", "last_name": "D"}),
                "c",
            ),
            hubspot: Some(Letter {
                kind: "retries_exhausted",
                key: Some("doomed"),
                action: Some(Some("create")),
                status: Some(503),
                body: Some("down for this one"),
                attempts: MAX_ATTEMPTS,
            }),
            salesforce: None,
        },
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_dead_letter_lands_once_and_the_stream_keeps_flowing() {
    let h = Harness::start(MockCrmConfig {
        record_log: true,
        ..MockCrmConfig::default()
    })
    .await;
    for provider in ["hubspot", "salesforce"] {
        h.set_rate_limit(provider, 2000, "1s", 50);
        h.set_fast_retries(provider, MAX_ATTEMPTS);
    }
    let down = Fault {
        body: json!({"message": "down for this one"}),
        ..Fault::body_contains("doomed@example.com", 503)
    };
    h.crm.add_fault(MockApi::Hubspot, down).unwrap();

    let bad = bad_messages();
    let mut seqs = BTreeMap::new();
    for b in &bad {
        let seq = h.publish(b.subject, b.msg_id, &b.payload).await;
        seqs.insert(b.msg_id, seq);
    }
    let good: Vec<_> = (1..=GOOD).map(contacts::created).collect();
    contacts::publish_all(&h, &good).await;

    let mut syncflow = h.spawn();
    syncflow.wait_ready(Duration::from_secs(20)).await;
    h.wait_settled(Duration::from_secs(30)).await;
    let exposed = syncflow.metrics().await;
    assert!(syncflow.sigterm().success(), "{}", syncflow.log());
    // Record values are in dead letters, not in the log (a schema error
    // quotes the bad email).
    assert!(
        !syncflow.log().contains("not-an-email"),
        "{}",
        syncflow.log()
    );

    // Exactly the expected letters, one per (pipeline, message).
    let letters = h.dead_letters().await;
    let mut expected = Vec::new();
    for b in &bad {
        for (pipeline, letter) in [(HUBSPOT, &b.hubspot), (SALESFORCE, &b.salesforce)] {
            if let Some(letter) = letter {
                expected.push((pipeline, b, *letter));
            }
        }
    }
    let found = |pipeline: &str, b: &Bad| -> Vec<&Value> {
        letters
            .iter()
            .filter(|l| l["pipeline"] == pipeline && l["original"]["sequence"] == seqs[b.msg_id])
            .collect()
    };
    assert_eq!(letters.len(), expected.len(), "dead letters: {letters:#?}");
    for (pipeline, b, want) in &expected {
        let got = found(pipeline, b);
        assert_eq!(got.len(), 1, "{pipeline} {}: {letters:#?}", b.msg_id);
        let l = got[0];
        let what = format!("{pipeline} {}: {l:#}", b.msg_id);
        assert_eq!(l["error"]["kind"], want.kind, "{what}");
        assert_eq!(l["key"], json!(want.key), "{what}");
        if let Some(action) = want.action {
            assert_eq!(l["action"], json!(action), "{what}");
        }
        assert!(
            l["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{what}"
        );
        assert_eq!(l["error"]["status"], json!(want.status), "{what}");
        match want.body {
            Some(text) => assert!(
                l["error"]["body"]
                    .as_str()
                    .is_some_and(|b| b.contains(text)),
                "{what}"
            ),
            None => assert_eq!(l["error"]["body"], Value::Null, "{what}"),
        }
        assert_eq!(l["attempts"], want.attempts, "{what}");
        let original = &l["original"];
        assert_eq!(original["subject"], b.subject, "{what}");
        assert_eq!(original["headers"]["Nats-Msg-Id"], b.msg_id, "{what}");
        match std::str::from_utf8(&b.payload) {
            Ok(text) => {
                let data = serde_json::from_str::<Value>(text).unwrap_or_else(|_| json!(text));
                assert_eq!(original["data"], data, "{what}");
            }
            // Bytes that are not text are kept whole, in base64.
            Err(_) => {
                use base64::Engine;
                let encoded = base64::engine::general_purpose::STANDARD.encode(&b.payload);
                assert_eq!(original["data"], Value::Null, "{what}");
                assert_eq!(original["data_base64"], encoded, "{what}");
            }
        }
    }

    // The good records came through behind the bad ones.
    let snap = h.crm.snapshot();
    let hubspot = hubspot_by_key(&snap);
    let want: BTreeSet<String> = (1..=GOOD).map(|k| k.to_string()).collect();
    assert_eq!(hubspot.keys().cloned().collect::<BTreeSet<_>>(), want);
    let salesforce: BTreeSet<String> = snap
        .salesforce
        .records
        .values()
        .filter_map(|r| r.external_id.clone())
        .collect();
    let mut want_sf = want.clone();
    want_sf.insert("doomed".into());
    assert_eq!(salesforce, want_sf, "salesforce contacts");
    let doomed_tries = snap
        .hubspot
        .log
        .iter()
        .filter(|r| r.body.to_string().contains("doomed@example.com"))
        .count();
    assert_eq!(
        doomed_tries, MAX_ATTEMPTS as usize,
        "tries of the doomed record"
    );

    // /metrics: every figure of issue 3, and its count.
    for family in [
        "syncflow_pipeline_received_total",
        "syncflow_pipeline_skipped_total",
        "syncflow_pipeline_sent_total",
        "syncflow_pipeline_dead_letters_total",
        "syncflow_pipeline_retries_total",
        "syncflow_pipeline_ack_latency_seconds",
        "syncflow_provider_in_flight",
        "syncflow_provider_requests_total",
        "syncflow_provider_request_seconds",
        "syncflow_provider_limiter_wait_seconds",
        "syncflow_provider_breaker_open",
        "syncflow_limiter_local",
    ] {
        assert!(
            metrics::families(&exposed).contains(&family),
            "{family} missing from /metrics:\n{exposed}"
        );
    }
    let per_pipeline = |name: &str, pipeline: &str, extra: &[&str]| {
        let label = format!("pipeline=\"{pipeline}\"");
        let mut labels = vec![label.as_str()];
        labels.extend_from_slice(extra);
        metrics::sum(&exposed, name, &labels)
    };
    let received = bad.len() as f64 + f64::from(GOOD);
    for pipeline in [HUBSPOT, SALESFORCE] {
        assert_eq!(
            per_pipeline("syncflow_pipeline_received_total", pipeline, &[]),
            received,
            "{pipeline} received"
        );
        assert_eq!(
            per_pipeline("syncflow_pipeline_skipped_total", pipeline, &[]),
            1.0,
            "{pipeline} skipped"
        );
        let ours = || expected.iter().filter(|(p, _, _)| *p == pipeline);
        for (p, _, want) in ours() {
            let of_kind = ours().filter(|(_, _, w)| w.kind == want.kind).count();
            let kind = format!("kind=\"{}\"", want.kind);
            assert_eq!(
                per_pipeline("syncflow_pipeline_dead_letters_total", p, &[&kind]),
                of_kind as f64,
                "{p} {kind}"
            );
        }
        let ack = per_pipeline("syncflow_pipeline_ack_latency_seconds_count", pipeline, &[]);
        assert_eq!(ack, received, "{pipeline} acks timed");
    }
    let sent = |pipeline, action: &str, status: &str| {
        let (action, status) = (
            format!("action=\"{action}\""),
            format!("status=\"{status}\""),
        );
        per_pipeline(
            "syncflow_pipeline_sent_total",
            pipeline,
            &[&action, &status],
        )
    };
    assert_eq!(sent(HUBSPOT, "create", "201"), f64::from(GOOD));
    assert_eq!(sent(SALESFORCE, "upsert", "201"), f64::from(GOOD + 1));
    let retries = per_pipeline("syncflow_pipeline_retries_total", HUBSPOT, &[]);
    assert_eq!(retries, f64::from(MAX_ATTEMPTS - 1), "hubspot retries");
    assert_eq!(
        metrics::value(&exposed, r#"syncflow_limiter_local{provider="hubspot"}"#),
        Some(0.0)
    );

    println!(
        "dead letters: {} ({}); hubspot retries {retries}; scripted 503s {}",
        letters.len(),
        expected
            .iter()
            .map(|(p, _, l)| format!("{p}:{}", l.kind))
            .collect::<Vec<_>>()
            .join(", "),
        snap.hubspot.counters.scripted_failures,
    );
}

/// A delete of a contact syncflow already deleted is done, not a dead letter
/// (it is what a redelivered delete looks like when the first delivery
/// deleted the record but was not acked: a crash, a drain deadline), like a
/// 404 on delete. An update of it is a dead letter that says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_deleted_contact_is_done_and_updating_it_is_a_dead_letter() {
    let h = Harness::start(MockCrmConfig {
        record_log: true,
        ..MockCrmConfig::default()
    })
    .await;
    h.remove_pipeline(SALESFORCE);
    let created = contacts::created(1);
    let mut deleted = created.clone();
    deleted.op = "d";
    let mut updated = created.clone();
    updated.op = "u";
    for (i, ev) in [&created, &deleted, &deleted, &updated].iter().enumerate() {
        h.publish("cdc.contacts.1", &format!("ev-{i}"), &ev.payload())
            .await;
    }
    let mut syncflow = h.spawn();
    syncflow.wait_ready(Duration::from_secs(20)).await;
    h.wait_settled(Duration::from_secs(20)).await;
    assert!(syncflow.sigterm().success(), "{}", syncflow.log());

    let snap = h.crm.snapshot();
    let calls: Vec<(String, u16)> = snap
        .hubspot
        .log
        .iter()
        .map(|r| (r.method.clone(), r.status))
        .collect();
    assert_eq!(
        calls,
        [("POST".to_string(), 201), ("DELETE".to_string(), 204)]
    );
    let letters = h.dead_letters().await;
    assert_eq!(letters.len(), 1, "{letters:#?}");
    assert_eq!(letters[0]["original"]["headers"]["Nats-Msg-Id"], "ev-3");
    assert_eq!(letters[0]["error"]["kind"], "unknown_id");
    let message = letters[0]["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("was deleted through syncflow"),
        "{message}"
    );
}

/// A dead letter that cannot be published (its stream is gone) is not the
/// record's fault: the record waits, the pipeline says so on `/readyz` and
/// in `syncflow_pipeline_internal_errors_total`, and once the stream is
/// back the dead letter is published once and the pipeline is ready again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_that_cannot_be_published_waits_with_the_pipeline_unready() {
    let h = Harness::start(MockCrmConfig::default()).await;
    h.remove_pipeline(SALESFORCE);
    let mut syncflow = h.spawn();
    syncflow.wait_ready(Duration::from_secs(20)).await;
    h.js.delete_stream("SYNCFLOW_DLQ").await.unwrap();

    h.publish("cdc.contacts.x", "not-json", b"not json").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let (status, body) = loop {
        let (status, body) = syncflow.readyz().await;
        if status == 503 || std::time::Instant::now() > deadline {
            break (status, body);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("contacts-to-hubspot (dead-letter publish failing)"),
        "{body}"
    );
    let failures = metrics::sum(
        &syncflow.metrics().await,
        "syncflow_pipeline_internal_errors_total",
        &[r#"step="dead-letter publish""#],
    );
    assert!(failures >= 1.0, "{failures}");

    h.js.create_stream(async_nats::jetstream::stream::Config {
        name: "SYNCFLOW_DLQ".into(),
        subjects: vec!["syncflow.dlq.>".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    h.wait_settled(Duration::from_secs(20)).await;
    syncflow.wait_ready(Duration::from_secs(10)).await;
    let letters = h.dead_letters().await;
    assert!(syncflow.sigterm().success(), "{}", syncflow.log());
    assert_eq!(letters.len(), 1, "{letters:#?}");
    assert_eq!(letters[0]["error"]["kind"], "decode");
}
