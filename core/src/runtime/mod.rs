//! The pipeline runtime: source → transforms → sink → checkpoint → confirm.
//!
//! # Progress tracking
//! The source runs in its own task and sends batches over a bounded channel.
//! This loop writes events to the sink and remembers the position of the last
//! *boundary* it has seen (a commit, or idle progress outside transactions).
//! At a boundary — never inside a transaction — when the sink asks for it, a
//! timer has run out, a table's snapshot is complete, or the run is ending,
//! it flushes the sink, writes the checkpoint with that position, tells the
//! sink the checkpoint is durable, and only then confirms the position to the
//! source. The checkpoint is thus always the lowest position not yet
//! acknowledged. A target that acknowledges commits before it makes them
//! durable (asynchronous commit) says which flushes are durable
//! (`Sink::durable_flushes`); a position is confirmed only once the flush
//! that stored it is, so the source never discards what a target crash could
//! still lose.
//!
//! # Whole rows
//! Before the transforms, events whose consumers get a fresh row but whose
//! source left values out (unchanged TOASTed values of a key change into
//! files or Kafka, of an update a filter turns into an upsert) are completed
//! from the source's current rows ([`crate::whole_rows`]).
//!
//! # Error handling
//! Transient errors (lost connections, server restarts) restart source and
//! sink from the last checkpoint with exponential backoff; the sink's `open`
//! discards whatever was not checkpointed, the source replays it. Anything
//! else stops the pipeline.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use crate::checkpoint::{Checkpoint, CheckpointError, CheckpointStore, SnapshotState};
use crate::error::{ErrorKind, SinkError, SourceError};
use crate::event::Position;
use crate::schema::TableId;
use crate::sink::Sink;
use crate::source::{Source, SourceContext, SourceMessage};
use crate::transform::{Transform, TransformError};
use crate::whole_rows::Completer;

mod drive;
use drive::drive;

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("source failed: {0}")]
    Source(#[from] SourceError),
    #[error("sink failed: {0}")]
    Sink(#[from] SinkError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("transform stage: {0}")]
    Transform(#[from] TransformError),
    #[error("checkpoint belongs to pipeline {found:?}, not {expected:?}")]
    ForeignCheckpoint { expected: String, found: String },
}

impl PipelineError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            PipelineError::Source(e) => e.kind,
            PipelineError::Sink(e) => e.kind,
            PipelineError::Checkpoint(_) => ErrorKind::Fatal,
            PipelineError::Transform(e) => e.kind(),
            PipelineError::ForeignCheckpoint { .. } => ErrorKind::Config,
        }
    }
}

/// Live counters, shared with progress displays.
#[derive(Debug, Default)]
pub struct Stats {
    pub events: AtomicU64,
    pub snapshot_rows: AtomicU64,
    pub inserts: AtomicU64,
    pub updates: AtomicU64,
    pub deletes: AtomicU64,
    pub truncates: AtomicU64,
    pub transactions: AtomicU64,
    pub checkpoints: AtomicU64,
    pub restarts: AtomicU64,
    /// New rows whose unsent values were read from the source (key changes
    /// and upserts for sinks that cannot merge: [`crate::whole_rows`]).
    pub rows_completed: AtomicU64,
    /// The last checkpoint's position, as text (for progress lines).
    pub checkpoint: std::sync::Mutex<String>,
    pub caught_up: AtomicBool,
    /// Per-table snapshot progress.
    pub snapshot_tables: Mutex<Vec<TableProgress>>,
}

