//! The expression types, the values they evaluate to, and casts and
//! comparisons between them (SQL semantics on Sluice's typed values).

use super::*;

/// The logical type of an expression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExprType {
    Bool,
    Int,
    Float,
    Num,
    Text,
    Bytes,
    Date,
    Time,
    Ts,
    TsTz,
    Uuid,
    /// JSON documents: only `IS [NOT] NULL` and casts to text.
    Json,
    /// Arrays and other values without comparisons: only `IS [NOT] NULL` and casts to text.
    Opaque,
    /// The NULL literal (takes the other operand's type).
    Null,
}

impl ExprType {
    pub(super) fn name(self) -> &'static str {
        match self {
            ExprType::Bool => "boolean",
            ExprType::Int => "integer",
            ExprType::Float => "double precision",
            ExprType::Num => "numeric",
            ExprType::Text => "text",
            ExprType::Bytes => "bytea",
            ExprType::Date => "date",
            ExprType::Time => "time",
            ExprType::Ts => "timestamp",
            ExprType::TsTz => "timestamptz",
            ExprType::Uuid => "uuid",
            ExprType::Json => "json",
            ExprType::Opaque => "array/other",
            ExprType::Null => "null",
        }
    }
    pub(super) fn numeric(self) -> bool {
        matches!(self, ExprType::Int | ExprType::Float | ExprType::Num)
    }
    pub(super) fn of(c: &ColumnType) -> ExprType {
        match c {
            ColumnType::Bool => ExprType::Bool,
            ColumnType::Int16 | ColumnType::Int32 | ColumnType::Int64 | ColumnType::UInt32 => ExprType::Int,
            ColumnType::UInt64 | ColumnType::Numeric { .. } => ExprType::Num,
            ColumnType::Float32 | ColumnType::Float64 => ExprType::Float,
            ColumnType::Text | ColumnType::Other => ExprType::Text,
            ColumnType::Bytes => ExprType::Bytes,
            ColumnType::Date => ExprType::Date,
            ColumnType::Time => ExprType::Time,
            ColumnType::Timestamp => ExprType::Ts,
            ColumnType::TimestampTz => ExprType::TsTz,
            ColumnType::Uuid => ExprType::Uuid,
            ColumnType::Json => ExprType::Json,
            ColumnType::Array(_) => ExprType::Opaque,
        }
    }
    pub(super) fn pg(self) -> &'static str {
        match self {
            ExprType::Bool => "boolean",
            ExprType::Int => "bigint",
            ExprType::Float => "float8",
            ExprType::Num => "numeric",
            ExprType::Text | ExprType::Opaque | ExprType::Null => "text",
            ExprType::Bytes => "bytea",
            ExprType::Date => "date",
            ExprType::Time => "time",
            ExprType::Ts => "timestamp",
            ExprType::TsTz => "timestamptz",
            ExprType::Uuid => "uuid",
            ExprType::Json => "jsonb",
        }
    }
}

