//! `syncflow tap` against a running instance: each record's decision (sent
//! with its status and body, skipped, dead letter with its kind) reaches
//! the tap; filters select by key and action; a tap that does not read
//! loses decisions, is told how many, and the pipeline delivers everything
//! all the same; an unknown pipeline is an error that names it.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use syncflow_mock_crm::MockCrmConfig;

use common::contacts;
use common::harness::{Harness, Syncflow};

const PIPELINE: &str = "contacts-to-hubspot";

/// Starts `syncflow tap` as a child and waits until the instance says the
/// tap is open.
fn tap(syncflow: &Syncflow, args: &[&str]) -> std::process::Child {
    let opened = syncflow.log().matches("tap opened").count();
    let child = Command::new(env!("CARGO_BIN_EXE_syncflow"))
        .args(["tap", PIPELINE, "--url", &syncflow.http.to_string()])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while syncflow.log().matches("tap opened").count() == opened {
        assert!(Instant::now() < deadline, "the tap never opened");
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

fn lines(child: std::process::Child) -> Vec<Value> {
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tap_sees_every_decision_and_a_slow_one_slows_nothing() {
    let h = Harness::start(MockCrmConfig::default()).await;
    h.remove_pipeline("contacts-to-salesforce");
    // Records flow as fast as they can: the shipped 10/s is not the point.
    h.set_rate_limit("hubspot", 100_000, "1s", 1000);
    let syncflow = h.spawn();
    syncflow.wait_ready(Duration::from_secs(20)).await;

    // Everything, as JSON: a create sent, a skip, a dead letter.
    let all = tap(&syncflow, &["--count", "3", "--format", "json"]);
    h.publish("cdc.contacts.1", "c1", &contacts::created(1).payload())
        .await;
    let mut no_company = contacts::created(2);
    no_company.record["company"] = json!(null);
    h.publish("cdc.contacts.2", "c2", &no_company.payload())
        .await;
    h.publish("cdc.contacts.x", "junk", b"not json").await;
    let mut decisions = lines(all);
    decisions.sort_by_key(|d| d["seq"].as_u64());
    assert_eq!(decisions.len(), 3, "{decisions:?}");
    let (sent, skipped, dead) = (&decisions[0], &decisions[1], &decisions[2]);
    assert_eq!(sent["key"], "1");
    assert_eq!(sent["action"], "create");
    assert_eq!(sent["outcome"], "sent");
    assert_eq!(sent["status"], 201);
    assert_eq!(sent["body"]["properties"]["company"], "COMPANY 1");
    assert!(sent["latency_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(skipped["key"], "2");
    assert_eq!(skipped["action"], "skip");
    assert_eq!(skipped["outcome"], "skipped");
    assert_eq!(dead["outcome"], "dead_letter");
    assert_eq!(dead["error_kind"], "decode");
    assert!(
        dead["error"].as_str().unwrap().contains("not JSON"),
        "{dead}"
    );

    // Filters, in text: only key 4's update.
    let filtered = tap(
        &syncflow,
        &["--key", "4", "--action", "update", "--count", "1"],
    );
    h.publish("cdc.contacts.3", "c3", &contacts::created(3).payload())
        .await;
    h.publish("cdc.contacts.4", "c4", &contacts::created(4).payload())
        .await;
    let mut update = contacts::created(4);
    update.op = "u";
    h.publish("cdc.contacts.4", "u4", &update.payload()).await;
    let out = filtered.wait_with_output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    println!("$ syncflow tap {PIPELINE} --key 4 --action update --count 1\n{text}");
    let decisions: Vec<&str> = text.lines().filter(|l| l.contains(" seq=")).collect();
    assert_eq!(decisions.len(), 1, "{text}");
    assert!(decisions[0].contains("key=4 update → sent 200"), "{text}");

    // A tap that does not read while 20,000 records flow (about 9 MB of
    // decisions: more than the queue and every socket buffer on the way).
    h.wait_settled(Duration::from_secs(20)).await;
    // A small receive buffer: what the kernel would hold for the tap is not
    // what is tested.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut slow = socket
        .connect(syncflow.http)
        .await
        .unwrap()
        .into_std()
        .unwrap();
    slow.set_nonblocking(false).unwrap();
    write!(
        slow,
        "GET /api/tap/{PIPELINE} HTTP/1.1\r\nHost: {}\r\n\r\n",
        syncflow.http
    )
    .unwrap();
    syncflow
        .wait_log("tap opened", Duration::from_secs(10))
        .await;
    let events: Vec<contacts::Event> = (1000..21_000).map(contacts::created).collect();
    contacts::publish_all(&h, &events).await;
    h.wait_settled(Duration::from_secs(60)).await;
    let snap = h.crm.snapshot();
    assert_eq!(
        snap.hubspot.counters.creates,
        20_000 + 3,
        "every record delivered while the tap lagged"
    );
    // Now read what the tap got: far fewer than 20,000, and told how many
    // it missed (the count comes before the next decision it reads).
    slow.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
    let mut reader = BufReader::new(slow);
    let (mut seen, mut dropped) = (0u64, 0u64);
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let body = line.trim();
        // Chunk sizes of the chunked encoding and keepalives are not JSON.
        let Ok(v) = serde_json::from_str::<Value>(body) else {
            continue;
        };
        if let Some(n) = v.get("dropped").and_then(Value::as_u64) {
            dropped += n;
        } else if v.get("seq").is_some() {
            seen += 1;
        }
        if seen + dropped >= 20_000 {
            break;
        }
    }
    assert!(
        dropped > 0,
        "a tap that never read lost nothing? it read {seen}"
    );
    println!(
        "a tap that did not read while 20,000 records flowed: read {seen}, told of {dropped} dropped"
    );
    assert_eq!(seen + dropped, 20_000, "seen {seen}, dropped {dropped}");
    let metrics = syncflow.metrics().await;
    let counted = common::metrics::sum(
        &metrics,
        "syncflow_tap_dropped_total",
        &[&format!(r#"pipeline="{PIPELINE}""#)],
    );
    assert_eq!(counted as u64, dropped);
    drop(reader);

    // An unknown pipeline.
    let out = Command::new(env!("CARGO_BIN_EXE_syncflow"))
        .args(["tap", "nope", "--url", &syncflow.http.to_string()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no pipeline \"nope\" runs here"), "{err}");
}
