//! The mock CRM as a standalone server, for the demo and manual tests. The
//! shipped providers point at http://127.0.0.1:18080/hubspot and
//! http://127.0.0.1:18080/salesforce.
//!
//! ```text
//! cargo run --bin mock-crm -- --listen 127.0.0.1:18080 \
//!     [--hubspot-limit 100/10s:10] [--salesforce-limit 25/1s:5] [--no-limits] \
//!     [--fail-rate 0.05] [--latency 20ms] [--token dev-token] [--log] \
//!     [--latency-field properties.sent_at_us] \
//!     [--webhook-url http://127.0.0.1:8081/webhooks/hubspot --webhook-secret S \
//!      [--webhook-max-batch 100] [--webhook-max-wait 50ms] [--webhook-duplicate-rate 0.1] \
//!      [--webhook-drop-rate 0.1] [--webhook-reorder] [--webhook-max-attempts 10] \
//!      [--webhook-retry-backoff 100ms] [--webhook-max-concurrent 10]] \
//!     [--oauth-client-id ID --oauth-client-secret S [--oauth-access-ttl 30m] \
//!      [--oauth-rotate-refresh-tokens] [--oauth-grant ACCOUNT=REFRESH_TOKEN]...]
//! ```
//!
//! The webhook target can also be set later: `PUT /_admin/webhooks`. With
//! an OAuth client, requests need an access token from
//! `POST /hubspot/oauth/v1/token` or `POST /salesforce/services/oauth2/token`
//! (or `--token`); refresh tokens are registered per account with
//! `--oauth-grant` or `PUT /_admin/oauth/grants/{account}`.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use syncflow_mock_crm::{
    MockCrm, MockCrmConfig, OAuthConfig, RateLimit, WebhookConfig, parse_duration,
};
use tracing_subscriber::EnvFilter;

/// HubSpot- and Salesforce-like mock CRM. Inspect it at /_admin/state.
#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:18080")]
    listen: SocketAddr,
    /// Limit of /hubspot: at most REQUESTS per PER, BURST at once (or `window`: at most REQUESTS in any PER).
    #[arg(long, value_name = "REQUESTS/PER:BURST", default_value = "100/10s:10")]
    hubspot_limit: RateLimit,
    /// Limit of /salesforce: at most REQUESTS per PER, BURST at once (or `window`).
    #[arg(long, value_name = "REQUESTS/PER:BURST", default_value = "25/1s:5")]
    salesforce_limit: RateLimit,
    /// Requests the HubSpot API takes in all, as its daily limit (none by default).
    #[arg(long, value_name = "REQUESTS")]
    hubspot_daily: Option<u64>,
    /// No rate limits at all (for benchmarks of the sender).
    #[arg(long, conflicts_with_all = ["hubspot_limit", "salesforce_limit"])]
    no_limits: bool,
    /// Fraction (0..=1) of requests answered 503.
    #[arg(long, default_value_t = 0.0)]
    fail_rate: f64,
    /// Delay added to every response, such as 20ms.
    #[arg(long, default_value = "0ms", value_parser = parse_duration)]
    latency: Duration,
    /// The bearer token requests must carry; any non-empty one when unset.
    #[arg(long, env = "MOCK_CRM_TOKEN")]
    token: Option<String>,
    /// Keep an ordered log of every request, shown in /_admin/state.
    #[arg(long)]
    log: bool,
    /// Dotted path to a send time (µs since the Unix epoch) in request
    /// bodies: receipt − send time is kept as a histogram at /_admin/latency.
    #[arg(long, value_name = "PATH", value_parser = dotted_path)]
    latency_field: Option<String>,
    #[command(flatten)]
    webhook: WebhookArgs,
    #[command(flatten)]
    oauth: OAuthArgs,
}

/// The OAuth2 refresh-token flow, per account (see `OAuthConfig`).
#[derive(clap::Args)]
struct OAuthArgs {
    /// Turn OAuth on: the client the token endpoints accept. Requests then
    /// need an access token the mock issued (or --token).
    #[arg(long, value_name = "ID", requires = "oauth_client_secret")]
    oauth_client_id: Option<String>,
    /// The client secret token requests must carry.
    #[arg(long, env = "MOCK_CRM_OAUTH_CLIENT_SECRET", hide_env_values = true)]
    oauth_client_secret: Option<String>,
    /// How long an access token is accepted.
    #[arg(long, default_value = "30m", value_parser = parse_duration)]
    oauth_access_ttl: Duration,
    /// Each refresh returns a new refresh token; the old one stops working.
    #[arg(long)]
    oauth_rotate_refresh_tokens: bool,
    /// An account's refresh token, registered at start (repeatable).
    #[arg(long, value_name = "ACCOUNT=REFRESH_TOKEN", value_parser = grant, requires = "oauth_client_id")]
    oauth_grant: Vec<(String, String)>,
}

impl OAuthArgs {
    fn config(&self) -> Option<OAuthConfig> {
        let client_id = self.oauth_client_id.clone()?;
        let secret = self.oauth_client_secret.clone().unwrap_or_default();
        Some(OAuthConfig {
            rotate_refresh_tokens: self.oauth_rotate_refresh_tokens,
            ..OAuthConfig::new(client_id, secret, self.oauth_access_ttl)
        })
    }
}

fn grant(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((account, token)) if !account.is_empty() && !token.is_empty() => {
            Ok((account.to_owned(), token.to_owned()))
        }
        _ => Err(format!("\"{s}\" is not ACCOUNT=REFRESH_TOKEN")),
    }
}

