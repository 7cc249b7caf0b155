//! Range checks for numbers, durations and sizes: a config must never make
//! the process panic or overflow, and a value far outside what makes sense
//! is more likely a typo than an intent. Each is reported at its
//! `file:line:col` like every other config error.

use std::fmt;
use std::time::Duration;

use super::diagnostics::Diagnostics;
use super::load::SourceFile;
use super::yaml::Seg;

/// A duration as the config writes it (`200ms`, `10s`, `5m`, `1h`).
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct Human(pub Duration);

impl fmt::Display for Human {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        match ms {
            ms if ms % 3_600_000 == 0 && ms > 0 => write!(f, "{}h", ms / 3_600_000),
            ms if ms % 60_000 == 0 && ms > 0 => write!(f, "{}m", ms / 60_000),
            ms if ms % 1000 == 0 && ms > 0 => write!(f, "{}s", ms / 1000),
            ms => write!(f, "{ms}ms"),
        }
    }
}

/// The dotted name of a config path (`retry.max_attempts`).
fn name(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

impl SourceFile {
    /// An error at `path` unless `min <= value <= max`.
    pub fn check_range<T: PartialOrd + fmt::Display>(
        &self,
        diags: &mut Diagnostics,
        path: &[Seg],
        value: T,
        min: T,
        max: T,
    ) {
        if value < min || value > max {
            self.error(
                diags,
                path,
                format!(
                    "{} must be between {min} and {max}, not {value}",
                    name(path)
                ),
            );
        }
    }

    /// [`check_range`](Self::check_range) for a duration.
    pub fn check_duration(
        &self,
        diags: &mut Diagnostics,
        path: &[Seg],
        value: Duration,
        min: Duration,
        max: Duration,
    ) {
        self.check_range(diags, path, Human(value), Human(min), Human(max));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_written() {
        let h = |ms| Human(Duration::from_millis(ms)).to_string();
        assert_eq!(
            [h(0), h(200), h(10_000), h(300_000), h(7_200_000), h(1500)],
            ["0ms", "200ms", "10s", "5m", "2h", "1500ms"]
        );
    }
}
