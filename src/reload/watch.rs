//! Tells when the config directory's content changed.
//!
//! File events (inotify through `notify`) only say *that something may have
//! changed*; what decides is a hash of the content of the config files
//! (`syncflow.yaml`, `pipelines/`, `providers/`, `schemas/`). That makes the
//! watcher indifferent to how editors save (in place, by rename, by replacing
//! the directory), to events on other files (logs beside the config) and to
//! bursts: a burst is debounced, then compared once. A slow poll of the same
//! hash backs the events up, so a change that no event reported (a watch lost
//! with a replaced directory) is still picked up within [`POLL_EVERY`]; the
//! watch itself is re-created when the directory's inode changes.
//!
//! A config may also be made of files elsewhere (a provider's TLS
//! certificates, which may live outside the config's folders): those are
//! compared with the content the running config was compiled from, on
//! every event and poll, so a certificate rotated in place is a change.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::sink::http::tls::ReadFile;

/// Quiet time that ends a burst of events.
const SETTLE: Duration = Duration::from_millis(200);
/// A burst that never settles is compared after this long anyway.
const SETTLE_MAX: Duration = Duration::from_secs(2);
/// The content is compared at least this often, events or not.
pub const POLL_EVERY: Duration = Duration::from_secs(2);

/// The entries of the config directory that make up the config.
const CONFIG_ENTRIES: [&str; 5] = [
    "syncflow.yaml",
    "pipelines",
    "providers",
    "links",
    "schemas",
];

pub struct ConfigWatcher {
    dir: PathBuf,
    events_tx: mpsc::UnboundedSender<()>,
    events: mpsc::UnboundedReceiver<()>,
    watcher: Option<RecommendedWatcher>,
    /// The inode the watch was set on.
    watched_inode: Option<u64>,
    /// The content hash last reported (or seen at the start).
    last: u64,
    /// Files outside the config's folders, with the content last seen.
    also: Vec<ReadFile>,
}

impl ConfigWatcher {
    /// Starts watching `dir`; its content now is the baseline. Without file
    /// events (no inotify) the watcher still works, by polling.
    pub fn new(dir: &Path) -> Self {
        let (events_tx, events) = mpsc::unbounded_channel();
        let mut watcher = ConfigWatcher {
            dir: dir.to_path_buf(),
            events_tx,
            events,
            watcher: None,
            watched_inode: None,
            last: content_hash(dir),
            also: Vec::new(),
        };
        watcher.rewatch();
        watcher
    }

    /// Resolves when the config's content differs from the last time.
    pub async fn changed(&mut self) {
        let mut poll = tokio::time::interval(POLL_EVERY);
        poll.reset();
        loop {
            tokio::select! {
                Some(()) = self.events.recv() => self.settle().await,
                _ = poll.tick() => {
                    if inode(&self.dir) != self.watched_inode {
                        self.rewatch();
                    }
                }
            }
            let dir = self.dir.clone();
            let also = self.also.clone();
            let (now, also_now) = tokio::task::spawn_blocking(move || {
                (content_hash(&dir), also.iter().map(ReadFile::now).collect())
            })
            .await
            .unwrap_or_else(|_| (self.last, self.also.clone()));
            if now != self.last || also_now != self.also {
                self.last = now;
                self.also = also_now;
                return;
            }
        }
    }

    /// Also watch `files` (outside the config's folders, say), each changed
    /// once its content differs from what its fingerprint says was read.
    pub fn also_watch(&mut self, files: Vec<ReadFile>) {
        self.also = files;
    }

    /// Waits until events stop coming for [`SETTLE`] (at most [`SETTLE_MAX`]).
    async fn settle(&mut self) {
        let deadline = tokio::time::Instant::now() + SETTLE_MAX;
        loop {
            match tokio::time::timeout_at(
                deadline.min(tokio::time::Instant::now() + SETTLE),
                self.events.recv(),
            )
            .await
            {
                Ok(Some(())) => continue,
                Ok(None) | Err(_) => return,
            }
        }
    }

    fn rewatch(&mut self) {
        self.watcher = None;
        self.watched_inode = inode(&self.dir);
        let tx = self.events_tx.clone();
        let created = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            if event.is_ok_and(|e| !e.kind.is_access()) {
                let _ = tx.send(());
            }
        })
        .and_then(|mut w| w.watch(&self.dir, RecursiveMode::Recursive).map(|()| w));
        match created {
            Ok(w) => self.watcher = Some(w),
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, poll_every_s = POLL_EVERY.as_secs(), "cannot watch the config directory; polling it instead")
            }
        }
    }
}

