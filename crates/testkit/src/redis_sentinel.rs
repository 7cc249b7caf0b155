//! A Redis primary, its replica and Redis Sentinels watching them, on free
//! loopback ports: to test what a failover does to Redis's clients.
//!
//! The primary and the replica (`--replicaof`) are [`RedisServer`]s; each
//! sentinel is `redis-server <conf> --sentinel` with its configuration file,
//! which it rewrites, in its own temporary directory. The sentinels judge the
//! primary down after [`DOWN_AFTER`] and fail over to the replica.

use std::ffi::OsString;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use super::server::{POLL_INTERVAL, PROBE_TIMEOUT, io_error};
use super::{RedisServer, Server, ServerKind, TestkitError, temp_dir};

/// The name the sentinels know the primary by.
pub const MASTER_NAME: &str = "mymaster";
/// How long the primary may not answer before a sentinel judges it down.
pub const DOWN_AFTER: Duration = Duration::from_millis(1000);
const FAILOVER_TIMEOUT: Duration = Duration::from_millis(3000);
/// How long the replica may take to sync, and the sentinels to find the
/// replica and each other.
const SETUP_DEADLINE: Duration = Duration::from_secs(20);
/// How long a failover may take after the primary was killed.
const FAILOVER_DEADLINE: Duration = Duration::from_secs(30);
const CONF: &str = "sentinel.conf";

/// The `redis-server --sentinel` kind of [`Server`]: its configuration file
/// is `sentinel.conf` in its data directory, written before it starts.
pub struct RedisSentinelKind;

impl ServerKind for RedisSentinelKind {
    const BINARY: &'static str = "redis-server";
    const INSTALL: &'static str = "apt-get install -y redis-server";
    const SCHEME: &'static str = "redis";

    fn args(port: u16, dir: &Path) -> Vec<OsString> {
        let port = port.to_string();
        let mut args: Vec<OsString> = vec![dir.join(CONF).into()];
        args.extend(
            [
                "--sentinel",
                "--port",
                &port,
                "--bind",
                "127.0.0.1",
                "--dir",
            ]
            .map(OsString::from),
        );
        args.push(dir.into());
        args
    }

    /// A sentinel answers `PING` like a server.
    fn probe(port: u16) -> io::Result<()> {
        match command(port, None, &["PING"])? {
            Resp::Simple(pong) if pong == "PONG" => Ok(()),
            other => Err(io::Error::other(format!("PING answered {other:?}"))),
        }
    }
}

/// A Redis sentinel on a free loopback port.
pub type SentinelServer = Server<RedisSentinelKind>;

/// A primary, a replica and 1 to 3 sentinels (quorum: a majority of them).
///
/// Dropping it kills every process and removes their directories.
///
/// ```no_run
/// # fn main() -> Result<(), syncflow_testkit::TestkitError> {
/// let mut redis = syncflow_testkit::RedisSentinel::start()?;
/// let sentinels = redis.sentinel_urls(); // for a client that asks them
/// redis.kill_primary();
/// let promoted = redis.wait_for_failover()?; // the replica's port
/// # Ok(()) }
/// ```
pub struct RedisSentinel {
    sentinels: Vec<SentinelServer>,
    /// The first started as the primary, the second as its replica.
    nodes: Vec<RedisServer>,
    /// Index in `nodes` of the primary the sentinels last named.
    primary: usize,
    password: Option<String>,
}

impl RedisSentinel {
    /// A primary, a replica and one sentinel, without passwords.
    pub fn start() -> Result<Self, TestkitError> {
        Self::start_with(1, None)
    }