/// An evaluated value.
#[derive(Debug, Clone, PartialEq)]
pub enum ExprValue<'a> {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Num(Decimal),
    Text(Cow<'a, str>),
    Bytes(Cow<'a, [u8]>),
    Date(i32),
    Time(i64),
    Ts(i64),
    TsTz(i64),
}

impl ExprValue<'_> {
    pub(super) fn into_owned(self) -> ExprValue<'static> {
        match self {
            ExprValue::Text(t) => ExprValue::Text(Cow::Owned(t.into_owned())),
            ExprValue::Bytes(b) => ExprValue::Bytes(Cow::Owned(b.into_owned())),
            ExprValue::Null => ExprValue::Null,
            ExprValue::Bool(b) => ExprValue::Bool(b),
            ExprValue::Int(i) => ExprValue::Int(i),
            ExprValue::Float(f) => ExprValue::Float(f),
            ExprValue::Num(n) => ExprValue::Num(n),
            ExprValue::Date(d) => ExprValue::Date(d),
            ExprValue::Time(t) => ExprValue::Time(t),
            ExprValue::Ts(t) => ExprValue::Ts(t),
            ExprValue::TsTz(t) => ExprValue::TsTz(t),
        }
    }
    pub(super) fn as_f64(&self) -> Option<f64> {
        match self {
            ExprValue::Int(i) => Some(*i as f64),
            ExprValue::Float(f) => Some(*f),
            ExprValue::Num(n) => n.to_f64(),
            _ => None,
        }
    }
    pub(super) fn as_dec(&self) -> Option<Decimal> {
        match self {
            ExprValue::Int(i) => Some(Decimal::from(*i)),
            ExprValue::Num(n) => Some(*n),
            _ => None,
        }
    }
    pub(super) fn text(&self) -> Option<String> {
        Some(match self {
            ExprValue::Null => return None,
            ExprValue::Bool(b) => (if *b { "true" } else { "false" }).to_string(),
            ExprValue::Int(i) => i.to_string(),
            ExprValue::Float(f) => {
                let mut s = String::new();
                crate::text::float_text(*f, &mut s);
                s
            }
            ExprValue::Num(n) => n.to_string(),
            ExprValue::Text(t) => t.to_string(),
            ExprValue::Bytes(b) => text_form(&Value::Bytes(b.to_vec()))?,
            ExprValue::Date(d) => text_form(&Value::Date(*d))?,
            ExprValue::Time(t) => text_form(&Value::Time(*t))?,
            ExprValue::Ts(t) => text_form(&Value::Timestamp(*t))?,
            ExprValue::TsTz(t) => text_form(&Value::TimestampTz(*t))?,
        })
    }
}

pub(super) fn parse_bool(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "t" | "true" | "yes" | "y" | "on" | "1" => Some(true),
        "f" | "false" | "no" | "n" | "off" | "0" => Some(false),
        _ => None,
    }
}

pub(super) fn parse_decimal(s: &str) -> Option<Decimal> {
    let s = s.trim();
    if s.contains(['e', 'E']) {
        return Decimal::from_scientific(s).ok();
    }
    s.parse::<Decimal>().ok()
}

