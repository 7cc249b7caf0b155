//! [`ProviderSink`]: records to one object of a provider's HTTP API, with
//! the CRM's ways: which endpoint an action means, which provider id a key
//! has, what a 404 on delete or a 409 on create means, and which changes
//! were applied already (the id map, idmap/).
//!
//! - A redelivered change no newer than the last one applied to its key
//!   (a lost ack, a redelivery after a newer change went through) is not
//!   sent again: it would set the record back.
//! - A create of a key the id map knows is an update of that record, or
//!   nothing when its body is the one last sent.
//! - A 409 on a create whose endpoint has `conflict_id_from` teaches the id
//!   map the existing record's id, and the record is sent as an update.

use std::sync::Arc;

use super::http::{ApiError, ApiErrorKind, ApiRequest, Batcher, EndpointKind, ProviderApi};
use super::{Delivery, Failure, FailureKind, Record, Sink, SkipReason};
use crate::action::Action;
use crate::idmap::{Entry, IdMap, body_hash, json_hash};
use crate::provider::Object;

/// A pipeline's provider object. The [`ProviderApi`] (limit, concurrency,
/// breaker) is the provider's, shared by every pipeline that targets it.
pub struct ProviderSink {
    api: Arc<ProviderApi>,
    idmap: IdMap,
    object: String,
    /// The object's batch endpoints, by kind: records of those kinds go in
    /// batches (sink/http/batcher.rs).
    batchers: Vec<Arc<Batcher>>,
}

impl ProviderSink {
    pub fn new(api: Arc<ProviderApi>, idmap: IdMap, object: &str) -> Self {
        let kinds = [
            EndpointKind::Create,
            EndpointKind::Update,
            EndpointKind::Upsert,
            EndpointKind::Delete,
        ];
        let batchers = kinds
            .into_iter()
            .filter_map(|kind| Batcher::new(api.clone(), object, kind))
            .collect();
        ProviderSink {
            api,
            idmap,
            object: object.to_string(),
            batchers,
        }
    }

    /// The most records one request carries: what a pipeline needs in
    /// flight to fill its batches.
    pub fn max_batch_records(&self) -> usize {
        self.batchers.first().map_or(1, |b| b.max_records())
    }

    /// The batcher a record sent to `endpoint` goes through, if any. A
    /// conditional write (two-way's `unmodified_since`) goes alone: a batch
    /// has no per-record precondition.
    fn batcher(&self, record: &Record<'_>, endpoint: EndpointKind) -> Option<&Arc<Batcher>> {
        let conditional = record.unmodified_since.is_some()
            && self
                .object()
                .endpoint(endpoint)
                .is_some_and(|ep| ep.unmodified_since.is_some());
        match conditional {
            true => None,
            false => self.batchers.iter().find(|b| b.kind() == endpoint),
        }
    }

    fn provider(&self) -> &str {
        &self.api.provider().name
    }

    /// The provider's and the object's names.
    pub fn names(&self) -> (&str, &str) {
        (self.provider(), &self.object)
    }

    fn object(&self) -> &Object {
        &self.api.provider().objects[&self.object]
    }

    /// What the id map knows of the record's key; NATS trouble is waited out.
    async fn lookup(&self, record: &Record<'_>) -> Option<Entry> {
        record
            .trouble
            .retry_until_ok("id map read", || {
                self.idmap.lookup(self.provider(), &self.object, record.key)
            })
            .await
    }

    /// Records what was applied: the id, the change's position, the body
    /// (hashed from `sent`, the request's JSON, when the record went on its
    /// own); and the reverse entry of an id newly learned (`known`: the id
    /// before).
    ///
    /// The two writes go out together and both are stored before this
    /// returns (and the message is acked): the lane waits one JetStream
    /// round trip instead of two.
    /// A crash between them can leave the entry without its reverse; the
    /// redelivery that follows writes it ([`ProviderSink::stale`]).
    async fn applied(
        &self,
        record: &Record<'_>,
        id: Option<String>,
        deleted: bool,
        known: Option<&str>,
        sent: Option<&[u8]>,
    ) {
        let body = match (deleted, sent) {
            (true, _) => None,
            (false, Some(json)) if record.body.is_some() => Some(json_hash(json)),
            (false, _) => record.body.map(body_hash),
        };
        let entry = Entry {
            id,
            deleted,
            stream: Some(record.stream.to_string()),
            seq: record.seq,
            body,
        };
        let reverse = async {
            if let Some(new) = entry.id.as_deref().filter(|new| Some(*new) != known) {
                self.put_reverse(record, new).await;
            }
        };
        let forward = record.trouble.retry_until_ok("id map write", || {
            self.idmap
                .put(self.provider(), &self.object, record.key, &entry)
        });
        tokio::join!(reverse, forward);
    }

