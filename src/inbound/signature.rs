//! Webhook signatures, checked before anything else is read: HubSpot's v3
//! scheme and a generic HMAC-SHA256 one. Comparisons are constant-time.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use http::HeaderMap;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::config::model::{SignatureConfig, SignatureEncoding, SignatureScheme, TimestampUnit};
use crate::config::secret::Secret;

/// Why a request's signature was refused (each is a 401).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No signature, or no timestamp where the scheme needs one.
    Missing,
    /// The signature does not match.
    Mismatch,
    /// Signed longer ago than `max_age` (or in the future by as much): a replay.
    Stale,
}

impl Refusal {
    /// The `outcome` label of `syncflow_webhook_requests_total`.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Missing => "unsigned",
            Refusal::Mismatch => "bad_signature",
            Refusal::Stale => "stale_timestamp",
        }
    }
}

/// A scheme's settings, resolved at load.
#[derive(Debug, Clone)]
pub struct Verifier {
    secret: Secret,
    header: String,
    encoding: SignatureEncoding,
    prefix: String,
    timestamp: Option<(String, TimestampUnit)>,
    /// The signed text, with `{method}`, `{url}`, `{body}`, `{timestamp}`.
    message: String,
    max_age_ms: i64,
}

/// One request as a signature sees it.
pub struct Signed<'a> {
    pub method: &'a str,
    /// The URL the provider called, exactly.
    pub url: &'a str,
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
}

impl Verifier {
    /// Fails with a message naming the setting that does not fit the scheme.
    pub fn new(config: &SignatureConfig) -> Result<Self, String> {
        let max_age_ms = i64::try_from(config.max_age.0.as_millis()).unwrap_or(i64::MAX);
        match config.scheme {
            SignatureScheme::HubspotV3 => {
                let set = [
                    ("header", config.header.is_some()),
                    ("encoding", config.encoding.is_some()),
                    ("prefix", config.prefix.is_some()),
                    ("timestamp_header", config.timestamp_header.is_some()),
                    ("timestamp_unit", config.timestamp_unit.is_some()),
                    ("message", config.message.is_some()),
                ];
                if let Some((name, _)) = set.iter().find(|(_, set)| *set) {
                    return Err(format!(
                        "{name} is fixed by the hubspot_v3 scheme; leave it out"
                    ));
                }
                Ok(Verifier {
                    secret: config.secret.clone(),
                    header: "x-hubspot-signature-v3".into(),
                    encoding: SignatureEncoding::Base64,
                    prefix: String::new(),
                    timestamp: Some(("x-hubspot-request-timestamp".into(), TimestampUnit::Ms)),
                    message: "{method}{url}{body}{timestamp}".into(),
                    max_age_ms,
                })
            }
            SignatureScheme::HmacSha256 => {
                let header = config
                    .header
                    .clone()
                    .ok_or("the hmac_sha256 scheme needs the header holding the signature")?;
                let timestamp = config.timestamp_header.clone().map(|h| {
                    (
                        h.to_ascii_lowercase(),
                        config.timestamp_unit.unwrap_or(TimestampUnit::S),
                    )
                });
                let message = config.message.clone().unwrap_or_else(|| {
                    match timestamp.is_some() {
                        true => "{timestamp}.{body}",
                        false => "{body}",
                    }
                    .to_string()
                });
                if message.contains("{timestamp}") && timestamp.is_none() {
                    return Err("message signs {timestamp} but there is no timestamp_header".into());
                }
                Ok(Verifier {
                    secret: config.secret.clone(),
                    header: header.to_ascii_lowercase(),
                    encoding: config.encoding.unwrap_or(SignatureEncoding::Hex),
                    prefix: config.prefix.clone().unwrap_or_default(),
                    timestamp,
                    message,
                    max_age_ms,
                })
            }
        }
    }

    /// Checks `request`'s signature and, where the scheme has one, that its
    /// timestamp is recent (`now_ms`, milliseconds since the epoch).
    pub fn verify(&self, request: &Signed<'_>, now_ms: i64) -> Result<(), Refusal> {
        let header = |name: &str| {
            request
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
        };
        let given = header(&self.header)
            .and_then(|v| v.strip_prefix(self.prefix.as_str()))
            .ok_or(Refusal::Missing)?;
        let given = match self.encoding {
            SignatureEncoding::Base64 => base64::engine::general_purpose::STANDARD.decode(given),
            SignatureEncoding::Hex => {
                decode_hex(given).ok_or(base64::DecodeError::InvalidLength(0))
            }
        }
        .map_err(|_| Refusal::Mismatch)?;
        let timestamp = match &self.timestamp {
            None => None,
            Some((name, unit)) => {
                let text = header(name).ok_or(Refusal::Missing)?;
                let value: i64 = text.parse().map_err(|_| Refusal::Missing)?;
                let ms = match unit {
                    TimestampUnit::Ms => value,
                    TimestampUnit::S => value.saturating_mul(1000),
                };
                if now_ms.saturating_sub(ms).abs() > self.max_age_ms {
                    return Err(Refusal::Stale);
                }
                Some(text)
            }
        };
        let expected = self.sign(request, timestamp.unwrap_or_default());
        match bool::from(expected.as_slice().ct_eq(&given)) {
            true => Ok(()),
            false => Err(Refusal::Mismatch),
        }
    }

