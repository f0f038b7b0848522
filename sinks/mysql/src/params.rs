//! Statement parameters: source values as MySQL binary-protocol values,
//! checked against what their column can hold.
//!
//! Invariants:
//! - Values are always statement parameters (binary protocol), identifiers
//!   always quoted with backticks; sessions run in strict SQL mode (see
//!   `SESSION`), so a value MySQL cannot hold is an error, never a silent
//!   truncation.
//! - Values MySQL has no form for (NaN, infinite or BC dates, numerics beyond
//!   DECIMAL(65,30)) stop with an error naming the table and column.

use mysql_async::Value as MyValue;
use sluice_core::error::SinkError;
use sluice_core::value::{civil_from_days, NEG_INFINITY_DATE, NEG_INFINITY_TS};
use sluice_core::Value;
use sluice_schemas::target::{MyColumn, MyConv};

use crate::{MysqlSink, Target};

/// A value as a MySQL statement parameter, checked against what the column can hold.
fn my_value(v: &Value, conv: MyConv) -> Result<MyValue, String> {
    Ok(match v {
        Value::Null | Value::Unchanged => MyValue::NULL,
        Value::Bool(b) => MyValue::Int(*b as i64),
        Value::Int(i) => MyValue::Int(*i),
        Value::UInt(u) => MyValue::UInt(*u),
        Value::Float(f) => {
            if !f.is_finite() {
                return Err(format!("{f} cannot be stored in MySQL (no NaN or infinity)"));
            }
            MyValue::Double(*f)
        }
        Value::Numeric(t) => {
            if let MyConv::Decimal { int_digits, scale } = conv {
                check_decimal(t, int_digits, scale)?;
            }
            MyValue::Bytes(t.as_bytes().to_vec())
        }
        Value::Text(t) if conv == MyConv::BitString => {
            MyValue::UInt(u64::from_str_radix(t, 2).map_err(|_| format!("{t:?} is not a bit string"))?)
        }
        Value::Text(t) | Value::Uuid(t) | Value::Json(t) => MyValue::Bytes(t.as_bytes().to_vec()),
        Value::Bytes(b) => MyValue::Bytes(b.clone()),
        Value::Date(d) => {
            if *d == i32::MAX || *d == NEG_INFINITY_DATE {
                return Err("an infinite date cannot be stored in MySQL".into());
            }
            let (y, m, d) = civil_from_days(*d as i64);
            check_year(y)?;
            MyValue::Date(y as u16, m as u8, d as u8, 0, 0, 0, 0)
        }
        Value::Timestamp(t) | Value::TimestampTz(t) => {
            if *t == i64::MAX || *t == NEG_INFINITY_TS {
                return Err("an infinite timestamp cannot be stored in MySQL".into());
            }
            let days = t.div_euclid(86_400_000_000);
            let us = t.rem_euclid(86_400_000_000);
            let (y, m, d) = civil_from_days(days);
            check_year(y)?;
            let s = us / 1_000_000;
            MyValue::Date(
                y as u16,
                m as u8,
                d as u8,
                (s / 3600) as u8,
                (s / 60 % 60) as u8,
                (s % 60) as u8,
                (us % 1_000_000) as u32,
            )
        }
        Value::Time(t) => {
            let a = t.unsigned_abs();
            let s = a / 1_000_000;
            let h = s / 3600;
            MyValue::Time(
                *t < 0,
                (h / 24) as u32,
                (h % 24) as u8,
                (s / 60 % 60) as u8,
                (s % 60) as u8,
                (a % 1_000_000) as u32,
            )
        }
        Value::Array(_) => {
            let mut out = Vec::new();
            sluice_schemas::json::write_value(&mut out, v, &mut String::new());
            MyValue::Bytes(out)
        }
    })
}

fn check_year(y: i64) -> Result<(), String> {
    if (1..=9999).contains(&y) {
        Ok(())
    } else {
        Err(format!("year {y} is outside MySQL's range (1 to 9999)"))
    }
}

/// Would MySQL's DECIMAL with `int_digits` integer and `scale` fractional
/// digits hold `t` exactly?
fn check_decimal(t: &str, int_digits: u32, scale: u32) -> Result<(), String> {
    let body = t.strip_prefix('-').unwrap_or(t);
    if !body.bytes().next().is_some_and(|b| b.is_ascii_digit()) {
        return Err(format!("{t} cannot be stored in MySQL's DECIMAL"));
    }
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    let int = int.trim_start_matches('0');
    let frac = frac.trim_end_matches('0');
    if int.len() > int_digits as usize || frac.len() > scale as usize {
        return Err(format!("{t} does not fit DECIMAL({},{scale}) exactly (MySQL would round it)", int_digits + scale));
    }
    Ok(())
}

/// What a parameter adds to a statement's size (cuts batches, see `apply`).
pub(crate) fn value_bytes(v: &MyValue) -> usize {
    match v {
        MyValue::Bytes(b) => b.len() + 8,
        _ => 8,
    }
}

/// Placeholder for one value of a column.
pub(crate) fn placeholder(c: &MyColumn) -> &'static str {
    if c.conv == MyConv::Geometry {
        "ST_GeomFromWKB(CAST(? AS BINARY))"
    } else {
        "?"
    }
}

impl MysqlSink {
    /// The parameters of `row`'s columns `idx`; a value its column cannot
    /// hold is an error of the table, naming the column.
    pub(crate) fn values(
        t: &Target,
        row: &[Value],
        idx: impl Iterator<Item = usize>,
    ) -> Result<Vec<MyValue>, SinkError> {
        idx.map(|i| {
            my_value(&row[i], t.cols[i].conv)
                .map_err(|e| Self::table_err(&t.schema.id, format!("column {}: {e}", t.schema.columns[i].name)))
        })
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals() {
        assert!(check_decimal("123.4500", 3, 2).is_ok());
        assert!(check_decimal("-0.5", 0, 1).is_ok());
        assert!(check_decimal("1234.5", 3, 2).is_err());
        assert!(check_decimal("1.125", 3, 2).is_err());
        assert!(check_decimal("NaN", 35, 30).is_err());
        assert!(check_decimal("-Infinity", 35, 30).is_err());
    }

    #[test]
    fn values() {
        assert_eq!(my_value(&Value::Text("0101".into()), MyConv::BitString).unwrap(), MyValue::UInt(5));
        assert_eq!(my_value(&Value::Bool(true), MyConv::BoolToInt).unwrap(), MyValue::Int(1));
        assert!(my_value(&Value::Float(f64::NAN), MyConv::Float).is_err());
        assert!(my_value(&Value::Date(i32::MAX), MyConv::Temporal).is_err());
        // 44 BC has no MySQL date.
        let bc = sluice_core::value::days_from_civil(-43, 3, 15) as i32;
        assert!(my_value(&Value::Date(bc), MyConv::Temporal).is_err());
        assert_eq!(
            my_value(&Value::Timestamp(-1), MyConv::Temporal).unwrap(),
            MyValue::Date(1969, 12, 31, 23, 59, 59, 999_999)
        );
        assert_eq!(
            my_value(&Value::Time(-(90_061_000_001)), MyConv::AsIs).unwrap(),
            MyValue::Time(true, 1, 1, 1, 1, 1)
        );
        let arr = Value::Array(vec![Value::Int(1), Value::Null, Value::Text("a".into())]);
        assert_eq!(my_value(&arr, MyConv::ArrayJson).unwrap(), MyValue::Bytes(b"[1,null,\"a\"]".to_vec()));
    }
}
