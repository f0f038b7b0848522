//! Snapshot rows into a Postgres target through `COPY ... FROM STDIN`.
//!
//! Invariants:
//! - A table whose every target column has a binary encoding here is loaded
//!   with `FORMAT binary` (each value in the type's `recv` format); any other
//!   table with text format (each value in the type's input syntax, escaped
//!   for COPY). Both carry every column of the row, NULLs included.
//! - Encoding never guesses: a value that does not match its column's
//!   encoding is an error naming the column, never a silently different value.

use sluice_core::{ColumnType, Value};
use sluice_schemas::target::{pg_text, Conv};

/// Microseconds between 1970-01-01 and Postgres's epoch, 2000-01-01.
const PG_EPOCH_US: i64 = 946_684_800_000_000;
const PG_EPOCH_DAYS: i32 = 10_957;

/// The binary wire encoding of one target column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enc {
    Bool,
    Int2,
    Int4,
    Int8,
    Float4,
    Float8,
    Numeric,
    /// Any text-like type (text, varchar, bpchar): the UTF-8 bytes.
    Text,
    Bytea,
    Date,
    Time,
    /// timestamp and timestamptz (both µs since 2000-01-01).
    Timestamp,
    Uuid,
    Json,
    Jsonb,
    /// A MySQL TIME (microseconds) into an `interval`.
    Interval,
}

/// The binary encoding for a target column type (as the sink declares it)
/// holding values of the source's logical type, or `None` when only the
/// text format will do.
pub fn encoding(target_type: &str, conv: Conv, ty: &ColumnType) -> Option<Enc> {
    use ColumnType as T;
    if conv == Conv::IntToBool {
        return Some(Enc::Bool);
    }
    let t = target_type.to_ascii_lowercase();
    if t.ends_with("[]") {
        return None;
    }
    let base = t.split('(').next().unwrap_or("").trim();
    let time = t.starts_with("time") && !t.starts_with("timestamp") && !t.contains("with time zone");
    let stamp = t.starts_with("timestamp") || t == "timestamptz";
    Some(match (base, ty) {
        ("boolean" | "bool", T::Bool) => Enc::Bool,
        ("smallint" | "int2", T::Int16) => Enc::Int2,
        ("integer" | "int" | "int4", T::Int16 | T::Int32) => Enc::Int4,
        ("bigint" | "int8", T::Int16 | T::Int32 | T::Int64 | T::UInt32) => Enc::Int8,
        ("real" | "float4", T::Float32) => Enc::Float4,
        ("double precision" | "float8", T::Float32 | T::Float64) => Enc::Float8,
        ("numeric" | "decimal", T::Numeric { .. } | T::UInt64) => Enc::Numeric,
        ("text" | "character varying" | "varchar" | "character" | "char" | "bpchar", T::Text | T::Other) => Enc::Text,
        ("bytea", T::Bytes) => Enc::Bytea,
        ("date", T::Date) => Enc::Date,
        ("uuid", T::Uuid) => Enc::Uuid,
        ("json", T::Json) => Enc::Json,
        ("jsonb", T::Json) => Enc::Jsonb,
        ("interval", T::Time) => Enc::Interval,
        (_, T::Time) if time => Enc::Time,
        (_, T::Timestamp | T::TimestampTz) if stamp => Enc::Timestamp,
        _ => return None,
    })
}

/// The 19-byte header of a binary COPY stream.
pub fn binary_header(out: &mut Vec<u8>) {
    out.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
    out.extend_from_slice(&0i32.to_be_bytes());
    out.extend_from_slice(&0i32.to_be_bytes());
}

/// The trailer of a binary COPY stream.
pub fn binary_trailer(out: &mut Vec<u8>) {
    out.extend_from_slice(&(-1i16).to_be_bytes());
}

