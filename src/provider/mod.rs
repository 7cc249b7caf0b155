//! A provider compiled from `providers/<name>.yaml`: endpoints with parsed
//! path templates, auth, limits and retry policy, ready for the HTTP sink.

mod auth;
mod batch;
mod template;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub use auth::{AccountAuth, OAuth2};
pub use batch::{Batch, BatchEndpoint, Ids, ItemValue};
pub use template::PathTemplate;
pub(crate) use template::encode_segment;

use crate::action::Action;
use crate::config::diagnostics::Diagnostics;
use crate::config::load::Sourced;
use crate::config::model::{
    CircuitBreakerConfig, ConflictIdConfig, EndpointConfig, ProviderConfig, RetryConfig, TlsGlobals,
};
use crate::config::secret::Secret;
use crate::config::yaml::Seg;
use crate::expr::ScriptEngine;
use crate::inbound::Inbound;
use crate::mapping::JsonPath;
use crate::path;
use crate::sink::http::tls::ReadFile;

#[derive(Debug, Clone)]
pub struct Provider {
    pub name: String,
    /// Without a trailing slash; endpoint paths start with one.
    pub base_url: String,
    /// `tls` as a TLS client configuration, built when the provider is
    /// compiled: its files are read once, and what validates connects.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// The files `tls` was made of, with what was read: a certificate
    /// rotated in place (the provider file unchanged) is a change hot
    /// reload sees, and rebuilds the provider for.
    pub tls_files: Vec<ReadFile>,
    /// `(header name, value)` for auth and the configured extra headers.
    pub headers: Vec<(String, Secret)>,
    /// `auth.per_account`: each account's own credentials.
    pub account_auth: Option<AccountAuth>,
    pub rate_limit: Option<RateLimit>,
    /// `rate_limit.remaining_header`: the provider's count of the requests
    /// left in its window; at 0 the account (or provider) waits a window.
    pub window_remaining_header: Option<http::HeaderName>,
    /// Requests allowed per window, per account (limiter/quota.rs).
    pub quota: Option<Quota>,
    pub max_in_flight: usize,
    pub timeout: Duration,
    pub retry: RetryConfig,
    pub circuit_breaker: CircuitBreakerConfig,
    pub idempotency_header: Option<String>,
    pub max_response_bytes: u64,
    pub objects: BTreeMap<String, Object>,
    /// Its own changes coming in: webhook, polls.
    pub inbound: Inbound,
    /// The provider as configured (variables resolved), to tell on reload
    /// what changed: see [`Provider::same_except_rate_limit`].
    pub config: ProviderConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub requests: u32,
    pub per: Duration,
    pub burst: u32,
}

/// `quota: { requests, per, remaining_header }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quota {
    pub requests: u64,
    pub per: Duration,
    pub remaining_header: Option<http::HeaderName>,
}

#[derive(Debug, Clone, Default)]
pub struct Object {
    pub create: Option<Endpoint>,
    pub update: Option<Endpoint>,
    pub upsert: Option<Endpoint>,
    pub delete: Option<Endpoint>,
    pub read: Option<Endpoint>,
    /// Endpoints taking many records per request, beside the single ones.
    pub batch: Option<Batch>,
}

#[derive(Debug, Clone)]
pub struct Endpoint {
    pub method: http::Method,
    pub path: PathTemplate,
    pub id_from: Option<JsonPath>,
    /// Create endpoints: where a 409's body names the existing record's id.
    pub conflict_id: Option<ConflictId>,
    /// Update and delete endpoints: the header of the last modification
    /// time syncflow saw (two-way links).
    pub unmodified_since: Option<Precondition>,
}

/// A conditional write's header.
#[derive(Debug, Clone)]
pub struct Precondition {
    pub header: http::HeaderName,
    pub format: crate::config::model::TimeFormat,
}

impl Precondition {
    /// The header's value for a modification time (ms since the epoch).
    pub fn value(&self, at_ms: i64) -> http::HeaderValue {
        use crate::config::model::TimeFormat;
        let text = match self.format {
            TimeFormat::Ms => at_ms.to_string(),
            TimeFormat::HttpDate => {
                let at =
                    std::time::UNIX_EPOCH + std::time::Duration::from_millis(at_ms.max(0) as u64);
                httpdate::fmt_http_date(at)
            }
        };
        http::HeaderValue::from_str(&text).expect("digits and dates are header-safe")
    }
}

/// Where a 409 answer to a create names the existing record's id.
#[derive(Debug, Clone)]
pub struct ConflictId {
    path: JsonPath,
    /// Applied to the text at `path`; its first group is the id.
    pattern: Option<regex::Regex>,
}

