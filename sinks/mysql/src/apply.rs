//! Applying changes: queued in batches, one statement per batch.
//!
//! Invariants:
//! - Consecutive changes of one table and kind are applied as one
//!   multi-row statement (`INSERT ... ON DUPLICATE KEY UPDATE`, `DELETE ...
//!   WHERE key IN (...)`), cut whenever a key repeats, so the order of
//!   changes to one row is kept (and at `STATEMENT_ROWS` rows, `MAX_PARAMS`
//!   parameters or `STATEMENT_BYTES` bytes). Updates set only the columns
//!   the source sent (unchanged TOAST values are never overwritten); a key
//!   change is its own `UPDATE ... WHERE key = old`. Tables without a key
//!   match rows by their full old image and change one row (`LIMIT 1`) at a
//!   time.
//! - An upsert never changes a row with another key: the target must have a
//!   unique index on exactly the key, and where it has other unique indexes
//!   (through which `ON DUPLICATE KEY UPDATE` could match a different row)
//!   the update part first sets the key to NULL unless the matched row has
//!   the incoming key, which strict mode refuses: that table stops.
//! - `TRUNCATE` (an implicit commit in MySQL) is applied as `DELETE FROM`,
//!   in the open transaction.

use std::collections::HashSet;

use mysql_async::prelude::Queryable;
use mysql_async::{Params, Value as MyValue};
use sluice_client_mysql::{quote_ident, Flavor};
use sluice_core::error::SinkError;
use sluice_core::{ChangeEvent, Op, TableId, Value};
use sluice_schemas::target::MyConv;

use crate::params::{placeholder, value_bytes};
use crate::{sql_err, MysqlSink, Target};

/// Most parameters in one statement (MySQL's limit is 65535).
const MAX_PARAMS: usize = 60_000;
/// Most rows in one statement.
const STATEMENT_ROWS: usize = 1000;
/// Cut a statement once its parameters hold this many bytes (below the
/// default `max_allowed_packet`).
const STATEMENT_BYTES: usize = 4 << 20;

/// What one batch statement does to its rows.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum StatementKind {
    Upsert,
    Delete,
}

/// Changes queued for one statement: consecutive changes of one table and kind.
pub(crate) struct Batch {
    table: TableId,
    kind: StatementKind,
    /// Columns carried (upserts: the columns the source sent).
    mask: Vec<bool>,
    params: Vec<MyValue>,
    bytes: usize,
    rows: usize,
    keys: HashSet<Vec<u8>>,
}

impl MysqlSink {
    fn key_bytes(t: &Target, row: &[Value]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut scratch = String::new();
        for &i in &t.key {
            sluice_schemas::json::write_value(&mut out, &row[i], &mut scratch);
            out.push(0x1f);
        }
        out
    }

    /// Queue one change; flushes the current batch when it cannot take it.
    pub(crate) async fn add(&mut self, ev: &ChangeEvent) -> Result<(), SinkError> {
        self.target(&ev.table).await?;
        if !self.touched.contains(&ev.table.id) {
            self.touched.insert(ev.table.id.clone());
        }
        let t = self.targets.get(&ev.table.id).expect("target");
        let keyless = t.key.is_empty();
        if ev.op == Op::Truncate {
            self.flush_batch().await?;
            self.begin().await?;
            let sql = format!("DELETE FROM {}", self.targets[&ev.table.id].name);
            return self.conn()?.query_drop(&sql).await.map_err(|e| sql_err(&sql, e));
        }
        if keyless && matches!(ev.op, Op::Update | Op::Delete) {
            self.flush_batch().await?;
            return self.apply_keyless(ev).await;
        }
        let (kind, mask, touched, values) = match ev.op {
            Op::Read | Op::Create | Op::Update => {
                let after = &ev.after.as_ref().expect("insert/update has a row").values;
                let new_key = Self::key_bytes(t, after);
                if ev.op == Op::Update {
                    if let Some(b) = &ev.before {
                        if t.key.iter().all(|&i| !matches!(b.values[i], Value::Unchanged)) {
                            let old_key = Self::key_bytes(t, &b.values);
                            if old_key != new_key {
                                self.flush_batch().await?;
                                return self.apply_key_change(ev).await;
                            }
                        }
                    }
                }
                let mask: Vec<bool> = after.iter().map(|v| !matches!(v, Value::Unchanged)).collect();
                let values = Self::values(t, after, (0..after.len()).filter(|&i| mask[i]))?;
                (StatementKind::Upsert, mask, new_key, values)
            }
            Op::Delete => {
                let before = &ev.before.as_ref().expect("delete has a row").values;
                let k = Self::key_bytes(t, before);
                (StatementKind::Delete, vec![], k, Self::values(t, before, t.key.iter().copied())?)
            }
            Op::Truncate => unreachable!("handled above"),
        };
        let per_row = values.len().max(1);
        let fits = self.batch.as_ref().is_some_and(|b| {
            b.table == ev.table.id
                && b.kind == kind
                && b.mask == mask
                && b.rows < STATEMENT_ROWS
                && b.params.len() + per_row <= MAX_PARAMS
                && b.bytes < STATEMENT_BYTES
                && (keyless || !b.keys.contains(&touched))
        });
        if !fits {
            self.flush_batch().await?;
            self.batch = Some(Batch {
                table: ev.table.id.clone(),
                kind,
                mask,
                params: Vec::new(),
                bytes: 0,
                rows: 0,
                keys: HashSet::new(),
            });
        }
        let b = self.batch.as_mut().expect("batch");
        b.bytes += values.iter().map(value_bytes).sum::<usize>();
        b.params.extend(values);
        b.rows += 1;
        if !keyless {
            b.keys.insert(touched);
        }
        Ok(())
    }

