//! The runtime's main loop: batches from the source go through the
//! transforms into the sink; at boundaries the [`Flusher`] checkpoints.
//!
//! Invariants:
//! - A flush happens only between transactions (`in_tx` false), so a
//!   checkpoint's position is always a commit boundary or idle progress.
//! - `position` only moves forward for one source ([`committed`], [`later`]);
//!   progress inside a transaction is ignored.
//! - Tables being copied stay in `held` until their copy is done: the sink
//!   keeps them out of what it reports complete.
//! - Events are buffered in order and written before any control message is
//!   handled, so the sink sees every event before the boundary after it.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::{committed, later, Ending, Flusher, PipelineError, RuntimeOptions, Stats};
use crate::checkpoint::{SnapshotState, TableState};
use crate::event::{ChangeEvent, Op, Position};
use crate::schema::{TableId, TableSchema};
use crate::sink::Sink;
use crate::source::{RawRows, SourceMessage};
use crate::transform::Transform;
use crate::whole_rows::Completer;

/// Events are handed to the sink in slices of at most this many.
const WRITE_BATCH: usize = 4096;

/// Run the loop until the source is caught up, a shutdown is asked for
/// (`Some`), or the source's channel closes (`None`: the source ended).
pub(super) async fn drive<K: Sink>(
    opts: &RuntimeOptions,
    rx: &mut mpsc::Receiver<Vec<SourceMessage>>,
    f: &mut Flusher<'_, K>,
    transforms: &mut dyn Transform,
    completer: Option<&Completer>,
    shutdown: &mut watch::Receiver<bool>,
    stats: &Stats,
) -> Result<Option<Ending>, PipelineError> {
    let mut d = Driver::new(f, transforms, *shutdown.borrow());
    let mut ticker = tokio::time::interval(Duration::from_millis(200));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if !d.in_tx {
            if let Some(ending) = d.at_boundary(opts, f).await? {
                return Ok(Some(ending));
            }
            f.probe(Duration::from_millis(200)).await?;
        }
        tokio::select! {
            biased;
            _ = shutdown.changed(), if !d.stopping => {
                d.stopping = true;
                if d.in_tx {
                    tracing::info!("stopping after the current transaction commits");
                }
            }
            batch = rx.recv() => {
                let Some(mut batch) = batch else {
                    return Ok(None);
                };
                if let Some(c) = completer {
                    let n = c.complete(&mut batch, transforms).await?;
                    if n > 0 {
                        stats.rows_completed.fetch_add(n, Ordering::Relaxed);
                    }
                }
                d.batch(batch, f, transforms, stats).await?;
            }
            _ = ticker.tick() => {}
        }
    }
}

/// The loop's state between batches.
struct Driver {
    in_tx: bool,
    /// The newest boundary seen: what the next checkpoint records.
    position: Option<Position>,
    /// Tables being copied (as the sink names them).
    held: HashSet<TableId>,
    /// Tables whose copy completed since the last flush: checkpointed within
    /// `checkpoint_interval` (not one flush per table: with thousands of
    /// small tables, a checkpoint per table made the snapshot quadratic).
    tables_done: bool,
    caught_up: bool,
    stopping: bool,
    buf: Vec<ChangeEvent>,
    /// The table of the current run of snapshot rows and their number, so
    /// progress is counted per run, not per row.
    snap_run: Option<(Arc<TableSchema>, u64)>,
    identity: bool,
    /// Tables the source could not decode: their changes are skipped.
    source_stopped: HashSet<TableId>,
}

impl Driver {
    fn new<K: Sink>(f: &Flusher<'_, K>, transforms: &dyn Transform, stopping: bool) -> Self {
        Driver {
            in_tx: false,
            position: f.cp.position.clone(),
            held: HashSet::new(),
            tables_done: false,
            caught_up: false,
            stopping,
            buf: Vec::with_capacity(1024),
            snap_run: None,
            identity: transforms.is_identity(),
            source_stopped: f.cp.tables.iter().filter(|(_, t)| t.stopped.is_some()).map(|(id, _)| id.clone()).collect(),
        }
    }

