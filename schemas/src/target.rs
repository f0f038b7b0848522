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
//!
//! MySQL/MariaDB targets (tables are created `ENGINE=InnoDB`, character set
//! `utf8mb4` with a binary no-pad collation — `utf8mb4_nopad_bin` on
//! MariaDB, `utf8mb4_0900_bin` on MySQL — so keys that differ in case or
//! trailing spaces stay distinct, as in the source):
//!
//! | source column | MySQL target type | values |
//! |---|---|---|
//! | any MySQL type (from a MySQL source) | the same type as declared (`int(11) unsigned`, `decimal(10,2)`, `enum('a','b')`, `datetime(6)`, ...); where the binlog alone described the table, text and binary columns of unknown length become `longtext`/`longblob` | as read |
//! | MariaDB UUID | `uuid` on MariaDB 10.7+, else `char(36)` | text form |
//! | Postgres `boolean` | `boolean` (`tinyint(1)`) | 0 / 1 |
//! | `smallint` / `integer` / `bigint` / `oid` | `smallint` / `int` / `bigint` / `int unsigned` | |
//! | `real` / `double precision` | `float` / `double` | `NaN`, `±Infinity` stop the table (MySQL has no such values) |
//! | `numeric(p,s)` (p ≤ 65, s ≤ 30) | `decimal(p,s)` | `NaN`, `±Infinity` stop the table |
//! | `numeric` without precision | `decimal(65,30)`, with a warning | a value with more than 30 decimals or 35 integer digits stops the table (it would be rounded) |
//! | `numeric(p,s)` beyond MySQL's limits | — | the table stops at creation |
//! | `character varying(n)`, `character(n)` (n ≤ 16383) | `varchar(n)` (padding kept) | |
//! | `text` and other text-like types (enums, intervals, money, network, geometric, ranges: their text form) | `longtext` (`varchar(768)` in a key) | |
//! | `bytea` | `longblob` (`varbinary(3072)` in a key) | |
//! | `date` | `date` | years 1–9999; infinity and BC dates stop the table |
//! | `time` | `time(6)` | |
//! | `timestamp` / `timestamptz` | `datetime(6)` / `datetime(6)` in UTC | years 1–9999; infinity stops the table |
//! | `uuid` | `char(36)` (MariaDB's `uuid` refuses some values Postgres accepts) | text form |
//! | `json` / `jsonb` | `json` | the document |
//! | arrays | `json` | a JSON array (as in JSONL events) |

use sluice_core::value::{
    civil_from_days, format_date, format_time, format_timestamp, INFINITY_DATE, INFINITY_TS, NEG_INFINITY_DATE,
    NEG_INFINITY_TS,
};
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
        Value::Date(d) => {
            bc(civil_from_days(*d as i64).0, *d != INFINITY_DATE && *d != NEG_INFINITY_DATE, s, |s| format_date(*d, s))
        }
        Value::Time(t) => format_time(*t, s),
        Value::Timestamp(t) | Value::TimestampTz(t) => {
            let year = civil_from_days(t.div_euclid(86_400_000_000)).0;
            bc(year, *t != INFINITY_TS && *t != NEG_INFINITY_TS, s, |s| {
                format_timestamp(*t, matches!(v, Value::TimestampTz(_)), s)
            })
        }
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

/// Postgres reads years before 1 AD as `0044-03-15 BC`, not `-0043-03-15`.
fn bc(year: i64, finite: bool, s: &mut String, format: impl FnOnce(&mut String)) {
    if year > 0 || !finite {
        return format(s);
    }
    let mut tmp = String::new();
    format(&mut tmp);
    let body = tmp.strip_prefix('-').unwrap_or(&tmp);
    let rest = body.trim_start_matches(|c: char| c.is_ascii_digit());
    s.push_str(&format!("{:04}{rest} BC", 1 - year));
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

/// How a value is converted on its way into a MySQL/MariaDB column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MyConv {
    AsIs,
    /// Postgres boolean → `tinyint(1)`.
    BoolToInt,
    /// MySQL BIT(n), carried as a `0101` string, back into a number.
    BitString,
    /// WKB → `ST_GeomFromWKB(?)`.
    Geometry,
    /// Floats: NaN and infinities cannot be stored.
    Float,
    /// Decimals: NaN/infinities cannot be stored; more than `int_digits`
    /// integer or `scale` fractional digits would be rounded.
    Decimal {
        int_digits: u32,
        scale: u32,
    },
    /// Dates and timestamps: years 1..=9999 only.
    Temporal,
    /// Arrays (and anything else structured) as a JSON document.
    ArrayJson,
}

/// A MySQL/MariaDB replica column: its type, the value conversion, and a
/// warning to log when the mapping loses something.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MyColumn {
    pub ty: String,
    pub conv: MyConv,
    pub warning: Option<String>,
}

