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
//! - MySQL commits implicitly before every DDL statement and `TRUNCATE`, so
//!   neither ever runs on the applying session: DDL runs on a second session
//!   (see `schema`), and `TRUNCATE` is applied as `DELETE FROM` (see `copy`
//!   and `apply`).
//! - Values are always statement parameters, identifiers always quoted, and
//!   sessions run in strict SQL mode: a value MySQL cannot hold is an error,
//!   never a silent truncation (see `params`).
//! - Changes go in multi-row statements that keep the order of changes to
//!   one row, and an upsert never changes a row with another key (see
//!   `apply`).
//!
//! Where things are: `schema` (target tables and their DDL), `copy`
//! (snapshot copies), `apply` (change batches and their SQL), `params`
//! (statement parameters), `checkpoint` (the checkpoint row and its
//! database), `durable` (when a commit is durable).

mod apply;
mod checkpoint;
mod copy;
mod durable;
mod params;
mod schema;

pub use checkpoint::forget;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::Conn;
use sluice_client_mysql::{classify, quote_ident, ConnInfo, Flavor};
use sluice_core::config::DbSinkConfig;
use sluice_core::error::{ErrorKind, SinkError};
use sluice_core::sink::{CommitWatermark, StoppedTables};
use sluice_core::{ChangeEvent, Checkpoint, Op, Sink, TableId, TableSchema};
use sluice_schemas::target::MyColumn;

use apply::Batch;

/// A target table as the sink knows it: its name, the source schema it
/// matches, its column types, key and guard.
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
    // A data error the server reports stops the pipeline, not one table (see
    // the README): the target transaction holds other tables' changes too,
    // and skipping the statement's rows would lose them silently.
    SinkError::new(classify(&e).or_fatal_for_table(), format!("mysql sink: {what}: {e}"))
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

async fn connect(cfg: &DbSinkConfig) -> Result<Conn, SinkError> {
    let info = ConnInfo::from_url(&cfg.url, cfg.tls.as_ref(), "sink").map_err(conn_err)?;
    let mut conn = info.connect().await.map_err(conn_err)?;
    conn.query_drop(SESSION).await.map_err(|e| sql_err("setting up the session", e))?;
    Ok(conn)
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

    fn table_err(id: &TableId, msg: impl std::fmt::Display) -> SinkError {
        SinkError::new(ErrorKind::Table, format!("mysql sink: {id}: {msg}")).for_table(id)
    }
}

/// Start-up check: the target is reachable, the credentials work, and the
/// checkpoint database can be used (later connection losses are retried).
pub async fn check(cfg: &DbSinkConfig) -> Result<(), SinkError> {
    let mut conn = connect(cfg).await?;
    let db = checkpoint::checkpoint_db(cfg);
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

impl Sink for MysqlSink {
    async fn open(&mut self, _state: Option<&serde_json::Value>) -> Result<(), SinkError> {
        let mut conn = connect(&self.cfg).await?;
        let (flavor, ver) = sluice_client_mysql::server_version(&mut conn).await.map_err(conn_err)?;
        self.flavor = flavor;
        self.uuid_type = flavor == Flavor::MariaDb && ver >= (10, 7, 0);
        self.load_checkpoint(&mut conn).await?;
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
        let state = self.write_checkpoint(next).await?;
        // Fields borrowed apart: the session and the commit watermark.
        let conn = self.conn.as_mut().ok_or_else(not_connected)?;
        conn.query_drop("COMMIT").await.map_err(|e| sql_err("COMMIT", e))?;
        durable::committed(conn, self.durability, &mut self.commits).await?;
        self.in_tx = false;
        self.touched.clear();
        self.applied = 0;
        self.unflushed = false;
        // Columns the source dropped go once nothing uncommitted uses them.
        self.drop_columns().await?;
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
