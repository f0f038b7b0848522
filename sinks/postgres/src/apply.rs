//! Applying changes: consecutive changes of one table and kind go as one
//! statement over `unnest(...)` arrays, pipelined up to `MAX_IN_FLIGHT`.
//!
//! Invariants:
//! - A batch is cut whenever a key repeats, so the changes of one row keep
//!   their order.
//! - Inserts are plain until one finds its key in the target; that table is
//!   then marked for upserts (`UpsertTables`) and the error asks for a replay.
//! - Updates set only the columns the source sent (unchanged TOAST values
//!   are never overwritten with NULL); tables without a key match rows by
//!   their full old image and change one row (`ctid`) at a time.

use std::collections::HashSet;

use tokio_postgres::types::{ToSql, Type};

use sluice_core::error::{ErrorKind, SinkError};
use sluice_core::{ChangeEvent, Op, TableId, Value};

use crate::*;

impl PostgresSink {
    /// Await pipelined statements until at most `keep` are in flight.
    pub(crate) async fn settle(&mut self, keep: usize) -> Result<(), SinkError> {
        while self.pending.len() > keep {
            let (what, plain, answer) = self.pending.pop_front().expect("pending");
            if let Err(e) = answer.await {
                self.pending.clear();
                return Err(self.apply_err(what, plain, e));
            }
        }
        Ok(())
    }

