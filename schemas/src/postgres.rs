//! Postgres types and text forms.
//!
//! Invariant: sessions that produce the text parsed here run with
//! `DateStyle=ISO`, `TimeZone=UTC`, `extra_float_digits=3`,
//! `bytea_output=hex`, `IntervalStyle=postgres` (the connector sets them), so
//! each type has exactly one text form to parse.

use sluice_core::value::{days_from_civil, INFINITY_DATE, INFINITY_TS, NEG_INFINITY_DATE, NEG_INFINITY_TS};
use sluice_core::{ColumnType, Value};

/// Session settings that make text forms canonical (see module doc).
pub const SESSION_SETTINGS: &[(&str, &str)] = &[
    ("DateStyle", "ISO"),
    ("TimeZone", "UTC"),
    ("extra_float_digits", "3"),
    ("bytea_output", "hex"),
    ("IntervalStyle", "postgres"),
    ("client_encoding", "UTF8"),
];

/// Map a type OID (+ modifier) to a column type and a readable type name.
pub fn column_type(oid: u32, typmod: i32) -> (ColumnType, String) {
    use ColumnType::*;
    let scalar = |o: u32| -> Option<(ColumnType, &'static str)> {
        Some(match o {
            16 => (Bool, "boolean"),
            17 => (Bytes, "bytea"),
            18 => (Text, "\"char\""),
            19 => (Text, "name"),
            20 => (Int64, "bigint"),
            21 => (Int16, "smallint"),
            23 => (Int32, "integer"),
            25 => (Text, "text"),
            26 => (UInt32, "oid"),
            114 => (Json, "json"),
            142 => (Other, "xml"),
            700 => (Float32, "real"),
            701 => (Float64, "double precision"),
            790 => (Other, "money"),
            1042 => (Text, "character"),
            1043 => (Text, "character varying"),
            1082 => (Date, "date"),
            1083 => (Time, "time without time zone"),
            1114 => (Timestamp, "timestamp without time zone"),
            1184 => (TimestampTz, "timestamp with time zone"),
            1186 => (Other, "interval"),
            1266 => (Other, "time with time zone"),
            1560 => (Other, "bit"),
            1562 => (Other, "bit varying"),
            1700 => (Numeric { precision: None, scale: None }, "numeric"),
            2950 => (Uuid, "uuid"),
            3802 => (Json, "jsonb"),
            869 => (Other, "inet"),
            650 => (Other, "cidr"),
            829 => (Other, "macaddr"),
            _ => return None,
        })
    };
    if let Some(elem) = array_element(oid) {
        let (et, en) = scalar(elem).unwrap_or((Other, "unknown"));
        let et = with_typmod(et, elem, typmod);
        return (Array(Box::new(et)), format!("{en}[]"));
    }
    match scalar(oid) {
        Some((t, name)) => {
            let t = with_typmod(t, oid, typmod);
            let name = match (&t, oid) {
                (Numeric { precision: Some(p), scale: Some(s) }, _) => format!("numeric({p},{s})"),
                (_, 1042 | 1043) if typmod >= 4 => format!("{name}({})", typmod - 4),
                _ => name.to_string(),
            };
            (t, name)
        }
        None => (Other, format!("oid:{oid}")),
    }
}

fn with_typmod(t: ColumnType, oid: u32, typmod: i32) -> ColumnType {
    if oid == 1700 && typmod >= 4 {
        let m = typmod - 4;
        let precision = ((m >> 16) & 0xffff) as u32;
        // Postgres 15 allows negative scales (11-bit signed).
        let scale = ((m & 0x7ff) ^ 1024) - 1024;
        if scale >= 0 && precision >= 1 {
            return ColumnType::Numeric { precision: Some(precision), scale: Some(scale as u32) };
        }
    }
    t
}

