//! The config as written: one struct per file kind, unknown keys rejected.
//!
//! These structs hold text (JSONPaths, Rhai, schema paths) exactly as the
//! operator wrote it; `pipeline::compile` turns them into compiled form.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::duration::ConfigDuration;
use super::secret::Secret;

/// `syncflow.yaml`: process-wide settings; every key optional.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Globals {
    pub nats: NatsGlobals,
    pub redis: RedisGlobals,
    pub http: HttpGlobals,
    pub jetstream: JetStreamGlobals,
    /// Several instances as one (docs/fleet.md); none: each instance on
    /// its own, sharing each pipeline's consumer.
    pub fleet: Option<FleetGlobals>,
}

/// `fleet:` — instances that run the same config share the work by key
/// partitions, one instance per partition, so a key's changes are applied
/// in stream order whichever instances come and go.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FleetGlobals {
    /// Partitions of every pipeline's keys: the unit an instance holds.
    /// Changing it re-partitions (drain the fleet first).
    pub partitions: u32,
    /// How long an instance that stopped answering keeps its partitions
    /// before others take them over.
    pub failover: ConfigDuration,
    /// This instance's name in leases and logs; default: pid and
    /// start time.
    pub instance: Option<String>,
}

impl Default for FleetGlobals {
    fn default() -> Self {
        FleetGlobals {
            partitions: 12,
            failover: ConfigDuration::from_secs(5),
            instance: None,
        }
    }
}

/// The streams and buckets syncflow creates itself.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct JetStreamGlobals {
    /// Replicas of the id map bucket and the dead-letter stream (3 on a
    /// three-node cluster).
    pub replicas: usize,
    pub dead_letters: DeadLetterStreamGlobals,
}

impl Default for JetStreamGlobals {
    fn default() -> Self {
        JetStreamGlobals {
            replicas: 1,
            dead_letters: DeadLetterStreamGlobals::default(),
        }
    }
}

/// Limits of the `SYNCFLOW_DLQ` stream.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DeadLetterStreamGlobals {
    /// Dead letters older than this are dropped.
    pub max_age: ConfigDuration,
    /// The stream's size at most; the oldest dead letters go first. None:
    /// unbounded.
    pub max_bytes: Option<u64>,
}

impl Default for DeadLetterStreamGlobals {
    fn default() -> Self {
        DeadLetterStreamGlobals {
            max_age: ConfigDuration::from_secs(30 * 24 * 3600),
            max_bytes: None,
        }
    }
}

/// How syncflow connects to NATS. At most one of `credentials_file`,
/// `nkey_seed_file`, `token` and `user`/`password`.
#[derive(Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NatsGlobals {
    pub url: String,
    /// A `.creds` file (user JWT and NKey seed), as `nats context` makes.
    pub credentials_file: Option<String>,
    /// A file holding an NKey user seed (`SU...`).
    pub nkey_seed_file: Option<String>,
    pub token: Option<Secret>,
    pub user: Option<String>,
    pub password: Option<Secret>,
    pub tls: Option<TlsGlobals>,
}

impl Default for NatsGlobals {
    fn default() -> Self {
        NatsGlobals {
            url: "nats://127.0.0.1:4222".into(),
            credentials_file: None,
            nkey_seed_file: None,
            token: None,
            user: None,
            password: None,
            tls: None,
        }
    }
}

impl std::fmt::Debug for NatsGlobals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsGlobals")
            .field("url", &super::secret::redact_url(&self.url))
            .field("credentials_file", &self.credentials_file)
            .field("nkey_seed_file", &self.nkey_seed_file)
            .field("token", &self.token)
            .field("user", &self.user)
            .field("password", &self.password)
            .field("tls", &self.tls)
            .finish()
    }
}

/// TLS for a connection: the CA that signs the server's certificate (the
/// system's roots when unset) and a client certificate for mutual TLS.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TlsGlobals {
    /// PEM file of the CA certificate(s).
    pub ca: Option<String>,
    /// PEM files of the client certificate and its key.
    pub cert: Option<String>,
    pub key: Option<String>,
}

