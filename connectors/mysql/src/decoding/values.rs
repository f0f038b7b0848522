//! Value codecs: one binlog value of each MySQL type ([`Kind`]) into the
//! [`Value`] the snapshot reads for the same stored data.
//!
//! Invariants:
//! - Same value as the snapshot (which uses [`widen_f32`], [`bit_string`],
//!   [`strip_srid`] and [`refine`] too): FLOAT through its shortest `f32`
//!   text, TIMESTAMP as UTC microseconds, DECIMAL as its exact text with the
//!   column's scale, zero dates as NULL, BIT(n) as a string of n `0`/`1`,
//!   GEOMETRY as WKB without its SRID, MySQL binary JSON as JSON text.
//! - Text is decoded in the column's character set; bytes not valid in it
//!   are an error for that table, never replaced.
//! - Truncated or malformed bytes are an error, never a panic.

use sluice_core::value::days_from_civil;

use super::{err, DecodeError, Kind, Reader};
use crate::charset::Charset;
use sluice_core::{ColumnType, Value};

/// A text column's value (a `binary` one's bytes).
#[inline]
fn text(b: &[u8], cs: Charset) -> Result<Value, DecodeError> {
    match cs {
        Charset::Binary => Ok(Value::Bytes(b.to_vec())),
        cs => cs.decode(b).map(Value::Text).map_err(|e| DecodeError::table(e.to_string())),
    }
}

/// FLOAT as the f64 nearest to its shortest decimal form (1.1f32 → 1.1).
pub fn widen_f32(f: f32) -> f64 {
    if !f.is_finite() {
        return f as f64;
    }
    let mut b = ryu::Buffer::new();
    b.format_finite(f).parse().unwrap_or(f as f64)
}

/// BIT(n) as a string of n binary digits, from big-endian bytes.
pub fn bit_string(bytes: &[u8], bits: u16) -> String {
    let mut s = String::with_capacity(bits as usize);
    let total = bytes.len() * 8;
    for i in (total.saturating_sub(bits as usize))..total {
        let byte = bytes[i / 8];
        s.push(if byte & (0x80 >> (i % 8)) != 0 { '1' } else { '0' });
    }
    while s.len() < bits as usize {
        s.insert(0, '0');
    }
    s
}

const DIG2BYTES: [usize; 10] = [0, 1, 1, 2, 2, 3, 3, 4, 4, 4];

/// Size in bytes of a binary DECIMAL(precision, scale).
pub fn decimal_size(precision: u8, scale: u8) -> usize {
    let intg = (precision - scale.min(precision)) as usize;
    let frac = scale as usize;
    (intg / 9) * 4 + DIG2BYTES[intg % 9] + (frac / 9) * 4 + DIG2BYTES[frac % 9]
}

/// Digits of a decimal (at most 65 + a group of slack), on the stack.
struct Digits {
    buf: [u8; 90],
    len: usize,
}