impl ConflictId {
    /// The id in a 409 body, if it is there.
    pub fn extract(&self, body: &str) -> Option<String> {
        let json: serde_json::Value = serde_json::from_str(body).ok()?;
        let found = self.path.get(&json)?;
        let text = match &*found {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Number(n) => n.to_string(),
            _ => return None,
        };
        match &self.pattern {
            None => Some(text),
            Some(pattern) => Some(pattern.captures(&text)?.get(1)?.as_str().to_string()),
        }
    }
}

/// One of an object's endpoints: what the executor resolved an action to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EndpointKind {
    Create,
    Update,
    Upsert,
    Delete,
    Read,
}

impl EndpointKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EndpointKind::Create => "create",
            EndpointKind::Update => "update",
            EndpointKind::Upsert => "upsert",
            EndpointKind::Delete => "delete",
            EndpointKind::Read => "read",
        }
    }
}

impl Provider {
    /// Whether `other` talks to the API exactly as this one does (URL, auth,
    /// endpoints, retries, concurrency...) and differs at most in its rate
    /// limit, which a running sink can take over without being rebuilt.
    pub fn same_except_rate_limit(&self, other: &Provider) -> bool {
        let without_limit = |p: &Provider| ProviderConfig {
            rate_limit: None,
            ..p.config.clone()
        };
        without_limit(self) == without_limit(other)
            && self.window_remaining_header == other.window_remaining_header
            && self.tls_files == other.tls_files
    }
}

impl Object {
    pub fn endpoint(&self, kind: EndpointKind) -> Option<&Endpoint> {
        match kind {
            EndpointKind::Create => self.create.as_ref(),
            EndpointKind::Update => self.update.as_ref(),
            EndpointKind::Upsert => self.upsert.as_ref(),
            EndpointKind::Delete => self.delete.as_ref(),
            EndpointKind::Read => self.read.as_ref(),
        }
    }

    /// Whether creates (or upserts) tell the provider's id of the record.
    pub fn learns_ids(&self) -> bool {
        [&self.create, &self.upsert]
            .iter()
            .any(|ep| ep.as_ref().is_some_and(|ep| ep.id_from.is_some()))
    }

    /// Whether a rule may use `action` on this object.
    pub fn supports(&self, action: Action) -> bool {
        match action {
            Action::Create => self.create.is_some(),
            Action::Update => self.update.is_some(),
            Action::Upsert => {
                self.upsert.is_some() || (self.create.is_some() && self.update.is_some())
            }
            Action::Delete => self.delete.is_some(),
            Action::Read => self.read.is_some(),
            Action::Skip => true,
        }
    }
}

const MS: Duration = Duration::from_millis(1);
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(24 * 3600);

const METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];
const ENDPOINTS: [&str; 5] = ["create", "update", "upsert", "delete", "read"];

