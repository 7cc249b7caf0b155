//! Polling, for providers without webhooks: a "changed since" request per
//! object, repeated every `every`.
//!
//! - **The cursor** (the last modification time and id stored) lives in the
//!   JetStream key-value bucket `syncflow_cursors`, so a restart or another
//!   instance carries on where the last poll stopped.
//! - **Equal timestamps and late commits**: pages are keyset-paged on
//!   (modification time, id), so any number of records sharing one time are
//!   all read; and each cycle starts `lookback` before the cursor, so a
//!   record committed late with an older time is not skipped. What is read
//!   twice is stored once: each record version's `Nats-Msg-Id` is its id
//!   and modification time.
//! - **One poller per object** across instances: a lease in the bucket
//!   `syncflow_leases`, renewed every second and taken over by another
//!   instance once it has not been renewed for [`LEASE`].
//! - **Limits**: every request goes through the provider's API client, so
//!   it takes its cell from the provider's shared rate limit, with retries
//!   and the breaker.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::watch;

use super::envelope::{Envelope, EnvelopeMapping};
use super::store;
use crate::config::diagnostics::Diagnostics;
use crate::config::load::SourceFile;
use crate::config::model::PollConfig;
use crate::expr::ScriptEngine;
use crate::mapping::JsonPath;
use crate::path;
use crate::sink::http::ProviderApi;

/// The buckets of cursors and leases.
pub const CURSORS: &str = "syncflow_cursors";
pub const LEASES: &str = "syncflow_leases";
/// A lease not renewed for this long may be taken over.
pub const LEASE: Duration = Duration::from_secs(5);
/// How often the holder renews its lease.
const RENEW_EVERY: Duration = Duration::from_secs(1);

/// One object's poll, compiled.
#[derive(Debug, Clone)]
pub struct Poll {
    pub provider: String,
    pub object: String,
    pub every: Duration,
    path: Vec<Part>,
    limit: u32,
    records: JsonPath,
    done: Option<JsonPath>,
    lookback: Duration,
    envelope: EnvelopeMapping,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Since,
    AfterId,
    Limit,
}

/// Where a poll stands: the last record stored, by (modification time, id).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    pub since: i64,
    pub after_id: String,
}

impl Poll {
    pub fn compile(
        provider: &str,
        object: &str,
        objects: &BTreeSet<String>,
        config: &PollConfig,
        file: &SourceFile,
        engine: &ScriptEngine,
        diags: &mut Diagnostics,
    ) -> Option<Poll> {
        let at = |field: &str| path!["inbound", "poll", object, field];
        let before = diags.len();
        if !objects.contains(object) {
            file.key_error(
                diags,
                &path!["inbound", "poll", object],
                format!(
                    "the provider has no object \"{object}\"{}",
                    crate::config::suggest::did_you_mean(
                        object,
                        objects.iter().map(String::as_str)
                    )
                ),
            );
        }
        file.check_duration(
            diags,
            &at("every"),
            config.every.0,
            Duration::from_millis(100),
            Duration::from_secs(3600),
        );
        file.check_duration(
            diags,
            &at("lookback"),
            config.lookback.0,
            Duration::ZERO,
            Duration::from_secs(3600),
        );
        file.check_range(diags, &at("limit"), config.limit, 1, 10_000);
        if !config.request.method.eq_ignore_ascii_case("GET") {
            file.error(
                diags,
                &path!["inbound", "poll", object, "request", "method"],
                "polls send GET requests",
            );
        }
        let template = parse(&config.request.path)
            .map_err(|e| {
                file.error(
                    diags,
                    &path!["inbound", "poll", object, "request", "path"],
                    e,
                )
            })
            .ok();
        let json_path = |field: &str, text: &str, diags: &mut Diagnostics| {
            JsonPath::compile(text)
                .map_err(|e| file.text_error(diags, &at(field), 1, e.col, e.message))
                .ok()
        };
        let records = json_path("records", &config.records, diags);
        let done = config
            .done
            .as_ref()
            .map(|text| json_path("done", text, diags));
        let envelope = EnvelopeMapping::compile(
            file,
            &at("event"),
            &config.event,
            &["record_id", "occurred_at"],
            engine,
            diags,
        );
        if diags.len() != before {
            return None;
        }
        Some(Poll {
            provider: provider.to_string(),
            object: object.to_string(),
            every: config.every.0,
            path: template?,
            limit: config.limit,
            records: records?,
            done: done.flatten(),
            lookback: config.lookback.0,
            envelope: envelope?,
        })
    }

