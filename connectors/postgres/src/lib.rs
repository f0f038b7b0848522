//! The Postgres source: consistent snapshot + pgoutput stream through a
//! replication slot.
//!
//! ```text
//!  catalog ── included tables ──▶ publication (created / kept in sync)
//!     │
//!  slot ──(created now: exported snapshot)──┐
//!     │  (exists: temporary slot's snapshot) ┴─▶ snapshot (parallel COPY) ─┐
//!     │                                                                    ▼
//!     └──▶ START_REPLICATION (pgoutput) ─▶ decoding ─▶ stream ─▶ runtime channel
//!                           ▲                                        │
//!                           └────── standby status (confirmed) ◀─────┘
//! ```
//!
//! # Snapshot
//! A table is copied in a snapshot consistent with some LSN `C`: the
//! exported snapshot of the main slot when it is created by this run, or the
//! snapshot of a temporary slot when the main slot already exists (a restart
//! during the snapshot, a table added later). Its stream changes are then
//! taken only from transactions committing at or after `C`. Tables whose
//! snapshot is `done` in the checkpoint are never copied again.
//!
//! # Replication
//! Streaming starts at the checkpoint position; transactions committing
//! before it are dropped whole (the server may resend them when a
//! confirmation did not reach it). See the `stream` and `decoding` modules.
//!
//! # Error handling
//! Connection losses and server restarts are transient: the runtime restarts
//! the source from the checkpoint. A slot that is missing or has moved past
//! the checkpoint, missing privileges and bad settings are fatal with a
//! message saying what to do.
//!
//! # Public surface
//! The crate's public API, for the `sluice` binary: [`PostgresSource`];
//! [`pg_config`], [`conn_info`], [`table_schemas`] and [`plan_pushdown`];
//! the catalog reads re-exported below ([`included_tables`], [`domains`],
//! [`table_schema`]); [`preflight`] (`sluice check`, the start-up check) and
//! [`admin`] (`sluice status`, `sluice teardown`). Every other module is
//! internal to the crate.

pub mod admin;
pub(crate) mod catalog;
pub(crate) mod decoding;
pub mod preflight;
pub(crate) mod rows;
pub(crate) mod slot;
pub(crate) mod snapshot;
pub(crate) mod spool;
pub(crate) mod stream;

/// Catalog reads for the binary (`sluice check`, `sluice verify`, the
/// schemas of the included tables): the tables `tables.include`/`exclude`
/// select, and the domain map every schema read needs.
pub use catalog::{domains, included_tables, Domains, TableInfo};

/// For `sluice verify`: one table's current schema, read exactly as the
/// snapshot and the stream read it (key flags as pgoutput sets them), so
/// the comparison parses values as the pipeline types them.
pub use catalog::table_schema;

use std::collections::HashMap;
use std::sync::Arc;

use sluice_core::config::{PipelineConfig, SnapshotMode};
use sluice_core::error::{ErrorKind, SourceError};
use sluice_core::event::format_lsn;
use sluice_core::pushdown::{PushdownPlanner, Pushdowns};
use sluice_core::schema::quote_ident;
use sluice_core::{SnapshotState, Source, SourceContext, SourceMessage, TableId};

use crate::decoding::{Decoder, TableFilter};
use sluice_client_postgres::{connect_sql, ConnInfo, ReplicationConn};

/// The Postgres settings of `cfg` (a configuration error if the source is another engine).
pub fn pg_config(cfg: &PipelineConfig) -> Result<&sluice_core::config::PostgresSourceConfig, SourceError> {
    cfg.postgres().ok_or_else(|| SourceError::new(ErrorKind::Config, "source.type: not a Postgres source"))
}

/// The source's connection settings: `source.url` and `source.tls`.
pub fn conn_info(pg: &sluice_core::config::PostgresSourceConfig) -> Result<ConnInfo, SourceError> {
    Ok(ConnInfo::from_url(&pg.url, pg.tls.as_ref(), "source")?)
}

pub struct PostgresSource {
    cfg: PipelineConfig,
    planner: Option<Arc<dyn PushdownPlanner>>,
}

impl PostgresSource {
    pub fn new(cfg: PipelineConfig) -> Self {
        PostgresSource { cfg, planner: None }
    }

    /// Push what `planner` plans into the publication (Postgres 15+,
    /// unless `source.pushdown: false`).
    pub fn with_pushdown(mut self, planner: Option<Arc<dyn PushdownPlanner>>) -> Self {
        self.planner = planner;
        self
    }
}

