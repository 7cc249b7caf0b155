//! The demo's driver: publishes sample CDC contact events to JetStream,
//! waits until every pipeline has settled them, and prints what reached each
//! CRM and what was dead-lettered.
//!
//! cargo run --example demo_events -- publish --nats nats://127.0.0.1:14222
//! cargo run --example demo_events -- wait    --nats nats://127.0.0.1:14222
//! cargo run --example demo_events -- summary --nats nats://127.0.0.1:14222 --crm http://127.0.0.1:18080

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use clap::{Parser, Subcommand};
use futures::StreamExt;
use serde_json::{Value, json};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "nats://127.0.0.1:4222", global = true)]
    nats: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the CDC stream if needed and publish the sample events.
    Publish {
        /// How many contacts to create (each also gets updates, some deletes).
        #[arg(long, default_value_t = 40)]
        contacts: u32,
    },
    /// Wait until every consumer on the CDC stream has nothing pending.
    Wait {
        #[arg(long, default_value = "180")]
        timeout_secs: u64,
    },
    /// Print the CRMs' state and the dead letters.
    Summary {
        #[arg(long, default_value = "http://127.0.0.1:18080")]
        crm: String,
    },
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let client = async_nats::connect(&args.nats).await?;
    let js = jetstream::new(client);
    match args.command {
        Command::Publish { contacts } => publish(&js, contacts).await,
        Command::Wait { timeout_secs } => wait(&js, Duration::from_secs(timeout_secs)).await,
        Command::Summary { crm } => summary(&js, &crm).await,
    }
}

/// The events of a small CRM's day: creates, updates, deletes, and a few
/// records that cannot be synced (for the dead-letter subject).
fn events(contacts: u32) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let statuses = ["active", "lead", "inactive"];
    for i in 1..=contacts {
        let id = i.to_string();
        let company = (i % 3 != 0).then(|| format!("Company {}", i % 7));
        let status = statuses[(i % 3) as usize];
        let last_name = (i % 11 != 0).then(|| format!("Last{i}"));
        let record = json!({
            "id": id, "email": format!("person{i}@example.com"), "first_name": format!("First{i}"),
            "last_name": last_name, "company": company, "phone": format!("+1 555 01{i:02}"), "status": status,
        });
        out.push((
            format!("c-{i}"),
            json!({"op": "c", "after": record}).to_string().into_bytes(),
        ));
    }
    for i in (1..=contacts).filter(|i| i % 2 == 0) {
        let record = json!({
            "id": i.to_string(), "email": format!("person{i}@example.org"), "first_name": format!("First{i}"),
            "last_name": format!("Last{i}"), "company": format!("Company {}", i % 7), "status": "active",
        });
        out.push((
            format!("u-{i}"),
            json!({"op": "u", "after": record}).to_string().into_bytes(),
        ));
    }
    for i in (1..=contacts).filter(|i| i % 10 == 4) {
        out.push((
            format!("d-{i}"),
            json!({"op": "d", "after": {"id": i.to_string()}})
                .to_string()
                .into_bytes(),
        ));
    }
    // Records no retry can fix: each lands on the dead-letter subject.
    out.push(("bad-json".into(), b"{this is not json".to_vec()));
    out.push((
        "bad-key".into(),
        json!({"op": "c", "after": {"email": "nokey@example.com"}})
            .to_string()
            .into_bytes(),
    ));
    out.push((
        "bad-email".into(),
        json!({"op": "c", "after": {"id": "900", "email": "not-an-email", "last_name": "X", "company": "Y"}}).to_string().into_bytes(),
    ));
    out.push((
        "provider-400".into(),
        json!({"op": "c", "after": {"id": "901", "email": "someone@localhost", "last_name": "Local", "company": "Y"}}).to_string().into_bytes(),
    ));
    out
}

async fn publish(js: &jetstream::Context, contacts: u32) -> Result<(), Box<dyn std::error::Error>> {
    js.get_or_create_stream(jetstream::stream::Config {
        name: "CDC".into(),
        subjects: vec!["cdc.>".into()],
        ..Default::default()
    })
    .await?;
    let events = events(contacts);
    for (msg_id, payload) in &events {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", msg_id.as_str());
        js.publish_with_headers(
            format!("cdc.contacts.{msg_id}"),
            headers,
            payload.clone().into(),
        )
        .await?
        .await?;
    }
    println!("published {} events to stream CDC", events.len());
    Ok(())
}

