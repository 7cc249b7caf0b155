//! `chromedriver` (Debian's chromium-driver) for the tests that drive a
//! real browser: the status page's.

use std::ffi::OsString;
use std::io;
use std::path::Path;

use super::ServerKind;
use super::server::exchange_line;

/// The `chromedriver` kind of [`Server`](super::Server).
pub struct Chromedriver;

/// The browser chromedriver starts (Debian's chromium package).
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// Chromium's arguments for a headless run on a machine with no network
/// but loopback: without the background-networking flags it keeps trying
/// to reach Google's hosts.
pub const CHROMIUM_ARGS: [&str; 9] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,1000",
];

impl ServerKind for Chromedriver {
    const BINARY: &'static str = "chromedriver";
    const INSTALL: &'static str = "apt-get install -y chromium chromium-driver";
    const SCHEME: &'static str = "http";

    fn args(port: u16, _dir: &Path) -> Vec<OsString> {
        vec![format!("--port={port}").into()]
    }

    /// Ready once `/status` answers 200.
    fn probe(port: u16) -> io::Result<()> {
        let reply = exchange_line(
            port,
            b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
        )?;
        if reply.contains(" 200 ") {
            Ok(())
        } else {
            Err(io::Error::other(format!(
                "/status answered {:?}",
                reply.trim_end()
            )))
        }
    }
}
