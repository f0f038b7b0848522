//! Text forms of values, and parsing of temporal text.
//!
//! The text form of a value is the one the JSON output uses (ISO 8601
//! timestamps with `T`, `Z` for UTC; bytes as `\x` + hex like Postgres).
//! Masks hash this form, and `CAST(x AS text)` in filters yields it.

use std::fmt::Write as _;

use sluice_core::value::{days_from_civil, NEG_INFINITY_TS};
use sluice_core::value::{format_date, format_time, format_timestamp, INFINITY_DATE, INFINITY_TS, NEG_INFINITY_DATE};
use sluice_core::Value;

/// The text form of `v` (`None` for NULL and unsent values).
pub fn text_form(v: &Value) -> Option<String> {
    let mut s = String::new();
    match v {
        Value::Null | Value::Unchanged => return None,
        Value::Bool(b) => s.push_str(if *b { "true" } else { "false" }),
        Value::Int(i) => {
            let _ = write!(s, "{i}");
        }
        Value::UInt(u) => {
            let _ = write!(s, "{u}");
        }
        Value::Float(f) => float_text(*f, &mut s),
        Value::Numeric(n) | Value::Text(n) | Value::Uuid(n) | Value::Json(n) => s.push_str(n),
        Value::Bytes(b) => {
            s.push_str("\\x");
            for x in b {
                let _ = write!(s, "{x:02x}");
            }
        }
        Value::Date(d) => format_date(*d, &mut s),
        Value::Time(t) => format_time(*t, &mut s),
        Value::Timestamp(t) => format_timestamp(*t, false, &mut s),
        Value::TimestampTz(t) => format_timestamp(*t, true, &mut s),
        Value::Array(items) => {
            s.push('{');
            for (i, x) in items.iter().enumerate() {
                if i > 0 {
                    s.push(',');
                }
                match text_form(x) {
                    Some(t) => s.push_str(&t),
                    None => s.push_str("NULL"),
                }
            }
            s.push('}');
        }
    }
    Some(s)
}

/// Postgres-style float text (`NaN`, `Infinity`, shortest round-trip digits).
pub fn float_text(f: f64, s: &mut String) {
    if f.is_nan() {
        s.push_str("NaN");
    } else if f.is_infinite() {
        s.push_str(if f > 0.0 { "Infinity" } else { "-Infinity" });
    } else {
        let _ = write!(s, "{f}");
    }
}