/// Convert a value between types (`CAST`). Errors describe the value.
pub(super) fn cast<'a>(v: ExprValue<'a>, from: ExprType, to: ExprType) -> Result<ExprValue<'a>, String> {
    if matches!(v, ExprValue::Null) || from == to {
        return Ok(v);
    }
    let bad = |v: &ExprValue| {
        format!("{} is not a valid {}", v.text().map(|t| format!("{t:?}")).unwrap_or_default(), to.name())
    };
    Ok(match (v, to) {
        (v, ExprType::Text) => ExprValue::Text(Cow::Owned(v.text().unwrap_or_default())),
        (ExprValue::Text(s), ExprType::Int) => {
            ExprValue::Int(s.trim().parse().map_err(|_| bad(&ExprValue::Text(s.clone())))?)
        }
        (ExprValue::Text(s), ExprType::Num) => {
            ExprValue::Num(parse_decimal(&s).ok_or_else(|| bad(&ExprValue::Text(s.clone())))?)
        }
        (ExprValue::Text(s), ExprType::Float) => {
            ExprValue::Float(parse_float(&s).ok_or_else(|| bad(&ExprValue::Text(s.clone())))?)
        }
        (ExprValue::Text(s), ExprType::Bool) => {
            ExprValue::Bool(parse_bool(&s).ok_or_else(|| bad(&ExprValue::Text(s.clone())))?)
        }
        (ExprValue::Text(s), ExprType::Date) => {
            ExprValue::Date(parse_date(&s).ok_or_else(|| bad(&ExprValue::Text(s.clone())))?)
        }
        (ExprValue::Text(s), ExprType::Time) => {
            ExprValue::Time(parse_time(&s).ok_or_else(|| bad(&ExprValue::Text(s.clone())))?)
        }
        (ExprValue::Text(s), ExprType::Ts) => {
            ExprValue::Ts(parse_timestamp(&s).ok_or_else(|| bad(&ExprValue::Text(s.clone())))?)
        }
        (ExprValue::Text(s), ExprType::TsTz) => {
            ExprValue::TsTz(parse_timestamp(&s).ok_or_else(|| bad(&ExprValue::Text(s.clone())))?)
        }
        (ExprValue::Text(s), ExprType::Uuid) => {
            let hex: String = s.chars().filter(|c| *c != '-').collect::<String>().to_ascii_lowercase();
            if hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad(&ExprValue::Text(s)));
            }
            ExprValue::Text(Cow::Owned(format!(
                "{}-{}-{}-{}-{}",
                &hex[0..8],
                &hex[8..12],
                &hex[12..16],
                &hex[16..20],
                &hex[20..]
            )))
        }
        (ExprValue::Text(s), ExprType::Bytes) => {
            let h = s.strip_prefix("\\x").ok_or_else(|| bad(&ExprValue::Text(s.clone())))?;
            if h.len() % 2 != 0 || !h.is_ascii() {
                return Err(bad(&ExprValue::Text(s)));
            }
            let mut out = Vec::with_capacity(h.len() / 2);
            for i in (0..h.len()).step_by(2) {
                out.push(u8::from_str_radix(&h[i..i + 2], 16).map_err(|_| bad(&ExprValue::Text(s.clone())))?);
            }
            ExprValue::Bytes(Cow::Owned(out))
        }
        (ExprValue::Int(i), ExprType::Num) => ExprValue::Num(Decimal::from(i)),
        (ExprValue::Int(i), ExprType::Float) => ExprValue::Float(i as f64),
        (ExprValue::Int(i), ExprType::Bool) => ExprValue::Bool(i != 0),
        (ExprValue::Bool(b), ExprType::Int) => ExprValue::Int(b as i64),
        (ExprValue::Num(n), ExprType::Int) => ExprValue::Int(
            n.round_dp_with_strategy(0, rust_decimal::RoundingStrategy::MidpointAwayFromZero)
                .to_i64()
                .ok_or_else(|| format!("{n} is out of range for integer"))?,
        ),
        (ExprValue::Num(n), ExprType::Float) => ExprValue::Float(n.to_f64().unwrap_or(f64::NAN)),
        (ExprValue::Float(f), ExprType::Int) => {
            let r = f.round_ties_even();
            if !r.is_finite() || r < i64::MIN as f64 || r >= i64::MAX as f64 {
                return Err(format!("{f} is out of range for integer"));
            }
            ExprValue::Int(r as i64)
        }
        (ExprValue::Float(f), ExprType::Num) => ExprValue::Num(
            <Decimal as rust_decimal::prelude::FromPrimitive>::from_f64(f)
                .ok_or_else(|| format!("{f} cannot be a numeric"))?,
        ),
        (ExprValue::Date(d), ExprType::Ts) => ExprValue::Ts(date_micros(d)),
        (ExprValue::Date(d), ExprType::TsTz) => ExprValue::TsTz(date_micros(d)),
        (ExprValue::Ts(t) | ExprValue::TsTz(t), ExprType::Date) => ExprValue::Date(micros_date(t)),
        (ExprValue::Ts(t), ExprType::TsTz) => ExprValue::TsTz(t),
        (ExprValue::TsTz(t), ExprType::Ts) => ExprValue::Ts(t),
        (ExprValue::Ts(t) | ExprValue::TsTz(t), ExprType::Time) => ExprValue::Time(t.rem_euclid(86_400_000_000)),
        (v, _) => {
            return Err(format!(
                "cannot convert {} to {}",
                from.name(),
                v.text().map(|_| to.name()).unwrap_or(to.name())
            ))
        }
    })
}

