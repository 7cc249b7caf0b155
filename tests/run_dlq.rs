//! `syncflow dlq` against real NATS and a running instance: dead letters
//! made by a mapping bug are listed, shown and dry-run; the bug is fixed by
//! a hot reload; replay delivers each record once and removes the dead
//! letters; replaying the same dead letters again (as after a crash between
//! publish and delete) delivers nothing twice; purge asks first.

mod common;

use std::time::Duration;

use serde_json::Value;
use syncflow_mock_crm::MockCrmConfig;

use common::contacts::hubspot_by_key;
use common::harness::Harness;
use common::{mapping_bug, metrics};

const PIPELINE: &str = "contacts-to-hubspot";
const INACTIVE: std::ops::RangeInclusive<u32> = 1..=5;
const GOOD: std::ops::RangeInclusive<u32> = 6..=10;

#[tokio::test(flavor = "multi_thread")]
async fn dead_letters_are_listed_fixed_replayed_once_and_purged() {
    let h = Harness::start(MockCrmConfig::default()).await;
    h.remove_pipeline("contacts-to-salesforce");
    mapping_bug::introduce(&h);
    let syncflow = h.spawn();
    syncflow.wait_ready(Duration::from_secs(20)).await;

    mapping_bug::publish(&h, INACTIVE.chain(GOOD), |key| INACTIVE.contains(&key)).await;
    h.wait_dead_letters(6).await;
    h.wait_settled(Duration::from_secs(20)).await;

    // list: a table, counts by pipeline and kind, filters.
    let (code, out, err) = h.cli(&["dlq", "list"], "");
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("6 dead letters"), "{out}");
    let counts: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with(PIPELINE) && !l.contains('#'))
        .collect();
    assert_eq!(counts.len(), 2, "{out}");
    assert!(
        counts[0].contains("decode") && counts[0].ends_with(" 1"),
        "{out}"
    );
    assert!(
        counts[1].contains("output_schema") && counts[1].ends_with(" 5"),
        "{out}"
    );
    let (_, json_lines, _) = h.cli(
        &["dlq", "list", "--kind", "output_schema", "--format", "json"],
        "",
    );
    let letters: Vec<Value> = json_lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(letters.len(), 5, "{json_lines}");
    let (_, by_key, _) = h.cli(&["dlq", "list", "--key", "3"], "");
    assert!(by_key.contains("1 dead letters"), "{by_key}");
    let (_, none, _) = h.cli(
        &[
            "dlq",
            "list",
            "--since",
            "1970-01-01T00:00:00Z",
            "--until",
            "1h",
        ],
        "",
    );
    assert!(none.contains("no dead letters"), "{none}");

    // show: one in full (key 1's: the five were dead-lettered by as many
    // lanes, in no set order).
    let first = letters
        .iter()
        .find(|l| l["letter"]["key"] == "1")
        .unwrap_or_else(|| panic!("{json_lines}"));
    let seq = first["seq"].as_u64().unwrap().to_string();
    let (code, shown, err) = h.cli(&["dlq", "show", &seq], "");
    assert_eq!(code, 0, "{err}");
    let shown: Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(shown["letter"]["error"]["kind"], "output_schema");
    assert_eq!(shown["letter"]["original"]["subject"], "cdc.contacts.1");
    assert_eq!(
        shown["letter"]["original"]["data"]["after"]["status"],
        "inactive"
    );

    // A dry run with the bug still there: they would fail again.
    let (code, dry, _) = h.cli(
        &["dlq", "replay", "--kind", "output_schema", "--dry-run"],
        "",
    );
    assert_eq!(code, 1, "{dry}");
    assert_eq!(
        dry.matches("would be dead-lettered again: output_schema")
            .count(),
        5,
        "{dry}"
    );
    // Replaying needs a selection.
    let (code, _, err) = h.cli(&["dlq", "replay"], "");
    assert_ne!(code, 0);
    assert!(err.contains("say which dead letters"), "{err}");

    // The fix, by hot reload; now the dry run says they would be created.
    mapping_bug::fix(&h);
    syncflow
        .wait_log("reload applied", Duration::from_secs(20))
        .await;
    let (code, dry, _) = h.cli(
        &["dlq", "replay", "--kind", "output_schema", "--dry-run"],
        "",
    );
    assert_eq!(code, 0, "{dry}");
    assert_eq!(dry.matches("would create").count(), 5, "{dry}");
    assert!(dry.contains("\"lifecyclestage\":\"other\""), "{dry}");
    assert_eq!(h.dead_letters().await.len(), 6, "a dry run removes nothing");

    // Keep the dead letters as stored, to put them back later.
    let stored: Vec<Value> = h
        .dead_letters()
        .await
        .into_iter()
        .filter(|l| l["error"]["kind"] == "output_schema")
        .collect();

    let (code, out, err) = h.cli(&["dlq", "replay", "--kind", "output_schema"], "");
    println!("$ syncflow dlq replay --kind output_schema\n{out}");
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("5 replayed, 0 failed"), "{out}");
    h.wait_settled(Duration::from_secs(20)).await;
    let snap = h.crm.snapshot();
    let hubspot = hubspot_by_key(&snap);
    let keys: Vec<u32> = hubspot.keys().map(|k| k.parse().unwrap()).collect();
    let mut want: Vec<u32> = INACTIVE.chain(GOOD).collect();
    want.sort_by_key(|k| k.to_string());
    assert_eq!(keys, want);
    assert_eq!(hubspot["3"]["lifecyclestage"], "other");
    assert_eq!(snap.hubspot.counters.creates, 10);
    let left = h.dead_letters().await;
    assert_eq!(
        left.len(),
        1,
        "only the decode dead letter is left: {left:?}"
    );
    assert_eq!(left[0]["error"]["kind"], "decode");

    // Replay twice: the same dead letters are back (a crash between the
    // publish and the delete would leave them), and replayed again.
    for letter in &stored {
        h.js.publish(
            format!("syncflow.dlq.{PIPELINE}"),
            serde_json::to_vec(letter).unwrap().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    let requests_before = h.crm.snapshot().hubspot.log.len();
    let (code, out, _) = h.cli(&["dlq", "replay", "--kind", "output_schema"], "");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("5 replayed, 0 failed"), "{out}");
    h.wait_settled(Duration::from_secs(20)).await;
    syncflow
        .wait_metric(
            &format!(r#"syncflow_pipeline_stale_total{{pipeline="{PIPELINE}"}}"#),
            5.0,
            Duration::from_secs(10),
        )
        .await;
    let snap = h.crm.snapshot();
    assert_eq!(snap.hubspot.counters.creates, 10, "nothing created twice");
    let writes_after: Vec<_> = snap.hubspot.log[requests_before..]
        .iter()
        .filter(|r| r.method != "GET")
        .collect();
    assert!(
        writes_after.is_empty(),
        "a second replay wrote: {writes_after:?}"
    );
    let sent = metrics::sum(
        &syncflow.metrics().await,
        "syncflow_pipeline_sent_total",
        &[&format!(r#"pipeline="{PIPELINE}""#)],
    );
    assert_eq!(sent, 10.0);

    // purge asks first; "n" keeps, --yes removes.
    let (code, out, _) = h.cli(&["dlq", "purge", "--kind", "decode"], "n\n");
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("remove 1 dead letters for good? [y/N]") && out.contains("nothing removed"),
        "{out}"
    );
    assert_eq!(h.dead_letters().await.len(), 1);
    let (code, out, _) = h.cli(&["dlq", "purge", "--kind", "decode", "--yes"], "");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("1 dead letters removed"), "{out}");
    let (_, out, _) = h.cli(&["dlq", "list"], "");
    assert!(out.contains("no dead letters"), "{out}");
}
