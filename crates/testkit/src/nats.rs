//! `nats-server` with JetStream enabled.

use std::ffi::OsString;
use std::io;
use std::path::Path;

use super::ServerKind;
use super::server::exchange_line;

/// The `nats-server -js` kind of [`Server`](super::Server).
pub struct Nats;

impl ServerKind for Nats {
    const BINARY: &'static str = "nats-server";
    const INSTALL: &'static str = "apt-get install -y nats-server";
    const SCHEME: &'static str = "nats";

    fn args(port: u16, dir: &Path) -> Vec<OsString> {
        let port = port.to_string();
        let mut args: Vec<OsString> = ["-js", "-a", "127.0.0.1", "-p", &port, "-sd"]
            .map(OsString::from)
            .into();
        args.push(dir.join("store").into());
        args
    }

    /// Ready once it greets a client with an `INFO` that has JetStream on: the
    /// server enables JetStream before it starts accepting clients.
    fn probe(port: u16) -> io::Result<()> {
        let info = read_info(port)?;
        if info.contains(r#""jetstream":true"#) {
            Ok(())
        } else {
            Err(io::Error::other(format!(
                "INFO without JetStream: {}",
                info.trim_end()
            )))
        }
    }
}

/// The `INFO {...}` line a NATS server sends to every new client.
fn read_info(port: u16) -> io::Result<String> {
    let line = exchange_line(port, b"")?;
    if line.starts_with("INFO ") {
        Ok(line)
    } else {
        Err(io::Error::other(format!("expected INFO, got {line:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NatsServer;

    #[test]
    fn starts_with_jetstream_and_answers_again_after_restart() {
        let mut nats = NatsServer::start().expect("start nats-server");
        assert_eq!(nats.url(), format!("nats://127.0.0.1:{}", nats.port()));
        assert!(
            read_info(nats.port())
                .unwrap()
                .contains(r#""jetstream":true"#)
        );

        nats.stop();
        assert!(
            read_info(nats.port()).is_err(),
            "stopped server still answers"
        );

        nats.restart().expect("restart nats-server");
        assert!(
            read_info(nats.port())
                .unwrap()
                .contains(r#""jetstream":true"#)
        );

        nats.kill();
        assert!(
            read_info(nats.port()).is_err(),
            "killed server still answers"
        );
    }

    #[tokio::test]
    async fn jetstream_data_survives_a_restart() {
        use async_nats::jetstream::{self, stream};

        let mut nats = NatsServer::start().expect("start nats-server");
        let client = async_nats::connect(nats.url()).await.unwrap();
        let js = jetstream::new(client);
        js.create_stream(stream::Config {
            name: "KEEP".into(),
            subjects: vec!["keep.>".into()],
            ..Default::default()
        })
        .await
        .unwrap();
        js.publish("keep.1", "kept".into())
            .await
            .unwrap()
            .await
            .unwrap();

        nats.restart().expect("restart nats-server");

        let client = async_nats::connect(nats.url()).await.unwrap();
        let mut kept = jetstream::new(client).get_stream("KEEP").await.unwrap();
        assert_eq!(kept.info().await.unwrap().state.messages, 1);
    }
}