/// Checks and compiles one provider file; `None` if it has errors. `dir`:
/// the config directory, where relative file names start.
pub fn compile(
    src: &Sourced<ProviderConfig>,
    dir: &Path,
    engine: &ScriptEngine,
    diags: &mut Diagnostics,
) -> Option<Provider> {
    let (cfg, file) = (&src.value, &src.file);
    let before = diags.len();

    // Parsed as the sink parses it (sink/conn.rs), so what validates connects.
    let problem = match cfg.base_url.parse::<http::Uri>() {
        Ok(uri) => match (uri.scheme_str(), uri.host()) {
            (Some("http" | "https"), Some(_))
                if uri.authority().is_some_and(|a| a.as_str().contains('@')) =>
            {
                Some("base_url must not hold credentials (user:password@): put them in auth, where they are never logged".to_string())
            }
            (Some("http" | "https"), Some(_)) => None,
            (Some("http" | "https"), None) => {
                Some(format!("base_url \"{}\" has no host", cfg.base_url))
            }
            (scheme, _) => Some(format!(
                "base_url must be http or https, not \"{}\"",
                scheme.unwrap_or_default()
            )),
        },
        Err(e) => Some(format!("invalid base_url \"{}\": {e}", cfg.base_url)),
    };
    if let Some(problem) = problem {
        file.error(diags, &path!["base_url"], problem);
    }

    let (tls, tls_files) = cfg
        .tls
        .as_ref()
        .and_then(|tls| check_tls(src, dir, tls, diags))
        .map_or((None, Vec::new()), |(config, files)| (Some(config), files));

    let mut headers: Vec<_> = auth::auth_header(src, diags).into_iter().collect();
    let account_auth = auth::per_account(src, &cfg.base_url, diags);
    headers.extend(cfg.headers.iter().map(|(k, v)| (k.clone(), v.clone())));
    for (name, value) in &headers {
        let value = value.expose();
        let bad_name = http::header::HeaderName::from_bytes(name.as_bytes()).is_err();
        let bad_value = http::header::HeaderValue::from_str(value).is_err();
        if bad_name || bad_value {
            // Never echo the value: it may be a credential.
            file.error(
                diags,
                &path!["auth"],
                format!("invalid HTTP header \"{name}\""),
            );
        }
    }
    if let Some(h) = &cfg.idempotency_header {
        if http::header::HeaderName::from_bytes(h.as_bytes()).is_err() {
            file.error(
                diags,
                &path!["idempotency_header"],
                format!("invalid HTTP header name \"{h}\""),
            );
        }
    }

    let rate_limit = cfg.rate_limit.as_ref().map(|rl| {
        let at = |field: &str| path!["rate_limit", field];
        file.check_range(diags, &at("requests"), rl.requests, 1, 1_000_000_000);
        file.check_duration(diags, &at("per"), rl.per.0, MS, DAY * 31);
        if let Some(burst) = rl.burst {
            file.check_range(diags, &at("burst"), burst, 1, 1_000_000);
        }
        RateLimit {
            requests: rl.requests,
            per: rl.per.0,
            burst: rl.burst.unwrap_or(1),
        }
    });
    let window_remaining_header = cfg
        .rate_limit
        .as_ref()
        .and_then(|rl| rl.remaining_header.as_ref())
        .and_then(|name| header_name(file, diags, &path!["rate_limit", "remaining_header"], name));
    let quota = cfg.quota.as_ref().map(|q| {
        file.check_range(
            diags,
            &path!["quota", "requests"],
            q.requests,
            1,
            1_000_000_000_000,
        );
        file.check_duration(
            diags,
            &path!["quota", "per"],
            q.per.0,
            Duration::from_secs(1),
            DAY * 31,
        );
        let remaining_header = q
            .remaining_header
            .as_ref()
            .and_then(|name| header_name(file, diags, &path!["quota", "remaining_header"], name));
        Quota {
            requests: q.requests,
            per: q.per.0,
            remaining_header,
        }
    });
    file.check_range(diags, &path!["max_in_flight"], cfg.max_in_flight, 1, 512);
    file.check_duration(diags, &path!["timeout"], cfg.timeout.0, MS, HOUR);
    file.check_range(
        diags,
        &path!["max_response_bytes"],
        cfg.max_response_bytes,
        1024,
        64 * 1024 * 1024,
    );
    check_retry(src, diags);
    let breaker = &cfg.circuit_breaker;
    file.check_range(
        diags,
        &path!["circuit_breaker", "failure_threshold"],
        breaker.failure_threshold,
        1,
        1_000_000,
    );
    file.check_duration(
        diags,
        &path!["circuit_breaker", "open_for"],
        breaker.open_for.0,
        MS,
        HOUR,
    );

    if cfg.objects.is_empty() {
        file.error(
            diags,
            &path!["objects"],
            "a provider needs at least one object",
        );
    }
    let mut objects = BTreeMap::new();
    for (name, obj) in &cfg.objects {
        let endpoints = [
            &obj.create,
            &obj.update,
            &obj.upsert,
            &obj.delete,
            &obj.read,
        ];
        let compiled: Vec<Option<Endpoint>> = endpoints
            .iter()
            .zip(ENDPOINTS)
            .map(|(ep, kind)| {
                ep.as_ref()
                    .and_then(|ep| compile_endpoint(src, name, kind, ep, diags))
            })
            .collect();
        if endpoints.iter().all(|e| e.is_none()) {
            file.error(
                diags,
                &path!["objects", name],
                format!(
                    "object \"{name}\" has no endpoints; give it at least one of {}",
                    ENDPOINTS.join(", ")
                ),
            );
        }
        // `{id}` is learned from the create (or upsert) response; without
        // `id_from` nothing ever fills the id map.
        let learns_ids = [&obj.create, &obj.upsert]
            .iter()
            .any(|ep| ep.as_ref().is_some_and(|ep| ep.id_from.is_some()));
        for (ep, kind) in endpoints.iter().zip(ENDPOINTS) {
            if let Some(ep) = ep {
                if ep.path.contains("{id}") && !learns_ids {
                    file.error(
                        diags,
                        &path!["objects", name, kind, "path"],
                        format!(
                            "{{id}} in the {kind} path needs the provider's id of the record: add `id_from` (a JSONPath into the response) to object \"{name}\"'s create or upsert endpoint"
                        ),
                    );
                }
            }
        }
        let batch = obj.batch.as_ref().and_then(|b| {
            check_batch_beside_single(src, name, obj, b, diags);
            batch::compile(src, name, b, diags)
        });
        let mut it = compiled.into_iter();
        let mut next = || it.next().flatten();
        objects.insert(
            name.clone(),
            Object {
                create: next(),
                update: next(),
                upsert: next(),
                delete: next(),
                read: next(),
                batch,
            },
        );
    }

    let inbound = crate::inbound::compile(src, engine, diags);

    (diags.len() == before).then(|| Provider {
        name: cfg.name.clone(),
        base_url: cfg.base_url.trim_end_matches('/').to_string(),
        tls,
        tls_files,
        headers,
        account_auth,
        rate_limit,
        window_remaining_header,
        quota,
        max_in_flight: cfg.max_in_flight,
        timeout: cfg.timeout.0,
        retry: cfg.retry.clone(),
        circuit_breaker: cfg.circuit_breaker.clone(),
        idempotency_header: cfg.idempotency_header.clone(),
        max_response_bytes: cfg.max_response_bytes,
        objects,
        inbound: inbound.unwrap_or_default(),
        config: cfg.clone(),
    })
}

