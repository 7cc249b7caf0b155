//! Hot reload under load: edits take effect on save, nothing is lost or
//! duplicated, invalid edits are refused with their file and line while the
//! running version carries on, and pipelines whose files did not change are
//! not touched.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::json;
use syncflow_mock_crm::{LoggedRequest, MockCrmConfig, Snapshot};

use common::harness::{Harness, Syncflow};
use common::metrics;

const HUBSPOT_PIPELINE: &str = "pipelines/contacts-to-hubspot.yaml";
const SALESFORCE_PIPELINE: &str = "pipelines/contacts-to-salesforce.yaml";
const HUBSPOT_PROVIDER: &str = "providers/hubspot.yaml";
const SALESFORCE_PROVIDER: &str = "providers/salesforce.yaml";
const HUBSPOT_SCHEMA: &str = "schemas/hubspot/contact.json";
const INTERNAL_SCHEMA: &str = "schemas/internal/contact.json";

/// The mapping line every HubSpot record carries its mapping version in.
fn marker(version: usize) -> String {
    format!("  properties.jobtitle: {{ expr: '\"gen-{version}\"' }}")
}

/// One edit of the running config.
struct Edit {
    what: &'static str,
    file: &'static str,
    from: String,
    to: String,
    /// For an invalid edit, the error message the log must show at the
    /// edited line; `None` for a valid edit.
    error: Option<&'static str>,
    /// The mapping version records carry once this edit is in place.
    version: Option<usize>,
}

fn valid(what: &'static str, file: &'static str, from: &str, to: &str) -> Edit {
    Edit {
        what,
        file,
        from: from.into(),
        to: to.into(),
        error: None,
        version: None,
    }
}

fn invalid(
    what: &'static str,
    file: &'static str,
    from: &str,
    to: &str,
    error: &'static str,
) -> Edit {
    Edit {
        error: Some(error),
        ..valid(what, file, from, to)
    }
}

fn new_version(version: usize) -> Edit {
    Edit {
        version: Some(version),
        ..valid(
            "mapping version",
            HUBSPOT_PIPELINE,
            &marker(version - 1),
            &marker(version),
        )
    }
}

/// Twenty edits to pipelines, providers and schemas: 13 valid, 7 invalid.
fn edits() -> Vec<Edit> {
    vec![
        new_version(1),
        invalid(
            "Rhai syntax error",
            HUBSPOT_PIPELINE,
            "'\"gen-1\"'",
            "'\"gen-1\" +'",
            "invalid Rhai script",
        ),
        valid(
            "provider timeout (sink rebuilt)",
            HUBSPOT_PROVIDER,
            "timeout: 10s",
            "timeout: 9s",
        ),
        new_version(2),
        invalid(
            "unknown provider key",
            HUBSPOT_PROVIDER,
            "max_in_flight: 32",
            "max_inflight: 32",
            "unknown key \"max_inflight\"",
        ),
        valid(
            "rate limit only",
            HUBSPOT_PROVIDER,
            "requests: 2000, per: 1s",
            "requests: 2500, per: 1s",
        ),
        valid(
            "output schema",
            HUBSPOT_SCHEMA,
            "\"lifecyclestage\": {",
            "\"jobtitle\": { \"type\": \"string\", \"pattern\": \"^gen-\" },\n        \"lifecyclestage\": {",
        ),
        new_version(3),
        invalid(
            "broken schema",
            HUBSPOT_SCHEMA,
            "\"type\": \"string\", \"format\": \"email\"",
            "\"type\": \"strng\", \"format\": \"email\"",
            "invalid JSON Schema",
        ),
        valid(
            "the other pipeline's mapping",
            SALESFORCE_PIPELINE,
            "Email: $.email",
            "Email: $['email']",
        ),
        invalid(
            "typo'd provider",
            HUBSPOT_PIPELINE,
            "provider: hubspot",
            "provider: hubspt",
            "unknown provider \"hubspt\"",
        ),
        new_version(4),
        valid(
            "source batch (drain and restart)",
            HUBSPOT_PIPELINE,
            "    durable: contacts-to-hubspot",
            "    durable: contacts-to-hubspot\n    batch: 64",
        ),
        new_version(5),
        invalid(
            "unset variable",
            SALESFORCE_PROVIDER,
            "${SALESFORCE_URL:-http://127.0.0.1:18080/salesforce}",
            "${SYNCFLOW_TEST_UNSET_URL}",
            "environment variable SYNCFLOW_TEST_UNSET_URL is not set",
        ),
        valid(
            "the other provider's timeout",
            SALESFORCE_PROVIDER,
            "timeout: 15s",
            "timeout: 14s",
        ),
        new_version(6),
        invalid(
            "bad JSONPath",
            HUBSPOT_PIPELINE,
            "properties.phone: $.phone",
            "properties.phone: $.phone[",
            "invalid JSONPath",
        ),
        valid(
            "shared input schema",
            INTERNAL_SCHEMA,
            "\"type\": \"object\"",
            "\"type\": \"object\", \"description\": \"a System A contact\"",
        ),
        new_version(7),
    ]
}

