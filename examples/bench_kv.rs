//! What one id-map operation costs (`bench/run.sh kv-cost`): nats-server's
//! CPU and the client's, per operation, for the three a create that learns
//! an id makes (bench/README.md, `id-map`).
//!
//! Starts its own nats-server (testkit; `--nats-server PATH` runs another
//! build, e.g. the cluster tests' 2.12), opens the id map as `syncflow run`
//! does, and runs `--count` operations of each kind with 256 in flight:
//! puts of new keys, gets of keys there, gets of keys not there. Each kind
//! runs through syncflow's `IdMap` (whose gets are gathered into batch
//! requests on nats-server 2.11 or later) and through async-nats's
//! `kv::Store` (one request each) on the same bucket, alternating,
//! `--rounds` times. CPU is read from
//! `/proc/<pid>/stat` before and after: the server's, and this process's
//! (the client: its runtime and connection task included).
//!
//! `--server-batches N` also measures the server's own batch operations,
//! N keys or messages a request (nats-server 2.12 or later): atomic batch
//! publishes of new keys, and `multi_last` direct gets of keys there and
//! not there, sent as plain NATS messages. What gathering the id map's
//! operations across records would save (bench/README.md, `kv-cost`).
//!
//! ```text
//! cargo run --release --example bench_kv -- --count 100000
//! ```

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Instant;

use async_nats::jetstream;
use clap::Parser;
use futures::StreamExt;
use syncflow::idmap::{BUCKET, Entry, IdMap, kv_key};
use syncflow_testkit::{NatsServer, temp_dir};

type Error = Box<dyn std::error::Error + Send + Sync>;

#[derive(Parser)]
struct Args {
    /// Operations of each kind per round.
    #[arg(long, default_value_t = 100_000)]
    count: usize,
    /// Rounds of each client, alternating.
    #[arg(long, default_value_t = 2)]
    rounds: u32,
    /// A nats-server binary to run instead of the one on PATH.
    #[arg(long)]
    nats_server: Option<PathBuf>,
    /// Also measure the server's batch operations, this many keys or
    /// messages a request (needs nats-server 2.12 or later).
    #[arg(long)]
    server_batches: Option<usize>,
}

/// Batch requests in flight at once.
const BATCHES_IN_FLIGHT: usize = 4;

const IN_FLIGHT: usize = 256;

#[derive(Clone, Copy, PartialEq)]
enum Client {
    IdMap,
    Store,
    /// The server's batch operations, `--server-batches` keys a request.
    Batches,
}

impl Client {
    /// What the keys this client puts are tagged with: each client of a
    /// round puts keys of its own.
    fn tag(self) -> &'static str {
        match self {
            Client::IdMap => "i",
            Client::Store => "s",
            Client::Batches => "b",
        }
    }
}

/// The `i`th key of `round` an `op` tagged `tag` works on: gets of keys
/// there read what the round's puts of that tag wrote, gets of keys not
/// there keys never written.
fn bench_key(op: Op, round: u32, tag: &str, i: usize) -> String {
    match op {
        Op::Put | Op::GetHit => format!("r{round}{tag}{i}"),
        Op::GetMiss => format!("none{round}{tag}{i}"),
    }
}

/// A bench key's name in the bucket: the id map's own, for the provider
/// `bench` and the object `contact`.
fn bucket_key(key: &str) -> String {
    kv_key("bench", "contact", key)
}

#[derive(Clone, Copy)]
enum Op {
    Put,
    GetHit,
    GetMiss,
}

/// User and system CPU of process `pid` ("self" for this one), in clock ticks.
fn cpu_ticks(pid: &str) -> Result<u64, Error> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The fields after the command name, which is in parentheses.
    let fields: Vec<&str> = stat[stat.rfind(')').ok_or("odd stat")? + 2..]
        .split(' ')
        .collect();
    Ok(fields[11].parse::<u64>()? + fields[12].parse::<u64>()?)
}

