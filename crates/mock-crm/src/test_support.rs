//! A mock CRM on a free port and a client that talks to it.

use reqwest::{Method, RequestBuilder, Response, StatusCode};
use std::time::Duration;

use serde_json::Value;

use super::{MockCrm, MockCrmConfig, OAuthConfig};

pub(super) const TOKEN: &str = "test-token";

pub(super) struct Harness {
    pub(super) crm: MockCrm,
    client: reqwest::Client,
}

impl Harness {
    pub(super) async fn start(config: MockCrmConfig) -> Harness {
        let crm = MockCrm::start(config).await.expect("start the mock CRM");
        Harness {
            crm,
            client: reqwest::Client::new(),
        }
    }

    /// A request to `path` under `/hubspot`, with a bearer token.
    pub(super) fn hubspot(&self, method: Method, path: &str) -> RequestBuilder {
        self.hubspot_anonymous(method, path).bearer_auth(TOKEN)
    }

    /// A request to `path` under `/hubspot`, without credentials.
    pub(super) fn hubspot_anonymous(&self, method: Method, path: &str) -> RequestBuilder {
        self.root(method, &format!("/hubspot{path}"))
    }

    /// A request to `path` under `/salesforce`, with a bearer token.
    pub(super) fn salesforce(&self, method: Method, path: &str) -> RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.crm.salesforce_url()))
            .bearer_auth(TOKEN)
    }

    /// A request to `path` under the server root, without credentials.
    pub(super) fn root(&self, method: Method, path: &str) -> RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.crm.base_url()))
    }
}

/// OAuth on (`CLIENT_ID`, `CLIENT_SECRET`, access tokens living
/// `access_ttl`), a request log, no fixed token.
pub(super) fn oauth_config(access_ttl: Duration, rotate: bool) -> MockCrmConfig {
    MockCrmConfig {
        record_log: true,
        oauth: Some(OAuthConfig {
            rotate_refresh_tokens: rotate,
            ..OAuthConfig::new(CLIENT_ID, CLIENT_SECRET, access_ttl)
        }),
        ..MockCrmConfig::default()
    }
}

/// Sends `request` and returns the status and the body as JSON (null when empty).
pub(super) async fn send(request: RequestBuilder) -> (StatusCode, Value) {
    let response = request.send().await.expect("send the request");
    let status = response.status();
    (status, body(response).await)
}

pub(super) async fn body(response: Response) -> Value {
    let bytes = response.bytes().await.expect("read the body");
    if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).expect("a JSON body")
    }
}

/// The OAuth client of [`Harness::start_oauth`].
pub(super) const CLIENT_ID: &str = "client-id";
pub(super) const CLIENT_SECRET: &str = "client-secret";

impl Harness {
    /// A mock with [`oauth_config`].
    pub(super) async fn start_oauth(access_ttl: Duration, rotate: bool) -> Harness {
        Harness::start(oauth_config(access_ttl, rotate)).await
    }

    /// A token request to `path` (under the server root) with the
    /// harness's client and `refresh_token`.
    pub(super) fn refresh(&self, path: &str, refresh_token: &str) -> RequestBuilder {
        let form = [
            ("grant_type", "refresh_token"),
            ("client_id", CLIENT_ID),
            ("client_secret", CLIENT_SECRET),
            ("refresh_token", refresh_token),
        ];
        let body = serde_urlencoded::to_string(form).expect("a form");
        self.root(Method::POST, path)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
    }

    /// Creates a HubSpot contact with `properties` and returns its id.
    pub(super) async fn create_hubspot_contact(&self, properties: Value) -> String {
        let request = self
            .hubspot(Method::POST, "/crm/v3/objects/contacts")
            .json(&serde_json::json!({ "properties": properties }));
        let (status, created) = send(request).await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        created["id"].as_str().expect("an id").to_owned()
    }
}