    /// Between transactions: flush when due, and end the run when caught up
    /// or stopping.
    async fn at_boundary<K: Sink>(
        &mut self,
        opts: &RuntimeOptions,
        f: &mut Flusher<'_, K>,
    ) -> Result<Option<Ending>, PipelineError> {
        let advanced = self.position != f.cp.position;
        let elapsed = f.last_flush.elapsed();
        let due = (self.tables_done && (elapsed >= opts.checkpoint_interval || f.sink.checkpoint_after_copy()))
            || self.caught_up
            || self.stopping
            || f.sink.wants_flush()
            || (f.sink.has_unflushed() && elapsed >= f.sink.max_flush_delay())
            || (advanced && !f.sink.has_unflushed() && elapsed >= opts.checkpoint_interval);
        if due && (advanced || f.sink.has_unflushed() || self.tables_done || f.cp.position.is_none()) {
            f.flush(self.position.clone(), &self.held).await?;
            self.tables_done = false;
        }
        if !(self.caught_up || self.stopping) {
            return Ok(None);
        }
        // A sink may write more once a checkpoint is stored (the Kafka sink
        // produces finished snapshot spools then): flush again so the run
        // ends with that delivered too, not only recorded for the next run
        // to replay.
        for _ in 0..3 {
            if !f.sink.wrote_after_checkpoint() {
                break;
            }
            f.flush(self.position.clone(), &self.held).await?;
        }
        f.confirm_durable(true).await?;
        Ok(Some(if self.caught_up { Ending::CaughtUp } else { Ending::Shutdown }))
    }

    /// One batch from the source, in order.
    async fn batch<K: Sink>(
        &mut self,
        batch: Vec<SourceMessage>,
        f: &mut Flusher<'_, K>,
        transforms: &mut dyn Transform,
        stats: &Stats,
    ) -> Result<(), PipelineError> {
        let mut counts = [0u64; 5];
        for msg in batch {
            match msg {
                SourceMessage::Event(ev) => {
                    if !self.source_stopped.is_empty() && self.source_stopped.contains(&ev.table.id) {
                        continue;
                    }
                    counts[op_index(ev.op)] += 1;
                    if ev.snapshot {
                        self.count_snapshot_row(&ev.table, stats);
                    }
                    self.push(ev, transforms)?;
                    if self.buf.len() >= WRITE_BATCH {
                        self.write_buffered(f).await?;
                    }
                }
                other => {
                    self.end_snapshot_run(stats);
                    self.write_buffered(f).await?;
                    self.control(other, f, transforms, stats, &mut counts).await?;
                }
            }
        }
        stats.add_counts(&counts);
        self.end_snapshot_run(stats);
        self.write_buffered(f).await
    }

    fn push(&mut self, ev: ChangeEvent, transforms: &mut dyn Transform) -> Result<(), PipelineError> {
        if self.identity {
            self.buf.push(ev);
        } else {
            transforms.apply(ev, &mut self.buf)?;
        }
        Ok(())
    }

    async fn write_buffered<K: Sink>(&mut self, f: &mut Flusher<'_, K>) -> Result<(), PipelineError> {
        if !self.buf.is_empty() {
            f.sink.write(&self.buf).await?;
            self.buf.clear();
        }
        Ok(())
    }

    fn count_snapshot_row(&mut self, table: &Arc<TableSchema>, stats: &Stats) {
        match &mut self.snap_run {
            Some((t, n)) if Arc::ptr_eq(t, table) => *n += 1,
            _ => {
                self.end_snapshot_run(stats);
                self.snap_run = Some((table.clone(), 1));
            }
        }
    }

    fn end_snapshot_run(&mut self, stats: &Stats) {
        if let Some((t, n)) = self.snap_run.take() {
            stats.snapshot_progress(&t.id, n, false, None);
        }
    }

