//! JetStream key-value buckets syncflow keeps its state in (the id map,
//! link states, poll cursors and leases).

use async_nats::jetstream::{self, kv};

/// Opens the bucket `name`, creating it when missing with `replicas`.
/// The backing stream is made by hand, as nats-server 2.9 needs: one value
/// per key, file storage, direct gets.
pub async fn open_bucket(
    js: &jetstream::Context,
    name: &str,
    description: &str,
    replicas: usize,
) -> Result<kv::Store, String> {
    if let Ok(store) = js.get_key_value(name).await {
        return Ok(store);
    }
    js.get_or_create_stream(jetstream::stream::Config {
        name: format!("KV_{name}"),
        description: Some(description.to_string()),
        subjects: vec![format!("$KV.{name}.>")],
        max_messages_per_subject: 1,
        storage: jetstream::stream::StorageType::File,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: jetstream::stream::DiscardPolicy::New,
        num_replicas: replicas,
        ..Default::default()
    })
    .await
    .map_err(|e| e.to_string())?;
    js.get_key_value(name).await.map_err(|e| e.to_string())
}

/// This process, as it names itself in leases: its pid and start time.
pub fn holder_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{}-{nanos:x}", std::process::id())
}
