//! Postgres types and text forms.
//!
//! Invariant: sessions that produce the text parsed here run with
//! `DateStyle=ISO`, `TimeZone=UTC`, `extra_float_digits=3`,
//! `bytea_output=hex`, `IntervalStyle=postgres` (the connector sets them), so
//! each type has exactly one text form to parse.

use sluice_core::datetime::{parse_date, parse_time, parse_timestamp};
use sluice_core::value::{INFINITY_DATE, INFINITY_TS, NEG_INFINITY_DATE, NEG_INFINITY_TS};
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

/// Does the snapshot read this type (by OID) in COPY's binary format?
/// These are the built-in types whose binary form [`parse_binary`] decodes
/// into exactly the value its text form gives; others are read as text.
pub fn binary_decodable(oid: u32) -> bool {
    matches!(
        oid,
        16 | 17
            | 19
            | 20
            | 21
            | 23
            | 25
            | 26
            | 114
            | 700
            | 701
            | 1042
            | 1043
            | 1082
            | 1083
            | 1114
            | 1184
            | 1700
            | 2950
            | 3802
    )
}

/// Microseconds between 1970-01-01 and Postgres's epoch, 2000-01-01.
const PG_EPOCH_US: i64 = 946_684_800_000_000;
const PG_EPOCH_DAYS: i32 = 10_957;

/// Decode one value from its binary (`send`) form; `oid` must be
/// [`binary_decodable`].
pub fn parse_binary(oid: u32, b: &[u8]) -> Result<Value, ParseError> {
    let short = || ParseError(format!("binary value of type {oid} has a wrong length ({} bytes)", b.len()));
    let be = |n: usize| -> Result<&[u8], ParseError> {
        if b.len() == n {
            Ok(b)
        } else {
            Err(short())
        }
    };
    let text = || String::from_utf8(b.to_vec()).map_err(|_| ParseError(format!("type {oid}: invalid UTF-8")));
    Ok(match oid {
        16 => Value::Bool(be(1)?[0] != 0),
        21 => Value::Int(i16::from_be_bytes(be(2)?.try_into().expect("2")) as i64),
        23 => Value::Int(i32::from_be_bytes(be(4)?.try_into().expect("4")) as i64),
        26 => Value::Int(u32::from_be_bytes(be(4)?.try_into().expect("4")) as i64),
        20 => Value::Int(i64::from_be_bytes(be(8)?.try_into().expect("8"))),
        700 => {
            let f = f32::from_be_bytes(be(4)?.try_into().expect("4"));
            // As the shortest text form reads back: 1.1, not 1.100000023841858.
            Value::Float(if f.is_finite() {
                ryu::Buffer::new().format_finite(f).parse().expect("ryu")
            } else {
                f as f64
            })
        }
        701 => Value::Float(f64::from_be_bytes(be(8)?.try_into().expect("8"))),
        1700 => Value::Numeric(numeric_text(b).ok_or_else(short)?),
        17 => Value::Bytes(b.to_vec()),
        19 | 25 | 1042 | 1043 => Value::Text(text()?),
        114 => Value::Json(text()?),
        3802 => match b.split_first() {
            Some((1, rest)) => {
                Value::Json(String::from_utf8(rest.to_vec()).map_err(|_| ParseError("jsonb: invalid UTF-8".into()))?)
            }
            _ => return Err(ParseError("jsonb: unknown binary version".into())),
        },
        1082 => {
            let d = i32::from_be_bytes(be(4)?.try_into().expect("4"));
            Value::Date(if d == INFINITY_DATE || d == NEG_INFINITY_DATE { d } else { d + PG_EPOCH_DAYS })
        }
        1083 => Value::Time(i64::from_be_bytes(be(8)?.try_into().expect("8"))),
        1114 | 1184 => {
            let t = i64::from_be_bytes(be(8)?.try_into().expect("8"));
            let t = if t == INFINITY_TS || t == NEG_INFINITY_TS {
                t
            } else {
                t.checked_add(PG_EPOCH_US).ok_or_else(|| ParseError(format!("timestamp {t} is out of range")))?
            };
            if oid == 1114 {
                Value::Timestamp(t)
            } else {
                Value::TimestampTz(t)
            }
        }
        2950 => {
            const H: &[u8; 16] = b"0123456789abcdef";
            let mut s = String::with_capacity(36);
            for (i, x) in be(16)?.iter().enumerate() {
                if matches!(i, 4 | 6 | 8 | 10) {
                    s.push('-');
                }
                s.push(H[(x >> 4) as usize] as char);
                s.push(H[(x & 15) as usize] as char);
            }
            Value::Uuid(s)
        }
        _ => return Err(ParseError(format!("type {oid} has no binary decoder"))),
    })
}