fn inode(dir: &Path) -> Option<u64> {
    std::fs::metadata(dir).ok().map(|m| m.ino())
}

/// A hash of the names and contents of every config file under `dir`.
pub fn content_hash(dir: &Path) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut files = Vec::new();
    for entry in CONFIG_ENTRIES {
        collect_files(&dir.join(entry), &mut files);
    }
    files.sort();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for path in files {
        path.hash(&mut h);
        // An unreadable file hashes as empty: it changes again once readable.
        std::fs::read(&path).unwrap_or_default().hash(&mut h);
    }
    h.finish()
}

fn collect_files(path: &Path, out: &mut Vec<PathBuf>) {
    match std::fs::read_dir(path) {
        Ok(entries) => {
            for entry in entries.flatten() {
                collect_files(&entry.path(), out);
            }
        }
        Err(_) if path.is_file() => out.push(path.to_path_buf()),
        Err(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, file: &str, text: &str) {
        let path = dir.join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn the_hash_covers_config_files_only() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "pipelines/a.yaml", "name: a");
        let before = content_hash(dir.path());
        write(dir.path(), "syncflow.log", "a log line");
        assert_eq!(content_hash(dir.path()), before);
        write(dir.path(), "schemas/x/y.json", "{}");
        assert_ne!(content_hash(dir.path()), before);
    }

    /// Waits for `changed` at most a few seconds.
    async fn changed_within(w: &mut ConfigWatcher, limit: Duration) -> bool {
        tokio::time::timeout(limit, w.changed()).await.is_ok()
    }

    #[tokio::test]
    async fn an_edit_in_place_is_reported_once() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "pipelines/a.yaml", "name: a");
        let mut w = ConfigWatcher::new(dir.path());
        write(dir.path(), "pipelines/a.yaml", "name: b");
        assert!(changed_within(&mut w, Duration::from_secs(5)).await);
        assert!(!changed_within(&mut w, Duration::from_millis(500)).await);
    }

    #[tokio::test]
    async fn a_save_by_rename_and_a_replaced_directory_are_picked_up() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "providers/p.yaml", "name: p");
        let mut w = ConfigWatcher::new(dir.path());
        // An editor's save: write a temporary file, rename it over the old.
        write(dir.path(), "providers/.p.yaml.swp", "name: q");
        std::fs::rename(
            dir.path().join("providers/.p.yaml.swp"),
            dir.path().join("providers/p.yaml"),
        )
        .unwrap();
        assert!(changed_within(&mut w, Duration::from_secs(5)).await);
        // A whole directory swapped for a new one.
        write(dir.path(), "providers.new/p.yaml", "name: r");
        std::fs::remove_dir_all(dir.path().join("providers")).unwrap();
        std::fs::rename(
            dir.path().join("providers.new"),
            dir.path().join("providers"),
        )
        .unwrap();
        assert!(changed_within(&mut w, Duration::from_secs(5)).await);
    }

    #[tokio::test]
    async fn a_file_outside_the_config_is_watched_for_what_was_read() {
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        write(dir.path(), "syncflow.yaml", "a: 1");
        let cert = elsewhere.path().join("ca.pem");
        std::fs::write(&cert, "first").unwrap();
        let mut w = ConfigWatcher::new(dir.path());
        // Rotated after it was read, before the watch was told of it: a
        // change all the same.
        let read = ReadFile::of(cert.clone(), b"first");
        std::fs::write(&cert, "second").unwrap();
        w.also_watch(vec![read]);
        // Outside the watched folder: found by the poll.
        assert!(changed_within(&mut w, POLL_EVERY * 3).await);
        assert!(!changed_within(&mut w, POLL_EVERY + Duration::from_millis(500)).await);
        std::fs::write(&cert, "third").unwrap();
        assert!(changed_within(&mut w, POLL_EVERY * 3).await);
        // Without a watch on it, its edits are nobody's business.
        w.also_watch(Vec::new());
        std::fs::write(&cert, "fourth").unwrap();
        assert!(!changed_within(&mut w, POLL_EVERY + Duration::from_millis(500)).await);
    }

    #[tokio::test]
    async fn a_file_that_is_changed_back_is_no_change() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "syncflow.yaml", "a: 1");
        let mut w = ConfigWatcher::new(dir.path());
        write(dir.path(), "syncflow.yaml", "a: 2");
        write(dir.path(), "syncflow.yaml", "a: 1");
        assert!(!changed_within(&mut w, Duration::from_millis(800)).await);
    }
}