impl Source for PostgresSource {
    async fn run(self, mut ctx: SourceContext) -> Result<(), SourceError> {
        run_source(&self.cfg, self.planner.as_deref(), &mut ctx).await
    }

    /// Updates leave unchanged TOASTed values out: rows are read back by key.
    fn row_reader(&self) -> Option<Arc<dyn sluice_core::RowReader>> {
        let info = conn_info(pg_config(&self.cfg).ok()?).ok()?;
        Some(Arc::new(rows::PgRowReader::new(info)))
    }
}

struct Filter {
    tables: sluice_core::config::TablesConfig,
    snapshot_lsn: HashMap<TableId, u64>,
}

impl TableFilter for Filter {
    fn admit(&self, table: &TableId) -> Option<u64> {
        if !self.tables.matches(&table.schema, &table.name) {
            return None;
        }
        Some(self.snapshot_lsn.get(table).copied().unwrap_or(0))
    }
}

/// The current schemas of `tables`, as the snapshot reads them.
pub async fn table_schemas(
    client: &tokio_postgres::Client,
    database: &str,
    tables: &[TableId],
    domains: &catalog::Domains,
) -> Result<Vec<Arc<sluice_core::TableSchema>>, SourceError> {
    catalog::table_schemas(client, database, tables, domains).await?.into_iter().map(|s| s.map(Arc::new)).collect()
}

/// Column lists and row filters of the transform stage (as `planner`
/// plans them) that the publication can apply (Postgres 15+,
/// `source.pushdown` not false).
pub async fn plan_pushdown(
    client: &tokio_postgres::Client,
    cfg: &PipelineConfig,
    planner: Option<&dyn PushdownPlanner>,
    database: &str,
    tables: &[TableId],
    domains: &catalog::Domains,
) -> Result<Pushdowns, SourceError> {
    let mut out = Pushdowns::new();
    let enabled = pg_config(cfg)?.pushdown.unwrap_or(true);
    let Some(planner) = planner.filter(|_| enabled) else { return Ok(out) };
    if sluice_client_postgres::server_version_num(client).await? < 150000 {
        return Ok(out);
    }
    for schema in table_schemas(client, database, tables, domains).await? {
        let p = planner.plan(&schema);
        if !p.is_empty() {
            tracing::info!(table = %schema.id, columns = ?p.columns, row_filter = ?p.row_filter, "pushed down into the publication");
            out.insert(schema.id.clone(), p);
        }
    }
    Ok(out)
}

async fn run_source(
    cfg: &PipelineConfig,
    planner: Option<&dyn PushdownPlanner>,
    ctx: &mut SourceContext,
) -> Result<(), SourceError> {
    let pg = pg_config(cfg)?;
    let info = conn_info(pg)?;
    let slot_name = cfg.slot_name();
    let pub_name = cfg.publication_name();
    let client = connect_sql(&info).await?;

    let tables = catalog::included_tables(&client, &cfg.tables).await?;
    let domains = catalog::domains(&client).await?;
    let ids: Vec<TableId> = tables.iter().map(|t| t.id.clone()).collect();
    publish(&client, cfg, planner, &info.dbname, &tables, &domains).await?;
    let target = if ctx.until_caught_up { Some(catalog::current_wal_insert_lsn(&client).await?) } else { None };

    if ctx.tx.send(vec![SourceMessage::Tables { included: ids }]).await.is_err() {
        return Ok(());
    }
    let cp = ctx.checkpoint.clone();
    let mut repl = ReplicationConn::connect(&info).await?;
    let existing = catalog::slot_info(&client, &slot_name).await?;
    let (mut base, created) = slot::open(&mut repl, existing.as_ref(), &slot_name, &info.dbname, &cp).await?;
    if let Some(p) = &cp.position {
        base = base.max(p.lsn());
    }
    // What the server may be told is durable: its own slot position or the checkpoint's.
    let durable = base;
    let snapshot_lsn = copy_pending(cfg, &info, &client, &tables, &domains, created, ctx).await?;
    // Transactions committing before every table's snapshot point are in the
    // copies: the stream need not go back further than the lowest of them.
    if cfg.snapshot.mode == SnapshotMode::Initial && !tables.is_empty() {
        let lowest = tables.iter().map(|t| snapshot_lsn.get(&t.id).copied().unwrap_or(0)).min().unwrap_or(0);
        base = base.max(lowest);
    }
    drop(client);

    let start = cp.position.as_ref().map(|p| p.lsn()).unwrap_or(0);
    // Protocol 2 with `streaming` (Postgres 14+): big transactions arrive while
    // they are decoded instead of being spilled and re-read by the server.
    let streaming = pg.streaming.unwrap_or(true) && repl.server_version >= 14;
    let options = if streaming { "proto_version '2', streaming 'on'" } else { "proto_version '1'" };
    let sql = format!(
        "START_REPLICATION SLOT {} LOGICAL {} ({options}, publication_names {})",
        quote_ident(&slot_name),
        format_lsn(start),
        sluice_core::schema::quote_literal(&quote_ident(&pub_name)),
    );
    repl.start_replication(&sql).await?;
    tracing::info!(slot = %slot_name, from = %format_lsn(start.max(base)), streaming, "replicating");
    let filter = Filter { tables: cfg.tables.clone(), snapshot_lsn };
    let mut decoder = Decoder::new(info.dbname.clone(), filter, start, domains);
    stream::run_stream(&mut repl, &mut decoder, ctx, base, durable, target).await
}