/// The 1-based line of `file` that holds `text` (its first line).
fn line_of(h: &Harness, file: &str, text: &str) -> usize {
    let content = std::fs::read_to_string(h.dir.path().join(file)).unwrap();
    let first = text.lines().next().unwrap();
    1 + content
        .lines()
        .position(|l| l.contains(first))
        .unwrap_or_else(|| panic!("{first:?} not in {file}"))
}

/// Waits for the first reload to be applied; its log line.
async fn second_version_applied(syncflow: &Syncflow) -> String {
    syncflow
        .wait_metric("syncflow_config_generation", 2.0, Duration::from_secs(10))
        .await;
    syncflow
        .wait_log("reload applied", Duration::from_secs(1))
        .await
}

async fn metric(syncflow: &Syncflow, series: &str) -> f64 {
    metrics::value(&syncflow.metrics().await, series).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_edits_under_load_lose_nothing_and_take_effect() {
    let h = Harness::start(MockCrmConfig {
        record_log: true,
        ..MockCrmConfig::default()
    })
    .await;
    for provider in ["hubspot", "salesforce"] {
        h.set_rate_limit(provider, 2000, "1s", 50);
    }
    // The version marker is not in the pipeline's own tests' expectations.
    let pipeline = h.dir.path().join(HUBSPOT_PIPELINE);
    let text = std::fs::read_to_string(&pipeline).unwrap();
    std::fs::write(&pipeline, &text[..text.find("tests:").unwrap()]).unwrap();
    h.edit(
        HUBSPOT_PIPELINE,
        "  properties.phone: $.phone\n",
        &format!("  properties.phone: $.phone\n{}\n", marker(0)),
    );

    let mut syncflow = h.spawn();
    syncflow.wait_ready(Duration::from_secs(20)).await;

    // Publishes creates continuously, each noting the mapping version that
    // was in place (as far as the test had seen) before it was published.
    let version_in_place = Arc::new(AtomicUsize::new(0));
    let publishing = Arc::new(AtomicBool::new(true));
    let publisher = {
        let (js, version_in_place, publishing) =
            (h.js.clone(), version_in_place.clone(), publishing.clone());
        tokio::spawn(async move {
            let mut required = Vec::new();
            while publishing.load(Ordering::SeqCst) {
                let key = required.len();
                required.push(version_in_place.load(Ordering::SeqCst));
                let event = json!({"op": "c", "after": {
                    "id": key.to_string(), "email": format!("c{key}@example.com"), "first_name": format!("F{key}"),
                    "last_name": format!("L{key}"), "company": "acme", "status": "lead",
                }});
                let mut headers = async_nats::HeaderMap::new();
                headers.insert("Nats-Msg-Id", format!("reload-{key}").as_str());
                js.publish_with_headers(
                    format!("cdc.contacts.{key}"),
                    headers,
                    event.to_string().into(),
                )
                .await
                .unwrap()
                .await
                .unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            required
        })
    };

    let mut generation = 1.0;
    let (mut refused, mut unchanged) = (0.0, 0.0);
    for (i, edit) in edits().into_iter().enumerate() {
        tokio::time::sleep(Duration::from_millis(300)).await;
        h.edit(edit.file, &edit.from, &edit.to);
        let Some(error) = edit.error else {
            generation += 1.0;
            syncflow
                .wait_metric(
                    "syncflow_config_generation",
                    generation,
                    Duration::from_secs(15),
                )
                .await;
            if let Some(version) = edit.version {
                version_in_place.store(version, Ordering::SeqCst);
            }
            println!("edit {:>2} applied: {}", i + 1, edit.what);
            continue;
        };
        refused += 1.0;
        syncflow
            .wait_metric(
                r#"syncflow_config_reloads_total{outcome="refused"}"#,
                refused,
                Duration::from_secs(15),
            )
            .await;
        let at = format!("{}:{}:", edit.file, line_of(&h, edit.file, &edit.to));
        let log = syncflow.log();
        assert!(
            log.lines().any(|l| l.contains(&at) && l.contains(error)),
            "edit {} ({}): no error {error:?} at {at} in the log:\n{log}",
            i + 1,
            edit.what
        );
        assert_eq!(
            metric(&syncflow, "syncflow_config_generation").await,
            generation
        );
        println!("edit {:>2} refused: {} ({at} {error})", i + 1, edit.what);
        // Put the file back: the same config as the one running.
        h.edit(edit.file, &edit.to, &edit.from);
        unchanged += 1.0;
        syncflow
            .wait_metric(
                r#"syncflow_config_reloads_total{outcome="unchanged"}"#,
                unchanged,
                Duration::from_secs(15),
            )
            .await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    publishing.store(false, Ordering::SeqCst);
    let required = publisher.await.unwrap();
    h.wait_settled(Duration::from_secs(60)).await;
    let log = syncflow.log();
    assert!(syncflow.sigterm().success(), "{log}");
    let restarts = log
        .lines()
        .filter(|l| l.contains(r#"restarted=["contacts-to-hubspot"]"#))
        .count();
    assert_eq!(
        restarts, 1,
        "the source change drains and restarts the pipeline:\n{log}"
    );

    let snap = h.crm.snapshot();
    assert!(h.dead_letters().await.is_empty(), "no record may fail");
    // Exactly once: one successful, non-replayed create per key, none missing.
    let mut creates: BTreeMap<usize, Vec<&LoggedRequest>> = BTreeMap::new();
    for r in snap
        .hubspot
        .log
        .iter()
        .filter(|r| r.method == "POST" && (200..300).contains(&r.status))
    {
        let key = r.body["properties"]["firstname"].as_str().unwrap()[1..]
            .parse()
            .unwrap();
        creates.entry(key).or_default().push(r);
    }
    assert_eq!(
        creates.len(),
        required.len(),
        "every record reaches HubSpot"
    );
    for (key, requests) in &creates {
        assert_eq!(
            requests.len(),
            1,
            "key {key} created {} times",
            requests.len()
        );
        assert!(!requests[0].replayed, "key {key} was sent twice");
    }
    assert_eq!(
        snap.salesforce.counters.creates as usize,
        required.len(),
        "every record reaches Salesforce once"
    );

    // Records published after an edit was in place follow it.
    let mut receipts: Vec<(u64, usize)> = Vec::new();
    for (key, requests) in &creates {
        let jobtitle = requests[0].body["properties"]["jobtitle"].as_str().unwrap();
        let version: usize = jobtitle["gen-".len()..].parse().unwrap();
        assert!(
            version >= required[*key],
            "key {key}: mapping gen-{version}, published after gen-{} was in place",
            required[*key]
        );
        receipts.push((requests[0].received_at_us, version));
    }

    // The pause a reload causes: from the last record of the old version to
    // the first of the new (negative: the two overlapped).
    receipts.sort();
    let mut pauses = Vec::new();
    for version in 1..=7 {
        let at = |v: usize| {
            receipts
                .iter()
                .filter(move |(_, rv)| *rv == v)
                .map(|(t, _)| *t as i64)
        };
        // A version can go unseen: one swapped in right after another.
        if let (Some(last_old), Some(first_new)) = (at(version - 1).max(), at(version).min()) {
            pauses.push((first_new - last_old) as f64 / 1000.0);
        }
    }
    let largest_gap = receipts.windows(2).map(|w| w[1].0 - w[0].0).max().unwrap() as f64 / 1000.0;
    println!(
        "{} records, 20 edits; pause old→new version per mapping edit (ms): {pauses:?}; \
         largest gap between two HubSpot deliveries over the run (includes the source change's drain): {largest_gap:.1} ms",
        required.len()
    );
    // Records arrive every few ms; no reload may hold them back for long
    // (a pipeline waiting out ack_wait after a restart would take 30 s).
    assert!(
        largest_gap < 5000.0,
        "deliveries stopped for {largest_gap:.0} ms"
    );
}

/// A reload of another pipeline leaves a pipeline's consumer and its
/// in-flight requests alone: no hand-back, no redelivery, no second request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchanged_pipeline_keeps_its_consumer_and_in_flight_work() {
    let h = Harness::start(MockCrmConfig {
        latency: Duration::from_millis(1500),
        record_log: true,
        ..MockCrmConfig::default()
    })
    .await;
    for provider in ["hubspot", "salesforce"] {
        h.set_rate_limit(provider, 2000, "1s", 50);
    }
    const RECORDS: usize = 20;
    for key in 0..RECORDS {
        let event = json!({"op": "c", "after": {"id": key.to_string(), "email": format!("c{key}@example.com"), "last_name": "L", "company": "acme"}});
        h.publish(
            &format!("cdc.contacts.{key}"),
            &format!("inflight-{key}"),
            event.to_string().as_bytes(),
        )
        .await;
    }
    let mut syncflow = h.spawn();
    syncflow.wait_ready(Duration::from_secs(20)).await;
    // Wait until HubSpot requests are on the wire (each takes 1.5 s).
    let started = std::time::Instant::now();
    while metric(
        &syncflow,
        r#"syncflow_provider_in_flight{provider="hubspot"}"#,
    )
    .await
        < 1.0
    {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no request in flight"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    h.edit(SALESFORCE_PIPELINE, "Email: $.email", "Email: $['email']");
    let reload = second_version_applied(&syncflow).await;
    assert!(
        reload.contains(r#"changed=["contacts-to-salesforce"]"#),
        "{reload}"
    );
    assert!(
        reload.contains("restarted=[]")
            && reload.contains("added=[]")
            && reload.contains("removed=[]"),
        "{reload}"
    );

    h.wait_settled(Duration::from_secs(30)).await;
    for durable in ["contacts-to-hubspot", "contacts-to-salesforce"] {
        let info = h.consumer(durable).await;
        assert_eq!(
            info.num_redelivered, 0,
            "{durable}: nothing handed back or redelivered"
        );
        assert_eq!(
            info.delivered.consumer_sequence, RECORDS as u64,
            "{durable}: each message delivered once"
        );
    }
    let log = syncflow.log();
    let consuming = log
        .lines()
        .filter(|l| l.contains("consuming") && l.contains("contacts-to-hubspot"))
        .count();
    assert_eq!(consuming, 1, "the HubSpot consumer was bound once:\n{log}");
    assert!(syncflow.sigterm().success(), "{log}");
    let snap = h.crm.snapshot();
    assert_eq!(snap.hubspot.counters.creates as usize, RECORDS);
    assert_eq!(snap.hubspot.counters.idempotent_replays, 0);
    assert_eq!(snap.salesforce.counters.creates as usize, RECORDS);
}

/// A removed pipeline drains and stops, leaving its consumer in place; an
/// added one starts on its own consumer and takes the stream from the start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_pipeline_stops_and_an_added_one_starts() {
    let h = Harness::start(MockCrmConfig::default()).await;
    for provider in ["hubspot", "salesforce"] {
        h.set_rate_limit(provider, 2000, "1s", 50);
    }
    let first: Vec<_> = (1..=5).map(common::contacts::created).collect();
    common::contacts::publish_all(&h, &first).await;
    let mut syncflow = h.spawn();
    syncflow.wait_ready(Duration::from_secs(20)).await;
    h.wait_settled(Duration::from_secs(20)).await;

    // Remove the Salesforce pipeline; add a copy of it under another name.
    let dir = h.dir.path().join("pipelines");
    let text = std::fs::read_to_string(dir.join("contacts-to-salesforce.yaml")).unwrap();
    std::fs::remove_file(dir.join("contacts-to-salesforce.yaml")).unwrap();
    let removed = second_version_applied(&syncflow).await;
    assert!(
        removed.contains(r#"removed=["contacts-to-salesforce"]"#),
        "{removed}"
    );
    // Its consumer stays, for when it comes back.
    assert_eq!(h.consumer("contacts-to-salesforce").await.num_pending, 0);

    let second: Vec<_> = (6..=8).map(common::contacts::created).collect();
    common::contacts::publish_all(&h, &second).await;
    let copy = text.replace(
        "name: contacts-to-salesforce",
        "name: contacts-to-salesforce-copy",
    );
    std::fs::write(dir.join("contacts-to-salesforce-copy.yaml"), copy).unwrap();
    syncflow
        .wait_metric("syncflow_config_generation", 3.0, Duration::from_secs(10))
        .await;
    let log = syncflow.log();
    assert!(
        log.contains(r#"added=["contacts-to-salesforce-copy"]"#),
        "{log}"
    );
    h.wait_settled_except(&["contacts-to-salesforce"], Duration::from_secs(20))
        .await;
    // The removed pipeline did not take the later records.
    assert_eq!(h.consumer("contacts-to-salesforce").await.num_pending, 3);
    assert_eq!(
        h.consumer("contacts-to-salesforce-copy")
            .await
            .delivered
            .stream_sequence,
        8
    );
    let snap = h.crm.snapshot();
    assert_eq!(snap.hubspot.counters.creates, 8);
    // Salesforce upserts by our id: the copy re-sent 1..=5 as updates.
    assert_eq!(snap.salesforce.counters.creates, 8);
    assert!(syncflow.sigterm().success(), "{}", syncflow.log());
}

/// A new key path routes records differently: the running pipeline lets
/// what it holds settle, then the new version takes the next records, and
/// none is lost or stuck.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_key_path_takes_over_once_the_lanes_are_empty() {
    let h = Harness::start(MockCrmConfig::default()).await;
    h.remove_pipeline("contacts-to-salesforce");
    h.set_rate_limit("hubspot", 2000, "1s", 50);
    let first: Vec<_> = (1..=10).map(common::contacts::created).collect();
    common::contacts::publish_all(&h, &first).await;
    let mut syncflow = h.spawn();
    syncflow.wait_ready(Duration::from_secs(20)).await;
    h.wait_settled(Duration::from_secs(20)).await;

    // The same field, written another way: another key path.
    h.edit(HUBSPOT_PIPELINE, "key: $.after.id", "key: $['after']['id']");
    syncflow
        .wait_metric("syncflow_config_generation", 2.0, Duration::from_secs(10))
        .await;
    let second: Vec<_> = (11..=30).map(common::contacts::created).collect();
    common::contacts::publish_all(&h, &second).await;
    h.wait_settled(Duration::from_secs(20)).await;
    assert!(h.dead_letters().await.is_empty());
    assert_eq!(h.crm.snapshot().hubspot.counters.creates, 30);
    syncflow
        .wait_log("new version takes over", Duration::from_secs(1))
        .await;
    assert!(syncflow.sigterm().success(), "{}", syncflow.log());
}

/// An https CRM in front of the mock CRM: TLS with a certificate of the
/// given test CA for `localhost`, bytes passed on as they are. `rotate`
/// swaps in another CA's certificate and closes every open connection (as
/// a provider restarted with a new certificate would).
struct TlsFront {
    addr: std::net::SocketAddr,
    acceptor: Arc<std::sync::Mutex<tokio_rustls::TlsAcceptor>>,
    generation: tokio::sync::watch::Sender<u64>,
}

impl TlsFront {
    async fn start(certs: &syncflow_testkit::Certs, backend: std::net::SocketAddr) -> TlsFront {
        let acceptor = Arc::new(std::sync::Mutex::new(Self::acceptor(certs)));
        let (generation, _) = tokio::sync::watch::channel(0u64);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (shared, closing) = (acceptor.clone(), generation.clone());
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let acceptor = shared.lock().unwrap().clone();
                let mut closed = closing.subscribe();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(socket).await else {
                        return;
                    };
                    let Ok(mut plain) = tokio::net::TcpStream::connect(backend).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut tls, &mut plain) => {}
                        _ = closed.changed() => {}
                    }
                });
            }
        });
        TlsFront {
            addr,
            acceptor,
            generation,
        }
    }

    fn acceptor(certs: &syncflow_testkit::Certs) -> tokio_rustls::TlsAcceptor {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let _ = rustls::crypto::ring::default_provider().install_default();
        let chain = CertificateDer::pem_file_iter(&certs.server_cert)
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(&certs.server_key).unwrap();
        let config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    }

    fn rotate(&self, certs: &syncflow_testkit::Certs) {
        *self.acceptor.lock().unwrap() = Self::acceptor(certs);
        self.generation.send_modify(|g| *g += 1);
    }
}