/// `tls`: for an https `base_url`, its files there and readable as
/// certificates and a key. Returns the TLS client configuration they make,
/// and the files read.
fn check_tls(
    src: &Sourced<ProviderConfig>,
    dir: &Path,
    tls: &TlsGlobals,
    diags: &mut Diagnostics,
) -> Option<(Arc<rustls::ClientConfig>, Vec<ReadFile>)> {
    let (cfg, file) = (&src.value, &src.file);
    let before = diags.len();
    if !cfg.base_url.starts_with("https://") {
        file.error(
            diags,
            &path!["tls"],
            "tls is for a provider whose base_url is https",
        );
    }
    crate::config::globals::check_tls(file, dir, &["tls"], tls, diags);
    if diags.len() != before {
        return None;
    }
    match crate::sink::http::tls::client_config_read(Some(tls), dir) {
        Ok((config, files)) => Some((Arc::new(config), files)),
        Err(message) => {
            file.error(diags, &path!["tls"], message);
            None
        }
    }
}

/// A batch endpoint stands beside the single one of its kind (used where a
/// record cannot go in a batch, and for what the object supports), and
/// learns ids where the single one does.
fn check_batch_beside_single(
    src: &Sourced<ProviderConfig>,
    object: &str,
    obj: &crate::config::model::ObjectConfig,
    batch: &crate::config::model::BatchConfig,
    diags: &mut Diagnostics,
) {
    let file = &src.file;
    let pairs = [
        ("create", &batch.create, &obj.create),
        ("update", &batch.update, &obj.update),
        ("upsert", &batch.upsert, &obj.upsert),
        ("delete", &batch.delete, &obj.delete),
    ];
    for (kind, batched, single) in pairs {
        let Some(_) = batched else { continue };
        match single {
            None => file.error(
                diags,
                &path!["objects", object, "batch", kind],
                format!("batch.{kind} needs a single-record {kind} endpoint beside it (objects.{object}.{kind}): records that cannot go in a batch use it"),
            ),
            Some(single) if single.id_from.is_some() && batch.response.id_from.is_none() => file.error(
                diags,
                &path!["objects", object, "batch", "response"],
                format!("the {kind} endpoint learns ids (id_from): batch.response.id_from must say where a result holds the id"),
            ),
            Some(_) => {}
        }
    }
}

/// A header name from the config; an error at `at` when it is none.
fn header_name(
    file: &crate::config::load::SourceFile,
    diags: &mut Diagnostics,
    at: &[Seg],
    name: &str,
) -> Option<http::HeaderName> {
    http::HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| file.error(diags, at, format!("\"{name}\" is not a valid header name")))
        .ok()
}