/// Longest text/binary key column (InnoDB's 3072-byte key limit, utf8mb4).
const KEY_CHARS: u32 = 768;

/// The MySQL type of a replica column. `mariadb_uuid`: the target has a
/// `uuid` type (MariaDB 10.7+). Errors name what cannot be represented.
pub fn my_type(col: &Column, mariadb_uuid: bool) -> Result<MyColumn, String> {
    let ok = |ty: &str, conv: MyConv| Ok(MyColumn { ty: ty.to_string(), conv, warning: None });
    if col.type_id == 0 {
        // A MySQL source: keep the declared type where it is complete.
        let st = col.source_type.to_ascii_lowercase();
        let base = st.split(['(', ' ']).next().unwrap_or("");
        let complete = st.contains('(')
            || matches!(
                base,
                "tinyint"
                    | "smallint"
                    | "mediumint"
                    | "int"
                    | "integer"
                    | "bigint"
                    | "float"
                    | "double"
                    | "date"
                    | "year"
                    | "time"
                    | "datetime"
                    | "timestamp"
                    | "tinytext"
                    | "mediumtext"
                    | "longtext"
                    | "tinyblob"
                    | "mediumblob"
                    | "longblob"
            );
        if base == "bit" {
            return ok(&st, MyConv::BitString);
        }
        if crate::mysql::is_geometry(base) {
            return ok(base, MyConv::Geometry);
        }
        match (&col.ty, base) {
            (ColumnType::Json, _) => return ok("json", MyConv::AsIs),
            (ColumnType::Uuid, _) => return ok(if mariadb_uuid { "uuid" } else { "char(36)" }, MyConv::AsIs),
            (ColumnType::Float32 | ColumnType::Float64, _) if complete => return ok(&st, MyConv::Float),
            (_, "enum" | "set") if complete => return ok(&col.source_type, MyConv::AsIs),
            _ if complete => return ok(&st, MyConv::AsIs),
            _ => {}
        }
    }
    let text = if col.key { format!("varchar({KEY_CHARS})") } else { "longtext".to_string() };
    match &col.ty {
        ColumnType::Bool => ok("boolean", MyConv::BoolToInt),
        ColumnType::Int16 => ok("smallint", MyConv::AsIs),
        ColumnType::Int32 => ok("int", MyConv::AsIs),
        ColumnType::Int64 => ok("bigint", MyConv::AsIs),
        ColumnType::UInt32 => ok("int unsigned", MyConv::AsIs),
        ColumnType::UInt64 => ok("bigint unsigned", MyConv::AsIs),
        ColumnType::Float32 => ok("float", MyConv::Float),
        ColumnType::Float64 => ok("double", MyConv::Float),
        ColumnType::Numeric { precision: Some(p), scale: Some(s) } => {
            if *p > 65 || *s > 30 || s > p {
                return Err(format!(
                    "column {}: numeric({p},{s}) does not fit MySQL's DECIMAL (at most 65 digits, 30 after the point)",
                    col.name
                ));
            }
            ok(&format!("decimal({p},{s})"), MyConv::Decimal { int_digits: p - s, scale: *s })
        }
        ColumnType::Numeric { .. } => Ok(MyColumn {
            ty: "decimal(65,30)".into(),
            conv: MyConv::Decimal { int_digits: 35, scale: 30 },
            warning: Some(format!(
                "column {}: numeric without a precision becomes decimal(65,30); values with more than 30 decimals \
                 or 35 integer digits will stop the table",
                col.name
            )),
        }),
        ColumnType::Text => {
            let st = col.source_type.to_ascii_lowercase();
            let n = st
                .strip_prefix("character varying(")
                .or_else(|| st.strip_prefix("character("))
                .or_else(|| st.strip_prefix("varchar("))
                .or_else(|| st.strip_prefix("char("))
                .and_then(|r| r.strip_suffix(')'))
                .and_then(|n| n.parse::<u32>().ok());
            match n {
                Some(n) if n <= 16383 => ok(&format!("varchar({n})"), MyConv::AsIs),
                _ => ok(&text, MyConv::AsIs),
            }
        }
        ColumnType::Other => ok(&text, MyConv::AsIs),
        ColumnType::Bytes => ok(if col.key { "varbinary(3072)" } else { "longblob" }, MyConv::AsIs),
        ColumnType::Date => ok("date", MyConv::Temporal),
        ColumnType::Time => ok("time(6)", MyConv::AsIs),
        ColumnType::Timestamp | ColumnType::TimestampTz => ok("datetime(6)", MyConv::Temporal),
        // MariaDB's uuid type refuses values of other variants, which Postgres accepts.
        ColumnType::Uuid => ok("char(36)", MyConv::AsIs),
        ColumnType::Json => ok("json", MyConv::AsIs),
        ColumnType::Array(_) => ok("json", MyConv::ArrayJson),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::testing;

    fn col(ty: ColumnType, source_type: &str, type_id: u32) -> Column {
        Column { source_type: source_type.into(), type_id, ..testing::col("c", ty) }
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
    fn mysql_mapping() {
        let t = |c: Column| my_type(&c, true).map(|m| (m.ty, m.conv));
        assert_eq!(t(col(ColumnType::Json, "jsonb", 3802)).unwrap(), ("json".into(), MyConv::AsIs));
        assert_eq!(t(col(ColumnType::Bytes, "bytea", 17)).unwrap().0, "longblob");
        assert_eq!(t(col(ColumnType::TimestampTz, "timestamp with time zone", 1184)).unwrap().0, "datetime(6)");
        assert_eq!(t(col(ColumnType::Bool, "boolean", 16)).unwrap(), ("boolean".into(), MyConv::BoolToInt));
        assert_eq!(t(col(ColumnType::Text, "character varying(20)", 1043)).unwrap().0, "varchar(20)");
        assert_eq!(t(col(ColumnType::Text, "text", 25)).unwrap().0, "longtext");
        let mut k = col(ColumnType::Text, "text", 25);
        k.key = true;
        assert_eq!(t(k).unwrap().0, "varchar(768)");
        let n = my_type(&col(ColumnType::Numeric { precision: None, scale: None }, "numeric", 1700), false).unwrap();
        assert_eq!((n.ty.as_str(), n.conv), ("decimal(65,30)", MyConv::Decimal { int_digits: 35, scale: 30 }));
        assert!(n.warning.is_some());
        assert!(t(col(ColumnType::Numeric { precision: Some(70), scale: Some(2) }, "numeric(70,2)", 1700)).is_err());
        assert_eq!(
            t(col(ColumnType::Array(Box::new(ColumnType::Int32)), "integer[]", 1007)).unwrap(),
            ("json".into(), MyConv::ArrayJson)
        );
        assert_eq!(t(col(ColumnType::Uuid, "uuid", 2950)).unwrap().0, "char(36)");
        assert_eq!(t(col(ColumnType::Uuid, "uuid", 0)).unwrap().0, "uuid");
        assert_eq!(my_type(&col(ColumnType::Uuid, "uuid", 0), false).unwrap().ty, "char(36)");
        // MySQL sources keep their declared types.
        assert_eq!(t(col(ColumnType::Int64, "int(10) unsigned", 0)).unwrap().0, "int(10) unsigned");
        assert_eq!(t(col(ColumnType::Text, "enum('a','B c')", 0)).unwrap().0, "enum('a','B c')");
        assert_eq!(t(col(ColumnType::Other, "bit(10)", 0)).unwrap(), ("bit(10)".into(), MyConv::BitString));
        assert_eq!(t(col(ColumnType::Bytes, "point", 0)).unwrap(), ("point".into(), MyConv::Geometry));
        assert_eq!(t(col(ColumnType::Json, "json", 0)).unwrap().0, "json");
        // Described by the binlog alone: the widest form.
        assert_eq!(t(col(ColumnType::Text, "varchar", 0)).unwrap().0, "longtext");
        assert_eq!(t(col(ColumnType::Timestamp, "datetime", 0)).unwrap().0, "datetime");
        assert_eq!(t(col(ColumnType::TimestampTz, "timestamp(3)", 0)).unwrap().0, "timestamp(3)");
        assert_eq!(t(col(ColumnType::Int16, "tinyint(1)", 0)).unwrap().0, "tinyint(1)");
    }

    #[test]
    fn texts() {
        assert_eq!(pg_text(&Value::Int(2), Conv::IntToBool).unwrap(), "t");
        assert_eq!(pg_text(&Value::Bytes(vec![0, 255]), Conv::AsIs).unwrap(), "\\x00ff");
        assert_eq!(pg_text(&Value::Time(-1), Conv::AsIs).unwrap(), "-00:00:00.000001");
        let arr = Value::Array(vec![Value::Text("a\"b".into()), Value::Null, Value::Array(vec![Value::Int(1)])]);
        assert_eq!(pg_text(&arr, Conv::AsIs).unwrap(), "{\"a\\\"b\",NULL,{1}}");
        assert_eq!(pg_text(&Value::Null, Conv::AsIs), None);
        let bc = sluice_core::value::days_from_civil(-43, 3, 15);
        assert_eq!(pg_text(&Value::Date(bc as i32), Conv::AsIs).unwrap(), "0044-03-15 BC");
        let ts = Value::TimestampTz(bc * 86_400_000_000 + 43_200_500_000);
        assert_eq!(pg_text(&ts, Conv::AsIs).unwrap(), "0044-03-15T12:00:00.5Z BC");
        assert_eq!(pg_text(&Value::Date(i32::MIN), Conv::AsIs).unwrap(), "-infinity");
    }
}
