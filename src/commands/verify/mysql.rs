//! Reading a MySQL/MariaDB table for `verify`: the source, or a replica in
//! a MySQL sink. Both go through the binary protocol and the MySQL source's
//! own conversion ([`sluice_source_mysql::verify`]).
//!
//! Invariants:
//! - Source rows are selected and converted exactly as the snapshot does
//!   (same select list, same `convert`, same per-column read facts), so
//!   they are the values the pipeline delivers.
//! - A replica's columns are converted with the read facts of the source
//!   column of the same name, except its character set: a replica's text
//!   is read as the server converts it.
//! - Columns are selected by name in the order of the schema given, so a
//!   value's position is its column's.

use anyhow::{anyhow, Context};
use mysql_async::prelude::Queryable;
use sluice_core::TableSchema;
use sluice_source_mysql::SnapColumn;

use super::hash::Accum;
use super::{KeyRange, Table};

/// Read a source table with the snapshot's select list and conversion
/// (`snap`: its columns' read facts), feeding its rows to `acc`.
pub(super) async fn read_source(
    conn: &mut mysql_async::Conn,
    schema: &TableSchema,
    snap: &[SnapColumn],
    range: &KeyRange,
    acc: &mut Accum,
) -> anyhow::Result<()> {
    let q = sluice_client_mysql::quote_ident;
    // Text in legacy character sets is read as bytes and decoded as the snapshot does.
    let cols = sluice_source_mysql::verify::select_list(schema, snap);
    let sql = format!("SELECT {cols} FROM {}.{}{}", q(&schema.id.schema), q(&schema.id.name), range.filter(&q));
    let mut result = conn.exec_iter(sql, ()).await.with_context(|| format!("reading {}", schema.id))?;
    while let Some(row) = result.next().await.with_context(|| format!("reading {}", schema.id))? {
        let mut values = Vec::with_capacity(schema.columns.len());
        for ((v, c), s) in row.unwrap().into_iter().zip(&schema.columns).zip(snap) {
            values.push(sluice_source_mysql::verify::convert(v, &c.ty, s).map_err(|e| anyhow!("{}: {e}", schema.id))?);
        }
        acc.add(values);
    }
    Ok(())
}

/// Read the replica table (MySQL) through the binary protocol, each value
/// as the source column's type.
pub(super) async fn read_target(
    conn: &mut mysql_async::Conn,
    target: &str,
    t: &Table,
    range: &KeyRange,
    acc: &mut Accum,
) -> anyhow::Result<()> {
    let q = sluice_client_mysql::quote_ident;
    let schema = &t.out;
    let cols = schema.columns.iter().map(|c| q(&c.name)).collect::<Vec<_>>().join(", ");
    let sql = format!("SELECT {cols} FROM {target}{}", range.filter(&q));
    let mut result = conn.exec_iter(sql, ()).await.with_context(|| format!("reading {target}"))?;
    // Per-column read facts of the source column of the same name (once per
    // table); the target's text is read as the server converts it.
    let snaps: Vec<SnapColumn> = schema
        .columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let j = if t.plan.is_none() { Some(i) } else { t.schema.column_index(&c.name) };
            let snap = j.and_then(|j| t.snap.get(j)).cloned().unwrap_or_default();
            SnapColumn { charset: None, ..snap }
        })
        .collect();
    while let Some(row) = result.next().await.with_context(|| format!("reading {target}"))? {
        let mut values = Vec::with_capacity(schema.columns.len());
        for ((v, c), snap) in row.unwrap().into_iter().zip(&schema.columns).zip(&snaps) {
            values.push(
                sluice_source_mysql::verify::convert(v, &c.ty, snap)
                    .map_err(|e| anyhow!("{target}, column {}: {e}", c.name))?,
            );
        }
        acc.add(values);
    }
    Ok(())
}