/// Create the publication of the included tables, or bring it in line,
/// with what the transform stage can push down into it.
async fn publish(
    client: &tokio_postgres::Client,
    cfg: &PipelineConfig,
    planner: Option<&dyn PushdownPlanner>,
    database: &str,
    tables: &[TableInfo],
    domains: &Domains,
) -> Result<(), SourceError> {
    let pub_name = cfg.publication_name();
    let ids: Vec<TableId> = tables.iter().map(|t| t.id.clone()).collect();
    // Partitioned tables: Postgres checks a root's row filter against every
    // partition's own replica identity, which the root's does not tell.
    let plain: Vec<TableId> = tables.iter().filter(|t| !t.partitioned).map(|t| t.id.clone()).collect();
    let pushdown = plan_pushdown(client, cfg, planner, database, &plain, domains).await?;
    match catalog::ensure_publication(client, &pub_name, &cfg.name, &ids, &pushdown).await {
        Err(e) if !pushdown.is_empty() && matches!(e.kind, ErrorKind::Fatal | ErrorKind::Table) => {
            // Postgres refused a pushed-down filter or column list: Sluice
            // applies every transform itself anyway, so go on without them.
            tracing::warn!(error = %e, "the publication's column lists and row filters were refused; filtering in Sluice only");
            catalog::ensure_publication(client, &pub_name, &cfg.name, &ids, &Pushdowns::new()).await
        }
        other => other,
    }
}

/// Copy the tables whose snapshot is not done (unless `snapshot.mode` is
/// `never`), in the snapshot of the slot created now or of a temporary
/// one. Returns the LSN from which each table's stream starts.
async fn copy_pending(
    cfg: &PipelineConfig,
    info: &ConnInfo,
    client: &tokio_postgres::Client,
    tables: &[TableInfo],
    domains: &Domains,
    created: Option<slot::Created>,
    ctx: &SourceContext,
) -> Result<HashMap<TableId, u64>, SourceError> {
    let mut snapshot_lsn: HashMap<TableId, u64> = HashMap::new();
    let mut jobs = Vec::new();
    for t in tables {
        match ctx.checkpoint.table_state(&t.id) {
            Some(s) if s.snapshot == SnapshotState::Done => {
                snapshot_lsn.insert(t.id.clone(), s.snapshot_position.as_ref().map(|p| p.lsn()).unwrap_or(0));
            }
            _ if cfg.snapshot.mode == SnapshotMode::Never => {}
            _ => jobs.push(t),
        }
    }
    if jobs.is_empty() {
        return Ok(snapshot_lsn);
    }
    // The temporary slot (if any) must outlive the copy.
    let (temp_conn, (lsn, snap)) = match created {
        Some(c) => (None, c),
        None => {
            let (conn, c) = slot::temporary(info, jobs.len()).await?;
            (Some(conn), c)
        }
    };
    let ids: Vec<TableId> = jobs.iter().map(|t| t.id.clone()).collect();
    let schemas = jobs
        .iter()
        .zip(table_schemas(client, &info.dbname, &ids, domains).await?)
        .map(|(t, schema)| snapshot::SnapshotJob {
            schema,
            estimated_rows: t.estimated_rows,
            partitioned: t.partitioned,
        })
        .collect();
    snapshot::copy_tables(info, &snap, lsn, schemas, cfg.snapshot.parallelism, ctx.raw_snapshot, &ctx.tx).await?;
    for id in ids {
        snapshot_lsn.insert(id, lsn);
    }
    if let Some(c) = temp_conn {
        c.terminate().await;
    }
    Ok(snapshot_lsn)
}
