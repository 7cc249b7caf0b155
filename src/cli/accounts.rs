//! `syncflow accounts`: list, add and remove an account's credentials in the
//! credentials bucket (providers with `auth.per_account`). Running
//! instances see every change at once. Secrets are read from stdin or an
//! environment variable (never from the command line, which `ps` shows) and
//! never printed.

use std::io::{BufRead, Write};
use std::path::Path;

use super::Format;
use crate::clock::{format_time, now_ms};
use crate::compile::{Config, compile_dir};
use crate::config::env::ProcessEnv;
use crate::config::model::CredentialKind;
use crate::config::secret::Secret;
use crate::credentials::{CredentialStore, Current, Stored};

#[derive(Debug, clap::Subcommand)]
pub enum AccountsCommand {
    /// Every stored account: provider, account, kind and state, no secrets.
    List {
        /// Only this provider's accounts.
        #[arg(long)]
        provider: Option<String>,
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Stores (or replaces) an account's credentials: the token for
    /// `kind: bearer`, the refresh token for `kind: oauth2`. Read from
    /// stdin (one line) unless --secret-env names a variable holding it.
    Add {
        provider: String,
        account: String,
        /// An environment variable holding the secret.
        #[arg(long, value_name = "VAR")]
        secret_env: Option<String>,
    },
    /// Removes an account's credentials: its records wait until new ones
    /// are added.
    Remove { provider: String, account: String },
}

pub fn run(dir: &Path, command: &AccountsCommand, out: &mut dyn Write) -> Result<bool, String> {
    let config = compile_dir(dir, &ProcessEnv, false)
        .map_err(|d| format!("{d}{} errors in the config", d.len()))?;
    // Read before connecting: a missing secret is the operator's to fix,
    // whether NATS is up or not.
    let secret = match command {
        AccountsCommand::Add {
            provider,
            secret_env,
            ..
        } => {
            kind_of(&config, provider)?;
            Some(read_secret(secret_env.as_deref())?)
        }
        AccountsCommand::Remove { provider, .. } => {
            kind_of(&config, provider)?;
            None
        }
        AccountsCommand::List { .. } => None,
    };
    super::block_on(async {
        let js = super::jetstream(&config).await?;
        let store = CredentialStore::open(&js, config.globals.jetstream.replicas).await?;
        let io = |e: std::io::Error| e.to_string();
        match command {
            AccountsCommand::List { provider, format } => {
                let mut listed = store.list().await?;
                listed.retain(|(p, _, _)| provider.as_ref().is_none_or(|wanted| p == wanted));
                list(&listed, *format, out).map_err(io)?;
            }
            AccountsCommand::Add {
                provider, account, ..
            } => {
                let kind = kind_of(&config, provider)?;
                let secret = secret.expect("read above");
                let stored = Stored::new(kind, secret, now_ms());
                store.put(provider, account, &stored).await?;
                writeln!(out, "stored {} credentials of account \"{account}\" at {provider}: running instances use them now", kind.as_str()).map_err(io)?;
            }
            AccountsCommand::Remove { provider, account } => {
                match store.remove(provider, account).await? {
                    true => writeln!(out, "removed the credentials of account \"{account}\" at {provider}: its records wait until new ones are added"),
                    false => writeln!(out, "account \"{account}\" at {provider} has no credentials"),
                }
                .map_err(io)?;
            }
        }
        Ok(true)
    })
}

/// The kind of credentials `provider` takes per account.
fn kind_of(config: &Config, provider: &str) -> Result<CredentialKind, String> {
    let found = config
        .providers
        .get(provider)
        .ok_or_else(|| format!("unknown provider \"{provider}\""))?;
    found
        .account_auth
        .as_ref()
        .map(|auth| auth.kind)
        .ok_or_else(|| {
            format!(
                "provider \"{provider}\" has no auth.per_account: its credentials are in its YAML"
            )
        })
}

fn read_secret(env: Option<&str>) -> Result<Secret, String> {
    let secret = match env {
        Some(var) => std::env::var(var).map_err(|_| format!("${var} is not set"))?,
        None => {
            let mut line = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut line)
                .map_err(|e| format!("cannot read the secret from stdin: {e}"))?;
            line
        }
    };
    let secret = secret.trim();
    if secret.is_empty() {
        return Err("the secret is empty: give it on stdin (one line) or with --secret-env".into());
    }
    // Sent in a header (the token, or the token it is traded for): never
    // echoed, it is a secret.
    if secret.bytes().any(|b| !(0x21..=0x7e).contains(&b)) {
        return Err("the secret has spaces or characters a header cannot hold".into());
    }
    Ok(Secret::new(secret))
}

/// One line per account; the state says whether its records go.
fn list(
    listed: &[(String, String, Current)],
    format: Format,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    let now = now_ms();
    if format == Format::Json {
        for (provider, account, current) in listed {
            let s = &current.stored;
            let line = serde_json::json!({
                "provider": provider,
                "account": account,
                "kind": s.kind.as_str(),
                "state": state(current, now),
                "invalid": s.invalid,
                "access_token_expires_at": s.expires_at_ms.map(format_time),
                "updated_at": format_time(s.updated_at_ms),
                "revision": current.revision,
            });
            writeln!(out, "{line}")?;
        }
        return Ok(());
    }
    writeln!(
        out,
        "{:<16} {:<24} {:<7} {:<28} {:<24} UPDATED",
        "PROVIDER", "ACCOUNT", "KIND", "STATE", "TOKEN EXPIRES"
    )?;
    for (provider, account, current) in listed {
        let s = &current.stored;
        let expires = s.expires_at_ms.map_or("-".to_string(), format_time);
        writeln!(
            out,
            "{provider:<16} {account:<24} {:<7} {:<28} {expires:<24} {}",
            s.kind.as_str(),
            state(current, now),
            format_time(s.updated_at_ms)
        )?;
        if let Some(why) = &s.invalid {
            writeln!(out, "    invalid: {why}")?;
        }
    }
    writeln!(out, "{} accounts", listed.len())
}

fn state(current: &Current, now: i64) -> &'static str {
    let s = &current.stored;
    match () {
        _ if s.invalid.is_some() => "invalid (records wait)",
        _ if s.refreshing.as_ref().is_some_and(|l| l.until_ms > now) => "refreshing",
        _ if s.kind == CredentialKind::Oauth2 && s.access_token.is_none() => "not yet refreshed",
        _ if s.expired(now) => "access token expired",
        _ => "ok",
    }
}
