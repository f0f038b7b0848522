//! The expression types, the values they evaluate to, and casts and
//! comparisons between them (SQL semantics on Sluice's typed values).

use super::*;

/// The logical type of an expression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ty {
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

impl Ty {
    pub(super) fn name(self) -> &'static str {
        match self {
            Ty::Bool => "boolean",
            Ty::Int => "integer",
            Ty::Float => "double precision",
            Ty::Num => "numeric",
            Ty::Text => "text",
            Ty::Bytes => "bytea",
            Ty::Date => "date",
            Ty::Time => "time",
            Ty::Ts => "timestamp",
            Ty::TsTz => "timestamptz",
            Ty::Uuid => "uuid",
            Ty::Json => "json",
            Ty::Opaque => "array/other",
            Ty::Null => "null",
        }
    }
    pub(super) fn numeric(self) -> bool {
        matches!(self, Ty::Int | Ty::Float | Ty::Num)
    }
    pub(super) fn of(c: &ColumnType) -> Ty {
        match c {
            ColumnType::Bool => Ty::Bool,
            ColumnType::Int16 | ColumnType::Int32 | ColumnType::Int64 | ColumnType::UInt32 => Ty::Int,
            ColumnType::UInt64 | ColumnType::Numeric { .. } => Ty::Num,
            ColumnType::Float32 | ColumnType::Float64 => Ty::Float,
            ColumnType::Text | ColumnType::Other => Ty::Text,
            ColumnType::Bytes => Ty::Bytes,
            ColumnType::Date => Ty::Date,
            ColumnType::Time => Ty::Time,
            ColumnType::Timestamp => Ty::Ts,
            ColumnType::TimestampTz => Ty::TsTz,
            ColumnType::Uuid => Ty::Uuid,
            ColumnType::Json => Ty::Json,
            ColumnType::Array(_) => Ty::Opaque,
        }
    }
    pub(super) fn pg(self) -> &'static str {
        match self {
            Ty::Bool => "boolean",
            Ty::Int => "bigint",
            Ty::Float => "float8",
            Ty::Num => "numeric",
            Ty::Text | Ty::Opaque | Ty::Null => "text",
            Ty::Bytes => "bytea",
            Ty::Date => "date",
            Ty::Time => "time",
            Ty::Ts => "timestamp",
            Ty::TsTz => "timestamptz",
            Ty::Uuid => "uuid",
            Ty::Json => "jsonb",
        }
    }
}

/// An evaluated value.
#[derive(Debug, Clone, PartialEq)]
pub enum V<'a> {
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

