//! `sluice`: a thin command line over the Sluice crates.

/// mimalloc: events are allocated by the source task and freed by the sink
/// side on another thread, a pattern glibc malloc handles poorly.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod commands;
mod progress;
mod sinks;
mod sources;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use sluice_core::config::{load_pipeline, ConfigError, PipelineConfig};
use sluice_core::error::{ClientError, ErrorKind, SinkError, SourceError};
use sluice_core::runtime::PipelineError;

use commands::{check, demo, run, status, teardown, verify};

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
pub(crate) struct Failure {
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
        if let Some(s) = cause.downcast_ref::<ClientError>() {
            return if s.kind == ErrorKind::Config { 2 } else { 1 };
        }
        if let Some(p) = cause.downcast_ref::<PipelineError>() {
            return if p.kind() == ErrorKind::Config { 2 } else { 1 };
        }
    }
    1
}

pub(crate) fn usage(msg: impl Into<String>) -> Failure {
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
        .with_writer(|| progress::LogWriter)
        .with_ansi(progress::stderr_is_tty())
        .with_target(false)
        .try_init();
}

async fn dispatch(cmd: Command) -> Result<u8, Failure> {
    match cmd {
        Command::Run { pipeline, until_caught_up } => run::cmd_run(&pipeline, until_caught_up).await,
        Command::Check { pipeline } => check::cmd_check(&pipeline).await,
        Command::Verify { pipeline, chunk_rows, parallel } => {
            let cfg = load(&pipeline)?;
            Ok(if verify::run(&cfg, chunk_rows, parallel as usize).await? { 0 } else { 1 })
        }
        Command::Status { pipeline, json } => status::cmd_status(&pipeline, json).await,
        Command::Teardown { pipeline, yes } => teardown::cmd_teardown(&pipeline, yes).await,
        Command::Demo { seconds, dir } => demo::run(seconds, dir).await,
    }
}

pub(crate) fn load(path: &Path) -> Result<PipelineConfig, Failure> {
    let cfg = load_pipeline(path)?;
    // Filter expressions: syntax now, columns and types once tables are known.
    let errors = sluice_transforms::validate(&cfg);
    if !errors.is_empty() {
        return Err(ConfigError { file: path.display().to_string(), errors }.into());
    }
    // Connector-level validation that needs no I/O.
    sources::validate(&cfg)?;
    Ok(cfg)
}
