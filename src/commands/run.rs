//! `sluice run`: start-up checks, then the runtime with the configured
//! source, transform stage and sink until SIGINT/SIGTERM or caught up.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use sluice_core::config::ConfigError;
use sluice_core::config::PipelineConfig;
use sluice_core::runtime::{run_pipeline, PipelineError, RunSummary, RuntimeOptions, Stats};
use sluice_core::FileCheckpointStore;
use tokio::sync::watch;

use crate::sinks::{AnySink, RunShared};
use crate::sources::{self, AnySource};
use crate::{load, progress, Failure};

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
    // Fail fast with a clear message when the source or sink is unreachable
    // or misconfigured; later connection losses are retried.
    sources::require_ready(cfg).await.context("cannot start the pipeline")?;
    crate::sinks::check(&cfg.sink).await.context("cannot start the pipeline")?;
    let mut chain = sluice_transforms::Chain::new(&cfg.transforms)
        .map_err(|errors| ConfigError { file: cfg.name.clone(), errors })?;
    if !chain.is_empty() {
        // Unknown columns and type errors stop the run before anything is read.
        let tables = sources::table_schemas(cfg).await.context("cannot start the pipeline")?;
        let errors = chain.check_tables(&tables);
        if !errors.is_empty() {
            return Err(ConfigError { file: cfg.name.clone(), errors }.into());
        }
    }
    Ok(run_with(cfg, until_caught_up, shutdown, stats, &mut chain).await?)
}

/// The runtime with the configured source and sink.
async fn run_with(
    cfg: &PipelineConfig,
    until_caught_up: bool,
    shutdown: watch::Receiver<bool>,
    stats: Arc<Stats>,
    transforms: &mut sluice_transforms::Chain,
) -> Result<RunSummary, PipelineError> {
    let mut store = FileCheckpointStore::new(cfg.checkpoint_dir());
    let mut opts = RuntimeOptions::new(&cfg.name);
    opts.until_caught_up = until_caught_up;
    let (cfg_src, sink_cfg, name) = (cfg.clone(), cfg.sink.clone(), cfg.name.clone());
    let state_dir = cfg.checkpoint_dir();
    let planner = sources::planner(cfg);
    let shared = RunShared::default();
    run_pipeline(
        &opts,
        move || AnySource::new(cfg_src.clone(), planner.clone()),
        move || AnySink::from_config(&sink_cfg, &name, &state_dir, &shared),
        transforms,
        &mut store,
        shutdown,
        stats,
    )
    .await
}

pub(crate) async fn cmd_run(path: &Path, until_caught_up: bool) -> Result<u8, Failure> {
    let cfg = load(path)?;
    let stats = Arc::new(Stats::default());
    let shutdown = shutdown_signal();
    let prog = progress::spawn(stats.clone());
    let started = std::time::Instant::now();
    let res = run_config(&cfg, until_caught_up, shutdown, stats.clone()).await;
    prog.abort();
    // The bars are gone once the task is: nothing redraws over the summary.
    let _ = prog.await;
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

/// Peak resident set size of this process, in MiB: `VmHWM`, the high-water
/// mark of this program's own memory. (`getrusage`'s `ru_maxrss` is not: on
/// Linux it keeps the maximum of the process that spawned it, folded in at
/// `exec` — a run started by a large parent reported that parent's size.)
fn peak_rss_mb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb / 1024)
}
