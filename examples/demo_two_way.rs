//! The two-way demo's driver (`scripts/demo.sh`, second part). With the
//! System A stand-in, the mock CRM (sending HubSpot webhooks to syncflow)
//! and `syncflow run --dir examples/two-way` running, it plays a few
//! minutes of a sales team's day through the users' own routes (System A's
//! and the CRMs' `/_admin` edits, never syncflow's API paths) and prints
//! what each side holds after each step, and what syncflow counted.
//!
//! cargo run --example demo_two_way -- --system-a http://127.0.0.1:18090 \
//!     --crm http://127.0.0.1:18081 --syncflow http://127.0.0.1:19465

use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::{Value, json};

type Error = Box<dyn std::error::Error>;

#[derive(Parser)]
struct Args {
    /// System A stand-in's base URL.
    #[arg(long, default_value = "http://127.0.0.1:18090")]
    system_a: String,
    /// The mock CRM's base URL.
    #[arg(long, default_value = "http://127.0.0.1:18081")]
    crm: String,
    /// syncflow's listener (for /metrics).
    #[arg(long, default_value = "http://127.0.0.1:19465")]
    syncflow: String,
}

struct Demo {
    args: Args,
    http: reqwest::Client,
}

/// One side's view of a contact: the fields the demo shows.
#[derive(Debug, Clone, PartialEq)]
struct Contact {
    id: String,
    email: String,
    first: String,
    last: String,
    phone: String,
}

fn text(v: &Value) -> String {
    v.as_str().unwrap_or("-").to_string()
}

impl Demo {
    async fn get(&self, url: String) -> Result<Value, Error> {
        Ok(self
            .http
            .get(url)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?)
    }

    async fn send(
        &self,
        method: reqwest::Method,
        url: String,
        body: Value,
    ) -> Result<Value, Error> {
        let response = self.http.request(method, url).json(&body).send().await?;
        let response = response.error_for_status()?;
        Ok(response.json().await.unwrap_or(Value::Null))
    }

    async fn system_a_state(&self) -> Result<Value, Error> {
        self.get(format!("{}/_admin/state", self.args.system_a))
            .await
    }

    async fn crm_state(&self) -> Result<Value, Error> {
        self.get(format!("{}/_admin/state", self.args.crm)).await
    }

    /// System A's contact with `email`.
    async fn in_system_a(&self, email: &str) -> Result<Option<Contact>, Error> {
        let state = self.system_a_state().await?;
        let found = state["records"].as_object().and_then(|records| {
            records
                .values()
                .find(|r| r["email"] == email)
                .map(|r| Contact {
                    id: text(&r["id"]),
                    email: text(&r["email"]),
                    first: text(&r["first_name"]),
                    last: text(&r["last_name"]),
                    phone: text(&r["phone"]),
                })
        });
        Ok(found)
    }

    /// The CRM `api`'s contact with `email`.
    async fn in_crm(&self, api: &str, email: &str) -> Result<Option<Contact>, Error> {
        let state = self.crm_state().await?;
        let (email_field, first, last, phone, inner) = match api {
            "hubspot" => ("email", "firstname", "lastname", "phone", true),
            _ => ("Email", "FirstName", "LastName", "Phone", false),
        };
        let found = state[api]["records"].as_object().and_then(|records| {
            records.iter().find_map(|(id, r)| {
                let f = &r["fields"];
                let f = if inner && f.get("properties").is_some() {
                    &f["properties"]
                } else {
                    f
                };
                (f[email_field] == email).then(|| Contact {
                    id: id.clone(),
                    email: text(&f[email_field]),
                    first: text(&f[first]),
                    last: text(&f[last]),
                    phone: text(&f[phone]),
                })
            })
        });
        Ok(found)
    }

