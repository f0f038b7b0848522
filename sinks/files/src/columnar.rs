//! Building Arrow record batches from change events (for Parquet and Arrow IPC).

use std::sync::Arc;

use arrow_array::builder::{
    BinaryBuilder, BooleanBuilder, Date32Builder, Decimal128Builder, Decimal256Builder, Float32Builder, Float64Builder,
    Int16Builder, Int32Builder, Int64Builder, ListBuilder, StringBuilder, Time64MicrosecondBuilder,
    TimestampMicrosecondBuilder, UInt64Builder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_buffer::i256;
use arrow_schema::{DataType, Schema, TimeUnit};
use sluice_core::{ChangeEvent, Op, Value};

/// Rows a new builder has room for: a pipeline may have thousands of tables
/// with a builder each, most holding few rows; builders grow as needed.
const INIT: usize = 16;

enum Col {
    Bool(BooleanBuilder),
    I16(Int16Builder),
    I32(Int32Builder),
    I64(Int64Builder),
    U64(UInt64Builder),
    F32(Float32Builder),
    F64(Float64Builder),
    D128(Decimal128Builder, u32),
    D256(Decimal256Builder, u32),
    Utf8(StringBuilder),
    Bin(BinaryBuilder),
    Date(Date32Builder),
    Time(Time64MicrosecondBuilder),
    Ts(TimestampMicrosecondBuilder),
}

/// Accumulates rows of one table schema into Arrow arrays.
pub struct BatchBuilder {
    schema: Arc<Schema>,
    cols: Vec<Col>,
    op: StringBuilder,
    position: UInt64Builder,
    commit_ts: TimestampMicrosecondBuilder,
    unchanged: ListBuilder<StringBuilder>,
    rows: usize,
    /// Estimated memory of the rows held (see [`BatchBuilder::memory`]).
    bytes: usize,
    scratch: Vec<u8>,
    text: String,
    /// Values that the column type could not hold (e.g. NaN in a decimal).
    pub lossy: u64,
}

/// Exact decimal text → unscaled integer digits at `scale` (None for NaN, Infinity or too many digits).
fn decimal_digits(s: &str, scale: u32) -> Option<(bool, String)> {
    let (neg, body) = match s.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    if int.is_empty() && frac.is_empty()
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    if frac.len() > scale as usize && frac[scale as usize..].bytes().any(|b| b != b'0') {
        return None;
    }
    let mut digits = String::with_capacity(int.len() + scale as usize);
    digits.push_str(int);
    for i in 0..scale as usize {
        digits.push(frac.as_bytes().get(i).map(|&b| b as char).unwrap_or('0'));
    }
    Some((neg, digits))
}

pub fn parse_decimal128(s: &str, scale: u32) -> Option<i128> {
    let (neg, digits) = decimal_digits(s, scale)?;
    let v: i128 = if digits.is_empty() { 0 } else { digits.parse().ok()? };
    Some(if neg { -v } else { v })
}

pub fn parse_decimal256(s: &str, scale: u32) -> Option<i256> {
    let (neg, digits) = decimal_digits(s, scale)?;
    let v = i256::from_string(if digits.is_empty() { "0" } else { &digits })?;
    Some(if neg { v.wrapping_neg() } else { v })
}

impl BatchBuilder {
    pub fn new(schema: Arc<Schema>, ncols: usize) -> Self {
        let cols = schema.fields()[..ncols]
            .iter()
            .map(|f| match f.data_type() {
                DataType::Boolean => Col::Bool(BooleanBuilder::with_capacity(INIT)),
                DataType::Int16 => Col::I16(Int16Builder::with_capacity(INIT)),
                DataType::Int32 => Col::I32(Int32Builder::with_capacity(INIT)),
                DataType::Int64 => Col::I64(Int64Builder::with_capacity(INIT)),
                DataType::UInt64 => Col::U64(UInt64Builder::with_capacity(INIT)),
                DataType::Float32 => Col::F32(Float32Builder::with_capacity(INIT)),
                DataType::Float64 => Col::F64(Float64Builder::with_capacity(INIT)),
                DataType::Decimal128(p, s) => Col::D128(
                    Decimal128Builder::with_capacity(INIT).with_precision_and_scale(*p, *s).expect("valid decimal"),
                    *s as u32,
                ),
                DataType::Decimal256(p, s) => Col::D256(
                    Decimal256Builder::with_capacity(INIT).with_precision_and_scale(*p, *s).expect("valid decimal"),
                    *s as u32,
                ),
                DataType::Binary => Col::Bin(BinaryBuilder::with_capacity(INIT, 0)),
                DataType::Date32 => Col::Date(Date32Builder::with_capacity(INIT)),
                DataType::Time64(TimeUnit::Microsecond) => Col::Time(Time64MicrosecondBuilder::with_capacity(INIT)),
                DataType::Timestamp(TimeUnit::Microsecond, tz) => {
                    Col::Ts(TimestampMicrosecondBuilder::with_capacity(INIT).with_timezone_opt(tz.clone()))
                }
                _ => Col::Utf8(StringBuilder::with_capacity(INIT, 0)),
            })
            .collect();
        BatchBuilder {
            schema,
            cols,
            op: StringBuilder::with_capacity(INIT, 0),
            position: UInt64Builder::with_capacity(INIT),
            commit_ts: TimestampMicrosecondBuilder::with_capacity(INIT).with_timezone("UTC"),
            unchanged: ListBuilder::with_capacity(StringBuilder::with_capacity(0, 0), INIT),
            rows: 0,
            bytes: 0,
            scratch: Vec::new(),
            text: String::new(),
            lossy: 0,
        }
    }

    pub fn schema(&self) -> &Arc<Schema> {
        &self.schema
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Estimated bytes of memory the rows held take (values' sizes plus a
    /// fixed cost per row); 0 after [`BatchBuilder::finish`].
    pub fn memory(&self) -> usize {
        self.bytes
    }

    /// Append the rows of one event: one row, or for an update that changes
    /// the key a `d` row of the old key and then a `c` row of the new one
    /// (a warehouse that upserts by key and deletes `d` rows by key applies
    /// it as it is). Returns the number of rows appended, or an error when
    /// the event's commit position does not fit `__position` (nothing is
    /// appended then).
    pub fn append(&mut self, ev: &ChangeEvent) -> Result<usize, String> {
        let position = ev.commit_position.packed().ok_or_else(|| {
            format!(
                "commit position {} of a change to {} does not fit the 64-bit __position column \
                 (binlog file numbers up to 16777215 and offsets below 1 TiB fit)",
                ev.commit_position, ev.table.id
            )
        })?;
        if ev.key_changed() {
            self.append_image(ev, position, Op::Delete, ev.before.as_ref());
            self.append_image(ev, position, Op::Create, ev.after.as_ref());
            return Ok(2);
        }
        let image = match ev.op {
            Op::Delete => ev.before.as_ref(),
            Op::Truncate => None,
            _ => ev.after.as_ref(),
        };
        self.append_image(ev, position, ev.op, image);
        Ok(1)
    }

    fn append_image(&mut self, ev: &ChangeEvent, position: u64, op: Op, image: Option<&sluice_core::Row>) {
        let names = &ev.table.columns;
        for (i, col) in self.cols.iter_mut().enumerate() {
            let v = image.and_then(|r| r.values.get(i)).unwrap_or(&Value::Null);
            if matches!(v, Value::Unchanged) {
                self.unchanged.values().append_value(&names[i].name);
            }
            self.bytes += value_size(v);
            let ok = append_value(col, v, &mut self.scratch, &mut self.text);
            if !ok {
                self.lossy += 1;
            }
        }
        self.unchanged.append(true);
        self.op.append_value(op.code());
        self.position.append_value(position);
        self.commit_ts.append_value(ev.commit_ts_us);
        self.rows += 1;
        self.bytes += 32;
    }

    pub fn finish(&mut self) -> RecordBatch {
        let mut arrays: Vec<ArrayRef> = Vec::with_capacity(self.cols.len() + 4);
        for c in &mut self.cols {
            arrays.push(match c {
                Col::Bool(b) => Arc::new(b.finish()),
                Col::I16(b) => Arc::new(b.finish()),
                Col::I32(b) => Arc::new(b.finish()),
                Col::I64(b) => Arc::new(b.finish()),
                Col::U64(b) => Arc::new(b.finish()),
                Col::F32(b) => Arc::new(b.finish()),
                Col::F64(b) => Arc::new(b.finish()),
                Col::D128(b, _) => Arc::new(b.finish()),
                Col::D256(b, _) => Arc::new(b.finish()),
                Col::Utf8(b) => Arc::new(b.finish()),
                Col::Bin(b) => Arc::new(b.finish()),
                Col::Date(b) => Arc::new(b.finish()),
                Col::Time(b) => Arc::new(b.finish()),
                Col::Ts(b) => Arc::new(b.finish()),
            });
        }
        arrays.push(Arc::new(self.op.finish()));
        arrays.push(Arc::new(self.position.finish()));
        arrays.push(Arc::new(self.commit_ts.finish()));
        arrays.push(Arc::new(self.unchanged.finish()));
        self.rows = 0;
        self.bytes = 0;
        RecordBatch::try_new(self.schema.clone(), arrays).expect("builders match the schema")
    }
}

/// Approximate bytes a value takes in an Arrow builder.
fn value_size(v: &Value) -> usize {
    match v {
        Value::Numeric(s) | Value::Text(s) | Value::Uuid(s) | Value::Json(s) => s.len() + 4,
        Value::Bytes(b) => b.len() + 4,
        Value::Array(a) => a.iter().map(value_size).sum::<usize>() + 8,
        _ => 16,
    }
}

/// Append `v`; returns false when the value could not be represented (stored as null).
fn append_value(col: &mut Col, v: &Value, scratch: &mut Vec<u8>, text: &mut String) -> bool {
    macro_rules! null_or {
        ($b:expr, $some:expr) => {{
            match $some {
                Some(x) => {
                    $b.append_value(x);
                    true
                }
                None => {
                    $b.append_null();
                    matches!(v, Value::Null | Value::Unchanged)
                }
            }
        }};
    }
    match col {
        Col::Bool(b) => null_or!(b, if let Value::Bool(x) = v { Some(*x) } else { None }),
        Col::I16(b) => null_or!(b, if let Value::Int(x) = v { i16::try_from(*x).ok() } else { None }),
        Col::I32(b) => null_or!(b, if let Value::Int(x) = v { i32::try_from(*x).ok() } else { None }),
        Col::I64(b) => null_or!(
            b,
            match v {
                Value::Int(x) => Some(*x),
                Value::UInt(x) => i64::try_from(*x).ok(),
                _ => None,
            }
        ),
        Col::U64(b) => null_or!(b, if let Value::UInt(x) = v { Some(*x) } else { None }),
        Col::F32(b) => null_or!(b, if let Value::Float(x) = v { Some(*x as f32) } else { None }),
        Col::F64(b) => null_or!(b, if let Value::Float(x) = v { Some(*x) } else { None }),
        Col::D128(b, s) => {
            let s = *s;
            null_or!(b, if let Value::Numeric(x) = v { parse_decimal128(x, s) } else { None })
        }
        Col::D256(b, s) => {
            let s = *s;
            null_or!(b, if let Value::Numeric(x) = v { parse_decimal256(x, s) } else { None })
        }
        Col::Bin(b) => null_or!(b, if let Value::Bytes(x) = v { Some(x.as_slice()) } else { None }),
        Col::Date(b) => null_or!(b, if let Value::Date(x) = v { Some(*x) } else { None }),
        Col::Time(b) => null_or!(b, if let Value::Time(x) = v { Some(*x) } else { None }),
        Col::Ts(b) => null_or!(
            b,
            match v {
                Value::Timestamp(x) | Value::TimestampTz(x) => Some(*x),
                _ => None,
            }
        ),
        Col::Utf8(b) => match v {
            Value::Null | Value::Unchanged => {
                b.append_null();
                true
            }
            Value::Text(s) | Value::Numeric(s) | Value::Uuid(s) | Value::Json(s) => {
                b.append_value(s);
                true
            }
            other => {
                // Arrays and anything else: the JSON encoding, as in JSONL.
                scratch.clear();
                sluice_schemas::json::write_value(scratch, other, text);
                match other {
                    Value::Array(_) => b.append_value(String::from_utf8_lossy(scratch)),
                    _ => {
                        let s = String::from_utf8_lossy(scratch);
                        b.append_value(s.trim_matches('"'))
                    }
                }
                true
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals() {
        assert_eq!(parse_decimal128("12.5", 2), Some(1250));
        assert_eq!(parse_decimal128("-0.01", 2), Some(-1));
        assert_eq!(parse_decimal128("7", 0), Some(7));
        assert_eq!(parse_decimal128("NaN", 2), None);
        assert_eq!(parse_decimal128("1.234", 2), None);
        assert_eq!(
            parse_decimal256("-12345678901234567890123456789012345678901.5", 1).map(|v| v.to_string()),
            Some("-123456789012345678901234567890123456789015".into())
        );
    }
}
