//! Checks of `syncflow.yaml` beyond its shape: addresses, one way of
//! authenticating, TLS files in pairs, ranges. Pure: files are looked for,
//! nothing is connected to.

use std::path::Path;
use std::time::Duration;

use super::diagnostics::Diagnostics;
use super::load::SourceFile;
use super::model::{DEFAULT_REDIS_URL, Globals, RedisGlobals, SentinelGlobals, TlsGlobals};
use crate::path;

pub fn check(file: &SourceFile, dir: &Path, g: &Globals, diags: &mut Diagnostics) {
    if g.http.listen.parse::<std::net::SocketAddr>().is_err() {
        file.error(
            diags,
            &path!["http", "listen"],
            format!(
                "http.listen must be an address such as 127.0.0.1:9464, not \"{}\"",
                g.http.listen
            ),
        );
    }

    let nats = &g.nats;
    let ways = [
        nats.credentials_file.is_some(),
        nats.nkey_seed_file.is_some(),
        nats.token.is_some(),
        nats.user.is_some() || nats.password.is_some(),
    ];
    if ways.iter().filter(|w| **w).count() > 1 {
        file.error(
            diags,
            &path!["nats"],
            "nats takes one way of authenticating: credentials_file, nkey_seed_file, token, or user and password",
        );
    }
    if nats.user.is_some() != nats.password.is_some() {
        let missing = if nats.user.is_some() {
            "password"
        } else {
            "user"
        };
        file.error(
            diags,
            &path!["nats"],
            format!("nats.user and nats.password go together: {missing} is missing"),
        );
    }
    for (field, value) in [
        ("credentials_file", &nats.credentials_file),
        ("nkey_seed_file", &nats.nkey_seed_file),
    ] {
        check_file(file, dir, &["nats", field], value.as_deref(), diags);
    }
    if let Some(tls) = &nats.tls {
        check_tls(file, dir, &["nats", "tls"], tls, diags);
    }

    let redis = &g.redis;
    match redis.url.split_once("://").map(|(scheme, _)| scheme) {
        Some("redis" | "rediss") => {}
        _ => file.error(
            diags,
            &path!["redis", "url"],
            "redis.url must start with redis:// or rediss:// (TLS)",
        ),
    }
    if redis.key_prefix.is_empty() || redis.key_prefix.contains(['{', '}', ' ']) {
        file.error(
            diags,
            &path!["redis", "key_prefix"],
            "redis.key_prefix must be a non-empty name without '{', '}' or spaces",
        );
    }
    if let Some(sentinel) = &redis.sentinel {
        check_sentinel(file, redis, sentinel, diags);
    } else if let Some(tls) = &redis.tls {
        if !redis.url.starts_with("rediss://") {
            file.error(
                diags,
                &path!["redis", "tls"],
                "redis.tls needs a rediss:// url",
            );
        }
        check_tls(file, dir, &["redis", "tls"], tls, diags);
    }

    let js = &g.jetstream;
    file.check_range(diags, &path!["jetstream", "replicas"], js.replicas, 1, 5);
    if let Some(fleet) = &g.fleet {
        file.check_range(
            diags,
            &path!["fleet", "partitions"],
            fleet.partitions,
            1,
            1024,
        );
        file.check_duration(
            diags,
            &path!["fleet", "failover"],
            fleet.failover.0,
            Duration::from_millis(500),
            Duration::from_secs(300),
        );
        if let Some(name) = &fleet.instance
            && (name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
        {
            file.error(
                diags,
                &path!["fleet", "instance"],
                format!("fleet.instance must be letters, digits, '-' or '_', not \"{name}\""),
            );
        }
    }
    file.check_duration(
        diags,
        &path!["jetstream", "dead_letters", "max_age"],
        js.dead_letters.max_age.0,
        Duration::from_secs(60),
        Duration::from_secs(366 * 24 * 3600),
    );
}

/// `redis.sentinel`: the sentinels say where the primary is, so `url` has
/// nothing to say; TLS to the sentinels and the primary is not supported.
fn check_sentinel(
    file: &SourceFile,
    redis: &RedisGlobals,
    sentinel: &SentinelGlobals,
    diags: &mut Diagnostics,
) {
    if redis.url != DEFAULT_REDIS_URL {
        file.error(
            diags,
            &path!["redis", "url"],
            "redis.url and redis.sentinel both say where Redis is: with sentinel, the sentinels name the primary; remove url",
        );
    }
    if redis.tls.is_some() {
        file.error(
            diags,
            &path!["redis", "tls"],
            "redis.tls is not supported with redis.sentinel: the sentinels and the primary are reached without TLS",
        );
    }
    if sentinel.master.trim().is_empty() {
        file.error(
            diags,
            &path!["redis", "sentinel", "master"],
            "redis.sentinel.master must be the name the sentinels monitor the primary by, such as mymaster",
        );
    }
    if sentinel.urls.is_empty() {
        file.error(
            diags,
            &path!["redis", "sentinel", "urls"],
            "redis.sentinel.urls needs at least one sentinel, such as redis://127.0.0.1:26379",
        );
    }
    for (i, url) in sentinel.urls.iter().enumerate() {
        let valid = url.starts_with("redis://")
            && redis::IntoConnectionInfo::into_connection_info(url.as_str()).is_ok();
        if !valid {
            file.error(
                diags,
                &path!["redis", "sentinel", "urls", i],
                format!(
                    "a sentinel url must be redis://host:port, not \"{}\"",
                    super::secret::redact_url(url)
                ),
            );
        }
    }
}

/// A `tls` section at `at` (the path to it, `nats.tls` say): cert and key
/// together, every file there.
pub fn check_tls(
    file: &SourceFile,
    dir: &Path,
    at: &[&str],
    tls: &TlsGlobals,
    diags: &mut Diagnostics,
) {
    let name = at.join(".");
    if tls.cert.is_some() != tls.key.is_some() {
        let at: Vec<_> = at.iter().map(|s| super::yaml::Seg::from(*s)).collect();
        file.error(
            diags,
            &at,
            format!("{name}.cert and {name}.key go together (a client certificate and its key)"),
        );
    }
    for (field, value) in [("ca", &tls.ca), ("cert", &tls.cert), ("key", &tls.key)] {
        let mut at = at.to_vec();
        at.push(field);
        check_file(file, dir, &at, value.as_deref(), diags);
    }
}

/// A file the connection will read: relative paths are from the config
/// directory, as schemas are.
fn check_file(
    file: &SourceFile,
    dir: &Path,
    at: &[&str],
    value: Option<&str>,
    diags: &mut Diagnostics,
) {
    let Some(value) = value else { return };
    if !resolve(dir, value).is_file() {
        let at: Vec<_> = at.iter().map(|s| super::yaml::Seg::from(*s)).collect();
        file.error(diags, &at, format!("no file at \"{value}\""));
    }
}

/// `value` relative to the config directory, unless absolute.
pub fn resolve(dir: &Path, value: &str) -> std::path::PathBuf {
    let path = Path::new(value);
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        dir.join(path)
    }
}

/// Makes every file path in `g` absolute (relative ones are from `dir`), so
/// the runtime reads the files that were checked.
pub fn resolve_files(dir: &Path, g: &mut Globals) {
    let fix = |value: &mut Option<String>| {
        if let Some(v) = value {
            *v = resolve(dir, v).to_string_lossy().into_owned();
        }
    };
    fix(&mut g.nats.credentials_file);
    fix(&mut g.nats.nkey_seed_file);
    for tls in [g.nats.tls.as_mut(), g.redis.tls.as_mut()]
        .into_iter()
        .flatten()
    {
        fix(&mut tls.ca);
        fix(&mut tls.cert);
        fix(&mut tls.key);
    }
}
