//! Calendar arithmetic on UTC milliseconds: RFC 3339 text, truncation, fields.
//!
//! Proleptic Gregorian calendar, no leap seconds, no time zone database: offsets in
//! RFC 3339 text are applied, results are always UTC. Days-from-civil and its inverse
//! follow Howard Hinnant's algorithms, exact for every `i64` millisecond.

const MS_PER_DAY: i64 = 86_400_000;

/// Days since 1970-01-01 of a civil date.
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date (year, month 1-12, day 1-31) of days since 1970-01-01.
pub fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// `2024-01-31T12:00:00.000Z`: RFC 3339, UTC, milliseconds. Years outside 0..=9999
/// are written with a sign and as many digits as they need.
pub fn format_rfc3339(ms: i64) -> String {
    let days = ms.div_euclid(MS_PER_DAY);
    let in_day = ms.rem_euclid(MS_PER_DAY);
    let (y, mo, d) = civil_from_days(days);
    let (h, mi, s, milli) = (in_day / 3_600_000, in_day / 60_000 % 60, in_day / 1000 % 60, in_day % 1000);
    let year = if (0..=9999).contains(&y) { format!("{y:04}") } else { format!("{y:+05}") };
    format!("{year}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{milli:03}Z")
}

/// Parses RFC 3339 (`YYYY-MM-DD(T| )HH:MM:SS[.fraction](Z|±HH:MM)`, `T` and `Z` in
/// either case). Fractions beyond milliseconds are truncated. `None` when it does not
/// parse or is out of range.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let num = |from: usize, n: usize| -> Option<i64> {
        let part = b.get(from..from + n)?;
        part.iter().try_fold(0i64, |acc, c| c.is_ascii_digit().then(|| acc * 10 + i64::from(c - b'0')))
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (y, mo, d) = (num(0, 4)?, num(5, 2)?, num(8, 2)?);
    let (h, mi, sec) = (num(11, 2)?, num(14, 2)?, num(17, 2)?);
    if !(1..=12).contains(&mo) || d < 1 || d > days_in_month(y, mo) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut at = 19;
    let mut milli = 0;
    if b.get(at) == Some(&b'.') {
        at += 1;
        let start = at;
        while at < b.len() && b[at].is_ascii_digit() {
            if at - start < 3 {
                milli = milli * 10 + i64::from(b[at] - b'0');
            }
            at += 1;
        }
        let n = at - start;
        if n == 0 {
            return None;
        }
        for _ in n..3 {
            milli *= 10;
        }
    }
    let offset_min = match b.get(at)? {
        b'Z' | b'z' if at + 1 == b.len() => 0,
        c @ (b'+' | b'-') if at + 6 == b.len() && b[at + 3] == b':' => {
            let (oh, om) = (num(at + 1, 2)?, num(at + 4, 2)?);
            if oh > 23 || om > 59 {
                return None;
            }
            let m = oh * 60 + om;
            if *c == b'-' {
                -m
            } else {
                m
            }
        }
        _ => return None,
    };
    let secs = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + sec - offset_min * 60;
    Some(secs * 1000 + milli)
}

pub fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

pub fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// `ts` truncated to `unit`; `None` for an unknown unit. Weeks start on Monday.
pub fn date_trunc(unit: &str, ms: i64) -> Option<i64> {
    let fixed = |n: i64| ms.div_euclid(n) * n;
    Some(match unit.to_ascii_lowercase().as_str() {
        "millisecond" => ms,
        "second" => fixed(1000),
        "minute" => fixed(60_000),
        "hour" => fixed(3_600_000),
        "day" => fixed(MS_PER_DAY),
        "week" => {
            // 1970-01-01 was a Thursday: Mondays are days = 4 (mod 7).
            let days = ms.div_euclid(MS_PER_DAY);
            (days - (days - 4).rem_euclid(7)) * MS_PER_DAY
        }
        "month" | "year" => {
            let (y, m, _) = civil_from_days(ms.div_euclid(MS_PER_DAY));
            let m = if unit.eq_ignore_ascii_case("year") { 1 } else { m };
            days_from_civil(y, m, 1) * MS_PER_DAY
        }
        _ => return None,
    })
}

/// The hour of the day, 0-23.
pub fn hour(ms: i64) -> i64 {
    ms.rem_euclid(MS_PER_DAY) / 3_600_000
}

/// ISO day of the week: 1 (Monday) to 7 (Sunday).
pub fn day_of_week(ms: i64) -> i64 {
    (ms.div_euclid(MS_PER_DAY) + 3).rem_euclid(7) + 1
}

/// A duration in the largest unit that divides it: `60000` -> `1m`, `1500` -> `1500ms`.
pub fn format_duration(ms: i64) -> String {
    for (unit, n) in [("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1_000)] {
        if ms != 0 && ms % n == 0 {
            return format!("{}{unit}", ms / n);
        }
    }
    format!("{ms}ms")
}

/// Parses what [`format_duration`] writes, or a plain integer of milliseconds.
pub fn parse_duration(s: &str) -> Option<i64> {
    let s = s.trim();
    let split = s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len());
    let n: i64 = s[..split].parse().ok()?;
    let mult = match &s[split..] {
        "" | "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    n.checked_mul(mult)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for ms in [0, 1, -1, 1_700_000_000_123, -62_135_596_800_000, 253_402_300_799_999] {
            assert_eq!(parse_rfc3339(&format_rfc3339(ms)), Some(ms), "{ms}");
        }
        assert_eq!(format_rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_rfc3339(-1), "1969-12-31T23:59:59.999Z");
        assert_eq!(parse_rfc3339("2024-02-29T10:00:00+02:00"), Some(1_709_193_600_000));
        assert_eq!(parse_rfc3339("2023-02-29T10:00:00Z"), None);
        assert_eq!(parse_rfc3339("2024-01-01T00:00:00.5Z"), Some(1_704_067_200_500));
        assert_eq!(parse_rfc3339("2024-01-01T00:00:00"), None);
        assert_eq!(parse_rfc3339("garbage"), None);
    }

    #[test]
    fn fields_and_truncation() {
        let ts = parse_rfc3339("2024-05-15T13:45:12.250Z").unwrap(); // a Wednesday
        assert_eq!(hour(ts), 13);
        assert_eq!(day_of_week(ts), 3);
        assert_eq!(date_trunc("week", ts), parse_rfc3339("2024-05-13T00:00:00Z"));
        assert_eq!(date_trunc("month", ts), parse_rfc3339("2024-05-01T00:00:00Z"));
        assert_eq!(date_trunc("YEAR", ts), parse_rfc3339("2024-01-01T00:00:00Z"));
        assert_eq!(date_trunc("fortnight", ts), None);
        assert_eq!(day_of_week(-1), 3); // 1969-12-31, a Wednesday
    }
}
