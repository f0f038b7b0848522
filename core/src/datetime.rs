//! One text grammar for dates, times and timestamps, used wherever Sluice
//! reads them as text: Postgres's output (pgoutput and text `COPY` values,
//! in `sluice-schemas`) and literals in transform expressions
//! (`sluice-transforms`). It is a superset of what Postgres prints:
//!
//! ```text
//! date      = year "-" month "-" day [" BC"]                | "infinity" | "-infinity"
//! time      = hour ":" minute [":" second ["." fraction]]
//! timestamp = date [(" " | "T") time] [zone] [" BC"]         | "infinity" | "-infinity"
//! zone      = "Z" | ("+" | "-") hh [":" mm [":" ss]] | ("+" | "-") hhmm
//! ```
//!
//! Years have 1 to 9 digits; month, day, hour, minute and second 1 or 2; a
//! fraction 1 to 6 (microseconds). Hours go to 24 (`24:00:00` is the end of
//! a day), seconds to 60 (a leap second), zone offsets below 16 hours.
//!
//! Invariants:
//! - Nothing is guessed or rolled over: a day its month does not have
//!   (`2024-02-30`), an out-of-range field or trailing text is `None`.
//! - A zone offset is applied, so timestamps come out in UTC; text without
//!   one is taken as UTC (Sluice's sessions run in UTC).
//! - `infinity` and `-infinity` (any case) map to the `INFINITY_*` sentinels.
//! - No allocation: these run once per temporal value of every change.

use crate::value::{civil_from_days, days_from_civil, INFINITY_DATE, INFINITY_TS, NEG_INFINITY_DATE, NEG_INFINITY_TS};

/// A date as days since 1970-01-01.
pub fn parse_date(s: &str) -> Option<i32> {
    let s = s.trim();
    if let Some(v) = infinity(s, INFINITY_DATE, NEG_INFINITY_DATE) {
        return Some(v);
    }
    let (body, bc) = strip_bc(s);
    i32::try_from(ymd(body, bc)?).ok()
}

/// A time of day as microseconds since midnight.
pub fn parse_time(s: &str) -> Option<i64> {
    let s = s.trim();
    let (hms, fraction) = match s.split_once('.') {
        Some((a, b)) => (a, Some(b)),
        None => (s, None),
    };
    let mut it = hms.split(':');
    let h = number(it.next()?, 2)?;
    let m = number(it.next()?, 2)?;
    let sec = match it.next() {
        Some(x) => number(x, 2)?,
        None => 0,
    };
    if it.next().is_some() || h > 24 || m > 59 || sec > 60 {
        return None;
    }
    let micros = match fraction {
        Some(f) => number(f, 6)? * 10i64.pow(6 - f.len() as u32),
        None => 0,
    };
    Some(((h * 60 + m) * 60 + sec) * 1_000_000 + micros)
}

/// A timestamp as microseconds since 1970-01-01 00:00 UTC.
pub fn parse_timestamp(s: &str) -> Option<i64> {
    let s = s.trim();
    if let Some(v) = infinity(s, INFINITY_TS, NEG_INFINITY_TS) {
        return Some(v);
    }
    let (s, bc) = strip_bc(s);
    let s = s.strip_suffix(['Z', 'z']).map(str::trim_end).unwrap_or(s);
    let (date, rest) = match s.find([' ', 'T', 't']) {
        Some(i) => (&s[..i], s[i + 1..].trim()),
        None => (s, ""),
    };
    let (time, offset_us) = split_zone(rest)?;
    let micros = if time.is_empty() { 0 } else { parse_time(time)? };
    ymd(date, bc)?.checked_mul(86_400_000_000)?.checked_add(micros)?.checked_sub(offset_us)
}

fn infinity<T>(s: &str, positive: T, negative: T) -> Option<T> {
    if s.eq_ignore_ascii_case("infinity") {
        Some(positive)
    } else if s.eq_ignore_ascii_case("-infinity") {
        Some(negative)
    } else {
        None
    }
}

/// Text without its ` BC` suffix, and whether it had one.
fn strip_bc(s: &str) -> (&str, bool) {
    match s.strip_suffix(" BC") {
        Some(body) => (body.trim_end(), true),
        None => (s, false),
    }
}

/// 1 to `max_digits` ASCII digits.
fn number(s: &str, max_digits: usize) -> Option<i64> {
    if s.is_empty() || s.len() > max_digits || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(s.bytes().fold(0i64, |v, b| v * 10 + (b - b'0') as i64))
}

/// Days since 1970-01-01 of `year-month-day` (year `1 - year` when `bc`).
fn ymd(s: &str, bc: bool) -> Option<i64> {
    let mut it = s.splitn(3, '-');
    let year = number(it.next()?, 9)?;
    let month = number(it.next()?, 2)? as u32;
    let day = number(it.next()?, 2)? as u32;
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || (bc && year == 0) {
        return None;
    }
    let year = if bc { 1 - year } else { year };
    let days = days_from_civil(year, month, day);
    (civil_from_days(days) == (year, month, day)).then_some(days)
}

