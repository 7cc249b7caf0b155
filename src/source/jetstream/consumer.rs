//! The durable pull consumer: binding it with the pipeline's settings, and
//! what its deliveries say.

use async_nats::jetstream::{self, consumer::PullConsumer};

use super::Ack;
use super::acks::Acks;
use super::budget::ByteBudget;
use crate::config::model::NatsSourceConfig;
use crate::source::{AckHandle, Settle, SourceMessage};

/// What a JetStream delivery's `$JS.ACK` reply subject says about it.
///
/// Parsed here rather than with async-nats' `Message::info`, which also
/// turns the timestamp into a calendar date: about 1,700 instructions a
/// record (callgrind, bench/run.sh throughput), for a number we keep as
/// milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Delivery {
    stream_sequence: u64,
    /// The consumer's count of deliveries, redeliveries included: one more
    /// for each message it hands out.
    consumer_sequence: u64,
    delivered: i64,
    timestamp_ms: i64,
}

impl Delivery {
    /// ADR-15: after `$JS.ACK.`, either 7 tokens (older servers: stream,
    /// consumer, delivered, stream seq, consumer seq, timestamp ns, pending)
    /// or 9 and more (domain and account hash first, then the same).
    fn parse(reply: &str) -> Option<Delivery> {
        let rest = reply.strip_prefix("$JS.ACK.")?.as_bytes();
        let mut tokens: [&[u8]; 9] = [b""; 9];
        let mut count = 0;
        for token in rest.split(|&b| b == b'.') {
            if let Some(slot) = tokens.get_mut(count) {
                *slot = token;
            }
            count += 1;
        }
        let first = match count {
            7 => 0,
            n if n >= 9 => 2,
            _ => return None,
        };
        let nanos = number(tokens[first + 5])?;
        Some(Delivery {
            delivered: i64::try_from(number(tokens[first + 2])?).ok()?,
            stream_sequence: number(tokens[first + 3])?,
            consumer_sequence: number(tokens[first + 4])?,
            timestamp_ms: i64::try_from(nanos / 1_000_000).ok()?,
        })
    }
}

