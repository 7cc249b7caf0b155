//! SIGTERM mid-stream drains cleanly (DESIGN.md §4: `run` exits 0 after a
//! clean drain; §5: at-least-once, never silent loss). The process stops
//! pulling, finishes what it can until the drain deadline, hands the rest
//! back, flushes its acks and exits 0 within the deadline. Nothing is lost
//! and nothing is left unacked: a restart gets every message back at once
//! (ack_wait is a minute, far longer than the test may wait) and completes
//! the rest, every contact created exactly once.

mod common;

use std::time::{Duration, Instant};

use syncflow_mock_crm::MockCrmConfig;

use common::contacts::{self, assert_crm_state, requests};
use common::harness::Harness;

const KEYS: u32 = 300;
const PIPELINES: [&str; 2] = ["contacts-to-hubspot", "contacts-to-salesforce"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_stream_drains_exits_0_and_a_restart_completes_the_rest() {
    let h = Harness::start(MockCrmConfig {
        latency: Duration::from_millis(100),
        ..MockCrmConfig::default()
    })
    .await;
    for provider in ["hubspot", "salesforce"] {
        h.set_rate_limit(provider, 50, "1s", 5);
        h.set_fast_retries(provider, 5);
    }
    // A message left unacked would come back only after a minute: a restart
    // that completes within seconds proves none was.
    for pipeline in PIPELINES {
        h.set_ack_wait(pipeline, "60s");
    }

    let events = contacts::one_per_key(KEYS);
    let want = contacts::expected(&events);
    contacts::publish_all(&h, &events).await;

    let mut first = h.spawn_with_drain_timeout("2s");
    first.wait_ready(Duration::from_secs(20)).await;
    h.wait_crm(
        "a quarter of the Salesforce requests",
        Duration::from_secs(30),
        |s| requests(&s.salesforce) >= u64::from(KEYS) / 4,
        || first.log(),
    )
    .await;
    let stopping = Instant::now();
    let status = first.sigterm();
    let drain = stopping.elapsed();
    assert!(status.success(), "exit {status:?}:\n{}", first.log());
    assert!(
        drain < Duration::from_secs(2 + 5),
        "drain took {drain:?} with a 2 s deadline"
    );
    let at_stop = h.crm.snapshot();

    let mut left = 0;
    let mut unacked = 0;
    for pipeline in PIPELINES {
        let c = h.consumer(pipeline).await;
        left += c.num_pending + c.num_ack_pending as u64;
        unacked += c.num_ack_pending;
    }
    assert!(left > 0, "stopped after the stream was done");

    let restarted = Instant::now();
    let mut second = h.spawn();
    second.wait_ready(Duration::from_secs(20)).await;
    h.wait_settled(Duration::from_secs(30)).await;
    let rest = restarted.elapsed();
    assert!(second.sigterm().success(), "{}", second.log());

    let snap = h.crm.snapshot();
    assert_crm_state(&snap, &want);
    let letters = h.dead_letters().await;
    assert_eq!(letters.len(), want.unknown_id, "{letters:#?}");
    for pipeline in PIPELINES {
        let c = h.consumer(pipeline).await;
        assert_eq!(
            (c.num_pending, c.num_ack_pending),
            (0, 0),
            "{pipeline} after the restart"
        );
    }
    println!(
        "drain: SIGTERM after {} hubspot / {} salesforce requests; exit 0 after {drain:.1?} \
         (deadline 2 s); {left} messages left, {unacked} of them handed back (unacked, \
         redelivered at once); restart completed them in {rest:.1?}; Idempotency-Key replays \
         hubspot {} salesforce {}; creates {} / {}",
        requests(&at_stop.hubspot),
        requests(&at_stop.salesforce),
        snap.hubspot.counters.idempotent_replays,
        snap.salesforce.counters.idempotent_replays,
        snap.hubspot.counters.creates,
        snap.salesforce.counters.creates,
    );
}
