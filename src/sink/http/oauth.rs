//! The OAuth2 refresh-token grant (RFC 6749 §6): a refresh token traded at
//! the provider's token endpoint for an access token. HubSpot answers with
//! `expires_in`; Salesforce does not (its sessions end by org policy, which
//! a 401 tells).

use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_TYPE, HeaderValue};
use http::{Method, Uri};
use serde::Deserialize;

use super::conn::{Origin, Outgoing, Target};
use crate::config::secret::Secret;
use crate::provider::OAuth2;

/// Token answers are small; a longer one is not a token answer.
const MAX_BODY: u64 = 64 * 1024;

/// A provider's token endpoint, with the app's client credentials.
pub(super) struct TokenEndpoint {
    origin: Origin,
    target: Target,
    client_id: String,
    client_secret: Secret,
    timeout: Duration,
}

/// What a refresh came to.
pub(super) enum Refreshed {
    Token {
        access_token: Secret,
        expires_in: Option<Duration>,
        /// Providers that rotate refresh tokens send the next one.
        refresh_token: Option<Secret>,
    },
    /// The endpoint refused the refresh token or the client (400, 401,
    /// 403): the credentials are invalid until someone replaces them.
    Refused(String),
    /// No answer, or one that may go away (5xx, 429): try again later.
    Failed(String),
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
    #[serde(default)]
    refresh_token: Option<String>,
}

impl TokenEndpoint {
    pub fn new(oauth: &OAuth2, timeout: Duration) -> Result<Self, String> {
        let uri: Uri = oauth
            .token_url
            .parse()
            .map_err(|e| format!("token_url: {e}"))?;
        let authority = uri.authority().ok_or("token_url has no host")?;
        let scheme = uri.scheme_str().unwrap_or("https");
        // The token endpoint is the identity provider's, often another
        // host than the API's: the system's roots, not the provider's CA.
        let origin = Origin::new(&format!("{scheme}://{authority}"), None)?;
        let target = origin.target(uri.path_and_query().map_or("/", |p| p.as_str()))?;
        Ok(TokenEndpoint {
            origin,
            target,
            client_id: oauth.client_id.clone(),
            client_secret: oauth.client_secret.clone(),
            timeout,
        })
    }

    /// Trades `refresh_token` for an access token: one request on a
    /// connection of its own (refreshes are rare).
    pub async fn refresh(&self, refresh_token: &Secret) -> Refreshed {
        let body: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "refresh_token")
            .append_pair("client_id", &self.client_id)
            .append_pair("client_secret", self.client_secret.expose())
            .append_pair("refresh_token", refresh_token.expose())
            .finish();
        let body = Bytes::from(body);
        let form = HeaderValue::from_static("application/x-www-form-urlencoded");
        let json = HeaderValue::from_static("application/json");
        let request = Outgoing {
            method: &Method::POST,
            target: &self.target,
            headers: [(&CONTENT_TYPE, &form), (&ACCEPT, &json)],
            body: &body,
        };

        let mut conn = match self.origin.connect(self.timeout).await {
            Ok(conn) => conn,
            Err(e) => return Refreshed::Failed(format!("token endpoint: {}", e.message)),
        };
        let response = match self
            .origin
            .send(&mut conn, request, self.timeout, MAX_BODY)
            .await
        {
            Ok(response) => response,
            Err(e) => return Refreshed::Failed(format!("token endpoint: {}", e.message)),
        };
        let status = response.status.as_u16();
        match status {
            200..=299 => match serde_json::from_slice::<TokenAnswer>(&response.body) {
                Ok(answer) if !answer.access_token.is_empty() => Refreshed::Token {
                    access_token: Secret::new(answer.access_token),
                    expires_in: answer.expires_in.map(Duration::from_secs),
                    refresh_token: answer
                        .refresh_token
                        .filter(|t| !t.is_empty())
                        .map(Secret::new),
                },
                // The body holds tokens: never quoted.
                _ => Refreshed::Failed(format!(
                    "token endpoint answered {status} without an access_token"
                )),
            },
            400 | 401 | 403 => Refreshed::Refused(format!(
                "token endpoint refused the refresh: {status} {}",
                error_of(&response.body)
            )),
            _ => Refreshed::Failed(format!("token endpoint answered {status}")),
        }
    }
}

/// The reason in an OAuth2 error answer (`error`, `error_description`;
/// HubSpot's `status`, `message`), without anything else from the body.
fn error_of(body: &[u8]) -> String {
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(body) else {
        return String::new();
    };
    let field = |name: &str| json.get(name).and_then(|v| v.as_str()).unwrap_or("");
    let (code, text) = match field("error") {
        "" => (field("status"), field("message")),
        error => (error, field("error_description")),
    };
    let mut reason = format!("{code}: {text}");
    reason.truncate(200);
    reason
}

#[cfg(test)]
#[test]
fn oauth_errors_read_in_both_providers_words() {
    assert_eq!(
        error_of(
            br#"{"error":"invalid_grant","error_description":"expired access/refresh token"}"#
        ),
        "invalid_grant: expired access/refresh token"
    );
    assert_eq!(
        error_of(br#"{"status":"BAD_REFRESH_TOKEN","message":"missing or unknown refresh token"}"#),
        "BAD_REFRESH_TOKEN: missing or unknown refresh token"
    );
    assert_eq!(error_of(b"<html>"), "");
}