/// The Redis of the shared rate limits: `redis://` or `rediss://` (TLS), or
/// the primary that Redis Sentinels name.
#[derive(Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RedisGlobals {
    pub url: String,
    /// Prefix of every key syncflow writes, so two deployments sharing a
    /// Redis (staging and production) never share a limit.
    pub key_prefix: String,
    pub tls: Option<TlsGlobals>,
    /// The primary is the one these sentinels name (`url` is then unused).
    pub sentinel: Option<SentinelGlobals>,
}

/// The default `redis.url`.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";

impl Default for RedisGlobals {
    fn default() -> Self {
        RedisGlobals {
            url: DEFAULT_REDIS_URL.into(),
            key_prefix: "syncflow".into(),
            tls: None,
            sentinel: None,
        }
    }
}

impl std::fmt::Debug for RedisGlobals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisGlobals")
            .field("url", &super::secret::redact_url(&self.url))
            .field("key_prefix", &self.key_prefix)
            .field("tls", &self.tls)
            .field("sentinel", &self.sentinel)
            .finish()
    }
}

/// `redis.sentinel`: Redis Sentinel names the primary, and a new one after
/// a failover.
#[derive(Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SentinelGlobals {
    /// The name the sentinels monitor the primary by (`sentinel monitor
    /// <master> ...`).
    pub master: String,
    /// `redis://host:port` of each sentinel, with the sentinels' own
    /// credentials if they need any (`redis://:password@host:26379`).
    pub urls: Vec<String>,
    /// The password of the primary and its replicas (`requirepass`).
    #[serde(default)]
    pub password: Option<Secret>,
}

impl std::fmt::Debug for SentinelGlobals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let urls: Vec<String> = self
            .urls
            .iter()
            .map(|u| super::secret::redact_url(u))
            .collect();
        f.debug_struct("SentinelGlobals")
            .field("master", &self.master)
            .field("urls", &urls)
            .field("password", &self.password)
            .finish()
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpGlobals {
    /// `/metrics`, `/healthz`, `/readyz`.
    pub listen: String,
}

impl Default for HttpGlobals {
    fn default() -> Self {
        HttpGlobals {
            listen: "127.0.0.1:9464".into(),
        }
    }
}

/// `providers/<name>.yaml`: one external API.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    pub name: String,
    pub base_url: String,
    /// An https provider's CA (instead of the system's roots) and client
    /// certificate: an internal API signed by a private CA, or one that
    /// asks for mutual TLS.
    #[serde(default)]
    pub tls: Option<TlsGlobals>,
    #[serde(default)]
    pub auth: Option<Auth>,
    /// Extra headers sent with every request (an API key, say: never logged).
    #[serde(default)]
    pub headers: BTreeMap<String, Secret>,
    #[serde(default)]
    pub rate_limit: Option<RateLimitConfig>,
    /// Requests allowed per window (a CRM's daily allocation), per account
    /// for pipelines that name one; counted in Redis.
    #[serde(default)]
    pub quota: Option<QuotaConfig>,
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    #[serde(default = "default_timeout")]
    pub timeout: ConfigDuration,
    #[serde(default)]
    pub retry: RetryConfig,
    #[serde(default)]
    pub circuit_breaker: CircuitBreakerConfig,
    #[serde(default = "default_idempotency_header")]
    pub idempotency_header: Option<String>,
    /// Response bodies longer than this are an error of their own kind
    /// (`response_too_large`), never read whole.
    #[serde(default = "default_max_response_bytes")]
    pub max_response_bytes: u64,
    pub objects: BTreeMap<String, ObjectConfig>,
    /// How the provider's own changes reach syncflow (two-way sync).
    #[serde(default)]
    pub inbound: Option<InboundConfig>,
}

/// A provider's changes coming in: by webhook, or by polling per object.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct InboundConfig {
    #[serde(default)]
    pub webhook: Option<WebhookConfig>,
    /// By object name.
    #[serde(default)]
    pub poll: BTreeMap<String, PollConfig>,
}