    pub(crate) async fn flush_batch(&mut self) -> Result<(), SinkError> {
        let Some(b) = self.batch.take() else { return Ok(()) };
        if b.rows == 0 {
            return Ok(());
        }
        self.begin().await?;
        let t = self.targets.get(&b.table).expect("target");
        let s = &t.schema;
        let q = |i: usize| quote_ident(&s.columns[i].name);
        let sql = match b.kind {
            StatementKind::Upsert => {
                let cols: Vec<usize> = (0..s.columns.len()).filter(|&i| b.mask[i]).collect();
                let names = cols.iter().map(|&i| q(i)).collect::<Vec<_>>().join(", ");
                let row = format!("({})", cols.iter().map(|&i| placeholder(&t.cols[i])).collect::<Vec<_>>().join(", "));
                let rows = vec![row.as_str(); b.rows].join(", ");
                let update = if t.key.is_empty() {
                    String::new()
                } else {
                    let mut sets: Vec<String> = Vec::new();
                    if t.guard {
                        // Assignments run in order: a matched row with another
                        // key gets a NULL key first, which strict mode refuses
                        // (error 1048) before anything of that row changes.
                        let same = t.key.iter().map(|&k| format!("{} <=> VALUES({})", q(k), q(k))).collect::<Vec<_>>();
                        let same = same.join(" AND ");
                        sets.extend(t.key.iter().map(|&k| format!("{} = IF({same}, {}, NULL)", q(k), q(k))));
                    }
                    sets.extend(
                        cols.iter().filter(|i| !t.key.contains(i)).map(|&i| format!("{} = VALUES({})", q(i), q(i))),
                    );
                    if sets.is_empty() {
                        sets.push(format!("{} = {}", q(t.key[0]), q(t.key[0])));
                    }
                    format!(" ON DUPLICATE KEY UPDATE {}", sets.join(", "))
                };
                format!("INSERT INTO {} ({names}) VALUES {rows}{update}", t.name)
            }
            StatementKind::Delete => {
                let keys = t.key.iter().map(|&i| q(i)).collect::<Vec<_>>().join(", ");
                let one = format!("({})", vec!["?"; t.key.len()].join(", "));
                format!("DELETE FROM {} WHERE ({keys}) IN ({})", t.name, vec![one.as_str(); b.rows].join(", "))
            }
        };
        let what = format!("applying changes to {}", s.id);
        let guarded = t.guard && b.kind == StatementKind::Upsert;
        let key_names: Vec<String> = t.key.iter().map(|&k| format!("'{}'", s.columns[k].name)).collect();
        let id = s.id.clone();
        if let Err(e) = self.conn()?.exec_drop(sql, Params::Positional(b.params)).await {
            if let mysql_async::Error::Server(se) = &e {
                if guarded && se.code == 1048 && key_names.iter().any(|k| se.message.contains(k.as_str())) {
                    return Err(Self::table_err(
                        &id,
                        "a row from the source has the same value as a different target row in a unique index \
                         other than the key; ON DUPLICATE KEY UPDATE would overwrite that row, so the table is \
                         stopped: make the target's unique indexes match the source's",
                    ));
                }
            }
            return Err(sql_err(what, e));
        }
        self.applied += b.rows as u64;
        self.total += b.rows as u64;
        Ok(())
    }