impl Stats {
    fn set_checkpoint(&self, p: &Position) {
        if let Ok(mut g) = self.checkpoint.lock() {
            *g = p.to_string();
        }
    }
    /// Add a batch's per-operation counts (one atomic add per kind, not per event).
    fn add_counts(&self, counts: &[u64; 5]) {
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return;
        }
        self.events.fetch_add(total, Ordering::Relaxed);
        for (c, n) in
            [&self.snapshot_rows, &self.inserts, &self.updates, &self.deletes, &self.truncates].iter().zip(counts)
        {
            if *n > 0 {
                c.fetch_add(*n, Ordering::Relaxed);
            }
        }
    }
    fn snapshot_progress(&self, table: &TableId, add: u64, done: bool, estimate: Option<u64>) {
        let name = table.to_string();
        let mut t = self.snapshot_tables.lock().unwrap();
        // From the end: the tables being copied are the latest added (the
        // list grows to every table of the pipeline).
        let idx = match t.iter().rposition(|p| p.table == name) {
            Some(i) => i,
            None => {
                t.push(TableProgress {
                    table: name,
                    rows: 0,
                    estimated: 0,
                    done: false,
                    started: Instant::now(),
                    finished: None,
                });
                t.len() - 1
            }
        };
        let e = &mut t[idx];
        e.rows += add;
        if let Some(est) = estimate {
            e.estimated = est;
            e.started = Instant::now();
            e.rows = 0;
            e.done = false;
        }
        if done && !e.done {
            e.done = true;
            e.finished = Some(Instant::now());
        }
    }
}

#[derive(Debug, Clone)]
pub struct TableProgress {
    pub table: String,
    pub rows: u64,
    pub estimated: u64,
    pub done: bool,
    pub started: Instant,
    pub finished: Option<Instant>,
}

pub struct RuntimeOptions {
    pub pipeline: String,
    pub until_caught_up: bool,
    /// How often an advanced position with nothing to flush is checkpointed.
    pub checkpoint_interval: Duration,
    /// Channel capacity in batches.
    pub channel_batches: usize,
    pub max_backoff: Duration,
}

impl RuntimeOptions {
    pub fn new(pipeline: &str) -> Self {
        RuntimeOptions {
            pipeline: pipeline.to_string(),
            until_caught_up: false,
            checkpoint_interval: Duration::from_secs(1),
            channel_batches: 8,
            max_backoff: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone)]
pub struct RunSummary {
    pub position: Option<Position>,
    pub caught_up: bool,
    pub sink: String,
    /// Tables the sink stopped after per-table errors.
    pub stopped: Vec<(TableId, String)>,
}

enum Ending {
    CaughtUp,
    Shutdown,
}

/// Run a pipeline until shutdown (or caught up), restarting after transient errors.
pub async fn run_pipeline<S, K, FS, FK>(
    opts: &RuntimeOptions,
    mut make_source: FS,
    mut make_sink: FK,
    transforms: &mut dyn Transform,
    store: &mut dyn CheckpointStore,
    mut shutdown: watch::Receiver<bool>,
    stats: Arc<Stats>,
) -> Result<RunSummary, PipelineError>
where
    S: Source,
    K: Sink,
    FS: FnMut() -> S,
    FK: FnMut() -> K,
{
    let mut backoff = Duration::from_millis(500);
    loop {
        let before = stats.checkpoints.load(Ordering::Relaxed);
        let sink = make_sink();
        match run_once(opts, make_source(), sink, transforms, store, &mut shutdown, &stats).await {
            Ok(s) => return Ok(s),
            Err(e) if e.kind() == ErrorKind::Transient && *shutdown.borrow() => {
                // Asked to stop while the source was unavailable: nothing is
                // lost, the last checkpoint stands.
                tracing::warn!(error = %error_chain(&e), "stopping while the source is unavailable");
                return Ok(stopped_summary(store));
            }
            Err(e) if e.kind() == ErrorKind::Transient => {
                if stats.checkpoints.load(Ordering::Relaxed) > before {
                    backoff = Duration::from_millis(500);
                }
                stats.restarts.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %error_chain(&e), "transient failure; restarting from the checkpoint in {:?}", backoff);
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.changed() => {}
                }
                if *shutdown.borrow() {
                    return Ok(stopped_summary(store));
                }
                backoff = (backoff * 2).min(opts.max_backoff);
            }
            Err(e) => return Err(e),
        }
    }
}

