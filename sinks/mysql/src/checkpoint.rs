//! The checkpoint row: `<checkpoint db>.sluice_checkpoints` in the target
//! (the database is `sink.checkpoint_schema`, else the URL's database, else
//! `sluice`), one row per pipeline, written in the target transaction that
//! applies the changes it covers (see [`sluice_core::CheckpointRow`]), with
//! the sink's own state kept in it (the tables stopped).
//!
//! Invariants:
//! - The row is written only in the open target transaction, right before
//!   its `COMMIT`, so data and position commit together.
//! - A row that cannot be read stops the sink: resuming from a guess would
//!   lose or repeat changes.

use mysql_async::prelude::Queryable;
use mysql_async::Conn;
use sluice_client_mysql::quote_ident;
use sluice_core::config::DbSinkConfig;
use sluice_core::error::SinkError;
use sluice_core::sink::StoppedTables;
use sluice_core::{Checkpoint, CheckpointRow};

use crate::{connect, sql_err, MysqlSink};

/// The database of `sluice_checkpoints`: `checkpoint_schema`, else the URL's database, else `sluice`.
pub(crate) fn checkpoint_db(cfg: &DbSinkConfig) -> String {
    if let Some(s) = &cfg.checkpoint_schema {
        return s.clone();
    }
    let url = cfg.url.trim().replace("mariadb://", "mysql://");
    mysql_async::Opts::from_url(&url).ok().and_then(|o| o.db_name().map(str::to_string)).unwrap_or("sluice".into())
}

impl MysqlSink {
    fn checkpoint_table(&self) -> String {
        format!("{}.sluice_checkpoints", quote_ident(&checkpoint_db(&self.cfg)))
    }

    /// Create the checkpoint database and table if they are missing, and
    /// load this pipeline's row: the checkpoint to resume from and the sink
    /// state stored with it.
    pub(crate) async fn load_checkpoint(&mut self, conn: &mut Conn) -> Result<(), SinkError> {
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
            let place = format!("mysql sink: the checkpoint of {} in {table}", self.pipeline);
            let cp = CheckpointRow::parse(&text, &place)?;
            self.stopped = StoppedTables::from_state(&cp.sink);
            self.stored = Some(cp);
        }
        Ok(())
    }

    /// Write the checkpoint row for `next` in the open target transaction.
    /// Returns the sink state stored in it.
    pub(crate) async fn write_checkpoint(&mut self, next: &Checkpoint) -> Result<serde_json::Value, SinkError> {
        // The checkpoint as the runtime will store it: with this sink's state.
        let state = self.stopped.to_state();
        let row = CheckpointRow::new(next, &state);
        let sql = format!(
            "INSERT INTO {} (pipeline, position, checkpoint, updated_at) VALUES (?, ?, ?, UTC_TIMESTAMP(6)) \
             ON DUPLICATE KEY UPDATE position = VALUES(position), checkpoint = VALUES(checkpoint), \
             updated_at = VALUES(updated_at)",
            self.checkpoint_table()
        );
        let pipeline = self.pipeline.clone();
        self.conn()?
            .exec_drop(sql, (pipeline, row.position, row.body))
            .await
            .map_err(|e| sql_err("writing the checkpoint", e))?;
        Ok(state)
    }
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
