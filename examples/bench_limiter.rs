//! The limiter benchmark (`bench/run.sh limiter`): several [`SharedLimiter`]
//! instances (as many syncflow processes would have) share one provider
//! limit in one redis-server. Reports the granted rate, the Redis commands
//! it cost (from `INFO commandstats`, reset at the start) and the busiest
//! windows against the GCRA contract `⌈W/T⌉ + burst`. Prints one JSON object.
//!
//! Demand is either saturating (every instance has `--callers` tasks
//! acquiring in a loop: the limit is the bottleneck, the hardest case for
//! overshoot) or open loop (`--offered`: that many requests per second in
//! all, split evenly, however long each waits).
//!
//! ```text
//! cargo run --release --example bench_limiter -- --redis redis://127.0.0.1:16479 \
//!     [--limit 10000] [--burst 100] [--instances 3] [--duration-secs 10] \
//!     [--callers 64 | --offered 10000]
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use clap::Parser;
use serde_json::json;
use syncflow::limiter::{LimiterMode, RateLimitSpec, SharedLimiter, connect};
use tokio::task::JoinSet;
use tokio::time::Instant;

type Error = Box<dyn std::error::Error + Send + Sync>;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "redis://127.0.0.1:16479")]
    redis: String,
    /// The shared limit, requests per second.
    #[arg(long, default_value_t = 10_000)]
    limit: u32,
    #[arg(long, default_value_t = 100)]
    burst: u32,
    /// Limiter instances sharing the limit (one per syncflow process).
    #[arg(long, default_value_t = 3)]
    instances: usize,
    #[arg(long, default_value_t = 10)]
    duration_secs: u64,
    /// Saturating demand: concurrent acquire loops per instance.
    #[arg(long, default_value_t = 64, conflicts_with = "offered")]
    callers: usize,
    /// Open-loop demand instead: requests per second across all instances.
    #[arg(long)]
    offered: Option<u32>,
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args = Args::parse();
    let spec = RateLimitSpec {
        requests: args.limit,
        per: Duration::from_secs(1),
        burst: args.burst,
    };
    let mut admin = redis::Client::open(args.redis.as_str())?
        .get_multiplexed_async_connection()
        .await?;
    let _: () = redis::cmd("FLUSHALL").query_async(&mut admin).await?;
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut admin)
        .await?;

    let instances = (0..args.instances)
        .map(|_| SharedLimiter::new(connect(&args.redis)?, "bench", spec))
        .collect::<Result<Vec<_>, _>>()?;
    let run = Duration::from_secs(args.duration_secs);
    let origin = Instant::now();
    let until = origin + run;
    let mut per_instance = Vec::new();
    for (i, limiter) in instances.iter().enumerate() {
        per_instance.push(match args.offered {
            None => saturate(limiter, args.callers, origin, until),
            Some(offered) => {
                // An even split that adds up to `offered` exactly.
                let n = args.instances as u32;
                let share = offered / n + u32::from((i as u32) < offered % n);
                open_loop(limiter, share, origin, until)
            }
        });
    }
    let mut grants: Vec<(Duration, Duration)> = Vec::new();
    let mut shares = Vec::new();
    for tasks in per_instance {
        let granted: Vec<_> = tasks.join_all().await.into_iter().flatten().collect();
        shares.push(granted.len());
        grants.extend(granted);
    }
    let elapsed = origin.elapsed();
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut admin)
        .await?;
    let modes: Vec<&str> = instances
        .iter()
        .map(|l| match l.mode() {
            LimiterMode::Shared => "shared",
            LimiterMode::Local => "local",
        })
        .collect();

    let mut starts: Vec<Duration> = grants.iter().map(|g| g.1).collect();
    starts.sort();
    let mut waits: Vec<Duration> = grants.iter().map(|g| g.0).collect();
    waits.sort();
    let requests = starts.len() as u64;
    let in_run = starts.iter().filter(|&&t| t <= run).count();
    let commands = command_calls(&info);
    let script_calls: u64 = commands
        .iter()
        .filter(|(name, _)| name.starts_with("eval") || name.starts_with("fcall"))
        .map(|(_, calls)| calls)
        .sum();
    let all_calls: u64 = commands.values().sum();
    let per_s = |n: u64| n as f64 / elapsed.as_secs_f64();
    let windows: Vec<_> = [1000, 100, 10]
        .into_iter()
        .map(|ms| {
            let w = Duration::from_millis(ms);
            let (busiest, bound) = (max_in_window(&starts, w), window_bound(w, &spec));
            json!({"window_ms": ms, "busiest": busiest, "bound": bound,
                   "overshoot": busiest.saturating_sub(bound)})
        })
        .collect();
    let whole_seconds = aligned_seconds(&starts, run);
    let report = json!({
        "limit_per_s": args.limit,
        "burst": args.burst,
        "instances": args.instances,
        "demand": match args.offered {
            None => json!({"saturating_callers_per_instance": args.callers}),
            Some(offered) => json!({"offered_per_s": offered}),
        },
        "duration_s": run.as_secs_f64(),
        "requests": requests,
        "granted_per_s": in_run as f64 / run.as_secs_f64(),
        "shares": shares,
        "modes": modes,
        "wait_p50_ms": quantile(&waits, 0.5).as_secs_f64() * 1e3,
        "wait_p99_ms": quantile(&waits, 0.99).as_secs_f64() * 1e3,
        "wait_max_ms": waits.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
        "redis": {
            "script_calls": script_calls,
            "script_calls_per_s": per_s(script_calls),
            "requests_per_script_call": requests as f64 / script_calls.max(1) as f64,
            "commands": all_calls,
            "commands_per_s": per_s(all_calls),
            "requests_per_command": requests as f64 / all_calls.max(1) as f64,
            "by_command": commands,
        },
        "sliding_windows": windows,
        "aligned_seconds": whole_seconds,
        "aligned_seconds_over_limit": whole_seconds.iter().filter(|&&n| n > args.limit as usize).count(),
    });
    println!("{report}");
    Ok(())
}