fn stopped_summary(store: &dyn CheckpointStore) -> RunSummary {
    let position = store.load().ok().flatten().and_then(|c| c.position);
    RunSummary { position, caught_up: false, sink: "stopped before reconnecting".into(), stopped: Vec::new() }
}

/// Render an error with its cause chain on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let cs = c.to_string();
        if !s.contains(&cs) {
            s.push_str(": ");
            s.push_str(&cs);
        }
        cur = c.source();
    }
    s
}

struct Flusher<'a, K: Sink> {
    sink: K,
    store: &'a mut dyn CheckpointStore,
    cp: Checkpoint,
    confirm: watch::Sender<Option<Position>>,
    stats: &'a Stats,
    last_flush: Instant,
    /// `sink.flush` calls so far.
    flushes: u64,
    /// Positions checkpointed but not yet confirmed to the source, with the
    /// flush that stored them: the sink has not said that flush is durable.
    unconfirmed: std::collections::VecDeque<(u64, Option<Position>)>,
    last_probe: Instant,
}

impl<K: Sink> Flusher<'_, K> {
    async fn flush(&mut self, position: Option<Position>, held: &HashSet<TableId>) -> Result<(), PipelineError> {
        if position.is_some() {
            self.cp.position = position;
        }
        self.cp.updated_ms = crate::checkpoint::now_ms();
        let state = self.sink.flush(held, &self.cp).await?;
        self.cp.sink = state;
        self.store.save(&self.cp)?;
        self.sink.checkpointed().await?;
        self.stats.checkpoints.fetch_add(1, Ordering::Relaxed);
        if let Some(p) = &self.cp.position {
            self.stats.set_checkpoint(p);
        }
        self.last_flush = Instant::now();
        self.flushes += 1;
        self.unconfirmed.push_back((self.flushes, self.cp.position.clone()));
        self.confirm_durable(false).await
    }

    /// Confirm to the source the newest checkpointed position whose flush the
    /// sink reports durable (with `wait`, the run is ending: the sink may
    /// take a slower way to make its flushes durable).
    async fn confirm_durable(&mut self, wait: bool) -> Result<(), PipelineError> {
        if self.unconfirmed.is_empty() {
            return Ok(());
        }
        self.last_probe = Instant::now();
        let durable = self.sink.durable_flushes(wait).await?;
        let mut newest = None;
        while self.unconfirmed.front().is_some_and(|(n, _)| *n <= durable) {
            newest = self.unconfirmed.pop_front().map(|(_, p)| p);
        }
        if let Some(p) = newest {
            let _ = self.confirm.send(p);
        }
        if wait && !self.unconfirmed.is_empty() {
            tracing::info!(
                "the target has not yet made the last {} checkpoint(s) durable; the source is confirmed up to the last \
                 durable one and replays the rest on the next run",
                self.unconfirmed.len()
            );
        }
        Ok(())
    }

    /// Ask the sink about unconfirmed flushes at most every `every`.
    async fn probe(&mut self, every: Duration) -> Result<(), PipelineError> {
        if !self.unconfirmed.is_empty() && self.last_probe.elapsed() >= every {
            self.confirm_durable(false).await?;
        }
        Ok(())
    }
}

/// The position after a commit. Commits arrive in commit order, so the new
/// one is it; a Postgres LSN never goes back (a keepalive may have moved the
/// position past a commit the server had already sent), while a MySQL
/// source that resumed on another server (by GTID) may number its binlogs
/// lower than the checkpoint, and its commits must still move it.
fn committed(old: Option<Position>, new: Position) -> Position {
    match old {
        Some(old @ Position::Postgres { .. }) if old > new => old,
        _ => new,
    }
}

/// The later of a known position and one reported by idle progress
/// (keepalives may report an older position than the last commit; positions
/// of one source are ordered, see [`Position`]'s `Ord`).
fn later(old: Option<Position>, new: Position) -> Position {
    match old {
        Some(old) if old > new => old,
        _ => new,
    }
}