    /// The request path for a page.
    fn path(&self, since: i64, after_id: &str) -> String {
        let mut out = String::new();
        for part in &self.path {
            match part {
                Part::Literal(s) => out.push_str(s),
                Part::Since => out.push_str(&since.to_string()),
                Part::Limit => out.push_str(&self.limit.to_string()),
                Part::AfterId => {
                    for b in after_id.bytes() {
                        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                            out.push(b as char);
                        } else {
                            out.push_str(&format!("%{b:02X}"));
                        }
                    }
                }
            }
        }
        out
    }

    /// A page's records as envelopes, and whether it was the last page.
    pub fn page(
        &self,
        body: &Value,
        engine: &ScriptEngine,
    ) -> Result<(Vec<Envelope>, bool), String> {
        let records = match self.records.get(body).map(|v| v.into_owned()) {
            Some(Value::Array(records)) => records,
            Some(_) => return Err(format!("{} is not an array", self.records.as_str())),
            None => Vec::new(),
        };
        let done = match &self.done {
            Some(path) => path.get(body).is_none_or(|v| v.as_bool() != Some(false)),
            None => records.len() < self.limit as usize,
        };
        let envelopes = records
            .iter()
            .map(|record| {
                let read = self.envelope.read(record, engine)?;
                Ok(Envelope {
                    provider: self.provider.clone(),
                    object: self.object.clone(),
                    event_id: format!(
                        "{}:{}:{}:{}",
                        self.provider, self.object, read.record_id, read.occurred_at
                    ),
                    record_id: read.record_id,
                    occurred_at: read.occurred_at,
                    change: read.change,
                    record: read.record.unwrap_or_else(|| record.clone()),
                    source: "poll".into(),
                    ours: read.ours,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok((envelopes, done))
    }
}

/// A path with `{since}`, `{after_id}` and `{limit}`.
fn parse(path: &str) -> Result<Vec<Part>, String> {
    use crate::config::placeholders::{Piece, split};
    if !path.starts_with('/') {
        return Err(format!("path \"{path}\" must start with \"/\""));
    }
    let placeholders = [
        ("since", Part::Since),
        ("after_id", Part::AfterId),
        ("limit", Part::Limit),
    ];
    let parts: Vec<Part> = split("path", path, &placeholders)?
        .into_iter()
        .map(|piece| match piece {
            Piece::Literal(s) => Part::Literal(s),
            Piece::Placeholder(p) => p,
        })
        .collect();
    if !parts.contains(&Part::Since) {
        return Err(format!("path \"{path}\" needs {{since}}: the cursor"));
    }
    Ok(parts)
}

/// Runs one object's poll on this instance whenever it holds the lease.
pub struct Poller {
    pub poll: Arc<Poll>,
    pub api: Arc<ProviderApi>,
    pub js: jetstream::Context,
    pub cursors: kv::Store,
    pub leases: kv::Store,
    pub engine: ScriptEngine,
    /// This instance, in leases.
    pub holder: String,
}

impl Poller {
    fn key(&self) -> String {
        format!("{}.{}", self.poll.provider, self.poll.object)
    }

    /// Holds the lease (taking it if free or expired); false when another
    /// instance holds it.
    async fn hold(&self) -> Result<bool, String> {
        crate::kv::hold_lease(&self.leases, &self.key(), &self.holder, LEASE, None)
            .await
            .map(|held| held.is_some())
    }

    async fn release(&self) {
        crate::kv::release_lease(&self.leases, &self.key(), &self.holder).await;
    }

    async fn cursor(&self) -> Result<Cursor, String> {
        match self
            .cursors
            .get(self.key())
            .await
            .map_err(|e| e.to_string())?
        {
            Some(value) => serde_json::from_slice(&value).map_err(|e| e.to_string()),
            None => Ok(Cursor::default()),
        }
    }

    /// Polls until `stop`: every `every` while this instance holds the
    /// lease, renewing it every second meanwhile.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let (provider, object) = (self.poll.provider.clone(), self.poll.object.clone());
        let held = metrics::gauge!("syncflow_poll_lease", "provider" => provider.clone(), "object" => object.clone());
        let mut holding = false;
        let mut next_poll = tokio::time::Instant::now();
        loop {
            let now_holding = match self.hold().await {
                Ok(h) => h,
                Err(e) => {
                    tracing::warn!(provider = %provider, object = %object, error = %e, "cannot read the poll lease");
                    false
                }
            };
            if now_holding != holding {
                holding = now_holding;
                held.set(if holding { 1.0 } else { 0.0 });
                tracing::info!(provider = %provider, object = %object, holding, "poll lease");
            }
            if holding && tokio::time::Instant::now() >= next_poll {
                if let Err(e) = self.cycle(&mut stop).await {
                    tracing::warn!(provider = %provider, object = %object, error = %e, "poll failed; trying again at the next interval");
                }
                next_poll = tokio::time::Instant::now() + self.poll.every;
            }
            let renew = tokio::time::Instant::now() + RENEW_EVERY;
            let wake = if holding { next_poll.min(renew) } else { renew };
            tokio::select! {
                _ = tokio::time::sleep_until(wake) => {}
                _ = stop.wait_for(|s| *s) => break,
            }
        }
        if holding {
            self.release().await;
        }
        held.set(0.0);
    }

    /// One poll: pages from the cursor less the lookback until the last;
    /// each page stored, then the cursor moved past it.
    async fn cycle(&self, stop: &mut watch::Receiver<bool>) -> Result<(), String> {
        let mut cursor = self.cursor().await?;
        let lookback = self.poll.lookback.as_millis() as i64;
        let (mut since, mut after_id) =
            (cursor.since.saturating_sub(lookback).max(0), String::new());
        if lookback == 0 {
            after_id = cursor.after_id.clone();
        }
        let (requests, stored) = (
            metrics::counter!("syncflow_poll_requests_total", "provider" => self.poll.provider.clone(), "object" => self.poll.object.clone()),
            metrics::counter!("syncflow_poll_records_total", "provider" => self.poll.provider.clone(), "object" => self.poll.object.clone()),
        );
        loop {
            if *stop.borrow() {
                return Ok(());
            }
            requests.increment(1);
            let response = self
                .api
                .get(&self.poll.path(since, &after_id))
                .await
                .map_err(|e| e.message)?;
            let body: Value = serde_json::from_slice(&response.body)
                .map_err(|e| format!("the answer is not JSON: {e}"))?;
            let (envelopes, done) = self.poll.page(&body, &self.engine)?;
            store(&self.js, &envelopes)
                .await
                .map_err(|e| e.to_string())?;
            stored.increment(envelopes.len() as u64);
            let Some(last) = envelopes.last() else {
                return Ok(());
            };
            (since, after_id) = (last.occurred_at, last.record_id.clone());
            let past = (last.occurred_at, last.record_id.as_str())
                > (cursor.since, cursor.after_id.as_str());
            if past {
                cursor = Cursor {
                    since: last.occurred_at,
                    after_id: last.record_id.clone(),
                };
                let value = serde_json::to_vec(&cursor).expect("a cursor serializes");
                self.cursors
                    .put(self.key(), value.into())
                    .await
                    .map_err(|e| e.to_string())?;
            }
            if done {
                return Ok(());
            }
            // A long poll keeps its lease.
            if !self.hold().await? {
                return Err("lost the lease during a poll".into());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_take_the_cursor_encoded() {
        let parts = parse("/changes?since={since}&after_id={after_id}&limit={limit}").unwrap();
        let poll = |parts| Poll {
            provider: "p".into(),
            object: "o".into(),
            every: Duration::from_secs(1),
            path: parts,
            limit: 200,
            records: JsonPath::compile("$.records").unwrap(),
            done: None,
            lookback: Duration::ZERO,
            envelope: test_envelope(),
        };
        let p = poll(parts);
        assert_eq!(
            p.path(42, "a b/c"),
            "/changes?since=42&after_id=a%20b%2Fc&limit=200"
        );
        assert!(parse("/changes").unwrap_err().contains("needs {since}"));
        assert!(
            parse("/c?s={sinc}")
                .unwrap_err()
                .contains("did you mean \"since\"")
        );
    }

    fn test_envelope() -> EnvelopeMapping {
        let dir = tempfile::tempdir().unwrap();
        let text = "record_id: $.Id\noccurred_at: $.LastModifiedDate\n";
        std::fs::write(dir.path().join("x.yaml"), text).unwrap();
        let yaml: serde_yaml::Mapping = serde_yaml::from_str(text).unwrap();
        let file = SourceFile::new(
            "x.yaml".into(),
            text.into(),
            crate::config::yaml::parse(text).unwrap(),
        );
        let mut diags = Diagnostics::default();
        EnvelopeMapping::compile(&file, &[], &yaml, &[], &ScriptEngine::new(), &mut diags).unwrap()
    }
}
