//! `redis-server` without persistence.

use std::ffi::OsString;
use std::io;
use std::path::Path;

use super::ServerKind;
use super::server::exchange_line;

/// The `redis-server` kind of [`Server`](super::Server).
pub struct Redis;

impl ServerKind for Redis {
    const BINARY: &'static str = "redis-server";
    const INSTALL: &'static str = "apt-get install -y redis-server";
    const SCHEME: &'static str = "redis";

    fn args(port: u16, dir: &Path) -> Vec<OsString> {
        let port = port.to_string();
        let mut args: Vec<OsString> = [
            "--port",
            &port,
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
        ]
        .map(OsString::from)
        .into();
        args.push(dir.into());
        args
    }

    /// Ready once `PING` gets `+PONG` (a loading server answers `-LOADING`),
    /// or `-NOAUTH` from a server started with `--requirepass`.
    fn probe(port: u16) -> io::Result<()> {
        let reply = ping(port)?;
        if reply.starts_with("+PONG") || reply.starts_with("-NOAUTH") {
            Ok(())
        } else {
            Err(io::Error::other(format!(
                "PING answered {:?}",
                reply.trim_end()
            )))
        }
    }
}

/// Sends an inline `PING` and returns the reply line.
fn ping(port: u16) -> io::Result<String> {
    exchange_line(port, b"PING\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RedisServer;

    #[test]
    fn answers_ping_and_again_after_restart() {
        let mut redis = RedisServer::start().expect("start redis-server");
        assert_eq!(redis.url(), format!("redis://127.0.0.1:{}", redis.port()));
        assert_eq!(ping(redis.port()).unwrap(), "+PONG\r\n");

        redis.stop();
        assert!(ping(redis.port()).is_err(), "stopped server still answers");

        redis.restart().expect("restart redis-server");
        assert_eq!(ping(redis.port()).unwrap(), "+PONG\r\n");

        redis.kill();
        assert!(ping(redis.port()).is_err(), "killed server still answers");
    }
}