/// A decimal token; `None` when empty, not all digits or too large.
fn number(token: &[u8]) -> Option<u64> {
    if token.is_empty() {
        return None;
    }
    token.iter().try_fold(0u64, |n, &b| {
        let digit = b.checked_sub(b'0').filter(|d| *d <= 9)?;
        n.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

#[derive(Debug, thiserror::Error)]
pub enum NatsSourceError {
    #[error("stream \"{stream}\" not found: {message}")]
    StreamMissing { stream: String, message: String },
    #[error("cannot create consumer \"{durable}\" on stream \"{stream}\": {message}")]
    Consumer {
        stream: String,
        durable: String,
        message: String,
    },
    #[error("pull from consumer \"{durable}\" failed: {message}")]
    Pull { durable: String, message: String },
}

/// The consumer's settings, from the pipeline's `source.nats`.
pub fn consumer_config(cfg: &NatsSourceConfig, durable: &str) -> jetstream::consumer::pull::Config {
    jetstream::consumer::pull::Config {
        durable_name: Some(durable.to_string()),
        filter_subject: cfg.subject.clone(),
        ack_policy: jetstream::consumer::AckPolicy::Explicit,
        ack_wait: cfg.ack_wait.0,
        max_ack_pending: cfg.max_ack_pending,
        deliver_policy: jetstream::consumer::DeliverPolicy::All,
        ..Default::default()
    }
}

/// The consumer `durable` could not be made or read.
fn consumer_error(
    cfg: &NatsSourceConfig,
    durable: &str,
    e: &dyn std::fmt::Display,
) -> NatsSourceError {
    NatsSourceError::Consumer {
        stream: cfg.stream.clone(),
        durable: durable.to_string(),
        message: e.to_string(),
    }
}

/// The stream the consumer reads.
async fn source_stream(
    js: &jetstream::Context,
    cfg: &NatsSourceConfig,
) -> Result<jetstream::stream::Stream, NatsSourceError> {
    js.get_stream(&cfg.stream)
        .await
        .map_err(|e| NatsSourceError::StreamMissing {
            stream: cfg.stream.clone(),
            message: e.to_string(),
        })
}

/// Creates the durable consumer, or updates it to the pipeline's settings
/// (keeping its position) when it exists.
pub async fn bind(
    js: &jetstream::Context,
    cfg: &NatsSourceConfig,
    durable: &str,
) -> Result<PullConsumer, NatsSourceError> {
    let stream = source_stream(js, cfg).await?;
    let config = consumer_config(cfg, durable);
    let consumer_error = |e: &dyn std::fmt::Display| consumer_error(cfg, durable, e);
    match stream.create_consumer(config.clone()).await {
        Ok(c) => Ok(c),
        // An existing consumer with other settings: update what may change
        // (where it starts may not; a consumer taken over starts at its
        // predecessor's ack floor).
        Err(_) => {
            let mut config = config;
            if let Ok(existing) = stream.consumer_info(durable).await {
                config.deliver_policy = existing.config.deliver_policy;
            }
            stream
                .update_consumer(config)
                .await
                .map_err(|e| consumer_error(&e))
        }
    }
}

/// Binds the consumer as its new holder when its previous holder may have
/// died holding messages: a consumer with unacked messages is made again,
/// starting after its ack floor, so they come at once and in stream order
/// rather than after `ack_wait` and behind newer ones. Returns the consumer
/// and the last stream sequence delivered before (messages up to it may
/// have been handled already: they count as redelivered).
///
/// Messages acked above the floor come again too: for a work-queue stream
/// (partitions) there are none, acked messages are gone; for a pipeline's
/// source the splitter's republishing drops them as duplicates.
///
/// `again`: make the consumer again even with nothing unacked, because it
/// went past messages its stream still holds ([`skipped`]).
pub async fn take_over(
    js: &jetstream::Context,
    cfg: &NatsSourceConfig,
    durable: &str,
    again: bool,
) -> Result<(PullConsumer, u64), NatsSourceError> {
    let stream = source_stream(js, cfg).await?;
    let consumer_error = |e: &dyn std::fmt::Display| consumer_error(cfg, durable, e);
    let info = match stream.consumer_info(durable).await {
        Ok(info) if info.num_ack_pending > 0 || again => info,
        Ok(_) => return Ok((bind(js, cfg, durable).await?, 0)),
        Err(e) if e.kind() == jetstream::context::ConsumerInfoErrorKind::NotFound => {
            return Ok((bind(js, cfg, durable).await?, 0));
        }
        // Not knowing whether a predecessor left messages unacked, binding
        // could let newer ones overtake them: try again later.
        Err(e) => return Err(consumer_error(&e)),
    };
    stream
        .delete_consumer(durable)
        .await
        .map_err(|e| consumer_error(&e))?;
    let mut config = consumer_config(cfg, durable);
    // A work queue keeps only unacked messages: its consumers must start
    // at the first, which is where the floor is anyway.
    if !is_work_queue(&stream) {
        config.deliver_policy = jetstream::consumer::DeliverPolicy::ByStartSequence {
            start_sequence: info.ack_floor.stream_sequence + 1,
        };
    }
    let consumer = stream
        .create_consumer(config)
        .await
        .map_err(|e| consumer_error(&e))?;
    tracing::info!(
        durable,
        unacked = info.num_ack_pending,
        from_seq = info.ack_floor.stream_sequence + 1,
        "took the consumer over: its unacked messages come again now, in order"
    );
    Ok((consumer, info.delivered.stream_sequence))
}

fn is_work_queue(stream: &jetstream::stream::Stream) -> bool {
    matches!(
        stream.cached_info().config.retention,
        jetstream::stream::RetentionPolicy::WorkQueue
    )
}

/// For a consumer of a work-queue stream (a fleet's partition): the first
/// message of its subject, if the consumer will never deliver it. A work
/// queue keeps only unacked messages, so one at or below the consumer's
/// ack floor, or any at all while the consumer has nothing pending or
/// unacked, was skipped. nats-server 2.9 leaves a consumer so when it is
/// made while a node that died is catching up: the R3 fleet test saw five
/// partitions' consumers report nothing pending above 7,155 while their
/// stream held messages from 1,581 on. (An ack lost on its way to the
/// stream leaves such a message too; taking it again is harmless, as the
/// id map knows it was applied.)
///
/// The stream's answer comes from its leader; a message stored just now
/// and not yet counted by the consumer looks the same, so the caller acts
/// only on the same message seen twice.
pub async fn skipped(
    js: &jetstream::Context,
    cfg: &NatsSourceConfig,
    durable: &str,
) -> Result<Skipped, NatsSourceError> {
    let Some(stream) = work_queue(js, cfg).await? else {
        return Ok(Skipped::NotAWorkQueue);
    };
    let info = stream
        .consumer_info(durable)
        .await
        .map_err(|e| consumer_error(cfg, durable, &e))?;
    let Some(first) = first_of_subject(&stream, cfg, durable).await? else {
        return Ok(Skipped::Nothing);
    };
    let idle = info.num_pending == 0 && info.num_ack_pending == 0;
    Ok(match idle || first <= info.ack_floor.stream_sequence {
        true => Skipped::From(first),
        false => Skipped::Nothing,
    })
}

/// For a work queue's consumer just bound, whose first delivery is `seq`:
/// the first message of its subject, if older. A consumer made on a replica
/// still catching up can start past messages the stream holds and deliver
/// newer ones at once ([`skipped`]); checked at its first delivery, not one
/// of them is applied before the older one comes.
pub async fn older_than(
    js: &jetstream::Context,
    cfg: &NatsSourceConfig,
    durable: &str,
    seq: u64,
) -> Result<Skipped, NatsSourceError> {
    let Some(stream) = work_queue(js, cfg).await? else {
        return Ok(Skipped::NotAWorkQueue);
    };
    Ok(match first_of_subject(&stream, cfg, durable).await? {
        Some(first) if first < seq => Skipped::From(first),
        _ => Skipped::Nothing,
    })
}

/// The source's stream, if it is a work queue: only a work queue's
/// consumers can be checked against it ([`Skipped::NotAWorkQueue`]).
async fn work_queue(
    js: &jetstream::Context,
    cfg: &NatsSourceConfig,
) -> Result<Option<jetstream::stream::Stream>, NatsSourceError> {
    let stream = source_stream(js, cfg).await?;
    Ok(is_work_queue(&stream).then_some(stream))
}

/// The sequence of the stream's first message of the consumer's subject,
/// asked of the stream's leader; `None` when it holds none.
async fn first_of_subject(
    stream: &jetstream::stream::Stream,
    cfg: &NatsSourceConfig,
    durable: &str,
) -> Result<Option<u64>, NatsSourceError> {
    match stream
        .get_first_raw_message_by_subject(&cfg.subject, 1)
        .await
    {
        Ok(msg) => Ok(Some(msg.sequence)),
        Err(e) if e.kind() == jetstream::stream::RawMessageErrorKind::NoMessageFound => Ok(None),
        Err(e) => Err(consumer_error(cfg, durable, &e)),
    }
}

/// What [`skipped`] and [`older_than`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Skipped {
    /// Only a work queue's consumer can be checked so.
    NotAWorkQueue,
    Nothing,
    /// The first message the consumer went past.
    From(u64),
}

/// A delivery as the pipeline's message; it holds its share of the byte
/// budget until settled.
pub fn to_source_message(
    m: async_nats::Message,
    acks: &Acks,
    budget: &ByteBudget,
) -> SourceMessage {
    let delivery = m.reply.as_deref().and_then(Delivery::parse);
    let (seq, delivered, timestamp_ms, delivery) = match delivery {
        Some(d) => (
            d.stream_sequence,
            d.delivered,
            Some(d.timestamp_ms),
            d.consumer_sequence,
        ),
        None => (0, 1, None, 0),
    };
    let headers: Vec<(String, String)> = m
        .headers
        .as_ref()
        .map(|h| {
            h.iter()
                .flat_map(|(k, vs)| vs.iter().map(move |v| (k.to_string(), v.to_string())))
                .collect()
        })
        .unwrap_or_default();
    let bytes = m.payload.len()
        + m.subject.len()
        + headers
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>();
    SourceMessage {
        subject: m.subject,
        seq,
        timestamp_ms,
        headers,
        payload: m.payload,
        delivered,
        ack: AckHandle(Settle::JetStream(Ack {
            reply: m.reply,
            acks: acks.clone(),
            held: budget.hold(bytes),
            delivery,
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::Delivery;

    #[test]
    fn reads_both_reply_subject_formats() {
        let want = Some(Delivery {
            stream_sequence: 42,
            consumer_sequence: 40,
            delivered: 3,
            timestamp_ms: 1_700_000_000_123,
        });
        let old = "$JS.ACK.CONTACTS.sync.3.42.40.1700000000123456789.7";
        assert_eq!(Delivery::parse(old), want);
        let new = "$JS.ACK._.ACCHASH.CONTACTS.sync.3.42.40.1700000000123456789.7";
        assert_eq!(Delivery::parse(new), want);
        let with_token = format!("{new}.r4nd0m");
        assert_eq!(Delivery::parse(&with_token), want);
    }

    #[test]
    fn refuses_what_is_not_a_delivery() {
        for reply in [
            "_INBOX.abc",
            "$JS.ACK.CONTACTS.sync.3.42",
            "$JS.ACK.CONTACTS.sync.x.42.40.1700000000123456789.7",
            "$JS.ACK._.H.CONTACTS.sync.3.42.40",
            "$JS.ACK.CONTACTS.sync.3..40.1700000000123456789.7",
            "$JS.ACK.CONTACTS.sync.3.99999999999999999999.40.1.7",
        ] {
            assert_eq!(Delivery::parse(reply), None, "{reply}");
        }
    }
}
