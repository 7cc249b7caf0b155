//! A provider's `auth`: one header for every request (bearer, header,
//! basic), or credentials per account (`per_account`), kept in the
//! credentials bucket and, for OAuth2, traded for access tokens.

use std::time::Duration;

use crate::config::diagnostics::Diagnostics;
use crate::config::load::Sourced;
use crate::config::model::{Auth, CredentialKind, PerAccountAuth, ProviderConfig};
use crate::config::secret::Secret;
use crate::path;

/// `auth.per_account`, compiled.
#[derive(Debug, Clone, PartialEq)]
pub struct AccountAuth {
    pub kind: CredentialKind,
    /// `kind: oauth2`: how refresh tokens become access tokens.
    pub oauth2: Option<OAuth2>,
}

/// An OAuth2 client (RFC 6749 §6, refresh-token grant).
#[derive(Debug, Clone, PartialEq)]
pub struct OAuth2 {
    /// A whole `http(s)://` URL.
    pub token_url: String,
    pub client_id: String,
    pub client_secret: Secret,
    pub refresh_before: Duration,
}

/// The header every request carries, for the provider-wide kinds; `None`
/// for none or `per_account`. Errors go to `auth`.
pub(super) fn auth_header(
    src: &Sourced<ProviderConfig>,
    diags: &mut Diagnostics,
) -> Option<(String, Secret)> {
    let auth: &Auth = src.value.auth.as_ref()?;
    let header = match (&auth.bearer, &auth.header, &auth.basic, &auth.per_account) {
        (Some(token), None, None, None) => (
            "authorization".into(),
            Secret::new(format!("Bearer {}", token.expose())),
        ),
        (None, Some(h), None, None) => (h.name.clone(), h.value.clone()),
        (None, None, Some(b), None) => {
            use base64::Engine as _;
            let creds = base64::engine::general_purpose::STANDARD.encode(format!(
                "{}:{}",
                b.username,
                b.password.expose()
            ));
            (
                "authorization".into(),
                Secret::new(format!("Basic {creds}")),
            )
        }
        (None, None, None, Some(_)) => return None,
        _ => {
            src.file.error(
                diags,
                &path!["auth"],
                "auth takes exactly one of bearer, header { name, value }, basic { username, password } or per_account { kind, ... }",
            );
            return None;
        }
    };
    Some(header)
}

/// `auth.per_account`, checked; `None` when absent or wrong (errors in
/// `diags`, each at its key).
pub(super) fn per_account(
    src: &Sourced<ProviderConfig>,
    base_url: &str,
    diags: &mut Diagnostics,
) -> Option<AccountAuth> {
    let cfg: &PerAccountAuth = src.value.auth.as_ref()?.per_account.as_ref()?;
    let file = &src.file;
    let at = |key: &str| path!["auth", "per_account", key];
    let before = diags.len();
    let oauth2 = match cfg.kind {
        CredentialKind::Bearer => {
            let oauth_only = [
                ("token_url", cfg.token_url.is_some()),
                ("client_id", cfg.client_id.is_some()),
                ("client_secret", cfg.client_secret.is_some()),
            ];
            for (key, given) in oauth_only {
                if given {
                    file.error(
                        diags,
                        &at(key),
                        format!("{key} is for kind: oauth2; a bearer account's stored token is sent as it is"),
                    );
                }
            }
            None
        }
        CredentialKind::Oauth2 => {
            let mut required = |key: &str, value: Option<&str>| match value {
                Some(value) if !value.trim().is_empty() => Some(value.to_string()),
                _ => {
                    file.error(
                        diags,
                        &path!["auth", "per_account"],
                        format!("kind: oauth2 needs {key} (the OAuth2 app's, the same for every account)"),
                    );
                    None
                }
            };
            let token_url = required("token_url", cfg.token_url.as_deref());
            let client_id = required("client_id", cfg.client_id.as_deref());
            let client_secret = required(
                "client_secret",
                cfg.client_secret.as_ref().map(Secret::expose),
            );
            file.check_duration(
                diags,
                &at("refresh_before"),
                cfg.refresh_before.0,
                Duration::ZERO,
                Duration::from_secs(24 * 3600),
            );
            let token_url = token_url.and_then(|url| match resolve_token_url(base_url, &url) {
                Ok(url) => Some(url),
                Err(e) => {
                    file.error(diags, &at("token_url"), e);
                    None
                }
            });
            Some(OAuth2 {
                token_url: token_url?,
                client_id: client_id?,
                client_secret: Secret::new(client_secret?),
                refresh_before: cfg.refresh_before.0,
            })
        }
    };
    if src.value.rate_limit.is_none() {
        // The rate limit, applied per account, is also what bounds the
        // records one account holds at once (executor/accounts.rs): without
        // it an account whose credentials are refused could hold every
        // record the pipeline may hold, and hold back the others.
        file.error(
            diags,
            &path!["auth", "per_account"],
            "credentials per account need a rate_limit (applied per account): it bounds the records an account with refused credentials holds back",
        );
    }
    if !src.value.inbound.as_ref().is_none_or(|i| i.poll.is_empty()) {
        file.error(
            diags,
            &path!["auth", "per_account"],
            "polls ask the provider for changes without an account: a provider polled by inbound.poll needs provider-wide auth",
        );
    }
    (diags.len() == before).then_some(AccountAuth {
        kind: cfg.kind,
        oauth2,
    })
}

/// A token URL as given (`https://…`) or as a path under `base_url`.
fn resolve_token_url(base_url: &str, url: &str) -> Result<String, String> {
    let whole = match (url.starts_with('/'), url.contains("://")) {
        (true, _) => format!("{}{url}", base_url.trim_end_matches('/')),
        (false, true) => url.to_string(),
        (false, false) => String::new(),
    };
    let uri: Option<http::Uri> = whole.parse().ok();
    match uri
        .as_ref()
        .map(|u| (u.scheme_str(), u.host()))
        .unwrap_or_default()
    {
        (Some("http" | "https"), Some(_)) => Ok(whole),
        _ => Err(format!(
            "token_url \"{url}\" must be a path under base_url (/oauth/v1/token) or an http(s) URL"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_urls_resolve_under_base_url_or_stand_alone() {
        let base = "https://api.hubapi.com/";
        assert_eq!(
            resolve_token_url(base, "/oauth/v1/token").unwrap(),
            "https://api.hubapi.com/oauth/v1/token"
        );
        assert_eq!(
            resolve_token_url(base, "https://login.salesforce.com/services/oauth2/token").unwrap(),
            "https://login.salesforce.com/services/oauth2/token"
        );
        assert!(resolve_token_url(base, "oauth/token").is_err());
        assert!(resolve_token_url(base, "ftp://x/token").is_err());
    }
}
