//! Polling (DESIGN.md §7) end to end: Salesforce's "changed since" query
//! read with a durable cursor, so that records sharing one modification
//! time, and a record committed late with an older time, all arrive; and
//! one poller per object across instances, taken over within seconds when
//! its holder dies.

mod common;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use syncflow_mock_crm::MockCrmConfig;

use common::twoway::TwoWay;

const WAIT: Duration = Duration::from_secs(60);

fn salesforce_contacts_in_a(env: &TwoWay) -> usize {
    env.system_a
        .snapshot()
        .records
        .values()
        .filter(|r| r["crm"] == "salesforce")
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn equal_timestamps_and_late_commits_are_not_skipped() {
    let env = TwoWay::start(MockCrmConfig::default(), |_| {}).await;
    let run = env.spawn();
    run.wait_ready(Duration::from_secs(20)).await;

    // 450 contacts with one modification time: more than two pages of 200.
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    for i in 0..450 {
        env.crm
            .salesforce_user_create(
                json!({"Email": format!("same{i}@example.com"), "LastName": format!("Same{i}")}),
                Some(t),
            )
            .unwrap();
    }
    env.wait_for("450 contacts of one time in System A", WAIT, |e| {
        let n = salesforce_contacts_in_a(e);
        (n == 450).then_some(()).ok_or(format!("{n}"))
    })
    .await;

    // The poller has moved past t + 2 s; a contact committed now with a
    // time 3 s ago (a late commit, within the 5 s lookback) still arrives.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let late = t + 2_000;
    env.crm
        .salesforce_user_create(
            json!({"Email": "late@example.com", "LastName": "Late"}),
            Some(late),
        )
        .unwrap();
    env.wait_for("the late commit in System A", WAIT, |e| {
        e.a_id_of("late@example.com").ok_or("none".to_string())
    })
    .await;
    // Each once: no contact created twice in System A.
    env.wait_quiet(Duration::from_secs(2), WAIT).await;
    assert_eq!(salesforce_contacts_in_a(&env), 451, "{}", run.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_poller_per_object_and_another_takes_over_when_it_dies() {
    let env = TwoWay::start(MockCrmConfig::default(), |_| {}).await;
    let first = env.spawn_on(common::harness::free_addr());
    first.wait_ready(Duration::from_secs(20)).await;
    let second = env.spawn_on(common::harness::free_addr());
    second.wait_ready(Duration::from_secs(20)).await;
    let lease = r#"syncflow_poll_lease{provider="salesforce",object="contact"}"#;
    let holding = |text: &str| common::metrics::value(text, lease).unwrap_or(0.0);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (a, b) = (
        holding(&first.metrics().await),
        holding(&second.metrics().await),
    );
    assert_eq!(a + b, 1.0, "exactly one instance polls: {a} and {b}");
    let (mut holder, other) = if a == 1.0 {
        (first, second)
    } else {
        (second, first)
    };

    holder.kill9();
    let killed = Instant::now();
    loop {
        if holding(&other.metrics().await) == 1.0 {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(20),
            "no takeover:\n{}",
            other.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took = killed.elapsed();
    println!(
        "lease taken over {:.1} s after kill -9 of its holder",
        took.as_secs_f64()
    );
    assert!(took < Duration::from_secs(10), "took {took:?}");

    env.crm
        .salesforce_user_create(
            json!({"Email": "after@example.com", "LastName": "After"}),
            None,
        )
        .unwrap();
    let id = env
        .wait_for("a contact polled by the new holder", WAIT, |e| {
            e.a_id_of("after@example.com").ok_or("none".to_string())
        })
        .await;
    assert_eq!(env.a(&id).unwrap()["last_name"], Value::from("After"));
}