    async fn put_reverse(&self, record: &Record<'_>, id: &str) {
        record
            .trouble
            .retry_until_ok("id map write", || {
                self.idmap
                    .put_reverse(self.provider(), &self.object, record.key, id)
            })
            .await;
    }

    /// A redelivered change no newer than the last one applied is not sent
    /// again. Its reverse entry is written again: the first delivery may
    /// have stopped between the entry and its reverse ([`Self::applied`]).
    async fn stale(&self, record: &Record<'_>, known: &Entry) -> Delivery {
        tracing::info!(
            pipeline = record.pipeline,
            key = record.key,
            seq = record.seq,
            "redelivered change is not newer than the one applied; not sent again"
        );
        if let Some(id) = known.live_id() {
            self.put_reverse(record, id).await;
        }
        Delivery::Skipped {
            reason: SkipReason::Stale,
        }
    }

    /// Whether the id map keeps this object's records: it learns their
    /// ids, or needs them in a path. Only then is the last change applied
    /// to each key known (idmap/).
    pub fn tracked(&self) -> bool {
        let object = self.object();
        object.learns_ids()
            || [
                EndpointKind::Update,
                EndpointKind::Delete,
                EndpointKind::Read,
            ]
            .iter()
            .any(|&kind| object.endpoint(kind).is_some_and(|ep| ep.path.needs_id()))
    }

    /// The endpoint an action means, given what the id map knows; `None`
    /// when there is nothing to send.
    fn endpoint(
        &self,
        record: &Record<'_>,
        known: Option<&Entry>,
    ) -> Result<EndpointKind, Delivery> {
        let object = self.object();
        let live = known.and_then(Entry::live_id).is_some();
        Ok(match record.action {
            Action::Create if live => {
                let last = known.and_then(|e| e.body.as_deref());
                if last.is_some() && last == record.body.map(body_hash).as_deref() {
                    return Err(Delivery::Skipped {
                        reason: SkipReason::Unchanged,
                    });
                }
                match object.update.is_some() {
                    true => EndpointKind::Update,
                    false => EndpointKind::Create,
                }
            }
            Action::Create => EndpointKind::Create,
            Action::Update => EndpointKind::Update,
            Action::Delete => EndpointKind::Delete,
            Action::Read => EndpointKind::Read,
            Action::Upsert if object.upsert.is_some() => EndpointKind::Upsert,
            Action::Upsert if live => EndpointKind::Update,
            Action::Upsert => EndpointKind::Create,
            Action::Skip => unreachable!("skipped records do not reach a sink"),
        })
    }

    async fn send(
        &self,
        record: &Record<'_>,
        endpoint: EndpointKind,
        id: Option<&str>,
    ) -> Result<super::http::ApiResponse, ApiError> {
        let request = ApiRequest {
            object: &self.object,
            endpoint,
            key: record.key,
            account: record.account,
            id,
            body: record.body,
            idempotency_key: record.idempotency_key,
            unmodified_since: record.unmodified_since,
        };
        match self.batcher(record, endpoint) {
            Some(batcher) => batcher.send(request).await,
            None => self.api.send(request).await,
        }
    }
}

impl ProviderSink {
    /// [`ProviderSink::send`], except that a failure of syncflow's own (a
    /// stopped rate limiter) is not the record's: it waits, with the
    /// pipeline marked not ready (transient.rs), and tries again.
    async fn send_waiting_out_internal(
        &self,
        record: &Record<'_>,
        endpoint: EndpointKind,
        id: Option<&str>,
    ) -> Result<super::http::ApiResponse, ApiError> {
        record
            .trouble
            .retry_until_ok("provider request", || async {
                match self.send(record, endpoint, id).await {
                    Err(e) if e.kind == ApiErrorKind::Internal => Err(e),
                    other => Ok(other),
                }
            })
            .await
    }
}

