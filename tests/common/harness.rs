//! An end-to-end environment: real nats-server and redis-server (testkit),
//! the mock CRM in-process, a copy of the shipped config, and `syncflow run`
//! as a child process (so tests can SIGTERM or kill -9 it).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures::StreamExt;
use serde_json::Value;
use syncflow_mock_crm::{MockCrm, MockCrmConfig, Snapshot};
use syncflow_testkit::{NatsServer, RedisServer};

pub struct Harness {
    pub nats: NatsServer,
    pub redis: RedisServer,
    pub crm: MockCrm,
    pub dir: tempfile::TempDir,
    pub js: jetstream::Context,
}

impl Harness {
    /// Starts NATS, Redis and the mock CRM, and copies the shipped config.
    pub async fn start(crm: MockCrmConfig) -> Harness {
        let nats = tokio::task::block_in_place(NatsServer::start).expect("nats-server");
        Harness::start_on(nats, crm).await
    }

    /// [`Harness::start`] on a NATS server the test started (another
    /// version, other options).
    pub async fn start_on(nats: NatsServer, crm: MockCrmConfig) -> Harness {
        let redis = RedisServer::start().expect("redis-server");
        let crm = MockCrm::start(crm).await.expect("mock CRM");
        let client = async_nats::connect(nats.url())
            .await
            .expect("connect to NATS");
        let js = jetstream::new(client);
        js.get_or_create_stream(jetstream::stream::Config {
            name: "CDC".into(),
            subjects: vec!["cdc.>".into()],
            ..Default::default()
        })
        .await
        .expect("CDC stream");
        Harness {
            nats,
            redis,
            crm,
            dir: super::shipped_config(),
            js,
        }
    }

    pub fn edit(&self, file: &str, from: &str, to: &str) {
        super::edit(self.dir.path(), file, from, to);
    }

    /// Replaces the one line of `file` containing `needle` with `line`.
    pub fn set_line(&self, file: &str, needle: &str, line: &str) {
        super::set_line(self.dir.path(), file, needle, line);
    }

    /// Sets a provider's `rate_limit` (`requests` per `per`, `burst`).
    pub fn set_rate_limit(&self, provider: &str, requests: u32, per: &str, burst: u32) {
        self.set_line(
            &format!("providers/{provider}.yaml"),
            "rate_limit:",
            &format!("rate_limit: {{ requests: {requests}, per: {per}, burst: {burst} }}"),
        );
    }

    /// Short backoffs (10 ms doubling up to 100 ms) and `max_attempts` tries:
    /// retries that finish within a test's time.
    pub fn set_fast_retries(&self, provider: &str, max_attempts: u32) {
        let file = format!("providers/{provider}.yaml");
        self.set_line(&file, "initial_backoff:", "  initial_backoff: 10ms");
        self.set_line(&file, "max_backoff:", "  max_backoff: 100ms");
        self.set_line(
            &file,
            "max_attempts:",
            &format!("  max_attempts: {max_attempts}"),
        );
    }

    /// Sets a provider's `circuit_breaker`.
    pub fn set_circuit_breaker(&self, provider: &str, failure_threshold: u32, open_for: &str) {
        self.set_line(
            &format!("providers/{provider}.yaml"),
            "timeout:",
            &format!(
                "timeout: 10s\ncircuit_breaker: {{ failure_threshold: {failure_threshold}, open_for: {open_for} }}"
            ),
        );
    }

    /// Sets a pipeline's `source.nats.ack_wait`, so messages a killed
    /// instance held come back within the test's time.
    pub fn set_ack_wait(&self, pipeline: &str, ack_wait: &str) {
        let subject = r#"    subject: "cdc.contacts.>""#;
        self.edit(
            &format!("pipelines/{pipeline}.yaml"),
            subject,
            &format!("{subject}\n    ack_wait: {ack_wait}"),
        );
    }

    /// Leaves the HubSpot pipeline alone, its records' account read at
    /// `account` (its tests cut: they have records without one).
    pub fn hubspot_accounts(&self, account: &str) {
        self.remove_pipeline("contacts-to-salesforce");
        self.set_line(
            "pipelines/contacts-to-hubspot.yaml",
            "key: $.after.id",
            &format!("key: $.after.id\naccount: {account}"),
        );
        let file = self.dir.path().join("pipelines/contacts-to-hubspot.yaml");
        let text = std::fs::read_to_string(&file).unwrap();
        std::fs::write(&file, &text[..text.find("\ntests:").unwrap()]).unwrap();
    }

    /// Removes a pipeline file, so only the pipelines a test is about run.
    pub fn remove_pipeline(&self, name: &str) {
        std::fs::remove_file(
            self.dir
                .path()
                .join("pipelines")
                .join(format!("{name}.yaml")),
        )
        .unwrap();
    }

