//! Text forms of values, and parsing of temporal text.
//!
//! The text form of a value is the one the JSON output uses (ISO 8601
//! timestamps with `T`, `Z` for UTC; bytes as `\x` + hex like Postgres).
//! Masks hash this form, and `CAST(x AS text)` in filters yields it.

use std::fmt::Write as _;

use sluice_core::value::{format_date, format_time, format_timestamp};
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

#[cfg(test)]
mod tests {
    use super::*;

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
