//! [`RedisHandle`]: the limiters' (and quotas') connection to Redis, either
//! one server (`redis.url`) or the primary that Redis Sentinels name
//! (`redis.sentinel`), behind one cloneable `ConnectionLike`.
//!
//! With Sentinel, the handle asks the sentinels for the primary as Redis's
//! client guidelines say: each sentinel in turn (`SENTINEL
//! get-master-addr-by-name`), then `ROLE` on the address named, which must
//! answer `master`. It talks to that primary through a `ConnectionManager`
//! until a command fails on the connection (refused, dropped, timed out,
//! abandoned by the caller's timeout) or meets `READONLY` / `MASTERDOWN` (a
//! primary demoted under us): then it forgets that connection, and the next
//! command asks the sentinels again. It never reconnects to a remembered
//! address on its own, so a crashed primary that comes back still thinking
//! it is the primary (before the sentinels turn it into a replica) gets no
//! writes from it.
//!
//! Each primary the sentinels name gets a serial, which changes when they
//! name another address: the lease client (redis.rs) uses it to start a
//! hold on a new primary (docs/limiter.md, "Failover").

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{
    AsyncConnectionConfig, Cmd, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, Pipeline,
    RedisError, RedisFuture, RedisResult, Value,
};
use tokio::sync::watch;
use tokio::time::Instant;

use super::LimiterError;
use super::redis::CALL_TIMEOUT;

/// How long one sentinel, and then the primary it names, may take to answer
/// (connecting included) before the next sentinel is asked.
const SENTINEL_TIMEOUT: Duration = Duration::from_millis(500);
/// After a lookup found no primary, calls fail with its reason for this
/// long rather than ask the sentinels again at once (while a failover runs,
/// every limiter's probes would otherwise keep them asking back to back).
const LOOKUP_PAUSE: Duration = Duration::from_millis(100);

/// Where the limiters find Redis.
pub enum RedisTarget {
    /// One server, at a fixed address.
    Server(redis::Client),
    /// The primary that these sentinels name `master`.
    Sentinel {
        master: String,
        /// Each sentinel's address (and its own credentials, if any).
        sentinels: Vec<ConnectionInfo>,
        /// The password of the primary and its replicas (`requirepass`).
        password: Option<String>,
    },
}

impl From<redis::Client> for RedisTarget {
    fn from(client: redis::Client) -> Self {
        RedisTarget::Server(client)
    }
}

/// A connection for the limiters; cheap to clone, connects lazily (syncflow
/// starts on the local fallback while Redis is down). Needs a tokio runtime.
#[derive(Clone)]
pub struct RedisHandle(Inner);

#[derive(Clone)]
enum Inner {
    Server(ConnectionManager),
    Sentinel(Arc<SentinelPrimary>),
}

/// A connection manager that fails fast and lets the limiter's own probing
/// set the pace of retries: one connection attempt per reconnect, so a probe
/// after Redis is back is not held up by a backoff started while it was away
/// (core.rs counts on hearing that Redis is back within two probes).
fn manager(client: redis::Client) -> RedisResult<ConnectionManager> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CALL_TIMEOUT))
        .set_number_of_retries(0);
    ConnectionManager::new_lazy_with_config(client, config)
}

impl RedisHandle {
    pub fn new(target: RedisTarget) -> Result<Self, LimiterError> {
        Ok(RedisHandle(match target {
            RedisTarget::Server(client) => Inner::Server(manager(client)?),
            RedisTarget::Sentinel {
                master,
                sentinels,
                password,
            } => {
                if sentinels.is_empty() {
                    return Err(LimiterError::Redis(RedisError::from(
                        std::io::Error::other("no sentinel to ask for the Redis primary"),
                    )));
                }
                let (state, _) = watch::channel(State::default());
                Inner::Sentinel(Arc::new(SentinelPrimary {
                    master,
                    sentinels,
                    password,
                    state,
                }))
            }
        }))
    }

    /// The connection to use for one call, and which primary it goes to.
    pub(crate) async fn pin(&self) -> RedisResult<Pinned> {
        match &self.0 {
            Inner::Server(conn) => Ok(Pinned {
                conn: conn.clone(),
                primary: None,
                serial: 0,
            }),
            Inner::Sentinel(primary) => pin_current(primary).await,
        }
    }
}

async fn pin_current(primary: &Arc<SentinelPrimary>) -> RedisResult<Pinned> {
    let current = primary.current().await?;
    Ok(Pinned {
        conn: current.conn,
        primary: Some((Arc::clone(primary), current.generation)),
        serial: current.serial,
    })
}

impl ConnectionLike for RedisHandle {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match &mut self.0 {
            Inner::Server(conn) => conn.req_packed_command(cmd),
            Inner::Sentinel(primary) => {
                let primary = Arc::clone(primary);
                Box::pin(async move { pin_current(&primary).await?.req_packed_command(cmd).await })
            }
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match &mut self.0 {
            Inner::Server(conn) => conn.req_packed_commands(cmd, offset, count),
            Inner::Sentinel(primary) => {
                let primary = Arc::clone(primary);
                Box::pin(async move {
                    pin_current(&primary)
                        .await?
                        .req_packed_commands(cmd, offset, count)
                        .await
                })
            }
        }
    }