impl Sink for ProviderSink {
    async fn deliver(&self, record: &Record<'_>) -> Delivery {
        let tracked = self.tracked();
        let known = match tracked {
            true => self.lookup(record).await,
            false => None,
        };
        if record.redelivered
            && let Some(known) = known
                .as_ref()
                .filter(|e| e.supersedes(record.stream, record.seq))
        {
            return self.stale(record, known).await;
        }
        let mut endpoint = match self.endpoint(record, known.as_ref()) {
            Ok(endpoint) => endpoint,
            Err(skipped) => return skipped,
        };
        let needs_id = match self.batcher(record, endpoint) {
            Some(batcher) => batcher.needs_id(),
            None => self
                .object()
                .endpoint(endpoint)
                .is_some_and(|ep| ep.path.needs_id()),
        };
        let mut id = known.as_ref().and_then(Entry::live_id).map(str::to_string);
        let deleted = known.as_ref().is_some_and(|e| e.deleted);
        if needs_id && id.is_none() {
            // Deleting what syncflow already deleted is the outcome wanted,
            // like a 404 on delete: a redelivery after the delete went
            // through must not dead-letter.
            if deleted && endpoint == EndpointKind::Delete {
                tracing::info!(
                    pipeline = record.pipeline,
                    key = record.key,
                    seq = record.seq,
                    "record already deleted; nothing to send"
                );
                return Delivery::Skipped {
                    reason: SkipReason::AlreadyDeleted,
                };
            }
            return unknown_id(match deleted {
                true => format!(
                    "the {} record of key \"{}\" was deleted through syncflow",
                    self.provider(),
                    record.key
                ),
                false => format!(
                    "no {} id is known for key \"{}\": it was never created through syncflow, or its create failed",
                    self.provider(),
                    record.key
                ),
            });
        }

        let mut sent = self
            .send_waiting_out_internal(record, endpoint, id.as_deref())
            .await;
        let (mut attempts, mut conflict) = (0, false);
        if let Err(e) = &sent
            && endpoint == EndpointKind::Create
            && e.status == Some(409)
            && let Some(existing) = self.conflict_id(e)
        {
            // The record exists at the provider: learn its id, then send
            // the change as an update of it.
            tracing::info!(
                pipeline = record.pipeline,
                key = record.key,
                "create answered 409: the record exists, updating it"
            );
            attempts = e.attempts;
            (endpoint, id, conflict) = (EndpointKind::Update, Some(existing), true);
            // A request of its own: an API that honours the key would
            // answer the update with the create's 409.
            let follow_up = format!("{}:update", record.idempotency_key);
            let update = Record {
                idempotency_key: &follow_up,
                ..*record
            };
            sent = self
                .send_waiting_out_internal(&update, endpoint, id.as_deref())
                .await;
        }
        match sent {
            Ok(response) => {
                let learned = response.provider_id.or(id);
                let delete = endpoint == EndpointKind::Delete;
                if tracked {
                    let before = known.as_ref().and_then(|e| e.id.as_deref());
                    let sent = response.sent.as_deref();
                    self.applied(record, learned.clone(), delete, before, sent)
                        .await;
                }
                Delivery::Sent {
                    status: Some(response.status),
                    id: learned,
                    attempts: attempts + response.attempts,
                }
            }
            // Deleting what is already gone is the outcome wanted.
            Err(ApiError {
                kind: ApiErrorKind::NotFound,
                status,
                attempts: tries,
                ..
            }) if endpoint == EndpointKind::Delete => {
                if tracked {
                    let before = known.as_ref().and_then(|e| e.id.as_deref());
                    self.applied(record, id.clone(), true, before, None).await;
                }
                Delivery::Sent {
                    status: Some(status.unwrap_or(404)),
                    id,
                    attempts: attempts + tries,
                }
            }
            Err(e) => Delivery::Failed(Failure {
                kind: match e.kind {
                    ApiErrorKind::Rejected | ApiErrorKind::NotFound => {
                        FailureKind::ProviderRejected
                    }
                    ApiErrorKind::RetriesExhausted => FailureKind::RetriesExhausted,
                    ApiErrorKind::ResponseTooLarge => FailureKind::ResponseTooLarge,
                    ApiErrorKind::Internal => unreachable!("internal failures are waited out"),
                },
                message: match conflict {
                    true => format!("{} (after a 409 on create)", e.message),
                    false => e.message,
                },
                status: e.status,
                body: e.body,
                attempts: attempts + e.attempts,
            }),
        }
    }
}