/// One row in binary COPY format (every column must have an encoding).
pub fn binary_row(out: &mut Vec<u8>, row: &[Value], encs: &[Option<Enc>]) -> Result<(), String> {
    out.extend_from_slice(&(row.len() as i16).to_be_bytes());
    for (i, (v, e)) in row.iter().zip(encs).enumerate() {
        let e = e.ok_or_else(|| format!("column {} has no binary encoding", i + 1))?;
        field(v, e, out).map_err(|m| format!("column {}: {m}", i + 1))?;
    }
    Ok(())
}

/// The header of a one-dimensional binary array of `n` elements of type
/// `elem_oid` (the elements follow, each a [`field`]).
pub fn array_header(n: usize, nulls: bool, elem_oid: u32, out: &mut Vec<u8>) {
    out.extend_from_slice(&1i32.to_be_bytes());
    out.extend_from_slice(&(nulls as i32).to_be_bytes());
    out.extend_from_slice(&elem_oid.to_be_bytes());
    out.extend_from_slice(&(n as i32).to_be_bytes());
    out.extend_from_slice(&1i32.to_be_bytes());
}

/// One length-prefixed value (-1 for NULL), as rows and arrays hold them.
pub fn field(v: &Value, e: Enc, out: &mut Vec<u8>) -> Result<(), String> {
    if matches!(v, Value::Null | Value::Unchanged) {
        out.extend_from_slice(&(-1i32).to_be_bytes());
        return Ok(());
    }
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    encode(v, e, out)?;
    let len = (out.len() - at - 4) as i32;
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
    Ok(())
}

fn encode(v: &Value, e: Enc, out: &mut Vec<u8>) -> Result<(), String> {
    match (e, v) {
        (Enc::Bool, Value::Bool(b)) => out.push(*b as u8),
        (Enc::Bool, Value::Int(i)) => out.push((*i != 0) as u8),
        (Enc::Int2, Value::Int(i)) => out.extend_from_slice(
            &i16::try_from(*i).map_err(|_| format!("{i} is out of range for smallint"))?.to_be_bytes(),
        ),
        (Enc::Int4, Value::Int(i)) => out.extend_from_slice(
            &i32::try_from(*i).map_err(|_| format!("{i} is out of range for integer"))?.to_be_bytes(),
        ),
        (Enc::Int8, Value::Int(i)) => out.extend_from_slice(&i.to_be_bytes()),
        (Enc::Int8, Value::UInt(u)) => out.extend_from_slice(
            &i64::try_from(*u).map_err(|_| format!("{u} is out of range for bigint"))?.to_be_bytes(),
        ),
        (Enc::Float4, Value::Float(f)) => out.extend_from_slice(&(*f as f32).to_be_bytes()),
        (Enc::Float8, Value::Float(f)) => out.extend_from_slice(&f.to_be_bytes()),
        (Enc::Numeric, Value::Numeric(t)) => numeric(t, out)?,
        (Enc::Numeric, Value::Int(i)) => numeric(itoa::Buffer::new().format(*i), out)?,
        (Enc::Numeric, Value::UInt(u)) => numeric(itoa::Buffer::new().format(*u), out)?,
        (Enc::Text | Enc::Json, Value::Text(t) | Value::Json(t) | Value::Uuid(t) | Value::Numeric(t)) => {
            out.extend_from_slice(t.as_bytes())
        }
        (Enc::Jsonb, Value::Json(t) | Value::Text(t)) => {
            out.push(1);
            out.extend_from_slice(t.as_bytes());
        }
        (Enc::Bytea, Value::Bytes(b)) => out.extend_from_slice(b),
        (Enc::Date, Value::Date(d)) => {
            let d = if *d == i32::MAX || *d == i32::MIN { *d } else { d - PG_EPOCH_DAYS };
            out.extend_from_slice(&d.to_be_bytes())
        }
        (Enc::Time, Value::Time(t)) => out.extend_from_slice(&t.to_be_bytes()),
        (Enc::Timestamp, Value::Timestamp(t) | Value::TimestampTz(t)) => {
            let t = if *t == i64::MAX || *t == i64::MIN { *t } else { t - PG_EPOCH_US };
            out.extend_from_slice(&t.to_be_bytes())
        }
        (Enc::Interval, Value::Time(t)) => {
            out.extend_from_slice(&t.to_be_bytes());
            out.extend_from_slice(&0i32.to_be_bytes());
            out.extend_from_slice(&0i32.to_be_bytes());
        }
        (Enc::Uuid, Value::Uuid(t) | Value::Text(t)) => uuid(t, out)?,
        (e, v) => return Err(format!("cannot encode {v:?} as {e:?}")),
    }
    Ok(())
}