async fn run_once<S: Source, K: Sink>(
    opts: &RuntimeOptions,
    source: S,
    mut sink: K,
    transforms: &mut dyn Transform,
    store: &mut dyn CheckpointStore,
    shutdown: &mut watch::Receiver<bool>,
    stats: &Stats,
) -> Result<RunSummary, PipelineError> {
    let mut cp = store.load()?.unwrap_or_else(|| Checkpoint::new(&opts.pipeline));
    if cp.pipeline != opts.pipeline {
        return Err(PipelineError::ForeignCheckpoint { expected: opts.pipeline.clone(), found: cp.pipeline });
    }
    sink.open(if cp.sink.is_null() { None } else { Some(&cp.sink) }).await?;
    // A transactional sink's own checkpoint was committed with its data: it wins.
    if let Some(stored) = sink.stored_checkpoint().await? {
        cp = stored;
    }
    // Tables whose copy was interrupted are copied again from scratch, and
    // so are tables copied through other transforms than configured now.
    for (id, t) in cp.tables.iter_mut() {
        let changed = t.snapshot == SnapshotState::Done && t.transforms != transforms.fingerprint(id);
        if changed {
            tracing::info!(table = %id, "the table's transforms changed since it was copied: copying it again");
        }
        if t.snapshot == SnapshotState::Copying || changed {
            t.snapshot = SnapshotState::Pending;
            t.snapshot_rows = 0;
        }
    }
    if let Some(p) = &cp.position {
        stats.set_checkpoint(p);
    }

    let (tx, mut rx) = mpsc::channel::<Vec<SourceMessage>>(opts.channel_batches);
    let (confirm_tx, confirm_rx) = watch::channel(cp.position.clone());
    // Rows only a sink reads may stay in the source's wire form.
    let raw_snapshot =
        Some(crate::source::RawFormat::PgBinaryCopy).filter(|f| transforms.is_identity() && sink.accepts_raw(*f));
    let ctx = SourceContext {
        tx,
        confirmed: confirm_rx,
        checkpoint: cp.clone(),
        until_caught_up: opts.until_caught_up,
        raw_snapshot,
    };
    let completer = source.row_reader().map(|reader| Completer { reader, key_changes: !sink.merges_rows() });
    let mut source_task = tokio::spawn(source.run(ctx));
    let mut f = Flusher {
        sink,
        store,
        cp,
        confirm: confirm_tx,
        stats,
        last_flush: Instant::now(),
        flushes: 0,
        unconfirmed: Default::default(),
        last_probe: Instant::now(),
    };

    let result = drive(opts, &mut rx, &mut f, transforms, completer.as_ref(), shutdown, stats).await;
    drop(rx);
    let ending = match result {
        Ok(Some(ending)) => {
            // Give the source a moment to send the final confirmation to the server.
            if tokio::time::timeout(Duration::from_secs(2), &mut source_task).await.is_err() {
                source_task.abort();
                let _ = source_task.await;
            }
            ending
        }
        Ok(None) => {
            // The source ended on its own: with an error, or it must not have.
            return match source_task.await {
                Ok(Ok(())) => Err(SourceError::transient("source stopped unexpectedly").into()),
                Ok(Err(e)) => Err(e.into()),
                Err(e) => Err(SourceError::fatal(format!("source task failed: {e}")).into()),
            };
        }
        Err(e) => {
            source_task.abort();
            let _ = source_task.await;
            return Err(e);
        }
    };
    let caught_up = matches!(ending, Ending::CaughtUp);
    stats.caught_up.store(caught_up, Ordering::Relaxed);
    let mut stopped = f.sink.stopped_tables();
    for (id, t) in &f.cp.tables {
        if let Some(error) = &t.stopped {
            stopped.push((id.clone(), error.clone()));
        }
    }
    Ok(RunSummary { position: f.cp.position, caught_up, sink: f.sink.describe(), stopped })
}

#[cfg(test)]
mod tests;
