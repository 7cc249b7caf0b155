//! The limiter's timing, exactly: real limiters (the driver and its state
//! machine) over a fake Redis (`sim.rs`) in paused time. Every figure here is
//! the same on every run and every machine, so the bounds are the contract's
//! own, not generous ones.

use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::time::Instant;

use super::core::FALLBACK_DELAY;
use super::gcra::{Exactness, Schedule};
use super::redis::HORIZON;
use super::sim::{
    Callers, FakeRedis, fleet, gcra_refusals, max_in_half_open_window, max_in_window, paced,
    per_second, run_callers, sustained, window_bound,
};
use super::{LimiterMode, RateLimitSpec, SharedLimiter};

const MS: Duration = Duration::from_millis(1);

/// A Redis a fraction of a millisecond away, as on a LAN.
fn lan_redis(seed: u64) -> std::sync::Arc<FakeRedis> {
    let redis = FakeRedis::new(seed);
    redis.set_latency(Duration::from_micros(300), Duration::from_micros(700));
    redis
}

/// Callers like the HTTP sink's: a request takes 30 ms, and a busy runtime
/// starts it up to 2 ms after its cell was granted.
fn sink_like(per_instance: usize) -> Callers {
    Callers {
        per_instance,
        start_jitter: 2 * MS,
        request_time: 30 * MS,
    }
}

/// `fleet` with its metrics in a recorder of its own.
fn fleet_with_metrics(
    redis: &std::sync::Arc<FakeRedis>,
    spec: RateLimitSpec,
    n: usize,
) -> (Vec<SharedLimiter>, PrometheusHandle) {
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let instances = metrics::with_local_recorder(&recorder, || fleet(redis, spec, n));
    (instances, handle)
}