    /// A primary and a replica requiring `password` (if any; the replica
    /// and the sentinels authenticate with it), watched by `sentinels`
    /// sentinels (1 to 3) that need a majority of them to fail over.
    pub fn start_with(sentinels: usize, password: Option<&str>) -> Result<Self, TestkitError> {
        assert!((1..=3).contains(&sentinels), "1 to 3 sentinels");
        let auth: Vec<String> = match password {
            Some(p) => ["--requirepass", p, "--masterauth", p]
                .map(str::to_string)
                .into(),
            None => Vec::new(),
        };
        let primary = RedisServer::start_with(&auth)?;
        let mut replica_args = vec![
            "--replicaof".to_string(),
            "127.0.0.1".to_string(),
            primary.port().to_string(),
        ];
        replica_args.extend(auth.iter().cloned());
        let replica = RedisServer::start_with(replica_args)?;
        let mut setup = RedisSentinel {
            sentinels: Vec::new(),
            nodes: vec![primary, replica],
            primary: 0,
            password: password.map(str::to_string),
        };
        setup.wait_for("the replica to sync", || {
            let info = setup.info_replication(1)?;
            match info.contains("master_link_status:up") {
                true => Ok(()),
                false => Err(io::Error::other("replication link not up")),
            }
        })?;

        let quorum = sentinels / 2 + 1;
        for _ in 0..sentinels {
            let dir = temp_dir("redis-sentinel")?;
            let mut conf = format!(
                "sentinel monitor {MASTER_NAME} 127.0.0.1 {} {quorum}\n\
                 sentinel down-after-milliseconds {MASTER_NAME} {}\n\
                 sentinel failover-timeout {MASTER_NAME} {}\n\
                 sentinel parallel-syncs {MASTER_NAME} 1\n",
                setup.nodes[0].port(),
                DOWN_AFTER.as_millis(),
                FAILOVER_TIMEOUT.as_millis(),
            );
            if let Some(p) = password {
                conf.push_str(&format!("sentinel auth-pass {MASTER_NAME} {p}\n"));
            }
            std::fs::write(dir.path().join(CONF), conf)
                .map_err(io_error("write the sentinel's configuration"))?;
            setup
                .sentinels
                .push(SentinelServer::start_in(dir, Vec::<OsString>::new())?);
        }
        // A failover needs the replica known, and a majority of sentinels
        // known to each other.
        for i in 0..sentinels {
            let port = setup.sentinels[i].port();
            setup.wait_for("the sentinels to find the replica and each other", || {
                let fields = sentinel_master(port)?;
                let field = |name: &str| fields.iter().find(|(k, _)| k == name).map(|(_, v)| v);
                let count = |name: &str| field(name).and_then(|v| v.parse::<usize>().ok());
                if field("flags").map(String::as_str) == Some("master")
                    && count("num-slaves") >= Some(1)
                    && count("num-other-sentinels") == Some(sentinels - 1)
                {
                    Ok(())
                } else {
                    Err(io::Error::other(format!("SENTINEL MASTER: {fields:?}")))
                }
            })?;
        }
        Ok(setup)
    }

