//! Connections to NATS and Redis as `syncflow.yaml` describes them:
//! authentication, TLS, the key prefix. (The checks are config/globals.rs;
//! this is the part that reads files and dials.)

use std::path::PathBuf;

use crate::config::model::{NatsGlobals, RedisGlobals};
use crate::limiter::RedisTarget;

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot read {what} {path}: {source}")]
    File {
        what: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
}

fn read(what: &'static str, path: &str) -> Result<Vec<u8>, ConnectError> {
    std::fs::read(path).map_err(|source| ConnectError::File {
        what,
        path: path.to_string(),
        source,
    })
}

/// The servers of `nats.url`: one URL, or several separated by commas (the
/// nodes of a cluster; the client learns the rest from the one it reaches).
pub fn nats_servers(url: &str) -> Vec<&str> {
    url.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect()
}

/// NATS options: authentication and TLS, retrying the first connect (NATS
/// being down at start is waited out, not an error).
pub async fn nats_options(g: &NatsGlobals) -> Result<async_nats::ConnectOptions, ConnectError> {
    let mut options = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .name("syncflow");
    if let Some(path) = &g.credentials_file {
        options = options
            .credentials_file(path)
            .await
            .map_err(|source| ConnectError::File {
                what: "the NATS credentials file",
                path: path.clone(),
                source,
            })?;
    }
    if let Some(path) = &g.nkey_seed_file {
        let seed = read("the NKey seed file", path)?;
        options = options.nkey(String::from_utf8_lossy(&seed).trim().to_string());
    }
    if let Some(token) = &g.token {
        options = options.token(token.expose().to_string());
    }
    if let (Some(user), Some(password)) = (&g.user, &g.password) {
        options = options.user_and_password(user.clone(), password.expose().to_string());
    }
    if let Some(tls) = &g.tls {
        options = options.require_tls(true);
        if let Some(ca) = &tls.ca {
            options = options.add_root_certificates(PathBuf::from(ca));
        }
        if let (Some(cert), Some(key)) = (&tls.cert, &tls.key) {
            options = options.add_client_certificate(PathBuf::from(cert), PathBuf::from(key));
        }
    }
    Ok(options)
}

/// Where the limiters find Redis: the primary the sentinels name
/// (`redis.sentinel`), or the server at `redis.url` (`rediss://` with the
/// configured CA and client certificate, or the system's roots).
pub fn redis_client(g: &RedisGlobals) -> Result<RedisTarget, ConnectError> {
    if let Some(sentinel) = &g.sentinel {
        let sentinels = sentinel
            .urls
            .iter()
            .map(|url| redis::IntoConnectionInfo::into_connection_info(url.as_str()))
            .collect::<Result<_, _>>()?;
        return Ok(RedisTarget::Sentinel {
            master: sentinel.master.clone(),
            sentinels,
            password: sentinel.password.as_ref().map(|p| p.expose().to_string()),
        });
    }
    let Some(tls) = &g.tls else {
        return Ok(redis::Client::open(g.url.as_str())?.into());
    };
    let root_cert = tls
        .ca
        .as_deref()
        .map(|ca| read("the Redis CA", ca))
        .transpose()?;
    let client_tls = match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
            client_cert: read("the Redis client certificate", cert)?,
            client_key: read("the Redis client key", key)?,
        }),
        _ => None,
    };
    Ok(redis::Client::build_with_tls(
        g.url.as_str(),
        redis::TlsCertificates {
            client_tls,
            root_cert,
        },
    )?
    .into())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_cluster_is_its_urls_separated_by_commas() {
        assert_eq!(
            super::nats_servers("nats://a:4222, nats://b:4222,nats://c:4222"),
            ["nats://a:4222", "nats://b:4222", "nats://c:4222"]
        );
        assert_eq!(super::nats_servers("nats://a:4222"), ["nats://a:4222"]);
    }
}
