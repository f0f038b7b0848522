//! The target's tables: created when missing (`sink.create_tables`),
//! columns added and dropped as the source's were, existing columns' types
//! checked against the source's, and the key checked for a unique index.
//!
//! Invariants:
//! - MySQL commits implicitly before every DDL statement, so no DDL ever
//!   runs on the applying session. Tables are created and columns added on a
//!   second session, only for tables the open target transaction has not
//!   touched (it holds their metadata locks). A schema change of a table the
//!   open transaction has touched rolls that transaction back, alters the
//!   table, and reports a transient error: the runtime replays from the
//!   checkpoint, and the replay finds the column already there. Dropped
//!   columns are dropped after the commit that follows.
//! - Sluice does not follow type changes: a target column whose base type
//!   differs from what the source column maps to, or a source column that
//!   changes type mid-stream, stops its table.
//! - A table with a key must have a unique index on exactly the key (or
//!   changes could not be matched to its rows); other unique indexes make
//!   its upserts guarded (see `apply`).
//! - Databases and tables Sluice creates (`sluice_checkpoints` too) use the
//!   binary, no-pad collation, so keys differing in case or trailing spaces
//!   stay distinct.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use mysql_async::prelude::Queryable;
use sluice_client_mysql::{quote_ident, Flavor};
use sluice_core::error::{ErrorKind, SinkError};
use sluice_core::{ReplicaIdentity, TableSchema};
use sluice_schemas::target::{my_type, MyColumn};

use crate::{sql_err, MysqlSink, Target};

/// Do two MySQL column types have the same base type (`int(11) unsigned`
/// and `int`, `tinyint(1)` and `boolean`, MariaDB's `longtext` and `json`)?
fn same_base_type(a: &str, b: &str) -> bool {
    let base = |t: &str| -> String {
        let t = t.trim().to_ascii_lowercase();
        let b = t.split(['(', ' ']).next().unwrap_or("").to_string();
        match b.as_str() {
            "boolean" | "bool" => "tinyint".into(),
            "integer" => "int".into(),
            "dec" | "numeric" | "fixed" => "decimal".into(),
            "real" => "double".into(),
            "json" => "longtext".into(),
            _ => b,
        }
    };
    base(a) == base(b)
}

