//! How a mock CRM is set up, and the command-line notation of its settings.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use super::WebhookConfig;

/// Settings of a [`MockCrm`](super::MockCrm).
#[derive(Debug, Clone, PartialEq)]
pub struct MockCrmConfig {
    /// `127.0.0.1:0` (the default) picks a free port.
    pub listen: SocketAddr,
    /// Limit of the `/hubspot` API; `None` = unlimited.
    pub hubspot_limit: Option<RateLimit>,
    /// Limit of the `/salesforce` API; `None` = unlimited.
    pub salesforce_limit: Option<RateLimit>,
    /// Requests the `/hubspot` API takes in all (HubSpot's daily limit, not
    /// reset while the mock runs); every answer says how many are left in
    /// `X-HubSpot-RateLimit-Daily-Remaining`, and once none is, requests
    /// are refused 429 (policy `DAILY`). `None` = no such limit.
    pub hubspot_daily: Option<u64>,
    /// Fraction (0..=1) of API requests answered 503 before anything else.
    pub fail_rate: f64,
    /// Added to every API response.
    pub latency: Duration,
    /// The bearer token every API request must carry; `None` = any non-empty one.
    pub token: Option<String>,
    /// Keep an ordered log of every API request (off for benchmarks).
    pub record_log: bool,
    /// A dotted path into request bodies holding the send time (µs since the
    /// Unix epoch): each request's receipt − send time goes into a histogram
    /// at `/_admin/latency` (benchmarks; see `latency.rs`).
    pub latency_field: Option<String>,
    /// Where HubSpot contact changes are posted as webhooks; `None` (the
    /// default) = nowhere. Can be set later with `MockCrm::set_webhook`.
    pub webhook: Option<WebhookConfig>,
    /// The OAuth2 refresh-token flow (`None`, the default: off). When on,
    /// API requests must carry an access token the mock issued at its token
    /// endpoints (or `token`, when set); see `oauth.rs`.
    pub oauth: Option<OAuthConfig>,
}

impl Default for MockCrmConfig {
    fn default() -> Self {
        MockCrmConfig {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            hubspot_limit: None,
            salesforce_limit: None,
            hubspot_daily: None,
            fail_rate: 0.0,
            latency: Duration::ZERO,
            token: None,
            record_log: false,
            latency_field: None,
            webhook: None,
            oauth: None,
        }
    }
}

impl MockCrmConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        check_fail_rate(self.fail_rate)?;
        for limit in self.hubspot_limit.iter().chain(&self.salesforce_limit) {
            limit.validate()?;
        }
        if let Some(webhook) = &self.webhook {
            webhook.validate()?;
        }
        if let Some(oauth) = &self.oauth {
            oauth.validate()?;
        }
        Ok(())
    }
}

/// The OAuth client the mock's token endpoints accept, and what they issue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthConfig {
    pub client_id: String,
    pub client_secret: String,
    /// How long an access token is accepted after its refresh.
    pub access_ttl: Duration,
    /// Each refresh returns a new refresh token and the old one stops
    /// working (some providers rotate them; HubSpot and Salesforce, by
    /// default, do not). Off by default.
    pub rotate_refresh_tokens: bool,
}

impl OAuthConfig {
    /// The default access token lifetime, HubSpot's 30 minutes.
    pub const DEFAULT_ACCESS_TTL: Duration = Duration::from_secs(30 * 60);

    /// A client whose access tokens live `access_ttl`, refresh tokens not rotated.
    pub fn new(
        client_id: impl Into<String>,
        client_secret: impl Into<String>,
        access_ttl: Duration,
    ) -> Self {
        OAuthConfig {
            client_id: client_id.into(),
            client_secret: client_secret.into(),
            access_ttl,
            rotate_refresh_tokens: false,
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.client_id.is_empty() {
            return Err(ConfigError::OAuth("the client id is empty".into()));
        }
        if self.access_ttl.is_zero() {
            return Err(ConfigError::OAuth("the access token ttl is zero".into()));
        }
        Ok(())
    }
}

/// At most `requests` per `per` on average, and at most `burst` at once
/// (GCRA: after `burst` back-to-back requests, one more every `per / requests`);
/// or, with `window`, at most `requests` in any sliding window of `per`
/// (HubSpot's "100 per 10 seconds"; `burst` is then unused).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub requests: u32,
    pub per: Duration,
    pub burst: u32,
    pub window: bool,
}

impl RateLimit {
    /// A GCRA limit: `requests` per `per`, `burst` at once.
    pub fn gcra(requests: u32, per: Duration, burst: u32) -> Self {
        RateLimit {
            requests,
            per,
            burst,
            window: false,
        }
    }