async fn wait(
    js: &jetstream::Context,
    timeout: Duration,
) -> Result<(), Box<dyn std::error::Error>> {
    let started = Instant::now();
    let mut settled_polls = 0;
    loop {
        let mut stream = js.get_stream("CDC").await?;
        let mut consumers = stream.consumers();
        let mut busy = Vec::new();
        let mut seen = 0;
        while let Some(info) = consumers.next().await {
            let info = info?;
            seen += 1;
            if info.num_pending > 0 || info.num_ack_pending > 0 {
                busy.push(format!(
                    "{} ({} pending, {} unacked)",
                    info.name, info.num_pending, info.num_ack_pending
                ));
            }
        }
        let _ = stream.info().await?;
        settled_polls = if seen > 0 && busy.is_empty() {
            settled_polls + 1
        } else {
            0
        };
        if settled_polls >= 2 {
            println!(
                "every pipeline settled in {:.1}s",
                started.elapsed().as_secs_f64()
            );
            return Ok(());
        }
        if started.elapsed() > timeout {
            return Err(format!("not settled after {timeout:?}: {}", busy.join(", ")).into());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn summary(js: &jetstream::Context, crm: &str) -> Result<(), Box<dyn std::error::Error>> {
    let state: Value = reqwest::Client::new()
        .get(format!("{crm}/_admin/state"))
        .send()
        .await?
        .json()
        .await?;
    for api in ["hubspot", "salesforce"] {
        let s = &state[api];
        let records = s["records"].as_object().map(|r| r.len()).unwrap_or(0);
        let c = &s["counters"];
        println!("\n== {api}: {records} records ==");
        println!(
            "   creates {}  rate-limited (429) {}  injected 503s {}  idempotent replays {}",
            c["creates"], c["rate_limited"], c["injected_failures"], c["idempotent_replays"]
        );
        println!("   requests by method and status: {}", c["requests"]);
        if let Some(records) = s["records"].as_object() {
            for (id, r) in records.iter().take(5) {
                println!("   {id}: {}", r["fields"]);
            }
            if records.len() > 5 {
                println!("   ... and {} more", records.len() - 5);
            }
        }
    }

    println!("\n== dead letters ==");
    let Ok(stream) = js.get_stream("SYNCFLOW_DLQ").await else {
        println!("   none (no dead-letter stream)");
        return Ok(());
    };
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig::default())
        .await?;
    let mut messages = consumer.messages().await?;
    let mut by_kind: BTreeMap<(String, String), u32> = BTreeMap::new();
    // One provider rejection in full, as it sits on the dead-letter subject.
    let mut example = None;
    while let Ok(Some(Ok(msg))) =
        tokio::time::timeout(Duration::from_secs(1), messages.next()).await
    {
        let letter: Value = serde_json::from_slice(&msg.payload)?;
        if example.is_none() && letter["error"]["kind"] == "provider_rejected" {
            example = Some(letter.clone());
        }
        let (pipeline, kind) = (
            letter["pipeline"].as_str().unwrap_or("?").to_string(),
            letter["error"]["kind"].as_str().unwrap_or("?").to_string(),
        );
        println!(
            "   {pipeline} key={} {kind}{}: {}",
            letter["key"],
            letter["error"]["status"]
                .as_u64()
                .map(|s| format!(" ({s})"))
                .unwrap_or_default(),
            letter["error"]["message"]
                .as_str()
                .unwrap_or("")
                .chars()
                .take(140)
                .collect::<String>()
        );
        *by_kind.entry((pipeline, kind)).or_default() += 1;
    }
    for ((pipeline, kind), n) in by_kind {
        println!("   total {pipeline} {kind}: {n}");
    }
    if let Some(letter) = example {
        println!(
            "\n== a dead letter, as published ==\n{}",
            serde_json::to_string_pretty(&letter)?
        );
    }
    Ok(())
}