/// A provider's CA file rotated in place (the provider's YAML untouched)
/// is a change: the provider is rebuilt with the new CA, and records reach
/// the provider's new certificate without a restart. Before it was, the
/// running sink kept the old CA until the provider file itself was saved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_ca_rotated_in_place_is_used_without_a_restart() {
    let h = Harness::start(MockCrmConfig::default()).await;
    let (old_certs, new_certs) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let old = syncflow_testkit::Certs::write(old_certs.path()).unwrap();
    let new = syncflow_testkit::Certs::write(new_certs.path()).unwrap();
    let backend = h
        .crm
        .hubspot_url()
        .trim_start_matches("http://")
        .trim_end_matches("/hubspot")
        .parse()
        .unwrap();
    let front = TlsFront::start(&old, backend).await;
    let ca = h.dir.path().join("certs/ca.pem");
    std::fs::create_dir_all(ca.parent().unwrap()).unwrap();
    std::fs::copy(&old.ca, &ca).unwrap();
    h.set_line(
        HUBSPOT_PROVIDER,
        "base_url:",
        &format!(
            "base_url: https://localhost:{}/hubspot\ntls: {{ ca: certs/ca.pem }}",
            front.addr.port()
        ),
    );
    let creates = |n: u64| move |s: &Snapshot| s.hubspot.counters.creates >= n;
    let first: Vec<_> = (1..=5).map(common::contacts::created).collect();
    common::contacts::publish_all(&h, &first).await;
    let mut syncflow = h.spawn();
    syncflow.wait_ready(Duration::from_secs(20)).await;
    h.wait_crm("5 creates", Duration::from_secs(30), creates(5), || {
        syncflow.log()
    })
    .await;

    // The provider's certificate and the CA file change; the YAML does not.
    front.rotate(&new);
    std::fs::copy(&new.ca, &ca).unwrap();
    let reload = second_version_applied(&syncflow).await;
    assert!(
        reload.contains(r#"changed=["contacts-to-hubspot"]"#),
        "{reload}"
    );
    let second: Vec<_> = (6..=10).map(common::contacts::created).collect();
    common::contacts::publish_all(&h, &second).await;
    h.wait_crm("10 creates", Duration::from_secs(30), creates(10), || {
        syncflow.log()
    })
    .await;
    h.wait_settled(Duration::from_secs(30)).await;
    assert!(h.dead_letters().await.is_empty(), "{}", syncflow.log());
    assert!(syncflow.sigterm().success(), "{}", syncflow.log());
    assert_eq!(h.crm.snapshot().hubspot.counters.creates, 10);
}