impl Digits {
    /// Append `v` as exactly `width` decimal digits (zero-padded).
    #[inline]
    fn push(&mut self, mut v: u64, width: usize) {
        let start = self.len;
        let end = (start + width).min(self.buf.len());
        self.buf[start..end].fill(b'0');
        let mut i = end;
        while v > 0 && i > start {
            i -= 1;
            self.buf[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
        self.len = end;
    }
}

/// Decode MySQL's binary DECIMAL into its exact text (`-12.50`).
pub fn decode_decimal(raw: &[u8], precision: u8, scale: u8) -> Result<String, DecodeError> {
    let size = decimal_size(precision, scale);
    if raw.len() < size || size == 0 {
        return err("decimal truncated");
    }
    let negative = raw[0] & 0x80 == 0;
    let mask: u8 = if negative { 0xff } else { 0 };
    let byte = |i: usize| -> u8 {
        let b = raw[i] ^ mask;
        if i == 0 {
            b ^ 0x80
        } else {
            b
        }
    };
    let mut at = 0usize;
    let mut be = |n: usize| -> u64 {
        let mut v = 0u64;
        for _ in 0..n {
            v = (v << 8) | byte(at) as u64;
            at += 1;
        }
        v
    };
    let intg = (precision - scale.min(precision)) as usize;
    let frac = scale as usize;
    // Digits of the integer part, then of the fraction, in one buffer.
    let mut d = Digits { buf: [0; 90], len: 0 };
    let lead = intg % 9;
    if lead > 0 {
        let v = be(DIG2BYTES[lead]);
        d.push(v, lead);
    }
    for _ in 0..intg / 9 {
        let v = be(4);
        d.push(v, 9);
    }
    let int_len = d.len;
    for _ in 0..frac / 9 {
        let v = be(4);
        d.push(v, 9);
    }
    let trail = frac % 9;
    if trail > 0 {
        let v = be(DIG2BYTES[trail]);
        d.push(v, trail);
    }
    let digits = &d.buf[..d.len];
    let first = digits[..int_len].iter().position(|&d| d != b'0').unwrap_or(int_len);
    let zero = first == int_len && digits[int_len..].iter().all(|&d| d == b'0');
    let mut out = String::with_capacity(digits.len() + 3);
    if negative && !zero {
        out.push('-');
    }
    if first == int_len {
        out.push('0');
    } else {
        out.push_str(std::str::from_utf8(&digits[first..int_len]).unwrap_or("0"));
    }
    if frac > 0 {
        out.push('.');
        out.push_str(std::str::from_utf8(&digits[int_len..]).unwrap_or(""));
    }
    Ok(out)
}

fn frac_us(r: &mut Reader<'_>, fsp: u8) -> Result<i64, DecodeError> {
    Ok(match fsp {
        0 => 0,
        1 | 2 => r.be(1)? as i64 * 10_000,
        3 | 4 => r.be(2)? as i64 * 100,
        _ => r.be(3)? as i64,
    })
}

/// Days since the epoch, or `None` for zero / partial-zero dates.
fn civil_days(y: i64, m: u32, d: u32) -> Option<i32> {
    if m == 0 || d == 0 || m > 12 || d > 31 {
        return None;
    }
    Some(days_from_civil(y, m, d) as i32)
}

fn datetime_us(y: i64, mo: u32, d: u32, h: i64, mi: i64, s: i64, us: i64) -> Option<i64> {
    let days = civil_days(y, mo, d)? as i64;
    Some(days * 86_400_000_000 + ((h * 60 + mi) * 60 + s) * 1_000_000 + us)
}

/// Decode one value of `kind`; `ty` is the schema's type (JSON text, UUIDs).
pub(super) fn decode_value(r: &mut Reader<'_>, kind: &Kind, ty: &ColumnType) -> Result<Value, DecodeError> {
    Ok(match kind {
        Kind::Int { bytes, unsigned } => {
            let n = *bytes as usize;
            let v = r.le(n)?;
            if *unsigned {
                if n == 8 {
                    Value::UInt(v)
                } else {
                    Value::Int(v as i64)
                }
            } else {
                let shift = 64 - 8 * n as u32;
                Value::Int(((v << shift) as i64) >> shift)
            }
        }
        Kind::Float => Value::Float(widen_f32(f32::from_bits(r.le(4)? as u32))),
        Kind::Double => Value::Float(f64::from_bits(r.le(8)?)),
        Kind::Decimal { precision, scale } => {
            let n = decimal_size(*precision, *scale);
            Value::Numeric(decode_decimal(r.take(n)?, *precision, *scale)?)
        }
        Kind::Year => {
            let v = r.le(1)?;
            Value::Int(if v == 0 { 0 } else { 1900 + v as i64 })
        }
        Kind::Date => {
            let v = r.le(3)?;
            match civil_days((v >> 9) as i64, ((v >> 5) & 15) as u32, (v & 31) as u32) {
                Some(d) => Value::Date(d),
                None => Value::Null,
            }
        }
        Kind::TimeOld => {
            let v = r.le(3)? as i64;
            let v = (v << 40) >> 40;
            let (neg, a) = (v < 0, v.abs());
            let us = ((a / 10000) * 3600 + (a / 100 % 100) * 60 + a % 100) * 1_000_000;
            Value::Time(if neg { -us } else { us })
        }
        Kind::Time2 { fsp } => {
            // my_time_packed_from_binary: 3-byte offset integer part, then the fraction.
            let packed: i64 = match fsp {
                0 => (r.be(3)? as i64 - 0x80_0000) << 24,
                1 | 2 => {
                    let mut int = r.be(3)? as i64 - 0x80_0000;
                    let mut frac = r.be(1)? as i64;
                    if int < 0 && frac != 0 {
                        int += 1;
                        frac -= 0x100;
                    }
                    (int << 24) + frac * 10_000
                }
                3 | 4 => {
                    let mut int = r.be(3)? as i64 - 0x80_0000;
                    let mut frac = r.be(2)? as i64;
                    if int < 0 && frac != 0 {
                        int += 1;
                        frac -= 0x10000;
                    }
                    (int << 24) + frac * 100
                }
                _ => r.be(6)? as i64 - 0x8000_0000_0000,
            };
            let (neg, p) = (packed < 0, packed.abs());
            let hms = p >> 24;
            let us = p % (1 << 24);
            let hour = (hms >> 12) % (1 << 10);
            let minute = (hms >> 6) % (1 << 6);
            let second = hms % (1 << 6);
            let total = ((hour * 60 + minute) * 60 + second) * 1_000_000 + us;
            Value::Time(if neg { -total } else { total })
        }
        Kind::DateTimeOld => {
            let v = r.le(8)? as i64;
            let (date, time) = (v / 1_000_000, v % 1_000_000);
            match datetime_us(
                date / 10000,
                (date / 100 % 100) as u32,
                (date % 100) as u32,
                time / 10000,
                time / 100 % 100,
                time % 100,
                0,
            ) {
                Some(t) => Value::Timestamp(t),
                None => Value::Null,
            }
        }
        Kind::DateTime2 { fsp } => {
            let int = r.be(5)? as i64 - 0x80_0000_0000;
            let us = frac_us(r, *fsp)?;
            let ymd = int >> 17;
            let ym = ymd >> 5;
            let hms = int % (1 << 17);
            match datetime_us(ym / 13, (ym % 13) as u32, (ymd % 32) as u32, hms >> 12, (hms >> 6) % 64, hms % 64, us) {
                Some(t) => Value::Timestamp(t),
                None => Value::Null,
            }
        }
        Kind::TimestampOld => match r.le(4)? as i64 {
            0 => Value::Null,
            s => Value::TimestampTz(s * 1_000_000),
        },
        Kind::Timestamp2 { fsp } => {
            let s = r.be(4)? as i64;
            let us = frac_us(r, *fsp)?;
            if s == 0 && us == 0 {
                Value::Null
            } else {
                Value::TimestampTz(s * 1_000_000 + us)
            }
        }
        Kind::Bit { bits } => {
            let n = (*bits as usize).div_ceil(8);
            Value::Text(bit_string(r.take(n)?, *bits))
        }
        Kind::Enum { pack, labels } => {
            let i = r.le(*pack as usize)? as usize;
            Value::Text(if i == 0 { String::new() } else { labels.get(i - 1).cloned().unwrap_or_default() })
        }
        Kind::Set { pack, labels } => {
            let bits = r.le(*pack as usize)?;
            let mut s = String::new();
            for (i, l) in labels.iter().enumerate() {
                if bits & (1u64 << i) != 0 {
                    if !s.is_empty() {
                        s.push(',');
                    }
                    s.push_str(l);
                }
            }
            Value::Text(s)
        }
        Kind::Str { len_bytes, cs, pad } => {
            let n = r.le(*len_bytes as usize)? as usize;
            let b = r.take(n)?;
            if n < *pad as usize {
                let mut v = b.to_vec();
                v.resize(*pad as usize, 0);
                refine(Value::Bytes(v), ty)
            } else {
                refine(text(b, *cs)?, ty)
            }
        }
        Kind::Blob { len_bytes, cs } => {
            let n = r.le(*len_bytes as usize)? as usize;
            let b = r.take(n)?;
            refine(text(b, *cs)?, ty)
        }
        Kind::Json { len_bytes } => {
            let n = r.le(*len_bytes as usize)? as usize;
            Value::Json(json_from_binary(r.take(n)?)?)
        }
        Kind::Geometry { len_bytes } => {
            let n = r.le(*len_bytes as usize)? as usize;
            Value::Bytes(strip_srid(r.take(n)?).to_vec())
        }
    })
}

/// Stored geometry is a 4-byte SRID followed by WKB; events carry the WKB.
pub fn strip_srid(b: &[u8]) -> &[u8] {
    if b.len() >= 4 {
        &b[4..]
    } else {
        b
    }
}

/// Adjust a decoded text/bytes value to the schema's type.
pub fn refine(v: Value, ty: &ColumnType) -> Value {
    match (ty, v) {
        (ColumnType::Json, Value::Text(s)) => {
            if s.is_empty() {
                Value::Json("null".into())
            } else {
                Value::Json(s)
            }
        }
        (ColumnType::Uuid, Value::Bytes(b)) if b.len() == 16 => Value::Uuid(uuid_text(&b)),
        (ColumnType::Uuid, Value::Text(s)) => Value::Uuid(s.to_ascii_lowercase()),
        (_, v) => v,
    }
}

/// Hyphenated lower-case form of 16 bytes.
pub fn uuid_text(b: &[u8]) -> String {
    let mut s = String::with_capacity(36);
    for (i, x) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        s.push_str(&format!("{x:02x}"));
    }
    s
}

/// MySQL binary JSON → JSON text.
pub fn json_from_binary(b: &[u8]) -> Result<String, DecodeError> {
    if b.is_empty() {
        return Ok("null".into());
    }
    let mut buf = mysql_common::io::ParseBuf(b);
    let v: mysql_common::binlog::jsonb::Value<'_> =
        buf.parse(()).map_err(|e| DecodeError::new(format!("binary JSON: {e}")))?;
    let dom = v.parse().map_err(|e| DecodeError::new(format!("binary JSON: {e}")))?;
    let j: serde_json::Value = dom.into();
    Ok(j.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals() {
        // DECIMAL(10,2) 1234.56: intg 8 -> lead 8 digits (4 bytes), frac 2 (1 byte).
        let mut b = vec![0x80, 0x00, 0x04, 0xd2, 0x38];
        assert_eq!(decode_decimal(&b, 10, 2).unwrap(), "1234.56");
        for x in b.iter_mut() {
            *x ^= 0xff;
        }
        assert_eq!(decode_decimal(&b, 10, 2).unwrap(), "-1234.56");
        // DECIMAL(4,2) 0.05
        assert_eq!(decode_decimal(&[0x80, 0x05], 4, 2).unwrap(), "0.05");
        // DECIMAL(5,0) 0
        assert_eq!(decode_decimal(&[0x80, 0x00, 0x00], 5, 0).unwrap(), "0");
        assert_eq!(decimal_size(65, 30), 30);
    }

    #[test]
    fn times() {
        // TIME(0) '-838:59:59' and '838:59:59'
        let enc = |packed_int: i64| -> Vec<u8> {
            let v = (packed_int + 0x80_0000) as u32;
            vec![(v >> 16) as u8, (v >> 8) as u8, v as u8]
        };
        let hms = (838i64 << 12) | (59 << 6) | 59;
        let mut r = Reader { b: &enc(hms), at: 0 };
        assert_eq!(
            decode_value(&mut r, &Kind::Time2 { fsp: 0 }, &ColumnType::Time).unwrap(),
            Value::Time(3_020_399_000_000)
        );
        let mut r = Reader { b: &enc(-hms), at: 0 };
        assert_eq!(
            decode_value(&mut r, &Kind::Time2 { fsp: 0 }, &ColumnType::Time).unwrap(),
            Value::Time(-3_020_399_000_000)
        );
        // TIME(6) '-00:00:00.000001': packed = -1 -> 6 bytes of 0x800000000000 - 1.
        let v: u64 = 0x8000_0000_0000 - 1;
        let b: Vec<u8> = (0..6).rev().map(|i| (v >> (8 * i)) as u8).collect();
        let mut r = Reader { b: &b, at: 0 };
        assert_eq!(decode_value(&mut r, &Kind::Time2 { fsp: 6 }, &ColumnType::Time).unwrap(), Value::Time(-1));
        // TIME(2) '-00:00:00.01': integer part 0x7fffff (-1), fraction byte 0xff (read unsigned).
        let mut r = Reader { b: &[0x7f, 0xff, 0xff, 0xff], at: 0 };
        assert_eq!(decode_value(&mut r, &Kind::Time2 { fsp: 2 }, &ColumnType::Time).unwrap(), Value::Time(-10_000));
        // TIME(4) '-00:00:00.0001': fraction 0xffff.
        let mut r = Reader { b: &[0x7f, 0xff, 0xff, 0xff, 0xff], at: 0 };
        assert_eq!(decode_value(&mut r, &Kind::Time2 { fsp: 4 }, &ColumnType::Time).unwrap(), Value::Time(-100));
    }

    #[test]
    fn bits_floats_latin1() {
        assert_eq!(bit_string(&[0b101], 3), "101");
        assert_eq!(bit_string(&[0x01, 0xff], 10), "0111111111");
        assert_eq!(widen_f32(1.1f32), 1.1f64);
        let latin1 = Charset::by_name("latin1").unwrap();
        assert_eq!(text(&[0x80, b'a', 0xe9], latin1).unwrap(), Value::Text("€aé".into()));
        assert!(text(&[0xe9], Charset::Utf8).unwrap_err().message.contains("utf8mb4"));
    }

    #[test]
    fn mysql_binary_json() {
        // {"a": 1}: small object, 1 element, size, key entry, value entry (int16 inline), key.
        let doc: Vec<u8> = vec![
            0x00, // small object
            0x01, 0x00, // element count
            0x0c, 0x00, // size
            0x0b, 0x00, 0x01, 0x00, // key offset 11, length 1
            0x05, 0x01, 0x00, // int16 inline 1
            b'a',
        ];
        assert_eq!(json_from_binary(&doc).unwrap(), r#"{"a":1}"#);
        // [true, -5, "hi", 1.5]: small array, 4 entries of 3 bytes, data after them.
        let mut doc: Vec<u8> = vec![0x02, 0x04, 0x00, 27, 0x00];
        doc.extend_from_slice(&[0x04, 0x01, 0x00]); // literal true, inline
        doc.extend_from_slice(&[0x05, 0xfb, 0xff]); // int16 -5, inline
        doc.extend_from_slice(&[0x0c, 16, 0x00]); // string at offset 16
        doc.extend_from_slice(&[0x0b, 19, 0x00]); // double at offset 19
        doc.extend_from_slice(&[2, b'h', b'i']);
        doc.extend_from_slice(&1.5f64.to_le_bytes());
        assert_eq!(json_from_binary(&doc).unwrap(), r#"[true,-5,"hi",1.5]"#);
        // A bare scalar document: int64 and an escaped string.
        let mut doc = vec![0x09];
        doc.extend_from_slice(&(-9_007_199_254_740_993i64).to_le_bytes());
        assert_eq!(json_from_binary(&doc).unwrap(), "-9007199254740993");
        assert_eq!(json_from_binary(&[0x0c, 3, b'a', b'"', b'b']).unwrap(), r#""a\"b""#);
        assert!(json_from_binary(&[0x02, 0x09]).is_err());
    }
}
