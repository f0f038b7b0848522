//! `sluice`: a thin command line over the Sluice crates.

/// mimalloc: events are allocated by the source task and freed by the sink
/// side on another thread, a pattern glibc malloc handles poorly.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod demo;
mod pgcluster;
mod progress;
mod verify;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sluice_core::config::{load_pipeline, ConfigError, PipelineConfig, SinkConfig, SourceConfig};
use sluice_core::error::{ErrorKind, SinkError, SourceError};
use sluice_core::preflight::Status as CheckStatus;
use sluice_core::runtime::{run_pipeline, PipelineError, RunSummary, RuntimeOptions, Stats};
use sluice_core::{ChangeEvent, CheckpointStore, FileCheckpointStore, Sink, TableId};
use sluice_files::{BlackholeSink, FilesSink, StdoutSink};
use sluice_mysql::MysqlSource;
use sluice_postgres::PostgresSource;
use tokio::sync::watch;

#[derive(Parser)]
#[command(name = "sluice", version, about = "Change data capture: Postgres and MySQL/MariaDB → files, exactly once")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a pipeline until SIGINT/SIGTERM (or until caught up).
    Run {
        pipeline: PathBuf,
        /// Stop once everything up to the source's current end is durable.
        #[arg(long)]
        until_caught_up: bool,
    },
    /// Validate the pipeline file and run preflight checks against the source.
    Check { pipeline: PathBuf },
    /// Compare every included table of the source with its replica (database sinks).
    Verify {
        pipeline: PathBuf,
        /// Rows per key-range chunk of tables with an integer key column.
        #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
        chunk_rows: u64,
        /// Chunks compared at once (each with a source and a target session).
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=64))]
        parallel: u64,
    },
    /// Show the checkpoint, per-table snapshot state and the source's lag.
    Status {
        pipeline: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Drop the slot and publication Sluice created, and the checkpoint.
    Teardown {
        pipeline: PathBuf,
        /// Confirm the teardown.
        #[arg(long)]
        yes: bool,
    },
    /// Quickstart: throwaway Postgres, sample data and writes, Parquet output.
    Demo {
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

/// An error with the exit code it maps to.
struct Failure {
    code: u8,
    error: anyhow::Error,
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(e: E) -> Self {
        let error: anyhow::Error = e.into();
        let code = exit_code(&error);
        Failure { code, error }
    }
}

fn exit_code(e: &anyhow::Error) -> u8 {
    for cause in e.chain() {
        if cause.downcast_ref::<ConfigError>().is_some() {
            return 2;
        }
        if let Some(s) = cause.downcast_ref::<SourceError>() {
            return if s.kind == ErrorKind::Config { 2 } else { 1 };
        }
        if let Some(s) = cause.downcast_ref::<SinkError>() {
            return if s.kind == ErrorKind::Config { 2 } else { 1 };
        }
        if let Some(p) = cause.downcast_ref::<PipelineError>() {
            return if p.kind() == ErrorKind::Config { 2 } else { 1 };
        }
    }
    1
}

fn usage(msg: impl Into<String>) -> Failure {
    Failure { code: 2, error: anyhow::anyhow!(msg.into()) }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    let quiet = matches!(cli.command, Command::Demo { .. });
    init_logging(quiet);
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = rt.block_on(dispatch(cli.command));
    rt.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(code) => ExitCode::from(code),
        Err(f) => {
            eprintln!("error: {}", f.error);
            let mut seen = f.error.to_string();
            for cause in f.error.chain().skip(1) {
                let c = cause.to_string();
                if !seen.contains(&c) {
                    eprintln!("  caused by: {c}");
                    seen.push_str(&c);
                }
            }
            ExitCode::from(f.code)
        }
    }
}

fn init_logging(quiet: bool) {
    use tracing_subscriber::EnvFilter;
    let default = if quiet { "warn" } else { "info" };
    let filter = EnvFilter::try_from_env("SLUICE_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(progress::stderr_is_tty())
        .with_target(false)
        .try_init();
}

async fn dispatch(cmd: Command) -> Result<u8, Failure> {
    match cmd {
        Command::Run { pipeline, until_caught_up } => cmd_run(&pipeline, until_caught_up).await,
        Command::Check { pipeline } => cmd_check(&pipeline).await,
        Command::Verify { pipeline, chunk_rows, parallel } => {
            let cfg = load(&pipeline)?;
            Ok(if verify::run(&cfg, chunk_rows, parallel as usize).await? { 0 } else { 1 })
        }
        Command::Status { pipeline, json } => cmd_status(&pipeline, json).await,
        Command::Teardown { pipeline, yes } => cmd_teardown(&pipeline, yes).await,
        Command::Demo { seconds, dir } => demo::run(seconds, dir).await,
    }
}

fn load(path: &Path) -> Result<PipelineConfig, Failure> {
    let cfg = load_pipeline(path)?;
    // Filter expressions: syntax now, columns and types once tables are known.
    let errors = sluice_transforms::validate(&cfg);
    if !errors.is_empty() {
        return Err(ConfigError { file: path.display().to_string(), errors }.into());
    }
    // Connector-level validation that needs no I/O.
    match &cfg.source {
        SourceConfig::Postgres(pg) => {
            sluice_postgres::conn::ConnInfo::from_config(pg)?;
        }
        SourceConfig::Mysql(my) => {
            sluice_mysql::conn::ConnInfo::from_config(my)?;
        }
    }
    Ok(cfg)
}

/// The sinks compiled in, as one type (closed dispatch from YAML).
pub(crate) enum AnySink {
    Files(Box<FilesSink>),
    Postgres(Box<sluice_sink_postgres::PostgresSink>),
    Mysql(Box<sluice_sink_mysql::MysqlSink>),
    Kafka(Box<sluice_sink_kafka::KafkaSink>),
    Blackhole(BlackholeSink),
    Stdout(StdoutSink),
}

impl AnySink {
    pub fn from_config(cfg: &SinkConfig, pipeline: &str, state_dir: &Path) -> AnySink {
        match cfg {
            SinkConfig::Files(f) => AnySink::Files(Box::new(FilesSink::new(f.clone()))),
            SinkConfig::Postgres(d) => {
                AnySink::Postgres(Box::new(sluice_sink_postgres::PostgresSink::new(d.clone(), pipeline)))
            }
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

/// Shutdown on SIGINT/SIGTERM; a second signal exits at once (nothing is
/// lost: the checkpoint is only ever written at consistent points).
pub(crate) fn shutdown_signal() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else {
            return;
        };
        tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
        tracing::info!("stopping: flushing and checkpointing (signal again to exit at once)");
        let _ = tx.send(true);
        tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
        eprintln!("exiting without a final checkpoint; the next run resumes from the last one");
        std::process::exit(130);
    });
    rx
}

/// Run a pipeline in-process (also used by the demo).
pub(crate) async fn run_config(
    cfg: &PipelineConfig,
    until_caught_up: bool,
    shutdown: watch::Receiver<bool>,
    stats: Arc<Stats>,
) -> Result<RunSummary, Failure> {
    // Fail fast with a clear message when the source is unreachable or
    // misconfigured; later connection losses are retried.
    match &cfg.source {
        SourceConfig::Postgres(pg) => {
            let info = sluice_postgres::conn::ConnInfo::from_config(pg)?;
            let client = sluice_postgres::conn::connect_sql(&info).await.context("cannot start the pipeline")?;
            let wal_level: String = client
                .query_one("SELECT current_setting('wal_level')", &[])
                .await
                .map(|r| r.get(0))
                .unwrap_or_default();
            if wal_level != "logical" {
                return Err(anyhow::anyhow!(
                    "the source has wal_level = {wal_level}; set wal_level = logical and restart it (`sluice check` lists all requirements)"
                )
                .into());
            }
        }
        SourceConfig::Mysql(my) => {
            let info = sluice_mysql::conn::ConnInfo::from_config(my)?;
            let mut conn = info.connect().await.context("cannot start the pipeline")?;
            sluice_mysql::preflight::require_settings(&mut conn).await?;
        }
    }
    match &cfg.sink {
        SinkConfig::Postgres(d) => sluice_sink_postgres::check(d).await.context("cannot start the pipeline")?,
        SinkConfig::Mysql(d) => sluice_sink_mysql::check(d).await.context("cannot start the pipeline")?,
        SinkConfig::Kafka(k) => sluice_sink_kafka::check(k).await.context("cannot start the pipeline")?,
        _ => {}
    }
    let mut chain = sluice_transforms::Chain::new(&cfg.transforms)
        .map_err(|errors| ConfigError { file: cfg.name.clone(), errors })?;
    if !chain.is_empty() {
        // Unknown columns and type errors stop the run before anything is read.
        let tables = source_schemas(cfg).await.context("cannot start the pipeline")?;
        let errors = chain.check_tables(&tables);
        if !errors.is_empty() {
            return Err(ConfigError { file: cfg.name.clone(), errors }.into());
        }
    }
    let summary = match &cfg.source {
        SourceConfig::Postgres(_) => {
            run_with(cfg, until_caught_up, shutdown, stats, PostgresSource::new, &mut chain).await?
        }
        SourceConfig::Mysql(_) => run_with(cfg, until_caught_up, shutdown, stats, MysqlSource::new, &mut chain).await?,
    };
    Ok(summary)
}

/// The current schemas of the included tables, read from the source.
pub(crate) async fn source_schemas(cfg: &PipelineConfig) -> Result<Vec<Arc<sluice_core::TableSchema>>, SourceError> {
    match &cfg.source {
        SourceConfig::Postgres(pg) => {
            let info = sluice_postgres::conn::ConnInfo::from_config(pg)?;
            let client = sluice_postgres::conn::connect_sql(&info).await?;
            let tables = sluice_postgres::catalog::included_tables(&client, &cfg.tables).await?;
            let domains = sluice_postgres::catalog::domains(&client).await?;
            let ids: Vec<TableId> = tables.into_iter().map(|t| t.id).collect();
            sluice_postgres::table_schemas(&client, &info.dbname, &ids, &domains).await
        }
        SourceConfig::Mysql(my) => {
            let info = sluice_mysql::conn::ConnInfo::from_config(my)?;
            let mut conn = info.connect().await?;
            let tables = sluice_mysql::catalog::included_tables(&mut conn, &cfg.tables).await?;
            let mut out = Vec::with_capacity(tables.len());
            for t in tables {
                if let Some((schema, _)) = sluice_mysql::catalog::table_schema(&mut conn, &t.id).await? {
                    out.push(Arc::new(schema));
                }
            }
            Ok(out)
        }
    }
}

/// The runtime with a source of type `S` and the configured sink.
async fn run_with<S: sluice_core::Source>(
    cfg: &PipelineConfig,
    until_caught_up: bool,
    shutdown: watch::Receiver<bool>,
    stats: Arc<Stats>,
    make: fn(PipelineConfig) -> S,
    transforms: &mut sluice_transforms::Chain,
) -> Result<RunSummary, PipelineError> {
    let mut store = FileCheckpointStore::new(cfg.checkpoint_dir());
    let mut opts = RuntimeOptions::new(&cfg.name);
    opts.until_caught_up = until_caught_up;
    let (cfg_src, sink_cfg, name) = (cfg.clone(), cfg.sink.clone(), cfg.name.clone());
    let state_dir = cfg.checkpoint_dir();
    run_pipeline(
        &opts,
        move || make(cfg_src.clone()),
        move || AnySink::from_config(&sink_cfg, &name, &state_dir),
        transforms,
        &mut store,
        shutdown,
        stats,
    )
    .await
}

async fn cmd_run(path: &Path, until_caught_up: bool) -> Result<u8, Failure> {
    let cfg = load(path)?;
    let stats = Arc::new(Stats::default());
    let shutdown = shutdown_signal();
    let prog = progress::spawn(stats.clone());
    let started = std::time::Instant::now();
    let res = run_config(&cfg, until_caught_up, shutdown, stats.clone()).await;
    prog.abort();
    progress::clear_line();
    let summary = res?;
    let secs = started.elapsed().as_secs_f64();
    let events = stats.events.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!(
        "{}: {events} events in {secs:.1}s ({:.0}/s); checkpoint at {}; {}; peak RSS {} MB",
        if summary.caught_up { "caught up" } else { "stopped" },
        events as f64 / secs.max(0.001),
        summary.position.as_ref().map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
        summary.sink,
        peak_rss_mb()
    );
    if !summary.stopped.is_empty() {
        for (t, e) in &summary.stopped {
            eprintln!("error: table {t} is stopped: {e}");
        }
        eprintln!("error: {} table(s) stopped; the others are up to date", summary.stopped.len());
        return Ok(1);
    }
    Ok(0)
}

/// Peak resident set size of this process, in MiB.
fn peak_rss_mb() -> u64 {
    // SAFETY: getrusage fills the struct we pass; no other preconditions.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } == 0 {
        (ru.ru_maxrss as u64) / 1024
    } else {
        0
    }
}

async fn cmd_check(path: &Path) -> Result<u8, Failure> {
    let cfg = load(path)?;
    println!("pipeline {} ({}): configuration is valid", cfg.name, path.display());
    let report = match &cfg.source {
        SourceConfig::Postgres(_) => sluice_postgres::preflight::check(&cfg).await,
        SourceConfig::Mysql(_) => sluice_mysql::preflight::check(&cfg).await,
    };
    let mut report = report;
    let sink = match &cfg.sink {
        SinkConfig::Postgres(d) => sluice_sink_postgres::preflight(d, &mut report).await,
        SinkConfig::Mysql(d) => sluice_sink_mysql::preflight(d, &mut report).await,
        _ => Ok(()),
    };
    if let Err(e) = sink {
        report.push(CheckStatus::Fail, "sink", e.to_string());
    }
    let bad_transforms = !cfg.transforms.is_empty() && !transform_findings(&cfg, &mut report).await;
    for f in &report.findings {
        let tag = match f.status {
            CheckStatus::Ok => "ok  ",
            CheckStatus::Warn => "WARN",
            CheckStatus::Fail => "FAIL",
        };
        println!("  {tag}  {:<24} {}", f.check, f.message);
    }
    if bad_transforms {
        println!("invalid transforms: fix the FAIL items above");
        Ok(2)
    } else if report.failed() {
        println!("not ready: fix the FAIL items above");
        Ok(1)
    } else {
        println!("ready");
        Ok(0)
    }
}

/// `sluice check` findings of the transform stage: every filter, column and
/// mask against the tables, and filters whose update semantics depend on
/// old values the source does not send.
/// Returns false when a transform cannot apply to the tables (a
/// configuration error).
async fn transform_findings(cfg: &PipelineConfig, report: &mut sluice_core::preflight::Report) -> bool {
    let Ok(mut chain) = sluice_transforms::Chain::new(&cfg.transforms) else { return false };
    let tables = match source_schemas(cfg).await {
        Ok(t) => t,
        Err(e) => {
            // The source checks above say why.
            report.push(CheckStatus::Fail, "transforms", format!("cannot read the tables' columns: {e}"));
            return true;
        }
    };
    let errors = chain.check_tables(&tables);
    for e in &errors {
        report.push(CheckStatus::Fail, "transforms", e.clone());
    }
    let mysql = matches!(cfg.source, SourceConfig::Mysql(_));
    for w in chain.warnings(&tables, mysql) {
        report.push(CheckStatus::Warn, "filter semantics", w);
    }
    if errors.is_empty() {
        report.push(
            CheckStatus::Ok,
            "transforms",
            format!("{} step(s) apply to {} table(s)", cfg.transforms.len(), tables.len()),
        );
        if let SourceConfig::Postgres(_) = &cfg.source {
            match pushdown_findings(cfg).await {
                Ok(lines) => {
                    for l in lines {
                        report.push(CheckStatus::Ok, "pushdown", l);
                    }
                }
                Err(e) => report.push(CheckStatus::Warn, "pushdown", format!("cannot plan the pushdown: {e}")),
            }
        }
    }
    errors.is_empty()
}

/// What the publication will do for the transforms, table by table.
async fn pushdown_findings(cfg: &PipelineConfig) -> Result<Vec<String>, SourceError> {
    let pg = sluice_postgres::pg_config(cfg)?;
    let info = sluice_postgres::conn::ConnInfo::from_config(pg)?;
    let client = sluice_postgres::conn::connect_sql(&info).await?;
    let tables = sluice_postgres::catalog::included_tables(&client, &cfg.tables).await?;
    let domains = sluice_postgres::catalog::domains(&client).await?;
    let plain: Vec<TableId> = tables.iter().filter(|t| !t.partitioned).map(|t| t.id.clone()).collect();
    let planned = sluice_postgres::plan_pushdown(&client, cfg, &info.dbname, &plain, &domains).await?;
    if planned.is_empty() {
        return Ok(vec![if pg.pushdown == Some(false) {
            "off (source.pushdown: false): every step runs in Sluice".to_string()
        } else {
            "nothing can be pushed down (Postgres 15+ and filters on replica-identity columns or include lists are needed); every step runs in Sluice".to_string()
        }]);
    }
    let mut out: Vec<String> = planned
        .iter()
        .map(|(t, p)| {
            let mut parts = Vec::new();
            if let Some(c) = &p.columns {
                parts.push(format!("columns ({})", c.join(", ")));
            }
            if let Some(f) = &p.row_filter {
                parts.push(format!("WHERE {f}"));
            }
            format!("{t}: {} in the publication (Sluice still applies every step)", parts.join(" and "))
        })
        .collect();
    out.sort();
    Ok(out)
}

async fn cmd_status(path: &Path, json: bool) -> Result<u8, Failure> {
    let cfg = load(path)?;
    let store = FileCheckpointStore::new(cfg.checkpoint_dir());
    let cp = store.load()?;
    enum Src {
        Pg(sluice_postgres::admin::SourceStatus),
        My(sluice_mysql::admin::SourceStatus),
    }
    let src = match &cfg.source {
        SourceConfig::Postgres(_) => Src::Pg(sluice_postgres::admin::status(&cfg).await),
        SourceConfig::Mysql(_) => Src::My(sluice_mysql::admin::status(&cfg).await),
    };
    if json {
        let (src_json, lag) = match &src {
            Src::Pg(s) => (serde_json::to_value(s).expect("json"), serde_json::json!(s.lag_bytes)),
            Src::My(s) => (serde_json::to_value(s).expect("json"), serde_json::Value::Null),
        };
        let v = serde_json::json!({
            "pipeline": cfg.name,
            "checkpoint_file": store.describe(),
            "checkpoint": cp.as_ref().map(|c| serde_json::json!({
                "position": match &c.position {
                    Some(sluice_core::Position::Postgres { lsn }) => serde_json::json!(lsn),
                    Some(p) => serde_json::to_value(p).expect("json"),
                    None => serde_json::Value::Null,
                },
                "position_text": c.position.as_ref().map(|p| p.to_string()),
                "updated_ms": c.updated_ms,
                "tables": c.tables,
            })),
            "source": src_json,
            "lag_bytes": lag,
        });
        println!("{}", serde_json::to_string_pretty(&v).expect("json"));
        return Ok(0);
    }
    println!("pipeline {}", cfg.name);
    match &cp {
        None => println!("  checkpoint: none yet ({})", store.describe()),
        Some(c) => {
            println!(
                "  checkpoint: {} ({})",
                c.position.as_ref().map(|p| p.to_string()).unwrap_or_else(|| "snapshot in progress".into()),
                store.describe()
            );
            for (t, s) in &c.tables {
                println!("    {t:<40} snapshot {:?} ({} rows)", s.snapshot, s.snapshot_rows);
            }
        }
    }
    match src {
        Src::Pg(src) if src.reachable => println!(
            "  source: slot {} {}; lag {}",
            cfg.slot_name(),
            if src.slot_exists {
                if src.slot_active {
                    "active"
                } else {
                    "inactive"
                }
            } else {
                "missing"
            },
            src.lag_bytes.map(|b| format!("{b} bytes")).unwrap_or_else(|| "-".into())
        ),
        Src::My(src) if src.reachable => println!(
            "  source: binlog at {}:{}{}",
            src.binlog_file.unwrap_or_default(),
            src.binlog_pos.unwrap_or(0),
            src.gtid.map(|g| format!(" (gtid {g})")).unwrap_or_default()
        ),
        Src::Pg(sluice_postgres::admin::SourceStatus { error, .. })
        | Src::My(sluice_mysql::admin::SourceStatus { error, .. }) => {
            println!("  source: unreachable ({})", error.unwrap_or_default())
        }
    }
    Ok(0)
}

async fn cmd_teardown(path: &Path, yes: bool) -> Result<u8, Failure> {
    let cfg = load(path)?;
    if !yes {
        let what = match &cfg.source {
            SourceConfig::Postgres(_) => format!("replication slot {} and ", cfg.slot_name()),
            SourceConfig::Mysql(_) => String::new(),
        };
        return Err(usage(format!(
            "teardown drops {what}the checkpoint in {}; pass --yes to confirm",
            cfg.checkpoint_dir().display()
        )));
    }
    let lines = match &cfg.source {
        SourceConfig::Postgres(_) => sluice_postgres::admin::teardown(&cfg).await?,
        SourceConfig::Mysql(_) => sluice_mysql::admin::teardown(&cfg).await?,
    };
    let mut lines = lines;
    match &cfg.sink {
        SinkConfig::Postgres(d) => lines.push(sluice_sink_postgres::forget(d, &cfg.name).await?),
        SinkConfig::Mysql(d) => lines.push(sluice_sink_mysql::forget(d, &cfg.name).await?),
        _ => {}
    }
    for line in lines {
        println!("{line}");
    }
    let mut store = FileCheckpointStore::new(cfg.checkpoint_dir());
    store.clear()?;
    println!("removed checkpoint {}", store.describe());
    Ok(0)
}
