//! The TLS client configuration of a provider's connections: the system's
//! roots (rustls-platform-verifier), or the provider's own CA
//! (`tls.ca`) instead; and a client certificate (`tls.cert`, `tls.key`) for
//! a provider that asks for mutual TLS. HTTP/1.1 is the only protocol
//! offered (ALPN).

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use std::path::{Path, PathBuf};

use crate::config::globals::resolve;
use crate::config::model::TlsGlobals;

/// The configuration for `tls`, its files relative to `dir` unless
/// absolute (a compiled provider's are); an error names the setting and
/// the file as written, and what is wrong with it.
pub fn client_config(tls: Option<&TlsGlobals>, dir: &Path) -> Result<rustls::ClientConfig, String> {
    client_config_read(tls, dir).map(|(config, _)| config)
}

/// A file a TLS configuration was made of, with a fingerprint of the
/// content it was made from: hot reload compares it with the file's
/// content now (a rotated certificate rebuilds the provider).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadFile {
    pub path: PathBuf,
    pub fingerprint: u64,
}

impl ReadFile {
    /// `path`, read as `bytes`.
    pub fn of(path: PathBuf, bytes: &[u8]) -> ReadFile {
        ReadFile {
            fingerprint: crate::fnv::hash(bytes),
            path,
        }
    }

    /// The same file as it is now; an unreadable one as empty (it differs
    /// again once readable).
    pub fn now(&self) -> ReadFile {
        let bytes = std::fs::read(&self.path).unwrap_or_default();
        ReadFile::of(self.path.clone(), &bytes)
    }
}

/// [`client_config`], and the files it read. Each file is read once and
/// parsed from the bytes fingerprinted, so what is fingerprinted is what
/// the configuration holds.
pub fn client_config_read(
    tls: Option<&TlsGlobals>,
    dir: &Path,
) -> Result<(rustls::ClientConfig, Vec<ReadFile>), String> {
    use rustls_platform_verifier::BuilderVerifierExt;
    // The process's provider: ring, as everywhere in syncflow.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut read = Vec::new();
    let builder = rustls::ClientConfig::builder();
    let builder = match tls.and_then(|t| t.ca.as_deref()) {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in certificates(dir, "tls.ca", ca, &mut read)? {
                roots
                    .add(cert)
                    .map_err(|e| format!("tls.ca: {ca}: a certificate rustls refuses: {e}"))?;
            }
            builder.with_root_certificates(roots)
        }
        None => builder
            .with_platform_verifier()
            .map_err(|e| format!("the system's TLS roots: {e}"))?,
    };
    let mut config = match tls.and_then(|t| t.cert.as_deref().zip(t.key.as_deref())) {
        Some((cert, key)) => {
            let chain = certificates(dir, "tls.cert", cert, &mut read)?;
            let bytes = read_file(dir, "tls.key", key, &mut read)?;
            let key = PrivateKeyDer::from_pem_slice(&bytes)
                .map_err(|e| format!("tls.key: {key}: no private key read: {e}"))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("tls.cert and tls.key: {e}"))?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((config, read))
}

/// The content of the file `path` (setting `what`), noted in `read`.
fn read_file(
    dir: &Path,
    what: &str,
    path: &str,
    read: &mut Vec<ReadFile>,
) -> Result<Vec<u8>, String> {
    let full = resolve(dir, path);
    let bytes = std::fs::read(&full).map_err(|e| format!("{what}: {path}: {e}"))?;
    read.push(ReadFile::of(full, &bytes));
    Ok(bytes)
}