/// `POST <http.listen>/hooks/<provider>`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    pub signature: SignatureConfig,
    /// The URL the provider calls, for schemes that sign it; by default
    /// `http://<Host header><path>`.
    #[serde(default)]
    pub public_url: Option<String>,
    #[serde(default = "default_webhook_max_body")]
    pub max_body_bytes: u64,
    /// JSONPath to the events in a request body.
    #[serde(default = "default_webhook_events")]
    pub events: String,
    /// Each event's envelope: `id`, `object`, `record_id`, `occurred_at`,
    /// `change` and `record`, as JSONPaths or `{ expr }` over the event.
    pub event: serde_yaml::Mapping,
}

fn default_webhook_max_body() -> u64 {
    1024 * 1024
}
fn default_webhook_events() -> String {
    "$[*]".into()
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SignatureConfig {
    pub scheme: SignatureScheme,
    pub secret: Secret,
    /// hmac_sha256: the header holding the signature.
    #[serde(default)]
    pub header: Option<String>,
    #[serde(default)]
    pub encoding: Option<SignatureEncoding>,
    /// hmac_sha256: text before the signature in its header (`sha256=`).
    #[serde(default)]
    pub prefix: Option<String>,
    #[serde(default)]
    pub timestamp_header: Option<String>,
    #[serde(default)]
    pub timestamp_unit: Option<TimestampUnit>,
    /// hmac_sha256: what is signed, from `{method}`, `{url}`, `{body}` and
    /// `{timestamp}` (default `{body}`, or `{timestamp}.{body}` with a
    /// timestamp header).
    #[serde(default)]
    pub message: Option<String>,
    /// Requests signed longer ago than this are refused (replays).
    #[serde(default = "default_signature_max_age")]
    pub max_age: ConfigDuration,
}

fn default_signature_max_age() -> ConfigDuration {
    ConfigDuration::from_secs(300)
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SignatureScheme {
    /// HubSpot's v3: base64 HMAC-SHA256 of method + URL + body + timestamp,
    /// headers X-HubSpot-Signature-v3 and X-HubSpot-Request-Timestamp (ms).
    HubspotV3,
    HmacSha256,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SignatureEncoding {
    Hex,
    Base64,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TimestampUnit {
    S,
    Ms,
}

/// A "changed since" request for one object, repeated every `every`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PollConfig {
    #[serde(default = "default_poll_every")]
    pub every: ConfigDuration,
    /// `{ method, path }`; the path may hold `{since}` (ms), `{after_id}`
    /// and `{limit}`.
    pub request: PollRequestConfig,
    #[serde(default = "default_poll_limit")]
    pub limit: u32,
    /// JSONPath to the records of an answer.
    pub records: String,
    /// JSONPath to a boolean that is true on the last page; without it, a
    /// page shorter than `limit` is the last.
    #[serde(default)]
    pub done: Option<String>,
    /// Each poll starts this much before the cursor, so records committed
    /// late with an older modification time are not skipped.
    #[serde(default = "default_poll_lookback")]
    pub lookback: ConfigDuration,
    /// Each record's envelope: `record_id` and `occurred_at` (the cursor),
    /// `change` and `record` (default: `update` and the whole record).
    pub event: serde_yaml::Mapping,
}

fn default_poll_every() -> ConfigDuration {
    ConfigDuration::from_secs(5)
}
fn default_poll_limit() -> u32 {
    200
}
fn default_poll_lookback() -> ConfigDuration {
    ConfigDuration::from_secs(5)
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PollRequestConfig {
    #[serde(default = "default_get")]
    pub method: String,
    pub path: String,
}

fn default_get() -> String {
    "GET".into()
}

/// `links/<name>.yaml`: a record kept the same in System A and a provider.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LinkConfig {
    pub name: String,
    /// The provider object (`{ provider, object }`).
    pub external: LinkExternal,
    /// Where System A's records are written: a provider object (System A's
    /// own API) or a NATS subject.
    pub internal: TargetConfig,
    /// The synced fields: each a path in System A's records, a path in the
    /// provider's, and who wins when both change.
    pub fields: BTreeMap<String, LinkFieldConfig>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LinkExternal {
    pub provider: String,
    pub object: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LinkFieldConfig {
    pub internal: String,
    pub external: String,
    #[serde(default)]
    pub policy: Policy,
}

/// Who wins a field both sides changed.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// The newer change by each side's modification time; ties go to System A.
    #[default]
    Latest,
    /// System A owns the field: a provider edit is set back.
    Internal,
    /// The provider owns the field: a System A edit is set back.
    Provider,
}

/// A pipeline's part in a two-way link.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TwoWayConfig {
    pub link: String,
    pub direction: Direction,
    /// JSONPath to the change's modification time (ms since the epoch).
    pub modified: String,
    /// What a change carries: `full` records (a CDC event's `after`, a
    /// polled record), where a missing field is empty, or only the
    /// `changed` fields (webhook events), where a missing field is unchanged.
    #[serde(default)]
    pub changes: ChangeShape,
    /// Outbound: JSONPath to the provider's id in System A's record, for
    /// records syncflow created in System A from the provider's (their
    /// inbound mapping writes it): such a record is linked, never created
    /// in the provider a second time.
    #[serde(default)]
    pub external_id: Option<String>,
    /// Inbound: JSONPath to System A's key in the provider's record, for
    /// records syncflow created in the provider (their outbound mapping
    /// writes it). With it, a record that has none was born in the
    /// provider and is created in System A at once; without it, a change
    /// of an unlinked recent record waits a little for its link first.
    #[serde(default)]
    pub internal_id: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ChangeShape {
    #[default]
    Full,
    Changed,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// System A's changes, to the provider.
    Outbound,
    /// The provider's changes, to System A.
    Inbound,
}

impl Direction {
    /// As written in the config (and in metric labels).
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
        }
    }
}

fn default_max_response_bytes() -> u64 {
    1024 * 1024
}

fn default_max_in_flight() -> usize {
    32
}
fn default_timeout() -> ConfigDuration {
    ConfigDuration::from_secs(10)
}
fn default_idempotency_header() -> Option<String> {
    Some("Idempotency-Key".into())
}

/// Exactly one of `bearer`, `header` or `basic` (checked when compiling).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Auth {
    #[serde(default)]
    pub bearer: Option<Secret>,
    #[serde(default)]
    pub header: Option<HeaderAuth>,
    #[serde(default)]
    pub basic: Option<BasicAuth>,
    /// Each account's own credentials, kept in the credentials bucket
    /// (`syncflow accounts`), for pipelines that name the account.
    #[serde(default)]
    pub per_account: Option<PerAccountAuth>,
}

/// `auth.per_account`: what each account's stored credential is and how it
/// becomes an `Authorization` header.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PerAccountAuth {
    pub kind: CredentialKind,
    /// `oauth2`: where refresh tokens are traded for access tokens; a path
    /// under `base_url` or a whole URL.
    #[serde(default)]
    pub token_url: Option<String>,
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default)]
    pub client_secret: Option<Secret>,
    /// `oauth2`: an access token is refreshed this long before it expires
    /// (at most half its lifetime before).
    #[serde(default = "default_refresh_before")]
    pub refresh_before: ConfigDuration,
}