fn uuid(t: &str, out: &mut Vec<u8>) -> Result<(), String> {
    let hex: Vec<u8> = t.bytes().filter(|b| *b != b'-').collect();
    if hex.len() != 32 {
        return Err(format!("{t:?} is not a uuid"));
    }
    for pair in hex.chunks(2) {
        let s = std::str::from_utf8(pair).map_err(|_| format!("{t:?} is not a uuid"))?;
        out.push(u8::from_str_radix(s, 16).map_err(|_| format!("{t:?} is not a uuid"))?);
    }
    Ok(())
}

/// A decimal string (`-12.50`, `NaN`, `Infinity`) in numeric's binary form:
/// base-10000 digits with weight, sign and display scale.
fn numeric(t: &str, out: &mut Vec<u8>) -> Result<(), String> {
    let special = match t {
        "NaN" => Some(0xC000u16),
        "Infinity" => Some(0xD000),
        "-Infinity" => Some(0xF000),
        _ => None,
    };
    if let Some(sign) = special {
        for x in [0u16, 0, sign, 0] {
            out.extend_from_slice(&x.to_be_bytes());
        }
        return Ok(());
    }
    let (neg, body) = match t.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    if int.is_empty() && frac.is_empty()
        || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit())
        || frac.len() > 16383
    {
        return Err(format!("{t:?} is not a decimal number"));
    }
    let int = int.trim_start_matches('0');
    // Integer digits in groups of four from the point leftwards, fraction
    // digits in groups of four rightwards.
    let lead = (4 - int.len() % 4) % 4;
    let mut digits: Vec<i16> = Vec::with_capacity((int.len() + frac.len()) / 4 + 2);
    let (mut acc, mut n) = (0i16, lead);
    let mut push = |b: u8, digits: &mut Vec<i16>| {
        acc = acc * 10 + (b - b'0') as i16;
        n += 1;
        if n == 4 {
            digits.push(acc);
            (acc, n) = (0, 0);
        }
    };
    int.bytes().for_each(|b| push(b, &mut digits));
    let int_groups = digits.len() as i32;
    frac.bytes().for_each(|b| push(b, &mut digits));
    if n > 0 {
        for _ in n..4 {
            acc *= 10;
        }
        digits.push(acc);
    }
    let mut weight = int_groups - 1;
    let skip = digits.iter().take_while(|d| **d == 0).count();
    digits.drain(..skip);
    weight -= skip as i32;
    while digits.last() == Some(&0) {
        digits.pop();
    }
    if digits.is_empty() {
        weight = 0;
    }
    let sign: u16 = if neg && !digits.is_empty() { 0x4000 } else { 0 };
    out.extend_from_slice(&(digits.len() as i16).to_be_bytes());
    out.extend_from_slice(&(weight as i16).to_be_bytes());
    out.extend_from_slice(&sign.to_be_bytes());
    out.extend_from_slice(&(frac.len() as i16).to_be_bytes());
    for d in digits {
        out.extend_from_slice(&d.to_be_bytes());
    }
    Ok(())
}