/// numeric's binary form (base-10000 digits, weight, sign, display scale)
/// as its text form.
fn numeric_text(b: &[u8]) -> Option<String> {
    let word = |i: usize| b.get(i..i + 2).map(|w| u16::from_be_bytes([w[0], w[1]]));
    let (ndigits, weight, sign, dscale) = (word(0)? as usize, word(2)? as i16 as i64, word(4)?, word(6)? as usize);
    match sign {
        0xC000 => return Some("NaN".into()),
        0xD000 => return Some("Infinity".into()),
        0xF000 => return Some("-Infinity".into()),
        0x0000 | 0x4000 => {}
        _ => return None,
    }
    if b.len() != 8 + 2 * ndigits {
        return None;
    }
    // The group of 10000^e is digits[weight - e].
    let group = |e: i64| -> u16 {
        let i = weight - e;
        if i < 0 || i as usize >= ndigits {
            0
        } else {
            word(8 + 2 * i as usize).unwrap_or(0)
        }
    };
    let mut s = String::with_capacity(2 + 4 * (ndigits + 2));
    if sign == 0x4000 {
        s.push('-');
    }
    if weight < 0 {
        s.push('0');
    } else {
        s.push_str(itoa::Buffer::new().format(group(weight)));
        for e in (0..weight).rev() {
            let g = group(e);
            s.push_str(&format!("{g:04}"));
        }
    }
    if dscale > 0 {
        s.push('.');
        let mut left = dscale;
        let mut e = -1;
        while left > 0 {
            let g = format!("{:04}", group(e));
            let take = left.min(4);
            s.push_str(&g[..take]);
            left -= take;
            e -= 1;
        }
    }
    Some(s)
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
        ColumnType::Timestamp => Value::Timestamp(parse_timestamp(s).ok_or_else(|| bad("timestamp", s))?),
        ColumnType::TimestampTz => Value::TimestampTz(parse_timestamp(s).ok_or_else(|| bad("timestamptz", s))?),
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
    use sluice_core::value::days_from_civil;

    #[test]
    fn scalars() {
        assert_eq!(parse_text(&ColumnType::Int64, "-9223372036854775808").unwrap(), Value::Int(i64::MIN));
        assert!(matches!(parse_text(&ColumnType::Float64, "NaN").unwrap(), Value::Float(f) if f.is_nan()));
        assert_eq!(parse_text(&ColumnType::Float64, "-Infinity").unwrap(), Value::Float(f64::NEG_INFINITY));
        assert_eq!(parse_text(&ColumnType::Bytes, "\\x00ff").unwrap(), Value::Bytes(vec![0, 255]));
        // Temporal text in Postgres's output forms (the grammar: sluice_core::datetime).
        assert_eq!(parse_text(&ColumnType::Date, "2000-01-01").unwrap(), Value::Date(10_957));
        assert_eq!(
            parse_text(&ColumnType::Date, "0044-03-15 BC").unwrap(),
            Value::Date(days_from_civil(-43, 3, 15) as i32)
        );
        assert_eq!(parse_text(&ColumnType::Time, "24:00:00").unwrap(), Value::Time(86_400_000_000));
        assert_eq!(parse_text(&ColumnType::TimestampTz, "1970-01-01 02:00:00+02").unwrap(), Value::TimestampTz(0));
        assert_eq!(
            parse_text(&ColumnType::TimestampTz, "1970-01-01 00:00:00-05:30").unwrap(),
            Value::TimestampTz(19_800_000_000)
        );
        assert_eq!(parse_text(&ColumnType::Timestamp, "infinity").unwrap(), Value::Timestamp(INFINITY_TS));
        assert!(parse_text(&ColumnType::Date, "2024-02-30").is_err());
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
    #[test]
    fn binary_values() {
        let num = |words: &[u16]| -> String {
            let b: Vec<u8> = words.iter().flat_map(|w| w.to_be_bytes()).collect();
            match parse_binary(1700, &b).unwrap() {
                Value::Numeric(t) => t,
                v => panic!("{v:?}"),
            }
        };
        assert_eq!(num(&[2, 0, 0x4000, 4, 123, 4500]), "-123.4500");
        assert_eq!(num(&[3, 1, 0, 1, 1234, 5678, 9000]), "12345678.9");
        assert_eq!(num(&[1, (-2i16) as u16, 0, 8, 1234]), "0.00001234");
        assert_eq!(num(&[0, 0, 0, 2]), "0.00");
        assert_eq!(num(&[1, 1, 0, 0, 1]), "10000");
        assert_eq!(num(&[1, 2, 0, 0, 7]), "700000000");
        assert_eq!(num(&[0, 0, 0xC000, 0]), "NaN");
        assert_eq!(parse_binary(700, &1.1f32.to_be_bytes()).unwrap(), Value::Float(1.1));
        assert_eq!(parse_binary(1082, &(-10_957i32).to_be_bytes()).unwrap(), Value::Date(0));
        assert_eq!(parse_binary(1184, &i64::MAX.to_be_bytes()).unwrap(), Value::TimestampTz(INFINITY_TS));
        let u: Vec<u8> = (0..16).collect();
        assert_eq!(parse_binary(2950, &u).unwrap(), Value::Uuid("00010203-0405-0607-0809-0a0b0c0d0e0f".into()));
        assert_eq!(parse_binary(3802, b"\x01{}").unwrap(), Value::Json("{}".into()));
        assert!(parse_binary(23, &[0, 1]).is_err());
    }
}