/// HubSpot webhooks for every contact change (see `WebhookConfig`).
#[derive(clap::Args)]
struct WebhookArgs {
    /// Post HubSpot contact changes here (http:// only).
    #[arg(long, value_name = "URL", requires = "webhook_secret")]
    webhook_url: Option<String>,
    /// The app secret webhooks are signed with (X-HubSpot-Signature-v3).
    #[arg(long, env = "MOCK_CRM_WEBHOOK_SECRET", hide_env_values = true)]
    webhook_secret: Option<String>,
    /// Events per POST at most.
    #[arg(long, default_value_t = 100)]
    webhook_max_batch: usize,
    /// How long a batch waits to fill up.
    #[arg(long, default_value = "50ms", value_parser = parse_duration)]
    webhook_max_wait: Duration,
    /// Probability (0..=1) that a delivered batch is sent again.
    #[arg(long, default_value_t = 0.0)]
    webhook_duplicate_rate: f64,
    /// Probability (0..=1) that an attempt counts as failed (and is retried)
    /// whatever the receiver answered.
    #[arg(long, default_value_t = 0.0)]
    webhook_drop_rate: f64,
    /// Shuffle the events inside each batch.
    #[arg(long)]
    webhook_reorder: bool,
    /// Attempts per batch before it is given up.
    #[arg(long, default_value_t = 10)]
    webhook_max_attempts: u32,
    /// First retry wait, doubled after each (at most 5s).
    #[arg(long, default_value = "100ms", value_parser = parse_duration)]
    webhook_retry_backoff: Duration,
    /// Batches in flight at once.
    #[arg(long, default_value_t = 10)]
    webhook_max_concurrent: usize,
}

impl WebhookArgs {
    fn config(self) -> Option<WebhookConfig> {
        let url = self.webhook_url?;
        Some(WebhookConfig {
            max_batch: self.webhook_max_batch,
            max_wait: self.webhook_max_wait,
            duplicate_rate: self.webhook_duplicate_rate,
            drop_rate: self.webhook_drop_rate,
            reorder: self.webhook_reorder,
            max_attempts: self.webhook_max_attempts,
            retry_backoff: self.webhook_retry_backoff,
            max_concurrent: self.webhook_max_concurrent,
            ..WebhookConfig::new(url, self.webhook_secret.unwrap_or_default())
        })
    }
}

fn dotted_path(s: &str) -> Result<String, String> {
    if s.split('.').any(str::is_empty) {
        return Err(format!(
            "\"{s}\" is not a dotted path such as properties.sent_at_us"
        ));
    }
    Ok(s.to_owned())
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    match serve(Args::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mock_crm: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Serves until Ctrl-C, then lets in-flight requests finish.
async fn serve(args: Args) -> std::io::Result<()> {
    let limit = |limit: RateLimit| (!args.no_limits).then_some(limit);
    let crm = MockCrm::start(MockCrmConfig {
        listen: args.listen,
        hubspot_limit: limit(args.hubspot_limit),
        salesforce_limit: limit(args.salesforce_limit),
        hubspot_daily: args.hubspot_daily,
        fail_rate: args.fail_rate,
        latency: args.latency,
        token: args.token,
        record_log: args.log,
        latency_field: args.latency_field,
        webhook: args.webhook.config(),
        oauth: args.oauth.config(),
    })
    .await?;
    for (account, refresh_token) in &args.oauth.oauth_grant {
        crm.oauth_grant(account, refresh_token);
    }
    println!("mock CRM listening on {}", crm.addr());
    println!("  hubspot:    {}", crm.hubspot_url());
    println!("  salesforce: {}", crm.salesforce_url());
    println!("  state:      {}/_admin/state", crm.base_url());
    println!("  webhooks:   {}/_admin/webhooks", crm.base_url());
    if args.oauth.oauth_client_id.is_some() {
        println!("  oauth:      {}/_admin/oauth", crm.base_url());
    }

    tokio::signal::ctrl_c().await?;
    crm.shutdown().await
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;

    #[test]
    fn the_flags_are_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn oauth_is_on_with_a_client_id() {
        let args = Args::try_parse_from(["mock-crm"]).unwrap();
        assert_eq!(args.oauth.config(), None);

        let args = Args::try_parse_from([
            "mock-crm",
            "--oauth-client-id",
            "id",
            "--oauth-client-secret",
            "s",
            "--oauth-rotate-refresh-tokens",
            "--oauth-grant",
            "acme=rt-acme",
        ])
        .unwrap();
        let expected = OAuthConfig {
            rotate_refresh_tokens: true,
            ..OAuthConfig::new("id", "s", OAuthConfig::DEFAULT_ACCESS_TTL)
        };
        assert_eq!(args.oauth.config(), Some(expected));
        assert_eq!(args.oauth.oauth_grant, [("acme".into(), "rt-acme".into())]);

        for bad in [
            &["--oauth-client-id", "id"][..],
            &["--oauth-grant", "acme=rt"],
            &[
                "--oauth-client-id",
                "id",
                "--oauth-client-secret",
                "s",
                "--oauth-grant",
                "acme",
            ],
        ] {
            let argv = std::iter::once("mock-crm").chain(bad.iter().copied());
            assert!(Args::try_parse_from(argv).is_err(), "{bad:?}");
        }
    }
}
