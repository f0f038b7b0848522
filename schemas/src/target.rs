//! Source columns → replica table column types, and values → the target's
//! text input forms.
//!
//! Postgres targets:
//!
//! | source column | Postgres target type |
//! |---|---|
//! | any built-in Postgres type (from a Postgres source) | the same type, as the source declares it (`character varying(20)`, `numeric(10,2)`, `integer[]`, `interval`, ...) |
//! | Postgres enum / other user-defined type | `text` (its text form) |
//! | Postgres domain | its base type |
//! | MySQL TINYINT(1) / BOOL | `boolean` (0 → false, anything else → true) |
//! | MySQL TINYINT, SMALLINT, YEAR / MEDIUMINT, INT / BIGINT | `smallint` / `integer` / `bigint` (UNSIGNED one size up) |
//! | MySQL BIGINT UNSIGNED | `numeric(20,0)` |
//! | MySQL DECIMAL(p,s) | `numeric(p,s)` |
//! | MySQL FLOAT / DOUBLE | `real` / `double precision` |
//! | MySQL CHAR, VARCHAR, TEXT, ENUM, SET, BIT(n) | `text` (BIT as its `0101` string) |
//! | MySQL BINARY, VARBINARY, BLOB, GEOMETRY (WKB) | `bytea` |
//! | MySQL DATE / DATETIME / TIMESTAMP | `date` / `timestamp(6)` / `timestamptz` (UTC) |
//! | MySQL TIME (an interval: -838:59:59 .. 838:59:59) | `interval` |
//! | MySQL JSON | `jsonb` |
//! | MariaDB UUID | `uuid` |

use sluice_core::value::{format_date, format_time, format_timestamp};
use sluice_core::{Column, ColumnType, Value};

/// How a value is converted on its way into the target column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conv {
    AsIs,
    /// MySQL TINYINT(1) → boolean.
    IntToBool,
}

/// The Postgres type of a replica column, and the value conversion.
pub fn pg_type(col: &Column) -> (String, Conv) {
    // Built-in Postgres types (OIDs below FirstNormalObjectId) keep their
    // declared type; user-defined ones (enums, domains) map by logical type.
    if col.type_id != 0 && col.type_id < 16384 && !col.source_type.is_empty() {
        return (col.source_type.clone(), Conv::AsIs);
    }
    if col.type_id == 0 && col.source_type.to_ascii_lowercase().starts_with("tinyint(1)") {
        return ("boolean".into(), Conv::IntToBool);
    }
    (pg_logical(&col.ty, col.type_id == 0), Conv::AsIs)
}

fn pg_logical(ty: &ColumnType, mysql: bool) -> String {
    match ty {
        ColumnType::Bool => "boolean".into(),
        ColumnType::Int16 => "smallint".into(),
        ColumnType::Int32 => "integer".into(),
        ColumnType::Int64 | ColumnType::UInt32 => "bigint".into(),
        ColumnType::UInt64 => "numeric(20,0)".into(),
        ColumnType::Float32 => "real".into(),
        ColumnType::Float64 => "double precision".into(),
        ColumnType::Numeric { precision: Some(p), scale: Some(s) } => format!("numeric({p},{s})"),
        ColumnType::Numeric { .. } => "numeric".into(),
        ColumnType::Text | ColumnType::Other => "text".into(),
        ColumnType::Bytes => "bytea".into(),
        ColumnType::Date => "date".into(),
        ColumnType::Time if mysql => "interval".into(),
        ColumnType::Time => "time".into(),
        ColumnType::Timestamp => "timestamp(6)".into(),
        ColumnType::TimestampTz => "timestamptz".into(),
        ColumnType::Uuid => "uuid".into(),
        ColumnType::Json => "jsonb".into(),
        ColumnType::Array(inner) => format!("{}[]", pg_logical(inner, mysql)),
    }
}

/// The Postgres text input form of a value (`None` for NULL).
pub fn pg_text(v: &Value, conv: Conv) -> Option<String> {
    let mut s = String::new();
    match (v, conv) {
        (Value::Null | Value::Unchanged, _) => return None,
        (Value::Int(i), Conv::IntToBool) => s.push(if *i != 0 { 't' } else { 'f' }),
        _ => push_text(v, &mut s, false),
    }
    Some(s)
}

