//! The latency probe for benchmarks: each API request whose JSON body carries
//! a send time (integer microseconds since the Unix epoch, at a dotted path
//! such as `properties.sent_at_us`) adds `receipt − send time` to a histogram.
//!
//! A benchmark's publisher stamps its events, the pipeline maps the stamp
//! into the body, and the probe then measures publish → CRM receipt across
//! every stage in between, without a per-request log that would grow with
//! the run. Both clocks are the same machine's wall clock.
//!
//! `GET /_admin/latency` reads it, `POST /_admin/latency/reset` clears it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use serde::Serialize;
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::json;

use super::histogram::{Histogram, Summary};

pub(super) struct LatencyProbe {
    path: Vec<String>,
    latency: Histogram,
    /// Requests whose body had no usable send time at the path.
    without_field: AtomicU64,
    /// Send times later than the receipt (a clock step), counted as 0 µs.
    negative: AtomicU64,
    /// First and last receipt of a request with a send time, µs since the epoch.
    first_receipt_us: AtomicU64,
    last_receipt_us: AtomicU64,
}

/// What `GET /_admin/latency` answers.
#[derive(Debug, Serialize)]
struct Reading {
    field: String,
    #[serde(flatten)]
    latency: Summary,
    without_field: u64,
    negative: u64,
    first_receipt_us: Option<u64>,
    last_receipt_us: Option<u64>,
    /// Requests per second between the first and the last receipt.
    rate_per_s: Option<f64>,
}

impl LatencyProbe {
    /// `field` is a dotted path into the JSON body (`properties.sent_at_us`).
    pub(super) fn new(field: &str) -> LatencyProbe {
        LatencyProbe {
            path: field.split('.').map(str::to_owned).collect(),
            latency: Histogram::default(),
            without_field: AtomicU64::new(0),
            negative: AtomicU64::new(0),
            first_receipt_us: AtomicU64::new(u64::MAX),
            last_receipt_us: AtomicU64::new(0),
        }
    }

    /// Records the request received at `received_at_us` with `body`.
    pub(super) fn observe(&self, body: &[u8], received_at_us: u64) {
        let Some(sent_at_us) = send_time(body, &self.path) else {
            self.without_field.fetch_add(1, Ordering::Relaxed);
            return;
        };
        if sent_at_us > received_at_us {
            self.negative.fetch_add(1, Ordering::Relaxed);
        }
        self.latency
            .record(received_at_us.saturating_sub(sent_at_us));
        self.first_receipt_us
            .fetch_min(received_at_us, Ordering::Relaxed);
        self.last_receipt_us
            .fetch_max(received_at_us, Ordering::Relaxed);
    }

    fn reading(&self) -> Reading {
        let latency = self.latency.summary();
        let first = self.first_receipt_us.load(Ordering::Relaxed);
        let last = self.last_receipt_us.load(Ordering::Relaxed);
        let seen = latency.count > 0;
        let rate_per_s = (latency.count > 1 && last > first)
            .then(|| (latency.count - 1) as f64 * 1e6 / (last - first) as f64);
        Reading {
            field: self.path.join("."),
            latency,
            without_field: self.without_field.load(Ordering::Relaxed),
            negative: self.negative.load(Ordering::Relaxed),
            first_receipt_us: seen.then_some(first),
            last_receipt_us: seen.then_some(last),
            rate_per_s,
        }
    }

    fn reset(&self) {
        self.latency.reset();
        self.without_field.store(0, Ordering::Relaxed);
        self.negative.store(0, Ordering::Relaxed);
        self.first_receipt_us.store(u64::MAX, Ordering::Relaxed);
        self.last_receipt_us.store(0, Ordering::Relaxed);
    }
}

/// `/_admin/latency`; without a probe (no `--latency-field`) it answers 404.
pub(super) fn routes(probe: Option<Arc<LatencyProbe>>) -> Router {
    Router::new()
        .route("/_admin/latency", get(read))
        .route("/_admin/latency/reset", post(reset))
        .with_state(probe)
}

type ProbeState = State<Option<Arc<LatencyProbe>>>;

async fn read(State(probe): ProbeState) -> Response {
    match probe {
        Some(probe) => Json(probe.reading()).into_response(),
        None => not_configured(),
    }
}

