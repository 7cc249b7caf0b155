//! The two-way benchmarks (`bench/run.sh two-way`). Each starts its own
//! nats-server and redis-server (testkit), the mock CRM, the System A
//! stand-in and `syncflow run` on a copy of `examples/two-way`, all on
//! loopback, and prints its figures.
//!
//! - `ingest`: HubSpot-style webhook requests of `--batch` events (100),
//!   each signed (v3), POSTed by `--connections` clients to
//!   `/hooks/hubspot` until `--events` are stored; events/s. No inbound
//!   pipeline runs, so this is the intake alone: signature check, parse,
//!   map to envelopes, JetStream publish with ack. The ceiling, in the same
//!   run: the same envelopes published to JetStream by this process,
//!   as many in flight — what storing them costs with no HTTP and no
//!   signatures.
//! - `latency`: `--records` HubSpot contacts linked to System A, then
//!   `--rate` edits/s (a CRM user's, through the mock's admin API) for
//!   `--duration` s; for each, the time from the edit to its CDC event from
//!   System A (the write applied): p50/p90/p99/max. The mock batches
//!   webhooks as HubSpot does (up to 100 events, 50 ms).
//!
//! ```text
//! cargo run --release --example bench_two_way -- ingest --syncflow target/release/syncflow
//! cargo run --release --example bench_two_way -- latency --syncflow target/release/syncflow
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};
use futures::StreamExt;
use serde_json::{Value, json};
use syncflow_mock_crm::{MockCrm, MockCrmConfig, WebhookConfig, signature_v3};
use syncflow_system_a::{SystemA, SystemAConfig};
use syncflow_testkit::{NatsServer, RedisServer};

type Error = Box<dyn std::error::Error + Send + Sync>;

const SECRET: &str = "bench-app-secret";

#[derive(Parser)]
struct Args {
    /// The syncflow binary (build it with --release).
    #[arg(long, default_value = "target/release/syncflow", global = true)]
    syncflow: PathBuf,
    #[command(subcommand)]
    command: Mode,
}

#[derive(Subcommand)]
enum Mode {
    Ingest {
        #[arg(long, default_value_t = 200_000)]
        events: u64,
        #[arg(long, default_value_t = 100)]
        batch: u64,
        #[arg(long, default_value_t = 16)]
        connections: usize,
    },
    Latency {
        #[arg(long, default_value_t = 1_000)]
        records: usize,
        #[arg(long, default_value_t = 1_000)]
        rate: u64,
        #[arg(long, default_value_t = 20)]
        duration: u64,
    },
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// NATS, Redis, the mock CRM, System A, and syncflow on a config dir.
struct Env {
    nats: NatsServer,
    _redis: RedisServer,
    crm: MockCrm,
    system_a: SystemA,
    _dir: tempfile::TempDir,
    syncflow: Child,
    http: SocketAddr,
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = self.syncflow.kill();
        let _ = self.syncflow.wait();
    }
}

