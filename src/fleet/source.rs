//! A pipeline's messages from the partitions this instance holds, as one
//! [`Source`].
//!
//! Each held partition is a durable consumer of its own on
//! [`PARTS_STREAM`](super::PARTS_STREAM), bound as its new holder (at its
//! ack floor, so what a dead holder left unacked comes first, in order).
//! A partition handed over stops pulling, waits until every message it gave
//! out is settled and its acks are on the server, and only then lets the
//! fleet give its lease back: the next holder starts exactly where this
//! one ended.

use std::collections::HashMap;

use async_nats::jetstream;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::{Fleet, Resource, Run, parts_subject};
use crate::config::model::NatsSourceConfig;
use crate::readiness::Readiness;
use crate::source::{JetStreamSource, Source, SourceMessage};

/// Headers the splitter adds to a partitioned message: where it stands in
/// the pipeline's own stream, which idempotency keys, ordering and dead
/// letters refer to.
pub const SUBJECT_HEADER: &str = "Syncflow-Subject";
pub const SEQ_HEADER: &str = "Syncflow-Seq";
pub const TIME_HEADER: &str = "Syncflow-Time-Ms";
/// The message's own `Nats-Msg-Id`, kept aside: the partition stream's
/// `Nats-Msg-Id` is the splitter's, for its duplicates.
pub const MSG_ID_HEADER: &str = "Syncflow-Msg-Id";
/// How often the pipeline's stream had delivered the message when it was
/// split (only when more than once).
pub const DELIVERED_HEADER: &str = "Syncflow-Delivered";

pub struct PartitionedSource {
    rx: mpsc::Receiver<SourceMessage>,
    manager: JoinHandle<()>,
}

/// What every partition of one pipeline is run with.
struct Setup {
    fleet: Fleet,
    js: jetstream::Context,
    source: NatsSourceConfig,
    pipeline: String,
    readiness: Readiness,
}

impl PartitionedSource {
    /// Runs the partitions granted to this instance until `stop`.
    pub fn new(
        fleet: Fleet,
        js: jetstream::Context,
        source: NatsSourceConfig,
        pipeline: &str,
        readiness: Readiness,
        stop: watch::Receiver<bool>,
    ) -> Self {
        // Ready as a member of the fleet, whatever it holds; each held
        // partition reports its own consumer's readiness.
        readiness.set_ready(pipeline, true);
        let (tx, rx) = mpsc::channel(64);
        let setup = Setup {
            fleet,
            js,
            source,
            pipeline: pipeline.to_string(),
            readiness,
        };
        PartitionedSource {
            rx,
            manager: tokio::spawn(manage(setup, stop, tx)),
        }
    }
}

impl Source for PartitionedSource {
    async fn next(&mut self) -> Option<SourceMessage> {
        self.rx.recv().await
    }

    async fn close(self) {
        let _ = self.manager.await;
    }
}

/// Starts and stops partition runs as the fleet grants and revokes them;
/// on `stop`, stops them all and returns once they have ended.
async fn manage(setup: Setup, mut stop: watch::Receiver<bool>, tx: mpsc::Sender<SourceMessage>) {
    let mut granted = setup.fleet.granted();
    let mut running: HashMap<u32, (watch::Sender<bool>, JoinHandle<()>)> = HashMap::new();
    loop {
        let stopping = *stop.borrow();
        let wanted: Vec<u32> = match stopping {
            true => Vec::new(),
            false => granted
                .borrow_and_update()
                .iter()
                .filter_map(|r| match r {
                    Resource::Partition(p) => Some(*p),
                    Resource::Splitter(_) => None,
                })
                .collect(),
        };
        for (p, (stop_run, _)) in &running {
            if !wanted.contains(p) {
                stop_run.send_replace(true);
            }
        }
        running.retain(|_, (_, task)| !task.is_finished());
        if stopping {
            for (_, (_, task)) in running.drain() {
                let _ = task.await;
            }
            return;
        }
        for p in wanted {
            // A partition still ending its last run starts again at the
            // next look, once it has.
            if running.contains_key(&p) {
                continue;
            }
            if let Some(run) = setup.fleet.start_run(&Resource::Partition(p)) {
                let (stop_run, stop_rx) = watch::channel(false);
                let task = tokio::spawn(run_partition(&setup, p, run, stop_rx, tx.clone()));
                running.insert(p, (stop_run, task));
            }
        }
        tokio::select! {
            _ = granted.changed() => {}
            _ = stop.changed() => {}
            _ = tokio::time::sleep(std::time::Duration::from_millis(100)) => {}
        }
    }
}

/// One partition of the pipeline, until its stop: pulls, then lets every
/// message it gave out settle and its acks reach the server.
fn run_partition(
    setup: &Setup,
    p: u32,
    run: Run,
    stop: watch::Receiver<bool>,
    tx: mpsc::Sender<SourceMessage>,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let partitions = setup.fleet.partitions();
    let config = partition_config(&setup.source, &setup.pipeline, p, partitions);
    let label = format!("{}/p{p}", setup.pipeline);
    let readiness = setup.readiness.clone();
    let pipeline = setup.pipeline.clone();
    let mut source =
        JetStreamSource::new(setup.js.clone(), config, &label, readiness.clone(), stop)
            .taking_over()
            .with_fence(run.fence());
    async move {
        tracing::info!(pipeline = %pipeline, partition = p, "running partition");
        while let Some(msg) = source.next().await {
            if tx.send(restore(msg)).await.is_err() {
                break;
            }
        }
        // The acks are on the server before the lease goes back.
        source.finish().await;
        readiness.remove(&label);
        tracing::info!(pipeline = %pipeline, partition = p, "partition let go");
        drop(run);
    }
}

