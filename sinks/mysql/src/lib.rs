//! The MySQL/MariaDB replica sink: apply change events to InnoDB tables,
//! exactly once.
//!
//! Invariants:
//! - One target transaction holds whole source transactions (commits happen
//!   only when the runtime flushes, between source transactions) plus this
//!   pipeline's row in `<checkpoint db>.sluice_checkpoints`. A crash at any
//!   instant leaves the target at a committed prefix of source transactions
//!   with the position to resume from; on start the runtime takes it from
//!   there.
//! - MySQL commits implicitly before every DDL statement, so no DDL ever
//!   runs on the applying session. Tables are created and columns added on a
//!   second session, only for tables the open target transaction has not
//!   touched (it holds their metadata locks). A schema change of a table the
//!   open transaction has touched rolls that transaction back, alters the
//!   table, and reports a transient error: the runtime replays from the
//!   checkpoint, and the replay finds the column already there. Dropped
//!   columns are dropped after the commit that follows.
//! - `TRUNCATE` (also an implicit commit) is applied as `DELETE FROM`; a
//!   table's snapshot copy starts with one, in the same transaction, so an
//!   interrupted copy never leaves duplicates.
//! - Values are always statement parameters (binary protocol), identifiers
//!   always quoted with backticks; sessions run in strict SQL mode, so a
//!   value MySQL cannot hold is an error, never a silent truncation. Values
//!   MySQL has no form for (NaN, infinite or BC dates, numerics beyond
//!   DECIMAL(65,30)) stop with an error naming the table and column.
//! - Consecutive changes of one table and kind are applied as one
//!   multi-row statement (`INSERT ... ON DUPLICATE KEY UPDATE`, `DELETE ...
//!   WHERE key IN (...)`), cut whenever a key repeats, so the order of
//!   changes to one row is kept. Updates set only the columns the source
//!   sent (unchanged TOAST values are never overwritten); a key change is
//!   its own `UPDATE ... WHERE key = old`. Tables without a key match rows by
//!   their full old image and change one row (`LIMIT 1`) at a time.
//! - An upsert never changes a row with another key: the target must have a
//!   unique index on exactly the key, and where it has other unique indexes
//!   (through which `ON DUPLICATE KEY UPDATE` could match a different row)
//!   the update part first sets the key to NULL unless the matched row has
//!   the incoming key, which strict mode refuses: that table stops.

mod durable;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Params, Value as MyValue};
use sluice_client_mysql::{classify, quote_ident, ConnInfo, Flavor};
use sluice_core::config::DbSinkConfig;
use sluice_core::error::{ErrorKind, SinkError};
use sluice_core::sink::{CommitWatermark, StoppedTables};
use sluice_core::value::{civil_from_days, NEG_INFINITY_DATE, NEG_INFINITY_TS};
use sluice_core::{ChangeEvent, Checkpoint, Op, ReplicaIdentity, Sink, TableId, TableSchema, Value};
use sluice_schemas::target::{my_type, MyColumn, MyConv};

/// Most parameters in one statement (MySQL's limit is 65535).
const MAX_PARAMS: usize = 60_000;
/// Most rows in one statement.
const STATEMENT_ROWS: usize = 1000;
/// Cut a statement once its parameters hold this many bytes (below the
/// default `max_allowed_packet`).
const STATEMENT_BYTES: usize = 4 << 20;

struct Target {
    /// Quoted `` `db`.`table` ``.
    name: String,
    schema: Arc<TableSchema>,
    cols: Vec<MyColumn>,
    key: Vec<usize>,
    /// The target has unique indexes besides the one on the key: an
    /// `ON DUPLICATE KEY UPDATE` could match a row with another key through
    /// one of them, so upserts check the matched row's key (see `flush_batch`).
    guard: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Upsert,
    Delete,
}