    fn get_db(&self) -> i64 {
        match &self.0 {
            Inner::Server(conn) => conn.get_db(),
            Inner::Sentinel(_) => 0,
        }
    }
}

/// One call's connection, to one primary.
pub(crate) struct Pinned {
    conn: ConnectionManager,
    /// With Sentinel: whom to tell when the connection fails.
    primary: Option<(Arc<SentinelPrimary>, u64)>,
    /// Which primary (0 without Sentinel): changes when the sentinels name
    /// another address.
    pub serial: u64,
}

impl Pinned {
    /// Forgets the primary if the command fails on its connection, or is
    /// dropped before it answers.
    fn watch(&self) -> Option<Forget> {
        self.primary.as_ref().map(|(primary, generation)| Forget {
            primary: Arc::clone(primary),
            generation: *generation,
            why: Some("a command was abandoned before it answered"),
        })
    }
}

impl ConnectionLike for Pinned {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let forget = self.watch();
            let result = self.conn.req_packed_command(cmd).await;
            settle(forget, &result);
            result
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let forget = self.watch();
            let result = self.conn.req_packed_commands(cmd, offset, count).await;
            settle(forget, &result);
            result
        })
    }

    fn get_db(&self) -> i64 {
        self.conn.get_db()
    }
}

/// Lets `forget` forget the primary when `result` says the connection or
/// the primary is no good; disarms it otherwise.
fn settle<T>(forget: Option<Forget>, result: &RedisResult<T>) {
    let Some(mut forget) = forget else { return };
    forget.why = match result {
        Err(e) if primary_lost(e) => Some("a command failed on its connection"),
        _ => None,
    };
}

/// The error means the connection is gone, or the server is no (longer a
/// usable) primary.
fn primary_lost(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.is_unrecoverable_error()
        || matches!(e.code(), Some("READONLY" | "MASTERDOWN"))
        // A script's write refused by a replica names the code in its message.
        || e.to_string().contains("READONLY")
}

/// Forgets a primary's connection when dropped, if it has a reason to.
struct Forget {
    primary: Arc<SentinelPrimary>,
    generation: u64,
    why: Option<&'static str>,
}

impl Drop for Forget {
    fn drop(&mut self) {
        if let Some(why) = self.why {
            self.primary.forget(self.generation, why);
        }
    }
}

/// The primary the sentinels name, found on demand.
struct SentinelPrimary {
    master: String,
    sentinels: Vec<ConnectionInfo>,
    password: Option<String>,
    state: watch::Sender<State>,
}

#[derive(Default)]
struct State {
    current: Option<Current>,
    /// A lookup is running (one at a time).
    looking: bool,
    /// Why the last lookup found no primary, and when it ended.
    failed: Option<(String, Instant)>,
    /// Lookups that found a primary.
    generation: u64,
    /// The last primary's address, and its serial.
    address: Option<String>,
    serial: u64,
}

#[derive(Clone)]
struct Current {
    conn: ConnectionManager,
    generation: u64,
    serial: u64,
}

impl SentinelPrimary {
    /// The current primary's connection: the one found last, else the one
    /// a lookup (started now, or running) finds.
    async fn current(self: &Arc<Self>) -> RedisResult<Current> {
        let mut state = self.state.subscribe();
        if let Some(current) = &state.borrow_and_update().current {
            return Ok(current.clone());
        }
        let now = Instant::now();
        let start = self.state.send_if_modified(|s| {
            let paused = s
                .failed
                .as_ref()
                .is_some_and(|(_, at)| now < *at + LOOKUP_PAUSE);
            let start = s.current.is_none() && !s.looking && !paused;
            s.looking |= start;
            start
        });
        if start {
            tokio::spawn(Arc::clone(self).look_up());
        }
        // The sender lives as long as `self`: the wait cannot fail.
        let state = state
            .wait_for(|s| !s.looking)
            .await
            .map_err(|_| lost("the sentinel lookup stopped"))?;
        match (&state.current, &state.failed) {
            (Some(current), _) => Ok(current.clone()),
            (None, failed) => Err(lost(&format!(
                "no Redis primary named {:?}: {}",
                self.master,
                failed.as_ref().map_or("not looked up yet", |(why, _)| why)
            ))),
        }
    }

    /// Forgets the connection of lookup `generation`, if it is still the
    /// current one: the next call asks the sentinels again.
    fn forget(&self, generation: u64, why: &'static str) {
        let forgot = self.state.send_if_modified(|s| {
            let current = s.current.as_ref().map(|c| c.generation);
            let forget = current == Some(generation);
            if forget {
                s.current = None;
            }
            forget
        });
        if forgot {
            tracing::warn!(master = %self.master, reason = why, "lost the Redis primary: asking the sentinels again");
        }
    }