impl V<'_> {
    pub(super) fn into_owned(self) -> V<'static> {
        match self {
            V::Text(t) => V::Text(Cow::Owned(t.into_owned())),
            V::Bytes(b) => V::Bytes(Cow::Owned(b.into_owned())),
            V::Null => V::Null,
            V::Bool(b) => V::Bool(b),
            V::Int(i) => V::Int(i),
            V::Float(f) => V::Float(f),
            V::Num(n) => V::Num(n),
            V::Date(d) => V::Date(d),
            V::Time(t) => V::Time(t),
            V::Ts(t) => V::Ts(t),
            V::TsTz(t) => V::TsTz(t),
        }
    }
    pub(super) fn as_f64(&self) -> Option<f64> {
        match self {
            V::Int(i) => Some(*i as f64),
            V::Float(f) => Some(*f),
            V::Num(n) => n.to_f64(),
            _ => None,
        }
    }
    pub(super) fn as_dec(&self) -> Option<Decimal> {
        match self {
            V::Int(i) => Some(Decimal::from(*i)),
            V::Num(n) => Some(*n),
            _ => None,
        }
    }
    pub(super) fn text(&self) -> Option<String> {
        Some(match self {
            V::Null => return None,
            V::Bool(b) => (if *b { "true" } else { "false" }).to_string(),
            V::Int(i) => i.to_string(),
            V::Float(f) => {
                let mut s = String::new();
                crate::text::float_text(*f, &mut s);
                s
            }
            V::Num(n) => n.to_string(),
            V::Text(t) => t.to_string(),
            V::Bytes(b) => text_form(&Value::Bytes(b.to_vec()))?,
            V::Date(d) => text_form(&Value::Date(*d))?,
            V::Time(t) => text_form(&Value::Time(*t))?,
            V::Ts(t) => text_form(&Value::Timestamp(*t))?,
            V::TsTz(t) => text_form(&Value::TimestampTz(*t))?,
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
pub(super) fn cast<'a>(v: V<'a>, from: Ty, to: Ty) -> Result<V<'a>, String> {
    if matches!(v, V::Null) || from == to {
        return Ok(v);
    }
    let bad =
        |v: &V| format!("{} is not a valid {}", v.text().map(|t| format!("{t:?}")).unwrap_or_default(), to.name());
    Ok(match (v, to) {
        (v, Ty::Text) => V::Text(Cow::Owned(v.text().unwrap_or_default())),
        (V::Text(s), Ty::Int) => V::Int(s.trim().parse().map_err(|_| bad(&V::Text(s.clone())))?),
        (V::Text(s), Ty::Num) => V::Num(parse_decimal(&s).ok_or_else(|| bad(&V::Text(s.clone())))?),
        (V::Text(s), Ty::Float) => V::Float(parse_float(&s).ok_or_else(|| bad(&V::Text(s.clone())))?),
        (V::Text(s), Ty::Bool) => V::Bool(parse_bool(&s).ok_or_else(|| bad(&V::Text(s.clone())))?),
        (V::Text(s), Ty::Date) => V::Date(parse_date(&s).ok_or_else(|| bad(&V::Text(s.clone())))?),
        (V::Text(s), Ty::Time) => V::Time(parse_time(&s).ok_or_else(|| bad(&V::Text(s.clone())))?),
        (V::Text(s), Ty::Ts) => V::Ts(parse_timestamp(&s).ok_or_else(|| bad(&V::Text(s.clone())))?),
        (V::Text(s), Ty::TsTz) => V::TsTz(parse_timestamp(&s).ok_or_else(|| bad(&V::Text(s.clone())))?),
        (V::Text(s), Ty::Uuid) => {
            let hex: String = s.chars().filter(|c| *c != '-').collect::<String>().to_ascii_lowercase();
            if hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad(&V::Text(s)));
            }
            V::Text(Cow::Owned(format!(
                "{}-{}-{}-{}-{}",
                &hex[0..8],
                &hex[8..12],
                &hex[12..16],
                &hex[16..20],
                &hex[20..]
            )))
        }
        (V::Text(s), Ty::Bytes) => {
            let h = s.strip_prefix("\\x").ok_or_else(|| bad(&V::Text(s.clone())))?;
            if h.len() % 2 != 0 || !h.is_ascii() {
                return Err(bad(&V::Text(s)));
            }
            let mut out = Vec::with_capacity(h.len() / 2);
            for i in (0..h.len()).step_by(2) {
                out.push(u8::from_str_radix(&h[i..i + 2], 16).map_err(|_| bad(&V::Text(s.clone())))?);
            }
            V::Bytes(Cow::Owned(out))
        }
        (V::Int(i), Ty::Num) => V::Num(Decimal::from(i)),
        (V::Int(i), Ty::Float) => V::Float(i as f64),
        (V::Int(i), Ty::Bool) => V::Bool(i != 0),
        (V::Bool(b), Ty::Int) => V::Int(b as i64),
        (V::Num(n), Ty::Int) => V::Int(
            n.round_dp_with_strategy(0, rust_decimal::RoundingStrategy::MidpointAwayFromZero)
                .to_i64()
                .ok_or_else(|| format!("{n} is out of range for integer"))?,
        ),
        (V::Num(n), Ty::Float) => V::Float(n.to_f64().unwrap_or(f64::NAN)),
        (V::Float(f), Ty::Int) => {
            let r = f.round_ties_even();
            if !r.is_finite() || r < i64::MIN as f64 || r >= i64::MAX as f64 {
                return Err(format!("{f} is out of range for integer"));
            }
            V::Int(r as i64)
        }
        (V::Float(f), Ty::Num) => V::Num(
            <Decimal as rust_decimal::prelude::FromPrimitive>::from_f64(f)
                .ok_or_else(|| format!("{f} cannot be a numeric"))?,
        ),
        (V::Date(d), Ty::Ts) => V::Ts(date_micros(d)),
        (V::Date(d), Ty::TsTz) => V::TsTz(date_micros(d)),
        (V::Ts(t) | V::TsTz(t), Ty::Date) => V::Date(micros_date(t)),
        (V::Ts(t), Ty::TsTz) => V::TsTz(t),
        (V::TsTz(t), Ty::Ts) => V::Ts(t),
        (V::Ts(t) | V::TsTz(t), Ty::Time) => V::Time(t.rem_euclid(86_400_000_000)),
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
pub(super) fn column_value(v: &Value) -> Option<V<'_>> {
    Some(match v {
        Value::Unchanged => return None,
        Value::Null => V::Null,
        Value::Bool(b) => V::Bool(*b),
        Value::Int(i) => V::Int(*i),
        Value::UInt(u) => V::Num(Decimal::from(*u)),
        Value::Float(f) => V::Float(*f),
        // NaN, infinities and numerics beyond 28 digits compare as floats.
        Value::Numeric(n) => match parse_decimal(n) {
            Some(d) => V::Num(d),
            None => V::Float(parse_float(n).unwrap_or(f64::NAN)),
        },
        Value::Text(s) | Value::Uuid(s) | Value::Json(s) => V::Text(Cow::Borrowed(s)),
        Value::Bytes(b) => V::Bytes(Cow::Borrowed(b)),
        Value::Date(d) => V::Date(*d),
        Value::Time(t) => V::Time(*t),
        Value::Timestamp(t) => V::Ts(*t),
        Value::TimestampTz(t) => V::TsTz(*t),
        Value::Array(_) => V::Text(Cow::Owned(text_form(v).unwrap_or_default())),
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
pub(super) fn compare(a: &V, b: &V) -> Option<Ordering> {
    Some(match (a, b) {
        (V::Int(x), V::Int(y)) => x.cmp(y),
        (V::Num(x), V::Num(y)) => x.cmp(y),
        (V::Int(_) | V::Num(_), V::Int(_) | V::Num(_)) => a.as_dec()?.cmp(&b.as_dec()?),
        (V::Float(_) | V::Int(_) | V::Num(_), V::Float(_) | V::Int(_) | V::Num(_)) => cmp_f64(a.as_f64()?, b.as_f64()?),
        (V::Text(x), V::Text(y)) => x.as_ref().cmp(y.as_ref()),
        (V::Bool(x), V::Bool(y)) => x.cmp(y),
        (V::Bytes(x), V::Bytes(y)) => x.as_ref().cmp(y.as_ref()),
        (V::Date(x), V::Date(y)) => x.cmp(y),
        (V::Time(x), V::Time(y)) => x.cmp(y),
        (V::Ts(x) | V::TsTz(x), V::Ts(y) | V::TsTz(y)) => x.cmp(y),
        _ => return None,
    })
}
