//! A two-way environment: real nats-server and redis-server, the mock CRM
//! sending HubSpot webhooks to syncflow, the System A stand-in publishing
//! CDC events, a copy of `examples/two-way`, and `syncflow run` as a child
//! process on an address fixed for the environment (the webhooks' target
//! stays valid across restarts).

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use syncflow_mock_crm::{MockCrm, MockCrmConfig, WebhookConfig};
use syncflow_system_a::{SystemA, SystemAConfig};
use syncflow_testkit::{NatsServer, RedisServer};

use super::harness::Syncflow;

pub const APP_SECRET: &str = "test-app-secret";

pub struct TwoWay {
    pub nats: NatsServer,
    pub redis: RedisServer,
    pub crm: MockCrm,
    pub system_a: SystemA,
    pub dir: tempfile::TempDir,
    /// syncflow's listener: metrics and `/hooks/<provider>`.
    pub http: SocketAddr,
}

impl TwoWay {
    /// Starts everything but syncflow; the mock sends its webhooks with
    /// `webhook` adjusted (`url` and `secret` are set here).
    pub async fn start(crm: MockCrmConfig, webhook: impl FnOnce(&mut WebhookConfig)) -> TwoWay {
        let nats = NatsServer::start().expect("nats-server");
        let redis = RedisServer::start().expect("redis-server");
        let system_a = SystemA::start(SystemAConfig {
            nats_url: nats.url(),
            ..SystemAConfig::default()
        })
        .await
        .expect("System A stand-in");
        let crm = MockCrm::start(crm).await.expect("mock CRM");
        let http = super::harness::free_addr();
        let mut hook = WebhookConfig::new(format!("http://{http}/hooks/hubspot"), APP_SECRET);
        webhook(&mut hook);
        crm.set_webhook(Some(hook)).expect("webhook config");
        let dir = syncflow_testkit::example_config("two-way").expect("copy examples/two-way");
        TwoWay {
            nats,
            redis,
            crm,
            system_a,
            dir,
            http,
        }
    }

    /// Starts `syncflow run` on the environment's config.
    pub fn spawn(&self) -> Syncflow {
        self.spawn_on(self.http)
    }

    /// [`spawn`](Self::spawn), listening on `http` (a second instance).
    pub fn spawn_on(&self, http: SocketAddr) -> Syncflow {
        let log = self.dir.path().join(format!("syncflow-{}.log", now_ms()));
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_syncflow"))
            .args(["run", "--drain-timeout", "5s", "--dir"])
            .arg(self.dir.path())
            .env("NATS_URL", self.nats.url())
            .env("REDIS_URL", self.redis.url())
            .env("HUBSPOT_URL", self.crm.hubspot_url())
            .env("SALESFORCE_URL", self.crm.salesforce_url())
            .env("SYSTEM_A_URL", self.system_a.base_url())
            .env("HUBSPOT_APP_SECRET", APP_SECRET)
            .env("SYNCFLOW_HTTP", http.to_string())
            .env(
                "RUST_LOG",
                std::env::var("SYNCFLOW_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn syncflow");
        Syncflow::from_child(child, http, log)
    }

    /// Waits until `check` holds, or fails with what it last saw.
    pub async fn wait_for<T: std::fmt::Debug>(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut(&Self) -> Result<T, String>,
    ) -> T {
        let started = Instant::now();
        loop {
            match check(self) {
                Ok(v) => return v,
                Err(last) => assert!(
                    started.elapsed() < timeout,
                    "{what}: not after {timeout:?}; last: {last}\n{}",
                    self.logs()
                ),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every syncflow log of the environment, oldest first (the tail of each).
    pub fn logs(&self) -> String {
        let mut files: Vec<_> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .collect();
        files.sort();
        files
            .iter()
            .map(|p| {
                let text = std::fs::read_to_string(p).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                let tail = lines[lines.len().saturating_sub(80)..].join("\n");
                format!("--- {}\n{tail}", p.display())
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// System A's contact `id`, if it exists.
    pub fn a(&self, id: &str) -> Option<Value> {
        self.system_a.get(id)
    }

    /// HubSpot's contact `id`'s properties.
    pub fn hubspot(&self, id: &str) -> Option<Map<String, Value>> {
        self.crm
            .snapshot()
            .hubspot
            .records
            .get(id)
            .map(|r| r.fields.clone())
    }

    /// Salesforce's contact `id`'s fields.
    pub fn salesforce(&self, id: &str) -> Option<Map<String, Value>> {
        self.crm
            .snapshot()
            .salesforce
            .records
            .get(id)
            .map(|r| r.fields.clone())
    }

    /// The HubSpot contact with `email`: its id.
    pub fn hubspot_id_of(&self, email: &str) -> Option<String> {
        self.crm
            .snapshot()
            .hubspot
            .records
            .iter()
            .find(|(_, r)| r.fields.get("email").and_then(Value::as_str) == Some(email))
            .map(|(id, _)| id.clone())
    }

    /// The Salesforce contact with `email`: its id.
    pub fn salesforce_id_of(&self, email: &str) -> Option<String> {
        self.crm
            .snapshot()
            .salesforce
            .records
            .iter()
            .find(|(_, r)| r.fields.get("Email").and_then(Value::as_str) == Some(email))
            .map(|(id, _)| id.clone())
    }

    /// System A's contact with `email`: its id.
    pub fn a_id_of(&self, email: &str) -> Option<String> {
        self.system_a
            .snapshot()
            .records
            .iter()
            .find(|(_, r)| r.get("email").and_then(Value::as_str) == Some(email))
            .map(|(id, _)| id.clone())
    }

    /// The CRMs' request logs (with `record_log`), for failure messages.
    pub fn crm_log(&self) -> String {
        let snap = self.crm.snapshot();
        let line = |api: &str, r: &syncflow_mock_crm::LoggedRequest| {
            format!(
                "{api} {} {} {} key={:?} {}",
                r.method, r.path, r.status, r.idempotency_key, r.body
            )
        };
        snap.hubspot
            .log
            .iter()
            .map(|r| line("hubspot", r))
            .chain(snap.salesforce.log.iter().map(|r| line("salesforce", r)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Write counts: (System A's API writes, HubSpot's, Salesforce's).
    pub fn writes(&self) -> (u64, u64, u64) {
        let crm = self.crm.snapshot();
        (
            self.system_a.snapshot().counters.api_writes,
            crm.hubspot.counters.api_writes,
            crm.salesforce.counters.api_writes,
        )
    }

    /// Waits until the write counts stay the same for `quiet` (every
    /// webhook delivered meanwhile).
    pub async fn wait_quiet(&self, quiet: Duration, timeout: Duration) -> (u64, u64, u64) {
        let started = Instant::now();
        let mut last = (self.writes(), Instant::now());
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let now = self.writes();
            let pending = self.crm.webhook_stats().pending;
            if now != last.0 || pending > 0 {
                last = (now, Instant::now());
            } else if last.1.elapsed() >= quiet {
                return now;
            }
            assert!(
                started.elapsed() < timeout,
                "writes still changing after {timeout:?}: {now:?}, {pending} webhook events pending"
            );
        }
    }
}

fn now_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
}
