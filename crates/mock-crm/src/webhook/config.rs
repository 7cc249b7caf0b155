//! Where HubSpot-like webhooks go and how badly their delivery behaves.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::config::{ConfigError, parse_duration};

/// A webhook target: the URL syncflow receives HubSpot's events on, the app
/// secret they are signed with, and how delivery misbehaves (duplicates,
/// reordering, lost answers), as HubSpot's own delivery may.
///
/// Also accepted as JSON by `PUT /_admin/webhooks` (durations as text such
/// as `"50ms"`; every field but `url` and `secret` optional).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// `http://` only (the mock has no TLS client). Signed exactly as posted
    /// to, after URL normalisation (`http://h:1` is posted to and signed as
    /// `http://h:1/`).
    pub url: String,
    /// The app's client secret: the HMAC key of `X-HubSpot-Signature-v3`.
    pub secret: String,
    /// Events per POST at most (HubSpot: 100).
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    /// How long a batch waits to fill up before it is sent anyway.
    #[serde(default = "default_max_wait", deserialize_with = "duration")]
    pub max_wait: Duration,
    /// Probability (0..=1) that a delivered batch is sent a second time.
    #[serde(default)]
    pub duplicate_rate: f64,
    /// Probability (0..=1) that a delivery attempt counts as failed whatever
    /// the receiver answered (it did receive it: like an answer lost on the
    /// way back), so the batch is sent again with the next `attemptNumber`.
    #[serde(default)]
    pub drop_rate: f64,
    /// Shuffle the events inside each batch.
    #[serde(default)]
    pub reorder: bool,
    /// Delivery attempts of a batch before it is given up (HubSpot: 10).
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Wait before the first retry; doubled after each, at most
    /// [`MAX_RETRY_BACKOFF`] (or this, when larger).
    #[serde(default = "default_retry_backoff", deserialize_with = "duration")]
    pub retry_backoff: Duration,
    /// Batches in flight at once (HubSpot: 10 concurrent requests). With more
    /// than one, a batch being retried is overtaken by later ones.
    #[serde(default = "default_max_concurrent")]
    pub max_concurrent: usize,
    /// An attempt whose answer takes longer fails (HubSpot: 5 s).
    #[serde(default = "default_timeout", deserialize_with = "duration")]
    pub timeout: Duration,
    /// `portalId` of every event.
    #[serde(default = "default_portal_id")]
    pub portal_id: u64,
    /// `appId` of every event.
    #[serde(default = "default_app_id")]
    pub app_id: u64,
}

/// The cap of the doubling retry backoff.
pub const MAX_RETRY_BACKOFF: Duration = Duration::from_secs(5);

impl WebhookConfig {
    /// A target with the defaults: batches of up to 100 events within 50 ms,
    /// no duplicates, drops or reordering, 10 attempts from 100 ms backoff.
    pub fn new(url: impl Into<String>, secret: impl Into<String>) -> WebhookConfig {
        WebhookConfig {
            url: url.into(),
            secret: secret.into(),
            max_batch: default_max_batch(),
            max_wait: default_max_wait(),
            duplicate_rate: 0.0,
            drop_rate: 0.0,
            reorder: false,
            max_attempts: default_max_attempts(),
            retry_backoff: default_retry_backoff(),
            max_concurrent: default_max_concurrent(),
            timeout: default_timeout(),
            portal_id: default_portal_id(),
            app_id: default_app_id(),
        }
    }

    /// The URL to post to (and sign), or why the settings cannot work.
    pub(crate) fn validate(&self) -> Result<reqwest::Url, ConfigError> {
        let bad = |why: String| Err(ConfigError::Webhook(why));
        let url = match reqwest::Url::parse(&self.url) {
            Ok(url) if url.scheme() == "http" => url,
            Ok(_) => return bad(format!("url \"{}\" is not http://", self.url)),
            Err(e) => return bad(format!("url \"{}\": {e}", self.url)),
        };
        for (name, rate) in [
            ("duplicate_rate", self.duplicate_rate),
            ("drop_rate", self.drop_rate),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                return bad(format!("{name} {rate} is outside 0..=1"));
            }
        }
        for (name, count) in [
            ("max_batch", self.max_batch),
            ("max_attempts", self.max_attempts as usize),
            ("max_concurrent", self.max_concurrent),
        ] {
            if count == 0 {
                return bad(format!("{name} must be at least 1"));
            }
        }
        if self.timeout.is_zero() {
            return bad("timeout must be above zero".to_owned());
        }
        Ok(url)
    }
}

fn default_max_batch() -> usize {
    100
}

fn default_max_wait() -> Duration {
    Duration::from_millis(50)
}

fn default_max_attempts() -> u32 {
    10
}

fn default_retry_backoff() -> Duration {
    Duration::from_millis(100)
}

fn default_max_concurrent() -> usize {
    10
}

fn default_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_portal_id() -> u64 {
    62515
}

fn default_app_id() -> u64 {
    1160452
}

fn duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    parse_duration(&text).map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_takes_defaults_and_durations_as_text() {
        let config: WebhookConfig = serde_json::from_str(
            r#"{"url": "http://127.0.0.1:9/hooks", "secret": "s", "max_wait": "5ms", "reorder": true}"#,
        )
        .unwrap();
        let expected = WebhookConfig {
            max_wait: Duration::from_millis(5),
            reorder: true,
            ..WebhookConfig::new("http://127.0.0.1:9/hooks", "s")
        };
        assert_eq!(config, expected);
        let typo = r#"{"url": "http://h/", "secret": "s", "max_batches": 1}"#;
        assert!(serde_json::from_str::<WebhookConfig>(typo).is_err());
    }

    #[test]
    fn validate_refuses_what_cannot_work_and_normalises_the_url() {
        let ok = WebhookConfig::new("http://127.0.0.1:9", "s");
        assert_eq!(ok.validate().unwrap().as_str(), "http://127.0.0.1:9/");
        let bad = [
            WebhookConfig::new("https://h/", "s"),
            WebhookConfig::new("not a url", "s"),
            WebhookConfig {
                duplicate_rate: 1.5,
                ..ok.clone()
            },
            WebhookConfig {
                drop_rate: -0.1,
                ..ok.clone()
            },
            WebhookConfig {
                max_batch: 0,
                ..ok.clone()
            },
            WebhookConfig {
                max_attempts: 0,
                ..ok.clone()
            },
            WebhookConfig {
                timeout: Duration::ZERO,
                ..ok.clone()
            },
        ];
        for config in bad {
            assert!(
                matches!(config.validate(), Err(ConfigError::Webhook(_))),
                "{config:?}"
            );
        }
    }
}