#[derive(Debug, Clone, Copy, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CredentialKind {
    /// The stored secret is the bearer token itself.
    Bearer,
    /// The stored secret is an OAuth2 refresh token (RFC 6749 §6).
    Oauth2,
}

impl CredentialKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialKind::Bearer => "bearer",
            CredentialKind::Oauth2 => "oauth2",
        }
    }
}

fn default_refresh_before() -> ConfigDuration {
    ConfigDuration::from_secs(300)
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HeaderAuth {
    pub name: String,
    pub value: Secret,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BasicAuth {
    pub username: String,
    pub password: Secret,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    pub requests: u32,
    pub per: ConfigDuration,
    #[serde(default)]
    pub burst: Option<u32>,
    /// A response header telling how many requests are left in the
    /// provider's own window (`X-HubSpot-RateLimit-Remaining`).
    #[serde(default)]
    pub remaining_header: Option<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Total tries, the first included.
    pub max_attempts: u32,
    pub initial_backoff: ConfigDuration,
    pub max_backoff: ConfigDuration,
    /// Statuses worth another try; connect errors and timeouts always are.
    pub retry_on: Vec<u16>,
    /// The longest `Retry-After` honoured; a provider asking for more makes
    /// the attempt count as failed (it is not waited out).
    pub max_retry_after: ConfigDuration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_attempts: 5,
            initial_backoff: ConfigDuration::from_millis(200),
            max_backoff: ConfigDuration::from_secs(30),
            retry_on: vec![408, 425, 429, 500, 502, 503, 504],
            max_retry_after: ConfigDuration::from_secs(300),
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CircuitBreakerConfig {
    /// Consecutive failed requests (after their own retries) that open it.
    pub failure_threshold: u32,
    /// How long it stays open before one probe request is let through.
    pub open_for: ConfigDuration,
}

impl Default for CircuitBreakerConfig {
    fn default() -> Self {
        CircuitBreakerConfig {
            failure_threshold: 5,
            open_for: ConfigDuration::from_secs(10),
        }
    }
}

/// `{ requests: 250000, per: 1d }`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct QuotaConfig {
    pub requests: u64,
    pub per: ConfigDuration,
    /// A response header telling the requests left (HubSpot's
    /// `X-HubSpot-RateLimit-Daily-Remaining`, or Salesforce's
    /// `Sforce-Limit-Info: api-usage=USED/MAX`): followed when lower than
    /// syncflow's own count.
    #[serde(default)]
    pub remaining_header: Option<String>,
}

/// The endpoints of one object type (contact, company, ...).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ObjectConfig {
    #[serde(default)]
    pub create: Option<EndpointConfig>,
    #[serde(default)]
    pub update: Option<EndpointConfig>,
    #[serde(default)]
    pub upsert: Option<EndpointConfig>,
    #[serde(default)]
    pub delete: Option<EndpointConfig>,
    #[serde(default)]
    pub read: Option<EndpointConfig>,
    /// Endpoints that take many records per request (provider/batch.rs).
    #[serde(default)]
    pub batch: Option<BatchConfig>,
}

/// An object's batch endpoints: how records are packed into one request
/// and how the answer tells each record's outcome.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    /// The most records in one request.
    pub max_records: usize,
    /// How long the first record of a batch waits for others.
    #[serde(default = "default_batch_max_wait")]
    pub max_wait: ConfigDuration,
    #[serde(default)]
    pub request: BatchRequestConfig,
    pub response: BatchResponseConfig,
    #[serde(default)]
    pub create: Option<BatchEndpointConfig>,
    #[serde(default)]
    pub update: Option<BatchEndpointConfig>,
    #[serde(default)]
    pub upsert: Option<BatchEndpointConfig>,
    #[serde(default)]
    pub delete: Option<BatchEndpointConfig>,
}

