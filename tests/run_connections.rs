//! Production connections: NATS with a user and password, a token, an NKey
//! and mutual TLS; Redis over TLS (`rediss://`); a Redis key prefix. Each
//! test runs `syncflow run` against a server that accepts only the
//! configured credentials and checks that a record goes through (and, for
//! NATS, that the credential never shows in the log).

mod common;

use std::time::Duration;

use async_nats::jetstream;
use syncflow_mock_crm::MockCrmConfig;
use syncflow_testkit::{Certs, NatsServer, RedisServer, free_port};

use common::contacts;
use common::harness::{Harness, Syncflow};

const NATS_LINE: &str = r#"nats:  { url: "${NATS_URL:-nats://127.0.0.1:4222}" }"#;

/// Runs syncflow against `nats` (connected to by `client`) with the
/// `nats:` line of syncflow.yaml replaced by `yaml`, and checks that one
/// record reaches the CRM; returns syncflow's log.
async fn one_record_through(
    nats: &NatsServer,
    client: async_nats::Client,
    yaml: &str,
    env: &[(&str, String)],
) -> String {
    let h = Harness::start(MockCrmConfig::default()).await;
    h.remove_pipeline("contacts-to-salesforce");
    h.edit("syncflow.yaml", NATS_LINE, yaml);
    let js = jetstream::new(client);
    js.get_or_create_stream(jetstream::stream::Config {
        name: "CDC".into(),
        subjects: vec!["cdc.>".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let payload = contacts::created(1).payload();
    js.publish("cdc.contacts.1", payload.into())
        .await
        .unwrap()
        .await
        .unwrap();
    let mut env = env.to_vec();
    env.push(("NATS_URL", nats.url()));
    let mut syncflow = Syncflow::spawn_with_env(&h, h.dir.path(), "10s", &env);
    h.wait_crm(
        "a create",
        Duration::from_secs(20),
        |s| s.hubspot.counters.creates > 0,
        || syncflow.log(),
    )
    .await;
    assert!(syncflow.sigterm().success(), "{}", syncflow.log());
    syncflow.log()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_with_a_user_and_password() {
    let nats = NatsServer::start_with(["--user", "syncflow", "--pass", "s3cret-pass"]).unwrap();
    let client =
        async_nats::ConnectOptions::with_user_and_password("syncflow".into(), "s3cret-pass".into())
            .connect(nats.url())
            .await
            .unwrap();
    let yaml = r#"nats:  { url: "${NATS_URL}", user: syncflow, password: "${NATS_PASSWORD}" }"#;
    let log = one_record_through(
        &nats,
        client,
        yaml,
        &[("NATS_PASSWORD", "s3cret-pass".into())],
    )
    .await;
    assert!(!log.contains("s3cret-pass"), "the password is in the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_with_a_token() {
    let nats = NatsServer::start_with(["--auth", "t0ken-value"]).unwrap();
    let client = async_nats::ConnectOptions::with_token("t0ken-value".into())
        .connect(nats.url())
        .await
        .unwrap();
    let yaml = r#"nats:  { url: "${NATS_URL}", token: "${NATS_TOKEN}" }"#;
    let log =
        one_record_through(&nats, client, yaml, &[("NATS_TOKEN", "t0ken-value".into())]).await;
    assert!(!log.contains("t0ken-value"), "the token is in the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_with_an_nkey() {
    let user = nkeys::KeyPair::new_user();
    let files = tempfile::tempdir().unwrap();
    let conf = files.path().join("nats.conf");
    std::fs::write(
        &conf,
        format!(
            "authorization {{ users = [ {{ nkey: \"{}\" }} ] }}\n",
            user.public_key()
        ),
    )
    .unwrap();
    let seed = user.seed().unwrap();
    let seed_file = files.path().join("user.nk");
    std::fs::write(&seed_file, &seed).unwrap();
    let nats =
        NatsServer::start_with([std::ffi::OsString::from("-c"), conf.into_os_string()]).unwrap();
    let client = async_nats::ConnectOptions::with_nkey(seed)
        .connect(nats.url())
        .await
        .unwrap();
    let yaml = format!(
        r#"nats:  {{ url: "${{NATS_URL}}", nkey_seed_file: "{}" }}"#,
        seed_file.display()
    );
    one_record_through(&nats, client, &yaml, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_with_mutual_tls() {
    let files = tempfile::tempdir().unwrap();
    let certs = Certs::write(files.path()).unwrap();
    let arg = |p: &std::path::Path| p.as_os_str().to_owned();
    let nats = NatsServer::start_with([
        "--tls".into(),
        "--tlsverify".into(),
        "--tlscert".into(),
        arg(&certs.server_cert),
        "--tlskey".into(),
        arg(&certs.server_key),
        "--tlscacert".into(),
        arg(&certs.ca),
    ])
    .unwrap();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = async_nats::ConnectOptions::new()
        .require_tls(true)
        .add_root_certificates(certs.ca.clone())
        .add_client_certificate(certs.client_cert.clone(), certs.client_key.clone())
        .connect(nats.url())
        .await
        .unwrap();
    let yaml = format!(
        r#"nats:  {{ url: "${{NATS_URL}}", tls: {{ ca: "{}", cert: "{}", key: "{}" }} }}"#,
        certs.ca.display(),
        certs.client_cert.display(),
        certs.client_key.display()
    );
    one_record_through(&nats, client, &yaml, &[]).await;
}

/// Redis over TLS: the shared limit works through `rediss://` with the
/// configured CA (the limiter stays shared, and calls Redis).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_over_tls() {
    let files = tempfile::tempdir().unwrap();
    let certs = Certs::write(files.path()).unwrap();
    let tls_port = free_port().unwrap();
    let path = |p: &std::path::Path| p.display().to_string();
    let _redis = RedisServer::start_with([
        "--tls-port".to_string(),
        tls_port.to_string(),
        "--tls-cert-file".into(),
        path(&certs.server_cert),
        "--tls-key-file".into(),
        path(&certs.server_key),
        "--tls-ca-cert-file".into(),
        path(&certs.ca),
        "--tls-auth-clients".into(),
        "no".into(),
    ])
    .unwrap();
    let h = Harness::start(MockCrmConfig::default()).await;
    h.remove_pipeline("contacts-to-salesforce");
    h.edit(
        "syncflow.yaml",
        r#"redis: { url: "${REDIS_URL:-redis://127.0.0.1:6379}" }"#,
        &format!(
            r#"redis: {{ url: "rediss://127.0.0.1:{tls_port}", tls: {{ ca: "{}" }} }}"#,
            certs.ca.display()
        ),
    );
    contacts::publish_all(&h, &(1..=20).map(contacts::created).collect::<Vec<_>>()).await;
    let mut syncflow = h.spawn();
    syncflow.wait_ready(Duration::from_secs(20)).await;
    h.wait_settled(Duration::from_secs(30)).await;
    let metrics = syncflow.metrics().await;
    assert!(syncflow.sigterm().success(), "{}", syncflow.log());
    assert_eq!(h.crm.snapshot().hubspot.counters.creates, 20);
    assert_eq!(
        common::metrics::value(&metrics, r#"syncflow_limiter_local{provider="hubspot"}"#),
        Some(0.0),
        "{}",
        syncflow.log()
    );
    let calls = common::metrics::sum(&metrics, "syncflow_limiter_redis_calls_total", &[]);
    assert!(calls > 0.0);
}
