//! Certificates for TLS tests: a CA, a server certificate for `localhost`
//! and `127.0.0.1`, and a client certificate, all signed by the CA and
//! written as PEM files to a directory.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

/// The PEM files [`Certs::write`] made.
#[derive(Debug, Clone)]
pub struct Certs {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl Certs {
    /// Generates the certificates and writes them into `dir`.
    pub fn write(dir: &Path) -> Result<Certs, Box<dyn std::error::Error>> {
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "syncflow test CA");
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;

        let leaf = |names: Vec<String>, common_name: &str| {
            let mut params = CertificateParams::new(names)?;
            params
                .distinguished_name
                .push(DnType::CommonName, common_name);
            let key = KeyPair::generate()?;
            let cert = params.signed_by(&key, &ca)?;
            Ok::<_, rcgen::Error>((cert.pem(), key.serialize_pem()))
        };
        let (server_cert, server_key) =
            leaf(vec!["localhost".into(), "127.0.0.1".into()], "localhost")?;
        let (client_cert, client_key) = leaf(vec!["syncflow".into()], "syncflow")?;

        let certs = Certs {
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client.key"),
        };
        for (path, pem) in [
            (&certs.ca, ca.pem()),
            (&certs.server_cert, server_cert),
            (&certs.server_key, server_key),
            (&certs.client_cert, client_cert),
            (&certs.client_key, client_key),
        ] {
            std::fs::write(path, pem)?;
        }
        Ok(certs)
    }
}