    /// A sliding window: at most `requests` in any `per`.
    pub fn window(requests: u32, per: Duration) -> Self {
        RateLimit {
            requests,
            per,
            burst: 1,
            window: true,
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.requests == 0 || self.per.is_zero() || self.burst == 0 {
            return Err(ConfigError::ZeroRateLimit(self.to_string()));
        }
        Ok(())
    }
}

/// `REQUESTS/PER:BURST`, for example `100/10s:10`, or `REQUESTS/PER:window`
/// for a sliding window (`22/1s:window`).
impl FromStr for RateLimit {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, ConfigError> {
        let bad = || ConfigError::Notation {
            what: "rate limit",
            input: s.to_owned(),
            expected: "REQUESTS/PER:BURST or REQUESTS/PER:window, for example 100/10s:10",
        };
        let (requests, rest) = s.split_once('/').ok_or_else(bad)?;
        let (per, burst) = rest.split_once(':').ok_or_else(bad)?;
        let (requests, per) = (
            requests.trim().parse().map_err(|_| bad())?,
            parse_duration(per)?,
        );
        let limit = match burst.trim() {
            "window" => RateLimit::window(requests, per),
            burst => RateLimit::gcra(requests, per, burst.parse().map_err(|_| bad())?),
        };
        limit.validate()?;
        Ok(limit)
    }
}

impl fmt::Display for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.window {
            true => write!(f, "{}/{:?}:window", self.requests, self.per),
            false => write!(f, "{}/{:?}:{}", self.requests, self.per, self.burst),
        }
    }
}

/// A whole number with a unit: `20ms`, `10s`, `1m`, `1h`.
pub fn parse_duration(s: &str) -> Result<Duration, ConfigError> {
    let s = s.trim();
    let bad = || ConfigError::Notation {
        what: "duration",
        input: s.to_owned(),
        expected: "a whole number and a unit (ms, s, m, h), for example 20ms or 10s",
    };
    let unit_start = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (number, unit) = s.split_at(unit_start);
    let number: u64 = number.parse().map_err(|_| bad())?;
    let millis_per_unit = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(bad()),
    };
    number
        .checked_mul(millis_per_unit)
        .map(Duration::from_millis)
        .ok_or_else(bad)
}

pub(super) fn check_fail_rate(fail_rate: f64) -> Result<(), ConfigError> {
    if (0.0..=1.0).contains(&fail_rate) {
        Ok(())
    } else {
        Err(ConfigError::FailRate(fail_rate))
    }
}

/// A setting that cannot work.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    #[error("invalid {what} \"{input}\": expected {expected}")]
    Notation {
        what: &'static str,
        input: String,
        expected: &'static str,
    },
    #[error("invalid rate limit {0}: requests, per and burst must all be above zero")]
    ZeroRateLimit(String),
    #[error("fail rate {0} is outside 0..=1")]
    FailRate(f64),
    #[error("invalid webhook setting: {0}")]
    Webhook(String),
    #[error("invalid OAuth setting: {0}")]
    OAuth(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_notation_round_trips() {
        let limit: RateLimit = "100/10s:10".parse().unwrap();
        assert_eq!(limit, RateLimit::gcra(100, Duration::from_secs(10), 10));
        assert_eq!(limit.to_string(), "100/10s:10");
        let limit: RateLimit = "22/1s:window".parse().unwrap();
        assert_eq!(limit, RateLimit::window(22, Duration::from_secs(1)));
        assert_eq!(limit.to_string(), "22/1s:window");
    }

    #[test]
    fn rate_limit_notation_rejects_missing_parts_and_zeros() {
        for bad in ["100/10s", "100:10", "x/1s:1", "1/1s:x", "1/1:1"] {
            assert!(
                matches!(bad.parse::<RateLimit>(), Err(ConfigError::Notation { .. })),
                "{bad}"
            );
        }
        for zero in ["0/1s:1", "1/0s:1", "1/1s:0"] {
            assert!(
                matches!(
                    zero.parse::<RateLimit>(),
                    Err(ConfigError::ZeroRateLimit(_))
                ),
                "{zero}"
            );
        }
    }

    #[test]
    fn durations_take_a_unit() {
        assert_eq!(parse_duration("20ms"), Ok(Duration::from_millis(20)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        for bad in ["10", "ms", "1.5s", "5d", ""] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn config_rejects_a_fail_rate_outside_zero_to_one() {
        let config = MockCrmConfig {
            fail_rate: 1.5,
            ..MockCrmConfig::default()
        };
        assert_eq!(config.validate(), Err(ConfigError::FailRate(1.5)));
        assert_eq!(MockCrmConfig::default().validate(), Ok(()));
    }

    #[test]
    fn config_rejects_an_oauth_client_without_id_or_ttl() {
        let with = |oauth: OAuthConfig| MockCrmConfig {
            oauth: Some(oauth),
            ..MockCrmConfig::default()
        };
        let ttl = OAuthConfig::DEFAULT_ACCESS_TTL;
        assert_eq!(with(OAuthConfig::new("id", "s", ttl)).validate(), Ok(()));
        for bad in [
            OAuthConfig::new("", "s", ttl),
            OAuthConfig::new("id", "s", Duration::ZERO),
        ] {
            let error = with(bad.clone()).validate();
            assert!(matches!(error, Err(ConfigError::OAuth(_))), "{bad:?}");
        }
    }
}