    /// The HMAC of the scheme's message for `request`.
    fn sign(&self, request: &Signed<'_>, timestamp: &str) -> Vec<u8> {
        let mut mac = Hmac::<Sha256>::new_from_slice(self.secret.expose().as_bytes())
            .expect("HMAC takes a key of any length");
        // The message is fed in pieces rather than built: bodies can be large.
        let mut rest = self.message.as_str();
        while let Some(open) = rest.find('{') {
            mac.update(&rest.as_bytes()[..open]);
            let after = &rest[open..];
            let (piece, len): (&[u8], usize) = if after.starts_with("{method}") {
                (request.method.as_bytes(), 8)
            } else if after.starts_with("{url}") {
                (request.url.as_bytes(), 5)
            } else if after.starts_with("{body}") {
                (request.body, 6)
            } else if after.starts_with("{timestamp}") {
                (timestamp.as_bytes(), 11)
            } else {
                (b"{", 1)
            };
            mac.update(piece);
            rest = &after[len..];
        }
        mac.update(rest.as_bytes());
        mac.finalize().into_bytes().to_vec()
    }
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;
    use crate::config::duration::ConfigDuration;

    fn config(scheme: SignatureScheme) -> SignatureConfig {
        SignatureConfig {
            scheme,
            secret: Secret::new("app-secret"),
            header: None,
            encoding: None,
            prefix: None,
            timestamp_header: None,
            timestamp_unit: None,
            message: None,
            max_age: ConfigDuration::from_secs(300),
        }
    }

    /// HubSpot's v3, computed independently of `sign`.
    fn hubspot_signature(url: &str, body: &str, timestamp: i64) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(b"app-secret").unwrap();
        mac.update(format!("POST{url}{body}{timestamp}").as_bytes());
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    }

    fn headers(pairs: &[(&'static str, String)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn hubspot_v3_accepts_its_signature_and_refuses_tampering_and_replays() {
        let v = Verifier::new(&config(SignatureScheme::HubspotV3)).unwrap();
        let (url, body, now) = (
            "https://sync.example.com/hooks/hubspot",
            r#"[{"eventId":1}]"#,
            1_700_000_000_000,
        );
        let signed = |ts: i64, sig: String| {
            headers(&[
                ("x-hubspot-request-timestamp", ts.to_string()),
                ("x-hubspot-signature-v3", sig),
            ])
        };
        let request = |h: &HeaderMap, body: &'static str| {
            let request = Signed {
                method: "POST",
                url,
                headers: h,
                body: body.as_bytes(),
            };
            v.verify(&request, now)
        };
        let good = signed(now - 1000, hubspot_signature(url, body, now - 1000));
        assert_eq!(request(&good, body), Ok(()));
        assert_eq!(request(&good, r#"[{"eventId":2}]"#), Err(Refusal::Mismatch));
        let other_url = hubspot_signature("https://evil/hooks/hubspot", body, now - 1000);
        assert_eq!(
            request(&signed(now - 1000, other_url), body),
            Err(Refusal::Mismatch)
        );
        let old = now - 301_000;
        assert_eq!(
            request(&signed(old, hubspot_signature(url, body, old)), body),
            Err(Refusal::Stale)
        );
        assert_eq!(request(&headers(&[]), body), Err(Refusal::Missing));
        assert_eq!(
            request(&signed(now, "not base64!".into()), body),
            Err(Refusal::Mismatch)
        );
    }

    #[test]
    fn generic_hmac_with_prefix_hex_and_a_timestamp_in_seconds() {
        let v = Verifier::new(&SignatureConfig {
            header: Some("X-Signature".into()),
            prefix: Some("sha256=".into()),
            timestamp_header: Some("X-Timestamp".into()),
            ..config(SignatureScheme::HmacSha256)
        })
        .unwrap();
        let mut mac = Hmac::<Sha256>::new_from_slice(b"app-secret").unwrap();
        mac.update(b"1700000000.{\"a\":1}");
        let hex: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let h = headers(&[
            ("x-signature", format!("sha256={hex}")),
            ("x-timestamp", "1700000000".into()),
        ]);
        let request = Signed {
            method: "POST",
            url: "http://h/hooks/x",
            headers: &h,
            body: br#"{"a":1}"#,
        };
        assert_eq!(v.verify(&request, 1_700_000_010_000), Ok(()));
        assert_eq!(v.verify(&request, 1_700_000_400_000), Err(Refusal::Stale));
    }

    #[test]
    fn settings_that_do_not_fit_the_scheme_are_refused() {
        let e = Verifier::new(&SignatureConfig {
            header: Some("X".into()),
            ..config(SignatureScheme::HubspotV3)
        })
        .unwrap_err();
        assert!(e.contains("header is fixed"), "{e}");
        let e = Verifier::new(&config(SignatureScheme::HmacSha256)).unwrap_err();
        assert!(e.contains("needs the header"), "{e}");
    }
}
