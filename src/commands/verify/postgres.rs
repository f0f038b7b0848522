//! Reading a Postgres table for `verify`: the source, or a replica in a
//! Postgres sink. Both go through `COPY ... TO STDOUT` (text), and every
//! field is parsed as the source column's type.
//!
//! Invariants:
//! - The session runs with `TimeZone = 'UTC'` and `extra_float_digits = 3`
//!   (and a replica's with `IntervalStyle = 'postgres'`), set when it
//!   connects, so the text forms parsed here are exact and fixed.
//! - Columns are selected by name in the order of the schema given, so a
//!   field's position is its column's.
//! - A value is turned back into what the source delivers for it: a MySQL
//!   TINYINT(1) stored as a boolean becomes the integer, a MySQL TIME stored
//!   as an interval becomes a time, and a `real` becomes the f64 nearest its
//!   shortest decimal form (as the sources widen 4-byte floats).

use anyhow::{anyhow, Context};
use futures_util::StreamExt;
use sluice_core::schema::quote_ident;
use sluice_core::{ColumnType, TableSchema, Value};
use sluice_schemas::target::{pg_type, Conv};

use super::hash::Accum;
use super::KeyRange;

/// Read the table `target` (already quoted; a source table, or its replica)
/// through COPY text, parsing each value as the type of `schema`'s column,
/// and feed its rows to `acc`.
pub(super) async fn read_table(
    client: &tokio_postgres::Client,
    target: &str,
    schema: &TableSchema,
    range: &KeyRange,
    acc: &mut Accum,
) -> anyhow::Result<()> {
    let cols = schema.columns.iter().map(|c| quote_ident(&c.name)).collect::<Vec<_>>().join(", ");
    let filter = range.filter(&quote_ident);
    let stream = client
        .copy_out(&format!("COPY (SELECT {cols} FROM {target}{filter}) TO STDOUT"))
        .await
        .with_context(|| format!("reading {target}"))?;
    futures_util::pin_mut!(stream);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.with_context(|| format!("reading {target}"))?;
        let mut fields = Vec::new();
        for line in chunk.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            sluice_schemas::postgres::split_copy_line(line, &mut fields).map_err(|e| anyhow!("{target}: {e}"))?;
            let mut values = Vec::with_capacity(fields.len());
            for (f, c) in fields.iter().zip(&schema.columns) {
                values.push(match f {
                    None => Value::Null,
                    Some(s) => target_value(&c.ty, pg_type(c).1, c.type_id == 0, s)
                        .map_err(|e| anyhow!("{target}, column {}: {e}", c.name))?,
                });
            }
            acc.add(values);
        }
    }
    Ok(())
}

/// A replica's text value as the source type.
fn target_value(ty: &ColumnType, conv: Conv, mysql: bool, s: &str) -> Result<Value, String> {
    if conv == Conv::IntToBool {
        return Ok(Value::Int(if s == "t" { 1 } else { 0 }));
    }
    if mysql && *ty == ColumnType::Time {
        return parse_interval_time(s).ok_or_else(|| format!("bad interval {s:?}"));
    }
    if *ty == ColumnType::Float32 {
        return s
            .parse::<f32>()
            .map(|f| Value::Float(sluice_source_mysql::verify::widen_f32(f)))
            .map_err(|e| e.to_string());
    }
    sluice_schemas::postgres::parse_text(ty, s).map_err(|e| e.to_string())
}

/// `[-]H+:MM:SS[.ffffff]` (a MySQL TIME stored as a Postgres interval).
fn parse_interval_time(s: &str) -> Option<Value> {
    let (neg, rest) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s),
    };
    let mut it = rest.split(':');
    let h: i64 = it.next()?.parse().ok()?;
    let m: i64 = it.next()?.parse().ok()?;
    let sec = it.next()?;
    let (sec, frac) = sec.split_once('.').unwrap_or((sec, ""));
    let sec: i64 = sec.parse().ok()?;
    let mut us = 0i64;
    if !frac.is_empty() {
        let f = format!("{frac:0<6}");
        us = f.get(..6)?.parse().ok()?;
    }
    let t = ((h * 60 + m) * 60 + sec) * 1_000_000 + us;
    Some(Value::Time(if neg { -t } else { t }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interval_times() {
        assert_eq!(parse_interval_time("-838:59:59.99"), Some(Value::Time(-(3_020_399 * 1_000_000 + 990_000))));
        assert_eq!(parse_interval_time("00:00:01"), Some(Value::Time(1_000_000)));
        assert_eq!(parse_interval_time("x"), None);
    }
}
