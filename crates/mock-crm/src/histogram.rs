//! A fixed-size, lock-free histogram of microsecond values for the latency
//! probe: HDR-style log-linear buckets, so memory stays the same whether a
//! benchmark sends a thousand requests or a billion, and recording is a few
//! atomic adds on the request path (no lock next to the gateway's).
//!
//! Values below 256 get one bucket each; above, every power of two is split
//! into 128 buckets, so a reported quantile is within 1/128 (< 0.8%) of the
//! true value.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// Buckets per power of two above the exact range.
const SUB_BUCKETS: u64 = 128;
/// Values below this have a bucket each.
const EXACT: u64 = 2 * SUB_BUCKETS;
/// Enough buckets for any u64: the exact range, then 128 per octave from 2^8 to 2^64.
const BUCKETS: usize = (EXACT + (64 - 8) * SUB_BUCKETS) as usize;

pub(super) struct Histogram {
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    sum: AtomicU64,
    min: AtomicU64,
    max: AtomicU64,
}

/// Quantiles and extremes of what a [`Histogram`] saw, in microseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub(super) struct Summary {
    pub count: u64,
    pub min_us: u64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum: AtomicU64::new(0),
            min: AtomicU64::new(u64::MAX),
            max: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    pub(super) fn record(&self, value: u64) {
        self.buckets[bucket_of(value)].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(value, Ordering::Relaxed);
        self.min.fetch_min(value, Ordering::Relaxed);
        self.max.fetch_max(value, Ordering::Relaxed);
    }

    pub(super) fn reset(&self) {
        for bucket in self.buckets.iter() {
            bucket.store(0, Ordering::Relaxed);
        }
        self.count.store(0, Ordering::Relaxed);
        self.sum.store(0, Ordering::Relaxed);
        self.min.store(u64::MAX, Ordering::Relaxed);
        self.max.store(0, Ordering::Relaxed);
    }

    /// A reading taken while requests are recorded may be off by the
    /// requests in flight; read after the load stops for exact counts.
    pub(super) fn summary(&self) -> Summary {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let count: u64 = counts.iter().sum();
        if count == 0 {
            return Summary::default();
        }
        let (min, max) = (
            self.min.load(Ordering::Relaxed),
            self.max.load(Ordering::Relaxed),
        );
        // The bucket's highest value, but never past the largest seen:
        // a quantile is never reported lower than the truth.
        let at = |q: f64| {
            let rank = ((q * count as f64).ceil() as u64).clamp(1, count);
            let mut seen = 0;
            for (bucket, &n) in counts.iter().enumerate() {
                seen += n;
                if seen >= rank {
                    return highest_in(bucket).clamp(min, max);
                }
            }
            max
        };
        Summary {
            count,
            min_us: min,
            mean_us: self.sum.load(Ordering::Relaxed) as f64 / count as f64,
            p50_us: at(0.50),
            p90_us: at(0.90),
            p99_us: at(0.99),
            p999_us: at(0.999),
            max_us: max,
        }
    }
}

fn bucket_of(value: u64) -> usize {
    if value < EXACT {
        return value as usize;
    }
    // `value` has at least 9 significant bits; keep the top 8 (128..=255).
    let shift = 64 - u64::from(value.leading_zeros()) - 8;
    let top = value >> shift;
    (EXACT + (shift - 1) * SUB_BUCKETS + (top - SUB_BUCKETS)) as usize
}

fn highest_in(bucket: usize) -> u64 {
    let bucket = bucket as u64;
    if bucket < EXACT {
        return bucket;
    }
    let shift = (bucket - EXACT) / SUB_BUCKETS + 1;
    let top = (bucket - EXACT) % SUB_BUCKETS + SUB_BUCKETS;
    // The last bucket's top is 2^64 - 1: the shift wraps to 0 there.
    ((top + 1) << shift).wrapping_sub(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_every_value_in_order_within_one_percent() {
        let mut last = 0;
        for value in (0..5000u64).chain([1 << 20, 123_456_789, u64::MAX / 3, u64::MAX]) {
            let bucket = bucket_of(value);
            assert!(bucket < BUCKETS, "{value}");
            assert!(bucket >= last, "{value}");
            last = bucket;
            let high = highest_in(bucket);
            assert!(high >= value, "{value}: bucket tops at {high}");
            assert!(
                (high - value) as f64 <= value as f64 / 128.0 + 1.0,
                "{value}: {high}"
            );
        }
    }

    #[test]
    fn quantiles_of_one_to_ten_thousand() {
        let h = Histogram::default();
        for v in 1..=10_000 {
            h.record(v);
        }
        let s = h.summary();
        assert_eq!((s.count, s.min_us, s.max_us), (10_000, 1, 10_000));
        assert!((s.mean_us - 5000.5).abs() < 1e-9);
        for (got, want) in [(s.p50_us, 5000), (s.p99_us, 9900), (s.p999_us, 9990)] {
            assert!(got >= want && got <= want + want / 100, "{got} vs {want}");
        }
        h.reset();
        assert_eq!(h.summary(), Summary::default());
    }
}