fn default_batch_max_wait() -> ConfigDuration {
    ConfigDuration::from_millis(200)
}

/// The body of a batch request.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BatchRequestConfig {
    /// Dotted path in the body where the array of records goes (`inputs`);
    /// empty: the body is the array itself.
    #[serde(default)]
    pub items: String,
    /// Fields every batch body carries besides (`{ allOrNone: false }`).
    #[serde(default)]
    pub fields: serde_json::Map<String, serde_json::Value>,
    /// A field of each record where syncflow puts a trace id, which the
    /// answer repeats (`objectWriteTraceId`). Without it, the answer's
    /// results are matched to the records by position.
    #[serde(default)]
    pub trace: Option<String>,
}

/// Where the answer to a batch says what became of each record. Paths are
/// JSONPath: `results` and `errors` into the whole answer, the others into
/// one result or error.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BatchResponseConfig {
    /// The results (`$.results`, or `$` for an answer that is an array).
    pub results: String,
    /// With `request.trace`: where a result repeats its record's trace id.
    #[serde(default)]
    pub trace: Option<String>,
    /// A created record's id in its result.
    #[serde(default)]
    pub id_from: Option<String>,
    /// A result is a success only where this is `true` (`$.success`);
    /// without it, every result is one.
    #[serde(default)]
    pub success: Option<String>,
    /// Failures listed apart from the results (`$.errors`).
    #[serde(default)]
    pub errors: Option<String>,
    /// With `errors`: where a failure names its records' trace ids (a
    /// string or an array of them).
    #[serde(default)]
    pub error_trace: Option<String>,
    /// A failure's code (`$.category`, `$.errors[0].statusCode`).
    #[serde(default)]
    pub error_code: Option<String>,
    /// A failure's message.
    #[serde(default)]
    pub error_message: Option<String>,
    /// The HTTP status each failure code stands for, which decides as it
    /// does for a single request: `retry_on` retries the record (alone, in a
    /// later batch), 404 on delete is done, 409 on create may teach the id,
    /// anything else is a dead letter. A code not listed stands for 400.
    #[serde(default)]
    pub statuses: BTreeMap<String, u16>,
}

