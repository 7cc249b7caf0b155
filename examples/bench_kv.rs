//! What one id-map operation costs (`bench/run.sh kv-cost`): nats-server's
//! CPU and the client's, per operation, for the three a create that learns
//! an id makes (bench/README.md, `id-map`).
//!
//! Starts its own nats-server (testkit; `--nats-server PATH` runs another
//! build, e.g. the cluster tests' 2.12), opens the id map as `syncflow run`
//! does, and runs `--count` operations of each kind with 256 in flight:
//! puts of new keys, gets of keys there, gets of keys not there. Each kind
//! runs through syncflow's `IdMap` and through async-nats's `kv::Store` on
//! the same bucket, alternating, `--rounds` times. CPU is read from
//! `/proc/<pid>/stat` before and after: the server's, and this process's
//! (the client: its runtime and connection task included).
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
use syncflow::idmap::{BUCKET, Entry, IdMap};
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
}

const IN_FLIGHT: usize = 256;

#[derive(Clone, Copy, PartialEq)]
enum Client {
    IdMap,
    Store,
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
    let per_op = |ticks: u64| ticks as f64 / TICKS_PER_S * 1e6 / args.count as f64;
    for round in 1..=args.rounds {
        for op in [Op::Put, Op::GetHit, Op::GetMiss] {
            for client in [Client::IdMap, Client::Store] {
                // Each round and client puts its own keys; the gets read
                // the keys the same round's puts wrote (or keys never put).
                let tag = match client {
                    Client::IdMap => "i",
                    Client::Store => "s",
                };
                let (server0, client0) = (cpu_ticks(&server_pid)?, cpu_ticks("self")?);
                let start = Instant::now();
                let failures = futures::stream::iter(0..args.count)
                    .map(|i| {
                        let key = match op {
                            Op::Put | Op::GetHit => format!("r{round}{tag}{i}"),
                            Op::GetMiss => format!("none{round}{tag}{i}"),
                        };
                        let (idmap, store, entry, value) = (&idmap, &store, &entry, value.clone());
                        async move {
                            let found = match (client, op) {
                                (Client::IdMap, Op::Put) => {
                                    idmap.put("bench", "contact", &key, entry).await.is_ok()
                                }
                                (Client::IdMap, _) => idmap
                                    .lookup("bench", "contact", &key)
                                    .await
                                    .is_ok_and(|e| e.is_some() == matches!(op, Op::GetHit)),
                                (Client::Store, Op::Put) => store
                                    .put(format!("bench.contact.{key}"), value)
                                    .await
                                    .is_ok(),
                                (Client::Store, _) => store
                                    .entry(format!("bench.contact.{key}"))
                                    .await
                                    .is_ok_and(|e| e.is_some() == matches!(op, Op::GetHit)),
                            };
                            usize::from(!found)
                        }
                    })
                    .buffer_unordered(IN_FLIGHT)
                    .fold(0, |sum, failed| async move { sum + failed })
                    .await;
                let secs = start.elapsed().as_secs_f64();
                let server = per_op(cpu_ticks(&server_pid)? - server0);
                let own = per_op(cpu_ticks("self")? - client0);
                if failures > 0 {
                    return Err(
                        format!("{failures} operations failed or found the wrong thing").into(),
                    );
                }
                println!(
                    "  round {round}, {:<9} via {:<15} {:>7.0} ops/s; CPU µs per op: nats-server {server:>5.1}, client {own:>5.1}",
                    match op {
                        Op::Put => "put",
                        Op::GetHit => "get hit",
                        Op::GetMiss => "get miss",
                    },
                    match client {
                        Client::IdMap => "syncflow IdMap",
                        Client::Store => "async-nats KV",
                    },
                    args.count as f64 / secs,
                );
            }
        }
    }
    Ok(())
}