impl MysqlSink {
    /// The binary, no-pad collation: keys differing in case or trailing spaces stay distinct.
    pub(crate) fn collation(&self) -> &'static str {
        match self.flavor {
            Flavor::MariaDb => "utf8mb4_nopad_bin",
            Flavor::Mysql => "utf8mb4_0900_bin",
        }
    }

    /// Columns (name → `COLUMN_TYPE`) of a target table; empty if it does not exist.
    async fn target_columns(&mut self, db: &str, table: &str) -> Result<HashMap<String, String>, SinkError> {
        let rows: Vec<(String, String)> = self
            .conn()?
            .exec(
                "SELECT COLUMN_NAME, COLUMN_TYPE FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
                (db, table),
            )
            .await
            .map_err(|e| sql_err(format!("reading the columns of {db}.{table}"), e))?;
        Ok(rows.into_iter().collect())
    }

    /// Make sure the target table exists and matches `schema` (adding and
    /// dropping columns as the source did).
    pub(crate) async fn target(&mut self, schema: &Arc<TableSchema>) -> Result<(), SinkError> {
        if let Some(t) = self.targets.get(&schema.id) {
            if Arc::ptr_eq(&t.schema, schema) || t.schema.same_shape(schema) {
                return Ok(());
            }
        }
        self.flush_batch().await?;
        let db = self.cfg.schema.clone().unwrap_or_else(|| schema.id.schema.clone());
        let name = format!("{}.{}", quote_ident(&db), quote_ident(&schema.id.name));
        let cols = self.column_types(schema)?;
        // Under REPLICA IDENTITY FULL every column is "identity": such tables
        // are matched by their whole old row, like tables without a key.
        let key: Vec<usize> = if matches!(schema.replica_identity, ReplicaIdentity::Full | ReplicaIdentity::Nothing) {
            Vec::new()
        } else {
            schema.key_columns().map(|(i, _)| i).collect()
        };
        let mut have = self.target_columns(&db, &schema.id.name).await?;
        if have.is_empty() {
            if !self.cfg.create_tables {
                return Err(Self::table_err(
                    &schema.id,
                    format!("target table {name} does not exist (create it, or set sink.create_tables: true)"),
                ));
            }
            self.create_table(&db, &name, schema, &cols, &key).await?;
            have = self.target_columns(&db, &schema.id.name).await?;
        }
        match self.targets.get(&schema.id) {
            // A table that predates this run: its columns must have the types the source's map to.
            None => check_types(schema, &cols, &have, &name)?,
            Some(old) => {
                let keep = self.cfg.keep_dropped_columns;
                follow_change(old, schema, &cols, &have, &name, keep, &mut self.drops)?
            }
        }
        self.empty_readded(&name, schema).await?;
        self.add_columns(&name, schema, &cols, &have).await?;
        let guard = self.unique_indexes(&db, schema, &key).await?;
        self.targets.insert(schema.id.clone(), Target { name, schema: schema.clone(), cols, key, guard });
        Ok(())
    }

    /// The target type of each column (warning once per table about lossy mappings).
    fn column_types(&self, schema: &TableSchema) -> Result<Vec<MyColumn>, SinkError> {
        // Under REPLICA IDENTITY FULL every column is "identity" but none is
        // a key in the target: type them as plain columns, or long text
        // would be cut to the size an index allows.
        let full = matches!(schema.replica_identity, ReplicaIdentity::Full | ReplicaIdentity::Nothing);
        let mut cols = Vec::with_capacity(schema.columns.len());
        for c in &schema.columns {
            let plain;
            let c = if full && c.key {
                plain = sluice_core::Column { key: false, ..c.clone() };
                &plain
            } else {
                c
            };
            let m = my_type(c, self.uuid_type).map_err(|e| Self::table_err(&schema.id, e))?;
            if let Some(w) = &m.warning {
                if !self.targets.contains_key(&schema.id) {
                    tracing::warn!(table = %schema.id, "{w}");
                }
            }
            cols.push(m);
        }
        Ok(cols)
    }

    /// The database (if missing) and the table, with the key as primary key,
    /// in the binary no-pad collation.
    async fn create_table(
        &mut self,
        db: &str,
        name: &str,
        schema: &TableSchema,
        cols: &[MyColumn],
        key: &[usize],
    ) -> Result<(), SinkError> {
        let coll = self.collation();
        let mut defs: Vec<String> =
            schema.columns.iter().enumerate().map(|(i, c)| decl(c, &cols[i], key.contains(&i))).collect();
        if !key.is_empty() {
            let k: Vec<String> = key.iter().map(|&i| quote_ident(&schema.columns[i].name)).collect();
            defs.push(format!("PRIMARY KEY ({})", k.join(", ")));
        }
        self.ddl(&format!("CREATE DATABASE IF NOT EXISTS {} CHARACTER SET utf8mb4 COLLATE {coll}", quote_ident(db)))
            .await?;
        self.ddl(&format!(
            "CREATE TABLE IF NOT EXISTS {name} ({}) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE={coll}",
            defs.join(", ")
        ))
        .await?;
        tracing::info!(table = %schema.id, "created target table {name}");
        Ok(())
    }

    /// A column dropped and added back before its drop ran: empty it, as a
    /// new column is (in this transaction), instead of dropping it.
    async fn empty_readded(&mut self, name: &str, schema: &TableSchema) -> Result<(), SinkError> {
        let readded: Vec<String> = self
            .drops
            .iter()
            .filter(|(n, c)| n == name && schema.column_index(c).is_some())
            .map(|(_, c)| c.clone())
            .collect();
        if readded.is_empty() {
            return Ok(());
        }
        self.drops.retain(|(n, c)| n != name || !readded.contains(c));
        let sets: Vec<String> = readded.iter().map(|c| format!("{} = NULL", quote_ident(c))).collect();
        let sql = format!("UPDATE {name} SET {}", sets.join(", "));
        self.begin().await?;
        self.touched.insert(schema.id.clone());
        self.conn()?.query_drop(&sql).await.map_err(|e| sql_err(&sql, e))
    }

    /// Columns the source has and the target lacks (a table that predates
    /// this run, or ADD COLUMN); columns only the target has are kept.
    async fn add_columns(
        &mut self,
        name: &str,
        schema: &TableSchema,
        cols: &[MyColumn],
        have: &HashMap<String, String>,
    ) -> Result<(), SinkError> {
        let add: Vec<String> = schema
            .columns
            .iter()
            .zip(cols)
            .filter(|(c, _)| !have.contains_key(&c.name))
            .map(|(c, m)| format!("ADD COLUMN {}", decl(c, m, false)))
            .collect();
        if add.is_empty() {
            return Ok(());
        }
        let sql = format!("ALTER TABLE {name} {}", add.join(", "));
        if self.touched.contains(&schema.id) {
            // The open transaction holds this table: it must end first,
            // and it cannot commit mid-source-transaction. Replay instead.
            self.conn()?.query_drop("ROLLBACK").await.map_err(|e| sql_err("ROLLBACK", e))?;
            self.in_tx = false;
            self.ddl(&sql).await?;
            tracing::info!(table = %schema.id, "target table altered: {}; replaying from the checkpoint", add.join(", "));
            return Err(SinkError::new(
                ErrorKind::Transient,
                format!("mysql sink: {}: columns added mid-transaction; replaying from the checkpoint", schema.id),
            ));
        }
        self.ddl(&sql).await?;
        tracing::info!(table = %schema.id, "target table altered: {}", add.join(", "));
        Ok(())
    }

    /// The target table's unique indexes against the key: an error unless
    /// one is on exactly the key columns (upserts could not find rows), and
    /// whether there are others (upserts need a guard).
    async fn unique_indexes(&mut self, db: &str, schema: &TableSchema, key: &[usize]) -> Result<bool, SinkError> {
        if key.is_empty() {
            return Ok(false);
        }
        let rows: Vec<(String, String)> = self
            .conn()?
            .exec(
                "SELECT INDEX_NAME, COLUMN_NAME FROM information_schema.STATISTICS \
                 WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND NON_UNIQUE = 0 ORDER BY INDEX_NAME, SEQ_IN_INDEX",
                (db, &schema.id.name),
            )
            .await
            .map_err(|e| sql_err(format!("reading the unique indexes of {db}.{}", schema.id.name), e))?;
        let mut indexes: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (index, col) in rows {
            indexes.entry(index).or_default().insert(col.to_lowercase());
        }
        let want: BTreeSet<String> = key.iter().map(|&i| schema.columns[i].name.to_lowercase()).collect();
        if !indexes.values().any(|cols| *cols == want) {
            let names: Vec<String> = key.iter().map(|&i| schema.columns[i].name.clone()).collect();
            return Err(Self::table_err(
                &schema.id,
                format!(
                    "the target table {db}.{} has no primary key or unique index on ({}), the source's key, so \
                     changes cannot be matched to its rows; add PRIMARY KEY ({}) to it",
                    schema.id.name,
                    names.join(", "),
                    names.iter().map(|n| quote_ident(n)).collect::<Vec<_>>().join(", ")
                ),
            ));
        }
        Ok(indexes.len() > 1)
    }

    /// Drop the columns the source dropped (`drops`): run once the
    /// transaction that last used them has committed.
    pub(crate) async fn drop_columns(&mut self) -> Result<(), SinkError> {
        while let Some((table, column)) = self.drops.first().cloned() {
            let sql = format!("ALTER TABLE {table} DROP COLUMN {}", quote_ident(&column));
            self.ddl(&sql).await?;
            self.drops.remove(0);
            tracing::info!("target table altered: {sql}");
        }
        Ok(())
    }
}