fn check_retry(src: &Sourced<ProviderConfig>, diags: &mut Diagnostics) {
    let (retry, file) = (&src.value.retry, &src.file);
    let at = |field: &str| path!["retry", field];
    file.check_range(diags, &at("max_attempts"), retry.max_attempts, 1, 100);
    file.check_duration(
        diags,
        &at("initial_backoff"),
        retry.initial_backoff.0,
        MS,
        HOUR,
    );
    file.check_duration(diags, &at("max_backoff"), retry.max_backoff.0, MS, HOUR);
    file.check_duration(
        diags,
        &at("max_retry_after"),
        retry.max_retry_after.0,
        Duration::ZERO,
        HOUR,
    );
    if retry.initial_backoff > retry.max_backoff {
        file.error(
            diags,
            &at("initial_backoff"),
            "retry.initial_backoff is longer than retry.max_backoff",
        );
    }
    for (i, status) in retry.retry_on.iter().enumerate() {
        if !(100..=599).contains(status) {
            file.error(
                diags,
                &path!["retry", "retry_on", i],
                format!("{status} is not an HTTP status"),
            );
        }
    }
}

fn compile_endpoint(
    src: &Sourced<ProviderConfig>,
    object: &str,
    kind: &str,
    ep: &EndpointConfig,
    diags: &mut Diagnostics,
) -> Option<Endpoint> {
    let file = &src.file;
    let at = |field: &str| path!["objects", object, kind, field];
    let method = ep.method.to_ascii_uppercase();
    let method = if METHODS.contains(&method.as_str()) {
        http::Method::from_bytes(method.as_bytes()).ok()
    } else {
        file.error(
            diags,
            &at("method"),
            format!(
                "unknown HTTP method \"{}\"{}; expected one of {}",
                ep.method,
                crate::config::suggest::did_you_mean(&method, METHODS),
                METHODS.join(", ")
            ),
        );
        None
    };
    let template = PathTemplate::parse(&ep.path)
        .map_err(|e| file.error(diags, &at("path"), e))
        .ok();
    let id_from = match &ep.id_from {
        None => None,
        Some(p) => match JsonPath::compile(p) {
            Ok(p) => Some(p),
            Err(e) => {
                file.text_error(diags, &at("id_from"), 1, e.col, e.message);
                return None;
            }
        },
    };
    let conflict_id = match &ep.conflict_id_from {
        None => None,
        Some(_) if kind != "create" => {
            file.error(
                diags,
                &at("conflict_id_from"),
                "conflict_id_from belongs on a create endpoint (a 409 answers a create)",
            );
            return None;
        }
        Some(config) => Some(compile_conflict_id(src, object, config, diags)?),
    };
    let unmodified_since = match &ep.unmodified_since {
        None => None,
        Some(_) if !matches!(kind, "update" | "delete") => {
            file.error(
                diags,
                &at("unmodified_since"),
                "unmodified_since belongs on an update or delete endpoint",
            );
            return None;
        }
        Some(config) => match http::HeaderName::from_bytes(config.header.as_bytes()) {
            Ok(header) => Some(Precondition {
                header,
                format: config.format,
            }),
            Err(_) => {
                file.error(
                    diags,
                    &path!["objects", object, kind, "unmodified_since", "header"],
                    format!("\"{}\" is not a valid header name", config.header),
                );
                return None;
            }
        },
    };
    Some(Endpoint {
        method: method?,
        path: template?,
        id_from,
        conflict_id,
        unmodified_since,
    })
}

fn compile_conflict_id(
    src: &Sourced<ProviderConfig>,
    object: &str,
    config: &ConflictIdConfig,
    diags: &mut Diagnostics,
) -> Option<ConflictId> {
    let file = &src.file;
    let at = path!["objects", object, "create", "conflict_id_from"];
    let (path_text, at_path, pattern) = match config {
        ConflictIdConfig::Path(p) => (p, at.to_vec(), None),
        ConflictIdConfig::Pattern(p) => {
            let mut at_path = at.to_vec();
            at_path.push(Seg::from("path"));
            (&p.path, at_path, Some(&p.pattern))
        }
    };
    let path = match JsonPath::compile(path_text) {
        Ok(path) => path,
        Err(e) => {
            file.text_error(diags, &at_path, 1, e.col, e.message);
            return None;
        }
    };
    let pattern = match pattern {
        None => None,
        Some(text) => {
            let mut at_pattern = at.to_vec();
            at_pattern.push(Seg::from("pattern"));
            match regex::Regex::new(text) {
                Ok(re) if re.captures_len() > 1 => Some(re),
                Ok(_) => {
                    file.error(
                        diags,
                        &at_pattern,
                        "the pattern needs a group around the id, as in 'Existing ID: (\\d+)'",
                    );
                    return None;
                }
                Err(e) => {
                    file.error(diags, &at_pattern, format!("invalid pattern: {e}"));
                    return None;
                }
            }
        }
    };
    Some(ConflictId { path, pattern })
}