fn push_text(v: &Value, s: &mut String, in_array: bool) {
    match v {
        Value::Null | Value::Unchanged => s.push_str("NULL"),
        Value::Bool(b) => s.push(if *b { 't' } else { 'f' }),
        Value::Int(i) => s.push_str(itoa::Buffer::new().format(*i)),
        Value::UInt(u) => s.push_str(itoa::Buffer::new().format(*u)),
        Value::Float(f) => {
            if f.is_nan() {
                s.push_str("NaN")
            } else if f.is_infinite() {
                s.push_str(if *f > 0.0 { "Infinity" } else { "-Infinity" })
            } else {
                s.push_str(ryu::Buffer::new().format_finite(*f))
            }
        }
        Value::Numeric(t) | Value::Text(t) | Value::Uuid(t) | Value::Json(t) => {
            if in_array {
                quote_elem(t, s)
            } else {
                s.push_str(t)
            }
        }
        Value::Bytes(b) => {
            let mut hex = String::with_capacity(2 + 2 * b.len());
            hex.push_str("\\x");
            const H: &[u8; 16] = b"0123456789abcdef";
            for x in b {
                hex.push(H[(x >> 4) as usize] as char);
                hex.push(H[(x & 15) as usize] as char);
            }
            if in_array {
                quote_elem(&hex, s)
            } else {
                s.push_str(&hex)
            }
        }
        Value::Date(d) => format_date(*d, s),
        Value::Time(t) => format_time(*t, s),
        Value::Timestamp(t) => format_timestamp(*t, false, s),
        Value::TimestampTz(t) => format_timestamp(*t, true, s),
        Value::Array(items) => {
            s.push('{');
            for (i, it) in items.iter().enumerate() {
                if i > 0 {
                    s.push(',');
                }
                push_text(it, s, true);
            }
            s.push('}');
        }
    }
}

fn quote_elem(t: &str, s: &mut String) {
    s.push('"');
    for c in t.chars() {
        if c == '"' || c == '\\' {
            s.push('\\');
        }
        s.push(c);
    }
    s.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(ty: ColumnType, source_type: &str, type_id: u32) -> Column {
        Column {
            name: "c".into(),
            ty,
            source_type: source_type.into(),
            type_id,
            type_modifier: -1,
            key: false,
            nullable: true,
        }
    }

    #[test]
    fn mapping() {
        assert_eq!(pg_type(&col(ColumnType::Text, "character varying(20)", 1043)).0, "character varying(20)");
        assert_eq!(pg_type(&col(ColumnType::Other, "mood", 16500)).0, "text");
        assert_eq!(pg_type(&col(ColumnType::Int16, "tinyint(1)", 0)), ("boolean".into(), Conv::IntToBool));
        assert_eq!(pg_type(&col(ColumnType::UInt64, "bigint(20) unsigned", 0)).0, "numeric(20,0)");
        assert_eq!(pg_type(&col(ColumnType::Time, "time(6)", 0)).0, "interval");
        assert_eq!(pg_type(&col(ColumnType::Json, "json", 0)).0, "jsonb");
        assert_eq!(pg_type(&col(ColumnType::TimestampTz, "timestamp(6)", 0)).0, "timestamptz");
    }

    #[test]
    fn texts() {
        assert_eq!(pg_text(&Value::Int(2), Conv::IntToBool).unwrap(), "t");
        assert_eq!(pg_text(&Value::Bytes(vec![0, 255]), Conv::AsIs).unwrap(), "\\x00ff");
        assert_eq!(pg_text(&Value::Time(-1), Conv::AsIs).unwrap(), "-00:00:00.000001");
        let arr = Value::Array(vec![Value::Text("a\"b".into()), Value::Null, Value::Array(vec![Value::Int(1)])]);
        assert_eq!(pg_text(&arr, Conv::AsIs).unwrap(), "{\"a\\\"b\",NULL,{1}}");
        assert_eq!(pg_text(&Value::Null, Conv::AsIs), None);
    }
}