fn metric(rendered: &str, name: &str) -> f64 {
    rendered
        .lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Checks a GCRA-exact schedule's contract: a provider enforcing `spec`
/// refuses none, so no window is over `⌊W/T⌋ + burst`.
fn assert_gcra_exact(starts: &[Duration], spec: &RateLimitSpec) {
    assert_eq!(gcra_refusals(starts, spec), 0, "starts a GCRA would refuse");
    let t = spec.interval();
    for w in [t, t * 10, spec.per] {
        let (seen, bound) = (max_in_window(starts, w), window_bound(w, spec));
        assert!(
            seen <= bound,
            "{seen} starts in a {w:?} window, bound {bound}"
        );
    }
}

/// Low limits at burst 1, the way operators write real CRM quotas: at least
/// 95% of the limit, and never more than `requests` in any window of `per`,
/// with one instance or three.
#[tokio::test(start_paused = true)]
async fn low_limits_at_burst_1_reach_95_percent_and_never_exceed_the_window() {
    let mut table = Vec::new();
    for requests in [10, 20, 100] {
        for instances in [1, 3] {
            let spec = per_second(requests, 1);
            assert_eq!(Schedule::new(&spec).exactness, Exactness::Window);
            let redis = lan_redis(u64::from(requests));
            let (fleet, metrics) = fleet_with_metrics(&redis, spec, instances);
            let run = Duration::from_secs(30);
            let starts = run_callers(&fleet, sink_like(4), run, 7).await;
            let rate = sustained(&starts, Duration::from_secs(2), run) / f64::from(requests);
            let busiest = max_in_half_open_window(&starts, spec.per);
            let calls = redis.calls() as f64 / starts.len() as f64;
            let expired = metric(&metrics.render(), "syncflow_limiter_wasted_cells_total");
            table.push(format!(
                "{requests}/s burst 1, {instances} instance(s): {:.1}% of the limit, \
                 busiest second {busiest}, {calls:.2} Redis calls per request, {expired} cells wasted",
                rate * 100.0
            ));
            assert!(rate >= 0.95, "{}", table.last().unwrap());
            assert!(busiest <= requests as usize, "{}", table.last().unwrap());
        }
    }
    println!("{}", table.join("\n"));
}

/// A roomy burst keeps the stricter promise at every window length, with
/// leases that cost less than one Redis call per 20 requests.
#[tokio::test(start_paused = true)]
async fn three_instances_share_a_fast_limit_exactly_with_few_calls() {
    let spec = per_second(2000, 20);
    let redis = lan_redis(3);
    let instances = fleet(&redis, spec, 3);
    let callers = Callers {
        per_instance: 32,
        start_jitter: 500 * Duration::from_micros(1),
        request_time: 5 * MS,
    };
    let run = Duration::from_secs(5);
    let starts = run_callers(&instances, callers, run, 11).await;
    let rate = sustained(&starts, Duration::from_secs(1), run);
    let per_call = starts.len() as f64 / redis.calls() as f64;
    println!("2000/s burst 20, 3 instances: {rate:.0}/s, 1 Redis call per {per_call:.0} requests");
    assert_gcra_exact(&starts, &spec);
    assert!(rate >= 0.95 * 2000.0, "{rate:.0}/s");
    assert!(per_call > 20.0, "1 call per {per_call:.1} requests");
    assert!(instances.iter().all(|l| l.mode() == LimiterMode::Shared));
}

#[tokio::test(start_paused = true)]
async fn a_caller_that_gives_up_does_not_use_up_a_cell() {
    let redis = lan_redis(1);
    let [limiter] = <[SharedLimiter; 1]>::try_from(fleet(&redis, per_second(5, 2), 1)).unwrap();
    let started = Instant::now();
    limiter.acquire().await.unwrap();
    limiter.acquire().await.unwrap();
    // The burst is spent; the next cell conforms at 2·200 ms less the 175 ms
    // of tolerance the 25 ms lateness budget leaves (gcra.rs). This caller
    // leaves at 50 ms, and the next one gets that cell.
    let impatient = tokio::time::timeout(50 * MS, limiter.acquire()).await;
    assert!(impatient.is_err());
    limiter.acquire().await.unwrap();
    let took = started.elapsed();
    assert!((225 * MS..230 * MS).contains(&took), "{took:?}");
}

#[tokio::test(start_paused = true)]
async fn starts_on_the_local_limit_when_redis_is_down() {
    let redis = lan_redis(1);
    redis.set_down(true);
    let [limiter] = <[SharedLimiter; 1]>::try_from(fleet(&redis, per_second(10, 2), 1)).unwrap();
    let started = Instant::now();
    for _ in 0..3 {
        limiter.acquire().await.unwrap();
    }
    assert_eq!(limiter.mode(), LimiterMode::Local);
    // One failed call, then 10/s locally with no burst in hand: the third
    // start is two intervals after the first.
    let took = started.elapsed();
    assert!((200 * MS..205 * MS).contains(&took), "{took:?}");
}

/// Three instances request as fast as they can while Redis goes away and
/// comes back empty (a restart loses the TAT): together they stay within
/// the limit at every window, each says so in its mode, and each keeps its
/// share while local.
#[tokio::test(start_paused = true)]
async fn an_outage_and_a_restart_keep_the_fleet_within_the_limit() {
    // Burst 30 over 3: each local share has a burst of its own (local.rs).
    let spec = per_second(200, 30);
    let redis = lan_redis(5);
    let (instances, metrics) = fleet_with_metrics(&redis, spec, 3);
    for limiter in &instances {
        limiter.acquire().await.unwrap();
    }
    let origin = Instant::now();
    let outage = {
        let redis = std::sync::Arc::clone(&redis);
        tokio::spawn(async move {
            tokio::time::sleep(500 * MS).await;
            redis.set_down(true);
            tokio::time::sleep(FALLBACK_DELAY + 800 * MS).await;
            redis.restart();
            redis.set_down(false);
        })
    };
    let run = Duration::from_secs(8);
    let callers = Callers {
        per_instance: 8,
        start_jitter: MS,
        request_time: MS,
    };
    let starts = run_callers(&instances, callers, run, 13).await;
    outage.await.unwrap();
    assert_gcra_exact(&starts, &spec);
    // Local cells flow from the fallback delay on: 200/3 per second each.
    let from = Duration::from_millis(500) + FALLBACK_DELAY + 300 * MS;
    let local = starts
        .iter()
        .filter(|&&t| from <= t && t < from + 400 * MS)
        .count();
    assert!((60..=90).contains(&local), "{local} local starts in 400 ms");
    // Nothing during the fallback delay but what was leased before.
    let quiet = starts
        .iter()
        .filter(|&&t| t > 500 * MS + HORIZON + 50 * MS && t < 500 * MS + FALLBACK_DELAY)
        .count();
    assert_eq!(quiet, 0);
    assert!(instances.iter().all(|l| l.mode() == LimiterMode::Shared));
    let rendered = metrics.render();
    assert_eq!(metric(&rendered, "syncflow_limiter_local"), 0.0);
    println!(
        "outage: {} starts in {run:?}, {local} local in 400 ms, {} Redis calls",
        starts.len(),
        redis.calls()
    );
    let _ = origin;
}

/// A restart so quick that no instance notices it still loses the TAT: the
/// fleet must not take a fresh burst while the cells leased before are
/// spent. The first call after it sees a new epoch and starts a hold.
#[tokio::test(start_paused = true)]
async fn a_restarted_redis_does_not_grant_a_fresh_burst() {
    let spec = per_second(100, 10);
    let redis = lan_redis(7);
    let instances = fleet(&redis, spec, 2);
    let restart = {
        let redis = std::sync::Arc::clone(&redis);
        tokio::spawn(async move {
            tokio::time::sleep(300 * MS).await;
            redis.restart();
        })
    };
    let callers = Callers {
        per_instance: 8,
        start_jitter: MS,
        request_time: MS,
    };
    let starts = run_callers(&instances, callers, Duration::from_secs(3), 17).await;
    restart.await.unwrap();
    assert_gcra_exact(&starts, &spec);
    assert!(instances.iter().all(|l| l.mode() == LimiterMode::Shared));
}

/// A blip: Redis stops answering for a moment and keeps its state. The
/// instances that noticed go back to the shared limit as soon as it answers
/// again, without a hold and without having taken a local cell.
#[tokio::test(start_paused = true)]
async fn a_blip_goes_straight_back_to_the_shared_limit() {
    let spec = per_second(200, 10);
    let redis = lan_redis(9);
    let instances = fleet(&redis, spec, 2);
    let blip = {
        let (redis, instances) = (std::sync::Arc::clone(&redis), instances.clone());
        tokio::spawn(async move {
            tokio::time::sleep(300 * MS).await;
            redis.set_paused(true);
            tokio::time::sleep(400 * MS).await;
            let local = instances.iter().any(|l| l.mode() == LimiterMode::Local);
            redis.set_paused(false);
            local
        })
    };
    let callers = Callers {
        per_instance: 8,
        start_jitter: MS,
        request_time: MS,
    };
    let starts = run_callers(&instances, callers, Duration::from_millis(1500), 19).await;
    assert!(blip.await.unwrap(), "the instances noticed the blip");
    assert!(!redis.hold_running(), "a blip started a hold");
    assert!(instances.iter().all(|l| l.mode() == LimiterMode::Shared));
    assert_gcra_exact(&starts, &spec);
}

#[tokio::test(start_paused = true)]
async fn a_redis_too_slow_for_the_lateness_budget_means_local_until_it_is_fast() {
    // 1000/s burst 4: window-exact with the least budget, 2 ms to spend.
    let spec = per_second(1000, 4);
    let redis = lan_redis(21);
    let [limiter] = <[SharedLimiter; 1]>::try_from(fleet(&redis, spec, 1)).unwrap();
    limiter.acquire().await.unwrap();
    assert_eq!(limiter.mode(), LimiterMode::Shared);
    // 3 ms each way: every reply comes back after its cells' deadlines.
    redis.set_latency(3 * MS, Duration::ZERO);
    let deadline = Instant::now() + Duration::from_secs(3);
    while limiter.mode() != LimiterMode::Local {
        assert!(Instant::now() < deadline, "still shared on a slow Redis");
        limiter.acquire().await.unwrap();
    }
    redis.set_latency(Duration::from_micros(300), Duration::ZERO);
    let deadline = Instant::now() + Duration::from_secs(6);
    while limiter.mode() != LimiterMode::Shared {
        assert!(
            Instant::now() < deadline,
            "still local after Redis got fast"
        );
        limiter.acquire().await.unwrap();
    }
}

/// An instance whose demand stops offers its leased cells back, so another
/// is served at once; if someone leased after them, it keeps them.
#[tokio::test(start_paused = true)]
async fn an_instance_whose_demand_stops_gives_its_leased_cells_back() {
    let spec = per_second(100, 2);
    let redis = lan_redis(23);
    let [busy, other] = <[SharedLimiter; 2]>::try_from(fleet(&redis, spec, 2)).unwrap();
    let callers = Callers {
        per_instance: 20,
        start_jitter: Duration::ZERO,
        request_time: Duration::ZERO,
    };
    let mut starts = run_callers(std::slice::from_ref(&busy), callers, 500 * MS, 29).await;
    let ahead = redis.tat_ahead();
    tokio::time::sleep(100 * MS).await;
    assert!(
        ahead > 100 * MS,
        "the busy instance had leased {ahead:?} ahead"
    );
    assert_eq!(
        redis.tat_ahead(),
        Duration::ZERO,
        "the unused cells went back"
    );
    let asked = Instant::now();
    other.acquire().await.unwrap();
    assert!(asked.elapsed() < 5 * MS, "{:?}", asked.elapsed());
    starts.push(600 * MS + asked.elapsed());
    starts.sort();
    assert_gcra_exact(&starts, &spec);
}

/// Open-loop demand well under the limit: nobody queues, so an instance can
/// only lease what it spends within the lateness budget; requests are still
/// served promptly, with batched calls.
#[tokio::test(start_paused = true)]
async fn moderate_demand_is_served_promptly_with_batched_calls() {
    let spec = per_second(2000, 20);
    let redis = lan_redis(31);
    let instances = fleet(&redis, spec, 3);
    let run = Duration::from_secs(3);
    let mut waits = Vec::new();
    let mut starts = Vec::new();
    let demand: Vec<_> = instances
        .iter()
        .zip([500, 500, 50])
        .map(|(limiter, rate)| paced(limiter, rate, run))
        .collect();
    for requests in demand {
        for (wait, start) in requests.await.unwrap() {
            waits.push(wait);
            starts.push(start);
        }
    }
    waits.sort();
    starts.sort();
    let p99 = waits[waits.len() * 99 / 100];
    let per_call = waits.len() as f64 / redis.calls() as f64;
    println!(
        "open loop 500+500+50/s of 2000/s: wait p50 {:?} p99 {p99:?}, 1 call per {per_call:.1}",
        waits[waits.len() / 2]
    );
    assert_gcra_exact(&starts, &spec);
    assert!(p99 < 10 * MS, "p99 wait {p99:?}");
    assert!(per_call > 3.0, "1 call per {per_call:.1} requests");
}

#[tokio::test(start_paused = true)]
async fn a_quiet_instance_is_not_starved_by_a_saturating_one() {
    let spec = per_second(2000, 20);
    let redis = lan_redis(37);
    let [busy, quiet] = <[SharedLimiter; 2]>::try_from(fleet(&redis, spec, 2)).unwrap();
    let run = Duration::from_secs(2);
    let quiet_requests = paced(&quiet, 50, run);
    let callers = Callers {
        per_instance: 32,
        start_jitter: Duration::ZERO,
        request_time: MS,
    };
    let mut starts = run_callers(&[busy], callers, run, 41).await;
    let quiet_requests = quiet_requests.await.unwrap();
    let busy_rate = sustained(&starts, Duration::ZERO, run);
    let quiet_max_wait = quiet_requests.iter().map(|r| r.0).max().unwrap();
    starts.extend(quiet_requests.iter().map(|r| r.1));
    starts.sort();
    println!("saturating + 50/s: busy {busy_rate:.0}/s, quiet max wait {quiet_max_wait:?}");
    assert_gcra_exact(&starts, &spec);
    // The quiet one waits at most for the busy one's lease horizon, and the
    // busy one gets nearly all of the rest.
    assert!(quiet_max_wait < HORIZON + 10 * MS, "{quiet_max_wait:?}");
    assert!(busy_rate >= 0.95 * (2000.0 - 50.0), "{busy_rate:.0}/s");
}

/// An instance whose demand stops gives its unused cells back once and then
/// only keeps its heartbeat: it does not lease for the arrivals its rate
/// estimate still expects (which it gave back again at once, in a loop of
/// calls until the estimate decayed: 345 in the second after 10,000/s).
#[tokio::test(start_paused = true)]
async fn an_instance_whose_demand_stops_stops_leasing() {
    let spec = per_second(10_000, 100);
    let redis = lan_redis(43);
    let instances = fleet(&redis, spec, 1);
    let callers = Callers {
        per_instance: 64,
        start_jitter: Duration::ZERO,
        request_time: Duration::ZERO,
    };
    run_callers(&instances, callers, 500 * MS, 47).await;
    let calls = redis.calls();
    tokio::time::sleep(Duration::from_secs(1)).await;
    // One give-back, and at most two heartbeats.
    let after = redis.calls() - calls;
    assert!(after <= 3, "{after} Redis calls after the demand stopped");
    assert_eq!(
        redis.tat_ahead(),
        Duration::ZERO,
        "the unused cells went back"
    );
}

/// More demand than the limit (3 × 3,500/s for 10,000/s): callers queue
/// deeper than any lease, and each instance still leases large slices
/// rather than calling again as soon as a grant is spread among them (211
/// requests per call without waiting for the pool to come within reach,
/// demand.rs).
#[tokio::test(start_paused = true)]
async fn a_backlog_is_served_with_large_leases() {
    let spec = per_second(10_000, 100);
    let redis = lan_redis(53);
    let instances = fleet(&redis, spec, 3);
    let run = Duration::from_secs(5);
    let demand: Vec<_> = instances.iter().map(|l| paced(l, 3500, run)).collect();
    let mut starts = Vec::new();
    for requests in demand {
        starts.extend(requests.await.unwrap().into_iter().map(|(_, start)| start));
    }
    starts.sort();
    let per_call = starts.len() as f64 / redis.calls() as f64;
    println!("3 × 3500/s of 10,000/s: 1 Redis call per {per_call:.0} requests");
    assert_gcra_exact(&starts, &spec);
    assert!(per_call > 240.0, "1 call per {per_call:.0} requests");
}

/// The integration test's case (tests/run_limits.rs: one instance, 100/s
/// burst 5, Redis stopped and restarted empty), at many phases of the
/// restart against the probes, with the first call after it failing (the
/// connection's cached error) and the first reply slow (the scripts
/// reloaded), up to past the call timeout: the switch back through the
/// hold never lets a provider enforcing the limit refuse a request, even
/// with every request reaching it up to the path's share of the lateness
/// budget after its start.
#[tokio::test(start_paused = true)]
async fn a_lone_instance_switches_back_after_an_empty_restart_within_the_limit() {
    use rand::{Rng, SeedableRng};
    let spec = per_second(100, 5);
    let schedule = Schedule::new(&spec);
    let path = schedule.lateness / super::gcra::PATH_SHARE;
    let mut over = Vec::new();
    for case in 0..48u64 {
        let redis = lan_redis(100 + case);
        let (latency, jitter) = [
            (Duration::from_micros(300), Duration::from_micros(700)),
            (2 * MS, 4 * MS),
            (MS, 12 * MS),
        ][(case % 3) as usize];
        redis.set_latency(latency, jitter);
        let [limiter] = <[SharedLimiter; 1]>::try_from(fleet(&redis, spec, 1)).unwrap();
        limiter.acquire().await.unwrap();
        let phase = Duration::from_micros(case * 5_227 % 250_000);
        let outage = {
            let redis = std::sync::Arc::clone(&redis);
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(1)).await;
                redis.set_down(true);
                tokio::time::sleep(Duration::from_millis(5500) + phase).await;
                redis.restart();
                let slow = [Duration::ZERO, 25 * MS, 150 * MS, 250 * MS][(case / 3 % 4) as usize];
                redis.fail_next((case / 12 % 2) as u32, slow);
                redis.set_down(false);
            })
        };
        let callers = Callers {
            per_instance: 32,
            start_jitter: schedule.spend(),
            request_time: 30 * MS,
        };
        let starts = run_callers(
            std::slice::from_ref(&limiter),
            callers,
            Duration::from_secs(10),
            case,
        )
        .await;
        outage.await.unwrap();
        assert_eq!(limiter.mode(), LimiterMode::Shared);
        // Local starts while Redis was away.
        let local = starts
            .iter()
            .filter(|&&t| Duration::from_secs(5) < t && t < Duration::from_secs(6))
            .count();
        assert!(local >= 90, "case {case}: {local} local starts in a second");
        let mut rng = rand::rngs::StdRng::seed_from_u64(case);
        let mut arrivals: Vec<Duration> = starts
            .iter()
            .map(|&s| s + Duration::from_nanos(rng.random_range(0..=path.as_nanos() as u64)))
            .collect();
        arrivals.sort();
        let refused = (
            gcra_refusals(&starts, &spec),
            gcra_refusals(&arrivals, &spec),
        );
        if refused != (0, 0) {
            over.push((case, refused));
        }
    }
    assert!(
        over.is_empty(),
        "(case, (refused starts, refused arrivals)): {over:?}"
    );
}