    /// The error of an apply statement. A plain insert that found its key in
    /// the target marks the table for upserts and asks for a replay.
    pub(crate) fn apply_err(&self, what: String, plain: Option<TableId>, e: tokio_postgres::Error) -> SinkError {
        let unique = e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION);
        match plain {
            Some(table) if unique => {
                let detail = e.as_db_error().and_then(|d| d.detail()).unwrap_or_default().to_string();
                self.upserts.lock().unwrap_or_else(|p| p.into_inner()).insert(table.clone());
                SinkError::new(
                    ErrorKind::Transient,
                    format!(
                        "postgres sink: {table}: an inserted row is already in the target ({detail}); replaying from \
                         the checkpoint with upserts for this table"
                    ),
                )
            }
            _ => sql_err(what, e),
        }
    }

    pub(crate) fn key_values(t: &Target, row: &[Value]) -> Vec<Value> {
        t.key.iter().map(|&i| row[i].clone()).collect()
    }

    /// A hash of the key columns' values.
    pub(crate) fn key_hash(t: &Target, row: &[Value]) -> u64 {
        use std::hash::Hasher;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for &i in &t.key {
            hash_value(&row[i], &mut h);
        }
        h.finish()
    }

    /// Queue one change; flushes the current batch when it cannot take it.
    pub(crate) async fn add(&mut self, ev: &ChangeEvent) -> Result<(), SinkError> {
        self.target(&ev.table).await?;
        if ev.op == Op::Create {
            self.check_arbiter(&ev.table.id).await?;
        }
        let keyless = self.targets.get(&ev.table.id).expect("target").key.is_empty();
        if keyless && matches!(ev.op, Op::Update | Op::Delete) {
            self.flush_batch().await?;
            return self.apply_keyless(ev).await;
        }
        if ev.op == Op::Truncate {
            self.flush_batch().await?;
            self.begin().await?;
            let sql = format!("TRUNCATE {}", self.targets.get(&ev.table.id).expect("target").name);
            self.client().await?.batch_execute(&sql).await.map_err(|e| sql_err(&sql, e))?;
            return Ok(());
        }
        let t = self.targets.get(&ev.table.id).expect("target");
        let masked =
            |row: &[Value]| -> Vec<Value> { row.iter().filter(|v| !matches!(v, Value::Unchanged)).cloned().collect() };
        // (kind, column mask, the keys it touches, values)
        let (kind, mask, touched, values) = match ev.op {
            Op::Read | Op::Create => {
                let row = &ev.after.as_ref().expect("insert has a row").values;
                let mask: Vec<bool> = row.iter().map(|v| !matches!(v, Value::Unchanged)).collect();
                (StatementKind::Upsert, mask, vec![Self::key_hash(t, row)], masked(row))
            }
            Op::Update => {
                let after = &ev.after.as_ref().expect("update has a row").values;
                let old = match &ev.before {
                    Some(b) if t.key.iter().all(|&i| !matches!(b.values[i], Value::Unchanged)) => &b.values,
                    _ => after,
                };
                let mask: Vec<bool> = after.iter().map(|v| !matches!(v, Value::Unchanged)).collect();
                let mut vals = Self::key_values(t, old);
                vals.extend(masked(after));
                // Both keys count as touched: a chain a→b, b→c must not share a statement.
                (StatementKind::Update, mask, vec![Self::key_hash(t, old), Self::key_hash(t, after)], vals)
            }
            Op::Delete => {
                let before = &ev.before.as_ref().expect("delete has a row").values;
                (StatementKind::Delete, vec![], vec![Self::key_hash(t, before)], Self::key_values(t, before))
            }
            Op::Truncate => unreachable!("handled above"),
        };
        let fits = match &self.batch {
            Some(b) => {
                b.table == ev.table.id
                    && b.kind == kind
                    && b.mask == mask
                    && b.rows < STATEMENT_ROWS
                    && (keyless || !touched.iter().any(|k| b.keys.contains(k)))
            }
            None => false,
        };
        if !fits {
            self.flush_batch().await?;
            let t = self.targets.get(&ev.table.id).expect("target");
            let cols = param_columns(t, kind, &mask).into_iter().map(|i| Param::new(t.bin[i], t.convs[i])).collect();
            self.batch = Some(Batch { table: ev.table.id.clone(), kind, mask, cols, rows: 0, keys: HashSet::new() });
        }
        let b = self.batch.as_mut().expect("batch");
        let lens: Vec<usize> = b.cols.iter().map(Param::len).collect();
        for (p, (c, v)) in b.cols.iter_mut().zip(&values).enumerate() {
            if let Err(e) = c.push(v) {
                for (c, len) in b.cols.iter_mut().zip(&lens) {
                    c.truncate(*len, b.rows);
                }
                let t = &self.targets[&ev.table.id];
                let col = &t.schema.columns[param_columns(t, kind, &b.mask)[p]].name;
                return Err(SinkError::new(
                    ErrorKind::Table,
                    format!("postgres sink: {}: column {col}: {e}", ev.table.id),
                ));
            }
        }
        b.rows += 1;
        if !keyless {
            b.keys.extend(touched);
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
        let cast = |p: usize, i: usize| format!("u.p{p}::{}", t.types[i]);
        let param_cols = param_columns(t, b.kind, &b.mask);
        let param = |p: usize| match t.bin[param_cols[p]] {
            Some(_) => format!("${}::{}[]", p + 1, t.types[param_cols[p]]),
            None => format!("${}::text[]", p + 1),
        };
        // Inserts of a table that never met a conflict go without ON CONFLICT.
        let plain = (b.kind == StatementKind::Upsert && !t.key.is_empty() && !self.takes_upserts(&b.table))
            .then(|| b.table.clone());
        let sql = match b.kind {
            StatementKind::Upsert => {
                let cols: Vec<usize> = (0..s.columns.len()).filter(|&i| b.mask[i]).collect();
                let aliases = (0..cols.len()).map(|p| format!("p{p}")).collect::<Vec<_>>().join(", ");
                let params = (0..cols.len()).map(param).collect::<Vec<_>>().join(", ");
                let select = cols.iter().enumerate().map(|(p, &i)| cast(p, i)).collect::<Vec<_>>().join(", ");
                let names = cols.iter().map(|&i| q(i)).collect::<Vec<_>>().join(", ");
                let conflict = if t.key.is_empty() || plain.is_some() {
                    String::new()
                } else {
                    let keys = t.key.iter().map(|&i| q(i)).collect::<Vec<_>>().join(", ");
                    let sets: Vec<String> = cols
                        .iter()
                        .filter(|i| !t.key.contains(i))
                        .map(|&i| format!("{} = EXCLUDED.{}", q(i), q(i)))
                        .collect();
                    if sets.is_empty() {
                        format!(" ON CONFLICT ({keys}) DO NOTHING")
                    } else {
                        format!(" ON CONFLICT ({keys}) DO UPDATE SET {}", sets.join(", "))
                    }
                };
                format!(
                    "INSERT INTO {} ({names}) SELECT {select} FROM unnest({params}) AS u({aliases}){conflict}",
                    t.name
                )
            }
            StatementKind::Update => {
                let nk = t.key.len();
                let cols: Vec<usize> = (0..s.columns.len()).filter(|&i| b.mask[i]).collect();
                let total = nk + cols.len();
                let aliases = (0..total).map(|p| format!("p{p}")).collect::<Vec<_>>().join(", ");
                let params = (0..total).map(param).collect::<Vec<_>>().join(", ");
                let sets = cols
                    .iter()
                    .enumerate()
                    .map(|(j, &i)| format!("{} = {}", q(i), cast(nk + j, i)))
                    .collect::<Vec<_>>();
                let conds =
                    t.key.iter().enumerate().map(|(p, &i)| format!("t.{} = {}", q(i), cast(p, i))).collect::<Vec<_>>();
                format!(
                    "UPDATE {} AS t SET {} FROM unnest({params}) AS u({aliases}) WHERE {}",
                    t.name,
                    sets.join(", "),
                    conds.join(" AND ")
                )
            }
            StatementKind::Delete => {
                let nk = t.key.len();
                let aliases = (0..nk).map(|p| format!("p{p}")).collect::<Vec<_>>().join(", ");
                let params = (0..nk).map(param).collect::<Vec<_>>().join(", ");
                let conds =
                    t.key.iter().enumerate().map(|(p, &i)| format!("t.{} = {}", q(i), cast(p, i))).collect::<Vec<_>>();
                format!(
                    "DELETE FROM {} AS t USING unnest({params}) AS u({aliases}) WHERE {}",
                    t.name,
                    conds.join(" AND ")
                )
            }
        };
        let rows = b.rows as u64;
        let params = b.cols;
        let what = format!("applying changes to {}", s.id);
        let preparing = format!("preparing for {}", s.id);
        let client = self.client.clone().ok_or_else(|| SinkError::new(ErrorKind::Transient, "not connected"))?;
        let stmt = match self.stmts.get(&sql) {
            Some(st) => st.clone(),
            None => {
                // An earlier statement's error must be the one reported, not
                // the aborted transaction's refusal to prepare.
                self.settle(0).await?;
                let st = client.prepare(&sql).await.map_err(|e| sql_err(&preparing, e))?;
                self.stmts.insert(sql, st.clone());
                st
            }
        };
        // Pipelined: the server applies this batch while the next is built.
        // The first poll sends the request, so requests leave in order.
        self.settle(MAX_IN_FLIGHT - 1).await?;
        let mut answer: Pending = Box::pin(async move {
            let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
            client.execute(&stmt, &refs).await
        });
        match std::future::poll_fn(|cx| std::task::Poll::Ready(answer.as_mut().poll(cx))).await {
            std::task::Poll::Ready(r) => {
                if let Err(e) = r {
                    return Err(self.apply_err(what, plain, e));
                }
            }
            std::task::Poll::Pending => self.pending.push_back((what, plain, answer)),
        }
        self.applied += rows;
        self.total += rows;
        Ok(())
    }

    /// Update/delete one row of a table without a key, matched by its full old image.
    pub(crate) async fn apply_keyless(&mut self, ev: &ChangeEvent) -> Result<(), SinkError> {
        self.begin().await?;
        let client = self.client().await?;
        let t = self.targets.get(&ev.table.id).expect("target");
        let s = &t.schema;
        let before = &ev.before.as_ref().ok_or_else(|| {
            SinkError::new(
                ErrorKind::Table,
                format!("postgres sink: {}: an update/delete without the old row (set REPLICA IDENTITY FULL)", s.id),
            )
        })?;
        let mut params: Vec<Option<String>> = Vec::new();
        let mut conds = Vec::new();
        for (i, v) in before.values.iter().enumerate() {
            if matches!(v, Value::Unchanged) {
                continue;
            }
            params.push(pg_text(v, t.convs[i]));
            let n = params.len();
            let (lhs, rhs) = if t.types[i].contains("json") {
                (format!("{}::jsonb", quote_ident(&s.columns[i].name)), format!("${n}::jsonb"))
            } else {
                (quote_ident(&s.columns[i].name), format!("${n}::text::{}", t.types[i]))
            };
            conds.push(format!("{lhs} IS NOT DISTINCT FROM {rhs}"));
        }
        let target_row = format!("SELECT ctid FROM {} WHERE {} LIMIT 1", t.name, conds.join(" AND "));
        let sql = match ev.op {
            Op::Delete => format!("DELETE FROM {} WHERE ctid = ({target_row})", t.name),
            _ => {
                let after = &ev.after.as_ref().expect("row").values;
                let mut sets = Vec::new();
                for (i, v) in after.iter().enumerate() {
                    if matches!(v, Value::Unchanged) {
                        continue;
                    }
                    params.push(pg_text(v, t.convs[i]));
                    sets.push(format!("{} = ${}::text::{}", quote_ident(&s.columns[i].name), params.len(), t.types[i]));
                }
                format!("UPDATE {} SET {} WHERE ctid = ({target_row})", t.name, sets.join(", "))
            }
        };
        let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
        let types = vec![Type::TEXT; refs.len()];
        let stmt =
            client.prepare_typed(&sql, &types).await.map_err(|e| sql_err(format!("preparing for {}", s.id), e))?;
        client.execute(&stmt, &refs).await.map_err(|e| sql_err(format!("applying a change to {}", s.id), e))?;
        self.applied += 1;
        self.total += 1;
        Ok(())
    }
}

