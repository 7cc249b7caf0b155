//! The benchmark's load generator (`bench/run.sh`): publishes contact events
//! to JetStream, either preloaded as fast as the server takes them or at a
//! fixed offered rate, and waits until the pipeline's consumer has acked
//! them all. Every command prints one JSON object on stdout for the script.
//!
//! Each event carries `after.sent_at_us`, the wall-clock time (µs since the
//! Unix epoch) just before it was published; the benchmark pipeline maps it
//! into the request body and the mock CRM's latency probe measures
//! publish → receipt from it.
//!
//! ```text
//! cargo run --release --example bench_load -- --nats nats://127.0.0.1:14322 setup
//! cargo run --release --example bench_load -- preload --count 200000
//! cargo run --release --example bench_load -- paced --rate 5000 --duration-secs 20 \
//!     --warmup-secs 3 --reset-url http://127.0.0.1:18180/_admin/latency/reset
//! cargo run --release --example bench_load -- wait --durable bench-contacts
//! ```

use std::collections::VecDeque;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, context::PublishAckFuture};
use clap::{Parser, Subcommand};
use serde_json::json;

#[path = "shared/bench_event.rs"]
mod bench_event;
use bench_event::event_of_size;

type Error = Box<dyn std::error::Error + Send + Sync>;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "nats://127.0.0.1:14322", global = true)]
    nats: String,
    /// The stream the benchmark pipeline reads.
    #[arg(long, default_value = "BENCH", global = true)]
    stream: String,
    /// Subject of every event (the pipeline reads `bench.contacts.>`).
    #[arg(long, default_value = "bench.contacts.c", global = true)]
    subject: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// (Re)create the stream, empty.
    Setup,
    /// Publish COUNT events as fast as JetStream acknowledges them.
    Preload {
        #[arg(long, default_value_t = 200_000)]
        count: u64,
        /// Publishes awaiting their JetStream ack at once.
        #[arg(long, default_value_t = 4096)]
        max_pending: usize,
        /// Pad each event to about this many bytes (an unmapped text field).
        #[arg(long, default_value_t = 0)]
        record_bytes: usize,
    },
    /// Publish at a fixed rate (open loop: a slow consumer does not slow it).
    Paced {
        /// Events per second.
        #[arg(long, default_value_t = 5000)]
        rate: u64,
        /// Measured time, after the warm-up.
        #[arg(long, default_value_t = 20)]
        duration_secs: u64,
        /// Published before the measurement starts (connections, caches).
        #[arg(long, default_value_t = 3)]
        warmup_secs: u64,
        /// POSTed once the warm-up ends: the mock CRM's latency reset.
        #[arg(long)]
        reset_url: Option<String>,
        #[arg(long, default_value_t = 4096)]
        max_pending: usize,
    },
    /// Accounts (issue 14): FLOOD events of account t0 at once, without a
    /// send time, then the other ACCOUNTS − 1 accounts at RATE events per
    /// second each, round robin, with one, for WARMUP + DURATION seconds;
    /// the CRM's latency probe is reset when the warm-up ends. Events carry
    /// `after.tenant`.
    Accounts {
        #[arg(long, default_value_t = 200)]
        accounts: u64,
        #[arg(long, default_value_t = 50_000)]
        flood: u64,
        #[arg(long, default_value_t = 5)]
        rate: u64,
        #[arg(long, default_value_t = 30)]
        duration_secs: u64,
        #[arg(long, default_value_t = 3)]
        warmup_secs: u64,
        #[arg(long)]
        reset_url: Option<String>,
        #[arg(long, default_value_t = 4096)]
        max_pending: usize,
    },
    /// Wait until DURABLE has acked every message in the stream (and,
    /// with EMPTY_STREAM, until that stream holds no message: a fleet's
    /// partitions, a work queue emptied as records are delivered).
    Wait {
        #[arg(long, default_value = "bench-contacts")]
        durable: String,
        #[arg(long)]
        empty_stream: Option<String>,
        #[arg(long, default_value_t = 600)]
        timeout_secs: u64,
    },
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args = Args::parse();
    let client = async_nats::ConnectOptions::new()
        .name("bench_load")
        .connect(&args.nats)
        .await?;
    let js = jetstream::new(client.clone());
    let report = match args.command {
        Command::Setup => setup(&js, &args.stream).await?,
        Command::Preload {
            count,
            max_pending,
            record_bytes,
        } => {
            let mut publisher = Publisher::new(&js, &args.subject, max_pending);
            publisher.record_bytes = record_bytes;
            let started = Instant::now();
            let started_at_us = unix_micros();
            for _ in 0..count {
                publisher.publish().await?;
            }
            publisher.flush().await?;
            let seconds = started.elapsed().as_secs_f64();
            json!({
                "published": count,
                "seconds": seconds,
                "rate_per_s": count as f64 / seconds,
                "started_at_us": started_at_us,
                "finished_at_us": unix_micros(),
            })
        }
        Command::Paced {
            rate,
            duration_secs,
            warmup_secs,
            reset_url,
            max_pending,
        } => {
            let mut publisher = Publisher::new(&js, &args.subject, max_pending);
            paced(
                &mut publisher,
                rate,
                Duration::from_secs(warmup_secs),
                Duration::from_secs(duration_secs),
                reset_url.as_deref(),
            )
            .await?
        }
        Command::Accounts {
            accounts,
            flood,
            rate,
            duration_secs,
            warmup_secs,
            reset_url,
            max_pending,
        } => {
            let mut publisher = Publisher::new(&js, &args.subject, max_pending);
            publisher.accounts = Some((accounts.max(2), true));
            let started = Instant::now();
            for _ in 0..flood {
                publisher.publish().await?;
            }
            publisher.flush().await?;
            let flood_s = started.elapsed().as_secs_f64();
            publisher.accounts = Some((accounts.max(2), false));
            let mut report = paced(
                &mut publisher,
                rate * (accounts.max(2) - 1),
                Duration::from_secs(warmup_secs),
                Duration::from_secs(duration_secs),
                reset_url.as_deref(),
            )
            .await?;
            report["flood"] = json!(flood);
            report["flood_published_s"] = json!(flood_s);
            report
        }
        Command::Wait {
            durable,
            empty_stream,
            timeout_secs,
        } => {
            wait(
                &js,
                &args.stream,
                &durable,
                empty_stream.as_deref(),
                Duration::from_secs(timeout_secs),
            )
            .await?
        }
    };
    client.flush().await?;
    println!("{report}");
    Ok(())
}