async fn reset(State(probe): ProbeState) -> Response {
    match probe {
        Some(probe) => {
            probe.reset();
            StatusCode::NO_CONTENT.into_response()
        }
        None => not_configured(),
    }
}

fn not_configured() -> Response {
    let message = "no latency probe: start the mock CRM with --latency-field PATH";
    (StatusCode::NOT_FOUND, Json(json!({"message": message}))).into_response()
}

/// The integer at `path` in the JSON `body`, found in one pass that skips
/// everything else without building it (the probe runs on every request).
fn send_time(body: &[u8], path: &[String]) -> Option<u64> {
    let mut json = serde_json::Deserializer::from_slice(body);
    Lookup { path }.deserialize(&mut json).ok().flatten()
}

/// Descends `path` through objects; yields the number at its end, `None`
/// for anything else.
struct Lookup<'p> {
    path: &'p [String],
}

impl<'de> DeserializeSeed<'de> for Lookup<'_> {
    type Value = Option<u64>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Option<u64>, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Lookup<'_> {
    type Value = Option<u64>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<u64>, A::Error> {
        let mut found = None;
        while let Some(is_next) = map.next_key_seed(KeyIs(self.path.first()))? {
            if is_next && found.is_none() {
                found = map.next_value_seed(Lookup {
                    path: &self.path[1..],
                })?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Option<u64>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(None)
    }

    fn visit_u64<E>(self, v: u64) -> Result<Option<u64>, E> {
        Ok(self.path.is_empty().then_some(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Option<u64>, E> {
        Ok(u64::try_from(v).ok().filter(|_| self.path.is_empty()))
    }

    fn visit_f64<E>(self, _: f64) -> Result<Option<u64>, E> {
        Ok(None)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Option<u64>, E> {
        Ok(None)
    }

    fn visit_str<E>(self, _: &str) -> Result<Option<u64>, E> {
        Ok(None)
    }

    fn visit_unit<E>(self) -> Result<Option<u64>, E> {
        Ok(None)
    }
}

/// Whether an object key is `expected`, compared without allocating.
struct KeyIs<'p>(Option<&'p String>);

impl<'de> DeserializeSeed<'de> for KeyIs<'_> {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<bool, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeyIs<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E>(self, key: &str) -> Result<bool, E> {
        Ok(self.0.is_some_and(|expected| expected == key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(p: &str) -> Vec<String> {
        p.split('.').map(str::to_owned).collect()
    }

    #[test]
    fn finds_the_integer_at_a_dotted_path_and_nothing_else() {
        let body =
            br#"{"a":[1,{"b":2}],"properties":{"x":"y","sent_at_us":1700000000000001,"z":null}}"#;
        assert_eq!(
            send_time(body, &path("properties.sent_at_us")),
            Some(1_700_000_000_000_001)
        );
        for missing in [
            "sent_at_us",
            "properties.x",
            "properties.z",
            "a",
            "properties",
        ] {
            assert_eq!(send_time(body, &path(missing)), None, "{missing}");
        }
        assert_eq!(send_time(br#"{"t":-5}"#, &path("t")), None);
        assert_eq!(send_time(br#"{"t":1.5}"#, &path("t")), None);
        assert_eq!(send_time(b"not json", &path("t")), None);
        assert_eq!(send_time(br#"{"t\u0031":7}"#, &path("t1")), Some(7));
    }

    #[test]
    fn latency_is_receipt_minus_send_time() {
        let probe = LatencyProbe::new("p.t");
        probe.observe(br#"{"p":{"t":1000}}"#, 1500);
        probe.observe(br#"{"p":{"t":1000}}"#, 3500);
        probe.observe(br#"{"p":{}}"#, 4000);
        probe.observe(br#"{"p":{"t":9000}}"#, 8000);
        let r = probe.reading();
        assert_eq!(
            (r.latency.count, r.latency.min_us, r.latency.max_us),
            (3, 0, 2500)
        );
        assert_eq!((r.without_field, r.negative), (1, 1));
        assert_eq!(
            (r.first_receipt_us, r.last_receipt_us),
            (Some(1500), Some(8000))
        );
        probe.reset();
        assert_eq!(probe.reading().latency.count, 0);
        assert_eq!(probe.reading().first_receipt_us, None);
    }
}