/// The table column behind each parameter of a batch statement: updates
/// carry the old key, then the columns sent; upserts the columns sent;
/// deletes the key.
pub(crate) fn param_columns(t: &Target, kind: StatementKind, mask: &[bool]) -> Vec<usize> {
    let sent = (0..t.schema.columns.len()).filter(|&i| mask.get(i).copied().unwrap_or(false));
    match kind {
        StatementKind::Upsert => sent.collect(),
        StatementKind::Update => t.key.iter().copied().chain(sent).collect(),
        StatementKind::Delete => t.key.clone(),
    }
}

/// Feed a value into a hasher (floats by their bits).
pub(crate) fn hash_value(v: &Value, h: &mut impl std::hash::Hasher) {
    use std::hash::Hash;
    std::mem::discriminant(v).hash(h);
    match v {
        Value::Null | Value::Unchanged => {}
        Value::Bool(b) => b.hash(h),
        Value::Int(i) | Value::Time(i) | Value::Timestamp(i) | Value::TimestampTz(i) => i.hash(h),
        Value::UInt(u) => u.hash(h),
        Value::Float(f) => f.to_bits().hash(h),
        Value::Date(d) => d.hash(h),
        Value::Numeric(t) | Value::Text(t) | Value::Uuid(t) | Value::Json(t) => t.hash(h),
        Value::Bytes(b) => b.hash(h),
        Value::Array(items) => items.iter().for_each(|x| hash_value(x, h)),
    }
}