    /// Everything but a single event; the buffer is empty when it is called.
    async fn control<K: Sink>(
        &mut self,
        msg: SourceMessage,
        f: &mut Flusher<'_, K>,
        transforms: &mut dyn Transform,
        stats: &Stats,
        counts: &mut [u64; 5],
    ) -> Result<(), PipelineError> {
        match msg {
            SourceMessage::Event(ev) => self.push(ev, transforms)?,
            SourceMessage::RawRows(raw) => {
                counts[0] += raw.rows;
                stats.snapshot_progress(&raw.schema.id, raw.rows, false, None);
                self.raw_rows(raw, f, transforms).await?;
            }
            SourceMessage::Begin { .. } => self.in_tx = true,
            SourceMessage::Commit { position: p } => {
                self.in_tx = false;
                stats.transactions.fetch_add(1, Ordering::Relaxed);
                self.position = Some(committed(self.position.take(), p));
            }
            SourceMessage::Progress { position: p } => {
                if !self.in_tx {
                    self.position = Some(later(self.position.take(), p));
                }
            }
            SourceMessage::TableSnapshotStarted { schema, position: p, estimated_rows } => {
                // The sink sees the table as transformed; the checkpoint
                // keeps the source's name.
                let out = transforms.table_schema(&schema)?;
                f.sink.snapshot_started(&out).await?;
                self.held.insert(out.id.clone());
                let table = schema.id.clone();
                self.source_stopped.remove(&table);
                let state = TableState {
                    snapshot: SnapshotState::Copying,
                    snapshot_position: Some(p),
                    snapshot_rows: 0,
                    transforms: transforms.fingerprint(&table),
                    stopped: None,
                };
                f.cp.tables.insert(table.clone(), state);
                stats.snapshot_progress(&table, 0, false, Some(estimated_rows));
            }
            SourceMessage::TableSnapshotDone { table, rows } => {
                if let Some(t) = f.cp.tables.get_mut(&table) {
                    t.snapshot = SnapshotState::Done;
                    t.snapshot_rows = rows;
                }
                stats.snapshot_progress(&table, 0, true, None);
                self.held.remove(&transforms.table_id(&table));
                self.tables_done = true;
            }
            SourceMessage::CaughtUp => self.caught_up = true,
            SourceMessage::Tables { included } => {
                f.cp.rekey_legacy(&included);
                let renamed: Vec<TableId> = included.iter().map(|t| transforms.table_id(t)).collect();
                f.sink.tables_included(&renamed);
                let names: HashSet<&TableId> = included.iter().collect();
                f.cp.tables.retain(|id, _| names.contains(id));
                self.source_stopped.retain(|t| names.contains(t));
            }
            SourceMessage::TableFailed { table, error } => self.table_failed(table, error, f, transforms),
        }
        Ok(())
    }

    /// Rows still in the source's wire form: handed over as they are when
    /// the sink takes them, decoded into events otherwise.
    async fn raw_rows<K: Sink>(
        &mut self,
        raw: RawRows,
        f: &mut Flusher<'_, K>,
        transforms: &mut dyn Transform,
    ) -> Result<(), PipelineError> {
        if self.identity && f.sink.write_raw(&raw).await? {
            return Ok(());
        }
        let mut events = Vec::with_capacity(raw.rows as usize);
        (raw.decode)(&raw, &mut events)?;
        for ev in events {
            self.push(ev, transforms)?;
        }
        self.write_buffered(f).await
    }

    /// The source cannot decode a table: skip its changes from now on and
    /// record why in the checkpoint (the first error stands; a rerun may
    /// meet a later one).
    fn table_failed<K: Sink>(
        &mut self,
        table: TableId,
        error: String,
        f: &mut Flusher<'_, K>,
        transforms: &dyn Transform,
    ) {
        if self.source_stopped.insert(table.clone()) {
            tracing::error!(
                table = %table,
                "{error}; the table is stopped (its changes are skipped, the other tables go on); fix the cause, \
                 then re-copy it: drop it from tables.include for one run and add it back"
            );
        }
        let state = f.cp.tables.entry(table.clone()).or_insert_with(|| TableState {
            snapshot: SnapshotState::Done,
            snapshot_position: None,
            snapshot_rows: 0,
            transforms: transforms.fingerprint(&table),
            stopped: None,
        });
        state.stopped.get_or_insert(error);
    }
}

fn op_index(op: Op) -> usize {
    match op {
        Op::Read => 0,
        Op::Create => 1,
        Op::Update => 2,
        Op::Delete => 3,
        Op::Truncate => 4,
    }
}