impl ProviderSink {
    /// The existing record's id in a 409 answer to a create, if the create
    /// endpoint says where it is and the object can update.
    fn conflict_id(&self, error: &ApiError) -> Option<String> {
        let object = self.object();
        object.update.as_ref()?;
        let conflict = object.create.as_ref()?.conflict_id.as_ref()?;
        conflict
            .extract(error.body.as_deref()?)
            .filter(|id| super::http::valid_id(id))
    }
}

fn unknown_id(message: String) -> Delivery {
    Delivery::Failed(Failure {
        kind: FailureKind::UnknownId,
        message,
        status: None,
        body: None,
        attempts: 0,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::path::Path;

    use serde_json::{Value, json};
    use syncflow_mock_crm::{MockCrm, MockCrmConfig};
    use syncflow_testkit::NatsServer;

    use super::*;
    use crate::limiter::Limiter;

    /// The shipped HubSpot provider against the mock CRM, its id map in a
    /// real JetStream.
    async fn hubspot() -> (ProviderSink, MockCrm, NatsServer) {
        let nats = NatsServer::start().unwrap();
        let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
        let idmap = IdMap::open(&js, 1).await.unwrap();
        let crm = MockCrm::start(MockCrmConfig {
            record_log: true,
            ..MockCrmConfig::default()
        })
        .await
        .unwrap();
        let env = HashMap::from([("HUBSPOT_URL".to_string(), crm.hubspot_url())]);
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let config = crate::compile::compile_dir(root, &env, false).unwrap();
        let api = ProviderApi::new(config.providers["hubspot"].clone(), Limiter::Unlimited);
        let sink = ProviderSink::new(Arc::new(api.unwrap()), idmap, "contact");
        (sink, crm, nats)
    }

    fn record<'a>(action: Action, seq: u64, body: Option<&'a Value>, ikey: &'a str) -> Record<'a> {
        Record {
            pipeline: "test",
            key: "k1",
            account: None,
            action,
            body,
            idempotency_key: ikey,
            stream: "CDC",
            seq,
            redelivered: false,
            trouble: &TROUBLE,
            unmodified_since: None,
        }
    }

    static TROUBLE: std::sync::LazyLock<crate::transient::Trouble> =
        std::sync::LazyLock::new(|| {
            crate::transient::Trouble::new("test", crate::readiness::Readiness::default())
        });

    fn body(first: &str) -> Value {
        json!({"properties": {"email": "k1@example.com", "firstname": first}})
    }

    /// (method, path) of every request the mock CRM received.
    fn requests(crm: &MockCrm) -> Vec<(String, String)> {
        let log = crm.snapshot().hubspot.log;
        log.into_iter().map(|r| (r.method, r.path)).collect()
    }

    #[tokio::test]
    async fn a_redelivered_change_older_than_the_last_applied_is_not_sent() {
        let (sink, crm, _nats) = hubspot().await;
        let (v1, v2, v3) = (body("One"), body("Two"), body("Three"));
        let created = sink
            .deliver(&record(Action::Create, 1, Some(&v1), "i1"))
            .await;
        assert!(matches!(created, Delivery::Sent { .. }), "{created:?}");
        sink.deliver(&record(Action::Update, 3, Some(&v3), "i3"))
            .await;
        // Change 2's ack was lost, so it comes again after change 3 went through.
        let stale = Record {
            redelivered: true,
            ..record(Action::Update, 2, Some(&v2), "i2")
        };
        assert_eq!(
            sink.deliver(&stale).await,
            Delivery::Skipped {
                reason: SkipReason::Stale
            }
        );
        // A redelivery of the last change itself is not sent again either,
        // while a newer change is.
        let again = Record {
            redelivered: true,
            ..record(Action::Update, 3, Some(&v3), "i3")
        };
        assert!(matches!(
            sink.deliver(&again).await,
            Delivery::Skipped { .. }
        ));
        let newer = Record {
            redelivered: true,
            ..record(Action::Update, 4, Some(&v2), "i4")
        };
        assert!(matches!(sink.deliver(&newer).await, Delivery::Sent { .. }));
        assert_eq!(requests(&crm).len(), 3, "{:?}", requests(&crm));
        let snap = crm.snapshot().hubspot;
        let record = snap.records.values().next().unwrap();
        assert_eq!(record.fields["firstname"], "Two");
    }

    #[tokio::test]
    async fn a_create_of_a_known_key_is_an_update_or_nothing() {
        let (sink, crm, _nats) = hubspot().await;
        let (v1, v2) = (body("One"), body("Two"));
        let Delivery::Sent { id: Some(id), .. } = sink
            .deliver(&record(Action::Create, 1, Some(&v1), "i1"))
            .await
        else {
            panic!("created");
        };
        // The same body again: nothing to send.
        assert_eq!(
            sink.deliver(&record(Action::Create, 2, Some(&v1), "i2"))
                .await,
            Delivery::Skipped {
                reason: SkipReason::Unchanged
            }
        );
        // Another body: an update of the record there, not a second record.
        let updated = sink
            .deliver(&record(Action::Create, 3, Some(&v2), "i3"))
            .await;
        assert!(matches!(updated, Delivery::Sent { .. }), "{updated:?}");
        let path = format!("/crm/v3/objects/contacts/{id}");
        assert_eq!(
            requests(&crm),
            [
                ("POST".into(), "/crm/v3/objects/contacts".into()),
                ("PATCH".into(), path)
            ]
        );
        assert_eq!(crm.snapshot().hubspot.records.len(), 1);
    }

    #[tokio::test]
    async fn a_409_on_create_teaches_the_existing_id_and_updates_it() {
        let (sink, crm, _nats) = hubspot().await;
        // The contact was made in HubSpot before syncflow knew the key.
        let client = reqwest::Client::new();
        let made: Value = client
            .post(format!("{}/crm/v3/objects/contacts", crm.hubspot_url()))
            .bearer_auth("dev-token")
            .json(&body("ByHand"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let existing = made["id"].as_str().unwrap().to_string();
        let v = body("Synced");
        let sent = sink
            .deliver(&record(Action::Create, 1, Some(&v), "i1"))
            .await;
        let Delivery::Sent { id, .. } = sent else {
            panic!("{sent:?}");
        };
        assert_eq!(id.as_deref(), Some(existing.as_str()));
        let records = crm.snapshot().hubspot.records;
        assert_eq!(records.len(), 1);
        assert_eq!(records[&existing].fields["firstname"], "Synced");
        // The id map learned it: the next change goes straight to the record.
        let v2 = body("Later");
        sink.deliver(&record(Action::Update, 2, Some(&v2), "i2"))
            .await;
        assert_eq!(
            crm.snapshot().hubspot.records[&existing].fields["firstname"],
            "Later"
        );
    }

    #[tokio::test]
    async fn a_stale_redelivery_writes_the_reverse_entry_a_crash_left_out() {
        let (sink, crm, nats) = hubspot().await;
        let v1 = body("One");
        let Delivery::Sent { id: Some(id), .. } = sink
            .deliver(&record(Action::Create, 1, Some(&v1), "i1"))
            .await
        else {
            panic!("created");
        };
        // The first delivery stopped after the entry, before its reverse.
        let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
        let store = js.get_key_value(crate::idmap::BUCKET).await.unwrap();
        store
            .purge(format!("hubspot.contact.by_id.{id}"))
            .await
            .unwrap();
        assert_eq!(
            sink.idmap.key_of("hubspot", "contact", &id).await.unwrap(),
            None
        );
        let again = Record {
            redelivered: true,
            ..record(Action::Create, 1, Some(&v1), "i1")
        };
        assert_eq!(
            sink.deliver(&again).await,
            Delivery::Skipped {
                reason: SkipReason::Stale
            }
        );
        assert_eq!(
            sink.idmap.key_of("hubspot", "contact", &id).await.unwrap(),
            Some("k1".to_string())
        );
        assert_eq!(requests(&crm).len(), 1);
    }
}
