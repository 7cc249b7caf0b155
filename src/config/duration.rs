//! Durations written as `200ms`, `10s`, `5m`, `1h`.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// A `std::time::Duration` that reads and writes the config's duration syntax.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConfigDuration(pub Duration);

impl ConfigDuration {
    pub const fn from_millis(ms: u64) -> Self {
        ConfigDuration(Duration::from_millis(ms))
    }
    pub const fn from_secs(s: u64) -> Self {
        ConfigDuration(Duration::from_secs(s))
    }
}

impl From<ConfigDuration> for Duration {
    fn from(d: ConfigDuration) -> Duration {
        d.0
    }
}

/// The longest duration a config may hold: a year (and a day, for a
/// leap year), so no arithmetic on durations can overflow.
const MAX_SECONDS: f64 = 366.0 * 24.0 * 3600.0;

/// Parses `<number><unit>` with unit one of `ms`, `s`, `m`, `h`, `d`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let bad = || {
        format!(
            "invalid duration \"{s}\": expected a number and a unit (ms, s, m, h, d), for example 200ms or 10s"
        )
    };
    let value: f64 = number.parse().map_err(|_| bad())?;
    let millis_per_unit = match unit {
        "ms" => 1.0,
        "s" => 1_000.0,
        "m" => 60_000.0,
        "h" => 3_600_000.0,
        "d" => 86_400_000.0,
        _ => return Err(bad()),
    };
    if !value.is_finite() || value < 0.0 {
        return Err(bad());
    }
    let seconds = value * millis_per_unit / 1_000.0;
    if seconds > MAX_SECONDS {
        return Err(format!(
            "duration \"{s}\" is too long: at most 366 days (8784h)"
        ));
    }
    Ok(Duration::from_secs_f64(seconds))
}

impl<'de> Deserialize<'de> for ConfigDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DurationVisitor;
        impl Visitor<'_> for DurationVisitor {
            type Value = ConfigDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as 200ms, 10s, 5m or 1h")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                parse_duration(v).map(ConfigDuration).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Err(E::custom(
                    "a duration needs a unit (ms, s, m, h, d), for example 10s",
                ))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                self.visit_u64(v as u64)
            }
        }
        deserializer.deserialize_any(DurationVisitor)
    }
}

impl Serialize for ConfigDuration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format!("{}ms", self.0.as_millis()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit() {
        assert_eq!(parse_duration("200ms"), Ok(Duration::from_millis(200)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
    }

    #[test]
    fn absurd_lengths_are_errors_not_panics() {
        for huge in [
            "99999999999999999999h",
            "1e400s",
            "8785h",
            "527041m",
            "367d",
        ] {
            let err = parse_duration(huge).unwrap_err();
            assert!(
                err.contains("too long") || err.contains("invalid"),
                "{huge}: {err}"
            );
        }
        assert_eq!(
            parse_duration("8784h"),
            Ok(Duration::from_secs(8784 * 3600))
        );
    }

    #[test]
    fn rejects_missing_or_unknown_units() {
        for bad in ["10", "10 sec", "ten s", "5w", "", "-1s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