/// Redis comes back with its state (an outage shorter than INSTANCE_TTL,
/// longer than the fallback delay: both instances took local cells), and
/// at once goes away again for a moment, so the first instance's call
/// announcing the return fails. Falling back from announcing continues the
/// same outage: when Redis answers again the instance still announces (and
/// so starts a hold). It used to count the failed announce as the start of
/// a new outage, found Redis "within a blip" of it and went straight back
/// to the shared limit without a hold, leasing at the full rate while the
/// other instance still took its local share: 5 refusals at these phases.
#[tokio::test(start_paused = true)]
async fn a_failed_announce_still_switches_back_through_a_hold() {
    let spec = per_second(100, 5);
    let mut over = Vec::new();
    for case in 0..12u64 {
        let redis = lan_redis(300 + case);
        let instances = fleet(&redis, spec, 2);
        for limiter in &instances {
            limiter.acquire().await.unwrap();
        }
        let phase = Duration::from_micros(case * 20_833);
        let outage = {
            let redis = std::sync::Arc::clone(&redis);
            tokio::spawn(async move {
                tokio::time::sleep(500 * MS).await;
                redis.set_down(true);
                tokio::time::sleep(Duration::from_millis(4000) + phase).await;
                // The first call to get through is a probe; the announce
                // right after it fails.
                redis.flap_after_next(30 * MS);
                redis.set_down(false);
            })
        };
        let callers = Callers {
            per_instance: 16,
            start_jitter: MS,
            request_time: 20 * MS,
        };
        let starts = run_callers(&instances, callers, Duration::from_secs(8), case).await;
        outage.await.unwrap();
        assert!(instances.iter().all(|l| l.mode() == LimiterMode::Shared));
        let refused = gcra_refusals(&starts, &spec);
        if refused > 0 {
            over.push((case, refused));
        }
    }
    assert!(over.is_empty(), "(case, refused): {over:?}");
}
