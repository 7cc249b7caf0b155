//! [`ProviderSink`]: records to one object of a provider's HTTP API, with
//! the CRM's ways: which endpoint an action means, which provider id a key
//! has (the id map), and what a 404 on delete means.

use std::sync::Arc;

use super::http::{ApiError, ApiErrorKind, ApiRequest, EndpointKind, ProviderApi};
use super::{Delivery, Failure, FailureKind, Record, Sink};
use crate::action::Action;
use crate::idmap::{IdMap, Known};
use crate::provider::Object;
use crate::transient::retry_until_ok;

/// A pipeline's provider object. The [`ProviderApi`] (limit, concurrency,
/// breaker) is the provider's, shared by every pipeline that targets it.
pub struct ProviderSink {
    api: Arc<ProviderApi>,
    idmap: IdMap,
    object: String,
}

impl ProviderSink {
    pub fn new(api: Arc<ProviderApi>, idmap: IdMap, object: &str) -> Self {
        ProviderSink {
            api,
            idmap,
            object: object.to_string(),
        }
    }

    fn provider(&self) -> &str {
        &self.api.provider().name
    }

    fn object(&self) -> &Object {
        &self.api.provider().objects[&self.object]
    }

    /// What the id map knows of the record's key; NATS trouble is waited out.
    async fn lookup(&self, record: &Record<'_>) -> Known {
        retry_until_ok(record.pipeline, "id map read", || {
            self.idmap.lookup(self.provider(), &self.object, record.key)
        })
        .await
    }

    async fn learn(&self, record: &Record<'_>, id: &str) {
        retry_until_ok(record.pipeline, "id map write", || {
            self.idmap
                .put(self.provider(), &self.object, record.key, id)
        })
        .await;
    }

    async fn forget(&self, record: &Record<'_>) {
        retry_until_ok(record.pipeline, "id map delete", || {
            self.idmap.remove(self.provider(), &self.object, record.key)
        })
        .await;
    }

    /// The endpoint an action means. `upsert` without an upsert endpoint is
    /// an update when the id map knows the key, else a create.
    async fn endpoint(&self, record: &Record<'_>) -> EndpointKind {
        match record.action {
            Action::Create => EndpointKind::Create,
            Action::Update => EndpointKind::Update,
            Action::Delete => EndpointKind::Delete,
            Action::Read => EndpointKind::Read,
            Action::Upsert if self.object().upsert.is_some() => EndpointKind::Upsert,
            Action::Upsert => match self.lookup(record).await {
                Known::Id(_) => EndpointKind::Update,
                Known::Deleted | Known::Unknown => EndpointKind::Create,
            },
            Action::Skip => unreachable!("skipped records do not reach a sink"),
        }
    }
}

impl Sink for ProviderSink {
    async fn deliver(&self, record: &Record<'_>) -> Delivery {
        let endpoint = self.endpoint(record).await;
        let needs_id = self
            .object()
            .endpoint(endpoint)
            .is_some_and(|ep| ep.path.needs_id());
        let known = if needs_id {
            self.lookup(record).await
        } else {
            Known::Unknown
        };
        let id = match known {
            Known::Id(id) => Some(id),
            // Deleting what syncflow already deleted is the outcome wanted,
            // like a 404 on delete: a redelivery after the delete went
            // through (a crash before the ack, a drain deadline) must not
            // dead-letter.
            Known::Deleted if endpoint == EndpointKind::Delete => {
                tracing::info!(
                    pipeline = record.pipeline,
                    key = record.key,
                    seq = record.seq,
                    "record already deleted; nothing to send"
                );
                return Delivery::Skipped {
                    reason: "already deleted",
                };
            }
            Known::Deleted if needs_id => {
                return unknown_id(format!(
                    "the {} record of key \"{}\" was deleted through syncflow",
                    self.provider(),
                    record.key
                ));
            }
            Known::Deleted | Known::Unknown if needs_id => {
                return unknown_id(format!(
                    "no {} id is known for key \"{}\": it was never created through syncflow, or its create failed",
                    self.provider(),
                    record.key
                ));
            }
            Known::Deleted | Known::Unknown => None,
        };

        let request = ApiRequest {
            object: &self.object,
            endpoint,
            key: record.key,
            id: id.as_deref(),
            body: record.body,
            idempotency_key: record.idempotency_key,
        };
        match self.api.send(request).await {
            Ok(response) => {
                if let Some(new_id) = &response.provider_id {
                    self.learn(record, new_id).await;
                }
                if endpoint == EndpointKind::Delete {
                    self.forget(record).await;
                }
                Delivery::Sent {
                    status: Some(response.status),
                    id: response.provider_id.or(id),
                    attempts: response.attempts,
                }
            }
            // Deleting what is already gone is the outcome wanted.
            Err(ApiError {
                kind: ApiErrorKind::NotFound,
                status,
                attempts,
                ..
            }) if endpoint == EndpointKind::Delete => {
                self.forget(record).await;
                Delivery::Sent {
                    status: Some(status.unwrap_or(404)),
                    id,
                    attempts,
                }
            }
            Err(e) => Delivery::Failed(Failure {
                kind: match e.kind {
                    ApiErrorKind::Rejected | ApiErrorKind::NotFound => {
                        FailureKind::ProviderRejected
                    }
                    ApiErrorKind::RetriesExhausted => FailureKind::RetriesExhausted,
                    ApiErrorKind::ResponseTooLarge => FailureKind::ResponseTooLarge,
                    ApiErrorKind::Internal => FailureKind::Internal,
                },
                message: e.message,
                status: e.status,
                body: e.body,
                attempts: e.attempts,
            }),
        }
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