struct Batch {
    table: TableId,
    kind: Kind,
    /// Columns carried (upserts: the columns the source sent).
    mask: Vec<bool>,
    params: Vec<MyValue>,
    bytes: usize,
    rows: usize,
    keys: HashSet<Vec<u8>>,
}

pub struct MysqlSink {
    cfg: DbSinkConfig,
    pipeline: String,
    conn: Option<Conn>,
    ddl: Option<Conn>,
    flavor: Flavor,
    uuid_type: bool,
    in_tx: bool,
    /// Tables the open target transaction has written to.
    touched: HashSet<TableId>,
    targets: HashMap<TableId, Target>,
    batch: Option<Batch>,
    /// `ALTER TABLE ... DROP COLUMN` to run once the current transaction commits.
    drops: Vec<(String, String)>,
    unflushed: bool,
    applied: u64,
    copying: HashSet<TableId>,
    stored: Option<Checkpoint>,
    stopped: StoppedTables,
    total: u64,
    /// How the target's commits become durable (see `durable`).
    durability: durable::Mode,
    commits: CommitWatermark,
}

fn sql_err(what: impl std::fmt::Display, e: mysql_async::Error) -> SinkError {
    SinkError::new(classify(&e), format!("mysql sink: {what}: {e}"))
}

fn not_connected() -> SinkError {
    SinkError::new(ErrorKind::Transient, "mysql sink: not connected")
}

fn conn_err(e: sluice_core::error::ClientError) -> SinkError {
    SinkError::new(e.kind, format!("mysql sink: {}", e.message))
}

/// The session settings every sink session runs with: UTC, utf8mb4, strict.
const SESSION: &str = "SET SESSION sql_mode = 'STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION,NO_AUTO_VALUE_ON_ZERO', \
                       SESSION time_zone = '+00:00', SESSION lock_wait_timeout = 60, NAMES utf8mb4";

/// The database of `sluice_checkpoints`: `checkpoint_schema`, else the URL's database, else `sluice`.
fn checkpoint_db(cfg: &DbSinkConfig) -> String {
    if let Some(s) = &cfg.checkpoint_schema {
        return s.clone();
    }
    let url = cfg.url.trim().replace("mariadb://", "mysql://");
    mysql_async::Opts::from_url(&url).ok().and_then(|o| o.db_name().map(str::to_string)).unwrap_or("sluice".into())
}

async fn connect(cfg: &DbSinkConfig) -> Result<Conn, SinkError> {
    let info = ConnInfo::from_url(&cfg.url, cfg.tls.as_ref(), "sink").map_err(conn_err)?;
    let mut conn = info.connect().await.map_err(conn_err)?;
    conn.query_drop(SESSION).await.map_err(|e| sql_err("setting up the session", e))?;
    Ok(conn)
}

