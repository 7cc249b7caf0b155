//! [`Batcher`]: gathers the records of one batch endpoint into batches.
//!
//! Each record comes from its own lane (executor/lane.rs), which holds one
//! record at a time: two changes of a key are never in one batch, nor in
//! two batches at once, so batching cannot reorder a key's changes. A
//! record waits for its batch's answer like it would for its own request.
//!
//! A batch holds one account's records (an account has its own limit), and
//! goes when it holds `max_records`, or `max_wait` after its first record
//! came. Its request is sent in a task of its own, so a lane that
//! stops waiting (a drain's deadline) never strands the other records.
//! A batch refused as a whole (a 4xx other than `retry_on`: some APIs
//! refuse every record of a batch for one bad one) with more than one
//! record in it sends each record on its own, through the single endpoint:
//! the provider's answer to each decides, and only the bad one is a dead
//! letter.
//! A record the answer refused with a `retry_on` status is sent again,
//! alone in the sense that only it goes back: into a later batch, after the
//! provider's backoff, counting against `retry.max_attempts` like a single
//! request's tries.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use super::batch::{self, ItemOutcome};
use super::retry::{backoff_ceiling, full_jitter};
use super::{ApiError, ApiErrorKind, ApiRequest, ApiResponse, EndpointKind, ProviderApi};
use crate::provider::{Batch, BatchEndpoint};

/// The batches of one object's batch endpoint of one kind.
pub struct Batcher {
    api: Arc<ProviderApi>,
    object: String,
    kind: EndpointKind,
    /// The object's `batch:`, copied once: read several times per record.
    batch: Batch,
    /// The batch filling up, per account (`None`: a pipeline without).
    open: Mutex<HashMap<Option<String>, Open>>,
}

/// A batch filling up. `generation` tells a `max_wait` timer whether the
/// batch it was started for is still the one filling.
#[derive(Default)]
struct Open {
    generation: u64,
    queued: Vec<Queued>,
}

struct Queued {
    /// The record's item, as JSON.
    item: Vec<u8>,
    id: Option<String>,
    trace: String,
    answer: oneshot::Sender<Result<Answered, Refused>>,
}

/// A batch's failure as a whole, and how many records it held.
struct Refused {
    error: ApiError,
    records: usize,
}

/// A record's part of a batch's answer.
struct Answered {
    outcome: ItemOutcome,
    status: u16,
    attempts: u32,
}

impl Batcher {
    /// `None` when the object has no batch endpoint of `kind`.
    pub fn new(api: Arc<ProviderApi>, object: &str, kind: EndpointKind) -> Option<Arc<Self>> {
        let batch = api.provider().objects.get(object)?.batch.clone()?;
        batch.endpoint(kind)?;
        Some(Arc::new(Batcher {
            api,
            object: object.to_string(),
            kind,
            batch,
            open: Mutex::new(HashMap::new()),
        }))
    }

    pub fn kind(&self) -> EndpointKind {
        self.kind
    }

    /// The most records one request carries.
    pub fn max_records(&self) -> usize {
        self.batch.max_records
    }

    fn endpoint(&self) -> &BatchEndpoint {
        self.batch.endpoint(self.kind).expect("checked in new")
    }

    /// Whether the records need their provider id.
    pub fn needs_id(&self) -> bool {
        self.endpoint().needs_id()
    }

    /// Sends one record in a batch; the same contract as
    /// [`ProviderApi::send`], the record's own answer out of the batch's.
    pub async fn send(self: &Arc<Self>, req: ApiRequest<'_>) -> Result<ApiResponse, ApiError> {
        let retry = &self.api.provider().retry;
        let max_attempts = retry.max_attempts.max(1);
        // Tries of the batches the record was in, and its own refusals
        // worth another try (what counts against max_attempts).
        let (mut attempts, mut refused) = (0, 0);
        loop {
            let item = batch::item(
                &self.batch,
                self.endpoint(),
                req.key,
                req.id,
                req.body,
                req.idempotency_key,
            );
            let queued = self.submit(req.account, item, req.id, req.idempotency_key);
            let answered = match queued.await {
                Ok(Ok(answered)) => answered,
                Ok(Err(Refused { error, records }))
                    if error.kind == ApiErrorKind::Rejected && records > 1 =>
                {
                    self.api.sampled_warn(|suppressed| {
                        tracing::warn!(provider = %self.api.provider().name, object = %self.object, endpoint = self.kind.as_str(), status = error.status, records, suppressed, "batch refused as a whole; sending its records one by one");
                    });
                    let single = self.api.send(req).await;
                    let add = |tries: u32| attempts + error.attempts + tries;
                    return match single {
                        Ok(response) => Ok(ApiResponse {
                            attempts: add(response.attempts),
                            ..response
                        }),
                        Err(e) => Err(ApiError {
                            attempts: add(e.attempts),
                            ..e
                        }),
                    };
                }
                Ok(Err(Refused { error, .. })) => {
                    return Err(ApiError {
                        attempts: attempts + error.attempts,
                        ..error
                    });
                }
                Err(_) => return Err(self.dropped(attempts)),
            };
            attempts += answered.attempts;
            let (status, message, body) = match answered.outcome {
                ItemOutcome::Done { id } => {
                    return Ok(ApiResponse {
                        // A record done in a 207 (Multi-Status) answer is done.
                        status: match answered.status {
                            207 => 200,
                            other => other,
                        },
                        body: bytes::Bytes::new(),
                        provider_id: id,
                        attempts,
                        sent: None,
                    });
                }
                ItemOutcome::Failed {
                    status,
                    message,
                    body,
                } => (status, message, body),
                ItemOutcome::Unanswered { message } => {
                    return Err(ApiError {
                        kind: ApiErrorKind::Rejected,
                        status: None,
                        body: None,
                        attempts,
                        message: self.what(&message),
                    });
                }
            };
            let retryable = retry.retry_on.contains(&status);
            refused += 1;
            self.api.metrics().batch_refused.increment(1);
            if retryable && refused < max_attempts {
                tracing::debug!(provider = %self.api.provider().name, object = %self.object, endpoint = self.kind.as_str(), key = req.key, status, "record refused in its batch; retrying it in a later one");
                let wait = full_jitter(backoff_ceiling(retry, refused), &mut rand::rng());
                tokio::time::sleep(wait).await;
                continue;
            }
            let kind = match (retryable, status, self.kind) {
                (true, _, _) => ApiErrorKind::RetriesExhausted,
                (false, 404, EndpointKind::Update | EndpointKind::Delete) => ApiErrorKind::NotFound,
                _ => ApiErrorKind::Rejected,
            };
            return Err(ApiError {
                kind,
                status: Some(status),
                body,
                attempts,
                message: self.what(&message),
            });
        }
    }

