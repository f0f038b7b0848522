//! Engine-neutral typed values.
//!
//! Every source decodes into [`Value`]; every sink encodes from it. Temporal
//! values are kept as integers (days / microseconds) so columnar sinks need no
//! re-parsing; infinite timestamps and dates use the `i64`/`i32` extremes.

/// One column value of a row image.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    /// The source did not send this column (Postgres: unchanged TOASTed value
    /// in an UPDATE). It is *not* NULL: sinks must leave the stored value
    /// alone, and the JSON encoding leaves the column out of the image.
    Unchanged,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    /// Exact decimal in text form (`"-12.50"`, `"NaN"`, `"Infinity"`).
    Numeric(String),
    Text(String),
    Bytes(Vec<u8>),
    /// Days since 1970-01-01. `i32::MAX` / `i32::MIN` are +/- infinity.
    Date(i32),
    /// Microseconds since midnight (may be 24:00:00).
    Time(i64),
    /// Microseconds since 1970-01-01 00:00:00, no time zone.
    Timestamp(i64),
    /// Microseconds since 1970-01-01 00:00:00 UTC.
    TimestampTz(i64),
    /// Canonical lower-case hyphenated text form.
    Uuid(String),
    /// A JSON document, as JSON text.
    Json(String),
    Array(Vec<Value>),
}

pub const INFINITY_TS: i64 = i64::MAX;
pub const NEG_INFINITY_TS: i64 = i64::MIN;
pub const INFINITY_DATE: i32 = i32::MAX;
pub const NEG_INFINITY_DATE: i32 = i32::MIN;

impl Value {
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }
}

/// A row image: values in the order of the table schema's columns.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Row {
    pub values: Vec<Value>,
}

impl Row {
    pub fn new(values: Vec<Value>) -> Self {
        Row { values }
    }
}

/// Civil date from days since 1970-01-01 (proleptic Gregorian; year 0 = 1 BC).
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = (z - era * 146_097) as u64;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe as i64 + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Days since 1970-01-01 from a civil date (proleptic Gregorian).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = (y - era * 400) as u64;
    let m = m as u64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as u64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe as i64 - 719_468
}

/// Push `v` as at least `width` digits, zero-padded.
#[inline]
fn push_num(out: &mut String, v: u64, width: usize) {
    let mut buf = [b'0'; 20];
    let mut i = buf.len();
    let mut v = v;
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    let start = i.min(buf.len() - width.min(buf.len()));
    // The slice holds only ASCII digits.
    out.push_str(std::str::from_utf8(&buf[start..]).unwrap_or("0"));
}

fn push_year(out: &mut String, y: i64) {
    if (0..=9999).contains(&y) {
        push_num(out, y as u64, 4);
    } else if y < 0 {
        out.push('-');
        push_num(out, y.unsigned_abs(), 4);
    } else {
        out.push('+');
        push_num(out, y as u64, 1);
    }
}

/// `YYYY-MM-DD` (ISO 8601; years outside 0..=9999 get a sign).
pub fn format_date(days: i32, out: &mut String) {
    match days {
        INFINITY_DATE => out.push_str("infinity"),
        NEG_INFINITY_DATE => out.push_str("-infinity"),
        _ => {
            let (y, m, d) = civil_from_days(days as i64);
            push_year(out, y);
            out.push('-');
            push_num(out, m as u64, 2);
            out.push('-');
            push_num(out, d as u64, 2);
        }
    }
}

/// `HH:MM:SS[.ffffff]` with trailing zeros of the fraction removed. Hours may
/// exceed 23 and the value may be negative (MySQL `TIME` is an interval:
/// `-838:59:59.000001`).
pub fn format_time(micros: i64, out: &mut String) {
    if micros < 0 {
        out.push('-');
    }
    let micros = micros.unsigned_abs();
    let secs = micros / 1_000_000;
    let frac = micros % 1_000_000;
    push_num(out, secs / 3600, 2);
    out.push(':');
    push_num(out, (secs / 60) % 60, 2);
    out.push(':');
    push_num(out, secs % 60, 2);
    push_fraction(out, frac);
}

fn push_fraction(out: &mut String, mut frac: u64) {
    if frac != 0 {
        let mut width = 6;
        while frac.is_multiple_of(10) {
            frac /= 10;
            width -= 1;
        }
        out.push('.');
        push_num(out, frac, width);
    }
}

/// `YYYY-MM-DDTHH:MM:SS[.ffffff]`, plus `Z` when `utc`.
pub fn format_timestamp(micros: i64, utc: bool, out: &mut String) {
    match micros {
        INFINITY_TS => out.push_str("infinity"),
        NEG_INFINITY_TS => out.push_str("-infinity"),
        _ => {
            let days = micros.div_euclid(86_400_000_000);
            let rest = micros.rem_euclid(86_400_000_000);
            let (y, m, d) = civil_from_days(days);
            push_year(out, y);
            out.push('-');
            push_num(out, m as u64, 2);
            out.push('-');
            push_num(out, d as u64, 2);
            out.push('T');
            format_time(rest, out);
            if utc {
                out.push('Z');
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_round_trip() {
        for days in [-1_000_000i64, -719_468, -1, 0, 1, 10_957, 2_932_896, 5_000_000] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
        }
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(10_957), (2000, 1, 1));
        assert_eq!(days_from_civil(2024, 2, 29), 19_782);
    }

    #[test]
    fn formats() {
        let mut s = String::new();
        format_timestamp(1_700_000_000_123_400, true, &mut s);
        assert_eq!(s, "2023-11-14T22:13:20.1234Z");
        s.clear();
        format_time(86_400_000_000, &mut s);
        assert_eq!(s, "24:00:00");
        s.clear();
        format_time(-3_020_399_000_001, &mut s);
        assert_eq!(s, "-838:59:59.000001");
        s.clear();
        format_time(45_296_500_000, &mut s);
        assert_eq!(s, "12:34:56.5");
        s.clear();
        format_date(days_from_civil(12345, 1, 2) as i32, &mut s);
        assert_eq!(s, "+12345-01-02");
        s.clear();
        format_date(days_from_civil(7, 1, 2) as i32, &mut s);
        assert_eq!(s, "0007-01-02");
        s.clear();
        format_date(days_from_civil(-43, 3, 15) as i32, &mut s);
        assert_eq!(s, "-0043-03-15");
        s.clear();
        format_timestamp(-1, false, &mut s);
        assert_eq!(s, "1969-12-31T23:59:59.999999");
    }
}
