//! What the credentials bucket holds for one account of one provider, and
//! the bucket key it is under.

use serde::{Deserialize, Serialize};

use crate::config::model::CredentialKind;
use crate::config::secret::Secret;

/// One account's credentials, as JSON in the bucket. Secrets are kept as
/// [`Secret`]s in memory: never in `Debug` output or logs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Stored {
    pub kind: CredentialKind,
    /// `bearer`: the token; `oauth2`: the refresh token.
    #[serde(serialize_with = "expose")]
    pub secret: Secret,
    /// `oauth2`: the access token the refresh token was last traded for.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "expose_some"
    )]
    pub access_token: Option<Secret>,
    /// When the access token was issued and expires (ms since the epoch);
    /// no expiry: the provider did not say (Salesforce), and a 401 tells.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_at_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<i64>,
    /// Why the provider refused these credentials: they are not used (the
    /// account's records wait) until someone replaces them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invalid: Option<String>,
    /// An instance trading the refresh token right now: the others wait
    /// for its result instead of refreshing too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refreshing: Option<Lease>,
    /// Refreshes a 401 asked for since the last request the provider
    /// accepted: past a few, the credentials are invalid, not stale.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub rejections: u32,
    pub updated_at_ms: i64,
}

/// Who holds a refresh, until when (ms since the epoch, its clock).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Lease {
    pub by: String,
    pub until_ms: i64,
}

impl Stored {
    /// Fresh credentials, as `syncflow accounts add` stores them.
    pub fn new(kind: CredentialKind, secret: Secret, now_ms: i64) -> Self {
        Stored {
            kind,
            secret,
            access_token: None,
            issued_at_ms: None,
            expires_at_ms: None,
            invalid: None,
            refreshing: None,
            rejections: 0,
            updated_at_ms: now_ms,
        }
    }

    /// The token requests carry, if there is one to try.
    pub fn bearer(&self) -> Option<&Secret> {
        match self.kind {
            CredentialKind::Bearer => Some(&self.secret),
            CredentialKind::Oauth2 => self.access_token.as_ref(),
        }
    }

    /// Whether an OAuth2 access token is due for a refresh at `now_ms`:
    /// `refresh_before_ms` before it expires, or half its lifetime before
    /// when that is shorter. Missing tokens are due; tokens of unknown
    /// expiry never are (a 401 says when).
    pub fn refresh_due(&self, now_ms: i64, refresh_before_ms: i64) -> bool {
        if self.kind != CredentialKind::Oauth2 {
            return false;
        }
        if self.access_token.is_none() {
            return true;
        }
        let Some(expires) = self.expires_at_ms else {
            return false;
        };
        let lifetime = expires - self.issued_at_ms.unwrap_or(expires);
        now_ms >= expires - refresh_before_ms.min(lifetime / 2)
    }

    /// Whether the access token has expired (or is missing).
    pub fn expired(&self, now_ms: i64) -> bool {
        self.bearer().is_none() || self.expires_at_ms.is_some_and(|at| now_ms >= at)
    }

    /// Another instance's refresh lease, still running at `now_ms`.
    pub fn refreshing_elsewhere(&self, me: &str, now_ms: i64) -> bool {
        self.refreshing
            .as_ref()
            .is_some_and(|lease| lease.by != me && lease.until_ms > now_ms)
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("credentials serialize")
    }

    pub fn from_json(bytes: &[u8]) -> Result<Self, String> {
        serde_json::from_slice(bytes).map_err(|e| e.to_string())
    }
}

fn expose<S: serde::Serializer>(secret: &Secret, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(secret.expose())
}

fn expose_some<S: serde::Serializer>(secret: &Option<Secret>, s: S) -> Result<S::Ok, S::Error> {
    match secret {
        Some(secret) => s.serialize_some(secret.expose()),
        None => s.serialize_none(),
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// The bucket key of `account` at `provider`: `<provider>.<account>`, the
/// account with every byte outside `[A-Za-z0-9_-]` written `=XX` (bucket
/// keys allow few characters, and `.` separates tokens).
pub fn key(provider: &str, account: &str) -> String {
    let mut key = String::with_capacity(provider.len() + 1 + account.len());
    key.push_str(provider);
    key.push('.');
    for byte in account.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' => key.push(byte as char),
            _ => key.push_str(&format!("={byte:02X}")),
        }
    }
    key
}

/// `(provider, account)` of a bucket key made by [`key`].
pub fn parse_key(key: &str) -> Option<(String, String)> {
    let (provider, encoded) = key.split_once('.')?;
    let mut account = Vec::with_capacity(encoded.len());
    let mut bytes = encoded.bytes();
    while let Some(byte) = bytes.next() {
        if byte == b'=' {
            let hex = [bytes.next()?, bytes.next()?];
            let hex = std::str::from_utf8(&hex).ok()?;
            account.push(u8::from_str_radix(hex, 16).ok()?);
        } else {
            account.push(byte);
        }
    }
    Some((provider.to_string(), String::from_utf8(account).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_spell_any_account_in_bucket_key_characters() {
        for account in ["acme", "tenant.42", "ünïcode / spaces", "a=b", "-_"] {
            let key = key("hubspot", account);
            assert!(
                key.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_=.".contains(&b)),
                "{key}"
            );
            assert_eq!(key.matches('.').count(), 1, "{key}");
            assert_eq!(
                parse_key(&key),
                Some(("hubspot".into(), account.to_string()))
            );
        }
        assert_eq!(key("hubspot", "tenant.42"), "hubspot.tenant=2E42");
    }

    #[test]
    fn secrets_stay_out_of_debug_but_round_trip_through_the_bucket() {
        let mut stored = Stored::new(CredentialKind::Oauth2, Secret::new("refresh-me"), 1);
        stored.access_token = Some(Secret::new("access-me"));
        assert!(!format!("{stored:?}").contains("-me"));
        let back = Stored::from_json(&stored.to_json()).unwrap();
        assert_eq!(back, stored);
        assert_eq!(back.bearer().unwrap().expose(), "access-me");
    }

    #[test]
    fn refresh_is_due_before_expiry_at_most_half_a_lifetime_early() {
        let mut stored = Stored::new(CredentialKind::Oauth2, Secret::new("r"), 0);
        assert!(stored.refresh_due(0, 300_000), "no access token yet");
        stored.access_token = Some(Secret::new("a"));
        stored.issued_at_ms = Some(0);
        stored.expires_at_ms = Some(1_800_000);
        assert!(!stored.refresh_due(1_499_999, 300_000));
        assert!(stored.refresh_due(1_500_000, 300_000));
        // A 10 s token with refresh_before 5 min: refreshed at 5 s.
        stored.expires_at_ms = Some(10_000);
        assert!(!stored.refresh_due(4_999, 300_000));
        assert!(stored.refresh_due(5_000, 300_000));
        // Unknown expiry (Salesforce): only a 401 tells.
        stored.expires_at_ms = None;
        assert!(!stored.refresh_due(i64::MAX / 2, 300_000));
        let bearer = Stored::new(CredentialKind::Bearer, Secret::new("t"), 0);
        assert!(!bearer.refresh_due(0, 0) && !bearer.expired(0));
    }
}
