//! Supervision shared by every kind of test server: pick a port, spawn the
//! binary with its output in a log file, wait until it answers, stop it.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::marker::PhantomData;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::TestkitError;

/// How long a server may take to answer after it was spawned.
const READY_DEADLINE: Duration = Duration::from_secs(10);
/// How long a server may take to exit after SIGTERM before it is killed.
const STOP_DEADLINE: Duration = Duration::from_secs(10);
pub(crate) const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// Connect and read timeout of one readiness probe.
pub(crate) const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// Fresh ports tried when the chosen one was taken before the server bound it.
const START_ATTEMPTS: usize = 3;
const LOG_TAIL_LINES: usize = 20;

/// What differs between kinds of server: the binary, its arguments and how
/// to tell that it is ready.
pub trait ServerKind {
    /// Executable looked up on `PATH`.
    const BINARY: &'static str;
    /// The command that installs the binary, quoted when it is missing.
    const INSTALL: &'static str;
    /// Scheme of [`Server::url`].
    const SCHEME: &'static str;
    /// Arguments for a server listening on `port` and keeping its data in `dir`.
    fn args(port: u16, dir: &Path) -> Vec<OsString>;
    /// Succeeds once the server on `port` answers like a ready server.
    fn probe(port: u16) -> io::Result<()>;
}

/// A running (or stopped) server process on a fixed loopback port.
///
/// Dropping it kills the process and removes its data directory.
pub struct Server<K: ServerKind> {
    port: u16,
    dir: TempDir,
    /// Arguments after the kind's own (authentication, TLS...).
    extra: Vec<OsString>,
    /// The executable, when not the kind's own on `PATH`.
    program: Option<OsString>,
    child: Option<Child>,
    kind: PhantomData<K>,
}

impl<K: ServerKind> Server<K> {
    /// Starts the server on a free port and waits until it is ready.
    pub fn start() -> Result<Self, TestkitError> {
        Self::start_with(Vec::<OsString>::new())
    }

    /// [`Server::start`] with `extra` arguments after the kind's own, for
    /// example `["--user", "u", "--pass", "p"]` for a NATS with users.
    pub fn start_with(
        extra: impl IntoIterator<Item = impl Into<OsString>>,
    ) -> Result<Self, TestkitError> {
        Self::start_in(temp_dir(K::BINARY)?, extra)
    }

    /// [`Server::start_with`] in a data directory the caller made, for a
    /// server that reads files written there first (a configuration file).
    pub fn start_in(
        dir: TempDir,
        extra: impl IntoIterator<Item = impl Into<OsString>>,
    ) -> Result<Self, TestkitError> {
        Self::start_program(None, dir, extra)
    }