async fn setup(js: &jetstream::Context, stream: &str) -> Result<serde_json::Value, Error> {
    let _ = js.delete_stream(stream).await;
    js.create_stream(jetstream::stream::Config {
        name: stream.to_owned(),
        subjects: vec!["bench.contacts.>".into()],
        storage: jetstream::stream::StorageType::File,
        ..Default::default()
    })
    .await?;
    Ok(json!({"stream": stream}))
}

/// Publishes numbered events with at most `max_pending` unacknowledged, so
/// the publisher never outruns JetStream by more than that.
struct Publisher<'a> {
    js: &'a jetstream::Context,
    /// Cheap to clone, unlike a `String` per publish.
    subject: async_nats::Subject,
    max_pending: usize,
    pending: VecDeque<PublishAckFuture>,
    next_id: u64,
    /// Events padded to about this size; 0: as they are.
    record_bytes: usize,
    /// Events of accounts (`after.tenant`): (how many accounts, whether this
    /// is account t0's flood, without send times; else t1.. in turn).
    accounts: Option<(u64, bool)>,
}

impl<'a> Publisher<'a> {
    fn new(js: &'a jetstream::Context, subject: &str, max_pending: usize) -> Self {
        Publisher {
            js,
            subject: async_nats::Subject::from(subject),
            max_pending: max_pending.max(1),
            pending: VecDeque::new(),
            next_id: 1,
            record_bytes: 0,
            accounts: None,
        }
    }

    async fn publish(&mut self) -> Result<(), Error> {
        if self.pending.len() >= self.max_pending {
            if let Some(ack) = self.pending.pop_front() {
                ack.await?;
            }
        }
        let mut event = event_of_size(self.next_id, unix_micros(), self.record_bytes);
        if let Some((accounts, flood)) = self.accounts {
            let tenant = match flood {
                true => 0,
                false => 1 + self.next_id % (accounts - 1),
            };
            event = with_tenant(&event, tenant, flood);
        }
        self.next_id += 1;
        let ack = self.js.publish(self.subject.clone(), event.into()).await?;
        self.pending.push_back(ack);
        Ok(())
    }

    /// Waits for every outstanding acknowledgment.
    async fn flush(&mut self) -> Result<(), Error> {
        while let Some(ack) = self.pending.pop_front() {
            ack.await?;
        }
        Ok(())
    }
}