    /// An update that changes the key: `UPDATE ... WHERE key = old`.
    async fn apply_key_change(&mut self, ev: &ChangeEvent) -> Result<(), SinkError> {
        self.begin().await?;
        let t = self.targets.get(&ev.table.id).expect("target");
        let after = &ev.after.as_ref().expect("update has a row").values;
        let before = &ev.before.as_ref().expect("key change has the old key").values;
        let set: Vec<usize> = (0..after.len()).filter(|&i| !matches!(after[i], Value::Unchanged)).collect();
        let mut params = Self::values(t, after, set.iter().copied())?;
        params.extend(Self::values(t, before, t.key.iter().copied())?);
        let sets: Vec<String> = set
            .iter()
            .map(|&i| format!("{} = {}", quote_ident(&t.schema.columns[i].name), placeholder(&t.cols[i])))
            .collect();
        let conds: Vec<String> =
            t.key.iter().map(|&i| format!("{} = ?", quote_ident(&t.schema.columns[i].name))).collect();
        let sql = format!("UPDATE {} SET {} WHERE {}", t.name, sets.join(", "), conds.join(" AND "));
        let what = format!("applying a key change to {}", t.schema.id);
        self.conn()?.exec_drop(sql, Params::Positional(params)).await.map_err(|e| sql_err(what, e))?;
        self.applied += 1;
        self.total += 1;
        Ok(())
    }

    /// Update/delete one row of a table without a key, matched by its full old image.
    async fn apply_keyless(&mut self, ev: &ChangeEvent) -> Result<(), SinkError> {
        self.begin().await?;
        let t = self.targets.get(&ev.table.id).expect("target");
        let s = &t.schema;
        let before = &ev.before.as_ref().ok_or_else(|| {
            Self::table_err(&s.id, "an update/delete without the old row (set REPLICA IDENTITY FULL)")
        })?;
        let mysql = self.flavor == Flavor::Mysql;
        let mut conds = Vec::new();
        let mut cond_params = Vec::new();
        for (i, v) in before.values.iter().enumerate() {
            let col = quote_ident(&s.columns[i].name);
            match v {
                Value::Unchanged => continue,
                Value::Null => conds.push(format!("{col} IS NULL")),
                _ => {
                    let ty = &t.cols[i].ty;
                    let rhs = if t.cols[i].conv == MyConv::Geometry {
                        "ST_GeomFromWKB(CAST(? AS BINARY))"
                    } else if ty.starts_with("float") {
                        "CAST(? AS FLOAT)"
                    } else if ty == "json" && mysql {
                        "CAST(? AS JSON)"
                    } else {
                        "?"
                    };
                    conds.push(format!("{col} = {rhs}"));
                    cond_params.extend(Self::values(t, &before.values, std::iter::once(i))?);
                }
            }
        }
        let (sql, params) = match ev.op {
            Op::Delete => (format!("DELETE FROM {} WHERE {} LIMIT 1", t.name, conds.join(" AND ")), cond_params),
            _ => {
                let after = &ev.after.as_ref().expect("row").values;
                let set: Vec<usize> = (0..after.len()).filter(|&i| !matches!(after[i], Value::Unchanged)).collect();
                let sets: Vec<String> = set
                    .iter()
                    .map(|&i| format!("{} = {}", quote_ident(&s.columns[i].name), placeholder(&t.cols[i])))
                    .collect();
                let mut params = Self::values(t, after, set.iter().copied())?;
                params.extend(cond_params);
                (format!("UPDATE {} SET {} WHERE {} LIMIT 1", t.name, sets.join(", "), conds.join(" AND ")), params)
            }
        };
        let what = format!("applying a change to {}", s.id);
        self.conn()?.exec_drop(sql, Params::Positional(params)).await.map_err(|e| sql_err(what, e))?;
        self.applied += 1;
        self.total += 1;
        Ok(())
    }
}
