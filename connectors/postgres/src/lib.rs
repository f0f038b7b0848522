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

fn parse_created_slot(rows: &[Vec<Option<String>>]) -> Result<(u64, String), SourceError> {
    let row = rows.first().ok_or_else(|| SourceError::fatal("CREATE_REPLICATION_SLOT returned no row"))?;
    let lsn = row
        .get(1)
        .cloned()
        .flatten()
        .and_then(|s| sluice_core::event::parse_lsn(&s))
        .ok_or_else(|| SourceError::fatal("CREATE_REPLICATION_SLOT returned no consistent point"))?;
    let snap = row
        .get(2)
        .cloned()
        .flatten()
        .ok_or_else(|| SourceError::fatal("CREATE_REPLICATION_SLOT exported no snapshot"))?;
    Ok((lsn, snap))
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
    // Partitioned tables: Postgres checks a root's row filter against every
    // partition's own replica identity, which the root's does not tell.
    let plain: Vec<TableId> = tables.iter().filter(|t| !t.partitioned).map(|t| t.id.clone()).collect();
    let pushdown = plan_pushdown(&client, cfg, planner, &info.dbname, &plain, &domains).await?;
    if let Err(e) = catalog::ensure_publication(&client, &pub_name, &cfg.name, &ids, &pushdown).await {
        if pushdown.is_empty() || !matches!(e.kind, ErrorKind::Fatal | ErrorKind::Table) {
            return Err(e);
        }
        // Postgres refused a pushed-down filter or column list: Sluice
        // applies every transform itself anyway, so go on without them.
        tracing::warn!(error = %e, "the publication's column lists and row filters were refused; filtering in Sluice only");
        catalog::ensure_publication(&client, &pub_name, &cfg.name, &ids, &Pushdowns::new()).await?;
    }
    let target = if ctx.until_caught_up { Some(catalog::current_wal_insert_lsn(&client).await?) } else { None };

    if ctx.tx.send(vec![SourceMessage::Tables { included: ids.clone() }]).await.is_err() {
        return Ok(());
    }
    let cp = ctx.checkpoint.clone();
    let mut repl = ReplicationConn::connect(&info).await?;
    let slot = catalog::slot_info(&client, &slot_name).await?;
    let mut base;
    let mut created: Option<(u64, String)> = None;
    // Where the stream must resume: the checkpoint, or before its first
    // stream checkpoint, the consistent point of the tables already copied.
    let resume_at = cp.position.as_ref().map(|p| p.lsn()).or_else(|| {
        cp.tables
            .values()
            .filter(|t| t.snapshot == SnapshotState::Done)
            .filter_map(|t| t.snapshot_position.as_ref().map(|p| p.lsn()))
            .min()
    });
    match &slot {
        None => {
            if let Some(at) = resume_at {
                return Err(SourceError::fatal(format!(
                    "replication slot {slot_name} no longer exists, but the checkpoint is at {}: changes since then are lost. \
                     Run `sluice teardown` and start again (the snapshot is taken anew)",
                    format_lsn(at)
                )));
            }
            tracing::info!(slot = %slot_name, "creating replication slot (waits for transactions running now to finish)");
            let rows = repl
                .simple_query(&format!(
                    "CREATE_REPLICATION_SLOT {} LOGICAL pgoutput EXPORT_SNAPSHOT",
                    quote_ident(&slot_name)
                ))
                .await?;
            let (lsn, snap) = parse_created_slot(&rows)?;
            tracing::info!(slot = %slot_name, consistent_point = %format_lsn(lsn), "created replication slot");
            base = lsn;
            created = Some((lsn, snap));
        }
        Some(s) => {
            if s.plugin.as_deref() != Some("pgoutput") {
                return Err(SourceError::new(
                    ErrorKind::Config,
                    format!("replication slot {slot_name} exists but uses plugin {:?}, not pgoutput; choose another source.slot", s.plugin),
                ));
            }
            if s.database.as_deref() != Some(info.dbname.as_str()) {
                return Err(SourceError::new(
                    ErrorKind::Config,
                    format!("replication slot {slot_name} belongs to database {:?}, not {:?}", s.database, info.dbname),
                ));
            }
            if s.wal_status.as_deref() == Some("lost") {
                return Err(SourceError::fatal(format!(
                    "replication slot {slot_name} has lost required WAL (max_slot_wal_keep_size); run `sluice teardown` and start again"
                )));
            }
            if let Some(pid) = s.active_pid {
                return Err(SourceError::transient(format!(
                    "replication slot {slot_name} is in use by server process {pid} (another Sluice running, or a connection not yet closed)"
                )));
            }
            let confirmed = s.confirmed_flush.unwrap_or(0);
            if let Some(at) = resume_at {
                if confirmed > at {
                    return Err(SourceError::fatal(format!(
                        "replication slot {slot_name} has been advanced to {} past the checkpoint at {} by another consumer: \
                         changes in between are lost. Run `sluice teardown` and start again",
                        format_lsn(confirmed),
                        format_lsn(at)
                    )));
                }
            }
            base = confirmed;
        }
    }
    if let Some(p) = &cp.position {
        base = base.max(p.lsn());
    }
    // What the server may be told is durable: its own slot position or the checkpoint's.
    let durable = base;

    // Which tables need a copy, and from which LSN each table's stream starts.
    let mut snapshot_lsn: HashMap<TableId, u64> = HashMap::new();
    let mut jobs = Vec::new();
    for t in &tables {
        let state = cp.table_state(&t.id);
        match state {
            Some(s) if s.snapshot == SnapshotState::Done => {
                snapshot_lsn.insert(t.id.clone(), s.snapshot_position.as_ref().map(|p| p.lsn()).unwrap_or(0));
            }
            _ if cfg.snapshot.mode == SnapshotMode::Never => {}
            _ => jobs.push(t.clone()),
        }
    }
    if !jobs.is_empty() {
        let mut schemas = Vec::new();
        // The temporary slot (if any) must outlive the copy.
        let mut temp_conn = None;
        let (lsn, snap) = match created.take() {
            Some(c) => c,
            None => {
                let mut c = ReplicationConn::connect(&info).await?;
                let name = format!("sluice_tmp_{}_{}", std::process::id(), rand_suffix());
                let rows = c
                    .simple_query(&format!(
                        "CREATE_REPLICATION_SLOT {} TEMPORARY LOGICAL pgoutput EXPORT_SNAPSHOT",
                        quote_ident(&name)
                    ))
                    .await?;
                let r = parse_created_slot(&rows)?;
                tracing::info!(tables = jobs.len(), consistent_point = %format_lsn(r.0), "snapshot through a temporary slot");
                temp_conn = Some(c);
                r
            }
        };
        let ids: Vec<TableId> = jobs.iter().map(|t| t.id.clone()).collect();
        for (t, schema) in jobs.iter().zip(table_schemas(&client, &info.dbname, &ids, &domains).await?) {
            schemas.push(snapshot::SnapshotJob {
                schema,
                estimated_rows: t.estimated_rows,
                partitioned: t.partitioned,
            });
        }
        snapshot::copy_tables(&info, &snap, lsn, schemas, cfg.snapshot.parallelism, ctx.raw_snapshot, &ctx.tx).await?;
        for t in &jobs {
            snapshot_lsn.insert(t.id.clone(), lsn);
        }
        if let Some(c) = temp_conn {
            c.terminate().await;
        }
    }
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

fn rand_suffix() -> u32 {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    t.subsec_nanos() % 1_000_000
}