/// One batch endpoint.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BatchEndpointConfig {
    pub method: String,
    /// May hold `{ids}`: the records' provider ids, comma-separated (a
    /// delete by ids in the query); then no body is sent.
    pub path: String,
    /// Fields each record's item carries besides its mapped body, by dotted
    /// path: text with `{key}` or `{id}`, or any JSON constant.
    #[serde(default)]
    pub item: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    pub method: String,
    pub path: String,
    /// JSONPath into the response body that yields the provider's id.
    #[serde(default)]
    pub id_from: Option<String>,
    /// On a create answered 409 (the record exists already), where its id
    /// is: the id map learns it and the record is sent as an update.
    #[serde(default)]
    pub conflict_id_from: Option<ConflictIdConfig>,
    /// Update and delete endpoints: a header telling the provider to refuse
    /// the write (412) when the record changed after the last change
    /// syncflow saw of it, a change syncflow would otherwise overwrite
    /// unseen (a polled provider's user edit made since the last poll).
    #[serde(default)]
    pub unmodified_since: Option<PreconditionConfig>,
}

/// `{ header: If-Unmodified-Since, format: http_date | ms }`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PreconditionConfig {
    pub header: String,
    #[serde(default)]
    pub format: TimeFormat,
}

/// How a time is written in a header.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TimeFormat {
    /// RFC 9110's HTTP date (second precision).
    #[default]
    HttpDate,
    /// Milliseconds since the epoch.
    Ms,
}

/// A JSONPath into a 409 body, or a JSONPath to a text and a regular
/// expression whose first group is the id (`{ path: $.message, pattern:
/// 'Existing ID: (\d+)' }`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum ConflictIdConfig {
    Path(String),
    Pattern(ConflictIdPattern),
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConflictIdPattern {
    pub path: String,
    pub pattern: String,
}

/// `pipelines/<name>.yaml`: one flow from a stream to a provider object.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    pub name: String,
    pub source: SourceConfig,
    /// A JSONPath or `{ expr }` over the message.
    pub key: serde_yaml::Value,
    /// The account a record belongs to (a JSONPath or `{ expr }` over the
    /// message): the target provider's rate limit applies per account.
    #[serde(default)]
    pub account: Option<serde_yaml::Value>,
    /// Keys longer than this (in bytes) are dead letters of kind `key`.
    #[serde(default = "default_max_key_bytes")]
    pub max_key_bytes: usize,
    /// What the idempotency key sent with each request is made of.
    #[serde(default)]
    pub idempotency_key: IdempotencyKeyFrom,
    /// A JSONPath or `{ expr }` over the message.
    #[serde(default = "default_record")]
    pub record: serde_yaml::Value,
    #[serde(default)]
    pub op: Option<String>,
    #[serde(default)]
    pub input_schema: Option<String>,
    #[serde(default)]
    pub when: Option<String>,
    pub rules: Vec<RuleConfig>,
    pub target: TargetConfig,
    #[serde(default)]
    pub mapping: serde_yaml::Mapping,
    #[serde(default)]
    pub dead_letter: Option<DeadLetterConfig>,
    /// This pipeline carries one direction of a two-way link.
    #[serde(default)]
    pub two_way: Option<TwoWayConfig>,
    #[serde(default)]
    pub tests: Vec<TestCase>,
}

