//! The sinks compiled in, as one type: the pipeline file picks one.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use sluice_core::config::SinkConfig;
use sluice_core::error::SinkError;
use sluice_core::preflight::{Report, Status};
use sluice_core::{ChangeEvent, Sink, TableId};
use sluice_sink_files::{BlackholeSink, FilesSink, StdoutSink};

pub(crate) enum AnySink {
    Files(Box<FilesSink>),
    Postgres(Box<sluice_sink_postgres::PostgresSink>),
    Mysql(Box<sluice_sink_mysql::MysqlSink>),
    Kafka(Box<sluice_sink_kafka::KafkaSink>),
    Blackhole(BlackholeSink),
    Stdout(StdoutSink),
}

/// What the sinks of one run share across the runtime's restarts.
#[derive(Default, Clone)]
pub(crate) struct RunShared {
    upsert_tables: sluice_sink_postgres::UpsertTables,
}

impl AnySink {
    pub fn from_config(cfg: &SinkConfig, pipeline: &str, state_dir: &Path, shared: &RunShared) -> AnySink {
        match cfg {
            SinkConfig::Files(f) => AnySink::Files(Box::new(FilesSink::new(f.clone()))),
            SinkConfig::Postgres(d) => AnySink::Postgres(Box::new(
                sluice_sink_postgres::PostgresSink::new(d.clone(), pipeline)
                    .with_upsert_tables(shared.upsert_tables.clone()),
            )),
            SinkConfig::Mysql(d) => AnySink::Mysql(Box::new(sluice_sink_mysql::MysqlSink::new(d.clone(), pipeline))),
            SinkConfig::Kafka(k) => {
                AnySink::Kafka(Box::new(sluice_sink_kafka::KafkaSink::new(k.clone(), pipeline, state_dir)))
            }
            SinkConfig::Blackhole {} => AnySink::Blackhole(BlackholeSink::default()),
            SinkConfig::Stdout {} => AnySink::Stdout(StdoutSink::default()),
        }
    }
}

macro_rules! each_sink {
    ($self:ident, $s:ident => $e:expr) => {
        match $self {
            AnySink::Files($s) => $e,
            AnySink::Postgres($s) => $e,
            AnySink::Mysql($s) => $e,
            AnySink::Kafka($s) => $e,
            AnySink::Blackhole($s) => $e,
            AnySink::Stdout($s) => $e,
        }
    };
}

impl Sink for AnySink {
    async fn open(&mut self, state: Option<&serde_json::Value>) -> Result<(), SinkError> {
        each_sink!(self, s => s.open(state).await)
    }
    async fn write(&mut self, events: &[ChangeEvent]) -> Result<(), SinkError> {
        each_sink!(self, s => s.write(events).await)
    }
    fn wants_flush(&self) -> bool {
        each_sink!(self, s => s.wants_flush())
    }
    fn has_unflushed(&self) -> bool {
        each_sink!(self, s => s.has_unflushed())
    }
    fn max_flush_delay(&self) -> Duration {
        each_sink!(self, s => s.max_flush_delay())
    }
    async fn flush(
        &mut self,
        hold: &HashSet<TableId>,
        next: &sluice_core::Checkpoint,
    ) -> Result<serde_json::Value, SinkError> {
        each_sink!(self, s => s.flush(hold, next).await)
    }
    async fn stored_checkpoint(&mut self) -> Result<Option<sluice_core::Checkpoint>, SinkError> {
        each_sink!(self, s => s.stored_checkpoint().await)
    }
    async fn checkpointed(&mut self) -> Result<(), SinkError> {
        each_sink!(self, s => s.checkpointed().await)
    }
    fn wrote_after_checkpoint(&self) -> bool {
        each_sink!(self, s => s.wrote_after_checkpoint())
    }
    async fn durable_flushes(&mut self, wait: bool) -> Result<u64, SinkError> {
        each_sink!(self, s => s.durable_flushes(wait).await)
    }
    fn describe(&self) -> String {
        each_sink!(self, s => s.describe())
    }
    fn merges_rows(&self) -> bool {
        each_sink!(self, s => s.merges_rows())
    }
    fn tables_included(&mut self, included: &[sluice_core::TableId]) {
        each_sink!(self, s => s.tables_included(included))
    }
    fn stopped_tables(&self) -> Vec<(sluice_core::TableId, String)> {
        each_sink!(self, s => s.stopped_tables())
    }
    async fn snapshot_started(&mut self, schema: &std::sync::Arc<sluice_core::TableSchema>) -> Result<(), SinkError> {
        each_sink!(self, s => s.snapshot_started(schema).await)
    }
    fn accepts_raw(&self, format: sluice_core::RawFormat) -> bool {
        each_sink!(self, s => s.accepts_raw(format))
    }
    async fn write_raw(&mut self, raw: &sluice_core::RawRows) -> Result<bool, SinkError> {
        each_sink!(self, s => s.write_raw(raw).await)
    }
}

/// Start-up check of `run`: a database or broker sink is reachable and the
/// credentials work (later connection losses are retried).
pub(crate) async fn check(cfg: &SinkConfig) -> Result<(), SinkError> {
    match cfg {
        SinkConfig::Postgres(d) => sluice_sink_postgres::check(d).await,
        SinkConfig::Mysql(d) => sluice_sink_mysql::check(d).await,
        SinkConfig::Kafka(k) => sluice_sink_kafka::check(k).await,
        SinkConfig::Files(_) | SinkConfig::Blackhole {} | SinkConfig::Stdout {} => Ok(()),
    }
}

/// `sluice check`: the sink's findings, added to `report`.
pub(crate) async fn preflight(cfg: &SinkConfig, report: &mut Report) {
    let r = match cfg {
        SinkConfig::Postgres(d) => sluice_sink_postgres::preflight(d, report).await,
        SinkConfig::Mysql(d) => sluice_sink_mysql::preflight(d, report).await,
        _ => Ok(()),
    };
    if let Err(e) = r {
        report.push(Status::Fail, "sink", e.to_string());
    }
}

/// `sluice teardown`: forget the pipeline's checkpoint kept in the target.
pub(crate) async fn forget(cfg: &SinkConfig, pipeline: &str) -> Result<Option<String>, SinkError> {
    Ok(match cfg {
        SinkConfig::Postgres(d) => Some(sluice_sink_postgres::forget(d, pipeline).await?),
        SinkConfig::Mysql(d) => Some(sluice_sink_mysql::forget(d, pipeline).await?),
        _ => None,
    })
}
