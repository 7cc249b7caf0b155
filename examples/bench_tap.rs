//! The tap benchmark (`bench/run.sh tap`): does a slow `syncflow tap`
//! slow the pipeline it watches?
//!
//! Starts its own nats-server and redis-server (testkit), the mock CRM
//! (unthrottled) and `syncflow run` on `bench/config`, then runs rounds of
//! `--rate` events/s (default 10,000) for `--duration` s, alternating: no
//! tap, then a tap that reads `--tap-bytes-per-s` (default 64 KB/s, a
//! terminal far behind the pipeline). For each round: records/s delivered
//! (published count over the time from the first publish until every
//! record is acked), how long after the last publish the last ack came,
//! and for tapped rounds the decisions the tap printed and the ones it was
//! told were dropped.
//!
//! ```text
//! cargo run --release --example bench_tap -- --syncflow target/release/syncflow
//! ```

#[path = "shared/bench_event.rs"]
mod bench_event;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::jetstream;
use clap::Parser;
use syncflow_mock_crm::{MockCrm, MockCrmConfig};
use syncflow_testkit::{NatsServer, RedisServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type Error = Box<dyn std::error::Error + Send + Sync>;

#[derive(Parser)]
struct Args {
    /// The syncflow binary (build it with --release).
    #[arg(long, default_value = "target/release/syncflow")]
    syncflow: PathBuf,
    /// Events per second offered in each round.
    #[arg(long, default_value_t = 10_000)]
    rate: u64,
    /// Seconds of publishing per round.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Rounds of each kind (no tap, slow tap), alternating.
    #[arg(long, default_value_t = 2)]
    rounds: u32,
    /// How fast the slow tap reads.
    #[arg(long, default_value_t = 64 * 1024)]
    tap_bytes_per_s: u64,
}

const PIPELINE: &str = "bench-contacts";

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args = Args::parse();
    let nats = NatsServer::start()?;
    let redis = RedisServer::start()?;
    let crm = MockCrm::start(MockCrmConfig::default()).await?;
    let client = async_nats::connect(nats.url()).await?;
    let js = jetstream::new(client);
    js.create_stream(jetstream::stream::Config {
        name: "BENCH".into(),
        subjects: vec!["bench.contacts.>".into()],
        ..Default::default()
    })
    .await?;
    let dir = tempfile::tempdir()?;
    syncflow_testkit::copy_tree(Path::new("bench/config"), dir.path())?;
    let http = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let log = std::fs::File::create(dir.path().join("syncflow.log"))?;
    let mut syncflow = Command::new(&args.syncflow)
        .args(["run", "--dir"])
        .arg(dir.path())
        .env("NATS_URL", nats.url())
        .env("REDIS_URL", redis.url())
        .env("CRM_URL", crm.hubspot_url())
        .env("SYNCFLOW_HTTP", http.to_string())
        .env("RUST_LOG", "warn")
        .stdout(log.try_clone()?)
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()?;
    wait_ready(&http.to_string()).await?;
    println!(
        "tap benchmark: {} events/s for {} s per round, slow tap reading {} bytes/s",
        args.rate, args.duration, args.tap_bytes_per_s
    );
    println!("round  tap   records/s  last ack after last publish  tap printed  tap dropped");
    let mut next_id = 1;
    let (mut plain, mut tapped) = (Vec::new(), Vec::new());
    for round in 0..args.rounds * 2 {
        let dropped_before = tap_dropped(&http.to_string()).await?;
        let tap = (round % 2 == 1).then(|| SlowTap::open(http.to_string(), args.tap_bytes_per_s));
        // Let the tap subscribe before the first record.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let count = args.rate * args.duration;
        let (rate, tail) = run_round(&js, &mut next_id, count, args.rate).await?;
        let printed = match tap {
            Some(tap) => tap.close().await,
            None => 0,
        };
        let dropped = tap_dropped(&http.to_string()).await? - dropped_before;
        let label = if round % 2 == 1 { "slow" } else { "none" };
        println!(
            "{:>5}  {label:<4}  {rate:>9.0}  {:>25.0} ms  {printed:>11}  {dropped:>11}",
            round + 1,
            tail.as_secs_f64() * 1000.0
        );
        if round % 2 == 1 {
            &mut tapped
        } else {
            &mut plain
        }
        .push(rate);
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    println!(
        "mean records/s: no tap {:.0}, slow tap {:.0} ({:.1}% of no tap)",
        mean(&plain),
        mean(&tapped),
        100.0 * mean(&tapped) / mean(&plain)
    );
    let _ = syncflow.kill();
    let _ = syncflow.wait();
    Ok(())
}

async fn wait_ready(addr: &str) -> Result<(), Error> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(reply) = http_get_status(addr, "/readyz").await
            && reply.contains(" 200 ")
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err("syncflow not ready after 30 s".into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The whole answer to a GET, head and body.
async fn http_get_status(addr: &str, path: &str) -> std::io::Result<String> {
    let mut tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut buf = Vec::new();
    tcp.read_to_end(&mut buf).await?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// `syncflow_tap_dropped_total` of the pipeline, from `/metrics`.
async fn tap_dropped(addr: &str) -> Result<u64, Error> {
    let metrics = http_get_status(addr, "/metrics").await?;
    let series = format!("syncflow_tap_dropped_total{{pipeline=\"{PIPELINE}\"}} ");
    Ok(metrics
        .lines()
        .find_map(|l| l.strip_prefix(&series))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64))
}

/// Publishes `count` events at `rate`/s; returns records/s (count over the
/// time until the consumer has nothing pending or unacked) and how long the
/// last ack came after the last publish.
async fn run_round(
    js: &jetstream::Context,
    next_id: &mut u64,
    count: u64,
    rate: u64,
) -> Result<(f64, Duration), Error> {
    let started = Instant::now();
    let mut pending = VecDeque::new();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut sent = 0;
    while sent < count {
        tick.tick().await;
        let due = ((started.elapsed().as_secs_f64() * rate as f64) as u64).min(count);
        while sent < due {
            if pending.len() >= 4096 {
                let ack: jetstream::context::PublishAckFuture = pending.pop_front().unwrap();
                ack.await?;
            }
            let event = bench_event::event(*next_id, unix_micros());
            *next_id += 1;
            pending.push_back(js.publish("bench.contacts.c", event.into()).await?);
            sent += 1;
        }
    }
    for ack in pending {
        ack.await?;
    }
    let published = Instant::now();
    let stream = js.get_stream("BENCH").await?;
    loop {
        let mut consumer: jetstream::consumer::PullConsumer = stream.get_consumer(PIPELINE).await?;
        let info = consumer.info().await?;
        if info.num_pending == 0 && info.num_ack_pending == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed();
    Ok((count as f64 / elapsed.as_secs_f64(), published.elapsed()))
}

/// A tap that reads `bytes_per_s`: a raw HTTP stream read in slices every
/// 100 ms, counting the decision lines it read.
struct SlowTap {
    task: tokio::task::JoinHandle<()>,
    printed: Arc<AtomicU64>,
}

impl SlowTap {
    fn open(addr: String, bytes_per_s: u64) -> SlowTap {
        let printed = Arc::new(AtomicU64::new(0));
        let p = printed.clone();
        let task = tokio::spawn(async move {
            let Ok(mut tcp) = tokio::net::TcpStream::connect(&addr).await else {
                return;
            };
            let request = format!("GET /api/tap/{PIPELINE} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
            if tcp.write_all(request.as_bytes()).await.is_err() {
                return;
            }
            let slice = (bytes_per_s / 10).max(1) as usize;
            let mut buf = vec![0; slice];
            let mut line = Vec::new();
            loop {
                let Ok(n) = tcp.read(&mut buf).await else {
                    return;
                };
                if n == 0 {
                    return;
                }
                for &b in &buf[..n] {
                    if b != b'\n' {
                        line.push(b);
                        continue;
                    }
                    if line.starts_with(b"{\"time_ms\"") {
                        p.fetch_add(1, Ordering::Relaxed);
                    }
                    line.clear();
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        SlowTap { task, printed }
    }

    async fn close(self) -> u64 {
        self.task.abort();
        let _ = self.task.await;
        self.printed.load(Ordering::Relaxed)
    }
}

fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}