/// A value as a MySQL statement parameter, checked against what the column can hold.
fn my_value(v: &Value, conv: MyConv) -> Result<MyValue, String> {
    Ok(match v {
        Value::Null | Value::Unchanged => MyValue::NULL,
        Value::Bool(b) => MyValue::Int(*b as i64),
        Value::Int(i) => MyValue::Int(*i),
        Value::UInt(u) => MyValue::UInt(*u),
        Value::Float(f) => {
            if !f.is_finite() {
                return Err(format!("{f} cannot be stored in MySQL (no NaN or infinity)"));
            }
            MyValue::Double(*f)
        }
        Value::Numeric(t) => {
            if let MyConv::Decimal { int_digits, scale } = conv {
                check_decimal(t, int_digits, scale)?;
            }
            MyValue::Bytes(t.as_bytes().to_vec())
        }
        Value::Text(t) if conv == MyConv::BitString => {
            MyValue::UInt(u64::from_str_radix(t, 2).map_err(|_| format!("{t:?} is not a bit string"))?)
        }
        Value::Text(t) | Value::Uuid(t) | Value::Json(t) => MyValue::Bytes(t.as_bytes().to_vec()),
        Value::Bytes(b) => MyValue::Bytes(b.clone()),
        Value::Date(d) => {
            if *d == i32::MAX || *d == NEG_INFINITY_DATE {
                return Err("an infinite date cannot be stored in MySQL".into());
            }
            let (y, m, d) = civil_from_days(*d as i64);
            check_year(y)?;
            MyValue::Date(y as u16, m as u8, d as u8, 0, 0, 0, 0)
        }
        Value::Timestamp(t) | Value::TimestampTz(t) => {
            if *t == i64::MAX || *t == NEG_INFINITY_TS {
                return Err("an infinite timestamp cannot be stored in MySQL".into());
            }
            let days = t.div_euclid(86_400_000_000);
            let us = t.rem_euclid(86_400_000_000);
            let (y, m, d) = civil_from_days(days);
            check_year(y)?;
            let s = us / 1_000_000;
            MyValue::Date(
                y as u16,
                m as u8,
                d as u8,
                (s / 3600) as u8,
                (s / 60 % 60) as u8,
                (s % 60) as u8,
                (us % 1_000_000) as u32,
            )
        }
        Value::Time(t) => {
            let a = t.unsigned_abs();
            let s = a / 1_000_000;
            let h = s / 3600;
            MyValue::Time(
                *t < 0,
                (h / 24) as u32,
                (h % 24) as u8,
                (s / 60 % 60) as u8,
                (s % 60) as u8,
                (a % 1_000_000) as u32,
            )
        }
        Value::Array(_) => {
            let mut out = Vec::new();
            sluice_schemas::json::write_value(&mut out, v, &mut String::new());
            MyValue::Bytes(out)
        }
    })
}

fn check_year(y: i64) -> Result<(), String> {
    if (1..=9999).contains(&y) {
        Ok(())
    } else {
        Err(format!("year {y} is outside MySQL's range (1 to 9999)"))
    }
}

/// Would MySQL's DECIMAL with `int_digits` integer and `scale` fractional
/// digits hold `t` exactly?
fn check_decimal(t: &str, int_digits: u32, scale: u32) -> Result<(), String> {
    let body = t.strip_prefix('-').unwrap_or(t);
    if !body.bytes().next().is_some_and(|b| b.is_ascii_digit()) {
        return Err(format!("{t} cannot be stored in MySQL's DECIMAL"));
    }
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    let int = int.trim_start_matches('0');
    let frac = frac.trim_end_matches('0');
    if int.len() > int_digits as usize || frac.len() > scale as usize {
        return Err(format!("{t} does not fit DECIMAL({},{scale}) exactly (MySQL would round it)", int_digits + scale));
    }
    Ok(())
}

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

fn value_bytes(v: &MyValue) -> usize {
    match v {
        MyValue::Bytes(b) => b.len() + 8,
        _ => 8,
    }
}

/// Placeholder for one value of a column.
fn placeholder(c: &MyColumn) -> &'static str {
    if c.conv == MyConv::Geometry {
        "ST_GeomFromWKB(CAST(? AS BINARY))"
    } else {
        "?"
    }
}

impl MysqlSink {
    pub fn new(cfg: DbSinkConfig, pipeline: &str) -> MysqlSink {
        MysqlSink {
            cfg,
            pipeline: pipeline.to_string(),
            conn: None,
            ddl: None,
            flavor: Flavor::MariaDb,
            uuid_type: false,
            in_tx: false,
            touched: HashSet::new(),
            targets: HashMap::new(),
            batch: None,
            drops: Vec::new(),
            unflushed: false,
            applied: 0,
            copying: HashSet::new(),
            stored: None,
            stopped: StoppedTables::default(),
            total: 0,
            durability: durable::Mode::Commit,
            commits: CommitWatermark::default(),
        }
    }

    fn checkpoint_table(&self) -> String {
        format!("{}.sluice_checkpoints", quote_ident(&checkpoint_db(&self.cfg)))
    }

