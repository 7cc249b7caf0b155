//! Wall-clock time as milliseconds since the Unix epoch (the unit of
//! JetStream timestamps, provider modification times and dead letters),
//! and its UTC text for operators.

/// Now, in ms since the epoch (0 on a clock set before 1970).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Parses `--since`/`--until`: RFC 3339 (`2026-12-03T10:00:00Z`) or an age
/// (`15m`, `2h`, `7d` ago), into ms since the epoch.
pub fn parse_time(s: &str, now_ms: i64) -> Result<i64, String> {
    if let Ok(t) = parse_rfc3339_utc(s) {
        return Ok(t);
    }
    let s_days = s.strip_suffix('d').and_then(|n| n.parse::<u64>().ok());
    let age = match s_days {
        Some(days) => std::time::Duration::from_secs(days.saturating_mul(86_400)),
        None => crate::config::duration::parse_duration(s).map_err(|_| {
            format!("\"{s}\" is neither a time (2026-12-03T10:00:00Z) nor an age (15m, 2h, 7d)")
        })?,
    };
    Ok(now_ms.saturating_sub(i64::try_from(age.as_millis()).unwrap_or(i64::MAX)))
}

/// `YYYY-MM-DDTHH:MM:SS[.fff]Z` (UTC only: dead-letter times are UTC).
fn parse_rfc3339_utc(s: &str) -> Result<i64, ()> {
    let s = s.strip_suffix('Z').ok_or(())?;
    let (date, time) = s.split_once('T').ok_or(())?;
    let mut d = date.split('-').map(|p| p.parse::<i64>());
    let (y, m, day) = match (d.next(), d.next(), d.next(), d.next()) {
        (Some(Ok(y)), Some(Ok(m)), Some(Ok(day)), None) => (y, m, day),
        _ => return Err(()),
    };
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut t = hms.split(':').map(|p| p.parse::<i64>());
    let (h, min, sec) = match (t.next(), t.next(), t.next(), t.next()) {
        (Some(Ok(h)), Some(Ok(min)), Some(Ok(sec)), None) => (h, min, sec),
        _ => return Err(()),
    };
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || h > 23 || min > 59 || sec > 60 {
        return Err(());
    }
    let ms: i64 = match frac.len() {
        0 => 0,
        n => {
            let digits: String = frac.chars().chain("000".chars()).take(3).collect();
            if n > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
                return Err(());
            }
            digits.parse().map_err(|_| ())?
        }
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Ok(((days * 24 + h) * 60 + min) * 60_000 + sec * 1000 + ms)
}

/// Formats ms since the epoch as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn format_time(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms.rem_euclid(1000)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_and_format_both_ways() {
        let t = parse_time("2026-12-03T10:15:30.250Z", 0).unwrap();
        assert_eq!(format_time(t), "2026-12-03T10:15:30.250Z");
        assert_eq!(parse_time("1970-01-01T00:00:00Z", 0).unwrap(), 0);
        assert_eq!(
            parse_time("2000-03-01T00:00:00Z", 0).unwrap(),
            951_868_800_000
        );
        let now = 1_000_000_000;
        assert_eq!(parse_time("15m", now).unwrap(), now - 900_000);
        assert_eq!(parse_time("2d", now).unwrap(), now - 172_800_000);
        let err = parse_time("yesterday", now).unwrap_err();
        assert!(err.contains("neither a time"), "{err}");
        assert!(parse_time("2026-13-03T10:15:30Z", 0).is_err());
    }
}