/// `/proc` counts CPU time in USER_HZ ticks, 100 a second on Linux
/// whatever the kernel's own tick (`getconf CLK_TCK`).
const TICKS_PER_S: f64 = 100.0;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args = Args::parse();
    let nats = NatsServer::start_program(
        args.nats_server.clone().map(OsString::from),
        temp_dir("nats-server")?,
        Vec::<OsString>::new(),
    )?;
    let server_pid = nats.pid().ok_or("nats-server is not running")?.to_string();
    let client = async_nats::connect(nats.url()).await?;
    let js = jetstream::new(client);
    let idmap = IdMap::open(&js, 1).await?;
    let store = js.get_key_value(BUCKET).await?;
    if args.server_batches.is_some() {
        enable_server_batches(&js).await?;
    }
    let version = std::process::Command::new(
        args.nats_server
            .clone()
            .unwrap_or_else(|| PathBuf::from("nats-server")),
    )
    .arg("--version")
    .output()?;
    println!(
        "== id-map operations: {} of each kind per round, {IN_FLIGHT} in flight, {} ({} cores)",
        args.count,
        String::from_utf8_lossy(&version.stdout).trim(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    let entry = Entry {
        id: Some("98765432101".into()),
        stream: Some("CONTACTS".into()),
        seq: 123_456,
        body: Some("0123456789abcdef".into()),
        ..Entry::default()
    };
    let value: bytes::Bytes = serde_json::to_vec(&entry)?.into();
    let per_op = |ticks: u64, done: usize| ticks as f64 / TICKS_PER_S * 1e6 / done as f64;
    let clients = match args.server_batches {
        Some(_) => &[Client::IdMap, Client::Store, Client::Batches][..],
        None => &[Client::IdMap, Client::Store][..],
    };
    let batch = args.server_batches.unwrap_or(1).max(1);
    for round in 1..=args.rounds {
        for op in [Op::Put, Op::GetHit, Op::GetMiss] {
            for &client in clients {
                let (server0, client0) = (cpu_ticks(&server_pid)?, cpu_ticks("self")?);
                let start = Instant::now();
                let done = match client {
                    Client::Batches => batches(&js, op, round, args.count, batch, &value).await?,
                    Client::IdMap | Client::Store => {
                        let failures = one_by_one(
                            client, op, round, args.count, &idmap, &store, &entry, &value,
                        )
                        .await;
                        if failures > 0 {
                            return Err(format!(
                                "{failures} operations failed or found the wrong thing"
                            )
                            .into());
                        }
                        args.count
                    }
                };
                let rate = done as f64 / start.elapsed().as_secs_f64();
                let server = per_op(cpu_ticks(&server_pid)? - server0, done);
                let own = per_op(cpu_ticks("self")? - client0, done);
                let via = match client {
                    Client::IdMap => "syncflow IdMap".to_string(),
                    Client::Store => "async-nats KV".to_string(),
                    Client::Batches => format!("server batch of {batch}"),
                };
                report(round, op, &via, rate, server, own);
            }
        }
    }
    Ok(())
}

/// `count` operations of kind `op`, one request each, `IN_FLIGHT` at once,
/// through `client` (`IdMap` or `Store`); returns how many failed or found
/// the wrong thing.
/// Each round and client puts its own keys; the gets read the keys the
/// same round's puts wrote (or keys never put).
#[allow(clippy::too_many_arguments)]
async fn one_by_one(
    client: Client,
    op: Op,
    round: u32,
    count: usize,
    idmap: &IdMap,
    store: &jetstream::kv::Store,
    entry: &Entry,
    value: &bytes::Bytes,
) -> usize {
    futures::stream::iter(0..count)
        .map(|i| {
            let key = bench_key(op, round, client.tag(), i);
            let value = value.clone();
            async move {
                let found = match (client, op) {
                    (Client::Store, Op::Put) => store.put(bucket_key(&key), value).await.is_ok(),
                    (Client::Store, _) => store
                        .entry(bucket_key(&key))
                        .await
                        .is_ok_and(|e| e.is_some() == matches!(op, Op::GetHit)),
                    (Client::IdMap, Op::Put) => {
                        idmap.put("bench", "contact", &key, entry).await.is_ok()
                    }
                    (Client::IdMap, _) => idmap
                        .lookup("bench", "contact", &key)
                        .await
                        .is_ok_and(|e| e.is_some() == matches!(op, Op::GetHit)),
                    (Client::Batches, _) => unreachable!("batches go through `batches`"),
                };
                usize::from(!found)
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .fold(0, |sum, failed| async move { sum + failed })
        .await
}

fn report(round: u32, op: Op, via: &str, rate: f64, server: f64, own: f64) {
    let op = match op {
        Op::Put => "put",
        Op::GetHit => "get hit",
        Op::GetMiss => "get miss",
    };
    println!(
        "  round {round}, {op:<9} via {via:<20} {rate:>7.0} ops/s; CPU µs per op: nats-server {server:>5.1}, client {own:>5.1}"
    );
}

/// The bucket's stream, and the subject of a key of the bench's object.
fn stream_name() -> String {
    format!("KV_{BUCKET}")
}

fn key_subject(key: &str) -> String {
    format!("$KV.{BUCKET}.{}", bucket_key(key))
}

/// Atomic batch publishes need nats-server 2.12 and the stream's consent;
/// `multi_last` direct gets need 2.11. An older server would take the batch
/// headers for plain ones and measure single puts: refuse it instead.
async fn enable_server_batches(js: &jetstream::Context) -> Result<(), Error> {
    let version = js.client().server_info().version;
    if syncflow::kv::server_version(&version) < (2, 12) {
        return Err(format!(
            "--server-batches needs nats-server 2.12 or later (atomic batch publishes; \
             multi_last direct gets need 2.11); this one is {version}. The cluster tests' \
             build will do: source scripts/lib.sh && ensure_cluster_nats_server, then \
             --nats-server \"$SYNCFLOW_NATS_CLUSTER_SERVER\""
        )
        .into());
    }
    let mut stream = js.get_stream(stream_name()).await?;
    let mut config = stream.info().await?.config.clone();
    config.allow_atomic_publish = true;
    js.update_stream(config).await?;
    Ok(())
}

/// `count` operations of kind `op` as server batches of `batch`; returns
/// how many were done (whole batches only). Puts write new keys; gets read
/// the keys the same round's `IdMap` puts wrote, or keys never written.
async fn batches(
    js: &jetstream::Context,
    op: Op,
    round: u32,
    count: usize,
    batch: usize,
    value: &bytes::Bytes,
) -> Result<usize, Error> {
    let client = js.client();
    let results: Vec<Result<(), Error>> = futures::stream::iter(0..count / batch)
        .map(|b| {
            let (client, value) = (client.clone(), value.clone());
            async move {
                // Gets of keys there read what the round's `IdMap` put.
                let tag = match op {
                    Op::GetHit => Client::IdMap.tag(),
                    Op::Put | Op::GetMiss => Client::Batches.tag(),
                };
                let keys = (b * batch..(b + 1) * batch)
                    .map(move |i| key_subject(&bench_key(op, round, tag, i)));
                match op {
                    Op::Put => {
                        atomic_put(&client, &format!("r{round}-{b}"), keys, batch, value).await
                    }
                    Op::GetHit => multi_last(&client, keys.collect(), batch).await,
                    Op::GetMiss => multi_last(&client, keys.collect(), 0).await,
                }
            }
        })
        .buffer_unordered(BATCHES_IN_FLIGHT)
        .collect()
        .await;
    results.into_iter().collect::<Result<(), Error>>()?;
    Ok(count / batch * batch)
}

/// One atomic batch (ADR-50): every message carries the batch's id and its
/// place in it, the last one the commit, whose answer is the only one.
async fn atomic_put(
    client: &async_nats::Client,
    id: &str,
    subjects: impl Iterator<Item = String>,
    batch: usize,
    value: bytes::Bytes,
) -> Result<(), Error> {
    for (i, subject) in subjects.enumerate() {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Batch-Id", id);
        headers.insert("Nats-Batch-Sequence", (i + 1).to_string().as_str());
        if i + 1 < batch {
            client
                .publish_with_headers(subject, headers, value.clone())
                .await?;
            continue;
        }
        headers.insert("Nats-Batch-Commit", "1");
        let answer = client
            .send_request(
                subject,
                async_nats::Request::new()
                    .headers(headers)
                    .payload(value.clone()),
            )
            .await?;
        let ack: serde_json::Value = serde_json::from_slice(&answer.payload)?;
        if ack.get("error").is_some() || ack["count"] != batch {
            return Err(format!("batch {id} not stored whole: {ack}").into());
        }
    }
    Ok(())
}

/// One `multi_last` direct get of `subjects`: the server answers each
/// subject it holds with its last message, then an empty one (end of
/// batch, or 404 when it holds none).
async fn multi_last(
    client: &async_nats::Client,
    subjects: Vec<String>,
    expected: usize,
) -> Result<(), Error> {
    let inbox = client.new_inbox();
    let mut answers = client.subscribe(inbox.clone()).await?;
    let request = serde_json::json!({ "multi_last": subjects, "batch": subjects.len() });
    client
        .publish_with_reply(
            format!("$JS.API.DIRECT.GET.{}", stream_name()),
            inbox,
            serde_json::to_vec(&request)?.into(),
        )
        .await?;
    let mut found = 0;
    loop {
        let answer = tokio::time::timeout(std::time::Duration::from_secs(5), answers.next())
            .await?
            .ok_or("answers ended")?;
        if answer.payload.is_empty() {
            break;
        }
        found += 1;
    }
    match found == expected {
        true => Ok(()),
        false => Err(format!(
            "multi_last found {found} of {} keys, expected {expected}",
            subjects.len()
        )
        .into()),
    }
}