    /// The binary, no-pad collation: keys differing in case or trailing spaces stay distinct.
    fn collation(&self) -> &'static str {
        match self.flavor {
            Flavor::MariaDb => "utf8mb4_nopad_bin",
            Flavor::Mysql => "utf8mb4_0900_bin",
        }
    }

    fn conn(&mut self) -> Result<&mut Conn, SinkError> {
        self.conn.as_mut().ok_or_else(not_connected)
    }

    /// The session for DDL (its statements commit at once).
    async fn ddl(&mut self, sql: &str) -> Result<(), SinkError> {
        if self.ddl.is_none() {
            self.ddl = Some(connect(&self.cfg).await?);
        }
        let conn = self.ddl.as_mut().expect("connected");
        conn.query_drop(sql).await.map_err(|e| sql_err(format!("running {sql}"), e))
    }

    async fn begin(&mut self) -> Result<(), SinkError> {
        if !self.in_tx {
            self.conn()?.query_drop("START TRANSACTION").await.map_err(|e| sql_err("START TRANSACTION", e))?;
            self.in_tx = true;
        }
        Ok(())
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

    fn table_err(id: &TableId, msg: impl std::fmt::Display) -> SinkError {
        SinkError::new(ErrorKind::Table, format!("mysql sink: {id}: {msg}")).for_table(id)
    }

    /// Make sure the target table exists and matches `schema` (adding and
    /// dropping columns as the source did).
    async fn target(&mut self, schema: &Arc<TableSchema>) -> Result<(), SinkError> {
        if let Some(t) = self.targets.get(&schema.id) {
            if Arc::ptr_eq(&t.schema, schema) || t.schema.same_shape(schema) {
                return Ok(());
            }
        }
        self.flush_batch().await?;
        let db = self.cfg.schema.clone().unwrap_or_else(|| schema.id.schema.clone());
        let name = format!("{}.{}", quote_ident(&db), quote_ident(&schema.id.name));
        let mut cols = Vec::with_capacity(schema.columns.len());
        // Under REPLICA IDENTITY FULL every column is "identity" but none is
        // a key in the target (see below): type them as plain columns, or
        // long text would be cut to the size an index allows.
        let full = matches!(schema.replica_identity, ReplicaIdentity::Full | ReplicaIdentity::Nothing);
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
        // Under REPLICA IDENTITY FULL every column is "identity": such tables
        // are matched by their whole old row, like tables without a key.
        let key: Vec<usize> = if matches!(schema.replica_identity, ReplicaIdentity::Full | ReplicaIdentity::Nothing) {
            Vec::new()
        } else {
            schema.key_columns().map(|(i, _)| i).collect()
        };
        let decl = |c: &sluice_core::Column, m: &MyColumn, key: bool| {
            format!("{} {}{}", quote_ident(&c.name), m.ty, if key { " NOT NULL" } else { " NULL" })
        };
        let mut have = self.target_columns(&db, &schema.id.name).await?;
        if have.is_empty() {
            if !self.cfg.create_tables {
                return Err(Self::table_err(
                    &schema.id,
                    format!("target table {name} does not exist (create it, or set sink.create_tables: true)"),
                ));
            }
            let coll = self.collation();
            let mut defs: Vec<String> =
                schema.columns.iter().enumerate().map(|(i, c)| decl(c, &cols[i], key.contains(&i))).collect();
            if !key.is_empty() {
                let k: Vec<String> = key.iter().map(|&i| quote_ident(&schema.columns[i].name)).collect();
                defs.push(format!("PRIMARY KEY ({})", k.join(", ")));
            }
            self.ddl(&format!(
                "CREATE DATABASE IF NOT EXISTS {} CHARACTER SET utf8mb4 COLLATE {coll}",
                quote_ident(&db)
            ))
            .await?;
            self.ddl(&format!(
                "CREATE TABLE IF NOT EXISTS {name} ({}) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE={coll}",
                defs.join(", ")
            ))
            .await?;
            tracing::info!(table = %schema.id, "created target table {name}");
            have = self.target_columns(&db, &schema.id.name).await?;
        }
        if !self.targets.contains_key(&schema.id) {
            // A table that predates this run: its columns must have the types the source's map to.
            for (c, m) in schema.columns.iter().zip(&cols) {
                if let Some(have) = have.get(&c.name) {
                    if !same_base_type(have, &m.ty) {
                        return Err(Self::table_err(
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
        }
        if let Some(old) = self.targets.get(&schema.id) {
            // Schema change mid-stream: a type the mapping cannot follow stops the table.
            for (c, m) in schema.columns.iter().zip(&cols) {
                if let Some(j) = old.schema.column_index(&c.name) {
                    // Logical types: the binlog and the catalog spell the same
                    // column differently (`bigint` / `bigint(20)`).
                    if old.schema.columns[j].ty != c.ty {
                        return Err(Self::table_err(
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
                if schema.column_index(&o.name).is_none()
                    && have.contains_key(&o.name)
                    && !self.cfg.keep_dropped_columns
                {
                    self.drops.push((name.clone(), o.name.clone()));
                }
            }
        }
        // A column dropped and added back before its drop ran: empty it, as
        // a new column is (in this transaction), instead of dropping it.
        let readded: Vec<String> = self
            .drops
            .iter()
            .filter(|(n, c)| *n == name && schema.column_index(c).is_some())
            .map(|(_, c)| c.clone())
            .collect();
        if !readded.is_empty() {
            self.drops.retain(|(n, c)| *n != name || !readded.contains(c));
            let sets: Vec<String> = readded.iter().map(|c| format!("{} = NULL", quote_ident(c))).collect();
            let sql = format!("UPDATE {name} SET {}", sets.join(", "));
            self.begin().await?;
            self.touched.insert(schema.id.clone());
            self.conn()?.query_drop(&sql).await.map_err(|e| sql_err(&sql, e))?;
        }
        // Columns the source has and the target lacks (a table that predates
        // this run, or ADD COLUMN); columns only the target has are kept.
        let add: Vec<String> = schema
            .columns
            .iter()
            .zip(&cols)
            .filter(|(c, _)| !have.contains_key(&c.name))
            .map(|(c, m)| format!("ADD COLUMN {}", decl(c, m, false)))
            .collect();
        if !add.is_empty() {
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
        }
        let guard = self.unique_indexes(&db, schema, &key).await?;
        self.targets.insert(schema.id.clone(), Target { name, schema: schema.clone(), cols, key, guard });
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

    /// A table's copy in this run starts from empty (TRUNCATE would commit).
    async fn start_copy(&mut self, schema: &Arc<TableSchema>) -> Result<(), SinkError> {
        // Marked first: a table that fails here is stopped once, not per row.
        self.copying.insert(schema.id.clone());
        self.target(schema).await?;
        self.flush_batch().await?;
        self.begin().await?;
        self.copying.insert(schema.id.clone());
        self.touched.insert(schema.id.clone());
        self.unflushed = true;
        let sql = format!("DELETE FROM {}", self.targets[&schema.id].name);
        self.conn()?.query_drop(&sql).await.map_err(|e| sql_err(&sql, e))
    }

    fn values(t: &Target, row: &[Value], idx: impl Iterator<Item = usize>) -> Result<Vec<MyValue>, SinkError> {
        idx.map(|i| {
            my_value(&row[i], t.cols[i].conv)
                .map_err(|e| Self::table_err(&t.schema.id, format!("column {}: {e}", t.schema.columns[i].name)))
        })
        .collect()
    }

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
    async fn add(&mut self, ev: &ChangeEvent) -> Result<(), SinkError> {
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
                (Kind::Upsert, mask, new_key, values)
            }
            Op::Delete => {
                let before = &ev.before.as_ref().expect("delete has a row").values;
                let k = Self::key_bytes(t, before);
                (Kind::Delete, vec![], k, Self::values(t, before, t.key.iter().copied())?)
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

    async fn flush_batch(&mut self) -> Result<(), SinkError> {
        let Some(b) = self.batch.take() else { return Ok(()) };
        if b.rows == 0 {
            return Ok(());
        }
        self.begin().await?;
        let t = self.targets.get(&b.table).expect("target");
        let s = &t.schema;
        let q = |i: usize| quote_ident(&s.columns[i].name);
        let sql = match b.kind {
            Kind::Upsert => {
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
            Kind::Delete => {
                let keys = t.key.iter().map(|&i| q(i)).collect::<Vec<_>>().join(", ");
                let one = format!("({})", vec!["?"; t.key.len()].join(", "));
                format!("DELETE FROM {} WHERE ({keys}) IN ({})", t.name, vec![one.as_str(); b.rows].join(", "))
            }
        };
        let what = format!("applying changes to {}", s.id);
        let guarded = t.guard && b.kind == Kind::Upsert;
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

/// Start-up check: the target is reachable, the credentials work, and the
/// checkpoint database can be used (later connection losses are retried).
pub async fn check(cfg: &DbSinkConfig) -> Result<(), SinkError> {
    let mut conn = connect(cfg).await?;
    let db = checkpoint_db(cfg);
    conn.query_drop(format!("CREATE DATABASE IF NOT EXISTS {} CHARACTER SET utf8mb4", quote_ident(&db)))
        .await
        .map_err(|e| {
            sql_err(format!("creating the checkpoint database {db} (grant CREATE, or set sink.checkpoint_schema)"), e)
        })?;
    let _ = conn.disconnect().await;
    Ok(())
}

/// `sluice check` findings about the target (its durability settings).
pub async fn preflight(cfg: &DbSinkConfig, report: &mut sluice_core::preflight::Report) -> Result<(), SinkError> {
    let mut conn = connect(cfg).await?;
    let r = durable::findings(&mut conn, report).await;
    let _ = conn.disconnect().await;
    r
}

/// `teardown`: forget the pipeline's checkpoint in the target (the
/// replicated tables stay). Returns what was done.
pub async fn forget(cfg: &DbSinkConfig, pipeline: &str) -> Result<String, SinkError> {
    let mut conn = connect(cfg).await?;
    let db = checkpoint_db(cfg);
    let exists: Option<u64> = conn
        .exec_first(
            "SELECT 1 FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = 'sluice_checkpoints'",
            (&db,),
        )
        .await
        .map_err(|e| sql_err("looking up sluice_checkpoints", e))?;
    let table = format!("{}.sluice_checkpoints", quote_ident(&db));
    if exists.is_none() {
        return Ok(format!("target: no {table} table"));
    }
    conn.exec_drop(format!("DELETE FROM {table} WHERE pipeline = ?"), (pipeline,))
        .await
        .map_err(|e| sql_err("deleting the checkpoint", e))?;
    let n = conn.affected_rows();
    Ok(format!("target: removed {n} checkpoint row(s) of {pipeline} from {table} (the replica tables stay)"))
}

impl Sink for MysqlSink {
    async fn open(&mut self, _state: Option<&serde_json::Value>) -> Result<(), SinkError> {
        let mut conn = connect(&self.cfg).await?;
        let (flavor, ver) = sluice_client_mysql::server_version(&mut conn).await.map_err(conn_err)?;
        self.flavor = flavor;
        self.uuid_type = flavor == Flavor::MariaDb && ver >= (10, 7, 0);
        let db = checkpoint_db(&self.cfg);
        let table = self.checkpoint_table();
        for sql in [
            format!("CREATE DATABASE IF NOT EXISTS {} CHARACTER SET utf8mb4", quote_ident(&db)),
            format!(
                "CREATE TABLE IF NOT EXISTS {table} (pipeline VARCHAR(100) NOT NULL PRIMARY KEY, position TEXT NULL, \
                 checkpoint LONGTEXT NOT NULL, updated_at DATETIME(6) NOT NULL) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 \
                 COLLATE={}",
                self.collation()
            ),
        ] {
            conn.query_drop(&sql).await.map_err(|e| sql_err("creating sluice_checkpoints", e))?;
        }
        let row: Option<String> = conn
            .exec_first(format!("SELECT checkpoint FROM {table} WHERE pipeline = ?"), (&self.pipeline,))
            .await
            .map_err(|e| sql_err("reading sluice_checkpoints", e))?;
        if let Some(text) = row {
            let cp: Checkpoint = serde_json::from_str(&text).map_err(|e| {
                SinkError::fatal(format!("mysql sink: the checkpoint of {} in {table} is corrupt: {e}", self.pipeline))
            })?;
            self.stopped = StoppedTables::from_state(&cp.sink);
            self.stored = Some(cp);
        }
        self.durability = durable::mode(&mut conn).await?;
        self.conn = Some(conn);
        Ok(())
    }

    async fn stored_checkpoint(&mut self) -> Result<Option<Checkpoint>, SinkError> {
        Ok(self.stored.take())
    }

    async fn snapshot_started(&mut self, schema: &Arc<TableSchema>) -> Result<(), SinkError> {
        self.stopped.resume(&schema.id);
        let r = self.start_copy(schema).await;
        self.stopped.absorb(&schema.id, r)
    }

    async fn write(&mut self, events: &[ChangeEvent]) -> Result<(), SinkError> {
        for ev in events {
            if ev.op == Op::Read && !self.copying.contains(&ev.table.id) {
                self.snapshot_started(&ev.table).await?;
            }
            if self.stopped.contains(&ev.table.id) {
                continue;
            }
            // A per-table error stops this table; the others go on. An error
            // of another table's batch (flushed to make room for this change)
            // stops that table, and this change is queued still.
            loop {
                let r = self.add(ev).await;
                let other = matches!(&r, Err(e) if e.table.as_ref().is_some_and(|t| *t != ev.table.id));
                self.stopped.absorb(&ev.table.id, r)?;
                if !other || self.stopped.contains(&ev.table.id) {
                    break;
                }
            }
        }
        self.unflushed = true;
        Ok(())
    }

    fn stopped_tables(&self) -> Vec<(TableId, String)> {
        self.stopped.list()
    }

    fn tables_included(&mut self, included: &[TableId]) {
        self.stopped.retain(included);
    }

    fn wants_flush(&self) -> bool {
        self.applied >= self.cfg.batch.max_rows
    }

    fn has_unflushed(&self) -> bool {
        self.unflushed
    }

    fn max_flush_delay(&self) -> Duration {
        Duration::from_millis(self.cfg.batch.max_delay_ms)
    }

    async fn flush(&mut self, _hold: &HashSet<TableId>, next: &Checkpoint) -> Result<serde_json::Value, SinkError> {
        // The last batch's per-table error stops its table (the failed
        // statement undid only itself), and is in the checkpoint below.
        if let Err(e) = self.flush_batch().await {
            match e.table.clone() {
                Some(t) if e.kind == ErrorKind::Table => self.stopped.stop(&t, &e),
                _ => return Err(e),
            }
        }
        self.begin().await?;
        // The checkpoint as the runtime will store it: with this sink's state.
        let state = self.stopped.to_state();
        let body =
            serde_json::to_string(&Checkpoint { sink: state.clone(), ..next.clone() }).expect("checkpoint serializes");
        let position = next.position.as_ref().map(|p| p.to_string());
        let sql = format!(
            "INSERT INTO {} (pipeline, position, checkpoint, updated_at) VALUES (?, ?, ?, UTC_TIMESTAMP(6)) \
             ON DUPLICATE KEY UPDATE position = VALUES(position), checkpoint = VALUES(checkpoint), \
             updated_at = VALUES(updated_at)",
            self.checkpoint_table()
        );
        let pipeline = self.pipeline.clone();
        // Fields borrowed apart: the session and the commit watermark.
        let conn = self.conn.as_mut().ok_or_else(not_connected)?;
        conn.exec_drop(sql, (pipeline, position, body)).await.map_err(|e| sql_err("writing the checkpoint", e))?;
        conn.query_drop("COMMIT").await.map_err(|e| sql_err("COMMIT", e))?;
        durable::committed(conn, self.durability, &mut self.commits).await?;
        self.in_tx = false;
        self.touched.clear();
        self.applied = 0;
        self.unflushed = false;
        // Columns the source dropped go once nothing uncommitted uses them.
        while let Some((table, column)) = self.drops.first().cloned() {
            let sql = format!("ALTER TABLE {table} DROP COLUMN {}", quote_ident(&column));
            self.ddl(&sql).await?;
            self.drops.remove(0);
            tracing::info!("target table altered: {sql}");
        }
        Ok(state)
    }

    async fn checkpointed(&mut self) -> Result<(), SinkError> {
        Ok(())
    }

    async fn durable_flushes(&mut self, wait: bool) -> Result<u64, SinkError> {
        if matches!(self.durability, durable::Mode::Commit) {
            return Ok(u64::MAX);
        }
        // Status reads are not part of the open transaction: any time will do.
        if self.commits.pending() {
            let conn = self.conn.as_mut().ok_or_else(not_connected)?;
            durable::probe(conn, self.durability, wait, &mut self.commits).await?;
        }
        Ok(self.commits.durable())
    }

    fn describe(&self) -> String {
        format!("{} changes applied to MySQL", self.total)
    }

    /// A key change is an UPDATE of the stored row: unsent values stay.
    fn merges_rows(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals() {
        assert!(check_decimal("123.4500", 3, 2).is_ok());
        assert!(check_decimal("-0.5", 0, 1).is_ok());
        assert!(check_decimal("1234.5", 3, 2).is_err());
        assert!(check_decimal("1.125", 3, 2).is_err());
        assert!(check_decimal("NaN", 35, 30).is_err());
        assert!(check_decimal("-Infinity", 35, 30).is_err());
    }

    #[test]
    fn values() {
        assert_eq!(my_value(&Value::Text("0101".into()), MyConv::BitString).unwrap(), MyValue::UInt(5));
        assert_eq!(my_value(&Value::Bool(true), MyConv::BoolToInt).unwrap(), MyValue::Int(1));
        assert!(my_value(&Value::Float(f64::NAN), MyConv::Float).is_err());
        assert!(my_value(&Value::Date(i32::MAX), MyConv::Temporal).is_err());
        // 44 BC has no MySQL date.
        let bc = sluice_core::value::days_from_civil(-43, 3, 15) as i32;
        assert!(my_value(&Value::Date(bc), MyConv::Temporal).is_err());
        assert_eq!(
            my_value(&Value::Timestamp(-1), MyConv::Temporal).unwrap(),
            MyValue::Date(1969, 12, 31, 23, 59, 59, 999_999)
        );
        assert_eq!(
            my_value(&Value::Time(-(90_061_000_001)), MyConv::AsIs).unwrap(),
            MyValue::Time(true, 1, 1, 1, 1, 1)
        );
        let arr = Value::Array(vec![Value::Int(1), Value::Null, Value::Text("a".into())]);
        assert_eq!(my_value(&arr, MyConv::ArrayJson).unwrap(), MyValue::Bytes(b"[1,null,\"a\"]".to_vec()));
    }
}
