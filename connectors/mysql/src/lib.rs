//! The MySQL/MariaDB source: consistent snapshot + row-based binlog stream.
//!
//! ```text
//!  catalog ── included tables, schemas ─┐
//!                                       ▼
//!  snapshot (parallel sessions, each START TRANSACTION WITH CONSISTENT
//!            SNAPSHOT at a known binlog coordinate) ──▶ runtime channel
//!                                       │
//!  binlog dump (from the checkpoint, or the lowest snapshot coordinate)
//!     ──▶ stream (transactions, GTIDs, heartbeats) ──▶ decoding ──▶ runtime channel
//! ```
//!
//! # Positions
//! A checkpoint holds the binlog file and offset just past the last
//! delivered transaction's commit event, and the server's GTID state there
//! (MariaDB `domain-server-seq` list; MySQL GTID set with `gtid_mode=ON`).
//! A restart resumes by GTID when one is known (it survives binlog rotation
//! and purges of files the position no longer needs), else by file and
//! offset. Nothing is kept on the server: there is no slot to drop.
//!
//! # Snapshot
//! Each table is copied in a snapshot whose binlog coordinate is known; its
//! stream changes are then taken only from transactions starting at or
//! after that coordinate. Tables whose snapshot is `done` in the checkpoint
//! are never copied again.
//!
//! # Error handling
//! Lost connections and server restarts are transient: the runtime restarts
//! the source from the checkpoint, with backoff. A purged binlog, missing
//! privileges and wrong server settings are fatal with a message saying what
//! to do.
//!
//! # Public surface
//! The crate's public API, for the `sluice` binary: [`MysqlSource`]; [`my_config`] and
//! [`conn_info`]; the catalog reads re-exported below
//! ([`included_tables`], [`table_schema`]); [`verify`] (reading rows the way
//! the snapshot does); [`preflight`] (`sluice check`, the start-up check) and
//! [`admin`] (`sluice status`, `sluice teardown`). Every other module is
//! internal to the crate.

pub mod admin;
pub(crate) mod catalog;
pub(crate) mod charset;
pub(crate) mod decoding;
pub(crate) mod position;
pub mod preflight;
pub(crate) mod snapshot;
pub(crate) mod stream;

/// Catalog reads for the binary (`sluice verify`, the schemas of the
/// included tables): the tables `tables.include`/`exclude` select, and one
/// table's schema with the per-column read facts ([`SnapColumn`]) the
/// snapshot uses.
pub use catalog::{included_tables, table_schema, SnapColumn, TableInfo};

pub mod verify {
    //! For `sluice verify`: read a table's rows with the same conversion the
    //! snapshot uses.
    //!
    //! Select a table's columns with [`select_list`] (text in a legacy
    //! character set arrives as its bytes), then turn each binary-protocol
    //! value into a [`Value`](sluice_core::Value) with [`convert`], given the
    //! column's [`SnapColumn`](crate::SnapColumn) from
    //! [`table_schema`](crate::table_schema): the values are then exactly what
    //! the snapshot delivers for the same stored data. [`widen_f32`] widens a
    //! FLOAT as the snapshot and the stream do, for values read some other way
    //! (the text of a Postgres `real`).

    pub use crate::decoding::widen_f32;
    pub use crate::snapshot::{convert, select_list, ConvertError};
}

#[cfg(test)]
mod payload_tests;

use std::collections::HashMap;
use std::sync::Arc;

use sluice_core::config::{PipelineConfig, SnapshotMode};
use sluice_core::error::{ErrorKind, SourceError};
use sluice_core::{Position, SnapshotState, Source, SourceContext, SourceMessage, TableId};

use crate::position::{Coord, GtidState};
use sluice_client_mysql::{self as conn, ConnInfo, Flavor};

/// The MySQL settings of `cfg` (a configuration error for another engine).
pub fn my_config(cfg: &PipelineConfig) -> Result<&sluice_core::config::MysqlSourceConfig, SourceError> {
    cfg.mysql().ok_or_else(|| SourceError::new(ErrorKind::Config, "source.type: not a MySQL source"))
}

/// The source's connection settings: `source.url` and `source.tls`.
pub fn conn_info(my: &sluice_core::config::MysqlSourceConfig) -> Result<ConnInfo, SourceError> {
    Ok(ConnInfo::from_url(&my.url, my.tls.as_ref(), "source")?)
}

pub struct MysqlSource {
    cfg: PipelineConfig,
}

impl MysqlSource {
    pub fn new(cfg: PipelineConfig) -> Self {
        MysqlSource { cfg }
    }
}

impl Source for MysqlSource {
    async fn run(self, mut ctx: SourceContext) -> Result<(), SourceError> {
        run_source(&self.cfg, &mut ctx).await
    }
}