/// The certificates of the PEM file `path` (setting `what`): at least one.
fn certificates(
    dir: &Path,
    what: &str,
    path: &str,
    read: &mut Vec<ReadFile>,
) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = read_file(dir, what, path, read)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{what}: {path}: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{what}: {path}: no PEM certificate in it"));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use bytes::Bytes;
    use http::Method;
    use http::header::{HeaderName, HeaderValue};
    use syncflow_testkit::Certs;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::super::conn::{Origin, Outgoing};
    use super::*;

    const SECOND: Duration = Duration::from_secs(5);

    /// An https server on 127.0.0.1 with the test CA's certificate for
    /// `localhost`, asking for a client certificate when `mutual`: answers
    /// every request 200 `ok`. Its address.
    async fn server(certs: &Certs, mutual: bool) -> std::net::SocketAddr {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let none = Path::new("");
        let chain = certificates(
            none,
            "cert",
            certs.server_cert.to_str().unwrap(),
            &mut Vec::new(),
        )
        .unwrap();
        let key = PrivateKeyDer::from_pem_file(&certs.server_key).unwrap();
        let builder = rustls::ServerConfig::builder();
        let builder = if mutual {
            let mut roots = rustls::RootCertStore::empty();
            for cert in
                certificates(none, "ca", certs.ca.to_str().unwrap(), &mut Vec::new()).unwrap()
            {
                roots.add(cert).unwrap();
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
                .build()
                .unwrap();
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let config = builder.with_single_cert(chain, key).unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(socket).await else {
                        return;
                    };
                    let mut buf = Vec::new();
                    let mut more = [0u8; 1024];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tls.read(&mut more).await {
                            Ok(n) if n > 0 => buf.extend_from_slice(&more[..n]),
                            _ => return,
                        }
                    }
                    let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                    let _ = tls.write_all(answer).await;
                    let _ = tls.flush().await;
                });
            }
        });
        addr
    }

    /// A GET of `/health` on `https://localhost:<port>` with `tls`: the
    /// answer's body, or what went wrong.
    async fn get(port: u16, tls: Option<&TlsGlobals>) -> Result<Bytes, String> {
        let config = match tls {
            Some(tls) => Some(Arc::new(client_config(Some(tls), Path::new(""))?)),
            None => None,
        };
        let origin = Origin::new(&format!("https://localhost:{port}"), config)?;
        let mut conn = origin.connect(SECOND).await.map_err(|e| e.to_string())?;
        let target = origin.target("/health")?;
        let (name, value) = (
            HeaderName::from_static("accept"),
            HeaderValue::from_static("*/*"),
        );
        let request = Outgoing {
            method: &Method::GET,
            target: &target,
            headers: [(&name, &value)],
            body: &Bytes::new(),
        };
        let response = origin
            .send(&mut conn, request, SECOND, 1024)
            .await
            .map_err(|e| e.to_string())?;
        Ok(response.body)
    }

    fn tls(certs: &Certs, client: bool) -> TlsGlobals {
        let path = |p: &std::path::Path| Some(p.to_string_lossy().into_owned());
        TlsGlobals {
            ca: path(&certs.ca),
            cert: client.then(|| path(&certs.client_cert)).flatten(),
            key: client.then(|| path(&certs.client_key)).flatten(),
        }
    }

    #[tokio::test]
    async fn a_provider_signed_by_its_own_ca_is_reached_with_that_ca() {
        let dir = tempfile::tempdir().unwrap();
        let certs = Certs::write(dir.path()).unwrap();
        let port = server(&certs, false).await.port();
        assert_eq!(get(port, Some(&tls(&certs, false))).await.unwrap(), "ok");
        // With the system's roots, the private CA is unknown.
        let e = get(port, None).await.unwrap_err();
        assert!(e.starts_with("connect error: "), "{e}");
        assert!(e.contains("certificate"), "{e}");
    }

    #[tokio::test]
    async fn a_provider_asking_for_a_client_certificate_gets_the_configured_one() {
        let dir = tempfile::tempdir().unwrap();
        let certs = Certs::write(dir.path()).unwrap();
        let port = server(&certs, true).await.port();
        assert_eq!(get(port, Some(&tls(&certs, true))).await.unwrap(), "ok");
        // Without one, the server ends the handshake (TLS 1.3 tells the
        // client on its first read, so the failure may come with the answer).
        assert!(get(port, Some(&tls(&certs, false))).await.is_err());
    }

    /// As `syncflow run` has it: a provider file naming its CA relative to
    /// the config directory, compiled, and a request through its sink.
    #[tokio::test]
    async fn a_provider_file_with_its_ca_reaches_the_provider_through_its_sink() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("certs")).unwrap();
        let certs = Certs::write(&dir.path().join("certs")).unwrap();
        let port = server(&certs, false).await.port();
        std::fs::create_dir(dir.path().join("providers")).unwrap();
        let yaml = format!(
            "name: crm\nbase_url: https://localhost:{port}\ntls: {{ ca: certs/ca.pem }}\n\
             objects:\n  contact:\n    create: {{ method: POST, path: /contacts }}\n"
        );
        std::fs::write(dir.path().join("providers/crm.yaml"), yaml).unwrap();
        let env = std::collections::HashMap::<String, String>::new();
        let config = crate::compile::compile_dir(dir.path(), &env, false).unwrap();
        let provider = config.providers["crm"].clone();
        let api =
            super::super::ProviderApi::new(provider, crate::limiter::Limiter::Unlimited).unwrap();
        let answer = api.get("/health").await.unwrap();
        assert_eq!((answer.status, &answer.body[..]), (200, &b"ok"[..]));
    }

    #[test]
    fn the_files_read_are_named_with_what_was_read() {
        let dir = tempfile::tempdir().unwrap();
        let certs = Certs::write(dir.path()).unwrap();
        let (_, read) = client_config_read(Some(&tls(&certs, true)), Path::new("")).unwrap();
        let want: Vec<ReadFile> = [&certs.ca, &certs.client_cert, &certs.client_key]
            .into_iter()
            .map(|p| ReadFile::of(p.clone(), &std::fs::read(p).unwrap()))
            .collect();
        assert_eq!(read, want);
    }

    #[test]
    fn files_that_are_not_certificates_or_keys_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let certs = Certs::write(dir.path()).unwrap();
        let not_pem = dir.path().join("notes.txt");
        std::fs::write(&not_pem, "hello").unwrap();
        let not_pem = not_pem.to_string_lossy().into_owned();
        let mut bad = tls(&certs, false);
        bad.ca = Some(not_pem.clone());
        let e = client_config(Some(&bad), Path::new("")).unwrap_err();
        assert!(
            e.starts_with("tls.ca: ") && e.ends_with("notes.txt: no PEM certificate in it"),
            "{e}"
        );
        let mut bad = tls(&certs, true);
        bad.key = Some(certs.ca.to_string_lossy().into_owned());
        let e = client_config(Some(&bad), Path::new("")).unwrap_err();
        assert!(e.starts_with("tls.key: "), "{e}");
        let missing = TlsGlobals {
            ca: Some("/nonexistent/ca.pem".into()),
            ..TlsGlobals::default()
        };
        let e = client_config(Some(&missing), Path::new("")).unwrap_err();
        assert!(e.starts_with("tls.ca: /nonexistent/ca.pem: "), "{e}");
        // Relative names are read from the directory given, and shown as written.
        let relative = TlsGlobals {
            ca: Some("ca.pem".into()),
            ..TlsGlobals::default()
        };
        assert!(client_config(Some(&relative), dir.path()).is_ok());
        let e = client_config(Some(&relative), Path::new("/nonexistent")).unwrap_err();
        assert!(e.starts_with("tls.ca: ca.pem: "), "{e}");
    }
}