/// Publishes `rate` events per second for `warmup + duration`; resets the
/// CRM's latency probe when the warm-up ends. Reports how far the publisher
/// fell behind its schedule, since latency measured from a late publish
/// would hide the delay (coordinated omission).
async fn paced(
    publisher: &mut Publisher<'_>,
    rate: u64,
    warmup: Duration,
    duration: Duration,
    reset_url: Option<&str>,
) -> Result<serde_json::Value, Error> {
    let http = reset_url.map(|_| reqwest::Client::new());
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let started = Instant::now();
    let end = warmup + duration;
    let (mut sent, mut measured_from) = (0u64, None);
    let mut max_lag = Duration::ZERO;
    loop {
        tick.tick().await;
        let elapsed = started.elapsed();
        if measured_from.is_none() && elapsed >= warmup {
            if let (Some(http), Some(url)) = (&http, reset_url) {
                http.post(url).send().await?.error_for_status()?;
            }
            measured_from = Some(sent);
        }
        if elapsed >= end {
            break;
        }
        let due = (elapsed.as_secs_f64() * rate as f64) as u64;
        while sent < due {
            let scheduled = Duration::from_secs_f64(sent as f64 / rate as f64);
            max_lag = max_lag.max(started.elapsed().saturating_sub(scheduled));
            publisher.publish().await?;
            sent += 1;
        }
    }
    publisher.flush().await?;
    let measured = sent - measured_from.unwrap_or(0);
    Ok(json!({
        "rate": rate,
        "published": sent,
        "measured": measured,
        "measured_rate_per_s": measured as f64 / duration.as_secs_f64(),
        "max_lag_ms": max_lag.as_secs_f64() * 1e3,
    }))
}

/// Polls the consumer until it exists and has nothing pending or unacked
/// while its ack floor has reached the stream's last message.
async fn wait(
    js: &jetstream::Context,
    stream: &str,
    durable: &str,
    empty_stream: Option<&str>,
    timeout: Duration,
) -> Result<serde_json::Value, Error> {
    let started = Instant::now();
    let stream = js.get_stream(stream).await?;
    // The ack floor over time (µs, floor), for the sustained rate.
    let mut floors: Vec<(u64, u64)> = Vec::new();
    loop {
        let last_seq = stream.get_info().await?.state.last_sequence;
        if let Ok(info) = stream.consumer_info(durable).await {
            floors.push((unix_micros(), info.ack_floor.stream_sequence));
            let emptied = match empty_stream {
                None => true,
                Some(name) => match js.get_stream(name).await {
                    Ok(mut s) => s.info().await.is_ok_and(|i| i.state.messages == 0),
                    Err(_) => false,
                },
            };
            if info.num_pending == 0
                && info.num_ack_pending == 0
                && info.ack_floor.stream_sequence >= last_seq
                && emptied
            {
                return Ok(json!({
                    "settled_at_us": unix_micros(),
                    "waited_s": started.elapsed().as_secs_f64(),
                    "ack_floor_stream_seq": info.ack_floor.stream_sequence,
                    "last_stream_seq": last_seq,
                    "redelivered": info.num_redelivered,
                    "sustained_per_s": sustained_rate(&floors, last_seq),
                }));
            }
        }
        if started.elapsed() > timeout {
            return Err(format!("consumer {durable} not settled after {timeout:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Records acked per second while the ack floor went from 10% to 90% of
/// `last` (past the start-up, before the last requests and a batch's
/// `max_wait` at the end); 0 when the samples are too few to tell.
fn sustained_rate(floors: &[(u64, u64)], last: u64) -> f64 {
    let first_at = |share: u64| floors.iter().find(|(_, floor)| *floor * 10 >= last * share);
    match (first_at(1), first_at(9)) {
        (Some(&(t0, f0)), Some(&(t1, f1))) if t1 > t0 => {
            (f1 - f0) as f64 / ((t1 - t0) as f64 / 1e6)
        }
        _ => 0.0,
    }
}

/// The event with `after.tenant` set to `t<tenant>`; without its send time
/// for a flood (the CRM's latency probe then counts it apart).
fn with_tenant(event: &str, tenant: u64, flood: bool) -> String {
    let mut value: serde_json::Value =
        serde_json::from_str(event).expect("the bench event is JSON");
    let after = value["after"].as_object_mut().expect("after is an object");
    after.insert("tenant".into(), json!(format!("t{tenant}")));
    if flood {
        after.remove("sent_at_us");
    }
    value.to_string()
}

fn unix_micros() -> u64 {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since_epoch.as_micros()).unwrap_or(u64::MAX)
}
