//! How long to wait before the next attempt: full-jitter exponential backoff,
//! unless the provider said when to come back (`Retry-After`).

use std::time::{Duration, SystemTime};

use rand::Rng;

use crate::config::model::RetryConfig;

/// The upper bound of the wait after the `attempt`-th (1-based) failed try:
/// `min(max_backoff, initial_backoff · 2^(attempt−1))`.
pub(super) fn backoff_ceiling(retry: &RetryConfig, attempt: u32) -> Duration {
    let doublings = attempt.saturating_sub(1);
    let factor = 1u32.checked_shl(doublings).unwrap_or(u32::MAX);
    retry
        .initial_backoff
        .0
        .saturating_mul(factor)
        .min(retry.max_backoff.0)
}

/// Full jitter: uniform in `[0, ceiling]`, so clients that failed together
/// do not come back together.
pub(super) fn full_jitter(ceiling: Duration, rng: &mut impl Rng) -> Duration {
    let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(rng.random_range(0..=nanos))
}

/// A `Retry-After` value: delta-seconds or an HTTP date (RFC 9110 §10.2.3),
/// as a wait from `now`; a date in the past is no wait. `None` when it is
/// neither.
pub(super) fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::duration::ConfigDuration;

    fn policy(initial_ms: u64, max_ms: u64) -> RetryConfig {
        RetryConfig {
            initial_backoff: ConfigDuration::from_millis(initial_ms),
            max_backoff: ConfigDuration::from_millis(max_ms),
            ..RetryConfig::default()
        }
    }

    #[test]
    fn ceiling_doubles_per_attempt_up_to_max_backoff() {
        let retry = policy(200, 1000);
        let ceilings: Vec<u128> = (1..=5)
            .map(|n| backoff_ceiling(&retry, n).as_millis())
            .collect();
        assert_eq!(ceilings, [200, 400, 800, 1000, 1000]);
        // No overflow however many attempts are configured.
        assert_eq!(backoff_ceiling(&retry, 200), Duration::from_secs(1));
        assert_eq!(
            backoff_ceiling(&policy(200, u64::MAX / 2), 200),
            Duration::from_millis(200).saturating_mul(u32::MAX)
        );
    }

    #[test]
    fn jitter_spans_zero_to_the_ceiling() {
        let mut rng = rand::rng();
        let ceiling = Duration::from_millis(100);
        let waits: Vec<Duration> = (0..1000).map(|_| full_jitter(ceiling, &mut rng)).collect();
        assert!(waits.iter().all(|w| *w <= ceiling));
        // Spread over the whole range, not clustered at the top.
        assert!(waits.iter().any(|w| *w < ceiling / 4));
        assert!(waits.iter().any(|w| *w > ceiling * 3 / 4));
        assert_eq!(full_jitter(Duration::ZERO, &mut rng), Duration::ZERO);
    }

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));

        let later = httpdate::fmt_http_date(now + Duration::from_secs(90));
        assert_eq!(
            parse_retry_after(&later, now),
            Some(Duration::from_secs(90))
        );
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(90));
        assert_eq!(parse_retry_after(&earlier, now), Some(Duration::ZERO));

        for bad in ["", "-1", "1.5", "soon", "Tue, 32 Nov 2023 22:13:20 GMT"] {
            assert_eq!(parse_retry_after(bad, now), None, "{bad:?}");
        }
    }
}
