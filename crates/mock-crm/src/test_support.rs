//! A mock CRM on a free port and a client that talks to it.

use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde_json::Value;

use super::{MockCrm, MockCrmConfig};

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

impl Harness {
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