    /// The primary's name for the sentinels (`mymaster`).
    pub fn master_name(&self) -> &'static str {
        MASTER_NAME
    }

    /// `redis://127.0.0.1:PORT` of every sentinel.
    pub fn sentinel_urls(&self) -> Vec<String> {
        self.sentinels.iter().map(SentinelServer::url).collect()
    }

    /// The URL of the primary the sentinels named last (at start, or after
    /// [`RedisSentinel::wait_for_failover`]).
    pub fn primary_url(&self) -> String {
        self.nodes[self.primary].url()
    }

    pub fn primary_port(&self) -> u16 {
        self.nodes[self.primary].port()
    }

    /// The primary (0) and the replica (1) as started.
    pub fn node(&self, i: usize) -> &RedisServer {
        &self.nodes[i]
    }

    /// Kills the primary with SIGKILL; returns its port.
    pub fn kill_primary(&mut self) -> u16 {
        self.nodes[self.primary].kill();
        self.primary_port()
    }

    /// Waits until a sentinel names another node as the primary and that
    /// node answers as one; returns its port.
    pub fn wait_for_failover(&mut self) -> Result<u16, TestkitError> {
        let old = self.primary_port();
        let started = Instant::now();
        loop {
            let last_error = match self.master_addr() {
                Ok(port) if port != old => match self.nodes.iter().position(|n| n.port() == port) {
                    Some(i) => match self.role(i) {
                        Ok(role) if role == "master" => {
                            self.primary = i;
                            tracing::debug!(port, elapsed = ?started.elapsed(), "sentinel failed over");
                            return Ok(port);
                        }
                        Ok(role) => format!("port {port} answers ROLE {role}"),
                        Err(e) => format!("port {port}: {e}"),
                    },
                    None => format!("sentinels name port {port}, none of ours"),
                },
                Ok(_) => format!("sentinels still name port {old}"),
                Err(e) => e.to_string(),
            };
            if started.elapsed() >= FAILOVER_DEADLINE {
                return Err(self.not_ready("the failover", started, last_error));
            }
            thread::sleep(POLL_INTERVAL.max(Duration::from_millis(50)));
        }
    }

    /// The primary's port as the first sentinel that answers names it
    /// (`SENTINEL get-master-addr-by-name`).
    pub fn master_addr(&self) -> io::Result<u16> {
        let mut last = io::Error::other("no sentinel");
        for sentinel in &self.sentinels {
            let reply = command(
                sentinel.port(),
                None,
                &["SENTINEL", "get-master-addr-by-name", MASTER_NAME],
            );
            match reply {
                Ok(Resp::Array(Some(items))) if items.len() == 2 => {
                    if let Resp::Bulk(Some(port)) = &items[1] {
                        return port
                            .parse()
                            .map_err(|_| io::Error::other(format!("port {port:?}")));
                    }
                    last = io::Error::other(format!("{items:?}"));
                }
                Ok(other) => last = io::Error::other(format!("{other:?}")),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Node `i`'s role (`master` or `slave`), from `ROLE`.
    fn role(&self, i: usize) -> io::Result<String> {
        match command(self.nodes[i].port(), self.password.as_deref(), &["ROLE"])? {
            Resp::Array(Some(items)) => match items.first() {
                Some(Resp::Bulk(Some(role))) => Ok(role.clone()),
                other => Err(io::Error::other(format!("ROLE answered {other:?}"))),
            },
            other => Err(io::Error::other(format!("ROLE answered {other:?}"))),
        }
    }

    fn info_replication(&self, i: usize) -> io::Result<String> {
        match command(
            self.nodes[i].port(),
            self.password.as_deref(),
            &["INFO", "replication"],
        )? {
            Resp::Bulk(Some(info)) => Ok(info),
            other => Err(io::Error::other(format!("INFO answered {other:?}"))),
        }
    }

    fn wait_for(
        &self,
        what: &'static str,
        mut probe: impl FnMut() -> io::Result<()>,
    ) -> Result<(), TestkitError> {
        let started = Instant::now();
        loop {
            let error = match probe() {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            if started.elapsed() >= SETUP_DEADLINE {
                return Err(self.not_ready(what, started, error.to_string()));
            }
            thread::sleep(POLL_INTERVAL.max(Duration::from_millis(50)));
        }
    }

    fn not_ready(&self, what: &'static str, started: Instant, error: String) -> TestkitError {
        let nodes = self
            .nodes
            .iter()
            .map(|n| format!("== redis {}:\n{}", n.url(), n.log_tail()));
        let sentinels = self
            .sentinels
            .iter()
            .map(|s| format!("== sentinel {}:\n{}", s.url(), s.log_tail()));
        TestkitError::ClusterNotReady {
            cluster: what,
            waited: started.elapsed(),
            last_probe_error: error,
            logs: nodes.chain(sentinels).collect::<Vec<_>>().join("\n"),
        }
    }
}

/// `SENTINEL MASTER mymaster` as field and value pairs.
fn sentinel_master(port: u16) -> io::Result<Vec<(String, String)>> {
    match command(port, None, &["SENTINEL", "MASTER", MASTER_NAME])? {
        Resp::Array(Some(items)) => Ok(items
            .chunks(2)
            .filter_map(|pair| match pair {
                [Resp::Bulk(Some(k)), Resp::Bulk(Some(v))] => Some((k.clone(), v.clone())),
                _ => None,
            })
            .collect()),
        other => Err(io::Error::other(format!("SENTINEL MASTER: {other:?}"))),
    }
}

/// A RESP2 reply.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Resp {
    Simple(String),
    Error(String),
    Integer(i64),
    Bulk(Option<String>),
    Array(Option<Vec<Resp>>),
}

/// Sends one command (after `AUTH password`, if any) to the server on
/// `port` and returns its reply; an error reply is an `Err`.
pub(crate) fn command(port: u16, password: Option<&str>, args: &[&str]) -> io::Result<Resp> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, PROBE_TIMEOUT)?;
    stream.set_read_timeout(Some(PROBE_TIMEOUT))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    if let Some(password) = password {
        stream.write_all(&encode(&["AUTH", password]))?;
        if let Resp::Error(e) = read(&mut reader)? {
            return Err(io::Error::other(format!("AUTH: {e}")));
        }
    }
    stream.write_all(&encode(args))?;
    match read(&mut reader)? {
        Resp::Error(e) => Err(io::Error::other(e)),
        reply => Ok(reply),
    }
}