    /// [`Server::start_in`] running `program` (a path) rather than the
    /// kind's binary on `PATH`: another version of the server.
    pub fn start_program(
        program: Option<OsString>,
        dir: TempDir,
        extra: impl IntoIterator<Item = impl Into<OsString>>,
    ) -> Result<Self, TestkitError> {
        let extra: Vec<OsString> = extra.into_iter().map(Into::into).collect();
        let mut server = Server {
            port: 0,
            dir,
            extra,
            program,
            child: None,
            kind: PhantomData,
        };
        let mut attempt = 1;
        loop {
            server.port = free_port()?;
            match server.launch() {
                Ok(()) => return Ok(server),
                // Between our probe bind and the server's own bind, another
                // process may still take the port.
                Err(TestkitError::Exited { log_tail, .. })
                    if attempt < START_ATTEMPTS && mentions_port_taken(&log_tail) =>
                {
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The server process's id while it runs: for a benchmark that reads
    /// its CPU time.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `SCHEME://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("{}://127.0.0.1:{}", K::SCHEME, self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's data directory (also a place for a test's files).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Kills the process with SIGKILL, as a crash would. Does nothing if it is
    /// not running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Errors mean the process already exited: nothing left to kill.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the process gracefully (SIGTERM), killing it if it is still
    /// running after a few seconds. Does nothing if it is not running.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // Linux PIDs are at most 2^22, so the cast to `pid_t` is exact.
        let pid = child.id() as libc::pid_t;
        // SAFETY: `kill` has no memory-safety preconditions; `pid` is our own
        // child, not yet reaped, so it cannot name another process.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_DEADLINE;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            thread::sleep(POLL_INTERVAL);
        }
        tracing::warn!(
            binary = K::BINARY,
            port = self.port,
            "server ignored SIGTERM; killing it"
        );
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Stops the server if it is running, then starts it again on the same
    /// port with the same data directory, and waits until it is ready.
    pub fn restart(&mut self) -> Result<(), TestkitError> {
        self.stop();
        self.launch()
    }

    fn launch(&mut self) -> Result<(), TestkitError> {
        let log = self.open_log()?;
        let log_for_stderr = log
            .try_clone()
            .map_err(io_error("duplicate the log file"))?;
        let program = self
            .program
            .clone()
            .unwrap_or_else(|| OsString::from(K::BINARY));
        let child = Command::new(program)
            .args(K::args(self.port, self.dir.path()))
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_for_stderr)
            .spawn()
            .map_err(|source| match source.kind() {
                io::ErrorKind::NotFound => TestkitError::NotInstalled {
                    binary: K::BINARY,
                    install: K::INSTALL,
                },
                _ => io_error(&format!("spawn {}", K::BINARY))(source),
            })?;
        self.child = Some(child);
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> Result<(), TestkitError> {
        let started = Instant::now();
        loop {
            // The exit check comes first: a probe answered by some other
            // server on a stolen port must not count as ours being ready.
            if let Some(status) = self.exit_status()? {
                self.child = None;
                return Err(TestkitError::Exited {
                    binary: K::BINARY,
                    port: self.port,
                    status,
                    log_tail: self.log_tail(),
                });
            }
            let probe_error = match K::probe(self.port) {
                Ok(()) => {
                    tracing::debug!(binary = K::BINARY, port = self.port, elapsed = ?started.elapsed(), "test server ready");
                    return Ok(());
                }
                Err(e) => e,
            };
            if started.elapsed() >= READY_DEADLINE {
                self.kill();
                return Err(TestkitError::NotReady {
                    binary: K::BINARY,
                    port: self.port,
                    waited: started.elapsed(),
                    last_probe_error: probe_error.to_string(),
                    log_tail: self.log_tail(),
                });
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    fn exit_status(&mut self) -> Result<Option<std::process::ExitStatus>, TestkitError> {
        match self.child.as_mut() {
            Some(child) => child
                .try_wait()
                .map_err(io_error(&format!("check on {}", K::BINARY))),
            None => Ok(None),
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join(format!("{}.log", K::BINARY))
    }

    /// Opened for appending, so a restart keeps the earlier runs' lines.
    fn open_log(&self) -> Result<File, TestkitError> {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(io_error("open the server log"))
    }

    /// The last lines of the server's log (all its runs), for error messages.
    pub fn log_tail(&self) -> String {
        let log = match std::fs::read(self.log_path()) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) => return format!("(log unreadable: {e})"),
        };
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
    }
}

impl<K: ServerKind> Drop for Server<K> {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A new temporary directory named after `binary`, removed when dropped.
pub fn temp_dir(binary: &str) -> Result<TempDir, TestkitError> {
    tempfile::Builder::new()
        .prefix(&format!("syncflow-{binary}-"))
        .tempdir()
        .map_err(io_error("create a temporary directory"))
}

/// A loopback port nothing listens on, for a program started next to bind.
///
/// Picked below the kernel's ephemeral range, as bench/run.sh's `free_port`
/// does: a port the kernel hands out for a bind to port 0 can be taken
/// again, before the program binds it, as the local end of one of the
/// test's own connections (syncflow's HTTP port once was: "Address already
/// in use"). Ports below the range are only ever taken by a program that
/// names them; a counter keeps this process's picks apart, a start drawn
/// from the process id keeps test processes apart.
pub fn free_port() -> Result<u16, TestkitError> {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOWEST: u32 = 20_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let span = ephemeral_low().saturating_sub(LOWEST).max(1_000);
    let start = std::process::id().wrapping_mul(7_919);
    for _ in 0..span {
        let port = LOWEST + start.wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed)) % span;
        let port = port as u16;
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return Ok(port);
        }
    }
    Err(io_error("find a free loopback port")(io::Error::new(
        io::ErrorKind::AddrInUse,
        format!("every port from {LOWEST} to {} is taken", LOWEST + span),
    )))
}

/// The lowest port of the kernel's ephemeral range (32768 by default).
fn ephemeral_low() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

/// Connects to the server on `port`, sends `request` (if any) and returns the
/// first line it answers: the readiness probes of line-based protocols.
pub(super) fn exchange_line(port: u16, request: &[u8]) -> io::Result<String> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, PROBE_TIMEOUT)?;
    stream.set_read_timeout(Some(PROBE_TIMEOUT))?;
    stream.write_all(request)?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    Ok(line)
}

pub(crate) fn mentions_port_taken(log: &str) -> bool {
    log.to_ascii_lowercase().contains("address already in use")
}

pub(crate) fn io_error(action: &str) -> impl FnOnce(io::Error) -> TestkitError + '_ {
    move |source| TestkitError::Io {
        action: action.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Missing;

    impl ServerKind for Missing {
        const BINARY: &'static str = "syncflow-testkit-no-such-server";
        const INSTALL: &'static str = "apt-get install -y syncflow-testkit-no-such-server";
        const SCHEME: &'static str = "none";
        fn args(_: u16, _: &Path) -> Vec<OsString> {
            Vec::new()
        }
        fn probe(_: u16) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn missing_binary_names_the_install_command() {
        let error = Server::<Missing>::start().err().expect("start must fail");
        assert_eq!(
            error.to_string(),
            "syncflow-testkit-no-such-server not found on PATH: install it with \
             \"apt-get install -y syncflow-testkit-no-such-server\""
        );
    }

    #[test]
    fn port_taken_is_recognised_in_either_spelling() {
        assert!(mentions_port_taken(
            "listen tcp 127.0.0.1:4222: bind: address already in use"
        ));
        assert!(mentions_port_taken(
            "Warning: Could not create server TCP listening socket 127.0.0.1:6379: bind: Address already in use"
        ));
        assert!(!mentions_port_taken("Server is ready"));
    }
}
