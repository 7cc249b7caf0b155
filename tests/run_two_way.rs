//! Two-way sync end to end (DESIGN.md §7): System A (the stand-in, its
//! every write a CDC event) ↔ HubSpot by signed webhooks and ↔ Salesforce
//! by polling, on `examples/two-way`. Each step checks where the change
//! arrived and that nothing more was written: an edit is one write to the
//! other side, its echo none.

mod common;

use std::time::Duration;

use serde_json::{Value, json};
use syncflow_mock_crm::{MockCrmConfig, WebhookConfig};

use common::harness::Syncflow;
use common::twoway::TwoWay;

const WAIT: Duration = Duration::from_secs(20);
const QUIET: Duration = Duration::from_millis(1500);

/// The environment with the CRMs' request logs kept and its webhooks as
/// `webhook` sets them, and syncflow running on it.
async fn started(webhook: impl FnOnce(&mut WebhookConfig)) -> (TwoWay, Syncflow) {
    let env = TwoWay::start(
        MockCrmConfig {
            record_log: true,
            ..MockCrmConfig::default()
        },
        webhook,
    )
    .await;
    let run = env.spawn();
    run.wait_ready(WAIT).await;
    (env, run)
}

/// A HubSpot contact a System A user creates, once syncflow created it in
/// HubSpot: (System A's id, HubSpot's).
async fn born_in_system_a(env: &TwoWay, email: &str, first: &str, last: &str) -> (String, String) {
    let record = env
        .system_a
        .user_create(
            json!({"crm": "hubspot", "email": email, "first_name": first, "last_name": last}),
        )
        .await
        .unwrap();
    let in_hubspot = env
        .wait_for(&format!("{first} in HubSpot"), WAIT, |e| {
            e.hubspot_id_of(email).ok_or("none".into())
        })
        .await;
    (record["id"].as_str().unwrap().to_string(), in_hubspot)
}