fn encode(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n{arg}\r\n", arg.len()).as_bytes());
    }
    out
}

fn read(reader: &mut impl BufRead) -> io::Result<Resp> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Err(io::Error::other("connection closed"));
    }
    let line = line.trim_end_matches(['\r', '\n']);
    let (kind, rest) = line.split_at(line.len().min(1));
    let number = || {
        rest.parse::<i64>()
            .map_err(|_| io::Error::other(format!("bad RESP line {line:?}")))
    };
    Ok(match kind {
        "+" => Resp::Simple(rest.to_string()),
        "-" => Resp::Error(rest.to_string()),
        ":" => Resp::Integer(number()?),
        "$" => match usize::try_from(number()?) {
            Ok(len) => {
                let mut body = vec![0; len + 2];
                reader.read_exact(&mut body)?;
                body.truncate(len);
                Resp::Bulk(Some(String::from_utf8_lossy(&body).into_owned()))
            }
            Err(_) => Resp::Bulk(None),
        },
        "*" => match usize::try_from(number()?) {
            Ok(len) => Resp::Array(Some(
                (0..len).map(|_| read(reader)).collect::<io::Result<_>>()?,
            )),
            Err(_) => Resp::Array(None),
        },
        _ => return Err(io::Error::other(format!("bad RESP line {line:?}"))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resp_replies_are_read() {
        let mut input: &[u8] = b"*3\r\n$6\r\nmaster\r\n:42\r\n*-1\r\n+OK\r\n-ERR no\r\n$-1\r\n";
        assert_eq!(
            read(&mut input).unwrap(),
            Resp::Array(Some(vec![
                Resp::Bulk(Some("master".into())),
                Resp::Integer(42),
                Resp::Array(None),
            ]))
        );
        assert_eq!(read(&mut input).unwrap(), Resp::Simple("OK".into()));
        assert_eq!(read(&mut input).unwrap(), Resp::Error("ERR no".into()));
        assert_eq!(read(&mut input).unwrap(), Resp::Bulk(None));
    }

    /// The primary killed: the sentinel promotes the replica, which has the
    /// primary's data.
    #[test]
    fn the_replica_takes_over_when_the_primary_dies() {
        let mut redis = RedisSentinel::start_with(1, Some("pa55")).expect("start");
        let first = redis.primary_port();
        assert_eq!(redis.master_addr().unwrap(), first);
        command(first, Some("pa55"), &["SET", "kept", "yes"]).unwrap();
        command(first, Some("pa55"), &["WAIT", "1", "1000"]).unwrap();

        let started = Instant::now();
        assert_eq!(redis.kill_primary(), first);
        let promoted = redis.wait_for_failover().expect("failover");
        println!("failover took {:?}", started.elapsed());
        assert_ne!(promoted, first);
        assert_eq!(redis.primary_port(), promoted);
        assert_eq!(redis.master_addr().unwrap(), promoted);
        assert_eq!(
            command(promoted, Some("pa55"), &["GET", "kept"]).unwrap(),
            Resp::Bulk(Some("yes".into()))
        );
        assert!(command(promoted, None, &["GET", "kept"]).is_err(), "NOAUTH");
    }
}