async fn run_source(cfg: &PipelineConfig, ctx: &mut SourceContext) -> Result<(), SourceError> {
    let info = conn_info(my_config(cfg)?)?;
    let mut conn = info.connect().await?;
    let (flavor, _) = conn::server_version(&mut conn).await?;
    preflight::require_settings(&mut conn).await?;
    let tables = catalog::included_tables(&mut conn, &cfg.tables).await?;
    let target = if ctx.until_caught_up {
        let (file, pos, _) = catalog::master_status(&mut conn).await?;
        Some(Coord { file, pos })
    } else {
        None
    };
    let ids: Vec<TableId> = tables.iter().map(|t| t.id.clone()).collect();
    if ctx.tx.send(vec![SourceMessage::Tables { included: ids }]).await.is_err() {
        return Ok(());
    }
    let cp = ctx.checkpoint.clone();
    let resume: Option<(Coord, Option<String>)> = match &cp.position {
        None => None,
        Some(Position::Mysql { file, pos, gtid }) => Some((Coord { file: file.clone(), pos: *pos }, gtid.clone())),
        Some(other) => {
            return Err(SourceError::new(
                ErrorKind::Config,
                format!(
                    "the checkpoint in {} holds a position of another source ({other}); point checkpoint.path \
                     elsewhere or run `sluice teardown --yes`",
                    cfg.checkpoint_dir().display()
                ),
            ))
        }
    };

    let mut schemas: HashMap<TableId, Arc<sluice_core::TableSchema>> = HashMap::new();
    let mut admit_from: HashMap<TableId, (u64, u64)> = HashMap::new();
    let mut lowest: Option<(Coord, Option<String>)> = None;
    let mut to_copy = Vec::new();
    for t in &tables {
        let state = cp.table_state(&t.id);
        match state {
            Some(s) if s.snapshot == SnapshotState::Done => {
                if let Some(Position::Mysql { file, pos, gtid }) = &s.snapshot_position {
                    let c = Coord { file: file.clone(), pos: *pos };
                    admit_from.insert(t.id.clone(), c.key());
                    consider(c, gtid.clone(), &mut lowest);
                }
            }
            _ if cfg.snapshot.mode == SnapshotMode::Never => {}
            _ => to_copy.push(t),
        }
    }
    let ids: Vec<TableId> = to_copy.iter().map(|t| t.id.clone()).collect();
    let mut jobs = Vec::new();
    for (t, found) in to_copy.iter().zip(catalog::table_schemas(&mut conn, &ids).await?) {
        let Some((schema, snap)) = found else { continue };
        let schema = Arc::new(schema);
        schemas.insert(t.id.clone(), schema.clone());
        jobs.push(snapshot::SnapshotJob { schema, snap, estimated_rows: t.estimated_rows });
    }
    if !jobs.is_empty() {
        tracing::info!(tables = jobs.len(), "snapshot: starting");
        let points = snapshot::copy_tables(&info, flavor, jobs, cfg.snapshot.parallelism, &ctx.tx).await?;
        for (id, p) in points {
            admit_from.insert(id, p.coord.key());
            consider(p.coord, p.gtid, &mut lowest);
        }
    }

    let start = match resume {
        Some((coord, gtid)) => {
            let gtid_state = gtid.as_deref().and_then(GtidState::parse).unwrap_or_default();
            let by_gtid = gtid_state != GtidState::None
                && match flavor {
                    Flavor::MariaDb => true,
                    Flavor::Mysql => conn::variable(&mut conn, "gtid_mode").await?.as_deref() == Some("ON"),
                };
            stream::Start { coord, gtid: gtid_state, by_gtid }
        }
        None => {
            let (coord, gtid) = match lowest {
                Some(l) => l,
                None => {
                    let (file, pos, mysql_gtid) = catalog::master_status(&mut conn).await?;
                    let gtid = match flavor {
                        Flavor::MariaDb => catalog::mariadb_gtid_at(&mut conn, &file, pos).await?,
                        Flavor::Mysql => mysql_gtid,
                    };
                    (Coord { file, pos }, gtid)
                }
            };
            let gtid_state = gtid.as_deref().and_then(GtidState::parse).unwrap_or_default();
            stream::Start { coord, gtid: gtid_state, by_gtid: false }
        }
    };
    if !start.by_gtid {
        let logs = catalog::binary_logs(&mut conn).await?;
        if !logs.contains(&start.coord.file) {
            return Err(SourceError::fatal(format!(
                "binlog {} (position {}:{}) is no longer on the server (it has {}): the changes since then are lost \
                 to Sluice. Run `sluice teardown --yes PIPELINE.yaml` and run again to take a new snapshot",
                start.coord.file,
                start.coord.file,
                start.coord.pos,
                if logs.is_empty() { "none".to_string() } else { format!("{} .. {}", logs[0], logs[logs.len() - 1]) }
            )));
        }
    }
    let _ = conn.disconnect().await;
    let setup = stream::StreamSetup {
        info,
        flavor,
        server_id: cfg.mysql_server_id(),
        tables: cfg.tables.clone(),
        admit_from,
        target,
        schemas,
        known: tables.iter().map(|t| t.id.clone()).collect(),
        collations: Default::default(),
        failed: Default::default(),
    };
    stream::run_stream(setup, start, ctx).await
}

/// Keep the lowest coordinate seen (with its GTID state).
fn consider(c: Coord, g: Option<String>, lowest: &mut Option<(Coord, Option<String>)>) {
    if !matches!(lowest, Some((l, _)) if l.key() <= c.key()) {
        *lowest = Some((c, g));
    }
}