/// The consumer of `pipeline`'s partition `p`: the pipeline's settings,
/// its limits on what is held shared evenly by the partitions (an
/// instance holding all of them holds what one pipeline would).
fn partition_config(
    source: &NatsSourceConfig,
    pipeline: &str,
    p: u32,
    partitions: u32,
) -> NatsSourceConfig {
    let n = partitions.max(1);
    let durable = source.durable.as_deref().unwrap_or(pipeline);
    NatsSourceConfig {
        stream: super::PARTS_STREAM.to_string(),
        subject: parts_subject(pipeline, p),
        durable: Some(format!("{durable}-p{p}")),
        batch: source.batch,
        max_ack_pending: (source.max_ack_pending / i64::from(n)).max(16),
        max_ack_pending_bytes: (source.max_ack_pending_bytes / n as usize).max(64 * 1024),
        ack_wait: source.ack_wait,
    }
}

/// The message as it stands in the pipeline's own stream.
fn restore(mut msg: SourceMessage) -> SourceMessage {
    let origin = Origin::read(std::mem::take(&mut msg.headers));
    if let Some(subject) = origin.subject {
        msg.subject = subject.into();
    }
    msg.seq = origin.seq.unwrap_or(msg.seq);
    msg.timestamp_ms = origin.timestamp_ms.or(msg.timestamp_ms);
    msg.delivered = msg.delivered.max(origin.delivered);
    msg.headers = origin.headers;
    msg
}

/// Where a partitioned message stood in the pipeline's stream, read from
/// the splitter's headers, and the message's own headers.
#[derive(Debug, Default, PartialEq)]
struct Origin {
    subject: Option<String>,
    seq: Option<u64>,
    timestamp_ms: Option<i64>,
    delivered: i64,
    headers: Vec<(String, String)>,
}

impl Origin {
    fn read(headers: Vec<(String, String)>) -> Origin {
        let mut origin = Origin {
            headers: Vec::with_capacity(headers.len()),
            ..Origin::default()
        };
        for (name, value) in headers {
            if name.eq_ignore_ascii_case(SUBJECT_HEADER) {
                origin.subject = Some(value);
            } else if name.eq_ignore_ascii_case(SEQ_HEADER) {
                origin.seq = value.parse().ok();
            } else if name.eq_ignore_ascii_case(TIME_HEADER) {
                origin.timestamp_ms = value.parse().ok();
            } else if name.eq_ignore_ascii_case(DELIVERED_HEADER) {
                origin.delivered = value.parse().unwrap_or(0);
            } else if name.eq_ignore_ascii_case(MSG_ID_HEADER) {
                origin.headers.push(("Nats-Msg-Id".to_string(), value));
            } else if !name.eq_ignore_ascii_case("Nats-Msg-Id") {
                origin.headers.push((name, value));
            }
        }
        origin
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::duration::ConfigDuration;

    #[test]
    fn a_partitioned_message_stands_where_it_stood_in_the_pipelines_stream() {
        let pair = |k: &str, v: &str| (k.to_string(), v.to_string());
        let origin = Origin::read(vec![
            pair("Nats-Msg-Id", "p.1234"),
            pair(SUBJECT_HEADER, "cdc.contacts.9"),
            pair(SEQ_HEADER, "1234"),
            pair(TIME_HEADER, "1700000000123"),
            pair(MSG_ID_HEADER, "ev-9"),
            pair(DELIVERED_HEADER, "3"),
            pair("Traceparent", "00-abc"),
        ]);
        assert_eq!(
            origin,
            Origin {
                subject: Some("cdc.contacts.9".into()),
                seq: Some(1234),
                timestamp_ms: Some(1_700_000_000_123),
                delivered: 3,
                headers: vec![pair("Nats-Msg-Id", "ev-9"), pair("Traceparent", "00-abc")],
            }
        );
    }

    #[test]
    fn partitions_share_what_a_pipeline_may_hold() {
        let source = NatsSourceConfig {
            stream: "CDC".into(),
            subject: "cdc.>".into(),
            durable: None,
            batch: 256,
            max_ack_pending: 512,
            max_ack_pending_bytes: 2 << 20,
            ack_wait: ConfigDuration::from_secs(30),
        };
        let p = partition_config(&source, "contacts", 3, 12);
        assert_eq!(p.stream, "SYNCFLOW_PARTS");
        assert_eq!(p.subject, "syncflow.parts.contacts.3");
        assert_eq!(p.durable.as_deref(), Some("contacts-p3"));
        assert_eq!(p.max_ack_pending, 42);
        assert_eq!(p.max_ack_pending_bytes, (2 << 20) / 12);
        let one = partition_config(&source, "contacts", 0, 1);
        assert_eq!(
            (one.max_ack_pending, one.max_ack_pending_bytes),
            (512, 2 << 20)
        );
    }
}
