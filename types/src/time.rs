//! Time: calendar arithmetic and the timestamp text forms flow reads and writes
//! (RFC 3339 instants, dates, and Flink SQL's `YYYY-MM-DD HH:MM:SS[.fff]`, all UTC).

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

pub fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        _ => 28,
    }
}

/// Parses `YYYY-MM-DD[THH:MM[:SS[.fff]](Z|±HH:MM)]` to epoch milliseconds.
pub fn parse_timestamp(s: &str) -> Result<i64, String> {
    let num = |r: std::ops::Range<usize>| -> Result<i64, String> {
        s.get(r.clone())
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| format!("`{}` is not a number", s.get(r).unwrap_or("")))
    };
    let y = num(0..4)?;
    let m = num(5..7)? as u32;
    let d = num(8..10)? as u32;
    if !(1..=12).contains(&m) {
        return Err(format!("month {m} is not between 1 and 12"));
    }
    if d == 0 || d > days_in_month(y, m) {
        return Err(format!("day {d} does not exist in {y:04}-{m:02}"));
    }
    let mut ms = days_from_civil(y, m, d) * 86_400_000;
    if s.len() == 10 {
        return Ok(ms);
    }
    let h = num(11..13)?;
    let mi = num(14..16)?;
    if h > 23 {
        return Err(format!("hour {h} is not between 0 and 23"));
    }
    if mi > 59 {
        return Err(format!("minute {mi} is not between 0 and 59"));
    }
    ms += (h * 60 + mi) * 60_000;
    let mut rest = &s[16..];
    if let Some(r) = rest.strip_prefix(':') {
        let sec: i64 = r.get(0..2).and_then(|t| t.parse().ok()).ok_or("bad seconds")?;
        if sec > 59 {
            return Err(format!("second {sec} is not between 0 and 59"));
        }
        ms += sec * 1000;
        rest = &r[2..];
        if let Some(r) = rest.strip_prefix('.') {
            let digits = r.find(|c: char| !c.is_ascii_digit()).unwrap_or(r.len());
            let frac = &r[..digits];
            let mut v: i64 = 0;
            for (i, c) in frac.chars().take(3).enumerate() {
                v += (c as i64 - '0' as i64) * 10i64.pow(2 - i as u32);
            }
            ms += v;
            rest = &r[digits..];
        }
    }
    if rest == "Z" {
        return Ok(ms);
    }
    let sign = if rest.starts_with('-') { -1 } else { 1 };
    let oh: i64 = rest.get(1..3).and_then(|t| t.parse().ok()).ok_or("bad offset")?;
    let om: i64 = rest.get(4..6).and_then(|t| t.parse().ok()).ok_or("bad offset")?;
    if oh > 23 || om > 59 {
        return Err(format!("offset {rest} is out of range"));
    }
    Ok(ms - sign * (oh * 60 + om) * 60_000)
}

/// Parses the timestamp forms records carry: RFC 3339 (`2023-11-14T22:13:20.5Z`,
/// offsets allowed), a date, or Flink SQL's `2023-11-14 22:13:20[.fff]` (UTC).
pub fn parse_record_timestamp(s: &str) -> Result<i64, String> {
    let b = s.as_bytes();
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return Err(format!("`{s}` is not a timestamp (expected RFC 3339, e.g. 2024-03-01T12:00:00Z)"));
    }
    if b.len() > 10 && b[10] == b' ' {
        let mut t = s.replacen(' ', "T", 1);
        if !t.ends_with('Z') && !t[19.min(t.len())..].contains(['+', '-']) {
            t.push('Z');
        }
        return parse_timestamp(&t);
    }
    if b.len() > 10 && b[10] != b'T' {
        return Err(format!("`{s}` is not a timestamp (expected RFC 3339, e.g. 2024-03-01T12:00:00Z)"));
    }
    parse_timestamp(s)
}

/// Formats epoch milliseconds as RFC 3339 in UTC with milliseconds.
pub fn format_timestamp(ms: i64) -> String {
    let days = ms.div_euclid(86_400_000);
    let rem = ms.rem_euclid(86_400_000);
    let (y, m, d) = civil_from_days(days);
    let (h, mi, sec, milli) = (rem / 3_600_000, rem / 60_000 % 60, rem / 1000 % 60, rem % 1000);
    format!("{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{sec:02}.{milli:03}Z")
}

/// The date of a day count since 1970-01-01 (Howard Hinnant's algorithm).
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for ms in [0, 1_700_000_000_123, -1, -86_400_001, 253_402_300_799_999] {
            assert_eq!(parse_timestamp(&format_timestamp(ms)), Ok(ms), "{ms}");
        }
    }

    #[test]
    fn record_forms() {
        assert_eq!(parse_record_timestamp("2023-11-14T22:13:20Z"), Ok(1_700_000_000_000));
        assert_eq!(parse_record_timestamp("2023-11-14 22:13:20"), Ok(1_700_000_000_000));
        assert_eq!(parse_record_timestamp("2023-11-14 22:13:20.250"), Ok(1_700_000_000_250));
        assert!(parse_record_timestamp("yesterday").is_err());
        assert!(parse_record_timestamp("2023-11-14X22").is_err());
    }
}