    /// Waits (30 s at most) until `check` holds on the contact with `email`
    /// on `side` (`system_a`, `hubspot` or `salesforce`).
    async fn wait(
        &self,
        side: &str,
        email: &str,
        check: impl Fn(Option<&Contact>) -> bool,
    ) -> Result<Duration, Error> {
        let started = Instant::now();
        loop {
            let contact = match side {
                "system_a" => self.in_system_a(email).await?,
                api => self.in_crm(api, email).await?,
            };
            if check(contact.as_ref()) {
                return Ok(started.elapsed());
            }
            if started.elapsed() > Duration::from_secs(30) {
                return Err(
                    format!("{side}'s {email} not as expected after 30 s: {contact:?}").into(),
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn api_writes(&self) -> Result<(u64, u64, u64), Error> {
        let (a, crm) = (self.system_a_state().await?, self.crm_state().await?);
        let n = |v: &Value| v.as_u64().unwrap_or(0);
        Ok((
            n(&a["counters"]["api_writes"]),
            n(&crm["hubspot"]["counters"]["api_writes"]),
            n(&crm["salesforce"]["counters"]["api_writes"]),
        ))
    }

    async fn show(&self, email: &str, apis: &[&str]) -> Result<(), Error> {
        let row = |side: &str, c: Option<Contact>| match c {
            Some(c) => println!(
                "     {side:<11} {:<18} first={:<19} last={:<9} phone={}",
                c.id, c.first, c.last, c.phone
            ),
            None => println!("     {side:<11} (none)"),
        };
        row("System A", self.in_system_a(email).await?);
        for api in apis {
            row(api, self.in_crm(api, email).await?);
        }
        Ok(())
    }

    async fn system_a_edit(&self, id: &str, fields: Value) -> Result<(), Error> {
        let url = format!("{}/_admin/contacts/{id}", self.args.system_a);
        self.send(reqwest::Method::PATCH, url, fields)
            .await
            .map(drop)
    }

    async fn crm_edit(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Value,
    ) -> Result<Value, Error> {
        self.send(method, format!("{}/_admin/{path}", self.args.crm), body)
            .await
    }
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let demo = Demo {
        args: Args::parse(),
        http: reqwest::Client::new(),
    };
    use reqwest::Method;
    let ada = "ada@example.com";
    let grace = "grace@example.com";

    println!("1. A user creates Ada in System A (crm: hubspot)");
    let created = demo
        .send(
            Method::POST,
            format!("{}/_admin/contacts", demo.args.system_a),
            json!({"email": ada, "first_name": "Ada", "last_name": "Byron", "phone": "+44 20 7946 0001", "crm": "hubspot"}),
        )
        .await?;
    let ada_a = text(&created["id"]);
    let took = demo.wait("hubspot", ada, |c| c.is_some()).await?;
    println!("   → created in HubSpot after {} ms", took.as_millis());
    demo.show(ada, &["hubspot"]).await?;
    let ada_h = demo.in_crm("hubspot", ada).await?.unwrap().id;
    // Settled: the create's echo (HubSpot's webhook) has come back.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = demo.api_writes().await?;

    println!("2. A salesperson renames her in HubSpot: Ada → Augusta Ada");
    demo.crm_edit(
        Method::PATCH,
        &format!("hubspot/contacts/{ada_h}"),
        json!({"properties": {"firstname": "Augusta Ada"}}),
    )
    .await?;
    let took = demo
        .wait("system_a", ada, |c| {
            c.is_some_and(|c| c.first == "Augusta Ada")
        })
        .await?;
    println!(
        "   → System A has it after {} ms (webhook → inbound pipeline)",
        took.as_millis()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = demo.api_writes().await?;
    println!(
        "   writes since: System A {}, HubSpot {} — System A's CDC event of syncflow's own write came back and was recognised as an echo",
        after.0 - before.0,
        after.1 - before.1
    );

    println!(
        "3. Both sides edit her last name at once (policy latest): System A first, HubSpot 300 ms later"
    );
    demo.system_a_edit(&ada_a, json!({"last_name": "King"}))
        .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    demo.crm_edit(
        Method::PATCH,
        &format!("hubspot/contacts/{ada_h}"),
        json!({"properties": {"lastname": "Lovelace"}}),
    )
    .await?;
    demo.wait("system_a", ada, |c| c.is_some_and(|c| c.last == "Lovelace"))
        .await?;
    demo.wait("hubspot", ada, |c| c.is_some_and(|c| c.last == "Lovelace"))
        .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    println!(
        "   → the newer edit (HubSpot's) holds on both sides; the older one did not overwrite it"
    );
    demo.show(ada, &["hubspot"]).await?;

    println!("4. A user changes her phone in System A; HubSpot owns phone (policy provider)");
    demo.system_a_edit(&ada_a, json!({"phone": "+1 555 0100"}))
        .await?;
    let took = demo
        .wait("system_a", ada, |c| {
            c.is_some_and(|c| c.phone == "+44 20 7946 0001")
        })
        .await?;
    println!(
        "   → set back to HubSpot's value after {} ms; HubSpot unchanged",
        took.as_millis()
    );
    demo.show(ada, &["hubspot"]).await?;

    println!("5. A salesperson creates Grace in Salesforce (polled every second)");
    demo.crm_edit(
        Method::POST,
        "salesforce/contacts",
        json!({"Email": grace, "FirstName": "Grace", "LastName": "Hopper", "Phone": "+1 555 0199"}),
    )
    .await?;
    let took = demo.wait("system_a", grace, |c| c.is_some()).await?;
    println!(
        "   → created in System A after {} ms, linked to the Salesforce contact",
        took.as_millis()
    );
    let grace_a = demo.in_system_a(grace).await?.unwrap().id;
    println!("6. A user edits Grace in System A");
    demo.system_a_edit(&grace_a, json!({"first_name": "Rear Admiral Grace"}))
        .await?;
    let took = demo
        .wait("salesforce", grace, |c| {
            c.is_some_and(|c| c.first == "Rear Admiral Grace")
        })
        .await?;
    println!("   → Salesforce has it after {} ms", took.as_millis());
    demo.show(grace, &["salesforce"]).await?;

    println!("7. The salesperson deletes Ada in HubSpot");
    demo.crm_edit(
        Method::DELETE,
        &format!("hubspot/contacts/{ada_h}"),
        Value::Null,
    )
    .await?;
    let took = demo.wait("system_a", ada, |c| c.is_none()).await?;
    println!("   → deleted in System A after {} ms", took.as_millis());

    tokio::time::sleep(Duration::from_secs(2)).await;
    let (a, h, s) = demo.api_writes().await?;
    println!("== writes syncflow made: System A {a}, HubSpot {h}, Salesforce {s}");
    println!("== syncflow's two-way metrics");
    let metrics = demo
        .http
        .get(format!("{}/metrics", demo.args.syncflow))
        .send()
        .await?
        .text()
        .await?;
    for line in metrics.lines() {
        if line.starts_with("syncflow_twoway_")
            || line.starts_with("syncflow_webhook_requests_total")
            || line.starts_with("syncflow_poll_records_total")
        {
            println!("   {line}");
        }
    }
    Ok(())
}