fn num(s: &str) -> Option<i64> {
    // At most 9 digits: years stay within what Postgres stores, and no
    // product below can overflow.
    if s.is_empty() || s.len() > 9 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// `YYYY-MM-DD` (or `infinity` / `-infinity`) as days since 1970-01-01.
pub fn parse_date(s: &str) -> Option<i32> {
    let s = s.trim();
    match s.to_ascii_lowercase().as_str() {
        "infinity" => return Some(INFINITY_DATE),
        "-infinity" => return Some(NEG_INFINITY_DATE),
        _ => {}
    }
    let mut it = s.splitn(3, '-');
    let y = num(it.next()?)?;
    let m = num(it.next()?)?;
    let d = num(it.next()?)?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    let days = days_from_civil(y, m as u32, d as u32);
    // Reject dates like 2024-02-30 (they would roll over).
    if sluice_core::value::civil_from_days(days) != (y, m as u32, d as u32) {
        return None;
    }
    i32::try_from(days).ok()
}

/// `HH:MM[:SS[.ffffff]]` as microseconds since midnight.
pub fn parse_time(s: &str) -> Option<i64> {
    let s = s.trim();
    let (hms, frac) = match s.split_once('.') {
        Some((a, b)) => (a, Some(b)),
        None => (s, None),
    };
    let mut it = hms.split(':');
    let h = num(it.next()?)?;
    let m = num(it.next()?)?;
    let sec = match it.next() {
        Some(x) => num(x)?,
        None => 0,
    };
    if it.next().is_some() || h > 24 || m > 59 || sec > 60 {
        return None;
    }
    let mut micros = 0i64;
    if let Some(f) = frac {
        if f.is_empty() || f.len() > 6 || !f.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        micros = f.parse::<i64>().ok()? * 10i64.pow(6 - f.len() as u32);
    }
    Some(((h * 60 + m) * 60 + sec) * 1_000_000 + micros)
}

/// `YYYY-MM-DD[( |T)HH:MM[:SS[.ffffff]]][Z|±HH[:MM]]` as microseconds since
/// the epoch. A zone offset is applied (the result is UTC); without one the
/// text is taken as UTC (Sluice's sessions run in UTC).
pub fn parse_timestamp(s: &str) -> Option<i64> {
    let s = s.trim();
    match s.to_ascii_lowercase().as_str() {
        "infinity" => return Some(INFINITY_TS),
        "-infinity" => return Some(NEG_INFINITY_TS),
        _ => {}
    }
    let s = s.strip_suffix(['Z', 'z']).map(|t| t.trim_end()).unwrap_or(s);
    let (date, rest) = match s.find([' ', 'T', 't']) {
        Some(i) => (&s[..i], s[i + 1..].trim()),
        None => (s, ""),
    };
    let days = parse_date(date)? as i64;
    let mut offset_us = 0i64;
    let mut time = rest;
    if let Some(t) = rest.strip_suffix(['Z', 'z']) {
        time = t;
    } else if let Some(i) = rest.rfind(['+', '-']) {
        let (t, off) = (&rest[..i], &rest[i..]);
        let sign = if off.starts_with('-') { -1 } else { 1 };
        let body = &off[1..];
        if !body.is_ascii() {
            return None;
        }
        let (h, m) = match body.split_once(':') {
            Some((h, m)) => (num(h)?, num(m)?),
            None if body.len() == 4 => (num(&body[..2])?, num(&body[2..])?),
            None => (num(body)?, 0),
        };
        if h > 15 || m > 59 {
            return None;
        }
        offset_us = sign * (h * 60 + m) * 60_000_000;
        time = t.trim();
    }
    let t = if time.is_empty() { 0 } else { parse_time(time)? };
    days.checked_mul(86_400_000_000)?.checked_add(t)?.checked_sub(offset_us)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporal_parsing() {
        assert_eq!(parse_date("1970-01-02"), Some(1));
        assert_eq!(parse_date("2024-02-30"), None);
        assert_eq!(parse_date("2024-13-01"), None);
        assert_eq!(parse_time("12:34:56.5"), Some(45_296_500_000));
        assert_eq!(parse_time("25:00"), None);
        assert_eq!(parse_timestamp("1970-01-01 00:00:01"), Some(1_000_000));
        assert_eq!(parse_timestamp("1970-01-01T01:00:00+01:00"), Some(0));
        assert_eq!(parse_timestamp("1970-01-01 00:00:00-0130"), Some(5_400_000_000));
        assert_eq!(parse_timestamp("1970-01-01Z"), Some(0));
        assert_eq!(parse_timestamp("1970-01-01 00:00:00.000001"), Some(1));
        assert_eq!(parse_timestamp("infinity"), Some(INFINITY_TS));
        assert_eq!(parse_timestamp("nope"), None);
    }

    #[test]
    fn text_forms() {
        assert_eq!(text_form(&Value::Bytes(vec![0, 255])).as_deref(), Some("\\x00ff"));
        assert_eq!(text_form(&Value::Float(f64::NAN)).as_deref(), Some("NaN"));
        assert_eq!(text_form(&Value::Float(1.5)).as_deref(), Some("1.5"));
        assert_eq!(text_form(&Value::Timestamp(0)).as_deref(), Some("1970-01-01T00:00:00"));
        assert_eq!(text_form(&Value::Null), None);
        assert_eq!(text_form(&Value::Array(vec![Value::Int(1), Value::Null])).as_deref(), Some("{1,NULL}"));
    }
}