    /// `message` about a record of this batcher, for its dead letter.
    fn what(&self, message: &str) -> String {
        format!(
            "{} batch {} {}: {message}",
            self.api.provider().name,
            self.kind.as_str(),
            self.object
        )
    }

    /// Puts a record's item in its account's open batch; sends the batch
    /// when full.
    fn submit(
        self: &Arc<Self>,
        account: Option<&str>,
        item: Vec<u8>,
        id: Option<&str>,
        trace: &str,
    ) -> oneshot::Receiver<Result<Answered, Refused>> {
        let (answer, answered) = oneshot::channel();
        let queued = Queued {
            item,
            id: id.map(str::to_string),
            trace: trace.to_string(),
            answer,
        };
        let batch = &self.batch;
        let account = account.map(str::to_string);
        let full = {
            let mut open = self.open.lock().expect("batch lock");
            let filling = open.entry(account.clone()).or_default();
            filling.queued.push(queued);
            if filling.queued.len() == 1 {
                let (me, generation, wait) = (self.clone(), filling.generation, batch.max_wait);
                let account = account.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(wait).await;
                    let due = me.close_if(&account, Some(generation));
                    if let Some(queued) = due {
                        me.flush(account.as_deref(), queued).await;
                    }
                });
            }
            match filling.queued.len() >= batch.max_records {
                true => Some(filling.close()),
                false => None,
            }
        };
        if let Some(queued) = full {
            let me = self.clone();
            tokio::spawn(async move { me.flush(account.as_deref(), queued).await });
        }
        answered
    }

    /// Takes `account`'s open batch out if it is still the `generation`
    /// a timer was started for. An account whose batch went leaves no
    /// entry behind: accounts come and go.
    fn close_if(&self, account: &Option<String>, generation: Option<u64>) -> Option<Vec<Queued>> {
        let mut open = self.open.lock().expect("batch lock");
        let filling = open.get_mut(account)?;
        if generation.is_some_and(|g| g != filling.generation) || filling.queued.is_empty() {
            return None;
        }
        let queued = filling.close();
        open.remove(account);
        Some(queued)
    }

    /// Sends a batch and tells each record its part of the answer.
    async fn flush(&self, account: Option<&str>, mut queued: Vec<Queued>) {
        let (batch, endpoint) = (&self.batch, self.endpoint());
        let items = queued
            .iter_mut()
            .map(|q| std::mem::take(&mut q.item))
            .collect();
        let body = batch::body(batch, endpoint, items);
        let path = batch::path(
            endpoint,
            queued.iter().map(|q| q.id.as_deref().unwrap_or_default()),
        );
        let traces: Vec<&str> = queued.iter().map(|q| q.trace.as_str()).collect();
        let key = batch::idempotency_key(&traces);
        self.api.metrics().batch_records.record(queued.len() as f64);
        let sent = self
            .api
            .send_batch(batch::BatchRequest {
                object: &self.object,
                kind: self.kind,
                account,
                endpoint,
                path: &path,
                body,
                idempotency_key: &key,
            })
            .await;
        match sent {
            Ok(response) => {
                let outcomes = batch::outcomes(batch, &response.body, &traces);
                for (q, outcome) in queued.into_iter().zip(outcomes) {
                    let _ = q.answer.send(Ok(Answered {
                        outcome,
                        status: response.status,
                        attempts: response.attempts,
                    }));
                }
            }
            Err(error) => {
                let records = queued.len();
                for q in queued {
                    let _ = q.answer.send(Err(Refused {
                        error: error.clone(),
                        records,
                    }));
                }
            }
        }
    }

    /// The batch task ended without an answer (a panic, a runtime shutting
    /// down): syncflow's failure, waited out by the sink.
    fn dropped(&self, attempts: u32) -> ApiError {
        ApiError {
            kind: ApiErrorKind::Internal,
            status: None,
            body: None,
            attempts,
            message: self.what("the batch ended without an answer"),
        }
    }
}

impl Open {
    /// Takes the batch out; the next record starts a new one.
    fn close(&mut self) -> Vec<Queued> {
        self.generation += 1;
        std::mem::take(&mut self.queued)
    }
}
