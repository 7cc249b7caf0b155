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
        // Direct gets are answered by any replica, and a follower may not
        // have the latest write yet: an update reading the id map there
        // would not find the id its create just stored, and a lease's
        // compare-and-set would fail on a stale revision. With one replica
        // there is nothing to lag behind.
        allow_direct: replicas <= 1,
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
/// it is free or expired. Returns the entry's revision while held, `None`
/// when another holder has it, an error when the bucket could not say.
///
/// `held` is the revision this holder last wrote: a renewal then is one
/// compare-and-set, decided by the stream's leader, with no read that a
/// lagging replica could answer; it reads only when that fails.
pub async fn hold_lease(
    store: &kv::Store,
    key: &str,
    holder: &str,
    ttl: std::time::Duration,
    held: Option<u64>,
) -> Result<Option<u64>, String> {
    let lease: bytes::Bytes = serde_json::to_vec(&Lease {
        holder: holder.to_string(),
        until: crate::clock::now_ms() + ttl.as_millis() as i64,
    })
    .expect("a lease serializes")
    .into();
    if let Some(revision) = held {
        match store.update(key, lease.clone(), revision).await {
            Ok(revision) => return Ok(Some(revision)),
            // Written since: by another holder, or by this one in an
            // update whose answer was lost. The entry tells.
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    match store.entry(key).await.map_err(|e| e.to_string())? {
        None => match store.create(key, lease).await {
            Ok(revision) => Ok(Some(revision)),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(None),
            Err(e) => Err(e.to_string()),
        },
        Some(entry) => {
            let current: Option<Lease> = serde_json::from_slice(&entry.value).ok();
            let mine = current.as_ref().is_some_and(|l| l.holder == holder);
            let free = current
                .as_ref()
                .is_none_or(|l| l.until < crate::clock::now_ms())
                || !matches!(entry.operation, kv::Operation::Put);
            if !(mine || free) {
                return Ok(None);
            }
            // Compare-and-set: of two instances taking a free lease, one wins.
            match store.update(key, lease, entry.revision).await {
                Ok(revision) => Ok(Some(revision)),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(None),
                Err(e) => Err(e.to_string()),
            }
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

/// A nats-server's version as its INFO gives it (`2.12.8`, `2.11.0-beta`):
/// major and minor, 0 where unreadable. What a server can do for the
/// buckets (batch direct gets from 2.11) is decided on these.
pub fn server_version(version: &str) -> (u32, u32) {
    let mut parts = version
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_versions_read_major_and_minor() {
        assert_eq!(server_version("2.9.10"), (2, 9));
        assert_eq!(server_version("2.12.8"), (2, 12));
        assert_eq!(server_version("3.0.0-beta"), (3, 0));
        assert_eq!(server_version(""), (0, 0));
    }
}