    /// Starts `syncflow run` on the harness's config (drain timeout 10 s).
    pub fn spawn(&self) -> Syncflow {
        Syncflow::spawn(self, self.dir.path(), "10s")
    }

    /// Starts `syncflow run` with `--drain-timeout drain_timeout`.
    pub fn spawn_with_drain_timeout(&self, drain_timeout: &str) -> Syncflow {
        Syncflow::spawn(self, self.dir.path(), drain_timeout)
    }

    /// Runs a `syncflow` command other than `run` on the harness's config,
    /// with `run`'s environment and `stdin` as its input: (exit code,
    /// stdout, stderr).
    pub fn cli(&self, args: &[&str], stdin: &str) -> (i32, String, String) {
        use std::io::Write;
        let mut child = Command::new(env!("CARGO_BIN_EXE_syncflow"))
            .args(args)
            .arg("--dir")
            .arg(self.dir.path())
            .env("NATS_URL", self.nats.url())
            .env("REDIS_URL", self.redis.url())
            .env("HUBSPOT_URL", self.crm.hubspot_url())
            .env("SALESFORCE_URL", self.crm.salesforce_url())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn syncflow");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Publishes to the CDC stream; returns the message's stream sequence.
    pub async fn publish(&self, subject: &str, msg_id: &str, payload: &[u8]) -> u64 {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", msg_id);
        self.js
            .publish_with_headers(subject.to_string(), headers, payload.to_vec().into())
            .await
            .expect("publish")
            .await
            .expect("publish ack")
            .sequence
    }

    /// The durable consumer's state on CDC.
    pub async fn consumer(&self, durable: &str) -> jetstream::consumer::Info {
        let stream = self.js.get_stream("CDC").await.expect("CDC stream");
        let mut consumer: jetstream::consumer::PullConsumer =
            stream.get_consumer(durable).await.expect("consumer");
        consumer.info().await.expect("consumer info").clone()
    }

    /// Waits until every consumer on CDC has nothing pending or unacked
    /// (twice in a row, 200 ms apart).
    pub async fn wait_settled(&self, timeout: Duration) {
        self.wait_settled_except(&[], timeout).await;
    }

    /// [`wait_settled`](Self::wait_settled), ignoring the consumers named in
    /// `idle` (of pipelines that were removed).
    pub async fn wait_settled_except(&self, idle: &[&str], timeout: Duration) {
        let started = Instant::now();
        let mut quiet = 0;
        loop {
            let mut stream = self.js.get_stream("CDC").await.unwrap();
            let mut consumers = stream.consumers();
            let (mut seen, mut busy) = (0, Vec::new());
            while let Some(info) = consumers.next().await {
                let info = info.unwrap();
                if idle.contains(&info.name.as_str()) {
                    continue;
                }
                seen += 1;
                if info.num_pending > 0 || info.num_ack_pending > 0 {
                    busy.push(format!(
                        "{}: {} pending, {} unacked",
                        info.name, info.num_pending, info.num_ack_pending
                    ));
                }
            }
            let _ = stream.info().await;
            quiet = if seen > 0 && busy.is_empty() {
                quiet + 1
            } else {
                0
            };
            if quiet >= 2 {
                return;
            }
            assert!(
                started.elapsed() < timeout,
                "not settled after {timeout:?}: {seen} consumers seen, busy: {busy:?}, {quiet} quiet polls of 2"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until `reached` holds for what the mock CRM has taken, polled
    /// every 20 ms (a snapshot copies every record and request it logged),
    /// at most `timeout`. The panic names `what` was awaited
    /// and shows `log` (the syncflow that should have sent it).
    pub async fn wait_crm(
        &self,
        what: &str,
        timeout: Duration,
        reached: impl Fn(&Snapshot) -> bool,
        log: impl Fn() -> String,
    ) {
        let started = Instant::now();
        while !reached(&self.crm.snapshot()) {
            assert!(
                started.elapsed() < timeout,
                "the CRM has not taken {what} after {timeout:?}; syncflow's log:\n{}",
                log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until at least `n` dead letters were published; returns them.
    pub async fn wait_dead_letters(&self, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let letters = self.dead_letters().await;
            if letters.len() >= n {
                return letters;
            }
            assert!(
                Instant::now() < deadline,
                "{} dead letters, want {n}",
                letters.len()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Every dead letter published so far, in order.
    pub async fn dead_letters(&self) -> Vec<Value> {
        let Ok(stream) = self.js.get_stream("SYNCFLOW_DLQ").await else {
            return Vec::new();
        };
        let consumer = stream
            .create_consumer(jetstream::consumer::pull::OrderedConfig::default())
            .await
            .unwrap();
        let mut messages = consumer.messages().await.unwrap();
        let mut out = Vec::new();
        while let Ok(Some(Ok(msg))) =
            tokio::time::timeout(Duration::from_millis(500), messages.next()).await
        {
            out.push(serde_json::from_slice(&msg.payload).unwrap());
        }
        out
    }
}

/// `syncflow run` as a child process.
pub struct Syncflow {
    child: Child,
    pub http: SocketAddr,
    log: PathBuf,
}

impl Syncflow {
    pub fn spawn(h: &Harness, dir: &Path, drain_timeout: &str) -> Syncflow {
        Self::spawn_with_env(h, dir, drain_timeout, &[])
    }

    /// [`Syncflow::spawn`] with `env` set after the harness's own variables
    /// (so it can point syncflow at another NATS or Redis).
    pub fn spawn_with_env(
        h: &Harness,
        dir: &Path,
        drain_timeout: &str,
        env: &[(&str, String)],
    ) -> Syncflow {
        let http = free_addr();
        let log = dir.join(format!("syncflow-{}.log", http.port()));
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_syncflow"))
            .args(["run", "--drain-timeout", drain_timeout, "--dir"])
            .arg(dir)
            .env("NATS_URL", h.nats.url())
            .env("REDIS_URL", h.redis.url())
            .env("HUBSPOT_URL", h.crm.hubspot_url())
            .env("SALESFORCE_URL", h.crm.salesforce_url())
            .env("SYNCFLOW_HTTP", http.to_string())
            .env("RUST_LOG", "info")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn syncflow");
        Syncflow { child, http, log }
    }

    /// A `syncflow run` started by other means (another environment's
    /// variables), listening on `http`, logging to `log`.
    pub fn from_child(child: Child, http: SocketAddr, log: PathBuf) -> Syncflow {
        Syncflow { child, http, log }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log has a line containing `needle`; returns it.
    pub async fn wait_log(&self, needle: &str, timeout: Duration) -> String {
        let started = Instant::now();
        loop {
            if let Some(line) = self.log().lines().find(|l| l.contains(needle)) {
                return line.to_string();
            }
            assert!(
                started.elapsed() < timeout,
                "no log line with {needle:?} after {timeout:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the sample `series` (name and labels, as exposed) has `value`.
    pub async fn wait_metric(&self, series: &str, value: f64, timeout: Duration) {
        let started = Instant::now();
        loop {
            let seen = super::metrics::value(&self.metrics().await, series);
            if seen == Some(value) {
                return;
            }
            assert!(
                started.elapsed() < timeout,
                "{series} is {seen:?}, not {value}, after {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn metrics(&self) -> String {
        http_client()
            .get(format!("http://{}/metrics", self.http))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .unwrap()
    }

    /// `/readyz`'s status and body (0 and the error when it cannot be read).
    pub async fn readyz(&self) -> (u16, String) {
        match http_client()
            .get(format!("http://{}/readyz", self.http))
            .send()
            .await
        {
            Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
            Err(e) => (0, e.to_string()),
        }
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&self, timeout: Duration) {
        let started = Instant::now();
        loop {
            if self.readyz().await.0 == 200 {
                return;
            }
            assert!(
                started.elapsed() < timeout,
                "syncflow not ready:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Sends SIGTERM and waits for the process to exit (a multi-thread
    /// runtime keeps serving the in-process mock CRM meanwhile).
    pub fn sigterm(&mut self) -> ExitStatus {
        unsafe {
            libc_kill(self.child.id() as i32, 15);
        }
        tokio::task::block_in_place(|| self.child.wait().unwrap())
    }

    pub fn kill9(&mut self) {
        self.child.kill().unwrap();
        tokio::task::block_in_place(|| self.child.wait().unwrap());
    }
}

impl Drop for Syncflow {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A failed assertion about what syncflow did (a wait that timed
        // out, a count that differs) says what went wrong but not why: the
        // process's own log does, and its temporary directory goes with
        // the test. cargo shows a test's output only when it fails.
        if std::thread::panicking() {
            eprintln!("{}", log_tail(&self.log(), &self.log, LOG_TAIL_LINES));
        }
    }
}

/// Lines of a syncflow log a failed test prints.
const LOG_TAIL_LINES: usize = 300;

/// The last `lines` lines of `log` (read from `path`), under a header that
/// names the file and how many lines came before them.
fn log_tail(log: &str, path: &Path, lines: usize) -> String {
    let all: Vec<&str> = log.lines().collect();
    let skipped = all.len().saturating_sub(lines);
    format!(
        "---- syncflow log {} ({} lines{}) ----\n{}",
        path.display(),
        all.len(),
        match skipped {
            0 => String::new(),
            n => format!(", the first {n} left out"),
        },
        all[skipped..].join("\n")
    )
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

/// A loopback address nothing listens on, for a syncflow to serve HTTP on
/// (testkit's `free_port`: below the kernel's ephemeral range).
pub fn free_addr() -> SocketAddr {
    let port = syncflow_testkit::free_port().expect("a free loopback port");
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A client that gives up after a few seconds, so a hung syncflow fails the
/// test instead of hanging it.
fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}
