//! The sources compiled in, as one type: the pipeline file picks one. Every
//! per-engine decision of the commands is made here, once.

use std::sync::Arc;

use sluice_core::config::{PipelineConfig, SourceConfig};
use sluice_core::error::SourceError;
use sluice_core::preflight::Report;
use sluice_core::pushdown::PushdownPlanner;
use sluice_core::{Source, SourceContext, TableId, TableSchema};
use sluice_source_mysql::MysqlSource;
use sluice_source_postgres::PostgresSource;

pub(crate) enum AnySource {
    Postgres(PostgresSource),
    Mysql(MysqlSource),
}

impl AnySource {
    /// A source for `cfg`; a Postgres source pushes what `planner` plans
    /// into its publication.
    pub fn new(cfg: PipelineConfig, planner: Option<Arc<dyn PushdownPlanner>>) -> AnySource {
        match &cfg.source {
            SourceConfig::Postgres(_) => AnySource::Postgres(PostgresSource::new(cfg).with_pushdown(planner)),
            SourceConfig::Mysql(_) => AnySource::Mysql(MysqlSource::new(cfg)),
        }
    }
}

impl Source for AnySource {
    async fn run(self, ctx: SourceContext) -> Result<(), SourceError> {
        match self {
            AnySource::Postgres(s) => s.run(ctx).await,
            AnySource::Mysql(s) => s.run(ctx).await,
        }
    }

    fn row_reader(&self) -> Option<Arc<dyn sluice_core::RowReader>> {
        match self {
            AnySource::Postgres(s) => s.row_reader(),
            AnySource::Mysql(s) => s.row_reader(),
        }
    }
}

/// The pushdown planner of the transform stage, for sources that can use one.
pub(crate) fn planner(cfg: &PipelineConfig) -> Option<Arc<dyn PushdownPlanner>> {
    match &cfg.source {
        SourceConfig::Postgres(_) => sluice_transforms::pushdown::PostgresPlanner::for_transforms(&cfg.transforms),
        SourceConfig::Mysql(_) => None,
    }
}

/// Connection settings that can be checked without I/O.
pub(crate) fn validate(cfg: &PipelineConfig) -> Result<(), SourceError> {
    match &cfg.source {
        SourceConfig::Postgres(pg) => sluice_source_postgres::conn_info(pg).map(drop),
        SourceConfig::Mysql(my) => sluice_source_mysql::conn_info(my).map(drop),
    }
}

/// Start-up check of `run`: the source is reachable and set up for change
/// capture (`sluice check` lists every requirement).
pub(crate) async fn require_ready(cfg: &PipelineConfig) -> Result<(), SourceError> {
    match &cfg.source {
        SourceConfig::Postgres(pg) => sluice_source_postgres::preflight::require_settings(pg).await,
        SourceConfig::Mysql(my) => {
            let mut conn = sluice_source_mysql::conn_info(my)?.connect().await?;
            sluice_source_mysql::preflight::require_settings(&mut conn).await
        }
    }
}

/// `sluice check`: the source's findings.
pub(crate) async fn preflight(cfg: &PipelineConfig) -> Report {
    match &cfg.source {
        SourceConfig::Postgres(_) => sluice_source_postgres::preflight::check(cfg).await,
        SourceConfig::Mysql(_) => sluice_source_mysql::preflight::check(cfg).await,
    }
}

/// The current schemas of the included tables, read from the source.
pub(crate) async fn table_schemas(cfg: &PipelineConfig) -> Result<Vec<Arc<TableSchema>>, SourceError> {
    match &cfg.source {
        SourceConfig::Postgres(pg) => {
            let info = sluice_source_postgres::conn_info(pg)?;
            let client = sluice_client_postgres::connect_sql(&info).await?;
            let tables = sluice_source_postgres::included_tables(&client, &cfg.tables).await?;
            let domains = sluice_source_postgres::domains(&client).await?;
            let ids: Vec<TableId> = tables.into_iter().map(|t| t.id).collect();
            sluice_source_postgres::table_schemas(&client, &info.dbname, &ids, &domains).await
        }
        SourceConfig::Mysql(my) => {
            let mut conn = sluice_source_mysql::conn_info(my)?.connect().await?;
            let tables = sluice_source_mysql::included_tables(&mut conn, &cfg.tables).await?;
            let mut out = Vec::with_capacity(tables.len());
            for t in tables {
                if let Some((schema, _)) = sluice_source_mysql::table_schema(&mut conn, &t.id).await? {
                    out.push(Arc::new(schema));
                }
            }
            Ok(out)
        }
    }
}

/// What the source holds on the server for a pipeline (for `teardown`'s
/// confirmation prompt): "replication slot S and ", or nothing.
pub(crate) fn server_state(cfg: &PipelineConfig) -> String {
    match &cfg.source {
        SourceConfig::Postgres(_) => format!("replication slot {} and ", cfg.slot_name()),
        SourceConfig::Mysql(_) => String::new(),
    }
}

/// `sluice teardown`: drop what the source created on the server.
pub(crate) async fn teardown(cfg: &PipelineConfig) -> Result<Vec<String>, SourceError> {
    match &cfg.source {
        SourceConfig::Postgres(_) => sluice_source_postgres::admin::teardown(cfg).await,
        SourceConfig::Mysql(_) => sluice_source_mysql::admin::teardown(cfg).await,
    }
}

/// `sluice status`: the source's side, for people and as JSON.
pub(crate) enum Status {
    Postgres(sluice_source_postgres::admin::SourceStatus),
    Mysql(sluice_source_mysql::admin::SourceStatus),
}

pub(crate) async fn status(cfg: &PipelineConfig) -> Status {
    match &cfg.source {
        SourceConfig::Postgres(_) => Status::Postgres(sluice_source_postgres::admin::status(cfg).await),
        SourceConfig::Mysql(_) => Status::Mysql(sluice_source_mysql::admin::status(cfg).await),
    }
}