/// One row in text COPY format (tab-separated, `\N` for NULL, escaped).
pub fn text_row(out: &mut Vec<u8>, row: &[Value], convs: &[Conv]) {
    for (i, (v, c)) in row.iter().zip(convs).enumerate() {
        if i > 0 {
            out.push(b'\t');
        }
        match pg_text(v, *c) {
            None => out.extend_from_slice(b"\\N"),
            Some(s) => {
                for b in s.bytes() {
                    match b {
                        b'\\' => out.extend_from_slice(b"\\\\"),
                        b'\t' => out.extend_from_slice(b"\\t"),
                        b'\n' => out.extend_from_slice(b"\\n"),
                        b'\r' => out.extend_from_slice(b"\\r"),
                        _ => out.push(b),
                    }
                }
            }
        }
    }
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn num(t: &str) -> Vec<u8> {
        let mut out = Vec::new();
        numeric(t, &mut out).unwrap();
        out
    }

    fn words(v: &[i16]) -> Vec<u8> {
        v.iter().flat_map(|w| w.to_be_bytes()).collect()
    }

    #[test]
    fn numerics() {
        // ndigits, weight, sign, dscale, digits...
        assert_eq!(num("-123.4500"), words(&[2, 0, 0x4000, 4, 123, 4500]));
        assert_eq!(num("12345678.9"), words(&[3, 1, 0, 1, 1234, 5678, 9000]));
        assert_eq!(num("0.00001234"), words(&[1, -2, 0, 8, 1234]));
        assert_eq!(num("0"), words(&[0, 0, 0, 0]));
        assert_eq!(num("-0.00"), words(&[0, 0, 0, 2]));
        assert_eq!(num("10000"), words(&[1, 1, 0, 0, 1]));
        assert_eq!(num("NaN"), words(&[0, 0, 0xC000u16 as i16, 0]));
        assert!(numeric("1e5", &mut Vec::new()).is_err());
    }

    #[test]
    fn encodings() {
        use ColumnType as T;
        let e = |t: &str, ty: T| encoding(t, Conv::AsIs, &ty);
        assert_eq!(e("character varying(20)", T::Text), Some(Enc::Text));
        assert_eq!(e("timestamp with time zone", T::TimestampTz), Some(Enc::Timestamp));
        assert_eq!(e("timestamp(6)", T::Timestamp), Some(Enc::Timestamp));
        assert_eq!(e("time without time zone", T::Time), Some(Enc::Time));
        assert_eq!(e("time with time zone", T::Other), None);
        assert_eq!(e("numeric(10,2)", T::Numeric { precision: Some(10), scale: Some(2) }), Some(Enc::Numeric));
        assert_eq!(e("integer[]", T::Array(Box::new(T::Int32))), None);
        assert_eq!(encoding("boolean", Conv::IntToBool, &T::Int16), Some(Enc::Bool));
        assert_eq!(e("inet", T::Other), None);
        // A Postgres interval is text; a MySQL TIME into an interval is binary.
        assert_eq!(e("interval", T::Other), None);
        assert_eq!(e("interval", T::Time), Some(Enc::Interval));
        let mut out = Vec::new();
        binary_row(
            &mut out,
            &[Value::Date(0), Value::Null, Value::TimestampTz(i64::MAX)],
            &[Some(Enc::Date), Some(Enc::Int4), Some(Enc::Timestamp)],
        )
        .unwrap();
        let mut want = 3i16.to_be_bytes().to_vec();
        want.extend(4i32.to_be_bytes());
        want.extend((-10_957i32).to_be_bytes());
        want.extend((-1i32).to_be_bytes());
        want.extend(8i32.to_be_bytes());
        want.extend(i64::MAX.to_be_bytes());
        assert_eq!(out, want);
        let mut t = Vec::new();
        text_row(&mut t, &[Value::Text("a\tb\\c\n".into()), Value::Null], &[Conv::AsIs, Conv::AsIs]);
        assert_eq!(t, b"a\\tb\\\\c\\n\t\\N\n");
    }
}