async fn start(binary: &Path, keep: &[&str], webhook: bool) -> Result<Env, Error> {
    let nats = NatsServer::start()?;
    let redis = RedisServer::start()?;
    let system_a = SystemA::start(SystemAConfig {
        nats_url: nats.url(),
        ..SystemAConfig::default()
    })
    .await?;
    let crm = MockCrm::start(MockCrmConfig::default()).await?;
    let http = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    if webhook {
        crm.set_webhook(Some(WebhookConfig::new(
            format!("http://{http}/hooks/hubspot"),
            SECRET,
        )))?;
    }
    let dir = syncflow_testkit::example_config("two-way")?;
    for entry in std::fs::read_dir(dir.path().join("pipelines"))? {
        let path = entry?.path();
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        if !keep.contains(&name.as_str()) {
            std::fs::remove_file(path)?;
        }
    }
    // Unthrottled: the CRM's limit is not what is measured.
    for provider in ["hubspot", "salesforce"] {
        let path = dir.path().join(format!("providers/{provider}.yaml"));
        let text = std::fs::read_to_string(&path)?.replace(
            "rate_limit: { requests: 100, per: 1s, burst: 10 }",
            "rate_limit: { requests: 100000, per: 1s, burst: 1000 }",
        );
        std::fs::write(path, text)?;
    }
    let log = std::fs::File::create(dir.path().join("syncflow.log"))?;
    let syncflow = Command::new(binary)
        .args(["run", "--dir"])
        .arg(dir.path())
        .env("NATS_URL", nats.url())
        .env("REDIS_URL", redis.url())
        .env("HUBSPOT_URL", crm.hubspot_url())
        .env("SALESFORCE_URL", crm.salesforce_url())
        .env("SYSTEM_A_URL", system_a.base_url())
        .env("HUBSPOT_APP_SECRET", SECRET)
        .env("SYNCFLOW_HTTP", http.to_string())
        .env("RUST_LOG", "warn")
        .stdout(log.try_clone()?)
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()?;
    let env = Env {
        nats,
        _redis: redis,
        crm,
        system_a,
        _dir: dir,
        syncflow,
        http,
    };
    let started = Instant::now();
    while !reqwest::get(format!("http://{http}/readyz"))
        .await
        .is_ok_and(|r| r.status() == reqwest::StatusCode::OK)
    {
        if started.elapsed() > Duration::from_secs(30) {
            return Err("syncflow not ready after 30 s".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(env)
}

fn batch_body(first_id: u64, batch: u64) -> Vec<u8> {
    let at = now_ms();
    let events: Vec<Value> = (first_id..first_id + batch)
        .map(|id| {
            json!({"eventId": id, "subscriptionId": 11604522, "portalId": 62515, "appId": 1160452,
                   "occurredAt": at, "subscriptionType": "contact.propertyChange", "attemptNumber": 0,
                   "objectId": 1_000_000 + id % 5000, "changeSource": "CRM_UI",
                   "propertyName": "firstname", "propertyValue": format!("name-{id}")})
        })
        .collect();
    serde_json::to_vec(&events).unwrap()
}

async fn ingest(binary: &Path, events: u64, batch: u64, connections: usize) -> Result<(), Error> {
    let env = start(binary, &["contacts-to-hubspot"], false).await?;
    let url = format!("http://{}/hooks/hubspot", env.http);
    let requests = events / batch;
    let next = Arc::new(AtomicU64::new(0));
    let client = reqwest::Client::new();
    let started = Instant::now();
    let workers: Vec<_> = (0..connections)
        .map(|_| {
            let (next, client, url) = (next.clone(), client.clone(), url.clone());
            tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= requests {
                        return Ok::<_, String>(());
                    }
                    let body = batch_body(n * batch + 1, batch);
                    let ts = now_ms();
                    let signature = signature_v3(SECRET, "POST", &url, &body, ts);
                    let response = client
                        .post(&url)
                        .header("Content-Type", "application/json")
                        .header("X-HubSpot-Signature-v3", signature)
                        .header("X-HubSpot-Request-Timestamp", ts.to_string())
                        .body(body)
                        .send()
                        .await
                        .map_err(|e| e.to_string())?;
                    if response.status() != 200 {
                        return Err(format!("status {}", response.status()));
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await??;
    }
    let took = started.elapsed().as_secs_f64();
    let rate = (requests * batch) as f64 / took;
    let client = async_nats::connect(env.nats.url()).await?;
    let js = async_nats::jetstream::new(client);
    let stored = js
        .get_stream("SYNCFLOW_INBOUND")
        .await?
        .info()
        .await?
        .state
        .messages;

    // The ceiling: the same envelopes straight to JetStream, as many in flight.
    let envelope = |id: u64| {
        serde_json::to_vec(&json!({"provider": "hubspot", "object": "contact", "event_id": format!("ceiling:{id}"),
            "record_id": (1_000_000 + id % 5000).to_string(), "occurred_at": now_ms(), "change": "update",
            "record": {"properties": {"firstname": format!("name-{id}")}}, "source": "webhook"}))
        .unwrap()
    };
    let started = Instant::now();
    let mut pending = futures::stream::FuturesUnordered::new();
    let in_flight = connections as u64 * batch;
    for id in 0..events {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", format!("ceiling:{id}").as_str());
        let ack = js
            .publish_with_headers(
                "syncflow.inbound.hubspot.contact",
                headers,
                envelope(id).into(),
            )
            .await?;
        pending.push(std::future::IntoFuture::into_future(ack));
        if pending.len() as u64 >= in_flight {
            pending.next().await.transpose()?;
        }
    }
    while pending.next().await.transpose()?.is_some() {}
    let ceiling = events as f64 / started.elapsed().as_secs_f64();
    println!(
        "webhook ingest: {} events in {} signed requests of {batch}, {connections} connections",
        requests * batch,
        requests
    );
    println!("  stored in JetStream:   {stored}");
    println!("  ingest:                {rate:.0} events/s ({took:.1} s)");
    println!(
        "  ceiling (JetStream publish of the same envelopes, {in_flight} in flight): {ceiling:.0} events/s"
    );
    println!("  ingest / ceiling:      {:.0}%", 100.0 * rate / ceiling);
    drop(env);
    Ok(())
}

async fn latency(binary: &Path, records: usize, rate: u64, duration: u64) -> Result<(), Error> {
    let env = start(
        binary,
        &["hubspot-to-contacts", "contacts-to-hubspot"],
        true,
    )
    .await?;
    // Contacts born in HubSpot, linked to System A.
    let mut ids = Vec::with_capacity(records);
    for n in 0..records {
        let id = env
            .crm
            .hubspot_user_create(json!({"email": format!("b{n}@example.com"), "firstname": "start", "lastname": format!("L{n}")}))
            .map_err(|e| format!("{e:?}"))?;
        ids.push(id);
    }
    let started = Instant::now();
    while env.system_a.snapshot().records.len() < records {
        if started.elapsed() > Duration::from_secs(120) {
            return Err(format!(
                "only {} of {records} contacts reached System A",
                env.system_a.snapshot().records.len()
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Two taps, each the first time it sees an edit's value: stored =
    // its envelope in SYNCFLOW_INBOUND (the webhook intake); applied =
    // System A's CDC event of syncflow's write carrying it.
    let client = async_nats::connect(env.nats.url()).await?;
    let edited: Edits = Default::default();
    let (stored_tap, stored) = tap(
        client.subscribe("syncflow.inbound.hubspot.contact").await?,
        edited.clone(),
        |event| {
            event["record"]["properties"]["firstname"]
                .as_str()
                .map(str::to_string)
        },
    );
    let (applied_tap, applied) = tap(
        client.subscribe("cdc.contacts.>").await?,
        edited.clone(),
        |event| event["after"]["first_name"].as_str().map(str::to_string),
    );
    let total = rate * duration;
    let tick = Duration::from_secs_f64(1.0 / rate as f64);
    let started = Instant::now();
    for n in 0..total {
        let due = started + tick * n as u32;
        tokio::time::sleep_until(due.into()).await;
        let value = format!("edit-{n}");
        edited.lock().unwrap().insert(value.clone(), Instant::now());
        let id = &ids[n as usize % records];
        env.crm
            .hubspot_user_update(id, json!({"firstname": value}))
            .map_err(|e| format!("{e:?}"))?;
    }
    let offered = total as f64 / started.elapsed().as_secs_f64();
    let deadline = Instant::now() + Duration::from_secs(60);
    while applied.lock().unwrap().len() < total as usize && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stored_tap.abort();
    applied_tap.abort();
    let ms = sorted(&applied);
    println!(
        "edit in HubSpot → applied in System A: {total} edits over {duration} s on {records} contacts"
    );
    println!(
        "  offered:  {offered:.0} edits/s; applied: {} of {total}",
        ms.len()
    );
    println!("  edit → applied:  {}", percentiles(&ms));
    println!(
        "  edit → stored:   {} (the webhook's envelope in JetStream)",
        percentiles(&sorted(&stored))
    );
    println!("  (webhooks batched as HubSpot does: up to 100 events or 50 ms)");
    let snap = env.crm.snapshot();
    println!(
        "  HubSpot writes meanwhile (echoes would show here): {}",
        snap.hubspot.counters.api_writes
    );
    // Where the time went: syncflow's own view, means over the whole run.
    let metrics = reqwest::get(format!("http://{}/metrics", env.http))
        .await?
        .text()
        .await?;
    let mean = |name: &str, label: &str| -> Option<f64> {
        let pick = |suffix: &str| -> f64 {
            metrics
                .lines()
                .filter(|l| l.starts_with(&format!("{name}_{suffix}")) && l.contains(label))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum()
        };
        let count = pick("count");
        (count > 0.0).then(|| pick("sum") / count * 1000.0)
    };
    let shown = |v: Option<f64>| v.map_or("-".to_string(), |ms| format!("{ms:.1} ms"));
    println!(
        "  syncflow, means: System A request {}; inbound pipeline pull → ack {}",
        shown(mean(
            "syncflow_provider_request_seconds",
            "provider=\"system_a\""
        )),
        shown(mean(
            "syncflow_pipeline_ack_latency_seconds",
            "pipeline=\"hubspot-to-contacts\""
        )),
    );
    Ok(())
}

type Edits = Arc<std::sync::Mutex<HashMap<String, Instant>>>;

/// Collects, for each edit whose value `value_of` finds in a message of
/// `subscriber`, the milliseconds from the edit to its first such message.
fn tap(
    mut subscriber: async_nats::Subscriber,
    edited: Edits,
    value_of: fn(&Value) -> Option<String>,
) -> (tokio::task::JoinHandle<()>, Arc<std::sync::Mutex<Vec<f64>>>) {
    let seen: Arc<std::sync::Mutex<Vec<f64>>> = Default::default();
    let task = {
        let seen = seen.clone();
        tokio::spawn(async move {
            let mut done = std::collections::HashSet::new();
            while let Some(msg) = subscriber.next().await {
                let Ok(event) = serde_json::from_slice::<Value>(&msg.payload) else {
                    continue;
                };
                let Some(value) = value_of(&event) else {
                    continue;
                };
                let at = edited.lock().unwrap().get(&value).copied();
                if let Some(at) = at
                    && done.insert(value)
                {
                    seen.lock()
                        .unwrap()
                        .push(at.elapsed().as_secs_f64() * 1000.0);
                }
            }
        })
    };
    (task, seen)
}

fn sorted(ms: &std::sync::Mutex<Vec<f64>>) -> Vec<f64> {
    let mut ms = ms.lock().unwrap().clone();
    ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
    ms
}

fn percentiles(ms: &[f64]) -> String {
    if ms.is_empty() {
        return "none".into();
    }
    let at = |q: f64| ms[((ms.len() as f64 - 1.0) * q).round() as usize];
    format!(
        "p50 {:.0} ms, p90 {:.0} ms, p99 {:.0} ms, max {:.0} ms ({})",
        at(0.5),
        at(0.9),
        at(0.99),
        at(1.0),
        ms.len()
    )
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args = Args::parse();
    match args.command {
        Mode::Ingest {
            events,
            batch,
            connections,
        } => ingest(&args.syncflow, events, batch, connections).await,
        Mode::Latency {
            records,
            rate,
            duration,
        } => latency(&args.syncflow, records, rate, duration).await,
    }
}