fn default_record() -> serde_yaml::Value {
    "$".into()
}

fn default_max_key_bytes() -> usize {
    512
}

/// The source of a pipeline's idempotency keys.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum IdempotencyKeyFrom {
    /// `<pipeline>:<stream>:<sequence>`: one key per message in the stream,
    /// so a provider never replays an old answer for a new change.
    #[default]
    Sequence,
    /// `<pipeline>:<Nats-Msg-Id>` (the sequence when a message has none):
    /// for publishers that re-publish one change under the same id.
    MessageId,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    pub nats: NatsSourceConfig,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NatsSourceConfig {
    pub stream: String,
    pub subject: String,
    /// Durable consumer name; defaults to the pipeline name.
    #[serde(default)]
    pub durable: Option<String>,
    /// Messages asked for per pull.
    #[serde(default = "default_batch")]
    pub batch: usize,
    /// Unacked messages the server lets this consumer hold.
    #[serde(default = "default_max_ack_pending")]
    pub max_ack_pending: i64,
    /// Bytes of unacked messages this pipeline holds at most.
    #[serde(default = "default_max_ack_pending_bytes")]
    pub max_ack_pending_bytes: usize,
    /// Redelivery after this long without an ack (in-progress acks extend it).
    #[serde(default = "default_ack_wait")]
    pub ack_wait: ConfigDuration,
}

fn default_batch() -> usize {
    256
}
/// Enough to keep a provider's `max_in_flight` (64 by default) busy eight
/// times over; more only holds memory (bench/README.md, Memory).
fn default_max_ack_pending() -> i64 {
    512
}
/// 2 MiB: 100 records of 20 KB in flight, 8,000 of 250 bytes (so
/// `max_ack_pending` binds first for small records).
fn default_max_ack_pending_bytes() -> usize {
    2 << 20
}
fn default_ack_wait() -> ConfigDuration {
    ConfigDuration::from_secs(30)
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    #[serde(rename = "if")]
    pub condition: String,
    pub then: String,
}

/// Where a pipeline's records go: a provider object (`provider` and
/// `object`), or a NATS subject (`nats`). Exactly one (checked when compiling).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    #[serde(default)]
    pub provider: Option<String>,
    #[serde(default)]
    pub object: Option<String>,
    #[serde(default)]
    pub nats: Option<NatsTargetConfig>,
    #[serde(default)]
    pub schema: Option<String>,
}

/// Records published to a JetStream subject, each confirmed by a publish ack.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NatsTargetConfig {
    /// May hold `{key}` and `{action}`, for example `systema.contacts.{action}.{key}`.
    pub subject: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterConfig {
    pub subject: String,
}

/// A mapping value: a JSONPath string or `{ expr: <Rhai> }`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum MappingSource {
    Path(String),
    Expr(ExprMapping),
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ExprMapping {
    pub expr: String,
}

/// A pipeline's own unit test, run by `validate` and `test`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TestCase {
    pub name: String,
    pub input: serde_json::Value,
    /// An inbound two-way pipeline's test: the record is linked to this
    /// System A key (`event.linked_key`).
    #[serde(default)]
    pub linked_key: Option<String>,
    pub expect: TestExpect,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TestExpect {
    #[serde(default)]
    pub action: Option<String>,
    #[serde(default)]
    pub output: Option<serde_json::Value>,
    /// The error kind expected instead of an action (`input_schema`, ...).
    #[serde(default)]
    pub error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentinel_credentials_never_show_in_debug_output() {
        let sentinel: SentinelGlobals = serde_yaml::from_str(
            "{ master: mymaster, urls: [\"redis://:sentinel-secret@10.0.0.1:26379\"], password: primary-secret }",
        )
        .unwrap();
        let redis = RedisGlobals {
            sentinel: Some(sentinel),
            ..RedisGlobals::default()
        };
        let shown = format!("{redis:?} {redis:#?}");
        assert!(shown.contains("mymaster"), "{shown}");
        for secret in ["sentinel-secret", "primary-secret"] {
            assert!(!shown.contains(secret), "{secret} shows: {shown}");
        }
    }
}