/// `callers` loops acquiring back to back until `until`; each returns its
/// grants as (wait, start since `origin`).
fn saturate(
    limiter: &SharedLimiter,
    callers: usize,
    origin: Instant,
    until: Instant,
) -> JoinSet<Vec<(Duration, Duration)>> {
    let mut tasks = JoinSet::new();
    for _ in 0..callers {
        let limiter = limiter.clone();
        tasks.spawn(async move {
            let mut grants = Vec::new();
            while Instant::now() < until {
                let wait = limiter.acquire().await.expect("limiter stopped");
                grants.push((wait, origin.elapsed()));
            }
            grants
        });
    }
    tasks
}

/// One acquire every `1/rate` until `until`, however long earlier ones wait.
fn open_loop(
    limiter: &SharedLimiter,
    rate: u32,
    origin: Instant,
    until: Instant,
) -> JoinSet<Vec<(Duration, Duration)>> {
    let limiter = limiter.clone();
    let mut tasks = JoinSet::new();
    tasks.spawn(async move {
        let mut requests = JoinSet::new();
        let interval = Duration::from_secs(1) / rate.max(1);
        let mut sent = 0u32;
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        while tick.tick().await < until {
            // Catch up with the schedule: ticks are 1 ms, requests more often.
            while origin + interval * sent <= Instant::now() {
                let limiter = limiter.clone();
                requests.spawn(async move {
                    let wait = limiter.acquire().await.expect("limiter stopped");
                    (wait, origin.elapsed())
                });
                sent += 1;
            }
        }
        requests.join_all().await
    });
    tasks
}

/// `cmdstat_NAME:calls=N,...` lines of `INFO commandstats`, less the
/// benchmark's own INFO and CONFIG.
fn command_calls(info: &str) -> BTreeMap<String, u64> {
    info.lines()
        .filter_map(|line| {
            let (name, stats) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = stats
                .strip_prefix("calls=")?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            Some((name.to_owned(), calls))
        })
        .filter(|(name, _)| !name.starts_with("info") && !name.starts_with("config"))
        .collect()
}

/// The most `starts` (sorted) in any closed window of length `w`.
fn max_in_window(starts: &[Duration], w: Duration) -> usize {
    let mut first = 0;
    let mut most = 0;
    for (last, &end) in starts.iter().enumerate() {
        while starts[first] + w < end {
            first += 1;
        }
        most = most.max(last + 1 - first);
    }
    most
}

/// The contract: at most `⌈W/T⌉ + burst` starts in any window `W`.
fn window_bound(w: Duration, spec: &RateLimitSpec) -> usize {
    let cells = (w.as_nanos() * u128::from(spec.requests)).div_ceil(spec.per.as_nanos());
    cells as usize + spec.burst as usize
}

/// Starts in each whole second of the run, counted from its start.
fn aligned_seconds(starts: &[Duration], run: Duration) -> Vec<usize> {
    let mut seconds = vec![0; run.as_secs() as usize];
    for start in starts {
        if let Some(n) = seconds.get_mut(start.as_secs() as usize) {
            *n += 1;
        }
    }
    seconds
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}