    /// Asks the sentinels; records the primary found, or why none was.
    async fn look_up(self: Arc<Self>) {
        let found = self.find().await;
        self.state.send_modify(|s| {
            s.looking = false;
            match found {
                Ok((address, client)) => match manager(client) {
                    Ok(conn) => {
                        s.generation += 1;
                        if s.address.as_deref() != Some(address.as_str()) {
                            s.serial += 1;
                            match &s.address {
                                Some(old) => tracing::warn!(master = %self.master, from = %old, to = %address, "the sentinels name another Redis primary (failover): the limiters hold once before using it"),
                                None => tracing::info!(master = %self.master, primary = %address, "Redis primary found through the sentinels"),
                            }
                            s.address = Some(address);
                        }
                        s.current = Some(Current {
                            conn,
                            generation: s.generation,
                            serial: s.serial,
                        });
                        s.failed = None;
                    }
                    Err(e) => s.failed = Some((e.to_string(), Instant::now())),
                },
                Err(why) => {
                    tracing::debug!(master = %self.master, error = %why, "no Redis primary from the sentinels");
                    s.failed = Some((why, Instant::now()));
                }
            }
        });
    }

    /// The primary's address and a client for it: the first sentinel that
    /// names one, confirmed by the primary's `ROLE`.
    async fn find(&self) -> Result<(String, redis::Client), String> {
        let mut errors = Vec::new();
        for sentinel in &self.sentinels {
            let sentinel_addr = sentinel.addr().to_string();
            let named = self.ask(sentinel).await;
            let (host, port) = match named {
                Ok(Some(addr)) => addr,
                Ok(None) => {
                    errors.push(format!("{sentinel_addr}: does not know {:?}", self.master));
                    continue;
                }
                Err(e) => {
                    errors.push(format!("{sentinel_addr}: {e}"));
                    continue;
                }
            };
            let address = format!("{host}:{port}");
            match self.confirm(host, port).await {
                Ok(client) => return Ok((address, client)),
                // The sentinel names what it believes; another may know better.
                Err(e) => errors.push(format!("{sentinel_addr} names {address}: {e}")),
            }
        }
        Err(errors.join("; "))
    }

    /// `SENTINEL get-master-addr-by-name` on one sentinel.
    async fn ask(&self, sentinel: &ConnectionInfo) -> RedisResult<Option<(String, u16)>> {
        let mut conn = connect_quickly(sentinel.clone()).await?;
        redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(&self.master)
            .query_async::<Option<(String, u16)>>(&mut conn)
            .await
    }

    /// A client for the primary at `host:port`, once it answers `ROLE` as one.
    async fn confirm(&self, host: String, port: u16) -> RedisResult<redis::Client> {
        let mut info = ConnectionAddr::Tcp(host, port).into_connection_info()?;
        if let Some(password) = &self.password {
            let settings = info.redis_settings().clone().set_password(password);
            info = info.set_redis_settings(settings);
        }
        let mut conn = connect_quickly(info.clone()).await?;
        let role: Vec<Value> = redis::cmd("ROLE").query_async(&mut conn).await?;
        match role.first() {
            Some(Value::BulkString(role)) if role == b"master" => redis::Client::open(info),
            other => Err(lost(&format!("ROLE answered {other:?}, not master"))),
        }
    }
}

/// A connection that gives up after [`SENTINEL_TIMEOUT`], connecting or
/// waiting for an answer.
async fn connect_quickly(info: ConnectionInfo) -> RedisResult<redis::aio::MultiplexedConnection> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(SENTINEL_TIMEOUT))
        .set_response_timeout(Some(SENTINEL_TIMEOUT));
    redis::Client::open(info)?
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

/// An error that counts as Redis being unreachable.
fn lost(why: &str) -> RedisError {
    RedisError::from(std::io::Error::new(
        std::io::ErrorKind::NotConnected,
        why.to_string(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_errors_lose_the_primary() {
        let reset = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert!(primary_lost(&reset));
        assert!(primary_lost(&lost("gone")));
    }

    /// A primary demoted under a client refuses its writes, the scripts'
    /// included: the handle asks the sentinels again.
    #[tokio::test]
    async fn a_replica_refusing_writes_loses_the_primary() {
        use syncflow_testkit::RedisServer;
        let primary = RedisServer::start().expect("redis-server");
        let replica = RedisServer::start_with([
            "--replicaof".to_string(),
            "127.0.0.1".to_string(),
            primary.port().to_string(),
        ])
        .expect("replica");
        let mut conn = redis::Client::open(replica.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let set = redis::cmd("SET")
            .arg("k")
            .arg("v")
            .query_async::<()>(&mut conn)
            .await
            .unwrap_err();
        assert!(primary_lost(&set), "{set}");
        let script = redis::Script::new("return redis.call('SET', KEYS[1], 'v')")
            .key("k")
            .invoke_async::<()>(&mut conn)
            .await
            .unwrap_err();
        assert!(primary_lost(&script), "{script}");
        let read = redis::cmd("GET")
            .arg("k")
            .query_async::<Option<String>>(&mut conn)
            .await;
        assert!(read.is_ok(), "reads are fine");
        let wrong = redis::cmd("GET")
            .query_async::<Option<String>>(&mut conn)
            .await
            .unwrap_err();
        assert!(!primary_lost(&wrong), "a wrong command is not: {wrong}");
    }
}