/// Split a trailing zone offset off a time: the time text and the offset in
/// microseconds (0 without one).
fn split_zone(rest: &str) -> Option<(&str, i64)> {
    let Some(i) = rest.rfind(['+', '-']) else { return Some((rest, 0)) };
    let (time, zone) = (rest[..i].trim_end(), &rest[i + 1..]);
    let sign = if rest.as_bytes()[i] == b'-' { -1 } else { 1 };
    let (h, m, s) = if zone.len() == 4 && zone.is_ascii() && !zone.contains(':') {
        (number(&zone[..2], 2)?, number(&zone[2..], 2)?, 0)
    } else {
        let mut it = zone.split(':');
        let h = number(it.next()?, 2)?;
        let m = it.next().map_or(Some(0), |x| number(x, 2))?;
        let s = it.next().map_or(Some(0), |x| number(x, 2))?;
        if it.next().is_some() {
            return None;
        }
        (h, m, s)
    };
    if h > 15 || m > 59 || s > 59 {
        return None;
    }
    Some((time, sign * ((h * 60 + m) * 60 + s) * 1_000_000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(parse_date("1970-01-02"), Some(1));
        assert_eq!(parse_date("2000-01-01"), Some(10_957));
        assert_eq!(parse_date(" 2024-2-29 "), Some(days_from_civil(2024, 2, 29) as i32));
        assert_eq!(parse_date("0044-03-15 BC"), Some(days_from_civil(-43, 3, 15) as i32));
        assert_eq!(parse_date("Infinity"), Some(INFINITY_DATE));
        assert_eq!(parse_date("-infinity"), Some(NEG_INFINITY_DATE));
        for bad in [
            "2024-02-30",
            "2023-02-29",
            "2024-13-01",
            "2024-00-10",
            "2024-01-32",
            "0000-01-01 BC",
            "2024-01",
            "2024-01-01x",
            "",
            "nope",
            "2024-001-01",
        ] {
            assert_eq!(parse_date(bad), None, "{bad}");
        }
    }

    #[test]
    fn times() {
        assert_eq!(parse_time("12:34:56.5"), Some(45_296_500_000));
        assert_eq!(parse_time("01:02:03.5"), Some(3_723_500_000));
        assert_eq!(parse_time("9:30"), Some(34_200_000_000));
        assert_eq!(parse_time("24:00:00"), Some(86_400_000_000));
        assert_eq!(parse_time("23:59:60.999999"), Some(86_400_999_999));
        for bad in ["25:00", "12:60", "12:00:61", "12:00:00.", "12:00:00.1234567", "12", "12:00:00:00", "1a:00"] {
            assert_eq!(parse_time(bad), None, "{bad}");
        }
    }

    #[test]
    fn timestamps() {
        assert_eq!(parse_timestamp("1970-01-01 00:00:01"), Some(1_000_000));
        assert_eq!(parse_timestamp("1970-01-01T01:00:00+01:00"), Some(0));
        assert_eq!(parse_timestamp("1970-01-01 02:00:00+02"), Some(0));
        assert_eq!(parse_timestamp("1970-01-01 00:00:00-0130"), Some(5_400_000_000));
        assert_eq!(parse_timestamp("1970-01-01 00:00:00-05:30"), Some(19_800_000_000));
        assert_eq!(parse_timestamp("1970-01-01Z"), Some(0));
        assert_eq!(parse_timestamp("1970-01-01 00:00:00.000001"), Some(1));
        assert_eq!(parse_timestamp("infinity"), Some(INFINITY_TS));
        assert_eq!(parse_timestamp("-Infinity"), Some(NEG_INFINITY_TS));
        assert_eq!(parse_timestamp("12345-01-01 00:00:00").map(|v| v > 0), Some(true));
        // Postgres prints local mean time offsets with seconds, and BC last.
        let lmt = days_from_civil(1850, 1, 1) * 86_400_000_000 - (53 * 60 + 28) * 1_000_000;
        assert_eq!(parse_timestamp("1850-01-01 00:00:00+00:53:28"), Some(lmt));
        let bc = days_from_civil(-43, 3, 15) * 86_400_000_000 + 12 * 3_600_000_000;
        assert_eq!(parse_timestamp("0044-03-15 12:00:00+00 BC"), Some(bc));
        assert_eq!(parse_timestamp("0044-03-15 12:00:00 BC"), Some(bc));
        for bad in [
            "nope",
            "2024-02-30 00:00:00",
            "2024-01-01 25:00:00",
            "2024-01-01 00:00:00+16",
            "2024-01-01 00:00+1:2:3:4",
            "2024-01-01 00:00:00+é1",
        ] {
            assert_eq!(parse_timestamp(bad), None, "{bad}");
        }
    }

    #[test]
    fn extremes_do_not_overflow() {
        assert_eq!(parse_timestamp("999999999-12-31 23:59:59"), None);
        assert!(parse_date("999999999-12-31").is_none());
    }
}
