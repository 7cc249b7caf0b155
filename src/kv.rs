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

/// A lease in a bucket: who holds it, until when (ms since the epoch, the
/// holder's clock). Taken and renewed by compare-and-set on the entry's
/// revision, so of two instances taking a free or expired lease one wins.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Lease {
    holder: String,
    until: i64,
}

/// Holds the lease `key` for `holder` until `ttl` from now, taking it if
/// it is free or expired; false when another holder has it.
pub async fn hold_lease(
    store: &kv::Store,
    key: &str,
    holder: &str,
    ttl: std::time::Duration,
) -> Result<bool, String> {
    let lease = serde_json::to_vec(&Lease {
        holder: holder.to_string(),
        until: crate::clock::now_ms() + ttl.as_millis() as i64,
    })
    .expect("a lease serializes");
    match store.entry(key).await.map_err(|e| e.to_string())? {
        None => Ok(store.create(key, lease.into()).await.is_ok()),
        Some(entry) => {
            let current: Option<Lease> = serde_json::from_slice(&entry.value).ok();
            let mine = current.as_ref().is_some_and(|l| l.holder == holder);
            let free = current
                .as_ref()
                .is_none_or(|l| l.until < crate::clock::now_ms())
                || !matches!(entry.operation, kv::Operation::Put);
            if !(mine || free) {
                return Ok(false);
            }
            Ok(store
                .update(key, lease.into(), entry.revision)
                .await
                .is_ok())
        }
    }
}

/// Gives the lease `key` back if `holder` has it, so another may take it
/// at once rather than when it expires.
pub async fn release_lease(store: &kv::Store, key: &str, holder: &str) {
    if let Ok(Some(entry)) = store.entry(key).await
        && serde_json::from_slice::<Lease>(&entry.value).is_ok_and(|l| l.holder == holder)
    {
        let free = serde_json::to_vec(&Lease {
            holder: String::new(),
            until: 0,
        })
        .expect("a lease serializes");
        let _ = store.update(key, free.into(), entry.revision).await;
    }
}