fn text<'a>(fields: &'a serde_json::Map<String, Value>, name: &str) -> Option<&'a str> {
    fields.get(name).and_then(Value::as_str)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_flow_both_ways_once_and_policies_decide() {
    let (env, run) = started(|_| {}).await;

    // 1. Born in System A → created in HubSpot, once.
    let (ada_a, ada_h) = born_in_system_a(&env, "ada@example.com", "Ada", "Lovelace").await;
    let base = env.wait_quiet(QUIET, WAIT).await;
    assert_eq!(
        base,
        (0, 1, 0),
        "one create in HubSpot, nothing back into System A (its webhooks are echoes)\n{}\n{}",
        run.log(),
        env.crm_log()
    );

    // 2. A HubSpot user's edit → System A, once; its CDC echo goes nowhere.
    env.crm
        .hubspot_user_update(&ada_h, json!({"firstname": "Adele"}))
        .unwrap();
    env.wait_for("the edit in System A", WAIT, |e| match e.a(&ada_a) {
        Some(r) if r["first_name"] == "Adele" => Ok(()),
        other => Err(format!("{other:?}")),
    })
    .await;
    assert_eq!(
        env.wait_quiet(QUIET, WAIT).await,
        (1, 1, 0),
        "{}\n{}",
        run.log(),
        env.crm_log()
    );

    // 3. A System A edit of a field HubSpot owns (phone: provider) is set
    //    back; of a field System A owns (email: internal) made in HubSpot,
    //    too. Each costs one write on the side that made it, none on the other.
    env.system_a
        .user_update(&ada_a, json!({"phone": "+1 555 0101"}))
        .await
        .unwrap();
    env.wait_for("phone set back in System A", WAIT, |e| match e.a(&ada_a) {
        Some(r) if r.get("phone").is_none() => Ok(()),
        other => Err(format!("{other:?}")),
    })
    .await;
    assert_eq!(
        env.wait_quiet(QUIET, WAIT).await,
        (2, 1, 0),
        "{}\n{}",
        run.log(),
        env.crm_log()
    );
    env.crm
        .hubspot_user_update(&ada_h, json!({"email": "hacked@example.com"}))
        .unwrap();
    env.wait_for("email set back in HubSpot", WAIT, |e| {
        match e.hubspot(&ada_h) {
            Some(f) if text(&f, "email") == Some("ada@example.com") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(
        env.wait_quiet(QUIET, WAIT).await,
        (2, 2, 0),
        "{}\n{}",
        run.log(),
        env.crm_log()
    );
    assert_eq!(env.a(&ada_a).unwrap()["email"], "ada@example.com");

    // 4. Born in HubSpot → created in System A (marked as HubSpot's) and
    //    linked: no second HubSpot contact, nothing written back.
    let lin_h = env
        .crm
        .hubspot_user_create(
            json!({"email": "lin@example.com", "firstname": "Lin", "lastname": "Yu"}),
        )
        .unwrap();
    let lin_a = env
        .wait_for("Lin in System A", WAIT, |e| {
            e.a_id_of("lin@example.com").ok_or("none".into())
        })
        .await;
    assert_eq!(
        env.wait_quiet(QUIET, WAIT).await,
        (3, 2, 0),
        "{}\n{}",
        run.log(),
        env.crm_log()
    );
    let lin = env.a(&lin_a).unwrap();
    assert_eq!(
        (lin["crm"].as_str(), lin["first_name"].as_str()),
        (Some("hubspot"), Some("Lin"))
    );
    // And later edits of it go both ways.
    env.system_a
        .user_update(&lin_a, json!({"last_name": "Yue"}))
        .await
        .unwrap();
    env.wait_for("Lin's edit in HubSpot", WAIT, |e| match e.hubspot(&lin_h) {
        Some(f) if text(&f, "lastname") == Some("Yue") => Ok(()),
        other => Err(format!("{other:?}")),
    })
    .await;
    assert_eq!(
        env.wait_quiet(QUIET, WAIT).await,
        (3, 3, 0),
        "{}\n{}",
        run.log(),
        env.crm_log()
    );

    // 5. Salesforce, by polling: born in System A, edited in Salesforce.
    let sue = env
        .system_a
        .user_create(json!({"crm": "salesforce", "email": "sue@example.com", "first_name": "Sue", "last_name": "Smith"}))
        .await
        .unwrap();
    let sue_a = sue["id"].as_str().unwrap().to_string();
    let sue_s = env
        .wait_for("Sue in Salesforce", WAIT, |e| {
            e.salesforce_id_of("sue@example.com").ok_or("none".into())
        })
        .await;
    assert_eq!(
        env.wait_quiet(QUIET, WAIT).await,
        (3, 3, 1),
        "{}\n{}",
        run.log(),
        env.crm_log()
    );
    env.crm
        .salesforce_user_update(&sue_s, json!({"LastName": "Smythe"}), None)
        .unwrap();
    env.wait_for("Salesforce's edit in System A", WAIT, |e| {
        match e.a(&sue_a) {
            Some(r) if r["last_name"] == "Smythe" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(
        env.wait_quiet(QUIET, WAIT).await,
        (4, 3, 1),
        "{}\n{}",
        run.log(),
        env.crm_log()
    );
    // Born in Salesforce.
    env.crm
        .salesforce_user_create(json!({"Email": "max@example.com", "LastName": "Mux"}), None)
        .unwrap();
    let max_a = env
        .wait_for("Max in System A", WAIT, |e| {
            e.a_id_of("max@example.com").ok_or("none".into())
        })
        .await;
    assert_eq!(
        env.wait_quiet(QUIET, WAIT).await,
        (5, 3, 1),
        "{}\n{}",
        run.log(),
        env.crm_log()
    );

    // 6. Deletes, both ways: in HubSpot → gone from System A; in System A
    //    → gone from Salesforce.
    env.crm.hubspot_user_delete(&lin_h).unwrap();
    env.wait_for("Lin deleted in System A", WAIT, |e| match e.a(&lin_a) {
        None => Ok(()),
        Some(r) => Err(format!("{r}")),
    })
    .await;
    env.system_a.user_delete(&max_a).await.unwrap();
    env.wait_for("Max deleted in Salesforce", WAIT, |e| {
        match e.salesforce_id_of("max@example.com") {
            None => Ok(()),
            Some(id) => Err(id),
        }
    })
    .await;
    assert_eq!(
        env.wait_quiet(QUIET, WAIT).await,
        (6, 3, 2),
        "{}\n{}",
        run.log(),
        env.crm_log()
    );

    let metrics = run.metrics().await;
    let echoes = common::metrics::sum(
        &metrics,
        "syncflow_twoway_fields_total",
        &[r#"outcome="echo""#],
    );
    assert!(echoes > 0.0, "echoes are counted:\n{metrics}");
}

/// A write that finds its record deleted on the other side (404) marks the
/// pair deleted; that side's delete event, coming after, must still delete
/// System A's record rather than pass for the echo of a delete syncflow made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_heard_after_a_write_found_the_record_gone_still_goes_through() {
    // HubSpot's webhooks wait 3 s: System A's edit reaches HubSpot (and
    // finds the contact gone) before the delete's webhook reaches syncflow.
    let (env, _run) = started(|hook| hook.max_wait = Duration::from_secs(3)).await;

    let (dee_a, dee_h) = born_in_system_a(&env, "dee@example.com", "Dee", "Dash").await;
    env.wait_quiet(Duration::from_secs(4), WAIT).await;

    env.crm.hubspot_user_delete(&dee_h).unwrap();
    env.system_a
        .user_update(&dee_a, json!({"first_name": "Deb"}))
        .await
        .unwrap();
    env.wait_for("the edit's write refused with 404", WAIT, |e| {
        let snap = e.crm.snapshot();
        match snap
            .hubspot
            .log
            .iter()
            .any(|r| r.method == "PATCH" && r.path.ends_with(&dee_h) && r.status == 404)
        {
            true => Ok(()),
            false => Err(e.crm_log()),
        }
    })
    .await;
    env.wait_for("Dee deleted in System A", WAIT, |e| match e.a(&dee_a) {
        None => Ok(()),
        Some(r) => Err(format!("{r}\n{}", e.logs())),
    })
    .await;
}