/// A column's definition in `CREATE TABLE` / `ADD COLUMN`.
fn decl(c: &sluice_core::Column, m: &MyColumn, key: bool) -> String {
    format!("{} {}{}", quote_ident(&c.name), m.ty, if key { " NOT NULL" } else { " NULL" })
}

/// A table met for the first time in this run: the columns it has must have
/// the base types the source's map to.
fn check_types(
    schema: &TableSchema,
    cols: &[MyColumn],
    have: &HashMap<String, String>,
    name: &str,
) -> Result<(), SinkError> {
    for (c, m) in schema.columns.iter().zip(cols) {
        if let Some(have) = have.get(&c.name) {
            if !same_base_type(have, &m.ty) {
                return Err(MysqlSink::table_err(
                    &schema.id,
                    format!(
                        "column {} changed type: it is {have} in the target table {name} but {} from the \
                         source; Sluice does not follow type changes: alter the target column and copy the \
                         table again",
                        c.name, m.ty
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// A schema change mid-stream: a type the mapping cannot follow stops the
/// table; dropped columns are queued in `drops` (they are dropped after the
/// next commit).
fn follow_change(
    old: &Target,
    schema: &TableSchema,
    cols: &[MyColumn],
    have: &HashMap<String, String>,
    name: &str,
    keep_dropped: bool,
    drops: &mut Vec<(String, String)>,
) -> Result<(), SinkError> {
    for (c, m) in schema.columns.iter().zip(cols) {
        if let Some(j) = old.schema.column_index(&c.name) {
            // Logical types: the binlog and the catalog spell the same
            // column differently (`bigint` / `bigint(20)`).
            if old.schema.columns[j].ty != c.ty {
                return Err(MysqlSink::table_err(
                    &schema.id,
                    format!(
                        "column {} changed type from {} to {}; Sluice does not follow type changes: alter \
                         the target column and restart",
                        c.name, old.cols[j].ty, m.ty
                    ),
                ));
            }
        }
    }
    for o in &old.schema.columns {
        if schema.column_index(&o.name).is_none() && have.contains_key(&o.name) && !keep_dropped {
            drops.push((name.to_string(), o.name.clone()));
        }
    }
    Ok(())
}