/// Element OID of a built-in array type.
pub fn array_element(oid: u32) -> Option<u32> {
    Some(match oid {
        1000 => 16,
        1001 => 17,
        1002 => 18,
        1003 => 19,
        1016 => 20,
        1005 => 21,
        1007 => 23,
        1009 => 25,
        1028 => 26,
        199 => 114,
        143 => 142,
        1021 => 700,
        1022 => 701,
        791 => 790,
        1014 => 1042,
        1015 => 1043,
        1182 => 1082,
        1183 => 1083,
        1115 => 1114,
        1185 => 1184,
        1187 => 1186,
        1270 => 1266,
        1561 => 1560,
        1563 => 1562,
        1231 => 1700,
        2951 => 2950,
        3807 => 3802,
        1041 => 869,
        651 => 650,
        1040 => 829,
        _ => return None,
    })
}

#[derive(Debug, PartialEq)]
pub struct ParseError(pub String);

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn bad(what: &str, s: &str) -> ParseError {
    ParseError(format!("invalid {what} text {s:?}"))
}

/// Parse one value from its Postgres text form.
pub fn parse_text(ty: &ColumnType, s: &str) -> Result<Value, ParseError> {
    Ok(match ty {
        ColumnType::Bool => match s {
            "t" | "true" => Value::Bool(true),
            "f" | "false" => Value::Bool(false),
            _ => return Err(bad("boolean", s)),
        },
        ColumnType::Int16 | ColumnType::Int32 | ColumnType::Int64 | ColumnType::UInt32 => {
            Value::Int(s.parse().map_err(|_| bad("integer", s))?)
        }
        ColumnType::UInt64 => Value::UInt(s.parse().map_err(|_| bad("unsigned integer", s))?),
        ColumnType::Float32 | ColumnType::Float64 => Value::Float(s.parse().map_err(|_| bad("float", s))?),
        ColumnType::Numeric { .. } => Value::Numeric(s.to_string()),
        ColumnType::Text | ColumnType::Other => Value::Text(s.to_string()),
        ColumnType::Bytes => Value::Bytes(parse_bytea(s).ok_or_else(|| bad("bytea", s))?),
        ColumnType::Date => Value::Date(parse_date(s).ok_or_else(|| bad("date", s))?),
        ColumnType::Time => Value::Time(parse_time(s).ok_or_else(|| bad("time", s))?),
        ColumnType::Timestamp => Value::Timestamp(parse_timestamp(s, false).ok_or_else(|| bad("timestamp", s))?),
        ColumnType::TimestampTz => Value::TimestampTz(parse_timestamp(s, true).ok_or_else(|| bad("timestamptz", s))?),
        ColumnType::Uuid => Value::Uuid(s.to_ascii_lowercase()),
        ColumnType::Json => Value::Json(s.to_string()),
        ColumnType::Array(elem) => parse_array(elem, s)?,
    })
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// `\x0102...` (hex output) or the legacy escape format.
pub fn parse_bytea(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    if let Some(hex) = s.strip_prefix("\\x") {
        let h = hex.as_bytes();
        if h.len() % 2 != 0 {
            return None;
        }
        let mut out = Vec::with_capacity(h.len() / 2);
        for pair in h.chunks_exact(2) {
            out.push(hex_val(pair[0])? << 4 | hex_val(pair[1])?);
        }
        return Some(out);
    }
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            if b.get(i + 1) == Some(&b'\\') {
                out.push(b'\\');
                i += 2;
            } else {
                let oct = b.get(i + 1..i + 4)?;
                let mut v: u32 = 0;
                for &d in oct {
                    if !(b'0'..=b'7').contains(&d) {
                        return None;
                    }
                    v = v * 8 + (d - b'0') as u32;
                }
                out.push(v as u8);
                i += 4;
            }
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

fn digits(s: &[u8]) -> Option<i64> {
    if s.is_empty() || s.len() > 18 {
        return None;
    }
    let mut v = 0i64;
    for &c in s {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v * 10 + (c - b'0') as i64;
    }
    Some(v)
}

/// `YYYY-MM-DD[ BC]` → days since 1970-01-01.
pub fn parse_date(s: &str) -> Option<i32> {
    match s {
        "infinity" => return Some(INFINITY_DATE),
        "-infinity" => return Some(NEG_INFINITY_DATE),
        _ => {}
    }
    let (body, bc) = match s.strip_suffix(" BC") {
        Some(b) => (b, true),
        None => (s, false),
    };
    let days = parse_ymd(body.as_bytes(), bc)?;
    i32::try_from(days).ok()
}

fn parse_ymd(b: &[u8], bc: bool) -> Option<i64> {
    // Year may have more than 4 digits.
    let dash = b.iter().position(|&c| c == b'-')?;
    let mut y = digits(&b[..dash])?;
    if bc {
        y = 1 - y;
    }
    let rest = &b[dash + 1..];
    if rest.len() != 5 || rest[2] != b'-' {
        return None;
    }
    let m = digits(&rest[..2])? as u32;
    let d = digits(&rest[3..])? as u32;
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    Some(days_from_civil(y, m, d))
}

/// `HH:MM:SS[.ffffff]` → microseconds.
pub fn parse_time(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 8 || b[2] != b':' || b[5] != b':' {
        return None;
    }
    let h = digits(&b[..2])?;
    let m = digits(&b[3..5])?;
    let sec = digits(&b[6..8])?;
    let mut us = 0;
    if b.len() > 8 {
        if b[8] != b'.' || b.len() > 15 || b.len() == 9 {
            return None;
        }
        let frac = &b[9..];
        us = digits(frac)? * 10i64.pow(6 - frac.len() as u32);
    }
    Some(((h * 60 + m) * 60 + sec) * 1_000_000 + us)
}

/// `YYYY-MM-DD HH:MM:SS[.ffffff][+HH[:MM[:SS]]][ BC]` → microseconds since the epoch (UTC when `tz`).
pub fn parse_timestamp(s: &str, tz: bool) -> Option<i64> {
    match s {
        "infinity" => return Some(INFINITY_TS),
        "-infinity" => return Some(NEG_INFINITY_TS),
        _ => {}
    }
    let (body, bc) = match s.strip_suffix(" BC") {
        Some(b) => (b, true),
        None => (s, false),
    };
    let (date, time) = body.split_once(' ')?;
    let days = parse_ymd(date.as_bytes(), bc)?;
    let (time, offset_secs) = if tz {
        let idx = time.rfind(['+', '-'])?;
        let (t, off) = time.split_at(idx);
        let sign = if off.starts_with('-') { -1 } else { 1 };
        let mut secs = 0i64;
        for (i, part) in off[1..].split(':').enumerate() {
            let v = digits(part.as_bytes())?;
            secs += v * [3600, 60, 1].get(i)?;
        }
        (t, sign * secs)
    } else {
        (time, 0)
    };
    let us = parse_time(time)?;
    Some(days * 86_400_000_000 + us - offset_secs * 1_000_000)
}

/// Parse an array literal (`{1,2,NULL}`, `{{"a b",c},{d,e}}`, `[0:1]={1,2}`).
pub fn parse_array(elem: &ColumnType, s: &str) -> Result<Value, ParseError> {
    let mut body = s;
    if body.starts_with('[') {
        body = &body[body.find('=').ok_or_else(|| bad("array", s))? + 1..];
    }
    let b = body.as_bytes();
    let mut pos = 0;
    let v = parse_array_level(elem, body, b, &mut pos).ok_or_else(|| bad("array", s))??;
    if pos != b.len() {
        return Err(bad("array", s));
    }
    Ok(v)
}

fn parse_array_level(elem: &ColumnType, s: &str, b: &[u8], pos: &mut usize) -> Option<Result<Value, ParseError>> {
    if b.get(*pos) != Some(&b'{') {
        return None;
    }
    *pos += 1;
    let mut items = Vec::new();
    if b.get(*pos) == Some(&b'}') {
        *pos += 1;
        return Some(Ok(Value::Array(items)));
    }
    loop {
        match b.get(*pos)? {
            b'{' => match parse_array_level(elem, s, b, pos)? {
                Ok(v) => items.push(v),
                Err(e) => return Some(Err(e)),
            },
            b'"' => {
                *pos += 1;
                let mut text = String::new();
                let start = *pos;
                let mut seg = start;
                loop {
                    match b.get(*pos)? {
                        b'\\' => {
                            text.push_str(&s[seg..*pos]);
                            *pos += 1;
                            let c = s[*pos..].chars().next()?;
                            text.push(c);
                            *pos += c.len_utf8();
                            seg = *pos;
                        }
                        b'"' => {
                            text.push_str(&s[seg..*pos]);
                            *pos += 1;
                            break;
                        }
                        _ => *pos += 1,
                    }
                }
                match parse_text(elem, &text) {
                    Ok(v) => items.push(v),
                    Err(e) => return Some(Err(e)),
                }
            }
            _ => {
                let start = *pos;
                let mut text = String::new();
                let mut seg = start;
                let mut escaped = false;
                while let Some(&c) = b.get(*pos) {
                    if c == b',' || c == b'}' {
                        break;
                    }
                    if c == b'\\' {
                        text.push_str(&s[seg..*pos]);
                        *pos += 1;
                        let ch = s[*pos..].chars().next()?;
                        text.push(ch);
                        *pos += ch.len_utf8();
                        seg = *pos;
                        escaped = true;
                    } else {
                        *pos += 1;
                    }
                }
                text.push_str(&s[seg..*pos]);
                let text = text.trim();
                if !escaped && text.eq_ignore_ascii_case("NULL") {
                    items.push(Value::Null);
                } else {
                    match parse_text(elem, text) {
                        Ok(v) => items.push(v),
                        Err(e) => return Some(Err(e)),
                    }
                }
            }
        }
        match b.get(*pos)? {
            b',' => *pos += 1,
            b'}' => {
                *pos += 1;
                return Some(Ok(Value::Array(items)));
            }
            _ => return None,
        }
    }
}

/// Split one line of `COPY ... TO STDOUT` text output into fields, undoing
/// its backslash escapes. `None` is SQL NULL (`\N`). `out` is cleared first.
pub fn split_copy_line<'a>(line: &'a [u8], out: &mut Vec<Option<std::borrow::Cow<'a, str>>>) -> Result<(), ParseError> {
    use std::borrow::Cow;
    out.clear();
    let text = std::str::from_utf8(line).map_err(|_| ParseError("COPY data is not UTF-8".into()))?;
    // One pass: split at tabs and note backslashes (both ASCII, so every
    // split point is a char boundary of the validated text).
    let bytes = text.as_bytes();
    let mut start = 0;
    let mut escaped = false;
    for i in 0..=bytes.len() {
        if i < bytes.len() && bytes[i] != b'\t' {
            escaped |= bytes[i] == b'\\';
            continue;
        }
        let field = &text[start..i];
        start = i + 1;
        if !escaped {
            out.push(Some(Cow::Borrowed(field)));
            continue;
        }
        escaped = false;
        if field == "\\N" {
            out.push(None);
            continue;
        }
        let field = field.as_bytes();
        let mut v = Vec::with_capacity(field.len());
        let mut j = 0;
        while j < field.len() {
            let c = field[j];
            if c != b'\\' || j + 1 >= field.len() {
                v.push(c);
                j += 1;
                continue;
            }
            let n = field[j + 1];
            j += 2;
            match n {
                b'b' => v.push(8),
                b'f' => v.push(12),
                b'n' => v.push(b'\n'),
                b'r' => v.push(b'\r'),
                b't' => v.push(b'\t'),
                b'v' => v.push(11),
                b'0'..=b'7' => {
                    let mut val = (n - b'0') as u32;
                    let mut k = 0;
                    while k < 2 && j < field.len() && (b'0'..=b'7').contains(&field[j]) {
                        val = val * 8 + (field[j] - b'0') as u32;
                        j += 1;
                        k += 1;
                    }
                    v.push(val as u8);
                }
                b'x' => {
                    let mut val = 0u8;
                    let mut k = 0;
                    while k < 2 && j < field.len() {
                        match hex_val(field[j]) {
                            Some(h) => {
                                val = val * 16 + h;
                                j += 1;
                                k += 1;
                            }
                            None => break,
                        }
                    }
                    v.push(val);
                }
                other => v.push(other),
            }
        }
        let s = String::from_utf8(v).map_err(|_| ParseError("COPY data is not UTF-8".into()))?;
        out.push(Some(Cow::Owned(s)));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalars() {
        assert_eq!(parse_text(&ColumnType::Int64, "-9223372036854775808").unwrap(), Value::Int(i64::MIN));
        assert!(matches!(parse_text(&ColumnType::Float64, "NaN").unwrap(), Value::Float(f) if f.is_nan()));
        assert_eq!(parse_text(&ColumnType::Float64, "-Infinity").unwrap(), Value::Float(f64::NEG_INFINITY));
        assert_eq!(parse_text(&ColumnType::Bytes, "\\x00ff").unwrap(), Value::Bytes(vec![0, 255]));
        assert_eq!(parse_date("2000-01-01"), Some(10_957));
        assert_eq!(parse_date("0044-03-15 BC"), Some(days_from_civil(-43, 3, 15) as i32));
        assert_eq!(parse_time("24:00:00"), Some(86_400_000_000));
        assert_eq!(parse_time("01:02:03.5"), Some(3_723_500_000));
        assert_eq!(parse_timestamp("1970-01-01 00:00:01+00", true), Some(1_000_000));
        assert_eq!(parse_timestamp("1970-01-01 02:00:00+02", true), Some(0));
        assert_eq!(parse_timestamp("1970-01-01 00:00:00-05:30", true), Some(19_800_000_000));
        assert_eq!(parse_timestamp("infinity", false), Some(INFINITY_TS));
        assert_eq!(parse_timestamp("12345-01-01 00:00:00", false).map(|v| v > 0), Some(true));
    }

    #[test]
    fn numeric_typmod() {
        let (t, name) = column_type(1700, ((10 << 16) | 2) + 4);
        assert_eq!(t, ColumnType::Numeric { precision: Some(10), scale: Some(2) });
        assert_eq!(name, "numeric(10,2)");
        assert_eq!(column_type(1700, -1).0, ColumnType::Numeric { precision: None, scale: None });
        assert_eq!(column_type(1043, 24).1, "character varying(20)");
    }

    #[test]
    fn arrays() {
        let v = parse_array(&ColumnType::Text, r#"{a,"b c","d\"e",NULL,"NULL"}"#).unwrap();
        assert_eq!(
            v,
            Value::Array(vec![
                Value::Text("a".into()),
                Value::Text("b c".into()),
                Value::Text("d\"e".into()),
                Value::Null,
                Value::Text("NULL".into())
            ])
        );
        let v = parse_array(&ColumnType::Int32, "{{1,2},{3,4}}").unwrap();
        assert_eq!(
            v,
            Value::Array(vec![
                Value::Array(vec![Value::Int(1), Value::Int(2)]),
                Value::Array(vec![Value::Int(3), Value::Int(4)])
            ])
        );
        assert_eq!(
            parse_array(&ColumnType::Int32, "[0:1]={1,2}").unwrap(),
            Value::Array(vec![Value::Int(1), Value::Int(2)])
        );
        assert_eq!(parse_array(&ColumnType::Int32, "{}").unwrap(), Value::Array(vec![]));
        assert!(parse_array(&ColumnType::Int32, "{1,2").is_err());
    }

    #[test]
    fn copy_lines() {
        let mut out = Vec::new();
        split_copy_line(b"1\t\\N\ta\\tb\\\\c\\n\t\\101", &mut out).unwrap();
        let got: Vec<Option<String>> = out.iter().map(|f| f.as_ref().map(|s| s.to_string())).collect();
        assert_eq!(got, vec![Some("1".into()), None, Some("a\tb\\c\n".into()), Some("A".into())]);
    }
}