pub(super) fn parse_float(s: &str) -> Option<f64> {
    match s.trim().to_ascii_lowercase().as_str() {
        "nan" => Some(f64::NAN),
        "infinity" | "inf" => Some(f64::INFINITY),
        "-infinity" | "-inf" => Some(f64::NEG_INFINITY),
        t => t.parse().ok(),
    }
}

pub(super) fn date_micros(d: i32) -> i64 {
    match d {
        i32::MAX => i64::MAX,
        i32::MIN => i64::MIN,
        d => (d as i64).saturating_mul(86_400_000_000),
    }
}

pub(super) fn micros_date(t: i64) -> i32 {
    match t {
        i64::MAX => i32::MAX,
        i64::MIN => i32::MIN,
        t => t.div_euclid(86_400_000_000).clamp(i32::MIN as i64 + 1, i32::MAX as i64 - 1) as i32,
    }
}

/// A column value as an expression value (`None`: not sent by the source).
pub(super) fn column_value(v: &Value) -> Option<ExprValue<'_>> {
    Some(match v {
        Value::Unchanged => return None,
        Value::Null => ExprValue::Null,
        Value::Bool(b) => ExprValue::Bool(*b),
        Value::Int(i) => ExprValue::Int(*i),
        Value::UInt(u) => ExprValue::Num(Decimal::from(*u)),
        Value::Float(f) => ExprValue::Float(*f),
        // NaN, infinities and numerics beyond 28 digits compare as floats.
        Value::Numeric(n) => match parse_decimal(n) {
            Some(d) => ExprValue::Num(d),
            None => ExprValue::Float(parse_float(n).unwrap_or(f64::NAN)),
        },
        Value::Text(s) | Value::Uuid(s) | Value::Json(s) => ExprValue::Text(Cow::Borrowed(s)),
        Value::Bytes(b) => ExprValue::Bytes(Cow::Borrowed(b)),
        Value::Date(d) => ExprValue::Date(*d),
        Value::Time(t) => ExprValue::Time(*t),
        Value::Timestamp(t) => ExprValue::Ts(*t),
        Value::TimestampTz(t) => ExprValue::TsTz(*t),
        Value::Array(_) => ExprValue::Text(Cow::Owned(text_form(v).unwrap_or_default())),
    })
}

/// Postgres's float order: NaN equals NaN and sorts above every number.
pub(super) fn cmp_f64(a: f64, b: f64) -> Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        _ => a.partial_cmp(&b).unwrap_or(Ordering::Equal),
    }
}

/// Compare two non-NULL values of one comparison type.
pub(super) fn compare(a: &ExprValue, b: &ExprValue) -> Option<Ordering> {
    Some(match (a, b) {
        (ExprValue::Int(x), ExprValue::Int(y)) => x.cmp(y),
        (ExprValue::Num(x), ExprValue::Num(y)) => x.cmp(y),
        (ExprValue::Int(_) | ExprValue::Num(_), ExprValue::Int(_) | ExprValue::Num(_)) => a.as_dec()?.cmp(&b.as_dec()?),
        (
            ExprValue::Float(_) | ExprValue::Int(_) | ExprValue::Num(_),
            ExprValue::Float(_) | ExprValue::Int(_) | ExprValue::Num(_),
        ) => cmp_f64(a.as_f64()?, b.as_f64()?),
        (ExprValue::Text(x), ExprValue::Text(y)) => x.as_ref().cmp(y.as_ref()),
        (ExprValue::Bool(x), ExprValue::Bool(y)) => x.cmp(y),
        (ExprValue::Bytes(x), ExprValue::Bytes(y)) => x.as_ref().cmp(y.as_ref()),
        (ExprValue::Date(x), ExprValue::Date(y)) => x.cmp(y),
        (ExprValue::Time(x), ExprValue::Time(y)) => x.cmp(y),
        (ExprValue::Ts(x) | ExprValue::TsTz(x), ExprValue::Ts(y) | ExprValue::TsTz(y)) => x.cmp(y),
        _ => return None,
    })
}
